/* rmsnorm.c — an_rmsnorm: y = x * rsqrt(mean(x^2) + eps) * w over the last dim (HF Qwen2RMSNorm /
 * LlamaRMSNorm), and its backward for x and w; an_add_rmsnorm, the residual add before it fused
 * into the same kernel on CUDA (recorded as the add and rmsnorm nodes the two ops record).
 * The forward saves the per-row rstd (rows) on the input's device, in fp32 (f64 for f64 inputs,
 * which only the CPU takes), and the backward reuses it instead of recomputing the statistics.
 * CUDA computes in fp32 with deterministic reductions (kernels/rmsnorm.cu). */
#include "autograd/ops.h"

#include <math.h>

#include "autograd/cpu/cpu.h"     /* an_cpu_rmsnorm, an_f64_* */
#include "autograd/op_support.h"  /* AN_OP_INPUTS, an_op_rmsnorm, an_op_check_float_peers */
#include "kernels/cuda.h"         /* an_cuda_rmsnorm, an_cuda_add_rmsnorm, an_cuda_rmsnorm_backward */

/* w must be (D) for x (..., D) with D > 0, and eps finite and >= 0. */
static an_status check_norm(an_ctx *ctx, const an_tensor *x, const an_tensor *w, double eps) {
    char dx[96], dw[96];
    int64_t D = x->ndim >= 1 ? x->shape[x->ndim - 1] : 0;
    AN_CHECK(ctx, D > 0 && w->ndim == 1 && w->shape[0] == D, AN_ERR_INPUT,
             "rmsnorm: weight %s must be (D) for input %s (..., D) with D > 0", an_tensor_describe(w, dw, sizeof dw),
             an_tensor_describe(x, dx, sizeof dx));
    AN_CHECK(ctx, eps >= 0 && isfinite(eps), AN_ERR_INPUT, "rmsnorm: eps = %g, expected a finite value >= 0", eps);
    return AN_OK;
}

/* The node an_rmsnorm records for out = rmsnorm(x) with its rstd. */
static void record(an_ctx *ctx, an_tensor *x, an_tensor *w, double eps, an_tensor *out, an_tensor *rstd) {
    an_node *node = an_tape_record(ctx, &an_op_rmsnorm, out, (an_tensor *[]){x, w}, 2);
    if (node) {
        an_node_save(node, rstd);
        node->args[0] = eps;
    }
}

/* (rows) rstd in the precision the device computes in. */
static an_tensor *new_rstd(an_ctx *ctx, const an_tensor *x, int64_t rows) {
    return an_tensor_new(ctx, x->dtype == AN_F64 ? AN_F64 : AN_F32, x->device, 1, &rows);
}

an_tensor *an_rmsnorm(an_ctx *ctx, an_tensor *x, an_tensor *w, double eps) {
    AN_OP_INPUTS(x, w);
    if (an_op_check_float_peers(ctx, "rmsnorm", (an_tensor *[]){x, w}, 2) || check_norm(ctx, x, w, eps)) return NULL;
    int64_t D = w->shape[0], rows = an_tensor_numel(x) / D;
    an_tensor *out = an_op_new_like(ctx, x, x->ndim, x->shape);
    an_tensor *rstd = out ? new_rstd(ctx, x, rows) : NULL; /* (rows) */
    an_status st = out && rstd ? AN_OK : an_error_status(ctx);
    if (st == AN_OK && x->device == AN_CUDA) {
        st = an_cuda_rmsnorm(ctx, x->dtype, an_tensor_data(x), an_tensor_data(w), rows, D, eps, an_tensor_data(out),
                             an_tensor_data(rstd));
    } else if (st == AN_OK) {
        an_f64 in[2], res[2];
        an_tensor *results[2] = {out, rstd};
        st = an_f64_read_all(ctx, (an_tensor *[]){x, w}, 2, in);
        if (st == AN_OK && (st = an_f64_write_all(ctx, results, 2, res)) == AN_OK) {
            an_cpu_rmsnorm(in[0].data, in[1].data, rows, D, eps, res[0].data, res[1].data);
            an_f64_commit_all(results, 2, res);
        }
        an_f64_free_all(in, 2);
    }
    if (st != AN_OK) {
        an_tensor_release(out);
        an_tensor_release(rstd);
        return NULL;
    }
    record(ctx, x, w, eps, out, rstd);
    an_tensor_release(rstd);
    return out;
}

an_tensor *an_add_rmsnorm(an_ctx *ctx, an_tensor *x, an_tensor *residual, an_tensor *w, double eps, an_tensor **sum) {
    AN_CHECK_NULL(ctx, sum != NULL, AN_ERR_INPUT, "add_rmsnorm: no place for the sum");
    *sum = NULL;
    AN_OP_INPUTS(x, residual, w);
    char dx[96], dr[96];
    if (an_op_check_float_peers(ctx, "add_rmsnorm", (an_tensor *[]){x, residual, w}, 3) ||
        check_norm(ctx, x, w, eps))
        return NULL;
    AN_CHECK_NULL(ctx, an_tensor_same_shape(x, residual), AN_ERR_INPUT,
                  "add_rmsnorm: residual %s must have the shape of x %s", an_tensor_describe(residual, dr, sizeof dr),
                  an_tensor_describe(x, dx, sizeof dx));
    if (x->device != AN_CUDA) { /* the two ops themselves: nothing to fuse on the CPU */
        an_tensor *s = an_add(ctx, x, residual);
        an_tensor *y = s ? an_rmsnorm(ctx, s, w, eps) : NULL;
        if (!y) an_tensor_release(s);
        else *sum = s;
        return y;
    }
    int64_t D = w->shape[0], rows = an_tensor_numel(x) / D;
    an_tensor *s = an_op_new_like(ctx, x, x->ndim, x->shape);
    an_tensor *out = s ? an_op_new_like(ctx, x, x->ndim, x->shape) : NULL;
    an_tensor *rstd = out ? new_rstd(ctx, x, rows) : NULL; /* (rows) */
    an_status st = rstd ? an_cuda_add_rmsnorm(ctx, x->dtype, an_tensor_data(x), an_tensor_data(residual),
                                              an_tensor_data(w), rows, D, eps, an_tensor_data(s), an_tensor_data(out),
                                              an_tensor_data(rstd))
                        : an_error_status(ctx);
    if (st != AN_OK) {
        an_tensor_release(s), an_tensor_release(out), an_tensor_release(rstd);
        return NULL;
    }
    an_op_record_binary(ctx, AN_BINARY_ADD, x, residual, s); /* the graph an_add + an_rmsnorm would record */
    record(ctx, s, w, eps, out, rstd);
    an_tensor_release(rstd);
    *sum = s;
    return out;
}

an_status an_rmsnorm_backward(an_ctx *ctx, an_node *node, an_tensor *grad_out) {
    an_tensor *x = node->inputs[0], *w = node->inputs[1], *rstd = node->saved[0];
    int64_t D = w->shape[0], rows = an_tensor_numel(x) / D;
    /* on CUDA x's gradient so far (the residual's, usually) takes dx in the same pass */
    an_tensor *sink = x->device == AN_CUDA ? an_node_grad_sink(node, 0) : NULL;
    an_tensor *grads[2] = {
        an_node_needs_grad(node, 0) && !sink ? an_op_new_like(ctx, x, x->ndim, x->shape) : NULL,
        an_node_needs_grad(node, 1) ? an_op_new_like(ctx, w, 1, w->shape) : NULL,
    };
    an_status st = an_error_status(ctx);
    if (st == AN_OK && x->device == AN_CUDA) {
        an_tensor *gx = sink ? sink : grads[0];
        st = an_cuda_rmsnorm_backward(ctx, x->dtype, an_tensor_data(x), an_tensor_data(w), an_tensor_data(rstd),
                                      an_tensor_data(grad_out), rows, D, gx ? an_tensor_data(gx) : NULL,
                                      grads[1] ? an_tensor_data(grads[1]) : NULL, sink != NULL);
    } else if (st == AN_OK) {
        an_f64 in[4], res[2];
        st = an_f64_read_all(ctx, (an_tensor *[]){x, w, rstd, grad_out}, 4, in);
        if (st == AN_OK && (st = an_f64_write_all(ctx, grads, 2, res)) == AN_OK) {
            an_cpu_rmsnorm_backward(in[0].data, in[1].data, in[2].data, in[3].data, rows, D, res[0].data, res[1].data);
            an_f64_commit_all(grads, 2, res);
        }
        an_f64_free_all(in, 4);
    }
    for (int i = 0; i < 2; i++) {
        if (st == AN_OK && grads[i]) st = an_node_accumulate(ctx, node, i, grads[i]);
        else an_tensor_release(grads[i]);
    }
    return st;
}
