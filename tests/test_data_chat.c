/* test_data_chat.c — records into ids and loss masks against tests/fixtures/data/chat_expected.json
 * (made by make_chat_expected.py with the `tokenizers` library and the real DeepSeek-R1-Distill Jinja
 * template): chat through the DeepSeek template for the Qwen2 and Llama fixtures with each reasoning
 * mode (strip = apply_chat_template's ids exactly), the role-tag layout for a tokenizer without the
 * DeepSeek tokens, text and prompt_completion layouts, and generation prompts. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "data/chat.h"
#include "support/data_util.h"
#include "support/files.h"
#include "support/test_util.h"

#define FIXTURES ANNEAL_SOURCE_DIR "/tests/fixtures"

typedef struct {
    char dir[256];
    an_tokenizer *qwen2, *llama3, *gpt2_eos;
} tokenizers;

static an_tokenizer *load_tokenizer(an_ctx *ctx, const char *dir) {
    an_tokenizer *tok = NULL;
    ck_assert_msg(an_tokenizer_load(ctx, dir, &tok) == AN_OK, "%s", an_error_message(ctx));
    return tok;
}

/* gpt2_eos: GPT-2's tokenizer.json with eos_token <|endoftext|> (no DeepSeek tokens, no bos). */
static void load_all(an_ctx *ctx, tokenizers *t) {
    t->qwen2 = load_tokenizer(ctx, FIXTURES "/tokenizer/qwen2");
    t->llama3 = load_tokenizer(ctx, FIXTURES "/tokenizer/llama3");
    make_tmpdir(t->dir, sizeof t->dir);
    char path[512];
    copy_file(FIXTURES "/tokenizer/gpt2/tokenizer.json", join(path, sizeof path, t->dir, "tokenizer.json"));
    write_text(join(path, sizeof path, t->dir, "tokenizer_config.json"), "{\"eos_token\": \"<|endoftext|>\"}");
    t->gpt2_eos = load_tokenizer(ctx, t->dir);
}

static void free_all(tokenizers *t) {
    an_tokenizer_free(t->qwen2), an_tokenizer_free(t->llama3), an_tokenizer_free(t->gpt2_eos);
    remove_tree(t->dir);
}

static an_tokenizer *pick(tokenizers *t, const char *name) {
    if (!strcmp(name, "qwen2")) return t->qwen2;
    if (!strcmp(name, "llama3")) return t->llama3;
    ck_assert_str_eq(name, "gpt2_eos");
    return t->gpt2_eos;
}

static json_t *expected(void) {
    json_error_t err;
    json_t *root = json_load_file(FIXTURES "/data/chat_expected.json", 0, &err);
    ck_assert_msg(root != NULL, "chat_expected.json: %s (line %d)", err.text, err.line);
    return root;
}

typedef struct {
    const an_data_encoder *enc;
    an_data_tokens out;
    int records;
} encode_ctx;

static an_status encode_record(an_ctx *ctx, void *user, const an_data_record *rec, char *bad, size_t n) {
    encode_ctx *e = user;
    e->records++;
    return an_data_encode(ctx, e->enc, rec, &e->out);
}

static void assert_ids(const char *name, const int32_t *ids, size_t n, const uint8_t *mask, json_t *want_ids,
                       json_t *want_mask) {
    ck_assert_msg(n == json_array_size(want_ids), "%s: %zu ids, expected %zu", name, n, json_array_size(want_ids));
    for (size_t i = 0; i < n; i++) {
        ck_assert_msg(ids[i] == json_integer_value(json_array_get(want_ids, i)), "%s: id %zu is %d, expected %lld",
                      name, i, ids[i], json_integer_value(json_array_get(want_ids, i)));
        if (mask)
            ck_assert_msg(mask[i] == json_integer_value(json_array_get(want_mask, i)),
                          "%s: mask %zu (id %d) is %d, expected %lld", name, i, ids[i], mask[i],
                          json_integer_value(json_array_get(want_mask, i)));
    }
}

START_TEST(test_records_give_the_ids_and_masks_of_the_reference) {
    an_ctx *ctx = test_ctx(1);
    tokenizers t;
    load_all(ctx, &t);
    json_t *root = expected(), *cases = json_object_get(root, "cases");
    ck_assert_int_ge((int)json_array_size(cases), 20);
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        const char *name = json_string_value(json_object_get(c, "name"));
        an_chat_reasoning reasoning;
        ck_assert_int_eq(an_chat_reasoning_parse(ctx, json_string_value(json_object_get(c, "reasoning")), &reasoning),
                         AN_OK);
        an_data_encoder enc;
        ck_assert_int_eq(an_data_encoder_init(ctx, pick(&t, json_string_value(json_object_get(c, "tokenizer"))),
                                              reasoning, &enc),
                         AN_OK);
        /* The record goes through the JSONL reader, as in a real run. */
        char path[512];
        join(path, sizeof path, t.dir, "case.jsonl");
        char *line = json_dumps(json_object_get(c, "record"), JSON_COMPACT);
        write_text(path, line);
        free(line);
        encode_ctx e = {.enc = &enc};
        an_data_read_stats stats = {0};
        ck_assert_msg(an_data_read(ctx, path, AN_RECIPE_FORMAT_AUTO, &stats, encode_record, &e) == AN_OK, "%s: %s",
                      name, an_error_message(ctx));
        ck_assert_int_eq(e.records, 1);
        assert_ids(name, e.out.ids.ids, e.out.ids.n, e.out.mask, json_object_get(c, "ids"), json_object_get(c, "mask"));
        an_data_tokens_free(&e.out);
    }
    json_decref(root);
    free_all(&t);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_template_follows_the_tokenizer) {
    an_ctx *ctx = test_ctx(1);
    tokenizers t;
    load_all(ctx, &t);
    an_data_encoder enc;
    ck_assert_int_eq(an_data_encoder_init(ctx, t.qwen2, AN_CHAT_REASONING_KEEP_LAST, &enc), AN_OK);
    ck_assert_int_eq(enc.chat_template, AN_CHAT_TEMPLATE_DEEPSEEK);
    ck_assert_int_eq(enc.end, an_tokenizer_eos_id(t.qwen2));
    ck_assert_int_eq(an_data_encoder_init(ctx, t.llama3, AN_CHAT_REASONING_KEEP_LAST, &enc), AN_OK);
    ck_assert_int_eq(enc.chat_template, AN_CHAT_TEMPLATE_DEEPSEEK);
    ck_assert_int_eq(an_data_encoder_init(ctx, t.gpt2_eos, AN_CHAT_REASONING_KEEP_LAST, &enc), AN_OK);
    ck_assert_int_eq(enc.chat_template, AN_CHAT_TEMPLATE_ROLE_TAGS);
    ck_assert(!enc.adds_bos);
    ck_assert_str_eq(an_chat_template_name(AN_CHAT_TEMPLATE_ROLE_TAGS), "role_tags");
    an_chat_reasoning r;
    an_status st = an_chat_reasoning_parse(ctx, "hide", &r);
    EXPECT_INPUT_ERROR(ctx, st, "reasoning name", "'hide'", "keep_last, strip, keep_all");
    free_all(&t);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_generation_prompts_match_the_template) {
    an_ctx *ctx = test_ctx(1);
    tokenizers t;
    load_all(ctx, &t);
    json_t *root = expected(), *prompts = json_object_get(root, "prompts");
    ck_assert_int_ge((int)json_array_size(prompts), 4);
    size_t i;
    json_t *p;
    json_array_foreach(prompts, i, p) {
        an_data_encoder enc;
        ck_assert_int_eq(an_data_encoder_init(ctx, pick(&t, json_string_value(json_object_get(p, "tokenizer"))),
                                              AN_CHAT_REASONING_KEEP_LAST, &enc),
                         AN_OK);
        json_t *list = json_object_get(p, "messages");
        int n = (int)json_array_size(list);
        an_chat_message msgs[16];
        ck_assert_int_le(n, 16);
        for (int k = 0; k < n; k++) {
            json_t *m = json_array_get(list, (size_t)k);
            const char *role = json_string_value(json_object_get(m, "role"));
            json_t *content = json_object_get(m, "content");
            msgs[k] = (an_chat_message){!strcmp(role, "system") ? AN_CHAT_SYSTEM
                                        : !strcmp(role, "user") ? AN_CHAT_USER
                                                                : AN_CHAT_ASSISTANT,
                                        json_string_value(content), json_string_length(content)};
        }
        int32_t *ids = NULL;
        size_t n_ids = 0;
        ck_assert_int_eq(an_chat_encode_prompt(ctx, &enc, msgs, n, &ids, &n_ids), AN_OK);
        assert_ids(json_string_value(json_object_get(p, "name")), ids, n_ids, NULL, json_object_get(p, "ids"), NULL);
        free(ids);
    }
    json_decref(root);
    free_all(&t);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_records_that_need_an_eos_fail_without_one) {
    an_ctx *ctx = test_ctx(1);
    char dir[256], path[512];
    make_tmpdir(dir, sizeof dir);
    copy_file(FIXTURES "/tokenizer/gpt2/tokenizer.json", join(path, sizeof path, dir, "tokenizer.json"));
    an_tokenizer *tok = load_tokenizer(ctx, dir);  /* no tokenizer_config.json: no eos */
    an_data_encoder enc;
    ck_assert_int_eq(an_data_encoder_init(ctx, tok, AN_CHAT_REASONING_KEEP_LAST, &enc), AN_OK);
    an_chat_message msgs[2] = {{AN_CHAT_USER, "q", 1}, {AN_CHAT_ASSISTANT, "a", 1}};
    an_data_record chat = {.format = AN_RECIPE_FORMAT_CHAT, .messages = msgs, .n_messages = 2, .where = "f.jsonl:3"};
    an_data_record pc = {.format = AN_RECIPE_FORMAT_PROMPT_COMPLETION, .prompt = "p", .prompt_len = 1,
                         .completion = "c", .completion_len = 1, .where = "f.jsonl:4"};
    an_data_record text = {.format = AN_RECIPE_FORMAT_TEXT, .text = "hello", .text_len = 5, .where = "f.jsonl:5"};
    an_data_tokens out = {0};
    an_status st = an_data_encode(ctx, &enc, &chat, &out);
    EXPECT_INPUT_ERROR(ctx, st, "chat", "f.jsonl:3", "eos");
    st = an_data_encode(ctx, &enc, &pc, &out);
    EXPECT_INPUT_ERROR(ctx, st, "pc", "f.jsonl:4", "eos");
    ck_assert_uint_eq(out.ids.n, 0);
    ck_assert_int_eq(an_data_encode(ctx, &enc, &text, &out), AN_OK);  /* text just has no eos */
    int32_t *ids;
    size_t n;
    ck_assert_int_eq(an_tokenizer_encode(ctx, tok, "hello", 5, false, &ids, &n), AN_OK);
    ck_assert_uint_eq(out.ids.n, n);
    ck_assert(memcmp(out.ids.ids, ids, n * sizeof *ids) == 0);
    free(ids);
    an_data_tokens_free(&out);
    an_tokenizer_free(tok);
    remove_tree(dir);
    test_ctx_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("data_chat");
    TCase *tc = tcase_create("chat");
    tcase_add_test(tc, test_records_give_the_ids_and_masks_of_the_reference);
    tcase_add_test(tc, test_template_follows_the_tokenizer);
    tcase_add_test(tc, test_generation_prompts_match_the_template);
    tcase_add_test(tc, test_records_that_need_an_eos_fail_without_one);
    suite_add_tcase(s, tc);
    return test_run(s);
}
