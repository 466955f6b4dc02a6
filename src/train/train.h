/* train.h — `anneal run`: a whole training run from a resolved recipe. Full fine-tuning and LoRA
 * share this one loop; the GPU will run the same code through the same ops.
 *
 * A run: tokenize the data once (cached in <output_dir>/data/), load the model (LoRA attached or
 * not), build AdamW and the schedule, resume from the newest checkpoint when the recipe says so,
 * then for each optimizer step run grad_accum micro-batches (each loss divided by the step's total
 * of counted tokens, so accumulation equals one big batch), clip, step, log, evaluate, checkpoint.
 * At the end: a final checkpoint, the adapter (LoRA) and the merged model when the recipe's export
 * block asks for safetensors_merged. */
#ifndef AN_TRAIN_TRAIN_H
#define AN_TRAIN_TRAIN_H

#include <stdio.h>

#include "autograd/ctx.h"
#include "recipe/recipe.h"

typedef struct {
    int64_t start_step;       /* the step resumed from (0 for a fresh run) */
    int64_t final_step;       /* the last optimizer step taken */
    int64_t total_steps;
    double first_eval_loss;   /* before the first step of this invocation; NaN without validation data */
    double last_eval_loss;    /* after the last step */
    double last_train_loss;   /* of the last step */
    double tokens_per_s;      /* training tokens (not padding) per second over this invocation */
} an_train_summary;

/* Runs the recipe. recipe_text is the resolved recipe (written into each checkpoint). Progress
 * goes to `terminal`. On failure the message in ctx names the file, key or step. */
an_status an_train(an_ctx *ctx, const an_recipe *recipe, const char *recipe_text, FILE *terminal,
                   an_train_summary *summary);

/* Mean per-token loss of `model` over the first epoch of `loader` (or max_batches micro-batches
 * when > 0): the loss training minimises, without dropout or tape. *tokens (may be NULL) gets the
 * number of tokens counted. The same function serves evaluation during runs and `anneal eval`. */
typedef struct an_model an_model;
typedef struct an_data_loader an_data_loader;
an_status an_eval_loss(an_ctx *ctx, an_model *model, an_data_loader *loader, int64_t max_batches, double *loss,
                       int64_t *tokens);

#endif
