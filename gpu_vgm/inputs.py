"""Input discovery from Parquet metadata alone: files, row counts, row groups, column ranges.

Everything here reads footers only (no data pages), so planning a billion-row job costs
milliseconds per file. Rows are numbered globally: files in sorted order, rows in file order;
that numbering keys sample-mode draws, so it must never depend on how work is split.
"""

import itertools
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gpu_vgm import storage
from gpu_vgm.errors import InputError, first_line, shorten
from gpu_vgm.params import check_magnitude

# A decimal of up to 15 digits has a float64 that rounds back to it; the encoder still checks
# every row (schema.inexact_rows), since the decoding error can reach a few units of the last
# digit where the mixture's component is much wider than the value.
MAX_DECIMAL_DIGITS = 15


@dataclass(frozen=True)
class InputFile:
    path: str
    row_offset: int
    num_rows: int
    row_group_rows: tuple  # rows per row group
    row_group_bytes: tuple  # bytes per row group once read into memory (memory_bytes)
    schema: pa.Schema = field(compare=False)
    # what --resume compares to know the file is unchanged: a rewrite with the same rows and
    # row groups but other values changes the footer (statistics, offsets) or the size or time
    size: int = 0
    modified: str | None = None
    footer_sha256: str = ""
    metadata: object = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Segment:
    """Rows ``start .. start + rows`` of one row group of one file."""

    path: str
    row_group: int
    start: int
    rows: int


@dataclass(frozen=True)
class Part:
    """One output part: consecutive input rows, from one or several files (small ones
    coalesced) or a slice of one large row group."""

    index: int
    row_offset: int
    num_rows: int
    segments: tuple

    @property
    def paths(self):
        return list(dict.fromkeys(s.path for s in self.segments))


@dataclass(frozen=True)
class Unit:
    """The rows one task reads in one stream and the parts it writes: one part, or the
    slices of a row group larger than a partition (read once, written as several parts)."""

    parts: tuple

    @property
    def num_rows(self):
        return sum(p.num_rows for p in self.parts)


def open_fs(url):
    """(filesystem, path) for a local path or an fsspec URL (s3://..., memory://...)."""
    try:
        return fsspec.core.url_to_fs(str(url))
    except (ImportError, ValueError) as exc:
        raise InputError(f"{url}: cannot open this location ({exc})") from None


def list_parquet_files(url):
    """Sorted Parquet files of a file, directory (recursively) or glob."""
    fs, path = open_fs(url)
    fs.invalidate_cache()  # object stores: another process may have written it meanwhile
    if any(ch in path for ch in "*?["):
        found = sorted(p for p in fs.glob(path) if fs.isfile(p))
        # folders the glob reaches into (a reader of the same glob makes columns of them)
        fixed = path.split("/")
        fixed = "/".join(
            fixed[: next(i for i, p in enumerate(fixed) if any(c in p for c in "*?["))]
        )
        _refuse_hive_folders(url, fixed, found)
    elif fs.isdir(path):
        found = sorted(
            p
            for p in fs.find(path)
            if p.endswith((".parquet", ".parq", ".pq")) and not _hidden(p, path)
        )
        _refuse_hive_folders(url, path, found)
    elif fs.isfile(path):
        found = [path]
    else:
        raise InputError(f"{url}: no such file or directory")
    if not found:
        raise InputError(f"{url}: no Parquet files found (expected *.parquet)")
    return fs, found


def _hidden(p, root):
    rel = p[len(root.rstrip("/")) + 1 :]
    return any(part.startswith(("_", ".")) for part in rel.split("/"))


_HIVE_FOLDER = re.compile(r"^([^=/]+)=([^/]*)$")


def _refuse_hive_folders(url, root, found):
    """Readers such as pyarrow and Spark turn ``year=2023/`` folders into a column; gpu_vgm
    reads files, so such a column would be dropped without a word: refuse instead."""
    for p in found:
        for folder in p[len(root.rstrip("/")) + 1 :].split("/")[:-1]:
            m = _HIVE_FOLDER.match(folder)
            if m:
                raise InputError(
                    f"{url}: {folder!r} is a Hive partition folder, whose key {m.group(1)!r} "
                    "gpu_vgm would drop; encode each partition folder on its own, or store "
                    f"{m.group(1)!r} as a column in the files"
                )


def read_metadata(fs, paths):
    """InputFile for each path, with global row offsets; a corrupt footer names its file.
    Footers are read in threads: thousands of small files, or an object store, would
    otherwise wait for each in turn."""
    with ThreadPoolExecutor(max_workers=min(16, max(1, len(paths)))) as pool:
        footers = list(pool.map(lambda p: _read_footer(fs, p), paths))
    files = []
    offset = 0
    for path, (meta, size, modified, digest) in zip(paths, footers, strict=True):
        rg_rows = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
        rg_bytes = tuple(memory_bytes(meta, i) for i in range(meta.num_row_groups))
        schema = meta.schema.to_arrow_schema()
        files.append(
            InputFile(
                path, offset, meta.num_rows, rg_rows, rg_bytes, schema, size, modified, digest, meta
            )
        )
        offset += meta.num_rows
    return files


# Bytes per value of Parquet's fixed-width physical types once read (Arrow), where the file's
# own sizes count the encoded pages: a dictionary-encoded float column of cents takes 2-3
# bytes a value on disk and 8 in memory.
_WIDTH = {"BOOLEAN": 1, "INT32": 4, "INT64": 8, "INT96": 8, "FLOAT": 4, "DOUBLE": 8}


def memory_bytes(meta, row_group):
    """About the bytes a row group takes once read (what --partition-size in bytes counts):
    rows times the width of fixed-width columns, the uncompressed pages of the others."""
    group = meta.row_group(row_group)
    total = 0
    for i in range(group.num_columns):
        chunk = group.column(i)
        kind = chunk.physical_type
        if kind in _WIDTH:
            total += group.num_rows * _WIDTH[kind]
        elif kind == "FIXED_LEN_BYTE_ARRAY":  # decimals: 16 bytes in Arrow
            total += group.num_rows * max(meta.schema.column(i).length, 16)
        else:
            total += chunk.total_uncompressed_size
    return total


def _read_footer(fs, path):
    """(FileMetaData, size, modification time or None, SHA-256 of the footer's bytes)."""
    try:
        with fs.open(path, "rb") as f:
            meta = pq.ParquetFile(f).metadata
            digest = storage.footer_digest(f)
            size = f.size
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise InputError(f"{path}: not a readable Parquet file ({first_line(exc)})") from None
    try:
        modified = fs.modified(path).isoformat()
    except (NotImplementedError, OSError, AttributeError, ValueError):
        modified = None  # stores without times: the footer and size still tell
    return meta, size, modified, digest


def value_type(t):
    """The type of the values: a dictionary-encoded column counts as its values."""
    return t.value_type if pa.types.is_dictionary(t) else t


def is_encodable_type(t):
    t = value_type(t)
    return pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_decimal(t)


def check_same_schema(files):
    """Every file must have the first file's columns and types: parts are concatenated."""
    first = files[0]
    names = first.schema.names
    twice = [n for n in dict.fromkeys(names) if names.count(n) > 1]
    if twice:
        raise InputError(f"{first.path}: column {twice[0]!r} appears more than once")
    for f in files[1:]:
        if f.schema.names != first.schema.names:
            raise InputError(
                f"{f.path}: columns {shorten(f.schema.names)} differ from "
                f"{first.path}'s {shorten(first.schema.names)}"
            )
        for col in f.schema:
            other = first.schema.field(col.name).type
            if value_type(col.type) != value_type(other):
                raise InputError(
                    f"{f.path}: column {col.name!r} is {col.type}, but {other} in {first.path}"
                )


def select_columns(files, requested):
    """The columns to encode: as requested (checked in every file) or every float column."""
    if requested:
        columns = list(dict.fromkeys(requested))
    else:
        first = files[0].schema
        columns = [f.name for f in first if pa.types.is_floating(value_type(f.type))]
        if not columns:
            raise InputError(
                f"{files[0].path}: no floating-point columns to encode; name some with --columns"
            )
    for f in files:
        names = set(f.schema.names)
        missing = [c for c in columns if c not in names]
        if missing:
            raise InputError(
                f"{f.path}: column {missing[0]!r} not found (has {shorten(f.schema.names)})"
            )
        for c in columns:
            t = f.schema.field(c).type
            if not is_encodable_type(t):
                raise InputError(f"{f.path}: column {c!r} is {t}, expected a numeric column")
            if pa.types.is_decimal(value_type(t)) and value_type(t).precision > MAX_DECIMAL_DIGITS:
                raise InputError(
                    f"{f.path}: column {c!r} is {t}: more than {MAX_DECIMAL_DIGITS} digits do "
                    "not survive float64; leave it out or cast it to float64"
                )
    return columns


def column_ranges(fs, files, columns):
    """{column: (lo, hi) or None} from row-group statistics; None where any are missing."""
    ranges = {c: [np.inf, -np.inf] for c in columns}
    complete = dict.fromkeys(columns, True)
    for f in files:
        meta = f.metadata
        if meta is None:
            with fs.open(f.path, "rb") as fh:
                meta = pq.ParquetFile(fh).metadata
        index = {meta.schema.column(i).path: i for i in range(meta.num_columns)}
        for rg in range(meta.num_row_groups):
            group = meta.row_group(rg)
            if group.num_rows == 0:
                continue
            for c in columns:
                stats = group.column(index[c]).statistics
                if stats is None or not stats.has_min_max:
                    if stats is not None and stats.null_count == group.num_rows:
                        continue  # all null: nothing to cover
                    complete[c] = False
                    continue
                if any(isinstance(v, int) and abs(v) > 2**53 for v in (stats.min, stats.max)):
                    raise InputError(
                        f"{f.path}: column {c!r} holds integers beyond 2^53, which float64 "
                        "cannot hold; such integers cannot be encoded exactly"
                    )
                lo, hi = _as_float(stats.min), _as_float(stats.max)
                if np.isinf(lo) or np.isinf(hi):
                    raise InputError(f"{f.path}: column {c!r} holds infinite values")
                check_magnitude(lo, hi, c, f.path)
                r = ranges[c]
                r[0], r[1] = min(r[0], lo), max(r[1], hi)
    return {
        c: (tuple(ranges[c]) if complete[c] and ranges[c][0] <= ranges[c][1] else None)
        for c in columns
    }


def _as_float(v):
    if isinstance(v, bytes):  # float16 statistics come as the value's two bytes
        return float(np.frombuffer(v, dtype="<f2")[0])
    return float(v)  # Decimal, int and float statistics alike


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)


def parse_size(text):
    """'4M' -> ('rows', 4_000_000); '256MiB' / '128MB' -> ('bytes', n)."""
    m = _SIZE.match(str(text))
    if not m:
        raise InputError(f"--partition-size {text!r}: expected rows like 4M or bytes like 256MiB")
    number, prefix, unit = float(m.group(1)), m.group(2).lower(), (m.group(3) or "").lower()
    power = "kmgt".index(prefix) + 1 if prefix else 0
    if unit:
        value, kind = number * (1024 if unit == "ib" else 1000) ** power, "bytes"
    else:
        value, kind = number * 1000**power, "rows"
    if value < 1:
        raise InputError(f"--partition-size {text!r} must be positive")
    return kind, int(value)


def plan_units(files, size):
    """Split the input into output parts of about ``size`` in input order: consecutive row
    groups and files are grouped up to the size; a row group larger than it is cut into
    equal slices, which one task reads in one stream (Unit). ``size`` is ("rows", n) or
    ("bytes", n) of uncompressed input, or a list of both (a part keeps within each)."""
    limits = dict(size if isinstance(size, list) else [size])
    units, pending = [], []  # pending: segments of the part being grouped
    state = {"offset": 0, "index": 0, "rows": 0, "bytes": 0}

    def add_part(segments):
        rows = sum(s.rows for s in segments)
        part = Part(state["index"], state["offset"], rows, tuple(segments))
        state["index"] += 1
        state["offset"] += rows
        return part

    def flush():
        if pending:
            units.append(Unit((add_part(pending),)))
            pending.clear()
            state["rows"] = state["bytes"] = 0

    for f in files:
        for rg, (n, nbytes) in enumerate(zip(f.row_group_rows, f.row_group_bytes, strict=True)):
            if n == 0:
                continue
            weight = {"rows": n, "bytes": max(nbytes, 1)}
            slices = min(n, max(-(-weight[k] // limit) for k, limit in limits.items()))
            if slices > 1:
                flush()
                bounds = [n * i // slices for i in range(slices + 1)]
                units.append(
                    Unit(
                        tuple(
                            add_part([Segment(f.path, rg, a, b - a)])
                            for a, b in itertools.pairwise(bounds)
                        )
                    )
                )
                continue
            if pending and any(state[k] + weight[k] > limit for k, limit in limits.items()):
                flush()
            pending.append(Segment(f.path, rg, 0, n))
            state["rows"] += weight["rows"]
            state["bytes"] += weight["bytes"]
    flush()
    return units


def parts_of(units):
    return [p for u in units for p in u.parts]


def sample_plan(files, sample_size, seed, max_groups=64, min_groups=16, rows_per_draw=20):
    """[(path, row_group, n_rows_to_draw)]: which row groups to read for the fit sample.

    Row groups are drawn from all files, with probability proportional to their rows and
    without replacement, until they hold ``rows_per_draw`` times the sample (but at least
    ``min_groups`` and at most ``max_groups`` of them); rows are then drawn uniformly inside
    them in proportion to size. Every row is equally likely, and a billion-row input needs
    only a few row groups decoded.
    """
    groups = [(f.path, i, n) for f in files for i, n in enumerate(f.row_group_rows) if n]
    if not groups or sample_size <= 0:
        return []
    rng = np.random.default_rng([seed, 0x5A3F])
    rows = np.array([g[2] for g in groups], dtype=np.float64)
    if len(groups) > min_groups:
        # numpy draws these one after another, so every prefix is itself such a draw
        order = rng.choice(
            len(groups), size=min(max_groups, len(groups)), replace=False, p=rows / rows.sum()
        )
        enough = np.cumsum(rows[order]) >= rows_per_draw * sample_size
        count = max(min_groups, int(np.argmax(enough)) + 1 if enough.any() else order.size)
        chosen = np.sort(order[:count])
    else:
        chosen = np.arange(len(groups))
    sizes = rows[chosen]
    take = min(sample_size, int(sizes.sum()))
    counts = rng.multivariate_hypergeometric(sizes.astype(np.int64), take)
    return [(groups[i][0], groups[i][1], int(k)) for i, k in zip(chosen, counts, strict=True) if k]
