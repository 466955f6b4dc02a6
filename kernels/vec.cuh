/* vec.cuh — 16-byte vector access for the row kernels (rmsnorm, rope, the loss, the decode GEMVs):
 * a pack of 16 / sizeof(T) elements loaded or stored with one instruction, widened to fp32 or
 * rounded from it once.
 *
 * Rules: a pack's address must be 16-byte aligned; callers check that with an_aligned16 on every
 * pointer and take a scalar path otherwise. Conversions are those of cuda_common.cuh (round to
 * nearest even), so a vector path gives the same bits per element as the scalar one. */
#ifndef AN_VEC_CUH
#define AN_VEC_CUH

#include <stdint.h>

#include "kernels/cuda_common.cuh"  /* an_load, an_store */

/* Elements of T in 16 bytes: 4 floats, 8 bf16 or f16. */
template <typename T> struct an_vec_width {
    static const int value = 16 / (int)sizeof(T);
};

template <typename T> struct alignas(16) an_pack {
    T v[16 / sizeof(T)];
};

template <typename T> __device__ __forceinline__ an_pack<T> an_pack_load(const T *p) {
    return *reinterpret_cast<const an_pack<T> *>(p);
}

template <typename T> __device__ __forceinline__ void an_pack_store(T *p, const an_pack<T> &pk) {
    *reinterpret_cast<an_pack<T> *>(p) = pk;
}

/* The 16 / sizeof(T) elements of a 16-byte word (a uint4 load), widened to fp32. */
template <typename T> __device__ __forceinline__ void an_unpack16(const uint4 &v, float *out) {
    const T *e = reinterpret_cast<const T *>(&v);
#pragma unroll
    for (int i = 0; i < an_vec_width<T>::value; i++) out[i] = an_load(e[i]);
}

/* A 16-byte load through the read-only path that does not allocate in L1: for weights a kernel
 * reads once (the decode GEMVs), where caching them would only evict what is reused. */
__device__ __forceinline__ uint4 an_load_stream16(const void *p) {
    uint4 r;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p));
    return r;
}

/* True for NULL too (an absent operand does not block the vector path). */
static inline bool an_aligned16(const void *p) { return (uintptr_t)p % 16 == 0; }

#endif
