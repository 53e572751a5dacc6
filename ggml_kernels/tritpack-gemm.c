// TP1/TP4 repacked matrix multiplication (ggml-cpu): the in-memory layout that the CPU_TRITPACK buffer
// type (tritpack-repack.cpp) makes at load, and its GEMV/GEMM kernels. The file format is unchanged;
// this layout exists only in memory and has exactly the size of the rows it replaces.
//
// Tiles of 8 rows: for each 64-block index b of a tile, the 8 rows' blocks are stored together
// (block_tp4x8, block_tp1x8), the scales of the 8 rows first (TP4) or last (TP1) so that one 16-byte
// load gives all eight and F16C turns them into one float vector. Tile t holds rows 8t..8t+7; its
// blocks b = 0..nb-1 follow each other, so a tile takes the bytes of its 8 rows.
//
// TP4 multiplies with Q8_0 activations, as its plain vec_dot (tp4-cpu.c) does, and gives the same
// integer sums per 32 weights: sum_i s_i * sum_j cb[q_j] * y_j over the two sub-blocks i of a Q8_0 block.
// The float result adds d_row * d_y * sum in the plain generic vec_dot's order (block by block, first
// half then second), so the repacked product equals ggml_vec_dot_tp4_q8_0_generic's to the bit where
// both are compiled alike, and the AVX2 vec_dot's up to float summation order. A row's 8 int32 lanes
// of one 32-weight half hold sums of 4 products each (lanes 0..3: sub-block 2h, 4..7: sub-block
// 2h+1); two rounds of hadd over the 8 rows leave, per sub-block, one int32 per row, multiplied by the
// 8 rows' sub-block scales (vpermd of a table by the 3-bit codes) and added. The products:
//   - AVX512-VNNI (run-time check): the codebook entries plus 128 as unsigned bytes, vpdpbusd with the
//     activations, started from -128 * (the activations' sums of 4): one instruction per 32 weights;
//   - AVX2: the sign trick, |w| x sign(y, w) by vpmaddubsw (|pair| <= 2*127*127), then vpmaddwd by 1.
// The vpdpbusd is written as inline assembly so that one function body serves both paths, each in
// a function compiled for AVX2 only (no AVX-512 code can leak into the AVX2 path).
//
// TP1 multiplies with TPQ16 activations (int16 and a float scale per 64; tritpack-common.h), as its
// plain vec_dot does, so that it stays exact on ternary models. Its weights are decoded once per tile
// into int16 trits and multiplied with every column by vpmaddwd (vpdpwssd where AVX512-VNNI is there):
// four instructions per 64 weights and column, the decode shared by all columns of a pass.
//
// TP1 GEMV multiplies each row's four vectors with the column and adds the eight rows' lanes (hadd);
// TP1 GEMM transposes the eight rows' vectors so that each product is one vpmaddwd of "pair p of rows
// 0..7" with the column's pair p broadcast, four columns at a time, the lanes being the rows.
//
// The SIMD paths are compiled with the target pragma below and chosen at run time (the CPU's AVX2, FMA
// and F16C; AVX512-VNNI/VL for TP4's vpdpbusd); otherwise the generic path runs. All give the same
// integer block sums.

#define GGML_COMMON_DECL_C
#include "ggml-common.h"

#include "simd-mappings.h"

#include "tritpack-cpu.h"
#include "tritpack-quants.h"
#include "tp4-codebooks.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#define TRITPACK_GEMM_X86 1
#include <immintrin.h>
#endif

#define TP_NR   8   // rows per tile
#define TP_NCOL 32  // columns per pass: their activations stay in L2 while a tile's blocks are decoded

// ggml-cpu's from_float of Q8_0 (quants.h): the activations of TP4's plain vec_dot, the same bytes here
void quantize_row_q8_0(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);

// ---------------------------------------------------------------------------------------------
// repacking
// ---------------------------------------------------------------------------------------------

bool ggml_tritpack_can_repack(enum ggml_type type, int64_t n_per_row, int64_t nrows) {
#if defined(__aarch64__) && defined(__ARM_NEON)
    if (!ggml_tritpack_neon_has(type)) {
        return false;  // ARM64 without a NEON tile kernel for it (tritpack-gemm-neon.c): the plain vec_dot is faster
    }
#endif
    if ((int) type == TRITPACK_TYPE_TP4) {
        return n_per_row % QK_TP4 == 0 && nrows % TP_NR == 0;
    }
    if ((int) type == TRITPACK_TYPE_TP1) {
        return n_per_row % QK_TP1 == 0 && nrows % TP_NR == 0;
    }
    return false;
}

void ggml_tritpack_repack(enum ggml_type type, void * GGML_RESTRICT dst, const void * GGML_RESTRICT src, int64_t nrows,
                          int64_t n_per_row) {
    assert(ggml_tritpack_can_repack(type, n_per_row, nrows));
    if ((int) type == TRITPACK_TYPE_TP4) {
        const int64_t nb = n_per_row / QK_TP4;
        const block_tp4 * x = (const block_tp4 *) src;
        block_tp4x8 * y = (block_tp4x8 *) dst;
        for (int64_t t = 0; t < nrows / TP_NR; ++t) {
            for (int64_t b = 0; b < nb; ++b) {
                block_tp4x8 * yb = y + t*nb + b;
                for (int r = 0; r < TP_NR; ++r) {
                    const block_tp4 * xb = x + (t*TP_NR + r)*nb + b;
                    memcpy(yb->d[r],  xb->d,  2);
                    memcpy(yb->sc[r], xb->sc, 2);
                    memcpy(yb->qs[r], xb->qs, 32);
                }
            }
        }
    } else {
        const int64_t nb = n_per_row / QK_TP1;
        const block_tp1 * x = (const block_tp1 *) src;
        block_tp1x8 * y = (block_tp1x8 *) dst;
        for (int64_t t = 0; t < nrows / TP_NR; ++t) {
            for (int64_t b = 0; b < nb; ++b) {
                block_tp1x8 * yb = y + t*nb + b;
                for (int r = 0; r < TP_NR; ++r) {
                    const block_tp1 * xb = x + (t*TP_NR + r)*nb + b;
                    memcpy(yb->qs[r], xb->qs, 13);
                    memcpy(yb->d[r],  xb->d,  2);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// generic path: natural element order
// ---------------------------------------------------------------------------------------------

static void tp1x8_decode_generic(const block_tp1x8 * xb, int r, int16_t w[64], float * d) {
    static const uint8_t pow3[5] = { 1, 3, 9, 27, 81 };
    for (int j = 0; j < 4; ++j) {
        for (int m = 0; m < 13; ++m) {
            w[16*j + m] = (int16_t) ((((uint8_t) (xb->qs[r][m] * pow3[j]) * 3) >> 8) - 1);
        }
    }
    for (int m = 0; m < 12; ++m) {
        w[16*(m/3) + 13 + m%3] = (int16_t) ((((uint8_t) (xb->qs[r][m] * pow3[4]) * 3) >> 8) - 1);
    }
    *d = GGML_CPU_FP16_TO_FP32(tritpack_scale_bits(xb->d[r]));
}

// TP4 x Q8_0: the expression and order of ggml_vec_dot_tp4_q8_0_generic (tp4-cpu.c), row by row
static void tp4_gemm_generic(int n, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy, size_t by, int ncols,
                             float * GGML_RESTRICT s, size_t bs) {
    const int nb = n / QK_TP4;
    for (int c = 0; c < ncols; ++c) {
        const block_q8_0 * y = (const block_q8_0 *) ((const char *) vy + c*by);
        for (int r = 0; r < TP_NR; ++r) {
            float sumf = 0.0f;
            for (int b = 0; b < nb; ++b) {
                const block_tp4x8 * xb = (const block_tp4x8 *) vx + b;
                const float d = GGML_CPU_FP16_TO_FP32(tritpack_scale_bits(xb->d[r]));
                const unsigned sc = xb->sc[r][0] | ((unsigned) xb->sc[r][1] << 8);
                const int8_t * cb = tp4_codebooks[sc & 15];
                for (int h = 0; h < 2; ++h) {
                    const block_q8_0 * yb = y + 2*b + h;
                    const uint8_t * qs = xb->qs[r];
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
            s[c*bs + r] = sumf;
        }
    }
}

static void tp1_gemm_generic(int n, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy, size_t by, int ncols,
                             float * GGML_RESTRICT s, size_t bs) {
    const int nb = n / 64;
    for (int c = 0; c < ncols; ++c) {
        const block_tpq16 * y = (const block_tpq16 *) ((const char *) vy + c*by);
        float acc[TP_NR] = { 0 };
        for (int b = 0; b < nb; ++b) {
            for (int r = 0; r < TP_NR; ++r) {
                int16_t w[64];
                float d;
                tp1x8_decode_generic((const block_tp1x8 *) vx + b, r, w, &d);
                int32_t sumi = 0;
                for (int j = 0; j < 64; ++j) {
                    sumi += (int32_t) w[j] * y[b].qs[j];
                }
                acc[r] += (float) sumi * (d * y[b].d);
            }
        }
        for (int r = 0; r < TP_NR; ++r) {
            s[c*bs + r] = acc[r];
        }
    }
}

// ---------------------------------------------------------------------------------------------
// AVX2 path
// ---------------------------------------------------------------------------------------------

#if defined(TRITPACK_GEMM_X86)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define TP_DOT(acc, w, y) _mm256_dpwssd_epi32(acc, w, y)
#else
#define TP_DOT(acc, w, y) _mm256_add_epi32(acc, _mm256_madd_epi16(w, y))
#endif

// TP1 decode constants: tritpack_tp1_shuf and tritpack_tp1_pow of tp1-cpu.c (tritpack-cpu.h)

// row r of a TP1 tile block: four int16 vectors of trits, natural order. The 16-byte load reads the
// row's 13 bytes and 3 more of the same tile (the next row's, or the scales after row 7).
static inline __attribute__((always_inline)) void tp1x8_decode_avx2(const block_tp1x8 * xb, int r, __m256i w[4]) {
    const __m256i qq = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *) xb->qs[r]));
    const __m256i k3 = _mm256_set1_epi16(3);
    const __m256i one = _mm256_set1_epi16(1);
#pragma GCC unroll 4
    for (int g = 0; g < 4; ++g) {
        const __m256i t = _mm256_shuffle_epi8(qq, _mm256_loadu_si256((const __m256i *) tritpack_tp1_shuf[g]));
        const __m256i c = _mm256_mulhi_epu16(_mm256_mullo_epi16(t, _mm256_loadu_si256((const __m256i *) tritpack_tp1_pow[g])), k3);
        w[g] = _mm256_sub_epi16(c, one);
    }
}

// eight int32 vectors -> the eight sums, in order
static inline __attribute__((always_inline)) __m256i tp_hsum8_epi32(const __m256i v[8]) {
    const __m256i a = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    const __m256i b = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31));
}

static inline __attribute__((always_inline)) __m256i tp_dot64(const __m256i w[4], const __m256i y[4]) {
    __m256i acc = _mm256_madd_epi16(w[0], y[0]);
    acc = TP_DOT(acc, w[1], y[1]);
    acc = TP_DOT(acc, w[2], y[2]);
    return TP_DOT(acc, w[3], y[3]);
}

// pair p (int16 elements 2p, 2p+1) of an activation block in all eight int32 lanes
static inline __attribute__((always_inline)) __m256i tp_pair(const block_tpq16 * y, int p) {
    int32_t v;
    memcpy(&v, y->qs + 2*p, sizeof(v));
    return _mm256_set1_epi32(v);
}

// vector k of the 8 rows w[r][k] (8 int32 pairs each) -> t[p] = pair p of rows 0..7
static inline __attribute__((always_inline)) void tp_transpose8_epi32(__m256i w[TP_NR][4], int k, __m256i t[8]) {
    const __m256i t0 = _mm256_unpacklo_epi32(w[0][k], w[1][k]), t1 = _mm256_unpackhi_epi32(w[0][k], w[1][k]);
    const __m256i t2 = _mm256_unpacklo_epi32(w[2][k], w[3][k]), t3 = _mm256_unpackhi_epi32(w[2][k], w[3][k]);
    const __m256i t4 = _mm256_unpacklo_epi32(w[4][k], w[5][k]), t5 = _mm256_unpackhi_epi32(w[4][k], w[5][k]);
    const __m256i t6 = _mm256_unpacklo_epi32(w[6][k], w[7][k]), t7 = _mm256_unpackhi_epi32(w[6][k], w[7][k]);
    const __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
    const __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
    const __m256i u4 = _mm256_unpacklo_epi64(t4, t6), u5 = _mm256_unpackhi_epi64(t4, t6);
    const __m256i u6 = _mm256_unpacklo_epi64(t5, t7), u7 = _mm256_unpackhi_epi64(t5, t7);
    t[0] = _mm256_permute2x128_si256(u0, u4, 0x20); t[4] = _mm256_permute2x128_si256(u0, u4, 0x31);
    t[1] = _mm256_permute2x128_si256(u1, u5, 0x20); t[5] = _mm256_permute2x128_si256(u1, u5, 0x31);
    t[2] = _mm256_permute2x128_si256(u2, u6, 0x20); t[6] = _mm256_permute2x128_si256(u2, u6, 0x31);
    t[3] = _mm256_permute2x128_si256(u3, u7, 0x20); t[7] = _mm256_permute2x128_si256(u3, u7, 0x31);
}

static void tp1_gemm_avx2(int n, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy, size_t by, int ncols,
                          float * GGML_RESTRICT s, size_t bs) {
    const int nb = n / 64;
    for (int c0 = 0; c0 < ncols; c0 += TP_NCOL) {
        const int nc = ncols - c0 < TP_NCOL ? ncols - c0 : TP_NCOL;
        __m256 acc[TP_NCOL];
        for (int c = 0; c < nc; ++c) {
            acc[c] = _mm256_setzero_ps();
        }
        for (int b = 0; b < nb; ++b) {
            const __m128i dh = _mm_loadu_si128((const __m128i *) ((const block_tp1x8 *) vx + b)->d);
            const __m256 d8 = _mm256_cvtph_ps(dh);
            if (nc == 1) {
                // GEMV: decode straight into the products
                const block_tpq16 * y = (const block_tpq16 *) ((const char *) vy + c0*by) + b;
                __m256i yv[4], v[8];
                for (int k = 0; k < 4; ++k) {
                    yv[k] = _mm256_loadu_si256((const __m256i *) (y->qs + 16*k));
                }
#pragma GCC unroll 8
                for (int r = 0; r < TP_NR; ++r) {
                    __m256i w[4];
                    tp1x8_decode_avx2((const block_tp1x8 *) vx + b, r, w);
                    v[r] = tp_dot64(w, yv);
                }
                acc[0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(tp_hsum8_epi32(v)), _mm256_mul_ps(d8, _mm256_set1_ps(y->d)), acc[0]);
                continue;
            }
            // GEMM: decode the 8 rows once, then transpose so that vector p holds pair p (elements
            // 2p, 2p+1 in the activations' order) of rows 0..7: a product is then one vpmaddwd of
            // that vector with the column's pair p broadcast, the 8 lanes being the 8 rows
            __m256i wt[32];
            {
                __m256i w[TP_NR][4];
#pragma GCC unroll 8
                for (int r = 0; r < TP_NR; ++r) {
                    tp1x8_decode_avx2((const block_tp1x8 *) vx + b, r, w[r]);
                }
                for (int k = 0; k < 4; ++k) {
                    tp_transpose8_epi32(w, k, wt + 8*k);
                }
            }
            int c = 0;
            for (; c + 4 <= nc; c += 4) {
                const block_tpq16 * y0 = (const block_tpq16 *) ((const char *) vy + (c0 + c + 0)*by) + b;
                const block_tpq16 * y1 = (const block_tpq16 *) ((const char *) vy + (c0 + c + 1)*by) + b;
                const block_tpq16 * y2 = (const block_tpq16 *) ((const char *) vy + (c0 + c + 2)*by) + b;
                const block_tpq16 * y3 = (const block_tpq16 *) ((const char *) vy + (c0 + c + 3)*by) + b;
                // two accumulators per column (even and odd pairs): eight independent chains
                __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
                __m256i e0 = a0, e1 = a0, e2 = a0, e3 = a0;
#pragma GCC unroll 16
                for (int p = 0; p < 32; p += 2) {
                    a0 = TP_DOT(a0, wt[p], tp_pair(y0, p));
                    a1 = TP_DOT(a1, wt[p], tp_pair(y1, p));
                    a2 = TP_DOT(a2, wt[p], tp_pair(y2, p));
                    a3 = TP_DOT(a3, wt[p], tp_pair(y3, p));
                    e0 = TP_DOT(e0, wt[p + 1], tp_pair(y0, p + 1));
                    e1 = TP_DOT(e1, wt[p + 1], tp_pair(y1, p + 1));
                    e2 = TP_DOT(e2, wt[p + 1], tp_pair(y2, p + 1));
                    e3 = TP_DOT(e3, wt[p + 1], tp_pair(y3, p + 1));
                }
                a0 = _mm256_add_epi32(a0, e0);
                a1 = _mm256_add_epi32(a1, e1);
                a2 = _mm256_add_epi32(a2, e2);
                a3 = _mm256_add_epi32(a3, e3);
                acc[c + 0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a0), _mm256_mul_ps(d8, _mm256_set1_ps(y0->d)), acc[c + 0]);
                acc[c + 1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a1), _mm256_mul_ps(d8, _mm256_set1_ps(y1->d)), acc[c + 1]);
                acc[c + 2] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a2), _mm256_mul_ps(d8, _mm256_set1_ps(y2->d)), acc[c + 2]);
                acc[c + 3] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a3), _mm256_mul_ps(d8, _mm256_set1_ps(y3->d)), acc[c + 3]);
            }
            for (; c < nc; ++c) {
                const block_tpq16 * y0 = (const block_tpq16 *) ((const char *) vy + (c0 + c)*by) + b;
                __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
#pragma GCC unroll 8
                for (int p = 0; p < 32; p += 4) {
                    a0 = TP_DOT(a0, wt[p + 0], tp_pair(y0, p + 0));
                    a1 = TP_DOT(a1, wt[p + 1], tp_pair(y0, p + 1));
                    a2 = TP_DOT(a2, wt[p + 2], tp_pair(y0, p + 2));
                    a3 = TP_DOT(a3, wt[p + 3], tp_pair(y0, p + 3));
                }
                a0 = _mm256_add_epi32(_mm256_add_epi32(a0, a1), _mm256_add_epi32(a2, a3));
                acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a0), _mm256_mul_ps(d8, _mm256_set1_ps(y0->d)), acc[c]);
            }
        }
        for (int c = 0; c < nc; ++c) {
            _mm256_storeu_ps(s + (c0 + c)*bs, acc[c]);
        }
    }
}

// quantize_row_tpq16_ref, the same bits: roundf (half away from zero) is truncation plus one where the
// dropped fraction is at least one half
static void tritpack_quantize_tpq16_avx2(const float * GGML_RESTRICT x, block_tpq16 * GGML_RESTRICT y, int64_t k) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 half = _mm256_set1_ps(0.5f);
    const __m256 one  = _mm256_set1_ps(1.0f);
    const __m256 lo   = _mm256_set1_ps(-32767.0f);
    const __m256 hi   = _mm256_set1_ps(32767.0f);
    for (int64_t b = 0; b < k / QK_TPQ16; ++b) {
        const float * xb = x + b*QK_TPQ16;
        __m256 m = _mm256_setzero_ps();
        for (int j = 0; j < QK_TPQ16; j += 8) {
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(xb + j)));
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        const float d  = _mm_cvtss_f32(m4) / 32767.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = d;
        const __m256 vid = _mm256_set1_ps(id);
        for (int j = 0; j < QK_TPQ16; j += 16) {
            __m256i q[2];
            for (int h = 0; h < 2; ++h) {
                __m256 v = _mm256_mul_ps(_mm256_loadu_ps(xb + j + 8*h), vid);
                v = _mm256_min_ps(_mm256_max_ps(v, lo), hi);
                const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
                const __m256 up = _mm256_cmp_ps(_mm256_andnot_ps(sign, _mm256_sub_ps(v, t)), half, _CMP_GE_OQ);
                const __m256 r = _mm256_add_ps(t, _mm256_and_ps(up, _mm256_or_ps(_mm256_and_ps(v, sign), one)));
                q[h] = _mm256_cvtps_epi32(r);
            }
            const __m256i p = _mm256_permute4x64_epi64(_mm256_packs_epi32(q[0], q[1]), 0xd8);
            _mm256_storeu_si256((__m256i *) (y[b].qs + j), p);
        }
    }
}

// ---- TP4 x Q8_0 ----

// acc + the four-byte dot products of unsigned u and signed s per int32 lane (AVX512-VNNI, EVEX
// encoded on ymm0..15): only ever executed where the CPU has it (tritpack_gemm_have_vnni)
static inline __attribute__((always_inline)) __m256i tp_dpbusd(__m256i acc, const __m256i u, const __m256i s) {
    __asm__("vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(u), "x"(s));
    return acc;
}

// rows 0..7, each 8 int32 lanes (0..3: sub-block lo, 4..7: sub-block hi) -> their integer sums per row
// with the sub-block scales (int32 per row) slo, shi applied
static inline __attribute__((always_inline)) __m256i tp4_rows_sum(const __m256i p[TP_NR], const __m256i slo, const __m256i shi) {
    const __m256i a = _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));  // rows 0..3: lo | hi
    const __m256i b = _mm256_hadd_epi32(_mm256_hadd_epi32(p[4], p[5]), _mm256_hadd_epi32(p[6], p[7]));  // rows 4..7: lo | hi
    const __m256i lo = _mm256_permute2x128_si256(a, b, 0x20);
    const __m256i hi = _mm256_permute2x128_si256(a, b, 0x31);
    return _mm256_add_epi32(_mm256_mullo_epi32(lo, slo), _mm256_mullo_epi32(hi, shi));
}

static inline __attribute__((always_inline)) void tp4_gemm_q8(const int vnni, int n, const void * GGML_RESTRICT vx,
                                                              const void * GGML_RESTRICT vy, size_t by, int ncols,
                                                              float * GGML_RESTRICT s, size_t bs) {
    const int nb = n / QK_TP4;
    const __m256i m4   = _mm256_set1_epi8(0x0f);
    const __m256i k80  = _mm256_set1_epi8((char) 0x80);
    const __m256i one  = _mm256_set1_epi16(1);
    const __m256i stbl = _mm256_setr_epi32(TRITPACK_TP4_SCALE(0), TRITPACK_TP4_SCALE(1), TRITPACK_TP4_SCALE(2),
                                           TRITPACK_TP4_SCALE(3), TRITPACK_TP4_SCALE(4), TRITPACK_TP4_SCALE(5),
                                           TRITPACK_TP4_SCALE(6), TRITPACK_TP4_SCALE(7));
    for (int c0 = 0; c0 < ncols; c0 += TP_NCOL) {
        const int nc = ncols - c0 < TP_NCOL ? ncols - c0 : TP_NCOL;
        __m256 acc[TP_NCOL];
        for (int c = 0; c < nc; ++c) {
            acc[c] = _mm256_setzero_ps();
        }
        for (int b = 0; b < nb; ++b) {
            const block_tp4x8 * xb = (const block_tp4x8 *) vx + b;
            const __m256 d8 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) xb->d));
            // the sub-block scales of rows 0..7 (vpermd looks at the low 3 bits of each lane)
            const __m256i sc = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *) xb->sc));
            __m256i sv[TP4_NSUB];
            for (int i = 0; i < TP4_NSUB; ++i) {
                sv[i] = _mm256_permutevar8x32_epi32(stbl, _mm256_srli_epi32(sc, 4 + 3*i));
            }
            // row r, half h (weights 32h..32h+31): VNNI: entry + 128 (unsigned); AVX2: |entry| and entry
            __m256i wa[TP_NR][2], ws[TP_NR][2];
#pragma GCC unroll 8
            for (int r = 0; r < TP_NR; ++r) {
                const unsigned scr = xb->sc[r][0] | ((unsigned) xb->sc[r][1] << 8);
                __m256i cb = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *) tp4_codebooks[scr & 15]));
                if (vnni) {
                    cb = _mm256_xor_si256(cb, k80);
                }
                const __m256i q  = _mm256_loadu_si256((const __m256i *) xb->qs[r]);
                const __m256i w0 = _mm256_shuffle_epi8(cb, _mm256_and_si256(q, m4));
                const __m256i w1 = _mm256_shuffle_epi8(cb, _mm256_and_si256(_mm256_srli_epi16(q, 4), m4));
                if (vnni) {
                    wa[r][0] = w0;
                    wa[r][1] = w1;
                } else {
                    wa[r][0] = _mm256_sign_epi8(w0, w0);
                    wa[r][1] = _mm256_sign_epi8(w1, w1);
                    ws[r][0] = w0;
                    ws[r][1] = w1;
                }
            }
            for (int c = 0; c < nc; ++c) {
                const block_q8_0 * y = (const block_q8_0 *) ((const char *) vy + (c0 + c)*by) + 2*b;
#pragma GCC unroll 2
                for (int h = 0; h < 2; ++h) {
                    const __m256i yv = _mm256_loadu_si256((const __m256i *) y[h].qs);
                    __m256i p[TP_NR];
                    if (vnni) {
                        // sum (w + 128) y - 128 sum y = sum w y
                        const __m256i init = _mm256_sub_epi32(_mm256_setzero_si256(), tp_dpbusd(_mm256_setzero_si256(), k80, yv));
#pragma GCC unroll 8
                        for (int r = 0; r < TP_NR; ++r) {
                            p[r] = tp_dpbusd(init, wa[r][h], yv);
                        }
                    } else {
#pragma GCC unroll 8
                        for (int r = 0; r < TP_NR; ++r) {
                            p[r] = _mm256_madd_epi16(_mm256_maddubs_epi16(wa[r][h], _mm256_sign_epi8(yv, ws[r][h])), one);
                        }
                    }
                    const __m256i isum = tp4_rows_sum(p, sv[2*h], sv[2*h + 1]);
                    const __m256 dd = _mm256_mul_ps(d8, _mm256_set1_ps(GGML_CPU_FP16_TO_FP32(y[h].d)));
                    acc[c] = _mm256_add_ps(acc[c], _mm256_mul_ps(dd, _mm256_cvtepi32_ps(isum)));
                }
            }
        }
        for (int c = 0; c < nc; ++c) {
            _mm256_storeu_ps(s + (c0 + c)*bs, acc[c]);
        }
    }
}

static void tp4_gemm_avx2(int n, const void * vx, const void * vy, size_t by, int ncols, float * s, size_t bs) {
    tp4_gemm_q8(0, n, vx, vy, by, ncols, s, bs);
}

static void tp4_gemm_vnni(int n, const void * vx, const void * vy, size_t by, int ncols, float * s, size_t bs) {
    tp4_gemm_q8(1, n, vx, vy, by, ncols, s, bs);
}

#undef TP_DOT
#pragma GCC pop_options

static int tritpack_gemm_have_avx2(void) {
    static int have = -1;
    if (have < 0) {
        __builtin_cpu_init();
        have = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    }
    return have;
}

// AVX512-VNNI with VL (vpdpbusd on ymm), unless GGML_TRITPACK_NO_VNNI is set (to check the AVX2 path)
static int tritpack_gemm_have_vnni(void) {
    static int have = -1;
    if (have < 0) {
        __builtin_cpu_init();
        have = __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl") && getenv("GGML_TRITPACK_NO_VNNI") == NULL;
    }
    return have;
}
#endif // TRITPACK_GEMM_X86

// ---------------------------------------------------------------------------------------------
// entry points
// ---------------------------------------------------------------------------------------------

bool ggml_tritpack_gemm_simd(void) {
#if defined(TRITPACK_GEMM_X86)
    return tritpack_gemm_have_avx2() && getenv("GGML_TRITPACK_GENERIC") == NULL;
#elif defined(__aarch64__) && defined(__ARM_NEON)
    return getenv("GGML_TRITPACK_GENERIC") == NULL;  // tritpack-gemm-neon.c
#else
    return false;
#endif
}

size_t ggml_tritpack_act_row_size(enum ggml_type type, int64_t n) {
    return (int) type == TRITPACK_TYPE_TP4 ? ggml_row_size(GGML_TYPE_Q8_0, n) : ggml_row_size((enum ggml_type) TRITPACK_TYPE_TPQ16, n);
}

void ggml_tritpack_quantize_act(enum ggml_type type, const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t n, bool simd) {
    if ((int) type == TRITPACK_TYPE_TP4) {
        quantize_row_q8_0(x, y, n);  // what the plain path's vec_dot gets
        return;
    }
#if defined(TRITPACK_GEMM_X86)
    if (simd) {
        tritpack_quantize_tpq16_avx2(x, (block_tpq16 *) y, n);
    } else {
        quantize_row_tpq16_ref(x, (block_tpq16 *) y, n);
    }
#else
    quantize_row_tpq16_ref(x, (block_tpq16 *) y, n);
#endif
    (void) type;
}

void ggml_tritpack_gemm(enum ggml_type type, int n, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy, size_t by,
                        int ncols, float * GGML_RESTRICT s, size_t bs, bool simd) {
    assert(n % 64 == 0);
#if defined(TRITPACK_GEMM_X86)
    if (simd) {
        if ((int) type == TRITPACK_TYPE_TP4) {
            if (tritpack_gemm_have_vnni()) {
                tp4_gemm_vnni(n, vx, vy, by, ncols, s, bs);
            } else {
                tp4_gemm_avx2(n, vx, vy, by, ncols, s, bs);
            }
        } else {
            tp1_gemm_avx2(n, vx, vy, by, ncols, s, bs);
        }
        return;
    }
#elif defined(__aarch64__) && defined(__ARM_NEON)
    if (simd && ggml_tritpack_gemm_neon(type, n, vx, vy, by, ncols, s, bs)) {
        return;
    }
#else
    (void) simd;
#endif
    if ((int) type == TRITPACK_TYPE_TP4) {
        tp4_gemm_generic(n, vx, vy, by, ncols, s, bs);
    } else {
        tp1_gemm_generic(n, vx, vy, by, ncols, s, bs);
    }
}

void ggml_tritpack_mul_mat(enum ggml_type type, int64_t n, int64_t nrows, const void * GGML_RESTRICT repacked, int64_t ncols,
                           const float * GGML_RESTRICT x, float * GGML_RESTRICT dst, bool simd) {
    const size_t by = ggml_tritpack_act_row_size(type, n);
    const size_t row_bytes = (size_t) (n / 64) * ((int) type == TRITPACK_TYPE_TP4 ? sizeof(block_tp4) : sizeof(block_tp1));
    void * y = malloc(by * (size_t) ncols);
    if (!y) {
        return;
    }
    for (int64_t c = 0; c < ncols; ++c) {
        ggml_tritpack_quantize_act(type, x + c*n, (char *) y + c*by, n, simd);
    }
    for (int64_t t = 0; t < nrows / TP_NR; ++t) {
        ggml_tritpack_gemm(type, (int) n, (const char *) repacked + t*TP_NR*row_bytes, y, by, (int) ncols, dst + t*TP_NR, (size_t) nrows, simd);
    }
    free(y);
}
