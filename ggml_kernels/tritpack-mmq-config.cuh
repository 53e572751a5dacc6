// tritpack-gguf: MMQ tile configurations of TP1/TP4 (CASE lines, see mmq.cuh), included inside
// ggml_cuda_mmq_get_config_ampere() (patch 0011): Volta and newer NVIDIA GPUs, Blackwell included
// (its config falls back to the Ampere one). The tile sizes of Q2_0 (TP1, Q8_0 tile) and IQ2_XS (TP4,
// tile with a scale per 16 values): 256 threads, 128 rows per tile, stream-k.
// No other config table lists our types, so ggml_cuda_should_use_mmq() keeps them off MMQ there
// (tritpack_mmq_supported) and they take the dequantize + cuBLAS path.
#define TRITPACK_MMQ_CASES(t, L)                                      \
    CASE(t, 256, 1, 128,   8, L, MMQ_ITER_K, true, true);             \
    CASE(t, 256, 1, 128,  16, L, MMQ_ITER_K, true, true);             \
    CASE(t, 256, 1, 128,  32, L, MMQ_ITER_K, true, true);             \
    CASE(t, 256, 1, 128,  64, L, MMQ_ITER_K, true, true);             \
    CASE(t, 256, 1, 128, 128, L, MMQ_ITER_K, true, true);             \
    CASE(t, 256, 1, 128,   8, L, MMQ_ITER_K, true, false);            \
    CASE(t, 256, 1, 128,  16, L, MMQ_ITER_K, true, false);            \
    CASE(t, 256, 1, 128,  24, L, MMQ_ITER_K, true, false);            \
    CASE(t, 256, 1, 128,  32, L, MMQ_ITER_K, true, false);            \
    CASE(t, 256, 1, 128,  40, L, MMQ_ITER_K, true, false);            \
    CASE(t, 256, 1, 128,  48, L, MMQ_ITER_K, true, false);            \
    CASE(t, 256, 1, 128,  64, L, MMQ_ITER_K, true, false);            \
    CASE(t, 256, 1, 128,  80, L, MMQ_ITER_K, true, false);            \
    CASE(t, 256, 1, 128,  96, L, MMQ_ITER_K, true, false);            \
    CASE(t, 256, 1, 128, 112, L, MMQ_ITER_K, true, false);            \
    CASE(t, 256, 1, 128, 128, L, MMQ_ITER_K, true, false);

    TRITPACK_MMQ_CASES(GGML_TYPE_TP1, GGML_CUDA_MMQ_SRAM_LAYOUT_Q8_0) // int8 -1..1, a scale per 32
    TRITPACK_MMQ_CASES(GGML_TYPE_TP4, GGML_CUDA_MMQ_SRAM_LAYOUT_Q3_K) // int8 entries, a scale per 16

#undef TRITPACK_MMQ_CASES
