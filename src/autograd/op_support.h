/* op_support.h — what every op file shares: the op table's descriptors, input checks and the
 * error for an op that has no kernel on a device yet (an error, never a silent CPU detour). */
#ifndef AN_OP_SUPPORT_H
#define AN_OP_SUPPORT_H

#include "autograd/op_table.h"  /* an_op_<name> descriptors */
#include "autograd/kernel_types.h" /* an_gemm_shape */
#include "autograd/ops.h"          /* an_rope_config */
#include "autograd/tape.h"      /* an_tape_record, an_node_* */

/* Return NULL when any listed input is NULL (a failed earlier op already recorded why). */
#define AN_OP_INPUTS(...)                                                     \
    do {                                                                      \
        an_tensor *an_inputs_[] = {__VA_ARGS__};                              \
        for (size_t an_i_ = 0; an_i_ < sizeof an_inputs_ / sizeof *an_inputs_; an_i_++) \
            if (!an_inputs_[an_i_]) return NULL;                              \
    } while (0)

/* Inputs of one float dtype on one device (NULLs skipped): an error naming op and operands. */
an_status an_op_check_float_peers(an_ctx *ctx, const char *op, an_tensor *const *ts, int n);
/* residual (NULL: none) has the output's shape (ndim, shape): an error naming op and residual. */
an_status an_op_check_residual(an_ctx *ctx, const char *op, const an_tensor *residual, int ndim, const int64_t *shape);
/* Integer index tensor on the same device as `like`. */
an_status an_op_check_indices(an_ctx *ctx, const char *op, const char *what, const an_tensor *ids,
                              const an_tensor *like);
/* "op X has no CUDA kernel yet" as an AN_ERR_INPUT error. */
an_status an_op_no_kernel(an_ctx *ctx, const char *op, const an_tensor *t);

/* A new uninitialised tensor like t (same dtype and device) with another shape. */
an_tensor *an_op_new_like(an_ctx *ctx, const an_tensor *t, int ndim, const int64_t *shape);

/* The GEMM and bias pieces linear-like ops share (ops/matmul.c): c = op(a) @ op(b), or += with
 * shape->accumulate, on a's device; gb (n) = the column sums of grad_out (rows, n). */
an_status an_op_gemm(an_ctx *ctx, const an_gemm_shape *shape, const an_tensor *a, const an_tensor *b, an_tensor *c);
/* c = op(a) @ op(b) (+ c with shape->accumulate) + bias (n; NULL: none) on every row, rounded once
 * to a bf16/f16 c on both devices (on CUDA the bias rides in the GEMM's epilogue). */
an_status an_op_gemm_bias(an_ctx *ctx, const an_gemm_shape *shape, const an_tensor *a, const an_tensor *b,
                          const an_tensor *bias, an_tensor *c);
/* The same plus addend (c's shape; NULL: none, or c itself) in the one rounding: c = op(a) @ op(b) +
 * bias + addend (shape->accumulate false). */
an_status an_op_gemm_bias_add(an_ctx *ctx, const an_gemm_shape *shape, const an_tensor *a, const an_tensor *b,
                              const an_tensor *bias, const an_tensor *addend, an_tensor *c);
/* c = alpha op(a) @ op(b), the scale inside the one rounding (shape->accumulate false). */
an_status an_op_gemm_scaled(an_ctx *ctx, const an_gemm_shape *shape, double alpha, const an_tensor *a,
                            const an_tensor *b, an_tensor *c);
/* gb[i] (width) = the column sums of grad_out[i] (rows, width), written with = (ops/matmul.c): on
 * CUDA one an_cuda_column_sums launch for all of them where it applies, else a column-sum pass each. */
an_status an_op_bias_grads(an_ctx *ctx, int count, an_tensor *const *grad_out, an_tensor *const *gb);
an_status an_op_bias_grad(an_ctx *ctx, an_tensor *grad_out, an_tensor *gb);

/* out = a op b (b broadcast as an_add has it) on a's device, recording nothing: an_add / an_sub /
 * an_mul's values (ops/elementwise.c); a mul is also the mul's gradient dout * b. */
an_status an_op_binary_into(an_ctx *ctx, an_binary_kind kind, an_tensor *a, an_tensor *b, an_tensor *out);
/* Records out = a op b as an add / sub / mul node whose output was computed elsewhere (a fused
 * kernel, ops/rmsnorm.c's add_rmsnorm): the node an_add / an_sub / an_mul would record. */
an_node *an_op_record_binary(an_ctx *ctx, an_binary_kind kind, an_tensor *a, an_tensor *b, an_tensor *out);
/* The same for out = residual + x w^T + bias (ops/matmul.c; bias and residual may be NULL): the
 * node an_linear(_residual) records, with its input flags (ops/swiglu_mlp.c's fused projections). */
an_node *an_op_record_linear(an_ctx *ctx, an_tensor *x, an_tensor *w, an_tensor *bias, an_tensor *residual,
                             an_tensor *out);
/* The swiglu pieces (ops/elementwise.c) on gate's device: out = silu(gate) up (up NULL: silu), and
 * its gradients at grad_out (dgate or dup NULL: not formed). */
an_status an_op_swiglu_into(an_ctx *ctx, an_tensor *gate, an_tensor *up, an_tensor *out);
an_status an_op_swiglu_grad(an_ctx *ctx, an_tensor *gate, an_tensor *up, an_tensor *grad_out, an_tensor *dgate,
                            an_tensor *dup);
/* An error naming the field unless config is a rope config an_rope takes. */
an_status an_op_rope_check_config(an_ctx *ctx, const an_rope_config *config);
/* out = src rotated as an_rope rotates it (ops/rope.c; by the opposite angle for sign -1): src
 * holds whole heads of head_dim, an_tensor_numel(positions) rows of them, positions already
 * checked (>= 0) on CUDA; out may be src. */
an_status an_op_rope_rotate(an_ctx *ctx, const an_rope_config *config, const an_tensor *src,
                            const an_tensor *positions, int64_t head_dim, double sign, an_tensor *out);
/* A linear node's weight gradient (ops/matmul.c): node input `index` (w, (out, in)) gets dY^T x
 * (x (rows, in) materialised first), added into its gradient so far in place when it has one. */
an_status an_op_linear_weight_grad(an_ctx *ctx, an_node *node, int index, an_tensor *grad_out, an_tensor *x);
/* A linear's parameter gradients as an_linear's backward forms them (ops/matmul.c), for the node
 * inputs at w_index (w (out, in)) and bias_index (bias (out) or NULL): dW = dY^T x (x materialised
 * first) and the bias's dY column sums, each only where that input needs a gradient, added into
 * its gradient so far. an_op_linears_param_grads does it for count <= AN_CUDA_COLUMN_SUMS_MAX
 * linears of the same x (q, k and v), their dW GEMMs in order and on CUDA their bias gradients in
 * one an_cuda_column_sums launch; where that does not apply (or is turned off), each bias's comes
 * from its dW GEMM's epilogue (cuBLASLt's BGRADB) when both are wanted. */
an_status an_op_linears_param_grads(an_ctx *ctx, an_node *node, int count, const int *w_index, const int *bias_index,
                                    an_tensor *const *grad_out, an_tensor *x);
an_status an_op_linear_param_grads(an_ctx *ctx, an_node *node, int w_index, int bias_index, an_tensor *grad_out,
                                   an_tensor *x);

/* The LoRA linear's pieces (ops/lora_linear.c). out (rows, out) = x W^T + bias + down B^T with
 * down (rows, r) = scale x_lora A^T rounded to the dtype: an_lora_linear's three GEMMs. */
an_status an_op_lora_linear_into(an_ctx *ctx, const an_tensor *x, const an_tensor *x_lora, const an_tensor *w,
                                 const an_tensor *bias, const an_tensor *a, const an_tensor *b, double scale,
                                 an_tensor *out, an_tensor *down);
/* Where a node holds a LoRA linear's operands: input slots of x, x_lora (-1: not an input of the
 * node, its gradient is the caller's), w, bias (may hold NULL), A and B. */
typedef struct {
    int x, x_lora, w, bias, a, b;
} an_lora_slots;
/* Records, for count (2 or 3) projections of x without adapters whose outputs out[p] = x w[p]^T
 * (+ bias[p]; bias NULL: none) the caller formed, one qkv_linear node (ops/qkv_linear.c) in place
 * of count linear nodes: x's gradient is then one sum over the projections (one
 * an_cuda_gemm_segments launch where it applies), as an_qkv_linear's backward forms it. For
 * an_swiglu_mlp's gate and up after their one launch. */
an_status an_op_record_projections(an_ctx *ctx, an_tensor *x, int count, an_tensor *const *w, an_tensor *const *bias,
                                   an_tensor *const *out);
/* For an attention node's backward (ops/attention.c): when its q and k are, through one reshape
 * each, an_qkv_linear_rope's rotated q and k with the caller's rotary table kept, and nothing but
 * this attention reads them or has added to their gradients, that table ((B T, head_dim) f32,
 * an_rope_table's) and the qkv_linear node in *owner; else NULL. A backward that then hands q's
 * and k's gradients over turned back by the rotation (the rope pass's bits) says so with
 * an_qkv_grads_turned(owner), and the qkv_linear backward skips its own turn. */
an_tensor *an_qkv_rope_turn_table(an_ctx *ctx, const an_node *attn, an_node **owner);
void an_qkv_grads_turned(an_node *owner);
/* One adapter of an_op_lora_param_grads: its node's slots, its input x_lora (x itself, or the
 * adapter's dropout of x), its output gradient dY, the forward's scaled down (rows, r), its scale. */
typedef struct {
    an_lora_slots at;
    an_tensor *x_lora, *grad_out, *down;
    double scale;
} an_lora_adapter;
/* Every gradient of count (1 to 3) LoRA linears of one node but x's, as an_lora_linear's backward
 * forms them: dB, dA, x_lora's own (when it is another input of the node), dW and the bias's, each
 * only where that input needs one, added into its gradient so far. With want_d_down also d_down[i]
 * = scale dY B (rows, r), the gradient of x_lora A^T (the caller releases it): x's gradient (or
 * x_lora's, when the caller forms it) takes d_down A. On CUDA, where an_cuda_lora_grads_rule takes
 * them, every adapter's d_down, dB and dA come from its two launches (fp32 sums in its fixed order);
 * elsewhere from thin GEMMs, adapter by adapter in the order given. */
an_status an_op_lora_param_grads(an_ctx *ctx, an_node *node, int count, const an_lora_adapter *ad, bool want_d_down,
                                 an_tensor **d_down);

#endif
