/* test_util.h — what every Check suite shares: contexts that must end with no live tensors,
 * seeded random tensors, closeness assertions, gradient-check assertions, and GPU skips. */
#ifndef AN_TEST_UTIL_H
#define AN_TEST_UTIL_H

#include <check.h>
#include <stdio.h>

#include "autograd/gradcheck.h"
#include "autograd/ops.h"
#include "autograd/tape.h"

/* A CPU context seeded with `seed`; test_ctx_free fails the test if tensors are still alive or
 * an error is left recorded. */
an_ctx *test_ctx(uint64_t seed);
void test_ctx_free(an_ctx *ctx);

/* Uniform values in [low, high) on the CPU (never all zeros for low < high). */
an_tensor *test_uniform(an_ctx *ctx, an_dtype dtype, int ndim, const int64_t *shape, double low, double high,
                        bool requires_grad);
/* Integer tensor (i32/i64) with values in [0, bound). */
an_tensor *test_ids(an_ctx *ctx, an_dtype dtype, int ndim, const int64_t *shape, int64_t bound);

/* Fails unless |got[i] - want[i]| <= atol + rtol * |want[i]| for every element, and no NaN. */
void test_assert_close(const an_tensor *got, const double *want, double rtol, double atol, const char *what);
void test_assert_tensors_close(const an_tensor *got, const an_tensor *want, double rtol, double atol,
                               const char *what);
/* max |got - want| / max |want| over the elements (the error scale-free model comparisons use);
 * infinity when got has a NaN. */
double test_scaled_error(const an_tensor *got, const an_tensor *want);
/* Runs an_gradcheck and fails with the worst element when it does not pass. */
void test_assert_gradcheck(an_ctx *ctx, an_gradcheck_fn fn, an_tensor *const *inputs, int n, void *user,
                           const char *what);

/* A context on the first GPU, or NULL after printing "SKIP <what>: <reason>" (CPU-only build
 * or machine). */
an_ctx *test_gpu_ctx(uint64_t seed, const char *what);

/* The fixture model tests/fixtures/models/tiny-<family> (qwen2, llama) loaded in dtype on device;
 * fails the test when it does not load. */
struct an_model;
struct an_model *test_fixture_model(an_ctx *ctx, const char *family, an_dtype dtype, an_device device);

/* Fails (naming `what` and ctx's message) unless st is AN_OK. */
void test_ok(an_ctx *ctx, an_status st, const char *what);
/* The elements of a CPU tensor as doubles (malloc'ed; caller frees). */
double *test_values(const an_tensor *t);
/* Synchronises the device (surfacing asynchronous errors, failing the test on one) and returns a
 * CUDA tensor's values on the host as test_values does (malloc'd; the caller frees). */
double *test_download(an_ctx *ctx, const an_tensor *dev);
/* A new CUDA tensor whose every byte is 0xFF (NaN in f32, bf16 and f16), so an output a kernel
 * fails to write cannot pass a comparison. */
/* A random tensor on the host, its copy on the GPU, and its stored values widened to float64. */
typedef struct {
    an_tensor *host, *dev;
    double *v; /* (numel) malloc'd */
} test_pair;
/* test_uniform(ctx, dtype, ndim, shape, lo, hi) uploaded to CUDA (fails the test if the upload does). */
test_pair test_pair_uniform(an_ctx *ctx, an_dtype dtype, int ndim, const int64_t *shape, double lo, double hi);
void test_pair_release(test_pair p);
an_tensor *test_poisoned_gpu(an_ctx *ctx, an_dtype dtype, int ndim, const int64_t *shape);

/* Adds `test` as a test case of its own named `name` (timeout 300 s), so CK_RUN_CASE=name runs it alone. */
void test_add_case(Suite *suite, const char *name, const TTest *test);
/* Runs a suite with Check's runner; returns the process exit code. */
int test_run(Suite *suite);

#endif
