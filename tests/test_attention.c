/* test_attention.c — causal grouped-query attention with packed documents: the forward against a
 * naive float64 reference that materialises every score, packed rows against each document run
 * alone, float64 gradient checks of q, k and v, the shape errors, and a CPU timing print. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "support/test_util.h"

typedef struct {
    int64_t B, T, Hq, Hkv, D;
} dims;

/* out (B, T, Hq, D): scores (B, Hq, T, T) materialised, masked with -inf, softmaxed, times v. */
static void reference(const an_tensor *q, const an_tensor *k, const an_tensor *v, const an_tensor *segments,
                      double scale, double *out) {
    int64_t B = q->shape[0], T = q->shape[1], Hq = q->shape[2], D = q->shape[3], Hkv = k->shape[2];
    double *p = malloc((size_t)(B * Hq * T * T) * sizeof *p);
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < Hq; h++) {
            int64_t hk = h / (Hq / Hkv);
            for (int64_t i = 0; i < T; i++) {
                double *row = p + ((b * Hq + h) * T + i) * T, max = -INFINITY, sum = 0;
                for (int64_t j = 0; j < T; j++) {
                    bool masked = j > i || (segments && an_tensor_get(segments, b * T + i) !=
                                                            an_tensor_get(segments, b * T + j));
                    double dot = 0;
                    for (int64_t d = 0; d < D; d++)
                        dot += an_tensor_get(q, ((b * T + i) * Hq + h) * D + d) *
                               an_tensor_get(k, ((b * T + j) * Hkv + hk) * D + d);
                    row[j] = masked ? -INFINITY : scale * dot;
                    if (row[j] > max) max = row[j];
                }
                for (int64_t j = 0; j < T; j++) sum += row[j] = exp(row[j] - max);
                for (int64_t j = 0; j < T; j++) row[j] /= sum;
                for (int64_t d = 0; d < D; d++) {
                    double o = 0;
                    for (int64_t j = 0; j < T; j++) o += row[j] * an_tensor_get(v, ((b * T + j) * Hkv + hk) * D + d);
                    out[((b * T + i) * Hq + h) * D + d] = o;
                }
            }
        }
    free(p);
}

static an_tensor *make_segments(an_ctx *ctx, an_dtype dtype, int64_t B, int64_t T, const int64_t *values) {
    an_tensor *s = an_tensor_new(ctx, dtype, AN_CPU, 2, (int64_t[]){B, T});
    ck_assert_ptr_nonnull(s);
    for (int64_t i = 0; i < B * T; i++) an_tensor_set(s, i, (double)values[i]);
    return s;
}

typedef enum { SEG_NONE, SEG_RUNS, SEG_SCATTERED } seg_kind;

/* NULL, contiguous documents of random lengths, or ids in [0, 3) in any order (the mask is
 * defined by equality, not by contiguity). */
static an_tensor *random_segments(an_ctx *ctx, an_dtype dtype, int64_t B, int64_t T, seg_kind kind) {
    if (kind == SEG_NONE) return NULL;
    int64_t *v = malloc((size_t)(B * T) * sizeof *v);
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++) {
            double u = an_rng_uniform(&ctx->rng);
            if (kind == SEG_SCATTERED) v[b * T + t] = (int64_t)(u * 3);
            else v[b * T + t] = t == 0 ? 10 * b : v[b * T + t - 1] + (u < 0.2);
        }
    an_tensor *s = make_segments(ctx, dtype, B, T, v);
    free(v);
    return s;
}

static void inputs(an_ctx *ctx, an_dtype dtype, dims s, bool requires_grad, an_tensor **q, an_tensor **k,
                   an_tensor **v) {
    *q = test_uniform(ctx, dtype, 4, (int64_t[]){s.B, s.T, s.Hq, s.D}, -2, 2, requires_grad);
    *k = test_uniform(ctx, dtype, 4, (int64_t[]){s.B, s.T, s.Hkv, s.D}, -2, 2, requires_grad);
    *v = test_uniform(ctx, dtype, 4, (int64_t[]){s.B, s.T, s.Hkv, s.D}, -2, 2, requires_grad);
}

static void release4(an_tensor *a, an_tensor *b, an_tensor *c, an_tensor *d) {
    an_tensor_release(a), an_tensor_release(b), an_tensor_release(c), an_tensor_release(d);
}

static void check_forward(an_ctx *ctx, an_tensor *q, an_tensor *k, an_tensor *v, an_tensor *seg, double scale,
                          double rtol, double atol, const char *what) {
    an_tensor *out = an_attention(ctx, q, k, v, seg, scale);
    ck_assert_msg(out != NULL, "%s: %s", what, an_error_message(ctx));
    ck_assert_int_eq(out->ndim, 4);
    for (int i = 0; i < 4; i++) ck_assert_int_eq(out->shape[i], q->shape[i]);
    ck_assert_int_eq(out->dtype, q->dtype);
    double *want = malloc((size_t)an_tensor_numel(q) * sizeof *want);
    reference(q, k, v, seg, scale, want);
    test_assert_close(out, want, rtol, atol, what);
    free(want);
    an_tensor_release(out);
}

static const dims shapes[] = {
    {1, 1, 1, 1, 1},   {2, 1, 2, 1, 3},  /* T = 1 */
    {2, 7, 3, 3, 5},                     /* Hq = Hkv */
    {1, 7, 6, 2, 16},                    /* groups of 3 */
    {2, 9, 4, 1, 3},                     /* one kv head for 4 query heads */
    {1, 5, 2, 2, 16},  {2, 131, 4, 2, 8}, /* several 64-row tiles, a ragged last one */
};

START_TEST(test_forward_matches_naive_reference_at_many_shapes) {
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++)
        for (int kind = SEG_NONE; kind <= SEG_SCATTERED; kind++) {
            an_ctx *ctx = test_ctx(100 + i);
            dims s = shapes[i];
            an_tensor *q, *k, *v;
            inputs(ctx, AN_F64, s, false, &q, &k, &v);
            an_tensor *seg = random_segments(ctx, kind == SEG_RUNS ? AN_I32 : AN_I64, s.B, s.T, kind);
            char what[128];
            double scale = i % 2 ? 1.0 / sqrt((double)s.D) : -0.7;
            snprintf(what, sizeof what, "forward (%lld, %lld, %lld, %lld, %lld) segments %d", (long long)s.B,
                     (long long)s.T, (long long)s.Hq, (long long)s.Hkv, (long long)s.D, kind);
            check_forward(ctx, q, k, v, seg, scale, 1e-12, 1e-13, what);
            release4(q, k, v, seg);
            test_ctx_free(ctx);
        }
}
END_TEST

/* a (B, T, H, D) -> rows [start, start+len) of batch entry b, as (1, len, H, D). */
static an_tensor *document(an_ctx *ctx, const an_tensor *a, int64_t b, int64_t start, int64_t len) {
    int64_t T = a->shape[1], row = a->shape[2] * a->shape[3];
    an_tensor *d = an_tensor_new(ctx, a->dtype, AN_CPU, 4, (int64_t[]){1, len, a->shape[2], a->shape[3]});
    for (int64_t i = 0; i < len * row; i++) an_tensor_set(d, i, an_tensor_get(a, (b * T + start) * row + i));
    return d;
}

START_TEST(test_packed_rows_equal_each_document_alone) {
    const int64_t T = 8, values[2][8] = {{0, 0, 0, 1, 1, 2, 2, 2}, {4, 4, 4, 4, 4, 4, 4, 9}};
    for (int d = 0; d < 2; d++) {
        an_ctx *ctx = test_ctx(7 + d);
        dims s = {2, T, 6, 2, 4};
        an_tensor *q, *k, *v;
        inputs(ctx, AN_F64, s, false, &q, &k, &v);
        an_tensor *seg = make_segments(ctx, d ? AN_I64 : AN_I32, 2, T, &values[0][0]);
        double scale = 0.5;
        check_forward(ctx, q, k, v, seg, scale, 1e-12, 1e-13, "packed forward");
        an_tensor *packed = an_attention(ctx, q, k, v, seg, scale);
        ck_assert_ptr_nonnull(packed);
        for (int64_t b = 0; b < 2; b++)
            for (int64_t start = 0, end; start < T; start = end) {
                for (end = start + 1; end < T && values[b][end] == values[b][start]; end++) {}
                an_tensor *dq = document(ctx, q, b, start, end - start), *dk = document(ctx, k, b, start, end - start);
                an_tensor *dv = document(ctx, v, b, start, end - start);
                an_tensor *alone = an_attention(ctx, dq, dk, dv, NULL, scale);
                ck_assert_msg(alone != NULL, "%s", an_error_message(ctx));
                an_tensor *rows = document(ctx, packed, b, start, end - start);
                char what[128];
                snprintf(what, sizeof what, "document [%lld, %lld) of batch %lld", (long long)start, (long long)end,
                         (long long)b);
                test_assert_tensors_close(rows, alone, 1e-13, 1e-14, what);
                release4(dq, dk, dv, alone);
                an_tensor_release(rows);
            }
        an_tensor_release(packed);
        release4(q, k, v, seg);
        test_ctx_free(ctx);
    }
}
END_TEST

typedef struct {
    an_tensor *segments;
    double scale;
    bool self; /* attention(x, x, x): one input used three times */
} attention_args;

static an_tensor *run_attention(an_ctx *ctx, an_tensor *const *in, void *user) {
    attention_args *a = user;
    if (a->self) return an_attention(ctx, in[0], in[0], in[0], a->segments, a->scale);
    return an_attention(ctx, in[0], in[1], in[2], a->segments, a->scale);
}

START_TEST(test_gradients_of_q_k_v) {
    static const struct {
        dims s;
        seg_kind segments;
        bool grad_q, grad_k, grad_v;
    } cases[] = {
        {{1, 1, 3, 1, 2}, SEG_NONE, 1, 1, 1},      /* T = 1, GQA 3:1 */
        {{1, 4, 2, 2, 1}, SEG_NONE, 1, 1, 1},      /* D = 1 */
        {{2, 5, 4, 2, 3}, SEG_RUNS, 1, 1, 1},      /* GQA 2:1, packed */
        {{1, 7, 6, 2, 4}, SEG_SCATTERED, 1, 1, 1}, /* GQA 3:1, segments in any order */
        {{2, 6, 4, 1, 3}, SEG_RUNS, 1, 1, 1},      /* one kv head */
        {{1, 70, 2, 1, 2}, SEG_RUNS, 1, 1, 1},     /* two tiles */
        {{1, 70, 2, 2, 2}, SEG_NONE, 1, 1, 1},
        {{1, 6, 4, 2, 3}, SEG_RUNS, 0, 1, 1},      /* q frozen */
        {{1, 6, 4, 2, 3}, SEG_RUNS, 0, 0, 1},      /* only v */
        {{1, 6, 4, 2, 3}, SEG_NONE, 1, 0, 0},      /* only q */
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        an_ctx *ctx = test_ctx(300 + i);
        dims s = cases[i].s;
        an_tensor *q, *k, *v;
        inputs(ctx, AN_F64, s, true, &q, &k, &v);
        an_tensor_set_requires_grad(q, cases[i].grad_q);
        an_tensor_set_requires_grad(k, cases[i].grad_k);
        an_tensor_set_requires_grad(v, cases[i].grad_v);
        attention_args args = {random_segments(ctx, AN_I64, s.B, s.T, cases[i].segments), 0.8, false};
        char what[64];
        snprintf(what, sizeof what, "attention gradients, case %zu", i);
        test_assert_gradcheck(ctx, run_attention, (an_tensor *[]){q, k, v}, 3, &args, what);
        release4(q, k, v, args.segments);
        test_ctx_free(ctx);
    }
}
END_TEST

START_TEST(test_gradient_of_one_tensor_used_as_q_k_and_v) {
    an_ctx *ctx = test_ctx(41);
    an_tensor *x = test_uniform(ctx, AN_F64, 4, (int64_t[]){2, 5, 3, 2}, -1, 1, true);
    attention_args args = {make_segments(ctx, AN_I32, 2, 5, (int64_t[]){0, 0, 1, 1, 1, 3, 3, 3, 3, 4}), 1.1, true};
    test_assert_gradcheck(ctx, run_attention, &x, 1, &args, "attention(x, x, x)");
    an_tensor_release(x);
    an_tensor_release(args.segments);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_f32_matches_f64_reference) {
    an_ctx *ctx = test_ctx(13);
    dims s = {2, 67, 4, 2, 8};
    an_tensor *q, *k, *v;
    inputs(ctx, AN_F32, s, false, &q, &k, &v);
    an_tensor *seg = random_segments(ctx, AN_I32, s.B, s.T, SEG_RUNS);
    check_forward(ctx, q, k, v, seg, 0.35, 1e-6, 1e-7, "f32 forward");
    release4(q, k, v, seg);
    test_ctx_free(ctx);
}
END_TEST

static void expect_error(an_ctx *ctx, an_tensor *out, const char *needle, const char *needle2) {
    ck_assert_ptr_null(out);
    ck_assert_int_eq(an_error_status(ctx), AN_ERR_INPUT);
    ck_assert_msg(strstr(an_error_message(ctx), needle) != NULL, "message '%s' lacks '%s'", an_error_message(ctx),
                  needle);
    ck_assert_msg(!needle2 || strstr(an_error_message(ctx), needle2) != NULL, "message '%s' lacks '%s'",
                  an_error_message(ctx), needle2);
    an_error_clear(ctx);
}

START_TEST(test_bad_shapes_are_errors) {
    an_ctx *ctx = test_ctx(3);
    an_tensor *q, *k, *v, *q8, *k3, *v3;
    inputs(ctx, AN_F64, (dims){2, 5, 4, 2, 3}, false, &q, &k, &v);
    inputs(ctx, AN_F64, (dims){2, 5, 8, 3, 3}, false, &q8, &k3, &v3);
    expect_error(ctx, an_attention(ctx, q8, k3, v3, NULL, 1), "Hkv = 3", "Hq = 8");

    an_tensor *v_other = test_uniform(ctx, AN_F64, 4, (int64_t[]){2, 5, 2, 4}, -1, 1, false);
    expect_error(ctx, an_attention(ctx, q, k, v_other, NULL, 1), "k (2, 5, 2, 3)", "differ");
    an_tensor *k_d = test_uniform(ctx, AN_F64, 4, (int64_t[]){2, 5, 2, 4}, -1, 1, false);
    expect_error(ctx, an_attention(ctx, q, k_d, v_other, NULL, 1), "head_dim", NULL);
    an_tensor *k_t = test_uniform(ctx, AN_F64, 4, (int64_t[]){2, 6, 2, 3}, -1, 1, false);
    expect_error(ctx, an_attention(ctx, q, k_t, k_t, NULL, 1), "time", NULL);
    an_tensor *q3 = test_uniform(ctx, AN_F64, 3, (int64_t[]){2, 5, 12}, -1, 1, false);
    expect_error(ctx, an_attention(ctx, q3, k, v, NULL, 1), "4-D", NULL);
    an_tensor *q32 = test_uniform(ctx, AN_F32, 4, (int64_t[]){2, 5, 4, 3}, -1, 1, false);
    expect_error(ctx, an_attention(ctx, q32, k, v, NULL, 1), "f64", NULL);

    an_tensor *seg_short = test_ids(ctx, AN_I32, 2, (int64_t[]){2, 4}, 3);
    expect_error(ctx, an_attention(ctx, q, k, v, seg_short, 1), "segments (2, 4)", "(B, T) = (2, 5)");
    an_tensor *seg_float = test_uniform(ctx, AN_F32, 2, (int64_t[]){2, 5}, 0, 3, false);
    expect_error(ctx, an_attention(ctx, q, k, v, seg_float, 1), "segments must be i32 or i64", NULL);

    ck_assert_ptr_null(an_attention(ctx, q, NULL, v, NULL, 1)); /* a failed earlier op propagates */
    ck_assert_int_eq(an_error_status(ctx), AN_OK);
    release4(q, k, v, q8);
    release4(k3, v3, v_other, k_d);
    release4(k_t, q3, q32, seg_short);
    an_tensor_release(seg_float);
    test_ctx_free(ctx);
}
END_TEST

static double seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Not an assertion: prints what one layer's attention costs in CPU training of a small model. */
START_TEST(test_cpu_timing_print) {
    an_ctx *ctx = test_ctx(99);
    dims s = {8, 256, 8, 2, 32};
    an_tensor *q, *k, *v;
    inputs(ctx, AN_F32, s, true, &q, &k, &v);
    double t0 = seconds();
    an_tensor *out = an_attention(ctx, q, k, v, NULL, 1.0 / sqrt(32.0));
    double t1 = seconds();
    ck_assert_msg(out != NULL, "%s", an_error_message(ctx));
    an_tensor *loss = an_sum(ctx, out);
    double t2 = seconds();
    ck_assert_int_eq(an_backward(ctx, loss), AN_OK);
    double t3 = seconds();
    ck_assert_ptr_nonnull(q->grad);
    ck_assert_ptr_nonnull(k->grad);
    ck_assert_ptr_nonnull(v->grad);
    printf("attention CPU f32 B=8 T=256 Hq=8 Hkv=2 D=32: forward %.1f ms, backward %.1f ms\n", 1e3 * (t1 - t0),
           1e3 * (t3 - t2));
    an_tensor_release(loss);
    an_tensor_release(out);
    an_tensor_release(q), an_tensor_release(k), an_tensor_release(v);
    test_ctx_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("attention");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_forward_matches_naive_reference_at_many_shapes);
    tcase_add_test(tc, test_packed_rows_equal_each_document_alone);
    tcase_add_test(tc, test_gradients_of_q_k_v);
    tcase_add_test(tc, test_gradient_of_one_tensor_used_as_q_k_and_v);
    tcase_add_test(tc, test_f32_matches_f64_reference);
    tcase_add_test(tc, test_bad_shapes_are_errors);
    tcase_add_test(tc, test_cpu_timing_print);
    suite_add_tcase(s, tc);
    return test_run(s);
}
