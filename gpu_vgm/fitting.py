"""The fit of an encode job: a sample drawn uniformly from every file, the value range of
each column, one mixture per column (DESIGN.md "Pipeline", step 2)."""

import collections
import contextlib
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from gpu_vgm import inputs, tasks
from gpu_vgm.model import ScaleVGM, sklearn_fit_settings

log = logging.getLogger("gpu_vgm")


def read_fit_sample(plan):
    """``{column: sample}`` drawn uniformly from every file, every column in one pass over the
    chosen row groups (``inputs.sample_plan``).

    Read in this process, with threads (pyarrow releases the GIL), so ``run`` can do it while
    the cluster starts.
    """
    opts, columns = plan.opts, plan.columns
    seed = opts.fit_seed
    draws = inputs.sample_plan(plan.files, opts.fit_option("sample_size"), seed)

    def read(draw):
        path, row_group, count = draws[draw]
        return tasks.read_sample(plan.fs, path, row_group, count, columns, seed, draw)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        pieces = list(pool.map(read, range(len(draws))))
    return {c: np.concatenate([p[c] for p in pieces]) if pieces else np.zeros(0) for c in columns}


def connector(client):
    """``client`` (a distributed.Client, or a function that returns one) as such a function."""
    return client if callable(client) else lambda: client


def value_ranges(connect, plan):
    """Each column's (min, max): from Parquet statistics, or one pass where they are missing."""
    columns, units = plan.columns, plan.units
    ranges = inputs.column_ranges(plan.fs, plan.files, columns)
    missing = [c for c in columns if ranges[c] is None]
    if missing and units:
        log.info("no Parquet statistics for %s: one pass for the value range", ", ".join(missing))
        client = connect()
        n = len(units)
        futures = client.map(tasks.column_min_max, [plan.fs] * n, units, [missing] * n, pure=False)
        for result in client.gather(futures):
            for c, r in result.items():
                if r is not None:
                    lo, hi = ranges[c] or r
                    ranges[c] = (min(lo, r[0]), max(hi, r[1]))
    return ranges


def fit_models(client, plan, sample=None, threads=None, check_coverage=True, on_cluster=None):
    """One ScaleVGM per column, fitted on a sample drawn uniformly from every file
    (``sample``: ``read_fit_sample``'s result when the caller read it already).

    The columns are fitted in ``threads`` threads of this process and, with ``on_cluster``
    (default: when ``threads`` is not given), in Dask tasks on the cluster too, taking
    columns from one queue until none remain. ``client`` is a distributed.Client or a
    function that returns one, called only when the fit needs the cluster. The model is the
    same wherever it is fitted: every fit runs scikit-learn on one BLAS thread
    (``model.sklearn_fit_settings``). ``check_coverage=False`` leaves
    ``ScaleVGM.check_coverage`` to the caller.
    """
    connect = connector(client)
    if sample is None:
        sample = read_fit_sample(plan)
    ranges = value_ranges(connect, plan)
    models = {c: new_model(c, plan.opts) for c in plan.columns}
    cluster = connect if (on_cluster if on_cluster is not None else not threads) else None
    return fit_columns(models, sample, ranges, threads or 0, cluster, check_coverage)


def fit_columns(models, samples, ranges, threads=1, connect=None, check_coverage=True):
    """Fit each unfitted ScaleVGM of ``models`` ({column: model}) on its sample and range: in
    ``threads`` threads of this process and, with ``connect`` (returns a Dask client), in
    tasks on the cluster's worker threads, all taking columns from one queue, so that no core
    idles while columns remain (a wide table on a joined cluster uses both)."""
    queue = collections.deque(models)
    fitted = {}
    threads = threads if threads or connect else 1  # something must fit
    lock = threading.Lock()

    def take():
        with lock:
            return queue.popleft() if queue else None

    def fit_here():
        while (c := take()) is not None:
            fitted[c] = tasks.fit_column(models[c], samples[c], ranges[c], check_coverage)

    def fit_on_cluster():
        from distributed import as_completed

        client = connect()
        running = as_completed()
        keys = {}
        for _ in range(max(1, sum(client.nthreads().values()))):
            _submit_next(client, running, keys, take, models, samples, ranges, check_coverage)
        for future in running:
            fitted[keys.pop(future.key)] = future.result()
            _submit_next(client, running, keys, take, models, samples, ranges, check_coverage)

    with contextlib.ExitStack() as settings:
        # Held by this thread for all the fits here: the settings are process-wide and must
        # stay until the last one ends.
        if threads:
            settings.enter_context(sklearn_fit_settings())
        workers = [fit_here] * threads + ([fit_on_cluster] if connect else [])
        with ThreadPoolExecutor(len(workers) or 1, thread_name_prefix="gpu_vgm-fit") as pool:
            futures = [pool.submit(w) for w in workers]
            try:
                for f in futures:
                    f.result()
            except BaseException:
                queue.clear()  # fits not yet started are dropped; those running end
                raise
    fitted = {c: fitted[c] for c in models}
    for model in fitted.values():
        log_fit(model)
    return fitted


def _submit_next(client, running, keys, take, models, samples, ranges, check_coverage):
    c = take()
    if c is not None:
        future = client.submit(
            tasks.fit_column, models[c], samples[c], ranges[c], check_coverage, pure=False
        )
        keys[future.key] = c
        running.add(future)


def new_model(column, opts):
    return ScaleVGM(
        n_components=opts.fit_option("n_components"),
        random_state=opts.fit_seed,
        eps=opts.eps,
        mode=opts.mode or "argmax",
        column=column,
        max_iter=opts.fit_option("max_iter"),
        special_values=tuple(opts.fit_option("special_values")),
        learn_rounding=opts.fit_option("learn_rounding"),
        dtype=opts.dtype or "float64",
    )


def log_fit(model):
    log.info(
        "fitted %s: %d active components (%s), sample of %d rows",
        model.column,
        int(model.active_.sum()),
        _origin_summary(model),
        model.sample_size_,
    )
    for warning in model.fit_warnings():
        log.warning("%s: %s", model.column, warning)


def _origin_summary(model):
    kinds = [o for o, a in zip(model.origin_, model.active_, strict=True) if a]
    return ", ".join(
        f"{kinds.count(k)} {k}" for k in ("mixture", "reactivated", "synthetic") if kinds.count(k)
    )
