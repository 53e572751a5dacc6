// TritPack block layouts, shared by the C kernels (ggml-base, ggml-cpu), the CUDA kernels and the
// patches that register the types with ggml. A type's bytes depend only on its block size and type
// size: nothing here changes with CPU, GPU or build flags.
#pragma once

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Private type ids (mainline ggml uses up to 42 and grows; ik_llama.cpp 97 and up; BitNet 36 to 39).
#define TRITPACK_TYPE_TP1 80
#define TRITPACK_TYPE_TP4 81

// ---------------------------------------------------------------------------------------------
// TP1: balanced ternary {-1, 0, +1} times one fp16 scale per 64 weights.
//
// 13 bytes hold 65 trit slots, five per byte (3^5 = 243 <= 256), stored the TQ1_0 way: a byte
// holding trits c0..c4 (codes 0..2, code = value + 1, c0 most significant) is
//     q = ceil((c0*81 + c1*27 + c2*9 + c3*3 + c4) * 256 / 243)
// so trit n decodes with a multiply and a shift: c_n = ((uint8_t)(q * 3^n) * 3) >> 8.
//
// Element order (chosen so that SIMD decode yields four contiguous 16-lane groups):
//   plane n = 0..3, byte m = 0..12  ->  element 16*n + m
//   plane 4,        byte m = 0..11  ->  element 16*(m/3) + 13 + m%3
//   plane 4,        byte 12         ->  unused slot, always code 1 (value 0)
//
// 13 + 2 = 15 bytes per 64 weights = 1.875 bits per weight.
// ---------------------------------------------------------------------------------------------
#define QK_TP1 64
typedef struct {
    uint8_t qs[13];  // 65 trit slots, see above
    uint8_t d[2];    // fp16 scale, little endian (two bytes so that the block stays 15 bytes)
} block_tp1;
#ifdef __cplusplus
static_assert(sizeof(block_tp1) == 15, "wrong tp1 block size/padding");
#else
_Static_assert(sizeof(block_tp1) == 15, "wrong tp1 block size/padding");
#endif

// ---------------------------------------------------------------------------------------------
// TP4: 4-bit indices into a 16-entry codebook picked per block from a table of learned codebooks
// compiled into the kernels, with an fp16 block scale and sub-block scale adjustments.
// 64 weights per block, at most 36 bytes (4.5 bits per weight).
// ---------------------------------------------------------------------------------------------
#define QK_TP4 64
typedef struct {
    uint8_t d[2];    // fp16 block scale, little endian
    uint8_t cb;      // codebook index into the compiled table
    uint8_t sc;      // sub-block scale adjustments
    uint8_t qs[32];  // 64 4-bit indices
} block_tp4;
#ifdef __cplusplus
static_assert(sizeof(block_tp4) == 36, "wrong tp4 block size/padding");
#else
_Static_assert(sizeof(block_tp4) == 36, "wrong tp4 block size/padding");
#endif

#ifdef __cplusplus
}
#endif
