/* attention_cudnn.cuh — the cuDNN attention path (kernels/attention_cudnn.cu) that
 * kernels/attention.cu hands unsegmented bf16/f16 work to: which shapes it takes, its launchers,
 * and the teardown runtime.cu calls.
 *
 * The path takes dtype bf16 or f16, head_dim 64 or 128, no segments, 16-byte-aligned buffers, and
 * only while the state's switch is on (an_cuda_set_attention_cudnn). A cuDNN failure on a shape it
 * takes is returned as an error, never answered by another path. */
#ifndef AN_ATTENTION_CUDNN_CUH
#define AN_ATTENTION_CUDNN_CUH

#include "kernels/cuda_common.cuh"

/* Whether the cuDNN path takes this dtype and head_dim (switch, segments and alignment are the
 * caller's to check). */
bool an_attention_cudnn_takes(an_dtype dtype, int64_t head_dim);

/* As an_cuda_attention without segments: out (B, T, Hq, D), lse (B, Hq, T) natural-log f32. */
an_status an_attention_cudnn_forward(an_ctx *ctx, const an_attention_shape *sh, an_dtype dtype, const void *q,
                                     const void *k, const void *v, void *out, float *lse);
/* As an_cuda_attention_backward without segments, from the forward's out and lse; a NULL gradient
 * is computed into a temporary block (cuDNN writes all three) and dropped. */
an_status an_attention_cudnn_backward(an_ctx *ctx, const an_attention_shape *sh, an_dtype dtype, const void *q,
                                      const void *k, const void *v, const void *out, const float *lse,
                                      const void *grad_out, void *grad_q, void *grad_k, void *grad_v);

/* Destroys the cached plans and the cuDNN handle (an_cuda_state_free). */
void an_cuda_cudnn_free(an_cuda_state *state);

#endif
