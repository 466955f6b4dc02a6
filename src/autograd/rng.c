/* rng.c — splitmix64-style hashing of (seed, counter); see rng.h for why it is counter based. */
#include "autograd/rng.h"

#include <math.h>

uint64_t an_rng_at(uint64_t seed, uint64_t counter) {
    uint64_t z = seed * 0x9e3779b97f4a7c15ull + counter * 0xd1b54a32d192ed03ull + 0x632be59bd9b4e019ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void an_rng_init(an_rng *rng, uint64_t seed) {
    rng->seed = seed;
    rng->offset = 0;
}

uint64_t an_rng_u64(an_rng *rng) { return an_rng_at(rng->seed, rng->offset++); }

double an_rng_uniform(an_rng *rng) { return (double)(an_rng_u64(rng) >> 11) * 0x1.0p-53; }

double an_rng_normal(an_rng *rng) {
    double u1 = an_rng_uniform(rng), u2 = an_rng_uniform(rng);
    if (u1 < 0x1.0p-60) u1 = 0x1.0p-60; /* log(0) guard; changes nothing else */
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}
