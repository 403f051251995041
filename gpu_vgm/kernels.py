"""CuPy encode/decode kernels: a line-by-line mirror of ``cpu_fallback.kernels`` on the GPU.

Same signatures, same rules, same bits (DESIGN.md "Kernel interface"):

    encode(x, params, mode, key, row_offset, out_dtype=np.float64)
        -> (z, component, n_out_of_coverage, n_infinite)
    decode(z, component, params) -> (x, n_invalid)

with ``x``/``z``/``component`` CuPy arrays (NumPy arrays are copied to the device).

Why intrinsics: nvcc/NVRTC contract ``a - b * c`` into one fused multiply-add by default,
which rounds once instead of twice and so gives logits (and decoded values) that differ in
the last bit from numba's, which never contracts. Every multiply/add/subtract/divide that
feeds a comparison or an output is therefore written as ``__dmul_rn``/``__dadd_rn``/
``__dsub_rn``/``__ddiv_rn`` (IEEE, round to nearest, never fused), and the module is also
compiled with ``--fmad=false``. Sample mode's softmax weights use no libm either: the CPU's
``_exp_parts`` (Cody-Waite reduction and a degree-12 Taylor polynomial, from + and * alone)
is repeated operation by operation with the CPU's constants, so a sampled component, like
everything else, is bit-identical to ``cpu_fallback``'s.

This module imports cupy at the top: import it only on the GPU path
(``gpu_vgm.backends.kernels_for``).
"""

import math
import threading
from collections import OrderedDict

import cupy
import numpy as np

__all__ = ["decode", "encode"]

BLOCK = 256  # threads per block
_BLOCKS_PER_SM = 32  # grid-stride loops: at most this many blocks per multiprocessor
_MODES = ("argmax", "sample")

# cpu_fallback.kernels' exp constants, the same doubles (written into the source with repr,
# which round-trips exactly); C_j = 1 / j! for the Taylor polynomial.
_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01  # 32 significant bits: n * _LN2_HI is exact
_LN2_LO = 1.90821492927058770002e-10
_TAYLOR = {j: 1.0 / math.factorial(j) for j in range(2, 13)}
_EXP_CONSTANTS = {"VGM_LOG2E": _LOG2E, "VGM_LN2_HI": _LN2_HI, "VGM_LN2_LO": _LN2_LO}
_EXP_CONSTANTS.update({f"VGM_C{j}": v for j, v in _TAYLOR.items()})

_BODY = r"""
// Mirrors cpu_fallback/kernels.py; see gpu_vgm/kernels.py for why intrinsics are used.
#define VGM_INF __longlong_as_double(0x7ff0000000000000LL)
#define VGM_NAN __longlong_as_double(0x7ff8000000000000LL)
#define VGM_INV_2_53 1.1102230246251565e-16  /* 2**-53 exactly */

__device__ __forceinline__ unsigned long long vgm_splitmix64(unsigned long long x)
{
    unsigned long long z = x + 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

// Sum two per-thread counters over the warp, one atomic per warp. Every thread of the
// block calls this (no early return anywhere) and blocks are whole warps.
__device__ __forceinline__ void vgm_add_counts(
    unsigned long long* counts, unsigned long long a, unsigned long long b)
{
    for (int off = 16; off > 0; off >>= 1) {
        a += __shfl_down_sync(0xffffffffu, a, off);
        b += __shfl_down_sync(0xffffffffu, b, off);
    }
    if ((threadIdx.x & 31u) == 0u) {
        if (a != 0ULL) atomicAdd(counts, a);
        if (b != 0ULL) atomicAdd(counts + 1, b);
    }
}

// cpu exp_nonpositive / _exp_parts: exp(t) for t <= 0 as p * 2**n, op for op.
__device__ __forceinline__ double vgm_exp_nonpositive(double t)
{
    t = (-708.0 > t) ? -708.0 : t;  // numba max(t, -708.0) (NaN stays NaN)
    const double n = floor(__dadd_rn(__dmul_rn(t, VGM_LOG2E), 0.5));
    const double r = __dsub_rn(__dsub_rn(t, __dmul_rn(n, VGM_LN2_HI)), __dmul_rn(n, VGM_LN2_LO));
    double p = VGM_C12;
    p = __dadd_rn(__dmul_rn(p, r), VGM_C11);
    p = __dadd_rn(__dmul_rn(p, r), VGM_C10);
    p = __dadd_rn(__dmul_rn(p, r), VGM_C9);
    p = __dadd_rn(__dmul_rn(p, r), VGM_C8);
    p = __dadd_rn(__dmul_rn(p, r), VGM_C7);
    p = __dadd_rn(__dmul_rn(p, r), VGM_C6);
    p = __dadd_rn(__dmul_rn(p, r), VGM_C5);
    p = __dadd_rn(__dmul_rn(p, r), VGM_C4);
    p = __dadd_rn(__dmul_rn(p, r), VGM_C3);
    p = __dadd_rn(__dmul_rn(p, r), VGM_C2);
    p = __dadd_rn(__dmul_rn(p, r), 1.0);
    p = __dadd_rn(__dmul_rn(p, r), 1.0);
    return __dmul_rn(p, __longlong_as_double(((long long)n + 1023LL) << 52));  // p * 2.0**n
}

// cpu _candidate_logits_block for one row: the largest candidate logit (``best``), its index
// (``sel``, -1 without a candidate), the number of candidates, and the nearest component
// (cpu _nearest, used when there is no candidate).
__device__ __forceinline__ void vgm_scan(
    double xi, const double* __restrict__ m, const double* __restrict__ inv_four_s,
    const double* __restrict__ half_p, const double* __restrict__ c,
    const double* __restrict__ radius, const int n_active,
    double& best, int& sel, int& n_cand, int& nearest)
{
    best = -VGM_INF;
    sel = -1;
    n_cand = 0;
    nearest = 0;
    double near = VGM_INF;
    for (int k = 0; k < n_active; ++k) {
        const double d = __dsub_rn(xi, m[k]);
        const double ad = fabs(d);
        const bool cand = ad <= radius[k];
        const double logit =
            cand ? __dsub_rn(c[k], __dmul_rn(half_p[k], __dmul_rn(d, d))) : -VGM_INF;
        if (logit > best) sel = k;  // strictly greater: the lowest id wins ties
        best = (best > logit) ? best : logit;  // numba max(logit, best), NaN included
        n_cand += cand ? 1 : 0;
        const double dist = __dmul_rn(ad, inv_four_s[k]);
        if (dist < near) {
            near = dist;
            nearest = k;
        }
    }
}

// NaN -> (-1, 0); a finite special value j -> (special_base + j, 0). The CPU also resolves
// these rows, but its result is overwritten and a finite special value adds to no count, so
// they skip the loops. (An infinite special value, which the model never makes, goes the
// whole way: the CPU counts it as infinite.)
__device__ __forceinline__ bool vgm_missing_or_special(
    double xi, const double* __restrict__ special, int n_special, long long special_base,
    double* __restrict__ z_out, short* __restrict__ comp_out, long long i)
{
    if (xi != xi) {
        z_out[i] = 0.0;
        comp_out[i] = (short)-1;
        return true;
    }
    if (fabs(xi) == VGM_INF) return false;
    int hit = -1;
    for (int j = 0; j < n_special; ++j) {
        if (xi == special[j]) hit = j;  // the last match, as the CPU's overwriting loop
    }
    if (hit < 0) return false;
    z_out[i] = 0.0;
    comp_out[i] = (short)(special_base + hit);
    return true;
}

// cpu _finish_block for one row that is not NaN: z and id of component ``sel``, or of the
// nearest component (out of coverage unless a special value) when there is no candidate;
// then a special value's own id and z = 0.
__device__ __forceinline__ void vgm_finish(
    double xi, int sel, int nearest, const double* __restrict__ m,
    const double* __restrict__ four_s, const short* __restrict__ ids,
    const double* __restrict__ special, const int n_special, const long long special_base,
    double* __restrict__ z_out, short* __restrict__ comp_out, long long i,
    unsigned long long& n_ooc, unsigned long long& n_inf)
{
    int hit = -1;
    for (int j = 0; j < n_special; ++j) {
        if (xi == special[j]) hit = j;
    }
    if (sel < 0) {
        sel = nearest;
        if (hit < 0) n_ooc += 1ULL;
        if (fabs(xi) == VGM_INF) n_inf += 1ULL;
    }
    if (hit >= 0) {
        z_out[i] = 0.0;
        comp_out[i] = (short)(special_base + hit);
    } else {
        z_out[i] = __ddiv_rn(__dsub_rn(xi, m[sel]), four_s[sel]);
        comp_out[i] = ids[sel];
    }
}

extern "C" __global__ void vgm_reciprocal(
    const double* __restrict__ a, double* __restrict__ out, const int n)
{
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        out[i] = __ddiv_rn(1.0, a[i]);  // numba: 1.0 / four_s[k]
    }
}

// exp_nonpositive elementwise: lets the GPU tests compare the exp with the CPU's directly.
extern "C" __global__ void vgm_exp_nonpositive_rows(
    const double* __restrict__ t, double* __restrict__ out, const long long n)
{
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        out[i] = vgm_exp_nonpositive(t[i]);
    }
}

extern "C" __global__ void vgm_encode_argmax(
    const double* __restrict__ x, const long long n,
    const double* __restrict__ m, const double* __restrict__ four_s,
    const double* __restrict__ inv_four_s, const double* __restrict__ half_p,
    const double* __restrict__ c, const double* __restrict__ radius,
    const short* __restrict__ ids, const int n_active,
    const double* __restrict__ special, const int n_special, const long long special_base,
    double* __restrict__ z_out, short* __restrict__ comp_out,
    unsigned long long* __restrict__ counts)
{
    unsigned long long n_ooc = 0ULL;
    unsigned long long n_inf = 0ULL;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const double xi = x[i];
        if (vgm_missing_or_special(xi, special, n_special, special_base, z_out, comp_out, i)) {
            continue;
        }
        double best;
        int sel, n_cand, nearest;
        vgm_scan(xi, m, inv_four_s, half_p, c, radius, n_active, best, sel, n_cand, nearest);
        vgm_finish(xi, sel, nearest, m, four_s, ids, special, n_special, special_base, z_out,
                   comp_out, i, n_ooc, n_inf);
    }
    vgm_add_counts(counts, n_ooc, n_inf);
}

extern "C" __global__ void vgm_encode_sample(
    const double* __restrict__ x, const long long n,
    const double* __restrict__ m, const double* __restrict__ four_s,
    const double* __restrict__ inv_four_s, const double* __restrict__ half_p,
    const double* __restrict__ c, const double* __restrict__ radius,
    const short* __restrict__ ids, const int n_active,
    const double* __restrict__ special, const int n_special, const long long special_base,
    const unsigned long long key, const unsigned long long row_offset,
    double* __restrict__ z_out, short* __restrict__ comp_out,
    unsigned long long* __restrict__ counts)
{
    unsigned long long n_ooc = 0ULL;
    unsigned long long n_inf = 0ULL;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const double xi = x[i];
        if (vgm_missing_or_special(xi, special, n_special, special_base, z_out, comp_out, i)) {
            continue;
        }
        double best;
        int sel, n_cand, nearest;
        vgm_scan(xi, m, inv_four_s, half_p, c, radius, n_active, best, sel, n_cand, nearest);
        if (n_cand > 1) {
            // cpu _draw_block: weights w_k = exp(logit_k - best) of the candidates (0 for a
            // logit of -inf), summed in id order; recomputing a logit gives the same bits.
            double total = 0.0;
            for (int k = 0; k < n_active; ++k) {
                const double d = __dsub_rn(xi, m[k]);
                if (fabs(d) <= radius[k]) {
                    const double logit = __dsub_rn(c[k], __dmul_rn(half_p[k], __dmul_rn(d, d)));
                    if (logit != -VGM_INF) {
                        total = __dadd_rn(total, vgm_exp_nonpositive(__dsub_rn(logit, best)));
                    }
                }
            }
            const unsigned long long h = vgm_splitmix64(key ^ (row_offset + (unsigned long long)i));
            const double threshold =
                __dmul_rn(__dmul_rn(__ull2double_rn(h >> 11), VGM_INV_2_53), total);
            // The first candidate (w > 0) whose running sum passes the threshold; the last
            // one with w > 0 if rounding leaves the sum short of it.
            double running = 0.0;
            for (int k = 0; k < n_active; ++k) {
                const double d = __dsub_rn(xi, m[k]);
                if (fabs(d) <= radius[k]) {
                    const double logit = __dsub_rn(c[k], __dmul_rn(half_p[k], __dmul_rn(d, d)));
                    if (logit != -VGM_INF) {
                        const double w = vgm_exp_nonpositive(__dsub_rn(logit, best));
                        running = __dadd_rn(running, w);
                        if (w > 0.0) {
                            sel = k;
                            if (running > threshold) break;
                        }
                    }
                }
            }
        }
        vgm_finish(xi, sel, nearest, m, four_s, ids, special, n_special, special_base, z_out,
                   comp_out, i, n_ooc, n_inf);
    }
    vgm_add_counts(counts, n_ooc, n_inf);
}

template <typename TZ>
__device__ __forceinline__ void vgm_decode_rows(
    const TZ* __restrict__ z, const short* __restrict__ comp, const long long n,
    const double* __restrict__ m_all, const double* __restrict__ four_s_all,
    const double* __restrict__ special, const int n_special, const long long special_base,
    const long long digits, const double scale, double* __restrict__ out,
    unsigned long long* __restrict__ counts)
{
    const long long n_mix = special_base;
    const long long n_ids = special_base + n_special;
    unsigned long long n_invalid = 0ULL;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const long long k = (long long)comp[i];
        double v;
        if (0 <= k && k < n_mix) {
            v = __dadd_rn(__dmul_rn((double)z[i], four_s_all[k]), m_all[k]);
            if (digits >= 0) v = __ddiv_rn(rint(__dmul_rn(v, scale)), scale);
        } else if (n_mix <= k && k < n_ids) {
            v = special[k - n_mix];
        } else {
            v = VGM_NAN;
            if (k != -1) n_invalid += 1ULL;
        }
        out[i] = v;
    }
    vgm_add_counts(counts, n_invalid, 0ULL);
}

extern "C" __global__ void vgm_decode_f64(
    const double* __restrict__ z, const short* __restrict__ comp, const long long n,
    const double* __restrict__ m_all, const double* __restrict__ four_s_all,
    const double* __restrict__ special, const int n_special, const long long special_base,
    const long long digits, const double scale, double* __restrict__ out,
    unsigned long long* __restrict__ counts)
{
    vgm_decode_rows<double>(z, comp, n, m_all, four_s_all, special, n_special, special_base,
                            digits, scale, out, counts);
}

extern "C" __global__ void vgm_decode_f32(
    const float* __restrict__ z, const short* __restrict__ comp, const long long n,
    const double* __restrict__ m_all, const double* __restrict__ four_s_all,
    const double* __restrict__ special, const int n_special, const long long special_base,
    const long long digits, const double scale, double* __restrict__ out,
    unsigned long long* __restrict__ counts)
{
    vgm_decode_rows<float>(z, comp, n, m_all, four_s_all, special, n_special, special_base,
                           digits, scale, out, counts);
}
"""


def _source():
    """The CUDA source: the exp constants as ``#define`` lines (repr round-trips each double
    exactly), then the kernels."""
    defines = "".join(f"#define {name} {value!r}\n" for name, value in _EXP_CONSTANTS.items())
    return defines + _BODY


_SOURCE = _source()

_OPTIONS = ("--fmad=false",)
_lock = threading.Lock()
_kernels = {}  # kernel name -> cupy.RawKernel (compiled on first call, cached per device)
_grid_limit = {}  # device id -> most blocks per launch
_PARAMS_CACHE_SIZE = 64
_params_cache = OrderedDict()  # (id(params), device id) -> (params, _DeviceParams)


def _kernel(name):
    kern = _kernels.get(name)
    if kern is None:
        with _lock:
            kern = _kernels.get(name)
            if kern is None:
                kern = cupy.RawKernel(_SOURCE, name, options=_OPTIONS)
                _kernels[name] = kern
    return kern


def _grid(n):
    device = cupy.cuda.runtime.getDevice()
    limit = _grid_limit.get(device)
    if limit is None:
        sms = cupy.cuda.runtime.getDeviceProperties(device)["multiProcessorCount"]
        limit = _grid_limit[device] = max(1, int(sms) * _BLOCKS_PER_SM)
    return (max(1, min((n + BLOCK - 1) // BLOCK, limit)),)


class _DeviceParams:
    """A KernelParams' arrays on one device, plus the host scalars the kernels take."""

    def __init__(self, params):
        def f64(a):
            return cupy.asarray(np.ascontiguousarray(a, dtype=np.float64))

        self.m = f64(params.m)
        self.four_s = f64(params.four_s)
        self.half_p = f64(params.half_p)
        self.c = f64(params.c)
        self.radius = f64(params.radius)
        self.ids = cupy.asarray(np.ascontiguousarray(params.ids, dtype=np.int16))
        self.m_all = f64(params.m_all)
        self.four_s_all = f64(params.four_s_all)
        self.special = f64(params.special)
        self.n_active = np.int32(self.m.size)
        self.n_special = np.int32(self.special.size)
        self.special_base = np.int64(params.special_base)
        digits = int(params.digits)
        self.digits = np.int64(digits)
        self.scale = np.float64(_pow10_like_numba(digits) if digits >= 0 else 1.0)
        lengths = {a.size for a in (self.m, self.four_s, self.half_p, self.c, self.radius)}
        if lengths != {self.ids.size}:
            raise ValueError("KernelParams: m, four_s, half_p, c, radius and ids differ in length")
        self.inv_four_s = cupy.empty_like(self.four_s)
        if self.four_s.size:
            n = np.int32(self.four_s.size)
            _kernel("vgm_reciprocal")(_grid(int(n)), (BLOCK,), (self.four_s, self.inv_four_s, n))


def _pow10_like_numba(digits):
    """``10.0**digits`` as numba computes it (float ** int: exponentiation by squaring), so the
    decode scale is the CPU's double for every ``digits`` (C pow differs from 23 on)."""
    result, base = 1.0, 10.0
    while digits:
        if digits & 1:
            result *= base
        base *= base
        digits >>= 1
    return result


def _device_params(params):
    """Device copies of ``params``, made once per params object and device (small LRU).

    The cache holds a reference to ``params`` so that its id cannot be reused while cached;
    the arrays are treated as immutable (the model builds a new KernelParams when it changes).
    """
    key = (id(params), cupy.cuda.runtime.getDevice())
    with _lock:
        hit = _params_cache.get(key)
        if hit is not None and hit[0] is params:
            _params_cache.move_to_end(key)
            return hit[1]
    dev = _DeviceParams(params)
    with _lock:
        _params_cache[key] = (params, dev)
        _params_cache.move_to_end(key)
        while len(_params_cache) > _PARAMS_CACHE_SIZE:
            _params_cache.popitem(last=False)
    return dev


def _as_1d(array, name):
    array = cupy.asarray(array)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    return array


def encode(x, params, mode, key, row_offset, out_dtype=np.float64):
    """Encode a 1-D array on the GPU; the same contract as ``cpu_fallback.kernels.encode``.

    Parameters
    ----------
    x : cupy array of shape (n,), float or int; converted to float64 on the device.
    params : gpu_vgm.params.KernelParams
    mode : {"argmax", "sample"}
    key : int, ``gpu_vgm.rng.column_key(seed, column)``; used by "sample" mode only.
    row_offset : int, global index of ``x[0]`` in the input (so pieces encode like the whole).
    out_dtype : float64 or float32, dtype of the returned z.

    Returns
    -------
    z : (n,) out_dtype;  component : (n,) int16;  n_out_of_coverage : int;  n_infinite : int
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be 'argmax' or 'sample', got {mode!r}")
    x = cupy.ascontiguousarray(_as_1d(x, "x"), dtype=cupy.float64)
    n = int(x.shape[0])
    z = cupy.empty(n, dtype=cupy.float64)
    comp = cupy.empty(n, dtype=cupy.int16)
    n_ooc = n_inf = 0
    if n:
        p = _device_params(params)
        if p.n_active == 0:
            raise ValueError("KernelParams has no active components: nothing to encode with")
        counts = cupy.zeros(2, dtype=cupy.uint64)
        common = (
            x, np.int64(n), p.m, p.four_s, p.inv_four_s, p.half_p, p.c, p.radius, p.ids,
            p.n_active, p.special, p.n_special, p.special_base,
        )  # fmt: skip
        if mode == "argmax":
            _kernel("vgm_encode_argmax")(_grid(n), (BLOCK,), (*common, z, comp, counts))
        else:
            rng_args = (np.uint64(key), np.uint64(row_offset))
            _kernel("vgm_encode_sample")(_grid(n), (BLOCK,), (*common, *rng_args, z, comp, counts))
        n_ooc, n_inf = (int(v) for v in counts.get())
    if np.dtype(out_dtype) != np.float64:
        z = z.astype(out_dtype)
    return z, comp, n_ooc, n_inf


def decode(z, component, params):
    """Decode z and component ids to float64 values on the GPU; returns (x, n_invalid_ids).

    The same contract as ``cpu_fallback.kernels.decode``: component -1 and ids out of range
    decode to NaN; the latter are counted.
    """
    z = _as_1d(z, "z")
    if z.dtype == cupy.float32:
        z, name = cupy.ascontiguousarray(z), "vgm_decode_f32"
    else:
        z, name = cupy.ascontiguousarray(z, dtype=cupy.float64), "vgm_decode_f64"
    component = cupy.ascontiguousarray(_as_1d(component, "component"), dtype=cupy.int16)
    n = int(z.shape[0])
    if component.shape[0] != n:
        raise ValueError(f"z has {n} rows but component has {component.shape[0]}")
    out = cupy.empty(n, dtype=cupy.float64)
    if n == 0:
        return out, 0
    p = _device_params(params)
    counts = cupy.zeros(2, dtype=cupy.uint64)
    args = (
        z, component, np.int64(n), p.m_all, p.four_s_all, p.special, p.n_special,
        p.special_base, p.digits, p.scale, out, counts,
    )  # fmt: skip
    _kernel(name)(_grid(n), (BLOCK,), args)
    return out, int(counts.get()[0])


def exp_nonpositive(t):
    """The sample kernel's exp, elementwise on the device (``cpu_fallback.kernels.
    exp_nonpositive`` per element, bit for bit): for tests."""
    t = cupy.ascontiguousarray(_as_1d(t, "t"), dtype=cupy.float64)
    out = cupy.empty(t.shape[0], dtype=cupy.float64)
    n = int(t.shape[0])
    if n:
        _kernel("vgm_exp_nonpositive_rows")(_grid(n), (BLOCK,), (t, out, np.int64(n)))
    return out
