/* common.c — error reporting and flag parsing shared by the subcommands. */
#include "cli/cli.h"

#include <stdio.h>
#include <string.h>

int an_cli_fail(an_ctx *ctx, const char *cmd) {
    an_status st = an_error_status(ctx);
    fprintf(stderr, "anneal %s: %s\n", cmd, an_error_message(ctx)[0] ? an_error_message(ctx) : "failed");
    return st == AN_ERR_INPUT ? 2 : 1;
}

const char *an_cli_flag(int argc, char **argv, int *i, const char *name, int *bad) {
    size_t n = strlen(name);
    const char *a = argv[*i];
    if (strncmp(a, name, n) != 0) return NULL;
    if (a[n] == '=') return a + n + 1;
    if (a[n] != '\0') return NULL;
    if (*i + 1 >= argc) {
        fprintf(stderr, "anneal: %s needs a value\n", name);
        *bad = 1;
        return NULL;
    }
    *i += 1;
    return argv[*i];
}
