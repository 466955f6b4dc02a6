/* mma.cuh — the warp-level tensor-core primitives the mma.sync kernels share (attention_mma.cu,
 * decode_attention.cu, gemm_decode.cu): m16n8k16 with fp32 accumulators for bf16 or f16 operands,
 * pair packing, ldmatrix (plain and transposed), and 16-byte asynchronous copies global -> shared.
 *
 * Fragment layout (PTX ISA, mma.m16n8k16): lane l holds, with g = l / 4 and t = l % 4, A rows g and
 * g + 8 at columns 2t, 2t + 1 (a[0], a[1]) and 2t + 8, 2t + 9 (a[2], a[3]); B column g at rows 2t,
 * 2t + 1 (b0) and 2t + 8, 2t + 9 (b1); C rows g (c[0], c[1]) and g + 8 (c[2], c[3]) at columns
 * 2t, 2t + 1. So a C tile of two adjacent 8-column blocks, packed in pairs, is an A fragment. */
#ifndef AN_MMA_CUH
#define AN_MMA_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>
#include <type_traits>

/* c (16x8 f32) += a (16x16, row) b (16x8, col) for operands of type TYPE ("bf16" or "f16"). */
#define AN_MMA_16816(TYPE, c, a, b0, b1)                                                                   \
    asm("mma.sync.aligned.m16n8k16.row.col.f32." TYPE "." TYPE ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "      \
        "{%8,%9}, {%0,%1,%2,%3};\n"                                                                        \
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])                                                   \
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1))

/* The MMA and the pair packing of T (__nv_bfloat16 or __half). */
template <typename T> struct Mma {
    static constexpr bool bf16 = std::is_same<T, __nv_bfloat16>::value;
    static __device__ __forceinline__ void run(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
        if constexpr (bf16) AN_MMA_16816("bf16", c, a, b0, b1);
        else AN_MMA_16816("f16", c, a, b0, b1);
    }
    /* lo in the low 16 bits, both rounded to nearest even */
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
        if constexpr (bf16) {
            __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
            return *reinterpret_cast<uint32_t *>(&v);
        } else {
            __half2 v = __floats2half2_rn(lo, hi);
            return *reinterpret_cast<uint32_t *>(&v);
        }
    }
};

__device__ __forceinline__ uint32_t smem_addr(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

/* 16 bytes global -> shared (a shared address), asynchronously; zero-filled when !valid (src is
 * then not read). */
__device__ __forceinline__ void cp_async16_at(uint32_t dst, const void *src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0)
                 : "memory");
}
__device__ __forceinline__ void cp_async16(void *dst, const void *src, bool valid) {
    cp_async16_at(smem_addr(dst), src, valid);
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
/* Waits until at most N of this thread's committed groups are still in flight. */
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

/* Four 8x8 b16 matrices, untransposed: lane l gives the shared address of a row of matrix l / 8,
 * and gets row l / 4, elements 2 (l % 4) (+1) of each in r[0..3]. */
__device__ __forceinline__ void ldsm_x4_at(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr)
                 : "memory");
}
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void *p) { ldsm_x4_at(r, smem_addr(p)); }

/* The same, each matrix transposed: lane l gets column l / 4, rows 2 (l % 4) (+1). From a
 * row-major (k, n) tile with lane l pointing at row l % 16, columns 8 (l / 16) on: the B fragments
 * of two adjacent 8-column blocks, r[0..1] for columns [0, 8), r[2..3] for [8, 16). */
__device__ __forceinline__ void ldsm_x4_trans_at(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr)
                 : "memory");
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const void *p) { ldsm_x4_trans_at(r, smem_addr(p)); }

#endif
