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
// half then second), so the repacked product equals ggml_vec_dot_tp4_q8_0_generic's up to the rounding
// of each multiply-add (the VNNI kernels fuse it) and the AVX2 vec_dot's up to float summation order
// (tests/test_repack.py bounds both). A row's 8 int32 lanes
// of one 32-weight half hold sums of 4 products each (lanes 0..3: sub-block 2h, 4..7: sub-block
// 2h+1); two rounds of hadd over the 8 rows leave, per sub-block, one int32 per row, multiplied by the
// 8 rows' sub-block scales (vpermd of a table by the 3-bit codes) and added. The products:
//   - one column (the GEMV of decode) with AVX512-VNNI (run-time check), tp4_gemv_vnni: the codebook
//     entries plus 128 as unsigned bytes, one vpdpbusd with the activations per 32 weights, and the
//     128 * (sum of the activations) taken off per sub-block after the hadds, once for the 8 rows;
//     the same body with AVX-VNNI's VEX vpdpbusd (tp4_gemv_avxvnni) for one column where the CPU has
//     AVX-VNNI but AVX-512 is not used (Intel's client cores; 1.24x-1.34x the AVX2 kernel);
//   - a few columns without VNNI, tp4_gemm_avx2: the sign trick, |w| x sign(y, w) by vpmaddubsw
//     (|pair| <= 2*127*127), then vpmaddwd by 1.
// From two columns on, with AVX512-VNNI, tp4_gemm_vnni_cols turns a tile block around once instead
// (rows in the int32 lanes, so no horizontal sums) and reuses it for every column of the pass; with
// AVX-VNNI but not AVX-512, tp4_gemm_avxvnni_cols does the same in VEX form (one 32-weight half at a
// time, the activations broadcast by vpbroadcastd); without VNNI, tp4_gemm_avx2_cols does it from eight
// columns on, with the sign trick. The VNNI kernels need two more things per column, which
// ggml_tritpack_quantize_act stores after the Q8_0 blocks: their scales as float and -128 times the sum
// of each 16 activations (the integer sums per 32 weights are those above).
//
// TP1 multiplies with TPQ16 activations (int16 and a float scale per 64; tritpack-common.h), as its
// plain vec_dot does, so that it stays exact on ternary models; the integer sum of every row block is
// the plain path's, and the float sums are added in the same order as the generic path's. Its tiles
// keep the file's base-3 bytes (five trits a byte, 13 bytes and the fp16 scale per 64 weights: the same
// bytes as the rows), re-encoded at load so that the weights of one byte meet the activations in
// order (the TP1 tile layout section says which weight is where). A kernel places a byte in the high
// half of a 16-bit lane (X = q << 8); mulhi(X, 3) is then the code c = w + 1 (0..2) of its first level
// and X <- 3X (two adds, mod 2^16) moves to the next: per 32 weights one vpmulhuw, two vpaddw and one
// vpdpwssd (zmm) with four activations broadcast per row, no division and no per-level shuffle. The sum
// of c*y is sum w*y + sum y, and each activation block's sum is stored after the column
// (ggml_tritpack_act_row_size), so one subtraction per block and tile corrects it.
//
// TP1 GEMV (one column): AVX-512 (VBMI for the vpermb that spreads the bytes, VNNI for vpdpwssd) with
// 16 int32 lanes = 8 rows x 2 pairs, or AVX2 with two halves of 4 rows; a few columns run the GEMV
// once each. TP1 GEMM decodes a tile block once into 32 vectors "pair p of rows 0..7" (w = c - 1) and
// multiplies each with the column's pair p broadcast, four columns at a time, the lanes being the rows.
// Without AVX-512, TP1's AVX2 GEMV and GEMM take AVX-VNNI's vpdpwssd (VEX, ymm) for their products where
// the CPU has it (Intel's client cores): one instruction for vpmaddwd + vpaddd, measured 1.1x-1.2x for
// the GEMV and 1.7x for a 64-column GEMM (bench/results/cpu-repack-xeon.md).
//
// The SIMD paths are compiled with the target pragma below and chosen at run time (the CPU's AVX2, FMA
// and F16C; AVX512-VNNI/VL for TP4's vpdpbusd; AVX512-F/BW/VBMI/VNNI for TP1's GEMV, a function with
// its own target attribute; AVX-VNNI for TP1's AVX2 kernels and TP4's one-column kernel, inline asm);
// otherwise the generic path runs. All give the same integer block sums. GGML_TRITPACK_NO_VNNI=1 keeps
// to the plain AVX2 paths, GGML_TRITPACK_NO_AVX512=1 to the AVX2 ones with AVX-VNNI,
// GGML_TRITPACK_GENERIC=1 to the generic C.

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
#ifndef TP4_VNNI_COLS
#define TP4_VNNI_COLS 2  // from this many columns on, TP4 decodes a tile block once into the rows-in-lanes form
#endif
#ifndef TP4_AVXVNNI_COLS
#define TP4_AVXVNNI_COLS 2  // likewise with AVX-VNNI (VEX) but not AVX-512 (measured: 1.28x at 2 columns)
#endif
#ifndef TP4_AVX2_COLS
#define TP4_AVX2_COLS 8  // likewise without VNNI (measured: 1.27x at 32 columns, even at 8)
#endif

// ggml-cpu's from_float of Q8_0 (quants.h): the activations of TP4's plain vec_dot, the same bytes here
void quantize_row_q8_0(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);

// ---------------------------------------------------------------------------------------------
// TP1 tile layout
// ---------------------------------------------------------------------------------------------

// The trits of a TP1 row block are re-encoded at load into 13 bytes of five base-3 levels each, in
// the file's byte code (c_n = ((uint8_t)(q * 3^n) * 3) >> 8, level 0 the most significant digit),
// but with the weights placed so that one level of four bytes of a row meets four consecutive
// activations: slot 4k+m (k = 0..2, m = 0..3), level n holds weight 20k + 4n + m; slot 12 holds
// weights 60, 62, 61, 63 at levels 0..3 (pairs (60, 61) and (62, 63) two levels apart) and nothing
// at level 4 (code 1, a zero). The kernels then walk the levels with X <- 3X (mod 2^16) in 16-bit
// lanes that hold a byte in their high half, the digit being mulhi(X, 3).
static inline int tp1x8_weight(int slot, int level) {
    if (slot < 12) {
        return 20*(slot/4) + 4*level + slot%4;
    }
    return level < 4 ? 60 + 2*(level & 1) + (level >> 1) : -1;
}

static inline int tp1_code(uint8_t q, int level) {
    static const uint8_t pow3[5] = { 1, 3, 9, 27, 81 };
    return (((uint8_t) (q * pow3[level])) * 3) >> 8;
}

// the 64 trit codes (0..2) of a plain TP1 block, in element order (tritpack-common.h)
static void tp1_codes(const block_tp1 * xb, uint8_t c[64]) {
    for (int j = 0; j < 4; ++j) {
        for (int m = 0; m < 13; ++m) {
            c[16*j + m] = (uint8_t) tp1_code(xb->qs[m], j);
        }
    }
    for (int m = 0; m < 12; ++m) {
        c[16*(m/3) + 13 + m%3] = (uint8_t) tp1_code(xb->qs[m], 4);
    }
}

// block b of rows 0..7 (x: row 0's block b; rows are nb blocks apart) -> one tile block
static void tp1x8_encode(block_tp1x8 * y, const block_tp1 * x, int64_t nb) {
    for (int r = 0; r < TP_NR; ++r) {
        const block_tp1 * xb = x + r*nb;
        uint8_t c[64];
        tp1_codes(xb, c);
        for (int j = 0; j < 13; ++j) {
            int v = 0;
            for (int n = 0; n < 5; ++n) {
                const int i = tp1x8_weight(j, n);
                v = 3*v + (i >= 0 ? c[i] : 1);
            }
            const uint8_t q = (uint8_t) ((v*256 + 242) / 243);  // ceil(v * 256 / 243), as tp1.c
            if (j < 8) {
                y->qa[r][j] = q;
            } else if (j < 12) {
                y->qb[r][j - 8] = q;
            } else {
                y->qc[r] = q;
            }
        }
        memcpy(y->d[r], xb->d, 2);
    }
}

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
                tp1x8_encode(y + t*nb + b, x + t*TP_NR*nb + b, nb);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// generic path: natural element order
// ---------------------------------------------------------------------------------------------

static void tp1x8_decode_generic(const block_tp1x8 * xb, int r, int16_t w[64], float * d) {
    for (int j = 0; j < 13; ++j) {
        const uint8_t q = j < 8 ? xb->qa[r][j] : j < 12 ? xb->qb[r][j - 8] : xb->qc[r];
        for (int n = 0; n < 5; ++n) {
            const int i = tp1x8_weight(j, n);
            if (i >= 0) {
                w[i] = (int16_t) (tp1_code(q, n) - 1);
            }
        }
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

// vpdpwssd on ymm in its VEX form (AVX-VNNI: Intel's client cores from Alder Lake on, which lack
// AVX-512), as inline asm so that the functions around it keep this file's AVX2 target; run only where
// the CPU has it (tritpack_gemm_have_avxvnni). The same int32 sums as vpmaddwd + vpaddd (a pair of
// int16 products cannot overflow here: the weights are -1..2). TP_DOTV(v, ...) picks it when v is 1,
// a constant in each of the two functions an _impl below is inlined into.
static inline __attribute__((always_inline)) __m256i tp_dpwssd_vex(__m256i acc, const __m256i w, const __m256i y) {
    __asm__("%{vex%} vpdpwssd %2, %1, %0" : "+x"(acc) : "x"(w), "x"(y));
    return acc;
}
#define TP_DOTV(v, acc, w, y) ((v) ? tp_dpwssd_vex(acc, w, y) : TP_DOT(acc, w, y))

// ---- TP1 x TPQ16 ----

// pair p (int16 elements 2p, 2p+1) of an activation block in all eight int32 lanes
static inline __attribute__((always_inline)) __m256i tp_pair(const block_tpq16 * y, int p) {
    int32_t v;
    memcpy(&v, y->qs + 2*p, sizeof(v));
    return _mm256_set1_epi32(v);
}

// four activations (elements 4i..4i+3) in every 64-bit lane
static inline __attribute__((always_inline)) __m256i tp_quad(const block_tpq16 * y, int i) {
    int64_t v;
    memcpy(&v, y->qs + 4*i, sizeof(v));
    return _mm256_set1_epi64x(v);
}

// pshufb indices (per 128-bit lane; 0x80: zero) putting trit bytes in the high halves of 16-bit lanes:
// a 32-byte load of qa rows 4h..4h+3 -> slots 0..3 (chunk 0) or 4..7 (chunk 1) of those rows, four lanes
// per row; qb rows 4h..4h+3 (16 bytes in both halves) -> their slots 8..11; qc (8 bytes in both
// halves) -> slot 12 of rows 0..7 twice per row (words 2r, 2r+1).
#define Z 0x80
static const uint8_t tp1x8_shuf_avx2[4][32] = {
    { Z, 0, Z, 1, Z, 2, Z, 3, Z, 8, Z, 9, Z,10, Z,11,   Z, 0, Z, 1, Z, 2, Z, 3, Z, 8, Z, 9, Z,10, Z,11 },
    { Z, 4, Z, 5, Z, 6, Z, 7, Z,12, Z,13, Z,14, Z,15,   Z, 4, Z, 5, Z, 6, Z, 7, Z,12, Z,13, Z,14, Z,15 },
    { Z, 0, Z, 1, Z, 2, Z, 3, Z, 4, Z, 5, Z, 6, Z, 7,   Z, 8, Z, 9, Z,10, Z,11, Z,12, Z,13, Z,14, Z,15 },
    { Z, 0, Z, 0, Z, 1, Z, 1, Z, 2, Z, 2, Z, 3, Z, 3,   Z, 4, Z, 4, Z, 5, Z, 5, Z, 6, Z, 6, Z, 7, Z, 7 },
};
#undef Z

// slot 12 of rows 0..7: words 2r, 2r+1 = its byte times 1 and 9 (levels 0 and 2), high halves
static inline __attribute__((always_inline)) __m256i tp1x8_slot12_avx2(const block_tp1x8 * xb) {
    int64_t v;
    memcpy(&v, xb->qc, sizeof(v));
    const __m256i q = _mm256_shuffle_epi8(_mm256_set1_epi64x(v), _mm256_loadu_si256((const __m256i *) tp1x8_shuf_avx2[3]));
    return _mm256_mullo_epi16(q, _mm256_set1_epi32(1 | (9 << 16)));
}

// slots 0..3, 4..7, 8..11 (X[0..2]) of rows 4h..4h+3: 16-bit lanes 4r'+m with the byte in the high half
static inline __attribute__((always_inline)) void tp1x8_chunks_avx2(const block_tp1x8 * xb, int h, __m256i X[3]) {
    const __m256i a = _mm256_loadu_si256((const __m256i *) xb->qa[4*h]);
    const __m256i b = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *) xb->qb[4*h]));
    X[0] = _mm256_shuffle_epi8(a, _mm256_loadu_si256((const __m256i *) tp1x8_shuf_avx2[0]));
    X[1] = _mm256_shuffle_epi8(a, _mm256_loadu_si256((const __m256i *) tp1x8_shuf_avx2[1]));
    X[2] = _mm256_shuffle_epi8(b, _mm256_loadu_si256((const __m256i *) tp1x8_shuf_avx2[2]));
}

// X <- 3X: the next base-3 level of every byte (mod 2^16, the low half stays zero)
static inline __attribute__((always_inline)) __m256i tp_times3(const __m256i x) {
    return _mm256_add_epi16(_mm256_add_epi16(x, x), x);
}

// the column sums of the activations (ggml_tritpack_quantize_act appends them to a TP1 column)
static inline const int32_t * tp1_act_sums(const void * y, int nb) {
    return (const int32_t *) ((const char *) y + (size_t) nb*sizeof(block_tpq16));
}

// GEMV: the codes c = w + 1 (0..2) straight into the products; sum c*y - sum y = sum w*y per row block
static inline __attribute__((always_inline)) void tp1_gemv_avx2_impl(int n, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy,
                                                                      float * GGML_RESTRICT s, const int vnni) {
    const int nb = n / 64;
    const block_tp1x8 * x = (const block_tp1x8 *) vx;
    const block_tpq16 * y = (const block_tpq16 *) vy;
    const int32_t * ysum = tp1_act_sums(vy, nb);
    const __m256i k3 = _mm256_set1_epi16(3);
    __m256 acc = _mm256_setzero_ps();
    for (int b = 0; b < nb; ++b) {
        const block_tp1x8 * xb = x + b;
        const block_tpq16 * yb = y + b;
        __m256i a[2];
        for (int h = 0; h < 2; ++h) {
            __m256i X[3];
            tp1x8_chunks_avx2(xb, h, X);
            __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0;
#pragma GCC unroll 5
            for (int l = 0; l < 5; ++l) {
                a0 = TP_DOTV(vnni, a0, _mm256_mulhi_epu16(X[0], k3), tp_quad(yb, l));
                a1 = TP_DOTV(vnni, a1, _mm256_mulhi_epu16(X[1], k3), tp_quad(yb, 5 + l));
                a2 = TP_DOTV(vnni, a2, _mm256_mulhi_epu16(X[2], k3), tp_quad(yb, 10 + l));
                if (l < 4) {
                    X[0] = tp_times3(X[0]);
                    X[1] = tp_times3(X[1]);
                    X[2] = tp_times3(X[2]);
                }
            }
            a[h] = _mm256_add_epi32(_mm256_add_epi32(a0, a1), a2);  // lanes (row 4h + r', pair s)
        }
        __m256i XC = tp1x8_slot12_avx2(xb);
        __m256i ac = _mm256_madd_epi16(_mm256_mulhi_epu16(XC, k3), tp_pair(yb, 30));
        XC = tp_times3(XC);
        ac = TP_DOTV(vnni, ac, _mm256_mulhi_epu16(XC, k3), tp_pair(yb, 31));
        // hadd: rows 0, 1, 4, 5 | 2, 3, 6, 7 -> rows 0..7
        __m256i rows = _mm256_permute4x64_epi64(_mm256_hadd_epi32(a[0], a[1]), 0xd8);
        rows = _mm256_sub_epi32(_mm256_add_epi32(rows, ac), _mm256_set1_epi32(ysum[b]));
        const __m256 d8 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) xb->d));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(rows), _mm256_mul_ps(d8, _mm256_set1_ps(yb->d)), acc);
    }
    _mm256_storeu_ps(s, acc);
}

// GEMM decode: the weights w (-1..1) of a tile block as 32 vectors wt[p] = pair p (elements 2p, 2p+1
// of the activations) of rows 0..7, one row per int32 lane
static inline __attribute__((always_inline)) void tp1x8_decode_pairs_avx2(const block_tp1x8 * xb, __m256i wt[32]) {
    const __m256i k3 = _mm256_set1_epi16(3);
    const __m256i one = _mm256_set1_epi16(1);
    const __m256i even_odd = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    __m256i X[2][3];
    tp1x8_chunks_avx2(xb, 0, X[0]);
    tp1x8_chunks_avx2(xb, 1, X[1]);
#pragma GCC unroll 3
    for (int k = 0; k < 3; ++k) {
#pragma GCC unroll 5
        for (int l = 0; l < 5; ++l) {
            // lanes (row, pair s) of rows 0..3 and 4..7 -> pairs 2(5k+l) + s of rows 0..7
            const __m256i lo = _mm256_permutevar8x32_epi32(_mm256_sub_epi16(_mm256_mulhi_epu16(X[0][k], k3), one), even_odd);
            const __m256i hi = _mm256_permutevar8x32_epi32(_mm256_sub_epi16(_mm256_mulhi_epu16(X[1][k], k3), one), even_odd);
            wt[2*(5*k + l) + 0] = _mm256_permute2x128_si256(lo, hi, 0x20);
            wt[2*(5*k + l) + 1] = _mm256_permute2x128_si256(lo, hi, 0x31);
            X[0][k] = tp_times3(X[0][k]);
            X[1][k] = tp_times3(X[1][k]);
        }
    }
    __m256i XC = tp1x8_slot12_avx2(xb);
    wt[30] = _mm256_sub_epi16(_mm256_mulhi_epu16(XC, k3), one);
    wt[31] = _mm256_sub_epi16(_mm256_mulhi_epu16(tp_times3(XC), k3), one);
}

static inline __attribute__((always_inline)) void tp1_gemm_avx2_impl(int n, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy,
                                                                      size_t by, int ncols, float * GGML_RESTRICT s, size_t bs, const int vnni) {
    if (ncols < 3) {
        for (int c = 0; c < ncols; ++c) {
            tp1_gemv_avx2_impl(n, vx, (const char *) vy + c*by, s + c*bs, vnni);
        }
        return;
    }
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
            // vector p holds pair p (elements 2p, 2p+1 in the activations' order) of rows 0..7: a
            // product is one vpmaddwd of that vector with the column's pair p broadcast, the 8 lanes
            // being the 8 rows
            __m256i wt[32];
            tp1x8_decode_pairs_avx2((const block_tp1x8 *) vx + b, wt);
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
                    a0 = TP_DOTV(vnni, a0, wt[p], tp_pair(y0, p));
                    a1 = TP_DOTV(vnni, a1, wt[p], tp_pair(y1, p));
                    a2 = TP_DOTV(vnni, a2, wt[p], tp_pair(y2, p));
                    a3 = TP_DOTV(vnni, a3, wt[p], tp_pair(y3, p));
                    e0 = TP_DOTV(vnni, e0, wt[p + 1], tp_pair(y0, p + 1));
                    e1 = TP_DOTV(vnni, e1, wt[p + 1], tp_pair(y1, p + 1));
                    e2 = TP_DOTV(vnni, e2, wt[p + 1], tp_pair(y2, p + 1));
                    e3 = TP_DOTV(vnni, e3, wt[p + 1], tp_pair(y3, p + 1));
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
                    a0 = TP_DOTV(vnni, a0, wt[p + 0], tp_pair(y0, p + 0));
                    a1 = TP_DOTV(vnni, a1, wt[p + 1], tp_pair(y0, p + 1));
                    a2 = TP_DOTV(vnni, a2, wt[p + 2], tp_pair(y0, p + 2));
                    a3 = TP_DOTV(vnni, a3, wt[p + 3], tp_pair(y0, p + 3));
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

// the AVX2 kernels as such, and with AVX-VNNI's vpdpwssd for the products (the same sums)
static void tp1_gemm_avx2(int n, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy, size_t by, int ncols,
                          float * GGML_RESTRICT s, size_t bs) {
    tp1_gemm_avx2_impl(n, vx, vy, by, ncols, s, bs, 0);
}

static void tp1_gemm_avxvnni(int n, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy, size_t by, int ncols,
                             float * GGML_RESTRICT s, size_t bs) {
    tp1_gemm_avx2_impl(n, vx, vy, by, ncols, s, bs, 1);
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

// the sub-block scales of rows 0..7 of a tile block, one vector per sub-block (int32 lane r = row r):
// TRITPACK_TP4_SCALE of each 3-bit code (vpermd looks at the low 3 bits of each lane)
static inline __attribute__((always_inline)) void tp4x8_sub_scales(const block_tp4x8 * xb, __m256i sv[TP4_NSUB]) {
    const __m256i stbl = _mm256_setr_epi32(TRITPACK_TP4_SCALE(0), TRITPACK_TP4_SCALE(1), TRITPACK_TP4_SCALE(2),
                                           TRITPACK_TP4_SCALE(3), TRITPACK_TP4_SCALE(4), TRITPACK_TP4_SCALE(5),
                                           TRITPACK_TP4_SCALE(6), TRITPACK_TP4_SCALE(7));
    const __m256i sc = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *) xb->sc));
    for (int i = 0; i < TP4_NSUB; ++i) {
        sv[i] = _mm256_permutevar8x32_epi32(stbl, _mm256_srli_epi32(sc, 4 + 3*i));
    }
}

// rows 0..7, each 8 int32 lanes (0..3: sub-block lo, 4..7: sub-block hi) -> per sub-block one int32 per row
static inline __attribute__((always_inline)) void tp4_rows_lohi(const __m256i p[TP_NR], __m256i * lo, __m256i * hi) {
    const __m256i a = _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));  // rows 0..3: lo | hi
    const __m256i b = _mm256_hadd_epi32(_mm256_hadd_epi32(p[4], p[5]), _mm256_hadd_epi32(p[6], p[7]));  // rows 4..7: lo | hi
    *lo = _mm256_permute2x128_si256(a, b, 0x20);
    *hi = _mm256_permute2x128_si256(a, b, 0x31);
}

// the same with the sub-block scales (int32 per row) slo, shi applied: the integer sums per row
static inline __attribute__((always_inline)) __m256i tp4_rows_sum(const __m256i p[TP_NR], const __m256i slo, const __m256i shi) {
    __m256i lo, hi;
    tp4_rows_lohi(p, &lo, &hi);
    return _mm256_add_epi32(_mm256_mullo_epi32(lo, slo), _mm256_mullo_epi32(hi, shi));
}

// the 8 rows of a tile block looked up in their codebooks, w[h][r] = row r's weights 32h..32h+31 as bytes:
// the entries xor `flip` (0x80: the entry plus 128 as an unsigned byte, for vpdpbusd; 0: the entry)
static inline __attribute__((always_inline)) void tp4x8_entries(const block_tp4x8 * xb, const __m256i flip, __m256i w[2][TP_NR]) {
    const __m256i m4 = _mm256_set1_epi8(0x0f);
#pragma GCC unroll 8
    for (int r = 0; r < TP_NR; ++r) {
        const unsigned scr = xb->sc[r][0] | ((unsigned) xb->sc[r][1] << 8);
        const __m256i cb = _mm256_xor_si256(
            _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *) tp4_codebooks[scr & 15])), flip);
        const __m256i q = _mm256_loadu_si256((const __m256i *) xb->qs[r]);
        w[0][r] = _mm256_shuffle_epi8(cb, _mm256_and_si256(q, m4));
        w[1][r] = _mm256_shuffle_epi8(cb, _mm256_and_si256(_mm256_srli_epi16(q, 4), m4));
    }
}

// TP4 x Q8_0, a few columns, AVX2 without VNNI: row by row, |entry| by vpmaddubsw with sign(y, entry)
static void tp4_gemm_avx2(int n, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy, size_t by, int ncols,
                          float * GGML_RESTRICT s, size_t bs) {
    const int nb = n / QK_TP4;
    const __m256i one  = _mm256_set1_epi16(1);
    for (int c0 = 0; c0 < ncols; c0 += TP_NCOL) {
        const int nc = ncols - c0 < TP_NCOL ? ncols - c0 : TP_NCOL;
        __m256 acc[TP_NCOL];
        for (int c = 0; c < nc; ++c) {
            acc[c] = _mm256_setzero_ps();
        }
        for (int b = 0; b < nb; ++b) {
            const block_tp4x8 * xb = (const block_tp4x8 *) vx + b;
            const __m256 d8 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) xb->d));
            __m256i sv[TP4_NSUB];
            tp4x8_sub_scales(xb, sv);
            // half h (weights 32h..32h+31), row r: the entry and its absolute value
            __m256i ws[2][TP_NR], wa[2][TP_NR];
            tp4x8_entries(xb, _mm256_setzero_si256(), ws);
#pragma GCC unroll 8
            for (int r = 0; r < TP_NR; ++r) {
                wa[0][r] = _mm256_sign_epi8(ws[0][r], ws[0][r]);
                wa[1][r] = _mm256_sign_epi8(ws[1][r], ws[1][r]);
            }
            for (int c = 0; c < nc; ++c) {
                const block_q8_0 * y = (const block_q8_0 *) ((const char *) vy + (c0 + c)*by) + 2*b;
#pragma GCC unroll 2
                for (int h = 0; h < 2; ++h) {
                    const __m256i yv = _mm256_loadu_si256((const __m256i *) y[h].qs);
                    __m256i p[TP_NR];
#pragma GCC unroll 8
                    for (int r = 0; r < TP_NR; ++r) {
                        p[r] = _mm256_madd_epi16(_mm256_maddubs_epi16(wa[h][r], _mm256_sign_epi8(yv, ws[h][r])), one);
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

// 8 vectors of 8 int32 (one per row) -> t[k] = int32 k of rows 0..7 (AVX2; the VNNI kernels below use it too)
static inline __attribute__((always_inline)) void tp_transpose8x8_epi32(const __m256i w[TP_NR], __m256i t[8]) {
    const __m256i t0 = _mm256_unpacklo_epi32(w[0], w[1]), t1 = _mm256_unpackhi_epi32(w[0], w[1]);
    const __m256i t2 = _mm256_unpacklo_epi32(w[2], w[3]), t3 = _mm256_unpackhi_epi32(w[2], w[3]);
    const __m256i t4 = _mm256_unpacklo_epi32(w[4], w[5]), t5 = _mm256_unpackhi_epi32(w[4], w[5]);
    const __m256i t6 = _mm256_unpacklo_epi32(w[6], w[7]), t7 = _mm256_unpackhi_epi32(w[6], w[7]);
    const __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
    const __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
    const __m256i u4 = _mm256_unpacklo_epi64(t4, t6), u5 = _mm256_unpackhi_epi64(t4, t6);
    const __m256i u6 = _mm256_unpacklo_epi64(t5, t7), u7 = _mm256_unpackhi_epi64(t5, t7);
    t[0] = _mm256_permute2x128_si256(u0, u4, 0x20); t[4] = _mm256_permute2x128_si256(u0, u4, 0x31);
    t[1] = _mm256_permute2x128_si256(u1, u5, 0x20); t[5] = _mm256_permute2x128_si256(u1, u5, 0x31);
    t[2] = _mm256_permute2x128_si256(u2, u6, 0x20); t[6] = _mm256_permute2x128_si256(u2, u6, 0x31);
    t[3] = _mm256_permute2x128_si256(u3, u7, 0x20); t[7] = _mm256_permute2x128_si256(u3, u7, 0x31);
}

// TP4 x Q8_0, several columns, AVX2 (no VNNI): the rows in the lanes as in tp4_gemm_vnni_cols below, with the
// sign trick per 4 weights (|w| by vpmaddubsw with sign(y, w), |pair| <= 2*127*127) and the sub-block scale
// applied by the vpmaddwd that widens the pairs (int16 s in both halves of row r's lane), so that the
// two sub-blocks of a Q8_0 block share one accumulator: no hadd, no vpmulld, no bias
static void tp4_gemm_avx2_cols(int n, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy, size_t by, int ncols,
                               float * GGML_RESTRICT s, size_t bs) {
    const int nb = n / QK_TP4;
    const size_t q8 = (size_t) (n / QK8_0) * sizeof(block_q8_0);  // then the float scales (tritpack_quantize_act)
    const __m256i lo16 = _mm256_set1_epi32(0xffff);
    for (int c0 = 0; c0 < ncols; c0 += TP_NCOL) {
        const int nc = ncols - c0 < TP_NCOL ? ncols - c0 : TP_NCOL;
        __m256 acc[TP_NCOL];
        for (int c = 0; c < nc; ++c) {
            acc[c] = _mm256_setzero_ps();
        }
        for (int b = 0; b < nb; ++b) {
            const block_tp4x8 * xb = (const block_tp4x8 *) vx + b;
            const __m256 d8 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) xb->d));
            __m256i sv[TP4_NSUB];
            tp4x8_sub_scales(xb, sv);
            for (int i = 0; i < TP4_NSUB; ++i) {
                sv[i] = _mm256_or_si256(_mm256_and_si256(sv[i], lo16), _mm256_slli_epi32(sv[i], 16));
            }
            // W[8h + k]: lane r = weights 32h + 4k .. 32h + 4k + 3 of row r; A: their absolute values
            __m256i W[16], A[16];
            {
                __m256i u[2][TP_NR];
                tp4x8_entries(xb, _mm256_setzero_si256(), u);
                tp_transpose8x8_epi32(u[0], W);
                tp_transpose8x8_epi32(u[1], W + 8);
                for (int k = 0; k < 16; ++k) {
                    A[k] = _mm256_sign_epi8(W[k], W[k]);
                }
            }
            for (int c = 0; c < nc; ++c) {
                const char * yc = (const char *) vy + (size_t) (c0 + c)*by;
                const block_q8_0 * y = (const block_q8_0 *) yc + 2*b;
                const float * yd = (const float *) (yc + q8) + 2*b;
                _mm_prefetch((const char *) (y + 2), _MM_HINT_T0);
                _mm_prefetch((const char *) (y + 2) + 64, _MM_HINT_T0);
#pragma GCC unroll 2
                for (int h = 0; h < 2; ++h) {
                    __m256i a = _mm256_setzero_si256();
#pragma GCC unroll 8
                    for (int k = 0; k < 8; ++k) {
                        int32_t v;
                        memcpy(&v, y[h].qs + 4*k, sizeof(v));
                        const __m256i p = _mm256_maddubs_epi16(A[8*h + k], _mm256_sign_epi8(_mm256_set1_epi32(v), W[8*h + k]));
                        a = _mm256_add_epi32(a, _mm256_madd_epi16(p, sv[2*h + k/4]));
                    }
                    acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a), _mm256_mul_ps(d8, _mm256_broadcast_ss(yd + h)), acc[c]);
                }
            }
        }
        for (int c = 0; c < nc; ++c) {
            _mm256_storeu_ps(s + (c0 + c)*bs, acc[c]);
        }
    }
}

// acc + the products of the unsigned bytes u and the signed bytes v, four to an int32 lane: vpdpbusd on
// ymm in its EVEX form (AVX512-VNNI/VL) or its VEX form (AVX-VNNI), as inline asm so that one body
// (tp4_gemv_vnni_impl) serves both; inlined into the AVX-512 function, "v" lets the EVEX form use ymm16-31
static inline __attribute__((always_inline)) __m256i tp_dpbusd(__m256i acc, const __m256i u, const __m256i v, const int vex) {
    if (vex) {
        __asm__("%{vex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(u), "x"(v));
    } else {
        __asm__("%{evex%} vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u), "v"(v));
    }
    return acc;
}

// TP4 x Q8_0, one column (decode), AVX512-VNNI or AVX-VNNI: row by row as tp4_gemm_avx2 (a row's halves of 32 weights
// looked up in its codebook plus 128, unsigned), each multiplied with the column's Q8_0 block by one
// vpdpbusd from zero; the 128 * (sum of the activations) that the unsigned entries add is taken off
// after the lanes are summed, per sub-block and once for all 8 rows (the -128 * sums of 16 that
// ggml_tritpack_quantize_act stores), before the sub-block scales multiply. Against the former
// version (the AVX2 kernel's body with vpdpbusd, each row's accumulator started from the bias):
// 282 us instead of 320 us for 2048 x 5632 on one thread (bench/repack-matvec.cpp; Q4_0 repacked 312).
static inline __attribute__((always_inline)) void tp4_gemv_vnni_impl(int n, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy,
                                                                      float * GGML_RESTRICT s, const int vex) {
    const int nb = n / QK_TP4;
    const block_q8_0 * y = (const block_q8_0 *) vy;
    const float * yd = (const float *) ((const char *) vy + (size_t) (n / QK8_0) * sizeof(block_q8_0));
    const int32_t * ybias = (const int32_t *) (yd + n / QK8_0);
    const __m256i k80 = _mm256_set1_epi8((char) 0x80);
    __m256 acc = _mm256_setzero_ps();
    for (int b = 0; b < nb; ++b) {
        const block_tp4x8 * xb = (const block_tp4x8 *) vx + b;
        const __m256 d8 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) xb->d));
        __m256i sv[TP4_NSUB];
        tp4x8_sub_scales(xb, sv);
        __m256i w[2][TP_NR];
        tp4x8_entries(xb, k80, w);
#pragma GCC unroll 2
        for (int h = 0; h < 2; ++h) {
            const __m256i yv = _mm256_loadu_si256((const __m256i *) y[2*b + h].qs);
            __m256i p[TP_NR];
#pragma GCC unroll 8
            for (int r = 0; r < TP_NR; ++r) {
                p[r] = tp_dpbusd(_mm256_setzero_si256(), w[h][r], yv, vex);
            }
            __m256i lo, hi;
            tp4_rows_lohi(p, &lo, &hi);
            lo = _mm256_add_epi32(lo, _mm256_set1_epi32(ybias[4*b + 2*h]));
            hi = _mm256_add_epi32(hi, _mm256_set1_epi32(ybias[4*b + 2*h + 1]));
            const __m256i isum = _mm256_add_epi32(_mm256_mullo_epi32(lo, sv[2*h]), _mm256_mullo_epi32(hi, sv[2*h + 1]));
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(d8, _mm256_broadcast_ss(yd + 2*b + h)), acc);
        }
    }
    _mm256_storeu_ps(s, acc);
}

static void tp4_gemv_avxvnni(int n, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy, float * GGML_RESTRICT s) {
    tp4_gemv_vnni_impl(n, vx, vy, s, 1);
}

// TP4 x Q8_0, several columns, AVX-VNNI without AVX-512 (Intel's client cores): tp4_gemm_vnni_cols below
// in VEX form, which has 16 registers and no broadcast from memory: a tile block's rows-in-lanes vectors
// are made one 32-weight half at a time (8 of them, in registers for every column of the pass), and
// each four activations are broadcast by vpbroadcastd. A body of its own: this loop order with EVEX
// operands, as one body for both, made the AVX-512 kernel 3%-5% slower (2 to 64 columns), which keeps
// both halves' 16 vectors in registers and the products of two halves interleaved
static void tp4_gemm_avxvnni_cols(int n, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy, size_t by, int ncols,
                                  float * GGML_RESTRICT s, size_t bs) {
    const int nb = n / QK_TP4;
    const size_t q8 = (size_t) (n / QK8_0) * sizeof(block_q8_0);  // then float d[n/32], int32 -128*sums[n/16]
    const __m256i k80  = _mm256_set1_epi8((char) 0x80);
    for (int c0 = 0; c0 < ncols; c0 += TP_NCOL) {
        const int nc = ncols - c0 < TP_NCOL ? ncols - c0 : TP_NCOL;
        __m256 acc[TP_NCOL];
        for (int c = 0; c < nc; ++c) {
            acc[c] = _mm256_setzero_ps();
        }
        for (int b = 0; b < nb; ++b) {
            const block_tp4x8 * xb = (const block_tp4x8 *) vx + b;
            const __m256 d8 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) xb->d));
            __m256i sv[TP4_NSUB];
            tp4x8_sub_scales(xb, sv);
            __m256i u[2][TP_NR];
            tp4x8_entries(xb, k80, u);
#pragma GCC unroll 1
            for (int h = 0; h < 2; ++h) {
                // V[k]: lane r = weights 32h + 4k .. 32h + 4k + 3 of row r, plus 128
                __m256i V[8];
                tp_transpose8x8_epi32(u[h], V);
                for (int c = 0; c < nc; ++c) {
                    const char * yc = (const char *) vy + (size_t) (c0 + c)*by;
                    const block_q8_0 * y = (const block_q8_0 *) yc + 2*b + h;
                    const float * yd = (const float *) (yc + q8) + 2*b + h;
                    const int32_t * yb = (const int32_t *) (yc + q8 + (size_t) (n / QK8_0)*sizeof(float)) + 4*b + 2*h;
                    _mm_prefetch((const char *) (y + 2), _MM_HINT_T0);
                    __m256i a0 = _mm256_set1_epi32(yb[0]);
                    __m256i a1 = _mm256_set1_epi32(yb[1]);
#pragma GCC unroll 4
                    for (int k = 0; k < 4; ++k) {
                        int32_t v0, v1;
                        memcpy(&v0, y->qs + 4*k, sizeof(v0));
                        memcpy(&v1, y->qs + 16 + 4*k, sizeof(v1));
                        a0 = tp_dpbusd(a0, V[k],     _mm256_set1_epi32(v0), 1);
                        a1 = tp_dpbusd(a1, V[4 + k], _mm256_set1_epi32(v1), 1);
                    }
                    const __m256i isum = _mm256_add_epi32(_mm256_mullo_epi32(a0, sv[2*h]), _mm256_mullo_epi32(a1, sv[2*h + 1]));
                    acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(d8, _mm256_broadcast_ss(yd)), acc[c]);
                }
            }
        }
        for (int c = 0; c < nc; ++c) {
            _mm256_storeu_ps(s + (c0 + c)*bs, acc[c]);
        }
    }
}

#undef TP_DOT
#undef TP_DOTV
#pragma GCC pop_options

// ---- TP4 x Q8_0, several columns: AVX512-VNNI with the rows in the lanes ----
//
// For a batch the 8 rows' blocks are decoded once per tile block into sixteen vectors V_k whose int32
// lane r holds weights 4k..4k+3 of row r (the entry plus 128, unsigned), so that one vpdpbusd with
// four activations broadcast from memory (the EVEX {1to8} form) adds four products to each of the
// 8 rows at once: 16 instructions per 64 weights, 8 rows and column, and no horizontal sums. The
// 128 * (sum of the activations) that the unsigned weights add is taken off by starting each
// sub-block's accumulator from -128 * the sum of its 16 activations, which ggml_tritpack_quantize_act
// stores after the column's Q8_0 blocks (with their scales as float), so a column costs no more than
// its products, two vpmulld by the sub-block scales per Q8_0 block and one FMA.
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")


// acc + the products of the unsigned bytes u with the four signed bytes at p, broadcast (the {1to8} memory
// form, one instruction: the compiler would load the broadcast separately)
static inline __attribute__((always_inline)) __m256i tp4_dpbusd_bcst(__m256i acc, const __m256i u, const void * p) {
    __asm__("vpdpbusd %2%{1to8%}, %1, %0" : "+v"(acc) : "v"(u), "m"(*(const int32_t *) p));
    return acc;
}

static void tp4_gemm_vnni_cols(int n, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy, size_t by, int ncols,
                               float * GGML_RESTRICT s, size_t bs) {
    const int nb = n / QK_TP4;
    const size_t q8 = (size_t) (n / QK8_0) * sizeof(block_q8_0);  // then float d[n/32], int32 -128*sums[n/16]
    const __m256i k80  = _mm256_set1_epi8((char) 0x80);
    for (int c0 = 0; c0 < ncols; c0 += TP_NCOL) {
        const int nc = ncols - c0 < TP_NCOL ? ncols - c0 : TP_NCOL;
        __m256 acc[TP_NCOL];
        for (int c = 0; c < nc; ++c) {
            acc[c] = _mm256_setzero_ps();
        }
        for (int b = 0; b < nb; ++b) {
            const block_tp4x8 * xb = (const block_tp4x8 *) vx + b;
            const __m256 d8 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) xb->d));
            __m256i sv[TP4_NSUB];
            tp4x8_sub_scales(xb, sv);
            // V[8h + k]: lane r = weights 32h + 4k .. 32h + 4k + 3 of row r, plus 128
            __m256i V[16];
            {
                __m256i u[2][TP_NR];
                tp4x8_entries(xb, k80, u);
                tp_transpose8x8_epi32(u[0], V);
                tp_transpose8x8_epi32(u[1], V + 8);
            }
            for (int c = 0; c < nc; ++c) {
                const char * yc = (const char *) vy + (size_t) (c0 + c)*by;
                const block_q8_0 * y = (const block_q8_0 *) yc + 2*b;
                const float * yd = (const float *) (yc + q8) + 2*b;
                const int32_t * yb = (const int32_t *) (yc + q8 + (size_t) (n / QK8_0)*sizeof(float)) + 4*b;
                // the column's next two Q8_0 blocks: 32 columns of a pass are too many streams for the
                // hardware prefetcher (+5% at n = 5632)
                _mm_prefetch((const char *) (y + 2), _MM_HINT_T0);
                _mm_prefetch((const char *) (y + 2) + 64, _MM_HINT_T0);
#pragma GCC unroll 2
                for (int h = 0; h < 2; ++h) {
                    __m256i a0 = _mm256_set1_epi32(yb[2*h + 0]);
                    __m256i a1 = _mm256_set1_epi32(yb[2*h + 1]);
#pragma GCC unroll 4
                    for (int k = 0; k < 4; ++k) {
                        a0 = tp4_dpbusd_bcst(a0, V[8*h + k],     y[h].qs + 4*k);
                        a1 = tp4_dpbusd_bcst(a1, V[8*h + 4 + k], y[h].qs + 16 + 4*k);
                    }
                    const __m256i isum = _mm256_add_epi32(_mm256_mullo_epi32(a0, sv[2*h]), _mm256_mullo_epi32(a1, sv[2*h + 1]));
                    acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(d8, _mm256_broadcast_ss(yd + h)), acc[c]);
                }
            }
        }
        for (int c = 0; c < nc; ++c) {
            _mm256_storeu_ps(s + (c0 + c)*bs, acc[c]);
        }
    }
}

// TP4's one-column kernel (tp4_gemv_vnni_impl, above) with EVEX vpdpbusd, the registers of AVX-512
static void tp4_gemv_vnni(int n, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy, float * GGML_RESTRICT s) {
    tp4_gemv_vnni_impl(n, vx, vy, s, 0);
}

#pragma GCC pop_options

static int tritpack_gemm_have_avx2(void) {
    static int have = -1;
    if (have < 0) {
        __builtin_cpu_init();
        have = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    }
    return have;
}

// AVX512-VNNI with VL (vpdpbusd on ymm), unless GGML_TRITPACK_NO_VNNI (the plain AVX2 paths) or
// GGML_TRITPACK_NO_AVX512 (the AVX2 paths with AVX-VNNI where the CPU has it) is set, to check them
static int tritpack_gemm_have_vnni(void) {
    static int have = -1;
    if (have < 0) {
        __builtin_cpu_init();
        have = __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512f") &&
               __builtin_cpu_supports("avx512bw") && getenv("GGML_TRITPACK_NO_VNNI") == NULL &&
               getenv("GGML_TRITPACK_NO_AVX512") == NULL;
    }
    return have;
}

// AVX-VNNI (VEX vpdpwssd, vpdpbusd on ymm) for TP1's AVX2 kernels and TP4's one-column kernel, unless
// GGML_TRITPACK_NO_VNNI is set
static int tritpack_gemm_have_avxvnni(void) {
    static int have = -1;
    if (have < 0) {
        __builtin_cpu_init();
        have = __builtin_cpu_supports("avxvnni") && getenv("GGML_TRITPACK_NO_VNNI") == NULL;
    }
    return have;
}

// TP1's AVX-512 GEMV: vpermb, vpdpwssd on zmm (AVX512-VBMI and -VNNI), unless GGML_TRITPACK_NO_VNNI is set
static int tritpack_gemm_have_avx512_tp1(void) {
    static int have = -1;
    if (have < 0) {
        __builtin_cpu_init();
        have = tritpack_gemm_have_avx2() && tritpack_gemm_have_vnni() && __builtin_cpu_supports("avx512f") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vbmi");
    }
    return have;
}

// vpermb indices: 16-bit lane w = 4r + m (row r, m = 0..3) gets, in its high half, qa[r][m] (chunk 0),
// qa[r][4 + m] (chunk 1) or qb[r][m] (chunk 2); slot 12 as in tp1x8_shuf_avx2[3]
#define TP_W4(f) f(0), f(1), f(2), f(3), f(4), f(5), f(6), f(7), f(8), f(9), f(10), f(11), f(12), f(13), f(14), f(15), \
                 f(16), f(17), f(18), f(19), f(20), f(21), f(22), f(23), f(24), f(25), f(26), f(27), f(28), f(29), f(30), f(31)
#define TP_I0(w) 0, 8*((w)/4) + (w)%4
#define TP_I1(w) 0, 8*((w)/4) + 4 + (w)%4
#define TP_I2(w) 0, (w)
static const uint8_t tp1x8_perm_avx512[3][64] = { { TP_W4(TP_I0) }, { TP_W4(TP_I1) }, { TP_W4(TP_I2) } };
#undef TP_W4
#undef TP_I0
#undef TP_I1
#undef TP_I2

__attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi,avx512vnni,avx2,fma,f16c")))
static void tp1_gemv_avx512(int n, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy, float * GGML_RESTRICT s) {
    const int nb = n / 64;
    const block_tp1x8 * x = (const block_tp1x8 *) vx;
    const block_tpq16 * y = (const block_tpq16 *) vy;
    const int32_t * ysum = (const int32_t *) ((const char *) vy + (size_t) nb*sizeof(block_tpq16));
    const __m512i k3 = _mm512_set1_epi16(3);
    const __m256i k3y = _mm256_set1_epi16(3);
    const __mmask64 hi = 0xAAAAAAAAAAAAAAAAull;
    const __m512i p0 = _mm512_loadu_si512(tp1x8_perm_avx512[0]);
    const __m512i p1 = _mm512_loadu_si512(tp1x8_perm_avx512[1]);
    const __m512i p2 = _mm512_loadu_si512(tp1x8_perm_avx512[2]);
    const __m256i pc = _mm256_loadu_si256((const __m256i *) tp1x8_shuf_avx2[3]);
    const __m256i k19 = _mm256_set1_epi32(1 | (9 << 16));
    __m256 acc = _mm256_setzero_ps();
    for (int b = 0; b < nb; ++b) {
        const block_tp1x8 * xb = x + b;
        const block_tpq16 * yb = y + b;
        const __m512i qa = _mm512_loadu_si512(xb->qa);
        const __m512i qb = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *) xb->qb));
        __m512i X0 = _mm512_maskz_permutexvar_epi8(hi, p0, qa);
        __m512i X1 = _mm512_maskz_permutexvar_epi8(hi, p1, qa);
        __m512i X2 = _mm512_maskz_permutexvar_epi8(hi, p2, qb);
        __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0;
#pragma GCC unroll 5
        for (int l = 0; l < 5; ++l) {
            int64_t q0, q1, q2;
            memcpy(&q0, yb->qs + 4*l, 8);
            memcpy(&q1, yb->qs + 4*(5 + l), 8);
            memcpy(&q2, yb->qs + 4*(10 + l), 8);
            a0 = _mm512_dpwssd_epi32(a0, _mm512_mulhi_epu16(X0, k3), _mm512_set1_epi64(q0));
            a1 = _mm512_dpwssd_epi32(a1, _mm512_mulhi_epu16(X1, k3), _mm512_set1_epi64(q1));
            a2 = _mm512_dpwssd_epi32(a2, _mm512_mulhi_epu16(X2, k3), _mm512_set1_epi64(q2));
            if (l < 4) {
                // X <- 3X written as a multiply, which gcc turns into a shift and an add: 241 us instead of
                // 250 us (2048 x 5632, one thread) for X + X + X (two adds) and 245 us for the shift and
                // add written out (scheduled otherwise)
                X0 = _mm512_mullo_epi16(X0, k3);
                X1 = _mm512_mullo_epi16(X1, k3);
                X2 = _mm512_mullo_epi16(X2, k3);
            }
        }
        int64_t qc;
        memcpy(&qc, xb->qc, 8);
        __m256i XC = _mm256_mullo_epi16(_mm256_shuffle_epi8(_mm256_set1_epi64x(qc), pc), k19);
        int32_t y60, y62;
        memcpy(&y60, yb->qs + 60, 4);
        memcpy(&y62, yb->qs + 62, 4);
        __m256i ac = _mm256_madd_epi16(_mm256_mulhi_epu16(XC, k3y), _mm256_set1_epi32(y60));
        XC = _mm256_add_epi16(_mm256_add_epi16(XC, XC), XC);
        ac = _mm256_dpwssd_epi32(ac, _mm256_mulhi_epu16(XC, k3y), _mm256_set1_epi32(y62));
        // lanes (row r, pair s) -> row r: add the odd lanes to the even ones, keep the even
        __m512i t = _mm512_add_epi32(_mm512_add_epi32(a0, a1), a2);
        t = _mm512_add_epi32(t, _mm512_srli_epi64(t, 32));
        __m256i rows = _mm256_add_epi32(_mm512_cvtepi64_epi32(t), ac);
        rows = _mm256_sub_epi32(rows, _mm256_set1_epi32(ysum[b]));
        const __m256 d8 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) xb->d));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(rows), _mm256_mul_ps(d8, _mm256_set1_ps(yb->d)), acc);
    }
    _mm256_storeu_ps(s, acc);
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

// TP4: the Q8_0 blocks, then their scales as float (n/32) and -128 times the sum of each 16 of their
// values (int32, n/16) for the batch kernel (tp4_gemm_vnni_cols)
size_t ggml_tritpack_act_row_size(enum ggml_type type, int64_t n) {
    if ((int) type == TRITPACK_TYPE_TP4) {
        return ggml_row_size(GGML_TYPE_Q8_0, n) + (size_t) (n / QK8_0)*sizeof(float) + (size_t) (n / 16)*sizeof(int32_t);
    }
    // TP1: the TPQ16 row, then each block's sum of its 64 int16 (int32), for the GEMV's codes c = w + 1
    return ggml_row_size((enum ggml_type) TRITPACK_TYPE_TPQ16, n) + (size_t) (n / QK_TPQ16)*sizeof(int32_t);
}

void ggml_tritpack_quantize_act(enum ggml_type type, const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t n, bool simd) {
    if ((int) type == TRITPACK_TYPE_TP4) {
        quantize_row_q8_0(x, y, n);  // what the plain path's vec_dot gets
        const block_q8_0 * q = (const block_q8_0 *) y;
        float * d = (float *) ((char *) y + ggml_row_size(GGML_TYPE_Q8_0, n));
        int32_t * bias = (int32_t *) (d + n / QK8_0);
        for (int64_t b = 0; b < n / QK8_0; ++b) {
            d[b] = GGML_CPU_FP16_TO_FP32(q[b].d);
            for (int h = 0; h < 2; ++h) {
                int32_t sum = 0;
                for (int j = 0; j < 16; ++j) {
                    sum += q[b].qs[16*h + j];
                }
                bias[2*b + h] = -128*sum;
            }
        }
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
    const block_tpq16 * yb = (const block_tpq16 *) y;
    char * sums = (char *) y + (size_t) (n / QK_TPQ16)*sizeof(block_tpq16);
    for (int64_t b = 0; b < n / QK_TPQ16; ++b) {
        int32_t sum = 0;
        for (int j = 0; j < QK_TPQ16; ++j) {
            sum += yb[b].qs[j];
        }
        memcpy(sums + b*sizeof(int32_t), &sum, sizeof(sum));
    }
    (void) type;
}

void ggml_tritpack_gemm(enum ggml_type type, int n, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy, size_t by,
                        int ncols, float * GGML_RESTRICT s, size_t bs, bool simd) {
    assert(n % 64 == 0);
#if defined(TRITPACK_GEMM_X86)
    if (simd) {
        if ((int) type == TRITPACK_TYPE_TP4) {
            if (tritpack_gemm_have_vnni() && ncols >= TP4_VNNI_COLS) {
                tp4_gemm_vnni_cols(n, vx, vy, by, ncols, s, bs);
            } else if (tritpack_gemm_have_vnni()) {
                for (int c = 0; c < ncols; ++c) {  // one column (below TP4_VNNI_COLS)
                    tp4_gemv_vnni(n, vx, (const char *) vy + c*by, s + c*bs);
                }
            } else if (tritpack_gemm_have_avxvnni() && ncols >= TP4_AVXVNNI_COLS) {
                tp4_gemm_avxvnni_cols(n, vx, vy, by, ncols, s, bs);  // AVX-VNNI without AVX-512, VEX
            } else if (tritpack_gemm_have_avxvnni()) {
                for (int c = 0; c < ncols; ++c) {
                    tp4_gemv_avxvnni(n, vx, (const char *) vy + c*by, s + c*bs);
                }
            } else if (ncols >= TP4_AVX2_COLS) {
                tp4_gemm_avx2_cols(n, vx, vy, by, ncols, s, bs);
            } else {
                tp4_gemm_avx2(n, vx, vy, by, ncols, s, bs);
            }
        } else if (ncols < 4 && tritpack_gemm_have_avx512_tp1()) {
            // a few columns: one GEMV each beats decoding for a GEMM (measured: 3 columns)
            for (int c = 0; c < ncols; ++c) {
                tp1_gemv_avx512(n, vx, (const char *) vy + c*by, s + c*bs);
            }
        } else if (tritpack_gemm_have_avxvnni()) {
            tp1_gemm_avxvnni(n, vx, vy, by, ncols, s, bs);
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
