/* kv_cache.c — cache storage and its bookkeeping (the cached forward pass lives in model.c,
 * beside the decoder block it shares with training). */
#include "model/kv_cache.h"

#include <stdlib.h>
#include <string.h>

an_status an_kv_cache_create(an_ctx *ctx, const an_model *m, int64_t rows, int64_t capacity, an_kv_cache **out) {
    AN_CHECK(ctx, rows >= 1 && capacity >= 1, AN_ERR_INPUT, "kv cache: %lld rows of %lld tokens", (long long)rows,
             (long long)capacity);
    an_kv_cache *c = calloc(1, sizeof *c);
    AN_CHECK(ctx, c != NULL, AN_ERR_INTERNAL, "out of host memory");
    const an_model_config *cfg = &m->config;
    *c = (an_kv_cache){rows, capacity, cfg->num_layers, cfg->num_kv_heads, cfg->head_dim, NULL, NULL, NULL};
    c->k = calloc((size_t)cfg->num_layers, sizeof *c->k);
    c->v = calloc((size_t)cfg->num_layers, sizeof *c->v);
    c->length = an_tensor_zeros(ctx, AN_I64, AN_CPU, 1, &rows);
    bool ok = c->k && c->v && c->length;
    int64_t shape[4] = {rows, capacity, cfg->num_kv_heads, cfg->head_dim};
    for (int64_t l = 0; ok && l < cfg->num_layers; l++) {
        c->k[l] = an_tensor_new(ctx, m->embed_tokens->dtype, m->embed_tokens->device, 4, shape);
        c->v[l] = an_tensor_new(ctx, m->embed_tokens->dtype, m->embed_tokens->device, 4, shape);
        ok = c->k[l] && c->v[l];
    }
    if (!ok) {
        an_kv_cache_free(c);
        return an_error_status(ctx) ? an_error_status(ctx) : AN_ERR_INTERNAL;
    }
    *out = c;
    return AN_OK;
}

void an_kv_cache_free(an_kv_cache *c) {
    if (!c) return;
    for (int64_t l = 0; l < c->num_layers; l++) {
        if (c->k) an_tensor_release(c->k[l]);
        if (c->v) an_tensor_release(c->v[l]);
    }
    free(c->k), free(c->v);
    an_tensor_release(c->length);
    free(c);
}

void an_kv_cache_reset_row(an_kv_cache *c, int64_t r) { ((int64_t *)an_tensor_data(c->length))[r] = 0; }
