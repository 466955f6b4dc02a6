/* rng.h — the counter-based random generator every random draw in a run goes through.
 *
 * State is (seed, offset): draw i of a stream is a pure function of seed and offset + i, so a
 * checkpoint stores two integers, gradient checkpointing replays dropout exactly by restoring the
 * offset, and a GPU kernel can compute the same draws in parallel. */
#ifndef AN_RNG_H
#define AN_RNG_H

#include <stdint.h>

typedef struct {
    uint64_t seed;
    uint64_t offset; /* number of 64-bit draws consumed so far */
} an_rng;

void an_rng_init(an_rng *rng, uint64_t seed);
uint64_t an_rng_u64(an_rng *rng);
double an_rng_uniform(an_rng *rng);                  /* [0, 1) with 53 random bits */
double an_rng_normal(an_rng *rng);                   /* standard normal (Box-Muller) */
/* Draw i of stream (seed, offset) without changing any state: what GPU kernels compute. */
uint64_t an_rng_at(uint64_t seed, uint64_t counter);

#endif
