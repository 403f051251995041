"""Model files: versioned JSON, validated field by field on load (never pickle).

A file holds either one ScaleVGM (``format: gpu_vgm.ScaleVGM``) or the pipeline's set of
columns (``format: gpu_vgm.model``, written as ``_model.json``). Every check raises
ModelFileError with one line naming the file and the field, so a malformed, newer or crafted
file can never crash the tool with a traceback or smuggle in anything but numbers.
"""

import hashlib
import json
import math

import numpy as np

from gpu_vgm.errors import ModelFileError
from gpu_vgm.params import MAX_ABS_VALUE

_FITTED_KEYS = {
    "sklearn",
    "components",
    "n_mixture",
    "special_values",
    "rounding_digits",
    "value_range",
    "converged",
    "sample_size",
}
_COMPONENT_KEYS = {"mean", "std", "weight", "logit_const", "half_precision", "active", "origin"}
_SKLEARN_OTHER_KEYS = {
    "weight_concentration_",
    "n_components",
    "converged_",
    "n_iter_",
    "lower_bound_",
}

SET_FORMAT = "gpu_vgm.model"
SET_VERSION = 1


def _fail(source, message):
    raise ModelFileError(f"{source}: invalid model file: {message}")


def _require(cond, source, message):
    if not cond:
        _fail(source, message)


def _is_number(v):
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _numbers(obj, key, source, length=None, positive=False, within=None):
    values = obj.get(key)
    _require(isinstance(values, list), source, f"{key} must be a list of numbers")
    _require(all(_is_number(v) for v in values), source, f"{key} must hold finite numbers only")
    if length is not None:
        _require(
            len(values) == length, source, f"{key} has {len(values)} entries, expected {length}"
        )
    if positive:
        _require(all(v > 0 for v in values), source, f"{key} must be positive")
    if within is not None:
        lo, hi = within
        _require(all(lo <= v <= hi for v in values), source, f"{key} must lie in [{lo}, {hi}]")
    return values


def _keys(obj, expected, source, what):
    """Exactly the expected keys: an unknown key means another format, or a crafted file."""
    _require(set(obj) == expected, source, f"{what} must have exactly the keys {sorted(expected)}")


def check_header(data, source, expected_format, supported_version):
    _require(isinstance(data, dict), source, "expected a JSON object")
    fmt = data.get("format")
    _require(fmt == expected_format, source, f"format is {fmt!r}, expected {expected_format!r}")
    version = data.get("version")
    _require(
        isinstance(version, int) and not isinstance(version, bool),
        source,
        "version must be an integer",
    )
    if version > supported_version:
        raise ModelFileError(
            f"{source}: written by a newer gpu_vgm (format version {version}); this one reads "
            f"version {supported_version}: upgrade gpu_vgm"
        )
    _require(version >= 1, source, f"unknown version {version}")


def validate_scalevgm(data, source):
    """Return (params, fitted) of a ScaleVGM dict after checking every field."""
    from gpu_vgm.model import _PARAMETER_CONSTRAINTS, FORMAT, FORMAT_VERSION

    check_header(data, source, FORMAT, FORMAT_VERSION)
    _keys(data, {"format", "version", "params", "fitted"}, source, "a ScaleVGM")
    params = data.get("params")
    _require(isinstance(params, dict), source, "params must be an object")
    _require(
        set(params) == set(_PARAMETER_CONSTRAINTS),
        source,
        f"params must have exactly the keys {sorted(_PARAMETER_CONSTRAINTS)}",
    )
    for name, ok in _PARAMETER_CONSTRAINTS.items():
        value = params[name]
        if name == "special_values":
            _require(isinstance(value, list), source, "params.special_values must be a list")
        _require(ok(value), source, f"params.{name}={value!r} is not allowed")
    column = params["column"]
    source = f"{source} (column {column!r})"

    fitted = data.get("fitted")
    _require(isinstance(fitted, dict), source, "fitted must be an object")
    _keys(fitted, _FITTED_KEYS, source, "fitted")
    comps = fitted.get("components")
    _require(isinstance(comps, dict), source, "fitted.components must be an object")
    _keys(comps, _COMPONENT_KEYS, source, "fitted.components")
    # Means and stds inside these bounds keep every z and (x - m)^2 finite for |x| <= 1e150.
    means = _numbers(comps, "mean", source, within=(-MAX_ABS_VALUE, MAX_ABS_VALUE))
    n = len(means)
    _require(1 <= n <= 10_000, source, f"{n} components; expected 1 to 10000")
    # (A fit on values up to 1e150 can give stds a little above it; 4e150 keeps 4s finite.)
    _numbers(comps, "std", source, n, positive=True, within=(1 / MAX_ABS_VALUE, 4 * MAX_ABS_VALUE))
    _numbers(comps, "weight", source, n, within=(0.0, 1.0))
    _numbers(comps, "logit_const", source, n)
    _numbers(comps, "half_precision", source, n, positive=True)
    active = comps.get("active")
    _require(
        isinstance(active, list) and len(active) == n and all(isinstance(a, bool) for a in active),
        source,
        f"components.active must be {n} booleans",
    )
    _require(any(active), source, "no active component")
    origin = comps.get("origin")
    _require(
        isinstance(origin, list)
        and len(origin) == n
        and all(o in ("mixture", "reactivated", "synthetic") for o in origin),
        source,
        f"components.origin must be {n} of mixture/reactivated/synthetic",
    )
    n_mixture = fitted.get("n_mixture")
    _require(isinstance(n_mixture, int) and 0 <= n_mixture <= n, source, "n_mixture out of range")
    special = _numbers(fitted, "special_values", source)
    _require(n + len(special) <= 32767, source, "too many component ids for int16")
    digits = fitted.get("rounding_digits")
    _require(
        digits is None or (isinstance(digits, int) and 0 <= digits <= 15),
        source,
        "rounding_digits must be null or 0..15",
    )
    value_range = _numbers(fitted, "value_range", source, 2, within=(-MAX_ABS_VALUE, MAX_ABS_VALUE))
    _require(value_range[0] <= value_range[1], source, "value_range must have lo <= hi")
    _require(isinstance(fitted.get("converged"), bool), source, "converged must be a boolean")
    size = fitted.get("sample_size")
    _require(
        isinstance(size, int) and not isinstance(size, bool) and size >= 0,
        source,
        "sample_size must be a non-negative integer",
    )
    sk = fitted.get("sklearn")
    # Only a model fitted without a mixture (fewer than two sample values) has no sklearn part;
    # every other one must carry it, so that its constants are checked against it.
    _require(
        (sk is None) == (n_mixture == 0), source, "fitted.sklearn must be present iff n_mixture > 0"
    )
    if sk is not None:
        _validate_sklearn(sk, n_mixture, source)
        _check_logits_match(sk, comps, n_mixture, source)
    return params, fitted


def _validate_sklearn(sk, n_mixture, source):
    _require(isinstance(sk, dict), source, "fitted.sklearn must be an object or null")
    from gpu_vgm.model import _SKLEARN_ARRAYS

    _keys(sk, {*_SKLEARN_ARRAYS, *_SKLEARN_OTHER_KEYS}, source, "fitted.sklearn")
    _require(sk.get("n_components") == n_mixture, source, "sklearn.n_components != n_mixture")
    for key in ("weights_", "means_"):
        _numbers(sk, key, source, n_mixture)
    for key in ("covariances_", "precisions_cholesky_", "mean_precision_", "degrees_of_freedom_"):
        _numbers(sk, key, source, n_mixture, positive=True)
    wc = sk.get("weight_concentration_")
    _require(isinstance(wc, list) and len(wc) == 2, source, "weight_concentration_ must be [a, b]")
    for i, part in enumerate(wc):
        _numbers(
            {"weight_concentration_": part},
            "weight_concentration_",
            f"{source} [{i}]",
            n_mixture,
            positive=True,
        )
    _require(isinstance(sk.get("converged_"), bool), source, "sklearn.converged_ must be a boolean")
    _require(isinstance(sk.get("n_iter_"), int), source, "sklearn.n_iter_ must be an integer")
    _require(_is_number(sk.get("lower_bound_")), source, "sklearn.lower_bound_ must be a number")


def _check_logits_match(sk, comps, n_mixture, source):
    """The stored kernel constants must be the ones scikit-learn's parameters imply."""
    from types import SimpleNamespace

    from gpu_vgm.model import sklearn_logit_terms

    fake = SimpleNamespace(
        weight_concentration_=tuple(
            np.array(v, dtype=np.float64) for v in sk["weight_concentration_"]
        ),
        precisions_cholesky_=np.array(sk["precisions_cholesky_"], dtype=np.float64),
        degrees_of_freedom_=np.array(sk["degrees_of_freedom_"], dtype=np.float64),
        mean_precision_=np.array(sk["mean_precision_"], dtype=np.float64),
    )
    c, half_p = sklearn_logit_terms(fake)
    stored_c = np.array(comps["logit_const"][:n_mixture])
    stored_h = np.array(comps["half_precision"][:n_mixture])
    ok = np.allclose(c, stored_c, rtol=1e-9, atol=1e-9) and np.allclose(half_p, stored_h, rtol=1e-9)
    ok = ok and np.allclose(np.array(sk["means_"]), np.array(comps["mean"][:n_mixture]), rtol=1e-12)
    _require(ok, source, "component constants do not match the scikit-learn parameters")


def save_models(path, models, extra=None):
    """Write a set of fitted ScaleVGM (one per column, in order) as one JSON file."""
    from gpu_vgm.model import write_json_atomic

    data = {"format": SET_FORMAT, "version": SET_VERSION, "columns": [m.to_dict() for m in models]}
    if extra:
        data["info"] = extra
    write_json_atomic(path, data)


def fingerprint(models):
    """SHA-256 of the models' entries as a model file stores them (canonical JSON): ties an
    encoded directory to its model."""
    return _digest([m.to_dict() for m in models])


def stored_fingerprint(data, columns):
    """``fingerprint`` of the given columns' entries exactly as a model file's ``data`` holds
    them (so that a later gpu_vgm, which may write more keys, still recognises today's files)."""
    from gpu_vgm.model import FORMAT

    if isinstance(data, dict) and data.get("format") == FORMAT:
        entries = [data]
    else:
        entries = data["columns"]  # models_from_data has validated it
    by_column = {e["params"]["column"]: e for e in entries}
    return _digest([by_column[c] for c in columns])


def _digest(entries):
    text = json.dumps(_numbers_as_floats(entries), sort_keys=True, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _numbers_as_floats(value):
    """1 and 1.0 alike: a JSON tool that re-saves the file may write either."""
    if isinstance(value, dict):
        return {k: _numbers_as_floats(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_numbers_as_floats(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def load_models(path):
    """Read a model file (a set or a single ScaleVGM) -> {column: ScaleVGM} in file order."""
    from gpu_vgm.model import read_json

    return models_from_data(read_json(path), str(path))


def models_from_data(data, source):
    """``load_models`` of a model file's parsed JSON (``source``: its name, for errors)."""
    from gpu_vgm.model import FORMAT, ScaleVGM

    source = str(source)
    if isinstance(data, dict) and data.get("format") == FORMAT:
        model = ScaleVGM.from_dict(data, source)
        return {model.column: model}
    check_header(data, source, SET_FORMAT, SET_VERSION)
    _require(set(data) <= {"format", "version", "columns", "info"}, source, "unknown top-level key")
    columns = data.get("columns")
    _require(isinstance(columns, list) and columns, source, "columns must be a non-empty list")
    models = {}
    for entry in columns:
        model = ScaleVGM.from_dict(entry, source)
        _require(model.column not in models, source, f"column {model.column!r} appears twice")
        models[model.column] = model
    return models
