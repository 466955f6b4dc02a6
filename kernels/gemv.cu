/* gemv.cu — y (M, N) = x (M, K) W^T (+ bias) for a few rows M and a weight W (N, K): the decode-step shape
 * of every projection, where the time is one read of W and a GEMM library's tiles sized for
 * large M mostly wait. Outputs round once to the dtype: the bias (N, or none) and, with
 * `accumulate`, the old y are added in fp32 before that rounding. Launched with Programmatic
 * Dependent Launch (kernels/pdl.cuh): the warps prefetch their rows of W into L2 while the kernel
 * before finishes.
 *
 * Vector path (K a whole number of 16-byte packs, x and W 16-byte aligned): a warp takes COLS
 * output columns and streams their rows of W in 16-byte loads that skip L1 (read once), UNR
 * loads a row and lane in flight before the FMAs; the M dot products of each column stay in fp32
 * registers. Two shapes (an H200, weights streamed from HBM; bench/gemv_variants.cu measured them):
 * - N > 8192, or K < 4096 with M > 1: 4 warps a block, 2 columns a warp (8960 x 1536: 8.8 us,
 *   3.1 TB/s);
 * - N <= 8192 and K >= 4096 or M = 1: 8 warps a block, 2 columns a block, each column's K split
 *   over 4 warps (one column over all 8 at M = 2; interleaved 16-byte packs) added through shared
 *   memory in warp order: long rows otherwise leave too few warps streaming (1536 x 8960: 8.9 us
 *   against 14.4 us unsplit, 12.2 for cuBLASLt), and a single row's o_proj (1536 x 1536) then has
 *   every load of a lane in flight at once (batch-1 decode on an H100: 1.843 / 1.838 -> 1.830 /
 *   1.825 ms/step; split at two rows it lost 11 us a step).
 * Every sum runs in a fixed order (lanes by butterfly, split warps in order): the same bits every
 * run. The scalar path (any K or alignment) keeps one column a warp. */
#include "kernels/block_reduce.cuh" /* an_lanes_sum */
#include "kernels/cuda_common.cuh"
#include "kernels/vec.cuh" /* an_vec_width, an_unpack16, an_load_stream16 */
#include "kernels/pdl.cuh" /* launched with Programmatic Dependent Launch: prefetch W, then wait */

namespace {

/* y[r, n] for the lanes that hold one (lane = c MR + r after the sums): bias and old y in fp32, one rounding. */
template <typename T>
__device__ __forceinline__ void write_out(float v, int64_t n, int64_t r, int64_t N, const T *bias, bool accumulate, T *y) {
    T *out = y + r * N + n;
    if (bias) v += an_load(bias[n]);
    *out = an_store<T>(accumulate ? an_load(*out) + v : v);
}

/* MR: rows of x the registers hold (M <= MR <= 8); COLS columns a warp; UNR 16-byte packs of each
 * row in flight a lane; WARPS a block; SPLIT warps share a column group (K interleaved). */
template <typename T, int MR, int COLS, int UNR, int WARPS, int SPLIT>
__global__ void __launch_bounds__(WARPS * 32) gemv_vec(const T *x, int64_t K, const T *w, int64_t N, const T *bias,
                                                       bool accumulate, T *y, int64_t M) {
    constexpr int V = an_vec_width<T>::value;
    __shared__ float part[SPLIT > 1 ? WARPS : 1][COLS * MR];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, group = warp / SPLIT, s = warp % SPLIT;
    const int64_t n0 = ((int64_t)blockIdx.x * (WARPS / SPLIT) + group) * COLS;
    if (s == 0)
#pragma unroll
        for (int c = 0; c < COLS; c++)
            if (n0 + c < N) an_prefetch_l2_warp(w + (n0 + c) * K, K * (int64_t)sizeof(T), lane); /* W: no wait needed */
    an_pdl_wait(); /* x (and y when accumulating) come from the kernels before */
    an_pdl_trigger();
    const int64_t nv = K / V;
    float acc[COLS][MR];
#pragma unroll
    for (int c = 0; c < COLS; c++)
#pragma unroll
        for (int r = 0; r < MR; r++) acc[c][r] = 0.0f;
    for (int64_t base = (int64_t)s * 32 + lane; base < nv; base += (int64_t)32 * SPLIT * UNR) {
        /* W and x: every load of the pass in flight before the math (x loaded inside the math loop
         * cost an L2 round trip a pack: with decode.cu's norm_dots, batch-1 decode 1.710 -> 1.58 ms) */
        uint4 wv[COLS][UNR], xv[MR][UNR];
#pragma unroll
        for (int u = 0; u < UNR; u++) {
            const int64_t i = base + (int64_t)u * 32 * SPLIT;
#pragma unroll
            for (int c = 0; c < COLS; c++)
                wv[c][u] = i < nv && n0 + c < N ? an_load_stream16(reinterpret_cast<const uint4 *>(w + (n0 + c) * K) + i)
                                                : make_uint4(0, 0, 0, 0);
#pragma unroll
            for (int r = 0; r < MR; r++)
                xv[r][u] = i < nv && r < M ? __ldg(reinterpret_cast<const uint4 *>(x + r * K) + i) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < UNR; u++) {
            const int64_t i = base + (int64_t)u * 32 * SPLIT;
            if (i >= nv) break;
            float wf[COLS][V];
#pragma unroll
            for (int c = 0; c < COLS; c++) an_unpack16<T>(wv[c][u], wf[c]);
#pragma unroll
            for (int r = 0; r < MR; r++) {
                if (r >= M) break;
                float xf[V];
                an_unpack16<T>(xv[r][u], xf);
#pragma unroll
                for (int c = 0; c < COLS; c++)
#pragma unroll
                    for (int j = 0; j < V; j++) acc[c][r] = fmaf(wf[c][j], xf[j], acc[c][r]);
            }
        }
    }
#pragma unroll
    for (int c = 0; c < COLS; c++)
#pragma unroll
        for (int r = 0; r < MR; r++) acc[c][r] = an_lanes_sum<32>(acc[c][r]);
    /* lane c MR + r holds output (r, n0 + c): selected without dynamic register indexing */
    float v = 0.0f;
#pragma unroll
    for (int c = 0; c < COLS; c++)
#pragma unroll
        for (int r = 0; r < MR; r++)
            if (c * MR + r == lane) v = acc[c][r];
    if (SPLIT > 1) {
        if (lane < COLS * MR) part[warp][lane] = v;
        __syncthreads();
        if (s != 0) return;
        v = 0.0f;
        if (lane < COLS * MR)
#pragma unroll
            for (int t = 0; t < SPLIT; t++) v += part[group * SPLIT + t][lane];
    }
    const int c = lane / MR, r = lane % MR;
    if (lane < COLS * MR && r < M && n0 + c < N) write_out(v, n0 + c, r, N, bias, accumulate, y);
}

/* Any K and alignment: one column a warp, element loads. */
template <typename T, int MR>
__global__ void __launch_bounds__(256) gemv_scalar(const T *x, int64_t K, const T *w, int64_t N, const T *bias,
                                                   bool accumulate, T *y, int64_t M) {
    const int lane = threadIdx.x % 32;
    const int64_t n = (int64_t)blockIdx.x * 8 + threadIdx.x / 32;
    an_pdl_wait();
    an_pdl_trigger();
    if (n >= N) return;
    const T *wr = w + n * K;
    float acc[MR];
#pragma unroll
    for (int r = 0; r < MR; r++) acc[r] = 0.0f;
    for (int64_t i = lane; i < K; i += 32) {
        float wf = an_load(wr[i]);
#pragma unroll
        for (int r = 0; r < MR; r++)
            if (r < M) acc[r] = fmaf(wf, an_load(x[r * K + i]), acc[r]);
    }
    float v = 0.0f;
#pragma unroll
    for (int r = 0; r < MR; r++) {
        acc[r] = an_lanes_sum<32>(acc[r]);
        if (r == lane) v = acc[r];
    }
    if (lane < MR && lane < M) write_out(v, n, lane, N, bias, accumulate, y);
}

template <typename T, int MR, int COLS, int UNR, int WARPS, int SPLIT>
cudaError_t launch_vec(an_cuda_state *s, const T *x, int64_t M, int64_t K, const T *w, int64_t N, const T *bias,
                       bool accumulate, T *y) {
    const int64_t per_block = (WARPS / SPLIT) * COLS;
    const unsigned blocks = (unsigned)((N + per_block - 1) / per_block);
    return an_launch_pdl(s, gemv_vec<T, MR, COLS, UNR, WARPS, SPLIT>, dim3(blocks), dim3(WARPS * 32), x, K, w, N, bias,
                         accumulate, y, M);
}

template <typename T, int MR>
an_status launch(an_ctx *ctx, an_cuda_state *s, const T *x, int64_t M, int64_t K, const T *w, int64_t N,
                 const T *bias, bool accumulate, T *y) {
    /* registers: UNR packs of W per column, one of x per row (8 at one or two rows: batch-1 decode
     * 1.84 -> 1.95 ms/step on an H100, fewer warps resident) */
    constexpr int UNR = MR <= 2 ? 4 : 2;
    /* warps sharing a split column: 8 at two rows (batch-2 decode 2.088 / 2.087 -> 2.049 / 2.025
     * ms/step on an H100), 4 otherwise (8 at one row: 1.801 / 1.807 -> 1.851 / 1.859) */
    constexpr int SPLIT = MR == 2 ? 8 : 4;
    const bool vec = K % an_vec_width<T>::value == 0 && an_aligned16(x) && an_aligned16(w);
    const bool split = (K >= 4096 || M == 1) && N <= 8192;
    cudaError_t err = !vec   ? an_launch_pdl(s, gemv_scalar<T, MR>, dim3((unsigned)((N + 7) / 8)), dim3(256), x, K, w, N,
                                             bias, accumulate, y, M)
                      : split ? launch_vec<T, MR, 1, UNR, 8, SPLIT>(s, x, M, K, w, N, bias, accumulate, y)
                              : launch_vec<T, MR, 2, UNR, 4, 1>(s, x, M, K, w, N, bias, accumulate, y);
    AN_CHECK(ctx, err == cudaSuccess, AN_ERR_INTERNAL, "launch of the gemv kernel failed: %s", cudaGetErrorString(err));
    AN_CUDA_LAUNCH_CHECK(ctx, "gemv");
    return AN_OK;
}

} // namespace

extern "C" an_status an_cuda_gemv(an_ctx *ctx, an_dtype dtype, const void *x, int64_t M, int64_t K, const void *w,
                                  int64_t N, const void *bias, int accumulate, void *y) {
    AN_CUDA_STATE(ctx, s);
    AN_CHECK(ctx, M >= 1 && M <= AN_CUDA_GEMV_MAX_ROWS && K >= 1 && N >= 1 && N / 2 < INT32_MAX, AN_ERR_INPUT,
             "gemv: %lld rows (at most %d), K %lld, N %lld", (long long)M, AN_CUDA_GEMV_MAX_ROWS, (long long)K,
             (long long)N);
    AN_CUDA_DISPATCH_FLOAT(ctx, dtype, "gemv", {
        const T *xt = (const T *)x, *wt = (const T *)w, *bt = (const T *)bias;
        T *yt = (T *)y;
        bool acc = accumulate != 0;
        switch (M) {
        case 1: return launch<T, 1>(ctx, s, xt, M, K, wt, N, bt, acc, yt);
        case 2: return launch<T, 2>(ctx, s, xt, M, K, wt, N, bt, acc, yt);
        case 3: case 4: return launch<T, 4>(ctx, s, xt, M, K, wt, N, bt, acc, yt);
        default: return launch<T, 8>(ctx, s, xt, M, K, wt, N, bt, acc, yt);
        }
    });
    return AN_OK;
}
