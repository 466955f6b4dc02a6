/* rmsnorm.cu — RMSNorm over the last dim, y = x * rstd * w with rstd = 1 / sqrt(mean(x^2) + eps)
 * (HF Qwen2RMSNorm / LlamaRMSNorm), and its gradients from the saved rstd. The forward optionally
 * takes a residual: it normalises sum = x + residual (rounded to the dtype, as an_add rounds it)
 * and writes the sum too, so a residual add and the norm after it read x once.
 *
 * Paths, chosen by shape: the vector path when D is a multiple of 16 / sizeof(dtype) (4 f32, 8
 * bf16/f16), the row fits 32 warps of packs and x, w, y / grad_y, grad_x are 16-byte aligned: one
 * team of warps per row reads the row once into registers with 16-byte loads, reduces, and writes
 * from the registers. Every other shape (and a row too long for the registers of one block)
 * takes the scalar path (one block per row, 2- or 4-byte accesses, x read twice).
 * Numerics (both paths): elements are widened to fp32; each row's sum of squares (and the
 * backward's sum of g w x) is an fp32 sum in a fixed order that depends only on the path, D and
 * the dtype (per thread, then a warp butterfly, then the warps in order), and rstd =
 * 1 / sqrt(sum / D + eps) is taken in fp64 and stored as fp32 (the CPU op saves the same fp32
 * rstd). The per-element formulas are the same on both paths; outputs round once to the dtype and
 * are written with =. grad_w is a deterministic two-pass reduction: pass 1 writes fp32 partial
 * column sums, one per split of the rows (vector path: fused into the grad_x kernel, one split
 * per block, each lane adding its rows in order; the split count depends only on the shape and
 * the GPU's SM count), pass 2 adds the splits in a fixed order. No atomics anywhere: a launch of
 * the same shape on the same GPU gives the same bits every time. */
#include "kernels/block_reduce.cuh"  /* an_block_sum, an_row_threads (the scalar path) */
#include "kernels/vec.cuh"           /* an_pack: 16-byte loads and stores */
#include "kernels/pdl.cuh"           /* an_launch_pdl, an_pdl_wait / an_pdl_trigger: the vector forward */

#include <stdint.h>

namespace {

const int kColThreads = 256; /* dw pass 1 (the scalar path): 32 columns x 8 row lanes */
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

/* Pass 2: dw[col] = the sum over splits of partial (splits, D): row lane ty of a block of
 * kFinishWidth columns x kFinishLanes lanes adds splits ty, ty + kFinishLanes, ... in order, then
 * the lanes are added as a tree. Narrow blocks, many lanes: at D = 1536 with one split per block
 * of the fused backward (hundreds), 32 columns x 8 lanes made 48 blocks of long dependent chains,
 * 20.8 us a call in a full fine-tune's step (docs/performance.md). */
const int kFinishWidth = 8, kFinishLanes = 32;
template <typename T> __global__ void rmsnorm_dw_finish_kernel(const float *partial, int64_t splits, int64_t D, T *dw) {
    __shared__ float sm[kFinishWidth * kFinishLanes];
    int tx = threadIdx.x % kFinishWidth, ty = threadIdx.x / kFinishWidth;
    int64_t col = (int64_t)blockIdx.x * kFinishWidth + tx;
    float acc = 0.0f;
    if (col < D)
        for (int64_t sp = ty; sp < splits; sp += kFinishLanes) acc += partial[sp * D + col];
    sm[threadIdx.x] = acc;
    __syncthreads();
    for (int half = kFinishLanes / 2; half > 0; half /= 2) {
        if (ty < half) sm[threadIdx.x] += sm[threadIdx.x + half * kFinishWidth];
        __syncthreads();
    }
    if (ty == 0 && col < D) dw[col] = an_store<T>(sm[tx]);
}

template <typename T>
an_status finish_weight_grad(an_ctx *ctx, an_cuda_state *s, const float *partial, int64_t splits, int64_t D, T *dw) {
    unsigned col_blocks = (unsigned)((D + kFinishWidth - 1) / kFinishWidth);
    rmsnorm_dw_finish_kernel<T><<<col_blocks, kFinishWidth * kFinishLanes, 0, s->stream>>>(partial, splits, D, dw);
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
