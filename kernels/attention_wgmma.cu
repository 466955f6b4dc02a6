/* attention_wgmma.cu — the causal grouped-query attention backward on Hopper's warpgroup tensor
 * cores (sm_90a, wgmma): dQ in one launch, dK and dV in another, after attention_mma.cu's delta
 * pass. attention_wgmma.cuh says which calls come here; the forward stays cuDNN's.
 *
 * Why: cuDNN's backward at the 1.5B model's shape (B 8, T 1024, Hq 12, Hkv 2, D 128) took 292 us a
 * layer in a LoRA q,v step (bprop 159, a dQ matmul over a stored dS 82, dot(dO, O) 20, the kv
 * heads' reductions 12 + 12), 243 TFLOP/s of useful work. Here (H100, docs/performance.md): 257
 * us in the step (dK/dV 125, dQ 105, delta 27); alone 0.221 ms against cuDNN's 0.273-0.277.
 *
 * Numerics (attention_mma.cu's, so the paths agree to rounding): S = q.k and every product sum in
 * fp32; P = 2^(S scale log2(e) - lse log2(e)) from the forward's lse; dS = P (dP - delta) with
 * dP = dO V^T and delta = rowsum(dO * O) (fp32, from the rounded output). The operands of P^T dO
 * and dS^T Q, dS K are P and dS rounded to the input dtype. dK and dQ are scale times their fp32
 * sums, rounded once. No atomics: every sum has an order fixed by the shape, so every run gives
 * the same bits.
 *
 * Rotary turn (Params::rope, an_cuda_attention_backward_turning): where q and k came rotated from
 * the projections' epilogue, dQ and dK may leave turned back by the same table (NEOX pairs (i, i +
 * 64) of each head; turn_back: rounded to the dtype first, then rope.cu's arithmetic at sign -1),
 * so the rope pass over them (two launches, ~24 us a layer of the 1.5B model's step) is not run:
 * the same bits. Each kernel brings its tile's 64 rows of the table (32 KB) into shared memory by
 * the tensor memory accelerator early (dK/dV with K and V; dQ into Q and dO's memory once their
 * fragments are in registers), so the stores do not wait on loads.
 *
 * Masking: query i sees key j when j <= i (no segments: attention.cu sends packed documents to the
 * mma.sync kernels). T is a multiple of 64, so every tile is whole.
 *
 * Tiles (64 rows) come by the tensor memory accelerator as two (64 rows, 64 columns) boxes,
 * 128-byte swizzled, from q, k, v, dO seen as (B T, H D) matrices. Each warpgroup (4 warps) runs
 * its products as wgmma with M = 64 rows of its own; two products whose k steps alternate go out
 * as one group, and the next item's scores are issued before the last item's gradient products
 * are waited for.
 * - dK, dV kernel: a block per (64-key tile, kv head, batch row), heaviest key tiles first. Its
 *   two warpgroups keep the key tile's K and V in shared memory and split the (query head, query
 *   tile) items that see it, alternately (items i = c, c + 2, ... for warpgroup c), each with two
 *   stages of its own (Q, dO, lse, delta) that its thread 0 refills. Per item: S^T = K Q^T,
 *   dP^T = V dO^T (A and B from shared memory, N = 64), P^T and dS^T in registers, then
 *   dV += P^T dO and dK += dS^T Q with A from those registers (an accumulator's layout is the A
 *   fragment's) and B, Q or dO, read transposed. At the end warpgroup 1 hands its sums to
 *   warpgroup 0 through shared memory and warpgroup 0 adds them (0 + 1), scales dK and stores. It
 *   is launched programmatically behind the dQ kernel (kernels/pdl.cuh), which it does not read,
 *   and waits for that kernel's end only before its stores.
 * - dQ kernel: a block per (two query tiles, query head, batch row), the pair nearest the end
 *   first; warpgroup c owns query tile 2p + c, whose Q and dO it keeps as A fragments in
 *   registers, and both stream the key tiles 0 .. 2p + 1 through four shared stages (K, V) that the
 *   second warpgroup's thread 0 refills once both gave a stage back. Per key tile: S = Q K^T,
 *   dP = dO V^T, dS in registers, dQ += dS K (K read transposed). dQ leaves through shared memory
 *   by the tensor memory accelerator.
 * Work per visible (query, key) pair and head dim: 7 multiply-adds (dQ 3, dK/dV 4), flash
 * attention 2's 5 plus the recomputation of S and dP that the dQ kernel's own sums cost (rather
 * than atomics).
 *
 * What ptxas needs to keep wgmma asynchronous (each of these serialized every wgmma of a kernel,
 * reported only as a C75xx "Potential Performance Loss" note under -Xptxas -v): loop bounds that
 * depend on the warpgroup index must come from a value it sees as uniform (the shuffled index
 * below, C7518); no plain write to an accumulator register between a kernel's first product and
 * its last wait (no zero fill: the first product overwrites; P and dS go to other registers,
 * C7515); no read of one accumulator while another product of the same kernel is in flight (the
 * scores are waited for together, C7514); Q and dO's fragments fit beside the sums only without a
 * producer warpgroup (a warp of 288 threads still costs a warpgroup's registers, C7512). */
#include "kernels/attention_wgmma.cuh"
#include "kernels/attention_mma.cuh" /* an_attention_mma_delta, an_attention_mma_aligned */
#include "kernels/mma.cuh"           /* ldsm_x4_at, Mma<T>::pack, smem_addr */
#include "kernels/pdl.cuh"           /* an_launch_pdl_smem, an_pdl_wait, an_pdl_trigger */
#include "kernels/rope_rotate.cuh"   /* an_rope_rotate: rope.cu's rotation, at sign -1 in turn_back */
#include "kernels/tma.cuh"           /* mbarriers, tma::load, tma::load_bytes, tma::encode_2d */
#include "kernels/wgmma.cuh"         /* desc_k128, desc_mn128, Mma, MmaRS, fence / commit / wait */

#include <cudaTypedefs.h> /* PFN_cuTensorMapEncodeTiled_v12000 */
#include <stdint.h>

namespace attention_wgmma {

constexpr int kD = 128;                /* head_dim */
constexpr int kTile = 64;              /* rows of a tile: queries or keys */
constexpr int kBox = 64 * 64 * 2;      /* one (64 rows, 64 columns) b16 box: 8 KB */
constexpr int kTileBytes = 2 * kBox;   /* a tile's 64 rows of 128 columns */
constexpr int kThreads = 256;          /* two warpgroups */
constexpr int kDkvStages = 4;          /* dK/dV: two (Q, dO) stages a warpgroup */
constexpr int kDqStages = 4;           /* dQ: (K, V) stages shared by both warpgroups */
constexpr double kLog2e = 1.4426950408889634;

struct Params {
    const float *lse, *delta; /* (B, Hq, T) */
    void *dq, *dk, *dv;       /* (B, T, Hq, D), (B, T, Hkv, D), (B, T, Hkv, D); any may be null */
    const float2 *rope;       /* (B T, D / 2) (cos, sin) of q's and k's rotation (an_rope_table's), or NULL:
                                 dQ and dK leave turned back by it (turn_back) */
    int T, Hq, Hkv, batch;
    float scale, scale_log2;
};

constexpr int kTableBytes = kTile * kD / 2 * 8; /* a tile's rows of the rotary table: 64 (cos, sin) pairs each */

/* dK/dV kernel's shared memory past its 1024-byte alignment: K, V, the stages (Q, dO each), their
 * lse and delta rows, the key tile's rows of the rotary table (with Params::rope), the barriers (K
 * and V landed; each stage full). */
struct DkvLayout {
    static constexpr int K = 0, V = kTileBytes, STAGES = 2 * kTileBytes;
    static constexpr int ROWS = STAGES + kDkvStages * 2 * kTileBytes; /* lse, delta: 64 floats each a stage */
    static constexpr int TABLE = ROWS + kDkvStages * 2 * kTile * 4;
    static constexpr int BARS = TABLE + kTableBytes;
    static constexpr int BYTES = BARS + 8 * (1 + kDkvStages) + 1024;
};
/* dQ kernel's: each warpgroup's Q and dO (then, with Params::rope, its tile's rows of the rotary
 * table: their fragments are in registers by then), the (K, V) stages, the barriers (each
 * warpgroup's Q, dO landed; each stage full, empty; each warpgroup's table rows landed). */
struct DqLayout {
    static constexpr int QDO = 0, STAGES = 4 * kTileBytes;
    static constexpr int BARS = STAGES + kDqStages * 2 * kTileBytes;
    static constexpr int BYTES = BARS + 8 * (4 + 2 * kDqStages) + 1024;
};

/* The first 1024-byte-aligned shared address of the dynamic shared memory (the 128-byte swizzle's
 * boxes need it; each layout reserves the 1024 bytes it may skip). */
__device__ __forceinline__ uint32_t aligned_base(const unsigned char *smem) { return (smem_addr(smem) + 1023) & ~1023u; }

/* Two floats rounded to T, lo in the low half (mma.cuh's pair packing). */
template <typename T> __device__ __forceinline__ uint32_t pack2(float lo, float hi) { return ::Mma<T>::pack(lo, hi); }

/* A 64 x 64 accumulator (64 rows of this warpgroup x 64 columns) as the A fragments of its four
 * 16-column slices (wgmma.cuh: the accumulator's layout is A's). */
template <typename T> __device__ __forceinline__ void to_a(const float (&d)[32], uint32_t (&a)[4][4]) {
#pragma unroll
    for (int kk = 0; kk < 4; kk++)
#pragma unroll
        for (int r = 0; r < 4; r++) a[kk][r] = pack2<T>(d[8 * kk + 2 * r], d[8 * kk + 2 * r + 1]);
}

/* The 64-row tile at (row, col) of map (two boxes) into dst, completing on bar. */
__device__ __forceinline__ void load_tile(uint32_t dst, const CUtensorMap *map, int row, int col, uint32_t bar) {
    tma::load(dst, map, col, row, bar);
    tma::load(dst + kBox, map, col + 64, row, bar);
}

/* The products come in pairs whose k steps alternate (x0 y0 x1 y1 ...): consecutive wgmma then
 * never wait on each other's accumulator, which a lone chain of the short m64n64k16 steps does. */

/* acc1 = the 64-row tile at a1 (K-major, two boxes) times the 64-row tile at b1 over D; acc2 the
 * same of a2 and b2. */
template <typename T>
__device__ __forceinline__ void products_k(float (&acc1)[32], uint32_t a1, uint32_t b1, float (&acc2)[32], uint32_t a2,
                                           uint32_t b2) {
#pragma unroll
    for (int kk = 0; kk < kD / 16; kk++) {
        const uint32_t off = (kk / 4) * kBox;
        wgmma::Mma<T, 64>::run(acc1, wgmma::desc_k128(a1 + off) + 2 * (kk % 4), wgmma::desc_k128(b1 + off) + 2 * (kk % 4), kk > 0);
        wgmma::Mma<T, 64>::run(acc2, wgmma::desc_k128(a2 + off) + 2 * (kk % 4), wgmma::desc_k128(b2 + off) + 2 * (kk % 4), kk > 0);
    }
}

/* acc1 = a1 (this warpgroup's 64 rows x D, A fragments of its eight 16-column slices) times the
 * 64-row tile at b1 over D; acc2 the same of a2 and b2. */
template <typename T>
__device__ __forceinline__ void products_rk(float (&acc1)[32], const uint32_t (&a1)[8][4], uint32_t b1, float (&acc2)[32],
                                            const uint32_t (&a2)[8][4], uint32_t b2) {
#pragma unroll
    for (int kk = 0; kk < kD / 16; kk++) {
        const uint32_t off = (kk / 4) * kBox;
        wgmma::MmaRS<T, 64, 0>::run(acc1, a1[kk], wgmma::desc_k128(b1 + off) + 2 * (kk % 4), kk > 0);
        wgmma::MmaRS<T, 64, 0>::run(acc2, a2[kk], wgmma::desc_k128(b2 + off) + 2 * (kk % 4), kk > 0);
    }
}

/* The A fragments (wgmma.cuh's register layout) of the 64 x D tile at t (two swizzled boxes):
 * ldmatrix's four 8 x 8 matrices are rows 0-7 and 8-15 of the warp's 16, at columns 0-7 and 8-15
 * of the slice; the box keeps 16-byte chunk c of row r at c ^ (r % 8). */
__device__ __forceinline__ void load_a(uint32_t (&a)[8][4], uint32_t t) {
    const int lane = threadIdx.x % 32, row = 16 * (threadIdx.x % 128 / 32) + lane % 8 + 8 * (lane / 8 % 2);
#pragma unroll
    for (int kk = 0; kk < kD / 16; kk++) {
        const int chunk = 2 * (kk % 4) + lane / 16;
        ldsm_x4_at(a[kk], t + (kk / 4) * kBox + row * 128 + ((chunk ^ (row % 8)) << 4));
    }
}

/* acc (64 x 128) (+)= a (64 x 64, A fragments) times the 64-row tile at b read transposed (b's rows
 * are the sum's index, its 128 columns the output's). */
template <typename T>
__device__ __forceinline__ void product_t(float (&acc)[64], const uint32_t (&a)[4][4], uint32_t b, bool accumulate) {
#pragma unroll
    for (int kk = 0; kk < kTile / 16; kk++)
        wgmma::MmaRS<T, 128, 1>::run(acc, a[kk], wgmma::desc_mn128(b, kBox) + 128 * kk, accumulate || kk > 0);
}

/* product_t of (acc1, a1, b1) and of (acc2, a2, b2), their k steps alternating. */
template <typename T>
__device__ __forceinline__ void products_t(float (&acc1)[64], const uint32_t (&a1)[4][4], uint32_t b1, float (&acc2)[64],
                                           const uint32_t (&a2)[4][4], uint32_t b2, bool accumulate) {
#pragma unroll
    for (int kk = 0; kk < kTile / 16; kk++) {
        wgmma::MmaRS<T, 128, 1>::run(acc1, a1[kk], wgmma::desc_mn128(b1, kBox) + 128 * kk, accumulate || kk > 0);
        wgmma::MmaRS<T, 128, 1>::run(acc2, a2[kk], wgmma::desc_mn128(b2, kBox) + 128 * kk, accumulate || kk > 0);
    }
}

/* acc (this thread's values of a 64 x 128 tile: rows 16 warp + lane / 4 (+ 8), columns 8j +
 * 2 (lane % 4) (+ 1)) times mul, rounded to T, then each NEOX pair (i, i + 64) of the head turned
 * back by its row's angle as rope.cu's backward turns the stored gradient (the table's cos and
 * sin at sign -1, each product and sum rounded on its own), left in acc for a store at mul 1: the
 * bits the rope pass after would give. table: the tile's first row's 64 (cos, sin) pairs. */
template <typename T> __device__ __forceinline__ void turn_back(float (&acc)[64], const float2 *table, float mul) {
    const int lane = threadIdx.x % 32, r0 = 16 * (threadIdx.x % 128 / 32) + lane / 4, c = 2 * (lane % 4);
#pragma unroll
    for (int h = 0; h < 2; h++)
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const float4 cs = *reinterpret_cast<const float4 *>(table + (r0 + 8 * h) * (kD / 2) + 8 * j + c);
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int a = 4 * j + 2 * h + e, b = a + 32; /* columns 8 j + c + e and 64 later */
                const float x1 = an_load(an_store<T>(acc[a] * mul)), x2 = an_load(an_store<T>(acc[b] * mul));
                an_rope_rotate(x1, x2, e ? cs.z : cs.x, -(e ? cs.w : cs.y), &acc[a], &acc[b]);
            }
        }
}

/* Rows 16 warp + lane / 4 (+ 8) and columns 8j + 2 (lane % 4) (+ 1) of acc (64 x 128), rounded,
 * times mul, into out's rows row0.. (stride ld elements) from column col0. */
template <typename T>
__device__ __forceinline__ void store_acc(T *out, int64_t row0, int64_t ld, int64_t col0, const float (&acc)[64], float mul) {
    const int tid = threadIdx.x % 128, r = 16 * (tid / 32) + (tid % 32) / 4, c = 2 * (tid % 4);
#pragma unroll
    for (int j = 0; j < 16; j++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            T *at = out + (row0 + r + 8 * h) * ld + col0 + 8 * j + c;
            *reinterpret_cast<uint32_t *>(at) = pack2<T>(acc[4 * j + 2 * h] * mul, acc[4 * j + 2 * h + 1] * mul);
        }
}

template <typename T>
__global__ void __launch_bounds__(kThreads, 1)
    dkv_kernel(const __grid_constant__ CUtensorMap qmap, const __grid_constant__ CUtensorMap kmap,
               const __grid_constant__ CUtensorMap vmap, const __grid_constant__ CUtensorMap dmap, Params p) {
#if AN_WGMMA_AVAILABLE
    using L = DkvLayout;
    extern __shared__ unsigned char smem_raw[];
    const uint32_t base = aligned_base(smem_raw);
    unsigned char *gen = smem_raw + (base - smem_addr(smem_raw)); /* base as a generic pointer */
    const uint32_t kv_bar = base + L::BARS, full = kv_bar + 8;
    /* the warpgroup's index through a shuffle: uniform to the compiler, whose wgmma would otherwise
     * be serialized in loops whose bounds depend on it */
    const int wg = __shfl_sync(0xffffffffu, (int)threadIdx.x / 128, 0), tid = threadIdx.x % 128, warp = tid / 32,
              lane = tid % 32;

    const int n_t = p.T / kTile, per = p.Hkv * p.batch;
    const int kt = blockIdx.x / per, hk = blockIdx.x % per % p.Hkv, b = blockIdx.x % per / p.Hkv;
    const int G = p.Hq / p.Hkv, nq = n_t - kt, items = G * nq;

    if (threadIdx.x == 0) {
        tma::bar_init(kv_bar, 1);
        for (int s = 0; s < kDkvStages; s++) tma::bar_init(full + 8 * s, 1);
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    /* item i: query head hk G + i / nq, query tile kt + i % nq; warpgroup wg's li-th is wg + 2 li */
    auto issue = [&](int li) {
        const int i = wg + 2 * li;
        if (i >= items) return;
        const int s = 2 * wg + (li & 1), h = hk * G + i / nq, qt = kt + i % nq;
        const uint32_t st = base + L::STAGES + s * 2 * kTileBytes, rows = base + L::ROWS + s * 2 * kTile * 4;
        const int64_t lrow = ((int64_t)b * p.Hq + h) * p.T + (int64_t)qt * kTile;
        tma::bar_expect(full + 8 * s, 2 * kTileBytes + 2 * kTile * 4);
        load_tile(st, &qmap, b * p.T + qt * kTile, h * kD, full + 8 * s);
        load_tile(st + kTileBytes, &dmap, b * p.T + qt * kTile, h * kD, full + 8 * s);
        tma::load_bytes(rows, p.lse + lrow, kTile * 4, full + 8 * s);
        tma::load_bytes(rows + kTile * 4, p.delta + lrow, kTile * 4, full + 8 * s);
    };
    if (tid == 0) {
        if (wg == 0) {
            tma::bar_expect(kv_bar, 2 * kTileBytes + (p.rope ? kTableBytes : 0));
            load_tile(base + L::K, &kmap, b * p.T + kt * kTile, hk * kD, kv_bar);
            load_tile(base + L::V, &vmap, b * p.T + kt * kTile, hk * kD, kv_bar);
            if (p.rope) /* read only by the last stores: in shared memory by then, not a load's wait */
                tma::load_bytes(base + L::TABLE, p.rope + ((int64_t)b * p.T + kt * kTile) * (kD / 2), kTableBytes, kv_bar);
        }
        issue(0);
        issue(1);
    }

    /* Accumulator registers are written only by wgmma between the first product and the last
     * wait (the first dK, dV product overwrites; P and dS go to other registers): a plain write
     * to one there makes ptxas serialize every wgmma of the kernel. */
    float dk[64], dv[64];
    const int r0 = 16 * warp + lane / 4; /* this thread's key rows r0, r0 + 8 within the tile */
    tma::bar_wait(kv_bar, 0);
    const int mine = (items - wg + 1) / 2; /* this warpgroup's items */
    float sc[32], dp[32];
    /* S^T = K Q^T and dP^T = V dO^T of local item li, once its stage landed: issued before the
     * last item's dV and dK products finish, so the tensor cores have the next work queued */
    auto scores = [&](int li) {
        const int s = 2 * wg + (li & 1);
        const uint32_t st = base + L::STAGES + s * 2 * kTileBytes;
        tma::bar_wait(full + 8 * s, (li >> 1) & 1);
        wgmma::fence();
        products_k<T>(sc, base + L::K, st, dp, base + L::V, st + kTileBytes);
        wgmma::commit();
    };
    if (mine > 0) scores(0);
    for (int li = 0; li < mine; li++) {
        const int i = wg + 2 * li, s = 2 * wg + (li & 1), qt = kt + i % nq;
        const uint32_t st = base + L::STAGES + s * 2 * kTileBytes;
        const float *lse = reinterpret_cast<const float *>(gen + L::ROWS + s * 2 * kTile * 4), *delta = lse + kTile;
        wgmma::wait<0>(); /* S and dP */
        wgmma::fence_regs(sc);
        const bool diag = qt == kt;
        float pf[32], ds[32]; /* P^T, dS^T */
#pragma unroll
        for (int j = 0; j < 8; j++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int q = 8 * j + 2 * (lane % 4) + e;
                const float l2 = lse[q] * (float)kLog2e;
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    float pv = exp2f(sc[4 * j + 2 * h + e] * p.scale_log2 - l2);
                    if (diag && r0 + 8 * h > q) pv = 0.0f;
                    pf[4 * j + 2 * h + e] = pv;
                }
            }
        wgmma::fence_regs(dp);
#pragma unroll
        for (int j = 0; j < 8; j++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const float dl = delta[8 * j + 2 * (lane % 4) + e];
#pragma unroll
                for (int h = 0; h < 2; h++) ds[4 * j + 2 * h + e] = pf[4 * j + 2 * h + e] * (dp[4 * j + 2 * h + e] - dl);
            }
        uint32_t pa[4][4], dsa[4][4];
        to_a<T>(pf, pa);
        to_a<T>(ds, dsa);
        wgmma::fence();
        products_t<T>(dv, pa, st + kTileBytes, dk, dsa, st, li > 0); /* dV += P^T dO, dK += dS^T Q */
        wgmma::commit();
        if (li + 1 < mine) {
            scores(li + 1);
            wgmma::wait<1>(); /* this item's dV and dK products (the next item's scores may run on) */
        } else {
            wgmma::wait<0>();
        }
        wgmma::fence_regs(dv);
        wgmma::fence_regs(dk);
        wgmma::named_sync(1 + wg, 128); /* the warpgroup is done with stage s */
        if (tid == 0) issue(li + 2);
    }

    wgmma::wait<0>(); /* (the last item waited already; this lets ptxas see no product pending here) */
    /* warpgroup 1's sums to warpgroup 0 through its own stages' memory (no loads land there now),
     * a thread's 128 values at stride 128 floats */
    float *xchg = reinterpret_cast<float *>(gen + L::STAGES + 2 * 2 * kTileBytes);
    if (wg == 1) {
#pragma unroll
        for (int i = 0; i < 64; i++) {
            xchg[i * 128 + tid] = mine > 0 ? dk[i] : 0.0f;
            xchg[(64 + i) * 128 + tid] = mine > 0 ? dv[i] : 0.0f;
        }
    }
    __syncthreads();
    if (wg == 1) return;
#pragma unroll
    for (int i = 0; i < 64; i++) dk[i] += xchg[i * 128 + tid], dv[i] += xchg[(64 + i) * 128 + tid];
    an_pdl_wait(); /* launched behind the dQ kernel: its end before any write (kernels/pdl.cuh's rule) */
    const int64_t row0 = (int64_t)b * p.T + (int64_t)kt * kTile, ld = (int64_t)p.Hkv * kD;
    if (p.dk && p.rope) turn_back<T>(dk, reinterpret_cast<const float2 *>(gen + L::TABLE), p.scale);
    if (p.dk) store_acc<T>((T *)p.dk, row0, ld, (int64_t)hk * kD, dk, p.rope ? 1.0f : p.scale);
    if (p.dv) store_acc<T>((T *)p.dv, row0, ld, (int64_t)hk * kD, dv, 1.0f);
#endif
}

template <typename T>
__global__ void __launch_bounds__(kThreads, 1)
    dq_kernel(const __grid_constant__ CUtensorMap qmap, const __grid_constant__ CUtensorMap kmap,
              const __grid_constant__ CUtensorMap vmap, const __grid_constant__ CUtensorMap dmap,
              const __grid_constant__ CUtensorMap omap, Params p) {
#if AN_WGMMA_AVAILABLE
    using L = DqLayout;
    extern __shared__ unsigned char smem_raw[];
    const uint32_t base = aligned_base(smem_raw);
    unsigned char *gen = smem_raw + (base - smem_addr(smem_raw)); /* base as a generic pointer */
    const uint32_t q_bar = base + L::BARS, full = q_bar + 16, empty = full + 8 * kDqStages;
    /* the warpgroup's index through a shuffle: uniform to the compiler, whose wgmma would otherwise
     * be serialized in loops whose bounds depend on it */
    const int wg = __shfl_sync(0xffffffffu, (int)threadIdx.x / 128, 0), tid = threadIdx.x % 128, warp = tid / 32,
              lane = tid % 32;

    const int n_t = p.T / kTile, n_pairs = (n_t + 1) / 2, per = p.Hq * p.batch;
    const int pair = n_pairs - 1 - (int)(blockIdx.x / per), h = blockIdx.x % per % p.Hq, b = blockIdx.x % per / p.Hq;
    const int hk = h / (p.Hq / p.Hkv);
    const int qt = 2 * pair + wg;                                  /* this warpgroup's query tile */
    const uint32_t table_bar = empty + 8 * kDqStages + 8 * wg;     /* this warpgroup's table rows landed */
    const bool active = qt < n_t;                                  /* the last pair of an odd count has one */
    const int n_kv = 2 * pair + 2 < n_t ? 2 * pair + 2 : n_t;     /* key tiles the block streams */

    if (threadIdx.x == 0) {
        for (int c = 0; c < 2; c++) tma::bar_init(q_bar + 8 * c, 1), tma::bar_init(empty + 8 * kDqStages + 8 * c, 1);
        for (int s = 0; s < kDqStages; s++) {
            tma::bar_init(full + 8 * s, 1);
            tma::bar_init(empty + 8 * s, 1 + (2 * pair + 1 < n_t)); /* one arrival per active warpgroup */
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    auto issue_kv = [&](int t) { /* key tile t into stage t % kDqStages */
        const int s = t % kDqStages;
        const uint32_t st = base + L::STAGES + s * 2 * kTileBytes;
        tma::bar_expect(full + 8 * s, 2 * kTileBytes);
        load_tile(st, &kmap, b * p.T + t * kTile, hk * kD, full + 8 * s);
        load_tile(st + kTileBytes, &vmap, b * p.T + t * kTile, hk * kD, full + 8 * s);
    };
    const uint32_t qs = base + L::QDO + wg * 2 * kTileBytes; /* this warpgroup's Q, then dO */
    an_pdl_trigger(); /* the dK/dV kernel may take the multiprocessors this grid's last wave leaves */
    /* The last active warpgroup (the one with the most key tiles) refills each stage once both
     * gave it back: it runs on whatever the other did, so the wait seldom stalls it. (A producer
     * warp would cost a warpgroup's registers, which Q and dO's fragments need.) */
    const bool issuer = tid == 0 && wg == (2 * pair + 1 < n_t ? 1 : 0);
    if (issuer)
        for (int t = 0; t < kDqStages && t < n_kv; t++) issue_kv(t);
    if (tid == 0 && active) {
        tma::bar_expect(q_bar + 8 * wg, 2 * kTileBytes);
        load_tile(qs, &qmap, b * p.T + qt * kTile, h * kD, q_bar + 8 * wg);
        load_tile(qs + kTileBytes, &dmap, b * p.T + qt * kTile, h * kD, q_bar + 8 * wg);
    }
    if (!active) return;

    const int r0 = 16 * warp + lane / 4; /* this thread's query rows r0, r0 + 8 within the tile */
    float l2[2], dl[2];
    for (int h2 = 0; h2 < 2; h2++) {
        const int64_t at = ((int64_t)b * p.Hq + h) * p.T + (int64_t)qt * kTile + r0 + 8 * h2;
        l2[h2] = p.lse[at] * (float)kLog2e, dl[h2] = p.delta[at];
    }
    float dq[64]; /* written only by wgmma until the end (the dK/dV kernel says why) */
    tma::bar_wait(q_bar + 8 * wg, 0);
    /* Q and dO as A operands in registers for the whole walk: the score products read only K or V
     * from shared memory (the same time as both from there, 0.135 -> 0.130 ms alone, and it
     * leaves the shared-memory bandwidth to the other warpgroup) */
    uint32_t qa[8][4], da[8][4];
    load_a(qa, qs);
    load_a(da, qs + kTileBytes);
    float sc[32], dp[32];
    /* S = Q K^T and dP = dO V^T of key tile t once it landed, issued before the last tile's dQ
     * product finishes */
    auto scores = [&](int t) {
        const uint32_t st = base + L::STAGES + (t % kDqStages) * 2 * kTileBytes;
        tma::bar_wait(full + 8 * (t % kDqStages), (t / kDqStages) & 1);
        wgmma::fence();
        products_rk<T>(sc, qa, st, dp, da, st + kTileBytes);
        wgmma::commit();
    };
    scores(0);
    if (p.rope) { /* the tile's table rows into Q and dO's memory once every thread has their fragments */
        wgmma::named_sync(1 + wg, 128);
        if (tid == 0) {
            tma::bar_expect(table_bar, kTableBytes);
            tma::load_bytes(qs, p.rope + ((int64_t)b * p.T + qt * kTile) * (kD / 2), kTableBytes, table_bar);
        }
    }
    for (int t = 0; t <= qt; t++) {
        const int s = t % kDqStages;
        const uint32_t st = base + L::STAGES + s * 2 * kTileBytes;
        wgmma::wait<0>(); /* S and dP */
        wgmma::fence_regs(sc);
        const bool diag = t == qt;
        float pf[32], ds[32]; /* P, dS */
#pragma unroll
        for (int j = 0; j < 8; j++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int key = 8 * j + 2 * (lane % 4) + e;
#pragma unroll
                for (int h2 = 0; h2 < 2; h2++) {
                    float pv = exp2f(sc[4 * j + 2 * h2 + e] * p.scale_log2 - l2[h2]);
                    if (diag && key > r0 + 8 * h2) pv = 0.0f;
                    pf[4 * j + 2 * h2 + e] = pv;
                }
            }
        wgmma::fence_regs(dp);
#pragma unroll
        for (int j = 0; j < 8; j++)
#pragma unroll
            for (int x = 0; x < 4; x++) ds[4 * j + x] = pf[4 * j + x] * (dp[4 * j + x] - dl[x / 2]);
        uint32_t dsa[4][4];
        to_a<T>(ds, dsa);
        wgmma::fence();
        product_t<T>(dq, dsa, st, t > 0); /* dQ += dS K */
        wgmma::commit();
        if (t < qt) {
            scores(t + 1);
            wgmma::wait<1>();
        } else {
            wgmma::wait<0>();
        }
        wgmma::fence_regs(dq);
        wgmma::named_sync(1 + wg, 128); /* the warpgroup is done with stage s */
        if (tid == 0) tma::bar_arrive(empty + 8 * s);
        if (issuer && t + kDqStages < n_kv) {
            tma::bar_wait(empty + 8 * s, (t / kDqStages) & 1);
            issue_kv(t + kDqStages);
        }
    }
    wgmma::wait<0>();
    /* dQ, scaled and rounded, into this warpgroup's Q / dO memory (free: their fragments are in
     * registers) in the boxes' swizzled layout, then out by the tensor memory accelerator: 4-byte
     * stores from the fragments straight to global memory queued behind each other (lg_throttle and
     * drain stalls under Nsight Compute) */
    if (p.rope) {
        tma::bar_wait(table_bar, 0);
        turn_back<T>(dq, reinterpret_cast<const float2 *>(gen + (qs - base)), p.scale);
        wgmma::named_sync(1 + wg, 128); /* every thread has read the table before the staging overwrites it */
    }
    const float mul = p.rope ? 1.0f : p.scale;
    {
        const int c = 2 * (lane % 4);
#pragma unroll
        for (int j = 0; j < 16; j++)
#pragma unroll
            for (int h2 = 0; h2 < 2; h2++) {
                const int r = r0 + 8 * h2;
                const uint32_t at = qs + (j / 8) * kBox + r * 128 + (((j % 8) ^ (r % 8)) << 4) + 2 * c;
                const uint32_t v = pack2<T>(dq[4 * j + 2 * h2] * mul, dq[4 * j + 2 * h2 + 1] * mul);
                asm volatile("st.shared.b32 [%0], %1;" ::"r"(at), "r"(v) : "memory");
            }
    }
    tma::fence_async_shared();
    wgmma::named_sync(1 + wg, 128);
    if (tid == 0) {
        tma::store(&omap, h * kD, b * p.T + qt * kTile, qs);
        tma::store(&omap, h * kD + 64, b * p.T + qt * kTile, qs + kBox);
        tma::store_commit();
        tma::store_wait<0>();
    }
#endif
}

} // namespace attention_wgmma

namespace {

using namespace attention_wgmma;

/* The maps: q and dO over (B T, Hq D), k and v over (B T, Hkv D), and (where wanted) dQ over
 * (B T, Hq D), boxes of 64 x 64. */
template <typename T>
cudaError_t encode_maps(an_cuda_state *s, const an_attention_shape *sh, const void *q, const void *k, const void *v,
                        const void *dout, const void *dq, CUtensorMap *m) {
    void *fn = nullptr;
    cudaError_t err = an_cuda_tensor_map_encoder(s, &fn);
    const auto encode = (PFN_cuTensorMapEncodeTiled_v12000)fn;
    const int64_t rows = sh->batch * sh->seq;
    if (err == cudaSuccess) err = tma::encode_2d(encode, &m[0], (const T *)q, rows, sh->q_heads * kD, 64, 64);
    if (err == cudaSuccess) err = tma::encode_2d(encode, &m[1], (const T *)k, rows, sh->kv_heads * kD, 64, 64);
    if (err == cudaSuccess) err = tma::encode_2d(encode, &m[2], (const T *)v, rows, sh->kv_heads * kD, 64, 64);
    if (err == cudaSuccess) err = tma::encode_2d(encode, &m[3], (const T *)dout, rows, sh->q_heads * kD, 64, 64);
    if (err == cudaSuccess && dq) err = tma::encode_2d(encode, &m[4], (const T *)dq, rows, sh->q_heads * kD, 64, 64);
    return err;
}

template <typename T>
an_status backward_t(an_ctx *ctx, const an_attention_shape *sh, const void *q, const void *k, const void *v,
                     const void *dout, const Params &p) {
    AN_CUDA_STATE(ctx, s);
    CUtensorMap m[5] = {};
    AN_CUDA_CHECK(ctx, encode_maps<T>(s, sh, q, k, v, dout, p.dq, m));
    const int n_t = (int)(sh->seq / kTile);
    if (p.dq) {
        AN_CUDA_CHECK(ctx, cudaFuncSetAttribute(dq_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, DqLayout::BYTES));
        const unsigned blocks = (unsigned)((n_t + 1) / 2 * sh->q_heads * sh->batch);
        dq_kernel<T><<<blocks, kThreads, DqLayout::BYTES, s->stream>>>(m[0], m[1], m[2], m[3], m[4], p);
        AN_CUDA_LAUNCH_CHECK(ctx, "attention_wgmma dq_kernel");
    }
    if (p.dk || p.dv) {
        AN_CUDA_CHECK(ctx, cudaFuncSetAttribute(dkv_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, DkvLayout::BYTES));
        const unsigned blocks = (unsigned)(n_t * sh->kv_heads * sh->batch);
        /* it reads nothing the dQ kernel writes: it starts on the multiprocessors that kernel's
         * tail leaves (programmatic launch), waiting for its end only before its own stores */
        if (p.dq) {
            AN_CUDA_CHECK(ctx, an_launch_pdl_smem(s, dkv_kernel<T>, dim3(blocks), dim3(kThreads), DkvLayout::BYTES, m[0],
                                                  m[1], m[2], m[3], p));
        } else { /* right behind delta's kernel, whose output it reads at once */
            dkv_kernel<T><<<blocks, kThreads, DkvLayout::BYTES, s->stream>>>(m[0], m[1], m[2], m[3], p);
            AN_CUDA_LAUNCH_CHECK(ctx, "attention_wgmma dkv_kernel");
        }
    }
    return AN_OK;
}

} // namespace

bool an_attention_wgmma_takes(an_ctx *ctx, const an_attention_shape *sh, an_dtype dtype, const void *segments,
                              const void *const *bufs, int n) {
    if (!ctx->cuda || !ctx->cuda->wgmma || ctx->cuda->attention_wgmma_off || segments) return false;
    if ((dtype != AN_BF16 && dtype != AN_F16) || sh->head_dim != kD || sh->seq % kTile != 0) return false;
    /* grid sizes and (B T) row indices are ints */
    if (sh->batch * sh->seq > INT32_MAX / 2 || (sh->seq / kTile) * sh->q_heads * sh->batch > INT32_MAX / 2) return false;
    return an_attention_mma_aligned(bufs, n);
}

an_status an_attention_wgmma_backward(an_ctx *ctx, const an_attention_shape *sh, an_dtype dtype, const void *q,
                                      const void *k, const void *v, const void *out, const float *lse,
                                      const void *grad_out, float *delta, void *grad_q, void *grad_k, void *grad_v,
                                      const float *rope_table) {
    AN_CHECK(ctx, (dtype == AN_BF16 || dtype == AN_F16) && sh->head_dim == kD && sh->seq % kTile == 0,
             AN_ERR_INTERNAL, "attention_wgmma: %s head_dim %lld T %lld is not its shape (an_attention_wgmma_takes)",
             an_dtype_name(dtype), (long long)sh->head_dim, (long long)sh->seq);
    if (sh->batch == 0 || sh->seq == 0 || (!grad_q && !grad_k && !grad_v)) return AN_OK;
    AN_TRY(an_attention_mma_delta(ctx, sh, dtype, out, grad_out, delta));
    Params p = {};
    p.lse = lse, p.delta = delta;
    p.rope = reinterpret_cast<const float2 *>(rope_table);
    p.dq = grad_q, p.dk = grad_k, p.dv = grad_v;
    p.T = (int)sh->seq, p.Hq = (int)sh->q_heads, p.Hkv = (int)sh->kv_heads, p.batch = (int)sh->batch;
    p.scale = (float)sh->scale;
    p.scale_log2 = (float)(sh->scale * kLog2e);
    if (dtype == AN_BF16) return backward_t<__nv_bfloat16>(ctx, sh, q, k, v, grad_out, p);
    return backward_t<__half>(ctx, sh, q, k, v, grad_out, p);
}
