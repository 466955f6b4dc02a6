/* init.c — `anneal init CONFIG_JSON OUT_DIR [--seed N] [--std S] [--dtype D] [--tokenizer DIR]`:
 * a new model directory with random weights (normal(0, std), norms one, biases zero) for
 * training from scratch, plus the tokenizer files of DIR when given. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "data/tokenizer.h"
#include "model/model.h"
#include "model/save.h"

static const char usage[] =
    "usage: anneal init CONFIG_JSON OUT_DIR [--seed N] [--std S] [--dtype float32|bfloat16|float16] [--tokenizer DIR]\n";

int an_cli_init(int argc, char **argv) {
    const char *config_path = NULL, *out_dir = NULL, *tokenizer = NULL;
    long long seed = 0;
    double std = 0.02;
    an_dtype dtype = AN_F32;
    for (int i = 0; i < argc; i++) {
        int bad = 0;
        const char *v;
        char *end = NULL;
        if ((v = an_cli_flag(argc, argv, &i, "--seed", &bad))) {
            seed = strtoll(v, &end, 10);
            bad = *end != '\0' || seed < 0;
        } else if ((v = an_cli_flag(argc, argv, &i, "--std", &bad))) {
            std = strtod(v, &end);
            bad = *end != '\0' || !(std > 0);
        } else if ((v = an_cli_flag(argc, argv, &i, "--dtype", &bad))) {
            bad = !an_dtype_parse(v, &dtype) || !an_dtype_is_float(dtype) || dtype == AN_F64;
        } else if ((v = an_cli_flag(argc, argv, &i, "--tokenizer", &bad))) {
            tokenizer = v;
        } else if (!bad && argv[i][0] != '-' && !config_path) {
            config_path = argv[i];
        } else if (!bad && argv[i][0] != '-' && !out_dir) {
            out_dir = argv[i];
        } else {
            bad = 1;
        }
        if (bad) {
            fprintf(stderr, "anneal init: bad argument '%s'\n%s", argv[i], usage);
            return 2;
        }
    }
    if (!config_path || !out_dir) {
        fputs(usage, stderr);
        return 2;
    }
    an_ctx *ctx = an_ctx_new((uint64_t)seed);
    an_model_config config;
    an_model *m = NULL;
    int rc = 0;
    an_tokenizer *tok = NULL;
    if (an_model_config_load(ctx, config_path, &config) != AN_OK ||
        (tokenizer && an_tokenizer_load(ctx, tokenizer, &tok) != AN_OK)) {
        rc = an_cli_fail(ctx, "init");
    } else if (tok && an_tokenizer_vocab_size(tok) > config.vocab_size) { /* checked before anything is written */
        fprintf(stderr, "anneal init: %s/tokenizer.json has %d tokens but %s: vocab_size is %lld\n", tokenizer,
                an_tokenizer_vocab_size(tok), config_path, (long long)config.vocab_size);
        rc = 2;
    } else if (an_model_create(ctx, &config, AN_F32, AN_CPU, &m) != AN_OK || an_model_init_random(ctx, m, std) != AN_OK ||
               an_model_save(ctx, m, out_dir, dtype) != AN_OK) {
        rc = an_cli_fail(ctx, "init");
    }
    an_tokenizer_free(tok);
    if (rc == 0 && tokenizer && an_model_copy_tokenizer(ctx, tokenizer, out_dir) != AN_OK) rc = an_cli_fail(ctx, "init");
    if (rc == 0)
        printf("initialised %s: %lld parameters, normal(0, %g), seed %lld, %s\n", out_dir,
               (long long)an_model_config_num_params(&config), std, seed, an_dtype_name(dtype));
    an_model_free(m);
    an_ctx_free(ctx);
    return rc;
}
