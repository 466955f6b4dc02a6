/* test_cuda_attention_cudnn.c — the cuDNN attention path (kernels/attention_cudnn.cu, taken by
 * an_cuda_attention / an_cuda_attention_backward for unsegmented bf16/f16 at head_dim 64 and 128)
 * against the float64 CPU reference (an_cpu_attention, an_cpu_attention_backward) on fresh random
 * inputs: B 1-2, T in {1, 17, 128, 300}, Hq/Hkv in {2/2, 12/2, 8/1}, D 64 and 128, bf16 and f16;
 * forward (out and lse), backward (all gradients, bit-identical when repeated, and one gradient
 * alone); the same for the backward graph with the explicit padding mask of cuDNN <= 9.15; then cuDNN against our tensor-core kernels (an_cuda_set_attention_cudnn off) at the
 * benchmark shape B 8, T 1024, Hq 12, Hkv 2, D 128 bf16, each path's backward also from the
 * other's forward, with both paths' forward and backward times printed (cudaEvent, mean of 20
 * calls after 3 warm-ups) and cuDNN's non-deterministic backward timed beside its deterministic one;
 * then every other engine config cuDNN's heuristics offer for the two passes, checked and timed.
 *
 * Every output is poisoned with 0xFF bytes (NaN) before each launch; NaN never passes. Bounds as
 * tests/test_cuda_attention.c gives the tensor-core path: out within rtol (bf16 1e-2, f16 2e-3) of
 * (|want| + rms) elementwise and rtol in norm, lse within 1e-5 (|want| + 1), gradients within 4x
 * rtol elementwise and 2x rtol in norm plus a small absolute floor. All cases run and every failure
 * is printed before the test fails, so one run shows the whole picture. The cuDNN version in use is
 * printed. Without a GPU every test prints SKIP and passes. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/cpu/cpu.h" /* an_cpu_attention, an_cpu_attention_backward */
#include "kernels/cuda.h"     /* the launchers, the cuDNN switch and the event timer */
#include "support/test_util.h"

static double rtol_of(an_dtype dtype) { return dtype == AN_BF16 ? 1e-2 : 2e-3; }

static an_ctx *gpu_ctx(uint64_t seed, const char *what) {
    an_ctx *ctx = test_gpu_ctx(seed, what);
    if (ctx) printf("cuDNN version %d\n", an_cuda_cudnn_version());
    fflush(stdout);
    return ctx;
}

/* 1 (after printing why) unless got (n) is within rtol (|want| + rms) + atol elementwise and
 * norm_rtol ||want|| + atol sqrt(n) as a whole; NaN fails. */
static int mismatch(const double *got, const double *want, int64_t n, double rtol, double norm_rtol, double atol,
                    const char *what) {
    double ms = 0, err2 = 0, ref2 = 0;
    for (int64_t i = 0; i < n; i++) ms += want[i] * want[i] / (double)n;
    for (int64_t i = 0; i < n; i++) {
        double bound = rtol * (fabs(want[i]) + sqrt(ms)) + atol;
        if (isnan(got[i]) || fabs(got[i] - want[i]) > bound) {
            printf("FAIL %s: element %lld of %lld is %.9g, expected %.9g (bound %.3g)\n", what, (long long)i,
                   (long long)n, got[i], want[i], bound);
            return 1;
        }
        err2 += (got[i] - want[i]) * (got[i] - want[i]);
        ref2 += want[i] * want[i];
    }
    if (sqrt(err2) > norm_rtol * sqrt(ref2) + atol * sqrt((double)n)) {
        printf("FAIL %s: relative error %.3g over %.3g\n", what, sqrt(err2 / (ref2 > 0 ? ref2 : 1)), norm_rtol);
        return 1;
    }
    return 0;
}

static int dev_mismatch(an_ctx *ctx, const an_tensor *dev, const double *want, double rtol, double norm_rtol,
                        double atol, const char *what) {
    double *got = test_download(ctx, dev);
    int bad = mismatch(got, want, an_tensor_numel(dev), rtol, norm_rtol, atol, what);
    free(got);
    return bad;
}

static int lse_mismatch(an_ctx *ctx, const an_tensor *dev, const double *want, const char *what) {
    double *got = test_download(ctx, dev);
    int bad = 0;
    for (int64_t i = 0; i < an_tensor_numel(dev) && !bad; i++)
        if (isnan(got[i]) || fabs(got[i] - want[i]) > 1e-5 * (fabs(want[i]) + 1)) {
            printf("FAIL %s: lse %lld is %.9g, expected %.9g\n", what, (long long)i, got[i], want[i]);
            bad = 1;
        }
    free(got);
    return bad;
}

static bool same_bits(an_ctx *ctx, const an_tensor *a, const an_tensor *b) {
    test_ok(ctx, an_cuda_synchronize(ctx), "synchronize");
    size_t bytes = an_tensor_nbytes(a);
    char *x = malloc(bytes), *y = malloc(bytes);
    test_ok(ctx, an_cuda_memcpy(ctx, x, AN_CPU, an_tensor_data(a), AN_CUDA, bytes), "download");
    test_ok(ctx, an_cuda_memcpy(ctx, y, AN_CPU, an_tensor_data(b), AN_CUDA, bytes), "download");
    bool same = memcmp(x, y, bytes) == 0;
    free(x), free(y);
    return same;
}

/* 1 (after printing ctx's message) when st is an error; the error is cleared so later cases run. */
static int failed(an_ctx *ctx, an_status st, const char *what) {
    if (st == AN_OK) return 0;
    printf("FAIL %s: %s\n", what, an_error_message(ctx));
    an_error_clear(ctx);
    return 1;
}

/* Forward and backward of one shape on the cuDNN path against the float64 reference; returns the
 * number of failures (each printed). */
static int check_shape(an_ctx *ctx, an_dtype dtype, int64_t B, int64_t T, int64_t Hq, int64_t Hkv, int64_t D) {
    char what[160], msg[224];
    snprintf(what, sizeof what, "cudnn %s B %lld T %lld Hq %lld Hkv %lld D %lld", an_dtype_name(dtype), (long long)B,
             (long long)T, (long long)Hq, (long long)Hkv, (long long)D);
    int64_t qs[4] = {B, T, Hq, D}, ks[4] = {B, T, Hkv, D}, ls[3] = {B, Hq, T};
    test_pair q = test_pair_uniform(ctx, dtype, 4, qs, -2, 2), k = test_pair_uniform(ctx, dtype, 4, ks, -2, 2);
    test_pair v = test_pair_uniform(ctx, dtype, 4, ks, -2, 2), go = test_pair_uniform(ctx, dtype, 4, qs, -1, 1);
    an_attention_shape sh = {B, T, Hq, Hkv, D, 1.0 / sqrt((double)D)};
    int64_t nq = B * T * Hq * D, nk = B * T * Hkv * D, nl = B * Hq * T;
    double *out = malloc((size_t)nq * sizeof *out), *lse = malloc((size_t)nl * sizeof *lse);
    double *dq = malloc((size_t)nq * sizeof *dq), *dk = malloc((size_t)nk * sizeof *dk);
    double *dv = malloc((size_t)nk * sizeof *dv);
    test_ok(ctx, an_cpu_attention(ctx, &sh, q.v, k.v, v.v, NULL, out, lse), "reference forward");
    test_ok(ctx, an_cpu_attention_backward(ctx, &sh, q.v, k.v, v.v, NULL, lse, go.v, dq, dk, dv), "reference backward");
    double rtol = rtol_of(dtype), grad_rtol = 4 * rtol, grad_norm_rtol = 2 * rtol;
    double grad_atol = 1e-5 * sh.scale * sqrt((double)D) * 4;
    int bad = 0;

    an_tensor *o = test_poisoned_gpu(ctx, dtype, 4, qs), *l = test_poisoned_gpu(ctx, AN_F32, 3, ls);
    snprintf(msg, sizeof msg, "%s: forward", what);
    if (failed(ctx, an_cuda_attention(ctx, &sh, dtype, an_tensor_data(q.dev), an_tensor_data(k.dev),
                                      an_tensor_data(v.dev), NULL, AN_I64, an_tensor_data(o), an_tensor_data(l)), msg)) {
        bad++;
    } else {
        snprintf(msg, sizeof msg, "%s: out", what);
        bad += dev_mismatch(ctx, o, out, rtol, rtol, 0, msg);
        snprintf(msg, sizeof msg, "%s: lse", what);
        bad += lse_mismatch(ctx, l, lse, msg);
    }

    /* every gradient, twice (bit-identical), from the reference's own out and lse so a forward
     * failure does not hide the backward's state */
    an_tensor *o_ref = an_tensor_from_data(ctx, AN_F64, 4, qs, out), *l_ref = an_tensor_from_data(ctx, AN_F64, 3, ls, lse);
    an_tensor *o_dev = an_tensor_to(ctx, o_ref, dtype, AN_CUDA), *l_dev = an_tensor_to(ctx, l_ref, AN_F32, AN_CUDA);
    ck_assert_msg(o_ref && l_ref && o_dev && l_dev, "upload: %s", an_error_message(ctx));
    const double *want[3] = {dq, dk, dv};
    const char *names[3] = {"dq", "dk", "dv"};
    an_tensor *g[2][3];
    int ran = 0;
    for (int rep = 0; rep < 2; rep++) {
        for (int i = 0; i < 3; i++) g[rep][i] = test_poisoned_gpu(ctx, dtype, 4, i == 0 ? qs : ks);
        snprintf(msg, sizeof msg, "%s: backward", what);
        ran += !failed(ctx, an_cuda_attention_backward(ctx, &sh, dtype, an_tensor_data(q.dev), an_tensor_data(k.dev),
                                                       an_tensor_data(v.dev), NULL, AN_I64, an_tensor_data(o_dev),
                                                       an_tensor_data(l_dev), an_tensor_data(go.dev),
                                                       an_tensor_data(g[rep][0]), an_tensor_data(g[rep][1]),
                                                       an_tensor_data(g[rep][2])), msg);
    }
    bad += 2 - ran;
    for (int i = 0; i < 3; i++) {
        if (ran == 2) {
            snprintf(msg, sizeof msg, "%s: %s", what, names[i]);
            bad += dev_mismatch(ctx, g[0][i], want[i], grad_rtol, grad_norm_rtol, grad_atol, msg);
            if (!same_bits(ctx, g[0][i], g[1][i])) {
                printf("FAIL %s: a repeated backward gave different bits\n", msg);
                bad++;
            }
        }
        an_tensor_release(g[0][i]), an_tensor_release(g[1][i]);
    }
    /* one gradient alone (the others go to temporary blocks) */
    int only = (int)((T + D) % 3);
    an_tensor *one = test_poisoned_gpu(ctx, dtype, 4, only == 0 ? qs : ks);
    void *ptr[3] = {NULL, NULL, NULL};
    ptr[only] = an_tensor_data(one);
    snprintf(msg, sizeof msg, "%s: %s alone", what, names[only]);
    if (failed(ctx, an_cuda_attention_backward(ctx, &sh, dtype, an_tensor_data(q.dev), an_tensor_data(k.dev),
                                               an_tensor_data(v.dev), NULL, AN_I64, an_tensor_data(o_dev),
                                               an_tensor_data(l_dev), an_tensor_data(go.dev), ptr[0], ptr[1], ptr[2]),
               msg))
        bad++;
    else
        bad += dev_mismatch(ctx, one, want[only], grad_rtol, grad_norm_rtol, grad_atol, msg);
    printf("%s %s\n", bad ? "FAILED" : "ok", what);
    fflush(stdout);
    an_tensor_release(one);
    an_tensor_release(o), an_tensor_release(l), an_tensor_release(o_ref), an_tensor_release(l_ref);
    an_tensor_release(o_dev), an_tensor_release(l_dev);
    free(out), free(lse), free(dq), free(dk), free(dv);
    test_pair_release(q), test_pair_release(k), test_pair_release(v), test_pair_release(go);
    return bad;
}

START_TEST(test_cuda_attention_cudnn_matches_float64_reference) {
    an_ctx *ctx = gpu_ctx(11, "cudnn attention");
    if (!ctx) return;
    const int64_t seqs[] = {1, 17, 128, 300}, heads[][2] = {{2, 2}, {12, 2}, {8, 1}}, head_dims[] = {64, 128};
    const an_dtype dtypes[] = {AN_BF16, AN_F16};
    int bad = 0, cases = 0;
    for (int t = 0; t < 4; t++)
        for (int h = 0; h < 3; h++)
            for (int d = 0; d < 2; d++)
                for (int z = 0; z < 2; z++) {
                    int64_t B = seqs[t] == 300 ? 1 : 1 + (t + h + d + z) % 2;
                    bad += check_shape(ctx, dtypes[z], B, seqs[t], heads[h][0], heads[h][1], head_dims[d]);
                    cases++;
                }
    ck_assert_msg(bad == 0, "%d failures over %d cuDNN attention cases (printed above)", bad, cases);
    test_ctx_free(ctx);
}
END_TEST

/* The backward graph with the explicit padding mask cuDNN <= 9.15 needs at T % 128 != 0, run on
 * whatever cuDNN is loaded (an_cuda_set_attention_cudnn_padding_mask forces it). */
START_TEST(test_cuda_attention_cudnn_padding_mask_graph_matches_float64_reference) {
    an_ctx *ctx = gpu_ctx(13, "cudnn attention, padding-mask graph");
    if (!ctx) return;
    test_ok(ctx, an_cuda_set_attention_cudnn_padding_mask(ctx, true), "padding mask switch");
    const int64_t seqs[] = {1, 17, 300}, heads[][2] = {{2, 2}, {12, 2}, {8, 1}};
    int bad = 0, cases = 0;
    for (int t = 0; t < 3; t++)
        for (int h = 0; h < 3; h++) {
            an_dtype dtype = (t + h) % 2 ? AN_F16 : AN_BF16;
            bad += check_shape(ctx, dtype, seqs[t] == 300 ? 1 : 2, seqs[t], heads[h][0], heads[h][1], h == 1 ? 64 : 128);
            cases++;
        }
    ck_assert_msg(bad == 0, "%d failures over %d padding-mask cases (printed above)", bad, cases);
    test_ctx_free(ctx);
}
END_TEST

/* ---- cuDNN against our tensor-core kernels at the benchmark shape, with times ---- */

enum { WARMUP = 3, REPS = 20 };

typedef struct {
    an_attention_shape sh;
    an_tensor *q, *k, *v, *go;
} bench;

static an_status forward(an_ctx *ctx, const bench *b, an_tensor *o, an_tensor *l) {
    return an_cuda_attention(ctx, &b->sh, AN_BF16, an_tensor_data(b->q), an_tensor_data(b->k), an_tensor_data(b->v),
                             NULL, AN_I64, an_tensor_data(o), an_tensor_data(l));
}

static an_status backward(an_ctx *ctx, const bench *b, an_tensor *o, an_tensor *l, an_tensor *const *g) {
    return an_cuda_attention_backward(ctx, &b->sh, AN_BF16, an_tensor_data(b->q), an_tensor_data(b->k),
                                      an_tensor_data(b->v), NULL, AN_I64, an_tensor_data(o), an_tensor_data(l),
                                      an_tensor_data(b->go), an_tensor_data(g[0]), an_tensor_data(g[1]),
                                      an_tensor_data(g[2]));
}

/* Mean milliseconds of one forward (pass 0) or backward (pass 1) over REPS calls after WARMUP. */
static double time_pass(an_ctx *ctx, const bench *b, int pass, an_tensor *o, an_tensor *l, an_tensor *const *g) {
    void *start = NULL, *stop = NULL;
    for (int i = 0; i < WARMUP + REPS; i++) {
        if (i == WARMUP) test_ok(ctx, an_cuda_event_record(ctx, &start), "event");
        test_ok(ctx, pass ? backward(ctx, b, o, l, g) : forward(ctx, b, o, l), pass ? "backward" : "forward");
    }
    test_ok(ctx, an_cuda_event_record(ctx, &stop), "event");
    double ms = 0;
    test_ok(ctx, an_cuda_event_elapsed(ctx, start, stop, &ms), "elapsed");
    an_cuda_event_free(start), an_cuda_event_free(stop);
    return ms / REPS;
}

static void poisoned_set(an_ctx *ctx, const int64_t *qs, const int64_t *ks, const int64_t *ls, an_tensor **o,
                         an_tensor **l, an_tensor **g) {
    *o = test_poisoned_gpu(ctx, AN_BF16, 4, qs), *l = test_poisoned_gpu(ctx, AN_F32, 3, ls);
    g[0] = test_poisoned_gpu(ctx, AN_BF16, 4, qs), g[1] = test_poisoned_gpu(ctx, AN_BF16, 4, ks);
    g[2] = test_poisoned_gpu(ctx, AN_BF16, 4, ks);
}

START_TEST(test_cuda_attention_cudnn_agrees_with_tensor_core_kernels_and_is_timed) {
    an_ctx *ctx = gpu_ctx(12, "cudnn attention vs tensor-core kernels");
    if (!ctx) return;
    const int64_t B = 8, T = 1024, Hq = 12, Hkv = 2, D = 128;
    int64_t qs[4] = {B, T, Hq, D}, ks[4] = {B, T, Hkv, D}, ls[3] = {B, Hq, T};
    bench b = {{B, T, Hq, Hkv, D, 1.0 / sqrt((double)D)}, NULL, NULL, NULL, NULL};
    an_tensor **in[4] = {&b.q, &b.k, &b.v, &b.go};
    for (int i = 0; i < 4; i++) {
        an_tensor *h = test_uniform(ctx, AN_BF16, 4, i == 1 || i == 2 ? ks : qs, i == 3 ? -1 : -2, i == 3 ? 1 : 2, false);
        *in[i] = an_tensor_to(ctx, h, AN_BF16, AN_CUDA);
        ck_assert_ptr_nonnull(*in[i]);
        an_tensor_release(h);
    }
    /* path 0: ours, path 1: cuDNN; each forward, then its backward from its own forward */
    an_tensor *o[2], *l[2], *g[2][3], *x[3];
    double ms[2][2];
    for (int path = 0; path < 2; path++) {
        test_ok(ctx, an_cuda_set_attention_cudnn(ctx, path == 1), "switch");
        poisoned_set(ctx, qs, ks, ls, &o[path], &l[path], g[path]);
        test_ok(ctx, forward(ctx, &b, o[path], l[path]), "forward");
        test_ok(ctx, backward(ctx, &b, o[path], l[path], g[path]), "backward");
        test_ok(ctx, an_cuda_synchronize(ctx), "synchronize");
    }
    /* cuDNN against ours: out (one bf16 rounding each), lse, gradients */
    const char *names[3] = {"dq", "dk", "dv"};
    double rtol = rtol_of(AN_BF16), atol = 1e-5 * b.sh.scale * sqrt((double)D) * 4;
    int bad = 0;
    double *want = test_download(ctx, o[0]);
    bad += dev_mismatch(ctx, o[1], want, 2 * rtol, rtol, 0, "bench out: cuDNN vs ours");
    free(want);
    want = test_download(ctx, l[0]);
    bad += lse_mismatch(ctx, l[1], want, "bench lse: cuDNN vs ours");
    free(want);
    double *want_g[3];
    for (int i = 0; i < 3; i++) {
        char msg[96];
        want_g[i] = test_download(ctx, g[0][i]);
        snprintf(msg, sizeof msg, "bench %s: cuDNN vs ours", names[i]);
        bad += dev_mismatch(ctx, g[1][i], want_g[i], 8 * rtol, 2 * rtol, atol, msg);
    }
    /* each path's backward from the other path's forward (lse means the same on both) */
    for (int path = 0; path < 2; path++) {
        test_ok(ctx, an_cuda_set_attention_cudnn(ctx, path == 1), "switch");
        for (int i = 0; i < 3; i++) x[i] = test_poisoned_gpu(ctx, AN_BF16, 4, i == 0 ? qs : ks);
        test_ok(ctx, backward(ctx, &b, o[1 - path], l[1 - path], x), "crossed backward");
        for (int i = 0; i < 3; i++) {
            char msg[96];
            snprintf(msg, sizeof msg, "bench %s: %s backward from %s forward", names[i], path ? "cuDNN" : "our",
                     path ? "our" : "cuDNN");
            bad += dev_mismatch(ctx, x[i], want_g[i], 8 * rtol, 2 * rtol, atol, msg);
            an_tensor_release(x[i]);
        }
    }
    /* times, both paths in this run */
    for (int path = 0; path < 2; path++) {
        test_ok(ctx, an_cuda_set_attention_cudnn(ctx, path == 1), "switch");
        ms[path][0] = time_pass(ctx, &b, 0, o[path], l[path], g[path]);
        ms[path][1] = time_pass(ctx, &b, 1, o[path], l[path], g[path]);
    }
    /* cuDNN's non-deterministic backward: time, accuracy, and whether two runs agree bit for bit */
    test_ok(ctx, an_cuda_set_attention_cudnn_deterministic(ctx, false), "determinism switch");
    an_tensor *nd[2][3];
    for (int rep = 0; rep < 2; rep++) {
        for (int i = 0; i < 3; i++) nd[rep][i] = test_poisoned_gpu(ctx, AN_BF16, 4, i == 0 ? qs : ks);
        test_ok(ctx, backward(ctx, &b, o[1], l[1], nd[rep]), "non-deterministic backward");
    }
    bool nd_same = true;
    for (int i = 0; i < 3; i++) {
        char msg[96];
        snprintf(msg, sizeof msg, "bench %s: cuDNN non-deterministic backward vs ours", names[i]);
        bad += dev_mismatch(ctx, nd[0][i], want_g[i], 8 * rtol, 2 * rtol, atol, msg);
        nd_same = nd_same && same_bits(ctx, nd[0][i], nd[1][i]);
    }
    double nd_ms = time_pass(ctx, &b, 1, o[1], l[1], nd[0]);
    test_ok(ctx, an_cuda_set_attention_cudnn_deterministic(ctx, true), "determinism switch");
    bool det_same = true;
    test_ok(ctx, backward(ctx, &b, o[1], l[1], nd[1]), "deterministic backward");
    for (int i = 0; i < 3; i++) det_same = det_same && same_bits(ctx, nd[1][i], g[1][i]);

    double flops = 2.0 * 2.0 * (double)(T * T) / 2 * (double)(D * Hq * B); /* QK^T and PV over the causal half */
    printf("attention bf16 B %lld T %lld Hq %lld Hkv %lld D %lld causal, cuDNN %d, mean of %d calls:\n"
           "  ours  (attention_mma.cu): forward %.3f ms (%.0f TFLOP/s), backward %.3f ms (%.0f TFLOP/s at 2.5x)\n"
           "  cuDNN (deterministic)   : forward %.3f ms (%.0f TFLOP/s), backward %.3f ms (%.0f TFLOP/s at 2.5x)%s\n"
           "  cuDNN non-deterministic backward %.3f ms; two runs %s\n",
           (long long)B, (long long)T, (long long)Hq, (long long)Hkv, (long long)D, an_cuda_cudnn_version(), REPS,
           ms[0][0], flops / ms[0][0] * 1e-9, ms[0][1], 2.5 * flops / ms[0][1] * 1e-9, ms[1][0],
           flops / ms[1][0] * 1e-9, ms[1][1], 2.5 * flops / ms[1][1] * 1e-9,
           det_same ? ", bit-identical when repeated" : ", NOT bit-identical when repeated", nd_ms,
           nd_same ? "bit-identical" : "differ");
    /* the heuristics' other engine configs, forward and backward: each checked against ours and
     * timed, until one asked for does not finalise (the library keeps engine 0) */
    test_ok(ctx, an_cuda_set_attention_cudnn(ctx, true), "switch");
    for (int pass = 0; pass < 2; pass++)
        for (int engine = 1; engine < 16; engine++) {
            test_ok(ctx, an_cuda_set_attention_cudnn_engine(ctx, pass, engine), "engine");
            an_tensor *eo, *el, *eg[3];
            poisoned_set(ctx, qs, ks, ls, &eo, &el, eg);
            an_status st = forward(ctx, &b, eo, el);
            if (st == AN_OK && pass) st = backward(ctx, &b, o[1], l[1], eg);
            if (st != AN_OK) {
                printf("  cuDNN %s engine %d: %s\n", pass ? "backward" : "forward", engine, an_error_message(ctx));
                an_error_clear(ctx);
            } else {
                char msg[96];
                snprintf(msg, sizeof msg, "bench: cuDNN %s engine %d vs ours", pass ? "backward" : "forward", engine);
                double *w = test_download(ctx, pass ? g[0][0] : o[0]);
                bad += dev_mismatch(ctx, pass ? eg[0] : eo, w, pass ? 8 * rtol : 2 * rtol, pass ? 2 * rtol : rtol,
                                    pass ? atol : 0, msg);
                free(w);
                double t = time_pass(ctx, &b, pass, eo, el, pass ? eg : g[1]);
                printf("  cuDNN %s engine %d: %.3f ms (%.0f TFLOP/s)\n", pass ? "backward" : "forward", engine, t,
                       (pass ? 2.5 : 1.0) * flops / t * 1e-9);
            }
            an_tensor_release(eo), an_tensor_release(el);
            for (int i = 0; i < 3; i++) an_tensor_release(eg[i]);
            test_ok(ctx, an_cuda_set_attention_cudnn_engine(ctx, pass, 0), "engine");
            if (st != AN_OK) break;
        }
    fflush(stdout);
    ck_assert_msg(det_same, "cuDNN's deterministic backward gave different bits when repeated");
    ck_assert_msg(bad == 0, "%d mismatches between cuDNN and our kernels (printed above)", bad);
    for (int i = 0; i < 3; i++) {
        free(want_g[i]);
        an_tensor_release(nd[0][i]), an_tensor_release(nd[1][i]);
        an_tensor_release(g[0][i]), an_tensor_release(g[1][i]);
    }
    for (int path = 0; path < 2; path++) an_tensor_release(o[path]), an_tensor_release(l[path]);
    for (int i = 0; i < 4; i++) an_tensor_release(*in[i]);
    test_ctx_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("cuda_attention_cudnn");
    test_add_case(s, "reference", test_cuda_attention_cudnn_matches_float64_reference);
    test_add_case(s, "padding", test_cuda_attention_cudnn_padding_mask_graph_matches_float64_reference);
    test_add_case(s, "bench", test_cuda_attention_cudnn_agrees_with_tensor_core_kernels_and_is_timed);
    return test_run(s);
}
