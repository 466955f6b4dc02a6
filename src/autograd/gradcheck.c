/* gradcheck.c — central-difference gradient checks in float64 (see gradcheck.h). */
#include "autograd/gradcheck.h"

#include <math.h>
#include <stdlib.h>

#include "autograd/ops.h"   /* an_mul, an_sum for the analytic side */
#include "autograd/tape.h"  /* an_backward, an_no_grad_* */

/* L = sum(out * r) in double without recording; NAN when fn fails. */
static double projected_loss(an_ctx *ctx, an_gradcheck_fn fn, an_tensor *const *inputs, void *user,
                             const an_tensor *r) {
    an_no_grad_begin(ctx);
    an_tensor *out = fn(ctx, inputs, user);
    an_no_grad_end(ctx);
    if (!out) return NAN;
    double total = 0.0;
    int64_t n = an_tensor_numel(out);
    for (int64_t i = 0; i < n; i++) total += an_tensor_get(out, i) * an_tensor_get(r, i);
    an_tensor_release(out);
    return total;
}

an_status an_gradcheck(an_ctx *ctx, an_gradcheck_fn fn, an_tensor *const *inputs, int n_inputs, void *user,
                       const an_gradcheck_opts *opts, an_gradcheck_result *result) {
    an_gradcheck_opts o = opts ? *opts : (an_gradcheck_opts){0};
    if (o.eps <= 0) o.eps = 1e-6;
    if (o.atol <= 0) o.atol = 1e-6;
    if (o.rtol <= 0) o.rtol = 1e-5;
    if (o.max_points <= 0) o.max_points = 2048;
    *result = (an_gradcheck_result){.passed = true, .worst_input = -1, .worst_index = -1};
    for (int i = 0; i < n_inputs; i++) {
        if (!inputs[i]) continue;
        AN_CHECK(ctx, inputs[i]->dtype != AN_F64 || inputs[i]->device == AN_CPU, AN_ERR_INPUT, "gradcheck: bad input");
        AN_CHECK(ctx, !inputs[i]->requires_grad || inputs[i]->dtype == AN_F64, AN_ERR_INPUT,
                 "gradcheck: input %d requires grad but is %s, not f64", i, an_dtype_name(inputs[i]->dtype));
        an_tensor_zero_grad(inputs[i]);
    }

    /* Analytic gradients through the tape. */
    an_tensor *out = fn(ctx, inputs, user);
    AN_CHECK(ctx, out != NULL, an_error_status(ctx) ? an_error_status(ctx) : AN_ERR_INTERNAL, "gradcheck: fn failed");
    AN_CHECK(ctx, out->dtype == AN_F64, AN_ERR_INPUT, "gradcheck: fn returned %s, expected f64",
             an_dtype_name(out->dtype));
    an_tensor *r = an_tensor_new(ctx, AN_F64, AN_CPU, out->ndim, out->shape);
    an_status st = r ? an_tensor_fill_normal(ctx, r, 0.0, 1.0) : an_error_status(ctx);
    an_tensor *weighted = st == AN_OK ? an_mul(ctx, out, r) : NULL;
    an_tensor *loss = an_sum(ctx, weighted);
    an_tensor_release(weighted); /* the tape holds what backward needs */
    an_tensor_release(out);
    if (st == AN_OK) st = loss ? an_backward(ctx, loss) : an_error_status(ctx);
    an_tensor_release(loss);
    an_tape_clear(ctx);

    for (int i = 0; st == AN_OK && i < n_inputs; i++) {
        an_tensor *x = inputs[i];
        if (!x || !x->requires_grad) continue;
        int64_t n = an_tensor_numel(x);
        int64_t points = n < o.max_points ? n : o.max_points;
        double *data = an_tensor_data(x);
        for (int64_t p = 0; p < points; p++) {
            int64_t j = points == n ? p : (int64_t)(an_rng_u64(&ctx->rng) % (uint64_t)n);
            double saved = data[j];
            data[j] = saved + o.eps;
            double up = projected_loss(ctx, fn, inputs, user, r);
            data[j] = saved - o.eps;
            double down = projected_loss(ctx, fn, inputs, user, r);
            data[j] = saved;
            if (isnan(up) || isnan(down)) {
                st = an_error_status(ctx) ? an_error_status(ctx) : AN_ERR_INTERNAL;
                break;
            }
            double numeric = (up - down) / (2.0 * o.eps);
            double analytic = x->grad ? an_tensor_get(x->grad, j) : 0.0;
            double err = fabs(analytic - numeric);
            bool ok = err <= o.atol + o.rtol * fabs(numeric) && !isnan(analytic);
            result->points++;
            if (!ok || isnan(analytic)) result->passed = false;
            if (err > result->max_abs_error || (!ok && result->worst_input < 0) || isnan(analytic)) {
                result->max_abs_error = isnan(analytic) ? INFINITY : err;
                result->worst_input = i;
                result->worst_index = j;
                result->worst_analytic = analytic;
                result->worst_numeric = numeric;
            }
        }
    }
    an_tensor_release(r);
    return st;
}
