/* kv_cache.c — cache storage and its bookkeeping (the cached forward pass lives in model.c,
 * beside the decoder block it shares with training). The cache owns its tensors and the host
 * copy of the uploaded row table. */
#include "model/kv_cache.h"

#include <stdlib.h>
#include <string.h>

#include "kernels/cuda.h"  /* an_cuda_memset for reset_row */

an_status an_kv_cache_create(an_ctx *ctx, const an_model *m, int64_t rows, int64_t capacity, an_kv_cache **out) {
    AN_CHECK(ctx, rows >= 1 && capacity >= 1, AN_ERR_INPUT, "kv cache: %lld rows of %lld tokens", (long long)rows,
             (long long)capacity);
    an_kv_cache *c = calloc(1, sizeof *c);
    AN_CHECK(ctx, c != NULL, AN_ERR_INTERNAL, "out of host memory");
    const an_model_config *cfg = &m->config;
    an_device dev = m->embed_tokens->device;
    c->rows = rows, c->capacity = capacity, c->num_layers = cfg->num_layers;
    c->kv_heads = cfg->num_kv_heads, c->head_dim = cfg->head_dim;
    c->k = calloc((size_t)cfg->num_layers, sizeof *c->k);
    c->v = calloc((size_t)cfg->num_layers, sizeof *c->v);
    c->length = an_tensor_zeros(ctx, AN_I64, AN_CPU, 1, &rows);
    bool ok = c->k && c->v && c->length;
    if (ok && dev == AN_CUDA) {
        c->device_length = an_tensor_zeros(ctx, AN_I64, AN_CUDA, 1, &rows);
        c->device_rows = an_tensor_zeros(ctx, AN_I64, AN_CUDA, 1, &rows);
        c->uploaded_rows = calloc((size_t)rows, sizeof *c->uploaded_rows);
        ok = c->device_length && c->device_rows && c->uploaded_rows;
    }
    int64_t shape[4] = {rows, capacity, cfg->num_kv_heads, cfg->head_dim};
    for (int64_t l = 0; ok && l < cfg->num_layers; l++) {
        c->k[l] = an_tensor_new(ctx, m->embed_tokens->dtype, dev, 4, shape);
        c->v[l] = an_tensor_new(ctx, m->embed_tokens->dtype, dev, 4, shape);
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
    an_tensor_release(c->device_length);
    an_tensor_release(c->device_rows);
    free(c->uploaded_rows);
    free(c);
}

an_status an_kv_cache_reset_row(an_ctx *ctx, an_kv_cache *c, int64_t r) {
    AN_CHECK(ctx, r >= 0 && r < c->rows, AN_ERR_INPUT, "kv cache: row %lld of %lld", (long long)r, (long long)c->rows);
    ((int64_t *)an_tensor_data(c->length))[r] = 0;
    if (c->device_length)
        AN_TRY(an_cuda_memset(ctx, (int64_t *)an_tensor_data(c->device_length) + r, 0, sizeof(int64_t)));
    return AN_OK;
}

an_tensor *an_kv_cache_device_rows(an_ctx *ctx, an_kv_cache *c, const an_tensor *rows) {
    AN_CHECK_NULL(ctx, c->device_rows != NULL, AN_ERR_INTERNAL, "kv cache: no device row table (not a CUDA cache)");
    AN_CHECK_NULL(ctx, rows->ndim == 1 && rows->dtype == AN_I64 && rows->device == AN_CPU && rows->shape[0] >= 1 &&
                           rows->shape[0] <= c->rows,
                  AN_ERR_INPUT, "kv cache: rows must be (1..%lld) i64 on the CPU", (long long)c->rows);
    int64_t n = rows->shape[0];
    const int64_t *r = an_tensor_data(rows);
    if (n != c->n_device_rows || memcmp(r, c->uploaded_rows, (size_t)n * sizeof *r) != 0) {
        c->n_device_rows = 0; /* unknown contents until the copy succeeds */
        if (an_cuda_memcpy(ctx, an_tensor_data(c->device_rows), AN_CUDA, r, AN_CPU, (size_t)n * sizeof *r) != AN_OK)
            return NULL;
        memcpy(c->uploaded_rows, r, (size_t)n * sizeof *r);
        c->n_device_rows = n;
    }
    return an_tensor_rows(ctx, c->device_rows, 0, n);
}
