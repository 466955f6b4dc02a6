/* test_cuda.c — the CUDA backend against the CPU: every launcher of kernels/cuda.h on fresh random
 * inputs at awkward sizes (1, 7, 1023, 4099, ...) and misaligned pointers, GEMM at m, n, k in
 * {1, 17, 64, 129} with every transpose, batches, a shared B and accumulation, and the autograd
 * ops (forward and backward) on CUDA tensors against the same graph on the CPU.
 *
 * Every output buffer is poisoned with 0xFF bytes (NaN in f32, bf16 and f16) before the launch,
 * so an element the kernel leaves unwritten fails; NaN never passes. Error bounds are relative by
 * dtype: f32 1e-5, bf16 1e-2, f16 2e-3 (GEMMs: scaled by sqrt(k), the size of a typical output).
 * Without a GPU (or in a build without CUDA) every test prints SKIP and passes. */
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/cpu/cpu.h" /* an_cpu_rope_inv_freq */
#include "kernels/cuda.h"  /* the launchers under test */
#include "support/test_util.h"

static const an_dtype float_dtypes[] = {AN_F32, AN_BF16, AN_F16};
#define N_DTYPES 3

static double rtol_of(an_dtype dtype) { return dtype == AN_F32 ? 1e-5 : dtype == AN_BF16 ? 1e-2 : 2e-3; }

/* A context on GPU 0, or NULL after printing SKIP (flushed: Check runs each test in a child). */
static an_ctx *gpu_ctx(uint64_t seed, const char *what) {
    an_ctx *ctx = test_gpu_ctx(seed, what);
    fflush(stdout);
    return ctx;
}

/* gpu_ctx on a device that runs gemm_wgmma.cu's kernels (compute capability 9.0), or NULL after
 * printing SKIP (and freeing the context). */
static an_ctx *hopper_ctx(uint64_t seed, const char *what) {
    an_ctx *ctx = gpu_ctx(seed, what);
    if (!ctx) return NULL;
    const void *probe[] = {NULL};
    if (an_cuda_gemm_swiglu_rule(ctx, AN_BF16, 64, 64, 64, probe, 0)) return ctx;
    printf("SKIP %s: the device does not run gemm_wgmma.cu (compute capability 9.0 only)\n", what);
    fflush(stdout);
    test_ctx_free(ctx);
    return NULL;
}

/* The same n values on both devices. */
typedef struct {
    an_tensor *host; /* (n) CPU */
    an_tensor *dev;  /* (n) CUDA */
} pair;

/* n uniform values in [lo, hi) of dtype, `offset` elements into fresh buffers (offset 1 leaves
 * every pointer off 16-byte alignment, so the scalar paths run). */
static pair random_pair(an_ctx *ctx, an_dtype dtype, int64_t n, int64_t offset, double lo, double hi) {
    int64_t total = n + offset;
    an_tensor *h = test_uniform(ctx, dtype, 1, &total, lo, hi, false);
    an_tensor *d = an_tensor_to(ctx, h, dtype, AN_CUDA);
    ck_assert_msg(d != NULL, "upload: %s", an_error_message(ctx));
    pair p = {an_tensor_rows(ctx, h, offset, n), an_tensor_rows(ctx, d, offset, n)};
    ck_assert_msg(p.host && p.dev, "view: %s", an_error_message(ctx));
    an_tensor_release(h);
    an_tensor_release(d);
    return p;
}

static void pair_release(pair p) {
    an_tensor_release(p.host);
    an_tensor_release(p.dev);
}

/* A CUDA buffer of n elements at `offset`, every byte 0xFF (NaN in each float dtype). */
static an_tensor *poisoned(an_ctx *ctx, an_dtype dtype, int64_t n, int64_t offset) {
    int64_t total = n + offset;
    an_tensor *t = an_tensor_new(ctx, dtype, AN_CUDA, 1, &total);
    ck_assert_msg(t != NULL, "alloc: %s", an_error_message(ctx));
    test_ok(ctx, an_cuda_memset(ctx, an_tensor_data(t), 0xFF, an_tensor_nbytes(t)), "poison");
    an_tensor *v = an_tensor_rows(ctx, t, offset, n);
    an_tensor_release(t);
    return v;
}

/* Fails unless every element of got is a number within bound[i] of want[i]. */
static void expect_close(const double *got, const double *want, const double *bound, int64_t n, const char *fmt,
                         ...) {
    for (int64_t i = 0; i < n; i++) {
        if (!isnan(got[i]) && fabs(got[i] - want[i]) <= bound[i]) continue;
        char what[256];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(what, sizeof what, fmt, ap);
        va_end(ap);
        ck_abort_msg("%s: element %lld of %lld is %.9g, expected %.9g (bound %.3g)", what, (long long)i, (long long)n,
                     got[i], want[i], bound[i]);
    }
}

/* The download of dev checked against want with bound rtol * |want| + atol. */
static void expect_dev_close(an_ctx *ctx, const an_tensor *dev, const double *want, double rtol, double atol,
                             const char *what) {
    int64_t n = an_tensor_numel(dev);
    double *got = test_download(ctx, dev), *bound = malloc((size_t)(n ? n : 1) * sizeof *bound);
    for (int64_t i = 0; i < n; i++) bound[i] = rtol * fabs(want[i]) + atol;
    expect_close(got, want, bound, n, "%s", what);
    free(got);
    free(bound);
}

static const int64_t sizes[] = {1, 7, 1023, 4099, 300007};
#define N_SIZES 5

/* ---- runtime ---- */

START_TEST(test_cuda_runtime_copies_and_reports_errors) {
    an_ctx *ctx = gpu_ctx(1, "cuda runtime");
    if (!ctx) return;
    /* host -> device -> device -> host round trip, bytes unchanged */
    for (int s = 0; s < N_SIZES; s++) {
        pair p = random_pair(ctx, AN_F32, sizes[s], 0, -5, 5);
        an_tensor *copy = poisoned(ctx, AN_F32, sizes[s], 1);
        test_ok(ctx, an_cuda_memcpy(ctx, an_tensor_data(copy), AN_CUDA, an_tensor_data(p.dev), AN_CUDA,
                               an_tensor_nbytes(copy)), "d2d");
        double *want = test_values(p.host), *got = test_download(ctx, copy);
        ck_assert_msg(memcmp(want, got, (size_t)sizes[s] * sizeof *got) == 0, "round trip of %lld floats differs",
                      (long long)sizes[s]);
        free(want);
        free(got);
        an_tensor_release(copy);
        pair_release(p);
    }
    /* memset writes every byte */
    an_tensor *z = an_tensor_zeros(ctx, AN_BF16, AN_CUDA, 1, (int64_t[]){4099});
    ck_assert_ptr_nonnull(z);
    double *zv = test_download(ctx, z);
    for (int i = 0; i < 4099; i++) ck_assert_msg(zv[i] == 0.0, "zeros: element %d is %g", i, zv[i]);
    free(zv);
    an_tensor_release(z);
    /* a failed cudaMalloc is an error with the call and CUDA's reason, not a crash */
    an_tensor *huge = an_tensor_new(ctx, AN_F32, AN_CUDA, 1, (int64_t[]){(int64_t)1 << 48});
    ck_assert_ptr_null(huge);
    ck_assert_int_eq(an_error_status(ctx), AN_ERR_INTERNAL);
    ck_assert_msg(strstr(an_error_message(ctx), "cudaMalloc") != NULL, "message: %s", an_error_message(ctx));
    an_error_clear(ctx);
    /* ...and it leaves no stale error for the next launch */
    {
        pair x = random_pair(ctx, AN_F32, 7, 0, -1, 1);
        an_tensor *y = poisoned(ctx, AN_F32, 7, 0);
        test_ok(ctx, an_cuda_scale(ctx, AN_F32, an_tensor_data(x.dev), 7, 2.0, an_tensor_data(y)), "scale after a failure");
        double *want = test_values(x.host);
        for (int i = 0; i < 7; i++) want[i] *= 2.0;
        expect_dev_close(ctx, y, want, 0, 0, "scale after a failed cudaMalloc");
        free(want);
        an_tensor_release(y);
        pair_release(x);
    }
    /* a dtype without a kernel is an input error naming it */
    int32_t ids[4] = {0};
    ck_assert_int_eq(an_cuda_scale(ctx, AN_I32, ids, 4, 2.0, ids), AN_ERR_INPUT);
    ck_assert_msg(strstr(an_error_message(ctx), "i32") != NULL, "message: %s", an_error_message(ctx));
    an_error_clear(ctx);
    char why[256] = "";
    ck_assert_ptr_null(an_cuda_state_new(1000, why, sizeof why));
    ck_assert_msg(strstr(why, "1000") != NULL, "why: %s", why);
    test_ctx_free(ctx);
}
END_TEST

/* ---- cast ---- */

/* Equal as stored values: both NaN, or the same bits. */
static bool same_value(const void *x, const void *y, an_dtype dtype, int64_t i) {
    double a = an_dtype_load(x, dtype, (size_t)i), b = an_dtype_load(y, dtype, (size_t)i);
    if (isnan(a) || isnan(b)) return isnan(a) && isnan(b);
    size_t es = an_dtype_size(dtype);
    return memcmp((const char *)x + (size_t)i * es, (const char *)y + (size_t)i * es, es) == 0;
}

static void check_cast(an_ctx *ctx, an_tensor *src_host, an_tensor *src_dev, an_dtype dst_dtype, int64_t offset,
                       const char *what) {
    int64_t n = an_tensor_numel(src_host);
    an_tensor *dst = poisoned(ctx, dst_dtype, n, offset);
    test_ok(ctx, an_cuda_cast(ctx, an_tensor_data(src_dev), src_dev->dtype, an_tensor_data(dst), dst_dtype, (size_t)n),
       what);
    test_ok(ctx, an_cuda_synchronize(ctx), what);
    an_tensor *got = an_tensor_to(ctx, dst, dst_dtype, AN_CPU);
    an_tensor *want = an_tensor_to(ctx, src_host, dst_dtype, AN_CPU); /* src/autograd/dtype.c rounding */
    ck_assert_ptr_nonnull(got);
    ck_assert_ptr_nonnull(want);
    for (int64_t i = 0; i < n; i++)
        ck_assert_msg(same_value(an_tensor_data(got), an_tensor_data(want), dst_dtype, i),
                      "%s: element %lld: %s %.9g became %.9g, CPU says %.9g", what, (long long)i,
                      an_dtype_name(src_host->dtype), an_tensor_get(src_host, i), an_tensor_get(got, i),
                      an_tensor_get(want, i));
    an_tensor_release(got);
    an_tensor_release(want);
    an_tensor_release(dst);
}

START_TEST(test_cuda_cast_rounds_like_the_cpu) {
    an_ctx *ctx = gpu_ctx(2, "cuda cast");
    if (!ctx) return;
    char what[128];
    for (int s = 0; s < N_DTYPES; s++)
        for (int d = 0; d < N_DTYPES; d++)
            for (int z = 0; z < N_SIZES; z++)
                for (int64_t offset = 0; offset < 2; offset++) {
                    pair p = random_pair(ctx, float_dtypes[s], sizes[z], offset, -70000, 70000);
                    snprintf(what, sizeof what, "cast %s->%s n %lld offset %lld", an_dtype_name(float_dtypes[s]),
                             an_dtype_name(float_dtypes[d]), (long long)sizes[z], (long long)offset);
                    check_cast(ctx, p.host, p.dev, float_dtypes[d], offset, what);
                    pair_release(p);
                }
    /* f32 values at the edges: bf16/f16 ties, f16 subnormals and overflow, infinities, signed zeros */
    const uint32_t bits[] = {0x3f808000u, 0x3f818000u, 0x3f800fffu, 0x3f801000u, 0x3f803000u, 0x477ff000u,
                             0x477fefffu, 0x47800000u, 0x33800000u, 0x33000001u, 0x38800000u, 0x387fc000u,
                             0x7f7fffffu, 0x7f800000u, 0xff800000u, 0x00000000u, 0x80000000u, 0x00000001u,
                             0xbf7fffffu, 0x7f7f8000u, 0x7fc00000u};
    int64_t n = sizeof bits / sizeof *bits;
    float f[sizeof bits / sizeof *bits];
    memcpy(f, bits, sizeof f);
    an_tensor *h = an_tensor_from_data(ctx, AN_F32, 1, &n, f);
    an_tensor *dv = an_tensor_to(ctx, h, AN_F32, AN_CUDA);
    check_cast(ctx, h, dv, AN_BF16, 0, "cast f32->bf16 edge values");
    check_cast(ctx, h, dv, AN_F16, 0, "cast f32->f16 edge values");
    an_tensor_release(h);
    an_tensor_release(dv);
    test_ctx_free(ctx);
}
END_TEST

/* an_cuda_cast_mul against an_cuda_cast followed by an_cuda_binary's multiply by the device scalar:
 * the same bits, at every size (the vector path and the scalar tail) and on a misaligned copy. */
START_TEST(test_cuda_cast_mul_equals_cast_then_multiply) {
    an_ctx *ctx = gpu_ctx(12, "cuda cast_mul");
    if (!ctx) return;
    char what[128];
    const double scales[] = {1.7, -0.3125, 3.0e-3};
    for (int d = 0; d < N_DTYPES; d++) {
        an_dtype dt = float_dtypes[d];
        for (int z = 0; z < N_SIZES; z++)
            for (int64_t offset = 0; offset < 2; offset++) {
                pair p = random_pair(ctx, AN_F32, sizes[z], offset, -70000, 70000);
                int64_t n = sizes[z];
                an_tensor *g = an_tensor_scalar(ctx, dt, AN_CUDA, scales[z % 3]);
                an_tensor *fused = poisoned(ctx, dt, n, offset), *two = poisoned(ctx, dt, n, 0);
                snprintf(what, sizeof what, "cast_mul f32->%s n %lld offset %lld", an_dtype_name(dt), (long long)n,
                         (long long)offset);
                test_ok(ctx, an_cuda_cast_mul(ctx, an_tensor_data(p.dev), an_tensor_data(fused), dt, n, an_tensor_data(g)),
                        what);
                test_ok(ctx, an_cuda_cast(ctx, an_tensor_data(p.dev), AN_F32, an_tensor_data(two), dt, (size_t)n), what);
                test_ok(ctx, an_cuda_binary(ctx, AN_BINARY_MUL, dt, an_tensor_data(two), n, an_tensor_data(g), 1,
                                            an_tensor_data(two)),
                        what);
                an_tensor *a = an_tensor_to(ctx, fused, dt, AN_CPU), *b = an_tensor_to(ctx, two, dt, AN_CPU);
                ck_assert_ptr_nonnull(a);
                ck_assert_ptr_nonnull(b);
                for (int64_t i = 0; i < n; i++)
                    ck_assert_msg(same_value(an_tensor_data(a), an_tensor_data(b), dt, i), "%s: element %lld: %.9g vs %.9g",
                                  what, (long long)i, an_tensor_get(a, i), an_tensor_get(b, i));
                an_tensor_release(a), an_tensor_release(b), an_tensor_release(fused), an_tensor_release(two);
                an_tensor_release(g);
                pair_release(p);
            }
    }
    test_ctx_free(ctx);
}
END_TEST

/* an_cuda_shift_ids: each row's ids moved one left and the fill at its end, i32 and i64, rows of 1. */
START_TEST(test_cuda_shift_ids_makes_next_token_targets) {
    an_ctx *ctx = gpu_ctx(13, "cuda shift_ids");
    if (!ctx) return;
    const int64_t shapes[][2] = {{1, 1}, {3, 1}, {1, 7}, {8, 1024}, {5, 333}};
    for (int d = 0; d < 2; d++)
        for (size_t c = 0; c < sizeof shapes / sizeof *shapes; c++) {
            const an_dtype dt = d ? AN_I64 : AN_I32;
            const int64_t rows = shapes[c][0], t = shapes[c][1], n = rows * t;
            an_tensor *h = test_ids(ctx, dt, 1, &n, 151936);
            an_tensor *dev = an_tensor_to(ctx, h, dt, AN_CUDA), *out = an_tensor_new(ctx, dt, AN_CUDA, 1, &n);
            ck_assert_msg(dev && out, "alloc: %s", an_error_message(ctx));
            test_ok(ctx, an_cuda_memset(ctx, an_tensor_data(out), 0x5a, an_tensor_nbytes(out)), "poison");
            test_ok(ctx, an_cuda_shift_ids(ctx, an_tensor_data(dev), dt, rows, t, -100, an_tensor_data(out)), "shift_ids");
            an_tensor *got = an_tensor_to(ctx, out, dt, AN_CPU);
            ck_assert_ptr_nonnull(got);
            for (int64_t i = 0; i < n; i++) {
                double want = i % t == t - 1 ? -100.0 : an_tensor_get(h, i + 1);
                ck_assert_msg(an_tensor_get(got, i) == want, "%s %lld x %lld: element %lld is %.0f, expected %.0f",
                              an_dtype_name(dt), (long long)rows, (long long)t, (long long)i, an_tensor_get(got, i), want);
            }
            an_tensor_release(got), an_tensor_release(out), an_tensor_release(dev), an_tensor_release(h);
        }
    test_ctx_free(ctx);
}
END_TEST

/* ---- add_into, binary ---- */

START_TEST(test_cuda_add_into_scale_and_fill_match_reference) {
    an_ctx *ctx = gpu_ctx(3, "cuda add_into/scale/fill");
    if (!ctx) return;
    char what[128];
    for (int d = 0; d < N_DTYPES; d++) {
        an_dtype dtype = float_dtypes[d];
        double rtol = rtol_of(dtype);
        for (int z = 0; z < N_SIZES; z++)
            for (int64_t offset = 0; offset < 2; offset++) {
                int64_t n = sizes[z];
                pair dst = random_pair(ctx, dtype, n, offset, -3, 3), src = random_pair(ctx, dtype, n, offset, -3, 3);
                double *want = malloc((size_t)n * sizeof *want);
                for (int64_t i = 0; i < n; i++) want[i] = an_tensor_get(dst.host, i) + an_tensor_get(src.host, i);
                test_ok(ctx, an_cuda_add_into(ctx, an_tensor_data(dst.dev), an_tensor_data(src.dev), dtype, n), "add_into");
                snprintf(what, sizeof what, "add_into %s n %lld offset %lld", an_dtype_name(dtype), (long long)n,
                         (long long)offset);
                expect_dev_close(ctx, dst.dev, want, rtol, 1e-6, what);

                const double factors[] = {-1.75, 0.3};
                for (int f = 0; f < 2; f++) {
                    an_tensor *out = poisoned(ctx, dtype, n, offset);
                    test_ok(ctx, an_cuda_scale(ctx, dtype, an_tensor_data(src.dev), n, factors[f], an_tensor_data(out)),
                       "scale");
                    for (int64_t i = 0; i < n; i++) want[i] = factors[f] * an_tensor_get(src.host, i);
                    snprintf(what, sizeof what, "scale %g %s n %lld offset %lld", factors[f], an_dtype_name(dtype),
                             (long long)n, (long long)offset);
                    expect_dev_close(ctx, out, want, rtol, 1e-6, what);
                    an_tensor_release(out);
                }

                an_tensor *out = poisoned(ctx, dtype, n, offset);
                double scale = 1.0 / (double)n;
                test_ok(ctx, an_cuda_fill_from_scalar(ctx, dtype, an_tensor_data(src.dev), scale, n, an_tensor_data(out)),
                   "fill_from_scalar");
                for (int64_t i = 0; i < n; i++) want[i] = an_tensor_get(src.host, 0) * scale;
                snprintf(what, sizeof what, "fill_from_scalar %s n %lld offset %lld", an_dtype_name(dtype),
                         (long long)n, (long long)offset);
                /* small results land among f16 subnormals: allow one step of 2^-24 there */
                expect_dev_close(ctx, out, want, rtol, dtype == AN_F16 ? ldexp(1.0, -24) : 1e-12, what);
                an_tensor_release(out);
                free(want);
                pair_release(dst);
                pair_release(src);
            }
    }
    test_ctx_free(ctx);
}
END_TEST

/* (rows, nb): a is (rows * nb), b (nb) repeats over the rows. */
static const int64_t broadcasts[][2] = {{1, 1},    {1, 7},   {7, 1},    {3, 341},  {1, 1023}, {1, 4099},
                                        {4099, 1}, {11, 373}, {4096, 3}, {300, 1000}, {2, 32768}, {0, 5}};
#define N_BROADCASTS (sizeof broadcasts / sizeof *broadcasts)

static double apply_kind(int kind, double x, double y) {
    return kind == AN_BINARY_ADD ? x + y : kind == AN_BINARY_SUB ? x - y : x * y;
}

START_TEST(test_cuda_binary_forward_matches_reference) {
    an_ctx *ctx = gpu_ctx(4, "cuda binary");
    if (!ctx) return;
    char what[160];
    for (int d = 0; d < N_DTYPES; d++)
        for (size_t s = 0; s < N_BROADCASTS; s++)
            for (int64_t offset = 0; offset < 2; offset++)
                for (int kind = 0; kind < 3; kind++) {
                    an_dtype dtype = float_dtypes[d];
                    int64_t rows = broadcasts[s][0], nb = broadcasts[s][1], n = rows * nb;
                    pair a = random_pair(ctx, dtype, n, offset, -3, 3), b = random_pair(ctx, dtype, nb, offset, -3, 3);
                    an_tensor *out = poisoned(ctx, dtype, n, offset);
                    test_ok(ctx, an_cuda_binary(ctx, (an_binary_kind)kind, dtype, an_tensor_data(a.dev), n,
                                           an_tensor_data(b.dev), nb, an_tensor_data(out)), "binary");
                    double *want = malloc((size_t)(n ? n : 1) * sizeof *want);
                    for (int64_t i = 0; i < n; i++)
                        want[i] = apply_kind(kind, an_tensor_get(a.host, i), an_tensor_get(b.host, i % nb));
                    snprintf(what, sizeof what, "binary kind %d %s rows %lld nb %lld offset %lld", kind,
                             an_dtype_name(dtype), (long long)rows, (long long)nb, (long long)offset);
                    expect_dev_close(ctx, out, want, rtol_of(dtype), 1e-6, what);
                    /* in place (out = a), as linear's bias add does */
                    test_ok(ctx, an_cuda_binary(ctx, (an_binary_kind)kind, dtype, an_tensor_data(a.dev), n,
                                           an_tensor_data(b.dev), nb, an_tensor_data(a.dev)), "binary in place");
                    expect_dev_close(ctx, a.dev, want, rtol_of(dtype), 1e-6, what);
                    free(want);
                    an_tensor_release(out);
                    pair_release(a);
                    pair_release(b);
                }
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_cuda_binary_backward_sums_broadcast_deterministically) {
    an_ctx *ctx = gpu_ctx(5, "cuda binary backward");
    if (!ctx) return;
    char what[160];
    for (int d = 0; d < N_DTYPES; d++)
        for (size_t s = 0; s < N_BROADCASTS; s++)
            for (int kind = 0; kind < 3; kind++)
                for (int which = 0; which < 3; which++) { /* both grads, grad_a only, grad_b only */
                    an_dtype dtype = float_dtypes[d];
                    double rtol = rtol_of(dtype);
                    int64_t rows = broadcasts[s][0], nb = broadcasts[s][1], n = rows * nb;
                    int64_t offset = (int64_t)(s + (size_t)kind) % 2;
                    pair a = random_pair(ctx, dtype, n, offset, -3, 3), b = random_pair(ctx, dtype, nb, offset, -3, 3);
                    pair g = random_pair(ctx, dtype, n, offset, -2, 2);
                    an_tensor *ga = which != 2 ? poisoned(ctx, dtype, n, offset) : NULL;
                    an_tensor *gb = which != 1 ? poisoned(ctx, dtype, nb, offset) : NULL;
                    test_ok(ctx, an_cuda_binary_backward(ctx, (an_binary_kind)kind, dtype, an_tensor_data(a.dev), n,
                                                    an_tensor_data(b.dev), nb, an_tensor_data(g.dev),
                                                    ga ? an_tensor_data(ga) : NULL, gb ? an_tensor_data(gb) : NULL),
                       "binary_backward");
                    snprintf(what, sizeof what, "binary_backward kind %d %s rows %lld nb %lld offset %lld grads %d",
                             kind, an_dtype_name(dtype), (long long)rows, (long long)nb, (long long)offset, which);
                    if (ga) {
                        double *want = malloc((size_t)(n ? n : 1) * sizeof *want);
                        for (int64_t i = 0; i < n; i++)
                            want[i] = an_tensor_get(g.host, i) * (kind == AN_BINARY_MUL ? an_tensor_get(b.host, i % nb)
                                                                                        : 1.0);
                        expect_dev_close(ctx, ga, want, rtol, 1e-6, what);
                        free(want);
                    }
                    if (gb) {
                        double *want = calloc((size_t)nb, sizeof *want), *bound = calloc((size_t)nb, sizeof *bound);
                        for (int64_t i = 0; i < n; i++) {
                            double x = an_tensor_get(g.host, i);
                            double t = kind == AN_BINARY_MUL ? x * an_tensor_get(a.host, i)
                                       : kind == AN_BINARY_SUB ? -x : x;
                            want[i % nb] += t;
                            bound[i % nb] += 1e-5 * fabs(t); /* fp32 accumulation */
                        }
                        for (int64_t j = 0; j < nb; j++) bound[j] += rtol * fabs(want[j]) + 1e-6;
                        double *got = test_download(ctx, gb);
                        expect_close(got, want, bound, nb, "%s (grad_b)", what);
                        /* a second run gives the same bits */
                        test_ok(ctx, an_cuda_binary_backward(ctx, (an_binary_kind)kind, dtype, an_tensor_data(a.dev), n,
                                                        an_tensor_data(b.dev), nb, an_tensor_data(g.dev), NULL,
                                                        an_tensor_data(gb)),
                           "binary_backward again");
                        double *again = test_download(ctx, gb);
                        ck_assert_msg(memcmp(got, again, (size_t)nb * sizeof *got) == 0, "%s: grad_b not reproducible",
                                      what);
                        free(got);
                        free(again);
                        free(want);
                        free(bound);
                    }
                    an_tensor_release(ga);
                    an_tensor_release(gb);
                    pair_release(a);
                    pair_release(b);
                    pair_release(g);
                }
    test_ctx_free(ctx);
}
END_TEST

/* ---- swiglu ---- */

static double sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

START_TEST(test_cuda_swiglu_and_silu_match_reference) {
    an_ctx *ctx = gpu_ctx(6, "cuda swiglu");
    if (!ctx) return;
    char what[160];
    for (int d = 0; d < N_DTYPES; d++)
        for (int z = 0; z < N_SIZES; z++)
            for (int with_up = 0; with_up < 2; with_up++)
                for (int64_t offset = 0; offset < 2; offset++) {
                    an_dtype dtype = float_dtypes[d];
                    double rtol = rtol_of(dtype);
                    int64_t n = sizes[z];
                    pair gate = random_pair(ctx, dtype, n, offset, -6, 6), up = random_pair(ctx, dtype, n, offset, -2, 2);
                    pair go = random_pair(ctx, dtype, n, offset, -2, 2);
                    const void *up_dev = with_up ? an_tensor_data(up.dev) : NULL;
                    double *want = malloc((size_t)n * sizeof *want), *bound = malloc((size_t)n * sizeof *bound);
                    double *want_up = malloc((size_t)n * sizeof *want_up), *bound_up = malloc((size_t)n * sizeof *bound_up);

                    an_tensor *out = poisoned(ctx, dtype, n, offset);
                    test_ok(ctx, an_cuda_swiglu(ctx, dtype, an_tensor_data(gate.dev), up_dev, n, an_tensor_data(out)),
                       "swiglu");
                    for (int64_t i = 0; i < n; i++) {
                        double x = an_tensor_get(gate.host, i), u = with_up ? an_tensor_get(up.host, i) : 1.0;
                        want[i] = x * sigmoid(x) * u;
                    }
                    snprintf(what, sizeof what, "%s %s n %lld offset %lld", with_up ? "swiglu" : "silu",
                             an_dtype_name(dtype), (long long)n, (long long)offset);
                    expect_dev_close(ctx, out, want, rtol, 1e-6, what);
                    an_tensor_release(out);

                    for (int which = 0; which < 3; which++) { /* both grads, grad_gate only, grad_up only */
                        if (!with_up && which != 1) continue;
                        an_tensor *gg = which != 2 ? poisoned(ctx, dtype, n, offset) : NULL;
                        an_tensor *gu = which != 1 ? poisoned(ctx, dtype, n, offset) : NULL;
                        test_ok(ctx, an_cuda_swiglu_backward(ctx, dtype, an_tensor_data(gate.dev), up_dev, n,
                                                        an_tensor_data(go.dev), gg ? an_tensor_data(gg) : NULL,
                                                        gu ? an_tensor_data(gu) : NULL), "swiglu_backward");
                        for (int64_t i = 0; i < n; i++) {
                            double x = an_tensor_get(gate.host, i), u = with_up ? an_tensor_get(up.host, i) : 1.0;
                            double o = an_tensor_get(go.host, i), sg = sigmoid(x);
                            double dsilu = sg * (1.0 + x * (1.0 - sg));
                            want[i] = o * u * dsilu;
                            want_up[i] = o * x * sg;
                            /* fp32 cancellation inside dsilu is absolute, not relative */
                            double scale = (1.0 + fabs(o)) * (1.0 + fabs(u)) * (1.0 + fabs(x));
                            bound[i] = rtol * fabs(want[i]) + 1e-6 * scale;
                            bound_up[i] = rtol * fabs(want_up[i]) + 1e-6 * scale;
                        }
                        if (gg) {
                            double *got = test_download(ctx, gg);
                            expect_close(got, want, bound, n, "%s grad_gate (grads %d)", what, which);
                            free(got);
                        }
                        if (gu) {
                            double *got = test_download(ctx, gu);
                            expect_close(got, want_up, bound_up, n, "%s grad_up (grads %d)", what, which);
                            free(got);
                        }
                        an_tensor_release(gg);
                        an_tensor_release(gu);
                    }
                    free(want);
                    free(bound);
                    free(want_up);
                    free(bound_up);
                    pair_release(gate);
                    pair_release(up);
                    pair_release(go);
                }
    test_ctx_free(ctx);
}
END_TEST

/* ---- sum ---- */

START_TEST(test_cuda_sum_accumulates_in_fp32_deterministically) {
    an_ctx *ctx = gpu_ctx(7, "cuda sum");
    if (!ctx) return;
    char what[128];
    const int64_t sum_sizes[] = {0, 1, 7, 1023, 4099, 300007, 4000037};
    for (int d = 0; d < N_DTYPES; d++)
        for (size_t z = 0; z < sizeof sum_sizes / sizeof *sum_sizes; z++)
            for (int64_t offset = 0; offset < 2; offset++)
                for (int mean = 0; mean < 2; mean++) {
                    an_dtype dtype = float_dtypes[d];
                    int64_t n = sum_sizes[z];
                    /* mean 0.5 keeps the sum away from zero; f16 (max 65504) would overflow on
                     * large n, so there the values are centred */
                    double hi = dtype == AN_F16 && n > 50000 ? 1.0 : 2.0;
                    pair x = random_pair(ctx, dtype, n, offset, -1, hi);
                    double scale = mean && n ? 1.0 / (double)n : 1.0;
                    an_tensor *out = poisoned(ctx, dtype, 1, offset);
                    test_ok(ctx, an_cuda_sum(ctx, dtype, an_tensor_data(x.dev), n, scale, an_tensor_data(out)), "sum");
                    double total = 0, total_abs = 0;
                    for (int64_t i = 0; i < n; i++) {
                        total += an_tensor_get(x.host, i);
                        total_abs += fabs(an_tensor_get(x.host, i));
                    }
                    double want = total * scale, bound = rtol_of(dtype) * fabs(want) + 1e-6 * total_abs * scale + 1e-30;
                    double *got = test_download(ctx, out);
                    snprintf(what, sizeof what, "%s %s n %lld offset %lld", mean ? "mean" : "sum", an_dtype_name(dtype),
                             (long long)n, (long long)offset);
                    expect_close(got, &want, &bound, 1, "%s", what);
                    test_ok(ctx, an_cuda_sum(ctx, dtype, an_tensor_data(x.dev), n, scale, an_tensor_data(out)), "sum again");
                    double *again = test_download(ctx, out);
                    ck_assert_msg(memcmp(got, again, sizeof *got) == 0, "%s: %.9g then %.9g", what, got[0], again[0]);
                    free(got);
                    free(again);
                    an_tensor_release(out);
                    pair_release(x);
                }
    test_ctx_free(ctx);
}
END_TEST

/* ---- GEMM ---- */

/* C (batch, m, n) = op(A) @ op(B) (+ C0) in double, from the stored values. */
static void gemm_reference(const an_gemm_shape *s, const double *a, const double *b, const double *c0, double *c) {
    for (int64_t e = 0; e < s->batch; e++) {
        const double *ae = a + e * s->m * s->k, *be = b + (s->b_shared ? 0 : e * s->k * s->n);
        for (int64_t i = 0; i < s->m; i++)
            for (int64_t j = 0; j < s->n; j++) {
                double acc = 0;
                for (int64_t p = 0; p < s->k; p++) {
                    double x = s->trans_a ? ae[p * s->m + i] : ae[i * s->k + p];
                    double y = s->trans_b ? be[j * s->k + p] : be[p * s->n + j];
                    acc += x * y;
                }
                int64_t o = (e * s->m + i) * s->n + j;
                c[o] = acc + (s->accumulate ? c0[o] : 0.0);
            }
    }
}

static void check_gemm(an_ctx *ctx, an_dtype dtype, an_gemm_shape s, int64_t offset) {
    int64_t na = s.batch * s.m * s.k, nb = (s.b_shared ? 1 : s.batch) * s.k * s.n, nc = s.batch * s.m * s.n;
    pair a = random_pair(ctx, dtype, na, offset, -1, 1), b = random_pair(ctx, dtype, nb, offset, -1, 1);
    pair c0 = {NULL, NULL};
    an_tensor *c;
    if (s.accumulate) {
        c0 = random_pair(ctx, dtype, nc, offset, -1, 1);
        c = an_tensor_retain(c0.dev);
    } else {
        c = poisoned(ctx, dtype, nc, offset);
    }
    double *av = test_values(a.host), *bv = test_values(b.host), *cv = s.accumulate ? test_values(c0.host) : NULL;
    double *want = calloc((size_t)nc + 1, sizeof *want), *bound = calloc((size_t)nc + 1, sizeof *bound);
    gemm_reference(&s, av, bv, cv, want);
    test_ok(ctx, an_cuda_gemm(ctx, &s, dtype, an_tensor_data(a.dev), an_tensor_data(b.dev), an_tensor_data(c)), "gemm");
    double rtol = rtol_of(dtype), err2 = 0, ref2 = 0;
    for (int64_t i = 0; i < nc; i++) bound[i] = rtol * (fabs(want[i]) + sqrt((double)s.k));
    double *got = test_download(ctx, c);
    expect_close(got, want, bound, nc, "gemm %s batch %lld m %lld n %lld k %lld ta %d tb %d shared %d acc %d offset %lld",
                 an_dtype_name(dtype), (long long)s.batch, (long long)s.m, (long long)s.n, (long long)s.k, s.trans_a,
                 s.trans_b, s.b_shared, s.accumulate, (long long)offset);
    for (int64_t i = 0; i < nc; i++) {
        err2 += (got[i] - want[i]) * (got[i] - want[i]);
        ref2 += want[i] * want[i];
    }
    /* the whole output's error against its norm, with one element's floor (rtol sqrt(k)) so that a
     * single output that cancels to near zero is held to the elementwise bound */
    ck_assert_msg(sqrt(err2) <= rtol * (sqrt(ref2) + sqrt((double)s.k)) + 1e-12, "gemm %s m %lld n %lld k %lld: relative error %g",
                  an_dtype_name(dtype), (long long)s.m, (long long)s.n, (long long)s.k, sqrt(err2 / ref2));
    free(got);
    free(av);
    free(bv);
    free(cv);
    free(want);
    free(bound);
    an_tensor_release(c);
    pair_release(a);
    pair_release(b);
    pair_release(c0);
}

/* dW (out, in) (+)= dY^T X for dY (rows, out), X (rows, in), with the bias gradient dY's column
 * sums from the same call (cuBLASLt's BGRADB epilogue, or the column-sum kernel after the GEMM for
 * f32, a misaligned gradient or a shape cuBLASLt plans no epilogue for): both against float64, and
 * a second run gives the same bits. */
START_TEST(test_cuda_gemm_bias_grad_matches_the_reference) {
    an_ctx *ctx = gpu_ctx(10, "cuda gemm bias grad");
    if (!ctx) return;
    const int64_t shapes[][3] = {{300, 256, 1024}, {256, 64, 37}, {1536, 16, 8192}, {7, 5, 3}}; /* out, in, rows */
    for (int d = 0; d < N_DTYPES; d++)
        for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++)
            for (int variant = 0; variant < 3; variant++) { /* 0: plain; 1: accumulate; 2: gradient misaligned */
                an_dtype dtype = float_dtypes[d];
                int64_t out = shapes[si][0], in = shapes[si][1], rows = shapes[si][2];
                an_gemm_shape sh = {1, out, in, rows, true, false, false, variant == 1};
                pair dy = random_pair(ctx, dtype, rows * out, 0, -1, 1), x = random_pair(ctx, dtype, rows * in, 0, -1, 1);
                pair c0 = variant == 1 ? random_pair(ctx, dtype, out * in, 0, -1, 1) : (pair){NULL, NULL};
                an_tensor *c = variant == 1 ? an_tensor_retain(c0.dev) : poisoned(ctx, dtype, out * in, 0);
                an_tensor *gb_view = poisoned(ctx, dtype, out, variant == 2 ? 1 : 0); /* 1: one element off */
                void *gb = an_tensor_data(gb_view);
                double *dyv = test_values(dy.host), *xv = test_values(x.host), *cv = c0.host ? test_values(c0.host) : NULL;
                double *want = calloc((size_t)(out * in), sizeof *want), *want_b = calloc((size_t)out, sizeof *want_b);
                gemm_reference(&sh, dyv, xv, cv, want);
                for (int64_t r = 0; r < rows; r++)
                    for (int64_t o = 0; o < out; o++) want_b[o] += dyv[r * out + o];
                test_ok(ctx, an_cuda_gemm_bias_grad(ctx, &sh, dtype, an_tensor_data(dy.dev), an_tensor_data(x.dev), gb,
                                                    an_tensor_data(c)), "gemm_bias_grad");
                double *got = test_download(ctx, c), *got_b = test_download(ctx, gb_view);
                double rtol = rtol_of(dtype), *bound = calloc((size_t)(out * in), sizeof *bound);
                for (int64_t i = 0; i < out * in; i++) bound[i] = rtol * (fabs(want[i]) + sqrt((double)rows));
                expect_close(got, want, bound, out * in, "bias-grad gemm %s out %lld in %lld rows %lld variant %d",
                             an_dtype_name(dtype), (long long)out, (long long)in, (long long)rows, variant);
                for (int64_t o = 0; o < out; o++) bound[o] = 2 * rtol * (fabs(want_b[o]) + sqrt((double)rows));
                expect_close(got_b, want_b, bound, out, "bias gradient %s out %lld rows %lld variant %d",
                             an_dtype_name(dtype), (long long)out, (long long)rows, variant);
                if (variant == 0) { /* repeated: the same bits */
                    test_ok(ctx, an_cuda_gemm_bias_grad(ctx, &sh, dtype, an_tensor_data(dy.dev), an_tensor_data(x.dev),
                                                        gb, an_tensor_data(c)), "gemm_bias_grad again");
                    double *again = test_download(ctx, c), *again_b = test_download(ctx, gb_view);
                    ck_assert_msg(!memcmp(got, again, (size_t)(out * in) * sizeof *got) &&
                                      !memcmp(got_b, again_b, (size_t)out * sizeof *got_b),
                                  "bias-grad gemm %s out %lld: a second run differs", an_dtype_name(dtype), (long long)out);
                    free(again), free(again_b);
                }
                free(got), free(got_b), free(bound), free(dyv), free(xv), free(cv), free(want), free(want_b);
                an_tensor_release(c), an_tensor_release(gb_view);
                pair_release(dy), pair_release(x), pair_release(c0);
            }
    test_ctx_free(ctx);
}
END_TEST

/* an_cuda_column_sums: 1 to 4 tensors of the same rows in one launch (q, k and v's widths, ragged
 * rows that end inside a split and a row lane, one row), written into poisoned buffers, against
 * float64 column sums; the same bits on a repeat and for each tensor launched alone (the order
 * depends on rows alone); refusals (misaligned input, a width off 16 bytes, too many tensors, the
 * switch off) write nothing. */
START_TEST(test_cuda_column_sums_match_the_reference) {
    an_ctx *ctx = gpu_ctx(31, "cuda column sums");
    if (!ctx) return;
    const int64_t rows_of[] = {8192, 1000, 129, 1};
    const int64_t widths[][AN_CUDA_COLUMN_SUMS_MAX] = {{1536, 256, 256, 0}, {16, 0}, {2048, 8, 264, 4104}, {24, 0}};
    for (int d = 0; d < N_DTYPES; d++)
        for (size_t si = 0; si < sizeof rows_of / sizeof *rows_of; si++) {
            an_dtype dtype = float_dtypes[d];
            int64_t rows = rows_of[si], width[AN_CUDA_COLUMN_SUMS_MAX];
            int count = 0;
            while (count < AN_CUDA_COLUMN_SUMS_MAX && widths[si][count]) count++;
            pair y[AN_CUDA_COLUMN_SUMS_MAX];
            an_tensor *out[AN_CUDA_COLUMN_SUMS_MAX];
            const void *yp[AN_CUDA_COLUMN_SUMS_MAX];
            void *op[AN_CUDA_COLUMN_SUMS_MAX];
            double *want[AN_CUDA_COLUMN_SUMS_MAX], *got[AN_CUDA_COLUMN_SUMS_MAX];
            for (int i = 0; i < count; i++) {
                width[i] = dtype == AN_F32 ? widths[si][i] / 2 : widths[si][i]; /* f32: still 16-byte packs */
                y[i] = random_pair(ctx, dtype, rows * width[i], 0, -1, 1.5);
                out[i] = poisoned(ctx, dtype, width[i], 0);
                yp[i] = an_tensor_data(y[i].dev), op[i] = an_tensor_data(out[i]);
                double *v = test_values(y[i].host);
                want[i] = calloc((size_t)width[i], sizeof *want[i]);
                for (int64_t r = 0; r < rows; r++)
                    for (int64_t c = 0; c < width[i]; c++) want[i][c] += v[r * width[i] + c];
                free(v);
            }
            ck_assert_msg(an_cuda_column_sums_rule(ctx, dtype, rows, count, yp, width, op), "rule refused %s rows %lld",
                          an_dtype_name(dtype), (long long)rows);
            test_ok(ctx, an_cuda_column_sums(ctx, dtype, rows, count, yp, width, op), "column_sums");
            for (int i = 0; i < count; i++) {
                got[i] = test_download(ctx, out[i]);
                double *bound = malloc((size_t)width[i] * sizeof *bound);
                /* fp32 sums of |values| <= 1.5 over rows, then one rounding to the dtype */
                for (int64_t c = 0; c < width[i]; c++)
                    bound[c] = rtol_of(dtype) * fabs(want[i][c]) + 1e-6 * 1.5 * (double)rows;
                expect_close(got[i], want[i], bound, width[i], "column sums %s rows %lld tensor %d of %d width %lld",
                             an_dtype_name(dtype), (long long)rows, i, count, (long long)width[i]);
                free(bound);
            }
            test_ok(ctx, an_cuda_column_sums(ctx, dtype, rows, count, yp, width, op), "column_sums again");
            for (int i = 0; i < count; i++) {
                double *again = test_download(ctx, out[i]);
                ck_assert_msg(!memcmp(again, got[i], (size_t)width[i] * sizeof *again),
                              "column sums %s rows %lld tensor %d: a second run differs", an_dtype_name(dtype),
                              (long long)rows, i);
                free(again);
                test_ok(ctx, an_cuda_column_sums(ctx, dtype, rows, 1, &yp[i], &width[i], &op[i]), "column_sums alone");
                again = test_download(ctx, out[i]);
                ck_assert_msg(!memcmp(again, got[i], (size_t)width[i] * sizeof *again),
                              "column sums %s rows %lld tensor %d: alone it differs from its share of the launch",
                              an_dtype_name(dtype), (long long)rows, i);
                free(again);
            }
            for (int i = 0; i < count; i++) {
                free(want[i]), free(got[i]);
                pair_release(y[i]);
                an_tensor_release(out[i]);
            }
        }
    /* refusals: nothing written */
    pair y = random_pair(ctx, AN_BF16, 64 * 24 + 1, 0, -1, 1);
    an_tensor *out = poisoned(ctx, AN_BF16, 24, 0);
    const void *aligned = an_tensor_data(y.dev), *off = (const char *)an_tensor_data(y.dev) + 2;
    void *op = an_tensor_data(out);
    int64_t w24 = 24, w20 = 20;
    const void *five_y[5] = {aligned, aligned, aligned, aligned, aligned};
    void *five_o[5] = {op, op, op, op, op};
    int64_t five_w[5] = {24, 24, 24, 24, 24};
    ck_assert(!an_cuda_column_sums_rule(ctx, AN_BF16, 64, 1, &off, &w24, &op));
    ck_assert(!an_cuda_column_sums_rule(ctx, AN_BF16, 64, 1, &aligned, &w20, &op));
    ck_assert(!an_cuda_column_sums_rule(ctx, AN_BF16, 64, 5, five_y, five_w, five_o));
    ck_assert(!an_cuda_column_sums_rule(ctx, AN_BF16, 0, 1, &aligned, &w24, &op));
    ck_assert_int_eq(an_cuda_column_sums(ctx, AN_BF16, 64, 1, &off, &w24, &op), AN_ERR_INPUT);
    ck_assert_msg(strstr(an_error_message(ctx), "column_sums: 1 tensors of 64 rows in bf16"), "message: %s",
                  an_error_message(ctx));
    an_error_clear(ctx);
    test_ok(ctx, an_cuda_set_column_sums(ctx, false), "switch off");
    ck_assert(!an_cuda_column_sums_rule(ctx, AN_BF16, 64, 1, &aligned, &w24, &op));
    ck_assert_int_eq(an_cuda_column_sums(ctx, AN_BF16, 64, 1, &aligned, &w24, &op), AN_ERR_INPUT);
    an_error_clear(ctx);
    test_ok(ctx, an_cuda_set_column_sums(ctx, true), "switch on");
    double *left = test_download(ctx, out);
    for (int c = 0; c < 24; c++) ck_assert_msg(isnan(left[c]), "a refused column sum wrote element %d", c);
    free(left);
    pair_release(y);
    an_tensor_release(out);
    test_ctx_free(ctx);
}
END_TEST

/* C = alpha op(A) op(B) (an_cuda_gemm_scaled: the LoRA branch's scale inside its thin GEMMs) on
 * cuBLASLt's shapes and the GEMV's (a scaling pass after it), against float64. */
START_TEST(test_cuda_gemm_scaled_matches_the_reference) {
    an_ctx *ctx = gpu_ctx(11, "cuda gemm scaled");
    if (!ctx) return;
    const an_gemm_shape shapes[] = {{1, 8192, 16, 1536, 0, 1, 0, 0}, {1, 300, 16, 2048, 0, 0, 0, 0},
                                    {1, 2, 16, 1536, 0, 1, 0, 0},    {1, 1, 7, 33, 0, 1, 0, 0},
                                    {2, 5, 3, 0, 0, 0, 0, 0}};
    for (int d = 0; d < N_DTYPES; d++)
        for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
            an_dtype dtype = float_dtypes[d];
            an_gemm_shape sh = shapes[si];
            const double alpha = 2.0 * (double)(si + 1) - 0.75;
            int64_t na = sh.batch * sh.m * sh.k, nb = sh.batch * sh.k * sh.n, nc = sh.batch * sh.m * sh.n;
            pair a = random_pair(ctx, dtype, na, 0, -1, 1), b = random_pair(ctx, dtype, nb, 0, -1, 1);
            an_tensor *c = poisoned(ctx, dtype, nc, 0);
            double *av = test_values(a.host), *bv = test_values(b.host);
            double *want = calloc((size_t)nc + 1, sizeof *want), *bound = calloc((size_t)nc + 1, sizeof *bound);
            gemm_reference(&sh, av, bv, NULL, want);
            for (int64_t i = 0; i < nc; i++) want[i] *= alpha;
            test_ok(ctx, an_cuda_gemm_scaled(ctx, &sh, dtype, alpha, an_tensor_data(a.dev), an_tensor_data(b.dev),
                                             an_tensor_data(c)), "gemm_scaled");
            double *got = test_download(ctx, c), rtol = rtol_of(dtype);
            for (int64_t i = 0; i < nc; i++) bound[i] = 2 * rtol * (fabs(want[i]) + fabs(alpha) * sqrt((double)sh.k));
            expect_close(got, want, bound, nc, "scaled gemm %s m %lld n %lld k %lld alpha %g", an_dtype_name(dtype),
                         (long long)sh.m, (long long)sh.n, (long long)sh.k, alpha);
            free(got), free(av), free(bv), free(want), free(bound);
            an_tensor_release(c);
            pair_release(a), pair_release(b);
        }
    test_ctx_free(ctx);
}
END_TEST

/* A refused an_cuda_gemm_segments call: an input error whose message names the launcher and the
 * case (needle), cleared so the next case is checked on its own. */
/* st and ctx's error an input error whose message names the launcher (and needle, when not NULL). */
static void expect_input_error(an_ctx *ctx, an_status st, const char *launcher, const char *needle) {
    ck_assert_int_eq(st, AN_ERR_INPUT);
    ck_assert_int_eq(an_error_status(ctx), AN_ERR_INPUT);
    const char *msg = an_error_message(ctx);
    ck_assert_msg(strstr(msg, launcher) != NULL, "message '%s' lacks the launcher %s", msg, launcher);
    ck_assert_msg(!needle || strstr(msg, needle) != NULL, "message '%s' lacks '%s'", msg, needle);
    an_error_clear(ctx);
}

/* an_cuda_gemm_segments (Hopper only; SKIP elsewhere): D = sum of A_s op(B_s) over 1-6 segments of
 * ragged K (a segment shorter than a k slice, K_s not a multiple of 64), B (N, K) and stored (K, N),
 * against a float64 reference within the GEMM bound, the poisoned output fully written, a second
 * launch in another tile order (an_cuda_set_gemm_group_rows: 1 or the default, then 3 rows of tiles
 * a group) the same bits; 0 or 7 segments, a K off the tensor maps and a group of 1025 rows are
 * input errors. */
START_TEST(test_cuda_gemm_segments_sums_every_pair_once) {
    an_ctx *ctx = hopper_ctx(13, "cuda gemm_segments");
    if (!ctx) return;
    const struct {
        int64_t m, n;
        int segments;
        int64_t k[6];
    } cases[] = {{300, 392, 3, {1096, 24, 16}}, {520, 264, 6, {64, 200, 8, 8, 136, 56}}, {1, 8, 1, {8}},
                 {257, 512, 2, {1536, 16}}};
    for (int d = 1; d < N_DTYPES; d++) /* bf16, f16 */
        for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++)
            for (int bt = 0; bt < 2; bt++) {
                an_dtype dtype = float_dtypes[d];
                int64_t m = cases[ci].m, n = cases[ci].n, ksum = 0;
                int segs = cases[ci].segments;
                pair a[6], b[6];
                const void *ap[6], *bp[6];
                double *want = calloc((size_t)(m * n), sizeof *want), *bound = calloc((size_t)(m * n), sizeof *bound);
                for (int s = 0; s < segs; s++) {
                    int64_t k = cases[ci].k[s];
                    a[s] = random_pair(ctx, dtype, m * k, 0, -1, 1);
                    b[s] = random_pair(ctx, dtype, n * k, 0, -1, 1);
                    ap[s] = an_tensor_data(a[s].dev), bp[s] = an_tensor_data(b[s].dev);
                    double *av = test_values(a[s].host), *bv = test_values(b[s].host);
                    for (int64_t i = 0; i < m; i++)
                        for (int64_t j = 0; j < n; j++) {
                            double acc = 0;
                            for (int64_t t = 0; t < k; t++) acc += av[i * k + t] * (bt ? bv[t * n + j] : bv[j * k + t]);
                            want[i * n + j] += acc;
                        }
                    free(av), free(bv);
                    ksum += k;
                }
                double rtol = rtol_of(dtype);
                for (int64_t i = 0; i < m * n; i++) bound[i] = 2 * rtol * (fabs(want[i]) + sqrt((double)ksum));
                an_tensor *c = poisoned(ctx, dtype, m * n, 0);
                test_ok(ctx, an_cuda_set_gemm_group_rows(ctx, bt ? 1 : 0), "gemm group rows");
                test_ok(ctx, an_cuda_gemm_segments(ctx, dtype, m, n, segs, ap, cases[ci].k, bp, bt, an_tensor_data(c)),
                        "gemm_segments");
                double *got = test_download(ctx, c);
                expect_close(got, want, bound, m * n, "gemm_segments %s m %lld n %lld segments %d%s",
                             an_dtype_name(dtype), (long long)m, (long long)n, segs, bt ? " B (K, N)" : "");
                test_ok(ctx, an_cuda_set_gemm_group_rows(ctx, 3), "gemm group rows");
                test_ok(ctx, an_cuda_gemm_segments(ctx, dtype, m, n, segs, ap, cases[ci].k, bp, bt, an_tensor_data(c)),
                        "gemm_segments again");
                test_ok(ctx, an_cuda_set_gemm_group_rows(ctx, 0), "gemm group rows");
                double *again = test_download(ctx, c);
                ck_assert_msg(memcmp(got, again, (size_t)(m * n) * sizeof *got) == 0,
                              "gemm_segments %s case %zu: a second launch in another tile order gave other bits",
                              an_dtype_name(dtype), ci);
                free(got), free(again), free(want), free(bound);
                an_tensor_release(c);
                for (int s = 0; s < segs; s++) pair_release(a[s]), pair_release(b[s]);
            }
    /* input errors name the launcher and change nothing */
    pair a = random_pair(ctx, AN_BF16, 64 * 64, 0, -1, 1);
    an_tensor *c = poisoned(ctx, AN_BF16, 64 * 64, 0);
    const void *ap[7], *bp[7];
    int64_t ks[7];
    for (int s = 0; s < 7; s++) ap[s] = bp[s] = an_tensor_data(a.dev), ks[s] = 64;
    double *before = test_download(ctx, c);
    expect_input_error(ctx, an_cuda_gemm_segments(ctx, AN_BF16, 64, 64, 0, ap, ks, bp, false, an_tensor_data(c)),
                       "gemm_segments", "0 segments");
    expect_input_error(ctx, an_cuda_gemm_segments(ctx, AN_BF16, 64, 64, 7, ap, ks, bp, false, an_tensor_data(c)),
                       "gemm_segments", "7 segments");
    ks[1] = 12; /* not a multiple of 8: off the tensor maps */
    expect_input_error(ctx, an_cuda_gemm_segments(ctx, AN_BF16, 64, 64, 2, ap, ks, bp, true, an_tensor_data(c)),
                       "gemm_segments", "segment 1");
    double *after = test_download(ctx, c);
    ck_assert_msg(memcmp(before, after, 64 * 64 * sizeof *before) == 0, "gemm_segments: a refused call wrote D");
    expect_input_error(ctx, an_cuda_set_gemm_group_rows(ctx, 1025), "gemm group rows", "1025");
    free(before), free(after);
    an_tensor_release(c);
    pair_release(a);
    test_ctx_free(ctx);
}
END_TEST

/* A refused an_cuda_gemm_projections call: an input error naming the launcher, cleared. */
/* an_cuda_gemm_projections (Hopper only; SKIP elsewhere): 1-3 projections of one input side by
 * side, each out = round(x W^T + bias) + down B^T with or without an adapter and a bias, against
 * a float64 reference (the base rounded to the dtype first) within the GEMM bound; ragged M and K
 * (a K not a multiple of 64), one row, several tiles a CTA, the 1.5B model's q | k | v; every
 * poisoned output written, a second launch the same bits. An adapter whose products stay under
 * half a unit in the last place leaves the rounded base as it is (peft's order; one rounding of
 * the whole sum would move about a tenth of them). Widths off 128, four projections, or the launch
 * turned off: the rule refuses, the launcher reports an input error and writes nothing. */
START_TEST(test_cuda_gemm_projections_match_the_separate_products) {
    an_ctx *ctx = hopper_ctx(17, "cuda gemm_projections");
    if (!ctx) return;
    const struct {
        int64_t m, k;
        int count;
        struct {
            int64_t n, r;
            bool bias;
        } p[3];
    } cases[] = {{300, 392, 3, {{256, 16, true}, {128, 0, false}, {256, 8, true}}},
                 {520, 1096, 3, {{512, 16, true}, {256, 0, true}, {256, 16, false}}},
                 {1, 8, 1, {{128, 8, false}}},
                 {257, 1536, 3, {{1536, 16, true}, {256, 0, true}, {256, 16, true}}},
                 {130, 64, 2, {{384, 0, true}, {128, 16, true}}},
                 {2200, 200, 3, {{640, 16, true}, {128, 0, false}, {256, 16, true}}}};
    for (int d = 1; d < N_DTYPES; d++) /* bf16, f16 */
        for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
            an_dtype dtype = float_dtypes[d];
            const int64_t m = cases[ci].m, k = cases[ci].k;
            const int count = cases[ci].count;
            pair x = random_pair(ctx, dtype, m * k, 0, -1, 1), w[3], bias[3], down[3], lb[3];
            an_tensor *out[3];
            an_cuda_projection cp[3];
            double *xv = test_values(x.host);
            for (int g = 0; g < count; g++) {
                const int64_t n = cases[ci].p[g].n, r = cases[ci].p[g].r;
                w[g] = random_pair(ctx, dtype, n * k, 0, -1, 1);
                bias[g] = cases[ci].p[g].bias ? random_pair(ctx, dtype, n, 0, -2, 2) : (pair){0};
                down[g] = r ? random_pair(ctx, dtype, m * r, 0, -1, 1) : (pair){0};
                lb[g] = r ? random_pair(ctx, dtype, n * r, 0, -1, 1) : (pair){0};
                out[g] = poisoned(ctx, dtype, m * n, 0);
                cp[g] = (an_cuda_projection){an_tensor_data(w[g].dev), bias[g].dev ? an_tensor_data(bias[g].dev) : NULL,
                                             r ? an_tensor_data(down[g].dev) : NULL, r ? an_tensor_data(lb[g].dev) : NULL,
                                             n, r, an_tensor_data(out[g]), NULL, 0};
            }
            ck_assert_msg(an_cuda_gemm_projections_rule(ctx, dtype, an_tensor_data(x.dev), m, k, count, cp),
                          "gemm_projections: the rule refused case %zu", ci);
            test_ok(ctx, an_cuda_gemm_projections(ctx, dtype, an_tensor_data(x.dev), m, k, count, cp), "gemm_projections");
            for (int g = 0; g < count; g++) {
                const int64_t n = cases[ci].p[g].n, r = cases[ci].p[g].r;
                double *wv = test_values(w[g].host), *bv = bias[g].host ? test_values(bias[g].host) : NULL;
                double *dv = r ? test_values(down[g].host) : NULL, *lv = r ? test_values(lb[g].host) : NULL;
                double *want = malloc((size_t)(m * n) * sizeof *want), *bound = malloc((size_t)(m * n) * sizeof *bound);
                for (int64_t i = 0; i < m; i++)
                    for (int64_t j = 0; j < n; j++) {
                        double acc = bv ? bv[j] : 0;
                        for (int64_t t = 0; t < k; t++) acc += xv[i * k + t] * wv[j * k + t];
                        if (r) { /* the base rounded to the dtype, then the adapter's product */
                            uint16_t bits;
                            an_dtype_store(&bits, dtype, 0, acc);
                            acc = an_dtype_load(&bits, dtype, 0);
                        }
                        for (int64_t t = 0; t < r; t++) acc += dv[i * r + t] * lv[j * r + t];
                        want[i * n + j] = acc;
                        bound[i * n + j] = 2 * rtol_of(dtype) * (fabs(acc) + sqrt((double)(k + r)));
                    }
                double *got = test_download(ctx, out[g]);
                expect_close(got, want, bound, m * n, "gemm_projections %s case %zu projection %d", an_dtype_name(dtype),
                             ci, g);
                free(wv), free(bv), free(dv), free(lv), free(want), free(bound), free(got);
            }
            double *first[3];
            for (int g = 0; g < count; g++) first[g] = test_download(ctx, out[g]);
            test_ok(ctx, an_cuda_gemm_projections(ctx, dtype, an_tensor_data(x.dev), m, k, count, cp), "gemm_projections again");
            for (int g = 0; g < count; g++) {
                double *again = test_download(ctx, out[g]);
                ck_assert_msg(memcmp(first[g], again, (size_t)(m * cases[ci].p[g].n) * sizeof *again) == 0,
                              "gemm_projections %s case %zu: a second launch gave other bits", an_dtype_name(dtype), ci);
                free(first[g]), free(again);
                an_tensor_release(out[g]);
                pair_release(w[g]), pair_release(bias[g]), pair_release(down[g]), pair_release(lb[g]);
            }
            free(xv);
            pair_release(x);
        }
    /* an adapter's products under half an ulp of outputs of 0.25 and more are rounded away */
    for (int d = 1; d < N_DTYPES; d++) {
        an_dtype dtype = float_dtypes[d];
        const int64_t m = 200, k = 256, n = 256, r = 16;
        const double small = dtype == AN_BF16 ? 5e-5 : 5e-6; /* 16 products under 2^-11 (bf16), 2^-13 (f16) */
        pair x = random_pair(ctx, dtype, m * k, 0, -1, 1), w = random_pair(ctx, dtype, n * k, 0, -1, 1);
        pair down = random_pair(ctx, dtype, m * r, 0, -1, 1), lb = random_pair(ctx, dtype, n * r, 0, -small, small);
        an_tensor *with = poisoned(ctx, dtype, m * n, 0), *without = poisoned(ctx, dtype, m * n, 0);
        an_cuda_projection cp = {an_tensor_data(w.dev), NULL, an_tensor_data(down.dev), an_tensor_data(lb.dev), n, r,
                                 an_tensor_data(with), NULL, 0};
        test_ok(ctx, an_cuda_gemm_projections(ctx, dtype, an_tensor_data(x.dev), m, k, 1, &cp), "with the adapter");
        cp.down = cp.lora_b = NULL, cp.r = 0, cp.out = an_tensor_data(without);
        test_ok(ctx, an_cuda_gemm_projections(ctx, dtype, an_tensor_data(x.dev), m, k, 1, &cp), "without");
        double *a = test_download(ctx, with), *b = test_download(ctx, without);
        int64_t checked = 0;
        for (int64_t i = 0; i < m * n; i++) {
            if (fabs(b[i]) < 0.25) continue;
            checked++;
            ck_assert_msg(a[i] == b[i], "gemm_projections %s: output %lld moved from %g to %g by an adapter product under "
                          "half an ulp", an_dtype_name(dtype), (long long)i, b[i], a[i]);
        }
        ck_assert_msg(checked > m * n / 2, "gemm_projections: only %lld outputs of 0.25 or more", (long long)checked);
        free(a), free(b);
        an_tensor_release(with), an_tensor_release(without);
        pair_release(x), pair_release(w), pair_release(down), pair_release(lb);
    }
    /* refused: a width off 128, four projections, turned off; nothing written */
    pair x = random_pair(ctx, AN_BF16, 64 * 64, 0, -1, 1), w = random_pair(ctx, AN_BF16, 256 * 64, 0, -1, 1);
    an_tensor *out = poisoned(ctx, AN_BF16, 64 * 256, 0);
    an_cuda_projection cp[4];
    for (int g = 0; g < 4; g++)
        cp[g] = (an_cuda_projection){an_tensor_data(w.dev), NULL, NULL, NULL, 64, 0, an_tensor_data(out), NULL, 0};
    double *before = test_download(ctx, out);
    expect_input_error(ctx, an_cuda_gemm_projections(ctx, AN_BF16, an_tensor_data(x.dev), 64, 64, 1, cp),
                       "gemm_projections", NULL);
    for (int g = 0; g < 4; g++) cp[g].n = 128;
    expect_input_error(ctx, an_cuda_gemm_projections(ctx, AN_BF16, an_tensor_data(x.dev), 64, 64, 4, cp),
                       "gemm_projections", NULL);
    ck_assert(an_cuda_gemm_projections_rule(ctx, AN_BF16, an_tensor_data(x.dev), 64, 64, 1, cp));
    test_ok(ctx, an_cuda_set_projections(ctx, false), "projections off");
    ck_assert(!an_cuda_gemm_projections_rule(ctx, AN_BF16, an_tensor_data(x.dev), 64, 64, 1, cp));
    expect_input_error(ctx, an_cuda_gemm_projections(ctx, AN_BF16, an_tensor_data(x.dev), 64, 64, 1, cp),
                       "gemm_projections", NULL);
    test_ok(ctx, an_cuda_set_projections(ctx, true), "projections on");
    double *after = test_download(ctx, out);
    ck_assert_msg(memcmp(before, after, 64 * 256 * sizeof *before) == 0, "gemm_projections: a refused call wrote out");
    free(before), free(after);
    an_tensor_release(out);
    pair_release(x), pair_release(w);
    test_ctx_free(ctx);
}
END_TEST

/* an_cuda_gemm_projections with rotary tables (an_cuda_rope_table): q's and k's outputs bit for bit
 * the unrotated launch's followed by an_cuda_rope in place (NEOX), v's untouched, at head dims 128
 * and 64 with adapters, biases, ragged rows and positions that restart, one of them large. The rule
 * refuses a head dim other than 64 or 128, one that does not divide the width, and two of them. */
START_TEST(test_cuda_gemm_projections_rotate_as_rope_does) {
    an_ctx *ctx = hopper_ctx(19, "cuda gemm_projections rope");
    if (!ctx) return;
    const struct {
        int64_t m, k, d, n[3], r[3];
    } cases[] = {{300, 392, 128, {256, 128, 256}, {16, 0, 8}}, {130, 64, 64, {256, 128, 128}, {0, 16, 16}},
                 {1100, 1536, 128, {1536, 256, 256}, {16, 0, 16}}};
    an_rope_config cfg = {AN_ROPE_NEOX, 10000.0, 0, 0, 0, 0};
    for (int dt = 1; dt < N_DTYPES; dt++) /* bf16, f16 */
        for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
            an_dtype dtype = float_dtypes[dt];
            const int64_t m = cases[ci].m, k = cases[ci].k, d = cases[ci].d;
            double inv_freq[64];
            an_cpu_rope_inv_freq(&cfg, d, inv_freq);
            an_tensor *pos_host = an_tensor_new(ctx, AN_I64, AN_CPU, 1, (int64_t[]){m});
            for (int64_t i = 0; i < m; i++) ((int64_t *)an_tensor_data(pos_host))[i] = i == 5 ? 70000 : i % 97;
            an_tensor *pos = an_tensor_to(ctx, pos_host, AN_I64, AN_CUDA);
            an_tensor *table = an_tensor_new(ctx, AN_F32, AN_CUDA, 2, (int64_t[]){m, d});
            test_ok(ctx, an_cuda_rope_table(ctx, an_tensor_data(pos), AN_I64, m, d, inv_freq, an_tensor_data(table)),
                    "rope_table");
            pair x = random_pair(ctx, dtype, m * k, 0, -1, 1), w[3], bias[3], down[3], lb[3];
            an_tensor *fused[3], *plain[3];
            an_cuda_projection cf[3], cs[3];
            for (int g = 0; g < 3; g++) {
                const int64_t n = cases[ci].n[g], r = cases[ci].r[g];
                w[g] = random_pair(ctx, dtype, n * k, 0, -1, 1);
                bias[g] = g != 2 ? random_pair(ctx, dtype, n, 0, -2, 2) : (pair){0};
                down[g] = r ? random_pair(ctx, dtype, m * r, 0, -1, 1) : (pair){0};
                lb[g] = r ? random_pair(ctx, dtype, n * r, 0, -1, 1) : (pair){0};
                fused[g] = poisoned(ctx, dtype, m * n, 0), plain[g] = poisoned(ctx, dtype, m * n, 0);
                cs[g] = (an_cuda_projection){an_tensor_data(w[g].dev), bias[g].dev ? an_tensor_data(bias[g].dev) : NULL,
                                             r ? an_tensor_data(down[g].dev) : NULL, r ? an_tensor_data(lb[g].dev) : NULL,
                                             n, r, an_tensor_data(plain[g]), NULL, 0};
                cf[g] = cs[g], cf[g].out = an_tensor_data(fused[g]);
                if (g < 2) cf[g].rope = an_tensor_data(table), cf[g].rope_d = d;
            }
            ck_assert_msg(an_cuda_gemm_projections_rule(ctx, dtype, an_tensor_data(x.dev), m, k, 3, cf),
                          "gemm_projections rope: the rule refused case %zu", ci);
            test_ok(ctx, an_cuda_gemm_projections(ctx, dtype, an_tensor_data(x.dev), m, k, 3, cf), "rotated launch");
            test_ok(ctx, an_cuda_gemm_projections(ctx, dtype, an_tensor_data(x.dev), m, k, 3, cs), "plain launch");
            double *unturned[3];
            for (int g = 0; g < 3; g++) unturned[g] = test_download(ctx, plain[g]);
            for (int g = 0; g < 2; g++)
                test_ok(ctx, an_cuda_rope(ctx, dtype, an_tensor_data(plain[g]), an_tensor_data(pos), AN_I64, m,
                                          cases[ci].n[g] / d, d, inv_freq, 0, 1.0, an_tensor_data(plain[g])),
                        "rope");
            for (int g = 0; g < 3; g++) {
                double *a = test_download(ctx, fused[g]), *b = test_download(ctx, plain[g]);
                int64_t n = cases[ci].n[g], turned = 0;
                for (int64_t i = 0; i < m * n; i++) {
                    ck_assert_msg(!isnan(a[i]) && a[i] == b[i], "gemm_projections rope %s case %zu projection %d: element "
                                  "%lld is %g, the separate rope gives %g", an_dtype_name(dtype), ci, g, (long long)i,
                                  a[i], b[i]);
                    turned += a[i] != unturned[g][i];
                }
                /* q and k were turned (position 0 rows and tiny angles keep some values), v was not */
                ck_assert_msg(g < 2 ? turned > m * n / 4 : turned == 0, "gemm_projections rope case %zu projection %d: "
                              "%lld of %lld values changed by the rotation", ci, g, (long long)turned, (long long)(m * n));
                free(a), free(b), free(unturned[g]);
            }
            /* refused: head dim 96, one that does not divide 128's widths, and two head dims */
            cf[0].rope_d = 96;
            ck_assert(!an_cuda_gemm_projections_rule(ctx, dtype, an_tensor_data(x.dev), m, k, 3, cf));
            cf[0].rope_d = 64, cf[1].rope_d = 128;
            ck_assert(!an_cuda_gemm_projections_rule(ctx, dtype, an_tensor_data(x.dev), m, k, 3, cf));
            for (int g = 0; g < 3; g++) {
                an_tensor_release(fused[g]), an_tensor_release(plain[g]);
                pair_release(w[g]), pair_release(bias[g]), pair_release(down[g]), pair_release(lb[g]);
            }
            pair_release(x);
            an_tensor_release(table), an_tensor_release(pos), an_tensor_release(pos_host);
        }
    test_ctx_free(ctx);
}
END_TEST

/* Fills bound[i] = rtol |want[i]| + 1e-4 abs[i] (abs: the sum of the absolute terms: fp32 sums in
 * another order) and checks the download of dev. */
static void expect_sums_close(an_ctx *ctx, const an_tensor *dev, const double *want, const double *abs, double rtol,
                              const char *fmt, ...) {
    int64_t n = an_tensor_numel(dev);
    double *got = test_download(ctx, dev), *bound = malloc((size_t)n * sizeof *bound);
    for (int64_t i = 0; i < n; i++) bound[i] = rtol * fabs(want[i]) + 1e-4 * abs[i];
    char what[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    expect_close(got, want, bound, n, "%s", what);
    free(got), free(bound);
}

/* want (a, b) = old + p^T q for p (m, a) and q (m, b) in float64 (old NULL: none), and abs the sum
 * of the absolute terms. */
static void transposed_product(const double *p, const double *q, const double *old, int64_t m, int64_t a, int64_t b,
                               double *want, double *abs) {
    for (int64_t i = 0; i < a; i++)
        for (int64_t j = 0; j < b; j++) {
            double acc = old ? old[i * b + j] : 0, sa = fabs(acc);
            for (int64_t row = 0; row < m; row++) acc += p[row * a + i] * q[row * b + j], sa += fabs(p[row * a + i] * q[row * b + j]);
            want[i * b + j] = acc, abs[i * b + j] = sa;
        }
}

/* an_cuda_lora_grads: 1-3 adapters of one backward, d_down = scale dY B, dB = dY^T down and
 * dA = d_down^T x_lora against float64 references (dA from the launch's own rounded d_down, as the
 * op defines it), written into poisoned buffers or added into old gradients; adapters sharing
 * x_lora and one with its own; ranks 8 to 64 (stacked ranks over 64 split into two passes over x);
 * ragged M (one row, a partial last stage) and widths; the same bits on a repeat, and each
 * adapter's the same bits launched alone (the splits depend on M only). Refused (input error,
 * nothing written): a rank off 8, dA without d_down, f32, turned off. */
START_TEST(test_cuda_lora_grads_match_the_reference) {
    an_ctx *ctx = gpu_ctx(19, "cuda lora_grads");
    if (!ctx) return;
    typedef struct {
        int64_t n, r;
        bool own_x, want_down, want_b, want_a, add;
    } adapter_case;
    const struct {
        int64_t m, k;
        int count;
        adapter_case a[3];
    } cases[] = {{300, 392, 2, {{256, 16, false, true, true, true, false}, {128, 8, false, true, true, true, false}}},
                 {1, 8, 1, {{8, 8, false, true, true, true, false}}},
                 {2200, 1536, 2, {{1536, 16, false, true, true, true, true}, {256, 16, false, true, true, true, true}}},
                 {777, 200, 3,
                  {{128, 64, false, true, true, true, false},
                   {64, 32, false, true, false, true, true},
                   {96, 24, true, true, true, true, false}}},
                 {130, 64, 1, {{72, 16, false, true, false, false, false}}},
                 {520, 1096, 2, {{200, 40, false, false, true, false, false}, {136, 8, true, true, true, true, true}}}};
    for (int d = 1; d < N_DTYPES; d++) /* bf16, f16 */
        for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
            an_dtype dtype = float_dtypes[d];
            const int64_t m = cases[ci].m, k = cases[ci].k;
            const int count = cases[ci].count;
            const double rtol = rtol_of(dtype);
            pair x = random_pair(ctx, dtype, m * k, 0, -1, 1), own[3] = {{0}}, dy[3], lb[3], down[3], old_b[3], old_a[3];
            an_tensor *dd[3] = {0}, *gb[3] = {0}, *ga[3] = {0};
            an_cuda_lora_grad ad[3];
            for (int i = 0; i < count; i++) {
                const adapter_case *c = &cases[ci].a[i];
                own[i] = c->own_x ? random_pair(ctx, dtype, m * k, 0, -1, 1) : (pair){0};
                dy[i] = random_pair(ctx, dtype, m * c->n, 0, -1, 1), lb[i] = random_pair(ctx, dtype, c->n * c->r, 0, -1, 1);
                down[i] = random_pair(ctx, dtype, m * c->r, 0, -1, 1);
                old_b[i] = c->add ? random_pair(ctx, dtype, c->n * c->r, 0, -4, 4) : (pair){0};
                old_a[i] = c->add ? random_pair(ctx, dtype, c->r * k, 0, -4, 4) : (pair){0};
                dd[i] = c->want_down ? poisoned(ctx, dtype, m * c->r, 0) : NULL;
                if (c->want_b) gb[i] = c->add ? an_tensor_retain(old_b[i].dev) : poisoned(ctx, dtype, c->n * c->r, 0);
                if (c->want_a) ga[i] = c->add ? an_tensor_retain(old_a[i].dev) : poisoned(ctx, dtype, c->r * k, 0);
                ad[i] = (an_cuda_lora_grad){an_tensor_data(dy[i].dev), an_tensor_data(lb[i].dev), an_tensor_data(down[i].dev),
                                            an_tensor_data(c->own_x ? own[i].dev : x.dev), c->n, c->r, 2.0 - 0.5 * i,
                                            dd[i] ? an_tensor_data(dd[i]) : NULL, gb[i] ? an_tensor_data(gb[i]) : NULL,
                                            ga[i] ? an_tensor_data(ga[i]) : NULL, c->add, c->add};
            }
            ck_assert_msg(an_cuda_lora_grads_rule(ctx, dtype, m, k, count, ad), "lora_grads: the rule refused case %zu", ci);
            test_ok(ctx, an_cuda_lora_grads(ctx, dtype, m, k, count, ad), "lora_grads");
            double *first[3][3] = {{0}};
            for (int i = 0; i < count; i++) {
                const adapter_case *c = &cases[ci].a[i];
                const int64_t n = c->n, r = c->r;
                double *dyv = test_values(dy[i].host), *bv = test_values(lb[i].host), *dv = test_values(down[i].host);
                double *xv = test_values(c->own_x ? own[i].host : x.host);
                if (dd[i]) { /* d_down = scale dY B */
                    double *want = malloc((size_t)(m * r) * sizeof *want), *abs = malloc((size_t)(m * r) * sizeof *abs);
                    for (int64_t row = 0; row < m; row++)
                        for (int64_t j = 0; j < r; j++) {
                            double acc = 0, sa = 0;
                            for (int64_t t = 0; t < n; t++) acc += dyv[row * n + t] * bv[t * r + j], sa += fabs(dyv[row * n + t] * bv[t * r + j]);
                            want[row * r + j] = ad[i].scale * acc, abs[row * r + j] = fabs(ad[i].scale) * sa;
                        }
                    expect_sums_close(ctx, dd[i], want, abs, rtol, "lora_grads %s case %zu adapter %d d_down", an_dtype_name(dtype), ci, i);
                    free(want), free(abs);
                }
                if (gb[i]) { /* dB (n, r) = dY^T down, + old */
                    double *old = c->add ? test_values(old_b[i].host) : NULL;
                    double *want = malloc((size_t)(n * r) * sizeof *want), *abs = malloc((size_t)(n * r) * sizeof *abs);
                    transposed_product(dyv, dv, old, m, n, r, want, abs);
                    expect_sums_close(ctx, gb[i], want, abs, rtol, "lora_grads %s case %zu adapter %d dB", an_dtype_name(dtype), ci, i);
                    free(want), free(abs), free(old);
                }
                if (ga[i]) { /* dA (r, k) = d_down^T x_lora, from the launch's rounded d_down, + old */
                    double *old = c->add ? test_values(old_a[i].host) : NULL, *ddv = test_download(ctx, dd[i]);
                    double *want = malloc((size_t)(r * k) * sizeof *want), *abs = malloc((size_t)(r * k) * sizeof *abs);
                    transposed_product(ddv, xv, old, m, r, k, want, abs);
                    expect_sums_close(ctx, ga[i], want, abs, rtol, "lora_grads %s case %zu adapter %d dA", an_dtype_name(dtype), ci, i);
                    free(want), free(abs), free(old), free(ddv);
                }
                free(dyv), free(bv), free(dv), free(xv);
                an_tensor *outs[3] = {dd[i], gb[i], ga[i]};
                for (int o = 0; o < 3; o++) first[i][o] = outs[o] ? test_download(ctx, outs[o]) : NULL;
            }
            /* a repeat, and each adapter alone: the same bits (old gradients restored first) */
            for (int pass = 0; pass <= count; pass++) {
                int lo = pass == 0 ? 0 : pass - 1, hi = pass == 0 ? count : pass;
                for (int i = lo; i < hi; i++) {
                    if (!cases[ci].a[i].add) continue;
                    if (gb[i]) test_ok(ctx, an_cuda_memcpy(ctx, an_tensor_data(gb[i]), AN_CUDA, an_tensor_data(old_b[i].host), AN_CPU, an_tensor_nbytes(gb[i])), "restore dB");
                    if (ga[i]) test_ok(ctx, an_cuda_memcpy(ctx, an_tensor_data(ga[i]), AN_CUDA, an_tensor_data(old_a[i].host), AN_CPU, an_tensor_nbytes(ga[i])), "restore dA");
                }
                test_ok(ctx, an_cuda_lora_grads(ctx, dtype, m, k, hi - lo, ad + lo), "lora_grads again");
                for (int i = lo; i < hi; i++) {
                    an_tensor *outs[3] = {dd[i], gb[i], ga[i]};
                    for (int o = 0; o < 3; o++) {
                        if (!outs[o]) continue;
                        double *again = test_download(ctx, outs[o]);
                        ck_assert_msg(memcmp(first[i][o], again, (size_t)an_tensor_numel(outs[o]) * sizeof *again) == 0,
                                      "lora_grads %s case %zu adapter %d output %d: other bits %s", an_dtype_name(dtype), ci,
                                      i, o, pass ? "launched alone" : "on a repeat");
                        free(again);
                    }
                }
            }
            for (int i = 0; i < count; i++) {
                for (int o = 0; o < 3; o++) free(first[i][o]);
                an_tensor_release(dd[i]), an_tensor_release(gb[i]), an_tensor_release(ga[i]);
                pair_release(own[i]), pair_release(dy[i]), pair_release(lb[i]), pair_release(down[i]);
                pair_release(old_b[i]), pair_release(old_a[i]);
            }
            pair_release(x);
        }
    /* refused: a rank off 8, dA without d_down, f32, turned off; nothing written */
    pair x = random_pair(ctx, AN_BF16, 64 * 64, 0, -1, 1), dy = random_pair(ctx, AN_BF16, 64 * 64, 0, -1, 1);
    pair lb = random_pair(ctx, AN_BF16, 64 * 16, 0, -1, 1), down = random_pair(ctx, AN_BF16, 64 * 16, 0, -1, 1);
    an_tensor *out = poisoned(ctx, AN_BF16, 64 * 64, 0);
    void *o = an_tensor_data(out);
    an_cuda_lora_grad ad = {an_tensor_data(dy.dev), an_tensor_data(lb.dev), an_tensor_data(down.dev), an_tensor_data(x.dev),
                            64, 12, 1.0, o, o, o, 0, 0};
    double *before = test_download(ctx, out);
    expect_input_error(ctx, an_cuda_lora_grads(ctx, AN_BF16, 64, 64, 1, &ad), "lora_grads", NULL);
    ad.r = 16, ad.d_down = NULL;
    expect_input_error(ctx, an_cuda_lora_grads(ctx, AN_BF16, 64, 64, 1, &ad), "lora_grads", NULL);
    ad.d_down = o;
    expect_input_error(ctx, an_cuda_lora_grads(ctx, AN_F32, 64, 64, 1, &ad), "lora_grads", NULL);
    ck_assert(an_cuda_lora_grads_rule(ctx, AN_BF16, 64, 64, 1, &ad));
    test_ok(ctx, an_cuda_set_lora_grads(ctx, false), "lora_grads off");
    ck_assert(!an_cuda_lora_grads_rule(ctx, AN_BF16, 64, 64, 1, &ad));
    expect_input_error(ctx, an_cuda_lora_grads(ctx, AN_BF16, 64, 64, 1, &ad), "lora_grads", NULL);
    test_ok(ctx, an_cuda_set_lora_grads(ctx, true), "lora_grads on");
    double *after = test_download(ctx, out);
    ck_assert_msg(memcmp(before, after, 64 * 64 * sizeof *before) == 0, "lora_grads: a refused call wrote out");
    free(before), free(after);
    an_tensor_release(out);
    pair_release(x), pair_release(dy), pair_release(lb), pair_release(down);
    test_ctx_free(ctx);
}
END_TEST

/* an_cuda_gemm_logits_stats and an_cuda_cross_entropy_stats_grad (Hopper only; SKIP elsewhere):
 * the logits within the GEMM bound of a float64 reference, every one written; on those logits the
 * lse merged from the tiles' stats within 1e-6 of the two-pass kernel's (another order of the
 * same sums) and 1e-5 of a float64 lse, the losses likewise, the dlogits within the dtype's
 * tolerance of the two-pass kernel's, ignored rows zero. Ragged M and N (a last column tile of
 * 40 of 192), a single row, several tiles a CTA. */
START_TEST(test_cuda_logits_stats_give_the_two_pass_loss) {
    an_ctx *ctx = hopper_ctx(14, "cuda logits_stats");
    if (!ctx) return;
    /* M, K, N; N 70008: a row over several rounds of each thread's kWide packs */
    const int64_t cases[][3] = {{300, 136, 1000}, {129, 64, 392}, {1, 8, 8}, {1100, 256, 6152}, {37, 64, 70008}};
    const double scale = 1.0 / 3.0;
    for (int d = 1; d < N_DTYPES; d++) /* bf16, f16 */
        for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
            an_dtype dtype = float_dtypes[d];
            const int64_t M = cases[ci][0], K = cases[ci][1], N = cases[ci][2], tiles = an_cuda_logits_stats_tiles(N);
            char what[160];
            snprintf(what, sizeof what, "logits_stats %s M %lld K %lld N %lld", an_dtype_name(dtype), (long long)M,
                     (long long)K, (long long)N);
            pair x = random_pair(ctx, dtype, M * K, 0, -2, 2), w = random_pair(ctx, dtype, N * K, 0, -1, 1);
            an_tensor *logits = poisoned(ctx, dtype, M * N, 0), *stats = poisoned(ctx, AN_F32, M * tiles * 2, 0);
            test_ok(ctx,
                    an_cuda_gemm_logits_stats(ctx, dtype, an_tensor_data(x.dev), M, K, an_tensor_data(w.dev), N,
                                              an_tensor_data(logits), an_tensor_data(stats)),
                    what);
            double *xv = test_values(x.host), *wv = test_values(w.host);
            double *want = calloc((size_t)(M * N), sizeof *want), *bound = calloc((size_t)(M * N), sizeof *bound);
            for (int64_t i = 0; i < M; i++)
                for (int64_t j = 0; j < N; j++) {
                    double acc = 0;
                    for (int64_t t = 0; t < K; t++) acc += xv[i * K + t] * wv[j * K + t];
                    want[i * N + j] = acc;
                    bound[i * N + j] = 2 * rtol_of(dtype) * (fabs(acc) + sqrt((double)K));
                }
            double *lv = test_download(ctx, logits);
            expect_close(lv, want, bound, M * N, "%s: logits", what);
            /* the loss both ways on these logits, every seventh row ignored */
            an_tensor *ids_h = test_ids(ctx, AN_I32, 1, &M, N);
            for (int64_t i = 3; i < M; i += 7) an_tensor_set(ids_h, i, -100);
            an_tensor *ids = an_tensor_to(ctx, ids_h, AN_I32, AN_CUDA);
            an_tensor *a = an_tensor_to(ctx, logits, dtype, AN_CUDA), *b = an_tensor_to(ctx, logits, dtype, AN_CUDA);
            an_tensor *lse_a = poisoned(ctx, AN_F32, M, 0), *loss_a = poisoned(ctx, AN_F32, M, 0);
            an_tensor *lse_b = poisoned(ctx, AN_F32, M, 0), *loss_b = poisoned(ctx, AN_F32, M, 0);
            ck_assert_msg(ids && a && b, "%s: alloc: %s", what, an_error_message(ctx));
            test_ok(ctx,
                    an_cuda_cross_entropy_stats_grad(ctx, dtype, an_tensor_data(a), an_tensor_data(stats), tiles,
                                                     an_tensor_data(ids), AN_I32, M, N, -100, scale,
                                                     an_tensor_data(lse_a), an_tensor_data(loss_a)),
                    what);
            test_ok(ctx,
                    an_cuda_cross_entropy_rows_grad(ctx, dtype, an_tensor_data(b), an_tensor_data(ids), AN_I32, M, N,
                                                    -100, scale, an_tensor_data(lse_b), an_tensor_data(loss_b)),
                    what);
            double *la = test_download(ctx, lse_a), *lb = test_download(ctx, lse_b);
            double *sa = test_download(ctx, loss_a), *sb = test_download(ctx, loss_b);
            double *ga = test_download(ctx, a), *gb = test_download(ctx, b);
            for (int64_t i = 0; i < M; i++) {
                int64_t t = (int64_t)an_tensor_get(ids_h, i);
                if (t == -100) {
                    ck_assert_msg(la[i] == 0 && sa[i] == 0, "%s: ignored row %lld has lse %g loss %g", what,
                                  (long long)i, la[i], sa[i]);
                    for (int64_t j = 0; j < N; j++)
                        ck_assert_msg(ga[i * N + j] == 0, "%s: ignored row %lld column %lld is %g", what, (long long)i,
                                      (long long)j, ga[i * N + j]);
                    continue;
                }
                double m = -INFINITY, sum = 0;
                for (int64_t j = 0; j < N; j++) m = fmax(m, lv[i * N + j]);
                for (int64_t j = 0; j < N; j++) sum += exp(lv[i * N + j] - m);
                double lse64 = m + log(sum), tol = 1e-6 * (fabs(lb[i]) + 1);
                ck_assert_msg(fabs(la[i] - lb[i]) <= tol && fabs(la[i] - lse64) <= 1e-5 * (fabs(lse64) + 1),
                              "%s: row %lld lse %.9g, two-pass %.9g, float64 %.9g", what, (long long)i, la[i], lb[i],
                              lse64);
                ck_assert_msg(fabs(sa[i] - sb[i]) <= tol && fabs(sa[i] - (lse64 - lv[i * N + t])) <= 1e-5 * (fabs(lse64) + 1),
                              "%s: row %lld loss %.9g, two-pass %.9g", what, (long long)i, sa[i], sb[i]);
                for (int64_t j = 0; j < N; j++) bound[i * N + j] = rtol_of(dtype) * fabs(gb[i * N + j]) + 1e-6 * scale;
            }
            for (int64_t i = 3; i < M; i += 7)
                for (int64_t j = 0; j < N; j++) bound[i * N + j] = 0;
            expect_close(ga, gb, bound, M * N, "%s: dlogits against the two-pass kernel's", what);
            free(xv), free(wv), free(want), free(bound), free(lv), free(la), free(lb), free(sa), free(sb), free(ga),
                free(gb);
            an_tensor *ts[] = {logits, stats, ids_h, ids, a, b, lse_a, loss_a, lse_b, loss_b};
            for (size_t k = 0; k < sizeof ts / sizeof *ts; k++) an_tensor_release(ts[k]);
            pair_release(x), pair_release(w);
        }
    test_ctx_free(ctx);
}
END_TEST

/* an_cuda_cross_entropy_stats_grad on long rows none of them 16-byte aligned (V odd, the buffer
 * one element in: each row's unpacked head and tail differ), stats made here as (max, sum of exp)
 * pairs of column ranges in float64: lse and loss within 1e-5 of the float64 values and 1e-6 of the
 * two-pass kernel's on the same logits, the dlogits within the dtype's tolerance of the two-pass
 * kernel's, ignored rows zero. The targets sit at a row's start, head, middle and tail. */
START_TEST(test_cuda_stats_grad_unaligned_rows) {
    an_ctx *ctx = gpu_ctx(15, "cuda stats_grad unaligned rows");
    if (!ctx) return;
    const int64_t V = 70001, tiles = 9;
    const double scale = 0.25;
    for (int d = 1; d < N_DTYPES; d++) { /* bf16, f16 */
        an_dtype dtype = float_dtypes[d];
        const int64_t targets[] = {0, 1, 6, 7, 20000, 35000, 50000, 69993, 69999, 70000, -100, 12345};
        const int64_t M = sizeof targets / sizeof *targets;
        char what[96];
        snprintf(what, sizeof what, "stats_grad %s M %lld V %lld", an_dtype_name(dtype), (long long)M, (long long)V);
        pair x = random_pair(ctx, dtype, M * V, 1, -6, 6);
        double *xv = test_values(x.host);
        an_tensor *stats_h = an_tensor_new(ctx, AN_F32, AN_CPU, 1, (int64_t[]){M * tiles * 2});
        an_tensor *ids_h = an_tensor_new(ctx, AN_I32, AN_CPU, 1, (int64_t[]){M});
        ck_assert_msg(stats_h && ids_h, "%s: alloc: %s", what, an_error_message(ctx));
        double *lse64 = calloc((size_t)M, sizeof *lse64);
        for (int64_t i = 0; i < M; i++) {
            an_tensor_set(ids_h, i, (double)targets[i]);
            double m_all = -INFINITY, s_all = 0;
            for (int64_t k = 0; k < tiles; k++) { /* columns [k V / tiles, (k + 1) V / tiles) */
                double m = -INFINITY, sum = 0;
                for (int64_t j = k * V / tiles; j < (k + 1) * V / tiles; j++) m = fmax(m, xv[i * V + j]);
                for (int64_t j = k * V / tiles; j < (k + 1) * V / tiles; j++) sum += exp(xv[i * V + j] - m);
                an_tensor_set(stats_h, (i * tiles + k) * 2, m);
                an_tensor_set(stats_h, (i * tiles + k) * 2 + 1, sum);
                m_all = fmax(m_all, m);
            }
            for (int64_t j = 0; j < V; j++) s_all += exp(xv[i * V + j] - m_all);
            lse64[i] = m_all + log(s_all);
        }
        an_tensor *stats = an_tensor_to(ctx, stats_h, AN_F32, AN_CUDA), *ids = an_tensor_to(ctx, ids_h, AN_I32, AN_CUDA);
        an_tensor *b = an_tensor_to(ctx, x.dev, dtype, AN_CUDA); /* the two-pass kernel's copy, a fresh buffer */
        an_tensor *lse_a = poisoned(ctx, AN_F32, M, 0), *loss_a = poisoned(ctx, AN_F32, M, 0);
        an_tensor *lse_b = poisoned(ctx, AN_F32, M, 0), *loss_b = poisoned(ctx, AN_F32, M, 0);
        ck_assert_msg(stats && ids && b, "%s: upload: %s", what, an_error_message(ctx));
        test_ok(ctx,
                an_cuda_cross_entropy_stats_grad(ctx, dtype, an_tensor_data(x.dev), an_tensor_data(stats), tiles,
                                                 an_tensor_data(ids), AN_I32, M, V, -100, scale,
                                                 an_tensor_data(lse_a), an_tensor_data(loss_a)),
                what);
        test_ok(ctx,
                an_cuda_cross_entropy_rows_grad(ctx, dtype, an_tensor_data(b), an_tensor_data(ids), AN_I32, M, V, -100,
                                                scale, an_tensor_data(lse_b), an_tensor_data(loss_b)),
                what);
        double *la = test_download(ctx, lse_a), *lb = test_download(ctx, lse_b);
        double *sa = test_download(ctx, loss_a), *sb = test_download(ctx, loss_b);
        double *ga = test_download(ctx, x.dev), *gb = test_download(ctx, b);
        double *bound = calloc((size_t)(M * V), sizeof *bound);
        for (int64_t i = 0; i < M; i++) {
            const int64_t t = targets[i];
            if (t == -100) {
                ck_assert_msg(la[i] == 0 && sa[i] == 0, "%s: ignored row %lld has lse %g loss %g", what, (long long)i,
                              la[i], sa[i]);
                for (int64_t j = 0; j < V; j++)
                    ck_assert_msg(ga[i * V + j] == 0, "%s: ignored row %lld column %lld is %g", what, (long long)i,
                                  (long long)j, ga[i * V + j]);
                continue;
            }
            const double tol = 1e-6 * (fabs(lb[i]) + 1), tol64 = 1e-5 * (fabs(lse64[i]) + 1);
            ck_assert_msg(fabs(la[i] - lb[i]) <= tol && fabs(la[i] - lse64[i]) <= tol64,
                          "%s: row %lld lse %.9g, two-pass %.9g, float64 %.9g", what, (long long)i, la[i], lb[i],
                          lse64[i]);
            ck_assert_msg(fabs(sa[i] - sb[i]) <= tol && fabs(sa[i] - (lse64[i] - xv[i * V + t])) <= tol64,
                          "%s: row %lld (target %lld) loss %.9g, two-pass %.9g, float64 %.9g", what, (long long)i,
                          (long long)t, sa[i], sb[i], lse64[i] - xv[i * V + t]);
            ck_assert_msg(gb[i * V + t] < 0, "%s: row %lld: the target's gradient %g is not negative", what,
                          (long long)i, gb[i * V + t]);
            for (int64_t j = 0; j < V; j++) bound[i * V + j] = rtol_of(dtype) * fabs(gb[i * V + j]) + 1e-6 * scale;
        }
        expect_close(ga, gb, bound, M * V, "%s: dlogits against the two-pass kernel's", what);
        free(xv), free(lse64), free(la), free(lb), free(sa), free(sb), free(ga), free(gb), free(bound);
        an_tensor *ts[] = {stats_h, ids_h, stats, ids, b, lse_a, loss_a, lse_b, loss_b};
        for (size_t k = 0; k < sizeof ts / sizeof *ts; k++) an_tensor_release(ts[k]);
        pair_release(x);
    }
    test_ctx_free(ctx);
}
END_TEST

/* The decode shapes an_cuda_gemm sends to an_cuda_gemv (x W^T with at most AN_CUDA_GEMV_MAX_ROWS
 * rows): every row count, K a multiple of the 16-byte vector and not, aligned and one element off,
 * a weight over AN_CUDA_GEMV_MAX_WEIGHT_BYTES;
 * and an_linear's bias (GEMV, cuBLASLt epilogue, or a misaligned bias added after) against the CPU. */
START_TEST(test_cuda_gemv_rows_match_the_reference) {
    an_ctx *ctx = gpu_ctx(9, "cuda gemv");
    if (!ctx) return;
    /* K 4104: long rows split over 4 warps a column; 1539: the scalar path */
    const int64_t ks[] = {8, 1536, 1539, 4104}, ns[] = {1, 7, 300};
    for (int d = 0; d < N_DTYPES; d++)
        for (int64_t m = 1; m <= AN_CUDA_GEMV_MAX_ROWS; m++)
            for (int ki = 0; ki < 4; ki++)
                for (int ni = 0; ni < 3; ni++)
                    for (int variant = 0; variant < 3; variant++) /* 0: plain; 1: accumulate; 2: misaligned */
                        check_gemm(ctx, float_dtypes[d], (an_gemm_shape){1, m, ns[ni], ks[ki], 0, 1, 0, variant == 1},
                                   variant == 2 ? 1 : 0);
    /* a weight past AN_CUDA_GEMV_MAX_WEIGHT_BYTES (67.6 MB of bf16): the GEMV or cuBLASLt by the
     * card's bandwidth (cuda.h), the same values either way */
    for (int64_t m = 1; m <= AN_CUDA_GEMV_RULE_ROWS; m++)
        check_gemm(ctx, AN_BF16, (an_gemm_shape){1, m, 22000, 1536, 0, 1, 0, m == 2}, 0);
    /* an_linear with a bias: inside the GEMV on so few rows, in cuBLASLt's bias epilogue on more, and
     * added by a second kernel when the bias is not 16-byte aligned: the same values as the CPU */
    an_no_grad_begin(ctx);
    const int64_t biased_rows[] = {1, 4, 7, 9, 64, 300};
    for (int d = 0; d < N_DTYPES; d++)
        for (size_t mi = 0; mi < sizeof biased_rows / sizeof *biased_rows; mi++)
            for (int off = 0; off < 2; off++) {
                int64_t m = biased_rows[mi];
                an_tensor *x = test_uniform(ctx, float_dtypes[d], 2, (int64_t[]){m, 1536}, -1, 1, false);
                an_tensor *w = test_uniform(ctx, float_dtypes[d], 2, (int64_t[]){300, 1536}, -1, 1, false);
                an_tensor *b = test_uniform(ctx, float_dtypes[d], 1, (int64_t[]){300}, -4, 4, false);
                an_tensor *xd = an_tensor_to(ctx, x, x->dtype, AN_CUDA), *wd = an_tensor_to(ctx, w, w->dtype, AN_CUDA);
                an_tensor *bd = an_tensor_to(ctx, b, b->dtype, AN_CUDA);
                if (off) { /* the same bias one element past an aligned address */
                    an_tensor *wide = test_poisoned_gpu(ctx, float_dtypes[d], 1, (int64_t[]){301});
                    an_tensor *view = an_tensor_rows(ctx, wide, 1, 300);
                    ck_assert_msg(view && an_tensor_copy_into(ctx, view, bd) == AN_OK, "%s", an_error_message(ctx));
                    an_tensor_release(wide), an_tensor_release(bd);
                    bd = view;
                }
                an_tensor *want = an_linear(ctx, x, w, b), *got = an_linear(ctx, xd, wd, bd);
                ck_assert_msg(want && got, "%s", an_error_message(ctx));
                double *wv = test_values(want), *gv = test_download(ctx, got), *bound = calloc((size_t)(m * 300), sizeof *bound);
                for (int64_t i = 0; i < m * 300; i++) bound[i] = 2 * rtol_of(float_dtypes[d]) * (fabs(wv[i]) + sqrt(1536.0));
                expect_close(gv, wv, bound, m * 300, "linear with bias %s rows %lld%s", an_dtype_name(float_dtypes[d]),
                             (long long)m, off ? " (misaligned bias)" : "");
                free(wv), free(gv), free(bound);
                /* plus a residual: copied in first on the GEMV's rows, cuBLASLt's C on more (one rounding) */
                an_tensor *r = test_uniform(ctx, float_dtypes[d], 2, (int64_t[]){m, 300}, -8, 8, false);
                an_tensor *rd = an_tensor_to(ctx, r, r->dtype, AN_CUDA);
                an_tensor *want_r = an_linear_residual(ctx, x, w, b, r), *got_r = an_linear_residual(ctx, xd, wd, bd, rd);
                ck_assert_msg(want_r && got_r, "%s", an_error_message(ctx));
                wv = test_values(want_r), gv = test_download(ctx, got_r), bound = calloc((size_t)(m * 300), sizeof *bound);
                for (int64_t i = 0; i < m * 300; i++) bound[i] = 2 * rtol_of(float_dtypes[d]) * (fabs(wv[i]) + sqrt(1536.0));
                expect_close(gv, wv, bound, m * 300, "linear with bias and residual %s rows %lld%s",
                             an_dtype_name(float_dtypes[d]), (long long)m, off ? " (misaligned bias)" : "");
                free(wv), free(gv), free(bound);
                an_tensor_release(r), an_tensor_release(rd), an_tensor_release(want_r), an_tensor_release(got_r);
                an_tensor_release(x), an_tensor_release(w), an_tensor_release(b), an_tensor_release(xd);
                an_tensor_release(wd), an_tensor_release(bd), an_tensor_release(want), an_tensor_release(got);
            }
    an_no_grad_end(ctx);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_cuda_gemm_every_transpose_batch_shared_and_accumulate) {
    an_ctx *ctx = gpu_ctx(8, "cuda gemm");
    if (!ctx) return;
    const int64_t dims[] = {1, 17, 64, 129};
    for (int d = 0; d < N_DTYPES; d++)
        for (int mi = 0; mi < 4; mi++)
            for (int ni = 0; ni < 4; ni++)
                for (int ki = 0; ki < 4; ki++)
                    for (int t = 0; t < 4; t++)
                        for (int variant = 0; variant < 5; variant++) {
                            /* 0: one GEMM; 1: batch 3; 2: batch 3, shared B; 3: that, accumulating;
                             * 4: batch 3 accumulating with every pointer one element off alignment */
                            an_gemm_shape s = {variant == 0 ? 1 : 3, dims[mi], dims[ni], dims[ki], t & 1, (t >> 1) & 1,
                                               variant == 2 || variant == 3, variant >= 3};
                            check_gemm(ctx, float_dtypes[d], s, variant == 4 ? 1 : 0);
                        }
    /* empty inner dimension: C = 0, or unchanged when accumulating */
    for (int d = 0; d < N_DTYPES; d++) check_gemm(ctx, float_dtypes[d], (an_gemm_shape){2, 5, 3, 0, 0, 0, 0, 0}, 0);
    check_gemm(ctx, AN_BF16, (an_gemm_shape){2, 5, 3, 0, 1, 0, 0, 1}, 0);
    test_ctx_free(ctx);
}
END_TEST

/* ---- autograd on CUDA tensors ---- */

enum { X, W1, B1, W2, C, R, Q, T, R2, N_LEAVES };
static const int64_t leaf_shapes[N_LEAVES][4] = {
    [X] = {3, 5, 33}, [W1] = {19, 33}, [B1] = {19}, [W2] = {19, 33}, [C] = {19},
    [R] = {19, 6},    [Q] = {3, 4, 19}, [T] = {3, 5, 7}, [R2] = {5, 8},
};
static const int leaf_ndim[N_LEAVES] = {3, 2, 1, 2, 1, 2, 3, 3, 2};

/* A loss touching every op with a CUDA path: linear (with and without bias, with a residual), swiglu, silu, mul with
 * broadcast, add, sub, scale, matmul (shared B, batched with trans_b, trans_a, shared B with
 * trans_a), a tensor used twice, sum and mean. Intermediates are released at once (the tape keeps
 * what backward needs). */
static an_tensor *model_loss(an_ctx *ctx, an_tensor *const *in) {
    an_tensor *h = an_linear(ctx, in[X], in[W1], in[B1]);                /* (3, 5, 19) */
    an_tensor *g = an_linear(ctx, in[X], in[W2], NULL);                  /* (3, 5, 19) */
    an_tensor *s = an_swiglu(ctx, h, g);
    an_tensor *u = an_silu(ctx, h);
    an_tensor *m = an_mul(ctx, s, in[C]);
    an_tensor *am = an_mul(ctx, u, u), *l5 = an_sum(ctx, am); /* between: u's gradient copied while m's is pending */
    an_tensor *a = an_add(ctx, m, u);                         /* m and u share one gradient */
    an_tensor *e = an_linear_residual(ctx, in[X], in[W2], in[B1], a);     /* a + x W2^T + b1: a also below */
    an_tensor *d = an_sub(ctx, e, g);                                    /* (3, 5, 19) */
    an_tensor *p1 = an_matmul(ctx, d, in[R], false, false);              /* (3, 5, 6) */
    an_tensor *p2 = an_matmul(ctx, d, in[Q], false, true);               /* (3, 5, 4) */
    an_tensor *p3 = an_matmul(ctx, d, in[T], true, false);               /* (3, 19, 7) */
    an_tensor *p4 = an_matmul(ctx, d, in[R2], true, false);              /* (3, 19, 8) */
    an_tensor *p2s = an_scale(ctx, p2, 0.5);
    an_tensor *p33 = an_mul(ctx, p3, p3);
    an_tensor *l1 = an_sum(ctx, p1), *l2 = an_mean(ctx, p2s), *l3 = an_sum(ctx, p33), *l4 = an_sum(ctx, p4);
    an_tensor *l12 = an_add(ctx, l1, l2), *l34 = an_add(ctx, l3, l4), *l125 = an_add(ctx, l12, l5);
    an_tensor *loss = an_add(ctx, l125, l34);
    an_tensor *tmp[] = {h, g, s, u, m, a, e, d, p1, p2, p3, p4, p2s, p33, l1, l2, l3, l4, l12, l34, am, l5, l125};
    for (size_t i = 0; i < sizeof tmp / sizeof *tmp; i++) an_tensor_release(tmp[i]);
    return loss;
}

/* bound: 2 rtol |want| + rtol * rms(want), since roundings differ op by op between the devices. */
static void expect_like_cpu(an_ctx *ctx, const an_tensor *gpu, const an_tensor *cpu, double rtol, const char *what) {
    ck_assert_msg(gpu && cpu, "%s: missing tensor", what);
    int64_t n = an_tensor_numel(cpu);
    ck_assert_int_eq(an_tensor_numel(gpu), n);
    double *want = test_values(cpu), *got = test_download(ctx, gpu), *bound = malloc((size_t)n * sizeof *bound), ms = 0;
    for (int64_t i = 0; i < n; i++) ms += want[i] * want[i] / (double)n;
    for (int64_t i = 0; i < n; i++) bound[i] = 2 * rtol * fabs(want[i]) + rtol * sqrt(ms) + 1e-12;
    expect_close(got, want, bound, n, "%s", what);
    free(want);
    free(got);
    free(bound);
}

START_TEST(test_cuda_autograd_forward_and_backward_match_cpu) {
    an_ctx *ctx = gpu_ctx(9, "cuda autograd");
    if (!ctx) return;
    char what[96];
    for (int d = 0; d < N_DTYPES; d++) {
        an_dtype dtype = float_dtypes[d];
        double rtol = rtol_of(dtype);
        an_tensor *cpu[N_LEAVES], *gpu[N_LEAVES];
        for (int i = 0; i < N_LEAVES; i++) {
            cpu[i] = test_uniform(ctx, dtype, leaf_ndim[i], leaf_shapes[i], -1, 1, true);
            gpu[i] = an_tensor_to(ctx, cpu[i], dtype, AN_CUDA);
            ck_assert_msg(gpu[i] != NULL, "%s", an_error_message(ctx));
            an_tensor_set_requires_grad(gpu[i], true);
        }
        an_tensor *loss_cpu = model_loss(ctx, cpu);
        ck_assert_msg(loss_cpu != NULL, "cpu forward: %s", an_error_message(ctx));
        test_ok(ctx, an_backward(ctx, loss_cpu), "cpu backward");
        an_tensor *loss_gpu = model_loss(ctx, gpu);
        ck_assert_msg(loss_gpu != NULL, "gpu forward: %s", an_error_message(ctx));
        ck_assert_int_eq(loss_gpu->device, AN_CUDA);
        test_ok(ctx, an_backward(ctx, loss_gpu), "gpu backward");

        double want = an_tensor_get(loss_cpu, 0), *got = test_download(ctx, loss_gpu), bound = 4 * rtol * (fabs(want) + 1);
        snprintf(what, sizeof what, "%s loss", an_dtype_name(dtype));
        expect_close(got, &want, &bound, 1, "%s", what);
        free(got);
        for (int i = 0; i < N_LEAVES; i++) {
            snprintf(what, sizeof what, "%s gradient of leaf %d", an_dtype_name(dtype), i);
            ck_assert_msg(gpu[i]->grad && gpu[i]->grad->device == AN_CUDA, "%s: missing on the GPU", what);
            expect_like_cpu(ctx, gpu[i]->grad, cpu[i]->grad, rtol, what);
        }
        an_tensor_release(loss_cpu);
        an_tensor_release(loss_gpu);
        for (int i = 0; i < N_LEAVES; i++) {
            an_tensor_release(cpu[i]);
            an_tensor_release(gpu[i]);
        }
    }
    test_ctx_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("cuda");
    test_add_case(s, "runtime", test_cuda_runtime_copies_and_reports_errors);
    test_add_case(s, "cast", test_cuda_cast_rounds_like_the_cpu);
    test_add_case(s, "cast_mul", test_cuda_cast_mul_equals_cast_then_multiply);
    test_add_case(s, "shift_ids", test_cuda_shift_ids_makes_next_token_targets);
    test_add_case(s, "elementwise", test_cuda_add_into_scale_and_fill_match_reference);
    test_add_case(s, "binary", test_cuda_binary_forward_matches_reference);
    test_add_case(s, "binary_backward", test_cuda_binary_backward_sums_broadcast_deterministically);
    test_add_case(s, "swiglu", test_cuda_swiglu_and_silu_match_reference);
    test_add_case(s, "sum", test_cuda_sum_accumulates_in_fp32_deterministically);
    test_add_case(s, "gemm", test_cuda_gemm_every_transpose_batch_shared_and_accumulate);
    test_add_case(s, "gemm_bias_grad", test_cuda_gemm_bias_grad_matches_the_reference);
    test_add_case(s, "column_sums", test_cuda_column_sums_match_the_reference);
    test_add_case(s, "gemm_scaled", test_cuda_gemm_scaled_matches_the_reference);
    test_add_case(s, "gemv", test_cuda_gemv_rows_match_the_reference);
    test_add_case(s, "gemm_segments", test_cuda_gemm_segments_sums_every_pair_once);
    test_add_case(s, "gemm_projections", test_cuda_gemm_projections_match_the_separate_products);
    test_add_case(s, "gemm_projections_rope", test_cuda_gemm_projections_rotate_as_rope_does);
    test_add_case(s, "lora_grads", test_cuda_lora_grads_match_the_reference);
    test_add_case(s, "logits_stats", test_cuda_logits_stats_give_the_two_pass_loss);
    test_add_case(s, "stats_grad_unaligned_rows", test_cuda_stats_grad_unaligned_rows);
    test_add_case(s, "autograd", test_cuda_autograd_forward_and_backward_match_cpu);
    return test_run(s);
}
