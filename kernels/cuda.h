/* cuda.h — the C interface of the CUDA backend: runtime (device state, memory, copies) and the
 * kernel launchers. Every launcher checks each CUDA/cuBLASLt return code, records file:line and
 * the library's message in ctx, and returns a status. In a build without CUDA the same functions
 * exist (kernels/cuda_stub.c) and fail with AN_ERR_INPUT naming the missing backend. */
#ifndef AN_CUDA_H
#define AN_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "autograd/ctx.h"           /* an_ctx, an_status, an_device */
#include "autograd/dtype.h"         /* an_dtype */
#include "autograd/kernel_types.h"  /* an_binary_kind, an_gemm_shape, an_attention_shape, an_adamw_scalars */

/* Runtime. */
int an_cuda_available_in_build(void);
/* Stream, cuBLASLt handle and workspace on device `index`; NULL with the reason in `why`. */
an_cuda_state *an_cuda_state_new(int index, char *why, size_t why_size);
void an_cuda_state_free(an_cuda_state *state);
void *an_cuda_malloc(an_cuda_state *state, size_t bytes, char *why, size_t why_size);
void an_cuda_free(an_cuda_state *state, void *ptr);
an_status an_cuda_memcpy(an_ctx *ctx, void *dst, an_device dst_device, const void *src, an_device src_device,
                         size_t bytes);
an_status an_cuda_memset(an_ctx *ctx, void *ptr, int value, size_t bytes);
an_status an_cuda_synchronize(an_ctx *ctx);

/* Elementwise (f32, bf16, f16; math in fp32). b is broadcast: element i of a pairs with i % nb. */
an_status an_cuda_cast(an_ctx *ctx, const void *src, an_dtype src_dtype, void *dst, an_dtype dst_dtype, size_t n);
an_status an_cuda_add_into(an_ctx *ctx, void *dst, const void *src, an_dtype dtype, int64_t n);
an_status an_cuda_binary(an_ctx *ctx, an_binary_kind kind, an_dtype dtype, const void *a, int64_t n, const void *b,
                         int64_t nb, void *out);
/* grad_a (n) and grad_b (nb, summed over the broadcast) are written with =; either may be NULL. */
an_status an_cuda_binary_backward(an_ctx *ctx, an_binary_kind kind, an_dtype dtype, const void *a, int64_t n,
                                  const void *b, int64_t nb, const void *grad_out, void *grad_a, void *grad_b);
an_status an_cuda_scale(an_ctx *ctx, an_dtype dtype, const void *x, int64_t n, double s, void *out);
/* out = silu(x) when up is NULL, else silu(x) * up. */
an_status an_cuda_swiglu(an_ctx *ctx, an_dtype dtype, const void *gate, const void *up, int64_t n, void *out);
/* grad_gate (and grad_up when up is given) from grad_out; written with =. */
an_status an_cuda_swiglu_backward(an_ctx *ctx, an_dtype dtype, const void *gate, const void *up, int64_t n,
                                  const void *grad_out, void *grad_gate, void *grad_up);
/* out (a scalar of dtype) = scale * sum(x), accumulated in fp32. */
an_status an_cuda_sum(an_ctx *ctx, an_dtype dtype, const void *x, int64_t n, double scale, void *out);
/* out (n) = value * scale, where value is the scalar at *x (broadcast of a scalar gradient). */
an_status an_cuda_fill_from_scalar(an_ctx *ctx, an_dtype dtype, const void *x, double scale, int64_t n, void *out);

/* GEMM through cuBLASLt: bf16/f16 operands with fp32 accumulation, or f32 (TF32 off). */
an_status an_cuda_gemm(an_ctx *ctx, const an_gemm_shape *shape, an_dtype dtype, const void *a, const void *b, void *c);

/* Attention (kernels/attention.cu): causal, grouped-query, packed documents, as an_attention in
 * autograd/ops.h defines it. q (B, T, Hq, D) and k, v (B, T, Hkv, D) of dtype (f32, bf16, f16),
 * 1 <= D <= 256; segments (B, T) of seg_dtype (i32 or i64) on the device, or NULL: query i sees key
 * j when j <= i and segments[i] == segments[j]. Math is fp32; every output is written with =.
 * Forward: out (B, T, Hq, D) of dtype and lse (B, Hq, T) f32, the natural-log logsumexp of each
 * row's scaled, masked scores (what the backward recomputes the probabilities from). */
an_status an_cuda_attention(an_ctx *ctx, const an_attention_shape *shape, an_dtype dtype, const void *q,
                            const void *k, const void *v, const void *segments, an_dtype seg_dtype, void *out,
                            float *lse);
/* Backward from the forward's lse: grad_q (B, T, Hq, D), grad_k and grad_v (B, T, Hkv, D) of dtype,
 * grad_k/grad_v summed over the query heads of each kv head in a fixed order (deterministic). Any
 * gradient pointer may be NULL. */
an_status an_cuda_attention_backward(an_ctx *ctx, const an_attention_shape *shape, an_dtype dtype, const void *q,
                                     const void *k, const void *v, const void *segments, an_dtype seg_dtype,
                                     const float *lse, const void *grad_out, void *grad_q, void *grad_k,
                                     void *grad_v);
/* Decode attention over a KV cache, as an_attention_cached in autograd/ops.h: q and out
 * (B', T, Hq, D) of dtype, caches (Bc, cache_len, Hkv, D); rows (B') and lengths (Bc) are HOST
 * arrays (already validated: lengths[rows[b]] + T <= cache_len). shape->batch is B', ->seq T. */
an_status an_cuda_attention_cached(an_ctx *ctx, const an_attention_shape *shape, int64_t cache_len, an_dtype dtype,
                                   const void *q, const void *k_cache, const void *v_cache, const int64_t *rows,
                                   const int64_t *lengths, void *out);

/* AdamW (kernels/adamw.cu). One update of n elements with src/optim/adamw.c's float64 formula and
 * operation order (no fused multiply-adds), so results are bit-identical to the CPU path: master,
 * exp_avg, exp_avg_sq (n) f32 on the device; grad (n) f32/bf16/f16; param (n) of param_dtype gets
 * the new master rounded to nearest even, or is NULL when master is the f32 parameter itself. */
an_status an_cuda_adamw(an_ctx *ctx, const an_adamw_scalars *k, float *master, float *exp_avg, float *exp_avg_sq,
                        const void *grad, an_dtype grad_dtype, void *param, an_dtype param_dtype, int64_t n);
/* *sum (a HOST double) = the sum of squares of x (n, f32/bf16/f16 on the device), accumulated in
 * float64 in a fixed order that depends only on n (bit-reproducible on one device; synchronises). */
an_status an_cuda_sum_squares(an_ctx *ctx, an_dtype dtype, const void *x, int64_t n, double *sum);

#ifdef __cplusplus
}
#endif

#endif
