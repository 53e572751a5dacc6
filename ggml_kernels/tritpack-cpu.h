// TritPack CPU kernels, built into ggml-cpu with its architecture flags (the patches include this
// header from ggml-cpu/quants.h). TP4 multiplies with Q8_0 activations (plain and repacked alike): its 32-element blocks fit every
// row length that is a multiple of 64, where Q8_K's 256 would not (SmolLM2's rows are 576 wide). TP1
// multiplies with TPQ16, 16-bit activations per 64 (tritpack-common.h says why).
#pragma once

#include "ggml.h"
#include "ggml-backend.h"
#include "tritpack-common.h"

#ifdef __cplusplus
extern "C" {
#endif

// ARM64: the NEON dot products of tritpack-neon.c take the names ggml's CPU type traits use (patch 0004),
// as ggml's own per-architecture kernels do. CMakeLists.txt defines TRITPACK_NEON_VEC_DOT for tp1-cpu.c
// and tp4-cpu.c when it builds for aarch64; their portable versions (which call the _generic ones) are
// then compiled under the names below. Elsewhere nothing changes.
#if defined(TRITPACK_NEON_VEC_DOT)
#define ggml_vec_dot_tp1_tpq16 ggml_vec_dot_tp1_tpq16_portable
#define ggml_vec_dot_tp4_q8_0  ggml_vec_dot_tp4_q8_0_portable
#endif

void quantize_row_tp1(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);
void quantize_row_tp4(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);
void quantize_row_tpq16(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);

void ggml_vec_dot_tp1_tpq16(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);
void ggml_vec_dot_tp4_q8_0(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);
void ggml_vec_dot_tpq16_tpq16(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);

// the AVX2 decode tables of TP1 (tp1-cpu.c): pshufb indices and trit powers of each 16-element group
extern const uint8_t  tritpack_tp1_shuf[4][32];
extern const uint16_t tritpack_tp1_pow[4][16];

// portable versions, also used by the tests to check the SIMD ones
void ggml_vec_dot_tp1_tpq16_generic(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);
void ggml_vec_dot_tp4_q8_0_generic(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);

// Repacked TP1/TP4 (tritpack-gemm.c, tritpack-repack.cpp): tiles of 8 rows, for each 64-block the
// 8 rows' blocks together. The same bytes as the 8 rows; in memory only, never in a file.
typedef struct {
    uint8_t d[8][2];    // fp16 scales of rows 0..7
    uint8_t sc[8][2];   // codebook and sub-block scale codes, as block_tp4
    uint8_t qs[8][32];  // indices, as block_tp4
} block_tp4x8;
typedef struct {
    uint8_t qa[8][8];   // row r: trit bytes 0..7, re-encoded at load (tritpack-gemm.c: which weight is where)
    uint8_t qb[8][4];   // row r: trit bytes 8..11
    uint8_t qc[8];      // trit byte 12 of rows 0..7
    uint8_t d[8][2];    // fp16 scales of rows 0..7
} block_tp1x8;
#ifdef __cplusplus
static_assert(sizeof(block_tp4x8) == 8*sizeof(block_tp4), "wrong tp4x8 size");
static_assert(sizeof(block_tp1x8) == 8*sizeof(block_tp1), "wrong tp1x8 size");
#else
_Static_assert(sizeof(block_tp4x8) == 8*sizeof(block_tp4), "wrong tp4x8 size");
_Static_assert(sizeof(block_tp1x8) == 8*sizeof(block_tp1), "wrong tp1x8 size");
#endif

// whether rows of this type and shape can be repacked (TP1 or TP4, nrows a multiple of 8)
bool ggml_tritpack_can_repack(enum ggml_type type, int64_t n_per_row, int64_t nrows);
void ggml_tritpack_repack(enum ggml_type type, void * GGML_RESTRICT dst, const void * GGML_RESTRICT src, int64_t nrows, int64_t n_per_row);
// whether the SIMD path runs here (AVX2 + FMA + F16C at run time, and GGML_TRITPACK_GENERIC unset)
bool ggml_tritpack_gemm_simd(void);
// the activations of a repacked product: Q8_0 for TP4 (as its plain vec_dot; followed by the blocks' scales as
// float and -128 x the sums of each 16 values, for TP4's batch kernels), TPQ16 for TP1; bytes per column
size_t ggml_tritpack_act_row_size(enum ggml_type type, int64_t n);
// one column of activations in that type (simd: which TPQ16 quantizer runs; the bytes are the same)
void ggml_tritpack_quantize_act(enum ggml_type type, const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t n, bool simd);
// one tile of 8 repacked rows (n weights each) times ncols activation columns (by bytes apart):
// s[c*bs + r] = row r . column c
void ggml_tritpack_gemm(enum ggml_type type, int n, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy, size_t by,
                        int ncols, float * GGML_RESTRICT s, size_t bs, bool simd);
// the whole product on one thread, for the tests: dst[c*nrows + i] = repacked row i . x column c
void ggml_tritpack_mul_mat(enum ggml_type type, int64_t n, int64_t nrows, const void * GGML_RESTRICT repacked, int64_t ncols,
                           const float * GGML_RESTRICT x, float * GGML_RESTRICT dst, bool simd);

#if defined(__aarch64__) && defined(__ARM_NEON)
// ARM64 (tritpack-gemm-neon.c): whether a NEON kernel multiplies this type's tiles on this CPU (TP1: always;
// TP4: with dotprod; without one the type is not repacked: its plain NEON vec_dot is faster than the
// generic tiles), which one it is for ncols columns (NULL: none), and the kernel itself (false: none here)
bool ggml_tritpack_neon_has(enum ggml_type type);
const char * ggml_tritpack_neon_kernel(enum ggml_type type, int ncols);
bool ggml_tritpack_gemm_neon(enum ggml_type type, int n, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy,
                             size_t by, int ncols, float * GGML_RESTRICT s, size_t bs);
#endif

// The CPU_TRITPACK extra buffer type (tritpack-repack.cpp); NULL when GGML_TRITPACK_NO_REPACK is set
// (to a value other than 0): then TP1/TP4 weights stay in the plain layout and go through vec_dot.
ggml_backend_buffer_type_t ggml_backend_cpu_tritpack_buffer_type(void);

#ifdef __cplusplus
}
#endif
