/* test_elementwise.c — add, sub, mul (with broadcast), scale, silu, swiglu, sum, mean and
 * reshape: forward against direct loops, and a float64 gradient check of every backward rule. */
#include <math.h>
#include <string.h>

#include "support/test_util.h"

typedef an_tensor *(*binary_fn)(an_ctx *, an_tensor *, an_tensor *);

static an_tensor *run_binary(an_ctx *ctx, an_tensor *const *in, void *user) {
    return ((binary_fn)user)(ctx, in[0], in[1]);
}

static const int64_t shapes[][3] = {{1, 1, 1}, {2, 3, 5}, {3, 7, 4}};

static void check_binary(binary_fn fn, int kind, const char *name) {
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        for (int broadcast = 0; broadcast < 3; broadcast++) {
            an_ctx *ctx = test_ctx(17 + s);
            an_tensor *a = test_uniform(ctx, AN_F64, 3, shapes[s], -2, 2, true);
            int nb_dims = broadcast == 0 ? 3 : broadcast == 1 ? 2 : 1;
            an_tensor *b = test_uniform(ctx, AN_F64, nb_dims, shapes[s] + (3 - nb_dims), -2, 2, true);
            an_tensor *out = fn(ctx, a, b);
            ck_assert_msg(out != NULL, "%s: %s", name, an_error_message(ctx));
            int64_t n = an_tensor_numel(a), nb = an_tensor_numel(b);
            double want[256];
            for (int64_t i = 0; i < n; i++) {
                double x = an_tensor_get(a, i), y = an_tensor_get(b, i % nb);
                want[i] = kind == 0 ? x + y : kind == 1 ? x - y : x * y;
            }
            test_assert_close(out, want, 1e-15, 0, name);
            an_tensor_release(out);
            an_tape_clear(ctx);
            test_assert_gradcheck(ctx, run_binary, (an_tensor *[]){a, b}, 2, (void *)fn, name);
            an_tensor_release(a);
            an_tensor_release(b);
            test_ctx_free(ctx);
        }
    }
}

START_TEST(test_add_sub_mul_forward_and_gradients) {
    check_binary(an_add, 0, "add");
    check_binary(an_sub, 1, "sub");
    check_binary(an_mul, 2, "mul");
}
END_TEST

START_TEST(test_broadcast_rejects_mismatched_shape) {
    an_ctx *ctx = test_ctx(1);
    an_tensor *a = test_uniform(ctx, AN_F32, 2, (int64_t[]){3, 4}, -1, 1, false);
    an_tensor *b = test_uniform(ctx, AN_F32, 1, (int64_t[]){3}, -1, 1, false);
    ck_assert_ptr_null(an_add(ctx, a, b));
    ck_assert_int_eq(an_error_status(ctx), AN_ERR_INPUT);
    ck_assert_ptr_nonnull(strstr(an_error_message(ctx), "does not broadcast"));
    an_error_clear(ctx);
    ck_assert_ptr_null(an_add(ctx, a, NULL)); /* a failed earlier op propagates as NULL */
    an_tensor_release(a);
    an_tensor_release(b);
    test_ctx_free(ctx);
}
END_TEST

static an_tensor *run_scale(an_ctx *ctx, an_tensor *const *in, void *user) { return an_scale(ctx, in[0], -1.75); }
static an_tensor *run_silu(an_ctx *ctx, an_tensor *const *in, void *user) { return an_silu(ctx, in[0]); }
static an_tensor *run_swiglu(an_ctx *ctx, an_tensor *const *in, void *user) { return an_swiglu(ctx, in[0], in[1]); }
static an_tensor *run_sum(an_ctx *ctx, an_tensor *const *in, void *user) { return an_sum(ctx, in[0]); }
static an_tensor *run_mean(an_ctx *ctx, an_tensor *const *in, void *user) { return an_mean(ctx, in[0]); }
static an_tensor *run_reshape(an_ctx *ctx, an_tensor *const *in, void *user) {
    /* reshape then a nonlinear op so the gradient really passes through the view */
    an_tensor *r = an_reshape(ctx, in[0], 2, (int64_t[]){5, 6});
    an_tensor *out = an_mul(ctx, r, r);
    an_tensor_release(r);
    return out;
}

START_TEST(test_unary_ops_forward_and_gradients) {
    an_ctx *ctx = test_ctx(5);
    an_tensor *x = test_uniform(ctx, AN_F64, 3, (int64_t[]){2, 3, 5}, -4, 4, true);
    an_tensor *u = test_uniform(ctx, AN_F64, 3, (int64_t[]){2, 3, 5}, -4, 4, true);
    int64_t n = an_tensor_numel(x);
    double want_silu[30], want_swiglu[30], total = 0;
    for (int64_t i = 0; i < n; i++) {
        double g = an_tensor_get(x, i);
        want_silu[i] = g / (1 + exp(-g));
        want_swiglu[i] = want_silu[i] * an_tensor_get(u, i);
        total += g;
    }
    an_no_grad_begin(ctx);
    an_tensor *y = an_silu(ctx, x);
    test_assert_close(y, want_silu, 1e-14, 1e-15, "silu");
    an_tensor_release(y);
    y = an_swiglu(ctx, x, u);
    test_assert_close(y, want_swiglu, 1e-14, 1e-15, "swiglu");
    an_tensor_release(y);
    y = an_sum(ctx, x);
    test_assert_close(y, &total, 1e-14, 1e-14, "sum");
    an_tensor_release(y);
    y = an_mean(ctx, x);
    double mean = total / (double)n;
    test_assert_close(y, &mean, 1e-14, 1e-14, "mean");
    an_tensor_release(y);
    an_no_grad_end(ctx);

    test_assert_gradcheck(ctx, run_scale, &x, 1, NULL, "scale");
    test_assert_gradcheck(ctx, run_silu, &x, 1, NULL, "silu");
    test_assert_gradcheck(ctx, run_swiglu, (an_tensor *[]){x, u}, 2, NULL, "swiglu");
    test_assert_gradcheck(ctx, run_sum, &x, 1, NULL, "sum");
    test_assert_gradcheck(ctx, run_mean, &x, 1, NULL, "mean");
    test_assert_gradcheck(ctx, run_reshape, &x, 1, NULL, "reshape");
    an_tensor_release(x);
    an_tensor_release(u);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_f32_and_bf16_inputs_round_once) {
    an_ctx *ctx = test_ctx(9);
    for (int d = 0; d < 2; d++) {
        an_dtype dtype = d ? AN_BF16 : AN_F32;
        an_tensor *a = test_uniform(ctx, dtype, 1, (int64_t[]){64}, -3, 3, false);
        an_tensor *b = test_uniform(ctx, dtype, 1, (int64_t[]){64}, -3, 3, false);
        an_tensor *out = an_mul(ctx, a, b);
        ck_assert_int_eq(out->dtype, dtype);
        double want[64];
        for (int i = 0; i < 64; i++) {
            /* the product of the stored values, rounded once to the dtype */
            double p = an_tensor_get(a, i) * an_tensor_get(b, i);
            want[i] = dtype == AN_F32 ? (double)(float)p : (double)an_bf16_to_f32(an_f32_to_bf16((float)p));
        }
        test_assert_close(out, want, 0, 0, d ? "bf16 mul" : "f32 mul");
        an_tensor_release(out);
        an_tensor_release(a);
        an_tensor_release(b);
    }
    test_ctx_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("elementwise");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_add_sub_mul_forward_and_gradients);
    tcase_add_test(tc, test_broadcast_rejects_mismatched_shape);
    tcase_add_test(tc, test_unary_ops_forward_and_gradients);
    tcase_add_test(tc, test_f32_and_bf16_inputs_round_once);
    suite_add_tcase(s, tc);
    return test_run(s);
}
