/* lora_linear.c — a linear layer with its LoRA branch in one op (an_lora_linear):
 *   y = x W^T + bias + scale (x_lora A^T) B^T
 * where x_lora is x itself or x after the adapter's dropout. Fused so the branch costs two thin
 * GEMMs and no extra pass over y: the branch's product is written first and the base GEMM adds
 * into it (beta 1: its read of y hides under its math, where the branch adding into the base's
 * output read and wrote y in a pass of its own: LoRA on every projection, 68.6 us a call, 9.6 ms a
 * step). In the backward x's gradient takes d_down A the same way: written by the thin GEMM when x
 * has no gradient yet, then the base dX GEMM adds dY W into it.
 *
 * Numerics: down = scale x_lora A^T (N, r) is rounded once to the dtype (the scale rides in the thin
 * GEMM, cuBLASLt's alpha, as does d_down's); y in peft's order: the base x W^T + bias rounded to
 * the dtype, then the branch's product down B^T added to it and rounded again, so an adapter's
 * first products (B starts at zero), under half a unit of y's last place, round away as they do
 * in peft. On the CPU that is the base GEMM, then the branch GEMM adding its float64 product into
 * it. On CUDA the branch's GEMM writes y first and the base GEMM adds into it (beta 1), which
 * cuBLASLt rounds the same way: with branches under half an ulp it moves 4.78% of the outputs off
 * x W^T alone, as rounding x W^T first does (4.79%) where one rounding of the sum moves 10.2%
 * (an H100, bench/gemm_wgmma_variants, proj; an_cuda_gemm_projections keeps that order by
 * construction).
 * A residual is not taken into the op: added to the
 * branch's product (or to a rounded x W^T) it would round the branch away where it is under half
 * a unit of the residual's last place (the adapter's first steps, B starting at zero), which a
 * LoRA on every projection showed as a loss curve drifting from peft's (docs/performance.md).
 * The forward saves the scaled down for dB. The backward's adapter gradients (d_down = scale dY B,
 * dB, dA) come on CUDA from an_cuda_lora_grads' two launches where its rule takes them (bf16/f16,
 * ranks and widths multiples of 8; an_qkv_linear hands it q's, k's and v's adapters at once, so x is
 * read once for their dA), elsewhere from thin GEMMs. */
#include "autograd/ops.h"

#include <string.h>

#include "autograd/op_support.h" /* AN_OP_INPUTS, an_op_gemm, an_op_gemm_scaled, an_op_gemm_bias, an_op_bias_grad */
#include "kernels/cuda.h"        /* an_cuda_lora_grads(_rule) */

static an_status check_shapes(an_ctx *ctx, const an_tensor *x, const an_tensor *x_lora, const an_tensor *w,
                              const an_tensor *bias, const an_tensor *a, const an_tensor *b) {
    char dx[96], dl[96], dw[96], da[96], db[96];
    an_tensor_describe(x, dx, sizeof dx), an_tensor_describe(x_lora, dl, sizeof dl);
    an_tensor_describe(w, dw, sizeof dw), an_tensor_describe(a, da, sizeof da), an_tensor_describe(b, db, sizeof db);
    AN_CHECK(ctx, x->ndim >= 1 && w->ndim == 2 && x->shape[x->ndim - 1] == w->shape[1], AN_ERR_INPUT,
             "lora_linear: input %s does not match weight %s (out, in)", dx, dw);
    AN_CHECK(ctx, an_tensor_same_shape(x, x_lora), AN_ERR_INPUT, "lora_linear: adapter input %s differs from input %s",
             dl, dx);
    AN_CHECK(ctx, a->ndim == 2 && b->ndim == 2 && a->shape[1] == w->shape[1] && b->shape[0] == w->shape[0] &&
                      b->shape[1] == a->shape[0],
             AN_ERR_INPUT, "lora_linear: A %s and B %s must be (r, in) and (out, r) for weight %s", da, db, dw);
    AN_CHECK(ctx, !bias || (bias->ndim == 1 && bias->shape[0] == w->shape[0]), AN_ERR_INPUT,
             "lora_linear: bias must be (%lld)", (long long)w->shape[0]);
    return AN_OK;
}

an_status an_op_lora_linear_into(an_ctx *ctx, const an_tensor *x, const an_tensor *x_lora, const an_tensor *w,
                                 const an_tensor *bias, const an_tensor *a, const an_tensor *b, double scale,
                                 an_tensor *out, an_tensor *down) {
    int64_t in = w->shape[1], out_features = w->shape[0], r = a->shape[0], rows = an_tensor_numel(x) / (in ? in : 1);
    an_gemm_shape to_down = {1, rows, r, in, false, true, false, false};          /* down = scale x_lora A^T */
    an_gemm_shape branch = {1, rows, out_features, r, false, true, false, false}; /* y = down B^T */
    an_gemm_shape base = {1, rows, out_features, in, false, true, false, true};   /* y += x W^T + bias */
    AN_TRY(an_op_gemm_scaled(ctx, &to_down, scale, x_lora, a, down));
    if (out->device == AN_CUDA) { /* the branch written first, the base GEMM adding into it */
        AN_TRY(an_op_gemm(ctx, &branch, down, b, out));
        return an_op_gemm_bias(ctx, &base, x, w, bias, out);
    }
    /* the CPU: the base rounded first, then the branch's float64 product added to it, rounded again */
    base.accumulate = false, branch.accumulate = true;
    AN_TRY(an_op_gemm_bias(ctx, &base, x, w, bias, out));
    return an_op_gemm(ctx, &branch, down, b, out);
}

an_tensor *an_lora_linear(an_ctx *ctx, an_tensor *x, an_tensor *x_lora, an_tensor *w, an_tensor *bias, an_tensor *a,
                          an_tensor *b, double scale) {
    AN_OP_INPUTS(x, x_lora, w, a, b);
    if (an_op_check_float_peers(ctx, "lora_linear", (an_tensor *[]){x, x_lora, w, bias, a, b}, 6) ||
        check_shapes(ctx, x, x_lora, w, bias, a, b))
        return NULL;
    int64_t in = w->shape[1], out_features = w->shape[0], r = a->shape[0], rows = an_tensor_numel(x) / (in ? in : 1);
    int64_t shape[AN_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[x->ndim - 1] = out_features;
    an_tensor *out = an_op_new_like(ctx, x, x->ndim, shape);
    an_tensor *down = an_op_new_like(ctx, x, 2, (int64_t[]){rows, r}); /* (N, r), scaled */
    an_status st = out && down ? AN_OK : an_error_status(ctx);
    if (st == AN_OK) st = an_op_lora_linear_into(ctx, x, x_lora, w, bias, a, b, scale, out, down);
    if (st != AN_OK) {
        an_tensor_release(out), an_tensor_release(down);
        return NULL;
    }
    an_node *node = an_tape_record(ctx, &an_op_lora_linear, out, (an_tensor *[]){x, x_lora, w, bias, a, b}, 6);
    if (node) {
        an_node_save(node, down);
        node->args[0] = scale;
        an_node_input_recomputable(node, 0); /* read by dW and dA: formed again in the backward */
        if (x_lora != x) an_node_input_recomputable(node, 1);
    }
    an_tensor_release(down);
    return out;
}

/* op(p) @ op(q) as input i's gradient: added by the GEMM into the gradient it already has
 * (an_node_grad_sink: a later micro-batch), else a fresh one handed to an_node_accumulate. */
static an_status grad_gemm(an_ctx *ctx, an_node *node, int i, an_gemm_shape s, const an_tensor *p,
                           const an_tensor *q) {
    an_tensor *sink = an_node_grad_sink(node, i);
    if (sink) {
        s.accumulate = true;
        return an_op_gemm(ctx, &s, p, q, sink);
    }
    an_tensor *x = node->inputs[i];
    an_tensor *g = an_op_new_like(ctx, x, x->ndim, x->shape);
    an_status st = g ? an_op_gemm(ctx, &s, p, q, g) : an_error_status(ctx);
    if (st != AN_OK) {
        an_tensor_release(g);
        return st;
    }
    return an_node_accumulate(ctx, node, i, g);
}

/* Input i's gradient buffer for a launch that writes or adds into it: the gradient it already has
 * (*add set) or a fresh one (*fresh set, handed to an_node_accumulate after). NULL when it needs none. */
static an_status grad_target(an_ctx *ctx, an_node *node, int i, an_tensor **target, bool *fresh, int *add) {
    *target = NULL, *fresh = false, *add = 0;
    if (!an_node_needs_grad(node, i)) return AN_OK;
    an_tensor *sink = an_node_grad_sink(node, i), *x = node->inputs[i];
    if (sink) {
        *target = sink, *add = 1;
        return AN_OK;
    }
    *target = an_op_new_like(ctx, x, x->ndim, x->shape);
    *fresh = *target != NULL;
    return *target ? AN_OK : an_error_status(ctx);
}

/* d_down, dB and dA of every adapter in an_cuda_lora_grads' two launches; *taken false (nothing
 * done) where its rule refuses them. d_down[i] is formed where an adapter's dA or its caller needs it. */
static an_status fused_adapter_grads(an_ctx *ctx, an_node *node, int count, const an_lora_adapter *ad,
                                     const bool *need_d_down, an_tensor **d_down, bool *taken) {
    an_tensor *x = node->inputs[ad[0].at.x];
    an_tensor *gb[3] = {0}, *ga[3] = {0};
    bool fresh_b[3] = {0}, fresh_a[3] = {0};
    an_cuda_lora_grad args[3];
    int64_t in = x->shape[x->ndim - 1], rows = an_tensor_numel(x) / (in ? in : 1);
    an_status st = AN_OK;
    *taken = false;
    for (int i = 0; i < count; i++) {
        an_tensor *w = node->inputs[ad[i].at.w], *b = node->inputs[ad[i].at.b];
        args[i] = (an_cuda_lora_grad){.dy = an_tensor_data(ad[i].grad_out), .lora_b = an_tensor_data(b),
                                      .down = an_tensor_data(ad[i].down),
                                      .n = w->shape[0], .r = b->shape[1], .scale = ad[i].scale};
    }
    /* the inputs first, so a refused launch allocates nothing (the outputs come from the cache, aligned) */
    if (!an_cuda_lora_grads_rule(ctx, x->dtype, rows, in, count, args)) return AN_OK;
    for (int i = 0; i < count && st == AN_OK; i++) {
        int64_t r = args[i].r;
        st = grad_target(ctx, node, ad[i].at.b, &gb[i], &fresh_b[i], &args[i].add_b);
        if (st == AN_OK) st = grad_target(ctx, node, ad[i].at.a, &ga[i], &fresh_a[i], &args[i].add_a);
        if (st == AN_OK && (need_d_down[i] || ga[i])) {
            d_down[i] = an_op_new_like(ctx, x, 2, (int64_t[]){rows, r});
            st = d_down[i] ? AN_OK : an_error_status(ctx);
        }
        args[i].grad_b = gb[i] ? an_tensor_data(gb[i]) : NULL;
        args[i].grad_a = ga[i] ? an_tensor_data(ga[i]) : NULL;
        args[i].x_lora = ga[i] ? an_tensor_data(ad[i].x_lora) : NULL; /* materialized where dA is wanted */
        args[i].d_down = d_down[i] ? an_tensor_data(d_down[i]) : NULL;
    }
    if (st == AN_OK && an_cuda_lora_grads_rule(ctx, x->dtype, rows, in, count, args)) {
        *taken = true;
        st = an_cuda_lora_grads(ctx, x->dtype, rows, in, count, args);
        for (int i = 0; i < count && st == AN_OK; i++) {
            if (fresh_b[i]) st = an_node_accumulate(ctx, node, ad[i].at.b, gb[i]), fresh_b[i] = false;
            if (st == AN_OK && fresh_a[i]) st = an_node_accumulate(ctx, node, ad[i].at.a, ga[i]), fresh_a[i] = false;
        }
    }
    for (int i = 0; i < count; i++) {
        if (fresh_b[i]) an_tensor_release(gb[i]);
        if (fresh_a[i]) an_tensor_release(ga[i]);
        if (!*taken || st != AN_OK) an_tensor_release(d_down[i]), d_down[i] = NULL;
    }
    return st;
}

/* d_down (where need_d_down or dA asks), dB and dA of one adapter in thin GEMMs. */
static an_status adapter_grads(an_ctx *ctx, an_node *node, const an_lora_adapter *ad, bool need_d_down,
                               an_tensor **d_down_out) {
    const an_lora_slots *at = &ad->at;
    an_tensor *x = node->inputs[at->x], *w = node->inputs[at->w], *a = node->inputs[at->a], *b = node->inputs[at->b];
    int64_t in = w->shape[1], out_features = w->shape[0], r = a->shape[0], rows = an_tensor_numel(x) / (in ? in : 1);
    an_tensor *d_down = NULL; /* (N, r) = scale dY B: the gradient of x_lora A^T */
    if (need_d_down || an_node_needs_grad(node, at->a)) {
        an_gemm_shape s = {1, rows, r, out_features, false, false, false, false};
        d_down = an_op_new_like(ctx, x, 2, (int64_t[]){rows, r});
        an_status st = d_down ? an_op_gemm_scaled(ctx, &s, ad->scale, ad->grad_out, b, d_down) : an_error_status(ctx);
        if (st != AN_OK) {
            an_tensor_release(d_down);
            return st;
        }
    }
    an_status st = AN_OK;
    if (an_node_needs_grad(node, at->b)) /* dB = dY^T down */
        st = grad_gemm(ctx, node, at->b, (an_gemm_shape){1, out_features, r, rows, true, false, false, false},
                       ad->grad_out, ad->down);
    if (st == AN_OK && an_node_needs_grad(node, at->a)) /* dA = d_down^T x_lora */
        st = grad_gemm(ctx, node, at->a, (an_gemm_shape){1, r, in, rows, true, false, false, false}, d_down,
                       ad->x_lora);
    if (st == AN_OK) *d_down_out = d_down;
    else an_tensor_release(d_down);
    return st;
}

/* x_lora's own gradient (where it is an input of its own), dW and the bias's of one adapter's linear. */
static an_status other_grads(an_ctx *ctx, an_node *node, const an_lora_adapter *ad, an_tensor *d_down) {
    const an_lora_slots *at = &ad->at;
    an_tensor *x = node->inputs[at->x], *w = node->inputs[at->w], *bias = node->inputs[at->bias];
    an_tensor *a = node->inputs[at->a];
    int64_t in = w->shape[1], out_features = w->shape[0], r = a->shape[0], rows = an_tensor_numel(x) / (in ? in : 1);
    bool need_xl = ad->x_lora != x && at->x_lora >= 0 && an_node_needs_grad(node, at->x_lora);
    if (need_xl) /* d x_lora = d_down A */
        AN_TRY(grad_gemm(ctx, node, at->x_lora, (an_gemm_shape){1, rows, in, r, false, false, false, false}, d_down, a));
    if (an_node_needs_grad(node, at->w)) /* dW = dY^T X */
        AN_TRY(grad_gemm(ctx, node, at->w, (an_gemm_shape){1, out_features, in, rows, true, false, false, false},
                         ad->grad_out, x));
    if (an_node_needs_grad(node, at->bias)) {
        an_tensor *gb = an_op_new_like(ctx, bias, 1, bias->shape);
        an_status st = gb ? an_op_bias_grad(ctx, ad->grad_out, gb) : an_error_status(ctx);
        if (st != AN_OK) {
            an_tensor_release(gb);
            return st;
        }
        AN_TRY(an_node_accumulate(ctx, node, at->bias, gb));
    }
    return AN_OK;
}

an_status an_op_lora_param_grads(an_ctx *ctx, an_node *node, int count, const an_lora_adapter *ad, bool want_d_down,
                                 an_tensor **d_down_out) {
    AN_CHECK(ctx, count >= 1 && count <= 3, AN_ERR_INTERNAL, "lora_param_grads: %d adapters, expected 1 to 3", count);
    an_tensor *d_down[3] = {0};
    bool need_d_down[3];
    for (int i = 0; i < count; i++) {
        const an_lora_slots *at = &ad[i].at;
        an_tensor *x = node->inputs[at->x];
        if (an_node_needs_grad(node, at->w)) AN_TRY(an_tensor_materialize(ctx, x));
        if (an_node_needs_grad(node, at->a)) AN_TRY(an_tensor_materialize(ctx, ad[i].x_lora));
        /* x_lora's own gradient takes d_down A where x_lora is an input of its own */
        bool need_xl = ad[i].x_lora != x && at->x_lora >= 0 && an_node_needs_grad(node, at->x_lora);
        need_d_down[i] = want_d_down || need_xl;
    }
    bool taken = false;
    an_status st = AN_OK;
    if (node->inputs[ad[0].at.x]->device == AN_CUDA)
        st = fused_adapter_grads(ctx, node, count, ad, need_d_down, d_down, &taken);
    for (int i = 0; i < count && st == AN_OK && !taken; i++) st = adapter_grads(ctx, node, &ad[i], need_d_down[i], &d_down[i]);
    for (int i = 0; i < count && st == AN_OK; i++) st = other_grads(ctx, node, &ad[i], d_down[i]);
    for (int i = 0; i < count; i++) {
        if (st == AN_OK && want_d_down) d_down_out[i] = d_down[i];
        else an_tensor_release(d_down[i]);
    }
    return st;
}

an_status an_lora_linear_backward(an_ctx *ctx, an_node *node, an_tensor *grad_out) {
    an_tensor *x = node->inputs[0], *x_lora = node->inputs[1], *w = node->inputs[2], *a = node->inputs[4];
    int64_t in = w->shape[1], out_features = w->shape[0], r = a->shape[0], rows = an_tensor_numel(x) / (in ? in : 1);
    bool shared = x == x_lora, need_x = an_node_needs_grad(node, 0);
    an_tensor *d_down = NULL; /* scale dY B, for x's gradient when x_lora is x */
    an_lora_adapter ad = {{0, 1, 2, 3, 4, 5}, x_lora, grad_out, node->saved[0], node->args[0]};
    an_status st = an_op_lora_param_grads(ctx, node, 1, &ad, need_x && shared, &d_down);
    if (st == AN_OK && need_x) { /* dX = dY W (+ d_down A when x_lora is x), added into x's gradient so far */
        an_tensor *sink = an_node_grad_sink(node, 0);
        an_tensor *gx = sink ? sink : an_op_new_like(ctx, x, x->ndim, x->shape);
        /* the thin product first: a fresh gradient is then only written by it, and the base GEMM adds */
        an_gemm_shape branch = {1, rows, in, r, false, false, false, sink != NULL};
        an_gemm_shape s = {1, rows, in, out_features, false, false, false, sink != NULL || shared};
        st = gx ? AN_OK : an_error_status(ctx);
        if (st == AN_OK && shared) st = an_op_gemm(ctx, &branch, d_down, a, gx);
        if (st == AN_OK) st = an_op_gemm(ctx, &s, grad_out, w, gx);
        if (sink) {} /* borrowed: already x's gradient */
        else if (st == AN_OK) st = an_node_accumulate(ctx, node, 0, gx);
        else an_tensor_release(gx);
    }
    an_tensor_release(d_down);
    return st;
}
