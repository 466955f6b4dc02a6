/* indices.cu — an_cuda_check_ids: the range check the ops run on device-resident ids, targets and
 * positions before any kernel indexes memory with them (the CUDA side of the CPU ops' checks);
 * an_cuda_shift_ids: next-token targets from labels, on the device.
 *
 * Rules: one pass over the ids; the smallest bad index is found with an integer atomicMin and
 * the counted ids with an integer atomicAdd, so the report does not depend on the order blocks
 * run in. The report is copied to the host, which synchronises the stream. */
#include "kernels/block_reduce.cuh"

#include <stdint.h>

namespace {

const int kThreads = 256;

/* report[0] = min bad index (starts at all ones: none), report[1] = count of ids != ignore_index. */
__global__ void check_ids_kernel(const void *ids, bool is64, int64_t n, int64_t limit, bool allow_ignore,
                                 int64_t ignore_index, unsigned long long *report) {
    unsigned long long first_bad = ~0ull, counted = 0;
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        int64_t v = an_load_id(ids, is64, i);
        bool ignored = allow_ignore && v == ignore_index;
        if (!ignored) counted++;
        if (!ignored && (v < 0 || v >= limit) && first_bad == ~0ull) first_bad = (unsigned long long)i;
    }
    if (first_bad != ~0ull) atomicMin(&report[0], first_bad);
    if (counted) atomicAdd(&report[1], counted);
}

/* out[r t + i] = ids[r t + i + 1] for i < t - 1, fill at i = t - 1. */
template <typename I> __global__ void shift_ids_kernel(const I *ids, int64_t n, int64_t t, I fill, I *out) {
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        out[i] = i % t == t - 1 ? fill : ids[i + 1];
}

} // namespace

extern "C" an_status an_cuda_check_ids(an_ctx *ctx, const void *ids, an_dtype id_dtype, int64_t n, int64_t limit,
                                       int allow_ignore, int64_t ignore_index, an_cuda_id_report *report) {
    AN_CUDA_STATE(ctx, s);
    AN_CHECK(ctx, id_dtype == AN_I32 || id_dtype == AN_I64, AN_ERR_INPUT, "ids: expected i32 or i64, got %s",
             an_dtype_name(id_dtype));
    AN_CHECK(ctx, n >= 0, AN_ERR_INTERNAL, "ids: negative count %lld", (long long)n);
    *report = (an_cuda_id_report){n, 0, 0};
    if (n == 0) return AN_OK;
    void *scratch = nullptr;
    AN_TRY(an_cuda_scratch(ctx, 2 * sizeof(unsigned long long), &scratch));
    unsigned long long got[2];
    AN_CUDA_CHECK(ctx, cudaMemsetAsync(scratch, 0xFF, sizeof(unsigned long long), s->stream));
    AN_CUDA_CHECK(ctx, cudaMemsetAsync((unsigned long long *)scratch + 1, 0, sizeof(unsigned long long), s->stream));
    check_ids_kernel<<<an_cuda_blocks(s, n, kThreads), kThreads, 0, s->stream>>>(
        ids, id_dtype == AN_I64, n, limit, allow_ignore != 0, ignore_index, (unsigned long long *)scratch);
    AN_CUDA_LAUNCH_CHECK(ctx, "check_ids_kernel");
    AN_CUDA_CHECK(ctx, cudaMemcpyAsync(got, scratch, sizeof got, cudaMemcpyDeviceToHost, s->stream));
    AN_CUDA_CHECK(ctx, cudaStreamSynchronize(s->stream));
    report->first_bad = got[0] == ~0ull ? n : (int64_t)got[0];
    report->counted = (int64_t)got[1];
    if (report->first_bad < n) {
        size_t es = an_dtype_size(id_dtype);
        int64_t v64 = 0;
        int32_t v32 = 0;
        void *dst = id_dtype == AN_I64 ? (void *)&v64 : (void *)&v32;
        AN_CUDA_CHECK(ctx, cudaMemcpyAsync(dst, (const char *)ids + (size_t)report->first_bad * es, es,
                                           cudaMemcpyDeviceToHost, s->stream));
        AN_CUDA_CHECK(ctx, cudaStreamSynchronize(s->stream));
        report->bad_value = id_dtype == AN_I64 ? v64 : v32;
    }
    return AN_OK;
}

extern "C" an_status an_cuda_shift_ids(an_ctx *ctx, const void *ids, an_dtype id_dtype, int64_t rows, int64_t t,
                                       int64_t fill, void *out) {
    AN_CUDA_STATE(ctx, s);
    AN_CHECK(ctx, id_dtype == AN_I32 || id_dtype == AN_I64, AN_ERR_INPUT, "shift_ids: expected i32 or i64, got %s",
             an_dtype_name(id_dtype));
    AN_CHECK(ctx, rows >= 0 && t >= 0 && (id_dtype == AN_I64 || (fill >= INT32_MIN && fill <= INT32_MAX)),
             AN_ERR_INTERNAL, "shift_ids: %lld rows of %lld, fill %lld", (long long)rows, (long long)t, (long long)fill);
    const int64_t n = rows * t;
    if (n == 0) return AN_OK;
    if (id_dtype == AN_I64)
        shift_ids_kernel<int64_t><<<an_cuda_blocks(s, n, kThreads), kThreads, 0, s->stream>>>(
            (const int64_t *)ids, n, t, (int64_t)fill, (int64_t *)out);
    else
        shift_ids_kernel<int32_t><<<an_cuda_blocks(s, n, kThreads), kThreads, 0, s->stream>>>(
            (const int32_t *)ids, n, t, (int32_t)fill, (int32_t *)out);
    AN_CUDA_LAUNCH_CHECK(ctx, "shift_ids_kernel");
    return AN_OK;
}
