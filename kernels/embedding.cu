/* embedding.cu — the embedding gather (rows of a (V, D) table picked by ids) and its gradient, a
 * deterministic scatter-add into a dense (V, D) table gradient.
 *
 * Numerics: the gather copies elements as bytes (exact in every dtype). The gradient sorts the
 * token positions by id with CUB's stable radix sort (keys: ids as u32, values: positions), so
 * equal ids keep their positions in increasing order; one block per run of equal ids then sums
 * those rows of grad_out in fp32 in that order and writes the table row with =, after the whole
 * table was zeroed. No float atomics: two runs give the same bits. ids are checked by the op
 * (0 <= id < V); should one be outside anyway, the backward still never writes outside the table. */
#include "kernels/cuda_common.cuh"
#include "kernels/pdl.cuh" /* an_launch_pdl for the gather */

#include <stdint.h>

#include <cub/device/device_radix_sort.cuh>

namespace {

const int kThreads = 256;

/* out word w of row i (row_words words of type W) = table row ids[i], word w. */
template <typename W>
__global__ void gather_kernel(const void *ids, bool is64, int64_t n, const W *table, int64_t row_words, W *out) {
    an_pdl_wait(); /* launched with PDL: the ids may come from the kernel before */
    an_pdl_trigger();
    int64_t total = n * row_words, stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; k < total; k += stride) {
        int64_t i = k / row_words, w = k - i * row_words;
        int64_t id = is64 ? ((const int64_t *)ids)[i] : (int64_t)((const int32_t *)ids)[i];
        out[k] = table[id * row_words + w];
    }
}

template <typename W>
an_status gather(an_ctx *ctx, an_cuda_state *s, const void *ids, bool is64, int64_t n, const void *table,
                 int64_t row_bytes, void *out) {
    int64_t row_words = row_bytes / (int64_t)sizeof(W);
    /* with PDL: a decode step's first layer launches while the gather runs (pdl.cuh) */
    cudaError_t err = an_launch_pdl(s, gather_kernel<W>, dim3(an_cuda_blocks(s, n * row_words, kThreads)), dim3(kThreads),
                                    ids, is64, n, (const W *)table, row_words, (W *)out);
    AN_CHECK(ctx, err == cudaSuccess, AN_ERR_INTERNAL, "launch of the embedding gather_kernel failed: %s",
             cudaGetErrorString(err));
    AN_CUDA_LAUNCH_CHECK(ctx, "embedding gather_kernel");
    return AN_OK;
}

/* keys[i] = ids[i] as u32, values[i] = i. */
__global__ void keys_kernel(const void *ids, bool is64, int64_t n, uint32_t *keys, uint32_t *values) {
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        int64_t id = is64 ? ((const int64_t *)ids)[i] : (int64_t)((const int32_t *)ids)[i];
        keys[i] = (uint32_t)id; /* ids were checked to lie in [0, V), V <= UINT32_MAX */
        values[i] = (uint32_t)i;
    }
}

/* Block b: when sorted position b starts a run of equal ids, grad_table row id = sum of the
 * run's grad_out rows, in sorted (= position) order. */
template <typename T>
__global__ void segment_sum_kernel(const uint32_t *keys, const uint32_t *positions, int64_t n, const T *grad_out,
                                   int64_t V, int64_t D, T *grad_table) {
    int64_t start = blockIdx.x;
    uint32_t id = keys[start];
    if ((start > 0 && keys[start - 1] == id) || (int64_t)id >= V) return;
    int64_t end = start + 1;
    while (end < n && keys[end] == id) end++;
    T *row = grad_table + (int64_t)id * D; /* (D) */
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
        float acc = 0.0f;
        for (int64_t k = start; k < end; k++) acc += an_load(grad_out[(int64_t)positions[k] * D + d]);
        row[d] = an_store<T>(acc);
    }
}

size_t round_up(size_t bytes) { return (bytes + 255) / 256 * 256; }

template <typename T>
an_status embedding_backward(an_ctx *ctx, an_cuda_state *s, const void *ids, bool is64, int64_t n,
                             const T *grad_out, int64_t V, int64_t D, T *grad_table) {
    AN_CUDA_CHECK(ctx, cudaMemsetAsync(grad_table, 0, (size_t)(V * D) * sizeof(T), s->stream)); /* 0.0 in every dtype */
    if (n == 0 || D == 0) return AN_OK;
    int end_bit = 1;
    while (end_bit < 32 && ((uint64_t)(V - 1) >> end_bit) != 0) end_bit++;
    size_t sort_bytes = 0;
    AN_CUDA_CHECK(ctx, cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, (const uint32_t *)nullptr,
                                                       (uint32_t *)nullptr, (const uint32_t *)nullptr,
                                                       (uint32_t *)nullptr, (int)n, 0, end_bit, s->stream));
    size_t list = round_up((size_t)n * sizeof(uint32_t));
    void *scratch = nullptr;
    AN_TRY(an_cuda_scratch(ctx, 4 * list + round_up(sort_bytes), &scratch));
    char *base = (char *)scratch;
    uint32_t *keys_in = (uint32_t *)base, *keys = (uint32_t *)(base + list);
    uint32_t *pos_in = (uint32_t *)(base + 2 * list), *pos = (uint32_t *)(base + 3 * list);
    void *sort_tmp = base + 4 * list;
    keys_kernel<<<an_cuda_blocks(s, n, kThreads), kThreads, 0, s->stream>>>(ids, is64, n, keys_in, pos_in);
    AN_CUDA_LAUNCH_CHECK(ctx, "embedding keys_kernel");
    AN_CUDA_CHECK(ctx, cub::DeviceRadixSort::SortPairs(sort_tmp, sort_bytes, keys_in, keys, pos_in, pos, (int)n, 0,
                                                       end_bit, s->stream));
    int threads = D >= 256 ? 256 : (int)((D + 31) / 32 * 32);
    segment_sum_kernel<T><<<(unsigned)n, threads, 0, s->stream>>>(keys, pos, n, grad_out, V, D, grad_table);
    AN_CUDA_LAUNCH_CHECK(ctx, "embedding segment_sum_kernel");
    return AN_OK;
}

bool aligned(const void *p, size_t bytes) { return (uintptr_t)p % bytes == 0; }

an_status check_args(an_ctx *ctx, const char *what, an_dtype id_dtype, int64_t n, int64_t V, int64_t D) {
    AN_CHECK(ctx, id_dtype == AN_I32 || id_dtype == AN_I64, AN_ERR_INPUT, "%s: ids must be i32 or i64, got %s", what,
             an_dtype_name(id_dtype));
    AN_CHECK(ctx, n >= 0 && V >= 1 && D >= 0, AN_ERR_INTERNAL, "%s: bad sizes n %lld V %lld D %lld", what,
             (long long)n, (long long)V, (long long)D);
    return AN_OK;
}

} // namespace

extern "C" {

an_status an_cuda_embedding(an_ctx *ctx, an_dtype dtype, const void *ids, an_dtype id_dtype, int64_t n,
                            const void *table, int64_t V, int64_t D, void *out) {
    AN_CUDA_STATE(ctx, s);
    AN_TRY(check_args(ctx, "embedding", id_dtype, n, V, D));
    AN_CHECK(ctx, an_dtype_is_float(dtype), AN_ERR_INPUT, "embedding: no CUDA kernel for %s", an_dtype_name(dtype));
    if (n == 0 || D == 0) return AN_OK;
    bool is64 = id_dtype == AN_I64;
    int64_t row_bytes = D * (int64_t)an_dtype_size(dtype);
    /* the widest word that divides a row and both pointers' alignment */
    if (row_bytes % 16 == 0 && aligned(table, 16) && aligned(out, 16))
        return gather<uint4>(ctx, s, ids, is64, n, table, row_bytes, out);
    if (row_bytes % 8 == 0 && aligned(table, 8) && aligned(out, 8))
        return gather<uint2>(ctx, s, ids, is64, n, table, row_bytes, out);
    if (row_bytes % 4 == 0 && aligned(table, 4) && aligned(out, 4))
        return gather<uint32_t>(ctx, s, ids, is64, n, table, row_bytes, out);
    if (row_bytes % 2 == 0 && aligned(table, 2) && aligned(out, 2))
        return gather<uint16_t>(ctx, s, ids, is64, n, table, row_bytes, out);
    return gather<uint8_t>(ctx, s, ids, is64, n, table, row_bytes, out);
}

an_status an_cuda_embedding_backward(an_ctx *ctx, an_dtype dtype, const void *ids, an_dtype id_dtype, int64_t n,
                                     const void *grad_out, int64_t V, int64_t D, void *grad_table) {
    AN_CUDA_STATE(ctx, s);
    AN_TRY(check_args(ctx, "embedding_backward", id_dtype, n, V, D));
    AN_CHECK(ctx, V <= (int64_t)UINT32_MAX && n <= INT32_MAX, AN_ERR_INPUT,
             "embedding_backward: V = %lld or %lld ids exceed the CUDA kernel's 32-bit sort", (long long)V,
             (long long)n);
    AN_CUDA_DISPATCH_FLOAT(ctx, dtype, "embedding_backward",
                           return embedding_backward<T>(ctx, s, ids, id_dtype == AN_I64, n, (const T *)grad_out, V, D,
                                                        (T *)grad_table));
    return AN_OK;
}

} // extern "C"
