/* attention.cu — causal grouped-query attention over packed documents on CUDA, forward and
 * backward (flash-attention style), and decode attention over a key/value cache.
 *
 * bf16/f16 with head_dim 64 or 128 (every DeepSeek-R1-Distill shape) and 16-byte-aligned buffers
 * go to cuDNN's fused flash attention (attention_cudnn.cu) when there are no segments and the
 * state's switch is on (an_cuda_set_attention_cudnn), else to the tensor-core kernels of
 * attention_mma.cu; the kernels here take the rest (f32, which keeps fp32 accuracy, and other
 * head sizes up to 256).
 *
 * Numerics: f32, bf16 and f16 inputs are widened to fp32 in shared memory; scores, the softmax,
 * every product and every gradient are fp32 FFMA on the CUDA cores; each output is rounded once
 * to the dtype and written with =. The
 * forward saves only the per-row logsumexp lse (B, Hq, T) f32; the backward recomputes
 * P = exp(scale * q.k - lse) from it. Nothing of size T x T exists anywhere.
 *
 * Masking (as the CPU op): query i sees key j when j <= i and segments[i] == segments[j] (packed
 * documents are defined by equality of ids, not by contiguity).
 *
 * Tiling: a block of 256 threads takes R rows against C columns (R = C = 64; 32 for head_dim over
 * 128). head_dim is padded with zeros to DP in {32, 64, 128, 256}. Thread t owns tile rows
 * t/16 + 16i and columns t%16 + 16j; tiles sit in shared memory with rows padded by one word, so
 * the reads of a warp fall in distinct banks (or broadcast).
 * - forward: one block per (query tile, query head, batch row); it walks the key blocks up to its
 *   last row with an online softmax (running max and sum per row) and writes out and lse once.
 * - backward, two launches, no atomics (bit-reproducible): the dq kernel (same grid) first sums
 *   delta_i = sum_j P_ij dP_ij with dP = dO V^T over the key blocks (stored for the dkv kernel),
 *   then, when dQ is wanted, walks them again: dS = scale P (dP - delta), dQ = dS K. The dkv
 *   kernel, one block per (key tile, kv head, batch row), walks the group's query heads in order
 *   and their query tiles from the key tile on: dV += P^T dO, dK += dS^T Q in registers, written
 *   once, so dK and dV are summed over the query heads of the group in a fixed order.
 * A key block (or query tile) none of whose pairs is visible is skipped before its K and V (Q and
 * dO) are loaded, so packed short documents cost little more than the documents themselves.
 * Cost per (batch row, query head), with E = T^2/2 visible pairs: forward 2 E D multiply-adds
 * (QK^T, PV), backward 9 E D (dq kernel: QK^T and dO V^T twice, dS K; dkv kernel: QK^T, dO V^T,
 * P^T dO, dS^T Q) — two more than flash-attention 2, the price of saving only lse (no output).
 * Measured on this path before attention_mma.cu took bf16 (H100, B 1, T 2048, Hq 16, Hkv 4,
 * D 128, causal): forward 2.1 ms (8 TFLOP/s of useful work), backward 9.0 ms.
 *
 * Decode: one block of 16 warps per (query token, query head); warp w takes visible keys in
 * chunks of KB (8 or 4 by the launcher's rule: keys KB w .. KB w + KB - 1, then 16 KB further on,
 * ...), loading a chunk's K and V rows together
 * (one memory latency per chunk, not per key), a warp-wide dot product per key and its own online
 * softmax; the 16 partial results are merged in warp order. (Before the chunks: 8 warps, one key
 * at a time, 16 us per layer at batch 1 and 256 keys on an H200.) The (row, length) table is read from the device (the KV cache keeps
 * it there), so a decode step neither uploads nor synchronises and can be captured in a CUDA graph.
 * It launches with Programmatic Dependent Launch (kernels/pdl.cuh) and waits before reading.
 * bf16/f16 at head_dim 128 with 2 to 8 query heads a kv head first go to the grouped kernel of
 * decode_attention.cu (each K/V row read once per kv head, a half-warp per key: 4-step reductions
 * shared by both halves of a warp). An earlier grouped variant with a whole warp per key (six
 * 5-step reductions a key in one warp's chain) measured slower than this kernel on an H200
 * (batch 1: 15.2 vs 10.4 us, batch 32: 38.5 vs 23 us, 256 keys). */
#include "kernels/attention_mma.cuh" /* the tensor-core path for bf16/f16, head_dim 64 and 128 */
#include "kernels/attention_cudnn.cuh" /* cuDNN's fused flash attention for those without segments */
#include "kernels/attention_wgmma.cuh" /* the Hopper backward for head_dim 128 without segments */
#include "kernels/block_reduce.cuh" /* an_lanes_sum, an_lanes_max */
#include "kernels/cuda_common.cuh"
#include "kernels/decode_attention.cuh" /* the grouped-query decode kernel, tried first */
#include "kernels/pdl.cuh"           /* the decode kernel launches with Programmatic Dependent Launch */
#include "kernels/vec.cuh"           /* an_aligned16 */

#include <math.h>
#include <stdint.h>

#include <type_traits> /* std::integral_constant: by_padded_dim */

namespace {

const int kThreads = 256;    /* 16 row groups x 16 column groups */
const int kMaxHeadDim = 256;

/* Tile geometry for head_dim padded to DP. */
template <int DP> struct Geo {
    static constexpr int R = DP > 128 ? 32 : 64; /* tile rows: queries (keys in the dkv kernel) */
    static constexpr int C = R;                  /* tile columns: keys (queries in the dkv kernel) */
    static constexpr int RM = R / 16;            /* tile rows per thread */
    static constexpr int CN = C / 16;            /* tile columns per thread */
    static constexpr int DN = DP / 16;           /* head-dim columns per thread */
    static constexpr int LD = DP + 1;            /* row stride of (rows, DP) tiles in shared memory */
    static constexpr int LC = C + 1;             /* row stride of (rows, C) tiles */
    /* Dynamic shared memory of each kernel (the int64 segment ids land 8-byte aligned: every
     * float count before them is even). */
    static constexpr size_t forward_bytes =
        sizeof(float) * ((size_t)R * LD + 2 * (size_t)C * LD + (size_t)R * LC) + sizeof(long long) * (R + C);
    static constexpr size_t dq_bytes =
        sizeof(float) * (2 * (size_t)R * LD + 2 * (size_t)C * LD + (size_t)R * LC) + sizeof(long long) * (R + C);
    static constexpr size_t dkv_bytes = sizeof(float) * (2 * (size_t)R * LD + 2 * (size_t)C * LD +
                                                         2 * (size_t)R * LC + 2 * (size_t)C) +
                                        sizeof(long long) * (R + C);
};

/* Segment ids (B, T) of i32 or i64, or none (every token in one document). */
struct Segments {
    const void *p;
    bool wide; /* i64, else i32 */
    __device__ __forceinline__ long long at(int64_t i) const {
        if (!p) return 0;
        return wide ? (long long)((const int64_t *)p)[i] : (long long)((const int32_t *)p)[i];
    }
};

template <typename T> struct Args {
    const T *q, *k, *v;  /* (B, T, Hq, D), (B, T, Hkv, D), (B, T, Hkv, D) */
    const T *dout;       /* (B, T, Hq, D) backward only */
    T *out;              /* (B, T, Hq, D) forward only */
    T *dq, *dk, *dv;     /* backward; any may be null */
    float *lse;          /* (B, Hq, T): written by the forward, read by the backward */
    float *delta;        /* (B, Hq, T): rowsum(P * dP), written by the dq kernel */
    Segments seg;
    int64_t seq;         /* T */
    int Hq, Hkv, D;
    float scale;
};

/* dst (rows, DP), row stride DP + 1, <- tokens [t0, t0 + rows) of head h of x (B, T, H, D) at
 * batch row b, zero past T and past D. */
template <int DP, typename T>
__device__ __forceinline__ void load_tile(float *dst, int rows, const T *x, int64_t b, int64_t t0, int64_t seq, int H,
                                          int h, int D) {
    for (int e = threadIdx.x; e < rows * DP; e += kThreads) {
        int r = e / DP, d = e % DP;
        int64_t t = t0 + r;
        float val = 0.0f;
        if (t < seq && d < D) val = an_load(x[((b * seq + t) * H + h) * (int64_t)D + d]);
        dst[r * (DP + 1) + d] = val;
    }
}

__device__ __forceinline__ void load_segments(long long *dst, int n, const Segments &seg, int64_t b, int64_t t0,
                                              int64_t seq) {
    for (int e = threadIdx.x; e < n; e += kThreads) {
        int64_t t = t0 + e;
        dst[e] = t < seq ? seg.at(b * seq + t) : 0;
    }
}

/* lse or delta of tokens [t0, t0 + n) of one (b, h) row of x (B, Hq, T); 0 past T. */
__device__ __forceinline__ void load_row_stats(float *dst, int n, const float *x, int64_t t0, int64_t seq) {
    for (int e = threadIdx.x; e < n; e += kThreads) {
        int64_t t = t0 + e;
        dst[e] = t < seq ? x[t] : 0.0f;
    }
}

__device__ __forceinline__ bool visible(int64_t i, int64_t j, int64_t seq, long long si, long long sj) {
    return i < seq && j <= i && si == sj;
}

/* Max / sum over the 16 lanes of a row group (every lane gets the same bits). */
__device__ __forceinline__ float group_max(float x) { return an_lanes_max<16>(x); }
__device__ __forceinline__ float group_sum(float x) { return an_lanes_sum<16>(x); }

/* acc[i][j] = sum_d A[(r + 16i) * LD + d] * B[(c + 16j) * LD + d], d < DP (A and B row-major
 * (rows, DP) tiles). */
template <int DP, int NI, int NJ>
__device__ __forceinline__ void dot_tile(float (&acc)[NI][NJ], const float *A, const float *B, int r, int c) {
    const int LD = DP + 1;
#pragma unroll
    for (int i = 0; i < NI; i++)
#pragma unroll
        for (int j = 0; j < NJ; j++) acc[i][j] = 0.0f;
#pragma unroll 8
    for (int d = 0; d < DP; d++) {
        float x[NI], y[NJ];
#pragma unroll
        for (int i = 0; i < NI; i++) x[i] = A[(r + 16 * i) * LD + d];
#pragma unroll
        for (int j = 0; j < NJ; j++) y[j] = B[(c + 16 * j) * LD + d];
#pragma unroll
        for (int i = 0; i < NI; i++)
#pragma unroll
            for (int j = 0; j < NJ; j++) acc[i][j] = fmaf(x[i], y[j], acc[i][j]);
    }
}

/* acc[i][j] += sum_n P[(r + 16i) * LP + n] * X[n * LX + c + 16j], n < N. */
template <int N, int LP, int LX, int NI, int NJ>
__device__ __forceinline__ void mul_acc(float (&acc)[NI][NJ], const float *P, const float *X, int r, int c) {
#pragma unroll 4
    for (int n = 0; n < N; n++) {
        float p[NI], x[NJ];
#pragma unroll
        for (int i = 0; i < NI; i++) p[i] = P[(r + 16 * i) * LP + n];
#pragma unroll
        for (int j = 0; j < NJ; j++) x[j] = X[n * LX + c + 16 * j];
#pragma unroll
        for (int i = 0; i < NI; i++)
#pragma unroll
            for (int j = 0; j < NJ; j++) acc[i][j] = fmaf(p[i], x[j], acc[i][j]);
    }
}

/* Whether any (row, column) pair of the block's tile is visible; rows are tokens row0 + r + 16i
 * with ids srow, columns tokens col0 + c + 16j with ids scol; `rows_are_queries` says which side
 * the queries are on. Every thread gets the block-wide answer. */
template <int NI, int NJ>
__device__ __forceinline__ bool any_visible(bool rows_are_queries, int64_t row0, int64_t col0, int64_t seq,
                                            const long long *srow, const long long *scol, int r, int c) {
    bool any = false;
#pragma unroll
    for (int i = 0; i < NI; i++)
#pragma unroll
        for (int j = 0; j < NJ; j++) {
            int64_t x = row0 + r + 16 * i, y = col0 + c + 16 * j;
            long long sx = srow[r + 16 * i], sy = scol[c + 16 * j];
            any |= rows_are_queries ? visible(x, y, seq, sx, sy) : visible(y, x, seq, sy, sx);
        }
    return __syncthreads_or(any) != 0;
}

/* ---- forward ---- */

template <typename T, int DP> __global__ void __launch_bounds__(kThreads) forward_kernel(Args<T> a) {
    typedef Geo<DP> G;
    extern __shared__ float smem[];
    float *qs = smem;                 /* (R, LD) queries */
    float *ks = qs + G::R * G::LD;    /* (C, LD) keys */
    float *vs = ks + G::C * G::LD;    /* (C, LD) values */
    float *ps = vs + G::C * G::LD;    /* (R, LC) probabilities of the current key block */
    long long *sq = (long long *)(ps + G::R * G::LC), *sk = sq + G::R; /* (R), (C) segment ids */
    const int r = threadIdx.x / 16, c = threadIdx.x % 16;
    const int64_t seq = a.seq, b = blockIdx.z, i0 = (int64_t)blockIdx.x * G::R;
    const int h = blockIdx.y, g = h / (a.Hq / a.Hkv);

    load_tile<DP>(qs, G::R, a.q, b, i0, seq, a.Hq, h, a.D);
    load_segments(sq, G::R, a.seg, b, i0, seq);
    float m_run[G::RM], l_run[G::RM], o[G::RM][G::DN];
#pragma unroll
    for (int i = 0; i < G::RM; i++) {
        m_run[i] = -INFINITY, l_run[i] = 0.0f;
#pragma unroll
        for (int j = 0; j < G::DN; j++) o[i][j] = 0.0f;
    }
    int64_t i_last = (i0 + G::R < seq ? i0 + G::R : seq) - 1;
    for (int64_t j0 = 0; j0 <= i_last; j0 += G::C) {
        __syncthreads(); /* the previous block's readers are done with sk, ks, vs, ps */
        load_segments(sk, G::C, a.seg, b, j0, seq);
        __syncthreads();
        if (!any_visible<G::RM, G::CN>(true, i0, j0, seq, sq, sk, r, c)) continue;
        load_tile<DP>(ks, G::C, a.k, b, j0, seq, a.Hkv, g, a.D);
        load_tile<DP>(vs, G::C, a.v, b, j0, seq, a.Hkv, g, a.D);
        __syncthreads();
        float s[G::RM][G::CN];
        dot_tile<DP>(s, qs, ks, r, c);
#pragma unroll
        for (int i = 0; i < G::RM; i++) {
            float mx = -INFINITY;
#pragma unroll
            for (int j = 0; j < G::CN; j++) {
                bool vis = visible(i0 + r + 16 * i, j0 + c + 16 * j, seq, sq[r + 16 * i], sk[c + 16 * j]);
                s[i][j] = vis ? s[i][j] * a.scale : -INFINITY;
                mx = fmaxf(mx, s[i][j]);
            }
            mx = group_max(mx);
            float m_new = fmaxf(m_run[i], mx);
            float m_use = m_new == -INFINITY ? 0.0f : m_new; /* a row with nothing visible yet */
            float alpha = expf(m_run[i] - m_use), sum = 0.0f;
#pragma unroll
            for (int j = 0; j < G::CN; j++) {
                float p = expf(s[i][j] - m_use);
                ps[(r + 16 * i) * G::LC + c + 16 * j] = p;
                sum += p;
            }
            l_run[i] = l_run[i] * alpha + group_sum(sum);
            m_run[i] = m_new;
#pragma unroll
            for (int j = 0; j < G::DN; j++) o[i][j] *= alpha;
        }
        __syncthreads();
        mul_acc<G::C, G::LC, G::LD>(o, ps, vs, r, c);
    }
#pragma unroll
    for (int i = 0; i < G::RM; i++) {
        int64_t row = i0 + r + 16 * i;
        if (row >= seq) continue;
        T *dst = a.out + ((b * seq + row) * a.Hq + h) * (int64_t)a.D;
#pragma unroll
        for (int j = 0; j < G::DN; j++) {
            int d = c + 16 * j;
            if (d < a.D) dst[d] = an_store<T>(o[i][j] / l_run[i]);
        }
        if (c == 0) a.lse[(b * a.Hq + h) * seq + row] = m_run[i] + logf(l_run[i]);
    }
}

/* ---- backward: delta and dQ ---- */

template <typename T, int DP> __global__ void __launch_bounds__(kThreads) dq_kernel(Args<T> a) {
    typedef Geo<DP> G;
    extern __shared__ float smem[];
    float *qs = smem;                 /* (R, LD) queries */
    float *dos = qs + G::R * G::LD;   /* (R, LD) output gradients */
    float *ks = dos + G::R * G::LD;   /* (C, LD) keys */
    float *vs = ks + G::C * G::LD;    /* (C, LD) values */
    float *dss = vs + G::C * G::LD;   /* (R, LC) dS of the current key block */
    long long *sq = (long long *)(dss + G::R * G::LC), *sk = sq + G::R;
    const int r = threadIdx.x / 16, c = threadIdx.x % 16;
    const int64_t seq = a.seq, b = blockIdx.z, i0 = (int64_t)blockIdx.x * G::R;
    const int h = blockIdx.y, g = h / (a.Hq / a.Hkv);
    const float *lse_bh = a.lse + (b * a.Hq + h) * seq; /* (T) */

    load_tile<DP>(qs, G::R, a.q, b, i0, seq, a.Hq, h, a.D);
    load_tile<DP>(dos, G::R, a.dout, b, i0, seq, a.Hq, h, a.D);
    load_segments(sq, G::R, a.seg, b, i0, seq);
    float lse[G::RM], delta[G::RM];
#pragma unroll
    for (int i = 0; i < G::RM; i++) {
        int64_t row = i0 + r + 16 * i;
        lse[i] = row < seq ? lse_bh[row] : 0.0f;
        delta[i] = 0.0f;
    }
    int64_t i_last = (i0 + G::R < seq ? i0 + G::R : seq) - 1;
    for (int pass = 0; pass < 2; pass++) {
        float acc[G::RM][G::DN];
#pragma unroll
        for (int i = 0; i < G::RM; i++)
#pragma unroll
            for (int j = 0; j < G::DN; j++) acc[i][j] = 0.0f;
        if (pass == 1) { /* delta is complete: reduce it over the row group and store it */
#pragma unroll
            for (int i = 0; i < G::RM; i++) {
                delta[i] = group_sum(delta[i]);
                int64_t row = i0 + r + 16 * i;
                if (c == 0 && row < seq) a.delta[(b * a.Hq + h) * seq + row] = delta[i];
            }
            if (!a.dq) break;
        }
        for (int64_t j0 = 0; j0 <= i_last; j0 += G::C) {
            __syncthreads();
            load_segments(sk, G::C, a.seg, b, j0, seq);
            __syncthreads();
            if (!any_visible<G::RM, G::CN>(true, i0, j0, seq, sq, sk, r, c)) continue;
            load_tile<DP>(ks, G::C, a.k, b, j0, seq, a.Hkv, g, a.D);
            load_tile<DP>(vs, G::C, a.v, b, j0, seq, a.Hkv, g, a.D);
            __syncthreads();
            float s[G::RM][G::CN], dp[G::RM][G::CN];
            dot_tile<DP>(s, qs, ks, r, c);
            dot_tile<DP>(dp, dos, vs, r, c);
#pragma unroll
            for (int i = 0; i < G::RM; i++)
#pragma unroll
                for (int j = 0; j < G::CN; j++) {
                    bool vis = visible(i0 + r + 16 * i, j0 + c + 16 * j, seq, sq[r + 16 * i], sk[c + 16 * j]);
                    float p = vis ? expf(s[i][j] * a.scale - lse[i]) : 0.0f;
                    if (pass == 0) delta[i] = fmaf(p, dp[i][j], delta[i]);
                    else dss[(r + 16 * i) * G::LC + c + 16 * j] = a.scale * p * (dp[i][j] - delta[i]);
                }
            if (pass == 0) continue;
            __syncthreads();
            mul_acc<G::C, G::LC, G::LD>(acc, dss, ks, r, c);
        }
        if (pass == 1) {
#pragma unroll
            for (int i = 0; i < G::RM; i++) {
                int64_t row = i0 + r + 16 * i;
                if (row >= seq) continue;
                T *dst = a.dq + ((b * seq + row) * a.Hq + h) * (int64_t)a.D;
#pragma unroll
                for (int j = 0; j < G::DN; j++) {
                    int d = c + 16 * j;
                    if (d < a.D) dst[d] = an_store<T>(acc[i][j]);
                }
            }
        }
    }
}

/* ---- backward: dK and dV ---- */

template <typename T, int DP> __global__ void __launch_bounds__(kThreads) dkv_kernel(Args<T> a) {
    typedef Geo<DP> G;
    extern __shared__ float smem[];
    float *ks = smem;                 /* (R, LD) keys of this tile */
    float *vs = ks + G::R * G::LD;    /* (R, LD) values */
    float *qs = vs + G::R * G::LD;    /* (C, LD) queries of the current tile */
    float *dos = qs + G::C * G::LD;   /* (C, LD) their output gradients */
    float *pt = dos + G::C * G::LD;   /* (R, LC) P^T */
    float *dst = pt + G::R * G::LC;   /* (R, LC) dS^T */
    long long *sk = (long long *)(dst + G::R * G::LC), *sq = sk + G::R;
    float *lse_s = (float *)(sq + G::C), *delta_s = lse_s + G::C; /* (C) each */
    const int r = threadIdx.x / 16, c = threadIdx.x % 16;
    const int64_t seq = a.seq, b = blockIdx.z, j0 = (int64_t)blockIdx.x * G::R;
    const int g = blockIdx.y, group = a.Hq / a.Hkv;
    const bool need_dk = a.dk != nullptr, need_dv = a.dv != nullptr;

    load_tile<DP>(ks, G::R, a.k, b, j0, seq, a.Hkv, g, a.D);
    load_tile<DP>(vs, G::R, a.v, b, j0, seq, a.Hkv, g, a.D);
    load_segments(sk, G::R, a.seg, b, j0, seq);
    float dk[G::RM][G::DN], dv[G::RM][G::DN];
#pragma unroll
    for (int i = 0; i < G::RM; i++)
#pragma unroll
        for (int j = 0; j < G::DN; j++) dk[i][j] = dv[i][j] = 0.0f;
    for (int h = g * group; h < (g + 1) * group; h++) {
        const float *lse_bh = a.lse + (b * a.Hq + h) * seq, *delta_bh = a.delta + (b * a.Hq + h) * seq;
        for (int64_t i0 = (j0 / G::C) * G::C; i0 < seq; i0 += G::C) {
            __syncthreads();
            load_segments(sq, G::C, a.seg, b, i0, seq);
            load_row_stats(lse_s, G::C, lse_bh, i0, seq);
            if (need_dk) load_row_stats(delta_s, G::C, delta_bh, i0, seq);
            __syncthreads();
            if (!any_visible<G::RM, G::CN>(false, j0, i0, seq, sk, sq, r, c)) continue;
            load_tile<DP>(qs, G::C, a.q, b, i0, seq, a.Hq, h, a.D);
            load_tile<DP>(dos, G::C, a.dout, b, i0, seq, a.Hq, h, a.D);
            __syncthreads();
            float s[G::RM][G::CN], dp[G::RM][G::CN];
            dot_tile<DP>(s, ks, qs, r, c);
            if (need_dk) dot_tile<DP>(dp, vs, dos, r, c);
#pragma unroll
            for (int i = 0; i < G::RM; i++)
#pragma unroll
                for (int j = 0; j < G::CN; j++) {
                    int col = c + 16 * j;
                    bool vis = visible(i0 + col, j0 + r + 16 * i, seq, sq[col], sk[r + 16 * i]);
                    float p = vis ? expf(s[i][j] * a.scale - lse_s[col]) : 0.0f;
                    pt[(r + 16 * i) * G::LC + col] = p;
                    if (need_dk) dst[(r + 16 * i) * G::LC + col] = a.scale * p * (dp[i][j] - delta_s[col]);
                }
            __syncthreads();
            if (need_dv) mul_acc<G::C, G::LC, G::LD>(dv, pt, dos, r, c);
            if (need_dk) mul_acc<G::C, G::LC, G::LD>(dk, dst, qs, r, c);
        }
    }
#pragma unroll
    for (int i = 0; i < G::RM; i++) {
        int64_t row = j0 + r + 16 * i;
        if (row >= seq) continue;
        int64_t at = ((b * seq + row) * a.Hkv + g) * (int64_t)a.D;
#pragma unroll
        for (int j = 0; j < G::DN; j++) {
            int d = c + 16 * j;
            if (d >= a.D) continue;
            if (need_dk) a.dk[at + d] = an_store<T>(dk[i][j]);
            if (need_dv) a.dv[at + d] = an_store<T>(dv[i][j]);
        }
    }
}

/* ---- decode ---- */

const int kDecodeWarps = 16;

template <typename T> struct DecodeArgs {
    const T *q;                /* (B', T, Hq, D) */
    const T *k, *v;            /* (Bc, S, Hkv, D) */
    T *out;                    /* (B', T, Hq, D) */
    const int64_t *rows;       /* (B') on the device: cache row of each batch entry */
    const int64_t *lengths;    /* (Bc) on the device: keys each cache row held before these T tokens */
    int64_t seq, cache_len;    /* T, S */
    int64_t cache_rows;        /* Bc */
    int Hq, Hkv, D;
    float scale;
};

template <typename T, int DP, int KB>
__global__ void __launch_bounds__(kDecodeWarps * 32) decode_kernel(DecodeArgs<T> a) {
    const int DW = DP / 32; /* head-dim elements per lane: d = lane + 32k */
    __shared__ float m_s[kDecodeWarps], l_s[kDecodeWarps];
    __shared__ float o_s[kDecodeWarps][DP];
    an_pdl_wait(); /* q, the cache and its lengths come from the kernels before */
    an_pdl_trigger();
    const int64_t row = blockIdx.x, b = row / a.seq, t = row % a.seq; /* row = b * T + t */
    const int h = blockIdx.y, g = h / (a.Hq / a.Hkv), lane = threadIdx.x % 32, w = threadIdx.x / 32;
    const int64_t cache_row = a.rows[b];
    T *dst = a.out + (row * a.Hq + h) * (int64_t)a.D;
    if (cache_row < 0 || cache_row >= a.cache_rows) { /* the op validated rows: never taken, but never read out of bounds */
        for (int d = threadIdx.x; d < a.D; d += kDecodeWarps * 32) dst[d] = an_store<T>(0.0f);
        return;
    }
    int64_t visible_keys = a.lengths[cache_row] + t + 1;
    if (visible_keys > a.cache_len) visible_keys = a.cache_len;
    const int64_t key_stride = (int64_t)a.Hkv * a.D;
    const T *qr = a.q + (row * a.Hq + h) * (int64_t)a.D;
    const T *kc = a.k + cache_row * a.cache_len * key_stride + (int64_t)g * a.D;
    const T *vc = a.v + cache_row * a.cache_len * key_stride + (int64_t)g * a.D;
    float qv[DW], o[DW];
#pragma unroll
    for (int k = 0; k < DW; k++) {
        int d = lane + 32 * k;
        qv[k] = d < a.D ? an_load(qr[d]) : 0.0f;
        o[k] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    /* KB keys per warp per pass, their K and V rows loaded together: the loads of a pass
     * are independent, so a pass costs about one memory latency rather than one per key */
    for (int64_t j0 = (int64_t)w * KB; j0 < visible_keys; j0 += (int64_t)kDecodeWarps * KB) {
        float kv[KB][DW], vv[KB][DW], s[KB];
#pragma unroll
        for (int i = 0; i < KB; i++) {
            const bool in = j0 + i < visible_keys;
            const T *kr = kc + (j0 + i) * key_stride, *vr = vc + (j0 + i) * key_stride;
#pragma unroll
            for (int k = 0; k < DW; k++) {
                int d = lane + 32 * k;
                kv[i][k] = in && d < a.D ? an_load(kr[d]) : 0.0f;
                vv[i][k] = in && d < a.D ? an_load(vr[d]) : 0.0f;
            }
        }
        float m_new = m;
#pragma unroll
        for (int i = 0; i < KB; i++) {
            float dot = 0.0f;
#pragma unroll
            for (int k = 0; k < DW; k++) dot = fmaf(qv[k], kv[i][k], dot);
            s[i] = j0 + i < visible_keys ? an_lanes_sum<32>(dot) * a.scale : -INFINITY;
            m_new = fmaxf(m_new, s[i]);
        }
        const float alpha = expf(m - m_new); /* m_new is finite: key j0 is visible */
        l *= alpha;
#pragma unroll
        for (int k = 0; k < DW; k++) o[k] *= alpha;
#pragma unroll
        for (int i = 0; i < KB; i++) {
            const float p = expf(s[i] - m_new); /* 0 for a key past the visible ones */
            l += p;
#pragma unroll
            for (int k = 0; k < DW; k++) o[k] = fmaf(p, vv[i][k], o[k]);
        }
        m = m_new;
    }
    if (lane == 0) m_s[w] = m, l_s[w] = l;
#pragma unroll
    for (int k = 0; k < DW; k++) o_s[w][lane + 32 * k] = o[k];
    __syncthreads();
    float mx = -INFINITY;
#pragma unroll
    for (int x = 0; x < kDecodeWarps; x++) mx = fmaxf(mx, m_s[x]);
    for (int d = threadIdx.x; d < a.D; d += kDecodeWarps * 32) {
        float sum = 0.0f, acc = 0.0f;
        for (int x = 0; x < kDecodeWarps; x++) { /* warp order: a fixed merge */
            if (m_s[x] == -INFINITY) continue;   /* a warp that saw no key */
            float f = expf(m_s[x] - mx);
            sum += l_s[x] * f;
            acc += o_s[x][d] * f;
        }
        dst[d] = an_store<T>(acc / sum);
    }
}

/* ---- launchers ---- */

int padded_dim(int64_t D) { return D <= 32 ? 32 : D <= 64 ? 64 : D <= 128 ? 128 : 256; }

/* run(std::integral_constant<int, DP>) for head_dim's padded dim DP (32, 64, 128 or 256). */
template <typename F> an_status by_padded_dim(int64_t D, F &&run) {
    switch (padded_dim(D)) {
    case 32: return run(std::integral_constant<int, 32>());
    case 64: return run(std::integral_constant<int, 64>());
    case 128: return run(std::integral_constant<int, 128>());
    default: return run(std::integral_constant<int, 256>());
    }
}

an_status check_shape(an_ctx *ctx, const an_attention_shape *sh, const char *what) {
    AN_CHECK(ctx, sh->batch >= 0 && sh->seq >= 0 && sh->kv_heads > 0 && sh->q_heads % sh->kv_heads == 0,
             AN_ERR_INTERNAL, "%s: bad shape B %lld T %lld Hq %lld Hkv %lld", what, (long long)sh->batch,
             (long long)sh->seq, (long long)sh->q_heads, (long long)sh->kv_heads);
    AN_CHECK(ctx, sh->head_dim >= 1 && sh->head_dim <= kMaxHeadDim, AN_ERR_INPUT,
             "%s: head_dim %lld has no CUDA kernel (1 to %d)", what, (long long)sh->head_dim, kMaxHeadDim);
    AN_CHECK(ctx, sh->q_heads <= 65535 && sh->batch <= 65535, AN_ERR_INPUT,
             "%s: %lld query heads or batch %lld exceed the CUDA grid (65535)", what, (long long)sh->q_heads,
             (long long)sh->batch);
    return AN_OK;
}

/* Launches kernel on a (tiles, heads, batch) grid with `bytes` of dynamic shared memory. */
template <typename K, typename A>
an_status launch(an_ctx *ctx, K kernel, dim3 grid, size_t bytes, const A &args, const char *what) {
    AN_CUDA_STATE(ctx, s);
    int optin = 0;
    AN_CUDA_CHECK(ctx, cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, s->device));
    AN_CHECK(ctx, bytes <= (size_t)optin, AN_ERR_INPUT, "%s: needs %zu bytes of shared memory per block; device %d allows %d",
             what, bytes, s->device, optin);
    AN_CUDA_CHECK(ctx, cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
    kernel<<<grid, kThreads, bytes, s->stream>>>(args);
    AN_CUDA_LAUNCH_CHECK(ctx, what);
    return AN_OK;
}

template <int DP> dim3 grid_of(const an_attention_shape *sh, int64_t heads) {
    return dim3((unsigned)((sh->seq + Geo<DP>::R - 1) / Geo<DP>::R), (unsigned)heads, (unsigned)sh->batch);
}

template <typename T, int DP> an_status forward_dp(an_ctx *ctx, const an_attention_shape *sh, const Args<T> &a) {
    return launch(ctx, forward_kernel<T, DP>, grid_of<DP>(sh, sh->q_heads), Geo<DP>::forward_bytes, a,
                  "attention forward_kernel");
}

template <typename T, int DP> an_status backward_dp(an_ctx *ctx, const an_attention_shape *sh, const Args<T> &a) {
    if (a.dq || a.dk)
        AN_TRY(launch(ctx, dq_kernel<T, DP>, grid_of<DP>(sh, sh->q_heads), Geo<DP>::dq_bytes, a,
                      "attention dq_kernel"));
    if (a.dk || a.dv)
        AN_TRY(launch(ctx, dkv_kernel<T, DP>, grid_of<DP>(sh, sh->kv_heads), Geo<DP>::dkv_bytes, a,
                      "attention dkv_kernel"));
    return AN_OK;
}

template <typename T> an_status forward(an_ctx *ctx, const an_attention_shape *sh, const Args<T> &a) {
    return by_padded_dim(sh->head_dim, [&](auto dp) { return forward_dp<T, decltype(dp)::value>(ctx, sh, a); });
}

template <typename T> an_status backward(an_ctx *ctx, const an_attention_shape *sh, const Args<T> &a) {
    return by_padded_dim(sh->head_dim, [&](auto dp) { return backward_dp<T, decltype(dp)::value>(ctx, sh, a); });
}

template <typename T, int DP> an_status decode_dp(an_ctx *ctx, const an_attention_shape *sh, const DecodeArgs<T> &a) {
    AN_CUDA_STATE(ctx, s);
    dim3 grid((unsigned)(sh->batch * sh->seq), (unsigned)sh->q_heads);
    /* keys per warp per pass: 8 (more loads in flight) when the blocks are too few to fill the GPU
     * twice, else 4 (fewer registers, more blocks resident); 4 always for head_dim > 128. Measured
     * on an H200, 256 keys: batch 1 (12 blocks) 10.4 vs 12.1 us, batch 32 (384 blocks) 30 vs 24 us. */
    bool few = (int64_t)grid.x * grid.y < 2LL * s->sm_count;
    cudaError_t err = DP <= 128 && few
                          ? an_launch_pdl(s, decode_kernel<T, DP, 8>, grid, dim3(kDecodeWarps * 32), a)
                          : an_launch_pdl(s, decode_kernel<T, DP, 4>, grid, dim3(kDecodeWarps * 32), a);
    AN_CHECK(ctx, err == cudaSuccess, AN_ERR_INTERNAL, "launch of attention decode_kernel failed: %s",
             cudaGetErrorString(err));
    AN_CUDA_LAUNCH_CHECK(ctx, "attention decode_kernel");
    return AN_OK;
}

template <typename T> an_status decode(an_ctx *ctx, const an_attention_shape *sh, const DecodeArgs<T> &a) {
    return by_padded_dim(sh->head_dim, [&](auto dp) { return decode_dp<T, decltype(dp)::value>(ctx, sh, a); });
}

an_status segments_of(an_ctx *ctx, const void *segments, an_dtype seg_dtype, Segments *out) {
    AN_CHECK(ctx, !segments || seg_dtype == AN_I32 || seg_dtype == AN_I64, AN_ERR_INPUT,
             "attention: segments are %s; i32 or i64 expected", an_dtype_name(seg_dtype));
    *out = Segments{segments, seg_dtype == AN_I64};
    return AN_OK;
}

template <typename T>
Args<T> make_args(const an_attention_shape *sh, const void *q, const void *k, const void *v, Segments seg) {
    Args<T> a = {};
    a.q = (const T *)q, a.k = (const T *)k, a.v = (const T *)v;
    a.seg = seg;
    a.seq = sh->seq, a.Hq = (int)sh->q_heads, a.Hkv = (int)sh->kv_heads, a.D = (int)sh->head_dim;
    a.scale = (float)sh->scale;
    return a;
}

/* Whether this call goes to cuDNN (attention_cudnn.cuh): switch on, no segments, a cuDNN dtype
 * and head_dim, every buffer 16-byte aligned. By shape and switch, never by failure. */
bool cudnn_takes(an_ctx *ctx, an_dtype dtype, int64_t head_dim, const void *segments, const void *const *bufs, int n) {
    return ctx->cuda && !ctx->cuda->attention_cudnn_off && !segments && an_attention_cudnn_takes(dtype, head_dim) &&
           an_attention_mma_aligned(bufs, n);
}

} // namespace

extern "C" {

bool an_cuda_attention_uses_tensor_cores(an_dtype dtype, int64_t head_dim) {
    return an_attention_mma_takes(dtype, head_dim);
}

an_status an_cuda_attention(an_ctx *ctx, const an_attention_shape *sh, an_dtype dtype, const void *q, const void *k,
                            const void *v, const void *segments, an_dtype seg_dtype, void *out, float *lse) {
    AN_TRY(check_shape(ctx, sh, "attention"));
    Segments seg = {nullptr, false};
    AN_TRY(segments_of(ctx, segments, seg_dtype, &seg));
    if (sh->batch == 0 || sh->seq == 0) return AN_OK;
    const void *bufs[] = {q, k, v, out, lse};
    if (cudnn_takes(ctx, dtype, sh->head_dim, segments, bufs, 5))
        return an_attention_cudnn_forward(ctx, sh, dtype, q, k, v, out, lse);
    if (an_attention_mma_takes(dtype, sh->head_dim) && an_attention_mma_aligned(bufs, 4))
        return an_attention_mma_forward(ctx, sh, dtype, q, k, v, segments, seg.wide, out, lse);
    AN_CUDA_DISPATCH_FLOAT(ctx, dtype, "attention", {
        Args<T> a = make_args<T>(sh, q, k, v, seg);
        a.out = (T *)out;
        a.lse = lse;
        return forward<T>(ctx, sh, a);
    });
    return AN_OK;
}

an_status an_cuda_attention_backward(an_ctx *ctx, const an_attention_shape *sh, an_dtype dtype, const void *q,
                                     const void *k, const void *v, const void *segments, an_dtype seg_dtype,
                                     const void *out, const float *lse, const void *grad_out, void *grad_q,
                                     void *grad_k, void *grad_v) {
    bool turned;
    return an_cuda_attention_backward_turning(ctx, sh, dtype, q, k, v, segments, seg_dtype, out, lse, grad_out, grad_q,
                                              grad_k, grad_v, NULL, &turned);
}

an_status an_cuda_attention_backward_turning(an_ctx *ctx, const an_attention_shape *sh, an_dtype dtype, const void *q,
                                             const void *k, const void *v, const void *segments, an_dtype seg_dtype,
                                             const void *out, const float *lse, const void *grad_out, void *grad_q,
                                             void *grad_k, void *grad_v, const float *rope_table, bool *turned) {
    *turned = false;
    AN_TRY(check_shape(ctx, sh, "attention backward"));
    if (ctx->cuda->attention_turn_off) rope_table = nullptr;
    Segments seg = {nullptr, false};
    AN_TRY(segments_of(ctx, segments, seg_dtype, &seg));
    AN_CHECK(ctx, out != nullptr || !an_attention_mma_takes(dtype, sh->head_dim), AN_ERR_INTERNAL,
             "attention backward: the tensor-core path needs the forward's output");
    if (sh->batch == 0 || sh->seq == 0 || (!grad_q && !grad_k && !grad_v)) return AN_OK;
    void *delta = nullptr;
    const void *bufs[] = {q, k, v, out, grad_out, grad_q, grad_k, grad_v, lse};
    const size_t delta_bytes = (size_t)(sh->batch * sh->q_heads * sh->seq) * sizeof(float); /* (B, Hq, T) f32 */
    if (an_attention_wgmma_takes(ctx, sh, dtype, segments, bufs, 9) && (!rope_table || an_aligned16(rope_table))) {
        AN_TRY(an_cuda_scratch(ctx, delta_bytes, &delta));
        AN_TRY(an_attention_wgmma_backward(ctx, sh, dtype, q, k, v, out, lse, grad_out, (float *)delta, grad_q, grad_k,
                                           grad_v, rope_table));
        *turned = rope_table != NULL;
        return AN_OK;
    }
    if (cudnn_takes(ctx, dtype, sh->head_dim, segments, bufs, 9))
        return an_attention_cudnn_backward(ctx, sh, dtype, q, k, v, out, lse, grad_out, grad_q, grad_k, grad_v);
    if (an_attention_mma_takes(dtype, sh->head_dim) && an_attention_mma_aligned(bufs, 8)) {
        AN_TRY(an_cuda_scratch(ctx, delta_bytes, &delta));
        return an_attention_mma_backward(ctx, sh, dtype, q, k, v, segments, seg.wide, out, lse, grad_out,
                                         (float *)delta, grad_q, grad_k, grad_v);
    }
    if (grad_q || grad_k) AN_TRY(an_cuda_scratch(ctx, delta_bytes, &delta));
    AN_CUDA_DISPATCH_FLOAT(ctx, dtype, "attention backward", {
        Args<T> a = make_args<T>(sh, q, k, v, seg);
        a.dout = (const T *)grad_out;
        a.dq = (T *)grad_q, a.dk = (T *)grad_k, a.dv = (T *)grad_v;
        a.lse = (float *)lse;
        a.delta = (float *)delta;
        return backward<T>(ctx, sh, a);
    });
    return AN_OK;
}

an_status an_cuda_attention_cached(an_ctx *ctx, const an_attention_shape *sh, int64_t cache_len, int64_t cache_rows,
                                   an_dtype dtype, const void *q, const void *k_cache, const void *v_cache,
                                   const int64_t *rows, const int64_t *lengths, void *out) {
    AN_TRY(check_shape(ctx, sh, "attention_cached"));
    AN_CHECK(ctx, sh->batch * sh->seq <= INT32_MAX, AN_ERR_INPUT, "attention_cached: %lld query tokens exceed the CUDA grid",
             (long long)(sh->batch * sh->seq));
    if (sh->batch == 0 || sh->seq == 0) return AN_OK;
    bool grouped = false; /* decode_attention.cuh's rule: bf16/f16, head_dim 128, 2-8 query heads a kv head */
    AN_TRY(an_decode_attention_grouped(ctx, sh, cache_len, cache_rows, dtype, q, k_cache, v_cache, rows, lengths, out,
                                       &grouped));
    if (grouped) return AN_OK;
    AN_CUDA_DISPATCH_FLOAT(ctx, dtype, "attention_cached", {
        DecodeArgs<T> a = {};
        a.q = (const T *)q, a.k = (const T *)k_cache, a.v = (const T *)v_cache, a.out = (T *)out;
        a.rows = rows, a.lengths = lengths;
        a.seq = sh->seq, a.cache_len = cache_len, a.cache_rows = cache_rows;
        a.Hq = (int)sh->q_heads, a.Hkv = (int)sh->kv_heads, a.D = (int)sh->head_dim;
        a.scale = (float)sh->scale;
        return decode<T>(ctx, sh, a);
    });
    return AN_OK;
}

} // extern "C"
