/* adamw.cu — the AdamW update and the float64 sum of squares behind the global gradient norm, for
 * every parameter in one launch over a device table of segments (an_cuda_adamw_multi,
 * an_cuda_sum_squares_multi).
 *
 * Numerics: the update is src/optim/adamw.c's loop transcribed operation for operation in float64
 * with the explicitly rounded intrinsics (__dadd_rn, __dmul_rn, __ddiv_rn, __dsqrt_rn), so nvcc
 * contracts nothing into a fused multiply-add and every result is bit-identical to the CPU's
 * (C11 on x86-64: no contraction either). Stored values are rounded to fp32 once, and a bf16/f16
 * parameter receives its new master rounded to nearest even (as src/autograd/dtype.c does).
 * The sums of squares accumulate each element's square in float64 in a fixed order (per-thread
 * sums in a fixed element order, a fixed block tree, then the blocks' partials in block order,
 * in spans of 8192 partials and then the spans' sums when there are more),
 * so they are bit-reproducible for given sizes; not the CPU's sequential order, so the two norms
 * can differ in the last bits.
 * Multi-tensor launches: one block per chunk of AN_ADAMW_CHUNK elements of one segment, so a
 * launch has no per-tensor tail; the 1.78 G-parameter full fine-tune of the 1.5B model moves 30
 * bytes per parameter in the update (docs/performance.md has the measured times). */
#include "kernels/cuda_common.cuh"

#include <stdint.h>

namespace {

const int kMaxBlocks = 1024; /* the finishing block of the sum of squares */

/* One element's update: src/optim/adamw.c's float64 operations in its order (see the top). */
template <typename P>
__device__ __forceinline__ void adamw_element(const an_adamw_scalars &k, double one_minus_beta1, double one_minus_beta2,
                                              float g32, float &master, float &exp_avg, float &exp_avg_sq, P *param) {
    /* CPU: g = (double)g32 * grad_scale; p = (double)master * decay */
    double g = __dmul_rn((double)g32, k.grad_scale);
    double p = __dmul_rn((double)master, k.decay);
    double m = exp_avg, v = exp_avg_sq;
    /* exp_avg = (float)(m + (1 - beta1) * (g - m)) */
    float m_new = __double2float_rn(__dadd_rn(m, __dmul_rn(one_minus_beta1, __dadd_rn(g, -m))));
    /* exp_avg_sq = (float)(beta2 * v + (1 - beta2) * g * g) */
    float v_new = __double2float_rn(__dadd_rn(__dmul_rn(k.beta2, v), __dmul_rn(__dmul_rn(one_minus_beta2, g), g)));
    exp_avg = m_new;
    exp_avg_sq = v_new;
    /* denom = sqrt((double)exp_avg_sq) / bc2_sqrt + eps */
    double denom = __dadd_rn(__ddiv_rn(__dsqrt_rn((double)v_new), k.bc2_sqrt), k.eps);
    /* master = (float)(p - step_size * (double)exp_avg / denom) */
    float w = __double2float_rn(__dadd_rn(p, -__ddiv_rn(__dmul_rn(k.step_size, (double)m_new), denom)));
    master = w;
    if (param) *param = an_store<P>(w);
}

/* Sum of the block's doubles in a fixed order; thread 0 gets it. */
__device__ __forceinline__ double block_sum(double v) {
    __shared__ double warp_sums[32];
#pragma unroll
    for (int off = 16; off > 0; off /= 2) v = __dadd_rn(v, __shfl_down_sync(0xffffffffu, v, off));
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (int)(blockDim.x / 32) ? warp_sums[lane] : 0.0;
#pragma unroll
        for (int off = 16; off > 0; off /= 2) v = __dadd_rn(v, __shfl_down_sync(0xffffffffu, v, off));
    }
    return v;
}

/* ---- the launches ------------------------------------------------------------------------------
 * A launch covers a device table of segments (an_adamw_segment): segment s owns the chunks
 * [first_chunk, first_chunk + ceil(n / AN_ADAMW_CHUNK)) and block b works on chunk b, found by a
 * binary search over first_chunk. Within a chunk, thread t takes the groups of N elements
 * t, t + blockDim, ... (the last group may be short); in a segment whose pointers are all 16-byte
 * aligned a whole group moves with vector loads and stores, anything else element by element, in
 * the same order (so the sum of squares does not depend on alignment). */

const int kMultiThreads = 256;
const int kGroup = 8; /* sum of squares: elements per thread per pass (two float4, one 16-byte pack) */
/* AdamW: elements per thread per pass, one float4 of each f32 state (and of an f32 gradient), an
 * 8-byte bf16/f16 pack. Measured on an H200 at the 1.5B shape (bench/optim.c): 13.3 ms, 95% of the
 * copy bandwidth, against 14.1 ms for 8 a pass (92 registers a thread, 2 blocks an SM, against 64
 * and 4). */
const int kUpdateGroup = 4;

/* The segment of chunk c (the last whose first_chunk <= c), copied into shared memory. */
__device__ __forceinline__ void find_segment(const an_adamw_segment *table, int n, int64_t c, an_adamw_segment *out) {
    if (threadIdx.x == 0) {
        int lo = 0, hi = n - 1;
        while (lo < hi) {
            int mid = (lo + hi + 1) / 2;
            if (table[mid].first_chunk <= c) lo = mid;
            else hi = mid - 1;
        }
        *out = table[lo];
    }
    __syncthreads();
}

__device__ __forceinline__ bool aligned16(const void *p) { return (uintptr_t)p % 16 == 0; }

/* N (4 or 8) consecutive elements widened to fp32, or N fp32 values rounded once into N
 * consecutive elements (p 16-byte aligned): float4s for f32, one 8- or 16-byte pack for bf16/f16. */
template <typename T, int N> struct alignas(N * sizeof(T)) small_pack {
    T v[N];
};
template <int N> __device__ __forceinline__ void load_n(const float *p, float *out) {
#pragma unroll
    for (int q = 0; q < N / 4; q++) {
        float4 a = reinterpret_cast<const float4 *>(p)[q];
        out[4 * q] = a.x, out[4 * q + 1] = a.y, out[4 * q + 2] = a.z, out[4 * q + 3] = a.w;
    }
}
template <int N, typename T> __device__ __forceinline__ void load_n(const T *p, float *out) {
    small_pack<T, N> pk = *reinterpret_cast<const small_pack<T, N> *>(p);
#pragma unroll
    for (int j = 0; j < N; j++) out[j] = an_load(pk.v[j]);
}
template <int N> __device__ __forceinline__ void store_n(float *p, const float *in) {
#pragma unroll
    for (int q = 0; q < N / 4; q++)
        reinterpret_cast<float4 *>(p)[q] = make_float4(in[4 * q], in[4 * q + 1], in[4 * q + 2], in[4 * q + 3]);
}
template <int N, typename T> __device__ __forceinline__ void store_n(T *p, const float *in) {
    small_pack<T, N> pk;
#pragma unroll
    for (int j = 0; j < N; j++) pk.v[j] = an_store<T>(in[j]);
    *reinterpret_cast<small_pack<T, N> *>(p) = pk;
}

/* Elements [begin, end) of one segment (grad G, parameter P; P unused when param is NULL). With
 * SUM_SQ, returns this thread's float64 sum of the squared gradient elements, in its element order. */
template <int N, typename G, typename P, bool SUM_SQ>
__device__ __forceinline__ double adamw_chunk(const an_adamw_scalars &k, double decay, const an_adamw_segment &seg,
                                              int64_t begin, int64_t end) {
    double acc = 0.0;
    const double one_minus_beta1 = __dadd_rn(1.0, -k.beta1), one_minus_beta2 = __dadd_rn(1.0, -k.beta2);
    an_adamw_scalars kk = k;
    kk.decay = decay;
    float *master = seg.master, *exp_avg = seg.exp_avg, *exp_avg_sq = seg.exp_avg_sq;
    const G *grad = (const G *)seg.grad;
    P *param = (P *)seg.param;
    bool vec = aligned16(master) && aligned16(exp_avg) && aligned16(exp_avg_sq) && aligned16(grad) &&
               aligned16(param); /* begin is a multiple of 8 elements: every group stays aligned */
    for (int64_t i = begin + (int64_t)threadIdx.x * N; i < end; i += (int64_t)blockDim.x * N) {
        if (vec && i + N <= end) {
            float w[N], m[N], v[N], g[N];
            load_n<N>(master + i, w), load_n<N>(exp_avg + i, m), load_n<N>(exp_avg_sq + i, v), load_n<N>(grad + i, g);
#pragma unroll
            for (int j = 0; j < N; j++) {
                if (SUM_SQ) acc = __dadd_rn(acc, __dmul_rn((double)g[j], (double)g[j]));
                adamw_element(kk, one_minus_beta1, one_minus_beta2, g[j], w[j], m[j], v[j], (P *)nullptr);
            }
            store_n<N>(master + i, w), store_n<N>(exp_avg + i, m), store_n<N>(exp_avg_sq + i, v);
            if (param) store_n<N>(param + i, w); /* the new master rounded, as adamw_element stores it */
        } else {
            int64_t stop = i + N < end ? i + N : end;
            for (int64_t e = i; e < stop; e++) {
                float g = an_load(grad[e]);
                if (SUM_SQ) acc = __dadd_rn(acc, __dmul_rn((double)g, (double)g));
                adamw_element(kk, one_minus_beta1, one_minus_beta2, g, master[e], exp_avg[e], exp_avg_sq[e],
                              param ? param + e : (P *)nullptr);
            }
        }
    }
    return acc;
}

template <int N, typename G, bool SUM_SQ>
__device__ __forceinline__ double adamw_chunk_param(const an_adamw_scalars &k, double decay,
                                                    const an_adamw_segment &seg, int64_t begin, int64_t end) {
    if (!seg.param || seg.param_dtype == AN_F32) return adamw_chunk<N, G, float, SUM_SQ>(k, decay, seg, begin, end);
    if (seg.param_dtype == AN_BF16) return adamw_chunk<N, G, __nv_bfloat16, SUM_SQ>(k, decay, seg, begin, end);
    return adamw_chunk<N, G, __half, SUM_SQ>(k, decay, seg, begin, end);
}

/* Chunk c (from 0, of `chunk` elements, a multiple of 8) of seg: the update, and with SUM_SQ this thread's part of
 * the chunk's sum of squares. */
template <int N, bool SUM_SQ>
__device__ __forceinline__ double adamw_segment_chunk(const an_adamw_scalars &k, const an_adamw_segment &seg,
                                                      int64_t c, int64_t chunk) {
    int64_t begin = c * chunk;
    int64_t end = begin + chunk < seg.n ? begin + chunk : seg.n;
    double decay = seg.no_decay ? 1.0 : k.decay;
    if (seg.grad_dtype == AN_F32) return adamw_chunk_param<N, float, SUM_SQ>(k, decay, seg, begin, end);
    if (seg.grad_dtype == AN_BF16) return adamw_chunk_param<N, __nv_bfloat16, SUM_SQ>(k, decay, seg, begin, end);
    return adamw_chunk_param<N, __half, SUM_SQ>(k, decay, seg, begin, end);
}

template <int N>
__global__ void __launch_bounds__(kMultiThreads) adamw_multi_kernel(an_adamw_scalars k, const an_adamw_segment *table,
                                                                    int n) {
    __shared__ an_adamw_segment seg;
    find_segment(table, n, blockIdx.x, &seg);
    adamw_segment_chunk<N, false>(k, seg, (int64_t)blockIdx.x - seg.first_chunk, AN_ADAMW_CHUNK);
}

/* One segment, passed by value (no table to upload while the backward runs); block b does chunk b
 * of `chunk` elements and writes its sum of squares to partial[seg.first_chunk + b]. */
template <int N>
__global__ void __launch_bounds__(kMultiThreads) adamw_side_kernel(an_adamw_scalars k, an_adamw_segment seg,
                                                                   int64_t chunk, double *partial) {
    double acc = block_sum(adamw_segment_chunk<N, true>(k, seg, blockIdx.x, chunk));
    if (threadIdx.x == 0) partial[seg.first_chunk + blockIdx.x] = acc;
}

/* The float64 sum of squares of grad elements [begin, end), this thread's groups in order. */
template <typename G> __device__ __forceinline__ double sum_sq_chunk(const G *grad, int64_t begin, int64_t end) {
    double acc = 0.0;
    bool vec = aligned16(grad);
    for (int64_t i = begin + (int64_t)threadIdx.x * kGroup; i < end; i += (int64_t)blockDim.x * kGroup) {
        if (vec && i + kGroup <= end) {
            float g[kGroup];
            load_n<kGroup>(grad + i, g);
#pragma unroll
            for (int j = 0; j < kGroup; j++) acc = __dadd_rn(acc, __dmul_rn((double)g[j], (double)g[j]));
        } else {
            int64_t stop = i + kGroup < end ? i + kGroup : end;
            for (int64_t e = i; e < stop; e++) {
                double v = (double)an_load(grad[e]);
                acc = __dadd_rn(acc, __dmul_rn(v, v));
            }
        }
    }
    return acc;
}

/* partial[chunk] = the chunk's sum of squares (a fixed tree over the block). */
__global__ void __launch_bounds__(kMultiThreads) sum_squares_multi_kernel(const an_adamw_segment *table, int n,
                                                                          double *partial) {
    __shared__ an_adamw_segment seg;
    find_segment(table, n, blockIdx.x, &seg);
    int64_t begin = ((int64_t)blockIdx.x - seg.first_chunk) * AN_ADAMW_CHUNK;
    int64_t end = begin + AN_ADAMW_CHUNK < seg.n ? begin + AN_ADAMW_CHUNK : seg.n;
    double acc = seg.grad_dtype == AN_F32    ? sum_sq_chunk((const float *)seg.grad, begin, end)
                 : seg.grad_dtype == AN_BF16 ? sum_sq_chunk((const __nv_bfloat16 *)seg.grad, begin, end)
                                             : sum_sq_chunk((const __half *)seg.grad, begin, end);
    acc = block_sum(acc);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

/* out[b] = the sum of partial[b span, min((b + 1) span, count)): thread t adds t, t + blockDim.x,
 * ... of the span in order, then the fixed block tree; one block per span (one block over all of
 * partial when span >= count). */
__global__ void sum_finish_strided_kernel(const double *partial, int64_t count, int64_t span, double *out) {
    const int64_t begin = (int64_t)blockIdx.x * span, end = begin + span < count ? begin + span : count;
    double v = 0.0;
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) v = __dadd_rn(v, partial[i]);
    v = block_sum(v);
    if (threadIdx.x == 0) out[blockIdx.x] = v;
}

/* The partials one finishing block takes in a single level: beyond this the sum runs in two (a
 * block's threads walk 8 partials each; one block over the update in backward's ~870 k chunk
 * partials of the 1.5B model took 0.35 ms, all of it after the backward). */
constexpr int64_t kFinishSpan = 8 * kMaxBlocks;
int64_t finish_spans(int64_t count) { return count > kFinishSpan ? (count + kFinishSpan - 1) / kFinishSpan : 0; }

/* *sum = the sum of partial[0 .. count) (count >= 1), through tmp (finish_spans(count) doubles). */
an_status sum_partials(an_ctx *ctx, cudaStream_t stream, const double *partial, int64_t count, double *tmp,
                       double *sum) {
    if (const int64_t spans = finish_spans(count)) { /* each span's sum in block order, then those sums */
        sum_finish_strided_kernel<<<(unsigned)spans, kMaxBlocks, 0, stream>>>(partial, count, kFinishSpan, tmp);
        AN_CUDA_LAUNCH_CHECK(ctx, "sum_finish_strided_kernel");
        partial = tmp, count = spans;
    }
    sum_finish_strided_kernel<<<1, kMaxBlocks, 0, stream>>>(partial, count, count, sum);
    AN_CUDA_LAUNCH_CHECK(ctx, "sum_finish_strided_kernel");
    return AN_OK;
}

/* The table's segments are in first_chunk order, non-empty, of float dtypes: checked on the host
 * by the caller (src/optim builds it); here only the sizes a launch needs. */
an_status check_table(an_ctx *ctx, const char *what, const an_adamw_segment *table, int n, int64_t n_chunks) {
    AN_CHECK(ctx, n >= 0 && n_chunks >= 0 && (n > 0) == (n_chunks > 0) && (n == 0 || table != nullptr),
             AN_ERR_INTERNAL, "%s: %d segments, %lld chunks", what, n, (long long)n_chunks);
    AN_CHECK(ctx, n_chunks <= INT32_MAX, AN_ERR_INTERNAL, "%s: %lld chunks exceed one grid", what,
             (long long)n_chunks);
    return AN_OK;
}

} // namespace

extern "C" {

an_status an_cuda_adamw_multi(an_ctx *ctx, const an_adamw_scalars *k, const an_adamw_segment *table, int n,
                              int64_t n_chunks) {
    AN_TRY(check_table(ctx, "adamw_multi", table, n, n_chunks));
    if (n == 0) return AN_OK;
    AN_CUDA_STATE(ctx, s);
    adamw_multi_kernel<kUpdateGroup><<<(unsigned)n_chunks, kMultiThreads, 0, s->stream>>>(*k, table, n);
    AN_CUDA_LAUNCH_CHECK(ctx, "adamw_multi_kernel");
    return AN_OK;
}

an_status an_cuda_adamw_side(an_ctx *ctx, const an_adamw_scalars *k, const an_adamw_segment *seg, int64_t chunk,
                             double *partial) {
    AN_CUDA_STATE(ctx, s);
    AN_CHECK(ctx, !s->capturing, AN_ERR_INTERNAL, "adamw_side: not while a graph is captured");
    AN_CHECK(ctx, chunk >= 8 && chunk % 8 == 0 && partial, AN_ERR_INTERNAL,
             "adamw_side: chunks of %lld elements%s", (long long)chunk, partial ? "" : ", no partial sums");
    int64_t chunks = (seg->n + chunk - 1) / chunk;
    AN_CHECK(ctx, seg->n > 0 && chunks <= INT32_MAX && seg->first_chunk >= 0, AN_ERR_INTERNAL,
             "adamw_side: %lld elements from chunk %lld", (long long)seg->n, (long long)seg->first_chunk);
    cudaStream_t side = nullptr;
    AN_CUDA_CHECK(ctx, an_cuda_side_enter(s, &side));
    adamw_side_kernel<kUpdateGroup><<<(unsigned)chunks, kMultiThreads, 0, side>>>(*k, *seg, chunk, partial);
    AN_CUDA_LAUNCH_CHECK(ctx, "adamw_side_kernel");
    return AN_OK;
}

an_status an_cuda_sum_doubles(an_ctx *ctx, const double *partial, int64_t count, double *sum) {
    AN_CUDA_STATE(ctx, s);
    if (count == 0) return an_cuda_memset(ctx, sum, 0, sizeof *sum);
    void *tmp = nullptr;
    if (finish_spans(count)) AN_TRY(an_cuda_scratch(ctx, (size_t)finish_spans(count) * sizeof(double), &tmp));
    return sum_partials(ctx, s->stream, partial, count, (double *)tmp, sum);
}

an_status an_cuda_sum_squares_multi(an_ctx *ctx, const an_adamw_segment *table, int n, int64_t n_chunks,
                                    double *sum) {
    AN_TRY(check_table(ctx, "sum_squares_multi", table, n, n_chunks));
    AN_CUDA_STATE(ctx, s);
    if (n == 0) return an_cuda_memset(ctx, sum, 0, sizeof *sum);
    void *scratch = nullptr;
    AN_TRY(an_cuda_scratch(ctx, (size_t)(n_chunks + finish_spans(n_chunks)) * sizeof(double), &scratch));
    double *partial = (double *)scratch; /* (n_chunks), then the finish's spans */
    sum_squares_multi_kernel<<<(unsigned)n_chunks, kMultiThreads, 0, s->stream>>>(table, n, partial);
    AN_CUDA_LAUNCH_CHECK(ctx, "sum_squares_multi_kernel");
    return sum_partials(ctx, s->stream, partial, n_chunks, partial + n_chunks, sum);
}

} // extern "C"
