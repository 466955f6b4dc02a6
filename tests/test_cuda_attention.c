/* test_cuda_attention.c — the CUDA attention kernels (kernels/attention.cu) against the float64
 * CPU reference (an_cpu_attention, an_cpu_attention_backward, an_cpu_attention_cached) on fresh
 * random inputs: forward (out and lse), backward (dq, dk, dv, together and alone, bit-identical
 * when repeated; on the Hopper path also turned back by a rotary table, the rope kernel's bits),
 * T in {1, 7, 65, 130, 200}, Hq = Hkv and Hq = 12 / Hkv = 2, head_dim 1 to 256,
 * no segments, packed runs of documents (i64 and i32 ids) and scattered ids; the decode kernels over
 * a KV cache (per query head, and grouped per kv head for bf16/f16 at head_dim 128: 4500 keys in 36
 * splits of two chunks each, 150 keys in 10 splits merged by a second kernel, 16 keys in one; the
 * grouped kernel also replayed from a CUDA graph; its launch regimes at batch 1 to 32 in a test of
 * their own); and the autograd ops (an_attention forward +
 * backward, an_attention_cached) on CUDA tensors against the same ops on the CPU. Unsegmented
 * bf16/f16 shapes at head_dim 64 and 128 run on cuDNN (its default switch;
 * tests/test_cuda_attention_cudnn.c tests that path on its own), and again on our tensor-core
 * kernels with the switch off.
 *
 * Every launcher output is poisoned with 0xFF bytes (NaN in every float dtype) before the launch,
 * so an element left unwritten fails; NaN never passes. Bounds, with rtol by dtype (f32 1e-5,
 * bf16 1e-2, f16 2e-3): each element within rtol * (|want| + rms(want)) and the whole tensor
 * within ||got - want|| <= rtol ||want||; gradients from the tensor-core path (bf16/f16, head_dim
 * 64 and 128) get 4x the elementwise and 2x the norm bound (see check_shape). The reference is computed from the same stored (rounded)
 * inputs, so bf16/f16 errors are the output's own rounding (2^-9, 2^-12 relative) plus fp32 math;
 * lse is f32 for every dtype and must be within 1e-5 (|want| + 1). Without a GPU (or in a build
 * without CUDA) every test prints SKIP and passes. */
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/cpu/cpu.h"  /* the float64 reference kernels */
#include "kernels/cuda.h"      /* the launchers under test */
#include "support/test_util.h"

static const an_dtype float_dtypes[] = {AN_F32, AN_BF16, AN_F16};
#define N_DTYPES 3

static double rtol_of(an_dtype dtype) { return dtype == AN_F32 ? 1e-5 : dtype == AN_BF16 ? 1e-2 : 2e-3; }

static an_ctx *gpu_ctx(uint64_t seed, const char *what) {
    an_ctx *ctx = test_gpu_ctx(seed, what);
    fflush(stdout);
    return ctx;
}

/* A CUDA tensor of `shape`, every byte 0xFF (NaN in each float dtype). */
/* Fails unless got (n) matches want elementwise within rtol (|want| + rms) + atol and as a whole
 * within norm_rtol ||want|| + atol sqrt(n); NaN fails. */
static void expect_close(const double *got, const double *want, int64_t n, double rtol, double norm_rtol, double atol,
                         const char *fmt, ...) {
    char what[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    double ms = 0, err2 = 0, ref2 = 0;
    for (int64_t i = 0; i < n; i++) ms += want[i] * want[i] / (double)n;
    for (int64_t i = 0; i < n; i++) {
        double bound = rtol * (fabs(want[i]) + sqrt(ms)) + atol;
        ck_assert_msg(!isnan(got[i]) && fabs(got[i] - want[i]) <= bound,
                      "%s: element %lld of %lld is %.9g, expected %.9g (bound %.3g)", what, (long long)i,
                      (long long)n, got[i], want[i], bound);
        err2 += (got[i] - want[i]) * (got[i] - want[i]);
        ref2 += want[i] * want[i];
    }
    ck_assert_msg(sqrt(err2) <= norm_rtol * sqrt(ref2) + atol * sqrt((double)n), "%s: relative error %.3g over %.3g", what,
                  sqrt(err2 / (ref2 > 0 ? ref2 : 1)), norm_rtol);
}

static void expect_dev_close(an_ctx *ctx, const an_tensor *dev, const double *want, double rtol, double norm_rtol,
                             double atol, const char *what) {
    double *got = test_download(ctx, dev);
    expect_close(got, want, an_tensor_numel(dev), rtol, norm_rtol, atol, "%s", what);
    free(got);
}

static void expect_same_bits(an_ctx *ctx, const an_tensor *a, const an_tensor *b, const char *what) {
    test_ok(ctx, an_cuda_synchronize(ctx), "synchronize");
    size_t bytes = an_tensor_nbytes(a);
    char *x = malloc(bytes ? bytes : 1), *y = malloc(bytes ? bytes : 1);
    test_ok(ctx, an_cuda_memcpy(ctx, x, AN_CPU, an_tensor_data(a), AN_CUDA, bytes), "download");
    test_ok(ctx, an_cuda_memcpy(ctx, y, AN_CPU, an_tensor_data(b), AN_CUDA, bytes), "download");
    ck_assert_msg(memcmp(x, y, bytes) == 0, "%s: the bits differ", what);
    free(x);
    free(y);
}

typedef enum { SEG_NONE, SEG_RUNS, SEG_RUNS_I32, SEG_SCATTERED } seg_kind;

/* Segment ids (B, T) on the host (NULL for SEG_NONE): contiguous documents of random lengths
 * (ids rising from 10 b), or ids in [0, 3) in any order. *dev gets the ids on the GPU as i64, or
 * i32 for SEG_RUNS_I32. */
static int64_t *random_segments(an_ctx *ctx, int64_t B, int64_t T, seg_kind kind, an_tensor **dev) {
    *dev = NULL;
    if (kind == SEG_NONE) return NULL;
    int64_t *v = malloc((size_t)(B * T) * sizeof *v);
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++) {
            double u = an_rng_uniform(&ctx->rng);
            if (kind == SEG_SCATTERED) v[b * T + t] = (int64_t)(u * 3);
            else v[b * T + t] = t == 0 ? 10 * b : v[b * T + t - 1] + (u < 0.1);
        }
    an_tensor *h = an_tensor_new(ctx, kind == SEG_RUNS_I32 ? AN_I32 : AN_I64, AN_CPU, 2, (int64_t[]){B, T});
    ck_assert_ptr_nonnull(h);
    for (int64_t i = 0; i < B * T; i++) an_tensor_set(h, i, (double)v[i]);
    *dev = an_tensor_to(ctx, h, h->dtype, AN_CUDA);
    ck_assert_msg(*dev != NULL, "upload: %s", an_error_message(ctx));
    an_tensor_release(h);
    return v;
}

typedef struct {
    int64_t B, T, Hq, Hkv, D;
    seg_kind seg;
} dims;

static const dims shapes[] = {
    {1, 1, 1, 1, 16, SEG_NONE},     {2, 7, 4, 2, 64, SEG_RUNS},       {1, 130, 12, 2, 128, SEG_RUNS},
    {2, 130, 2, 2, 16, SEG_NONE},   {1, 130, 3, 3, 64, SEG_RUNS_I32}, {2, 65, 12, 2, 16, SEG_SCATTERED},
    {1, 7, 12, 2, 128, SEG_NONE},   {1, 130, 4, 2, 200, SEG_RUNS},    {1, 65, 2, 1, 1, SEG_NONE},
    {3, 33, 6, 3, 33, SEG_SCATTERED}, {1, 200, 2, 1, 256, SEG_NONE},
    /* tensor-core path (bf16/f16, head_dim 64 and 128): several 64-row tiles, a ragged last
     * tile, GQA 4:1 and 6:1, scattered ids, one token */
    {2, 200, 8, 2, 128, SEG_SCATTERED}, {1, 257, 4, 1, 64, SEG_NONE}, {1, 1, 2, 1, 128, SEG_NONE},
    {2, 192, 12, 2, 128, SEG_RUNS},
    /* the Hopper backward (head_dim 128, no segments, T a multiple of 64): an odd count of query
     * tiles (the last dQ block's second warpgroup idle), GQA 6:1, one head a kv head, one tile */
    {2, 192, 12, 2, 128, SEG_NONE}, {1, 256, 4, 4, 128, SEG_NONE}, {1, 64, 6, 1, 128, SEG_NONE},
};
#define N_SHAPES (sizeof shapes / sizeof *shapes)

/* ---- forward and backward against the float64 reference ---- */

/* wgmma: attention_wgmma.cu's switch is on (where that path takes the shape, it then turns the
 * gradients back by a rotary table too). */
static void check_shape(an_ctx *ctx, an_dtype dtype, dims s, bool wgmma) {
    char what[192];
    snprintf(what, sizeof what, "%s B %lld T %lld Hq %lld Hkv %lld D %lld seg %d", an_dtype_name(dtype),
             (long long)s.B, (long long)s.T, (long long)s.Hq, (long long)s.Hkv, (long long)s.D, (int)s.seg);
    int64_t qs[4] = {s.B, s.T, s.Hq, s.D}, ks[4] = {s.B, s.T, s.Hkv, s.D}, ls[3] = {s.B, s.Hq, s.T};
    test_pair q = test_pair_uniform(ctx, dtype, 4, qs, -2, 2), k = test_pair_uniform(ctx, dtype, 4, ks, -2, 2);
    test_pair v = test_pair_uniform(ctx, dtype, 4, ks, -2, 2), go = test_pair_uniform(ctx, dtype, 4, qs, -1, 1);
    an_tensor *seg_dev;
    int64_t *seg = random_segments(ctx, s.B, s.T, s.seg, &seg_dev);
    an_attention_shape sh = {s.B, s.T, s.Hq, s.Hkv, s.D, 1.0 / sqrt((double)s.D)};
    int64_t nq = s.B * s.T * s.Hq * s.D, nk = s.B * s.T * s.Hkv * s.D, nl = s.B * s.Hq * s.T;
    double *out = malloc((size_t)nq * sizeof *out), *lse = malloc((size_t)nl * sizeof *lse);
    double *dq = malloc((size_t)nq * sizeof *dq), *dk = malloc((size_t)nk * sizeof *dk);
    double *dv = malloc((size_t)nk * sizeof *dv);
    test_ok(ctx, an_cpu_attention(ctx, &sh, q.v, k.v, v.v, seg, out, lse), "reference forward");
    test_ok(ctx, an_cpu_attention_backward(ctx, &sh, q.v, k.v, v.v, seg, lse, go.v, dq, dk, dv), "reference backward");

    const void *segp = seg_dev ? an_tensor_data(seg_dev) : NULL;
    an_dtype seg_dtype = seg_dev ? seg_dev->dtype : AN_I64;
    double rtol = rtol_of(dtype);
    /* The tensor-core path takes delta from the output rounded to the dtype and rounds dS before
     * dS K: on short rows dP - delta cancels and the worst element is off by up to 2.5% of rms in
     * bf16 (tests/support/emulate_attention_rounding.py), so its gradients get 4x the elementwise
     * and 2x the norm bound. */
    bool tc = an_cuda_attention_uses_tensor_cores(dtype, s.D);
    double grad_rtol = tc ? 4 * rtol : rtol, grad_norm_rtol = tc ? 2 * rtol : rtol;
    /* Where every gradient is 0 (a row that sees one key: dP - delta = 0 exactly), fp32 sums in
     * another order leave ~1e-7: an absolute floor of 1e-5 times the size of scale dO.V K (inputs
     * are within 2, dO within 1). */
    double grad_atol = tc ? 1e-5 * sh.scale * sqrt((double)s.D) * 4 : 0;
    char msg[256];
    an_tensor *o = test_poisoned_gpu(ctx, dtype, 4, qs), *l = test_poisoned_gpu(ctx, AN_F32, 3, ls);
    test_ok(ctx, an_cuda_attention(ctx, &sh, dtype, an_tensor_data(q.dev), an_tensor_data(k.dev), an_tensor_data(v.dev),
                              segp, seg_dtype, an_tensor_data(o), an_tensor_data(l)), "forward");
    snprintf(msg, sizeof msg, "%s: out", what);
    expect_dev_close(ctx, o, out, rtol, rtol, 0, msg);
    double *lse_got = test_download(ctx, l);
    for (int64_t i = 0; i < nl; i++)
        ck_assert_msg(!isnan(lse_got[i]) && fabs(lse_got[i] - lse[i]) <= 1e-5 * (fabs(lse[i]) + 1),
                      "%s: lse %lld is %.9g, expected %.9g", what, (long long)i, lse_got[i], lse[i]);
    free(lse_got);

    /* every gradient at once, then again (bit-identical), then each alone */
    an_tensor *g[2][3];
    for (int rep = 0; rep < 2; rep++) {
        g[rep][0] = test_poisoned_gpu(ctx, dtype, 4, qs), g[rep][1] = test_poisoned_gpu(ctx, dtype, 4, ks);
        g[rep][2] = test_poisoned_gpu(ctx, dtype, 4, ks);
        test_ok(ctx, an_cuda_attention_backward(ctx, &sh, dtype, an_tensor_data(q.dev), an_tensor_data(k.dev),
                                           an_tensor_data(v.dev), segp, seg_dtype, an_tensor_data(o),
                                           an_tensor_data(l), an_tensor_data(go.dev), an_tensor_data(g[rep][0]),
                                           an_tensor_data(g[rep][1]), an_tensor_data(g[rep][2])), "backward");
    }
    const double *want[3] = {dq, dk, dv};
    const char *names[3] = {"dq", "dk", "dv"};
    for (int i = 0; i < 3; i++) {
        snprintf(msg, sizeof msg, "%s: %s", what, names[i]);
        expect_dev_close(ctx, g[0][i], want[i], grad_rtol, grad_norm_rtol, grad_atol, msg);
        expect_same_bits(ctx, g[0][i], g[1][i], msg);
    }
    /* with a rotary table: where attention_wgmma.cu runs (a compute capability 9.0 device, no
     * segments, head_dim 128, T a multiple of 64) dq and dk leave turned back, the bits of the rope
     * kernel at sign -1 over the first run's gradients above; dv as before */
    const void *probe[] = {NULL};
    bool hopper = an_cuda_gemm_swiglu_rule(ctx, AN_BF16, 64, 64, 64, probe, 0);
    if (wgmma && hopper && s.seg == SEG_NONE && s.D == 128 && s.T % 64 == 0 && dtype != AN_F32) {
        an_rope_config cfg = {AN_ROPE_NEOX, 10000.0, 0, 0, 0, 0};
        double inv[64];
        an_cpu_rope_inv_freq(&cfg, s.D, inv);
        an_tensor *ph = an_tensor_new(ctx, AN_I64, AN_CPU, 2, (int64_t[]){s.B, s.T});
        for (int64_t i = 0; i < s.B * s.T; i++) ((int64_t *)an_tensor_data(ph))[i] = i == 1 ? 30000 : (i % s.T) * 3 % 1001;
        an_tensor *pos = an_tensor_to(ctx, ph, AN_I64, AN_CUDA), *table = test_poisoned_gpu(ctx, AN_F32, 2, (int64_t[]){s.B * s.T, s.D});
        test_ok(ctx, an_cuda_rope_table(ctx, an_tensor_data(pos), AN_I64, s.B * s.T, s.D, inv, an_tensor_data(table)), "table");
        an_tensor *gt[3] = {test_poisoned_gpu(ctx, dtype, 4, qs), test_poisoned_gpu(ctx, dtype, 4, ks),
                            test_poisoned_gpu(ctx, dtype, 4, ks)};
        an_tensor *want_q = test_poisoned_gpu(ctx, dtype, 4, qs), *want_k = test_poisoned_gpu(ctx, dtype, 4, ks);
        bool turned = false;
        test_ok(ctx, an_cuda_attention_backward_turning(ctx, &sh, dtype, an_tensor_data(q.dev), an_tensor_data(k.dev),
                                                        an_tensor_data(v.dev), NULL, AN_I64, an_tensor_data(o),
                                                        an_tensor_data(l), an_tensor_data(go.dev), an_tensor_data(gt[0]),
                                                        an_tensor_data(gt[1]), an_tensor_data(gt[2]),
                                                        an_tensor_data(table), &turned),
                "backward turning");
        snprintf(msg, sizeof msg, "%s: turned in the stores", what);
        ck_assert_msg(turned, "%s: the warpgroup path did not turn the gradients", msg);
        test_ok(ctx, an_cuda_rope(ctx, dtype, an_tensor_data(g[0][0]), an_tensor_data(pos), AN_I64, s.B * s.T, s.Hq,
                                  s.D, inv, 0, -1.0, an_tensor_data(want_q)), "rope dq");
        test_ok(ctx, an_cuda_rope(ctx, dtype, an_tensor_data(g[0][1]), an_tensor_data(pos), AN_I64, s.B * s.T, s.Hkv,
                                  s.D, inv, 0, -1.0, an_tensor_data(want_k)), "rope dk");
        expect_same_bits(ctx, gt[0], want_q, msg);
        expect_same_bits(ctx, gt[1], want_k, msg);
        expect_same_bits(ctx, gt[2], g[0][2], msg);
        for (int i = 0; i < 3; i++) an_tensor_release(gt[i]);
        an_tensor_release(want_q), an_tensor_release(want_k), an_tensor_release(table), an_tensor_release(pos);
        an_tensor_release(ph);
    }
    for (int i = 0; i < 3; i++) an_tensor_release(g[0][i]), an_tensor_release(g[1][i]);
    for (int only = 0; only < 3; only++) {
        an_tensor *one = test_poisoned_gpu(ctx, dtype, 4, only == 0 ? qs : ks);
        void *ptr[3] = {NULL, NULL, NULL};
        ptr[only] = an_tensor_data(one);
        test_ok(ctx, an_cuda_attention_backward(ctx, &sh, dtype, an_tensor_data(q.dev), an_tensor_data(k.dev),
                                           an_tensor_data(v.dev), segp, seg_dtype, an_tensor_data(o),
                                           an_tensor_data(l), an_tensor_data(go.dev), ptr[0], ptr[1], ptr[2]),
                "backward, one gradient");
        snprintf(msg, sizeof msg, "%s: %s alone", what, names[only]);
        expect_dev_close(ctx, one, want[only], grad_rtol, grad_norm_rtol, grad_atol, msg);
        an_tensor_release(one);
    }
    an_tensor_release(o);
    an_tensor_release(l);
    an_tensor_release(seg_dev);
    free(seg), free(out), free(lse), free(dq), free(dk), free(dv);
    test_pair_release(q), test_pair_release(k), test_pair_release(v), test_pair_release(go);
}

START_TEST(test_cuda_attention_forward_and_backward_match_float64_reference) {
    an_ctx *ctx = gpu_ctx(1, "cuda attention");
    if (!ctx) return;
    for (int d = 0; d < N_DTYPES; d++)
        for (size_t s = 0; s < N_SHAPES; s++) {
            check_shape(ctx, float_dtypes[d], shapes[s], true);
            /* unsegmented tensor-core shapes went to attention_wgmma.cu's backward where it takes
             * them, else to cuDNN: run them on cuDNN and on attention_mma.cu as well */
            if (shapes[s].seg == SEG_NONE && an_cuda_attention_uses_tensor_cores(float_dtypes[d], shapes[s].D)) {
                test_ok(ctx, an_cuda_set_attention_wgmma(ctx, false), "wgmma switch");
                check_shape(ctx, float_dtypes[d], shapes[s], false);
                test_ok(ctx, an_cuda_set_attention_cudnn(ctx, false), "cuDNN switch");
                check_shape(ctx, float_dtypes[d], shapes[s], false);
                test_ok(ctx, an_cuda_set_attention_cudnn(ctx, true), "cuDNN switch");
                test_ok(ctx, an_cuda_set_attention_wgmma(ctx, true), "wgmma switch");
            }
        }
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_cuda_attention_refuses_head_dim_over_256) {
    an_ctx *ctx = gpu_ctx(2, "cuda attention head_dim limit");
    if (!ctx) return;
    an_attention_shape sh = {1, 4, 1, 1, 257, 0.1};
    an_tensor *x = an_tensor_zeros(ctx, AN_F32, AN_CUDA, 1, (int64_t[]){4 * 257});
    an_tensor *l = an_tensor_zeros(ctx, AN_F32, AN_CUDA, 1, (int64_t[]){4});
    ck_assert_int_eq(an_cuda_attention(ctx, &sh, AN_F32, an_tensor_data(x), an_tensor_data(x), an_tensor_data(x),
                                       NULL, AN_I64, an_tensor_data(x), an_tensor_data(l)), AN_ERR_INPUT);
    ck_assert_msg(strstr(an_error_message(ctx), "257") != NULL, "message: %s", an_error_message(ctx));
    an_error_clear(ctx);
    an_tensor_release(x);
    an_tensor_release(l);
    test_ctx_free(ctx);
}
END_TEST

/* ---- decode over a KV cache ---- */

/* One decode case: q (B, T, Hq, D) and caches (Bc, S, Hkv, D) uniform in [-2, 2) on both devices,
 * the row table (B) and lengths (Bc) on both, and the float64 reference output. */
typedef struct {
    an_dtype dtype;
    an_attention_shape sh;
    int64_t S, Bc, qs[4];
    test_pair q, k, v;
    an_tensor *r, *len, *r_dev, *len_dev;
    double *want;
} decode_case;

static decode_case decode_case_new(an_ctx *ctx, an_dtype dtype, int64_t B, int64_t T, int64_t Hq, int64_t Hkv,
                                   int64_t D, int64_t S, int64_t Bc, const int64_t *rows, const int64_t *lengths) {
    decode_case c = {.dtype = dtype, .sh = {B, T, Hq, Hkv, D, 1.0 / sqrt((double)D)}, .S = S, .Bc = Bc,
                     .qs = {B, T, Hq, D}};
    int64_t cs[4] = {Bc, S, Hkv, D};
    c.q = test_pair_uniform(ctx, dtype, 4, c.qs, -2, 2), c.k = test_pair_uniform(ctx, dtype, 4, cs, -2, 2);
    c.v = test_pair_uniform(ctx, dtype, 4, cs, -2, 2);
    c.want = malloc((size_t)(B * T * Hq * D) * sizeof *c.want);
    test_ok(ctx, an_cpu_attention_cached(ctx, &c.sh, S, c.q.v, c.k.v, c.v.v, rows, lengths, c.want), "reference");
    c.r = an_tensor_from_data(ctx, AN_I64, 1, (int64_t[]){B}, rows);
    c.len = an_tensor_from_data(ctx, AN_I64, 1, (int64_t[]){Bc}, lengths);
    c.r_dev = an_tensor_to(ctx, c.r, AN_I64, AN_CUDA), c.len_dev = an_tensor_to(ctx, c.len, AN_I64, AN_CUDA);
    ck_assert(c.want && c.r_dev && c.len_dev);
    return c;
}

static void decode_case_free(decode_case *c) {
    an_tensor_release(c->r), an_tensor_release(c->len), an_tensor_release(c->r_dev), an_tensor_release(c->len_dev);
    free(c->want);
    test_pair_release(c->q), test_pair_release(c->k), test_pair_release(c->v);
}

/* an_cuda_attention_cached into out (poisoned here) with the case's device tables. */
static an_status decode_launch(an_ctx *ctx, const decode_case *c, an_tensor *out) {
    return an_cuda_attention_cached(ctx, &c->sh, c->S, c->Bc, c->dtype, an_tensor_data(c->q.dev),
                                    an_tensor_data(c->k.dev), an_tensor_data(c->v.dev), an_tensor_data(c->r_dev),
                                    an_tensor_data(c->len_dev), an_tensor_data(out));
}

/* The launcher's output against the reference, then `replays` replays of the launch captured in a
 * CUDA graph (as generation runs it), each into a poisoned output: the same bits every time.
 * Returns the launcher's output. */
static an_tensor *decode_check(an_ctx *ctx, const decode_case *c, int replays, const char *what) {
    an_tensor *out = test_poisoned_gpu(ctx, c->dtype, 4, c->qs);
    test_ok(ctx, decode_launch(ctx, c, out), "attention_cached");
    expect_dev_close(ctx, out, c->want, rtol_of(c->dtype), rtol_of(c->dtype), 0, what);
    if (replays == 0) return out;
    an_tensor *replayed = test_poisoned_gpu(ctx, c->dtype, 4, c->qs);
    an_cuda_graph *graph = NULL;
    test_ok(ctx, an_cuda_graph_begin(ctx), "capture");
    an_status body = decode_launch(ctx, c, replayed);
    test_ok(ctx, an_cuda_graph_end(ctx, body, &graph), "captured attention_cached");
    for (int rep = 0; rep < replays; rep++) {
        test_ok(ctx, an_cuda_memset(ctx, an_tensor_data(replayed), 0xff, an_tensor_nbytes(replayed)), "poison");
        test_ok(ctx, an_cuda_graph_launch(ctx, graph), "replay");
        expect_same_bits(ctx, out, replayed, what);
    }
    an_tensor_release(replayed);
    an_cuda_graph_free(ctx, graph);
    return out;
}

START_TEST(test_cuda_attention_cached_matches_float64_reference) {
    an_ctx *ctx = gpu_ctx(3, "cuda attention_cached");
    if (!ctx) return;
    const int64_t head_dims[] = {1, 16, 64, 128, 200, 256};
    const int64_t Bc = 3, rows[2] = {2, 0};
    char what[128];
    for (int d = 0; d < N_DTYPES; d++)
        for (size_t z = 0; z < sizeof head_dims / sizeof *head_dims; z++)
            for (int64_t T = 1; T <= 5; T += 2)
                for (int gqa = 0; gqa < 3; gqa++) { /* 1, 6 and 3 query heads a kv head */
                    an_dtype dtype = float_dtypes[d];
                    int64_t D = head_dims[z], Hq = gqa == 0 ? 2 : gqa == 1 ? 12 : 6, Hkv = 2, B = 2;
                    if (T == 5 && D != 128) continue;
                    /* 150 keys: the grouped kernel splits them over 10 blocks of 16 keys (small batch)
                     * and merges; 16: one block; 4500 (head_dim 128): 36 splits of 128 keys, each two
                     * chunks, the last ones empty */
                    int64_t S = T == 1 ? 150 : T == 3 ? 16 : 4500, lengths[3] = {5, 0, S > 21 ? S - 21 : S - T};
                    decode_case dc = decode_case_new(ctx, dtype, B, T, Hq, Hkv, D, S, Bc, rows, lengths);
                    snprintf(what, sizeof what, "decode %s D %lld T %lld Hq %lld S %lld", an_dtype_name(dtype),
                             (long long)D, (long long)T, (long long)Hq, (long long)S);
                    /* at head_dim 128 also three replays from a CUDA graph */
                    an_tensor *out = decode_check(ctx, &dc, D == 128 ? 3 : 0, what);

                    /* the op on CUDA tensors against the op on the CPU */
                    double scale = dc.sh.scale;
                    an_tensor *cpu = an_attention_cached(ctx, dc.q.host, dc.k.host, dc.v.host, dc.r, dc.len, scale);
                    an_tensor *gpu = an_attention_cached(ctx, dc.q.dev, dc.k.dev, dc.v.dev, dc.r, dc.len, scale);
                    /* the device tables (the KV cache's): the same result bit for bit */
                    an_tensor *gpu_dev = an_attention_cached(ctx, dc.q.dev, dc.k.dev, dc.v.dev, dc.r_dev, dc.len_dev, scale);
                    ck_assert_msg(cpu && gpu && gpu_dev, "%s: op: %s", what, an_error_message(ctx));
                    an_tensor *h1 = an_tensor_to(ctx, gpu, AN_F64, AN_CPU), *h2 = an_tensor_to(ctx, gpu_dev, AN_F64, AN_CPU);
                    ck_assert(h1 && h2);
                    ck_assert_msg(memcmp(an_tensor_data(h1), an_tensor_data(h2), an_tensor_nbytes(h1)) == 0,
                                  "%s: device tables", what);
                    an_tensor_release(h1), an_tensor_release(h2);
                    an_tensor_release(gpu_dev);
                    ck_assert_int_eq(gpu->device, AN_CUDA);
                    double *cv = test_values(cpu);
                    snprintf(what + strlen(what), sizeof what - strlen(what), " (op)");
                    /* both sides rounded to the dtype: allow one more rounding */
                    expect_dev_close(ctx, gpu, cv, 2 * rtol_of(dtype), 2 * rtol_of(dtype), 0, what);
                    free(cv);
                    an_tensor_release(cpu), an_tensor_release(gpu), an_tensor_release(out);
                    decode_case_free(&dc);
                }
    test_ctx_free(ctx);
}
END_TEST

/* The grouped kernel's launch regimes (kernels/decode_attention.cu), bf16 and f16, Hq 12 / Hkv 2,
 * head_dim 128, every batch row at its own length and cache row (an empty one included): short
 * splits for small grids (batch 1 at 20, 384 and 1000 keys: 2, 24 and 63 splits of 16; 16 rows of
 * 384 keys: 12 splits of 32, half of each block's keys masked), whole 64-key chunks (batch 32 at 384
 * and 1500 keys: 6 and 24 splits of 64) and several chunks a split (batch 1 at 5000 keys: 40 splits
 * of 128), and 3 tokens a row (4 rows, 700 keys); each also replayed from a CUDA graph, which must
 * give the same bits. */
START_TEST(test_cuda_attention_grouped_regimes_match_float64_reference) {
    an_ctx *ctx = gpu_ctx(7, "cuda grouped decode attention");
    if (!ctx) return;
    const struct { int64_t B, T, S; } cases[] = {{1, 1, 20}, {1, 1, 384}, {1, 1, 1000}, {16, 1, 384}, {32, 1, 384}, {32, 1, 1500}, {1, 1, 5000}, {4, 3, 700}};
    char what[128];
    for (int d = 0; d < N_DTYPES; d++)
        for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
            an_dtype dtype = float_dtypes[d];
            if (dtype == AN_F32) continue; /* the grouped kernel takes bf16 and f16 */
            int64_t B = cases[c].B, T = cases[c].T, S = cases[c].S, Hq = 12, Hkv = 2, D = 128, Bc = B + 2;
            int64_t *rows = malloc((size_t)B * sizeof *rows), *lengths = malloc((size_t)Bc * sizeof *lengths);
            for (int64_t i = 0; i < Bc; i++) lengths[i] = (S - T) - (i * 37) % (S - T); /* 1 .. S - T keys held */
            lengths[Bc - 1] = 0;
            for (int64_t b = 0; b < B; b++) rows[b] = (b * 5 + 3) % Bc; /* scattered, the empty row included */
            decode_case dc = decode_case_new(ctx, dtype, B, T, Hq, Hkv, D, S, Bc, rows, lengths);
            snprintf(what, sizeof what, "grouped decode %s B %lld T %lld S %lld", an_dtype_name(dtype), (long long)B,
                     (long long)T, (long long)S);
            an_tensor_release(decode_check(ctx, &dc, 2, what));
            decode_case_free(&dc);
            free(rows), free(lengths);
        }
    test_ctx_free(ctx);
}
END_TEST

/* ---- the autograd op on CUDA tensors ---- */

/* loss = sum(attention(q, k, v) * w): the output gradient is w on both devices. */
static an_tensor *attention_loss(an_ctx *ctx, an_tensor *q, an_tensor *k, an_tensor *v, an_tensor *seg, an_tensor *w,
                                 double scale, an_tensor **out) {
    *out = an_attention(ctx, q, k, v, seg, scale);
    ck_assert_msg(*out != NULL, "attention: %s", an_error_message(ctx));
    an_tensor *m = an_mul(ctx, *out, w);
    an_tensor *loss = an_sum(ctx, m);
    ck_assert_msg(loss != NULL, "loss: %s", an_error_message(ctx));
    an_tensor_release(m);
    return loss;
}

START_TEST(test_cuda_attention_op_forward_and_backward_match_cpu_op) {
    an_ctx *ctx = gpu_ctx(4, "cuda attention op");
    if (!ctx) return;
    const dims op_shapes[] = {{2, 33, 4, 2, 32, SEG_RUNS_I32}, {1, 70, 6, 6, 64, SEG_NONE}, {2, 9, 12, 2, 128, SEG_RUNS}};
    char what[160];
    for (int d = 0; d < N_DTYPES; d++)
        for (size_t z = 0; z < sizeof op_shapes / sizeof *op_shapes; z++) {
            an_dtype dtype = float_dtypes[d];
            dims s = op_shapes[z];
            int64_t qs[4] = {s.B, s.T, s.Hq, s.D}, ks[4] = {s.B, s.T, s.Hkv, s.D};
            an_tensor *cpu[4], *gpu[4];
            const int64_t *shape_of[4] = {qs, ks, ks, qs};
            for (int i = 0; i < 4; i++) {
                cpu[i] = test_uniform(ctx, dtype, 4, shape_of[i], -2, 2, i < 3);
                gpu[i] = an_tensor_to(ctx, cpu[i], dtype, AN_CUDA);
                ck_assert_ptr_nonnull(gpu[i]);
                an_tensor_set_requires_grad(gpu[i], i < 3);
            }
            an_tensor *seg_dev, *seg_cpu = NULL;
            int64_t *seg = random_segments(ctx, s.B, s.T, s.seg, &seg_dev);
            if (seg_dev) seg_cpu = an_tensor_to(ctx, seg_dev, seg_dev->dtype, AN_CPU);
            double scale = 0.7 / sqrt((double)s.D);
            an_tensor *out_cpu, *out_gpu;
            /* one graph at a time: backward clears the whole tape */
            an_tensor *loss_cpu = attention_loss(ctx, cpu[0], cpu[1], cpu[2], seg_cpu, cpu[3], scale, &out_cpu);
            test_ok(ctx, an_backward(ctx, loss_cpu), "cpu backward");
            an_tensor *loss_gpu = attention_loss(ctx, gpu[0], gpu[1], gpu[2], seg_dev, gpu[3], scale, &out_gpu);
            ck_assert_int_eq(out_gpu->device, AN_CUDA);
            test_ok(ctx, an_backward(ctx, loss_gpu), "gpu backward");
            /* both sides round every op's output to the dtype: allow twice the launcher bound */
            double rtol = 2 * rtol_of(dtype);
            bool tc = an_cuda_attention_uses_tensor_cores(dtype, s.D); /* see check_shape */
            double grad_rtol = tc ? 4 * rtol : rtol, grad_norm_rtol = tc ? 2 * rtol : rtol;
            double grad_atol = tc ? 1e-5 * scale * sqrt((double)s.D) * 4 : 0;
            double *want = test_values(out_cpu);
            snprintf(what, sizeof what, "op %s T %lld D %lld: out", an_dtype_name(dtype), (long long)s.T,
                     (long long)s.D);
            expect_dev_close(ctx, out_gpu, want, rtol, rtol, 0, what);
            free(want);
            for (int i = 0; i < 3; i++) {
                ck_assert_msg(gpu[i]->grad && gpu[i]->grad->device == AN_CUDA, "gradient %d missing on the GPU", i);
                want = test_values(cpu[i]->grad);
                snprintf(what, sizeof what, "op %s T %lld D %lld: gradient of input %d", an_dtype_name(dtype),
                         (long long)s.T, (long long)s.D, i);
                expect_dev_close(ctx, gpu[i]->grad, want, grad_rtol, grad_norm_rtol, grad_atol, what);
                free(want);
            }
            an_tensor_release(loss_cpu), an_tensor_release(loss_gpu);
            an_tensor_release(out_cpu), an_tensor_release(out_gpu);
            for (int i = 0; i < 4; i++) an_tensor_release(cpu[i]), an_tensor_release(gpu[i]);
            an_tensor_release(seg_dev), an_tensor_release(seg_cpu);
            free(seg);
        }
    test_ctx_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("cuda_attention");
    test_add_case(s, "kernels", test_cuda_attention_forward_and_backward_match_float64_reference);
    test_add_case(s, "limits", test_cuda_attention_refuses_head_dim_over_256);
    test_add_case(s, "decode", test_cuda_attention_cached_matches_float64_reference);
    test_add_case(s, "decode regimes", test_cuda_attention_grouped_regimes_match_float64_reference);
    test_add_case(s, "op", test_cuda_attention_op_forward_and_backward_match_cpu_op);
    return test_run(s);
}
