/* reshape.c — a differentiable view with another shape of the same numel; storage is shared,
 * and the gradient is the incoming one viewed back in the input's shape. */
#include "autograd/ops.h"

#include "autograd/op_support.h"  /* AN_OP_INPUTS, an_op_reshape */

an_tensor *an_reshape(an_ctx *ctx, an_tensor *x, int ndim, const int64_t *shape) {
    AN_OP_INPUTS(x);
    an_tensor *out = an_tensor_view(ctx, x, ndim, shape);
    if (out) an_node_input_routing_only(an_tape_record(ctx, &an_op_reshape, out, &x, 1), 0);
    return out;
}

an_status an_reshape_backward(an_ctx *ctx, an_node *node, an_tensor *grad_out) {
    return an_node_pass_grad(ctx, node, 0, grad_out); /* viewed in the input's shape, no copy */
}
