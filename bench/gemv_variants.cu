/* gemv_variants.cu — the decode GEMV's shape, chosen by measurement: y (1, N) = x (1, K) W^T in
 * bf16 for the 1.5B model's decode projections, timed for a grid of kernel variants (columns a
 * warp, 16-byte loads in flight a lane, warps a block, warps sharing one column's K, loads that skip
 * L1 or not) next to cuBLASLt, each launched 400 times inside a CUDA graph over enough copies of W
 * (over 600 MB) that every read comes from HBM, as in a decode step. Prints microseconds per call,
 * GB/s, and WRONG where a variant disagrees with a plain reference kernel. kernels/gemv.cu took
 * "2c u4 w4" for short rows and "1c u4 w8 s4" for rows of K >= 4096 from this (docs/performance.md).
 *
 *   bench/gemv_variants      (no arguments; a standalone CUDA program, not linked to anneal)
 *
 * Exits 1 on any CUDA or cuBLASLt error (a benchmark, not library code). */
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <cmath>
#include <cuda_bf16.h>
#include <cublasLt.h>

#include "cublaslt_plan.cuh" /* lt_plan, lt_run, lt_free */
#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e)); exit(1);} } while (0)
typedef __nv_bfloat16 bf;

__device__ __forceinline__ void unpack(const uint4 &v, float *f) {
    const uint32_t *u = (const uint32_t *)&v;
#pragma unroll
    for (int i = 0; i < 4; i++) { f[2*i] = __uint_as_float(u[i] << 16); f[2*i+1] = __uint_as_float(u[i] & 0xffff0000u); }
}
__device__ __forceinline__ uint4 ldg_stream(const uint4 *p) {
    uint4 r;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
    return r;
}

/* Each warp: COLS columns; a block: WARPS warps; SPLIT warps share a column group (K interleaved
 * by 16-byte packs); UNR packs a lane per pass; NC: loads that skip L1. */
template <int COLS, int UNR, int WARPS, int SPLIT, bool NC>
__global__ void __launch_bounds__(WARPS * 32) gv(const bf *x, const bf *w, bf *y, int N, int K) {
    __shared__ float part[WARPS][COLS];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int group = warp / SPLIT, s = warp % SPLIT;
    const int n0 = (blockIdx.x * (WARPS / SPLIT) + group) * COLS;
    const int nv = K / 8;
    const uint4 *xv = (const uint4 *)x;
    float acc[COLS];
#pragma unroll
    for (int c = 0; c < COLS; c++) acc[c] = 0.f;
    for (int base = s * 32 + lane; base < nv + 0; base += 32 * SPLIT * UNR) {
        uint4 wv[COLS][UNR], xr[UNR];
#pragma unroll
        for (int u = 0; u < UNR; u++) {
            int idx = base + u * 32 * SPLIT;
#pragma unroll
            for (int c = 0; c < COLS; c++) {
                const uint4 *p = (const uint4 *)(w + (size_t)(n0 + c) * K) + idx;
                wv[c][u] = (idx < nv && n0 + c < N) ? (NC ? ldg_stream(p) : __ldg(p)) : make_uint4(0, 0, 0, 0);
            }
            xr[u] = idx < nv ? __ldg(xv + idx) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < UNR; u++) {
            float xf[8];
            unpack(xr[u], xf);
#pragma unroll
            for (int c = 0; c < COLS; c++) {
                float wf[8];
                unpack(wv[c][u], wf);
#pragma unroll
                for (int j = 0; j < 8; j++) acc[c] = fmaf(wf[j], xf[j], acc[c]);
            }
        }
    }
#pragma unroll
    for (int c = 0; c < COLS; c++)
        for (int off = 16; off > 0; off /= 2) acc[c] += __shfl_xor_sync(0xffffffffu, acc[c], off);
    if (SPLIT == 1) {
        if (lane < COLS) {
            float v = 0;
#pragma unroll
            for (int c = 0; c < COLS; c++) if (c == lane) v = acc[c];
            if (n0 + lane < N) y[n0 + lane] = __float2bfloat16(v);
        }
    } else {
        if (lane == 0)
#pragma unroll
            for (int c = 0; c < COLS; c++) part[warp][c] = acc[c];
        __syncthreads();
        if (s == 0 && lane < COLS) {
            float v = 0;
            for (int t = 0; t < SPLIT; t++) v += part[group * SPLIT + t][lane];
            if (n0 + lane < N) y[n0 + lane] = __float2bfloat16(v);
        }
    }
}

struct Shape { const char *name; int N, K; };
typedef void (*launch_fn)(const bf *, const bf *, bf *, int, int, cudaStream_t);

template <int COLS, int UNR, int WARPS, int SPLIT, bool NC>
void L(const bf *x, const bf *w, bf *y, int N, int K, cudaStream_t st) {
    int per_block = (WARPS / SPLIT) * COLS;
    gv<COLS, UNR, WARPS, SPLIT, NC><<<(N + per_block - 1) / per_block, WARPS * 32, 0, st>>>(x, w, y, N, K);
}
struct Variant { const char *name; launch_fn f; };
#define V(C, U, W, S, NC) {#C "c u" #U " w" #W " s" #S " " #NC, L<C, U, W, S, NC>}
static Variant variants[] = {
    V(1, 4, 8, 1, false), V(1, 8, 8, 1, false), V(1, 8, 4, 1, false), V(2, 4, 8, 1, false), V(2, 4, 4, 1, false),
    V(4, 2, 4, 1, false), V(4, 4, 4, 1, false), V(2, 8, 4, 1, false), V(1, 8, 8, 1, true), V(2, 4, 4, 1, true),
    V(4, 2, 4, 1, true), V(1, 4, 8, 2, false), V(1, 4, 8, 4, false), V(2, 4, 8, 2, false), V(2, 4, 8, 4, false),
    V(1, 8, 8, 4, true), V(2, 4, 8, 4, true), V(4, 2, 8, 4, true), V(1, 4, 16, 8, false), V(2, 2, 8, 8, false),
};

static cublasLtHandle_t lt;
static void *ws;
static float run_graph(cudaStream_t st, int reps, const std::vector<bf *> &W, const bf *x, bf *y, int N, int K, launch_fn f, bool blas) {
    LtPlan plan;
    if (blas) plan = lt_plan(lt, 1, N, K);
    cudaGraph_t g; cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
    for (int r = 0; r < reps; r++) {
        const bf *w = W[r % W.size()];
        if (blas) lt_run(lt, plan, x, w, y, ws, st);
        else f(x, w, y, N, K, st);
    }
    CK(cudaStreamEndCapture(st, &g)); CK(cudaGraphInstantiate(&ge, g, 0));
    CK(cudaGraphLaunch(ge, st)); CK(cudaStreamSynchronize(st));
    cudaEvent_t a, b; CK(cudaEventCreate(&a)); CK(cudaEventCreate(&b));
    float best = 1e30f;
    for (int it = 0; it < 5; it++) {
        CK(cudaEventRecord(a, st)); CK(cudaGraphLaunch(ge, st)); CK(cudaEventRecord(b, st)); CK(cudaEventSynchronize(b));
        float ms; CK(cudaEventElapsedTime(&ms, a, b)); if (ms < best) best = ms;
    }
    CK(cudaGraphExecDestroy(ge)); CK(cudaGraphDestroy(g));
    lt_free(plan);
    return best * 1000.f / reps;
}

__global__ void fill(bf *p, size_t n, uint32_t seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 2654435761u ^ seed; h ^= h >> 13; h *= 0x5bd1e995u; h ^= h >> 15;
        p[i] = __float2bfloat16(((h & 0xffff) / 65536.0f - 0.5f));
    }
}
__global__ void ref(const bf *x, const bf *w, float *y, int N, int K) {
    int n = blockIdx.x * blockDim.x + threadIdx.x; if (n >= N) return;
    float a = 0; for (int k = 0; k < K; k++) a += __bfloat162float(w[(size_t)n * K + k]) * __bfloat162float(x[k]); y[n] = a;
}

int main() {
    Shape shapes[] = {{"q/o 1536x1536", 1536, 1536}, {"k/v 256x1536", 256, 1536}, {"qkv 2048x1536", 2048, 1536},
                      {"gate 8960x1536", 8960, 1536}, {"gate+up 17920x1536", 17920, 1536}, {"down 1536x8960", 1536, 8960},
                      {"lm_head 151936x1536", 151936, 1536}};
    cudaStream_t st; CK(cudaStreamCreate(&st)); LT_CHECK(cublasLtCreate(&lt)); CK(cudaMalloc(&ws, 32 << 20));
    bf *x, *y; float *yr; CK(cudaMalloc(&x, 16 << 20)); CK(cudaMalloc(&y, 16 << 20)); CK(cudaMalloc(&yr, 4 << 20));
    fill<<<1024, 256>>>(x, 8 << 20, 7);
    size_t free_b, tot; CK(cudaMemGetInfo(&free_b, &tot));
    cudaDeviceProp pr; CK(cudaGetDeviceProperties(&pr, 0)); printf("%s L2 %d MB SMs %d\n", pr.name, pr.l2CacheSize >> 20, pr.multiProcessorCount);
    // copy bandwidth reference
    { size_t nb = 512 << 20; void *a, *b; CK(cudaMalloc(&a, nb)); CK(cudaMalloc(&b, nb)); cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
      CK(cudaMemcpyAsync(b, a, nb, cudaMemcpyDeviceToDevice, st)); cudaEventRecord(e0, st);
      for (int i = 0; i < 10; i++) CK(cudaMemcpyAsync(b, a, nb, cudaMemcpyDeviceToDevice, st)); cudaEventRecord(e1, st); cudaEventSynchronize(e1);
      float ms; cudaEventElapsedTime(&ms, e0, e1); printf("copy %.0f GB/s (read+write)\n", 2.0 * nb * 10 / (ms * 1e6)); cudaFree(a); cudaFree(b); }
    for (auto &s : shapes) {
        size_t bytes = (size_t)s.N * s.K * 2;
        int copies = (int)((600ull << 20) / bytes) + 1; if (copies > 64) copies = 64;
        std::vector<bf *> W(copies);
        for (int i = 0; i < copies; i++) { CK(cudaMalloc(&W[i], bytes)); fill<<<2048, 256>>>(W[i], bytes / 2, 100 + i); }
        CK(cudaDeviceSynchronize());
        ref<<<(s.N + 127) / 128, 128>>>(x, W[0], yr, s.N, s.K);
        std::vector<float> hr(s.N); std::vector<bf> hy(s.N);
        CK(cudaMemcpy(hr.data(), yr, s.N * 4, cudaMemcpyDeviceToHost));
        int reps = 400;
        float tb = run_graph(st, reps, W, x, y, s.N, s.K, nullptr, true);
        printf("%-22s %8.2f MB  cublasLt        %7.2f us %7.0f GB/s\n", s.name, bytes / 1e6, tb, bytes / (tb * 1e3));
        for (auto &v : variants) {
            float t = run_graph(st, reps, W, x, y, s.N, s.K, v.f, false);
            // correctness on W[(reps-1) % copies]
            v.f(x, W[0], y, s.N, s.K, st); CK(cudaStreamSynchronize(st));
            CK(cudaMemcpy(hy.data(), y, s.N * 2, cudaMemcpyDeviceToHost));
            double worst = 0; for (int n = 0; n < s.N; n++) { double d = fabs(__bfloat162float(hy[n]) - hr[n]) / (fabs(hr[n]) + 1.0); if (!(d <= worst)) worst = d; }
            printf("%-22s %8.2f MB  %-15s %7.2f us %7.0f GB/s%s\n", s.name, bytes / 1e6, v.name, t, bytes / (t * 1e3), worst < 0.02 ? "" : "  WRONG");
        }
        for (auto p : W) CK(cudaFree(p));
    }
    return 0;
}
