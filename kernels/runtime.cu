/* runtime.cu — the CUDA device state (device index, one stream, a cuBLASLt handle and its 32 MiB
 * workspace), device memory, copies, memset and synchronisation.
 *
 * Rules: every call below is checked (AN_CUDA_CHECK / AN_CUBLAS_CHECK, kernels/cuda_common.cuh).
 * All copies and kernels of a state run on its one stream, in order. Copies that touch host memory
 * return only once they are complete, so the caller may reuse or free the host buffer at once;
 * device-to-device copies, memsets and fills are asynchronous on the stream. One process drives one
 * device (the state's). Device memory (tensors, the workspace, the scratch buffer) comes from the
 * state's caching allocator (autograd/block_cache.h over cudaMalloc/cudaFree): a freed block is
 * handed out again without an event because every user of it runs on the one stream; work on
 * another stream will need an event per freed block first. While graph.cu captures the stream,
 * host copies, synchronisation, emptying the cache and the scratch buffer are refused with an
 * error (they cannot be part of a graph). */
#include "kernels/attention_cudnn.cuh" /* an_cuda_cudnn_free */
#include "kernels/cuda_common.cuh"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define AN_CUDA_WORKSPACE_BYTES ((size_t)32 << 20)

int an_cuda_available_in_build(void) { return 1; }

const char *an_cublas_status_string(cublasStatus_t status) {
    switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "unknown cuBLAS status";
    }
}

/* state_new reports through `why` (there is no ctx yet): on failure, say what and clean up. */
#define WHY_CHECK(call)                                                                          \
    do {                                                                                         \
        cudaError_t e_ = (call);                                                                 \
        if (e_ != cudaSuccess) {                                                                 \
            (void)cudaGetLastError(); /* handled: keep it from the next launch check */         \
            snprintf(why, why_size, "runtime.cu:%d: %s failed: %s", __LINE__, #call, cudaGetErrorString(e_)); \
            goto fail;                                                                           \
        }                                                                                        \
    } while (0)

/* The raw allocator under the cache. */
static int raw_alloc(void *user, size_t bytes, void **out, char *why, size_t why_size) {
    an_cuda_state *s = (an_cuda_state *)user;
    cudaError_t e = cudaSetDevice(s->device);
    if (e == cudaSuccess) e = cudaMalloc(out, bytes);
    if (e != cudaSuccess) {
        (void)cudaGetLastError(); /* handled: the cache releases what it holds and retries */
        *out = NULL;
        snprintf(why, why_size, "cudaMalloc(%zu) failed: %s", bytes, cudaGetErrorString(e));
        return 1;
    }
    return 0;
}

static void raw_free(void *user, void *ptr) {
    (void)user;
    (void)cudaFree(ptr); /* synchronises the device: no kernel still reads ptr */
}

an_cuda_state *an_cuda_state_new(int index, char *why, size_t why_size) {
    an_cuda_state *s = (an_cuda_state *)calloc(1, sizeof *s);
    int count = 0;
    cublasStatus_t bst;
    if (!s) {
        snprintf(why, why_size, "out of host memory");
        return NULL;
    }
    s->device = index;
    WHY_CHECK(cudaGetDeviceCount(&count));
    if (index < 0 || index >= count) {
        snprintf(why, why_size, "no CUDA device %d (this machine has %d)", index, count);
        goto fail;
    }
    WHY_CHECK(cudaSetDevice(index));
    WHY_CHECK(cudaDeviceGetAttribute(&s->sm_count, cudaDevAttrMultiProcessorCount, index));
    {
        int major = 0, minor = 0;
        WHY_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, index));
        WHY_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, index));
        s->wgmma = major == 9 && minor == 0;
    }
    {
        int mem_khz = 0, bus_bits = 0;
        WHY_CHECK(cudaDeviceGetAttribute(&mem_khz, cudaDevAttrMemoryClockRate, index));
        WHY_CHECK(cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, index));
        s->peak_bandwidth = 2.0 * mem_khz * 1e3 * bus_bits / 8.0; /* double data rate */
    }
    {
        /* the highest priority: work queued on the side stream (an_cuda_side_*) fills only what
           the stream's kernels leave free */
        int least = 0, greatest = 0;
        WHY_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
        WHY_CHECK(cudaStreamCreateWithPriority(&s->stream, cudaStreamNonBlocking, greatest));
    }
    bst = cublasLtCreate(&s->lt);
    if (bst != CUBLAS_STATUS_SUCCESS) {
        s->lt = NULL;
        snprintf(why, why_size, "cublasLtCreate failed: %s", an_cublas_status_string(bst));
        goto fail;
    }
    an_block_cache_init(&s->cache, raw_alloc, raw_free, s);
    s->workspace = an_cuda_malloc(s, AN_CUDA_WORKSPACE_BYTES, why, why_size);
    if (!s->workspace) goto fail;
    s->workspace_bytes = AN_CUDA_WORKSPACE_BYTES;
    return s;
fail:
    an_cuda_state_free(s);
    return NULL;
}

void an_cuda_state_free(an_cuda_state *s) {
    if (!s) return;
    /* Teardown: errors here have nowhere to go; each step still runs. */
    if (s->stream) {
        (void)cudaSetDevice(s->device);
        (void)cudaStreamSynchronize(s->stream);
    }
    an_cuda_gemm_plans_free(s);
    an_cuda_cudnn_free(s);
    an_block_cache_destroy(&s->cache); /* the workspace, the scratch and any leaked block */
    if (s->lt) (void)cublasLtDestroy(s->lt);
    if (s->read_stream) {
        (void)cudaStreamSynchronize(s->read_stream);
        (void)cudaStreamDestroy(s->read_stream);
    }
    if (s->read_mark) (void)cudaEventDestroy(s->read_mark);
    if (s->side_stream) {
        (void)cudaStreamSynchronize(s->side_stream);
        (void)cudaStreamDestroy(s->side_stream);
    }
    if (s->side_mark) (void)cudaEventDestroy(s->side_mark);
    if (s->side_done) (void)cudaEventDestroy(s->side_done);
    if (s->read_staging) (void)cudaFreeHost(s->read_staging);
    if (s->stream) (void)cudaStreamDestroy(s->stream);
    free(s);
}

void *an_cuda_malloc(an_cuda_state *s, size_t bytes, char *why, size_t why_size) {
    return an_block_cache_alloc(&s->cache, bytes, why, why_size);
}

void an_cuda_free(an_cuda_state *s, void *ptr) {
    if (ptr && !an_block_cache_free(&s->cache, ptr)) (void)cudaFree(ptr); /* not ours: never happens */
}

an_status an_cuda_memory_stats(an_ctx *ctx, an_cuda_mem_stats *out) {
    AN_CUDA_STATE(ctx, s);
    const an_block_cache_stats *c = &s->cache.stats;
    an_cuda_mem_stats m;
    memset(&m, 0, sizeof m);
    m.tensor_bytes = ctx->mem[AN_CUDA].current;
    m.tensor_peak = ctx->mem[AN_CUDA].peak;
    m.in_use = c->in_use;
    m.reserved = c->reserved;
    m.cached = c->reserved - c->in_use;
    m.peak_reserved = c->peak_reserved;
    m.cuda_mallocs = c->raw_allocs;
    m.cuda_frees = c->raw_frees;
    m.segments = c->segments;
    AN_CUDA_CHECK(ctx, cudaSetDevice(s->device));
    AN_CUDA_CHECK(ctx, cudaMemGetInfo(&m.device_free, &m.device_total));
    *out = m;
    return AN_OK;
}

/* The refusal graph.cu's rules promise for calls that cannot be captured. */
#define NOT_WHILE_CAPTURING(ctx, s, what)                                                              \
    AN_CHECK((ctx), !(s)->capturing, AN_ERR_INTERNAL,                                                 \
             "%s inside a CUDA graph capture: a captured step must keep its data on the device", (what))

an_status an_cuda_empty_cache(an_ctx *ctx) {
    AN_CUDA_STATE(ctx, s);
    NOT_WHILE_CAPTURING(ctx, s, "emptying the allocator cache");
    AN_CUDA_CHECK(ctx, cudaStreamSynchronize(s->stream)); /* surface pending errors before cudaFree */
    (void)an_block_cache_release(&s->cache);
    return AN_OK;
}

an_status an_cuda_scratch(an_ctx *ctx, size_t bytes, void **out) {
    AN_CUDA_STATE(ctx, s);
    /* a graph holding the scratch address would write whatever block it becomes after a regrowth */
    NOT_WHILE_CAPTURING(ctx, s, "the shared scratch buffer");
    if (bytes > s->scratch_bytes) {
        size_t grown = bytes < ((size_t)1 << 20) ? ((size_t)1 << 20) : bytes;
        char why[320] = "";
        an_cuda_free(s, s->scratch); /* stream order: launches after this one see the new buffer */
        s->scratch = NULL;
        s->scratch_bytes = 0;
        s->scratch = an_cuda_malloc(s, grown, why, sizeof why);
        AN_CHECK(ctx, s->scratch != NULL, AN_ERR_INTERNAL, "CUDA scratch buffer: %s", why);
        s->scratch_bytes = grown;
    }
    *out = s->scratch;
    return AN_OK;
}

an_status an_cuda_memcpy(an_ctx *ctx, void *dst, an_device dst_device, const void *src, an_device src_device,
                         size_t bytes) {
    if (bytes == 0) return AN_OK;
    if (dst_device == AN_CPU && src_device == AN_CPU) {
        memcpy(dst, src, bytes);
        return AN_OK;
    }
    AN_CUDA_STATE(ctx, s);
    cudaMemcpyKind kind = dst_device == AN_CPU   ? cudaMemcpyDeviceToHost
                          : src_device == AN_CPU ? cudaMemcpyHostToDevice
                                                 : cudaMemcpyDeviceToDevice;
    if (kind != cudaMemcpyDeviceToDevice) NOT_WHILE_CAPTURING(ctx, s, "a copy to or from host memory");
    AN_CUDA_CHECK(ctx, cudaMemcpyAsync(dst, src, bytes, kind, s->stream));
    if (kind != cudaMemcpyDeviceToDevice) AN_CUDA_CHECK(ctx, cudaStreamSynchronize(s->stream));
    return AN_OK;
}

/* ---- the side stream ---- */

cudaError_t an_cuda_side_enter(an_cuda_state *s, cudaStream_t *side) {
    cudaError_t e = cudaSuccess;
    if (!s->side_stream) {
        int least = 0, greatest = 0;
        e = cudaDeviceGetStreamPriorityRange(&least, &greatest);
        if (e == cudaSuccess)
            e = cudaStreamCreateWithPriority(&s->side_stream, cudaStreamNonBlocking,
                                             s->side_equal_priority ? greatest : least);
        if (e == cudaSuccess) e = cudaEventCreateWithFlags(&s->side_mark, cudaEventDisableTiming);
        if (e == cudaSuccess) e = cudaEventCreateWithFlags(&s->side_done, cudaEventDisableTiming);
        if (e != cudaSuccess) return e;
    }
    e = cudaEventRecord(s->side_mark, s->stream);
    if (e == cudaSuccess) e = cudaStreamWaitEvent(s->side_stream, s->side_mark, 0);
    *side = s->side_stream;
    return e;
}

an_status an_cuda_side_join(an_ctx *ctx) {
    AN_CUDA_STATE(ctx, s);
    if (!s->side_stream) return AN_OK;
    AN_CUDA_CHECK(ctx, cudaEventRecord(s->side_done, s->side_stream));
    AN_CUDA_CHECK(ctx, cudaStreamWaitEvent(s->stream, s->side_done, 0));
    return AN_OK;
}

an_status an_cuda_set_side_equal_priority(an_ctx *ctx, bool equal) {
    AN_CUDA_STATE(ctx, s);
    if (s->side_stream && s->side_equal_priority != (int)equal) { /* made again at the next use */
        AN_CUDA_CHECK(ctx, cudaStreamSynchronize(s->side_stream));
        AN_CUDA_CHECK(ctx, cudaStreamDestroy(s->side_stream));
        s->side_stream = nullptr;
        AN_CUDA_CHECK(ctx, cudaEventDestroy(s->side_mark));
        AN_CUDA_CHECK(ctx, cudaEventDestroy(s->side_done));
        s->side_mark = s->side_done = nullptr;
    }
    s->side_equal_priority = equal;
    return AN_OK;
}

an_status an_cuda_read_mark(an_ctx *ctx) {
    AN_CUDA_STATE(ctx, s);
    NOT_WHILE_CAPTURING(ctx, s, "a read mark");
    if (!s->read_mark) AN_CUDA_CHECK(ctx, cudaEventCreateWithFlags(&s->read_mark, cudaEventDisableTiming));
    AN_CUDA_CHECK(ctx, cudaEventRecord(s->read_mark, s->stream));
    s->read_marked = 1;
    return AN_OK;
}

an_status an_cuda_read_marked(an_ctx *ctx, void *dst, const void *src, size_t bytes) {
    AN_CUDA_STATE(ctx, s);
    NOT_WHILE_CAPTURING(ctx, s, "a marked read");
    AN_CHECK(ctx, s->read_marked, AN_ERR_INTERNAL, "an_cuda_read_marked without an_cuda_read_mark before it");
    if (bytes == 0) return AN_OK;
    if (!s->read_stream) AN_CUDA_CHECK(ctx, cudaStreamCreateWithFlags(&s->read_stream, cudaStreamNonBlocking));
    if (s->read_staging_bytes < bytes) { /* pinned: the copy is a DMA the host waits for, not a staged one */
        if (s->read_staging) AN_CUDA_CHECK(ctx, cudaFreeHost(s->read_staging));
        s->read_staging = nullptr, s->read_staging_bytes = 0;
        AN_CUDA_CHECK(ctx, cudaMallocHost(&s->read_staging, bytes));
        s->read_staging_bytes = bytes;
    }
    AN_CUDA_CHECK(ctx, cudaStreamWaitEvent(s->read_stream, s->read_mark, 0));
    AN_CUDA_CHECK(ctx, cudaMemcpyAsync(s->read_staging, src, bytes, cudaMemcpyDeviceToHost, s->read_stream));
    AN_CUDA_CHECK(ctx, cudaStreamSynchronize(s->read_stream));
    memcpy(dst, s->read_staging, bytes);
    return AN_OK;
}

/* ptr[i] = bits for i < n, elements of E bytes (an_cuda_fill_bits). */
template <typename E> __global__ void fill_bits_kernel(E *ptr, int64_t n, E bits) {
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) ptr[i] = bits;
}

an_status an_cuda_fill_bits(an_ctx *ctx, void *ptr, int64_t n, int elem_size, uint64_t bits) {
    AN_CHECK(ctx, n >= 0 && (elem_size == 1 || elem_size == 2 || elem_size == 4 || elem_size == 8), AN_ERR_INTERNAL,
             "fill_bits: %lld elements of %d bytes", (long long)n, elem_size);
    if (n == 0) return AN_OK;
    AN_CUDA_STATE(ctx, s);
    const unsigned blocks = an_cuda_blocks(s, n, 256);
    if (elem_size == 1) fill_bits_kernel<uint8_t><<<blocks, 256, 0, s->stream>>>((uint8_t *)ptr, n, (uint8_t)bits);
    else if (elem_size == 2) fill_bits_kernel<uint16_t><<<blocks, 256, 0, s->stream>>>((uint16_t *)ptr, n, (uint16_t)bits);
    else if (elem_size == 4) fill_bits_kernel<uint32_t><<<blocks, 256, 0, s->stream>>>((uint32_t *)ptr, n, (uint32_t)bits);
    else fill_bits_kernel<uint64_t><<<blocks, 256, 0, s->stream>>>((uint64_t *)ptr, n, bits);
    AN_CUDA_LAUNCH_CHECK(ctx, "fill_bits_kernel");
    return AN_OK;
}

an_status an_cuda_memset(an_ctx *ctx, void *ptr, int value, size_t bytes) {
    if (bytes == 0) return AN_OK;
    AN_CUDA_STATE(ctx, s);
    AN_CUDA_CHECK(ctx, cudaMemsetAsync(ptr, value, bytes, s->stream));
    return AN_OK;
}

an_status an_cuda_synchronize(an_ctx *ctx) {
    AN_CUDA_STATE(ctx, s);
    NOT_WHILE_CAPTURING(ctx, s, "synchronising the stream");
    AN_CUDA_CHECK(ctx, cudaStreamSynchronize(s->stream));
    return AN_OK;
}

an_status an_cuda_memcpy_2d(an_ctx *ctx, void *dst, size_t dst_pitch, const void *src, size_t src_pitch,
                            size_t width, size_t height) {
    if (width == 0 || height == 0) return AN_OK;
    AN_CUDA_STATE(ctx, s);
    AN_CUDA_CHECK(ctx, cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, width, height, cudaMemcpyDeviceToDevice,
                                         s->stream));
    return AN_OK;
}

an_status an_cuda_set_pdl(an_ctx *ctx, int on) {
    AN_CUDA_STATE(ctx, s);
    s->no_pdl = !on;
    return AN_OK;
}

/* The measurement switches of the state: *off = !on (an error naming fn before an_ctx_use_cuda). */
static an_status switch_off(an_ctx *ctx, const char *fn, int an_cuda_state::*off, bool on) {
    AN_CHECK(ctx, ctx->cuda != NULL, AN_ERR_INTERNAL, "%s: CUDA launcher called before an_ctx_use_cuda", fn);
    ctx->cuda->*off = !on;
    return AN_OK;
}

an_status an_cuda_set_wgmma(an_ctx *ctx, bool on) { return switch_off(ctx, __func__, &an_cuda_state::wgmma_off, on); }

an_status an_cuda_set_logits_stats(an_ctx *ctx, bool on) { return switch_off(ctx, __func__, &an_cuda_state::logits_stats_off, on); }

an_status an_cuda_set_swiglu_stacked(an_ctx *ctx, bool on) { return switch_off(ctx, __func__, &an_cuda_state::swiglu_stacked_off, on); }

an_status an_cuda_set_projections(an_ctx *ctx, bool on) { return switch_off(ctx, __func__, &an_cuda_state::projections_off, on); }
an_status an_cuda_set_rope_epilogue(an_ctx *ctx, bool on) { return switch_off(ctx, __func__, &an_cuda_state::rope_epilogue_off, on); }

an_status an_cuda_set_gemm_group_rows(an_ctx *ctx, int rows) {
    AN_CHECK(ctx, ctx->cuda != NULL, AN_ERR_INTERNAL, "%s: CUDA launcher called before an_ctx_use_cuda", __func__);
    AN_CHECK(ctx, rows >= 0 && rows <= 1024, AN_ERR_INPUT, "gemm group rows %d: expected 0 (the default) to 1024",
             rows);
    ctx->cuda->gemm_group_rows = rows;
    return AN_OK;
}

an_status an_cuda_set_lora_grads(an_ctx *ctx, bool on) { return switch_off(ctx, __func__, &an_cuda_state::lora_grads_off, on); }

an_status an_cuda_set_column_sums(an_ctx *ctx, bool on) { return switch_off(ctx, __func__, &an_cuda_state::column_sums_off, on); }

an_status an_cuda_set_attention_cudnn(an_ctx *ctx, bool on) { return switch_off(ctx, __func__, &an_cuda_state::attention_cudnn_off, on); }

an_status an_cuda_set_attention_wgmma(an_ctx *ctx, bool on) { return switch_off(ctx, __func__, &an_cuda_state::attention_wgmma_off, on); }

an_status an_cuda_set_attention_turns_rope(an_ctx *ctx, bool on) { return switch_off(ctx, __func__, &an_cuda_state::attention_turn_off, on); }

an_status an_cuda_set_attention_cudnn_deterministic(an_ctx *ctx, bool on) { return switch_off(ctx, __func__, &an_cuda_state::attention_cudnn_nondeterministic, on); }

an_status an_cuda_set_attention_cudnn_padding_mask(an_ctx *ctx, bool always) {
    AN_CUDA_STATE(ctx, s);
    s->attention_cudnn_padding_mask = always;
    return AN_OK;
}

an_status an_cuda_event_record(an_ctx *ctx, void **event) {
    AN_CUDA_STATE(ctx, s);
    cudaEvent_t e = nullptr;
    AN_CUDA_CHECK(ctx, cudaEventCreate(&e));
    cudaError_t err = cudaEventRecord(e, s->stream);
    if (err != cudaSuccess) (void)cudaEventDestroy(e);
    AN_CUDA_CHECK(ctx, err);
    *event = e;
    return AN_OK;
}

an_status an_cuda_event_elapsed(an_ctx *ctx, void *start, void *stop, double *ms) {
    float f = 0;
    AN_CUDA_CHECK(ctx, cudaEventSynchronize((cudaEvent_t)stop));
    AN_CUDA_CHECK(ctx, cudaEventElapsedTime(&f, (cudaEvent_t)start, (cudaEvent_t)stop));
    *ms = f;
    return AN_OK;
}

void an_cuda_event_free(void *event) {
    if (event) (void)cudaEventDestroy((cudaEvent_t)event);
}

an_status an_cuda_copy_bandwidth(an_ctx *ctx, size_t bytes, int reps, double *bytes_per_second) {
    AN_CUDA_STATE(ctx, s);
    AN_CHECK(ctx, bytes > 0 && reps >= 1, AN_ERR_INPUT, "copy bandwidth: %zu bytes, %d repetitions", bytes, reps);
    void *a = nullptr, *b = nullptr;
    cudaEvent_t start = nullptr, stop = nullptr;
    float ms = 0;
    cudaError_t e = cudaSetDevice(s->device);
    if (e == cudaSuccess) e = cudaMalloc(&a, bytes);
    if (e == cudaSuccess) e = cudaMalloc(&b, bytes);
    if (e == cudaSuccess) e = cudaMemsetAsync(a, 1, bytes, s->stream);
    if (e == cudaSuccess) e = cudaEventCreate(&start);
    if (e == cudaSuccess) e = cudaEventCreate(&stop);
    if (e == cudaSuccess) e = cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, s->stream); /* warm-up */
    if (e == cudaSuccess) e = cudaEventRecord(start, s->stream);
    for (int i = 0; i < reps && e == cudaSuccess; i++)
        e = cudaMemcpyAsync(i % 2 ? a : b, i % 2 ? b : a, bytes, cudaMemcpyDeviceToDevice, s->stream);
    if (e == cudaSuccess) e = cudaEventRecord(stop, s->stream);
    if (e == cudaSuccess) e = cudaEventSynchronize(stop);
    if (e == cudaSuccess) e = cudaEventElapsedTime(&ms, start, stop);
    /* cleanup whatever happened; the first error is the one reported */
    if (start) (void)cudaEventDestroy(start);
    if (stop) (void)cudaEventDestroy(stop);
    if (a) (void)cudaFree(a);
    if (b) (void)cudaFree(b);
    AN_CUDA_CHECK(ctx, e);
    *bytes_per_second = 2.0 * (double)bytes * reps / (ms * 1e-3);
    return AN_OK;
}
