/* cuda_stub.c — the CUDA interface in a build without CUDA: every call fails with a message that
 * names the missing backend, so nothing silently runs on the wrong device. */
#include "kernels/cuda.h"

#include <stdio.h>

#define NO_CUDA(ctx) \
    an_error_set((ctx), AN_ERR_INPUT, __FILE__, __LINE__, "this anneal was built without CUDA (configure with nvcc on PATH)")

int an_cuda_available_in_build(void) { return 0; }

an_cuda_state *an_cuda_state_new(int index, char *why, size_t why_size) {
    (void)index;
    snprintf(why, why_size, "built without CUDA");
    return NULL;
}
void an_cuda_state_free(an_cuda_state *state) { (void)state; }
void *an_cuda_malloc(an_cuda_state *state, size_t bytes, char *why, size_t why_size) {
    (void)state, (void)bytes;
    snprintf(why, why_size, "built without CUDA");
    return NULL;
}
void an_cuda_free(an_cuda_state *state, void *ptr) { (void)state, (void)ptr; }
an_status an_cuda_memcpy(an_ctx *ctx, void *dst, an_device dd, const void *src, an_device sd, size_t bytes) {
    (void)dst, (void)dd, (void)src, (void)sd, (void)bytes;
    return NO_CUDA(ctx);
}
an_status an_cuda_memset(an_ctx *ctx, void *ptr, int value, size_t bytes) {
    (void)ptr, (void)value, (void)bytes;
    return NO_CUDA(ctx);
}
an_status an_cuda_synchronize(an_ctx *ctx) { return NO_CUDA(ctx); }
an_status an_cuda_cast(an_ctx *ctx, const void *src, an_dtype sdt, void *dst, an_dtype ddt, size_t n) {
    (void)src, (void)sdt, (void)dst, (void)ddt, (void)n;
    return NO_CUDA(ctx);
}
an_status an_cuda_add_into(an_ctx *ctx, void *dst, const void *src, an_dtype dtype, int64_t n) {
    (void)dst, (void)src, (void)dtype, (void)n;
    return NO_CUDA(ctx);
}
an_status an_cuda_binary(an_ctx *ctx, an_binary_kind kind, an_dtype dtype, const void *a, int64_t n, const void *b,
                         int64_t nb, void *out) {
    (void)kind, (void)dtype, (void)a, (void)n, (void)b, (void)nb, (void)out;
    return NO_CUDA(ctx);
}
an_status an_cuda_binary_backward(an_ctx *ctx, an_binary_kind kind, an_dtype dtype, const void *a, int64_t n,
                                  const void *b, int64_t nb, const void *grad_out, void *grad_a, void *grad_b) {
    (void)kind, (void)dtype, (void)a, (void)n, (void)b, (void)nb, (void)grad_out, (void)grad_a, (void)grad_b;
    return NO_CUDA(ctx);
}
an_status an_cuda_scale(an_ctx *ctx, an_dtype dtype, const void *x, int64_t n, double s, void *out) {
    (void)dtype, (void)x, (void)n, (void)s, (void)out;
    return NO_CUDA(ctx);
}
an_status an_cuda_swiglu(an_ctx *ctx, an_dtype dtype, const void *gate, const void *up, int64_t n, void *out) {
    (void)dtype, (void)gate, (void)up, (void)n, (void)out;
    return NO_CUDA(ctx);
}
an_status an_cuda_swiglu_backward(an_ctx *ctx, an_dtype dtype, const void *gate, const void *up, int64_t n,
                                  const void *grad_out, void *grad_gate, void *grad_up) {
    (void)dtype, (void)gate, (void)up, (void)n, (void)grad_out, (void)grad_gate, (void)grad_up;
    return NO_CUDA(ctx);
}
an_status an_cuda_sum(an_ctx *ctx, an_dtype dtype, const void *x, int64_t n, double scale, void *out) {
    (void)dtype, (void)x, (void)n, (void)scale, (void)out;
    return NO_CUDA(ctx);
}
an_status an_cuda_fill_from_scalar(an_ctx *ctx, an_dtype dtype, const void *x, double scale, int64_t n, void *out) {
    (void)dtype, (void)x, (void)scale, (void)n, (void)out;
    return NO_CUDA(ctx);
}
an_status an_cuda_gemm(an_ctx *ctx, const an_gemm_shape *shape, an_dtype dtype, const void *a, const void *b, void *c) {
    (void)shape, (void)dtype, (void)a, (void)b, (void)c;
    return NO_CUDA(ctx);
}
an_status an_cuda_attention(an_ctx *ctx, const an_attention_shape *shape, an_dtype dtype, const void *q,
                            const void *k, const void *v, const void *segments, an_dtype seg_dtype, void *out,
                            float *lse) {
    (void)shape, (void)dtype, (void)q, (void)k, (void)v, (void)segments, (void)seg_dtype, (void)out, (void)lse;
    return NO_CUDA(ctx);
}
an_status an_cuda_attention_backward(an_ctx *ctx, const an_attention_shape *shape, an_dtype dtype, const void *q,
                                     const void *k, const void *v, const void *segments, an_dtype seg_dtype,
                                     const float *lse, const void *grad_out, void *grad_q, void *grad_k,
                                     void *grad_v) {
    (void)shape, (void)dtype, (void)q, (void)k, (void)v, (void)segments, (void)seg_dtype, (void)lse, (void)grad_out;
    (void)grad_q, (void)grad_k, (void)grad_v;
    return NO_CUDA(ctx);
}
an_status an_cuda_attention_cached(an_ctx *ctx, const an_attention_shape *shape, int64_t cache_len, an_dtype dtype,
                                   const void *q, const void *k_cache, const void *v_cache, const int64_t *rows,
                                   const int64_t *lengths, void *out) {
    (void)shape, (void)cache_len, (void)dtype, (void)q, (void)k_cache, (void)v_cache, (void)rows, (void)lengths;
    (void)out;
    return NO_CUDA(ctx);
}
an_status an_cuda_adamw(an_ctx *ctx, const an_adamw_scalars *k, float *master, float *exp_avg, float *exp_avg_sq,
                        const void *grad, an_dtype grad_dtype, void *param, an_dtype param_dtype, int64_t n) {
    (void)k, (void)master, (void)exp_avg, (void)exp_avg_sq, (void)grad, (void)grad_dtype, (void)param;
    (void)param_dtype, (void)n;
    return NO_CUDA(ctx);
}
an_status an_cuda_sum_squares(an_ctx *ctx, an_dtype dtype, const void *x, int64_t n, double *sum) {
    (void)dtype, (void)x, (void)n, (void)sum;
    return NO_CUDA(ctx);
}
