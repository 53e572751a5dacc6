// tritpack-gguf: the TP1/TP4 block layouts and the constants of their ggml-cuda type traits.
// Included by ggml-cuda's common.cuh (patch 0008), so every ggml-cuda translation unit sees them.
#pragma once

#include "tritpack-common.h"

// qr: values per "quant index" in ggml-cuda's generic per-element dequantize templates
//     (dequantize_kernel_t is asked for elements iqs and iqs + 1).
// qi: MMVQ work items per block, each handled by one thread (kqs = 0 .. qi-1).
//     TP1: one thread decodes a whole block: its 13 base-3 bytes hold all four 16-value groups,
//          so splitting a block between threads would repeat most of the decode.
//     TP4: two threads per block, one per 32 values (= one q8_1 block each).
#define QR_TP1 1
#define QI_TP1 1
#define QR_TP4 1
#define QI_TP4 2

// MMVQ: contiguous work items per thread and call
#define VDR_TP1_Q8_1_MMVQ 1
#define VDR_TP4_Q8_1_MMVQ 1
