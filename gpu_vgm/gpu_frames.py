"""The GPU backend's tables: cudf reads, converts, attaches and writes parts on the device.

Imported only by ``gpu_vgm.backends.CudfGPU`` (it imports cudf and CuPy at the top). The
RAPIDS behaviour this relies on (cudf 26.10, read from its sources) is noted where used.
"""

import cudf
import cupy
import numpy as np
import pyarrow as pa

from gpu_vgm import schema
from gpu_vgm.errors import InputError, first_line

# Input columns whose Parquet cudf writes back exactly as pyarrow does: other types (float16,
# which cudf cannot read; decimals, which it narrows to 32 or 64 bits; dictionaries, which it
# writes plain; timestamps, nested types) keep the host-I/O GPU path, so that a GPU part holds
# the same table as a CPU part.
_PLAIN_TYPES = (
    pa.types.is_integer,
    pa.types.is_float32,
    pa.types.is_float64,
    pa.types.is_boolean,
    pa.types.is_string,  # (not large_string: cudf stores no Arrow schema, it reads back as string)
)
_CHUNK_BYTES = 1 << 30  # output size of each chunk read from a row group larger than a part
_PASS_BYTES = 4 << 30  # cudf's hint for the compressed and decompressed data of one pass


def unsupported(input_schema):
    """Why cudf's I/O cannot hold this input exactly (a column and its type), or None."""
    for f in input_schema:
        if not any(test(f.type) for test in _PLAIN_TYPES):
            return f"column {f.name!r} is {f.type}"
    return None


def read_unit(fs, unit, target_schema):
    """(part, cudf.DataFrame) for each part of ``unit``, in order, read on the device."""
    if len(unit.parts) == 1:
        part = unit.parts[0]
        yield part, _read_part(part)
        return
    try:
        yield from _stream_slices(unit)
    except (OSError, RuntimeError, ValueError, MemoryError) as exc:
        segment = unit.parts[0].segments[0]
        raise InputError(
            f"{segment.path}: cannot read row group {segment.row_group} on the GPU "
            f"({first_line(exc)})"
        ) from None


def _read_part(part):
    paths = part.paths
    groups = [[s.row_group for s in part.segments if s.path == p] for p in paths]
    try:
        # dataset_kwargs={}: no Hive partition columns from folder names, and no listing;
        # the index cudf rebuilds from pandas metadata is dropped (rows are numbered globally)
        frame = cudf.read_parquet(
            paths, row_groups=groups, use_pandas_metadata=False, dataset_kwargs={}
        ).reset_index(drop=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise InputError(f"{paths[0]}: cannot read on the GPU ({first_line(exc)})") from None
    if len(frame) != part.num_rows:
        raise InputError(f"{paths[0]}: read {len(frame)} rows, the footers said {part.num_rows}")
    return frame


def _stream_slices(unit):
    """The parts of one large row group: cudf's chunked reader decodes it in chunks of about
    _CHUNK_BYTES (skip_rows cannot be combined with row_groups), cut at the parts' rows."""
    import pylibcudf as plc

    segment = unit.parts[0].segments[0]
    options = (
        plc.io.parquet.ParquetReaderOptions.builder(plc.io.SourceInfo([segment.path]))
        .use_pandas_metadata(False)
        .build()
    )
    options.set_row_groups([[segment.row_group]])
    reader = plc.io.parquet.ChunkedParquetReader(
        options, chunk_read_limit=_CHUNK_BYTES, pass_read_limit=_PASS_BYTES
    )
    pending = None
    first = True
    for part in unit.parts:
        pieces, need = [], part.num_rows
        while need:
            if pending is None or len(pending) == 0:
                if not (first or reader.has_next()):
                    raise InputError(
                        f"{segment.path}: row group {segment.row_group} ends early; the footer "
                        "said more rows"
                    )
                pending, first = cudf.DataFrame.from_pylibcudf(reader.read_chunk()), False
            take = min(need, len(pending))
            pieces.append(pending.iloc[:take])
            pending, need = pending.iloc[take:], need - take
        yield part, cudf.concat(pieces, ignore_index=True)


def num_rows(frame):
    return len(frame)


def column(frame, name, source):
    """(float64 CuPy values with NaN where null, CuPy null mask or None) of a numeric column.

    cudf's isnull() counts NaN as null, so the mask comes from the column's validity alone;
    to_cupy(na_value=nan) turns nulls into NaN and keeps NaN as NaN.
    """
    series = frame[name]
    kind = series.dtype.kind
    if kind not in "fiu":
        raise InputError(f"{source}: column {name!r} is {series.dtype}, expected numbers")
    if kind in "iu" and series.null_count < len(series) and int(series.abs().max()) > 2**53:
        raise InputError(
            f"{source}: column {name!r} holds integers beyond 2^53, which float64 cannot hold; "
            "such integers cannot be encoded exactly"
        )
    col = series._column
    nulls = None if col.null_count == 0 else ~cupy.asarray(col.is_valid())
    return series.to_cupy(dtype="float64", na_value=np.nan), nulls


def attach(frame, name, z, component):
    """Append the two columns without a null mask (cudf's ``df[c] = arr`` would make NaN null
    and the column nullable; the CPU parts' derived columns are not nullable). A shallow copy
    first: a Dask partition may be the caller's own DataFrame."""
    frame = frame.copy(deep=False)
    frame.insert(len(frame.columns), schema.normalized_name(name), z, nan_as_null=False)
    frame.insert(len(frame.columns), schema.component_name(name), component, nan_as_null=False)
    return frame


def write(frame, path, plain_columns=()):
    """One part as the CPU writes it: snappy, row-group statistics, one row group, dictionary
    where it pays and plain for ``plain_columns``. cudf writes no page checksums."""
    frame.to_parquet(
        path,
        compression="snappy",
        index=False,
        statistics="ROWGROUP",
        row_group_size_rows=max(len(frame), 1),
        column_encoding={c: "PLAIN" for c in plain_columns},
    )


def decode_frame(frame, models):
    """``VGMEncoder.inverse_transform`` on a cudf partition: each column decoded on the device
    into its own dtype (nulls where the encoding marked them), the derived columns dropped."""
    derived = [n for c in models for n in (schema.normalized_name(c), schema.component_name(c))]
    restored = {}
    for column, model in models.items():
        z = frame[schema.normalized_name(column)].to_cupy()
        comp = frame[schema.component_name(column)].to_cupy()
        nulls = comp == schema.NULL_COMPONENT
        values = model.inverse_transform(z, cupy.where(nulls, -1, comp).astype(cupy.int16))
        dtype = frame[column].dtype if column in frame.columns else np.dtype(np.float64)
        if dtype.kind in "iu":
            values = cupy.rint(cupy.where(cupy.isnan(values), 0, values))
        series = cudf.Series(values.astype(dtype), index=frame.index, nan_as_null=False)
        if bool(nulls.any()):
            series = series.mask(cudf.Series(nulls, index=frame.index))
        restored[column] = series
    frame = frame.drop(columns=derived)
    for column, series in restored.items():
        frame[column] = series  # a Series keeps its own column: NaN stays NaN
    return frame
