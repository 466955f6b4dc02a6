/* kv_cache.h — keys and values of past tokens for incremental decoding, one contiguous
 * (rows, capacity, Hkv, D) block per layer. A row is one sequence; `length` counts the tokens it
 * holds. Keys are stored after rotary embedding, so a cached key never changes. */
#ifndef AN_MODEL_KV_CACHE_H
#define AN_MODEL_KV_CACHE_H

#include "model/model.h"

typedef struct {
    int64_t rows, capacity, num_layers, kv_heads, head_dim;
    an_tensor **k, **v;  /* num_layers tensors of (rows, capacity, Hkv, D), the model's dtype and device */
    an_tensor *length;   /* (rows) i64 on the CPU */
} an_kv_cache;

an_status an_kv_cache_create(an_ctx *ctx, const an_model *model, int64_t rows, int64_t capacity, an_kv_cache **out);
void an_kv_cache_free(an_kv_cache *cache);
/* Forgets every token of row r (it can hold a new sequence). */
void an_kv_cache_reset_row(an_kv_cache *cache, int64_t r);

/* Hidden states (B', T, H) after the final norm for ids (B', T) appended to cache rows `rows`
 * (B') i64: token t of batch entry b sits at position length[rows[b]] + t and sees every earlier
 * token of its row. Keys and values are written into the cache and the lengths advanced by T.
 * Inference only: call inside an_no_grad. */
an_tensor *an_model_forward_cached(an_ctx *ctx, an_model *model, an_tensor *ids, an_tensor *rows, an_kv_cache *cache);

#endif
