"""Write a large test table as Parquet: a synthetic ``Amount`` column or a resampled real table.

Synthetic mode imitates the Kaggle credit-card fraud ``Amount`` column: a heavy right tail
(lognormal, median about 22, mean about 88), cents (``np.round(v, 2)``), about 0.6 % exact zeros,
nothing above 25691.16 and (from 1000 rows) that exact maximum exactly once. ``--from FILE``
instead replicates a real CSV/Parquet table to ``--rows`` rows: rows are drawn with replacement,
float columns get Gaussian noise of 1 % of their standard deviation (kept within the source range
and rounded to the decimals the source uses), every other column is copied as drawn.

Rows are produced in fixed blocks of 65536 global rows, each from its own seeded generator, so the
data is a pure function of (seed, total rows): the same whatever --workers, --files or
--row-group-size. Files are written in parallel, one row group at a time, into a temporary
directory that replaces --output only when complete.

    python -m gpu_vgm.generate --rows 100000000 --output data/input
    python -m gpu_vgm.generate --rows 1000000 --from creditcard.csv --output data/cc --overwrite
"""

import argparse
import logging
import math
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from tqdm import tqdm

from gpu_vgm import cli, storage
from gpu_vgm.atomic import atomic_directory, check_output
from gpu_vgm.errors import InputError, OutputError

log = logging.getLogger("gpu_vgm")

BLOCK_ROWS = 1 << 16  # rows per seeded generator; the unit of determinism
MAX_ROWS_PER_FILE = 10_000_000
DEFAULT_ROW_GROUP = 1_000_000

# The synthetic Amount column.
COLUMN = "Amount"
LOG_MEDIAN = math.log(22.0)  # lognormal mu: median 22
LOG_SIGMA = math.sqrt(2.0 * math.log(4.0))  # mean = median * exp(sigma^2 / 2) = 88
ZERO_FRACTION = 0.006
AMOUNT_MAX = 25691.16  # planted exactly once (rows >= 1000)
BELOW_MAX = 25691.15  # every other value is at most this
REDRAW_LOW = 1000.0  # values over the cap are redrawn uniformly in [REDRAW_LOW, BELOW_MAX]
PLANT_MIN_ROWS = 1000
NOISE_FRACTION = 0.01  # --from: noise std as a fraction of the column std
MAX_DECIMALS = 10

# Stream tags so the different random uses never share a generator.
_SYNTHETIC, _RESAMPLE, _MAX_POSITION = 1, 2, 3


# --------------------------------------------------------------------------- data blocks


def _generator(seed: int, stream: int, index: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, stream, index])))


def max_position(seed: int, rows: int) -> int:
    """The global row holding AMOUNT_MAX, or -1 when there are fewer than 1000 rows."""
    if rows < PLANT_MIN_ROWS:
        return -1
    return int(_generator(seed, _MAX_POSITION, rows).integers(rows))


def synthetic_amounts(seed: int, rows: int, block: int, max_row: int) -> np.ndarray:
    """Block ``block`` of the synthetic Amount column (global rows block*65536 ...)."""
    start = block * BLOCK_ROWS
    n = min(BLOCK_ROWS, rows - start)
    rng = _generator(seed, _SYNTHETIC, block)
    values = np.round(rng.lognormal(LOG_MEDIAN, LOG_SIGMA, n), 2)
    over = values > BELOW_MAX
    count = int(over.sum())
    if count:
        values[over] = np.round(rng.uniform(REDRAW_LOW, BELOW_MAX, count), 2)
    values[rng.random(n) < ZERO_FRACTION] = 0.0
    if start <= max_row < start + n:
        values[max_row - start] = AMOUNT_MAX
    return values


def learn_decimals(values: np.ndarray) -> int | None:
    """Smallest d <= 10 with round(x, d) == x for every finite value, else None."""
    finite = values[np.isfinite(values)]
    for d in range(MAX_DECIMALS + 1):
        if np.array_equal(np.round(finite, d), finite):
            return d
    return None


def float_column_params(column: pa.ChunkedArray) -> dict:
    """Noise scale, value range and decimals of one float source column."""
    values = column.to_numpy()  # nulls become NaN
    finite = values[np.isfinite(values)]
    std = float(np.std(finite.astype(np.float64))) if finite.size else 0.0
    not_nan = values[~np.isnan(values)]
    low = float(not_nan.min()) if not_nan.size else -np.inf
    high = float(not_nan.max()) if not_nan.size else np.inf
    return {
        "scale": NOISE_FRACTION * std,
        "low": low,
        "high": high,
        "decimals": learn_decimals(values),
    }


def _noisy(array: pa.Array, params: dict, rng: np.random.Generator) -> pa.Array:
    values = array.to_numpy(zero_copy_only=False)  # float: nulls -> NaN
    dtype = values.dtype
    noise = rng.standard_normal(len(values)) * params["scale"]
    out = np.clip(values.astype(np.float64) + noise, params["low"], params["high"]).astype(dtype)
    if params["decimals"] is not None:
        out = np.round(out, params["decimals"])
    mask = array.is_null().to_numpy(zero_copy_only=False) if array.null_count else None
    return pa.array(out, type=array.type, mask=mask)


def resampled_block(spec: dict, block: int) -> pa.Table:
    """Block ``block`` of the --from table: rows drawn with replacement, float columns noised."""
    source = spec["source"]
    n = min(BLOCK_ROWS, spec["rows"] - block * BLOCK_ROWS)
    rng = _generator(spec["seed"], _RESAMPLE, block)
    taken = source.take(pa.array(rng.integers(0, source.num_rows, n)))
    columns = []
    for name, column in zip(taken.column_names, taken.columns, strict=True):
        params = spec["floats"].get(name)
        if params is not None:
            column = _noisy(column.combine_chunks(), params, rng)
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=source.schema)


def make_block(spec: dict, block: int) -> pa.Table:
    if spec["mode"] == "synthetic":
        values = synthetic_amounts(spec["seed"], spec["rows"], block, spec["max_row"])
        return pa.Table.from_arrays([pa.array(values)], schema=spec["schema"])
    return resampled_block(spec, block)


def make_rows(spec: dict, start: int, end: int, cache: dict | None = None) -> pa.Table:
    """Global rows [start, end) as one table (cache keeps the last block for the next call)."""
    cache = {} if cache is None else cache
    pieces = []
    for block in range(start // BLOCK_ROWS, (end - 1) // BLOCK_ROWS + 1):
        if cache.get("block") != block:
            cache["block"], cache["table"] = block, make_block(spec, block)
        base = block * BLOCK_ROWS
        low, high = max(start, base) - base, min(end, base + BLOCK_ROWS) - base
        pieces.append(cache["table"].slice(low, high - low))
    if not pieces:
        return spec["schema"].empty_table()
    return pa.concat_tables(pieces) if len(pieces) > 1 else pieces[0]


# --------------------------------------------------------------------------- files

_SPEC: dict | None = None  # set once per worker process by _init


def _init(spec):
    global _SPEC
    _SPEC = spec


def write_file(path: str, start: int, end: int, row_group_size: int) -> int:
    """Write global rows [start, end) to one Parquet file, one row group at a time."""
    spec = _SPEC
    cache: dict = {}
    with pq.ParquetWriter(
        path, spec["schema"], compression="snappy", write_statistics=True
    ) as writer:
        for first in range(start, end, row_group_size):
            last = min(first + row_group_size, end)
            writer.write_table(make_rows(spec, first, last, cache), row_group_size=row_group_size)
    return end - start


def file_ranges(rows: int, files: int) -> list[tuple[int, int]]:
    """Split rows into ``files`` consecutive ranges whose sizes differ by at most one."""
    base, extra = divmod(rows, files)
    ranges, start = [], 0
    for i in range(files):
        end = start + base + (1 if i < extra else 0)
        ranges.append((start, end))
        start = end
    return ranges


def _pool_context():
    methods = multiprocessing.get_all_start_methods()
    if "forkserver" in methods:  # no fork of a process that may hold Arrow threads
        context = multiprocessing.get_context("forkserver")
        # Not gpu_vgm.generate itself: under ``python -m`` runpy would warn about a second copy.
        context.set_forkserver_preload(["gpu_vgm", "pyarrow.csv", "pyarrow.parquet"])
        return context
    return multiprocessing.get_context("spawn")


def write_files(
    spec: dict, directory: Path, files: int, row_group_size: int, workers: int, progress: bool
) -> None:
    """Write part-00000.parquet ... into ``directory``; in parallel when workers > 1."""
    import gpu_vgm.generate as this  # the importable module, also under ``python -m``

    tasks = [
        (str(directory / f"part-{i:05d}.parquet"), start, end, row_group_size)
        for i, (start, end) in enumerate(file_ranges(spec["rows"], files))
    ]
    workers = max(1, min(workers, len(tasks)))
    with tqdm(total=len(tasks), unit="file", disable=not progress, file=sys.stderr) as bar:
        if workers == 1:
            this._init(spec)
            try:
                for task in tasks:
                    this.write_file(*task)
                    bar.update()
            finally:
                this._init(None)
            return
        pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=_pool_context(),
            initializer=this._init,
            initargs=(spec,),
        )
        try:
            futures = [pool.submit(this.write_file, *task) for task in tasks]
            for future in as_completed(futures):
                future.result()
                bar.update()
        finally:  # on an error, drop queued files and wait for running ones before cleanup
            pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------- inputs


def read_source(path) -> pa.Table:
    """The --from table (CSV via pyarrow.csv, or Parquet) with InputErrors naming the file."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"--from file {path} does not exist")
    name = path.name.lower()
    is_csv = name.endswith((".csv", ".csv.gz", ".csv.bz2"))
    if not is_csv and not (name.endswith((".parquet", ".pq")) or path.is_dir()):
        raise InputError(f"--from file {path}: expected a .csv or .parquet file")
    try:
        table = pa_csv.read_csv(path) if is_csv else pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot read --from file {path}: {reason}") from exc
    if table.num_columns == 0:
        raise InputError(f"--from file {path} has no columns")
    return table.combine_chunks()


def build_spec(args) -> dict:
    if args.source is None:
        return {
            "mode": "synthetic",
            "seed": args.seed,
            "rows": args.rows,
            "schema": pa.schema([pa.field(COLUMN, pa.float64())]),
            "max_row": max_position(args.seed, args.rows),
        }
    source = read_source(args.source)
    if source.num_rows == 0 and args.rows > 0:
        raise InputError(f"--from file {args.source} has no rows to replicate")
    floats = {
        name: float_column_params(column)
        for name, column in zip(source.column_names, source.columns, strict=True)
        if pa.types.is_floating(column.type)
    }
    return {
        "mode": "resample",
        "seed": args.seed,
        "rows": args.rows,
        "schema": source.schema,
        "source": source,
        "floats": floats,
    }


def _check_args(args):
    for flag, value, least in (
        ("--rows", args.rows, 0),
        ("--files", args.files, 1),
        ("--row-group-size", args.row_group_size, 1),
        ("--workers", args.workers, 1),
        ("--seed", args.seed, 0),
    ):
        if value is not None and value < least:
            raise InputError(f"{flag} must be >= {least}, got {value}")
    if args.files and args.files > max(args.rows, 1):
        raise InputError(
            f"--files {args.files} is more than --rows {args.rows}: files would be empty"
        )


# --------------------------------------------------------------------------- command


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m gpu_vgm.generate",
        description="Write a synthetic credit-card-like Amount column, or a resampled copy of a "
        "real table, as part-NNNNN.parquet files.",
    )
    parser.add_argument("--rows", type=int, required=True, help="total rows (e.g. --rows 1000000)")
    parser.add_argument("--output", required=True, help="output directory (e.g. data/input)")
    parser.add_argument(
        "--files",
        type=int,
        default=None,
        help="number of files (default: at most 10M rows per file, at least 1)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--row-group-size",
        type=int,
        default=DEFAULT_ROW_GROUP,
        help=f"rows per Parquet row group (default {DEFAULT_ROW_GROUP})",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument(
        "--from",
        dest="source",
        default=None,
        metavar="FILE",
        help="replicate this .csv or .parquet table instead of the synthetic Amount column",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="parallel processes (default: the number of CPUs)",
    )
    cli.add_verbosity(parser)
    return parser


def _run(args) -> int:
    _check_args(args)
    if args.source:
        storage.check_apart(args.output, [args.source])
    output = check_output(args.output, args.overwrite)  # fail before reading a large --from file
    files = args.files or max(1, math.ceil(args.rows / MAX_ROWS_PER_FILE))
    workers = args.workers or os.cpu_count() or 1
    spec = build_spec(args)
    started = time.perf_counter()
    log.debug(
        "generating %d rows into %d files (%d workers, row groups of %d)",
        args.rows,
        files,
        min(workers, files),
        args.row_group_size,
    )
    progress = not args.quiet and sys.stderr.isatty()
    with atomic_directory(output, args.overwrite) as tmp:
        try:
            write_files(spec, tmp, files, args.row_group_size, workers, progress)
        except OSError as exc:
            raise OutputError(f"cannot write {output}: {exc}") from exc
    seconds = time.perf_counter() - started
    log.info(
        "wrote %d rows in %d file%s in %.1f s to %s",
        args.rows,
        files,
        "" if files == 1 else "s",
        seconds,
        output,
    )
    return 0


def main(argv=None) -> int:
    return cli.run_command(build_parser(), _run, argv)


if __name__ == "__main__":
    cli.run_main(main)
