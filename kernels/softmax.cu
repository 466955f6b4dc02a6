/* softmax.cu — softmax over the last dim of (rows, cols) and its gradient dx = y * (dy - sum(dy * y)).
 *
 * Numerics: one block per row, fp32 math. The forward keeps a running (max, sum of exp(x - max))
 * per thread, merges them over the block in a fixed order, and writes exp(x - max) / sum, rounded
 * once to the dtype; the backward's dot product is an fp32 block sum in a fixed order. Outputs are
 * written with =; a launch of one shape gives the same bits every time. */
#include "kernels/block_reduce.cuh"

#include <stdint.h>

namespace {

template <typename T> __global__ void softmax_kernel(const T *x, int64_t cols, T *y) {
    const T *xr = x + (int64_t)blockIdx.x * cols; /* (cols) */
    T *yr = y + (int64_t)blockIdx.x * cols;       /* (cols) */
    an_max_sum acc = {-INFINITY, 0.0f};
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) acc = an_max_sum_add(acc, an_load(xr[j]));
    acc = an_block_max_sum(acc);
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) yr[j] = an_store<T>(expf(an_load(xr[j]) - acc.m) / acc.s);
}

template <typename T> __global__ void softmax_backward_kernel(const T *y, const T *dy, int64_t cols, T *dx) {
    int64_t base = (int64_t)blockIdx.x * cols;
    float dot = 0.0f;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) dot += an_load(dy[base + j]) * an_load(y[base + j]);
    dot = an_block_sum(dot);
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x)
        dx[base + j] = an_store<T>(an_load(y[base + j]) * (an_load(dy[base + j]) - dot));
}

an_status check_sizes(an_ctx *ctx, const char *what, int64_t rows, int64_t cols) {
    AN_CHECK(ctx, rows >= 0 && rows <= INT32_MAX && cols >= 0, AN_ERR_INPUT,
             "%s: %lld rows of %lld is outside the CUDA kernel's range", what, (long long)rows, (long long)cols);
    return AN_OK;
}

} // namespace

extern "C" {

an_status an_cuda_softmax(an_ctx *ctx, an_dtype dtype, const void *x, int64_t rows, int64_t cols, void *y) {
    AN_CUDA_STATE(ctx, s);
    AN_TRY(check_sizes(ctx, "softmax", rows, cols));
    if (rows == 0 || cols == 0) return AN_OK;
    int threads = an_row_threads((cols + 15) / 16, 1024);
    AN_CUDA_DISPATCH_FLOAT(ctx, dtype, "softmax", {
        softmax_kernel<T><<<(unsigned)rows, threads, 0, s->stream>>>((const T *)x, cols, (T *)y);
        AN_CUDA_LAUNCH_CHECK(ctx, "softmax_kernel");
    });
    return AN_OK;
}

an_status an_cuda_softmax_backward(an_ctx *ctx, an_dtype dtype, const void *y, const void *dy, int64_t rows,
                                   int64_t cols, void *dx) {
    AN_CUDA_STATE(ctx, s);
    AN_TRY(check_sizes(ctx, "softmax_backward", rows, cols));
    if (rows == 0 || cols == 0) return AN_OK;
    int threads = an_row_threads((cols + 15) / 16, 1024);
    AN_CUDA_DISPATCH_FLOAT(ctx, dtype, "softmax_backward", {
        softmax_backward_kernel<T><<<(unsigned)rows, threads, 0, s->stream>>>((const T *)y, (const T *)dy, cols,
                                                                             (T *)dx);
        AN_CUDA_LAUNCH_CHECK(ctx, "softmax_backward_kernel");
    });
    return AN_OK;
}

} // extern "C"
