/* test_generate.c — the inference engine: greedy continuations equal transformers' on the tiny
 * Qwen2 and Llama fixtures, the KV-cached forward equals the full forward at every prefix,
 * batched prompts of different lengths equal one-by-one generation, a seed repeats a sampled
 * run, top-k 1 and a tiny top-p reduce to greedy, eos and the callback stop a row. */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/generate.h"
#include "model/kv_cache.h"
#include "model/load.h"
#include "support/test_util.h"

#define MODELS ANNEAL_SOURCE_DIR "/tests/fixtures/models"

static an_model *load(an_ctx *ctx, const char *family) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/tiny-%s", MODELS, family);
    an_model *m = NULL;
    ck_assert_msg(an_model_load(ctx, dir, AN_F32, AN_CPU, &m) == AN_OK, "%s", an_error_message(ctx));
    return m;
}

START_TEST(test_greedy_matches_transformers) {
    json_error_t err;
    json_t *expected = json_load_file(MODELS "/tiny-expected.json", 0, &err);
    ck_assert_msg(expected != NULL, "%s", err.text);
    const char *families[] = {"qwen2", "llama"};
    for (int f = 0; f < 2; f++) {
        an_ctx *ctx = test_ctx(1);
        an_model *m = load(ctx, families[f]);
        json_t *cases = json_object_get(json_object_get(expected, families[f]), "greedy");
        size_t n = json_array_size(cases);
        ck_assert_uint_gt(n, 0);
        int32_t prompt_store[2][16];
        const int32_t *prompts[2];
        int64_t lens[2];
        for (size_t i = 0; i < n; i++) {
            json_t *p = json_object_get(json_array_get(cases, i), "prompt");
            lens[i] = (int64_t)json_array_size(p);
            for (int64_t j = 0; j < lens[i]; j++) prompt_store[i][j] = (int32_t)json_integer_value(json_array_get(p, (size_t)j));
            prompts[i] = prompt_store[i];
        }
        an_generate_opts o = an_generate_defaults(m);
        o.max_new_tokens = 10;
        o.n_eos_ids = 0; /* the fixture forced 10 tokens */
        int32_t *out[2];
        int64_t out_lens[2];
        ck_assert_msg(an_generate(ctx, m, (int64_t)n, prompts, lens, &o, out, out_lens) == AN_OK, "%s",
                      an_error_message(ctx));
        for (size_t i = 0; i < n; i++) {
            json_t *want = json_object_get(json_array_get(cases, i), "continuation");
            ck_assert_int_eq(out_lens[i], (int64_t)json_array_size(want));
            for (int64_t j = 0; j < out_lens[i]; j++)
                ck_assert_msg(out[i][j] == json_integer_value(json_array_get(want, (size_t)j)),
                              "%s prompt %zu token %lld: %d, transformers %lld", families[f], i, (long long)j, out[i][j],
                              json_integer_value(json_array_get(want, (size_t)j)));
            free(out[i]);
        }
        printf("%s: %zu greedy continuations identical to transformers\n", families[f], n);
        an_model_free(m);
        test_ctx_free(ctx);
    }
    json_decref(expected);
}
END_TEST

START_TEST(test_cached_forward_equals_full_forward) {
    an_ctx *ctx = test_ctx(2);
    an_model *m = load(ctx, "llama");
    int64_t T = 9;
    an_tensor *ids = test_ids(ctx, AN_I32, 2, (int64_t[]){1, T}, 256);
    an_no_grad_begin(ctx);
    an_tensor *full = an_model_hidden(ctx, m, ids, NULL, NULL); /* (1, T, H) */
    an_kv_cache *cache = NULL;
    ck_assert_int_eq(an_kv_cache_create(ctx, m, 2, 16, &cache), AN_OK);
    int64_t row = 1;
    an_tensor *rows = an_tensor_from_data(ctx, AN_I64, 1, (int64_t[]){1}, &row);
    /* first 4 tokens at once into the empty row (the fresh prompt's own attention), then 3 at once
     * through the cache (a row already holding keys), then one at a time */
    int64_t done = 0, h = m->config.hidden_size;
    while (done < T) {
        int64_t step = done == 0 ? 4 : done == 4 ? 3 : 1;
        an_tensor *chunk = an_tensor_new(ctx, AN_I32, AN_CPU, 2, (int64_t[]){1, step});
        for (int64_t i = 0; i < step; i++) an_tensor_set(chunk, i, an_tensor_get(ids, done + i));
        an_tensor *hc = an_model_forward_cached(ctx, m, chunk, rows, cache);
        ck_assert_msg(hc != NULL, "%s", an_error_message(ctx));
        if (done == 0) { /* the prompt's own attention: the very ops of a forward of the chunk, the same bits */
            an_tensor *alone = an_model_hidden(ctx, m, chunk, NULL, NULL);
            ck_assert(alone != NULL);
            for (int64_t i = 0; i < step * h; i++)
                ck_assert_msg(an_tensor_get(hc, i) == an_tensor_get(alone, i), "fresh prompt, element %lld: %.9g vs %.9g",
                              (long long)i, an_tensor_get(hc, i), an_tensor_get(alone, i));
            an_tensor_release(alone);
        }
        for (int64_t i = 0; i < step * h; i++) {
            double got = an_tensor_get(hc, i), want = an_tensor_get(full, done * h + i);
            ck_assert_msg(fabs(got - want) <= 1e-5 * (1 + fabs(want)), "position %lld: %g vs %g", (long long)(done + i / h),
                          got, want);
        }
        done += step;
        an_tensor_release(chunk), an_tensor_release(hc);
    }
    ck_assert_int_eq(((int64_t *)an_tensor_data(cache->length))[1], T);
    ck_assert_int_eq(((int64_t *)an_tensor_data(cache->length))[0], 0);
    /* the cache refuses to overflow its capacity */
    an_tensor *big = test_ids(ctx, AN_I32, 2, (int64_t[]){1, 8}, 256);
    ck_assert_ptr_null(an_model_forward_cached(ctx, m, big, rows, cache));
    ck_assert_int_eq(an_error_status(ctx), AN_ERR_INPUT);
    an_error_clear(ctx);
    an_no_grad_end(ctx);
    an_tensor_release(big), an_tensor_release(rows), an_tensor_release(full), an_tensor_release(ids);
    an_kv_cache_free(cache);
    an_model_free(m);
    test_ctx_free(ctx);
}
END_TEST

static int64_t run(an_ctx *ctx, an_model *m, int64_t n, const int32_t *const *prompts, const int64_t *lens,
                   const an_generate_opts *o, int32_t **out, int64_t *out_lens) {
    ck_assert_msg(an_generate(ctx, m, n, prompts, lens, o, out, out_lens) == AN_OK, "%s", an_error_message(ctx));
    return n;
}

START_TEST(test_batch_equals_one_by_one_and_seeds_repeat) {
    an_ctx *ctx = test_ctx(3);
    an_model *m = load(ctx, "qwen2");
    const int32_t p0[] = {5, 6, 7, 8, 9, 10, 11}, p1[] = {200}, p2[] = {17, 42, 99};
    const int32_t *prompts[] = {p0, p1, p2};
    int64_t lens[] = {7, 1, 3};
    an_generate_opts o = an_generate_defaults(m);
    o.max_new_tokens = 6;
    o.n_eos_ids = 0;
    int32_t *batch[3], *single[1];
    int64_t batch_lens[3], single_lens[1];
    run(ctx, m, 3, prompts, lens, &o, batch, batch_lens);
    for (int i = 0; i < 3; i++) {
        run(ctx, m, 1, &prompts[i], &lens[i], &o, single, single_lens);
        ck_assert_int_eq(single_lens[0], batch_lens[i]);
        ck_assert(memcmp(single[0], batch[i], (size_t)batch_lens[i] * 4) == 0);
        free(single[0]);
        free(batch[i]);
    }
    /* sampling: same seed, same tokens; another seed, other tokens */
    o.temperature = 1.5;
    o.top_k = 50;
    o.top_p = 0.95;
    o.max_new_tokens = 12;
    int32_t *a[3], *b[3], *c[3];
    int64_t la[3], lb[3], lc[3];
    an_rng_init(&ctx->rng, 42);
    run(ctx, m, 3, prompts, lens, &o, a, la);
    an_rng_init(&ctx->rng, 42);
    run(ctx, m, 3, prompts, lens, &o, b, lb);
    an_rng_init(&ctx->rng, 43);
    run(ctx, m, 3, prompts, lens, &o, c, lc);
    bool any_diff = false;
    for (int i = 0; i < 3; i++) {
        ck_assert(la[i] == lb[i] && memcmp(a[i], b[i], (size_t)la[i] * 4) == 0);
        any_diff = any_diff || la[i] != lc[i] || memcmp(a[i], c[i], (size_t)la[i] * 4) != 0;
        free(a[i]), free(b[i]), free(c[i]);
    }
    ck_assert_msg(any_diff, "a different seed gave the same 36 sampled tokens");
    an_model_free(m);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_sampling_limits_reduce_to_greedy) {
    double logits[6] = {0.1, 2.0, -1.0, 1.99, 0.5, 0.0};
    double scratch[12];
    an_rng rng;
    an_rng_init(&rng, 5);
    an_generate_opts o = {.temperature = 1.0, .top_k = 1, .top_p = 1.0};
    for (int i = 0; i < 50; i++) ck_assert_int_eq(an_sample_token(logits, 6, &o, &rng, scratch), 1);
    o.top_k = 0;
    o.top_p = 0.01;
    for (int i = 0; i < 50; i++) ck_assert_int_eq(an_sample_token(logits, 6, &o, &rng, scratch), 1);
    o.top_k = 2; /* only ids 1 and 3 can come out, both do */
    o.top_p = 1.0;
    int seen[6] = {0};
    for (int i = 0; i < 400; i++) seen[an_sample_token(logits, 6, &o, &rng, scratch)]++;
    ck_assert(seen[1] > 100 && seen[3] > 100 && seen[1] + seen[3] == 400);
    /* temperature: frequencies follow softmax(logits / T) */
    o.top_k = 0;
    o.temperature = 0.7;
    int counts[6] = {0};
    for (int i = 0; i < 20000; i++) counts[an_sample_token(logits, 6, &o, &rng, scratch)]++;
    double z = 0;
    for (int i = 0; i < 6; i++) z += exp(logits[i] / 0.7);
    for (int i = 0; i < 6; i++) {
        double p = exp(logits[i] / 0.7) / z, f = counts[i] / 20000.0;
        ck_assert_msg(fabs(f - p) < 4 * sqrt(p * (1 - p) / 20000.0) + 1e-3, "id %d: frequency %.4f, probability %.4f", i, f, p);
    }
}
END_TEST

static bool stop_after_three(void *user, int64_t row, int32_t token) {
    int *seen = user;
    (void)token;
    return ++seen[row] == 3;
}

START_TEST(test_eos_and_callback_stop_rows) {
    an_ctx *ctx = test_ctx(4);
    an_model *m = load(ctx, "qwen2");
    const int32_t p0[] = {5, 17, 42, 99, 7};
    const int32_t *prompts[] = {p0};
    int64_t lens[] = {5};
    an_generate_opts o = an_generate_defaults(m);
    o.max_new_tokens = 10;
    o.n_eos_ids = 0;
    int32_t *out[1];
    int64_t out_len[1];
    run(ctx, m, 1, prompts, lens, &o, out, out_len);
    int64_t eos = out[0][4]; /* make the fifth greedy token an eos id */
    free(out[0]);
    o.eos_ids = &eos;
    o.n_eos_ids = 1;
    run(ctx, m, 1, prompts, lens, &o, out, out_len);
    int64_t first = 0;
    while (out[0][first] != eos) first++;
    ck_assert_int_eq(out_len[0], first + 1); /* stops right after emitting eos, which is kept */
    free(out[0]);
    int seen[1] = {0};
    o.n_eos_ids = 0;
    o.on_token = stop_after_three;
    o.user = seen;
    run(ctx, m, 1, prompts, lens, &o, out, out_len);
    ck_assert_int_eq(out_len[0], 3);
    free(out[0]);
    o.on_token = NULL;
    o.vocab_limit = 7; /* a padded embedding: ids the tokenizer lacks are never produced */
    o.temperature = 1.0;
    run(ctx, m, 1, prompts, lens, &o, out, out_len);
    for (int64_t i = 0; i < out_len[0]; i++) ck_assert_int_lt(out[0][i], 7);
    free(out[0]);
    const int32_t bad[] = {300};
    const int32_t *bad_prompts[] = {bad};
    int64_t bad_len[] = {1};
    ck_assert_int_eq(an_generate(ctx, m, 1, bad_prompts, bad_len, &o, out, out_len), AN_ERR_INPUT);
    ck_assert_ptr_nonnull(strstr(an_error_message(ctx), "outside the vocabulary"));
    an_error_clear(ctx);
    an_model_free(m);
    test_ctx_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("generate");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_greedy_matches_transformers);
    tcase_add_test(tc, test_cached_forward_equals_full_forward);
    tcase_add_test(tc, test_batch_equals_one_by_one_and_seeds_repeat);
    tcase_add_test(tc, test_sampling_limits_reduce_to_greedy);
    tcase_add_test(tc, test_eos_and_callback_stop_rows);
    suite_add_tcase(s, tc);
    return test_run(s);
}
