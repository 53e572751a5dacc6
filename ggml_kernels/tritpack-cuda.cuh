// tritpack-gguf: TP1/TP4 device code for ggml-cuda.
//
// Included by the patched ggml-cuda sources (patches/0008..0012): mmvq.cu (vec_dot_*_q8_1),
// convert.cu and getrows.cu (dequantize), mmq.cuh through tritpack-mmq.cuh (load_tiles). The
// weights are decoded in registers inside those kernels; nothing is materialized except on the
// dequantize + cuBLAS path, which gets its own kernels (tritpack-convert.cu).
//
// Block layouts: tritpack-common.h. TP1 blocks are 15 bytes, so a block starts at any byte
// alignment: it is read with aligned 32-bit loads of the words that hold it (4, or 5 when the
// block starts at byte 2 or 3 of a word) and funnel shifts. Every word read holds at least one
// byte of the block, so no read leaves the tensor's 4-byte-aligned extent (ggml pads every
// allocation to at least 128 bytes).
#pragma once

#include "common.cuh"
#include "vecdotq.cuh"
#include "tritpack-cuda-common.cuh"
#include "tp4-codebooks.h"

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <utility>

// The decoders below hard-code these layouts (tritpack-common.h); a change there must fail here.
static_assert(QK_TP1 == 64 && sizeof(block_tp1) == 15 && offsetof(block_tp1, d) == 13, "TP1 layout changed");
static_assert(QK_TP4 == 64 && TP4_NSUB == 4 && sizeof(block_tp4) == 36 && offsetof(block_tp4, d) == 0 &&
              offsetof(block_tp4, sc) == 2 && offsetof(block_tp4, qs) == 4, "TP4 layout changed");

// #pragma unroll for __host__ __device__ functions: only in the device pass (the host compiler warns)
#ifdef __CUDA_ARCH__
#define TRITPACK_UNROLL _Pragma("unroll")
#else
#define TRITPACK_UNROLL
#endif // __CUDA_ARCH__

// ---------------------------------------------------------------------------------------------
// bit helpers, also compiled for the host so that tests/test_cuda_compile.py can check the decode
// against the C reference without a GPU
// ---------------------------------------------------------------------------------------------

// __byte_perm: byte i of the result is byte ((s >> 4i) & 7) of y:x (selectors here are all < 8)
static __host__ __device__ __forceinline__ uint32_t tritpack_prmt(const uint32_t x, const uint32_t y, const uint32_t s) {
#ifdef __CUDA_ARCH__
    return __byte_perm(x, y, s);
#else
    const uint64_t xy = ((uint64_t) y << 32) | x;
    uint32_t r = 0;
    for (int i = 0; i < 4; ++i) {
        r |= (uint32_t) ((xy >> (8*((s >> (4*i)) & 7))) & 0xFF) << (8*i);
    }
    return r;
#endif // __CUDA_ARCH__
}

// __funnelshift_r: the low word of hi:lo >> (sh & 31)
static __host__ __device__ __forceinline__ uint32_t tritpack_fshr(const uint32_t lo, const uint32_t hi, const uint32_t sh) {
#ifdef __CUDA_ARCH__
    return __funnelshift_r(lo, hi, sh);
#else
    return (uint32_t) ((((uint64_t) hi << 32) | lo) >> (sh & 31));
#endif // __CUDA_ARCH__
}

// 32-bit load of a word of the weights (read-only path on the device; the host version is for the
// decode checks in tests/test_cuda_compile.py, which can hook it to check the bounds of every read)
static __host__ __device__ __forceinline__ uint32_t tritpack_ld32(const uint32_t * p) {
#ifdef __CUDA_ARCH__
    return __ldg(p);
#elif defined(TRITPACK_HOST_LD32)
    return TRITPACK_HOST_LD32(p);
#else
    return *p;
#endif // __CUDA_ARCH__
}

static __host__ __device__ __forceinline__ int tritpack_dp4a(const int a, const int b, const int c) {
#ifdef __CUDA_ARCH__
    return ggml_cuda_dp4a(a, b, c);
#else
    int r = c;
    for (int i = 0; i < 4; ++i) {
        r += (int) (int8_t) (a >> (8*i)) * (int) (int8_t) (b >> (8*i));
    }
    return r;
#endif // __CUDA_ARCH__
}

// ---------------------------------------------------------------------------------------------
// TP1 decode
// ---------------------------------------------------------------------------------------------

// The 15 bytes of block ib as four little-endian words: q0..q2 = qs[0..11], q3 = qs[12] | d << 8
// (byte 3 of q3 is not part of the block).
static __host__ __device__ __forceinline__ void tritpack_tp1_load(
        const void * __restrict__ vx, const int64_t ib, uint32_t & q0, uint32_t & q1, uint32_t & q2, uint32_t & q3) {
    const uintptr_t  p  = (uintptr_t) vx + (uintptr_t) ib * sizeof(block_tp1);
    const uint32_t   a  = (uint32_t) p & 3u;
    const uint32_t * w  = (const uint32_t *) (p - a);
    const uint32_t   sh = 8u*a;
    const uint32_t w0 = tritpack_ld32(w + 0);
    const uint32_t w1 = tritpack_ld32(w + 1);
    const uint32_t w2 = tritpack_ld32(w + 2);
    const uint32_t w3 = tritpack_ld32(w + 3);
    const uint32_t w4 = a >= 2u ? tritpack_ld32(w + 4) : 0u; // only then does the block reach into word 4
    q0 = tritpack_fshr(w0, w1, sh);
    q1 = tritpack_fshr(w1, w2, sh);
    q2 = tritpack_fshr(w2, w3, sh);
    q3 = tritpack_fshr(w3, w4, sh);
}

static __host__ __device__ __forceinline__ float tritpack_tp1_scale(const uint32_t q3) {
    return __half2float(__ushort_as_half((unsigned short) (q3 >> 8)));
}

// The codes (value + 1, so 0..2) of the 64 elements of a TP1 block, four per int:
// v[4*n + k] holds elements 16*n + 4*k .. 16*n + 4*k + 3, one code per byte (little endian).
//
// Trit n of byte q is ((uint8_t)(q * 3^n) * 3) >> 8. With t_0 = q and t_{n+1} = 3*t_n mod 256, trit n
// is (3*t_n) >> 8. The bytes of a word are kept in two words of 16-bit lanes (even bytes, odd bytes),
// where 3*t <= 765 never carries into the next lane: per plane and 4 bytes that is 2 multiplies,
// 2 masks and one byte permute that gathers the four trits (bits 8..9 of each lane) into bytes.
static __host__ __device__ __forceinline__ void tritpack_tp1_codes(
        const uint32_t q0, const uint32_t q1, const uint32_t q2, const uint32_t q3, int v[16]) {
    constexpr uint32_t M = 0x00FF00FFu;

    uint32_t e0 = q0 & M, o0 = (q0 >> 8) & M;
    uint32_t e1 = q1 & M, o1 = (q1 >> 8) & M;
    uint32_t e2 = q2 & M, o2 = (q2 >> 8) & M;
    uint32_t e3 = q3 & 0xFFu; // qs[12]

    uint32_t u12[4];
TRITPACK_UNROLL
    for (int n = 0; n < 4; ++n) {
        e0 *= 3u; o0 *= 3u; e1 *= 3u; o1 *= 3u; e2 *= 3u; o2 *= 3u; e3 *= 3u;
        // elements 16n + 0..11: plane n of bytes 0..11
        v[4*n + 0] = (int) tritpack_prmt(e0, o0, 0x7351);
        v[4*n + 1] = (int) tritpack_prmt(e1, o1, 0x7351);
        v[4*n + 2] = (int) tritpack_prmt(e2, o2, 0x7351);
        u12[n] = e3; // element 16n + 12: plane n of byte 12, in byte 1
        e0 &= M; o0 &= M; e1 &= M; o1 &= M; e2 &= M; o2 &= M; e3 &= 0xFFu;
    }

    // plane 4 of bytes 0..11: elements 16*(m/3) + 13 + m%3
    e0 *= 3u; o0 *= 3u; e1 *= 3u; o1 *= 3u; e2 *= 3u; o2 *= 3u;
    const uint32_t p0 = tritpack_prmt(e0, o0, 0x7351); // bytes 0..3
    const uint32_t p1 = tritpack_prmt(e1, o1, 0x7351); // bytes 4..7
    const uint32_t p2 = tritpack_prmt(e2, o2, 0x7351); // bytes 8..11

    // byte 12, planes 0..3
    const uint32_t c12 = tritpack_prmt(tritpack_prmt(u12[0], u12[1], 0x0051), tritpack_prmt(u12[2], u12[3], 0x0051), 0x5410);

    // elements 16n + 12..15: [byte 12 plane n, plane 4 of bytes 3n, 3n+1, 3n+2]
    v[ 3] = (int) tritpack_prmt(c12, p0, 0x6540);
    v[ 7] = (int) tritpack_prmt(c12, tritpack_prmt(p0, p1, 0x5430), 0x7651);
    v[11] = (int) tritpack_prmt(c12, tritpack_prmt(p1, p2, 0x4320), 0x7652);
    v[15] = (int) tritpack_prmt(c12, p2, 0x7653);
}

// The codes of group n (elements 16n .. 16n+15) only, for kernels that spread a block over four
// threads (the dequantize kernels): v[k] holds elements 16n + 4k .. 16n + 4k + 3.
static __host__ __device__ __forceinline__ void tritpack_tp1_group_codes(
        const uint32_t q0, const uint32_t q1, const uint32_t q2, const uint32_t q3, const int n, int v[4]) {
    constexpr uint32_t M = 0x00FF00FFu;
    const uint32_t m = (uint32_t) (0x1B090301u >> (8*n)) & 0xFFu; // 3^n

    const uint32_t qw[3] = { q0, q1, q2 };
TRITPACK_UNROLL
    for (int k = 0; k < 3; ++k) {
        const uint32_t e = (((qw[k]      ) & M) * m) & M;
        const uint32_t o = (((qw[k] >> 8) & M) * m) & M;
        v[k] = (int) tritpack_prmt(3u*e, 3u*o, 0x7351);
    }

    // element 16n + 12: plane n of byte 12 (code in byte 1 of u12)
    const uint32_t u12 = (((q3 & 0xFFu) * m) & 0xFFu) * 3u;

    // elements 16n + 13..15: plane 4 of bytes 3n .. 3n+2 (byte offset 3n of q0:q1:q2)
    const uint32_t lo = n == 0 ? q0 : n == 1 ? q0 : n == 2 ? q1 : q2;
    const uint32_t hi = n == 0 ? q1 : n == 1 ? q1 : q2;
    const uint32_t w4 = tritpack_fshr(lo, hi, (8u*(3u*n)) & 31u);
    const uint32_t e4 = (((w4     ) & M) * 81u) & M;
    const uint32_t o4 = (((w4 >> 8) & M) * 81u) & M;
    const uint32_t p4 = tritpack_prmt(3u*e4, 3u*o4, 0x7351);

    v[3] = (int) tritpack_prmt(u12, p4, 0x6541);
}

// codes 0..2 -> int8 -1..1 in every byte (no carries: 0x7F + 2 < 0x100)
static __host__ __device__ __forceinline__ int tritpack_codes_to_i8(const int v) {
    return (int) (((uint32_t) v + 0x7F7F7F7Fu) ^ 0x80808080u);
}

// One element's code, for the generic per-element templates (get_rows, non-contiguous convert).
static __host__ __device__ __forceinline__ int tritpack_tp1_code(const uint8_t * __restrict__ qs, const int j) {
    const int n = j >> 4;
    const int m = j & 15;
    const int byte  = m < 13 ? m : 3*n + m - 13;
    const int plane = m < 13 ? n : 4;
    const uint32_t pow3 = (uint32_t) (0x511B090301ull >> (8*plane)) & 0xFFu; // 1, 3, 9, 27, 81
    const uint32_t t = (qs[byte] * pow3) & 0xFFu;
    return (int) ((t * 3u) >> 8);
}

// element j of block x (per-element templates: get_rows, non-contiguous convert)
static __host__ __device__ __forceinline__ float tritpack_tp1_value(const block_tp1 * __restrict__ x, const int j) {
    const float d = __half2float(__ushort_as_half(tritpack_scale_bits(x->d)));
    return d * (float) (tritpack_tp1_code(x->qs, j) - 1);
}

// dequantize_kernel_t: elements iqs and iqs + 1 of block ib (QR_TP1 == 1)
static __device__ __forceinline__ void tritpack_dequantize_tp1(const void * vx, const int64_t ib, const int iqs, float2 & v) {
    const block_tp1 * x = (const block_tp1 *) vx + ib;
    v.x = tritpack_tp1_value(x, iqs + 0);
    v.y = tritpack_tp1_value(x, iqs + 1);
}

// the 16 values of group n (elements 16n .. 16n+15) of block ib, for the dequantize kernels
static __host__ __device__ __forceinline__ void tritpack_tp1_group_values(const void * __restrict__ vx, const int64_t ib, const int n, float f[16]) {
    uint32_t q0, q1, q2, q3;
    tritpack_tp1_load(vx, ib, q0, q1, q2, q3);
    int v[4];
    tritpack_tp1_group_codes(q0, q1, q2, q3, n, v);
    const float d = tritpack_tp1_scale(q3);
TRITPACK_UNROLL
    for (int k = 0; k < 16; ++k) {
        f[k] = d * (float) ((int) ((v[k/4] >> (8*(k%4))) & 0xFF) - 1);
    }
}

// ---------------------------------------------------------------------------------------------
// MMVQ: TP1 x q8_1
// ---------------------------------------------------------------------------------------------

// One thread, one whole TP1 block against two q8_1 blocks. The codes are value + 1; the -1 is taken
// off with the q8_1 block sums (ds.y = sum of the unquantized activations), as vec_dot_q4_0_q8_1
// does for Q4_0's -8.
static __host__ __device__ __forceinline__ float tritpack_vec_dot_tp1_q8_1_impl(
    const void * __restrict__ vbq, const block_q8_1 * __restrict__ bq8_1, const int64_t kbx) {

    uint32_t q0, q1, q2, q3;
    tritpack_tp1_load(vbq, kbx, q0, q1, q2, q3);

    int v[16];
    tritpack_tp1_codes(q0, q1, q2, q3, v);

    const int * y0 = (const int *) bq8_1[0].qs;
    const int * y1 = (const int *) bq8_1[1].qs;

    int sumi0 = 0;
    int sumi1 = 0;
TRITPACK_UNROLL
    for (int k = 0; k < 8; ++k) {
        sumi0 = tritpack_dp4a(v[k + 0], y0[k], sumi0);
        sumi1 = tritpack_dp4a(v[k + 8], y1[k], sumi1);
    }

    const float2 ds0 = __half22float2(bq8_1[0].ds);
    const float2 ds1 = __half22float2(bq8_1[1].ds);

    return tritpack_tp1_scale(q3) * ((sumi0*ds0.x - ds0.y) + (sumi1*ds1.x - ds1.y));
}

static __device__ __forceinline__ float vec_dot_tp1_q8_1(
    const void * __restrict__ vbq, const block_q8_1 * __restrict__ bq8_1, const int & kbx, const int & iqs) {
    static_assert(ggml_cuda_type_traits<GGML_TYPE_TP1>::qk == QK_TP1 && ggml_cuda_type_traits<GGML_TYPE_TP1>::qi == QI_TP1 &&
                  VDR_TP1_Q8_1_MMVQ == QI_TP1, "vec_dot_tp1_q8_1 takes one whole block per call (iqs == 0)");
    return tritpack_vec_dot_tp1_q8_1_impl(vbq, bq8_1, kbx);
    GGML_UNUSED(iqs);
}

// ---------------------------------------------------------------------------------------------
// TP4 decode
// ---------------------------------------------------------------------------------------------

// The codebooks for device code: the same table as tp4-codebooks.h (the single source, generated by
// converters/tp4_fit.py), copied into a __device__ array at compile time. Global memory read through
// the read-only cache rather than __constant__: the threads of a warp read different codebooks,
// which the constant cache would serialize.
struct alignas(16) tritpack_tp4_codebooks_t {
    int8_t v[TP4_NCODEBOOKS][16];
};

template <size_t... I>
static constexpr tritpack_tp4_codebooks_t tritpack_tp4_make_codebooks(std::index_sequence<I...>) {
    return tritpack_tp4_codebooks_t{ { tp4_codebooks[I/16][I%16]... } }; // brace elision fills v row by row
}

static __device__ const tritpack_tp4_codebooks_t tritpack_tp4_codebooks_dev =
    tritpack_tp4_make_codebooks(std::make_index_sequence<TP4_NCODEBOOKS*16>{});

static_assert(TP4_NCODEBOOKS == 16, "the sc field holds a 4-bit codebook index");

// codebook k (0..15) as four words (entries 4w .. 4w+3 in word w)
static __host__ __device__ __forceinline__ uint4 tritpack_tp4_codebook(const uint32_t k) {
#ifdef __CUDA_ARCH__
    return __ldg((const uint4 *) tritpack_tp4_codebooks_dev.v[k]);
#else
    uint4 t;
    memcpy(&t, tp4_codebooks[k], sizeof(t));
    return t;
#endif // __CUDA_ARCH__
}

// get_int_from_table_16 (vecdotq.cuh) with the table in registers: the 8 nibbles of q4 looked up in
// the 16 int8 entries of t; .x = the entries of the low nibbles of bytes 0..3, .y = of the high nibbles.
static __host__ __device__ __forceinline__ int2 tritpack_table16(const uint32_t q4, const uint4 t) {
    const uint32_t sel = 0x32103210u | ((q4 & 0x88888888u) >> 1);
    uint32_t tmp[2];
TRITPACK_UNROLL
    for (int i = 0; i < 2; ++i) {
        const uint32_t shift = 16*i;
        const uint32_t low  = tritpack_prmt(t.x, t.y, q4 >> shift);
        const uint32_t high = tritpack_prmt(t.z, t.w, q4 >> shift);
        tmp[i] = tritpack_prmt(low, high, sel >> shift);
    }
    return make_int2((int) tritpack_prmt(tmp[0], tmp[1], 0x6420), (int) tritpack_prmt(tmp[0], tmp[1], 0x7531));
}

// sub-block scale code (3 bits) -> -7..-4, 4..7: tritpack_tp4_scale of tritpack-common.h

// word 0 of a block: d (bits 0..15), sc (bits 16..31). Blocks are 36 bytes: 4-byte aligned.
static __host__ __device__ __forceinline__ const uint32_t * tritpack_tp4_words(const void * __restrict__ vx, const int64_t ib) {
    return (const uint32_t *) ((const char *) vx + ib*(int64_t) sizeof(block_tp4));
}

static __host__ __device__ __forceinline__ float tritpack_tp4_d(const uint32_t w0) {
    return __half2float(__ushort_as_half((unsigned short) (w0 & 0xFFFFu)));
}

// entry q of codebook k
static __host__ __device__ __forceinline__ int tritpack_tp4_entry(const uint32_t k, const uint32_t q) {
#ifdef __CUDA_ARCH__
    return tritpack_tp4_codebooks_dev.v[k][q];
#else
    return tp4_codebooks[k][q];
#endif // __CUDA_ARCH__
}

// element j of block x (per-element templates: get_rows, non-contiguous convert)
static __host__ __device__ __forceinline__ float tritpack_tp4_value(const block_tp4 * __restrict__ x, const int j) {
    const float    d  = __half2float(__ushort_as_half(tritpack_scale_bits(x->d)));
    const uint32_t sc = x->sc[0] | (x->sc[1] << 8);
    const float    dl = d * (float) tritpack_tp4_scale(sc >> (4 + 3*(j/16)));
    const uint32_t q  = (x->qs[j % 32] >> (4*(j/32))) & 0xFu;
    return dl * (float) tritpack_tp4_entry(sc & 15u, q);
}

// dequantize_kernel_t: elements iqs and iqs + 1 of block ib (QR_TP4 == 1)
static __device__ __forceinline__ void tritpack_dequantize_tp4(const void * vx, const int64_t ib, const int iqs, float2 & v) {
    const block_tp4 * x = (const block_tp4 *) vx + ib;
    v.x = tritpack_tp4_value(x, iqs + 0);
    v.y = tritpack_tp4_value(x, iqs + 1);
}

// the 16 values of sub-block n (elements 16n .. 16n+15) of block ib, for the dequantize kernels:
// the low (n < 2) or high (n >= 2) nibbles of qs bytes 16*(n%2) .. 16*(n%2) + 15
static __host__ __device__ __forceinline__ void tritpack_tp4_group_values(const void * __restrict__ vx, const int64_t ib, const int n, float f[16]) {
    const uint32_t * w  = tritpack_tp4_words(vx, ib);
    const uint32_t   w0 = tritpack_ld32(w);
    const uint32_t   sc = w0 >> 16;
    const uint4      cb = tritpack_tp4_codebook(sc & 15u);
    const float      dl = tritpack_tp4_d(w0) * (float) tritpack_tp4_scale(sc >> (4 + 3*n));
TRITPACK_UNROLL
    for (int l = 0; l < 4; ++l) {
        const int2 v  = tritpack_table16(tritpack_ld32(w + 1 + 4*(n % 2) + l), cb);
        const int  vn = n < 2 ? v.x : v.y;
TRITPACK_UNROLL
        for (int b = 0; b < 4; ++b) {
            f[4*l + b] = dl * (float) (int8_t) (vn >> (8*b));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// MMVQ: TP4 x q8_1
// ---------------------------------------------------------------------------------------------

// Two threads per block (iqs = h = 0, 1). Thread h takes qs bytes 16h .. 16h+15: their low nibbles are
// elements 16h .. 16h+15 (sub-block h, ints 4h .. 4h+3 of q8_1 block 0), their high nibbles elements
// 32+16h .. 32+16h+15 (sub-block 2+h, the same ints of q8_1 block 1). Nothing is decoded twice.
static __host__ __device__ __forceinline__ float tritpack_vec_dot_tp4_q8_1_impl(
    const void * __restrict__ vbq, const block_q8_1 * __restrict__ bq8_1, const int64_t kbx, const int h) {

    const uint32_t * w  = tritpack_tp4_words(vbq, kbx);
    const uint32_t   w0 = tritpack_ld32(w);
    const uint32_t   sc = w0 >> 16;
    const uint4      cb = tritpack_tp4_codebook(sc & 15u);

    const int * y0 = (const int *) bq8_1[0].qs + 4*h;
    const int * y1 = (const int *) bq8_1[1].qs + 4*h;

    int sumi_lo = 0;
    int sumi_hi = 0;
TRITPACK_UNROLL
    for (int l = 0; l < 4; ++l) {
        const int2 v = tritpack_table16(tritpack_ld32(w + 1 + 4*h + l), cb);
        sumi_lo = tritpack_dp4a(v.x, y0[l], sumi_lo);
        sumi_hi = tritpack_dp4a(v.y, y1[l], sumi_hi);
    }
    sumi_lo *= tritpack_tp4_scale(sc >> (4 + 3*(h + 0)));
    sumi_hi *= tritpack_tp4_scale(sc >> (4 + 3*(h + 2)));

    const float d8_0 = __low2float(bq8_1[0].ds);
    const float d8_1 = __low2float(bq8_1[1].ds);

    return tritpack_tp4_d(w0) * (sumi_lo*d8_0 + sumi_hi*d8_1);
}

static __device__ __forceinline__ float vec_dot_tp4_q8_1(
    const void * __restrict__ vbq, const block_q8_1 * __restrict__ bq8_1, const int & kbx, const int & iqs) {
    static_assert(ggml_cuda_type_traits<GGML_TYPE_TP4>::qk == QK_TP4 && ggml_cuda_type_traits<GGML_TYPE_TP4>::qi == QI_TP4 &&
                  QI_TP4 == 2 && VDR_TP4_Q8_1_MMVQ == 1, "vec_dot_tp4_q8_1 takes half a block per call (iqs = 0, 1)");
    return tritpack_vec_dot_tp4_q8_1_impl(vbq, bq8_1, kbx, iqs);
}

// ---------------------------------------------------------------------------------------------
// dequantize + cuBLAS path (tritpack-convert.cu): contiguous and strided (blocks) to F32/F16/BF16
// ---------------------------------------------------------------------------------------------

void tritpack_dequantize_row_tp1_cuda(const void * vx, float       * y, int64_t k, cudaStream_t stream);
void tritpack_dequantize_row_tp1_cuda(const void * vx, half        * y, int64_t k, cudaStream_t stream);
void tritpack_dequantize_row_tp1_cuda(const void * vx, nv_bfloat16 * y, int64_t k, cudaStream_t stream);

void tritpack_dequantize_tp1_nc_cuda(const void * vx, float       * y, int64_t ne00, int64_t ne01, int64_t ne02, int64_t ne03,
                                     int64_t s01, int64_t s02, int64_t s03, cudaStream_t stream);
void tritpack_dequantize_tp1_nc_cuda(const void * vx, half        * y, int64_t ne00, int64_t ne01, int64_t ne02, int64_t ne03,
                                     int64_t s01, int64_t s02, int64_t s03, cudaStream_t stream);
void tritpack_dequantize_tp1_nc_cuda(const void * vx, nv_bfloat16 * y, int64_t ne00, int64_t ne01, int64_t ne02, int64_t ne03,
                                     int64_t s01, int64_t s02, int64_t s03, cudaStream_t stream);

void tritpack_dequantize_row_tp4_cuda(const void * vx, float       * y, int64_t k, cudaStream_t stream);
void tritpack_dequantize_row_tp4_cuda(const void * vx, half        * y, int64_t k, cudaStream_t stream);
void tritpack_dequantize_row_tp4_cuda(const void * vx, nv_bfloat16 * y, int64_t k, cudaStream_t stream);

void tritpack_dequantize_tp4_nc_cuda(const void * vx, float       * y, int64_t ne00, int64_t ne01, int64_t ne02, int64_t ne03,
                                     int64_t s01, int64_t s02, int64_t s03, cudaStream_t stream);
void tritpack_dequantize_tp4_nc_cuda(const void * vx, half        * y, int64_t ne00, int64_t ne01, int64_t ne02, int64_t ne03,
                                     int64_t s01, int64_t s02, int64_t s03, cudaStream_t stream);
void tritpack_dequantize_tp4_nc_cuda(const void * vx, nv_bfloat16 * y, int64_t ne00, int64_t ne01, int64_t ne02, int64_t ne03,
                                     int64_t s01, int64_t s02, int64_t s03, cudaStream_t stream);
