// TritPack reference kernels, built into ggml-base next to ggml-quants.c (the patches include this
// header from ggml-quants.h). Everything here is exported so that the Python side and the tests can
// reach it through ctypes.
#pragma once

#include "ggml.h"
#include "tritpack-common.h"

#ifdef __cplusplus
extern "C" {
#endif

// Loops that gain from wider vectors are also compiled for AVX2 and picked when the library loads
// (GCC/Clang function multiversioning on x86-64 Linux). The results are the same bits either way:
// these files add in a fixed order and never contract into FMAs; only the vector width changes.
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(TRITPACK_NO_CLONES)
#define TRITPACK_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define TRITPACK_CLONES
#endif

#if defined(__x86_64__) && defined(__GNUC__)
// x86-64: whether this CPU runs "f16c" (with AVX) or "avx2" code (tritpack.c; internal, not exported)
int tritpack_cpu_has(const char * what);
#endif

// Library marker: present only in a patched build; the Python runtime checks it before use.
GGML_API const char * tritpack_version(void);

// ggml_validate_row_data() for our types: false (with ggml's message on stderr) when a block scale
// is NaN or Inf.
GGML_API bool tritpack_validate_row_data(enum ggml_type type, const void * data, size_t nbytes);

// One slice of a conversion, what `tritpack-gguf convert` runs on each of its threads: rows of a
// tensor of src_type (any type with a to_float, or F32) are read as float32 in cache-sized pieces,
// checked finite, quantized to dst_type (TP1 with tp1_alpha, any other type through
// ggml_quantize_chunk with imatrix), checked with ggml_validate_row_data, dequantized again and
// measured against the source. The sums are float64 and added to *stats, which the caller zeroes.
typedef struct {
    double  sxx, syy, sxy, see;  // sums of x*x, y*y, x*y, (x-y)^2 over source x, reconstruction y
    int64_t n;                   // values measured
    int64_t bad_row, bad_col;    // the first NaN/Inf source value (TRITPACK_CONVERT_NONFINITE)
    int32_t exact;               // every y == x so far (1 on entry)
    int32_t pad;
} tritpack_convert_stats;

enum {
    TRITPACK_CONVERT_OK          = 0,
    TRITPACK_CONVERT_NONFINITE   = 1,  // a NaN or Inf weight: stats->bad_row, bad_col
    TRITPACK_CONVERT_INVALID     = 2,  // the quantized rows fail ggml_validate_row_data (a scale overflowed)
    TRITPACK_CONVERT_UNSUPPORTED = 3,  // a source type without to_float, or rows that do not fit dst_type
    TRITPACK_CONVERT_NOMEM       = 4,
};

GGML_API int tritpack_convert_rows(enum ggml_type src_type, const void * src, enum ggml_type dst_type, void * dst,
                                   int64_t nrows, int64_t n_per_row, const float * imatrix, float tp1_alpha,
                                   tritpack_convert_stats * stats);

// TP1 (tp1.c)
GGML_API void   quantize_row_tp1_ref(const float * GGML_RESTRICT x, block_tp1 * GGML_RESTRICT y, int64_t k);
GGML_API void   dequantize_row_tp1(const block_tp1 * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);
GGML_API size_t quantize_tp1(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst, int64_t nrows, int64_t n_per_row, const float * imatrix);

// TP1 threshold factor: per 64-block, tau = alpha * mean|x|, trit = sign(x) where |x| > tau (or |x| is
// the block maximum), else 0. The default (quantize_row_tp1_ref, from_float) is the best alpha for
// Gaussian weights (measured: the cosine peaks near 0.76; 0.75 is within 5e-5 and on the search
// lattice); quantize_tp1 searches alpha on each chunk of rows it is given.
#define TRITPACK_TP1_DEFAULT_ALPHA 0.75f

// TP1 with an explicit alpha (the converter's per-tensor entry point). imatrix: n_per_row floats or
// NULL. Returns nrows * row size in bytes.
GGML_API size_t tritpack_quantize_tp1(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst, int64_t nrows, int64_t n_per_row, const float * imatrix, float alpha);
// tritpack_quantize_tp1 without an imatrix, measuring as it goes: adds sum x^2, sum y^2, sum x*y and
// sum (x-y)^2 (float64) over src and its dequantization y to m[0..3] (sum (x-y)^2 is 0 exactly when
// every weight comes back unchanged). The same bytes as tritpack_quantize_tp1(..., NULL, alpha).
GGML_API size_t tritpack_quantize_tp1_measured(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst, int64_t nrows, int64_t n_per_row, float alpha, double m[4]);
// Searches alpha on the lattice k/32 (coarse 0.5..1.75 in steps of 1/4, then refined to 1/32) for
// rows src. target_cos <= 0: the alpha of the largest (imatrix-weighted) cosine similarity between
// src and its dequantization; target_cos > 0: among the alphas evaluated whose cosine reaches
// target_cos, the one with the smallest weighted squared error (the largest cosine if none does).
// *out_cos (if not NULL) receives the chosen alpha's cosine.
GGML_API float  tritpack_tp1_search_alpha(const float * src, int64_t nrows, int64_t n_per_row, const float * imatrix, float target_cos, float * out_cos);

// TPQ16 (tp1.c): TP1's activations on the CPU, 16-bit integers with a float scale per 64
GGML_API void   quantize_row_tpq16_ref(const float * GGML_RESTRICT x, block_tpq16 * GGML_RESTRICT y, int64_t k);
GGML_API void   dequantize_row_tpq16(const block_tpq16 * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);

// TP4 (tp4.c)
GGML_API void   quantize_row_tp4_ref(const float * GGML_RESTRICT x, block_tp4 * GGML_RESTRICT y, int64_t k);
GGML_API void   dequantize_row_tp4(const block_tp4 * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);
GGML_API size_t quantize_tp4(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst, int64_t nrows, int64_t n_per_row, const float * imatrix);

#ifdef __cplusplus
}
#endif
