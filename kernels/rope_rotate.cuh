/* rope_rotate.cuh — the one rotation every rotary path applies (kernels/rope.cu's pass, decode.cu's
 * fused decode kernels, gemm_wgmma.cu's PROJ epilogue, attention_wgmma.cu's turn back), so they
 * give the same bits.
 *
 * Numerics: (x1, x2) turned by (c, s) in fp32, each product and sum rounded on its own (no fused
 * multiply-add): o1 = x1 c - x2 s, o2 = x2 c + x1 s. Turning back is the same with -s. */
#ifndef AN_ROPE_ROTATE_CUH
#define AN_ROPE_ROTATE_CUH

__device__ __forceinline__ void an_rope_rotate(float x1, float x2, float c, float s, float *o1, float *o2) {
    *o1 = __fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s));
    *o2 = __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s));
}

#endif
