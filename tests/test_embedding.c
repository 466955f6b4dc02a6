/* test_embedding.c — an_embedding: forward against a direct row gather (i32 and i64 ids, ids of
 * every rank, f64/f32/bf16 tables), repeated ids summing their gradients, a float64 gradient
 * check of the table gradient, and out-of-range ids rejected with the id and V named. */
#include <string.h>

#include "support/test_util.h"

static an_tensor *ids_from(an_ctx *ctx, an_dtype dtype, int ndim, const int64_t *shape, const int64_t *values) {
    an_tensor *t = an_tensor_new(ctx, dtype, AN_CPU, ndim, shape);
    ck_assert_ptr_nonnull(t);
    for (int64_t i = 0; i < an_tensor_numel(t); i++) an_tensor_set(t, i, (double)values[i]);
    return t;
}

START_TEST(test_embedding_forward_gathers_rows_for_every_ids_rank_and_dtype) {
    static const struct {
        int ndim;
        int64_t shape[3];
    } id_shapes[] = {{0, {0}}, {1, {5}}, {2, {2, 3}}, {3, {1, 1, 1}}, {3, {2, 3, 2}}};
    const an_dtype table_dtypes[] = {AN_F64, AN_F32, AN_BF16};
    an_ctx *ctx = test_ctx(11);
    for (size_t s = 0; s < sizeof id_shapes / sizeof *id_shapes; s++) {
        for (int di = 0; di < 2; di++) {
            for (size_t tdi = 0; tdi < sizeof table_dtypes / sizeof *table_dtypes; tdi++) {
                const int64_t V = 7, D = 5;
                an_tensor *table = test_uniform(ctx, table_dtypes[tdi], 2, (int64_t[]){V, D}, -3, 3, false);
                an_tensor *ids = test_ids(ctx, di ? AN_I64 : AN_I32, id_shapes[s].ndim, id_shapes[s].shape, V);
                an_tensor *out = an_embedding(ctx, ids, table);
                ck_assert_msg(out != NULL, "%s", an_error_message(ctx));
                ck_assert_int_eq(out->dtype, table->dtype);
                ck_assert_int_eq(out->ndim, ids->ndim + 1);
                for (int d = 0; d < ids->ndim; d++) ck_assert_int_eq(out->shape[d], ids->shape[d]);
                ck_assert_int_eq(out->shape[ids->ndim], D);
                int64_t n = an_tensor_numel(ids);
                double want[12 * 5];
                for (int64_t i = 0; i < n; i++) {
                    int64_t row = (int64_t)an_tensor_get(ids, i);
                    for (int64_t j = 0; j < D; j++) want[i * D + j] = an_tensor_get(table, row * D + j);
                }
                test_assert_close(out, want, 0, 0, "embedding gather"); /* a gather is exact */
                an_tensor_release(out);
                an_tensor_release(ids);
                an_tensor_release(table);
            }
        }
    }
    ck_assert_int_eq(an_tape_length(ctx), 0); /* nothing required grad */
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_embedding_repeated_ids_sum_their_gradients) {
    an_ctx *ctx = test_ctx(12);
    const int64_t V = 6, D = 3, n = 6;
    const int64_t values[] = {2, 0, 2, 2, 5, 0}; /* rows 1, 3, 4 unused */
    for (int di = 0; di < 2; di++) {
        an_tensor *table = test_uniform(ctx, AN_F64, 2, (int64_t[]){V, D}, -1, 1, true);
        an_tensor *ids = ids_from(ctx, di ? AN_I64 : AN_I32, 2, (int64_t[]){2, 3}, values);
        an_tensor *r = test_uniform(ctx, AN_F64, 3, (int64_t[]){2, 3, D}, -1, 1, false);
        an_tensor *out = an_embedding(ctx, ids, table);
        an_tensor *weighted = an_mul(ctx, out, r);
        an_tensor *loss = an_sum(ctx, weighted);
        ck_assert_msg(loss != NULL, "%s", an_error_message(ctx));
        ck_assert_int_eq(an_backward(ctx, loss), AN_OK);
        ck_assert_ptr_nonnull(table->grad);
        ck_assert_ptr_null(ids->grad);
        double want[6 * 3] = {0};
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < D; j++) want[values[i] * D + j] += an_tensor_get(r, i * D + j);
        test_assert_close(table->grad, want, 1e-15, 0, "embedding table gradient");
        for (int64_t j = 0; j < D; j++) {
            ck_assert(an_tensor_get(table->grad, 1 * D + j) == 0.0); /* untouched rows stay exactly 0 */
            ck_assert(an_tensor_get(table->grad, 3 * D + j) == 0.0);
        }
        an_tensor_release(loss);
        an_tensor_release(weighted);
        an_tensor_release(out);
        an_tensor_release(r);
        an_tensor_release(ids);
        an_tensor_release(table);
    }
    test_ctx_free(ctx);
}
END_TEST

static an_tensor *run_embedding(an_ctx *ctx, an_tensor *const *in, void *user) {
    return an_embedding(ctx, in[0], in[1]);
}

START_TEST(test_embedding_table_gradcheck) {
    static const struct {
        int64_t V, D;
        int ndim;
        int64_t shape[3];
    } cases[] = {
        {1, 1, 1, {3}},        /* one row used three times */
        {5, 4, 2, {3, 4}},     /* 12 ids over 5 rows: repeats guaranteed */
        {13, 7, 3, {2, 1, 3}}, /* primes, some rows unused */
        {3, 2, 0, {0}},        /* a scalar id */
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        an_ctx *ctx = test_ctx(100 + c);
        an_tensor *table = test_uniform(ctx, AN_F64, 2, (int64_t[]){cases[c].V, cases[c].D}, -2, 2, true);
        an_tensor *ids = test_ids(ctx, c % 2 ? AN_I64 : AN_I32, cases[c].ndim, cases[c].shape, cases[c].V);
        test_assert_gradcheck(ctx, run_embedding, (an_tensor *[]){ids, table}, 2, NULL, "embedding");
        an_tensor_release(ids);
        an_tensor_release(table);
        test_ctx_free(ctx);
    }
}
END_TEST

static void expect_input_error(an_ctx *ctx, an_tensor *out, const char *part1, const char *part2) {
    ck_assert_ptr_null(out);
    ck_assert_int_eq(an_error_status(ctx), AN_ERR_INPUT);
    ck_assert_msg(strstr(an_error_message(ctx), part1) != NULL, "message '%s' lacks '%s'", an_error_message(ctx),
                  part1);
    ck_assert_msg(!part2 || strstr(an_error_message(ctx), part2) != NULL, "message '%s' lacks '%s'",
                  an_error_message(ctx), part2);
    an_error_clear(ctx);
}

START_TEST(test_embedding_rejects_ids_outside_the_table) {
    an_ctx *ctx = test_ctx(13);
    an_tensor *table = test_uniform(ctx, AN_F32, 2, (int64_t[]){7, 4}, -1, 1, true);
    for (int di = 0; di < 2; di++) {
        an_dtype dtype = di ? AN_I64 : AN_I32;
        an_tensor *ids = ids_from(ctx, dtype, 1, (int64_t[]){4}, (int64_t[]){0, 6, 7, 1});
        expect_input_error(ctx, an_embedding(ctx, ids, table), "id 7", "V = 7");
        an_tensor_release(ids);
        ids = ids_from(ctx, dtype, 2, (int64_t[]){2, 2}, (int64_t[]){3, 2, 1, -1});
        expect_input_error(ctx, an_embedding(ctx, ids, table), "id -1", "V = 7");
        an_tensor_release(ids);
    }
    ck_assert_int_eq(an_tape_length(ctx), 0); /* a failed op records nothing */

    an_tensor *float_ids = test_uniform(ctx, AN_F32, 1, (int64_t[]){2}, 0, 1, false);
    expect_input_error(ctx, an_embedding(ctx, float_ids, table), "ids must be i32 or i64", NULL);
    an_tensor *flat = test_uniform(ctx, AN_F32, 1, (int64_t[]){7}, -1, 1, false);
    an_tensor *ids = test_ids(ctx, AN_I32, 1, (int64_t[]){2}, 7);
    expect_input_error(ctx, an_embedding(ctx, ids, flat), "must be (V, D)", NULL);
    an_tensor *ids4 = test_ids(ctx, AN_I32, 4, (int64_t[]){1, 1, 1, 2}, 7);
    expect_input_error(ctx, an_embedding(ctx, ids4, table), "too many dims", NULL);
    ck_assert_ptr_null(an_embedding(ctx, NULL, table)); /* a failed earlier op propagates as NULL */
    an_tensor_release(ids4);
    an_tensor_release(ids);
    an_tensor_release(flat);
    an_tensor_release(float_ids);
    an_tensor_release(table);
    test_ctx_free(ctx);
}
END_TEST

/* an_embedding_trusted: the same rows as an_embedding, records nothing, refuses a table that
 * requires grad while recording, and on the CPU still rejects an id outside the table. */
START_TEST(test_embedding_trusted_is_inference_only_and_still_checked_on_cpu) {
    an_ctx *ctx = test_ctx(14);
    an_tensor *table = test_uniform(ctx, AN_F32, 2, (int64_t[]){7, 4}, -1, 1, true);
    an_tensor *ids = ids_from(ctx, AN_I64, 1, (int64_t[]){3}, (int64_t[]){6, 0, 3});
    expect_input_error(ctx, an_embedding_trusted(ctx, ids, table), "inference only", NULL);
    an_no_grad_begin(ctx);
    an_tensor *want = an_embedding(ctx, ids, table), *got = an_embedding_trusted(ctx, ids, table);
    ck_assert(want && got);
    ck_assert_int_eq(memcmp(an_tensor_data(want), an_tensor_data(got), an_tensor_nbytes(want)), 0);
    an_tensor *bad = ids_from(ctx, AN_I64, 1, (int64_t[]){2}, (int64_t[]){1, 7});
    expect_input_error(ctx, an_embedding_trusted(ctx, bad, table), "id 7", "V = 7");
    an_no_grad_end(ctx);
    ck_assert_int_eq(an_tape_length(ctx), 0);
    an_tensor_release(bad), an_tensor_release(want), an_tensor_release(got);
    an_tensor_release(ids), an_tensor_release(table);
    test_ctx_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("embedding");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_embedding_forward_gathers_rows_for_every_ids_rank_and_dtype);
    tcase_add_test(tc, test_embedding_repeated_ids_sum_their_gradients);
    tcase_add_test(tc, test_embedding_table_gradcheck);
    tcase_add_test(tc, test_embedding_rejects_ids_outside_the_table);
    tcase_add_test(tc, test_embedding_trusted_is_inference_only_and_still_checked_on_cpu);
    suite_add_tcase(s, tc);
    return test_run(s);
}
