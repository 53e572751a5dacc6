// TritPack reference kernels, built into ggml-base next to ggml-quants.c (the patches include this
// header from ggml-quants.h). Everything here is exported so that the Python side and the tests can
// reach it through ctypes.
#pragma once

#include "ggml.h"
#include "tritpack-common.h"

#ifdef __cplusplus
extern "C" {
#endif

// Library marker: present only in a patched build; the Python runtime checks it before use.
GGML_API const char * tritpack_version(void);

// ggml_validate_row_data() for our types: false (with ggml's message on stderr) when a block scale
// is NaN or Inf.
GGML_API bool tritpack_validate_row_data(enum ggml_type type, const void * data, size_t nbytes);

// TP1 (tp1.c)
GGML_API void   quantize_row_tp1_ref(const float * GGML_RESTRICT x, block_tp1 * GGML_RESTRICT y, int64_t k);
GGML_API void   dequantize_row_tp1(const block_tp1 * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);
GGML_API size_t quantize_tp1(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst, int64_t nrows, int64_t n_per_row, const float * imatrix);

// TP4 (tp4.c)
GGML_API void   quantize_row_tp4_ref(const float * GGML_RESTRICT x, block_tp4 * GGML_RESTRICT y, int64_t k);
GGML_API void   dequantize_row_tp4(const block_tp4 * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);
GGML_API size_t quantize_tp4(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst, int64_t nrows, int64_t n_per_row, const float * imatrix);

#ifdef __cplusplus
}
#endif
