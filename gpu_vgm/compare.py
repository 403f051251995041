"""``python -m gpu_vgm.compare A B``: are two Parquet datasets equal, row by row?

Streams both in order (any file and row-group layout), so it checks a billion rows in bounded
memory. Float columns compare bit for bit by default (-0.0 differs from 0.0; NaN equals NaN
whatever its payload; null equals null only, not NaN); ``--model M`` allows DESIGN.md's
decoding contract instead: 4 ulp of max(|x|, |m_k|, 4 s_k), taken over every component of the
column's model. Other columns, nested ones (lists, structs, maps) included, compare by exact
equality (null equals null).

Example:
    python -m gpu_vgm.compare data/in data/back --model data/out/_model.json
"""

import argparse
import logging
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gpu_vgm import cli, inputs
from gpu_vgm.errors import InputError, first_line
from gpu_vgm.modelfile import load_models

log = logging.getLogger("gpu_vgm")


def iter_file_batches(url, columns, batch_rows=1 << 20):
    """(path, batch) for the files of ``url`` in order; a corrupt file is one line naming it."""
    fs, paths = inputs.list_parquet_files(url)
    for path in paths:
        try:
            with fs.open(path, "rb") as f:
                for batch in pq.ParquetFile(f).iter_batches(
                    batch_size=batch_rows, columns=columns, use_threads=False
                ):
                    yield path, batch
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"{path}: not a readable Parquet file ({first_line(exc)})") from None


def iter_batches(url, columns, batch_rows=1 << 20):
    return (batch for _, batch in iter_file_batches(url, columns, batch_rows))


def _aligned(a_iter, b_iter):
    """Pairs of equally long tables from two batch streams of different layouts."""
    a_buf, b_buf = None, None
    while True:
        if a_buf is None or a_buf.num_rows == 0:
            a_buf = pa.Table.from_batches([next(a_iter, None) or _END])
        if b_buf is None or b_buf.num_rows == 0:
            b_buf = pa.Table.from_batches([next(b_iter, None) or _END])
        if a_buf.num_rows == 0 or b_buf.num_rows == 0:
            yield a_buf, b_buf
            return
        n = min(a_buf.num_rows, b_buf.num_rows)
        yield a_buf.slice(0, n), b_buf.slice(0, n)
        a_buf, b_buf = a_buf.slice(n), b_buf.slice(n)


_END = pa.RecordBatch.from_pylist([])


def _tolerances(models):
    """Per column, the largest max(|m_k|, 4 s_k): a bound for every row's contract scale."""
    return {c: max(np.max(np.abs(m.means_)), np.max(4 * m.stds_)) for c, m in models.items()}


def compare(a_url, b_url, model_path=None):
    """{'rows': n, 'mismatches': {column: count}, 'max_abs_error': {column: e}}."""
    files = [inputs.read_metadata(*inputs.list_parquet_files(url)) for url in (a_url, b_url)]
    first = files[0][0]
    columns = first.schema.names
    for f in files[0] + files[1]:  # Parquet readers skip a missing column without a word
        if f.schema.names != columns:
            raise InputError(
                f"columns differ: {f.path} has {f.schema.names}, {first.path} has {columns}"
            )
    scales = _tolerances(load_models(model_path)) if model_path else {}
    rows, mismatches = 0, dict.fromkeys(columns, 0)
    max_err = dict.fromkeys(columns, 0.0)
    pairs = _aligned(iter_batches(a_url, columns), iter_batches(b_url, columns))
    for ta, tb in pairs:
        if ta.num_rows != tb.num_rows:
            raise InputError(
                f"row counts differ: {a_url} has more rows than {b_url} or the "
                f"reverse (after {rows} equal-length rows)"
            )
        if ta.num_rows == 0:
            break
        rows += ta.num_rows
        for c in columns:
            x, y = ta.column(c), tb.column(c)
            if x.type != y.type:
                raise InputError(f"column {c!r}: type {x.type} vs {y.type}")
            if pa.types.is_floating(x.type):
                xa = pc.fill_null(x, np.nan).to_numpy()
                ya = pc.fill_null(y, np.nan).to_numpy()
                same = _same_bits(xa, ya) & _same_nulls(x, y)
                with np.errstate(over="ignore", invalid="ignore"):  # inf - inf, 1e308 - -1e308
                    err = np.where(same, 0.0, np.abs(xa - ya))
                err = np.where(np.isnan(err), np.inf, err)
                if c in scales:  # finite, so that NaN or inf against a number is a mismatch
                    finite = np.where(np.isfinite(xa), np.abs(xa), 0.0)
                    tol = 4 * np.spacing(np.maximum(finite, scales[c]))
                    # -0.0 comes back as -0.0 in every setting: a zero's sign is no rounding
                    flipped = (xa == 0) & (ya == 0) & (np.signbit(xa) != np.signbit(ya))
                    bad = int(np.count_nonzero((err > tol) | flipped))
                else:
                    bad = int(np.count_nonzero(~same))
                if err.size:
                    max_err[c] = max(max_err[c], float(err.max()))
            else:
                bad = _unequal_rows(x, y)
            mismatches[c] += bad
    return {"rows": rows, "mismatches": mismatches, "max_abs_error": max_err}


def _same_bits(xa, ya):
    """Equal bits, but NaN equals NaN whatever its payload: equal values of the same sign are
    the same bits, and -0.0 == 0.0 is the one equality of different bits."""
    with np.errstate(invalid="ignore"):
        equal = (xa == ya) & (np.signbit(xa) == np.signbit(ya))
    return equal | (np.isnan(xa) & np.isnan(ya))


def _same_nulls(x, y):
    if not (x.null_count or y.null_count):
        return True
    return x.is_null().to_numpy(zero_copy_only=False) == y.is_null().to_numpy(zero_copy_only=False)


def _unequal_rows(x, y):
    """Rows where two columns of one non-float type differ (null equals null): Arrow's equal
    kernel where it has one, else the Python values (lists, structs, maps have no kernel)."""
    if x.equals(y):
        return 0
    try:
        equal = pc.equal(x, y).fill_null(False)
    except pa.ArrowNotImplementedError:
        pairs = zip(x.to_pylist(), y.to_pylist(), strict=True)
        return sum(not _same(u, v) for u, v in pairs)
    return len(x) - pc.sum(pc.or_(equal, pc.and_(x.is_null(), y.is_null()))).as_py()


def _same(u, v):
    """Python values of one row equal, NaN equal to NaN at any depth (as for float columns)."""
    if isinstance(u, float) and isinstance(v, float):
        return u == v or (math.isnan(u) and math.isnan(v))
    if isinstance(u, list | tuple) and isinstance(v, list | tuple):
        return len(u) == len(v) and all(map(_same, u, v))
    if isinstance(u, dict) and isinstance(v, dict):
        return u.keys() == v.keys() and all(_same(u[k], v[k]) for k in u)
    return u == v


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m gpu_vgm.compare",
        description="Check that two Parquet datasets hold the same rows.",
    )
    p.add_argument("a", help="first dataset (e.g. data/demo/input)")
    p.add_argument("b", help="second dataset (e.g. data/demo/decoded)")
    p.add_argument(
        "--model",
        default=None,
        help="allow the decoding contract's error for float columns (e.g. "
        "--model data/demo/encoded/_model.json)",
    )
    cli.add_verbosity(p)
    return p


def _run(args):
    result = compare(args.a, args.b, args.model)
    bad = {c: n for c, n in result["mismatches"].items() if n}
    for c, e in result["max_abs_error"].items():
        log.info("%s: max |a - b| = %.3g", c, e)
    if bad:
        print(f"gpu_vgm.compare: {result['rows']} rows, mismatches: {bad}")
        return 1
    how = "within the decoding contract" if args.model else "exactly"
    print(f"gpu_vgm.compare: {result['rows']} rows, all columns equal {how}")
    return 0


def main(argv=None):
    return cli.run_command(build_parser(), _run, argv)


if __name__ == "__main__":
    cli.run_main(main)
