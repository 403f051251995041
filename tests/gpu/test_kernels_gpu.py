"""gpu_vgm.kernels (CuPy) against the reference cpu_fallback.kernels on 10M rows with extremes.

Both modes are bit-identical to the CPU by construction (the same IEEE operations in the same
order, no fused multiply-add, and sample mode's exp built from + and * alone, not libm), so
components, z bits and counts must be equal; pieces with row offsets equal the whole, and
decoding equals the CPU's to 4 ulp (exact with learned rounding).
"""

import itertools

import numpy as np
import pytest

cupy = pytest.importorskip("cupy", reason="no CuPy: GPU tests need an NVIDIA GPU with CuPy")


def _device_count():
    try:
        return cupy.cuda.runtime.getDeviceCount()
    except Exception:  # no driver, no device, a broken CUDA install: all mean "no GPU"
        return 0


if _device_count() == 0:
    pytest.skip(
        "no CUDA device: cupy.cuda.runtime.getDeviceCount() failed or is 0; GPU tests need an "
        "NVIDIA GPU",
        allow_module_level=True,
    )

from cpu_fallback import kernels as cpu_kernels  # noqa: E402
from gpu_vgm import kernels as gpu_kernels  # noqa: E402
from gpu_vgm.params import round_to  # noqa: E402

pytestmark = pytest.mark.gpu

MODES = ("argmax", "sample")
ROW_OFFSET = 3_000_000_019  # past 2**31, so the kernels' 64-bit row arithmetic is exercised


# ---------------------------------------------------------------------- helpers
def roundtrip_scale(x, component, params):
    """max(|x|, |m_k|, 4 s_k) per row (|x| for special ids and NaN): the 4-ulp contract's scale."""
    scale = np.abs(np.asarray(x, dtype=np.float64))
    comp = np.asarray(component).astype(np.int64)
    mix = (comp >= 0) & (comp < params.special_base)
    k = comp[mix]
    scale[mix] = np.maximum(scale[mix], np.maximum(np.abs(params.m_all[k]), params.four_s_all[k]))
    return scale


def assert_within_ulp(actual, expected, scale, n_ulp=4, what="values"):
    """Same NaN positions; equal (infinities included) or within n_ulp ulp of ``scale``."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    nan = np.isnan(expected)
    np.testing.assert_array_equal(np.isnan(actual), nan, err_msg=f"{what}: NaN positions")
    with np.errstate(invalid="ignore", over="ignore"):
        close = np.abs(actual - expected) <= n_ulp * np.spacing(np.abs(scale))
    ok = nan | (actual == expected) | close
    bad = np.flatnonzero(~ok)
    assert bad.size == 0, (
        f"{what}: {bad.size} rows differ by more than {n_ulp} ulp, e.g. rows {bad[:5].tolist()}: "
        f"{actual[bad[:5]].tolist()} != {expected[bad[:5]].tolist()}"
    )


def assert_encodings_equal(gpu, cpu, what):
    z_gpu, comp_gpu, ooc_gpu, inf_gpu = gpu
    z_cpu, comp_cpu, ooc_cpu, inf_cpu = cpu
    assert z_gpu.dtype == z_cpu.dtype and comp_gpu.dtype == np.int16
    comp_gpu = cupy.asnumpy(comp_gpu)
    bad = np.flatnonzero(comp_gpu != comp_cpu)
    assert bad.size == 0, f"{what}: {bad.size} components differ, e.g. rows {bad[:5].tolist()}"
    z_gpu = cupy.asnumpy(z_gpu)
    same = z_gpu.view(np.uint8).reshape(-1, z_gpu.itemsize) == z_cpu.view(np.uint8).reshape(
        -1, z_cpu.itemsize
    )
    bad = np.flatnonzero(~same.all(axis=1))
    assert bad.size == 0, (
        f"{what}: {bad.size} z differ in their bits, e.g. rows {bad[:5].tolist()}: "
        f"{z_gpu[bad[:5]].tolist()} != {z_cpu[bad[:5]].tolist()}"
    )
    assert (ooc_gpu, inf_gpu) == (ooc_cpu, inf_cpu), what


@pytest.fixture(scope="module")
def x_device(column):
    return cupy.asarray(column[0])


def cpu_encode(cpu_results, model, x, mode):
    """cpu_fallback's float64 encoding of the whole column, computed once per model and mode."""
    key = (id(model), mode)
    if key not in cpu_results:
        cpu_results[key] = cpu_kernels.encode(
            x, model.kernel_params_, mode, model.column_key_, ROW_OFFSET
        )
    return cpu_results[key]


def gpu_encode(model, x_device, mode, **kwargs):
    return gpu_kernels.encode(
        x_device, model.kernel_params_, mode, model.column_key_, ROW_OFFSET, **kwargs
    )


# ---------------------------------------------------------------------- encode
@pytest.mark.parametrize("mode", MODES)
def test_encode_matches_cpu(model, column, x_device, cpu_results, mode):
    x, _, _, n_inf = column
    cpu = cpu_encode(cpu_results, model, x, mode)
    gpu = gpu_encode(model, x_device, mode)
    assert_encodings_equal(gpu, cpu, f"encode {mode}")
    # The extremes are there: far outside coverage, infinite, NaN and the special zero.
    assert gpu[2] > 0 and gpu[3] == n_inf
    comp = cupy.asnumpy(gpu[1])
    assert (comp[np.isnan(x)] == -1).all()
    assert (comp[x == 0.0] == model.kernel_params_.special_base).all()


def test_sample_mode_samples(model, column, x_device):
    """sample mode draws (it differs from argmax on some rows) and is reproducible."""
    argmax = cupy.asnumpy(gpu_encode(model, x_device, "argmax")[1])
    first = cupy.asnumpy(gpu_encode(model, x_device, "sample")[1])
    again = cupy.asnumpy(gpu_encode(model, x_device, "sample")[1])
    np.testing.assert_array_equal(first, again)
    assert (first != argmax).any()


@pytest.mark.parametrize("mode", MODES)
def test_pieces_with_offsets_equal_whole(model, column, x_device, mode):
    params, key = model.kernel_params_, model.column_key_
    whole = gpu_kernels.encode(x_device, params, mode, key, ROW_OFFSET)
    n = x_device.shape[0]
    bounds = [0, 1, 257, 1_000_003, 5_555_555, n - 1, n]
    pieces = [
        gpu_kernels.encode(x_device[a:b], params, mode, key, ROW_OFFSET + a)
        for a, b in itertools.pairwise(bounds)
    ]
    assert bool(cupy.array_equal(cupy.concatenate([p[0] for p in pieces]), whole[0]))
    assert bool(cupy.array_equal(cupy.concatenate([p[1] for p in pieces]), whole[1]))
    assert sum(p[2] for p in pieces) == whole[2]
    assert sum(p[3] for p in pieces) == whole[3]


@pytest.mark.parametrize("mode", MODES)
def test_float32_output(model, column, x_device, cpu_results, mode):
    x = column[0]
    z64, comp64, ooc64, inf64 = gpu_encode(model, x_device, mode)
    z32, comp32, ooc32, inf32 = gpu_encode(model, x_device, mode, out_dtype=np.float32)
    assert z32.dtype == np.float32 and comp32.dtype == np.int16
    assert bool(cupy.array_equal(comp32, comp64)) and (ooc32, inf32) == (ooc64, inf64)
    z32 = cupy.asnumpy(z32)
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(z32, cupy.asnumpy(z64).astype(np.float32))  # cast once
        z_cpu32 = cpu_encode(cpu_results, model, x, mode)[0].astype(np.float32)
    np.testing.assert_allclose(z32, z_cpu32, rtol=2.0**-23, atol=0)
    # Decoding float32 z (the float32 kernel) agrees with the CPU decoder too.
    params = model.kernel_params_
    back_gpu, bad_gpu = gpu_kernels.decode(cupy.asarray(z32), comp32, params)
    back_cpu, bad_cpu = cpu_kernels.decode(z32, cupy.asnumpy(comp32), params)
    assert bad_gpu == bad_cpu == 0
    back_gpu = cupy.asnumpy(back_gpu)
    assert_within_ulp(back_gpu, back_cpu, roundtrip_scale(back_cpu, cupy.asnumpy(comp32), params))


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.int32])
def test_other_input_dtypes(model, column, dtype):
    """float32 and integer input is cast to float64 on the device, as the CPU casts on the host."""
    x = column[0][:1_000_000]
    x = np.nan_to_num(x, nan=0.0, posinf=1e15, neginf=-1e15)
    if np.dtype(dtype).kind == "i":
        limit = min(float(np.iinfo(dtype).max), 1e15)
        x = np.clip(x, -limit, limit)
    with np.errstate(over="ignore"):
        x = x.astype(dtype)
    params, key = model.kernel_params_, model.column_key_
    for mode in MODES:
        cpu = cpu_kernels.encode(x, params, mode, key, 7)
        gpu = gpu_kernels.encode(cupy.asarray(x), params, mode, key, 7)
        assert_encodings_equal(gpu, cpu, f"{np.dtype(dtype).name} {mode}")


def test_exp_matches_cpu():
    """Sample mode's exp: the CPU's exp_nonpositive bit for bit, here element by element."""
    rng = np.random.default_rng(3)
    t = np.concatenate(
        [
            -rng.random(200_000) * 40.0,
            -rng.random(50_000) * 800.0,
            -np.abs(rng.standard_normal(50_000)) * 1e-3,
            [0.0, -0.0, -708.0, -709.0, -1e300, -np.inf, -5e-324, -np.log(2.0) / 2],
        ]
    )
    expected = np.array([cpu_kernels.exp_nonpositive(v) for v in t])
    actual = cupy.asnumpy(gpu_kernels.exp_nonpositive(cupy.asarray(t)))
    bad = np.flatnonzero(actual.view(np.int64) != expected.view(np.int64))
    assert bad.size == 0, f"{bad.size} differ, e.g. t = {t[bad[:5]].tolist()}"


# ---------------------------------------------------------------------- decode
@pytest.mark.parametrize("mode", MODES)
def test_decode_matches_cpu_and_roundtrips(model, column, x_device, mode):
    x = column[0]
    params = model.kernel_params_
    z, comp, _, _ = gpu_encode(model, x_device, mode)
    back, n_invalid = gpu_kernels.decode(z, comp, params)
    assert back.dtype == np.float64 and n_invalid == 0
    back = cupy.asnumpy(back)
    comp_host = cupy.asnumpy(comp)
    expected, expected_invalid = cpu_kernels.decode(cupy.asnumpy(z), comp_host, params)
    assert expected_invalid == 0
    assert_within_ulp(back, expected, roundtrip_scale(expected, comp_host, params), what="decode")
    finite = np.isfinite(x)
    np.testing.assert_array_equal(np.isnan(back), np.isnan(x))
    np.testing.assert_array_equal(back[~finite & ~np.isnan(x)], x[~finite & ~np.isnan(x)])
    if params.digits >= 0:
        # Learned rounding: every value with at most `digits` decimals (and small enough for
        # the rounding to resolve them) decodes exactly.
        with np.errstate(invalid="ignore", over="ignore"):
            exact = finite & (np.abs(x) <= 1e12) & (round_to(x, params.digits) == x)
        assert exact.sum() > 0.95 * x.size
        bad = np.flatnonzero(exact & (back != x))
        assert bad.size == 0, f"{bad.size} rows not exact, e.g. {x[bad[:5]]} -> {back[bad[:5]]}"
    else:
        # DESIGN.md's contract: within 4 ulp of max(|x|, |m_k|, 4 s_k) for every finite x.
        scale = roundtrip_scale(x, comp_host, params)
        assert_within_ulp(back[finite], x[finite], scale[finite], what="roundtrip")


def test_decode_counts_invalid_ids_like_cpu(model, column, x_device):
    params = model.kernel_params_
    z, comp, _, _ = gpu_encode(model, x_device[:100_000], "argmax")
    bad_ids = [-1, -2, params.n_ids, params.n_ids + 5, 32767, -32768, params.special_base]
    comp[: len(bad_ids)] = cupy.asarray(np.array(bad_ids, dtype=np.int16))
    back, n_invalid = gpu_kernels.decode(z, comp, params)
    expected, expected_invalid = cpu_kernels.decode(cupy.asnumpy(z), cupy.asnumpy(comp), params)
    assert n_invalid == expected_invalid == 5
    back = cupy.asnumpy(back)
    assert_within_ulp(back, expected, roundtrip_scale(expected, cupy.asnumpy(comp), params))
    assert back[len(bad_ids) - 1] == params.special[0]


# ---------------------------------------------------------------------- edge cases
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("out_dtype", [np.float64, np.float32])
def test_empty_input(model, mode, out_dtype):
    params, key = model.kernel_params_, model.column_key_
    z, comp, n_ooc, n_inf = gpu_kernels.encode(
        cupy.empty(0, dtype=cupy.float64), params, mode, key, 0, out_dtype
    )
    assert z.shape == comp.shape == (0,) and (n_ooc, n_inf) == (0, 0)
    assert z.dtype == out_dtype and comp.dtype == np.int16
    back, n_invalid = gpu_kernels.decode(z, comp, params)
    assert back.shape == (0,) and back.dtype == np.float64 and n_invalid == 0


def test_small_inputs_match_cpu(model):
    """Fewer rows than a warp, one block, and a partial last block."""
    params, key = model.kernel_params_, model.column_key_
    rng = np.random.default_rng(5)
    for n in (1, 7, 31, 255, 257, 70_001):
        x = np.round(rng.standard_cauchy(n) * 100.0, 2)
        x[::3] = 0.0
        for mode in MODES:
            cpu = cpu_kernels.encode(x, params, mode, key, 11)
            gpu = gpu_kernels.encode(cupy.asarray(x), params, mode, key, 11)
            assert_encodings_equal(gpu, cpu, f"n={n} {mode}")


def test_device_params_are_cached(model):
    params = model.kernel_params_
    assert gpu_kernels._device_params(params) is gpu_kernels._device_params(params)


def test_bad_mode_is_rejected(model):
    with pytest.raises(ValueError, match="mode"):
        gpu_kernels.encode(cupy.zeros(3), model.kernel_params_, "median", 0, 0)
