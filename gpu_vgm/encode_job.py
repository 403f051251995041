"""The encode job on a Dask cluster (DESIGN.md "Pipeline").

plan (``gpu_vgm.plan``) -> fit (``gpu_vgm.fitting``) or the given model -> one task per unit
of input rows (``gpu_vgm.partition``) into a temporary directory, renamed into place only when
every part, the model and the manifest are written.
"""

import logging
import time

from gpu_vgm import backends, checkpoint, manifest, storage, tasks
from gpu_vgm.fitting import connector, fit_models
from gpu_vgm.modelfile import save_models
from gpu_vgm.partition import encode_unit
from gpu_vgm.plan import load_for_encode, plan_encode
from gpu_vgm.progress import gather_parts

log = logging.getLogger("gpu_vgm")
MODEL = "_model.json"


def encode_job(
    client,
    plan,
    backend="cpu",
    progress=None,
    sample=None,
    fit_threads=None,
    fit_on_cluster=None,
):
    """Run the whole encode job; returns the manifest (also written to the output).

    ``client``: a distributed.Client, or a function that returns one once its cluster is up
    (``run`` passes the ``connect`` of a cluster still starting); it is asked for only when the
    job needs the cluster, so fits in this process overlap the cluster's start.

    ``plan``: ``plan_encode(opts)`` (an EncodeOptions is planned here). ``backend``: "cpu",
    "gpu" or a backend object (``gpu_vgm.backends``). ``sample``: ``read_fit_sample``'s result
    when the caller read it while the cluster started. ``fit_threads``: fit the columns in
    this many threads of this process (for a cluster on this machine, whose workers meanwhile
    finish starting and load the encode kernel); ``fit_on_cluster``: in Dask tasks too (a
    joined cluster), or only there (the default without ``fit_threads``).
    """
    t_start = time.perf_counter()
    if not hasattr(plan, "units"):
        plan = plan_encode(plan)
    opts = plan.opts
    connect = connector(client)
    backend = backend if not isinstance(backend, str) else backends.make(backend, plan)
    parts = plan.parts
    log.info(
        "%d files, %d rows, %d parts; encoding %s",
        len(plan.files),
        plan.total_rows,
        len(parts),
        ", ".join(plan.columns),
    )
    fp = checkpoint.fingerprint(opts, plan.files, plan.columns, plan.units, backend.name)
    local = not storage.is_remote(opts.output)  # checkpoints and --resume: local output only
    leftovers = checkpoint.unfinished_runs(opts.output, fp) if local else []
    adopted, done = leftovers[0] if opts.resume and leftovers else (None, {})
    if leftovers and not opts.resume:
        log.info(
            "%s holds %d finished parts of a killed run of this job; pass --resume to reuse them",
            leftovers[0][0],
            len(leftovers[0][1]),
        )
    with storage.output_directory(opts.output, opts.overwrite, reuse=adopted) as tmp:
        # A model this job fits has its coverage proven by a CPU worker (tasks.hold_checked),
        # which loads the CPU kernel anyway; a GPU worker does not, so there the fit proves it.
        # A --model-in is the user's: encoding counts what it leaves out of coverage.
        prove_on_worker = backend.name == "cpu" and not opts.model_in
        ckpt = None
        if adopted:  # the killed run's model: its parts were encoded with exactly that one
            ckpt = checkpoint.Checkpoint(tmp, fp, done)  # claimed at once: our pid and token
            models = load_for_encode(opts, plan.columns, storage.join(tmp, MODEL))
            log.info("resuming %s: %d of %d parts already written", tmp, len(done), len(parts))
        elif plan.models_in:
            models = plan.models_in
        else:
            models = fit_models(
                connect, plan, sample, fit_threads, not prove_on_worker, fit_on_cluster
            )
        _warn_lossy(models, plan)
        client = connect()
        save_models(storage.join(tmp, MODEL), list(models.values()))
        t_fit = time.perf_counter()
        if local and ckpt is None:
            ckpt = checkpoint.Checkpoint(tmp, fp, done)
        # a unit is redone whole unless every part of it was written
        todo = [u for u in plan.units if not all(p.index in done for p in u.parts)]
        hold = tasks.hold_checked if prove_on_worker else tasks.hold
        shared = client.submit(hold, models, pure=False)
        futures = [
            client.submit(
                encode_unit,
                backend,
                plan.fs,
                unit,
                shared,
                plan.types,
                plan.schema,
                str(tmp),
                pure=False,
            )
            for unit in todo
        ]
        fresh = gather_parts(
            client,
            futures,
            sum(len(u.parts) for u in todo),
            progress,
            "encoding",
            on_result=ckpt.add if ckpt else None,
        )
        results = [done.get(p.index) for p in parts]
        for r in fresh:
            results[r["index"]] = r
        if not parts:  # no rows at all: one empty part still carries the output schema
            results = [tasks.write_empty_part(plan.schema, models, str(tmp))]
        if ckpt:
            ckpt.remove()
        t_encode = time.perf_counter()
        timings = {"plan_and_fit": t_fit - t_start, "encode": t_encode - t_fit}
        written = manifest.encode_manifest(plan, models, results, backend, client, timings)
        manifest.write(tmp, written)
    for c, info in written["columns"].items():
        if "max_error" in info:
            log.info("%s: largest decoding error %.3g (float32 output)", c, info["max_error"])
    if opts.model_out:  # only once the output is in place: a failed run leaves nothing
        save_models(opts.model_out, list(models.values()))
    written["timings"]["total"] = time.perf_counter() - t_start
    return written


def _warn_lossy(models, plan):
    for c, m in models.items():
        if manifest.decoding(m, plan.types[c]).startswith("lossy"):
            log.warning(
                "%s: --dtype float32 without --learn-rounding is lossy: normalized values keep "
                "24 bits, so decoded values differ from the input; the manifest records the "
                "largest error (--learn-rounding keeps values with few decimals exact)",
                c,
            )
