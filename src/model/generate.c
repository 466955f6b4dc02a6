/* generate.c — the generation loop: prefill the prompts into their cache rows (prompts of equal
 * length side by side in one forward), then decode every unfinished row together one token per
 * step (see generate.h). Logits are formed only for the last position of each row, and the next
 * tokens are chosen on the logits' device (an_sample_rows).
 *
 * On the GPU a decode step is free of host synchronisation and host data: the sampler writes the
 * next ids into a fixed device buffer that is the next step's input (their range check is skipped:
 * an_model_forward_cached_trusted), the KV cache keeps lengths and the row table on the device,
 * and positions are formed there. The step's one synchronisation is the copy of the B chosen ids
 * to the host (eos, callbacks, output), after the sampler, and once a size has its graph the next
 * step already runs while the host waits for it ("Overlap" below).
 *
 * CUDA graphs (unless opts->eager): at a given active batch size the first decode step runs op by
 * op (it creates the GEMM plans and uploads the row table), the second is captured into a graph
 * (kernels/graph.cu) and launched, every later one replays it: one launch instead of ~20 per
 * layer. The sampler stays outside the graph (its draw offset changes each step). When a row
 * finishes, the active rows are compacted and the graph is freed; the cycle starts again at the
 * smaller size (re-capture, not padding: finished rows as padding would keep computing and
 * writing their cache rows, and the sampler would need a map from rows to draws to stay
 * identical to the CPU; a re-capture costs one op-by-op step and one capture per distinct batch
 * size, at most n). On a replay the host code of the step does not run, so this loop validates
 * and advances the cache's host mirror of the lengths itself.
 *
 * Overlap: once a size has its graph, the next step's replay is queued right behind the sampler,
 * before the host has read the ids (an_cuda_read_mark / an_cuda_read_marked), so the GPU never
 * waits for the host's bookkeeping and launch. Not where a row reaches max_new_tokens with this
 * token. If a row then stops (eos, the callback), the queued step has advanced every row once:
 * right for the survivors, whose logits rows are gathered into a batch of the smaller size and
 * sampled as the op-by-op path would sample them (same draw offsets); the finished rows' extra
 * cache entries are never read. */
#include "model/generate.h"

#include <stdlib.h>
#include <string.h>

#include "autograd/ops.h"   /* an_linear for the head */
#include "autograd/tape.h"  /* an_no_grad_* */
#include "kernels/cuda.h"     /* an_cuda_graph_*, an_cuda_memcpy */
#include "model/kv_cache.h"

an_generate_opts an_generate_defaults(const an_model *m) {
    static const an_generate_opts zero;
    an_generate_opts o = zero;
    o.max_new_tokens = 128;
    o.top_p = 1.0;
    o.eos_ids = m->config.eos_token_ids;
    o.n_eos_ids = m->config.n_eos_token_ids;
    return o;
}

static bool is_eos(const an_generate_opts *o, int32_t token) {
    for (int i = 0; i < o->n_eos_ids; i++)
        if (o->eos_ids[i] == token) return true;
    return false;
}

/* Hidden states of the last position of each of ids' rows (B', T) appended to cache rows `rows`,
 * copied into rows [at, at + B') of last (n, H). */
static an_status prefill(an_ctx *ctx, an_model *m, an_kv_cache *cache, an_tensor *ids, an_tensor *rows,
                         an_tensor *last, int64_t at) {
    an_tensor *hidden = an_model_forward_cached(ctx, m, ids, rows, cache);
    if (!hidden) return an_error_status(ctx);
    int64_t b = hidden->shape[0], t = hidden->shape[1], h = hidden->shape[2];
    an_tensor *flat = an_tensor_view(ctx, hidden, 2, (int64_t[]){b * t, h});
    an_status st = flat ? AN_OK : an_error_status(ctx);
    for (int64_t i = 0; i < b && st == AN_OK; i++) {
        an_tensor *src = an_tensor_rows(ctx, flat, i * t + t - 1, 1), *dst = an_tensor_rows(ctx, last, at + i, 1);
        st = src && dst ? an_tensor_copy_into(ctx, dst, src) : an_error_status(ctx);
        an_tensor_release(src), an_tensor_release(dst);
    }
    an_tensor_release(flat), an_tensor_release(hidden);
    return st;
}

/* A (rows, cols) i32 tensor of host ids on the model's device. */
static an_tensor *ids_on_device(an_ctx *ctx, const an_model *m, int64_t rows, int64_t cols, const int32_t *ids) {
    an_tensor *host = an_tensor_from_data(ctx, AN_I32, 2, (int64_t[]){rows, cols}, ids);
    if (!host || m->embed_tokens->device == AN_CPU) return host;
    an_tensor *moved = an_tensor_to(ctx, host, AN_I32, m->embed_tokens->device);
    an_tensor_release(host);
    return moved;
}

/* Logits (n, V) of every prompt's last position, prefilling runs of equally long prompts in one
 * forward each. */
static an_tensor *prefill_all(an_ctx *ctx, an_model *m, an_kv_cache *cache, int64_t n, const int32_t *const *prompts,
                              const int64_t *lens) {
    an_tensor *last = an_tensor_new(ctx, m->embed_tokens->dtype, m->embed_tokens->device, 2,
                                    (int64_t[]){n, m->config.hidden_size});
    an_status st = last ? AN_OK : an_error_status(ctx);
    for (int64_t i = 0, g; i < n && st == AN_OK; i += g) {
        for (g = 1; i + g < n && lens[i + g] == lens[i]; g++) {}
        int32_t *flat = malloc((size_t)(g * lens[i]) * sizeof *flat);
        int64_t *rows = malloc((size_t)g * sizeof *rows);
        if (!flat || !rows) {
            free(flat), free(rows);
            st = an_error_set(ctx, AN_ERR_INTERNAL, __FILE__, __LINE__, "generate: out of host memory");
            break;
        }
        for (int64_t j = 0; j < g; j++) {
            memcpy(flat + j * lens[i], prompts[i + j], (size_t)lens[i] * sizeof *flat);
            rows[j] = i + j;
        }
        an_tensor *ids = ids_on_device(ctx, m, g, lens[i], flat);
        an_tensor *row_t = an_tensor_from_data(ctx, AN_I64, 1, (int64_t[]){g}, rows);
        st = ids && row_t ? prefill(ctx, m, cache, ids, row_t, last, i) : an_error_status(ctx);
        an_tensor_release(ids), an_tensor_release(row_t);
        free(flat), free(rows);
    }
    an_tensor *logits = st == AN_OK ? an_linear(ctx, last, m->lm_head, NULL) : NULL;
    an_tensor_release(last);
    return logits;
}

/* Logits (B', V) of one decode step of ids (B', 1) on cache rows `rows`; trusted: ids chosen by the
 * GPU sampler (no range check). */
static an_tensor *decode(an_ctx *ctx, an_model *m, an_kv_cache *cache, an_tensor *ids, an_tensor *rows, bool trusted) {
    an_tensor *hidden = trusted ? an_model_forward_cached_trusted(ctx, m, ids, rows, cache)
                                : an_model_forward_cached(ctx, m, ids, rows, cache);
    an_tensor *flat = hidden ? an_tensor_view(ctx, hidden, 2, (int64_t[]){hidden->shape[0], hidden->shape[2]}) : NULL;
    an_tensor *logits = flat ? an_linear(ctx, flat, m->lm_head, NULL) : NULL;
    an_tensor_release(flat), an_tensor_release(hidden);
    return logits;
}

/* A decode step captured as a CUDA graph for one active batch size. */
typedef struct {
    an_cuda_graph *graph;
    an_tensor *logits; /* (B', V): the graph's output, rewritten by every replay */
} step_graph;

static void step_graph_clear(an_ctx *ctx, step_graph *g) {
    an_cuda_graph_free(ctx, g->graph); /* waits for a replay in flight */
    an_tensor_release(g->logits);
    *g = (step_graph){0};
}

/* Captures the decode step of ids (B', 1) on rows into g and launches it once (capture records,
 * it does not run). The host mirror of the lengths advances during the capture, as on any step. */
static an_status step_graph_capture(an_ctx *ctx, an_model *m, an_kv_cache *cache, an_tensor *ids, an_tensor *rows,
                                    step_graph *g) {
    AN_TRY(an_cuda_graph_begin(ctx));
    an_tensor *logits = decode(ctx, m, cache, ids, rows, true);
    an_status st = an_cuda_graph_end(ctx, logits ? AN_OK : an_error_status(ctx), &g->graph);
    if (st != AN_OK) {
        an_tensor_release(logits);
        return st;
    }
    g->logits = logits;
    return an_cuda_graph_launch(ctx, g->graph);
}

/* One replay of g on rows: what the step's host code would have checked and counted. */
static an_status step_graph_replay(an_ctx *ctx, an_kv_cache *cache, const an_tensor *rows, step_graph *g) {
    const int64_t *r = an_tensor_data(rows);
    int64_t *len = an_tensor_data(cache->length);
    for (int64_t b = 0; b < rows->shape[0]; b++)
        AN_CHECK(ctx, len[r[b]] + 1 <= cache->capacity, AN_ERR_INPUT,
                 "generate: cache row %lld is full (capacity %lld)", (long long)r[b], (long long)cache->capacity);
    AN_TRY(an_cuda_graph_launch(ctx, g->graph));
    for (int64_t b = 0; b < rows->shape[0]; b++) len[r[b]] += 1;
    return AN_OK;
}

/* Rows at[0..k) of src (B, V) on the GPU, in that order, as a new (k, V) tensor. */
static an_tensor *gather_rows(an_ctx *ctx, const an_tensor *src, const int64_t *at, int64_t k) {
    an_tensor *dst = an_tensor_new(ctx, src->dtype, src->device, 2, (int64_t[]){k, src->shape[1]});
    size_t row = an_tensor_nbytes(src) / (size_t)src->shape[0];
    for (int64_t j = 0; j < k && dst; j++)
        if (an_cuda_memcpy(ctx, (char *)an_tensor_data(dst) + (size_t)j * row, AN_CUDA,
                           (const char *)an_tensor_data(src) + (size_t)at[j] * row, AN_CUDA, row) != AN_OK) {
            an_tensor_release(dst);
            dst = NULL;
        }
    return dst;
}

/* The GPU's choice for logits (B', V) into device_picked's first B' ids and the host's picked, with
 * the next step's replay queued between the two where it may be (the file's "Overlap"): *queued
 * receives that step's logits. */
static an_status choose_and_queue(an_ctx *ctx, const an_generate_opts *o, const an_tensor *logits,
                                  an_tensor *device_picked, int64_t n_active, const int64_t *active,
                                  const int64_t *count, an_kv_cache *cache, const an_tensor *rows, step_graph *graph,
                                  int32_t *picked, an_tensor **queued, an_generate_stats *stats) {
    an_tensor *out_view = an_tensor_rows(ctx, device_picked, 0, n_active);
    an_status st = out_view ? an_sample_rows_on_device(ctx, logits, o, out_view) : an_error_status(ctx);
    an_tensor_release(out_view);
    if (st == AN_OK) st = an_cuda_read_mark(ctx);
    bool overlap = st == AN_OK && graph->graph && !o->no_overlap;
    for (int64_t a = 0; a < n_active && overlap; a++)
        if (count[active[a]] + 1 >= o->max_new_tokens) overlap = false; /* this token is the row's last */
    if (overlap) {
        st = step_graph_replay(ctx, cache, rows, graph);
        if (st == AN_OK) {
            *queued = an_tensor_retain(graph->logits);
            stats->graph_replays++, stats->decode_steps++, stats->overlapped_steps++;
        }
    }
    if (st == AN_OK)
        st = an_cuda_read_marked(ctx, picked, an_tensor_data(device_picked), (size_t)n_active * sizeof *picked);
    return st;
}

an_status an_generate(an_ctx *ctx, an_model *m, int64_t n, const int32_t *const *prompts, const int64_t *prompt_lens,
                      const an_generate_opts *o, int32_t **out, int64_t *out_lens) {
    AN_CHECK(ctx, n >= 1 && o->max_new_tokens >= 0, AN_ERR_INPUT, "generate: %lld prompts, %lld new tokens",
             (long long)n, (long long)o->max_new_tokens);
    int64_t longest = 0, vocab = m->config.vocab_size;
    for (int64_t i = 0; i < n; i++) {
        AN_CHECK(ctx, prompt_lens[i] >= 1, AN_ERR_INPUT, "generate: prompt %lld is empty", (long long)i);
        for (int64_t j = 0; j < prompt_lens[i]; j++)
            AN_CHECK(ctx, prompts[i][j] >= 0 && prompts[i][j] < vocab, AN_ERR_INPUT,
                     "generate: prompt %lld token %lld = %d is outside the vocabulary [0, %lld)", (long long)i,
                     (long long)j, prompts[i][j], (long long)vocab);
        longest = prompt_lens[i] > longest ? prompt_lens[i] : longest;
    }
    an_kv_cache *cache = NULL;
    AN_TRY(an_kv_cache_create(ctx, m, n, longest + o->max_new_tokens + 1, &cache));
    int32_t *tokens = calloc((size_t)(n * (o->max_new_tokens ? o->max_new_tokens : 1)), sizeof *tokens);
    int64_t *count = calloc((size_t)n, sizeof *count), *active = malloc((size_t)n * sizeof *active);
    int32_t *picked = malloc((size_t)n * sizeof *picked); /* the token chosen for each active row */
    int64_t *kept_at = malloc((size_t)n * sizeof *kept_at); /* a survivor's row in the step it survived */
    an_status st = tokens && count && active && picked && kept_at
                       ? AN_OK
                       : an_error_set(ctx, AN_ERR_INTERNAL, __FILE__, __LINE__, "generate: out of host memory");
    /* (n) i32 on the GPU: the sampler's output, and the next step's ids while no row finishes */
    an_tensor *device_picked = st == AN_OK && m->embed_tokens->device == AN_CUDA
                                   ? an_tensor_new(ctx, AN_I32, AN_CUDA, 1, (int64_t[]){n})
                                   : NULL;
    if (st == AN_OK && m->embed_tokens->device == AN_CUDA && !device_picked) st = an_error_status(ctx);
    an_tensor *rows = NULL; /* (n_active) i64 on the CPU: the cache row of each active row */
    int64_t n_active = n, steps_at_size = 0;
    bool use_graphs = device_picked && !o->eager;
    step_graph graph = {0};
    an_generate_stats stats = {0};
    for (int64_t i = 0; i < n && active; i++) active[i] = i;
    an_no_grad_begin(ctx);
    an_tensor *logits = st == AN_OK && o->max_new_tokens > 0 ? prefill_all(ctx, m, cache, n, prompts, prompt_lens) : NULL;
    if (st == AN_OK && o->max_new_tokens > 0 && !logits) st = an_error_status(ctx);
    /* Each pass: choose a token for every active row (logits row a belongs to active[a]), record
     * it, drop finished rows, and run the rest one step. */
    while (logits && st == AN_OK) {
        an_tensor *queued = NULL; /* the next step's logits when it was queued before the ids were read */
        if (device_picked) {
            st = choose_and_queue(ctx, o, logits, device_picked, n_active, active, count, cache, rows, &graph, picked,
                                  &queued, &stats);
        } else {
            st = an_sample_rows(ctx, logits, o, NULL, picked);
        }
        an_tensor_release(logits);
        logits = NULL;
        int64_t kept = 0;
        for (int64_t a = 0; a < n_active && st == AN_OK; a++) {
            int64_t i = active[a];
            int32_t t = picked[a];
            tokens[i * o->max_new_tokens + count[i]++] = t;
            bool stop = is_eos(o, t) || count[i] == o->max_new_tokens;
            if (o->on_token && o->on_token(o->user, i, t)) stop = true;
            if (!stop) picked[kept] = t, kept_at[kept] = a, active[kept++] = i;
        }
        if (st != AN_OK || kept == 0) {
            an_tensor_release(queued);
            break;
        }
        if (queued && kept == n_active) { /* the usual step: it is already running */
            logits = queued;
            continue;
        }
        if (queued) { /* rows finished under a queued step: the survivors' logits at the smaller size */
            logits = gather_rows(ctx, queued, kept_at, kept);
            an_tensor_release(queued);
            if (!logits) st = an_error_status(ctx);
            step_graph_clear(ctx, &graph);
            steps_at_size = 0;
            an_tensor_release(rows);
            n_active = kept;
            rows = st == AN_OK ? an_tensor_from_data(ctx, AN_I64, 1, (int64_t[]){kept}, active) : NULL;
            if (st == AN_OK && !rows) st = an_error_status(ctx);
            continue; /* the sampler writes the survivors' ids in their new order */
        }
        if (kept != n_active || !rows) { /* a new active set: compact, drop the graph of the old size */
            step_graph_clear(ctx, &graph);
            steps_at_size = 0;
            an_tensor_release(rows);
            rows = an_tensor_from_data(ctx, AN_I64, 1, (int64_t[]){kept}, active);
            /* the survivors' ids to the front of the device buffer (the sampler wrote them in the old order) */
            if (device_picked && kept != n_active &&
                an_cuda_memcpy(ctx, an_tensor_data(device_picked), AN_CUDA, picked, AN_CPU, (size_t)kept * sizeof *picked) != AN_OK)
                st = an_error_status(ctx);
        }
        n_active = kept;
        an_tensor *ids = NULL;
        if (st == AN_OK && rows) {
            if (device_picked) { /* (kept, 1) view of the device ids: the same address every step */
                an_tensor *front = an_tensor_rows(ctx, device_picked, 0, kept);
                ids = front ? an_tensor_view(ctx, front, 2, (int64_t[]){kept, 1}) : NULL;
                an_tensor_release(front);
            } else {
                ids = ids_on_device(ctx, m, kept, 1, picked);
            }
        }
        if (st == AN_OK && ids && rows) {
            if (use_graphs && graph.graph) {
                st = step_graph_replay(ctx, cache, rows, &graph);
                logits = st == AN_OK ? an_tensor_retain(graph.logits) : NULL;
                stats.graph_replays += st == AN_OK;
            } else if (use_graphs && steps_at_size >= 1) {
                st = step_graph_capture(ctx, m, cache, ids, rows, &graph);
                logits = st == AN_OK ? an_tensor_retain(graph.logits) : NULL;
                stats.graph_captures += st == AN_OK;
            } else {
                logits = decode(ctx, m, cache, ids, rows, device_picked != NULL);
                if (!logits) st = an_error_status(ctx);
            }
            stats.decode_steps++;
            steps_at_size++;
        } else if (st == AN_OK) {
            st = an_error_status(ctx);
        }
        an_tensor_release(ids);
    }
    an_tensor_release(logits), an_tensor_release(rows), an_tensor_release(device_picked);
    step_graph_clear(ctx, &graph);
    if (o->stats) *o->stats = stats;
    an_no_grad_end(ctx);
    for (int64_t i = 0; i < n && st == AN_OK; i++) {
        out[i] = malloc((size_t)(count[i] ? count[i] : 1) * sizeof **out);
        if (!out[i]) {
            for (int64_t j = 0; j < i; j++) free(out[j]);
            st = an_error_set(ctx, AN_ERR_INTERNAL, __FILE__, __LINE__, "generate: out of host memory");
            break;
        }
        memcpy(out[i], tokens + i * o->max_new_tokens, (size_t)count[i] * sizeof **out);
        out_lens[i] = count[i];
    }
    free(tokens), free(count), free(active), free(picked), free(kept_at);
    an_kv_cache_free(cache);
    return st;
}
