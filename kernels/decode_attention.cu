/* decode_attention.cu — decode attention over a KV cache for grouped-query models, bf16/f16 at
 * head_dim 128: one block per (query token, kv head, split of the keys) computes every query head
 * of the kv head's group, so each K and V row is read once for the group (the per-head kernel of
 * attention.cu reads it once per query head: six times for the 1.5B model).
 *
 * Layout: a block is 8 warps = 16 half-warps. A half-warp takes a key at a time (kKB keys a pass);
 * lane li of it holds head dims [8 li, 8 li + 8) as one 16-byte load of the K row and one of the V
 * row, so a key's G dot products reduce over 16 lanes in 4 shuffle steps, and both halves of a warp
 * share the shuffle instructions. Passes are warp-uniform (both halves loop together; keys past the
 * visible ones are masked), so the full-mask shuffles never diverge.
 * Merges, all in a fixed order (a launch of one shape repeats bit for bit): each half-warp keeps
 * its own online softmax per head; a warp's two halves merge by shuffles (half 0's result kept),
 * the block's 8 warps through shared memory in warp order, and with several splits a second kernel
 * adds the splits in split order from an fp32 buffer of (o, max, sum) per split.
 * Numerics: fp32; q is scaled by the softmax scale once on load (the per-head kernel scales each
 * dot product instead: last-bit differences). A row of the batch whose cache row is out of range
 * (never: the op validates rows) gets zeros, as in the per-head kernel. */
#include "kernels/decode_attention.cuh"

#include "kernels/pdl.cuh" /* an_launch_pdl, an_pdl_wait: launched like the rest of the decode step */
#include "kernels/vec.cuh" /* an_unpack16 */

#include <math.h>
#include <stdint.h>

namespace {

constexpr int kD = 128;     /* the head dim this kernel takes */
constexpr int kWarps = 8;   /* 16 half-warps a block */
constexpr int kKB = 2;      /* keys per half-warp per pass */
constexpr int kChunk = 64;  /* keys per split while the splits stay at most kMaxSplits */
constexpr int kMaxSplits = 64;

template <typename T> struct GqaArgs {
    const T *q;             /* (B', T, Hq, D) */
    const T *k, *v;         /* (Bc, S, Hkv, D) */
    T *out;                 /* (B', T, Hq, D) */
    float *partial;         /* (B' T, Hq, nsplit, D + 2): each split's o, max, sum; NULL when nsplit is 1 */
    const int64_t *rows;    /* (B'): cache row of each batch entry */
    const int64_t *lengths; /* (Bc): keys each cache row held before these T tokens */
    int64_t seq, cache_len, cache_rows; /* T, S, Bc */
    int64_t chunk;          /* keys per split */
    int Hq, Hkv, nsplit;
    float scale;
};

/* x summed over this lane's half-warp (xor 8, 4, 2, 1: the same bits in its 16 lanes). */
__device__ __forceinline__ float half_sum(float x) {
#pragma unroll
    for (int off = 8; off > 0; off /= 2) x += __shfl_xor_sync(0xffffffffu, x, off);
    return x;
}

/* Block (row, kv head g, split): the G query heads g G .. g G + G - 1 over the split's keys. */
template <typename T, int G> __global__ void __launch_bounds__(kWarps * 32) gqa_split_kernel(GqaArgs<T> a) {
    __shared__ float sm_m[kWarps][G], sm_l[kWarps][G];
    __shared__ float sm_o[kWarps][G][kD];
    an_pdl_wait(); /* q, the cache and its lengths come from the kernels before */
    an_pdl_trigger();
    const int lane = threadIdx.x % 32, w = threadIdx.x / 32, hw = lane / 16, li = lane % 16;
    const int64_t row = blockIdx.x, b = row / a.seq, t = row % a.seq; /* row = b T + t */
    const int g = blockIdx.y, split = blockIdx.z;
    const int64_t cache_row = a.rows[b];
    const bool valid_row = cache_row >= 0 && cache_row < a.cache_rows;
    int64_t visible = valid_row ? a.lengths[cache_row] + t + 1 : 0;
    if (visible > a.cache_len) visible = a.cache_len;
    const int64_t k_begin = (int64_t)split * a.chunk;
    const int64_t k_end = k_begin + a.chunk < visible ? k_begin + a.chunk : visible;
    const int64_t key_stride = (int64_t)a.Hkv * kD;
    const int64_t cache_base = (valid_row ? cache_row : 0) * a.cache_len * key_stride + (int64_t)g * kD + li * 8;
    const T *kc = a.k + cache_base, *vc = a.v + cache_base; /* this lane's 8 dims of key 0 */

    float q[G][8], o[G][8], m[G], l[G];
#pragma unroll
    for (int h = 0; h < G; h++) {
        const T *qh = a.q + (row * a.Hq + (int64_t)g * G + h) * kD + li * 8;
        an_unpack16<T>(*reinterpret_cast<const uint4 *>(qh), q[h]);
#pragma unroll
        for (int e = 0; e < 8; e++) q[h][e] *= a.scale, o[h][e] = 0.0f;
        m[h] = -INFINITY, l[h] = 0.0f;
    }
    /* warp w takes keys base .. base + 2 kKB - 1 of a pass, its half hw the kKB from base + hw kKB */
    for (int64_t base = k_begin + (int64_t)w * 2 * kKB; base < k_end; base += (int64_t)kWarps * 2 * kKB) {
        uint4 kr[kKB], vr[kKB];
        bool in[kKB];
#pragma unroll
        for (int i = 0; i < kKB; i++) { /* the pass's loads together: one memory latency, not kKB */
            const int64_t j = base + hw * kKB + i;
            in[i] = j < k_end;
            kr[i] = in[i] ? __ldg(reinterpret_cast<const uint4 *>(kc + j * key_stride)) : make_uint4(0, 0, 0, 0);
            vr[i] = in[i] ? __ldg(reinterpret_cast<const uint4 *>(vc + j * key_stride)) : make_uint4(0, 0, 0, 0);
        }
        float s[kKB][G];
#pragma unroll
        for (int i = 0; i < kKB; i++) {
            float kf[8];
            an_unpack16<T>(kr[i], kf);
#pragma unroll
            for (int h = 0; h < G; h++) {
                float dot = 0.0f;
#pragma unroll
                for (int e = 0; e < 8; e++) dot = fmaf(q[h][e], kf[e], dot);
                dot = half_sum(dot); /* every lane of the warp shuffles: in[i] only masks the result */
                s[i][h] = in[i] ? dot : -INFINITY;
            }
        }
#pragma unroll
        for (int h = 0; h < G; h++) {
            float m_new = m[h];
#pragma unroll
            for (int i = 0; i < kKB; i++) m_new = fmaxf(m_new, s[i][h]);
            if (m_new == -INFINITY) continue; /* no visible key of this half-warp in this pass */
            const float alpha = expf(m[h] - m_new); /* 0 while m is -inf */
            l[h] *= alpha;
#pragma unroll
            for (int e = 0; e < 8; e++) o[h][e] *= alpha;
#pragma unroll
            for (int i = 0; i < kKB; i++) {
                const float p = expf(s[i][h] - m_new); /* 0 for a masked key */
                float vf[8];
                an_unpack16<T>(vr[i], vf);
                l[h] += p;
#pragma unroll
                for (int e = 0; e < 8; e++) o[h][e] = fmaf(p, vf[e], o[h][e]);
            }
            m[h] = m_new;
        }
    }
    /* the warp's two halves; half 0's result (its own partial first) is the one kept */
#pragma unroll
    for (int h = 0; h < G; h++) {
        const float m2 = __shfl_xor_sync(0xffffffffu, m[h], 16), l2 = __shfl_xor_sync(0xffffffffu, l[h], 16);
        const float mx = fmaxf(m[h], m2);
        const float f1 = m[h] == -INFINITY ? 0.0f : expf(m[h] - mx), f2 = m2 == -INFINITY ? 0.0f : expf(m2 - mx);
        l[h] = l[h] * f1 + l2 * f2;
#pragma unroll
        for (int e = 0; e < 8; e++) o[h][e] = o[h][e] * f1 + __shfl_xor_sync(0xffffffffu, o[h][e], 16) * f2;
        m[h] = mx;
    }
    if (hw == 0) {
#pragma unroll
        for (int h = 0; h < G; h++) {
#pragma unroll
            for (int e = 0; e < 8; e++) sm_o[w][h][li * 8 + e] = o[h][e];
            if (li == 0) sm_m[w][h] = m[h], sm_l[w][h] = l[h];
        }
    }
    __syncthreads();
    /* the 8 warps in warp order, one (head, dim) output per thread and step */
    for (int idx = threadIdx.x; idx < G * kD; idx += kWarps * 32) {
        const int h = idx / kD, d = idx % kD;
        float mx = -INFINITY;
        for (int x = 0; x < kWarps; x++) mx = fmaxf(mx, sm_m[x][h]);
        float L = 0.0f, O = 0.0f;
        if (mx != -INFINITY)
            for (int x = 0; x < kWarps; x++) {
                if (sm_m[x][h] == -INFINITY) continue; /* a warp that saw no key */
                const float f = expf(sm_m[x][h] - mx);
                L += sm_l[x][h] * f;
                O += sm_o[x][h][d] * f;
            }
        const int64_t qh = row * a.Hq + (int64_t)g * G + h; /* (row, query head) */
        if (a.nsplit == 1) {
            a.out[qh * kD + d] = an_store<T>(L > 0.0f ? O / L : 0.0f);
        } else {
            float *p = a.partial + (qh * a.nsplit + split) * (kD + 2);
            p[d] = O;
            if (d == 0) p[kD] = mx, p[kD + 1] = L;
        }
    }
}

/* Block (row, query head): the splits' partials added in split order. */
template <typename T> __global__ void __launch_bounds__(kD) gqa_merge_kernel(GqaArgs<T> a) {
    an_pdl_wait();
    an_pdl_trigger();
    const int64_t qh = (int64_t)blockIdx.x * a.Hq + blockIdx.y;
    const int d = threadIdx.x;
    const float *p = a.partial + qh * a.nsplit * (kD + 2);
    float mx = -INFINITY;
    for (int s = 0; s < a.nsplit; s++) mx = fmaxf(mx, p[s * (kD + 2) + kD]);
    float L = 0.0f, O = 0.0f;
    if (mx != -INFINITY)
        for (int s = 0; s < a.nsplit; s++) {
            const float ms = p[s * (kD + 2) + kD];
            if (ms == -INFINITY) continue; /* a split past the visible keys */
            const float f = expf(ms - mx);
            L += p[s * (kD + 2) + kD + 1] * f;
            O += p[s * (kD + 2) + d] * f;
        }
    a.out[qh * kD + d] = an_store<T>(L > 0.0f ? O / L : 0.0f);
}

template <typename T, int G> an_status launch_group(an_ctx *ctx, an_cuda_state *s, const GqaArgs<T> &a, int64_t rows) {
    dim3 grid((unsigned)rows, (unsigned)a.Hkv, (unsigned)a.nsplit);
    cudaError_t err = an_launch_pdl(s, gqa_split_kernel<T, G>, grid, dim3(kWarps * 32), a);
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
    int64_t nsplit = (cache_len + kChunk - 1) / kChunk, chunk = kChunk;
    if (nsplit > kMaxSplits) {
        nsplit = kMaxSplits;
        chunk = (cache_len + nsplit - 1) / nsplit;
    }
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
