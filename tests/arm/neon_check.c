// The NEON dot products of tritpack-neon.c (what ggml's CPU type traits call on ARM64) against the portable
// _generic ones, on the same rows: quantized random data (rows of 64 to 4096) and raw random blocks (every
// trit byte 0..255, every TP4 codebook and scale code, int16 activations up to +-32767 and -32768, int8 down
// to -128). Both add block by block in the same order, so the results must be equal bit for bit. Built with
// aarch64-linux-gnu-gcc against a cross build and run under qemu-aarch64 by tests/test_arm.py.
#include "ggml.h"
#include "ggml-cpu.h"
#include "tritpack-cpu.h"
#include "tritpack-quants.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*vec_dot_t)(int, float *, size_t, const void *, size_t, const void *, size_t, int);

#define CHECK_SEED 0x9e3779b97f4a7c15ull
#include "check_rng.h"

static int failures = 0, compared = 0;

static void compare(const char * what, int n, vec_dot_t neon, vec_dot_t generic, const void * x, const void * y) {
    float a = 0.0f, b = 0.0f;
    neon(n, &a, 0, x, 0, y, 0, 1);
    generic(n, &b, 0, x, 0, y, 0, 1);
    ++compared;
    if (memcmp(&a, &b, sizeof a) != 0) {
        if (failures++ < 10) {
            printf("MISMATCH %s n=%d: neon %.9g generic %.9g\n", what, n, a, b);
        }
    }
}

int main(void) {
    ggml_cpu_init();
    const vec_dot_t tp1 = ggml_get_type_traits_cpu((enum ggml_type) TRITPACK_TYPE_TP1)->vec_dot;
    const vec_dot_t tp4 = ggml_get_type_traits_cpu((enum ggml_type) TRITPACK_TYPE_TP4)->vec_dot;
    if (tp1 == ggml_vec_dot_tp1_tpq16_generic || tp4 == ggml_vec_dot_tp4_q8_0_generic) {
        printf("the CPU traits call the generic dot products: no NEON kernel to check\n");
        return 1;
    }
    const struct ggml_type_traits * q8 = ggml_get_type_traits(GGML_TYPE_Q8_0);
    enum { NMAX = 4096 };
    static float xf[NMAX], yf[NMAX];
    static block_tp1 x1[NMAX / 64];
    static block_tp4 x4[NMAX / 64];
    static block_tpq16 y16[NMAX / 64];
    static uint8_t y8[NMAX / 32 * 34];
    const int sizes[] = { 64, 128, 576, 896, 4096 };

    // quantized random rows (what a model does)
    for (int rep = 0; rep < 40; ++rep) {
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; ++s) {
            const int n = sizes[s];
            for (int i = 0; i < n; ++i) {
                xf[i] = gauss() * (rep % 3 == 0 ? 0.02f : 1.0f);
                yf[i] = gauss() * (rep % 5 == 0 ? 100.0f : 1.0f);
            }
            quantize_row_tp1_ref(xf, x1, n);
            quantize_row_tp4_ref(xf, x4, n);
            quantize_row_tpq16_ref(yf, y16, n);
            q8->from_float_ref(yf, y8, n);
            compare("tp1 quantized", n, tp1, ggml_vec_dot_tp1_tpq16_generic, x1, y16);
            compare("tp4 quantized", n, tp4, ggml_vec_dot_tp4_q8_0_generic, x4, y8);
        }
    }
    // raw random blocks (any byte where the kernels read one; finite scales)
    for (int rep = 0; rep < 400; ++rep) {
        const int n = sizes[rep % 5];
        for (int b = 0; b < n / 64; ++b) {
            for (int j = 0; j < 13; ++j) x1[b].qs[j] = (uint8_t) rnd();
            tritpack_set_scale_bits(x1[b].d, (uint16_t) (0x3000 + rnd() % 0x1000));
            for (int j = 0; j < 32; ++j) x4[b].qs[j] = (uint8_t) rnd();
            x4[b].sc[0] = (uint8_t) rnd();
            x4[b].sc[1] = (uint8_t) rnd();
            tritpack_set_scale_bits(x4[b].d, (uint16_t) (0x2000 + rnd() % 0x2000));
            y16[b].d = 1.0f / (1 + rnd() % 1000);
            for (int j = 0; j < 64; ++j) {
                const uint32_t r = rnd();
                y16[b].qs[j] = (int16_t) (rep % 4 == 0 ? ((r & 1) ? 32767 : -32768) : (int16_t) r);
            }
        }
        for (int b = 0; b < n / 32; ++b) {
            uint8_t * blk = y8 + 34*b;
            const uint16_t h = (uint16_t) (0x1800 + rnd() % 0x1000);
            memcpy(blk, &h, 2);  // little endian on aarch64
            for (int j = 0; j < 32; ++j) blk[2 + j] = (uint8_t) (rep % 4 == 1 ? ((rnd() & 1) ? 127 : 128) : rnd());
        }
        compare("tp1 raw", n, tp1, ggml_vec_dot_tp1_tpq16_generic, x1, y16);
        compare("tp4 raw", n, tp4, ggml_vec_dot_tp4_q8_0_generic, x4, y8);
    }
    printf("%d rows compared, %d differ\n", compared, failures);
    return failures != 0;
}
