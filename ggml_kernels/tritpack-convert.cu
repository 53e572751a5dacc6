// tritpack-gguf: TP1/TP4 -> F32/F16/BF16 for ggml-cuda's dequantize + cuBLAS path (convert.cu's
// to_fp32/to_fp16/to_bf16 tables and their non-contiguous variants, patch 0009).
//
// One thread per 16 consecutive values (a quarter of a block), written with 16-byte stores.
#include "tritpack-cuda.cuh"
#include "convert.cuh"

#include <type_traits>

#define TRITPACK_DEQUANTIZE_BLOCK_SIZE 256

// 16 values d*(code-1) or d*kv[...] already in floats -> y[0..15]
template <typename dst_t, bool vec>
static __device__ __forceinline__ void tritpack_store16(dst_t * __restrict__ y, const float * f) {
    if constexpr (vec && std::is_same_v<dst_t, float>) {
        float4 * y4 = (float4 *) y;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            y4[k] = make_float4(f[4*k + 0], f[4*k + 1], f[4*k + 2], f[4*k + 3]);
        }
    } else if constexpr (vec) {
        static_assert(sizeof(dst_t) == 2, "2-byte destination expected");
        struct alignas(16) { dst_t h[16]; } tmp;
#pragma unroll
        for (int k = 0; k < 16; ++k) {
            tmp.h[k] = ggml_cuda_cast<dst_t>(f[k]);
        }
        const uint4 * src = (const uint4 *) tmp.h;
        uint4 * dst = (uint4 *) y;
        dst[0] = src[0];
        dst[1] = src[1];
    } else {
#pragma unroll
        for (int k = 0; k < 16; ++k) {
            y[k] = ggml_cuda_cast<dst_t>(f[k]);
        }
    }
}

// Strided source (s01, s02, s03 in blocks), contiguous destination of ne00*ne01*ne02*ne03 values.
// grid: x over the 16-value groups of a row, y over rows, z over ne02*ne03.
template <ggml_type type, typename dst_t, bool vec>
static __global__ void tritpack_dequantize_kernel(
        const void * __restrict__ vx, dst_t * __restrict__ y,
        const int64_t ne00, const int64_t ne01, const int64_t ne02, const int64_t ne0203,
        const int64_t s01, const int64_t s02, const int64_t s03) {
    constexpr int qk = ggml_cuda_type_traits<type>::qk;
    constexpr int groups_per_block = qk/16;

    const int64_t g = (int64_t) blockDim.x*blockIdx.x + threadIdx.x; // group in the row
    if (g >= ne00/16) {
        return;
    }
    const int64_t ib_row = g / groups_per_block;
    const int     n      = (int) (g % groups_per_block);

    for (int64_t i01 = blockIdx.y; i01 < ne01; i01 += gridDim.y) {
        for (int64_t i0203 = blockIdx.z; i0203 < ne0203; i0203 += gridDim.z) {
            const int64_t i02 = i0203 % ne02;
            const int64_t i03 = i0203 / ne02;
            const int64_t ib  = i03*s03 + i02*s02 + i01*s01 + ib_row;

            float f[16];
            if constexpr (type == GGML_TYPE_TP1) {
                tritpack_tp1_group_values(vx, ib, n, f);
            } else {
                static_assert(type == GGML_TYPE_TP4, "unsupported type");
                tritpack_tp4_group_values(vx, ib, n, f);
            }

            tritpack_store16<dst_t, vec>(y + (i0203*ne01 + i01)*ne00 + 16*g, f);
        }
    }
}

template <ggml_type type, typename dst_t>
static void tritpack_dequantize_cuda(
        const void * vx, dst_t * y, const int64_t ne00, const int64_t ne01, const int64_t ne02, const int64_t ne03,
        const int64_t s01, const int64_t s02, const int64_t s03, cudaStream_t stream) {
    GGML_ASSERT(ne00 % ggml_cuda_type_traits<type>::qk == 0);
    const int64_t ngroups = ne00/16;
    const dim3 num_blocks((ngroups + TRITPACK_DEQUANTIZE_BLOCK_SIZE - 1) / TRITPACK_DEQUANTIZE_BLOCK_SIZE,
                          (int) std::min(ne01, (int64_t) 65535), (int) std::min(ne02*ne03, (int64_t) 65535));
    if ((uintptr_t) y % 16 == 0) {
        tritpack_dequantize_kernel<type, dst_t, true><<<num_blocks, TRITPACK_DEQUANTIZE_BLOCK_SIZE, 0, stream>>>
            (vx, y, ne00, ne01, ne02, ne02*ne03, s01, s02, s03);
    } else {
        tritpack_dequantize_kernel<type, dst_t, false><<<num_blocks, TRITPACK_DEQUANTIZE_BLOCK_SIZE, 0, stream>>>
            (vx, y, ne00, ne01, ne02, ne02*ne03, s01, s02, s03);
    }
}

// contiguous: one row of k values (the block index never leaves the row, so the strides do not matter)
#define TRITPACK_DEQUANTIZE_ENTRY_POINTS(name, type, dst_t)                                                         \
    void tritpack_dequantize_row_##name##_cuda(const void * vx, dst_t * y, int64_t k, cudaStream_t stream) {      \
        tritpack_dequantize_cuda<type, dst_t>(vx, y, k, 1, 1, 1, 0, 0, 0, stream);                                  \
    }                                                                                                               \
    void tritpack_dequantize_##name##_nc_cuda(const void * vx, dst_t * y, int64_t ne00, int64_t ne01, int64_t ne02, \
                                              int64_t ne03, int64_t s01, int64_t s02, int64_t s03,                 \
                                              cudaStream_t stream) {                                                \
        tritpack_dequantize_cuda<type, dst_t>(vx, y, ne00, ne01, ne02, ne03, s01, s02, s03, stream);                \
    }

TRITPACK_DEQUANTIZE_ENTRY_POINTS(tp1, GGML_TYPE_TP1, float)
TRITPACK_DEQUANTIZE_ENTRY_POINTS(tp1, GGML_TYPE_TP1, half)
TRITPACK_DEQUANTIZE_ENTRY_POINTS(tp1, GGML_TYPE_TP1, nv_bfloat16)
TRITPACK_DEQUANTIZE_ENTRY_POINTS(tp4, GGML_TYPE_TP4, float)
TRITPACK_DEQUANTIZE_ENTRY_POINTS(tp4, GGML_TYPE_TP4, half)
TRITPACK_DEQUANTIZE_ENTRY_POINTS(tp4, GGML_TYPE_TP4, nv_bfloat16)
