"""numba encode/decode kernels: the reference semantics that gpu_vgm/kernels.py mirrors on GPU.

Per row x (DESIGN.md "Lossless by construction"):
  candidates  active components k with |x - m_k| <= radius_k   (radius_k = RADIUS_FACTOR * 4 s_k)
  logit_k     c_k - half_p_k * (x - m_k)**2                      (equals sklearn's, see model.py)
  argmax      the candidate with the largest logit (lowest id on ties, as numpy.argmax)
  sample      the candidate drawn from the candidates' softmax with u = splitmix64(key ^ row)
  no candidate  the active component with the smallest |x - m_k| / 4 s_k, counted out-of-coverage
  NaN         component -1, z = 0;   special value j: component special_base + j, z = 0
  -0.0        a special value 0's component with z = -0.0 (the sign rides on z); with no
              special value 0, component NEG_ZERO_COMPONENT (-3), z = +0, never out of coverage
  z           (x - m_k) / (4 s_k), never clipped

The argmax kernel walks fixed-size blocks of rows with the component loop outside and a
branch-free row loop inside, so LLVM vectorizes across rows.
"""

import math

import numba as nb
import numpy as np
from numba import types
from numba.extending import intrinsic

from gpu_vgm.params import NEG_ZERO_COMPONENT

BLOCK = 512
SAMPLE_BLOCK = 1024  # keeps the (components x rows) weights in L1
_INV_2_53 = 1.0 / 9007199254740992.0
_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01  # 32 significant bits: n * _LN2_HI is exact
_LN2_LO = 1.90821492927058770002e-10
_NEG_ZERO_BITS = -(2**63)  # -0.0 as int64 bits: the sign bit alone
_C2, _C3, _C4, _C5, _C6, _C7, _C8, _C9, _C10, _C11, _C12 = (
    1.0 / math.factorial(j) for j in range(2, 13)
)
# Written into the CUDA source as VGM_<name> (gpu_vgm/cuda_source.py): the very values the
# numba kernels read, so the two backends cannot drift apart.
SHARED_CONSTANTS = {
    "INV_2_53": _INV_2_53,
    "LOG2E": _LOG2E,
    "LN2_HI": _LN2_HI,
    "LN2_LO": _LN2_LO,
    "C2": _C2,
    "C3": _C3,
    "C4": _C4,
    "C5": _C5,
    "C6": _C6,
    "C7": _C7,
    "C8": _C8,
    "C9": _C9,
    "C10": _C10,
    "C11": _C11,
    "C12": _C12,
    "NEG_ZERO_COMPONENT": NEG_ZERO_COMPONENT,
}


@nb.njit(inline="always")
def _splitmix64(x):
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@nb.njit(inline="always")
def _has_zero(special):
    found = False
    for j in range(special.shape[0]):
        found |= special[j] == 0.0
    return found


@nb.njit(inline="always")
def _nearest(xi, m, four_s):
    """Out of coverage: the active component with the smallest |z| (lowest index on ties)."""
    near = np.inf
    nearest = 0
    for k in range(m.shape[0]):
        dist = abs(xi - m[k]) * (1.0 / four_s[k])
        if dist < near:
            near = dist
            nearest = k
    return nearest


@nb.njit(inline="always")
def _best_candidate_block(xb, length, m, half_p, c, radius, best, sel):
    """Vectorized over rows: the largest candidate logit and its index (-1: no candidate)."""
    for i in range(length):
        best[i] = -np.inf
        sel[i] = -1.0
    for k in range(m.shape[0]):
        mk = m[k]
        rk = radius[k]
        hk = half_p[k]
        ck = c[k]
        kf = np.float64(k)
        for i in range(length):
            d = xb[i] - mk
            logit = ck - hk * (d * d) if abs(d) <= rk else -np.inf
            b = best[i]
            best[i] = max(logit, b)  # this select-and-max shape vectorizes best
            sel[i] = kf if logit > b else sel[i]


@nb.njit(inline="always")
def _candidate_logits_block(xb, length, m, half_p, c, radius, best, sel, ncand, logits):
    """As _best_candidate_block, also keeping every candidate's logit (-inf for the others)
    in ``logits[k, i]`` and the number of candidates per row."""
    for i in range(length):
        best[i] = -np.inf
        sel[i] = -1.0
        ncand[i] = 0.0
    for k in range(m.shape[0]):
        mk = m[k]
        rk = radius[k]
        hk = half_p[k]
        ck = c[k]
        kf = np.float64(k)
        for i in range(length):
            d = xb[i] - mk
            cand = abs(d) <= rk
            logit = ck - hk * (d * d) if cand else -np.inf
            b = best[i]
            best[i] = max(logit, b)
            sel[i] = kf if logit > b else sel[i]
            ncand[i] += 1.0 if cand else 0.0
            logits[k, i] = logit


@nb.njit(inline="always")
def _finish_block(x, start, length, sel, m, four_s, ids, special, special_base, z_out, comp_out):
    """Write z and component ids for a block; returns (out_of_coverage, infinite) counts."""
    own_neg_zero = not _has_zero(special)  # else -0.0 takes the special value 0's id below
    unresolved = False
    for i in range(length):  # branch-free: rows without a candidate are fixed up below
        row = start + i
        xi = x[row]
        k = max(np.int64(sel[i]), 0)
        unresolved |= sel[i] < 0.0
        neg_zero = own_neg_zero & (_float64_bits(xi) == _NEG_ZERO_BITS)
        z_out[row] = 0.0 if neg_zero else (xi - m[k]) / four_s[k]
        comp_out[row] = NEG_ZERO_COMPONENT if neg_zero else ids[k]
    n_ooc = 0
    n_inf = 0
    if unresolved:  # NaN, inf, or a value outside the fitted coverage
        for i in range(length):
            if sel[i] >= 0.0:
                continue
            row = start + i
            xi = x[row]
            if xi != xi:
                z_out[row] = 0.0
                comp_out[row] = -1
                continue
            if _float64_bits(xi) == _NEG_ZERO_BITS:
                continue  # NEG_ZERO_COMPONENT (above) or a special value 0 (below)
            n_inf += 1 if np.isinf(xi) else 0
            special_hit = False
            for j in range(special.shape[0]):
                special_hit |= xi == special[j]
            n_ooc += 0 if special_hit else 1  # once per row, whatever the specials repeat
            k = _nearest(xi, m, four_s)
            z_out[row] = (xi - m[k]) / four_s[k]
            comp_out[row] = ids[k]
    for j in range(special.shape[0]):  # values with their own id, z = 0 (a zero keeps its sign)
        sv = special[j]
        zero = sv == 0.0
        for i in range(length):
            xi = x[start + i]
            hit = xi == sv
            z_out[start + i] = (xi if zero else 0.0) if hit else z_out[start + i]
            comp_out[start + i] = special_base + j if hit else comp_out[start + i]
    return n_ooc, n_inf


@nb.njit(nogil=True, cache=True)
def _encode_argmax(x, m, four_s, half_p, c, radius, ids, special, special_base, z_out, comp_out):
    best = np.empty(BLOCK)
    sel = np.empty(BLOCK)
    n_ooc = 0
    n_inf = 0
    for start in range(0, x.shape[0], BLOCK):
        length = min(BLOCK, x.shape[0] - start)
        _best_candidate_block(x[start : start + length], length, m, half_p, c, radius, best, sel)
        a, b = _finish_block(
            x, start, length, sel, m, four_s, ids, special, special_base, z_out, comp_out
        )
        n_ooc += a
        n_inf += b
    return n_ooc, n_inf


@intrinsic
def _bits_as_float64(typingctx, bits):
    """Reinterpret int64 bits as a float64 (no conversion), inside vectorizable loops."""
    sig = types.float64(types.int64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float64))

    return sig, codegen


@intrinsic
def _float64_bits(typingctx, value):
    """Reinterpret a float64 as its int64 bits, inside vectorizable loops."""
    sig = types.int64(types.float64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.int64))

    return sig, codegen


@nb.njit(inline="always")
def _exp_parts(t):
    """exp(t) for t <= 0 as p * 2**n, from + and * alone (no libm), so every backend gets the
    same bits: Cody-Waite reduction t = n ln2 + r, |r| <= ln2/2, and the degree-12 Taylor
    polynomial p(r) (within 2 ulp of exp: relative error <= 4.5e-16, measured on 3M values).
    t is floored at -708 (exp(-708) > 0).
    Returns (p, n); callers build 2**n from its bits (see exp_nonpositive)."""
    t = max(t, -708.0)
    n = np.floor(t * _LOG2E + 0.5)
    r = (t - n * _LN2_HI) - n * _LN2_LO
    p = _C12
    p = p * r + _C11
    p = p * r + _C10
    p = p * r + _C9
    p = p * r + _C8
    p = p * r + _C7
    p = p * r + _C6
    p = p * r + _C5
    p = p * r + _C4
    p = p * r + _C3
    p = p * r + _C2
    p = p * r + 1.0
    p = p * r + 1.0
    return p, n


@nb.njit
def exp_nonpositive(t):
    """Scalar exp_nonpositive (tests and documentation): the kernels' exact exp."""
    p, n = _exp_parts(t)
    return p * 2.0 ** np.int64(n)


@nb.njit(inline="always")
def _draw_block(logits, best, sel, ncand, total, threshold, found, length, key, first_row):
    """Sample mode: replace ``sel`` by a draw from each row's candidate softmax.

    The weights exp(logit - best) are summed in id order, u comes from splitmix64(key ^ row),
    and the pick is the first candidate whose running sum passes u * total; rounding can leave
    the sum short of the threshold, so a row then keeps its last candidate. Rows with one
    candidate keep it; rows with none stay unresolved for _finish_block.
    """
    for i in range(length):
        total[i] = 0.0
    for k in range(logits.shape[0]):
        lk = logits[k]
        for i in range(length):
            lg = lk[i]
            p, n = _exp_parts(lg - best[i])
            w = p * _bits_as_float64((np.int64(n) + 1023) << 52)  # p * 2.0**n
            w = w if lg != -np.inf else 0.0
            lk[i] = w
            total[i] += w
    for i in range(length):
        h = _splitmix64(key ^ (first_row + np.uint64(i)))
        threshold[i] = np.float64(h >> np.uint64(11)) * _INV_2_53 * total[i]
        found[i] = 0.0 if ncand[i] > 1.0 else 1.0
        total[i] = 0.0  # reused as the running sum
    for k in range(logits.shape[0]):
        kf = np.float64(k)
        lk = logits[k]
        for i in range(length):
            w = lk[i]
            total[i] += w
            take = (w > 0.0) & (found[i] == 0.0)
            sel[i] = kf if take else sel[i]
            found[i] = 1.0 if take & (total[i] > threshold[i]) else found[i]


@nb.njit(nogil=True, cache=True)
def _encode_sample(
    x, m, four_s, half_p, c, radius, ids, special, special_base, key, row_offset, z_out, comp_out
):
    n_active = m.shape[0]
    best = np.empty(SAMPLE_BLOCK)
    sel = np.empty(SAMPLE_BLOCK)
    ncand = np.empty(SAMPLE_BLOCK)
    total = np.empty(SAMPLE_BLOCK)
    threshold = np.empty(SAMPLE_BLOCK)
    found = np.empty(SAMPLE_BLOCK)
    logits = np.empty((n_active, SAMPLE_BLOCK))
    n_ooc = 0
    n_inf = 0
    for start in range(0, x.shape[0], SAMPLE_BLOCK):
        length = min(SAMPLE_BLOCK, x.shape[0] - start)
        _candidate_logits_block(
            x[start : start + length], length, m, half_p, c, radius, best, sel, ncand, logits
        )
        _draw_block(
            logits,
            best,
            sel,
            ncand,
            total,
            threshold,
            found,
            length,
            key,
            row_offset + np.uint64(start),
        )
        a, b = _finish_block(
            x, start, length, sel, m, four_s, ids, special, special_base, z_out, comp_out
        )
        n_ooc += a
        n_inf += b
    return n_ooc, n_inf


@nb.njit(nogil=True, cache=True)
def _decode(z, comp, m_all, four_s_all, special, special_base, digits, out):
    n_mix = special_base
    n_ids = special_base + special.shape[0]
    scale = 10.0**digits if digits >= 0 else 1.0
    n_invalid = 0
    for i in range(z.shape[0]):
        k = comp[i]
        if 0 <= k < n_mix:
            v = np.float64(z[i]) * four_s_all[k] + m_all[k]
            if digits >= 0:
                v = np.rint(v * scale) / scale
            v += 0.0  # a zero is +0.0: rounding -1e-18 gives -0.0
        elif n_mix <= k < n_ids:
            v = special[k - n_mix]
            if v == 0.0:
                v = math.copysign(0.0, np.float64(z[i]))  # encode put -0.0's sign on z
        elif k == NEG_ZERO_COMPONENT:
            v = -0.0
        else:
            v = np.nan
            if k != -1:
                n_invalid += 1
        out[i] = v
    return n_invalid


def encode(x, params, mode, key, row_offset, out_dtype=np.float64):
    """Encode a 1-D array.

    Parameters
    ----------
    x : array of shape (n,), float or int; converted to float64.
    params : gpu_vgm.params.KernelParams
    mode : {"argmax", "sample"}
    key : int, ``gpu_vgm.rng.column_key(seed, column)``; used by "sample" mode only.
    row_offset : int, global index of ``x[0]`` in the input (so pieces encode like the whole).
    out_dtype : float64 or float32, dtype of the returned z.

    Returns
    -------
    z : (n,) out_dtype;  component : (n,) int16;  n_out_of_coverage : int;  n_infinite : int
    """
    x = np.ascontiguousarray(x, dtype=np.float64)
    z = np.empty(x.shape[0], dtype=np.float64)
    comp = np.empty(x.shape[0], dtype=np.int16)
    common = (
        x,
        params.m,
        params.four_s,
        params.half_p,
        params.c,
        params.radius,
        params.ids,
        params.special,
        np.int64(params.special_base),
    )
    if mode == "argmax":
        n_ooc, n_inf = _encode_argmax(*common, z, comp)
    elif mode == "sample":
        n_ooc, n_inf = _encode_sample(*common, np.uint64(key), np.uint64(row_offset), z, comp)
    else:
        raise ValueError(f"mode must be 'argmax' or 'sample', got {mode!r}")
    if np.dtype(out_dtype) != np.float64:
        z = z.astype(out_dtype)
    return z, comp, int(n_ooc), int(n_inf)


def decode(z, component, params):
    """Decode z and component ids to float64 values; returns (x, n_invalid_ids).

    Component -1 and ids out of range decode to NaN; the latter are counted.
    NEG_ZERO_COMPONENT decodes to -0.0.
    """
    z = np.ascontiguousarray(z)
    component = np.ascontiguousarray(component, dtype=np.int16)
    if component.shape[0] != z.shape[0]:  # numba would read past the end of component
        raise ValueError(f"z has {z.shape[0]} rows but component has {component.shape[0]}")
    out = np.empty(z.shape[0], dtype=np.float64)
    n_invalid = _decode(
        z,
        component,
        params.m_all,
        params.four_s_all,
        params.special,
        np.int64(params.special_base),
        np.int64(params.digits),
        out,
    )
    return out, int(n_invalid)


def warm_up(mode="argmax"):
    """Load the compiled encode kernel from numba's cache (0.3-0.8 s) on one row, so that the
    first real partition does not pay for it. numba compiles read-only arrays (zero-copy
    columns from pyarrow) apart from writable ones (columns of several chunks): both."""
    from gpu_vgm.params import KernelParams

    one, zero = np.ones(1), np.zeros(1)
    params = KernelParams(
        m=zero,
        four_s=one,
        half_p=one,
        c=zero,
        radius=one,
        ids=np.zeros(1, np.int16),
        m_all=zero,
        four_s_all=one,
        special=np.zeros(0),
        special_base=1,
        digits=-1,
    )
    read_only = np.zeros(1)
    read_only.setflags(write=False)
    for x in (read_only, np.zeros(1)):
        encode(x, params, mode, 0, 0)
