/* elementwise.c — add, sub, mul (b broadcast over a's leading dims), scale, silu and swiglu.
 * Backward rules write fresh gradient tensors and hand them to an_node_accumulate. */
#include "autograd/ops.h"

#include "autograd/cpu/cpu.h"     /* an_cpu_binary, an_cpu_swiglu, an_f64_* */
#include "autograd/op_support.h"  /* AN_OP_INPUTS, an_op_* descriptors and checks */
#include "kernels/cuda.h"         /* an_cuda_binary, an_cuda_scale, an_cuda_swiglu */

/* b's shape must equal a's trailing dims (all of them when b has a's rank). */
static an_status check_broadcast(an_ctx *ctx, const char *op, const an_tensor *a, const an_tensor *b) {
    char da[96], db[96];
    bool ok = b->ndim <= a->ndim;
    for (int i = 0; ok && i < b->ndim; i++) ok = b->shape[b->ndim - 1 - i] == a->shape[a->ndim - 1 - i];
    AN_CHECK(ctx, ok, AN_ERR_INPUT, "%s: shape %s does not broadcast onto %s (it must equal the trailing dims)", op,
             an_tensor_describe(b, db, sizeof db), an_tensor_describe(a, da, sizeof da));
    return AN_OK;
}

static an_tensor *binary(an_ctx *ctx, an_binary_kind kind, const an_op *op, an_tensor *a, an_tensor *b) {
    AN_OP_INPUTS(a, b);
    if (an_op_check_float_peers(ctx, op->name, (an_tensor *[]){a, b}, 2) || check_broadcast(ctx, op->name, a, b))
        return NULL;
    an_tensor *out = an_op_new_like(ctx, a, a->ndim, a->shape);
    if (!out) return NULL;
    if (an_op_binary_into(ctx, kind, a, b, out) != AN_OK) {
        an_tensor_release(out);
        return NULL;
    }
    an_op_record_binary(ctx, kind, a, b, out);
    return out;
}

an_status an_op_binary_into(an_ctx *ctx, an_binary_kind kind, an_tensor *a, an_tensor *b, an_tensor *out) {
    int64_t n = an_tensor_numel(a), nb = an_tensor_numel(b);
    if (a->device != AN_CPU)
        return an_cuda_binary(ctx, kind, a->dtype, an_tensor_data(a), n, an_tensor_data(b), nb, an_tensor_data(out));
    an_f64 in[2], res;
    an_status st = an_f64_read_all(ctx, (an_tensor *[]){a, b}, 2, in);
    if (st == AN_OK && (st = an_f64_write(ctx, out, &res)) == AN_OK) {
        an_cpu_binary(kind, in[0].data, n, in[1].data, nb, res.data);
        an_f64_commit(out, &res);
    }
    an_f64_free_all(in, 2);
    return st;
}

an_node *an_op_record_binary(an_ctx *ctx, an_binary_kind kind, an_tensor *a, an_tensor *b, an_tensor *out) {
    const an_op *op = kind == AN_BINARY_ADD ? &an_op_add : kind == AN_BINARY_SUB ? &an_op_sub : &an_op_mul;
    an_node *node = an_tape_record(ctx, op, out, (an_tensor *[]){a, b}, 2);
    if (kind != AN_BINARY_MUL) /* the gradients of a sum or difference read neither operand */
        an_node_input_routing_only(node, 0), an_node_input_routing_only(node, 1);
    return node;
}

static an_status binary_backward(an_ctx *ctx, an_binary_kind kind, an_node *node, an_tensor *grad_out) {
    an_tensor *a = node->inputs[0], *b = node->inputs[1];
    if (kind == AN_BINARY_ADD && an_tensor_numel(a) == an_tensor_numel(b)) {
        /* both gradients are grad_out, shared (a copy only for a leaf that is the second input) */
        AN_TRY(an_node_pass_grad(ctx, node, 0, grad_out));
        return an_node_pass_grad(ctx, node, 1, grad_out);
    }
    an_tensor *grad_a = an_node_needs_grad(node, 0) ? an_op_new_like(ctx, a, a->ndim, a->shape) : NULL;
    an_tensor *grad_b = an_node_needs_grad(node, 1) ? an_op_new_like(ctx, b, b->ndim, b->shape) : NULL;
    int64_t n = an_tensor_numel(a), nb = an_tensor_numel(b);
    an_status st = an_error_status(ctx);
    if (st == AN_OK && a->device == AN_CPU) {
        an_f64 in[3], res[2];
        an_tensor *grads[2] = {grad_a, grad_b};
        bool mul = kind == AN_BINARY_MUL; /* add and sub read neither operand (their values may be gone) */
        st = an_f64_read_all(ctx, (an_tensor *[]){mul ? a : NULL, mul ? b : NULL, grad_out}, 3, in);
        if (st == AN_OK && (st = an_f64_write_all(ctx, grads, 2, res)) == AN_OK) {
            an_cpu_binary_backward(kind, in[0].data, n, in[1].data, nb, in[2].data, res[0].data, res[1].data);
            an_f64_commit_all(grads, 2, res);
        }
        an_f64_free_all(in, 3);
    } else if (st == AN_OK) {
        st = an_cuda_binary_backward(ctx, kind, a->dtype, an_tensor_data(a), n, an_tensor_data(b), nb,
                                     an_tensor_data(grad_out), grad_a ? an_tensor_data(grad_a) : NULL,
                                     grad_b ? an_tensor_data(grad_b) : NULL);
    }
    an_tensor *grads[2] = {grad_a, grad_b};
    for (int i = 0; i < 2; i++) {
        if (st == AN_OK && grads[i]) st = an_node_accumulate(ctx, node, i, grads[i]);
        else an_tensor_release(grads[i]);
    }
    return st;
}

an_tensor *an_add(an_ctx *ctx, an_tensor *a, an_tensor *b) { return binary(ctx, AN_BINARY_ADD, &an_op_add, a, b); }
an_tensor *an_sub(an_ctx *ctx, an_tensor *a, an_tensor *b) { return binary(ctx, AN_BINARY_SUB, &an_op_sub, a, b); }
an_tensor *an_mul(an_ctx *ctx, an_tensor *a, an_tensor *b) { return binary(ctx, AN_BINARY_MUL, &an_op_mul, a, b); }
an_status an_add_backward(an_ctx *ctx, an_node *node, an_tensor *g) { return binary_backward(ctx, AN_BINARY_ADD, node, g); }
an_status an_sub_backward(an_ctx *ctx, an_node *node, an_tensor *g) { return binary_backward(ctx, AN_BINARY_SUB, node, g); }
an_status an_mul_backward(an_ctx *ctx, an_node *node, an_tensor *g) { return binary_backward(ctx, AN_BINARY_MUL, node, g); }

/* out = s * x, on either device; shared by scale's forward and backward. */
static an_tensor *scaled(an_ctx *ctx, an_tensor *x, double s) {
    an_tensor *out = an_op_new_like(ctx, x, x->ndim, x->shape);
    if (!out) return NULL;
    int64_t n = an_tensor_numel(x);
    an_status st;
    if (x->device == AN_CPU) {
        an_f64 in, res;
        st = an_f64_read(ctx, x, &in);
        if (st == AN_OK && (st = an_f64_write(ctx, out, &res)) == AN_OK) {
            for (int64_t i = 0; i < n; i++) res.data[i] = s * in.data[i];
            an_f64_commit(out, &res);
        }
        an_f64_free(&in);
    } else {
        st = an_cuda_scale(ctx, x->dtype, an_tensor_data(x), n, s, an_tensor_data(out));
    }
    if (st != AN_OK) {
        an_tensor_release(out);
        return NULL;
    }
    return out;
}

an_tensor *an_scale(an_ctx *ctx, an_tensor *x, double s) {
    AN_OP_INPUTS(x);
    if (an_op_check_float_peers(ctx, "scale", &x, 1)) return NULL;
    an_tensor *out = scaled(ctx, x, s);
    an_node *node = out ? an_tape_record(ctx, &an_op_scale, out, &x, 1) : NULL;
    an_node_input_routing_only(node, 0);
    if (node) node->args[0] = s;
    return out;
}

an_status an_scale_backward(an_ctx *ctx, an_node *node, an_tensor *grad_out) {
    return an_node_accumulate(ctx, node, 0, scaled(ctx, grad_out, node->args[0]));
}

/* out = silu(gate) * up, or silu(gate) when up is NULL. */
an_status an_op_swiglu_into(an_ctx *ctx, an_tensor *gate, an_tensor *up, an_tensor *out) {
    int64_t n = an_tensor_numel(gate);
    if (gate->device == AN_CUDA)
        return an_cuda_swiglu(ctx, gate->dtype, an_tensor_data(gate), up ? an_tensor_data(up) : NULL, n,
                              an_tensor_data(out));
    an_f64 in[2], res;
    an_status st = an_f64_read_all(ctx, (an_tensor *[]){gate, up}, 2, in);
    if (st == AN_OK && (st = an_f64_write(ctx, out, &res)) == AN_OK) {
        an_cpu_swiglu(in[0].data, in[1].data, n, res.data);
        an_f64_commit(out, &res);
    }
    an_f64_free_all(in, 2);
    return st;
}

/* The output again from the inputs the node keeps: one elementwise pass, so a consumer that
 * needs it in backward (a trained down projection) lets it go after the forward. */
static an_status swiglu_recompute(an_ctx *ctx, an_node *node, an_tensor *out) {
    return an_op_swiglu_into(ctx, node->inputs[0], node->n_inputs > 1 ? node->inputs[1] : NULL, out);
}

static an_node *record_swiglu(an_ctx *ctx, const an_op *op, an_tensor *gate, an_tensor *up, an_tensor *out) {
    an_node *node = an_tape_record(ctx, op, out, (an_tensor *[]){gate, up}, up ? 2 : 1);
    if (node) node->recompute = swiglu_recompute;
    return node;
}

/* silu(gate) * up, or silu(gate) alone when up is NULL. */
static an_tensor *swiglu(an_ctx *ctx, const an_op *op, an_tensor *gate, an_tensor *up) {
    an_tensor *operands[2] = {gate, up};
    if (an_op_check_float_peers(ctx, op->name, operands, 2)) return NULL;
    char dg[96], du[96];
    AN_CHECK_NULL(ctx, !up || an_tensor_same_shape(gate, up), AN_ERR_INPUT, "%s: gate %s and up %s differ", op->name,
                  an_tensor_describe(gate, dg, sizeof dg), an_tensor_describe(up, du, sizeof du));
    an_tensor *out = an_op_new_like(ctx, gate, gate->ndim, gate->shape);
    if (!out) return NULL;
    if (an_op_swiglu_into(ctx, gate, up, out) != AN_OK) {
        an_tensor_release(out);
        return NULL;
    }
    record_swiglu(ctx, op, gate, up, out);
    return out;
}


an_status an_op_swiglu_grad(an_ctx *ctx, an_tensor *gate, an_tensor *up, an_tensor *grad_out, an_tensor *dgate,
                            an_tensor *dup) {
    int64_t n = an_tensor_numel(gate);
    an_status st = an_error_status(ctx);
    an_tensor *grads[2] = {dgate, dup};
    if (st == AN_OK && gate->device == AN_CPU) {
        an_f64 in[3], res[2];
        st = an_f64_read_all(ctx, (an_tensor *[]){gate, up, grad_out}, 3, in);
        if (st == AN_OK && (st = an_f64_write_all(ctx, grads, 2, res)) == AN_OK) {
            an_cpu_swiglu_backward(in[0].data, in[1].data, n, in[2].data, res[0].data, res[1].data);
            an_f64_commit_all(grads, 2, res);
        }
        an_f64_free_all(in, 3);
    } else if (st == AN_OK) {
        st = an_cuda_swiglu_backward(ctx, gate->dtype, an_tensor_data(gate), up ? an_tensor_data(up) : NULL, n,
                                     an_tensor_data(grad_out), dgate ? an_tensor_data(dgate) : NULL,
                                     dup ? an_tensor_data(dup) : NULL);
    }
    return st;
}

static an_status swiglu_backward(an_ctx *ctx, an_node *node, an_tensor *grad_out) {
    an_tensor *gate = node->inputs[0], *up = node->n_inputs > 1 ? node->inputs[1] : NULL;
    an_tensor *grads[2] = {
        an_node_needs_grad(node, 0) ? an_op_new_like(ctx, gate, gate->ndim, gate->shape) : NULL,
        an_node_needs_grad(node, 1) ? an_op_new_like(ctx, up, up->ndim, up->shape) : NULL,
    };
    an_status st = an_op_swiglu_grad(ctx, gate, up, grad_out, grads[0], grads[1]);
    for (int i = 0; i < 2; i++) {
        if (st == AN_OK && grads[i]) st = an_node_accumulate(ctx, node, i, grads[i]);
        else an_tensor_release(grads[i]);
    }
    return st;
}

an_tensor *an_silu(an_ctx *ctx, an_tensor *x) {
    AN_OP_INPUTS(x);
    return swiglu(ctx, &an_op_silu, x, NULL);
}

an_tensor *an_swiglu(an_ctx *ctx, an_tensor *gate, an_tensor *up) {
    AN_OP_INPUTS(gate, up);
    return swiglu(ctx, &an_op_swiglu, gate, up);
}

an_status an_silu_backward(an_ctx *ctx, an_node *node, an_tensor *g) { return swiglu_backward(ctx, node, g); }
an_status an_swiglu_backward(an_ctx *ctx, an_node *node, an_tensor *g) { return swiglu_backward(ctx, node, g); }
