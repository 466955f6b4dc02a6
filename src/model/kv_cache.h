/* kv_cache.h — keys and values of past tokens for incremental decoding, one contiguous
 * (rows, capacity, Hkv, D) block per layer. A row is one sequence; `length` counts the tokens it
 * holds. Keys are stored after rotary embedding, so a cached key never changes.
 *
 * Lengths on CUDA: the kernels read and advance `device_length`; the host keeps `length` as a
 * mirror that it advances itself by the same amounts (it never reads the device back), to
 * validate capacities and for bookkeeping. The batch's row table is kept on the device too
 * (`device_rows`), uploaded only when the rows of a step differ from the last upload, so a
 * steady-state decode step makes no host copy and no synchronisation (and can be captured in a
 * CUDA graph: model/generate.c). */
#ifndef AN_MODEL_KV_CACHE_H
#define AN_MODEL_KV_CACHE_H

#include "model/model.h"

typedef struct {
    int64_t rows, capacity, num_layers, kv_heads, head_dim;
    an_tensor **k, **v;         /* num_layers tensors of (rows, capacity, Hkv, D), the model's dtype and device */
    an_tensor *length;          /* (rows) i64 on the CPU: tokens held (on CUDA, the host's mirror) */
    an_tensor *device_length;   /* (rows) i64 on the GPU for a CUDA cache, else NULL: what the kernels read */
    an_tensor *device_rows;     /* (rows) i64 on the GPU for a CUDA cache, else NULL: the last row table
                                   uploaded, n_device_rows entries of it in use */
    int64_t *uploaded_rows;     /* (rows) host copy of device_rows' entries in use */
    int64_t n_device_rows;
} an_kv_cache;

an_status an_kv_cache_create(an_ctx *ctx, const an_model *model, int64_t rows, int64_t capacity, an_kv_cache **out);
void an_kv_cache_free(an_kv_cache *cache);
/* Forgets every token of row r (it can hold a new sequence); on CUDA an asynchronous memset. */
an_status an_kv_cache_reset_row(an_ctx *ctx, an_kv_cache *cache, int64_t r);
/* A new (B') view of the device row table holding host rows (B') i64, uploading them only when
 * they differ from the last upload (the upload synchronises; inside a CUDA graph capture it is an
 * error). CUDA caches only. */
an_tensor *an_kv_cache_device_rows(an_ctx *ctx, an_kv_cache *cache, const an_tensor *rows);

/* Hidden states (B', T, H) after the final norm for ids (B', T) appended to cache rows `rows`
 * (B') i64 on the CPU: token t of batch entry b sits at position length[rows[b]] + t and sees
 * every earlier token of its row. Keys and values are written into the cache and the lengths
 * advanced by T (on CUDA by the step on the device, and on the host mirror). Inference only: call
 * inside an_no_grad. */
an_tensor *an_model_forward_cached(an_ctx *ctx, an_model *model, an_tensor *ids, an_tensor *rows, an_kv_cache *cache);
/* As an_model_forward_cached for ids the caller vouches lie in [0, V): the GPU sampler's output
 * (an_embedding_trusted; on CUDA no id check and so no synchronisation). With the row table
 * already uploaded, the whole call is host-synchronisation-free on CUDA. */
an_tensor *an_model_forward_cached_trusted(an_ctx *ctx, an_model *model, an_tensor *ids, an_tensor *rows,
                                           an_kv_cache *cache);

#endif
