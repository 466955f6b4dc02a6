/* cli.h — the subcommands of `anneal`, one file each, and the helpers they share. Each returns
 * the process exit code: 0 success, 2 bad input (the message names the file/field/flag), 1 an
 * internal failure. Only this module prints to the terminal or exits. */
#ifndef AN_CLI_H
#define AN_CLI_H

#include "autograd/ctx.h"
#include "autograd/dtype.h"

int an_cli_run(int argc, char **argv);
int an_cli_eval(int argc, char **argv);
int an_cli_data(int argc, char **argv);
int an_cli_inspect(int argc, char **argv);
int an_cli_init(int argc, char **argv);
int an_cli_plot(int argc, char **argv);
int an_cli_tokenize(int argc, char **argv);
int an_cli_generate(int argc, char **argv);

/* Prints ctx's error as "anneal <cmd>: <message>" and returns the exit code for its status. */
int an_cli_fail(an_ctx *ctx, const char *cmd);
/* "--name value" or "--name=value" at argv[*i]; advances *i; NULL when argv[*i] is not --name.
 * A missing value is reported on stderr and sets *bad. */
const char *an_cli_flag(int argc, char **argv, int *i, const char *name, int *bad);

/* --device cpu|cuda and --dtype float32|bfloat16|float16 (and short names): returns 1 when argv[*i]
 * was one of them (advancing *i), 0 when not, -1 (after a message) when its value is bad. */
int an_cli_device_flags(int argc, char **argv, int *i, an_device *device, an_dtype *dtype);
/* Selects the GPU when device is cuda (an_ctx_use_cuda); AN_OK otherwise. */
an_status an_cli_use_device(an_ctx *ctx, an_device device);

#endif
