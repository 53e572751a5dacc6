// TP1 CPU kernels (ggml-cpu): from_float, and the dot product with TPQ16 activations (16-bit integers,
// tritpack-common.h says why), and TPQ16's own from_float and dot product.
//
// Decoding a trit is a multiply and a shift (the TQ1_0 trick, tritpack-common.h):
//     c_n = ((uint8_t)(q * 3^n) * 3) >> 8
// The AVX2 path does it in 16-bit lanes with the byte in the high half: _mm256_mullo_epi16(q << 8, 3^n)
// leaves (uint8_t)(q * 3^n) << 8, and _mm256_mulhi_epu16(., 3) is then c_n. One pshufb per group of 16
// elements places the right byte in each lane (the fifth trit of bytes 3g..3g+2 completes group g), the
// power comes from a per-lane constant, and the trit c_n - 1 stays in its 16-bit lane for one
// _mm256_madd_epi16 with 16 activations. No lane reads past the 13 trit bytes; the 16-byte load of a
// row's last block starts one byte early (inside the row) so that it ends where the block ends.

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

void quantize_row_tpq16(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k) {
    quantize_row_tpq16_ref(x, (block_tpq16 *) y, k);
}

// TPQ16 x TPQ16: only so that the type is complete (test-quantize-fns checks every type's dot product);
// nothing multiplies two activation rows this way.
void ggml_vec_dot_tpq16_tpq16(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx,
                              const void * GGML_RESTRICT vy, size_t by, int nrc) {
    assert(n % QK_TPQ16 == 0);
    assert(nrc == 1);
    (void) nrc;
    (void) bs;
    (void) bx;
    (void) by;
    const block_tpq16 * GGML_RESTRICT x = (const block_tpq16 *) vx;
    const block_tpq16 * GGML_RESTRICT y = (const block_tpq16 *) vy;
    float sumf = 0.0f;
    for (int i = 0; i < n / QK_TPQ16; ++i) {
        int64_t sumi = 0;
        for (int j = 0; j < QK_TPQ16; ++j) {
            sumi += (int32_t) x[i].qs[j] * y[i].qs[j];
        }
        sumf += x[i].d * y[i].d * (float) sumi;
    }
    *s = sumf;
}

void ggml_vec_dot_tp1_tpq16_generic(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx,
                                    const void * GGML_RESTRICT vy, size_t by, int nrc) {
    assert(n % QK_TP1 == 0);
    assert(nrc == 1);
    (void) nrc;
    (void) bs;
    (void) bx;
    (void) by;

    static const uint8_t pow3[5] = { 1, 3, 9, 27, 81 };

    const block_tp1   * GGML_RESTRICT x = (const block_tp1 *) vx;
    const block_tpq16 * GGML_RESTRICT y = (const block_tpq16 *) vy;
    const int nb = n / QK_TP1;

    float sumf = 0.0f;
    for (int i = 0; i < nb; ++i) {
        int t[QK_TP1];  // trits -1, 0, +1 in element order
        for (int j = 0; j < 4; ++j) {  // trit j of bytes 0..12: elements 16j .. 16j+12
            for (int m = 0; m < 13; ++m) {
                t[16*j + m] = (((uint8_t) (x[i].qs[m] * pow3[j]) * 3) >> 8) - 1;
            }
        }
        for (int m = 0; m < 12; ++m) {  // trit 4 of bytes 0..11: elements 16k+13 .. 16k+15
            t[16*(m/3) + 13 + m%3] = (((uint8_t) (x[i].qs[m] * pow3[4]) * 3) >> 8) - 1;
        }
        int sumi = 0;  // |sumi| <= 64 * 32767
        for (int j = 0; j < QK_TP1; ++j) {
            sumi += t[j] * y[i].qs[j];
        }
        sumf += tp1_scale(&x[i]) * y[i].d * (float) sumi;
    }
    *s = sumf;
}

// The AVX2 decode of a TP1 block, here and in the repacked kernels (tritpack-gemm.c). Group g
// (g = 0..3) is elements 16g .. 16g+15 in order, one per 16-bit lane: lane j < 13 is trit g of byte j,
// lanes 13..15 are trit 4 of bytes 3g..3g+2. The pshufb index puts that byte in the lane's high half
// (0x80: zero low half); the low 128 bits (lanes 0..7, bytes 0..7) are the same for every group.
#define Z 0x80
#define TP1_LOW Z, 0, Z, 1, Z, 2, Z, 3, Z, 4, Z, 5, Z, 6, Z, 7
const uint8_t tritpack_tp1_shuf[4][32] = {
    { TP1_LOW,   Z, 8, Z, 9, Z,10, Z,11, Z,12, Z, 0, Z, 1, Z, 2 },
    { TP1_LOW,   Z, 8, Z, 9, Z,10, Z,11, Z,12, Z, 3, Z, 4, Z, 5 },
    { TP1_LOW,   Z, 8, Z, 9, Z,10, Z,11, Z,12, Z, 6, Z, 7, Z, 8 },
    { TP1_LOW,   Z, 8, Z, 9, Z,10, Z,11, Z,12, Z, 9, Z,10, Z,11 },
};
#undef TP1_LOW
#undef Z
#define TP1_POW(p) p, p, p, p, p, p, p, p, p, p, p, p, p, 81, 81, 81
const uint16_t tritpack_tp1_pow[4][16] = { { TP1_POW(1) }, { TP1_POW(3) }, { TP1_POW(9) }, { TP1_POW(27) } };
#undef TP1_POW

#if defined(__AVX2__)

static inline float tp1_hsum_f32_8(const __m256 x) {
    __m128 r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

typedef struct {
    __m256i shuf[4];  // per group
    __m256i pow[4];   // powers of 3 per lane, per group
    __m256i k3, one16;
} tp1_avx2_consts;

// group g of a block (its 13 trit bytes broadcast to both 128-bit halves of qq) times 16 activations:
// 8 int32 sums of two products each
static inline __m256i tp1_group_avx2(const __m256i qq, const tp1_avx2_consts * k, const int g, const int16_t * y) {
    const __m256i r = _mm256_shuffle_epi8(qq, k->shuf[g]);
    const __m256i c = _mm256_mulhi_epu16(_mm256_mullo_epi16(r, k->pow[g]), k->k3);  // codes 0..2
    return _mm256_madd_epi16(_mm256_sub_epi16(c, k->one16), _mm256_loadu_si256((const __m256i *) (y + 16*g)));
}

// one TP1 block against one TPQ16 block; |each int32 lane| <= 8 * 32767
static inline void tp1_block_avx2(const __m256i qq, const tp1_avx2_consts * k, const block_tp1 * xb,
                                  const block_tpq16 * yb, __m256 * acc) {
    const __m256i s01 = _mm256_add_epi32(tp1_group_avx2(qq, k, 0, yb->qs), tp1_group_avx2(qq, k, 1, yb->qs));
    const __m256i s23 = _mm256_add_epi32(tp1_group_avx2(qq, k, 2, yb->qs), tp1_group_avx2(qq, k, 3, yb->qs));
    const __m256 sum = _mm256_cvtepi32_ps(_mm256_add_epi32(s01, s23));
    const __m256 d = _mm256_set1_ps(tp1_scale(xb) * yb->d);
#if defined(__FMA__)
    *acc = _mm256_fmadd_ps(sum, d, *acc);
#else
    *acc = _mm256_add_ps(_mm256_mul_ps(sum, d), *acc);
#endif
}

#endif // __AVX2__

void ggml_vec_dot_tp1_tpq16(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx,
                            const void * GGML_RESTRICT vy, size_t by, int nrc) {
#if defined(__AVX2__)
    assert(n % QK_TP1 == 0);
    assert(nrc == 1);
    (void) nrc;
    (void) bs;
    (void) bx;
    (void) by;

    const block_tp1   * GGML_RESTRICT x = (const block_tp1 *) vx;
    const block_tpq16 * GGML_RESTRICT y = (const block_tpq16 *) vy;
    const int nb = n / QK_TP1;

    tp1_avx2_consts k;
    for (int g = 0; g < 4; ++g) {
        k.shuf[g] = _mm256_loadu_si256((const __m256i *) tritpack_tp1_shuf[g]);
        k.pow[g]  = _mm256_loadu_si256((const __m256i *) tritpack_tp1_pow[g]);
    }
    k.k3    = _mm256_set1_epi16(3);
    k.one16 = _mm256_set1_epi16(1);

    __m256 acc0 = _mm256_setzero_ps();
    __m256 acc1 = _mm256_setzero_ps();

    int i = 0;
    // all blocks but the last: a 16-byte load from qs reads the block's 15 bytes and the next one's first
    for (; i + 2 < nb; i += 2) {  // two accumulators: the fmadd chains overlap
        const __m256i q0 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *) x[i].qs));
        const __m256i q1 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *) x[i+1].qs));
        tp1_block_avx2(q0, &k, &x[i],   &y[i],   &acc0);
        tp1_block_avx2(q1, &k, &x[i+1], &y[i+1], &acc1);
    }
    for (; i < nb - 1; ++i) {
        const __m256i qq = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *) x[i].qs));
        tp1_block_avx2(qq, &k, &x[i], &y[i], &acc0);
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
        for (int g = 0; g < 4; ++g) {
            k.shuf[g] = _mm256_add_epi8(k.shuf[g], _mm256_set1_epi8(1));
        }
        tp1_block_avx2(_mm256_broadcastsi128_si256(q), &k, &x[i], &y[i], &acc1);
    }

    *s = tp1_hsum_f32_8(_mm256_add_ps(acc0, acc1));
#else
    ggml_vec_dot_tp1_tpq16_generic(n, s, bs, vx, bx, vy, by, nrc);
#endif
}
