/* test_cuda_decode_fused.c — the fused kernels of a decode step (kernels/decode.cu) and the
 * cached forward's fused block (model/model.c's decode rule): an_cuda_rmsnorm_gemv against a
 * float64 reference loop (norm, three projections
 * with and without bias) at 1, 3 and 8 rows, vector and scalar paths; an_cuda_rmsnorm_swiglu_gemv
 * (norm, gate, up, swiglu) at 1 to 8 rows, f32/bf16/f16, vector and scalar paths, with and
 * without biases; an_cuda_kv_rope_store, and an_cuda_qkv_rope_store from stacked q | k | v rows,
 * against bias adds + an_cuda_rope + an_cuda_kv_store bit for bit (with and without biases, NEOX
 * and interleaved, a full slot, rows out of order); an_cuda_rmsnorm_qkv_rope against
 * an_cuda_rmsnorm_gemv then an_cuda_kv_rope_store bit for bit (f32/bf16/f16, 1 to 8 rows of up to
 * 5 tokens, head dims 128, 16 and 6, vector and scalar paths, NEOX and interleaved, with and
 * without biases, slots past the capacity); and the whole cached forward of the tiny Qwen2 (q/k/v biases) and Llama fixtures,
 * prefill of odd lengths and decode steps at batch 1, 2, 3, 8 and 32, fused against op by op
 * (decode_unfused) on the GPU and against the CPU. Without a GPU every test prints SKIP. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/cpu/cpu.h" /* an_cpu_rope_inv_freq */
#include "kernels/cuda.h"
#include "model/kv_cache.h"
#include "model/load.h"
#include "support/test_util.h"


static an_tensor *to_host_f64(an_ctx *ctx, an_tensor *t) {
    an_tensor *h = an_tensor_to(ctx, t, AN_F64, AN_CPU);
    ck_assert_msg(h != NULL, "%s", an_error_message(ctx));
    return h;
}

/* The values of a host f64 tensor rounded to dtype and widened back (in place). */
static void round_to(an_ctx *ctx, an_tensor *t, an_dtype dtype) {
    an_tensor *r = an_tensor_to(ctx, t, dtype, AN_CPU), *back = r ? an_tensor_to(ctx, r, AN_F64, AN_CPU) : NULL;
    ck_assert(back != NULL);
    memcpy(an_tensor_data(t), an_tensor_data(back), an_tensor_nbytes(t));
    an_tensor_release(r), an_tensor_release(back);
}

START_TEST(test_rmsnorm_gemv_matches_float64_reference) {
    an_ctx *ctx = test_gpu_ctx(5, "cuda rmsnorm_gemv");
    if (!ctx) return;
    const an_dtype dtypes[] = {AN_F32, AN_BF16};
    const int64_t Ms[] = {1, 3, 8}, Ks[] = {64, 37, 1536};
    const int64_t ns[3] = {13, 5, 7};
    const double eps = 1e-6;
    char what[160];
    for (int di = 0; di < 2; di++)
        for (int mi = 0; mi < 3; mi++)
            for (int ki = 0; ki < 3; ki++) {
                an_dtype dt = dtypes[di];
                int64_t M = Ms[mi], K = Ks[ki];
                an_tensor *x = test_uniform(ctx, dt, 2, (int64_t[]){M, K}, -2, 2, false);
                an_tensor *nw = test_uniform(ctx, dt, 1, (int64_t[]){K}, 0.5, 1.5, false);
                an_tensor *w[3], *bias[3] = {NULL, NULL, NULL}, *y[3];
                an_tensor *xd = an_tensor_to(ctx, x, dt, AN_CUDA);
                an_tensor *nwd = an_tensor_to(ctx, nw, dt, AN_CUDA);
                an_tensor *wd[3], *bd[3] = {NULL, NULL, NULL};
                an_cuda_proj proj[3];
                for (int i = 0; i < 3; i++) {
                    w[i] = test_uniform(ctx, dt, 2, (int64_t[]){ns[i], K}, -0.5, 0.5, false);
                    if (i != 1) bias[i] = test_uniform(ctx, dt, 1, (int64_t[]){ns[i]}, -1, 1, false);
                    wd[i] = an_tensor_to(ctx, w[i], dt, AN_CUDA);
                    if (bias[i]) bd[i] = an_tensor_to(ctx, bias[i], dt, AN_CUDA);
                    y[i] = test_poisoned_gpu(ctx, dt, 2, (int64_t[]){M, ns[i]});
                    proj[i] = (an_cuda_proj){an_tensor_data(wd[i]), bd[i] ? an_tensor_data(bd[i]) : NULL,
                                             an_tensor_data(y[i]), ns[i]};
                }
                test_ok(ctx, an_cuda_rmsnorm_gemv(ctx, dt, an_tensor_data(xd), M, K, an_tensor_data(nwd), eps, proj, 3),
                        "rmsnorm_gemv");
                /* reference: x' = x * rstd * w (not rounded: the kernel applies rstd to the finished
                 * dot product), y = x' W^T + b in float64 */
                an_tensor *xh = to_host_f64(ctx, x), *nh = to_host_f64(ctx, nw);
                const double *xv = an_tensor_data(xh), *nv = an_tensor_data(nh);
                an_tensor *xn = an_tensor_new(ctx, AN_F64, AN_CPU, 2, (int64_t[]){M, K});
                double *xnv = an_tensor_data(xn);
                for (int64_t r = 0; r < M; r++) {
                    double ss = 0;
                    for (int64_t k = 0; k < K; k++) ss += xv[r * K + k] * xv[r * K + k];
                    double rstd = 1.0 / sqrt(ss / (double)K + eps);
                    for (int64_t k = 0; k < K; k++) xnv[r * K + k] = xv[r * K + k] * rstd * nv[k];
                }
                for (int i = 0; i < 3; i++) {
                    an_tensor *wh = to_host_f64(ctx, w[i]), *bh = bias[i] ? to_host_f64(ctx, bias[i]) : NULL;
                    double *want = malloc((size_t)(M * ns[i]) * sizeof *want);
                    for (int64_t r = 0; r < M; r++)
                        for (int64_t n = 0; n < ns[i]; n++) {
                            double acc = bh ? ((double *)an_tensor_data(bh))[n] : 0.0;
                            for (int64_t k = 0; k < K; k++)
                                acc += xnv[r * K + k] * ((double *)an_tensor_data(wh))[n * K + k];
                            want[r * ns[i] + n] = acc;
                        }
                    an_tensor *got = to_host_f64(ctx, y[i]);
                    snprintf(what, sizeof what, "rmsnorm_gemv %s M %lld K %lld projection %d", an_dtype_name(dt),
                             (long long)M, (long long)K, i);
                    /* one rounding of the output, fp32 sums against float64 */
                    double tol = dt == AN_F32 ? 1e-5 : 2e-2;
                    double atol = dt == AN_F32 ? 1e-5 * sqrt((double)K) : 0.05 * sqrt((double)K) / 8;
                    test_assert_close(got, want, tol, atol, what);
                    free(want);
                    an_tensor_release(got), an_tensor_release(wh), an_tensor_release(bh);
                }
                an_tensor_release(xn), an_tensor_release(xh), an_tensor_release(nh);
                for (int i = 0; i < 3; i++)
                    an_tensor_release(w[i]), an_tensor_release(bias[i]), an_tensor_release(wd[i]),
                        an_tensor_release(bd[i]), an_tensor_release(y[i]);
                an_tensor_release(x), an_tensor_release(nw), an_tensor_release(xd), an_tensor_release(nwd);
            }
    test_ctx_free(ctx);
}
END_TEST

/* an_cuda_rmsnorm_swiglu_gemv against float64: g = rstd sum_k Wg (x w) + bg and u likewise, each
 * rounded to the dtype, then silu(g) u; every row count 1-8 (register widths 1, 2, 4, 8), vector
 * (K 64, 1536) and scalar (K 37) paths, biases on both, one or neither. */
START_TEST(test_rmsnorm_swiglu_gemv_matches_float64_reference) {
    an_ctx *ctx = test_gpu_ctx(6, "cuda rmsnorm_swiglu_gemv");
    if (!ctx) return;
    const an_dtype dtypes[] = {AN_F32, AN_BF16, AN_F16};
    const int64_t Ks[] = {64, 37, 1536}, N = 301;
    const double eps = 1e-6;
    char what[160];
    for (int di = 0; di < 3; di++)
        for (int64_t M = 1; M <= AN_CUDA_GEMV_MAX_ROWS; M++)
            for (int ki = 0; ki < 3; ki++) {
                an_dtype dt = dtypes[di];
                int64_t K = Ks[ki];
                int biases = (int)((M + ki) % 3); /* 0: none; 1: gate only; 2: both */
                an_tensor *x = test_uniform(ctx, dt, 2, (int64_t[]){M, K}, -2, 2, false);
                an_tensor *nw = test_uniform(ctx, dt, 1, (int64_t[]){K}, 0.5, 1.5, false);
                an_tensor *w[2], *b[2] = {NULL, NULL}, *wd[2], *bd[2] = {NULL, NULL};
                for (int i = 0; i < 2; i++) {
                    w[i] = test_uniform(ctx, dt, 2, (int64_t[]){N, K}, -0.5, 0.5, false);
                    wd[i] = an_tensor_to(ctx, w[i], dt, AN_CUDA);
                    if (biases > i) {
                        b[i] = test_uniform(ctx, dt, 1, (int64_t[]){N}, -1, 1, false);
                        bd[i] = an_tensor_to(ctx, b[i], dt, AN_CUDA);
                    }
                }
                an_tensor *xd = an_tensor_to(ctx, x, dt, AN_CUDA), *nwd = an_tensor_to(ctx, nw, dt, AN_CUDA);
                an_tensor *act = test_poisoned_gpu(ctx, dt, 2, (int64_t[]){M, N});
                test_ok(ctx, an_cuda_rmsnorm_swiglu_gemv(ctx, dt, an_tensor_data(xd), M, K, an_tensor_data(nwd), eps,
                                                         an_tensor_data(wd[0]), bd[0] ? an_tensor_data(bd[0]) : NULL,
                                                         an_tensor_data(wd[1]), bd[1] ? an_tensor_data(bd[1]) : NULL, N,
                                                         an_tensor_data(act)),
                        "rmsnorm_swiglu_gemv");
                an_tensor *xh = to_host_f64(ctx, x), *nh = to_host_f64(ctx, nw), *wh[2], *bh[2] = {NULL, NULL};
                for (int i = 0; i < 2; i++) wh[i] = to_host_f64(ctx, w[i]), bh[i] = b[i] ? to_host_f64(ctx, b[i]) : NULL;
                const double *xv = an_tensor_data(xh), *nv = an_tensor_data(nh);
                an_tensor *gu[2] = {an_tensor_new(ctx, AN_F64, AN_CPU, 2, (int64_t[]){M, N}),
                                    an_tensor_new(ctx, AN_F64, AN_CPU, 2, (int64_t[]){M, N})};
                for (int64_t r = 0; r < M; r++) {
                    double ss = 0;
                    for (int64_t k = 0; k < K; k++) ss += xv[r * K + k] * xv[r * K + k];
                    double rstd = 1.0 / sqrt(ss / (double)K + eps);
                    for (int i = 0; i < 2; i++)
                        for (int64_t n = 0; n < N; n++) {
                            double acc = 0;
                            for (int64_t k = 0; k < K; k++)
                                acc += ((double *)an_tensor_data(wh[i]))[n * K + k] * xv[r * K + k] * nv[k];
                            ((double *)an_tensor_data(gu[i]))[r * N + n] =
                                acc * rstd + (bh[i] ? ((double *)an_tensor_data(bh[i]))[n] : 0.0);
                        }
                }
                round_to(ctx, gu[0], dt), round_to(ctx, gu[1], dt);
                double *want = malloc((size_t)(M * N) * sizeof *want);
                for (int64_t i = 0; i < M * N; i++) {
                    double g = ((double *)an_tensor_data(gu[0]))[i], u = ((double *)an_tensor_data(gu[1]))[i];
                    want[i] = g / (1.0 + exp(-g)) * u;
                }
                an_tensor *got = to_host_f64(ctx, act);
                snprintf(what, sizeof what, "rmsnorm_swiglu_gemv %s M %lld K %lld biases %d", an_dtype_name(dt),
                         (long long)M, (long long)K, biases);
                /* gate and up may round the other way where fp32 and float64 sums straddle a tie */
                double tol = dt == AN_F32 ? 1e-5 : dt == AN_BF16 ? 2e-2 : 4e-3;
                double atol = dt == AN_F32 ? 1e-5 * sqrt((double)K) : 0.05 * sqrt((double)K) / 8;
                test_assert_close(got, want, tol, atol, what);
                free(want);
                an_tensor_release(got), an_tensor_release(gu[0]), an_tensor_release(gu[1]);
                an_tensor_release(xh), an_tensor_release(nh), an_tensor_release(act);
                for (int i = 0; i < 2; i++)
                    an_tensor_release(w[i]), an_tensor_release(b[i]), an_tensor_release(wd[i]), an_tensor_release(bd[i]),
                        an_tensor_release(wh[i]), an_tensor_release(bh[i]);
                an_tensor_release(x), an_tensor_release(nw), an_tensor_release(xd), an_tensor_release(nwd);
            }
    test_ctx_free(ctx);
}
END_TEST

/* Raw bytes of a device tensor equal those of another. */
static void expect_same_bits(an_ctx *ctx, an_tensor *a, an_tensor *b, const char *what) {
    an_tensor *ha = an_tensor_to(ctx, a, a->dtype, AN_CPU), *hb = an_tensor_to(ctx, b, b->dtype, AN_CPU);
    ck_assert(ha && hb);
    ck_assert_msg(memcmp(an_tensor_data(ha), an_tensor_data(hb), an_tensor_nbytes(ha)) == 0, "%s: bits differ", what);
    an_tensor_release(ha), an_tensor_release(hb);
}

/* Two device copies of a random (Bc, S, Hkv, D) cache for k and for v (index 0: the path under
 * test, 1: the reference path), and the row table (B) and lengths (Bc) on both devices. */
typedef struct {
    an_tensor *host;           /* (Bc, S, Hkv, D) */
    an_tensor *kc[2], *vc[2];  /* device copies of host */
    an_tensor *r, *len;        /* host (B), (Bc) */
    an_tensor *rd, *ld;        /* device copies */
} cache_pair;

static cache_pair cache_pair_new(an_ctx *ctx, an_dtype dt, int64_t Bc, int64_t S, int64_t Hkv, int64_t D, int64_t B,
                                 const int64_t *rows, const int64_t *lengths) {
    cache_pair c;
    c.host = test_uniform(ctx, dt, 4, (int64_t[]){Bc, S, Hkv, D}, -2, 2, false);
    for (int i = 0; i < 2; i++) c.kc[i] = an_tensor_to(ctx, c.host, dt, AN_CUDA), c.vc[i] = an_tensor_to(ctx, c.host, dt, AN_CUDA);
    c.r = an_tensor_from_data(ctx, AN_I64, 1, (int64_t[]){B}, rows);
    c.len = an_tensor_from_data(ctx, AN_I64, 1, (int64_t[]){Bc}, lengths);
    c.rd = an_tensor_to(ctx, c.r, AN_I64, AN_CUDA), c.ld = an_tensor_to(ctx, c.len, AN_I64, AN_CUDA);
    ck_assert(c.kc[0] && c.kc[1] && c.vc[0] && c.vc[1] && c.rd && c.ld);
    return c;
}

static void cache_pair_release(cache_pair *c) {
    an_tensor *t[] = {c->host, c->kc[0], c->kc[1], c->vc[0], c->vc[1], c->r, c->len, c->rd, c->ld};
    for (size_t i = 0; i < sizeof t / sizeof *t; i++) an_tensor_release(t[i]);
}

START_TEST(test_kv_rope_store_equals_rope_then_store) {
    an_ctx *ctx = test_gpu_ctx(6, "cuda kv_rope_store");
    if (!ctx) return;
    const an_dtype dtypes[] = {AN_F32, AN_BF16};
    const int64_t Ds[] = {16, 128, 6};
    const int64_t Bc = 3, S = 40, B = 3, Hq = 6, Hkv = 2;
    const int64_t rows[3] = {2, 0, 1}, lengths[3] = {3, 0, 38}; /* row 2 fills its last slots */
    an_rope_config rc = {.style = AN_ROPE_NEOX, .theta = 10000.0};
    char what[128];
    for (int di = 0; di < 2; di++)
        for (int zi = 0; zi < 3; zi++)
            for (int64_t T = 1; T <= 5; T += 4)
                for (int style = 0; style < 2; style++) {
                    an_dtype dt = dtypes[di];
                    int64_t D = Ds[zi];
                    rc.style = style ? AN_ROPE_INTERLEAVED : AN_ROPE_NEOX;
                    double inv[AN_CUDA_ROPE_MAX_D / 2];
                    an_cpu_rope_inv_freq(&rc, D, inv);
                    an_tensor *qh = test_uniform(ctx, dt, 4, (int64_t[]){B, T, Hq, D}, -2, 2, false);
                    an_tensor *kh = test_uniform(ctx, dt, 4, (int64_t[]){B, T, Hkv, D}, -2, 2, false);
                    an_tensor *vh = test_uniform(ctx, dt, 4, (int64_t[]){B, T, Hkv, D}, -2, 2, false);
                    cache_pair cp = cache_pair_new(ctx, dt, Bc, S, Hkv, D, B, rows, lengths);
                    an_tensor *ch = cp.host, *kc1 = cp.kc[1], *kc2 = cp.kc[0], *vc1 = cp.vc[1], *vc2 = cp.vc[0];
                    an_tensor *rd = cp.rd, *ld = cp.ld;
                    an_tensor *q1 = an_tensor_to(ctx, qh, dt, AN_CUDA), *q2 = an_tensor_to(ctx, qh, dt, AN_CUDA);
                    an_tensor *k = an_tensor_to(ctx, kh, dt, AN_CUDA), *v = an_tensor_to(ctx, vh, dt, AN_CUDA);
                    an_tensor *pos = an_tensor_new(ctx, AN_I64, AN_CUDA, 2, (int64_t[]){B, T});
                    an_tensor *kr = an_tensor_new(ctx, dt, AN_CUDA, 4, kh->shape);
                    ck_assert(q1 && q2 && k && v && pos && kr);
                    /* with biases (every other case): the unfused path adds them first, into copies */
                    an_tensor *bh[3] = {NULL, NULL, NULL}, *bdv[3] = {NULL, NULL, NULL};
                    an_tensor *k1 = an_tensor_to(ctx, kh, dt, AN_CUDA), *v1 = an_tensor_to(ctx, vh, dt, AN_CUDA);
                    ck_assert(k1 && v1);
                    if ((T + style + zi) % 2 == 0) {
                        an_tensor *targets[3] = {q1, k1, v1};
                        int64_t widths[3] = {Hq * D, Hkv * D, Hkv * D};
                        for (int i = 0; i < 3; i++) {
                            bh[i] = test_uniform(ctx, dt, 1, (int64_t[]){widths[i]}, -1, 1, false);
                            bdv[i] = an_tensor_to(ctx, bh[i], dt, AN_CUDA);
                            ck_assert(bdv[i] != NULL);
                            test_ok(ctx, an_cuda_binary(ctx, AN_BINARY_ADD, dt, an_tensor_data(targets[i]),
                                                        an_tensor_numel(targets[i]), an_tensor_data(bdv[i]), widths[i],
                                                        an_tensor_data(targets[i])),
                                    "bias add");
                        }
                    }
                    /* unfused: (bias adds,) positions, rope q in place, rope k, store */
                    test_ok(ctx, an_cuda_kv_positions(ctx, an_tensor_data(rd), an_tensor_data(ld), B, T, an_tensor_data(pos)),
                            "positions");
                    test_ok(ctx, an_cuda_rope(ctx, dt, an_tensor_data(q1), an_tensor_data(pos), AN_I64, B * T, Hq, D, inv,
                                              style, 1.0, an_tensor_data(q1)),
                            "rope q");
                    test_ok(ctx, an_cuda_rope(ctx, dt, an_tensor_data(k1), an_tensor_data(pos), AN_I64, B * T, Hkv, D, inv,
                                              style, 1.0, an_tensor_data(kr)),
                            "rope k");
                    test_ok(ctx, an_cuda_kv_store(ctx, an_tensor_data(kr), an_tensor_data(v1), an_tensor_data(kc1),
                                                  an_tensor_data(vc1), an_tensor_data(rd), an_tensor_data(ld), B, T, S,
                                                  (size_t)(Hkv * D) * an_dtype_size(dt)),
                            "store");
                    test_ok(ctx, an_cuda_kv_rope_store(ctx, dt, an_tensor_data(q2), an_tensor_data(k), an_tensor_data(v),
                                                       bdv[0] ? an_tensor_data(bdv[0]) : NULL,
                                                       bdv[1] ? an_tensor_data(bdv[1]) : NULL,
                                                       bdv[2] ? an_tensor_data(bdv[2]) : NULL, an_tensor_data(kc2),
                                                       an_tensor_data(vc2), an_tensor_data(rd),
                                                       an_tensor_data(ld), B, T, Hq, Hkv, D, S, inv, style),
                            "rope_store");
                    snprintf(what, sizeof what, "kv_rope_store %s D %lld T %lld %s%s", an_dtype_name(dt), (long long)D,
                             (long long)T, style ? "interleaved" : "neox", bh[0] ? " with biases" : "");
                    expect_same_bits(ctx, q2, q1, what);
                    expect_same_bits(ctx, kc2, kc1, what);
                    expect_same_bits(ctx, vc2, vc1, what);
                    /* and something was written: the fresh cache differs from the rotated one */
                    an_tensor *orig = an_tensor_to(ctx, ch, dt, AN_CUDA);
                    an_tensor *h1 = to_host_f64(ctx, orig), *h2 = to_host_f64(ctx, kc2);
                    ck_assert_msg(memcmp(an_tensor_data(h1), an_tensor_data(h2), an_tensor_nbytes(h1)) != 0,
                                  "%s: nothing stored", what);
                    an_tensor_release(h1), an_tensor_release(h2), an_tensor_release(orig);
                    /* the same from one stacked q | k | v GEMM output: the same bits, q into its own tensor */
                    int64_t W = (Hq + 2 * Hkv) * D, parts[3] = {Hq * D, Hkv * D, Hkv * D};
                    an_tensor *qkvh = an_tensor_new(ctx, dt, AN_CPU, 3, (int64_t[]){B, T, W});
                    an_tensor *src[3] = {qh, kh, vh};
                    size_t el = an_dtype_size(dt);
                    for (int64_t i = 0, at = 0; i < B * T; i++)
                        for (int j = 0; j < 3; j++) {
                            memcpy((char *)an_tensor_data(qkvh) + (size_t)at * el,
                                   (char *)an_tensor_data(src[j]) + (size_t)(i * parts[j]) * el, (size_t)parts[j] * el);
                            at += parts[j];
                        }
                    an_tensor *qkv = an_tensor_to(ctx, qkvh, dt, AN_CUDA), *q3 = test_poisoned_gpu(ctx, dt, 4, qh->shape);
                    an_tensor *kc3 = an_tensor_to(ctx, ch, dt, AN_CUDA), *vc3 = an_tensor_to(ctx, ch, dt, AN_CUDA);
                    ck_assert(qkv && q3 && kc3 && vc3);
                    test_ok(ctx, an_cuda_qkv_rope_store(ctx, dt, an_tensor_data(qkv), an_tensor_data(q3),
                                                        bdv[0] ? an_tensor_data(bdv[0]) : NULL,
                                                        bdv[1] ? an_tensor_data(bdv[1]) : NULL,
                                                        bdv[2] ? an_tensor_data(bdv[2]) : NULL, an_tensor_data(kc3),
                                                        an_tensor_data(vc3), an_tensor_data(rd), an_tensor_data(ld), B, T,
                                                        Hq, Hkv, D, S, inv, style),
                            "qkv_rope_store");
                    snprintf(what + strlen(what), sizeof what - strlen(what), " (stacked q|k|v)");
                    expect_same_bits(ctx, q3, q1, what);
                    expect_same_bits(ctx, kc3, kc1, what);
                    expect_same_bits(ctx, vc3, vc1, what);
                    an_tensor_release(qkvh), an_tensor_release(qkv), an_tensor_release(q3);
                    an_tensor_release(kc3), an_tensor_release(vc3);
                    an_tensor *tens[] = {qh, kh, vh, q1, q2, k, v, pos, kr, k1, v1, bh[0], bh[1], bh[2], bdv[0], bdv[1], bdv[2]};
                    for (size_t i = 0; i < sizeof tens / sizeof *tens; i++) an_tensor_release(tens[i]);
                    cache_pair_release(&cp);
                }
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_rmsnorm_qkv_rope_equals_gemv_then_rope_store) {
    an_ctx *ctx = test_gpu_ctx(8, "cuda rmsnorm_qkv_rope");
    if (!ctx) return;
    const an_dtype dtypes[] = {AN_F32, AN_BF16, AN_F16};
    const int64_t Ds[] = {128, 16, 6}; /* 6: 9 q pairs (a partial block of 4), 3 k pairs */
    const int64_t Ks[] = {1536, 64, 37}; /* 37: the scalar path */
    const int64_t steps[][2] = {{1, 1}, {3, 1}, {2, 3}, {8, 1}, {1, 5}}; /* (B, T) */
    const int64_t Bc = 8, S = 40, Hq = 6, Hkv = 2;
    const int64_t rows_all[8] = {2, 0, 5, 1, 7, 3, 6, 4}, lengths[8] = {3, 0, 38, 17, 1, 39, 9, 22}; /* 2, 5 fill up */
    an_rope_config rc = {.style = AN_ROPE_NEOX, .theta = 10000.0};
    const double eps = 1e-6;
    char what[160];
    int n_case = 0;
    for (int di = 0; di < 3; di++)
        for (int zi = 0; zi < 3; zi++)
            for (int si = 0; si < 5; si++)
                for (int style = 0; style < 2; style++, n_case++) {
                    an_dtype dt = dtypes[di];
                    int64_t D = Ds[zi], K = Ks[(zi + si) % 3], B = steps[si][0], T = steps[si][1], M = B * T;
                    rc.style = style ? AN_ROPE_INTERLEAVED : AN_ROPE_NEOX;
                    double inv[AN_CUDA_ROPE_MAX_D / 2];
                    an_cpu_rope_inv_freq(&rc, D, inv);
                    int64_t ns[3] = {Hq * D, Hkv * D, Hkv * D};
                    bool biased = n_case % 2 == 0;
                    an_tensor *xh = test_uniform(ctx, dt, 2, (int64_t[]){M, K}, -2, 2, false);
                    an_tensor *nwh = test_uniform(ctx, dt, 1, (int64_t[]){K}, 0.5, 1.5, false);
                    cache_pair cp = cache_pair_new(ctx, dt, Bc, S, Hkv, D, B, rows_all, lengths);
                    an_tensor *ch = cp.host, *kc1 = cp.kc[1], *kc2 = cp.kc[0], *vc1 = cp.vc[1], *vc2 = cp.vc[0];
                    an_tensor *rd = cp.rd, *ld = cp.ld;
                    an_tensor *x = an_tensor_to(ctx, xh, dt, AN_CUDA), *nw = an_tensor_to(ctx, nwh, dt, AN_CUDA);
                    an_tensor *wh[3], *w[3], *bh[3] = {NULL, NULL, NULL}, *bd[3] = {NULL, NULL, NULL}, *y1[3];
                    ck_assert(x && nw);
                    an_cuda_proj p1[3], p2[3];
                    for (int i = 0; i < 3; i++) {
                        wh[i] = test_uniform(ctx, dt, 2, (int64_t[]){ns[i], K}, -0.5, 0.5, false);
                        w[i] = an_tensor_to(ctx, wh[i], dt, AN_CUDA);
                        if (biased) {
                            bh[i] = test_uniform(ctx, dt, 1, (int64_t[]){ns[i]}, -1, 1, false);
                            bd[i] = an_tensor_to(ctx, bh[i], dt, AN_CUDA);
                        }
                        y1[i] = test_poisoned_gpu(ctx, dt, 2, (int64_t[]){M, ns[i]});
                        ck_assert(w[i] && y1[i] && (!biased || bd[i]));
                        p1[i] = (an_cuda_proj){an_tensor_data(w[i]), bd[i] ? an_tensor_data(bd[i]) : NULL,
                                               an_tensor_data(y1[i]), ns[i]};
                        p2[i] = p1[i];
                        p2[i].y = NULL;
                    }
                    an_tensor *q2 = test_poisoned_gpu(ctx, dt, 2, (int64_t[]){M, ns[0]});
                    p2[0].y = an_tensor_data(q2);
                    /* two launches: the norm-GEMV with biases, then rope and store (no biases left) */
                    test_ok(ctx, an_cuda_rmsnorm_gemv(ctx, dt, an_tensor_data(x), M, K, an_tensor_data(nw), eps, p1, 3),
                            "rmsnorm_gemv");
                    test_ok(ctx, an_cuda_kv_rope_store(ctx, dt, an_tensor_data(y1[0]), an_tensor_data(y1[1]),
                                                       an_tensor_data(y1[2]), NULL, NULL, NULL, an_tensor_data(kc1),
                                                       an_tensor_data(vc1), an_tensor_data(rd), an_tensor_data(ld), B, T,
                                                       Hq, Hkv, D, S, inv, style),
                            "kv_rope_store");
                    an_cuda_kv_rope kv = {an_tensor_data(kc2), an_tensor_data(vc2), an_tensor_data(rd), an_tensor_data(ld),
                                          T, S, Hq, Hkv, D, inv, style};
                    test_ok(ctx, an_cuda_rmsnorm_qkv_rope(ctx, dt, an_tensor_data(x), M, K, an_tensor_data(nw), eps, p2, &kv),
                            "rmsnorm_qkv_rope");
                    snprintf(what, sizeof what, "rmsnorm_qkv_rope %s D %lld K %lld B %lld T %lld %s%s", an_dtype_name(dt),
                             (long long)D, (long long)K, (long long)B, (long long)T, style ? "interleaved" : "neox",
                             biased ? " with biases" : "");
                    expect_same_bits(ctx, q2, y1[0], what);
                    expect_same_bits(ctx, kc2, kc1, what);
                    expect_same_bits(ctx, vc2, vc1, what);
                    /* and both caches were written: they differ from the fresh one */
                    an_tensor *h0 = to_host_f64(ctx, ch), *hk = to_host_f64(ctx, kc2), *hv = to_host_f64(ctx, vc2);
                    ck_assert_msg(memcmp(an_tensor_data(h0), an_tensor_data(hk), an_tensor_nbytes(h0)) != 0 &&
                                      memcmp(an_tensor_data(h0), an_tensor_data(hv), an_tensor_nbytes(h0)) != 0,
                                  "%s: nothing stored", what);
                    an_tensor_release(h0), an_tensor_release(hk), an_tensor_release(hv);
                    an_tensor *tens[] = {xh, nwh, x, nw, q2};
                    for (size_t i = 0; i < sizeof tens / sizeof *tens; i++) an_tensor_release(tens[i]);
                    cache_pair_release(&cp);
                    for (int i = 0; i < 3; i++)
                        an_tensor_release(wh[i]), an_tensor_release(w[i]), an_tensor_release(bh[i]),
                            an_tensor_release(bd[i]), an_tensor_release(y1[i]);
                }
    test_ctx_free(ctx);
}
END_TEST

/* Hidden states of a prefill of T0 tokens and 3 decode steps of B rows on `m` with a fresh cache:
 * (4, B, H) f64 on the host, steps stacked. */
static an_tensor *cached_run(an_ctx *ctx, an_model *m, int64_t B, int64_t T0, const int32_t *ids_all) {
    an_kv_cache *cache = NULL;
    test_ok(ctx, an_kv_cache_create(ctx, m, B, T0 + 4, &cache), "cache");
    int64_t H = m->config.hidden_size;
    an_tensor *out = an_tensor_new(ctx, AN_F64, AN_CPU, 3, (int64_t[]){4, B, H});
    int64_t *rows = malloc((size_t)B * sizeof *rows);
    for (int64_t b = 0; b < B; b++) rows[b] = B - 1 - b; /* entries in reverse row order */
    an_tensor *r = an_tensor_from_data(ctx, AN_I64, 1, (int64_t[]){B}, rows);
    an_no_grad_begin(ctx);
    for (int s = 0; s < 4; s++) {
        int64_t T = s == 0 ? T0 : 1;
        an_tensor *ih = an_tensor_from_data(ctx, AN_I32, 2, (int64_t[]){B, T}, ids_all + (s == 0 ? 0 : B * T0 + (s - 1) * B));
        an_tensor *ids = an_tensor_to(ctx, ih, AN_I32, m->embed_tokens->device);
        an_tensor *hid = an_model_forward_cached(ctx, m, ids, r, cache);
        ck_assert_msg(hid != NULL, "forward_cached: %s", an_error_message(ctx));
        an_tensor *hh = to_host_f64(ctx, hid);
        for (int64_t b = 0; b < B; b++)
            memcpy((double *)an_tensor_data(out) + (s * B + b) * H, (double *)an_tensor_data(hh) + (b * T + T - 1) * H,
                   (size_t)H * sizeof(double));
        an_tensor_release(hh), an_tensor_release(hid), an_tensor_release(ids), an_tensor_release(ih);
    }
    an_no_grad_end(ctx);
    an_tensor_release(r);
    free(rows);
    an_kv_cache_free(cache);
    return out;
}

static void check_model(const char *family, an_dtype dtype, double tol_fused, double tol_cpu) {
    an_ctx *ctx = test_gpu_ctx(7, "cuda fused decode block");
    if (!ctx) return;
    an_model *gpu = test_fixture_model(ctx, family, dtype, AN_CUDA), *cpu = test_fixture_model(ctx, family, AN_F32, AN_CPU);
    const int64_t batches[] = {1, 2, 3, 8, 32}; /* GEMV at 1-2 rows, gemm_decode at 3-16, cuBLASLt past */
    for (int bi = 0; bi < 5; bi++) {
        int64_t B = batches[bi], T0 = 7 + 2 * bi; /* odd prompt lengths */
        int64_t n = B * T0 + 3 * B;
        int32_t *ids = malloc((size_t)n * sizeof *ids);
        for (int64_t i = 0; i < n; i++) ids[i] = (int32_t)((i * 2654435761u + 17) % (uint64_t)gpu->config.vocab_size);
        gpu->decode_unfused = false;
        an_tensor *fused = cached_run(ctx, gpu, B, T0, ids);
        test_ok(ctx, an_cuda_set_pdl(ctx, 0), "pdl off");
        an_tensor *no_pdl = cached_run(ctx, gpu, B, T0, ids); /* the launch attribute changes no value */
        test_ok(ctx, an_cuda_set_pdl(ctx, 1), "pdl on");
        ck_assert_msg(test_scaled_error(no_pdl, fused) == 0.0, "%s batch %lld: PDL off differs", family, (long long)B);
        an_tensor_release(no_pdl);
        gpu->decode_unfused = true;
        an_tensor *plain = cached_run(ctx, gpu, B, T0, ids);
        gpu->decode_unfused = false;
        an_tensor *ref = cached_run(ctx, cpu, B, T0, ids);
        double e_fused = test_scaled_error(fused, plain), e_cpu = test_scaled_error(fused, ref),
               e_plain = test_scaled_error(plain, ref);
        printf("%s %s batch %lld: fused vs op by op %.2e, fused vs cpu %.2e (op by op vs cpu %.2e)\n", family,
               an_dtype_name(dtype), (long long)B, e_fused, e_cpu, e_plain);
        ck_assert_msg(e_fused < tol_fused, "%s batch %lld: fused vs op by op %.3e", family, (long long)B, e_fused);
        ck_assert_msg(e_cpu < tol_cpu, "%s batch %lld: fused vs cpu %.3e", family, (long long)B, e_cpu);
        an_tensor_release(fused), an_tensor_release(plain), an_tensor_release(ref);
        free(ids);
    }
    an_model_free(gpu), an_model_free(cpu);
    test_ctx_free(ctx);
}

START_TEST(test_fused_block_qwen2_f32) { check_model("qwen2", AN_F32, 1e-5, 1e-4); }
END_TEST
START_TEST(test_fused_block_llama_f32) { check_model("llama", AN_F32, 1e-5, 1e-4); }
END_TEST
START_TEST(test_fused_block_qwen2_bf16) { check_model("qwen2", AN_BF16, 3e-2, 1e-1); }
END_TEST
START_TEST(test_fused_block_llama_bf16) { check_model("llama", AN_BF16, 3e-2, 1e-1); }
END_TEST

int main(void) {
    Suite *s = suite_create("cuda_decode_fused");
    test_add_case(s, "rmsnorm_gemv", test_rmsnorm_gemv_matches_float64_reference);
    test_add_case(s, "rmsnorm_swiglu_gemv", test_rmsnorm_swiglu_gemv_matches_float64_reference);
    test_add_case(s, "kv_rope_store", test_kv_rope_store_equals_rope_then_store);
    test_add_case(s, "rmsnorm_qkv_rope", test_rmsnorm_qkv_rope_equals_gemv_then_rope_store);
    test_add_case(s, "fused_block_qwen2_f32", test_fused_block_qwen2_f32);
    test_add_case(s, "fused_block_llama_f32", test_fused_block_llama_f32);
    test_add_case(s, "fused_block_qwen2_bf16", test_fused_block_qwen2_bf16);
    test_add_case(s, "fused_block_llama_bf16", test_fused_block_llama_bf16);
    return test_run(s);
}
