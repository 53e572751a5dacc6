// One MUL_MAT through the CPU backend, timed: TP1 in the CPU_TRITPACK buffer (repacked) and in the plain
// buffer, TQ2_0 and TQ1_0 (plain; only where the row length is a multiple of 256) and Q4_0 in ggml's own
// CPU_REPACK buffer, the same random weights (ggml_quantize_chunk) and activations, run in turns, best
// and median of many runs. A kernel-level A/B that stays usable on a loaded machine (each run is short,
// the best of many is a run that was not interrupted), beside llama-bench, which needs an idle one.
//
//   g++ -O2 -std=c++17 -I$SRC/ggml/include -Iggml_kernels bench/repack-matvec.cpp -o matvec
//       -L$LIB -lggml -lggml-base -lggml-cpu -Wl,-rpath,$LIB            (one command line)
//   ./matvec THREADS K N COLS REPS        e.g. ./matvec 1 2048 5632 1 200
//   ./matvec THREADS K N COLS REPS tp4    TP4 (repacked, plain) beside IQ4_NL and Q4_0 (repacked)
//
// ($LIB: the folder `tritpack-gguf build` prints; $SRC: its source_dir, `tritpack-gguf build --json`.)
#include "ggml.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "tritpack-cpu.h"
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>
#include <algorithm>
static std::mt19937 rng(42);
static void fill(float * p, size_t n) { std::normal_distribution<float> d; for (size_t i = 0; i < n; ++i) p[i] = d(rng); }
struct Op { ggml_context * cw, * ca; ggml_backend_buffer_t bw; ggml_cgraph * gf; const char * name; double best = 1e9; std::vector<double> ts; };
static Op make(ggml_backend_buffer_type_t buft, ggml_type t, int64_t K, int64_t N, int64_t ncols, const char * name) {
    Op o; o.name = name;
    ggml_init_params wp = { ggml_tensor_overhead()*4, nullptr, true };
    o.cw = ggml_init(wp);
    ggml_tensor * W = ggml_new_tensor_2d(o.cw, t, K, N);
    o.bw = ggml_backend_alloc_ctx_tensors_from_buft(o.cw, buft);
    std::vector<float> w(K*N); fill(w.data(), w.size());
    std::vector<uint8_t> wq(ggml_row_size(t, K)*N);
    ggml_quantize_chunk(t, w.data(), wq.data(), 0, N, K, nullptr);
    ggml_backend_tensor_set(W, wq.data(), 0, wq.size());
    ggml_init_params ap = { (size_t) 64*1024*1024, nullptr, false };
    o.ca = ggml_init(ap);
    ggml_tensor * X = ggml_new_tensor_2d(o.ca, GGML_TYPE_F32, K, ncols);
    fill((float *) X->data, K*ncols);
    ggml_tensor * out = ggml_mul_mat(o.ca, W, X);
    o.gf = ggml_new_graph(o.ca);
    ggml_build_forward_expand(o.gf, out);
    return o;
}
int main(int argc, char ** argv) {
    int nth = argc > 1 ? atoi(argv[1]) : 1;
    int64_t K = argc > 2 ? atoll(argv[2]) : 2048, N = argc > 3 ? atoll(argv[3]) : 5632, nc = argc > 4 ? atoll(argv[4]) : 1;
    int reps = argc > 5 ? atoi(argv[5]) : 200;
    ggml_backend_t be = ggml_backend_cpu_init();
    ggml_backend_cpu_set_n_threads(be, nth);
    ggml_backend_buffer_type_t tp = ggml_backend_cpu_tritpack_buffer_type();
    // ggml's own repack (Q4_0): the CPU device's extra buffer types
    ggml_backend_dev_t dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(dev);
    auto get_extra = (ggml_backend_buffer_type_t * (*)(ggml_backend_dev_t)) ggml_backend_reg_get_proc_address(reg, "ggml_backend_dev_get_extra_bufts");
    ggml_backend_buffer_type_t rp = nullptr;
    for (ggml_backend_buffer_type_t * b = get_extra(dev); b && *b; ++b) if (strcmp(ggml_backend_buft_name(*b), "CPU_REPACK") == 0) rp = *b;
    const bool tp4 = argc > 6 && strcmp(argv[6], "tp4") == 0;
    std::vector<Op> ops;
    if (tp4) {
        // TP4 beside the stock types of its size, both in ggml's CPU_REPACK
        if (tp) ops.push_back(make(tp, (ggml_type) 81, K, N, nc, "TP4 repacked"));
        ops.push_back(make(ggml_backend_cpu_buffer_type(), (ggml_type) 81, K, N, nc, "TP4 plain"));
        if (rp) ops.push_back(make(rp, GGML_TYPE_IQ4_NL, K, N, nc, "IQ4_NL repacked"));
    } else {
        if (tp) ops.push_back(make(tp, (ggml_type) 80, K, N, nc, "TP1 repacked"));
        ops.push_back(make(ggml_backend_cpu_buffer_type(), (ggml_type) 80, K, N, nc, "TP1 plain"));
        if (K % 256 == 0) ops.push_back(make(ggml_backend_cpu_buffer_type(), GGML_TYPE_TQ2_0, K, N, nc, "TQ2_0"));
        if (K % 256 == 0) ops.push_back(make(ggml_backend_cpu_buffer_type(), GGML_TYPE_TQ1_0, K, N, nc, "TQ1_0"));
    }
    if (rp) ops.push_back(make(rp, GGML_TYPE_Q4_0, K, N, nc, "Q4_0 repacked"));
    for (int r = 0; r < reps; ++r) for (auto & o : ops) {
        auto t0 = std::chrono::high_resolution_clock::now();
        ggml_backend_graph_compute(be, o.gf);
        double dt = std::chrono::duration<double>(std::chrono::high_resolution_clock::now() - t0).count();
        o.best = std::min(o.best, dt); o.ts.push_back(dt);
    }
    for (auto & o : ops) { std::sort(o.ts.begin(), o.ts.end());
        printf("%-15s t=%d K=%lld N=%lld cols=%lld: best %7.1f us (%5.1f Gw/s)  median %7.1f us\n", o.name, nth, (long long) K, (long long) N, (long long) nc,
               o.best*1e6, K*N*nc/o.best*1e-9, o.ts[o.ts.size()/2]*1e6); }
    return 0;
}
