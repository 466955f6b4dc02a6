/* tma.cuh — mbarriers and the tensor memory accelerator's 2-D box copies (sm_90), shared by
 * gemm_decode.cu and gemm_wgmma.cu: barrier init / expect / arrive / wait, box loads that complete
 * on an mbarrier, box stores in bulk groups with their waits, the proxy fence between thread
 * writes and a store, the cluster's rank, barrier and remote mbarrier arrival (a load multicast
 * to several CTAs of a cluster), and the host's encoding of a row-major matrix's tensor map.
 * Shared addresses are 32-bit. */
#ifndef AN_TMA_CUH
#define AN_TMA_CUH

#include <cuda.h>         /* CUtensorMap */
#include <cudaTypedefs.h> /* PFN_cuTensorMapEncodeTiled_v12000 */
#include <cuda_fp16.h>
#include <stdint.h>
#include <type_traits>

namespace tma {

__device__ __forceinline__ void bar_init(uint32_t bar, int count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void bar_expect(uint32_t bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void bar_arrive(uint32_t bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void bar_wait(uint32_t bar, uint32_t parity) {
    asm volatile("{\n .reg .pred p;\n WAIT_%=:\n mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
                 " @!p bra WAIT_%=;\n}" ::"r"(bar),
                 "r"(parity)
                 : "memory");
}
/* The box at (c0, c1) (column, row) of map into shared dst; its bytes complete on bar. */
__device__ __forceinline__ void load(uint32_t dst, const void *map, int32_t c0, int32_t c1, uint32_t bar) {
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];"
                 ::"r"(dst), "l"(map), "r"(c0), "r"(c1), "r"(bar)
                 : "memory");
}
/* bytes (a multiple of 16, src 16-byte aligned) from global src into shared dst, completing on bar. */
__device__ __forceinline__ void load_bytes(uint32_t dst, const void *src, uint32_t bytes, uint32_t bar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(dst),
                 "l"(src), "r"(bytes), "r"(bar)
                 : "memory");
}
/* The box at (c0, c1) of map into dst of every CTA in mask of this one's cluster (the same
 * CTA-relative offset in each), its bytes completing on each one's bar at bar's offset. */
__device__ __forceinline__ void load_multicast(uint32_t dst, const void *map, int32_t c0, int32_t c1, uint32_t bar,
                                               uint16_t mask) {
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster"
                 " [%0], [%1, {%2, %3}], [%4], %5;" ::"r"(dst), "l"(map), "r"(c0), "r"(c1), "r"(bar), "h"(mask)
                 : "memory");
}

/* ---- thread-block clusters ---- */
__device__ __forceinline__ uint32_t cluster_rank() {
    uint32_t r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
}
/* Every thread of every CTA of the cluster: arrive (releasing this thread's writes) and wait. */
__device__ __forceinline__ void cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\n barrier.cluster.wait.acquire.aligned;" ::: "memory");
}
/* Arrives on the mbarrier at bar's offset in CTA rank's shared memory (this cluster's), with the
 * default (CTA-scope) release: a cluster-scope release waits for this thread's memory operations
 * to reach the whole cluster, which made every stage's hand-back about a stage's time late. */
__device__ __forceinline__ void bar_arrive_cluster(uint32_t bar, uint32_t rank) {
    asm volatile("{\n .reg .b32 remote;\n mapa.shared::cluster.u32 remote, %0, %1;\n"
                 " mbarrier.arrive.shared::cluster.b64 _, [remote];\n}" ::"r"(bar),
                 "r"(rank)
                 : "memory");
}

/* Shared src to the box at (c0, c1) of map (parts outside the tensor are not written). */
__device__ __forceinline__ void store(const void *map, int32_t c0, int32_t c1, uint32_t src) {
    asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%1, %2}], [%3];" ::"l"(map), "r"(c0),
                 "r"(c1), "r"(src)
                 : "memory");
}
__device__ __forceinline__ void store_commit() { asm volatile("cp.async.bulk.commit_group;" ::: "memory"); }
/* Until the shared sources of all but N committed store groups have been read. */
template <int N> __device__ __forceinline__ void store_wait_read() {
    asm volatile("cp.async.bulk.wait_group.read %0;" ::"n"(N) : "memory");
}
/* Until all but N committed store groups are done. */
template <int N> __device__ __forceinline__ void store_wait() {
    asm volatile("cp.async.bulk.wait_group %0;" ::"n"(N) : "memory");
}
/* Shared-memory writes made visible to the tensor memory accelerator (the async proxy). */
__device__ __forceinline__ void fence_async_shared() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }

/* A tensor map over a (rows, cols) row-major matrix of T (b16) in boxes of (box_cols, box_rows),
 * swizzled by the box's row bytes (box_cols 64: the 128-byte swizzle, 32: the 64-byte one) or,
 * with swizzle false, not at all (any box_cols a multiple of 8), zero fill past the edges. Rows
 * pitch elements apart (0: cols; a multiple of 8), so a map may cover columns of a wider matrix. */
template <typename T>
cudaError_t encode_2d(PFN_cuTensorMapEncodeTiled_v12000 encode, CUtensorMap *map, const T *p, int64_t rows,
                      int64_t cols, int box_cols, int box_rows, bool swizzle = true, int64_t pitch = 0) {
    const cuuint64_t dims[2] = {(cuuint64_t)cols, (cuuint64_t)rows},
                     strides[1] = {(cuuint64_t)(pitch ? pitch : cols) * sizeof(T)};
    const cuuint32_t box[2] = {(cuuint32_t)box_cols, (cuuint32_t)box_rows}, elem[2] = {1, 1};
    CUresult r = encode(map, std::is_same<T, __half>::value ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
                        2, (void *)p, dims, strides, box, elem, CU_TENSOR_MAP_INTERLEAVE_NONE,
                        !swizzle ? CU_TENSOR_MAP_SWIZZLE_NONE
                        : box_cols == 64 ? CU_TENSOR_MAP_SWIZZLE_128B
                                         : CU_TENSOR_MAP_SWIZZLE_64B,
                        CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    return r == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
}

} // namespace tma

#endif
