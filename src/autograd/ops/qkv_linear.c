/* qkv_linear.c — the attention block's q, k and v projections of one input as one op
 * (an_qkv_linear): out_p = x W_p^T + bias_p, plus scale_p (x_lora_p A_p^T) B_p^T where p has an
 * adapter (x_lora_p = x * mask_p under the adapter's dropout, else x), for p = q, k, v. The forward
 * runs dropout's multiply and the adapters' down = scale x_lora A^T as an_dropout and an_lora_linear
 * do; on CUDA, where an_cuda_gemm_projections' rule takes the shapes, q, k and v are then one launch
 * (each output round(x W^T + bias) + down B^T, rounded again: peft's order; LoRA q,v at the 1.5B
 * model's 8192 tokens, docs/performance.md), elsewhere the GEMMs an_linear and an_lora_linear run
 * (the same bits as those ops). The backward forms x's gradient, the sum over p of dY_p W_p (+ d_down_p
 * A_p where the adapter reads x itself), as one sum: one an_cuda_gemm_segments launch (one fp32 accumulation, one rounding; LoRA
 * q,v rank 16 at the 1.5B model's 8192 tokens: 83 us on an H100 against 139 us for cuBLASLt's five
 * GEMMs each adding into the gradient) where it applies: CUDA, a device and shapes
 * an_cuda_gemm_swiglu_rule takes, and x without a gradient yet (the sum is written with =).
 * Elsewhere, or when x already has a gradient to add into, it runs the GEMMs the separate ops'
 * backwards would run, in their order (v's, k's, then q's; an adapter's thin product before its
 * base, a dropout's (d_down A) * mask after them), so the CPU keeps their bits. A dropout's term
 * never joins the one sum (the mask multiplies it): it is added after it. Weights', biases' and
 * adapters' gradients are formed as an_linear's and an_lora_linear's backwards form them, the
 * biases of projections without adapters together (one an_cuda_column_sums pass on CUDA).
 *
 * an_op_record_projections records the same node over two or three projections without adapters
 * whose outputs the caller formed (an_swiglu_mlp's gate and up after their one launch): x's
 * gradient is then their one sum too.
 *
 * an_qkv_linear_rope rotates q's and k's outputs as an_rope would (kernels/gemm_wgmma.cu's PROJ
 * epilogue on CUDA where it applies: no pass of its own; elsewhere an_rope's rotation in place);
 * the node keeps the positions and the config (its extra), and its backward turns dq and dk back by
 * the opposite angle first, as the rope ops' backwards did.
 *
 * The tape allows one output a node: the qkv_linear node's output is q, and k and v are the
 * outputs of two qkv_part nodes whose one input is q (held for routing only, never read). Recorded
 * after it, they run before it in the backward; each hands its gradient to the qkv_linear node
 * (q's producer), so that one backward sees dq, dk and dv. */
#include "autograd/ops.h"

#include <stdlib.h>
#include <string.h>

#include "autograd/cpu/cpu.h"     /* an_cpu_rope_inv_freq */
#include "autograd/op_support.h" /* an_op_gemm(_bias_add, _scaled), an_op_lora_linear_into, an_op_*_param_grads */
#include "kernels/cuda.h"        /* an_cuda_gemm_projections(_rule), an_cuda_gemm_segments, an_cuda_gemm_swiglu_rule */

/* The node's input slots: x, then per projection p its weight, bias, A, B and dropout mask (each
 * NULL where absent). Saved: p's scaled down (rows, r) at saved[p], x_lora_p (masked) at saved[3 + p]. */
enum { W, BIAS, A, B, MASK, PER_PROJ };
#define SLOT(p, field) (1 + PER_PROJ * (p) + (field))
#define N_SLOTS (1 + 3 * PER_PROJ)

static const char *const names[3] = {"q", "k", "v"};

/* The rotation an_qkv_linear_rope applies to q and k. */
typedef struct {
    an_tensor *positions; /* (B, T) i32/i64, >= 0 */
    an_rope_config config;
    int64_t head_dim;
    an_tensor *table; /* an_rope_table's for these positions, or NULL (formed where the epilogue runs) */
} rope_spec;

/* Whether the PROJ epilogue may take this rotation of dtype activations (an_cuda_gemm_projections'
 * rule has the last word: the device and the shapes). */
static bool epilogue_takes(const an_tensor *positions, const an_rope_config *c, int64_t head_dim, an_dtype dtype) {
    return positions->device == AN_CUDA && (dtype == AN_BF16 || dtype == AN_F16) && c->style == AN_ROPE_NEOX &&
           (head_dim == 64 || head_dim == 128);
}

an_status an_rope_table(an_ctx *ctx, an_tensor *positions, const an_rope_config *rope, int64_t head_dim,
                        an_dtype dtype, an_tensor **table) {
    *table = NULL;
    AN_CHECK(ctx, positions && rope, AN_ERR_INPUT, "rope_table: no positions or config");
    AN_TRY(an_op_rope_check_config(ctx, rope));
    AN_CHECK(ctx, positions->dtype == AN_I32 || positions->dtype == AN_I64, AN_ERR_INPUT,
             "rope_table: positions must be i32 or i64");
    if (!epilogue_takes(positions, rope, head_dim, dtype)) return AN_OK;
    double inv_freq[64];
    an_cpu_rope_inv_freq(rope, head_dim, inv_freq);
    int64_t rows = an_tensor_numel(positions);
    an_tensor *t = an_tensor_new(ctx, AN_F32, AN_CUDA, 2, (int64_t[]){rows, head_dim});
    an_status st = t ? an_cuda_rope_table(ctx, an_tensor_data(positions), positions->dtype, rows, head_dim, inv_freq,
                                          an_tensor_data(t))
                     : an_error_status(ctx);
    if (st != AN_OK) {
        an_tensor_release(t);
        return st;
    }
    *table = t;
    return AN_OK;
}

/* Gradients the part nodes hand to the qkv_linear node, and its rotation (its extra). */
typedef struct {
    an_tensor *grad[3]; /* k's and v's (NULL: none came); q's is the node's own grad_out */
    bool q_unused;      /* q's gradient was made (zeros) by a part node: q itself got none */
    bool rotated;       /* q and k were rotated by rope (positions and the caller's table retained) */
    bool turned;        /* q's and k's gradients came turned back already (an_qkv_grads_turned) */
    rope_spec rope;
} handed_grads;

static void handed_grads_free(void *extra) {
    handed_grads *h = extra;
    for (int p = 0; p < 3; p++) an_tensor_release(h->grad[p]);
    if (h->rotated) an_tensor_release(h->rope.positions), an_tensor_release(h->rope.table);
    free(h);
}

static an_status check_rope(an_ctx *ctx, const an_tensor *x, const an_qkv_proj proj[3], const rope_spec *r) {
    char dx[96], dp[96];
    an_tensor_describe(x, dx, sizeof dx);
    const an_tensor *pos = r->positions;
    AN_TRY(an_op_rope_check_config(ctx, &r->config));
    AN_CHECK(ctx, x->ndim == 3 && pos->ndim == 2 && pos->shape[0] == x->shape[0] && pos->shape[1] == x->shape[1],
             AN_ERR_INPUT, "qkv_linear_rope: positions %s must be (B, T) of input %s (B, T, in)",
             an_tensor_describe(pos, dp, sizeof dp), dx);
    AN_CHECK(ctx, (pos->dtype == AN_I32 || pos->dtype == AN_I64) && pos->device == x->device, AN_ERR_INPUT,
             "qkv_linear_rope: positions must be i32 or i64 on the input's device");
    for (int p = 0; p < 2; p++) {
        int64_t n = proj[p].weight->shape[0];
        AN_CHECK(ctx, r->head_dim > 0 && r->head_dim % 2 == 0 && n % r->head_dim == 0, AN_ERR_INPUT,
                 "qkv_linear_rope: %s's width %lld is not whole heads of an even head_dim %lld", names[p],
                 (long long)n, (long long)r->head_dim);
    }
    const an_tensor *t = r->table;
    AN_CHECK(ctx, !t || (t->dtype == AN_F32 && t->device == AN_CUDA && t->ndim == 2 &&
                         t->shape[0] == an_tensor_numel(pos) && t->shape[1] == r->head_dim),
             AN_ERR_INPUT, "qkv_linear_rope: the rope table must be an_rope_table's for these positions and head_dim");
    return AN_OK;
}

static an_status check_proj(an_ctx *ctx, const an_tensor *x, const an_qkv_proj *pr, const char *name) {
    char dx[96], dw[96], da[96], db[96];
    an_tensor_describe(x, dx, sizeof dx), an_tensor_describe(pr->weight, dw, sizeof dw);
    const an_tensor *w = pr->weight, *a = pr->lora_a, *b = pr->lora_b;
    AN_CHECK(ctx, x->ndim >= 1 && w->ndim == 2 && x->shape[x->ndim - 1] == w->shape[1], AN_ERR_INPUT,
             "qkv_linear: input %s does not match %s's weight %s (out, in)", dx, name, dw);
    AN_CHECK(ctx, !pr->bias || (pr->bias->ndim == 1 && pr->bias->shape[0] == w->shape[0]), AN_ERR_INPUT,
             "qkv_linear: %s's bias must be (%lld)", name, (long long)w->shape[0]);
    if (!a && !b && !pr->dropout_mask) return AN_OK;
    AN_CHECK(ctx, a && b, AN_ERR_INPUT, "qkv_linear: %s's adapter needs both A and B", name);
    an_tensor_describe(a, da, sizeof da), an_tensor_describe(b, db, sizeof db);
    AN_CHECK(ctx, a->ndim == 2 && b->ndim == 2 && a->shape[1] == w->shape[1] && b->shape[0] == w->shape[0] &&
                      b->shape[1] == a->shape[0],
             AN_ERR_INPUT, "qkv_linear: %s's A %s and B %s must be (r, in) and (out, r) for weight %s", name, da, db,
             dw);
    AN_CHECK(ctx, !pr->dropout_mask || an_tensor_same_shape(x, pr->dropout_mask), AN_ERR_INPUT,
             "qkv_linear: %s's dropout mask differs from input %s", name, dx);
    return AN_OK;
}

/* Records the qkv_linear node (output q) and the part nodes (k, and v where present: a projection
 * without a weight is absent, an_op_record_projections' two); nothing when no input requires grad
 * or recording is off. */
static an_status record(an_ctx *ctx, an_tensor *x, const an_qkv_proj proj[3], an_tensor *const out[3],
                        an_tensor *const down[3], an_tensor *const x_lora[3], const rope_spec *rope) {
    an_tensor *inputs[N_SLOTS] = {x};
    bool reads_x = false; /* dW and an unmasked adapter's dA read x; dX and the rest do not */
    for (int p = 0; p < 3; p++) {
        const an_qkv_proj *pr = &proj[p];
        inputs[SLOT(p, W)] = pr->weight, inputs[SLOT(p, BIAS)] = pr->bias;
        inputs[SLOT(p, A)] = pr->lora_a, inputs[SLOT(p, B)] = pr->lora_b, inputs[SLOT(p, MASK)] = pr->dropout_mask;
        if (!pr->weight) continue;
        reads_x = reads_x || pr->weight->requires_grad || (pr->lora_a && !pr->dropout_mask && pr->lora_a->requires_grad);
    }
    handed_grads *h = calloc(1, sizeof *h);
    AN_CHECK(ctx, h != NULL, AN_ERR_INTERNAL, "out of host memory");
    an_node *node = an_tape_record(ctx, &an_op_qkv_linear, out[0], inputs, N_SLOTS);
    if (!node) { /* nothing requires grad, or recording is off (or it failed) */
        free(h);
        return an_error_status(ctx);
    }
    node->extra = h;
    node->extra_free = handed_grads_free;
    if (rope) h->rotated = true, h->rope = *rope, an_tensor_retain(rope->positions), an_tensor_retain(rope->table);
    for (int p = 0; p < 3; p++) an_node_save(node, down[p]); /* saved[p], NULL without an adapter */
    for (int p = 0; p < 3; p++) an_node_save(node, x_lora[p]); /* saved[3 + p], NULL without a mask */
    for (int p = 0; p < 3; p++) node->args[p] = proj[p].scale;
    if (reads_x) an_node_input_recomputable(node, 0); /* formed again in the backward where it can be */
    else an_node_input_routing_only(node, 0);
    for (int p = 1; p < 3 && out[p]; p++) {
        an_node *part = an_tape_record(ctx, &an_op_qkv_part, out[p], (an_tensor *[]){out[0]}, 1);
        if (!part) return an_error_status(ctx) ? an_error_status(ctx) : AN_ERR_INTERNAL;
        part->iargs[0] = p;
        an_node_input_routing_only(part, 0); /* q is held only to find the qkv_linear node */
    }
    return AN_OK;
}

/* q, k, v (and their adapters' branches) as one an_cuda_gemm_projections launch where its rule
 * takes them (CUDA and its shapes), after the adapters' down = scale x_lora A^T as an_lora_linear
 * forms it; *done false where it does not apply (nothing ran). An adapter's output differs from
 * the separate GEMMs' within a unit in the last place; the CPU keeps those ops' bits. */
static an_status forward_one_launch(an_ctx *ctx, an_tensor *x, const an_qkv_proj proj[3], an_tensor *const out[3],
                                    an_tensor *const down[3], an_tensor *const x_lora[3], int64_t rows, int64_t in,
                                    const rope_spec *rope, bool *done, bool *rotated) {
    *done = *rotated = false;
    if (x->device != AN_CUDA) return AN_OK;
    an_cuda_projection cp[3];
    for (int p = 0; p < 3; p++) {
        const an_qkv_proj *pr = &proj[p];
        cp[p] = (an_cuda_projection){an_tensor_data(pr->weight),
                                     pr->bias ? an_tensor_data(pr->bias) : NULL,
                                     down[p] ? an_tensor_data(down[p]) : NULL,
                                     pr->lora_b ? an_tensor_data(pr->lora_b) : NULL,
                                     pr->weight->shape[0],
                                     pr->lora_a ? pr->lora_a->shape[0] : 0,
                                     an_tensor_data(out[p]),
                                     NULL,
                                     0};
    }
    if (!an_cuda_gemm_projections_rule(ctx, x->dtype, an_tensor_data(x), rows, in, 3, cp)) return AN_OK;
    *done = true;
    /* q's and k's rotation in the epilogue: NEOX at the head sizes it takes (else an_rope's pass after) */
    an_tensor *table = NULL; /* (rows, head_dim / 2) (cos, sin): the caller's, or formed here */
    if (rope && epilogue_takes(rope->positions, &rope->config, rope->head_dim, x->dtype)) {
        if (rope->table) table = an_tensor_retain(rope->table);
        else AN_TRY(an_rope_table(ctx, rope->positions, &rope->config, rope->head_dim, x->dtype, &table));
        for (int p = 0; p < 2; p++) cp[p].rope = an_tensor_data(table), cp[p].rope_d = rope->head_dim;
        *rotated = an_cuda_gemm_projections_rule(ctx, x->dtype, an_tensor_data(x), rows, in, 3, cp);
        if (!*rotated)
            for (int p = 0; p < 2; p++) cp[p].rope = NULL, cp[p].rope_d = 0;
    }
    an_status st = AN_OK;
    for (int p = 0; p < 3 && st == AN_OK; p++) {
        if (!proj[p].lora_a) continue;
        an_gemm_shape to_down = {1, rows, proj[p].lora_a->shape[0], in, false, true, false, false};
        st = an_op_gemm_scaled(ctx, &to_down, proj[p].scale, x_lora[p] ? x_lora[p] : x, proj[p].lora_a, down[p]);
    }
    if (st == AN_OK) st = an_cuda_gemm_projections(ctx, x->dtype, an_tensor_data(x), rows, in, 3, cp);
    an_tensor_release(table); /* stream-ordered: the launch above has it */
    return st;
}

static an_status qkv_forward(an_ctx *ctx, an_tensor *x, const an_qkv_proj proj[3], const rope_spec *rope,
                             an_tensor *out[3]) {
    out[0] = out[1] = out[2] = NULL;
    bool missing = !x;
    for (int p = 0; p < 3; p++) missing = missing || !proj[p].weight;
    if (missing) /* a failed earlier op already recorded why */
        return an_error_status(ctx) ? an_error_status(ctx)
                                    : an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__, "qkv_linear: no input or weight");
    an_tensor *all[N_SLOTS] = {x};
    for (int p = 0; p < 3; p++) {
        const an_qkv_proj *pr = &proj[p];
        all[SLOT(p, W)] = pr->weight, all[SLOT(p, BIAS)] = pr->bias, all[SLOT(p, A)] = pr->lora_a;
        all[SLOT(p, B)] = pr->lora_b, all[SLOT(p, MASK)] = pr->dropout_mask;
    }
    AN_TRY(an_op_check_float_peers(ctx, "qkv_linear", all, N_SLOTS));
    for (int p = 0; p < 3; p++) AN_TRY(check_proj(ctx, x, &proj[p], names[p]));
    if (rope) AN_TRY(check_rope(ctx, x, proj, rope));

    int64_t in = x->shape[x->ndim - 1], rows = an_tensor_numel(x) / (in ? in : 1);
    an_tensor *down[3] = {0}, *x_lora[3] = {0};
    an_status st = AN_OK;
    for (int p = 0; p < 3 && st == AN_OK; p++) { /* the outputs, an_dropout's multiplies, the adapters' downs */
        const an_qkv_proj *pr = &proj[p];
        int64_t shape[AN_MAX_DIMS];
        memcpy(shape, x->shape, sizeof shape);
        shape[x->ndim - 1] = pr->weight->shape[0];
        out[p] = an_op_new_like(ctx, x, x->ndim, shape);
        if (!out[p]) st = an_error_status(ctx);
        if (st == AN_OK && pr->dropout_mask) {
            x_lora[p] = an_op_new_like(ctx, x, x->ndim, x->shape);
            st = x_lora[p] ? an_op_binary_into(ctx, AN_BINARY_MUL, x, pr->dropout_mask, x_lora[p]) : an_error_status(ctx);
        }
        if (st == AN_OK && pr->lora_a) {
            down[p] = an_op_new_like(ctx, x, 2, (int64_t[]){rows, pr->lora_a->shape[0]});
            if (!down[p]) st = an_error_status(ctx);
        }
    }
    bool done = false, rotated = false;
    if (st == AN_OK) st = forward_one_launch(ctx, x, proj, out, down, x_lora, rows, in, rope, &done, &rotated);
    if (!done) {
        for (int p = 0; p < 3 && st == AN_OK; p++) { /* q, k, v: the order the separate ops ran */
            const an_qkv_proj *pr = &proj[p];
            if (pr->lora_a) { /* an_lora_linear's GEMMs */
                st = an_op_lora_linear_into(ctx, x, x_lora[p] ? x_lora[p] : x, pr->weight, pr->bias, pr->lora_a,
                                            pr->lora_b, pr->scale, out[p], down[p]);
            } else { /* an_linear's */
                an_gemm_shape s = {1, rows, pr->weight->shape[0], in, false, true, false, false};
                st = an_op_gemm_bias_add(ctx, &s, x, pr->weight, pr->bias, NULL, out[p]);
            }
        }
    }
    for (int p = 0; p < 2 && rope && !rotated && st == AN_OK; p++) /* an_rope's rotation, in place */
        st = an_op_rope_rotate(ctx, &rope->config, out[p], rope->positions, rope->head_dim, 1.0, out[p]);
    if (st == AN_OK) st = record(ctx, x, proj, out, down, x_lora, rope);
    for (int p = 0; p < 3; p++) an_tensor_release(down[p]), an_tensor_release(x_lora[p]);
    if (st != AN_OK) {
        for (int p = 0; p < 3; p++) an_tensor_release(out[p]), out[p] = NULL;
    }
    return st;
}

an_status an_qkv_linear(an_ctx *ctx, an_tensor *x, const an_qkv_proj proj[3], an_tensor *out[3]) {
    return qkv_forward(ctx, x, proj, NULL, out);
}

an_status an_qkv_linear_rope(an_ctx *ctx, an_tensor *x, const an_qkv_proj proj[3], an_tensor *positions,
                             const an_rope_config *rope, int64_t head_dim, an_tensor *table, an_tensor *out[3]) {
    out[0] = out[1] = out[2] = NULL;
    if (!rope || !positions)
        return an_error_status(ctx) ? an_error_status(ctx)
                                    : an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__, "qkv_linear_rope: no positions or config");
    rope_spec r = {positions, *rope, head_dim, table};
    return qkv_forward(ctx, x, proj, &r, out);
}

an_status an_op_record_projections(an_ctx *ctx, an_tensor *x, int count, an_tensor *const *w, an_tensor *const *bias,
                                   an_tensor *const *out) {
    AN_CHECK(ctx, count == 2 || count == 3, AN_ERR_INTERNAL, "record_projections: %d projections, expected 2 or 3",
             count);
    an_qkv_proj proj[3] = {{0}};
    an_tensor *o[3] = {0}, *none[3] = {0};
    for (int p = 0; p < count; p++) proj[p].weight = w[p], proj[p].bias = bias ? bias[p] : NULL, o[p] = out[p];
    return record(ctx, x, proj, o, none, none, NULL);
}

an_tensor *an_qkv_rope_turn_table(an_ctx *ctx, const an_node *attn, an_node **owner) {
    *owner = NULL;
    an_tensor *q = attn->inputs[0], *k = attn->inputs[1];
    an_node *rq = q ? q->grad_fn : NULL, *rk = k ? k->grad_fn : NULL;
    if (!rq || !rk || rq->op != &an_op_reshape || rk->op != &an_op_reshape) return NULL;
    an_tensor *q0 = rq->inputs[0], *k0 = rk->inputs[0];
    an_node *node = q0->grad_fn, *part = k0->grad_fn;
    if (!node || node->op != &an_op_qkv_linear || !part || part->op != &an_op_qkv_part || part->iargs[0] != 1 ||
        part->inputs[0] != q0)
        return NULL;
    handed_grads *h = node->extra;
    const an_tensor *t = h->rotated ? h->rope.table : NULL;
    if (!t || q->ndim != 4 || t->shape[0] != q->shape[0] * q->shape[1] || t->shape[1] != q->shape[3]) return NULL;
    /* q's and k's gradients must reach the node only from this attention, through the reshapes:
     * nothing else reads them (the part nodes read q0 only to find the node, adding none of q's
     * gradient but zeros), and nothing has added to them yet */
    int parts = 1 + (node->inputs[SLOT(2, W)] != NULL);
    if (q->grad || k->grad || q0->grad || k0->grad || h->grad[1] || an_tape_readers_since(ctx, q, node) != 1 ||
        an_tape_readers_since(ctx, k, node) != 1 || an_tape_readers_since(ctx, k0, node) != 1 ||
        an_tape_readers_since(ctx, q0, node) != 1 + parts)
        return NULL;
    *owner = node;
    return h->rope.table;
}

void an_qkv_grads_turned(an_node *owner) { ((handed_grads *)owner->extra)->turned = true; }

/* k's or v's gradient (part iargs[0]) handed to q's producer. When q itself got no gradient, it is
 * given zeros so that its producer still runs, and told to skip q's products. */
an_status an_qkv_part_backward(an_ctx *ctx, an_node *node, an_tensor *grad_out) {
    an_tensor *q = node->inputs[0];
    an_node *owner = q->grad_fn;
    int p = (int)node->iargs[0];
    AN_CHECK(ctx, owner && owner->op == &an_op_qkv_linear && owner->extra && (p == 1 || p == 2), AN_ERR_INTERNAL,
             "qkv_part: q's producer is not its qkv_linear node");
    handed_grads *h = owner->extra;
    AN_CHECK(ctx, !h->grad[p], AN_ERR_INTERNAL, "qkv_part: %s's gradient handed over twice", names[p]);
    h->grad[p] = an_tensor_retain(grad_out);
    if (q->grad) return AN_OK;
    an_tensor *zeros = an_tensor_zeros(ctx, q->dtype, q->device, q->ndim, q->shape);
    if (!zeros) return an_error_status(ctx);
    h->q_unused = true;
    return an_node_accumulate(ctx, node, 0, zeros);
}

/* Whether x's gradient is one an_cuda_gemm_segments launch of the n pairs a[i] (rows, k[i]) times
 * b[i] (k[i], in) into gx. */
static bool one_launch(an_ctx *ctx, const an_tensor *gx, int n, const an_tensor *const *a, const an_tensor *const *b,
                       const int64_t *k, int64_t rows, int64_t in) {
    if (gx->device != AN_CUDA || n < 1 || n > 6) return false;
    for (int i = 0; i < n; i++) {
        const void *ptrs[] = {an_tensor_data(a[i]), an_tensor_data(b[i]), an_tensor_data(gx)};
        if (!an_cuda_gemm_swiglu_rule(ctx, gx->dtype, rows, k[i], in, ptrs, 3)) return false;
    }
    return true;
}

/* A masked adapter's share of x's gradient, as its dropout's backward adds it: d x_lora = d_down A
 * (rows, in), then d x_lora * mask joins x's gradient. */
static an_status dropout_term(an_ctx *ctx, an_node *node, int p, an_tensor *d_down) {
    an_tensor *x = node->inputs[0], *la = node->inputs[SLOT(p, A)], *mask = node->inputs[SLOT(p, MASK)];
    int64_t in = x->shape[x->ndim - 1], rows = an_tensor_numel(x) / (in ? in : 1);
    an_gemm_shape s = {1, rows, in, la->shape[0], false, false, false, false};
    an_tensor *dxl = an_op_new_like(ctx, x, x->ndim, x->shape), *g = an_op_new_like(ctx, x, x->ndim, x->shape);
    an_status st = dxl && g ? an_op_gemm(ctx, &s, d_down, la, dxl) : an_error_status(ctx);
    if (st == AN_OK) st = an_op_binary_into(ctx, AN_BINARY_MUL, dxl, mask, g);
    an_tensor_release(dxl);
    if (st != AN_OK) {
        an_tensor_release(g);
        return st;
    }
    return an_node_accumulate(ctx, node, 0, g);
}

/* x's gradient from the projections that got one (dy[p] not NULL): the sum over p of dy[p] W_p,
 * plus d_down[p] A_p where p's adapter reads x, or its dropout's term where it reads x * mask. */
static an_status input_grad(an_ctx *ctx, an_node *node, an_tensor *const dy[3], an_tensor *const d_down[3]) {
    an_tensor *x = node->inputs[0];
    int64_t in = x->shape[x->ndim - 1], rows = an_tensor_numel(x) / (in ? in : 1);
    bool masked[3];
    for (int p = 0; p < 3; p++) masked[p] = dy[p] && d_down[p] && node->inputs[SLOT(p, MASK)];
    if (!x->grad && x->device == AN_CUDA) { /* one launch, written with = */
        const an_tensor *a[6], *b[6];
        int64_t k[6];
        int n = 0;
        for (int p = 0; p < 3; p++) {
            if (!dy[p]) continue;
            an_tensor *w = node->inputs[SLOT(p, W)], *la = node->inputs[SLOT(p, A)];
            a[n] = dy[p], b[n] = w, k[n++] = w->shape[0];
            if (d_down[p] && !masked[p]) a[n] = d_down[p], b[n] = la, k[n++] = la->shape[0];
        }
        an_tensor *gx = an_op_new_like(ctx, x, x->ndim, x->shape);
        if (!gx) return an_error_status(ctx);
        if (one_launch(ctx, gx, n, a, b, k, rows, in)) {
            const void *ap[6], *bp[6];
            for (int i = 0; i < n; i++) ap[i] = an_tensor_data(a[i]), bp[i] = an_tensor_data(b[i]);
            an_status st = an_cuda_gemm_segments(ctx, x->dtype, rows, in, n, ap, k, bp, true, an_tensor_data(gx));
            if (st != AN_OK) {
                an_tensor_release(gx);
                return st;
            }
            AN_TRY(an_node_accumulate(ctx, node, 0, gx));
            for (int p = 2; p >= 0; p--)
                if (masked[p]) AN_TRY(dropout_term(ctx, node, p, d_down[p]));
            return AN_OK;
        }
        an_tensor_release(gx);
    }
    /* the separate ops' dX GEMMs, v's first: each added into x's gradient so far (in place when it
     * has one of its own), or written into a fresh one that joins it (an_linear, an_lora_linear),
     * then p's dropout term (an_dropout's backward) */
    for (int p = 2; p >= 0; p--) {
        if (!dy[p]) continue;
        an_tensor *w = node->inputs[SLOT(p, W)], *la = node->inputs[SLOT(p, A)];
        an_tensor *sink = an_node_grad_sink(node, 0);
        an_tensor *gx = sink ? sink : an_op_new_like(ctx, x, x->ndim, x->shape);
        if (!gx) return an_error_status(ctx);
        an_status st = AN_OK;
        bool written = sink != NULL;
        if (d_down[p] && !masked[p]) { /* the thin product first, as an_lora_linear has it */
            an_gemm_shape branch = {1, rows, in, la->shape[0], false, false, false, written};
            st = an_op_gemm(ctx, &branch, d_down[p], la, gx);
            written = true;
        }
        an_gemm_shape s = {1, rows, in, w->shape[0], false, false, false, written}; /* dX (+)= dY W */
        if (st == AN_OK) st = an_op_gemm(ctx, &s, dy[p], w, gx);
        if (!sink) { /* a sink is borrowed: it already is x's gradient */
            if (st == AN_OK) st = an_node_accumulate(ctx, node, 0, gx);
            else an_tensor_release(gx);
        }
        if (st == AN_OK && masked[p]) st = dropout_term(ctx, node, p, d_down[p]);
        AN_TRY(st);
    }
    return AN_OK;
}

an_status an_qkv_linear_backward(an_ctx *ctx, an_node *node, an_tensor *grad_out) {
    handed_grads *h = node->extra;
    an_tensor *x = node->inputs[0];
    an_tensor *dy[3] = {h->q_unused ? NULL : grad_out, h->grad[1], h->grad[2]}, *d_down[3] = {0};
    bool need_x = an_node_needs_grad(node, 0);
    an_status st = AN_OK;
    an_tensor *turned[2] = {NULL, NULL}; /* dq, dk turned back by the rotation's opposite angle */
    for (int p = 0; p < 2 && h->rotated && !h->turned && st == AN_OK; p++) {
        if (!dy[p]) continue;
        turned[p] = an_op_new_like(ctx, dy[p], dy[p]->ndim, dy[p]->shape);
        st = turned[p] ? an_op_rope_rotate(ctx, &h->rope.config, dy[p], h->rope.positions, h->rope.head_dim, -1.0,
                                           turned[p])
                       : an_error_status(ctx);
        dy[p] = turned[p];
    }
    an_lora_adapter ad[3];
    int adapter_of[3] = {-1, -1, -1}, n_ad = 0, n_lin = 0, w_slot[3], bias_slot[3];
    an_tensor *dy_lin[3];
    for (int p = 2; p >= 0; p--) { /* v, k, q: the order the separate ops' backwards ran */
        if (!dy[p]) continue;
        if (node->inputs[SLOT(p, A)]) { /* x's gradient takes d_down A, through the mask when there is one */
            an_tensor *x_lora = node->saved[3 + p] ? node->saved[3 + p] : x;
            adapter_of[p] = n_ad;
            ad[n_ad++] = (an_lora_adapter){{0, -1, SLOT(p, W), SLOT(p, BIAS), SLOT(p, A), SLOT(p, B)}, x_lora, dy[p],
                                           node->saved[p], node->args[p]};
        } else { /* an_linear's gradients, the biases' in one pass */
            w_slot[n_lin] = SLOT(p, W), bias_slot[n_lin] = SLOT(p, BIAS), dy_lin[n_lin++] = dy[p];
        }
    }
    if (n_lin && st == AN_OK) st = an_op_linears_param_grads(ctx, node, n_lin, w_slot, bias_slot, dy_lin, x);
    an_tensor *d_down_ad[3] = {0};
    if (st == AN_OK && n_ad) st = an_op_lora_param_grads(ctx, node, n_ad, ad, need_x, d_down_ad);
    for (int p = 0; p < 3; p++)
        if (adapter_of[p] >= 0) d_down[p] = d_down_ad[adapter_of[p]];
    if (st == AN_OK && need_x) st = input_grad(ctx, node, dy, d_down);
    for (int p = 0; p < 3; p++) an_tensor_release(d_down[p]);
    for (int p = 0; p < 2; p++) an_tensor_release(turned[p]);
    for (int p = 1; p < 3; p++) an_tensor_release(h->grad[p]), h->grad[p] = NULL;
    return st;
}
