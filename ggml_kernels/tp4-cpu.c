// TP4 CPU kernels (ggml-cpu): from_float and the dot product with Q8_0 activations.
//
// A TP4 block (tritpack-common.h) covers two Q8_0 blocks: the low nibbles of its 32 index bytes are
// the first Q8_0 block's 32 weights in order, the high nibbles the second's. The AVX2 path loads
// the 32 bytes once, splits the nibbles and decodes each half with one pshufb against the block's
// codebook (16 int8 entries, broadcast to both 128-bit lanes), so each 128-bit lane is one sub-block
// of 16. maddubs (sign trick) gives int16 pair sums, and madd with the sub-block scales (int16,
// +-4..7, one per lane) sums them to int32: |lane| <= 4 * 127 * 127 * 7, no overflow.

#define GGML_COMMON_DECL_C
#include "ggml-common.h"

#include "simd-mappings.h"

#include "tritpack-cpu.h"
#include "tritpack-quants.h"
#include "tp4-codebooks.h"

#include <assert.h>
#include <string.h>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

void quantize_row_tp4(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k) {
    quantize_row_tp4_ref(x, (block_tp4 *) y, k);
}

static inline float tp4_d(const block_tp4 * b) {
    return GGML_CPU_FP16_TO_FP32(tritpack_scale_bits(b->d));
}

void ggml_vec_dot_tp4_q8_0_generic(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx,
                                   const void * GGML_RESTRICT vy, size_t by, int nrc) {
    assert(n % QK_TP4 == 0);
    assert(nrc == 1);
    (void)bs; (void)bx; (void)by; (void)nrc;

    const block_tp4  * GGML_RESTRICT x = (const block_tp4 *) vx;
    const block_q8_0 * GGML_RESTRICT y = (const block_q8_0 *) vy;
    const int nb = n / QK_TP4;

    float sumf = 0.0f;
    for (int ib = 0; ib < nb; ++ib) {
        const float d = tp4_d(x + ib);
        const unsigned sc = x[ib].sc[0] | ((unsigned)x[ib].sc[1] << 8);
        const int8_t * cb = tp4_codebooks[sc & 15];
        for (int h = 0; h < 2; ++h) {
            const block_q8_0 * yb = y + 2*ib + h;
            const uint8_t * qs = x[ib].qs;
            int sum0 = 0, sum1 = 0;
            for (int j = 0; j < 16; ++j) {
                sum0 += cb[(qs[j]      >> 4*h) & 0xf] * yb->qs[j];
                sum1 += cb[(qs[16 + j] >> 4*h) & 0xf] * yb->qs[16 + j];
            }
            const int s0 = tritpack_tp4_scale(sc >> (4 + 3*(2*h + 0)));
            const int s1 = tritpack_tp4_scale(sc >> (4 + 3*(2*h + 1)));
            sumf += d * GGML_CPU_FP16_TO_FP32(yb->d) * (float)(s0*sum0 + s1*sum1);
        }
    }
    *s = sumf;
}

#if defined(__AVX2__)
static inline float tp4_hsum_float_8(const __m256 x) {
    __m128 res = _mm256_extractf128_ps(x, 1);
    res = _mm_add_ps(res, _mm256_castps256_ps128(x));
    res = _mm_add_ps(res, _mm_movehl_ps(res, res));
    res = _mm_add_ss(res, _mm_movehdup_ps(res));
    return _mm_cvtss_f32(res);
}

// int16 pair sums of x*y for int8 x in [-127, 127] and any int8 y in [-127, 127]
static inline __m256i tp4_mul_add_epi8(const __m256i x, const __m256i y) {
    return _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
}

// two 3-bit scale codes (low code in bits 0..2) -> their values as two int16, the first in the low half
#define TP4_SV(c) ((uint32_t)(uint16_t)(int16_t)TRITPACK_TP4_SCALE(c))
#define TP4_SP(c) (TP4_SV(c) | (TP4_SV((c) >> 3) << 16))
#define TP4_SP8(c) TP4_SP(c), TP4_SP(c+1), TP4_SP(c+2), TP4_SP(c+3), TP4_SP(c+4), TP4_SP(c+5), TP4_SP(c+6), TP4_SP(c+7)
static const uint32_t tp4_scale_pairs[64] = {
    TP4_SP8(0), TP4_SP8(8), TP4_SP8(16), TP4_SP8(24), TP4_SP8(32), TP4_SP8(40), TP4_SP8(48), TP4_SP8(56),
};
#undef TP4_SP8
#undef TP4_SP
#undef TP4_SV

#if defined(__FMA__)
#define TP4_MADD(a, b, c) _mm256_fmadd_ps(a, b, c)
#else
#define TP4_MADD(a, b, c) _mm256_add_ps(_mm256_mul_ps(a, b), c)
#endif
#endif

void ggml_vec_dot_tp4_q8_0(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx,
                           const void * GGML_RESTRICT vy, size_t by, int nrc) {
#if defined(__AVX2__)
    assert(n % QK_TP4 == 0);
    assert(nrc == 1);
    (void)bs; (void)bx; (void)by; (void)nrc;

    const block_tp4  * GGML_RESTRICT x = (const block_tp4 *) vx;
    const block_q8_0 * GGML_RESTRICT y = (const block_q8_0 *) vy;
    const int nb = n / QK_TP4;

    const __m256i m4 = _mm256_set1_epi8(0x0f);
    // byte selectors: lane 0 <- int16 0 (sel0) or 2 (sel1), lane 1 <- int16 1 (sel0) or 3 (sel1)
    const __m256i sel0 = _mm256_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1,
                                          2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3);
    const __m256i sel1 = _mm256_setr_epi8(4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5,
                                          6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7);
    __m256 acc0 = _mm256_setzero_ps();
    __m256 acc1 = _mm256_setzero_ps();

    for (int ib = 0; ib < nb; ++ib) {
        const unsigned sc = x[ib].sc[0] | ((unsigned)x[ib].sc[1] << 8);
        const __m256i cb = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *) tp4_codebooks[sc & 15]));

        const __m256i q  = _mm256_loadu_si256((const __m256i *) x[ib].qs);
        const __m256i w0 = _mm256_shuffle_epi8(cb, _mm256_and_si256(q, m4));                        // 0..31
        const __m256i w1 = _mm256_shuffle_epi8(cb, _mm256_and_si256(_mm256_srli_epi16(q, 4), m4));  // 32..63

        const __m256i y0 = _mm256_loadu_si256((const __m256i *) y[2*ib + 0].qs);
        const __m256i y1 = _mm256_loadu_si256((const __m256i *) y[2*ib + 1].qs);

        // the four scales as int16 in one 64-bit word, then one per 128-bit lane
        const __m256i sv  = _mm256_set1_epi64x((int64_t)(tp4_scale_pairs[(sc >> 4) & 63] | ((uint64_t)tp4_scale_pairs[(sc >> 10) & 63] << 32)));
        const __m256i sv0 = _mm256_shuffle_epi8(sv, sel0);
        const __m256i sv1 = _mm256_shuffle_epi8(sv, sel1);

        const __m256i p0 = _mm256_madd_epi16(tp4_mul_add_epi8(w0, y0), sv0);
        const __m256i p1 = _mm256_madd_epi16(tp4_mul_add_epi8(w1, y1), sv1);

        const float d = tp4_d(x + ib);
        acc0 = TP4_MADD(_mm256_set1_ps(d * GGML_CPU_FP16_TO_FP32(y[2*ib + 0].d)), _mm256_cvtepi32_ps(p0), acc0);
        acc1 = TP4_MADD(_mm256_set1_ps(d * GGML_CPU_FP16_TO_FP32(y[2*ib + 1].d)), _mm256_cvtepi32_ps(p1), acc1);
    }
    *s = tp4_hsum_float_8(_mm256_add_ps(acc0, acc1));
#else
    ggml_vec_dot_tp4_q8_0_generic(n, s, bs, vx, bx, vy, by, nrc);
#endif
}
