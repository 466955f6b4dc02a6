/* schedule.c — the learning-rate multipliers of transformers' schedules with warmup
 * (transformers/optimization.py), computed in double with the same operations in the same order
 * as the Python lambdas, so each step's multiplier is the same float64 value. */
#include "optim/internal.h"

#include <math.h>

/* Python's max(1, n) on ints, then float(). */
static double at_least_one(int64_t n) { return (double)(n > 1 ? n : 1); }

double an_schedule_multiplier(const an_schedule *s, int64_t step) {
    /* Every lambda starts with the warmup:
     *   if current_step < num_warmup_steps: return float(current_step) / float(max(1, num_warmup_steps)) */
    if (step < s->warmup_steps) return (double)step / at_least_one(s->warmup_steps);
    switch (s->kind) {
    case AN_SCHEDULE_CONSTANT: /* _get_constant_schedule_with_warmup_lr_lambda: return 1.0 */
        return 1.0;
    case AN_SCHEDULE_LINEAR: { /* _get_linear_schedule_with_warmup_lr_lambda */
        double m = (double)(s->total_steps - step) / at_least_one(s->total_steps - s->warmup_steps);
        return m > 0.0 ? m : 0.0; /* max(0.0, ...) */
    }
    case AN_SCHEDULE_COSINE: { /* _get_cosine_schedule_with_warmup_lr_lambda, num_cycles = 0.5 */
        const double pi = 3.141592653589793, num_cycles = 0.5; /* math.pi */
        double progress = (double)(step - s->warmup_steps) / at_least_one(s->total_steps - s->warmup_steps);
        double factor = 0.5 * (1.0 + cos(pi * num_cycles * 2.0 * progress));
        /* factor = factor * (1 - min_lr_rate) + min_lr_rate; return max(0, factor). With
         * min_lr_rate 0 this is the older max(0.0, 0.5 * (1.0 + cos(...))) value for value. */
        factor = factor * (1 - s->min_lr_ratio) + s->min_lr_ratio;
        return factor > 0.0 ? factor : 0.0;
    }
    }
    return 0.0;
}

an_status an_schedule_check(an_ctx *ctx, const an_schedule *s) {
    AN_CHECK(ctx, s->kind == AN_SCHEDULE_CONSTANT || s->kind == AN_SCHEDULE_LINEAR || s->kind == AN_SCHEDULE_COSINE,
             AN_ERR_INPUT, "schedule: unknown kind %d (constant, linear or cosine)", (int)s->kind);
    AN_CHECK(ctx, s->warmup_steps >= 0, AN_ERR_INPUT, "schedule: warmup_steps = %lld, expected >= 0",
             (long long)s->warmup_steps);
    if (s->kind != AN_SCHEDULE_CONSTANT)
        AN_CHECK(ctx, s->total_steps > 0, AN_ERR_INPUT, "schedule: total_steps = %lld, expected > 0 for %s decay",
                 (long long)s->total_steps, s->kind == AN_SCHEDULE_LINEAR ? "linear" : "cosine");
    AN_CHECK(ctx, s->min_lr_ratio >= 0 && s->min_lr_ratio <= 1, AN_ERR_INPUT,
             "schedule: min_lr_ratio = %g, expected in [0, 1]", s->min_lr_ratio);
    AN_CHECK(ctx, s->min_lr_ratio == 0 || s->kind == AN_SCHEDULE_COSINE, AN_ERR_INPUT,
             "schedule: min_lr_ratio = %g is only for the cosine schedule", s->min_lr_ratio);
    return AN_OK;
}
