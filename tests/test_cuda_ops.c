/* test_cuda_ops.c — the CUDA paths of embedding, rmsnorm, rope, softmax, cross_entropy,
 * log_softmax_gather, linear_cross_entropy and swiglu_mlp, forward and backward, against the CPU path on the
 * same fresh random inputs, at awkward shapes (one row, odd D, V not a multiple of anything,
 * chunk_rows not dividing N, ignored targets, packed and long positions), in f32, bf16 and f16;
 * and qkv_linear (q, k and v as one node) against the separate ops it replaced, on the GPU.
 *
 * Each op runs through autograd on each device: out = op(inputs), then loss = sum(out * R) for a
 * random R (or 1.7 * out for a scalar loss), backward, and every output and gradient is compared
 * with the bound 2 rtol |cpu| + rtol rms(cpu) (roundings differ op by op between the devices; the
 * rms term keeps cancellations in gradients from failing on a tiny element; rmsnorm's input
 * gradient adds rtol times the size of its two terms, rstd |g| |w|, because at D = 1 they cancel
 * to about eps and fp32 cannot resolve that difference any closer). rtol: f32 1e-5,
 * bf16 1e-2 (two bf16 ulps), f16 2e-3 (two f16 ulps); linear_cross_entropy in bf16 4e-2 and f16
 * 1e-2, because on the GPU its chunk logits and dlogits are rounded to the input dtype (the CPU
 * keeps them f32) and its gradients, formed in the forward at a unit upstream gradient, are
 * rounded once more when the backward scales them; a dW element that cancels over the rows shows
 * this at up to ~3% of rms(dW) in bf16. Gathers are compared exactly. NaN never passes.
 * Then the launchers of kernels/cuda.h are called directly on the same device inputs with every
 * output poisoned (0xFF bytes: NaN in each float dtype) and must reproduce the op's results bit
 * for bit, so an element a kernel leaves unwritten fails; the embedding and rmsnorm gradients run
 * twice and must be bit-identical (no float atomics). rmsnorm and rope have a 16-byte vector path
 * chosen by shape and alignment: the cases include shapes that take it (D a multiple of 8, the
 * 1.5B model's sizes) and shapes that do not (odd D), and every case also runs the launchers on
 * misaligned copies, which take the scalar path: rope must give the same bits, rmsnorm (whose sums
 * run in another order) results within the bounds above of the vector path's. rmsnorm's backward
 * also adds dx into a gradient that holds values (add_x, both paths): within the bounds of the sum.
 * linear_cross_entropy's per-chunk launcher an_cuda_cross_entropy_rows_grad is also driven on its
 * own at the chunk's shape and ragged ones against the two-kernel path's bits.
 * A failed comparison prints a FAIL line and the test goes on, so one run names every failing
 * case; the test fails at its end. Without a GPU (or in a build without CUDA) every test prints
 * SKIP and passes. */
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/cpu/cpu.h"  /* an_cpu_rope_inv_freq: the frequencies the rope launcher is given */
#include "autograd/op_support.h" /* an_qkv_rope_turn_table: whether the attention may turn the rotation back */
#include "autograd/op_table.h" /* an_op_swiglu_mlp, an_op_swiglu_linear: which node the MLP recorded */
#include "kernels/cuda.h"      /* the launchers under test */
#include "support/test_util.h"

static const an_dtype float_dtypes[] = {AN_F32, AN_BF16, AN_F16};
#define N_DTYPES 3
#define MAX_IN 5

static double rtol_of(an_dtype dtype) { return dtype == AN_F32 ? 1e-5 : dtype == AN_BF16 ? 1e-2 : 2e-3; }

/* Failed comparisons of the running test (Check runs each test in its own process; gpu_ctx
 * resets it for CK_FORK=no). */
static int failures;

static void soft_fail(const char *format, ...) {
    va_list ap;
    va_start(ap, format);
    printf("FAIL ");
    vprintf(format, ap);
    printf("\n");
    fflush(stdout);
    va_end(ap);
    failures++;
}

static void expect_no_failures(void) {
    ck_assert_msg(failures == 0, "%d comparisons failed (the FAIL lines above)", failures);
}

/* A context on GPU 0, or NULL after printing SKIP (flushed: Check runs each test in a child). */
static an_ctx *gpu_ctx(uint64_t seed, const char *what) {
    failures = 0;
    an_ctx *ctx = test_gpu_ctx(seed, what);
    fflush(stdout);
    return ctx;
}

static const char *fmt(char *buf, size_t size, const char *format, ...) {
    va_list ap;
    va_start(ap, format);
    vsnprintf(buf, size, format, ap);
    va_end(ap);
    return buf;
}

/* Synchronises (surfacing asynchronous errors) and copies a CUDA tensor to the host. */
static an_tensor *to_host(an_ctx *ctx, const an_tensor *dev) {
    test_ok(ctx, an_cuda_synchronize(ctx), "synchronize");
    an_tensor *h = an_tensor_to(ctx, dev, dev->dtype, AN_CPU);
    ck_assert_msg(h != NULL, "download: %s", an_error_message(ctx));
    return h;
}

static an_tensor *to_gpu(an_ctx *ctx, const an_tensor *host) {
    an_tensor *d = an_tensor_to(ctx, host, host->dtype, AN_CUDA);
    ck_assert_msg(d != NULL, "upload: %s", an_error_message(ctx));
    return d;
}

/* Fails unless every element of gpu (CUDA) is a number within 2 rtol |want| + rtol rms(want) +
 * atol of the CPU tensor's (rtol 0, atol 0: equal). */
static void expect_like_cpu(an_ctx *ctx, const an_tensor *gpu, const an_tensor *cpu, double rtol, double atol,
                            const char *what) {
    ck_assert_msg(gpu && cpu, "%s: missing tensor", what);
    ck_assert_int_eq(gpu->device, AN_CUDA);
    int64_t n = an_tensor_numel(cpu);
    ck_assert_int_eq(an_tensor_numel(gpu), n);
    an_tensor *h = to_host(ctx, gpu);
    double *want = test_values(cpu), *got = test_values(h), ms = 0;
    for (int64_t i = 0; i < n; i++) ms += want[i] * want[i] / (double)n;
    for (int64_t i = 0; i < n; i++) {
        double bound = 2 * rtol * fabs(want[i]) + rtol * sqrt(ms) + atol;
        if (!isnan(got[i]) && fabs(got[i] - want[i]) <= bound) continue;
        soft_fail("%s: element %lld of %lld is %.9g, the CPU says %.9g (bound %.3g)", what, (long long)i,
                  (long long)n, got[i], want[i], bound);
        break;
    }
    free(want);
    free(got);
    an_tensor_release(h);
}

/* Fails unless two CUDA tensors hold the same bytes (same numel and dtype; shapes may differ). */
static void expect_same_bits(an_ctx *ctx, const an_tensor *a, const an_tensor *b, const char *what) {
    ck_assert_msg(a && b, "%s: missing tensor", what);
    ck_assert_int_eq(a->dtype, b->dtype);
    ck_assert_int_eq(an_tensor_numel(a), an_tensor_numel(b));
    an_tensor *ha = to_host(ctx, a), *hb = to_host(ctx, b);
    size_t es = an_dtype_size(a->dtype);
    const char *pa = an_tensor_data(ha), *pb = an_tensor_data(hb);
    for (int64_t i = 0; i < an_tensor_numel(a); i++)
        if (memcmp(pa + (size_t)i * es, pb + (size_t)i * es, es) != 0) {
            soft_fail("%s: element %lld is %.9g, expected the same bits as %.9g", what, (long long)i,
                      an_tensor_get(ha, i), an_tensor_get(hb, i));
            break;
        }
    an_tensor_release(ha);
    an_tensor_release(hb);
}

/* A CUDA tensor (n) whose first element sits one element past an allocation's start, so it is not
 * 16-byte aligned and the launchers take their scalar paths: a copy of src when given, else
 * poisoned (0xFF bytes). The view keeps the storage alive. */
static an_tensor *misaligned(an_ctx *ctx, an_dtype dtype, int64_t n, const an_tensor *src) {
    int64_t n1 = n + 1;
    an_tensor *base = test_poisoned_gpu(ctx, dtype, 1, &n1);
    an_tensor *view = an_tensor_rows(ctx, base, 1, n);
    ck_assert_msg(view != NULL, "view: %s", an_error_message(ctx));
    an_tensor_release(base);
    if (src) test_ok(ctx, an_tensor_copy_into(ctx, view, src), "misaligned copy");
    return view;
}

/* ---- the harness: one op through autograd on both devices ---- */

typedef an_tensor *(*op_fn)(an_ctx *ctx, an_tensor *const *in, const void *user);

typedef struct {
    an_tensor *in[MAX_IN];   /* the GPU inputs (copies of the CPU ones) */
    an_tensor *out;          /* the op's GPU output */
    an_tensor *grad[MAX_IN]; /* GPU gradients of the inputs that require grad */
    an_tensor *upstream;     /* the output's gradient on the GPU: R, or the scalar 1.7 */
    bool ok;                 /* false: the GPU forward or backward failed (a FAIL line says why) */
} gpu_run;

static void gpu_run_release(gpu_run *r) {
    for (int i = 0; i < MAX_IN; i++) {
        an_tensor_release(r->in[i]);
        an_tensor_release(r->grad[i]);
    }
    an_tensor_release(r->out);
    an_tensor_release(r->upstream);
    memset(r, 0, sizeof *r);
}

/* The loss whose backward seeds out's gradient with `upstream`: sum(out * upstream), or 1.7 * out
 * for a scalar out (upstream NULL). */
static an_tensor *seeded_loss(an_ctx *ctx, an_tensor *out, an_tensor *upstream) {
    if (!upstream) return an_scale(ctx, out, 1.7);
    an_tensor *m = an_mul(ctx, out, upstream), *loss = an_sum(ctx, m);
    an_tensor_release(m);
    return loss;
}

/* Runs fn forward and backward on the CPU inputs, then on GPU copies (one graph at a time: a
 * backward consumes the whole tape), compares the output with out_rtol and the gradients with
 * grad_rtol (plus grad0_atol for input 0's), and returns the GPU side (caller releases). */
static gpu_run run_both(an_ctx *ctx, op_fn fn, const void *user, an_tensor *const *cpu_in, int n, double out_rtol,
                        double grad_rtol, double grad0_atol, const char *what) {
    char msg[256];
    gpu_run r;
    memset(&r, 0, sizeof r);
    an_tensor *out_c = fn(ctx, cpu_in, user);
    ck_assert_msg(out_c != NULL, "%s: CPU forward: %s", what, an_error_message(ctx));
    bool scalar = an_tensor_numel(out_c) == 1;
    an_tensor *up = scalar ? NULL : test_uniform(ctx, out_c->dtype, out_c->ndim, out_c->shape, -1, 1, false);
    an_tensor *loss_c = seeded_loss(ctx, out_c, up);
    test_ok(ctx, an_backward(ctx, loss_c), "CPU backward");

    for (int i = 0; i < n; i++) {
        r.in[i] = to_gpu(ctx, cpu_in[i]);
        an_tensor_set_requires_grad(r.in[i], cpu_in[i]->requires_grad);
    }
    r.upstream = scalar ? an_tensor_scalar(ctx, out_c->dtype, AN_CUDA, 1.7) : to_gpu(ctx, up);
    r.out = fn(ctx, r.in, user);
    an_tensor *loss_g = r.out ? seeded_loss(ctx, r.out, scalar ? NULL : r.upstream) : NULL;
    an_status st = loss_g ? an_backward(ctx, loss_g) : an_error_status(ctx);
    if (st != AN_OK) {
        soft_fail("%s: GPU %s: %s", what, r.out ? "backward" : "forward", an_error_message(ctx));
        an_error_clear(ctx);
        an_tape_clear(ctx);
    } else {
        r.ok = true;
        expect_like_cpu(ctx, r.out, out_c, out_rtol, 0.0, fmt(msg, sizeof msg, "%s: forward", what));
    }
    for (int i = 0; i < n; i++) {
        if (!cpu_in[i]->requires_grad) continue;
        ck_assert_msg(cpu_in[i]->grad != NULL, "%s: input %d got no CPU gradient", what, i);
        if (r.ok && !r.in[i]->grad) {
            soft_fail("%s: input %d got no GPU gradient", what, i);
            r.ok = false;
        } else if (r.ok) {
            expect_like_cpu(ctx, r.in[i]->grad, cpu_in[i]->grad, grad_rtol, i == 0 ? grad0_atol : 0.0,
                            fmt(msg, sizeof msg, "%s: gradient of input %d", what, i));
            r.grad[i] = an_tensor_retain(r.in[i]->grad);
        }
        an_tensor_zero_grad(cpu_in[i]);
        an_tensor_zero_grad(r.in[i]);
    }
    an_tensor_release(out_c), an_tensor_release(up), an_tensor_release(loss_c), an_tensor_release(loss_g);
    return r;
}

static int64_t shape_numel(int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    return n;
}

/* ---- embedding ---- */

static an_tensor *embedding_fn(an_ctx *ctx, an_tensor *const *in, const void *user) {
    (void)user;
    return an_embedding(ctx, in[0], in[1]);
}

static const struct {
    int64_t V, D;
    int ndim;
    int64_t ids[2];
} embedding_cases[] = {
    {1, 1, 1, {1}},     {7, 5, 2, {3, 4}},   {1000, 64, 2, {2, 37}}, {50, 33, 2, {4, 100}},
    {3, 257, 1, {1000}}, {4099, 8, 1, {1}}, {61, 6, 2, {5, 7}},
};

START_TEST(test_cuda_embedding_matches_cpu_and_its_gradient_is_bit_identical_across_runs) {
    an_ctx *ctx = gpu_ctx(1, "cuda embedding");
    if (!ctx) return;
    char what[160];
    for (int d = 0; d < N_DTYPES; d++)
        for (size_t c = 0; c < sizeof embedding_cases / sizeof *embedding_cases; c++) {
            an_dtype dtype = float_dtypes[d], id_dtype = c % 2 ? AN_I32 : AN_I64;
            int64_t V = embedding_cases[c].V, D = embedding_cases[c].D;
            int64_t n = shape_numel(embedding_cases[c].ndim, embedding_cases[c].ids);
            an_tensor *ids = test_ids(ctx, id_dtype, embedding_cases[c].ndim, embedding_cases[c].ids, V);
            an_tensor *table = test_uniform(ctx, dtype, 2, (int64_t[]){V, D}, -1, 1, true);
            fmt(what, sizeof what, "embedding %s V %lld D %lld n %lld", an_dtype_name(dtype), (long long)V,
                (long long)D, (long long)n);
            gpu_run r = run_both(ctx, embedding_fn, NULL, (an_tensor *[]){ids, table}, 2, 0.0, rtol_of(dtype), 0.0,
                                 what);
            if (!r.ok) { /* the FAIL line says why; the launchers would fail the same way */
                gpu_run_release(&r);
                an_tensor_release(ids), an_tensor_release(table);
                continue;
            }

            an_tensor *out = test_poisoned_gpu(ctx, dtype, 2, (int64_t[]){n, D});
            test_ok(ctx, an_cuda_embedding(ctx, dtype, an_tensor_data(r.in[0]), id_dtype, n, an_tensor_data(r.in[1]), V, D,
                                      an_tensor_data(out)), "an_cuda_embedding");
            expect_same_bits(ctx, out, r.out, what);
            an_tensor *g1 = test_poisoned_gpu(ctx, dtype, 2, (int64_t[]){V, D});
            an_tensor *g2 = test_poisoned_gpu(ctx, dtype, 2, (int64_t[]){V, D});
            an_tensor *grads[2] = {g1, g2};
            for (int k = 0; k < 2; k++)
                test_ok(ctx, an_cuda_embedding_backward(ctx, dtype, an_tensor_data(r.in[0]), id_dtype, n,
                                                   an_tensor_data(r.upstream), V, D, an_tensor_data(grads[k])),
                   "an_cuda_embedding_backward");
            expect_same_bits(ctx, g1, g2, fmt(what, sizeof what, "embedding %s V %lld D %lld: two backward runs",
                                              an_dtype_name(dtype), (long long)V, (long long)D));
            expect_same_bits(ctx, g1, r.grad[1], what);
            an_tensor_release(out), an_tensor_release(g1), an_tensor_release(g2);
            gpu_run_release(&r);
            an_tensor_release(ids), an_tensor_release(table);
        }
    expect_no_failures();
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_cuda_embedding_rejects_an_id_outside_the_table) {
    an_ctx *ctx = gpu_ctx(2, "cuda embedding errors");
    if (!ctx) return;
    for (int k = 0; k < 2; k++) {
        an_tensor *h = test_ids(ctx, k ? AN_I32 : AN_I64, 1, (int64_t[]){9}, 7);
        an_tensor_set(h, 4, k ? -2 : 7);
        an_tensor_set(h, 6, 100);
        an_tensor *ids = to_gpu(ctx, h);
        an_tensor *table = test_poisoned_gpu(ctx, AN_BF16, 2, (int64_t[]){7, 3});
        ck_assert_ptr_null(an_embedding(ctx, ids, table));
        ck_assert_int_eq(an_error_status(ctx), AN_ERR_INPUT);
        const char *want = k ? "id -2 (element 4 of ids) is outside [0, V = 7)" : "id 7 (element 4 of ids) is outside";
        ck_assert_msg(strstr(an_error_message(ctx), want) != NULL, "message: %s", an_error_message(ctx));
        an_error_clear(ctx);
        an_tensor_release(h), an_tensor_release(ids), an_tensor_release(table);
    }
    expect_no_failures();
    test_ctx_free(ctx);
}
END_TEST

/* ---- rmsnorm ---- */

static an_tensor *rmsnorm_fn(an_ctx *ctx, an_tensor *const *in, const void *user) {
    return an_rmsnorm(ctx, in[0], in[1], *(const double *)user);
}

static const struct {
    int ndim;
    int64_t shape[3];
} rmsnorm_cases[] = {
    {2, {1, 1}}, {2, {1, 7}}, {3, {3, 5, 33}}, {2, {2, 4096}}, {2, {300, 64}}, {2, {2000, 96}}, {3, {7, 3, 129}},
    /* the vector path (D a multiple of 8): the 1.5B model's hidden size; more rows than one wave of
     * the fused grad_w's blocks; rows of 16 and 32 warps (f32 8192: 4 packs per lane in the
     * backward); rows of 16384 (grad_w unfused, or the scalar path where the registers of a
     * 512- or 1024-thread block do not suffice); D = 24 (one pack per lane in bf16) and D = 12
     * (vector in f32, scalar in bf16/f16) */
    {3, {2, 33, 1536}}, {2, {4500, 64}}, {2, {3, 8192}}, {2, {3, 16384}}, {2, {5, 24}}, {3, {2, 3, 12}},
};

/* The size of rmsnorm's dx terms, rstd |g| |w| with |g| < 1, over rows of x (+ res when given). */
static double dx_term(const an_tensor *x, const an_tensor *res, const an_tensor *w, int64_t rows, int64_t D,
                      double eps) {
    double term = 0, w_max = 0;
    for (int64_t j = 0; j < D; j++) w_max = fmax(w_max, fabs(an_tensor_get(w, j)));
    for (int64_t i = 0; i < rows; i++) {
        double ss = 0;
        for (int64_t j = 0; j < D; j++)
            ss += pow(an_tensor_get(x, i * D + j) + (res ? an_tensor_get(res, i * D + j) : 0.0), 2);
        term = fmax(term, w_max / sqrt(ss / (double)D + eps));
    }
    return term;
}

START_TEST(test_cuda_rmsnorm_matches_cpu_and_its_gradient_is_bit_identical_across_runs) {
    an_ctx *ctx = gpu_ctx(3, "cuda rmsnorm");
    if (!ctx) return;
    char what[160];
    for (int d = 0; d < N_DTYPES; d++)
        for (size_t c = 0; c < sizeof rmsnorm_cases / sizeof *rmsnorm_cases; c++) {
            an_dtype dtype = float_dtypes[d];
            int ndim = rmsnorm_cases[c].ndim;
            const int64_t *shape = rmsnorm_cases[c].shape;
            int64_t D = shape[ndim - 1], rows = shape_numel(ndim, shape) / D;
            double eps = c % 2 ? 1e-5 : 1e-6;
            an_tensor *x = test_uniform(ctx, dtype, ndim, shape, -2, 2, true);
            an_tensor *w = test_uniform(ctx, dtype, 1, &D, -1.5, 1.5, true);
            fmt(what, sizeof what, "rmsnorm %s rows %lld D %lld", an_dtype_name(dtype), (long long)rows, (long long)D);
            double rtol = rtol_of(dtype);
            double term = dx_term(x, NULL, w, rows, D, eps);
            gpu_run r = run_both(ctx, rmsnorm_fn, &eps, (an_tensor *[]){x, w}, 2, rtol, rtol, rtol * term, what);
            if (!r.ok) { /* the FAIL line says why; the launchers would fail the same way */
                gpu_run_release(&r);
                an_tensor_release(x), an_tensor_release(w);
                continue;
            }

            /* forward launcher: y bit for bit, rstd against a float64 reference */
            an_tensor *y = test_poisoned_gpu(ctx, dtype, ndim, shape), *rstd = test_poisoned_gpu(ctx, AN_F32, 1, &rows);
            test_ok(ctx, an_cuda_rmsnorm(ctx, dtype, an_tensor_data(r.in[0]), an_tensor_data(r.in[1]), rows, D, eps,
                                    an_tensor_data(y), an_tensor_data(rstd)), "an_cuda_rmsnorm");
            expect_same_bits(ctx, y, r.out, what);
            an_tensor *rstd_h = to_host(ctx, rstd);
            for (int64_t i = 0; i < rows; i++) {
                double ss = 0;
                for (int64_t j = 0; j < D; j++) ss += pow(an_tensor_get(x, i * D + j), 2);
                double want = 1.0 / sqrt(ss / (double)D + eps), got = an_tensor_get(rstd_h, i);
                if (isnan(got) || fabs(got - want) > 1e-5 * want) {
                    soft_fail("%s: rstd[%lld] = %.9g, expected %.9g", what, (long long)i, got, want);
                    break;
                }
            }
            /* backward launcher, twice: the same bits as each other and as the op */
            an_tensor *dx[2], *dw[2];
            for (int k = 0; k < 2; k++) {
                dx[k] = test_poisoned_gpu(ctx, dtype, ndim, shape);
                dw[k] = test_poisoned_gpu(ctx, dtype, 1, &D);
                test_ok(ctx, an_cuda_rmsnorm_backward(ctx, dtype, an_tensor_data(r.in[0]), an_tensor_data(r.in[1]),
                                                 an_tensor_data(rstd), an_tensor_data(r.upstream), rows, D,
                                                 an_tensor_data(dx[k]), an_tensor_data(dw[k]), 0),
                   "an_cuda_rmsnorm_backward");
            }
            expect_same_bits(ctx, dx[0], dx[1], what);
            expect_same_bits(ctx, dw[0], dw[1], what);
            expect_same_bits(ctx, dx[0], r.grad[0], what);
            expect_same_bits(ctx, dw[0], r.grad[1], what);
            /* misaligned copies take the scalar path: within the bounds of the aligned (vector) results */
            int64_t n = rows * D;
            an_tensor *mx = misaligned(ctx, dtype, n, r.in[0]), *mw = misaligned(ctx, dtype, D, r.in[1]);
            an_tensor *mg = misaligned(ctx, dtype, n, r.upstream), *my = misaligned(ctx, dtype, n, NULL);
            an_tensor *mdx = misaligned(ctx, dtype, n, NULL), *mdw = misaligned(ctx, dtype, D, NULL);
            an_tensor *mrstd = test_poisoned_gpu(ctx, AN_F32, 1, &rows);
            test_ok(ctx, an_cuda_rmsnorm(ctx, dtype, an_tensor_data(mx), an_tensor_data(mw), rows, D, eps,
                                    an_tensor_data(my), an_tensor_data(mrstd)), "an_cuda_rmsnorm misaligned");
            test_ok(ctx, an_cuda_rmsnorm_backward(ctx, dtype, an_tensor_data(mx), an_tensor_data(mw),
                                             an_tensor_data(mrstd), an_tensor_data(mg), rows, D, an_tensor_data(mdx),
                                             an_tensor_data(mdw), 0),
               "an_cuda_rmsnorm_backward misaligned");
            an_tensor *want_y = to_host(ctx, r.out), *want_dx = to_host(ctx, r.grad[0]);
            an_tensor *want_dw = to_host(ctx, r.grad[1]);
            char mwhat[200];
            expect_like_cpu(ctx, my, want_y, rtol, 0.0, fmt(mwhat, sizeof mwhat, "%s: misaligned forward", what));
            expect_like_cpu(ctx, mdx, want_dx, rtol, rtol * term, fmt(mwhat, sizeof mwhat, "%s: misaligned dx", what));
            expect_like_cpu(ctx, mdw, want_dw, rtol, 0.0, fmt(mwhat, sizeof mwhat, "%s: misaligned dw", what));
            /* add_x: dx added into a gradient that already holds values (the upstream's), vector and
             * scalar paths: within the bounds of old + dx */
            an_tensor *old = to_host(ctx, r.upstream), *want_sum = an_tensor_new(ctx, AN_F64, AN_CPU, 1, &n);
            for (int64_t i = 0; i < n; i++) an_tensor_set(want_sum, i, an_tensor_get(old, i) + an_tensor_get(want_dx, i));
            an_tensor *acc = to_gpu(ctx, old), *macc = misaligned(ctx, dtype, n, old);
            test_ok(ctx, an_cuda_rmsnorm_backward(ctx, dtype, an_tensor_data(r.in[0]), an_tensor_data(r.in[1]),
                                                  an_tensor_data(rstd), an_tensor_data(r.upstream), rows, D,
                                                  an_tensor_data(acc), NULL, 1),
                    "an_cuda_rmsnorm_backward add_x");
            test_ok(ctx, an_cuda_rmsnorm_backward(ctx, dtype, an_tensor_data(mx), an_tensor_data(mw),
                                                  an_tensor_data(mrstd), an_tensor_data(mg), rows, D,
                                                  an_tensor_data(macc), NULL, 1),
                    "an_cuda_rmsnorm_backward add_x misaligned");
            expect_like_cpu(ctx, acc, want_sum, rtol, rtol * term, fmt(mwhat, sizeof mwhat, "%s: dx added", what));
            expect_like_cpu(ctx, macc, want_sum, rtol, rtol * term, fmt(mwhat, sizeof mwhat, "%s: misaligned dx added", what));
            an_tensor_release(old), an_tensor_release(want_sum), an_tensor_release(acc), an_tensor_release(macc);
            an_tensor_release(mx), an_tensor_release(mw), an_tensor_release(mg), an_tensor_release(my);
            an_tensor_release(mdx), an_tensor_release(mdw), an_tensor_release(mrstd);
            an_tensor_release(want_y), an_tensor_release(want_dx), an_tensor_release(want_dw);
            for (int k = 0; k < 2; k++) an_tensor_release(dx[k]), an_tensor_release(dw[k]);
            an_tensor_release(y), an_tensor_release(rstd), an_tensor_release(rstd_h);
            gpu_run_release(&r);
            an_tensor_release(x), an_tensor_release(w);
        }
    expect_no_failures();
    test_ctx_free(ctx);
}
END_TEST

/* ---- rope ---- */

typedef struct {
    an_rope_config config;
} rope_user;

static an_tensor *rope_fn(an_ctx *ctx, an_tensor *const *in, const void *user) {
    return an_rope(ctx, in[0], in[1], &((const rope_user *)user)->config);
}

enum { POS_SEQUENTIAL, POS_PACKED, POS_LONG };

static const struct {
    int64_t B, T, H, D;
    an_rope_style style;
    double theta;
    bool llama3;
    int positions;
} rope_cases[] = {
    {1, 1, 1, 2, AN_ROPE_NEOX, 10000, false, POS_SEQUENTIAL},
    {2, 5, 3, 8, AN_ROPE_INTERLEAVED, 10000, false, POS_PACKED},
    {1, 17, 4, 64, AN_ROPE_NEOX, 500000, true, POS_LONG},
    {3, 9, 2, 128, AN_ROPE_INTERLEAVED, 1e6, true, POS_LONG},
    {2, 33, 5, 6, AN_ROPE_NEOX, 10000, false, POS_PACKED},
    {1, 7, 1, 512, AN_ROPE_NEOX, 10000, false, POS_LONG},
    {2, 11, 3, 64, AN_ROPE_INTERLEAVED, 500000, true, POS_PACKED},
    /* the 1.5B model's q and k (12 and 2 heads of 128: vector path, heads in chunks of 4), both
     * styles; D = 8 (vector in f32 NEOX and in every interleaved dtype, scalar in bf16/f16 NEOX) */
    {2, 19, 12, 128, AN_ROPE_NEOX, 10000, false, POS_LONG},
    {3, 13, 2, 128, AN_ROPE_NEOX, 1e6, false, POS_PACKED},
    {1, 9, 12, 128, AN_ROPE_INTERLEAVED, 10000, true, POS_LONG},
    {2, 5, 7, 8, AN_ROPE_NEOX, 10000, false, POS_PACKED},
};

/* (B, T) positions: 0, 1, ...; packed documents that restart at random; or a long context (a
 * random start up to 131000, with a restart). */
static an_tensor *rope_positions(an_ctx *ctx, an_dtype dtype, int64_t B, int64_t T, int mode) {
    an_tensor *p = an_tensor_new(ctx, dtype, AN_CPU, 2, (int64_t[]){B, T});
    ck_assert_ptr_nonnull(p);
    for (int64_t b = 0; b < B; b++) {
        int64_t pos = mode == POS_LONG ? (int64_t)(an_rng_u64(&ctx->rng) % 131000) : 0;
        for (int64_t t = 0; t < T; t++) {
            if (t > 0 && mode != POS_SEQUENTIAL && an_rng_u64(&ctx->rng) % 4 == 0) pos = 0; /* a new document */
            an_tensor_set(p, b * T + t, (double)pos++);
        }
    }
    return p;
}

START_TEST(test_cuda_rope_matches_cpu_in_both_styles_with_llama3_scaling_and_packed_positions) {
    an_ctx *ctx = gpu_ctx(4, "cuda rope");
    if (!ctx) return;
    char what[200];
    for (int d = 0; d < N_DTYPES; d++)
        for (size_t c = 0; c < sizeof rope_cases / sizeof *rope_cases; c++) {
            an_dtype dtype = float_dtypes[d], pos_dtype = c % 2 ? AN_I32 : AN_I64;
            int64_t B = rope_cases[c].B, T = rope_cases[c].T, H = rope_cases[c].H, D = rope_cases[c].D;
            int64_t shape[4] = {B, T, H, D}, rows = B * T;
            rope_user u = {{rope_cases[c].style, rope_cases[c].theta, rope_cases[c].llama3 ? 8.0 : 0.0, 1.0, 4.0,
                            8192.0}};
            an_tensor *x = test_uniform(ctx, dtype, 4, shape, -2, 2, true);
            an_tensor *pos = rope_positions(ctx, pos_dtype, B, T, rope_cases[c].positions);
            fmt(what, sizeof what, "rope %s (%lld, %lld, %lld, %lld) %s theta %g llama3 %d positions %d",
                an_dtype_name(dtype), (long long)B, (long long)T, (long long)H, (long long)D,
                u.config.style == AN_ROPE_NEOX ? "neox" : "interleaved", u.config.theta, rope_cases[c].llama3,
                rope_cases[c].positions);
            double rtol = rtol_of(dtype);
            gpu_run r = run_both(ctx, rope_fn, &u, (an_tensor *[]){x, pos}, 2, rtol, rtol, 0.0, what);
            if (!r.ok) { /* the FAIL line says why; the launchers would fail the same way */
                gpu_run_release(&r);
                an_tensor_release(x), an_tensor_release(pos);
                continue;
            }

            double *inv_freq = malloc((size_t)(D / 2) * sizeof *inv_freq);
            an_cpu_rope_inv_freq(&u.config, D, inv_freq);
            int interleaved = u.config.style == AN_ROPE_INTERLEAVED;
            an_tensor *out = test_poisoned_gpu(ctx, dtype, 4, shape), *back = test_poisoned_gpu(ctx, dtype, 4, shape);
            test_ok(ctx, an_cuda_rope(ctx, dtype, an_tensor_data(r.in[0]), an_tensor_data(r.in[1]), pos_dtype, rows, H, D,
                                 inv_freq, interleaved, 1.0, an_tensor_data(out)), "an_cuda_rope");
            expect_same_bits(ctx, out, r.out, what);
            test_ok(ctx, an_cuda_rope(ctx, dtype, an_tensor_data(r.upstream), an_tensor_data(r.in[1]), pos_dtype, rows, H,
                                 D, inv_freq, interleaved, -1.0, an_tensor_data(back)), "an_cuda_rope backward");
            expect_same_bits(ctx, back, r.grad[0], what);
            /* in place: out may be x */
            an_tensor *inplace = to_gpu(ctx, x);
            test_ok(ctx, an_cuda_rope(ctx, dtype, an_tensor_data(inplace), an_tensor_data(r.in[1]), pos_dtype, rows, H, D,
                                 inv_freq, interleaved, 1.0, an_tensor_data(inplace)), "an_cuda_rope in place");
            expect_same_bits(ctx, inplace, r.out, what);
            /* a misaligned copy takes the scalar path, which must give the same bits */
            int64_t n = rows * H * D;
            an_tensor *mx = misaligned(ctx, dtype, n, r.in[0]), *mout = misaligned(ctx, dtype, n, NULL);
            test_ok(ctx, an_cuda_rope(ctx, dtype, an_tensor_data(mx), an_tensor_data(r.in[1]), pos_dtype, rows, H, D,
                                 inv_freq, interleaved, 1.0, an_tensor_data(mout)), "an_cuda_rope misaligned");
            expect_same_bits(ctx, mout, r.out, what);
            free(inv_freq);
            an_tensor_release(mx), an_tensor_release(mout);
            an_tensor_release(out), an_tensor_release(back), an_tensor_release(inplace);
            gpu_run_release(&r);
            an_tensor_release(x), an_tensor_release(pos);
        }
    expect_no_failures();
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_cuda_rope_rejects_negative_positions_and_too_long_heads) {
    an_ctx *ctx = gpu_ctx(5, "cuda rope errors");
    if (!ctx) return;
    an_rope_config config = {AN_ROPE_NEOX, 10000, 0, 1, 4, 8192};
    an_tensor *p = rope_positions(ctx, AN_I64, 2, 3, POS_SEQUENTIAL);
    an_tensor_set(p, 4, -3);
    an_tensor *pos = to_gpu(ctx, p);
    an_tensor *x = test_poisoned_gpu(ctx, AN_F32, 4, (int64_t[]){2, 3, 1, 4});
    ck_assert_ptr_null(an_rope(ctx, x, pos, &config));
    ck_assert_int_eq(an_error_status(ctx), AN_ERR_INPUT);
    ck_assert_msg(strstr(an_error_message(ctx), "position -3 (element 4 of positions) is negative") != NULL,
                  "message: %s", an_error_message(ctx));
    an_error_clear(ctx);
    ck_assert_int_eq(an_rope_check_positions(ctx, pos), AN_ERR_INPUT); /* the model's once-per-forward check */
    ck_assert_msg(strstr(an_error_message(ctx), "position -3 (element 4 of positions) is negative") != NULL,
                  "message: %s", an_error_message(ctx));
    an_error_clear(ctx);
    an_tensor_set(p, 4, 1);
    an_tensor *pos_ok = to_gpu(ctx, p);
    an_tensor *wide = test_poisoned_gpu(ctx, AN_F32, 4, (int64_t[]){2, 3, 1, AN_CUDA_ROPE_MAX_D + 2});
    ck_assert_ptr_null(an_rope(ctx, wide, pos_ok, &config));
    ck_assert_int_eq(an_error_status(ctx), AN_ERR_INPUT);
    ck_assert_msg(strstr(an_error_message(ctx), "head dim") != NULL, "message: %s", an_error_message(ctx));
    an_error_clear(ctx);
    an_tensor_release(p), an_tensor_release(pos), an_tensor_release(pos_ok);
    an_tensor_release(x), an_tensor_release(wide);
    expect_no_failures();
    test_ctx_free(ctx);
}
END_TEST

/* ---- softmax ---- */

static an_tensor *softmax_fn(an_ctx *ctx, an_tensor *const *in, const void *user) {
    (void)user;
    return an_softmax(ctx, in[0]);
}

static const struct {
    int ndim;
    int64_t shape[3];
    double range;
} softmax_cases[] = {
    {2, {1, 1}, 8},     {2, {1, 7}, 8},      {3, {3, 5, 33}, 8}, {2, {4, 1000}, 8},
    {2, {2, 50021}, 8}, {2, {37, 129}, 60}, {1, {4099}, 8},
};

START_TEST(test_cuda_softmax_matches_cpu) {
    an_ctx *ctx = gpu_ctx(6, "cuda softmax");
    if (!ctx) return;
    char what[160];
    for (int d = 0; d < N_DTYPES; d++)
        for (size_t c = 0; c < sizeof softmax_cases / sizeof *softmax_cases; c++) {
            an_dtype dtype = float_dtypes[d];
            int ndim = softmax_cases[c].ndim;
            const int64_t *shape = softmax_cases[c].shape;
            int64_t cols = shape[ndim - 1], rows = shape_numel(ndim, shape) / cols;
            double range = softmax_cases[c].range;
            an_tensor *x = test_uniform(ctx, dtype, ndim, shape, -range, range, true);
            fmt(what, sizeof what, "softmax %s rows %lld cols %lld range %g", an_dtype_name(dtype), (long long)rows,
                (long long)cols, range);
            double rtol = rtol_of(dtype);
            gpu_run r = run_both(ctx, softmax_fn, NULL, (an_tensor *[]){x}, 1, rtol, rtol, 0.0, what);
            if (!r.ok) { /* the FAIL line says why; the launchers would fail the same way */
                gpu_run_release(&r);
                an_tensor_release(x);
                continue;
            }
            an_tensor *y = test_poisoned_gpu(ctx, dtype, ndim, shape), *dx = test_poisoned_gpu(ctx, dtype, ndim, shape);
            test_ok(ctx, an_cuda_softmax(ctx, dtype, an_tensor_data(r.in[0]), rows, cols, an_tensor_data(y)),
               "an_cuda_softmax");
            expect_same_bits(ctx, y, r.out, what);
            test_ok(ctx, an_cuda_softmax_backward(ctx, dtype, an_tensor_data(r.out), an_tensor_data(r.upstream), rows, cols,
                                             an_tensor_data(dx)), "an_cuda_softmax_backward");
            expect_same_bits(ctx, dx, r.grad[0], what);
            an_tensor_release(y), an_tensor_release(dx);
            gpu_run_release(&r);
            an_tensor_release(x);
        }
    expect_no_failures();
    test_ctx_free(ctx);
}
END_TEST

/* ---- cross_entropy, log_softmax_gather, linear_cross_entropy ---- */

enum { IGNORE_NONE, IGNORE_SOME, IGNORE_ALL };

/* Targets (N) in [0, V), every third one (IGNORE_SOME) or all (IGNORE_ALL) set to ignore_index. */
static an_tensor *ce_targets(an_ctx *ctx, an_dtype dtype, int64_t N, int64_t V, int mode, int64_t ignore_index) {
    an_tensor *t = test_ids(ctx, dtype, 1, &N, V);
    for (int64_t i = 0; i < N; i++)
        if (mode == IGNORE_ALL || (mode == IGNORE_SOME && i % 3 == 1)) an_tensor_set(t, i, (double)ignore_index);
    return t;
}

/* 1 / the loss denominator, as the op computes it. */
/* Each row's lse (host lse_h, (N)) against the float64 log-sum-exp of the host logits (N, V); 0 on
 * an ignored row. */
static void expect_lse_like_f64(const an_tensor *logits, const an_tensor *targets, int64_t ignore_index,
                                const an_tensor *lse_h, int64_t N, int64_t V, const char *what) {
    for (int64_t i = 0; i < N; i++) {
        double want = 0;
        if ((int64_t)an_tensor_get(targets, i) != ignore_index) {
            double m = -INFINITY, sum = 0;
            for (int64_t j = 0; j < V; j++) m = fmax(m, an_tensor_get(logits, i * V + j));
            for (int64_t j = 0; j < V; j++) sum += exp(an_tensor_get(logits, i * V + j) - m);
            want = m + log(sum);
        }
        double got = an_tensor_get(lse_h, i);
        if (isnan(got) || fabs(got - want) > 2e-6 * (fabs(want) + 1)) {
            soft_fail("%s: lse[%lld] = %.9g, expected %.9g", what, (long long)i, got, want);
            return;
        }
    }
}

static double ce_inv(const an_tensor *targets, const an_cross_entropy_opts *o) {
    int64_t counted = 0;
    for (int64_t i = 0; i < an_tensor_numel(targets); i++)
        counted += (int64_t)an_tensor_get(targets, i) != o->ignore_index;
    double denom = o->normalizer > 0 ? o->normalizer : (double)counted;
    return counted > 0 ? 1.0 / denom : 0.0;
}

static an_tensor *cross_entropy_fn(an_ctx *ctx, an_tensor *const *in, const void *user) {
    return an_cross_entropy(ctx, in[0], in[1], user);
}

static const struct {
    int64_t N, V;
    int ignore;
    int64_t ignore_index;
    double normalizer;
} ce_cases[] = {
    {1, 1, IGNORE_NONE, -100, 0},   {1, 7, IGNORE_NONE, -100, 0}, {5, 33, IGNORE_SOME, -100, 0},
    {37, 1000, IGNORE_SOME, -100, 12.5}, {3, 50021, IGNORE_SOME, -100, 0}, {64, 129, IGNORE_SOME, 3, 0},
    {6, 17, IGNORE_ALL, -100, 0}, {9, 4096, IGNORE_SOME, -100, 0}, /* whole 16-byte packs in every row */
};

START_TEST(test_cuda_cross_entropy_matches_cpu_with_ignored_targets_and_normalizer) {
    an_ctx *ctx = gpu_ctx(7, "cuda cross_entropy");
    if (!ctx) return;
    char what[160];
    for (int d = 0; d < N_DTYPES; d++)
        for (size_t c = 0; c < sizeof ce_cases / sizeof *ce_cases; c++) {
            an_dtype dtype = float_dtypes[d], t_dtype = c % 2 ? AN_I32 : AN_I64;
            int64_t N = ce_cases[c].N, V = ce_cases[c].V;
            an_cross_entropy_opts o = {ce_cases[c].ignore_index, 1024, ce_cases[c].normalizer, 0};
            an_tensor *logits = test_uniform(ctx, dtype, 2, (int64_t[]){N, V}, -6, 6, true);
            an_tensor *targets = ce_targets(ctx, t_dtype, N, V, ce_cases[c].ignore, o.ignore_index);
            fmt(what, sizeof what, "cross_entropy %s N %lld V %lld ignore %d (index %lld) normalizer %g",
                an_dtype_name(dtype), (long long)N, (long long)V, ce_cases[c].ignore, (long long)o.ignore_index,
                o.normalizer);
            double rtol = rtol_of(dtype);
            gpu_run r = run_both(ctx, cross_entropy_fn, &o, (an_tensor *[]){logits, targets}, 2, rtol, rtol,
                                 0.0, what);
            if (!r.ok) { /* the FAIL line says why; the launchers would fail the same way */
                gpu_run_release(&r);
                an_tensor_release(logits), an_tensor_release(targets);
                continue;
            }

            /* launchers: lse against float64 (0 on ignored rows), the loss and dlogits bit for bit */
            an_tensor *lse = test_poisoned_gpu(ctx, AN_F32, 1, &N), *rows = test_poisoned_gpu(ctx, AN_F32, 1, &N);
            /* the loss scalar is fp32 for every input dtype; the backward reads the upstream gradient in
             * the input dtype, as the op converts it */
            an_tensor *loss = test_poisoned_gpu(ctx, AN_F32, 0, NULL), *dx = test_poisoned_gpu(ctx, dtype, 2, (int64_t[]){N, V});
            an_tensor *upstream = an_tensor_to(ctx, r.upstream, dtype, AN_CUDA);
            test_ok(ctx, an_cuda_cross_entropy_rows(ctx, dtype, an_tensor_data(r.in[0]), an_tensor_data(r.in[1]), t_dtype,
                                               N, V, o.ignore_index, an_tensor_data(lse), an_tensor_data(rows)),
               "an_cuda_cross_entropy_rows");
            double inv = ce_inv(targets, &o);
            test_ok(ctx, an_cuda_loss_total(ctx, AN_F32, an_tensor_data(rows), N, inv, an_tensor_data(loss)),
               "an_cuda_loss_total");
            expect_same_bits(ctx, loss, r.out, what);
            an_tensor *lse_h = to_host(ctx, lse);
            expect_lse_like_f64(logits, targets, o.ignore_index, lse_h, N, V, what);
            test_ok(ctx, an_cuda_cross_entropy_backward(ctx, dtype, an_tensor_data(r.in[0]), an_tensor_data(lse),
                                                   an_tensor_data(r.in[1]), t_dtype, N, V, o.ignore_index,
                                                   an_tensor_data(upstream), inv, an_tensor_data(dx)),
               "an_cuda_cross_entropy_backward");
            expect_same_bits(ctx, dx, r.grad[0], what);

            /* the fused launcher (linear_cross_entropy's chunks): the same lse and losses, and in place of
             * the logits the backward's dlogits at a unit upstream gradient, bit for bit */
            an_tensor *unit = an_tensor_scalar(ctx, dtype, AN_CUDA, 1.0), *unit_dx = test_poisoned_gpu(ctx, dtype, 2, (int64_t[]){N, V});
            an_tensor *fused = test_poisoned_gpu(ctx, dtype, 2, (int64_t[]){N, V});
            an_tensor *lse2 = test_poisoned_gpu(ctx, AN_F32, 1, &N), *rows2 = test_poisoned_gpu(ctx, AN_F32, 1, &N);
            test_ok(ctx, an_tensor_copy_into(ctx, fused, r.in[0]), "copy logits");
            test_ok(ctx, an_cuda_cross_entropy_backward(ctx, dtype, an_tensor_data(r.in[0]), an_tensor_data(lse),
                                                        an_tensor_data(r.in[1]), t_dtype, N, V, o.ignore_index,
                                                        an_tensor_data(unit), inv, an_tensor_data(unit_dx)),
                    "an_cuda_cross_entropy_backward at a unit gradient");
            test_ok(ctx, an_cuda_cross_entropy_rows_grad(ctx, dtype, an_tensor_data(fused), an_tensor_data(r.in[1]),
                                                         t_dtype, N, V, o.ignore_index, inv, an_tensor_data(lse2),
                                                         an_tensor_data(rows2)),
                    "an_cuda_cross_entropy_rows_grad");
            expect_same_bits(ctx, lse2, lse, what);
            expect_same_bits(ctx, rows2, rows, what);
            expect_same_bits(ctx, fused, unit_dx, what);
            an_tensor_release(unit), an_tensor_release(unit_dx), an_tensor_release(fused);
            an_tensor_release(lse2), an_tensor_release(rows2);
            an_tensor_release(lse), an_tensor_release(rows), an_tensor_release(loss), an_tensor_release(dx);
            an_tensor_release(upstream);
            an_tensor_release(lse_h);
            gpu_run_release(&r);
            an_tensor_release(logits), an_tensor_release(targets);
        }
    expect_no_failures();
    test_ctx_free(ctx);
}
END_TEST

/* an_cuda_cross_entropy_rows_grad (linear_cross_entropy's per-chunk kernel) on its own, at the
 * chunk's shape (bf16 V = 151936: full blocks, four packs in flight, the reserved shared memory)
 * and at ragged ones: V odd or prime, rows starting one element past a 16-byte boundary (a head
 * and tail read one element at a time, every row split differently), rows shorter than a block.
 * Every third row is ignored; row 0's target is column 0 and row 2's column V - 1 (the head and the
 * tail). lse, the losses and the dlogits it leaves over the logits must have the bits of
 * an_cuda_cross_entropy_rows then an_cuda_cross_entropy_backward at a unit upstream gradient on the
 * same address (every output NaN-poisoned first), lse must match float64, and a second launch on
 * a fresh copy must give the same bits. */
static const struct {
    an_dtype dtype;
    int64_t N, V;
    int offset; /* elements past a 16-byte boundary the logits start at (0 or 1) */
} rows_grad_cases[] = {
    {AN_BF16, 6, 151936, 0}, {AN_BF16, 5, 151936, 1}, {AN_F16, 4, 50257, 1}, {AN_F32, 3, 151936, 0},
    {AN_F32, 4, 50021, 1},   {AN_BF16, 37, 1000, 0},  {AN_F16, 9, 7, 1},     {AN_BF16, 3, 1, 0},
    {AN_BF16, 300, 4096, 1}, {AN_BF16, 2, 1000003, 1},
};

/* A CUDA copy (n) of host's values starting `offset` (0 or 1) elements past an allocation's start. */
static an_tensor *gpu_copy_at(an_ctx *ctx, const an_tensor *host, int64_t n, int offset) {
    if (offset) return misaligned(ctx, host->dtype, n, host);
    an_tensor *d = test_poisoned_gpu(ctx, host->dtype, 1, &n);
    test_ok(ctx, an_tensor_copy_into(ctx, d, host), "upload");
    return d;
}

/* lse (N), losses (N) and dlogits (N V) of one an_cuda_cross_entropy_rows_grad launch on a fresh
 * copy of logits (host, N V) at `offset`, with poisoned lse and losses. */
static void rows_grad_once(an_ctx *ctx, const an_tensor *logits, const an_tensor *targets_dev, int64_t N, int64_t V,
                           int offset, int64_t ignore_index, double scale, an_tensor **out) {
    an_tensor *x = gpu_copy_at(ctx, logits, N * V, offset);
    an_tensor *lse = test_poisoned_gpu(ctx, AN_F32, 1, &N), *loss = test_poisoned_gpu(ctx, AN_F32, 1, &N);
    test_ok(ctx, an_cuda_cross_entropy_rows_grad(ctx, logits->dtype, an_tensor_data(x), an_tensor_data(targets_dev),
                                                 targets_dev->dtype, N, V, ignore_index, scale, an_tensor_data(lse),
                                                 an_tensor_data(loss)),
            "an_cuda_cross_entropy_rows_grad");
    out[0] = lse, out[1] = loss, out[2] = x;
}

START_TEST(test_cuda_cross_entropy_rows_grad_gives_the_two_kernel_bits_at_the_chunk_shape_and_ragged_rows) {
    an_ctx *ctx = gpu_ctx(13, "cuda cross_entropy_rows_grad");
    if (!ctx) return;
    const int64_t ignore_index = -100;
    static const char *const names[3] = {"lse", "loss", "dlogits"};
    char what[160], w2[200];
    for (size_t c = 0; c < sizeof rows_grad_cases / sizeof *rows_grad_cases; c++) {
        an_dtype dtype = rows_grad_cases[c].dtype, t_dtype = c % 2 ? AN_I32 : AN_I64;
        int64_t N = rows_grad_cases[c].N, V = rows_grad_cases[c].V, n = N * V;
        int offset = rows_grad_cases[c].offset;
        fmt(what, sizeof what, "cross_entropy_rows_grad %s N %lld V %lld offset %d", an_dtype_name(dtype),
            (long long)N, (long long)V, offset);
        an_tensor *logits = test_uniform(ctx, dtype, 1, &n, -6, 6, false); /* (N V) */
        an_tensor *targets = ce_targets(ctx, t_dtype, N, V, IGNORE_SOME, ignore_index);
        an_tensor_set(targets, 0, 0);
        if (N > 2) an_tensor_set(targets, 2, (double)(V - 1));
        an_tensor *targets_dev = to_gpu(ctx, targets);
        an_cross_entropy_opts o = {ignore_index, 1024, 0, 0};
        double scale = ce_inv(targets, &o);

        /* the two kernels on the same address (lse's bits depend on how rows split into packs): lse and
         * losses, then dlogits at a unit gradient into dx one element past a boundary (each element's
         * gradient has the same bits on the packed and scalar paths) */
        an_tensor *x = gpu_copy_at(ctx, logits, n, offset), *dx = misaligned(ctx, dtype, n, NULL);
        an_tensor *two[3] = {test_poisoned_gpu(ctx, AN_F32, 1, &N), test_poisoned_gpu(ctx, AN_F32, 1, &N), dx};
        an_tensor *unit = an_tensor_scalar(ctx, dtype, AN_CUDA, 1.0);
        test_ok(ctx, an_cuda_cross_entropy_rows(ctx, dtype, an_tensor_data(x), an_tensor_data(targets_dev), t_dtype, N,
                                                V, ignore_index, an_tensor_data(two[0]), an_tensor_data(two[1])),
                "an_cuda_cross_entropy_rows");
        test_ok(ctx, an_cuda_cross_entropy_backward(ctx, dtype, an_tensor_data(x), an_tensor_data(two[0]),
                                                    an_tensor_data(targets_dev), t_dtype, N, V, ignore_index,
                                                    an_tensor_data(unit), scale, an_tensor_data(dx)),
                "an_cuda_cross_entropy_backward at a unit gradient");

        an_tensor *got[3], *again[3];
        rows_grad_once(ctx, logits, targets_dev, N, V, offset, ignore_index, scale, got);
        rows_grad_once(ctx, logits, targets_dev, N, V, offset, ignore_index, scale, again);
        for (int k = 0; k < 3; k++) {
            expect_same_bits(ctx, got[k], two[k], fmt(w2, sizeof w2, "%s %s against the two kernels", what, names[k]));
            expect_same_bits(ctx, again[k], got[k], fmt(w2, sizeof w2, "%s %s on a second launch", what, names[k]));
        }

        an_tensor *lse_h = to_host(ctx, got[0]);
        expect_lse_like_f64(logits, targets, ignore_index, lse_h, N, V, what);
        an_tensor_release(lse_h);
        for (int k = 0; k < 3; k++) an_tensor_release(got[k]), an_tensor_release(again[k]), an_tensor_release(two[k]);
        an_tensor_release(unit), an_tensor_release(x);
        an_tensor_release(targets_dev), an_tensor_release(targets), an_tensor_release(logits);
    }
    expect_no_failures();
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_cuda_losses_reject_targets_outside_the_vocabulary) {
    an_ctx *ctx = gpu_ctx(8, "cuda loss errors");
    if (!ctx) return;
    an_tensor *x = test_poisoned_gpu(ctx, AN_BF16, 2, (int64_t[]){6, 11}), *w = test_poisoned_gpu(ctx, AN_BF16, 2, (int64_t[]){11, 11});
    an_tensor *h = test_ids(ctx, AN_I32, 1, (int64_t[]){6}, 11);
    an_tensor_set(h, 2, -100); /* ignored by the losses, an error for log_softmax_gather */
    an_tensor_set(h, 5, 11);
    an_tensor *t = to_gpu(ctx, h);
    for (int op = 0; op < 3; op++) {
        an_tensor *out = op == 0   ? an_cross_entropy(ctx, x, t, NULL)
                         : op == 1 ? an_linear_cross_entropy(ctx, x, w, t, NULL)
                                   : an_log_softmax_gather(ctx, x, t);
        ck_assert_ptr_null(out);
        ck_assert_int_eq(an_error_status(ctx), AN_ERR_INPUT);
        const char *want = op == 0   ? "cross_entropy: targets[5] = 11 is outside [0, 11) and is not the ignore index"
                           : op == 1 ? "linear_cross_entropy: targets[5] = 11 is outside [0, 11)"
                                     : "log_softmax_gather: ids[2] = -100 is outside [0, 11)";
        ck_assert_msg(strstr(an_error_message(ctx), want) != NULL, "message: %s", an_error_message(ctx));
        an_error_clear(ctx);
    }
    /* the check a caller runs before its forward (an_model_loss): the same message, and on good
     * targets the count the op would take (the ignored one left out) */
    int64_t counted = -1;
    ck_assert_int_eq(an_cross_entropy_check_targets(ctx, "linear_cross_entropy", t, 11, AN_IGNORE_INDEX, &counted),
                     AN_ERR_INPUT);
    ck_assert_msg(strstr(an_error_message(ctx), "linear_cross_entropy: targets[5] = 11 is outside [0, 11)") != NULL,
                  "message: %s", an_error_message(ctx));
    an_error_clear(ctx);
    an_tensor_set(h, 5, 10);
    an_tensor *good = to_gpu(ctx, h);
    test_ok(ctx, an_cross_entropy_check_targets(ctx, "linear_cross_entropy", good, 11, AN_IGNORE_INDEX, &counted),
            "check good targets");
    ck_assert_int_eq(counted, 5);
    test_ok(ctx, an_cross_entropy_check_targets(ctx, "linear_cross_entropy", h, 11, AN_IGNORE_INDEX, &counted),
            "check good targets on the CPU");
    ck_assert_int_eq(counted, 5);
    an_tensor_release(good);
    an_tensor_release(x), an_tensor_release(w), an_tensor_release(h), an_tensor_release(t);
    expect_no_failures();
    test_ctx_free(ctx);
}
END_TEST

static an_tensor *log_softmax_gather_fn(an_ctx *ctx, an_tensor *const *in, const void *user) {
    (void)user;
    return an_log_softmax_gather(ctx, in[0], in[1]);
}

static const int64_t lsg_cases[][2] = {{1, 1}, {1, 7}, {5, 33}, {37, 1000}, {3, 50021}, {64, 129}};

START_TEST(test_cuda_log_softmax_gather_matches_cpu) {
    an_ctx *ctx = gpu_ctx(9, "cuda log_softmax_gather");
    if (!ctx) return;
    char what[160];
    for (int d = 0; d < N_DTYPES; d++)
        for (size_t c = 0; c < sizeof lsg_cases / sizeof *lsg_cases; c++) {
            an_dtype dtype = float_dtypes[d], id_dtype = c % 2 ? AN_I32 : AN_I64;
            int64_t N = lsg_cases[c][0], V = lsg_cases[c][1];
            an_tensor *logits = test_uniform(ctx, dtype, 2, (int64_t[]){N, V}, -6, 6, true);
            an_tensor *ids = test_ids(ctx, id_dtype, 1, &N, V);
            fmt(what, sizeof what, "log_softmax_gather %s N %lld V %lld", an_dtype_name(dtype), (long long)N,
                (long long)V);
            double rtol = rtol_of(dtype);
            gpu_run r = run_both(ctx, log_softmax_gather_fn, NULL, (an_tensor *[]){logits, ids}, 2, rtol, rtol, 0.0,
                                 what);
            if (!r.ok) { /* the FAIL line says why; the launchers would fail the same way */
                gpu_run_release(&r);
                an_tensor_release(logits), an_tensor_release(ids);
                continue;
            }
            an_tensor *lse = test_poisoned_gpu(ctx, AN_F32, 1, &N), *out = test_poisoned_gpu(ctx, dtype, 1, &N);
            an_tensor *dx = test_poisoned_gpu(ctx, dtype, 2, (int64_t[]){N, V});
            test_ok(ctx, an_cuda_log_softmax_gather(ctx, dtype, an_tensor_data(r.in[0]), an_tensor_data(r.in[1]), id_dtype,
                                               N, V, an_tensor_data(lse), an_tensor_data(out)),
               "an_cuda_log_softmax_gather");
            expect_same_bits(ctx, out, r.out, what);
            test_ok(ctx, an_cuda_log_softmax_gather_backward(ctx, dtype, an_tensor_data(r.in[0]), an_tensor_data(lse),
                                                        an_tensor_data(r.in[1]), id_dtype, an_tensor_data(r.upstream),
                                                        N, V, an_tensor_data(dx)),
               "an_cuda_log_softmax_gather_backward");
            expect_same_bits(ctx, dx, r.grad[0], what);
            an_tensor_release(lse), an_tensor_release(out), an_tensor_release(dx);
            gpu_run_release(&r);
            an_tensor_release(logits), an_tensor_release(ids);
        }
    expect_no_failures();
    test_ctx_free(ctx);
}
END_TEST

static an_tensor *linear_cross_entropy_fn(an_ctx *ctx, an_tensor *const *in, const void *user) {
    return an_linear_cross_entropy(ctx, in[0], in[1], in[2], user);
}

static const struct {
    int64_t N, D, V, chunk_rows;
    int ignore;
    double normalizer;
} lce_cases[] = {
    {1, 1, 1, 0, IGNORE_NONE, 0},      {1, 8, 3, 1024, IGNORE_NONE, 0},    {37, 33, 1000, 8, IGNORE_SOME, 0},
    {64, 64, 5003, 16, IGNORE_SOME, 100}, {20, 16, 129, 7, IGNORE_ALL, 0}, {50, 24, 77, 50, IGNORE_SOME, 0},
    {45, 40, 301, 11, IGNORE_NONE, 0},
};

START_TEST(test_cuda_linear_cross_entropy_matches_cpu_with_uneven_chunks) {
    an_ctx *ctx = gpu_ctx(10, "cuda linear_cross_entropy");
    if (!ctx) return;
    char what[200];
    for (int d = 0; d < N_DTYPES; d++)
        for (size_t c = 0; c < sizeof lce_cases / sizeof *lce_cases; c++) {
            an_dtype dtype = float_dtypes[d], t_dtype = c % 2 ? AN_I32 : AN_I64;
            int64_t N = lce_cases[c].N, D = lce_cases[c].D, V = lce_cases[c].V;
            an_cross_entropy_opts o = {AN_IGNORE_INDEX, lce_cases[c].chunk_rows, lce_cases[c].normalizer, 0};
            an_tensor *hidden = test_uniform(ctx, dtype, 2, (int64_t[]){N, D}, -1, 1, true);
            an_tensor *weight = test_uniform(ctx, dtype, 2, (int64_t[]){V, D}, -1, 1, true);
            an_tensor *targets = ce_targets(ctx, t_dtype, N, V, lce_cases[c].ignore, o.ignore_index);
            fmt(what, sizeof what, "linear_cross_entropy %s N %lld D %lld V %lld chunk_rows %lld ignore %d",
                an_dtype_name(dtype), (long long)N, (long long)D, (long long)V, (long long)o.chunk_rows,
                lce_cases[c].ignore);
            /* the GPU rounds chunk logits and dlogits to the input dtype, the CPU keeps them f32 */
            double rtol = dtype == AN_F32 ? 1e-5 : dtype == AN_BF16 ? 4e-2 : 1e-2;
            gpu_run r = run_both(ctx, linear_cross_entropy_fn, &o, (an_tensor *[]){hidden, weight, targets}, 3, rtol,
                                 rtol, 0.0, what);
            gpu_run_release(&r);
            an_tensor_release(hidden), an_tensor_release(weight), an_tensor_release(targets);
        }
    expect_no_failures();
    test_ctx_free(ctx);
}
END_TEST

/* ---- add_rmsnorm: the residual add fused into the norm ---- */

/* y + sum, so both outputs carry gradient. */
static an_tensor *add_rmsnorm_fn(an_ctx *ctx, an_tensor *const *in, const void *user) {
    an_tensor *sum = NULL, *y = an_add_rmsnorm(ctx, in[0], in[1], in[2], *(const double *)user, &sum);
    an_tensor *out = y ? an_add(ctx, y, sum) : NULL;
    an_tensor_release(y), an_tensor_release(sum);
    return out;
}

/* The op against the CPU (forward and the three gradients); the fused launcher bit for bit against
 * an_cuda_binary's add followed by an_cuda_rmsnorm, on the vector path and on misaligned copies
 * (the scalar path). */
START_TEST(test_cuda_add_rmsnorm_matches_cpu_and_the_unfused_kernels) {
    an_ctx *ctx = gpu_ctx(11, "cuda add_rmsnorm");
    if (!ctx) return;
    char what[160];
    for (int d = 0; d < N_DTYPES; d++)
        for (size_t c = 0; c < sizeof rmsnorm_cases / sizeof *rmsnorm_cases; c++) {
            an_dtype dtype = float_dtypes[d];
            int ndim = rmsnorm_cases[c].ndim;
            const int64_t *shape = rmsnorm_cases[c].shape;
            int64_t D = shape[ndim - 1], rows = shape_numel(ndim, shape) / D, n = rows * D;
            double eps = 1e-6;
            an_tensor *x = test_uniform(ctx, dtype, ndim, shape, -2, 2, true);
            an_tensor *res = test_uniform(ctx, dtype, ndim, shape, -2, 2, true);
            an_tensor *w = test_uniform(ctx, dtype, 1, &D, -1.5, 1.5, true);
            fmt(what, sizeof what, "add_rmsnorm %s rows %lld D %lld", an_dtype_name(dtype), (long long)rows, (long long)D);
            double rtol = rtol_of(dtype);
            /* the GPU rounds the sum to the dtype before normalising, as the CPU op does; dx is
             * rmsnorm's (dx_term) plus the sum's own upstream gradient (|g| < 1) */
            double term = dx_term(x, res, w, rows, D, eps) + 1;
            gpu_run r = run_both(ctx, add_rmsnorm_fn, &eps, (an_tensor *[]){x, res, w}, 3, 2 * rtol, 2 * rtol,
                                 2 * rtol * term, what);
            for (int aligned = 1; aligned >= 0 && r.ok; aligned--) {
                an_tensor *in[3], *sum[2], *y[2], *rstd[2];
                for (int i = 0; i < 3; i++)
                    in[i] = aligned ? an_tensor_retain(r.in[i]) : misaligned(ctx, dtype, i < 2 ? n : D, r.in[i]);
                for (int k = 0; k < 2; k++) {
                    sum[k] = aligned ? test_poisoned_gpu(ctx, dtype, ndim, shape) : misaligned(ctx, dtype, n, NULL);
                    y[k] = aligned ? test_poisoned_gpu(ctx, dtype, ndim, shape) : misaligned(ctx, dtype, n, NULL);
                    rstd[k] = test_poisoned_gpu(ctx, AN_F32, 1, &rows);
                }
                test_ok(ctx, an_cuda_add_rmsnorm(ctx, dtype, an_tensor_data(in[0]), an_tensor_data(in[1]),
                                                 an_tensor_data(in[2]), rows, D, eps, an_tensor_data(sum[0]),
                                                 an_tensor_data(y[0]), an_tensor_data(rstd[0])),
                        "an_cuda_add_rmsnorm");
                test_ok(ctx, an_cuda_binary(ctx, AN_BINARY_ADD, dtype, an_tensor_data(in[0]), n, an_tensor_data(in[1]),
                                            n, an_tensor_data(sum[1])),
                        "an_cuda_binary add");
                test_ok(ctx, an_cuda_rmsnorm(ctx, dtype, an_tensor_data(sum[1]), an_tensor_data(in[2]), rows, D, eps,
                                             an_tensor_data(y[1]), an_tensor_data(rstd[1])),
                        "an_cuda_rmsnorm");
                char awhat[200];
                fmt(awhat, sizeof awhat, "%s %s: fused vs add + rmsnorm", what, aligned ? "aligned" : "misaligned");
                expect_same_bits(ctx, sum[0], sum[1], awhat);
                expect_same_bits(ctx, y[0], y[1], awhat);
                expect_same_bits(ctx, rstd[0], rstd[1], awhat);
                for (int i = 0; i < 3; i++) an_tensor_release(in[i]);
                for (int k = 0; k < 2; k++) an_tensor_release(sum[k]), an_tensor_release(y[k]), an_tensor_release(rstd[k]);
            }
            gpu_run_release(&r);
            an_tensor_release(x), an_tensor_release(res), an_tensor_release(w);
        }
    expect_no_failures();
    test_ctx_free(ctx);
}
END_TEST

/* ---- swiglu_mlp: the gated MLP, its GEMMs fused with the swiglu and its gradient ---- */

static an_tensor *swiglu_mlp_fn(an_ctx *ctx, an_tensor *const *in, const void *user) {
    (void)user;
    return an_swiglu_mlp(ctx, in[0], in[1], in[2], in[3], in[4]);
}

/* x (rows, in), W_gate and W_up (inter, in), W_down (out, inter), residual (rows, out). The fused
 * kernels take in, inter and out multiples of 8 in bf16 and f16 on compute capability 9.0: one row,
 * ragged row and column tiles, k past one stage, the 1.5B model's width; {5, 12, 20, 6} and f32
 * take the separate ops. */
static const int64_t mlp_cases[][4] = {{1, 8, 8, 8},        {210, 64, 136, 64}, {300, 1096, 392, 72},
                                       {129, 64, 200, 128}, {5, 12, 20, 6},     {64, 1536, 72, 1536},
                                       {1100, 256, 1040, 64}, {2100, 64, 4096, 392}};
/* the last two: several tiles a CTA (the last, about four a CTA of the backward's 128 x 128 tiles in
 * ping-pong, each warpgroup taking two or more, over more k slices than stages) */

/* The CPU inputs of mlp_cases' case (rows, in, inter, out): x (rows, in) and residual (rows, out)
 * requiring grad, W_gate and W_up (inter, in) and W_down (out, inter) trained or frozen, in that
 * order (the values follow from the context's seed), and the case's description into what. */
static void mlp_inputs(an_ctx *ctx, an_dtype dtype, const int64_t *c, bool trained, an_tensor *t[5], const char *name,
                       char *what, size_t size) {
    int64_t rows = c[0], in = c[1], n = c[2], out = c[3];
    fmt(what, size, "%s %s rows %lld in %lld inter %lld out %lld", name, an_dtype_name(dtype), (long long)rows,
        (long long)in, (long long)n, (long long)out);
    t[0] = test_uniform(ctx, dtype, 2, (int64_t[]){rows, in}, -1, 1, true);
    t[1] = test_uniform(ctx, dtype, 2, (int64_t[]){n, in}, -0.5, 0.5, trained);
    t[2] = test_uniform(ctx, dtype, 2, (int64_t[]){n, in}, -0.5, 0.5, trained);
    t[3] = test_uniform(ctx, dtype, 2, (int64_t[]){out, n}, -0.5, 0.5, trained);
    t[4] = test_uniform(ctx, dtype, 2, (int64_t[]){rows, out}, -1, 1, true);
}

/* A fresh poisoned (rows, cols) tensor on the GPU. */
static an_tensor *poisoned(an_ctx *ctx, an_dtype dtype, int64_t rows, int64_t cols) {
    return test_poisoned_gpu(ctx, dtype, 2, (int64_t[]){rows, cols});
}

/* The op against the CPU (forward and the five gradients); then both launchers with poisoned
 * outputs: an_cuda_gemm_swiglu's gate and up within the GEMM bound of cuBLASLt's, its act bit for
 * bit an_cuda_swiglu of its own gate and up; an_cuda_gemm_swiglu_backward's dgate and dup within
 * the bound of cuBLASLt's d act GEMM + an_cuda_swiglu_backward, the same bits again when it also
 * forms act, and that act bit for bit the forward's; the same bits on a repeat; a shape
 * the kernels cannot take is an input error naming the launcher. */
START_TEST(test_cuda_swiglu_mlp_matches_cpu_and_the_separate_kernels) {
    an_ctx *ctx = gpu_ctx(12, "cuda swiglu_mlp");
    if (!ctx) return;
    char what[160], w2[220];
    for (int d = 0; d < N_DTYPES; d++)
        for (size_t c = 0; c < sizeof mlp_cases / sizeof *mlp_cases; c++) {
            an_dtype dtype = float_dtypes[d];
            int64_t rows = mlp_cases[c][0], in = mlp_cases[c][1], n = mlp_cases[c][2], out = mlp_cases[c][3];
            an_tensor *t[5];
            mlp_inputs(ctx, dtype, mlp_cases[c], true, t, "swiglu_mlp", what, sizeof what);
            double rtol = rtol_of(dtype);
            gpu_run r = run_both(ctx, swiglu_mlp_fn, NULL, t, 5, 2 * rtol, 2 * rtol, 0.0, what);
            const void *fwd[] = {an_tensor_data(r.in[0]), an_tensor_data(r.in[1]), an_tensor_data(r.in[2]),
                                 an_tensor_data(r.out), an_tensor_data(r.out), an_tensor_data(r.out)};
            bool fused = r.ok && an_cuda_gemm_swiglu_rule(ctx, dtype, rows, in, n, fwd, 6);
            if (r.ok && dtype != AN_F32 && in % 8 == 0 && n % 8 == 0 && !fused)
                printf("SKIP %s: the device does not run the fused kernels (compute capability 9.0 only)\n", what);
            if (fused) {
                an_tensor *o[2][3], *ref[3];
                for (int k = 0; k < 2; k++) {
                    for (int i = 0; i < 3; i++) o[k][i] = poisoned(ctx, dtype, rows, n);
                    test_ok(ctx, an_cuda_gemm_swiglu(ctx, dtype, fwd[0], rows, in, fwd[1], fwd[2], n, an_tensor_data(o[k][0]),
                                                     an_tensor_data(o[k][1]), an_tensor_data(o[k][2])),
                            "an_cuda_gemm_swiglu");
                }
                an_gemm_shape shape = {1, rows, n, in, false, true, false, false};
                for (int i = 0; i < 2; i++) {
                    ref[i] = poisoned(ctx, dtype, rows, n);
                    test_ok(ctx, an_cuda_gemm(ctx, &shape, dtype, fwd[0], fwd[1 + i], an_tensor_data(ref[i])), "an_cuda_gemm");
                    an_tensor *ref_host = to_host(ctx, ref[i]);
                    expect_like_cpu(ctx, o[0][i], ref_host, rtol, 0.0,
                                    fmt(w2, sizeof w2, "%s: %s against cuBLASLt", what, i ? "up" : "gate"));
                    an_tensor_release(ref_host), an_tensor_release(ref[i]);
                }
                ref[2] = poisoned(ctx, dtype, rows, n);
                test_ok(ctx, an_cuda_swiglu(ctx, dtype, an_tensor_data(o[0][0]), an_tensor_data(o[0][1]), rows * n,
                                            an_tensor_data(ref[2])),
                        "an_cuda_swiglu");
                expect_same_bits(ctx, o[0][2], ref[2], fmt(w2, sizeof w2, "%s: act against an_cuda_swiglu", what));
                for (int i = 0; i < 3; i++)
                    expect_same_bits(ctx, o[0][i], o[1][i], fmt(w2, sizeof w2, "%s: a repeat", what));
                an_tensor_release(ref[2]);

                /* the backward launcher at dy = R (the upstream gradient), over this gate and up */
                an_tensor *dg[4], *du[4], *dact = poisoned(ctx, dtype, rows, n);
                const void *bwd[] = {an_tensor_data(r.upstream), an_tensor_data(r.in[3]), an_tensor_data(o[0][0]),
                                     an_tensor_data(o[0][1]), an_tensor_data(dact), an_tensor_data(dact)};
                bool bwd_ok = an_cuda_gemm_swiglu_rule(ctx, dtype, rows, out, n, bwd, 6);
                for (int k = 0; k < 4; k++) dg[k] = poisoned(ctx, dtype, rows, n), du[k] = poisoned(ctx, dtype, rows, n);
                an_tensor *act[2] = {poisoned(ctx, dtype, rows, n), poisoned(ctx, dtype, rows, n)};
                for (int k = 0; k < 3 && bwd_ok; k++) { /* the second launch also forms act; the third repeats it */
                    test_ok(ctx, an_cuda_gemm_swiglu_backward(ctx, dtype, bwd[0], rows, out, bwd[1], n, bwd[2], bwd[3],
                                                              an_tensor_data(dg[k]), an_tensor_data(du[k]),
                                                              k ? an_tensor_data(act[k - 1]) : NULL),
                            "an_cuda_gemm_swiglu_backward");
                }
                if (bwd_ok) {
                    an_gemm_shape ds = {1, rows, n, out, false, false, false, false}; /* d act = dy @ W_down */
                    test_ok(ctx, an_cuda_gemm(ctx, &ds, dtype, bwd[0], bwd[1], an_tensor_data(dact)), "an_cuda_gemm d act");
                    test_ok(ctx, an_cuda_swiglu_backward(ctx, dtype, bwd[2], bwd[3], rows * n, an_tensor_data(dact),
                                                         an_tensor_data(dg[3]), an_tensor_data(du[3])),
                            "an_cuda_swiglu_backward");
                    for (int i = 0; i < 2; i++) {
                        an_tensor *want = to_host(ctx, i ? du[3] : dg[3]);
                        expect_like_cpu(ctx, i ? du[0] : dg[0], want, 2 * rtol, 0.0,
                                        fmt(w2, sizeof w2, "%s: %s against cuBLASLt + swiglu_backward", what, i ? "dup" : "dgate"));
                        an_tensor_release(want);
                    }
                    expect_same_bits(ctx, dg[0], dg[1], fmt(w2, sizeof w2, "%s: dgate with act formed too", what));
                    expect_same_bits(ctx, du[0], du[1], fmt(w2, sizeof w2, "%s: dup with act formed too", what));
                    expect_same_bits(ctx, act[0], o[0][2], fmt(w2, sizeof w2, "%s: the backward's act against the forward's", what));
                    expect_same_bits(ctx, dg[1], dg[2], fmt(w2, sizeof w2, "%s: dgate on a repeat", what));
                    expect_same_bits(ctx, du[1], du[2], fmt(w2, sizeof w2, "%s: dup on a repeat", what));
                    expect_same_bits(ctx, act[0], act[1], fmt(w2, sizeof w2, "%s: act on a repeat", what));
                }
                an_tensor_release(act[0]), an_tensor_release(act[1]);
                for (int k = 0; k < 4; k++) an_tensor_release(dg[k]), an_tensor_release(du[k]);
                an_tensor_release(dact);
                for (int k = 0; k < 2; k++)
                    for (int i = 0; i < 3; i++) an_tensor_release(o[k][i]);
            }
            if (r.ok && dtype != AN_F32 && in % 8) { /* the launchers refuse what the op sends to the separate ops */
                an_status st = an_cuda_gemm_swiglu(ctx, dtype, fwd[0], rows, in, fwd[1], fwd[2], n, an_tensor_data(r.out),
                                                   an_tensor_data(r.out), an_tensor_data(r.out));
                ck_assert_int_eq(st, AN_ERR_INPUT);
                ck_assert_msg(strstr(an_error_message(ctx), "gemm_swiglu") != NULL, "%s", an_error_message(ctx));
                an_error_clear(ctx);
                st = an_cuda_gemm_swiglu_backward(ctx, dtype, an_tensor_data(r.upstream), rows, out, fwd[1], in,
                                                  fwd[0], fwd[0], an_tensor_data(r.out), an_tensor_data(r.out), NULL);
                ck_assert_int_eq(st, AN_ERR_INPUT);
                ck_assert_msg(strstr(an_error_message(ctx), "gemm_swiglu_backward") != NULL, "%s", an_error_message(ctx));
                an_error_clear(ctx);
            }
            gpu_run_release(&r);
            for (int i = 0; i < 5; i++) an_tensor_release(t[i]);
        }
    expect_no_failures();
    test_ctx_free(ctx);
}
END_TEST

/* The frozen MLP: gate's and up's weights stacked in one allocation (as an_model_create groups
 * them) and no weight trained, so the whole MLP is one node (an_op_swiglu_mlp) where the fused
 * kernels run. stacked_fn copies the op's gate and up weights into the two halves of one (2
 * inter, in) tensor and runs the op on those views; frozen_nodes counts the outputs whose node was
 * the frozen MLP's. */
typedef struct {
    int frozen_nodes;
} stacked_seen;

static an_tensor *stacked_fn(an_ctx *ctx, an_tensor *const *in, const void *user) {
    stacked_seen *seen = (stacked_seen *)user;
    int64_t n = in[1]->shape[0], k = in[1]->shape[1];
    an_tensor *both = an_tensor_new(ctx, in[1]->dtype, in[1]->device, 2, (int64_t[]){2 * n, k});
    ck_assert_msg(both != NULL, "stacked weights: %s", an_error_message(ctx));
    an_tensor *wg = an_tensor_rows(ctx, both, 0, n), *wu = an_tensor_rows(ctx, both, n, n);
    test_ok(ctx, an_tensor_copy_into(ctx, wg, in[1]), "gate weight into the stack");
    test_ok(ctx, an_tensor_copy_into(ctx, wu, in[2]), "up weight into the stack");
    an_tensor *out = an_swiglu_mlp(ctx, in[0], wg, wu, in[3], in[4]);
    if (out && out->device == AN_CUDA && out->grad_fn && out->grad_fn->op == &an_op_swiglu_mlp) seen->frozen_nodes++;
    an_tensor_release(wg), an_tensor_release(wu), an_tensor_release(both);
    return out;
}

/* The frozen MLP against the CPU (forward, x's and the residual's gradients) at every shape of
 * mlp_cases; where the fused kernels take the shape the node must be the frozen MLP's, and the
 * stacked launcher's halves must hold an_cuda_gemm_swiglu_backward's dgate and dup bit for bit.
 * Turned off (an_cuda_set_swiglu_stacked), the op records the two nodes again and the launcher
 * refuses with an input error naming it. */
START_TEST(test_cuda_swiglu_mlp_frozen_stacked) {
    an_ctx *ctx = gpu_ctx(13, "cuda swiglu_mlp frozen");
    if (!ctx) return;
    char what[160], w2[220];
    for (int d = 0; d < N_DTYPES; d++)
        for (size_t c = 0; c < sizeof mlp_cases / sizeof *mlp_cases; c++) {
            an_dtype dtype = float_dtypes[d];
            int64_t rows = mlp_cases[c][0], in = mlp_cases[c][1], n = mlp_cases[c][2], out = mlp_cases[c][3];
            an_tensor *t[5];
            mlp_inputs(ctx, dtype, mlp_cases[c], false, t, "frozen swiglu_mlp", what, sizeof what);
            double rtol = rtol_of(dtype);
            stacked_seen seen = {0};
            gpu_run r = run_both(ctx, stacked_fn, &seen, t, 5, 2 * rtol, 2 * rtol, 0.0, what);
            const void *fwd[] = {an_tensor_data(r.in[0]), an_tensor_data(r.in[1]), an_tensor_data(r.in[2])};
            bool fused = r.ok && an_cuda_gemm_swiglu_rule(ctx, dtype, rows, in, n, fwd, 3);
            if (fused && seen.frozen_nodes != 1)
                soft_fail("%s: the fused kernels ran but the node is not the frozen MLP's", what);
            if (!fused && seen.frozen_nodes != 0) soft_fail("%s: a frozen MLP node without the fused kernels", what);
            if (fused) { /* the stacked launcher's halves against the two-output launcher */
                an_tensor *g = poisoned(ctx, dtype, rows, n), *u = poisoned(ctx, dtype, rows, n);
                an_tensor *dg[2] = {poisoned(ctx, dtype, rows, n), poisoned(ctx, dtype, rows, n)};
                an_tensor *du[2] = {poisoned(ctx, dtype, rows, n), poisoned(ctx, dtype, rows, n)};
                an_tensor *dgu = poisoned(ctx, dtype, rows, 2 * n);
                test_ok(ctx, an_cuda_gemm_swiglu(ctx, dtype, fwd[0], rows, in, fwd[1], fwd[2], n, an_tensor_data(g),
                                                 an_tensor_data(u), an_tensor_data(dg[1])),
                        "an_cuda_gemm_swiglu");
                const void *dy = an_tensor_data(r.upstream), *w = an_tensor_data(r.in[3]);
                test_ok(ctx, an_cuda_gemm_swiglu_backward(ctx, dtype, dy, rows, out, w, n, an_tensor_data(g),
                                                          an_tensor_data(u), an_tensor_data(dg[0]), an_tensor_data(du[0]), NULL),
                        "an_cuda_gemm_swiglu_backward");
                test_ok(ctx, an_cuda_gemm_swiglu_backward_stacked(ctx, dtype, dy, rows, out, w, n, an_tensor_data(g),
                                                                  an_tensor_data(u), an_tensor_data(dgu)),
                        "an_cuda_gemm_swiglu_backward_stacked");
                size_t es = an_dtype_size(dtype), row = (size_t)n * es;
                test_ok(ctx, an_cuda_memcpy_2d(ctx, an_tensor_data(dg[1]), row, an_tensor_data(dgu), 2 * row, row, (size_t)rows),
                        "dgate's half");
                test_ok(ctx, an_cuda_memcpy_2d(ctx, an_tensor_data(du[1]), row, (char *)an_tensor_data(dgu) + row, 2 * row, row,
                                               (size_t)rows),
                        "dup's half");
                expect_same_bits(ctx, dg[1], dg[0], fmt(w2, sizeof w2, "%s: the stacked dgate", what));
                expect_same_bits(ctx, du[1], du[0], fmt(w2, sizeof w2, "%s: the stacked dup", what));
                /* turned off: the launcher refuses, the op records its two nodes */
                test_ok(ctx, an_cuda_set_swiglu_stacked(ctx, false), "an_cuda_set_swiglu_stacked");
                an_status st = an_cuda_gemm_swiglu_backward_stacked(ctx, dtype, dy, rows, out, w, n, an_tensor_data(g),
                                                                    an_tensor_data(u), an_tensor_data(dgu));
                ck_assert_int_eq(st, AN_ERR_INPUT);
                ck_assert_msg(strstr(an_error_message(ctx), "gemm_swiglu_backward_stacked") != NULL, "%s",
                              an_error_message(ctx));
                an_error_clear(ctx);
                stacked_seen off = {0};
                an_tensor *o = stacked_fn(ctx, r.in, &off);
                ck_assert_msg(o && o->grad_fn && o->grad_fn->op == &an_op_swiglu_linear && off.frozen_nodes == 0,
                              "%s: turned off, the op must record the swiglu_linear node", what);
                an_tensor_release(o);
                an_tape_clear(ctx);
                test_ok(ctx, an_cuda_set_swiglu_stacked(ctx, true), "an_cuda_set_swiglu_stacked");
                for (int k = 0; k < 2; k++) an_tensor_release(dg[k]), an_tensor_release(du[k]);
                an_tensor_release(g), an_tensor_release(u), an_tensor_release(dgu);
            }
            gpu_run_release(&r);
            for (int i = 0; i < 5; i++) an_tensor_release(t[i]);
        }
    expect_no_failures();
    test_ctx_free(ctx);
}
END_TEST

/* ---- qkv_linear: q, k and v as one node, x's gradient as one sum ---- */

/* rows, in, q and kv widths, adapter rank; adapters on q and v (lora 1) or all three (2) or none
 * (0: a full fine-tune, weights and biases trained); biases; dropout masks on the adapters. */
typedef struct {
    int64_t rows, in, q, kv, r;
    int lora;
    bool bias, mask;
} qkv_case;

/* An H100 sums x's gradient in one an_cuda_gemm_segments launch where in, the widths and the rank
 * are multiples of 8 in bf16 and f16: one row; ragged tiles (the bench's dX q,k,v + LoRA widths
 * at other sizes); the 1.5B model's widths with biases; six operand pairs; dropout terms added
 * after the sum; a full fine-tune. {5, 12, 20, 6, 4}, rank 4 and f32 take the separate GEMMs.
 * Where the widths are multiples of 128 too (the 1.5B model's; adapters on all three with dropout
 * masks) the forward is one an_cuda_gemm_projections launch. */
static const qkv_case qkv_cases[] = {
    {1, 8, 8, 8, 8, 1, false, false},       {300, 1096, 392, 72, 16, 1, false, false},
    {257, 1536, 1536, 256, 16, 1, true, false}, {130, 64, 64, 16, 8, 2, true, false},
    {129, 64, 64, 16, 8, 2, false, true},   {96, 256, 128, 64, 0, 0, true, false},
    {5, 12, 20, 6, 4, 1, true, true},       {200, 64, 64, 32, 4, 1, false, false},
    {300, 256, 256, 128, 16, 2, true, true},
};

/* the node's operands: x, W_q, W_k, W_v, bias_q, bias_k, bias_v, then A and B of q, k and v */
enum { QKV_X = 0, QKV_W = 1, QKV_BIAS = 4, QKV_A = 7, QKV_N = 13 };

static bool qkv_has_lora(const qkv_case *c, int p) { return c->lora == 2 || (c->lora == 1 && p != 1); }
static double qkv_scale(int p) { return 2.0 - 0.25 * p; }

/* The node (fused) or the separate ops the model ran before (an_dropout's multiply, an_lora_linear,
 * an_linear; q, k, v), forward and backward of sum over p of out_p * up[p] on the GPU inputs: the
 * outputs and the inputs' gradients (NULL where none) into out and grads (the caller releases). */
static void qkv_side(an_ctx *ctx, bool fused, const qkv_case *c, an_tensor *const *in, an_tensor *const *mask,
                     an_tensor *const *up, an_tensor *out[3], an_tensor *grads[QKV_N]) {
    an_tensor *o[3] = {0};
    if (fused) {
        an_qkv_proj proj[3];
        for (int p = 0; p < 3; p++) {
            bool l = qkv_has_lora(c, p);
            proj[p] = (an_qkv_proj){in[QKV_W + p], c->bias ? in[QKV_BIAS + p] : NULL, l ? in[QKV_A + 2 * p] : NULL,
                                    l ? in[QKV_A + 2 * p + 1] : NULL, l ? mask[p] : NULL, qkv_scale(p)};
        }
        test_ok(ctx, an_qkv_linear(ctx, in[QKV_X], proj, o), "qkv_linear");
    } else {
        for (int p = 0; p < 3; p++) {
            an_tensor *x = in[QKV_X], *b = c->bias ? in[QKV_BIAS + p] : NULL;
            if (qkv_has_lora(c, p)) {
                an_tensor *xl = mask[p] ? an_mul(ctx, x, mask[p]) : an_tensor_retain(x);
                o[p] = an_lora_linear(ctx, x, xl, in[QKV_W + p], b, in[QKV_A + 2 * p], in[QKV_A + 2 * p + 1],
                                      qkv_scale(p));
                an_tensor_release(xl);
            } else {
                o[p] = an_linear(ctx, x, in[QKV_W + p], b);
            }
            ck_assert_msg(o[p] != NULL, "separate ops: %s", an_error_message(ctx));
        }
    }
    an_tensor *loss = NULL;
    for (int p = 0; p < 3; p++) {
        an_tensor *m = an_mul(ctx, o[p], up[p]), *sum = an_sum(ctx, m);
        an_tensor *next = loss ? an_add(ctx, loss, sum) : an_tensor_retain(sum);
        an_tensor_release(m), an_tensor_release(sum), an_tensor_release(loss);
        loss = next;
        out[p] = o[p];
    }
    test_ok(ctx, an_backward(ctx, loss), fused ? "qkv_linear backward" : "separate ops' backward");
    an_tensor_release(loss);
    for (int i = 0; i < QKV_N; i++) { /* a projection without an adapter has no A or B */
        grads[i] = in[i] ? in[i]->grad : NULL;
        if (in[i]) in[i]->grad = NULL;
    }
}

/* Both NULL, or the same bits. */
static void expect_same_or_none(an_ctx *ctx, const an_tensor *got, const an_tensor *want, const char *what) {
    if (!got || !want) {
        if (got != want) soft_fail("%s: one side has no gradient", what);
        return;
    }
    expect_same_bits(ctx, got, want, what);
}

/* an_qkv_linear_rope on the GPU against an_qkv_linear followed by an_rope_trusted on q's and k's
 * (B, T, H, D) views, the model's graph before: q, k, v and every gradient the same bits (on an
 * H100 the rotation rides in an_cuda_gemm_projections' epilogue at head dims 128 and 64 and the
 * backward turns dq and dk back with an_rope's kernel; elsewhere, in f32 and for interleaved pairs,
 * both sides run an_rope's kernels), over packed positions that restart, one of them large. */
START_TEST(test_cuda_qkv_linear_rope_gives_the_separate_rope_bits) {
    an_ctx *ctx = gpu_ctx(15, "cuda qkv_linear_rope");
    if (!ctx) return;
    const struct {
        an_dtype dtype;
        int64_t b, t, in, q, kv, r, d;
        an_rope_style style;
    } cases[] = {{AN_BF16, 2, 150, 256, 256, 128, 16, 128, AN_ROPE_NEOX}, {AN_F16, 3, 70, 64, 256, 128, 8, 64, AN_ROPE_NEOX},
                 {AN_BF16, 2, 40, 64, 128, 128, 8, 64, AN_ROPE_INTERLEAVED}, {AN_F32, 2, 33, 64, 128, 64, 8, 32, AN_ROPE_NEOX}};
    char what[160];
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        const an_dtype dtype = cases[ci].dtype;
        const int64_t B = cases[ci].b, T = cases[ci].t, d = cases[ci].d, width[3] = {cases[ci].q, cases[ci].kv, cases[ci].kv};
        an_rope_config cfg = {cases[ci].style, 10000.0, 0, 0, 0, 0};
        fmt(what, sizeof what, "qkv_linear_rope %s case %zu", an_dtype_name(dtype), ci);
        an_tensor *in[QKV_N] = {0}, *up[3], *ph = an_tensor_new(ctx, AN_I64, AN_CPU, 2, (int64_t[]){B, T});
        for (int64_t i = 0; i < B * T; i++) ((int64_t *)an_tensor_data(ph))[i] = i == 3 ? 40000 : (i % T) % 61;
        an_tensor *pos = to_gpu(ctx, ph), *h = test_uniform(ctx, dtype, 3, (int64_t[]){B, T, cases[ci].in}, -1, 1, false);
        in[QKV_X] = to_gpu(ctx, h);
        an_tensor_release(h), an_tensor_release(ph);
        an_tensor_set_requires_grad(in[QKV_X], true);
        an_qkv_proj proj[3];
        for (int p = 0; p < 3; p++) {
            an_tensor *hw = test_uniform(ctx, dtype, 2, (int64_t[]){width[p], cases[ci].in}, -0.5, 0.5, false);
            an_tensor *hb = test_uniform(ctx, dtype, 1, (int64_t[]){width[p]}, -1, 1, false);
            an_tensor *hu = test_uniform(ctx, dtype, 3, (int64_t[]){B, T, width[p]}, -1, 1, false);
            in[QKV_W + p] = to_gpu(ctx, hw), in[QKV_BIAS + p] = to_gpu(ctx, hb), up[p] = to_gpu(ctx, hu);
            an_tensor_release(hw), an_tensor_release(hb), an_tensor_release(hu);
            proj[p] = (an_qkv_proj){in[QKV_W + p], in[QKV_BIAS + p], NULL, NULL, NULL, qkv_scale(p)};
            if (p == 1) continue; /* adapters on q and v, LoRA q,v's */
            an_tensor *ha = test_uniform(ctx, dtype, 2, (int64_t[]){cases[ci].r, cases[ci].in}, -0.5, 0.5, false);
            an_tensor *hB = test_uniform(ctx, dtype, 2, (int64_t[]){width[p], cases[ci].r}, -0.5, 0.5, false);
            in[QKV_A + 2 * p] = to_gpu(ctx, ha), in[QKV_A + 2 * p + 1] = to_gpu(ctx, hB);
            an_tensor_set_requires_grad(in[QKV_A + 2 * p], true);
            an_tensor_set_requires_grad(in[QKV_A + 2 * p + 1], true);
            an_tensor_release(ha), an_tensor_release(hB);
            proj[p].lora_a = in[QKV_A + 2 * p], proj[p].lora_b = in[QKV_A + 2 * p + 1];
        }
        an_tensor *out[2][3], *grads[2][QKV_N];
        for (int side = 0; side < 2; side++) {
            an_tensor *o[3];
            if (side == 0) {
                an_tensor *table = NULL; /* every other case the model's one table a forward */
                if (ci % 2 == 0) test_ok(ctx, an_rope_table(ctx, pos, &cfg, d, dtype, &table), what);
                test_ok(ctx, an_qkv_linear_rope(ctx, in[QKV_X], proj, pos, &cfg, d, table, o), what);
                an_tensor_release(table);
            } else {
                test_ok(ctx, an_qkv_linear(ctx, in[QKV_X], proj, o), what);
                for (int p = 0; p < 2; p++) {
                    an_tensor *heads = an_reshape(ctx, o[p], 4, (int64_t[]){B, T, width[p] / d, d});
                    an_tensor *turned = an_rope_trusted(ctx, heads, pos, &cfg);
                    an_tensor_release(o[p]), an_tensor_release(heads);
                    o[p] = an_reshape(ctx, turned, 3, (int64_t[]){B, T, width[p]});
                    an_tensor_release(turned);
                    ck_assert_msg(o[p] != NULL, "%s: %s", what, an_error_message(ctx));
                }
            }
            an_tensor *loss = NULL;
            for (int p = 0; p < 3; p++) {
                an_tensor *m = an_mul(ctx, o[p], up[p]), *sum = an_sum(ctx, m);
                an_tensor *next = loss ? an_add(ctx, loss, sum) : an_tensor_retain(sum);
                an_tensor_release(m), an_tensor_release(sum), an_tensor_release(loss);
                loss = next, out[side][p] = o[p];
            }
            test_ok(ctx, an_backward(ctx, loss), what);
            an_tensor_release(loss);
            for (int i = 0; i < QKV_N; i++) {
                grads[side][i] = in[i] ? in[i]->grad : NULL;
                if (in[i]) in[i]->grad = NULL;
            }
        }
        static const char *const names[3] = {"q", "k", "v"};
        char w2[200];
        for (int p = 0; p < 3; p++) {
            fmt(w2, sizeof w2, "%s %s", what, names[p]);
            expect_same_bits(ctx, out[0][p], out[1][p], w2);
        }
        for (int i = 0; i < QKV_N; i++) {
            fmt(w2, sizeof w2, "%s gradient of input %d", what, i);
            expect_same_or_none(ctx, grads[0][i], grads[1][i], w2);
        }
        ck_assert_msg(grads[0][QKV_X] && grads[0][QKV_A] && grads[0][QKV_A + 1], "%s: gradients missing", what);
        for (int sd = 0; sd < 2; sd++) {
            for (int p = 0; p < 3; p++) an_tensor_release(out[sd][p]);
            for (int i = 0; i < QKV_N; i++) an_tensor_release(grads[sd][i]);
        }
        for (int i = 0; i < QKV_N; i++) an_tensor_release(in[i]);
        for (int p = 0; p < 3; p++) an_tensor_release(up[p]);
        an_tensor_release(pos);
        an_tape_clear(ctx);
    }
    test_ctx_free(ctx);
}
END_TEST

/* qkv_linear_rope -> reshape -> attention on the GPU with the attention backward turning q's and
 * k's gradients back in its stores (an_cuda_set_attention_turns_rope on, where attention_wgmma.cu
 * runs: bf16, head_dim 128, T a multiple of 64) against the rope pass doing it (off): every
 * gradient the same bits. Turning is claimed only where nothing but the attention reads q and k
 * (an_qkv_rope_turn_table: the second graph also reads q in its loss, and its gradients must
 * match the switch-off path as well). */
START_TEST(test_cuda_attention_turns_the_rotation_back) {
    an_ctx *ctx = gpu_ctx(16, "cuda attention turning rope");
    if (!ctx) return;
    const void *probe[] = {NULL};
    bool hopper = an_cuda_gemm_swiglu_rule(ctx, AN_BF16, 64, 64, 64, probe, 0);
    const int64_t B = 2, T = 128, IN = 256, HQ = 4, HKV = 2, D = 128, R = 8, width[3] = {HQ * D, HKV * D, HKV * D};
    an_rope_config cfg = {AN_ROPE_NEOX, 10000.0, 0, 0, 0, 0};
    char what[160];
    an_tensor *in[QKV_N] = {0}, *ph = an_tensor_new(ctx, AN_I64, AN_CPU, 2, (int64_t[]){B, T});
    for (int64_t i = 0; i < B * T; i++) ((int64_t *)an_tensor_data(ph))[i] = i == 5 ? 40000 : (i % T) % 97;
    an_tensor *pos = to_gpu(ctx, ph), *h = test_uniform(ctx, AN_BF16, 3, (int64_t[]){B, T, IN}, -1, 1, false);
    in[QKV_X] = to_gpu(ctx, h);
    an_tensor_release(h), an_tensor_release(ph);
    an_tensor_set_requires_grad(in[QKV_X], true);
    an_qkv_proj proj[3];
    for (int p = 0; p < 3; p++) {
        an_tensor *hw = test_uniform(ctx, AN_BF16, 2, (int64_t[]){width[p], IN}, -0.1, 0.1, false);
        an_tensor *hb = test_uniform(ctx, AN_BF16, 1, (int64_t[]){width[p]}, -1, 1, false);
        in[QKV_W + p] = to_gpu(ctx, hw), in[QKV_BIAS + p] = to_gpu(ctx, hb);
        an_tensor_release(hw), an_tensor_release(hb);
        an_tensor_set_requires_grad(in[QKV_W + p], true);
        an_tensor_set_requires_grad(in[QKV_BIAS + p], true);
        proj[p] = (an_qkv_proj){in[QKV_W + p], in[QKV_BIAS + p], NULL, NULL, NULL, qkv_scale(p)};
        if (p == 1) continue; /* adapters on q and v */
        an_tensor *ha = test_uniform(ctx, AN_BF16, 2, (int64_t[]){R, IN}, -0.5, 0.5, false);
        an_tensor *hB = test_uniform(ctx, AN_BF16, 2, (int64_t[]){width[p], R}, -0.5, 0.5, false);
        in[QKV_A + 2 * p] = to_gpu(ctx, ha), in[QKV_A + 2 * p + 1] = to_gpu(ctx, hB);
        an_tensor_set_requires_grad(in[QKV_A + 2 * p], true);
        an_tensor_set_requires_grad(in[QKV_A + 2 * p + 1], true);
        an_tensor_release(ha), an_tensor_release(hB);
        proj[p].lora_a = in[QKV_A + 2 * p], proj[p].lora_b = in[QKV_A + 2 * p + 1];
    }
    an_tensor *hu = test_uniform(ctx, AN_BF16, 4, (int64_t[]){B, T, HQ, D}, -1, 1, false), *up = to_gpu(ctx, hu);
    an_tensor *hq = test_uniform(ctx, AN_BF16, 3, (int64_t[]){B, T, HQ * D}, -1, 1, false), *up_q = to_gpu(ctx, hq);
    an_tensor_release(hu), an_tensor_release(hq);
    an_tensor *table = NULL;
    test_ok(ctx, an_rope_table(ctx, pos, &cfg, D, AN_BF16, &table), "rope table");
    for (int graph = 0; graph < 2; graph++) { /* 0: only the attention reads q and k; 1: the loss reads q too */
        an_tensor *grads[2][QKV_N];
        for (int side = 0; side < 2; side++) {
            fmt(what, sizeof what, "attention turning rope, graph %d, switch %s", graph, side == 0 ? "on" : "off");
            test_ok(ctx, an_cuda_set_attention_turns_rope(ctx, side == 0), what);
            an_tensor *o[3];
            test_ok(ctx, an_qkv_linear_rope(ctx, in[QKV_X], proj, pos, &cfg, D, table, o), what);
            an_tensor *q = an_reshape(ctx, o[0], 4, (int64_t[]){B, T, HQ, D});
            an_tensor *k = an_reshape(ctx, o[1], 4, (int64_t[]){B, T, HKV, D});
            an_tensor *v = an_reshape(ctx, o[2], 4, (int64_t[]){B, T, HKV, D});
            an_tensor *attn = an_attention(ctx, q, k, v, NULL, 1.0 / sqrt((double)D));
            ck_assert_msg(attn != NULL, "%s: %s", what, an_error_message(ctx));
            an_node *owner = NULL;
            bool claimed = an_qkv_rope_turn_table(ctx, attn->grad_fn, &owner) != NULL;
            an_tensor *m = an_mul(ctx, attn, up), *loss = an_sum(ctx, m);
            an_tensor_release(m);
            if (graph == 1) {
                an_tensor *mq = an_mul(ctx, o[0], up_q), *sq = an_sum(ctx, mq), *both = an_add(ctx, loss, sq);
                an_tensor_release(mq), an_tensor_release(sq), an_tensor_release(loss);
                loss = both;
                claimed = an_qkv_rope_turn_table(ctx, attn->grad_fn, &owner) != NULL;
            }
            /* the guard: claimed for the attention-only graph wherever the table was kept, never when the loss reads q */
            if (claimed != (graph == 0)) soft_fail("%s: an_qkv_rope_turn_table %s", what, claimed ? "claimed" : "refused");
            test_ok(ctx, an_backward(ctx, loss), what);
            an_tensor_release(loss), an_tensor_release(attn);
            an_tensor_release(q), an_tensor_release(k), an_tensor_release(v);
            for (int p = 0; p < 3; p++) an_tensor_release(o[p]);
            for (int i = 0; i < QKV_N; i++) {
                grads[side][i] = in[i] ? in[i]->grad : NULL;
                if (in[i]) in[i]->grad = NULL;
            }
        }
        for (int i = 0; i < QKV_N; i++) {
            char w2[200];
            fmt(w2, sizeof w2, "attention turning rope, graph %d, gradient of input %d", graph, i);
            expect_same_or_none(ctx, grads[0][i], grads[1][i], w2);
            an_tensor_release(grads[0][i]), an_tensor_release(grads[1][i]);
        }
    }
    if (!hopper) printf("SKIP attention turning rope in its stores: the device does not run attention_wgmma.cu (both sides ran the rope pass)\n");
    test_ok(ctx, an_cuda_set_attention_turns_rope(ctx, true), "switch on");
    an_tensor_release(table), an_tensor_release(pos), an_tensor_release(up), an_tensor_release(up_q);
    for (int i = 0; i < QKV_N; i++) an_tensor_release(in[i]);
    an_tape_clear(ctx);
    expect_no_failures();
    test_ctx_free(ctx);
}
END_TEST

/* The node against the separate ops on the same GPU inputs: every gradient but x's the same bits
 * (the same kernels: an_cuda_lora_grads' bits do not depend on which adapters share its launch),
 * and where an_cuda_lora_grads forms the adapters' dA and dB (bf16, f16, ranks and widths multiples
 * of 8) they are within the bound of 2 rtol of cuBLASLt's thin GEMMs (turned off); q, k, v the same bits where the separate GEMMs form them, else (one
 * an_cuda_gemm_projections launch: an adapter's product added to the rounded base, where the
 * separate ops add its rounded product before one rounding) within the bound of 2 rtol; x's the
 * same bits where the separate GEMMs form it (f32, shapes off the tensor maps, another device),
 * else within the bound of 2 rtol (bf16: 4% of the element plus 2% of the rms; the separate GEMMs
 * round after each product) and bit for bit one an_cuda_gemm_segments launch over (dq, W_q),
 * (d_down_q, A_q), (dk, W_k), ... in that order where no dropout mask joins in; a repeat gives the
 * same bits everywhere. */
START_TEST(test_cuda_qkv_linear_matches_the_separate_ops_and_repeats_its_bits) {
    an_ctx *ctx = gpu_ctx(14, "cuda qkv_linear");
    if (!ctx) return;
    static const char *const names[QKV_N] = {"dx",  "dW_q", "dW_k", "dW_v", "dbias_q", "dbias_k", "dbias_v",
                                             "dA_q", "dB_q", "dA_k", "dB_k", "dA_v",    "dB_v"};
    const void *probe[] = {NULL};
    bool hopper = an_cuda_gemm_swiglu_rule(ctx, AN_BF16, 64, 64, 64, probe, 0);
    char what[200], w2[260];
    for (int d = 0; d < N_DTYPES; d++)
        for (size_t ci = 0; ci < sizeof qkv_cases / sizeof *qkv_cases; ci++) {
            const qkv_case *c = &qkv_cases[ci];
            an_dtype dtype = float_dtypes[d];
            int64_t width[3] = {c->q, c->kv, c->kv};
            bool train_w = c->lora == 0;
            an_tensor *in[QKV_N] = {0}, *mask[3] = {0}, *up[3];
            an_tensor *h = test_uniform(ctx, dtype, 2, (int64_t[]){c->rows, c->in}, -1, 1, false);
            in[QKV_X] = to_gpu(ctx, h);
            an_tensor_release(h);
            an_tensor_set_requires_grad(in[QKV_X], true);
            for (int p = 0; p < 3; p++) {
                an_tensor *hw = test_uniform(ctx, dtype, 2, (int64_t[]){width[p], c->in}, -0.5, 0.5, false);
                an_tensor *hb = test_uniform(ctx, dtype, 1, (int64_t[]){width[p]}, -1, 1, false);
                an_tensor *hu = test_uniform(ctx, dtype, 2, (int64_t[]){c->rows, width[p]}, -1, 1, false);
                in[QKV_W + p] = to_gpu(ctx, hw), in[QKV_BIAS + p] = to_gpu(ctx, hb), up[p] = to_gpu(ctx, hu);
                an_tensor_set_requires_grad(in[QKV_W + p], train_w);
                an_tensor_set_requires_grad(in[QKV_BIAS + p], train_w);
                an_tensor_release(hw), an_tensor_release(hb), an_tensor_release(hu);
                if (!qkv_has_lora(c, p)) continue;
                an_tensor *ha = test_uniform(ctx, dtype, 2, (int64_t[]){c->r, c->in}, -0.5, 0.5, false);
                an_tensor *hB = test_uniform(ctx, dtype, 2, (int64_t[]){width[p], c->r}, -0.5, 0.5, false);
                in[QKV_A + 2 * p] = to_gpu(ctx, ha), in[QKV_A + 2 * p + 1] = to_gpu(ctx, hB);
                an_tensor_set_requires_grad(in[QKV_A + 2 * p], true);
                an_tensor_set_requires_grad(in[QKV_A + 2 * p + 1], true);
                an_tensor_release(ha), an_tensor_release(hB);
                if (c->mask) {
                    mask[p] = an_dropout_mask(ctx, in[QKV_X], 0.25);
                    ck_assert_msg(mask[p] != NULL, "mask: %s", an_error_message(ctx));
                }
            }
            fmt(what, sizeof what, "qkv_linear %s rows %lld in %lld q %lld kv %lld r %lld lora %d bias %d mask %d",
                an_dtype_name(dtype), (long long)c->rows, (long long)c->in, (long long)c->q, (long long)c->kv,
                (long long)c->r, c->lora, c->bias, c->mask);
            bool fits = dtype != AN_F32 && c->in % 8 == 0 && c->q % 8 == 0 && c->kv % 8 == 0 && c->r % 8 == 0;
            if (fits && !hopper)
                printf("SKIP %s: one sum: the device does not run gemm_wgmma.cu (compute capability 9.0 only)\n", what);
            bool one_sum = fits && hopper, one_forward = one_sum && c->q % 128 == 0 && c->kv % 128 == 0;

            /* the node, the separate ops, the node again, the separate ops on cuBLASLt's thin GEMMs */
            an_tensor *out[4][3] = {{0}}, *grads[4][QKV_N] = {{0}};
            qkv_side(ctx, true, c, in, mask, up, out[0], grads[0]);
            qkv_side(ctx, false, c, in, mask, up, out[1], grads[1]);
            qkv_side(ctx, true, c, in, mask, up, out[2], grads[2]);
            if (fits && c->lora) {
                test_ok(ctx, an_cuda_set_lora_grads(ctx, false), "lora_grads off");
                qkv_side(ctx, false, c, in, mask, up, out[3], grads[3]);
                test_ok(ctx, an_cuda_set_lora_grads(ctx, true), "lora_grads on");
                for (int i = QKV_A; i < QKV_N; i++) {
                    if (!grads[3][i]) continue;
                    an_tensor *want = to_host(ctx, grads[3][i]);
                    expect_like_cpu(ctx, grads[0][i], want, 2 * rtol_of(dtype), 0.0,
                                    fmt(w2, sizeof w2, "%s: %s against cuBLASLt's thin GEMMs", what, names[i]));
                    an_tensor_release(want);
                }
            }
            if (c->lora == 0 && c->bias) { /* the biases' gradients from cuBLASLt's dW epilogue instead */
                test_ok(ctx, an_cuda_set_column_sums(ctx, false), "column sums off");
                qkv_side(ctx, true, c, in, mask, up, out[3], grads[3]);
                test_ok(ctx, an_cuda_set_column_sums(ctx, true), "column sums on");
                for (int i = QKV_W; i < QKV_A; i++) { /* dW too: that GEMM may be another of cuBLASLt's kernels */
                    fmt(w2, sizeof w2, "%s: %s against cuBLASLt's bias-gradient epilogue", what, names[i]);
                    an_tensor *want = to_host(ctx, grads[3][i]);
                    expect_like_cpu(ctx, grads[0][i], want, 2 * rtol_of(dtype), 0.0, w2);
                    an_tensor_release(want);
                }
            }
            for (int p = 0; p < 3; p++) {
                fmt(w2, sizeof w2, "%s: %s against the separate ops", what, p ? p == 1 ? "k" : "v" : "q");
                if (one_forward) {
                    an_tensor *want = to_host(ctx, out[1][p]);
                    expect_like_cpu(ctx, out[0][p], want, 2 * rtol_of(dtype), 0.0, w2);
                    an_tensor_release(want);
                } else {
                    expect_same_bits(ctx, out[0][p], out[1][p], w2);
                }
                expect_same_bits(ctx, out[2][p], out[0][p], fmt(w2, sizeof w2, "%s: output %d on a repeat", what, p));
            }
            for (int i = 0; i < QKV_N; i++) {
                fmt(w2, sizeof w2, "%s: %s against the separate ops", what, names[i]);
                if (i == QKV_X && one_sum) {
                    an_tensor *want = to_host(ctx, grads[1][i]);
                    expect_like_cpu(ctx, grads[0][i], want, 2 * rtol_of(dtype), 0.0, w2);
                    an_tensor_release(want);
                } else {
                    expect_same_or_none(ctx, grads[0][i], grads[1][i], w2);
                }
                expect_same_or_none(ctx, grads[2][i], grads[0][i], fmt(w2, sizeof w2, "%s: %s on a repeat", what, names[i]));
            }
            if (one_sum && !c->mask) { /* x's gradient is the one launch over every pair */
                const void *a[6], *b[6];
                int64_t k[6];
                an_tensor *d_down[3] = {0};
                int n = 0;
                for (int p = 0; p < 3; p++) {
                    a[n] = an_tensor_data(up[p]), b[n] = an_tensor_data(in[QKV_W + p]), k[n++] = width[p];
                    if (!qkv_has_lora(c, p)) continue;
                    an_gemm_shape s = {1, c->rows, c->r, width[p], false, false, false, false}; /* scale dY B */
                    d_down[p] = test_poisoned_gpu(ctx, dtype, 2, (int64_t[]){c->rows, c->r});
                    test_ok(ctx, an_cuda_gemm_scaled(ctx, &s, dtype, qkv_scale(p), an_tensor_data(up[p]),
                                                     an_tensor_data(in[QKV_A + 2 * p + 1]), an_tensor_data(d_down[p])),
                            "d_down");
                    a[n] = an_tensor_data(d_down[p]), b[n] = an_tensor_data(in[QKV_A + 2 * p]), k[n++] = c->r;
                }
                an_tensor *gx = test_poisoned_gpu(ctx, dtype, 2, (int64_t[]){c->rows, c->in});
                test_ok(ctx, an_cuda_gemm_segments(ctx, dtype, c->rows, c->in, n, a, k, b, true, an_tensor_data(gx)),
                        "an_cuda_gemm_segments");
                expect_same_bits(ctx, grads[0][QKV_X], gx, fmt(w2, sizeof w2, "%s: dx against one gemm_segments", what));
                an_tensor_release(gx);
                for (int p = 0; p < 3; p++) an_tensor_release(d_down[p]);
            }
            for (int side = 0; side < 4; side++) {
                for (int p = 0; p < 3; p++) an_tensor_release(out[side][p]);
                for (int i = 0; i < QKV_N; i++) an_tensor_release(grads[side][i]);
            }
            for (int i = 0; i < QKV_N; i++) an_tensor_release(in[i]);
            for (int p = 0; p < 3; p++) an_tensor_release(mask[p]), an_tensor_release(up[p]);
        }
    expect_no_failures();
    test_ctx_free(ctx);
}
END_TEST

/* One test case per area, so CK_RUN_CASE=rope (say) runs one of them. */
int main(void) {
    Suite *s = suite_create("cuda_ops");
    test_add_case(s, "embedding", test_cuda_embedding_matches_cpu_and_its_gradient_is_bit_identical_across_runs);
    test_add_case(s, "embedding_errors", test_cuda_embedding_rejects_an_id_outside_the_table);
    test_add_case(s, "rmsnorm", test_cuda_rmsnorm_matches_cpu_and_its_gradient_is_bit_identical_across_runs);
    test_add_case(s, "add_rmsnorm", test_cuda_add_rmsnorm_matches_cpu_and_the_unfused_kernels);
    test_add_case(s, "rope", test_cuda_rope_matches_cpu_in_both_styles_with_llama3_scaling_and_packed_positions);
    test_add_case(s, "rope_errors", test_cuda_rope_rejects_negative_positions_and_too_long_heads);
    test_add_case(s, "softmax", test_cuda_softmax_matches_cpu);
    test_add_case(s, "cross_entropy", test_cuda_cross_entropy_matches_cpu_with_ignored_targets_and_normalizer);
    test_add_case(s, "cross_entropy_rows_grad",
                  test_cuda_cross_entropy_rows_grad_gives_the_two_kernel_bits_at_the_chunk_shape_and_ragged_rows);
    test_add_case(s, "loss_errors", test_cuda_losses_reject_targets_outside_the_vocabulary);
    test_add_case(s, "log_softmax_gather", test_cuda_log_softmax_gather_matches_cpu);
    test_add_case(s, "linear_cross_entropy", test_cuda_linear_cross_entropy_matches_cpu_with_uneven_chunks);
    test_add_case(s, "swiglu_mlp", test_cuda_swiglu_mlp_matches_cpu_and_the_separate_kernels);
    test_add_case(s, "swiglu_mlp_frozen", test_cuda_swiglu_mlp_frozen_stacked);
    test_add_case(s, "qkv_linear", test_cuda_qkv_linear_matches_the_separate_ops_and_repeats_its_bits);
    test_add_case(s, "qkv_linear_rope", test_cuda_qkv_linear_rope_gives_the_separate_rope_bits);
    test_add_case(s, "attention_turns_rope", test_cuda_attention_turns_the_rotation_back);
    return test_run(s);
}
