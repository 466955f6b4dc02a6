/* generate.c — the generation loop: prefill each prompt into its cache row, then decode every
 * unfinished row together one token per step (see generate.h). Logits are formed only for the
 * last position of each row. */
#include "model/generate.h"

#include <stdlib.h>
#include <string.h>

#include "autograd/ops.h"   /* an_linear for the head */
#include "autograd/tape.h"  /* an_no_grad_* */
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

/* Logits (B', V) of the last position of each row of hidden (B', T, H), as a CPU f64 tensor. */
static an_tensor *last_logits(an_ctx *ctx, an_model *m, an_tensor *hidden) {
    int64_t b = hidden->shape[0], t = hidden->shape[1], h = hidden->shape[2];
    an_tensor *flat = an_tensor_view(ctx, hidden, 2, (int64_t[]){b * t, h});
    an_tensor *last = flat ? an_tensor_new(ctx, hidden->dtype, hidden->device, 2, (int64_t[]){b, h}) : NULL;
    an_status st = last ? AN_OK : an_error_status(ctx);
    for (int64_t i = 0; i < b && st == AN_OK; i++) {
        an_tensor *src = an_tensor_rows(ctx, flat, i * t + t - 1, 1), *dst = an_tensor_rows(ctx, last, i, 1);
        st = src && dst ? an_tensor_copy_into(ctx, dst, src) : an_error_status(ctx);
        an_tensor_release(src), an_tensor_release(dst);
    }
    an_tensor_release(flat);
    an_tensor *logits = st == AN_OK ? an_linear(ctx, last, m->lm_head, NULL) : NULL;
    an_tensor_release(last);
    an_tensor *host = logits ? an_tensor_to(ctx, logits, AN_F64, AN_CPU) : NULL;
    an_tensor_release(logits);
    return host;
}

static bool is_eos(const an_generate_opts *o, int32_t token) {
    for (int i = 0; i < o->n_eos_ids; i++)
        if (o->eos_ids[i] == token) return true;
    return false;
}

/* ids moved to the model's device (consumes the argument). */
static an_tensor *on_model_device(an_ctx *ctx, const an_model *m, an_tensor *ids) {
    if (!ids || m->embed_tokens->device == AN_CPU) return ids;
    an_tensor *moved = an_tensor_to(ctx, ids, AN_I32, m->embed_tokens->device);
    an_tensor_release(ids);
    return moved;
}

/* Runs ids (B', T) of cache rows `rows` and returns their last-position logits. */
static an_tensor *step(an_ctx *ctx, an_model *m, an_kv_cache *cache, an_tensor *ids, an_tensor *rows) {
    an_tensor *hidden = an_model_forward_cached(ctx, m, ids, rows, cache);
    an_tensor *logits = hidden ? last_logits(ctx, m, hidden) : NULL;
    an_tensor_release(hidden);
    return logits;
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
    double *logit_rows = malloc((size_t)(n * vocab) * sizeof *logit_rows);
    double *scratch = malloc((size_t)(2 * vocab) * sizeof *scratch);
    bool *done = calloc((size_t)n, sizeof *done);
    int32_t *chosen = malloc((size_t)n * sizeof *chosen); /* next token of each active row */
    an_status st = tokens && count && active && logit_rows && scratch && done && chosen
                       ? AN_OK
                       : an_error_set(ctx, AN_ERR_INTERNAL, __FILE__, __LINE__, "generate: out of host memory");
    an_no_grad_begin(ctx);
    /* Prefill: each prompt alone (their lengths differ), into its own cache row. */
    for (int64_t i = 0; i < n && st == AN_OK; i++) {
        an_tensor *ids = an_tensor_from_data(ctx, AN_I32, 2, (int64_t[]){1, prompt_lens[i]}, prompts[i]);
        an_tensor *rows = an_tensor_from_data(ctx, AN_I64, 1, (int64_t[]){1}, &i);
        ids = on_model_device(ctx, m, ids);
        an_tensor *logits = ids && rows ? step(ctx, m, cache, ids, rows) : NULL;
        if (logits) memcpy(logit_rows + i * vocab, an_tensor_data(logits), (size_t)vocab * sizeof(double));
        else st = an_error_status(ctx);
        an_tensor_release(ids), an_tensor_release(rows), an_tensor_release(logits);
    }
    /* Decode: sample for every unfinished row, then run all of them one step. */
    for (int64_t s = 0; s < o->max_new_tokens && st == AN_OK; s++) {
        int64_t n_active = 0;
        for (int64_t i = 0; i < n; i++) {
            if (done[i]) continue;
            int64_t allowed = o->vocab_limit > 0 && o->vocab_limit < vocab ? o->vocab_limit : vocab;
            int32_t t = an_sample_token(logit_rows + i * vocab, allowed, o, &ctx->rng, scratch);
            tokens[i * o->max_new_tokens + count[i]++] = t;
            bool stop = is_eos(o, t) || count[i] == o->max_new_tokens;
            if (o->on_token && o->on_token(o->user, i, t)) stop = true;
            done[i] = stop;
            if (!stop) {
                chosen[n_active] = t;
                active[n_active++] = i;
            }
        }
        if (n_active == 0) break;
        an_tensor *ids = an_tensor_from_data(ctx, AN_I32, 2, (int64_t[]){n_active, 1}, chosen);
        an_tensor *rows = an_tensor_from_data(ctx, AN_I64, 1, (int64_t[]){n_active}, active);
        ids = on_model_device(ctx, m, ids);
        an_tensor *logits = ids && rows ? step(ctx, m, cache, ids, rows) : NULL;
        if (!logits) st = an_error_status(ctx);
        for (int64_t a = 0; logits && a < n_active; a++)
            memcpy(logit_rows + active[a] * vocab, (double *)an_tensor_data(logits) + a * vocab,
                   (size_t)vocab * sizeof(double));
        an_tensor_release(ids), an_tensor_release(rows), an_tensor_release(logits);
    }
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
    free(tokens), free(count), free(active), free(logit_rows), free(scratch), free(done), free(chosen);
    an_kv_cache_free(cache);
    return st;
}
