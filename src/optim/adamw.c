/* adamw.c — the AdamW optimizer: configuration, parameter registration, and the step (global
 * gradient norm, clipping, schedule, decoupled weight decay, moments, bias correction).
 *
 * Numerics: the fp32 state (master, exp_avg, exp_avg_sq) is widened to float64, each element's
 * update is computed there and every stored value is rounded to fp32 once; a bf16/f16 parameter
 * then receives its master rounded to nearest even. Nothing is modified until every parameter
 * and gradient has been checked and the global gradient norm is known to be finite.
 * Devices: a parameter's state lives on its device. All CUDA parameters are updated by one
 * an_cuda_adamw_multi launch over a device table of their element ranges (kernels/adamw.cu; the
 * table is uploaded again only when an address in it changes), which applies the same float64
 * operations in the same order, so an update is bit-identical on either device for the same
 * inputs; only the gradient norm's summation order differs (grad.c: one launch over the same
 * table), which can move the clipping factor in its last bits. Clipping never rewrites the
 * gradients here: its factor is the update's grad_scale. */
#include "optim/internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda.h"  /* an_cuda_adamw_multi, an_adamw_segment */

enum { CHUNK = 1024 }; /* gradient elements widened at a time */

an_adamw_config an_adamw_config_default(void) {
    return (an_adamw_config){.lr = 1e-3, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 1e-2,
                             .max_grad_norm = 0, .schedule = {.kind = AN_SCHEDULE_CONSTANT}};
}

static an_status check_config(an_ctx *ctx, const an_adamw_config *c) {
    /* torch.optim.AdamW.__init__ rejects the same values. */
    AN_CHECK(ctx, c->lr >= 0 && isfinite(c->lr), AN_ERR_INPUT, "optimizer: lr = %g, expected >= 0", c->lr);
    AN_CHECK(ctx, c->eps >= 0 && isfinite(c->eps), AN_ERR_INPUT, "optimizer: eps = %g, expected >= 0", c->eps);
    AN_CHECK(ctx, c->beta1 >= 0 && c->beta1 < 1, AN_ERR_INPUT, "optimizer: beta1 = %g, expected in [0, 1)", c->beta1);
    AN_CHECK(ctx, c->beta2 >= 0 && c->beta2 < 1, AN_ERR_INPUT, "optimizer: beta2 = %g, expected in [0, 1)", c->beta2);
    AN_CHECK(ctx, c->weight_decay >= 0 && isfinite(c->weight_decay), AN_ERR_INPUT,
             "optimizer: weight_decay = %g, expected >= 0", c->weight_decay);
    AN_CHECK(ctx, c->max_grad_norm >= 0 && isfinite(c->max_grad_norm), AN_ERR_INPUT,
             "optimizer: max_grad_norm = %g, expected >= 0 (0 turns clipping off)", c->max_grad_norm);
    return an_schedule_check(ctx, &c->schedule);
}

an_status an_optim_create(an_ctx *ctx, const an_adamw_config *config, an_optim **out) {
    AN_TRY(check_config(ctx, config));
    an_optim *opt = calloc(1, sizeof *opt);
    AN_CHECK(ctx, opt != NULL, AN_ERR_INTERNAL, "out of host memory");
    opt->config = *config;
    opt->n_table = -1;
    *out = opt;
    return AN_OK;
}

void an_optim_free(an_optim *opt) {
    if (!opt) return;
    for (int i = 0; i < opt->n_entries; i++)
        for (int s = 0; s < 3; s++) an_tensor_release(opt->entries[i].state[s]);
    free(opt->entries);
    free(opt->table);
    an_tensor_release(opt->table_dev);
    free(opt->bwd_done);
    free(opt->bwd_first_chunk);
    an_tensor_release(opt->bwd_partial);
    free(opt);
}

static bool param_dtype_ok(an_dtype dtype) { return dtype == AN_F32 || dtype == AN_BF16 || dtype == AN_F16; }

/* Frees the state of an entry whose registration failed half way. */
static an_status drop_entry(optim_entry *e, an_status st) {
    for (int s = 0; s < 3; s++) an_tensor_release(e->state[s]);
    memset(e, 0, sizeof *e);
    return st;
}

an_status an_optim_add(an_ctx *ctx, an_optim *opt, const char *name, an_tensor **slot, bool no_decay,
                       int64_t start, int64_t end) {
    AN_CHECK(ctx, name && strlen(name) < OPTIM_NAME_MAX, AN_ERR_INPUT,
             "optimizer: parameter name missing or longer than %d characters", OPTIM_NAME_MAX - 1);
    AN_CHECK(ctx, slot && *slot, AN_ERR_INPUT, "optimizer: %s has no tensor", name);
    AN_CHECK(ctx, !opt->in_backward, AN_ERR_INTERNAL, "optimizer: %s registered during an update in backward", name);
    an_tensor *p = *slot;
    AN_CHECK(ctx, param_dtype_ok(p->dtype), AN_ERR_INPUT, "optimizer: %s is %s; f32, bf16 or f16 expected", name,
             an_dtype_name(p->dtype));
    int64_t numel = an_tensor_numel(p);
    AN_CHECK(ctx, 0 <= start && start <= end && end <= numel, AN_ERR_INPUT,
             "optimizer: %s: elements [%lld, %lld) outside its %lld", name, (long long)start, (long long)end,
             (long long)numel);
    for (int i = 0; i < opt->n_entries; i++) {
        const optim_entry *o = &opt->entries[i];
        AN_CHECK(ctx, strcmp(o->name, name) != 0, AN_ERR_INPUT, "optimizer: %s registered twice", name);
        AN_CHECK(ctx, *o->slot != p || end <= o->start || o->end <= start, AN_ERR_INPUT,
                 "optimizer: %s overlaps the elements already registered as %s", name, o->name);
    }
    if (opt->n_entries == opt->cap) {
        int cap = opt->cap ? 2 * opt->cap : 64;
        optim_entry *grown = realloc(opt->entries, (size_t)cap * sizeof *grown);
        AN_CHECK(ctx, grown != NULL, AN_ERR_INTERNAL, "out of host memory");
        opt->entries = grown;
        opt->cap = cap;
    }
    optim_entry *e = &opt->entries[opt->n_entries];
    memset(e, 0, sizeof *e);
    snprintf(e->name, sizeof e->name, "%s", name);
    e->slot = slot;
    e->no_decay = no_decay;
    e->start = start;
    e->end = end;

    bool whole = start == 0 && end == numel;
    int64_t flat = end - start;
    int ndim = whole ? p->ndim : 1;
    const int64_t *shape = whole ? p->shape : &flat;
    static const char *suffix[3] = {"exp_avg", "exp_avg_sq", "master"};
    int n_state = p->dtype == AN_F32 ? 2 : 3;
    for (int s = 0; s < n_state; s++) {
        snprintf(e->state_names[s], sizeof e->state_names[s], "%s.%s", name, suffix[s]);
        e->state[s] = an_tensor_zeros(ctx, AN_F32, p->device, ndim, shape);
        if (!e->state[s]) return drop_entry(e, an_error_status(ctx));
    }
    if (e->state[STATE_MASTER]) {
        an_tensor *src = optim_slice(ctx, p, start, end);
        an_status st = src ? an_tensor_copy_into(ctx, e->state[STATE_MASTER], src) : an_error_status(ctx);
        an_tensor_release(src);
        if (st != AN_OK) return drop_entry(e, st);
    }
    opt->n_entries++;
    return AN_OK;
}

an_status an_optim_add_params(an_ctx *ctx, an_optim *opt, const an_param *params, int n_params) {
    for (int i = 0; i < n_params; i++) {
        an_tensor *p = *params[i].slot;
        if (!p || !p->requires_grad) continue;
        AN_TRY(an_optim_add(ctx, opt, params[i].name, params[i].slot, params[i].no_decay, 0, an_tensor_numel(p)));
    }
    return AN_OK;
}

an_status an_optim_sync_masters(an_ctx *ctx, an_optim *opt) {
    for (int i = 0; i < opt->n_entries; i++) {
        optim_entry *e = &opt->entries[i];
        if (!e->state[STATE_MASTER]) continue;
        an_tensor *src = optim_slice(ctx, *e->slot, e->start, e->end);
        if (!src) return an_error_status(ctx);
        an_status st = an_tensor_copy_into(ctx, e->state[STATE_MASTER], src);
        an_tensor_release(src);
        AN_TRY(st);
    }
    return AN_OK;
}

double an_optim_lr(const an_optim *opt) {
    return opt->config.lr * an_schedule_multiplier(&opt->config.schedule, opt->step);
}

int64_t an_optim_step_count(const an_optim *opt) { return opt->step; }

/* One AdamW update of n elements. master (n) is the f32 parameter itself, or the master copy when
 * param (n, param_dtype) is given and receives the rounded result. grad (n) is f32/bf16/f16.
 *
 * Transcribed from torch's single-tensor AdamW (torch/optim/adamw.py _single_tensor_adamw, and
 * since AdamW became Adam(decoupled_weight_decay=True), torch/optim/adam.py _single_tensor_adam),
 * for amsgrad=False, maximize=False, with step = t after step_t += 1:
 *     param.mul_(1 - lr * weight_decay)
 *     exp_avg.lerp_(grad, 1 - beta1)
 *     exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
 *     bias_correction1 = 1 - beta1 ** step
 *     bias_correction2 = 1 - beta2 ** step
 *     step_size = lr / bias_correction1
 *     bias_correction2_sqrt = bias_correction2 ** 0.5
 *     denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
 *     param.addcdiv_(exp_avg, denom, value=-step_size)
 * As in torch, the update reads exp_avg and exp_avg_sq after they were stored (rounded to fp32).
 * an_cuda_adamw_multi (kernels/adamw.cu) repeats these float64 operations in this
 * order: change both. */
static void adamw_cpu(const an_adamw_scalars *k, float *master, float *exp_avg, float *exp_avg_sq, const void *grad,
                      an_dtype grad_dtype, void *param, an_dtype param_dtype, int64_t n) {
    size_t grad_size = an_dtype_size(grad_dtype), param_size = an_dtype_size(param_dtype);
    float g32[CHUNK];
    for (int64_t i0 = 0; i0 < n; i0 += CHUNK) {
        int64_t c = n - i0 < CHUNK ? n - i0 : CHUNK;
        an_dtype_convert((const char *)grad + (size_t)i0 * grad_size, grad_dtype, g32, AN_F32, (size_t)c);
        for (int64_t j = 0; j < c; j++) {
            int64_t i = i0 + j;
            double g = (double)g32[j] * k->grad_scale;
            double p = (double)master[i] * k->decay;
            double m = exp_avg[i], v = exp_avg_sq[i];
            exp_avg[i] = (float)(m + (1 - k->beta1) * (g - m));
            exp_avg_sq[i] = (float)(k->beta2 * v + (1 - k->beta2) * g * g);
            double denom = sqrt((double)exp_avg_sq[i]) / k->bc2_sqrt + k->eps;
            master[i] = (float)(p - k->step_size * (double)exp_avg[i] / denom);
        }
        if (param)
            an_dtype_convert(master + i0, AN_F32, (char *)param + (size_t)i0 * param_size, param_dtype, (size_t)c);
    }
}

an_adamw_scalars optim_scalars(const an_optim *opt, double grad_scale) {
    const an_adamw_config *c = &opt->config;
    double t = (double)(opt->step + 1), lr = an_optim_lr(opt);
    an_adamw_scalars k = {.beta1 = c->beta1, .beta2 = c->beta2, .eps = c->eps, .grad_scale = grad_scale};
    k.step_size = lr / (1 - pow(c->beta1, t));
    k.bc2_sqrt = sqrt(1 - pow(c->beta2, t));
    k.decay = 1 - lr * c->weight_decay; /* no_decay entries use 1 instead */
    return k;
}

void optim_update_cpu_entry(const an_adamw_scalars *k, const optim_entry *e) {
    an_tensor *p = *e->slot;
    an_adamw_scalars ke = *k;
    ke.decay = e->no_decay ? 1.0 : k->decay;
    size_t ps = an_dtype_size(p->dtype), gs = an_dtype_size(p->grad->dtype);
    char *param = (char *)an_tensor_data(p) + (size_t)e->start * ps;
    const char *grad = (const char *)an_tensor_data(p->grad) + (size_t)e->start * gs;
    an_tensor *master = e->state[STATE_MASTER];
    adamw_cpu(&ke, master ? an_tensor_data(master) : (float *)(void *)param, an_tensor_data(e->state[STATE_EXP_AVG]),
                    an_tensor_data(e->state[STATE_EXP_AVG_SQ]), grad, p->grad->dtype, master ? param : NULL, p->dtype,
                    e->end - e->start);
}

/* Everything an entry's update reads is present and consistent. */
an_status optim_check_entry(an_ctx *ctx, const optim_entry *e) {
    const an_tensor *p = *e->slot;
    AN_CHECK(ctx, p != NULL, AN_ERR_INPUT, "optimizer: %s has no tensor", e->name);
    AN_CHECK(ctx, param_dtype_ok(p->dtype) && (p->dtype == AN_F32) == (e->state[STATE_MASTER] == NULL),
             AN_ERR_INPUT, "optimizer: %s changed dtype to %s after it was registered", e->name,
             an_dtype_name(p->dtype));
    AN_CHECK(ctx, an_tensor_numel(p) >= e->end && p->device == e->state[STATE_EXP_AVG]->device, AN_ERR_INPUT,
             "optimizer: %s changed size or device after it was registered", e->name);
    const an_tensor *g = p->grad;
    if (g) {
        AN_CHECK(ctx, an_dtype_is_float(g->dtype) && g->dtype != AN_F64, AN_ERR_INPUT,
                 "optimizer: the gradient of %s is %s; f32, bf16 or f16 expected", e->name, an_dtype_name(g->dtype));
        AN_CHECK(ctx, an_tensor_numel(g) == an_tensor_numel(p) && g->device == p->device, AN_ERR_INPUT,
                 "optimizer: the gradient of %s does not match the parameter's size and device", e->name);
    }
    return AN_OK;
}

/* The segment of a CUDA entry with a gradient (zeroed padding, so tables compare with memcmp). */
an_adamw_segment optim_entry_segment(const optim_entry *e) {
    an_tensor *p = *e->slot;
    size_t ps = an_dtype_size(p->dtype), gs = an_dtype_size(p->grad->dtype);
    char *param = (char *)an_tensor_data(p) + (size_t)e->start * ps;
    an_tensor *master = e->state[STATE_MASTER];
    an_adamw_segment seg;
    memset(&seg, 0, sizeof seg);
    seg.master = master ? an_tensor_data(master) : (float *)(void *)param;
    seg.exp_avg = an_tensor_data(e->state[STATE_EXP_AVG]);
    seg.exp_avg_sq = an_tensor_data(e->state[STATE_EXP_AVG_SQ]);
    seg.grad = (const char *)an_tensor_data(p->grad) + (size_t)e->start * gs;
    seg.param = master ? param : NULL;
    seg.n = e->end - e->start;
    seg.grad_dtype = (int32_t)p->grad->dtype;
    seg.param_dtype = (int32_t)p->dtype;
    seg.no_decay = e->no_decay;
    return seg;
}

/* Puts the table of this step's CUDA entries (n, laid out) on the device, unless table_dev
 * already holds exactly it: parameters and state do not move, and gradients from the caching
 * allocator usually come back at the same addresses, so most steps upload nothing. */
static an_status sync_table(an_ctx *ctx, an_optim *opt, const an_adamw_segment *table, int n, int64_t chunks) {
    size_t bytes = (size_t)n * sizeof *table;
    if (n == 0 || (n == opt->n_table && memcmp(table, opt->table, bytes) == 0)) {
        opt->n_table = n, opt->table_chunks = chunks;
        return AN_OK;
    }
    if (n > opt->table_cap || !opt->table_dev) {
        an_adamw_segment *grown = realloc(opt->table, bytes);
        AN_CHECK(ctx, grown != NULL, AN_ERR_INTERNAL, "optimizer: out of host memory");
        opt->table = grown;
        opt->n_table = -1;
        an_tensor_release(opt->table_dev);
        int64_t dev_bytes = (int64_t)(bytes + sizeof(double));
        opt->table_dev = an_tensor_new(ctx, AN_U8, AN_CUDA, 1, &dev_bytes);
        opt->table_cap = opt->table_dev ? n : 0;
        if (!opt->table_dev) return an_error_status(ctx);
    }
    opt->n_table = -1; /* until the copy succeeded */
    AN_TRY(an_cuda_memcpy(ctx, an_tensor_data(opt->table_dev), AN_CUDA, table, AN_CPU, bytes));
    memcpy(opt->table, table, bytes);
    opt->n_table = n;
    opt->table_chunks = chunks;
    return AN_OK;
}

/* The global gradient norm's sum of squares: the CUDA entries' in one launch over the device
 * table (uploaded first when it changed), then each host entry's in order. */
static an_status step_sum_sq(an_ctx *ctx, an_optim *opt, double *sum_sq) {
    int n = opt->n_entries, n_dev = 0;
    an_adamw_segment *table = calloc((size_t)(n ? n : 1), sizeof *table); /* (n) at most */
    AN_CHECK(ctx, table != NULL, AN_ERR_INTERNAL, "optimizer: out of host memory");
    for (int i = 0; i < n; i++) {
        const optim_entry *e = &opt->entries[i];
        const an_tensor *p = *e->slot;
        if (p->device == AN_CUDA && p->grad && e->end > e->start) table[n_dev++] = optim_entry_segment(e);
    }
    int64_t chunks = optim_layout(table, n_dev);
    an_status st = sync_table(ctx, opt, table, n_dev, chunks);
    free(table);
    AN_TRY(st);
    *sum_sq = 0;
    if (n_dev) {
        size_t bytes = (size_t)n_dev * sizeof *table;
        double *slot = (double *)(void *)((char *)an_tensor_data(opt->table_dev) + bytes);
        AN_TRY(optim_table_sum_sq(ctx, an_tensor_data(opt->table_dev), n_dev, chunks, slot, sum_sq));
    }
    for (int i = 0; i < n; i++) {
        const optim_entry *e = &opt->entries[i];
        const an_tensor *p = *e->slot;
        if (p->device != AN_CUDA && p->grad) *sum_sq += optim_cpu_sum_sq(p->grad, e->start, e->end);
    }
    return AN_OK;
}

an_status an_optim_step(an_ctx *ctx, an_optim *opt, an_optim_report *report) {
    const an_adamw_config *c = &opt->config;
    AN_CHECK(ctx, !opt->in_backward, AN_ERR_INTERNAL,
             "optimizer: an_optim_step between an_optim_backward_begin and its end (the step is in backward)");
    for (int i = 0; i < opt->n_entries; i++) AN_TRY(optim_check_entry(ctx, &opt->entries[i]));
    double sum_sq = 0;
    AN_TRY(step_sum_sq(ctx, opt, &sum_sq));
    double norm = sqrt(sum_sq), lr = an_optim_lr(opt);
    double scale = optim_clip_scale(c->max_grad_norm, norm);
    if (report) *report = (an_optim_report){.step = opt->step, .lr = lr, .grad_norm = norm, .grad_scale = 1.0};
    AN_CHECK(ctx, isfinite(norm), AN_ERR_INPUT,
             "optimizer: the gradient norm is %g at step %lld; the step was skipped (no parameter changed)", norm,
             (long long)opt->step + 1);

    /* clipping is folded into the update (grad_scale): the gradients themselves are not rescaled */
    an_adamw_scalars k = optim_scalars(opt, scale);
    /* every CUDA entry in one launch: a failure here is a device error */
    if (opt->n_table > 0)
        AN_TRY(an_cuda_adamw_multi(ctx, &k, an_tensor_data(opt->table_dev), opt->n_table, opt->table_chunks));
    for (int i = 0; i < opt->n_entries; i++) {
        const optim_entry *e = &opt->entries[i];
        const an_tensor *p = *e->slot;
        if (p->grad && p->device != AN_CUDA) optim_update_cpu_entry(&k, e); /* torch skips grad None */
    }
    opt->step++;
    if (report) *report = (an_optim_report){.step = opt->step, .lr = lr, .grad_norm = norm, .grad_scale = scale};
    return AN_OK;
}
