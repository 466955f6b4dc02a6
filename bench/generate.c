/* generate.c — generation throughput on a model directory: greedy continuation of B prompts of
 * --prompt ids by --new tokens through an_generate (KV cache, batched decode, tokens chosen on the
 * device), after one warm-up run of 8 new tokens.
 *
 *   bench/generate MODEL_DIR [--batch N] [--prompt 128] [--new 256] [--device cuda|cpu] [--dtype bf16|f32]
 *                  [--breakdown] [--eager] [--no-pdl] [--no-overlap]
 *
 * Prompt ids are ((b * prompt + t) * 2654435761) mod (vocab - 1), as bench/peer_generate.py makes
 * them; no eos stops a row, so every row yields exactly --new tokens. Prints
 *   anneal generate batch B: X tokens/s (new tokens over wall time incl. prefill), decode Y ms/step
 * where the decode time per step is (total - prefill) / (new - 1): the first new token comes from
 * the prefill's logits. On CUDA it also prints the measured device copy bandwidth (read + write
 * bytes per second of a 1 GiB device-to-device copy), the weight bytes a decode step reads (every
 * parameter but the embedding table, of which a step reads B rows), the bandwidth limit
 * bandwidth / weight bytes in steps (tokens per row) per second, and the share of it reached.
 * --breakdown (CUDA) first times the pieces of a decode step at this batch, each repeated back to
 * back (the slower of host issue and GPU) and, for the ops, also 50 calls captured in one CUDA
 * graph (GPU time alone): every projection shape through an_linear (and through cuBLASLt on W^T
 * for comparison), at batch <= 8 the fused norm + q/k/v GEMV against the four ops it replaces,
 * cached attention, the small ops, the sampler, and whole
 * cached forward steps (op by op, and one step captured and replayed, with the fused decode
 * kernels and without them: model.decode_unfused).
 * --eager runs the decode steps op by op instead of replaying CUDA graphs (opts.eager); --no-pdl
 * launches the decode kernels without programmatic dependent launch (an_cuda_set_pdl);
 * --no-overlap reads each step's ids before queuing the next step (opts.no_overlap). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/tape.h"  /* an_no_grad_* */
#include "kernels/cuda.h"  /* an_cuda_synchronize, an_cuda_copy_bandwidth, an_cuda_gemm */
#include "model/generate.h"
#include "model/kv_cache.h"
#include "model/load.h"
#include "train/metrics.h" /* an_metrics_now */

/* One greedy generation of new_tokens per row (no eos stop); its wall time in seconds. */
static double run(an_ctx *ctx, an_model *m, long batch, int32_t **prompts, const int64_t *lens, long new_tokens,
                  bool eager, bool overlap, int32_t **out, int64_t *out_lens) {
    an_generate_opts o = an_generate_defaults(m);
    o.eager = eager;
    o.no_overlap = !overlap;
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

#define REPS 50

/* Seconds per call of `body` repeated REPS times after one warm-up call, synchronised at the end
 * (back to back: the slower of host issue and GPU execution). */
#define TIME_PER_CALL(ctx, out, body)                                   \
    do {                                                                \
        body;                                                           \
        an_cuda_synchronize(ctx);                                       \
        double t0_ = an_metrics_now();                                  \
        for (int r_ = 0; r_ < REPS; r_++) { body; }                     \
        an_cuda_synchronize(ctx);                                       \
        (out) = (an_metrics_now() - t0_) / REPS;                        \
    } while (0)

/* GPU seconds per call of `body`: REPS calls captured into one CUDA graph, replayed once to warm
 * up and once timed (no host issue time in it; 0 when the capture fails). */
#define TIME_IN_GRAPH(ctx, out, body)                                                   \
    do {                                                                                \
        an_cuda_graph *g_ = NULL;                                                       \
        (out) = 0;                                                                      \
        if (an_cuda_graph_begin(ctx) != AN_OK) break;                                   \
        for (int r_ = 0; r_ < REPS; r_++) { body; }                                     \
        if (an_cuda_graph_end(ctx, an_error_status(ctx), &g_) != AN_OK) break;          \
        an_cuda_graph_launch(ctx, g_);                                                  \
        an_cuda_synchronize(ctx);                                                       \
        double t0_ = an_metrics_now();                                                  \
        an_cuda_graph_launch(ctx, g_);                                                  \
        an_cuda_synchronize(ctx);                                                       \
        (out) = (an_metrics_now() - t0_) / REPS;                                        \
        an_cuda_graph_free(ctx, g_);                                                    \
    } while (0)

static an_tensor *randn(an_ctx *ctx, an_dtype dtype, int ndim, const int64_t *shape) {
    an_tensor *t = an_tensor_new(ctx, dtype, AN_CUDA, ndim, shape);
    if (t) an_tensor_fill_normal(ctx, t, 0.0, 1.0);
    return t;
}

/* rmsnorm and the q, k, v projections (with biases) of x as the op-by-op block runs them. */
static void qkv_unfused(an_ctx *ctx, const an_layer *l, an_tensor *x) {
    an_tensor *xn = an_rmsnorm(ctx, x, l->input_layernorm, l->model->config.rms_norm_eps);
    an_tensor_release(an_linear(ctx, xn, l->q_proj.weight, l->q_proj.bias));
    an_tensor_release(an_linear(ctx, xn, l->k_proj.weight, l->k_proj.bias));
    an_tensor_release(an_linear(ctx, xn, l->v_proj.weight, l->v_proj.bias));
    an_tensor_release(xn);
}

static void breakdown(an_ctx *ctx, an_model *m, long batch) {
    const an_model_config *c = &m->config;
    const an_layer *l = &m->layers[0];
    an_dtype dt = m->embed_tokens->dtype;
    int64_t H = c->hidden_size, B = batch;
    an_no_grad_begin(ctx);
    struct {
        const char *name;
        an_tensor *w;
    } proj[] = {{"q_proj", l->q_proj.weight}, {"k_proj", l->k_proj.weight},       {"o_proj", l->o_proj.weight},
                {"gate_proj", l->gate_proj.weight}, {"down_proj", l->down_proj.weight}, {"lm_head", m->lm_head}};
    double per_layer = 0, t;
    for (size_t i = 0; i < sizeof proj / sizeof *proj; i++) {
        int64_t N = proj[i].w->shape[0], K = proj[i].w->shape[1];
        an_tensor *x = randn(ctx, dt, 2, (int64_t[]){B, K}), *wt = randn(ctx, dt, 2, (int64_t[]){K, N});
        an_tensor *y = an_tensor_new(ctx, dt, AN_CUDA, 2, (int64_t[]){B, N});
        double bytes = (double)an_tensor_nbytes(proj[i].w), t_lt = 0;
        TIME_PER_CALL(ctx, t, an_tensor_release(an_linear(ctx, x, proj[i].w, NULL)));
        an_gemm_shape sh = {1, B, N, K, false, false, false, false}; /* x W^T with W^T stored: cuBLASLt */
        TIME_PER_CALL(ctx, t_lt, an_cuda_gemm(ctx, &sh, dt, an_tensor_data(x), an_tensor_data(wt), an_tensor_data(y)));
        double t_g = 0;
        TIME_IN_GRAPH(ctx, t_g, an_tensor_release(an_linear(ctx, x, proj[i].w, NULL)));
        printf("breakdown batch %ld %-9s (%6lld x %5lld): an_linear %7.1f us (%5.0f GB/s), cuBLASLt on W^T %7.1f us "
               "(%5.0f GB/s); an_linear in a graph %7.1f us (%5.0f GB/s)\n", batch, proj[i].name, (long long)N,
               (long long)K, t * 1e6, bytes / t / 1e9, t_lt * 1e6, bytes / t_lt / 1e9, t_g * 1e6, bytes / t_g / 1e9);
        double times = i == 0 || i == 2 ? 1 : i == 1 ? 2 : i == 3 ? 2 : i == 4 ? 1 : 0; /* per layer: q o, k v, gate up, down */
        per_layer += times * t;
        an_tensor_release(x), an_tensor_release(wt), an_tensor_release(y);
    }
    an_tensor *x = randn(ctx, dt, 2, (int64_t[]){B, H});
    an_tensor *g = randn(ctx, dt, 2, (int64_t[]){B, c->intermediate_size});
    TIME_PER_CALL(ctx, t, an_tensor_release(an_rmsnorm(ctx, x, l->input_layernorm, c->rms_norm_eps)));
    {
        double t_g = 0;
        TIME_IN_GRAPH(ctx, t_g, an_tensor_release(an_rmsnorm(ctx, x, l->input_layernorm, c->rms_norm_eps)));
        printf("breakdown batch %ld rmsnorm %.1f us (in a graph %.1f us)\n", batch, t * 1e6, t_g * 1e6);
    }
    per_layer += 2 * t;
    TIME_PER_CALL(ctx, t, an_tensor_release(an_add(ctx, x, x)));
    {
        double t_g = 0;
        TIME_IN_GRAPH(ctx, t_g, an_tensor_release(an_add(ctx, x, x)));
        printf("breakdown batch %ld add %.1f us (in a graph %.1f us)\n", batch, t * 1e6, t_g * 1e6);
    }
    per_layer += 2 * t;
    TIME_PER_CALL(ctx, t, an_tensor_release(an_swiglu(ctx, g, g)));
    {
        double t_g = 0;
        TIME_IN_GRAPH(ctx, t_g, an_tensor_release(an_swiglu(ctx, g, g)));
        printf("breakdown batch %ld swiglu %.1f us (in a graph %.1f us)\n", batch, t * 1e6, t_g * 1e6);
    }
    per_layer += t;
    TIME_PER_CALL(ctx, t, an_tensor_release(an_linear(ctx, x, l->q_proj.weight, l->q_proj.bias)));
    printf("breakdown batch %ld q_proj with bias %.1f us\n", batch, t * 1e6);
    if (B <= AN_CUDA_GEMV_MAX_ROWS) { /* the fused decode kernels (kernels/decode.cu), in a graph */
        int64_t nq = l->q_proj.weight->shape[0], nk = l->k_proj.weight->shape[0];
        an_tensor *yq = an_tensor_new(ctx, dt, AN_CUDA, 2, (int64_t[]){B, nq});
        an_tensor *yk = an_tensor_new(ctx, dt, AN_CUDA, 2, (int64_t[]){B, nk});
        an_tensor *yv = an_tensor_new(ctx, dt, AN_CUDA, 2, (int64_t[]){B, nk});
        an_cuda_proj p3[3] = {
            {an_tensor_data(l->q_proj.weight), l->q_proj.bias ? an_tensor_data(l->q_proj.bias) : NULL, an_tensor_data(yq), nq},
            {an_tensor_data(l->k_proj.weight), l->k_proj.bias ? an_tensor_data(l->k_proj.bias) : NULL, an_tensor_data(yk), nk},
            {an_tensor_data(l->v_proj.weight), l->v_proj.bias ? an_tensor_data(l->v_proj.bias) : NULL, an_tensor_data(yv), nk}};
        double t_qkv = 0, t_sep = 0;
        double qkv_bytes = (double)(an_tensor_nbytes(l->q_proj.weight) + 2 * an_tensor_nbytes(l->k_proj.weight));
        TIME_IN_GRAPH(ctx, t_qkv, an_cuda_rmsnorm_gemv(ctx, dt, an_tensor_data(x), B, H, an_tensor_data(l->input_layernorm),
                                                       c->rms_norm_eps, p3, 3));
        TIME_IN_GRAPH(ctx, t_sep, qkv_unfused(ctx, l, x));
        printf("breakdown batch %ld fused rmsnorm + q/k/v (+bias) GEMV in a graph %.1f us (%.0f GB/s); rmsnorm, "
               "q, k, v op by op in a graph %.1f us\n", batch, t_qkv * 1e6, qkv_bytes / t_qkv / 1e9, t_sep * 1e6);
        an_tensor_release(yq), an_tensor_release(yk), an_tensor_release(yv);
        /* the MLP up to down_proj: one launch streaming gate and up (weights from HBM: 55 MB at 1.5B) */
        const an_tensor *wg = l->gate_proj.weight, *wu = l->up_proj.weight;
        int64_t inter = wg->shape[0];
        an_tensor *act = an_tensor_new(ctx, dt, AN_CUDA, 2, (int64_t[]){B, inter});
        double t_mlp = 0, mlp_bytes = (double)(an_tensor_nbytes(wg) + an_tensor_nbytes(wu));
        TIME_IN_GRAPH(ctx, t_mlp, an_cuda_rmsnorm_swiglu_gemv(ctx, dt, an_tensor_data(x), B, H,
                                                              an_tensor_data(l->post_attention_layernorm), c->rms_norm_eps,
                                                              an_tensor_data(wg), NULL, an_tensor_data(wu), NULL, inter,
                                                              an_tensor_data(act)));
        printf("breakdown batch %ld fused rmsnorm + gate/up + swiglu GEMV in a graph %.1f us (%.0f GB/s)\n", batch,
               t_mlp * 1e6, mlp_bytes / t_mlp / 1e9);
        an_tensor_release(act);
    }
    an_kv_cache *cache = NULL;
    if (an_kv_cache_create(ctx, m, B, 512, &cache) == AN_OK) {
        int64_t *len = an_tensor_data(cache->length), *rows_h = malloc((size_t)B * sizeof *rows_h);
        for (int64_t b = 0; b < B; b++) len[b] = 256, rows_h[b] = b;
        an_tensor *rows = an_tensor_from_data(ctx, AN_I64, 1, (int64_t[]){B}, rows_h);
        an_tensor *q = randn(ctx, dt, 4, (int64_t[]){B, 1, c->num_heads, c->head_dim});
        /* the device tables as a decode step uses them (no upload, no sync per call) */
        an_cuda_memcpy(ctx, an_tensor_data(cache->device_length), AN_CUDA, len, AN_CPU, (size_t)B * sizeof *len);
        an_tensor *dev_rows = an_kv_cache_device_rows(ctx, cache, rows);
        TIME_PER_CALL(ctx, t, an_tensor_release(an_attention_cached(ctx, q, cache->k[0], cache->v[0], dev_rows,
                                                                     cache->device_length, 0.08)));
        an_tensor_release(dev_rows);
        double t_g = 0;
        an_tensor *dev_rows2 = an_kv_cache_device_rows(ctx, cache, rows);
        TIME_IN_GRAPH(ctx, t_g, an_tensor_release(an_attention_cached(ctx, q, cache->k[0], cache->v[0], dev_rows2,
                                                                       cache->device_length, 0.08)));
        an_tensor_release(dev_rows2);
        printf("breakdown batch %ld attention_cached (256 keys) %.1f us (in a graph %.1f us)\n", batch, t * 1e6,
               t_g * 1e6);
        per_layer += t;
        printf("breakdown batch %ld: these pieces sum to %.1f us per layer, %.2f ms per step of %d layers "
               "(without rope, bias adds, cache writes and the head)\n", batch, per_layer * 1e6,
               per_layer * (double)c->num_layers * 1e3, (int)c->num_layers);
        /* whole cached forward steps (the cache fills from 256 on) */
        an_tensor *ids_h = an_tensor_zeros(ctx, AN_I32, AN_CPU, 2, (int64_t[]){B, 1});
        an_tensor *ids = an_tensor_to(ctx, ids_h, AN_I32, AN_CUDA);
        double t_issue = 0;
        an_cuda_synchronize(ctx);
        double t0 = an_metrics_now();
        for (int r = 0; r < 20; r++) an_tensor_release(an_model_forward_cached_trusted(ctx, m, ids, rows, cache));
        t_issue = an_metrics_now() - t0;
        an_cuda_synchronize(ctx);
        t = (an_metrics_now() - t0) / 20;
        printf("breakdown batch %ld cached forward (no head): %.3f ms/step (host returns after %.3f ms)\n", batch,
               t * 1e3, t_issue / 20 * 1e3);
        /* the same step captured once and replayed: the GPU's own time for it, no host in the way;
         * with the fused decode kernels (model.c's decode rule) and without them */
        for (int unfused = 0; unfused < 2; unfused++) {
            m->decode_unfused = unfused;
            an_cuda_graph *graph = NULL;
            if (an_cuda_graph_begin(ctx) != AN_OK) break;
            an_tensor *h = an_model_forward_cached_trusted(ctx, m, ids, rows, cache);
            an_status body = h ? AN_OK : an_error_status(ctx);
            an_tensor_release(h);
            if (an_cuda_graph_end(ctx, body, &graph) == AN_OK) {
                an_cuda_graph_launch(ctx, graph);
                an_cuda_synchronize(ctx);
                t0 = an_metrics_now();
                for (int r = 0; r < 20; r++) an_cuda_graph_launch(ctx, graph);
                an_cuda_synchronize(ctx);
                t = (an_metrics_now() - t0) / 20;
                printf("breakdown batch %ld cached forward (no head) replayed as a CUDA graph, %s: %.3f ms/step\n",
                       batch, unfused ? "op by op kernels (decode_unfused)" : "fused decode kernels", t * 1e3);
            }
            an_cuda_graph_free(ctx, graph);
        }
        m->decode_unfused = false;
        an_tensor *logits = randn(ctx, dt, 2, (int64_t[]){B, c->vocab_size});
        an_tensor *picked = an_tensor_new(ctx, AN_I32, AN_CUDA, 1, (int64_t[]){B});
        int32_t *host = malloc((size_t)B * sizeof *host);
        an_generate_opts o = an_generate_defaults(m);
        TIME_PER_CALL(ctx, t, an_sample_rows(ctx, logits, &o, picked, host));
        printf("breakdown batch %ld greedy sampler incl. copy of the ids: %.1f us\n", batch, t * 1e6);
        o.temperature = 1.0, o.top_k = 50, o.top_p = 0.9;
        TIME_PER_CALL(ctx, t, an_sample_rows(ctx, logits, &o, picked, host));
        printf("breakdown batch %ld top-k 50 top-p 0.9 sampler: %.1f us\n", batch, t * 1e6);
        o.top_k = 0;
        TIME_PER_CALL(ctx, t, an_sample_rows(ctx, logits, &o, picked, host));
        printf("breakdown batch %ld top-p 0.9 sampler: %.1f us\n", batch, t * 1e6);
        free(host), free(rows_h);
        an_tensor_release(picked), an_tensor_release(logits), an_tensor_release(ids), an_tensor_release(ids_h);
        an_tensor_release(q), an_tensor_release(rows);
        an_kv_cache_free(cache);
    }
    an_tensor_release(x), an_tensor_release(g);
    an_no_grad_end(ctx);
    if (an_error_status(ctx)) printf("breakdown error: %s\n", an_error_message(ctx));
    an_error_clear(ctx);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL_DIR [--batch N] [--prompt N] [--new N] [--device cuda|cpu] [--dtype bf16|f32] [--breakdown] [--eager] [--no-pdl] [--no-overlap]\n",
                argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    an_device device = AN_CUDA;
    an_dtype dtype = AN_BF16;
    long batch = 1, prompt = 128, new_tokens = 256;
    bool show_breakdown = false, eager = false, pdl = true, overlap = true;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--device") && i + 1 < argc) device = !strcmp(argv[++i], "cpu") ? AN_CPU : AN_CUDA;
        else if (!strcmp(argv[i], "--dtype") && i + 1 < argc) dtype = !strcmp(argv[++i], "f32") ? AN_F32 : AN_BF16;
        else if (!strcmp(argv[i], "--batch") && i + 1 < argc) batch = atol(argv[++i]);
        else if (!strcmp(argv[i], "--prompt") && i + 1 < argc) prompt = atol(argv[++i]);
        else if (!strcmp(argv[i], "--new") && i + 1 < argc) new_tokens = atol(argv[++i]);
        else if (!strcmp(argv[i], "--breakdown")) show_breakdown = true;
        else if (!strcmp(argv[i], "--eager")) eager = true;
        else if (!strcmp(argv[i], "--no-pdl")) pdl = false;
        else if (!strcmp(argv[i], "--no-overlap")) overlap = false;
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
    if ((device == AN_CUDA && (an_ctx_use_cuda(ctx, 0) != AN_OK || an_cuda_set_pdl(ctx, pdl) != AN_OK)) ||
        an_model_load(ctx, dir, dtype, device, &m) != AN_OK) {
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
    if (show_breakdown && device == AN_CUDA) breakdown(ctx, m, batch);
    run(ctx, m, batch, prompts, lens, 8, eager, overlap, out, out_lens); /* warm-up: GEMM plans, allocator cache */
    double prefill = run(ctx, m, batch, prompts, lens, 1, eager, overlap, out, out_lens);
    double total = run(ctx, m, batch, prompts, lens, new_tokens, eager, overlap, out, out_lens);
    double step_ms = (total - prefill) / (double)(new_tokens - 1) * 1e3;
    printf("anneal generate batch %ld: %.1f tokens/s (new tokens over wall time incl. prefill), decode %.3f ms/step "
           "(prefill %.1f ms, %s %s, prompt %ld, new %ld%s)\n",
           batch, (double)(batch * new_tokens) / total, step_ms, prefill * 1e3, an_dtype_name(dtype),
           device == AN_CUDA ? "cuda" : "cpu", prompt, new_tokens,
           device == AN_CUDA ? (eager ? ", eager: no CUDA graphs" : overlap ? ", decode steps as CUDA graphs" : ", decode steps as CUDA graphs, not overlapped") : "");
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
