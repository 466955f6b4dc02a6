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
 * All read only device data (no host copy, no sync): capturable in a CUDA graph. All launch with
 * Programmatic Dependent Launch (kernels/pdl.cuh): the GEMVs prefetch their weight rows into L2
 * while the kernel before them finishes, then wait for it before reading x. */
#include "kernels/block_reduce.cuh" /* an_lanes_sum */
#include "kernels/cuda_common.cuh"
#include "kernels/vec.cuh" /* an_vec_width, an_unpack16, an_load_stream16 */
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

/* MR: rows the registers hold (M <= MR <= 8); UNR 16-byte packs of the weight row in flight a
 * lane. vec: K a whole number of 16-byte packs and x, nw, w 16-byte aligned. */
template <typename T, int MR, int UNR, bool vec>
__global__ void __launch_bounds__(kWarps * 32) norm_gemv_kernel(NormGemvArgs<T> a) {
    constexpr int V = vec ? an_vec_width<T>::value : 1;
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
    if (n >= a.end2) return;
    const int64_t packs = K / V;
    float acc[MR], ss[MR];
#pragma unroll
    for (int r = 0; r < MR; r++) acc[r] = ss[r] = 0.0f;
    for (int64_t base = lane; base < packs; base += 32 * UNR) {
        float wf[UNR][V];
#pragma unroll
        for (int k = 0; k < UNR; k++) { /* every load of the pass in flight before the math */
            const int64_t i = base + k * 32;
            const uint4 zero = make_uint4(0, 0, 0, 0);
            if (vec) an_unpack16<T>(i < packs ? an_load_stream16(reinterpret_cast<const uint4 *>(wr) + i) : zero, wf[k]);
            else wf[k][0] = i < packs ? an_load(wr[i]) : 0.0f;
        }
#pragma unroll
        for (int k = 0; k < UNR; k++) {
            const int64_t i = base + k * 32;
            if (i >= packs) break;
            float nf[V];
            if (vec) an_unpack16<T>(__ldg(reinterpret_cast<const uint4 *>(a.nw) + i), nf);
            else nf[0] = an_load(a.nw[i]);
#pragma unroll
            for (int r = 0; r < MR; r++) {
                if (r >= a.M) break;
                float xf[V];
                if (vec) an_unpack16<T>(__ldg(reinterpret_cast<const uint4 *>(a.x + r * K) + i), xf);
                else xf[0] = an_load(a.x[r * K + i]);
#pragma unroll
                for (int j = 0; j < V; j++) {
                    ss[r] = fmaf(xf[j], xf[j], ss[r]);
                    acc[r] = fmaf(wf[k][j], xf[j] * nf[j], acc[r]);
                }
            }
        }
    }
    float v = 0.0f, sv = 0.0f; /* lane r keeps row r: selected without dynamic register indexing */
#pragma unroll
    for (int r = 0; r < MR; r++) {
        acc[r] = an_lanes_sum<32>(acc[r]), ss[r] = an_lanes_sum<32>(ss[r]);
        if (r == lane) v = acc[r], sv = ss[r];
    }
    if (lane >= a.M) return;
    const float rstd = (float)(1.0 / sqrt((double)sv / (double)K + a.eps));
    const T *bias = seg == 0 ? a.b0 : seg == 1 ? a.b1 : a.b2;
    T *y = seg == 0 ? a.y0 : seg == 1 ? a.y1 : a.y2;
    y[(int64_t)lane * N + col] = an_store<T>(v * rstd + (bias ? an_load(bias[col]) : 0.0f));
}

template <typename T, int MR>
cudaError_t norm_gemv_launch(const an_cuda_state *s, unsigned blocks, bool vec, const NormGemvArgs<T> &a) {
    constexpr int UNR = MR <= 2 ? 8 : MR == 4 ? 4 : 2; /* registers: UNR packs of W, one of x per row */
    if (vec) return an_launch_pdl(s, norm_gemv_kernel<T, MR, UNR, true>, dim3(blocks), dim3(kWarps * 32), a);
    return an_launch_pdl(s, norm_gemv_kernel<T, MR, 4, false>, dim3(blocks), dim3(kWarps * 32), a);
}

/* ---- rmsnorm + gate/up + swiglu ---- */

constexpr int kSwigluWarps = 4; /* per block: 4 outputs, each a warp streaming its gate and up rows */

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

/* MR: rows the registers hold (M <= MR <= 8); UNR 16-byte packs of each weight row in flight a lane.
 * vec: K a whole number of 16-byte packs and x, nw, the weights 16-byte aligned. */
template <typename T, int MR, int UNR, bool vec>
__global__ void __launch_bounds__(kSwigluWarps * 32) norm_swiglu_kernel(NormSwigluArgs<T> a) {
    constexpr int V = vec ? an_vec_width<T>::value : 1;
    const int lane = threadIdx.x % 32;
    const int64_t n = (int64_t)blockIdx.x * kSwigluWarps + threadIdx.x / 32, K = a.K;
    if (n < a.N) { /* weights: no wait needed */
        an_prefetch_l2_warp(a.wg + n * K, K * (int64_t)sizeof(T), lane);
        an_prefetch_l2_warp(a.wu + n * K, K * (int64_t)sizeof(T), lane);
    }
    an_pdl_wait(); /* x comes from the kernels before */
    an_pdl_trigger();
    if (n >= a.N) return;
    const int64_t packs = K / V;
    float g[MR], u[MR], ss[MR];
#pragma unroll
    for (int r = 0; r < MR; r++) g[r] = u[r] = ss[r] = 0.0f;
    for (int64_t base = lane; base < packs; base += 32 * UNR) {
        float wgf[UNR][V], wuf[UNR][V];
#pragma unroll
        for (int k = 0; k < UNR; k++) { /* every load of the pass in flight before the math */
            const int64_t i = base + k * 32;
            if (vec) {
                const uint4 zero = make_uint4(0, 0, 0, 0);
                const uint4 wg = i < packs ? an_load_stream16(reinterpret_cast<const uint4 *>(a.wg + n * K) + i) : zero;
                const uint4 wu = i < packs ? an_load_stream16(reinterpret_cast<const uint4 *>(a.wu + n * K) + i) : zero;
                an_unpack16<T>(wg, wgf[k]), an_unpack16<T>(wu, wuf[k]);
            } else {
                wgf[k][0] = i < packs ? an_load(a.wg[n * K + i]) : 0.0f;
                wuf[k][0] = i < packs ? an_load(a.wu[n * K + i]) : 0.0f;
            }
        }
#pragma unroll
        for (int k = 0; k < UNR; k++) {
            const int64_t i = base + k * 32;
            if (i >= packs) break;
            float nf[V];
            if (vec) an_unpack16<T>(__ldg(reinterpret_cast<const uint4 *>(a.nw) + i), nf);
            else nf[0] = an_load(a.nw[i]);
#pragma unroll
            for (int r = 0; r < MR; r++) {
                if (r >= a.M) break;
                float xf[V];
                if (vec) an_unpack16<T>(__ldg(reinterpret_cast<const uint4 *>(a.x + r * K) + i), xf);
                else xf[0] = an_load(a.x[r * K + i]);
#pragma unroll
                for (int j = 0; j < V; j++) {
                    const float xw = xf[j] * nf[j];
                    ss[r] = fmaf(xf[j], xf[j], ss[r]);
                    g[r] = fmaf(wgf[k][j], xw, g[r]);
                    u[r] = fmaf(wuf[k][j], xw, u[r]);
                }
            }
        }
    }
    float gv = 0.0f, uv = 0.0f, sv = 0.0f; /* lane r keeps row r: selected without dynamic indexing */
#pragma unroll
    for (int r = 0; r < MR; r++) {
        g[r] = an_lanes_sum<32>(g[r]), u[r] = an_lanes_sum<32>(u[r]), ss[r] = an_lanes_sum<32>(ss[r]);
        if (r == lane) gv = g[r], uv = u[r], sv = ss[r];
    }
    if (lane >= a.M) return;
    const float rstd = (float)(1.0 / sqrt((double)sv / (double)K + a.eps));
    /* gate and up rounded to the dtype as their projections write them, then swiglu's formula */
    const float gate = an_load(an_store<T>(gv * rstd + (a.bg ? an_load(a.bg[n]) : 0.0f)));
    const float up = an_load(an_store<T>(uv * rstd + (a.bu ? an_load(a.bu[n]) : 0.0f)));
    a.act[(int64_t)lane * a.N + n] = an_store<T>(gate * (1.0f / (1.0f + expf(-gate))) * up);
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
        else if (M == 1) err = an_launch_pdl(s, norm_swiglu_kernel<T, 1, 4, true>, grid, block, a);
        else if (M == 2) err = an_launch_pdl(s, norm_swiglu_kernel<T, 2, 4, true>, grid, block, a);
        else if (M <= 4) err = an_launch_pdl(s, norm_swiglu_kernel<T, 4, 2, true>, grid, block, a);
        else err = an_launch_pdl(s, norm_swiglu_kernel<T, 8, 2, true>, grid, block, a);
        AN_CHECK(ctx, err == cudaSuccess, AN_ERR_INTERNAL, "launch of norm_swiglu_kernel failed: %s",
                 cudaGetErrorString(err));
        AN_CUDA_LAUNCH_CHECK(ctx, "norm_swiglu_kernel");
    });
    return AN_OK;
}
