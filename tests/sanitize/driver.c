// tritpack-gguf: hostile blocks and hostile inputs through the TP1/TP4 kernels, built with
// AddressSanitizer and UndefinedBehaviorSanitizer (sanitize/CMakeLists.txt; run by
// tests/test_sanitizers.py). Any out-of-bounds access or undefined behaviour aborts with a
// sanitizer report; the checks below add what "defined" means for each kernel:
//   - TP1: every byte value 0..255 (243..255 included) decodes to trits in {-1, 0, +1};
//     dequantize gives exactly d * trit; NaN, Inf, subnormal and zero scales stay what IEEE says;
//   - TPQ16 (TP1's activations): NaN, Inf, FLT_MAX, subnormal inputs quantize without an out-of-range
//     float-to-int conversion, finite ones (below FLT_MAX / 2) come back within half a step (normal scales);
//   - TP4: every codebook index and every sub-block scale code (all 65536 values of the 16-bit
//     field) dequantizes to exactly d * scale * entry; codebook entries lie in [-127, 127] (the
//     AVX2 dot product's sign trick needs it);
//   - vec_dot (SIMD and _generic) on those blocks, with exact-size buffers: SIMD and generic agree
//     (equal when exact, close otherwise, non-finite together);
//   - quantize (ggml_quantize_chunk, quantize_tp1/tp4, tritpack_quantize_tp1 with hostile alphas,
//     the alpha search, the reference and CPU row quantizers) on NaN, Inf, huge, subnormal, signed
//     zero inputs with no, zero, negative, NaN and huge importance weights: in bounds, and for
//     finite inputs finite block scales (a NOTE line otherwise, which the Python test turns into
//     a failure);
//   - ggml_validate_row_data: NaN/Inf scales rejected, zero/subnormal/huge finite scales and any
//     trit/index/scale-code bytes accepted, a size that is not whole blocks rejected.
// Output: NOTE and FAIL lines, then one summary line; exit status 0 only without FAIL.
#define GGML_COMMON_DECL_C
#include "ggml-common.h"

#include "ggml.h"
#include "ggml-quants.h"
#include "tritpack-common.h"
#include "tritpack-cpu.h"
#include "tritpack-quants.h"
#include "tp4-codebooks.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ggml-cpu.c defines and fills this table (the x86 fp16 -> fp32 lookup of simd-mappings.h); this
// driver links our CPU kernels without the rest of ggml-cpu, so it provides the table itself.
float ggml_table_f32_f16[1 << 16];

static long n_fail, n_note, n_dequant_blocks, n_dots, n_quant_rows, n_validate;

#define FAIL(...) do { fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); fprintf(stderr, __VA_ARGS__); \
                       fputc('\n', stderr); if (++n_fail > 50) exit(1); } while (0)
#define NOTE(...) do { printf("NOTE "); printf(__VA_ARGS__); putchar('\n'); ++n_note; } while (0)

static const enum ggml_type TP1 = (enum ggml_type) TRITPACK_TYPE_TP1;
static const enum ggml_type TP4 = (enum ggml_type) TRITPACK_TYPE_TP4;

// every buffer has exactly the size asked for, so that ASan sees a read one byte past it
static void * xalloc(size_t n) {
    void * p = malloc(n ? n : 1);
    if (!p) { fprintf(stderr, "out of memory\n"); exit(2); }
    return p;
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint32_t rnd(void) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (uint32_t) (rng >> 16);
}
static float rnd_normal(void) {
    float s = 0;
    for (int i = 0; i < 12; ++i) s += (float) (rnd() & 0xffff) / 65536.0f;
    return s - 6.0f;
}

static float h2f(uint16_t h) { return ggml_fp16_to_fp32((ggml_fp16_t) h); }

static int same_float(float a, float b) {  // equal, or both NaN
    return (isnan(a) && isnan(b)) || a == b;
}

// fp16 scales that a hostile file can hold
static const uint16_t SCALES[] = {
    0x0000, 0x8000,          // +0, -0
    0x0001, 0x8001, 0x03ff,  // subnormals
    0x0400, 0x3c00, 0xbc00,  // smallest normal, +1, -1
    0x7bff, 0xfbff,          // +-65504
    0x7c00, 0xfc00,          // +-Inf
    0x7c01, 0x7e00, 0xfe00, 0xffff,  // NaNs
};
#define N_SCALES (int) (sizeof(SCALES) / sizeof(SCALES[0]))

// activations of n values (random, finite), exact-size buffers: Q8_0 (TP4's) and TPQ16 (TP1's)
static float * make_activations(int n) {
    float * y = xalloc(sizeof(float) * n);
    for (int i = 0; i < n; ++i) y[i] = rnd_normal();
    return y;
}

static void * make_q8(int n) {
    float * y = make_activations(n);
    block_q8_0 * q = xalloc(sizeof(block_q8_0) * (n / QK8_0));
    quantize_row_q8_0_ref(y, q, n);
    free(y);
    return q;
}

static void * make_tpq16(int n) {
    float * y = make_activations(n);
    block_tpq16 * q = xalloc(sizeof(block_tpq16) * (n / QK_TPQ16));
    quantize_row_tpq16_ref(y, q, n);
    free(y);
    return q;
}

typedef double (*act_value_fn)(const void *, int);

static double q8_value(const void * y, int i) {
    const block_q8_0 * q = (const block_q8_0 *) y;
    return (double) h2f(q[i / QK8_0].d) * q[i / QK8_0].qs[i % QK8_0];
}

static double tpq16_value(const void * y, int i) {
    const block_tpq16 * q = (const block_tpq16 *) y;
    return (double) q[i / QK_TPQ16].d * q[i / QK_TPQ16].qs[i % QK_TPQ16];
}

typedef void (*vec_dot_fn)(int, float *, size_t, const void *, size_t, const void *, size_t, int);

// the dot product of a row through SIMD and generic kernels, checked against the dequantized row
static void check_dot(const char * what, vec_dot_fn simd, vec_dot_fn generic, const void * x, const float * deq,
                      int n, const void * y, act_value_fn y_value, int exact) {
    float s1 = -1.0f, s2 = -2.0f;
    simd(n, &s1, 0, x, 0, y, 0, 1);
    generic(n, &s2, 0, x, 0, y, 0, 1);
    n_dots += 2;
    double ref = 0.0, mag = 0.0;
    for (int i = 0; i < n; ++i) {
        const double t = (double) deq[i] * y_value(y, i);
        ref += t;
        mag += fabs(t);
    }
    if (isfinite(s1) != isfinite(s2)) {
        FAIL("%s n=%d: SIMD %g and generic %g disagree on finiteness", what, n, s1, s2);
        return;
    }
    if (!isfinite(s1)) {
        if (isfinite(mag)) FAIL("%s n=%d: non-finite dot %g of finite terms", what, n, s1);
        return;
    }
    const double tol = exact ? 0.0 : 1e-5 * mag + 1e-30;  // exact: small integer sums, no rounding
    if (fabs((double) s1 - s2) > tol || fabs((double) s2 - ref) > 1e-5 * mag + 1e-30) {
        FAIL("%s n=%d: SIMD %.9g, generic %.9g, reference %.9g", what, n, s1, s2, ref);
    }
}

// ----------------------------------------------------------------------------- TP1


static void check_tp1_row(const block_tp1 * x, int nb, const char * what) {
    const int n = nb * QK_TP1;
    float * y = xalloc(sizeof(float) * n);
    dequantize_row_tp1(x, y, n);
    n_dequant_blocks += nb;
    for (int b = 0; b < nb; ++b) {
        const float d = h2f(tritpack_scale_bits(x[b].d));
        for (int j = 0; j < QK_TP1; ++j) {
            const float v = y[b * QK_TP1 + j];
            if (!(same_float(v, -d) || same_float(v, 0.0f * d) || same_float(v, d))) {
                FAIL("%s: block %d element %d is %g, not in {-d, 0, d} for d = %g", what, b, j, v, d);
                free(y);
                return;
            }
        }
    }
    void * q = make_tpq16(n);
    check_dot(what, ggml_vec_dot_tp1_tpq16, ggml_vec_dot_tp1_tpq16_generic, x, y, n, q, tpq16_value, 0);
    free(q);
    free(y);
}

static void test_tp1_every_byte(void) {
    // each byte value as all 13 trit bytes of a block: every trit it decodes to is -1, 0 or +1
    for (int v = 0; v < 256; ++v) {
        block_tp1 * x = xalloc(sizeof(block_tp1));
        memset(x->qs, v, sizeof(x->qs));
        tritpack_set_scale_bits(x->d, 0x3c00);
        float y[QK_TP1];
        dequantize_row_tp1(x, y, QK_TP1);
        n_dequant_blocks++;
        for (int j = 0; j < QK_TP1; ++j) {
            if (y[j] != -1.0f && y[j] != 0.0f && y[j] != 1.0f) FAIL("TP1 byte %d: element %d is %g", v, j, y[j]);
        }
        // against all-ones activations with d = 1 the dot is the exact sum of the trits
        block_tpq16 * q = xalloc(sizeof(block_tpq16));
        q->d = 1.0f;
        for (int j = 0; j < QK_TPQ16; ++j) q->qs[j] = 1;
        check_dot("TP1 every byte", ggml_vec_dot_tp1_tpq16, ggml_vec_dot_tp1_tpq16_generic, x, y, QK_TP1, q, tpq16_value, 1);
        free(q);
        free(x);
    }
}

static void test_tp1_hostile_rows(void) {
    static const int NB[] = { 1, 2, 3, 4, 5, 8, 9 };  // 1: the AVX2 path's one-block case, 2+: pairs and tail
    for (size_t k = 0; k < sizeof(NB) / sizeof(NB[0]); ++k) {
        const int nb = NB[k];
        for (int s = 0; s < N_SCALES; ++s) {
            for (int pattern = 0; pattern < 3; ++pattern) {
                block_tp1 * x = xalloc(sizeof(block_tp1) * nb);
                for (int b = 0; b < nb; ++b) {
                    for (int m = 0; m < 13; ++m) {
                        x[b].qs[m] = pattern == 0 ? (uint8_t) rnd()                       // any byte
                                   : pattern == 1 ? (uint8_t) (243 + (rnd() % 13))        // 243..255 only
                                                  : (uint8_t) (b * 13 + m);                // a sweep
                    }
                    tritpack_set_scale_bits(x[b].d, SCALES[(s + b) % N_SCALES]);
                }
                char what[64];
                snprintf(what, sizeof(what), "TP1 nb=%d scale=0x%04x pattern %d", nb, SCALES[s], pattern);
                check_tp1_row(x, nb, what);
                free(x);
            }
        }
    }
}

// ----------------------------------------------------------------------------- TP4


static void check_tp4_row(const block_tp4 * x, int nb, const char * what, int unit_activations) {
    const int n = nb * QK_TP4;
    float * y = xalloc(sizeof(float) * n);
    dequantize_row_tp4(x, y, n);
    n_dequant_blocks += nb;
    for (int b = 0; b < nb; ++b) {
        const float d = h2f(tritpack_scale_bits(x[b].d));
        const unsigned sc = x[b].sc[0] | (x[b].sc[1] << 8);
        for (int i = 0; i < TP4_NSUB; ++i) {
            const float dl = d * tritpack_tp4_scale(sc >> (4 + 3 * i));
            for (int j = 0; j < 16; ++j) {
                const int e = 16 * i + j;  // element e: byte e % 32, low nibble for e < 32
                const int q = (x[b].qs[e % 32] >> (e < 32 ? 0 : 4)) & 15;
                const float want = dl * tp4_codebooks[sc & 15][q];
                if (!same_float(y[b * QK_TP4 + e], want)) {
                    FAIL("%s: block %d element %d is %g, expected %g", what, b, e, y[b * QK_TP4 + e], want);
                    free(y);
                    return;
                }
            }
        }
    }
    block_q8_0 * q = make_q8(n);
    if (unit_activations) {  // d = 1: integer products (sums past 2^24 still round, in different orders)
        for (int i = 0; i < n / QK8_0; ++i) q[i].d = ggml_fp32_to_fp16(1.0f);
    }
    check_dot(what, ggml_vec_dot_tp4_q8_0, ggml_vec_dot_tp4_q8_0_generic, x, y, n, q, q8_value, 0);
    free(q);
    free(y);
}

static void test_tp4_codebooks_in_range(void) {
    for (int k = 0; k < TP4_NCODEBOOKS; ++k) {
        for (int q = 0; q < 16; ++q) {
            if (tp4_codebooks[k][q] < -127) FAIL("TP4 codebook %d entry %d is %d (< -127)", k, q, tp4_codebooks[k][q]);
        }
    }
}

static void test_tp4_every_field_value(void) {
    // all 65536 values of the 16-bit field: every codebook index with every four scale codes, in
    // rows of 8 blocks (d = 1), with index bytes covering all 256 values
    const int nb = 8;
    block_tp4 * x = xalloc(sizeof(block_tp4) * nb);
    for (unsigned sc0 = 0; sc0 < 65536; sc0 += nb) {
        for (int b = 0; b < nb; ++b) {
            const unsigned sc = sc0 + b;
            tritpack_set_scale_bits(x[b].d, 0x3c00);
            x[b].sc[0] = (uint8_t) sc; x[b].sc[1] = (uint8_t) (sc >> 8);
            for (int j = 0; j < 32; ++j) x[b].qs[j] = (uint8_t) (j * 8 + (sc0 / nb) + b);
        }
        check_tp4_row(x, nb, "TP4 every field value", 1);
    }
    free(x);
}

static void test_tp4_hostile_rows(void) {
    static const int NB[] = { 1, 2, 3, 7 };
    for (size_t k = 0; k < sizeof(NB) / sizeof(NB[0]); ++k) {
        const int nb = NB[k];
        for (int s = 0; s < N_SCALES; ++s) {
            block_tp4 * x = xalloc(sizeof(block_tp4) * nb);
            for (int b = 0; b < nb; ++b) {
                const uint16_t h = SCALES[(s + b) % N_SCALES];
                tritpack_set_scale_bits(x[b].d, h);
                const uint16_t sc = (uint16_t) rnd();
                x[b].sc[0] = (uint8_t) sc; x[b].sc[1] = (uint8_t) (sc >> 8);
                for (int j = 0; j < 32; ++j) x[b].qs[j] = (uint8_t) rnd();
            }
            char what[64];
            snprintf(what, sizeof(what), "TP4 nb=%d scale=0x%04x", nb, SCALES[s]);
            check_tp4_row(x, nb, what, 0);
            free(x);
        }
    }
}

// ----------------------------------------------------------------------------- quantize

enum { N_PATTERNS = 16 };
static const char * PATTERN_NAMES[N_PATTERNS] = {
    "zeros", "negative zeros", "one NaN", "all NaN", "+Inf", "-Inf", "+-Inf", "FLT_MAX", "-FLT_MAX",
    "1e30 and 1", "subnormal", "FLT_TRUE_MIN and 1", "huge and tiny", "normal", "one huge", "1e-38",
};

static int pattern_finite(int p) { return !(p == 2 || p == 3 || p == 4 || p == 5 || p == 6); }

static void fill_pattern(float * x, int n, int p) {
    for (int i = 0; i < n; ++i) {
        const float r = rnd_normal();
        switch (p) {
            case 0:  x[i] = 0.0f; break;
            case 1:  x[i] = -0.0f; break;
            case 2:  x[i] = i == 37 ? NAN : r; break;
            case 3:  x[i] = NAN; break;
            case 4:  x[i] = i % 5 ? r : INFINITY; break;
            case 5:  x[i] = -INFINITY; break;
            case 6:  x[i] = i & 1 ? INFINITY : -INFINITY; break;
            case 7:  x[i] = FLT_MAX; break;
            case 8:  x[i] = i % 3 ? -FLT_MAX : r; break;
            case 9:  x[i] = i % 7 ? 1.0f : 1e30f; break;
            case 10: x[i] = (float) (i + 1) * FLT_TRUE_MIN * (i & 1 ? 1 : -1); break;
            case 11: x[i] = i % 2 ? FLT_TRUE_MIN : 1.0f; break;
            case 12: x[i] = i % 2 ? 3e38f * (r > 0 ? 1 : -1) : 1e-40f; break;
            case 13: x[i] = r; break;
            case 14: x[i] = i == 5 ? 1e38f : r * 1e-3f; break;
            default: x[i] = r * 1e-38f; break;
        }
    }
}

enum { N_IMATRIX = 7 };
static const char * IMATRIX_NAMES[N_IMATRIX] = { "no imatrix", "zeros", "ones", "negative", "NaN", "huge", "subnormal" };

static float * make_imatrix(int n, int kind) {
    if (kind == 0) return NULL;
    float * w = xalloc(sizeof(float) * n);
    for (int i = 0; i < n; ++i) {
        w[i] = kind == 1 ? 0.0f : kind == 2 ? 1.0f : kind == 3 ? -1.0f - (float) (i % 3)
             : kind == 4 ? (i % 4 ? 1.0f : NAN) : kind == 5 ? 1e30f : FLT_TRUE_MIN;
    }
    return w;
}

// non-finite block scales in a quantized row (the fp16 scale at byte offset `at` of each block)
static int bad_scales(const uint8_t * q, size_t nbytes, size_t block, size_t at) {
    int bad = 0;
    for (size_t o = 0; o + block <= nbytes; o += block) {
        const uint16_t h = (uint16_t) (q[o + at] | (q[o + at + 1] << 8));
        bad += (h & 0x7c00) == 0x7c00;
    }
    return bad;
}

static void test_quantize(void) {
    const int nrows = 3, n = 128;
    float * x = xalloc(sizeof(float) * nrows * n);
    const size_t tp1_bytes = ggml_row_size(TP1, n) * nrows, tp4_bytes = ggml_row_size(TP4, n) * nrows;
    for (int p = 0; p < N_PATTERNS; ++p) {
        fill_pattern(x, nrows * n, p);
        for (int im = 0; im < N_IMATRIX; ++im) {
            float * w = make_imatrix(n, im);
            const int clean = pattern_finite(p) && (im == 0 || im == 1 || im == 2 || im == 6);
            for (int t = 0; t < 2; ++t) {
                const enum ggml_type type = t ? TP4 : TP1;
                const size_t bytes = t ? tp4_bytes : tp1_bytes;
                uint8_t * q = xalloc(bytes);
                const size_t got = ggml_quantize_chunk(type, x, q, 0, nrows, n, w);
                n_quant_rows += nrows;
                if (got != bytes) FAIL("ggml_quantize_chunk(%s) wrote %zu bytes, expected %zu", ggml_type_name(type), got, bytes);
                const int bad = bad_scales(q, bytes, t ? sizeof(block_tp4) : sizeof(block_tp1),
                                           t ? offsetof(block_tp4, d) : offsetof(block_tp1, d));
                if (bad && clean) {
                    NOTE("%s quantize of finite input (%s, %s) wrote %d non-finite block scales",
                         ggml_type_name(type), PATTERN_NAMES[p], IMATRIX_NAMES[im], bad);
                }
                float * y = xalloc(sizeof(float) * nrows * n);
                if (t) dequantize_row_tp4((const block_tp4 *) q, y, nrows * n);
                else   dequantize_row_tp1((const block_tp1 *) q, y, nrows * n);
                n_dequant_blocks += nrows * n / 64;
                ggml_validate_row_data(type, q, bytes);
                n_validate++;
                free(y);
                free(q);
            }
            free(w);
        }
        // TP1 with hostile alphas and the alpha search
        static const float ALPHAS[] = { NAN, -1.0f, 0.0f, 0.75f, 100.0f, INFINITY, -INFINITY, 1e-45f };
        for (size_t a = 0; a < sizeof(ALPHAS) / sizeof(ALPHAS[0]); ++a) {
            uint8_t * q = xalloc(tp1_bytes);
            tritpack_quantize_tp1(x, q, nrows, n, NULL, ALPHAS[a]);
            n_quant_rows += nrows;
            if (pattern_finite(p) && bad_scales(q, tp1_bytes, sizeof(block_tp1), offsetof(block_tp1, d))) {
                NOTE("TP1 quantize of finite input (%s) with alpha %g wrote non-finite scales", PATTERN_NAMES[p], ALPHAS[a]);
            }
            free(q);
        }
        static const float TARGETS[] = { 0.0f, 0.99f, 2.0f, NAN, -1.0f };
        for (int im = 0; im < N_IMATRIX; ++im) {
            float * w = make_imatrix(n, im);
            for (size_t c = 0; c < sizeof(TARGETS) / sizeof(TARGETS[0]); ++c) {
                float cos = -5.0f;
                const float alpha = tritpack_tp1_search_alpha(x, nrows, n, w, TARGETS[c], &cos);
                if (!(alpha >= 0.0f && alpha <= 64.0f)) FAIL("alpha search (%s) returned alpha %g", PATTERN_NAMES[p], alpha);
            }
            free(w);
        }
        // the converter's pass (tritpack_convert_rows): F32 and F16 sources into TP1 (measured while
        // quantizing) and TP4; a non-finite weight must stop it with its position, never reach a kernel
        {
            ggml_fp16_t * h = xalloc(sizeof(ggml_fp16_t) * nrows * n);
            ggml_fp32_to_fp16_row(x, h, nrows * n);
            for (int t = 0; t < 2; ++t) {
                const enum ggml_type dst = t ? TP4 : TP1;
                uint8_t * q = xalloc(t ? tp4_bytes : tp1_bytes);
                for (int src16 = 0; src16 < 2; ++src16) {
                    tritpack_convert_stats st;
                    memset(&st, 0, sizeof(st));
                    st.exact = 1;
                    const int rc = tritpack_convert_rows(src16 ? GGML_TYPE_F16 : GGML_TYPE_F32, src16 ? (const void *) h : x,
                                                         dst, q, nrows, n, NULL, 0.75f, &st);
                    n_quant_rows += nrows;
                    if (pattern_finite(p) && rc != TRITPACK_CONVERT_OK && !(src16 && rc == TRITPACK_CONVERT_NONFINITE)) {
                        NOTE("convert_rows %s of finite input (%s) returned %d", ggml_type_name(dst), PATTERN_NAMES[p], rc);
                    }
                    if (!pattern_finite(p) && !src16 && rc != TRITPACK_CONVERT_NONFINITE) {
                        FAIL("convert_rows %s of %s returned %d, not NONFINITE", ggml_type_name(dst), PATTERN_NAMES[p], rc);
                    }
                    if (rc == TRITPACK_CONVERT_NONFINITE && (st.bad_row < 0 || st.bad_row >= nrows || st.bad_col < 0 || st.bad_col >= n)) {
                        FAIL("convert_rows %s: non-finite weight at row %lld col %lld, outside %d x %d", ggml_type_name(dst),
                             (long long) st.bad_row, (long long) st.bad_col, nrows, n);
                    }
                }
                free(q);
            }
            free(h);
        }
        if (pattern_finite(p)) {  // the measured TP1 quantizer against a decode of what it wrote
            uint8_t * q = xalloc(tp1_bytes);
            float * y = xalloc(sizeof(float) * nrows * n);
            double m[4] = {0, 0, 0, 0}, see = 0;
            tritpack_quantize_tp1_measured(x, q, nrows, n, 0.75f, m);
            dequantize_row_tp1((const block_tp1 *) q, y, nrows * n);
            for (int i = 0; i < nrows * n; ++i) see += ((double) x[i] - y[i]) * ((double) x[i] - y[i]);
            if (!(fabs(m[3] - see) <= 1e-9 * see || (isinf(see) && isinf(m[3])))) {
                FAIL("tritpack_quantize_tp1_measured (%s): sum (x-y)^2 %g, decoded %g", PATTERN_NAMES[p], m[3], see);
            }
            n_quant_rows += nrows;
            free(y);
            free(q);
        }
        // the reference and CPU row quantizers (from_float), one row of 128
        uint8_t * q1 = xalloc(ggml_row_size(TP1, n));
        uint8_t * q4 = xalloc(ggml_row_size(TP4, n));
        quantize_row_tp1_ref(x, (block_tp1 *) q1, n);
        quantize_row_tp4_ref(x, (block_tp4 *) q4, n);
        quantize_row_tp1(x, q1, n);
        quantize_row_tp4(x, q4, n);
        n_quant_rows += 4;
        free(q1);
        free(q4);
    }
    // degenerate sizes: nothing to do, nothing touched
    float * y = xalloc(sizeof(float));
    dequantize_row_tp1(NULL, y, 0);
    dequantize_row_tp4(NULL, y, 0);
    tritpack_quantize_tp1(x, NULL, 0, n, NULL, 0.75f);
    quantize_tp4(x, NULL, 0, n, NULL);
    float cos = 0;
    tritpack_tp1_search_alpha(x, 0, n, NULL, 0.0f, &cos);
    free(y);
    free(x);
}

// ----------------------------------------------------------------------------- validate

static void expect_valid(enum ggml_type t, const void * data, size_t nbytes, int want, const char * what) {
    const int got = ggml_validate_row_data(t, data, nbytes);
    n_validate++;
    if (got != want) FAIL("ggml_validate_row_data(%s, %s) = %d, expected %d", ggml_type_name(t), what, got, want);
}

static void test_validate(void) {
    for (int t = 0; t < 2; ++t) {
        const enum ggml_type type = t ? TP4 : TP1;
        const size_t bs = t ? sizeof(block_tp4) : sizeof(block_tp1);
        const size_t at = t ? offsetof(block_tp4, d) : offsetof(block_tp1, d);
        const int nb = 5;
        uint8_t * q = xalloc(bs * nb);
        for (size_t i = 0; i < bs * nb; ++i) q[i] = (uint8_t) rnd();
        for (int s = 0; s < N_SCALES; ++s) {
            for (int b = 0; b < nb; ++b) {  // every block finite (+1), then the hostile scale in block s % nb
                q[b * bs + at] = 0x00; q[b * bs + at + 1] = 0x3c;
            }
            const uint16_t h = SCALES[s];
            const int blk = s % nb;
            q[blk * bs + at] = (uint8_t) h; q[blk * bs + at + 1] = (uint8_t) (h >> 8);
            const int finite = (h & 0x7c00) != 0x7c00;
            char what[64];
            snprintf(what, sizeof(what), "scale 0x%04x in block %d", h, blk);
            expect_valid(type, q, bs * nb, finite, what);
        }
        for (int b = 0; b < nb; ++b) { q[b * bs + at] = 0x00; q[b * bs + at + 1] = 0x3c; }
        expect_valid(type, q, 0, 1, "0 bytes");
        expect_valid(type, q, bs * nb - 1, 0, "not whole blocks");
        expect_valid(type, q, bs - 1, 0, "less than a block");
        free(q);
    }
}

// TPQ16 (TP1's activations) from hostile floats: NaN, +-Inf, +-FLT_MAX, subnormals, zeros, one class per
// block. quantize_row_tpq16_ref must not convert an out-of-range float to int16 (float-cast-overflow),
// finite blocks come back within half a step, and TP1 x TPQ16 stays in bounds on them.
static void test_tpq16_hostile_activations(void) {
    static const float SPECIAL[] = { NAN, INFINITY, -INFINITY, FLT_MAX, -FLT_MAX, 1e-45f, -1e-40f, 0.0f, -0.0f, 1.0f };
    const int ns = (int) (sizeof(SPECIAL) / sizeof(SPECIAL[0]));
    for (int s = 0; s < ns; ++s) {
        for (int fill = 0; fill < 2; ++fill) {  // the special value once in a random block, or the whole block
            const int nb = 3, n = nb * QK_TPQ16;
            float * x = make_activations(n);
            for (int j = 0; j < QK_TPQ16; ++j) {
                if (fill || j == 17) x[QK_TPQ16 + j] = SPECIAL[s];
            }
            block_tpq16 * q = xalloc(sizeof(block_tpq16) * nb);
            quantize_row_tpq16_ref(x, q, n);
            n_quant_rows++;
            float * back = xalloc(sizeof(float) * n);
            dequantize_row_tpq16(q, back, n);
            for (int b = 0; b < nb; ++b) {
                // finite blocks whose d * q cannot overflow (near FLT_MAX, d = max/32767 may round up and
                // d * 32767 round to Inf: activations there are meaningless anyway)
                int finite = 1;
                for (int j = 0; j < QK_TPQ16; ++j) finite &= fabsf(x[b * QK_TPQ16 + j]) <= FLT_MAX / 2;
                if (!finite) continue;
                for (int j = 0; j < QK_TPQ16; ++j) {
                    // half a step where d is normal (plus 1% for the float32 rounding of 1/d and of d * q,
                    // up to 32767 ulps of a step each); a block below 32767 * FLT_MIN (subnormal d, whose
                    // 1/d overflows) within its maximum
                    const double err = fabs((double) back[b * QK_TPQ16 + j] - x[b * QK_TPQ16 + j]);
                    const double bound = q[b].d >= FLT_MIN ? 0.51 * (double) q[b].d : 32767.0 * q[b].d + FLT_MIN;
                    if (!(err <= bound)) {
                        FAIL("TPQ16 value %g, block %d element %d: %g came back as %g (d = %g)", SPECIAL[s], b, j, x[b * QK_TPQ16 + j],
                             back[b * QK_TPQ16 + j], q[b].d);
                    }
                }
            }
            n_dequant_blocks += nb;
            block_tp1 * w = xalloc(sizeof(block_tp1) * nb);
            for (int b = 0; b < nb; ++b) {
                for (int m = 0; m < 13; ++m) w[b].qs[m] = (uint8_t) rnd();
                tritpack_set_scale_bits(w[b].d, 0x3c00);
            }
            float s1, s2;
            ggml_vec_dot_tp1_tpq16(n, &s1, 0, w, 0, q, 0, 1);
            ggml_vec_dot_tp1_tpq16_generic(n, &s2, 0, w, 0, q, 0, 1);
            n_dots += 2;
            if (isfinite(SPECIAL[s]) && fabs((double) s1 - s2) > 1e-5 * (fabs((double) s2) + 1e3)) {
                FAIL("TP1 x TPQ16 with %g in the activations: SIMD %g, generic %g", SPECIAL[s], s1, s2);
            }
            free(w);
            free(back);
            free(q);
            free(x);
        }
    }
}

// the sanitizers are really on: one read past a buffer (ASan) or one signed overflow (UBSan)
static int selftest(const char * what) {
    volatile int n = 15;
    if (strcmp(what, "--selftest-asan") == 0) {
        uint8_t * p = xalloc((size_t) n);
        memset(p, 0, (size_t) n);
        const int v = p[n];  // one byte past the block
        free(p);
        return v;
    }
    if (strcmp(what, "--selftest-ubsan") == 0) {
        volatile int big = INT32_MAX;
        return big + n;
    }
    fprintf(stderr, "unknown option %s\n", what);
    return 2;
}

int main(int argc, char ** argv) {
    if (argc > 1) return selftest(argv[1]);
    for (int i = 0; i < (1 << 16); ++i) ggml_table_f32_f16[i] = ggml_fp16_to_fp32((ggml_fp16_t) i);

    test_tp1_every_byte();
    test_tp1_hostile_rows();
    test_tp4_codebooks_in_range();
    test_tp4_every_field_value();
    test_tp4_hostile_rows();
    test_quantize();
    test_validate();
    test_tpq16_hostile_activations();

#if defined(__AVX2__)
    const char * simd = "AVX2";
#else
    const char * simd = "no AVX2: SIMD entry points are the generic ones";
#endif
    printf("sanitize: %ld blocks dequantized, %ld dot products, %ld rows quantized, %ld validations (%s); "
           "%ld notes, %ld failures\n", n_dequant_blocks, n_dots, n_quant_rows, n_validate, simd, n_note, n_fail);
    return n_fail ? 1 : 0;
}
