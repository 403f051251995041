"""cpu_fallback kernels against a row-by-row Python reference of DESIGN.md's rules."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpu_fallback import kernels
from gpu_vgm import ScaleVGM, rng
from gpu_vgm.params import NEG_ZERO_COMPONENT, KernelParams

pytestmark = pytest.mark.filterwarnings("ignore:.*did not converge")


def reference_row(x, p, mode, key, row):
    """One row by the book: candidates, argmax or softmax draw, fallback, NaN, specials
    (the last one that matches; a special value 0 keeps the sign of x in z), -0.0."""
    if math.isnan(x):
        return 0.0, -1, False
    hits = [j for j, s in enumerate(p.special) if x == s]
    if hits:
        return (x if x == 0.0 else 0.0), p.special_base + hits[-1], False
    if x == 0.0 and math.copysign(1.0, x) < 0.0:
        return 0.0, NEG_ZERO_COMPONENT, False
    cands = [k for k in range(p.m.size) if abs(x - p.m[k]) <= p.radius[k]]
    if not cands:
        k = min(range(p.m.size), key=lambda k: (abs(x - p.m[k]) * (1.0 / p.four_s[k]), k))
        return (x - p.m[k]) / p.four_s[k], int(p.ids[k]), True
    logits = {k: p.c[k] - p.half_p[k] * ((x - p.m[k]) * (x - p.m[k])) for k in cands}
    best = max(logits.values())
    chosen = min(k for k in cands if logits[k] == best)
    if mode == "sample" and len(cands) > 1:
        weights = {k: kernels.exp_nonpositive(logits[k] - best) for k in cands}
        total = 0.0
        for k in range(p.m.size):
            total += weights.get(k, 0.0)
        threshold = rng.uniform(key, row) * total
        running = 0.0
        for k in range(p.m.size):
            running += weights.get(k, 0.0)
            if weights.get(k, 0.0) > 0.0:
                chosen = k
                if running > threshold:
                    break
    return (x - p.m[chosen]) / p.four_s[chosen], int(p.ids[chosen]), False


def same_bits(a, b):
    return np.array_equal(np.asarray(a, np.float64).view(np.int64), np.asarray(b).view(np.int64))


@pytest.mark.parametrize("special_values", [[0.0], []], ids=["special_zero", "no_specials"])
@pytest.mark.parametrize("mode", ["argmax", "sample"])
def test_kernels_match_the_reference_row_by_row(mode, special_values):
    g = np.random.default_rng(5)
    sample = np.concatenate([g.lognormal(2, 1.2, 3000), np.zeros(100), g.normal(-40, 3, 500)])
    model = ScaleVGM(n_components=6, special_values=special_values, mode=mode).fit(sample)
    extremes = [np.nan, 0.0, -0.0, -1e6, 1e7, model.value_range_[1]]
    x = np.concatenate([sample[:1500], extremes, g.uniform(-100, 600, 1500)])
    offset = 123_456_789_012
    z, comp, n_out, n_inf = kernels.encode(x, model.kernel_params_, mode, model.column_key_, offset)
    expected = [
        reference_row(v, model.kernel_params_, mode, model.column_key_, offset + i)
        for i, v in enumerate(x)
    ]
    np.testing.assert_array_equal(comp, [e[1] for e in expected])
    assert same_bits(z, [e[0] for e in expected])  # -0.0 is not +0.0 here
    assert n_out == sum(e[2] for e in expected) > 0
    assert n_inf == 0


def test_infinite_values_are_counted():
    model = ScaleVGM(n_components=2).fit(np.arange(10.0))
    _, _, _, n_inf = kernels.encode(
        np.array([1.0, np.inf, -np.inf, 2.0]), model.kernel_params_, "argmax", 0, 0
    )
    assert n_inf == 2


@pytest.mark.parametrize("mode", ["argmax", "sample"])
def test_a_repeated_special_value_is_counted_once(mode):
    """KernelParams may repeat a special value: a row equal to it takes the last one's id and
    is not out of coverage, however many times it repeats (the count never goes negative)."""
    p = ScaleVGM(n_components=2).fit(np.arange(10.0)).kernel_params_
    p = p._replace(special=np.array([1e6, 5.0, 1e6, 1e6]))
    z, comp, n_out, _ = kernels.encode(np.array([1e6, 5.0, 2e6, 3.0]), p, mode, 0, 0)
    base = p.special_base
    np.testing.assert_array_equal(comp[:2], [base + 3, base + 1])
    np.testing.assert_array_equal(z[:2], [0.0, 0.0])
    assert n_out == 1  # 2e6 alone


def test_decode_counts_invalid_component_ids():
    model = ScaleVGM(n_components=2).fit(np.arange(10.0))
    n_ids = model.kernel_params_.n_ids
    x, n_invalid = kernels.decode(
        np.zeros(4), np.array([-1, 0, n_ids, -7], dtype=np.int16), model.kernel_params_
    )
    assert n_invalid == 2
    assert np.isnan(x[[0, 2, 3]]).all() and np.isfinite(x[1])


@pytest.mark.parametrize("n_component", [3, 5])
def test_decode_rejects_component_of_another_length(n_component):
    p = ScaleVGM(n_components=2).fit(np.arange(10.0)).kernel_params_
    with pytest.raises(ValueError, match=f"z has 4 rows but component has {n_component}"):
        kernels.decode(np.zeros(4), np.zeros(n_component, dtype=np.int16), p)


@given(st.floats(min_value=-800.0, max_value=0.0))
@settings(max_examples=300, deadline=None)
def test_exp_nonpositive_is_accurate(t):
    expected = math.exp(max(t, -708.0))
    assert kernels.exp_nonpositive(t) == pytest.approx(expected, rel=4.5e-16, abs=0)  # 2 ulp


def test_splitmix64_uniforms_are_uniform_and_match_the_kernel_draws():
    key = rng.column_key(42, "Amount")
    u = np.array([rng.uniform(key, r) for r in range(20_000)])
    assert 0.0 <= u.min() and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.01
    assert rng.splitmix64(0) == 0xE220A8397B1DCDAF  # published first output of SplitMix64(0)


def test_row_keys_are_splitmix64_of_each_row_and_distinct():
    key = rng.sample_key(42)
    assert key != rng.column_key(42, "Amount") and key != rng.sample_key(43)
    start = 2**40 - 3  # rows past 2**32, keys that wrap mod 2**64
    keys = rng.row_keys(key, start, 5_000)
    assert keys.dtype == np.uint64
    assert [int(k) for k in keys[:50]] == [rng.splitmix64(key ^ (start + i)) for i in range(50)]
    assert np.unique(keys).size == keys.size
    assert np.array_equal(rng.row_keys(key, start + 10, 20), keys[10:30])  # any split, same keys


def zero_params(special, digits=-1):
    """One component (m = 0.5, 4s = 1, covering 0.5 +- 0.99) and the given special values."""
    one, half = np.ones(1), np.full(1, 0.5)
    return KernelParams(
        m=half, four_s=one, half_p=one, c=one, radius=np.full(1, 0.99), ids=np.zeros(1, np.int16),
        m_all=half, four_s_all=one, special=np.array(special, dtype=np.float64), special_base=1,
        digits=digits,
    )  # fmt: skip


@pytest.mark.parametrize("mode", ["argmax", "sample"])
def test_negative_zero_rides_on_z_of_a_special_zero(mode):
    p = zero_params([-7.0, 0.0])
    z, comp, n_out, _ = kernels.encode(np.array([-0.0, 0.0, -7.0]), p, mode, 0, 0)
    np.testing.assert_array_equal(comp, [2, 2, 1])
    assert same_bits(z, [-0.0, 0.0, 0.0]) and n_out == 0
    back, n_invalid = kernels.decode(z, comp, p)
    assert same_bits(back, [-0.0, 0.0, -7.0]) and n_invalid == 0


@pytest.mark.parametrize("covered", [True, False], ids=["zero_covered", "zero_uncovered"])
@pytest.mark.parametrize("mode", ["argmax", "sample"])
def test_negative_zero_without_a_special_zero_has_its_own_id(mode, covered):
    p = zero_params([])
    if not covered:  # 0 is then out of coverage: -0.0 is still not counted, +0.0 is
        p = p._replace(m=p.m + 5.0, m_all=p.m_all + 5.0)
    z, comp, n_out, _ = kernels.encode(np.array([-0.0, 0.0]), p, mode, 0, 0)
    assert comp[0] == NEG_ZERO_COMPONENT and comp[1] == 0
    assert same_bits(z[:1], [0.0]) and n_out == (0 if covered else 1)
    back, n_invalid = kernels.decode(z, comp, p)
    assert same_bits(back[:1], [-0.0]) and n_invalid == 0
    assert back[1] == 0.0 and math.copysign(1.0, back[1]) > 0.0


def test_a_decoded_mixture_zero_is_positive():
    """Rounding -1.1e-16 to two decimals gives -0.0; a mixture row decodes to +0.0 instead."""
    p = zero_params([], digits=2)
    back, _ = kernels.decode(np.array([-0.5000000000000001, -0.5]), np.zeros(2, np.int16), p)
    assert same_bits(back, [0.0, 0.0])
