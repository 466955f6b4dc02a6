/* main.c — the `anneal` command: picks the subcommand (src/cli/<name>.c) and returns its exit
 * code (0 success, 2 bad input, 1 internal failure). */
#include <malloc.h> /* mallopt */
#include <stdio.h>
#include <string.h>

#include "autograd/ctx.h"  /* an_cuda_compiled */
#include "cli/cli.h"

static const char usage[] =
    "usage: anneal <command> [options]\n"
    "\n"
    "anneal trains, tunes and exports DeepSeek-family language models.\n"
    "\n"
    "commands:\n"
    "  run RECIPE.yaml [key=value]  train as the recipe says (LoRA or full fine-tuning)\n"
    "  eval --model DIR --data FILE loss and perplexity on a dataset (base, adapter or merged model)\n"
    "  data prepare --model DIR --out FILE.h5 INPUT...   tokenize data once for recipes\n"
    "  inspect MODEL_DIR            architecture, parameters, and the memory each kind of run needs\n"
    "  init CONFIG_JSON OUT_DIR     a new model with random weights, to train from scratch\n"
    "  plot RUN_DIR                 the run's loss curves as an SVG image\n"
    "  tokenize --model DIR [FILE]  token ids (or --count) of each input line\n"
    "  generate --model DIR --prompt TEXT   continue a prompt, streaming the text\n"
    "  --version                    version and the backends compiled in\n"
    "  --help                       this text\n"
    "\n"
    "Run `anneal <command> --help` for a command's options. README.md says what works today.\n";

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
} command;

static const command commands[] = {
    {"run", an_cli_run},
    {"eval", an_cli_eval},
    {"data", an_cli_data},
    {"inspect", an_cli_inspect},
    {"init", an_cli_init},
    {"plot", an_cli_plot},
    {"tokenize", an_cli_tokenize},
    {"generate", an_cli_generate},
};

int main(int argc, char **argv) {
    /* Activations are large, short-lived buffers: keep freed memory in the heap for the next step
     * instead of returning it to the kernel with munmap (and faulting it in again) every op. */
    mallopt(M_MMAP_THRESHOLD, 1 << 30);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        fputs(usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("anneal %s (backends: cpu%s)\n", ANNEAL_VERSION, an_cuda_compiled() ? ", cuda" : "");
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        if (strcmp(argv[1], commands[i].name) == 0) return commands[i].run(argc - 2, argv + 2);
    fprintf(stderr, "anneal: unknown command '%s' (see anneal --help)\n", argv[1]);
    return 2;
}
