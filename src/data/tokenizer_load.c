/* tokenizer_load.c — tokenizer.json (+ tokenizer_config.json) -> an_tokenizer.
 *
 * Rules: every object we read is checked key by key; a key, type or value we do not implement is an
 * AN_ERR_INPUT error "<file>: <json path> ... is not supported" — nothing is silently ignored except
 * fields that only affect offsets (trim_offsets) or pairs of sequences (TemplateProcessing.pair).
 * Added-token ids are checked against the ids the `tokenizers` library itself would assign (it
 * ignores the ids in the file), so a file we accept encodes the same in both. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/tokenizer_internal.h"

enum {
    MAX_ID = 1 << 24, /* refuse ids that would make the id tables absurdly large */
    MAX_NESTING = 8,  /* Sequences inside Sequences (recursion depth) */
};

/* GPT-2's split, which ByteLevel applies itself when use_regex is true. */
static const char gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

typedef struct {
    an_ctx *ctx;
    const char *file;
    an_tokenizer *tok;
    bool byte_level_seen;
    int depth; /* Sequences we are inside */
} loader;

#define FAIL(L, ...) an_error_set((L)->ctx, AN_ERR_INPUT, __FILE__, __LINE__, __VA_ARGS__)
#define OOM(L) an_error_set((L)->ctx, AN_ERR_INTERNAL, __FILE__, __LINE__, "out of memory loading %s", (L)->file)

/* A short rendering of a JSON value for messages: "text" for strings, the JSON for the rest. */
static const char *show(const json_t *v, char *buf, size_t n) {
    if (!v) return "(missing)";
    if (json_is_string(v)) {
        snprintf(buf, n, "\"%.60s\"", json_string_value(v));
        return buf;
    }
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    snprintf(buf, n, "%.60s", s ? s : "?");
    free(s);
    return buf;
}

static const char *join(char *buf, size_t n, const char *path, const char *key) {
    snprintf(buf, n, "%s%s%s", path, path[0] ? "." : "", key);
    return buf;
}

/* Fails on keys not in allowed (a NULL-terminated list). */
static an_status check_keys(loader *L, const json_t *obj, const char *path, const char *const *allowed) {
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)obj, key, value) {
        bool ok = false;
        for (const char *const *a = allowed; *a && !ok; a++) ok = strcmp(*a, key) == 0;
        char p[256];
        if (!ok) return FAIL(L, "%s: %s is not supported", L->file, join(p, sizeof p, path, key));
    }
    return AN_OK;
}

static an_status get_object(loader *L, const json_t *parent, const char *path, const char *key, json_t **out) {
    json_t *v = json_object_get(parent, key);
    char p[256], b[80];
    if (!v) return FAIL(L, "%s: %s is missing", L->file, join(p, sizeof p, path, key));
    if (!json_is_object(v))
        return FAIL(L, "%s: %s = %s is not an object", L->file, join(p, sizeof p, path, key), show(v, b, sizeof b));
    *out = v;
    return AN_OK;
}

/* A boolean field; absent or null gives fallback. */
static an_status get_bool(loader *L, const json_t *obj, const char *path, const char *key, bool fallback, bool *out) {
    json_t *v = json_object_get(obj, key);
    char p[256], b[80];
    if (!v || json_is_null(v)) {
        *out = fallback;
        return AN_OK;
    }
    AN_CHECK(L->ctx, json_is_boolean(v), AN_ERR_INPUT, "%s: %s = %s is not true or false", L->file,
             join(p, sizeof p, path, key), show(v, b, sizeof b));
    *out = json_is_true(v);
    return AN_OK;
}

/* The "type" of a component, or an error naming path.type. */
static an_status get_type(loader *L, const json_t *obj, const char *path, const char **out) {
    json_t *v = json_object_get(obj, "type");
    char p[256], b[80];
    if (!v) return FAIL(L, "%s: %s is missing", L->file, join(p, sizeof p, path, "type"));
    if (!json_is_string(v))
        return FAIL(L, "%s: %s = %s is not a string", L->file, join(p, sizeof p, path, "type"), show(v, b, sizeof b));
    *out = json_string_value(v);
    return AN_OK;
}

static an_status unsupported_type(loader *L, const char *path, const char *type) {
    char p[256];
    return FAIL(L, "%s: %s = \"%s\" is not supported", L->file, join(p, sizeof p, path, "type"), type);
}

static an_status pool_add(loader *L, const char *s, size_t n, an_span *out) {
    an_text *pool = &L->tok->pool;
    if (pool->len + n >= UINT32_MAX) return FAIL(L, "%s: more than 4 GiB of token text", L->file);
    out->off = (uint32_t)pool->len;
    out->len = (uint32_t)n;
    return an_text_append(pool, s, n) ? AN_OK : OOM(L);
}

static an_status get_id(loader *L, const json_t *v, const char *path, int32_t *out) {
    char b[80];
    AN_CHECK(L->ctx, json_is_integer(v) && json_integer_value(v) >= 0 && json_integer_value(v) < MAX_ID,
             AN_ERR_INPUT, "%s: %s = %s is not an id (an integer in [0, %d))", L->file, path, show(v, b, sizeof b),
             MAX_ID);
    *out = (int32_t)json_integer_value(v);
    return AN_OK;
}

/* ---- model ---------------------------------------------------------------------------------- */

static an_status load_vocab(loader *L, const json_t *vocab) {
    an_tokenizer *tok = L->tok;
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)vocab, key, value) {
        char p[300];
        snprintf(p, sizeof p, "model.vocab[\"%.200s\"]", key);
        int32_t id = 0, existing;
        an_span s = {0, 0};
        AN_TRY(get_id(L, value, p, &id));
        AN_TRY(pool_add(L, key, strlen(key), &s));
        if (!an_strmap_put(&tok->vocab, &tok->pool, s, id, &existing)) return OOM(L);
        if (id >= tok->n_ids) tok->n_ids = id + 1;
    }
    return AN_OK;
}

static an_status load_merges(loader *L, const json_t *merges) {
    an_tokenizer *tok = L->tok;
    an_text joined = {0};
    an_status st = AN_OK;
    for (size_t i = 0; i < json_array_size(merges) && st == AN_OK; i++) {
        json_t *m = json_array_get(merges, i);
        const char *a, *b;
        size_t na, nb;
        char shown[80];
        if (json_is_string(m)) { /* "a b": exactly one space */
            a = json_string_value(m);
            const char *space = strchr(a, ' ');
            if (!space || strchr(space + 1, ' ')) {
                st = FAIL(L, "%s: model.merges[%zu] = %s is not two tokens separated by one space", L->file, i,
                          show(m, shown, sizeof shown));
                break;
            }
            na = (size_t)(space - a);
            b = space + 1;
            nb = strlen(b);
        } else if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
                   json_is_string(json_array_get(m, 1))) {
            a = json_string_value(json_array_get(m, 0));
            b = json_string_value(json_array_get(m, 1));
            na = strlen(a);
            nb = strlen(b);
        } else {
            st = FAIL(L, "%s: model.merges[%zu] = %s is neither \"a b\" nor [\"a\", \"b\"]", L->file, i,
                      show(m, shown, sizeof shown));
            break;
        }
        int32_t ia = an_strmap_get(&tok->vocab, &tok->pool, a, na), ib = an_strmap_get(&tok->vocab, &tok->pool, b, nb);
        joined.len = 0;
        if (!an_text_append(&joined, a, na) || !an_text_append(&joined, b, nb)) {
            st = OOM(L);
            break;
        }
        int32_t im = an_strmap_get(&tok->vocab, &tok->pool, joined.data, joined.len);
        if (ia < 0 || ib < 0 || im < 0) {
            const char *missing = ia < 0 ? a : ib < 0 ? b : joined.data;
            int nm = (int)(ia < 0 ? na : ib < 0 ? nb : joined.len);
            st = FAIL(L, "%s: model.merges[%zu] = %s: \"%.*s\" is not in model.vocab", L->file, i,
                      show(m, shown, sizeof shown), nm > 60 ? 60 : nm, missing);
            break;
        }
        if (!an_pairmap_put(&tok->merges, ia, ib, (uint32_t)i, im)) st = OOM(L);
    }
    free(joined.data);
    return st;
}

static an_status load_model(loader *L, const json_t *root) {
    static const char *const keys[] = {"type", "dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix",
                                       "fuse_unk", "byte_fallback", "ignore_merges", "vocab", "merges", NULL};
    json_t *model = NULL, *v;
    const char *type = NULL;
    char b[80];
    AN_TRY(get_object(L, root, "", "model", &model));
    AN_TRY(get_type(L, model, "model", &type));
    if (strcmp(type, "BPE") != 0) return unsupported_type(L, "model", type);
    AN_TRY(check_keys(L, model, "model", keys));
    v = json_object_get(model, "dropout");
    AN_CHECK(L->ctx, !v || json_is_null(v) || (json_is_number(v) && json_number_value(v) == 0), AN_ERR_INPUT,
             "%s: model.dropout = %s is not supported (only null or 0)", L->file, show(v, b, sizeof b));
    v = json_object_get(model, "unk_token");
    AN_CHECK(L->ctx, !v || json_is_null(v), AN_ERR_INPUT,
             "%s: model.unk_token = %s is not supported (byte-level BPE has no unknown token)", L->file,
             show(v, b, sizeof b));
    const char *affixes[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int k = 0; k < 2; k++) {
        v = json_object_get(model, affixes[k]);
        AN_CHECK(L->ctx, !v || json_is_null(v) || (json_is_string(v) && !json_string_length(v)), AN_ERR_INPUT,
                 "%s: model.%s = %s is not supported (only null or \"\")", L->file, affixes[k], show(v, b, sizeof b));
    }
    bool flag;
    AN_TRY(get_bool(L, model, "model", "fuse_unk", false, &flag)); /* no effect without an unk token */
    AN_TRY(get_bool(L, model, "model", "byte_fallback", false, &flag));
    AN_CHECK(L->ctx, !flag, AN_ERR_INPUT, "%s: model.byte_fallback = true is not supported", L->file);
    AN_TRY(get_bool(L, model, "model", "ignore_merges", false, &L->tok->ignore_merges));
    json_t *vocab = NULL;
    AN_TRY(get_object(L, model, "model", "vocab", &vocab));
    AN_TRY(load_vocab(L, vocab));
    v = json_object_get(model, "merges");
    AN_CHECK(L->ctx, json_is_array(v), AN_ERR_INPUT, "%s: model.merges %s", L->file,
             v ? "is not a list" : "is missing");
    return load_merges(L, v);
}

/* ---- added tokens --------------------------------------------------------------------------- */

static an_status load_added_tokens(loader *L, const json_t *root) {
    static const char *const keys[] = {"id", "content", "single_word", "lstrip", "rstrip", "normalized", "special", NULL};
    an_tokenizer *tok = L->tok;
    json_t *list = json_object_get(root, "added_tokens");
    if (!list || json_is_null(list)) return AN_OK;
    AN_CHECK(L->ctx, json_is_array(list), AN_ERR_INPUT, "%s: added_tokens is not a list", L->file);
    size_t n = json_array_size(list);
    tok->added = calloc(n ? n : 1, sizeof *tok->added);
    if (!tok->added) return OOM(L);
    int32_t model_size = (int32_t)tok->vocab.n, max_added = -1;
    for (size_t i = 0; i < n; i++) {
        json_t *t = json_array_get(list, i), *content;
        char path[64], p[96], b[80];
        snprintf(path, sizeof path, "added_tokens[%zu]", i);
        AN_CHECK(L->ctx, json_is_object(t), AN_ERR_INPUT, "%s: %s is not an object", L->file, path);
        AN_TRY(check_keys(L, t, path, keys));
        an_added_token *a = &tok->added[i];
        AN_TRY(get_id(L, json_object_get(t, "id"), join(p, sizeof p, path, "id"), &a->id));
        content = json_object_get(t, "content");
        AN_CHECK(L->ctx, json_is_string(content) && json_string_length(content) > 0, AN_ERR_INPUT,
                 "%s: %s.content = %s is not a non-empty string", L->file, path, show(content, b, sizeof b));
        const char *c = json_string_value(content);
        size_t len = strlen(c);
        AN_TRY(get_bool(L, t, path, "special", false, &a->special));
        AN_TRY(get_bool(L, t, path, "normalized", !a->special, &a->normalized));
        AN_TRY(get_bool(L, t, path, "single_word", false, &a->single_word));
        AN_TRY(get_bool(L, t, path, "lstrip", false, &a->lstrip));
        AN_TRY(get_bool(L, t, path, "rstrip", false, &a->rstrip));
        AN_CHECK(L->ctx, an_strmap_get(&tok->added_by_text, &tok->pool, c, len) < 0, AN_ERR_INPUT,
                 "%s: %s.content = %s appears twice in added_tokens", L->file, path, show(content, b, sizeof b));
        /* The id the library gives it: the vocabulary's, else the next after the vocabulary / added ones. */
        int32_t want = an_strmap_get(&tok->vocab, &tok->pool, c, len);
        if (want < 0) want = max_added < 0 ? model_size : (max_added >= model_size || !model_size) ? max_added + 1 : model_size;
        AN_CHECK(L->ctx, a->id == want, AN_ERR_INPUT,
                 "%s: %s.id = %d but the tokenizers library gives %s id %d (added tokens must follow the "
                 "vocabulary in order)", L->file, path, a->id, show(content, b, sizeof b), want);
        if (a->id > max_added) max_added = a->id;
        int32_t existing;
        AN_TRY(pool_add(L, c, len, &a->content));
        if (!an_strmap_put(&tok->added_by_text, &tok->pool, a->content, (int32_t)i, &existing)) return OOM(L);
        if (a->id >= tok->n_ids) tok->n_ids = a->id + 1;
        tok->n_added = (int32_t)i + 1;
    }
    return AN_OK;
}

/* ---- normalizer, pre-tokenizer, decoder, post-processor --------------------------------------- */

static an_status check_nesting(loader *L, const char *path) {
    AN_CHECK(L->ctx, L->depth < MAX_NESTING, AN_ERR_INPUT, "%s: %s: Sequences nested more than %d deep", L->file,
             path, MAX_NESTING);
    return AN_OK;
}

static an_status load_normalizer(loader *L, const json_t *n, const char *path) {
    const char *type = NULL;
    if (!n || json_is_null(n)) return AN_OK;
    AN_CHECK(L->ctx, json_is_object(n), AN_ERR_INPUT, "%s: %s is not an object", L->file, path);
    AN_TRY(get_type(L, n, path, &type));
    if (strcmp(type, "NFC") == 0) {
        static const char *const keys[] = {"type", NULL};
        AN_TRY(check_keys(L, n, path, keys));
        L->tok->nfc = true;
        return AN_OK;
    }
    if (strcmp(type, "Sequence") == 0) {
        static const char *const keys[] = {"type", "normalizers", NULL};
        AN_TRY(check_nesting(L, path));
        AN_TRY(check_keys(L, n, path, keys));
        json_t *list = json_object_get(n, "normalizers");
        AN_CHECK(L->ctx, json_is_array(list), AN_ERR_INPUT, "%s: %s.normalizers is not a list", L->file, path);
        for (size_t i = 0; i < json_array_size(list); i++) {
            char p[256];
            snprintf(p, sizeof p, "%s.normalizers[%zu]", path, i);
            L->depth++;
            AN_TRY(load_normalizer(L, json_array_get(list, i), p));
            L->depth--;
        }
        return AN_OK;
    }
    return unsupported_type(L, path, type);
}

static an_status add_split(loader *L, const char *path, const char *pattern, size_t len, bool literal) {
    an_tokenizer *tok = L->tok;
    AN_CHECK(L->ctx, tok->n_split < AN_TOK_MAX_SPLITS, AN_ERR_INPUT, "%s: %s: more than %d splitting steps", L->file,
             path, AN_TOK_MAX_SPLITS);
    char why[128];
    char *translated = literal ? NULL : an_unicode_translate_regex(pattern, len, why, sizeof why);
    AN_CHECK(L->ctx, literal || translated, AN_ERR_INPUT, "%s: %s: %s", L->file, path, why);
    int code;
    PCRE2_SIZE offset;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)(literal ? pattern : translated), literal ? len : PCRE2_ZERO_TERMINATED,
                                   PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK | (literal ? PCRE2_LITERAL : 0), &code,
                                   &offset, NULL);
    free(translated);
    if (!re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(code, msg, sizeof msg);
        return FAIL(L, "%s: %s = \"%.80s\" does not compile: %s", L->file, path, pattern, (const char *)msg);
    }
    int i = tok->n_split++;
    tok->split[i] = re;
    tok->split_jit[i] = pcre2_jit_compile(re, PCRE2_JIT_COMPLETE) == 0;
    if (!tok->match_ctx) {
        tok->match_ctx = pcre2_match_context_create(NULL);
        tok->jit_stack = pcre2_jit_stack_create(32 << 10, 1 << 20, NULL);
        if (!tok->match_ctx || !tok->jit_stack) return OOM(L);
        pcre2_jit_stack_assign(tok->match_ctx, NULL, tok->jit_stack);
    }
    tok->split_md[i] = pcre2_match_data_create_from_pattern(re, NULL);
    return tok->split_md[i] ? AN_OK : OOM(L);
}

static an_status load_pre_tokenizer(loader *L, const json_t *n, const char *path) {
    const char *type = NULL;
    char p[256], b[80];
    AN_CHECK(L->ctx, json_is_object(n), AN_ERR_INPUT, "%s: %s %s", L->file, path,
             n && !json_is_null(n) ? "is not an object" : "is null (byte-level BPE needs a ByteLevel pre-tokenizer)");
    AN_TRY(get_type(L, n, path, &type));
    AN_CHECK(L->ctx, !L->byte_level_seen, AN_ERR_INPUT,
             "%s: %s comes after ByteLevel (only splits before ByteLevel are supported)", L->file, path);
    if (strcmp(type, "Sequence") == 0) {
        static const char *const keys[] = {"type", "pretokenizers", NULL};
        AN_TRY(check_nesting(L, path));
        AN_TRY(check_keys(L, n, path, keys));
        json_t *list = json_object_get(n, "pretokenizers");
        AN_CHECK(L->ctx, json_is_array(list), AN_ERR_INPUT, "%s: %s.pretokenizers is not a list", L->file, path);
        for (size_t i = 0; i < json_array_size(list); i++) {
            snprintf(p, sizeof p, "%s.pretokenizers[%zu]", path, i);
            L->depth++;
            AN_TRY(load_pre_tokenizer(L, json_array_get(list, i), p));
            L->depth--;
        }
        return AN_OK;
    }
    if (strcmp(type, "Split") == 0) {
        static const char *const keys[] = {"type", "pattern", "behavior", "invert", NULL};
        AN_TRY(check_keys(L, n, path, keys));
        json_t *behavior = json_object_get(n, "behavior"), *pattern = json_object_get(n, "pattern");
        AN_CHECK(L->ctx, json_is_string(behavior) && strcmp(json_string_value(behavior), "Isolated") == 0, AN_ERR_INPUT,
                 "%s: %s.behavior = %s is not supported (only \"Isolated\")", L->file, path,
                 show(behavior, b, sizeof b));
        bool invert;
        AN_TRY(get_bool(L, n, path, "invert", false, &invert));
        AN_CHECK(L->ctx, !invert, AN_ERR_INPUT, "%s: %s.invert = true is not supported", L->file, path);
        json_t *regex = json_object_get(pattern, "Regex"), *string = json_object_get(pattern, "String");
        AN_CHECK(L->ctx, json_is_object(pattern) && json_object_size(pattern) == 1 &&
                             (json_is_string(regex) || json_is_string(string)),
                 AN_ERR_INPUT, "%s: %s.pattern = %s is not {\"Regex\": ...} or {\"String\": ...}", L->file, path,
                 show(pattern, b, sizeof b));
        json_t *s = regex ? regex : string;
        snprintf(p, sizeof p, "%s.pattern.%s", path, regex ? "Regex" : "String");
        return add_split(L, p, json_string_value(s), json_string_length(s), !regex);
    }
    if (strcmp(type, "ByteLevel") == 0) {
        static const char *const keys[] = {"type", "add_prefix_space", "trim_offsets", "use_regex", NULL};
        AN_TRY(check_keys(L, n, path, keys));
        bool prefix, regex, trim;
        AN_TRY(get_bool(L, n, path, "add_prefix_space", true, &prefix));
        AN_CHECK(L->ctx, !prefix, AN_ERR_INPUT, "%s: %s.add_prefix_space = true is not supported", L->file, path);
        AN_TRY(get_bool(L, n, path, "trim_offsets", true, &trim)); /* offsets only */
        AN_TRY(get_bool(L, n, path, "use_regex", true, &regex));
        if (regex) AN_TRY(add_split(L, join(p, sizeof p, path, "use_regex"), gpt2_pattern, strlen(gpt2_pattern), false));
        L->byte_level_seen = true;
        return AN_OK;
    }
    return unsupported_type(L, path, type);
}

static an_status load_decoder(loader *L, const json_t *root) {
    static const char *const keys[] = {"type", "add_prefix_space", "trim_offsets", "use_regex", NULL};
    json_t *d = json_object_get(root, "decoder");
    const char *type = NULL;
    AN_CHECK(L->ctx, json_is_object(d), AN_ERR_INPUT, "%s: decoder %s", L->file,
             d && !json_is_null(d) ? "is not an object" : "is null (byte-level BPE needs the ByteLevel decoder)");
    AN_TRY(get_type(L, d, "decoder", &type));
    if (strcmp(type, "ByteLevel") != 0) return unsupported_type(L, "decoder", type);
    return check_keys(L, d, "decoder", keys); /* the ByteLevel decoder ignores its options */
}

/* The ids TemplateProcessing's "single" puts before and after the sequence. */
static an_status load_template(loader *L, const json_t *n, const char *path) {
    static const char *const keys[] = {"type", "single", "pair", "special_tokens", NULL};
    an_tokenizer *tok = L->tok;
    AN_TRY(check_keys(L, n, path, keys));
    AN_CHECK(L->ctx, !tok->prefix && !tok->suffix && !tok->n_prefix, AN_ERR_INPUT,
             "%s: %s: a second TemplateProcessing is not supported", L->file, path);
    json_t *single = json_object_get(n, "single"), *specials = json_object_get(n, "special_tokens");
    AN_CHECK(L->ctx, json_is_array(single), AN_ERR_INPUT, "%s: %s.single is not a list", L->file, path);
    AN_CHECK(L->ctx, !specials || json_is_object(specials), AN_ERR_INPUT, "%s: %s.special_tokens is not an object",
             L->file, path);
    an_token_ids before = {0}, after = {0};
    bool seen_a = false;
    an_status st = AN_OK;
    for (size_t i = 0; i < json_array_size(single) && st == AN_OK; i++) {
        json_t *item = json_array_get(single, i), *special = json_object_get(item, "SpecialToken"),
               *sequence = json_object_get(item, "Sequence");
        char b[80];
        if (json_is_object(sequence) && json_object_size(item) == 1) {
            json_t *id = json_object_get(sequence, "id");
            if (seen_a || !json_is_string(id) || strcmp(json_string_value(id), "A") != 0)
                st = FAIL(L, "%s: %s.single[%zu] = %s is not supported (one Sequence \"A\" only)", L->file, path, i,
                          show(item, b, sizeof b));
            seen_a = true;
            continue;
        }
        json_t *name = json_object_get(special, "id");
        json_t *entry = json_is_string(name) ? json_object_get(specials, json_string_value(name)) : NULL;
        json_t *ids = json_object_get(entry, "ids");
        if (!json_is_object(special) || json_object_size(item) != 1 || !json_is_array(ids)) {
            st = FAIL(L, "%s: %s.single[%zu] = %s is not a Sequence or a SpecialToken listed in special_tokens",
                      L->file, path, i, show(item, b, sizeof b));
            break;
        }
        for (size_t k = 0; k < json_array_size(ids) && st == AN_OK; k++) {
            char p[300];
            int32_t id;
            snprintf(p, sizeof p, "%s.special_tokens[\"%.60s\"].ids[%zu]", path, json_string_value(name), k);
            st = get_id(L, json_array_get(ids, k), p, &id);
            if (st == AN_OK && (id >= tok->n_ids || tok->text[id].len == UINT32_MAX))
                st = FAIL(L, "%s: %s = %d is not a token id", L->file, p, id);
            if (st == AN_OK && !an_token_ids_push(seen_a ? &after : &before, &id, 1)) st = OOM(L);
        }
    }
    if (st == AN_OK && !seen_a) st = FAIL(L, "%s: %s.single has no Sequence \"A\"", L->file, path);
    tok->prefix = before.ids;
    tok->n_prefix = (int)before.n;
    tok->suffix = after.ids;
    tok->n_suffix = (int)after.n;
    return st;
}

static an_status load_post_processor(loader *L, const json_t *n, const char *path) {
    const char *type = NULL;
    if (!n || json_is_null(n)) return AN_OK;
    AN_CHECK(L->ctx, json_is_object(n), AN_ERR_INPUT, "%s: %s is not an object", L->file, path);
    AN_TRY(get_type(L, n, path, &type));
    if (strcmp(type, "ByteLevel") == 0) { /* only touches offsets */
        static const char *const keys[] = {"type", "add_prefix_space", "trim_offsets", "use_regex", NULL};
        return check_keys(L, n, path, keys);
    }
    if (strcmp(type, "TemplateProcessing") == 0) return load_template(L, n, path);
    if (strcmp(type, "Sequence") == 0) {
        static const char *const keys[] = {"type", "processors", NULL};
        AN_TRY(check_nesting(L, path));
        AN_TRY(check_keys(L, n, path, keys));
        json_t *list = json_object_get(n, "processors");
        AN_CHECK(L->ctx, json_is_array(list), AN_ERR_INPUT, "%s: %s.processors is not a list", L->file, path);
        for (size_t i = 0; i < json_array_size(list); i++) {
            char p[256];
            snprintf(p, sizeof p, "%s.processors[%zu]", path, i);
            L->depth++;
            AN_TRY(load_post_processor(L, json_array_get(list, i), p));
            L->depth--;
        }
        return AN_OK;
    }
    return unsupported_type(L, path, type);
}

/* ---- tokenizer_config.json ------------------------------------------------------------------ */

/* A token field: a string, {"content": string}, null or absent (*id stays -1). */
static an_status config_token(loader *L, const json_t *cfg, const char *key, int32_t *id) {
    json_t *v = json_object_get(cfg, key);
    char b[80];
    if (!v || json_is_null(v)) return AN_OK;
    json_t *s = json_is_object(v) ? json_object_get(v, "content") : v;
    AN_CHECK(L->ctx, json_is_string(s), AN_ERR_INPUT, "%s: %s = %s is not a string or {\"content\": string}", L->file,
             key, show(v, b, sizeof b));
    *id = an_tokenizer_token_id(L->tok, json_string_value(s));
    AN_CHECK(L->ctx, *id >= 0, AN_ERR_INPUT, "%s: %s = %s is not a token of %s", L->file, key, show(s, b, sizeof b),
             L->tok->name);
    return AN_OK;
}

static an_status load_config(loader *L, const char *json, size_t len) {
    json_error_t err;
    json_t *cfg = json_loadb(json, len, 0, &err);
    AN_CHECK(L->ctx, cfg, AN_ERR_INPUT, "%s: not valid JSON: %s (line %d, column %d)", L->file, err.text, err.line,
             err.column);
    an_tokenizer *tok = L->tok;
    an_status st = json_is_object(cfg) ? AN_OK : FAIL(L, "%s: is not a JSON object", L->file);
    int32_t bos = -1;
    if (st == AN_OK) st = config_token(L, cfg, "bos_token", &bos);
    if (st == AN_OK) st = config_token(L, cfg, "eos_token", &tok->eos_id);
    if (st == AN_OK) st = config_token(L, cfg, "pad_token", &tok->pad_id);
    if (bos >= 0) tok->bos_id = bos; /* else the template's first special token, if any */
    const char *flags[2] = {"add_bos_token", "add_eos_token"};
    for (int k = 0; k < 2 && st == AN_OK; k++) {
        json_t *v = json_object_get(cfg, flags[k]);
        if (!v || json_is_null(v)) continue;
        bool add;
        st = get_bool(L, cfg, "", flags[k], false, &add);
        int32_t id = k == 0 ? tok->bos_id : tok->eos_id;
        if (st == AN_OK && add && id < 0)
            st = FAIL(L, "%s: %s = true but %s is not set", L->file, flags[k], k == 0 ? "bos_token" : "eos_token");
        if (st != AN_OK) break;
        int32_t **ids = k == 0 ? &tok->prefix : &tok->suffix;
        int *n = k == 0 ? &tok->n_prefix : &tok->n_suffix;
        free(*ids);
        *ids = NULL;
        *n = 0;
        if (add) {
            *ids = malloc(sizeof **ids);
            if (!*ids) {
                st = OOM(L);
                break;
            }
            **ids = id;
            *n = 1;
        }
    }
    json_decref(cfg);
    return st;
}

/* ---- entry points --------------------------------------------------------------------------- */

static an_status load_tokenizer_json(loader *L, const char *json, size_t len) {
    static const char *const keys[] = {"version", "truncation", "padding", "added_tokens", "normalizer",
                                       "pre_tokenizer", "post_processor", "decoder", "model", NULL};
    json_error_t err;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &err);
    AN_CHECK(L->ctx, root, AN_ERR_INPUT, "%s: not valid JSON: %s (line %d, column %d)", L->file, err.text, err.line,
             err.column);
    an_status st = json_is_object(root) ? AN_OK : FAIL(L, "%s: is not a JSON object", L->file);
    if (st == AN_OK) st = check_keys(L, root, "", keys);
    json_t *version = json_object_get(root, "version");
    char shown[80];
    if (st == AN_OK && version && !(json_is_string(version) && strcmp(json_string_value(version), "1.0") == 0))
        st = FAIL(L, "%s: version = %s is not supported (only \"1.0\")", L->file, show(version, shown, sizeof shown));
    const char *nulls[2] = {"truncation", "padding"};
    for (int k = 0; k < 2 && st == AN_OK; k++) {
        json_t *v = json_object_get(root, nulls[k]);
        if (v && !json_is_null(v))
            st = FAIL(L, "%s: %s = %s is not supported (only null)", L->file, nulls[k], show(v, shown, sizeof shown));
    }
    if (st == AN_OK) st = load_model(L, root);
    if (st == AN_OK) st = load_added_tokens(L, root);
    if (st == AN_OK) st = load_normalizer(L, json_object_get(root, "normalizer"), "normalizer");
    if (st == AN_OK) st = an_tokenizer_build_tables(L->ctx, L->file, L->tok);
    if (st == AN_OK) st = load_pre_tokenizer(L, json_object_get(root, "pre_tokenizer"), "pre_tokenizer");
    if (st == AN_OK && !L->byte_level_seen)
        st = FAIL(L, "%s: pre_tokenizer has no ByteLevel step (byte-level BPE needs one)", L->file);
    if (st == AN_OK) st = load_decoder(L, root);
    if (st == AN_OK) st = load_post_processor(L, json_object_get(root, "post_processor"), "post_processor");
    if (st == AN_OK && L->tok->n_prefix) L->tok->bos_id = L->tok->prefix[0];
    json_decref(root);
    return st;
}

an_status an_tokenizer_load_json(an_ctx *ctx, const char *name, const char *json, size_t len, const char *config_name,
                                 const char *config, size_t config_len, an_tokenizer **out) {
    AN_CHECK(ctx, name && (json || !len) && out, AN_ERR_INPUT, "an_tokenizer_load_json: NULL argument");
    an_tokenizer *tok = calloc(1, sizeof *tok);
    AN_CHECK(ctx, tok, AN_ERR_INTERNAL, "out of memory loading %s", name);
    tok->bos_id = tok->eos_id = tok->pad_id = -1;
    tok->name = strdup(name);
    loader L = {.ctx = ctx, .file = name, .tok = tok};
    bool ok = tok->name && an_text_reserve(&tok->pool, 1 << 16); /* pool.data is never NULL */
    an_status st = ok ? load_tokenizer_json(&L, json ? json : "", len) : OOM(&L);
    if (st == AN_OK && config) {
        loader C = {.ctx = ctx, .file = config_name ? config_name : "tokenizer_config.json", .tok = tok};
        st = load_config(&C, config, config_len);
    }
    if (st != AN_OK) {
        an_tokenizer_free(tok);
        return st;
    }
    *out = tok;
    return AN_OK;
}

static an_status read_file(an_ctx *ctx, const char *path, bool optional, char **data, size_t *len) {
    *data = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f && optional && errno == ENOENT) return AN_OK;
    AN_CHECK(ctx, f, AN_ERR_INPUT, "%s: cannot open: %s", path, strerror(errno));
    an_text t = {0};
    char buf[1 << 16];
    size_t got;
    bool ok = true;
    while (ok && (got = fread(buf, 1, sizeof buf, f)) > 0) ok = an_text_append(&t, buf, got);
    bool read_error = ferror(f);
    fclose(f);
    if (!ok || read_error) {
        free(t.data);
        return ok ? an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s: read error", path)
                  : an_error_set(ctx, AN_ERR_INTERNAL, __FILE__, __LINE__, "out of memory reading %s", path);
    }
    *data = t.data;
    *len = t.len;
    if (!*data) *data = calloc(1, 1);
    AN_CHECK(ctx, *data, AN_ERR_INTERNAL, "out of memory reading %s", path);
    return AN_OK;
}

an_status an_tokenizer_load(an_ctx *ctx, const char *model_dir, an_tokenizer **out) {
    AN_CHECK(ctx, model_dir && out, AN_ERR_INPUT, "an_tokenizer_load: NULL argument");
    size_t n = strlen(model_dir) + 32;
    char *json_path = malloc(n), *config_path = malloc(n);
    char *json = NULL, *config = NULL;
    size_t json_len = 0, config_len = 0;
    an_status st = json_path && config_path ? AN_OK : an_error_set(ctx, AN_ERR_INTERNAL, __FILE__, __LINE__, "out of memory");
    if (st == AN_OK) {
        snprintf(json_path, n, "%s/tokenizer.json", model_dir);
        snprintf(config_path, n, "%s/tokenizer_config.json", model_dir);
        st = read_file(ctx, json_path, false, &json, &json_len);
    }
    if (st == AN_OK) st = read_file(ctx, config_path, true, &config, &config_len);
    if (st == AN_OK) st = an_tokenizer_load_json(ctx, json_path, json, json_len, config_path, config, config_len, out);
    free(json);
    free(config);
    free(json_path);
    free(config_path);
    return st;
}
