/* sample.cu — choosing the next token of every row of a logits matrix on the GPU, so generation
 * copies B token ids to the host per step instead of B x V logits: greedy argmax, and the
 * temperature / top-k / top-p / one-draw rule of src/model/sample.c (an_sample_token).
 *
 * Rules: greedy is one block per row; it compares the logits as they are (exact for f32/bf16/f16)
 * and ties go to the lowest id, as the CPU's argmax does. Sampling computes x = logit / temperature
 * and the weights w = exp(x - max x) in float64 like the CPU, then holds each weight as an integer
 * of 2^-40 units: every sum below is an integer sum, exact and independent of the thread order, so
 * a seed repeats a run bit for bit. The order is the CPU's sort order (probability descending, id
 * ascending), as one integer a logit: the composite (order key of the logit, then 2^24-1 - id),
 * larger first. Three launches: (1) many blocks a row take each row's max of x; (2) many blocks a
 * row compute every weight once and add it to the row's histogram over 2048 bins (the key's top
 * 11 bits: elements and weight a bin); (3) one block a row answers the rule's questions (the k-th
 * element, the top-p element, the drawn element: each the first element where a running total of
 * elements or weight reaches a target) by finding the bin from the histogram's prefix sums, then
 * gathering that bin's elements (one read of the row, kept in shared memory) and selecting among
 * them by radix passes over the composite. Only a bin of more than kListCap elements (all logits
 * in one narrow range, or equal) is resolved from the row itself, pass by pass: slower, the same
 * result. Nothing is sorted, nothing read back to the host, so the step can be captured in a
 * graph; the scratch (histograms, maxima: about 12 KB a row) comes from the state's caching
 * allocator. Row b draws its uniform number from counter offset + b of ctx's RNG stream
 * (an_rng_at), as the CPU loop draws one per row in order. */
#include "kernels/cuda_common.cuh"
#include "kernels/vec.cuh" /* an_vec_width, an_unpack16, an_aligned16 */

#include <math.h>

namespace {

constexpr int kThreads = 1024;
constexpr double kUnit = 1099511627776.0; /* 2^40: one weight of 1.0 in fixed point */
constexpr int kSweepThreads = 256;        /* the two many-blocks-a-row sweeps */
constexpr int kBinBits = 11, kBins = 1 << kBinBits; /* a row's histogram: the order key's top 11 bits */
constexpr int kListCap = 12288;           /* elements of one bin held in shared memory (192 KB) */

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

/* The weight exp(x / temperature - max) of logit value f, in 2^-40 units (<= 2^40). */
__device__ __forceinline__ uint64_t weight_of(float f, const Row &r) {
    double w = exp((double)f / r.temperature - r.max);
    return (uint64_t)__double2ull_rn(w * kUnit);
}

/* The order as one integer: larger composite = earlier (key descending, then id ascending; ids
 * < 2^23). The top 11 bits of the key (the coarse bin) are the composite's bits 55..45. */
__device__ __forceinline__ uint64_t composite(uint32_t key, int id) {
    return ((uint64_t)key << 24) | (uint64_t)(0xffffffu - (uint32_t)id);
}
__device__ __forceinline__ int composite_id(uint64_t c) { return (int)(0xffffffu - (uint32_t)(c & 0xffffffu)); }
__device__ __forceinline__ int key_bin(uint32_t key) { return (int)(key >> (32 - kBinBits)); }

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

/* The block's max of m (fmax: exact in any order), in every thread. */
__device__ double block_max(double m) {
    __shared__ double wm[32];
    for (int off = 16; off > 0; off /= 2) m = fmax(m, __shfl_xor_sync(0xffffffffu, m, off));
    __syncthreads(); /* an earlier call's readers are done */
    if (threadIdx.x % 32 == 0) wm[threadIdx.x / 32] = m;
    __syncthreads();
    m = -INFINITY;
    for (int w = 0; w < (int)(blockDim.x / 32); w++) m = fmax(m, wm[w]);
    return m;
}

struct SampleArgs {
    int64_t V;
    int allowed;
    double temperature, top_p;
    int64_t top_k;
    uint64_t seed, offset;
    int parts, chunk; /* blocks a row of the two sweeps, logits each (the last part may be shorter) */
};

/* Sweep 1, grid (B, parts): partial[b][part] = max over the part's logits of logit / temperature
 * (float64, as the CPU), and the row's bin histogram zeroed for sweep 2. */
template <typename T>
__global__ void __launch_bounds__(kSweepThreads) sample_sweep_max(const T *logits, SampleArgs a, double *partial,
                                                                  uint32_t *bin_count, uint64_t *bin_weight) {
    const int64_t b = blockIdx.x;
    const T *x = logits + b * a.V;
    const int lo = (int)blockIdx.y * a.chunk, hi = min(a.allowed, lo + a.chunk);
    double m = -INFINITY;
    for (int i = lo + (int)threadIdx.x; i < hi; i += blockDim.x) m = fmax(m, (double)an_load(x[i]) / a.temperature);
    m = block_max(m);
    if (threadIdx.x == 0) partial[b * a.parts + blockIdx.y] = m;
    for (int j = (int)(blockIdx.y * blockDim.x + threadIdx.x); j < kBins; j += a.parts * (int)blockDim.x)
        bin_count[b * kBins + j] = 0, bin_weight[b * kBins + j] = 0;
}

/* Sweep 2, grid (B, parts): every logit's fixed weight (the float64 exp, done once per logit here
 * by many blocks a row), added to the row's histogram over bins (the key's top 11 bits): elements
 * and weight a bin. Lanes of a warp in one bin add together first (__match_any_sync), the block
 * in shared memory, then one global atomic a bin a block; integer sums, so any order is exact. */
template <typename T>
__global__ void __launch_bounds__(kSweepThreads) sample_sweep_bins(const T *logits, SampleArgs a, const double *partial,
                                                                   uint32_t *bin_count, uint64_t *bin_weight) {
    __shared__ uint32_t cnt[kBins];
    __shared__ unsigned long long wt[kBins];
    const int64_t b = blockIdx.x;
    const T *x = logits + b * a.V;
    for (int j = threadIdx.x; j < kBins; j += blockDim.x) cnt[j] = 0, wt[j] = 0;
    double m = -INFINITY;
    for (int p = threadIdx.x; p < a.parts; p += blockDim.x) m = fmax(m, partial[b * a.parts + p]);
    const Row r = {a.temperature, block_max(m)}; /* its barriers also order the zeroing above */
    const int lo = (int)blockIdx.y * a.chunk, hi = min(a.allowed, lo + a.chunk), lane = threadIdx.x % 32;
    for (int base = lo; base < hi; base += blockDim.x) { /* the whole warp runs every iteration */
        int i = base + (int)threadIdx.x;
        uint32_t bin = kBins; /* none */
        uint64_t v = 0;
        if (i < hi) {
            float f = an_load(x[i]);
            bin = (uint32_t)key_bin(order_key(f));
            v = weight_of(f, r);
        }
        unsigned peers = __match_any_sync(0xffffffffu, bin);
        /* v <= 2^40: 20-bit halves of up to 32 lanes sum within 32 bits */
        uint32_t lo20 = __reduce_add_sync(peers, (uint32_t)(v & 0xfffffu));
        uint32_t hi20 = __reduce_add_sync(peers, (uint32_t)(v >> 20));
        if (i < hi && lane == __ffs(peers) - 1) {
            atomicAdd(&cnt[bin], (uint32_t)__popc(peers));
            atomicAdd(&wt[bin], (unsigned long long)lo20 + ((unsigned long long)hi20 << 20));
        }
    }
    __syncthreads();
    for (int j = threadIdx.x; j < kBins; j += blockDim.x)
        if (cnt[j]) {
            atomicAdd(&bin_count[b * kBins + j], cnt[j]);
            atomicAdd((unsigned long long *)&bin_weight[b * kBins + j], wt[j]);
        }
}

struct Loc {
    int bin;                   /* -1: the target is past the row's total (never, for the callers' targets) */
    uint64_t before_c, before_w; /* elements and weight of the bins before it in the order */
};

/* The bin (of the row's histogram) holding the first element, in the order, at which the running
 * total (elements when by_count, else weight) reaches target; *total_w = the row's whole weight.
 * Thread t owns bins kBins-1-2t and kBins-2-2t (the order runs from the highest bin down). */
__device__ Loc locate(const uint32_t *hc, const uint64_t *hw, uint64_t target, bool by_count, uint64_t *total_w) {
    static_assert(kBins == 2 * kThreads, "locate: two bins a thread");
    __shared__ Loc s_loc;
    if (threadIdx.x == 0) s_loc = Loc{-1, 0, 0};
    const int b0 = kBins - 1 - 2 * (int)threadIdx.x, b1 = b0 - 1;
    const uint64_t c0 = hc[b0], c1 = hc[b1], w0 = hw[b0], w1 = hw[b1];
    uint64_t tc, tw;
    const uint64_t bc = block_inclusive_scan(c0 + c1, &tc) - c0 - c1; /* its barriers order s_loc's reset */
    const uint64_t bw = block_inclusive_scan(w0 + w1, &tw) - w0 - w1;
    const uint64_t sel = by_count ? bc : bw, m0 = by_count ? c0 : w0, m1 = by_count ? c1 : w1;
    if (sel < target && sel + m0 >= target) s_loc = Loc{b0, bc, bw};
    else if (sel + m0 < target && sel + m0 + m1 >= target) s_loc = Loc{b1, bc + c0, bw + w0};
    __syncthreads();
    Loc l = s_loc;
    __syncthreads();
    *total_w = tw;
    return l;
}

/* Gathers the composite and fixed weight of every logit of the row in bin `bin` into lc / lw (at
 * most kListCap: the caller checked the bin's count) and returns how many, in every thread.
 * vec: 16-byte packs, four in flight a thread. Unordered (the order is in the composites). */
template <typename T, bool vec>
__device__ int collect(const T *x, int n, const Row &r, int bin, uint64_t *lc, uint64_t *lw) {
    constexpr int W = vec ? an_vec_width<T>::value : 1, U = vec ? 2 : 4; /* packs in flight a thread */
    __shared__ int s_n;
    if (threadIdx.x == 0) s_n = 0;
    __syncthreads();
    const int lane = threadIdx.x % 32, packs = n / W;
    auto take = [&](bool ok, float f, int i) { /* the whole warp calls it */
        uint32_t key = order_key(f);
        bool hit = ok && key_bin(key) == bin;
        unsigned ballot = __ballot_sync(0xffffffffu, hit);
        if (!ballot) return;
        int leader = __ffs(ballot) - 1, pos = 0;
        if (lane == leader) pos = atomicAdd(&s_n, __popc(ballot));
        pos = __shfl_sync(0xffffffffu, pos, leader) + __popc(ballot & ((1u << lane) - 1u));
        if (hit && pos < kListCap) lc[pos] = composite(key, i), lw[pos] = weight_of(f, r);
    };
    for (int base = 0; base < packs; base += U * (int)blockDim.x) {
        uint4 raw[U]; /* vec: the packs, loaded before any is used */
        float one[U]; /* scalar: the logits */
#pragma unroll
        for (int u = 0; u < U; u++) {
            int p = base + u * (int)blockDim.x + (int)threadIdx.x;
            if (p < packs) {
                if (vec) raw[u] = __ldg(reinterpret_cast<const uint4 *>(x) + p);
                else one[u] = an_load(x[p]);
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            int p = base + u * (int)blockDim.x + (int)threadIdx.x;
            float v[W];
            if (p < packs) {
                if (vec) an_unpack16<T>(raw[u], v);
                else v[0] = one[u];
            }
#pragma unroll
            for (int j = 0; j < W; j++) take(p < packs, p < packs ? v[j] : 0.0f, p * W + j);
        }
    }
    for (int base = packs * W; base < n; base += blockDim.x) { /* ids past the last whole pack */
        int i = base + (int)threadIdx.x;
        take(i < n, i < n ? an_load(x[i]) : 0.0f, i);
    }
    __syncthreads();
    int got = s_n;
    __syncthreads();
    return got;
}

struct Pick {
    uint64_t c;            /* the element's composite */
    uint64_t cum_c, cum_w; /* elements and weight of the order up to and including it */
};

/* The first element, in the order, at which the running total (elements when by_count, else
 * fixed weight) reaches target, among the elements of one bin, given the totals of the bins
 * before it (above_c, above_w) and above_w < target <= above_w + the bin's weight (or the same in
 * elements). Radix selection on the composite, 8 bits a pass from the top, warp-aggregated
 * shared-memory histograms of elements and weight; it stops at the first pass whose chosen digit
 * holds one element (the composite is unique, so at the latest after 7 passes). The elements come
 * from the list lc / lw (m of them; kRow false) or, for a bin too large for the list, from the
 * row itself (the logits re-read, keys and weights recomputed every pass; kRow true). */
template <typename T, bool kRow>
__device__ Pick resolve(const uint64_t *lc, const uint64_t *lw, int m, const T *x, int n, const Row &r, int bin,
                        uint64_t target, bool by_count, uint64_t above_c, uint64_t above_w) {
    __shared__ uint32_t hc[256];
    __shared__ unsigned long long hw[256], hany[256];
    __shared__ uint64_t s_prefix, s_mask, s_above_c, s_above_w, s_cnt, s_val, s_any;
    const int lane = threadIdx.x % 32, count = kRow ? n : m;
    uint64_t prefix = 0, mask = 0;
    for (int shift = 48; shift >= 0; shift -= 8) {
        for (int j = threadIdx.x; j < 256; j += blockDim.x) hc[j] = 0, hw[j] = 0;
        if (threadIdx.x == 0) s_cnt = 0;
        __syncthreads();
        for (int base = 0; base < count; base += blockDim.x) { /* the whole warp runs every iteration */
            int i = base + (int)threadIdx.x;
            bool in = false;
            uint64_t c = 0, w = 0;
            if (i < count) {
                if (kRow) {
                    float f = an_load(x[i]);
                    uint32_t key = order_key(f);
                    c = composite(key, i);
                    in = key_bin(key) == bin && (c & mask) == prefix;
                    if (in) w = weight_of(f, r);
                } else {
                    c = lc[i];
                    in = (c & mask) == prefix;
                    if (in) w = lw[i];
                }
            }
            uint32_t bucket = in ? (uint32_t)(c >> shift) & 255u : 256u;
            unsigned peers = __match_any_sync(0xffffffffu, bucket);
            uint32_t lo20 = __reduce_add_sync(peers, (uint32_t)(w & 0xfffffu));
            uint32_t hi20 = __reduce_add_sync(peers, (uint32_t)(w >> 20));
            if (in && lane == __ffs(peers) - 1) {
                atomicAdd(&hc[bucket], (uint32_t)__popc(peers));
                atomicAdd(&hw[bucket], (unsigned long long)lo20 + ((unsigned long long)hi20 << 20));
                hany[bucket] = c; /* read only when the bucket holds one element: then the only write */
            }
        }
        __syncthreads();
        if (threadIdx.x < 32) { /* lane l owns buckets 255 - 8l down to 248 - 8l, scanned high to low */
            uint64_t mc = 0, mw = 0;
            for (int j = 0; j < 8; j++) mc += hc[255 - 8 * lane - j], mw += hw[255 - 8 * lane - j];
            uint64_t ic = mc, iw = mw;
            for (int off = 1; off < 32; off *= 2) {
                uint64_t oc = __shfl_up_sync(0xffffffffu, ic, off), ow = __shfl_up_sync(0xffffffffu, iw, off);
                if (lane >= off) ic += oc, iw += ow;
            }
            uint64_t ac = above_c + ic - mc, aw = above_w + iw - mw; /* before this lane's buckets */
            uint64_t sel = by_count ? ac : aw, mine = by_count ? mc : mw;
            if (sel < target && sel + mine >= target) { /* exactly one lane */
                for (int j = 0; j < 8; j++) {
                    int b = 255 - 8 * lane - j;
                    uint64_t hb = by_count ? (uint64_t)hc[b] : (uint64_t)hw[b];
                    if (sel + hb >= target) {
                        s_prefix = prefix | ((uint64_t)b << shift);
                        s_mask = mask | (255ull << shift);
                        s_above_c = ac, s_above_w = aw;
                        s_cnt = hc[b], s_val = hw[b], s_any = hany[b];
                        break;
                    }
                    sel += hb, ac += hc[b], aw += hw[b];
                }
            }
        }
        __syncthreads();
        prefix = s_prefix, mask = s_mask, above_c = s_above_c, above_w = s_above_w;
        const uint64_t cnt = s_cnt, val = s_val, any = s_any;
        __syncthreads(); /* every thread has read them before the next pass rewrites them */
        if (cnt == 0) break; /* the target was out of range: never, for the callers' targets */
        if (cnt == 1) return Pick{any, above_c + 1, above_w + val};
    }
    return Pick{0xffffffull, 0, 0}; /* id 0 */
}

/* One query of the rule: the first element, in the order over the whole row, at which the
 * running total reaches target. The row's histogram names its bin; that bin's elements are
 * gathered into the shared list (unless it holds them already: *have) and resolved there, or,
 * past kListCap elements, resolved from the row. */
template <typename T, bool vec>
__device__ Pick query(const T *x, int n, const Row &r, const uint32_t *hc, const uint64_t *hw, uint64_t target,
                      bool by_count, uint64_t *lc, uint64_t *lw, int *have, int *m) {
    uint64_t total;
    Loc l = locate(hc, hw, target, by_count, &total);
    if (l.bin < 0) return Pick{0xffffffull, 0, 0};
    if (hc[l.bin] > (uint32_t)kListCap)
        return resolve<T, true>(lc, lw, 0, x, n, r, l.bin, target, by_count, l.before_c, l.before_w);
    if (*have != l.bin) *m = collect<T, vec>(x, n, r, l.bin, lc, lw), *have = l.bin;
    return resolve<T, false>(lc, lw, *m, x, n, r, l.bin, target, by_count, l.before_c, l.before_w);
}

/* The rule for one row a block (after the two sweeps): top-k, top-p, the draw, each a query. */
template <typename T, bool vec>
__global__ void __launch_bounds__(kThreads) sample_pick(const T *logits, SampleArgs a, const double *partial,
                                                        const uint32_t *bin_count, const uint64_t *bin_weight,
                                                        int32_t *tokens) {
    extern __shared__ uint64_t list[]; /* composites (kListCap), then weights (kListCap) */
    uint64_t *lc = list, *lw = list + kListCap;
    const int64_t b = blockIdx.x;
    const T *x = logits + b * a.V;
    const int n = a.allowed;
    const uint32_t *hc = bin_count + b * kBins;
    const uint64_t *hw = bin_weight + b * kBins;
    double mx = -INFINITY;
    for (int p = threadIdx.x; p < a.parts; p += blockDim.x) mx = fmax(mx, partial[b * a.parts + p]);
    const Row r = {a.temperature, block_max(mx)};
    int have = -1, m = 0;
    uint64_t total;
    (void)locate(hc, hw, 1, false, &total);
    /* top-k: the kept prefix ends at the k-th element; its mass */
    uint64_t mass = total;
    if (a.top_k > 0 && a.top_k < n) mass = query<T, vec>(x, n, r, hc, hw, (uint64_t)a.top_k, true, lc, lw, &have, &m).cum_w;
    /* top-p: the smallest prefix holding top_p of that mass (at least one element) */
    if (a.top_p < 1.0) {
        uint64_t target = (uint64_t)ceil(a.top_p * (double)mass);
        mass = query<T, vec>(x, n, r, hc, hw, target < 1 ? 1 : target, false, lc, lw, &have, &m).cum_w;
    }
    /* the draw: the first element whose running mass exceeds u * mass */
    double u = (double)(rng_at(a.seed, a.offset + (uint64_t)b) >> 11) * 0x1.0p-53;
    uint64_t target = (uint64_t)floor(u * (double)mass) + 1;
    Pick d = query<T, vec>(x, n, r, hc, hw, target > mass ? mass : target, false, lc, lw, &have, &m);
    if (threadIdx.x == 0) tokens[b] = composite_id(d.c);
}


/* The three launches of the sampling rule on the state's stream (rows 16-byte aligned: vec). */
template <typename T, bool vec>
an_status sample_launch(an_ctx *ctx, an_cuda_state *s, const T *logits, int64_t B, const SampleArgs &a,
                        double *partial, uint32_t *bin_count, uint64_t *bin_weight, int32_t *tokens) {
    const dim3 grid((unsigned)B, (unsigned)a.parts);
    sample_sweep_max<T><<<grid, kSweepThreads, 0, s->stream>>>(logits, a, partial, bin_count, bin_weight);
    AN_CUDA_LAUNCH_CHECK(ctx, "sample_sweep_max");
    sample_sweep_bins<T><<<grid, kSweepThreads, 0, s->stream>>>(logits, a, partial, bin_count, bin_weight);
    AN_CUDA_LAUNCH_CHECK(ctx, "sample_sweep_bins");
    const size_t smem = 2 * (size_t)kListCap * sizeof(uint64_t);
    AN_CUDA_CHECK(ctx, cudaFuncSetAttribute(sample_pick<T, vec>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    sample_pick<T, vec><<<(unsigned)B, kThreads, smem, s->stream>>>(logits, a, partial, bin_count, bin_weight, tokens);
    AN_CUDA_LAUNCH_CHECK(ctx, "sample_pick");
    return AN_OK;
}

an_status sample_dispatch(an_ctx *ctx, an_cuda_state *s, an_dtype dtype, const void *logits, int64_t B, int64_t V,
                          const SampleArgs &a, double *partial, uint32_t *bin_count, uint64_t *bin_weight,
                          int32_t *tokens) {
    AN_CUDA_DISPATCH_FLOAT(ctx, dtype, "sample", {
        const T *x = (const T *)logits;
        if (an_aligned16(logits) && (V * (int64_t)sizeof(T)) % 16 == 0)
            return sample_launch<T, true>(ctx, s, x, B, a, partial, bin_count, bin_weight, tokens);
        return sample_launch<T, false>(ctx, s, x, B, a, partial, bin_count, bin_weight, tokens);
    });
    return AN_OK;
}

an_status launch_sample(an_ctx *ctx, an_cuda_state *s, an_dtype dtype, const void *logits, int64_t B, int64_t V,
                        int64_t allowed, double temperature, int64_t top_k, double top_p, uint64_t seed,
                        uint64_t offset, int32_t *tokens) {
    /* blocks a row of the sweeps: about 8 a multiprocessor over the whole grid, >= 1024 logits each */
    const int n = (int)allowed;
    int64_t parts = ((int64_t)s->sm_count * 8 + B - 1) / B;
    parts = parts < 1 ? 1 : parts > (n + 1023) / 1024 ? (n + 1023) / 1024 : parts;
    const int chunk = (int)((n + parts - 1) / parts);
    parts = (n + chunk - 1) / chunk;
    const size_t bins = (size_t)B * kBins;
    const size_t bytes = bins * (sizeof(uint64_t) + sizeof(uint32_t)) + (size_t)B * (size_t)parts * sizeof(double);
    char why[256];
    char *scratch = (char *)an_cuda_malloc(s, bytes, why, sizeof why);
    AN_CHECK(ctx, scratch != nullptr, AN_ERR_INTERNAL, "sample: scratch for %lld rows: %s", (long long)B, why);
    uint64_t *bin_weight = (uint64_t *)scratch;
    double *partial = (double *)(bin_weight + bins);
    uint32_t *bin_count = (uint32_t *)(partial + (size_t)B * (size_t)parts);
    const SampleArgs a = {V, n, temperature, top_p, top_k, seed, offset, (int)parts, chunk};
    const an_status st = sample_dispatch(ctx, s, dtype, logits, B, V, a, partial, bin_count, bin_weight, tokens);
    an_cuda_free(s, scratch); /* stream order: a later owner of the block runs after these launches */
    return st;
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
    if (!greedy) return launch_sample(ctx, s, dtype, logits, B, V, allowed, temperature, top_k, top_p, seed, offset, tokens);
    AN_CUDA_DISPATCH_FLOAT(ctx, dtype, "sample", {
        if (an_aligned16(logits) && (V * (int64_t)sizeof(T)) % 16 == 0)
            argmax_rows<T, true><<<(unsigned)B, kThreads, 0, s->stream>>>((const T *)logits, V, (int)allowed, tokens);
        else
            argmax_rows<T, false><<<(unsigned)B, kThreads, 0, s->stream>>>((const T *)logits, V, (int)allowed, tokens);
    });
    AN_CUDA_LAUNCH_CHECK(ctx, "argmax_rows");
    return AN_OK;
}

} // extern "C"
