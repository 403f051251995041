"""``_manifest.json``: what an encoded directory holds, written last, checked field by field
when read (a manifest may be crafted)."""

import platform
import re

from gpu_vgm import inputs, schema, storage
from gpu_vgm.errors import InputError, VGMError
from gpu_vgm.modelfile import fingerprint, read_json

MANIFEST = "_manifest.json"
FORMAT = "gpu_vgm.manifest"
VERSION = 2  # 2: parts list their input segments and their footer's SHA-256
PART_FILE = re.compile(r"part-\d{5,}\.parquet")
_PART_KEYS = (
    "file",
    "rows",
    "row_offset",
    "segments",
    "out_of_coverage",
    "max_error",
    "footer_sha256",
    "seconds",
)


def versions():
    # From package metadata: importing scikit-learn only to name its version costs a second.
    from importlib.metadata import version

    from gpu_vgm import __version__

    found = {"gpu_vgm": __version__, "python": platform.python_version()}
    for name in ("dask", "numpy", "pyarrow", "numba", "scikit-learn"):
        found[name] = version(name)
    return found


def decoding(model, value_type):
    """In words, what decoding a column gives back (the README's exactness section)."""
    if schema.decodes_by_rounding(value_type):
        return "exact: rounded to the column's unit, every row checked at encode"
    if model.rounding_digits_ is not None:
        return (
            f"bit-exact: rounded to {model.rounding_digits_} decimals learned from the sample, "
            "every row checked at encode"
        )
    if model.dtype != "float64":
        return "lossy: float32 normalized values keep 24 bits; max_error is the largest error"
    return "within 4 ulp of max(|x|, |m_k|, 4 s_k)"


def encode_manifest(plan, models, results, backend, client, timings):
    """The manifest of a finished encode job."""
    first = next(iter(models.values()))
    columns = {}
    for c in plan.columns:
        field = plan.schema.field(c)
        columns[c] = {
            "type": str(inputs.value_type(field.type)),
            "field": schema.field_to_text(field),
            "out_of_coverage": sum(r["out_of_coverage"][c] for r in results),
            "decoding": decoding(models[c], field.type),
            "fit": getattr(models[c], "fit_figures_", None),
        }
        errors = [r["max_error"][c] for r in results if c in r.get("max_error", {})]
        if errors:
            columns[c]["max_error"] = max(errors)
    return {
        "format": FORMAT,
        "version": VERSION,
        "input": [
            {"path": f.path, "rows": f.num_rows, "size": f.size, "footer_sha256": f.footer_sha256}
            for f in plan.files
        ],
        "rows": plan.total_rows,
        "columns": columns,
        "model_sha256": fingerprint([models[c] for c in plan.columns]),
        "parts": [{k: r[k] for k in _PART_KEYS if k in r} for r in results],
        "backend": backend.name,
        "io": backend.io,
        "mode": first.mode,
        "seed": first.random_state,
        "dtype": first.dtype,
        "workers": sum(client.nthreads().values()),
        "worker_processes": len(client.nthreads()),
        "peak_rss_mb_per_worker": max((r["peak_rss_mb"] for r in results), default=0.0),
        "versions": versions(),
        "timings": timings,
    }


def write(directory, data):
    storage.write_json(storage.join(directory, MANIFEST), data)


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

    require(isinstance(data, dict) and data.get("format") == FORMAT, "wrong format")
    version = data.get("version")
    require(count(version), "version must be an integer")
    if version > VERSION:
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
            and count(part.get("rows"))
            and isinstance(part.get("footer_sha256", ""), str)
            # version 2 always records them: a crafted entry without one skips no check
            and (version < 2 or isinstance(part.get("footer_sha256"), str)),
            f"bad part entry {str(part)[:80]}",
        )
    require(isinstance(data.get("model_sha256", ""), str), "model_sha256 must be a string")
    return data
