"""The kernel parameter struct: the only thing both backends' kernels read from a model."""

from typing import NamedTuple

import numpy as np

# Candidates are components with |z| <= 0.99. Kernels test |x - m| <= RADIUS_FACTOR * 4s, a
# hair inside 0.99 * 4s, so the z they then compute by division is never above 0.99.
Z_LIMIT = 0.99
RADIUS_FACTOR = Z_LIMIT * (1.0 - 2.0**-40)

# Component ids below 0: -1 is NaN (kernels), -2 null (pipeline), -3 negative zero (kernels:
# a -0.0 where no special value is 0, so that it decodes with its sign).
NEG_ZERO_COMPONENT = -3

# Limits shared by the command line, ScaleVGM and model-file validation.
MAX_COMPONENTS = 1000
MAX_SEED = 2**32 - 1  # scikit-learn's random_state limit
# The mixture's variances and the kernels' (x - m)^2 must stay finite: |x| <= 1e150 does
# (1e300 < float64's 1.8e308); beyond it scikit-learn's fit overflows to inf.
MAX_ABS_VALUE = 1e150


def check_magnitude(lo, hi, column, source=None):
    """InputError where a column's values reach beyond MAX_ABS_VALUE in magnitude."""
    from gpu_vgm.errors import InputError

    top = max(abs(lo), abs(hi))
    if top > MAX_ABS_VALUE:
        where = f"{source}: " if source else ""
        raise InputError(
            f"{where}column {column!r} holds values up to {top:.3g} in magnitude; gpu_vgm "
            f"encodes |x| <= {MAX_ABS_VALUE:g} (the mixture's variances overflow beyond that)"
        )


class KernelParams(NamedTuple):
    """Arrays for one column (float64 unless noted); identical for the CPU and GPU kernels.

    ``m, four_s, half_p, c, radius, ids`` describe the active components in id order;
    ``m_all, four_s_all`` are indexed by component id for decoding; special value ``j`` has
    id ``special_base + j``; ``digits`` is the learned rounding (-1: none).
    """

    m: np.ndarray
    four_s: np.ndarray
    half_p: np.ndarray
    c: np.ndarray
    radius: np.ndarray
    ids: np.ndarray  # int16
    m_all: np.ndarray
    four_s_all: np.ndarray
    special: np.ndarray
    special_base: int
    digits: int

    @property
    def n_ids(self) -> int:
        """Number of valid component ids (mixture, synthetic and special)."""
        return self.special_base + len(self.special)


def round_to(values, digits: int):
    """Round to ``digits`` decimals exactly as the kernels do: rint(v * 10**d) / 10**d."""
    scale = 10.0**digits
    return np.rint(values * scale) / scale
