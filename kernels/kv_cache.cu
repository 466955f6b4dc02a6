/* kv_cache.cu — the KV cache's per-step bookkeeping on the device: positions of the new tokens,
 * appending their keys and values, advancing the lengths. The (row, length) tables live in device
 * memory (model/kv_cache.h), so a decode step uploads nothing and can be replayed as a CUDA graph.
 * Rules: rows are distinct and were validated by the host against its mirror of the lengths;
 * the kernels still never write past a row's capacity. Copies are bit for bit. */
#include "kernels/cuda_common.cuh"
#include "kernels/pdl.cuh" /* an_launch_pdl for the advance */

#include <stdint.h>

namespace {

__global__ void positions_kernel(const int64_t *rows, const int64_t *lengths, int64_t B, int64_t T, int64_t *pos) {
    int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i < B * T) pos[i] = lengths[rows[i / T]] + i % T;
}

/* One block per (token, k or v); 16-byte words when everything is 16-byte aligned, else bytes. */
template <typename W>
__global__ void store_kernel(const char *k, const char *v, char *k_cache, char *v_cache, const int64_t *rows,
                             const int64_t *lengths, int64_t T, int64_t capacity, size_t token_bytes) {
    const int64_t i = blockIdx.x, b = i / T, t = i % T;
    const int64_t row = rows[b], slot = lengths[row] + t;
    if (slot < 0 || slot >= capacity) return;
    const char *src = (blockIdx.y == 0 ? k : v) + (size_t)i * token_bytes;
    char *dst = (blockIdx.y == 0 ? k_cache : v_cache) + ((size_t)row * (size_t)capacity + (size_t)slot) * token_bytes;
    const size_t words = token_bytes / sizeof(W);
    for (size_t w = threadIdx.x; w < words; w += blockDim.x) ((W *)dst)[w] = ((const W *)src)[w];
}

__global__ void advance_kernel(const int64_t *rows, int64_t *lengths, int64_t B, int64_t T) {
    an_pdl_wait(); /* every kernel of the step that reads the lengths has completed */
    an_pdl_trigger();
    int64_t b = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (b < B) lengths[rows[b]] += T;
}

bool aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

} // namespace

extern "C" {

an_status an_cuda_kv_positions(an_ctx *ctx, const int64_t *rows, const int64_t *lengths, int64_t B, int64_t T,
                               int64_t *positions) {
    AN_CUDA_STATE(ctx, s);
    if (B * T == 0) return AN_OK;
    positions_kernel<<<(unsigned)((B * T + 255) / 256), 256, 0, s->stream>>>(rows, lengths, B, T, positions);
    AN_CUDA_LAUNCH_CHECK(ctx, "kv positions_kernel");
    return AN_OK;
}

an_status an_cuda_kv_store(an_ctx *ctx, const void *k, const void *v, void *k_cache, void *v_cache, const int64_t *rows,
                           const int64_t *lengths, int64_t B, int64_t T, int64_t capacity, size_t token_bytes) {
    AN_CUDA_STATE(ctx, s);
    AN_CHECK(ctx, B * T <= INT32_MAX, AN_ERR_INPUT, "kv store: %lld tokens exceed the CUDA grid", (long long)(B * T));
    if (B * T == 0 || token_bytes == 0) return AN_OK;
    dim3 grid((unsigned)(B * T), 2);
    bool wide = token_bytes % 16 == 0 && aligned16(k) && aligned16(v) && aligned16(k_cache) && aligned16(v_cache);
    if (wide)
        store_kernel<uint4><<<grid, 128, 0, s->stream>>>((const char *)k, (const char *)v, (char *)k_cache,
                                                         (char *)v_cache, rows, lengths, T, capacity, token_bytes);
    else
        store_kernel<char><<<grid, 128, 0, s->stream>>>((const char *)k, (const char *)v, (char *)k_cache,
                                                        (char *)v_cache, rows, lengths, T, capacity, token_bytes);
    AN_CUDA_LAUNCH_CHECK(ctx, "kv store_kernel");
    return AN_OK;
}

an_status an_cuda_kv_advance(an_ctx *ctx, const int64_t *rows, int64_t *lengths, int64_t B, int64_t T) {
    AN_CUDA_STATE(ctx, s);
    if (B == 0) return AN_OK;
    /* in the decode chain (pdl.cuh): between the last layer's down_proj and the final norm */
    cudaError_t err = an_launch_pdl(s, advance_kernel, dim3((unsigned)((B + 255) / 256)), dim3(256), rows, lengths, B, T);
    AN_CHECK(ctx, err == cudaSuccess, AN_ERR_INTERNAL, "launch of the kv advance_kernel failed: %s",
             cudaGetErrorString(err));
    AN_CUDA_LAUNCH_CHECK(ctx, "kv advance_kernel");
    return AN_OK;
}

} // extern "C"
