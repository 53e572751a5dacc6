// TP1 CPU kernels (ggml-cpu): from_float and the dot product with Q8_0 activations.
//
// Decoding a trit is a multiply and a shift (the TQ1_0 trick, tritpack-common.h):
//     c_n = ((uint8_t)(q * 3^n) * 3) >> 8
// The AVX2 path does it in 16-bit lanes with the byte in the high half: _mm256_mullo_epi16(q << 8, 3^n)
// leaves (uint8_t)(q * 3^n) << 8, and _mm256_mulhi_epu16(., 3) is then c_n. One pshufb places the
// right byte in each lane (the fifth trit of bytes 3k..3k+2 completes group k), the power comes from a
// per-lane constant, and packus pairs two 16-lane groups into 32 codes in element order, matching one
// Q8_0 block. No lane reads past the 13 trit bytes; the 16-byte load of a row's last block starts one
// byte early (inside the row) so that it ends where the block ends.

#define GGML_COMMON_DECL_C
#include "ggml-common.h"

#include "simd-mappings.h"

#include "tritpack-cpu.h"
#include "tritpack-quants.h"

#include <assert.h>
#include <string.h>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

void quantize_row_tp1(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k) {
    quantize_row_tp1_ref(x, (block_tp1 *) y, k);
}

static inline float tp1_scale(const block_tp1 * b) {
    return GGML_CPU_FP16_TO_FP32(tritpack_scale_bits(b->d));
}

void ggml_vec_dot_tp1_q8_0_generic(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx,
                                   const void * GGML_RESTRICT vy, size_t by, int nrc) {
    assert(n % QK_TP1 == 0);
    assert(nrc == 1);
    (void) nrc;
    (void) bs;
    (void) bx;
    (void) by;

    static const uint8_t pow3[5] = { 1, 3, 9, 27, 81 };

    const block_tp1  * GGML_RESTRICT x = (const block_tp1 *) vx;
    const block_q8_0 * GGML_RESTRICT y = (const block_q8_0 *) vy;
    const int nb = n / QK_TP1;

    float sumf = 0.0f;
    for (int i = 0; i < nb; ++i) {
        int8_t t[QK_TP1];  // trits -1, 0, +1 in element order
        for (int j = 0; j < 4; ++j) {  // trit j of bytes 0..12: elements 16j .. 16j+12
            for (int m = 0; m < 13; ++m) {
                t[16*j + m] = (int8_t) ((((uint8_t) (x[i].qs[m] * pow3[j]) * 3) >> 8) - 1);
            }
        }
        for (int m = 0; m < 12; ++m) {  // trit 4 of bytes 0..11: elements 16k+13 .. 16k+15
            t[16*(m/3) + 13 + m%3] = (int8_t) ((((uint8_t) (x[i].qs[m] * pow3[4]) * 3) >> 8) - 1);
        }
        const float dx = tp1_scale(&x[i]);
        for (int h = 0; h < 2; ++h) {
            const block_q8_0 * yb = &y[2*i + h];
            int sumi = 0;
            for (int j = 0; j < QK8_0; ++j) {
                sumi += t[QK8_0*h + j] * yb->qs[j];
            }
            sumf += dx * GGML_CPU_FP16_TO_FP32(yb->d) * (float) sumi;
        }
    }
    *s = sumf;
}

#if defined(__AVX2__)

// Lane j of group g (16-bit lanes; j < 8 in the low 128 bits, j >= 8 in the high 128 bits) holds element
//     e = 32*(g/2) + 8*(g%2) + (j < 8 ? j : 8 + j)
// so that packus(group 2h, group 2h+1) lists elements 32h .. 32h+31 in order. Its byte and trit follow
// tritpack-common.h; the pshufb index puts that byte in the lane's high half (0x80: zero low half).
#define Z 0x80
static const uint8_t tp1_shuf[3][32] = {
    // groups 0 and 2: bytes 0..7, twice
    { Z, 0, Z, 1, Z, 2, Z, 3, Z, 4, Z, 5, Z, 6, Z, 7,   Z, 0, Z, 1, Z, 2, Z, 3, Z, 4, Z, 5, Z, 6, Z, 7 },
    // group 1: bytes 8..12 then the fifth trits of bytes 0..2 (elements 13..15), 3..5 (29..31)
    { Z, 8, Z, 9, Z,10, Z,11, Z,12, Z, 0, Z, 1, Z, 2,   Z, 8, Z, 9, Z,10, Z,11, Z,12, Z, 3, Z, 4, Z, 5 },
    // group 3: same with bytes 6..8 (elements 45..47) and 9..11 (61..63)
    { Z, 8, Z, 9, Z,10, Z,11, Z,12, Z, 6, Z, 7, Z, 8,   Z, 8, Z, 9, Z,10, Z,11, Z,12, Z, 9, Z,10, Z,11 },
};
#undef Z
static const uint16_t tp1_pow[4][16] = {
    {  1,  1,  1,  1,  1,  1,  1,  1,    3,  3,  3,  3,  3,  3,  3,  3 },
    {  1,  1,  1,  1,  1, 81, 81, 81,    3,  3,  3,  3,  3, 81, 81, 81 },
    {  9,  9,  9,  9,  9,  9,  9,  9,   27, 27, 27, 27, 27, 27, 27, 27 },
    {  9,  9,  9,  9,  9, 81, 81, 81,   27, 27, 27, 27, 27, 81, 81, 81 },
};

// sum of a signed-byte vector's 32 lanes into 8 int32 lanes
static inline __m256i tp1_sum_i8(const __m256i v) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8(1), v);
#elif defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), _mm256_set1_epi8(1), v);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), v), _mm256_set1_epi16(1));
#endif
}

static inline float tp1_hsum_f32_8(const __m256 x) {
    __m128 r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

typedef struct {
    __m256i s0, s1, s2;      // shuffles: groups 0 and 2, group 1, group 3
    __m256i p0, p1, p2, p3;  // powers of 3 per lane, groups 0..3
    __m256i k3, one8;
} tp1_avx2_consts;

// one TP1 block (its 13 trit bytes broadcast to both 128-bit halves of qq) against two Q8_0 blocks
static inline void tp1_block_avx2(const __m256i qq, const tp1_avx2_consts * k, const block_tp1 * xb,
                                  const block_q8_0 * yb, __m256 * acc) {
    const __m256i r02 = _mm256_shuffle_epi8(qq, k->s0);
    const __m256i r1  = _mm256_shuffle_epi8(qq, k->s1);
    const __m256i r3  = _mm256_shuffle_epi8(qq, k->s2);
    const __m256i c0 = _mm256_mulhi_epu16(_mm256_mullo_epi16(r02, k->p0), k->k3);
    const __m256i c1 = _mm256_mulhi_epu16(_mm256_mullo_epi16(r1,  k->p1), k->k3);
    const __m256i c2 = _mm256_mulhi_epu16(_mm256_mullo_epi16(r02, k->p2), k->k3);
    const __m256i c3 = _mm256_mulhi_epu16(_mm256_mullo_epi16(r3,  k->p3), k->k3);
    const __m256i t0 = _mm256_sub_epi8(_mm256_packus_epi16(c0, c1), k->one8);  // trits, elements 0..31
    const __m256i t1 = _mm256_sub_epi8(_mm256_packus_epi16(c2, c3), k->one8);  // elements 32..63
    const __m256i y0 = _mm256_loadu_si256((const __m256i *) yb[0].qs);
    const __m256i y1 = _mm256_loadu_si256((const __m256i *) yb[1].qs);
    const __m256i i0 = tp1_sum_i8(_mm256_sign_epi8(y0, t0));
    const __m256i i1 = tp1_sum_i8(_mm256_sign_epi8(y1, t1));
    // the scales are broadcast straight from memory (ggml's fp16 table on x86): no shuffles needed
    __m256 t = _mm256_mul_ps(_mm256_cvtepi32_ps(i0), _mm256_set1_ps(GGML_CPU_FP16_TO_FP32(yb[0].d)));
#if defined(__FMA__)
    t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i1), _mm256_set1_ps(GGML_CPU_FP16_TO_FP32(yb[1].d)), t);
    *acc = _mm256_fmadd_ps(t, _mm256_set1_ps(tp1_scale(xb)), *acc);
#else
    t = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(i1), _mm256_set1_ps(GGML_CPU_FP16_TO_FP32(yb[1].d))), t);
    *acc = _mm256_add_ps(_mm256_mul_ps(t, _mm256_set1_ps(tp1_scale(xb))), *acc);
#endif
}

#endif // __AVX2__

void ggml_vec_dot_tp1_q8_0(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx,
                           const void * GGML_RESTRICT vy, size_t by, int nrc) {
#if defined(__AVX2__)
    assert(n % QK_TP1 == 0);
    assert(nrc == 1);
    (void) nrc;
    (void) bs;
    (void) bx;
    (void) by;

    const block_tp1  * GGML_RESTRICT x = (const block_tp1 *) vx;
    const block_q8_0 * GGML_RESTRICT y = (const block_q8_0 *) vy;
    const int nb = n / QK_TP1;

    tp1_avx2_consts k;
    k.s0 = _mm256_loadu_si256((const __m256i *) tp1_shuf[0]);
    k.s1 = _mm256_loadu_si256((const __m256i *) tp1_shuf[1]);
    k.s2 = _mm256_loadu_si256((const __m256i *) tp1_shuf[2]);
    k.p0 = _mm256_loadu_si256((const __m256i *) tp1_pow[0]);
    k.p1 = _mm256_loadu_si256((const __m256i *) tp1_pow[1]);
    k.p2 = _mm256_loadu_si256((const __m256i *) tp1_pow[2]);
    k.p3 = _mm256_loadu_si256((const __m256i *) tp1_pow[3]);
    k.k3   = _mm256_set1_epi16(3);
    k.one8 = _mm256_set1_epi8(1);

    __m256 acc0 = _mm256_setzero_ps();
    __m256 acc1 = _mm256_setzero_ps();

    int i = 0;
    // all blocks but the last: a 16-byte load from qs reads the block's 15 bytes and the next one's first
    for (; i + 2 < nb; i += 2) {  // two accumulators: the fmadd chains overlap
        const __m256i q0 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *) x[i].qs));
        const __m256i q1 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *) x[i+1].qs));
        tp1_block_avx2(q0, &k, &x[i],   &y[2*i],     &acc0);
        tp1_block_avx2(q1, &k, &x[i+1], &y[2*(i+1)], &acc1);
    }
    for (; i < nb - 1; ++i) {
        const __m256i qq = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *) x[i].qs));
        tp1_block_avx2(qq, &k, &x[i], &y[2*i], &acc0);
    }
    // the last block: load 16 bytes ending with the block (byte 0 of the vector is the byte before qs)
    // and shift the shuffle indices by one (0x80 + 1 still has the high bit set: still a zero lane)
    if (i < nb) {
        __m128i q;
        if (nb > 1) {
            q = _mm_loadu_si128((const __m128i *) (x[i].qs - 1));
        } else {
            uint8_t tmp[16] = { 0 };
            memcpy(tmp + 1, x[i].qs, sizeof(x[i].qs));
            q = _mm_loadu_si128((const __m128i *) tmp);
        }
        k.s0 = _mm256_add_epi8(k.s0, k.one8);
        k.s1 = _mm256_add_epi8(k.s1, k.one8);
        k.s2 = _mm256_add_epi8(k.s2, k.one8);
        tp1_block_avx2(_mm256_broadcastsi128_si256(q), &k, &x[i], &y[2*i], &acc1);
    }

    *s = tp1_hsum_f32_8(_mm256_add_ps(acc0, acc1));
#else
    ggml_vec_dot_tp1_q8_0_generic(n, s, bs, vx, bx, vy, by, nrc);
#endif
}
