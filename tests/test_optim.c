/* test_optim.c — AdamW against a float64 transcription of torch's algorithm (f32 parameters, and
 * bf16/f16 parameters through fp32 masters), the transformers schedules, gradient clipping,
 * gradient accumulation, ZeRO-style slices, the weight-decay name rule, the checkpoint state
 * round trip, and the step taken during backward (bit-identical to the step after it). When tests/fixtures/optim/adamw_reference.json exists (written by
 * tests/fixtures/make_adamw_reference.py with torch), AdamW and the schedules are also compared
 * with what torch and transformers computed. */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/config.h"
#include "model/model.h"
#include "optim/optim.h"
#include "support/test_util.h"
#include "support/update_in_backward.h"

/* ---- float64 references, written from the Python sources ------------------------------------- */

/* transformers/optimization.py lambdas, with num_cycles 0.5 and min_lr_rate for cosine. */
static double ref_multiplier(const an_schedule *s, int64_t step) {
    if (step < s->warmup_steps) return (double)step / fmax(1.0, (double)s->warmup_steps);
    double decay_steps = fmax(1.0, (double)(s->total_steps - s->warmup_steps));
    if (s->kind == AN_SCHEDULE_CONSTANT) return 1.0;
    if (s->kind == AN_SCHEDULE_LINEAR) return fmax(0.0, (double)(s->total_steps - step) / decay_steps);
    double progress = (double)(step - s->warmup_steps) / decay_steps;
    double cosine = 0.5 * (1.0 + cos(3.141592653589793 * 0.5 * 2.0 * progress));
    return fmax(0.0, cosine * (1 - s->min_lr_ratio) + s->min_lr_ratio);
}

/* One parameter's state in the reference: values and moments in float64. */
typedef struct {
    int64_t n;
    double *p, *m, *v;
} ref_param;

/* torch AdamW for one parameter at step t (1-based) with learning rate lr: decoupled decay, then
 * moments, bias corrections, and eps after the square root of the corrected second moment. */
static void ref_adamw(ref_param *r, const double *g, int64_t t, double lr, const an_adamw_config *c, bool decay) {
    double bc1 = 1 - pow(c->beta1, (double)t), bc2 = 1 - pow(c->beta2, (double)t);
    for (int64_t i = 0; i < r->n; i++) {
        if (decay) r->p[i] *= 1 - lr * c->weight_decay;
        r->m[i] = c->beta1 * r->m[i] + (1 - c->beta1) * g[i];
        r->v[i] = c->beta2 * r->v[i] + (1 - c->beta2) * g[i] * g[i];
        r->p[i] -= (lr / bc1) * r->m[i] / (sqrt(r->v[i]) / sqrt(bc2) + c->eps);
    }
}

/* ---- helpers ---------------------------------------------------------------------------------- */

/* Replaces p's gradient with a new tensor of p's dtype holding g (rounded to that dtype). */
static void set_grad(an_ctx *ctx, an_tensor *p, const double *g) {
    an_tensor_zero_grad(p);
    an_tensor *t = an_tensor_new(ctx, p->dtype, AN_CPU, p->ndim, p->shape);
    ck_assert_ptr_nonnull(t);
    for (int64_t i = 0; i < an_tensor_numel(p); i++) an_tensor_set(t, i, g[i]);
    p->grad = t;
}

static an_tensor *state(const an_optim *opt, const char *param, const char *suffix) {
    char name[160];
    snprintf(name, sizeof name, "%s.%s", param, suffix);
    an_tensor *t = an_optim_state_find(opt, name);
    ck_assert_msg(t != NULL, "no optimizer state %s", name);
    return t;
}

static void assert_close_to(const an_tensor *t, const double *want, double rtol, double atol, const char *what,
                            int step) {
    char msg[200];
    snprintf(msg, sizeof msg, "%s after step %d", what, step);
    test_assert_close(t, want, rtol, atol, msg);
}

static void assert_same_bits(const an_tensor *a, const an_tensor *b, const char *what) {
    ck_assert_msg(an_tensor_nbytes(a) == an_tensor_nbytes(b) &&
                      memcmp(an_tensor_data(a), an_tensor_data(b), an_tensor_nbytes(a)) == 0,
                  "%s: not bit-identical", what);
}

typedef struct {
    const char *name;
    int ndim;
    int64_t shape[2];
    bool decays; /* what the name rule must decide */
} param_spec;

static const param_spec SPECS[] = {
    {"model.layers.0.mlp.up_proj.weight", 2, {5, 7}, true},
    {"model.layers.0.self_attn.q_proj.bias", 1, {7}, false},
    {"model.norm.weight", 1, {3}, false},
    {"lm_head.weight", 2, {1, 4}, true},
};
enum { N_SPECS = sizeof SPECS / sizeof *SPECS };

/* Runs `steps` AdamW steps on SPECS-shaped parameters of `dtype` with random gradients whose size
 * grows with the step, beside the float64 reference, and checks parameters (or masters and the
 * rounded parameters), moments and the report after every step. */
static void run_against_reference(an_dtype dtype, const an_adamw_config *config, int steps, double rtol,
                                  double atol) {
    an_ctx *ctx = test_ctx(100 + (uint64_t)dtype);
    an_tensor *params[N_SPECS];
    ref_param ref[N_SPECS];
    an_optim *opt;
    ck_assert_int_eq(an_optim_create(ctx, config, &opt), AN_OK);
    for (int k = 0; k < N_SPECS; k++) {
        params[k] = test_uniform(ctx, dtype, SPECS[k].ndim, SPECS[k].shape, -1, 1, true);
        int64_t n = an_tensor_numel(params[k]);
        ref[k] = (ref_param){n, calloc((size_t)n, sizeof(double)), calloc((size_t)n, sizeof(double)),
                             calloc((size_t)n, sizeof(double))};
        for (int64_t i = 0; i < n; i++) ref[k].p[i] = an_tensor_get(params[k], i);
        bool no_decay = an_optim_no_decay(SPECS[k].name);
        ck_assert_msg(no_decay == !SPECS[k].decays, "no-decay rule wrong for %s", SPECS[k].name);
        ck_assert_int_eq(an_optim_add(ctx, opt, SPECS[k].name, &params[k], no_decay, 0, n), AN_OK);
    }
    for (int step = 0; step < steps; step++) {
        double *grads[N_SPECS], sum_sq = 0;
        for (int k = 0; k < N_SPECS; k++) {
            int64_t n = ref[k].n;
            double *g = malloc((size_t)n * sizeof *g);
            for (int64_t i = 0; i < n; i++) g[i] = (step + 1) * (2 * an_rng_uniform(&ctx->rng) - 1);
            set_grad(ctx, params[k], g);
            for (int64_t i = 0; i < n; i++) g[i] = an_tensor_get(params[k]->grad, i); /* as rounded */
            for (int64_t i = 0; i < n; i++) sum_sq += g[i] * g[i];
            grads[k] = g;
        }
        double norm = sqrt(sum_sq), scale = 1.0;
        if (config->max_grad_norm > 0 && config->max_grad_norm / (norm + 1e-6) < 1)
            scale = config->max_grad_norm / (norm + 1e-6);
        double lr = config->lr * ref_multiplier(&config->schedule, step);
        ck_assert_double_eq_tol(an_optim_lr(opt), lr, 1e-18);
        an_optim_report report;
        ck_assert_msg(an_optim_step(ctx, opt, &report) == AN_OK, "%s", an_error_message(ctx));
        ck_assert_int_eq(report.step, step + 1);
        ck_assert_double_eq_tol(report.lr, lr, 1e-18);
        ck_assert_double_eq_tol(report.grad_norm, norm, 1e-12 * norm);
        ck_assert_double_eq_tol(report.grad_scale, scale, 1e-15);
        for (int k = 0; k < N_SPECS; k++) {
            for (int64_t i = 0; i < ref[k].n; i++) grads[k][i] *= scale;
            ref_adamw(&ref[k], grads[k], step + 1, lr, config, SPECS[k].decays);
            free(grads[k]);
            const char *name = SPECS[k].name;
            if (dtype == AN_F32) {
                ck_assert_ptr_null(an_optim_state_find(opt, "model.norm.weight.master"));
                assert_close_to(params[k], ref[k].p, rtol, atol, name, step + 1);
            } else {
                an_tensor *master = state(opt, name, "master");
                ck_assert_int_eq(master->dtype, AN_F32);
                assert_close_to(master, ref[k].p, rtol, atol, name, step + 1);
                const float *mf = an_tensor_data(master);
                const uint16_t *ph = an_tensor_data(params[k]);
                for (int64_t i = 0; i < ref[k].n; i++) {
                    uint16_t want = dtype == AN_BF16 ? an_f32_to_bf16(mf[i]) : an_f32_to_f16(mf[i]);
                    ck_assert_msg(ph[i] == want, "%s[%lld] is not its master rounded", name, (long long)i);
                }
            }
            assert_close_to(state(opt, name, "exp_avg"), ref[k].m, 1e-6, 1e-7, "exp_avg", step + 1);
            assert_close_to(state(opt, name, "exp_avg_sq"), ref[k].v, 1e-6, 1e-7, "exp_avg_sq", step + 1);
        }
    }
    ck_assert_int_eq(an_optim_step_count(opt), steps);
    if (dtype != AN_F32) {
        /* The masters hold what the half-precision parameters cannot: small steps add up. */
        int finer = 0;
        for (int k = 0; k < N_SPECS; k++) {
            an_tensor *master = state(opt, SPECS[k].name, "master");
            for (int64_t i = 0; i < ref[k].n; i++) finer += an_tensor_get(master, i) != an_tensor_get(params[k], i);
        }
        ck_assert_int_gt(finer, 0);
    }
    for (int k = 0; k < N_SPECS; k++) {
        free(ref[k].p), free(ref[k].m), free(ref[k].v);
        an_tensor_release(params[k]);
    }
    an_optim_free(opt);
    test_ctx_free(ctx);
}

/* ---- AdamW ------------------------------------------------------------------------------------ */

START_TEST(test_adamw_matches_float64_torch_algorithm) {
    an_adamw_config c = an_adamw_config_default();
    c.lr = 3e-2, c.beta1 = 0.9, c.beta2 = 0.95, c.eps = 1e-8, c.weight_decay = 0.1;
    run_against_reference(AN_F32, &c, 7, 1e-6, 1e-7);
    c.weight_decay = 0; /* without decay */
    run_against_reference(AN_F32, &c, 7, 1e-6, 1e-7);
    c.eps = 1e-3; /* large enough that adding it inside the square root would show */
    run_against_reference(AN_F32, &c, 7, 1e-6, 1e-7);
    /* torch's defaults, a cosine schedule with warmup and clipping that bites at later steps */
    c = an_adamw_config_default();
    c.max_grad_norm = 4.0;
    c.schedule = (an_schedule){.kind = AN_SCHEDULE_COSINE, .warmup_steps = 2, .total_steps = 6};
    run_against_reference(AN_F32, &c, 7, 1e-6, 1e-7);
}
END_TEST

START_TEST(test_bf16_and_f16_params_keep_fp32_masters) {
    an_adamw_config c = an_adamw_config_default();
    c.lr = 1e-4, c.weight_decay = 0.1; /* steps far below a bf16 ulp of the weights */
    c.schedule = (an_schedule){.kind = AN_SCHEDULE_LINEAR, .warmup_steps = 1, .total_steps = 8};
    run_against_reference(AN_BF16, &c, 6, 1e-6, 1e-7);
    run_against_reference(AN_F16, &c, 6, 1e-6, 1e-7);
}
END_TEST

START_TEST(test_param_without_grad_is_skipped) {
    an_ctx *ctx = test_ctx(3);
    an_tensor *a = test_uniform(ctx, AN_F32, 1, (int64_t[]){6}, -1, 1, true);
    an_tensor *b = test_uniform(ctx, AN_BF16, 1, (int64_t[]){5}, -1, 1, true);
    an_optim *opt;
    an_adamw_config c = an_adamw_config_default();
    ck_assert_int_eq(an_optim_create(ctx, &c, &opt), AN_OK);
    ck_assert_int_eq(an_optim_add(ctx, opt, "a.weight", &a, false, 0, 6), AN_OK);
    ck_assert_int_eq(an_optim_add(ctx, opt, "b.weight", &b, false, 0, 5), AN_OK);
    set_grad(ctx, a, (double[]){1, 2, 3, 4, 5, 6});
    an_tensor *b_before = an_tensor_to(ctx, b, AN_BF16, AN_CPU);
    an_tensor *b_master = an_tensor_to(ctx, state(opt, "b.weight", "master"), AN_F32, AN_CPU);
    an_tensor *b_m = an_tensor_to(ctx, state(opt, "b.weight", "exp_avg"), AN_F32, AN_CPU);
    ck_assert_int_eq(an_optim_step(ctx, opt, NULL), AN_OK);
    assert_same_bits(b, b_before, "b without grad");
    assert_same_bits(state(opt, "b.weight", "master"), b_master, "b's master");
    assert_same_bits(state(opt, "b.weight", "exp_avg"), b_m, "b's exp_avg");
    ck_assert_double_ne(an_tensor_get(state(opt, "a.weight", "exp_avg"), 0), 0.0);
    an_optim_zero_grad(opt);
    ck_assert_ptr_null(a->grad);
    an_tensor_release(b_before), an_tensor_release(b_master), an_tensor_release(b_m);
    an_tensor_release(a), an_tensor_release(b);
    an_optim_free(opt);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_config_and_registration_errors) {
    an_ctx *ctx = test_ctx(4);
    an_optim *opt = NULL;
    an_adamw_config c = an_adamw_config_default();
    c.beta1 = 1.0;
    ck_assert_int_eq(an_optim_create(ctx, &c, &opt), AN_ERR_INPUT);
    ck_assert_ptr_nonnull(strstr(an_error_message(ctx), "beta1"));
    an_error_clear(ctx);
    c = an_adamw_config_default(), c.lr = -1;
    ck_assert_int_eq(an_optim_create(ctx, &c, &opt), AN_ERR_INPUT);
    an_error_clear(ctx);
    c = an_adamw_config_default();
    c.schedule = (an_schedule){.kind = AN_SCHEDULE_COSINE, .warmup_steps = 2, .total_steps = 0};
    ck_assert_int_eq(an_optim_create(ctx, &c, &opt), AN_ERR_INPUT);
    ck_assert_ptr_nonnull(strstr(an_error_message(ctx), "total_steps"));
    an_error_clear(ctx);
    c.schedule = (an_schedule){.kind = AN_SCHEDULE_LINEAR, .total_steps = 5, .min_lr_ratio = 0.1};
    ck_assert_int_eq(an_optim_create(ctx, &c, &opt), AN_ERR_INPUT);
    an_error_clear(ctx);
    ck_assert_ptr_null(opt);

    c = an_adamw_config_default();
    ck_assert_int_eq(an_optim_create(ctx, &c, &opt), AN_OK);
    an_tensor *w = test_uniform(ctx, AN_F32, 2, (int64_t[]){3, 4}, -1, 1, true);
    an_tensor *d = test_uniform(ctx, AN_F64, 1, (int64_t[]){3}, -1, 1, true);
    ck_assert_int_eq(an_optim_add(ctx, opt, "d", &d, false, 0, 3), AN_ERR_INPUT); /* f64 */
    an_error_clear(ctx);
    ck_assert_int_eq(an_optim_add(ctx, opt, "w", &w, false, 0, 13), AN_ERR_INPUT); /* past the end */
    an_error_clear(ctx);
    ck_assert_int_eq(an_optim_add(ctx, opt, "w", &w, false, 0, 6), AN_OK);
    ck_assert_int_eq(an_optim_add(ctx, opt, "w", &w, false, 6, 12), AN_ERR_INPUT); /* same name */
    an_error_clear(ctx);
    ck_assert_int_eq(an_optim_add(ctx, opt, "w.tail", &w, false, 5, 12), AN_ERR_INPUT); /* overlap */
    an_error_clear(ctx);
    ck_assert_int_eq(an_optim_add(ctx, opt, "w.tail", &w, false, 6, 12), AN_OK);
    ck_assert_int_eq(an_optim_state_count(opt), 4);
    /* a gradient of the wrong size is refused before anything moves */
    w->grad = test_uniform(ctx, AN_F32, 1, (int64_t[]){5}, -1, 1, false);
    ck_assert_int_eq(an_optim_step(ctx, opt, NULL), AN_ERR_INPUT);
    ck_assert_int_eq(an_optim_step_count(opt), 0);
    an_error_clear(ctx);
    an_tensor_release(w), an_tensor_release(d);
    an_optim_free(opt);
    test_ctx_free(ctx);
}
END_TEST

/* ---- schedules -------------------------------------------------------------------------------- */

START_TEST(test_schedules_match_transformers_at_every_step) {
    static const int64_t warmups[] = {0, 1, 3, 10}, totals[] = {1, 10, 37, 100};
    static const double min_ratios[] = {0, 0.1, 1.0};
    for (int kind = 0; kind < 3; kind++)
        for (size_t w = 0; w < 4; w++)
            for (size_t t = 0; t < 4; t++)
                for (size_t r = 0; r < (kind == AN_SCHEDULE_COSINE ? 3u : 1u); r++) {
                    an_schedule s = {(an_schedule_kind)kind, warmups[w], totals[t], min_ratios[r]};
                    for (int64_t step = 0; step <= totals[t] + 12; step++) {
                        double got = an_schedule_multiplier(&s, step), want = ref_multiplier(&s, step);
                        ck_assert_msg(got == want, "kind %d warmup %lld total %lld min %g step %lld: %.17g != %.17g",
                                      kind, (long long)s.warmup_steps, (long long)s.total_steps, s.min_lr_ratio,
                                      (long long)step, got, want);
                    }
                }
    /* Fixed points of the curves, by hand. */
    an_schedule lin = {AN_SCHEDULE_LINEAR, 10, 100, 0}, cosine = {AN_SCHEDULE_COSINE, 10, 100, 0};
    an_schedule floor = {AN_SCHEDULE_COSINE, 10, 100, 0.1}, constant = {AN_SCHEDULE_CONSTANT, 4, 0, 0};
    ck_assert_double_eq(an_schedule_multiplier(&lin, 0), 0.0);
    ck_assert_double_eq(an_schedule_multiplier(&lin, 5), 0.5);
    ck_assert_double_eq(an_schedule_multiplier(&lin, 10), 1.0);
    ck_assert_double_eq(an_schedule_multiplier(&lin, 55), 0.5);
    ck_assert_double_eq(an_schedule_multiplier(&lin, 100), 0.0);
    ck_assert_double_eq(an_schedule_multiplier(&lin, 150), 0.0);
    ck_assert_double_eq(an_schedule_multiplier(&cosine, 10), 1.0);
    ck_assert_double_eq_tol(an_schedule_multiplier(&cosine, 55), 0.5, 1e-15);
    ck_assert_double_eq(an_schedule_multiplier(&cosine, 100), 0.0);
    ck_assert_double_eq_tol(an_schedule_multiplier(&cosine, 190), 1.0, 1e-15); /* transformers goes on */
    ck_assert_double_eq_tol(an_schedule_multiplier(&floor, 100), 0.1, 1e-15);
    ck_assert_double_eq_tol(an_schedule_multiplier(&floor, 55), 0.55, 1e-15);
    ck_assert_double_eq(an_schedule_multiplier(&constant, 0), 0.0);
    ck_assert_double_eq(an_schedule_multiplier(&constant, 1), 0.25);
    ck_assert_double_eq(an_schedule_multiplier(&constant, 4), 1.0);
    ck_assert_double_eq(an_schedule_multiplier(&constant, 1000), 1.0);
}
END_TEST

START_TEST(test_optimizer_steps_follow_the_schedule_and_resume_with_it) {
    an_ctx *ctx = test_ctx(8);
    an_adamw_config c = an_adamw_config_default();
    c.lr = 2e-3;
    c.schedule = (an_schedule){AN_SCHEDULE_COSINE, 3, 12, 0.05};
    an_optim *opt;
    ck_assert_int_eq(an_optim_create(ctx, &c, &opt), AN_OK);
    an_tensor *w = test_uniform(ctx, AN_F32, 1, (int64_t[]){4}, -1, 1, true);
    ck_assert_int_eq(an_optim_add(ctx, opt, "w", &w, false, 0, 4), AN_OK);
    for (int step = 0; step < 14; step++) {
        set_grad(ctx, w, (double[]){0.5, -1, 2, 0.25});
        an_optim_report r;
        ck_assert_int_eq(an_optim_step(ctx, opt, &r), AN_OK);
        ck_assert_double_eq(r.lr, 2e-3 * an_schedule_multiplier(&c.schedule, step));
    }
    ck_assert_double_eq(an_optim_lr(opt), 2e-3 * an_schedule_multiplier(&c.schedule, 14));
    /* Restoring the step count restores the learning rate. */
    an_tensor *values[2];
    const char *names[2];
    for (int i = 0; i < 2; i++) values[i] = an_optim_state_at(opt, i, &names[i]);
    ck_assert_int_eq(an_optim_restore(ctx, opt, 5, 2, names, values), AN_OK);
    ck_assert_double_eq(an_optim_lr(opt), 2e-3 * an_schedule_multiplier(&c.schedule, 5));
    an_tensor_release(w);
    an_optim_free(opt);
    test_ctx_free(ctx);
}
END_TEST

/* ---- clipping --------------------------------------------------------------------------------- */

START_TEST(test_clip_grad_norm_scales_only_above_max) {
    an_ctx *ctx = test_ctx(11);
    an_tensor *p[3];
    p[0] = test_uniform(ctx, AN_F32, 2, (int64_t[]){3, 5}, -1, 1, true);
    p[1] = test_uniform(ctx, AN_F32, 1, (int64_t[]){7}, -1, 1, true);
    p[2] = test_uniform(ctx, AN_BF16, 1, (int64_t[]){2}, -1, 1, true); /* no grad: skipped */
    double sum_sq = 0;
    for (int k = 0; k < 2; k++) {
        p[k]->grad = test_uniform(ctx, AN_F32, p[k]->ndim, p[k]->shape, -2, 2, false);
        for (int64_t i = 0; i < an_tensor_numel(p[k]); i++) sum_sq += pow(an_tensor_get(p[k]->grad, i), 2);
    }
    double want = sqrt(sum_sq), norm = 0;
    an_tensor *g0 = an_tensor_to(ctx, p[0]->grad, AN_F32, AN_CPU), *g1 = an_tensor_to(ctx, p[1]->grad, AN_F32, AN_CPU);

    /* max above the norm: grads untouched, bit for bit */
    ck_assert_int_eq(an_optim_clip_grad_norm(ctx, p, 3, want * 1.5, &norm), AN_OK);
    ck_assert_double_eq_tol(norm, want, 1e-13 * want);
    assert_same_bits(p[0]->grad, g0, "grad 0 under max");
    assert_same_bits(p[1]->grad, g1, "grad 1 under max");

    /* max below: every grad times max / (norm + 1e-6), and the new norm is max */
    double max = want / 3, s = max / (want + 1e-6);
    ck_assert_int_eq(an_optim_clip_grad_norm(ctx, p, 3, max, &norm), AN_OK);
    ck_assert_double_eq_tol(norm, want, 1e-13 * want);
    double after = 0;
    for (int k = 0; k < 2; k++) {
        an_tensor *before = k ? g1 : g0;
        for (int64_t i = 0; i < an_tensor_numel(p[k]); i++) {
            double g = an_tensor_get(p[k]->grad, i);
            ck_assert_double_eq(g, (double)(float)(an_tensor_get(before, i) * s));
            after += g * g;
        }
    }
    ck_assert_double_eq_tol(sqrt(after), max, 1e-6 * max);

    /* a NaN or an infinity is an error and changes nothing */
    an_tensor *g1c = an_tensor_to(ctx, p[1]->grad, AN_F32, AN_CPU);
    for (int bad = 0; bad < 2; bad++) {
        an_tensor_set(p[0]->grad, 4, bad ? INFINITY : NAN);
        an_tensor *g0c = an_tensor_to(ctx, p[0]->grad, AN_F32, AN_CPU);
        ck_assert_int_eq(an_optim_clip_grad_norm(ctx, p, 3, 1.0, &norm), AN_ERR_INPUT);
        ck_assert(!isfinite(norm));
        ck_assert_ptr_nonnull(strstr(an_error_message(ctx), "norm"));
        an_error_clear(ctx);
        assert_same_bits(p[0]->grad, g0c, "grad 0 after a non-finite norm");
        assert_same_bits(p[1]->grad, g1c, "grad 1 after a non-finite norm");
        an_tensor_release(g0c);
    }
    an_tensor_release(g0), an_tensor_release(g1), an_tensor_release(g1c);
    for (int k = 0; k < 3; k++) an_tensor_release(p[k]);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_step_with_nonfinite_grad_norm_is_skipped) {
    an_ctx *ctx = test_ctx(12);
    an_adamw_config c = an_adamw_config_default();
    c.max_grad_norm = 1.0;
    an_optim *opt;
    ck_assert_int_eq(an_optim_create(ctx, &c, &opt), AN_OK);
    an_tensor *w = test_uniform(ctx, AN_BF16, 2, (int64_t[]){2, 3}, -1, 1, true);
    an_tensor *f = test_uniform(ctx, AN_F32, 1, (int64_t[]){3}, -1, 1, true);
    ck_assert_int_eq(an_optim_add(ctx, opt, "w", &w, false, 0, 6), AN_OK);
    ck_assert_int_eq(an_optim_add(ctx, opt, "f", &f, false, 0, 3), AN_OK);
    set_grad(ctx, w, (double[]){1, 2, 3, 4, 5, 6});
    set_grad(ctx, f, (double[]){1, 1, 1});
    ck_assert_int_eq(an_optim_step(ctx, opt, NULL), AN_OK);

    an_tensor *snap[7];
    int n = an_optim_state_count(opt);
    ck_assert_int_eq(n, 5);
    for (int i = 0; i < n; i++) snap[i] = an_tensor_to(ctx, an_optim_state_at(opt, i, NULL), AN_F32, AN_CPU);
    snap[5] = an_tensor_to(ctx, w, AN_BF16, AN_CPU);
    snap[6] = an_tensor_to(ctx, f, AN_F32, AN_CPU);
    set_grad(ctx, w, (double[]){1, 2, NAN, 4, 5, 6});
    an_optim_report r;
    ck_assert_int_eq(an_optim_step(ctx, opt, &r), AN_ERR_INPUT);
    ck_assert(isnan(r.grad_norm));
    ck_assert_ptr_nonnull(strstr(an_error_message(ctx), "skipped"));
    an_error_clear(ctx);
    ck_assert_int_eq(an_optim_step_count(opt), 1);
    for (int i = 0; i < n; i++) assert_same_bits(an_optim_state_at(opt, i, NULL), snap[i], "state after skip");
    assert_same_bits(w, snap[5], "w after skip");
    assert_same_bits(f, snap[6], "f after skip");
    /* the next finite step goes through and clips */
    set_grad(ctx, w, (double[]){1, 2, 3, 4, 5, 6});
    ck_assert_int_eq(an_optim_step(ctx, opt, &r), AN_OK);
    ck_assert_int_eq(r.step, 2);
    ck_assert_double_eq_tol(r.grad_norm, sqrt(91.0 + 3.0), 1e-12);
    ck_assert_double_eq_tol(r.grad_scale, 1.0 / (sqrt(94.0) + 1e-6), 1e-15);
    for (int i = 0; i < 7; i++) an_tensor_release(snap[i]);
    an_tensor_release(w), an_tensor_release(f);
    an_optim_free(opt);
    test_ctx_free(ctx);
}
END_TEST

/* ---- gradient accumulation -------------------------------------------------------------------- */

/* mean over rows [start, start+count) of x of ((x W^T + b)^2), times count/total: one
 * micro-batch's share of the whole batch's mean. */
static an_tensor *micro_loss(an_ctx *ctx, an_tensor *x, an_tensor *w, an_tensor *b, int64_t start, int64_t count,
                             int64_t total) {
    an_tensor *rows = an_tensor_rows(ctx, x, start, count);
    an_tensor *y = an_linear(ctx, rows, w, b);
    an_tensor *sq = an_mul(ctx, y, y);
    an_tensor *mean = an_mean(ctx, sq);
    an_tensor *loss = an_scale(ctx, mean, (double)count / (double)total);
    an_tensor_release(rows), an_tensor_release(y), an_tensor_release(sq), an_tensor_release(mean);
    return loss;
}

START_TEST(test_accumulated_micro_batches_equal_one_batch) {
    an_ctx *ctx = test_ctx(21);
    const int64_t rows = 11;
    an_tensor *x = test_uniform(ctx, AN_F64, 2, (int64_t[]){rows, 5}, -1, 1, false);
    an_tensor *w = test_uniform(ctx, AN_F64, 2, (int64_t[]){3, 5}, -1, 1, true);
    an_tensor *b = test_uniform(ctx, AN_F64, 1, (int64_t[]){3}, -1, 1, true);
    an_param table[2] = {{.name = "toy.weight", .slot = &w}, {.name = "toy.bias", .slot = &b}};

    an_tensor *loss = micro_loss(ctx, x, w, b, 0, rows, rows);
    ck_assert_int_eq(an_backward(ctx, loss), AN_OK);
    an_tensor_release(loss);
    an_tensor *gw = an_tensor_retain(w->grad), *gb = an_tensor_retain(b->grad);
    an_optim_zero_grad_params(table, 2);
    ck_assert_ptr_null(w->grad);
    ck_assert_ptr_null(b->grad);

    static const int64_t splits[][3] = {{4, 7, 0}, {1, 5, 5}, {3, 3, 5}};
    for (size_t s = 0; s < 3; s++) {
        int64_t start = 0;
        for (int k = 0; k < 3 && splits[s][k]; k++) {
            loss = micro_loss(ctx, x, w, b, start, splits[s][k], rows);
            ck_assert_int_eq(an_backward(ctx, loss), AN_OK);
            an_tensor_release(loss);
            start += splits[s][k];
        }
        ck_assert_int_eq(start, rows);
        test_assert_tensors_close(w->grad, gw, 1e-13, 1e-15, "accumulated weight grad");
        test_assert_tensors_close(b->grad, gb, 1e-13, 1e-15, "accumulated bias grad");
        an_optim_zero_grad_params(table, 2);
    }
    /* The normaliser matters: plain per-micro-batch means do not add up to the batch's gradient. */
    for (int k = 0; k < 2; k++) {
        loss = micro_loss(ctx, x, w, b, k ? 4 : 0, k ? 7 : 4, k ? 7 : 4);
        ck_assert_int_eq(an_backward(ctx, loss), AN_OK);
        an_tensor_release(loss);
    }
    double diff = 0;
    for (int64_t i = 0; i < 15; i++) diff = fmax(diff, fabs(an_tensor_get(w->grad, i) - an_tensor_get(gw, i)));
    ck_assert_double_gt(diff, 1e-3);
    an_optim_zero_grad_params(table, 2);
    an_tensor_release(gw), an_tensor_release(gb);
    an_tensor_release(x), an_tensor_release(w), an_tensor_release(b);
    test_ctx_free(ctx);
}
END_TEST

/* ---- ZeRO slices ------------------------------------------------------------------------------ */

START_TEST(test_slices_update_like_the_whole_tensor) {
    /* Two "ranks" each own part of every parameter; together they compute what one optimizer over
     * whole tensors computes, bit for bit (no clipping: the global norm would need an all-reduce). */
    an_ctx *ctx = test_ctx(31);
    an_adamw_config c = an_adamw_config_default();
    c.weight_decay = 0.05, c.lr = 1e-2;
    an_tensor *whole[3], *split[3];
    whole[0] = test_uniform(ctx, AN_BF16, 2, (int64_t[]){7, 3}, -1, 1, true);
    whole[1] = test_uniform(ctx, AN_F32, 1, (int64_t[]){5}, -1, 1, true);
    whole[2] = test_uniform(ctx, AN_F32, 1, (int64_t[]){2}, -1, 1, true); /* rank 1's share is empty */
    for (int k = 0; k < 3; k++) split[k] = an_tensor_to(ctx, whole[k], whole[k]->dtype, AN_CPU);
    an_optim *one, *rank[2];
    ck_assert_int_eq(an_optim_create(ctx, &c, &one), AN_OK);
    ck_assert_int_eq(an_optim_add(ctx, one, "w.weight", &whole[0], false, 0, 21), AN_OK);
    ck_assert_int_eq(an_optim_add(ctx, one, "n.bias", &whole[1], true, 0, 5), AN_OK);
    ck_assert_int_eq(an_optim_add(ctx, one, "e.weight", &whole[2], false, 0, 2), AN_OK);
    for (int r = 0; r < 2; r++) {
        ck_assert_int_eq(an_optim_create(ctx, &c, &rank[r]), AN_OK);
        ck_assert_int_eq(an_optim_add(ctx, rank[r], "w.weight", &split[0], false, r ? 11 : 0, r ? 21 : 11), AN_OK);
        ck_assert_int_eq(an_optim_add(ctx, rank[r], "n.bias", &split[1], true, r ? 2 : 0, r ? 5 : 2), AN_OK);
        ck_assert_int_eq(an_optim_add(ctx, rank[r], "e.weight", &split[2], false, r ? 2 : 0, 2), AN_OK);
    }
    ck_assert_int_eq(an_tensor_numel(an_optim_state_find(rank[1], "e.weight.exp_avg")), 0);
    ck_assert_int_eq(an_optim_state_find(rank[1], "w.weight.master")->ndim, 1);
    ck_assert_int_eq(an_optim_state_find(rank[1], "w.weight.master")->shape[0], 10);
    ck_assert_int_eq(an_optim_state_find(one, "w.weight.master")->ndim, 2);
    for (int step = 0; step < 4; step++) {
        for (int k = 0; k < 3; k++) {
            an_tensor *g = test_uniform(ctx, whole[k]->dtype, whole[k]->ndim, whole[k]->shape, -1, 1, false);
            an_tensor_zero_grad(whole[k]), an_tensor_zero_grad(split[k]);
            whole[k]->grad = g;
            split[k]->grad = an_tensor_to(ctx, g, g->dtype, AN_CPU);
        }
        ck_assert_int_eq(an_optim_step(ctx, one, NULL), AN_OK);
        for (int r = 0; r < 2; r++) ck_assert_int_eq(an_optim_step(ctx, rank[r], NULL), AN_OK);
    }
    for (int k = 0; k < 3; k++) assert_same_bits(split[k], whole[k], "sliced update");
    for (int k = 0; k < 3; k++) an_tensor_release(whole[k]), an_tensor_release(split[k]);
    an_optim_free(one), an_optim_free(rank[0]), an_optim_free(rank[1]);
    test_ctx_free(ctx);
}
END_TEST

/* ---- names ------------------------------------------------------------------------------------ */

START_TEST(test_no_decay_rule_agrees_with_model_tables) {
    static const char *models[] = {"tests/fixtures/models/tiny-qwen2", "tests/fixtures/models/tiny-llama"};
    for (int m = 0; m < 2; m++)
        for (int tied = 0; tied < 2; tied++) {
            an_ctx *ctx = test_ctx(41);
            char path[512];
            snprintf(path, sizeof path, "%s/%s", ANNEAL_SOURCE_DIR, models[m]);
            an_model_config config;
            ck_assert_msg(an_model_config_load(ctx, path, &config) == AN_OK, "%s", an_error_message(ctx));
            config.tie_word_embeddings = tied;
            an_model *model;
            ck_assert_int_eq(an_model_create(ctx, &config, AN_BF16, AN_CPU, &model), AN_OK);
            ck_assert_int_eq(an_model_init_random(ctx, model, 0.02), AN_OK);
            int decayed = 0;
            for (int i = 0; i < model->n_params; i++) {
                const an_param *p = &model->params[i];
                ck_assert_msg(an_optim_no_decay(p->name) == p->no_decay, "%s: rule and table disagree", p->name);
                decayed += !p->no_decay;
            }
            ck_assert_int_eq(decayed, 7 * (int)config.num_layers + !tied);
            /* The whole table registers; frozen parameters are left out. */
            an_model_set_requires_grad(model, true);
            an_tensor_set_requires_grad(model->norm, false);
            an_optim *opt;
            an_adamw_config c = an_adamw_config_default();
            ck_assert_int_eq(an_optim_create(ctx, &c, &opt), AN_OK);
            ck_assert_int_eq(an_optim_add_params(ctx, opt, model->params, model->n_params), AN_OK);
            ck_assert_int_eq(an_optim_state_count(opt), 3 * (model->n_params - 1));
            ck_assert_ptr_null(an_optim_state_find(opt, "model.norm.weight.exp_avg"));
            an_tensor *master = an_optim_state_find(opt, "model.embed_tokens.weight.master");
            ck_assert_int_eq(master->ndim, 2);
            ck_assert_int_eq(master->shape[0], config.vocab_size);
            ck_assert_double_eq(an_tensor_get(master, 17), an_tensor_get(model->embed_tokens, 17));
            an_optim_free(opt);
            an_optim_zero_grad_params(model->params, model->n_params);
            an_model_free(model);
            test_ctx_free(ctx);
        }
    struct {
        const char *name;
        bool no_decay;
    } names[] = {
        {"model.layers.0.self_attn.q_a_layernorm.weight", true},
        {"model.layers.0.self_attn.kv_a_layernorm.weight", true},
        {"model.layers.0.self_attn.q_norm.weight", true},
        {"model.layers.3.mlp.gate.e_score_correction_bias", true},
        {"model.layers.0.mlp.experts.3.down_proj.weight", false},
        {"model.layers.0.mlp.gate.weight", false},
        {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", false},
        {"model.layers.0.mlp.normalizer.weight", false},
        {"Model.Norm.Weight", true},
        {"norm", true},
        {"transformer.wte.embed.weight", true},
        {"lm_head.weight", false},
    };
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        ck_assert_msg(an_optim_no_decay(names[i].name) == names[i].no_decay, "%s", names[i].name);
}
END_TEST

/* ---- checkpoint state --------------------------------------------------------------------------- */

START_TEST(test_state_round_trip_gives_identical_next_step) {
    an_ctx *ctx = test_ctx(51);
    an_adamw_config c = an_adamw_config_default();
    c.lr = 5e-3, c.max_grad_norm = 1.0;
    c.schedule = (an_schedule){AN_SCHEDULE_LINEAR, 2, 10, 0};
    an_tensor *p[3];
    p[0] = test_uniform(ctx, AN_BF16, 2, (int64_t[]){4, 3}, -1, 1, true);
    p[1] = test_uniform(ctx, AN_F32, 1, (int64_t[]){3}, -1, 1, true);
    p[2] = test_uniform(ctx, AN_F16, 1, (int64_t[]){9}, -1, 1, true);
    static const char *names[3] = {"a.weight", "a.bias", "b.weight"};
    an_optim *opt;
    ck_assert_int_eq(an_optim_create(ctx, &c, &opt), AN_OK);
    for (int k = 0; k < 3; k++)
        ck_assert_int_eq(an_optim_add(ctx, opt, names[k], &p[k], an_optim_no_decay(names[k]), k == 2 ? 2 : 0,
                                      an_tensor_numel(p[k])),
                         AN_OK);
    int n = an_optim_state_count(opt);
    ck_assert_int_eq(n, 8);
    static const char *want_names[8] = {"a.weight.exp_avg", "a.weight.exp_avg_sq", "a.weight.master",
                                        "a.bias.exp_avg",   "a.bias.exp_avg_sq",   "b.weight.exp_avg",
                                        "b.weight.exp_avg_sq", "b.weight.master"};
    for (int i = 0; i < n; i++) {
        const char *name;
        an_tensor *t = an_optim_state_at(opt, i, &name);
        ck_assert_str_eq(name, want_names[i]);
        ck_assert_int_eq(t->dtype, AN_F32);
        ck_assert_ptr_eq(an_optim_state_find(opt, name), t);
    }
    ck_assert_ptr_null(an_optim_state_at(opt, n, NULL));
    ck_assert_int_eq(an_tensor_numel(an_optim_state_find(opt, "b.weight.master")), 7);

    /* Three steps, then a "checkpoint": state copies, the parameters, the step count. */
    an_tensor *grads[4][3];
    for (int s = 0; s < 4; s++)
        for (int k = 0; k < 3; k++) grads[s][k] = test_uniform(ctx, p[k]->dtype, p[k]->ndim, p[k]->shape, -1, 1, false);
    for (int s = 0; s < 3; s++) {
        for (int k = 0; k < 3; k++) an_tensor_zero_grad(p[k]), p[k]->grad = an_tensor_retain(grads[s][k]);
        ck_assert_int_eq(an_optim_step(ctx, opt, NULL), AN_OK);
    }
    an_tensor *saved[8], *saved_params[3];
    const char *saved_names[8];
    for (int i = 0; i < n; i++) {
        an_tensor *t = an_optim_state_at(opt, i, &saved_names[i]);
        saved[i] = an_tensor_to(ctx, t, AN_F32, AN_CPU);
    }
    for (int k = 0; k < 3; k++) saved_params[k] = an_tensor_to(ctx, p[k], p[k]->dtype, AN_CPU);
    int64_t saved_step = an_optim_step_count(opt);

    /* The uninterrupted fourth step. */
    for (int k = 0; k < 3; k++) an_tensor_zero_grad(p[k]), p[k]->grad = an_tensor_retain(grads[3][k]);
    ck_assert_int_eq(an_optim_step(ctx, opt, NULL), AN_OK);
    an_tensor *want_state[8], *want_params[3];
    for (int i = 0; i < n; i++) want_state[i] = an_tensor_to(ctx, an_optim_state_at(opt, i, NULL), AN_F32, AN_CPU);
    for (int k = 0; k < 3; k++) want_params[k] = an_tensor_to(ctx, p[k], p[k]->dtype, AN_CPU);

    /* Perturb: two more steps with other gradients, then scribble over the state and the masters'
     * parameters. */
    for (int s = 0; s < 2; s++) {
        for (int k = 0; k < 3; k++) an_tensor_zero_grad(p[k]), p[k]->grad = an_tensor_retain(grads[s][k]);
        ck_assert_int_eq(an_optim_step(ctx, opt, NULL), AN_OK);
    }
    for (int i = 0; i < n; i++) an_tensor_fill(ctx, an_optim_state_at(opt, i, NULL), 0.125 * i);
    an_tensor_fill(ctx, p[0], 3.0);
    an_tensor_fill(ctx, p[2], -3.0);

    /* Bad restores are refused and change nothing. */
    an_tensor *wrong_dtype = an_tensor_to(ctx, saved[3], AN_F64, AN_CPU);
    an_tensor *short_one = an_tensor_rows(ctx, saved[0], 0, 2);
    an_tensor *before = an_tensor_to(ctx, an_optim_state_at(opt, 0, NULL), AN_F32, AN_CPU);
    const char *names_dup[8];
    an_tensor *values_bad[8];
    for (int bad = 0; bad < 5; bad++) {
        memcpy(names_dup, saved_names, sizeof names_dup);
        memcpy(values_bad, saved, sizeof values_bad);
        int count = n;
        if (bad == 0) names_dup[7] = names_dup[6];         /* one name twice, one missing */
        if (bad == 1) names_dup[2] = "a.weight.exp_avgsq"; /* unknown name */
        if (bad == 2) values_bad[3] = wrong_dtype;
        if (bad == 3) values_bad[0] = short_one;
        if (bad == 4) count = n - 1;
        ck_assert_int_eq(an_optim_restore(ctx, opt, saved_step, count, names_dup, values_bad), AN_ERR_INPUT);
        an_error_clear(ctx);
        assert_same_bits(an_optim_state_at(opt, 0, NULL), before, "state after a refused restore");
        ck_assert_int_eq(an_optim_step_count(opt), 6);
    }
    ck_assert_int_eq(an_optim_restore(ctx, opt, -1, n, saved_names, saved), AN_ERR_INPUT);
    an_error_clear(ctx);

    /* Restore (in another order), reload the f32 parameter as the model checkpoint would, and the
     * next step matches the uninterrupted one bit for bit. */
    const char *rev_names[8];
    an_tensor *rev_values[8];
    for (int i = 0; i < n; i++) rev_names[i] = saved_names[n - 1 - i], rev_values[i] = saved[n - 1 - i];
    ck_assert_msg(an_optim_restore(ctx, opt, saved_step, n, rev_names, rev_values) == AN_OK, "%s",
                  an_error_message(ctx));
    ck_assert_int_eq(an_optim_step_count(opt), 3);
    ck_assert_int_eq(an_tensor_copy_into(ctx, p[1], saved_params[1]), AN_OK);
    assert_same_bits(p[0], saved_params[0], "bf16 parameter rewritten from its restored master");
    /* p[2]'s first two elements are not this optimizer's: restore leaves them as they are */
    for (int64_t i = 2; i < 9; i++) ck_assert_double_eq(an_tensor_get(p[2], i), an_tensor_get(saved_params[2], i));
    ck_assert_double_eq(an_tensor_get(p[2], 0), -3.0);
    ck_assert_int_eq(an_tensor_copy_into(ctx, p[2], saved_params[2]), AN_OK);
    for (int k = 0; k < 3; k++) an_tensor_zero_grad(p[k]), p[k]->grad = an_tensor_retain(grads[3][k]);
    ck_assert_int_eq(an_optim_step(ctx, opt, NULL), AN_OK);
    for (int i = 0; i < n; i++) assert_same_bits(an_optim_state_at(opt, i, NULL), want_state[i], want_names[i]);
    for (int k = 0; k < 3; k++) assert_same_bits(p[k], want_params[k], names[k]);

    an_tensor_release(wrong_dtype), an_tensor_release(short_one), an_tensor_release(before);
    for (int i = 0; i < n; i++) an_tensor_release(saved[i]), an_tensor_release(want_state[i]);
    for (int k = 0; k < 3; k++) {
        an_tensor_release(saved_params[k]), an_tensor_release(want_params[k]), an_tensor_release(p[k]);
        for (int s = 0; s < 4; s++) an_tensor_release(grads[s][k]);
    }
    an_optim_free(opt);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_sync_masters_picks_up_new_weights) {
    an_ctx *ctx = test_ctx(61);
    an_tensor *w = test_uniform(ctx, AN_BF16, 1, (int64_t[]){6}, -1, 1, true);
    an_adamw_config c = an_adamw_config_default();
    an_optim *opt;
    ck_assert_int_eq(an_optim_create(ctx, &c, &opt), AN_OK);
    ck_assert_int_eq(an_optim_add(ctx, opt, "w", &w, false, 0, 6), AN_OK);
    an_tensor_fill(ctx, w, 0.5); /* weights loaded after the optimizer was made */
    ck_assert_double_ne(an_tensor_get(state(opt, "w", "master"), 0), 0.5);
    ck_assert_int_eq(an_optim_sync_masters(ctx, opt), AN_OK);
    for (int64_t i = 0; i < 6; i++) ck_assert_double_eq(an_tensor_get(state(opt, "w", "master"), i), 0.5);
    an_tensor_release(w);
    an_optim_free(opt);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_cuda_parameter_with_a_host_gradient_is_an_explicit_error) {
    /* A CUDA parameter is updated on the GPU (tests/test_cuda_adamw.c); one whose gradient sits on
     * the host is refused, never updated across devices behind the caller's back. */
    an_ctx *ctx = test_gpu_ctx(81, "optim on CUDA");
    if (!ctx) return;
    an_tensor *w = an_tensor_zeros(ctx, AN_BF16, AN_CUDA, 1, (int64_t[]){8});
    ck_assert_ptr_nonnull(w);
    an_tensor_set_requires_grad(w, true);
    an_adamw_config c = an_adamw_config_default();
    an_optim *opt;
    ck_assert_int_eq(an_optim_create(ctx, &c, &opt), AN_OK);
    ck_assert_msg(an_optim_add(ctx, opt, "w", &w, false, 0, 8) == AN_OK, "%s", an_error_message(ctx));
    ck_assert_int_eq(an_optim_state_find(opt, "w.master")->device, AN_CUDA);
    w->grad = an_tensor_zeros(ctx, AN_BF16, AN_CPU, 1, (int64_t[]){8});
    ck_assert_int_eq(an_optim_step(ctx, opt, NULL), AN_ERR_INPUT);
    ck_assert_ptr_nonnull(strstr(an_error_message(ctx), "device"));
    an_error_clear(ctx);
    ck_assert_int_eq(an_optim_step_count(opt), 0);
    an_tensor_release(w);
    an_optim_free(opt);
    test_ctx_free(ctx);
}
END_TEST

/* ---- torch / transformers golden file ----------------------------------------------------------- */

static double *json_doubles(json_t *array, int64_t *n) {
    ck_assert_msg(json_is_array(array), "fixture: array expected");
    *n = (int64_t)json_array_size(array);
    double *out = malloc((size_t)(*n ? *n : 1) * sizeof *out);
    for (int64_t i = 0; i < *n; i++) out[i] = json_number_value(json_array_get(array, (size_t)i));
    return out;
}

static an_schedule json_schedule(json_t *s) {
    const char *kind = json_string_value(json_object_get(s, "kind"));
    ck_assert_ptr_nonnull(kind);
    an_schedule out = {.warmup_steps = json_integer_value(json_object_get(s, "warmup_steps")),
                       .total_steps = json_integer_value(json_object_get(s, "total_steps")),
                       .min_lr_ratio = json_number_value(json_object_get(s, "min_lr_rate"))};
    out.kind = strcmp(kind, "constant") == 0 ? AN_SCHEDULE_CONSTANT
               : strcmp(kind, "linear") == 0 ? AN_SCHEDULE_LINEAR
                                             : AN_SCHEDULE_COSINE;
    return out;
}

static void check_fixture_case(json_t *cs) {
    an_ctx *ctx = test_ctx(71);
    const char *case_name = json_string_value(json_object_get(cs, "name"));
    json_t *betas = json_object_get(cs, "betas");
    an_adamw_config c = {.lr = json_number_value(json_object_get(cs, "lr")),
                         .beta1 = json_number_value(json_array_get(betas, 0)),
                         .beta2 = json_number_value(json_array_get(betas, 1)),
                         .eps = json_number_value(json_object_get(cs, "eps")),
                         .weight_decay = json_number_value(json_object_get(cs, "weight_decay")),
                         .max_grad_norm = json_number_value(json_object_get(cs, "max_grad_norm")),
                         .schedule = json_schedule(json_object_get(cs, "schedule"))};
    an_optim *opt;
    ck_assert_msg(an_optim_create(ctx, &c, &opt) == AN_OK, "%s: %s", case_name, an_error_message(ctx));
    json_t *jparams = json_object_get(cs, "params");
    int np = (int)json_array_size(jparams);
    ck_assert_int_le(np, 8);
    an_tensor *params[8];
    for (int k = 0; k < np; k++) {
        json_t *jp = json_array_get(jparams, (size_t)k);
        const char *name = json_string_value(json_object_get(jp, "name"));
        int64_t n;
        double *init = json_doubles(json_object_get(jp, "init"), &n);
        params[k] = an_tensor_new(ctx, AN_F32, AN_CPU, 1, &n);
        for (int64_t i = 0; i < n; i++) an_tensor_set(params[k], i, init[i]);
        free(init);
        bool no_decay = json_is_true(json_object_get(jp, "no_decay"));
        ck_assert_msg(an_optim_no_decay(name) == no_decay, "%s: no-decay rule differs from the fixture", name);
        ck_assert_int_eq(an_optim_add(ctx, opt, name, &params[k], no_decay, 0, n), AN_OK);
    }
    json_t *steps = json_object_get(cs, "steps");
    for (size_t s = 0; s < json_array_size(steps); s++) {
        json_t *js = json_array_get(steps, s);
        for (int k = 0; k < np; k++) {
            int64_t n;
            double *g = json_doubles(json_array_get(json_object_get(js, "grads"), (size_t)k), &n);
            ck_assert_int_eq(n, an_tensor_numel(params[k]));
            set_grad(ctx, params[k], g);
            free(g);
        }
        an_optim_report r;
        ck_assert_msg(an_optim_step(ctx, opt, &r) == AN_OK, "%s: %s", case_name, an_error_message(ctx));
        double lr = json_number_value(json_object_get(js, "lr"));
        ck_assert_msg(fabs(r.lr - lr) <= 1e-15 * lr, "%s step %zu: lr %.17g, torch %.17g", case_name, s + 1, r.lr, lr);
        json_t *jnorm = json_object_get(js, "grad_norm");
        if (json_is_number(jnorm)) {
            double norm = json_number_value(jnorm);
            ck_assert_msg(fabs(r.grad_norm - norm) <= 1e-6 * norm, "%s step %zu: grad norm %.9g, torch %.9g",
                          case_name, s + 1, r.grad_norm, norm);
        }
        for (int k = 0; k < np; k++) {
            int64_t n;
            double *want = json_doubles(json_array_get(json_object_get(js, "params"), (size_t)k), &n);
            char what[160];
            snprintf(what, sizeof what, "%s: parameter %d (torch)", case_name, k);
            assert_close_to(params[k], want, 1e-6, 1e-7, what, (int)s + 1);
            free(want);
        }
    }
    /* final moments */
    for (int k = 0; k < np; k++) {
        json_t *jp = json_array_get(jparams, (size_t)k);
        const char *name = json_string_value(json_object_get(jp, "name"));
        for (int m = 0; m < 2; m++) {
            int64_t n;
            double *want = json_doubles(json_object_get(jp, m ? "exp_avg_sq" : "exp_avg"), &n);
            char what[160];
            snprintf(what, sizeof what, "%s: %s.%s (torch)", case_name, name, m ? "exp_avg_sq" : "exp_avg");
            assert_close_to(state(opt, name, m ? "exp_avg_sq" : "exp_avg"), want, 1e-6, 1e-6, what,
                            (int)json_array_size(steps));
            free(want);
        }
        an_tensor_release(params[k]);
    }
    an_optim_free(opt);
    test_ctx_free(ctx);
}

START_TEST(test_matches_torch_and_transformers_fixture) {
    const char *path = ANNEAL_SOURCE_DIR "/tests/fixtures/optim/adamw_reference.json";
    FILE *f = fopen(path, "r");
    if (!f) {
        printf("SKIP test_matches_torch_and_transformers_fixture: %s not generated "
               "(python3 tests/fixtures/make_adamw_reference.py)\n",
               path);
        return;
    }
    fclose(f);
    json_error_t err;
    json_t *root = json_load_file(path, 0, &err);
    ck_assert_msg(root != NULL, "%s:%d: %s", path, err.line, err.text);
    json_t *schedules = json_object_get(root, "schedules");
    ck_assert_int_gt(json_array_size(schedules), 0);
    for (size_t i = 0; i < json_array_size(schedules); i++) {
        json_t *js = json_array_get(schedules, i);
        an_schedule s = json_schedule(js);
        json_t *mults = json_object_get(js, "multipliers");
        for (size_t step = 0; step < json_array_size(mults); step++) {
            double want = json_number_value(json_array_get(mults, step)), got = an_schedule_multiplier(&s, (int64_t)step);
            ck_assert_msg(fabs(got - want) <= 1e-15, "schedule %zu step %zu: %.17g, transformers %.17g", i, step, got,
                          want);
        }
    }
    json_t *cases = json_object_get(root, "adamw");
    ck_assert_int_gt(json_array_size(cases), 0);
    for (size_t i = 0; i < json_array_size(cases); i++) check_fixture_case(json_array_get(cases, i));
    json_decref(root);
}
END_TEST

/* ---- the update in backward ------------------------------------------------------------------- */

START_TEST(test_update_in_backward_is_bit_identical_to_the_step_after) {
    an_ctx *ctx = test_ctx(41);
    const an_dtype dtypes[2] = {AN_F32, AN_BF16};
    for (int d = 0; d < 2; d++)
        for (int micro = 1; micro <= 3; micro += 2) {
            test_update_in_backward_shape shape = {AN_CPU, dtypes[d], 3, 6, 5, 7, micro, 3, 0};
            test_update_in_backward_matches_step(ctx, &shape);
        }
    test_ctx_free(ctx);
}
END_TEST

static an_tensor *tied_block(an_ctx *ctx, an_tensor *const *in, int n, void *user) {
    (void)n;
    return an_linear(ctx, in[0], (an_tensor *)user, NULL);
}

START_TEST(test_update_in_backward_errors) {
    an_ctx *ctx = test_ctx(42);
    an_tensor *w = test_uniform(ctx, AN_F32, 2, (int64_t[]){4, 4}, -1, 1, true);
    an_tensor *x = test_uniform(ctx, AN_F32, 2, (int64_t[]){3, 4}, -1, 1, false);
    an_adamw_config c = an_adamw_config_default();
    c.max_grad_norm = 1.0;
    an_optim *clipped, *opt;
    ck_assert_int_eq(an_optim_create(ctx, &c, &clipped), AN_OK);
    ck_assert_int_eq(an_optim_add(ctx, clipped, "w", &w, false, 0, 16), AN_OK);
    ck_assert_int_eq(an_optim_backward_begin(ctx, clipped), AN_ERR_INPUT);
    ck_assert_msg(strstr(an_error_message(ctx), "max_grad_norm 1") != NULL, "%s", an_error_message(ctx));
    an_error_clear(ctx);
    ck_assert_ptr_null(ctx->grad_ready);
    an_optim_free(clipped);

    c.max_grad_norm = 0;
    ck_assert_int_eq(an_optim_create(ctx, &c, &opt), AN_OK);
    ck_assert_int_eq(an_optim_add(ctx, opt, "w", &w, false, 0, 16), AN_OK);
    ck_assert_int_eq(an_optim_backward_end(ctx, opt, NULL), AN_ERR_INTERNAL); /* no begin */
    an_error_clear(ctx);
    ck_assert_int_eq(an_optim_backward_begin(ctx, opt), AN_OK);
    ck_assert_int_eq(an_optim_backward_begin(ctx, opt), AN_ERR_INTERNAL); /* twice */
    an_error_clear(ctx);
    ck_assert_int_eq(an_optim_step(ctx, opt, NULL), AN_ERR_INTERNAL); /* a step while one is open */
    an_error_clear(ctx);
    ck_assert_int_eq(an_optim_backward_cancel(ctx, opt), AN_OK);
    ck_assert_ptr_null(ctx->grad_ready);
    ck_assert_int_eq(an_optim_step_count(opt), 0);

    /* a weight in two checkpointed segments: the re-run of the later one is its only reader when
       that ends, so it is reported then, and the earlier segment's re-run adds more gradient */
    ck_assert_int_eq(an_optim_backward_begin(ctx, opt), AN_OK);
    an_tensor *h1 = an_checkpoint(ctx, tied_block, &x, 1, w);
    an_tensor *h2 = an_checkpoint(ctx, tied_block, &h1, 1, w);
    an_tensor *loss = an_sum(ctx, h2);
    ck_assert_int_eq(an_backward(ctx, loss), AN_ERR_INTERNAL);
    ck_assert_msg(strstr(an_error_message(ctx), "w gained gradient after its update") != NULL, "%s",
                  an_error_message(ctx));
    an_error_clear(ctx);
    ck_assert_int_eq(an_optim_backward_cancel(ctx, opt), AN_OK);
    ck_assert_ptr_null(ctx->grad_ready);
    an_tensor_release(h1), an_tensor_release(h2), an_tensor_release(loss);
    an_tape_clear(ctx);

    /* a non-finite gradient: the error comes after the update (which cannot be skipped) */
    ck_assert_int_eq(an_optim_backward_begin(ctx, opt), AN_OK);
    an_tensor *nan = an_tensor_scalar(ctx, AN_F32, AN_CPU, NAN);
    an_tensor *y = an_linear(ctx, x, w, NULL), *s1 = an_sum(ctx, y), *bad = an_mul(ctx, s1, nan);
    ck_assert_int_eq(an_backward(ctx, bad), AN_OK);
    an_optim_report r;
    ck_assert_int_eq(an_optim_backward_end(ctx, opt, &r), AN_ERR_INPUT);
    ck_assert_msg(strstr(an_error_message(ctx), "already applied") != NULL, "%s", an_error_message(ctx));
    ck_assert(isnan(r.grad_norm));
    ck_assert_int_eq(an_optim_step_count(opt), 1);
    an_error_clear(ctx);
    an_tensor_release(nan), an_tensor_release(y), an_tensor_release(s1), an_tensor_release(bad);
    an_optim_zero_grad(opt);
    an_optim_free(opt);
    an_tensor_release(w), an_tensor_release(x);
    test_ctx_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("optim");
    TCase *tc = tcase_create("optim");
    tcase_add_test(tc, test_adamw_matches_float64_torch_algorithm);
    tcase_add_test(tc, test_bf16_and_f16_params_keep_fp32_masters);
    tcase_add_test(tc, test_param_without_grad_is_skipped);
    tcase_add_test(tc, test_config_and_registration_errors);
    tcase_add_test(tc, test_schedules_match_transformers_at_every_step);
    tcase_add_test(tc, test_optimizer_steps_follow_the_schedule_and_resume_with_it);
    tcase_add_test(tc, test_clip_grad_norm_scales_only_above_max);
    tcase_add_test(tc, test_step_with_nonfinite_grad_norm_is_skipped);
    tcase_add_test(tc, test_accumulated_micro_batches_equal_one_batch);
    tcase_add_test(tc, test_slices_update_like_the_whole_tensor);
    tcase_add_test(tc, test_no_decay_rule_agrees_with_model_tables);
    tcase_add_test(tc, test_state_round_trip_gives_identical_next_step);
    tcase_add_test(tc, test_sync_masters_picks_up_new_weights);
    tcase_add_test(tc, test_cuda_parameter_with_a_host_gradient_is_an_explicit_error);
    tcase_add_test(tc, test_matches_torch_and_transformers_fixture);
    tcase_add_test(tc, test_update_in_backward_is_bit_identical_to_the_step_after);
    tcase_add_test(tc, test_update_in_backward_errors);
    suite_add_tcase(s, tc);
    return test_run(s);
}
