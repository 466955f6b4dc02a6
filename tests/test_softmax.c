/* test_softmax.c — softmax over the last dim: forward against a float64 loop, shift invariance with
 * huge logits, f32 rounding, float64 gradient checks at several shapes, and rejected inputs. */
#include <math.h>
#include <string.h>

#include "support/test_util.h"

/* want = softmax of each row of x (rows, cols), written out plainly in float64. */
static void reference_softmax(const an_tensor *x, double *want) {
    int64_t cols = x->shape[x->ndim - 1], rows = an_tensor_numel(x) / cols;
    for (int64_t i = 0; i < rows; i++) {
        double max = -INFINITY, total = 0;
        for (int64_t j = 0; j < cols; j++) max = fmax(max, an_tensor_get(x, i * cols + j));
        for (int64_t j = 0; j < cols; j++) total += exp(an_tensor_get(x, i * cols + j) - max);
        for (int64_t j = 0; j < cols; j++) want[i * cols + j] = exp(an_tensor_get(x, i * cols + j) - max) / total;
    }
}

static an_tensor *run_softmax(an_ctx *ctx, an_tensor *const *in, void *user) { return an_softmax(ctx, in[0]); }

static const struct {
    int ndim;
    int64_t shape[4];
} shapes[] = {{1, {2}}, {2, {1, 7}}, {2, {5, 1}}, {2, {3, 33}}, {3, {2, 3, 5}}, {4, {2, 1, 3, 4}}};

START_TEST(test_softmax_matches_reference_and_gradcheck_at_several_shapes) {
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        an_ctx *ctx = test_ctx(100 + s);
        an_tensor *x = test_uniform(ctx, AN_F64, shapes[s].ndim, shapes[s].shape, -3, 3, true);
        int64_t n = an_tensor_numel(x), cols = x->shape[x->ndim - 1];
        double want[256];
        reference_softmax(x, want);
        an_tensor *y = an_softmax(ctx, x);
        ck_assert_msg(y != NULL, "%s", an_error_message(ctx));
        ck_assert_int_eq(y->ndim, x->ndim);
        test_assert_close(y, want, 1e-14, 1e-15, "softmax forward");
        for (int64_t i = 0; i < n / cols; i++) { /* rows sum to one */
            double total = 0;
            for (int64_t j = 0; j < cols; j++) total += an_tensor_get(y, i * cols + j);
            ck_assert_double_eq_tol(total, 1.0, 1e-14);
        }
        an_tensor_release(y);
        an_tape_clear(ctx);
        test_assert_gradcheck(ctx, run_softmax, &x, 1, NULL, "softmax");
        an_tensor_release(x);
        test_ctx_free(ctx);
    }
}
END_TEST

START_TEST(test_softmax_of_huge_logits_is_finite_and_shift_invariant) {
    an_ctx *ctx = test_ctx(3);
    an_tensor *x = test_uniform(ctx, AN_F64, 2, (int64_t[]){4, 9}, -5, 5, false);
    double want[36];
    reference_softmax(x, want);
    for (int sign = -1; sign <= 1; sign += 2) {
        an_tensor *shifted = test_uniform(ctx, AN_F64, 2, (int64_t[]){4, 9}, 0, 1, false);
        for (int i = 0; i < 36; i++) an_tensor_set(shifted, i, an_tensor_get(x, i) + sign * 1000.0);
        an_tensor *y = an_softmax(ctx, shifted);
        test_assert_close(y, want, 1e-9, 1e-12, sign > 0 ? "softmax(x + 1000)" : "softmax(x - 1000)");
        an_tensor_release(y);
        an_tensor_release(shifted);
    }
    an_tensor_release(x);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_softmax_f32_rounds_once) {
    an_ctx *ctx = test_ctx(4);
    an_tensor *x = test_uniform(ctx, AN_F32, 2, (int64_t[]){6, 11}, -6, 6, true);
    double want[66];
    reference_softmax(x, want); /* from the stored f32 values, in float64 */
    for (int i = 0; i < 66; i++) want[i] = (double)(float)want[i];
    an_tensor *y = an_softmax(ctx, x);
    ck_assert_int_eq(y->dtype, AN_F32);
    test_assert_close(y, want, 1e-7, 0, "f32 softmax");
    /* backward in f32 too: d sum(softmax * r) against the float64 formula y * (r - sum(r * y)) */
    an_tensor *r = test_uniform(ctx, AN_F32, 2, (int64_t[]){6, 11}, -1, 1, false);
    an_tensor *yr = an_mul(ctx, y, r);
    an_tensor *loss = an_sum(ctx, yr);
    ck_assert_int_eq(an_backward(ctx, loss), AN_OK);
    double grad[66];
    for (int i = 0; i < 6; i++) {
        double dot = 0;
        for (int j = 0; j < 11; j++) dot += an_tensor_get(r, i * 11 + j) * an_tensor_get(y, i * 11 + j);
        for (int j = 0; j < 11; j++)
            grad[i * 11 + j] = an_tensor_get(y, i * 11 + j) * (an_tensor_get(r, i * 11 + j) - dot);
    }
    test_assert_close(x->grad, grad, 1e-5, 1e-7, "f32 softmax backward");
    an_tensor_release(loss), an_tensor_release(yr), an_tensor_release(r), an_tensor_release(y), an_tensor_release(x);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_softmax_rejects_integer_and_scalar_inputs) {
    an_ctx *ctx = test_ctx(5);
    an_tensor *ids = test_ids(ctx, AN_I64, 1, (int64_t[]){4}, 3);
    ck_assert_ptr_null(an_softmax(ctx, ids));
    ck_assert_int_eq(an_error_status(ctx), AN_ERR_INPUT);
    an_error_clear(ctx);
    an_tensor *scalar = an_tensor_scalar(ctx, AN_F32, AN_CPU, 2.0);
    ck_assert_ptr_null(an_softmax(ctx, scalar));
    ck_assert_int_eq(an_error_status(ctx), AN_ERR_INPUT);
    ck_assert_ptr_nonnull(strstr(an_error_message(ctx), "at least one dim"));
    an_error_clear(ctx);
    ck_assert_ptr_null(an_softmax(ctx, NULL));
    ck_assert_int_eq(an_error_status(ctx), AN_OK); /* NULL in, NULL out, nothing new recorded */
    an_tensor_release(ids);
    an_tensor_release(scalar);
    test_ctx_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("softmax");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_softmax_matches_reference_and_gradcheck_at_several_shapes);
    tcase_add_test(tc, test_softmax_of_huge_logits_is_finite_and_shift_invariant);
    tcase_add_test(tc, test_softmax_f32_rounds_once);
    tcase_add_test(tc, test_softmax_rejects_integer_and_scalar_inputs);
    suite_add_tcase(s, tc);
    return test_run(s);
}
