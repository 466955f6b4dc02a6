/* reduce.c — sum and mean of every element to a scalar; backward broadcasts the scalar gradient. */
#include "autograd/ops.h"

#include "autograd/cpu/cpu.h"     /* an_f64_* */
#include "autograd/op_support.h"  /* AN_OP_INPUTS, an_op_sum, an_op_mean */
#include "kernels/cuda.h"         /* an_cuda_sum, an_cuda_fill_from_scalar */

static an_tensor *reduce(an_ctx *ctx, const an_op *op, an_tensor *x, bool mean) {
    AN_OP_INPUTS(x);
    if (an_op_check_float_peers(ctx, op->name, &x, 1)) return NULL;
    int64_t n = an_tensor_numel(x);
    double scale = mean ? (n ? 1.0 / (double)n : 0.0) : 1.0;
    an_tensor *out = an_op_new_like(ctx, x, 0, NULL);
    if (!out) return NULL;
    an_status st;
    if (x->device == AN_CPU) {
        an_f64 in;
        st = an_f64_read(ctx, x, &in);
        if (st == AN_OK) {
            double total = 0.0;
            for (int64_t i = 0; i < n; i++) total += in.data[i];
            an_tensor_set(out, 0, total * scale);
            an_f64_free(&in);
        }
    } else {
        st = an_cuda_sum(ctx, x->dtype, an_tensor_data(x), n, scale, an_tensor_data(out));
    }
    if (st != AN_OK) {
        an_tensor_release(out);
        return NULL;
    }
    an_node *node = an_tape_record(ctx, op, out, &x, 1);
    if (node) node->args[0] = scale;
    return out;
}

static an_status reduce_backward(an_ctx *ctx, an_node *node, an_tensor *grad_out) {
    an_tensor *x = node->inputs[0];
    double scale = node->args[0];
    int64_t n = an_tensor_numel(x);
    an_tensor *grad = an_op_new_like(ctx, x, x->ndim, x->shape);
    if (!grad) return an_error_status(ctx);
    an_status st = AN_OK;
    if (x->device == AN_CPU) {
        double g = an_tensor_get(grad_out, 0) * scale;
        for (int64_t i = 0; i < n; i++) an_tensor_set(grad, i, g);
    } else {
        st = an_cuda_fill_from_scalar(ctx, x->dtype, an_tensor_data(grad_out), scale, n, an_tensor_data(grad));
    }
    if (st != AN_OK) {
        an_tensor_release(grad);
        return st;
    }
    return an_node_accumulate(ctx, node, 0, grad);
}

an_tensor *an_sum(an_ctx *ctx, an_tensor *x) { return reduce(ctx, &an_op_sum, x, false); }
an_tensor *an_mean(an_ctx *ctx, an_tensor *x) { return reduce(ctx, &an_op_mean, x, true); }
an_status an_sum_backward(an_ctx *ctx, an_node *node, an_tensor *g) { return reduce_backward(ctx, node, g); }
an_status an_mean_backward(an_ctx *ctx, an_node *node, an_tensor *g) { return reduce_backward(ctx, node, g); }
