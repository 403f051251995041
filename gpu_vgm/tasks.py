"""Functions that run on Dask workers, besides the partition pipeline (``gpu_vgm.partition``):
the shared models, the fit, the sample and range passes, and decoding a part.

Each task reads, transforms and writes in one go, so no partition's data ever travels through
the scheduler or the client.
"""

import re
import warnings

import numpy as np
import pyarrow as pa

from gpu_vgm import partition, readers, schema, storage
from gpu_vgm.errors import InputError, PoorFitWarning, VGMError
from gpu_vgm.params import check_magnitude

# ScaleVGM.fit's poor-fit warning, given on behalf of fit_column, would show up in the user's
# terminal as a worker's source line; the client logs it instead (fitting.log_fit). Set once
# here, for this module only: a warnings.catch_warnings per fit is not safe when the fits of
# several columns run in threads of one worker process.
warnings.filterwarnings("ignore", category=PoorFitWarning, module=re.escape(__name__))


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


def write_empty_part(input_schema, models, out_dir):
    """Part 0 of an input without rows: no data, but every output column and type."""
    table = input_schema.empty_table()
    for column, model in models.items():
        z, comp = np.zeros(0, dtype=model.dtype), np.zeros(0, np.int16)
        table = schema.append_encoded(table, column, z, comp)
    path = storage.join(out_dir, partition.PART_NAME.format(0))
    readers.write_part(table, path, [schema.normalized_name(c) for c in models])
    empty = {c: {"out_of_coverage": 0} for c in models}
    seconds = {"read": 0.0, "encode": 0.0, "write": 0.0}
    from gpu_vgm.inputs import Part

    return partition.part_result(Part(0, 0, 0, ()), empty, path, seconds)


def decode_part(fs, path, index, models, fields, out_dir, footer_sha256=None):
    """Inverse of the encode: restore each encoded column (``fields``: as they were in the
    input), drop the derived ones. ``footer_sha256``: the manifest's, so that a changed or
    swapped part is refused rather than decoded with the wrong rows' models."""
    if footer_sha256 and storage.footer_sha256(storage.unstrip(fs, path)) != footer_sha256:
        raise InputError(
            f"{path}: not the part the manifest lists (its footer's SHA-256 differs): a "
            "changed, replaced or swapped part"
        )
    table = readers.read_table(fs, path, verify_checksums=True)
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
        except (VGMError, ValueError) as exc:
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
    readers.write_part(table, storage.join(out_dir, partition.PART_NAME.format(index)))
    return {"index": index, "rows": table.num_rows}


def read_sample(fs, path, row_group, count, columns, seed, draw):
    """``count`` rows drawn uniformly from one row group (``draw``: its place in the plan),
    as float64 (float32 for float32 columns, so that learned rounding learns in float32)."""
    table = readers.read_row_groups(fs, path, [row_group], columns=columns)
    rng = np.random.default_rng([seed, draw])
    rows = np.sort(rng.choice(table.num_rows, size=min(count, table.num_rows), replace=False))
    taken = table.take(pa.array(rows))
    return {c: schema.sample_values(taken.column(c), c, path) for c in columns}


def column_min_max(fs, unit, columns):
    """One pass for columns without Parquet statistics: finite (min, max) per column."""
    out = dict.fromkeys(columns)
    for part, table in readers.read_unit(fs, unit, None, columns):
        source = partition.describe(part)
        for c in columns:
            x = schema.to_float64(table.column(c), c, source)
            if np.isinf(x).any():
                n_inf = int(np.isinf(x).sum())
                raise InputError(f"{source}: column {c!r} holds {n_inf} infinite values")
            finite = x[~np.isnan(x)]
            if finite.size:
                lo, hi = float(finite.min()), float(finite.max())
                check_magnitude(lo, hi, c, source)
                out[c] = (lo, hi) if out[c] is None else (min(out[c][0], lo), max(out[c][1], hi))
    return out


def fit_column(model, sample, value_range, check_coverage=True):
    """Fit (on a worker, or in a thread of the client); the client logs non-convergence (see the
    filter above)."""
    return model.fit(sample, value_range=value_range, check_coverage=check_coverage)
