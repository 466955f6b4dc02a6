/* ops.h — every differentiable op, as the model and the RL code call them.
 *
 * Each op checks shapes and dtypes, runs its CPU or CUDA kernel, and records a tape node when
 * any input requires grad. Each returns a new tensor, or NULL with the reason recorded in ctx;
 * any NULL input makes it return NULL at once, so a forward pass can be chained and checked
 * once at the end. Shapes use: N rows, D features, B batch, T time, H heads, V vocabulary. */
#ifndef AN_OPS_H
#define AN_OPS_H

#include <stdbool.h>
#include <stdint.h>

#include "autograd/tensor.h"

/* Elementwise. b has a's shape, or the shape of a's trailing dims (broadcast over the leading
 * ones, as a bias or a per-channel scale is). */
an_tensor *an_add(an_ctx *ctx, an_tensor *a, an_tensor *b);
an_tensor *an_sub(an_ctx *ctx, an_tensor *a, an_tensor *b);
an_tensor *an_mul(an_ctx *ctx, an_tensor *a, an_tensor *b);
an_tensor *an_scale(an_ctx *ctx, an_tensor *x, double s);
an_tensor *an_silu(an_ctx *ctx, an_tensor *x);
an_tensor *an_swiglu(an_ctx *ctx, an_tensor *gate, an_tensor *up);     /* silu(gate) * up */

/* x * mask / (1 - p) with mask ~ Bernoulli(1 - p) drawn from ctx's RNG (a composite of an_mul
 * with a constant mask, so gradient checkpointing replays it by restoring the RNG). 0 <= p < 1. */
an_tensor *an_dropout(an_ctx *ctx, an_tensor *x, double p);
/* The mask an_dropout multiplies by: a new tensor of x's dtype, shape and device, each element 0
 * (probability p) or 1 / (1 - p), drawn from ctx's RNG as an_dropout draws it; not recorded. */
an_tensor *an_dropout_mask(an_ctx *ctx, an_tensor *x, double p);

/* Reductions over every element, to a scalar. */
an_tensor *an_sum(an_ctx *ctx, an_tensor *x);
an_tensor *an_mean(an_ctx *ctx, an_tensor *x);

/* Same data, another shape of the same numel (a view: storage is shared). */
an_tensor *an_reshape(an_ctx *ctx, an_tensor *x, int ndim, const int64_t *shape);

/* a (Bt..., M, K) [or (Bt..., K, M) with trans_a] times b (Bt..., K, N) [or (Bt..., N, K) with
 * trans_b]; b may also be 2-D and shared by every batch. Accumulates in fp32 or better. */
an_tensor *an_matmul(an_ctx *ctx, an_tensor *a, an_tensor *b, bool trans_a, bool trans_b);
/* x (..., in) @ w(out, in)^T + bias(out); bias may be NULL. */
an_tensor *an_linear(an_ctx *ctx, an_tensor *x, an_tensor *w, an_tensor *bias);
/* residual + x @ w^T + bias, residual of the output's shape: one GEMM (the residual in its epilogue
 * on CUDA, one rounding) instead of a linear and an add; the residual's gradient is the output's. */
an_tensor *an_linear_residual(an_ctx *ctx, an_tensor *x, an_tensor *w, an_tensor *bias, an_tensor *residual);
/* residual + swiglu(gate, up) w^T for w (out, in) and gate, up (..., in); residual (..., out) may be
 * NULL. One node: swiglu's output is not kept (ops/swiglu_mlp.c). */
an_tensor *an_swiglu_linear(an_ctx *ctx, an_tensor *gate, an_tensor *up, an_tensor *w, an_tensor *residual);
/* The gated MLP without biases: residual + an_swiglu_linear(x w_gate^T, x w_up^T, w_down), the gate
 * and up projections recorded as an_linear records them (on an H100 both GEMMs and the swiglu are
 * one launch, and the backward's d act GEMM and the swiglu's gradient another). */
an_tensor *an_swiglu_mlp(an_ctx *ctx, an_tensor *x, an_tensor *w_gate, an_tensor *w_up, an_tensor *w_down,
                         an_tensor *residual);
/* A linear layer with its LoRA branch, fused (ops/lora_linear.c): x W^T + bias + scale (x_lora A^T) B^T.
 * x_lora is x, or x after the adapter's dropout (same shape); A (r, in), B (out, r); bias may be NULL. */
an_tensor *an_lora_linear(an_ctx *ctx, an_tensor *x, an_tensor *x_lora, an_tensor *w, an_tensor *bias, an_tensor *a,
                          an_tensor *b, double scale);

/* One projection of an_qkv_linear: x W^T + bias, plus scale ((x * dropout_mask) A^T) B^T when
 * lora_a is given. */
typedef struct {
    an_tensor *weight; /* (out, in) */
    an_tensor *bias;   /* (out) or NULL */
    an_tensor *lora_a; /* (r, in), or NULL: no adapter */
    an_tensor *lora_b; /* (out, r) */
    an_tensor *dropout_mask; /* the adapter's dropout, x's shape (an_dropout_mask), or NULL: none */
    double scale;            /* the adapter's */
} an_qkv_proj;
/* The q, k and v projections of one input x (..., in) as one op (ops/qkv_linear.c): out[p]
 * (..., out_p) = what an_linear, or an_lora_linear with x_lora = an_mul(x, dropout_mask) (x itself
 * without a mask), returns for proj[p], the same bits; one backward forms x's gradient from all
 * three (on an H100 one GEMM launch over their products). Unlike the other ops it returns a
 * status: AN_OK with three new tensors in out, or an error with out all NULL (a NULL x or weight:
 * the error an earlier op recorded). */
an_status an_qkv_linear(an_ctx *ctx, an_tensor *x, const an_qkv_proj proj[3], an_tensor *out[3]);

/* ids (...) i32/i64 rows of table (V, D) -> (..., D). An id outside [0, V) is an error. */
an_tensor *an_embedding(an_ctx *ctx, an_tensor *ids, an_tensor *table);
/* an_embedding for ids the caller guarantees lie in [0, V) — the GPU sampler's output, chosen
 * below the vocabulary by construction. On CUDA the range check (a device scan whose report is
 * copied back: a host synchronisation) is skipped, so a decode step can be captured in a CUDA
 * graph; on the CPU ids are still checked (it costs no synchronisation). Inference only: refuses
 * a table that requires grad while recording. User-given ids must go through an_embedding. */
an_tensor *an_embedding_trusted(an_ctx *ctx, an_tensor *ids, an_tensor *table);

/* x (..., D) * rsqrt(mean(x^2) + eps) * w (D), statistics in fp32 or better. */
an_tensor *an_rmsnorm(an_ctx *ctx, an_tensor *x, an_tensor *w, double eps);
/* rmsnorm(x + residual) (residual of x's shape) with the sum itself in *sum (a new reference): the
 * add and rmsnorm nodes an_add and an_rmsnorm would record, the same bits; on CUDA one kernel
 * reads x and residual once and writes both (a transformer block's residual add and the norm
 * after it). On error NULL and *sum NULL. */
an_tensor *an_add_rmsnorm(an_ctx *ctx, an_tensor *x, an_tensor *residual, an_tensor *w, double eps, an_tensor **sum);

typedef enum {
    AN_ROPE_NEOX = 0,        /* rotate halves: pairs (i, i + D/2) — Qwen2, Llama in HF layout */
    AN_ROPE_INTERLEAVED = 1, /* pairs (2i, 2i + 1) — GPT-J / original Meta layout */
} an_rope_style;

typedef struct {
    an_rope_style style;
    double theta;                       /* base, e.g. 10000 or 500000 */
    /* llama3 frequency scaling; factor 0 turns it off. */
    double llama3_factor;               /* 8 for Llama 3.1 */
    double llama3_low_freq_factor;      /* 1 */
    double llama3_high_freq_factor;     /* 4 */
    double llama3_original_max_position; /* 8192 */
} an_rope_config;

/* Rotates x (B, T, H, D) at positions (B, T) (i32/i64; they restart per packed document). */
an_tensor *an_rope(an_ctx *ctx, an_tensor *x, an_tensor *positions, const an_rope_config *config);
/* AN_ERR_INPUT naming the first negative position (on CUDA a device scan: it synchronises). */
an_status an_rope_check_positions(an_ctx *ctx, const an_tensor *positions);
/* an_rope for positions the caller vouches are >= 0: formed by itself (a KV cache's lengths plus
 * offsets) or checked once with an_rope_check_positions for many calls (a model's layers). On CUDA
 * the per-call positions scan (a host synchronisation) is skipped, so a decode step can be captured
 * in a CUDA graph and a training forward synchronises once, not twice a layer. Recorded like
 * an_rope. */
an_tensor *an_rope_trusted(an_ctx *ctx, an_tensor *x, an_tensor *positions, const an_rope_config *config);
/* an_qkv_linear, then q's and k's outputs (B, T, H * head_dim) rotated as an_rope_trusted rotates
 * their (B, T, H, head_dim) views at positions (B, T) (the caller vouches they are >= 0): the
 * same bits as those ops, with the rotation in the projections' GEMM epilogue where
 * an_cuda_gemm_projections takes them (NEOX at head_dim 64 or 128), else as an_rope's pass; the
 * backward turns q's and k's gradients back before its own. x must be (B, T, in). */
an_status an_qkv_linear_rope(an_ctx *ctx, an_tensor *x, const an_qkv_proj proj[3], an_tensor *positions,
                             const an_rope_config *rope, int64_t head_dim, an_tensor *table, an_tensor *out[3]);
/* The (cos, sin) table an_qkv_linear_rope's GEMM epilogue reads, (B T, head_dim) f32, for layers
 * that share positions (one per forward instead of one a layer) and activations of dtype; *table
 * NULL where no epilogue would read one (the CPU, f32, interleaved pairs, head sizes other than 64
 * and 128). Pass it as an_qkv_linear_rope's table, or NULL to have the op form its own. */
an_status an_rope_table(an_ctx *ctx, an_tensor *positions, const an_rope_config *rope, int64_t head_dim,
                        an_dtype dtype, an_tensor **table);

/* Causal attention with grouped-query heads: q (B, T, Hq, D), k and v (B, T, Hkv, D), Hkv divides
 * Hq; query head h reads kv head h / (Hq/Hkv). segments (B, T) i32/i64 or NULL: token i attends
 * token j only when j <= i and segments equal (packed documents). Scores scaled by `scale`. */
an_tensor *an_attention(an_ctx *ctx, an_tensor *q, an_tensor *k, an_tensor *v, an_tensor *segments, double scale);

/* Inference only (never recorded): attention of new queries over a key/value cache.
 * q (B', T, Hq, D); k_cache and v_cache (Bc, S, Hkv, D); rows (B') i64 maps each query row to
 * its cache row; lengths (Bc) i64 counts the keys each cache row held before these T tokens,
 * whose keys must already be written at [length, length + T). Query t of row b sees cache keys
 * 0 .. lengths[rows[b]] + t. Returns (B', T, Hq, D).
 * rows and lengths are host tensors (validated here; on CUDA uploaded per call, which synchronises)
 * or, on CUDA, both device tensors on q's device that the caller has validated (the KV cache's
 * device tables: no upload, no sync, capturable in a CUDA graph). */
an_tensor *an_attention_cached(an_ctx *ctx, an_tensor *q, an_tensor *k_cache, an_tensor *v_cache, an_tensor *rows,
                               an_tensor *lengths, double scale);

/* Softmax over the last dim. */
an_tensor *an_softmax(an_ctx *ctx, an_tensor *x);

#define AN_IGNORE_INDEX (-100)

typedef struct {
    int64_t ignore_index;  /* targets equal to this are not counted (default -100) */
    int64_t chunk_rows;    /* rows of logits alive at once in the fused linear variant; 0: 1024, or
                              4096 when it forms the weight's gradient on CUDA (cross_entropy.c) */
    double normalizer;     /* divide the summed loss by this; 0 = the number of counted targets.
                              Gradient accumulation passes the whole batch's count here. */
    int64_t checked_count; /* 0: the op checks and counts the targets (on CUDA a device scan read
                              back, which synchronises mid-step); n > 0: the caller already did
                              (an_cross_entropy_check_targets, as an_model_loss does before its
                              forward) and n targets count. Read on CUDA only. */
} an_cross_entropy_opts;

/* Start from this rather than a zeroed struct (which would ignore target 0). */
#define AN_CROSS_ENTROPY_DEFAULTS ((an_cross_entropy_opts){AN_IGNORE_INDEX, 0, 0.0, 0})

/* The targets check of the losses below, for op's messages: each of targets (N) i32/i64 in [0, V)
 * or equal to ignore_index, else AN_ERR_INPUT naming the element and its value; *counted = the
 * targets not ignored. On CUDA it reads a device scan back (a synchronisation). */
an_status an_cross_entropy_check_targets(an_ctx *ctx, const char *op, const an_tensor *targets, int64_t V,
                                         int64_t ignore_index, int64_t *counted);

/* Mean negative log-likelihood of targets (N) i32/i64 under logits (N, V); 0 when no target counts.
 * opts may be NULL for AN_CROSS_ENTROPY_DEFAULTS; a given struct is used as is, except chunk_rows
 * 0, which means the op's default (above). */
an_tensor *an_cross_entropy(an_ctx *ctx, an_tensor *logits, an_tensor *targets, const an_cross_entropy_opts *opts);
/* The same loss for logits = hidden (N, D) @ weight (V, D)^T computed chunk_rows rows at a time:
 * full (N, V) logits never exist, in forward or backward. */
an_tensor *an_linear_cross_entropy(an_ctx *ctx, an_tensor *hidden, an_tensor *weight, an_tensor *targets,
                                   const an_cross_entropy_opts *opts);
/* log_softmax(logits (N, V))[i, ids[i]] -> (N): per-token log-probs for RL. */
an_tensor *an_log_softmax_gather(an_ctx *ctx, an_tensor *logits, an_tensor *ids);

#endif
