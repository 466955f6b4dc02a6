/* run.c — `anneal run RECIPE.yaml [key=value ...]`: trains as the recipe says (src/train). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "recipe/recipe.h"
#include "train/train.h"

static const char usage[] =
    "usage: anneal run RECIPE.yaml [key=value ...]\n"
    "  e.g. anneal run recipes/quickstart.yaml training.max_steps=20 optimizer.lr=1e-3\n"
    "  every key is documented in docs/recipes.md\n";

int an_cli_run(int argc, char **argv) {
    if (argc < 1 || argv[0][0] == '-') {
        fputs(usage, argc >= 1 && strcmp(argv[0], "--help") == 0 ? stdout : stderr);
        return argc >= 1 && strcmp(argv[0], "--help") == 0 ? 0 : 2;
    }
    an_ctx *ctx = an_ctx_new(0);
    an_recipe recipe;
    char *text = NULL;
    an_train_summary summary;
    int rc = 0;
    if (an_recipe_load(ctx, argv[0], argc - 1, (const char *const *)argv + 1, &recipe) != AN_OK) {
        rc = an_cli_fail(ctx, "run");
        an_ctx_free(ctx);
        return rc;
    }
    if (an_recipe_to_yaml(ctx, &recipe, &text) != AN_OK || an_train(ctx, &recipe, text, stdout, &summary) != AN_OK) {
        rc = an_cli_fail(ctx, "run");
    } else {
        printf("done: steps %lld..%lld of %lld, %.0f tokens/s", (long long)summary.start_step,
               (long long)summary.final_step, (long long)summary.total_steps, summary.tokens_per_s);
        if (!isnan(summary.first_eval_loss))
            printf(", eval loss %.4f -> %.4f (perplexity %.2f -> %.2f)", summary.first_eval_loss, summary.last_eval_loss,
                   exp(summary.first_eval_loss), exp(summary.last_eval_loss));
        printf("\nrun directory: %s\n", recipe.output_dir);
    }
    free(text);
    an_recipe_free(&recipe);
    an_ctx_free(ctx);
    return rc;
}
