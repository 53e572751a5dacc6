// The repacked TP1/TP4 tiles (tritpack-gemm.c's layout: 8 rows, the 8 rows' blocks of each 64-block
// together) multiplied on ARM64 with NEON: what ggml_tritpack_gemm runs there (tritpack-gemm.c calls
// ggml_tritpack_gemm_neon first; where it returns false the generic tile path runs). Compiled only for
// aarch64 (CMakeLists.txt). The layout is the x86 one: nothing about the tiles changes with the CPU.
//
// Which kernel: chosen like ggml's ARM repack (ggml_cpu_has_matmul_int8 / ggml_cpu_has_dotprod, which
// follow the compiler's feature macros, i.e. -march / -mcpu):
//   TP4 x Q8_0, i8mm (smmla), 2 columns or more: the GEMM below; GGML_TRITPACK_NO_I8MM=1 takes the
//     dotprod one instead (to check it on an i8mm CPU);
//   TP4 x Q8_0, dotprod (sdot): a GEMM (by-lane sdot, as ggml's IQ4_NL 4x4) and a GEMV (one column);
//   TP4 without dotprod: no tile kernel (ggml_tritpack_neon_has: the weights stay in the plain layout,
//     whose NEON vec_dot is faster than the generic tiles);
//   TP1 x TPQ16, i8mm, 2 columns or more: a GEMM with smmla and usmmla on the two bytes of its 16-bit
//     activations (GGML_TRITPACK_NO_I8MM: the smlal one);
//   TP1 x TPQ16, any NEON: a GEMM and a GEMV with smlal on the int16 activations.
//
// Results: every kernel forms the integer sums of the plain vec_dot and of the generic tile path (TP4:
// s_lo * sum_lo + s_hi * sum_hi per row, Q8_0 block and column; TP1: sum of trit * int16 per 64-block)
// and adds them into floats in their order: block by block, acc += (d_row * d_col) * (float) sum (one
// fused multiply-add, as GCC contracts the generic C). So a repacked product equals the generic tile
// path's and the NEON vec_dot's (tritpack-neon.c) bit for bit; tests/arm/repack_check.c checks that
// under qemu-aarch64.
//
// TP1's trits are decoded from the tile's re-encoded bytes (tritpack-gemm.c, "TP1 tile layout"; the TP1
// tile decode section below) two rows at a time, with no tbl: one 16-byte load holds the first 8 bytes of
// rows 2p and 2p+1, and each of its levels (a multiply by 3^n, two compares) gives 4 + 4 consecutive
// weights of both rows; the GEMMs put them in element order by trn1/trn2 of 32-bit lanes, the GEMV
// instead puts its column's activations in the order of the lanes, once a block for the 8 rows.
//
// Per 64-block of a tile, the GEMMs first decode the 8 rows into a small buffer (TP4: codebook entries
// through vqtbl1q_s8; TP1: trits, int8 for i8mm, int16 for smlal), with their scales, then run every
// column of the pass over it:
//   - TP4 i8mm: smmla takes 2 rows x 8 weights and 2 columns x 8 activations and gives the 2x2 sums.
//     The buffer holds, for rows 2p, 2p+1 and 16 weights, the two 16-byte operands [row 2p: 8 | row
//     2p+1: 8] (zip1/zip2 of 64-bit halves); the columns are paired the same way as they are loaded.
//     Per row pair, column pair and Q8_0 block: 4 smmla (2 per 16-weight sub-block), the sub-block
//     scales as int32 lanes [s_2p, s_2p, s_2p+1, s_2p+1], one fma.
//   - TP4 dotprod: the buffer holds, for rows 4q..4q+3 and 16 weights, four vectors [4 weights of each
//     of the 4 rows] (a 4x4 transpose of 32-bit groups), so that sdot by lane j of the column's 16
//     activations gives the 4 rows' sums in the 4 lanes (ggml's gemm_iq4_nl_4x4 does this with a
//     layout made at load; TP4's codebook differs per row, so the rows are looked up one by one first).
//   - TP1 i8mm: the trits as int8, rows paired as TP4's; an activation is 256 * (high byte, signed) +
//     (low byte, unsigned): smmla on the high bytes, shifted by 8, then usmmla on the low ones (exact).
//   - TP1 smlal: each row's 64 trits as 8 int16x8; per column 16 smlal a row, the rows' lanes added by addp.
// The GEMVs decode straight into the products (no buffer) and share the column's loads across the rows
// (TP1's: a row pair at a time, 16 smlal a row).

#if defined(__aarch64__) && defined(__ARM_NEON)

#define GGML_COMMON_DECL_C
#include "ggml-common.h"

#include "ggml-cpu.h"
#include "simd-mappings.h"

#include "tritpack-cpu.h"
#include "tritpack-quants.h"
#include "tp4-codebooks.h"

#include <arm_neon.h>
#include <assert.h>
#include <stdlib.h>

#define TP_NR   8   // rows per tile (tritpack-gemm.c)
#define TP_NCOL 32  // columns per pass

// each kernel keeps its own symbol (bench/arm_loops.py and tests/test_arm.py read their disassembly)
#define TP_KERNEL __attribute__((noinline))

// [a: bytes 0..7 | b: bytes 0..7] and [a: bytes 8..15 | b: bytes 8..15]: two rows (or columns) as one
// operand of smmla
static inline int8x16_t tp_zip1_64(const int8x16_t a, const int8x16_t b) {
    return vreinterpretq_s8_s64(vzip1q_s64(vreinterpretq_s64_s8(a), vreinterpretq_s64_s8(b)));
}
static inline int8x16_t tp_zip2_64(const int8x16_t a, const int8x16_t b) {
    return vreinterpretq_s8_s64(vzip2q_s64(vreinterpretq_s64_s8(a), vreinterpretq_s64_s8(b)));
}

// ---------------------------------------------------------------------------------------------
// TP4: shared decode
// ---------------------------------------------------------------------------------------------

#if defined(__ARM_FEATURE_DOTPROD)

// the 64 weights of row r as codebook entries (int8): w[0], w[1]: weights 0..15, 16..31 (the first
// Q8_0 block: low nibbles), w[2], w[3]: weights 32..47, 48..63 (high nibbles)
static inline void tp4_neon_row(const block_tp4x8 * xb, int r, int8x16_t w[4]) {
    const unsigned sc = xb->sc[r][0] | ((unsigned) xb->sc[r][1] << 8);
    const int8x16_t cb = vld1q_s8(tp4_codebooks[sc & 15]);
    const uint8x16x2_t q = vld1q_u8_x2(xb->qs[r]);
    const uint8x16_t m4 = vdupq_n_u8(0x0f);
    w[0] = vqtbl1q_s8(cb, vandq_u8(q.val[0], m4));
    w[1] = vqtbl1q_s8(cb, vandq_u8(q.val[1], m4));
    w[2] = vqtbl1q_s8(cb, vshrq_n_u8(q.val[0], 4));
    w[3] = vqtbl1q_s8(cb, vshrq_n_u8(q.val[1], 4));
}

// the sub-block scales of rows 0..7: s[i] lane r = tritpack_tp4_scale(code i of row r)
static inline void tp4_neon_scales(const block_tp4x8 * xb, int16x8_t s[TP4_NSUB]) {
    static const int8_t table[16] = { TRITPACK_TP4_SCALE(0), TRITPACK_TP4_SCALE(1), TRITPACK_TP4_SCALE(2),
                                      TRITPACK_TP4_SCALE(3), TRITPACK_TP4_SCALE(4), TRITPACK_TP4_SCALE(5),
                                      TRITPACK_TP4_SCALE(6), TRITPACK_TP4_SCALE(7) };
    const uint16x8_t sc = vld1q_u16((const uint16_t *) xb->sc);  // little endian, as the blocks
    const uint8x16_t m7 = vdupq_n_u8(7);
    const uint8x16_t c01 = vandq_u8(vcombine_u8(vmovn_u16(vshrq_n_u16(sc, 4)),  vmovn_u16(vshrq_n_u16(sc, 7))),  m7);
    const uint8x16_t c23 = vandq_u8(vcombine_u8(vmovn_u16(vshrq_n_u16(sc, 10)), vmovn_u16(vshrq_n_u16(sc, 13))), m7);
    const int8x16_t t = vld1q_s8(table);
    const int8x16_t s01 = vqtbl1q_s8(t, c01);
    const int8x16_t s23 = vqtbl1q_s8(t, c23);
    s[0] = vmovl_s8(vget_low_s8(s01));
    s[1] = vmovl_high_s8(s01);
    s[2] = vmovl_s8(vget_low_s8(s23));
    s[3] = vmovl_high_s8(s23);
}

// the fp16 block scales of rows 0..3 and 4..7
static inline void tp4_neon_d(const block_tp4x8 * xb, float32x4_t d[2]) {
    const uint16x8_t h = vld1q_u16((const uint16_t *) xb->d);
    d[0] = vcvt_f32_f16(vreinterpret_f16_u16(vget_low_u16(h)));
    d[1] = vcvt_f32_f16(vreinterpret_f16_u16(vget_high_u16(h)));
}

// ---------------------------------------------------------------------------------------------
// TP4 GEMV (one column), dotprod
// ---------------------------------------------------------------------------------------------

// four int32x4 (one per row) -> their sums, rows in lanes
static inline int32x4_t tp4_neon_rowsums(const int32x4_t a, const int32x4_t b, const int32x4_t c, const int32x4_t d) {
    return vpaddq_s32(vpaddq_s32(a, b), vpaddq_s32(c, d));
}

static TP_KERNEL void tp4_gemv_dot(int n, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy, float * GGML_RESTRICT s) {
    const int nb = n / QK_TP4;
    const block_q8_0 * GGML_RESTRICT y = (const block_q8_0 *) vy;
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);  // rows 0..3, 4..7
    for (int b = 0; b < nb; ++b) {
        const block_tp4x8 * xb = (const block_tp4x8 *) vx + b;
        int16x8_t sv[TP4_NSUB];
        float32x4_t d[2];
        tp4_neon_scales(xb, sv);
        tp4_neon_d(xb, d);
        const int8x16x2_t a0 = vld1q_s8_x2(y[2*b + 0].qs);
        const int8x16x2_t a1 = vld1q_s8_x2(y[2*b + 1].qs);
        // p[v][r]: row r's sdot lanes over weights 16v..16v+15
        int32x4_t p[4][TP_NR];
        for (int r = 0; r < TP_NR; ++r) {
            int8x16_t w[4];
            tp4_neon_row(xb, r, w);
            p[0][r] = vdotq_s32(vdupq_n_s32(0), w[0], a0.val[0]);
            p[1][r] = vdotq_s32(vdupq_n_s32(0), w[1], a0.val[1]);
            p[2][r] = vdotq_s32(vdupq_n_s32(0), w[2], a1.val[0]);
            p[3][r] = vdotq_s32(vdupq_n_s32(0), w[3], a1.val[1]);
        }
        for (int h = 0; h < 2; ++h) {
            const int v0 = 2*h, v1 = 2*h + 1;
            const int32x4_t lo0 = tp4_neon_rowsums(p[v0][0], p[v0][1], p[v0][2], p[v0][3]);
            const int32x4_t lo1 = tp4_neon_rowsums(p[v0][4], p[v0][5], p[v0][6], p[v0][7]);
            const int32x4_t hi0 = tp4_neon_rowsums(p[v1][0], p[v1][1], p[v1][2], p[v1][3]);
            const int32x4_t hi1 = tp4_neon_rowsums(p[v1][4], p[v1][5], p[v1][6], p[v1][7]);
            const int32x4_t s0 = vmlaq_s32(vmulq_s32(lo0, vmovl_s16(vget_low_s16(sv[v0]))), hi0, vmovl_s16(vget_low_s16(sv[v1])));
            const int32x4_t s1 = vmlaq_s32(vmulq_s32(lo1, vmovl_high_s16(sv[v0])), hi1, vmovl_high_s16(sv[v1]));
            const float dy = GGML_CPU_FP16_TO_FP32(y[2*b + h].d);
            acc0 = vfmaq_f32(acc0, vmulq_n_f32(d[0], dy), vcvtq_f32_s32(s0));
            acc1 = vfmaq_f32(acc1, vmulq_n_f32(d[1], dy), vcvtq_f32_s32(s1));
        }
    }
    vst1q_f32(s, acc0);
    vst1q_f32(s + 4, acc1);
}

// ---------------------------------------------------------------------------------------------
// TP4 GEMM, dotprod: rows transposed in 32-bit groups, sdot by lane
// ---------------------------------------------------------------------------------------------

static TP_KERNEL void tp4_gemm_dot(int n, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy, size_t by, int ncols,
                         float * GGML_RESTRICT s, size_t bs) {
    const int nb = n / QK_TP4;
    for (int c0 = 0; c0 < ncols; c0 += TP_NCOL) {
        const int nc = ncols - c0 < TP_NCOL ? ncols - c0 : TP_NCOL;
        float32x4_t acc[TP_NCOL][2];
        for (int c = 0; c < nc; ++c) {
            acc[c][0] = acc[c][1] = vdupq_n_f32(0.0f);
        }
        for (int b = 0; b < nb; ++b) {
            const block_tp4x8 * xb = (const block_tp4x8 *) vx + b;
            // wt[v][q][j]: weights 16v+4j..16v+4j+3 of rows 4q..4q+3, 4 bytes a row
            int8x16_t wt[4][2][4];
            int32x4_t sq[TP4_NSUB][2];  // sub-block scales of rows 4q..4q+3
            float32x4_t d[2];
            {
                int8x16_t w[TP_NR][4];
                for (int r = 0; r < TP_NR; ++r) {
                    tp4_neon_row(xb, r, w[r]);
                }
                for (int v = 0; v < 4; ++v) {
                    for (int q = 0; q < 2; ++q) {
                        const int32x4_t r0 = vreinterpretq_s32_s8(w[4*q + 0][v]), r1 = vreinterpretq_s32_s8(w[4*q + 1][v]);
                        const int32x4_t r2 = vreinterpretq_s32_s8(w[4*q + 2][v]), r3 = vreinterpretq_s32_s8(w[4*q + 3][v]);
                        const int64x2_t t0 = vreinterpretq_s64_s32(vtrn1q_s32(r0, r1));
                        const int64x2_t t1 = vreinterpretq_s64_s32(vtrn2q_s32(r0, r1));
                        const int64x2_t t2 = vreinterpretq_s64_s32(vtrn1q_s32(r2, r3));
                        const int64x2_t t3 = vreinterpretq_s64_s32(vtrn2q_s32(r2, r3));
                        wt[v][q][0] = vreinterpretq_s8_s64(vzip1q_s64(t0, t2));
                        wt[v][q][1] = vreinterpretq_s8_s64(vzip1q_s64(t1, t3));
                        wt[v][q][2] = vreinterpretq_s8_s64(vzip2q_s64(t0, t2));
                        wt[v][q][3] = vreinterpretq_s8_s64(vzip2q_s64(t1, t3));
                    }
                }
                int16x8_t sv[TP4_NSUB];
                tp4_neon_scales(xb, sv);
                for (int i = 0; i < TP4_NSUB; ++i) {
                    sq[i][0] = vmovl_s16(vget_low_s16(sv[i]));
                    sq[i][1] = vmovl_high_s16(sv[i]);
                }
                tp4_neon_d(xb, d);
            }
            for (int c = 0; c < nc; ++c) {
                const block_q8_0 * y = (const block_q8_0 *) ((const char *) vy + (size_t) (c0 + c)*by) + 2*b;
                for (int h = 0; h < 2; ++h) {
                    const int8x16x2_t a = vld1q_s8_x2(y[h].qs);
                    const float dy = GGML_CPU_FP16_TO_FP32(y[h].d);
                    for (int q = 0; q < 2; ++q) {
                        int32x4_t lo = vdupq_n_s32(0), hi = vdupq_n_s32(0);
                        lo = vdotq_laneq_s32(lo, wt[2*h][q][0], a.val[0], 0);
                        hi = vdotq_laneq_s32(hi, wt[2*h + 1][q][0], a.val[1], 0);
                        lo = vdotq_laneq_s32(lo, wt[2*h][q][1], a.val[0], 1);
                        hi = vdotq_laneq_s32(hi, wt[2*h + 1][q][1], a.val[1], 1);
                        lo = vdotq_laneq_s32(lo, wt[2*h][q][2], a.val[0], 2);
                        hi = vdotq_laneq_s32(hi, wt[2*h + 1][q][2], a.val[1], 2);
                        lo = vdotq_laneq_s32(lo, wt[2*h][q][3], a.val[0], 3);
                        hi = vdotq_laneq_s32(hi, wt[2*h + 1][q][3], a.val[1], 3);
                        const int32x4_t si = vmlaq_s32(vmulq_s32(lo, sq[2*h][q]), hi, sq[2*h + 1][q]);
                        acc[c][q] = vfmaq_f32(acc[c][q], vmulq_n_f32(d[q], dy), vcvtq_f32_s32(si));
                    }
                }
            }
        }
        for (int c = 0; c < nc; ++c) {
            vst1q_f32(s + (size_t) (c0 + c)*bs, acc[c][0]);
            vst1q_f32(s + (size_t) (c0 + c)*bs + 4, acc[c][1]);
        }
    }
}

#endif // __ARM_FEATURE_DOTPROD

// ---------------------------------------------------------------------------------------------
// TP4 GEMM, i8mm: smmla on row pairs x column pairs
// ---------------------------------------------------------------------------------------------

#if defined(__ARM_FEATURE_MATMUL_INT8) && defined(__ARM_FEATURE_DOTPROD)

// the column pair c, c + 1 (an odd last column, c + 1 == cend, is paired with itself) times the decoded
// block b of a tile: acc[p] += rows 2p, 2p+1 x the two columns
static inline __attribute__((always_inline)) void tp4_i8mm_pair(const int8x16_t wp[4][4][2], const int32x4_t sp[TP4_NSUB][4],
        const float32x4_t dp[4], const void * GGML_RESTRICT vy, size_t by, int c, int cend, int b, float32x4_t acc[4]) {
    const block_q8_0 * ya = (const block_q8_0 *) ((const char *) vy + (size_t) c*by) + 2*b;
    const block_q8_0 * yb = (const block_q8_0 *) ((const char *) vy + (size_t) (c + 1 < cend ? c + 1 : c)*by) + 2*b;
    float32x4_t f[4];  // in registers: stores through acc could alias the int8 operands
    for (int p = 0; p < 4; ++p) {
        f[p] = acc[p];
    }
    for (int h = 0; h < 2; ++h) {
        // [column c: 8 | column c+1: 8] activations: a[i][z] = weights 16i+8z.. of the Q8_0 block
        const int8x16x2_t u = vld1q_s8_x2(ya[h].qs);
        const int8x16x2_t e = vld1q_s8_x2(yb[h].qs);
        const int8x16_t a00 = tp_zip1_64(u.val[0], e.val[0]), a01 = tp_zip2_64(u.val[0], e.val[0]);
        const int8x16_t a10 = tp_zip1_64(u.val[1], e.val[1]), a11 = tp_zip2_64(u.val[1], e.val[1]);
        const float du = GGML_CPU_FP16_TO_FP32(ya[h].d), de = GGML_CPU_FP16_TO_FP32(yb[h].d);
        const float32x4_t dy = { du, de, du, de };
        for (int p = 0; p < 4; ++p) {
            int32x4_t lo = vmmlaq_s32(vdupq_n_s32(0), wp[2*h][p][0], a00);
            int32x4_t hi = vmmlaq_s32(vdupq_n_s32(0), wp[2*h + 1][p][0], a10);
            lo = vmmlaq_s32(lo, wp[2*h][p][1], a01);
            hi = vmmlaq_s32(hi, wp[2*h + 1][p][1], a11);
            const int32x4_t si = vmlaq_s32(vmulq_s32(lo, sp[2*h][p]), hi, sp[2*h + 1][p]);
            f[p] = vfmaq_f32(f[p], vmulq_f32(dp[p], dy), vcvtq_f32_s32(si));
        }
    }
    for (int p = 0; p < 4; ++p) {
        acc[p] = f[p];
    }
}

static TP_KERNEL void tp4_gemm_i8mm(int n, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy, size_t by, int ncols,
                          float * GGML_RESTRICT s, size_t bs) {
    const int nb = n / QK_TP4;
    for (int c0 = 0; c0 < ncols; c0 += TP_NCOL) {
        const int nc = ncols - c0 < TP_NCOL ? ncols - c0 : TP_NCOL;
        const int npair = (nc + 1) / 2;  // an odd last column is paired with itself
        // acc[k][p]: columns c0+2k, c0+2k+1 times rows 2p, 2p+1, lanes [r0 c0, r0 c1, r1 c0, r1 c1]
        float32x4_t acc[TP_NCOL/2][4];
        for (int k = 0; k < npair; ++k) {
            for (int p = 0; p < 4; ++p) {
                acc[k][p] = vdupq_n_f32(0.0f);
            }
        }
        for (int b = 0; b < nb; ++b) {
            const block_tp4x8 * xb = (const block_tp4x8 *) vx + b;
            // wp[v][p][z]: weights 16v+8z..16v+8z+7 of rows 2p | 2p+1 (the smmla operand)
            int8x16_t wp[4][4][2];
            int32x4_t sp[TP4_NSUB][4];  // sub-block scales [s_2p, s_2p, s_2p+1, s_2p+1]
            float32x4_t dp[4];          // block scales [d_2p, d_2p, d_2p+1, d_2p+1]
            {
                int8x16_t w[TP_NR][4];
                for (int r = 0; r < TP_NR; ++r) {
                    tp4_neon_row(xb, r, w[r]);
                }
                for (int v = 0; v < 4; ++v) {
                    for (int p = 0; p < 4; ++p) {
                        wp[v][p][0] = tp_zip1_64(w[2*p][v], w[2*p + 1][v]);
                        wp[v][p][1] = tp_zip2_64(w[2*p][v], w[2*p + 1][v]);
                    }
                }
                int16x8_t sv[TP4_NSUB];
                tp4_neon_scales(xb, sv);
                for (int i = 0; i < TP4_NSUB; ++i) {
                    const int16x8_t lo = vzip1q_s16(sv[i], sv[i]), hi = vzip2q_s16(sv[i], sv[i]);
                    sp[i][0] = vmovl_s16(vget_low_s16(lo));
                    sp[i][1] = vmovl_high_s16(lo);
                    sp[i][2] = vmovl_s16(vget_low_s16(hi));
                    sp[i][3] = vmovl_high_s16(hi);
                }
                float32x4_t d[2];
                tp4_neon_d(xb, d);
                dp[0] = vzip1q_f32(d[0], d[0]);
                dp[1] = vzip2q_f32(d[0], d[0]);
                dp[2] = vzip1q_f32(d[1], d[1]);
                dp[3] = vzip2q_f32(d[1], d[1]);
            }
            for (int k = 0; k < npair; ++k) {
                tp4_i8mm_pair(wp, sp, dp, vy, by, c0 + 2*k, c0 + nc, b, acc[k]);
            }
        }
        for (int k = 0; k < npair; ++k) {
            float * sa = s + (size_t) (c0 + 2*k)*bs;
            vst1q_f32(sa,     vuzp1q_f32(acc[k][0], acc[k][1]));
            vst1q_f32(sa + 4, vuzp1q_f32(acc[k][2], acc[k][3]));
            if (2*k + 1 < nc) {
                vst1q_f32(sa + bs,     vuzp2q_f32(acc[k][0], acc[k][1]));
                vst1q_f32(sa + bs + 4, vuzp2q_f32(acc[k][2], acc[k][3]));
            }
        }
    }
}

#endif // __ARM_FEATURE_MATMUL_INT8

// ---------------------------------------------------------------------------------------------
// TP1 x TPQ16: the tile decode
// ---------------------------------------------------------------------------------------------

// The tiles' trit bytes (tritpack-gemm.c, "TP1 tile layout"): slot m, level n of a row holds weight
// tp1x8_weight(m, n) = 20*(m/4) + 4n + m%4 for m < 12, and slot 12 weights 60, 62, 61, 63 at levels 0..3.
// So in 4-byte groups (the 32-bit lanes below) one level of slots 0..3 is weights 4n..4n+3 ("chunk" n of
// 4 weights), of slots 4..7 chunk 5 + n, of slots 8..11 chunk 10 + n. The kernels decode two rows at
// once, with no tbl: a = qa of rows 2p, 2p+1 (one 16-byte load), times 3^n per lane, gives chunks n and
// 5 + n of both rows in its 32-bit lanes; u = [row 2p: qb, qc x4 | row 2p+1: qb, qc x4] gives, times
// per-lane powers, chunks 10..15.

// u of rows 2p, 2p+1 (qb: 4 bytes of each row; qc: its byte in all four bytes of a 32-bit lane)
static inline uint8x16_t tp1x8_neon_u(const block_tp1x8 * xb, int p) {
    const uint8x16x2_t c = vld2q_dup_u8(xb->qc + 2*p);   // qc[2p], qc[2p+1] in every lane
    const uint32x4_t cc = vzip1q_u32(vreinterpretq_u32_u8(c.val[0]), vreinterpretq_u32_u8(c.val[1]));
    const uint32x4_t b = vreinterpretq_u32_u8(vcombine_u8(vld1_u8(xb->qb[2*p]), vdup_n_u8(0)));
    return vreinterpretq_u8_u32(vzip1q_u32(b, cc));
}

// the trits (-1, 0, +1) of bytes already multiplied by their 3^n (code 0 below 86, 2 from 171), as int8
static inline int8x16_t tp1x8_neon_t8(const uint8x16_t v) {
    return vsubq_s8(vreinterpretq_s8_u8(vcltq_u8(v, vdupq_n_u8(86))), vreinterpretq_s8_u8(vcgeq_u8(v, vdupq_n_u8(171))));
}

// per-lane powers: [0]: chunks 0 | 9 of a (levels 0, 4), [1]: chunks 4 | 5 (levels 4, 0), [2]: x = u's qb
// lanes twice, chunks 10 | 11 (levels 0, 1), [3]: chunks 12 | 13, [4]: u, chunks 14 | 15 (qb's level 4,
// then qc's levels 0, 2, 1, 3: weights 60, 61, 62, 63)
#define TP4X(a, b) a, a, a, a, b, b, b, b, a, a, a, a, b, b, b, b
static const uint8_t tp1x8_neon_pow[5][16] = {
    { TP4X(1, 81) }, { TP4X(81, 1) }, { TP4X(1, 3) }, { TP4X(9, 27) },
    { 81, 81, 81, 81, 1, 9, 3, 27, 81, 81, 81, 81, 1, 9, 3, 27 },
};
#undef TP4X

// the GEMMs' decode constants, hidden from the compiler (an empty asm) so that every multiply by 3^n stays
// one mul (GCC makes a multiply by a constant 3 or 9 a shift and an add); volatile, so that they are set
// where this is called (once a block) and do not take registers in the column loop
typedef struct { uint8x16_t pw[5], k3, k9, k27; } tp1x8_neon_k;

static inline void tp1x8_neon_consts(tp1x8_neon_k * k) {
    for (int i = 0; i < 5; ++i) {
        k->pw[i] = vld1q_u8(tp1x8_neon_pow[i]);
        __asm__ volatile("" : "+w"(k->pw[i]));
    }
    k->k3 = vdupq_n_u8(3);
    k->k9 = vdupq_n_u8(9);
    k->k27 = vdupq_n_u8(27);
    __asm__ volatile("" : "+w"(k->k3), "+w"(k->k9), "+w"(k->k27));
}

static inline int8x16_t tp_trn1_32(const int8x16_t a, const int8x16_t b) {
    return vreinterpretq_s8_s32(vtrn1q_s32(vreinterpretq_s32_s8(a), vreinterpretq_s32_s8(b)));
}
static inline int8x16_t tp_trn2_32(const int8x16_t a, const int8x16_t b) {
    return vreinterpretq_s8_s32(vtrn2q_s32(vreinterpretq_s32_s8(a), vreinterpretq_s32_s8(b)));
}

// rows 2p, 2p+1 as int8 trits in element order: w[j] = [row 2p: weights 8j..8j+7 | row 2p+1: the same]
// (the operands of smmla as they are, two rows in 8-byte halves)
static inline void tp1x8_neon_pair(const block_tp1x8 * xb, int p, const tp1x8_neon_k * k, int8x16_t w[8]) {
    const uint8x16_t * pw = k->pw;
    const uint8x16_t a = vld1q_u8(xb->qa[2*p]);
    const uint8x16_t u = tp1x8_neon_u(xb, p);
    const int8x16_t ta = tp1x8_neon_t8(vmulq_u8(a, pw[0]));               // chunks 0 | 9
    const int8x16_t t1 = tp1x8_neon_t8(vmulq_u8(a, k->k3));       // chunks 1 | 6
    const int8x16_t t2 = tp1x8_neon_t8(vmulq_u8(a, k->k9));       // chunks 2 | 7
    const int8x16_t t3 = tp1x8_neon_t8(vmulq_u8(a, k->k27));      // chunks 3 | 8
    w[0] = tp_trn1_32(ta, t1);
    w[1] = tp_trn1_32(t2, t3);
    w[2] = tp1x8_neon_t8(vmulq_u8(a, pw[1]));                             // chunks 4 | 5
    w[3] = tp_trn2_32(t1, t2);
    w[4] = tp_trn2_32(t3, ta);
    const uint8x16_t x = vreinterpretq_u8_u32(vtrn1q_u32(vreinterpretq_u32_u8(u), vreinterpretq_u32_u8(u)));
    w[5] = tp1x8_neon_t8(vmulq_u8(x, pw[2]));
    w[6] = tp1x8_neon_t8(vmulq_u8(x, pw[3]));
    w[7] = tp1x8_neon_t8(vmulq_u8(u, pw[4]));
}

// ---------------------------------------------------------------------------------------------
// TP1 x TPQ16: smlal (any NEON)
// ---------------------------------------------------------------------------------------------

// the 64 products of a row with a column: int32 lanes
static inline int32x4_t tp1_neon_dot64(const int16x8_t w[8], const int16x8_t y[8]) {
    int32x4_t a = vmull_s16(vget_low_s16(w[0]), vget_low_s16(y[0]));
    int32x4_t e = vmull_high_s16(w[0], y[0]);
    for (int k = 1; k < 8; ++k) {
        a = vmlal_s16(a, vget_low_s16(w[k]), vget_low_s16(y[k]));
        e = vmlal_high_s16(e, w[k], y[k]);
    }
    return vaddq_s32(a, e);  // |lane| <= 16 * 32768
}

static inline void tp1_neon_d(const block_tp1x8 * xb, float32x4_t d[2]) {
    const uint16x8_t h = vld1q_u16((const uint16_t *) xb->d);
    d[0] = vcvt_f32_f16(vreinterpret_f16_u16(vget_low_u16(h)));
    d[1] = vcvt_f32_f16(vreinterpret_f16_u16(vget_high_u16(h)));
}

// acc += low halves of a and b multiplied (smlal), written as asm: GCC copies a vget_low_s16 of a loop
// invariant into a register of its own, which here (the GEMV's 8 activation vectors) costs a copy a block
// and spills the constants
static inline int32x4_t tp_smlal_lo(int32x4_t acc, const int16x8_t a, const int16x8_t b) {
    __asm__("smlal %0.4s, %1.4h, %2.4h" : "+w"(acc) : "w"(a), "w"(b));
    return acc;
}
static inline int32x4_t tp_smull_lo(const int16x8_t a, const int16x8_t b) {
    int32x4_t r;
    __asm__("smull %0.4s, %1.4h, %2.4h" : "=w"(r) : "w"(a), "w"(b));
    return r;
}

// acc of row 2p (e) and row 2p+1 (o) += trits (one level's lanes of a pair: row 2p in the low 8, row 2p+1
// in the high 8) times the 8 activations y of those lanes
// (first: acc = the products)
static inline void tp1_neon_pair_mla(const uint8x16_t v, const int16x8_t y, int32x4_t acc[4], const bool first) {
    const int8x16_t c0 = vreinterpretq_s8_u8(vcltq_u8(v, vdupq_n_u8(86)));    // -1 where the code is 0
    const int8x16_t c2 = vreinterpretq_s8_u8(vcgeq_u8(v, vdupq_n_u8(171)));   // -1 where the code is 2
    const int16x8_t we = vsubl_s8(vget_low_s8(c0), vget_low_s8(c2));          // code - 1
    const int16x8_t wo = vsubl_high_s8(c0, c2);
    if (first) {
        acc[0] = tp_smull_lo(we, y);
        acc[1] = vmull_high_s16(we, y);
        acc[2] = tp_smull_lo(wo, y);
        acc[3] = vmull_high_s16(wo, y);
    } else {
        acc[0] = tp_smlal_lo(acc[0], we, y);
        acc[1] = vmlal_high_s16(acc[1], we, y);
        acc[2] = tp_smlal_lo(acc[2], wo, y);
        acc[3] = vmlal_high_s16(acc[3], wo, y);
    }
}

// TP1 GEMV (one column): the rows decoded straight into the products, two at a time, in the tile's order:
// the column's activations are put in that order once a block (level n of qa: chunks n | 5 + n).
static TP_KERNEL void tp1_gemv_neon(int n, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy, float * GGML_RESTRICT s) {
    const int nb = n / QK_TP1;
    // the constants hidden from the compiler (tp1x8_neon_consts says why); levels 1..4 of qa as a chain of
    // multiplies by 3, which keeps three registers free for the activations
    uint8x16_t k3 = vdupq_n_u8(3), p01 = vld1q_u8(tp1x8_neon_pow[2]), p23 = vld1q_u8(tp1x8_neon_pow[3]);
    uint8x16_t p4c = vld1q_u8(tp1x8_neon_pow[4]);
    __asm__("" : "+w"(k3), "+w"(p01), "+w"(p23), "+w"(p4c));
    const block_tpq16 * y = (const block_tpq16 *) vy;
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
    for (int b = 0; b < nb; ++b) {
        const block_tp1x8 * xb = (const block_tp1x8 *) vx + b;
        const int16x8x4_t ya = vld1q_s16_x4(y[b].qs), yb = vld1q_s16_x4(y[b].qs + 32);
        // chunk c (activations 4c..4c+3) is half c%2 of ya/yb.val[c/2]
        const int16x8_t yl[5] = {
            vcombine_s16(vget_low_s16(ya.val[0]), vget_high_s16(ya.val[2])),  // chunks 0 | 5
            vextq_s16(ya.val[0], ya.val[3], 4),                               // 1 | 6
            vcombine_s16(vget_low_s16(ya.val[1]), vget_high_s16(ya.val[3])),  // 2 | 7
            vextq_s16(ya.val[1], yb.val[0], 4),                               // 3 | 8
            vcombine_s16(vget_low_s16(ya.val[2]), vget_high_s16(yb.val[0])),  // 4 | 9
        };
        int32x4_t pp[TP_NR/2];
#pragma GCC unroll 1
        for (int p = 0; p < TP_NR/2; ++p) {
            const uint8x16_t a = vld1q_u8(xb->qa[2*p]);
            const uint8x16_t u = tp1x8_neon_u(xb, p);
            const uint8x16_t x = vreinterpretq_u8_u32(vtrn1q_u32(vreinterpretq_u32_u8(u), vreinterpretq_u32_u8(u)));
            const uint8x16_t a1 = vmulq_u8(a, k3), a2 = vmulq_u8(a1, k3), a3 = vmulq_u8(a2, k3), a4 = vmulq_u8(a3, k3);
            int32x4_t acc[4];
            tp1_neon_pair_mla(a,  yl[0], acc, true);
            tp1_neon_pair_mla(a1, yl[1], acc, false);
            tp1_neon_pair_mla(a2, yl[2], acc, false);
            tp1_neon_pair_mla(a3, yl[3], acc, false);
            tp1_neon_pair_mla(a4, yl[4], acc, false);
            tp1_neon_pair_mla(vmulq_u8(x, p01), yb.val[1], acc, false);  // activations 40..47
            tp1_neon_pair_mla(vmulq_u8(x, p23), yb.val[2], acc, false);  // 48..55
            tp1_neon_pair_mla(vmulq_u8(u, p4c), yb.val[3], acc, false);  // 56..63
            pp[p] = vpaddq_s32(vaddq_s32(acc[0], acc[1]), vaddq_s32(acc[2], acc[3]));  // [row 2p: 2 | row 2p+1: 2]
        }
        float32x4_t d[2];
        tp1_neon_d(xb, d);
        const int32x4_t s0 = vpaddq_s32(pp[0], pp[1]);
        const int32x4_t s1 = vpaddq_s32(pp[2], pp[3]);
        acc0 = vfmaq_f32(acc0, vmulq_n_f32(d[0], y[b].d), vcvtq_f32_s32(s0));
        acc1 = vfmaq_f32(acc1, vmulq_n_f32(d[1], y[b].d), vcvtq_f32_s32(s1));
    }
    vst1q_f32(s, acc0);
    vst1q_f32(s + 4, acc1);
}

static TP_KERNEL void tp1_gemm_neon(int n, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy, size_t by, int ncols,
                          float * GGML_RESTRICT s, size_t bs) {
    const int nb = n / QK_TP1;
    for (int c0 = 0; c0 < ncols; c0 += TP_NCOL) {
        const int nc = ncols - c0 < TP_NCOL ? ncols - c0 : TP_NCOL;
        float32x4_t acc[TP_NCOL][2];
        for (int c = 0; c < nc; ++c) {
            acc[c][0] = acc[c][1] = vdupq_n_f32(0.0f);
        }
        for (int b = 0; b < nb; ++b) {
            const block_tp1x8 * xb = (const block_tp1x8 *) vx + b;
            tp1x8_neon_k k;  // here, not live in the column loop below
            tp1x8_neon_consts(&k);
            // row r's 64 trits as int16: w[r][j] = weights 8j..8j+7
            int16x8_t w[TP_NR][8];
#pragma GCC unroll 4
            for (int p = 0; p < TP_NR/2; ++p) {
                int8x16_t t[8];
                tp1x8_neon_pair(xb, p, &k, t);
                for (int j = 0; j < 8; ++j) {
                    w[2*p][j]     = vmovl_s8(vget_low_s8(t[j]));
                    w[2*p + 1][j] = vmovl_high_s8(t[j]);
                }
            }
            float32x4_t d[2];
            tp1_neon_d(xb, d);
            for (int c = 0; c < nc; ++c) {
                const block_tpq16 * y = (const block_tpq16 *) ((const char *) vy + (size_t) (c0 + c)*by) + b;
                const int16x8x4_t ya = vld1q_s16_x4(y->qs), yb = vld1q_s16_x4(y->qs + 32);
                const int16x8_t yv[8] = { ya.val[0], ya.val[1], ya.val[2], ya.val[3], yb.val[0], yb.val[1], yb.val[2], yb.val[3] };
                int32x4_t p[TP_NR];
                for (int r = 0; r < TP_NR; ++r) {
                    p[r] = tp1_neon_dot64(w[r], yv);
                }
                const int32x4_t s0 = vpaddq_s32(vpaddq_s32(p[0], p[1]), vpaddq_s32(p[2], p[3]));
                const int32x4_t s1 = vpaddq_s32(vpaddq_s32(p[4], p[5]), vpaddq_s32(p[6], p[7]));
                acc[c][0] = vfmaq_f32(acc[c][0], vmulq_n_f32(d[0], y->d), vcvtq_f32_s32(s0));
                acc[c][1] = vfmaq_f32(acc[c][1], vmulq_n_f32(d[1], y->d), vcvtq_f32_s32(s1));
            }
        }
        for (int c = 0; c < nc; ++c) {
            vst1q_f32(s + (size_t) (c0 + c)*bs, acc[c][0]);
            vst1q_f32(s + (size_t) (c0 + c)*bs + 4, acc[c][1]);
        }
    }
}

#if defined(__ARM_FEATURE_MATMUL_INT8)

// TP1 x TPQ16 GEMM with i8mm. An int16 activation is 256 * hi + lo (hi: its high byte, signed; lo: its low
// byte, unsigned), so a row's sum is 256 * (trits . hi) + (trits . lo): smmla on the high bytes, shifted,
// then usmmla (unsigned x signed) on the low bytes, both exact in int32 (|256 * 64 * 128| + 64 * 255 <
// 2^22). The trits as int8, rows paired in 8-byte halves as TP4's (tp1x8_neon_pair decodes them so); the
// activation operands are the columns (smmla's first operand), so a result's lanes are [c0 r0, c0 r1,
// c1 r0, c1 r1].
static TP_KERNEL void tp1_gemm_i8mm(int n, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy, size_t by, int ncols,
                                    float * GGML_RESTRICT s, size_t bs) {
    const int nb = n / QK_TP1;
    for (int c0 = 0; c0 < ncols; c0 += TP_NCOL) {
        const int nc = ncols - c0 < TP_NCOL ? ncols - c0 : TP_NCOL;
        const int npair = (nc + 1) / 2;  // an odd last column is paired with itself
        float32x4_t acc[TP_NCOL/2][4];   // [column pair][row pair]
        for (int k = 0; k < npair; ++k) {
            for (int p = 0; p < 4; ++p) {
                acc[k][p] = vdupq_n_f32(0.0f);
            }
        }
        for (int b = 0; b < nb; ++b) {
            const block_tp1x8 * xb = (const block_tp1x8 *) vx + b;
            tp1x8_neon_k k;  // here, not live in the column loop below
            tp1x8_neon_consts(&k);
            // wp[p][j]: trits 8j..8j+7 of rows 2p | 2p+1
            int8x16_t wp[4][8];
            float32x4_t dq[4];  // [d_2p, d_2p+1, d_2p, d_2p+1]
            {
#pragma GCC unroll 4
                for (int p = 0; p < 4; ++p) {  // one row pair after the other
                    tp1x8_neon_pair(xb, p, &k, wp[p]);
                }
                float32x4_t d[2];
                tp1_neon_d(xb, d);
                const float32x2_t d01 = vget_low_f32(d[0]), d23 = vget_high_f32(d[0]);
                const float32x2_t d45 = vget_low_f32(d[1]), d67 = vget_high_f32(d[1]);
                dq[0] = vcombine_f32(d01, d01);
                dq[1] = vcombine_f32(d23, d23);
                dq[2] = vcombine_f32(d45, d45);
                dq[3] = vcombine_f32(d67, d67);
            }
            for (int k = 0; k < npair; ++k) {
                const int ca = c0 + 2*k, cb = 2*k + 1 < nc ? ca + 1 : ca;
                const block_tpq16 * ya = (const block_tpq16 *) ((const char *) vy + (size_t) ca*by) + b;
                const block_tpq16 * yb = (const block_tpq16 *) ((const char *) vy + (size_t) cb*by) + b;
                // lo[j], hi[j]: activations 8j..8j+7 of column a | column b, low and high bytes
                uint8x16_t lo[8];
                int8x16_t hi[8];
                for (int g = 0; g < 4; ++g) {
                    const int8x16_t a0 = vreinterpretq_s8_s16(vld1q_s16(ya->qs + 16*g));
                    const int8x16_t a1 = vreinterpretq_s8_s16(vld1q_s16(ya->qs + 16*g + 8));
                    const int8x16_t e0 = vreinterpretq_s8_s16(vld1q_s16(yb->qs + 16*g));
                    const int8x16_t e1 = vreinterpretq_s8_s16(vld1q_s16(yb->qs + 16*g + 8));
                    const int8x16_t alo = vuzp1q_s8(a0, a1), ahi = vuzp2q_s8(a0, a1);  // little endian
                    const int8x16_t elo = vuzp1q_s8(e0, e1), ehi = vuzp2q_s8(e0, e1);
                    lo[2*g]     = vreinterpretq_u8_s8(tp_zip1_64(alo, elo));
                    lo[2*g + 1] = vreinterpretq_u8_s8(tp_zip2_64(alo, elo));
                    hi[2*g]     = tp_zip1_64(ahi, ehi);
                    hi[2*g + 1] = tp_zip2_64(ahi, ehi);
                }
                const float32x4_t dy = { ya->d, ya->d, yb->d, yb->d };
                float32x4_t f[4];
                for (int p = 0; p < 4; ++p) {
                    int32x4_t h = vmmlaq_s32(vdupq_n_s32(0), hi[0], wp[p][0]);
                    for (int j = 1; j < 8; ++j) {
                        h = vmmlaq_s32(h, hi[j], wp[p][j]);
                    }
                    int32x4_t t = vshlq_n_s32(h, 8);
                    for (int j = 0; j < 8; ++j) {
                        t = vusmmlaq_s32(t, lo[j], wp[p][j]);
                    }
                    f[p] = vfmaq_f32(acc[k][p], vmulq_f32(dq[p], dy), vcvtq_f32_s32(t));
                }
                for (int p = 0; p < 4; ++p) {
                    acc[k][p] = f[p];
                }
            }
        }
        for (int k = 0; k < npair; ++k) {
            float * sa = s + (size_t) (c0 + 2*k)*bs;
            vst1q_f32(sa,     vcombine_f32(vget_low_f32(acc[k][0]), vget_low_f32(acc[k][1])));
            vst1q_f32(sa + 4, vcombine_f32(vget_low_f32(acc[k][2]), vget_low_f32(acc[k][3])));
            if (2*k + 1 < nc) {
                vst1q_f32(sa + bs,     vcombine_f32(vget_high_f32(acc[k][0]), vget_high_f32(acc[k][1])));
                vst1q_f32(sa + bs + 4, vcombine_f32(vget_high_f32(acc[k][2]), vget_high_f32(acc[k][3])));
            }
        }
    }
}

#endif // __ARM_FEATURE_MATMUL_INT8

// ---------------------------------------------------------------------------------------------
// entry points (tritpack-gemm.c)
// ---------------------------------------------------------------------------------------------

// i8mm here and not turned off by GGML_TRITPACK_NO_I8MM (to check the dotprod GEMM on an i8mm CPU)
static int tp_neon_use_i8mm(void) {
    static int use = -1;
    if (use < 0) {
        const char * e = getenv("GGML_TRITPACK_NO_I8MM");
        use = ggml_cpu_has_matmul_int8() && !(e != NULL && *e != '\0' && e[0] != '0');
    }
    return use;
}

bool ggml_tritpack_neon_has(enum ggml_type type) {
    if ((int) type == TRITPACK_TYPE_TP1) {
        return true;
    }
    if ((int) type == TRITPACK_TYPE_TP4) {
#if defined(__ARM_FEATURE_DOTPROD)
        return ggml_cpu_has_dotprod() != 0;
#endif
    }
    return false;
}

const char * ggml_tritpack_neon_kernel(enum ggml_type type, int ncols) {
    if ((int) type == TRITPACK_TYPE_TP1) {
        return ncols == 1 ? "tp1 gemv smlal" : tp_neon_use_i8mm() ? "tp1 gemm smmla" : "tp1 gemm smlal";
    }
    if ((int) type == TRITPACK_TYPE_TP4 && ggml_tritpack_neon_has(type)) {
        return ncols == 1 ? "tp4 gemv sdot" : tp_neon_use_i8mm() ? "tp4 gemm smmla" : "tp4 gemm sdot";
    }
    return NULL;
}

bool ggml_tritpack_gemm_neon(enum ggml_type type, int n, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy,
                             size_t by, int ncols, float * GGML_RESTRICT s, size_t bs) {
    assert(n % 64 == 0);
    if ((int) type == TRITPACK_TYPE_TP1) {
        if (ncols == 1) {
            tp1_gemv_neon(n, vx, vy, s);
            return true;
        }
#if defined(__ARM_FEATURE_MATMUL_INT8)
        if (tp_neon_use_i8mm()) {
            tp1_gemm_i8mm(n, vx, vy, by, ncols, s, bs);
            return true;
        }
#endif
        tp1_gemm_neon(n, vx, vy, by, ncols, s, bs);
        return true;
    }
#if defined(__ARM_FEATURE_DOTPROD)
    if ((int) type == TRITPACK_TYPE_TP4 && ggml_tritpack_neon_has(type)) {
        if (ncols == 1) {
            tp4_gemv_dot(n, vx, vy, s);
            return true;
        }
#if defined(__ARM_FEATURE_MATMUL_INT8)
        if (tp_neon_use_i8mm()) {
            tp4_gemm_i8mm(n, vx, vy, by, ncols, s, bs);
            return true;
        }
#endif
        tp4_gemm_dot(n, vx, vy, by, ncols, s, bs);
        return true;
    }
#endif
    (void) by;
    (void) bs;
    return false;
}

#endif // __aarch64__ && __ARM_NEON
