// gpu_vgm's CUDA kernels: a mirror of cpu_fallback/kernels.py, bit for bit; see
// gpu_vgm/kernels.py for why every operation is an intrinsic. Not compiled on its own:
// gpu_vgm/cuda_source.py puts #define lines before it for the constants it shares with
// cpu_fallback (VGM_INV_2_53, VGM_LOG2E, VGM_LN2_HI, VGM_LN2_LO, VGM_C2 .. VGM_C12,
// VGM_NEG_ZERO_COMPONENT).
#define VGM_INF __longlong_as_double(0x7ff0000000000000LL)
#define VGM_NAN __longlong_as_double(0x7ff8000000000000LL)
#define VGM_NEG_ZERO_BITS ((long long)0x8000000000000000ULL)  /* -0.0: the sign bit alone */

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

// NaN -> (-1, 0); a finite special value j -> (special_base + j, 0), where a special value 0
// keeps the row's sign in z (+0 or -0); -0.0 with no special value 0 -> (NEG_ZERO_COMPONENT,
// +0). The CPU also resolves these rows, but its result is overwritten and they add to no
// count, so they skip the loops. (An infinite special value, which the model never makes, goes
// the whole way: the CPU counts it as infinite.)
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
    if (hit < 0) {
        if (__double_as_longlong(xi) != VGM_NEG_ZERO_BITS) return false;
        z_out[i] = 0.0;
        comp_out[i] = (short)VGM_NEG_ZERO_COMPONENT;
        return true;
    }
    z_out[i] = (special[hit] == 0.0) ? xi : 0.0;
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
            v = __dadd_rn(v, 0.0);  // a zero is +0.0: rounding -1e-18 gives -0.0
        } else if (n_mix <= k && k < n_ids) {
            v = special[k - n_mix];
            if (v == 0.0) v = copysign(0.0, (double)z[i]);  // encode put -0.0's sign on z
        } else if (k == VGM_NEG_ZERO_COMPONENT) {
            v = -0.0;
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
