/* cuda_common.cuh — what the .cu files of the CUDA backend share: the device state behind
 * an_cuda_state, the checking macros every CUDA and cuBLASLt call goes through, launch sizing,
 * and dtype load/store helpers (math is fp32; stores round to nearest even).
 *
 * Rules: every CUDA/cuBLAS return code is checked with AN_CUDA_CHECK / AN_CUBLAS_CHECK, which
 * record file:line, the call text and the library's message in ctx and return AN_ERR_INTERNAL;
 * every kernel launch is followed by AN_CUDA_LAUNCH_CHECK (cudaGetLastError). All work goes on the
 * state's one stream, so a buffer reused by the next launch on that stream is safe; the caching
 * allocator (autograd/block_cache.h) relies on this to hand a freed block out again at once. */
#ifndef AN_CUDA_COMMON_CUH
#define AN_CUDA_COMMON_CUH

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "autograd/block_cache.h"  /* an_block_cache: the caching device allocator */
#include "kernels/cuda.h"

struct an_gemm_plan; /* gemm.cu: cached cuBLASLt descriptors and algorithm for one shape */
struct an_cudnn_attention; /* attention_cudnn.cu: the cuDNN handle and the cached attention plans */

struct an_cuda_state {
    int device;                /* CUDA device index */
    cudaStream_t stream;       /* every launch and copy of this state goes here */
    cublasLtHandle_t lt;       /* cuBLASLt handle */
    an_block_cache cache;      /* device memory: cached cudaMalloc segments (autograd/block_cache.h) */
    void *workspace;           /* cuBLASLt workspace, workspace_bytes long (from the cache) */
    size_t workspace_bytes;
    void *scratch;             /* reduction partials (grown on demand from the cache; see an_cuda_scratch) */
    size_t scratch_bytes;
    int sm_count;              /* multiprocessors, to size grids */
    void *tensor_map_encode;   /* the driver's cuTensorMapEncodeTiled, looked up on first use
                                  (an_cuda_tensor_map_encoder, gemm_decode.cu) */
    int wgmma;                 /* 1: compute capability 9.0, whose sm_90a code runs gemm_wgmma.cu's kernels */
    int logits_stats_off;      /* 1: a loss's logits skip the row statistics (an_cuda_set_logits_stats) */
    int projections_off;       /* 1: q, k, v run as separate GEMMs (an_cuda_set_projections) */
    int rope_epilogue_off;     /* 1: q and k turned by the rope kernel after the projections (an_cuda_set_rope_epilogue) */
    int lora_grads_off;        /* 1: the adapters' gradients run as thin cuBLASLt GEMMs (an_cuda_set_lora_grads) */
    int gemm_group_rows;       /* gemm_wgmma.cu's tile order: rows of tiles a group (0: its default;
                                  an_cuda_set_gemm_group_rows) */
    int column_sums_off;       /* 1: bias gradients come from cuBLASLt's dW epilogue (an_cuda_set_column_sums) */
    int swiglu_stacked_off;    /* 1: a frozen MLP's dgate, dup stay apart (an_cuda_set_swiglu_stacked) */
    int wgmma_off;             /* 1: they do not run (an_cuda_set_wgmma, for measurement) */
    double peak_bandwidth;     /* bytes/s of device memory: 2 x memory clock x bus width (kernel rules) */
    struct an_gemm_plan *plans; /* AN_GEMM_PLAN_SLOTS cached GEMM plans (gemm.cu) */
    int plan_next;             /* next slot to overwrite when the cache is full */
    int capturing;             /* 1 while graph.cu captures the stream: host copies, syncs and scratch
                                  growth are refused (see an_cuda_graph_begin) */
    int no_pdl;                /* 1: the decode kernels launch without programmatic dependent launch
                                  (kernels/pdl.cuh; an_cuda_set_pdl, for measurement) */
    struct an_cudnn_attention *cudnn; /* created on the first cuDNN attention call (attention_cudnn.cu) */
    int attention_cudnn_off;   /* 1: attention never takes the cuDNN path (an_cuda_set_attention_cudnn) */
    int attention_wgmma_off;   /* 1: the attention backward never takes attention_wgmma.cu (an_cuda_set_attention_wgmma) */
    int attention_turn_off;    /* 1: the attention backward leaves q's and k's rotation to the rope pass
                                  (an_cuda_set_attention_turns_rope) */
    int attention_cudnn_nondeterministic; /* 1: cuDNN's backward accumulates dQ with atomics
                                  (an_cuda_set_attention_cudnn_deterministic, for measurement) */
    int attention_cudnn_padding_mask; /* 1: every cuDNN backward graph has the explicit padding mask
                                  (an_cuda_set_attention_cudnn_padding_mask, for tests) */
    /* an_cuda_read_mark / an_cuda_read_marked (runtime.cu), created on first use */
    cudaStream_t read_stream;  /* the marked reads' copies: they do not wait for work after the mark */
    cudaEvent_t read_mark;     /* the point of the stream's work a read waits for */
    int read_marked;           /* 1 once read_mark has been recorded */
    void *read_staging;        /* pinned host buffer of read_staging_bytes the copies land in */
    size_t read_staging_bytes;
    /* the side stream (runtime.cu, an_cuda_side_*), created on first use: optimizer updates
       that overlap the backward. Lower priority than the stream unless side_equal_priority. */
    cudaStream_t side_stream;
    cudaEvent_t side_mark;     /* the point of the stream's work the side stream's next launch waits for */
    cudaEvent_t side_done;     /* the side stream's work so far, which the stream waits for at a join */
    int side_equal_priority;   /* 1: the side stream has the stream's priority (for measurement) */
};

#define AN_GEMM_PLAN_SLOTS 64

/* Record a failed CUDA runtime call and return from the enclosing an_status function. The
 * runtime's last-error slot is reset (cudaGetLastError) so a handled, non-sticky failure is not
 * reported again by the next launch check. */
#define AN_CUDA_CHECK(ctx, call)                                                                     \
    do {                                                                                             \
        cudaError_t an_cuda_err_ = (call);                                                           \
        if (an_cuda_err_ != cudaSuccess) {                                                           \
            (void)cudaGetLastError();                                                                \
            return an_error_set((ctx), AN_ERR_INTERNAL, __FILE__, __LINE__, "%s failed: %s (%s)", #call, \
                                cudaGetErrorString(an_cuda_err_), cudaGetErrorName(an_cuda_err_));   \
        }                                                                                            \
    } while (0)

/* The same for cuBLAS / cuBLASLt calls (cublasStatus_t). */
#define AN_CUBLAS_CHECK(ctx, call)                                                                      \
    do {                                                                                                \
        cublasStatus_t an_cublas_st_ = (call);                                                          \
        if (an_cublas_st_ != CUBLAS_STATUS_SUCCESS)                                                     \
            return an_error_set((ctx), AN_ERR_INTERNAL, __FILE__, __LINE__, "%s failed: %s (%d)", #call,  \
                                an_cublas_status_string(an_cublas_st_), (int)an_cublas_st_);            \
    } while (0)

/* After a kernel launch (`what` names the kernel): a bad configuration or a pending asynchronous
 * error, read with cudaGetLastError. */
#define AN_CUDA_LAUNCH_CHECK(ctx, what)                                                              \
    do {                                                                                             \
        cudaError_t an_cuda_err_ = cudaGetLastError();                                               \
        if (an_cuda_err_ != cudaSuccess)                                                             \
            return an_error_set((ctx), AN_ERR_INTERNAL, __FILE__, __LINE__, "launch of %s failed: %s (%s)", \
                                (what), cudaGetErrorString(an_cuda_err_), cudaGetErrorName(an_cuda_err_)); \
    } while (0)

/* The state of ctx, or an error when an_ctx_use_cuda was never called. */
#define AN_CUDA_STATE(ctx, var)                                                                        \
    an_cuda_state *var = (ctx)->cuda;                                                                  \
    AN_CHECK((ctx), var != NULL, AN_ERR_INTERNAL, "%s: CUDA launcher called before an_ctx_use_cuda", \
             __func__)

const char *an_cublas_status_string(cublasStatus_t status);
/* The side stream (created on first use) made to wait for everything queued on the stream so
 * far; launch the side work on *side next. runtime.cu. */
cudaError_t an_cuda_side_enter(an_cuda_state *s, cudaStream_t *side);

/* A device buffer of at least `bytes` owned by the state, valid until the next an_cuda_scratch
 * call; reuse is ordered by the single stream. */
an_status an_cuda_scratch(an_ctx *ctx, size_t bytes, void **out);
/* The driver's cuTensorMapEncodeTiled (as void *: cudaTypedefs.h's PFN_cuTensorMapEncodeTiled_v12000)
 * through the runtime's entry-point query, cached in the state (gemm_decode.cu). */
cudaError_t an_cuda_tensor_map_encoder(an_cuda_state *s, void **out);
/* Releases the cached GEMM plans (gemm.cu); called by an_cuda_state_free. */
void an_cuda_gemm_plans_free(an_cuda_state *state);

/* Blocks for an elementwise launch over `items` work items of `threads` each: enough to fill the
 * GPU several times over, then grid-stride. */
static inline unsigned an_cuda_blocks(const an_cuda_state *state, int64_t items, int threads) {
    int64_t need = (items + threads - 1) / threads;
    int64_t cap = (int64_t)state->sm_count * 32;
    return (unsigned)(need < cap ? (need > 0 ? need : 1) : cap);
}

/* Element conversions: f32 math, stores round to nearest even (as src/autograd/dtype.c does). */
__device__ __forceinline__ float an_load(float x) { return x; }
__device__ __forceinline__ float an_load(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float an_load(__half x) { return __half2float(x); }
template <typename T> __device__ __forceinline__ T an_store(float x);
template <> __device__ __forceinline__ float an_store<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 an_store<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ __half an_store<__half>(float x) { return __float2half_rn(x); }

/* Dispatch a dtype to a C++ type: `body` is instantiated with T bound to float, __nv_bfloat16 or
 * __half; any other dtype records an error. */
#define AN_CUDA_DISPATCH_FLOAT(ctx, dtype, what, ...)                                                  \
    do {                                                                                               \
        switch (dtype) {                                                                               \
        case AN_F32: { typedef float T; __VA_ARGS__; } break;                                          \
        case AN_BF16: { typedef __nv_bfloat16 T; __VA_ARGS__; } break;                                 \
        case AN_F16: { typedef __half T; __VA_ARGS__; } break;                                         \
        default:                                                                                       \
            return an_error_set((ctx), AN_ERR_INPUT, __FILE__, __LINE__, "%s: no CUDA kernel for %s", (what), \
                                an_dtype_name(dtype));                                                 \
        }                                                                                              \
    } while (0)

#endif
