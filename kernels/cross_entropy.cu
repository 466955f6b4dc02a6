/* cross_entropy.cu — per-row log-sum-exp, cross-entropy and log-softmax-gather over logits
 * (N, V), their gradients with respect to the logits, and the loss total.
 *
 * Numerics: one block per row, fp32 math: a running (max, sum of exp(x - max)) per thread merged
 * over the block in a fixed order (rows are read in 16-byte packs where aligned, each pack's own
 * maximum taken first so a pack rescales the sum once), lse = max + log(sum) (an infinite max is returned as it is, as
 * the CPU does). lse is kept in fp32. The loss total adds the per-row fp32 losses in fp64 in one
 * block in a fixed order. Targets equal to the ignore index give lse 0, loss 0 and zero gradient
 * rows; targets/ids are checked by the op, and the backward kernels only compare them with column
 * indices (they never index memory with them). Everything is written with =; no float atomics,
 * so a launch of one shape repeats bit for bit. linear_cross_entropy's chunks take one fused
 * kernel (ce_rows_grad_kernel): lse, loss and the dlogits in place of the logits. */
#include "kernels/block_reduce.cuh"
#include "kernels/vec.cuh" /* an_pack, an_vec_width: 16-byte row access */

#include <stdint.h>

namespace {

const int kTotalThreads = 1024;

int row_threads(int64_t V) { return an_row_threads((V + 15) / 16, 1024); }

/* The part of a row of V elements at p that 16-byte packs cover: elements [head, head + packs * W)
 * with W = 16 / sizeof(T); the rest (a head before the first aligned address and a tail) is read
 * one element at a time. Two rows share a split only if their addresses agree modulo 16. */
template <typename T> struct row_split {
    int64_t head, packs;
};
template <typename T> __device__ __forceinline__ row_split<T> split_row(const T *p, int64_t V) {
    const int W = an_vec_width<T>::value;
    uintptr_t mis = (uintptr_t)p % 16;
    int64_t head = mis % sizeof(T) != 0 ? V : (int64_t)(((16 - mis) % 16) / sizeof(T)); /* odd address: no packs */
    if (head > V) head = V;
    return {head, (V - head) / W};
}

/* The running log-sum-exp of this thread's share of row xr (V); merge over the block after. Packs
 * take their own maximum first, so a pack costs one rescale at most. */
template <typename T> __device__ __forceinline__ an_max_sum row_max_sum(const T *xr, int64_t V) {
    const int W = an_vec_width<T>::value;
    row_split<T> sp = split_row(xr, V);
    an_max_sum acc = {-INFINITY, 0.0f};
    for (int64_t p = threadIdx.x; p < sp.packs; p += blockDim.x) {
        an_pack<T> pk = an_pack_load(xr + sp.head + p * W);
        float v[W], m = -INFINITY;
#pragma unroll
        for (int k = 0; k < W; k++) v[k] = an_load(pk.v[k]), m = fmaxf(m, v[k]);
        if (m > acc.m) {
            acc.s = acc.s == 0.0f ? 0.0f : acc.s * expf(acc.m - m);
            acc.m = m;
        }
#pragma unroll
        for (int k = 0; k < W; k++) /* as an_max_sum_add: -inf adds nothing, NaN makes s NaN (fmaxf skipped it) */
            if (v[k] != -INFINITY) acc.s += v[k] == acc.m ? 1.0f : expf(v[k] - acc.m);
    }
    for (int64_t j = threadIdx.x; j < sp.head; j += blockDim.x) acc = an_max_sum_add(acc, an_load(xr[j]));
    for (int64_t j = sp.head + sp.packs * W + threadIdx.x; j < V; j += blockDim.x)
        acc = an_max_sum_add(acc, an_load(xr[j]));
    return an_block_max_sum(acc);
}

/* dr (V) = 0 without reading anything (an ignored target's gradient row). */
template <typename T> __device__ __forceinline__ void zero_row(T *dr, int64_t V) {
    const int W = an_vec_width<T>::value;
    row_split<T> sp = split_row(dr, V);
    an_pack<T> z;
#pragma unroll
    for (int k = 0; k < W; k++) z.v[k] = an_store<T>(0.0f);
    for (int64_t p = threadIdx.x; p < sp.packs; p += blockDim.x) an_pack_store(dr + sp.head + p * W, z);
    for (int64_t j = threadIdx.x; j < sp.head; j += blockDim.x) dr[j] = an_store<T>(0.0f);
    for (int64_t j = sp.head + sp.packs * W + threadIdx.x; j < V; j += blockDim.x) dr[j] = an_store<T>(0.0f);
}

/* dr[j] = f(j, xr[j]) over a row of V; dr may be xr (each element is read before it is written).
 * Packs when both rows split alike. */
template <typename T, typename F> __device__ __forceinline__ void map_row(const T *xr, T *dr, int64_t V, F f) {
    const int W = an_vec_width<T>::value;
    row_split<T> sp = split_row(xr, V);
    if ((uintptr_t)xr % 16 != (uintptr_t)dr % 16) sp = {V, 0};
    for (int64_t p = threadIdx.x; p < sp.packs; p += blockDim.x) {
        int64_t j0 = sp.head + p * W;
        an_pack<T> pk = an_pack_load(xr + j0);
#pragma unroll
        for (int k = 0; k < W; k++) pk.v[k] = an_store<T>(f(j0 + k, an_load(pk.v[k])));
        an_pack_store(dr + j0, pk);
    }
    for (int64_t j = threadIdx.x; j < sp.head; j += blockDim.x) dr[j] = an_store<T>(f(j, an_load(xr[j])));
    for (int64_t j = sp.head + sp.packs * W + threadIdx.x; j < V; j += blockDim.x)
        dr[j] = an_store<T>(f(j, an_load(xr[j])));
}

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
    an_max_sum acc = row_max_sum(xr, V);
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
        zero_row(dr, V);
        return;
    }
    float g = (float)((double)an_load(grad[0]) * scale), l = lse[r];
    map_row(xr, dr, V, [=](int64_t j, float x) {
        float p = expf(x - l);
        return g * (j == t ? p - 1.0f : p);
    });
}

/* lse_rows_kernel's lse and loss for row r, then the row's logits replaced in place by
 * g * (exp(x - lse) - onehot(t)) (ce_backward_kernel's values at grad[0] = 1): one launch and one
 * read of the row fewer than the two kernels. The target's logit is read before any is written. */
template <typename T>
__global__ void ce_rows_grad_kernel(T *x, const void *targets, bool t64, int64_t V, int64_t ignore_index, float g,
                                    float *lse, float *loss_rows) {
    int64_t r = blockIdx.x;
    int64_t t = an_load_id(targets, t64, r);
    T *xr = x + r * V; /* (V): logits in, dlogits out */
    if (t == ignore_index) {
        if (threadIdx.x == 0) lse[r] = 0.0f, loss_rows[r] = 0.0f;
        zero_row(xr, V);
        return;
    }
    float xt = an_load(xr[t]);
    /* the block reduction's barriers order every thread's reads (xr[t] included) before any write */
    float l = an_lse_value(row_max_sum(xr, V));
    if (threadIdx.x == 0) lse[r] = l, loss_rows[r] = l - xt;
    map_row(xr, xr, V, [=](int64_t j, float xv) {
        float p = expf(xv - l);
        return g * (j == t ? p - 1.0f : p);
    });
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
    map_row(xr, dr, V, [=](int64_t j, float x) {
        float p = expf(x - l);
        return g * (j == id ? 1.0f - p : -p);
    });
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

an_status an_cuda_cross_entropy_rows_grad(an_ctx *ctx, an_dtype dtype, void *logits, const void *targets,
                                          an_dtype target_dtype, int64_t N, int64_t V, int64_t ignore_index,
                                          double scale, float *lse, float *loss_rows) {
    AN_CUDA_STATE(ctx, s);
    AN_TRY(check_rows(ctx, "cross_entropy_rows_grad", target_dtype, N, V));
    if (N == 0) return AN_OK;
    AN_CUDA_DISPATCH_FLOAT(ctx, dtype, "cross_entropy_rows_grad", {
        ce_rows_grad_kernel<T><<<(unsigned)N, row_threads(V), 0, s->stream>>>(
            (T *)logits, targets, target_dtype == AN_I64, V, ignore_index, (float)scale, lse, loss_rows);
        AN_CUDA_LAUNCH_CHECK(ctx, "ce_rows_grad_kernel");
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
