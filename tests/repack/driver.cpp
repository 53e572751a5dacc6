// MUL_MAT and MUL_MAT_ID with TP1/TP4 weights in the CPU_TRITPACK buffer vs the same weights in the plain
// CPU buffer, through the ggml API and the CPU backend (2 threads): the repacked kernels, their threading
// and the expert routing of MUL_MAT_ID. Built and run by tests/test_repack.py. The same activations
// both ways (TP1: TPQ16, TP4: Q8_0), so only float rounding differs.
#include "ggml.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "tritpack-cpu.h"
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

static std::mt19937 rng(42);
static void fill(float * p, size_t n) { std::normal_distribution<float> d; for (size_t i = 0; i < n; ++i) p[i] = d(rng); }

static std::vector<float> run(ggml_backend_t be, ggml_backend_buffer_type_t buft, ggml_type t, const std::vector<uint8_t> & wq,
                              int64_t K, int64_t N, int64_t n_as, const std::vector<float> & x, int64_t n_used, int64_t n_tok,
                              const std::vector<int32_t> & ids, bool id) {
    ggml_init_params wp = { ggml_tensor_overhead()*4, nullptr, true };
    ggml_context * cw = ggml_init(wp);
    ggml_tensor * W = id ? ggml_new_tensor_3d(cw, t, K, N, n_as) : ggml_new_tensor_2d(cw, t, K, N);
    ggml_backend_buffer_t bw = ggml_backend_alloc_ctx_tensors_from_buft(cw, buft);
    ggml_backend_tensor_set(W, wq.data(), 0, wq.size());
    ggml_init_params ap = { 256*1024*1024, nullptr, false };
    ggml_context * ca = ggml_init(ap);
    ggml_tensor * out;
    if (id) {
        ggml_tensor * X = ggml_new_tensor_3d(ca, GGML_TYPE_F32, K, n_used == 1 ? 1 : n_used, n_tok);
        memcpy(X->data, x.data(), ggml_nbytes(X));
        ggml_tensor * I = ggml_new_tensor_2d(ca, GGML_TYPE_I32, n_used, n_tok);
        memcpy(I->data, ids.data(), ggml_nbytes(I));
        out = ggml_mul_mat_id(ca, W, X, I);
    } else {
        ggml_tensor * X = ggml_new_tensor_2d(ca, GGML_TYPE_F32, K, n_tok);
        memcpy(X->data, x.data(), ggml_nbytes(X));
        out = ggml_mul_mat(ca, W, X);
    }
    ggml_cgraph * gf = ggml_new_graph(ca);
    ggml_build_forward_expand(gf, out);
    if (ggml_backend_graph_compute(be, gf) != GGML_STATUS_SUCCESS) { fprintf(stderr, "compute failed\n"); exit(1); }
    std::vector<float> r((float *) out->data, (float *) out->data + ggml_nelements(out));
    ggml_free(ca); ggml_backend_buffer_free(bw); ggml_free(cw);
    return r;
}

int main() {
    ggml_backend_t be = ggml_backend_cpu_init();
    ggml_backend_cpu_set_n_threads(be, 2);
    ggml_backend_buffer_type_t tp = ggml_backend_cpu_tritpack_buffer_type();
    if (!tp) { printf("no CPU_TRITPACK\n"); return 1; }
    int fails = 0;
    struct C { int64_t K, N, n_as, n_used, n_tok; bool id; };
    const C cases[] = { {576, 576, 1, 1, 1, false}, {896, 4864/8*8, 1, 1, 7, false}, {576, 1536, 1, 1, 33, false},
                        {896, 896, 1, 1, 512, false}, {2048, 64, 1, 1, 129, false},
                        {576, 64, 8, 2, 1, true}, {896, 128, 8, 2, 37, true}, {576, 48, 4, 1, 9, true}, {1024, 32, 16, 4, 100, true} };
    for (ggml_type t : { (ggml_type) 80, (ggml_type) 81 }) {
        for (const C & c : cases) {
            std::vector<float> w(c.K*c.N*c.n_as); fill(w.data(), w.size());
            std::vector<uint8_t> wq(ggml_row_size(t, c.K)*c.N*c.n_as);
            ggml_quantize_chunk(t, w.data(), wq.data(), 0, c.N*c.n_as, c.K, nullptr);
            std::vector<float> x(c.K*c.n_used*c.n_tok); fill(x.data(), x.size());
            std::vector<int32_t> ids(c.n_used*c.n_tok);
            for (int64_t tok = 0; tok < c.n_tok; ++tok) for (int64_t i = 0; i < c.n_used; ++i) ids[tok*c.n_used + i] = (int32_t) ((tok*7 + i*3 + (tok*i)%5) % c.n_as);
            if (c.id) for (int64_t tok = 0; tok < c.n_tok; ++tok) if (c.n_used > 1 && ids[tok*c.n_used] == ids[tok*c.n_used+1]) ids[tok*c.n_used+1] = (ids[tok*c.n_used+1]+1) % c.n_as;
            auto a = run(be, tp, t, wq, c.K, c.N, c.n_as, x, c.n_used, c.n_tok, ids, c.id);
            auto b = run(be, ggml_backend_cpu_buffer_type(), t, wq, c.K, c.N, c.n_as, x, c.n_used, c.n_tok, ids, c.id);
            double e = 0, nn = 0;
            for (size_t i = 0; i < a.size(); ++i) { e += (a[i]-b[i])*(a[i]-b[i]); nn += b[i]*b[i]; }
            const double rel = sqrt(e/nn);
            const double tol = 1e-5;
            const bool ok = rel <= tol && std::isfinite(rel);
            fails += !ok;
            printf("%s %s K=%lld N=%lld n_as=%lld n_used=%lld cols=%lld: rel rms diff %.3g %s\n", t == 80 ? "TP1" : "TP4", c.id ? "MUL_MAT_ID" : "MUL_MAT",
                   (long long) c.K, (long long) c.N, (long long) c.n_as, (long long) c.n_used, (long long) c.n_tok, rel, ok ? "ok" : "FAIL");
        }
    }
    printf("%s\n", fails ? "FAILED" : "all ok");
    return fails != 0;
}
