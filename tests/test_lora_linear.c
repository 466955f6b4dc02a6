/* test_lora_linear.c — the fused LoRA linear op (ops/lora_linear.c): its forward against the
 * same sum built from separate ops in float64, float64 finite-difference gradient checks of every
 * input (x and x_lora apart, x_lora being x itself, with and without bias, frozen weight), the
 * bf16 CPU path and its rounding order (peft's: the base first), and shape errors that name the
 * operands. The CUDA path against this one is in
 * tests/test_cuda_lora_linear.c. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "support/test_util.h"

typedef struct {
    bool shared, with_bias;
    double scale;
} case_opts;

/* in: x, x_lora, w, a, b, bias */
static an_tensor *run_fused(an_ctx *ctx, an_tensor *const *in, void *user) {
    const case_opts *o = user;
    return an_lora_linear(ctx, in[0], o->shared ? in[0] : in[1], in[2], o->with_bias ? in[5] : NULL, in[3], in[4],
                          o->scale);
}

/* The same function from separate ops. */
static an_tensor *run_composite(an_ctx *ctx, an_tensor *const *in, const case_opts *o) {
    an_tensor *y = an_linear(ctx, in[0], in[2], o->with_bias ? in[5] : NULL);
    an_tensor *down = an_linear(ctx, o->shared ? in[0] : in[1], in[3], NULL);
    an_tensor *up = an_linear(ctx, down, in[4], NULL);
    an_tensor *scaled = an_scale(ctx, up, o->scale);
    an_tensor *out = an_add(ctx, y, scaled);
    an_tensor_release(y), an_tensor_release(down), an_tensor_release(up), an_tensor_release(scaled);
    return out;
}

START_TEST(test_lora_linear_matches_separate_ops_and_passes_gradcheck) {
    /* (batch, time, in, out, r) */
    const int64_t shapes[][5] = {{1, 1, 1, 1, 1}, {2, 3, 5, 7, 2}, {1, 4, 6, 3, 4}, {3, 2, 7, 5, 1}};
    for (size_t z = 0; z < sizeof shapes / sizeof *shapes; z++)
        for (int variant = 0; variant < 4; variant++) {
            int64_t B = shapes[z][0], T = shapes[z][1], in = shapes[z][2], out = shapes[z][3], r = shapes[z][4];
            case_opts o = {variant & 1, (variant & 2) != 0, 0.5 + 0.75 * (double)z};
            an_ctx *ctx = test_ctx(300 + 10 * z + variant);
            an_tensor *t[6] = {
                test_uniform(ctx, AN_F64, 3, (int64_t[]){B, T, in}, -1, 1, true),
                test_uniform(ctx, AN_F64, 3, (int64_t[]){B, T, in}, -1, 1, true),
                test_uniform(ctx, AN_F64, 2, (int64_t[]){out, in}, -1, 1, variant == 3), /* frozen unless 3 */
                test_uniform(ctx, AN_F64, 2, (int64_t[]){r, in}, -1, 1, true),
                test_uniform(ctx, AN_F64, 2, (int64_t[]){out, r}, -1, 1, true),
                test_uniform(ctx, AN_F64, 1, (int64_t[]){out}, -1, 1, true),
            };
            char what[128];
            snprintf(what, sizeof what, "lora_linear B %lld T %lld in %lld out %lld r %lld shared %d bias %d",
                     (long long)B, (long long)T, (long long)in, (long long)out, (long long)r, o.shared, o.with_bias);
            an_no_grad_begin(ctx);
            an_tensor *got = run_fused(ctx, t, &o), *want = run_composite(ctx, t, &o);
            an_no_grad_end(ctx);
            ck_assert_msg(got && want, "%s: %s", what, an_error_message(ctx));
            test_assert_tensors_close(got, want, 1e-13, 1e-14, what);
            an_tensor_release(got), an_tensor_release(want);
            test_assert_gradcheck(ctx, run_fused, t, 6, &o, what);

            /* bf16 on the CPU: within bf16 rounding of the float64 result */
            an_tensor *h[6];
            for (int i = 0; i < 6; i++) h[i] = an_tensor_to(ctx, t[i], AN_BF16, AN_CPU);
            an_tensor *gh = run_fused(ctx, h, &o);
            an_tensor *w64 = run_composite(ctx, t, &o);
            an_tensor *g64 = an_tensor_to(ctx, gh, AN_F64, AN_CPU);
            ck_assert_msg(test_scaled_error(g64, w64) < 3e-2, "%s bf16: scaled error %g", what,
                          test_scaled_error(g64, w64));
            an_tensor_release(gh), an_tensor_release(w64), an_tensor_release(g64);
            for (int i = 0; i < 6; i++) an_tensor_release(h[i]), an_tensor_release(t[i]);
            an_tape_clear(ctx);
            test_ctx_free(ctx);
        }
}
END_TEST

/* bf16 on the CPU in peft's order: the base rounded first, so an adapter's products under half a
 * unit in the last place of outputs of 0.25 and more leave them as the base alone gives them (one
 * rounding of the whole sum would move some), while products of B at full size do move them. */
START_TEST(test_lora_linear_rounds_the_base_first_on_the_cpu) {
    an_ctx *ctx = test_ctx(11);
    const int64_t rows = 64, in = 64, out = 96, r = 16;
    an_tensor *x = test_uniform(ctx, AN_BF16, 2, (int64_t[]){rows, in}, -1, 1, false);
    an_tensor *w = test_uniform(ctx, AN_BF16, 2, (int64_t[]){out, in}, -1, 1, false);
    an_tensor *a = test_uniform(ctx, AN_BF16, 2, (int64_t[]){r, in}, -0.5, 0.5, false);
    an_tensor *tiny = test_uniform(ctx, AN_BF16, 2, (int64_t[]){out, r}, -4e-6, 4e-6, false);
    an_tensor *full = test_uniform(ctx, AN_BF16, 2, (int64_t[]){out, r}, -0.5, 0.5, false);
    an_tensor *base = an_linear(ctx, x, w, NULL), *with_tiny = an_lora_linear(ctx, x, x, w, NULL, a, tiny, 1.0);
    an_tensor *with_full = an_lora_linear(ctx, x, x, w, NULL, a, full, 1.0);
    ck_assert_msg(base && with_tiny && with_full, "%s", an_error_message(ctx));
    double *bv = test_values(base), *tv = test_values(with_tiny), *fv = test_values(with_full);
    int64_t checked = 0, moved = 0;
    for (int64_t i = 0; i < rows * out; i++) {
        if (fabs(bv[i]) < 0.25) continue;
        checked++;
        ck_assert_msg(tv[i] == bv[i], "output %lld moved from %g to %g by adapter products under half an ulp",
                      (long long)i, bv[i], tv[i]);
        moved += fv[i] != bv[i];
    }
    ck_assert_msg(checked > rows * out / 2, "only %lld outputs of 0.25 or more", (long long)checked);
    ck_assert_msg(moved > checked / 2, "full-size adapter products moved only %lld of %lld outputs", (long long)moved,
                  (long long)checked);
    free(bv), free(tv), free(fv);
    an_tensor *all[] = {x, w, a, tiny, full, base, with_tiny, with_full};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) an_tensor_release(all[i]);
    test_ctx_free(ctx);
}
END_TEST

/* A shared input gets dY W + d_down A in one gradient, equal to the composite's sum of two. */
START_TEST(test_lora_linear_shared_input_gradient_equals_composite) {
    an_ctx *ctx = test_ctx(7);
    case_opts o = {true, true, 2.0};
    an_tensor *t[6] = {
        test_uniform(ctx, AN_F64, 2, (int64_t[]){5, 6}, -1, 1, true), test_uniform(ctx, AN_F64, 2, (int64_t[]){5, 6}, -1, 1, false),
        test_uniform(ctx, AN_F64, 2, (int64_t[]){4, 6}, -1, 1, true),  test_uniform(ctx, AN_F64, 2, (int64_t[]){3, 6}, -1, 1, true),
        test_uniform(ctx, AN_F64, 2, (int64_t[]){4, 3}, -1, 1, true),  test_uniform(ctx, AN_F64, 1, (int64_t[]){4}, -1, 1, true),
    };
    an_tensor *want[6] = {0};
    for (int pass = 0; pass < 2; pass++) {
        an_tensor *y = pass ? run_fused(ctx, t, &o) : run_composite(ctx, t, &o);
        an_tensor *loss = an_sum(ctx, y);
        test_ok(ctx, an_backward(ctx, loss), "backward");
        for (int i = 0; i < 6; i++) {
            if (i == 1) continue;
            if (pass) test_assert_tensors_close(t[i]->grad, want[i], 1e-13, 1e-13, "shared input gradient");
            else want[i] = an_tensor_retain(t[i]->grad);
            an_tensor_release(t[i]->grad);
            t[i]->grad = NULL;
        }
        an_tensor_release(y), an_tensor_release(loss);
    }
    for (int i = 0; i < 6; i++) an_tensor_release(want[i]), an_tensor_release(t[i]);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_lora_linear_rejects_mismatched_shapes) {
    an_ctx *ctx = test_ctx(8);
    an_tensor *x = test_uniform(ctx, AN_F32, 2, (int64_t[]){2, 6}, -1, 1, false);
    an_tensor *w = test_uniform(ctx, AN_F32, 2, (int64_t[]){4, 6}, -1, 1, false);
    an_tensor *a = test_uniform(ctx, AN_F32, 2, (int64_t[]){3, 6}, -1, 1, false);
    an_tensor *b_bad = test_uniform(ctx, AN_F32, 2, (int64_t[]){4, 2}, -1, 1, false);
    an_tensor *x_bad = test_uniform(ctx, AN_F32, 2, (int64_t[]){3, 6}, -1, 1, false);
    ck_assert_ptr_null(an_lora_linear(ctx, x, x, w, NULL, a, b_bad, 1.0));
    ck_assert_int_eq(an_error_status(ctx), AN_ERR_INPUT);
    ck_assert_msg(strstr(an_error_message(ctx), "(4, 2)") != NULL, "message: %s", an_error_message(ctx));
    an_error_clear(ctx);
    ck_assert_ptr_null(an_lora_linear(ctx, x, x_bad, w, NULL, a, b_bad, 1.0));
    ck_assert_msg(strstr(an_error_message(ctx), "adapter input") != NULL, "message: %s", an_error_message(ctx));
    an_error_clear(ctx);
    an_tensor_release(x), an_tensor_release(w), an_tensor_release(a), an_tensor_release(b_bad), an_tensor_release(x_bad);
    test_ctx_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("lora_linear");
    test_add_case(s, "forward and gradcheck", test_lora_linear_matches_separate_ops_and_passes_gradcheck);
    test_add_case(s, "shared input", test_lora_linear_shared_input_gradient_equals_composite);
    test_add_case(s, "peft's rounding order", test_lora_linear_rounds_the_base_first_on_the_cpu);
    test_add_case(s, "errors", test_lora_linear_rejects_mismatched_shapes);
    return test_run(s);
}
