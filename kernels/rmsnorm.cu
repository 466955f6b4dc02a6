/* rmsnorm.cu — RMSNorm over the last dim, y = x * rstd * w with rstd = 1 / sqrt(mean(x^2) + eps)
 * (HF Qwen2RMSNorm / LlamaRMSNorm), and its gradients from the saved rstd.
 *
 * Numerics: elements are widened to fp32; each row's sum of squares is an fp32 block sum in a
 * fixed order, and rstd = 1 / sqrt(sum / D + eps) is taken in fp64 and stored as fp32 (the CPU
 * op saves the same fp32 rstd). Outputs round once to the dtype and are written with =.
 * grad_w is a deterministic two-pass reduction: pass 1 writes fp32 partial column sums, one per
 * split of the rows (the split count depends only on the shape and the GPU), pass 2 adds the
 * splits in order. No atomics anywhere. */
#include "kernels/block_reduce.cuh"

#include <stdint.h>

namespace {

const int kColThreads = 256; /* dw pass 1: 32 columns x 8 row lanes */
const int kColWidth = 32;

template <typename T>
__global__ void rmsnorm_kernel(const T *x, const T *w, int64_t D, double eps, T *y, float *rstd) {
    int64_t r = blockIdx.x;
    const T *xr = x + r * D; /* (D) */
    T *yr = y + r * D;       /* (D) */
    float ss = 0.0f;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
        float v = an_load(xr[d]);
        ss += v * v;
    }
    ss = an_block_sum(ss);
    float s = (float)(1.0 / sqrt((double)ss / (double)D + eps));
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) yr[d] = an_store<T>(an_load(xr[d]) * s * an_load(w[d]));
    if (threadIdx.x == 0) rstd[r] = s;
}

/* grad_x row r = s * g * w - s^3 * x * mean(g * w * x). */
template <typename T>
__global__ void rmsnorm_dx_kernel(const T *x, const T *w, const float *rstd, const T *g, int64_t D, T *dx) {
    int64_t r = blockIdx.x;
    const T *xr = x + r * D, *gr = g + r * D; /* (D) each */
    T *dr = dx + r * D;                      /* (D) */
    float dot = 0.0f;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) dot += an_load(gr[d]) * an_load(w[d]) * an_load(xr[d]);
    dot = an_block_sum(dot);
    float s = rstd[r];
    float coef = s * s * s * dot / (float)D;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x)
        dr[d] = an_store<T>(s * an_load(gr[d]) * an_load(w[d]) - coef * an_load(xr[d]));
}

/* Pass 1: partial[split * D + col] = sum over rows of split `blockIdx.y` of g * x * rstd. */
template <typename T>
__global__ void rmsnorm_dw_partial_kernel(const T *x, const float *rstd, const T *g, int64_t rows, int64_t D,
                                          int64_t rows_per_split, float *partial) {
    __shared__ float sm[kColThreads];
    int tx = threadIdx.x % kColWidth, ty = threadIdx.x / kColWidth, lanes = kColThreads / kColWidth;
    int64_t col = (int64_t)blockIdx.x * kColWidth + tx;
    int64_t r0 = (int64_t)blockIdx.y * rows_per_split;
    int64_t r1 = r0 + rows_per_split < rows ? r0 + rows_per_split : rows;
    float acc = 0.0f;
    if (col < D)
        for (int64_t r = r0 + ty; r < r1; r += lanes)
            acc += an_load(g[r * D + col]) * an_load(x[r * D + col]) * rstd[r];
    sm[threadIdx.x] = acc;
    __syncthreads();
    for (int half = lanes / 2; half > 0; half /= 2) {
        if (ty < half) sm[threadIdx.x] += sm[threadIdx.x + half * kColWidth];
        __syncthreads();
    }
    if (ty == 0 && col < D) partial[(int64_t)blockIdx.y * D + col] = sm[tx];
}

/* Pass 2: dw[col] = sum over splits of partial, in split order. */
template <typename T> __global__ void rmsnorm_dw_finish_kernel(const float *partial, int64_t splits, int64_t D, T *dw) {
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t col = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; col < D; col += stride) {
        float acc = 0.0f;
        for (int64_t sp = 0; sp < splits; sp++) acc += partial[sp * D + col];
        dw[col] = an_store<T>(acc);
    }
}

template <typename T>
an_status weight_grad(an_ctx *ctx, an_cuda_state *s, const T *x, const float *rstd, const T *g, int64_t rows,
                      int64_t D, T *dw) {
    int64_t col_blocks = (D + kColWidth - 1) / kColWidth;
    /* enough blocks to fill the GPU a few times over, each split at least 4 rows per lane */
    int64_t target = 4LL * s->sm_count;
    int64_t splits = col_blocks >= target ? 1 : (target + col_blocks - 1) / col_blocks;
    int64_t max_splits = rows / (4LL * (kColThreads / kColWidth));
    if (splits > max_splits) splits = max_splits;
    if (splits > 1024) splits = 1024;
    if (splits < 1) splits = 1;
    int64_t rows_per_split = (rows + splits - 1) / splits;
    if (rows_per_split < 1) rows_per_split = 1;
    splits = (rows + rows_per_split - 1) / rows_per_split;
    if (splits < 1) splits = 1;
    void *scratch = nullptr;
    AN_TRY(an_cuda_scratch(ctx, (size_t)(splits * D) * sizeof(float), &scratch));
    float *partial = (float *)scratch;
    dim3 grid((unsigned)col_blocks, (unsigned)splits);
    rmsnorm_dw_partial_kernel<T><<<grid, kColThreads, 0, s->stream>>>(x, rstd, g, rows, D, rows_per_split, partial);
    AN_CUDA_LAUNCH_CHECK(ctx, "rmsnorm_dw_partial_kernel");
    rmsnorm_dw_finish_kernel<T><<<an_cuda_blocks(s, D, 256), 256, 0, s->stream>>>(partial, splits, D, dw);
    AN_CUDA_LAUNCH_CHECK(ctx, "rmsnorm_dw_finish_kernel");
    return AN_OK;
}

an_status check_sizes(an_ctx *ctx, const char *what, int64_t rows, int64_t D) {
    AN_CHECK(ctx, rows >= 0 && rows <= INT32_MAX && D >= 1 && D <= INT32_MAX, AN_ERR_INPUT,
             "%s: %lld rows of %lld is outside the CUDA kernel's range", what, (long long)rows, (long long)D);
    return AN_OK;
}

} // namespace

extern "C" {

an_status an_cuda_rmsnorm(an_ctx *ctx, an_dtype dtype, const void *x, const void *w, int64_t rows, int64_t D,
                          double eps, void *y, float *rstd) {
    AN_CUDA_STATE(ctx, s);
    AN_TRY(check_sizes(ctx, "rmsnorm", rows, D));
    if (rows == 0) return AN_OK;
    int threads = an_row_threads(D, 256);
    AN_CUDA_DISPATCH_FLOAT(ctx, dtype, "rmsnorm", {
        rmsnorm_kernel<T><<<(unsigned)rows, threads, 0, s->stream>>>((const T *)x, (const T *)w, D, eps, (T *)y, rstd);
        AN_CUDA_LAUNCH_CHECK(ctx, "rmsnorm_kernel");
    });
    return AN_OK;
}

an_status an_cuda_rmsnorm_backward(an_ctx *ctx, an_dtype dtype, const void *x, const void *w, const float *rstd,
                                   const void *grad_y, int64_t rows, int64_t D, void *grad_x, void *grad_w) {
    AN_CUDA_STATE(ctx, s);
    AN_TRY(check_sizes(ctx, "rmsnorm_backward", rows, D));
    int threads = an_row_threads(D, 256);
    AN_CUDA_DISPATCH_FLOAT(ctx, dtype, "rmsnorm_backward", {
        if (grad_x && rows > 0) {
            rmsnorm_dx_kernel<T><<<(unsigned)rows, threads, 0, s->stream>>>((const T *)x, (const T *)w, rstd,
                                                                           (const T *)grad_y, D, (T *)grad_x);
            AN_CUDA_LAUNCH_CHECK(ctx, "rmsnorm_dx_kernel");
        }
        if (grad_w) return weight_grad<T>(ctx, s, (const T *)x, rstd, (const T *)grad_y, rows, D, (T *)grad_w);
    });
    return AN_OK;
}

} // extern "C"
