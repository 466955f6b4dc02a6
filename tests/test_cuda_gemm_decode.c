/* test_cuda_gemm_decode.c — the batched-decode GEMM (kernels/gemm_decode.cu, an_cuda_gemm_decode)
 * against a float64 reference loop, and an_cuda_gemm's routing to it.
 *
 * Values: x (M, K), W (N, K), bias (N) and the old y uniform in [-1, 1), fresh for every shape (never
 * zeros); every output buffer is poisoned with 0xFF bytes (NaN in bf16 and f16) before each launch,
 * and NaN never passes. M in {1, 3, 8, 9, 16, 17, 31, 32, 33, 48, 64} x N in {8, 24, 256, 1536,
 * 1544} x K in {8, 72, 1536, 1552, 8960} (one k chunk partly filled, ragged last chunks, every
 * cluster split the launcher picks), bf16 and f16, each with and without bias and with and without
 * accumulate. Bound per element rtol (|want| + sqrt(K)) (bf16 1e-2, f16 2e-3: the output rounding
 * plus fp32 sums of K terms, as test_cuda.c bounds GEMMs), and the whole output's error against its
 * norm. The reference is computed for every column up to N = 256 and above that for the first and
 * last 32 columns and every 7th (each column tile, block edge and the ragged last tile); every
 * element is checked to be a number. The same bits on a repeat and in a CUDA graph replay; an_cuda_gemm
 * and an_cuda_gemm_bias at routed shapes give the kernel's bits; inputs the kernel does not take
 * are input errors. Without a GPU every test prints SKIP and passes. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda.h"
#include "support/test_util.h"

static const int64_t ms[] = {1, 3, 8, 9, 16, 17, 31, 32, 33, 48, 64};
static const int64_t ns[] = {8, 24, 256, 1536, 1544};
static const int64_t ks[] = {8, 72, 1536, 1552, 8960};
#define COUNT(a) ((int)(sizeof(a) / sizeof *(a)))

static double rtol_of(an_dtype dtype) { return dtype == AN_BF16 ? 1e-2 : 2e-3; }

static an_ctx *gpu_ctx(uint64_t seed, const char *what) {
    an_ctx *ctx = test_gpu_ctx(seed, what);
    fflush(stdout);
    return ctx;
}

static bool checked_column(int64_t n, int64_t N) { return N <= 256 || n < 32 || n >= N - 32 || n % 7 == 0; }

/* dot[r * N + n] = x[r] . w[n] in float64 for the checked columns (four partial sums). */
static void reference(const double *x, const double *w, int64_t M, int64_t N, int64_t K, double *dot) {
    for (int64_t n = 0; n < N; n++) {
        if (!checked_column(n, N)) continue;
        const double *wn = w + n * K;
        for (int64_t r = 0; r < M; r++) {
            const double *xr = x + r * K;
            double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
            int64_t k = 0;
            for (; k + 4 <= K; k += 4) {
                s0 += xr[k] * wn[k];
                s1 += xr[k + 1] * wn[k + 1];
                s2 += xr[k + 2] * wn[k + 2];
                s3 += xr[k + 3] * wn[k + 3];
            }
            for (; k < K; k++) s0 += xr[k] * wn[k];
            dot[r * N + n] = (s0 + s1) + (s2 + s3);
        }
    }
}

/* y (M, N) on the GPU for one bias / accumulate variant, checked against dot (+ bias) (+ y0). */
static void check_variant(an_ctx *ctx, an_dtype dtype, const test_pair *x, const test_pair *w, const test_pair *b,
                          const test_pair *y0, int64_t M, int64_t N, int64_t K, const double *dot) {
    an_tensor *y = y0 ? an_tensor_to(ctx, y0->host, dtype, AN_CUDA) : test_poisoned_gpu(ctx, dtype, 2, (int64_t[]){M, N});
    ck_assert_msg(y != NULL, "%s", an_error_message(ctx));
    test_ok(ctx,
            an_cuda_gemm_decode(ctx, dtype, an_tensor_data(x->dev), M, K, an_tensor_data(w->dev), N,
                                b ? an_tensor_data(b->dev) : NULL, y0 != NULL, an_tensor_data(y)),
            "gemm_decode");
    double *got = test_download(ctx, y);
    double rtol = rtol_of(dtype), err2 = 0, ref2 = 0;
    for (int64_t r = 0; r < M; r++)
        for (int64_t n = 0; n < N; n++) {
            int64_t i = r * N + n;
            ck_assert_msg(!isnan(got[i]) && !isinf(got[i]), "%s M %lld N %lld K %lld bias %d acc %d: y[%lld, %lld] is %g",
                          an_dtype_name(dtype), (long long)M, (long long)N, (long long)K, b != NULL, y0 != NULL,
                          (long long)r, (long long)n, got[i]);
            if (!checked_column(n, N)) continue;
            double want = dot[i] + (b ? b->v[n] : 0.0) + (y0 ? y0->v[i] : 0.0);
            double bound = rtol * (fabs(want) + sqrt((double)K));
            ck_assert_msg(fabs(got[i] - want) <= bound,
                          "%s M %lld N %lld K %lld bias %d acc %d: y[%lld, %lld] is %.9g, expected %.9g (bound %.3g)",
                          an_dtype_name(dtype), (long long)M, (long long)N, (long long)K, b != NULL, y0 != NULL,
                          (long long)r, (long long)n, got[i], want, bound);
            err2 += (got[i] - want) * (got[i] - want);
            ref2 += want * want;
        }
    ck_assert_msg(sqrt(err2) <= rtol * (sqrt(ref2) + sqrt((double)K)), "%s M %lld N %lld K %lld: relative error %g",
                  an_dtype_name(dtype), (long long)M, (long long)N, (long long)K, sqrt(err2 / ref2));
    free(got);
    an_tensor_release(y);
}

static void check_dtype(an_dtype dtype, uint64_t seed) {
    an_ctx *ctx = gpu_ctx(seed, "cuda gemm_decode");
    if (!ctx) return;
    for (int ki = 0; ki < COUNT(ks); ki++)
        for (int ni = 0; ni < COUNT(ns); ni++) {
            int64_t N = ns[ni], K = ks[ki];
            test_pair w = test_pair_uniform(ctx, dtype, 2, (int64_t[]){N, K}, -1, 1);
            test_pair b = test_pair_uniform(ctx, dtype, 1, (int64_t[]){N}, -1, 1);
            for (int mi = 0; mi < COUNT(ms); mi++) {
                int64_t M = ms[mi];
                test_pair x = test_pair_uniform(ctx, dtype, 2, (int64_t[]){M, K}, -1, 1);
                test_pair y0 = test_pair_uniform(ctx, dtype, 2, (int64_t[]){M, N}, -1, 1);
                double *dot = calloc((size_t)(M * N), sizeof *dot);
                reference(x.v, w.v, M, N, K, dot);
                for (int variant = 0; variant < 4; variant++)
                    check_variant(ctx, dtype, &x, &w, variant & 1 ? &b : NULL, variant & 2 ? &y0 : NULL, M, N, K, dot);
                free(dot);
                test_pair_release(x);
                test_pair_release(y0);
            }
            test_pair_release(w);
            test_pair_release(b);
        }
    test_ctx_free(ctx);
}

START_TEST(test_cuda_gemm_decode_bf16_matches_the_reference) { check_dtype(AN_BF16, 31); }
END_TEST

START_TEST(test_cuda_gemm_decode_f16_matches_the_reference) { check_dtype(AN_F16, 32); }
END_TEST

/* The raw output bytes of a CUDA tensor (downloaded as float64: exact for bf16 and f16). */
static double *bits(an_ctx *ctx, const an_tensor *t) { return test_download(ctx, t); }

static void expect_same_bits(const double *a, const double *b, int64_t n, const char *what) {
    ck_assert_msg(memcmp(a, b, (size_t)n * sizeof *a) == 0, "%s: the bits differ", what);
}

/* A repeat and a CUDA graph replay give the same bits, and an_cuda_gemm / an_cuda_gemm_bias at
 * shapes gemm.cu's rule routes (AN_CUDA_GEMV_RULE_ROWS < M <= AN_CUDA_DECODE_GEMM_RULE_ROWS: the
 * 1.5B model's q|k|v, gate|up and down at batch 3, 8 and 32) give the kernel's bits. */
START_TEST(test_cuda_gemm_decode_is_deterministic_in_graphs_and_routed) {
    an_ctx *ctx = gpu_ctx(33, "cuda gemm_decode determinism");
    if (!ctx) return;
    const int64_t shapes[][3] = {{32, 2048, 1536}, {3, 17920, 1536}, {8, 1536, 8960}, {64, 1536, 1536}, {17, 1544, 8960}};
    const an_dtype dtypes[] = {AN_BF16, AN_F16};
    for (int d = 0; d < 2; d++)
        for (int si = 0; si < COUNT(shapes); si++) {
            an_dtype dtype = dtypes[d];
            int64_t M = shapes[si][0], N = shapes[si][1], K = shapes[si][2], mn = M * N;
            bool routed = M > AN_CUDA_GEMV_RULE_ROWS && M <= AN_CUDA_DECODE_GEMM_RULE_ROWS; /* gemm.cu sends it here */
            test_pair x = test_pair_uniform(ctx, dtype, 2, (int64_t[]){M, K}, -1, 1);
            test_pair w = test_pair_uniform(ctx, dtype, 2, (int64_t[]){N, K}, -1, 1);
            test_pair b = test_pair_uniform(ctx, dtype, 1, (int64_t[]){N}, -1, 1);
            an_tensor *y = test_poisoned_gpu(ctx, dtype, 2, (int64_t[]){M, N});
            test_ok(ctx, an_cuda_gemm_decode(ctx, dtype, an_tensor_data(x.dev), M, K, an_tensor_data(w.dev), N,
                                             an_tensor_data(b.dev), 0, an_tensor_data(y)),
                    "first");
            double *first = bits(ctx, y);
            test_ok(ctx, an_cuda_memset(ctx, an_tensor_data(y), 0xFF, an_tensor_nbytes(y)), "poison");
            test_ok(ctx, an_cuda_gemm_decode(ctx, dtype, an_tensor_data(x.dev), M, K, an_tensor_data(w.dev), N,
                                             an_tensor_data(b.dev), 0, an_tensor_data(y)),
                    "repeat");
            double *again = bits(ctx, y);
            expect_same_bits(first, again, mn, "repeat");
            free(again);
            /* captured once, replayed three times over a poisoned y */
            an_cuda_graph *g = NULL;
            test_ok(ctx, an_cuda_graph_begin(ctx), "begin");
            an_status st = an_cuda_gemm_decode(ctx, dtype, an_tensor_data(x.dev), M, K, an_tensor_data(w.dev), N,
                                               an_tensor_data(b.dev), 0, an_tensor_data(y));
            test_ok(ctx, an_cuda_graph_end(ctx, st, &g), "end");
            for (int rep = 0; rep < 3; rep++) {
                test_ok(ctx, an_cuda_memset(ctx, an_tensor_data(y), 0xFF, an_tensor_nbytes(y)), "poison");
                test_ok(ctx, an_cuda_graph_launch(ctx, g), "replay");
                double *replay = bits(ctx, y);
                expect_same_bits(first, replay, mn, "graph replay");
                free(replay);
            }
            an_cuda_graph_free(ctx, g);
            if (routed) {
                an_gemm_shape s = {1, M, N, K, false, true, false, false};
                test_ok(ctx, an_cuda_memset(ctx, an_tensor_data(y), 0xFF, an_tensor_nbytes(y)), "poison");
                test_ok(ctx, an_cuda_gemm_bias(ctx, &s, dtype, an_tensor_data(x.dev), an_tensor_data(w.dev),
                                               an_tensor_data(b.dev), an_tensor_data(y)),
                        "an_cuda_gemm_bias");
                double *via = bits(ctx, y);
                expect_same_bits(first, via, mn, "an_cuda_gemm_bias routed");
                free(via);
                /* no bias, accumulating: y = first + x W^T through both entry points */
                an_tensor *y2 = test_poisoned_gpu(ctx, dtype, 2, (int64_t[]){M, N});
                test_ok(ctx, an_cuda_memcpy(ctx, an_tensor_data(y2), AN_CUDA, an_tensor_data(y), AN_CUDA, an_tensor_nbytes(y)), "copy");
                s.accumulate = true;
                test_ok(ctx, an_cuda_gemm(ctx, &s, dtype, an_tensor_data(x.dev), an_tensor_data(w.dev), an_tensor_data(y)),
                        "an_cuda_gemm");
                test_ok(ctx, an_cuda_gemm_decode(ctx, dtype, an_tensor_data(x.dev), M, K, an_tensor_data(w.dev), N, NULL, 1,
                                                 an_tensor_data(y2)),
                        "decode accumulate");
                double *g1 = bits(ctx, y), *g2 = bits(ctx, y2);
                expect_same_bits(g1, g2, mn, "an_cuda_gemm accumulate routed");
                free(g1), free(g2);
                an_tensor_release(y2);
            }
            free(first);
            an_tensor_release(y);
            test_pair_release(x);
            test_pair_release(w);
            test_pair_release(b);
        }
    test_ctx_free(ctx);
}
END_TEST

/* an_cuda_gemm_decode_swiglu: y = silu(g) u for g, u the gate and up halves of x W^T over the
 * stacked (2N, K) weights, each rounded to the dtype first. Against float64 (g and u rounded as the
 * dtype rounds, bound as above on each and on the product), and bit for bit against the two-step
 * path the decode block takes otherwise (an_cuda_gemm_decode into (M, 2N), then
 * an_cuda_swiglu_rows). M 3-64, N 8 / 40 / 8960 (a ragged last tile), K 64 / 1536. */
START_TEST(test_cuda_gemm_decode_swiglu_matches_the_reference_and_the_two_step_path) {
    an_ctx *ctx = gpu_ctx(35, "cuda gemm_decode_swiglu");
    if (!ctx) return;
    const int64_t shapes[][3] = {{3, 8, 64}, {8, 40, 1536}, {16, 8960, 1536}, {5, 8960, 64}, {33, 40, 1536}, {64, 8, 64}};
    const an_dtype dtypes[] = {AN_BF16, AN_F16};
    for (int d = 0; d < 2; d++)
        for (int si = 0; si < COUNT(shapes); si++) {
            an_dtype dtype = dtypes[d];
            int64_t M = shapes[si][0], N = shapes[si][1], K = shapes[si][2];
            test_pair x = test_pair_uniform(ctx, dtype, 2, (int64_t[]){M, K}, -1, 1);
            test_pair w = test_pair_uniform(ctx, dtype, 2, (int64_t[]){2 * N, K}, -1, 1);
            an_tensor *y = test_poisoned_gpu(ctx, dtype, 2, (int64_t[]){M, N});
            an_tensor *gu = test_poisoned_gpu(ctx, dtype, 2, (int64_t[]){M, 2 * N});
            an_tensor *y2 = test_poisoned_gpu(ctx, dtype, 2, (int64_t[]){M, N});
            test_ok(ctx, an_cuda_gemm_decode_swiglu(ctx, dtype, an_tensor_data(x.dev), M, K, an_tensor_data(w.dev), N,
                                                    an_tensor_data(y)),
                    "gemm_decode_swiglu");
            test_ok(ctx, an_cuda_gemm_decode(ctx, dtype, an_tensor_data(x.dev), M, K, an_tensor_data(w.dev), 2 * N, NULL,
                                             0, an_tensor_data(gu)),
                    "gemm_decode");
            test_ok(ctx, an_cuda_swiglu_rows(ctx, dtype, an_tensor_data(gu), M, N, an_tensor_data(y2)), "swiglu_rows");
            double *got = test_download(ctx, y), *two = test_download(ctx, y2), *gup = test_download(ctx, gu);
            expect_same_bits(got, two, M * N, "fused against GEMM + swiglu_rows");
            double *dot = calloc((size_t)(M * 2 * N), sizeof *dot);
            for (int64_t n = 0; n < 2 * N; n++)
                for (int64_t r = 0; r < M; r++) {
                    double acc = 0;
                    for (int64_t k = 0; k < K; k++) acc += x.v[r * K + k] * w.v[n * K + k];
                    dot[r * 2 * N + n] = acc;
                }
            double rtol = rtol_of(dtype);
            for (int64_t r = 0; r < M; r++)
                for (int64_t n = 0; n < N; n++) {
                    double g = dot[r * 2 * N + n], u = dot[r * 2 * N + N + n];
                    double gb = rtol * (fabs(g) + sqrt((double)K)), ub = rtol * (fabs(u) + sqrt((double)K));
                    /* the GEMM's rounded halves are within bound of float64, and y is their swiglu */
                    ck_assert_msg(fabs(gup[r * 2 * N + n] - g) <= gb && fabs(gup[r * 2 * N + N + n] - u) <= ub,
                                  "%s M %lld N %lld K %lld: gate/up [%lld, %lld] off", an_dtype_name(dtype), (long long)M,
                                  (long long)N, (long long)K, (long long)r, (long long)n);
                    double gr = gup[r * 2 * N + n], ur = gup[r * 2 * N + N + n];
                    double want = gr / (1.0 + exp(-gr)) * ur;
                    ck_assert_msg(!isnan(got[r * N + n]) && fabs(got[r * N + n] - want) <= rtol * (fabs(want) + 1e-3),
                                  "%s M %lld N %lld K %lld: y[%lld, %lld] is %.9g, expected %.9g", an_dtype_name(dtype),
                                  (long long)M, (long long)N, (long long)K, (long long)r, (long long)n, got[r * N + n],
                                  want);
                }
            free(dot), free(got), free(two), free(gup);
            an_tensor_release(y), an_tensor_release(gu), an_tensor_release(y2);
            test_pair_release(x), test_pair_release(w);
        }
    test_ctx_free(ctx);
}
END_TEST

/* What the kernel does not take is an input error, not a silent fallback. */
START_TEST(test_cuda_gemm_decode_refuses_what_it_does_not_take) {
    an_ctx *ctx = gpu_ctx(34, "cuda gemm_decode errors");
    if (!ctx) return;
    an_tensor *x = test_poisoned_gpu(ctx, AN_F32, 1, (int64_t[]){65 * 24 + 8});
    an_tensor *w = test_poisoned_gpu(ctx, AN_F32, 1, (int64_t[]){16 * 24 + 8});
    an_tensor *y = test_poisoned_gpu(ctx, AN_F32, 1, (int64_t[]){65 * 16});
    char *xp = an_tensor_data(x), *wp = an_tensor_data(w), *yp = an_tensor_data(y);
    struct {
        an_dtype dtype;
        int64_t M, K;
        const char *x;
    } bad[] = {{AN_BF16, 65, 16, xp}, {AN_BF16, 0, 16, xp}, {AN_BF16, 9, 12, xp}, {AN_BF16, 9, 16, xp + 2}, {AN_F32, 9, 16, xp}};
    for (int i = 0; i < COUNT(bad); i++) {
        ck_assert_int_eq(an_cuda_gemm_decode(ctx, bad[i].dtype, bad[i].x, bad[i].M, bad[i].K, wp, 16, NULL, 0, yp), AN_ERR_INPUT);
        an_error_clear(ctx);
    }
    an_tensor_release(x), an_tensor_release(w), an_tensor_release(y);
    test_ctx_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("cuda_gemm_decode");
    test_add_case(s, "bf16", test_cuda_gemm_decode_bf16_matches_the_reference);
    test_add_case(s, "f16", test_cuda_gemm_decode_f16_matches_the_reference);
    test_add_case(s, "determinism", test_cuda_gemm_decode_is_deterministic_in_graphs_and_routed);
    test_add_case(s, "swiglu", test_cuda_gemm_decode_swiglu_matches_the_reference_and_the_two_step_path);
    test_add_case(s, "errors", test_cuda_gemm_decode_refuses_what_it_does_not_take);
    return test_run(s);
}
