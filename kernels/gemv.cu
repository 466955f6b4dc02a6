/* gemv.cu — y (M, N) = x (M, K) W^T (+ bias) for a few rows M and a weight W (N, K): the decode-step shape
 * of every projection, where the time is one read of W and a GEMM library's tiles sized for
 * large M mostly wait. One warp per output column n streams row n of W in 16-byte loads and keeps
 * the M dot products in fp32 registers, then reduces across the warp in a fixed order (the same
 * bits every run). Outputs round once to the dtype: the bias (N, or none) and, with `accumulate`,
 * the old y are added in fp32 before that rounding. Launched with Programmatic Dependent Launch
 * (kernels/pdl.cuh): each warp prefetches its row of W into L2 while the kernel before finishes. */
#include "kernels/cuda_common.cuh"
#include "kernels/vec.cuh" /* an_vec_width, an_unpack16 */
#include "kernels/pdl.cuh" /* launched with Programmatic Dependent Launch: prefetch W, then wait */

namespace {

constexpr int kWarps = 8; /* per block: 8 output columns */


/* MR: rows of x the registers hold (M <= MR <= 8). vec: K a whole number of 16-byte packs and
 * 16-byte aligned rows. */
template <typename T, int MR, bool vec>
__global__ void __launch_bounds__(kWarps * 32) gemv_rows(const T *x, int64_t K, const T *w, int64_t N, const T *bias,
                                                         bool accumulate, T *y, int64_t M) {
    int lane = threadIdx.x % 32;
    int64_t n = (int64_t)blockIdx.x * kWarps + threadIdx.x / 32;
    if (n < N) an_prefetch_l2_warp(w + n * K, K * (int64_t)sizeof(T), lane); /* W: no wait needed */
    an_pdl_wait(); /* x (and y when accumulating) come from the kernels before */
    an_pdl_trigger();
    if (n >= N) return;
    const T *wr = w + n * K;
    float acc[MR];
#pragma unroll
    for (int r = 0; r < MR; r++) acc[r] = 0.0f;
    if (vec) {
        constexpr int V = an_vec_width<T>::value;
        const uint4 *wv = reinterpret_cast<const uint4 *>(wr);
        int64_t nv = K / V;
#pragma unroll 4 /* several 16-byte loads of W in flight per lane */
        for (int64_t i = lane; i < nv; i += 32) {
            float wf[V];
            an_unpack16<T>(__ldg(wv + i), wf); /* W is read once: the read-only path */
#pragma unroll
            for (int r = 0; r < MR; r++) {
                if (r >= M) break;
                float xf[V];
                an_unpack16<T>(*(reinterpret_cast<const uint4 *>(x + r * K) + i), xf);
#pragma unroll
                for (int j = 0; j < V; j++) acc[r] = fmaf(wf[j], xf[j], acc[r]);
            }
        }
    } else {
        for (int64_t i = lane; i < K; i += 32) {
            float wf = an_load(wr[i]);
#pragma unroll
            for (int r = 0; r < MR; r++)
                if (r < M) acc[r] = fmaf(wf, an_load(x[r * K + i]), acc[r]);
        }
    }
#pragma unroll
    for (int r = 0; r < MR; r++) {
        float v = acc[r];
        for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
        acc[r] = v;
    }
    if (lane < MR) { /* lane r writes row r: select it without dynamic register indexing */
        float v = 0.0f;
#pragma unroll
        for (int r = 0; r < MR; r++)
            if (r == lane) v = acc[r];
        if (lane < M) {
            T *out = y + (int64_t)lane * N + n;
            if (bias) v += an_load(bias[n]);
            *out = an_store<T>(accumulate ? an_load(*out) + v : v);
        }
    }
}

template <typename T, int MR>
an_status launch(an_ctx *ctx, an_cuda_state *s, const T *x, int64_t M, int64_t K, const T *w, int64_t N,
                 const T *bias, bool accumulate, T *y) {
    unsigned blocks = (unsigned)((N + kWarps - 1) / kWarps);
    bool vec = K % an_vec_width<T>::value == 0 && (uintptr_t)x % 16 == 0 && (uintptr_t)w % 16 == 0;
    cudaError_t err = vec ? an_launch_pdl(s, gemv_rows<T, MR, true>, dim3(blocks), dim3(kWarps * 32), x, K, w,
                                          N, bias, accumulate, y, M)
                          : an_launch_pdl(s, gemv_rows<T, MR, false>, dim3(blocks), dim3(kWarps * 32), x, K,
                                          w, N, bias, accumulate, y, M);
    AN_CHECK(ctx, err == cudaSuccess, AN_ERR_INTERNAL, "launch of gemv_rows failed: %s",
             cudaGetErrorString(err));
    AN_CUDA_LAUNCH_CHECK(ctx, "gemv_rows");
    return AN_OK;
}

} // namespace

extern "C" an_status an_cuda_gemv(an_ctx *ctx, an_dtype dtype, const void *x, int64_t M, int64_t K, const void *w,
                                  int64_t N, const void *bias, int accumulate, void *y) {
    AN_CUDA_STATE(ctx, s);
    AN_CHECK(ctx, M >= 1 && M <= AN_CUDA_GEMV_MAX_ROWS && K >= 1 && N >= 1 && N / kWarps < INT32_MAX, AN_ERR_INPUT,
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
