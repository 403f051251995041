"""The one partition pipeline: read, validate, encode each column, attach, write.

Written once against a backend object (``gpu_vgm.backends``): every CI run executes it with
the CPU parts plugged in, and the GPU backend runs the same lines with cudf and CuPy.
``VGMEncoder`` calls ``encode_frame`` on the partitions of a Dask DataFrame.
"""

import collections
import os
import resource
import time
from concurrent.futures import ThreadPoolExecutor

from gpu_vgm import schema, storage
from gpu_vgm.errors import InputError, VGMError
from gpu_vgm.params import MAX_ABS_VALUE

PART_NAME = "part-{:05d}.parquet"


def encode_frame(backend, frame, models, types, row_offset, source):
    """``frame`` with ``<col>_normalized`` and ``<col>_component`` appended for every model,
    and per column what the manifest records: rows out of coverage and, for float32 output
    without learned rounding, the largest decoding error.

    ``types``: each column's Arrow type in the input (integers and decimals decode by
    rounding, and every such row is checked); ``row_offset``: the global row of the frame's
    first row (sample-mode draws are keyed by it); ``source``: names the data in errors.
    """
    xp = backend.xp
    stats = {}
    for column, model in models.items():
        x, nulls = backend.column(frame, column, source)
        try:
            z, comp, n_out = model.encode(x, row_offset=row_offset, backend=backend.kernels)
        except VGMError as exc:
            raise InputError(f"{source}: {exc}") from None
        if not bool(xp.isfinite(z).all()):  # a model (--model-in) far narrower than the values
            raise InputError(
                f"{source}: column {column!r}: values too far from the model's components "
                f"for {model.dtype} normalized values (beyond {MAX_ABS_VALUE:g}?)"
            )
        stats[column] = {"out_of_coverage": int(n_out)}
        _check_decodes(model, x, z, comp, types[column], source, stats[column], xp)
        if nulls is not None:  # the kernels encoded them as NaN; a null gets its own id
            comp = xp.where(nulls, schema.NULL_COMPONENT, comp).astype(comp.dtype)
        frame = backend.attach(frame, column, z, comp)
    return frame, stats


def _check_decodes(model, x, z, comp, value_type, source, stats, xp):
    """Integers and decimals must come back exactly (every row is checked); float32 output
    without learned rounding records its largest error (``--dtype float32`` is lossy)."""
    by_rounding = schema.decodes_by_rounding(value_type)
    lossy = model.dtype != "float64" and model.rounding_digits_ is None and not by_rounding
    if not (by_rounding or lossy):
        return  # float64 output: DESIGN.md's 4-ulp contract; learned rounding: checked already
    decoded = model.inverse_transform(z, comp)
    if lossy:
        stats["max_error"] = schema.max_error(decoded, x, xp)
        return
    lost = schema.inexact_rows(decoded, x, value_type, xp)
    if lost:
        raise InputError(
            f"{source}: column {model.column!r}: {lost} values would not decode exactly from "
            f"{model.dtype} normalized values (too many digits); leave the column out, or cast "
            "it to float64" + (", or use --dtype float64" if model.dtype != "float64" else "")
        )


def encode_unit(backend, fs, unit, models, types, target_schema, out_dir):
    """Encode and write every part of a unit; returns their results in order.

    A unit of one part runs in this thread. The slices of a large row group are read in one
    stream here while other threads encode and write the slices already read, as many as the
    worker has idle threads (at most one slice in flight each): one row group keeps every
    core busy, and memory stays a few slices per worker whatever the layout.
    """
    stream = _timed(backend.read_unit(fs, unit, target_schema))
    threads = _idle_threads()
    if len(unit.parts) == 1 or threads == 1:
        return [
            _encode_part(backend, part, frame, t_read, models, types, out_dir)
            for part, frame, t_read in stream
        ]
    results, inflight = [], collections.deque()
    with ThreadPoolExecutor(threads, thread_name_prefix="gpu_vgm-slice") as pool:
        try:
            for part, frame, t_read in stream:
                while len(inflight) >= threads:
                    results.append(inflight.popleft().result())
                inflight.append(
                    pool.submit(_encode_part, backend, part, frame, t_read, models, types, out_dir)
                )
            results += [f.result() for f in inflight]
        finally:
            for f in inflight:
                f.cancel()
    return results


def _timed(stream):
    """(part, frame, seconds spent reading it) from a reader's (part, frame) stream."""
    t0 = time.perf_counter()
    for part, frame in stream:
        t1 = time.perf_counter()
        yield part, frame, t1 - t0
        t0 = time.perf_counter()


def _idle_threads():
    """This task's thread and the Dask worker's idle ones (at most 4): when other tasks keep
    the worker busy, a unit's slices are encoded one after another in its own thread."""
    try:
        from distributed import get_worker

        state = get_worker().state
        return max(1, min(4, state.nthreads - state.executing_count + 1))
    except (ImportError, ValueError):  # not in a Dask task
        return max(1, min(4, os.cpu_count() or 1))


def _encode_part(backend, part, frame, t_read, models, types, out_dir):
    source = describe(part)
    t0 = time.perf_counter()
    frame, stats = encode_frame(backend, frame, models, types, part.row_offset, source)
    t1 = time.perf_counter()
    path = storage.join(out_dir, PART_NAME.format(part.index))
    backend.write(frame, path, [schema.normalized_name(c) for c in models])
    t2 = time.perf_counter()
    return part_result(part, stats, path, {"read": t_read, "encode": t1 - t0, "write": t2 - t1})


def describe(part):
    """Where a part's rows come from, for error messages: its file(s) and row groups."""
    first = part.segments[0]
    if len(part.paths) > 1:
        return f"{first.path} (+ {len(part.paths) - 1} more files)"
    if first.start:
        return f"{first.path} (row group {first.row_group}, from row {first.start})"
    groups = sorted({s.row_group for s in part.segments})
    if len(groups) > 1:
        return f"{first.path} (row groups {groups[0]}-{groups[-1]})"
    return f"{first.path} (row group {groups[0]})"


def part_result(part, stats, path, seconds):
    """What the manifest and the checkpoint keep of a written part."""
    result = {
        "index": part.index,
        "file": PART_NAME.format(part.index),
        "rows": part.num_rows,
        "row_offset": part.row_offset,
        "segments": [[s.path, s.row_group, s.start, s.rows] for s in part.segments],
        "out_of_coverage": {c: s["out_of_coverage"] for c, s in stats.items()},
        "seconds": seconds,
        "peak_rss_mb": peak_rss_mb(),
        "footer_sha256": storage.footer_sha256(path),
    }
    errors = {c: s["max_error"] for c, s in stats.items() if "max_error" in s}
    if errors:
        result["max_error"] = errors
    return result


def peak_rss_mb():
    """Peak resident memory of this worker process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
