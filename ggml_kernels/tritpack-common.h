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
#define TRITPACK_TYPE_TPQ16 82  // TP1's activations on the CPU (below), not a storage type

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
// TP4: 4-bit indices into a 16-entry int8 codebook picked per block from a table of 16 learned
// codebooks (ggml_kernels/tp4-codebooks.h, fitted by converters/tp4_fit.py), an fp16 block scale
// and a signed 3-bit scale per sub-block of 16 weights:
//
//     weight[16*i + j] = d * tp4_scale(code_i) * tp4_codebooks[k][q]      i = 0..3, j = 0..15
//     tp4_scale(c) = (c & 4) ? -(4 + (c & 3)) : 4 + (c & 3)              -7..-4, 4..7
//
//   d[2]   fp16 d, little endian
//   sc[2]  16-bit little-endian field: bits 0..3 codebook k, bits 4+3i..6+3i code_i
//   qs[32] byte j: low nibble = q of element j, high nibble = q of element 32 + j (j = 0..31), so
//          the low nibbles of all 32 bytes are the 32 weights of the first Q8_0 block, in order,
//          and the high nibbles those of the second (one 32-byte load, two pshufb)
//
// 2 + 2 + 32 = 36 bytes per 64 weights = 4.5 bits per weight (as IQ4_NL and Q4_0).
// The sign of each sub-block scale lets a sub-block put its largest weight on the longer side of
// the asymmetric codebooks; see tp4-codebooks.h for the measurements behind the layout.
// ---------------------------------------------------------------------------------------------
#define QK_TP4 64
#define TP4_NSUB 4   // sub-blocks of 16 weights
typedef struct {
    uint8_t d[2];    // fp16 block scale, little endian
    uint8_t sc[2];   // codebook index (4 bits) and four 3-bit sub-block scale codes, little endian
    uint8_t qs[32];  // 64 4-bit indices
} block_tp4;
#ifdef __cplusplus
static_assert(sizeof(block_tp4) == 36, "wrong tp4 block size/padding");
#else
_Static_assert(sizeof(block_tp4) == 36, "wrong tp4 block size/padding");
#endif

// ---------------------------------------------------------------------------------------------
// TPQ16: what TP1's CPU dot product multiplies with (its vec_dot_type); activations only, never
// written to a file by tritpack-gguf. 64 int16 and one float32 scale per 64 values:
//
//     x[j] ~= d * qs[j],   d = max|x| / 32767,   qs[j] = roundf(x[j] / d)
//
// Why 16 bits: a ternary-trained model stored in TP1 has exactly the weights of its F16 original, so
// the only difference left in the logits is how the activations are rounded. 8-bit activations
// (Q8_0, as TQ1_0/TQ2_0 use Q8_K) cost a KL divergence of 0.005 to 0.06 against the F16 model; at 16
// bits it is float noise. Integers rather than fp16: a trit times an int16 is one vpmaddwd per 16
// weights, with the trits left in the 16-bit lanes they are decoded in, so the dot product costs no
// more than with Q8_0 (fp16 would need a float conversion per weight).
//
// 4 + 128 = 132 bytes per 64 values = 16.5 bits per value.
// ---------------------------------------------------------------------------------------------
#define QK_TPQ16 64
typedef struct {
    float   d;              // scale
    int16_t qs[QK_TPQ16];  // values / d, rounded
} block_tpq16;
#ifdef __cplusplus
static_assert(sizeof(block_tpq16) == 132, "wrong tpq16 block size/padding");
#else
_Static_assert(sizeof(block_tpq16) == 132, "wrong tpq16 block size/padding");
#endif

// The fp16 block scale d[2] of either type, little endian whatever the host: its bits, and storing them
// (host and device code alike).
#if defined(__CUDACC__)
#define TRITPACK_HOST_DEVICE __host__ __device__
#else
#define TRITPACK_HOST_DEVICE
#endif

static inline TRITPACK_HOST_DEVICE uint16_t tritpack_scale_bits(const uint8_t d[2]) {
    return (uint16_t) (d[0] | (d[1] << 8));
}

static inline TRITPACK_HOST_DEVICE void tritpack_set_scale_bits(uint8_t d[2], uint16_t h) {
    d[0] = (uint8_t) (h & 0xff);
    d[1] = (uint8_t) (h >> 8);
}

// TP4's signed 3-bit sub-block scale code c (0..7) -> its value, -7..-4 or 4..7: the one definition of
// the decode, for the C reference, the CPU and CUDA kernels and the tests. The macro is for constant
// tables (it takes any integer and looks at its low 3 bits).
#define TRITPACK_TP4_SCALE(c) ((((c) & 4) != 0) ? -(4 + ((c) & 3)) : 4 + ((c) & 3))

static inline TRITPACK_HOST_DEVICE int tritpack_tp4_scale(unsigned code) {
    return TRITPACK_TP4_SCALE((int) (code & 7u));
}

#ifdef __cplusplus
}
#endif
