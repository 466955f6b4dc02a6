/* cuda.h — the C interface of the CUDA backend: runtime (device state, memory, copies) and the
 * kernel launchers. Every launcher checks each CUDA/cuBLASLt return code, records file:line and
 * the library's message in ctx, and returns a status. In a build without CUDA the same functions
 * exist (kernels/cuda_stub.c) and fail with AN_ERR_INPUT naming the missing backend. */
#ifndef AN_CUDA_H
#define AN_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "autograd/ctx.h"           /* an_ctx, an_status, an_device */
#include "autograd/dtype.h"         /* an_dtype */
#include "autograd/kernel_types.h"  /* an_binary_kind, an_gemm_shape, an_attention_shape, an_adamw_scalars */

/* Runtime. */
int an_cuda_available_in_build(void);
/* Stream, cuBLASLt handle and workspace on device `index`; NULL with the reason in `why`. */
an_cuda_state *an_cuda_state_new(int index, char *why, size_t why_size);
void an_cuda_state_free(an_cuda_state *state);
/* Device memory from the state's caching allocator (autograd/block_cache.h): a freed block is kept
 * and handed out again, so a steady-state loop makes no cudaMalloc/cudaFree. Safe without events
 * because all work runs on the state's one stream (a block is reused only by later launches on it).
 * On cudaMalloc failure the cache is emptied and the call retried once; NULL then, with the size,
 * the bytes in use and the bytes cached in `why`. */
void *an_cuda_malloc(an_cuda_state *state, size_t bytes, char *why, size_t why_size);
void an_cuda_free(an_cuda_state *state, void *ptr);

typedef struct {
    size_t tensor_bytes;   /* ctx->mem[AN_CUDA].current: requested bytes of live tensors */
    size_t tensor_peak;    /* ctx->mem[AN_CUDA].peak */
    size_t in_use;         /* bytes of blocks handed out (rounded; tensors, cuBLASLt workspace, scratch) */
    size_t cached;         /* reserved - in_use: free blocks kept for reuse */
    size_t reserved;       /* bytes held from cudaMalloc */
    size_t peak_reserved;  /* most reserved since the state was created */
    int64_t cuda_mallocs;  /* cudaMalloc calls that succeeded since the state was created */
    int64_t cuda_frees;    /* cudaFree calls since the state was created */
    int64_t segments;      /* cudaMalloc'd regions held now */
    size_t device_free;    /* cudaMemGetInfo: free bytes on the device (all processes) */
    size_t device_total;   /* cudaMemGetInfo: the device's memory */
} an_cuda_mem_stats;
/* Fills *out for ctx's device. */
an_status an_cuda_memory_stats(an_ctx *ctx, an_cuda_mem_stats *out);
/* Synchronises the stream and returns every wholly free cached segment to the device (cudaFree). */
an_status an_cuda_empty_cache(an_ctx *ctx);
an_status an_cuda_memcpy(an_ctx *ctx, void *dst, an_device dst_device, const void *src, an_device src_device,
                         size_t bytes);
an_status an_cuda_memset(an_ctx *ctx, void *ptr, int value, size_t bytes);
/* ptr (n elements of elem_size 1, 2, 4 or 8 bytes) = the element bits, asynchronously on the stream
 * (a constant fill with no host copy, which would wait for the stream: an_tensor_fill). */
an_status an_cuda_fill_bits(an_ctx *ctx, void *ptr, int64_t n, int elem_size, uint64_t bits);
/* Reading a few device bytes while later work runs: an_cuda_read_mark notes the work queued so far
 * on the stream; an_cuda_read_marked copies `bytes` of device src, written by that work, to host
 * dst on a second stream and returns once they have arrived, without waiting for what was queued
 * after the mark (generation queues the next decode step between the two). The device memory
 * must stay allocated until it returns. Not while capturing a graph. */
an_status an_cuda_read_mark(an_ctx *ctx);
an_status an_cuda_read_marked(an_ctx *ctx, void *dst, const void *src, size_t bytes);
an_status an_cuda_synchronize(an_ctx *ctx);
/* Device-to-device copy of `height` rows of `width` bytes from src (rows src_pitch apart) to dst
 * (rows dst_pitch apart); asynchronous on the stream. */
an_status an_cuda_memcpy_2d(an_ctx *ctx, void *dst, size_t dst_pitch, const void *src, size_t src_pitch,
                            size_t width, size_t height);
/* Measured device memory bandwidth: bytes read plus bytes written per second (2 x bytes per copy)
 * over `reps` device-to-device copies of a `bytes` buffer after one warm-up copy, timed with
 * events. Allocates and frees its two buffers with cudaMalloc (outside the caching allocator):
 * for benchmarks, not for a training loop. */
an_status an_cuda_copy_bandwidth(an_ctx *ctx, size_t bytes, int reps, double *bytes_per_second);
/* Whether the decode-step kernels launch with programmatic dependent launch (kernels/pdl.cuh; on
 * by default): off only to measure what it gains. */
an_status an_cuda_set_pdl(an_ctx *ctx, int on);
/* Whether the Hopper GEMMs of kernels/gemm_wgmma.cu run where they apply (on by default on
 * compute capability 9.0, which alone can turn it on): off only to measure what they gain. */
an_status an_cuda_set_wgmma(an_ctx *ctx, bool on);
/* Whether a loss's logits take an_cuda_gemm_logits_stats and an_cuda_cross_entropy_stats_grad where
 * they apply (on by default): off only to measure what they gain. an_cuda_logits_stats_apply: 1
 * when they run for these operands (an_cuda_gemm_swiglu_rule's conditions, and not turned off). */
an_status an_cuda_set_logits_stats(an_ctx *ctx, bool on);
int an_cuda_logits_stats_apply(an_ctx *ctx, an_dtype dtype, int64_t M, int64_t K, int64_t N, const void *const *ptrs,
                               int n_ptrs);
/* Whether the projections of one input (an_qkv_linear's q, k, v) take one an_cuda_gemm_projections
 * launch where it applies (on by default): off only to measure what it gains. */
an_status an_cuda_set_projections(an_ctx *ctx, bool on);
/* Whether that launch also rotates q and k where asked (an_cuda_projection's rope; on by default):
 * off, an_cuda_gemm_projections_rule refuses rotated projections (an_qkv_linear_rope then runs the
 * rope kernel after them), only to measure what it gains. */
an_status an_cuda_set_rope_epilogue(an_ctx *ctx, bool on);
/* Rows of 128-row tiles that gemm_wgmma.cu's kernels walk the columns with at once (their L2
 * reuse: each group reads B from memory once), 0 for the default (8), up to 1024. The order of the
 * tiles only: the same bits at any value. */
an_status an_cuda_set_gemm_group_rows(an_ctx *ctx, int rows);
/* Whether the LoRA adapters' gradients take an_cuda_lora_grads (default on; off runs the thin
 * cuBLASLt GEMMs, for measurement). */
an_status an_cuda_set_lora_grads(an_ctx *ctx, bool on);
/* Whether bias gradients take an_cuda_column_sums where it applies (default on; off forms them in
 * cuBLASLt's dW GEMM epilogue, for measurement). */
an_status an_cuda_set_column_sums(an_ctx *ctx, bool on);
/* Whether unsegmented bf16/f16 attention with head_dim 64 or 128 runs on cuDNN's fused flash
 * attention (kernels/attention_cudnn.cu; on by default) or on our tensor-core kernels
 * (kernels/attention_mma.cu): off to compare the two. */
an_status an_cuda_set_attention_cudnn(an_ctx *ctx, bool on);
/* Whether the attention backward takes kernels/attention_wgmma.cu where that applies (on by
 * default: an H100-class device, bf16/f16, head_dim 128, no segments, T a multiple of 64): off to
 * compare it with cuDNN's (or, with cuDNN off as well, attention_mma.cu's). */
an_status an_cuda_set_attention_wgmma(an_ctx *ctx, bool on);
/* Whether an_cuda_attention_backward_turning turns the gradients back where it can (on by
 * default) or never (off: the rope pass after does, for measurement). */
an_status an_cuda_set_attention_turns_rope(an_ctx *ctx, bool on);
/* Whether cuDNN's attention backward is its deterministic one (on by default, bit-reproducible
 * like our kernels) or the one that accumulates dQ with atomics: off only to measure it. */
an_status an_cuda_set_attention_cudnn_deterministic(an_ctx *ctx, bool on);
/* Which of the engine configs cuDNN's heuristics offer for the attention forward (backward 0) or
 * backward (1) plans built from now on: 0 (the default) the first that finalises, n the n-th after
 * it (0 to 15; a plan asked for more engines than finalise fails to build, naming how many did).
 * For measuring the others (tests/test_cuda_attention_cudnn.c). */
an_status an_cuda_set_attention_cudnn_engine(an_ctx *ctx, int backward, int engine);
/* Whether every cuDNN attention backward graph carries the explicit padding mask that cuDNN <= 9.15
 * needs when T is not a multiple of 128 (off by default: added only there); on only so tests can
 * run that graph on a newer cuDNN. */
an_status an_cuda_set_attention_cudnn_padding_mask(an_ctx *ctx, bool always);
/* cudnnGetVersion() of the loaded cuDNN (e.g. 91400), 0 in a build without CUDA. */
int an_cuda_cudnn_version(void);
/* Timing on the state's stream: an event recorded now (free it with an_cuda_event_free), and the
 * milliseconds from start to stop once stop has completed (waits for it). */
an_status an_cuda_event_record(an_ctx *ctx, void **event);
an_status an_cuda_event_elapsed(an_ctx *ctx, void *start, void *stop, double *ms);
void an_cuda_event_free(void *event);

/* Elementwise (f32, bf16, f16; math in fp32). b is broadcast: element i of a pairs with i % nb. */
an_status an_cuda_cast(an_ctx *ctx, const void *src, an_dtype src_dtype, void *dst, an_dtype dst_dtype, size_t n);
/* dst (n, dst_dtype) = src (n, fp32) cast to dst_dtype, times the device scalar *scale (dst_dtype):
 * an_cuda_cast then an_cuda_binary's multiply, bit for bit, in one pass. */
an_status an_cuda_cast_mul(an_ctx *ctx, const float *src, void *dst, an_dtype dst_dtype, int64_t n, const void *scale);
an_status an_cuda_add_into(an_ctx *ctx, void *dst, const void *src, an_dtype dtype, int64_t n);
an_status an_cuda_binary(an_ctx *ctx, an_binary_kind kind, an_dtype dtype, const void *a, int64_t n, const void *b,
                         int64_t nb, void *out);
/* grad_a (n) and grad_b (nb, summed over the broadcast) are written with =; either may be NULL. */
an_status an_cuda_binary_backward(an_ctx *ctx, an_binary_kind kind, an_dtype dtype, const void *a, int64_t n,
                                  const void *b, int64_t nb, const void *grad_out, void *grad_a, void *grad_b);
an_status an_cuda_scale(an_ctx *ctx, an_dtype dtype, const void *x, int64_t n, double s, void *out);
/* out = silu(x) when up is NULL, else silu(x) * up. */
an_status an_cuda_swiglu(an_ctx *ctx, an_dtype dtype, const void *gate, const void *up, int64_t n, void *out);
/* out (rows, n) = silu(gate) * up for gate_up (rows, 2 n) holding gate | up a row (one GEMM's
 * output against the stacked weights): an_cuda_swiglu's formula and bits. */
an_status an_cuda_swiglu_rows(an_ctx *ctx, an_dtype dtype, const void *gate_up, int64_t rows, int64_t n, void *out);
/* grad_gate (and grad_up when up is given) from grad_out; written with =. */
an_status an_cuda_swiglu_backward(an_ctx *ctx, an_dtype dtype, const void *gate, const void *up, int64_t n,
                                  const void *grad_out, void *grad_gate, void *grad_up);
/* out (a scalar of dtype) = scale * sum(x), accumulated in fp32. */
an_status an_cuda_sum(an_ctx *ctx, an_dtype dtype, const void *x, int64_t n, double scale, void *out);
/* out (n) = value * scale, where value is the scalar at *x (broadcast of a scalar gradient). */
an_status an_cuda_fill_from_scalar(an_ctx *ctx, an_dtype dtype, const void *x, double scale, int64_t n, void *out);

/* GEMM through cuBLASLt: bf16/f16 operands with fp32 accumulation, or f32 (TF32 off). */
an_status an_cuda_gemm(an_ctx *ctx, const an_gemm_shape *shape, an_dtype dtype, const void *a, const void *b, void *c);
/* The same plus bias (N, of dtype) on every row of C (batch entries included), added in fp32 before
 * C's one rounding (cuBLASLt's bias epilogue, or the GEMV's). */
an_status an_cuda_gemm_bias(an_ctx *ctx, const an_gemm_shape *shape, an_dtype dtype, const void *a, const void *b,
                            const void *bias, void *c);
/* C = alpha op(A) op(B) (shape->accumulate false), the scale applied in fp32 before C's one
 * rounding (cuBLASLt's alpha; the GEMV's rows and an empty K take a scaling pass after). */
an_status an_cuda_gemm_scaled(an_ctx *ctx, const an_gemm_shape *shape, an_dtype dtype, double alpha, const void *a,
                              const void *b, void *c);
/* C = op(A) op(B) + bias (NULL: none) + addend, addend of C's layout and dtype (may be C itself;
 * shape->accumulate must be false): a residual added in cuBLASLt's epilogue (beta 1 with its C
 * and D pointers apart), in fp32 before C's one rounding. */
/* C (+= with shape->accumulate) = op(A) op(B) for a transposed A (K, M), and grad_bias (M, of dtype)
 * = A's column sums over its K rows: a linear's weight and bias gradients from one GEMM (cuBLASLt's
 * bias-gradient epilogue where it has one, else the GEMM and a column-sum kernel). */
an_status an_cuda_gemm_bias_grad(an_ctx *ctx, const an_gemm_shape *shape, an_dtype dtype, const void *a, const void *b,
                                 void *grad_bias, void *c);
an_status an_cuda_gemm_addend(an_ctx *ctx, const an_gemm_shape *shape, an_dtype dtype, const void *a, const void *b,
                              const void *bias, const void *addend, void *c);
/* out[i] (width[i], of dtype) = the column sums of y[i] (rows, width[i]) for i < count <=
 * AN_CUDA_COLUMN_SUMS_MAX, written with =: the bias gradients of projections reading the same rows
 * (a linear's, or q's, k's and v's) in one pass and a finish (kernels/column_sums.cu). fp32 sums in
 * an order fixed by rows alone, rounded once: the same bits every run, whichever tensors share the
 * launch; not cuBLASLt's. an_cuda_column_sums_rule: 1 when it applies: bf16, f16 or f32, widths
 * multiples of 16 bytes' elements, 16-byte aligned inputs, and not turned off
 * (an_cuda_set_column_sums: then bias gradients come from cuBLASLt's dW GEMM epilogue). */
#define AN_CUDA_COLUMN_SUMS_MAX 4
int an_cuda_column_sums_rule(an_ctx *ctx, an_dtype dtype, int64_t rows, int count, const void *const *y,
                             const int64_t *width, void *const *out);
an_status an_cuda_column_sums(an_ctx *ctx, an_dtype dtype, int64_t rows, int count, const void *const *y,
                              const int64_t *width, void *const *out);
/* The same with an f32 C (bf16/f16/f32 operands): accumulating into an fp32 buffer without a
 * rounding to the operand dtype per call (linear_cross_entropy's weight gradient over chunks). */
an_status an_cuda_gemm_f32_out(an_ctx *ctx, const an_gemm_shape *shape, an_dtype dtype, const void *a, const void *b,
                               float *c);
/* y (M, N) = x (M, K) W^T + bias (N; NULL: none) for W (N, K), plus the old y when accumulate,
 * 1 <= M <= AN_CUDA_GEMV_MAX_ROWS (kernels/gemv.cu): one read of W at memory speed, fp32
 * accumulation, one rounding. an_cuda_gemm sends such shapes with small weights (a decode step's
 * projections) here, and an_linear its biased ones. */
#define AN_CUDA_GEMV_MAX_ROWS 8
/* an_cuda_gemm's rule at M <= AN_CUDA_GEMV_RULE_ROWS against W^T: the GEMV up to this many weight
 * bytes on every card (every projection of the 1.5B model); a larger weight (the 467 MB lm_head)
 * takes the GEMV only on cards whose peak memory bandwidth is below
 * AN_CUDA_GEMV_LARGE_MAX_BANDWIDTH, cuBLASLt on faster ones. Measured in decode graphs, lm_head
 * at M = 1, GEMV against cuBLASLt: H100 (3.35 TB/s) 151.2 against 164.8 us, H200 (4.8 TB/s)
 * 119 against 107 us (docs/performance.md). */
#define AN_CUDA_GEMV_MAX_WEIGHT_BYTES ((size_t)64 << 20)
#define AN_CUDA_GEMV_LARGE_MAX_BANDWIDTH 4.0e12 /* bytes/s */
/* The rows at or below which a decode step (model/model.c's fused block) and an_cuda_gemm take
 * the weight-streaming GEMV kernels instead of cuBLASLt (at most AN_CUDA_GEMV_MAX_ROWS). Measured
 * on an H100 at the 1.5B shape (ms a decode step, GEMV to 8 / 4 / 2 / 1 rows): batch 2 2.092 /
 * 2.098 / 2.093 / 2.106, batch 4 2.628 / 2.617 / 2.135 / 2.139, batch 8 3.808 / 2.161 / 2.161 /
 * 2.160: past two rows the GEMV's fp32 FMAs per weight byte outweigh cuBLASLt's launch. Again
 * after the GEMVs' loads went out together (f2e2b35; rule 2 / 4 / 8, ms a step): batch 3 2.037 /
 * 2.116 / 2.114, batch 4 2.059 / 2.225 / 2.227, batch 6 2.063 / 2.065 / 2.971, batch 8 2.098 /
 * 2.101 / 3.329; batch 1 and 2 alike. */
#ifndef AN_CUDA_GEMV_RULE_ROWS /* -D only to measure another rule */
#define AN_CUDA_GEMV_RULE_ROWS 2
#endif
an_status an_cuda_gemv(an_ctx *ctx, an_dtype dtype, const void *x, int64_t M, int64_t K, const void *w, int64_t N,
                       const void *bias, int accumulate, void *y);

/* y (M, N) = x (M, K) W^T + bias (N; NULL: none) for W (N, K), plus the old y when accumulate,
 * 1 <= M <= AN_CUDA_DECODE_GEMM_MAX_ROWS, bf16/f16, K a multiple of 8, x and W 16-byte aligned
 * (kernels/gemm_decode.cu): tensor cores streaming W once through shared memory, fp32
 * accumulation, one rounding, the same bits every run. an_cuda_gemm sends a batched decode
 * step's projections here (AN_CUDA_GEMV_RULE_ROWS < M <= AN_CUDA_DECODE_GEMM_RULE_ROWS, bf16/f16,
 * K % 8 == 0, aligned operands; cuBLASLt otherwise). Measured on an H100 (bench/
 * gemm_decode_variants, W from HBM, us a call against cuBLASLt at M 3 / 8 / 16): q|k|v 2048 x
 * 1536 5.35 / 5.35 / 5.37 against 5.20 / 5.13 / 5.12, o 4.66 / 4.79 / 4.82 against 4.83 / 4.84 /
 * 4.86, gate|up 17920 x 1536 22.3 / 22.5 / 22.8 against 22.4 / 22.7 / 23.0, down 1536 x 8960 13.5 /
 * 13.6 / 13.7 against 13.6 / 13.7 / 13.8, lm_head 157 / 158 / 160 against 166 / 168 / 170;
 * batch-8 decode 2.094 / 2.101 -> 2.050 / 2.051 ms/step. At M 32 it lost (q|k|v 5.86 against
 * 5.15, gate|up 27.4 against 24.0; batch-32 decode 2.305 -> 2.343 ms/step): cuBLASLt keeps it. */
#define AN_CUDA_DECODE_GEMM_MAX_ROWS 64
#ifndef AN_CUDA_DECODE_GEMM_RULE_ROWS /* -D only to measure another rule (0: never) */
#define AN_CUDA_DECODE_GEMM_RULE_ROWS 16
#endif
an_status an_cuda_gemm_decode(an_ctx *ctx, an_dtype dtype, const void *x, int64_t M, int64_t K, const void *w,
                              int64_t N, const void *bias, int accumulate, void *y);
/* y (M, N) = swiglu of x (M, K) gate_up^T for the stacked gate | up weights gate_up (2N, K): the
 * same GEMM with the swiglu in its epilogue (the gate and up sums rounded to the dtype first, then
 * silu(g) u as an_cuda_swiglu_rows forms it; a batched decode step's MLP, no bias). */
an_status an_cuda_gemm_decode_swiglu(an_ctx *ctx, an_dtype dtype, const void *x, int64_t M, int64_t K,
                                     const void *gate_up, int64_t N, void *y);
/* 1 when an_cuda_gemm takes the decode GEMM for x (M, K) W^T (its rule above), else 0. */
int an_cuda_decode_gemm_rule(an_dtype dtype, const void *x, int64_t M, int64_t K, const void *w);

/* gate (M, N) = x (M, K) W_gate^T, up = x W_up^T and act = silu(gate) up for W_gate, W_up (N, K),
 * each rounded to the dtype, in one launch of kernels/gemm_wgmma.cu's Hopper GEMM: fp32
 * accumulation over k in order, the swiglu in the epilogue formed from the rounded gate and up
 * exactly as an_cuda_swiglu forms it (the same bits as the GEMMs + an_cuda_swiglu wherever the
 * GEMMs agree; cuBLASLt's did at every training shape measured). The training MLP's forward: on an
 * H100 at 8192 x 8960 x 1536, 693-702 us against 723-731 for cuBLASLt's two GEMMs and a vectorized
 * swiglu pass (bench/gemm_wgmma_variants). Only where an_cuda_gemm_swiglu_rule allows. */
an_status an_cuda_gemm_swiglu(an_ctx *ctx, an_dtype dtype, const void *x, int64_t M, int64_t K, const void *w_gate,
                              const void *w_up, int64_t N, void *gate, void *up, void *act);
/* The gradient of silu(gate) up through y = act W^T: d act = dy (M, K) w (K, N) for w (K, N) row-major
 * (the down projection's weight, K = its outputs), then dgate = d act u silu'(gate) and dup = d act
 * silu(gate), each rounded to the dtype, in one launch (the same kernel, the swiglu gradient in its
 * epilogue: d act rounded to the dtype first, then an_cuda_swiglu_backward's formula, so the same
 * bits as an_cuda_gemm + an_cuda_swiglu_backward wherever the GEMMs agree); with act not NULL also
 * act = silu(gate) up as an_cuda_swiglu forms it (a trained down projection's dW reads it). gate,
 * up, dgate, dup, act (M, N). On an H100 at 8192 x 8960 x 1536: 441-444 us (with act 516-518)
 * against 556-563 (700-710) for cuBLASLt's GEMM and the separate passes (bench/gemm_wgmma_variants,
 * fifteenth session). Only where
 * an_cuda_gemm_swiglu_rule allows (its M, K, N). */
an_status an_cuda_gemm_swiglu_backward(an_ctx *ctx, an_dtype dtype, const void *dy, int64_t M, int64_t K,
                                       const void *w, int64_t N, const void *gate, const void *up, void *dgate,
                                       void *dup, void *act);
/* The same dgate and dup (the same bits) side by side in one dgu (M, 2 N): dgate in columns 0..N-1,
 * dup in N..2N-1, so that x's gradient dgate W_gate + dup W_up is one GEMM over the stacked weights
 * (K = 2 N; ops/swiglu_mlp.c's frozen MLP). Only where an_cuda_swiglu_stacked_rule allows:
 * an_cuda_gemm_swiglu_rule's conditions, for dgu's halves too, and the form not turned off
 * (an_cuda_set_swiglu_stacked, on by default; off only to measure what it gains). */
an_status an_cuda_gemm_swiglu_backward_stacked(an_ctx *ctx, an_dtype dtype, const void *dy, int64_t M, int64_t K,
                                               const void *w, int64_t N, const void *gate, const void *up, void *dgu);
int an_cuda_swiglu_stacked_rule(an_ctx *ctx, an_dtype dtype, int64_t M, int64_t K, int64_t N, const void *const *ptrs,
                                int n_ptrs);
an_status an_cuda_set_swiglu_stacked(an_ctx *ctx, bool on);
/* D (M, N) = sum over s < segments of A_s (M, K_s) op(B_s), one fp32 accumulation over every
 * segment and one rounding to the dtype: op(B) = B^T for B_s (N, K_s), or with bt B_s stored
 * (K_s, N). Sums of products that share D (dX of several projections of one input, dg W_gate + du
 * W_up, a LoRA branch's (x A^T s) B^T beside x W^T) in one launch instead of a GEMM each adding
 * into D. 1 <= segments <= 6; each (M, K_s, N) as an_cuda_gemm_swiglu_rule allows. */
an_status an_cuda_gemm_segments(an_ctx *ctx, an_dtype dtype, int64_t M, int64_t N, int segments,
                                const void *const *a, const int64_t *k, const void *const *b, bool bt, void *d);
/* One projection of an_cuda_gemm_projections: out (M, n) = x W^T + down B^T + bias for W (n, K),
 * with an adapter's down (M, r) (its scaled x_lora A^T) and B (n, r), or without (down NULL), and
 * bias (n) or none (NULL). With rope (M, rope_d / 2) (cos, sin) pairs from an_cuda_rope_table, the
 * output is then rotated in NEOX pairs (i, i + rope_d / 2) of each of its n / rope_d heads, with
 * the bits of storing it and running an_cuda_rope over it (rope_d 64 or 128; NULL: not rotated). */
typedef struct {
    const void *w, *bias, *down, *lora_b;
    int64_t n, r;
    void *out;
    const float *rope;
    int64_t rope_d;
} an_cuda_projection;
/* The count <= 3 projections of one input x (M, K) (an_qkv_linear's q, k, v) in one launch of
 * gemm_wgmma.cu's kernel (PROJ; 128 x 256 tiles where every n is a multiple of 256, else 128 x
 * 128): the outputs side by side as one GEMM's column tiles. Numerics: x W^T + bias in fp32,
 * rounded to the dtype; with an adapter its down B^T then summed onto that rounded value in fp32
 * and rounded again: peft's order (the base layer's output, then the adapter's fp32 product added
 * and cast back), so an adapter's first products, under half a unit in the last place, round away
 * as they do there and in the cuBLASLt chain it replaces (bench/gemm_wgmma_variants counts them).
 * In place of up to five launches on the 1.5B model's q, k, v with LoRA on q and v (per adapter a
 * thin GEMM writing down B^T and the base GEMM adding into it; k's GEMM): 87.7 us against 120.3 on
 * an H100. an_cuda_gemm_projections_rule: 1 when it applies: an_cuda_gemm_swiglu_rule's conditions
 * for each (M, K, n) and (M, r, n), every n a multiple of 128, every pointer 16-byte aligned, the
 * rotated projections' rope_d one value, 64 or 128, dividing their n, and not turned off
 * (an_cuda_set_projections; rotated ones also an_cuda_set_rope_epilogue). */
int an_cuda_gemm_projections_rule(an_ctx *ctx, an_dtype dtype, const void *x, int64_t M, int64_t K, int count,
                                  const an_cuda_projection *proj);
an_status an_cuda_gemm_projections(an_ctx *ctx, an_dtype dtype, const void *x, int64_t M, int64_t K, int count,
                                   const an_cuda_projection *proj);
/* One LoRA adapter of an_cuda_lora_grads: on a projection (M, n) whose output gradient is dy,
 * with B (n, r), the forward's down (M, r) (its scale x_lora A^T, rounded) and input x_lora (M, K)
 * (read only for grad_a; may be NULL without it).
 * Outputs, each NULL where not wanted: d_down (M, r) = scale dy B, rounded (needed for grad_a);
 * grad_b (n, r) = dy^T down; grad_a (r, K) = d_down^T x_lora. add_b / add_a: the old gradient is
 * added to the fp32 sum before its rounding (beta 1), else the gradient is written. */
typedef struct {
    const void *dy, *lora_b, *down, *x_lora;
    int64_t n, r;
    double scale;
    void *d_down, *grad_b, *grad_a;
    int add_b, add_a;
} an_cuda_lora_grad;
/* The count <= 3 adapters' gradients of one backward in two launches of kernels/lora_grads.cu
 * (d_down for every adapter, then dB and dA as column tiles of one split-row GEMM and a fixed-order
 * sum of the splits; adapters sharing x_lora read it once). fp32 accumulation in an order fixed
 * by M: the same bits every run, on any device, with or without the other adapters; not cuBLASLt's. an_cuda_lora_grads_rule: 1 when it applies:
 * bf16 or f16, ranks multiples of 8 up to 64, K and every n multiples of 8, M below 2^31, 16-byte
 * aligned operands, d_down wherever grad_a is wanted, and not turned off (an_cuda_set_lora_grads). */
int an_cuda_lora_grads_rule(an_ctx *ctx, an_dtype dtype, int64_t M, int64_t K, int count, const an_cuda_lora_grad *ad);
an_status an_cuda_lora_grads(an_ctx *ctx, an_dtype dtype, int64_t M, int64_t K, int count,
                             const an_cuda_lora_grad *ad);
/* logits (M, N) = x (M, K) w (N, K)^T rounded to the dtype, as an_cuda_gemm forms them (fp32
 * accumulation, one rounding), and per row and column tile of an_cuda_logits_stats_tiles(N) the
 * running log-sum-exp of the row's rounded logits in the tile: stats (M, tiles) float pairs (max m,
 * sum of exp(x - m)), for an_cuda_cross_entropy_stats_grad, so the loss reads its logits once
 * instead of twice. One launch of gemm_wgmma.cu's kernel (128 x 192 tiles); only where
 * an_cuda_gemm_swiglu_rule allows (its M, K, N; stats 16-byte aligned too). */
int64_t an_cuda_logits_stats_tiles(int64_t N);
an_status an_cuda_gemm_logits_stats(an_ctx *ctx, an_dtype dtype, const void *x, int64_t M, int64_t K, const void *w,
                                    int64_t N, void *logits, float *stats);
/* 1 when ctx's device runs gemm_wgmma.cu's kernels (compute capability 9.0) and the operands fit
 * its tensor maps: bf16 or f16, K and N multiples of 8, M, N, K and the tile count below 2^31,
 * every one of the n_ptrs pointers 16-byte aligned; else 0. */
int an_cuda_gemm_swiglu_rule(an_ctx *ctx, an_dtype dtype, int64_t M, int64_t K, int64_t N, const void *const *ptrs,
                             int n_ptrs);

/* Attention (kernels/attention.cu): causal, grouped-query, packed documents, as an_attention in
 * autograd/ops.h defines it. q (B, T, Hq, D) and k, v (B, T, Hkv, D) of dtype (f32, bf16, f16),
 * 1 <= D <= 256; segments (B, T) of seg_dtype (i32 or i64) on the device, or NULL: query i sees key
 * j when j <= i and segments[i] == segments[j]. Math is fp32; every output is written with =.
 * Forward: out (B, T, Hq, D) of dtype and lse (B, Hq, T) f32, the natural-log logsumexp of each
 * row's scaled, masked scores (what the backward recomputes the probabilities from). */
an_status an_cuda_attention(an_ctx *ctx, const an_attention_shape *shape, an_dtype dtype, const void *q,
                            const void *k, const void *v, const void *segments, an_dtype seg_dtype, void *out,
                            float *lse);
/* Whether dtype and head_dim take a tensor-core path (given 16-byte-aligned buffers): cuDNN's
 * (no segments, switch on) or ours; both read the forward's out in the backward. */
bool an_cuda_attention_uses_tensor_cores(an_dtype dtype, int64_t head_dim);
/* Backward from the forward's out and lse: grad_q (B, T, Hq, D), grad_k and grad_v (B, T, Hkv, D)
 * of dtype, grad_k/grad_v summed over the query heads of each kv head in a fixed order
 * (deterministic). Any gradient pointer may be NULL.
 * Paths: bf16/f16 with head_dim 64 or 128 and 16-byte-aligned buffers run on the tensor cores:
 * on a compute capability 9.0 device with head_dim 128, no segments and T a multiple of 64 on our
 * warpgroup kernels (kernels/attention_wgmma.cu; unless an_cuda_set_attention_wgmma turned them
 * off); else without segments on cuDNN's fused flash attention (kernels/attention_cudnn.cu; unless
 * an_cuda_set_attention_cudnn turned it off), else on ours (kernels/attention_mma.cu); all read
 * out for delta = rowsum(grad_out * out). Everything else runs on the fp32 CUDA-core kernels of
 * kernels/attention.cu, which do not read out (it may be NULL where
 * an_cuda_attention_uses_tensor_cores is false). */
an_status an_cuda_attention_backward(an_ctx *ctx, const an_attention_shape *shape, an_dtype dtype, const void *q,
                                     const void *k, const void *v, const void *segments, an_dtype seg_dtype,
                                     const void *out, const float *lse, const void *grad_out, void *grad_q,
                                     void *grad_k, void *grad_v);
/* As an_cuda_attention_backward, and where the warpgroup kernels take the call (see there), given
 * rope_table, an_rope_table's (B T, head_dim / 2) (cos, sin) of a NEOX rotation over all of
 * head_dim (16-byte aligned): grad_q and grad_k leave turned back by each row's angle, the bits
 * the rope op's backward pass would give after, and *turned is true. Elsewhere (or with
 * rope_table NULL) the gradients are an_cuda_attention_backward's and *turned is false. */
an_status an_cuda_attention_backward_turning(an_ctx *ctx, const an_attention_shape *shape, an_dtype dtype, const void *q,
                                             const void *k, const void *v, const void *segments, an_dtype seg_dtype,
                                             const void *out, const float *lse, const void *grad_out, void *grad_q,
                                             void *grad_k, void *grad_v, const float *rope_table, bool *turned);
/* Decode attention over a KV cache, as an_attention_cached in autograd/ops.h: q and out
 * (B', T, Hq, D) of dtype, caches (Bc = cache_rows, cache_len, Hkv, D); rows (B') and lengths (Bc)
 * are i64 DEVICE arrays, already validated by the caller (lengths[rows[b]] + T <= cache_len; the
 * kernel still clamps, and writes zeros for a row outside [0, Bc)). No host copy, no sync:
 * capturable in a CUDA graph. shape->batch is B', ->seq T. */
an_status an_cuda_attention_cached(an_ctx *ctx, const an_attention_shape *shape, int64_t cache_len, int64_t cache_rows,
                                   an_dtype dtype, const void *q, const void *k_cache, const void *v_cache,
                                   const int64_t *rows, const int64_t *lengths, void *out);

/* ---- KV cache bookkeeping on the device (kv_cache.cu): rows (B') and lengths (Bc) i64 device
 * arrays as above; asynchronous, no host data, capturable in a CUDA graph. ---- */

/* positions (B', T) i64 = lengths[rows[b]] + t. */
an_status an_cuda_kv_positions(an_ctx *ctx, const int64_t *rows, const int64_t *lengths, int64_t B, int64_t T,
                               int64_t *positions);
/* Appends k and v (B', T, token_bytes) to caches (Bc, capacity, token_bytes): token t of entry b
 * goes to slot lengths[rows[b]] + t of cache row rows[b] (slots at or past capacity are skipped;
 * the caller validated). lengths are not changed. */
an_status an_cuda_kv_store(an_ctx *ctx, const void *k, const void *v, void *k_cache, void *v_cache, const int64_t *rows,
                           const int64_t *lengths, int64_t B, int64_t T, int64_t capacity, size_t token_bytes);
/* lengths[rows[b]] += T for every b (rows distinct). */
an_status an_cuda_kv_advance(an_ctx *ctx, const int64_t *rows, int64_t *lengths, int64_t B, int64_t T);

/* ---- Fused kernels of a decode step (decode.cu; model/model.c's decode rule says when they run).
 * Device data only, no sync: capturable in a CUDA graph. ---- */

/* One projection of an_cuda_rmsnorm_gemv: y (M, n) = x' W^T (+ bias) for W (n, K). */
typedef struct {
    const void *w;    /* (n, K) */
    const void *bias; /* (n), or NULL */
    void *y;          /* (M, n) */
    int64_t n;
} an_cuda_proj;
/* x' = rmsnorm(x (M, K)) with weight norm_w (K) and eps (never stored), then y_i = x' W_i^T + bias_i
 * for n_proj (1 to 3) projections, all in one launch; 1 <= M <= AN_CUDA_GEMV_MAX_ROWS. Numerics:
 * fp32; the norm's scale is applied to the finished dot product (rstd * sum_k W x w_k), so x' is
 * not rounded to the dtype as an_cuda_rmsnorm writes it; bias in fp32, one rounding. */
an_status an_cuda_rmsnorm_gemv(an_ctx *ctx, an_dtype dtype, const void *x, int64_t M, int64_t K, const void *norm_w,
                               double eps, const an_cuda_proj *proj, int n_proj);
/* act (M, N) = swiglu(x' Wg^T + bg, x' Wu^T + bu) for x' = rmsnorm(x (M, K)) with weight norm_w (K)
 * and eps, gate_w and up_w (N, K), biases (N) or NULL: a decode step's MLP up to down_proj in one
 * launch; 1 <= M <= AN_CUDA_GEMV_MAX_ROWS. Numerics: fp32 throughout; the norm's scale is factored
 * out of the dot products (rstd * sum_k W x w_k, so the normalised x is not rounded to the dtype as
 * an_cuda_rmsnorm would write it); gate and up are rounded to the dtype, then an_cuda_swiglu's
 * formula, one rounding. */
an_status an_cuda_rmsnorm_swiglu_gemv(an_ctx *ctx, an_dtype dtype, const void *x, int64_t M, int64_t K,
                                      const void *norm_w, double eps, const void *gate_w, const void *gate_b,
                                      const void *up_w, const void *up_b, int64_t N, void *act);
/* q_bias (Hq D), k_bias and v_bias (Hkv D) added to q, k, v (each may be NULL: none) as
 * an_cuda_binary adds them, an_cuda_rope of q (B', T, Hq, D) in place and of k (B', T, Hkv, D),
 * then an_cuda_kv_store of the rotated k and of v, bit for bit, in one launch: positions are lengths[rows[b]] + t (rows (B'),
 * lengths (Bc) i64 device arrays as for an_cuda_kv_store; slots at or past capacity are not
 * written); caches (Bc, capacity, Hkv, D); inv_freq (D/2) float64 on the host; even D <=
 * AN_CUDA_ROPE_MAX_D. */
an_status an_cuda_kv_rope_store(an_ctx *ctx, an_dtype dtype, void *q, const void *k, const void *v,
                                const void *q_bias, const void *k_bias, const void *v_bias, void *k_cache,
                                void *v_cache, const int64_t *rows, const int64_t *lengths, int64_t B, int64_t seq,
                                int64_t Hq, int64_t Hkv, int64_t D, int64_t capacity, const double *inv_freq,
                                int interleaved);
/* an_cuda_kv_rope_store with q, k and v read from the rows of one GEMM output qkv (B', T,
 * (Hq + 2 Hkv) D): q | k | v a token; the rotated q goes to q (B', T, Hq, D), k and v into the
 * caches. The same bits as an_cuda_kv_rope_store on the three parts. */
an_status an_cuda_qkv_rope_store(an_ctx *ctx, an_dtype dtype, const void *qkv, void *q, const void *q_bias,
                                 const void *k_bias, const void *v_bias, void *k_cache, void *v_cache,
                                 const int64_t *rows, const int64_t *lengths, int64_t B, int64_t seq, int64_t Hq,
                                 int64_t Hkv, int64_t D, int64_t capacity, const double *inv_freq, int interleaved);

/* Where an_cuda_rmsnorm_qkv_rope puts k and v: the cache rows and positions of
 * an_cuda_kv_rope_store. */
typedef struct {
    void *k_cache, *v_cache;  /* (Bc, capacity, Hkv, D) */
    const int64_t *rows;      /* (B') cache row of each batch entry, device */
    const int64_t *lengths;   /* (Bc) keys each cache row held before this step, device */
    int64_t seq;              /* T: tokens a batch entry (M = B' T) */
    int64_t capacity;         /* slots a cache row */
    int64_t q_heads, kv_heads, head_dim;
    const double *inv_freq;   /* (D/2) float64, host */
    int interleaved;          /* rope pairs (2i, 2i + 1) instead of (i, i + D/2) */
} an_cuda_kv_rope;
/* an_cuda_rmsnorm_gemv of q, k, v (proj[0..2], with their biases) followed by
 * an_cuda_kv_rope_store (no biases left to add), bit for bit, in one launch: q rotated into
 * proj[0].y (M, Hq D); k rotated and v written into the caches only (proj[1].y and proj[2].y are
 * not used); slots at or past capacity are not written. 1 <= M <= AN_CUDA_GEMV_MAX_ROWS, M a
 * multiple of seq; even D <= AN_CUDA_ROPE_MAX_D. */
an_status an_cuda_rmsnorm_qkv_rope(an_ctx *ctx, an_dtype dtype, const void *x, int64_t M, int64_t K,
                                   const void *norm_w, double eps, const an_cuda_proj *proj,
                                   const an_cuda_kv_rope *kv);

/* ---- CUDA graphs of the state's stream (graph.cu; its header says the memory and capture rules) ---- */
typedef struct an_cuda_graph an_cuda_graph;
/* Starts capturing the stream: launches until an_cuda_graph_end are recorded, not run. */
an_status an_cuda_graph_begin(an_ctx *ctx);
/* Ends the capture begun by an_cuda_graph_begin; body is the status of the captured work. On
 * success *out is the instantiated graph (run it with an_cuda_graph_launch); otherwise the capture
 * is discarded, *out NULL, and the first error is returned. */
an_status an_cuda_graph_end(an_ctx *ctx, an_status body, an_cuda_graph **out);
/* Replays g on the stream (asynchronous). */
an_status an_cuda_graph_launch(an_ctx *ctx, an_cuda_graph *g);
/* Waits for the stream, destroys g and gives the blocks it held back to the cache. NULL is fine. */
void an_cuda_graph_free(an_ctx *ctx, an_cuda_graph *g);
/* 1 while a capture is open on ctx's stream. */
int an_cuda_capturing(an_ctx *ctx);

/* The side stream (runtime.cu): updates that overlap the backward's kernels. A side launch runs
 * after everything queued on the stream before it, and concurrently with what is queued there
 * after it; an_cuda_side_join makes the stream's later work wait for all side work so far. Side
 * launches read and write only memory that the stream's work leaves alone until the join (the
 * caching allocator knows one stream: nothing a side launch uses may be freed before the join).
 * The stream has the device's highest priority and the side stream its lowest, so side work
 * takes the multiprocessors the stream's kernels leave idle. */
an_status an_cuda_side_join(an_ctx *ctx);
/* The side stream at the stream's priority instead of the lowest (for measurement only). */
an_status an_cuda_set_side_equal_priority(an_ctx *ctx, bool equal);

/* AdamW and the gradient norm (kernels/adamw.cu), every tensor in one launch: a table of
 * segments, built and uploaded by src/optim, each an element range of one parameter. Segment s owns the launch's chunks
 * [first_chunk, first_chunk + ceil(n / AN_ADAMW_CHUNK)): first_chunk of segment 0 is 0, each next
 * one starts where the previous ends, n > 0, and n_chunks is where the last one ends. grad_dtype
 * and param_dtype are f32/bf16/f16 (an_dtype values). Each element is updated with
 * src/optim/adamw.c's float64 formula in its operation order (no fused multiply-adds), so results
 * are bit-identical to the CPU path; param gets the new master rounded to nearest even.
 * 16-byte loads and stores wherever a segment's pointers are 16-byte aligned. */
#define AN_ADAMW_CHUNK 32768 /* elements of one segment per block; a multiple of 8 */
typedef struct {
    float *master;               /* (n) f32: the master, or the f32 parameter itself (param NULL) */
    float *exp_avg, *exp_avg_sq; /* (n) f32 */
    const void *grad;            /* (n) grad_dtype */
    void *param;                 /* (n) param_dtype, gets the new master rounded; or NULL */
    int64_t n;
    int64_t first_chunk;
    int32_t grad_dtype, param_dtype;
    int32_t no_decay;            /* 1: multiplied by 1 instead of k->decay */
    int32_t unused;              /* zero (keeps the struct free of padding, so it compares with memcmp) */
} an_adamw_segment;
/* One AdamW step over every segment of table (n segments, ON THE DEVICE) in one launch. */
an_status an_cuda_adamw_multi(an_ctx *ctx, const an_adamw_scalars *k, const an_adamw_segment *table, int n,
                              int64_t n_chunks);
/* One segment's AdamW step on the side stream (see above), its table row passed by value: the
 * same per-element operations as an_cuda_adamw_multi, a block to each `chunk` elements (a multiple
 * of 8; finer than AN_ADAMW_CHUNK so a block leaves its multiprocessor soon after the stream's next
 * kernel wants it: AN_ADAMW_SIDE_CHUNK unless measuring; 4096 since the twentieth session's
 * measurement, docs/performance.md); chunk c of the segment also writes the float64 sum of squares
 * of its gradient elements to partial[seg->first_chunk + c] (a fixed order within the chunk). */
#define AN_ADAMW_SIDE_CHUNK 4096
an_status an_cuda_adamw_side(an_ctx *ctx, const an_adamw_scalars *k, const an_adamw_segment *seg, int64_t chunk,
                             double *partial);
/* *sum (a DEVICE double) = the sum of the device doubles partial[0 .. count) in a fixed order,
 * on the stream. */
an_status an_cuda_sum_doubles(an_ctx *ctx, const double *partial, int64_t count, double *sum);
/* *sum (a DEVICE double) = the float64 sum of squares of every segment's grad (only grad, n,
 * first_chunk and grad_dtype are read), in a fixed order that depends only on the table's sizes:
 * per chunk a fixed thread order and block tree, then the chunks' sums in a fixed order. */
an_status an_cuda_sum_squares_multi(an_ctx *ctx, const an_adamw_segment *table, int n, int64_t n_chunks,
                                    double *sum);

/* ---- Indices (indices.cu) ---- */

/* What an_cuda_check_ids found in ids (n) i32/i64: first_bad is the smallest i with ids[i]
 * outside [0, limit) (and, when allow_ignore, not equal to ignore_index), or n when none is;
 * bad_value is ids[first_bad] (0 when none); counted is the number of ids not equal to
 * ignore_index (n when !allow_ignore). */
typedef struct {
    int64_t first_bad;
    int64_t bad_value;
    int64_t counted;
} an_cuda_id_report;
/* Scans device ids once and copies the report to the host: it synchronises the stream. */
an_status an_cuda_check_ids(an_ctx *ctx, const void *ids, an_dtype id_dtype, int64_t n, int64_t limit,
                            int allow_ignore, int64_t ignore_index, an_cuda_id_report *report);
/* out (rows, t) = ids (rows, t) shifted left by one within each row, fill in each row's last column:
 * the next-token targets of a batch of labels, on the device (no readback). Same dtype in and out
 * (i32/i64). */
an_status an_cuda_shift_ids(an_ctx *ctx, const void *ids, an_dtype id_dtype, int64_t rows, int64_t t, int64_t fill,
                            void *out);

/* ---- Embedding (embedding.cu). ids (n) are i32/i64 already checked to lie in [0, V). ---- */

/* out (n, D) = rows ids[i] of table (V, D), copied bit for bit. */
an_status an_cuda_embedding(an_ctx *ctx, an_dtype dtype, const void *ids, an_dtype id_dtype, int64_t n,
                            const void *table, int64_t V, int64_t D, void *out);
/* grad_table (V, D) = sum of rows i of grad_out (n, D) with ids[i] == v, written with = (rows of
 * ids that never occur are 0). Deterministic: token positions are sorted by id with a stable
 * radix sort and each id's rows are summed in fp32 in position order; no float atomics. */
an_status an_cuda_embedding_backward(an_ctx *ctx, an_dtype dtype, const void *ids, an_dtype id_dtype, int64_t n,
                                     const void *grad_out, int64_t V, int64_t D, void *grad_table);

/* ---- RMSNorm (rmsnorm.cu): fp32 math and sums ---- */

/* y (rows, D) = x * rstd * w (D); rstd (rows) fp32 = 1 / sqrt(mean(x^2) + eps) per row. */
an_status an_cuda_rmsnorm(an_ctx *ctx, an_dtype dtype, const void *x, const void *w, int64_t rows, int64_t D,
                          double eps, void *y, float *rstd);
/* The same for sum (rows, D) = x + res rounded to dtype (an_cuda_binary's add, bit for bit), written
 * out, and y its rmsnorm: one read of x and res. */
an_status an_cuda_add_rmsnorm(an_ctx *ctx, an_dtype dtype, const void *x, const void *res, const void *w, int64_t rows,
                              int64_t D, double eps, void *sum, void *y, float *rstd);
/* grad_x (rows, D) and grad_w (D) from the forward's rstd, written with = (grad_x with += when
 * add_x: the sum in fp32, one rounding); either may be NULL. grad_w is deterministic: fp32 partial
 * column sums per split of rows, then the splits in order. */
an_status an_cuda_rmsnorm_backward(an_ctx *ctx, an_dtype dtype, const void *x, const void *w, const float *rstd,
                                   const void *grad_y, int64_t rows, int64_t D, void *grad_x, void *grad_w, int add_x);

/* ---- RoPE (rope.cu) ---- */

/* Longest head dim the rope kernel takes (its inverse frequencies travel as a kernel argument). */
#define AN_CUDA_ROPE_MAX_D 512
/* out (rows, H, D) = x rotated by sign * positions[row] * inv_freq[i] on each pair: (i, i + D/2)
 * when `interleaved` is 0 (NEOX), (2i, 2i + 1) otherwise. positions (rows) i32/i64 >= 0 on the
 * device; inv_freq (D/2) float64 on the host (an_cpu_rope_inv_freq). Angles are float64 on the
 * device, cos/sin are float64 rounded once to fp32, the rotation is fp32. out may be x. */
an_status an_cuda_rope(an_ctx *ctx, an_dtype dtype, const void *x, const void *positions, an_dtype pos_dtype,
                       int64_t rows, int64_t H, int64_t D, const double *inv_freq, int interleaved, double sign,
                       void *out);
/* table (rows, D/2, 2) f32 on the device: (cos, sin) of positions[row] * inv_freq[i], each the
 * float64 value rounded once to fp32, as an_cuda_rope rotates with (sign +1): what
 * an_cuda_gemm_projections' rotated outputs read. */
an_status an_cuda_rope_table(an_ctx *ctx, const void *positions, an_dtype pos_dtype, int64_t rows, int64_t D,
                             const double *inv_freq, float *table);

/* ---- Softmax over the last dim (softmax.cu), fp32 math ---- */

/* y (rows, cols) = softmax(x) per row. */
an_status an_cuda_softmax(an_ctx *ctx, an_dtype dtype, const void *x, int64_t rows, int64_t cols, void *y);
/* dx (rows, cols) = y * (dy - sum(dy * y)) per row, written with =. */
an_status an_cuda_softmax_backward(an_ctx *ctx, an_dtype dtype, const void *y, const void *dy, int64_t rows,
                                   int64_t cols, void *dx);

/* ---- Cross-entropy and log-softmax-gather (cross_entropy.cu), fp32 math ----
 * logits (N, V) of dtype; targets/ids (N) i32/i64 on the device, checked by the op (in [0, V) or
 * ignore_index). lse (N) fp32. */

/* lse[i] = logsumexp(logits row i) and loss_rows[i] = lse[i] - logits[i, targets[i]]; both 0 on
 * rows whose target is ignore_index. */
an_status an_cuda_cross_entropy_rows(an_ctx *ctx, an_dtype dtype, const void *logits, const void *targets,
                                     an_dtype target_dtype, int64_t N, int64_t V, int64_t ignore_index, float *lse,
                                     float *loss_rows);
/* an_cuda_cross_entropy_rows's lse and loss_rows, and logits replaced in place by
 * scale * (exp(logits - lse) - onehot(target)) (0 on ignored rows): the values
 * an_cuda_cross_entropy_backward gives at a unit upstream gradient, in one launch. */
an_status an_cuda_cross_entropy_rows_grad(an_ctx *ctx, an_dtype dtype, void *logits, const void *targets,
                                          an_dtype target_dtype, int64_t N, int64_t V, int64_t ignore_index,
                                          double scale, float *lse, float *loss_rows);
/* an_cuda_cross_entropy_rows_grad with each row's log-sum-exp merged from stats (N, tiles) float
 * pairs (an_cuda_gemm_logits_stats's, in tile order) instead of read off the logits: one pass over
 * them (the gradient), the same per-element formula. lse can differ from the two-pass kernel's in
 * its last bits (another order of the sums). */
an_status an_cuda_cross_entropy_stats_grad(an_ctx *ctx, an_dtype dtype, void *logits, const float *stats,
                                           int64_t tiles, const void *targets, an_dtype target_dtype, int64_t N,
                                           int64_t V, int64_t ignore_index, double scale, float *lse,
                                           float *loss_rows);
/* out (a scalar of dtype) = scale * sum(values (n) fp32), summed in fp64 in a fixed order. */
an_status an_cuda_loss_total(an_ctx *ctx, an_dtype dtype, const float *values, int64_t n, double scale, void *out);
/* dx (N, V) = g * scale * (exp(logits - lse) - onehot(target)), 0 on ignored rows, where g is the
 * scalar of dtype at grad (on the device). dx may be logits. */
an_status an_cuda_cross_entropy_backward(an_ctx *ctx, an_dtype dtype, const void *logits, const float *lse,
                                         const void *targets, an_dtype target_dtype, int64_t N, int64_t V,
                                         int64_t ignore_index, const void *grad, double scale, void *dx);
/* lse (N) and out (N) of dtype = logits[i, ids[i]] - lse[i]. */
an_status an_cuda_log_softmax_gather(an_ctx *ctx, an_dtype dtype, const void *logits, const void *ids,
                                     an_dtype id_dtype, int64_t N, int64_t V, float *lse, void *out);
/* dx (N, V) = grad[i] * (onehot(ids[i]) - exp(logits - lse)), grad (N) of dtype; written with =. */
an_status an_cuda_log_softmax_gather_backward(an_ctx *ctx, an_dtype dtype, const void *logits, const float *lse,
                                              const void *ids, an_dtype id_dtype, const void *grad, int64_t N,
                                              int64_t V, void *dx);

/* ---- Sampling (sample.cu): the next token of each row, on the device ---- */

/* tokens (B) i32 on the device = one id per row of logits (B, V) of dtype (f32, bf16, f16), only
 * ids below `allowed` (1 <= allowed <= V < 2^23) considered. Greedy when temperature <= 0 or
 * top_k == 1: the largest logit, ties to the lowest id. Otherwise an_sample_token's rule
 * (model/generate.h): temperature, top-k (0: off), top-p over the top-k mass (1: off), one draw,
 * row b using the uniform number of an_rng_at(seed, offset + b). Asynchronous on the stream. */
an_status an_cuda_sample(an_ctx *ctx, an_dtype dtype, const void *logits, int64_t B, int64_t V, int64_t allowed,
                         double temperature, int64_t top_k, double top_p, uint64_t seed, uint64_t offset,
                         int32_t *tokens);

#ifdef __cplusplus
}
#endif

#endif
