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

The CUDA source is gpu_vgm/kernels.cu, preceded by the constants it shares with the CPU:
``gpu_vgm.cuda_source`` puts the two together (and tests/test_cuda_source.py checks them).

This module imports cupy at the top: import it only on the GPU path
(``gpu_vgm.backends.kernels_for``).
"""

import threading
from collections import OrderedDict

import cupy
import numpy as np

from gpu_vgm import cuda_source

__all__ = ["decode", "encode"]

BLOCK = 256  # threads per block
_BLOCKS_PER_SM = 32  # grid-stride loops: at most this many blocks per multiprocessor
_MODES = ("argmax", "sample")

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
                kern = cupy.RawKernel(cuda_source.source(), name, options=cuda_source.OPTIONS)
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
        self.scale = np.float64(cuda_source.decode_scale(digits))
        lengths = {a.size for a in (self.m, self.four_s, self.half_p, self.c, self.radius)}
        if lengths != {self.ids.size}:
            raise ValueError("KernelParams: m, four_s, half_p, c, radius and ids differ in length")
        self.inv_four_s = cupy.empty_like(self.four_s)
        if self.four_s.size:
            n = np.int32(self.four_s.size)
            _kernel("vgm_reciprocal")(_grid(int(n)), (BLOCK,), (self.four_s, self.inv_four_s, n))


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
    decode to NaN; the latter are counted. NEG_ZERO_COMPONENT decodes to -0.0.
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
