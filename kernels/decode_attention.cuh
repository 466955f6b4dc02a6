/* decode_attention.cuh — the grouped-query decode attention (decode_attention.cu) that
 * an_cuda_attention_cached (attention.cu) tries before its per-head kernel. */
#ifndef AN_DECODE_ATTENTION_CUH
#define AN_DECODE_ATTENTION_CUH

#include "kernels/cuda_common.cuh"

/* The grouped kernel's rule: bf16/f16, head_dim 128, 2 to 8 query heads per kv head, q, the cache
 * and out 16-byte aligned. Where it holds, launches it (same arguments as an_cuda_attention_cached)
 * and sets *taken; otherwise launches nothing and clears *taken. */
an_status an_decode_attention_grouped(an_ctx *ctx, const an_attention_shape *sh, int64_t cache_len, int64_t cache_rows,
                                      an_dtype dtype, const void *q, const void *k_cache, const void *v_cache,
                                      const int64_t *rows, const int64_t *lengths, void *out, bool *taken);

#endif
