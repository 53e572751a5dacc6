// Pieces of the TritPack types that are not one type's kernels: the library marker and row
// validation. Built into ggml-base.
#include "tritpack-quants.h"

#include <stdio.h>
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
