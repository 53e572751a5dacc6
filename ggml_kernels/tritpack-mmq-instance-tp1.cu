// tritpack-gguf: the MMQ template instance of TP1 (what llama.cpp's
// ggml-cuda/template-instances/mmq-instance-*.cu are for the stock types), added to ggml-cuda by
// CMakeLists.txt (TRITPACK_CUDA).
#include "mmq.cuh"

DECL_MMQ_CASE(GGML_TYPE_TP1);
