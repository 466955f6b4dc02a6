/* sample.c — choosing the next token from a row of logits: argmax, or temperature scaling, then
 * top-k, then top-p (nucleus, over the probabilities renormalised after top-k, as transformers'
 * warpers do), then one draw. Probabilities are float64. */
#include "model/generate.h"

#include <math.h>
#include <stdlib.h>

typedef struct {
    double p;
    int64_t id;
} candidate;

static int32_t argmax(const double *x, int64_t n) {
    int64_t best = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return (int32_t)best;
}

/* Descending probability; ties keep the lower id first. */
static int by_probability(const void *a, const void *b) {
    const candidate *x = a, *y = b;
    if (x->p != y->p) return x->p > y->p ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

int32_t an_sample_token(const double *logits, int64_t vocab, const an_generate_opts *o, an_rng *rng, double *scratch) {
    if (o->temperature <= 0 || o->top_k == 1) return argmax(logits, vocab);
    candidate *c = (candidate *)scratch; /* 2 * V doubles hold V candidates */
    double max = -INFINITY, sum = 0;
    for (int64_t i = 0; i < vocab; i++) max = fmax(max, logits[i] / o->temperature);
    for (int64_t i = 0; i < vocab; i++) {
        c[i] = (candidate){exp(logits[i] / o->temperature - max), i};
        sum += c[i].p;
    }
    qsort(c, (size_t)vocab, sizeof *c, by_probability);
    int64_t keep = o->top_k > 0 && o->top_k < vocab ? o->top_k : vocab;
    double mass = 0;
    for (int64_t i = 0; i < keep; i++) mass += c[i].p / sum;
    if (o->top_p < 1.0) {
        double kept = 0; /* smallest prefix reaching top_p of the top-k mass, at least one token */
        for (int64_t i = 0; i < keep; i++) {
            kept += c[i].p / sum;
            if (kept >= o->top_p * mass) {
                keep = i + 1;
                mass = kept;
                break;
            }
        }
    }
    double u = an_rng_uniform(rng) * mass, acc = 0;
    for (int64_t i = 0; i < keep; i++) {
        acc += c[i].p / sum;
        if (u < acc) return (int32_t)c[i].id;
    }
    return (int32_t)c[keep - 1].id;
}
