/* op_support.c — shared input checks for the op files. */
#include "autograd/op_support.h"

#include <string.h>

an_status an_op_check_float_peers(an_ctx *ctx, const char *op, an_tensor *const *ts, int n) {
    const an_tensor *first = NULL;
    for (int i = 0; i < n; i++) {
        const an_tensor *t = ts[i];
        if (!t) continue;
        AN_CHECK(ctx, an_dtype_is_float(t->dtype), AN_ERR_INPUT, "%s: operand %d is %s, expected a float dtype", op,
                 i, an_dtype_name(t->dtype));
        if (!first) {
            first = t;
            continue;
        }
        AN_CHECK(ctx, t->dtype == first->dtype && t->device == first->device, AN_ERR_INPUT,
                 "%s: operand %d is %s on %s but operand 0 is %s on %s", op, i, an_dtype_name(t->dtype),
                 t->device == AN_CPU ? "cpu" : "cuda", an_dtype_name(first->dtype),
                 first->device == AN_CPU ? "cpu" : "cuda");
    }
    return AN_OK;
}

an_status an_op_check_residual(an_ctx *ctx, const char *op, const an_tensor *residual, int ndim, const int64_t *shape) {
    if (!residual) return AN_OK;
    char d[96];
    bool same = residual->ndim == ndim && !memcmp(residual->shape, shape, (size_t)ndim * sizeof *shape);
    AN_CHECK(ctx, same, AN_ERR_INPUT, "%s: residual %s does not have the output's shape", op,
             an_tensor_describe(residual, d, sizeof d));
    return AN_OK;
}

an_status an_op_check_indices(an_ctx *ctx, const char *op, const char *what, const an_tensor *ids,
                              const an_tensor *like) {
    AN_CHECK(ctx, ids->dtype == AN_I32 || ids->dtype == AN_I64, AN_ERR_INPUT, "%s: %s must be i32 or i64, got %s", op,
             what, an_dtype_name(ids->dtype));
    AN_CHECK(ctx, ids->device == like->device, AN_ERR_INPUT, "%s: %s must be on the same device as the data", op,
             what);
    return AN_OK;
}

an_status an_op_no_kernel(an_ctx *ctx, const char *op, const an_tensor *t) {
    AN_CHECK(ctx, 0, AN_ERR_INPUT, "%s has no %s kernel yet for %s", op, t->device == AN_CPU ? "CPU" : "CUDA",
             an_dtype_name(t->dtype));
}

an_tensor *an_op_new_like(an_ctx *ctx, const an_tensor *t, int ndim, const int64_t *shape) {
    return an_tensor_new(ctx, t->dtype, t->device, ndim, shape);
}
