/* attention_wgmma.cuh — the Hopper attention backward (kernels/attention_wgmma.cu) that
 * kernels/attention.cu hands unsegmented head_dim-128 work to: which calls it takes, its launcher.
 *
 * The path takes a compute capability 9.0 device (sm_90a code), dtype bf16 or f16, head_dim 128,
 * no segments, T a multiple of 64, 16-byte-aligned buffers, and only while the state's switch is
 * on (an_cuda_set_attention_wgmma). The choice is by shape, never by failure. */
#ifndef AN_ATTENTION_WGMMA_CUH
#define AN_ATTENTION_WGMMA_CUH

#include "kernels/cuda_common.cuh"

/* Whether the path takes this call; bufs are the n buffers it will read or write. */
bool an_attention_wgmma_takes(an_ctx *ctx, const an_attention_shape *sh, an_dtype dtype, const void *segments,
                              const void *const *bufs, int n);

/* As an_cuda_attention_backward_turning without segments, from the forward's out and lse; delta
 * (B, Hq, T) f32 is device scratch of B * Hq * T floats; rope_table NULL or as there. */
an_status an_attention_wgmma_backward(an_ctx *ctx, const an_attention_shape *sh, an_dtype dtype, const void *q,
                                      const void *k, const void *v, const void *out, const float *lse,
                                      const void *grad_out, float *delta, void *grad_q, void *grad_k, void *grad_v,
                                      const float *rope_table);

#endif
