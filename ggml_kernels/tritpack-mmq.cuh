// tritpack-gguf: MMQ tile loaders for TP1/TP4 (included by ggml-cuda's mmq.cuh after
// mmq-load-tiles.cuh, patch 0011).
//
// Both types unpack to int8 tiles that the stock vec_dots (dp4a or mma) consume, activations in
// MMQ_Q8_1_DS_LAYOUT_D4:
//   TP1: the Q8_0 tile (GGML_CUDA_MMQ_SRAM_LAYOUT_Q8_0, one float scale per 32 values), values -1..1,
//        as Q1_0/Q2_0 and IQ4_NL do; vec_dot_q8_0_q8_1.
//   TP4: the tile with one float scale per 16 values (GGML_CUDA_MMQ_SRAM_LAYOUT_Q3_K), codebook entries
//        as the int8 values and d*scale(sub-block) as the scales, as IQ2_XS does; vec_dot_q8_0_16_q8_1.
#pragma once

#include "tritpack-cuda.cuh"
#include "mmq.cuh"

// Where a loader puts the int8 values and the float scales of an x tile: after 2*MMQ_TILE_NE_K ints
// with mma, after the values of the dp4a tile of `layout` (the stock type whose layout it reuses)
// without.
template <ggml_type layout, int I> static __device__ __forceinline__ void tritpack_mmq_tile(
        int * x_tile, int * & x_qs, float * & x_df) {
    x_qs = x_tile;
#if defined(AMD_MFMA_AVAILABLE) || defined(TURING_MMA_AVAILABLE) || defined(AMD_WMMA_AVAILABLE)
    x_df = (float *) (x_qs + 2*MMQ_TILE_NE_K);
#else
    constexpr tile_x_sizes txs = mmq_get_dp4a_tile_x_sizes(layout, I);
    x_df = (float *) (x_qs + txs.qs);
#endif // defined(AMD_MFMA_AVAILABLE) || defined(TURING_MMA_AVAILABLE) || defined(AMD_WMMA_AVAILABLE)
}

// TP1: one thread per 64-value block, four threads per tile row (MMQ_ITER_K = 256 values).
template <ggml_type type, int J, bool fallback> static __device__ __forceinline__ void ggml_cuda_mmq_load_tiles_tp1(
        const char * __restrict__ x, int * __restrict__ x_tile, const int kbx0, const int i_max, const int stride) {
    constexpr int warp_size   = ggml_cuda_get_physical_warp_size();
    constexpr int nwarps      = ggml_cuda_mmq_get_nthreads(type, J, fallback) / warp_size;
    constexpr int I           = ggml_cuda_mmq_get_I(type, J, fallback);
    constexpr int sram_stride = ggml_cuda_mmq_get_sram_stride(type, J, fallback);

    int   * x_qs;
    float * x_df;
    tritpack_mmq_tile<GGML_TYPE_Q8_0, I>(x_tile, x_qs, x_df);

    constexpr int blocks_per_iter = MMQ_ITER_K / QK_TP1;
    constexpr int threads_per_row = blocks_per_iter;
    constexpr int nrows           = warp_size / threads_per_row;
    static_assert(MMQ_ITER_K % QK_TP1 == 0 && warp_size % threads_per_row == 0, "bad TP1 tile split");
    static_assert(I % (nrows*nwarps) == 0, "bad TP1 tile split");

    const int kbx = threadIdx.x % threads_per_row;

#pragma unroll
    for (int i0 = 0; i0 < I; i0 += nrows*nwarps) {
        int i = i0 + threadIdx.y*nrows + threadIdx.x/threads_per_row;

        if (fallback) {
            i = min(i, i_max);
        }

        uint32_t q0, q1, q2, q3;
        tritpack_tp1_load(x, kbx0 + (int64_t) i*stride + kbx, q0, q1, q2, q3);

        int v[16];
        tritpack_tp1_codes(q0, q1, q2, q3, v);
#pragma unroll
        for (int k = 0; k < 16; ++k) {
            v[k] = tritpack_codes_to_i8(v[k]);
        }
        const float d = tritpack_tp1_scale(q3);

#if defined(AMD_MFMA_AVAILABLE) || defined(TURING_MMA_AVAILABLE) || defined(AMD_WMMA_AVAILABLE)
        // 16-byte aligned: sram_stride and the block offset are multiples of 4 ints
        int4 * dst = (int4 *) (x_qs + i*sram_stride + kbx*(QK_TP1/4));
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            dst[k] = make_int4(v[4*k + 0], v[4*k + 1], v[4*k + 2], v[4*k + 3]);
        }
        x_df[i*sram_stride + kbx*(QK_TP1/QK8_1) + 0] = d;
        x_df[i*sram_stride + kbx*(QK_TP1/QK8_1) + 1] = d;
#else
#pragma unroll
        for (int k = 0; k < 16; ++k) {
            x_qs[i*(2*MMQ_TILE_NE_K + 1) + kbx*(QK_TP1/4) + k] = v[k];
        }
        x_df[i*(2*MMQ_TILE_NE_K/QI8_0) + i/(QI8_0/2) + kbx*(QK_TP1/QK8_1) + 0] = d;
        x_df[i*(2*MMQ_TILE_NE_K/QI8_0) + i/(QI8_0/2) + kbx*(QK_TP1/QK8_1) + 1] = d;
#endif // defined(AMD_MFMA_AVAILABLE) || defined(TURING_MMA_AVAILABLE) || defined(AMD_WMMA_AVAILABLE)
    }

    GGML_UNUSED(sram_stride);
}

// TP4: two threads per 64-value block (halves h = 0, 1 as in vec_dot_tp4_q8_1), eight per tile row.
template <ggml_type type, int J, bool fallback> static __device__ __forceinline__ void ggml_cuda_mmq_load_tiles_tp4(
        const char * __restrict__ x, int * __restrict__ x_tile, const int kbx0, const int i_max, const int stride) {
    constexpr int warp_size   = ggml_cuda_get_physical_warp_size();
    constexpr int nwarps      = ggml_cuda_mmq_get_nthreads(type, J, fallback) / warp_size;
    constexpr int I           = ggml_cuda_mmq_get_I(type, J, fallback);
    constexpr int sram_stride = ggml_cuda_mmq_get_sram_stride(type, J, fallback);

    int   * x_qs;
    float * x_df;
    tritpack_mmq_tile<GGML_TYPE_TP4, I>(x_tile, x_qs, x_df);

    constexpr int blocks_per_iter = MMQ_ITER_K / QK_TP4;
    constexpr int threads_per_row = 2*blocks_per_iter;
    constexpr int nrows           = warp_size / threads_per_row;
    static_assert(MMQ_ITER_K % QK_TP4 == 0 && warp_size % threads_per_row == 0, "bad TP4 tile split");
    static_assert(I % (nrows*nwarps) == 0, "bad TP4 tile split");

    const int txi = threadIdx.x % threads_per_row;
    const int kbx = txi / 2;
    const int h   = txi % 2;

#pragma unroll
    for (int i0 = 0; i0 < I; i0 += nrows*nwarps) {
        int i = i0 + threadIdx.y*nrows + threadIdx.x/threads_per_row;

        if (fallback) {
            i = min(i, i_max);
        }

        const uint32_t * w  = tritpack_tp4_words(x, kbx0 + (int64_t) i*stride + kbx);
        const uint32_t   w0 = tritpack_ld32(w);
        const uint32_t   sc = w0 >> 16;
        const uint4      cb = tritpack_tp4_codebook(sc & 15u);
        const float      d  = tritpack_tp4_d(w0);

        int lo[4];
        int hi[4];
#pragma unroll
        for (int l = 0; l < 4; ++l) {
            const int2 v = tritpack_table16(tritpack_ld32(w + 1 + 4*h + l), cb);
            lo[l] = v.x; // elements      16h + 4l .. +3: sub-block h
            hi[l] = v.y; // elements 32 + 16h + 4l .. +3: sub-block 2 + h
        }
        const float d_lo = d * (float) tritpack_tp4_scale(sc >> (4 + 3*(h + 0)));
        const float d_hi = d * (float) tritpack_tp4_scale(sc >> (4 + 3*(h + 2)));

#if defined(AMD_MFMA_AVAILABLE) || defined(TURING_MMA_AVAILABLE) || defined(AMD_WMMA_AVAILABLE)
        // 16-byte aligned: sram_stride and the offsets are multiples of 4 ints
        int * dst = x_qs + i*sram_stride + kbx*(QK_TP4/4) + 4*h;
        *((int4 *) (dst + 0)) = make_int4(lo[0], lo[1], lo[2], lo[3]);
        *((int4 *) (dst + 8)) = make_int4(hi[0], hi[1], hi[2], hi[3]);
        x_df[i*sram_stride + kbx*TP4_NSUB + h + 0] = d_lo;
        x_df[i*sram_stride + kbx*TP4_NSUB + h + 2] = d_hi;
#else
#pragma unroll
        for (int l = 0; l < 4; ++l) {
            x_qs[i*(2*MMQ_TILE_NE_K + 1) + kbx*(QK_TP4/4) + 4*h + l + 0] = lo[l];
            x_qs[i*(2*MMQ_TILE_NE_K + 1) + kbx*(QK_TP4/4) + 4*h + l + 8] = hi[l];
        }
        x_df[i*(2*MMQ_TILE_NE_K*2/QI8_0) + i/(QI8_0/4) + kbx*TP4_NSUB + h + 0] = d_lo;
        x_df[i*(2*MMQ_TILE_NE_K*2/QI8_0) + i/(QI8_0/4) + kbx*TP4_NSUB + h + 2] = d_hi;
#endif // defined(AMD_MFMA_AVAILABLE) || defined(TURING_MMA_AVAILABLE) || defined(AMD_WMMA_AVAILABLE)
    }

    GGML_UNUSED(sram_stride);
}

// host: whether ggml_cuda_mmq_get_config() has TP1/TP4 tiles for a device of compute capability cc.
// tritpack-mmq-config.cuh is part of the Ampere table only, which serves every NVIDIA GPU the build
// has Volta-or-newer code for (Blackwell's table falls back to it); the ggml_cuda_should_use_mmq()
// of the other GPUs send our types to dequantize + cuBLAS.
static inline bool tritpack_mmq_supported(const int cc) {
    return GGML_CUDA_CC_IS_NVIDIA(cc) && ggml_cuda_highest_compiled_arch(cc) >= GGML_CUDA_CC_VOLTA;
}
