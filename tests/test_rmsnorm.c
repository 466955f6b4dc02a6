/* test_rmsnorm.c — an_rmsnorm: forward (and the saved per-row rstd) against float64 loops of
 * x * rsqrt(mean(x^2) + eps) * w, f32 rounding once, float64 gradient checks of x and w at
 * several shapes (odd D, D = 1, one row, 4-D), f32 gradients against f64 ones, and bad inputs. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "support/test_util.h"

/* y and rstd by the definition, in float64, from the stored values of x and w. */
static void reference(const an_tensor *x, const an_tensor *w, double eps, double *y, double *rstd) {
    int64_t D = w->shape[0], rows = an_tensor_numel(x) / D;
    for (int64_t r = 0; r < rows; r++) {
        double ms = 0;
        for (int64_t j = 0; j < D; j++) ms += an_tensor_get(x, r * D + j) * an_tensor_get(x, r * D + j);
        ms /= (double)D;
        rstd[r] = 1.0 / sqrt(ms + eps);
        for (int64_t j = 0; j < D; j++) y[r * D + j] = an_tensor_get(x, r * D + j) * rstd[r] * an_tensor_get(w, j);
    }
}

static const struct {
    int ndim;
    int64_t shape[4];
    double eps;
} shapes[] = {
    {2, {3, 7}, 1e-6},        /* odd D */
    {3, {2, 3, 5}, 1e-5},
    {1, {13}, 1e-6},          /* one row, prime D */
    {2, {1, 1}, 1e-1},        /* D = 1: y ~ sign(x) * w, eps keeps it smooth */
    {4, {2, 1, 2, 11}, 1e-6}, /* 4-D */
};
#define N_SHAPES (sizeof shapes / sizeof *shapes)

START_TEST(test_rmsnorm_forward_matches_float64_loops_and_saves_rstd) {
    an_ctx *ctx = test_ctx(21);
    for (size_t s = 0; s < N_SHAPES; s++) {
        for (int d = 0; d < 2; d++) {
            an_dtype dtype = d ? AN_F32 : AN_F64;
            int64_t D = shapes[s].shape[shapes[s].ndim - 1];
            an_tensor *x = test_uniform(ctx, dtype, shapes[s].ndim, shapes[s].shape, -2, 2, true);
            an_tensor *w = test_uniform(ctx, dtype, 1, &D, 0.5, 1.5, true);
            int64_t n = an_tensor_numel(x), rows = n / D;
            double *want = malloc((size_t)n * sizeof *want), *rstd = malloc((size_t)rows * sizeof *rstd);
            reference(x, w, shapes[s].eps, want, rstd);
            an_tensor *y = an_rmsnorm(ctx, x, w, shapes[s].eps);
            ck_assert_msg(y != NULL, "%s", an_error_message(ctx));
            ck_assert(an_tensor_same_shape(y, x));
            ck_assert_int_eq(y->dtype, dtype);
            /* f64: the same math; f32: the float64 result rounded once */
            test_assert_close(y, want, d ? 6e-8 : 1e-14, d ? 1e-12 : 1e-15, "rmsnorm forward");
            ck_assert_ptr_nonnull(y->grad_fn);
            ck_assert_int_eq(y->grad_fn->n_saved, 1);
            an_tensor *saved = y->grad_fn->saved[0];
            ck_assert_int_eq(an_tensor_numel(saved), rows);
            ck_assert_int_eq(saved->dtype, dtype); /* fp32 or better statistics */
            test_assert_close(saved, rstd, d ? 6e-8 : 1e-14, 0, "rmsnorm saved rstd");
            an_tensor_release(y);
            an_tape_clear(ctx);
            free(want);
            free(rstd);
            an_tensor_release(x);
            an_tensor_release(w);
        }
    }
    test_ctx_free(ctx);
}
END_TEST

static an_tensor *run_rmsnorm(an_ctx *ctx, an_tensor *const *in, void *user) {
    return an_rmsnorm(ctx, in[0], in[1], *(const double *)user);
}

START_TEST(test_rmsnorm_gradcheck_x_and_w) {
    for (size_t s = 0; s < N_SHAPES; s++) {
        /* both inputs, then each alone (the other gets no gradient and must not break backward) */
        for (int which = 0; which < 3; which++) {
            an_ctx *ctx = test_ctx(200 + s);
            int64_t D = shapes[s].shape[shapes[s].ndim - 1];
            an_tensor *x = test_uniform(ctx, AN_F64, shapes[s].ndim, shapes[s].shape, -2, 2, which != 2);
            an_tensor *w = test_uniform(ctx, AN_F64, 1, &D, -1.5, 1.5, which != 1);
            double eps = shapes[s].eps;
            test_assert_gradcheck(ctx, run_rmsnorm, (an_tensor *[]){x, w}, 2, &eps, "rmsnorm");
            if (which == 1) ck_assert_ptr_null(w->grad);
            if (which == 2) ck_assert_ptr_null(x->grad);
            an_tensor_release(x);
            an_tensor_release(w);
            test_ctx_free(ctx);
        }
    }
}
END_TEST

/* Gradients of sum(rmsnorm(x, w) * r) for x, w of `dtype` holding the same values as x64, w64. */
static void gradients(an_ctx *ctx, an_dtype dtype, const an_tensor *x64, const an_tensor *w64, const an_tensor *r64,
                      an_tensor **gx, an_tensor **gw) {
    an_tensor *x = an_tensor_to(ctx, x64, dtype, AN_CPU), *w = an_tensor_to(ctx, w64, dtype, AN_CPU);
    an_tensor *r = an_tensor_to(ctx, r64, dtype, AN_CPU);
    an_tensor_set_requires_grad(x, true);
    an_tensor_set_requires_grad(w, true);
    an_tensor *y = an_rmsnorm(ctx, x, w, 1e-6);
    an_tensor *yr = an_mul(ctx, y, r);
    an_tensor *loss = an_sum(ctx, yr);
    ck_assert_msg(loss != NULL, "%s", an_error_message(ctx));
    ck_assert_int_eq(an_backward(ctx, loss), AN_OK);
    *gx = an_tensor_retain(x->grad);
    *gw = an_tensor_retain(w->grad);
    an_tensor_release(loss);
    an_tensor_release(yr);
    an_tensor_release(y);
    an_tensor_release(r);
    an_tensor_release(w);
    an_tensor_release(x);
}

START_TEST(test_rmsnorm_f32_gradients_match_f64) {
    an_ctx *ctx = test_ctx(22);
    /* values exactly representable in f32, so both runs see the same inputs */
    an_tensor *x = test_uniform(ctx, AN_F32, 3, (int64_t[]){2, 3, 9}, -2, 2, false);
    an_tensor *w = test_uniform(ctx, AN_F32, 1, (int64_t[]){9}, 0.5, 1.5, false);
    an_tensor *r = test_uniform(ctx, AN_F32, 3, (int64_t[]){2, 3, 9}, -1, 1, false);
    an_tensor *x64 = an_tensor_to(ctx, x, AN_F64, AN_CPU), *w64 = an_tensor_to(ctx, w, AN_F64, AN_CPU);
    an_tensor *r64 = an_tensor_to(ctx, r, AN_F64, AN_CPU);
    an_tensor *gx32, *gw32, *gx64, *gw64;
    gradients(ctx, AN_F32, x64, w64, r64, &gx32, &gw32);
    gradients(ctx, AN_F64, x64, w64, r64, &gx64, &gw64);
    ck_assert_int_eq(gx32->dtype, AN_F32);
    test_assert_tensors_close(gx32, gx64, 1e-5, 1e-6, "rmsnorm f32 grad x");
    test_assert_tensors_close(gw32, gw64, 1e-5, 1e-6, "rmsnorm f32 grad w");
    an_tensor *all[] = {x, w, r, x64, w64, r64, gx32, gw32, gx64, gw64};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) an_tensor_release(all[i]);
    test_ctx_free(ctx);
}
END_TEST

/* y + sum of an_add_rmsnorm, so both outputs carry gradient. */
static an_tensor *run_add_rmsnorm(an_ctx *ctx, an_tensor *const *in, void *user) {
    an_tensor *sum = NULL, *y = an_add_rmsnorm(ctx, in[0], in[1], in[2], *(const double *)user, &sum);
    an_tensor *out = y ? an_add(ctx, y, sum) : NULL;
    an_tensor_release(y), an_tensor_release(sum);
    return out;
}

/* an_add_rmsnorm records the graph of an_add then an_rmsnorm: the same values, gradients by finite
 * differences for x, residual and w, and its input errors. */
START_TEST(test_add_rmsnorm_is_add_then_rmsnorm) {
    for (size_t s = 0; s < N_SHAPES; s++) {
        an_ctx *ctx = test_ctx(300 + s);
        int64_t D = shapes[s].shape[shapes[s].ndim - 1];
        an_tensor *x = test_uniform(ctx, AN_F64, shapes[s].ndim, shapes[s].shape, -2, 2, true);
        an_tensor *r = test_uniform(ctx, AN_F64, shapes[s].ndim, shapes[s].shape, -2, 2, true);
        an_tensor *w = test_uniform(ctx, AN_F64, 1, &D, -1.5, 1.5, true);
        double eps = shapes[s].eps;
        an_no_grad_begin(ctx);
        an_tensor *sum = NULL, *y = an_add_rmsnorm(ctx, x, r, w, eps, &sum);
        an_tensor *want_sum = an_add(ctx, x, r), *want_y = an_rmsnorm(ctx, want_sum, w, eps);
        an_no_grad_end(ctx);
        ck_assert_msg(y && sum, "%s", an_error_message(ctx));
        ck_assert_mem_eq(an_tensor_data(sum), an_tensor_data(want_sum), (size_t)an_tensor_nbytes(sum));
        ck_assert_mem_eq(an_tensor_data(y), an_tensor_data(want_y), (size_t)an_tensor_nbytes(y));
        test_assert_gradcheck(ctx, run_add_rmsnorm, (an_tensor *[]){x, r, w}, 3, &eps, "add_rmsnorm");
        an_tensor *all[] = {x, r, w, sum, y, want_sum, want_y};
        for (size_t i = 0; i < sizeof all / sizeof *all; i++) an_tensor_release(all[i]);
        test_ctx_free(ctx);
    }
    an_ctx *ctx = test_ctx(399);
    an_tensor *x = test_uniform(ctx, AN_F32, 2, (int64_t[]){3, 8}, -1, 1, false);
    an_tensor *r8 = test_uniform(ctx, AN_F32, 1, (int64_t[]){8}, -1, 1, false);
    an_tensor *w = test_uniform(ctx, AN_F32, 1, (int64_t[]){8}, -1, 1, false);
    an_tensor *sum = x; /* must be overwritten with NULL on error */
    ck_assert_ptr_null(an_add_rmsnorm(ctx, x, r8, w, 1e-6, &sum));
    ck_assert_ptr_null(sum);
    ck_assert_int_eq(an_error_status(ctx), AN_ERR_INPUT);
    ck_assert_ptr_nonnull(strstr(an_error_message(ctx), "must have the shape of x"));
    an_error_clear(ctx);
    ck_assert_ptr_null(an_add_rmsnorm(ctx, x, x, w, 1e-6, NULL));
    ck_assert_ptr_nonnull(strstr(an_error_message(ctx), "no place for the sum"));
    an_error_clear(ctx);
    ck_assert_int_eq(an_tape_length(ctx), 0);
    an_tensor_release(x), an_tensor_release(r8), an_tensor_release(w);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_rmsnorm_rejects_bad_inputs) {
    an_ctx *ctx = test_ctx(23);
    an_tensor *x = test_uniform(ctx, AN_F32, 2, (int64_t[]){3, 8}, -1, 1, false);
    an_tensor *w7 = test_uniform(ctx, AN_F32, 1, (int64_t[]){7}, -1, 1, false);
    an_tensor *w8 = test_uniform(ctx, AN_F32, 1, (int64_t[]){8}, -1, 1, false);
    an_tensor *w64 = test_uniform(ctx, AN_F64, 1, (int64_t[]){8}, -1, 1, false);
    ck_assert_ptr_null(an_rmsnorm(ctx, x, w7, 1e-6));
    ck_assert_int_eq(an_error_status(ctx), AN_ERR_INPUT);
    ck_assert_ptr_nonnull(strstr(an_error_message(ctx), "must be (D)"));
    an_error_clear(ctx);
    ck_assert_ptr_null(an_rmsnorm(ctx, x, w8, -1.0));
    ck_assert_ptr_nonnull(strstr(an_error_message(ctx), "eps"));
    an_error_clear(ctx);
    ck_assert_ptr_null(an_rmsnorm(ctx, x, w64, 1e-6)); /* mixed dtypes */
    ck_assert_int_eq(an_error_status(ctx), AN_ERR_INPUT);
    an_error_clear(ctx);
    ck_assert_ptr_null(an_rmsnorm(ctx, NULL, w8, 1e-6));
    an_tensor_release(x);
    an_tensor_release(w7);
    an_tensor_release(w8);
    an_tensor_release(w64);
    test_ctx_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("rmsnorm");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_rmsnorm_forward_matches_float64_loops_and_saves_rstd);
    tcase_add_test(tc, test_rmsnorm_gradcheck_x_and_w);
    tcase_add_test(tc, test_rmsnorm_f32_gradients_match_f64);
    tcase_add_test(tc, test_rmsnorm_rejects_bad_inputs);
    tcase_add_test(tc, test_add_rmsnorm_is_add_then_rmsnorm);
    suite_add_tcase(s, tc);
    return test_run(s);
}
