// The ARM checks' random numbers: xorshift64* and normal deviates from it (Box-Muller). Each check
// keeps its own stream: it defines CHECK_SEED before including this.
#pragma once
#include <math.h>
#include <stdint.h>

static uint64_t rng_state = CHECK_SEED;
static uint32_t rnd(void) {  // xorshift64*
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t) ((rng_state * 2685821657736338717ull) >> 32);
}
static float gauss(void) {
    const float u = (rnd() + 1.0f) / 4294967296.0f, v = rnd() / 4294967296.0f;
    return sqrtf(-2.0f * logf(u)) * cosf(6.2831853f * v);
}
