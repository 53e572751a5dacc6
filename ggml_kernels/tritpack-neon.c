// TP1 and TP4 dot products for ARM64 NEON (ggml-cpu), compiled only for aarch64 (CMakeLists.txt). They take
// the names ggml's CPU type traits use (ggml_vec_dot_tp1_tpq16, ggml_vec_dot_tp4_q8_0; patch 0004), the
// way ggml's own per-architecture kernels do; tp1-cpu.c and tp4-cpu.c keep their portable versions under
// other names there (tritpack-cpu.h).
//
// Which instructions: chosen at compile time from the compiler's feature macros, like ggml's ARM paths.
// NEON is part of every ARMv8-A CPU; __ARM_FEATURE_DOTPROD (sdot) follows -march / -mcpu: ggml's
// GGML_NATIVE=ON build uses -mcpu=native, a portable one -DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod
// (GGML_CPU_ALL_VARIANTS, where ggml loads the variant this CPU runs, would need CMakeLists.txt to attach
// ggml_kernels/ to each ggml-cpu-<variant> target; it does not yet).
//
// Results: the integer block sums are those of the _generic versions, and each block's float step is the
// same expression in the same order (sumf += d * d_y * (float) sumi, one block after another), so the
// result is the generic one bit for bit (tests/arm/neon_check.c checks that under qemu-aarch64).
//
// TP1 (tritpack-common.h): trit n of byte q is c_n = ((uint8_t)(q * 3^n) * 3) >> 8, and c_n is 0 for
// (uint8_t)(q * 3^n) < 86, 1 below 171, else 2. Group g of a block (elements 16g..16g+15) is trit g of
// bytes 0..12 and trit 4 of bytes 3g..3g+2: one tbl places the bytes, one 8-bit multiply by the lane's
// power of 3, two compares give masks (-1 where the code is 0, -1 where it is 2), and one widening
// subtract of the two (ssubl, ssubl2) is the trit code - 1 in 16-bit lanes, where it meets 16 int16
// activations in four smlal (int32 lanes, |lane| <= 16 * 32767 per block).
// The block's 13 bytes are read as bytes 0..7 and 5..12 (two 8-byte loads), never past the block.
//
// TP4: the block's codebook (16 int8) in one register, vqtbl1q_s8 turns the low and high nibbles of the
// 32 index bytes into the 64 weights (low nibbles of bytes 0..15: sub-block 0, 16..31: sub-block 1, high
// nibbles: sub-blocks 2 and 3; each pair is one Q8_0 block). A sub-block's 16 products are summed by one
// sdot (dotprod) or two smull and two sadalp (plain NEON), then weighted by its 3-bit scale in int32.

#if defined(__aarch64__) && defined(__ARM_NEON)

#define GGML_COMMON_DECL_C
#include "ggml-common.h"

#include "simd-mappings.h"

#include "tritpack-cpu.h"
#include "tritpack-quants.h"
#include "tp4-codebooks.h"
#include "tritpack-neon.h"

#include <arm_neon.h>
#include <assert.h>

// ---------------------------------------------------------------------------------------------
// TP1 x TPQ16
// ---------------------------------------------------------------------------------------------

void ggml_vec_dot_tp1_tpq16(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx,
                            const void * GGML_RESTRICT vy, size_t by, int nrc) {
    assert(n % QK_TP1 == 0);
    assert(nrc == 1);
    (void) nrc;
    (void) bs;
    (void) bx;
    (void) by;

    const block_tp1   * GGML_RESTRICT x = (const block_tp1 *) vx;
    const block_tpq16 * GGML_RESTRICT y = (const block_tpq16 *) vy;
    const int nb = n / QK_TP1;

    uint8x16_t idx[4], pow[4];
    for (int g = 0; g < 4; ++g) {
        idx[g] = vld1q_u8(tp1_neon_idx[g]);
        pow[g] = vld1q_u8(tp1_neon_pow[g]);
    }

    float sumf = 0.0f;
    for (int i = 0; i < nb; ++i) {
        const uint8x16_t q = vcombine_u8(vld1_u8(x[i].qs), vld1_u8(x[i].qs + 5));
        const int16x8x4_t ya = vld1q_s16_x4(y[i].qs);        // groups 0 and 1
        const int16x8x4_t yb = vld1q_s16_x4(y[i].qs + 32);   // groups 2 and 3
        int32x4_t acc0 = vdupq_n_s32(0);
        int32x4_t acc1 = vdupq_n_s32(0);
        for (int g = 0; g < 4; ++g) {
            int16x8_t t0, t1;
            tp1_neon_trits(q, idx[g], pow[g], &t0, &t1);
            const int16x8_t y0 = g < 2 ? ya.val[2*g]     : yb.val[2*g - 4];
            const int16x8_t y1 = g < 2 ? ya.val[2*g + 1] : yb.val[2*g - 3];
            acc0 = vmlal_s16(acc0, vget_low_s16(t0), vget_low_s16(y0));
            acc1 = vmlal_high_s16(acc1, t0, y0);
            acc0 = vmlal_s16(acc0, vget_low_s16(t1), vget_low_s16(y1));
            acc1 = vmlal_high_s16(acc1, t1, y1);
        }
        const int sumi = vaddvq_s32(vaddq_s32(acc0, acc1));  // |sumi| <= 64 * 32767
        sumf += GGML_CPU_FP16_TO_FP32(tritpack_scale_bits(x[i].d)) * y[i].d * (float) sumi;  // as the generic path
    }
    *s = sumf;
}

// ---------------------------------------------------------------------------------------------
// TP4 x Q8_0
// ---------------------------------------------------------------------------------------------

// the scales of two sub-blocks from their two 3-bit codes (6 bits, the first code low): one 8-byte load a half
#define TP4_SV(c) (((c) & 4) ? -(4 + ((c) & 3)) : 4 + ((c) & 3))
#define TP4_SP(c) { TP4_SV(c), TP4_SV((c) >> 3) }
#define TP4_SP8(c) TP4_SP(c), TP4_SP(c+1), TP4_SP(c+2), TP4_SP(c+3), TP4_SP(c+4), TP4_SP(c+5), TP4_SP(c+6), TP4_SP(c+7)
static const int32_t tp4_neon_scale_pairs[64][2] = {
    TP4_SP8(0), TP4_SP8(8), TP4_SP8(16), TP4_SP8(24), TP4_SP8(32), TP4_SP8(40), TP4_SP8(48), TP4_SP8(56),
};
#undef TP4_SP8
#undef TP4_SP
#undef TP4_SV

// int32 lanes summing to the dot product of 16 int8 weights with 16 int8 activations
static inline int32x4_t tp4_neon_dot16(const int8x16_t w, const int8x16_t a) {
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_s32(vdupq_n_s32(0), w, a);
#else
    const int16x8_t p0 = vmull_s8(vget_low_s8(w), vget_low_s8(a));  // |p| <= 127 * 127
    const int16x8_t p1 = vmull_high_s8(w, a);
    return vpadalq_s16(vpaddlq_s16(p0), p1);
#endif
}

void ggml_vec_dot_tp4_q8_0(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx,
                           const void * GGML_RESTRICT vy, size_t by, int nrc) {
    assert(n % QK_TP4 == 0);
    assert(nrc == 1);
    (void) bs;
    (void) bx;
    (void) by;
    (void) nrc;

    const block_tp4  * GGML_RESTRICT x = (const block_tp4 *) vx;
    const block_q8_0 * GGML_RESTRICT y = (const block_q8_0 *) vy;
    const int nb = n / QK_TP4;
    const uint8x16_t m4 = vdupq_n_u8(0x0f);

    float sumf = 0.0f;
    for (int ib = 0; ib < nb; ++ib) {
        const unsigned sc = x[ib].sc[0] | ((unsigned) x[ib].sc[1] << 8);
        const int8x16_t cb = vld1q_s8(tp4_codebooks[sc & 15]);
        const uint8x16x2_t q = vld1q_u8_x2(x[ib].qs);
        const uint8x16_t q0 = q.val[0];
        const uint8x16_t q1 = q.val[1];
        const float d = GGML_CPU_FP16_TO_FP32(tritpack_scale_bits(x[ib].d));
        for (int h = 0; h < 2; ++h) {  // h: the Q8_0 block, the low (0) or high (1) nibbles
            const block_q8_0 * yb = y + 2*ib + h;
            const uint8x16_t i0 = h ? vshrq_n_u8(q0, 4) : vandq_u8(q0, m4);
            const uint8x16_t i1 = h ? vshrq_n_u8(q1, 4) : vandq_u8(q1, m4);
            const int8x16x2_t a = vld1q_s8_x2(yb->qs);
            const int32x4_t p0 = tp4_neon_dot16(vqtbl1q_s8(cb, i0), a.val[0]);
            const int32x4_t p1 = tp4_neon_dot16(vqtbl1q_s8(cb, i1), a.val[1]);
            const int32x2_t sv = vld1_s32(tp4_neon_scale_pairs[(sc >> (4 + 6*h)) & 63]);  // codes 2h, 2h+1
            const int sumi = vaddvq_s32(vmlaq_lane_s32(vmulq_lane_s32(p0, sv, 0), p1, sv, 1));  // |sumi| <= 32*128*128*7
            sumf += d * GGML_CPU_FP16_TO_FP32(yb->d) * (float) sumi;  // as the generic path
        }
    }
    *s = sumf;
}

#endif // __aarch64__ && __ARM_NEON
