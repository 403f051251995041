"""ScaleVGM: fit a Bayesian Gaussian mixture on a sample, then encode/decode losslessly.

One ScaleVGM describes one column. ``fit`` uses scikit-learn's BayesianGaussianMixture with
the original Scale-VGM's settings (dirichlet_process prior 0.001), then makes the model cover
the whole value range (DESIGN.md "Lossless by construction") and derives the per-component
constants the kernels need. ``save``/``load`` use versioned JSON, validated on load.
"""

import contextlib
import json
import math
import os
import threading
import warnings

import numpy as np

from gpu_vgm import rng, storage
from gpu_vgm.errors import InputError, ModelFileError, NotFittedError, shorten
from gpu_vgm.params import (
    MAX_COMPONENTS,
    MAX_SEED,
    RADIUS_FACTOR,
    KernelParams,
    check_magnitude,
    round_to,
)

FORMAT = "gpu_vgm.ScaleVGM"
FORMAT_VERSION = 1
MODES = ("argmax", "sample")
DTYPES = ("float64", "float32")
# Interval reasoning at fit time uses radii a little inside the kernels' test, so every value
# the fit calls covered passes |x - m| <= radius whatever the rounding of x - m.
_COVER_SHRINK = 1.0 - 2.0**-30
_SYNTHETIC_LOG_WEIGHT = math.log(1e-6)  # synthetic components lose argmax ties to fitted ones

_PARAMETER_CONSTRAINTS = {
    "n_components": lambda v: (
        isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_COMPONENTS
    ),
    "random_state": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_SEED,
    "eps": lambda v: isinstance(v, int | float) and 0 <= v < 1,
    "mode": lambda v: v in MODES,
    "column": lambda v: isinstance(v, str),
    "max_iter": lambda v: isinstance(v, int) and v >= 1,
    "weight_concentration_prior": lambda v: isinstance(v, int | float) and v > 0,
    "special_values": lambda v: all(isinstance(s, int | float) and math.isfinite(s) for s in v),
    "learn_rounding": lambda v: isinstance(v, bool),
    "max_rounding_digits": lambda v: isinstance(v, int) and 0 <= v <= 15,
    "dtype": lambda v: v in DTYPES,
}


_fitting_lock = threading.Lock()
# this process's fits now running, their settings and the thread that set them
_fitting = {"fits": 0, "settings": None, "thread": None}


@contextlib.contextmanager
def sklearn_fit_settings():
    """Settings for scikit-learn while fits of this process run (every fit holds them):

    - one BLAS and OpenMP thread: its sums round differently with the thread count, so the
      model would depend on the machine's cores (a 100k-row fit gave three different models on
      1, 2 and 4 threads). One thread is what Dask's nanny gives its workers, too;
    - its convergence warnings (k-means' init, the mixture's "did not converge") off;
      ``_fit_bgmm`` gives its own, clearer one.

    The warnings filter and the BLAS thread count are process-wide: the fits that overlap
    (columns fitted in threads of one process) share one setting, entered by the first and
    left by the last. A ``catch_warnings`` each, left in another order than entered, undid each
    other's filters. threadpoolctl (3.8) lets only the thread that set the BLAS count change
    it again while that thread lives: a last fit in another thread takes that right over to
    restore it. Code that runs fits in threads holds these settings around all of them
    (``pipeline.fit_models``). OpenMP's count is per thread: every fit sets its own.
    """
    # scikit-learn's BLAS and OpenMP libraries are loaded first: limits reach loaded ones only
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import BayesianGaussianMixture  # noqa: F401
    from threadpoolctl import threadpool_limits

    with _fitting_lock:
        if _fitting["fits"] == 0:
            settings = contextlib.ExitStack()
            settings.enter_context(warnings.catch_warnings())
            warnings.filterwarnings("ignore", category=ConvergenceWarning, module=r"sklearn\.")
            settings.enter_context(threadpool_limits(limits=1))
            _fitting["settings"], _fitting["thread"] = settings, threading.current_thread()
        _fitting["fits"] += 1
    try:
        with threadpool_limits(limits=1, user_api="openmp"):
            yield
    finally:
        with _fitting_lock:
            _fitting["fits"] -= 1
            if _fitting["fits"] == 0:
                if _fitting["thread"] is not threading.current_thread():
                    _release_blas_control()
                _fitting["settings"].close()


def _release_blas_control():
    """Let this thread restore the BLAS thread count that another one set (threadpoolctl 3.8
    ignores it otherwise, and the count would stay at one for the process's life)."""
    import threadpoolctl

    clear = getattr(
        getattr(threadpoolctl, "OpenBLASController", None), "clear_controlling_thread", None
    )
    if clear:  # threadpoolctl before 3.8 has none: any thread may change the count there
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
            self._bgmm = _sklearn_from_state(self, self._sklearn_state)
        return self._bgmm

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_bgmm"] = None
        return state

    # ------------------------------------------------------------------ parameters
    def get_params(self):
        return {name: getattr(self, name) for name in _PARAMETER_CONSTRAINTS}

    def _validate_params(self):
        for name, ok in _PARAMETER_CONSTRAINTS.items():
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
        self.converged_ = True
        if fit_values.size >= 2:  # scikit-learn needs two samples; coverage handles fewer
            bgmm = self._fit_bgmm(fit_values)
            means = bgmm.means_.reshape(-1).astype(np.float64)
            stds = np.sqrt(bgmm.covariances_.reshape(-1)).astype(np.float64)
            weights = bgmm.weights_.astype(np.float64)
            logit_const, half_precision = sklearn_logit_terms(bgmm)
        else:  # all missing or special, or one value: coverage alone creates components
            means = stds = weights = logit_const = half_precision = np.zeros(0)
        self._bgmm = bgmm
        self._sklearn_state = None if bgmm is None else _sklearn_state(bgmm)
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
        self.rounding_digits_ = (
            _learn_rounding(finite, self.max_rounding_digits) if self.learn_rounding else None
        )
        self._build_kernel_params()
        if check_coverage:
            self.check_coverage()
        return self

    def _fit_bgmm(self, values):
        from sklearn.exceptions import ConvergenceWarning

        bgmm = _new_bgmm(self, min(self.n_components, values.size))
        with sklearn_fit_settings():
            bgmm.fit(values.reshape(-1, 1))
        self.converged_ = bool(bgmm.converged_)
        if not bgmm.converged_:
            warnings.warn(
                f"column {self.column!r}: the mixture did not converge in {self.max_iter} "
                "iterations; encoding stays lossless, but components may fit the data less well "
                "(raise max_iter)",
                ConvergenceWarning,
                stacklevel=3,
            )
        return bgmm

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
        (default: picked from the array type by ``gpu_vgm.backends.kernels_for``).
        """
        self._check_is_fitted()
        from gpu_vgm.backends import kernels_for

        kern = backend or kernels_for(x)
        x = _check_numeric(x, self.column)
        z, comp, n_out, n_inf = kern.encode(
            x, self.kernel_params_, self.mode, self.column_key_, row_offset, np.dtype(self.dtype)
        )
        if n_inf:
            raise InputError(
                f"column {self.column!r}: {n_inf} infinite values (inf is not encodable)"
            )
        if self.rounding_digits_ is not None:
            self._check_rounding(kern, x, z, comp, row_offset)
        return z, comp, n_out

    def _check_rounding(self, kern, x, z, comp, row_offset):
        decoded, _ = kern.decode(z, comp, self.kernel_params_)
        bad = (decoded != x) & (x == x)
        n_bad = int(bad.sum())
        if n_bad:
            rows = [int(i) + row_offset for i in bad.nonzero()[0][:5].tolist()]
            raise InputError(
                f"column {self.column!r}: {n_bad} values have more than the "
                f"{self.rounding_digits_} decimals learned from the sample (rows {shorten(rows)}); "
                "refit without learned rounding"
            )

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
                f"-1..{self.kernel_params_.n_ids - 1}"
            )
        return x

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
                "value_range": [float(v) for v in self.value_range_],
                "converged": bool(self.converged_),
                "sample_size": int(self.sample_size_),
            },
        }

    @classmethod
    def from_dict(cls, data, source="model"):
        """Rebuild from :meth:`to_dict` output, validating every field (hostile files included)."""
        from gpu_vgm.modelfile import validate_scalevgm

        params, fitted = validate_scalevgm(data, source)
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
        model.value_range_ = tuple(fitted["value_range"])
        model.converged_ = fitted["converged"]
        model.sample_size_ = fitted["sample_size"]
        model._sklearn_state = fitted["sklearn"]
        model._build_kernel_params()
        return model

    def save(self, path):
        """Write the model as JSON (atomically: a temporary file renamed into place)."""
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path):
        return cls.from_dict(read_json(path), source=str(path))

    def __repr__(self):
        fitted = "fitted" if hasattr(self, "kernel_params_") else "unfitted"
        return (
            f"ScaleVGM(column={self.column!r}, n_components={self.n_components}, "
            f"mode={self.mode!r}, {fitted})"
        )


# ---------------------------------------------------------------------- helpers
def sklearn_logit_terms(bgmm):
    """(c, half_p) with logit_k(x) = c_k - half_p_k (x - m_k)^2, equal to sklearn's weighted
    log probabilities for a one-feature dirichlet_process BayesianGaussianMixture."""
    from scipy.special import digamma  # imported late: workers that only encode never need it

    a, b = bgmm.weight_concentration_
    total = digamma(a + b)
    log_weights = digamma(a) - total + np.hstack((0.0, np.cumsum(digamma(b) - total)[:-1]))
    prec_chol = bgmm.precisions_cholesky_.reshape(-1)
    dof = bgmm.degrees_of_freedom_
    c = (
        log_weights
        + np.log(prec_chol)
        - 0.5 * np.log(2 * np.pi)
        - 0.5 * np.log(dof)
        + 0.5 * (np.log(2.0) + digamma(0.5 * dof) - 1.0 / bgmm.mean_precision_)
    )
    return c.astype(np.float64), (0.5 * prec_chol * prec_chol).astype(np.float64)


_SKLEARN_ARRAYS = (
    "weights_",
    "means_",
    "covariances_",
    "precisions_cholesky_",
    "mean_precision_",
    "degrees_of_freedom_",
)


def _sklearn_state(bgmm):
    state = {name: np.asarray(getattr(bgmm, name)).reshape(-1).tolist() for name in _SKLEARN_ARRAYS}
    a, b = bgmm.weight_concentration_
    state["weight_concentration_"] = [a.tolist(), b.tolist()]
    state["n_components"] = int(bgmm.n_components)
    state["converged_"] = bool(bgmm.converged_)
    state["n_iter_"] = int(bgmm.n_iter_)
    state["lower_bound_"] = float(bgmm.lower_bound_)
    return state


def _new_bgmm(model, n_components):
    """The original Scale-VGM's estimator: dirichlet_process prior, the model's settings."""
    from sklearn.mixture import BayesianGaussianMixture  # imported late: it takes seconds

    return BayesianGaussianMixture(
        n_components=n_components,
        weight_concentration_prior_type="dirichlet_process",
        weight_concentration_prior=model.weight_concentration_prior,
        max_iter=model.max_iter,
        random_state=model.random_state,
    )


def _sklearn_from_state(model, state):
    """A fitted BayesianGaussianMixture equivalent to the saved one (``.bgmm`` after load)."""
    k = state["n_components"]
    bgmm = _new_bgmm(model, k)
    bgmm.weights_ = np.array(state["weights_"])
    bgmm.means_ = np.array(state["means_"]).reshape(k, 1)
    bgmm.covariances_ = np.array(state["covariances_"]).reshape(k, 1, 1)
    bgmm.precisions_cholesky_ = np.array(state["precisions_cholesky_"]).reshape(k, 1, 1)
    bgmm.precisions_ = bgmm.precisions_cholesky_**2
    bgmm.mean_precision_ = np.array(state["mean_precision_"])
    bgmm.degrees_of_freedom_ = np.array(state["degrees_of_freedom_"])
    bgmm.weight_concentration_ = tuple(np.array(v) for v in state["weight_concentration_"])
    bgmm.converged_ = state["converged_"]
    bgmm.n_iter_ = state["n_iter_"]
    bgmm.lower_bound_ = state["lower_bound_"]
    bgmm.n_features_in_ = 1
    return bgmm


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
        margin = max(half * 1e-6, (abs(a) + abs(b)) * 1e-12, 1e-12)
        syn_means.append(center)
        syn_stds.append((half + margin) / (4.0 * RADIUS_FACTOR * _COVER_SHRINK))
    return syn_means, syn_stds


def _learn_rounding(finite, max_digits):
    """The fewest decimals d for which every sample value survives round_to(x, d)."""
    if finite.size == 0:
        return None
    for digits in range(max_digits + 1):
        if np.array_equal(round_to(finite, digits), finite):
            return digits
    return None


def write_json_atomic(path, data):
    """Write JSON whole (a local file appears by rename); ``path`` may be an fsspec URL."""
    storage.write_json(os.fspath(path), data)


def read_json(path):
    try:
        return json.loads(storage.read_text(os.fspath(path)), parse_constant=_reject_constant)
    except FileNotFoundError:
        raise ModelFileError(f"{path}: model file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise ModelFileError(f"{path}: not a valid model file (bad JSON: {exc})") from None
    except RecursionError:
        raise ModelFileError(f"{path}: not a valid model file (JSON nested too deeply)") from None
    except IsADirectoryError:
        raise ModelFileError(f"{path}: is a directory, expected a model JSON file") from None


def _reject_constant(name):
    raise ValueError(f"{name} is not allowed")
