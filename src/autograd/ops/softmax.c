/* softmax.c — softmax over the last dim of x (..., C), and its backward rule
 * dx = y * (dy - sum(dy * y)) from the saved output y.
 * The CPU path widens to float64 (an_f64_*) and rounds the output once; the CUDA path computes in
 * fp32 (kernels/softmax.cu) and rounds once. On both devices the node saves a detached view of
 * the output (shared storage, no grad_fn), so backward needs no recomputation. */
#include "autograd/ops.h"

#include "autograd/cpu/cpu.h"     /* an_cpu_softmax, an_f64_* */
#include "autograd/op_support.h"  /* AN_OP_INPUTS, an_op_softmax */
#include "kernels/cuda.h"         /* an_cuda_softmax, an_cuda_softmax_backward */

/* Rows and columns of x viewed as (rows, C). */
static void softmax_dims(const an_tensor *x, int64_t *rows, int64_t *cols) {
    *cols = x->shape[x->ndim - 1];
    *rows = *cols ? an_tensor_numel(x) / *cols : 0;
}

an_tensor *an_softmax(an_ctx *ctx, an_tensor *x) {
    AN_OP_INPUTS(x);
    if (an_op_check_float_peers(ctx, "softmax", &x, 1)) return NULL;
    char dx[96];
    AN_CHECK_NULL(ctx, x->ndim >= 1, AN_ERR_INPUT, "softmax: input %s needs at least one dim",
                  an_tensor_describe(x, dx, sizeof dx));
    int64_t rows, cols;
    softmax_dims(x, &rows, &cols);
    an_tensor *out = an_op_new_like(ctx, x, x->ndim, x->shape);
    if (!out) return NULL;
    an_status st;
    if (x->device == AN_CUDA) {
        st = an_cuda_softmax(ctx, x->dtype, an_tensor_data(x), rows, cols, an_tensor_data(out));
    } else {
        an_f64 in = {0}, res;
        st = an_f64_read(ctx, x, &in);
        if (st == AN_OK && (st = an_f64_write(ctx, out, &res)) == AN_OK) {
            an_cpu_softmax(in.data, rows, cols, res.data);
            an_f64_commit(out, &res);
        }
        an_f64_free(&in);
    }
    if (st != AN_OK) {
        an_tensor_release(out);
        return NULL;
    }
    an_node *node = an_tape_record(ctx, &an_op_softmax, out, &x, 1);
    if (node) {
        an_tensor *y = an_tensor_detach(ctx, out); /* not out itself: a node must not own its output */
        if (!y) {
            an_tensor_release(out);
            return NULL;
        }
        an_node_save(node, y);
        an_tensor_release(y);
    }
    return out;
}

an_status an_softmax_backward(an_ctx *ctx, an_node *node, an_tensor *grad_out) {
    an_tensor *x = node->inputs[0], *y = node->saved[0];
    int64_t rows, cols;
    softmax_dims(x, &rows, &cols);
    an_tensor *grad = an_op_new_like(ctx, x, x->ndim, x->shape);
    if (!grad) return an_error_status(ctx);
    an_status st;
    if (x->device == AN_CUDA) {
        st = an_cuda_softmax_backward(ctx, x->dtype, an_tensor_data(y), an_tensor_data(grad_out), rows, cols,
                                      an_tensor_data(grad));
    } else {
        an_f64 in[2] = {{0}}, res;
        st = an_f64_read_all(ctx, (an_tensor *[]){y, grad_out}, 2, in);
        if (st == AN_OK && (st = an_f64_write(ctx, grad, &res)) == AN_OK) {
            an_cpu_softmax_backward(in[0].data, in[1].data, rows, cols, res.data);
            an_f64_commit(grad, &res);
        }
        an_f64_free_all(in, 2);
    }
    if (st != AN_OK) {
        an_tensor_release(grad);
        return st;
    }
    return an_node_accumulate(ctx, node, 0, grad);
}
