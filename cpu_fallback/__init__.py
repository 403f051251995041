"""CPU kernels of gpu_vgm (numba), with exactly the GPU kernels' signature; no GPU imports."""

from cpu_fallback.kernels import decode, encode

__all__ = ["decode", "encode"]
