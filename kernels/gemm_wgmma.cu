/* gemm_wgmma.cu — D (M, N) = A (M, K) B^T in bf16 or f16 with fp32 accumulation on Hopper's
 * warpgroup tensor cores (sm_90a), for B (N, K) or, with BT, B stored (K, N) (and, with AT, A
 * stored (K, M): a weight gradient dY^T X; bench/gemm_wgmma_variants only so far): a GEMM of our own so
 * that its epilogue can do what cuBLASLt's cannot. Its forms serve the training MLP
 * (ops/swiglu_mlp.c): SWIGLU writes gate = x W_gate^T, up = x W_up^T and silu(gate) up from one
 * tile of both projections, and SWIGLU_BWD turns d act = dY W_down into the swiglu's gradients
 * dgate, dup in the epilogue (SWIGLU_BWD_ACT also writes act again for a trained W_down's dW), so
 * neither act nor d act makes a trip through memory of its own. Its main loop may run over several
 * operand pairs (Operands: K segments, each zero-filled past its own K), so a sum of products into
 * one output, dX = dq Wq + dk Wk + dv Wv or a LoRA branch beside its base projection, is one launch
 * and one rounding (an_cuda_gemm_segments); PROJ puts several projections of one input side by
 * side (q | k | v with their biases and adapters, an_cuda_gemm_projections), and may turn q's and
 * k's heads by their rotary angles before storing them (rope_tile), so rope needs no pass of its own.
 * At parity with cuBLASLt as a plain GEMM (STORE) on the 1.5B model's training shapes, bit for bit
 * equal to it at every one measured (bench/gemm_wgmma_variants, docs/performance.md).
 *
 * Shape of the work: a persistent grid (one block a multiprocessor) walks 128 x BN output tiles
 * in a grouped order (8 row tiles at a time share the L2). With CM = 2 the blocks run in
 * thread-block clusters of two that take two row tiles over the same columns at once: each loads
 * its own A and half of B's tile, multicast into both (B leaves the L2 once for two tiles), and a
 * stage is free again once the consumers of both blocks handed it back (their empty barriers
 * count both); the library launches CM = 1 (see BWD_INPUTS_NUM's comment). Warpgroup 0 is the
 * producer: one
 * thread streams 64-wide k slices of A (128 rows) and B (BN rows or columns) into STAGES stages
 * with the tensor memory accelerator (128-byte swizzle, zero fill past M, N and K), each stage
 * counted by a "full" mbarrier and handed back by an "empty" one. Cooperatively (the forward and
 * the plain GEMMs) warpgroups 1 and 2 each own 64 rows of the tile: wgmma m64nBNk16 from the stage's descriptors, the accumulators in registers
 * (the producer gives its registers to them: setmaxnreg). Each tile's epilogue rounds the sums to
 * T once, forms its outputs, writes them into a swizzled staging buffer in shared memory and sends
 * them out with the tensor memory accelerator's stores, while the producer already fills the next
 * tile's stages. Run cooperatively (bench/gemm_wgmma_variants keeps that for comparison), the
 * backward forms bring gate and up into the staging at k slice inputs_kb of the main loop (three
 * quarters in, BWD_INPUTS_NUM / BWD_INPUTS_DEN), once the last tile's stores have left it.
 * In ping-pong (PP, what the backward forms run) each consumer warpgroup takes every other tile
 * whole (both 64-row halves, 2 x BN / 2 sums a thread), their main loops in tile order (turn
 * barriers), so one warpgroup's epilogue runs while the other's MMAs keep the tensor cores busy;
 * the two share one staging buffer in turn, and a store thread (the producer warpgroup's second
 * warp) sends each tile's outputs out and brings the next tile's gate and up in once the stores
 * have read it, so no consumer waits on a store; for SWIGLU_BWD it does so a 64-row half at a
 * time, the next tile's first half coming in while this tile's second is formed.
 *
 * ROWSTATS (a loss chunk's logits, cooperative) also leaves each row's running log-sum-exp per
 * column tile: two more warps of the producer warpgroup (warp 2 + c, 56 registers there instead
 * of 40) read warpgroup c's staged, rounded tile back from shared memory while the next tile's
 * MMAs run, so the exponentials cost the tensor cores nothing (in the consumers' epilogue they
 * made the GEMM 41-48% slower; from the staging it is at cuBLASLt's time, bench/gemm_wgmma_variants).
 *
 * Sums: each output is one thread's fp32 accumulation over k in a fixed order (k16 steps in k
 * order), one rounding to T: the same bits every run. The epilogues' swiglu formulas are
 * kernels/silu.cuh's, on the rounded values the separate kernels would read, so the fused forms
 * give the separate path's bits wherever the GEMMs agree.
 *
 * bench/gemm_wgmma_variants.cu includes this file with AN_WGMMA_GEMM_KERNEL_ONLY defined to time
 * the kernel template against cuBLASLt. */
#ifndef AN_WGMMA_GEMM_KERNEL_ONLY
#include "kernels/cuda_common.cuh" /* an_cuda_state, AN_CUDA_CHECK, an_cuda_tensor_map_encoder */
#include "kernels/vec.cuh"         /* an_aligned16 */
#endif
#include "kernels/rope_rotate.cuh" /* an_rope_rotate: rope.cu's rotation (PROJ's rope_tile) */
#include "kernels/silu.cuh"  /* an_silu, an_swiglu_grad */
#include "kernels/tma.cuh"   /* mbarriers, tma::load / store, tma::encode_2d */
#include "kernels/wgmma.cuh" /* desc_k128, desc_mn128, Mma, fence / commit / wait, regs_dec / inc, named_sync */

#include <cuda.h>         /* CUtensorMap */
#include <cudaTypedefs.h> /* PFN_cuTensorMapEncodeTiled_v12000 */
#include <stdint.h>
#include <type_traits>

namespace wgmma_gemm {

constexpr int BM = 128, BK = 64, THREADS = 384;

/* The epilogue's forms (the maps' roles are the kernel's comment's):
 * STORE: D = the sums.
 * SWIGLU: B's tile is BN / 2 gate rows then the same BN / 2 up rows; the tile's outputs are g and u
 *   (each rounded to T) and silu(g) u of those rounded values.
 * SWIGLU_BWD (with BT): the sums are d act; with g and u of the same tile, the outputs are
 *   dg = d act u silu'(g) and du = d act silu(g), d act rounded to T first.
 * SWIGLU_BWD_ACT: the same and silu(g) u as a third output (the trained down projection's dW
 *   reads it; it is not kept from the forward).
 * ROWSTATS: D as STORE, and for each row of the tile the running log-sum-exp of its rounded
 *   values (max m, sum of exp(x - m) over the tile's columns below N) into stats[row * tiles_n +
 *   tn]: a loss's logits, whose log-sum-exp then needs no pass over them of its own.
 * PROJ: the projections of one input side by side (q | k | v): the N columns fall in up to three
 *   groups of whole tiles, group g its own output (omap g, columns from 0) and bias; a segment
 *   covers one group's columns (Operands' col_lo, col_hi: its base weight, then its adapter's down
 *   B^T), and a tile runs the k slices of the segments covering it. An output is x W^T + bias
 *   rounded to T, plus the adapter's down B^T rounded again (the accumulators rounded in place
 *   between the base's k slices and the adapter's): peft's order (the base layer's output, then
 *   the adapter's fp32 product added and cast back), so an adapter's first small products round
 *   away as they do there. */
enum Epilogue { STORE = 0, SWIGLU = 1, SWIGLU_BWD = 2, SWIGLU_BWD_ACT = 3, ROWSTATS = 4, PROJ = 5 };
__host__ __device__ constexpr bool backward_form(int epi) { return epi == SWIGLU_BWD || epi == SWIGLU_BWD_ACT; }

/* Shared memory: the stages, two stagings of 64 output rows (cooperative: each consumer
 * warpgroup's; ping-pong: the tile's two halves, the warpgroups' in turn; as T, in boxes of 64 rows
 * and BW columns: BN columns, for SWIGLU three outputs of BN / 2, for SWIGLU_BWD(_ACT) two of BN, with
 * act three), the full, empty, gate-and-up, turn, ready and written mbarriers, and 1024 bytes to
 * align the first stage (the swizzle's unit). */
template <int BN, int STAGES, int EPI> struct Layout {
    static constexpr int A_BYTES = BM * 128, B_BYTES = BN * 128, STAGE = A_BYTES + B_BYTES;
    static constexpr int WG_STAGING =
        64 * 2 * (EPI == SWIGLU ? 3 * (BN / 2) : EPI == SWIGLU_BWD ? 2 * BN : EPI == SWIGLU_BWD_ACT ? 3 * BN : BN);
    static constexpr int BARS = STAGES * STAGE + 2 * WG_STAGING;
    /* full and empty a stage; inputs, turn two each; ready, written four each */
    static constexpr int BYTES = BARS + 16 * STAGES + 96 + 1024;
};

template <int BN, int STAGES, int EPI> constexpr int smem_bytes() { return Layout<BN, STAGES, EPI>::BYTES; }

/* Tile t's (row, column) in the grouped order: group_rows rows of tiles at a time walk the columns
 * (they share the L2: B's column tiles leave DRAM once a group); CM rows of tiles count as one, a
 * cluster's. */
template <int CM>
__device__ __forceinline__ void tile_of(int t, int tiles_m, int tiles_n, int group_rows, int *tm, int *tn) {
    const int group_m = group_rows / CM > 1 ? group_rows / CM : 1;
    const int group = group_m * tiles_n, first = (t / group) * group_m;
    const int rows = tiles_m - first < group_m ? tiles_m - first : group_m;
    *tm = first + (t % group) % rows;
    *tn = (t % group) / rows;
}

/* Byte offset of the 4-byte pair at (row r, column c, even) of a BW-column box of b16 (BW 64:
 * 128-byte rows in the 128-byte swizzle; BW 32: 64-byte rows in the 64-byte swizzle), as the
 * tensor map reads it back. Both put a warp's 8 rows of one 16-byte chunk in 8 bank groups. */
template <int BW> __device__ __forceinline__ uint32_t staged(int r, int c) {
    if constexpr (BW == 64) return (uint32_t)(r * 128 + ((((c >> 3) ^ r) & 7) << 4) + (c & 7) * 2);
    else return (uint32_t)(r * 64 + ((((c >> 3) ^ (r >> 1)) & 3) << 4) + (c & 7) * 2);
}

template <typename T> __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    if constexpr (std::is_same<T, __nv_bfloat16>::value) {
        __nv_bfloat162 p = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<uint32_t *>(&p);
    } else {
        __half2 p = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<uint32_t *>(&p);
    }
}
template <typename T> __device__ __forceinline__ void unpack(uint32_t v, float (&f)[2]) {
    if constexpr (std::is_same<T, __nv_bfloat16>::value) {
        __nv_bfloat162 p = *reinterpret_cast<__nv_bfloat162 *>(&v);
        f[0] = __low2float(p), f[1] = __high2float(p);
    } else {
        __half2 p = *reinterpret_cast<__half2 *>(&v);
        f[0] = __low2float(p), f[1] = __high2float(p);
    }
}

__device__ __forceinline__ float ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

/* The running log-sum-exp (max m, sum of exp(x - m)) of row r's first cols values (a multiple of 8)
 * of a staged 64-row half (boxes of 64 rows x BW columns, BOX bytes apart), read once, a 16-byte
 * chunk at a time: the chunk's maximum first, so a chunk rescales the sum once at most (as
 * cross_entropy.cu's pack_max_sum), with the fast exponential (ex2.approx: a few units in the last
 * place). As an_max_sum: -inf adds nothing, NaN makes the sum NaN (fmaxf passes it over), an
 * infinite maximum counts its own elements once each (a second pass, only then). Called with cols
 * the constant TN for whole tiles, so that loop unrolls. */
template <typename T, int BW, int BOX, int TN>
__device__ __forceinline__ float2 staged_row_lse(const unsigned char *stg, int r, int cols) {
    constexpr float L2E = 1.4426950408889634f;
    float m = -INFINITY, sum = 0.0f;
    auto chunk = [&](int col, float (&v)[8]) {
        const uint4 q = *reinterpret_cast<const uint4 *>(stg + (col / BW) * BOX + staged<BW>(r, col % BW));
        const uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
        for (int k = 0; k < 4; k++) {
            float f[2];
            unpack<T>(w[k], f);
            v[2 * k] = f[0], v[2 * k + 1] = f[1];
        }
    };
#pragma unroll 2
    for (int col = 0; col < cols; col += 8) {
        float v[8];
        chunk(col, v);
        const float cm = fmaxf(fmaxf(fmaxf(v[0], v[1]), fmaxf(v[2], v[3])), fmaxf(fmaxf(v[4], v[5]), fmaxf(v[6], v[7])));
        if (cm > m) {
            if (sum != 0.0f) sum *= ex2((m - cm) * L2E);
            m = cm;
        }
        if (m != -INFINITY) { /* else every value so far is -inf */
            const float ml = m * L2E;
#pragma unroll
            for (int k = 0; k < 8; k++) sum += ex2(fmaf(v[k], L2E, -ml));
        }
    }
    if (m == INFINITY) {
        sum = 0.0f;
        for (int col = 0; col < cols; col += 8) {
            float v[8];
            chunk(col, v);
#pragma unroll
            for (int k = 0; k < 8; k++) sum += v[k] == m ? 1.0f : 0.0f;
        }
    }
    return make_float2(m, sum);
}

/* The main loop's operands: D = sum over segments s of A_s B_s^T (with BT, A_s B_s), segment s
 * covering k slices [end_kb[s - 1], end_kb[s]) of the loop (k slices of 64; a segment's last slice
 * zero-filled past its K_s by the tensor maps), so sums such as dX = dq Wq + dk Wk + dv Wv take
 * one launch and one rounding. a[s], b[s] are amap and bmap below for that segment. */
constexpr int MAX_SEGMENTS = 6, MAX_GROUPS = 3;
struct Operands {
    CUtensorMap a[MAX_SEGMENTS], b[MAX_SEGMENTS];
    int end_kb[MAX_SEGMENTS];
    int segments;
    /* PROJ only: segment s feeds output columns [col_lo[s], col_hi[s]) (B_s's rows from col_lo[s]);
     * group g is columns [group_lo[g], group_lo[g + 1]) (the last to N), with bias[g] (T, NULL: none) */
    int col_lo[MAX_SEGMENTS], col_hi[MAX_SEGMENTS];
    int group_lo[MAX_GROUPS], groups;
    const void *bias[MAX_GROUPS];
    /* PROJ only: group g's rotary table (M, rope_d / 2) of (cos, sin) (an_cuda_rope_table), or NULL:
     * its output rotated in NEOX pairs (i, i + rope_d / 2) of every head, rope_d 64 or 128 */
    const float2 *rope[MAX_GROUPS];
    int rope_d;
    int group_rows; /* rows of tiles that walk the columns together (tile_of): GROUP_ROWS unless set */
};
/* tile_of's group: 8 rows of tiles, unless an_cuda_set_gemm_group_rows says otherwise */
constexpr int GROUP_ROWS = 8;
/* Whether segment seg's k slices run for the tile whose columns start at col (every segment but PROJ's). */
template <int EPI> __device__ __forceinline__ bool covers(const Operands &ops, int seg, int col) {
    return EPI != PROJ || (col >= ops.col_lo[seg] && col < ops.col_hi[seg]);
}
/* PROJ: group grp's bias at its columns col, col + 1 (col even; zeros without a bias). */
template <typename T> __device__ __forceinline__ void group_bias(const Operands &ops, int grp, int col, float (&b)[2]) {
    b[0] = b[1] = 0.0f;
    if (ops.bias[grp]) unpack<T>(*(reinterpret_cast<const uint32_t *>(ops.bias[grp]) + col / 2), b);
}

/* PROJ with a rotary table: the 64-row half's tile values (acc, the thread's wgmma fragment: columns
 * 8 j + c0 + {0, 1} of rows r0 and r0 + 8, TN / 8 values of j) as the separate path would store and
 * rotate them: each rounded to T (with the bias unless the adapter's slices already hold it), then
 * pairs (i, i + D / 2) of each head turned by the row's angle as kernels/rope.cu turns them (fp32,
 * every product and sum rounded on its own, the table's cos and sin those it computes), left in acc
 * for the store's one rounding. Both of a pair are the same thread's (j and j + D / 16), and a tile
 * holds whole heads (TN % D == 0 and the group's tiles start at multiples of TN). */
template <typename T, int TN, int D>
__device__ __forceinline__ void rope_tile(float (&acc)[TN / 2], const Operands &ops, int grp, int gcol, int row, int M,
                                          int c0, bool add_bias) {
    static_assert(TN % D == 0 && D % 16 == 0, "whole heads a tile, pairs in one thread");
    const float2 *table = ops.rope[grp];
#pragma unroll
    for (int j = 0; j < TN / 8; j++) {
        float bias[2] = {0.0f, 0.0f};
        if (add_bias) group_bias<T>(ops, grp, gcol + 8 * j + c0, bias);
#pragma unroll
        for (int hr = 0; hr < 2; hr++) {
            float v[2];
            const int e = 4 * j + 2 * hr;
            unpack<T>(pack<T>(acc[e] + bias[0], acc[e + 1] + bias[1]), v);
            acc[e] = v[0], acc[e + 1] = v[1];
        }
    }
#pragma unroll
    for (int hr = 0; hr < 2; hr++) {
        const int r = row + 8 * hr;
        if (r >= M) continue; /* past M: zero-filled rows, never stored */
#pragma unroll
        for (int j = 0; j < TN / 8; j++) {
            if ((8 * j) % D >= D / 2) continue; /* the pair's second half: turned with its first */
            const int jj = j + D / 16, i = (8 * j) % D + c0, e = 4 * j + 2 * hr, ee = 4 * jj + 2 * hr;
            const float4 cs = *reinterpret_cast<const float4 *>(table + (size_t)r * (D / 2) + i); /* (c, s) at i, i + 1 */
            const float c[2] = {cs.x, cs.z}, sn[2] = {cs.y, cs.w};
#pragma unroll
            for (int q = 0; q < 2; q++) {
                an_rope_rotate(acc[e + q], acc[ee + q], c[q], sn[q], &acc[e + q], &acc[ee + q]);
            }
        }
    }
}

/* Tensor maps (each 128-byte swizzled in boxes of 64 columns, or 32 with the 64-byte swizzle):
 * amap A (M, K) in boxes (64, 128), with AT A stored (K, M) in boxes (64, 64) (a weight gradient's
 * dY^T; bench/gemm_wgmma_variants only so far); bmap B (N, K) in boxes (64, BN), with BT B (K, N) in boxes
 * (64, 64), for SWIGLU the gate weight (N, K) and bmap2 the up weight in boxes (64, BN / 2);
 * omap0..2 the outputs (M, N) in boxes (BW, 64): D; gate, up, act; dgate, dup. imap0, imap1
 * (SWIGLU_BWD): gate and up (M, N) in boxes (64, 64). Maps a form does not use may be any. */
template <typename T, int BN, int STAGES, int EPI, bool BT = false, int CM = 1, bool PP = false, bool AT = false>
__global__ void __launch_bounds__(THREADS, 1)
    kernel(const __grid_constant__ Operands ops, const __grid_constant__ CUtensorMap bmap2, const __grid_constant__ CUtensorMap imap0,
           const __grid_constant__ CUtensorMap imap1, const __grid_constant__ CUtensorMap omap0,
           const __grid_constant__ CUtensorMap omap1, const __grid_constant__ CUtensorMap omap2, int M, int N,
           int inputs_kb, float2 *stats) {
#if AN_WGMMA_AVAILABLE
    using L = Layout<BN, STAGES, EPI>;
    static_assert(!backward_form(EPI) || BT, "the swiglu gradient epilogue follows dX = dY W");
    static_assert(EPI != SWIGLU || !BT, "the swiglu epilogue follows y = x W^T");
    static_assert(CM == 1 || CM == 2, "clusters of one or two CTAs");
    static_assert(CM == 1 || !BT || BN % 128 == 0, "B (K, N)'s boxes split evenly over the cluster");
    static_assert(!PP || (CM == 1 && BN <= 128), "ping-pong: one CTA a tile, a whole tile's sums in one warpgroup");
    static_assert(!AT || (EPI == STORE && CM == 1), "A stored (K, M): plain GEMMs of one CTA a tile");
    static_assert(EPI != ROWSTATS || (!PP && !BT && !AT && CM == 1), "row statistics: cooperative, x W^T");
    static_assert(EPI != PROJ || (!PP && !BT && !AT && CM == 1), "projections: cooperative, x W^T");
    extern __shared__ unsigned char smem_raw[];
    const uint32_t raw = (uint32_t)__cvta_generic_to_shared(smem_raw), base = (raw + 1023) & ~1023u;
    const uint32_t full = base + L::BARS, empty = full + 8 * STAGES, inputs = empty + 8 * STAGES;
    /* ping-pong: turn + 8c, warpgroup c may issue its tile's MMAs (the other's are all issued);
     * ready + 8 (2c + p), part p of the staging is warpgroup c's (the last tile's stores have read
     * it; for the backward forms this tile's gate and up are in it); written + 8 (2c + p),
     * warpgroup c's outputs of part p are in the staging, to be stored. The staging passes between
     * them in PARTS parts of 2 / PARTS 64-row halves: halves for SWIGLU_BWD (the next tile's gate
     * and up come in while the tile's second half is formed: 463 -> 444 us in
     * bench/gemm_wgmma_variants), the whole tile for the others (SWIGLU_BWD_ACT's three outputs:
     * 518 us whole, 529 in halves) */
    constexpr int PARTS = EPI == SWIGLU_BWD ? 2 : 1, HP = 2 / PARTS;
    const uint32_t turn = inputs + 16, ready = turn + 16, written = ready + 32;
    const int wg = threadIdx.x / 128, tid = threadIdx.x % 128;
    constexpr int TN = EPI == SWIGLU ? BN / 2 : BN; /* output columns a tile */
    /* the staging of a 64-row half: boxes of 64 rows x BW columns, output o's column box cb at (o NB + cb) BOX */
    constexpr int BW = TN % 64 == 0 ? 64 : 32, NB = TN / BW, BOX = 64 * BW * 2;
    constexpr int OUTS = EPI == SWIGLU_BWD ? 2 : EPI == SWIGLU || EPI == SWIGLU_BWD_ACT ? 3 : 1; /* outputs a tile stages */
    const int tiles_m = (M + BM - 1) / BM, tiles_n = (N + TN - 1) / TN;
    /* a cluster of CM CTAs takes CM row tiles over the same columns: CTA rank's row tile is
     * CM tmc + rank of the cluster tile (tmc, tn) */
    const int tiles_mc = (tiles_m + CM - 1) / CM, tiles = tiles_mc * tiles_n, nk = ops.end_kb[ops.segments - 1];
    const int cluster = blockIdx.x / CM, clusters = gridDim.x / CM;
    const int rank = CM > 1 ? (int)tma::cluster_rank() : 0;

    if (threadIdx.x == 0) {
        for (int s = 0; s < STAGES; s++) {
            tma::bar_init(full + 8 * s, 1);
            /* lane 0 of each consumer warp (ping-pong: of the one warpgroup that took the stage's
             * tile) of each CTA of the cluster */
            tma::bar_init(empty + 8 * s, PP ? 4 : 8 * CM);
        }
        for (int b = 0; b < 12; b++) tma::bar_init(inputs + 8 * b, 1); /* inputs (SWIGLU_BWD: warpgroup c's gate and
                                                                         * up tiles landed), turn, ready, written */
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    if constexpr (CM > 1) tma::cluster_sync(); /* the peers' barriers exist before anything reaches them */
    else __syncthreads();

    if (wg == 0) { /* producer */
        /* ROWSTATS: its statistics warps need more than 40 (they spill) */
        wgmma::regs_dec<EPI == ROWSTATS ? 56 : 40>();
        if (tid == 0) {
            int it = 0;
            for (int t = cluster; t < tiles; t += clusters) {
                int tmc, tn;
                tile_of<CM>(t, tiles_mc, tiles_n, ops.group_rows, &tmc, &tn);
                const int tm = tmc * CM + rank;
                int seg = 0;
                for (int kb = 0; kb < nk; kb++) {
                    while (kb >= ops.end_kb[seg]) seg++;
                    if (!covers<EPI>(ops, seg, tn * TN)) { /* PROJ: another group's segment */
                        kb = ops.end_kb[seg] - 1;
                        continue;
                    }
                    const int s = it % STAGES;
                    const int kl = kb - (seg ? ops.end_kb[seg - 1] : 0); /* the k slice within the segment */
                    const CUtensorMap *amap = &ops.a[seg], *bmap = &ops.b[seg];
                    /* with CM > 1 the stage is free once every CTA's consumers handed it back: B's
                     * parts are written into all of them */
                    tma::bar_wait(empty + 8 * s, ((it / STAGES) & 1) ^ 1);
                    const uint32_t st = base + s * L::STAGE;
                    const int brow = EPI == PROJ ? tn * BN - ops.col_lo[seg] : tn * BN; /* B's first row */
                    tma::bar_expect(full + 8 * s, L::STAGE);
                    if constexpr (AT) { /* A (K, M): two boxes of (64 m, 64 k), one a 64-row half */
                        tma::load(st, amap, tm * BM, kl * BK, full + 8 * s);
                        tma::load(st + BK * 128, amap, tm * BM + 64, kl * BK, full + 8 * s);
                    } else {
                        tma::load(st, amap, kl * BK, tm * BM, full + 8 * s);
                    }
                    if constexpr (CM == 1) {
                        if constexpr (EPI == SWIGLU) {
                            tma::load(st + L::A_BYTES, bmap, kl * BK, tn * (BN / 2), full + 8 * s);
                            tma::load(st + L::A_BYTES + BN / 2 * 128, &bmap2, kl * BK, tn * (BN / 2), full + 8 * s);
                        } else if constexpr (BT) { /* B (K, N): BN / 64 boxes of (64 n, 64 k) */
#pragma unroll
                            for (int b = 0; b < BN / 64; b++)
                                tma::load(st + L::A_BYTES + b * BK * 128, bmap, tn * BN + 64 * b, kl * BK, full + 8 * s);
                        } else {
                            tma::load(st + L::A_BYTES, bmap, kl * BK, brow, full + 8 * s);
                        }
                    } else { /* B's tile in CM parts, part rank loaded here and multicast to the cluster */
                        constexpr uint16_t all = (uint16_t)((1u << CM) - 1);
                        if constexpr (EPI == SWIGLU) { /* rank 0 the gate rows, rank 1 the up rows */
                            tma::load_multicast(st + L::A_BYTES + rank * (BN / 2) * 128, rank ? &bmap2 : bmap,
                                                kl * BK, tn * (BN / 2), full + 8 * s, all);
                        } else if constexpr (BT) {
#pragma unroll
                            for (int b = rank; b < BN / 64; b += CM)
                                tma::load_multicast(st + L::A_BYTES + b * BK * 128, bmap, tn * BN + 64 * b, kl * BK,
                                                    full + 8 * s, all);
                        } else { /* bmap's boxes are BN / CM rows */
                            tma::load_multicast(st + L::A_BYTES + rank * (BN / CM) * 128, bmap, kl * BK,
                                                tn * BN + rank * (BN / CM), full + 8 * s, all);
                        }
                    }
                    it++;
                }
            }
        } else if (PP && tid == 32) {
            /* ping-pong's store thread, a part of the staging at a time: once part p of tile i is
             * written, its outputs go out from here (so the warpgroup goes on to its next main
             * loop), and once they have read it, it is tile i + 1's (for the backward forms, once
             * that tile's gate and up for it landed too), while tile i's other part may still be
             * being formed */
            const uint32_t staging0 = base + STAGES * L::STAGE;
            const CUtensorMap *maps[3] = {&omap0, &omap1, &omap2};
            auto hand_over = [&](int i, int t, int p) { /* part p of the staging to tile i (t) */
                const uint32_t bar = ready + 8 * (2 * (i & 1) + p);
                if constexpr (backward_form(EPI)) {
                    int tm, tn;
                    tile_of<1>(t, tiles_mc, tiles_n, ops.group_rows, &tm, &tn);
                    tma::bar_expect(bar, HP * 2 * 64 * BN * 2);
#pragma unroll
                    for (int h = p * HP; h < (p + 1) * HP; h++)
#pragma unroll
                        for (int o = 0; o < 2; o++)
#pragma unroll
                            for (int cb = 0; cb < NB; cb++)
                                tma::load(staging0 + h * L::WG_STAGING + (o * NB + cb) * BOX, o ? &imap1 : &imap0,
                                          tn * BN + 64 * cb, tm * BM + 64 * h, bar);
                } else {
                    tma::bar_arrive(bar);
                }
            };
            if (cluster < tiles)
                for (int p = 0; p < PARTS; p++) hand_over(0, cluster, p);
            int i = 0;
            for (int t = cluster; t < tiles; t += clusters, i++) {
                int tm, tn;
                tile_of<1>(t, tiles_mc, tiles_n, ops.group_rows, &tm, &tn);
#pragma unroll
                for (int p = 0; p < PARTS; p++) {
                    tma::bar_wait(written + 8 * (2 * (i & 1) + p), (i >> 1) & 1);
#pragma unroll
                    for (int h = p * HP; h < (p + 1) * HP; h++)
#pragma unroll
                        for (int o = 0; o < OUTS; o++)
#pragma unroll
                            for (int cb = 0; cb < NB; cb++)
                                tma::store(maps[o], tn * TN + BW * cb, tm * BM + 64 * h,
                                           staging0 + h * L::WG_STAGING + (o * NB + cb) * BOX);
                    tma::store_commit();
                    if (t + clusters < tiles) {
                        tma::store_wait_read<0>();
                        hand_over(i + 1, t + clusters, p);
                    }
                }
            }
            tma::store_wait<0>();
        } else if (EPI == ROWSTATS && tid >= 64) {
            /* ROWSTATS' statistics warps: warp 2 + c reads warpgroup c's 64 staged rows of each tile
             * (once written + 8c says they are there; ready + 8c hands them back), lane l rows l
             * and l + 32, off the consumers' path: the exponentials in the consumers' epilogue held
             * the tensor cores idle (622 -> 876-920 us at a loss chunk's logits), here they run
             * under the next tile's MMAs. The staged values are the rounded logits as stored. */
            const int c = tid / 32 - 2, lane = tid % 32;
            const unsigned char *stg = smem_raw + (base + STAGES * L::STAGE + c * L::WG_STAGING - raw);
            int i = 0;
            for (int t = cluster; t < tiles; t += clusters, i++) {
                int tm, tn;
                tile_of<1>(t, tiles_mc, tiles_n, ops.group_rows, &tm, &tn);
                const int cols = N - tn * TN < TN ? N - tn * TN : TN; /* a multiple of 8 (N is) */
                tma::bar_wait(written + 8 * c, i & 1);
#pragma unroll 1
                for (int rr = 0; rr < 2; rr++) {
                    const int r = lane + 32 * rr, row = tm * BM + 64 * c + r;
                    const float2 ms = cols == TN ? staged_row_lse<T, BW, BOX, TN>(stg, r, TN)
                                                 : staged_row_lse<T, BW, BOX, TN>(stg, r, cols);
                    if (row < M) stats[(size_t)row * tiles_n + tn] = ms;
                }
                __syncwarp();
                if (lane == 0) tma::bar_arrive(ready + 8 * c);
            }
        }
    } else {
        /* consumers. Cooperative (PP false): warpgroup c = wg - 1 owns rows 64c .. 64c + 63 of every
         * tile. Ping-pong: warpgroup c takes every other tile of the block whole (i % 2 == c, both
         * 64-row halves), so one warpgroup's epilogue runs while the other's MMAs keep the tensor
         * cores busy; the turn barriers keep their main loops in tile order (a stage's full barrier
         * is then never waited on two uses ahead). */
        wgmma::regs_inc<EPI == ROWSTATS ? 224 : 232>();
        const int c = wg - 1, warp = tid / 32, lane = tid % 32;
        constexpr int MH = PP ? 2 : 1, TSTEP = PP ? 2 : 1; /* 64-row halves a warpgroup sums; its tile stride */
        const uint32_t staging0 = base + STAGES * L::STAGE;
        float acc[MH][BN / 2];
        /* a stage goes back to every CTA of the cluster whose producer writes into it */
        auto release = [&](int s) {
            if (lane != 0) return;
            if constexpr (CM == 1) {
                tma::bar_arrive(empty + 8 * s);
            } else {
                for (int r = 0; r < CM; r++) {
                    if (r == rank) tma::bar_arrive(empty + 8 * s);
                    else tma::bar_arrive_cluster(empty + 8 * s, (uint32_t)r);
                }
            }
        };
        int i = PP ? c : 0; /* tiles of this block so far */
        int uses = 0;       /* PROJ: stage uses so far (its tiles differ in k slices) */
        for (int t = cluster + i * clusters; t < tiles; t += TSTEP * clusters, i += TSTEP) {
            int tmc, tn;
            tile_of<CM>(t, tiles_mc, tiles_n, ops.group_rows, &tmc, &tn);
            const int row0 = (tmc * CM + rank) * BM; /* the tile's first row */
            /* the tile's k slices; PROJ: those of its base weight (then its adapter's, if any), its
             * group (output, bias) and first column in that output */
            int nt = nk, nbase = nk, grp = 0, gcol = tn * TN;
            if constexpr (EPI == PROJ) {
                nt = 0;
                for (int g = 0; g < ops.segments; g++)
                    if (covers<EPI>(ops, g, tn * TN)) {
                        if (nt == 0) nbase = ops.end_kb[g] - (g ? ops.end_kb[g - 1] : 0);
                        nt += ops.end_kb[g] - (g ? ops.end_kb[g - 1] : 0);
                    }
                while (grp + 1 < ops.groups && tn * TN >= ops.group_lo[grp + 1]) grp++;
                gcol = tn * TN - ops.group_lo[grp];
            }
            if constexpr (PP) { /* the other warpgroup's last tile has issued all its MMAs */
                const int turns = c ? (i + 1) / 2 : i / 2; /* its tiles before this one */
                if (turns > 0) tma::bar_wait(turn + 8 * c, (turns - 1) & 1);
            }
            int it = EPI == PROJ ? uses : i * nk; /* this tile's first stage use */
            for (int kb = 0; kb < nt; kb++, it++) {
                if constexpr (EPI == PROJ)
                    if (kb == nbase) { /* x W^T done: its sums + bias rounded to T, the adapter's slices add to them */
                        wgmma::wait<0>();
                        wgmma::fence_regs(acc[0]);
#pragma unroll
                        for (int j = 0; j < TN / 8; j++) { /* the epilogue's fragment layout, below */
                            float bias[2];
                            group_bias<T>(ops, grp, gcol + 8 * j + 2 * (lane % 4), bias);
#pragma unroll
                            for (int hr = 0; hr < 2; hr++) {
                                float v[2];
                                float *a = &acc[0][4 * j + 2 * hr];
                                unpack<T>(pack<T>(a[0] + bias[0], a[1] + bias[1]), v);
                                a[0] = v[0], a[1] = v[1];
                            }
                        }
                        wgmma::fence_regs(acc[0]);
                    }
                const int s = it % STAGES;
                tma::bar_wait(full + 8 * s, (it / STAGES) & 1);
                const uint32_t st = base + s * L::STAGE;
                const uint64_t db = BT ? wgmma::desc_mn128(st + L::A_BYTES, BK * 128) : wgmma::desc_k128(st + L::A_BYTES);
                wgmma::fence();
#pragma unroll
                for (int kk = 0; kk < BK / 16; kk++)
#pragma unroll
                    for (int h = 0; h < MH; h++) /* A's 64-row half PP ? h : c */
                        wgmma::Mma<T, BN, BT ? 1 : 0, AT ? 1 : 0>::run(
                            acc[h],
                            AT ? wgmma::desc_mn128(st + (PP ? h : c) * BK * 128, BK * 128) + 128 * kk
                               : wgmma::desc_k128(st + (PP ? h : c) * 64 * 128) + 2 * kk,
                            db + (BT ? 128 : 2) * kk, (kb > 0 || kk > 0) ? 1 : 0);
                wgmma::commit();
                if (!PP && backward_form(EPI) && kb == (inputs_kb < nk ? inputs_kb : nk - 1) && tid == 0) {
                    /* this tile's gate and up into the staging, once the last tile's stores have read it */
                    tma::store_wait_read<0>();
                    tma::bar_expect(inputs + 8 * c, 2 * 64 * BN * 2);
#pragma unroll
                    for (int o = 0; o < 2; o++)
#pragma unroll
                        for (int cb = 0; cb < BN / 64; cb++)
                            tma::load(staging0 + c * L::WG_STAGING + (o * NB + cb) * BOX, o ? &imap1 : &imap0,
                                      tn * BN + 64 * cb, row0 + 64 * c, inputs + 8 * c);
                }
                if (kb > 0) { /* the previous stage's MMAs are done: hand it back */
                    wgmma::wait<1>();
                    release((it - 1) % STAGES);
                }
            }
            if constexpr (EPI == PROJ) uses = it;
            if (PP && tid == 0) tma::bar_arrive(turn + 8 * (1 - c)); /* the other warpgroup's turn */
            wgmma::wait<0>();
#pragma unroll
            for (int h = 0; h < MH; h++) wgmma::fence_regs(acc[h]);
            release((it - 1) % STAGES);

            /* epilogue: the staging is free once the last stores have read it (for the backward
             * forms that was waited for before its gate and up came in; ping-pong: a half at a
             * time, below) */
            if (!PP) {
                if (backward_form(EPI)) tma::bar_wait(inputs + 8 * c, i & 1);
                else if (tid == 0) tma::store_wait_read<0>();
                /* ROWSTATS: and the statistics warp has read the last tile's (ready + 8c) */
                if (EPI == ROWSTATS && tid == 0 && i > 0) tma::bar_wait(ready + 8 * c, (i - 1) & 1);
                wgmma::named_sync(1 + c, 128);
            }
            const int r0 = 16 * warp + lane / 4, c0 = 2 * (lane % 4);
            bool rotated = false; /* PROJ: acc holds the rotated values, bias in (rope_tile) */
            if constexpr (EPI == PROJ && TN % 128 == 0) {
                if (ops.rope[grp]) {
                    const int row = row0 + 64 * c + r0;
                    if (ops.rope_d == 128) rope_tile<T, TN, 128>(acc[0], ops, grp, gcol, row, M, c0, nt <= nbase);
                    else rope_tile<T, TN, 64>(acc[0], ops, grp, gcol, row, M, c0, nt <= nbase);
                    rotated = true;
                }
            }
#pragma unroll
            for (int h = 0; h < MH; h++) {
                if (PP && h % HP == 0) tma::bar_wait(ready + 8 * (2 * c + h / HP), (i >> 1) & 1);
                /* the 64-row half's staging: boxes of 64 rows x BW columns, output o's column box cb at (o NB + cb) BOX */
                unsigned char *stg = smem_raw + (staging0 + (PP ? h : c) * L::WG_STAGING - raw);
                auto at = [&](int o, int col, int r) -> uint32_t * {
                    return reinterpret_cast<uint32_t *>(stg + (o * NB + col / BW) * BOX + staged<BW>(r, col % BW));
                };
#pragma unroll
                for (int j = 0; j < TN / 8; j++) {
                    const int col = 8 * j + c0;
                    float bias[2] = {0.0f, 0.0f}; /* PROJ: the group's bias at col, col + 1 */
                    if constexpr (EPI == PROJ) group_bias<T>(ops, grp, gcol + col, bias);
#pragma unroll
                    for (int hr = 0; hr < 2; hr++) {
                        const int r = r0 + 8 * hr, e = 4 * j + 2 * hr;
                        if constexpr (EPI == STORE || EPI == ROWSTATS) {
                            *at(0, col, r) = pack<T>(acc[h][e], acc[h][e + 1]);
                        } else if constexpr (EPI == PROJ) { /* with an adapter the bias is in (its main loop) */
                            *at(0, col, r) = nt > nbase || rotated ? pack<T>(acc[h][e], acc[h][e + 1])
                                                                   : pack<T>(acc[h][e] + bias[0], acc[h][e + 1] + bias[1]);
                        } else if constexpr (EPI == SWIGLU) { /* column j is gate, j + TN / 8 the matching up */
                            const int ue = e + 4 * (TN / 8);
                            const uint32_t vg = pack<T>(acc[h][e], acc[h][e + 1]), vu = pack<T>(acc[h][ue], acc[h][ue + 1]);
                            float g[2], u[2];
                            unpack<T>(vg, g), unpack<T>(vu, u);
                            *at(0, col, r) = vg;
                            *at(1, col, r) = vu;
                            *at(2, col, r) = pack<T>(an_silu(g[0]) * u[0], an_silu(g[1]) * u[1]);
                        } else { /* d act rounded as the GEMM would store it, then an_cuda_swiglu_backward's formula */
                            float go[2], g[2], u[2], dg[2], du[2];
                            unpack<T>(pack<T>(acc[h][e], acc[h][e + 1]), go);
                            unpack<T>(*at(0, col, r), g), unpack<T>(*at(1, col, r), u);
#pragma unroll
                            for (int q = 0; q < 2; q++) an_swiglu_grad(go[q], g[q], u[q], &dg[q], &du[q]);
                            *at(0, col, r) = pack<T>(dg[0], dg[1]);
                            *at(1, col, r) = pack<T>(du[0], du[1]);
                            if constexpr (EPI == SWIGLU_BWD_ACT)
                                *at(2, col, r) = pack<T>(an_silu(g[0]) * u[0], an_silu(g[1]) * u[1]);
                        }
                    }
                }
                if (PP && h % HP == HP - 1) { /* the part goes to the store thread */
                    tma::fence_async_shared();
                    wgmma::named_sync(1 + c, 128);
                    if (tid == 0) tma::bar_arrive(written + 8 * (2 * c + h / HP));
                }
            }
            if (!PP) {
                tma::fence_async_shared();
                wgmma::named_sync(1 + c, 128);
                if (EPI == ROWSTATS && tid == 0) tma::bar_arrive(written + 8 * c); /* to the statistics warp */
                if (tid == 0) {
                    const CUtensorMap *maps[3] = {&omap0, &omap1, &omap2};
#pragma unroll
                    for (int o = 0; o < OUTS; o++)
#pragma unroll
                        for (int cb = 0; cb < NB; cb++)
                            tma::store(maps[EPI == PROJ ? grp : o], gcol + BW * cb, row0 + 64 * c,
                                       staging0 + c * L::WG_STAGING + (o * NB + cb) * BOX);
                    tma::store_commit();
                }
            }
        }
        if (!PP && tid == 0) tma::store_wait<0>();
    }
    /* no CTA leaves while a peer may still multicast into it or arrive on its barriers */
    if constexpr (CM > 1) tma::cluster_sync();
#else
    __trap();
#endif
}

/* Clusters of two (CM = 2) gained nothing in a training step on an H100 (LoRA q,v 1.0002x, full
 * 0.9975x, steps alternating), so the library runs one CTA a tile; bench/gemm_wgmma_variants
 * keeps them as variants. Run cooperatively, the backward forms bring gate and up in at k slice
 * BWD_INPUTS_NUM / BWD_INPUTS_DEN of the main loop: late enough that the last tile's stores have
 * left the staging (the wait for that stalls the MMAs' issue), early enough to land before the
 * epilogue (the same bench, WG_INPUTS_KB). */
constexpr int BWD_INPUTS_NUM = 3, BWD_INPUTS_DEN = 4;

/* The launch configuration of kernel's persistent grid over cluster_tiles tiles of clusters of CM
 * CTAs: one CTA a multiprocessor (every form's shared memory keeps a second one off), at most as
 * many clusters as the device holds at once, which with CM > 1 may be fewer than sm_count / CM
 * (a cluster's CTAs share a GPC; cudaOccupancyMaxActiveClusters says how many fit). */
struct Grid {
    cudaLaunchConfig_t config;
    cudaLaunchAttribute attr;
};
template <typename Kernel>
cudaError_t grid_of(Kernel k, int CM, int64_t cluster_tiles, int sm_count, int bytes, cudaStream_t stream, Grid *g) {
    *g = Grid{};
    g->config.blockDim = dim3(THREADS);
    g->config.dynamicSmemBytes = (size_t)bytes;
    g->config.stream = stream;
    g->attr.id = cudaLaunchAttributeClusterDimension;
    g->attr.val.clusterDim.x = (unsigned)CM, g->attr.val.clusterDim.y = 1, g->attr.val.clusterDim.z = 1;
    g->config.attrs = &g->attr;
    g->config.numAttrs = CM > 1; /* no cluster launch for one CTA (placed otherwise: see bench) */
    int clusters = sm_count / CM;
    if (CM > 1) {
        g->config.gridDim = dim3((unsigned)(clusters * CM));
        cudaError_t err = cudaOccupancyMaxActiveClusters(&clusters, (const void *)k, &g->config);
        if (err != cudaSuccess) return err;
        if (clusters < 1) return cudaErrorInvalidConfiguration;
    }
    g->config.gridDim = dim3((unsigned)(CM * (cluster_tiles < clusters ? cluster_tiles : clusters)));
    return cudaSuccess;
}

/* The main loop's operands for `segments` pairs A_s (M, K_s), B_s (N, K_s) or with BT (K_s, N),
 * encoded for the form (without BT, each CTA of a cluster loads its 1 / CM of B's rows; SWIGLU:
 * rank 0 the gate's, rank 1 the up's). */
template <typename T, int BN, int EPI, bool BT, int CM, bool AT = false>
cudaError_t encode_operands(PFN_cuTensorMapEncodeTiled_v12000 encode, int M, int N, int segments, const T *const *a,
                            const int *k, const T *const *b, Operands *ops) {
    constexpr int TN = EPI == SWIGLU ? BN / 2 : BN;
    *ops = Operands{};
    if (segments < 1 || segments > MAX_SEGMENTS || (EPI != STORE && segments != 1)) return cudaErrorInvalidValue;
    int end = 0;
    for (int i = 0; i < segments; i++) {
        cudaError_t err = AT ? tma::encode_2d(encode, &ops->a[i], a[i], k[i], M, 64, BK)
                             : tma::encode_2d(encode, &ops->a[i], a[i], M, k[i], BK, BM);
        if (err == cudaSuccess)
            err = BT ? tma::encode_2d(encode, &ops->b[i], b[i], k[i], N, 64, BK)
                     : tma::encode_2d(encode, &ops->b[i], b[i], N, k[i], BK, EPI == SWIGLU ? TN : TN / CM);
        if (err != cudaSuccess) return err;
        end += (k[i] + BK - 1) / BK;
        ops->end_kb[i] = end;
    }
    ops->segments = segments, ops->group_rows = GROUP_ROWS;
    return cudaSuccess;
}

/* PROJ's operands for count <= MAX_GROUPS projections P of x (M, K) (fields w, bias, down, lora_b,
 * n, r, out as an_cuda_projection's): group g's columns follow group g - 1's, its base weight a
 * segment and its adapter (down (M, r) and B (n, r)) one more, both covering the group's columns;
 * omap[g] its output (M, n), *N the columns in all. Every n a multiple of BN (a tile is one group's). */
template <typename T, int BN, typename P>
cudaError_t encode_projections(PFN_cuTensorMapEncodeTiled_v12000 encode, int M, int K, const T *x, int count,
                               const P *proj, Operands *ops, CUtensorMap omap[MAX_GROUPS], int *N) {
    *ops = Operands{};
    if (count < 1 || count > MAX_GROUPS) return cudaErrorInvalidValue;
    int col = 0, seg = 0, end = 0;
    for (int g = 0; g < count; g++) {
        const P &p = proj[g];
        const int n = (int)p.n;
        if (n < BN || n % BN) return cudaErrorInvalidValue;
        ops->group_lo[g] = col, ops->bias[g] = p.bias, ops->rope[g] = (const float2 *)p.rope;
        if (p.rope) ops->rope_d = (int)p.rope_d;
        cudaError_t err = tma::encode_2d(encode, &omap[g], (const T *)p.out, M, n, 64, 64);
        for (int part = 0; part < (p.down ? 2 : 1) && err == cudaSuccess; part++, seg++) { /* base, then adapter */
            const int k = part ? (int)p.r : K;
            err = tma::encode_2d(encode, &ops->a[seg], part ? (const T *)p.down : x, M, k, BK, BM);
            if (err == cudaSuccess)
                err = tma::encode_2d(encode, &ops->b[seg], (const T *)(part ? p.lora_b : p.w), n, k, BK, BN);
            end += (k + BK - 1) / BK;
            ops->end_kb[seg] = end, ops->col_lo[seg] = col, ops->col_hi[seg] = col + n;
        }
        if (err != cudaSuccess) return err;
        col += n;
    }
    ops->segments = seg, ops->groups = count, ops->group_rows = GROUP_ROWS;
    *N = col;
    return cudaSuccess;
}

} // namespace wgmma_gemm

#ifndef AN_WGMMA_GEMM_KERNEL_ONLY
namespace {

/* The forms' tiles and stages (bench/gemm_wgmma_variants, H100): SWIGLU 128 x (64 gate + 64 up) with
 * 5 stages, cooperative (128 x 192 with 3 and 128 x 128 with 4 were slower; 128 x 256 does not fit
 * three staged outputs; ping-pong 7% slower: one warpgroup's main loop over a whole tile runs below
 * two's, and this epilogue is light); SWIGLU_BWD 128 x 128 with 5 (4 lost 7%), with act as well 4
 * (what fits three staged outputs), both in ping-pong (2-4% and 8-10% faster than cooperative: their
 * epilogues wait for gate and up and do the most arithmetic). */
constexpr int SWIGLU_BN = 128, SWIGLU_STAGES = 5, BWD_BN = 128, BWD_STAGES = 5, BWD_ACT_STAGES = 4;
/* ROWSTATS 128 x 192 with 4 stages: the plain GEMM's fastest at a loss chunk's logits (1024 x
 * 151936 x 1536: 622 us against 639 at 128 x 256 and 659 for cuBLASLt; 4096 rows 2488 against
 * 2474, bench/gemm_wgmma_variants WG_ONLY=logits). */
constexpr int LOGITS_BN = 192, LOGITS_STAGES = 4;

/* One launch of the form over `segments` operand pairs (one but for STORE); stats for ROWSTATS;
 * the outputs' rows out_pitch elements apart (0: N). */
template <typename T, int BN, int STAGES, int EPI, bool BT, int CM, bool PP = false>
cudaError_t launch_segments(an_cuda_state *s, int M, int N, int segments, const T *const *a, const int *k,
                            const T *const *b, const T *b2, const T *in0, const T *in1, T *out0, T *out1, T *out2,
                            float2 *stats = nullptr, int64_t out_pitch = 0) {
    using namespace wgmma_gemm;
    constexpr int bytes = smem_bytes<BN, STAGES, EPI>();
    constexpr int TN = EPI == SWIGLU ? BN / 2 : BN;
    auto *kern = kernel<T, BN, STAGES, EPI, BT, CM, PP>;
    void *fn = nullptr;
    cudaError_t err = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (err == cudaSuccess) err = an_cuda_tensor_map_encoder(s, &fn);
    const auto encode = (PFN_cuTensorMapEncodeTiled_v12000)fn;
    static_assert(TN % 64 == 0, "the output maps' boxes are 64 columns");
    /* the maps a form does not read stay zero (b2: SWIGLU's up weight; in0, in1: the backward
     * forms' gate and up; out1, out2: the second and third outputs) */
    Operands ops;
    CUtensorMap bm2{}, im0{}, im1{}, om0, om1{}, om2{};
    if (err == cudaSuccess) err = wgmma_gemm::encode_operands<T, BN, EPI, BT, CM>(encode, M, N, segments, a, k, b, &ops);
    if (s->gemm_group_rows > 0) ops.group_rows = s->gemm_group_rows;
    if (err == cudaSuccess && b2) err = tma::encode_2d(encode, &bm2, b2, N, k[0], BK, TN);
    if (err == cudaSuccess && in0) err = tma::encode_2d(encode, &im0, in0, M, N, 64, 64);
    if (err == cudaSuccess && in1) err = tma::encode_2d(encode, &im1, in1, M, N, 64, 64);
    if (err == cudaSuccess) err = tma::encode_2d(encode, &om0, out0, M, N, 64, 64, true, out_pitch);
    if (err == cudaSuccess && out1) err = tma::encode_2d(encode, &om1, out1, M, N, 64, 64, true, out_pitch);
    if (err == cudaSuccess && out2) err = tma::encode_2d(encode, &om2, out2, M, N, 64, 64, true, out_pitch);
    if (err != cudaSuccess) return err;
    const int64_t tiles = (int64_t)((M + BM * CM - 1) / (BM * CM)) * ((N + TN - 1) / TN);
    Grid g;
    err = grid_of(kern, CM, tiles, s->sm_count, bytes, s->stream, &g);
    if (err == cudaSuccess)
        err = cudaLaunchKernelEx(&g.config, kern, ops, bm2, im0, im1, om0, om1, om2, M, N,
                                 ops.end_kb[segments - 1] * BWD_INPUTS_NUM / BWD_INPUTS_DEN, stats);
    return err;
}

template <typename T, int BN, int STAGES, int EPI, bool BT, int CM, bool PP = false>
cudaError_t launch(an_cuda_state *s, int M, int N, int K, const T *a, const T *b, const T *b2, const T *in0,
                   const T *in1, T *out0, T *out1, T *out2, float2 *stats = nullptr, int64_t out_pitch = 0) {
    return launch_segments<T, BN, STAGES, EPI, BT, CM, PP>(s, M, N, 1, &a, &K, &b, b2, in0, in1, out0, out1, out2,
                                                           stats, out_pitch);
}

bool aligned16(const void *p) { return (uintptr_t)p % 16 == 0; }

} // namespace

extern "C" int an_cuda_gemm_swiglu_rule(an_ctx *ctx, an_dtype dtype, int64_t M, int64_t K, int64_t N,
                                        const void *const *ptrs, int n_ptrs) {
    if (!ctx->cuda || !ctx->cuda->wgmma || ctx->cuda->wgmma_off || (dtype != AN_BF16 && dtype != AN_F16)) return 0;
    if (M < 1 || N < 8 || K < 8 || K % 8 || N % 8 || M > INT32_MAX || N > INT32_MAX || K > INT32_MAX) return 0;
    if ((M + 127) / 128 * ((N + 63) / 64) > INT32_MAX) return 0; /* the tile index is an int */
    for (int i = 0; i < n_ptrs; i++)
        if (!aligned16(ptrs[i])) return 0;
    return 1;
}

template <typename T>
cudaError_t launch_swiglu(an_cuda_state *s, int M, int N, int K, const void *x, const void *w_gate, const void *w_up,
                          void *gate, void *up, void *act) {
    return launch<T, SWIGLU_BN, SWIGLU_STAGES, wgmma_gemm::SWIGLU, false, 1>(
        s, M, N, K, (const T *)x, (const T *)w_gate, (const T *)w_up, nullptr, nullptr, (T *)gate, (T *)up, (T *)act);
}

extern "C" an_status an_cuda_gemm_swiglu(an_ctx *ctx, an_dtype dtype, const void *x, int64_t M, int64_t K,
                                         const void *w_gate, const void *w_up, int64_t N, void *gate, void *up,
                                         void *act) {
    AN_CUDA_STATE(ctx, s);
    const void *ptrs[] = {x, w_gate, w_up, gate, up, act};
    AN_CHECK(ctx, an_cuda_gemm_swiglu_rule(ctx, dtype, M, K, N, ptrs, 6), AN_ERR_INPUT,
             "gemm_swiglu: %s (%lld, %lld) x (%lld, %lld)^T on this device: needs compute capability 9.0, bf16 or "
             "f16, K and N multiples of 8, 16-byte aligned operands",
             an_dtype_name(dtype), (long long)M, (long long)K, (long long)N, (long long)K);
    cudaError_t err = dtype == AN_BF16 ? launch_swiglu<__nv_bfloat16>(s, (int)M, (int)N, (int)K, x, w_gate, w_up, gate, up, act)
                                       : launch_swiglu<__half>(s, (int)M, (int)N, (int)K, x, w_gate, w_up, gate, up, act);
    AN_CUDA_CHECK(ctx, err);
    return AN_OK;
}

template <typename T>
cudaError_t launch_backward(an_cuda_state *s, int M, int N, int K, const T *dy, const T *w, const T *gate, const T *up,
                            T *dgate, T *dup, T *act, int64_t out_pitch = 0) {
    using namespace wgmma_gemm;
    if (act)
        return launch<T, BWD_BN, BWD_ACT_STAGES, SWIGLU_BWD_ACT, true, 1, true>(s, M, N, K, dy, w, nullptr, gate, up,
                                                                                dgate, dup, act, nullptr, out_pitch);
    return launch<T, BWD_BN, BWD_STAGES, SWIGLU_BWD, true, 1, true>(s, M, N, K, dy, w, nullptr, gate, up, dgate, dup,
                                                                     nullptr, nullptr, out_pitch);
}

/* launch_backward in dtype (bf16 or f16), the outputs' rows out_pitch elements apart (0: N). */
static cudaError_t launch_backward_of(an_cuda_state *s, an_dtype dtype, int M, int N, int K, const void *dy, const void *w,
                                      const void *gate, const void *up, void *dgate, void *dup, void *act, int64_t out_pitch) {
    if (dtype == AN_BF16)
        return launch_backward<__nv_bfloat16>(s, M, N, K, (const __nv_bfloat16 *)dy, (const __nv_bfloat16 *)w,
                                              (const __nv_bfloat16 *)gate, (const __nv_bfloat16 *)up,
                                              (__nv_bfloat16 *)dgate, (__nv_bfloat16 *)dup, (__nv_bfloat16 *)act,
                                              out_pitch);
    return launch_backward<__half>(s, M, N, K, (const __half *)dy, (const __half *)w, (const __half *)gate,
                                   (const __half *)up, (__half *)dgate, (__half *)dup, (__half *)act, out_pitch);
}

extern "C" an_status an_cuda_gemm_swiglu_backward(an_ctx *ctx, an_dtype dtype, const void *dy, int64_t M, int64_t K,
                                                  const void *w, int64_t N, const void *gate, const void *up,
                                                  void *dgate, void *dup, void *act) {
    AN_CUDA_STATE(ctx, s);
    const void *ptrs[] = {dy, w, gate, up, dgate, dup, act};
    AN_CHECK(ctx, an_cuda_gemm_swiglu_rule(ctx, dtype, M, K, N, ptrs, act ? 7 : 6), AN_ERR_INPUT,
             "gemm_swiglu_backward: %s (%lld, %lld) x (%lld, %lld) on this device: needs compute capability 9.0, "
             "bf16 or f16, K and N multiples of 8, 16-byte aligned operands",
             an_dtype_name(dtype), (long long)M, (long long)K, (long long)K, (long long)N);
    AN_CUDA_CHECK(ctx, launch_backward_of(s, dtype, (int)M, (int)N, (int)K, dy, w, gate, up, dgate, dup, act, 0));
    return AN_OK;
}
extern "C" int an_cuda_swiglu_stacked_rule(an_ctx *ctx, an_dtype dtype, int64_t M, int64_t K, int64_t N,
                                           const void *const *ptrs, int n_ptrs) {
    return ctx->cuda && !ctx->cuda->swiglu_stacked_off && N <= INT32_MAX / 2 &&
           an_cuda_gemm_swiglu_rule(ctx, dtype, M, K, N, ptrs, n_ptrs);
}

extern "C" an_status an_cuda_gemm_swiglu_backward_stacked(an_ctx *ctx, an_dtype dtype, const void *dy, int64_t M,
                                                          int64_t K, const void *w, int64_t N, const void *gate,
                                                          const void *up, void *dgu) {
    AN_CUDA_STATE(ctx, s);
    const size_t half = (size_t)N * an_dtype_size(dtype); /* du's first column, bytes into a row */
    const void *ptrs[] = {dy, w, gate, up, dgu, (char *)dgu + half};
    AN_CHECK(ctx, an_cuda_swiglu_stacked_rule(ctx, dtype, M, K, N, ptrs, 6), AN_ERR_INPUT,
             "gemm_swiglu_backward_stacked: %s (%lld, %lld) x (%lld, %lld) on this device: needs compute capability "
             "9.0, bf16 or f16, K and N multiples of 8, 16-byte aligned operands (and the form not turned off)",
             an_dtype_name(dtype), (long long)M, (long long)K, (long long)K, (long long)N);
    AN_CUDA_CHECK(ctx, launch_backward_of(s, dtype, (int)M, (int)N, (int)K, dy, w, gate, up, dgu, (char *)dgu + half,
                                          nullptr, 2 * N));
    return AN_OK;
}

extern "C" int64_t an_cuda_logits_stats_tiles(int64_t N) { return (N + LOGITS_BN - 1) / LOGITS_BN; }

extern "C" int an_cuda_logits_stats_apply(an_ctx *ctx, an_dtype dtype, int64_t M, int64_t K, int64_t N,
                                          const void *const *ptrs, int n_ptrs) {
    return ctx->cuda && !ctx->cuda->logits_stats_off && an_cuda_gemm_swiglu_rule(ctx, dtype, M, K, N, ptrs, n_ptrs);
}

extern "C" an_status an_cuda_gemm_logits_stats(an_ctx *ctx, an_dtype dtype, const void *x, int64_t M, int64_t K,
                                               const void *w, int64_t N, void *logits, float *stats) {
    AN_CUDA_STATE(ctx, s);
    const void *ptrs[] = {x, w, logits, stats};
    AN_CHECK(ctx, an_cuda_gemm_swiglu_rule(ctx, dtype, M, K, N, ptrs, 4), AN_ERR_INPUT,
             "gemm_logits_stats: %s (%lld, %lld) x (%lld, %lld)^T on this device: needs compute capability 9.0, bf16 "
             "or f16, K and N multiples of 8, 16-byte aligned operands",
             an_dtype_name(dtype), (long long)M, (long long)K, (long long)N, (long long)K);
    using namespace wgmma_gemm;
    cudaError_t err =
        dtype == AN_BF16
            ? launch<__nv_bfloat16, LOGITS_BN, LOGITS_STAGES, ROWSTATS, false, 1>(
                  s, (int)M, (int)N, (int)K, (const __nv_bfloat16 *)x, (const __nv_bfloat16 *)w, nullptr, nullptr,
                  nullptr, (__nv_bfloat16 *)logits, nullptr, nullptr, (float2 *)stats)
            : launch<__half, LOGITS_BN, LOGITS_STAGES, ROWSTATS, false, 1>(
                  s, (int)M, (int)N, (int)K, (const __half *)x, (const __half *)w, nullptr, nullptr, nullptr,
                  (__half *)logits, nullptr, nullptr, (float2 *)stats);
    AN_CUDA_CHECK(ctx, err);
    return AN_OK;
}

/* The segments' GEMM: 128 x 256 tiles, 3 stages (the plain GEMM's best on the training shapes). */
template <typename T, bool BT>
cudaError_t launch_sum(an_cuda_state *s, int M, int N, int segments, const void *const *a, const int *k,
                       const void *const *b, void *d) {
    const T *as[wgmma_gemm::MAX_SEGMENTS], *bs[wgmma_gemm::MAX_SEGMENTS];
    for (int i = 0; i < segments; i++) as[i] = (const T *)a[i], bs[i] = (const T *)b[i];
    return launch_segments<T, 256, 3, wgmma_gemm::STORE, BT, 1>(s, M, N, segments, as, k, bs, nullptr, nullptr,
                                                                 nullptr, (T *)d, nullptr, nullptr);
}

/* PROJ's tiles: 128 x 256 with 3 stages where every projection's width is a multiple of 256 (the
 * plain GEMM's best at q / o and k|v, bench/gemm_wgmma_variants), else 128 x 128 with 5. */
constexpr int PROJ_BN = 256, PROJ_STAGES = 3, PROJ_BN_NARROW = 128, PROJ_STAGES_NARROW = 5;

template <typename T, int BN, int STAGES>
cudaError_t launch_projections(an_cuda_state *s, int M, int K, const void *x, int count,
                               const an_cuda_projection *proj) {
    using namespace wgmma_gemm;
    constexpr int bytes = smem_bytes<BN, STAGES, PROJ>();
    auto *kern = kernel<T, BN, STAGES, PROJ>;
    void *fn = nullptr;
    cudaError_t err = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (err == cudaSuccess) err = an_cuda_tensor_map_encoder(s, &fn);
    Operands ops;
    CUtensorMap unused{}, om[MAX_GROUPS] = {};
    int N = 0;
    if (err == cudaSuccess)
        err = encode_projections<T, BN>((PFN_cuTensorMapEncodeTiled_v12000)fn, M, K, (const T *)x, count, proj, &ops,
                                        om, &N);
    if (err != cudaSuccess) return err;
    if (s->gemm_group_rows > 0) ops.group_rows = s->gemm_group_rows;
    Grid g;
    err = grid_of(kern, 1, (int64_t)((M + BM - 1) / BM) * (N / BN), s->sm_count, bytes, s->stream, &g);
    if (err == cudaSuccess)
        err = cudaLaunchKernelEx(&g.config, kern, ops, unused, unused, unused, om[0], om[1], om[2], M, N, 0,
                                 (float2 *)nullptr);
    return err;
}

extern "C" int an_cuda_gemm_projections_rule(an_ctx *ctx, an_dtype dtype, const void *x, int64_t M, int64_t K, int count,
                                             const an_cuda_projection *proj) {
    if (!ctx->cuda || ctx->cuda->projections_off || count < 1 || count > wgmma_gemm::MAX_GROUPS) return 0;
    int64_t n_all = 0, rope_d = 0;
    for (int g = 0; g < count; g++) {
        const an_cuda_projection *p = &proj[g];
        const void *base[] = {x, p->w, p->out, p->bias ? p->bias : x}, *branch[] = {p->down, p->lora_b};
        if (p->n < PROJ_BN_NARROW || p->n % PROJ_BN_NARROW || !an_cuda_gemm_swiglu_rule(ctx, dtype, M, K, p->n, base, 4))
            return 0;
        if (p->down && (!p->lora_b || !an_cuda_gemm_swiglu_rule(ctx, dtype, M, p->r, p->n, branch, 2))) return 0;
        if (p->rope && (ctx->cuda->rope_epilogue_off || (p->rope_d != 64 && p->rope_d != 128) || p->n % p->rope_d || (rope_d && p->rope_d != rope_d) ||
                        !an_aligned16(p->rope)))
            return 0;
        if (p->rope) rope_d = p->rope_d;
        n_all += p->n;
    }
    return n_all <= INT32_MAX && (M + 127) / 128 * (n_all / PROJ_BN_NARROW) <= INT32_MAX;
}

extern "C" an_status an_cuda_gemm_projections(an_ctx *ctx, an_dtype dtype, const void *x, int64_t M, int64_t K, int count,
                                              const an_cuda_projection *proj) {
    AN_CUDA_STATE(ctx, s);
    AN_CHECK(ctx, an_cuda_gemm_projections_rule(ctx, dtype, x, M, K, count, proj), AN_ERR_INPUT,
             "gemm_projections: %d projections of %s (%lld, %lld) on this device: needs compute capability 9.0, bf16 "
             "or f16, 1 to %d projections of widths multiple of 128, K and ranks multiples of 8, 16-byte aligned "
             "operands, rotary head dims of one value, 64 or 128, dividing the widths",
             count, an_dtype_name(dtype), (long long)M, (long long)K, wgmma_gemm::MAX_GROUPS);
    bool wide = true;
    for (int g = 0; g < count; g++) wide = wide && proj[g].n % PROJ_BN == 0;
    cudaError_t err;
    if (dtype == AN_BF16)
        err = wide ? launch_projections<__nv_bfloat16, PROJ_BN, PROJ_STAGES>(s, (int)M, (int)K, x, count, proj)
                   : launch_projections<__nv_bfloat16, PROJ_BN_NARROW, PROJ_STAGES_NARROW>(s, (int)M, (int)K, x, count, proj);
    else
        err = wide ? launch_projections<__half, PROJ_BN, PROJ_STAGES>(s, (int)M, (int)K, x, count, proj)
                   : launch_projections<__half, PROJ_BN_NARROW, PROJ_STAGES_NARROW>(s, (int)M, (int)K, x, count, proj);
    AN_CUDA_CHECK(ctx, err);
    return AN_OK;
}

extern "C" an_status an_cuda_gemm_segments(an_ctx *ctx, an_dtype dtype, int64_t M, int64_t N, int segments,
                                           const void *const *a, const int64_t *k, const void *const *b, bool bt,
                                           void *d) {
    AN_CUDA_STATE(ctx, s);
    AN_CHECK(ctx, segments >= 1 && segments <= wgmma_gemm::MAX_SEGMENTS, AN_ERR_INPUT,
             "gemm_segments: %d segments, expected 1 to %d", segments, wgmma_gemm::MAX_SEGMENTS);
    int ks[wgmma_gemm::MAX_SEGMENTS];
    int64_t k_blocks = 0;
    for (int i = 0; i < segments; i++) {
        const void *ptrs[] = {a[i], b[i], d};
        AN_CHECK(ctx, an_cuda_gemm_swiglu_rule(ctx, dtype, M, k[i], N, ptrs, 3), AN_ERR_INPUT,
                 "gemm_segments: segment %d, %s (%lld, %lld) x (%lld, %lld) on this device: needs compute "
                 "capability 9.0, bf16 or f16, K and N multiples of 8, 16-byte aligned operands",
                 i, an_dtype_name(dtype), (long long)M, (long long)k[i], (long long)k[i], (long long)N);
        ks[i] = (int)k[i];
        k_blocks += (k[i] + 63) / 64;
    }
    AN_CHECK(ctx, k_blocks <= INT32_MAX / 64, AN_ERR_INPUT, "gemm_segments: %lld k slices", (long long)k_blocks);
    cudaError_t err = dtype == AN_BF16
                          ? (bt ? launch_sum<__nv_bfloat16, true>(s, (int)M, (int)N, segments, a, ks, b, d)
                                : launch_sum<__nv_bfloat16, false>(s, (int)M, (int)N, segments, a, ks, b, d))
                          : (bt ? launch_sum<__half, true>(s, (int)M, (int)N, segments, a, ks, b, d)
                                : launch_sum<__half, false>(s, (int)M, (int)N, segments, a, ks, b, d));
    AN_CUDA_CHECK(ctx, err);
    return AN_OK;
}
#endif
