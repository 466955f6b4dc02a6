/* cpu.h — the reference CPU kernels and the working buffers they compute in.
 *
 * Numerics: every reference kernel computes in float64 on plain row-major arrays, so one loop
 * serves f32 training and the f64 gradient checks alike. An op widens its inputs with an_f64_read
 * (no copy when the tensor is already f64) and rounds its outputs once with an_f64_commit. GEMM
 * is the exception: f32 operands go to OpenBLAS sgemm (fp32 accumulate), all others to dgemm. */
#ifndef AN_CPU_H
#define AN_CPU_H

#include <stdbool.h>
#include <stdint.h>

#include "autograd/kernel_types.h"  /* an_binary_kind, an_gemm_shape, an_attention_shape */
#include "autograd/tensor.h"

/* A float64 view of a CPU tensor's elements: the tensor's own memory when it is f64, else an
 * owned converted copy (read) or an owned scratch buffer (write). */
typedef struct {
    double *data;
    bool owned;
} an_f64;

an_status an_f64_read(an_ctx *ctx, const an_tensor *t, an_f64 *out);
an_status an_f64_write(an_ctx *ctx, const an_tensor *t, an_f64 *out); /* contents undefined */
an_status an_f64_zeroed(an_ctx *ctx, const an_tensor *t, an_f64 *out);
/* Rounds buf into t when it is a scratch copy, then frees it. */
void an_f64_commit(an_tensor *t, an_f64 *buf);
void an_f64_free(an_f64 *buf);
/* The same for n tensors at once (NULL entries give NULL data). On failure nothing stays allocated. */
an_status an_f64_read_all(an_ctx *ctx, an_tensor *const *ts, int n, an_f64 *bufs);
an_status an_f64_write_all(an_ctx *ctx, an_tensor *const *ts, int n, an_f64 *bufs);
void an_f64_commit_all(an_tensor *const *ts, int n, an_f64 *bufs);
void an_f64_free_all(an_f64 *bufs, int n);
/* Integer ids/positions/segments as int64 (owned copy unless the tensor is already i64). */
typedef struct {
    int64_t *data;
    bool owned;
} an_i64;
an_status an_i64_read(an_ctx *ctx, const an_tensor *t, an_i64 *out);
void an_i64_free(an_i64 *buf);

/* dst += src over n elements of a float dtype (gradient accumulation). */
void an_cpu_add_into(void *dst, const void *src, an_dtype dtype, int64_t n);

/* Elementwise, b broadcast: element i of a pairs with element i % nb of b. */
void an_cpu_binary(an_binary_kind kind, const double *a, int64_t n, const double *b, int64_t nb, double *out);
/* Gradients of a binary op: grad_a (n) and grad_b (nb, summed over the broadcast); either may be NULL. */
void an_cpu_binary_backward(an_binary_kind kind, const double *a, int64_t n, const double *b, int64_t nb,
                            const double *grad_out, double *grad_a, double *grad_b);

/* out = silu(gate) * up, or silu(gate) when up is NULL. */
void an_cpu_swiglu(const double *gate, const double *up, int64_t n, double *out);
/* Gradients written with =; grad_up is ignored when up is NULL. */
void an_cpu_swiglu_backward(const double *gate, const double *up, int64_t n, const double *grad_out,
                            double *grad_gate, double *grad_up);

void an_cpu_gemm(const an_gemm_shape *s, an_dtype dtype, const void *a, const void *b, void *c);

/* ---- cpu/embedding.c, cpu/rmsnorm.c, cpu/rope.c ---- */
#include "autograd/ops.h"  /* an_rope_config */

/* out (n, D) = rows ids[i] of table (V, D), copied as elements of elem_size bytes (a gather is
 * exact in every dtype, so it skips the float64 widening). The caller has checked 0 <= ids < V. */
void an_cpu_embedding(const int64_t *ids, int64_t n, const void *table, int64_t D, size_t elem_size, void *out);
/* grad_table (V, D) += row i of grad_out (n, D) at row ids[i], for i = 0, 1, ... in order, so repeated
 * ids sum deterministically. */
void an_cpu_embedding_backward(const int64_t *ids, int64_t n, const double *grad_out, int64_t D, double *grad_table);

/* y (rows, D) = x * rstd * w (D), rstd (rows) = 1 / sqrt(mean(x^2) + eps) per row. */
void an_cpu_rmsnorm(const double *x, const double *w, int64_t rows, int64_t D, double eps, double *y, double *rstd);
/* Gradients from the forward's rstd, written with =: grad_x (rows, D) and grad_w (D, summed over
 * rows in order); either may be NULL. */
void an_cpu_rmsnorm_backward(const double *x, const double *w, const double *rstd, const double *grad_y, int64_t rows,
                             int64_t D, double *grad_x, double *grad_w);

/* inv_freq (D/2): theta^(-2i/D), then llama3 scaling when config->llama3_factor > 0, as transformers'
 * _compute_llama3_parameters does it (in float64 here). */
void an_cpu_rope_inv_freq(const an_rope_config *config, int64_t D, double *inv_freq);
/* out (rows, H, D) = x rotated by angle sign * positions[row] * inv_freq[i] on each pair: (i, i + D/2)
 * for AN_ROPE_NEOX, (2i, 2i + 1) for AN_ROPE_INTERLEAVED. sign -1 is the backward (the transpose). */
void an_cpu_rope(const double *x, const int64_t *positions, int64_t rows, int64_t H, int64_t D,
                 const double *inv_freq, an_rope_style style, double sign, double *out);

/* ---- cpu/attention.c ---- */

/* an_attention_shape (kernel_types.h): the shape both the CPU and the CUDA kernels take. */

/* out (B, T, Hq, D) and the per-row logsumexp lse (B, Hq, T), written with =. segments (B, T) or
 * NULL: token i sees token j when j <= i and their segments are equal. head_dim >= 1. */
an_status an_cpu_attention(an_ctx *ctx, const an_attention_shape *shape, const double *q, const double *k,
                           const double *v, const int64_t *segments, double *out, double *lse);
/* Gradients from the forward's lse (probabilities are recomputed), written with =; grad_k and
 * grad_v are summed over the query heads of each group. Any gradient pointer may be NULL. */
an_status an_cpu_attention_backward(an_ctx *ctx, const an_attention_shape *shape, const double *q, const double *k,
                                    const double *v, const int64_t *segments, const double *lse,
                                    const double *grad_out, double *grad_q, double *grad_k, double *grad_v);

/* cpu/attention_cached.c: see an_attention_cached in ops.h. q (B', T, Hq, D) and out likewise;
 * caches (Bc, S, Hkv, D); shape->batch is B', shape->seq is T. */
an_status an_cpu_attention_cached(an_ctx *ctx, const an_attention_shape *shape, int64_t cache_len, const double *q,
                             const double *k_cache, const double *v_cache, const int64_t *rows,
                             const int64_t *lengths, double *out);

/* ---- cpu/softmax.c, cpu/cross_entropy.c ---- */

/* y (rows, cols) = softmax of each row of x (max subtracted); y may be x. */
void an_cpu_softmax(const double *x, int64_t rows, int64_t cols, double *y);
/* dx = y * (dy - sum(dy * y)) per row, from the softmax output y; dx may alias dy. */
void an_cpu_softmax_backward(const double *y, const double *dy, int64_t rows, int64_t cols, double *dx);
/* Sum over rows whose target is not ignore_index of lse_i - x[i, target_i] (the negative log-softmax
 * of the target); writes lse (rows) for counted rows (0 for ignored ones) and adds their number to
 * *counted. Targets must be in [0, cols) or equal ignore_index. */
double an_cpu_cross_entropy(const double *x, const int64_t *targets, int64_t rows, int64_t cols, int64_t ignore_index,
                            double *lse, int64_t *counted);
/* dx (rows, cols) = scale * (softmax(x) - onehot(target)) from the saved lse; 0 on ignored rows.
 * dx may be x. */
void an_cpu_cross_entropy_backward(const double *x, const double *lse, const int64_t *targets, int64_t rows,
                                   int64_t cols, int64_t ignore_index, double scale, double *dx);
/* out (rows) = x[i, ids_i] - lse_i (log-softmax of the chosen ids); writes lse (rows). */
void an_cpu_log_softmax_gather(const double *x, const int64_t *ids, int64_t rows, int64_t cols, double *lse,
                               double *out);
/* dx (rows, cols) = grad_i * (onehot(ids_i) - softmax(x)) from the saved lse; dx may be x. */
void an_cpu_log_softmax_gather_backward(const double *x, const double *lse, const int64_t *ids, const double *grad,
                                        int64_t rows, int64_t cols, double *dx);

#endif
