"""The CUDA source that gpu_vgm/kernels.py compiles, and how: importable without CuPy.

``source()`` is the exact text handed to ``cupy.RawKernel``: ``#define`` lines for the
constants the kernels share with cpu_fallback (taken from ``cpu_fallback.kernels.
SHARED_CONSTANTS``, so the two cannot drift), then gpu_vgm/kernels.cu. ``OPTIONS`` are the
compile options. tests/test_cuda_source.py compiles both with nvcc and, through a stand-in
header, with g++ on the host, and checks the kernels against cpu_fallback without a GPU.
"""

import functools
from importlib import resources

from cpu_fallback.kernels import SHARED_CONSTANTS

__all__ = ["OPTIONS", "decode_scale", "source"]

# No fused multiply-add anywhere: numba never contracts, and an fma rounds once, not twice.
OPTIONS = ("--fmad=false",)


@functools.cache
def source():
    """The CUDA source: the shared constants as ``#define VGM_<name> (value)`` lines (repr
    round-trips each double exactly), then the text of kernels.cu."""
    defines = "".join(f"#define VGM_{n} ({v!r})\n" for n, v in SHARED_CONSTANTS.items())
    body = resources.files("gpu_vgm").joinpath("kernels.cu").read_text(encoding="utf-8")
    return defines + body


def decode_scale(digits):
    """The decode kernels' ``scale`` argument: ``10.0**digits`` as numba computes it (float **
    int: exponentiation by squaring), so it is the CPU's double for every ``digits`` (C pow
    differs from 23 on); 1.0 without learned rounding (``digits`` < 0)."""
    if digits < 0:
        return 1.0
    result, base = 1.0, 10.0
    while digits:
        if digits & 1:
            result *= base
        base *= base
        digits >>= 1
    return result
