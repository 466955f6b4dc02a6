/* cross_entropy.cu — per-row log-sum-exp, cross-entropy and log-softmax-gather over logits
 * (N, V), their gradients with respect to the logits, and the loss total.
 *
 * Numerics: one block per row, fp32 math: a running (max, sum of exp(x - max)) per thread merged
 * over the block in a fixed order (rows are read in 16-byte packs where aligned, thread i taking
 * packs i, i + blockDim.x, .. in order, each pack's own maximum taken first so a pack rescales the
 * sum once), lse = max + log(sum) (an infinite max is returned as it is, as the CPU does). lse is
 * kept in fp32. The loss total adds the per-row fp32 losses in fp64 in one block in a fixed order.
 * Targets equal to the ignore index give lse 0, loss 0 and zero gradient rows; targets/ids are
 * checked by the op, and the backward kernels only compare them with column indices (they never
 * index memory with them). Everything is written with =; no float atomics, so a launch of one
 * shape repeats bit for bit.
 *
 * linear_cross_entropy's chunks take one fused kernel (ce_rows_grad_kernel): lse, loss and the
 * dlogits in place of the logits, the same bits as lse_rows_kernel then ce_backward_kernel at a
 * unit gradient (the same packs a thread in the same order, the same block merge, the same
 * per-element gradient); or, where gemm_wgmma.cu formed the logits with each tile's running (max,
 * sum) pairs of a row (an_cuda_gemm_logits_stats), ce_stats_grad_kernel, which merges the lse
 * from those and reads the row once (the same gradient formula; the lse summed in another order).
 * ce_rows_grad_kernel reads the row twice, max/sum then gradient, each thread with four
 * 16-byte loads in flight. The second read is meant to hit L2, the row having been read moments
 * before: the second pass's loads and the stores are evict-first, so they leave L2 ahead of the
 * rows still to be read again, and full blocks (1024 threads, rows past about 16k columns) run one
 * a multiprocessor (their 58-64 registers a thread leave no room for a second: 2 x 1024 x 58 >
 * 65536), so about 132 rows (40 MB at bf16 V = 151936 on an H100) sit between the passes. bench/kernels on an H100, 1024 x 151936 bf16:
 * 296 us; one load in flight with plain loads and stores 334 us, four in flight without
 * evict-first 324 us; a copy of the same bytes 208 us. */
#include "kernels/block_reduce.cuh"
#include "kernels/vec.cuh" /* an_pack, an_vec_width: 16-byte row access */

#include <stdint.h>
#include <string.h> /* memcpy: packs to and from uint4 */

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

/* acc with a pack's W elements added: the pack's own maximum first, so a pack costs one rescale at
 * most. Both row_max_sum and row_max_sum_wide add packs through this one function (the same bits). */
template <typename T> __device__ __forceinline__ an_max_sum pack_max_sum(an_max_sum acc, const an_pack<T> &pk) {
    const int W = an_vec_width<T>::value;
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
    return acc;
}

/* The running log-sum-exp of this thread's share of row xr (V), merged over the block: thread i
 * takes packs i, i + blockDim.x, .. in order, then head element i and tail element i. */
template <typename T> __device__ __forceinline__ an_max_sum row_max_sum(const T *xr, int64_t V) {
    const int W = an_vec_width<T>::value;
    row_split<T> sp = split_row(xr, V);
    an_max_sum acc = {-INFINITY, 0.0f};
    for (int64_t p = threadIdx.x; p < sp.packs; p += blockDim.x)
        acc = pack_max_sum(acc, an_pack_load(xr + sp.head + p * W));
    for (int64_t j = threadIdx.x; j < sp.head; j += blockDim.x) acc = an_max_sum_add(acc, an_load(xr[j]));
    for (int64_t j = sp.head + sp.packs * W + threadIdx.x; j < V; j += blockDim.x)
        acc = an_max_sum_add(acc, an_load(xr[j]));
    return an_block_max_sum(acc);
}

const int kWide = 4; /* packs a thread of ce_rows_grad_kernel loads before it uses any, in either pass */

/* The pack of T in a 16-byte word. */
template <typename T> __device__ __forceinline__ an_pack<T> as_pack(const uint4 &u) {
    an_pack<T> pk;
    memcpy(&pk, &u, 16);
    return pk;
}

/* row_max_sum, each thread loading its next kWide packs before adding them in the same order (the
 * same bits). The loads are plain: the row stays in L2 for the second pass. */
template <typename T> __device__ __forceinline__ an_max_sum row_max_sum_wide(const T *xr, int64_t V) {
    const int W = an_vec_width<T>::value;
    const int64_t B = blockDim.x;
    row_split<T> sp = split_row(xr, V);
    an_max_sum acc = {-INFINITY, 0.0f};
    const T *q = xr + sp.head + threadIdx.x * W; /* this thread's next pack */
    for (int64_t p = threadIdx.x; p < sp.packs; p += kWide * B, q += kWide * B * W) {
        uint4 v[kWide];
#pragma unroll
        for (int u = 0; u < kWide; u++)
            if (p + u * B < sp.packs) v[u] = *reinterpret_cast<const uint4 *>(q + u * B * W);
#pragma unroll
        for (int u = 0; u < kWide; u++)
            if (p + u * B < sp.packs) acc = pack_max_sum(acc, as_pack<T>(v[u]));
    }
    for (int64_t j = threadIdx.x; j < sp.head; j += B) acc = an_max_sum_add(acc, an_load(xr[j]));
    for (int64_t j = sp.head + sp.packs * W + threadIdx.x; j < V; j += B) acc = an_max_sum_add(acc, an_load(xr[j]));
    return an_block_max_sum(acc);
}

/* The gradient of the loss of a row with target t and log-sum-exp l at logit x in column j, times
 * g: g (exp(x - l) - onehot(t)). Every cross-entropy gradient here is formed by it or grad_pack. */
__device__ __forceinline__ float ce_grad(int64_t j, float x, int64_t t, float l, float g) {
    float p = expf(x - l);
    return g * (j == t ? p - 1.0f : p);
}

/* ce_grad over a pack pk (the same bits) whose element dk is the target's column (none where dk is
 * outside 0 .. W - 1): the target is found once a pack, not compared a column at a time. */
template <typename T> __device__ __forceinline__ an_pack<T> grad_pack(const an_pack<T> &pk, int dk, float l, float g) {
    const int W = an_vec_width<T>::value;
    an_pack<T> o;
#pragma unroll
    for (int k = 0; k < W; k++) {
        float p = expf(an_load(pk.v[k]) - l);
        o.v[k] = an_store<T>(g * (k == dk ? p - 1.0f : p));
    }
    return o;
}

/* A 16-byte store marked evict-first (st.global.cs; the matching loads are __ldcs): what
 * ce_rows_grad_kernel's second pass reads for the last time and writes, so it leaves L2 before
 * rows still to be read again. */
template <typename T> __device__ __forceinline__ void pack_store_cs(T *p, const an_pack<T> &pk) {
    uint4 u;
    memcpy(&u, &pk, 16);
    __stcs(reinterpret_cast<uint4 *>(p), u);
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
    map_row(xr, dr, V, [=](int64_t j, float x) { return ce_grad(j, x, t, l, g); });
}

/* Row xr (V) of logits replaced in place by g * (exp(x - l) - onehot(t)), each thread with kWide
 * packs in flight, the loads and stores evict-first (see the top of the file). */
template <typename T> __device__ __forceinline__ void grad_row(T *xr, int64_t V, int64_t t, float l, float g) {
    const int W = an_vec_width<T>::value;
    const int64_t B = blockDim.x;
    row_split<T> sp = split_row(xr, V);
    T *q = xr + sp.head + threadIdx.x * W;     /* this thread's next pack */
    int64_t d = t - sp.head - threadIdx.x * W; /* the target's place in it */
    for (int64_t p = threadIdx.x; p < sp.packs; p += kWide * B, q += kWide * B * W, d -= kWide * B * W) {
        uint4 v[kWide];
#pragma unroll
        for (int u = 0; u < kWide; u++)
            if (p + u * B < sp.packs) v[u] = __ldcs(reinterpret_cast<const uint4 *>(q + u * B * W));
#pragma unroll
        for (int u = 0; u < kWide; u++)
            if (p + u * B < sp.packs) {
                const int64_t du = d - u * B * W;
                pack_store_cs(q + u * B * W, grad_pack(as_pack<T>(v[u]), du >= 0 && du < W ? (int)du : -1, l, g));
            }
    }
    for (int64_t j = threadIdx.x; j < sp.head; j += B) xr[j] = an_store<T>(ce_grad(j, an_load(xr[j]), t, l, g));
    for (int64_t j = sp.head + sp.packs * W + threadIdx.x; j < V; j += B)
        xr[j] = an_store<T>(ce_grad(j, an_load(xr[j]), t, l, g));
}

/* Row r = blockIdx.x of a loss chunk: lse[r] = lse_of(xr) and loss_rows[r] = lse - x[t], then the
 * row's logits replaced in place by g * (exp(x - lse) - onehot(t)); lse and loss 0 and a zero row
 * where t is ignored. The target's logit is read before any is written: lse_of's block reduction's
 * barriers order every thread's reads (xr[t] included) before any write. */
template <typename T, typename LseOf>
__device__ __forceinline__ void ce_row_grad(T *x, const void *targets, bool t64, int64_t V, int64_t ignore_index,
                                            float g, float *lse, float *loss_rows, LseOf lse_of) {
    int64_t r = blockIdx.x;
    int64_t t = an_load_id(targets, t64, r);
    T *xr = x + r * V; /* (V): logits in, dlogits out */
    if (t == ignore_index) {
        if (threadIdx.x == 0) lse[r] = 0.0f, loss_rows[r] = 0.0f;
        zero_row(xr, V);
        return;
    }
    float xt = an_load(xr[t]);
    float l = lse_of(r, xr);
    if (threadIdx.x == 0) lse[r] = l, loss_rows[r] = l - xt;
    grad_row(xr, V, t, l, g);
}

/* lse_rows_kernel's lse and loss for each row, then the dlogits (ce_backward_kernel's values at
 * grad[0] = 1), bit for bit: one launch and one read of the row from memory fewer than the two
 * kernels. Each thread has kWide packs in flight in either pass. */
template <typename T>
__global__ void __launch_bounds__(1024)
    ce_rows_grad_kernel(T *x, const void *targets, bool t64, int64_t V, int64_t ignore_index, float g, float *lse,
                        float *loss_rows) {
    ce_row_grad(x, targets, t64, V, ignore_index, g, lse, loss_rows,
                [=](int64_t, const T *xr) { return an_lse_value(row_max_sum_wide(xr, V)); });
}

/* ce_rows_grad_kernel with row r's log-sum-exp merged from its tiles' running pairs stats[r]
 * (tiles, in order: thread i merges pairs i, i + blockDim.x, .., then the block's merge) instead
 * of a pass over the logits: the row is read once. */
template <typename T>
__global__ void __launch_bounds__(1024)
    ce_stats_grad_kernel(T *x, const float2 *stats, int64_t tiles, const void *targets, bool t64, int64_t V,
                         int64_t ignore_index, float g, float *lse, float *loss_rows) {
    ce_row_grad(x, targets, t64, V, ignore_index, g, lse, loss_rows, [=](int64_t r, const T *) {
        const float2 *sr = stats + r * tiles; /* (tiles) */
        an_max_sum acc = {-INFINITY, 0.0f};
        for (int64_t k = threadIdx.x; k < tiles; k += blockDim.x)
            acc = an_max_sum_merge(acc, an_max_sum{sr[k].x, sr[k].y});
        return an_lse_value(an_block_max_sum(acc));
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

an_status an_cuda_cross_entropy_stats_grad(an_ctx *ctx, an_dtype dtype, void *logits, const float *stats,
                                           int64_t tiles, const void *targets, an_dtype target_dtype, int64_t N,
                                           int64_t V, int64_t ignore_index, double scale, float *lse,
                                           float *loss_rows) {
    AN_CUDA_STATE(ctx, s);
    AN_TRY(check_rows(ctx, "cross_entropy_stats_grad", target_dtype, N, V));
    AN_CHECK(ctx, tiles >= 1 && (uintptr_t)stats % 8 == 0, AN_ERR_INTERNAL,
             "cross_entropy_stats_grad: %lld tiles of stats at %p", (long long)tiles, (const void *)stats);
    if (N == 0) return AN_OK;
    AN_CUDA_DISPATCH_FLOAT(ctx, dtype, "cross_entropy_stats_grad", {
        ce_stats_grad_kernel<T><<<(unsigned)N, row_threads(V), 0, s->stream>>>(
            (T *)logits, (const float2 *)stats, tiles, targets, target_dtype == AN_I64, V, ignore_index, (float)scale,
            lse, loss_rows);
        AN_CUDA_LAUNCH_CHECK(ctx, "ce_stats_grad_kernel");
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
