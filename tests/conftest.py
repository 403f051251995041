"""Test data shared by the CPU tests and tests/gpu."""

import numpy as np
import pytest


def heavy_tailed(n, rng):
    """Amounts in cents: a lognormal body, a Pareto tail, 5% negatives, 10% exact zeros."""
    body = rng.lognormal(3.0, 1.2, n)
    tail = (rng.pareto(1.5, n) + 1.0) * 500.0
    x = np.where(rng.random(n) < 0.9, body, tail)
    x = np.where(rng.random(n) < 0.05, -x, x)
    x = np.where(rng.random(n) < 0.1, 0.0, x)
    return np.rint(x * 100.0) / 100.0


@pytest.fixture(scope="session")
def make_heavy_tailed():
    return heavy_tailed
