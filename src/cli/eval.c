/* eval.c — `anneal eval --model DIR [--adapter DIR] --data FILE [--seq-len N] [--batch N]`: loss and
 * perplexity of a model (optionally with a PEFT adapter) on a dataset, computed by the same
 * an_eval_loss the training loop evaluates with, so base, tuned and exported models compare on
 * equal terms. FILE is raw data (JSONL, text, shards: tokenized into a temporary file) or a
 * prepared .h5 dataset. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "data/tokenizer.h"
#include "model/load.h"
#include "model/lora.h"
#include "train/train.h"

static const char usage[] =
    "usage: anneal eval --model DIR --data FILE [--adapter DIR] [--seq-len N (1024)] [--batch N (8)]\n"
    "                   [--device cpu|cuda] [--dtype float32|bfloat16|float16]\n";

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

int an_cli_eval(int argc, char **argv) {
    const char *model_dir = NULL, *adapter = NULL, *data = NULL;
    long long seq_len = 1024, batch = 8;
    an_device device = AN_CPU;
    an_dtype dtype = AN_F32;
    for (int i = 0; i < argc; i++) {
        int bad = 0;
        const char *v;
        char *end = "";
        int dev = an_cli_device_flags(argc, argv, &i, &device, &dtype);
        if (dev < 0) return 2;
        if (dev > 0) continue;
        if ((v = an_cli_flag(argc, argv, &i, "--model", &bad))) model_dir = v;
        else if ((v = an_cli_flag(argc, argv, &i, "--adapter", &bad))) adapter = v;
        else if ((v = an_cli_flag(argc, argv, &i, "--data", &bad))) data = v;
        else if ((v = an_cli_flag(argc, argv, &i, "--seq-len", &bad))) seq_len = strtoll(v, &end, 10), bad = seq_len < 2;
        else if ((v = an_cli_flag(argc, argv, &i, "--batch", &bad))) batch = strtoll(v, &end, 10), bad = batch < 1;
        else bad = 1;
        if (bad || *end) {
            fprintf(stderr, "anneal eval: bad argument '%s'\n%s", argv[i], usage);
            return 2;
        }
    }
    if (!model_dir || !data) {
        fputs(usage, stderr);
        return 2;
    }
    an_ctx *ctx = an_ctx_new(0);
    an_model *m = NULL;
    an_tokenizer *tok = NULL;
    an_dataset *ds = NULL;
    an_data_loader *loader = NULL;
    char fingerprint[65], tmp_dir[] = "/tmp/anneal-eval-XXXXXX", tmp[64];
    bool made_tmp = false;
    double loss = NAN;
    int64_t tokens = 0;
    an_status st = an_cli_use_device(ctx, device);
    if (st == AN_OK) st = an_model_load(ctx, model_dir, dtype, device, &m);
    if (st == AN_OK && adapter) st = an_lora_load_peft(ctx, m, adapter);
    if (st == AN_OK) st = an_tokenizer_load(ctx, model_dir, &tok);
    if (st == AN_OK) st = an_data_tokenizer_fingerprint(ctx, model_dir, fingerprint);
    const char *h5 = data;
    if (st == AN_OK && !ends_with(data, ".h5")) {
        made_tmp = mkdtemp(tmp_dir) != NULL;
        snprintf(tmp, sizeof tmp, "%s/data.h5", tmp_dir);
        const char *inputs[1] = {data};
        an_dataset_prepare_opts po = {inputs, 1, AN_RECIPE_FORMAT_AUTO, 0.0, AN_CHAT_REASONING_KEEP_LAST, fingerprint};
        an_dataset_prepare_report report;
        st = made_tmp ? an_dataset_prepare(ctx, tok, &po, tmp, &report)
                     : an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__, "cannot create a temporary file in /tmp");
        h5 = tmp;
    }
    if (st == AN_OK) st = an_dataset_open(ctx, h5, fingerprint, &ds);
    an_data_loader_opts lo = {seq_len, batch, true, false, 0};
    if (st == AN_OK) st = an_data_loader_new(ctx, ds, NULL, an_dataset_documents(ds), &lo, &loader);
    if (st == AN_OK) st = an_eval_loss(ctx, m, loader, 0, &loss, &tokens);
    int rc = 0;
    if (st != AN_OK) rc = an_cli_fail(ctx, "eval");
    else if (tokens == 0) {
        fprintf(stderr, "anneal eval: %s has no token to score (nothing in its loss mask)\n", data);
        rc = 2;
    } else {
        printf("model       %s%s%s\ndata        %s (%lld documents, %lld scored tokens)\n", model_dir,
               adapter ? " + adapter " : "", adapter ? adapter : "", data, (long long)an_dataset_documents(ds),
               (long long)tokens);
        printf("loss        %.6f\nperplexity  %.4f\n", loss, exp(loss));
    }
    if (made_tmp) unlink(tmp), rmdir(tmp_dir);
    an_data_loader_free(loader);
    an_dataset_free(ds);
    an_tokenizer_free(tok);
    an_model_free(m);
    an_ctx_free(ctx);
    return rc;
}
