/* rmsnorm.cu — RMSNorm over the last dim, y = x * rstd * w with rstd = 1 / sqrt(mean(x^2) + eps)
 * (HF Qwen2RMSNorm / LlamaRMSNorm), and its gradients from the saved rstd. The forward optionally
 * takes a residual: it normalises sum = x + residual (rounded to the dtype, as an_add rounds it)
 * and writes the sum too, so a residual add and the norm after it read x once.
 *
 * Paths, chosen by shape: the vector path when D is a multiple of 16 / sizeof(dtype) (4 f32, 8
 * bf16/f16), the row fits 32 warps of packs and x, w, y / grad_y, grad_x are 16-byte aligned: one
 * team of warps per row reads the row once into registers with 16-byte loads, reduces, and writes
 * from the registers. Every other shape (and a row too long for the registers of one block)
 * takes the scalar path (one block per row, 2- or 4-byte accesses, x read twice). The backward
 * has a third, the warp path, taken before the vector path where it applies (the same alignment,
 * rows of at most 6 packs per lane: D <= 1536 in bf16/f16, <= 768 in f32; an_cuda_set_rmsnorm_warp
 * turns it off to compare): one warp per row, a grid of one wave looping over the rows, no block
 * barrier per row. Both are correct for those shapes; the warp path is the faster (the training
 * shape, 8192 x 1536 bf16, is its case), and its sums run in another order than the vector
 * path's, so its bits differ from the vector path's within the rounding of the dtype.
 * Numerics (every path): elements are widened to fp32; each row's sum of squares (and the
 * backward's sum of g w x) is an fp32 sum in a fixed order that depends only on the path, D and
 * the dtype (per thread, then a warp butterfly, then the warps in order), and rstd =
 * 1 / sqrt(sum / D + eps) is taken in fp64 and stored as fp32 (the CPU op saves the same fp32
 * rstd). The per-element formulas are the same on every path; outputs round once to the dtype and
 * are written with =. grad_w is a deterministic two-pass reduction: pass 1 writes fp32 partial
 * column sums, one per split of the rows (vector and warp paths: fused into the grad_x kernel, one
 * split per block, each lane adding its rows in order, then the block's teams or warps in order;
 * the split count depends only on the shape and the GPU's SM count), pass 2 adds the splits in a
 * fixed order (launched with PDL, so it is resident before pass 1 ends). No atomics anywhere: a
 * launch of the same shape on the same GPU gives the same bits every time. */
#include "kernels/block_reduce.cuh"  /* an_block_sum, an_row_threads (the scalar path) */
#include "kernels/vec.cuh"           /* an_pack: 16-byte loads and stores */
#include "kernels/pdl.cuh"           /* an_launch_pdl, an_pdl_wait / an_pdl_trigger: the vector forward, grad_w's finish */

#include <stdint.h>

namespace {

const int kColThreads = 256; /* dw pass 1: 32 columns x 8 row lanes */
const int kColWidth = 32;

/* With res: the row normalised is sum = x + res rounded to T (an_add's bits), written out first;
 * each thread reads back only the elements it wrote. */
template <typename T>
__global__ void rmsnorm_kernel(const T *x, const T *res, const T *w, int64_t D, double eps, T *sum, T *y,
                               float *rstd) {
    int64_t r = blockIdx.x;
    const T *xr = x + r * D; /* (D) */
    T *yr = y + r * D;       /* (D) */
    float ss = 0.0f;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
        float v = an_load(xr[d]);
        if (res) {
            T rounded = an_store<T>(v + an_load(res[r * D + d]));
            sum[r * D + d] = rounded;
            v = an_load(rounded);
        }
        ss += v * v;
    }
    ss = an_block_sum(ss);
    float s = (float)(1.0 / sqrt((double)ss / (double)D + eps));
    const T *nr = res ? sum + r * D : xr; /* the row normalised */
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) yr[d] = an_store<T>(an_load(nr[d]) * s * an_load(w[d]));
    if (threadIdx.x == 0) rstd[r] = s;
}

/* grad_x row r = s * g * w - s^3 * x * mean(g * w * x), plus the old grad_x when add (one rounding). */
template <typename T>
__global__ void rmsnorm_dx_kernel(const T *x, const T *w, const float *rstd, const T *g, int64_t D, T *dx, bool add) {
    int64_t r = blockIdx.x;
    const T *xr = x + r * D, *gr = g + r * D; /* (D) each */
    T *dr = dx + r * D;                      /* (D) */
    float dot = 0.0f;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) dot += an_load(gr[d]) * an_load(w[d]) * an_load(xr[d]);
    dot = an_block_sum(dot);
    float s = rstd[r];
    float coef = s * s * s * dot / (float)D;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x)
        dr[d] = an_store<T>(s * an_load(gr[d]) * an_load(w[d]) - coef * an_load(xr[d]) + (add ? an_load(dr[d]) : 0.0f));
}

/* Pass 1: partial[split * D + col] = sum over rows of split `blockIdx.y` of g * x * rstd. */
template <typename T>
__global__ void rmsnorm_dw_partial_kernel(const T *x, const float *rstd, const T *g, int64_t rows, int64_t D,
                                          int64_t rows_per_split, float *partial) {
    __shared__ float sm[kColThreads];
    int tx = threadIdx.x % kColWidth, ty = threadIdx.x / kColWidth, lanes = kColThreads / kColWidth;
    int64_t col = (int64_t)blockIdx.x * kColWidth + tx;
    int64_t r0 = (int64_t)blockIdx.y * rows_per_split;
    int64_t r1 = r0 + rows_per_split < rows ? r0 + rows_per_split : rows;
    float acc = 0.0f;
    if (col < D)
        for (int64_t r = r0 + ty; r < r1; r += lanes)
            acc += an_load(g[r * D + col]) * an_load(x[r * D + col]) * rstd[r];
    sm[threadIdx.x] = acc;
    __syncthreads();
    for (int half = lanes / 2; half > 0; half /= 2) {
        if (ty < half) sm[threadIdx.x] += sm[threadIdx.x + half * kColWidth];
        __syncthreads();
    }
    if (ty == 0 && col < D) partial[(int64_t)blockIdx.y * D + col] = sm[tx];
}

/* Pass 2: dw[col] = the sum over splits of partial (splits, D): row lane ty of a block of 32
 * columns x 8 lanes adds splits ty, ty + 8, ... in order, then the lanes are added as a tree. */
template <typename T> __global__ void rmsnorm_dw_finish_kernel(const float *partial, int64_t splits, int64_t D, T *dw) {
    an_pdl_wait(); /* launched with PDL (finish_weight_grad): partial comes from the kernel before */
    __shared__ float sm[kColThreads];
    int tx = threadIdx.x % kColWidth, ty = threadIdx.x / kColWidth, lanes = kColThreads / kColWidth;
    int64_t col = (int64_t)blockIdx.x * kColWidth + tx;
    float acc = 0.0f;
    if (col < D)
#pragma unroll 8
        for (int64_t sp = ty; sp < splits; sp += lanes) acc += partial[sp * D + col];
    sm[threadIdx.x] = acc;
    __syncthreads();
    for (int half = lanes / 2; half > 0; half /= 2) {
        if (ty < half) sm[threadIdx.x] += sm[threadIdx.x + half * kColWidth];
        __syncthreads();
    }
    if (ty == 0 && col < D) dw[col] = an_store<T>(sm[tx]);
}

template <typename T>
an_status finish_weight_grad(an_ctx *ctx, an_cuda_state *s, const float *partial, int64_t splits, int64_t D, T *dw) {
    unsigned col_blocks = (unsigned)((D + kColWidth - 1) / kColWidth);
    /* with PDL: launched while pass 1 still runs, it waits for it on the GPU, not behind its end */
    cudaError_t err = an_launch_pdl(s, rmsnorm_dw_finish_kernel<T>, dim3(col_blocks), dim3(kColThreads), partial,
                                    splits, D, dw);
    AN_CHECK(ctx, err == cudaSuccess, AN_ERR_INTERNAL, "launch of rmsnorm_dw_finish_kernel failed: %s",
             cudaGetErrorString(err));
    AN_CUDA_LAUNCH_CHECK(ctx, "rmsnorm_dw_finish_kernel");
    return AN_OK;
}

template <typename T>
an_status weight_grad(an_ctx *ctx, an_cuda_state *s, const T *x, const float *rstd, const T *g, int64_t rows,
                      int64_t D, T *dw) {
    int64_t col_blocks = (D + kColWidth - 1) / kColWidth;
    /* enough blocks to fill the GPU a few times over, each split at least 4 rows per lane */
    int64_t target = 4LL * s->sm_count;
    int64_t splits = col_blocks >= target ? 1 : (target + col_blocks - 1) / col_blocks;
    int64_t max_splits = rows / (4LL * (kColThreads / kColWidth));
    if (splits > max_splits) splits = max_splits;
    if (splits > 1024) splits = 1024;
    if (splits < 1) splits = 1;
    int64_t rows_per_split = (rows + splits - 1) / splits;
    if (rows_per_split < 1) rows_per_split = 1;
    splits = (rows + rows_per_split - 1) / rows_per_split;
    if (splits < 1) splits = 1;
    void *scratch = nullptr;
    AN_TRY(an_cuda_scratch(ctx, (size_t)(splits * D) * sizeof(float), &scratch));
    float *partial = (float *)scratch;
    dim3 grid((unsigned)col_blocks, (unsigned)splits);
    rmsnorm_dw_partial_kernel<T><<<grid, kColThreads, 0, s->stream>>>(x, rstd, g, rows, D, rows_per_split, partial);
    AN_CUDA_LAUNCH_CHECK(ctx, "rmsnorm_dw_partial_kernel");
    return finish_weight_grad<T>(ctx, s, partial, splits, D, dw);
}

/* ---- the vector path: 16-byte packs, each row held in registers between its sum and its write ----
 * A row is taken by a team of W warps (W * 32 lanes); lane t holds packs t, t + 32 W, ... (P of
 * them at most, a template argument, the last ones unused when the row is shorter). A block holds
 * R teams, one row each, so short rows still fill 256-thread blocks. */

const int kVecWarps = 8;       /* warps per block when a row needs fewer */
const int kMaxTeamWarps = 32;  /* a team is at most one 1024-thread block */
/* Packs per lane: the forward holds x and w and plans 2 (63 registers in bf16), the backward holds
 * x, grad_y, w and grad_w's column sums and plans 1 (55 registers); either takes up to kMaxPacks
 * when the row would need more than 32 warps. */
const int kFwdPacks = 2;
const int kBwdPacks = 1;
const int kMaxPacks = 4;
const int64_t kMaxFusedD = 8192; /* the fused grad_w's column sums (D floats) in shared memory */

struct VecPlan {
    int warps;  /* W: warps per row */
    int packs;  /* P: packs per lane, 1, 2 or 4 */
    int rows;   /* R: rows (teams) per block */
    bool ok;    /* false: D is not a whole number of packs, or a row needs more than 32 warps */
};

VecPlan vec_plan(int64_t D, int width, int max_packs) {
    VecPlan p = {0, 0, 0, false};
    if (D % width != 0) return p;
    int64_t packs = D / width;
    int64_t warps = (packs + 32LL * max_packs - 1) / (32LL * max_packs);
    if (warps > kMaxTeamWarps) return p;
    int64_t need = (packs + 32 * warps - 1) / (32 * warps);
    p.warps = (int)warps;
    p.packs = need <= 1 ? 1 : need <= 2 ? 2 : 4;
    p.rows = warps >= kVecWarps ? 1 : kVecWarps / (int)warps;
    p.ok = true;
    return p;
}

/* The sum of v over the W warps of this thread's team (every thread of the block calls it; a
 * butterfly in each warp, then the team's warps in order: the same bits for the same W). */
__device__ __forceinline__ float team_sum(float v, int W) {
    __shared__ float part[32];
    v = an_lanes_sum<32>(v);
    if (W == 1) return v;
    int warp = threadIdx.x / 32, first = warp / W * W;
    __syncthreads(); /* part may still be read by an earlier call */
    if (threadIdx.x % 32 == 0) part[warp] = v;
    __syncthreads();
    v = 0.0f;
    for (int i = 0; i < W; i++) v += part[first + i];
    return v;
}

template <typename T, int P>
__global__ void rmsnorm_vec_kernel(const T *x, const T *res, const T *w, int64_t rows, int64_t D, int W, double eps,
                                   T *sum, T *y, float *rstd) {
    an_pdl_wait(); /* launched with PDL (FwdLaunch): x and res come from the kernels before */
    an_pdl_trigger();
    const int V = an_vec_width<T>::value;
    int L = 32 * W, team = threadIdx.x / L, t = threadIdx.x % L;
    int64_t packs = D / V, r = (int64_t)blockIdx.x * (blockDim.x / L) + team;
    bool live = r < rows;
    an_pack<T> xv[P], wv[P]; /* this lane's packs of row r and of w (w's load overlaps the sum) */
#pragma unroll
    for (int k = 0; k < P; k++)
        if (live && t + k * L < packs) xv[k] = an_pack_load(x + r * D + (int64_t)(t + k * L) * V);
#pragma unroll
    for (int k = 0; k < P; k++)
        if (live && t + k * L < packs) wv[k] = an_pack_load(w + (int64_t)(t + k * L) * V);
    if (res) /* the row normalised is x + res rounded to T (an_add's bits), written out as the sum */
#pragma unroll
        for (int k = 0; k < P; k++)
            if (live && t + k * L < packs) {
                an_pack<T> rv = an_pack_load(res + r * D + (int64_t)(t + k * L) * V);
#pragma unroll
                for (int e = 0; e < V; e++) xv[k].v[e] = an_store<T>(an_load(xv[k].v[e]) + an_load(rv.v[e]));
                an_pack_store(sum + r * D + (int64_t)(t + k * L) * V, xv[k]);
            }
    float ss = 0.0f;
#pragma unroll
    for (int k = 0; k < P; k++)
        if (live && t + k * L < packs)
#pragma unroll
            for (int e = 0; e < V; e++) {
                float v = an_load(xv[k].v[e]);
                ss += v * v;
            }
    ss = team_sum(ss, W);
    if (!live) return;
    float s = (float)(1.0 / sqrt((double)ss / (double)D + eps));
#pragma unroll
    for (int k = 0; k < P; k++) {
        int64_t p = t + k * L;
        if (p >= packs) continue;
        an_pack<T> out;
#pragma unroll
        for (int e = 0; e < V; e++) out.v[e] = an_store<T>(an_load(xv[k].v[e]) * s * an_load(wv[k].v[e]));
        an_pack_store(y + r * D + p * V, out);
    }
    if (t == 0) rstd[r] = s;
}

/* grad_x as rmsnorm_dx_kernel (add: into the old grad_x), rows r = blockIdx.x R + team + i gridDim.x R; dx may be null.
 * partial (gridDim.x, D) or null: the block's column sums of g * x * rstd over its rows, each lane
 * adding its rows in order, then the block's teams added in team order (dynamic shared: D floats). */
template <typename T, int P>
__global__ void rmsnorm_bwd_vec_kernel(const T *x, const T *w, const float *rstd, const T *g, int64_t rows, int64_t D,
                                       int W, T *dx, bool add, float *partial) {
    extern __shared__ float colsum[]; /* (D) when partial */
    const int V = an_vec_width<T>::value;
    int L = 32 * W, team = threadIdx.x / L, t = threadIdx.x % L, R = blockDim.x / L;
    int64_t packs = D / V;
    an_pack<T> wv[P];
    float acc[P][V];
#pragma unroll
    for (int k = 0; k < P; k++) {
        if (t + k * L < packs) wv[k] = an_pack_load(w + (int64_t)(t + k * L) * V);
#pragma unroll
        for (int e = 0; e < V; e++) acc[k][e] = 0.0f;
    }
    for (int64_t base = (int64_t)blockIdx.x * R; base < rows; base += (int64_t)gridDim.x * R) {
        int64_t r = base + team; /* the whole block loops together: team_sum synchronises it */
        bool live = r < rows;
        an_pack<T> xv[P], gv[P];
#pragma unroll
        for (int k = 0; k < P; k++)
            if (live && t + k * L < packs) {
                xv[k] = an_pack_load(x + r * D + (int64_t)(t + k * L) * V);
                gv[k] = an_pack_load(g + r * D + (int64_t)(t + k * L) * V);
            }
        float s = live ? rstd[r] : 0.0f, dot = 0.0f;
#pragma unroll
        for (int k = 0; k < P; k++)
            if (live && t + k * L < packs)
#pragma unroll
                for (int e = 0; e < V; e++) dot += an_load(gv[k].v[e]) * an_load(wv[k].v[e]) * an_load(xv[k].v[e]);
        dot = team_sum(dot, W);
        if (!live) continue;
        float coef = s * s * s * dot / (float)D;
#pragma unroll
        for (int k = 0; k < P; k++) {
            int64_t p = t + k * L;
            if (p >= packs) continue;
            if (dx) {
                an_pack<T> out, old;
                if (add) old = an_pack_load(dx + r * D + p * V);
#pragma unroll
                for (int e = 0; e < V; e++)
                    out.v[e] = an_store<T>(s * an_load(gv[k].v[e]) * an_load(wv[k].v[e]) - coef * an_load(xv[k].v[e]) +
                                           (add ? an_load(old.v[e]) : 0.0f));
                an_pack_store(dx + r * D + p * V, out);
            }
            if (partial)
#pragma unroll
                for (int e = 0; e < V; e++) acc[k][e] += an_load(gv[k].v[e]) * an_load(xv[k].v[e]) * s;
        }
    }
    if (!partial) return;
    for (int j = 0; j < R; j++) {
        if (team == j)
#pragma unroll
            for (int k = 0; k < P; k++) {
                int64_t p = t + k * L;
                if (p >= packs) continue;
#pragma unroll
                for (int e = 0; e < V; e++) colsum[p * V + e] = j == 0 ? acc[k][e] : colsum[p * V + e] + acc[k][e];
            }
        __syncthreads();
    }
    for (int64_t c = threadIdx.x; c < D; c += blockDim.x) partial[(int64_t)blockIdx.x * D + c] = colsum[c];
}

/* Runs Launch<T, P>::run(args...) with P the template instance for `packs` (at most MaxP). */
template <typename T, template <typename, int> class Launch, int MaxP, typename... Args>
void with_packs(int packs, Args... args) {
    if constexpr (MaxP >= 4)
        if (packs > 2) return Launch<T, 4>::run(args...);
    if constexpr (MaxP >= 2)
        if (packs > 1) return Launch<T, 2>::run(args...);
    Launch<T, 1>::run(args...);
}

/* With programmatic dependent launch (pdl.cuh): in a decode step the model's final norm follows
 * the cache's advance and precedes the head's GEMV, both in the chain. */
template <typename T, int P> struct FwdLaunch {
    static void run(const an_cuda_state *s, cudaError_t *err, unsigned blocks, int threads, const T *x, const T *res,
                    const T *w, int64_t rows, int64_t D, int W, double eps, T *sum, T *y, float *rstd) {
        *err = an_launch_pdl(s, rmsnorm_vec_kernel<T, P>, dim3(blocks), dim3(threads), x, res, w, rows, D, W, eps, sum,
                             y, rstd);
    }
};

/* *limit = the largest block the kernel can be launched with (its registers decide). */
template <typename T, int P> struct FwdLimit {
    static void run(int *limit) {
        cudaFuncAttributes a;
        *limit = cudaFuncGetAttributes(&a, rmsnorm_vec_kernel<T, P>) == cudaSuccess ? a.maxThreadsPerBlock : 0;
        (void)cudaGetLastError(); /* a failed query only means: take the scalar path */
    }
};
template <typename T, int P> struct BwdLimit {
    static void run(int *limit) {
        cudaFuncAttributes a;
        *limit = cudaFuncGetAttributes(&a, rmsnorm_bwd_vec_kernel<T, P>) == cudaSuccess ? a.maxThreadsPerBlock : 0;
        (void)cudaGetLastError();
    }
};

/* Whether the plan's blocks can launch: up to 256 threads always do (255 registers at most each);
 * the 512- and 1024-thread teams of long rows only when the kernel's registers allow. */
template <typename T, template <typename, int> class Limit> bool plan_fits(const VecPlan &plan) {
    int threads = 32 * plan.warps * plan.rows, limit = 0;
    if (threads <= 256) return true;
    with_packs<T, Limit, kMaxPacks>(plan.packs, &limit);
    return threads <= limit;
}

/* *blocks = how many blocks of the backward fit on one SM at once. */
template <typename T, int P> struct BwdOccupancy {
    static void run(int *blocks, int threads, size_t shared, cudaError_t *err) {
        *err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(blocks, rmsnorm_bwd_vec_kernel<T, P>, threads, shared);
    }
};

template <typename T, int P> struct BwdLaunch {
    static void run(unsigned blocks, int threads, size_t shared, cudaStream_t stream, const T *x, const T *w,
                    const float *rstd, const T *g, int64_t rows, int64_t D, int W, T *dx, bool add, float *partial) {
        rmsnorm_bwd_vec_kernel<T, P><<<blocks, threads, shared, stream>>>(x, w, rstd, g, rows, D, W, dx, add, partial);
    }
};

/* The vector backward: grad_x and/or grad_w (fused when D <= kMaxFusedD, else the scalar
 * two-pass weight_grad after it). */
template <typename T>
an_status backward_vec(an_ctx *ctx, an_cuda_state *s, const VecPlan &plan, const T *x, const T *w, const float *rstd,
                       const T *g, int64_t rows, int64_t D, T *dx, bool add, T *dw) {
    int threads = 32 * plan.warps * plan.rows;
    int64_t blocks = (rows + plan.rows - 1) / plan.rows;
    bool fuse = dw != nullptr && D <= kMaxFusedD;
    float *partial = nullptr;
    size_t shared = fuse ? (size_t)D * sizeof(float) : 0;
    if (fuse) {
        /* one wave of blocks, each looping over rows, so the partial sums stay few */
        int per_sm = 0;
        cudaError_t err = cudaSuccess;
        with_packs<T, BwdOccupancy, kMaxPacks>(plan.packs, &per_sm, threads, shared, &err);
        AN_CUDA_CHECK(ctx, err);
        int64_t cap = (int64_t)(per_sm > 0 ? per_sm : 1) * s->sm_count;
        if (blocks > cap) blocks = cap;
        void *scratch = nullptr;
        AN_TRY(an_cuda_scratch(ctx, (size_t)(blocks * D) * sizeof(float), &scratch));
        partial = (float *)scratch;
    }
    if (dx || fuse) {
        with_packs<T, BwdLaunch, kMaxPacks>(plan.packs, (unsigned)blocks, threads, shared, s->stream, x, w, rstd, g,
                                            rows, D, plan.warps, dx, add, partial);
        AN_CUDA_LAUNCH_CHECK(ctx, "rmsnorm_bwd_vec_kernel");
    }
    if (fuse) return finish_weight_grad<T>(ctx, s, partial, blocks, D, dw);
    if (dw) return weight_grad<T>(ctx, s, x, rstd, g, rows, D, dw);
    return AN_OK;
}

/* ---- the warp path of the backward: one warp per row ----
 * For rows of at most 32 * kWarpMaxPacks packs: lane t holds packs t, t + 32, ... of its row (P of
 * them, a template argument: 6 for the 1.5B model's 1536 bf16), issues every load of the row (x,
 * grad_y, rstd, and an L1 prefetch of the old grad_x when adding) before the sum of g w x, which is
 * a butterfly of the warp (no block barrier), then reads x and g again (L1) for the outputs. The
 * grid is one wave (the blocks that fit at once); warp i of it takes rows i, i + warps of grid,
 * ..., and w sits in shared memory, loaded once per block. grad_w: each warp
 * adds g * x * rstd of its rows, in order, into its own fp32 column sums in shared memory; at the
 * end the block adds its warps' sums in warp order into its partial (one per block), which the
 * finish kernel adds in block order. */

const int kWarpMaxPacks = 6;  /* packs per lane: D <= 1536 in bf16/f16, <= 768 in f32 (8 would spill in bf16) */
const int kWarpWarpsDx = 8;   /* warps per block without grad_w */
const int kWarpWarpsDw = 16;  /* with grad_w: more warps share a block's partial, so the partials are fewer */

/* grad_x as rmsnorm_dx_kernel (ADD: into the old grad_x), one warp per row. DW: partial
 * (gridDim.x, D) gets the block's column sums of g * x * rstd, and dx may be null. Shared memory
 * (DW): per warp, P * V / 4 float4 column sums per lane, float4 j of lane t at j * 32 + t (no bank
 * conflicts); pack p = t + 32 k's elements 4h .. 4h + 3 are float4 k V / 4 + h. */
template <typename T, int P, bool ADD, bool DW>
__global__ void __launch_bounds__(32 * (DW ? kWarpWarpsDw : kWarpWarpsDx), DW ? 1 : 2)
    rmsnorm_bwd_warp_kernel(const T *x, const T *w, const float *rstd, const T *g, int64_t rows, int64_t D, T *dx,
                            float *partial) {
    extern __shared__ float4 warp_sums[]; /* DW: (warps, P * V / 4, 32) */
    const int V = an_vec_width<T>::value, Q = V / 4; /* Q: float4 per pack */
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    const int64_t packs = D / V;
    __shared__ an_pack<T> wv[32 * P]; /* w, read from here at each use: in registers it would be held
                                        widened to fp32, P V of them per lane */
    float4 *sums = warp_sums + warp * (P * Q * 32) + lane; /* this lane's: float4 j at sums[32 j] */
    for (int p = threadIdx.x; p < packs; p += blockDim.x) wv[p] = an_pack_load(w + (int64_t)p * V);
    if (DW)
#pragma unroll
        for (int j = 0; j < P * Q; j++) sums[32 * j] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    __syncthreads();
    an_pdl_trigger(); /* the finish kernel (DW) may launch; its an_pdl_wait still waits for this grid's end */
    for (int64_t r = (int64_t)blockIdx.x * warps + warp; r < rows; r += (int64_t)gridDim.x * warps) {
        an_pack<T> xv[P], gv[P], ov[P];
        float s = rstd[r];
#pragma unroll
        for (int k = 0; k < P; k++) {
            int64_t at = r * D + (int64_t)(lane + 32 * k) * V;
            if (lane + 32 * k < packs) {
                xv[k] = an_pack_load(x + at);
                gv[k] = an_pack_load(g + at);
                if (ADD) asm volatile("prefetch.global.L1 [%0];" ::"l"(dx + at)); /* read after the sum */
            }
        }
        float dot = 0.0f;
#pragma unroll
        for (int k = 0; k < P; k++)
            if (lane + 32 * k < packs)
#pragma unroll
                for (int e = 0; e < V; e++)
                    dot += an_load(gv[k].v[e]) * an_load(wv[lane + 32 * k].v[e]) * an_load(xv[k].v[e]);
        /* x and g are read again below (L1 hits) rather than kept: kept, they would be held widened
         * to fp32 across the sum, twice the registers, and fewer warps would fit an SM */
        asm volatile("" ::: "memory");
        dot = an_lanes_sum<32>(dot);
        float coef = s * s * s * dot / (float)D;
#pragma unroll
        for (int k = 0; k < P; k++) {
            if (lane + 32 * k >= packs) continue;
            xv[k] = an_pack_load(x + r * D + (int64_t)(lane + 32 * k) * V);
            gv[k] = an_pack_load(g + r * D + (int64_t)(lane + 32 * k) * V);
            if (ADD) ov[k] = an_pack_load(dx + r * D + (int64_t)(lane + 32 * k) * V);
            if (!DW || dx) {
                an_pack<T> out;
#pragma unroll
                for (int e = 0; e < V; e++)
                    out.v[e] = an_store<T>(s * an_load(gv[k].v[e]) * an_load(wv[lane + 32 * k].v[e]) -
                                           coef * an_load(xv[k].v[e]) + (ADD ? an_load(ov[k].v[e]) : 0.0f));
                an_pack_store(dx + r * D + (int64_t)(lane + 32 * k) * V, out);
            }
            if (DW)
#pragma unroll
                for (int h = 0; h < Q; h++) {
                    float4 a = sums[32 * (k * Q + h)];
                    a.x += an_load(gv[k].v[4 * h]) * an_load(xv[k].v[4 * h]) * s;
                    a.y += an_load(gv[k].v[4 * h + 1]) * an_load(xv[k].v[4 * h + 1]) * s;
                    a.z += an_load(gv[k].v[4 * h + 2]) * an_load(xv[k].v[4 * h + 2]) * s;
                    a.w += an_load(gv[k].v[4 * h + 3]) * an_load(xv[k].v[4 * h + 3]) * s;
                    sums[32 * (k * Q + h)] = a;
                }
        }
    }
    if (!DW) return;
    __syncthreads();
    /* float4 j = (k Q + h) 32 + t of every warp, added in warp order: columns (t + 32 k) V + 4 h .. + 3 */
    for (int j = threadIdx.x; j < P * Q * 32; j += blockDim.x) {
        int t = j % 32, k = j / 32 / Q, h = j / 32 % Q;
        if (t + 32 * k >= packs) continue;
        float4 a = warp_sums[j];
        for (int i = 1; i < warps; i++) {
            float4 b = warp_sums[i * (P * Q * 32) + j];
            a.x += b.x, a.y += b.y, a.z += b.z, a.w += b.w;
        }
        float *out = partial + (int64_t)blockIdx.x * D + (int64_t)(t + 32 * k) * V + 4 * h;
        out[0] = a.x, out[1] = a.y, out[2] = a.z, out[3] = a.w;
    }
}

/* One launch of the warp kernel: a wave of blocks (fewer when the rows are fewer), then grad_w's
 * finish. *taken = false, and nothing launched, when its blocks do not fit an SM. */
template <typename T, int P, bool ADD, bool DW>
an_status backward_warp_run(an_ctx *ctx, an_cuda_state *s, const T *x, const T *w, const float *rstd, const T *g,
                            int64_t rows, int64_t D, T *dx, T *dw, bool *taken) {
    void (*kernel)(const T *, const T *, const float *, const T *, int64_t, int64_t, T *, float *) =
        rmsnorm_bwd_warp_kernel<T, P, ADD, DW>;
    int warps = DW ? kWarpWarpsDw : kWarpWarpsDx;
    size_t per_warp = DW ? (size_t)P * 32 * an_vec_width<T>::value * sizeof(float) : 0, shared = 0;
    if (DW) {
        int optin = 0;
        AN_CUDA_CHECK(ctx, cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, s->device));
        size_t room = (size_t)optin - sizeof(an_pack<T>) * 32 * P; /* less the kernel's static copy of w */
        if ((size_t)warps * per_warp > room) warps = (int)(room / per_warp);
        if (warps < 1) return AN_OK;
        shared = (size_t)warps * per_warp;
        if (shared > 48 * 1024)
            AN_CUDA_CHECK(ctx, cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)shared));
    }
    int threads = 32 * warps, per_sm = 0;
    AN_CUDA_CHECK(ctx, cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, shared));
    if (per_sm < 1) return AN_OK;
    int64_t blocks = (rows + warps - 1) / warps, wave = (int64_t)per_sm * s->sm_count;
    if (blocks > wave) blocks = wave;
    float *partial = nullptr;
    if (DW) {
        void *scratch = nullptr;
        AN_TRY(an_cuda_scratch(ctx, (size_t)(blocks * D) * sizeof(float), &scratch));
        partial = (float *)scratch;
    }
    kernel<<<(unsigned)blocks, threads, shared, s->stream>>>(x, w, rstd, g, rows, D, dx, partial);
    AN_CUDA_LAUNCH_CHECK(ctx, "rmsnorm_bwd_warp_kernel");
    *taken = true;
    if (DW) return finish_weight_grad<T>(ctx, s, partial, blocks, D, dw);
    return AN_OK;
}

template <typename T, int P>
an_status backward_warp_p(an_ctx *ctx, an_cuda_state *s, const T *x, const T *w, const float *rstd, const T *g,
                          int64_t rows, int64_t D, T *dx, bool add, T *dw, bool *taken) {
    if (dw && add) return backward_warp_run<T, P, true, true>(ctx, s, x, w, rstd, g, rows, D, dx, dw, taken);
    if (dw) return backward_warp_run<T, P, false, true>(ctx, s, x, w, rstd, g, rows, D, dx, dw, taken);
    if (add) return backward_warp_run<T, P, true, false>(ctx, s, x, w, rstd, g, rows, D, dx, dw, taken);
    return backward_warp_run<T, P, false, false>(ctx, s, x, w, rstd, g, rows, D, dx, dw, taken);
}

/* Whether the warp path applies: D a whole number of packs, at most 32 * kWarpMaxPacks of them. */
template <typename T> bool warp_path_fits(int64_t D) {
    const int V = an_vec_width<T>::value;
    return D % V == 0 && D / V <= 32 * kWarpMaxPacks;
}

/* The warp path for grad_x (add: into it; may be null when dw is not) and/or grad_w, with P the
 * smallest of 2, 4, 6 packs per lane that holds a row. */
template <typename T>
an_status backward_warp(an_ctx *ctx, an_cuda_state *s, const T *x, const T *w, const float *rstd, const T *g,
                        int64_t rows, int64_t D, T *dx, bool add, T *dw, bool *taken) {
    *taken = false;
    if (!dx && !dw) return AN_OK;
    add = add && dx;
    int64_t need = (D / an_vec_width<T>::value + 31) / 32;
    if (need <= 2) return backward_warp_p<T, 2>(ctx, s, x, w, rstd, g, rows, D, dx, add, dw, taken);
    if (need <= 4) return backward_warp_p<T, 4>(ctx, s, x, w, rstd, g, rows, D, dx, add, dw, taken);
    return backward_warp_p<T, 6>(ctx, s, x, w, rstd, g, rows, D, dx, add, dw, taken);
}

an_status check_sizes(an_ctx *ctx, const char *what, int64_t rows, int64_t D) {
    AN_CHECK(ctx, rows >= 0 && rows <= INT32_MAX && D >= 1 && D <= INT32_MAX, AN_ERR_INPUT,
             "%s: %lld rows of %lld is outside the CUDA kernel's range", what, (long long)rows, (long long)D);
    return AN_OK;
}

} // namespace

extern "C" {

an_status an_cuda_rmsnorm(an_ctx *ctx, an_dtype dtype, const void *x, const void *w, int64_t rows, int64_t D,
                          double eps, void *y, float *rstd) {
    return an_cuda_add_rmsnorm(ctx, dtype, x, nullptr, w, rows, D, eps, nullptr, y, rstd);
}

an_status an_cuda_add_rmsnorm(an_ctx *ctx, an_dtype dtype, const void *x, const void *res, const void *w, int64_t rows,
                              int64_t D, double eps, void *sum, void *y, float *rstd) {
    AN_CUDA_STATE(ctx, s);
    AN_TRY(check_sizes(ctx, "rmsnorm", rows, D));
    AN_CHECK(ctx, !res == !sum, AN_ERR_INTERNAL, "add_rmsnorm: a residual needs a sum to write, and a sum a residual");
    if (rows == 0) return AN_OK;
    int threads = an_row_threads(D, 256);
    bool aligned = an_aligned16(x) && an_aligned16(w) && an_aligned16(y) && an_aligned16(res) && an_aligned16(sum);
    AN_CUDA_DISPATCH_FLOAT(ctx, dtype, "rmsnorm", {
        VecPlan plan = vec_plan(D, an_vec_width<T>::value, kFwdPacks);
        if (!plan.ok) plan = vec_plan(D, an_vec_width<T>::value, kMaxPacks);
        if (plan.ok && aligned && plan_fits<T, FwdLimit>(plan)) {
            unsigned blocks = (unsigned)((rows + plan.rows - 1) / plan.rows);
            cudaError_t err = cudaSuccess;
            with_packs<T, FwdLaunch, kMaxPacks>(plan.packs, s, &err, blocks, 32 * plan.warps * plan.rows,
                                                (const T *)x, (const T *)res, (const T *)w, rows, D, plan.warps, eps,
                                                (T *)sum, (T *)y, rstd);
            AN_CHECK(ctx, err == cudaSuccess, AN_ERR_INTERNAL, "launch of rmsnorm_vec_kernel failed: %s",
                     cudaGetErrorString(err));
            AN_CUDA_LAUNCH_CHECK(ctx, "rmsnorm_vec_kernel");
        } else {
            rmsnorm_kernel<T><<<(unsigned)rows, threads, 0, s->stream>>>((const T *)x, (const T *)res, (const T *)w, D,
                                                                        eps, (T *)sum, (T *)y, rstd);
            AN_CUDA_LAUNCH_CHECK(ctx, "rmsnorm_kernel");
        }
    });
    return AN_OK;
}

an_status an_cuda_rmsnorm_backward(an_ctx *ctx, an_dtype dtype, const void *x, const void *w, const float *rstd,
                                   const void *grad_y, int64_t rows, int64_t D, void *grad_x, void *grad_w,
                                   int add_x) {
    AN_CUDA_STATE(ctx, s);
    AN_TRY(check_sizes(ctx, "rmsnorm_backward", rows, D));
    int threads = an_row_threads(D, 256);
    bool aligned = an_aligned16(x) && an_aligned16(w) && an_aligned16(grad_y) && an_aligned16(grad_x);
    AN_CUDA_DISPATCH_FLOAT(ctx, dtype, "rmsnorm_backward", {
        if (!s->rmsnorm_warp_off && aligned && rows > 0 && warp_path_fits<T>(D)) {
            bool taken = false;
            AN_TRY(backward_warp<T>(ctx, s, (const T *)x, (const T *)w, rstd, (const T *)grad_y, rows, D, (T *)grad_x,
                                    add_x != 0, (T *)grad_w, &taken));
            if (taken || (!grad_x && !grad_w)) return AN_OK;
        }
        VecPlan plan = vec_plan(D, an_vec_width<T>::value, kBwdPacks);
        if (!plan.ok) plan = vec_plan(D, an_vec_width<T>::value, kMaxPacks);
        if (plan.ok && aligned && rows > 0 && plan_fits<T, BwdLimit>(plan))
            return backward_vec<T>(ctx, s, plan, (const T *)x, (const T *)w, rstd, (const T *)grad_y, rows, D,
                                   (T *)grad_x, add_x != 0, (T *)grad_w);
        if (grad_x && rows > 0) {
            rmsnorm_dx_kernel<T><<<(unsigned)rows, threads, 0, s->stream>>>((const T *)x, (const T *)w, rstd,
                                                                           (const T *)grad_y, D, (T *)grad_x, add_x != 0);
            AN_CUDA_LAUNCH_CHECK(ctx, "rmsnorm_dx_kernel");
        }
        if (grad_w) return weight_grad<T>(ctx, s, (const T *)x, rstd, (const T *)grad_y, rows, D, (T *)grad_w);
    });
    return AN_OK;
}

} // extern "C"
