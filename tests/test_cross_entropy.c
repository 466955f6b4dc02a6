/* test_cross_entropy.c — cross_entropy, linear_cross_entropy and log_softmax_gather: forwards and
 * gradients against float64 loops, float64 gradient checks at awkward shapes (N = 1, odd V, chunks
 * that do not divide N), ignored targets, the normalizer for gradient accumulation, bad targets, and
 * a memory bound proving the fused loss never holds (N, V) logits. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "support/test_util.h"

/* ---- float64 references, written out plainly ---- */

static double reference_lse(const an_tensor *logits, int64_t i) {
    int64_t V = logits->shape[1];
    double max = -INFINITY, total = 0;
    for (int64_t j = 0; j < V; j++) max = fmax(max, an_tensor_get(logits, i * V + j));
    for (int64_t j = 0; j < V; j++) total += exp(an_tensor_get(logits, i * V + j) - max);
    return max + log(total);
}

/* Summed -log softmax(logits)[target] over counted rows; *count gets their number. */
static double reference_loss_sum(const an_tensor *logits, const an_tensor *targets, int64_t ignore, int64_t *count) {
    int64_t N = logits->shape[0], V = logits->shape[1];
    double total = 0;
    *count = 0;
    for (int64_t i = 0; i < N; i++) {
        int64_t t = (int64_t)an_tensor_get(targets, i);
        if (t == ignore) continue;
        total += reference_lse(logits, i) - an_tensor_get(logits, i * V + t);
        (*count)++;
    }
    return total;
}

/* grad (N, V) = scale * (softmax - onehot(target)) on counted rows, 0 elsewhere. */
static void reference_loss_grad(const an_tensor *logits, const an_tensor *targets, int64_t ignore, double scale,
                                double *grad) {
    int64_t N = logits->shape[0], V = logits->shape[1];
    for (int64_t i = 0; i < N; i++) {
        int64_t t = (int64_t)an_tensor_get(targets, i);
        double lse = reference_lse(logits, i);
        for (int64_t j = 0; j < V; j++)
            grad[i * V + j] = t == ignore ? 0.0 : scale * (exp(an_tensor_get(logits, i * V + j) - lse) - (j == t));
    }
}

/* Targets in [0, V) with every k-th row (k > 0) set to `ignore`. */
static an_tensor *targets_with_ignored(an_ctx *ctx, an_dtype dtype, int64_t N, int64_t V, int64_t k, int64_t ignore) {
    an_tensor *t = test_ids(ctx, dtype, 1, &N, V);
    for (int64_t i = 0; k > 0 && i < N; i++)
        if (i % k == k - 1) an_tensor_set(t, i, (double)ignore);
    return t;
}

static bool all_zero(const an_tensor *t) {
    for (int64_t i = 0; t && i < an_tensor_numel(t); i++)
        if (an_tensor_get(t, i) != 0.0) return false;
    return t != NULL;
}

static const an_cross_entropy_opts defaults = {AN_IGNORE_INDEX, 0, 0.0, 0};

static an_tensor *run_ce(an_ctx *ctx, an_tensor *const *in, void *user) {
    return an_cross_entropy(ctx, in[0], in[1], user);
}
static an_tensor *run_linear_ce(an_ctx *ctx, an_tensor *const *in, void *user) {
    return an_linear_cross_entropy(ctx, in[0], in[1], in[2], user);
}
static an_tensor *run_gather(an_ctx *ctx, an_tensor *const *in, void *user) {
    return an_log_softmax_gather(ctx, in[0], in[1]);
}

/* ---- cross_entropy ---- */

static const int64_t ce_shapes[][3] = {/* N, V, every k-th row ignored (0: none) */
                                       {1, 2, 0}, {7, 7, 3}, {5, 33, 2}, {16, 3, 4}, {4, 1, 0}};

START_TEST(test_cross_entropy_forward_and_backward_match_reference) {
    for (size_t s = 0; s < sizeof ce_shapes / sizeof *ce_shapes; s++) {
        for (int d = 0; d < 2; d++) {
            an_dtype dtype = d ? AN_F32 : AN_F64, tdtype = s % 2 ? AN_I32 : AN_I64;
            double tol = d ? 2e-6 : 1e-13;
            int64_t N = ce_shapes[s][0], V = ce_shapes[s][1];
            an_ctx *ctx = test_ctx(200 + s);
            an_tensor *logits = test_uniform(ctx, dtype, 2, (int64_t[]){N, V}, -4, 4, true);
            an_tensor *targets = targets_with_ignored(ctx, tdtype, N, V, ce_shapes[s][2], AN_IGNORE_INDEX);
            int64_t count;
            double want = reference_loss_sum(logits, targets, AN_IGNORE_INDEX, &count) / (double)count;
            an_tensor *loss = an_cross_entropy(ctx, logits, targets, s % 2 ? NULL : &defaults);
            ck_assert_msg(loss != NULL, "%s", an_error_message(ctx));
            ck_assert_int_eq(loss->ndim, 0);
            ck_assert_int_eq(loss->dtype, dtype);
            test_assert_close(loss, &want, tol, tol, "cross_entropy forward");
            ck_assert_int_eq(an_backward(ctx, loss), AN_OK);
            double *grad = malloc((size_t)(N * V) * sizeof *grad);
            reference_loss_grad(logits, targets, AN_IGNORE_INDEX, 1.0 / (double)count, grad);
            test_assert_close(logits->grad, grad, tol, tol * 1e-2, "cross_entropy backward");
            free(grad);
            an_tensor_release(loss), an_tensor_release(logits), an_tensor_release(targets);
            test_ctx_free(ctx);
        }
    }
}
END_TEST

START_TEST(test_cross_entropy_gradcheck_with_ignored_rows_and_options) {
    const an_cross_entropy_opts options[] = {
        {AN_IGNORE_INDEX, 0, 0.0, 0},  /* mean over counted targets */
        {AN_IGNORE_INDEX, 0, 10.0, 0}, /* summed / normalizer */
        {0, 0, 0.0, 0},             /* target 0 is the ignored one */
    };
    for (size_t s = 0; s < 4; s++) {
        for (size_t k = 0; k < sizeof options / sizeof *options; k++) {
            int64_t N = ce_shapes[s][0], V = ce_shapes[s][1];
            an_ctx *ctx = test_ctx(300 + 10 * s + k);
            an_tensor *logits = test_uniform(ctx, AN_F64, 2, (int64_t[]){N, V}, -3, 3, true);
            an_tensor *targets = targets_with_ignored(ctx, AN_I64, N, V, ce_shapes[s][2], AN_IGNORE_INDEX);
            if (options[k].ignore_index == 0) /* targets of -100 would be out of range there */
                for (int64_t i = 0; i < N; i++)
                    if (an_tensor_get(targets, i) < 0) an_tensor_set(targets, i, 0);
            test_assert_gradcheck(ctx, run_ce, (an_tensor *[]){logits, targets}, 2, (void *)&options[k],
                                  "cross_entropy");
            an_tensor_release(logits), an_tensor_release(targets);
            test_ctx_free(ctx);
        }
    }
}
END_TEST

START_TEST(test_custom_ignore_index_skips_those_targets) {
    an_ctx *ctx = test_ctx(7);
    an_tensor *logits = test_uniform(ctx, AN_F64, 2, (int64_t[]){6, 5}, -2, 2, false);
    an_tensor *targets = an_tensor_from_data(ctx, AN_I64, 1, (int64_t[]){6}, (int64_t[]){0, 3, 4, 0, 1, 2});
    an_cross_entropy_opts o = {0, 0, 0.0, 0};
    int64_t count;
    double want = reference_loss_sum(logits, targets, 0, &count) / (double)count;
    ck_assert_int_eq(count, 4);
    an_tensor *loss = an_cross_entropy(ctx, logits, targets, &o);
    test_assert_close(loss, &want, 1e-13, 1e-13, "ignore_index 0");
    an_tensor_release(loss);
    an_tensor_set(targets, 1, AN_IGNORE_INDEX); /* -100 is now just out of range */
    ck_assert_ptr_null(an_cross_entropy(ctx, logits, targets, &o));
    ck_assert_int_eq(an_error_status(ctx), AN_ERR_INPUT);
    ck_assert_ptr_nonnull(strstr(an_error_message(ctx), "targets[1] = -100 is outside [0, 5)"));
    an_error_clear(ctx);
    an_tensor_release(logits), an_tensor_release(targets);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_normalizer_divides_the_summed_loss) {
    an_ctx *ctx = test_ctx(8);
    an_tensor *logits = test_uniform(ctx, AN_F64, 2, (int64_t[]){9, 6}, -3, 3, true);
    an_tensor *targets = targets_with_ignored(ctx, AN_I32, 9, 6, 4, AN_IGNORE_INDEX);
    an_cross_entropy_opts o = {AN_IGNORE_INDEX, 0, 13.0, 0};
    int64_t count;
    double want = reference_loss_sum(logits, targets, AN_IGNORE_INDEX, &count) / 13.0;
    an_tensor *loss = an_cross_entropy(ctx, logits, targets, &o);
    test_assert_close(loss, &want, 1e-13, 1e-13, "normalizer forward");
    ck_assert_int_eq(an_backward(ctx, loss), AN_OK);
    double grad[54];
    reference_loss_grad(logits, targets, AN_IGNORE_INDEX, 1.0 / 13.0, grad);
    test_assert_close(logits->grad, grad, 1e-13, 1e-15, "normalizer backward");
    an_tensor_release(loss);
    o.normalizer = -1;
    ck_assert_ptr_null(an_cross_entropy(ctx, logits, targets, &o));
    ck_assert_ptr_nonnull(strstr(an_error_message(ctx), "normalizer = -1"));
    an_error_clear(ctx);
    o = (an_cross_entropy_opts){AN_IGNORE_INDEX, -4, 0.0, 0};
    ck_assert_ptr_null(an_linear_cross_entropy(ctx, logits, logits, targets, &o));
    ck_assert_ptr_nonnull(strstr(an_error_message(ctx), "chunk_rows = -4"));
    an_error_clear(ctx);
    an_tensor_release(logits), an_tensor_release(targets);
    test_ctx_free(ctx);
}
END_TEST

/* Two micro-batches with normalizer = the whole batch's count give the full batch's loss (summed) and
 * gradients (accumulated into the shared weight by two backward passes). */
START_TEST(test_normalizer_makes_micro_batches_add_up_to_the_full_batch) {
    an_ctx *ctx = test_ctx(9);
    int64_t N = 10, D = 4, V = 7, split = 4;
    an_tensor *hidden = test_uniform(ctx, AN_F64, 2, (int64_t[]){N, D}, -1, 1, true);
    an_tensor *weight = test_uniform(ctx, AN_F64, 2, (int64_t[]){V, D}, -1, 1, true);
    an_tensor *targets = targets_with_ignored(ctx, AN_I64, N, V, 3, AN_IGNORE_INDEX);
    an_cross_entropy_opts o = {AN_IGNORE_INDEX, 3, 0.0, 0};
    an_tensor *full = an_linear_cross_entropy(ctx, hidden, weight, targets, &o);
    double full_loss = an_tensor_get(full, 0);
    ck_assert_int_eq(an_backward(ctx, full), AN_OK);
    an_tensor *full_dh = an_tensor_retain(hidden->grad), *full_dw = an_tensor_retain(weight->grad);
    an_tensor_zero_grad(hidden), an_tensor_zero_grad(weight);

    int64_t count;
    an_no_grad_begin(ctx);
    an_tensor *logits = an_linear(ctx, hidden, weight, NULL);
    an_no_grad_end(ctx);
    reference_loss_sum(logits, targets, AN_IGNORE_INDEX, &count);
    o.normalizer = (double)count;
    double summed = 0;
    for (int part = 0; part < 2; part++) {
        int64_t start = part ? split : 0, rows = part ? N - split : split;
        an_tensor *h_rows = an_tensor_rows(ctx, hidden, start, rows);
        an_tensor *h = an_tensor_to(ctx, h_rows, AN_F64, AN_CPU); /* a leaf of its own */
        an_tensor_set_requires_grad(h, true);
        an_tensor *t = an_tensor_rows(ctx, targets, start, rows);
        an_tensor *loss = an_linear_cross_entropy(ctx, h, weight, t, &o);
        summed += an_tensor_get(loss, 0);
        ck_assert_int_eq(an_backward(ctx, loss), AN_OK);
        for (int64_t i = 0; i < rows * D; i++)
            ck_assert_double_eq_tol(an_tensor_get(h->grad, i), an_tensor_get(full_dh, start * D + i), 1e-14);
        an_tensor_release(loss), an_tensor_release(t), an_tensor_release(h), an_tensor_release(h_rows);
    }
    ck_assert_double_eq_tol(summed, full_loss, 1e-13);
    test_assert_tensors_close(weight->grad, full_dw, 1e-12, 1e-14, "accumulated weight gradient");
    an_tensor_release(logits), an_tensor_release(full_dh), an_tensor_release(full_dw), an_tensor_release(full);
    an_tensor_release(hidden), an_tensor_release(weight), an_tensor_release(targets);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_all_ignored_gives_zero_loss_and_zero_gradients) {
    for (int normalized = 0; normalized < 2; normalized++) {
        an_ctx *ctx = test_ctx(10);
        an_cross_entropy_opts o = {AN_IGNORE_INDEX, 2, normalized ? 8.0 : 0.0, 0};
        an_tensor *targets = targets_with_ignored(ctx, AN_I64, 5, 6, 1, AN_IGNORE_INDEX); /* every row */
        an_tensor *logits = test_uniform(ctx, AN_F64, 2, (int64_t[]){5, 6}, -3, 3, true);
        an_tensor *loss = an_cross_entropy(ctx, logits, targets, &o);
        ck_assert_double_eq(an_tensor_get(loss, 0), 0.0);
        ck_assert_int_eq(an_backward(ctx, loss), AN_OK);
        ck_assert_msg(all_zero(logits->grad), "cross_entropy: gradient of all-ignored logits is not zero");
        an_tensor_release(loss);

        an_tensor *hidden = test_uniform(ctx, AN_F64, 2, (int64_t[]){5, 3}, -1, 1, true);
        an_tensor *weight = test_uniform(ctx, AN_F64, 2, (int64_t[]){6, 3}, -1, 1, true);
        loss = an_linear_cross_entropy(ctx, hidden, weight, targets, &o);
        ck_assert_double_eq(an_tensor_get(loss, 0), 0.0);
        ck_assert_int_eq(an_backward(ctx, loss), AN_OK);
        ck_assert_msg(all_zero(hidden->grad) && all_zero(weight->grad), "linear_cross_entropy: nonzero gradients");
        an_tensor_release(loss);

        an_tensor *none = an_tensor_new(ctx, AN_I64, AN_CPU, 1, (int64_t[]){0}); /* N = 0 */
        an_tensor *empty = an_tensor_new(ctx, AN_F64, AN_CPU, 2, (int64_t[]){0, 6});
        loss = an_cross_entropy(ctx, empty, none, &o);
        ck_assert_msg(loss && an_tensor_get(loss, 0) == 0.0, "N = 0: %s", an_error_message(ctx));
        an_tensor_release(loss);
        an_tensor_release(none), an_tensor_release(empty);
        an_tensor_release(hidden), an_tensor_release(weight), an_tensor_release(logits), an_tensor_release(targets);
        test_ctx_free(ctx);
    }
}
END_TEST

START_TEST(test_target_out_of_range_is_an_input_error_naming_row_and_value) {
    an_ctx *ctx = test_ctx(11);
    an_tensor *logits = test_uniform(ctx, AN_F32, 2, (int64_t[]){4, 5}, -1, 1, true);
    an_tensor *hidden = test_uniform(ctx, AN_F32, 2, (int64_t[]){4, 3}, -1, 1, true);
    an_tensor *weight = test_uniform(ctx, AN_F32, 2, (int64_t[]){5, 3}, -1, 1, true);
    const int32_t bad[][4] = {{0, 1, 5, 2}, {-1, 0, 0, 0}, {1, 2, 3, -101}};
    const char *expect[] = {"targets[2] = 5 is outside [0, 5)", "targets[0] = -1 is outside [0, 5)",
                            "targets[3] = -101 is outside [0, 5)"};
    for (int b = 0; b < 3; b++) {
        an_tensor *targets = an_tensor_from_data(ctx, AN_I32, 1, (int64_t[]){4}, bad[b]);
        ck_assert_ptr_null(an_cross_entropy(ctx, logits, targets, NULL));
        ck_assert_int_eq(an_error_status(ctx), AN_ERR_INPUT);
        ck_assert_msg(strstr(an_error_message(ctx), expect[b]) != NULL, "message: %s", an_error_message(ctx));
        an_error_clear(ctx);
        ck_assert_ptr_null(an_linear_cross_entropy(ctx, hidden, weight, targets, NULL));
        ck_assert_int_eq(an_error_status(ctx), AN_ERR_INPUT);
        ck_assert_msg(strstr(an_error_message(ctx), expect[b]) != NULL, "message: %s", an_error_message(ctx));
        an_error_clear(ctx);
        an_tensor_release(targets);
    }
    ck_assert_int_eq(an_tape_length(ctx), 0);
    /* shapes: targets per row, weight matching hidden, float logits */
    an_tensor *short_targets = test_ids(ctx, AN_I64, 1, (int64_t[]){3}, 5);
    ck_assert_ptr_null(an_cross_entropy(ctx, logits, short_targets, NULL));
    ck_assert_ptr_nonnull(strstr(an_error_message(ctx), "one per row"));
    an_error_clear(ctx);
    an_tensor *targets = test_ids(ctx, AN_I64, 1, (int64_t[]){4}, 5);
    ck_assert_ptr_null(an_linear_cross_entropy(ctx, hidden, logits, targets, NULL)); /* (4, 5) is not (V, 3) */
    ck_assert_ptr_nonnull(strstr(an_error_message(ctx), "must be (V, 3)"));
    an_error_clear(ctx);
    ck_assert_ptr_null(an_cross_entropy(ctx, targets, targets, NULL));
    ck_assert_int_eq(an_error_status(ctx), AN_ERR_INPUT);
    an_error_clear(ctx);
    ck_assert_ptr_null(an_cross_entropy(ctx, logits, logits, NULL)); /* float targets */
    ck_assert_ptr_nonnull(strstr(an_error_message(ctx), "targets must be i32 or i64"));
    an_error_clear(ctx);
    an_tensor_release(short_targets), an_tensor_release(targets);
    an_tensor_release(logits), an_tensor_release(hidden), an_tensor_release(weight);
    test_ctx_free(ctx);
}
END_TEST

/* ---- linear_cross_entropy ---- */

static const int64_t linear_shapes[][5] = {/* N, D, V, chunk_rows (0: default), every k-th row ignored */
                                           {7, 5, 33, 3, 0}, {1, 3, 2, 0, 0}, {7, 4, 7, 7, 3},
                                           {9, 6, 13, 4, 2}, {8, 3, 5, 100, 0}, {6, 2, 3, 1, 4}};

/* Loss and gradients of the fused op against an_linear followed by an_cross_entropy. */
static void check_fused_equals_unfused(an_dtype dtype, double tol) {
    for (size_t s = 0; s < sizeof linear_shapes / sizeof *linear_shapes; s++) {
        const int64_t *c = linear_shapes[s];
        int64_t N = c[0], D = c[1], V = c[2];
        an_ctx *ctx = test_ctx(400 + s);
        an_tensor *hidden = test_uniform(ctx, dtype, 2, (int64_t[]){N, D}, -1, 1, true);
        an_tensor *weight = test_uniform(ctx, dtype, 2, (int64_t[]){V, D}, -1, 1, true);
        an_tensor *targets = targets_with_ignored(ctx, s % 2 ? AN_I32 : AN_I64, N, V, c[4], AN_IGNORE_INDEX);
        an_cross_entropy_opts o = {AN_IGNORE_INDEX, c[3], 0.0, 0};

        an_tensor *fused = an_linear_cross_entropy(ctx, hidden, weight, targets, c[3] ? &o : NULL);
        ck_assert_msg(fused != NULL, "%s", an_error_message(ctx));
        ck_assert_int_eq(fused->dtype, dtype);
        ck_assert_int_eq(an_backward(ctx, fused), AN_OK);
        an_tensor *dh = an_tensor_retain(hidden->grad), *dw = an_tensor_retain(weight->grad);
        an_tensor_zero_grad(hidden), an_tensor_zero_grad(weight);

        an_tensor *logits = an_linear(ctx, hidden, weight, NULL);
        an_tensor *unfused = an_cross_entropy(ctx, logits, targets, &o);
        ck_assert_int_eq(an_backward(ctx, unfused), AN_OK);
        double want = an_tensor_get(unfused, 0);
        test_assert_close(fused, &want, tol, tol, "linear_cross_entropy loss");
        test_assert_tensors_close(dh, hidden->grad, tol, tol * 1e-2, "linear_cross_entropy d hidden");
        test_assert_tensors_close(dw, weight->grad, tol, tol * 1e-2, "linear_cross_entropy d weight");
        an_tensor_release(fused), an_tensor_release(unfused), an_tensor_release(logits);
        an_tensor_release(dh), an_tensor_release(dw);
        an_tensor_release(hidden), an_tensor_release(weight), an_tensor_release(targets);
        test_ctx_free(ctx);
    }
}

START_TEST(test_linear_cross_entropy_equals_linear_then_cross_entropy) {
    check_fused_equals_unfused(AN_F64, 1e-12);
    check_fused_equals_unfused(AN_F32, 1e-5);
}
END_TEST

START_TEST(test_linear_cross_entropy_gradcheck_with_uneven_chunks) {
    for (size_t s = 0; s < sizeof linear_shapes / sizeof *linear_shapes; s++) {
        const int64_t *c = linear_shapes[s];
        int64_t N = c[0], D = c[1], V = c[2];
        an_ctx *ctx = test_ctx(500 + s);
        an_tensor *hidden = test_uniform(ctx, AN_F64, 2, (int64_t[]){N, D}, -1, 1, true);
        an_tensor *weight = test_uniform(ctx, AN_F64, 2, (int64_t[]){V, D}, -1, 1, true);
        an_tensor *targets = targets_with_ignored(ctx, AN_I64, N, V, c[4], AN_IGNORE_INDEX);
        an_cross_entropy_opts o = {AN_IGNORE_INDEX, c[3], s % 2 ? 0.0 : 5.0, 0};
        test_assert_gradcheck(ctx, run_linear_ce, (an_tensor *[]){hidden, weight, targets}, 3, &o,
                              "linear_cross_entropy");
        an_tensor_release(hidden), an_tensor_release(weight), an_tensor_release(targets);
        test_ctx_free(ctx);
    }
}
END_TEST

/* bf16 inputs go through f32 GEMMs; the loss and gradients stay within bf16 rounding of the float64
 * values computed from the same stored inputs. */
START_TEST(test_linear_cross_entropy_bf16_close_to_float64) {
    an_ctx *ctx = test_ctx(12);
    int64_t N = 9, D = 8, V = 17;
    an_tensor *hidden = test_uniform(ctx, AN_BF16, 2, (int64_t[]){N, D}, -1, 1, true);
    an_tensor *weight = test_uniform(ctx, AN_BF16, 2, (int64_t[]){V, D}, -1, 1, true);
    an_tensor *targets = targets_with_ignored(ctx, AN_I64, N, V, 4, AN_IGNORE_INDEX);
    an_cross_entropy_opts o = {AN_IGNORE_INDEX, 4, 0.0, 0};
    an_tensor *loss = an_linear_cross_entropy(ctx, hidden, weight, targets, &o);
    ck_assert_msg(loss && loss->dtype == AN_F32, "%s", an_error_message(ctx)); /* the loss scalar is fp32 */
    ck_assert_int_eq(an_backward(ctx, loss), AN_OK);

    an_tensor *h64 = an_tensor_to(ctx, hidden, AN_F64, AN_CPU), *w64 = an_tensor_to(ctx, weight, AN_F64, AN_CPU);
    an_tensor_set_requires_grad(h64, true), an_tensor_set_requires_grad(w64, true);
    an_tensor *want = an_linear_cross_entropy(ctx, h64, w64, targets, &o);
    ck_assert_int_eq(an_backward(ctx, want), AN_OK);
    double w = an_tensor_get(want, 0);
    test_assert_close(loss, &w, 8e-3, 0, "bf16 loss");
    ck_assert_int_eq(hidden->grad->dtype, AN_BF16);
    test_assert_tensors_close(hidden->grad, h64->grad, 1e-2, 2e-4, "bf16 d hidden");
    test_assert_tensors_close(weight->grad, w64->grad, 1e-2, 2e-4, "bf16 d weight");
    an_tensor_release(loss), an_tensor_release(want), an_tensor_release(h64), an_tensor_release(w64);
    an_tensor_release(hidden), an_tensor_release(weight), an_tensor_release(targets);
    test_ctx_free(ctx);
}
END_TEST

/* The proof that (N, V) logits never exist: every tensor, the chunk buffer and the row scratch go
 * through the counted allocator, so ctx->mem[AN_CPU].peak bounds what forward and backward held.
 * The fused pass must stay within one chunk of logits plus O((N + V) * D) gradients — far below
 * N * V * 4 bytes — while the unfused pass, measured the same way, does reach N * V * 4 (so the
 * measurement would see a full logits buffer if one were made). */
START_TEST(test_linear_cross_entropy_never_allocates_full_logits) {
    an_ctx *ctx = test_ctx(13);
    const int64_t N = 512, D = 16, V = 4096, chunk = 64;
    const size_t full = (size_t)(N * V) * sizeof(float);
    an_tensor *hidden = test_uniform(ctx, AN_F32, 2, (int64_t[]){N, D}, -1, 1, true);
    an_tensor *weight = test_uniform(ctx, AN_F32, 2, (int64_t[]){V, D}, -1, 1, true);
    an_tensor *targets = targets_with_ignored(ctx, AN_I32, N, V, 5, AN_IGNORE_INDEX);
    an_cross_entropy_opts o = {AN_IGNORE_INDEX, chunk, 0.0, 0};

    an_mem_reset_peak(ctx, AN_CPU);
    size_t base = ctx->mem[AN_CPU].current;
    an_tensor *loss = an_linear_cross_entropy(ctx, hidden, weight, targets, &o);
    ck_assert_int_eq(an_backward(ctx, loss), AN_OK);
    size_t fused_peak = ctx->mem[AN_CPU].peak - base;
    size_t budget = (size_t)(chunk * V) * sizeof(float)        /* one chunk of logits / dlogits */
                    + (size_t)V * sizeof(double)                /* the row widened to float64 */
                    + (size_t)N * sizeof(double)                /* saved log-sum-exp */
                    + (size_t)((N + V) * D) * sizeof(float)     /* d hidden, d weight */
                    + 4096;                                     /* scalars (loss, seed) and rounding */
    printf("linear_cross_entropy N=%lld V=%lld chunk=%lld: peak %zu bytes (budget %zu, full logits %zu)\n",
           (long long)N, (long long)V, (long long)chunk, fused_peak, budget, full);
    ck_assert_msg(fused_peak <= budget, "fused peak %zu bytes exceeds the chunked budget %zu", fused_peak, budget);
    ck_assert_msg(fused_peak < full / 4, "fused peak %zu bytes is not far below N*V*4 = %zu", fused_peak, full);
    an_tensor *dh = an_tensor_retain(hidden->grad), *dw = an_tensor_retain(weight->grad);
    an_tensor_zero_grad(hidden), an_tensor_zero_grad(weight);

    an_mem_reset_peak(ctx, AN_CPU);
    base = ctx->mem[AN_CPU].current;
    an_tensor *logits = an_linear(ctx, hidden, weight, NULL);
    an_tensor *unfused = an_cross_entropy(ctx, logits, targets, &o);
    an_tensor_release(logits);
    ck_assert_int_eq(an_backward(ctx, unfused), AN_OK);
    size_t unfused_peak = ctx->mem[AN_CPU].peak - base;
    printf("linear + cross_entropy: peak %zu bytes\n", unfused_peak);
    ck_assert_msg(unfused_peak >= full, "the unfused peak %zu should include the %zu-byte logits", unfused_peak, full);
    test_assert_close(loss, (double[]){an_tensor_get(unfused, 0)}, 1e-5, 1e-6, "fused vs unfused loss");
    test_assert_tensors_close(dw, weight->grad, 1e-4, 1e-6, "fused vs unfused d weight");
    test_assert_tensors_close(dh, hidden->grad, 1e-4, 1e-6, "fused vs unfused d hidden");
    an_tensor_release(loss), an_tensor_release(unfused), an_tensor_release(dh), an_tensor_release(dw);
    an_tensor_release(hidden), an_tensor_release(weight), an_tensor_release(targets);
    test_ctx_free(ctx);
}
END_TEST

/* ---- log_softmax_gather ---- */

START_TEST(test_log_softmax_gather_matches_reference_and_gradcheck) {
    const int64_t shapes[][2] = {{1, 2}, {6, 7}, {3, 33}, {5, 1}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        for (int d = 0; d < 2; d++) {
            int64_t N = shapes[s][0], V = shapes[s][1];
            an_dtype dtype = d ? AN_F32 : AN_F64;
            double tol = d ? 2e-6 : 1e-13;
            an_ctx *ctx = test_ctx(600 + s);
            an_tensor *logits = test_uniform(ctx, dtype, 2, (int64_t[]){N, V}, -4, 4, true);
            an_tensor *ids = test_ids(ctx, s % 2 ? AN_I32 : AN_I64, 1, &N, V);
            double want[64], g[64], grad[64 * 33];
            for (int64_t i = 0; i < N; i++)
                want[i] = an_tensor_get(logits, i * V + (int64_t)an_tensor_get(ids, i)) - reference_lse(logits, i);
            an_tensor *out = an_log_softmax_gather(ctx, logits, ids);
            ck_assert_msg(out && out->ndim == 1 && out->shape[0] == N && out->dtype == dtype, "%s",
                          an_error_message(ctx));
            test_assert_close(out, want, tol, tol, "log_softmax_gather forward");
            /* backward of sum(out * r): grad = r_i * (onehot - softmax) */
            an_tensor *r = test_uniform(ctx, dtype, 1, &N, -1, 1, false);
            an_tensor *weighted = an_mul(ctx, out, r);
            an_tensor *loss = an_sum(ctx, weighted);
            ck_assert_int_eq(an_backward(ctx, loss), AN_OK);
            for (int64_t i = 0; i < N; i++) g[i] = an_tensor_get(r, i);
            for (int64_t i = 0; i < N; i++) {
                double lse = reference_lse(logits, i);
                for (int64_t j = 0; j < V; j++)
                    grad[i * V + j] = g[i] * ((j == (int64_t)an_tensor_get(ids, i)) -
                                              exp(an_tensor_get(logits, i * V + j) - lse));
            }
            test_assert_close(logits->grad, grad, tol, tol * 1e-2, "log_softmax_gather backward");
            an_tensor_release(loss), an_tensor_release(weighted), an_tensor_release(r), an_tensor_release(out);
            if (dtype == AN_F64)
                test_assert_gradcheck(ctx, run_gather, (an_tensor *[]){logits, ids}, 2, NULL, "log_softmax_gather");
            an_tensor_release(logits), an_tensor_release(ids);
            test_ctx_free(ctx);
        }
    }
}
END_TEST

START_TEST(test_log_softmax_gather_agrees_with_cross_entropy) {
    an_ctx *ctx = test_ctx(14);
    an_tensor *logits = test_uniform(ctx, AN_F64, 2, (int64_t[]){8, 11}, -3, 3, false);
    an_tensor *ids = test_ids(ctx, AN_I64, 1, (int64_t[]){8}, 11);
    an_tensor *logp = an_log_softmax_gather(ctx, logits, ids);
    an_tensor *mean = an_mean(ctx, logp);
    an_tensor *ce = an_cross_entropy(ctx, logits, ids, NULL);
    ck_assert_double_eq_tol(-an_tensor_get(mean, 0), an_tensor_get(ce, 0), 1e-13);
    an_tensor_set(ids, 5, AN_IGNORE_INDEX); /* no ignore index here: every id must be a vocabulary entry */
    ck_assert_ptr_null(an_log_softmax_gather(ctx, logits, ids));
    ck_assert_int_eq(an_error_status(ctx), AN_ERR_INPUT);
    ck_assert_ptr_nonnull(strstr(an_error_message(ctx), "ids[5] = -100 is outside [0, 11)"));
    an_error_clear(ctx);
    an_tensor_release(logp), an_tensor_release(mean), an_tensor_release(ce);
    an_tensor_release(logits), an_tensor_release(ids);
    test_ctx_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("cross_entropy");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_cross_entropy_forward_and_backward_match_reference);
    tcase_add_test(tc, test_cross_entropy_gradcheck_with_ignored_rows_and_options);
    tcase_add_test(tc, test_custom_ignore_index_skips_those_targets);
    tcase_add_test(tc, test_normalizer_divides_the_summed_loss);
    tcase_add_test(tc, test_normalizer_makes_micro_batches_add_up_to_the_full_batch);
    tcase_add_test(tc, test_all_ignored_gives_zero_loss_and_zero_gradients);
    tcase_add_test(tc, test_target_out_of_range_is_an_input_error_naming_row_and_value);
    tcase_add_test(tc, test_linear_cross_entropy_equals_linear_then_cross_entropy);
    tcase_add_test(tc, test_linear_cross_entropy_gradcheck_with_uneven_chunks);
    tcase_add_test(tc, test_linear_cross_entropy_bf16_close_to_float64);
    tcase_add_test(tc, test_linear_cross_entropy_never_allocates_full_logits);
    tcase_add_test(tc, test_log_softmax_gather_matches_reference_and_gradcheck);
    tcase_add_test(tc, test_log_softmax_gather_agrees_with_cross_entropy);
    suite_add_tcase(s, tc);
    return test_run(s);
}
