/* test_util.c — shared helpers for the Check suites (see test_util.h). */
#include "test_util.h"

#include <math.h>
#include <stdlib.h>

#include "kernels/cuda.h"  /* an_cuda_memset, an_cuda_synchronize */
#include "model/load.h"   /* an_model_load */

an_ctx *test_ctx(uint64_t seed) {
    an_ctx *ctx = an_ctx_new(seed);
    ck_assert_ptr_nonnull(ctx);
    return ctx;
}

void test_ctx_free(an_ctx *ctx) {
    ck_assert_msg(an_error_status(ctx) == AN_OK, "error left in context: %s", an_error_message(ctx));
    an_tape_clear(ctx);
    ck_assert_msg(ctx->live_tensors == 0, "%lld tensors still alive at the end of the test",
                  (long long)ctx->live_tensors);
    an_ctx_free(ctx);
}

an_tensor *test_uniform(an_ctx *ctx, an_dtype dtype, int ndim, const int64_t *shape, double low, double high,
                        bool requires_grad) {
    an_tensor *t = an_tensor_new(ctx, dtype, AN_CPU, ndim, shape);
    ck_assert_msg(t != NULL, "%s", an_error_message(ctx));
    ck_assert_int_eq(an_tensor_fill_uniform(ctx, t, low, high), AN_OK);
    an_tensor_set_requires_grad(t, requires_grad);
    return t;
}

an_tensor *test_ids(an_ctx *ctx, an_dtype dtype, int ndim, const int64_t *shape, int64_t bound) {
    an_tensor *t = an_tensor_new(ctx, dtype, AN_CPU, ndim, shape);
    ck_assert_msg(t != NULL, "%s", an_error_message(ctx));
    for (int64_t i = 0; i < an_tensor_numel(t); i++) an_tensor_set(t, i, (double)(an_rng_u64(&ctx->rng) % (uint64_t)bound));
    return t;
}

void test_assert_close(const an_tensor *got, const double *want, double rtol, double atol, const char *what) {
    ck_assert_msg(got != NULL, "%s: no tensor", what);
    for (int64_t i = 0; i < an_tensor_numel(got); i++) {
        double g = an_tensor_get(got, i), w = want[i];
        ck_assert_msg(!isnan(g) && fabs(g - w) <= atol + rtol * fabs(w),
                      "%s: element %lld is %.9g, expected %.9g (rtol %g, atol %g)", what, (long long)i, g, w, rtol, atol);
    }
}

void test_assert_tensors_close(const an_tensor *got, const an_tensor *want, double rtol, double atol,
                               const char *what) {
    ck_assert_msg(got && want && an_tensor_numel(got) == an_tensor_numel(want), "%s: sizes differ", what);
    int64_t n = an_tensor_numel(want);
    double *w = malloc((size_t)(n ? n : 1) * sizeof *w);
    for (int64_t i = 0; i < n; i++) w[i] = an_tensor_get(want, i);
    test_assert_close(got, w, rtol, atol, what);
    free(w);
}

double test_scaled_error(const an_tensor *got, const an_tensor *want) {
    double worst = 0, scale = 0;
    for (int64_t i = 0; i < an_tensor_numel(want); i++) {
        double w = an_tensor_get(want, i), g = an_tensor_get(got, i);
        if (isnan(g)) return INFINITY;
        worst = fmax(worst, fabs(g - w));
        scale = fmax(scale, fabs(w));
    }
    return scale > 0 ? worst / scale : worst;
}

void test_assert_gradcheck(an_ctx *ctx, an_gradcheck_fn fn, an_tensor *const *inputs, int n, void *user,
                           const char *what) {
    an_gradcheck_result r;
    an_status st = an_gradcheck(ctx, fn, inputs, n, user, NULL, &r);
    ck_assert_msg(st == AN_OK, "%s: gradcheck could not run: %s", what, an_error_message(ctx));
    ck_assert_msg(r.points > 0, "%s: gradcheck checked no element (no input requires grad?)", what);
    ck_assert_msg(r.passed, "%s: gradient of input %d element %lld is %.12g, finite differences say %.12g", what,
                  r.worst_input, (long long)r.worst_index, r.worst_analytic, r.worst_numeric);
}

an_model *test_fixture_model(an_ctx *ctx, const char *family, an_dtype dtype, an_device device) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/models/tiny-%s", ANNEAL_SOURCE_DIR, family);
    an_model *m = NULL;
    an_status st = an_model_load(ctx, dir, dtype, device, &m);
    ck_assert_msg(st == AN_OK, "loading %s: %s", dir, an_error_message(ctx));
    return m;
}

an_ctx *test_gpu_ctx(uint64_t seed, const char *what) {
    if (!an_cuda_compiled()) {
        printf("SKIP %s: built without CUDA\n", what);
        return NULL;
    }
    an_ctx *ctx = test_ctx(seed);
    if (an_ctx_use_cuda(ctx, 0) != AN_OK) {
        printf("SKIP %s: %s\n", what, an_error_message(ctx));
        an_ctx_free(ctx);
        return NULL;
    }
    return ctx;
}

void test_ok(an_ctx *ctx, an_status st, const char *what) {
    ck_assert_msg(st == AN_OK, "%s: %s", what, an_error_message(ctx));
}

double *test_values(const an_tensor *t) {
    int64_t n = an_tensor_numel(t);
    double *v = malloc((size_t)(n ? n : 1) * sizeof *v);
    ck_assert_ptr_nonnull(v);
    for (int64_t i = 0; i < n; i++) v[i] = an_tensor_get(t, i);
    return v;
}

double *test_download(an_ctx *ctx, const an_tensor *dev) {
    test_ok(ctx, an_cuda_synchronize(ctx), "synchronize");
    an_tensor *h = an_tensor_to(ctx, dev, dev->dtype, AN_CPU);
    ck_assert_msg(h != NULL, "download: %s", an_error_message(ctx));
    double *v = test_values(h);
    an_tensor_release(h);
    return v;
}

test_pair test_pair_uniform(an_ctx *ctx, an_dtype dtype, int ndim, const int64_t *shape, double lo, double hi) {
    test_pair p;
    p.host = test_uniform(ctx, dtype, ndim, shape, lo, hi, false);
    p.dev = an_tensor_to(ctx, p.host, dtype, AN_CUDA);
    ck_assert_msg(p.dev != NULL, "upload: %s", an_error_message(ctx));
    p.v = test_values(p.host);
    return p;
}

void test_pair_release(test_pair p) {
    an_tensor_release(p.host);
    an_tensor_release(p.dev);
    free(p.v);
}

an_tensor *test_poisoned_gpu(an_ctx *ctx, an_dtype dtype, int ndim, const int64_t *shape) {
    an_tensor *t = an_tensor_new(ctx, dtype, AN_CUDA, ndim, shape);
    ck_assert_msg(t != NULL, "alloc: %s", an_error_message(ctx));
    test_ok(ctx, an_cuda_memset(ctx, an_tensor_data(t), 0xFF, an_tensor_nbytes(t)), "poison");
    return t;
}

void test_add_case(Suite *suite, const char *name, const TTest *test) {
    TCase *tc = tcase_create(name);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test);
    suite_add_tcase(suite, tc);
}

int test_run(Suite *suite) {
    SRunner *runner = srunner_create(suite);
    srunner_run_all(runner, CK_NORMAL);
    int failed = srunner_ntests_failed(runner);
    srunner_free(runner);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
