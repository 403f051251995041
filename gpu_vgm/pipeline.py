"""The encode and decode jobs on a Dask cluster (DESIGN.md "Pipeline").

plan (footers only) -> sample uniformly from all files -> fit one mixture per column ->
one task per partition (read, encode, write a part) into a temporary directory that is renamed
into place only when every part, the model and the manifest are written.
"""

import contextlib
import functools
import logging
import os
import platform
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np

from gpu_vgm import checkpoint, inputs, schema, storage, tasks
from gpu_vgm.errors import InputError, VGMError
from gpu_vgm.model import ScaleVGM, read_json, sklearn_fit_settings, write_json_atomic
from gpu_vgm.modelfile import (
    fingerprint,
    load_models,
    models_from_data,
    save_models,
    stored_fingerprint,
)

log = logging.getLogger("gpu_vgm")
MANIFEST = "_manifest.json"
MODEL = "_model.json"
MANIFEST_FORMAT = "gpu_vgm.manifest"
MANIFEST_VERSION = 1
PART_FILE = re.compile(r"part-\d{5,}\.parquet")


@dataclass
class EncodeOptions:
    input: str
    output: str
    columns: list = field(default_factory=list)
    mode: str | None = None  # None: "argmax", or the loaded model's
    seed: int | None = None  # None: 42, or the loaded model's
    dtype: str | None = None  # None: "float64", or the loaded model's
    n_components: int = 10
    sample_size: int = 100_000
    eps: float = 0.005
    max_iter: int = 100
    special_values: tuple = ()
    learn_rounding: bool = False
    model_in: str | None = None
    model_out: str | None = None
    partition_size: str = "2M"
    overwrite: bool = False
    resume: bool = False  # adopt the finished parts of a killed run of the same job


def _versions():
    # From package metadata: importing scikit-learn only to name its version costs a second.
    from importlib.metadata import version

    from gpu_vgm import __version__

    versions = {"gpu_vgm": __version__, "python": platform.python_version()}
    for name in ("dask", "numpy", "pyarrow", "numba", "scikit-learn"):
        versions[name] = version(name)
    return versions


def plan_encode(opts):
    """Files, columns and partitions of an encode job, from footers alone."""
    fs, paths = inputs.list_parquet_files(opts.input)
    files = inputs.read_metadata(fs, paths)
    inputs.check_same_schema(files)
    columns = inputs.select_columns(files, opts.columns)
    for f in files:
        schema.check_no_clash(f.schema, columns, f.path)
    parts = inputs.plan_partitions(files, inputs.parse_size(opts.partition_size))
    return fs, files, columns, parts


def check_apart_from_input(opts, fs, files):
    """OutputError where ``--output`` or ``--model-out`` would overwrite or mix with the input
    (the folders of a glob's files count as the input)."""
    places = [opts.input]
    if any(ch in str(opts.input) for ch in "*?["):
        places += sorted({fs.unstrip_protocol(f.path.rsplit("/", 1)[0]) for f in files})
    storage.check_apart(opts.output, places)
    if opts.model_out:
        storage.check_output_file(opts.model_out, opts.overwrite, "--model-out")
        # A JSON file next to the input is never read as input; inside the output it would be
        # replaced with it.
        storage.check_apart(opts.model_out, places, "--model-out", inside="json")
        storage.check_apart(opts.model_out, [opts.output], "--model-out", inside="refused")
    if opts.model_in:  # --overwrite would delete it before it is read
        storage.check_apart(opts.model_in, [opts.output], "--model-in", inside="refused")


def _seed(opts):
    return 42 if opts.seed is None else opts.seed


def read_fit_sample(fs, files, columns, opts):
    """``{column: float64 sample}`` drawn uniformly from every file (up to 64 row groups).

    Read here in the client, with threads (pyarrow releases the GIL), so ``run`` can do it
    while the cluster starts.
    """
    seed = _seed(opts)
    plan = inputs.sample_plan(files, opts.sample_size, seed)

    def read(draw):
        path, row_group, count = plan[draw]
        return tasks.read_sample(fs, path, row_group, count, columns, seed, draw)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        pieces = list(pool.map(read, range(len(plan))))
    return {c: np.concatenate([p[c] for p in pieces]) if pieces else np.zeros(0) for c in columns}


def _connector(client):
    """``client`` (a distributed.Client, or a function that returns one) as such a function."""
    return client if callable(client) else lambda: client


def fit_models(
    client, fs, files, columns, parts, opts, sample=None, threads=None, check_coverage=True
):
    """One ScaleVGM per column, fitted on a sample drawn uniformly from every file
    (``sample``: ``read_fit_sample``'s result when the caller read it already).

    Each column is fitted in a Dask task, or with ``threads``, in a pool of that many threads
    of this process (``encode_job``'s ``fit_threads``); ``client`` is as ``encode_job``'s, and
    is asked for only when the fit needs the cluster. The model is the same either way:
    every fit runs scikit-learn on one BLAS thread (``model.sklearn_fit_settings``).
    ``check_coverage=False`` leaves ``ScaleVGM.check_coverage`` to the caller.
    """
    connect = _connector(client)
    if sample is None:
        sample = read_fit_sample(fs, files, columns, opts)
    ranges = inputs.column_ranges(fs, files, columns)
    missing = [c for c in columns if ranges[c] is None]
    if missing and parts:
        log.info("no Parquet statistics for %s: one pass for the value range", ", ".join(missing))
        client = connect()
        for result in client.gather(
            client.map(
                tasks.column_min_max, [fs] * len(parts), parts, [missing] * len(parts), pure=False
            )
        ):
            for c, r in result.items():
                if r is not None:
                    lo, hi = ranges[c] or r
                    ranges[c] = (min(lo, r[0]), max(hi, r[1]))
    models = {}
    fit_futures = {}
    with contextlib.ExitStack() as settings:
        if threads:
            # Held by this thread for all the fits: threadpoolctl lets one thread at a time
            # change the BLAS thread count, and it must stay at one until the last fit ends.
            settings.enter_context(sklearn_fit_settings())
            pool = settings.enter_context(
                ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gpu_vgm-fit")
            )
            # after an error, fits not yet started are dropped; those running are waited for
            settings.callback(pool.shutdown, wait=False, cancel_futures=True)
            submit = pool.submit
        else:
            submit = functools.partial(connect().submit, pure=False)
        for c in columns:
            model = _new_model(c, opts)
            fit_futures[c] = submit(tasks.fit_column, model, sample[c], ranges[c], check_coverage)
        for c in columns:
            models[c] = fit_futures[c].result()
            _log_fit(models[c])
    return models


def _new_model(column, opts):
    return ScaleVGM(
        n_components=opts.n_components,
        random_state=_seed(opts),
        eps=opts.eps,
        mode=opts.mode or "argmax",
        column=column,
        max_iter=opts.max_iter,
        special_values=tuple(opts.special_values),
        learn_rounding=opts.learn_rounding,
        dtype=opts.dtype or "float64",
    )


def _log_fit(model):
    log.info(
        "fitted %s: %d active components (%s), sample of %d rows",
        model.column,
        int(model.active_.sum()),
        _origin_summary(model),
        model.sample_size_,
    )
    if not model.converged_:
        log.warning(
            "%s: the mixture did not converge in %d iterations; encoding stays lossless, "
            "but the components may fit the data less well (try --max-iter)",
            model.column,
            model.max_iter,
        )


def _origin_summary(model):
    kinds = [o for o, a in zip(model.origin_, model.active_, strict=True) if a]
    return ", ".join(
        f"{kinds.count(k)} {k}" for k in ("mixture", "reactivated", "synthetic") if kinds.count(k)
    )


def load_for_encode(opts, columns):
    models = load_models(opts.model_in)
    missing = [c for c in columns if c not in models]
    if missing:
        raise InputError(f"{opts.model_in}: no model for column {missing[0]!r}")
    chosen = {}
    for c in columns:
        m = models[c]
        if opts.mode is not None:
            m.mode = opts.mode
        if opts.dtype is not None:
            m.dtype = opts.dtype
        if opts.seed is not None and opts.seed != m.random_state:
            m.random_state = opts.seed
            m._build_kernel_params()  # the sample-mode key depends on the seed
        chosen[c] = m
    return chosen


def encode_job(
    client,
    opts,
    backend="cpu",
    progress=None,
    column_encoder=None,
    plan=None,
    sample=None,
    fit_threads=None,
):
    """Run the whole encode job; returns the manifest (also written to the output).

    ``client``: a distributed.Client, or a function that returns one once its cluster is up
    (``run`` passes the ``connect`` of a cluster still starting); it is asked for only when the
    job needs the cluster, so fits in this process overlap the cluster's start.

    ``plan`` is ``plan_encode(opts)`` when the caller already made it (to fail on bad input
    before starting a cluster), ``sample`` is ``read_fit_sample``'s result when the caller
    read it while the cluster started (used only when fitting).

    ``fit_threads``: fit the columns in this many threads of this process rather than in Dask
    tasks; for a cluster on this machine (``run``'s own), whose workers meanwhile finish
    starting and load the encode kernel instead of importing scikit-learn first.
    """
    t_start = time.perf_counter()
    connect = _connector(client)
    storage.check_output(opts.output, opts.overwrite)
    fs, files, columns, parts = plan or plan_encode(opts)
    check_apart_from_input(opts, fs, files)
    total_rows = sum(f.num_rows for f in files)
    log.info(
        "%d files, %d rows, %d partitions; encoding %s",
        len(files),
        total_rows,
        len(parts),
        ", ".join(columns),
    )
    fp = checkpoint.fingerprint(opts, files, columns, parts)
    local = not storage.is_remote(opts.output)  # checkpoints and --resume: local output only
    leftovers = checkpoint.unfinished_runs(opts.output, fp) if local else []
    adopted, done = leftovers[0] if opts.resume and leftovers else (None, {})
    if leftovers and not opts.resume:
        log.info(
            "%s holds %d finished parts of a killed run of this job; pass --resume to reuse them",
            leftovers[0][0],
            len(leftovers[0][1]),
        )
    from gpu_vgm.backends import column_encoder as backend_encoder

    extra = {"column_encoder": column_encoder or backend_encoder(backend)}
    with storage.output_directory(opts.output, opts.overwrite, reuse=adopted) as tmp:
        # Models this job fitted (or a killed run of it did) have their coverage proven by a CPU
        # worker (tasks.hold_checked), which loads the CPU kernel anyway: here it would load
        # numba for it (0.3 s). A GPU worker does not load it, so there the fit proves it.
        # A --model-in is the user's: encoding counts what it leaves out of coverage.
        prove_on_worker = backend == "cpu" and not opts.model_in
        if adopted:  # the killed run's model: its parts were encoded with exactly that one
            models = load_for_encode(replace(opts, model_in=storage.join(tmp, MODEL)), columns)
            log.info("resuming %s: %d of %d parts already written", tmp, len(done), len(parts))
        elif opts.model_in:
            models = load_for_encode(opts, columns)
        else:
            models = fit_models(
                connect, fs, files, columns, parts, opts, sample, fit_threads, not prove_on_worker
            )
        client = connect()
        save_models(storage.join(tmp, MODEL), list(models.values()))
        t_fit = time.perf_counter()
        ckpt = checkpoint.Checkpoint(tmp, fp, done) if local else None
        todo = [part for part in parts if part.index not in done]
        hold = tasks.hold_checked if prove_on_worker else tasks.hold
        shared = client.submit(hold, models, pure=False)
        futures = [
            client.submit(tasks.encode_partition, fs, part, shared, str(tmp), **extra, pure=False)
            for part in todo
        ]
        fresh = _gather_in_order(
            client, futures, progress, "encoding", on_result=ckpt.add if ckpt else None
        )
        results = [done.get(p.index) for p in parts]
        for r in fresh:
            results[r["index"]] = r
        if not parts:  # no rows at all: one empty part still carries the output schema
            results = [tasks.write_empty_part(files[0].schema, models, str(tmp))]
        if ckpt:
            ckpt.remove()
        t_encode = time.perf_counter()
        manifest = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "input": [{"path": f.path, "rows": f.num_rows} for f in files],
            "rows": total_rows,
            "columns": {
                c: {
                    "type": str(inputs.value_type(files[0].schema.field(c).type)),
                    "field": schema.field_to_text(files[0].schema.field(c)),
                    "out_of_coverage": sum(r["out_of_coverage"][c] for r in results),
                }
                for c in columns
            },
            "model_sha256": fingerprint([models[c] for c in columns]),
            "parts": [
                {
                    k: r[k]
                    for k in (
                        "file",
                        "rows",
                        "row_offset",
                        "source",
                        "row_groups",
                        "out_of_coverage",
                        "seconds",
                    )
                }
                for r in results
            ],
            "backend": backend,
            "mode": next(iter(models.values())).mode,
            "seed": next(iter(models.values())).random_state,
            "dtype": next(iter(models.values())).dtype,
            "workers": _worker_threads(client),
            "worker_processes": len(client.nthreads()),
            "peak_rss_mb_per_worker": max((r["peak_rss_mb"] for r in results), default=0.0),
            "versions": _versions(),
            "timings": {"plan_and_fit": t_fit - t_start, "encode": t_encode - t_fit},
        }
        write_json_atomic(storage.join(tmp, MANIFEST), manifest)
    if opts.model_out:  # only once the output is in place: a failed run leaves nothing
        save_models(opts.model_out, list(models.values()))
    manifest["timings"]["total"] = time.perf_counter() - t_start
    return manifest


def _worker_threads(client):
    """Tasks the cluster runs at once (its worker threads; a CPU worker process has several)."""
    return sum(client.nthreads().values())


def _gather_in_order(client, futures, progress, what, on_result=None):
    """Results in submission order; on the first error cancel the rest and raise it.

    ``on_result(result)`` is called as each one arrives (checkpoints)."""
    from distributed import as_completed

    results = [None] * len(futures)
    position = {f.key: i for i, f in enumerate(futures)}
    bar = progress(total=len(futures), desc=what) if progress else None
    try:
        for fut in as_completed(futures):
            results[position[fut.key]] = fut.result()
            if on_result:
                on_result(results[position[fut.key]])
            if bar:
                bar.update(1)
    except BaseException:
        client.cancel(futures)
        raise
    finally:
        if bar:
            bar.close()
    return results


def read_manifest(directory):
    """The manifest of an encoded directory, checked field by field (it may be crafted)."""
    source = storage.join(directory, MANIFEST)
    fs, path = inputs.open_fs(source)
    if not fs.isfile(path):
        raise InputError(f"{directory}: no {MANIFEST}; not a finished gpu_vgm output")
    try:
        data = read_json(source)
    except VGMError as exc:
        raise InputError(f"{source}: not a gpu_vgm manifest ({exc})") from None

    def require(ok, what):
        if not ok:
            raise InputError(f"{source}: not a valid gpu_vgm manifest: {what}")

    def count(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    require(isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT, "wrong format")
    version = data.get("version")
    require(count(version), "version must be an integer")
    if version > MANIFEST_VERSION:
        raise InputError(f"{source}: written by a newer gpu_vgm; upgrade gpu_vgm")
    require(count(data.get("rows")), "rows must be a non-negative integer")
    columns = data.get("columns")
    require(isinstance(columns, dict) and columns, "columns must be a non-empty object")
    for name, info in columns.items():
        require(
            isinstance(info, dict) and isinstance(info.get("type"), str),
            f"column {name!r} needs a type",
        )
        require(isinstance(info.get("field", ""), str), f"column {name!r}: field must be a string")
    parts = data.get("parts")
    require(isinstance(parts, list), "parts must be a list")
    for part in parts:
        # Plain part names only: a crafted "../x.parquet" must not reach outside the directory.
        require(
            isinstance(part, dict)
            and isinstance(part.get("file"), str)
            and PART_FILE.fullmatch(part["file"])
            and count(part.get("rows")),
            f"bad part entry {str(part)[:80]}",
        )
    require(isinstance(data.get("model_sha256", ""), str), "model_sha256 must be a string")
    return data


def decode_job(client, input_dir, output, model_path=None, overwrite=False, progress=None):
    """Restore the original columns, names, types and row order from an encoded directory."""
    t0 = time.perf_counter()
    storage.check_apart(output, [input_dir])
    if model_path:  # --overwrite would delete it before it is read
        storage.check_apart(model_path, [output], "--model", inside="refused")
    storage.check_output(output, overwrite)
    fs, root = inputs.open_fs(input_dir)
    if not fs.isdir(root):
        raise InputError(f"{input_dir}: no such directory")
    manifest = read_manifest(input_dir)
    model_file = model_path or f"{input_dir}/{MODEL}"
    model_data = read_json(model_file)  # read once: for the models and for their fingerprint
    models = models_from_data(model_data, model_file)
    columns = list(manifest["columns"])
    missing = [c for c in columns if c not in models]
    if missing:
        raise InputError(f"{model_path or MODEL}: no model for column {missing[0]!r}")
    models = {c: models[c] for c in columns}
    expected = manifest.get("model_sha256")  # absent in outputs written before it was added
    if expected and stored_fingerprint(model_data, columns) != expected:
        hint = f"use {input_dir}/{MODEL}" if model_path else "it was changed after encoding"
        raise InputError(
            f"{model_file}: not the model {input_dir} was encoded with (its SHA-256 differs "
            f"from the manifest's); {hint}"
        )
    fields = {c: schema.field_from_manifest(c, manifest["columns"][c]) for c in columns}
    parts = [p["file"] for p in manifest["parts"]]
    for name in parts:
        if not fs.isfile(f"{root}/{name}"):
            raise InputError(f"{input_dir}: {name} is listed in the manifest but missing")
    with storage.output_directory(output, overwrite) as tmp:
        shared = client.submit(tasks.hold, models, pure=False)
        futures = [
            client.submit(
                tasks.decode_part, fs, f"{root}/{name}", i, shared, fields, str(tmp), pure=False
            )
            for i, name in enumerate(parts)
        ]
        results = _gather_in_order(client, futures, progress, "decoding")
        rows = sum(r["rows"] for r in results)
        if rows != manifest["rows"]:
            raise InputError(
                f"{input_dir}: decoded {rows} rows, the manifest says {manifest['rows']}"
            )
        write_json_atomic(
            storage.join(tmp, MANIFEST),
            {
                "format": "gpu_vgm.decoded",
                "version": 1,
                "source": str(input_dir),
                "rows": rows,
                "columns": columns,
                "versions": _versions(),
            },
        )
    return {"rows": rows, "parts": len(parts), "seconds": time.perf_counter() - t0}


PROGRESS_INTERVAL = 10.0  # seconds between progress lines where no terminal shows a bar


class LogProgress:
    """Progress as log lines, at most one per ``interval`` seconds, where stderr is not a
    terminal (container logs, CI, a file): a billion-row job is otherwise silent for a minute.
    """

    def __init__(self, total, desc, interval):
        self.total, self.desc, self.interval = total, desc, interval
        self.done = 0
        self.start = self.last = time.monotonic()

    def update(self, n=1):
        self.done += n
        now = time.monotonic()
        if self.done < self.total and now - self.last >= self.interval:
            self.last = now
            log.info(
                "%s: %d of %d parts (%.0f%%) in %.0f s",
                self.desc,
                self.done,
                self.total,
                100 * self.done / self.total,
                now - self.start,
            )

    def close(self):
        pass


def progress_factory(quiet):
    """A tqdm bar on a terminal, log lines otherwise (``LogProgress``), nothing if ``quiet``."""
    if quiet:
        return None
    if not sys.stderr.isatty():
        return lambda total, desc: LogProgress(total, desc, PROGRESS_INTERVAL)
    from tqdm import tqdm

    return lambda total, desc: tqdm(total=total, desc=desc, unit="part", file=sys.stderr)
