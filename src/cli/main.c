/* main.c — the `anneal` command: parses the subcommand and maps library statuses to exit codes
 * (0 success, 2 bad input, 1 internal failure). */
#include <stdio.h>
#include <string.h>

#include "autograd/ctx.h"  /* an_cuda_compiled */

static const char usage[] =
    "usage: anneal <command> [options]\n"
    "\n"
    "anneal trains, tunes and exports DeepSeek-family language models.\n"
    "\n"
    "commands available in this build:\n"
    "  --version        print the version and the backends compiled in\n"
    "  --help           print this text\n"
    "\n"
    "Model loading, training recipes, generation and export are being built; see README.md for\n"
    "what works today.\n";

int main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        fputs(usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("anneal %s (backends: cpu%s)\n", ANNEAL_VERSION, an_cuda_compiled() ? ", cuda" : "");
        return 0;
    }
    fprintf(stderr, "anneal: unknown command '%s' (see anneal --help)\n", argv[1]);
    return 2;
}
