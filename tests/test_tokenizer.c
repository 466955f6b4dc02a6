/* test_tokenizer.c — the byte-level BPE tokenizer against the Python `tokenizers` library: every
 * line of tests/fixtures/tokenizer/<name>/expected.json (written by make_tokenizer.py) must encode to
 * exactly the library's ids and decode to exactly its text, for the Qwen2-style, Llama-3-style and
 * bare-ByteLevel fixtures; plus bos/eos handling from tokenizer_config.json, malformed files that
 * must fail naming the file and field, and a throughput print. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "data/tokenizer.h"
#include "support/test_util.h"

#define FIXTURES ANNEAL_SOURCE_DIR "/tests/fixtures/tokenizer/"

static an_tokenizer *load_fixture(an_ctx *ctx, const char *name) {
    an_tokenizer *tok = NULL;
    char dir[512];
    snprintf(dir, sizeof dir, FIXTURES "%s", name);
    an_status st = an_tokenizer_load(ctx, dir, &tok);
    ck_assert_msg(st == AN_OK, "loading %s: %s", name, an_error_message(ctx));
    return tok;
}

static json_t *load_expected(const char *name) {
    char path[512];
    snprintf(path, sizeof path, FIXTURES "%s/expected.json", name);
    json_error_t err;
    json_t *j = json_load_file(path, JSON_ALLOW_NUL, &err);
    ck_assert_msg(j != NULL, "%s: %s", path, err.text);
    return j;
}

static char *read_text(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *data = malloc((size_t)n + 1);
    ck_assert_uint_eq(fread(data, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    data[n] = '\0';
    *len = (size_t)n;
    return data;
}

/* Fails with the first differing position when ids differ from the JSON list want. */
static void assert_ids(const int32_t *ids, size_t n, const json_t *want, const char *what, size_t line) {
    size_t nw = json_array_size(want), i = 0;
    while (i < n && i < nw && ids[i] == json_integer_value(json_array_get(want, i))) i++;
    ck_assert_msg(i == n && i == nw, "%s, corpus line %zu: %zu ids, expected %zu; first difference at %zu (got %d, want %d)",
                  what, line, n, nw, i, i < n ? ids[i] : -1, i < nw ? (int)json_integer_value(json_array_get(want, i)) : -1);
}

static void assert_text(const char *got, size_t n, const json_t *want, const char *what, size_t line) {
    size_t nw = json_string_length(want);
    ck_assert_msg(n == nw && memcmp(got, json_string_value(want), n) == 0, "%s, line %zu: decoded \"%.*s\" (%zu bytes), expected \"%s\" (%zu bytes)",
                  what, line, (int)(n > 200 ? 200 : n), got, n, json_string_value(want), nw);
}

static void check_against_library(const char *name) {
    an_ctx *ctx = test_ctx(1);
    an_tokenizer *tok = load_fixture(ctx, name);
    json_t *expected = load_expected(name), *cases = json_object_get(expected, "cases");
    ck_assert_int_gt((int)json_array_size(cases), 30);
    for (int pass = 0; pass < 2; pass++) { /* the second pass is served from the piece cache */
        for (size_t i = 0; i < json_array_size(cases); i++) {
            json_t *c = json_array_get(cases, i), *text = json_object_get(c, "text");
            int32_t *ids;
            size_t n;
            ck_assert_msg(an_tokenizer_encode(ctx, tok, json_string_value(text), json_string_length(text), false, &ids, &n) == AN_OK,
                          "%s line %zu: %s", name, i, an_error_message(ctx));
            assert_ids(ids, n, json_object_get(c, "ids"), name, i);
            char *out;
            size_t len;
            ck_assert_int_eq(an_tokenizer_decode(ctx, tok, ids, n, false, &out, &len), AN_OK);
            assert_text(out, len, json_object_get(c, "decoded"), name, i);
            ck_assert_uint_eq(strlen(out), len == strlen(out) ? len : strlen(out)); /* NUL-terminated */
            free(out);
            ck_assert_int_eq(an_tokenizer_decode(ctx, tok, ids, n, true, &out, &len), AN_OK);
            assert_text(out, len, json_object_get(c, "decoded_skip"), "skip_special", i);
            free(out);
            free(ids);
            ck_assert_int_eq(an_tokenizer_encode(ctx, tok, json_string_value(text), json_string_length(text), true, &ids, &n),
                             AN_OK);
            assert_ids(ids, n, json_object_get(c, "ids_special"), "add_special", i);
            free(ids);
        }
    }
    json_t *decodes = json_object_get(expected, "decode_cases");
    ck_assert_int_gt((int)json_array_size(decodes), 10);
    for (size_t i = 0; i < json_array_size(decodes); i++) {
        json_t *c = json_array_get(decodes, i), *list = json_object_get(c, "ids");
        size_t n = json_array_size(list);
        int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
        for (size_t k = 0; k < n; k++) ids[k] = (int32_t)json_integer_value(json_array_get(list, k));
        char *out;
        size_t len;
        ck_assert_int_eq(an_tokenizer_decode(ctx, tok, ids, n, false, &out, &len), AN_OK);
        assert_text(out, len, json_object_get(c, "text"), "decode of an id slice", i);
        free(out);
        free(ids);
    }
    ck_assert_int_eq(an_tokenizer_vocab_size(tok), (int)json_integer_value(json_object_get(expected, "vocab_size")));
    json_t *bos = json_object_get(expected, "bos_id"), *eos = json_object_get(expected, "eos_id");
    ck_assert_int_eq(an_tokenizer_bos_id(tok), json_is_null(bos) ? -1 : (int)json_integer_value(bos));
    ck_assert_int_eq(an_tokenizer_eos_id(tok), json_is_null(eos) ? -1 : (int)json_integer_value(eos));
    json_decref(expected);
    an_tokenizer_free(tok);
    test_ctx_free(ctx);
}

START_TEST(test_qwen2_style_matches_the_library_line_by_line) { check_against_library("qwen2"); }
END_TEST

START_TEST(test_llama3_style_matches_the_library_line_by_line) { check_against_library("llama3"); }
END_TEST

START_TEST(test_bare_byte_level_matches_the_library_line_by_line) { check_against_library("gpt2"); }
END_TEST

START_TEST(test_special_tokens_and_bos_come_from_tokenizer_config) {
    an_ctx *ctx = test_ctx(2);
    const char *names[2] = {"qwen2", "llama3"};
    for (int k = 0; k < 2; k++) {
        an_tokenizer *tok = load_fixture(ctx, names[k]);
        int32_t bos = an_tokenizer_token_id(tok, "<｜begin▁of▁sentence｜>"),
                eos = an_tokenizer_token_id(tok, "<｜end▁of▁sentence｜>"), think = an_tokenizer_token_id(tok, "<think>");
        ck_assert_int_ge(bos, 0);
        ck_assert_int_eq(an_tokenizer_bos_id(tok), bos);
        ck_assert_int_eq(an_tokenizer_eos_id(tok), eos);
        ck_assert_int_eq(an_tokenizer_pad_id(tok), eos); /* DeepSeek pads with the eos */
        ck_assert(an_tokenizer_adds_bos(tok));
        ck_assert(an_tokenizer_is_special(tok, eos) && !an_tokenizer_is_special(tok, think));
        ck_assert_int_eq(an_tokenizer_token_id(tok, "no such token"), -1);
        size_t len;
        const char *text = an_tokenizer_token_text(tok, think, &len);
        ck_assert(text && len == 7 && memcmp(text, "<think>", 7) == 0);
        int32_t *ids;
        size_t n;
        ck_assert_int_eq(an_tokenizer_encode(ctx, tok, "", 0, true, &ids, &n), AN_OK);
        ck_assert(n == 1 && ids[0] == bos);
        free(ids);
        /* skip_special drops bos/eos but keeps <think> (special=false in DeepSeek's files) */
        int32_t seq[4] = {bos, think, an_tokenizer_token_id(tok, "a"), eos};
        char *out;
        ck_assert_int_eq(an_tokenizer_decode(ctx, tok, seq, 4, true, &out, &len), AN_OK);
        ck_assert_str_eq(out, "<think>a");
        free(out);
        an_tokenizer_free(tok);
    }
    /* the bare ByteLevel fixture has no tokenizer_config.json and no post-processor */
    an_tokenizer *tok = load_fixture(ctx, "gpt2");
    ck_assert_int_eq(an_tokenizer_bos_id(tok), -1);
    ck_assert_int_eq(an_tokenizer_eos_id(tok), -1);
    ck_assert(!an_tokenizer_adds_bos(tok));
    an_tokenizer_free(tok);
    test_ctx_free(ctx);
}
END_TEST

/* Loads the qwen2 fixture's tokenizer.json with the given tokenizer_config.json text. */
static an_status load_with_config(an_ctx *ctx, const char *config, an_tokenizer **tok) {
    size_t len;
    char *json = read_text(FIXTURES "qwen2/tokenizer.json", &len);
    an_status st = an_tokenizer_load_json(ctx, "tokenizer.json", json, len, "tokenizer_config.json", config,
                                          strlen(config), tok);
    free(json);
    return st;
}

START_TEST(test_add_bos_token_in_config_overrides_the_template) {
    an_ctx *ctx = test_ctx(3);
    an_tokenizer *tok;
    const char *cfg = "{\"add_bos_token\": false, \"add_eos_token\": true, \"bos_token\": {\"content\": "
                      "\"<｜begin▁of▁sentence｜>\"}, \"eos_token\": \"<｜end▁of▁sentence｜>\", \"pad_token\": null}";
    ck_assert_msg(load_with_config(ctx, cfg, &tok) == AN_OK, "%s", an_error_message(ctx));
    int32_t *ids, *plain;
    size_t n, n_plain;
    ck_assert_int_eq(an_tokenizer_encode(ctx, tok, "hello", 5, true, &ids, &n), AN_OK);
    ck_assert_int_eq(an_tokenizer_encode(ctx, tok, "hello", 5, false, &plain, &n_plain), AN_OK);
    ck_assert_uint_eq(n, n_plain + 1);
    ck_assert(memcmp(ids, plain, n_plain * sizeof *ids) == 0);
    ck_assert_int_eq(ids[n - 1], an_tokenizer_eos_id(tok));
    ck_assert(!an_tokenizer_adds_bos(tok));
    ck_assert_int_eq(an_tokenizer_pad_id(tok), -1);
    free(ids);
    free(plain);
    an_tokenizer_free(tok);

    /* without the flags the template (bos + A) decides */
    ck_assert_int_eq(load_with_config(ctx, "{\"eos_token\": \"<｜end▁of▁sentence｜>\"}", &tok), AN_OK);
    ck_assert(an_tokenizer_adds_bos(tok));
    an_tokenizer_free(tok);

    const char *bad[][2] = {
        {"{\"bos_token\": \"<nope>\"}", "bos_token = \"<nope>\" is not a token"},
        {"{\"eos_token\": 5}", "eos_token = 5 is not a string"},
        {"{\"add_eos_token\": true}", "add_eos_token = true but eos_token is not set"},
        {"{\"add_bos_token\": \"yes\"}", "add_bos_token = \"yes\" is not true or false"},
        {"[1, 2", "not valid JSON"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        tok = NULL;
        ck_assert_int_eq(load_with_config(ctx, bad[i][0], &tok), AN_ERR_INPUT);
        ck_assert_ptr_null(tok);
        ck_assert_msg(strstr(an_error_message(ctx), "tokenizer_config.json: ") && strstr(an_error_message(ctx), bad[i][1]),
                      "config %zu: message \"%s\" lacks \"%s\"", i, an_error_message(ctx), bad[i][1]);
        an_error_clear(ctx);
    }
    test_ctx_free(ctx);
}
END_TEST

/* Loads the llama3 fixture's tokenizer.json after `edit` changed it; returns the status. */
static an_status load_edited(an_ctx *ctx, void (*edit)(json_t *root)) {
    json_error_t err;
    json_t *root = json_load_file(FIXTURES "llama3/tokenizer.json", 0, &err);
    ck_assert_ptr_nonnull(root);
    edit(root);
    char *text = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    an_tokenizer *tok = NULL;
    an_status st = an_tokenizer_load_json(ctx, "tokenizer.json", text, strlen(text), NULL, NULL, 0, &tok);
    free(text);
    an_tokenizer_free(tok);
    return st;
}

static json_t *at(json_t *root, const char *a, const char *b) { return json_object_get(json_object_get(root, a), b); }
static void no_vocab(json_t *r) { json_object_del(json_object_get(r, "model"), "vocab"); }
static void unknown_merge(json_t *r) {
    json_array_set_new(at(r, "model", "merges"), 0, json_pack("[ss]", "Ġthe", "zzz-not-a-token"));
}
static void metaspace(json_t *r) {
    json_array_set_new(at(r, "pre_tokenizer", "pretokenizers"), 1, json_pack("{ss}", "type", "Metaspace"));
}
static void wordpiece(json_t *r) { json_object_set_new(json_object_get(r, "model"), "type", json_string("WordPiece")); }
static void lowercase(json_t *r) { json_object_set_new(r, "normalizer", json_pack("{ss}", "type", "Lowercase")); }
static void removed(json_t *r) {
    json_object_set_new(json_array_get(at(r, "pre_tokenizer", "pretokenizers"), 0), "behavior", json_string("Removed"));
}
static void byte_fallback(json_t *r) { json_object_set_new(json_object_get(r, "model"), "byte_fallback", json_true()); }
static void moved_id(json_t *r) {
    json_object_set_new(json_array_get(json_object_get(r, "added_tokens"), 1), "id", json_integer(5000));
}
static void unknown_key(json_t *r) { json_object_set_new(r, "chat_template", json_string("x")); }
static void truncation(json_t *r) { json_object_set_new(r, "truncation", json_pack("{si}", "max_length", 8)); }
static void no_decoder(json_t *r) { json_object_set_new(r, "decoder", json_null()); }
static void bad_regex(json_t *r) {
    json_object_set_new(json_object_get(json_array_get(at(r, "pre_tokenizer", "pretokenizers"), 0), "pattern"), "Regex",
                        json_string("(unclosed"));
}
static void roberta(json_t *r) {
    json_array_set_new(at(r, "post_processor", "processors"), 0, json_pack("{ss}", "type", "RobertaProcessing"));
}
static void string_id(json_t *r) { json_object_set_new(at(r, "model", "vocab"), "!", json_string("0")); }
static void nested(json_t *r) {
    json_t *inner = json_incref(json_object_get(r, "pre_tokenizer"));
    for (int i = 0; i < 10; i++) inner = json_pack("{s:s, s:[o]}", "type", "Sequence", "pretokenizers", inner);
    json_object_set_new(r, "pre_tokenizer", inner);
}
static void version(json_t *r) { json_object_set_new(r, "version", json_string("2.0")); }
static void merge_triple(json_t *r) { json_array_set_new(at(r, "model", "merges"), 3, json_pack("[sss]", "a", "b", "c")); }

START_TEST(test_malformed_tokenizer_json_names_file_and_field) {
    an_ctx *ctx = test_ctx(4);
    an_tokenizer *tok = NULL;
    ck_assert_int_eq(an_tokenizer_load_json(ctx, "tokenizer.json", "{ not json", 10, NULL, NULL, 0, &tok), AN_ERR_INPUT);
    ck_assert_ptr_null(tok);
    ck_assert_ptr_nonnull(strstr(an_error_message(ctx), "tokenizer.json: not valid JSON"));
    an_error_clear(ctx);
    ck_assert_int_eq(an_tokenizer_load(ctx, FIXTURES "no-such-dir", &tok), AN_ERR_INPUT);
    ck_assert_ptr_nonnull(strstr(an_error_message(ctx), "no-such-dir/tokenizer.json: cannot open"));
    an_error_clear(ctx);

    struct {
        void (*edit)(json_t *);
        const char *message;
    } cases[] = {
        {no_vocab, "tokenizer.json: model.vocab is missing"},
        {unknown_merge, "tokenizer.json: model.merges[0] = [\"Ġthe\",\"zzz-not-a-token\"]: \"zzz-not-a-token\" is not in model.vocab"},
        {metaspace, "tokenizer.json: pre_tokenizer.pretokenizers[1].type = \"Metaspace\" is not supported"},
        {wordpiece, "tokenizer.json: model.type = \"WordPiece\" is not supported"},
        {lowercase, "tokenizer.json: normalizer.type = \"Lowercase\" is not supported"},
        {removed, "tokenizer.json: pre_tokenizer.pretokenizers[0].behavior = \"Removed\" is not supported"},
        {byte_fallback, "tokenizer.json: model.byte_fallback = true is not supported"},
        {moved_id, "tokenizer.json: added_tokens[1].id = 5000 but the tokenizers library gives"},
        {unknown_key, "tokenizer.json: chat_template is not supported"},
        {truncation, "tokenizer.json: truncation = {\"max_length\":8} is not supported"},
        {no_decoder, "tokenizer.json: decoder is null"},
        {bad_regex, "tokenizer.json: pre_tokenizer.pretokenizers[0].pattern.Regex = \"(unclosed\" does not compile"},
        {roberta, "tokenizer.json: post_processor.processors[0].type = \"RobertaProcessing\" is not supported"},
        {string_id, "tokenizer.json: model.vocab[\"!\"] = \"0\" is not an id"},
        {merge_triple, "tokenizer.json: model.merges[3] = [\"a\",\"b\",\"c\"] is neither"},
        {nested, "tokenizer.json: pre_tokenizer.pretokenizers[0].pretokenizers[0].pretokenizers[0].pretokenizers[0]."
                 "pretokenizers[0].pretokenizers[0].pretokenizers[0].pretokenizers[0]: Sequences nested more than 8"},
        {version, "tokenizer.json: version = \"2.0\" is not supported"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        ck_assert_int_eq(load_edited(ctx, cases[i].edit), AN_ERR_INPUT);
        ck_assert_msg(strstr(an_error_message(ctx), cases[i].message), "case %zu: message \"%s\" lacks \"%s\"", i,
                      an_error_message(ctx), cases[i].message);
        an_error_clear(ctx);
    }
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_bad_input_to_encode_and_decode_is_rejected) {
    an_ctx *ctx = test_ctx(5);
    an_tokenizer *tok = load_fixture(ctx, "qwen2");
    int32_t *ids = (int32_t *)&ctx; /* must stay untouched on failure */
    size_t n = 77;
    const char *bad[] = {"ab\xff", "\xc0\xaf", "\xed\xa0\x80", "abc\xe4\xb8", "\xf4\x90\x80\x80"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        ck_assert_int_eq(an_tokenizer_encode(ctx, tok, bad[i], strlen(bad[i]), false, &ids, &n), AN_ERR_INPUT);
        ck_assert_ptr_nonnull(strstr(an_error_message(ctx), "not valid UTF-8"));
        an_error_clear(ctx);
    }
    ck_assert(ids == (int32_t *)&ctx && n == 77);
    an_tokenizer_free(tok);

    /* a split pattern that backtracks catastrophically stops at PCRE2's match limit with an error */
    json_error_t err;
    json_t *root = json_load_file(FIXTURES "gpt2/tokenizer.json", 0, &err);
    json_object_set_new(root, "pre_tokenizer",
                        json_pack("{s:s, s:[{s:s, s:{s:s}, s:s, s:b}, {s:s, s:b, s:b}]}", "type", "Sequence",
                                  "pretokenizers", "type", "Split", "pattern", "Regex", "(a|aa)+$", "behavior",
                                  "Isolated", "invert", 0, "type", "ByteLevel", "add_prefix_space", 0, "use_regex", 0));
    char *json = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    ck_assert_int_eq(an_tokenizer_load_json(ctx, "tokenizer.json", json, strlen(json), NULL, NULL, 0, &tok), AN_OK);
    free(json);
    char slow[200];
    memset(slow, 'a', sizeof slow);
    slow[sizeof slow - 1] = 'b';
    ck_assert_int_eq(an_tokenizer_encode(ctx, tok, slow, sizeof slow, false, &ids, &n), AN_ERR_INPUT);
    ck_assert_ptr_nonnull(strstr(an_error_message(ctx), "tokenizer.json: splitting text failed"));
    an_error_clear(ctx);
    an_tokenizer_free(tok);
    tok = load_fixture(ctx, "qwen2");
    int32_t unknown[2] = {5, an_tokenizer_vocab_size(tok)};
    char *text = NULL;
    size_t len;
    ck_assert_int_eq(an_tokenizer_decode(ctx, tok, unknown, 2, false, &text, &len), AN_ERR_INPUT);
    ck_assert_ptr_null(text);
    ck_assert_ptr_nonnull(strstr(an_error_message(ctx), "is not a token of"));
    an_error_clear(ctx);
    an_tokenizer_free(tok);
    test_ctx_free(ctx);
}
END_TEST

/* ~1 MB of mixed text made from the corpus lines (the probe line, whose whitespace-stripping tokens
 * do not round-trip, left out). */
static char *mixed_text(const json_t *cases, size_t target, size_t *len) {
    size_t cap = target + 4096, n = 0, count = json_array_size(cases) - 1;
    char *s = malloc(cap);
    uint64_t state = 12345;
    while (n < target) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        json_t *text = json_object_get(json_array_get(cases, (size_t)(state >> 33) % count), "text");
        size_t k = json_string_length(text);
        if (n + k + 1 > cap) break;
        memcpy(s + n, json_string_value(text), k);
        n += k;
        s[n++] = (state >> 20) & 1 ? ' ' : '\n';
    }
    *len = n;
    return s;
}

START_TEST(test_throughput_and_round_trip_on_a_megabyte) {
    an_ctx *ctx = test_ctx(6);
    const char *names[2] = {"llama3", "qwen2"};
    for (int k = 0; k < 2; k++) {
        an_tokenizer *tok = load_fixture(ctx, names[k]);
        json_t *expected = load_expected(names[k]);
        size_t len;
        char *text = mixed_text(json_object_get(expected, "cases"), 1 << 20, &len);
        an_token_ids all = {0};
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        ck_assert_int_eq(an_tokenizer_encode_append(ctx, tok, text, len, false, &all), AN_OK);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double seconds = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
        printf("tokenizer %s: %.2f MB in %.3f s = %.1f MB/s, %zu tokens\n", names[k], len / 1e6, seconds,
               len / 1e6 / seconds, all.n);
        if (k == 0) { /* no normalizer: decoding gives the text back byte for byte */
            char *back;
            size_t back_len;
            ck_assert_int_eq(an_tokenizer_decode(ctx, tok, all.ids, all.n, false, &back, &back_len), AN_OK);
            ck_assert(back_len == len && memcmp(back, text, len) == 0);
            free(back);
        }
        /* appending keeps what is there: two documents give both id lists back to back */
        an_token_ids parts = {0};
        size_t cut = 4096;
        while ((text[cut] & 0xC0) == 0x80) cut--; /* a character boundary */
        int32_t *one;
        size_t n_one;
        ck_assert_int_eq(an_tokenizer_encode(ctx, tok, text, cut, true, &one, &n_one), AN_OK);
        ck_assert_int_eq(an_tokenizer_encode_append(ctx, tok, text, cut, true, &parts), AN_OK);
        ck_assert_int_eq(an_tokenizer_encode_append(ctx, tok, text, cut, true, &parts), AN_OK);
        ck_assert(parts.n == 2 * n_one && memcmp(parts.ids, one, n_one * 4) == 0 &&
                  memcmp(parts.ids + n_one, one, n_one * 4) == 0);
        free(one);
        free(parts.ids);
        free(all.ids);
        free(text);
        json_decref(expected);
        an_tokenizer_free(tok);
    }
    test_ctx_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("tokenizer");
    TCase *tc = tcase_create("tokenizer");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_qwen2_style_matches_the_library_line_by_line);
    tcase_add_test(tc, test_llama3_style_matches_the_library_line_by_line);
    tcase_add_test(tc, test_bare_byte_level_matches_the_library_line_by_line);
    tcase_add_test(tc, test_special_tokens_and_bos_come_from_tokenizer_config);
    tcase_add_test(tc, test_add_bos_token_in_config_overrides_the_template);
    tcase_add_test(tc, test_malformed_tokenizer_json_names_file_and_field);
    tcase_add_test(tc, test_bad_input_to_encode_and_decode_is_rejected);
    tcase_add_test(tc, test_throughput_and_round_trip_on_a_megabyte);
    suite_add_tcase(s, tc);
    return test_run(s);
}
