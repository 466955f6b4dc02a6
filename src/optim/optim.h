/* optim.h — AdamW as torch.optim.AdamW computes it, with fp32 master weights for bf16/f16
 * parameters, the transformers learning-rate schedules, global gradient-norm clipping, and the
 * state a checkpoint saves.
 *
 * Rules:
 * - The optimizer works over named parameters (Hugging Face names, usually the model's an_param
 *   table) and updates each one's elements [start, end) only, so under ZeRO-3 a rank updates its
 *   shard and holds state for nothing else. Gradients are read from the parameter's .grad at the
 *   same element positions.
 * - State is fp32 and owned by the optimizer: exp_avg and exp_avg_sq always; a master copy only
 *   for bf16/f16 parameters (an f32 parameter is its own master). After every step a bf16/f16
 *   parameter holds its master rounded to nearest even.
 * - The schedule is part of the optimizer: step k (counting from 0) uses lr * multiplier(k), as
 *   the transformers Trainer does (LambdaLR is evaluated at 0 for the first optimizer.step()).
 *   Restoring the step count therefore restores the learning rate.
 * - Loss normalisation for gradient accumulation is the caller's job: each micro-batch loss is
 *   divided by the whole batch's normaliser, and backward adds into .grad (see an_optim_zero_grad).
 * - Updates are computed in float64 from the fp32 state and rounded once per stored value, on the
 *   parameter's device: all CUDA parameters in one an_cuda_adamw_multi launch (kernels/cuda.h),
 *   bit-identical to the CPU loop for the same inputs and clipping factor (never a silent CPU
 *   detour). */
#ifndef AN_OPTIM_OPTIM_H
#define AN_OPTIM_OPTIM_H

#include <stdbool.h>
#include <stdint.h>

#include "autograd/tensor.h"
#include "model/model.h"  /* an_param: the name table the optimizer is usually built from */

/* ---- learning-rate schedules ----------------------------------------------------------------- */

typedef enum {
    AN_SCHEDULE_CONSTANT = 0, /* transformers get_constant_schedule_with_warmup */
    AN_SCHEDULE_LINEAR = 1,   /* get_linear_schedule_with_warmup */
    AN_SCHEDULE_COSINE = 2,   /* get_cosine_schedule_with_warmup (num_cycles 0.5), or with
                                 min_lr_ratio > 0 get_cosine_with_min_lr_schedule_with_warmup */
} an_schedule_kind;

typedef struct {
    an_schedule_kind kind;
    int64_t warmup_steps;  /* multiplier rises linearly from 0 over these steps */
    int64_t total_steps;   /* num_training_steps (linear and cosine) */
    double min_lr_ratio;   /* cosine only: the floor as a fraction of lr (transformers min_lr_rate) */
} an_schedule;

/* The multiplier of the base learning rate at step `step` (0 for the first update), exactly as the
 * transformers lambda computes it in Python floats — including past total_steps, where linear
 * stays at 0 and cosine follows the cosine on (as transformers does). */
double an_schedule_multiplier(const an_schedule *schedule, int64_t step);
/* AN_ERR_INPUT naming the field when the schedule is not one transformers would accept. */
an_status an_schedule_check(an_ctx *ctx, const an_schedule *schedule);

/* ---- weight-decay rule ----------------------------------------------------------------------- */

/* True when the parameter named `name` gets no weight decay: biases, norms and embeddings. The
 * name patterns are the transformers Trainer's (get_decay_parameter_names: "bias", "layernorm",
 * "rmsnorm", a "norm" component, a "_norm" suffix; case-insensitive) plus "embed" for embedding
 * tables. lm_head decays (untied); tied, it is embed_tokens and does not. */
bool an_optim_no_decay(const char *name);

/* ---- the optimizer --------------------------------------------------------------------------- */

typedef struct {
    double lr;            /* peak learning rate (torch default 1e-3) */
    double beta1, beta2;  /* 0.9, 0.999 */
    double eps;           /* 1e-8, added after the square root of the bias-corrected exp_avg_sq */
    double weight_decay;  /* decoupled; 0.01 (torch AdamW default); skipped for no_decay params */
    double max_grad_norm; /* > 0: clip the global gradient L2 norm to this; 0: no clipping */
    an_schedule schedule;
} an_adamw_config;

/* torch.optim.AdamW's defaults, no clipping, constant schedule without warmup. */
an_adamw_config an_adamw_config_default(void);

typedef struct an_optim an_optim;

/* What one step did, for logging. */
typedef struct {
    int64_t step;       /* the optimizer step just taken, 1 for the first */
    double lr;          /* the learning rate it used */
    double grad_norm;   /* global L2 norm of the gradients before clipping (always computed) */
    double grad_scale;  /* factor the gradients were multiplied by: max_norm/(norm+1e-6) or 1 */
} an_optim_report;

/* A new optimizer with no parameters; AN_ERR_INPUT naming the field for a bad config (torch's
 * checks: lr, eps, weight_decay >= 0, 0 <= beta < 1). Free with an_optim_free. */
an_status an_optim_create(an_ctx *ctx, const an_adamw_config *config, an_optim **out);
void an_optim_free(an_optim *opt);

/* Registers elements [start, end) of *slot (flattened) under `name`. The slot is read at every
 * step, so the model may swap the tensor; its dtype must be f32, bf16 or f16. State is allocated
 * now on the parameter's device: moments zero and, for bf16/f16, the master copied from the
 * parameter's current values (see an_optim_sync_masters when the values change later). */
an_status an_optim_add(an_ctx *ctx, an_optim *opt, const char *name, an_tensor **slot, bool no_decay,
                       int64_t start, int64_t end);
/* Registers every whole parameter of a model table that requires grad (frozen ones would never
 * have a gradient), with the table's no_decay flag. */
an_status an_optim_add_params(an_ctx *ctx, an_optim *opt, const an_param *params, int n_params);

/* One AdamW step over every registered parameter that has a gradient (one without .grad is
 * skipped, as torch skips p.grad None). Computes the global gradient norm first; a NaN or
 * infinite norm is an AN_ERR_INPUT error and nothing changes — no parameter, state or step count —
 * so the caller can log it and go on with the next batch. report may be NULL.
 * The step count is one for the whole optimizer (as under ZeRO); torch keeps one per parameter,
 * so the two differ only for a parameter that had no gradient at some earlier step. */
an_status an_optim_step(an_ctx *ctx, an_optim *opt, an_optim_report *report);

/* The step taken during backward (in_backward.c): between an_optim_backward_begin and
 * an_optim_backward_end, backward updates each registered parameter as soon as its gradient is
 * final, on the CUDA side stream beside the backward's remaining kernels (CPU parameters at once,
 * in the hook), with an_optim_step's arithmetic and no clipping. Begin right before the backward
 * of a step's last micro-batch; end after it (it updates any parameter whose gradient the
 * backward did not report, joins the side stream, counts the step and fills report, whose
 * grad_norm is summed as the updates read the gradients). Then an_optim_zero_grad as usual.
 * begin: AN_ERR_INPUT when config.max_grad_norm > 0 (the norm is known only after the last
 * gradient). end: AN_ERR_INPUT for a non-finite norm, after the parameters took it. After a failed
 * backward call an_optim_backward_cancel (parameters already updated stay so; the count does not
 * move). */
an_status an_optim_backward_begin(an_ctx *ctx, an_optim *opt);
an_status an_optim_backward_end(an_ctx *ctx, an_optim *opt, an_optim_report *report);
an_status an_optim_backward_cancel(an_ctx *ctx, an_optim *opt);
/* Elements one CUDA block of the update in backward covers (default AN_ADAMW_SIDE_CHUNK, 4096; a
 * multiple of 8): for measurement (bench/train_step --side-grain). */
an_status an_optim_backward_grain(an_ctx *ctx, an_optim *opt, int64_t elements);

/* The learning rate the next step will use, and the number of steps taken. */
double an_optim_lr(const an_optim *opt);
int64_t an_optim_step_count(const an_optim *opt);

/* Releases the .grad of every registered parameter (torch's zero_grad(set_to_none=True)); the
 * next backward allocates it afresh. Between the micro-batches of one step, do not call it:
 * backward adds into .grad. */
void an_optim_zero_grad(an_optim *opt);
/* The same over a model table. */
void an_optim_zero_grad_params(const an_param *params, int n_params);

/* Copies every bf16/f16 parameter's current values into its master (call after overwriting the
 * parameters, e.g. loading weights into a model whose optimizer already exists). */
an_status an_optim_sync_masters(an_ctx *ctx, an_optim *opt);

/* ---- clipping on its own --------------------------------------------------------------------- */

/* torch.nn.utils.clip_grad_norm_(params, max_norm > 0) with error_if_nonfinite=True: total = L2 norm
 * over every element of every .grad (params without one are skipped), accumulated in float64;
 * when max_norm / (total + 1e-6) < 1 each grad is multiplied by it (rounded to the grad's dtype).
 * *total_norm gets the norm before clipping; a NaN/inf norm is AN_ERR_INPUT and no grad changes.
 * an_optim_step clips on its own (config.max_grad_norm) without this rounding of the grads. */
an_status an_optim_clip_grad_norm(an_ctx *ctx, an_tensor *const *params, int n_params, double max_norm,
                                  double *total_norm);

/* ---- state for checkpoints ------------------------------------------------------------------- */

/* The state tensors, in registration order, per parameter: "<name>.exp_avg", "<name>.exp_avg_sq",
 * and for bf16/f16 parameters "<name>.master". Each is the optimizer's own f32 tensor (borrowed,
 * valid until an_optim_free), shaped like the parameter for a whole-tensor entry and (end - start)
 * for a slice. Together with an_optim_step_count they are everything a bit-exact resume needs. */
int an_optim_state_count(const an_optim *opt);
an_tensor *an_optim_state_at(const an_optim *opt, int i, const char **name);
an_tensor *an_optim_state_find(const an_optim *opt, const char *name);

/* Sets the step count and every state tensor from values[i] named names[i]: each state tensor
 * exactly once, each value f32 with the state's element count (copied bit for bit, from either
 * device). A restored master is also written, rounded, into its parameter. Everything is checked
 * before anything is copied: on AN_ERR_INPUT the optimizer is unchanged. */
an_status an_optim_restore(an_ctx *ctx, an_optim *opt, int64_t step, int n, const char *const *names,
                           an_tensor *const *values);

#endif
