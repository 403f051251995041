"""The JSON form of one fitted ScaleVGM, validated field by field (never pickle).

Every check raises ModelFileError with one line naming the file and the field, so a malformed,
newer or crafted file can never crash the tool with a traceback or smuggle in anything but
numbers. ``gpu_vgm.modelfile`` holds the files of several columns (``_model.json``).
"""

import math

import numpy as np

from gpu_vgm import mixture
from gpu_vgm.errors import ModelFileError
from gpu_vgm.params import MAX_ABS_VALUE, MAX_COMPONENTS, MAX_SEED

FORMAT = "gpu_vgm.ScaleVGM"
FORMAT_VERSION = 2  # 2: fitted.value_dtype (the column's precision)
MODES = ("argmax", "sample")
DTYPES = ("float64", "float32")

PARAMETER_CONSTRAINTS = {
    "n_components": lambda v: _is_int(v) and 1 <= v <= MAX_COMPONENTS,
    "random_state": lambda v: _is_int(v) and 0 <= v <= MAX_SEED,
    "eps": lambda v: isinstance(v, int | float) and 0 <= v < 1,
    "mode": lambda v: v in MODES,
    "column": lambda v: isinstance(v, str),
    "max_iter": lambda v: _is_int(v) and v >= 1,
    "weight_concentration_prior": lambda v: isinstance(v, int | float) and v > 0,
    "special_values": lambda v: all(isinstance(s, int | float) and math.isfinite(s) for s in v),
    "learn_rounding": lambda v: isinstance(v, bool),
    "max_rounding_digits": lambda v: _is_int(v) and 0 <= v <= 15,
    "dtype": lambda v: v in DTYPES,
}


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


def _fail(source, message):
    raise ModelFileError(f"{source}: invalid model file: {message}")


def require(cond, source, message):
    if not cond:
        _fail(source, message)


def _is_int(v):
    """An integer, and not a boolean (JSON's true would pass for 1)."""
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _numbers(obj, key, source, length=None, positive=False, within=None):
    values = obj.get(key)
    require(isinstance(values, list), source, f"{key} must be a list of numbers")
    require(all(_is_number(v) for v in values), source, f"{key} must hold finite numbers only")
    if length is not None:
        require(
            len(values) == length, source, f"{key} has {len(values)} entries, expected {length}"
        )
    if positive:
        require(all(v > 0 for v in values), source, f"{key} must be positive")
    if within is not None:
        lo, hi = within
        require(all(lo <= v <= hi for v in values), source, f"{key} must lie in [{lo}, {hi}]")
    return values


def _keys(obj, expected, source, what):
    """Exactly the expected keys: an unknown key means another format, or a crafted file."""
    require(set(obj) == expected, source, f"{what} must have exactly the keys {sorted(expected)}")


def check_header(data, source, expected_format, supported_version):
    require(isinstance(data, dict), source, "expected a JSON object")
    fmt = data.get("format")
    require(fmt == expected_format, source, f"format is {fmt!r}, expected {expected_format!r}")
    version = data.get("version")
    require(
        _is_int(version),
        source,
        "version must be an integer",
    )
    if version > supported_version:
        raise ModelFileError(
            f"{source}: written by a newer gpu_vgm (format version {version}); this one reads "
            f"version {supported_version}: upgrade gpu_vgm"
        )
    require(version >= 1, source, f"unknown version {version}")


def validate_scalevgm(data, source):
    """Return (params, fitted) of a ScaleVGM dict after checking every field."""
    check_header(data, source, FORMAT, FORMAT_VERSION)
    _keys(data, {"format", "version", "params", "fitted"}, source, "a ScaleVGM")
    params = data.get("params")
    require(isinstance(params, dict), source, "params must be an object")
    require(
        set(params) == set(PARAMETER_CONSTRAINTS),
        source,
        f"params must have exactly the keys {sorted(PARAMETER_CONSTRAINTS)}",
    )
    for name, ok in PARAMETER_CONSTRAINTS.items():
        value = params[name]
        if name == "special_values":
            require(isinstance(value, list), source, "params.special_values must be a list")
        require(ok(value), source, f"params.{name}={value!r} is not allowed")
    column = params["column"]
    source = f"{source} (column {column!r})"

    fitted = data.get("fitted")
    require(isinstance(fitted, dict), source, "fitted must be an object")
    keys = _FITTED_KEYS | ({"value_dtype", "fit"} if data["version"] >= 2 else set())
    _keys(fitted, keys, source, "fitted")
    _check_fit_figures(fitted.get("fit"), source)
    require(
        fitted.get("value_dtype", "float64") in ("float64", "float32"),
        source,
        "fitted.value_dtype must be float64 or float32",
    )
    comps = fitted.get("components")
    require(isinstance(comps, dict), source, "fitted.components must be an object")
    _keys(comps, _COMPONENT_KEYS, source, "fitted.components")
    # Means and stds inside these bounds keep every z and (x - m)^2 finite for |x| <= 1e150.
    means = _numbers(comps, "mean", source, within=(-MAX_ABS_VALUE, MAX_ABS_VALUE))
    n = len(means)
    require(1 <= n <= 10_000, source, f"{n} components; expected 1 to 10000")
    # (A fit on values up to 1e150 can give stds a little above it; 4e150 keeps 4s finite.)
    _numbers(comps, "std", source, n, positive=True, within=(1 / MAX_ABS_VALUE, 4 * MAX_ABS_VALUE))
    _numbers(comps, "weight", source, n, within=(0.0, 1.0))
    _numbers(comps, "logit_const", source, n)
    _numbers(comps, "half_precision", source, n, positive=True)
    active = comps.get("active")
    require(
        isinstance(active, list) and len(active) == n and all(isinstance(a, bool) for a in active),
        source,
        f"components.active must be {n} booleans",
    )
    require(any(active), source, "no active component")
    origin = comps.get("origin")
    require(
        isinstance(origin, list)
        and len(origin) == n
        and all(o in ("mixture", "reactivated", "synthetic") for o in origin),
        source,
        f"components.origin must be {n} of mixture/reactivated/synthetic",
    )
    n_mixture = fitted.get("n_mixture")
    require(_is_int(n_mixture) and 0 <= n_mixture <= n, source, "n_mixture out of range")
    special = _numbers(fitted, "special_values", source)
    # a value given twice would be counted twice by the kernels (-0.0 equals 0.0)
    require(np.unique(special).size == len(special), source, "special_values must be distinct")
    require(n + len(special) <= 32767, source, "too many component ids for int16")
    digits = fitted.get("rounding_digits")
    require(
        digits is None or (_is_int(digits) and 0 <= digits <= 15),
        source,
        "rounding_digits must be null or 0..15",
    )
    value_range = _numbers(fitted, "value_range", source, 2, within=(-MAX_ABS_VALUE, MAX_ABS_VALUE))
    require(value_range[0] <= value_range[1], source, "value_range must have lo <= hi")
    require(isinstance(fitted.get("converged"), bool), source, "converged must be a boolean")
    size = fitted.get("sample_size")
    require(
        _is_int(size) and size >= 0,
        source,
        "sample_size must be a non-negative integer",
    )
    sk = fitted.get("sklearn")
    # Only a model fitted without a mixture (fewer than two sample values) has no sklearn part;
    # every other one must carry it, so that its constants are checked against it.
    require(
        (sk is None) == (n_mixture == 0), source, "fitted.sklearn must be present iff n_mixture > 0"
    )
    if sk is not None:
        _validate_sklearn(sk, n_mixture, source)
        _check_logits_match(sk, comps, n_mixture, source)
    return params, fitted


def _validate_sklearn(sk, n_mixture, source):
    require(isinstance(sk, dict), source, "fitted.sklearn must be an object or null")
    _keys(sk, {*mixture.SKLEARN_ARRAYS, *_SKLEARN_OTHER_KEYS}, source, "fitted.sklearn")
    require(
        _is_int(sk.get("n_components")) and sk["n_components"] == n_mixture,
        source,
        "sklearn.n_components != n_mixture",
    )
    for key in ("weights_", "means_"):
        _numbers(sk, key, source, n_mixture)
    for key in ("covariances_", "precisions_cholesky_", "mean_precision_", "degrees_of_freedom_"):
        _numbers(sk, key, source, n_mixture, positive=True)
    wc = sk.get("weight_concentration_")
    require(isinstance(wc, list) and len(wc) == 2, source, "weight_concentration_ must be [a, b]")
    for i, part in enumerate(wc):
        _numbers(
            {"weight_concentration_": part},
            "weight_concentration_",
            f"{source} [{i}]",
            n_mixture,
            positive=True,
        )
    require(isinstance(sk.get("converged_"), bool), source, "sklearn.converged_ must be a boolean")
    require(_is_int(sk.get("n_iter_")), source, "sklearn.n_iter_ must be an integer")
    require(_is_number(sk.get("lower_bound_")), source, "sklearn.lower_bound_ must be a number")


def _check_logits_match(sk, comps, n_mixture, source):
    """The stored kernel constants must be the ones scikit-learn's parameters imply."""
    from types import SimpleNamespace

    fake = SimpleNamespace(
        weight_concentration_=tuple(
            np.array(v, dtype=np.float64) for v in sk["weight_concentration_"]
        ),
        precisions_cholesky_=np.array(sk["precisions_cholesky_"], dtype=np.float64),
        degrees_of_freedom_=np.array(sk["degrees_of_freedom_"], dtype=np.float64),
        mean_precision_=np.array(sk["mean_precision_"], dtype=np.float64),
    )
    c, half_p = mixture.sklearn_logit_terms(fake)
    stored_c = np.array(comps["logit_const"][:n_mixture])
    stored_h = np.array(comps["half_precision"][:n_mixture])
    ok = np.allclose(c, stored_c, rtol=1e-9, atol=1e-9) and np.allclose(half_p, stored_h, rtol=1e-9)
    ok = ok and np.allclose(np.array(sk["means_"]), np.array(comps["mean"][:n_mixture]), rtol=1e-12)
    require(ok, source, "component constants do not match the scikit-learn parameters")


_FIGURES = {
    "iterations": int,
    "converged": bool,
    "gain_vs_gaussian": float,
    "still_rising": float,
    "poor": bool,
}
_KIND_WORDS = {int: "a non-negative integer", float: "a number", bool: "a boolean"}


def _check_fit_figures(figures, source):
    """``fitted.fit``: null (no mixture) or the fit's figures (mixture.fit_figures)."""
    if figures is None:
        return
    require(isinstance(figures, dict), source, "fitted.fit must be an object or null")
    _keys(figures, set(_FIGURES), source, "fitted.fit")
    for key, kind in _FIGURES.items():
        value = figures[key]
        if kind is bool:
            ok = isinstance(value, bool)
        elif kind is int:  # a count: 12.5 or -3 iterations is not a fit this code wrote
            ok = _is_int(value) and value >= 0
        else:
            ok = _is_number(value)
        require(ok, source, f"fitted.fit.{key} must be {_KIND_WORDS[kind]}")
