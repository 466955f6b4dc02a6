/* decode_attention.cu — decode attention over a KV cache for grouped-query models, bf16/f16 at
 * head_dim 128: one block per (query token, kv head, split of the keys) computes every query head
 * of the kv head's group, so each K and V row is read once for the group (the per-head kernel of
 * attention.cu reads it once per query head: six times for the 1.5B model).
 *
 * Layout: a block is 64 threads (two warps) and walks its split 64 keys at a time on tensor cores.
 * The chunk's K and V rows go to shared memory (cp.async; rows past the live keys zero-filled;
 * 16-byte chunks XOR-swizzled by row, so ldmatrix reads are conflict-free); warp w takes keys
 * 32 w .. 32 w + 31. Scores S (16 x 32: the group's G <= 8 query heads in rows 0..7, rows 8..15
 * zero) = Q K^T with mma.sync m16n8k16 (q as A fragments straight from global memory, K rows as B
 * through ldmatrix), scaled in fp32, masked past the visible keys; the warp's online softmax (a
 * row's maximum over its four lanes by shuffles; each lane keeps its share of the sum); P rounded
 * to the dtype, as flash attention does, times V (ldmatrix.trans) into the warp's O (16 x 128,
 * fp32). The two warps merge in warp order through shared memory. With several splits a second
 * kernel merges them from an fp32 buffer of (o, max, sum) per split, reading only the splits that
 * hold visible keys. Every order is fixed: a launch of one shape repeats bit for bit.
 * Measured on an H100 against the thread-per-key kernel this replaced (each thread forming a key's
 * G dot products from registers, ~3.5 us a 64-key chunk): attention over 256 keys at batch 32
 * 14.5 -> 7.6 us a layer in a graph; decode steps at batch 1 / 2 / 8 / 32 1.584 / 1.852 / 2.054 /
 * 2.309 -> 1.499 / 1.739 / 2.003 / 2.199 ms (docs/performance.md).
 * Numerics: fp32 scores and sums; the softmax scale multiplies each fp32 score (q is used as
 * stored); P meets V in the dtype. A row of the batch whose cache row is out of range (never: the
 * op validates rows) gets zeros, as in the per-head kernel. */
#include "kernels/decode_attention.cuh"

#include "kernels/block_reduce.cuh" /* an_lanes_max, an_lanes_sum */
#include "kernels/mma.cuh"          /* Mma, ldsm_x4_at, ldsm_x4_trans_at, cp_async16_at */
#include "kernels/pdl.cuh" /* an_launch_pdl, an_pdl_wait: launched like the rest of the decode step */
#include "kernels/vec.cuh" /* an_aligned16 */

#include <math.h>
#include <stdint.h>

namespace {

constexpr int kD = 128;      /* the head dim this kernel takes */
constexpr int kThreads = 64; /* keys per chunk: 32 a warp */
constexpr int kChunk = 64;   /* keys per split while the splits stay at most kMaxSplits */
constexpr int kMaxSplits = 64;
static_assert(kMaxSplits <= kD, "the merge kernel gives each split a thread");
constexpr int kMinChunk = 16;      /* the shortest split */
constexpr int kTargetBlocks = 264; /* two blocks an SM of an H100/H200 */

template <typename T> struct GqaArgs {
    const T *q;             /* (B', T, Hq, D) */
    const T *k, *v;         /* (Bc, S, Hkv, D) */
    T *out;                 /* (B', T, Hq, D) */
    float *partial;         /* (B' T, Hq, nsplit, D + 2): each split's o, max, sum; NULL when nsplit is 1 */
    const int64_t *rows;    /* (B'): cache row of each batch entry */
    const int64_t *lengths; /* (Bc): keys each cache row held before these T tokens */
    int64_t seq, cache_len, cache_rows; /* T, S, Bc */
    int64_t chunk;          /* keys per split: kMinChunk to kThreads, or a multiple of kThreads */
    int Hq, Hkv, nsplit;
    float scale;
};

/* Block (row, kv head, split): the G query heads of the kv head over the split's keys (the
 * layout is the file header's). */
template <typename T> __global__ void __launch_bounds__(kThreads) gqa_split_kernel(GqaArgs<T> a, int G) {
    static_assert(kThreads == 64 && kD == 128, "two warps of 32 keys; 16 chunks of 16 bytes a row");
    __shared__ __align__(128) T k_s[kThreads * kD], v_s[kThreads * kD]; /* (keys, D), swizzled */
    __shared__ float mo_s[8][kD], m_s[8], l_s[8];                       /* warp 1's partials */
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, gr = lane / 4, tq = lane % 4;
    const int64_t row = blockIdx.x, b = row / a.seq, t = row % a.seq; /* row = b T + t */
    const int kvh = blockIdx.y, split = blockIdx.z;
    const int64_t cache_row = a.rows[b]; /* the step's tables before the wait (pdl.cuh's rule) */
    const bool valid_row = cache_row >= 0 && cache_row < a.cache_rows;
    const int64_t held_before = valid_row ? a.lengths[cache_row] : 0;
    an_pdl_wait(); /* q and the cache's new keys come from the kernels before */
    an_pdl_trigger();
    int64_t visible = valid_row ? held_before + t + 1 : 0;
    if (visible > a.cache_len) visible = a.cache_len;
    const int64_t k_begin = (int64_t)split * a.chunk;
    const int64_t k_end = k_begin + a.chunk < visible ? k_begin + a.chunk : visible;
    const int64_t key_stride = (int64_t)a.Hkv * kD;
    const int64_t cache_base = (valid_row ? cache_row : 0) * a.cache_len * key_stride + (int64_t)kvh * kD;
    const int64_t qh0 = row * a.Hq + (int64_t)kvh * G; /* the group's first (row, query head) */

    /* Q as A fragments (rows 8..15 and heads past G zero), all 8 k16 steps of D in registers */
    uint32_t qa[kD / 16][4];
    const T *qrow = a.q + (qh0 + gr) * kD;
#pragma unroll
    for (int kk = 0; kk < kD / 16; kk++) {
        qa[kk][0] = gr < G ? *reinterpret_cast<const uint32_t *>(qrow + 16 * kk + 2 * tq) : 0u;
        qa[kk][2] = gr < G ? *reinterpret_cast<const uint32_t *>(qrow + 16 * kk + 8 + 2 * tq) : 0u;
        qa[kk][1] = qa[kk][3] = 0u;
    }
    const uint32_t ks = smem_addr(k_s), vs = smem_addr(v_s);
    auto swz = [](int r, int c) { return (uint32_t)(r * (kD * 2) + ((c ^ (r & 7)) << 4)); }; /* 16 chunks a row */
    float m = -INFINITY, l = 0.0f; /* row gr of this warp: running max, this lane's share of the sum */
    float o[kD / 8][4];
#pragma unroll
    for (int j = 0; j < kD / 8; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;

    for (int64_t c = k_begin; c < k_end; c += kThreads) { /* block-uniform */
        const int64_t live = k_end - c < kThreads ? k_end - c : kThreads;
        for (int i = tid; i < kThreads * (kD / 8); i += kThreads) {
            const int j = i / (kD / 8), part = i % (kD / 8);
            const int64_t off = cache_base + (c + (j < live ? j : 0)) * key_stride + part * 8;
            cp_async16_at(ks + swz(j, part), a.k + off, j < live);
            cp_async16_at(vs + swz(j, part), a.v + off, j < live);
        }
        cp_async_commit();
        cp_async_wait<0>();
        __syncthreads();
        const int kb = 32 * warp; /* this warp's keys in the chunk */
        float s[4][4];
#pragma unroll
        for (int j = 0; j < 4; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < kD / 16; kk++)
#pragma unroll
            for (int p = 0; p < 2; p++) { /* keys kb + 16 p .. + 15 as two B blocks of 8 */
                uint32_t bf[4];
                ldsm_x4_at(bf, ks + swz(kb + 16 * p + lane % 8 + 8 * (lane / 16), 2 * kk + (lane / 8) % 2));
                Mma<T>::run(s[2 * p], qa[kk], bf[0], bf[1]);
                Mma<T>::run(s[2 * p + 1], qa[kk], bf[2], bf[3]);
            }
        /* row gr's scores at keys kb + 8 j + 2 tq (+1): scaled, masked, online softmax */
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const bool in = kb + 8 * j + 2 * tq + e < live;
                s[j][e] = in ? s[j][e] * a.scale : -INFINITY;
                mx = fmaxf(mx, s[j][e]);
            }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(m, mx);
        const float alpha = m == -INFINITY ? 0.0f : expf(m - m_new);
        uint32_t pa[2][4];
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const float p0 = s[j][0] == -INFINITY ? 0.0f : expf(s[j][0] - m_new);
            const float p1 = s[j][1] == -INFINITY ? 0.0f : expf(s[j][1] - m_new);
            l = l * (j == 0 ? alpha : 1.0f) + p0 + p1;
            pa[j / 2][(j % 2) * 2] = Mma<T>::pack(p0, p1); /* A: row gr, keys 16 (j/2) + 8 (j%2) + 2 tq */
            pa[j / 2][(j % 2) * 2 + 1] = 0u;               /* rows 8..15 */
        }
#pragma unroll
        for (int j = 0; j < kD / 8; j++) o[j][0] *= alpha, o[j][1] *= alpha;
        m = m_new;
#pragma unroll
        for (int kk = 0; kk < 2; kk++)      /* keys kb + 16 kk .. + 15 */
#pragma unroll
            for (int np = 0; np < kD / 16; np++) { /* head dims 16 np .. + 15 as two B blocks of 8 */
                uint32_t bf[4];
                ldsm_x4_trans_at(bf, vs + swz(kb + 16 * kk + lane % 16, 2 * np + lane / 16));
                Mma<T>::run(o[2 * np], pa[kk], bf[0], bf[1]);
                Mma<T>::run(o[2 * np + 1], pa[kk], bf[2], bf[3]);
            }
        __syncthreads(); /* the chunk's rows are rewritten next */
    }
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    if (warp == 1) {
#pragma unroll
        for (int j = 0; j < kD / 8; j++) mo_s[gr][8 * j + 2 * tq] = o[j][0], mo_s[gr][8 * j + 2 * tq + 1] = o[j][1];
        if (tq == 0) m_s[gr] = m, l_s[gr] = l;
    }
    __syncthreads();
    if (warp == 1 || gr >= G) return;
    const float m1 = m_s[gr], mt = fmaxf(m, m1);
    const float f0 = m == -INFINITY ? 0.0f : expf(m - mt), f1 = m1 == -INFINITY ? 0.0f : expf(m1 - mt);
    const float lt = l * f0 + l_s[gr] * f1;
    const int64_t qh = qh0 + gr;
    if (a.nsplit == 1) {
        const float inv = lt > 0.0f ? 1.0f / lt : 0.0f;
        T *op = a.out + qh * kD;
#pragma unroll
        for (int j = 0; j < kD / 8; j++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int d = 8 * j + 2 * tq + e;
                op[d] = an_store<T>((o[j][e] * f0 + mo_s[gr][d] * f1) * inv);
            }
    } else {
        float *p = a.partial + (qh * a.nsplit + split) * (kD + 2);
#pragma unroll
        for (int j = 0; j < kD / 8; j++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int d = 8 * j + 2 * tq + e;
                p[d] = o[j][e] * f0 + mo_s[gr][d] * f1;
            }
        if (tq == 0) p[kD] = mt, p[kD + 1] = lt;
    }
}

/* Block (row, query head): the splits' partials merged in one parallel pass: thread s reads split
 * s's max (at most kD splits; a split past the visible keys holds -inf and weighs 0), the block
 * forms the overall max and each split's weight, then thread d adds the weighted o[d] of the
 * splits that saw keys, in split order. Thread d loads every split's o[d] together with the maxes
 * (no chain through memory, and no read of the row table): batch-1 decode 1.808 -> 1.777 ms/step
 * on an H100 against loading them after the weights. Sums over splits: lanes by butterfly, warps
 * in order. */
template <typename T> __global__ void __launch_bounds__(kD) gqa_merge_kernel(GqaArgs<T> a) {
    __shared__ float f_s[kD], max_s[kD / 32], sum_s[kD / 32];
    an_pdl_wait();
    an_pdl_trigger();
    const int64_t qh = (int64_t)blockIdx.x * a.Hq + blockIdx.y;
    const int d = threadIdx.x, lane = d % 32, warp = d / 32, used = a.nsplit;
    const float *p = a.partial + qh * a.nsplit * (kD + 2);
    float ov[kMaxSplits]; /* every split's o[d], loaded with the maxes: one memory latency, not three */
#pragma unroll
    for (int sp = 0; sp < kMaxSplits; sp++) ov[sp] = sp < used ? p[sp * (kD + 2) + d] : 0.0f;
    const float ms = d < used ? p[d * (kD + 2) + kD] : -INFINITY;
    float wm = an_lanes_max<32>(ms);
    if (lane == 0) max_s[warp] = wm;
    __syncthreads();
    float mx = max_s[0];
#pragma unroll
    for (int w = 1; w < kD / 32; w++) mx = fmaxf(mx, max_s[w]);
    const float f = ms == -INFINITY ? 0.0f : expf(ms - mx);
    f_s[d] = f;
    const float wl = an_lanes_sum<32>(d < used ? p[d * (kD + 2) + kD + 1] * f : 0.0f);
    if (lane == 0) sum_s[warp] = wl;
    __syncthreads();
    float L = sum_s[0], O = 0.0f;
#pragma unroll
    for (int w = 1; w < kD / 32; w++) L += sum_s[w];
#pragma unroll
    for (int sp = 0; sp < kMaxSplits; sp++)
        if (sp < used && f_s[sp] != 0.0f) O = fmaf(ov[sp], f_s[sp], O); /* block-uniform branch */
    a.out[qh * kD + d] = an_store<T>(L > 0.0f ? O / L : 0.0f);
}

template <typename T> an_status launch(an_ctx *ctx, an_cuda_state *s, const GqaArgs<T> &a, int group, int64_t rows) {
    dim3 grid((unsigned)rows, (unsigned)a.Hkv, (unsigned)a.nsplit);
    cudaError_t err = an_launch_pdl(s, gqa_split_kernel<T>, grid, dim3(kThreads), a, group);
    AN_CHECK(ctx, err == cudaSuccess, AN_ERR_INTERNAL, "launch of gqa_split_kernel failed: %s",
             cudaGetErrorString(err));
    AN_CUDA_LAUNCH_CHECK(ctx, "gqa_split_kernel");
    if (a.nsplit == 1) return AN_OK;
    err = an_launch_pdl(s, gqa_merge_kernel<T>, dim3((unsigned)rows, (unsigned)a.Hq), dim3(kD), a);
    AN_CHECK(ctx, err == cudaSuccess, AN_ERR_INTERNAL, "launch of gqa_merge_kernel failed: %s",
             cudaGetErrorString(err));
    AN_CUDA_LAUNCH_CHECK(ctx, "gqa_merge_kernel");
    return AN_OK;
}

} // namespace

an_status an_decode_attention_grouped(an_ctx *ctx, const an_attention_shape *sh, int64_t cache_len, int64_t cache_rows,
                                      an_dtype dtype, const void *q, const void *k_cache, const void *v_cache,
                                      const int64_t *rows, const int64_t *lengths, void *out, bool *taken) {
    AN_CUDA_STATE(ctx, s);
    *taken = false;
    int64_t group = sh->kv_heads > 0 ? sh->q_heads / sh->kv_heads : 0, n = sh->batch * sh->seq;
    if ((dtype != AN_BF16 && dtype != AN_F16) || sh->head_dim != kD || group < 2 || group > 8 ||
        sh->q_heads != group * sh->kv_heads || !an_aligned16(q) || !an_aligned16(k_cache) || !an_aligned16(v_cache) ||
        !an_aligned16(out) || n < 1 || cache_len < 1 || sh->kv_heads > 65535 || sh->q_heads > 65535 || n > INT32_MAX)
        return AN_OK;
    *taken = true;
    /* Keys a split: kChunk up to kMaxSplits splits, longer splits (whole chunks of kThreads) past
     * that; at small batches shorter ones (down to kMinChunk) while the grid has fewer than
     * kTargetBlocks blocks, so that more SMs share the keys (batch 1: 48 blocks instead of 12). */
    int64_t chunk = (cache_len + kMaxSplits - 1) / kMaxSplits;
    if (chunk > kChunk) {
        chunk = (chunk + kThreads - 1) / kThreads * kThreads;
    } else {
        chunk = kChunk;
        while (chunk > kMinChunk && n * sh->kv_heads * ((cache_len + chunk - 1) / chunk) < kTargetBlocks &&
               (cache_len + chunk / 2 - 1) / (chunk / 2) <= kMaxSplits)
            chunk /= 2;
    }
    const int64_t nsplit = (cache_len + chunk - 1) / chunk; /* <= kMaxSplits <= kD: the merge's threads */
    float *partial = nullptr;
    if (nsplit > 1) {
        char why[256];
        size_t bytes = (size_t)(n * sh->q_heads * nsplit * (kD + 2)) * sizeof(float);
        partial = (float *)an_cuda_malloc(s, bytes, why, sizeof why);
        AN_CHECK(ctx, partial != nullptr, AN_ERR_INTERNAL, "attention_cached: %s", why);
    }
    an_status st = AN_OK;
    if (dtype == AN_BF16) {
        GqaArgs<__nv_bfloat16> a = {(const __nv_bfloat16 *)q, (const __nv_bfloat16 *)k_cache,
                                    (const __nv_bfloat16 *)v_cache, (__nv_bfloat16 *)out, partial, rows, lengths,
                                    sh->seq, cache_len, cache_rows, chunk, (int)sh->q_heads, (int)sh->kv_heads,
                                    (int)nsplit, (float)sh->scale};
        st = launch(ctx, s, a, (int)group, n);
    } else {
        GqaArgs<__half> a = {(const __half *)q, (const __half *)k_cache, (const __half *)v_cache, (__half *)out,
                             partial, rows, lengths, sh->seq, cache_len, cache_rows, chunk, (int)sh->q_heads,
                             (int)sh->kv_heads, (int)nsplit, (float)sh->scale};
        st = launch(ctx, s, a, (int)group, n);
    }
    /* stream order: a later allocation of this block runs its kernels after these */
    if (partial) an_cuda_free(s, partial);
    return st;
}
