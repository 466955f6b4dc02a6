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
#include "autograd/kernel_types.h"  /* an_binary_kind, an_gemm_shape */

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

#ifdef __cplusplus
}
#endif

#endif
