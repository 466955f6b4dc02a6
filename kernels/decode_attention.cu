/* decode_attention.cu — decode attention over a KV cache for grouped-query models, bf16/f16 at
 * head_dim 128: one block per (query token, kv head, split of the keys) computes every query head
 * of the kv head's group, so each K and V row is read once for the group (the per-head kernel of
 * attention.cu reads it once per query head: six times for the 1.5B model).
 *
 * Layout: a block is 64 threads and walks its split 64 keys at a time. Scores: thread i takes key
 * i of the chunk and forms the G dot products alone (its K row in 16 16-byte loads, the scaled q
 * of the group broadcast from shared memory), so no shuffles per key. Values: thread i owns head
 * dims 2i and 2i + 1 and adds p * V over the chunk's keys from shared memory, where the block
 * copied the chunk's V rows asynchronously (cp.async) before the K loads: both are in flight
 * together, so a chunk costs one memory latency. Per chunk the block reduces each head's max and
 * sum (two warps: butterfly, then warp 0 before warp 1) and rescales the running output (online
 * softmax). With several splits a second kernel merges them from an fp32 buffer of (o, max, sum)
 * per split, reading only the splits that hold visible keys. Small grids (latency-bound: a few
 * rows) issue the first chunk's loads before the row's length arrives, every key the cache holds;
 * large ones (bandwidth-bound) wait for the length and read visible keys only. Every order is
 * fixed: a launch of one shape repeats bit for bit.
 * Numerics: fp32; q is scaled by the softmax scale once on load (the per-head kernel scales each
 * dot product instead: last-bit differences). A row of the batch whose cache row is out of range
 * (never: the op validates rows) gets zeros, as in the per-head kernel. */
#include "kernels/decode_attention.cuh"

#include "kernels/block_reduce.cuh" /* an_lanes_max, an_lanes_sum */
#include "kernels/pdl.cuh" /* an_launch_pdl, an_pdl_wait: launched like the rest of the decode step */
#include "kernels/vec.cuh" /* an_unpack16 */

#include <math.h>
#include <stdint.h>

namespace {

constexpr int kD = 128;      /* the head dim this kernel takes */
constexpr int kThreads = 64; /* keys per chunk: one a thread; two head dims a thread */
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
    int speculate;          /* load the first chunk before the row's length arrives (small grids) */
    float scale;
};

/* Two bf16/f16 values of a 32-bit word, widened. */
template <typename T> __device__ __forceinline__ void unpack2(uint32_t w, float *f) {
    const T *e = reinterpret_cast<const T *>(&w);
    f[0] = an_load(e[0]), f[1] = an_load(e[1]);
}

/* 16 bytes global -> shared without registers (cp.async); the group is waited for by copy_async_wait. */
template <typename T> __device__ __forceinline__ void copy_async16(T *smem, const T *gmem) {
    const unsigned dst = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(gmem) : "memory");
}
__device__ __forceinline__ void copy_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
__device__ __forceinline__ void copy_async_wait() { asm volatile("cp.async.wait_group 0;" ::: "memory"); }

/* Block (row, kv head g, split): the G query heads g G .. g G + G - 1 over the split's keys. */
template <typename T, int G> __global__ void __launch_bounds__(kThreads) gqa_split_kernel(GqaArgs<T> a) {
    __shared__ __align__(16) float q_s[G][kD]; /* the group's q, scaled */
    __shared__ float p_s[G][kThreads];          /* the chunk's probabilities */
    __shared__ float max_s[2][G], sum_s[2][G];  /* per-warp partials */
    __shared__ __align__(16) T v_s[kThreads][kD]; /* the chunk's V rows */
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int64_t row = blockIdx.x, b = row / a.seq, t = row % a.seq; /* row = b T + t */
    const int g = blockIdx.y, split = blockIdx.z;
    /* the step's tables before the wait (pdl.cuh's rule): the cache row and its length arrive
     * while the kernel before finishes */
    const int64_t cache_row = a.rows[b];
    const bool valid_row = cache_row >= 0 && cache_row < a.cache_rows;
    const int64_t held_before = valid_row ? a.lengths[cache_row] : 0;
    an_pdl_wait(); /* q and the cache's new keys come from the kernels before */
    an_pdl_trigger();
    const T *qg = a.q + (row * a.Hq + (int64_t)g * G) * kD; /* (G, D) */
    for (int i = tid; i < G * kD; i += kThreads) q_s[i / kD][i % kD] = an_load(qg[i]) * a.scale;
    const int64_t k_begin = (int64_t)split * a.chunk;
    const int64_t cap_end = k_begin + a.chunk < a.cache_len ? k_begin + a.chunk : a.cache_len; /* keys the cache holds */
    const int64_t key_stride = (int64_t)a.Hkv * kD;
    const int64_t cache_base = (valid_row ? cache_row : 0) * a.cache_len * key_stride + (int64_t)g * kD;
    uint4 kr[kD / 8]; /* this thread's key of the chunk */
    /* The chunk from key c: K rows into registers, V rows into shared memory (16-byte asynchronous
     * copies), the keys before `end` (any past the visible ones are masked later). */
    auto load_chunk = [&](int64_t c, int64_t end) {
        const int64_t held = end - c < kThreads ? end - c : kThreads;
        for (int i = tid; i < held * (kD / 8); i += kThreads) {
            const int j = i / (kD / 8), part = i % (kD / 8);
            copy_async16(&v_s[j][part * 8], a.v + cache_base + (c + j) * key_stride + part * 8);
        }
        copy_async_commit();
        const bool held_key = tid < held;
        const uint4 *kp = reinterpret_cast<const uint4 *>(a.k + cache_base + (held_key ? c + tid : c) * key_stride);
#pragma unroll
        for (int i = 0; i < kD / 8; i++) kr[i] = held_key ? __ldg(kp + i) : make_uint4(0, 0, 0, 0);
    };
    /* small grids: the first chunk's loads go out before the row's length arrives (one memory
     * latency fewer); large ones read visible keys only (bandwidth is what they spend) */
    if (a.speculate && k_begin < cap_end) load_chunk(k_begin, cap_end);
    int64_t visible = valid_row ? held_before + t + 1 : 0;
    if (visible > a.cache_len) visible = a.cache_len;
    const int64_t k_end = k_begin + a.chunk < visible ? k_begin + a.chunk : visible;
    if (!a.speculate && k_begin < k_end) load_chunk(k_begin, k_end);
    __syncthreads(); /* q_s */

    float m[G], l[G], o[G][2];
#pragma unroll
    for (int h = 0; h < G; h++) m[h] = -INFINITY, l[h] = 0.0f, o[h][0] = o[h][1] = 0.0f;
    for (int64_t c = k_begin; c < k_end; c += kThreads) { /* block-uniform */
        if (c != k_begin) load_chunk(c, k_end);
        const int64_t key = c + tid;
        const bool live = key < k_end;
        const int n = k_end - c < kThreads ? (int)(k_end - c) : kThreads; /* live keys of the chunk */
        float s[G];
#pragma unroll
        for (int h = 0; h < G; h++) s[h] = 0.0f;
#pragma unroll
        for (int i = 0; i < kD / 8; i++) {
            float kf[8];
            an_unpack16<T>(kr[i], kf);
#pragma unroll
            for (int h = 0; h < G; h++) {
                const float4 q0 = *reinterpret_cast<const float4 *>(&q_s[h][i * 8]);
                const float4 q1 = *reinterpret_cast<const float4 *>(&q_s[h][i * 8 + 4]);
                s[h] = fmaf(q0.x, kf[0], s[h]), s[h] = fmaf(q0.y, kf[1], s[h]);
                s[h] = fmaf(q0.z, kf[2], s[h]), s[h] = fmaf(q0.w, kf[3], s[h]);
                s[h] = fmaf(q1.x, kf[4], s[h]), s[h] = fmaf(q1.y, kf[5], s[h]);
                s[h] = fmaf(q1.z, kf[6], s[h]), s[h] = fmaf(q1.w, kf[7], s[h]);
            }
        }
#pragma unroll
        for (int h = 0; h < G; h++) {
            if (!live) s[h] = -INFINITY;
            const float wm = an_lanes_max<32>(s[h]);
            if (lane == 0) max_s[warp][h] = wm;
        }
        __syncthreads();
#pragma unroll
        for (int h = 0; h < G; h++) {
            const float m_new = fmaxf(m[h], fmaxf(max_s[0][h], max_s[1][h])); /* finite: key c is live */
            const float alpha = expf(m[h] - m_new); /* 0 while m is -inf */
            const float p = live ? expf(s[h] - m_new) : 0.0f;
            p_s[h][tid] = p;
            const float ws = an_lanes_sum<32>(p);
            if (lane == 0) sum_s[warp][h] = ws;
            l[h] *= alpha, o[h][0] *= alpha, o[h][1] *= alpha;
            m[h] = m_new;
        }
        copy_async_wait();
        __syncthreads();
#pragma unroll
        for (int h = 0; h < G; h++) l[h] += sum_s[0][h] + sum_s[1][h];
#pragma unroll 4
        for (int j = 0; j < n; j++) {
            float vf[2];
            unpack2<T>(*reinterpret_cast<const uint32_t *>(&v_s[j][2 * tid]), vf);
#pragma unroll
            for (int h = 0; h < G; h++) {
                const float p = p_s[h][j];
                o[h][0] = fmaf(p, vf[0], o[h][0]), o[h][1] = fmaf(p, vf[1], o[h][1]);
            }
        }
        __syncthreads(); /* p_s and the partials are rewritten by the next chunk */
    }
    copy_async_wait(); /* a split past the visible keys may have issued its first chunk's copies */
#pragma unroll
    for (int h = 0; h < G; h++) {
        const int64_t qh = row * a.Hq + (int64_t)g * G + h; /* (row, query head) */
        if (a.nsplit == 1) {
            const float inv = l[h] > 0.0f ? 1.0f / l[h] : 0.0f;
            T *op = a.out + qh * kD + 2 * tid;
            op[0] = an_store<T>(o[h][0] * inv), op[1] = an_store<T>(o[h][1] * inv);
        } else {
            float *p = a.partial + (qh * a.nsplit + split) * (kD + 2);
            p[2 * tid] = o[h][0], p[2 * tid + 1] = o[h][1];
            if (tid == 0) p[kD] = m[h], p[kD + 1] = l[h];
        }
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

template <typename T, int G> an_status launch_group(an_ctx *ctx, an_cuda_state *s, const GqaArgs<T> &a, int64_t rows) {
    dim3 grid((unsigned)rows, (unsigned)a.Hkv, (unsigned)a.nsplit);
    cudaError_t err = an_launch_pdl(s, gqa_split_kernel<T, G>, grid, dim3(kThreads), a);
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

template <typename T> an_status launch(an_ctx *ctx, an_cuda_state *s, const GqaArgs<T> &a, int group, int64_t rows) {
    switch (group) {
    case 2: return launch_group<T, 2>(ctx, s, a, rows);
    case 3: return launch_group<T, 3>(ctx, s, a, rows);
    case 4: return launch_group<T, 4>(ctx, s, a, rows);
    case 5: return launch_group<T, 5>(ctx, s, a, rows);
    case 6: return launch_group<T, 6>(ctx, s, a, rows);
    case 7: return launch_group<T, 7>(ctx, s, a, rows);
    default: return launch_group<T, 8>(ctx, s, a, rows);
    }
}

bool aligned16(const void *p) { return (uintptr_t)p % 16 == 0; }

} // namespace

an_status an_decode_attention_grouped(an_ctx *ctx, const an_attention_shape *sh, int64_t cache_len, int64_t cache_rows,
                                      an_dtype dtype, const void *q, const void *k_cache, const void *v_cache,
                                      const int64_t *rows, const int64_t *lengths, void *out, bool *taken) {
    AN_CUDA_STATE(ctx, s);
    *taken = false;
    int64_t group = sh->kv_heads > 0 ? sh->q_heads / sh->kv_heads : 0, n = sh->batch * sh->seq;
    if ((dtype != AN_BF16 && dtype != AN_F16) || sh->head_dim != kD || group < 2 || group > 8 ||
        sh->q_heads != group * sh->kv_heads || !aligned16(q) || !aligned16(k_cache) || !aligned16(v_cache) ||
        !aligned16(out) || n < 1 || cache_len < 1 || sh->kv_heads > 65535 || sh->q_heads > 65535 || n > INT32_MAX)
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
    const int speculate = n * sh->kv_heads * nsplit < kTargetBlocks;
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
                                    (int)nsplit, speculate, (float)sh->scale};
        st = launch(ctx, s, a, (int)group, n);
    } else {
        GqaArgs<__half> a = {(const __half *)q, (const __half *)k_cache, (const __half *)v_cache, (__half *)out,
                             partial, rows, lengths, sh->seq, cache_len, cache_rows, chunk, (int)sh->q_heads,
                             (int)sh->kv_heads, (int)nsplit, speculate, (float)sh->scale};
        st = launch(ctx, s, a, (int)group, n);
    }
    /* stream order: a later allocation of this block runs its kernels after these */
    if (partial) an_cuda_free(s, partial);
    return st;
}
