/* gemm_decode_variants.cu — the batched-decode GEMM's block shape, chosen by measurement: y (M, N)
 * = x (M, K) W^T in bf16 at M = 3, 8, 16, 32, 64 for the 1.5B model's stacked decode projections
 * (q|k|v, o, gate|up, down, lm_head), kernels/gemm_decode.cu's kernel template (included with
 * AN_DECODE_GEMM_KERNEL_ONLY, launched with Programmatic Dependent Launch as the library does) at
 * several configurations next to cuBLASLt (its heuristic's first algorithm, as kernels/gemm.cu
 * runs it). Each is launched 300 times inside a CUDA graph over copies of W of over 600 MB in all,
 * so every read of W comes from HBM as in a decode step. Prints microseconds a call, GB/s of W,
 * the speed-up over cuBLASLt, and WRONG where a result disagrees with a plain reference kernel.
 * kernels/gemm_decode.cu took its block shape and kernels/cuda.h AN_CUDA_DECODE_GEMM_RULE_ROWS
 * from this (docs/performance.md).
 *
 *   bench/gemm_decode_variants      (a standalone CUDA program, not linked to anneal)
 *
 * Exits 1 on any CUDA or cuBLASLt error (a benchmark, not library code). */
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernel_shims.cuh" /* CK, bf, an_load, an_store */
__device__ __forceinline__ void an_pdl_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
__device__ __forceinline__ void an_pdl_trigger() { asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }
#include "cublaslt_plan.cuh" /* lt_plan, lt_run, lt_free */

#define AN_DECODE_GEMM_KERNEL_ONLY
#include "../kernels/gemm_decode.cu"

static cublasLtHandle_t lt;
static void *ws;
static int sms;

typedef void (*launch_fn)(const bf *, int, const bf *, bf *, int, int, cudaStream_t);

/* The library's split rule for a block of BN rows. */
static int split_for(int BN, int N, int K, int max_split) {
    int tiles = (N + BN - 1) / BN, chunks = (K + 63) / 64, split = 1;
    while (split < max_split && tiles * split < sms && chunks / (2 * split) >= 4) split *= 2;
    return split;
}

static PFN_cuTensorMapEncodeTiled_v12000 encoder;

template <int NT, int WN, int WK, int S, int STAGES>
static void launch_s(const bf *x, int M, const bf *w, bf *y, int N, int K, cudaStream_t st) {
    constexpr int bytes = decode_gemm::smem_bytes<NT, WN, STAGES>();
    auto *k = decode_gemm::kernel<bf, NT, WN, WK, S, STAGES>;
    CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
    CUtensorMap wmap, xmap;
    CK(tma::encode_2d(encoder, &wmap, w, N, K, decode_gemm::BK, 16 * WN));
    CK(tma::encode_2d(encoder, &xmap, x, M, K, decode_gemm::BK, 8 * NT));
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3((unsigned)(((N + 16 * WN - 1) / (16 * WN)) * S));
    cfg.blockDim = dim3(WN * WK * 32);
    cfg.dynamicSmemBytes = bytes;
    cfg.stream = st;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    CK(cudaLaunchKernelEx(&cfg, k, wmap, xmap, (int64_t)M, (int64_t)K, (int64_t)N, (const bf *)nullptr, false, y));
}

template <int NT, int WN, int WK, int STAGES, int MAXS>
static void launch_auto(const bf *x, int M, const bf *w, bf *y, int N, int K, cudaStream_t st) {
    switch (split_for(16 * WN, N, K, MAXS)) {
    case 1: return launch_s<NT, WN, WK, 1, STAGES>(x, M, w, y, N, K, st);
    case 2: return launch_s<NT, WN, WK, 2, STAGES>(x, M, w, y, N, K, st);
    case 4: return launch_s<NT, WN, WK, 4, STAGES>(x, M, w, y, N, K, st);
    default: return launch_s<NT, WN, WK, 8, STAGES>(x, M, w, y, N, K, st);
    }
}

struct Variant { const char *name; launch_fn f[3]; }; /* NT 2, 4, 8: M <= 16, 32, 64 */
#define V(WN, WK, ST, MAXS) {"wn" #WN " wk" #WK " st" #ST " s<=" #MAXS, \
    {launch_auto<2, WN, WK, ST, MAXS>, launch_auto<4, WN, WK, ST, MAXS>, launch_auto<8, WN, WK, ST, MAXS>}}
static Variant variants[] = {
    V(4, 1, 4, 8), /* the library's */
    V(4, 1, 6, 8), V(4, 1, 8, 8), V(4, 2, 6, 8), V(8, 1, 4, 8), V(8, 2, 4, 8), V(2, 1, 8, 8), V(4, 1, 6, 1),
    V(2, 2, 6, 8),
};

static float run_graph(cudaStream_t st, int reps, const std::vector<bf *> &W, const bf *x, bf *y, int M, int N, int K,
                       launch_fn f) {
    LtPlan plan;
    if (!f) plan = lt_plan(lt, M, N, K);
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
    for (int r = 0; r < reps; r++) {
        const bf *w = W[r % W.size()];
        if (!f) lt_run(lt, plan, x, w, y, ws, st);
        else f(x, M, w, y, N, K, st);
    }
    CK(cudaStreamEndCapture(st, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    CK(cudaGraphLaunch(ge, st));
    CK(cudaStreamSynchronize(st));
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    float best = 1e30f;
    for (int it = 0; it < 5; it++) {
        CK(cudaEventRecord(a, st));
        CK(cudaGraphLaunch(ge, st));
        CK(cudaEventRecord(b, st));
        CK(cudaEventSynchronize(b));
        float ms;
        CK(cudaEventElapsedTime(&ms, a, b));
        if (ms < best) best = ms;
    }
    CK(cudaGraphExecDestroy(ge));
    CK(cudaGraphDestroy(g));
    CK(cudaEventDestroy(a));
    CK(cudaEventDestroy(b));
    lt_free(plan);
    return best * 1000.f / reps;
}

__global__ void fill(bf *p, size_t n, uint32_t seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 2654435761u ^ seed;
        h ^= h >> 13, h *= 0x5bd1e995u, h ^= h >> 15;
        p[i] = __float2bfloat16(((h & 0xffff) / 65536.0f - 0.5f));
    }
}

__global__ void ref_rows(const bf *x, const bf *w, float *y, int M, int N, int K) {
    int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    for (int r = 0; r < M; r++) {
        float a = 0;
        for (int k = 0; k < K; k++) a += __bfloat162float(w[(size_t)n * K + k]) * __bfloat162float(x[(size_t)r * K + k]);
        y[(size_t)r * N + n] = a;
    }
}

struct Shape { const char *name; int N, K; };

int main(int argc, char **argv) {
    const bool quick = argc > 1 && strcmp(argv[1], "quick") == 0; /* the library's variant only */
    Shape shapes[] = {{"q|k|v 2048x1536", 2048, 1536}, {"o 1536x1536", 1536, 1536}, {"gate|up 17920x1536", 17920, 1536},
                      {"down 1536x8960", 1536, 8960}, {"lm_head 151936x1536", 151936, 1536}};
    const int rows[] = {3, 8, 16, 32, 64};
    cudaStream_t st;
    CK(cudaStreamCreate(&st));
    LT_CHECK(cublasLtCreate(&lt));
    CK(cudaMalloc(&ws, 32 << 20));
    cudaDeviceProp p;
    CK(cudaGetDeviceProperties(&p, 0));
    sms = p.multiProcessorCount;
    {
        cudaDriverEntryPointQueryResult q;
        void *fn = nullptr;
        CK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &q));
        encoder = (PFN_cuTensorMapEncodeTiled_v12000)fn;
    }
    printf("%s L2 %d MB SMs %d\n", p.name, p.l2CacheSize >> 20, sms);
    bf *x, *y;
    float *yr;
    CK(cudaMalloc(&x, 64 * 8960 * 2));
    CK(cudaMalloc(&y, (size_t)64 * 151936 * 2));
    CK(cudaMalloc(&yr, (size_t)64 * 151936 * 4));
    fill<<<1024, 256>>>(x, 64 * 8960, 7);
    for (auto &s : shapes) {
        size_t bytes = (size_t)s.N * s.K * 2;
        int copies = (int)((600ull << 20) / bytes) + 1;
        if (copies > 300) copies = 300;
        std::vector<bf *> W(copies);
        for (int i = 0; i < copies; i++) {
            CK(cudaMalloc(&W[i], bytes));
            fill<<<2048, 256>>>(W[i], bytes / 2, 100 + i);
        }
        CK(cudaDeviceSynchronize());
        const int reps = s.N > 100000 ? 30 : 300;
        for (int M : rows) {
            const int mi = M <= 16 ? 0 : M <= 32 ? 1 : 2;
            ref_rows<<<(s.N + 127) / 128, 128>>>(x, W[0], yr, M, s.N, s.K);
            CK(cudaGetLastError());
            std::vector<float> hr((size_t)M * s.N);
            std::vector<bf> hy((size_t)M * s.N);
            CK(cudaMemcpy(hr.data(), yr, hr.size() * 4, cudaMemcpyDeviceToHost));
            float tb = run_graph(st, reps, W, x, y, M, s.N, s.K, nullptr);
            printf("%-20s M %2d %7.2f MB  %-22s %8.2f us %6.0f GB/s\n", s.name, M, bytes / 1e6, "cublasLt", tb,
                   bytes / (tb * 1e3));
            for (auto &v : variants) {
                if (quick && &v != &variants[0]) continue;
                float t = run_graph(st, reps, W, x, y, M, s.N, s.K, v.f[mi]);
                CK(cudaMemset(y, 0xFF, (size_t)M * s.N * 2));
                v.f[mi](x, M, W[0], y, s.N, s.K, st);
                CK(cudaStreamSynchronize(st));
                CK(cudaMemcpy(hy.data(), y, hy.size() * 2, cudaMemcpyDeviceToHost));
                double worst = 0;
                for (size_t i = 0; i < hy.size(); i++) {
                    double d = fabs(__bfloat162float(hy[i]) - hr[i]) / (fabs(hr[i]) + 1.0);
                    if (!(d <= worst)) worst = d;
                }
                printf("%-20s M %2d %7.2f MB  %-22s %8.2f us %6.0f GB/s %5.2fx%s\n", s.name, M, bytes / 1e6, v.name, t,
                       bytes / (t * 1e3), tb / t, worst < 0.02 ? "" : "  WRONG");
            }
        }
        for (auto q : W) CK(cudaFree(q));
    }
    return 0;
}
