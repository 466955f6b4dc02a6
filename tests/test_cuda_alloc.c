/* test_cuda_alloc.c — the caching CUDA allocator on a real device: a freed block is handed out
 * again with no cudaMalloc, small blocks split one segment, a training-like loop (linear, silu,
 * linear, mean of squares, backward) makes no cudaMalloc or cudaFree after its first step and
 * gives bit-identical losses and gradients every step, cudaMalloc failure releases the cache and
 * retries, an impossible request fails with a clear message and leaves the allocator usable, and
 * an_cuda_empty_cache gives memory back to the device. Without a GPU every test prints SKIP. */
#include <string.h>

#include "kernels/cuda.h"  /* an_cuda_memory_stats, an_cuda_empty_cache */
#include "support/test_util.h"

#define MiB ((size_t)1 << 20)

static an_ctx *gpu_ctx(const char *what) {
    an_ctx *ctx = test_gpu_ctx(3, what);
    fflush(stdout);
    return ctx;
}

static an_cuda_mem_stats stats_of(an_ctx *ctx) {
    an_cuda_mem_stats m;
    ck_assert_msg(an_cuda_memory_stats(ctx, &m) == AN_OK, "%s", an_error_message(ctx));
    ck_assert_uint_eq(m.tensor_bytes, ctx->mem[AN_CUDA].current);
    ck_assert_uint_eq(m.reserved, m.in_use + m.cached);
    ck_assert_uint_ge(m.in_use, m.tensor_bytes);
    ck_assert_uint_ge(m.peak_reserved, m.reserved);
    ck_assert_int_eq(m.cuda_mallocs - m.cuda_frees, m.segments);
    return m;
}

static an_tensor *cuda_f32(an_ctx *ctx, int64_t n) {
    an_tensor *t = an_tensor_new(ctx, AN_F32, AN_CUDA, 1, &n);
    ck_assert_msg(t != NULL, "%s", an_error_message(ctx));
    return t;
}

START_TEST(test_freed_block_is_reused_and_small_blocks_share_a_segment) {
    an_ctx *ctx = gpu_ctx("cuda alloc reuse");
    if (!ctx) return;
    an_cuda_mem_stats m0 = stats_of(ctx);
    ck_assert_int_ge(m0.cuda_mallocs, 1); /* the cuBLASLt workspace */
    an_tensor *a = cuda_f32(ctx, 1000);   /* 4000 bytes: a 4096-byte block of a new 2 MiB segment */
    void *pa = an_tensor_data(a);
    an_cuda_mem_stats m1 = stats_of(ctx);
    ck_assert_int_eq(m1.cuda_mallocs, m0.cuda_mallocs + 1);
    ck_assert_uint_eq(m1.tensor_bytes, m0.tensor_bytes + 4000);
    an_tensor *b = cuda_f32(ctx, 1000); /* split from the same segment, right after a */
    ck_assert_ptr_eq(an_tensor_data(b), (char *)pa + 4096);
    an_tensor_release(a);
    an_tensor *c = cuda_f32(ctx, 1000); /* same size: a's block */
    ck_assert_ptr_eq(an_tensor_data(c), pa);
    an_tensor_release(c);
    an_tensor *d = cuda_f32(ctx, 300); /* smaller: the same block again */
    ck_assert_ptr_eq(an_tensor_data(d), pa);
    an_tensor *big = cuda_f32(ctx, 3 << 20); /* 12 MiB: the large pool */
    void *pbig = an_tensor_data(big);
    an_tensor_release(big);
    big = cuda_f32(ctx, 2 << 20); /* 8 MiB from the cached 12 MiB block */
    ck_assert_ptr_eq(an_tensor_data(big), pbig);
    an_cuda_mem_stats m2 = stats_of(ctx);
    ck_assert_int_eq(m2.cuda_mallocs, m1.cuda_mallocs + 1);
    ck_assert_int_eq(m2.cuda_frees, 0);
    an_tensor_release(big);
    an_tensor_release(b);
    an_tensor_release(d);
    ck_assert_uint_eq(stats_of(ctx).tensor_bytes, m0.tensor_bytes);
    ck_assert_uint_eq(stats_of(ctx).in_use, m0.in_use);
    test_ctx_free(ctx);
}
END_TEST

/* loss = mean((silu(x @ w1^T) @ w2^T + b2)^2); returns the loss value and leaves gradients. */
static double step(an_ctx *ctx, an_tensor *x, an_tensor *w1, an_tensor *w2, an_tensor *b2) {
    an_tensor *h = an_linear(ctx, x, w1, NULL);
    an_tensor *a = an_silu(ctx, h);
    an_tensor *y = an_linear(ctx, a, w2, b2);
    an_tensor *sq = an_mul(ctx, y, y);
    an_tensor *loss = an_mean(ctx, sq);
    ck_assert_msg(loss != NULL, "%s", an_error_message(ctx));
    ck_assert_msg(an_backward(ctx, loss) == AN_OK, "%s", an_error_message(ctx));
    an_tensor *host = an_tensor_to(ctx, loss, AN_F32, AN_CPU);
    double v = an_tensor_get(host, 0);
    an_tensor_release(host);
    an_tensor_release(loss);
    an_tensor_release(sq);
    an_tensor_release(y);
    an_tensor_release(a);
    an_tensor_release(h);
    return v;
}

static an_tensor *uniform_cuda(an_ctx *ctx, int64_t rows, int64_t cols, int ndim, bool requires_grad) {
    int64_t shape[2] = {rows, cols};
    an_tensor *t = an_tensor_new(ctx, AN_F32, AN_CUDA, ndim, ndim == 1 ? &cols : shape);
    ck_assert_msg(t && an_tensor_fill_uniform(ctx, t, -0.5, 0.5) == AN_OK, "%s", an_error_message(ctx));
    an_tensor_set_requires_grad(t, requires_grad);
    return t;
}

START_TEST(test_training_loop_stops_calling_cudamalloc_after_first_step) {
    an_ctx *ctx = gpu_ctx("cuda alloc training loop");
    if (!ctx) return;
    an_tensor *x = uniform_cuda(ctx, 67, 1024, 2, false);
    an_tensor *w1 = uniform_cuda(ctx, 1536, 1024, 2, true); /* 6 MiB: large pool */
    an_tensor *w2 = uniform_cuda(ctx, 129, 1536, 2, true);
    an_tensor *b2 = uniform_cuda(ctx, 1, 129, 1, true);
    an_cuda_mem_stats before = stats_of(ctx);
    double loss0 = 0;
    an_tensor *grad0 = NULL;
    int64_t mallocs_after_first = 0;
    for (int it = 0; it < 20; it++) {
        double loss = step(ctx, x, w1, w2, b2);
        an_tensor *g = an_tensor_to(ctx, w1->grad, AN_F32, AN_CPU);
        an_cuda_mem_stats m = stats_of(ctx);
        if (it == 0) {
            loss0 = loss;
            grad0 = g;
            mallocs_after_first = m.cuda_mallocs;
            ck_assert_int_gt(mallocs_after_first, before.cuda_mallocs);
        } else {
            /* Same inputs and parameters: reused (unzeroed) blocks must not change a bit. */
            ck_assert_msg(loss == loss0, "step %d: loss %.17g, first step %.17g", it, loss, loss0);
            ck_assert_int_eq(memcmp(an_tensor_data(g), an_tensor_data(grad0), an_tensor_nbytes(g)), 0);
            an_tensor_release(g);
            ck_assert_msg(m.cuda_mallocs == mallocs_after_first, "step %d: %lld cudaMalloc calls, %lld after step 1",
                          it, (long long)m.cuda_mallocs, (long long)mallocs_after_first);
        }
        ck_assert_int_eq(m.cuda_frees, before.cuda_frees);
        an_tensor_zero_grad(w1);
        an_tensor_zero_grad(w2);
        an_tensor_zero_grad(b2);
        ck_assert_uint_eq(stats_of(ctx).tensor_bytes, before.tensor_bytes); /* nothing of the step lives on */
    }
    an_cuda_mem_stats end = stats_of(ctx);
    printf("training loop: %lld cudaMalloc calls before, %lld after step 1, %lld after step 20; "
           "%zu bytes reserved, %zu in use, %zu tensor bytes, peak tensor bytes %zu\n",
           (long long)before.cuda_mallocs, (long long)mallocs_after_first, (long long)end.cuda_mallocs, end.reserved,
           end.in_use, end.tensor_bytes, end.tensor_peak);
    fflush(stdout);
    an_tensor_release(grad0);
    an_tensor_release(x);
    an_tensor_release(w1);
    an_tensor_release(w2);
    an_tensor_release(b2);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_cudamalloc_failure_releases_cache_retries_and_reports) {
    an_ctx *ctx = gpu_ctx("cuda alloc out of memory");
    if (!ctx) return;
    an_cuda_mem_stats m0 = stats_of(ctx);
    /* Cache 60% of the free memory, then ask for 70%: cudaMalloc fails until the cache is released. */
    int64_t n60 = (int64_t)(m0.device_free / 10 * 6 / 4), n70 = (int64_t)(m0.device_free / 10 * 7 / 4);
    an_tensor *a = cuda_f32(ctx, n60);
    an_tensor_release(a);
    an_cuda_mem_stats m1 = stats_of(ctx);
    ck_assert_uint_ge(m1.cached, (size_t)n60 * 4);
    an_tensor *b = cuda_f32(ctx, n70);
    an_cuda_mem_stats m2 = stats_of(ctx);
    ck_assert_int_eq(m2.cuda_frees, m1.cuda_frees + 1);
    ck_assert_int_eq(m2.cuda_mallocs, m1.cuda_mallocs + 1);
    an_tensor_release(b);
    /* More than the card has: a clear error, then the allocator still works. */
    int64_t too_many = (int64_t)(m0.device_total / 4) + ((int64_t)1 << 28);
    an_tensor *huge = an_tensor_new(ctx, AN_F32, AN_CUDA, 1, &too_many);
    ck_assert_ptr_null(huge);
    char want[64];
    snprintf(want, sizeof want, "%zu bytes asked", (size_t)too_many * 4);
    const char *msg = an_error_message(ctx);
    printf("out-of-memory message: %s\n", msg);
    fflush(stdout);
    ck_assert_msg(strstr(msg, "out of device memory") && strstr(msg, want) && strstr(msg, "in use") &&
                      strstr(msg, "cached"),
                  "message: %s", msg);
    an_cuda_mem_stats m3 = stats_of(ctx);
    ck_assert_uint_eq(m3.reserved, m0.reserved); /* b's cached segment went back on the retry */
    an_error_clear(ctx);
    an_tensor *c = cuda_f32(ctx, 12345);
    ck_assert_msg(an_tensor_fill(ctx, c, 2.5) == AN_OK, "%s", an_error_message(ctx));
    an_tensor *h = an_tensor_to(ctx, c, AN_F32, AN_CPU);
    ck_assert(an_tensor_get(h, 12344) == 2.5);
    an_tensor_release(h);
    an_tensor_release(c);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_empty_cache_returns_memory_to_the_device) {
    an_ctx *ctx = gpu_ctx("cuda alloc empty cache");
    if (!ctx) return;
    an_tensor *keep = cuda_f32(ctx, 1000);
    an_cuda_mem_stats m0 = stats_of(ctx);
    an_tensor *a = cuda_f32(ctx, 64 << 20); /* 256 MiB */
    an_tensor_release(a);
    an_cuda_mem_stats m1 = stats_of(ctx);
    ck_assert_uint_eq(m1.cached, m0.cached + 256 * MiB);
    ck_assert_uint_eq(m1.reserved, m0.reserved + 256 * MiB);
    ck_assert_msg(an_cuda_empty_cache(ctx) == AN_OK, "%s", an_error_message(ctx));
    an_cuda_mem_stats m2 = stats_of(ctx);
    ck_assert_uint_eq(m2.reserved, m0.reserved);
    ck_assert_uint_eq(m2.in_use, m0.in_use); /* keep and the workspace stay */
    ck_assert_int_eq(m2.cuda_frees, m1.cuda_frees + 1);
    ck_assert_uint_ge(m2.device_free, m1.device_free + 255 * MiB);
    an_tensor_release(keep);
    test_ctx_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("cuda_alloc");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_freed_block_is_reused_and_small_blocks_share_a_segment);
    tcase_add_test(tc, test_training_loop_stops_calling_cudamalloc_after_first_step);
    tcase_add_test(tc, test_cudamalloc_failure_releases_cache_retries_and_reports);
    tcase_add_test(tc, test_empty_cache_returns_memory_to_the_device);
    suite_add_tcase(s, tc);
    return test_run(s);
}
