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

static uint16_t tritpack_scale_bits(const uint8_t d[2]) {
    return (uint16_t) (d[0] | (d[1] << 8));
}

bool tritpack_validate_row_data(enum ggml_type type, const void * data, size_t nbytes) {
    size_t block_size, scale_offset;
    switch ((int) type) {
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
        if (src_type == GGML_TYPE_F32) {
            memcpy(x, s, sizeof(float) * (size_t) nv);
        } else {
            st->to_float(s, x, nv);
        }
        int finite = 1;  // a branch-free pass first (vectorizes); the position only when one is bad
        for (int64_t i = 0; i < nv; ++i) {
            finite &= fabsf(x[i]) <= FLT_MAX;
        }
        if (!finite) {
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
        // eight lanes, so that the float64 sums vectorize without reassociating any of them
        int64_t i = 0;
        for (; i + 8 <= nv; i += 8) {
            for (int l = 0; l < 8; ++l) {
                const double xv = x[i + l], yv = y[i + l], e = xv - yv;
                sxx[l] += xv * xv;
                syy[l] += yv * yv;
                sxy[l] += xv * yv;
                see[l] += e * e;
                exact  &= x[i + l] == y[i + l];
            }
        }
        for (; i < nv; ++i) {
            const double xv = x[i], yv = y[i], e = xv - yv;
            sxx[0] += xv * xv;
            syy[0] += yv * yv;
            sxy[0] += xv * yv;
            see[0] += e * e;
            exact  &= x[i] == y[i];
        }
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
