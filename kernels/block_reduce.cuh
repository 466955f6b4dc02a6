/* block_reduce.cuh — reductions shared by the row kernels (rmsnorm, softmax, cross-entropy,
 * attention): over groups of lanes, and block-wide a sum and an online (max, sum of exp) pair for
 * log-sum-exp.
 *
 * Rules: blockDim.x is a multiple of 32 and at most 1024, and every thread of the block calls the
 * reduction (it holds __syncthreads). The order of the additions depends only on blockDim.x, so a
 * launch of the same shape gives the same bits every time. Every thread receives the result. */
#ifndef AN_BLOCK_REDUCE_CUH
#define AN_BLOCK_REDUCE_CUH

#include <math.h>

#include "kernels/cuda_common.cuh"

/* The sum / max of x over each aligned group of W lanes (W a power of two, at most 32): a
 * butterfly from offset W/2 down, so every lane of a group gets the same bits. */
template <int W> __device__ __forceinline__ float an_lanes_sum(float x) {
#pragma unroll
    for (int off = W / 2; off > 0; off /= 2) x += __shfl_xor_sync(0xffffffffu, x, off);
    return x;
}
template <int W> __device__ __forceinline__ float an_lanes_max(float x) {
#pragma unroll
    for (int off = W / 2; off > 0; off /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, off));
    return x;
}

/* The sum of v over the block (F is float or double). */
template <typename F> __device__ __forceinline__ F an_block_sum(F v) {
    __shared__ F part[32];
#pragma unroll
    for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    __syncthreads(); /* part may still be read by an earlier call */
    if (lane == 0) part[warp] = v;
    __syncthreads();
    v = lane < (int)(blockDim.x / 32) ? part[lane] : F(0);
#pragma unroll
    for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

/* A running log-sum-exp: the largest value m seen and s = sum of exp(x - m). Empty: m = -inf,
 * s = 0. A NaN element makes s NaN; +-inf maxima are handled by an_lse_value. */
struct an_max_sum {
    float m, s;
};

__device__ __forceinline__ an_max_sum an_max_sum_add(an_max_sum a, float x) {
    if (x > a.m) {
        a.s = a.s * expf(a.m - x) + 1.0f; /* expf(-inf) = 0 for the first element */
        a.m = x;
    } else if (x != -INFINITY) {
        a.s += expf(x - a.m); /* NaN x stays NaN */
    }
    return a;
}

/* Commutative (the same bits either way), so the butterfly below gives every lane one value. */
__device__ __forceinline__ an_max_sum an_max_sum_merge(an_max_sum a, an_max_sum b) {
    float m = fmaxf(a.m, b.m);
    if (m == -INFINITY) return {m, 0.0f};
    float sa = a.s == 0.0f ? 0.0f : a.s * expf(a.m - m), sb = b.s == 0.0f ? 0.0f : b.s * expf(b.m - m);
    return {m, sa + sb};
}

/* log(sum exp(x)) of a merged pair; an infinite maximum is returned as it is (as the CPU does). */
__device__ __forceinline__ float an_lse_value(an_max_sum a) { return isinf(a.m) ? a.m : a.m + logf(a.s); }

__device__ __forceinline__ an_max_sum an_block_max_sum(an_max_sum v) {
    __shared__ float pm[32], ps[32];
#pragma unroll
    for (int off = 16; off > 0; off /= 2) {
        an_max_sum o = {__shfl_xor_sync(0xffffffffu, v.m, off), __shfl_xor_sync(0xffffffffu, v.s, off)};
        v = an_max_sum_merge(v, o);
    }
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    __syncthreads();
    if (lane == 0) {
        pm[warp] = v.m;
        ps[warp] = v.s;
    }
    __syncthreads();
    v = lane < (int)(blockDim.x / 32) ? an_max_sum{pm[lane], ps[lane]} : an_max_sum{-INFINITY, 0.0f};
#pragma unroll
    for (int off = 16; off > 0; off /= 2) {
        an_max_sum o = {__shfl_xor_sync(0xffffffffu, v.m, off), __shfl_xor_sync(0xffffffffu, v.s, off)};
        v = an_max_sum_merge(v, o);
    }
    return v;
}

/* Threads for a row kernel over rows of `cols` elements: a multiple of 32, at most `cap`. */
static inline int an_row_threads(int64_t cols, int cap) {
    int64_t t = (cols + 31) / 32 * 32;
    return (int)(t < 32 ? 32 : t > cap ? cap : t);
}

/* An integer id of either index dtype. */
__device__ __forceinline__ int64_t an_load_id(const void *ids, bool is64, int64_t i) {
    return is64 ? ((const int64_t *)ids)[i] : (int64_t)((const int32_t *)ids)[i];
}

#endif
