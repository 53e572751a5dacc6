// TP1 reference kernels (ggml-base): quantization with a per-tensor threshold factor alpha, the alpha
// search, and dequantization. The block layout is documented in tritpack-common.h.
//
// Quantizing one block of 64 weights x (importance weights w, all 1 without an imatrix):
//   a_j   = |x_j|
//   tau   = alpha * mean(a)                                   (in double)
//   keep  = a_j > tau  or  a_j == max(a)                      (a non-zero block never becomes all zero)
//   trit  = keep ? sign(x_j) : 0
//   scale = sum_keep(w a) / sum_keep(w)                       (least squares for that support; the
//                                                             unweighted mean if sum_keep(w) <= 0)
//   d     = fp16(min(float(scale), 65504))
// When the non-zero values of a block all share one magnitude s (a ternary tensor) the scale is a mean
// of equal values; the double sums below are within a few ulp of s, and fp16 rounding gives back s
// whenever s is an fp16 value, so such tensors round-trip bit for bit (for any alpha >= 0). All-zero
// blocks keep the sign bits of their zeros (code 0 times d = 0 is -0.0).
//
// Every sum is taken in a fixed order so that the numpy reference (converters/tp1.py) reproduces it bit
// for bit: within a block, eight lanes l = 0..7 accumulate elements 8*i + l for i = 0..7 in order, then
// ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7)); across blocks, sums run block by block in row-major order.
// Products that feed sums are either exact in double (float * float) or kept separate by disabling
// floating-point contraction for this file.

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#elif defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

#include "ggml-impl.h"
#include "tritpack-quants.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

// ggml-base is built for the baseline ISA; on x86-64 the lane sums, block max and codes below also have
// 256-bit versions, picked at run time. Each lane adds its elements in the same order either way: the
// same bits.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__AVX2__) && !defined(TRITPACK_NO_CLONES)
#define TP1_AVX2_DISPATCH 1
#include <immintrin.h>
static int tp1_use_avx2 = -1;  // unknown yet; a race only ever writes the same value
static inline int tp1_avx2(void) {
    if (tp1_use_avx2 < 0) {
        tp1_use_avx2 = tritpack_cpu_has("avx2");
    }
    return tp1_use_avx2;
}
#endif

#define TP1_ROW_BLOCKS(n) ((n) / QK_TP1)

// largest finite fp16 value: scales are clamped to it rather than overflowing to inf
#define TP1_MAX_SCALE 65504.0f

// ---------------------------------------------------------------------------------------------
// packing
// ---------------------------------------------------------------------------------------------

// codes[e] in {0, 1, 2} (value + 1) for the 64 elements of a block -> 13 bytes, see tritpack-common.h
static void tp1_pack(const uint8_t * codes, uint8_t * qs) {
    for (int m = 0; m < 13; ++m) {
        const int c4 = m < 12 ? codes[16*(m/3) + 13 + m%3] : 1;
        const int v  = (((codes[m]*3 + codes[16 + m])*3 + codes[32 + m])*3 + codes[48 + m])*3 + c4;
        qs[m] = (uint8_t) ((v*256 + 242) / 243);  // ceil(v * 256 / 243)
    }
}

static inline double tp1_hsum8(const double s[8]) {
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

// ---------------------------------------------------------------------------------------------
// per-block statistics shared by the search and the quantizer
// ---------------------------------------------------------------------------------------------

typedef struct {
    double a[QK_TP1];   // |x|
    double w[QK_TP1];   // importance (1 without an imatrix)
    double wa[QK_TP1];  // w * |x| (exact in double)
    double sum;         // sum of |x| (lane order)
    double xx;          // sum of w * x * x (lane order; the search's denominator)
    float  amax;        // max |x|
} tp1_block_prep;

static inline void tp1_prep(const float * GGML_RESTRICT x, const float * GGML_RESTRICT w, tp1_block_prep * p) {
    double s[8]  = {0, 0, 0, 0, 0, 0, 0, 0};
    double sx[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    float amax = 0.0f;
    for (int i = 0; i < 8; ++i) {
        for (int l = 0; l < 8; ++l) {
            const int    j  = 8*i + l;
            const float  v  = fabsf(x[j]);
            const double vd = (double) v;
            const double wd = w ? (double) w[j] : 1.0;
            p->a[j]  = vd;
            p->w[j]  = wd;
            p->wa[j] = wd * vd;
            s[l]  += vd;
            sx[l] += wd * (vd * vd);
            amax = v > amax ? v : amax;
        }
    }
    p->sum  = tp1_hsum8(s);
    p->xx   = tp1_hsum8(sx);
    p->amax = amax;
}

// the threshold: keep |x| > tau. A block whose tau reaches its max keeps its max elements instead: tau is
// lowered to just under the max, which keeps exactly the elements equal to it (no float lies between).
static inline double tp1_tau(const tp1_block_prep * p, float alpha) {
    const double tau  = (double) alpha * (p->sum * 0.015625);
    const double amax = (double) p->amax;
    return tau < amax ? tau : nextafter(amax, 0.0);
}

// weighted sums over the kept support: *A = sum w*a, *W = sum w (with ones: sum a, count)
static inline void tp1_support_sums(const tp1_block_prep * p, double tau, int weighted, double * A, double * W) {
    const double * wa = weighted ? p->wa : p->a;
#if defined(__SSE2__)
    // the same lanes and order as the scalar loop below, two lanes per register
    __m128d sa[4], sw[4];
    for (int l = 0; l < 4; ++l) {
        sa[l] = _mm_setzero_pd();
        sw[l] = _mm_setzero_pd();
    }
    const __m128d t   = _mm_set1_pd(tau);
    const __m128d one = _mm_set1_pd(1.0);
    for (int i = 0; i < 8; ++i) {
        for (int l = 0; l < 4; ++l) {
            const int j = 8*i + 2*l;
            const __m128d keep = _mm_cmpgt_pd(_mm_loadu_pd(p->a + j), t);
            sa[l] = _mm_add_pd(sa[l], _mm_and_pd(keep, _mm_loadu_pd(wa + j)));
            sw[l] = _mm_add_pd(sw[l], _mm_and_pd(keep, weighted ? _mm_loadu_pd(p->w + j) : one));
        }
    }
    double ra[8], rw[8];
    for (int l = 0; l < 4; ++l) {
        _mm_storeu_pd(ra + 2*l, sa[l]);
        _mm_storeu_pd(rw + 2*l, sw[l]);
    }
    *A = tp1_hsum8(ra);
    *W = tp1_hsum8(rw);
#else
    double sa[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    double sw[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int i = 0; i < 8; ++i) {
        for (int l = 0; l < 8; ++l) {
            const int j = 8*i + l;
            const int keep = p->a[j] > tau;
            sa[l] += keep ? wa[j] : 0.0;
            sw[l] += keep ? (weighted ? p->w[j] : 1.0) : 0.0;
        }
    }
    *A = tp1_hsum8(sa);
    *W = tp1_hsum8(sw);
#endif
}

// the block scale for a support; also returns the weighted sums used by the search
static inline ggml_fp16_t tp1_block_scale(const tp1_block_prep * p, int weighted, double tau, double * A, double * W) {
    tp1_support_sums(p, tau, weighted, A, W);
    double d;
    if (*W > 0.0) {
        d = *A / *W;
    } else {
        // only with an imatrix whose weights are all zero (or negative) on the support
        double Au, Wu;
        tp1_support_sums(p, tau, 0, &Au, &Wu);
        d = Au / Wu;
    }
    float df = (float) d;
    if (!(df <= TP1_MAX_SCALE)) {
        df = TP1_MAX_SCALE;
    }
    return GGML_FP32_TO_FP16(df);
}

// quantize one block with a given alpha (amax == 0: all-zero block)
static void tp1_quantize_block(const float * GGML_RESTRICT x, const float * GGML_RESTRICT w, float alpha,
                               block_tp1 * GGML_RESTRICT y) {
    tp1_block_prep p;
    tp1_prep(x, w, &p);
    uint8_t codes[QK_TP1];
    ggml_fp16_t d = 0;
    if (p.amax > 0.0f) {
        const double tau = tp1_tau(&p, alpha);
        double A, W;
        d = tp1_block_scale(&p, w != NULL, tau, &A, &W);
        for (int j = 0; j < QK_TP1; ++j) {  // kept: 2 (+) or 0 (-), else 1; without branches
            const int k = p.a[j] > tau;
            const int s = x[j] > 0.0f;
            codes[j] = (uint8_t) (1 - k + 2*(k & s));
        }
    } else {
        // all zeros: d = 0, and code 0 (d * -1) keeps a negative zero's sign bit
        for (int j = 0; j < QK_TP1; ++j) {
            codes[j] = signbit(x[j]) ? 0 : 1;
        }
    }
    tp1_pack(codes, y->qs);
    tritpack_set_scale_bits(y->d, d);
}

// Lane sums of |x| over a block (lane l = element index % 8, added in index order), either all of
// them (all) or those above tf, as float64: the sums tp1_prep and tp1_support_sums make. Returns
// how many were summed.
#if defined(TP1_AVX2_DISPATCH)
__attribute__((target("avx2,popcnt")))
static int tp1_lane_sums_avx2(const float * GGML_RESTRICT x, int all, float tf, double out[8]) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 t    = _mm256_set1_ps(tf);
    __m256d lo = _mm256_setzero_pd();  // lanes 0..3
    __m256d hi = _mm256_setzero_pd();  // lanes 4..7
    int count = 0;
    for (int i = 0; i < 8; ++i) {
        const __m256 v    = _mm256_andnot_ps(sign, _mm256_loadu_ps(x + 8*i));
        const __m256 keep = _mm256_cmp_ps(v, t, _CMP_GT_OQ);  // false for NaN, as _mm_cmpgt_ps
        const __m256 kept = all ? v : _mm256_and_ps(v, keep);
        count += __builtin_popcount((unsigned) _mm256_movemask_ps(keep));
        lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(kept)));
        hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(kept, 1)));
    }
    _mm256_storeu_pd(out, lo);
    _mm256_storeu_pd(out + 4, hi);
    return all ? QK_TP1 : count;
}
#endif

static inline int tp1_lane_sums(const float * GGML_RESTRICT x, int all, float tf, double out[8]) {
#if defined(TP1_AVX2_DISPATCH)
    if (tp1_avx2()) {
        return tp1_lane_sums_avx2(x, all, tf, out);
    }
#endif
#if defined(__SSE2__)
    // two lanes a register; _mm_cvtps_pd converts without the false dependency scalar code gets
    static const uint8_t tp1_bits4[16] = { 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4 };  // set bits
    const __m128 sign = _mm_set1_ps(-0.0f);
    const __m128 t    = _mm_set1_ps(tf);
    __m128d acc[4];
    for (int h = 0; h < 4; ++h) {
        acc[h] = _mm_setzero_pd();
    }
    int count = 0;
    for (int i = 0; i < 8; ++i) {
        for (int q = 0; q < 2; ++q) {
            const __m128 v    = _mm_andnot_ps(sign, _mm_loadu_ps(x + 8*i + 4*q));
            const __m128 keep = _mm_cmpgt_ps(v, t);
            const __m128 kept = all ? v : _mm_and_ps(v, keep);  // v or +0
            count += tp1_bits4[_mm_movemask_ps(keep)];
            acc[2*q]     = _mm_add_pd(acc[2*q],     _mm_cvtps_pd(kept));
            acc[2*q + 1] = _mm_add_pd(acc[2*q + 1], _mm_cvtps_pd(_mm_movehl_ps(kept, kept)));
        }
    }
    for (int h = 0; h < 4; ++h) {
        _mm_storeu_pd(out + 2*h, acc[h]);
    }
    return all ? QK_TP1 : count;
#else
    for (int l = 0; l < 8; ++l) {
        out[l] = 0.0;
    }
    int count = 0;
    for (int i = 0; i < 8; ++i) {
        for (int l = 0; l < 8; ++l) {
            const float v = fabsf(x[8*i + l]);
            const int   k = all || v > tf;
            out[l] += k ? (double) v : 0.0;
            count  += k;
        }
    }
    return count;
#endif
}

// Lane sums (tp1_lane_sums' lanes and order) of |x|^2 into xx, and of (|x| - d*[|x| > tf])^2 into ee,
// the squared error of a block whose kept weights come back as +-d (ee may be NULL).
#if defined(TP1_AVX2_DISPATCH)
__attribute__((target("avx2")))
static void tp1_lane_squares_avx2(const float * GGML_RESTRICT x, float tf, double d, double xx[8], double * ee) {
    const __m256  sign = _mm256_set1_ps(-0.0f);
    const __m256d t    = _mm256_set1_pd((double) tf);
    const __m256d dv   = _mm256_set1_pd(d);
    __m256d ax[2] = { _mm256_setzero_pd(), _mm256_setzero_pd() };  // lanes 0..3, 4..7
    __m256d ae[2] = { _mm256_setzero_pd(), _mm256_setzero_pd() };
    for (int i = 0; i < 8; ++i) {
        const __m256 v = _mm256_andnot_ps(sign, _mm256_loadu_ps(x + 8*i));
        for (int h = 0; h < 2; ++h) {
            const __m256d vd = _mm256_cvtps_pd(h ? _mm256_extractf128_ps(v, 1) : _mm256_castps256_ps128(v));
            ax[h] = _mm256_add_pd(ax[h], _mm256_mul_pd(vd, vd));
            if (ee) {
                const __m256d e = _mm256_sub_pd(vd, _mm256_and_pd(dv, _mm256_cmp_pd(vd, t, _CMP_GT_OQ)));
                ae[h] = _mm256_add_pd(ae[h], _mm256_mul_pd(e, e));
            }
        }
    }
    for (int h = 0; h < 2; ++h) {
        _mm256_storeu_pd(xx + 4*h, ax[h]);
        if (ee) {
            _mm256_storeu_pd(ee + 4*h, ae[h]);
        }
    }
}
#endif

static inline void tp1_lane_squares(const float * GGML_RESTRICT x, float tf, double d, double xx[8], double * ee) {
#if defined(TP1_AVX2_DISPATCH)
    if (tp1_avx2()) {
        tp1_lane_squares_avx2(x, tf, d, xx, ee);
        return;
    }
#endif
#if defined(__SSE2__)
    const __m128  sign = _mm_set1_ps(-0.0f);
    const __m128d t    = _mm_set1_pd((double) tf);
    const __m128d dv   = _mm_set1_pd(d);
    __m128d ax[4], ae[4];
    for (int h = 0; h < 4; ++h) {
        ax[h] = _mm_setzero_pd();
        ae[h] = _mm_setzero_pd();
    }
    for (int i = 0; i < 8; ++i) {
        for (int q = 0; q < 2; ++q) {
            const __m128 v = _mm_andnot_ps(sign, _mm_loadu_ps(x + 8*i + 4*q));
            for (int half = 0; half < 2; ++half) {
                const int     h  = 2*q + half;
                const __m128d vd = _mm_cvtps_pd(half ? _mm_movehl_ps(v, v) : v);
                ax[h] = _mm_add_pd(ax[h], _mm_mul_pd(vd, vd));
                if (ee) {
                    const __m128d e = _mm_sub_pd(vd, _mm_and_pd(dv, _mm_cmpgt_pd(vd, t)));
                    ae[h] = _mm_add_pd(ae[h], _mm_mul_pd(e, e));
                }
            }
        }
    }
    for (int h = 0; h < 4; ++h) {
        _mm_storeu_pd(xx + 2*h, ax[h]);
        if (ee) {
            _mm_storeu_pd(ee + 2*h, ae[h]);
        }
    }
#else
    for (int l = 0; l < 8; ++l) {
        xx[l] = 0.0;
        if (ee) {
            ee[l] = 0.0;
        }
    }
    for (int i = 0; i < 8; ++i) {
        for (int l = 0; l < 8; ++l) {
            const float  v  = fabsf(x[8*i + l]);
            const double vd = (double) v;
            xx[l] += vd * vd;
            if (ee) {
                const double e = vd - (v > tf ? d : 0.0);  // exact: the difference of two floats
                ee[l] += e * e;
            }
        }
    }
#endif
}

// The largest float <= tau: for a float a, a > tau exactly when a > tp1_float_below(tau).
static inline float tp1_float_below(double tau) {
    float tf = (float) tau;
    if ((double) tf > tau) {
        tf = nextafterf(tf, -INFINITY);
    }
    return tf;
}

// the stored scale for a support's mean (tp1_block_scale without its sums)
static inline ggml_fp16_t tp1_scale_to_fp16(double d) {
    float df = (float) d;
    if (!(df <= TP1_MAX_SCALE)) {
        df = TP1_MAX_SCALE;
    }
    return GGML_FP32_TO_FP16(df);
}

// tp1_prep without an imatrix: only sum, amax and (with need_xx) xx, what tp1_tau and the search read.
// Returns 0 for an all-zero block, which the general path handles.
#if defined(TP1_AVX2_DISPATCH)
// max |x| over a block (NaN skipped: _mm256_max_ps returns its second operand for a NaN, as
// v > amax ? v : amax does); max is exact in any order
__attribute__((target("avx2")))
static float tp1_amax_avx2(const float * GGML_RESTRICT x) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_setzero_ps();
    for (int i = 0; i < 8; ++i) {
        m = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + 8*i)), m);
    }
    __m128 r = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    r = _mm_max_ps(r, _mm_movehl_ps(r, r));
    r = _mm_max_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

// the codes of tp1_quantize_block_plain (kept: 2 for x > 0, else 0; not kept: 1)
__attribute__((target("avx2")))
static void tp1_codes_avx2(const float * GGML_RESTRICT x, float tf, uint8_t codes[QK_TP1]) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 t    = _mm256_set1_ps(tf);
    const __m256i one = _mm256_set1_epi32(1);
    for (int i = 0; i < 8; ++i) {
        const __m256  xv = _mm256_loadu_ps(x + 8*i);
        const __m256  kf = _mm256_cmp_ps(_mm256_andnot_ps(sign, xv), t, _CMP_GT_OQ);  // NaN: not kept
        const __m256i k  = _mm256_castps_si256(kf);                                      // -1 kept, 0 not
        const __m256i p  = _mm256_castps_si256(_mm256_cmp_ps(xv, _mm256_setzero_ps(), _CMP_GT_OQ));
        // 1 + k - 2 (k & p): not kept 1, kept and positive 2, kept otherwise 0
        const __m256i c  = _mm256_sub_epi32(_mm256_add_epi32(one, k), _mm256_slli_epi32(_mm256_and_si256(k, p), 1));
        const __m128i w  = _mm_packs_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
        _mm_storel_epi64((__m128i *) (codes + 8*i), _mm_packus_epi16(w, w));
    }
}
#endif

static inline int tp1_plain_prep(const float * GGML_RESTRICT x, tp1_block_prep * p, int need_xx) {
    float amax = 0.0f;
#if defined(TP1_AVX2_DISPATCH)
    if (tp1_avx2()) {
        amax = tp1_amax_avx2(x);
    } else
#endif
    for (int j = 0; j < QK_TP1; ++j) {
        const float v = fabsf(x[j]);
        amax = v > amax ? v : amax;
    }
    if (!(amax > 0.0f)) {
        return 0;
    }
    double s[8], sx[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    tp1_lane_sums(x, 1, 0.0f, s);
    if (need_xx) {
        tp1_lane_squares(x, 0.0f, 0.0, sx, NULL);
    }
    p->sum  = tp1_hsum8(s);
    p->xx   = tp1_hsum8(sx);
    p->amax = amax;
    return 1;
}

// tp1_quantize_block without an imatrix, the same bits in fewer steps: no double copies of the block,
// and the threshold test in float. With m, also adds the block's sum x^2, sum y^2, sum x*y and
// sum (x-y)^2 (float64) to m[0..3], y being what dequantize_row_tp1 gives back (the scale and the
// trits are known here, so nothing is decoded). An all-zero block adds nothing.
static void tp1_quantize_block_plain(const float * GGML_RESTRICT x, float alpha, block_tp1 * GGML_RESTRICT y,
                                     double * m) {
    tp1_block_prep p;
    if (!tp1_plain_prep(x, &p, 0)) {
        tp1_quantize_block(x, NULL, alpha, y);  // all zeros: keeps the signs of the zeros
        return;
    }
    const float tf = tp1_float_below(tp1_tau(&p, alpha));
    uint8_t codes[QK_TP1];
#if defined(TP1_AVX2_DISPATCH)
    if (tp1_avx2()) {
        tp1_codes_avx2(x, tf, codes);
    } else
#endif
    for (int j = 0; j < QK_TP1; ++j) {  // kept: 2 (+) or 0 (-), else 1
        const int k = fabsf(x[j]) > tf;
        codes[j] = (uint8_t) (1 - k + 2*(k & (x[j] > 0.0f)));
    }
    double s[8];
    const int count = tp1_lane_sums(x, 0, tf, s);  // how many are kept (the same test as the codes')
    const double A = tp1_hsum8(s);
    const ggml_fp16_t d = tp1_scale_to_fp16(A / (double) count);  // count >= 1: the max is kept
    tp1_pack(codes, y->qs);
    tritpack_set_scale_bits(y->d, d);
    if (m) {
        // |x - y| is | |x| - d | where kept (same sign), |x| where not
        const double dd = (double) GGML_FP16_TO_FP32(d);
        double xx[8], e[8];
        tp1_lane_squares(x, tf, dd, xx, e);
        m[0] += tp1_hsum8(xx);
        m[1] += (dd * dd) * (double) count;
        m[2] += dd * A;
        m[3] += tp1_hsum8(e);
    }
}

static float tp1_sanitize_alpha(float alpha) {
    return alpha >= 0.0f ? (alpha <= 64.0f ? alpha : 64.0f) : 0.0f;  // also maps NaN to 0
}

// ---------------------------------------------------------------------------------------------
// public entry points
// ---------------------------------------------------------------------------------------------

// rows of blocks: with an imatrix the general quantizer, without it the plain one (measuring into m
// when given)
static size_t tp1_quantize_rows(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst, int64_t nrows,
                                int64_t n_per_row, const float * imatrix, float alpha, double * m) {
    assert(n_per_row % QK_TP1 == 0);
    alpha = tp1_sanitize_alpha(alpha);
    const int64_t nb = TP1_ROW_BLOCKS(n_per_row);
    block_tp1 * y = (block_tp1 *) dst;
    for (int64_t r = 0; r < nrows; ++r) {
        for (int64_t b = 0; b < nb; ++b) {
            if (imatrix) {
                tp1_quantize_block(src + r*n_per_row + b*QK_TP1, imatrix + b*QK_TP1, alpha, y + r*nb + b);
            } else {
                tp1_quantize_block_plain(src + r*n_per_row + b*QK_TP1, alpha, y + r*nb + b, m);
            }
        }
    }
    return (size_t) nrows * (size_t) nb * sizeof(block_tp1);
}

size_t tritpack_quantize_tp1(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst, int64_t nrows,
                             int64_t n_per_row, const float * imatrix, float alpha) {
    return tp1_quantize_rows(src, dst, nrows, n_per_row, imatrix, alpha, NULL);
}

size_t tritpack_quantize_tp1_measured(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst, int64_t nrows,
                                      int64_t n_per_row, float alpha, double m[4]) {
    return tp1_quantize_rows(src, dst, nrows, n_per_row, NULL, alpha, m);
}

void quantize_row_tp1_ref(const float * GGML_RESTRICT x, block_tp1 * GGML_RESTRICT y, int64_t k) {
    assert(k % QK_TP1 == 0);
    const int64_t nb = k / QK_TP1;
    for (int64_t b = 0; b < nb; ++b) {
        tp1_quantize_block(x + b*QK_TP1, NULL, TRITPACK_TP1_DEFAULT_ALPHA, y + b);
    }
}

void dequantize_row_tp1(const block_tp1 * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k) {
    assert(k % QK_TP1 == 0);
    static const float val[3] = { -1.0f, 0.0f, 1.0f };
    static const uint8_t pow3[5] = { 1, 3, 9, 27, 81 };
    const int64_t nb = k / QK_TP1;
    for (int64_t b = 0; b < nb; ++b) {
        const float d = GGML_FP16_TO_FP32(tritpack_scale_bits(x[b].d));
        float * GGML_RESTRICT yb = y + b*QK_TP1;
        for (int m = 0; m < 13; ++m) {
            const uint8_t q = x[b].qs[m];
            for (int n = 0; n < 4; ++n) {
                const int c = ((uint8_t) (q * pow3[n]) * 3) >> 8;
                yb[16*n + m] = d * val[c];
            }
            if (m < 12) {
                const int c = ((uint8_t) (q * 81) * 3) >> 8;
                yb[16*(m/3) + 13 + m%3] = d * val[c];
            }
        }
    }
}

// TPQ16, TP1's activations (tritpack-common.h). Values outside +-32767 * d cannot occur for finite
// rows; the clamp only keeps NaN/Inf activations from an undefined conversion (fmaxf maps NaN to
// -32767; a row holding Inf gets d = Inf and every value NaN * 0).
void quantize_row_tpq16_ref(const float * GGML_RESTRICT x, block_tpq16 * GGML_RESTRICT y, int64_t k) {
    assert(k % QK_TPQ16 == 0);
    const int64_t nb = k / QK_TPQ16;
    for (int64_t b = 0; b < nb; ++b) {
        const float * xb = x + b*QK_TPQ16;
        float amax = 0.0f;
        for (int j = 0; j < QK_TPQ16; ++j) {
            amax = fmaxf(amax, fabsf(xb[j]));
        }
        const float d  = amax / 32767.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = d;
        for (int j = 0; j < QK_TPQ16; ++j) {
            y[b].qs[j] = (int16_t) roundf(fminf(fmaxf(xb[j] * id, -32767.0f), 32767.0f));
        }
    }
}

void dequantize_row_tpq16(const block_tpq16 * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k) {
    assert(k % QK_TPQ16 == 0);
    const int64_t nb = k / QK_TPQ16;
    for (int64_t b = 0; b < nb; ++b) {
        for (int j = 0; j < QK_TPQ16; ++j) {
            y[b*QK_TPQ16 + j] = x[b].d * (float) x[b].qs[j];
        }
    }
}

// ---------------------------------------------------------------------------------------------
// alpha search
// ---------------------------------------------------------------------------------------------

// Candidate alphas live on a lattice alpha = m / TP1_ALPHA_DEN. A coarse pass evaluates m = 16, 24, ..., 56
// (alpha 0.5 .. 1.75); three refinement passes evaluate best -/+ 4, 2, 1 (down to a step of 1/32).
#define TP1_ALPHA_DEN 32
#define TP1_MAX_CAND  8

typedef struct {
    int    m;
    double cos;
    double err;
} tp1_cand;

// tp1_plain_prep's results for each block of the sample, made once for the search's four passes
typedef struct {
    double sum, xx;
    float  amax;
    int    ok;  // 0: tp1_plain_prep declined (a zero or NaN block): the pass takes the general path
} tp1_plain_cache;

// one pass over the data evaluating several alphas; fills cos and err (weighted squared error).
// cache: NULL, or tp1_plain_prep of every block (no imatrix only)
static void tp1_eval_pass(const float * src, int64_t nrows, int64_t n_per_row, const float * imatrix,
                          const tp1_plain_cache * cache, tp1_cand * cand, int ncand) {
    const int64_t nb = TP1_ROW_BLOCKS(n_per_row);
    double dot[TP1_MAX_CAND], yy[TP1_MAX_CAND];
    float alpha[TP1_MAX_CAND];
    for (int c = 0; c < ncand; ++c) {
        dot[c] = 0.0;
        yy[c]  = 0.0;
        alpha[c] = (float) cand[c].m / (float) TP1_ALPHA_DEN;
    }
    double xx = 0.0;
    tp1_block_prep p;
    for (int64_t r = 0; r < nrows; ++r) {
        for (int64_t b = 0; b < nb; ++b) {
            const float * x = src + r*n_per_row + b*QK_TP1;
            const float * w = imatrix ? imatrix + b*QK_TP1 : NULL;
            const tp1_plain_cache * pc = cache ? &cache[r*nb + b] : NULL;
            if (pc) {
                p.sum  = pc->sum;
                p.xx   = pc->xx;
                p.amax = pc->amax;
            }
            if (w == NULL && (pc ? pc->ok : tp1_plain_prep(x, &p, 1))) {
                // without an imatrix: the same sums from the floats (see tp1_quantize_block_plain)
                xx += p.xx;
                double s[8];
                for (int c = 0; c < ncand; ++c) {
                    const double tau = tp1_tau(&p, alpha[c]);
                    const float  tf  = tp1_float_below(tau);
                    const double W = (double) tp1_lane_sums(x, 0, tf, s);
                    const double A = tp1_hsum8(s);
                    const ggml_fp16_t h = tp1_scale_to_fp16(A / W);
                    const double d = (double) GGML_FP16_TO_FP32(h);
                    dot[c] += d * A;
                    yy[c]  += (d * d) * W;
                }
                continue;
            }
            tp1_prep(x, w, &p);
            xx += p.xx;
            if (p.amax == 0.0f) {
                continue;  // contributes nothing to dot and yy
            }
            for (int c = 0; c < ncand; ++c) {
                double A, W;
                const ggml_fp16_t h = tp1_block_scale(&p, w != NULL, tp1_tau(&p, alpha[c]), &A, &W);
                const double d = (double) GGML_FP16_TO_FP32(h);
                dot[c] += d * A;
                yy[c]  += (d * d) * W;
            }
        }
    }
    for (int c = 0; c < ncand; ++c) {
        if (xx > 0.0) {
            cand[c].cos = yy[c] > 0.0 ? dot[c] / sqrt(xx * yy[c]) : 0.0;
        } else {
            cand[c].cos = 1.0;
        }
        cand[c].err = (xx - 2.0 * dot[c]) + yy[c];
    }
}

float tritpack_tp1_search_alpha(const float * src, int64_t nrows, int64_t n_per_row, const float * imatrix,
                                float target_cos, float * out_cos) {
    assert(n_per_row % QK_TP1 == 0);
    tp1_cand all[TP1_MAX_CAND * 4];
    int nall = 0;

    // without an imatrix every pass starts each block with the same tp1_plain_prep: make it once
    const int64_t nblocks = nrows * TP1_ROW_BLOCKS(n_per_row);
    tp1_plain_cache * cache = imatrix == NULL && nblocks > 0 ? malloc(sizeof(*cache) * (size_t) nblocks) : NULL;
    if (cache) {
        tp1_block_prep p;
        for (int64_t i = 0; i < nblocks; ++i) {
            const int ok = tp1_plain_prep(src + i*QK_TP1, &p, 1);
            cache[i] = (tp1_plain_cache) { ok ? p.sum : 0.0, ok ? p.xx : 0.0, ok ? p.amax : 0.0f, ok };
        }
    }

    // coarse pass
    tp1_cand pass[TP1_MAX_CAND];
    int np = 0;
    for (int m = 16; m <= 56; m += 8) {
        pass[np].m = m;
        np++;
    }
    tp1_eval_pass(src, nrows, n_per_row, imatrix, cache, pass, np);
    int best = 0;
    for (int c = 0; c < np; ++c) {
        all[nall++] = pass[c];
        if (pass[c].cos > all[best].cos) {
            best = nall - 1;
        }
    }
    // refinement passes around the best so far
    for (int step = 4; step >= 1; step /= 2) {
        const int mb = all[best].m;
        np = 0;
        if (mb - step >= 1) {
            pass[np++].m = mb - step;
        }
        pass[np++].m = mb + step;
        tp1_eval_pass(src, nrows, n_per_row, imatrix, cache, pass, np);
        for (int c = 0; c < np; ++c) {
            all[nall++] = pass[c];
            if (pass[c].cos > all[best].cos) {
                best = nall - 1;
            }
        }
    }
    free(cache);
    int pick = best;
    if (target_cos > 0.0f) {
        // the smallest error among the candidates that reach the target cosine (else the best cosine)
        int found = -1;
        for (int c = 0; c < nall; ++c) {
            if (all[c].cos >= (double) target_cos && (found < 0 || all[c].err < all[found].err)) {
                found = c;
            }
        }
        if (found >= 0) {
            pick = found;
        }
    }
    if (out_cos) {
        *out_cos = (float) all[pick].cos;
    }
    return (float) all[pick].m / (float) TP1_ALPHA_DEN;
}

size_t quantize_tp1(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst, int64_t nrows, int64_t n_per_row,
                    const float * imatrix) {
    const float alpha = tritpack_tp1_search_alpha(src, nrows, n_per_row, imatrix, 0.0f, NULL);
    return tritpack_quantize_tp1(src, dst, nrows, n_per_row, imatrix, alpha);
}
