/* gemm_wgmma_variants.cu — kernels/gemm_wgmma.cu's kernel template (included with
 * AN_WGMMA_GEMM_KERNEL_ONLY) at several tile shapes next to cuBLASLt (its heuristic's first
 * algorithm, as kernels/gemm.cu runs it) on the training GEMMs of the 1.5B model at 8 x 1024
 * tokens, in bf16: D (M, N) = A (M, K) B^T with B (N, K), and the backward's dX = dY W with B
 * stored (K, N). Prints microseconds a call (median of 20 after 5 warm-ups), TFLOP/s, the ratio to
 * cuBLASLt, and WRONG where a result is further from cuBLASLt's than two units in the last place
 * of bf16 at the output's scale. A ragged 300 x 392 x 1096 is checked against a float64 host
 * reference first in both layouts. Then the two fused forms the library uses, against what they
 * replace: SWIGLU (gate, up and silu(gate) up from one tile of both projections) against
 * cuBLASLt's two GEMMs and a 16-byte-vector swiglu pass, and SWIGLU_BWD (dgate, dup from d act =
 * dY W_down and the tile's gate and up) against cuBLASLt's GEMM and the separate gradient pass;
 * both must give the same bits (the same kernels/silu.cuh formulas on the same rounded values).
 *
 * Variants named c2 run in thread-block clusters of two CTAs sharing B's tiles (multicast); those
 * named pp in ping-pong (each consumer warpgroup takes whole tiles in turn, its epilogue under the
 * other's MMAs).
 *
 *   bench/gemm_wgmma_variants      (a standalone CUDA program, not linked to anneal)
 *   WG_ONLY=A,B    only the plain shapes whose name starts with one of these (none: only the fused forms)
 *   WG_SUSTAIN=S   time each case over S seconds of calls back to back after half a second unmeasured,
 *                  as a step runs them (at the card's power cap), with the energy a call, the power
 *                  and the SM clock from NVML at each row's end (bench/nvml_meter.h)
 *   WG_INPUTS_KB=K the backward forms bring gate and up in at k slice K (default: the library's)
 *   WG_GROUP=R     rows of tiles that walk the columns together (tile_of; default the library's 8)
 *   WG_REPS=N      time N calls after min(N, 5) warm-ups (default 20; 1 for a profiler's run)
 *   WG_LT_ALGOS=N  also time cuBLASLt's first N heuristic algorithms on the plain shapes (each with
 *                  its configuration: tile, stages, k splits, cluster) and on the full fine-tune's weight
 *                  gradients, dW (M, N) = dY^T X with dY (K, M) and X (K, N) stored row-major (the
 *                  library takes the first), each compared with the first (other bits are reported,
 *                  not failed: another algorithm may sum in another order), then the kernel template
 *                  with A stored (K, M) (AT) at several tiles, checked against cuBLASLt's first
 * A loss chunk's logits with the row statistics (ROWSTATS: each row's running log-sum-exp per
 * column tile beside the logits, an_cuda_gemm_logits_stats) against cuBLASLt's plain GEMM (with
 * WG_ONLY unset, logits, or logits+ for these rows without the plain shapes' table).
 * Then sums of products into one output (the segments' form, an_cuda_gemm_segments) against
 * cuBLASLt's GEMM a pair adding into D and its one GEMM over the concatenated operands. Last, q, k
 * and v with LoRA on q and v in one launch (PROJ, an_cuda_gemm_projections; WG_ONLY unset, none or
 * proj...) against the cuBLASLt chain it replaces.
 *
 * Exits 1 on any CUDA or cuBLASLt error or wrong result (a benchmark, not library code). */
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e)); exit(1);} } while (0)
typedef __nv_bfloat16 bf;

#include "cublaslt_plan.cuh" /* lt_plan, lt_run, lt_free, lt_describe */
#include "nvml_meter.h"       /* Meter: the card's energy, clock and power-cap state */

#define AN_WGMMA_GEMM_KERNEL_ONLY
#include "../kernels/gemm_wgmma.cu"

/* tile_of's group for every launch here: WG_GROUP or the library's default */
static int group_rows() {
    static const int rows = getenv("WG_GROUP") ? atoi(getenv("WG_GROUP")) : wgmma_gemm::GROUP_ROWS;
    return rows > 0 ? rows : wgmma_gemm::GROUP_ROWS;
}

static cublasLtHandle_t lt;
static void *ws;
static int sms;
static PFN_cuTensorMapEncodeTiled_v12000 encoder;
static bool failed;

/* D = A B^T with cuBLASLt, or with bt D = A B for B (K, N) (bench/cublaslt_plan.cuh). */
static void lt_gemm(const bf *a, const bf *b, bf *d, int M, int N, int K, cudaStream_t st, bool bt = false,
                    float beta = 0.0f) {
    LtPlan p = lt_plan(lt, M, N, K, bt);
    lt_run(lt, p, a, b, d, ws, st, beta);
    lt_free(p);
}

/* One launch of the kernel template (clusters of CM CTAs): outputs out0..2, gate and up inputs in0,
 * in1 (the backward forms). */
template <int BN, int STAGES, int EPI, bool BT = false, int CM = 1, bool PP = false, bool AT = false>
static void wg_launch_segments(int segments, const bf *const *as, const int *ks, const bf *const *bs, const bf *b2,
                               const bf *in0, const bf *in1, bf *out0, bf *out1, bf *out2, int M, int N,
                               cudaStream_t st, float2 *stats = nullptr) {
    constexpr int bytes = wgmma_gemm::smem_bytes<BN, STAGES, EPI>();
    auto *k = wgmma_gemm::kernel<bf, BN, STAGES, EPI, BT, CM, PP, AT>;
    CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
    constexpr int TN = EPI == wgmma_gemm::SWIGLU ? BN / 2 : BN, BW = TN % 64 == 0 ? 64 : 32;
    CUtensorMap bm2, im0, im1, om0, om1, om2;
    wgmma_gemm::Operands ops;
    CK((wgmma_gemm::encode_operands<bf, BN, EPI, BT, CM, AT>(encoder, M, N, segments, as, ks, bs, &ops)));
    ops.group_rows = group_rows();
    CK(tma::encode_2d(encoder, &bm2, b2 ? b2 : bs[0], N, ks[0], 64, TN));
    CK(tma::encode_2d(encoder, &im0, in0 ? in0 : out0, M, N, 64, 64));
    CK(tma::encode_2d(encoder, &im1, in1 ? in1 : out0, M, N, 64, 64));
    CK(tma::encode_2d(encoder, &om0, out0, M, N, BW, 64));
    CK(tma::encode_2d(encoder, &om1, out1 ? out1 : out0, M, N, BW, 64));
    CK(tma::encode_2d(encoder, &om2, out2 ? out2 : out0, M, N, BW, 64));
    const int64_t tiles = (int64_t)((M + 128 * CM - 1) / (128 * CM)) * ((N + TN - 1) / TN);
    wgmma_gemm::Grid g;
    CK(wgmma_gemm::grid_of(k, CM, tiles, sms, bytes, st, &g));
    /* the backward forms' k slice for gate and up: the library's rule, or WG_INPUTS_KB */
    static const int inputs_kb = getenv("WG_INPUTS_KB") ? atoi(getenv("WG_INPUTS_KB")) : -1;
    const int nk = ops.end_kb[segments - 1];
    CK(cudaLaunchKernelEx(&g.config, k, ops, bm2, im0, im1, om0, om1, om2, M, N,
                          inputs_kb < 0 ? nk * wgmma_gemm::BWD_INPUTS_NUM / wgmma_gemm::BWD_INPUTS_DEN : inputs_kb,
                          stats));
}

/* One launch over one operand pair. */
template <int BN, int STAGES, int EPI, bool BT = false, int CM = 1, bool PP = false>
static void wg_launch(const bf *a, const bf *b, const bf *b2, const bf *in0, const bf *in1, bf *out0, bf *out1,
                      bf *out2, int M, int N, int K, cudaStream_t st) {
    wg_launch_segments<BN, STAGES, EPI, BT, CM, PP>(1, &a, &K, &b, b2, in0, in1, out0, out1, out2, M, N, st);
}

template <int BN, int STAGES, int EPI, bool BT = false, int CM = 1, bool PP = false>
static void wg_gemm(const bf *a, const bf *b, const bf *b2, bf *d, bf *d2, bf *d3, int M, int N, int K, cudaStream_t st) {
    wg_launch<BN, STAGES, EPI, BT, CM, PP>(a, b, b2, nullptr, nullptr, d, d2, d3, M, N, K, st);
}

/* dg, du = swiglu's gradient at (g, u) for d act = dy (M, K) w (K, N): the SWIGLU_BWD form; with act
 * not NULL the SWIGLU_BWD_ACT form, act = silu(g) u as well. */
template <int BN, int STAGES, int CM = 1, bool PP = false>
static void wg_swiglu_bwd(const bf *dy, const bf *w, const bf *g, const bf *u, bf *dg, bf *du, bf *act, int M, int N,
                          int K, cudaStream_t st) {
    if (act) wg_launch<BN, STAGES, wgmma_gemm::SWIGLU_BWD_ACT, true, CM, PP>(dy, w, nullptr, g, u, dg, du, act, M, N, K, st);
    else wg_launch<BN, STAGES, wgmma_gemm::SWIGLU_BWD, true, CM, PP>(dy, w, nullptr, g, u, dg, du, nullptr, M, N, K, st);
}

/* out = round(float(base) + down B^T) with the rank-R product in fp32: peft's order for an adapter's
 * output (PROJ's reference). */
__global__ void proj_ref(const bf *base, const bf *down, const bf *b, bf *out, int M, int n, int R) {
    const size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= (size_t)M * n) return;
    const size_t row = i / n, col = i % n;
    float sum = 0.0f;
    for (int t = 0; t < R; t++) sum += __bfloat162float(down[row * R + t]) * __bfloat162float(b[col * R + t]);
    out[i] = __float2bfloat16_rn(__bfloat162float(base[i]) + sum);
}

/* How many of n bf16 values differ in bits. */
static size_t differing(const bf *x, const bf *y, size_t n) {
    std::vector<uint16_t> a(n), b(n);
    CK(cudaMemcpy(a.data(), x, n * 2, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(b.data(), y, n * 2, cudaMemcpyDeviceToHost));
    size_t d = 0;
    for (size_t i = 0; i < n; i++) d += a[i] != b[i];
    return d;
}

/* One projection of PROJ's launch (an_cuda_projection's fields). */
struct BenchProj {
    const void *w, *bias, *down, *lora_b;
    int64_t n, r;
    void *out;
    const float *rope; /* none here */
    int64_t rope_d;
};

/* The count projections of x (M, K) side by side in one launch (PROJ, an_cuda_gemm_projections). */
template <int BN, int STAGES>
static void wg_projections(const bf *x, int M, int K, int count, const BenchProj *p, cudaStream_t st) {
    constexpr int bytes = wgmma_gemm::smem_bytes<BN, STAGES, wgmma_gemm::PROJ>();
    auto *k = wgmma_gemm::kernel<bf, BN, STAGES, wgmma_gemm::PROJ>;
    CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
    wgmma_gemm::Operands ops;
    CUtensorMap unused{}, om[wgmma_gemm::MAX_GROUPS] = {};
    int N = 0;
    CK((wgmma_gemm::encode_projections<bf, BN>(encoder, M, K, x, count, p, &ops, om, &N)));
    ops.group_rows = group_rows();
    wgmma_gemm::Grid g;
    CK(wgmma_gemm::grid_of(k, 1, (int64_t)((M + 127) / 128) * (N / BN), sms, bytes, st, &g));
    CK(cudaLaunchKernelEx(&g.config, k, ops, unused, unused, unused, om[0], om[1], om[2], M, N, 0, (float2 *)nullptr));
}

/* The separate swiglu gradient pass as elementwise.cu runs it: 8 elements a thread in 16-byte loads. */
__global__ void swiglu_bwd_ref(const bf *g, const bf *u, const bf *go, bf *dg, bf *du, int64_t n) {
    int64_t i = 8 * (blockIdx.x * (int64_t)blockDim.x + threadIdx.x);
    if (i + 8 > n) return;
    uint4 gv = *reinterpret_cast<const uint4 *>(g + i), uv = *reinterpret_cast<const uint4 *>(u + i);
    uint4 ov = *reinterpret_cast<const uint4 *>(go + i), dgv, duv;
    const bf *gp = reinterpret_cast<const bf *>(&gv), *up = reinterpret_cast<const bf *>(&uv);
    const bf *op = reinterpret_cast<const bf *>(&ov);
    bf *dgp = reinterpret_cast<bf *>(&dgv), *dup = reinterpret_cast<bf *>(&duv);
    for (int k = 0; k < 8; k++) {
        float gg = __bfloat162float(gp[k]), uu = __bfloat162float(up[k]), o = __bfloat162float(op[k]);
        float s = an_sigmoid(gg), silu = gg * s, dsilu = s * (1.0f + gg * (1.0f - s));
        dgp[k] = __float2bfloat16_rn(o * uu * dsilu);
        dup[k] = __float2bfloat16_rn(o * silu);
    }
    *reinterpret_cast<uint4 *>(dg + i) = dgv;
    *reinterpret_cast<uint4 *>(du + i) = duv;
}

/* The separate swiglu pass as elementwise.cu runs it: 8 elements a thread in 16-byte loads. */
__global__ void swiglu_ref(const bf *g, const bf *u, bf *out, int64_t n) {
    int64_t i = 8 * (blockIdx.x * (int64_t)blockDim.x + threadIdx.x);
    if (i + 8 > n) return;
    uint4 gv = *reinterpret_cast<const uint4 *>(g + i), uv = *reinterpret_cast<const uint4 *>(u + i), ov;
    const bf *gp = reinterpret_cast<const bf *>(&gv), *up = reinterpret_cast<const bf *>(&uv);
    bf *op = reinterpret_cast<bf *>(&ov);
    for (int k = 0; k < 8; k++) op[k] = __float2bfloat16_rn(an_silu(__bfloat162float(gp[k])) * __bfloat162float(up[k]));
    *reinterpret_cast<uint4 *>(out + i) = ov;
}

static void fill(bf *d, size_t n, unsigned seed, float scale) {
    std::vector<bf> h(n);
    srand(seed);
    for (size_t i = 0; i < n; i++) h[i] = __float2bfloat16(scale * ((float)rand() / RAND_MAX * 2.0f - 1.0f));
    CK(cudaMemcpy(d, h.data(), n * sizeof(bf), cudaMemcpyHostToDevice));
}

static std::vector<float> host(const bf *d, size_t n) {
    std::vector<bf> h(n);
    CK(cudaMemcpy(h.data(), d, n * sizeof(bf), cudaMemcpyDeviceToHost));
    std::vector<float> f(n);
    for (size_t i = 0; i < n; i++) f[i] = __bfloat162float(h[i]);
    return f;
}

/* max |x - ref| over the output's rms, in units of bf16's 2^-8 */
static double mismatch(const bf *x, const bf *ref, size_t n) {
    std::vector<float> a = host(x, n), b = host(ref, n);
    double ss = 0, worst = 0;
    for (size_t i = 0; i < n; i++) ss += (double)b[i] * b[i];
    double rms = sqrt(ss / n) + 1e-30;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - b[i]);
        if (!(e == e) || !(a[i] == a[i])) return 1e30;
        worst = std::max(worst, e);
    }
    return worst / rms * 256.0;
}

/* WG_SUSTAIN: the card's meter, and the last sustained measurement's figures for a row's end. */
static Meter meter;
static bool metered;
static char sustained_note[192];

/* f's calls back to back for WG_SUSTAIN seconds after half a second unmeasured (the card at its
 * power cap, as in a step): microseconds a call, with the millijoules a call, the mean power, the
 * median SM clock and the share of samples under the power cap in sustained_note. */
template <typename F> static double sustained_us(F f, cudaStream_t st, double seconds, double median_us) {
    const long warm = std::max(1L, (long)(0.5e6 / median_us)), calls = std::max(5L, (long)(seconds * 1e6 / median_us));
    for (long i = 0; i < warm; i++) f();
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    CK(cudaStreamSynchronize(st));
    unsigned long long mj0 = 0, mj1 = 0;
    bool energy = metered && meter_energy_mj(&meter, &mj0);
    CK(cudaEventRecord(e0, st));
    std::vector<unsigned> mhz;
    long capped = 0;
    for (long i = 0; i < calls; i++) {
        f();
        unsigned c;
        bool cap;
        if (metered && i % 8 == 7 && meter_sample(&meter, &c, &cap)) { /* the host runs ahead only a queue's depth */
            mhz.push_back(c);
            capped += cap;
        }
    }
    CK(cudaEventRecord(e1, st));
    CK(cudaEventSynchronize(e1));
    energy = energy && meter_energy_mj(&meter, &mj1);
    float ms;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    CK(cudaEventDestroy(e0));
    CK(cudaEventDestroy(e1));
    const double us = ms * 1000.0 / calls;
    std::sort(mhz.begin(), mhz.end());
    if (energy && !mhz.empty())
        snprintf(sustained_note, sizeof sustained_note,
                 "  [sustained %.1f s: %.1f us, %.1f mJ a call, %.0f W, SM %u MHz, capped %.0f%%]", ms / 1000.0, us,
                 (double)(mj1 - mj0) / calls, (double)(mj1 - mj0) / ms, mhz[mhz.size() / 2], 100.0 * capped / mhz.size());
    else
        snprintf(sustained_note, sizeof sustained_note, "  [sustained %.1f s: %.1f us a call, no meter]", ms / 1000.0, us);
    return us;
}

/* Microseconds a call: the median of WG_REPS timed calls, or with WG_SUSTAIN=S the mean over S
 * seconds of calls back to back (sustained_us). */
template <typename F> static double time_us(F f, cudaStream_t st) {
    static const double sustain = getenv("WG_SUSTAIN") ? atof(getenv("WG_SUSTAIN")) : 0.0;
    sustained_note[0] = 0;
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    static const int reps = getenv("WG_REPS") ? std::max(1, atoi(getenv("WG_REPS"))) : 20;
    for (int i = 0; i < std::min(reps, 5); i++) f();
    std::vector<float> t;
    for (int i = 0; i < reps; i++) {
        CK(cudaEventRecord(e0, st));
        f();
        CK(cudaEventRecord(e1, st));
        CK(cudaEventSynchronize(e1));
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        t.push_back(ms * 1000.0f);
    }
    std::sort(t.begin(), t.end());
    CK(cudaEventDestroy(e0));
    CK(cudaEventDestroy(e1));
    return sustain > 0 ? sustained_us(f, st, sustain, t[t.size() / 2]) : t[t.size() / 2];
}

typedef void (*wg_fn)(const bf *, const bf *, const bf *, bf *, bf *, bf *, int, int, int, cudaStream_t);
struct Variant { const char *name; wg_fn fn; };
static const Variant variants[] = {
    {"128x256 s3", wg_gemm<256, 3, wgmma_gemm::STORE>},
    {"128x192 s4", wg_gemm<192, 4, wgmma_gemm::STORE>},
    {"128x128 s5", wg_gemm<128, 5, wgmma_gemm::STORE>},
    {"128x256 s3 c2", wg_gemm<256, 3, wgmma_gemm::STORE, false, 2>},
    {"128x192 s4 c2", wg_gemm<192, 4, wgmma_gemm::STORE, false, 2>},
    {"128x128 s5 c2", wg_gemm<128, 5, wgmma_gemm::STORE, false, 2>},
    {"128x128 s5 pp", wg_gemm<128, 5, wgmma_gemm::STORE, false, 1, true>},
};
static const Variant nn_variants[] = {
    {"128x256 s3 B(K,N)", wg_gemm<256, 3, wgmma_gemm::STORE, true>},
    {"128x128 s5 B(K,N)", wg_gemm<128, 5, wgmma_gemm::STORE, true>},
    {"128x256 s3 B(K,N) c2", wg_gemm<256, 3, wgmma_gemm::STORE, true, 2>},
    {"128x128 s5 B(K,N) c2", wg_gemm<128, 5, wgmma_gemm::STORE, true, 2>},
    {"128x128 s5 B(K,N) pp", wg_gemm<128, 5, wgmma_gemm::STORE, true, 1, true>},
};

/* The largest |d - ref| / (|ref| + 1) over d (ref.size() elements on the device); NaN counts as 1e30. */
static double worst_vs_reference(const bf *d, const std::vector<double> &ref) {
    std::vector<float> got = host(d, ref.size());
    double worst = 0;
    for (size_t i = 0; i < got.size(); i++) {
        double e = fabs(got[i] - ref[i]) / (fabs(ref[i]) + 1.0);
        if (!(got[i] == got[i])) e = 1e30;
        worst = std::max(worst, e);
    }
    return worst;
}

/* The float64 product (M, N) of host copies of A, (M, K) or with at stored (K, M), and op(B): B^T
 * for B (N, K), or with bt B stored (K, N). */
static std::vector<double> host_product(const std::vector<float> &ha, const std::vector<float> &hb, int M, int N,
                                        int K, bool at, bool bt) {
    std::vector<double> ref((size_t)M * N);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0;
            for (int k = 0; k < K; k++)
                s += (double)(at ? ha[(size_t)k * M + i] : ha[(size_t)i * K + k]) *
                     (bt ? hb[(size_t)k * N + j] : hb[(size_t)j * K + k]);
            ref[(size_t)i * N + j] = s;
        }
    return ref;
}

/* The ragged shape against a float64 host reference (every variant). */
static void check_small(cudaStream_t st, bool bt) {
    const int M = 300, N = 392, K = 1096;
    bf *a, *b, *d;
    CK(cudaMalloc(&a, (size_t)M * K * 2));
    CK(cudaMalloc(&b, (size_t)N * K * 2));
    CK(cudaMalloc(&d, (size_t)M * N * 2));
    fill(a, (size_t)M * K, 1, 1.0f);
    fill(b, (size_t)N * K, 2, 1.0f);
    const std::vector<double> ref = host_product(host(a, (size_t)M * K), host(b, (size_t)N * K), M, N, K, false, bt);
    for (const Variant &v : bt ? std::vector<Variant>(std::begin(nn_variants), std::end(nn_variants))
                               : std::vector<Variant>(std::begin(variants), std::end(variants))) {
        CK(cudaMemset(d, 0xff, (size_t)M * N * 2)); /* NaN poison */
        v.fn(a, b, nullptr, d, nullptr, nullptr, M, N, K, st);
        CK(cudaStreamSynchronize(st));
        double worst = worst_vs_reference(d, ref);
        bool ok = worst <= 1.0 / 128;
        printf("check %-20s %s M %d N %d K %d: worst |err| / (|ref| + 1) %.3g %s\n", v.name, bt ? "A B  " : "A B^T", M, N, K, worst, ok ? "ok" : "WRONG");
        failed |= !ok;
    }
    CK(cudaFree(a));
    CK(cudaFree(b));
    CK(cudaFree(d));
}

/* One fused form's row: outputs outs[0 .. n) poisoned, one run checked against refs (two units in
 * the last place of bf16 at the output's scale), then timed against the reference's tl us. */
template <typename F>
static void fused_row(const char *tag, int M, int N, int K, const char *name, F run, bf *const *outs,
                      const bf *const *refs, const char *const *names, int n, size_t count, double tl, cudaStream_t st) {
    for (int i = 0; i < n; i++) CK(cudaMemset(outs[i], 0xff, count * 2));
    run();
    CK(cudaStreamSynchronize(st));
    char errs[128] = "";
    bool ok = true;
    for (int i = 0; i < n; i++) {
        double e = mismatch(outs[i], refs[i], count);
        ok &= e <= 2.0;
        snprintf(errs + strlen(errs), sizeof errs - strlen(errs), " %s %.2f", names[i], e);
    }
    double t = time_us(run, st);
    printf("%-8s %5d x %5d x %5d  %-28s %9.1f us  %.3fx  max err%s %s%s\n", tag, M, N, K, name, t, tl / t, errs,
           ok ? "" : "WRONG", sustained_note);
    failed |= !ok;
}

/* dW (M, N) = A^T B for A (K, M), B (K, N) row-major through cuBLASLt (column-major: dW^T (N, M) =
 * B^T (N, K) op_T(A^T (M, K))): the descriptors and the heuristic's first 16 algorithms, built once. */
struct LtDw {
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t lb, la, ld;
    cublasLtMatmulHeuristicResult_t h[16];
    int n = 0;
    LtDw(int M, int N, int K) {
        LT_CHECK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
        cublasOperation_t t = CUBLAS_OP_T;
        LT_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &t, sizeof t));
        LT_CHECK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, N, K, N));
        LT_CHECK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, M, K, M));
        LT_CHECK(cublasLtMatrixLayoutCreate(&ld, CUDA_R_16BF, N, M, N));
        cublasLtMatmulPreference_t pref;
        LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
        size_t wsz = LtPlan::WORKSPACE;
        LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsz, sizeof wsz));
        LT_CHECK(cublasLtMatmulAlgoGetHeuristic(lt, op, lb, la, ld, ld, pref, 16, h, &n));
        LT_CHECK(cublasLtMatmulPreferenceDestroy(pref));
    }
    ~LtDw() {
        for (cublasLtMatrixLayout_t l : {lb, la, ld}) LT_CHECK(cublasLtMatrixLayoutDestroy(l));
        LT_CHECK(cublasLtMatmulDescDestroy(op));
    }
    void run(const bf *a, const bf *b, bf *d, int index, cudaStream_t st) const {
        float alpha = 1.0f, beta = 0.0f;
        LT_CHECK(cublasLtMatmul(lt, op, &alpha, b, lb, a, la, &beta, d, ld, d, ld, &h[index].algo, ws, LtPlan::WORKSPACE,
                                st));
    }
};

/* dW (M, N) = A^T B for A (K, M), B (K, N) on the kernel template (A and B both MN-major). */
template <int BN, int STAGES, bool PP = false>
static void wg_dw(const bf *a, const bf *b, bf *d, int M, int N, int K, cudaStream_t st) {
    wg_launch_segments<BN, STAGES, wgmma_gemm::STORE, true, 1, PP, true>(1, &a, &K, &b, nullptr, nullptr, nullptr, d,
                                                                         nullptr, nullptr, M, N, st);
}

/* The weight-gradient GEMMs of a full fine-tune step with each of cuBLASLt's first `algos` algorithms,
 * then on the kernel template with A stored (K, M). */
static void dw_algorithms(int algos, cudaStream_t st) {
    { /* a ragged dW against a float64 host reference first: the M, N and K tails of the (K, M) A
       * (M a multiple of 8: a tensor map's rows are whole 16-byte units) */
        const int M = 296, N = 392, K = 1096;
        bf *a, *b, *d;
        CK(cudaMalloc(&a, (size_t)K * M * 2));
        CK(cudaMalloc(&b, (size_t)K * N * 2));
        CK(cudaMalloc(&d, (size_t)M * N * 2));
        fill(a, (size_t)K * M, 42, 1.0f);
        fill(b, (size_t)K * N, 43, 1.0f);
        const std::vector<double> ref = host_product(host(a, (size_t)K * M), host(b, (size_t)K * N), M, N, K, true, true);
        typedef void (*dw_fn)(const bf *, const bf *, bf *, int, int, int, cudaStream_t);
        const struct { const char *name; dw_fn fn; } ours[] = {
            {"128x256 s3", wg_dw<256, 3>}, {"128x128 s5 pp", wg_dw<128, 5, true>}};
        for (const auto &o : ours) {
            CK(cudaMemset(d, 0xff, (size_t)M * N * 2)); /* NaN poison */
            o.fn(a, b, d, M, N, K, st);
            CK(cudaStreamSynchronize(st));
            double worst = worst_vs_reference(d, ref);
            bool ok = worst <= 1.0 / 128;
            printf("check dW %-14s A^T B M %d N %d K %d: worst |err| / (|ref| + 1) %.3g %s\n", o.name, M, N, K, worst,
                   ok ? "ok" : "WRONG");
            failed |= !ok;
        }
        for (bf *p : {a, b, d}) CK(cudaFree(p));
    }
    struct Shape { const char *name; int M, N, K; };
    const Shape shapes[] = {{"dW gate", 8960, 1536, 8192}, {"dW down", 1536, 8960, 8192}, {"dW q/o", 1536, 1536, 8192},
                            {"dW k|v", 512, 1536, 8192}};
    for (const Shape &s : shapes) {
        bf *a, *b, *d, *ref;
        CK(cudaMalloc(&a, (size_t)s.K * s.M * 2));
        CK(cudaMalloc(&b, (size_t)s.K * s.N * 2));
        CK(cudaMalloc(&d, (size_t)s.M * s.N * 2));
        CK(cudaMalloc(&ref, (size_t)s.M * s.N * 2));
        fill(a, (size_t)s.K * s.M, 40, 1.0f);
        fill(b, (size_t)s.K * s.N, 41, 1.0f);
        const double flop = 2.0 * s.M * s.N * s.K;
        const LtDw plan(s.M, s.N, s.K);
        if (plan.n < 1) {
            printf("%-8s no cuBLASLt algorithm\n", s.name);
            failed = true;
            for (bf *p : {a, b, d, ref}) CK(cudaFree(p));
            continue;
        }
        /* the reference: the first algorithm (the library's), poisoned first; our kernels below check it
         * independently (a shape where they disagree prints WRONG) */
        CK(cudaMemset(ref, 0xff, (size_t)s.M * s.N * 2));
        plan.run(a, b, ref, 0, st);
        for (int i = 0; i < algos && i < plan.n; i++) {
            CK(cudaMemset(d, 0xff, (size_t)s.M * s.N * 2));
            plan.run(a, b, d, i, st);
            CK(cudaStreamSynchronize(st));
            double mis = mismatch(d, ref, (size_t)s.M * s.N);
            double t = time_us([&] { plan.run(a, b, d, i, st); }, st);
            /* another algorithm may sum in another order (split k): its bits are reported, not failed */
            printf("%-8s %5d x %5d x %5d  cublasLt algorithm %2d of %2d %9.1f us %6.0f TFLOP/s  ", s.name, s.M, s.N, s.K,
                   i, plan.n, t, flop / t / 1e6);
            if (i == 0) printf("(the reference)%s\n", sustained_note);
            else printf("max err %.2f ulp-of-rms vs the first%s%s\n", mis, mis <= 2.0 ? "" : " (other bits)", sustained_note);
            failed |= !(mis == mis); /* NaN: a launch that wrote nothing */
        }
        typedef void (*dw_fn)(const bf *, const bf *, bf *, int, int, int, cudaStream_t);
        const struct { const char *name; dw_fn fn; } ours[] = {
            {"128x256 s3", wg_dw<256, 3>}, {"128x192 s4", wg_dw<192, 4>}, {"128x128 s5", wg_dw<128, 5>},
            {"128x128 s6", wg_dw<128, 6>}, {"128x128 s5 pp", wg_dw<128, 5, true>}, {"128x128 s6 pp", wg_dw<128, 6, true>},
            {"128x128 s4 pp", wg_dw<128, 4, true>}};
        for (const auto &o : ours) {
            CK(cudaMemset(d, 0xff, (size_t)s.M * s.N * 2));
            o.fn(a, b, d, s.M, s.N, s.K, st);
            CK(cudaStreamSynchronize(st));
            double mis = mismatch(d, ref, (size_t)s.M * s.N);
            double t = time_us([&] { o.fn(a, b, d, s.M, s.N, s.K, st); }, st);
            printf("%-8s %5d x %5d x %5d  ours %-18s %9.1f us %6.0f TFLOP/s  max err %.2f ulp-of-rms vs cuBLASLt %s%s\n",
                   s.name, s.M, s.N, s.K, o.name, t, flop / t / 1e6, mis, mis <= 2.0 ? "" : "WRONG", sustained_note);
            failed |= mis > 2.0;
        }
        for (bf *p : {a, b, d, ref}) CK(cudaFree(p));
    }
}

int main() {
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    LT_CHECK(cublasLtCreate(&lt));
    CK(cudaMalloc(&ws, 32 << 20));
    cudaDriverEntryPointQueryResult q;
    void *fn = nullptr;
    CK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &q));
    encoder = (PFN_cuTensorMapEncodeTiled_v12000)fn;
    cudaStream_t st;
    CK(cudaStreamCreate(&st));
    check_small(st, false);
    check_small(st, true);
    if (getenv("WG_SUSTAIN")) {
        char bus[32], why[160];
        CK(cudaDeviceGetPCIBusId(bus, sizeof bus, 0));
        metered = meter_open(&meter, bus, why, sizeof why);
        if (!metered) printf("WG_SUSTAIN: times only (%s)\n", why);
    }
    if (getenv("WG_LT_ALGOS")) dw_algorithms(atoi(getenv("WG_LT_ALGOS")), st);

    const char *only = getenv("WG_ONLY"); /* comma-separated prefixes of the plain shapes ("none": only the fused forms) */
    /* whether an item of WG_ONLY starts name (prefix_of_item false) or starts with name (true) */
    auto listed = [&](const char *name, bool prefix_of_item) {
        for (const char *item = only; item && *item;) {
            const size_t n = strcspn(item, ",");
            if (prefix_of_item ? n >= strlen(name) && !strncmp(item, name, strlen(name)) : !strncmp(name, item, n))
                return true;
            item += n + (item[n] == ',');
        }
        return false;
    };
    /* lt_only: cuBLASLt's algorithms alone. A loss chunk's dX through the head (dh, K 151936) needs
     * k split over blocks, which the kernel template lacks (one tile's whole K: 0.53-0.81x); its
     * fp32 sums in another order also differ from cuBLASLt's split ones by ~5 units of bf16 at the
     * output's rms, as cuBLASLt's own algorithms do among themselves, past this check's 2 */
    struct Shape { const char *name; int M, N, K; bool bt, lt_only; };
    const Shape shapes[] = {
        {"gate|up", 8192, 17920, 1536, false, false}, {"gate", 8192, 8960, 1536, false, false},
        {"down", 8192, 1536, 8960, false, false},     {"q / o", 8192, 1536, 1536, false, false},
        {"k|v", 8192, 512, 1536, false, false},       {"8192^3", 8192, 8192, 8192, false, false},
        {"dX down", 8192, 8960, 1536, true, false},   {"dX g|u", 8192, 1536, 17920, true, false},
        {"dX q", 8192, 1536, 1536, true, false},      {"logits", 1024, 151936, 1536, false, false},
        {"logits4k", 4096, 151936, 1536, false, false}, {"dh", 1024, 1536, 151936, true, true},
    };
    const int lt_algos = getenv("WG_LT_ALGOS") ? atoi(getenv("WG_LT_ALGOS")) : 0;
    for (const Shape &s : shapes) {
        if (only && !listed(s.name, false)) continue;
        bf *a, *b, *d, *ref;
        CK(cudaMalloc(&a, (size_t)s.M * s.K * 2));
        CK(cudaMalloc(&b, (size_t)s.N * s.K * 2));
        CK(cudaMalloc(&d, (size_t)s.M * s.N * 2));
        CK(cudaMalloc(&ref, (size_t)s.M * s.N * 2));
        fill(a, (size_t)s.M * s.K, 3, 1.0f);
        fill(b, (size_t)s.N * s.K, 4, 0.05f);
        const double flop = 2.0 * s.M * s.N * s.K;
        lt_gemm(a, b, ref, s.M, s.N, s.K, st, s.bt);
        int offered = 0;
        LtPlan first = lt_plan(lt, s.M, s.N, s.K, s.bt, 0, &offered);
        char config[96];
        lt_describe(first.algo, config, sizeof config);
        double tl = time_us([&] { lt_run(lt, first, a, b, ref, ws, st); }, st);
        printf("%-8s %5d x %5d x %5d  %-20s %9.1f us %6.0f TFLOP/s  (%s)%s\n", s.name, s.M, s.N, s.K, "cublasLt", tl,
               flop / tl / 1e6, config, sustained_note);
        lt_free(first);
        /* WG_LT_ALGOS=N: the heuristic's next algorithms (the library runs the first) */
        for (int i = 1; i < lt_algos && i < offered; i++) {
            LtPlan p = lt_plan(lt, s.M, s.N, s.K, s.bt, i);
            lt_describe(p.algo, config, sizeof config);
            CK(cudaMemset(d, 0xff, (size_t)s.M * s.N * 2));
            lt_run(lt, p, a, b, d, ws, st);
            CK(cudaStreamSynchronize(st));
            double mis = mismatch(d, ref, (size_t)s.M * s.N);
            double t = time_us([&] { lt_run(lt, p, a, b, d, ws, st); }, st);
            printf("%-8s %5d x %5d x %5d  cublasLt algo %2d/%2d %9.1f us %6.0f TFLOP/s  %.3fx  (%s) err %.2f%s\n", s.name,
                   s.M, s.N, s.K, i, offered, t, flop / t / 1e6, tl / t, config, mis, sustained_note);
            failed |= !(mis == mis);
            lt_free(p);
        }
        for (const Variant &v : s.lt_only ? std::vector<Variant>()
                                : s.bt    ? std::vector<Variant>(std::begin(nn_variants), std::end(nn_variants))
                                          : std::vector<Variant>(std::begin(variants), std::end(variants))) {
            CK(cudaMemset(d, 0xff, (size_t)s.M * s.N * 2));
            v.fn(a, b, nullptr, d, nullptr, nullptr, s.M, s.N, s.K, st);
            CK(cudaStreamSynchronize(st));
            double mis = mismatch(d, ref, (size_t)s.M * s.N);
            double t = time_us([&] { v.fn(a, b, nullptr, d, nullptr, nullptr, s.M, s.N, s.K, st); }, st);
            printf("%-8s %5d x %5d x %5d  %-20s %9.1f us %6.0f TFLOP/s  %.3fx  max err %.2f ulp-of-rms %s%s\n", s.name,
                   s.M, s.N, s.K, v.name, t, flop / t / 1e6, tl / t, mis, mis <= 2.0 ? "" : "WRONG", sustained_note);
            failed |= mis > 2.0;
        }
        CK(cudaFree(a));
        CK(cudaFree(b));
        CK(cudaFree(d));
        CK(cudaFree(ref));
    }

    /* a loss chunk's logits with each row's running log-sum-exp per column tile (ROWSTATS, the
     * library's an_cuda_gemm_logits_stats) against cuBLASLt's plain GEMM */
    if (!only || listed("logits", true))
        for (int M : {1024, 4096}) {
            const int N = 151936, K = 1536, tiles = (N + 191) / 192;
            bf *x, *w, *d, *ref;
            float2 *stats;
            CK(cudaMalloc(&x, (size_t)M * K * 2));
            CK(cudaMalloc(&w, (size_t)N * K * 2));
            CK(cudaMalloc(&d, (size_t)M * N * 2));
            CK(cudaMalloc(&ref, (size_t)M * N * 2));
            CK(cudaMalloc(&stats, (size_t)M * tiles * sizeof(float2)));
            fill(x, (size_t)M * K, 12, 1.0f);
            fill(w, (size_t)N * K, 13, 0.05f);
            lt_gemm(x, w, ref, M, N, K, st);
            double tl = time_us([&] { lt_gemm(x, w, ref, M, N, K, st); }, st);
            auto run = [&] {
                wg_launch_segments<192, 4, wgmma_gemm::ROWSTATS>(1, &x, &K, &w, nullptr, nullptr, nullptr, d, nullptr,
                                                                 nullptr, M, N, st, stats);
            };
            CK(cudaMemset(d, 0xff, (size_t)M * N * 2));
            run();
            CK(cudaStreamSynchronize(st));
            double mis = mismatch(d, ref, (size_t)M * N), t = time_us(run, st);
            printf("logits+  %5d x %5d x %5d  cublasLt %9.1f us, 128x192 s4 with row stats %9.1f us  %.3fx  max err %.2f %s\n",
                   M, N, K, tl, t, tl / t, mis, mis <= 2.0 ? "" : "WRONG");
            failed |= mis > 2.0;
            for (void *p : {(void *)x, (void *)w, (void *)d, (void *)ref, (void *)stats}) CK(cudaFree(p));
        }

    /* the swiglu epilogue: g, u and silu(g) u of the training MLP's gate and up projections */
    {
        const int M = 8192, N = 8960, K = 1536;
        const size_t out = (size_t)M * N;
        bf *x, *wg, *wu, *g, *u, *act, *rg, *ru, *ract;
        CK(cudaMalloc(&x, (size_t)M * K * 2));
        CK(cudaMalloc(&wg, (size_t)N * K * 2));
        CK(cudaMalloc(&wu, (size_t)N * K * 2));
        for (bf **p : {&g, &u, &act, &rg, &ru, &ract}) CK(cudaMalloc(p, out * 2));
        fill(x, (size_t)M * K, 5, 1.0f);
        fill(wg, (size_t)N * K, 6, 0.05f);
        fill(wu, (size_t)N * K, 7, 0.05f);
        auto reference = [&] {
            lt_gemm(x, wg, rg, M, N, K, st);
            lt_gemm(x, wu, ru, M, N, K, st);
            swiglu_ref<<<(unsigned)((out / 8 + 255) / 256), 256, 0, st>>>(rg, ru, ract, (int64_t)out);
        };
        reference();
        double tl = time_us(reference, st);
        printf("swiglu   %5d x %5d x %5d  %-20s %9.1f us%s\n", M, N, K, "cublasLt x2 + pass", tl, sustained_note);
        typedef void (*fused_fn)(const bf *, const bf *, const bf *, bf *, bf *, bf *, int, int, int, cudaStream_t);
        const struct { const char *name; fused_fn fn; } fused[] = {
            {"128x128 s5 (the library's)", wg_gemm<128, 5, wgmma_gemm::SWIGLU>},
            {"128x128 s5 c2", wg_gemm<128, 5, wgmma_gemm::SWIGLU, false, 2>},
            {"128x128 s4", wg_gemm<128, 4, wgmma_gemm::SWIGLU>},
            {"128x128 s5 pp", wg_gemm<128, 5, wgmma_gemm::SWIGLU, false, 1, true>},
            {"128x192 s3", wg_gemm<192, 3, wgmma_gemm::SWIGLU>},
        };
        bf *const outs[] = {g, u, act}, *const refs[] = {rg, ru, ract};
        const char *const names[] = {"g", "u", "act"};
        for (const auto &f : fused)
            fused_row("swiglu", M, N, K, f.name, [&] { f.fn(x, wg, wu, g, u, act, M, N, K, st); }, outs, refs, names, 3,
                      out, tl, st);
    }
    /* the swiglu gradient epilogue: dg, du from d act = dY W_down, g and u (the training MLP's
     * backward); a ragged shape first (tiles cut at M and N, each half of a tile's gate and up
     * landing on its own barrier), then the MLP's */
    const int bwd_shapes[2][3] = {{300, 392, 1096}, {8192, 8960, 1536}};
    for (const auto &shape : bwd_shapes) {
        const int M = shape[0], N = shape[1], K = shape[2];
        const size_t out = (size_t)M * N;
        bf *dy, *w, *g, *u, *dg, *du, *dact, *rdg, *rdu;
        CK(cudaMalloc(&dy, (size_t)M * K * 2));
        CK(cudaMalloc(&w, (size_t)K * N * 2));
        for (bf **p : {&g, &u, &dg, &du, &dact, &rdg, &rdu}) CK(cudaMalloc(p, out * 2));
        fill(dy, (size_t)M * K, 8, 1.0f);
        fill(w, (size_t)K * N, 9, 0.05f);
        fill(g, out, 10, 4.0f);
        fill(u, out, 11, 2.0f);
        auto reference = [&] {
            lt_gemm(dy, w, dact, M, N, K, st, true);
            swiglu_bwd_ref<<<(unsigned)((out / 8 + 255) / 256), 256, 0, st>>>(g, u, dact, rdg, rdu, (int64_t)out);
        };
        reference();
        double tl = time_us(reference, st);
        printf("swiglu'  %5d x %5d x %5d  %-24s %9.1f us%s\n", M, N, K, "cublasLt + pass", tl, sustained_note);
        typedef void (*bwd_fn)(const bf *, const bf *, const bf *, const bf *, bf *, bf *, bf *, int, int, int,
                               cudaStream_t);
        const struct { const char *name; bwd_fn fn; } fused[] = {
            {"128x128 s5 pp (the library's)", wg_swiglu_bwd<128, 5, 1, true>},
            {"128x128 s4 pp", wg_swiglu_bwd<128, 4, 1, true>},
            {"128x128 s5", wg_swiglu_bwd<128, 5>},
            {"128x128 s5 c2", wg_swiglu_bwd<128, 5, 2>},
            {"128x128 s4", wg_swiglu_bwd<128, 4>},
            {"128x192 s3", wg_swiglu_bwd<192, 3>},
            {"128x256 s2", wg_swiglu_bwd<256, 2>},
        };
        bf *act, *ract;
        CK(cudaMalloc(&act, out * 2));
        CK(cudaMalloc(&ract, out * 2));
        bf *const outs[] = {dg, du, act}, *const refs[] = {rdg, rdu, ract};
        const char *const names[] = {"dg", "du", "act"};
        for (const auto &f : fused)
            fused_row("swiglu'", M, N, K, f.name, [&] { f.fn(dy, w, g, u, dg, du, nullptr, M, N, K, st); }, outs, refs,
                      names, 2, out, tl, st);
        /* with act as well (a trained down projection's dW reads it): against the same plus the swiglu pass */
        auto reference_act = [&] {
            reference();
            swiglu_ref<<<(unsigned)((out / 8 + 255) / 256), 256, 0, st>>>(g, u, ract, (int64_t)out);
        };
        reference_act();
        double tla = time_us(reference_act, st);
        printf("swiglu'  %5d x %5d x %5d  %-24s %9.1f us\n", M, N, K, "+ act: cublasLt + 2 passes", tla);
        const struct { const char *name; bwd_fn fn; } with_act[] = {
            {"+ act 128x128 s4 pp (library)", wg_swiglu_bwd<128, 4, 1, true>},
            {"+ act 128x128 s4", wg_swiglu_bwd<128, 4>},
            {"+ act 128x128 s4 c2", wg_swiglu_bwd<128, 4, 2>},
        };
        for (const auto &f : with_act)
            fused_row("swiglu'", M, N, K, f.name, [&] { f.fn(dy, w, g, u, dg, du, act, M, N, K, st); }, outs, refs,
                      names, 3, out, tla, st);
        for (bf *p : {dy, w, g, u, dg, du, dact, rdg, rdu, act, ract}) CK(cudaFree(p));
    }
    /* sums of products into one output (an_cuda_gemm_segments): one launch over the operand pairs
     * against cuBLASLt's GEMM a pair, each adding into D (the library's path today), and cuBLASLt's one
     * GEMM over the concatenated operands (the same sum, the reference) */
    {
        struct SumCase { const char *name; int M, N, segments; int k[wgmma_gemm::MAX_SEGMENTS]; bool bt; };
        const SumCase cases[] = {
            {"dX gate|up: dg Wg + du Wu", 8192, 1536, 2, {8960, 8960}, true},
            {"dX q,k,v + q,v LoRA", 8192, 1536, 5, {1536, 256, 256, 16, 16}, true},
            {"q + its LoRA B", 8192, 1536, 2, {1536, 16}, false},
            {"v + its LoRA B", 8192, 256, 2, {1536, 16}, false},
        };
        for (const SumCase &c : cases) {
            int ksum = 0;
            bf *a[wgmma_gemm::MAX_SEGMENTS], *b[wgmma_gemm::MAX_SEGMENTS], *acat, *bcat, *d, *ref, *chain;
            for (int i = 0; i < c.segments; i++) {
                CK(cudaMalloc(&a[i], (size_t)c.M * c.k[i] * 2));
                CK(cudaMalloc(&b[i], (size_t)c.N * c.k[i] * 2));
                fill(a[i], (size_t)c.M * c.k[i], 20 + i, 1.0f);
                fill(b[i], (size_t)c.N * c.k[i], 30 + i, 0.05f);
                ksum += c.k[i];
            }
            CK(cudaMalloc(&acat, (size_t)c.M * ksum * 2));
            CK(cudaMalloc(&bcat, (size_t)c.N * ksum * 2));
            for (bf **p : {&d, &ref, &chain}) CK(cudaMalloc(p, (size_t)c.M * c.N * 2));
            for (int i = 0, off = 0; i < c.segments; off += c.k[i], i++) { /* A (M, sum K) and B stacked */
                CK(cudaMemcpy2D(acat + off, (size_t)ksum * 2, a[i], (size_t)c.k[i] * 2, (size_t)c.k[i] * 2, c.M,
                                cudaMemcpyDeviceToDevice));
                if (c.bt) CK(cudaMemcpy(bcat + (size_t)off * c.N, b[i], (size_t)c.k[i] * c.N * 2, cudaMemcpyDeviceToDevice));
                else CK(cudaMemcpy2D(bcat + off, (size_t)ksum * 2, b[i], (size_t)c.k[i] * 2, (size_t)c.k[i] * 2, c.N,
                                     cudaMemcpyDeviceToDevice));
            }
            const double flop = 2.0 * c.M * c.N * ksum;
            auto cat = [&] { lt_gemm(acat, bcat, ref, c.M, c.N, ksum, st, c.bt); };
            auto chained = [&] {
                for (int i = 0; i < c.segments; i++) lt_gemm(a[i], b[i], chain, c.M, c.N, c.k[i], st, c.bt, i ? 1.0f : 0.0f);
            };
            const bf *const *ca = a, *const *cb = b;
            auto ours = [&] {
                if (c.bt) wg_launch_segments<256, 3, wgmma_gemm::STORE, true>(c.segments, ca, c.k, cb, nullptr, nullptr,
                                                                               nullptr, d, nullptr, nullptr, c.M, c.N, st);
                else wg_launch_segments<256, 3, wgmma_gemm::STORE, false>(c.segments, ca, c.k, cb, nullptr, nullptr,
                                                                           nullptr, d, nullptr, nullptr, c.M, c.N, st);
            };
            cat();
            chained();
            CK(cudaMemset(d, 0xff, (size_t)c.M * c.N * 2));
            ours();
            CK(cudaStreamSynchronize(st));
            double mis = mismatch(d, ref, (size_t)c.M * c.N), mis_chain = mismatch(chain, ref, (size_t)c.M * c.N);
            double t_chain = time_us(chained, st), t_cat = time_us(cat, st), t = time_us(ours, st);
            bool ok = mis <= 2.0;
            printf("sum      %-26s %5d x %5d x %5d  cuBLASLt a pair %8.1f us, over the concatenation %8.1f us, "
                   "one launch %8.1f us (%4.0f TFLOP/s, %.3fx the pairs)  max err %.2f (pairs %.2f) ulp-of-rms %s\n",
                   c.name, c.M, c.N, ksum, t_chain, t_cat, t, flop / t / 1e6, t_chain / t, mis, mis_chain,
                   ok ? "" : "WRONG");
            failed |= !ok;
            for (int i = 0; i < c.segments; i++) {
                CK(cudaFree(a[i]));
                CK(cudaFree(b[i]));
            }
            for (bf *p : {acat, bcat, d, ref, chain}) CK(cudaFree(p));
        }
    }
    /* q, k, v of one input with LoRA r16 on q and v, in one launch (PROJ, an_cuda_gemm_projections)
     * against cuBLASLt's chain as the library ran it before (each adapter's down B^T into the
     * output, then the base GEMM adding into it; k alone). The adapters' B is small (values 1e-4,
     * an adapter's first steps), so the branch is under half a unit in the last place of most
     * outputs: the reference is peft's order, round(round(x W^T) + down B^T) (cuBLASLt's x W^T, the
     * branch in fp32 by proj_ref), and the rows also count the outputs that differ from x W^T
     * alone (the branch rounded away or not): ours, the chain's, and one rounding of the whole sum
     * (cuBLASLt over [x | down] [W | B]^T). No bias here. */
    if (!only || listed("proj", true) || listed("none", true)) {
        const int M = 8192, K = 1536, R = 16, n[3] = {1536, 256, 256};
        const bool lora[3] = {true, false, true};
        bf *x, *w[3], *dn[3] = {}, *lb[3] = {}, *out[3], *ref[3], *chain[3], *base[3], *single[3] = {};
        bf *acat = nullptr, *bcat = nullptr;
        BenchProj p[3];
        CK(cudaMalloc(&x, (size_t)M * K * 2));
        fill(x, (size_t)M * K, 40, 1.0f);
        CK(cudaMalloc(&acat, (size_t)M * (K + R) * 2));
        CK(cudaMalloc(&bcat, (size_t)n[0] * (K + R) * 2));
        double flop = 0;
        size_t total = 0;
        for (int g = 0; g < 3; g++) {
            CK(cudaMalloc(&w[g], (size_t)n[g] * K * 2));
            fill(w[g], (size_t)n[g] * K, 41 + g, 0.05f);
            for (bf **q : {&out[g], &ref[g], &chain[g], &base[g]}) CK(cudaMalloc(q, (size_t)M * n[g] * 2));
            lt_gemm(x, w[g], base[g], M, n[g], K, st);
            if (lora[g]) {
                CK(cudaMalloc(&dn[g], (size_t)M * R * 2));
                CK(cudaMalloc(&lb[g], (size_t)n[g] * R * 2));
                CK(cudaMalloc(&single[g], (size_t)M * n[g] * 2));
                fill(dn[g], (size_t)M * R, 44 + g, 1.0f);
                fill(lb[g], (size_t)n[g] * R, 47 + g, 1e-4f);
                proj_ref<<<(unsigned)(((size_t)M * n[g] + 255) / 256), 256, 0, st>>>(base[g], dn[g], lb[g], ref[g], M, n[g], R);
                CK(cudaGetLastError());
                CK(cudaMemcpy2D(acat, (size_t)(K + R) * 2, x, (size_t)K * 2, (size_t)K * 2, M, cudaMemcpyDeviceToDevice));
                CK(cudaMemcpy2D(acat + K, (size_t)(K + R) * 2, dn[g], (size_t)R * 2, (size_t)R * 2, M,
                                cudaMemcpyDeviceToDevice));
                CK(cudaMemcpy2D(bcat, (size_t)(K + R) * 2, w[g], (size_t)K * 2, (size_t)K * 2, n[g], cudaMemcpyDeviceToDevice));
                CK(cudaMemcpy2D(bcat + K, (size_t)(K + R) * 2, lb[g], (size_t)R * 2, (size_t)R * 2, n[g],
                                cudaMemcpyDeviceToDevice));
                lt_gemm(acat, bcat, single[g], M, n[g], K + R, st);
                total += (size_t)M * n[g];
            } else {
                CK(cudaMemcpy(ref[g], base[g], (size_t)M * n[g] * 2, cudaMemcpyDeviceToDevice));
            }
            p[g] = BenchProj{w[g], nullptr, dn[g], lb[g], n[g], lora[g] ? R : 0, out[g]};
            flop += 2.0 * M * n[g] * (K + (lora[g] ? R : 0));
        }
        auto chained = [&] {
            for (int g = 0; g < 3; g++) {
                if (lora[g]) lt_gemm(dn[g], lb[g], chain[g], M, n[g], R, st);
                lt_gemm(x, w[g], chain[g], M, n[g], K, st, false, lora[g] ? 1.0f : 0.0f);
            }
        };
        chained();
        double t_chain = time_us(chained, st);
        CK(cudaStreamSynchronize(st));
        /* the adapters' outputs (q and v) that differ from x W^T alone */
        auto moved = [&](bf *const *o) {
            size_t d = 0;
            for (int g = 0; g < 3; g++)
                if (lora[g]) d += differing(o[g], base[g], (size_t)M * n[g]);
            return (double)d / total;
        };
        printf("proj     adapter products under half an ulp: outputs that differ from x W^T alone: one rounding of the "
               "whole sum %.4f, cuBLASLt's chain %.4f, peft's order (the reference) %.4f\n",
               moved(single), moved(chain), moved(ref));
        struct { const char *name; void (*fn)(const bf *, int, int, int, const BenchProj *, cudaStream_t); } forms[] = {
            {"128x256 s3", wg_projections<256, 3>}, {"128x128 s5", wg_projections<128, 5>}};
        for (const auto &f : forms) {
            for (int g = 0; g < 3; g++) CK(cudaMemset(out[g], 0xff, (size_t)M * n[g] * 2));
            f.fn(x, M, K, 3, p, st);
            CK(cudaStreamSynchronize(st));
            double mis = 0;
            size_t diff = 0;
            for (int g = 0; g < 3; g++) {
                mis = std::max(mis, mismatch(out[g], ref[g], (size_t)M * n[g]));
                diff += differing(out[g], ref[g], (size_t)M * n[g]);
            }
            double t = time_us([&] { f.fn(x, M, K, 3, p, st); }, st);
            bool ok = mis <= 2.0;
            printf("proj     q|k|v + q,v LoRA r16 %5d x %4d x %4d  %-11s cuBLASLt chain %7.1f us, one launch %7.1f us "
                   "(%4.0f TFLOP/s, %.3fx)  max err %.2f ulp-of-rms, %zu outputs off the reference, moved %.4f %s\n",
                   M, n[0] + n[1] + n[2], K, f.name, t_chain, t, flop / t / 1e6, t_chain / t, mis, diff, moved(out),
                   ok ? "" : "WRONG");
            failed |= !ok;
        }
        for (int g = 0; g < 3; g++)
            for (bf *q : {w[g], dn[g], lb[g], out[g], ref[g], chain[g], base[g], single[g]})
                if (q) CK(cudaFree(q));
        for (bf *q : {x, acat, bcat}) CK(cudaFree(q));
    }
    printf(failed ? "FAILED\n" : "all results agree\n");
    return failed ? 1 : 0;
}
