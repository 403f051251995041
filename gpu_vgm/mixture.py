"""scikit-learn's BayesianGaussianMixture as gpu_vgm uses it: the fit (standardized, on a
subsample first), the per-component logit constants the kernels need (DESIGN.md "The math"),
and its fitted state as plain numbers (to travel as JSON, and to rebuild the estimator without
refitting).

scikit-learn itself is imported late, inside the functions: workers that only encode or
decode never need it.
"""

import numpy as np


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


SKLEARN_ARRAYS = (
    "weights_",
    "means_",
    "covariances_",
    "precisions_cholesky_",
    "mean_precision_",
    "degrees_of_freedom_",
)


def sklearn_state(bgmm):
    state = {name: np.asarray(getattr(bgmm, name)).reshape(-1).tolist() for name in SKLEARN_ARRAYS}
    a, b = bgmm.weight_concentration_
    state["weight_concentration_"] = [a.tolist(), b.tolist()]
    state["n_components"] = int(bgmm.n_components)
    state["converged_"] = bool(bgmm.converged_)
    state["n_iter_"] = int(bgmm.n_iter_)
    state["lower_bound_"] = float(bgmm.lower_bound_)
    return state


# The fit's schedule: EM on nested subsamples of the sample, then on every row. Each phase
# runs this share of max_iter on its rows, continuing (warm_start) from the last one; the
# first starts from k-means on its rows (scikit-learn's default start).
PHASES = ((5_000, 0.5), (20_000, 0.1))
LAST_SHARE = 0.03  # on every sample row
SMALL_SAMPLE = 10_000  # and fewer rows: every iteration on every row (at most 1M row-iterations)
# A phase on a fraction r of the rows sees every prior pseudo-count scaled by r (and the prior
# mean and covariance of every row): it then solves a scaled-down copy of the whole sample's
# problem. Without that, priors as strong as on all rows kept the components of a subsample
# fit wide (Pareto: -0.12 nats/row against the old fit); with it, on 8 distributions x 3
# samples x 3 seeds, 0.10 of the old fit's time at -0.007 nats/row at worst (benchmarks/fit.py;
# one Poisson sample aside, where the old fit happened on a component at 30 and every rule
# loses 0.25). 10k and 30k rows gave the same quality at 0.13 of the time (a 20-column job
# 1.6-2 s slower); k-means++ starts on 30k rows took 0.27 and lost up to 0.24 on zero spikes.
INIT = "kmeans"
# A tolerance per row: scikit-learn's ``tol`` bounds the change of a lower bound summed over
# every row, so its default (1e-3) never stopped a fit.
TOL_PER_ROW = 1e-5  # nats per row and iteration
# Standardized values are rounded to this grid (of the scale): x, 1e8 x and 1e-8 x then give
# bit-identical inputs, so the fit does not depend on the column's units.
GRID = 2.0**-20
MIN_SCALE = 1e-140  # covariances (scale squared) stay normal doubles
# A fit is poor when the mixture explains the sample worse than one Gaussian, or when its lower
# bound, extrapolated, would still rise by this much (nats per row).
POOR_GAIN = -0.02
POOR_REMAINING = 0.02


def new_bgmm(model, n_components, max_iter=None, rows=None):
    """The original Scale-VGM's estimator: dirichlet_process prior, the model's settings;
    k-means start (INIT) and, for a fit on ``rows`` rows, TOL_PER_ROW."""
    from sklearn.mixture import BayesianGaussianMixture  # imported late: it takes seconds

    return BayesianGaussianMixture(
        n_components=n_components,
        weight_concentration_prior_type="dirichlet_process",
        weight_concentration_prior=model.weight_concentration_prior,
        max_iter=max_iter or model.max_iter,
        random_state=model.random_state,
        init_params=INIT,
        tol=TOL_PER_ROW * rows if rows else 1e-3,
    )


def fit_bgmm(model, values):
    """(BayesianGaussianMixture in the column's units, fit figures) for ``values`` (finite,
    without special values). The caller holds ``model.sklearn_fit_settings``.

    The estimator sees the values standardized (median, IQR / 1.349): scikit-learn's
    ``reg_covar`` is absolute, so on raw values a column near 1e-7 got components a thousand
    times wider than its data. Its means and covariances are mapped back afterwards; every
    component's log-probability then shifts by the same -log(scale), so ``predict`` and
    ``predict_proba`` on raw values equal the standardized estimator's.

    EM runs on nested subsamples first (PHASES), then on every row with scikit-learn's
    default priors: the estimator returned is a plain fit on every row, started where the
    subsamples left it.
    """
    center, scale = robust_center_scale(values)
    z = (np.rint((values - center) / scale / GRID) * GRID).reshape(-1, 1)
    n = z.shape[0]
    phases = [(rows, share) for rows, share in PHASES if rows < n] if n > SMALL_SAMPLE else []
    if not phases:  # a small sample: every iteration on every row
        bgmm = new_bgmm(model, min(model.n_components, n), model.max_iter, n)
        bgmm.fit(z)
    else:
        bgmm = new_bgmm(model, model.n_components)
        order = np.random.default_rng(model.random_state).permutation(n)
        moments = _moments(z)  # of every row, for each phase's priors
        for rows, share in phases:
            bgmm.set_params(
                max_iter=_iterations(model, share),
                tol=TOL_PER_ROW * rows,
                **_priors(model, moments, rows / n),
            )
            bgmm.fit(z[np.sort(order[:rows])])
            bgmm.warm_start = True  # the next phase continues from here
        # phases that would see every row fold into this one
        last = max([LAST_SHARE] + [share for rows, share in PHASES if rows >= n])
        bgmm.set_params(max_iter=_iterations(model, last), tol=TOL_PER_ROW * n, **_priors(model))
        bgmm.fit(z)
        bgmm.warm_start = False
    figures = fit_figures(bgmm, z)
    return _map_back(bgmm, center, scale), figures


def _iterations(model, share):
    return max(1, round(model.max_iter * share))


def _moments(z):
    """(mean, covariance) of ``z`` (one feature), scikit-learn's default prior mean and
    covariance; None for a zero covariance, which scikit-learn refuses as a prior."""
    if z.shape[0] < 2:
        return None
    covariance = np.atleast_2d(np.cov(z.T))
    return (z.mean(axis=0), covariance) if covariance[0, 0] > 0 else None


def _priors(model, moments=None, share=1.0):
    """scikit-learn's default priors for a sample of ``moments`` (``_moments``), every
    pseudo-count times ``share``; without them, the defaults themselves (computed from the rows
    fitted)."""
    if moments is None:
        return {
            "weight_concentration_prior": model.weight_concentration_prior,
            "mean_precision_prior": None,
            "mean_prior": None,
            "degrees_of_freedom_prior": None,
            "covariance_prior": None,
        }
    mean, covariance = moments
    return {
        "weight_concentration_prior": model.weight_concentration_prior * share,
        "mean_precision_prior": share,  # default 1
        "mean_prior": mean,
        "degrees_of_freedom_prior": share,  # default: the number of features, 1
        "covariance_prior": share * covariance,
    }


def robust_center_scale(values):
    """(median, IQR / 1.349), the scale falling back to the standard deviation, then 1: a
    heavy tail would make the standard deviation, and so the effective reg_covar, too wide."""
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    scale = float(q3 - q1) / 1.349
    if not (np.isfinite(scale) and scale > 0):
        scale = float(np.std(values))
    if not (np.isfinite(scale) and scale > 0):
        scale = 1.0
    return float(median), max(scale, MIN_SCALE)


def _map_back(bgmm, center, scale):
    """Rewrite, in place, a mixture fitted on (x - center) / scale to apply to raw x."""
    s2 = scale * scale
    shift = float(np.sum(bgmm.degrees_of_freedom_)) * np.log(scale)
    bgmm.means_ = center + scale * bgmm.means_
    bgmm.covariances_ = s2 * bgmm.covariances_
    bgmm.precisions_cholesky_ = bgmm.precisions_cholesky_ / scale
    bgmm.precisions_ = bgmm.precisions_ / s2
    bgmm.mean_prior_ = center + scale * bgmm.mean_prior_
    bgmm.covariance_prior_ = s2 * bgmm.covariance_prior_
    bgmm.lower_bound_ = bgmm.lower_bound_ - shift
    return bgmm


def fit_figures(bgmm, z):
    """How well a fit went, in nats per row (unit-free), for the manifest and the warning:

    - ``gain_vs_gaussian``: the mixture's mean log-likelihood on the fit rows minus one
      Gaussian's (about 0 for a Gaussian column; below POOR_GAIN the mixture is worse);
    - ``still_rising``: the lower bound's last per-row rise, extrapolated geometrically: what
      more iterations would still gain;
    - ``iterations`` (of the last phase), ``converged`` (scikit-learn's: the bound rose by
      less than TOL_PER_ROW per row), and ``poor``.
    """
    zz = z.reshape(-1)
    steps = np.diff(np.asarray(bgmm.lower_bounds_, dtype=np.float64)) / max(zz.size, 1)
    remaining = 0.0
    if steps.size >= 2 and steps[-1] > 0 and steps[-2] > 0:
        q = min(max(steps[-1] / steps[-2], 0.0), 0.99)
        remaining = float(steps[-1] * q / (1 - q))
    sd = float(np.std(zz))
    gain = _mixture_loglik(bgmm, zz) - _gaussian_loglik(zz, sd) if sd > 0 else 0.0
    return {
        "iterations": int(bgmm.n_iter_),
        "converged": bool(bgmm.converged_),
        "gain_vs_gaussian": float(gain),
        "still_rising": remaining,
        "poor": bool(not gain >= POOR_GAIN or remaining > POOR_REMAINING),
    }


def _mixture_loglik(bgmm, z):
    """Mean log-likelihood of z under the plain Gaussian mixture (weights_, means_, stds)."""
    w = np.asarray(bgmm.weights_)
    m = bgmm.means_.reshape(-1)
    sd = np.sqrt(bgmm.covariances_.reshape(-1))
    d = (z.reshape(-1, 1) - m) / sd
    with np.errstate(divide="ignore"):
        lp = np.log(w) - np.log(sd) - 0.5 * np.log(2 * np.pi) - 0.5 * d * d
    top = lp.max(axis=1, keepdims=True)
    return float(np.mean(top[:, 0] + np.log(np.exp(lp - top).sum(axis=1))))


def _gaussian_loglik(z, sd):
    d = (z - z.mean()) / sd
    return float(np.mean(-np.log(sd) - 0.5 * np.log(2 * np.pi) - 0.5 * d * d))


def sklearn_from_state(model, state):
    """A fitted BayesianGaussianMixture equivalent to the saved one (``.bgmm`` after load)."""
    k = state["n_components"]
    bgmm = new_bgmm(model, k)
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
