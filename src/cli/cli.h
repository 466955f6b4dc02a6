/* cli.h — the subcommands of `anneal`, one file each, and the helpers they share. Each returns
 * the process exit code: 0 success, 2 bad input (the message names the file/field/flag), 1 an
 * internal failure. Only this module prints to the terminal or exits. */
#ifndef AN_CLI_H
#define AN_CLI_H

#include "autograd/ctx.h"

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

#endif
