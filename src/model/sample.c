/* sample.c — choosing the next token from a row of logits: argmax, or temperature scaling, then
 * top-k, then top-p (nucleus, over the probabilities renormalised after top-k, as transformers'
 * warpers do), then one draw. Probabilities are float64. an_sample_rows picks a whole batch on the
 * logits' device: this loop on the CPU, kernels/sample.cu (the same rule) on the GPU. */
#include "model/generate.h"

#include <math.h>
#include <stdlib.h>

#include "kernels/cuda.h"  /* an_cuda_sample, an_cuda_memcpy */

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

an_status an_sample_rows_on_device(an_ctx *ctx, const an_tensor *logits, const an_generate_opts *o,
                                   an_tensor *device_tokens) {
    AN_CHECK(ctx, logits->ndim == 2 && logits->device == AN_CUDA, AN_ERR_INPUT,
             "sample: logits must be (rows, vocab) on the GPU");
    int64_t b = logits->shape[0], vocab = logits->shape[1];
    int64_t allowed = o->vocab_limit > 0 && o->vocab_limit < vocab ? o->vocab_limit : vocab;
    AN_CHECK(ctx, device_tokens && device_tokens->dtype == AN_I32 && device_tokens->device == AN_CUDA &&
                      an_tensor_numel(device_tokens) == b,
             AN_ERR_INPUT, "sample: device_tokens must be (%lld) i32 on the GPU", (long long)b);
    AN_TRY(an_cuda_sample(ctx, logits->dtype, an_tensor_data(logits), b, vocab, allowed, o->temperature, o->top_k,
                          o->top_p, ctx->rng.seed, ctx->rng.offset, an_tensor_data(device_tokens)));
    if (!(o->temperature <= 0 || o->top_k == 1)) ctx->rng.offset += (uint64_t)b; /* greedy draws nothing */
    return AN_OK;
}

an_status an_sample_rows(an_ctx *ctx, const an_tensor *logits, const an_generate_opts *o, an_tensor *device_tokens,
                         int32_t *tokens) {
    AN_CHECK(ctx, logits->ndim == 2, AN_ERR_INPUT, "sample: logits must be (rows, vocab)");
    int64_t b = logits->shape[0], vocab = logits->shape[1];
    int64_t allowed = o->vocab_limit > 0 && o->vocab_limit < vocab ? o->vocab_limit : vocab;
    if (logits->device == AN_CUDA) {
        AN_TRY(an_sample_rows_on_device(ctx, logits, o, device_tokens));
        return an_cuda_memcpy(ctx, tokens, AN_CPU, an_tensor_data(device_tokens), AN_CUDA, (size_t)b * sizeof *tokens);
    }
    an_tensor *host = an_tensor_to(ctx, logits, AN_F64, AN_CPU);
    double *scratch = malloc((size_t)(2 * vocab) * sizeof *scratch);
    an_status st = host && scratch ? AN_OK : an_error_status(ctx) ? an_error_status(ctx)
                                   : an_error_set(ctx, AN_ERR_INTERNAL, __FILE__, __LINE__, "sample: out of host memory");
    for (int64_t i = 0; i < b && st == AN_OK; i++)
        tokens[i] = an_sample_token((const double *)an_tensor_data(host) + i * vocab, allowed, o, &ctx->rng, scratch);
    free(scratch);
    an_tensor_release(host);
    return st;
}
