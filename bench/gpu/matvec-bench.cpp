// Mat-vec bandwidth on the GPU backend: y = W x for W with K columns (ggml ne0) and M rows, in each
// type, and the device-to-device copy bandwidth for reference. The weights rotate over enough
// distinct matrices (>= --min-mib) that they come from DRAM, not from the L2 cache.
#include "ggml.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

static double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

static ggml_backend_t init_backend(bool allow_cpu) {
    ggml_backend_dev_t dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_GPU);
    if (!dev && allow_cpu) {
        dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    }
    if (!dev) {
        fprintf(stderr, "matvec-bench: no GPU backend device\n");
        exit(1);
    }
    fprintf(stderr, "matvec-bench: device %s (%s)\n", ggml_backend_dev_name(dev), ggml_backend_dev_description(dev));
    return ggml_backend_dev_init(dev, nullptr);
}

static void copy_bandwidth(ggml_backend_t be, size_t nbytes, int reps) {
    ggml_init_params ip = { 2*ggml_tensor_overhead(), nullptr, true };
    ggml_context * ctx = ggml_init(ip);
    ggml_tensor * a = ggml_new_tensor_1d(ctx, GGML_TYPE_I8, nbytes);
    ggml_tensor * b = ggml_new_tensor_1d(ctx, GGML_TYPE_I8, nbytes);
    ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(ctx, be);
    if (!buf) { fprintf(stderr, "copy: allocation of 2 x %zu bytes failed\n", nbytes); exit(1); }
    ggml_backend_buffer_clear(buf, 1);
    ggml_backend_tensor_copy(a, b); // warm-up
    ggml_backend_synchronize(be);
    const double t0 = now_s();
    for (int r = 0; r < reps; ++r) {
        ggml_backend_tensor_copy(a, b);
    }
    ggml_backend_synchronize(be);
    const double t = (now_s() - t0)/reps;
    // bytes copied, us per copy, GB/s copied, GB/s of DRAM traffic (read + write)
    printf("copy\t%zu\t%.3f\t%.1f\t%.1f\n", nbytes, t*1e6, nbytes/t/1e9, 2.0*nbytes/t/1e9);
    fflush(stdout);
    ggml_backend_buffer_free(buf);
    ggml_free(ctx);
}

static void matvec(ggml_backend_t be, ggml_type type, int64_t K, int64_t M, size_t min_bytes, int reps) {
    const size_t wbytes = ggml_row_size(type, K) * M;
    const int nw = (int) std::min<size_t>(512, std::max<size_t>(4, (min_bytes + wbytes - 1) / wbytes));

    ggml_init_params ip = { (size_t)(nw + 1)*ggml_tensor_overhead(), nullptr, true };
    ggml_context * ctx_w = ggml_init(ip);
    std::vector<ggml_tensor *> w(nw);
    for (int i = 0; i < nw; ++i) {
        w[i] = ggml_new_tensor_2d(ctx_w, type, K, M);
    }
    ggml_tensor * x = ggml_new_tensor_2d(ctx_w, GGML_TYPE_F32, K, 1);
    ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(ctx_w, be);
    if (!buf) { fprintf(stderr, "matvec: allocation of %d x %zu bytes failed\n", nw, wbytes); exit(1); }

    // the values do not change the speed: quantize 64 random rows once and repeat them
    const int64_t rows = std::min<int64_t>(64, M);
    std::vector<float> src(rows*K);
    uint32_t s = 12345;
    for (auto & v : src) { s = s*1664525u + 1013904223u; v = ((s >> 8) * (1.0f/16777216.0f) - 0.5f) * 0.1f; }
    const size_t rs = ggml_row_size(type, K);
    std::vector<uint8_t> q(rs*rows);
    ggml_quantize_chunk(type, src.data(), q.data(), 0, rows, K, nullptr);
    std::vector<uint8_t> full(wbytes);
    for (int64_t r = 0; r < M; ++r) {
        memcpy(full.data() + r*rs, q.data() + (r % rows)*rs, rs);
    }
    for (int i = 0; i < nw; ++i) {
        ggml_backend_tensor_set(w[i], full.data(), 0, wbytes);
    }
    ggml_backend_tensor_set(x, src.data(), 0, K*sizeof(float));

    ggml_init_params gp = { (size_t)(2*nw + 16)*ggml_tensor_overhead() + ggml_graph_overhead_custom(2*nw + 16, false), nullptr, true };
    ggml_context * ctx_g = ggml_init(gp);
    ggml_cgraph * gf = ggml_new_graph_custom(ctx_g, 2*nw + 16, false);
    for (int i = 0; i < nw; ++i) {
        ggml_tensor * y = ggml_mul_mat(ctx_g, w[i], x);
        ggml_set_output(y);
        ggml_build_forward_expand(gf, y);
    }
    ggml_gallocr_t ga = ggml_gallocr_new(ggml_backend_get_default_buffer_type(be));
    if (!ggml_gallocr_alloc_graph(ga, gf)) { fprintf(stderr, "matvec: graph allocation failed\n"); exit(1); }

    ggml_backend_graph_compute(be, gf); // warm-up (and CUDA graph capture)
    ggml_backend_graph_compute(be, gf);
    const double t0 = now_s();
    for (int r = 0; r < reps; ++r) {
        ggml_backend_graph_compute(be, gf);
    }
    ggml_backend_synchronize(be);
    const double t = (now_s() - t0)/(reps*(double) nw);
    // type, K, M, weight bytes, matrices rotated, us per mat-vec, GB/s of weights
    printf("matvec\t%s\t%lld\t%lld\t%zu\t%d\t%.3f\t%.1f\n", ggml_type_name(type), (long long) K, (long long) M, wbytes, nw, t*1e6, wbytes/t/1e9);
    fflush(stdout);

    ggml_gallocr_free(ga);
    ggml_free(ctx_g);
    ggml_backend_buffer_free(buf);
    ggml_free(ctx_w);
}

int main(int argc, char ** argv) {
    // matvec-bench [--cpu-ok] [--copy-mib N] [--min-mib N] [--reps N] K M type...
    bool allow_cpu = false;
    size_t copy_mib = 1024, min_mib = 2048;
    int reps = 20;
    std::vector<std::string> args;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "--cpu-ok") allow_cpu = true;
        else if (a == "--copy-mib" && i + 1 < argc) copy_mib = strtoull(argv[++i], nullptr, 10);
        else if (a == "--min-mib"  && i + 1 < argc) min_mib  = strtoull(argv[++i], nullptr, 10);
        else if (a == "--reps"     && i + 1 < argc) reps     = atoi(argv[++i]);
        else args.push_back(a);
    }
    if (args.size() < 3) { fprintf(stderr, "usage: %s [--cpu-ok] [--copy-mib N] [--min-mib N] [--reps N] K M type...\n", argv[0]); return 2; }
    const int64_t K = atoll(args[0].c_str()), M = atoll(args[1].c_str());
    ggml_backend_t be = init_backend(allow_cpu);
    if (copy_mib > 0) {
        copy_bandwidth(be, copy_mib << 20, reps);
    }
    for (size_t i = 2; i < args.size(); ++i) {
        ggml_type type = GGML_TYPE_COUNT;
        for (int t = 0; t < GGML_TYPE_COUNT; ++t) {
            const char * name = ggml_type_name((ggml_type) t);
            if (name && args[i] == name) { type = (ggml_type) t; break; }
        }
        if (type == GGML_TYPE_COUNT) { fprintf(stderr, "unknown type %s\n", args[i].c_str()); return 2; }
        matvec(be, type, K, M, min_mib << 20, reps);
    }
    ggml_backend_free(be);
    return 0;
}
