/* test_cuda_adamw.c — AdamW and the gradient norm on CUDA (kernels/adamw.cu, wired through
 * src/optim): the one-launch update over a table of segments (sizes around the chunk, mixed
 * dtypes, misaligned starts) against this file's own float64 transcription of src/optim/adamw.c's
 * loop (bit for bit, param output poisoned first), the one-launch sum of squares against a float64
 * sum (within 1e-12 relative, and bit-identical when repeated), and whole optimizers stepping the same
 * tiny problem on both devices — bf16 parameters with fp32 masters (whole and as two slices), f16
 * and f32 parameters, decay and no-decay, a warmup schedule — for several steps:
 * - without clipping, every parameter, master and moment is bit-identical to the CPU's;
 * - with clipping, the reported norms agree to 1e-12 (the GPU sums squares in another fixed order)
 *   and the state within 1e-6 relative (masters, moments) and one ulp (bf16/f16 parameters).
 * Also: clip_grad_norm on CUDA gradients, and a NaN gradient on the GPU is an error that changes
 * nothing. The update in backward (src/optim/in_backward.c, on the side stream) keeps every bit
 * of the step after backward on a small bf16 network, and the float64 sum of its chunk partials
 * matches a host sum in one or two levels. Without a GPU (or in a build without CUDA) every test prints SKIP and passes. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda.h"  /* an_cuda_adamw_multi, an_cuda_sum_squares_multi, an_cuda_sum_doubles */
#include "optim/optim.h"
#include "support/test_util.h"
#include "support/update_in_backward.h"

static an_ctx *gpu_ctx(uint64_t seed, const char *what) {
    an_ctx *ctx = test_gpu_ctx(seed, what);
    fflush(stdout);
    return ctx;
}

/* Bytes of a tensor on either device, on the host (caller frees). */
static void *bytes_of(an_ctx *ctx, const an_tensor *t) {
    size_t n = an_tensor_nbytes(t);
    void *b = malloc(n ? n : 1);
    test_ok(ctx, an_cuda_memcpy(ctx, b, AN_CPU, an_tensor_data(t), t->device, n), "download");
    return b;
}

static an_tensor *upload(an_ctx *ctx, const an_tensor *t) {
    an_tensor *d = an_tensor_to(ctx, t, t->dtype, AN_CUDA);
    ck_assert_msg(d != NULL, "upload: %s", an_error_message(ctx));
    return d;
}

/* src/optim/adamw.c's element update, transcribed (this file is C11: no contraction). */
static void reference_update(const an_adamw_scalars *k, float *master, float *exp_avg, float *exp_avg_sq, float g32) {
    double g = (double)g32 * k->grad_scale;
    double p = (double)*master * k->decay;
    double m = *exp_avg, v = *exp_avg_sq;
    *exp_avg = (float)(m + (1 - k->beta1) * (g - m));
    *exp_avg_sq = (float)(k->beta2 * v + (1 - k->beta2) * g * g);
    double denom = sqrt((double)*exp_avg_sq) / k->bc2_sqrt + k->eps;
    *master = (float)(p - k->step_size * (double)*exp_avg / denom);
}

/* ---- many tensors in one launch ---- */

/* A table of segments on the device: sizes around the chunk and the 8-element group, mixed grad
 * and parameter dtypes, decay and no decay, and offsets of 1..3 elements into their buffers (so
 * some segments take the element-by-element path). Host copies keep the inputs. */
enum { N_SEG = 12 };
static const int64_t SEG_SIZES[N_SEG] = {1, 7, 8, 9, 1023, AN_ADAMW_CHUNK, AN_ADAMW_CHUNK + 1, 100003, 5, 65536,
                                         3 * AN_ADAMW_CHUNK + 17, 4096};
static const int SEG_OFFSET[N_SEG] = {0, 0, 0, 1, 0, 0, 2, 0, 3, 1, 0, 0};

typedef struct {
    an_tensor *host[4], *dev[4]; /* master, exp_avg, exp_avg_sq, grad; (n + offset) */
    an_tensor *param;            /* (n + offset) on the device, or NULL */
    an_dtype grad_dtype, param_dtype;
    int64_t n, offset;
    bool no_decay;
} multi_seg;

static an_adamw_segment *multi_make(an_ctx *ctx, multi_seg *ms, int64_t *chunks) {
    const an_dtype dtypes[] = {AN_F32, AN_BF16, AN_F16};
    an_adamw_segment table[N_SEG];
    memset(table, 0, sizeof table);
    *chunks = 0;
    for (int s = 0; s < N_SEG; s++) {
        multi_seg *m = &ms[s];
        m->n = SEG_SIZES[s], m->offset = SEG_OFFSET[s];
        m->grad_dtype = dtypes[(s + 1) % 3];
        m->param_dtype = s % 4 == 3 ? AN_F32 : dtypes[s % 3]; /* AN_F32 and s % 4 == 0: its own master */
        m->no_decay = s % 3 == 1;
        int64_t total = m->n + m->offset;
        m->host[0] = test_uniform(ctx, AN_F32, 1, &total, -1, 1, false);
        m->host[1] = test_uniform(ctx, AN_F32, 1, &total, -0.1, 0.1, false);
        m->host[2] = test_uniform(ctx, AN_F32, 1, &total, 0, 0.01, false);
        m->host[3] = test_uniform(ctx, m->grad_dtype, 1, &total, -3, 3, false);
        for (int k = 0; k < 4; k++) m->dev[k] = upload(ctx, m->host[k]);
        bool own = m->param_dtype == AN_F32 && s % 4 == 0;
        m->param = own ? NULL : an_tensor_new(ctx, m->param_dtype, AN_CUDA, 1, &total);
        if (m->param) test_ok(ctx, an_cuda_memset(ctx, an_tensor_data(m->param), 0xFF, an_tensor_nbytes(m->param)), "poison");
        size_t gs = an_dtype_size(m->grad_dtype), ps = an_dtype_size(m->param_dtype);
        table[s].master = (float *)an_tensor_data(m->dev[0]) + m->offset;
        table[s].exp_avg = (float *)an_tensor_data(m->dev[1]) + m->offset;
        table[s].exp_avg_sq = (float *)an_tensor_data(m->dev[2]) + m->offset;
        table[s].grad = (const char *)an_tensor_data(m->dev[3]) + m->offset * gs;
        table[s].param = m->param ? (char *)an_tensor_data(m->param) + m->offset * ps : NULL;
        table[s].n = m->n;
        table[s].first_chunk = *chunks;
        table[s].grad_dtype = (int32_t)m->grad_dtype, table[s].param_dtype = (int32_t)m->param_dtype;
        table[s].no_decay = m->no_decay;
        *chunks += (m->n + AN_ADAMW_CHUNK - 1) / AN_ADAMW_CHUNK;
    }
    an_adamw_segment *dev = an_mem_alloc(ctx, AN_CUDA, sizeof table);
    ck_assert_ptr_nonnull(dev);
    test_ok(ctx, an_cuda_memcpy(ctx, dev, AN_CUDA, table, AN_CPU, sizeof table), "upload the table");
    return dev;
}

static void multi_free(an_ctx *ctx, multi_seg *ms, an_adamw_segment *dev) {
    an_mem_free(ctx, AN_CUDA, dev, N_SEG * sizeof *dev);
    for (int s = 0; s < N_SEG; s++) {
        for (int k = 0; k < 4; k++) an_tensor_release(ms[s].host[k]), an_tensor_release(ms[s].dev[k]);
        an_tensor_release(ms[s].param);
    }
}

START_TEST(test_cuda_adamw_multi_is_bit_identical_to_the_cpu_formula) {
    an_ctx *ctx = gpu_ctx(6, "cuda adamw multi-tensor launch");
    if (!ctx) return;
    multi_seg ms[N_SEG];
    int64_t chunks;
    an_adamw_segment *table = multi_make(ctx, ms, &chunks);
    double t = 5, lr = 1e-2 * (1 + an_rng_uniform(&ctx->rng));
    an_adamw_scalars k = {.decay = 1 - lr * 0.1, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8,
                          .grad_scale = 0.37 + an_rng_uniform(&ctx->rng)};
    k.step_size = lr / (1 - pow(k.beta1, t));
    k.bc2_sqrt = sqrt(1 - pow(k.beta2, t));
    test_ok(ctx, an_cuda_adamw_multi(ctx, &k, table, N_SEG, chunks), "adamw_multi");
    for (int s = 0; s < N_SEG; s++) {
        multi_seg *m = &ms[s];
        an_adamw_scalars ks = k;
        if (m->no_decay) ks.decay = 1.0;
        float *hm = an_tensor_data(m->host[0]), *hmo = an_tensor_data(m->host[1]), *hv = an_tensor_data(m->host[2]);
        for (int64_t i = m->offset; i < m->n + m->offset; i++)
            reference_update(&ks, &hm[i], &hmo[i], &hv[i], (float)an_tensor_get(m->host[3], i));
        float *gm = bytes_of(ctx, m->dev[0]), *gmo = bytes_of(ctx, m->dev[1]), *gv = bytes_of(ctx, m->dev[2]);
        /* the elements before offset are outside the segment: untouched on both sides */
        for (int64_t i = 0; i < m->n + m->offset; i++)
            ck_assert_msg(memcmp(&gm[i], &hm[i], 4) == 0 && memcmp(&gmo[i], &hmo[i], 4) == 0 &&
                              memcmp(&gv[i], &hv[i], 4) == 0,
                          "segment %d (n %lld offset %lld grad %s) element %lld: GPU (%.9g %.9g %.9g) CPU (%.9g %.9g %.9g)",
                          s, (long long)m->n, (long long)m->offset, an_dtype_name(m->grad_dtype), (long long)i, gm[i],
                          gmo[i], gv[i], hm[i], hmo[i], hv[i]);
        if (m->param) {
            size_t es = an_dtype_size(m->param_dtype);
            int64_t total = m->n + m->offset;
            char *want = malloc((size_t)total * es), *got = bytes_of(ctx, m->param);
            an_dtype_convert(hm, AN_F32, want, m->param_dtype, (size_t)total);
            for (int64_t i = 0; i < total; i++) {
                bool inside = i >= m->offset;
                uint8_t poison[4] = {0xFF, 0xFF, 0xFF, 0xFF};
                ck_assert_msg(memcmp(got + i * es, inside ? want + i * es : (char *)poison, es) == 0,
                              "segment %d param %s n %lld element %lld: %.9g, master %.9g", s,
                              an_dtype_name(m->param_dtype), (long long)m->n, (long long)i,
                              an_dtype_load(got, m->param_dtype, (size_t)i), hm[i]);
            }
            free(want), free(got);
        }
        free(gm), free(gmo), free(gv);
    }
    multi_free(ctx, ms, table);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_cuda_sum_squares_multi_is_float64_and_deterministic) {
    an_ctx *ctx = gpu_ctx(7, "cuda sum_squares multi-tensor launch");
    if (!ctx) return;
    multi_seg ms[N_SEG];
    int64_t chunks;
    an_adamw_segment *table = multi_make(ctx, ms, &chunks);
    double want = 0;
    for (int s = 0; s < N_SEG; s++)
        for (int64_t i = ms[s].offset; i < ms[s].n + ms[s].offset; i++)
            want += an_tensor_get(ms[s].host[3], i) * an_tensor_get(ms[s].host[3], i);
    double *sums = an_mem_alloc(ctx, AN_CUDA, 3 * sizeof(double));
    ck_assert_ptr_nonnull(sums);
    test_ok(ctx, an_cuda_memset(ctx, sums, 0xFF, 3 * sizeof(double)), "poison");
    test_ok(ctx, an_cuda_sum_squares_multi(ctx, table, N_SEG, chunks, sums), "sum_squares_multi");
    test_ok(ctx, an_cuda_sum_squares_multi(ctx, table, N_SEG, chunks, sums + 1), "again");
    test_ok(ctx, an_cuda_sum_squares_multi(ctx, table, 0, 0, sums + 2), "empty table");
    double got[3];
    test_ok(ctx, an_cuda_memcpy(ctx, got, AN_CPU, sums, AN_CUDA, sizeof got), "copy");
    ck_assert_msg(!isnan(got[0]) && fabs(got[0] - want) <= 1e-12 * want, "%.17g, expected %.17g", got[0], want);
    ck_assert_msg(memcmp(&got[0], &got[1], sizeof got[0]) == 0, "%.17g then %.17g", got[0], got[1]);
    ck_assert_msg(got[2] == 0.0, "empty table: %.17g", got[2]);
    an_mem_free(ctx, AN_CUDA, sums, 3 * sizeof(double));
    multi_free(ctx, ms, table);
    test_ctx_free(ctx);
}
END_TEST

/* ---- whole optimizers on both devices ---- */

typedef struct {
    const char *name;
    an_dtype dtype;
    int ndim;
    int64_t shape[2];
} spec;

static const spec SPECS[] = {
    {"model.layers.0.mlp.up_proj.weight", AN_BF16, 2, {5, 7}},
    {"model.layers.0.self_attn.q_proj.weight", AN_BF16, 1, {300}}, /* registered as two slices */
    {"model.norm.weight", AN_F16, 1, {33}},
    {"lm_head.weight", AN_F32, 2, {4099, 1}},
};
enum { N_SPECS = sizeof SPECS / sizeof *SPECS };

typedef struct {
    an_tensor *p[N_SPECS];
    an_optim *opt;
} side;

static void side_make(an_ctx *ctx, side *s, an_tensor *const *init, an_device device, const an_adamw_config *c) {
    test_ok(ctx, an_optim_create(ctx, c, &s->opt), "create");
    for (int k = 0; k < N_SPECS; k++) {
        s->p[k] = an_tensor_to(ctx, init[k], init[k]->dtype, device);
        ck_assert_ptr_nonnull(s->p[k]);
        an_tensor_set_requires_grad(s->p[k], true);
        bool no_decay = an_optim_no_decay(SPECS[k].name);
        if (k == 1) { /* two slices of one tensor, as ZeRO shards would be */
            test_ok(ctx, an_optim_add(ctx, s->opt, "q.lo", &s->p[k], false, 0, 100), "add lo");
            test_ok(ctx, an_optim_add(ctx, s->opt, "q.hi", &s->p[k], true, 100, 300), "add hi");
        } else {
            test_ok(ctx, an_optim_add(ctx, s->opt, SPECS[k].name, &s->p[k], no_decay, 0, an_tensor_numel(s->p[k])),
               "add");
        }
    }
}

static void side_free(side *s) {
    for (int k = 0; k < N_SPECS; k++) an_tensor_release(s->p[k]);
    an_optim_free(s->opt);
}

/* Within rtol relative (+ atol) as values, or bit-identical when exact. */
static void expect_state(an_ctx *ctx, const an_tensor *gpu, const an_tensor *cpu, bool exact, double rtol,
                         const char *what) {
    int64_t n = an_tensor_numel(cpu);
    ck_assert_int_eq(an_tensor_numel(gpu), n);
    ck_assert_int_eq(gpu->device, AN_CUDA);
    char *g = bytes_of(ctx, gpu);
    size_t es = an_dtype_size(cpu->dtype);
    for (int64_t i = 0; i < n; i++) {
        double x = an_dtype_load(g, gpu->dtype, (size_t)i), y = an_tensor_get(cpu, i);
        if (exact)
            ck_assert_msg(memcmp(g + i * es, (const char *)an_tensor_data(cpu) + i * es, es) == 0,
                          "%s: element %lld is %.9g on the GPU, %.9g on the CPU", what, (long long)i, x, y);
        else
            ck_assert_msg(!isnan(x) && fabs(x - y) <= rtol * fabs(y) + 1e-12,
                          "%s: element %lld is %.9g on the GPU, %.9g on the CPU", what, (long long)i, x, y);
    }
    free(g);
}

static void run_both(an_ctx *ctx, double max_grad_norm) {
    an_adamw_config c = an_adamw_config_default();
    c.lr = 3e-2;
    c.weight_decay = 0.1;
    c.max_grad_norm = max_grad_norm;
    c.schedule = (an_schedule){.kind = AN_SCHEDULE_LINEAR, .warmup_steps = 2, .total_steps = 10};
    an_tensor *init[N_SPECS];
    for (int k = 0; k < N_SPECS; k++)
        init[k] = test_uniform(ctx, SPECS[k].dtype, SPECS[k].ndim, SPECS[k].shape, -1, 1, false);
    side cpu, gpu;
    side_make(ctx, &cpu, init, AN_CPU, &c);
    side_make(ctx, &gpu, init, AN_CUDA, &c);
    bool exact = max_grad_norm == 0;
    char what[160];
    for (int step = 0; step < 6; step++) {
        for (int k = 0; k < N_SPECS; k++) {
            /* one parameter has no gradient at step 2 (torch skips it) */
            an_tensor_zero_grad(cpu.p[k]), an_tensor_zero_grad(gpu.p[k]);
            if (step == 2 && k == 2) continue;
            an_tensor *g = test_uniform(ctx, SPECS[k].dtype, SPECS[k].ndim, SPECS[k].shape, -1, 1, false);
            gpu.p[k]->grad = upload(ctx, g);
            cpu.p[k]->grad = g;
        }
        an_optim_report rc, rg;
        test_ok(ctx, an_optim_step(ctx, cpu.opt, &rc), "cpu step");
        test_ok(ctx, an_optim_step(ctx, gpu.opt, &rg), "gpu step");
        ck_assert_int_eq(rg.step, rc.step);
        ck_assert_msg(rg.lr == rc.lr, "step %d: lr %.17g vs %.17g", step, rg.lr, rc.lr);
        ck_assert_msg(fabs(rg.grad_norm - rc.grad_norm) <= 1e-12 * rc.grad_norm, "step %d: norm %.17g vs %.17g", step,
                      rg.grad_norm, rc.grad_norm);
        ck_assert_msg(fabs(rg.grad_scale - rc.grad_scale) <= 1e-12 * rc.grad_scale, "step %d: scale %.17g vs %.17g",
                      step, rg.grad_scale, rc.grad_scale);
        if (max_grad_norm > 0) ck_assert_msg(rc.grad_scale < 1, "step %d: clipping never happened", step);
        if (exact) ck_assert_msg(rg.grad_scale == 1.0 && rc.grad_scale == 1.0, "step %d: clipped", step);
        int n_state = an_optim_state_count(cpu.opt);
        ck_assert_int_eq(an_optim_state_count(gpu.opt), n_state);
        for (int i = 0; i < n_state; i++) {
            const char *name;
            an_tensor *sc = an_optim_state_at(cpu.opt, i, &name), *sg = an_optim_state_at(gpu.opt, i, NULL);
            snprintf(what, sizeof what, "clip %g step %d: %s", max_grad_norm, step, name);
            expect_state(ctx, sg, sc, exact, 1e-6, what);
        }
        for (int k = 0; k < N_SPECS; k++) {
            snprintf(what, sizeof what, "clip %g step %d: parameter %s", max_grad_norm, step, SPECS[k].name);
            double ulp = SPECS[k].dtype == AN_BF16 ? 1.0 / 128 : SPECS[k].dtype == AN_F16 ? 1.0 / 1024 : 1e-6;
            expect_state(ctx, gpu.p[k], cpu.p[k], exact, ulp, what);
        }
    }
    ck_assert_int_eq(an_optim_step_count(gpu.opt), 6);
    side_free(&cpu), side_free(&gpu);
    for (int k = 0; k < N_SPECS; k++) an_tensor_release(init[k]);
}

START_TEST(test_cuda_adamw_steps_match_cpu_bit_for_bit_without_clipping) {
    an_ctx *ctx = gpu_ctx(3, "cuda adamw steps");
    if (!ctx) return;
    run_both(ctx, 0);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_cuda_adamw_steps_with_clipping_match_cpu) {
    an_ctx *ctx = gpu_ctx(4, "cuda adamw steps with clipping");
    if (!ctx) return;
    run_both(ctx, 0.5);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_cuda_clip_grad_norm_and_nan_gradients) {
    an_ctx *ctx = gpu_ctx(5, "cuda clip_grad_norm");
    if (!ctx) return;
    an_tensor *cpu[2], *gpu[2];
    const an_dtype dtypes[2] = {AN_BF16, AN_F32};
    const int64_t sizes[2] = {1000, 333};
    for (int k = 0; k < 2; k++) {
        cpu[k] = test_uniform(ctx, dtypes[k], 1, &sizes[k], -1, 1, true);
        gpu[k] = upload(ctx, cpu[k]);
        an_tensor_set_requires_grad(gpu[k], true);
        cpu[k]->grad = test_uniform(ctx, dtypes[k], 1, &sizes[k], -1, 1, false);
        gpu[k]->grad = upload(ctx, cpu[k]->grad);
    }
    double nc = 0, ng = 0;
    test_ok(ctx, an_optim_clip_grad_norm(ctx, cpu, 2, 1.0, &nc), "cpu clip");
    test_ok(ctx, an_optim_clip_grad_norm(ctx, gpu, 2, 1.0, &ng), "gpu clip");
    ck_assert_msg(fabs(ng - nc) <= 1e-12 * nc, "norm %.17g vs %.17g", ng, nc);
    /* the GPU scales in fp32 (an_cuda_scale), the CPU in float64: one rounding apart at most */
    expect_state(ctx, gpu[0]->grad, cpu[0]->grad, false, 1.0 / 128, "clipped bf16 gradient");
    expect_state(ctx, gpu[1]->grad, cpu[1]->grad, false, 1e-6, "clipped f32 gradient");

    /* a NaN gradient: AN_ERR_INPUT, and no parameter, state or step count changes */
    an_adamw_config c = an_adamw_config_default();
    an_optim *opt;
    test_ok(ctx, an_optim_create(ctx, &c, &opt), "create");
    test_ok(ctx, an_optim_add(ctx, opt, "w", &gpu[0], false, 0, sizes[0]), "add");
    float nan = NAN;
    an_tensor *bad = an_tensor_from_data(ctx, AN_F32, 1, (int64_t[]){1}, &nan);
    an_tensor *bad_dev = an_tensor_rows(ctx, gpu[0]->grad, 17, 1);
    test_ok(ctx, an_tensor_copy_into(ctx, bad_dev, bad), "poke a NaN");
    void *before = bytes_of(ctx, gpu[0]);
    ck_assert_int_eq(an_optim_step(ctx, opt, NULL), AN_ERR_INPUT);
    an_error_clear(ctx);
    ck_assert_int_eq(an_optim_step_count(opt), 0);
    void *after = bytes_of(ctx, gpu[0]);
    ck_assert(memcmp(before, after, an_tensor_nbytes(gpu[0])) == 0);
    free(before), free(after);
    an_tensor_release(bad), an_tensor_release(bad_dev);
    an_optim_free(opt);
    for (int k = 0; k < 2; k++) an_tensor_release(cpu[k]), an_tensor_release(gpu[k]);
    test_ctx_free(ctx);
}
END_TEST

/* an_cuda_sum_doubles at counts around one finishing block's span (8192: one level below, spans of
 * it above) and at the update in backward's size for the 1.5B model's 870 k chunk partials:
 * within 1e-12 of a host float64 sum of the same random doubles, and the same bits when repeated. */
START_TEST(test_cuda_sum_doubles_in_one_or_two_levels) {
    an_ctx *ctx = gpu_ctx(9, "cuda sum_doubles");
    if (!ctx) return;
    const int64_t counts[] = {1, 1000, 8192, 8193, 100000, 870000};
    for (size_t c = 0; c < sizeof counts / sizeof *counts; c++) {
        const int64_t n = counts[c];
        double *host = malloc((size_t)n * sizeof *host), ref = 0, scale = 0;
        uint64_t state = 0x9E3779B97F4A7C15ull * (uint64_t)(c + 1);
        for (int64_t i = 0; i < n; i++) {
            state = state * 6364136223846793005ull + 1442695040888963407ull;
            host[i] = ((double)(state >> 11) / 9007199254740992.0) * 2.0 - 0.5; /* [-0.5, 1.5): no cancellation to 0 */
            ref += host[i], scale += fabs(host[i]);
        }
        an_tensor *dev = an_tensor_new(ctx, AN_I64, AN_CUDA, 1, (int64_t[]){n + 2}); /* 8-byte room for doubles */
        ck_assert_msg(dev != NULL, "alloc: %s", an_error_message(ctx));
        double *d = an_tensor_data(dev), got[2] = {NAN, NAN};
        test_ok(ctx, an_cuda_memcpy(ctx, d, AN_CUDA, host, AN_CPU, (size_t)n * sizeof *host), "upload");
        for (int rep = 0; rep < 2; rep++) {
            test_ok(ctx, an_cuda_memset(ctx, d + n + rep, 0xff, sizeof(double)), "poison"); /* a NaN */
            test_ok(ctx, an_cuda_sum_doubles(ctx, d, n, d + n + rep), "sum_doubles");
            test_ok(ctx, an_cuda_memcpy(ctx, &got[rep], AN_CPU, d + n + rep, AN_CUDA, sizeof(double)), "download");
        }
        ck_assert_msg(fabs(got[0] - ref) <= 1e-12 * scale, "count %lld: %.17g vs host %.17g", (long long)n, got[0], ref);
        ck_assert_msg(memcmp(&got[0], &got[1], sizeof(double)) == 0, "count %lld: %.17g then %.17g", (long long)n,
                      got[0], got[1]);
        an_tensor_release(dev);
        free(host);
    }
    test_ctx_free(ctx);
}
END_TEST

/* The update in backward on the side stream against the step after backward on the same GPU: the
 * same bits in every parameter and state (a side update racing the backward's later reads of its
 * weight, or run before its gradient is complete, would show), at both side-stream priorities,
 * with and without earlier micro-batches. */
START_TEST(test_cuda_update_in_backward_matches_the_step_after) {
    an_ctx *ctx = gpu_ctx(8, "cuda update in backward");
    if (!ctx) return;
    for (int equal = 0; equal < 2; equal++) {
        test_ok(ctx, an_cuda_set_side_equal_priority(ctx, equal), "side priority");
        for (int micro = 1; micro <= 2; micro++) {
            test_update_in_backward_shape bf16 = {AN_CUDA, AN_BF16, 4, 1024, 256, 704, micro, 3, micro == 2 ? 1024 : 0};
            test_update_in_backward_matches_step(ctx, &bf16);
        }
    }
    test_update_in_backward_shape f32 = {AN_CUDA, AN_F32, 2, 96, 40, 72, 1, 2, 64}; /* f32: no masters; ragged */
    test_update_in_backward_matches_step(ctx, &f32);
    test_ctx_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("cuda_adamw");
    test_add_case(s, "multi", test_cuda_adamw_multi_is_bit_identical_to_the_cpu_formula);
    test_add_case(s, "sum_squares_multi", test_cuda_sum_squares_multi_is_float64_and_deterministic);
    test_add_case(s, "steps", test_cuda_adamw_steps_match_cpu_bit_for_bit_without_clipping);
    test_add_case(s, "clipped_steps", test_cuda_adamw_steps_with_clipping_match_cpu);
    test_add_case(s, "clip_and_nan", test_cuda_clip_grad_norm_and_nan_gradients);
    test_add_case(s, "update_in_backward", test_cuda_update_in_backward_matches_the_step_after);
    test_add_case(s, "sum_doubles", test_cuda_sum_doubles_in_one_or_two_levels);
    return test_run(s);
}
