/* decode.cu — fused kernels of a decode step's cached forward on CUDA (model/model.c's decode
 * rule): fewer, larger launches where the step is a chain of small latency-bound kernels.
 *
 * - an_cuda_rmsnorm_gemv: RMSNorm of the few rows of x fused into up to three projections (q, k,
 *   v and their biases) in one launch. Every block recomputes the rows' sums of squares (M rows
 *   of K elements: a few KB from L2, cheap next to its share of the weights) and normalises x as
 *   it loads it, so the normalised rows never go through memory. Numerics: x is widened to fp32,
 *   the sum of squares is fp32 (per thread, warp butterfly, warps in order), rstd = 1 / sqrt(sum /
 *   K + eps) in fp64 stored as fp32, and each normalised element x * rstd * w is rounded to the
 *   dtype before it is used, as an_cuda_rmsnorm writes it (its sum order can differ, so rstd may
 *   differ in the last fp32 bit); then kernels/gemv.cu's rule: one warp per output column, 16-byte
 *   loads of the weight row, fp32 accumulation, a fixed warp reduction, bias added in fp32, one
 *   rounding.
 * - an_cuda_kv_rope_store: the q/k/v biases added (optional: where the projections came from
 *   GEMMs without them), rope of q (in place) and k at positions lengths[rows[b]] + t, the rotated
 *   k and v written into the cache: what an_cuda_binary's bias add, an_cuda_rope (float64 angle
 *   and sincos, cos/sin rounded to fp32, the rotation in fp32 without fused multiply-adds) and
 *   an_cuda_kv_store do, bit for bit, in one launch of one block per token.
 * All read only device data (no host copy, no sync): capturable in a CUDA graph. All launch with
 * Programmatic Dependent Launch (kernels/pdl.cuh): the GEMVs prefetch their weight rows into L2
 * while the kernel before them finishes, then wait for it before reading x. */
#include "kernels/block_reduce.cuh" /* an_block_sum */
#include "kernels/cuda_common.cuh"
#include "kernels/vec.cuh" /* an_vec_width, an_unpack16 */
#include "kernels/pdl.cuh" /* an_launch_pdl: every kernel here waits (an_pdl_wait) before reading activations */

#include <stdint.h>

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

/* The normalised element x * rstd * w rounded to the dtype (an_cuda_rmsnorm's formula). */
template <typename T> __device__ __forceinline__ float normed(float x, float rstd, float w) {
    return an_load(an_store<T>(x * rstd * w));
}

/* rstd_s[r] = 1 / sqrt(mean(x_r^2) + eps) for the M rows of x (M, K), computed by the whole block
 * (every thread must call it: the block sums hold barriers); ends with a barrier. */
template <typename T, int MR>
__device__ __forceinline__ void block_rstd(const T *x, int M, int64_t K, double eps, float *rstd_s) {
#pragma unroll
    for (int r = 0; r < MR; r++) {
        if (r >= M) break;
        float ss = 0.0f;
        for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
            float v = an_load(x[r * K + k]);
            ss += v * v;
        }
        ss = an_block_sum(ss);
        if (threadIdx.x == 0) rstd_s[r] = (float)(1.0 / sqrt((double)ss / (double)K + eps));
    }
    __syncthreads();
}

/* MR: rows the registers hold (M <= MR <= 8). vec: K a whole number of 16-byte packs and x, nw, w
 * 16-byte aligned. */
template <typename T, int MR, bool vec>
__global__ void __launch_bounds__(kWarps * 32) norm_gemv_kernel(NormGemvArgs<T> a) {
    __shared__ float rstd_s[MR];
    const int64_t K = a.K;
    const int lane = threadIdx.x % 32;
    const int64_t n = (int64_t)blockIdx.x * kWarps + threadIdx.x / 32;
    const int seg = n < a.end0 ? 0 : n < a.end1 ? 1 : 2;
    const int64_t col = n - (seg == 0 ? 0 : seg == 1 ? a.end0 : a.end1);
    const int64_t N = seg == 0 ? a.end0 : seg == 1 ? a.end1 - a.end0 : a.end2 - a.end1;
    const T *wr = (seg == 0 ? a.w0 : seg == 1 ? a.w1 : a.w2) + col * K;
    if (n < a.end2) an_prefetch_l2_warp(wr, K * (int64_t)sizeof(T), lane); /* weights: no wait needed */
    an_pdl_wait();
    an_pdl_trigger();
    block_rstd<T, MR>(a.x, a.M, K, a.eps, rstd_s);
    if (n >= a.end2) return;
    const T *bias = seg == 0 ? a.b0 : seg == 1 ? a.b1 : a.b2;
    T *y = seg == 0 ? a.y0 : seg == 1 ? a.y1 : a.y2;
    float rstd[MR], acc[MR];
#pragma unroll
    for (int r = 0; r < MR; r++) rstd[r] = r < a.M ? rstd_s[r] : 0.0f, acc[r] = 0.0f;
    if (vec) {
        constexpr int V = an_vec_width<T>::value;
        const uint4 *wv = reinterpret_cast<const uint4 *>(wr), *nv = reinterpret_cast<const uint4 *>(a.nw);
        const int64_t chunks = K / V;
#pragma unroll 4 /* several 16-byte loads of W in flight per lane */
        for (int64_t i = lane; i < chunks; i += 32) {
            float wf[V], nf[V];
            an_unpack16<T>(__ldg(wv + i), wf); /* W is read once: the read-only path */
            an_unpack16<T>(nv[i], nf);
#pragma unroll
            for (int r = 0; r < MR; r++) {
                if (r >= a.M) break;
                float xf[V];
                an_unpack16<T>(*(reinterpret_cast<const uint4 *>(a.x + r * K) + i), xf);
#pragma unroll
                for (int j = 0; j < V; j++) acc[r] = fmaf(wf[j], normed<T>(xf[j], rstd[r], nf[j]), acc[r]);
            }
        }
    } else {
        for (int64_t i = lane; i < K; i += 32) {
            float wf = an_load(wr[i]), nf = an_load(a.nw[i]);
#pragma unroll
            for (int r = 0; r < MR; r++)
                if (r < a.M) acc[r] = fmaf(wf, normed<T>(an_load(a.x[r * K + i]), rstd[r], nf), acc[r]);
        }
    }
#pragma unroll
    for (int r = 0; r < MR; r++) acc[r] = an_lanes_sum<32>(acc[r]);
    if (lane < MR) { /* lane r writes row r: select it without dynamic register indexing */
        float v = 0.0f;
#pragma unroll
        for (int r = 0; r < MR; r++)
            if (r == lane) v = acc[r];
        if (lane < a.M) {
            if (bias) v += an_load(bias[col]);
            y[(int64_t)lane * N + col] = an_store<T>(v);
        }
    }
}

template <typename T, int MR>
cudaError_t norm_gemv_launch(const an_cuda_state *s, unsigned blocks, bool vec, const NormGemvArgs<T> &a) {
    if (vec) return an_launch_pdl(s, norm_gemv_kernel<T, MR, true>, dim3(blocks), dim3(kWarps * 32), a);
    return an_launch_pdl(s, norm_gemv_kernel<T, MR, false>, dim3(blocks), dim3(kWarps * 32), a);
}

/* ---- rope + cache store ---- */

constexpr int kMaxPairs = AN_CUDA_ROPE_MAX_D / 2;

struct InvFreq {
    double v[kMaxPairs]; /* (D/2) */
};

/* kernels/rope.cu's rotation: each product and sum rounded on its own (no fused multiply-add). */
__device__ __forceinline__ void rotate(float x1, float x2, float c, float s, float *o1, float *o2) {
    *o1 = __fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s));
    *o2 = __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s));
}

/* One block per token i = b T + t. */
/* x + bias rounded to the dtype, as an_cuda_binary's add writes it (no bias: x). */
template <typename T> __device__ __forceinline__ float biased(const T *x, const T *bias, int i) {
    return bias ? an_load(an_store<T>(an_load(x[i]) + an_load(bias[i]))) : an_load(x[i]);
}

template <typename T>
__global__ void rope_store_kernel(T *q, const T *k, const T *v, const T *bq, const T *bk, const T *bv, T *k_cache,
                                  T *v_cache, const int64_t *rows, const int64_t *lengths, int64_t seq, int Hq, int Hkv,
                                  int D, int64_t capacity, InvFreq inv, bool interleaved) {
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
    T *qr = q + i * (int64_t)Hq * D;                  /* (Hq, D) */
    const T *kr = k + i * (int64_t)Hkv * D;           /* (Hkv, D) */
    const T *vr = v + i * (int64_t)Hkv * D;           /* (Hkv, D) */
    const int64_t slot = ((store ? row * capacity + pos : 0)) * (int64_t)Hkv * D;
    T *kd = k_cache + slot, *vd = v_cache + slot;     /* (Hkv, D) */
    for (int e = threadIdx.x; e < (Hq + Hkv) * half; e += blockDim.x) {
        const int h = e / half, p = e - h * half;
        const int lo = interleaved ? 2 * p : p, hi = lo + (interleaved ? 1 : half);
        float o1, o2;
        if (h < Hq) {
            T *x = qr + h * D;
            const T *b = bq ? bq + h * D : nullptr;
            rotate(biased(x, b, lo), biased(x, b, hi), cs[p], sn[p], &o1, &o2);
            x[lo] = an_store<T>(o1);
            x[hi] = an_store<T>(o2);
        } else if (store) {
            const T *x = kr + (h - Hq) * D, *b = bk ? bk + (h - Hq) * D : nullptr;
            rotate(biased(x, b, lo), biased(x, b, hi), cs[p], sn[p], &o1, &o2);
            kd[(h - Hq) * D + lo] = an_store<T>(o1);
            kd[(h - Hq) * D + hi] = an_store<T>(o2);
        }
    }
    if (store)
        for (int e = threadIdx.x; e < Hkv * D; e += blockDim.x) vd[e] = bv ? an_store<T>(biased(vr, bv, e)) : vr[e];
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
        cudaError_t err = M == 1   ? norm_gemv_launch<T, 1>(s, blocks, vec, a)
                          : M == 2 ? norm_gemv_launch<T, 2>(s, blocks, vec, a)
                          : M <= 4 ? norm_gemv_launch<T, 4>(s, blocks, vec, a)
                                   : norm_gemv_launch<T, 8>(s, blocks, vec, a);
        AN_CHECK(ctx, err == cudaSuccess, AN_ERR_INTERNAL, "launch of norm_gemv_kernel failed: %s",
                 cudaGetErrorString(err));
        AN_CUDA_LAUNCH_CHECK(ctx, "norm_gemv_kernel");
    });
    return AN_OK;
}

extern "C" an_status an_cuda_kv_rope_store(an_ctx *ctx, an_dtype dtype, void *q, const void *k, const void *v,
                                           const void *q_bias, const void *k_bias, const void *v_bias, void *k_cache,
                                           void *v_cache, const int64_t *rows, const int64_t *lengths,
                                           int64_t B, int64_t seq, int64_t Hq, int64_t Hkv, int64_t D,
                                           int64_t capacity, const double *inv_freq, int interleaved) {
    AN_CUDA_STATE(ctx, s);
    AN_CHECK(ctx, D >= 2 && D % 2 == 0 && D <= AN_CUDA_ROPE_MAX_D, AN_ERR_INPUT,
             "kv_rope_store: head dim D = %lld; the kernel takes even D up to %d", (long long)D, AN_CUDA_ROPE_MAX_D);
    AN_CHECK(ctx, B * seq <= INT32_MAX && Hq >= 1 && Hkv >= 1 && (Hq + Hkv) * D <= INT32_MAX, AN_ERR_INPUT,
             "kv_rope_store: %lld tokens of %lld + %lld heads", (long long)(B * seq), (long long)Hq, (long long)Hkv);
    if (B * seq == 0) return AN_OK;
    InvFreq inv = {};
    for (int64_t i = 0; i < D / 2; i++) inv.v[i] = inv_freq[i];
    AN_CUDA_DISPATCH_FLOAT(ctx, dtype, "kv_rope_store", {
        cudaError_t err = an_launch_pdl(s, rope_store_kernel<T>, dim3((unsigned)(B * seq)), dim3(128), (T *)q,
                                        (const T *)k, (const T *)v, (const T *)q_bias, (const T *)k_bias,
                                        (const T *)v_bias, (T *)k_cache, (T *)v_cache, rows, lengths, seq, (int)Hq,
                                        (int)Hkv, (int)D, capacity, inv, interleaved != 0);
        AN_CHECK(ctx, err == cudaSuccess, AN_ERR_INTERNAL, "launch of rope_store_kernel failed: %s",
                 cudaGetErrorString(err));
        AN_CUDA_LAUNCH_CHECK(ctx, "rope_store_kernel");
    });
    return AN_OK;
}
