"""Counter-based randomness shared by every backend: u is a pure function of (seed, column, row).

splitmix64 uses integer operations only, so CPU (numba) and GPU (CUDA) kernels produce the same
bits. The host computes the per-column key once; kernels compute ``splitmix64(key ^ row)``.
"""

import hashlib

import numpy as np

MASK64 = (1 << 64) - 1
GOLDEN_GAMMA = 0x9E3779B97F4A7C15


def splitmix64(x):
    """The finalizer of Steele et al.'s SplitMix64 (mod 2**64), on a Python int or elementwise
    on a uint64 array."""
    z = (x + GOLDEN_GAMMA) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def column_hash(name: str) -> int:
    """A stable 64-bit hash of a column name (not its position: selection order changes nothing)."""
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest(), "little")


def column_key(seed: int, name: str) -> int:
    """``splitmix64(seed * golden + hash(name))``: the kernels' per-column key."""
    return splitmix64((seed * GOLDEN_GAMMA + column_hash(name)) & MASK64)


def uniform(key: int, row: int) -> float:
    """The uniform in [0, 1) for one global row (reference implementation for tests)."""
    return (splitmix64(key ^ row) >> 11) * 2.0**-53


def sample_key(seed: int) -> int:
    """The key of ``VGMEncoder``'s fit sample (no column's: every column shares the rows)."""
    return splitmix64((seed * GOLDEN_GAMMA + column_hash("\0fit sample")) & MASK64)


def row_keys(key: int, start: int, count: int):
    """``splitmix64(key ^ row)`` for the global rows ``start .. start + count - 1``, as uint64.

    A bijection of the row for a given key, so distinct rows never tie: the rows with the
    smallest keys are a uniform sample that depends on the seed and the rows' positions, not on
    how the rows are split into partitions."""
    return splitmix64(np.arange(start, start + count, dtype=np.uint64) ^ np.uint64(key))
