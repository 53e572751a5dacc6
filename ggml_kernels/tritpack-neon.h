// NEON helpers of the plain dot products (tritpack-neon.c), aarch64 only: TP1's trit decode of the file's
// block layout (tritpack-neon.c's header comment says how it works). The repacked tiles re-encode their
// bytes at load (tritpack-gemm.c), and tritpack-gemm-neon.c decodes that order its own way.
#pragma once

#include <arm_neon.h>
#include <stdint.h>

// the 16 bytes of a block as loaded: bytes 0..7 at positions 0..7, bytes 5..12 at positions 8..15
// (byte m >= 8 sits at m + 3). Group g's lanes: bytes 0..12, then bytes 3g, 3g+1, 3g+2 (lanes 13..15).
#define TP1_B(m) ((m) < 8 ? (m) : (m) + 3)
#define TP1_IDX(g) { 0, 1, 2, 3, 4, 5, 6, 7, TP1_B(8), TP1_B(9), TP1_B(10), TP1_B(11), TP1_B(12), \
                     TP1_B(3*(g)), TP1_B(3*(g) + 1), TP1_B(3*(g) + 2) }
static const uint8_t tp1_neon_idx[4][16] = { TP1_IDX(0), TP1_IDX(1), TP1_IDX(2), TP1_IDX(3) };
#undef TP1_IDX
#undef TP1_B
#define TP1_POW(p) { p, p, p, p, p, p, p, p, p, p, p, p, p, 81, 81, 81 }
static const uint8_t tp1_neon_pow[4][16] = { TP1_POW(1), TP1_POW(3), TP1_POW(9), TP1_POW(27) };
#undef TP1_POW

// trits of group g (-1, 0, +1) of the block whose bytes are in q, as int16: lanes 0..7 in *lo, 8..15 in *hi
static inline void tp1_neon_trits(const uint8x16_t q, const uint8x16_t idx, const uint8x16_t pow,
                                  int16x8_t * lo, int16x8_t * hi) {
    const uint8x16_t v  = vmulq_u8(vqtbl1q_u8(q, idx), pow);                     // (uint8_t)(byte * 3^n)
    const int8x16_t  c0 = vreinterpretq_s8_u8(vcltq_u8(v, vdupq_n_u8(86)));    // -1 where the code is 0
    const int8x16_t  c2 = vreinterpretq_s8_u8(vcgeq_u8(v, vdupq_n_u8(171)));   // -1 where the code is 2
    *lo = vsubl_s8(vget_low_s8(c0), vget_low_s8(c2));                          // code - 1
    *hi = vsubl_high_s8(c0, c2);
}
