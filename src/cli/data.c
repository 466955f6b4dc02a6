/* data.c — `anneal data prepare --model DIR --out FILE.h5 [--format F] [--max-bad-fraction X] INPUT...`:
 * tokenizes raw data (JSONL, plain text, tar/zip shards) once into an HDF5 dataset that recipes can
 * name in data.train / data.validation (docs/formats.md, "Tokenized datasets"). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "data/dataset.h"
#include "data/records.h"
#include "data/tokenizer.h"

static const char usage[] =
    "usage: anneal data prepare --model DIR --out FILE.h5 [--format auto|text|prompt_completion|chat]\n"
    "                           [--max-bad-fraction X] INPUT...\n";

static int parse_format(const char *name, an_recipe_data_format *out) {
    for (int f = AN_RECIPE_FORMAT_AUTO; f <= AN_RECIPE_FORMAT_CHAT; f++)
        if (strcmp(name, an_data_format_name((an_recipe_data_format)f)) == 0) {
            *out = (an_recipe_data_format)f;
            return 0;
        }
    return 1;
}

int an_cli_data(int argc, char **argv) {
    if (argc < 1 || strcmp(argv[0], "prepare") != 0) {
        fputs(usage, stderr);
        return 2;
    }
    const char *model = NULL, *out = NULL;
    an_recipe_data_format format = AN_RECIPE_FORMAT_AUTO;
    double max_bad = 0.0;
    const char **inputs = calloc((size_t)argc, sizeof *inputs);
    int n_inputs = 0;
    for (int i = 1; i < argc; i++) {
        int bad = 0;
        const char *v;
        char *end = "";
        if ((v = an_cli_flag(argc, argv, &i, "--model", &bad))) model = v;
        else if ((v = an_cli_flag(argc, argv, &i, "--out", &bad))) out = v;
        else if ((v = an_cli_flag(argc, argv, &i, "--format", &bad))) bad = parse_format(v, &format);
        else if ((v = an_cli_flag(argc, argv, &i, "--max-bad-fraction", &bad)))
            max_bad = strtod(v, &end), bad = !(max_bad >= 0 && max_bad < 1);
        else if (!bad && argv[i][0] != '-') inputs[n_inputs++] = argv[i];
        else bad = 1;
        if (bad || *end) {
            fprintf(stderr, "anneal data prepare: bad argument '%s'\n%s", argv[i], usage);
            free(inputs);
            return 2;
        }
    }
    if (!model || !out || n_inputs == 0) {
        fputs(usage, stderr);
        free(inputs);
        return 2;
    }
    an_ctx *ctx = an_ctx_new(0);
    an_tokenizer *tok = NULL;
    char fingerprint[65];
    an_dataset_prepare_report report;
    int rc = 0;
    if (an_tokenizer_load(ctx, model, &tok) != AN_OK || an_data_tokenizer_fingerprint(ctx, model, fingerprint) != AN_OK) {
        rc = an_cli_fail(ctx, "data prepare");
    } else {
        an_dataset_prepare_opts o = {inputs, n_inputs, format, max_bad, AN_CHAT_REASONING_KEEP_LAST, fingerprint};
        if (an_dataset_prepare(ctx, tok, &o, out, &report) != AN_OK) rc = an_cli_fail(ctx, "data prepare");
        else {
            printf("%s: %lld documents, %lld tokens (%lld in the loss) from %lld records", out,
                   (long long)report.documents, (long long)report.tokens, (long long)report.loss_tokens,
                   (long long)report.read.records);
            if (report.read.bad) printf(", %lld malformed records skipped", (long long)report.read.bad);
            printf("\n");
            for (int i = 0; i < report.read.n_shown; i++) printf("  skipped %s\n", report.read.shown[i]);
        }
    }
    an_tokenizer_free(tok);
    an_ctx_free(ctx);
    free(inputs);
    return rc;
}
