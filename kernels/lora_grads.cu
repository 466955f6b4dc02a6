/* lora_grads.cu — the LoRA adapters' gradients of one backward (an_cuda_lora_grads): for each
 * adapter of rank r on a projection (M, n) of x_lora (M, K) with output gradient dY,
 *   d_down = scale dY B (M, r),   dB = dY^T down (n, r),   dA = d_down^T x_lora (r, K),
 * in two launches where cuBLASLt ran a thin GEMM each (and a split-K reduce after each of dB and
 * dA): LoRA q,v of the 1.5B model's 8192 tokens ran ten launches, 72.6 us of kernels a layer
 * (docs/performance.md). All three are passes over a wide operand (dY or x_lora) against a thin
 * one, so their time is those reads.
 *
 * Shape of the work:
 * - d_down_kernel: a block takes 64 rows of one adapter's dY and every column of B; 4 warps of 16
 *   rows each run mma.sync m16n8k16 over n in stages of 128 columns (4 deep).
 * - thin_kernel: C (R, N) = P^T Q for thin P (M, R) and wide Q (M, N), the form of both dB^T
 *   (P = down, Q = dY) and dA (P = d_down, Q = x_lora). Adapters reading one x_lora stack their
 *   d_down as P's columns (each from a multiple of 16), so x_lora is read once for all of them
 *   (LoRA q,v: once for q's and v's dA). A block takes 128 columns of Q and one of S splits of
 *   the rows (stages of 64 rows, 3 deep); it writes its fp32 partial tile, and finish_kernel sums
 *   the S partials in split order.
 * In a LoRA q,v step of the 1.5B model: 14.9 + 22.1 + 3.2 us a layer (H100).
 *
 * Numerics: fp32 accumulation. d_down is scale times the fp32 sum, rounded once to the dtype (as
 * cuBLASLt's alpha), and dA is formed from that rounded d_down (as the separate GEMMs form it). dB
 * and dA sum the rows in order within a split, the splits in order after (S depends on M alone):
 * the same bits every run, on any device, whichever adapters share the launch; not cuBLASLt's
 * bits. With add_a / add_b the old gradient is added to the fp32 sum before the one rounding (a
 * later micro-batch), as cuBLASLt's beta 1 does.
 *
 * bench/lora_grads_variants.cu includes this file with AN_LORA_GRADS_KERNEL_ONLY defined to time
 * the kernel templates at other shapes; it then supplies an_load and an_store itself. */
#ifndef AN_LORA_GRADS_KERNEL_ONLY
#include "kernels/cuda_common.cuh"
#endif

#include "kernels/mma.cuh" /* Mma, ldsm_x4_at, ldsm_x4_trans_at, smem_addr */
#include "kernels/tma.cuh" /* mbarriers, tma::load, tma::encode_2d */

namespace lora_grads {

/* Both kernels are passes over a wide operand, so the loads decide their speed. A first version
 * staged with 16-byte cp.async read at 1.0-1.4 TB/s whatever its stage count (3 to 6) and block
 * shape (bench/lora_grads_variants.cu, docs/performance.md); the tensor memory accelerator's box
 * copies (one thread issues a stage, an mbarrier counts its bytes) replace it. Wide operands come in
 * boxes of 64 columns, 128-byte swizzled (chunk c of row r at c ^ (r % 8): ldmatrix conflict-free);
 * the thin ones (B, down, d_down) in boxes of their rank padded to 16, unswizzled. Rows and columns
 * past the edges arrive as zeros. */
constexpr int D_BM = 64;      /* d_down_kernel: rows a block (a warp per 16) */
constexpr int D_BK = 128;     /* d_down_kernel: dY's columns a stage (a box per 64) */
constexpr int D_STAGES = 4;
constexpr int THREADS = 128;  /* thin_kernel: 4 warps of 32 columns */
constexpr int BK = 64;        /* thin_kernel: Q's rows a stage */
constexpr int BN = 128;       /* thin_kernel: Q's columns a block (two boxes) */
constexpr int STAGES = 3;     /* thin_kernel (bench/lora_grads_variants.cu sweeps these) */
constexpr int SPLITS = 8;     /* thin_kernel: the rows' splits (fewer where M has fewer stages) */
constexpr int MAX_RANK = 64;  /* the stacked P's columns (each part padded to 16) of one thin job */
constexpr int MAX_ADAPTERS = 3;
constexpr int MAX_JOBS = 2 * MAX_ADAPTERS;

/* Byte offset of element (row, col) in a 128-byte-swizzled box of 64 columns (16-byte chunks). */
__device__ __forceinline__ uint32_t swz(int row, int col) {
    return (uint32_t)(row * 128 + ((((col % 64) / 8) ^ (row & 7)) << 4));
}

/* Shared memory a kernel's stages need: STAGE bytes each, their mbarriers, 1024 to align. */
constexpr size_t stages_smem(int stage, int stages) { return (size_t)stage * stages + 8 * stages + 1024; }

/* ---- d_down = scale dY B ---- */

struct DownArgs {
    CUtensorMap dy[MAX_ADAPTERS]; /* (M, n) in boxes of (64, D_BM) */
    CUtensorMap b[MAX_ADAPTERS];  /* (n, r) in boxes of (RP, D_BK) */
    void *d_down[MAX_ADAPTERS];   /* (M, r) */
    int n[MAX_ADAPTERS], r[MAX_ADAPTERS];
    float scale[MAX_ADAPTERS];
};

template <int RP, int D_BM, int D_BK> __host__ __device__ constexpr int down_stage() { return D_BK / 64 * D_BM * 128 + D_BK * RP * 2; }

/* RP: the ranks padded to 16 (B's box is zero past r). blockIdx.y: the adapter. D_BM / 16 warps. */
template <typename T, int RP, int D_BM = lora_grads::D_BM, int D_BK = lora_grads::D_BK, int D_STAGES = lora_grads::D_STAGES>
__global__ void __launch_bounds__(D_BM * 2) d_down_kernel(const __grid_constant__ DownArgs args, int M) {
    static_assert(D_BK % 64 == 0 && D_BM % 16 == 0, "whole boxes, whole warps");
    constexpr int YBYTES = D_BK / 64 * D_BM * 128, STAGE = down_stage<RP, D_BM, D_BK>();
    extern __shared__ unsigned char smem_raw[];
    const uint32_t base = (smem_addr(smem_raw) + 1023) & ~1023u, bars = base + D_STAGES * STAGE;
    const int a = blockIdx.y, n = args.n[a], r = args.r[a];
    const int row0 = blockIdx.x * D_BM, tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int k_tiles = (n + D_BK - 1) / D_BK;
    auto issue = [&](int kt) { /* thread 0: stage kt's dY boxes and B box */
        const uint32_t st = base + (kt % D_STAGES) * STAGE, bar = bars + 8 * (kt % D_STAGES);
        tma::bar_expect(bar, STAGE);
#pragma unroll
        for (int h = 0; h < D_BK / 64; h++) tma::load(st + h * D_BM * 128, &args.dy[a], kt * D_BK + h * 64, row0, bar);
        tma::load(st + YBYTES, &args.b[a], 0, kt * D_BK, bar);
    };
    if (tid == 0) {
        for (int s = 0; s < D_STAGES; s++) tma::bar_init(bars + 8 * s, 1);
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
        for (int s = 0; s < D_STAGES && s < k_tiles; s++) issue(s);
    }
    __syncthreads();

    float acc[RP / 8][4] = {};
    for (int kt = 0; kt < k_tiles; kt++) {
        const int slot = kt % D_STAGES;
        tma::bar_wait(bars + 8 * slot, (uint32_t)((kt / D_STAGES) & 1));
        const uint32_t ys = base + slot * STAGE, bs = ys + YBYTES;
#pragma unroll
        for (int k16 = 0; k16 < D_BK / 16; k16++) {
            const int row = warp * 16 + lane % 16, col = k16 * 16 + (lane / 16) * 8;
            uint32_t af[4];
            ldsm_x4_at(af, ys + (col / 64) * D_BM * 128 + swz(row, col));
#pragma unroll
            for (int j = 0; j < RP / 16; j++) {
                uint32_t bf[4];
                ldsm_x4_trans_at(bf, bs + (k16 * 16 + lane % 16) * RP * 2 + (j * 16 + (lane / 16) * 8) * 2);
                Mma<T>::run(acc[2 * j], af, bf[0], bf[1]);
                Mma<T>::run(acc[2 * j + 1], af, bf[2], bf[3]);
            }
        }
        __syncthreads(); /* every warp is done with the slot */
        if (tid == 0 && kt + D_STAGES < k_tiles) issue(kt + D_STAGES);
    }
    T *out = static_cast<T *>(args.d_down[a]);
    const float scale = args.scale[a];
    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int j = 0; j < RP / 8; j++) {
        int col = j * 8 + 2 * t;
        if (col >= r) continue; /* r is a multiple of 8: a whole 8-column block is in or out */
#pragma unroll
        for (int h = 0; h < 2; h++) {
            int64_t row = row0 + warp * 16 + g + 8 * h;
            if (row < M)
                *reinterpret_cast<uint32_t *>(out + row * r + col) =
                    Mma<T>::pack(scale * acc[j][2 * h], scale * acc[j][2 * h + 1]);
        }
    }
}

/* ---- C = P^T Q, split over the rows ---- */

/* One thin job: Q (M, n) and up to MAX_ADAPTERS P (M, r_i) stacked as P's columns from off_i (a
 * multiple of 16, so a part's rows of C sit in the MMA tiles as they do when it is alone); part i
 * of C (r_i, n) goes to out[i]: (r_i, n) row-major, or with transposed (n, r_i) (dB). */
struct Job {
    CUtensorMap q;                /* (M, n) in boxes of (64, BK) */
    CUtensorMap p[MAX_ADAPTERS];  /* (M, r_i) in boxes of (r_i padded to 16, BK) */
    void *out[MAX_ADAPTERS];
    int r[MAX_ADAPTERS], off[MAX_ADAPTERS], add[MAX_ADAPTERS];
    int parts, n, transposed;
    int tile0; /* the job's first column tile among all jobs' */
};
struct ThinArgs {
    Job job[MAX_JOBS];
    int jobs, tiles; /* column tiles of every job */
    int splits, rows_per_split;
};

__device__ __forceinline__ int job_of(const ThinArgs &a, int tile) {
    int j = 0;
    while (j + 1 < a.jobs && a.job[j + 1].tile0 <= tile) j++;
    return j;
}

__host__ __device__ __forceinline__ int round16(int r) { return (r + 15) / 16 * 16; }

/* The part whose columns of the stacked P hold column c, or job.parts (padding). */
__device__ __forceinline__ int part_of(const Job &job, int c) {
    for (int i = 0; i < job.parts; i++)
        if (c >= job.off[i] && c < job.off[i] + job.r[i]) return i;
    return job.parts;
}

template <int RP> __host__ __device__ constexpr int thin_stage() { return 2 * BK * 128 + BK * RP * 2; }

/* partial[(tile * splits + split) * RP * BN + row * BN + col]: the split's fp32 sum of C's tile. */
template <typename T, int RP, int STAGES = lora_grads::STAGES>
__global__ void __launch_bounds__(THREADS) thin_kernel(const __grid_constant__ ThinArgs args, int M, float *partial) {
    constexpr int QBYTES = 2 * BK * 128, STAGE = thin_stage<RP>();
    extern __shared__ unsigned char smem_raw[];
    const uint32_t base = (smem_addr(smem_raw) + 1023) & ~1023u, bars = base + STAGES * STAGE;
    const int tile = blockIdx.x, split = blockIdx.y;
    const Job &job = args.job[job_of(args, tile)];
    const int col0 = (tile - job.tile0) * BN, row_lo = split * args.rows_per_split;
    const int row_hi = row_lo + args.rows_per_split < M ? row_lo + args.rows_per_split : M;
    const int k_tiles = (row_hi - row_lo + BK - 1) / BK;
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    int width = 0, pbytes = 0;
    for (int i = 0; i < job.parts; i++) width = job.off[i] + round16(job.r[i]);
    pbytes = width * BK * 2;
    /* m16 tile m of P^T: its part's box in the stage (offset, row pitch in bytes) */
    uint32_t m_base[RP / 16], m_pitch[RP / 16];
#pragma unroll
    for (int m = 0; m < RP / 16; m++) {
        int i = part_of(job, m * 16);
        int rp = i < job.parts ? round16(job.r[i]) : 16, off = i < job.parts ? job.off[i] : 0;
        m_base[m] = (uint32_t)(off * BK * 2 + (m * 16 - off) * 2), m_pitch[m] = (uint32_t)(rp * 2);
    }
    auto issue = [&](int kt) { /* thread 0: stage kt's two Q boxes and the parts' boxes */
        const uint32_t st = base + (kt % STAGES) * STAGE, bar = bars + 8 * (kt % STAGES);
        const int k0 = row_lo + kt * BK;
        tma::bar_expect(bar, (uint32_t)(QBYTES + pbytes));
        tma::load(st, &job.q, col0, k0, bar);
        tma::load(st + BK * 128, &job.q, col0 + 64, k0, bar);
        for (int i = 0; i < job.parts; i++) tma::load(st + QBYTES + job.off[i] * BK * 2, &job.p[i], 0, k0, bar);
    };
    if (tid == 0) {
        for (int s = 0; s < STAGES; s++) tma::bar_init(bars + 8 * s, 1);
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
        for (int s = 0; s < STAGES && s < k_tiles; s++) issue(s);
    }
    __syncthreads();

    float acc[RP / 16][4][4] = {}; /* [m16 tile][8-column block of the warp's 32][fragment] */
    for (int kt = 0; kt < k_tiles; kt++) {
        const int slot = kt % STAGES;
        tma::bar_wait(bars + 8 * slot, (uint32_t)((kt / STAGES) & 1));
        const uint32_t qs = base + slot * STAGE, ps = qs + QBYTES;
#pragma unroll
        for (int k16 = 0; k16 < BK / 16; k16++) {
            uint32_t bf[2][4]; /* Q (k16, the warp's 32 columns): two 16-column fragment pairs */
            const int k = k16 * 16 + lane % 16;
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int c = warp * 32 + h * 16 + (lane / 16) * 8;
                ldsm_x4_trans_at(bf[h], qs + (c / 64) * BK * 128 + swz(k, c));
            }
#pragma unroll
            for (int m = 0; m < RP / 16; m++) {
                if (m * 16 >= width) continue;
                /* A = P^T (m16, k16) from P stored (k, m): matrices (k 0-7 | 8-15) x (m 0-7 | 8-15) */
                uint32_t af[4];
                const int pk = k16 * 16 + (lane / 16) * 8 + lane % 8;
                ldsm_x4_trans_at(af, ps + m_base[m] + pk * m_pitch[m] + ((lane / 8) % 2) * 16);
#pragma unroll
                for (int j = 0; j < 4; j++) Mma<T>::run(acc[m][j], af, bf[j / 2][(j % 2) * 2], bf[j / 2][(j % 2) * 2 + 1]);
            }
        }
        __syncthreads();
        if (tid == 0 && kt + STAGES < k_tiles) issue(kt + STAGES);
    }
    float *out = partial + ((int64_t)tile * args.splits + split) * RP * BN;
    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int m = 0; m < RP / 16; m++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int h = 0; h < 2; h++)
                *reinterpret_cast<float2 *>(out + (m * 16 + g + 8 * h) * BN + warp * 32 + j * 8 + 2 * t) =
                    make_float2(acc[m][j][2 * h], acc[m][j][2 * h + 1]);
}

/* C's element (row, col) of each tile: the splits' partials summed in split order, the old
 * gradient added where the part asks, one rounding. */
template <typename T, int RP>
__global__ void finish_kernel(const __grid_constant__ ThinArgs args, const float *partial) {
    const int64_t total = (int64_t)args.tiles * RP * BN;
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x) {
        int tile = (int)(e / (RP * BN)), row = (int)(e / BN % RP), c = (int)(e % BN);
        const Job &job = args.job[job_of(args, tile)];
        int col = (tile - job.tile0) * BN + c, i = part_of(job, row);
        if (i == job.parts || col >= job.n) continue;
        const float *p = partial + (int64_t)tile * args.splits * RP * BN + row * BN + c;
        float sum = 0.0f;
        for (int s = 0; s < args.splits; s++) sum += p[(int64_t)s * RP * BN];
        const int r = job.r[i], m = row - job.off[i];
        T *o = static_cast<T *>(job.out[i]) + (job.transposed ? (int64_t)col * r + m : (int64_t)m * job.n + col);
        if (job.add[i]) sum += an_load(*o);
        *o = an_store<T>(sum);
    }
}

template <int RP, int D_BM = lora_grads::D_BM, int D_BK = lora_grads::D_BK, int D_STAGES = lora_grads::D_STAGES>
constexpr size_t down_smem() { return stages_smem(down_stage<RP, D_BM, D_BK>(), D_STAGES); }
template <int RP, int STAGES = lora_grads::STAGES> constexpr size_t thin_smem() { return stages_smem(thin_stage<RP>(), STAGES); }

/* SPLITS of whole stages: a function of M alone, so an element's bits do not depend on the other
   adapters of the launch or on the device */
inline void split_rows(int M, int splits, ThinArgs *a) {
    int stages = (M + BK - 1) / BK, per = (stages + splits - 1) / splits * BK;
    a->rows_per_split = per, a->splits = (M + per - 1) / per;
}

} // namespace lora_grads

#ifndef AN_LORA_GRADS_KERNEL_ONLY
namespace lora_grads {

/* RP (16, 32, 48 or 64) as a template argument. */
template <typename F> cudaError_t with_rank(int rp, F &&f) {
    switch (rp) {
    case 16: return f(std::integral_constant<int, 16>{});
    case 32: return f(std::integral_constant<int, 32>{});
    case 48: return f(std::integral_constant<int, 48>{});
    default: return f(std::integral_constant<int, 64>{});
    }
}

template <typename T, int RP> cudaError_t launch_down(an_cuda_state *s, int M, int count, const DownArgs &args) {
    auto kern = d_down_kernel<T, RP>;
    size_t bytes = down_smem<RP>();
    cudaError_t err = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
    if (err != cudaSuccess) return err;
    kern<<<dim3((unsigned)((M + D_BM - 1) / D_BM), (unsigned)count), D_BM * 2, bytes, s->stream>>>(args, M);
    return cudaGetLastError();
}

template <typename T, int RP> cudaError_t launch_thin(an_cuda_state *s, int M, const ThinArgs &args, float *partial) {
    auto kern = thin_kernel<T, RP>;
    size_t bytes = thin_smem<RP>();
    cudaError_t err = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
    if (err != cudaSuccess) return err;
    kern<<<dim3((unsigned)args.tiles, (unsigned)args.splits), THREADS, bytes, s->stream>>>(args, M, partial);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
    int64_t total = (int64_t)args.tiles * RP * BN;
    finish_kernel<T, RP><<<an_cuda_blocks(s, total, 256), 256, 0, s->stream>>>(args, partial);
    return cudaGetLastError();
}

/* Both launches for the adapters: d_down where kept, then the thin jobs (dB^T = down^T dY per
 * adapter; dA = [d_down ...]^T x_lora per group of adapters sharing x_lora while their padded ranks
 * fit MAX_RANK). */
template <typename T> an_status run(an_ctx *ctx, an_cuda_state *s, int M, int K, int count, const an_cuda_lora_grad *ad) {
    void *fn = nullptr;
    AN_CUDA_CHECK(ctx, an_cuda_tensor_map_encoder(s, &fn));
    const auto encode = (PFN_cuTensorMapEncodeTiled_v12000)fn;

    DownArgs down = {};
    int n_down = 0, rp = 16;
    for (int i = 0; i < count; i++)
        if (ad[i].d_down && round16((int)ad[i].r) > rp) rp = round16((int)ad[i].r);
    for (int i = 0; i < count; i++) {
        if (!ad[i].d_down) continue;
        const int n = (int)ad[i].n, r = (int)ad[i].r;
        AN_CUDA_CHECK(ctx, tma::encode_2d(encode, &down.dy[n_down], (const T *)ad[i].dy, M, n, 64, D_BM));
        AN_CUDA_CHECK(ctx, tma::encode_2d(encode, &down.b[n_down], (const T *)ad[i].lora_b, n, r, rp, D_BK, false));
        down.d_down[n_down] = ad[i].d_down, down.n[n_down] = n, down.r[n_down] = r;
        down.scale[n_down++] = (float)ad[i].scale;
    }
    if (n_down)
        AN_CUDA_CHECK(ctx, with_rank(rp, [&](auto R) { return launch_down<T, decltype(R)::value>(s, M, n_down, down); }));

    ThinArgs thin = {};
    rp = 16;
    auto add_job = [&](int n, int transposed) -> Job & {
        Job &j = thin.job[thin.jobs++];
        j.n = n, j.transposed = transposed, j.tile0 = thin.tiles;
        thin.tiles += (n + BN - 1) / BN;
        return j;
    };
    const void *q_of[MAX_JOBS], *p_of[MAX_JOBS][MAX_ADAPTERS];
    for (int i = 0; i < count; i++) {
        if (!ad[i].grad_b) continue;
        q_of[thin.jobs] = ad[i].dy, p_of[thin.jobs][0] = ad[i].down;
        Job &j = add_job((int)ad[i].n, 1);
        j.out[0] = ad[i].grad_b, j.r[0] = (int)ad[i].r, j.add[0] = ad[i].add_b, j.parts = 1;
        if (round16(j.r[0]) > rp) rp = round16(j.r[0]);
    }
    bool taken[MAX_ADAPTERS] = {};
    for (int i = 0; i < count; i++) {
        if (!ad[i].grad_a || taken[i]) continue;
        const int jn = thin.jobs;
        q_of[jn] = ad[i].x_lora;
        Job &j = add_job(K, 0);
        int width = 0;
        for (int k = i; k < count; k++) {
            int rp_k = round16((int)ad[k].r);
            if (!ad[k].grad_a || taken[k] || ad[k].x_lora != ad[i].x_lora || width + rp_k > MAX_RANK) continue;
            p_of[jn][j.parts] = ad[k].d_down, j.out[j.parts] = ad[k].grad_a, j.r[j.parts] = (int)ad[k].r;
            j.off[j.parts] = width, j.add[j.parts++] = ad[k].add_a;
            width += rp_k, taken[k] = true;
        }
        if (width > rp) rp = width;
    }
    if (!thin.jobs) return AN_OK;
    for (int jn = 0; jn < thin.jobs; jn++) {
        Job &j = thin.job[jn];
        AN_CUDA_CHECK(ctx, tma::encode_2d(encode, &j.q, (const T *)q_of[jn], M, j.n, 64, BK));
        for (int i = 0; i < j.parts; i++)
            AN_CUDA_CHECK(ctx, tma::encode_2d(encode, &j.p[i], (const T *)p_of[jn][i], M, j.r[i], round16(j.r[i]), BK, false));
    }
    split_rows(M, SPLITS, &thin);
    void *scratch = nullptr;
    AN_TRY(an_cuda_scratch(ctx, (size_t)thin.tiles * thin.splits * rp * BN * sizeof(float), &scratch));
    AN_CUDA_CHECK(ctx, with_rank(rp, [&](auto R) {
        return launch_thin<T, decltype(R)::value>(s, M, thin, (float *)scratch);
    }));
    return AN_OK;
}

} // namespace lora_grads

using namespace lora_grads;

static bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

extern "C" int an_cuda_lora_grads_rule(an_ctx *ctx, an_dtype dtype, int64_t M, int64_t K, int count,
                                       const an_cuda_lora_grad *ad) {
    if (!ctx->cuda || ctx->cuda->lora_grads_off || (dtype != AN_BF16 && dtype != AN_F16)) return 0;
    if (count < 1 || count > MAX_ADAPTERS || M < 1 || M > INT32_MAX || K < 8 || K % 8 || K > INT32_MAX) return 0;
    for (int i = 0; i < count; i++) {
        const an_cuda_lora_grad *a = &ad[i];
        if (a->r < 8 || a->r % 8 || a->r > MAX_RANK || a->n < 8 || a->n % 8 || a->n > INT32_MAX) return 0;
        if (a->grad_a && !a->d_down) return 0; /* dA is formed from the rounded d_down */
        if (a->grad_a && !a->x_lora) return 0;
        const void *ptrs[] = {a->dy, a->lora_b, a->down, a->x_lora, a->d_down, a->grad_b, a->grad_a};
        for (int p = 0; p < 7; p++) /* dy, B and down always; x_lora where dA is wanted; the outputs wanted */
            if (p < 3 ? !ptrs[p] || !aligned16(ptrs[p]) : ptrs[p] && !aligned16(ptrs[p])) return 0;
    }
    return 1;
}

extern "C" an_status an_cuda_lora_grads(an_ctx *ctx, an_dtype dtype, int64_t M, int64_t K, int count,
                                        const an_cuda_lora_grad *ad) {
    AN_CUDA_STATE(ctx, s);
    AN_CHECK(ctx, an_cuda_lora_grads_rule(ctx, dtype, M, K, count, ad), AN_ERR_INPUT,
             "lora_grads: %d adapters of %s (%lld, %lld): needs bf16 or f16, 1 to %d adapters, ranks multiples of 8 "
             "up to %d, K and widths multiples of 8, 16-byte aligned operands, d_down wherever dA is wanted",
             count, an_dtype_name(dtype), (long long)M, (long long)K, MAX_ADAPTERS, MAX_RANK);
    return dtype == AN_BF16 ? run<__nv_bfloat16>(ctx, s, (int)M, (int)K, count, ad)
                            : run<__half>(ctx, s, (int)M, (int)K, count, ad);
}
#endif
