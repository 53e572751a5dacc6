// TritPack CPU kernels, built into ggml-cpu with its architecture flags (the patches include this
// header from ggml-cpu/quants.h). TP4 multiplies with Q8_0 activations: its 32-element blocks fit every
// row length that is a multiple of 64, where Q8_K's 256 would not (SmolLM2's rows are 576 wide). TP1
// multiplies with TPQ16, 16-bit activations per 64 (tritpack-common.h says why).
#pragma once

#include "ggml.h"
#include "tritpack-common.h"

#ifdef __cplusplus
extern "C" {
#endif

void quantize_row_tp1(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);
void quantize_row_tp4(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);
void quantize_row_tpq16(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);

void ggml_vec_dot_tp1_tpq16(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);
void ggml_vec_dot_tp4_q8_0(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);
void ggml_vec_dot_tpq16_tpq16(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);

// portable versions, also used by the tests to check the SIMD ones
void ggml_vec_dot_tp1_tpq16_generic(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);
void ggml_vec_dot_tp4_q8_0_generic(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);

#ifdef __cplusplus
}
#endif
