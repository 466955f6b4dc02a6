/* attention_mma.cuh — the tensor-core attention path (kernels/attention_mma.cu) that
 * kernels/attention.cu hands bf16/f16 work to: which shapes it takes, and its launchers.
 *
 * The path takes dtype bf16 or f16, head_dim 64 or 128, and q, k, v, out, grad_out, grad_q,
 * grad_k, grad_v addresses aligned to 16 bytes (whole 8-element rows moved with 16-byte
 * copies); attention.cu's fp32 CUDA-core kernels take everything else (f32, other head sizes).
 * Both compute the same function under the same masking rule; the choice is by shape, never by
 * failure. */
#ifndef AN_ATTENTION_MMA_CUH
#define AN_ATTENTION_MMA_CUH

#include "kernels/cuda_common.cuh"

/* Whether the tensor-core path takes this dtype and head_dim (alignment is checked per call). */
bool an_attention_mma_takes(an_dtype dtype, int64_t head_dim);
bool an_attention_mma_aligned(const void *const *ptrs, int n);

/* As an_cuda_attention: out (B, T, Hq, D), lse (B, Hq, T) natural-log f32. segments (B, T) i32
 * (seg_wide false) or i64, or NULL. */
an_status an_attention_mma_forward(an_ctx *ctx, const an_attention_shape *sh, an_dtype dtype, const void *q,
                                   const void *k, const void *v, const void *segments, bool seg_wide, void *out,
                                   float *lse);
/* As an_cuda_attention_backward, from the forward's out and lse; delta (B, Hq, T) f32 is
 * device scratch of B * Hq * T floats. */
an_status an_attention_mma_backward(an_ctx *ctx, const an_attention_shape *sh, an_dtype dtype, const void *q,
                                    const void *k, const void *v, const void *segments, bool seg_wide,
                                    const void *out, const float *lse, const void *grad_out, float *delta,
                                    void *grad_q, void *grad_k, void *grad_v);

/* delta (B, Hq, T) f32 = the sum over d of grad_out * out (the backward's first pass; also
 * attention_wgmma.cu's). */
an_status an_attention_mma_delta(an_ctx *ctx, const an_attention_shape *sh, an_dtype dtype, const void *out,
                                 const void *grad_out, float *delta);

#endif
