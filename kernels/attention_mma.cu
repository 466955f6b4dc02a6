/* attention_mma.cu — causal grouped-query attention over packed documents on the tensor cores:
 * bf16/f16 operands through mma.sync.m16n8k16 with fp32 accumulation, head_dim 64 or 128
 * (attention_mma.cuh says which calls come here). Forward in one launch, backward in three.
 *
 * Numerics: scores S = q.k and every product accumulate in fp32; the softmax runs in the log2
 * domain on fp32 (x = scale * log2(e) * S, p = 2^(x - max)); the row sum uses the unrounded p,
 * while the probabilities fed to the next product (P V, P^T dO, dS K, dS^T Q) are rounded to the
 * input dtype, as flash-attention and cuDNN do. lse (B, Hq, T) is f32, natural log. The backward
 * takes delta_i = sum_d dO_id O_id from the saved output (one small launch) and recomputes
 * P = 2^(x - lse log2(e)) from lse. Each output is rounded once and written with =; there are no
 * atomics, so every result is bit-reproducible.
 *
 * Masking (as the CPU op): query i sees key j when j <= i and segments[i] == segments[j]. A tile
 * of keys (queries, in the dK/dV kernel) whose range of segment ids does not meet the other
 * tile's is skipped before it is loaded, so packed short documents cost about their own size.
 *
 * Tiling: blocks of 4 warps; the dQ kernel's own 64 rows (16 per warp), the dK/dV kernel's 32 keys
 * (16 per warp pair, below), the forward's 128 (32 per warp, so each key and value fragment
 * feeds two products); the other operand streams through
 * shared memory in tiles (64 rows; 32 keys in the forward at head_dim 128, to stay within 255
 * registers), double-buffered with cp.async (the next tile loads while this one is multiplied).
 * Every fragment comes from ldmatrix. Shared tiles keep rows of D + 8 elements, so ldmatrix's 8
 * rows of 16 bytes fall in distinct banks.
 * Grids are (head, batch row, tile) with the tile index slowest and the tiles with the most work
 * first, so the longest blocks all start in the first wave.
 * Measured (tests/test_cuda_attention.c prints it; H200, bf16, B 8, T 1024, Hq 12, Hkv 2, D 128,
 * causal): forward 0.133 ms (193 TFLOP/s of useful work), backward 0.53 ms (dQ 0.22, dK/dV 0.34).
 * Before the launch order and the split dK/dV blocks: forward 0.161, backward 0.71 (dQ 0.25,
 * dK/dV 0.49). Tried and dropped (no gain there): dQ holding its Q and dO fragments in registers;
 * splitting the head dim of the dQ or dK/dV accumulators between two warp groups that swap their
 * P / dS fragments through shared memory (half the registers, two blocks an SM); 64-key dK/dV
 * blocks of 8 warps (0.39).
 * - forward: one block per (query tile, query head, batch row), online softmax over key tiles.
 * - delta: D / 8 lanes per (token, query head), one 16-byte pack of out and grad_out a lane, four
 *   row groups a warp with their loads in flight together.
 * - dQ: one block per (query tile, query head, batch row): S, dP = dO V^T, dS, dQ += dS K.
 * - dK, dV: one block of 4 warps per (32-key tile, kv head, batch row), walking the group's query
 *   heads in order and their 64-query tiles from the key tile on: S^T, dV += P^T dO, dP^T,
 *   dK += dS^T Q, all in registers. Warps 0-1 take the first 32 queries of each query tile and
 *   warps 2-3 the last 32 (16 keys a warp), which halves the serial chain of the key tiles that
 *   see the most queries, and two blocks share an SM; the two partial sums meet once at the end
 *   (group 0 + group 1 through shared memory), so the group's sum has a fixed order.
 * Work per visible (query, key) pair and head dim: forward 2 multiply-adds, backward 7 (dQ
 * kernel 3, dK/dV kernel 4) — flash-attention 2's five plus the recomputation the deterministic
 * split costs. */
#include "kernels/attention_mma.cuh"
#include "kernels/block_reduce.cuh" /* an_lanes_sum, an_lanes_max */
#include "kernels/mma.cuh"        /* Mma, ldsm_x4(_trans), cp_async16 */
#include "kernels/vec.cuh"        /* an_vec_width, an_unpack16, an_aligned16 */

#include <limits.h>
#include <math.h>
#include <stdint.h>

#include <type_traits>

namespace {

constexpr int kTile = 64;              /* rows of every tile: queries, or keys */
constexpr int kWarps = 4;              /* 16 rows of the block's tile each */
constexpr int kThreads = 32 * kWarps;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

struct Args {
    const void *q, *k, *v;   /* (B, T, Hq, D), (B, T, Hkv, D), (B, T, Hkv, D) */
    const void *out, *dout;  /* (B, T, Hq, D): backward */
    void *o;                 /* (B, T, Hq, D): forward */
    void *dq, *dk, *dv;      /* backward; any may be null */
    float *lse;              /* (B, Hq, T): written by the forward, read by the backward */
    float *delta;            /* (B, Hq, T): rowsum(dO * O) */
    const void *seg;         /* (B, T) i32 or i64, or null */
    bool seg_wide;
    int64_t seq;             /* T */
    int Hq, Hkv;
    float scale;             /* softmax scale */
    float scale_log2;        /* scale * log2(e) */
};

/* ---- tensor-core and copy primitives: kernels/mma.cuh ---- */

/* The row and column offsets at which this lane points ldmatrix: A fragments (row-major 16x16:
 * rows lane % 16, columns 8 (lane / 16); the transposed B loads of ldsm_x4_trans use the same),
 * and the B fragments of two 8-wide blocks stored n-major (rows lane % 8 + 8 (lane / 16), columns
 * 8 ((lane / 8) % 2)). */
struct LdsmLanes {
    int a_row, a_col, b_row, b_col;
    __device__ __forceinline__ explicit LdsmLanes(int lane)
        : a_row(lane % 16), a_col((lane / 16) * 8), b_row(lane % 8 + (lane / 16) * 8), b_col(((lane / 8) % 2) * 8) {}
};

/* dst (ROWS, D + 8) <- tokens [t0, t0 + ROWS) of head h of x (B, T, H, D) at batch row b (t0 < T);
 * rows past T are zero. Thread t copies 16-byte chunk t % (D / 8) of rows t / (D / 8) + k STEP.
 * Asynchronous: the caller commits and waits. */
template <typename T, int D, int ROWS = kTile, int NT = kThreads>
__device__ __forceinline__ void load_tile(T *dst, const T *x, int64_t b, int64_t t0, int64_t seq, int H, int h) {
    constexpr int CH = D / 8, STEP = NT / CH; /* 16-byte chunks per row; rows per pass */
    static_assert(ROWS % STEP == 0, "tile rows must be a multiple of the rows one pass covers");
    const int r0 = threadIdx.x / CH, col = (threadIdx.x % CH) * 8;
    const int64_t stride = (int64_t)H * D, valid = seq - t0;
    const T *first = x + ((b * seq + t0) * H + h) * (int64_t)D + col + r0 * stride;
#pragma unroll
    for (int i = 0; i < ROWS / STEP; i++) {
        const int r = r0 + i * STEP;
        const bool ok = r < valid;
        cp_async16(dst + r * (D + 8) + col, ok ? first + (int64_t)i * STEP * stride : x, ok);
    }
}

/* rows (16, D) at src (row stride D + 8) -> tokens t0.. of head h of y (B, T, H, D), rows past T
 * dropped; one warp. */
template <typename T, int D>
__device__ __forceinline__ void store_rows(T *y, const T *src, int64_t b, int64_t t0, int64_t seq, int H, int h) {
    constexpr int CH = D / 8;
    int lane = threadIdx.x % 32;
    for (int c = lane; c < 16 * CH; c += 32) {
        int r = c / CH, col = (c % CH) * 8;
        int64_t t = t0 + r;
        if (t < seq)
            *reinterpret_cast<uint4 *>(y + ((b * seq + t) * H + h) * (int64_t)D + col) =
                *reinterpret_cast<const uint4 *>(src + r * (D + 8) + col);
    }
}

__device__ __forceinline__ long long seg_at(const Args &a, int64_t i) {
    return a.seg_wide ? (long long)((const int64_t *)a.seg)[i] : (long long)((const int32_t *)a.seg)[i];
}

/* Smallest and largest segment id of tokens [t0, t0 + kTile) (below T) of batch row b. Each warp
 * computes it alone and all warps get the same answer, so no barrier is needed. */
__device__ __forceinline__ void seg_range(const Args &a, int64_t b, int64_t t0, long long &lo, long long &hi) {
    lo = LLONG_MAX, hi = LLONG_MIN;
    for (int r = threadIdx.x % 32; r < kTile; r += 32) {
        int64_t t = t0 + r;
        if (t < a.seq) {
            long long s = seg_at(a, b * a.seq + t);
            lo = s < lo ? s : lo, hi = s > hi ? s : hi;
        }
    }
#pragma unroll
    for (int off = 16; off > 0; off /= 2) {
        long long l2 = __shfl_xor_sync(0xffffffffu, lo, off), h2 = __shfl_xor_sync(0xffffffffu, hi, off);
        lo = l2 < lo ? l2 : lo, hi = h2 > hi ? h2 : hi;
    }
}

/* Whether tile t1 (tokens t1..) can hold a segment id of [lo, hi]; always true without segments. */
__device__ __forceinline__ bool seg_meets(const Args &a, int64_t b, int64_t t1, long long lo, long long hi) {
    if (!a.seg) return true;
    long long l2, h2;
    seg_range(a, b, t1, l2, h2);
    return l2 <= hi && lo <= h2;
}


/* ---- forward ---- */

/* The forward takes 32 query rows per warp (two 16-row MMA tiles), so each key and value fragment
 * read from shared memory feeds two products: blocks of 128 queries against 64-key tiles. */
constexpr int kFwdRows = 2 * 16 * kWarps;

template <typename T, int D, int KT> struct FwdSmem {
    static constexpr int LD = D + 8;
    static constexpr size_t bytes =
        sizeof(T) * ((size_t)kFwdRows * LD + 4 * (size_t)KT * LD) + sizeof(long long) * (2 * KT + kFwdRows);
};

template <typename T, int D, int KT> __global__ void __launch_bounds__(kThreads) forward_kernel(Args a) {
    constexpr int LD = D + 8, KD = D / 16, ND = D / 8, NK = KT / 8; /* KT keys per tile: NK 8-key blocks */
    typedef Mma<T> M;
    extern __shared__ __align__(16) unsigned char smem[];
    T *qs = (T *)smem;                                   /* (kFwdRows, LD) queries; then the output */
    T *ks = qs + kFwdRows * LD;                          /* 2 x (KT, LD) keys */
    T *vs = ks + 2 * KT * LD;                            /* 2 x (KT, LD) values */
    long long *segk = (long long *)(vs + 2 * KT * LD);   /* 2 x KT key segment ids */
    long long *segq = segk + 2 * KT;                     /* kFwdRows query segment ids */
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c2 = 2 * (lane % 4);
    const int64_t b = blockIdx.y, q0 = (int64_t)(gridDim.z - 1 - blockIdx.z) * kFwdRows; /* longest rows first */
    const int h = blockIdx.x, hk = h / (a.Hq / a.Hkv);
    const T *Q = (const T *)a.q, *K = (const T *)a.k, *V = (const T *)a.v;
    const int64_t w0 = q0 + warp * 32; /* this warp's first row */
    /* row of the block (0 .. kFwdRows) of tile mt, half i of this lane */
    auto rloc = [&](int mt, int i) { return warp * 32 + mt * 16 + g + 8 * i; };
    const int n_kt = (int)(((q0 + kFwdRows < a.seq ? q0 + kFwdRows : a.seq) - 1) / KT) + 1;

    load_tile<T, D, kFwdRows>(qs, Q, b, q0, a.seq, a.Hq, h);
    cp_async_commit();
    long long qlo = 0, qhi = 0;
    if (a.seg) {
        seg_range(a, b, q0, qlo, qhi);
        long long l2, h2;
        if (q0 + kTile < a.seq) {
            seg_range(a, b, q0 + kTile, l2, h2);
            qlo = l2 < qlo ? l2 : qlo, qhi = h2 > qhi ? h2 : qhi;
        }
        for (int r = threadIdx.x; r < kFwdRows; r += kThreads) /* read after the loop's first barrier */
            segq[r] = q0 + r < a.seq ? seg_at(a, b * a.seq + q0 + r) : 0;
    }
    auto next_visible = [&](int kt) {
        while (kt < n_kt && !seg_meets(a, b, (int64_t)kt * KT, qlo, qhi)) kt++;
        return kt;
    };
    auto issue = [&](int kt, int buf) {
        int64_t k0 = (int64_t)kt * KT;
        load_tile<T, D, KT>(ks + buf * KT * LD, K, b, k0, a.seq, a.Hkv, hk);
        load_tile<T, D, KT>(vs + buf * KT * LD, V, b, k0, a.seq, a.Hkv, hk);
        if (a.seg && threadIdx.x < KT) {
            int64_t t = k0 + threadIdx.x;
            segk[buf * KT + threadIdx.x] = t < a.seq ? seg_at(a, b * a.seq + t) : 0;
        }
    };

    int cur = next_visible(0); /* the diagonal tile is always visible, so cur < n_kt */
    issue(cur, 0);
    cp_async_commit();
    float o[2][ND][4], m[2][2], l[2][2];
#pragma unroll
    for (int mt = 0; mt < 2; mt++) {
        m[mt][0] = m[mt][1] = -INFINITY, l[mt][0] = l[mt][1] = 0.0f;
#pragma unroll
        for (int dn = 0; dn < ND; dn++) o[mt][dn][0] = o[mt][dn][1] = o[mt][dn][2] = o[mt][dn][3] = 0.0f;
    }
    const LdsmLanes ln(lane);
    for (int buf = 0; cur < n_kt; buf ^= 1) {
        int nxt = next_visible(cur + 1);
        if (nxt < n_kt) issue(nxt, buf ^ 1);
        cp_async_commit();
        cp_async_wait<1>(); /* the queries and tile cur have landed */
        __syncthreads();
        const T *kb = ks + buf * KT * LD, *vb = vs + buf * KT * LD;
        const long long *sk = segk + buf * KT;
        const int64_t k0 = (int64_t)cur * KT;

        float s[2][NK][4]; /* scores of rows (tile, g or g + 8) against keys k0 + 8n + c2 (+1) */
#pragma unroll
        for (int mt = 0; mt < 2; mt++)
#pragma unroll
            for (int n = 0; n < NK; n++) s[mt][n][0] = s[mt][n][1] = s[mt][n][2] = s[mt][n][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < KD; kk++) {
            uint32_t qa[2][4];
#pragma unroll
            for (int mt = 0; mt < 2; mt++)
                ldsm_x4(qa[mt], qs + (warp * 32 + mt * 16 + ln.a_row) * LD + kk * 16 + ln.a_col);
#pragma unroll
            for (int n = 0; n < NK; n += 2) {
                uint32_t kf[4];
                ldsm_x4(kf, kb + (n * 8 + ln.b_row) * LD + kk * 16 + ln.b_col);
#pragma unroll
                for (int mt = 0; mt < 2; mt++) {
                    M::run(s[mt][n], qa[mt], kf[0], kf[1]);
                    M::run(s[mt][n + 1], qa[mt], kf[2], kf[3]);
                }
            }
        }
        const bool mask = a.seg || k0 + KT - 1 > w0;
        const int kq = (int)(k0 - q0); /* key j of the tile is token q0 + kq + j */
#pragma unroll
        for (int mt = 0; mt < 2; mt++) {
#pragma unroll
            for (int n = 0; n < NK; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    float x = s[mt][n][e] * a.scale_log2;
                    if (mask) {
                        int j = n * 8 + c2 + (e & 1), r = rloc(mt, e >> 1);
                        if (kq + j > r || (a.seg && sk[j] != segq[r])) x = -INFINITY;
                    }
                    s[mt][n][e] = x;
                }
#pragma unroll
            for (int i = 0; i < 2; i++) {
                float mx = -INFINITY;
#pragma unroll
                for (int n = 0; n < NK; n++) mx = fmaxf(mx, fmaxf(s[mt][n][2 * i], s[mt][n][2 * i + 1]));
                float m_new = fmaxf(m[mt][i], an_lanes_max<4>(mx));
                float mu = m_new == -INFINITY ? 0.0f : m_new; /* a row with nothing visible yet stays at 0 */
                float corr = exp2f(m[mt][i] - mu);
                m[mt][i] = m_new;
                l[mt][i] *= corr;
#pragma unroll
                for (int dn = 0; dn < ND; dn++) o[mt][dn][2 * i] *= corr, o[mt][dn][2 * i + 1] *= corr;
#pragma unroll
                for (int n = 0; n < NK; n++) {
                    float p0 = exp2f(s[mt][n][2 * i] - mu), p1 = exp2f(s[mt][n][2 * i + 1] - mu);
                    s[mt][n][2 * i] = p0, s[mt][n][2 * i + 1] = p1;
                    l[mt][i] += p0 + p1;
                }
            }
        }
#pragma unroll
        for (int kk = 0; kk < KT / 16; kk++) {
            uint32_t pa[2][4];
#pragma unroll
            for (int mt = 0; mt < 2; mt++) {
                pa[mt][0] = M::pack(s[mt][2 * kk][0], s[mt][2 * kk][1]);
                pa[mt][1] = M::pack(s[mt][2 * kk][2], s[mt][2 * kk][3]);
                pa[mt][2] = M::pack(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
                pa[mt][3] = M::pack(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
            }
#pragma unroll
            for (int dn = 0; dn < ND; dn += 2) {
                uint32_t r[4];
                ldsm_x4_trans(r, vb + (kk * 16 + ln.a_row) * LD + dn * 8 + ln.a_col);
#pragma unroll
                for (int mt = 0; mt < 2; mt++) {
                    M::run(o[mt][dn], pa[mt], r[0], r[1]);
                    M::run(o[mt][dn + 1], pa[mt], r[2], r[3]);
                }
            }
        }
        __syncthreads(); /* tile cur is free for the load after next */
        cur = nxt;
    }
    cp_async_wait<0>();

    T *os = qs + warp * 32 * LD; /* this warp's rows of the query tile (only it reads them) */
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int i = 0; i < 2; i++) {
            float sum = an_lanes_sum<4>(l[mt][i]), inv = 1.0f / sum;
#pragma unroll
            for (int dn = 0; dn < ND; dn++)
                *reinterpret_cast<uint32_t *>(os + (mt * 16 + g + 8 * i) * LD + dn * 8 + c2) =
                    M::pack(o[mt][dn][2 * i] * inv, o[mt][dn][2 * i + 1] * inv);
            if (lane % 4 == 0 && q0 + rloc(mt, i) < a.seq)
                a.lse[((int64_t)b * a.Hq + h) * a.seq + q0 + rloc(mt, i)] = (m[mt][i] + log2f(sum)) * kLn2;
        }
    __syncwarp();
    store_rows<T, D>((T *)a.o, os, b, w0, a.seq, a.Hq, h);
    store_rows<T, D>((T *)a.o, os + 16 * LD, b, w0 + 16, a.seq, a.Hq, h);
}

/* ---- backward ---- */

/* delta (B, Hq, T) = sum over d of dout * out for each (b, t, h) row of (B, T, Hq, D), out and dout
 * 16-byte aligned (this path's rule): D / 8 lanes a row, each lane one 16-byte pack of both (8
 * products summed in order), then a butterfly over the row's lanes; a warp takes DELTA_ITER groups
 * of 32 / (D / 8) rows and issues all their loads before the first sum, so enough bytes are in
 * flight for DRAM's rate (one 4-byte pair a lane, one warp a row, ran at 1.8 TB/s: 27 us a layer of
 * the 1.5B model's training step on an H100). */
constexpr int DELTA_ITER = 4;
template <typename T, int D> __global__ void __launch_bounds__(256) delta_kernel(Args a, int64_t rows) {
    constexpr int V = an_vec_width<T>::value, L = D / V, RW = 32 / L; /* lanes a row, rows a warp at once */
    static_assert(D % V == 0 && 32 % L == 0, "delta: whole 16-byte packs, whole rows a warp");
    const int lane = threadIdx.x % 32;
    const int64_t first = ((int64_t)blockIdx.x * 8 + threadIdx.x / 32) * RW * DELTA_ITER + lane / L;
    uint4 o[DELTA_ITER], d[DELTA_ITER];
#pragma unroll
    for (int i = 0; i < DELTA_ITER; i++) {
        const int64_t r = first + i * RW;
        if (r < rows) {
            o[i] = *reinterpret_cast<const uint4 *>((const T *)a.out + r * D + (lane % L) * V);
            d[i] = *reinterpret_cast<const uint4 *>((const T *)a.dout + r * D + (lane % L) * V);
        } else {
            o[i] = d[i] = make_uint4(0, 0, 0, 0); /* zeros: every lane takes part in the butterfly */
        }
    }
#pragma unroll
    for (int i = 0; i < DELTA_ITER; i++) {
        float of[V], df[V], acc = 0.0f;
        an_unpack16<T>(o[i], of), an_unpack16<T>(d[i], df);
#pragma unroll
        for (int k = 0; k < V; k++) acc += of[k] * df[k];
        acc = an_lanes_sum<L>(acc);
        const int64_t r = first + i * RW;
        if (r < rows && lane % L == 0) {
            int64_t h = r % a.Hq, bt = r / a.Hq, t = bt % a.seq, bb = bt / a.seq;
            a.delta[(bb * a.Hq + h) * a.seq + t] = acc;
        }
    }
}

template <typename T, int D> struct BwdSmem {
    static constexpr int LD = D + 8;
    /* dq: q, dO, 2 x (k, v), 2 x kTile key ids; dkv: k, v, 2 x (q, dO), 2 x kTile (lse, delta, id) */
    static constexpr size_t dq_bytes = sizeof(T) * 6 * kTile * LD + sizeof(long long) * 2 * kTile;
    template <int KT>
    static constexpr size_t dkv_bytes =
        sizeof(T) * (2 * KT + 4 * kTile) * LD + (2 * sizeof(float) + sizeof(long long)) * 2 * kTile;
};

/* dQ = scale sum_j dS_ij k_j with dS = P (dP - delta), dP = dO V^T. */
template <typename T, int D> __global__ void __launch_bounds__(kThreads) dq_kernel(Args a) {
    constexpr int LD = D + 8, KD = D / 16, ND = D / 8;
    typedef Mma<T> M;
    extern __shared__ __align__(16) unsigned char smem[];
    T *qs = (T *)smem;                                   /* (kTile, LD) queries; then dQ */
    T *dos = qs + kTile * LD;                            /* (kTile, LD) output gradient */
    T *ks = dos + kTile * LD;                            /* 2 x (kTile, LD) keys */
    T *vs = ks + 2 * kTile * LD;                         /* 2 x (kTile, LD) values */
    long long *segk = (long long *)(vs + 2 * kTile * LD); /* 2 x kTile key segment ids */
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c2 = 2 * (lane % 4);
    const int64_t b = blockIdx.y, q0 = (int64_t)(gridDim.z - 1 - blockIdx.z) * kTile; /* longest rows first */
    const int h = blockIdx.x, hk = h / (a.Hq / a.Hkv);
    const T *K = (const T *)a.k, *V = (const T *)a.v;
    const int64_t row[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};
    const int n_kt = (int)(((q0 + kTile < a.seq ? q0 + kTile : a.seq) - 1) / kTile) + 1;

    load_tile<T, D>(qs, (const T *)a.q, b, q0, a.seq, a.Hq, h);
    load_tile<T, D>(dos, (const T *)a.dout, b, q0, a.seq, a.Hq, h);
    cp_async_commit();
    float lse2[2], dl[2];
    long long srow[2] = {0, 0}, qlo = 0, qhi = 0;
    for (int i = 0; i < 2; i++) {
        int64_t at = ((int64_t)b * a.Hq + h) * a.seq + row[i];
        lse2[i] = row[i] < a.seq ? a.lse[at] * kLog2e : 0.0f;
        dl[i] = row[i] < a.seq ? a.delta[at] : 0.0f;
    }
    if (a.seg) {
        seg_range(a, b, q0, qlo, qhi);
        for (int i = 0; i < 2; i++) srow[i] = row[i] < a.seq ? seg_at(a, b * a.seq + row[i]) : 0;
    }
    auto next_visible = [&](int kt) {
        while (kt < n_kt && !seg_meets(a, b, (int64_t)kt * kTile, qlo, qhi)) kt++;
        return kt;
    };
    auto issue = [&](int kt, int buf) {
        int64_t k0 = (int64_t)kt * kTile;
        load_tile<T, D>(ks + buf * kTile * LD, K, b, k0, a.seq, a.Hkv, hk);
        load_tile<T, D>(vs + buf * kTile * LD, V, b, k0, a.seq, a.Hkv, hk);
        if (a.seg && threadIdx.x < kTile) {
            int64_t t = k0 + threadIdx.x;
            segk[buf * kTile + threadIdx.x] = t < a.seq ? seg_at(a, b * a.seq + t) : 0;
        }
    };

    int cur = next_visible(0);
    issue(cur, 0);
    cp_async_commit();
    float dq[ND][4];
#pragma unroll
    for (int dn = 0; dn < ND; dn++) dq[dn][0] = dq[dn][1] = dq[dn][2] = dq[dn][3] = 0.0f;
    const LdsmLanes ln(lane);
    for (int buf = 0; cur < n_kt; buf ^= 1) {
        int nxt = next_visible(cur + 1);
        if (nxt < n_kt) issue(nxt, buf ^ 1);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const T *kb = ks + buf * kTile * LD, *vb = vs + buf * kTile * LD;
        const long long *sk = segk + buf * kTile;
        const int64_t k0 = (int64_t)cur * kTile;

        float s[8][4], dp[8][4];
#pragma unroll
        for (int n = 0; n < 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) s[n][e] = dp[n][e] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < KD; kk++) {
            uint32_t qa[4], da[4];
            ldsm_x4(qa, qs + (warp * 16 + ln.a_row) * LD + kk * 16 + ln.a_col);
            ldsm_x4(da, dos + (warp * 16 + ln.a_row) * LD + kk * 16 + ln.a_col);
#pragma unroll
            for (int n = 0; n < 8; n += 2) {
                uint32_t kf[4], vf[4];
                ldsm_x4(kf, kb + (n * 8 + ln.b_row) * LD + kk * 16 + ln.b_col);
                ldsm_x4(vf, vb + (n * 8 + ln.b_row) * LD + kk * 16 + ln.b_col);
                M::run(s[n], qa, kf[0], kf[1]);
                M::run(s[n + 1], qa, kf[2], kf[3]);
                M::run(dp[n], da, vf[0], vf[1]);
                M::run(dp[n + 1], da, vf[2], vf[3]);
            }
        }
        const bool mask = a.seg || k0 + kTile - 1 > q0 + warp * 16;
#pragma unroll
        for (int n = 0; n < 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int i = e >> 1, j = n * 8 + c2 + (e & 1);
                float p = exp2f(s[n][e] * a.scale_log2 - lse2[i]);
                if (mask && (k0 + j > row[i] || (a.seg && sk[j] != srow[i]))) p = 0.0f;
                s[n][e] = p * (dp[n][e] - dl[i]); /* dS / scale */
            }
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            uint32_t pa[4] = {M::pack(s[2 * kk][0], s[2 * kk][1]), M::pack(s[2 * kk][2], s[2 * kk][3]),
                              M::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]), M::pack(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int dn = 0; dn < ND; dn += 2) {
                uint32_t r[4];
                ldsm_x4_trans(r, kb + (kk * 16 + ln.a_row) * LD + dn * 8 + ln.a_col);
                M::run(dq[dn], pa, r[0], r[1]);
                M::run(dq[dn + 1], pa, r[2], r[3]);
            }
        }
        __syncthreads();
        cur = nxt;
    }
    cp_async_wait<0>();
    T *os = qs + warp * 16 * LD;
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int dn = 0; dn < ND; dn++)
            *reinterpret_cast<uint32_t *>(os + (g + 8 * i) * LD + dn * 8 + c2) =
                M::pack(dq[dn][2 * i] * a.scale, dq[dn][2 * i + 1] * a.scale);
    __syncwarp();
    store_rows<T, D>((T *)a.dq, os, b, q0 + warp * 16, a.seq, a.Hq, h);
}

/* dV = sum over the group's query heads and visible queries of P^T dO; dK likewise of dS^T Q
 * times scale. Queries are taken 32 at a time to keep P^T and dP^T small in registers. KT keys a
 * block (KT / 16 warps a group); G groups of warps take the 32-query halves of each query tile
 * (G 2) or both halves in turn (G 1). */
template <typename T, int D, int G, int KT>
__global__ void __launch_bounds__(2 * KT * G) dkv_kernel(Args a) {
    constexpr int LD = D + 8, KD = D / 16, ND = D / 8, SW = KT / 16, NT = 32 * SW * G; /* SW warps a group */
    static_assert(G == 1 || G == 2, "one or two warp groups");
    typedef Mma<T> M;
    extern __shared__ __align__(16) unsigned char smem[];
    T *ks = (T *)smem;                                     /* (KT, LD) keys; then dK */
    T *vs = ks + KT * LD;                                  /* (KT, LD) values; then dV */
    T *qs = vs + KT * LD;                                  /* 2 x (kTile, LD) queries */
    T *dos = qs + 2 * kTile * LD;                          /* 2 x (kTile, LD) output gradients */
    float *lse_s = (float *)(dos + 2 * kTile * LD);        /* 2 x kTile lse * log2(e) */
    float *dl_s = lse_s + 2 * kTile;                       /* 2 x kTile delta */
    long long *segq = (long long *)(dl_s + 2 * kTile);     /* 2 x kTile query segment ids */
    /* warp: which 16 keys of the tile; grp: which 32-query halves of each query tile */
    const int warp = threadIdx.x / 32 % SW, grp = threadIdx.x / 32 / SW;
    const int lane = threadIdx.x % 32, g = lane / 4, c2 = 2 * (lane % 4);
    const int kt = (int)blockIdx.z; /* the first key tiles, which have the most queries, launch first */
    const int64_t b = blockIdx.y, k0 = (int64_t)kt * KT;
    const int hk = blockIdx.x, group = a.Hq / a.Hkv;
    const int64_t key[2] = {k0 + warp * 16 + g, k0 + warp * 16 + g + 8};
    const int qt0 = kt * KT / kTile; /* the first query tile that sees the key tile */
    const int n_qt = (int)((a.seq + kTile - 1) / kTile), span = n_qt - qt0;
    const int n_items = group * span; /* (query head of the group, query tile from this key tile on) */

    load_tile<T, D, KT, NT>(ks, (const T *)a.k, b, k0, a.seq, a.Hkv, hk);
    load_tile<T, D, KT, NT>(vs, (const T *)a.v, b, k0, a.seq, a.Hkv, hk);
    cp_async_commit();
    long long skey[2] = {0, 0}, klo = 0, khi = 0;
    if (a.seg) {
        seg_range(a, b, k0, klo, khi); /* over kTile tokens: for KT < kTile a superset, so a skip stays safe */
        for (int i = 0; i < 2; i++) skey[i] = key[i] < a.seq ? seg_at(a, b * a.seq + key[i]) : 0;
    }
    auto q_tile = [&](int it) { return (int64_t)(qt0 + it % span) * kTile; };
    auto next_visible = [&](int it) {
        while (it < n_items && !seg_meets(a, b, q_tile(it), klo, khi)) it++;
        return it;
    };
    auto issue = [&](int it, int buf) {
        int h = hk * group + it / span;
        int64_t q0 = q_tile(it);
        load_tile<T, D, kTile, NT>(qs + buf * kTile * LD, (const T *)a.q, b, q0, a.seq, a.Hq, h);
        load_tile<T, D, kTile, NT>(dos + buf * kTile * LD, (const T *)a.dout, b, q0, a.seq, a.Hq, h);
        if (threadIdx.x < kTile) {
            int64_t t = q0 + threadIdx.x, at = ((int64_t)b * a.Hq + h) * a.seq + t;
            bool in = t < a.seq;
            lse_s[buf * kTile + threadIdx.x] = in ? a.lse[at] * kLog2e : 0.0f;
            dl_s[buf * kTile + threadIdx.x] = in ? a.delta[at] : 0.0f;
            segq[buf * kTile + threadIdx.x] = a.seg && in ? seg_at(a, b * a.seq + t) : 0;
        }
    };

    int cur = next_visible(0);
    if (cur < n_items) issue(cur, 0);
    cp_async_commit();
    float dk[ND][4], dv[ND][4];
#pragma unroll
    for (int dn = 0; dn < ND; dn++)
#pragma unroll
        for (int e = 0; e < 4; e++) dk[dn][e] = dv[dn][e] = 0.0f;
    const LdsmLanes ln(lane);
    for (int buf = 0; cur < n_items; buf ^= 1) {
        int nxt = next_visible(cur + 1);
        if (nxt < n_items) issue(nxt, buf ^ 1);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const T *qb = qs + buf * kTile * LD, *db = dos + buf * kTile * LD;
        const float *lb = lse_s + buf * kTile, *dlb = dl_s + buf * kTile;
        const long long *sq = segq + buf * kTile;
        const int64_t q0 = q_tile(cur);
        const bool mask = a.seg || q0 < k0 + KT || q0 + kTile > a.seq;
#pragma unroll
        for (int half = 0; half < 2 / G; half++) {
            const int c0 = (half * G + grp) * 32; /* this pass's first query of the tile */
            float s[4][4], dp[4][4];  /* keys g, g + 8 of the warp against queries c0 + 8n + c2 (+1) */
#pragma unroll
            for (int n = 0; n < 4; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) s[n][e] = dp[n][e] = 0.0f;
#pragma unroll 2 /* fully unrolled, the fragment loads hoist and dK, dV spill */
            for (int kk = 0; kk < KD; kk++) {
                uint32_t ka[4], va[4];
                ldsm_x4(ka, ks + (warp * 16 + ln.a_row) * LD + kk * 16 + ln.a_col);
                ldsm_x4(va, vs + (warp * 16 + ln.a_row) * LD + kk * 16 + ln.a_col);
#pragma unroll
                for (int n = 0; n < 4; n += 2) {
                    uint32_t qf[4], df[4];
                    ldsm_x4(qf, qb + (c0 + n * 8 + ln.b_row) * LD + kk * 16 + ln.b_col);
                    ldsm_x4(df, db + (c0 + n * 8 + ln.b_row) * LD + kk * 16 + ln.b_col);
                    M::run(s[n], ka, qf[0], qf[1]);
                    M::run(s[n + 1], ka, qf[2], qf[3]);
                    M::run(dp[n], va, df[0], df[1]);
                    M::run(dp[n + 1], va, df[2], df[3]);
                }
            }
#pragma unroll
            for (int n = 0; n < 4; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int i = e >> 1, j = c0 + n * 8 + c2 + (e & 1);
                    int64_t t = q0 + j;
                    float p = exp2f(s[n][e] * a.scale_log2 - lb[j]);
                    if (mask && (t < key[i] || t >= a.seq || (a.seg && sq[j] != skey[i]))) p = 0.0f;
                    s[n][e] = p;
                    dp[n][e] = p * (dp[n][e] - dlb[j]); /* dS^T / scale */
                }
#pragma unroll
            for (int kk = 0; kk < 2; kk++) {
                uint32_t pa[4] = {M::pack(s[2 * kk][0], s[2 * kk][1]), M::pack(s[2 * kk][2], s[2 * kk][3]),
                                  M::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                  M::pack(s[2 * kk + 1][2], s[2 * kk + 1][3])};
                uint32_t sa[4] = {M::pack(dp[2 * kk][0], dp[2 * kk][1]), M::pack(dp[2 * kk][2], dp[2 * kk][3]),
                                  M::pack(dp[2 * kk + 1][0], dp[2 * kk + 1][1]),
                                  M::pack(dp[2 * kk + 1][2], dp[2 * kk + 1][3])};
                const int r = c0 + kk * 16 + ln.a_row;
#pragma unroll
                for (int dn = 0; dn < ND; dn += 2) {
                    uint32_t x[4], y[4];
                    ldsm_x4_trans(x, db + r * LD + dn * 8 + ln.a_col);
                    M::run(dv[dn], pa, x[0], x[1]);
                    M::run(dv[dn + 1], pa, x[2], x[3]);
                    ldsm_x4_trans(y, qb + r * LD + dn * 8 + ln.a_col);
                    M::run(dk[dn], sa, y[0], y[1]);
                    M::run(dk[dn + 1], sa, y[2], y[3]);
                }
            }
        }
        __syncthreads();
        cur = nxt;
    }
    cp_async_wait<0>();
    __syncthreads(); /* with no visible query tile the loop's barriers did not run */
    if constexpr (G == 2) {
        /* group 1's sums (over the second halves of the query tiles) join group 0's through the
         * freed query buffers, in fragment order: group 0 + group 1, a fixed order */
        constexpr int GT = 32 * SW; /* threads a group */
        static_assert(2 * ND * 4 * GT * sizeof(float) <= 4 * kTile * LD * sizeof(T), "room to reduce");
        float *red = (float *)qs; /* (2 ND 4, GT) */
        const int tid = threadIdx.x % GT;
        if (grp == 1) {
#pragma unroll
            for (int dn = 0; dn < ND; dn++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    red[(dn * 4 + e) * GT + tid] = dk[dn][e];
                    red[((ND + dn) * 4 + e) * GT + tid] = dv[dn][e];
                }
        }
        __syncthreads();
        if (grp == 1) return;
#pragma unroll
        for (int dn = 0; dn < ND; dn++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                dk[dn][e] += red[(dn * 4 + e) * GT + tid];
                dv[dn][e] += red[((ND + dn) * 4 + e) * GT + tid];
            }
    }
    T *kout = ks + warp * 16 * LD, *vout = vs + warp * 16 * LD;
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int dn = 0; dn < ND; dn++) {
            int at = (g + 8 * i) * LD + dn * 8 + c2;
            *reinterpret_cast<uint32_t *>(kout + at) = M::pack(dk[dn][2 * i] * a.scale, dk[dn][2 * i + 1] * a.scale);
            *reinterpret_cast<uint32_t *>(vout + at) = M::pack(dv[dn][2 * i], dv[dn][2 * i + 1]);
        }
    __syncwarp();
    if (a.dk) store_rows<T, D>((T *)a.dk, kout, b, k0 + warp * 16, a.seq, a.Hkv, hk);
    if (a.dv) store_rows<T, D>((T *)a.dv, vout, b, k0 + warp * 16, a.seq, a.Hkv, hk);
}

/* ---- launchers ---- */

template <typename K>
an_status launch(an_ctx *ctx, K kernel, dim3 grid, size_t bytes, const Args &a, const char *what,
                 int threads = kThreads) {
    AN_CUDA_STATE(ctx, s);
    AN_CUDA_CHECK(ctx, cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
    kernel<<<grid, threads, bytes, s->stream>>>(a);
    AN_CUDA_LAUNCH_CHECK(ctx, what);
    return AN_OK;
}

/* (heads, batch rows, tiles of `rows`): the tile index varies slowest, so the blocks with the most
 * work (the kernel maps blockIdx.z to them) all launch first. */
dim3 grid_of(const an_attention_shape *sh, int64_t heads, int rows) {
    return dim3((unsigned)heads, (unsigned)sh->batch, (unsigned)((sh->seq + rows - 1) / rows));
}

template <typename T, int D> an_status forward_td(an_ctx *ctx, const an_attention_shape *sh, const Args &a) {
    dim3 grid = grid_of(sh, sh->q_heads, kFwdRows);
    /* Key tiles of 32 at head_dim 128 keep the kernel within 255 registers (64 spill a little);
     * both measured the same (H200, B 8 T 1024 Hq 12 D 128: 0.163 vs 0.165 ms). */
    constexpr int KT = D > 64 ? 32 : 64;
    return launch(ctx, forward_kernel<T, D, KT>, grid, FwdSmem<T, D, KT>::bytes, a, "attention_mma forward_kernel");
}

template <typename T, int D> an_status delta_td(an_ctx *ctx, const an_attention_shape *sh, const Args &a) {
    AN_CUDA_STATE(ctx, s);
    int64_t rows = sh->batch * sh->seq * sh->q_heads,
            per_block = 8 * (32 / (D / an_vec_width<T>::value)) * DELTA_ITER; /* 8 warps */
    AN_CHECK(ctx, an_aligned16(a.out) && an_aligned16(a.dout), AN_ERR_INTERNAL,
             "attention_mma delta: out and grad_out must be 16-byte aligned (the path's rule)");
    delta_kernel<T, D><<<(unsigned)((rows + per_block - 1) / per_block), 256, 0, s->stream>>>(a, rows);
    AN_CUDA_LAUNCH_CHECK(ctx, "attention_mma delta_kernel");
    return AN_OK;
}

template <typename T, int D> an_status backward_td(an_ctx *ctx, const an_attention_shape *sh, const Args &a) {
    AN_TRY((delta_td<T, D>(ctx, sh, a)));
    if (a.dq)
        AN_TRY(launch(ctx, dq_kernel<T, D>, grid_of(sh, sh->q_heads, kTile), BwdSmem<T, D>::dq_bytes, a,
                      "attention_mma dq_kernel"));
    if (a.dk || a.dv)
        AN_TRY(launch(ctx, dkv_kernel<T, D, 2, 32>, grid_of(sh, sh->kv_heads, 32),
                      BwdSmem<T, D>::template dkv_bytes<32>, a, "attention_mma dkv_kernel", 4 * 32));
    return AN_OK;
}

Args make_args(const an_attention_shape *sh, const void *q, const void *k, const void *v, const void *segments,
               bool seg_wide) {
    Args a = {};
    a.q = q, a.k = k, a.v = v;
    a.seg = segments, a.seg_wide = seg_wide;
    a.seq = sh->seq, a.Hq = (int)sh->q_heads, a.Hkv = (int)sh->kv_heads;
    a.scale = (float)sh->scale;
    a.scale_log2 = (float)(sh->scale * 1.4426950408889634);
    return a;
}

} // namespace

bool an_attention_mma_takes(an_dtype dtype, int64_t head_dim) {
    return (dtype == AN_BF16 || dtype == AN_F16) && (head_dim == 64 || head_dim == 128);
}

bool an_attention_mma_aligned(const void *const *ptrs, int n) {
    for (int i = 0; i < n; i++)
        if ((uintptr_t)ptrs[i] % 16 != 0) return false;
    return true;
}

/* The launchers' guard: attention.cu routes only shapes an_attention_mma_takes accepts. */
static an_status check_takes(an_ctx *ctx, const an_attention_shape *sh, an_dtype dtype) {
    AN_CHECK(ctx, an_attention_mma_takes(dtype, sh->head_dim), AN_ERR_INTERNAL,
             "attention_mma: %s head_dim %lld is not a tensor-core shape", an_dtype_name(dtype),
             (long long)sh->head_dim);
    return AN_OK;
}

#define AN_MMA_DISPATCH(ctx, dtype, D, fn, ...)                                                          \
    do {                                                                                             \
        if ((dtype) == AN_BF16) return (D) == 64 ? fn<__nv_bfloat16, 64>(__VA_ARGS__) : fn<__nv_bfloat16, 128>(__VA_ARGS__); \
        if ((dtype) == AN_F16) return (D) == 64 ? fn<__half, 64>(__VA_ARGS__) : fn<__half, 128>(__VA_ARGS__); \
        return an_error_set((ctx), AN_ERR_INTERNAL, __FILE__, __LINE__, "attention_mma: no kernel for %s", \
                            an_dtype_name(dtype));                                                   \
    } while (0)

an_status an_attention_mma_forward(an_ctx *ctx, const an_attention_shape *sh, an_dtype dtype, const void *q,
                                   const void *k, const void *v, const void *segments, bool seg_wide, void *out,
                                   float *lse) {
    AN_TRY(check_takes(ctx, sh, dtype));
    if (sh->batch == 0 || sh->seq == 0) return AN_OK;
    Args a = make_args(sh, q, k, v, segments, seg_wide);
    a.o = out, a.lse = lse;
    AN_MMA_DISPATCH(ctx, dtype, sh->head_dim, forward_td, ctx, sh, a);
}

an_status an_attention_mma_delta(an_ctx *ctx, const an_attention_shape *sh, an_dtype dtype, const void *out,
                                 const void *grad_out, float *delta) {
    AN_TRY(check_takes(ctx, sh, dtype));
    if (sh->batch == 0 || sh->seq == 0) return AN_OK;
    Args a = make_args(sh, nullptr, nullptr, nullptr, nullptr, false);
    a.out = out, a.dout = grad_out, a.delta = delta;
    AN_MMA_DISPATCH(ctx, dtype, sh->head_dim, delta_td, ctx, sh, a);
}

an_status an_attention_mma_backward(an_ctx *ctx, const an_attention_shape *sh, an_dtype dtype, const void *q,
                                    const void *k, const void *v, const void *segments, bool seg_wide,
                                    const void *out, const float *lse, const void *grad_out, float *delta,
                                    void *grad_q, void *grad_k, void *grad_v) {
    AN_TRY(check_takes(ctx, sh, dtype));
    if (sh->batch == 0 || sh->seq == 0 || (!grad_q && !grad_k && !grad_v)) return AN_OK;
    Args a = make_args(sh, q, k, v, segments, seg_wide);
    a.out = out, a.dout = grad_out, a.lse = (float *)lse, a.delta = delta;
    a.dq = grad_q, a.dk = grad_k, a.dv = grad_v;
    AN_MMA_DISPATCH(ctx, dtype, sh->head_dim, backward_td, ctx, sh, a);
}
