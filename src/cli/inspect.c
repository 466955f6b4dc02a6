/* inspect.c — `anneal inspect MODEL_DIR [--seq-len N] [--micro-batch N] [--gpus N] [--lora-rank R]`:
 * what a model directory holds and the memory each kind of run would need, with the formulas. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt/safetensors.h"  /* on-disk tensor bytes and dtypes */
#include "cli/cli.h"
#include "model/config.h"

static const char usage[] =
    "usage: anneal inspect MODEL_DIR [--seq-len N] [--micro-batch N] [--gpus N] [--lora-rank R]\n";

/* bytes as "12.34 GiB" / "5.60 MiB" in buf (32 bytes); returns buf. */
static const char *human(char *buf, double bytes) {
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (bytes >= 1024.0 && u < 4) bytes /= 1024.0, u++;
    snprintf(buf, 32, "%.2f %s", bytes, units[u]);
    return buf;
}

static int parse_count(const char *flag, const char *v, long long *out) {
    char *end;
    long long x = strtoll(v, &end, 10);
    if (*v == '\0' || *end != '\0' || x < 1) {
        fprintf(stderr, "anneal inspect: %s = '%s' must be a positive integer\n", flag, v);
        return 2;
    }
    *out = x;
    return 0;
}

int an_cli_inspect(int argc, char **argv) {
    const char *dir = NULL;
    long long seq = 2048, micro = 1, gpus = 8, rank = 16;
    for (int i = 0; i < argc; i++) {
        int bad = 0;
        const char *v;
        if ((v = an_cli_flag(argc, argv, &i, "--seq-len", &bad))) bad = parse_count("--seq-len", v, &seq);
        else if ((v = an_cli_flag(argc, argv, &i, "--micro-batch", &bad))) bad = parse_count("--micro-batch", v, &micro);
        else if ((v = an_cli_flag(argc, argv, &i, "--gpus", &bad))) bad = parse_count("--gpus", v, &gpus);
        else if ((v = an_cli_flag(argc, argv, &i, "--lora-rank", &bad))) bad = parse_count("--lora-rank", v, &rank);
        else if (!bad && argv[i][0] != '-' && !dir) dir = argv[i];
        else if (!bad) {
            fprintf(stderr, "anneal inspect: unexpected argument '%s'\n%s", argv[i], usage);
            return 2;
        }
        if (bad) return 2;
    }
    if (!dir) {
        fputs(usage, stderr);
        return 2;
    }
    an_ctx *ctx = an_ctx_new(0);
    an_model_config c;
    an_safetensors *st = NULL;
    if (an_model_config_load(ctx, dir, &c) != AN_OK || an_safetensors_dir_open(ctx, dir, &st) != AN_OK) {
        int rc = an_cli_fail(ctx, "inspect");
        an_ctx_free(ctx);
        return rc;
    }
    double disk = 0;
    int64_t stored = 0;
    for (int64_t i = 0; i < an_safetensors_count(st); i++) {
        disk += (double)an_safetensors_at(st, i)->nbytes;
        stored += an_safetensors_at(st, i)->numel;
    }
    const char *dtype = an_safetensors_count(st) ? an_safetensors_at(st, 0)->dtype_name : "-";
    an_safetensors_close(st);
    an_ctx_free(ctx);

    double P = (double)an_model_config_num_params(&c);
    double H = (double)c.hidden_size, L = (double)c.num_layers, I = (double)c.intermediate_size;
    double q = (double)(c.num_heads * c.head_dim), kv = (double)(c.num_kv_heads * c.head_dim);
    double tokens = (double)(seq * micro);
    /* LoRA on every linear layer: r * (in + out) per projection. */
    double lora = L * (double)rank * ((H + q) + 2 * (H + kv) + (q + H) + 2 * (H + I) + (I + H));
    /* Activations kept for backward per token and layer, bf16: inputs of the two norms, q/k/v,
     * attention output, the MLP's gate, up and activation, plus fp32 norm statistics (about
     * 2 * (4H + q + 2kv + 3I) bytes); with checkpointing only each block's input (2H) stays. */
    double act_layer = 2 * (4 * H + q + 2 * kv + 3 * I);
    double act = tokens * L * act_layer, act_ckpt = tokens * (L * 2 * H + act_layer);
    double logits_chunk = 1024.0 * (double)c.vocab_size * 4;

    printf("model        %s (%s)\n", dir, c.architecture_name);
    printf("shape        %lld layers, hidden %lld, intermediate %lld, heads %lld (kv %lld, head_dim %lld), vocab %lld\n",
           (long long)c.num_layers, (long long)c.hidden_size, (long long)c.intermediate_size, (long long)c.num_heads,
           (long long)c.num_kv_heads, (long long)c.head_dim, (long long)c.vocab_size);
    printf("rope         theta %g%s, tied embeddings %s, q/k/v bias %s\n", c.rope.theta,
           c.rope.llama3_factor > 0 ? ", llama3 scaling" : "", c.tie_word_embeddings ? "yes" : "no", c.qkv_bias ? "yes" : "no");
    char b1[32], b2[32];
    printf("parameters   %.0f (%.3f B); %lld stored on disk as %s, %s\n", P, P / 1e9, (long long)stored, dtype,
           human(b1, disk));
    printf("\nmemory per GPU for seq_len %lld x micro_batch %lld (P = parameters, T = tokens = %.0f):\n", seq, micro, tokens);
    printf("  full fine-tune  %12s  = 16 B x P (bf16 weights 2 + bf16 grads 2 + fp32 master 4 + Adam m,v 8)\n",
           human(b1, 16 * P));
    printf("                + %12s  activations (T x L x %.0f B), or %s with gradient checkpointing\n",
           human(b1, act), act_layer, human(b2, act_ckpt));
    printf("  LoRA r=%-3lld      %12s  = 2 B x P frozen bf16 weights + 16 B x %.0f adapter parameters (all linear layers)\n", rank,
           human(b1, 2 * P + 16 * lora), lora);
    printf("                + %12s  activations (as above; %s checkpointed)\n", human(b1, act), human(b2, act_ckpt));
    printf("  ZeRO-3 on %-3lld   %12s  = 16 B x P / N + 2 x 2 B x (largest layer, gathered and prefetched)\n", gpus,
           human(b1, 16 * P / (double)gpus + 4 * (P - (c.tie_word_embeddings ? 1 : 2) * (double)c.vocab_size * H) / L));
    printf("                + activations as above\n");
    printf("  loss            %12s  = one chunk of 1024 rows x vocab fp32 logits (never the full T x vocab)\n",
           human(b1, logits_chunk));
    return 0;
}
