/* common.c — error reporting and flag parsing shared by the subcommands. */
#include "cli/cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Bad input is the user's to fix: the message names their file and field, and the source
 * location of the check ("parse.c:434: ") is noise to them; internal failures keep it for us.
 * ANNEAL_DEBUG=1 keeps it always. */
static const char *user_message(const char *msg, an_status st) {
    const char *debug = getenv("ANNEAL_DEBUG");
    if (st != AN_ERR_INPUT || (debug && strcmp(debug, "0") != 0)) return msg;
    const char *colon = strstr(msg, ".c:");
    if (!colon || strchr(msg, ' ') < colon) return msg;
    const char *p = colon + 3;
    while (*p >= '0' && *p <= '9') p++;
    return p[0] == ':' && p[1] == ' ' ? p + 2 : msg;
}

int an_cli_fail(an_ctx *ctx, const char *cmd) {
    an_status st = an_error_status(ctx);
    const char *msg = an_error_message(ctx)[0] ? an_error_message(ctx) : "failed";
    fprintf(stderr, "anneal %s: %s\n", cmd, user_message(msg, st));
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

int an_cli_device_flags(int argc, char **argv, int *i, an_device *device, an_dtype *dtype) {
    int bad = 0;
    const char *v;
    if ((v = an_cli_flag(argc, argv, i, "--device", &bad))) {
        if (strcmp(v, "cpu") == 0) *device = AN_CPU;
        else if (strcmp(v, "cuda") == 0) *device = AN_CUDA;
        else {
            fprintf(stderr, "anneal: --device '%s' must be cpu or cuda\n", v);
            return -1;
        }
        return 1;
    }
    if (!bad && (v = an_cli_flag(argc, argv, i, "--dtype", &bad))) {
        if (!an_dtype_parse(v, dtype) || !(*dtype == AN_F32 || *dtype == AN_BF16 || *dtype == AN_F16)) {
            fprintf(stderr, "anneal: --dtype '%s' must be float32, bfloat16 or float16\n", v);
            return -1;
        }
        return 1;
    }
    return bad ? -1 : 0;
}

an_status an_cli_use_device(an_ctx *ctx, an_device device) {
    return device == AN_CUDA ? an_ctx_use_cuda(ctx, 0) : AN_OK;
}
