/* adamw.cu — the AdamW update of one parameter's element range and the float64 sum of squares
 * behind the global gradient norm.
 *
 * Numerics: the update is src/optim/adamw.c's loop transcribed operation for operation in float64
 * with the explicitly rounded intrinsics (__dadd_rn, __dmul_rn, __ddiv_rn, __dsqrt_rn), so nvcc
 * contracts nothing into a fused multiply-add and every result is bit-identical to the CPU's
 * (C11 on x86-64: no contraction either). Stored values are rounded to fp32 once, and a bf16/f16
 * parameter receives its new master rounded to nearest even (as src/autograd/dtype.c does).
 * The sum of squares accumulates each element's square in float64 in a fixed order (per-thread
 * grid-stride sums, a fixed block tree, then one block over the partials in block order), so it
 * is bit-reproducible for a given n; it is not the CPU's sequential order, so the two norms can
 * differ in the last bits. */
#include "kernels/cuda_common.cuh"

#include <stdint.h>

namespace {

const int kThreads = 256;
const int kMaxBlocks = 1024; /* fixed, so the summation order depends only on n */

/* One element's update: src/optim/adamw.c's float64 operations in its order (see the top). */
template <typename P>
__device__ __forceinline__ void adamw_element(const an_adamw_scalars &k, double one_minus_beta1, double one_minus_beta2,
                                              float g32, float &master, float &exp_avg, float &exp_avg_sq, P *param) {
    /* CPU: g = (double)g32 * grad_scale; p = (double)master * decay */
    double g = __dmul_rn((double)g32, k.grad_scale);
    double p = __dmul_rn((double)master, k.decay);
    double m = exp_avg, v = exp_avg_sq;
    /* exp_avg = (float)(m + (1 - beta1) * (g - m)) */
    float m_new = __double2float_rn(__dadd_rn(m, __dmul_rn(one_minus_beta1, __dadd_rn(g, -m))));
    /* exp_avg_sq = (float)(beta2 * v + (1 - beta2) * g * g) */
    float v_new = __double2float_rn(__dadd_rn(__dmul_rn(k.beta2, v), __dmul_rn(__dmul_rn(one_minus_beta2, g), g)));
    exp_avg = m_new;
    exp_avg_sq = v_new;
    /* denom = sqrt((double)exp_avg_sq) / bc2_sqrt + eps */
    double denom = __dadd_rn(__ddiv_rn(__dsqrt_rn((double)v_new), k.bc2_sqrt), k.eps);
    /* master = (float)(p - step_size * (double)exp_avg / denom) */
    float w = __double2float_rn(__dadd_rn(p, -__ddiv_rn(__dmul_rn(k.step_size, (double)m_new), denom)));
    master = w;
    if (param) *param = an_store<P>(w);
}

template <typename G, typename P>
__global__ void adamw_kernel(an_adamw_scalars k, float *master, float *exp_avg, float *exp_avg_sq, const G *grad,
                             P *param, int64_t n) {
    const double one_minus_beta1 = __dadd_rn(1.0, -k.beta1), one_minus_beta2 = __dadd_rn(1.0, -k.beta2);
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        adamw_element(k, one_minus_beta1, one_minus_beta2, an_load(grad[i]), master[i], exp_avg[i], exp_avg_sq[i],
                      param ? param + i : (P *)nullptr);
}

/* Four elements per thread with 16-byte loads and stores of the f32 state (n4 groups of 4; the
 * caller checked 16-byte alignment of master, exp_avg, exp_avg_sq and 4-element alignment of
 * grad and param). Each element's arithmetic is adamw_element's, so results are the same bits. */
template <typename G, typename P>
__global__ void adamw_vec4_kernel(an_adamw_scalars k, float4 *master, float4 *exp_avg, float4 *exp_avg_sq,
                                  const G *grad, P *param, int64_t n4) {
    const double one_minus_beta1 = __dadd_rn(1.0, -k.beta1), one_minus_beta2 = __dadd_rn(1.0, -k.beta2);
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n4; i += stride) {
        float4 w = master[i], m = exp_avg[i], v = exp_avg_sq[i];
        float g[4];
#pragma unroll
        for (int j = 0; j < 4; j++) g[j] = an_load(grad[4 * i + j]);
        P out[4];
        P *po = param ? out : (P *)nullptr;
        adamw_element(k, one_minus_beta1, one_minus_beta2, g[0], w.x, m.x, v.x, po ? po + 0 : po);
        adamw_element(k, one_minus_beta1, one_minus_beta2, g[1], w.y, m.y, v.y, po ? po + 1 : po);
        adamw_element(k, one_minus_beta1, one_minus_beta2, g[2], w.z, m.z, v.z, po ? po + 2 : po);
        adamw_element(k, one_minus_beta1, one_minus_beta2, g[3], w.w, m.w, v.w, po ? po + 3 : po);
        master[i] = w, exp_avg[i] = m, exp_avg_sq[i] = v;
        if (param)
#pragma unroll
            for (int j = 0; j < 4; j++) param[4 * i + j] = out[j];
    }
}

/* Sum of the block's doubles in a fixed order; thread 0 gets it. */
__device__ __forceinline__ double block_sum(double v) {
    __shared__ double warp_sums[32];
#pragma unroll
    for (int off = 16; off > 0; off /= 2) v = __dadd_rn(v, __shfl_down_sync(0xffffffffu, v, off));
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (int)(blockDim.x / 32) ? warp_sums[lane] : 0.0;
#pragma unroll
        for (int off = 16; off > 0; off /= 2) v = __dadd_rn(v, __shfl_down_sync(0xffffffffu, v, off));
    }
    return v;
}

template <typename T> __global__ void sum_squares_kernel(const T *x, int64_t n, double *partial) {
    double acc = 0.0;
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        double v = (double)an_load(x[i]);
        acc = __dadd_rn(acc, __dmul_rn(v, v));
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

/* *out = sum of partial[0 .. count); one block of kMaxBlocks threads. */
__global__ void sum_finish_kernel(const double *partial, int count, double *out) {
    double v = (int)threadIdx.x < count ? partial[threadIdx.x] : 0.0;
    v = block_sum(v);
    if (threadIdx.x == 0) *out = v;
}

template <typename G> an_status adamw_grad(an_ctx *ctx, const an_adamw_scalars *k, float *master, float *exp_avg,
                                           float *exp_avg_sq, const G *grad, void *param, an_dtype param_dtype,
                                           int64_t n) {
    AN_CUDA_STATE(ctx, s);
    bool vec = n % 4 == 0 && (uintptr_t)master % 16 == 0 && (uintptr_t)exp_avg % 16 == 0 &&
               (uintptr_t)exp_avg_sq % 16 == 0 && (uintptr_t)grad % (4 * sizeof(G)) == 0 &&
               (!param || (uintptr_t)param % (4 * an_dtype_size(param_dtype)) == 0);
    if (vec) { /* the usual case: whole tensors from the caching allocator */
        unsigned blocks4 = an_cuda_blocks(s, n / 4, kThreads);
        float4 *w4 = (float4 *)master, *m4 = (float4 *)exp_avg, *v4 = (float4 *)exp_avg_sq;
        if (!param)
            adamw_vec4_kernel<G, float><<<blocks4, kThreads, 0, s->stream>>>(*k, w4, m4, v4, grad, nullptr, n / 4);
        else if (param_dtype == AN_BF16)
            adamw_vec4_kernel<G, __nv_bfloat16><<<blocks4, kThreads, 0, s->stream>>>(*k, w4, m4, v4, grad,
                                                                                     (__nv_bfloat16 *)param, n / 4);
        else if (param_dtype == AN_F16)
            adamw_vec4_kernel<G, __half><<<blocks4, kThreads, 0, s->stream>>>(*k, w4, m4, v4, grad, (__half *)param,
                                                                              n / 4);
        else if (param_dtype == AN_F32)
            adamw_vec4_kernel<G, float><<<blocks4, kThreads, 0, s->stream>>>(*k, w4, m4, v4, grad, (float *)param,
                                                                             n / 4);
        else
            return an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__, "adamw: no CUDA kernel for %s parameters",
                                an_dtype_name(param_dtype));
        AN_CUDA_LAUNCH_CHECK(ctx, "adamw_vec4_kernel");
        return AN_OK;
    }
    unsigned blocks = an_cuda_blocks(s, n, kThreads);
    if (!param) {
        adamw_kernel<G, float><<<blocks, kThreads, 0, s->stream>>>(*k, master, exp_avg, exp_avg_sq, grad, nullptr, n);
    } else {
        AN_CHECK(ctx, param_dtype == AN_BF16 || param_dtype == AN_F16 || param_dtype == AN_F32, AN_ERR_INPUT,
                 "adamw: no CUDA kernel for %s parameters", an_dtype_name(param_dtype));
        if (param_dtype == AN_BF16)
            adamw_kernel<G, __nv_bfloat16><<<blocks, kThreads, 0, s->stream>>>(*k, master, exp_avg, exp_avg_sq, grad,
                                                                               (__nv_bfloat16 *)param, n);
        else if (param_dtype == AN_F16)
            adamw_kernel<G, __half><<<blocks, kThreads, 0, s->stream>>>(*k, master, exp_avg, exp_avg_sq, grad,
                                                                        (__half *)param, n);
        else
            adamw_kernel<G, float><<<blocks, kThreads, 0, s->stream>>>(*k, master, exp_avg, exp_avg_sq, grad,
                                                                       (float *)param, n);
    }
    AN_CUDA_LAUNCH_CHECK(ctx, "adamw_kernel");
    return AN_OK;
}

} // namespace

extern "C" {

an_status an_cuda_adamw(an_ctx *ctx, const an_adamw_scalars *k, float *master, float *exp_avg, float *exp_avg_sq,
                        const void *grad, an_dtype grad_dtype, void *param, an_dtype param_dtype, int64_t n) {
    AN_CHECK(ctx, n >= 0, AN_ERR_INTERNAL, "adamw: negative element count %lld", (long long)n);
    if (n == 0) return AN_OK;
    AN_CUDA_DISPATCH_FLOAT(ctx, grad_dtype, "adamw",
                           return adamw_grad<T>(ctx, k, master, exp_avg, exp_avg_sq, (const T *)grad, param,
                                                param_dtype, n));
    return AN_OK;
}

an_status an_cuda_sum_squares(an_ctx *ctx, an_dtype dtype, const void *x, int64_t n, double *sum) {
    AN_CHECK(ctx, n >= 0, AN_ERR_INTERNAL, "sum_squares: negative element count %lld", (long long)n);
    AN_CUDA_STATE(ctx, s);
    if (n == 0) return an_cuda_memset(ctx, sum, 0, sizeof *sum);
    int64_t per_block = (int64_t)kThreads * 4; /* at least 4 elements per thread before adding blocks */
    int64_t blocks64 = (n + per_block - 1) / per_block;
    int blocks = (int)(blocks64 > kMaxBlocks ? kMaxBlocks : blocks64);
    void *scratch = nullptr;
    AN_TRY(an_cuda_scratch(ctx, kMaxBlocks * sizeof(double), &scratch));
    double *partial = (double *)scratch;
    AN_CUDA_DISPATCH_FLOAT(ctx, dtype, "sum_squares", {
        sum_squares_kernel<T><<<blocks, kThreads, 0, s->stream>>>((const T *)x, n, partial);
        AN_CUDA_LAUNCH_CHECK(ctx, "sum_squares_kernel");
    });
    sum_finish_kernel<<<1, kMaxBlocks, 0, s->stream>>>(partial, blocks, sum);
    AN_CUDA_LAUNCH_CHECK(ctx, "sum_finish_kernel");
    return AN_OK;
}

} // extern "C"
