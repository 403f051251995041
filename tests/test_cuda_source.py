"""The CUDA source (gpu_vgm.cuda_source) checked without a GPU.

nvcc compiles exactly ``source()`` with ``OPTIONS`` to PTX for three architectures (as CuPy's
NVRTC does, which adds only an -arch and its include path): every kernel is there and no
double operation is fused. g++ compiles the same text for the host through
tests/cuda_host/cuda_host.h (one thread runs the whole grid), and the kernels, called through
ctypes as gpu_vgm/kernels.py calls them, must give cpu_fallback's bits on every row.

Under CI=true a missing nvcc or g++ fails these tests; elsewhere they skip, saying which.
"""

import ctypes
import os
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest

from cpu_fallback import kernels as cpu_kernels
from gpu_vgm import ScaleVGM, cuda_source

HOST_HEADER = Path(__file__).resolve().parent / "cuda_host" / "cuda_host.h"
ARCHES = ("sm_80", "sm_90", "sm_100")
HOST_FLAGS = ("-O2", "-std=c++17", "-ffp-contract=off", "-fno-fast-math", "-shared", "-fPIC")
MODES = ("argmax", "sample")
N_ROWS = 1_000_000
ROW_OFFSET = 3_000_000_019  # past 2**31: the kernels' 64-bit row arithmetic
SLICE = (123_457, 654_321)  # a second call on x[a:b], at ROW_OFFSET + a


# ---------------------------------------------------------------------- compilers
def _compiler(name):
    """The compiler's path (PATH, then $CUDA_HOME/bin); skip without it, or fail under CI=true
    (never skip there)."""
    cuda_bin = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin"
    path = shutil.which(name) or shutil.which(name, path=str(cuda_bin))
    if path is None:
        reason = f"no {name} on PATH or in {cuda_bin}: these tests compile the CUDA source"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (CI=true: these tests must run)")
        pytest.skip(reason)
    return path


def _run(cmd):
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{res.stderr[-4000:]}"


def test_defines_are_the_cpu_kernels_constants():
    """Each shared constant reaches the CUDA source as the same double (or int)."""
    defines = dict(re.findall(r"^#define VGM_(\w+) \((\S+)\)$", cuda_source.source(), re.M))
    shared = cpu_kernels.SHARED_CONSTANTS
    assert {n: float(defines[n]) for n in shared} == shared
    assert (shared["C12"], shared["LN2_HI"]) == (cpu_kernels._C12, cpu_kernels._LN2_HI)


@pytest.fixture(scope="session")
def source_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cuda_source") / "vgm.cu"
    path.write_text(cuda_source.source(), encoding="utf-8")
    return path


@pytest.fixture(scope="session", params=ARCHES)
def ptx(request, source_file):
    nvcc = _compiler("nvcc")
    out = source_file.with_name(f"vgm_{request.param}.ptx")
    opts = cuda_source.OPTIONS
    _run([nvcc, "--ptx", f"-arch={request.param}", *opts, "-x", "cu", source_file, "-o", out])
    return out.read_text(encoding="utf-8")


def test_ptx_has_every_kernel_and_no_fused_multiply_add(ptx):
    kernels = re.findall(r'extern "C" __global__ void (\w+)\s*\(', cuda_source.source())
    assert len(kernels) == 6
    assert set(re.findall(r"\.entry\s+(\w+)\s*\(", ptx)) == set(kernels)
    assert "fma.rn.f64" not in ptx
    # A double add/sub/mul without .rn leaves ptxas free to fuse it into an fma later.
    bare = re.findall(r"\b(?:add|sub|mul)\.f64\b.*", ptx)
    assert not bare, f"{len(bare)} double operations ptxas may fuse, e.g. {bare[:3]}"


# ---------------------------------------------------------------------- host build
F64 = np.ctypeslib.ndpointer(np.float64, flags="C_CONTIGUOUS")
F32 = np.ctypeslib.ndpointer(np.float32, flags="C_CONTIGUOUS")
I16 = np.ctypeslib.ndpointer(np.int16, flags="C_CONTIGUOUS")
U64 = np.ctypeslib.ndpointer(np.uint64, flags="C_CONTIGUOUS")
INT, LL, ULL, DBL = ctypes.c_int, ctypes.c_longlong, ctypes.c_ulonglong, ctypes.c_double
_ENCODE_HEAD = (F64, LL, F64, F64, F64, F64, F64, F64, I16, INT, F64, INT, LL)
_DECODE_TAIL = (I16, LL, F64, F64, F64, INT, LL, LL, DBL, F64, U64)
SIGNATURES = {
    "vgm_reciprocal": (F64, F64, INT),
    "vgm_exp_nonpositive_rows": (F64, F64, LL),
    "vgm_encode_argmax": (*_ENCODE_HEAD, F64, I16, U64),
    "vgm_encode_sample": (*_ENCODE_HEAD, ULL, ULL, F64, I16, U64),
    "vgm_decode_f64": (F64, *_DECODE_TAIL),
    "vgm_decode_f32": (F32, *_DECODE_TAIL),
}


@pytest.fixture(scope="session")
def host(source_file):
    gxx = _compiler("g++")
    lib = source_file.with_name("vgm_host.so")
    _run([gxx, *HOST_FLAGS, "-include", HOST_HEADER, "-x", "c++", source_file, "-o", lib])
    return HostKernels(ctypes.CDLL(str(lib)))


class HostKernels:
    """The kernels compiled for the host, called with gpu_vgm/kernels.py's arguments."""

    def __init__(self, lib):
        for name, argtypes in SIGNATURES.items():
            getattr(lib, name).argtypes = argtypes
            getattr(lib, name).restype = None
        self.lib = lib

    def encode(self, x, params, mode, key, row_offset):
        x = np.ascontiguousarray(x, dtype=np.float64)
        z, comp = np.empty(x.size), np.empty(x.size, dtype=np.int16)
        counts = np.zeros(2, dtype=np.uint64)
        inv_four_s = np.empty_like(params.four_s)
        self.lib.vgm_reciprocal(params.four_s, inv_four_s, params.four_s.size)
        common = (
            x, x.size, params.m, params.four_s, inv_four_s, params.half_p, params.c,
            params.radius, params.ids, params.m.size, params.special, params.special.size,
            params.special_base,
        )  # fmt: skip
        if mode == "argmax":
            self.lib.vgm_encode_argmax(*common, z, comp, counts)
        else:
            self.lib.vgm_encode_sample(*common, key, row_offset, z, comp, counts)
        return z, comp, int(counts[0]), int(counts[1])

    def decode(self, z, comp, params):
        out, counts = np.empty(z.size), np.zeros(2, dtype=np.uint64)
        kernel = self.lib.vgm_decode_f32 if z.dtype == np.float32 else self.lib.vgm_decode_f64
        kernel(
            z, comp, z.size, params.m_all, params.four_s_all, params.special,
            params.special.size, params.special_base, params.digits,
            cuda_source.decode_scale(params.digits), out, counts,
        )  # fmt: skip
        return out, int(counts[0])

    def exp_nonpositive(self, t):
        out = np.empty(t.size)
        self.lib.vgm_exp_nonpositive_rows(t, out, t.size)
        return out


# ---------------------------------------------------------------------- data and models
@pytest.fixture(scope="session")
def column(make_heavy_tailed):
    """(x, fit sample, value range): N_ROWS values; the range's ends are not in the sample."""
    rng = np.random.default_rng(20261201)
    x = make_heavy_tailed(N_ROWS, rng)
    lo, hi = float(x.min()), float(x.max())
    pool = np.flatnonzero((x != lo) & (x != hi))
    return x, x[rng.choice(pool, 20_000, replace=False)], (lo, hi)


MODELS = {  # name -> ScaleVGM arguments besides n_components=10
    "exact": {"special_values": [0.0]},
    "learn_rounding": {"special_values": [0.0], "learn_rounding": True},
    "several_specials": {"special_values": [0.0, 1.0, -2.5, 99.99, 7.7e7, -3e9]},
    "no_specials": {},
    "repeated_specials": {},  # KernelParams.special replaced by REPEATED_SPECIALS
}
REPEATED_SPECIALS = np.array([0.0, 7.7e7, 12.5, 0.0, 7.7e7, -3e9, 7.7e7])  # ScaleVGM dedups


@pytest.fixture(scope="session", params=list(MODELS))
def params(request, column):
    _, sample, value_range = column
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a ConvergenceWarning changes nothing tested here
        model = ScaleVGM(n_components=10, **MODELS[request.param])
        model.fit(sample, value_range=value_range)
    assert (model.rounding_digits_ == 2) == (request.param == "learn_rounding")
    if request.param == "repeated_specials":
        return model.kernel_params_._replace(special=REPEATED_SPECIALS)
    return model.kernel_params_


def edges(p):
    """Each active component's candidate boundary m +- radius and its neighbours."""
    ends = np.concatenate([p.m - p.radius, p.m + p.radius])
    return np.concatenate([ends, np.nextafter(ends, -np.inf), np.nextafter(ends, np.inf)])


@pytest.fixture(scope="session")
def x_rows(column, params):
    """The column with extremes, special values, signed zeros and component edges spread in."""
    x, _, (lo, hi) = column
    x = x.copy()
    extremes = np.array(
        [hi, lo, np.nextafter(hi, np.inf), np.nextafter(lo, -np.inf), hi * 10.0, lo * 1e3,
         1e12, -1e12, 1e300, -1e300, np.inf, -np.inf, np.nan, 0.0, -0.0, 5e-324, -5e-324,
         0.01, -0.01, 123456789.01, *params.special],
    )  # fmt: skip
    extra = np.concatenate([extremes, edges(params)])
    rng = np.random.default_rng(7)
    x[rng.choice(x.size, 50 * extra.size, replace=False)] = np.tile(extra, 50)
    x[rng.choice(x.size, x.size // 50, replace=False)] = np.nan
    return x


# ---------------------------------------------------------------------- comparisons
def assert_same_bits(actual, expected, what):
    bad = np.flatnonzero(np.asarray(actual).view(np.int64) != np.asarray(expected).view(np.int64))
    assert bad.size == 0, (
        f"{what}: {bad.size} rows differ in their bits, e.g. rows {bad[:5].tolist()}: "
        f"{actual[bad[:5]].tolist()} != {expected[bad[:5]].tolist()}"
    )


def assert_same_encoding(host_result, cpu_result, what):
    z, comp, n_ooc, n_inf = host_result
    z_cpu, comp_cpu, n_ooc_cpu, n_inf_cpu = cpu_result
    bad = np.flatnonzero(comp != comp_cpu)
    assert bad.size == 0, (
        f"{what}: {bad.size} components differ, e.g. rows {bad[:5].tolist()}: "
        f"{comp[bad[:5]].tolist()} != {comp_cpu[bad[:5]].tolist()}"
    )
    assert_same_bits(z, z_cpu, f"{what} z")
    assert (n_ooc, n_inf) == (n_ooc_cpu, n_inf_cpu), f"{what}: (out of coverage, infinite)"


@pytest.mark.parametrize("mode", MODES)
def test_encode_matches_cpu(host, params, x_rows, mode):
    key = 0x5EED_0F_C0FFEE
    cpu = cpu_kernels.encode(x_rows, params, mode, key, ROW_OFFSET)
    assert_same_encoding(host.encode(x_rows, params, mode, key, ROW_OFFSET), cpu, mode)
    assert cpu[2] > 0 and cpu[3] > 0  # out of coverage and infinite rows are there
    a, b = SLICE
    piece = x_rows[a:b]
    cpu = cpu_kernels.encode(piece, params, mode, key, ROW_OFFSET + a)
    host_piece = host.encode(piece, params, mode, key, ROW_OFFSET + a)
    assert_same_encoding(host_piece, cpu, f"{mode} on rows {a}:{b}")


@pytest.mark.parametrize("z_dtype", [np.float64, np.float32])
def test_decode_matches_cpu(host, params, x_rows, z_dtype):
    z, comp, _, _ = cpu_kernels.encode(x_rows, params, "argmax", 0, 0)
    rng = np.random.default_rng(11)
    n_ids = params.n_ids
    odd_ids = np.array([-1, -2, -3, -4, n_ids, n_ids + 5, 32767, -32768], dtype=np.int16)
    comp = np.concatenate([comp, odd_ids, rng.integers(-4, n_ids + 2, 100_000).astype(np.int16)])
    random_z = np.concatenate([[0.0, -0.0, np.inf, -np.inf, np.nan], rng.normal(0, 0.5, 99_995)])
    with np.errstate(over="ignore"):  # z of 1e300 is inf in float32
        z = np.concatenate([z, np.zeros(odd_ids.size), random_z]).astype(z_dtype)
    assert z.size == comp.size
    expected, n_invalid = cpu_kernels.decode(z, comp, params)
    actual, host_invalid = host.decode(z, comp, params)
    assert host_invalid == n_invalid > 0
    assert_same_bits(actual, expected, f"decode of {np.dtype(z_dtype).name} z")


def test_exp_matches_cpu(host):
    rng = np.random.default_rng(3)
    t = np.concatenate(
        [
            -rng.random(100_000) * 40.0,
            -rng.random(30_000) * 800.0,
            -np.abs(rng.standard_normal(30_000)) * 1e-3,
            [0.0, -0.0, -708.0, -709.0, -1e300, -np.inf, -5e-324, -np.log(2.0) / 2],
        ]
    )
    expected = np.array([cpu_kernels.exp_nonpositive(v) for v in t])
    assert_same_bits(host.exp_nonpositive(t), expected, "exp_nonpositive")
