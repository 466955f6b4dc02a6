/* generate.c — generation throughput on a model directory: greedy continuation of B prompts of
 * --prompt ids by --new tokens through an_generate (KV cache, batched decode, tokens chosen on the
 * device), after one warm-up run of 8 new tokens.
 *
 *   bench/generate MODEL_DIR [--batch N] [--prompt 128] [--new 256] [--device cuda|cpu] [--dtype bf16|f32]
 *
 * Prompt ids are ((b * prompt + t) * 2654435761) mod (vocab - 1), as bench/peer_generate.py makes
 * them; no eos stops a row, so every row yields exactly --new tokens. Prints
 *   anneal generate batch B: X tokens/s (new tokens over wall time incl. prefill), decode Y ms/step
 * where the decode time per step is (total - prefill) / (new - 1): the first new token comes from
 * the prefill's logits. On CUDA it also prints the measured device copy bandwidth (read + write
 * bytes per second of a 1 GiB device-to-device copy), the weight bytes a decode step reads (every
 * parameter but the embedding table, of which a step reads B rows), the bandwidth limit
 * bandwidth / weight bytes in steps (tokens per row) per second, and the share of it reached. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda.h"  /* an_cuda_synchronize, an_cuda_copy_bandwidth */
#include "model/generate.h"
#include "model/load.h"
#include "train/metrics.h" /* an_metrics_now */

/* One greedy generation of new_tokens per row (no eos stop); its wall time in seconds. */
static double run(an_ctx *ctx, an_model *m, long batch, int32_t **prompts, const int64_t *lens, long new_tokens,
                  int32_t **out, int64_t *out_lens) {
    an_generate_opts o = an_generate_defaults(m);
    o.max_new_tokens = new_tokens;
    o.n_eos_ids = 0;
    if (m->embed_tokens->device == AN_CUDA) an_cuda_synchronize(ctx);
    double t0 = an_metrics_now();
    if (an_generate(ctx, m, batch, (const int32_t *const *)prompts, lens, &o, out, out_lens) != AN_OK) {
        fprintf(stderr, "generate failed: %s\n", an_error_message(ctx));
        exit(1);
    }
    if (m->embed_tokens->device == AN_CUDA) an_cuda_synchronize(ctx);
    double dt = an_metrics_now() - t0;
    for (long i = 0; i < batch; i++) {
        if (out_lens[i] != new_tokens) {
            fprintf(stderr, "row %ld produced %lld tokens, expected %ld\n", i, (long long)out_lens[i], new_tokens);
            exit(1);
        }
        free(out[i]);
    }
    return dt;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL_DIR [--batch N] [--prompt N] [--new N] [--device cuda|cpu] [--dtype bf16|f32]\n",
                argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    an_device device = AN_CUDA;
    an_dtype dtype = AN_BF16;
    long batch = 1, prompt = 128, new_tokens = 256;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--device") && i + 1 < argc) device = !strcmp(argv[++i], "cpu") ? AN_CPU : AN_CUDA;
        else if (!strcmp(argv[i], "--dtype") && i + 1 < argc) dtype = !strcmp(argv[++i], "f32") ? AN_F32 : AN_BF16;
        else if (!strcmp(argv[i], "--batch") && i + 1 < argc) batch = atol(argv[++i]);
        else if (!strcmp(argv[i], "--prompt") && i + 1 < argc) prompt = atol(argv[++i]);
        else if (!strcmp(argv[i], "--new") && i + 1 < argc) new_tokens = atol(argv[++i]);
        else {
            fprintf(stderr, "unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    if (batch < 1 || prompt < 1 || new_tokens < 2) {
        fprintf(stderr, "--batch and --prompt must be >= 1 and --new >= 2\n");
        return 2;
    }
    an_ctx *ctx = an_ctx_new(1);
    an_model *m = NULL;
    if ((device == AN_CUDA && an_ctx_use_cuda(ctx, 0) != AN_OK) || an_model_load(ctx, dir, dtype, device, &m) != AN_OK) {
        fprintf(stderr, "%s\n", an_error_message(ctx));
        return 1;
    }
    int32_t **prompts = malloc((size_t)batch * sizeof *prompts), **out = malloc((size_t)batch * sizeof *out);
    int64_t *lens = malloc((size_t)batch * sizeof *lens), *out_lens = malloc((size_t)batch * sizeof *out_lens);
    for (long b = 0; b < batch; b++) {
        prompts[b] = malloc((size_t)prompt * sizeof **prompts);
        lens[b] = prompt;
        for (long t = 0; t < prompt; t++)
            prompts[b][t] = (int32_t)((uint64_t)(b * prompt + t) * 2654435761ull % (uint64_t)(m->config.vocab_size - 1));
    }
    run(ctx, m, batch, prompts, lens, 8, out, out_lens); /* warm-up: GEMM plans, allocator cache */
    double prefill = run(ctx, m, batch, prompts, lens, 1, out, out_lens);
    double total = run(ctx, m, batch, prompts, lens, new_tokens, out, out_lens);
    double step_ms = (total - prefill) / (double)(new_tokens - 1) * 1e3;
    printf("anneal generate batch %ld: %.1f tokens/s (new tokens over wall time incl. prefill), decode %.3f ms/step "
           "(prefill %.1f ms, %s %s, prompt %ld, new %ld)\n",
           batch, (double)(batch * new_tokens) / total, step_ms, prefill * 1e3, an_dtype_name(dtype),
           device == AN_CUDA ? "cuda" : "cpu", prompt, new_tokens);
    if (device == AN_CUDA) {
        double bw = 0;
        if (an_cuda_copy_bandwidth(ctx, (size_t)1 << 30, 20, &bw) != AN_OK) {
            fprintf(stderr, "%s\n", an_error_message(ctx));
            return 1;
        }
        double weight_bytes = 0;
        for (int i = 0; i < m->n_params; i++)
            if (*m->params[i].slot != m->embed_tokens || m->config.tie_word_embeddings)
                weight_bytes += (double)an_tensor_nbytes(*m->params[i].slot);
        double limit = bw / weight_bytes, reached = 1e3 / step_ms;
        printf("device copy bandwidth %.0f GB/s (read + write, 1 GiB device-to-device copies); weight bytes per decode "
               "step %.3f GB; bandwidth limit %.1f steps/s (%.3f ms/step); batch %ld decode reaches %.1f steps/s = "
               "%.1f%% of the limit (%.1f%% counting the prefill in)\n",
               bw / 1e9, weight_bytes / 1e9, limit, 1e3 / limit, batch, reached, 100.0 * reached / limit,
               100.0 * ((double)new_tokens / total) / limit);
    }
    for (long b = 0; b < batch; b++) free(prompts[b]);
    free(prompts), free(out), free(lens), free(out_lens);
    an_model_free(m);
    an_ctx_free(ctx);
    return 0;
}
