/* tokenize.c — `anneal tokenize --model DIR [--count] [--special] [FILE ...]`: token ids of each
 * input line (stdin when no file is given), or with --count the number of tokens per line and the
 * total — for sizing datasets and debugging prompts. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "data/tokenizer.h"

static const char usage[] = "usage: anneal tokenize --model DIR [--count] [--special] [FILE ...]\n";

typedef struct {
    bool count, special;
    long long lines, tokens;
} options;

/* Tokenizes every line of f (without its newline); prints ids or counts. */
static int run_file(an_ctx *ctx, an_tokenizer *tok, FILE *f, const char *name, options *o) {
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int rc = 0;
    while (rc == 0 && (len = getline(&line, &cap, f)) >= 0) {
        if (len > 0 && line[len - 1] == '\n') line[--len] = '\0';
        int32_t *ids = NULL;
        size_t n = 0;
        if (an_tokenizer_encode(ctx, tok, line, (size_t)len, o->special, &ids, &n) != AN_OK) {
            fprintf(stderr, "anneal tokenize: %s line %lld: ", name, o->lines + 1);
            rc = an_cli_fail(ctx, "tokenize");
            break;
        }
        o->lines++;
        o->tokens += (long long)n;
        if (o->count) printf("%zu\n", n);
        else {
            for (size_t i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
            putchar('\n');
        }
        free(ids);
    }
    free(line);
    return rc;
}

int an_cli_tokenize(int argc, char **argv) {
    const char *model = NULL;
    options o = {0};
    int first_file = argc;
    for (int i = 0; i < argc; i++) {
        int bad = 0;
        const char *v = an_cli_flag(argc, argv, &i, "--model", &bad);
        if (v) model = v;
        else if (!bad && strcmp(argv[i], "--count") == 0) o.count = true;
        else if (!bad && strcmp(argv[i], "--special") == 0) o.special = true;
        else if (!bad && argv[i][0] != '-') {
            first_file = i;
            break;
        } else bad = 1;
        if (bad) {
            fprintf(stderr, "anneal tokenize: bad argument '%s'\n%s", argv[i], usage);
            return 2;
        }
    }
    if (!model) {
        fputs(usage, stderr);
        return 2;
    }
    an_ctx *ctx = an_ctx_new(0);
    an_tokenizer *tok = NULL;
    int rc = an_tokenizer_load(ctx, model, &tok) == AN_OK ? 0 : an_cli_fail(ctx, "tokenize");
    if (rc == 0 && first_file == argc) rc = run_file(ctx, tok, stdin, "stdin", &o);
    for (int i = first_file; rc == 0 && i < argc; i++) {
        FILE *f = fopen(argv[i], "r");
        if (!f) {
            fprintf(stderr, "anneal tokenize: %s: cannot open\n", argv[i]);
            rc = 2;
            break;
        }
        rc = run_file(ctx, tok, f, argv[i], &o);
        fclose(f);
    }
    if (rc == 0 && o.count) fprintf(stderr, "total: %lld tokens in %lld lines\n", o.tokens, o.lines);
    an_tokenizer_free(tok);
    an_ctx_free(ctx);
    return rc;
}
