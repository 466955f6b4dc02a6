/* gemm_decode.cu — y (M, N) = x (M, K) W^T (+ bias) for W (N, K) and the few rows of a batched
 * decode step, 1 <= M <= AN_CUDA_DECODE_GEMM_MAX_ROWS (64; an_cuda_gemm sends 3-16), bf16 and
 * f16, on tensor cores. At these M the time is one read of W; cuBLASLt's tiles, sized for large M, stream
 * the decode projections at 1.0-2.4 TB/s (docs/performance.md). The contract is an_cuda_gemv's:
 * fp32 accumulation, the bias (N, or none) and with `accumulate` the old y added in fp32
 * ((sum + bias) + old), one rounding to the dtype. Launched with Programmatic Dependent Launch
 * (kernels/pdl.cuh): a block's first stages of W are in flight before an_pdl_wait, x after.
 *
 * Shape of the work: a block owns BN = 16 WN rows of W (output columns) and every token, and
 * streams its rows through shared memory in stages of 64 k (the tensor memory accelerator: one
 * thread issues a stage's two box copies, an mbarrier counts their bytes; STAGES deep; the
 * 128-byte swizzle puts chunk c of row r at c ^ (r % 8), so ldmatrix reads are conflict-free;
 * rows past N or M and k past K arrive as zeros); x's stage (MT = 8 NT rows) sits beside W's,
 * read once a block, not once a warp (an earlier skinny kernel's x traffic grew with M, and a
 * version of this one with 16-byte cp.async stages lost everywhere). Warp (wn, wk) takes W
 * rows 16 wn .. 16 wn + 15 as the A operand of mma.sync m16n8k16 and tokens as B, over the k16
 * steps wk, wk + WK, .. of each stage. S blocks of a thread-block cluster split K (chunks of 64:
 * the small projections have too few rows to fill the card otherwise).
 *
 * Sums run in a fixed order: each warp's MMAs in k order, the WK warps of a row group added in
 * warp order through shared memory, the S cluster ranks in rank order through distributed shared
 * memory (each rank finishes its slice of the tile): the same bits every run and in graphs.
 * K must be a multiple of 8 (the tensor maps' row pitch is a multiple of 16 bytes) and x, W
 * 16-byte aligned; the launcher checks.
 *
 * The epilogue can instead form the swiglu of a stacked gate | up GEMM (the kernel's GLU form,
 * an_cuda_gemm_decode_swiglu). an_cuda_gemm routes 3-16 rows here: at 32 rows cuBLASLt won a
 * batch-32 decode step (kernels/cuda.h has the numbers).
 *
 * bench/gemm_decode_variants.cu includes this file with AN_DECODE_GEMM_KERNEL_ONLY defined to
 * time the kernel template at other shapes; it then supplies an_pdl_wait, an_pdl_trigger, an_load
 * and an_store itself. */
#ifndef AN_DECODE_GEMM_KERNEL_ONLY
#include "kernels/cuda_common.cuh"
#include "kernels/pdl.cuh" /* an_launch_pdl_smem, an_pdl_wait, an_pdl_trigger */
#endif

#include "kernels/mma.cuh"  /* Mma, ldsm_x4_at */
#include "kernels/silu.cuh" /* an_silu */
#include "kernels/tma.cuh"  /* mbarriers, tma::load, tma::encode_2d */

#include <cooperative_groups.h>
#include <cuda.h>         /* CUtensorMap (the encoder comes from the runtime's driver entry point) */
#include <cudaTypedefs.h> /* PFN_cuTensorMapEncodeTiled_v12000 */
#include <stdint.h>
#include <type_traits>

namespace decode_gemm {

/* Byte offset of 16-byte chunk c (0..7) of row r in a stage of 128-byte rows as the 128-byte
 * swizzle lays it out (the box 1024-byte aligned): the 8 rows an ldmatrix phase reads hit 8
 * different bank groups. */
__device__ __forceinline__ uint32_t swz(int r, int c) { return (uint32_t)(r * 128 + ((c ^ (r & 7)) << 4)); }

constexpr int BK = 64; /* k a stage: 128 bytes of a row */

/* NT token tiles of 8 (M <= 8 NT); WN row groups of 16 and WK k-split warps a block; S cluster
 * ranks splitting K; STAGES stages in flight. wmap: W (N, K) in boxes of (BN, 64); xmap: x (M, K)
 * in boxes of (MT, 64), both 128-byte swizzled. Dynamic shared memory: smem_bytes().
 * GLU: W is the stacked (2N, K) gate | up and y (M, N) = swiglu: a block's tile takes BN / 2 gate
 * rows and the same BN / 2 up rows (wmap's boxes are (BN / 2, 64)), and the epilogue rounds each
 * sum to T, as the GEMM would store it, then forms silu(g) u as an_cuda_swiglu_rows does (no bias,
 * no accumulate). */
template <typename T, int NT, int WN, int WK, int S, int STAGES, bool GLU = false>
__global__ void __cluster_dims__(S, 1, 1) __launch_bounds__(WN *WK * 32)
    kernel(const __grid_constant__ CUtensorMap wmap, const __grid_constant__ CUtensorMap xmap, int64_t M, int64_t K,
           int64_t N, const T *bias, bool accumulate, T *y) {
    static_assert(NT % 2 == 0 && 4 % WK == 0, "token tiles come in pairs; WK divides the 4 k16 steps");
    constexpr int BN = 16 * WN, MT = 8 * NT, THREADS = WN * WK * 32;
    constexpr int WBYTES = BN * 128, STAGE = (BN + MT) * 128;
    constexpr int RS = BN + 4; /* floats a token row of the partial tile (padding: no bank conflicts) */
    extern __shared__ unsigned char smem_raw[];
    const uint32_t raw = (uint32_t)__cvta_generic_to_shared(smem_raw), base = (raw + 1023) & ~1023u;
    unsigned char *smem = smem_raw + (base - raw);  /* 1024-byte aligned: the swizzle's unit */
    const uint32_t bars = base + STAGES * STAGE;     /* STAGES mbarriers of 8 bytes */
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, wn = warp % WN, wk = warp / WN;
    const int rank = S > 1 ? (int)cooperative_groups::this_cluster().block_rank() : 0;
    constexpr int BO = GLU ? BN / 2 : BN; /* output columns a tile */
    const int64_t n0 = (int64_t)(blockIdx.x / S) * BO;
    /* this stage's W: one box of BN rows, or BN / 2 gate rows and the matching up rows */
    auto load_w = [&](uint32_t dst, int64_t chunk, uint32_t bar) {
        tma::load(dst, &wmap, (int32_t)(chunk * BK), (int32_t)n0, bar);
        if (GLU) tma::load(dst + BO * 128, &wmap, (int32_t)(chunk * BK), (int32_t)(N + n0), bar);
    };
    const int64_t nc = (K + BK - 1) / BK, per = (nc + S - 1) / S;
    const int64_t cb = rank * per < nc ? rank * per : nc, ce = cb + per < nc ? cb + per : nc, count = ce - cb;

    if (tid == 0) {
#pragma unroll
        for (int s = 0; s < STAGES; s++) tma::bar_init(bars + 8 * s, 1);
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    /* W of the first stages before the wait (no kernel before writes W); x after it. */
    if (tid == 0)
#pragma unroll
        for (int s = 0; s < STAGES - 1; s++)
            if (s < count) {
                tma::bar_expect(bars + 8 * s, STAGE);
                load_w(base + s * STAGE, cb + s, bars + 8 * s);
            }
    an_pdl_wait(); /* x (and y when accumulating) come from the kernels before */
    an_pdl_trigger();
    if (tid == 0)
#pragma unroll
        for (int s = 0; s < STAGES - 1; s++)
            if (s < count) tma::load(base + s * STAGE + WBYTES, &xmap, (int32_t)((cb + s) * BK), 0, bars + 8 * s);

    float acc[NT][4];
#pragma unroll
    for (int j = 0; j < NT; j++)
#pragma unroll
        for (int i = 0; i < 4; i++) acc[j][i] = 0.0f;
    /* ldmatrix lane roles: A (W rows 16 wn + ar, chunk 2 kk + ac), B (token rows, chunk 2 kk + bc) */
    const int ar = 16 * wn + (lane % 8) + 8 * ((lane / 8) % 2), ac = lane / 16;
    const int br = (lane % 8) + 8 * (lane / 16), bc = (lane / 8) % 2;

    for (int64_t i = 0; i < count; i++) {
        __syncthreads(); /* every warp is done with stage i - 1: its slot takes stage i + STAGES - 1 */
        const int64_t next = i + STAGES - 1;
        if (tid == 0 && next < count) {
            const int slot = (int)(next % STAGES);
            tma::bar_expect(bars + 8 * slot, STAGE);
            load_w(base + slot * STAGE, cb + next, bars + 8 * slot);
            tma::load(base + slot * STAGE + WBYTES, &xmap, (int32_t)((cb + next) * BK), 0, bars + 8 * slot);
        }
        const int slot = (int)(i % STAGES);
        tma::bar_wait(bars + 8 * slot, (uint32_t)((i / STAGES) & 1));
        const uint32_t st = base + slot * STAGE;
#pragma unroll
        for (int kk = wk; kk < 4; kk += WK) {
            uint32_t a[4];
            ldsm_x4_at(a, st + swz(ar, 2 * kk + ac));
#pragma unroll
            for (int p = 0; p < NT / 2; p++) {
                uint32_t b[4];
                ldsm_x4_at(b, st + BN * 128 + swz(16 * p + br, 2 * kk + bc));
                Mma<T>::run(acc[2 * p], a, b[0], b[1]);
                Mma<T>::run(acc[2 * p + 1], a, b[2], b[3]);
            }
        }
    }
    __syncthreads(); /* every stage arrived and was read: the pipeline's shared memory becomes the partial tile */

    /* part[token][col] (col = W row within the tile): the WK warps of a row group in warp order */
    float *part = reinterpret_cast<float *>(smem);
    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int q = 0; q < WK; q++) {
        if (wk == q)
#pragma unroll
            for (int j = 0; j < NT; j++)
#pragma unroll
                for (int h = 0; h < 4; h++) {
                    const int token = 8 * j + 2 * t + (h & 1), col = 16 * wn + g + 8 * (h >> 1);
                    float *p = &part[token * RS + col];
                    *p = q == 0 ? acc[j][h] : *p + acc[j][h];
                }
        if (WK > 1) __syncthreads();
    }
    if (WK == 1) __syncthreads();

    /* This rank's slice of the tile, summed over the ranks in rank order; then the epilogue. */
    constexpr int E = MT * BO, SLICE = E / S;
    if constexpr (S > 1) cooperative_groups::this_cluster().sync();
    auto sum_ranks = [&](int i) { /* part[i] over the cluster's ranks, in rank order */
        if constexpr (S > 1) {
            auto cluster = cooperative_groups::this_cluster();
            float v = 0.0f;
#pragma unroll
            for (int q = 0; q < S; q++) v += cluster.map_shared_rank(part, q)[i];
            return v;
        } else {
            return part[i];
        }
    };
    for (int e = rank * SLICE + tid; e < (rank + 1) * SLICE; e += THREADS) {
        const int token = e / BO, col = e % BO;
        const int64_t n = n0 + col;
        float v = sum_ranks(token * RS + col);
        if (token < M && n < N) {
            T *out = y + token * N + n;
            if constexpr (GLU) {
                const float g = an_load(an_store<T>(v)), u = an_load(an_store<T>(sum_ranks(token * RS + col + BO)));
                *out = an_store<T>(an_silu(g) * u);
            } else {
                if (bias) v += an_load(bias[n]);
                *out = an_store<T>(accumulate ? an_load(*out) + v : v);
            }
        }
    }
    if constexpr (S > 1) cooperative_groups::this_cluster().sync(); /* the others still read our tile */
}

/* The stages, their mbarriers, and 1024 bytes to align the first stage. */
template <int NT, int WN, int STAGES> constexpr int smem_bytes() { return STAGES * (16 * WN + 8 * NT) * 128 + 8 * STAGES + 1024; }

} // namespace decode_gemm

#ifndef AN_DECODE_GEMM_KERNEL_ONLY
namespace {

using decode_gemm::kernel;
using decode_gemm::smem_bytes;

/* The block: 4 row groups (64 rows of W), no in-block k split, 4 stages (bench/
 * gemm_decode_variants: 6 stages won the isolated gate|up GEMM but lost batch-8 and batch-32
 * decode steps end to end). */
constexpr int WN = 4, WK = 1, STAGES = 4, BN = 16 * WN;

template <typename T, int NT, int S, bool GLU>
cudaError_t launch(an_cuda_state *s, const T *x, int64_t M, int64_t K, const T *w, int64_t N, const T *bias,
                   bool accumulate, T *y) {
    constexpr int bytes = smem_bytes<NT, WN, STAGES>();
    auto *k = kernel<T, NT, WN, WK, S, STAGES, GLU>;
    void *fn = nullptr;
    cudaError_t err = cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (err == cudaSuccess) err = an_cuda_tensor_map_encoder(s, &fn);
    CUtensorMap wmap, xmap;
    const auto encode = (PFN_cuTensorMapEncodeTiled_v12000)fn;
    constexpr int BO = GLU ? BN / 2 : BN; /* output columns a tile */
    if (err == cudaSuccess) err = tma::encode_2d(encode, &wmap, w, GLU ? 2 * N : N, K, decode_gemm::BK, BO);
    if (err == cudaSuccess) err = tma::encode_2d(encode, &xmap, x, M, K, decode_gemm::BK, 8 * NT);
    if (err != cudaSuccess) return err;
    const int64_t tiles = (N + BO - 1) / BO;
    return an_launch_pdl_smem(s, k, dim3((unsigned)(tiles * S)), dim3(WN * WK * 32), (size_t)bytes, wmap, xmap, M, K, N,
                              bias, accumulate, y);
}

/* Cluster ranks splitting K for `tiles` tiles: enough blocks for every multiprocessor, each rank at
 * least 4 stages. */
int split_of(const an_cuda_state *s, int64_t tiles, int64_t K) {
    const int64_t chunks = (K + decode_gemm::BK - 1) / decode_gemm::BK;
    int split = 1;
    while (split < 8 && tiles * split < s->sm_count && chunks / (2 * split) >= 4) split *= 2;
    return split;
}

template <typename T, bool GLU>
cudaError_t launch_rows(an_cuda_state *s, const T *x, int64_t M, int64_t K, const T *w, int64_t N, const T *bias,
                        bool accumulate, T *y) {
    const int split = split_of(s, (N + (GLU ? BN / 2 : BN) - 1) / (GLU ? BN / 2 : BN), K);
#define AN_DECODE_GEMM_SPLIT(NT)                                                                       \
    switch (split) {                                                                                   \
    case 1: return launch<T, NT, 1, GLU>(s, x, M, K, w, N, bias, accumulate, y);                       \
    case 2: return launch<T, NT, 2, GLU>(s, x, M, K, w, N, bias, accumulate, y);                       \
    case 4: return launch<T, NT, 4, GLU>(s, x, M, K, w, N, bias, accumulate, y);                       \
    default: return launch<T, NT, 8, GLU>(s, x, M, K, w, N, bias, accumulate, y);                      \
    }
    if (M <= 16) AN_DECODE_GEMM_SPLIT(2)
    if (M <= 32) AN_DECODE_GEMM_SPLIT(4)
    AN_DECODE_GEMM_SPLIT(8)
#undef AN_DECODE_GEMM_SPLIT
}

an_status check_rows(an_ctx *ctx, const char *what, an_dtype dtype, const void *x, int64_t M, int64_t K, const void *w,
                     int64_t N) {
    AN_CHECK(ctx, dtype == AN_BF16 || dtype == AN_F16, AN_ERR_INPUT, "%s: no kernel for %s", what, an_dtype_name(dtype));
    AN_CHECK(ctx, M >= 1 && M <= AN_CUDA_DECODE_GEMM_MAX_ROWS && K >= 8 && K % 8 == 0 && N >= 1 && N <= INT32_MAX / 2 &&
                      (N + BN - 1) / BN * 8 <= INT32_MAX,
             AN_ERR_INPUT, "%s: %lld rows (1 to %d), K %lld (a multiple of 8), N %lld", what, (long long)M,
             AN_CUDA_DECODE_GEMM_MAX_ROWS, (long long)K, (long long)N);
    AN_CHECK(ctx, (uintptr_t)x % 16 == 0 && (uintptr_t)w % 16 == 0, AN_ERR_INPUT, "%s: x and W must be 16-byte aligned",
             what);
    return AN_OK;
}

} // namespace

/* Through the runtime: no link to the driver library. */
cudaError_t an_cuda_tensor_map_encoder(an_cuda_state *s, void **out) {
    if (!s->tensor_map_encode) {
        cudaDriverEntryPointQueryResult q;
        void *fn = nullptr;
        cudaError_t err = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &q);
        if (err == cudaSuccess && (q != cudaDriverEntryPointSuccess || !fn)) err = cudaErrorSymbolNotFound;
        if (err != cudaSuccess) return err;
        s->tensor_map_encode = fn;
    }
    *out = s->tensor_map_encode;
    return cudaSuccess;
}

extern "C" int an_cuda_decode_gemm_rule(an_dtype dtype, const void *x, int64_t M, int64_t K, const void *w) {
    return (dtype == AN_BF16 || dtype == AN_F16) && M > AN_CUDA_GEMV_RULE_ROWS && M <= AN_CUDA_DECODE_GEMM_RULE_ROWS &&
           K >= 8 && K % 8 == 0 && (uintptr_t)x % 16 == 0 && (uintptr_t)w % 16 == 0;
}

extern "C" an_status an_cuda_gemm_decode(an_ctx *ctx, an_dtype dtype, const void *x, int64_t M, int64_t K,
                                         const void *w, int64_t N, const void *bias, int accumulate, void *y) {
    AN_CUDA_STATE(ctx, s);
    AN_TRY(check_rows(ctx, "gemm_decode", dtype, x, M, K, w, N));
    cudaError_t err = dtype == AN_BF16
                          ? launch_rows<__nv_bfloat16, false>(s, (const __nv_bfloat16 *)x, M, K, (const __nv_bfloat16 *)w,
                                                              N, (const __nv_bfloat16 *)bias, accumulate != 0,
                                                              (__nv_bfloat16 *)y)
                          : launch_rows<__half, false>(s, (const __half *)x, M, K, (const __half *)w, N,
                                                       (const __half *)bias, accumulate != 0, (__half *)y);
    AN_CUDA_CHECK(ctx, err);
    return AN_OK;
}

extern "C" an_status an_cuda_gemm_decode_swiglu(an_ctx *ctx, an_dtype dtype, const void *x, int64_t M, int64_t K,
                                                const void *gate_up, int64_t N, void *y) {
    AN_CUDA_STATE(ctx, s);
    AN_TRY(check_rows(ctx, "gemm_decode_swiglu", dtype, x, M, K, gate_up, N));
    cudaError_t err = dtype == AN_BF16
                          ? launch_rows<__nv_bfloat16, true>(s, (const __nv_bfloat16 *)x, M, K,
                                                             (const __nv_bfloat16 *)gate_up, N, nullptr, false,
                                                             (__nv_bfloat16 *)y)
                          : launch_rows<__half, true>(s, (const __half *)x, M, K, (const __half *)gate_up, N, nullptr,
                                                      false, (__half *)y);
    AN_CUDA_CHECK(ctx, err);
    return AN_OK;
}
#endif
