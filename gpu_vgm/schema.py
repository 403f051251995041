"""The output schema, in one place: names, types and how columns move between Arrow and NumPy.

An encoded file holds the input columns, then for each encoded column ``<col>_normalized``
(float64, or float32 with --dtype float32) and ``<col>_component`` (int16; -1 = NaN, -2 = null,
-3 = -0.0 where 0 is not a special value, each with normalized 0). No dots in names: Spark and
SQL users would have to quote them.
"""

import base64
import decimal
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpu_vgm import inputs, params
from gpu_vgm.errors import InputError

COMPONENT_TYPE = pa.int16()
NEG_ZERO_COMPONENT = params.NEG_ZERO_COMPONENT  # the kernels' id of -0.0 (no special value 0)
# The kernels give NaN component -1; a null input gets its own id so that inverse restores a
# null, not a NaN (Spark and SQL tell them apart).
NULL_COMPONENT = -2


def normalized_name(column):
    return f"{column}_normalized"


def component_name(column):
    return f"{column}_component"


def normalized_type(dtype):
    return pa.float32() if dtype == "float32" else pa.float64()


def derived_fields(columns, dtype):
    """The fields appended after the input columns, in order."""
    fields = []
    for c in columns:
        fields.append(pa.field(normalized_name(c), normalized_type(dtype), nullable=False))
        fields.append(pa.field(component_name(c), COMPONENT_TYPE, nullable=False))
    return fields


def check_no_clash(input_schema, columns, source):
    names = set(input_schema.names)
    for f in derived_fields(columns, "float64"):
        if f.name in names:
            raise InputError(f"{source}: column {f.name!r} already exists; rename it first")


def null_mask(array):
    """Where an Arrow column is null, as a NumPy bool array (None when it has no nulls)."""
    if not array.null_count:
        return None
    return array.is_null().to_numpy(zero_copy_only=False)


def to_float64(array, column, source, exact=True):
    """An Arrow column as a float64 NumPy array; nulls become NaN. ``exact``: refuse integers
    that float64 cannot hold (columns to encode); ``report``'s statistics do without."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
    t = array.type
    if pa.types.is_dictionary(t):
        array = array.dictionary_decode()
        t = array.type
    if not (pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_decimal(t)):
        raise InputError(f"{source}: column {column!r} is {t}, expected a numeric column")
    if t != pa.float64():
        try:  # safe: an integer beyond 2^53 has no float64 of its own
            array = pc.cast(array, pa.float64(), safe=exact and pa.types.is_integer(t))
        except pa.ArrowInvalid as exc:
            raise InputError(
                f"{source}: column {column!r}: {exc}; such integers cannot be encoded exactly"
            ) from None
    if array.null_count:
        array = pc.fill_null(array, np.nan)
    return array.to_numpy(zero_copy_only=False)


def sample_values(array, column, source):
    """A column's fit sample: float64 values (NaN where null), or float32 for a float32 or
    float16 column, so that the model learns its rounding in the column's own precision."""
    x = to_float64(array, column, source)
    t = inputs.value_type(array.type)
    if pa.types.is_float32(t) or pa.types.is_float16(t):
        return x.astype(np.float32)
    return x


def table_from_pandas(frame, columns):
    """The given columns of a pandas DataFrame as an Arrow table, NaN kept as NaN (pandas'
    own conversion would make it null) and masked or Arrow-backed nulls as nulls."""
    arrays = {}
    for c in columns:
        values = frame[c].array
        if isinstance(values, np.ndarray) or values.__class__.__name__ == "NumpyExtensionArray":
            arrays[c] = pa.array(np.asarray(values), from_pandas=False)
        else:
            arrays[c] = pa.array(values)
    return pa.table(arrays)


def max_error(decoded, x, xp=np):
    """The largest |decoded - x| over finite x (0.0 when there is none): what lossy output
    (float32 normalized values without learned rounding) cost a part."""
    finite = xp.isfinite(x)
    if not bool(finite.any()):
        return 0.0
    return float(xp.abs(decoded[finite] - x[finite]).max())


def append_encoded(table, column, z, component, nulls=None):
    """``table`` with ``<column>_normalized`` and ``<column>_component`` appended (non-nullable);
    rows where ``nulls`` is set get NULL_COMPONENT (the kernels encoded them as NaN:
    component -1, z = 0)."""
    if nulls is not None:
        component = np.where(nulls, NULL_COMPONENT, component).astype(component.dtype)
    z_arr = pa.array(z)
    table = table.append_column(pa.field(normalized_name(column), z_arr.type, False), z_arr)
    comp_arr = pa.array(component, type=COMPONENT_TYPE)
    return table.append_column(pa.field(component_name(column), COMPONENT_TYPE, False), comp_arr)


def split_nulls(component):
    """(components with nulls turned back into the kernels' NaN id -1, where they were null)."""
    nulls = component == NULL_COMPONENT
    if not nulls.any():
        return component, None
    return np.where(nulls, -1, component).astype(component.dtype), nulls


def _units_per_one(t):
    """Integers and decimals decode by rounding to their unit: 1 or 10**-scale (None: floats)."""
    if pa.types.is_integer(t):
        return 1.0
    if pa.types.is_decimal(t):
        return 10.0**t.scale
    return None


def decodes_by_rounding(original_type):
    """Integer and decimal columns: ``restore`` rounds their decoded values to a unit."""
    return _units_per_one(inputs.value_type(original_type)) is not None


def inexact_rows(decoded, x, original_type, xp=np):
    """How many integer or decimal values would not come back from ``decoded`` by ``restore``'s
    rounding (0 for float columns: DESIGN.md's 4-ulp contract covers them)."""
    units = _units_per_one(inputs.value_type(original_type))
    if units is None:
        return 0
    present = ~xp.isnan(x)
    back, want = xp.rint(decoded[present] * units), xp.rint(x[present] * units)
    return int(xp.count_nonzero(back != want))


def restore(values, original_type, nulls=None):
    """Decoded float64 values as an Arrow array of the column's original type.

    Integers and decimals are rounded first (their decoding error is far below 0.5 units);
    rows in ``nulls`` become null, and so does NaN for types that have no NaN.
    """
    t = inputs.value_type(original_type)
    missing = np.isnan(values) if nulls is None else np.isnan(values) | nulls
    if pa.types.is_floating(t):
        if not pa.types.is_float64(t):
            values = values.astype(t.to_pandas_dtype())
        return pa.array(values, type=t, mask=nulls)
    if pa.types.is_integer(t):
        ints = np.rint(np.where(missing, 0, values)).astype(t.to_pandas_dtype())
        return pa.array(ints, type=t, mask=missing if missing.any() else None)
    if pa.types.is_decimal(t):  # the rounding inexact_rows checked at encode
        units = np.rint(np.where(missing, 0, values) * _units_per_one(t))
        py = [
            None if m else decimal.Decimal(int(u)).scaleb(-t.scale)
            for u, m in zip(units, missing, strict=True)
        ]
        return pa.array(py, type=t)
    raise InputError(f"cannot restore a column of type {t}")


_TYPE_NAMES = {
    "double": pa.float64(),
    "float": pa.float32(),
    "halffloat": pa.float16(),
    **{f"int{b}": getattr(pa, f"int{b}")() for b in (8, 16, 32, 64)},
    **{f"uint{b}": getattr(pa, f"uint{b}")() for b in (8, 16, 32, 64)},
}
_DECIMAL = re.compile(r"^decimal(128|256)\((\d+), (\d+)\)$")


def type_from_string(text):
    """Inverse of ``str(pa_type)`` for the numeric types the manifest records."""
    if text in _TYPE_NAMES:
        return _TYPE_NAMES[text]
    m = _DECIMAL.match(text)
    if m:
        make = pa.decimal128 if m.group(1) == "128" else pa.decimal256
        return make(int(m.group(2)), int(m.group(3)))
    raise InputError(f"unsupported column type {text!r} in the manifest")


def field_to_text(field):
    """An input column's Arrow field (type, nullability, metadata) as text for the manifest."""
    return base64.b64encode(pa.schema([field]).serialize().to_pybytes()).decode("ascii")


def field_from_manifest(column, info):
    """The field ``inverse`` gives a decoded column: the one recorded at encode, or (manifests
    without it) a nullable field of the recorded type."""
    t = type_from_string(info["type"])
    text = info.get("field")
    if not text:
        return pa.field(column, t)
    try:
        field = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text, validate=True))).field(0)
    except (ValueError, TypeError, IndexError, pa.ArrowException):
        raise InputError(f"manifest: column {column!r}: unreadable field description") from None
    if field.name != column or inputs.value_type(field.type) != t:
        raise InputError(f"manifest: column {column!r}: field {field} does not match its type {t}")
    return field
