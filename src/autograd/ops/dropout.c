/* dropout.c — inverted dropout as an_mul by a constant mask; the mask is drawn on the host from
 * ctx's RNG (one uniform draw per element, in element order) so every device draws the same. */
#include "autograd/ops.h"

#include "autograd/op_support.h"  /* AN_OP_INPUTS, an_op_check_float_peers */

an_tensor *an_dropout_mask(an_ctx *ctx, an_tensor *x, double p) {
    AN_OP_INPUTS(x);
    if (an_op_check_float_peers(ctx, "dropout", &x, 1)) return NULL;
    AN_CHECK_NULL(ctx, p >= 0 && p < 1, AN_ERR_INPUT, "dropout: probability %g must be in [0, 1)", p);
    an_tensor *mask = an_tensor_new(ctx, x->dtype, AN_CPU, x->ndim, x->shape);
    if (!mask) return NULL;
    double keep = 1.0 / (1.0 - p);
    int64_t n = an_tensor_numel(x);
    for (int64_t i = 0; i < n; i++) an_tensor_set(mask, i, an_rng_uniform(&ctx->rng) < p ? 0.0 : keep);
    if (x->device != AN_CPU) {
        an_tensor *device_mask = an_tensor_to(ctx, mask, x->dtype, x->device);
        an_tensor_release(mask);
        mask = device_mask;
    }
    return mask;
}

an_tensor *an_dropout(an_ctx *ctx, an_tensor *x, double p) {
    an_tensor *mask = an_dropout_mask(ctx, x, p);
    an_tensor *out = mask ? an_mul(ctx, x, mask) : NULL;
    an_tensor_release(mask);
    return out;
}
