"""ScaleVGM: fit a Bayesian Gaussian mixture on a sample, then encode/decode losslessly.

One ScaleVGM describes one column. ``fit`` uses scikit-learn's BayesianGaussianMixture with
the original Scale-VGM's settings (dirichlet_process prior 0.001), then makes the model cover
the whole value range (DESIGN.md "Lossless by construction") and derives the per-component
constants the kernels need. ``save``/``load`` use versioned JSON, validated on load.
"""

import contextlib
import math
import os
import threading
import warnings

import numpy as np

from gpu_vgm import mixture, model_schema, rng, storage
from gpu_vgm.errors import InputError, NotFittedError, PoorFitWarning, shorten
from gpu_vgm.model_schema import FORMAT, FORMAT_VERSION, PARAMETER_CONSTRAINTS
from gpu_vgm.params import (
    RADIUS_FACTOR,
    KernelParams,
    check_magnitude,
    round_to,
)

# Interval reasoning at fit time uses radii a little inside the kernels' test, so every value
# the fit calls covered passes |x - m| <= radius whatever the rounding of x - m.
_COVER_SHRINK = 1.0 - 2.0**-30
_SYNTHETIC_LOG_WEIGHT = math.log(1e-6)  # synthetic components lose argmax ties to fitted ones


_fitting_lock = threading.Lock()
# this process's fits now running, and the settings the first of them made
_fitting = {"fits": 0, "warnings": None, "blas": None}


@contextlib.contextmanager
def sklearn_fit_settings():
    """Settings for scikit-learn while fits of this process run (every fit holds them):

    - one BLAS and OpenMP thread: its sums round differently with the thread count, so the
      model would depend on the machine's cores;
    - its convergence warnings off: ``fit_warnings`` says what matters.

    The warnings filter and the BLAS thread count are process-wide: overlapping fits (columns
    fitted in threads) share one setting, made by the first and undone by the last, which may
    be another thread. OpenMP's count is per thread: every fit sets its own.
    """
    # scikit-learn's BLAS and OpenMP libraries are loaded first: limits reach loaded ones only
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import BayesianGaussianMixture  # noqa: F401
    from threadpoolctl import threadpool_limits

    with _fitting_lock:
        if _fitting["fits"] == 0:
            caught = warnings.catch_warnings()
            caught.__enter__()
            warnings.filterwarnings("ignore", category=ConvergenceWarning, module=r"sklearn\.")
            _fitting["warnings"] = caught
            _fitting["blas"] = _with_blas_control(
                lambda: threadpool_limits(limits=1, user_api="blas")
            )
        _fitting["fits"] += 1
    try:
        with threadpool_limits(limits=1, user_api="openmp"):
            yield
    finally:
        with _fitting_lock:
            _fitting["fits"] -= 1
            if _fitting["fits"] == 0:
                _with_blas_control(_fitting["blas"].restore_original_limits)
                _fitting["warnings"].__exit__(None, None, None)


def _with_blas_control(change):
    """Run ``change()`` (which sets OpenBLAS's process-wide thread count) so that it takes
    effect and leaves no thread in control. threadpoolctl lets only one thread, the first to
    set the count, change it while that thread lives; its context manager would leave the
    fit's thread in control for good, and a later fit in another thread would run on the
    default count. Its limiter is therefore used without entering it as a context."""
    import threadpoolctl

    clear = getattr(
        getattr(threadpoolctl, "OpenBLASController", None), "clear_controlling_thread", None
    )
    if clear:  # threadpoolctl before 3.8 has none: any thread may change the count there
        clear(force=True)
    try:
        return change()
    finally:
        if clear:
            clear(force=True)


class ScaleVGM:
    """Mode-specific normalization of one continuous column, lossless and reproducible.

    Parameters
    ----------
    n_components : int, default 10
        Components of the Bayesian Gaussian mixture.
    random_state : int, default 42
        Seeds scikit-learn's fit and the per-row draws of ``mode="sample"``.
    eps : float, default 0.005
        Components with weight <= eps are inactive unless needed for coverage (as CTGAN).
    mode : {"argmax", "sample"}, default "argmax"
        argmax: the most probable candidate component (the original's behaviour);
        sample: a draw from the candidates' posterior (CTGAN's behaviour).
    column : str, default "x"
        Column name; with ``random_state`` it keys the per-row draws.
    special_values : sequence of float, default ()
        Values that get their own component and decode exactly (CTAB-GAN's mixed columns).
    learn_rounding : bool, default False
        Learn the number of decimals from the sample and round at decode, so that float32
        output of, e.g., cents still decodes bit-exactly. Encoding checks every row.
    dtype : {"float64", "float32"}, default "float64"
        Dtype of the normalized output.
    """

    def __init__(
        self,
        n_components=10,
        random_state=42,
        eps=0.005,
        mode="argmax",
        *,
        column="x",
        max_iter=100,
        weight_concentration_prior=0.001,
        special_values=(),
        learn_rounding=False,
        max_rounding_digits=10,
        dtype="float64",
    ):
        self.n_components = n_components
        self.random_state = random_state
        self.eps = eps
        self.mode = mode
        self.column = column
        self.max_iter = max_iter
        self.weight_concentration_prior = weight_concentration_prior
        self.special_values = special_values
        self.learn_rounding = learn_rounding
        self.max_rounding_digits = max_rounding_digits
        self.dtype = dtype
        self._bgmm = None
        self._sklearn_state = None

    # ------------------------------------------------------------------ fitted mixture
    # The fitted scikit-learn mixture travels as its state (JSON on disk, pickle to Dask
    # workers) and is rebuilt on first use: importing scikit-learn takes about a second, and
    # encoding and decoding never need it.
    @property
    def bgmm(self):
        """The fitted ``BayesianGaussianMixture`` (None before fit, or when the sample had
        fewer than two fit values)."""
        if self._bgmm is None and self._sklearn_state is not None:
            self._bgmm = mixture.sklearn_from_state(self, self._sklearn_state)
        return self._bgmm

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_bgmm"] = None
        return state

    # ------------------------------------------------------------------ parameters
    def get_params(self):
        return {name: getattr(self, name) for name in PARAMETER_CONSTRAINTS}

    def _validate_params(self):
        for name, ok in PARAMETER_CONSTRAINTS.items():
            value = getattr(self, name)
            if name == "special_values":
                value = list(value)
            if not ok(value):
                raise ValueError(f"ScaleVGM: invalid {name}={value!r}")

    # ------------------------------------------------------------------ fit
    def fit(self, sample, value_range=None, check_coverage=True):
        """Fit the mixture on ``sample`` and cover ``value_range`` (default: the sample's range).

        ``value_range=(lo, hi)`` is the full column's range (the pipeline reads it from Parquet
        statistics), so that every value of the column encodes with |normalized| <= 0.99.
        ``check_coverage=False`` leaves ``check_coverage()``, which loads the CPU kernel, to the
        caller: the pipeline has a worker run it, where the kernel is loaded already.
        """
        self._validate_params()
        x = _as_float_column(sample, self.column)
        if np.isinf(x).any():
            raise InputError(
                f"column {self.column!r}: {int(np.isinf(x).sum())} infinite values in the sample"
            )
        finite = x[~np.isnan(x)]
        special = np.array(sorted(set(float(v) for v in self.special_values)), dtype=np.float64)
        fit_values = finite[~np.isin(finite, special)]
        lo, hi = _value_range(finite, value_range, self.column)
        check_magnitude(lo, hi, self.column)

        bgmm = None
        self.converged_, self.fit_figures_ = True, None
        if fit_values.size >= 2:  # scikit-learn needs two samples; coverage handles fewer
            bgmm = self._fit_bgmm(fit_values)
            means = bgmm.means_.reshape(-1).astype(np.float64)
            stds = np.sqrt(bgmm.covariances_.reshape(-1)).astype(np.float64)
            weights = bgmm.weights_.astype(np.float64)
            logit_const, half_precision = mixture.sklearn_logit_terms(bgmm)
        else:  # all missing or special, or one value: coverage alone creates components
            means = stds = weights = logit_const = half_precision = np.zeros(0)
        self._bgmm = bgmm
        self._sklearn_state = None if bgmm is None else mixture.sklearn_state(bgmm)
        self.n_mixture_ = means.size
        active = weights > self.eps
        origin = ["mixture"] * means.size
        active, origin = _reactivate_for_coverage(means, stds, weights, active, origin, lo, hi)
        syn_means, syn_stds = _synthetic_for_gaps(means[active], stds[active], lo, hi)
        for m, s in zip(syn_means, syn_stds, strict=True):
            means = np.append(means, m)
            stds = np.append(stds, s)
            weights = np.append(weights, 0.0)
            logit_const = np.append(
                logit_const, _SYNTHETIC_LOG_WEIGHT - math.log(s * math.sqrt(2 * math.pi))
            )
            half_precision = np.append(half_precision, 0.5 / (s * s))
            active = np.append(active, True)
            origin.append("synthetic")
        self.means_ = means
        self.stds_ = stds
        self.weights_ = weights
        self.logit_const_ = logit_const
        self.half_precision_ = half_precision
        self.active_ = active
        self.origin_ = origin
        self.special_values_ = special
        self.value_range_ = (lo, hi)
        self.sample_size_ = int(x.size)
        self.value_dtype_ = _value_dtype(sample)
        self.rounding_digits_ = (
            _learn_rounding(finite, self.max_rounding_digits, self.value_dtype_)
            if self.learn_rounding
            else None
        )
        self._build_kernel_params()
        if check_coverage:
            self.check_coverage()
        return self

    def _fit_bgmm(self, values):
        with sklearn_fit_settings():
            bgmm, self.fit_figures_ = mixture.fit_bgmm(self, values)
        self.converged_ = bool(bgmm.converged_)
        if self.fit_figures_["poor"]:
            warnings.warn(
                f"column {self.column!r}: {self._poor_fit_text()}", PoorFitWarning, stacklevel=3
            )
        return bgmm

    def _poor_fit_text(self):
        f = self.fit_figures_
        return (
            f"the mixture fits the sample poorly ({f['gain_vs_gaussian']:+.3f} nats/row against "
            f"one Gaussian, still rising by about {f['still_rising']:.3f} nats/row); encoding "
            "stays lossless, but the components may describe the data less well (try a higher "
            "max_iter)"
        )

    def fit_warnings(self):
        """What the user should know about this fit, in sentences (the pipeline logs them)."""
        found = []
        if (getattr(self, "fit_figures_", None) or {}).get("poor"):
            found.append(self._poor_fit_text().replace("max_iter", "--max-iter"))
        if self.learn_rounding and self.rounding_digits_ is None:
            found.append(
                f"learned no rounding: the sample holds values with more than "
                f"{self.max_rounding_digits} decimals, so decoding is within 4 ulp, not "
                "bit-exact"
            )
        return found

    def _build_kernel_params(self):
        four_s = 4.0 * self.stds_
        idx = np.flatnonzero(self.active_)
        digits = -1 if self.rounding_digits_ is None else int(self.rounding_digits_)
        self.kernel_params_ = KernelParams(
            m=np.ascontiguousarray(self.means_[idx]),
            four_s=np.ascontiguousarray(four_s[idx]),
            half_p=np.ascontiguousarray(self.half_precision_[idx]),
            c=np.ascontiguousarray(self.logit_const_[idx]),
            radius=np.ascontiguousarray(RADIUS_FACTOR * four_s[idx]),
            ids=idx.astype(np.int16),
            m_all=np.ascontiguousarray(self.means_),
            four_s_all=np.ascontiguousarray(four_s),
            special=np.ascontiguousarray(self.special_values_),
            special_base=int(self.means_.size),
            digits=digits,
        )
        self.column_key_ = rng.column_key(self.random_state, self.column)

    def check_coverage(self):
        """Prove on the range's ends and every component edge that nothing is out of coverage,
        with the CPU kernel; RuntimeError if something is (a bug in the coverage construction).
        """
        lo, hi = self.value_range_
        edges = [lo, hi]
        for m, r in zip(self.kernel_params_.m, self.kernel_params_.radius, strict=True):
            for e in (m - r, m + r):
                edges += [e, np.nextafter(e, -np.inf), np.nextafter(e, np.inf)]
        probe = np.clip(np.array(edges + list(np.linspace(lo, hi, 1001))), lo, hi)
        probe = probe[~np.isin(probe, self.special_values_)]
        from cpu_fallback import kernels  # the reference kernels; GPU kernels mirror them

        _, _, n_out, _ = kernels.encode(probe, self.kernel_params_, "argmax", 0, 0)
        if n_out:
            raise RuntimeError(f"column {self.column!r}: coverage construction failed (bug)")

    # ------------------------------------------------------------------ transform
    def _check_is_fitted(self):
        if not hasattr(self, "kernel_params_"):
            raise NotFittedError(
                f"This ScaleVGM (column {self.column!r}) is not fitted yet; call fit(sample) "
                "or ScaleVGM.load(path) first"
            )

    def encode(self, x, row_offset=0, backend=None):
        """Encode ``x`` -> ``(normalized, components, n_out_of_coverage)``.

        ``row_offset`` is the global row index of ``x[0]``: encoding pieces with their offsets
        gives exactly the output of encoding the whole array. ``backend`` is a kernel module
        (default: picked from the array type by ``gpu_vgm.backends.kernels_for``). With learned
        rounding every row is decoded again and checked (InputError if one would not come
        back bit for bit).
        """
        self._check_is_fitted()
        from gpu_vgm.backends import kernels_for

        kern = backend or kernels_for(x)
        x = _check_numeric(x, self.column)
        z, comp, n_out, n_inf = kern.encode(
            x, self.kernel_params_, self.mode, self.column_key_, row_offset, np.float64
        )
        if n_inf:
            raise InputError(
                f"column {self.column!r}: {n_inf} infinite values (inf is not encodable)"
            )
        if self.rounding_digits_ is not None:
            self._check_rounding(kern, x, z, comp, row_offset, "float64")
        if self.dtype != "float64":
            z = z.astype(self.dtype)
            if self.rounding_digits_ is not None:
                self._check_rounding(kern, x, z, comp, row_offset, self.dtype)
        return z, comp, n_out

    def _check_rounding(self, kern, x, z, comp, row_offset, z_dtype):
        decoded, _ = kern.decode(z, comp, self.kernel_params_)
        decoded = self._as_value_dtype(decoded)
        bad = ((decoded != x) | (_signbit(decoded) != _signbit(x))) & (x == x)
        n_bad = int(bad.sum())
        if not n_bad:
            return
        rows = [int(i) + row_offset for i in bad.nonzero()[0][:5].tolist()]
        if z_dtype == "float64":
            raise InputError(
                f"column {self.column!r}: {n_bad} values have more than the "
                f"{self.rounding_digits_} decimals learned from the sample (rows {shorten(rows)}); "
                "refit without learned rounding"
            )
        raise InputError(
            f"column {self.column!r}: {n_bad} values do not decode exactly from {z_dtype} "
            f"normalized values, whose 24 bits are too few for values this far from their "
            f"component (rows {shorten(rows)}); use --dtype float64"
        )

    def _as_value_dtype(self, values):
        """Decoded float64 values in the precision of the column the model was fitted on."""
        if getattr(self, "value_dtype_", "float64") == "float64":
            return values
        return values.astype(self.value_dtype_).astype(np.float64)

    def transform(self, x, row_offset=0):
        """Encode ``x`` -> ``(normalized, components)``; see :meth:`encode`."""
        z, comp, _ = self.encode(x, row_offset)
        return z, comp

    def inverse_transform(self, normalized, components):
        """Decode ``(normalized, components)`` back to float64 values (NaN for component -1)."""
        self._check_is_fitted()
        from gpu_vgm.backends import kernels_for

        kern = kernels_for(normalized)
        x, n_invalid = kern.decode(normalized, components, self.kernel_params_)
        if n_invalid:
            raise InputError(
                f"column {self.column!r}: {n_invalid} component ids are outside "
                f"-3..{self.kernel_params_.n_ids - 1}"
            )
        # A learned rounding holds in the column's precision (every row was checked at encode);
        # without one, float64 values come back and restore() casts to the column's type.
        return self._as_value_dtype(x) if self.rounding_digits_ is not None else x

    def predict_logits(self, x):
        """Per-component logits (n, n_mixture) as the kernels compute them (for checks)."""
        self._check_is_fitted()
        x = np.asarray(x, dtype=np.float64).reshape(-1, 1)
        d = x - self.means_
        return self.logit_const_ - self.half_precision_ * (d * d)

    # ------------------------------------------------------------------ persistence
    def to_dict(self):
        self._check_is_fitted()
        params = self.get_params()
        params["special_values"] = [float(v) for v in params["special_values"]]
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "params": params,
            "fitted": {
                "sklearn": self._sklearn_state,
                "components": {
                    "mean": self.means_.tolist(),
                    "std": self.stds_.tolist(),
                    "weight": self.weights_.tolist(),
                    "logit_const": self.logit_const_.tolist(),
                    "half_precision": self.half_precision_.tolist(),
                    "active": self.active_.tolist(),
                    "origin": list(self.origin_),
                },
                "n_mixture": int(self.n_mixture_),
                "special_values": self.special_values_.tolist(),
                "rounding_digits": self.rounding_digits_,
                "value_dtype": self.value_dtype_,
                "value_range": [float(v) for v in self.value_range_],
                "converged": bool(self.converged_),
                "fit": self.fit_figures_,
                "sample_size": int(self.sample_size_),
            },
        }

    @classmethod
    def from_dict(cls, data, source="model"):
        """Rebuild from :meth:`to_dict` output, validating every field (hostile files included)."""
        params, fitted = model_schema.validate_scalevgm(data, source)
        model = cls(**params)
        comps = fitted["components"]
        model.means_ = np.array(comps["mean"], dtype=np.float64)
        model.stds_ = np.array(comps["std"], dtype=np.float64)
        model.weights_ = np.array(comps["weight"], dtype=np.float64)
        model.logit_const_ = np.array(comps["logit_const"], dtype=np.float64)
        model.half_precision_ = np.array(comps["half_precision"], dtype=np.float64)
        model.active_ = np.array(comps["active"], dtype=bool)
        model.origin_ = list(comps["origin"])
        model.n_mixture_ = fitted["n_mixture"]
        model.special_values_ = np.array(fitted["special_values"], dtype=np.float64)
        model.rounding_digits_ = fitted["rounding_digits"]
        model.value_dtype_ = fitted.get("value_dtype", "float64")  # format version 1 has none
        model.value_range_ = tuple(fitted["value_range"])
        model.converged_ = fitted["converged"]
        model.fit_figures_ = fitted.get("fit")  # format version 1 has none
        model.sample_size_ = fitted["sample_size"]
        model._sklearn_state = fitted["sklearn"]
        model._build_kernel_params()
        return model

    def save(self, path):
        """Write the model as JSON (atomically: a temporary file renamed into place)."""
        storage.write_json(os.fspath(path), self.to_dict())

    @classmethod
    def load(cls, path):
        return cls.from_dict(storage.read_json(path, "model file"), source=str(path))

    def __repr__(self):
        fitted = "fitted" if hasattr(self, "kernel_params_") else "unfitted"
        return (
            f"ScaleVGM(column={self.column!r}, n_components={self.n_components}, "
            f"mode={self.mode!r}, {fitted})"
        )


def _as_float_column(values, column):
    arr = _check_numeric(values, column)
    return np.asarray(arr, dtype=np.float64).reshape(-1)


def _check_numeric(values, column):
    if type(values).__module__.startswith("cupy"):
        return values
    arr = np.asarray(values)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if arr.dtype.kind not in "fiu":
        raise InputError(f"column {column!r}: expected numbers, got dtype {arr.dtype}")
    return arr


def _value_range(finite, value_range, column):
    if value_range is None:
        if finite.size == 0:
            return 0.0, 0.0
        return float(finite.min()), float(finite.max())
    lo, hi = (float(v) for v in value_range)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise InputError(
            f"column {column!r}: value_range must be finite with lo <= hi, got {value_range}"
        )
    if finite.size:
        lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
    return lo, hi


def _intervals(means, stds):
    radius = RADIUS_FACTOR * 4.0 * stds * _COVER_SHRINK
    return sorted(zip(means - radius, means + radius, strict=True))


def coverage_gaps(means, stds, lo, hi):
    """Closed sub-intervals of [lo, hi] that no component's |z| <= 0.99 band covers."""
    gaps = []
    cur, cur_covered = lo, False  # everything below cur is covered or listed in gaps
    for left, right in _intervals(np.asarray(means), np.asarray(stds)):
        if right < cur:
            continue
        if left > cur:
            gaps.append((cur, min(left, hi)))
        cur, cur_covered = max(cur, right), True
        if cur >= hi:
            break
    if cur < hi or not cur_covered:
        gaps.append((cur, hi))
    return [(a, b) for a, b in gaps if a <= b]


def _reactivate_for_coverage(means, stds, weights, active, origin, lo, hi):
    """Turn dropped components back on, heaviest first, while one of them covers a gap."""
    active = active.copy()
    while True:
        gaps = coverage_gaps(means[active], stds[active], lo, hi)
        if not gaps:
            break
        for k in np.argsort(-weights, kind="stable"):
            if active[k]:
                continue
            r = RADIUS_FACTOR * 4.0 * stds[k] * _COVER_SHRINK
            if any(means[k] - r <= b and means[k] + r >= a for a, b in gaps):
                active[k] = True
                origin[k] = "reactivated"
                break
        else:
            break
    return active, origin


def _synthetic_for_gaps(means, stds, lo, hi):
    """One wide component per gap still open: (means, stds) of the synthetic components."""
    syn_means, syn_stds = [], []
    for a, b in coverage_gaps(means, stds, lo, hi):
        center = 0.5 * (a + b)
        half = 0.5 * (b - a)
        # relative to the gap and its place (an absolute floor would make the model depend on
        # the units), but at least 1e-140, so that the component's precision stays finite
        margin = max(half * 1e-6, (abs(a) + abs(b)) * 1e-12, mixture.MIN_SCALE)
        syn_means.append(center)
        syn_stds.append((half + margin) / (4.0 * RADIUS_FACTOR * _COVER_SHRINK))
    return syn_means, syn_stds


def _signbit(a):
    """signbit of a NumPy or CuPy array (0.0 and -0.0 compare equal, but their bits differ)."""
    if type(a).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy.signbit(a)
    return np.signbit(a)


def _value_dtype(sample):
    """The precision of the column a sample comes from: float32 for float32 or float16 data
    (learned rounding must then hold in float32), float64 otherwise."""
    kind = getattr(sample, "dtype", None)
    return "float32" if kind in (np.float32, np.float16) else "float64"


def _learn_rounding(finite, max_digits, value_dtype="float64"):
    """The fewest decimals d for which every sample value survives round_to(x, d) (read in the
    column's precision: a float32 0.1 is 0.100000001490116 as a float64)."""
    if finite.size == 0:
        return None
    x = finite.astype(np.float64)
    for digits in range(max_digits + 1):
        rounded = round_to(x, digits)
        if value_dtype != "float64":
            rounded = rounded.astype(value_dtype).astype(np.float64)
        if np.array_equal(rounded, x):
            return digits
    return None
