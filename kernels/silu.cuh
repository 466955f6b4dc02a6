/* silu.cuh — sigmoid and silu in fp32, one formula for every kernel that forms them (the swiglu
 * passes and their gradients (an_swiglu_grad) in elementwise.cu, the decode kernels, the GEMM epilogues of
 * gemm_decode.cu and gemm_wgmma.cu), so a fused path and the separate kernels it replaces give the
 * same bits.
 *
 * Numerics: the fast exponential and reciprocal (ex2.approx, rcp.approx: a few units in the last
 * place of fp32, 2^-21 relative and less) instead of the correctly rounded expf and division, whose
 * instruction sequences made the swiglu epilogue of the training GEMM cost more than its stores
 * (docs/performance.md). The results are rounded to bf16 or f16 (2^-9, 2^-12) after. Large |x|
 * saturate cleanly: exp(-x) overflows to inf and the reciprocal gives 0. */
#ifndef AN_SILU_CUH
#define AN_SILU_CUH

__device__ __forceinline__ float an_sigmoid(float x) { return __fdividef(1.0f, 1.0f + __expf(-x)); }
__device__ __forceinline__ float an_silu(float x) { return x * an_sigmoid(x); }
/* The swiglu's gradients at (g, u) for the upstream go: dg = go u silu'(g), du = go silu(g). */
__device__ __forceinline__ void an_swiglu_grad(float go, float g, float u, float *dg, float *du) {
    const float s = an_sigmoid(g), silu = g * s, dsilu = s * (1.0f + g * (1.0f - s));
    *dg = go * u * dsilu;
    *du = go * silu;
}

#endif
