/* pdl.cuh — Programmatic Dependent Launch for the decode-step kernels (decode.cu, the decode part
 * of attention.cu, gemv.cu): a kernel launched with programmatic stream serialization may start
 * while the kernel before it on the stream is still running; it does only work that reads no
 * earlier kernel's output (an L2 prefetch of its weight rows) before an_pdl_wait, which returns
 * when the earlier kernels have completed and their writes are visible, and then lets the next
 * kernel start early (an_pdl_trigger). Without the launch attribute both are no-ops, and a kernel
 * after a normal launch waits as usual. Within a CUDA graph capture the dependency is kept as a
 * programmatic edge.
 *
 * Rule: every kernel launched through an_launch_pdl calls an_pdl_wait before its first read of
 * activations and before its first write (the caching allocator may hand it a buffer an earlier
 * kernel still reads). L2 prefetches are hints: never a correctness question. Before the wait a
 * kernel may read weights and a cached forward's row table and cache lengths: no kernel of the
 * forward writes them (the rows are uploaded before it, the lengths advance after its last layer,
 * model.c: forward_cached), and whatever wrote them before it completed before the chain began. */
#ifndef AN_PDL_CUH
#define AN_PDL_CUH

#include <utility>

#include "kernels/cuda_common.cuh"

/* kernel<<<grid, block, smem_bytes, s->stream>>>(args...) with the programmatic-serialization
 * attribute unless the state has it switched off (an_cuda_set_pdl; on by default). Returns the
 * launch's error code, cleared from the runtime's last-error slot (as AN_CUDA_CHECK does). */
template <typename... KArgs, typename... Args>
cudaError_t an_launch_pdl_smem(const an_cuda_state *s, void (*kernel)(KArgs...), dim3 grid, dim3 block,
                               size_t smem_bytes, Args &&...args) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem_bytes;
    cfg.stream = s->stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = s->no_pdl ? 0 : 1;
    cudaError_t err = cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
    if (err != cudaSuccess) (void)cudaGetLastError(); /* reported by the caller, not by the next launch check */
    return err;
}

/* The same without dynamic shared memory. */
template <typename... KArgs, typename... Args>
cudaError_t an_launch_pdl(const an_cuda_state *s, void (*kernel)(KArgs...), dim3 grid, dim3 block, Args &&...args) {
    return an_launch_pdl_smem(s, kernel, grid, block, 0, std::forward<Args>(args)...);
}

/* Waits until the kernels this one depends on have completed (a no-op without the attribute). */
__device__ __forceinline__ void an_pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

/* Lets the next kernel on the stream start launching (its own an_pdl_wait still waits for us). */
__device__ __forceinline__ void an_pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/* Prefetches the `bytes` at p into L2, the lanes of a warp taking 128-byte lines in turn. */
__device__ __forceinline__ void an_prefetch_l2_warp(const void *p, int64_t bytes, int lane) {
    const char *c = (const char *)p;
    for (int64_t off = (int64_t)lane * 128; off < bytes; off += 32 * 128)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(c + off));
}

#endif
