/* train.c — the training loop (see train.h): resume, micro-batches with token-count
 * normalisation, optimizer steps, logging, evaluation, checkpoints, and the final artifacts. */
#include "train/train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "autograd/tape.h"     /* an_backward, an_tape_clear */
#include "ckpt/atomic.h"       /* an_atomic_write_text */
#include "ckpt/checkpoint.h"   /* an_ckpt_* */
#include "model/lora.h"        /* an_lora_save_peft, an_lora_merge */
#include "model/save.h"        /* an_model_save */
#include "train/run.h"

/* The value of a scalar loss wherever it lives. */
static double scalar(an_ctx *ctx, an_tensor *t) {
    if (t->device == AN_CPU) return an_tensor_get(t, 0);
    an_tensor *host = an_tensor_to(ctx, t, AN_F64, AN_CPU);
    double v = host ? an_tensor_get(host, 0) : NAN;
    an_tensor_release(host);
    return v;
}

static an_progress_style progress_style(const an_recipe *r, FILE *terminal) {
    switch (r->logging.progress) {
    case AN_RECIPE_PROGRESS_BAR: return AN_PROGRESS_BAR;
    case AN_RECIPE_PROGRESS_PLAIN: return AN_PROGRESS_PLAIN;
    case AN_RECIPE_PROGRESS_OFF: return AN_PROGRESS_OFF;
    default: return isatty(fileno(terminal)) ? AN_PROGRESS_BAR : AN_PROGRESS_PLAIN;
    }
}

static an_status save_checkpoint(an_ctx *ctx, an_run *run) {
    const an_recipe *r = run->recipe;
    an_data_cursor cursor = an_data_loader_cursor(run->train);
    an_ckpt_contents c = {0};
    c.step = run->step;
    c.model = run->model;
    c.optim = run->optim;
    c.rng = &ctx->rng;
    c.cursor = &cursor;
    c.recipe_text = run->recipe_text;
    c.base_model_dir = r->model.path;
    c.keep_last = (int)r->checkpoint.keep_last;
    AN_TRY(an_ckpt_save(ctx, r->output_dir, &c));
    char dir[4200];
    an_ckpt_step_dir(r->output_dir, run->step, dir, sizeof dir);
    an_metrics_say(&run->metrics, "saved %s", dir);
    return AN_OK;
}

/* Continues from a checkpoint when the recipe says so; run->step is 0 for a fresh run. */
static an_status resume(an_ctx *ctx, an_run *run) {
    const an_recipe *r = run->recipe;
    char dir[4200] = "";
    int64_t step = -1;
    if (r->checkpoint.resume == AN_RECIPE_RESUME_PATH) snprintf(dir, sizeof dir, "%s", r->checkpoint.resume_path);
    else {
        AN_TRY(an_ckpt_find_latest(ctx, r->output_dir, dir, sizeof dir, &step));
        AN_CHECK(ctx, step < 0 || r->checkpoint.resume == AN_RECIPE_RESUME_AUTO, AN_ERR_INPUT,
                 "%s already holds checkpoints (%s) and checkpoint.resume is never: choose another output_dir or "
                 "name, or resume", r->output_dir, dir);
        if (step < 0) return AN_OK;
    }
    an_data_cursor cursor;
    an_ckpt_contents c = {0};
    c.model = run->model;
    c.optim = run->optim;
    c.rng = &ctx->rng;
    c.cursor = &cursor;
    AN_TRY(an_ckpt_load(ctx, dir, &c));
    AN_TRY(an_data_loader_seek(ctx, run->train, cursor));
    run->step = c.step;
    an_metrics_say(&run->metrics, "resumed from %s (step %lld of %lld)", dir, (long long)run->step,
                   (long long)run->total_steps);
    return AN_OK;
}

/* One optimizer step: grad_accum micro-batches, each loss divided by the step's counted tokens. */
static an_status train_step(an_ctx *ctx, an_run *run, double *loss_out, int64_t *tokens_out,
                            an_optim_report *report) {
    const an_recipe *r = run->recipe;
    int64_t accum = r->training.grad_accum, counted = 0, tokens = 0;
    bool in_backward = r->optimizer.update_in_backward;
    an_data_batch *batches = calloc((size_t)accum, sizeof *batches);
    AN_CHECK(ctx, batches != NULL, AN_ERR_INTERNAL, "out of host memory");
    an_status st = AN_OK;
    int64_t fetched = 0;
    for (; fetched < accum && st == AN_OK; fetched++) {
        st = an_data_loader_next(ctx, run->train, &batches[fetched]);
        if (st == AN_OK) {
            counted += batches[fetched].loss_tokens, tokens += batches[fetched].tokens;
            st = an_data_batch_to(ctx, &batches[fetched], r->device);
            if (st != AN_OK) an_data_batch_release(&batches[fetched]);
        }
    }
    if (st != AN_OK) fetched--; /* the failed one holds nothing */
    double loss_sum = 0;
    for (int64_t i = 0; st == AN_OK && i < accum; i++) {
        an_data_batch *b = &batches[i];
        an_cross_entropy_opts opts = AN_CROSS_ENTROPY_DEFAULTS;
        opts.normalizer = counted > 0 ? (double)counted : 1.0;
        an_tensor *loss = an_model_loss(ctx, run->model, b->ids, b->labels, b->positions, b->segments, &opts);
        st = loss ? AN_OK : an_error_status(ctx);
        if (st == AN_OK && in_backward && i == accum - 1) st = an_optim_backward_begin(ctx, run->optim);
        if (st == AN_OK) st = an_backward(ctx, loss);
        if (st == AN_OK) loss_sum += scalar(ctx, loss);
        an_tensor_release(loss);
        an_tape_clear(ctx);
    }
    for (int64_t i = 0; i < fetched; i++) an_data_batch_release(&batches[i]);
    free(batches);
    if (in_backward) { /* the parameters moved during the last backward: finish, or close after a failure */
        if (st == AN_OK) st = an_optim_backward_end(ctx, run->optim, report);
        else an_optim_backward_cancel(ctx, run->optim);
    } else if (st == AN_OK) {
        st = an_optim_step(ctx, run->optim, report);
    }
    an_optim_zero_grad(run->optim);
    *loss_out = loss_sum;
    *tokens_out = tokens;
    return st;
}

static an_status evaluate_and_log(an_ctx *ctx, an_run *run, double *loss) {
    AN_TRY(an_run_evaluate(ctx, run, loss));
    if (isnan(*loss)) return AN_OK;
    an_metric v[] = {{"eval_loss", *loss}, {"eval_ppl", exp(*loss)}};
    an_metrics_say(&run->metrics, "step %lld: eval loss %.4f, perplexity %.3f", (long long)run->step, *loss, exp(*loss));
    return an_metrics_record(ctx, &run->metrics, run->step, "eval", v, 2);
}

/* The adapter (LoRA) and the merged model, as the recipe's export block asks. */
static an_status final_artifacts(an_ctx *ctx, an_run *run) {
    const an_recipe *r = run->recipe;
    char path[4200];
    if (run->model->n_adapter_params) {
        snprintf(path, sizeof path, "%s/adapter", r->output_dir);
        AN_TRY(an_train_make_dirs(ctx, path));
        AN_TRY(an_lora_save_peft(ctx, run->model, path, r->model.path));
        an_metrics_say(&run->metrics, "adapter (PEFT format): %s", path);
    }
    if (r->export_opts.enabled && r->export_opts.format == AN_RECIPE_EXPORT_SAFETENSORS_MERGED) {
        const char *out = r->export_opts.path;
        if (!out) snprintf(path, sizeof path, "%s/merged", r->output_dir), out = path;
        if (run->model->n_adapter_params) AN_TRY(an_lora_merge(ctx, run->model));
        AN_TRY(an_model_save(ctx, run->model, out, r->export_opts.dtype));
        AN_TRY(an_model_copy_tokenizer(ctx, r->model.path, out));
        an_metrics_say(&run->metrics, "merged model (Hugging Face directory, %s): %s",
                       an_dtype_name(r->export_opts.dtype), out);
    } else if (r->export_opts.enabled) {
        an_metrics_say(&run->metrics, "export format %d is done by `anneal export` (not yet at the end of a run)",
                       (int)r->export_opts.format);
    }
    return AN_OK;
}

an_status an_train(an_ctx *ctx, const an_recipe *r, const char *recipe_text, FILE *terminal,
                   an_train_summary *summary) {
    an_run run = {0};
    run.recipe = r;
    run.recipe_text = recipe_text;
    *summary = (an_train_summary){0, 0, 0, NAN, NAN, NAN, 0};
    an_rng_init(&ctx->rng, (uint64_t)r->seed);
    an_status st = an_train_make_dirs(ctx, r->output_dir);
    char recipe_path[4200];
    snprintf(recipe_path, sizeof recipe_path, "%s/recipe.yaml", r->output_dir);
    if (st == AN_OK) st = an_atomic_write_text(ctx, recipe_path, recipe_text); /* the run as resolved */
    if (st == AN_OK) st = an_metrics_open(ctx, r->logging.jsonl, progress_style(r, terminal), terminal, 0, 0, &run.metrics);
    if (st == AN_OK) st = an_run_prepare_data(ctx, &run);
    if (st == AN_OK) st = an_run_load_model(ctx, &run);
    if (st == AN_OK) st = an_run_build_optimizer(ctx, &run);
    if (st == AN_OK) st = resume(ctx, &run);
    run.metrics.total_steps = run.total_steps;
    run.metrics.start_step = run.step;
    summary->start_step = run.step;
    summary->total_steps = run.total_steps;
    if (st == AN_OK && run.step == 0) st = an_run_samples(ctx, &run, "before training");
    if (st == AN_OK) st = evaluate_and_log(ctx, &run, &summary->first_eval_loss);

    double start = an_metrics_now(), window_start = start;
    int64_t window_tokens = 0, all_tokens = 0, since_eval = 0;
    while (st == AN_OK && run.step < run.total_steps) {
        double loss = NAN;
        int64_t tokens = 0;
        an_optim_report report = {0};
        an_mem_reset_peak(ctx, r->device);
        st = train_step(ctx, &run, &loss, &tokens, &report);
        if (st != AN_OK) break;
        run.step++;
        since_eval++;
        window_tokens += tokens, all_tokens += tokens;
        summary->last_train_loss = loss;
        double now = an_metrics_now(), tps = window_tokens / fmax(now - window_start, 1e-9);
        bool log_step = run.step % r->logging.every == 0 || run.step == run.total_steps;
        if (log_step || run.metrics.style == AN_PROGRESS_BAR) an_metrics_progress(&run.metrics, run.step, loss, report.lr, tps);
        if (log_step) {
            an_metric v[] = {{"loss", loss}, {"lr", report.lr}, {"grad_norm", report.grad_norm},
                             {"tokens_per_s", tps}, {"peak_mem_bytes", (double)ctx->mem[r->device].peak}};
            st = an_metrics_record(ctx, &run.metrics, run.step, "train", v, 5);
            window_start = now, window_tokens = 0;
        }
        if (st == AN_OK && r->training.eval_every > 0 && run.step % r->training.eval_every == 0) {
            st = evaluate_and_log(ctx, &run, &summary->last_eval_loss);
            since_eval = 0;
        }
        if (st == AN_OK && r->checkpoint.every > 0 && run.step % r->checkpoint.every == 0 && run.step < run.total_steps)
            st = save_checkpoint(ctx, &run);
        if (an_metrics_now() - now > 0.5) window_start = an_metrics_now(), window_tokens = 0; /* eval/save time is not training */
    }
    summary->final_step = run.step;
    if (summary->final_step == summary->start_step) summary->last_eval_loss = summary->first_eval_loss;
    summary->tokens_per_s = all_tokens / fmax(an_metrics_now() - start, 1e-9);
    if (st == AN_OK && since_eval > 0) st = evaluate_and_log(ctx, &run, &summary->last_eval_loss);
    if (st == AN_OK && summary->start_step < run.step) st = save_checkpoint(ctx, &run);
    if (st == AN_OK) st = an_run_samples(ctx, &run, "after training");
    if (st == AN_OK) st = final_artifacts(ctx, &run);
    if (st != AN_OK && run.step > 0) an_metrics_say(&run.metrics, "stopped at step %lld", (long long)run.step);
    an_run_free(&run);
    return st;
}
