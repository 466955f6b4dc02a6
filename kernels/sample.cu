/* sample.cu — choosing the next token of every row of a logits matrix on the GPU, so generation
 * copies B token ids to the host per step instead of B x V logits: greedy argmax, and the
 * temperature / top-k / top-p / one-draw rule of src/model/sample.c (an_sample_token).
 *
 * Rules: one block per row. Greedy compares the logits as they are (exact for f32/bf16/f16) and
 * ties go to the lowest id, as the CPU's argmax does. Sampling computes x = logit / temperature
 * and the weights w = exp(x - max x) in float64 like the CPU, then holds each weight as an integer
 * of 2^-40 units: every sum below is an integer sum, exact and independent of the thread order, so
 * a seed repeats a run bit for bit. The order is the CPU's sort order (probability descending, id
 * ascending); positions in it are found by radix selection on the logit's bits (4 passes of 8
 * bits, warp-aggregated shared-memory histograms) plus one pass over ties in id order, never by
 * sorting. Row b draws its uniform number from
 * counter offset + b of ctx's RNG stream (an_rng_at), as the CPU loop draws one per row in order. */
#include "kernels/cuda_common.cuh"
#include "kernels/vec.cuh" /* an_vec_width, an_unpack16, an_aligned16 */

#include <math.h>

namespace {

constexpr int kThreads = 1024;
constexpr double kUnit = 1099511627776.0; /* 2^40: one weight of 1.0 in fixed point */

/* an_rng_at (src/autograd/rng.c), the same bits. */
__device__ __forceinline__ uint64_t rng_at(uint64_t seed, uint64_t counter) {
    uint64_t z = seed * 0x9e3779b97f4a7c15ull + counter * 0xd1b54a32d192ed03ull + 0x632be59bd9b4e019ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* A float's bits mapped so that unsigned order is numeric order. */
__device__ __forceinline__ uint32_t order_key(float f) {
    uint32_t b = __float_as_uint(f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

/* Greedy: tokens[row] = the lowest id holding the row's largest logit. vec: rows 16-byte aligned
 * (the base and V * sizeof(T)): each thread reads 16-byte packs (4 in flight), ids ascending within
 * a pack, then the ids past the last whole pack one by one; one block per row reads its 300 KB
 * (the 151936-logit vocabulary) in a few microseconds instead of 2-byte loads one chain long. */
template <typename T, bool vec>
__global__ void __launch_bounds__(kThreads) argmax_rows(const T *logits, int64_t V, int allowed, int32_t *tokens) {
    constexpr int W = vec ? an_vec_width<T>::value : 1;
    const T *x = logits + (int64_t)blockIdx.x * V;
    float best = -INFINITY;
    int best_id = -1;
    const int packs = allowed / W;
#pragma unroll 4
    for (int p = threadIdx.x; p < packs; p += blockDim.x) { /* ids ascend: strict > keeps the lowest */
        float v[W];
        if (vec) an_unpack16<T>(__ldg(reinterpret_cast<const uint4 *>(x) + p), v);
        else v[0] = an_load(x[p]);
#pragma unroll
        for (int j = 0; j < W; j++)
            if (best_id < 0 || v[j] > best) best = v[j], best_id = p * W + j;
    }
    for (int i = packs * W + threadIdx.x; i < allowed; i += blockDim.x) {
        float v = an_load(x[i]);
        if (best_id < 0 || v > best) best = v, best_id = i;
    }
    __shared__ float sv[32];
    __shared__ int si[32];
    for (int off = 16; off > 0; off /= 2) {
        float ov = __shfl_xor_sync(0xffffffffu, best, off);
        int oi = __shfl_xor_sync(0xffffffffu, best_id, off);
        if (oi >= 0 && (best_id < 0 || ov > best || (ov == best && oi < best_id))) best = ov, best_id = oi;
    }
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) sv[warp] = best, si[warp] = best_id;
    __syncthreads();
    if (warp == 0) {
        best = lane < (int)(blockDim.x / 32) ? sv[lane] : -INFINITY;
        best_id = lane < (int)(blockDim.x / 32) ? si[lane] : -1;
        for (int off = 16; off > 0; off /= 2) {
            float ov = __shfl_xor_sync(0xffffffffu, best, off);
            int oi = __shfl_xor_sync(0xffffffffu, best_id, off);
            if (oi >= 0 && (best_id < 0 || ov > best || (ov == best && oi < best_id))) best = ov, best_id = oi;
        }
        if (lane == 0) tokens[blockIdx.x] = best_id < 0 ? 0 : best_id; /* all NaN: id 0, as the CPU */
    }
}

struct Row {
    double temperature, max; /* max of logit / temperature */
};

template <typename T> __device__ __forceinline__ uint64_t fixed_weight(const T *x, int i, const Row &r) {
    double w = exp((double)an_load(x[i]) / r.temperature - r.max);
    return (uint64_t)__double2ull_rn(w * kUnit);
}

/* The inclusive prefix sum of v over the block, and the block total in *total. */
__device__ uint64_t block_inclusive_scan(uint64_t v, uint64_t *total) {
    __shared__ uint64_t warp_sums[32];
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    for (int off = 1; off < 32; off *= 2) {
        uint64_t o = __shfl_up_sync(0xffffffffu, v, off);
        if (lane >= off) v += o;
    }
    __syncthreads();
    if (lane == 31) warp_sums[warp] = v;
    __syncthreads();
    if (warp == 0) {
        uint64_t s = lane < warps ? warp_sums[lane] : 0;
        for (int off = 1; off < 32; off *= 2) {
            uint64_t o = __shfl_up_sync(0xffffffffu, s, off);
            if (lane >= off) s += o;
        }
        if (lane < warps) warp_sums[lane] = s;
    }
    __syncthreads();
    uint64_t before = warp > 0 ? warp_sums[warp - 1] : 0;
    *total = warp_sums[warps - 1];
    return v + before;
}

struct Found {
    uint32_t key;   /* order key of the element */
    int id;         /* its id */
    uint64_t cum;   /* the running value through it (count or fixed weight) */
};

/* The first element, in the order (logit descending, id ascending) over ids [0, n), at which the
 * running total reaches `target`: the total counts 1 per element when by_count, else the element's
 * fixed weight. Needs 1 <= target <= the row's total (callers derive targets from totals made of
 * the same integers, so this holds exactly). Every thread gets the result. */
template <typename T> __device__ Found select_first(const T *x, int n, const Row &r, bool by_count, uint64_t target) {
    __shared__ unsigned long long hist[256];
    __shared__ uint32_t s_prefix, s_mask;
    __shared__ unsigned long long s_above; /* running total of the elements before the current bucket */
    __shared__ Found s_found;
    if (threadIdx.x == 0) s_prefix = 0, s_mask = 0, s_above = 0, s_found = Found{0, -1, 0};
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int b = threadIdx.x; b < 256; b += blockDim.x) hist[b] = 0;
        __syncthreads();
        uint32_t prefix = s_prefix, mask = s_mask;
        /* Logits of one row mostly share their top byte, so the lanes of a warp that fall in one
         * bucket add their values together first and one of them updates the bucket
         * (__match_any_sync groups them; the whole warp runs every iteration). */
        for (int base = 0; base < n; base += blockDim.x) {
            int i = base + threadIdx.x;
            uint32_t k = i < n ? order_key(an_load(x[i])) : 0;
            bool in = i < n && (k & mask) == prefix;
            uint32_t bucket = in ? (k >> shift) & 255u : 256u;
            uint64_t v = !in ? 0 : by_count ? 1 : fixed_weight(x, i, r);
            unsigned peers = __match_any_sync(0xffffffffu, bucket);
            /* v <= 2^40: 20-bit halves of up to 32 lanes sum within 32 bits */
            uint32_t lo = __reduce_add_sync(peers, (uint32_t)(v & 0xfffffu));
            uint32_t hi = __reduce_add_sync(peers, (uint32_t)(v >> 20));
            if (in && (threadIdx.x % 32) == (unsigned)(__ffs(peers) - 1))
                atomicAdd(&hist[bucket], (unsigned long long)lo + ((unsigned long long)hi << 20));
        }
        __syncthreads();
        if (threadIdx.x < 32) { /* lane l owns buckets 255 - 8l down to 248 - 8l, scanned high to low */
            int lane = threadIdx.x;
            uint64_t mine = 0;
            for (int j = 0; j < 8; j++) mine += hist[255 - 8 * lane - j];
            uint64_t incl = mine;
            for (int off = 1; off < 32; off *= 2) {
                uint64_t o = __shfl_up_sync(0xffffffffu, incl, off);
                if (lane >= off) incl += o;
            }
            uint64_t acc = s_above + incl - mine;
            __syncwarp(); /* every lane has read s_above before the crossing lane rewrites it */
            if (acc < target && acc + mine >= target) { /* exactly one lane */
                for (int j = 0; j < 8; j++) {
                    int b = 255 - 8 * lane - j;
                    if (acc + hist[b] >= target) {
                        s_prefix = prefix | ((uint32_t)b << shift);
                        s_mask = mask | (255u << shift);
                        s_above = acc;
                        break;
                    }
                    acc += hist[b];
                }
            }
        }
        __syncthreads();
    }
    uint32_t key = s_prefix;
    uint64_t above = s_above;
    /* Ties on `key` in id order: thread t owns ids [t * chunk, (t + 1) * chunk). */
    int chunk = (n + blockDim.x - 1) / blockDim.x, lo = threadIdx.x * chunk, hi = min(n, lo + chunk);
    uint64_t mine = 0;
    for (int i = lo; i < hi; i++)
        if (order_key(an_load(x[i])) == key) mine += by_count ? 1 : fixed_weight(x, i, r);
    uint64_t total, acc = above + block_inclusive_scan(mine, &total) - mine;
    if (acc < target && acc + mine >= target) { /* exactly one thread */
        for (int i = lo; i < hi; i++) {
            if (order_key(an_load(x[i])) != key) continue;
            acc += by_count ? 1 : fixed_weight(x, i, r);
            if (acc >= target) {
                s_found = Found{key, i, acc};
                break;
            }
        }
    }
    __syncthreads();
    Found f = s_found;
    __syncthreads();
    return f;
}

/* The fixed weight of every element at or before (key, id) in the order. */
template <typename T> __device__ uint64_t mass_through(const T *x, int n, const Row &r, uint32_t key, int id) {
    uint64_t s = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        uint32_t k = order_key(an_load(x[i]));
        if (k > key || (k == key && i <= id)) s += fixed_weight(x, i, r);
    }
    uint64_t total;
    block_inclusive_scan(s, &total);
    return total;
}

struct SampleArgs {
    int64_t V;
    int allowed;
    double temperature, top_p;
    int64_t top_k;
    uint64_t seed, offset;
};

template <typename T> __global__ void __launch_bounds__(kThreads) sample_rows(const T *logits, SampleArgs a, int32_t *tokens) {
    const T *x = logits + (int64_t)blockIdx.x * a.V;
    int n = a.allowed;
    /* max of logit / temperature (float64, as the CPU) */
    double m = -INFINITY;
    for (int i = threadIdx.x; i < n; i += blockDim.x) m = fmax(m, (double)an_load(x[i]) / a.temperature);
    __shared__ double wm[32];
    for (int off = 16; off > 0; off /= 2) m = fmax(m, __shfl_xor_sync(0xffffffffu, m, off));
    if (threadIdx.x % 32 == 0) wm[threadIdx.x / 32] = m;
    __syncthreads();
    m = -INFINITY;
    for (int w = 0; w < (int)(blockDim.x / 32); w++) m = fmax(m, wm[w]);
    Row r = {a.temperature, m};
    /* top-k: the kept prefix ends at the k-th element; its mass */
    uint64_t mass;
    if (a.top_k > 0 && a.top_k < n) {
        Found k = select_first(x, n, r, true, (uint64_t)a.top_k);
        mass = mass_through(x, n, r, k.key, k.id);
    } else {
        uint64_t s = 0;
        for (int i = threadIdx.x; i < n; i += blockDim.x) s += fixed_weight(x, i, r);
        block_inclusive_scan(s, &mass);
    }
    /* top-p: the smallest prefix holding top_p of that mass (at least one element) */
    if (a.top_p < 1.0) {
        uint64_t target = (uint64_t)ceil(a.top_p * (double)mass);
        mass = select_first(x, n, r, false, target < 1 ? 1 : target).cum;
    }
    /* the draw: the first element whose running mass exceeds u * mass */
    double u = (double)(rng_at(a.seed, a.offset + blockIdx.x) >> 11) * 0x1.0p-53;
    uint64_t target = (uint64_t)floor(u * (double)mass) + 1;
    Found d = select_first(x, n, r, false, target > mass ? mass : target);
    if (threadIdx.x == 0) tokens[blockIdx.x] = d.id;
}

} // namespace

extern "C" {

an_status an_cuda_sample(an_ctx *ctx, an_dtype dtype, const void *logits, int64_t B, int64_t V, int64_t allowed,
                         double temperature, int64_t top_k, double top_p, uint64_t seed, uint64_t offset,
                         int32_t *tokens) {
    AN_CUDA_STATE(ctx, s);
    AN_CHECK(ctx, B >= 0 && B <= INT32_MAX && allowed >= 1 && allowed <= V && V < ((int64_t)1 << 23), AN_ERR_INPUT,
             "sample: %lld rows of %lld logits (%lld allowed) do not fit the kernel (1 <= allowed <= V < 2^23)",
             (long long)B, (long long)V, (long long)allowed);
    AN_CHECK(ctx, temperature <= 0 || (top_p > 0 && top_p <= 1 && top_k >= 0), AN_ERR_INPUT,
             "sample: top_p %g must be in (0, 1] and top_k %lld >= 0", top_p, (long long)top_k);
    if (B == 0) return AN_OK;
    bool greedy = temperature <= 0 || top_k == 1;
    AN_CUDA_DISPATCH_FLOAT(ctx, dtype, "sample", {
        if (greedy) {
            if (an_aligned16(logits) && (V * (int64_t)sizeof(T)) % 16 == 0)
                argmax_rows<T, true><<<(unsigned)B, kThreads, 0, s->stream>>>((const T *)logits, V, (int)allowed, tokens);
            else
                argmax_rows<T, false><<<(unsigned)B, kThreads, 0, s->stream>>>((const T *)logits, V, (int)allowed, tokens);
        } else {
            SampleArgs a = {V, (int)allowed, temperature, top_p, top_k, seed, offset};
            sample_rows<T><<<(unsigned)B, kThreads, 0, s->stream>>>((const T *)logits, a, tokens);
        }
    });
    AN_CUDA_LAUNCH_CHECK(ctx, greedy ? "argmax_rows" : "sample_rows");
    return AN_OK;
}

} // extern "C"
