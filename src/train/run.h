/* run.h — the state of one training run, shared by the files of src/train/ (not a public API). */
#ifndef AN_TRAIN_RUN_H
#define AN_TRAIN_RUN_H

#include <stdio.h>

#include "data/data.h"       /* an_data: datasets and loaders from the recipe */
#include "data/tokenizer.h"
#include "model/model.h"
#include "optim/optim.h"
#include "recipe/recipe.h"
#include "train/metrics.h"

typedef struct {
    const an_recipe *recipe;
    const char *recipe_text;
    an_tokenizer *tok;
    an_data *data;
    an_data_loader *train, *validation;      /* data's loaders; validation NULL without validation data */
    an_model *model;
    an_optim *optim;
    an_metrics metrics;
    int64_t total_steps;
    int64_t step;                            /* optimizer steps taken */
} an_run;

/* setup.c */
an_status an_train_make_dirs(an_ctx *ctx, const char *path); /* mkdir -p */
an_status an_run_prepare_data(an_ctx *ctx, an_run *run);
an_status an_run_load_model(an_ctx *ctx, an_run *run);
an_status an_run_build_optimizer(an_ctx *ctx, an_run *run);
void an_run_free(an_run *run);

/* evaluate.c */
/* Mean loss over the validation loader (eval_steps micro-batches, or all), under no-grad. */
an_status an_run_evaluate(an_ctx *ctx, an_run *run, double *loss);
/* Greedy continuations of the first logging.samples validation prompts, printed under `title`
 * and appended to <output_dir>/samples.txt. */
an_status an_run_samples(an_ctx *ctx, an_run *run, const char *title);

#endif
