/* test_matmul.c — matmul (batched, every transpose combination, shared right operand),
 * linear (with and without bias, and with a residual) and the gated MLP (swiglu_linear, swiglu_mlp):
 * forward against naive float64 loops, f32 through OpenBLAS sgemm, bf16 through the widened path,
 * and float64 gradient checks of every operand. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "support/test_util.h"

typedef struct {
    bool ta, tb;
} transposes;

static an_tensor *run_matmul(an_ctx *ctx, an_tensor *const *in, void *user) {
    transposes *t = user;
    return an_matmul(ctx, in[0], in[1], t->ta, t->tb);
}

/* Naive C[b][i][j] = sum_k op(A)[b][i][k] op(B)[b][k][j]. */
static void naive(const an_tensor *a, const an_tensor *b, bool ta, bool tb, int64_t batch, int64_t m, int64_t n,
                  int64_t k, bool shared, double *c) {
    for (int64_t p = 0; p < batch; p++)
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++) {
                double acc = 0;
                for (int64_t q = 0; q < k; q++) {
                    double x = an_tensor_get(a, p * m * k + (ta ? q * m + i : i * k + q));
                    double y = an_tensor_get(b, (shared ? 0 : p * k * n) + (tb ? j * k + q : q * n + j));
                    acc += x * y;
                }
                c[(p * m + i) * n + j] = acc;
            }
}

START_TEST(test_matmul_all_layouts) {
    const int64_t dims[][4] = {{1, 1, 1, 1}, {2, 3, 5, 4}, {3, 7, 2, 5}, {1, 4, 1, 9}};
    for (size_t d = 0; d < sizeof dims / sizeof *dims; d++)
        for (int layout = 0; layout < 4; layout++)
            for (int shared = 0; shared < 2; shared++) {
                int64_t batch = dims[d][0], m = dims[d][1], n = dims[d][2], k = dims[d][3];
                transposes t = {layout & 1, layout & 2};
                an_ctx *ctx = test_ctx(100 + d);
                an_tensor *a = test_uniform(ctx, AN_F64, 3, t.ta ? (int64_t[]){batch, k, m} : (int64_t[]){batch, m, k},
                                            -1, 1, true);
                int64_t bshape[3] = {batch, t.tb ? n : k, t.tb ? k : n};
                an_tensor *b = test_uniform(ctx, AN_F64, shared ? 2 : 3, shared ? bshape + 1 : bshape, -1, 1, true);
                double *want = malloc(sizeof(double) * (size_t)(batch * m * n));
                naive(a, b, t.ta, t.tb, batch, m, n, k, shared, want);
                an_tensor *c = an_matmul(ctx, a, b, t.ta, t.tb);
                ck_assert_msg(c != NULL, "%s", an_error_message(ctx));
                ck_assert_int_eq(c->shape[1], m);
                ck_assert_int_eq(c->shape[2], n);
                test_assert_close(c, want, 1e-13, 1e-14, "matmul forward");
                an_tensor_release(c);
                an_tape_clear(ctx);
                test_assert_gradcheck(ctx, run_matmul, (an_tensor *[]){a, b}, 2, &t, "matmul");

                /* f32 goes through sgemm; compare with the f64 result at f32 precision. */
                an_tensor *a32 = an_tensor_to(ctx, a, AN_F32, AN_CPU), *b32 = an_tensor_to(ctx, b, AN_F32, AN_CPU);
                an_tensor *c32 = an_matmul(ctx, a32, b32, t.ta, t.tb);
                test_assert_close(c32, want, 1e-5, 1e-6, "matmul f32");
                an_tensor_release(a32), an_tensor_release(b32), an_tensor_release(c32);
                free(want);
                an_tensor_release(a);
                an_tensor_release(b);
                test_ctx_free(ctx);
            }
}
END_TEST

static an_tensor *run_linear(an_ctx *ctx, an_tensor *const *in, void *user) {
    return an_linear(ctx, in[0], in[1], user ? in[2] : NULL);
}

START_TEST(test_linear_with_and_without_bias) {
    const int64_t shapes[][4] = {{1, 1, 1, 1}, {2, 3, 5, 7}, {4, 1, 6, 3}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int with_bias = 0; with_bias < 2; with_bias++) {
            int64_t b = shapes[s][0], t = shapes[s][1], in = shapes[s][2], out = shapes[s][3];
            an_ctx *ctx = test_ctx(200 + s);
            an_tensor *x = test_uniform(ctx, AN_F64, 3, (int64_t[]){b, t, in}, -1, 1, true);
            an_tensor *w = test_uniform(ctx, AN_F64, 2, (int64_t[]){out, in}, -1, 1, true);
            an_tensor *bias = test_uniform(ctx, AN_F64, 1, (int64_t[]){out}, -1, 1, true);
            an_tensor *y = an_linear(ctx, x, w, with_bias ? bias : NULL);
            ck_assert_msg(y != NULL, "%s", an_error_message(ctx));
            double *want = malloc(sizeof(double) * (size_t)(b * t * out));
            for (int64_t r = 0; r < b * t; r++)
                for (int64_t o = 0; o < out; o++) {
                    double acc = with_bias ? an_tensor_get(bias, o) : 0;
                    for (int64_t i = 0; i < in; i++) acc += an_tensor_get(x, r * in + i) * an_tensor_get(w, o * in + i);
                    want[r * out + o] = acc;
                }
            test_assert_close(y, want, 1e-13, 1e-14, "linear forward");
            an_tensor_release(y);
            an_tape_clear(ctx);
            test_assert_gradcheck(ctx, run_linear, (an_tensor *[]){x, w, bias}, with_bias ? 3 : 2,
                                  with_bias ? (void *)1 : NULL, "linear");

            /* bf16 on the CPU: widened, multiplied in f64, rounded once. */
            an_tensor *xh = an_tensor_to(ctx, x, AN_BF16, AN_CPU), *wh = an_tensor_to(ctx, w, AN_BF16, AN_CPU);
            an_tensor *bh = an_tensor_to(ctx, bias, AN_BF16, AN_CPU);
            an_tensor *yh = an_linear(ctx, xh, wh, with_bias ? bh : NULL);
            test_assert_close(yh, want, 2e-2, 2e-2, "linear bf16");
            an_tensor_release(xh), an_tensor_release(wh), an_tensor_release(bh), an_tensor_release(yh);
            free(want);
            an_tensor_release(x), an_tensor_release(w), an_tensor_release(bias);
            test_ctx_free(ctx);
        }
}
END_TEST

static an_tensor *run_linear_residual(an_ctx *ctx, an_tensor *const *in, void *user) {
    (void)user;
    return an_linear_residual(ctx, in[0], in[1], in[2], in[3]);
}

/* residual + x w^T + bias: forward against float64 loops, gradcheck of all four inputs, bf16 rounded
 * once (the sum of the product, bias and residual, not of a rounded product), shape errors. */
START_TEST(test_linear_residual) {
    const int64_t b = 2, t = 3, in = 5, out = 7;
    an_ctx *ctx = test_ctx(300);
    an_tensor *x = test_uniform(ctx, AN_F64, 3, (int64_t[]){b, t, in}, -1, 1, true);
    an_tensor *w = test_uniform(ctx, AN_F64, 2, (int64_t[]){out, in}, -1, 1, true);
    an_tensor *bias = test_uniform(ctx, AN_F64, 1, (int64_t[]){out}, -1, 1, true);
    an_tensor *res = test_uniform(ctx, AN_F64, 3, (int64_t[]){b, t, out}, -300, 300, true);
    an_tensor *y = an_linear_residual(ctx, x, w, bias, res);
    ck_assert_msg(y != NULL, "%s", an_error_message(ctx));
    double want[2 * 3 * 7];
    for (int64_t r = 0; r < b * t; r++)
        for (int64_t o = 0; o < out; o++) {
            double acc = an_tensor_get(bias, o) + an_tensor_get(res, r * out + o);
            for (int64_t i = 0; i < in; i++) acc += an_tensor_get(x, r * in + i) * an_tensor_get(w, o * in + i);
            want[r * out + o] = acc;
        }
    test_assert_close(y, want, 1e-13, 1e-14, "linear_residual forward");
    an_tensor_release(y);
    an_tape_clear(ctx);
    test_assert_gradcheck(ctx, run_linear_residual, (an_tensor *[]){x, w, bias, res}, 4, NULL, "linear_residual");

    /* bf16: one rounding of the whole sum; the residual's large values make a rounded product show */
    an_tensor *xh = an_tensor_to(ctx, x, AN_BF16, AN_CPU), *wh = an_tensor_to(ctx, w, AN_BF16, AN_CPU);
    an_tensor *bh = an_tensor_to(ctx, bias, AN_BF16, AN_CPU), *rh = an_tensor_to(ctx, res, AN_BF16, AN_CPU);
    an_tensor *yh = an_linear_residual(ctx, xh, wh, bh, rh);
    ck_assert_msg(yh != NULL, "%s", an_error_message(ctx));
    for (int64_t r = 0; r < b * t; r++)
        for (int64_t o = 0; o < out; o++) {
            double acc = an_tensor_get(bh, o) + an_tensor_get(rh, r * out + o);
            for (int64_t i = 0; i < in; i++) acc += an_tensor_get(xh, r * in + i) * an_tensor_get(wh, o * in + i);
            double half_ulp = ldexp(1.0, (int)floor(log2(fabs(acc))) - 8); /* bf16 keeps 8 significant bits */
            ck_assert_double_le(fabs(an_tensor_get(yh, r * out + o) - acc), half_ulp * (1 + 1e-9));
        }
    an_tensor_release(yh);

    /* the residual must have the output's shape */
    an_tensor *bad = test_uniform(ctx, AN_F64, 3, (int64_t[]){b, t, out + 1}, -1, 1, false);
    ck_assert_ptr_null(an_linear_residual(ctx, x, w, bias, bad));
    ck_assert_int_eq(an_error_status(ctx), AN_ERR_INPUT);
    ck_assert_ptr_nonnull(strstr(an_error_message(ctx), "residual"));
    an_error_clear(ctx);
    an_tensor_release(xh), an_tensor_release(wh), an_tensor_release(bh), an_tensor_release(rh), an_tensor_release(bad);
    an_tensor_release(x), an_tensor_release(w), an_tensor_release(bias), an_tensor_release(res);
    test_ctx_free(ctx);
}
END_TEST

static an_tensor *run_swiglu_mlp(an_ctx *ctx, an_tensor *const *in, void *user) {
    return an_swiglu_mlp(ctx, in[0], in[1], in[2], in[3], user ? in[4] : NULL);
}
static an_tensor *run_swiglu_linear(an_ctx *ctx, an_tensor *const *in, void *user) {
    (void)user;
    return an_swiglu_linear(ctx, in[0], in[1], in[2], in[3]);
}

/* The MLP composed of the ops it replaces: residual + swiglu(x wg^T, x wu^T) wd^T. */
static an_tensor *composed_mlp(an_ctx *ctx, an_tensor *x, an_tensor *wg, an_tensor *wu, an_tensor *wd, an_tensor *res) {
    an_tensor *g = an_linear(ctx, x, wg, NULL), *u = an_linear(ctx, x, wu, NULL);
    an_tensor *a = an_swiglu(ctx, g, u);
    an_tensor *y = res ? an_linear_residual(ctx, a, wd, NULL, res) : an_linear(ctx, a, wd, NULL);
    an_tensor_release(g), an_tensor_release(u), an_tensor_release(a);
    return y;
}

/* swiglu_mlp and swiglu_linear: forward against float64 loops, gradcheck of every input with and
 * without the residual; in bf16 the output and every gradient bit for bit those of the ops they
 * replace (the same rounding points: gate, up, act, d act); shape errors name the operands. */
START_TEST(test_swiglu_mlp_and_swiglu_linear) {
    const int64_t b = 2, t = 3, in = 5, inter = 6, out = 4;
    an_ctx *ctx = test_ctx(400);
    an_tensor *x = test_uniform(ctx, AN_F64, 3, (int64_t[]){b, t, in}, -1, 1, true);
    an_tensor *wg = test_uniform(ctx, AN_F64, 2, (int64_t[]){inter, in}, -1, 1, true);
    an_tensor *wu = test_uniform(ctx, AN_F64, 2, (int64_t[]){inter, in}, -1, 1, true);
    an_tensor *wd = test_uniform(ctx, AN_F64, 2, (int64_t[]){out, inter}, -1, 1, true);
    an_tensor *res = test_uniform(ctx, AN_F64, 3, (int64_t[]){b, t, out}, -1, 1, true);
    an_tensor *y = an_swiglu_mlp(ctx, x, wg, wu, wd, res);
    ck_assert_msg(y != NULL, "%s", an_error_message(ctx));
    double want[2 * 3 * 4];
    for (int64_t r = 0; r < b * t; r++)
        for (int64_t o = 0; o < out; o++) {
            double acc = an_tensor_get(res, r * out + o);
            for (int64_t j = 0; j < inter; j++) {
                double g = 0, u = 0;
                for (int64_t i = 0; i < in; i++) {
                    g += an_tensor_get(x, r * in + i) * an_tensor_get(wg, j * in + i);
                    u += an_tensor_get(x, r * in + i) * an_tensor_get(wu, j * in + i);
                }
                acc += g / (1 + exp(-g)) * u * an_tensor_get(wd, o * inter + j);
            }
            want[r * out + o] = acc;
        }
    test_assert_close(y, want, 1e-13, 1e-14, "swiglu_mlp forward");
    an_tensor_release(y);
    an_tape_clear(ctx);
    test_assert_gradcheck(ctx, run_swiglu_mlp, (an_tensor *[]){x, wg, wu, wd, res}, 5, (void *)1, "swiglu_mlp");
    test_assert_gradcheck(ctx, run_swiglu_mlp, (an_tensor *[]){x, wg, wu, wd}, 4, NULL, "swiglu_mlp, no residual");
    an_tensor *g = test_uniform(ctx, AN_F64, 3, (int64_t[]){b, t, inter}, -3, 3, true);
    an_tensor *u = test_uniform(ctx, AN_F64, 3, (int64_t[]){b, t, inter}, -2, 2, true);
    test_assert_gradcheck(ctx, run_swiglu_linear, (an_tensor *[]){g, u, wd, res}, 4, NULL, "swiglu_linear");

    /* bf16: the ops it replaces, bit for bit, forward and every gradient */
    an_tensor *h[5], *grads[2][5];
    an_tensor *src[5] = {x, wg, wu, wd, res};
    for (int i = 0; i < 5; i++) {
        h[i] = an_tensor_to(ctx, src[i], AN_BF16, AN_CPU);
        an_tensor_set_requires_grad(h[i], true);
    }
    an_tensor *ys[2];
    for (int k = 0; k < 2; k++) {
        ys[k] = k ? composed_mlp(ctx, h[0], h[1], h[2], h[3], h[4]) : an_swiglu_mlp(ctx, h[0], h[1], h[2], h[3], h[4]);
        ck_assert_msg(ys[k] != NULL, "%s", an_error_message(ctx));
        an_tensor *loss = an_sum(ctx, ys[k]);
        test_ok(ctx, an_backward(ctx, loss), "bf16 backward");
        an_tensor_release(loss);
        for (int i = 0; i < 5; i++) {
            ck_assert_msg(h[i]->grad != NULL, "input %d has no gradient", i);
            grads[k][i] = an_tensor_retain(h[i]->grad);
            an_tensor_zero_grad(h[i]);
        }
    }
    ck_assert(memcmp(an_tensor_data(ys[0]), an_tensor_data(ys[1]), an_tensor_nbytes(ys[0])) == 0);
    for (int i = 0; i < 5; i++)
        ck_assert_msg(memcmp(an_tensor_data(grads[0][i]), an_tensor_data(grads[1][i]), an_tensor_nbytes(grads[0][i])) == 0,
                      "bf16 gradient of input %d differs from the composed ops'", i);

    /* shapes */
    ck_assert_ptr_null(an_swiglu_mlp(ctx, x, wg, wd, wd, res));
    ck_assert_int_eq(an_error_status(ctx), AN_ERR_INPUT);
    ck_assert_ptr_nonnull(strstr(an_error_message(ctx), "swiglu_mlp: gate weight"));
    an_error_clear(ctx);
    ck_assert_ptr_null(an_swiglu_linear(ctx, g, u, wg, NULL));
    ck_assert_ptr_nonnull(strstr(an_error_message(ctx), "swiglu_linear: gate"));
    an_error_clear(ctx);
    ck_assert_ptr_null(an_swiglu_mlp(ctx, x, wg, wu, wd, x));
    ck_assert_ptr_nonnull(strstr(an_error_message(ctx), "swiglu_mlp: residual"));
    an_error_clear(ctx);
    ck_assert_ptr_null(an_swiglu_mlp(ctx, x, wg, wu, wg, res));
    ck_assert_ptr_nonnull(strstr(an_error_message(ctx), "swiglu_mlp: down weight"));
    an_error_clear(ctx);
    for (int k = 0; k < 2; k++) {
        an_tensor_release(ys[k]);
        for (int i = 0; i < 5; i++) an_tensor_release(grads[k][i]);
    }
    for (int i = 0; i < 5; i++) an_tensor_release(h[i]), an_tensor_release(src[i]);
    an_tensor_release(g), an_tensor_release(u);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_shape_errors_name_the_operands) {
    an_ctx *ctx = test_ctx(3);
    an_tensor *a = test_uniform(ctx, AN_F32, 2, (int64_t[]){3, 4}, -1, 1, false);
    an_tensor *b = test_uniform(ctx, AN_F32, 2, (int64_t[]){5, 2}, -1, 1, false);
    ck_assert_ptr_null(an_matmul(ctx, a, b, false, false));
    ck_assert_int_eq(an_error_status(ctx), AN_ERR_INPUT);
    ck_assert_ptr_nonnull(strstr(an_error_message(ctx), "(3, 4) f32 cpu"));
    an_error_clear(ctx);
    ck_assert_ptr_null(an_linear(ctx, a, b, NULL));
    ck_assert_ptr_nonnull(strstr(an_error_message(ctx), "linear"));
    an_error_clear(ctx);
    an_tensor *i = an_tensor_zeros(ctx, AN_I32, AN_CPU, 2, (int64_t[]){4, 5});
    ck_assert_ptr_null(an_matmul(ctx, a, i, false, false));
    ck_assert_ptr_nonnull(strstr(an_error_message(ctx), "i32"));
    an_error_clear(ctx);
    an_tensor_release(i), an_tensor_release(a), an_tensor_release(b);
    test_ctx_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("matmul");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_matmul_all_layouts);
    tcase_add_test(tc, test_linear_with_and_without_bias);
    tcase_add_test(tc, test_linear_residual);
    tcase_add_test(tc, test_swiglu_mlp_and_swiglu_linear);
    tcase_add_test(tc, test_shape_errors_name_the_operands);
    suite_add_tcase(s, tc);
    return test_run(s);
}
