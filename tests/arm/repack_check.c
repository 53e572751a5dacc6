// The repacked TP1/TP4 tiles on ARM64 (tritpack-gemm-neon.c) against the generic tile path and the plain
// NEON vec_dot, bit for bit, and MUL_MAT / MUL_MAT_ID through the CPU backend with the weights in the
// CPU_TRITPACK buffer against the same weights in the plain CPU buffer (2 threads), also bit for bit:
// both paths quantize the activations to the same bytes (TP1: TPQ16, TP4: Q8_0), form the same integer
// sums and add them into floats in the same order. Built with aarch64-linux-gnu-gcc against a cross build
// and run under qemu-aarch64 by tests/test_arm.py; the kernel each case takes is printed ("kernel ...").
// A type whose tiles have no NEON kernel on this CPU (TP4 without dotprod) must not be repacked at all.
#include "ggml.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "tritpack-cpu.h"
#include "tritpack-quants.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK_SEED 0x2545f4914f6cdd1dull
#include "check_rng.h"

static int failures = 0, compared = 0;
static const char * seen[16];
static int nseen = 0;

static void note_kernel(const char * k) {
    for (int i = 0; i < nseen; ++i) {
        if (strcmp(seen[i], k) == 0) {
            return;
        }
    }
    if (nseen < 16) {
        seen[nseen++] = k;
        printf("kernel %s\n", k);
    }
}

static void check_equal(const char * what, const char * name, int n, int nrows, int ncols, const float * a, const float * b, size_t count) {
    ++compared;
    for (size_t i = 0; i < count; ++i) {
        if (memcmp(&a[i], &b[i], sizeof(float)) != 0) {
            if (failures++ < 20) {
                printf("MISMATCH %s %s n=%d rows=%d cols=%d at %zu: %.9g vs %.9g\n", name, what, n, nrows, ncols, i, a[i], b[i]);
            }
            return;
        }
    }
}

// weights of one case: quantized Gaussian / heavy-tailed rows, or raw random blocks (every byte, finite scales)
static void make_weights(enum ggml_type t, int n, int nrows, int raw, void * q) {
    const size_t rs = ggml_row_size(t, n);
    if (!raw) {
        float * w = malloc(sizeof(float) * (size_t) n * nrows);
        for (int i = 0; i < n * nrows; ++i) {
            const float g = gauss();
            w[i] = (i % 7 == 0) ? g * g * g : g;
        }
        ggml_quantize_chunk(t, w, q, 0, nrows, n, NULL);
        free(w);
        return;
    }
    uint8_t * p = q;
    for (size_t i = 0; i < rs * nrows; ++i) {
        p[i] = (uint8_t) rnd();
    }
    for (int r = 0; r < nrows; ++r) {
        for (int b = 0; b < n / 64; ++b) {
            if ((int) t == TRITPACK_TYPE_TP1) {
                block_tp1 * x = (block_tp1 *) (p + r*rs) + b;
                tritpack_set_scale_bits(x->d, (uint16_t) (0x3000 + rnd() % 0x1000));
            } else {
                block_tp4 * x = (block_tp4 *) (p + r*rs) + b;
                tritpack_set_scale_bits(x->d, (uint16_t) (0x2000 + rnd() % 0x2000));
            }
        }
    }
}

// the kernels: repacked (NEON tiles, generic tiles) against the plain vec_dot of the CPU traits
static void kernel_case(enum ggml_type t, const char * name, int n, int nrows, int ncols, int raw) {
    const size_t rs = ggml_row_size(t, n);
    void * q = malloc(rs * nrows);
    void * packed = malloc(rs * nrows);
    float * y = malloc(sizeof(float) * (size_t) n * ncols);
    make_weights(t, n, nrows, raw, q);
    for (int i = 0; i < n * ncols; ++i) {
        y[i] = gauss() * ((i / n) % 3 == 0 ? 30.0f : 1.0f);
    }
    for (int i = 0; i < 64 && i < n; ++i) {
        y[i] = 0.0f;  // an all-zero activation block
    }
    ggml_tritpack_repack(t, packed, q, nrows, n);
    float * neon = malloc(sizeof(float) * (size_t) nrows * ncols);
    float * gen = malloc(sizeof(float) * (size_t) nrows * ncols);
    float * plain = malloc(sizeof(float) * (size_t) nrows * ncols);
    ggml_tritpack_mul_mat(t, n, nrows, packed, ncols, y, neon, true);
    ggml_tritpack_mul_mat(t, n, nrows, packed, ncols, y, gen, false);

    const struct ggml_type_traits_cpu * tr = ggml_get_type_traits_cpu(t);
    const struct ggml_type_traits_cpu * ta = ggml_get_type_traits_cpu(tr->vec_dot_type);
    const size_t ys = ggml_row_size(tr->vec_dot_type, n);
    void * yq = malloc(ys);
    for (int c = 0; c < ncols; ++c) {
        ta->from_float(y + (size_t) c*n, yq, n);
        for (int r = 0; r < nrows; ++r) {
            tr->vec_dot(n, &plain[(size_t) c*nrows + r], 0, (const char *) q + r*rs, 0, yq, 0, 1);
        }
    }
    const size_t count = (size_t) nrows * ncols;
    check_equal("neon tiles vs generic tiles", name, n, nrows, ncols, neon, gen, count);
    check_equal("neon tiles vs plain vec_dot", name, n, nrows, ncols, neon, plain, count);
    const char * k = ggml_tritpack_neon_kernel(t, ncols < 32 ? ncols : 32);
    note_kernel(k ? k : "none");
    free(q); free(packed); free(y); free(neon); free(gen); free(plain); free(yq);
}

// a control: the same rows not repacked, through the same kernels, must give other numbers (the checks
// above can fail)
static int layout_matters(enum ggml_type t, const char * name) {
    const int n = 576, nrows = 16, ncols = 4;
    const size_t rs = ggml_row_size(t, n);
    void * q = malloc(rs * nrows);
    void * packed = malloc(rs * nrows);
    float * y = malloc(sizeof(float) * n * ncols);
    float * good = malloc(sizeof(float) * nrows * ncols);
    float * bad = malloc(sizeof(float) * nrows * ncols);
    make_weights(t, n, nrows, 0, q);
    for (int i = 0; i < n * ncols; ++i) {
        y[i] = gauss();
    }
    ggml_tritpack_repack(t, packed, q, nrows, n);
    ggml_tritpack_mul_mat(t, n, nrows, packed, ncols, y, good, true);
    ggml_tritpack_mul_mat(t, n, nrows, q, ncols, y, bad, true);
    int differ = 0;
    for (int i = 0; i < nrows * ncols; ++i) {
        differ += fabsf(good[i] - bad[i]) > 1e-3f * (fabsf(good[i]) + 1.0f);
    }
    printf("%s layout control: %d of %d products differ with the rows not repacked\n", name, differ, nrows * ncols);
    free(q); free(packed); free(y); free(good); free(bad);
    return differ > nrows * ncols / 2;
}

// MUL_MAT (id = 0) or MUL_MAT_ID through the CPU backend, the weights in buffer type buft
static float * run_graph(ggml_backend_t be, ggml_backend_buffer_type_t buft, enum ggml_type t, const void * wq, size_t wbytes,
                         int K, int N, int n_as, const float * x, int n_used, int n_tok, const int32_t * ids, int id) {
    struct ggml_init_params wp = { ggml_tensor_overhead()*4, NULL, true };
    struct ggml_context * cw = ggml_init(wp);
    struct ggml_tensor * W = id ? ggml_new_tensor_3d(cw, t, K, N, n_as) : ggml_new_tensor_2d(cw, t, K, N);
    ggml_backend_buffer_t bw = ggml_backend_alloc_ctx_tensors_from_buft(cw, buft);
    if ((W->extra != NULL) != (buft != ggml_backend_cpu_buffer_type())) {  // CPU_TRITPACK: the weights in tiles
        printf("the weights are %srepacked in %s\n", W->extra ? "" : "not ", ggml_backend_buft_name(buft));
        exit(1);
    }
    ggml_backend_tensor_set(W, wq, 0, wbytes);
    struct ggml_init_params ap = { 64*1024*1024, NULL, false };
    struct ggml_context * ca = ggml_init(ap);
    struct ggml_tensor * out;
    if (id) {
        struct ggml_tensor * X = ggml_new_tensor_3d(ca, GGML_TYPE_F32, K, n_used, n_tok);
        memcpy(X->data, x, ggml_nbytes(X));
        struct ggml_tensor * I = ggml_new_tensor_2d(ca, GGML_TYPE_I32, n_used, n_tok);
        memcpy(I->data, ids, ggml_nbytes(I));
        out = ggml_mul_mat_id(ca, W, X, I);
    } else {
        struct ggml_tensor * X = ggml_new_tensor_2d(ca, GGML_TYPE_F32, K, n_tok);
        memcpy(X->data, x, ggml_nbytes(X));
        out = ggml_mul_mat(ca, W, X);
    }
    struct ggml_cgraph * gf = ggml_new_graph(ca);
    ggml_build_forward_expand(gf, out);
    if (ggml_backend_graph_compute(be, gf) != GGML_STATUS_SUCCESS) {
        printf("compute failed\n");
        exit(1);
    }
    float * r = malloc(ggml_nbytes(out));
    memcpy(r, out->data, ggml_nbytes(out));
    ggml_free(ca);
    ggml_backend_buffer_free(bw);
    ggml_free(cw);
    return r;
}

static void backend_case(ggml_backend_t be, ggml_backend_buffer_type_t tp, enum ggml_type t, const char * name,
                         int K, int N, int n_as, int n_used, int n_tok, int id) {
    const size_t wbytes = ggml_row_size(t, K) * N * n_as;
    void * wq = malloc(wbytes);
    make_weights(t, K, N * n_as, 0, wq);
    float * x = malloc(sizeof(float) * (size_t) K * n_used * n_tok);
    for (int i = 0; i < K * n_used * n_tok; ++i) {
        x[i] = gauss();
    }
    int32_t * ids = malloc(sizeof(int32_t) * n_used * n_tok);
    for (int tok = 0; tok < n_tok; ++tok) {
        for (int i = 0; i < n_used; ++i) {
            ids[tok*n_used + i] = (tok*7 + i*3 + (tok*i) % 5) % n_as;
        }
        if (n_used > 1 && ids[tok*n_used] == ids[tok*n_used + 1]) {
            ids[tok*n_used + 1] = (ids[tok*n_used + 1] + 1) % n_as;
        }
    }
    float * a = run_graph(be, tp, t, wq, wbytes, K, N, n_as, x, n_used, n_tok, ids, id);
    float * b = run_graph(be, ggml_backend_cpu_buffer_type(), t, wq, wbytes, K, N, n_as, x, n_used, n_tok, ids, id);
    const size_t count = (size_t) N * (id ? n_used : 1) * n_tok;
    const int before = failures;
    check_equal(id ? "MUL_MAT_ID repacked vs plain" : "MUL_MAT repacked vs plain", name, K, N, n_tok, a, b, count);
    printf("%s %s K=%d N=%d n_as=%d n_used=%d cols=%d: %s\n", name, id ? "MUL_MAT_ID" : "MUL_MAT", K, N, n_as, n_used, n_tok,
           failures == before ? "equal" : "DIFFER");
    free(wq); free(x); free(ids); free(a); free(b);
}

int main(void) {
    ggml_cpu_init();
    printf("dotprod %d, i8mm %d, tile kernels %s\n", ggml_cpu_has_dotprod(), ggml_cpu_has_matmul_int8(),
           ggml_tritpack_gemm_simd() ? "NEON" : "generic (GGML_TRITPACK_GENERIC)");
    ggml_backend_buffer_type_t tp = ggml_backend_cpu_tritpack_buffer_type();
    if (tp == NULL) {
        printf("no CPU_TRITPACK buffer type\n");
        return 1;
    }
    const struct { enum ggml_type t; const char * name; } types[] = {
        { (enum ggml_type) TRITPACK_TYPE_TP1, "tp1" }, { (enum ggml_type) TRITPACK_TYPE_TP4, "tp4" } };
    const int ns[] = { 64, 576, 896 };
    const int cols[] = { 1, 2, 3, 8, 33 };  // 33: a pass of 32 and one more column
    int repacked_types = 0;
    for (int k = 0; k < 2; ++k) {
        const enum ggml_type t = types[k].t;
        if (!ggml_tritpack_can_repack(t, 576, 16)) {
            if (ggml_tritpack_neon_kernel(t, 1) != NULL) {
                printf("%s: a NEON kernel but not repacked\n", types[k].name);
                return 1;
            }
            printf("%s: not repacked here (no NEON tile kernel: the plain vec_dot runs)\n", types[k].name);
            continue;
        }
        ++repacked_types;
        if (!layout_matters(t, types[k].name)) {
            printf("%s: the kernels do not depend on the layout\n", types[k].name);
            return 1;
        }
        for (size_t i = 0; i < sizeof ns / sizeof ns[0]; ++i) {
            for (size_t j = 0; j < sizeof cols / sizeof cols[0]; ++j) {
                for (int raw = 0; raw < (ns[i] == 576 ? 2 : 1); ++raw) {  // raw blocks at one length (qemu time)
                    kernel_case(t, types[k].name, ns[i], 16, cols[j], raw);
                }
            }
        }
    }
    printf("%d kernel cases compared, %d differ\n", compared, failures);

    ggml_backend_t be = ggml_backend_cpu_init();
    ggml_backend_cpu_set_n_threads(be, 2);
    for (int k = 0; k < 2; ++k) {
        const enum ggml_type t = types[k].t;
        if (!ggml_tritpack_can_repack(t, 576, 16)) {
            continue;
        }
        // 1 column: the GEMV; more: the GEMM (passes of 32 columns, an odd one left over)
        backend_case(be, tp, t, types[k].name, 576, 64, 1, 1, 1, 0);
        backend_case(be, tp, t, types[k].name, 896, 48, 1, 1, 7, 0);
        backend_case(be, tp, t, types[k].name, 576, 32, 1, 1, 37, 0);
        backend_case(be, tp, t, types[k].name, 576, 64, 8, 2, 1, 1);
        backend_case(be, tp, t, types[k].name, 576, 32, 4, 2, 19, 1);
    }
    ggml_backend_free(be);
    printf("%d cases compared, %d differ, %d types repacked\n", compared, failures, repacked_types);
    return failures != 0;
}
