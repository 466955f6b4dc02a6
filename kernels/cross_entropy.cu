/* cross_entropy.cu — per-row log-sum-exp, cross-entropy and log-softmax-gather over logits
 * (N, V), their gradients with respect to the logits, and the loss total.
 *
 * Numerics: one block per row, fp32 math: a running (max, sum of exp(x - max)) per thread merged
 * over the block in a fixed order, lse = max + log(sum) (an infinite max is returned as it is, as
 * the CPU does). lse is kept in fp32. The loss total adds the per-row fp32 losses in fp64 in one
 * block in a fixed order. Targets equal to the ignore index give lse 0, loss 0 and zero gradient
 * rows; targets/ids are checked by the op, and the backward kernels only compare them with column
 * indices (they never index memory with them). Everything is written with =; no float atomics,
 * so a launch of one shape repeats bit for bit. */
#include "kernels/block_reduce.cuh"

#include <stdint.h>

namespace {

const int kTotalThreads = 1024;

int row_threads(int64_t V) { return an_row_threads((V + 15) / 16, 1024); }

/* Row r: lse[r]; loss_rows[r] = lse - x[t] and/or gathered[r] = x[t] - lse when given; lse and
 * loss 0 on an ignored row (only when allow_ignore). */
template <typename T>
__global__ void lse_rows_kernel(const T *x, const void *targets, bool t64, int64_t V, bool allow_ignore,
                                int64_t ignore_index, float *lse, float *loss_rows, T *gathered) {
    int64_t r = blockIdx.x;
    int64_t t = an_load_id(targets, t64, r);
    if (allow_ignore && t == ignore_index) { /* the whole block leaves together */
        if (threadIdx.x == 0) {
            lse[r] = 0.0f;
            if (loss_rows) loss_rows[r] = 0.0f;
        }
        return;
    }
    const T *xr = x + r * V; /* (V) */
    an_max_sum acc = {-INFINITY, 0.0f};
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) acc = an_max_sum_add(acc, an_load(xr[j]));
    acc = an_block_max_sum(acc);
    if (threadIdx.x == 0) {
        float l = an_lse_value(acc), xt = an_load(xr[t]);
        lse[r] = l;
        if (loss_rows) loss_rows[r] = l - xt;
        if (gathered) gathered[r] = an_store<T>(xt - l);
    }
}

/* out[0] = scale * sum(values), one block, fp64. */
template <typename T> __global__ void total_kernel(const float *values, int64_t n, double scale, T *out) {
    double acc = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) acc += (double)values[i];
    acc = an_block_sum(acc);
    if (threadIdx.x == 0) out[0] = an_store<T>((float)(acc * scale));
}

/* dx row r = g * scale * (exp(x - lse[r]) - onehot(t)), 0 on an ignored row; g = grad[0]. */
template <typename T>
__global__ void ce_backward_kernel(const T *x, const float *lse, const void *targets, bool t64, int64_t V,
                                   int64_t ignore_index, const T *grad, double scale, T *dx) {
    int64_t r = blockIdx.x;
    int64_t t = an_load_id(targets, t64, r);
    const T *xr = x + r * V; /* (V) */
    T *dr = dx + r * V;      /* (V); may be xr: each element is read before it is written */
    if (t == ignore_index) {
        for (int64_t j = threadIdx.x; j < V; j += blockDim.x) dr[j] = an_store<T>(0.0f);
        return;
    }
    float g = (float)((double)an_load(grad[0]) * scale), l = lse[r];
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
        float p = expf(an_load(xr[j]) - l);
        dr[j] = an_store<T>(g * (j == t ? p - 1.0f : p));
    }
}

/* dx row r = grad[r] * (onehot(ids[r]) - exp(x - lse[r])). */
template <typename T>
__global__ void lsg_backward_kernel(const T *x, const float *lse, const void *ids, bool i64, int64_t V, const T *grad,
                                    T *dx) {
    int64_t r = blockIdx.x;
    int64_t id = an_load_id(ids, i64, r);
    const T *xr = x + r * V; /* (V) */
    T *dr = dx + r * V;      /* (V) */
    float g = an_load(grad[r]), l = lse[r];
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
        float p = expf(an_load(xr[j]) - l);
        dr[j] = an_store<T>(g * (j == id ? 1.0f - p : -p));
    }
}

an_status check_rows(an_ctx *ctx, const char *what, an_dtype id_dtype, int64_t N, int64_t V) {
    AN_CHECK(ctx, id_dtype == AN_I32 || id_dtype == AN_I64, AN_ERR_INPUT, "%s: ids must be i32 or i64, got %s", what,
             an_dtype_name(id_dtype));
    AN_CHECK(ctx, N >= 0 && N <= INT32_MAX && V >= 1, AN_ERR_INPUT,
             "%s: logits (%lld, %lld) are outside the CUDA kernel's range", what, (long long)N, (long long)V);
    return AN_OK;
}

} // namespace

extern "C" {

an_status an_cuda_cross_entropy_rows(an_ctx *ctx, an_dtype dtype, const void *logits, const void *targets,
                                     an_dtype target_dtype, int64_t N, int64_t V, int64_t ignore_index, float *lse,
                                     float *loss_rows) {
    AN_CUDA_STATE(ctx, s);
    AN_TRY(check_rows(ctx, "cross_entropy", target_dtype, N, V));
    if (N == 0) return AN_OK;
    AN_CUDA_DISPATCH_FLOAT(ctx, dtype, "cross_entropy", {
        lse_rows_kernel<T><<<(unsigned)N, row_threads(V), 0, s->stream>>>(
            (const T *)logits, targets, target_dtype == AN_I64, V, true, ignore_index, lse, loss_rows, nullptr);
        AN_CUDA_LAUNCH_CHECK(ctx, "lse_rows_kernel");
    });
    return AN_OK;
}

an_status an_cuda_loss_total(an_ctx *ctx, an_dtype dtype, const float *values, int64_t n, double scale, void *out) {
    AN_CUDA_STATE(ctx, s);
    AN_CHECK(ctx, n >= 0, AN_ERR_INTERNAL, "loss_total: negative count %lld", (long long)n);
    AN_CUDA_DISPATCH_FLOAT(ctx, dtype, "loss_total", {
        total_kernel<T><<<1, kTotalThreads, 0, s->stream>>>(values, n, scale, (T *)out);
        AN_CUDA_LAUNCH_CHECK(ctx, "total_kernel");
    });
    return AN_OK;
}

an_status an_cuda_cross_entropy_backward(an_ctx *ctx, an_dtype dtype, const void *logits, const float *lse,
                                         const void *targets, an_dtype target_dtype, int64_t N, int64_t V,
                                         int64_t ignore_index, const void *grad, double scale, void *dx) {
    AN_CUDA_STATE(ctx, s);
    AN_TRY(check_rows(ctx, "cross_entropy_backward", target_dtype, N, V));
    if (N == 0) return AN_OK;
    AN_CUDA_DISPATCH_FLOAT(ctx, dtype, "cross_entropy_backward", {
        ce_backward_kernel<T><<<(unsigned)N, row_threads(V), 0, s->stream>>>(
            (const T *)logits, lse, targets, target_dtype == AN_I64, V, ignore_index, (const T *)grad, scale, (T *)dx);
        AN_CUDA_LAUNCH_CHECK(ctx, "ce_backward_kernel");
    });
    return AN_OK;
}

an_status an_cuda_log_softmax_gather(an_ctx *ctx, an_dtype dtype, const void *logits, const void *ids,
                                     an_dtype id_dtype, int64_t N, int64_t V, float *lse, void *out) {
    AN_CUDA_STATE(ctx, s);
    AN_TRY(check_rows(ctx, "log_softmax_gather", id_dtype, N, V));
    if (N == 0) return AN_OK;
    AN_CUDA_DISPATCH_FLOAT(ctx, dtype, "log_softmax_gather", {
        lse_rows_kernel<T><<<(unsigned)N, row_threads(V), 0, s->stream>>>(
            (const T *)logits, ids, id_dtype == AN_I64, V, false, 0, lse, nullptr, (T *)out);
        AN_CUDA_LAUNCH_CHECK(ctx, "lse_rows_kernel");
    });
    return AN_OK;
}

an_status an_cuda_log_softmax_gather_backward(an_ctx *ctx, an_dtype dtype, const void *logits, const float *lse,
                                              const void *ids, an_dtype id_dtype, const void *grad, int64_t N,
                                              int64_t V, void *dx) {
    AN_CUDA_STATE(ctx, s);
    AN_TRY(check_rows(ctx, "log_softmax_gather_backward", id_dtype, N, V));
    if (N == 0) return AN_OK;
    AN_CUDA_DISPATCH_FLOAT(ctx, dtype, "log_softmax_gather_backward", {
        lsg_backward_kernel<T><<<(unsigned)N, row_threads(V), 0, s->stream>>>(
            (const T *)logits, lse, ids, id_dtype == AN_I64, V, (const T *)grad, (T *)dx);
        AN_CUDA_LAUNCH_CHECK(ctx, "lsg_backward_kernel");
    });
    return AN_OK;
}

} // extern "C"
