"""scikit-learn's BayesianGaussianMixture as gpu_vgm uses it: the estimator's settings, the
per-component logit constants the kernels need (DESIGN.md "The math"), and its fitted state
as plain numbers (to travel as JSON, and to rebuild the estimator without refitting).

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


def new_bgmm(model, n_components):
    """The original Scale-VGM's estimator: dirichlet_process prior, the model's settings."""
    from sklearn.mixture import BayesianGaussianMixture  # imported late: it takes seconds

    return BayesianGaussianMixture(
        n_components=n_components,
        weight_concentration_prior_type="dirichlet_process",
        weight_concentration_prior=model.weight_concentration_prior,
        max_iter=model.max_iter,
        random_state=model.random_state,
    )


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
