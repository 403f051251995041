"""Functions that run on Dask workers: read a partition, encode or decode it, write one part.

Each task reads, transforms and writes in one go, so no partition's data ever travels through
the scheduler or the client, and memory per worker thread is one partition whatever the input
size.
"""

import re
import resource
import time
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gpu_vgm import schema, storage
from gpu_vgm.errors import InputError, VGMError, first_line, shorten
from gpu_vgm.params import MAX_ABS_VALUE, check_magnitude

PART_NAME = "part-{:05d}.parquet"

# ScaleVGM.fit's non-convergence warning, given on behalf of fit_column, would show up in the
# user's terminal as a worker's source line; the client logs it instead. Set once here, for
# this module only: a warnings.catch_warnings per fit is not safe when the fits of several
# columns run in threads of one worker process.
warnings.filterwarnings("ignore", message=".*did not converge", module=re.escape(__name__))


def hold(value):
    """``value`` as a task's result, for many tasks to share (the models). Unlike scattered
    data, which is lost with the worker holding it, Dask computes it again if that worker dies.
    """
    return value


def hold_checked(models):
    """``hold`` for models fitted with ``check_coverage=False``: their coverage is proven here,
    on a CPU worker, which loads the CPU kernel anyway (the client would load numba for it)."""
    for model in models.values():
        model.check_coverage()
    return models


def read_row_groups(fs, path, row_groups, columns=None):
    try:
        with fs.open(path, "rb") as f:
            return pq.ParquetFile(f).read_row_groups(
                list(row_groups), columns=columns, use_threads=False
            )
    except (OSError, pa.ArrowException) as exc:
        where = _first_unreadable(fs, path, row_groups, columns)
        raise InputError(f"{path}: cannot read {where} ({first_line(exc)})") from None


def _first_unreadable(fs, path, row_groups, columns):
    """Which row group of a failed read is damaged (read one by one: the error path only)."""
    for rg in row_groups:
        try:
            with fs.open(path, "rb") as f:
                pq.ParquetFile(f).read_row_group(rg, columns=columns, use_threads=False)
        except (OSError, pa.ArrowException):
            return f"row group {rg}"
    return f"row groups {shorten(row_groups)}"


def read_table(fs, path):
    try:
        with fs.open(path, "rb") as f:
            return pq.read_table(f, use_threads=False)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path}: not a readable Parquet file ({first_line(exc)})") from None


def write_part(table, out_dir, index, plain_columns=()):
    """Write one output part: snappy, statistics on, dictionary encoding (pyarrow's default,
    which falls back to plain by itself) except for ``plain_columns``: normalized values are
    all distinct, so a dictionary would only cost time. Input columns keep their dictionary:
    18% fewer bytes for cents, and a billion-row run is bound by the disk's write speed."""
    path = storage.join(out_dir, PART_NAME.format(index))
    options = {
        "compression": "snappy",
        "use_dictionary": [c for c in table.column_names if c not in set(plain_columns)],
        "row_group_size": max(table.num_rows, 1),
    }
    if storage.is_remote(path):
        fs, inner = storage.filesystem(path)
        with fs.open(inner, "wb") as f:
            pq.write_table(table, f, **options)
    else:
        pq.write_table(table, path, **options)
    return path


def vgm_column_encoder(model, x, row_offset):
    """The default per-column encoder: the model's own lossless kernels (CPU)."""
    from cpu_fallback import kernels

    return model.encode(x, row_offset=row_offset, backend=kernels)


def encode_partition(fs, part, models, out_dir, column_encoder=vgm_column_encoder):
    """Read a partition, append ``<col>_normalized`` and ``<col>_component``, write its part."""
    t0 = time.perf_counter()
    table = read_row_groups(fs, part.path, part.row_groups)
    if table.num_rows != part.num_rows:
        raise InputError(
            f"{part.path}: row groups {list(part.row_groups)} hold {table.num_rows}"
            f" rows, the footer said {part.num_rows}"
        )
    t_read = time.perf_counter()
    out_of_coverage = {}
    for column, model in models.items():
        values = table.column(column)
        x = schema.to_float64(values, column, part.path)
        try:
            z, comp, n_out = column_encoder(model, x, part.row_offset)
        except VGMError as exc:
            raise InputError(f"{part.path}: {exc}") from None
        if not np.isfinite(z).all():  # a model (--model-in) far narrower than these values
            raise InputError(
                f"{part.path}: column {column!r}: values too far from the model's components "
                f"for {model.dtype} normalized values (beyond {MAX_ABS_VALUE:g}?)"
            )
        lost = 0
        if schema.decodes_by_rounding(values.type):  # floats: DESIGN.md's 4-ulp contract
            lost = schema.inexact_rows(model.inverse_transform(z, comp), x, values.type)
        if lost:
            raise InputError(
                f"{part.path}: column {column!r}: {lost} values would not decode exactly from "
                f"{model.dtype} normalized values (too many digits); leave the column out, or "
                "cast it to float64"
                + (", or use --dtype float64" if model.dtype != "float64" else "")
            )
        table = schema.append_encoded(table, column, z, comp, schema.null_mask(values))
        out_of_coverage[column] = int(n_out)
    t_encode = time.perf_counter()
    write_part(table, out_dir, part.index, [schema.normalized_name(c) for c in models])
    t_write = time.perf_counter()
    return {
        "index": part.index,
        "file": PART_NAME.format(part.index),
        "source": part.path,
        "row_groups": list(part.row_groups),
        "row_offset": part.row_offset,
        "rows": table.num_rows,
        "out_of_coverage": out_of_coverage,
        "seconds": {"read": t_read - t0, "encode": t_encode - t_read, "write": t_write - t_encode},
        "peak_rss_mb": peak_rss_mb(),
    }


def peak_rss_mb():
    """Peak resident memory of this worker process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def decode_part(fs, path, index, models, fields, out_dir):
    """Inverse of encode_partition: restore each encoded column (``fields``: as they were in
    the input), drop the derived ones."""
    table = read_table(fs, path)
    drop = []
    for column, model in models.items():
        z_name, c_name = schema.normalized_name(column), schema.component_name(column)
        if z_name not in table.column_names or c_name not in table.column_names:
            raise InputError(f"{path}: {z_name!r} or {c_name!r} missing; not a gpu_vgm output?")
        z_col, c_col = table.column(z_name), table.column(c_name)
        if z_col.null_count or c_col.null_count:
            raise InputError(f"{path}: {z_name!r} or {c_name!r} holds nulls; not a gpu_vgm output")
        z = z_col.to_numpy()
        if not np.isfinite(z).all():
            raise InputError(
                f"{path}: {z_name!r} holds {int((~np.isfinite(z)).sum())} NaN or infinite values"
            )
        comp, nulls = schema.split_nulls(c_col.to_numpy())
        try:
            values = model.inverse_transform(z, comp)
        except VGMError as exc:
            raise InputError(f"{path}: {exc}") from None
        field = fields[column]
        restored = schema.restore(values, field.type, nulls)
        if restored.null_count and not field.nullable:
            field = field.with_nullable(True)
        field = field.with_type(restored.type)
        if column in table.column_names:
            table = table.set_column(table.schema.get_field_index(column), field, restored)
        else:
            table = table.append_column(field, restored)
        drop += [z_name, c_name]
    table = table.drop_columns(drop)
    write_part(table, out_dir, index)
    return {"index": index, "rows": table.num_rows}


def write_empty_part(input_schema, models, out_dir):
    """Part 0 of an input without rows: no data, but every output column and type."""
    table = input_schema.empty_table()
    for column, model in models.items():
        z, comp = np.zeros(0, dtype=model.dtype), np.zeros(0, np.int16)
        table = schema.append_encoded(table, column, z, comp)
    write_part(table, out_dir, 0, [schema.normalized_name(c) for c in models])
    return {
        "index": 0,
        "file": PART_NAME.format(0),
        "source": None,
        "row_groups": [],
        "row_offset": 0,
        "rows": 0,
        "out_of_coverage": dict.fromkeys(models, 0),
        "seconds": {"read": 0.0, "encode": 0.0, "write": 0.0},
        "peak_rss_mb": peak_rss_mb(),
    }


def read_sample(fs, path, row_group, count, columns, seed, draw):
    """``count`` rows drawn uniformly from one row group (``draw``: its place in the plan)."""
    table = read_row_groups(fs, path, [row_group], columns=columns)
    rng = np.random.default_rng([seed, draw])
    rows = np.sort(rng.choice(table.num_rows, size=min(count, table.num_rows), replace=False))
    taken = table.take(pa.array(rows))
    return {c: schema.to_float64(taken.column(c), c, path) for c in columns}


def column_min_max(fs, part, columns):
    """One pass for columns without Parquet statistics: finite (min, max) per column."""
    table = read_row_groups(fs, part.path, part.row_groups, columns=columns)
    out = {}
    for c in columns:
        x = schema.to_float64(table.column(c), c, part.path)
        if np.isinf(x).any():
            raise InputError(
                f"{part.path}: column {c!r} holds {int(np.isinf(x).sum())} infinite values"
            )
        finite = x[~np.isnan(x)]
        out[c] = (float(finite.min()), float(finite.max())) if finite.size else None
        if out[c]:
            check_magnitude(*out[c], c, part.path)
    return out


def fit_column(model, sample, value_range, check_coverage=True):
    """Fit (on a worker, or in a thread of the client); the client logs non-convergence (see the
    filter above)."""
    return model.fit(sample, value_range=value_range, check_coverage=check_coverage)
