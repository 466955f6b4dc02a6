/* swiglu_mlp.c — the gated MLP: residual + (silu(x W_gate^T) * (x W_up^T)) W_down^T.
 *
 * an_swiglu_linear is its second half as one node, residual + swiglu(gate, up) W^T: the swiglu's
 * output lives only inside the op (formed for the GEMM, formed again in backward only when W is
 * trained), and the backward takes d act = dY W and the swiglu's gradient in one launch on an
 * H100 (an_cuda_gemm_swiglu_backward, which also forms act for a trained W's dW), else as the
 * GEMM and the elementwise passes. an_swiglu_mlp
 * adds the gate and up projections: on an H100 their GEMMs and the swiglu are one launch
 * (an_cuda_gemm_swiglu), and gate and up are recorded as one node (an_op_record_projections), so
 * x's gradient dg W_gate + du W_up is one an_cuda_gemm_segments launch with one rounding;
 * elsewhere they are the two linears an_linear records. With all three weights frozen (LoRA
 * beside them, not on them) and gate's and up's stacked in one allocation, the whole MLP is one
 * node (an_op_swiglu_mlp) instead: its backward writes dgate and dup side by side
 * (an_cuda_gemm_swiglu_backward_stacked) and x's gradient is one cuBLASLt GEMM over the stacked
 * weights (K = 2 inter; on an H100 at the 1.5B model's 8192 tokens 554-562 us against 580-593 for
 * the two-pair launch, bench/gemm_wgmma_variants, docs/performance.md). Where neither kernel takes the
 * shape (another device, f32, K or N not a multiple of 8) the same values come from the separate
 * ops, so every device and dtype computes the same function with the same rounding points: gate
 * and up rounded to the dtype, act rounded, y rounded once with its residual. */
#include "autograd/ops.h"

#include "autograd/op_support.h" /* an_op_record_linear, an_op_swiglu_into, an_op_swiglu_grad, an_op_linear_weight_grad */
#include "kernels/cuda.h"        /* an_cuda_gemm_swiglu(_backward), an_cuda_gemm_swiglu_rule */

#include <string.h>

/* residual + act w^T with act = swiglu(gate, up) given (formed with gate and up) or NULL (formed
 * here). */
static an_tensor *swiglu_linear(an_ctx *ctx, an_tensor *gate, an_tensor *up, an_tensor *act, an_tensor *w,
                                an_tensor *residual) {
    AN_OP_INPUTS(gate, up, w);
    if (an_op_check_float_peers(ctx, "swiglu_linear", (an_tensor *[]){gate, up, w, residual}, 4)) return NULL;
    char dg[96], du[96], dw[96];
    an_tensor_describe(gate, dg, sizeof dg);
    an_tensor_describe(up, du, sizeof du);
    an_tensor_describe(w, dw, sizeof dw);
    AN_CHECK_NULL(ctx, an_tensor_same_shape(gate, up), AN_ERR_INPUT, "swiglu_linear: gate %s and up %s differ", dg, du);
    AN_CHECK_NULL(ctx, w->ndim == 2 && gate->ndim >= 1 && gate->shape[gate->ndim - 1] == w->shape[1], AN_ERR_INPUT,
                  "swiglu_linear: gate %s does not match weight %s (out, in)", dg, dw);
    int64_t inner = w->shape[1], outer = w->shape[0], rows = an_tensor_numel(gate) / (inner ? inner : 1);
    int64_t shape[AN_MAX_DIMS];
    memcpy(shape, gate->shape, sizeof shape);
    shape[gate->ndim - 1] = outer;
    if (an_op_check_residual(ctx, "swiglu_linear", residual, gate->ndim, shape) != AN_OK) return NULL;
    an_tensor *own = act ? NULL : an_op_new_like(ctx, gate, gate->ndim, gate->shape);
    if (!act && (!own || an_op_swiglu_into(ctx, gate, up, own) != AN_OK)) {
        an_tensor_release(own);
        return NULL;
    }
    an_tensor *out = an_op_new_like(ctx, gate, gate->ndim, shape);
    an_gemm_shape s = {1, rows, outer, inner, false, true, false, false}; /* act @ W^T + residual */
    an_status st = out ? an_op_gemm_bias_add(ctx, &s, act ? act : own, w, NULL, residual, out) : an_error_status(ctx);
    an_tensor_release(own);
    if (st != AN_OK) {
        an_tensor_release(out);
        return NULL;
    }
    an_node *node = an_tape_record(ctx, &an_op_swiglu_linear, out, (an_tensor *[]){gate, up, w, residual}, 4);
    if (node && residual) an_node_input_routing_only(node, 3); /* its gradient is dY itself */
    return out;
}

an_tensor *an_swiglu_linear(an_ctx *ctx, an_tensor *gate, an_tensor *up, an_tensor *w, an_tensor *residual) {
    return swiglu_linear(ctx, gate, up, NULL, w, residual);
}

an_status an_swiglu_linear_backward(an_ctx *ctx, an_node *node, an_tensor *grad_out) {
    an_tensor *gate = node->inputs[0], *up = node->inputs[1], *w = node->inputs[2];
    int64_t inner = w->shape[1], outer = w->shape[0], rows = an_tensor_numel(gate) / (inner ? inner : 1);
    bool want_w = an_node_needs_grad(node, 2), act_formed = false;
    /* act for dW (trained W only): from the fused kernel beside dgate and dup, else formed again */
    an_tensor *act = want_w ? an_op_new_like(ctx, gate, gate->ndim, gate->shape) : NULL;
    an_status st = !want_w || act ? AN_OK : an_error_status(ctx);
    if (st == AN_OK && (an_node_needs_grad(node, 0) || an_node_needs_grad(node, 1))) {
        an_tensor *g[2] = {an_op_new_like(ctx, gate, gate->ndim, gate->shape),
                           an_op_new_like(ctx, up, up->ndim, up->shape)};
        st = g[0] && g[1] ? AN_OK : an_error_status(ctx);
        const void *ptrs[] = {an_tensor_data(grad_out), an_tensor_data(w), an_tensor_data(gate), an_tensor_data(up),
                              g[0] ? an_tensor_data(g[0]) : NULL, g[1] ? an_tensor_data(g[1]) : NULL,
                              act ? an_tensor_data(act) : NULL};
        if (st == AN_OK && gate->device == AN_CUDA &&
            an_cuda_gemm_swiglu_rule(ctx, gate->dtype, rows, outer, inner, ptrs, act ? 7 : 6)) {
            st = an_cuda_gemm_swiglu_backward(ctx, gate->dtype, ptrs[0], rows, outer, ptrs[1], inner, ptrs[2], ptrs[3],
                                              an_tensor_data(g[0]), an_tensor_data(g[1]),
                                              act ? an_tensor_data(act) : NULL);
            act_formed = act != NULL;
        } else if (st == AN_OK) { /* d act = dY @ W, then the swiglu's gradient */
            an_tensor *dact = an_op_new_like(ctx, gate, gate->ndim, gate->shape);
            an_gemm_shape s = {1, rows, inner, outer, false, false, false, false};
            st = dact ? an_op_gemm(ctx, &s, grad_out, w, dact) : an_error_status(ctx);
            if (st == AN_OK) st = an_op_swiglu_grad(ctx, gate, up, dact, g[0], g[1]);
            an_tensor_release(dact);
        }
        for (int i = 0; i < 2; i++) {
            if (st == AN_OK && an_node_needs_grad(node, i)) st = an_node_accumulate(ctx, node, i, g[i]);
            else an_tensor_release(g[i]);
        }
    }
    if (st == AN_OK && want_w) { /* dW = dY^T act */
        if (!act_formed) st = an_op_swiglu_into(ctx, gate, up, act);
        if (st == AN_OK) st = an_op_linear_weight_grad(ctx, node, 2, grad_out, act);
    }
    an_tensor_release(act);
    AN_TRY(st);
    return an_node_pass_grad(ctx, node, 3, grad_out); /* the residual's (none without one) */
}

/* Whether the frozen MLP's node takes these operands (the forward's launch already ran): no weight
 * trained, gate's and up's stacked, the backward's stacked form allowed for its shapes. */
static bool frozen_stacked(an_ctx *ctx, const an_tensor *x, an_tensor *w_gate, an_tensor *w_up, const an_tensor *w_down,
                           const an_tensor *gate, const an_tensor *up, int64_t rows) {
    if (w_gate->requires_grad || w_up->requires_grad || w_down->requires_grad) return false;
    if (!an_tensor_stacked((const an_tensor *[]){w_gate, w_up}, 2)) return false;
    const void *ptrs[] = {an_tensor_data(w_down), an_tensor_data(gate), an_tensor_data(up)};
    return an_cuda_swiglu_stacked_rule(ctx, x->dtype, rows, w_down->shape[0], w_gate->shape[0], ptrs, 3) != 0;
}

/* residual + act W_down^T from the forward's launch, recorded as one node over x, the three weights
 * and residual, keeping gate and up (x's values are not read again: no weight is trained). */
static an_tensor *frozen_mlp(an_ctx *ctx, an_tensor *x, an_tensor *w_gate, an_tensor *w_up, an_tensor *w_down,
                             an_tensor *residual, an_tensor *gate, an_tensor *up, an_tensor *act, const int64_t *shape) {
    int64_t rows = an_tensor_numel(gate) / gate->shape[gate->ndim - 1];
    an_tensor *out = an_op_new_like(ctx, x, x->ndim, shape);
    an_gemm_shape s = {1, rows, w_down->shape[0], w_down->shape[1], false, true, false, false}; /* act @ W^T + residual */
    if (!out || an_op_gemm_bias_add(ctx, &s, act, w_down, NULL, residual, out) != AN_OK) {
        an_tensor_release(out);
        return NULL;
    }
    an_node *node = an_tape_record(ctx, &an_op_swiglu_mlp, out, (an_tensor *[]){x, w_gate, w_up, w_down, residual}, 5);
    if (node) {
        an_node_save(node, gate);
        an_node_save(node, up);
        an_node_input_routing_only(node, 0);
        if (residual) an_node_input_routing_only(node, 4); /* its gradient is dY itself */
    } else if (an_error_status(ctx) != AN_OK) {
        an_tensor_release(out);
        return NULL;
    }
    return out;
}

/* The frozen MLP's node: dgate | dup (rows, 2 inter) in one launch, x's gradient [dgate | dup]
 * [W_gate; W_up] in one GEMM (one fp32 sum over K = 2 inter, one rounding, as the two-pair launch
 * rounds it), and dY to the residual. */
an_status an_swiglu_mlp_backward(an_ctx *ctx, an_node *node, an_tensor *grad_out) {
    an_tensor *x = node->inputs[0], *w_gate = node->inputs[1], *w_down = node->inputs[3];
    an_tensor *gate = node->saved[0], *up = node->saved[1];
    int64_t inter = w_gate->shape[0], in = w_gate->shape[1], rows = an_tensor_numel(gate) / inter;
    an_status st = AN_OK;
    if (an_node_needs_grad(node, 0)) {
        an_tensor *dgu = an_tensor_new(ctx, gate->dtype, AN_CUDA, 2, (int64_t[]){rows, 2 * inter});
        an_tensor *dx = dgu ? an_op_new_like(ctx, x, x->ndim, x->shape) : NULL;
        st = dx ? an_cuda_gemm_swiglu_backward_stacked(ctx, gate->dtype, an_tensor_data(grad_out), rows,
                                                       w_down->shape[0], an_tensor_data(w_down), inter,
                                                       an_tensor_data(gate), an_tensor_data(up), an_tensor_data(dgu))
                : an_error_status(ctx);
        an_gemm_shape s = {1, rows, in, 2 * inter, false, false, false, false}; /* dgu @ [W_gate; W_up] */
        if (st == AN_OK) st = an_cuda_gemm(ctx, &s, gate->dtype, an_tensor_data(dgu), an_tensor_data(w_gate), an_tensor_data(dx));
        an_tensor_release(dgu);
        if (st == AN_OK) st = an_node_accumulate(ctx, node, 0, dx);
        else an_tensor_release(dx);
    }
    AN_TRY(st);
    return an_node_pass_grad(ctx, node, 4, grad_out); /* the residual's (none without one) */
}

an_tensor *an_swiglu_mlp(an_ctx *ctx, an_tensor *x, an_tensor *w_gate, an_tensor *w_up, an_tensor *w_down,
                         an_tensor *residual) {
    AN_OP_INPUTS(x, w_gate, w_up, w_down);
    if (an_op_check_float_peers(ctx, "swiglu_mlp", (an_tensor *[]){x, w_gate, w_up, w_down, residual}, 5)) return NULL;
    char dx[96], dg[96], du[96];
    an_tensor_describe(x, dx, sizeof dx);
    an_tensor_describe(w_gate, dg, sizeof dg);
    an_tensor_describe(w_up, du, sizeof du);
    AN_CHECK_NULL(ctx, w_gate->ndim == 2 && an_tensor_same_shape(w_gate, w_up), AN_ERR_INPUT,
                  "swiglu_mlp: gate weight %s and up weight %s must be the same (out, in)", dg, du);
    AN_CHECK_NULL(ctx, x->ndim >= 1 && x->shape[x->ndim - 1] == w_gate->shape[1], AN_ERR_INPUT,
                  "swiglu_mlp: input %s does not match gate weight %s (out, in)", dx, dg);
    int64_t in = w_gate->shape[1], n = w_gate->shape[0], rows = an_tensor_numel(x) / (in ? in : 1);
    /* the second half's operands too, before anything runs or is recorded */
    char dd[96];
    AN_CHECK_NULL(ctx, w_down->ndim == 2 && w_down->shape[1] == n, AN_ERR_INPUT,
                  "swiglu_mlp: down weight %s does not match gate weight %s (out, in)",
                  an_tensor_describe(w_down, dd, sizeof dd), dg);
    int64_t out_shape[AN_MAX_DIMS];
    memcpy(out_shape, x->shape, sizeof out_shape);
    out_shape[x->ndim - 1] = w_down->shape[0];
    if (an_op_check_residual(ctx, "swiglu_mlp", residual, x->ndim, out_shape) != AN_OK) return NULL;
    an_tensor *gate = NULL, *up = NULL, *act = NULL;
    const void *in_ptrs[] = {an_tensor_data(x), an_tensor_data(w_gate), an_tensor_data(w_up)};
    if (x->device == AN_CUDA && an_cuda_gemm_swiglu_rule(ctx, x->dtype, rows, in, n, in_ptrs, 3)) {
        /* gate, up and act from one launch (the outputs' alignment checked once they exist) */
        int64_t shape[AN_MAX_DIMS];
        memcpy(shape, x->shape, sizeof shape);
        shape[x->ndim - 1] = n;
        gate = an_op_new_like(ctx, x, x->ndim, shape);
        up = gate ? an_op_new_like(ctx, x, x->ndim, shape) : NULL;
        act = up ? an_op_new_like(ctx, x, x->ndim, shape) : NULL;
        if (!act) {
            an_tensor_release(gate), an_tensor_release(up);
            return NULL;
        }
        const void *ptrs[] = {an_tensor_data(x),    an_tensor_data(w_gate), an_tensor_data(w_up),
                              an_tensor_data(gate), an_tensor_data(up),     an_tensor_data(act)};
        const bool launched = an_cuda_gemm_swiglu_rule(ctx, x->dtype, rows, in, n, ptrs, 6) &&
                              an_cuda_gemm_swiglu(ctx, x->dtype, ptrs[0], rows, in, ptrs[1], ptrs[2], n,
                                                  an_tensor_data(gate), an_tensor_data(up), an_tensor_data(act)) == AN_OK;
        if (launched && frozen_stacked(ctx, x, w_gate, w_up, w_down, gate, up, rows)) {
            an_tensor *out = frozen_mlp(ctx, x, w_gate, w_up, w_down, residual, gate, up, act, out_shape);
            an_tensor_release(gate), an_tensor_release(up), an_tensor_release(act);
            return out;
        }
        if (launched) {
            /* one node: x's gradient dg W_gate + du W_up in one launch, one rounding */
            if (an_op_record_projections(ctx, x, 2, (an_tensor *[]){w_gate, w_up}, NULL, (an_tensor *[]){gate, up}) !=
                AN_OK) {
                an_tensor_release(gate), an_tensor_release(up), an_tensor_release(act);
                return NULL;
            }
        } else {
            an_tensor_release(gate), an_tensor_release(up), an_tensor_release(act);
            gate = up = act = NULL;
            if (an_error_status(ctx) != AN_OK) return NULL;
        }
    }
    if (!gate) { /* the two linears */
        gate = an_linear(ctx, x, w_gate, NULL);
        up = gate ? an_linear(ctx, x, w_up, NULL) : NULL;
    }
    an_tensor *out = up ? swiglu_linear(ctx, gate, up, act, w_down, residual) : NULL;
    an_tensor_release(gate), an_tensor_release(up), an_tensor_release(act);
    return out;
}
