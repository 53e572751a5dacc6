// Pieces of the TritPack types that are not one type's kernels: the library marker, row validation
// and the converter's fused per-slice pass. Built into ggml-base.
#include "tritpack-quants.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TRITPACK_VERSION "0.1.0"

const char * tritpack_version(void) {
    return TRITPACK_VERSION;
}

// GGML_TYPE_COUNT of this build (ggml has no getter for it): the Python binding reads the type range
// from here instead of assuming one. Declared here only; nothing in C calls it.
GGML_API int tritpack_type_count(void);
int tritpack_type_count(void) {
    return GGML_TYPE_COUNT;
}

bool tritpack_validate_row_data(enum ggml_type type, const void * data, size_t nbytes) {
    size_t block_size, scale_offset;
    switch ((int) type) {
        case TRITPACK_TYPE_TPQ16: {
            const uint8_t * p = (const uint8_t *) data;
            for (size_t i = 0; i < nbytes / sizeof(block_tpq16); ++i) {
                float d;  // read as bytes: the row may not be 4-byte aligned
                memcpy(&d, p + i*sizeof(block_tpq16) + offsetof(block_tpq16, d), sizeof(d));
                if (!isfinite(d)) {
                    fprintf(stderr, "ggml_validate_row_data: found %s value at block %zu\n", isnan(d) ? "nan" : "inf", i);
                    return false;
                }
            }
            return true;
        }
        case TRITPACK_TYPE_TP1: block_size = sizeof(block_tp1); scale_offset = offsetof(block_tp1, d); break;
        case TRITPACK_TYPE_TP4: block_size = sizeof(block_tp4); scale_offset = offsetof(block_tp4, d); break;
        default:
            fprintf(stderr, "%s: invalid type %d\n", __func__, (int) type);
            return false;
    }
    const uint8_t * p = (const uint8_t *) data;
    const size_t nb = nbytes / block_size;
    for (size_t i = 0; i < nb; ++i) {
        const uint16_t h = tritpack_scale_bits(p + i*block_size + scale_offset);
        if ((h & 0x7c00) == 0x7c00) {  // exponent all ones: Inf or NaN
            fprintf(stderr, "ggml_validate_row_data: found %s value at block %zu\n", (h & 0x03ff) ? "nan" : "inf", i);
            return false;
        }
    }
    return true;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define TRITPACK_X86_PATHS 1

// x86-64 only: "f16c" (with AVX) or "avx2", what this CPU can run, asked once.
// TRITPACK_X86_BASELINE=1 answers no to both (the tests run the baseline paths that way).
int tritpack_cpu_has(const char * what) {
    static int f16c = -1, avx2 = -1;
    if (f16c < 0) {
        const char * base = getenv("TRITPACK_X86_BASELINE");
        const int off = base != NULL && base[0] != '\0' && base[0] != '0';
        __builtin_cpu_init();
        avx2 = !off && __builtin_cpu_supports("avx2");
        f16c = !off && __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx");
    }
    return what[0] == 'f' ? f16c : avx2;
}

// F16 -> F32 with the F16C instruction when the CPU has it (exact either way: every fp16 value is a float)
__attribute__((target("avx,f16c")))
static void tritpack_f16_to_f32_f16c(const ggml_fp16_t * s, float * x, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(x + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (s + i))));
    }
    for (; i < n; ++i) {
        x[i] = ggml_fp16_to_fp32(s[i]);
    }
}
#endif

static void tritpack_to_f32(enum ggml_type type, const struct ggml_type_traits * traits, const void * s, float * x,
                            int64_t n) {
    if (type == GGML_TYPE_F32) {
        memcpy(x, s, sizeof(float) * (size_t) n);
        return;
    }
#ifdef TRITPACK_X86_PATHS
    if (type == GGML_TYPE_F16 && tritpack_cpu_has("f16c")) {
        tritpack_f16_to_f32_f16c((const ggml_fp16_t *) s, x, n);
        return;
    }
#endif
    traits->to_float(s, x, n);
}

TRITPACK_CLONES
static int tritpack_all_finite(const float * x, int64_t n) {
    int finite = 1;  // branch-free, so that it vectorizes
    for (int64_t i = 0; i < n; ++i) {
        finite &= fabsf(x[i]) <= FLT_MAX;
    }
    return finite;
}

// The sums of tritpack_convert_rows in eight lanes (element i goes to lane i % 8), float64, no FMA.
static void tritpack_measure_generic(const float * x, const float * y, int64_t n, double sxx[8], double syy[8],
                                     double sxy[8], double see[8], int * exact) {
    int ex = *exact;
    for (int64_t i = 0; i < n; ++i) {
        const int l = (int) (i & 7);
        const double xv = x[i], yv = y[i], e = xv - yv;
        sxx[l] += xv * xv;
        syy[l] += yv * yv;
        sxy[l] += xv * yv;
        see[l] += e * e;
        ex     &= x[i] == y[i];
    }
    *exact = ex;
}

#ifdef TRITPACK_X86_PATHS
// the same lanes and order, four doubles a register
__attribute__((target("avx2")))
static void tritpack_measure_avx2(const float * x, const float * y, int64_t n, double sxx[8], double syy[8],
                                  double sxy[8], double see[8], int * exact) {
    __m256d axx[2], ayy[2], axy[2], aee[2];
    for (int h = 0; h < 2; ++h) {
        axx[h] = _mm256_loadu_pd(sxx + 4*h);
        ayy[h] = _mm256_loadu_pd(syy + 4*h);
        axy[h] = _mm256_loadu_pd(sxy + 4*h);
        aee[h] = _mm256_loadu_pd(see + 4*h);
    }
    int ex = *exact;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 xf = _mm256_loadu_ps(x + i);
        const __m256 yf = _mm256_loadu_ps(y + i);
        ex &= _mm256_movemask_ps(_mm256_cmp_ps(xf, yf, _CMP_EQ_OQ)) == 0xff;
        for (int h = 0; h < 2; ++h) {
            const __m256d xv = _mm256_cvtps_pd(h ? _mm256_extractf128_ps(xf, 1) : _mm256_castps256_ps128(xf));
            const __m256d yv = _mm256_cvtps_pd(h ? _mm256_extractf128_ps(yf, 1) : _mm256_castps256_ps128(yf));
            const __m256d e  = _mm256_sub_pd(xv, yv);
            axx[h] = _mm256_add_pd(axx[h], _mm256_mul_pd(xv, xv));
            ayy[h] = _mm256_add_pd(ayy[h], _mm256_mul_pd(yv, yv));
            axy[h] = _mm256_add_pd(axy[h], _mm256_mul_pd(xv, yv));
            aee[h] = _mm256_add_pd(aee[h], _mm256_mul_pd(e, e));
        }
    }
    for (int h = 0; h < 2; ++h) {
        _mm256_storeu_pd(sxx + 4*h, axx[h]);
        _mm256_storeu_pd(syy + 4*h, ayy[h]);
        _mm256_storeu_pd(sxy + 4*h, axy[h]);
        _mm256_storeu_pd(see + 4*h, aee[h]);
    }
    *exact = ex;
    tritpack_measure_generic(x + i, y + i, n - i, sxx, syy, sxy, see, exact);
}
#endif

static void tritpack_measure(const float * x, const float * y, int64_t n, double sxx[8], double syy[8], double sxy[8],
                             double see[8], int * exact) {
#ifdef TRITPACK_X86_PATHS
    if (tritpack_cpu_has("avx2")) {
        tritpack_measure_avx2(x, y, n, sxx, syy, sxy, see, exact);
        return;
    }
#endif
    tritpack_measure_generic(x, y, n, sxx, syy, sxy, see, exact);
}

// values per piece of tritpack_convert_rows: source, reconstruction and quantized rows stay in L2
#define TRITPACK_CONVERT_PIECE 16384

int tritpack_convert_rows(enum ggml_type src_type, const void * src, enum ggml_type dst_type, void * dst,
                          int64_t nrows, int64_t n_per_row, const float * imatrix, float tp1_alpha,
                          tritpack_convert_stats * stats) {
    if (nrows <= 0) {
        return TRITPACK_CONVERT_OK;
    }
    const struct ggml_type_traits * st = ggml_get_type_traits(src_type);
    const struct ggml_type_traits * dt = ggml_get_type_traits(dst_type);
    if ((src_type != GGML_TYPE_F32 && st->to_float == NULL) || (dst_type != GGML_TYPE_F32 && dt->to_float == NULL) ||
        n_per_row % ggml_blck_size(src_type) || n_per_row % ggml_blck_size(dst_type)) {
        return TRITPACK_CONVERT_UNSUPPORTED;
    }
    const size_t src_row = ggml_row_size(src_type, n_per_row);
    const size_t dst_row = ggml_row_size(dst_type, n_per_row);
    const int64_t piece = n_per_row >= TRITPACK_CONVERT_PIECE ? 1 : TRITPACK_CONVERT_PIECE / n_per_row;
    float * x = (float *) malloc(sizeof(float) * 2 * (size_t) (piece * n_per_row));
    if (x == NULL) {
        return TRITPACK_CONVERT_NOMEM;
    }
    float * y = x + piece * n_per_row;
    int rc = TRITPACK_CONVERT_OK;
    double sxx[8] = {0}, syy[8] = {0}, sxy[8] = {0}, see[8] = {0};
    int exact = stats->exact;
    for (int64_t r0 = 0; r0 < nrows && rc == TRITPACK_CONVERT_OK; r0 += piece) {
        const int64_t nr = nrows - r0 < piece ? nrows - r0 : piece;
        const int64_t nv = nr * n_per_row;
        const char * s = (const char *) src + r0 * src_row;
        char * d = (char *) dst + r0 * dst_row;
        tritpack_to_f32(src_type, st, s, x, nv);
        if (!tritpack_all_finite(x, nv)) {  // the position only when one is bad
            for (int64_t i = 0; i < nv; ++i) {
                if (!isfinite(x[i])) {
                    stats->bad_row = r0 + i / n_per_row;
                    stats->bad_col = i % n_per_row;
                    break;
                }
            }
            rc = TRITPACK_CONVERT_NONFINITE;
            break;
        }
        if ((int) dst_type == TRITPACK_TYPE_TP1 && imatrix == NULL) {
            // measured by the quantizer itself: nothing to decode, validate or compare afterwards
            double m[4] = {0, 0, 0, 0};
            tritpack_quantize_tp1_measured(x, d, nr, n_per_row, tp1_alpha, m);
            sxx[0] += m[0];
            syy[0] += m[1];
            sxy[0] += m[2];
            see[0] += m[3];
            exact  &= m[3] == 0.0;
            stats->n += nv;
            continue;
        }
        if ((int) dst_type == TRITPACK_TYPE_TP1) {
            tritpack_quantize_tp1(x, d, nr, n_per_row, imatrix, tp1_alpha);
        } else {
            ggml_quantize_chunk(dst_type, x, d, 0, nr, n_per_row, imatrix);
        }
        if (dst_type != GGML_TYPE_F32 && !ggml_validate_row_data(dst_type, d, (size_t) nr * dst_row)) {
            rc = TRITPACK_CONVERT_INVALID;
            break;
        }
        if (dst_type == GGML_TYPE_F32) {
            memcpy(y, x, sizeof(float) * (size_t) nv);
        } else {
            dt->to_float(d, y, nv);
        }
        tritpack_measure(x, y, nv, sxx, syy, sxy, see, &exact);
        stats->n += nv;
    }
    for (int l = 0; l < 8; ++l) {
        stats->sxx += sxx[l];
        stats->syy += syy[l];
        stats->sxy += sxy[l];
        stats->see += see[l];
    }
    stats->exact = exact;
    free(x);
    return rc;
}
