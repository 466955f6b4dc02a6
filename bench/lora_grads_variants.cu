/* lora_grads_variants.cu — kernels/lora_grads.cu's stage shapes, chosen by measurement: the LoRA
 * q,v gradients of the 1.5B model's 8192 tokens (q 1536 and v 256 wide, rank 16, x 1536 wide) as
 * an_cuda_lora_grads launches them: d_down_kernel for both adapters (rows a block, dY's columns a
 * stage, stages), then thin_kernel over dB_q^T, dB_v^T and the stacked dA (stages, row splits) and
 * finish_kernel. (The first, cp.async version's figures are in docs/performance.md.) The kernel templates are included with AN_LORA_GRADS_KERNEL_ONLY. Each variant
 * runs 20 times after 5 warm-ups; prints the median microseconds and the GB/s of the operands read
 * once (dq, dv, x, B, the downs), and WRONG where a d_down differs from the first variant's bits or
 * a gradient from the library's split count's bits at the same splits (the sums' order depends
 * on the splits alone).
 *
 *   bench/lora_grads_variants      (a standalone CUDA program, not linked to anneal)
 *
 * Exits 1 on any CUDA error (a benchmark, not library code). */
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernel_shims.cuh" /* CK, bf, an_load, an_store */

#define AN_LORA_GRADS_KERNEL_ONLY
#include "../kernels/lora_grads.cu"

using namespace lora_grads;

static const int M = 8192, K = 1536, NQ = 1536, NV = 256, R = 16;

static bf *random_bf(size_t n, unsigned seed) {
    std::vector<bf> h(n);
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        h[i] = __float2bfloat16(((seed >> 8) / 16777216.0f) * 2.0f - 1.0f);
    }
    bf *d;
    CK(cudaMalloc(&d, n * sizeof(bf)));
    CK(cudaMemcpy(d, h.data(), n * sizeof(bf), cudaMemcpyHostToDevice));
    return d;
}

static std::vector<uint16_t> download(const bf *d, size_t n) {
    std::vector<uint16_t> h(n);
    CK(cudaMemcpy(h.data(), d, n * sizeof(bf), cudaMemcpyDeviceToHost));
    return h;
}

template <typename F> static double median_us(F &&f) {
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    for (int i = 0; i < 5; i++) f();
    std::vector<float> t;
    for (int i = 0; i < 20; i++) {
        CK(cudaEventRecord(a));
        f();
        CK(cudaEventRecord(b));
        CK(cudaEventSynchronize(b));
        float ms;
        CK(cudaEventElapsedTime(&ms, a, b));
        t.push_back(ms * 1000.0f);
    }
    CK(cudaGetLastError());
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

struct Bufs {
    bf *x, *dq, *dv, *bq, *bv, *downq, *downv, *ddq, *ddv, *gbq, *gbv, *gaq, *gav;
    float *partial;
};

static PFN_cuTensorMapEncodeTiled_v12000 encoder;

template <int BM_, int BK_, int ST_> static void down(const Bufs &b) {
    DownArgs a = {};
    CK(tma::encode_2d(encoder, &a.dy[0], b.dq, M, NQ, 64, BM_));
    CK(tma::encode_2d(encoder, &a.dy[1], b.dv, M, NV, 64, BM_));
    CK(tma::encode_2d(encoder, &a.b[0], b.bq, NQ, R, 16, BK_, false));
    CK(tma::encode_2d(encoder, &a.b[1], b.bv, NV, R, 16, BK_, false));
    a.d_down[0] = b.ddq, a.d_down[1] = b.ddv;
    a.n[0] = NQ, a.n[1] = NV, a.r[0] = a.r[1] = R, a.scale[0] = a.scale[1] = 2.0f;
    auto kern = d_down_kernel<bf, 16, BM_, BK_, ST_>;
    size_t bytes = down_smem<16, BM_, BK_, ST_>();
    CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
    kern<<<dim3(M / BM_, 2), BM_ * 2, bytes>>>(a, M);
}

static ThinArgs thin_args(const Bufs &b, int splits) {
    ThinArgs t = {};
    Job *j = t.job;
    CK(tma::encode_2d(encoder, &j[0].q, b.dq, M, NQ, 64, BK));
    CK(tma::encode_2d(encoder, &j[0].p[0], b.downq, M, R, 16, BK, false));
    j[0].out[0] = b.gbq, j[0].r[0] = R, j[0].parts = 1, j[0].n = NQ, j[0].transposed = 1, j[0].tile0 = 0;
    CK(tma::encode_2d(encoder, &j[1].q, b.dv, M, NV, 64, BK));
    CK(tma::encode_2d(encoder, &j[1].p[0], b.downv, M, R, 16, BK, false));
    j[1].out[0] = b.gbv, j[1].r[0] = R, j[1].parts = 1, j[1].n = NV, j[1].transposed = 1, j[1].tile0 = NQ / BN;
    CK(tma::encode_2d(encoder, &j[2].q, b.x, M, K, 64, BK));
    CK(tma::encode_2d(encoder, &j[2].p[0], b.ddq, M, R, 16, BK, false));
    CK(tma::encode_2d(encoder, &j[2].p[1], b.ddv, M, R, 16, BK, false));
    j[2].out[0] = b.gaq, j[2].out[1] = b.gav, j[2].r[0] = j[2].r[1] = R, j[2].off[1] = 16, j[2].parts = 2;
    j[2].n = K, j[2].tile0 = (NQ + NV) / BN;
    t.jobs = 3, t.tiles = (NQ + NV + K) / BN;
    split_rows(M, splits, &t);
    return t;
}

template <int ST_> static void thin(const Bufs &b, int splits) {
    ThinArgs t = thin_args(b, splits);
    auto kern = thin_kernel<bf, 32, ST_>;
    size_t bytes = thin_smem<32, ST_>();
    CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
    kern<<<dim3(t.tiles, t.splits), THREADS, bytes>>>(t, M, b.partial);
    finish_kernel<bf, 32><<<(t.tiles * 32 * BN + 255) / 256, 256>>>(t, b.partial);
}

int main() {
    void *fn = nullptr;
    cudaDriverEntryPointQueryResult q;
    CK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &q));
    encoder = (PFN_cuTensorMapEncodeTiled_v12000)fn;
    Bufs b;
    b.x = random_bf((size_t)M * K, 1), b.dq = random_bf((size_t)M * NQ, 2), b.dv = random_bf((size_t)M * NV, 3);
    b.bq = random_bf((size_t)NQ * R, 4), b.bv = random_bf((size_t)NV * R, 5);
    b.downq = random_bf((size_t)M * R, 6), b.downv = random_bf((size_t)M * R, 7);
    b.ddq = random_bf((size_t)M * R, 8), b.ddv = random_bf((size_t)M * R, 9);
    b.gbq = random_bf((size_t)NQ * R, 10), b.gbv = random_bf((size_t)NV * R, 11);
    b.gaq = random_bf((size_t)R * K, 12), b.gav = random_bf((size_t)R * K, 13);
    CK(cudaMalloc(&b.partial, (size_t)64 * 32 * 32 * BN * sizeof(float)));
    /* dq, dv, x, B, downs and d_downs read once */
    double bytes = 2.0 * ((double)M * (NQ + NV + K) + (NQ + NV) * R + 4.0 * M * R);

    printf("d_down_kernel (rows a block, columns a stage, stages): us, GB/s of dq + dv\n");
    std::vector<uint16_t> ref_q, ref_v;
    auto check_down = [&](const char *name, double us) {
        std::vector<uint16_t> q = download(b.ddq, (size_t)M * R), v = download(b.ddv, (size_t)M * R);
        if (ref_q.empty()) ref_q = q, ref_v = v;
        bool same = q == ref_q && v == ref_v;
        printf("  %-14s %7.1f us %6.0f GB/s%s\n", name, us, 2.0 * M * (NQ + NV) / us / 1e3, same ? "" : "  WRONG");
    };
#define DOWN(BM_, BK_, ST_) check_down(#BM_ "x" #BK_ " s" #ST_, median_us([&] { down<BM_, BK_, ST_>(b); }))
    DOWN(32, 128, 4);
    DOWN(64, 128, 4);
    DOWN(32, 128, 6);
    DOWN(64, 64, 4);
    DOWN(16, 128, 6);
    DOWN(32, 256, 3);
    DOWN(64, 256, 3);
    DOWN(128, 128, 3);

    printf("thin_kernel + finish_kernel (stages, splits): us, GB/s of dq + dv + x\n");
    for (int splits : {4, 8, 16}) {
        std::vector<uint16_t> rq, rv, raq, rav;
        auto check_thin = [&](const char *name, double us) {
            std::vector<uint16_t> q = download(b.gbq, (size_t)NQ * R), v = download(b.gbv, (size_t)NV * R);
            std::vector<uint16_t> aq = download(b.gaq, (size_t)R * K), av = download(b.gav, (size_t)R * K);
            if (rq.empty()) rq = q, rv = v, raq = aq, rav = av;
            bool same = q == rq && v == rv && aq == raq && av == rav;
            printf("  s%s splits %-3d %7.1f us %6.0f GB/s%s\n", name, splits, us, 2.0 * M * (NQ + NV + K) / us / 1e3,
                   same ? "" : "  WRONG");
        };
        check_thin("2", median_us([&] { thin<2>(b, splits); }));
        check_thin("3", median_us([&] { thin<3>(b, splits); }));
        check_thin("4", median_us([&] { thin<4>(b, splits); }));
        check_thin("6", median_us([&] { thin<6>(b, splits); }));
    }
    double us = median_us([&] {
        down<D_BM, D_BK, D_STAGES>(b);
        thin<STAGES>(b, SPLITS);
    });
    printf("the library's pair (d_down %dx%d s%d, thin s%d, %d splits): %.1f us, %.0f GB/s of every operand read once\n",
           D_BM, D_BK, D_STAGES, STAGES, SPLITS, us, bytes / us / 1e3);
    CK(cudaDeviceSynchronize());
    return 0;
}
