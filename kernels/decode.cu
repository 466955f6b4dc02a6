/* decode.cu — fused kernels of a decode step's cached forward on CUDA (model/model.c's decode
 * rule): fewer, larger launches where the step is a chain of small latency-bound kernels.
 *
 * - an_cuda_rmsnorm_gemv: RMSNorm of the few rows of x fused into up to three projections (q, k,
 *   v and their biases) in one launch. A warp takes one output column, streams its weight row in
 *   16-byte loads that skip L1 (8 a lane in flight at one or two rows) and sums x^2 over the packs
 *   it reads, so rstd needs no block reduction and no barrier before the weight loads. Numerics:
 *   fp32; the norm's scale is factored out of the dot product, y = rstd * sum_k W x w_k + bias
 *   with rstd = 1 / sqrt(sum / K + eps) (fp32 sum of squares over lanes then a fixed butterfly,
 *   the root in fp64 stored as fp32; every warp forms the same rstd in the same order), one
 *   rounding. The normalised x is not rounded to the dtype as an_cuda_rmsnorm would write it, so
 *   outputs can differ from the op-by-op path by that rounding (tests/test_cuda_decode_fused.c).
 * - an_cuda_rmsnorm_swiglu_gemv: the MLP up to down_proj (norm, gate, up, swiglu) in one launch.
 *   A warp takes one output column and streams its gate and up rows together (16-byte loads that
 *   skip L1); it also sums x^2 over the packs it reads, so rstd needs no block reduction: the
 *   norm's scale is applied to the two finished dot products (rstd * sum_k W x w_k), every warp
 *   forming the same rstd in the same order. gate and up are rounded to the dtype as their GEMMs
 *   write them, then an_cuda_swiglu's formula and one rounding.
 * - an_cuda_kv_rope_store: the q/k/v biases added (optional: where the projections came from
 *   GEMMs without them), rope of q (in place) and k at positions lengths[rows[b]] + t, the rotated
 *   k and v written into the cache: what an_cuda_binary's bias add, an_cuda_rope (float64 angle
 *   and sincos, cos/sin rounded to fp32, the rotation in fp32 without fused multiply-adds) and
 *   an_cuda_kv_store do, bit for bit, in one launch of one block per token.
 *   an_cuda_qkv_rope_store does the same from the rows of one q | k | v GEMM output, q rotated
 *   into a tensor of its own.
 * - an_cuda_rmsnorm_qkv_rope: the two above in one launch for a decode step whose q/k/v come from
 *   the norm-GEMV: blocks of 4 rope pairs (the low columns in warps 0-3, the high ones in 4-7)
 *   rotate through shared memory after the dot products and write q in place and k, v into the
 *   cache; the same bits as an_cuda_rmsnorm_gemv then an_cuda_kv_rope_store.
 * All read only device data (no host copy, no sync): capturable in a CUDA graph. All launch with
 * Programmatic Dependent Launch (kernels/pdl.cuh): the GEMVs prefetch their weight rows into L2
 * while the kernel before them finishes, then wait for it before reading x. */
#include "kernels/block_reduce.cuh" /* an_lanes_sum */
#include "kernels/cuda_common.cuh"
#include "kernels/silu.cuh" /* an_silu */
#include "kernels/vec.cuh" /* an_vec_width, an_unpack16, an_load_stream16 */
#include "kernels/pdl.cuh" /* an_launch_pdl: every kernel here waits (an_pdl_wait) before reading activations */
#include "kernels/rope_rotate.cuh" /* an_rope_rotate: rope.cu's rotation */

#include <stdint.h>

#include <type_traits> /* std::integral_constant: by_rows */

namespace {

constexpr int kWarps = 8; /* per block of the GEMV: 8 output columns */

template <typename T> struct NormGemvArgs {
    const T *x;                  /* (M, K) */
    const T *nw;                 /* (K): the RMSNorm weight */
    const T *w0, *w1, *w2;       /* (n_i, K) */
    const T *b0, *b1, *b2;       /* (n_i) or null */
    T *y0, *y1, *y2;             /* (M, n_i) */
    int64_t end0, end1, end2;    /* cumulative column counts: n_0, n_0 + n_1, n_0 + n_1 + n_2 */
    int64_t K;
    int M;
    double eps;
};

/* The inner pass of every norm-GEMV kernel here: a warp streams NW weight rows w[i] (K) against
 * the M rows of x (M, K) times the norm weight nw (K), UNR 16-byte packs of each row in flight a
 * lane, and also sums x^2 over the packs it reads (so rstd needs no block reduction). Lane r < M
 * gets dot[i] = sum_k w[i][k] x[r][k] nw[k] and *ss = sum_k x[r][k]^2, fp32, lanes summed by a
 * fixed butterfly: every warp forms the same *ss in the same order. MR: rows the registers hold
 * (M <= MR <= 8); vec: K a whole number of 16-byte packs and x, nw, w 16-byte aligned. On the
 * vector path the pass's loads of x and nw go out with W's, before any math (they were issued
 * one pack at a time inside the math loop: an L2 round trip each; with the same change in
 * gemv.cu, batch-1 decode 1.710-1.715 -> 1.577-1.582 ms/step on an H100, the same bits). */
template <typename T, int MR, int UNR, bool vec, int NW>
__device__ __forceinline__ void norm_dots(const T *x, const T *nw, const T *const (&w)[NW], int64_t K, int M, int lane,
                                          float (&dot)[NW], float *ss) {
    constexpr int V = vec ? an_vec_width<T>::value : 1;
    const int64_t packs = K / V;
    float acc[NW][MR], sq[MR];
#pragma unroll
    for (int r = 0; r < MR; r++) {
        sq[r] = 0.0f;
#pragma unroll
        for (int i = 0; i < NW; i++) acc[i][r] = 0.0f;
    }
    for (int64_t base = lane; base < packs; base += 32 * UNR) {
        if constexpr (vec) { /* every load of the pass in flight before the math: W, the norm weight and x */
            uint4 wv[NW][UNR], nv[UNR], xv[MR][UNR];
            const uint4 zero = make_uint4(0, 0, 0, 0);
#pragma unroll
            for (int k = 0; k < UNR; k++) {
                const int64_t i = base + k * 32;
                const bool in = i < packs;
#pragma unroll
                for (int j = 0; j < NW; j++)
                    wv[j][k] = in ? an_load_stream16(reinterpret_cast<const uint4 *>(w[j]) + i) : zero;
                nv[k] = in ? __ldg(reinterpret_cast<const uint4 *>(nw) + i) : zero;
#pragma unroll
                for (int r = 0; r < MR; r++)
                    xv[r][k] = in && r < M ? __ldg(reinterpret_cast<const uint4 *>(x + r * K) + i) : zero;
            }
#pragma unroll
            for (int k = 0; k < UNR; k++) {
                if (base + k * 32 >= packs) break;
                float nf[V], wf[NW][V];
                an_unpack16<T>(nv[k], nf);
#pragma unroll
                for (int j = 0; j < NW; j++) an_unpack16<T>(wv[j][k], wf[j]);
#pragma unroll
                for (int r = 0; r < MR; r++) {
                    if (r >= M) break;
                    float xf[V];
                    an_unpack16<T>(xv[r][k], xf);
#pragma unroll
                    for (int j = 0; j < V; j++) {
                        const float xw = xf[j] * nf[j];
                        sq[r] = fmaf(xf[j], xf[j], sq[r]);
#pragma unroll
                        for (int e = 0; e < NW; e++) acc[e][r] = fmaf(wf[e][j], xw, acc[e][r]);
                    }
                }
            }
        } else { /* scalar: one element a load */
            float wf[NW][UNR];
#pragma unroll
            for (int k = 0; k < UNR; k++) { /* every load of W in flight before the math */
                const int64_t i = base + k * 32;
#pragma unroll
                for (int j = 0; j < NW; j++) wf[j][k] = i < packs ? an_load(w[j][i]) : 0.0f;
            }
#pragma unroll
            for (int k = 0; k < UNR; k++) {
                const int64_t i = base + k * 32;
                if (i >= packs) break;
                const float nf = an_load(nw[i]);
#pragma unroll
                for (int r = 0; r < MR; r++) {
                    if (r >= M) break;
                    const float xf = an_load(x[r * K + i]), xw = xf * nf;
                    sq[r] = fmaf(xf, xf, sq[r]);
#pragma unroll
                    for (int e = 0; e < NW; e++) acc[e][r] = fmaf(wf[e][k], xw, acc[e][r]);
                }
            }
        }
    }
    /* lane r keeps row r: selected without dynamic register indexing */
#pragma unroll
    for (int e = 0; e < NW; e++) dot[e] = 0.0f;
    *ss = 0.0f;
#pragma unroll
    for (int r = 0; r < MR; r++) {
        const float s = an_lanes_sum<32>(sq[r]);
        if (r == lane) *ss = s;
#pragma unroll
        for (int e = 0; e < NW; e++) {
            const float d = an_lanes_sum<32>(acc[e][r]);
            if (r == lane) dot[e] = d;
        }
    }
}

/* 1 / sqrt(ss / K + eps): the root in fp64, stored as fp32. */
__device__ __forceinline__ float norm_rstd(float ss, int64_t K, double eps) {
    return (float)(1.0 / sqrt((double)ss / (double)K + eps));
}

/* One output column a warp. */
template <typename T, int MR, int UNR, bool vec>
__global__ void __launch_bounds__(kWarps * 32) norm_gemv_kernel(NormGemvArgs<T> a) {
    const int lane = threadIdx.x % 32;
    const int64_t n = (int64_t)blockIdx.x * kWarps + threadIdx.x / 32;
    const int seg = n < a.end0 ? 0 : n < a.end1 ? 1 : 2;
    const int64_t col = n - (seg == 0 ? 0 : seg == 1 ? a.end0 : a.end1);
    const int64_t N = seg == 0 ? a.end0 : seg == 1 ? a.end1 - a.end0 : a.end2 - a.end1;
    const T *const wr[1] = {(seg == 0 ? a.w0 : seg == 1 ? a.w1 : a.w2) + col * a.K};
    if (n < a.end2) an_prefetch_l2_warp(wr[0], a.K * (int64_t)sizeof(T), lane); /* weights: no wait needed */
    an_pdl_wait();
    an_pdl_trigger();
    if (n >= a.end2) return;
    float v[1], sv;
    norm_dots<T, MR, UNR, vec, 1>(a.x, a.nw, wr, a.K, a.M, lane, v, &sv);
    if (lane >= a.M) return;
    const T *bias = seg == 0 ? a.b0 : seg == 1 ? a.b1 : a.b2;
    T *y = seg == 0 ? a.y0 : seg == 1 ? a.y1 : a.y2;
    y[(int64_t)lane * N + col] = an_store<T>(v[0] * norm_rstd(sv, a.K, a.eps) + (bias ? an_load(bias[col]) : 0.0f));
}

/* launch(std::integral_constant<int, MR>) for the registers' rows MR (1, 2, 4 or 8) that hold M rows. */
template <typename F> cudaError_t by_rows(int64_t M, F &&launch) {
    return M == 1   ? launch(std::integral_constant<int, 1>())
           : M == 2 ? launch(std::integral_constant<int, 2>())
           : M <= 4 ? launch(std::integral_constant<int, 4>())
                    : launch(std::integral_constant<int, 8>());
}

template <typename T, int MR>
cudaError_t norm_gemv_launch(const an_cuda_state *s, unsigned blocks, bool vec, const NormGemvArgs<T> &a) {
    constexpr int UNR = MR <= 2 ? 8 : MR == 4 ? 4 : 2; /* registers: UNR packs of W, one of x per row */
    if (vec) return an_launch_pdl(s, norm_gemv_kernel<T, MR, UNR, true>, dim3(blocks), dim3(kWarps * 32), a);
    return an_launch_pdl(s, norm_gemv_kernel<T, MR, 4, false>, dim3(blocks), dim3(kWarps * 32), a);
}

/* ---- rmsnorm + gate/up + swiglu ---- */

/* per block: 2 outputs, each a warp streaming its gate and up rows. Small blocks (batch-1 decode on
 * an H100, one call: 8 / 4 / 2 warps a block 1.924 / 1.808 / 1.785 ms/step; in another, with the
 * decode attention's early merge loads, 2 / 1 warps 1.744 / 1.743) */
constexpr int kSwigluWarps = 2;

template <typename T> struct NormSwigluArgs {
    const T *x;        /* (M, K) */
    const T *nw;       /* (K): the RMSNorm weight */
    const T *wg, *wu;  /* (N, K): gate_proj, up_proj */
    const T *bg, *bu;  /* (N) or null */
    T *act;            /* (M, N) */
    int64_t K, N;
    int M;
    double eps;
};

/* One output column a warp, its gate and up rows streamed together. */
template <typename T, int MR, int UNR, bool vec>
__global__ void __launch_bounds__(kSwigluWarps * 32) norm_swiglu_kernel(NormSwigluArgs<T> a) {
    const int lane = threadIdx.x % 32;
    const int64_t n = (int64_t)blockIdx.x * kSwigluWarps + threadIdx.x / 32, K = a.K;
    const T *const wr[2] = {a.wg + n * K, a.wu + n * K};
    if (n < a.N) { /* weights: no wait needed */
        an_prefetch_l2_warp(wr[0], K * (int64_t)sizeof(T), lane);
        an_prefetch_l2_warp(wr[1], K * (int64_t)sizeof(T), lane);
    }
    an_pdl_wait(); /* x comes from the kernels before */
    an_pdl_trigger();
    if (n >= a.N) return;
    float gu[2], sv;
    norm_dots<T, MR, UNR, vec, 2>(a.x, a.nw, wr, K, a.M, lane, gu, &sv);
    if (lane >= a.M) return;
    const float rstd = norm_rstd(sv, K, a.eps);
    /* gate and up rounded to the dtype as their projections write them, then swiglu's formula */
    const float gate = an_load(an_store<T>(gu[0] * rstd + (a.bg ? an_load(a.bg[n]) : 0.0f)));
    const float up = an_load(an_store<T>(gu[1] * rstd + (a.bu ? an_load(a.bu[n]) : 0.0f)));
    a.act[(int64_t)lane * a.N + n] = an_store<T>(an_silu(gate) * up);
}

/* ---- rope + cache store ---- */

constexpr int kMaxPairs = AN_CUDA_ROPE_MAX_D / 2;

struct InvFreq {
    double v[kMaxPairs]; /* (D/2) */
};

/* One block per token i = b T + t. */
/* x + bias rounded to the dtype, as an_cuda_binary's add writes it (no bias: x). */
template <typename T> __device__ __forceinline__ float biased(const T *x, const T *bias, int i) {
    return bias ? an_load(an_store<T>(an_load(x[i]) + an_load(bias[i]))) : an_load(x[i]);
}

/* Token i's q at q_src + i q_stride, k and v at k, v + i kv_stride; the rotated q goes to
 * q_dst + i Hq D (q_dst may be q_src when q_stride is Hq D: in place). */
template <typename T>
__global__ void rope_store_kernel(const T *q_src, T *q_dst, const T *k, const T *v, int64_t q_stride, int64_t kv_stride,
                                  const T *bq, const T *bk, const T *bv, T *k_cache, T *v_cache, const int64_t *rows,
                                  const int64_t *lengths, int64_t seq, int Hq, int Hkv, int D, int64_t capacity,
                                  InvFreq inv, bool interleaved) {
    __shared__ float cs[kMaxPairs], sn[kMaxPairs];
    an_pdl_wait();
    an_pdl_trigger();
    const int64_t i = blockIdx.x, b = i / seq, t = i % seq;
    const int64_t row = rows[b], pos = lengths[row] + t;
    const int half = D / 2;
    for (int p = threadIdx.x; p < half; p += blockDim.x) {
        double s, c;
        sincos((double)pos * inv.v[p], &s, &c);
        cs[p] = (float)c;
        sn[p] = 1.0f * (float)s;
    }
    __syncthreads();
    const bool store = pos >= 0 && pos < capacity;
    const T *qr = q_src + i * q_stride;               /* (Hq, D) */
    T *qo = q_dst + i * (int64_t)Hq * D;              /* (Hq, D) */
    const T *kr = k + i * kv_stride;                  /* (Hkv, D) */
    const T *vr = v + i * kv_stride;                  /* (Hkv, D) */
    const int64_t slot = ((store ? row * capacity + pos : 0)) * (int64_t)Hkv * D;
    T *kd = k_cache + slot, *vd = v_cache + slot;     /* (Hkv, D) */
    for (int e = threadIdx.x; e < (Hq + Hkv) * half; e += blockDim.x) {
        const int h = e / half, p = e - h * half;
        const int lo = interleaved ? 2 * p : p, hi = lo + (interleaved ? 1 : half);
        float o1, o2;
        if (h < Hq) {
            const T *x = qr + h * D, *b = bq ? bq + h * D : nullptr;
            an_rope_rotate(biased(x, b, lo), biased(x, b, hi), cs[p], sn[p], &o1, &o2);
            qo[h * D + lo] = an_store<T>(o1); /* in place: this thread alone read these two */
            qo[h * D + hi] = an_store<T>(o2);
        } else if (store) {
            const T *x = kr + (h - Hq) * D, *b = bk ? bk + (h - Hq) * D : nullptr;
            an_rope_rotate(biased(x, b, lo), biased(x, b, hi), cs[p], sn[p], &o1, &o2);
            kd[(h - Hq) * D + lo] = an_store<T>(o1);
            kd[(h - Hq) * D + hi] = an_store<T>(o2);
        }
    }
    if (store)
        for (int e = threadIdx.x; e < Hkv * D; e += blockDim.x) vd[e] = bv ? an_store<T>(biased(vr, bv, e)) : vr[e];
}

/* ---- rmsnorm + q/k/v + bias + rope + cache store ---- */

template <typename T> struct QkvRopeArgs {
    NormGemvArgs<T> g;          /* w0/b0/y0: q; w1/b1: k; w2/b2: v (y1, y2 unused: k and v go to the cache) */
    T *k_cache, *v_cache;       /* (Bc, capacity, Hkv, D) */
    const int64_t *rows;        /* (B'): cache row of each batch entry */
    const int64_t *lengths;     /* (Bc): keys each cache row held before this step */
    int64_t seq, capacity;
    int Hq, Hkv, D;
    int q_blocks, k_blocks;     /* blocks of 4 rope pairs of q, then of k; then blocks of 8 v columns */
    bool interleaved;
    InvFreq inv;
};

/* Blocks of kWarps = 8 warps. A q or k block takes 4 rope pairs: warp w < 4 the low column of pair
 * w, warp w + 4 its high column, so after the dot products the block rotates its pairs through
 * shared memory (rope_store_kernel's arithmetic on the values the GEMV rounded, bit for bit) and
 * writes q in place and k into the cache; a v block takes 8 columns and writes them into the cache. */
template <typename T, int MR, int UNR, bool vec>
__global__ void __launch_bounds__(kWarps * 32) norm_qkv_rope_kernel(QkvRopeArgs<T> a) {
    static_assert(kWarps == 8, "4 pairs a block");
    __shared__ float y_s[kWarps][8]; /* (warp, row): the rounded projections */
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, half = a.D / 2;
    const int64_t blk = blockIdx.x;
    const int seg = blk < a.q_blocks ? 0 : blk < a.q_blocks + a.k_blocks ? 1 : 2;
    const int heads = seg == 0 ? a.Hq : a.Hkv;
    int64_t col, pair = 0;
    bool valid;
    if (seg < 2) { /* pair = head * half + p: columns lo and lo + (interleaved ? 1 : half) of the head */
        pair = (blk - (seg == 0 ? 0 : a.q_blocks)) * 4 + (warp & 3);
        valid = pair < (int64_t)heads * half;
        const int64_t head = pair / half, p = pair % half;
        const int64_t lo = head * a.D + (a.interleaved ? 2 * p : p);
        col = warp < 4 ? lo : lo + (a.interleaved ? 1 : half);
    } else {
        col = (blk - a.q_blocks - a.k_blocks) * kWarps + warp;
        valid = col < (int64_t)heads * a.D;
    }
    const T *const wr[1] = {(seg == 0 ? a.g.w0 : seg == 1 ? a.g.w1 : a.g.w2) + (valid ? col : 0) * a.g.K};
    if (valid) an_prefetch_l2_warp(wr[0], a.g.K * (int64_t)sizeof(T), lane); /* weights: no wait needed */
    /* the row's cache slot and its rope angle before the wait (the step's tables: pdl.cuh's rule),
     * so the dependent loads of the row table and the lengths and the fp64 sincos overlap the
     * kernel before; after the wait (1c77f98) they overlapped the weight stream: batch-1 decode
     * 1.843 -> 1.826 ms/step on an H100 */
    int64_t pos = -1, cache_row = 0;
    double sd = 0.0, cd = 1.0;
    if (valid && lane < a.g.M) {
        cache_row = a.rows[lane / a.seq];
        pos = a.lengths[cache_row] + lane % a.seq;
        if (seg < 2 && warp < 4) sincos((double)pos * a.inv.v[pair % half], &sd, &cd);
    }
    an_pdl_wait();
    an_pdl_trigger();
    float y = 0.0f;
    if (valid) {
        float v[1], sv;
        norm_dots<T, MR, UNR, vec, 1>(a.g.x, a.g.nw, wr, a.g.K, a.g.M, lane, v, &sv);
        const T *bias = seg == 0 ? a.g.b0 : seg == 1 ? a.g.b1 : a.g.b2;
        y = an_load(an_store<T>(v[0] * norm_rstd(sv, a.g.K, a.g.eps) + (bias ? an_load(bias[col]) : 0.0f)));
    }
    /* row r = b T + t of lane r: its cache slot */
    const int r = lane;
    const bool store = pos >= 0 && pos < a.capacity;
    const int64_t slot = (store ? cache_row * a.capacity + pos : 0) * (int64_t)a.Hkv * a.D; /* (Hkv, D) */
    if (seg == 2) {
        if (valid && r < a.g.M && store) a.v_cache[slot + col] = an_store<T>(y);
        return;
    }
    if (r < 8) y_s[warp][r] = y; /* block-uniform segment: every warp of the block reaches the barrier */
    __syncthreads();
    if (warp >= 4 || !valid || r >= a.g.M) return;
    float o1, o2;
    an_rope_rotate(y, y_s[warp + 4][r], (float)cd, 1.0f * (float)sd, &o1, &o2);
    const int64_t hi = col + (a.interleaved ? 1 : half);
    if (seg == 0) {
        T *q = a.g.y0 + (int64_t)r * a.Hq * a.D;
        q[col] = an_store<T>(o1), q[hi] = an_store<T>(o2);
    } else if (store) {
        a.k_cache[slot + col] = an_store<T>(o1), a.k_cache[slot + hi] = an_store<T>(o2);
    }
}

template <typename T, int MR>
cudaError_t norm_qkv_rope_launch(const an_cuda_state *s, unsigned blocks, bool vec, const QkvRopeArgs<T> &a) {
    constexpr int UNR = MR <= 2 ? 8 : MR == 4 ? 4 : 2; /* as norm_gemv_launch */
    if (vec) return an_launch_pdl(s, norm_qkv_rope_kernel<T, MR, UNR, true>, dim3(blocks), dim3(kWarps * 32), a);
    return an_launch_pdl(s, norm_qkv_rope_kernel<T, MR, 4, false>, dim3(blocks), dim3(kWarps * 32), a);
}

} // namespace

extern "C" an_status an_cuda_rmsnorm_gemv(an_ctx *ctx, an_dtype dtype, const void *x, int64_t M, int64_t K,
                                          const void *norm_w, double eps, const an_cuda_proj *proj, int n_proj) {
    AN_CUDA_STATE(ctx, s);
    AN_CHECK(ctx, n_proj >= 1 && n_proj <= 3, AN_ERR_INPUT, "rmsnorm_gemv: %d projections (1 to 3)", n_proj);
    int64_t total = 0;
    for (int i = 0; i < n_proj; i++) {
        AN_CHECK(ctx, proj[i].n >= 1 && proj[i].w && proj[i].y, AN_ERR_INPUT, "rmsnorm_gemv: projection %d is empty", i);
        total += proj[i].n;
    }
    AN_CHECK(ctx, M >= 1 && M <= AN_CUDA_GEMV_MAX_ROWS && K >= 1 && total / kWarps < INT32_MAX, AN_ERR_INPUT,
             "rmsnorm_gemv: %lld rows (at most %d), K %lld, %lld columns", (long long)M, AN_CUDA_GEMV_MAX_ROWS,
             (long long)K, (long long)total);
    AN_CUDA_DISPATCH_FLOAT(ctx, dtype, "rmsnorm_gemv", {
        NormGemvArgs<T> a = {};
        a.x = (const T *)x, a.nw = (const T *)norm_w, a.K = K, a.M = (int)M, a.eps = eps;
        const T *w[3] = {nullptr, nullptr, nullptr}, *bias[3] = {nullptr, nullptr, nullptr};
        T *y[3] = {nullptr, nullptr, nullptr};
        int64_t end[3];
        bool vec = K % an_vec_width<T>::value == 0 && (uintptr_t)x % 16 == 0 && (uintptr_t)norm_w % 16 == 0;
        for (int i = 0; i < 3; i++) {
            if (i < n_proj) {
                w[i] = (const T *)proj[i].w, bias[i] = (const T *)proj[i].bias, y[i] = (T *)proj[i].y;
                vec = vec && (uintptr_t)proj[i].w % 16 == 0;
            }
            end[i] = (i > 0 ? end[i - 1] : 0) + (i < n_proj ? proj[i].n : 0);
        }
        a.w0 = w[0], a.w1 = w[1], a.w2 = w[2], a.b0 = bias[0], a.b1 = bias[1], a.b2 = bias[2];
        a.y0 = y[0], a.y1 = y[1], a.y2 = y[2], a.end0 = end[0], a.end1 = end[1], a.end2 = end[2];
        unsigned blocks = (unsigned)((total + kWarps - 1) / kWarps);
        cudaError_t err = by_rows(M, [&](auto mr) { return norm_gemv_launch<T, decltype(mr)::value>(s, blocks, vec, a); });
        AN_CHECK(ctx, err == cudaSuccess, AN_ERR_INTERNAL, "launch of norm_gemv_kernel failed: %s",
                 cudaGetErrorString(err));
        AN_CUDA_LAUNCH_CHECK(ctx, "norm_gemv_kernel");
    });
    return AN_OK;
}

extern "C" an_status an_cuda_rmsnorm_qkv_rope(an_ctx *ctx, an_dtype dtype, const void *x, int64_t M, int64_t K,
                                               const void *norm_w, double eps, const an_cuda_proj *proj,
                                               const an_cuda_kv_rope *kv) {
    AN_CUDA_STATE(ctx, s);
    const int64_t D = kv->head_dim, Hq = kv->q_heads, Hkv = kv->kv_heads;
    AN_CHECK(ctx, D >= 2 && D % 2 == 0 && D <= AN_CUDA_ROPE_MAX_D, AN_ERR_INPUT,
             "rmsnorm_qkv_rope: head dim D = %lld; the kernel takes even D up to %d", (long long)D, AN_CUDA_ROPE_MAX_D);
    AN_CHECK(ctx, M >= 1 && M <= AN_CUDA_GEMV_MAX_ROWS && K >= 1 && kv->seq >= 1 && M % kv->seq == 0 && Hq >= 1 &&
                      Hkv >= 1 && (Hq + Hkv) * D <= INT32_MAX,
             AN_ERR_INPUT, "rmsnorm_qkv_rope: %lld rows (at most %d, whole steps of %lld), K %lld, %lld + %lld heads",
             (long long)M, AN_CUDA_GEMV_MAX_ROWS, (long long)kv->seq, (long long)K, (long long)Hq, (long long)Hkv);
    AN_CHECK(ctx, proj[0].n == Hq * D && proj[1].n == Hkv * D && proj[2].n == Hkv * D && proj[0].w && proj[1].w &&
                      proj[2].w && proj[0].y,
             AN_ERR_INPUT, "rmsnorm_qkv_rope: projections of %lld, %lld, %lld columns for %lld + %lld heads of %lld",
             (long long)proj[0].n, (long long)proj[1].n, (long long)proj[2].n, (long long)Hq, (long long)Hkv,
             (long long)D);
    AN_CUDA_DISPATCH_FLOAT(ctx, dtype, "rmsnorm_qkv_rope", {
        QkvRopeArgs<T> a = {};
        a.g.x = (const T *)x, a.g.nw = (const T *)norm_w, a.g.K = K, a.g.M = (int)M, a.g.eps = eps;
        a.g.w0 = (const T *)proj[0].w, a.g.w1 = (const T *)proj[1].w, a.g.w2 = (const T *)proj[2].w;
        a.g.b0 = (const T *)proj[0].bias, a.g.b1 = (const T *)proj[1].bias, a.g.b2 = (const T *)proj[2].bias;
        a.g.y0 = (T *)proj[0].y;
        a.k_cache = (T *)kv->k_cache, a.v_cache = (T *)kv->v_cache, a.rows = kv->rows, a.lengths = kv->lengths;
        a.seq = kv->seq, a.capacity = kv->capacity, a.Hq = (int)Hq, a.Hkv = (int)Hkv, a.D = (int)D;
        a.interleaved = kv->interleaved != 0;
        for (int64_t i = 0; i < D / 2; i++) a.inv.v[i] = kv->inv_freq[i];
        a.q_blocks = (int)((Hq * D / 2 + 3) / 4), a.k_blocks = (int)((Hkv * D / 2 + 3) / 4);
        const unsigned blocks = (unsigned)(a.q_blocks + a.k_blocks + (Hkv * D + kWarps - 1) / kWarps);
        bool vec = K % an_vec_width<T>::value == 0 && an_aligned16(x) && an_aligned16(norm_w);
        for (int i = 0; i < 3; i++) vec = vec && an_aligned16(proj[i].w);
        cudaError_t err =
            by_rows(M, [&](auto mr) { return norm_qkv_rope_launch<T, decltype(mr)::value>(s, blocks, vec, a); });
        AN_CHECK(ctx, err == cudaSuccess, AN_ERR_INTERNAL, "launch of norm_qkv_rope_kernel failed: %s",
                 cudaGetErrorString(err));
        AN_CUDA_LAUNCH_CHECK(ctx, "norm_qkv_rope_kernel");
    });
    return AN_OK;
}

/* The launch of both entry points below: rope_store_kernel over B seq tokens. */
static an_status launch_rope_store(an_ctx *ctx, const char *what, an_dtype dtype, const void *q_src, void *q_dst,
                                   const void *k, const void *v, int64_t q_stride, int64_t kv_stride,
                                   const void *q_bias, const void *k_bias, const void *v_bias, void *k_cache,
                                   void *v_cache, const int64_t *rows, const int64_t *lengths, int64_t B, int64_t seq,
                                   int64_t Hq, int64_t Hkv, int64_t D, int64_t capacity, const double *inv_freq,
                                   int interleaved) {
    AN_CUDA_STATE(ctx, s);
    AN_CHECK(ctx, D >= 2 && D % 2 == 0 && D <= AN_CUDA_ROPE_MAX_D, AN_ERR_INPUT,
             "%s: head dim D = %lld; the kernel takes even D up to %d", what, (long long)D, AN_CUDA_ROPE_MAX_D);
    AN_CHECK(ctx, B * seq <= INT32_MAX && Hq >= 1 && Hkv >= 1 && (Hq + Hkv) * D <= INT32_MAX, AN_ERR_INPUT,
             "%s: %lld tokens of %lld + %lld heads", what, (long long)(B * seq), (long long)Hq, (long long)Hkv);
    if (B * seq == 0) return AN_OK;
    InvFreq inv = {};
    for (int64_t i = 0; i < D / 2; i++) inv.v[i] = inv_freq[i];
    AN_CUDA_DISPATCH_FLOAT(ctx, dtype, what, {
        cudaError_t err = an_launch_pdl(s, rope_store_kernel<T>, dim3((unsigned)(B * seq)), dim3(128),
                                        (const T *)q_src, (T *)q_dst, (const T *)k, (const T *)v, q_stride, kv_stride,
                                        (const T *)q_bias, (const T *)k_bias, (const T *)v_bias, (T *)k_cache,
                                        (T *)v_cache, rows, lengths, seq, (int)Hq, (int)Hkv, (int)D, capacity, inv,
                                        interleaved != 0);
        AN_CHECK(ctx, err == cudaSuccess, AN_ERR_INTERNAL, "launch of rope_store_kernel failed: %s",
                 cudaGetErrorString(err));
        AN_CUDA_LAUNCH_CHECK(ctx, "rope_store_kernel");
    });
    return AN_OK;
}

extern "C" an_status an_cuda_kv_rope_store(an_ctx *ctx, an_dtype dtype, void *q, const void *k, const void *v,
                                           const void *q_bias, const void *k_bias, const void *v_bias, void *k_cache,
                                           void *v_cache, const int64_t *rows, const int64_t *lengths,
                                           int64_t B, int64_t seq, int64_t Hq, int64_t Hkv, int64_t D,
                                           int64_t capacity, const double *inv_freq, int interleaved) {
    return launch_rope_store(ctx, "kv_rope_store", dtype, q, q, k, v, Hq * D, Hkv * D, q_bias, k_bias, v_bias, k_cache,
                             v_cache, rows, lengths, B, seq, Hq, Hkv, D, capacity, inv_freq, interleaved);
}

extern "C" an_status an_cuda_qkv_rope_store(an_ctx *ctx, an_dtype dtype, const void *qkv, void *q, const void *q_bias,
                                            const void *k_bias, const void *v_bias, void *k_cache, void *v_cache,
                                            const int64_t *rows, const int64_t *lengths, int64_t B, int64_t seq,
                                            int64_t Hq, int64_t Hkv, int64_t D, int64_t capacity,
                                            const double *inv_freq, int interleaved) {
    const int64_t stride = (Hq + 2 * Hkv) * D;
    const char *base = (const char *)qkv, *k = base + Hq * D * an_dtype_size(dtype);
    const char *v = base + (Hq + Hkv) * D * an_dtype_size(dtype);
    return launch_rope_store(ctx, "qkv_rope_store", dtype, qkv, q, k, v, stride, stride, q_bias, k_bias, v_bias,
                             k_cache, v_cache, rows, lengths, B, seq, Hq, Hkv, D, capacity, inv_freq, interleaved);
}

extern "C" an_status an_cuda_rmsnorm_swiglu_gemv(an_ctx *ctx, an_dtype dtype, const void *x, int64_t M, int64_t K,
                                                 const void *norm_w, double eps, const void *gate_w,
                                                 const void *gate_b, const void *up_w, const void *up_b, int64_t N,
                                                 void *act) {
    AN_CUDA_STATE(ctx, s);
    AN_CHECK(ctx, M >= 1 && M <= AN_CUDA_GEMV_MAX_ROWS && K >= 1 && N >= 1 && N / kSwigluWarps < INT32_MAX,
             AN_ERR_INPUT, "rmsnorm_swiglu_gemv: %lld rows (at most %d), K %lld, N %lld", (long long)M,
             AN_CUDA_GEMV_MAX_ROWS, (long long)K, (long long)N);
    AN_CUDA_DISPATCH_FLOAT(ctx, dtype, "rmsnorm_swiglu_gemv", {
        NormSwigluArgs<T> a = {(const T *)x, (const T *)norm_w, (const T *)gate_w, (const T *)up_w,
                               (const T *)gate_b, (const T *)up_b, (T *)act, K, N, (int)M, eps};
        const bool vec = K % an_vec_width<T>::value == 0 && an_aligned16(x) && an_aligned16(norm_w) &&
                         an_aligned16(gate_w) && an_aligned16(up_w);
        const dim3 grid((unsigned)((N + kSwigluWarps - 1) / kSwigluWarps)), block(kSwigluWarps * 32);
        cudaError_t err;
        if (!vec) err = an_launch_pdl(s, norm_swiglu_kernel<T, 8, 4, false>, grid, block, a);
        /* one row: all 6 packs a lane reads of each weight row in flight at once (UNR 8 against 4: batch-1
         * decode 1.843 -> 1.827 ms/step on an H100); two rows likewise once x's loads went out with W's
         * (UNR 6 against 4: batch-2 decode 1.866 / 1.859 -> 1.845 / 1.843 ms/step on an H100) */
        else if (M == 1) err = an_launch_pdl(s, norm_swiglu_kernel<T, 1, 8, true>, grid, block, a);
        else if (M == 2) err = an_launch_pdl(s, norm_swiglu_kernel<T, 2, 6, true>, grid, block, a);
        else if (M <= 4) err = an_launch_pdl(s, norm_swiglu_kernel<T, 4, 2, true>, grid, block, a);
        else err = an_launch_pdl(s, norm_swiglu_kernel<T, 8, 2, true>, grid, block, a);
        AN_CHECK(ctx, err == cudaSuccess, AN_ERR_INTERNAL, "launch of norm_swiglu_kernel failed: %s",
                 cudaGetErrorString(err));
        AN_CUDA_LAUNCH_CHECK(ctx, "norm_swiglu_kernel");
    });
    return AN_OK;
}
