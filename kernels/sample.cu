/* sample.cu — choosing the next token of every row of a logits matrix on the GPU, so generation
 * copies B token ids to the host per step instead of B x V logits: greedy argmax, and the
 * temperature / top-k / top-p / one-draw rule of src/model/sample.c (an_sample_token).
 *
 * Rules: greedy splits each row over up to 32 blocks and merges their winners with one warp a
 * row; it compares the logits as they are (exact for f32/bf16/f16), ties go to the lowest id and
 * NaN is skipped unless it sits at id 0, as the CPU's argmax does. Sampling computes x = logit / temperature
 * and the weights w = exp(x - max x) in float64 like the CPU, then holds each weight as an integer
 * of 2^-40 units: every sum below is an integer sum, exact and independent of the thread order, so
 * a seed repeats a run bit for bit. The order is the CPU's sort order (probability descending, id
 * ascending), as one integer a logit: the composite (order key of the logit, then 2^24-1 - id),
 * larger first. Every question of the rule (the k-th element, the top-p element, the drawn
 * element) is "the first element at which a running total of elements or weight reaches a
 * target". Four launches: (1) many blocks a row take each row's max of x; (2) many blocks a row
 * compute every weight once and add it to the row's histogram over 2048 bins (the key's top 11
 * bits: elements and weight a bin), and the row's last block plans which bins the questions can
 * land on (the k-th element's bin and those above it; or top-p's bin, known from the whole mass,
 * and the bins the draw can reach from it); (3) many blocks a row gather the planned bins'
 * elements (composite and weight) into the row's list; (4) one block a row loads the list into
 * shared memory and answers each question: the histogram's prefix sums name the bin, radix
 * passes over the bits that differ inside that bin pick the element. A bin the plan missed, or a
 * plan of more than kListCap elements, is gathered by that block itself; a bin of more than
 * kListCap elements (all logits equal, or in one narrow range) is resolved from the row, pass by
 * pass: slower, the same result. Nothing is sorted and nothing read back to the host, so the
 * step can be captured in a graph; the scratch (histograms, maxima and a list of up to kListCap
 * elements: about 210 KB a row) comes from the state's caching allocator. Row b draws its uniform
 * number from counter offset + b of ctx's RNG stream (an_rng_at), as the CPU loop draws one per
 * row in order. */
#include "kernels/cuda_common.cuh"
#include "kernels/vec.cuh" /* an_vec_width, an_unpack16, an_aligned16 */

#include <math.h>

namespace {

constexpr int kThreads = 1024;
constexpr double kUnit = 1099511627776.0; /* 2^40: one weight of 1.0 in fixed point */
constexpr int kSweepThreads = 256;        /* the many-blocks-a-row sweeps */
constexpr int kMaxChunk = 4095;           /* logits a sweep block: its 32-bit weight halves cannot overflow */
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

/* Whether candidate (ov, oi) beats (v, id) for the greedy rule: a larger logit, or an equal one at
 * a lower id; id -1 is no candidate. A total order over the candidates (NaN never becomes one),
 * so any reduction order gives the same winner. */
__device__ __forceinline__ bool beats(float ov, int oi, float v, int id) {
    return oi >= 0 && (id < 0 || ov > v || (ov == v && oi < id));
}

/* (v, id) <- the best over the block's threads, in thread 0. */
__device__ __forceinline__ void block_best(float &v, int &id) {
    __shared__ float sv[32];
    __shared__ int si[32];
    for (int off = 16; off > 0; off /= 2) {
        const float ov = __shfl_xor_sync(0xffffffffu, v, off);
        const int oi = __shfl_xor_sync(0xffffffffu, id, off);
        if (beats(ov, oi, v, id)) v = ov, id = oi;
    }
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) sv[warp] = v, si[warp] = id;
    __syncthreads();
    if (warp == 0) {
        v = lane < (int)(blockDim.x / 32) ? sv[lane] : -INFINITY;
        id = lane < (int)(blockDim.x / 32) ? si[lane] : -1;
        for (int off = 16; off > 0; off /= 2) {
            const float ov = __shfl_xor_sync(0xffffffffu, v, off);
            const int oi = __shfl_xor_sync(0xffffffffu, id, off);
            if (beats(ov, oi, v, id)) v = ov, id = oi;
        }
    }
}

/* Greedy, part 1: block (row, slice) takes the best logit of its slice of the row's packs (pps
 * packs a slice; the last slice also the ids past the last whole pack), NaN skipped. vec: rows
 * 16-byte aligned (the base and V * sizeof(T)): 16-byte packs, 4 in flight a thread. Many blocks a
 * row: batch 1 reads its 300 KB (151936 logits) over 32 blocks instead of one. */
template <typename T, bool vec>
__global__ void __launch_bounds__(kSweepThreads) argmax_slices(const T *logits, int64_t V, int allowed, int pps,
                                                               float *best_v, int *best_id) {
    constexpr int W = vec ? an_vec_width<T>::value : 1;
    const int64_t row = blockIdx.x;
    const int slice = blockIdx.y, slices = gridDim.y;
    const T *x = logits + row * V;
    const int packs = allowed / W, p_end = (slice + 1) * pps < packs ? (slice + 1) * pps : packs;
    float best = -INFINITY;
    int id = -1;
#pragma unroll 4
    for (int p = slice * pps + (int)threadIdx.x; p < p_end; p += blockDim.x) { /* ids ascend: strict > keeps the lowest */
        float v[W];
        if (vec) an_unpack16<T>(__ldg(reinterpret_cast<const uint4 *>(x) + p), v);
        else v[0] = an_load(x[p]);
#pragma unroll
        for (int j = 0; j < W; j++)
            if (v[j] == v[j] && (id < 0 || v[j] > best)) best = v[j], id = p * W + j;
    }
    if (slice == slices - 1)
        for (int i = packs * W + threadIdx.x; i < allowed; i += blockDim.x) {
            const float v = an_load(x[i]);
            if (v == v && (id < 0 || v > best)) best = v, id = i;
        }
    block_best(best, id);
    if (threadIdx.x == 0) best_v[row * slices + slice] = best, best_id[row * slices + slice] = id;
}

/* Greedy, part 2: warp `row` merges the row's slices (lane s: slice s). As the CPU's argmax: the
 * lowest id of the largest logit, NaN skipped, except that a NaN at id 0 (or no logit but NaN)
 * gives id 0. */
template <typename T>
__global__ void __launch_bounds__(32) argmax_merge(const T *logits, int64_t V, int slices, const float *best_v,
                                                   const int *best_id, int32_t *tokens) {
    const int64_t row = blockIdx.x;
    const int lane = threadIdx.x;
    float v = lane < slices ? best_v[row * slices + lane] : -INFINITY;
    int id = lane < slices ? best_id[row * slices + lane] : -1;
    for (int off = 16; off > 0; off /= 2) {
        const float ov = __shfl_xor_sync(0xffffffffu, v, off);
        const int oi = __shfl_xor_sync(0xffffffffu, id, off);
        if (beats(ov, oi, v, id)) v = ov, id = oi;
    }
    if (lane == 0) {
        const float first = an_load(logits[row * V]);
        tokens[row] = first != first || id < 0 ? 0 : id;
    }
}

struct Row {
    double temperature, max; /* max of logit / temperature */
};

/* logit / temperature in float64, as the CPU (a division by 1 is exact, so it is skipped). */
__device__ __forceinline__ double scaled(float f, double temperature) {
    return temperature == 1.0 ? (double)f : (double)f / temperature;
}

/* The weight exp(x / temperature - max) of logit value f, in 2^-40 units (<= 2^40). */
__device__ __forceinline__ uint64_t weight_of(float f, const Row &r) {
    double w = exp(scaled(f, r.temperature) - r.max);
    return (uint64_t)__double2ull_rn(w * kUnit);
}

/* The order as one integer: larger composite = earlier (key descending, then id ascending; ids
 * < 2^23). The top 11 bits of the key (its bin) are the composite's bits 55..45. */
__device__ __forceinline__ uint64_t composite(uint32_t key, int id) {
    return ((uint64_t)key << 24) | (uint64_t)(0xffffffu - (uint32_t)id);
}
__device__ __forceinline__ int composite_id(uint64_t c) { return (int)(0xffffffu - (uint32_t)(c & 0xffffffu)); }
__device__ __forceinline__ int key_bin(uint32_t key) { return (int)(key >> (32 - kBinBits)); }
__device__ __forceinline__ int composite_bin(uint64_t c) { return (int)(c >> (56 - kBinBits)); }

/* The draw's target for a kept mass: the first element whose running mass exceeds u * mass. */
__device__ __forceinline__ uint64_t draw_target(double u, uint64_t mass) {
    uint64_t target = (uint64_t)floor(u * (double)mass) + 1;
    return target > mass ? mass : target;
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
    int parts, chunk; /* blocks a row of the sweeps, logits each (<= kMaxChunk; the last may be shorter) */
};

/* Row b's uniform number: counter offset + b of the RNG stream (an_rng_uniform's 53 bits). */
__device__ __forceinline__ double row_uniform(const SampleArgs &a, int64_t b) {
    return (double)(rng_at(a.seed, a.offset + (uint64_t)b) >> 11) * 0x1.0p-53;
}

/* The bins sweep 3 gathers for a row: [lo1, hi1] and [lo2, hi2] (empty: lo > hi). */
struct Plan {
    int lo1, hi1, lo2, hi2;
    int ok; /* 1: the bins hold at most kListCap elements and are gathered into the row's list */
};
__device__ __forceinline__ bool planned(const Plan &p, int bin) {
    return (bin >= p.lo1 && bin <= p.hi1) || (bin >= p.lo2 && bin <= p.hi2);
}

/* The per-row scratch (caching allocator; stream-ordered, so the next call may reuse it at once). */
struct Scratch {
    double *partial;           /* (B, parts): sweep 1's maxima */
    uint64_t *bin_weight;      /* (B, kBins): the histogram's weight a bin */
    uint32_t *bin_count;       /* (B, kBins): its elements a bin */
    Plan *plan;                /* (B) */
    uint32_t *ticket;          /* (B): blocks of sweep 2 done (the last one plans) */
    uint32_t *list_n;          /* (B): elements gathered by sweep 3 */
    uint64_t *list_c, *list_w; /* (B, kListCap): their composites and weights */
};

/* The row's max (every thread), from sweep 1's partial maxima. */
__device__ double row_max(const SampleArgs &a, const Scratch &s, int64_t b) {
    double m = -INFINITY;
    for (int p = threadIdx.x; p < a.parts; p += blockDim.x) m = fmax(m, s.partial[b * a.parts + p]);
    return block_max(m);
}

struct Loc {
    int bin;                     /* -1: the target is past the row's total (never, for the callers' targets) */
    uint64_t before_c, before_w; /* elements and weight of the bins before it in the order */
};

/* The bin of the row's histogram holding the first element, in the order, at which the running
 * total (elements when by_count, else weight) reaches target; *total_w = the row's whole weight.
 * Thread t owns kPer bins from kBins-1-kPer*t down (the order runs from the highest bin down). */
template <int kPer>
__device__ Loc locate(const uint32_t *hc, const uint64_t *hw, uint64_t target, bool by_count, uint64_t *total_w) {
    __shared__ Loc s_loc;
    if (threadIdx.x == 0) s_loc = Loc{-1, 0, 0};
    const int top = kBins - 1 - kPer * (int)threadIdx.x;
    uint64_t c[kPer], w[kPer], sc = 0, sw = 0;
#pragma unroll
    for (int j = 0; j < kPer; j++) {
        c[j] = __ldcg(hc + top - j);
        w[j] = __ldcg(reinterpret_cast<const unsigned long long *>(hw) + top - j);
        sc += c[j], sw += w[j];
    }
    uint64_t tc, tw;
    uint64_t bc = block_inclusive_scan(sc, &tc) - sc; /* its barriers order s_loc's reset */
    uint64_t bw = block_inclusive_scan(sw, &tw) - sw;
    uint64_t sel = by_count ? bc : bw;
    if (sel < target && sel + (by_count ? sc : sw) >= target) { /* exactly one thread */
#pragma unroll
        for (int j = 0; j < kPer; j++) {
            uint64_t m = by_count ? c[j] : w[j];
            if (sel + m >= target) {
                s_loc = Loc{top - j, bc, bw};
                break;
            }
            sel += m, bc += c[j], bw += w[j];
        }
    }
    __syncthreads();
    Loc l = s_loc;
    __syncthreads();
    *total_w = tw;
    return l;
}

/* Sweep 1, grid (B, parts): partial[b][part] = max over the part's logits of logit / temperature
 * (float64, as the CPU); the row's histogram and counters zeroed for sweeps 2 and 3. */
template <typename T>
__global__ void __launch_bounds__(kSweepThreads) sample_sweep_max(const T *logits, SampleArgs a, Scratch s) {
    const int64_t b = blockIdx.x;
    const T *x = logits + b * a.V;
    const int lo = (int)blockIdx.y * a.chunk, hi = min(a.allowed, lo + a.chunk);
    double m = -INFINITY;
    for (int i = lo + (int)threadIdx.x; i < hi; i += 4 * blockDim.x) { /* four loads in flight a thread */
        float f[4];
#pragma unroll
        for (int u = 0; u < 4; u++) f[u] = i + u * (int)blockDim.x < hi ? an_load(x[i + u * (int)blockDim.x]) : -INFINITY;
#pragma unroll
        for (int u = 0; u < 4; u++) m = fmax(m, scaled(f[u], a.temperature));
    }
    m = block_max(m);
    if (threadIdx.x == 0) s.partial[b * a.parts + blockIdx.y] = m;
    for (int j = (int)(blockIdx.y * blockDim.x + threadIdx.x); j < kBins; j += a.parts * (int)blockDim.x)
        s.bin_count[b * kBins + j] = 0, s.bin_weight[b * kBins + j] = 0;
    if (blockIdx.y == 0 && threadIdx.x == 0) s.ticket[b] = 0, s.list_n[b] = 0;
}

/* The plan of row b (by sweep 2's last block, from the finished histogram): the bins holding the
 * elements the rule's questions can land on. top-k: the k-th element's bin and all above it (top-p
 * and the draw stay inside the top k). Else top-p: its bin (known, as the whole mass is) and the
 * bins the draw can reach for any top-p mass that bin allows (the draw's target only grows with
 * the mass). Else the draw's bin. */
template <int kPer>
__device__ void plan_row(const SampleArgs &a, const Scratch &s, int64_t b) {
    const uint32_t *hc = s.bin_count + b * kBins;
    const uint64_t *hw = s.bin_weight + b * kBins;
    const int n = a.allowed;
    const double u = row_uniform(a, b);
    Plan p = {1, 0, 1, 0, 0};
    bool found = true;
    uint64_t total;
    Loc l;
    if (a.top_k > 0 && a.top_k < n) {
        l = locate<kPer>(hc, hw, (uint64_t)a.top_k, true, &total);
        p.lo1 = l.bin, p.hi1 = kBins - 1, found = l.bin >= 0;
    } else {
        (void)locate<kPer>(hc, hw, 1, false, &total);
        if (a.top_p < 1.0) {
            uint64_t target = (uint64_t)ceil(a.top_p * (double)total);
            target = target < 1 ? 1 : target;
            l = locate<kPer>(hc, hw, target, false, &total);
            p.lo1 = p.hi1 = l.bin, found = l.bin >= 0;
            if (found) { /* the top-p mass lies in [target, the weight through its bin] */
                uint64_t through = l.before_w + __ldcg(reinterpret_cast<const unsigned long long *>(hw) + l.bin);
                Loc first = locate<kPer>(hc, hw, draw_target(u, target), false, &total);
                Loc last = locate<kPer>(hc, hw, draw_target(u, through), false, &total);
                p.lo2 = last.bin, p.hi2 = first.bin, found = first.bin >= 0 && last.bin >= 0;
            }
        } else {
            l = locate<kPer>(hc, hw, draw_target(u, total), false, &total);
            p.lo1 = p.hi1 = l.bin, found = l.bin >= 0;
        }
    }
    uint64_t mine = 0, count;
    for (int j = threadIdx.x; j < kBins; j += blockDim.x)
        if (planned(p, j)) mine += __ldcg(hc + j);
    block_inclusive_scan(mine, &count);
    p.ok = found && count <= (uint64_t)kListCap;
    if (threadIdx.x == 0) s.plan[b] = p;
}

/* Sweep 2, grid (B, parts): every logit's fixed weight (the float64 exp, done once per logit here
 * by many blocks a row), added to the row's histogram over bins (the key's top 11 bits): elements
 * and weight a bin. A warp whose logits share one bin adds them together first; else each lane
 * adds its own (32-bit shared atomics: the weight in 20-bit halves, which a part of <= kMaxChunk
 * logits cannot overflow); then one global atomic a bin a block. Integer sums: exact in any
 * order. The row's last block to finish plans sweep 3 (plan_row). */
template <typename T>
__global__ void __launch_bounds__(kSweepThreads) sample_sweep_bins(const T *logits, SampleArgs a, Scratch s) {
    __shared__ uint32_t cnt[kBins], wlo[kBins], whi[kBins];
    __shared__ bool s_last;
    const int64_t b = blockIdx.x;
    const T *x = logits + b * a.V;
    for (int j = threadIdx.x; j < kBins; j += blockDim.x) cnt[j] = 0, wlo[j] = 0, whi[j] = 0;
    const Row r = {a.temperature, row_max(a, s, b)}; /* its barriers also order the zeroing above */
    const int lo = (int)blockIdx.y * a.chunk, hi = min(a.allowed, lo + a.chunk), lane = threadIdx.x % 32;
    for (int base = lo; base < hi; base += blockDim.x) { /* the whole warp runs every iteration */
        int i = base + (int)threadIdx.x;
        bool in = i < hi;
        uint32_t bin = 0, lo20 = 0, hi20 = 0;
        if (in) {
            float f = an_load(x[i]);
            bin = (uint32_t)key_bin(order_key(f));
            uint64_t v = weight_of(f, r);
            lo20 = (uint32_t)(v & 0xfffffu), hi20 = (uint32_t)(v >> 20);
        }
        uint32_t bmin = __reduce_min_sync(0xffffffffu, in ? bin : 0xffffffffu);
        uint32_t bmax = __reduce_max_sync(0xffffffffu, in ? bin : 0u);
        if (bmin == bmax) { /* every lane holding a logit is in one bin (some lane is) */
            uint32_t sl = __reduce_add_sync(0xffffffffu, lo20), sh = __reduce_add_sync(0xffffffffu, hi20);
            uint32_t k = (uint32_t)__popc(__ballot_sync(0xffffffffu, in));
            if (lane == 0) atomicAdd(&cnt[bmin], k), atomicAdd(&wlo[bmin], sl), atomicAdd(&whi[bmin], sh);
        } else if (in) {
            atomicAdd(&cnt[bin], 1u), atomicAdd(&wlo[bin], lo20), atomicAdd(&whi[bin], hi20);
        }
    }
    __syncthreads();
    for (int j = threadIdx.x; j < kBins; j += blockDim.x)
        if (cnt[j]) {
            atomicAdd(&s.bin_count[b * kBins + j], cnt[j]);
            atomicAdd(reinterpret_cast<unsigned long long *>(s.bin_weight) + b * kBins + j,
                      (unsigned long long)wlo[j] + ((unsigned long long)whi[j] << 20));
        }
    __threadfence(); /* this block's sums are visible before its ticket */
    __syncthreads();
    if (threadIdx.x == 0) s_last = atomicAdd(&s.ticket[b], 1u) == (uint32_t)a.parts - 1;
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    plan_row<kBins / kSweepThreads>(a, s, b);
}

/* Sweep 3, grid (B, parts): the logits in the planned bins, with their weights, appended to the
 * row's list (unordered: the order is in the composites). Each block counts its own first, then
 * takes its place in the list with one atomic. Nothing when the plan is off. */
template <typename T>
__global__ void __launch_bounds__(kSweepThreads) sample_sweep_gather(const T *logits, SampleArgs a, Scratch s) {
    __shared__ uint32_t s_base;
    const int64_t b = blockIdx.x;
    const Plan p = s.plan[b];
    if (!p.ok) return;
    const T *x = logits + b * a.V;
    const Row r = {a.temperature, row_max(a, s, b)};
    const int lo = (int)blockIdx.y * a.chunk, hi = min(a.allowed, lo + a.chunk);
    uint32_t mine = 0;
    for (int i = lo + (int)threadIdx.x; i < hi; i += blockDim.x) mine += planned(p, key_bin(order_key(an_load(x[i]))));
    uint64_t total;
    uint32_t at = (uint32_t)(block_inclusive_scan(mine, &total) - mine); /* this thread's first place in the block's */
    if (total == 0) return;
    if (threadIdx.x == 0) s_base = atomicAdd(&s.list_n[b], (uint32_t)total);
    __syncthreads();
    at += s_base;
    for (int i = lo + (int)threadIdx.x; i < hi; i += blockDim.x) {
        float f = an_load(x[i]);
        uint32_t key = order_key(f);
        if (!planned(p, key_bin(key))) continue;
        if (at < (uint32_t)kListCap) {
            s.list_c[b * kListCap + at] = composite(key, i);
            s.list_w[b * kListCap + at] = weight_of(f, r);
        }
        at++;
    }
}

/* Gathers the composite and fixed weight of every logit of the row in bin `bin` into lc / lw (at
 * most kListCap: the caller checked the bin's count) and returns how many, in every thread: the
 * pick's own gathering, for a bin the plan did not gather. vec: 16-byte packs. */
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
 * before it (above_c, above_w) and above < target <= above + the bin's total. Radix selection on
 * the composite, 8 bits a pass, over only the bits that differ between the bin's elements (one
 * pass of OR / AND finds them: for bf16 logits the key's low 16 bits never do); shared-memory
 * histograms of elements and weight (a warp whose elements share a digit adds them together
 * first); it stops at the first pass whose chosen digit holds one element (the composite is
 * unique). The elements come from the list lc / lw (m of them, those of other bins skipped;
 * kRow false) or, for a bin too large for the list, from the row itself (the logits re-read,
 * keys and weights recomputed every pass; kRow true). */
template <typename T, bool kRow>
__device__ Pick resolve(const uint64_t *lc, const uint64_t *lw, int m, const T *x, int n, const Row &r, int bin,
                        uint64_t target, bool by_count, uint64_t above_c, uint64_t above_w) {
    __shared__ uint32_t hc[256], hp[3][256], s_or[2], s_and[2]; /* hp: list mode's weight in 14-bit pieces */
    __shared__ unsigned long long hw64[256], hany[256];            /* hw64: row mode's weight */
    __shared__ uint64_t s_prefix, s_mask, s_above_c, s_above_w, s_cnt, s_val, s_any;
    const unsigned full = 0xffffffffu;
    const int lane = threadIdx.x % 32, count = kRow ? n : m;
    auto load = [&](int i, uint64_t *c) -> bool { /* element i's composite; whether it is in the bin */
        if (kRow) {
            uint32_t key = order_key(an_load(x[i]));
            *c = composite(key, i);
            return key_bin(key) == bin;
        }
        *c = lc[i];
        return composite_bin(*c) == bin;
    };
    /* the bits that differ between the bin's elements */
    if (threadIdx.x < 2) s_or[threadIdx.x] = 0, s_and[threadIdx.x] = 0xffffffffu;
    __syncthreads();
    uint64_t any_or = 0, all_and = ~0ull;
    for (int i = threadIdx.x; i < count; i += blockDim.x) {
        uint64_t c;
        if (load(i, &c)) any_or |= c, all_and &= c;
    }
    {
        uint32_t ol = __reduce_or_sync(full, (uint32_t)any_or), oh = __reduce_or_sync(full, (uint32_t)(any_or >> 32));
        uint32_t al = __reduce_and_sync(full, (uint32_t)all_and), ah = __reduce_and_sync(full, (uint32_t)(all_and >> 32));
        if (lane == 0) atomicOr(&s_or[0], ol), atomicOr(&s_or[1], oh), atomicAnd(&s_and[0], al), atomicAnd(&s_and[1], ah);
    }
    __syncthreads();
    uint64_t todo = (((uint64_t)s_or[1] << 32) | s_or[0]) ^ (((uint64_t)s_and[1] << 32) | s_and[0]);
    uint64_t prefix = 0, mask = 0;
    for (;;) {
        const int shift = todo ? max(63 - __clzll((long long)todo) - 7, 0) : 0;
        for (int j = threadIdx.x; j < 256; j += blockDim.x) hc[j] = 0, hp[0][j] = hp[1][j] = hp[2][j] = 0, hw64[j] = 0;
        if (threadIdx.x == 0) s_cnt = 0;
        __syncthreads();
        for (int base = 0; base < count; base += blockDim.x) { /* the whole warp runs every iteration */
            int i = base + (int)threadIdx.x;
            uint64_t c = 0, w = 0;
            bool in = i < count && load(i, &c) && (c & mask) == prefix;
            if (in) w = kRow ? weight_of(an_load(x[i]), r) : lw[i];
            uint32_t bucket = (uint32_t)(c >> shift) & 255u;
            uint32_t bmin = __reduce_min_sync(full, in ? bucket : 0xffffffffu);
            uint32_t bmax = __reduce_max_sync(full, in ? bucket : 0u);
            /* w <= 2^40 in pieces of 14, 14 and 12 bits: a bucket of <= kListCap elements sums each
             * within 32 bits (row mode, with up to 2^23 elements, adds whole 64-bit weights) */
            uint32_t p0 = (uint32_t)(w & 0x3fffu), p1 = (uint32_t)((w >> 14) & 0x3fffu), p2 = (uint32_t)(w >> 28);
            if (bmin == bmax) { /* every lane holding an element has this digit (some lane does) */
                p0 = __reduce_add_sync(full, p0), p1 = __reduce_add_sync(full, p1), p2 = __reduce_add_sync(full, p2);
                unsigned ins = __ballot_sync(full, in);
                if (lane == __ffs(ins) - 1) {
                    atomicAdd(&hc[bucket], (uint32_t)__popc(ins));
                    if (kRow) atomicAdd(&hw64[bucket], (unsigned long long)p0 + ((unsigned long long)p1 << 14) +
                                                           ((unsigned long long)p2 << 28));
                    else atomicAdd(&hp[0][bucket], p0), atomicAdd(&hp[1][bucket], p1), atomicAdd(&hp[2][bucket], p2);
                    hany[bucket] = c; /* read only when the bucket holds one element: then the only write */
                }
            } else if (in) {
                atomicAdd(&hc[bucket], 1u);
                if (kRow) atomicAdd(&hw64[bucket], (unsigned long long)w);
                else atomicAdd(&hp[0][bucket], p0), atomicAdd(&hp[1][bucket], p1), atomicAdd(&hp[2][bucket], p2);
                hany[bucket] = c;
            }
        }
        __syncthreads();
        if (threadIdx.x < 32) { /* lane l owns buckets 255 - 8l down to 248 - 8l, scanned high to low */
            auto weight = [&](int b) -> uint64_t {
                return kRow ? (uint64_t)hw64[b]
                            : (uint64_t)hp[0][b] + ((uint64_t)hp[1][b] << 14) + ((uint64_t)hp[2][b] << 28);
            };
            uint64_t mc = 0, mw = 0;
            for (int j = 0; j < 8; j++) mc += hc[255 - 8 * lane - j], mw += weight(255 - 8 * lane - j);
            uint64_t ic = mc, iw = mw;
            for (int off = 1; off < 32; off *= 2) {
                uint64_t oc = __shfl_up_sync(full, ic, off), ow = __shfl_up_sync(full, iw, off);
                if (lane >= off) ic += oc, iw += ow;
            }
            uint64_t ac = above_c + ic - mc, aw = above_w + iw - mw; /* before this lane's buckets */
            uint64_t sel = by_count ? ac : aw, mine = by_count ? mc : mw;
            if (sel < target && sel + mine >= target) { /* exactly one lane */
                for (int j = 0; j < 8; j++) {
                    int b = 255 - 8 * lane - j;
                    uint64_t wb = weight(b), hb = by_count ? (uint64_t)hc[b] : wb;
                    if (sel + hb >= target) {
                        s_prefix = prefix | ((uint64_t)b << shift);
                        s_mask = mask | (255ull << shift);
                        s_above_c = ac, s_above_w = aw;
                        s_cnt = hc[b], s_val = wb, s_any = hany[b];
                        break;
                    }
                    sel += hb, ac += hc[b], aw += wb;
                }
            }
        }
        __syncthreads();
        prefix = s_prefix, mask = s_mask, above_c = s_above_c, above_w = s_above_w;
        const uint64_t cnt = s_cnt, val = s_val, any = s_any;
        __syncthreads(); /* every thread has read them before the next pass rewrites them */
        if (cnt == 1) return Pick{any, above_c + 1, above_w + val};
        todo &= shift > 0 ? (1ull << shift) - 1 : 0; /* the bits below this digit */
        if (cnt == 0 || todo == 0) break; /* the target out of range: never, for the callers' targets */
    }
    return Pick{0xffffffull, 0, 0}; /* id 0 */
}

/* One question of the rule: the first element, in the order over the whole row, at which the
 * running total reaches target. The row's histogram names its bin. The shared list holds that
 * bin's elements when sweep 3 gathered it (*have == -2 and the plan has it: the plan's first bin
 * lies in [0, *na), the others in [*na, *m)) or this block did before (*have == bin); else the
 * block gathers the bin now or, past kListCap elements, resolves it from the row. */
template <typename T, bool vec>
__device__ Pick query(const T *x, int n, const Row &r, const uint32_t *hc, const uint64_t *hw, const Plan &plan,
                      uint64_t target, bool by_count, uint64_t *lc, uint64_t *lw, int *have, int *m, int na) {
    uint64_t total;
    Loc l = locate<kBins / kThreads>(hc, hw, target, by_count, &total);
    if (l.bin < 0) return Pick{0xffffffull, 0, 0};
    const uint64_t *qc = lc, *qw = lw;
    int qm = *m;
    if (*have == -2 && planned(plan, l.bin)) {
        if (l.bin == plan.lo1) qm = na;
        else qc += na, qw += na, qm = *m - na;
    } else if (*have != l.bin) {
        if (__ldcg(hc + l.bin) > (uint32_t)kListCap)
            return resolve<T, true>(lc, lw, 0, x, n, r, l.bin, target, by_count, l.before_c, l.before_w);
        *m = qm = collect<T, vec>(x, n, r, l.bin, lc, lw), *have = l.bin;
    }
    return resolve<T, false>(qc, qw, qm, x, n, r, l.bin, target, by_count, l.before_c, l.before_w);
}

/* The rule for one row a block (after the sweeps): top-k, top-p, the draw, each a question. */
template <typename T, bool vec>
__global__ void __launch_bounds__(kThreads) sample_pick(const T *logits, SampleArgs a, Scratch s, int32_t *tokens) {
    extern __shared__ uint64_t list[]; /* composites (kListCap), then weights (kListCap) */
    __shared__ int s_na, s_nb;
    uint64_t *lc = list, *lw = list + kListCap;
    const int64_t b = blockIdx.x;
    const T *x = logits + b * a.V;
    const int n = a.allowed, lane = threadIdx.x % 32;
    const uint32_t *hc = s.bin_count + b * kBins;
    const uint64_t *hw = s.bin_weight + b * kBins;
    const Row r = {a.temperature, row_max(a, s, b)};
    const Plan plan = s.plan[b];
    int have = -1, m = 0, na = 0;
    if (plan.ok) { /* sweep 3's list: the plan's first bin to the front, the other bins to the back */
        if (threadIdx.x == 0) s_na = 0, s_nb = 0;
        __syncthreads();
        m = (int)min(s.list_n[b], (uint32_t)kListCap);
        for (int base = 0; base < m; base += blockDim.x) { /* the whole warp runs every iteration */
            int i = base + (int)threadIdx.x;
            uint64_t c = 0, w = 0;
            if (i < m) c = s.list_c[b * kListCap + i], w = s.list_w[b * kListCap + i];
            bool front = i < m && composite_bin(c) == plan.lo1, back = i < m && !front;
            unsigned bf = __ballot_sync(0xffffffffu, front), bb = __ballot_sync(0xffffffffu, back);
            int pf = 0, pb = 0;
            if (lane == 0) pf = bf ? atomicAdd(&s_na, __popc(bf)) : 0, pb = bb ? atomicAdd(&s_nb, __popc(bb)) : 0;
            pf = __shfl_sync(0xffffffffu, pf, 0), pb = __shfl_sync(0xffffffffu, pb, 0);
            unsigned below = (1u << lane) - 1u;
            if (front) pf += __popc(bf & below), lc[pf] = c, lw[pf] = w;
            if (back) pb = m - 1 - (pb + __popc(bb & below)), lc[pb] = c, lw[pb] = w;
        }
        __syncthreads();
        na = s_na;
        have = -2;
    }
    /* top-k: the kept prefix ends at the k-th element; its mass (else the whole row's) */
    uint64_t mass;
    if (a.top_k > 0 && a.top_k < n)
        mass = query<T, vec>(x, n, r, hc, hw, plan, (uint64_t)a.top_k, true, lc, lw, &have, &m, na).cum_w;
    else
        (void)locate<kBins / kThreads>(hc, hw, 1, false, &mass);
    /* top-p: the smallest prefix holding top_p of that mass (at least one element) */
    if (a.top_p < 1.0) {
        uint64_t target = (uint64_t)ceil(a.top_p * (double)mass);
        mass = query<T, vec>(x, n, r, hc, hw, plan, target < 1 ? 1 : target, false, lc, lw, &have, &m, na).cum_w;
    }
    /* the draw: the first element whose running mass exceeds u * mass */
    Pick d = query<T, vec>(x, n, r, hc, hw, plan, draw_target(row_uniform(a, b), mass), false, lc, lw, &have, &m, na);
    if (threadIdx.x == 0) tokens[b] = composite_id(d.c);
}

/* The four launches of the sampling rule on the state's stream (rows 16-byte aligned: vec). */
template <typename T, bool vec>
an_status sample_launch(an_ctx *ctx, an_cuda_state *st, const T *logits, int64_t B, const SampleArgs &a,
                        const Scratch &s, int32_t *tokens) {
    const dim3 grid((unsigned)B, (unsigned)a.parts);
    sample_sweep_max<T><<<grid, kSweepThreads, 0, st->stream>>>(logits, a, s);
    AN_CUDA_LAUNCH_CHECK(ctx, "sample_sweep_max");
    sample_sweep_bins<T><<<grid, kSweepThreads, 0, st->stream>>>(logits, a, s);
    AN_CUDA_LAUNCH_CHECK(ctx, "sample_sweep_bins");
    sample_sweep_gather<T><<<grid, kSweepThreads, 0, st->stream>>>(logits, a, s);
    AN_CUDA_LAUNCH_CHECK(ctx, "sample_sweep_gather");
    const size_t smem = 2 * (size_t)kListCap * sizeof(uint64_t);
    AN_CUDA_CHECK(ctx, cudaFuncSetAttribute(sample_pick<T, vec>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    sample_pick<T, vec><<<(unsigned)B, kThreads, smem, st->stream>>>(logits, a, s, tokens);
    AN_CUDA_LAUNCH_CHECK(ctx, "sample_pick");
    return AN_OK;
}

an_status sample_dispatch(an_ctx *ctx, an_cuda_state *st, an_dtype dtype, const void *logits, int64_t B, int64_t V,
                          const SampleArgs &a, const Scratch &s, int32_t *tokens) {
    AN_CUDA_DISPATCH_FLOAT(ctx, dtype, "sample", {
        const T *x = (const T *)logits;
        if (an_aligned16(logits) && (V * (int64_t)sizeof(T)) % 16 == 0) return sample_launch<T, true>(ctx, st, x, B, a, s, tokens);
        return sample_launch<T, false>(ctx, st, x, B, a, s, tokens);
    });
    return AN_OK;
}

an_status launch_sample(an_ctx *ctx, an_cuda_state *st, an_dtype dtype, const void *logits, int64_t B, int64_t V,
                        int64_t allowed, double temperature, int64_t top_k, double top_p, uint64_t seed,
                        uint64_t offset, int32_t *tokens) {
    /* blocks a row of the sweeps: about 8 a multiprocessor over the whole grid, 1024 to kMaxChunk
     * logits each */
    const int64_t n = allowed, fewest = (n + kMaxChunk - 1) / kMaxChunk, most = (n + 1023) / 1024;
    int64_t parts = ((int64_t)st->sm_count * 8 + B - 1) / B;
    parts = parts > most ? most : parts;
    parts = parts < fewest ? fewest : parts < 1 ? 1 : parts;
    const int64_t chunk = (n + parts - 1) / parts; /* <= kMaxChunk */
    parts = (n + chunk - 1) / chunk;
    /* scratch: each array 16-byte aligned */
    auto up = [](size_t bytes) { return (bytes + 15) / 16 * 16; };
    const size_t rows = (size_t)B, list = rows * (size_t)kListCap * sizeof(uint64_t);
    const size_t sizes[] = {up(rows * (size_t)parts * sizeof(double)), up(rows * kBins * sizeof(uint64_t)),
                            up(rows * kBins * sizeof(uint32_t)), up(rows * sizeof(Plan)), up(rows * sizeof(uint32_t)),
                            up(rows * sizeof(uint32_t)), list, list};
    size_t bytes = 0;
    for (size_t sz : sizes) bytes += sz;
    char why[256];
    char *base = (char *)an_cuda_malloc(st, bytes, why, sizeof why);
    AN_CHECK(ctx, base != nullptr, AN_ERR_INTERNAL, "sample: scratch for %lld rows: %s", (long long)B, why);
    char *p = base;
    Scratch s;
    s.partial = (double *)p, p += sizes[0];
    s.bin_weight = (uint64_t *)p, p += sizes[1];
    s.bin_count = (uint32_t *)p, p += sizes[2];
    s.plan = (Plan *)p, p += sizes[3];
    s.ticket = (uint32_t *)p, p += sizes[4];
    s.list_n = (uint32_t *)p, p += sizes[5];
    s.list_c = (uint64_t *)p, p += sizes[6];
    s.list_w = (uint64_t *)p;
    const SampleArgs a = {V, (int)n, temperature, top_p, top_k, seed, offset, (int)parts, (int)chunk};
    const an_status status = sample_dispatch(ctx, st, dtype, logits, B, V, a, s, tokens);
    an_cuda_free(st, base); /* stream order: a later owner of the block runs after these launches */
    return status;
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
    /* greedy: slices of the row over enough blocks to fill the GPU twice (at most 32 a row, at least 256
     * packs each), then one warp a row merges them */
    const int64_t width = dtype == AN_F32 ? 4 : 8, packs = allowed / width;
    int64_t slices = (2 * (int64_t)s->sm_count + B - 1) / B, most = packs / kSweepThreads > 1 ? packs / kSweepThreads : 1;
    slices = slices < 32 ? slices : 32;
    slices = slices < most ? slices : most;
    const int pps = (int)((packs + slices - 1) / slices);
    char why[256];
    void *scratch = an_cuda_malloc(s, (size_t)(B * slices) * (sizeof(float) + sizeof(int)), why, sizeof why);
    AN_CHECK(ctx, scratch != nullptr, AN_ERR_INTERNAL, "sample: argmax scratch for %lld rows: %s", (long long)B, why);
    float *best_v = (float *)scratch;
    int *best_id = (int *)(best_v + B * slices);
    AN_CUDA_DISPATCH_FLOAT(ctx, dtype, "sample", {
        const dim3 grid((unsigned)B, (unsigned)slices);
        if (an_aligned16(logits) && (V * (int64_t)sizeof(T)) % 16 == 0)
            argmax_slices<T, true><<<grid, kSweepThreads, 0, s->stream>>>((const T *)logits, V, (int)allowed, pps, best_v, best_id);
        else
            argmax_slices<T, false><<<grid, kSweepThreads, 0, s->stream>>>((const T *)logits, V, (int)allowed,
                                                                            (int)((allowed + slices - 1) / slices), best_v, best_id);
        argmax_merge<T><<<(unsigned)B, 32, 0, s->stream>>>((const T *)logits, V, (int)slices, best_v, best_id, tokens);
    });
    an_cuda_free(s, scratch); /* stream order: a later owner of the block runs after these launches */
    AN_CUDA_LAUNCH_CHECK(ctx, "argmax");
    return AN_OK;
    return AN_OK;
}

} // extern "C"
