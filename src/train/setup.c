/* setup.c — the pieces a run is built from: tokenized datasets (cached next to the checkpoints),
 * loaders, the model with or without LoRA, and AdamW with the recipe's schedule. */
#include "train/run.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "model/load.h"
#include "model/lora.h"

an_status an_train_make_dirs(an_ctx *ctx, const char *path) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            AN_CHECK(ctx, mkdir(buf, 0755) == 0 || errno == EEXIST, AN_ERR_INPUT, "cannot create directory %s: %s",
                     buf, strerror(errno));
            *p = c;
            if (c == '\0') break;
        }
    }
    return AN_OK;
}

an_status an_run_prepare_data(an_ctx *ctx, an_run *run) {
    AN_TRY(an_tokenizer_load(ctx, run->recipe->model.path, &run->tok));
    AN_TRY(an_data_open(ctx, run->recipe, run->tok, &run->data));
    an_data *d = run->data;
    run->train = d->train;
    run->validation = d->validation;
    const an_dataset_prepare_report *reports[2] = {d->train_prepared ? &d->train_report : NULL,
                                                   d->validation_prepared ? &d->validation_report : NULL};
    for (int i = 0; i < 2; i++)
        if (reports[i])
            an_metrics_say(&run->metrics, "tokenized %s data: %lld records, %lld documents, %lld tokens (%lld trained)",
                           i ? "validation" : "training", (long long)reports[i]->read.records,
                           (long long)reports[i]->documents, (long long)reports[i]->tokens,
                           (long long)reports[i]->loss_tokens);
    return AN_OK;
}

an_status an_run_load_model(an_ctx *ctx, an_run *run) {
    const an_recipe *r = run->recipe;
    if (r->device == AN_CUDA) AN_TRY(an_ctx_use_cuda(ctx, 0));
    AN_TRY(an_model_load(ctx, r->model.path, r->dtype, r->device, &run->model));
    an_model *m = run->model;
    m->gradient_checkpointing = r->model.gradient_checkpointing;
    m->training = true;
    AN_CHECK(ctx, an_tokenizer_vocab_size(run->tok) <= m->config.vocab_size, AN_ERR_INPUT,
             "%s: the tokenizer has %d tokens but config.json's vocab_size is %lld", r->model.path,
             an_tokenizer_vocab_size(run->tok), (long long)m->config.vocab_size);
    if (r->method == AN_RECIPE_METHOD_FULL) {
        an_model_set_requires_grad(m, true);
        return AN_OK;
    }
    an_lora_config lc = {r->lora.rank, r->lora.alpha, r->lora.dropout, r->lora.rslora, 0};
    if (r->lora.targets_all_linear) lc.targets = AN_LORA_ALL_LINEAR;
    else AN_TRY(an_lora_parse_targets(ctx, (const char *const *)r->lora.targets.items, r->lora.targets.n, &lc.targets));
    return an_lora_attach(ctx, m, &lc);
}

an_status an_run_build_optimizer(an_ctx *ctx, an_run *run) {
    const an_recipe *r = run->recipe;
    int64_t batches;
    AN_TRY(an_data_loader_batches_in_epoch(ctx, run->train, 0, &batches));
    int64_t per_epoch = (batches + r->training.grad_accum - 1) / r->training.grad_accum;
    AN_CHECK(ctx, per_epoch > 0, AN_ERR_INPUT, "data.train: no training batch (%lld documents)",
             (long long)an_data_loader_documents(run->train));
    run->total_steps = r->training.max_steps > 0 ? r->training.max_steps : per_epoch * r->training.epochs;
    an_adamw_config oc = an_adamw_config_default();
    oc.lr = r->optimizer.lr;
    oc.beta1 = r->optimizer.betas[0];
    oc.beta2 = r->optimizer.betas[1];
    oc.eps = r->optimizer.eps;
    oc.weight_decay = r->optimizer.weight_decay;
    oc.max_grad_norm = r->grad_clip;
    oc.schedule.kind = r->schedule.type == AN_RECIPE_SCHEDULE_CONSTANT ? AN_SCHEDULE_CONSTANT
                       : r->schedule.type == AN_RECIPE_SCHEDULE_LINEAR ? AN_SCHEDULE_LINEAR
                                                                       : AN_SCHEDULE_COSINE;
    oc.schedule.total_steps = run->total_steps;
    oc.schedule.warmup_steps = r->schedule.warmup_steps > 0
                                   ? r->schedule.warmup_steps
                                   : (int64_t)(r->schedule.warmup_ratio * (double)run->total_steps + 0.999999);
    oc.schedule.min_lr_ratio = r->schedule.min_lr_ratio;
    AN_TRY(an_optim_create(ctx, &oc, &run->optim));
    an_model *m = run->model;
    return m->n_adapter_params ? an_optim_add_params(ctx, run->optim, m->adapter_params, m->n_adapter_params)
                               : an_optim_add_params(ctx, run->optim, m->params, m->n_params);
}

void an_run_free(an_run *run) {
    an_optim_free(run->optim);
    an_model_free(run->model);
    an_data_free(run->data);
    an_tokenizer_free(run->tok);
    an_metrics_close(&run->metrics);
}
