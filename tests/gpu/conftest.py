"""Host-side fixtures for the GPU kernel tests: a heavy-tailed column (tests/conftest.py), fitted
models, extremes.

Nothing here touches CuPy, so collecting this directory on a machine without a GPU is cheap;
the test modules skip themselves (with the reason) when CuPy or a CUDA device is missing.
Every test collected under this directory is marked ``gpu``.
"""

import warnings
from pathlib import Path

import numpy as np
import pytest

from gpu_vgm import ScaleVGM

N_ROWS = 10_000_000
SAMPLE_ROWS = 100_000

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.gpu)


@pytest.fixture(scope="session")
def column(make_heavy_tailed):
    """(x, sample, value_range, n_inf): N_ROWS values with extremes; the fit sample and range.

    The range's maximum and minimum rows are left out of the sample; the extremes added after
    the fit (far outside the range, NaN, +-0, +-inf) are outside coverage or special.
    """
    rng = np.random.default_rng(20261126)
    x = make_heavy_tailed(N_ROWS, rng)
    lo, hi = float(x.min()), float(x.max())
    pool = np.flatnonzero((x != lo) & (x != hi))
    sample = x[rng.choice(pool, SAMPLE_ROWS, replace=False)]
    assert hi not in sample and lo not in sample
    extremes = np.array(
        [hi, lo, np.nextafter(hi, np.inf), np.nextafter(lo, -np.inf), hi * 10.0, hi * 1e3,
         lo * 1e3, 1e12, -1e12, 123456789.01, 0.01, -0.01, 0.0, -0.0, np.nan, 1e300, -1e300,
         np.inf, -np.inf],
    )  # fmt: skip
    where = rng.choice(N_ROWS, 100 * extremes.size, replace=False)
    x[where] = np.tile(extremes, 100)
    x[rng.choice(N_ROWS, N_ROWS // 100, replace=False)] = np.nan
    n_inf = int(np.isinf(x).sum())
    assert n_inf > 0
    return x, sample, (lo, hi), n_inf


@pytest.fixture(scope="session", params=[False, True], ids=["exact", "learn_rounding"])
def model(request, column):
    _, sample, value_range, _ = column
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a ConvergenceWarning changes nothing tested here
        vgm = ScaleVGM(n_components=10, special_values=[0.0], learn_rounding=request.param)
        vgm.fit(sample, value_range=value_range)
    assert (vgm.rounding_digits_ == 2) if request.param else vgm.rounding_digits_ is None
    return vgm


@pytest.fixture(scope="session")
def cpu_results():
    """Memo of cpu_fallback.kernels.encode results shared by tests: key -> result tuple."""
    return {}
