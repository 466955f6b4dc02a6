/* tokenizer.c — encode and decode, in the library's order:
 *   1. added tokens with normalized=false are cut out of the raw text (leftmost-longest);
 *   2. each remaining stretch is NFC-normalized (when the normalizer says so), then added tokens with
 *      normalized=true are cut out of it;
 *   3. each remaining stretch is split by each Split pattern in turn (then ByteLevel's own GPT-2
 *      pattern when use_regex), matches and the text between them both becoming pieces;
 *   4. each piece's bytes go through BPE (tokenizer_bpe.c); add_special wraps the result.
 * Decode concatenates each id's bytes (byte-level characters mapped back; added tokens with other
 * characters as their UTF-8) and repairs ill-formed UTF-8 with U+FFFD.
 *
 * The one place we differ from the library on purpose: after an rstrip token swallowed whitespace,
 * a later added token starting inside that whitespace is ignored, where the library would emit
 * overlapping pieces that repeat the text. */
#include <stdlib.h>
#include <string.h>

#include "data/tokenizer_internal.h"

typedef enum { STAGE_RAW, STAGE_NORMALIZED } stage;

static an_status oom(an_ctx *ctx) {
    return an_error_set(ctx, AN_ERR_INTERNAL, __FILE__, __LINE__, "out of memory encoding text");
}

/* ---- step 3: splits ------------------------------------------------------------------------- */

static an_status split_level(an_ctx *ctx, an_tokenizer *tok, int level, const uint8_t *s, size_t n, an_token_ids *out) {
    if (!n) return AN_OK;
    if (level == tok->n_split) return an_bpe_piece(ctx, tok, s, n, out);
    pcre2_code *re = tok->split[level];
    pcre2_match_data *md = tok->split_md[level];
    size_t last_end = 0, prev = 0, last_match_end = SIZE_MAX;
    /* Oniguruma's find_iter: an empty match right where the previous match ended is skipped by
     * moving one character on; every other match is taken and the search resumes at its end. */
    while (last_end <= n) {
        int rc = tok->split_jit[level] ? pcre2_jit_match(re, s, n, last_end, 0, md, tok->match_ctx)
                                       : pcre2_match(re, s, n, last_end, PCRE2_NO_UTF_CHECK, md, tok->match_ctx);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s: splitting text failed: %s", tok->name,
                                (const char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t start = ov[0], end = ov[1];
        if (start == end && end == last_match_end) {
            if (last_end >= n) break;
            size_t len;
            an_unicode_utf8_decode(s + last_end, &len);
            last_end += len;
            continue;
        }
        last_end = last_match_end = end;
        if (prev < start) AN_TRY(split_level(ctx, tok, level + 1, s + prev, start - prev, out));
        AN_TRY(split_level(ctx, tok, level + 1, s + start, end - start, out));
        prev = end;
    }
    return split_level(ctx, tok, level + 1, s + prev, n - prev, out);
}

/* ---- steps 1 and 2: added tokens and normalisation ------------------------------------------- */

static an_status split_added(an_ctx *ctx, an_tokenizer *tok, stage st, const uint8_t *s, size_t n, an_token_ids *out);

static an_status text_stretch(an_ctx *ctx, an_tokenizer *tok, stage st, const uint8_t *s, size_t n, an_token_ids *out) {
    if (!n) return AN_OK;
    if (st == STAGE_NORMALIZED) return split_level(ctx, tok, 0, s, n, out);
    if (tok->nfc && !an_unicode_nfc_quick_check(s, n)) {
        tok->norm.len = 0;
        if (!an_unicode_nfc(s, n, &tok->norm, &tok->nfc_scratch, &tok->nfc_scratch_cap)) return oom(ctx);
        s = (const uint8_t *)tok->norm.data;
        n = tok->norm.len;
    }
    if (tok->normalized_trie.n > 1) return split_added(ctx, tok, STAGE_NORMALIZED, s, n, out);
    return split_level(ctx, tok, 0, s, n, out);
}

static bool is_word_char(const an_tokenizer *tok, const uint8_t *s, size_t n) {
    return pcre2_match(tok->word_re, s, n, 0, PCRE2_NO_UTF_CHECK, tok->word_md, NULL) > 0;
}

/* Start of the character that ends at s[end). */
static size_t char_start_before(const uint8_t *s, size_t end) {
    size_t i = end - 1;
    while (i > 0 && (s[i] & 0xC0) == 0x80) i--;
    return i;
}

static an_status split_added(an_ctx *ctx, an_tokenizer *tok, stage st, const uint8_t *s, size_t n, an_token_ids *out) {
    const an_trie *trie = st == STAGE_RAW ? &tok->raw_trie : &tok->normalized_trie;
    size_t done = 0; /* s[0..done) is emitted */
    for (size_t pos = 0; pos < n;) {
        size_t len = 0, start = pos;
        int32_t t = -1;
        for (; start < n; start++)
            if ((t = an_trie_longest(trie, s + start, n - start, &len)) >= 0) break;
        if (t < 0) break;
        size_t stop = start + len;
        pos = stop;
        const an_added_token *a = &tok->added[t];
        if (a->single_word) {
            bool word_before = start > 0 && is_word_char(tok, s + char_start_before(s, start), n - char_start_before(s, start));
            bool word_after = stop < n && is_word_char(tok, s + stop, n - stop);
            if (word_before || word_after) continue;
        }
        if (a->lstrip) {
            while (start > done) {
                size_t c = char_start_before(s, start), clen;
                if (!an_unicode_is_space(an_unicode_utf8_decode(s + c, &clen))) break;
                start = c;
            }
        }
        if (a->rstrip) {
            while (stop < n) {
                size_t clen;
                if (!an_unicode_is_space(an_unicode_utf8_decode(s + stop, &clen))) break;
                stop += clen;
            }
        }
        if (start < done) continue; /* inside whitespace an rstrip token already took (see the top) */
        AN_TRY(text_stretch(ctx, tok, st, s + done, start - done, out));
        if (!an_token_ids_push(out, &a->id, 1)) return oom(ctx);
        done = stop;
    }
    return text_stretch(ctx, tok, st, s + done, n - done, out);
}

/* ---- public --------------------------------------------------------------------------------- */

an_status an_tokenizer_encode_append(an_ctx *ctx, an_tokenizer *tok, const char *text, size_t len, bool add_special,
                                     an_token_ids *out) {
    AN_CHECK(ctx, tok && out && (text || !len), AN_ERR_INPUT, "an_tokenizer_encode: NULL argument");
    const uint8_t *s = len ? (const uint8_t *)text : (const uint8_t *)""; /* text may be NULL when empty */
    size_t bad = an_unicode_utf8_invalid_at(s, len);
    AN_CHECK(ctx, bad == len, AN_ERR_INPUT, "text to encode is not valid UTF-8 (byte %zu of %zu)", bad, len);
    size_t start = out->n;
    an_status st = AN_OK;
    if (add_special && !an_token_ids_push(out, tok->prefix, (size_t)tok->n_prefix)) st = oom(ctx);
    if (st == AN_OK) st = split_added(ctx, tok, STAGE_RAW, s, len, out);
    if (st == AN_OK && add_special && !an_token_ids_push(out, tok->suffix, (size_t)tok->n_suffix)) st = oom(ctx);
    if (st != AN_OK) out->n = start;
    return st;
}

an_status an_tokenizer_encode(an_ctx *ctx, an_tokenizer *tok, const char *text, size_t len, bool add_special,
                              int32_t **ids, size_t *n) {
    AN_CHECK(ctx, ids && n, AN_ERR_INPUT, "an_tokenizer_encode: NULL argument");
    an_token_ids out = {0};
    an_status st = an_tokenizer_encode_append(ctx, tok, text, len, add_special, &out);
    if (st != AN_OK) {
        free(out.ids);
        return st;
    }
    if (!out.n) {
        free(out.ids);
        out.ids = NULL;
    }
    *ids = out.ids;
    *n = out.n;
    return AN_OK;
}

an_status an_tokenizer_decode(an_ctx *ctx, const an_tokenizer *tok, const int32_t *ids, size_t n, bool skip_special,
                              char **text, size_t *len) {
    AN_CHECK(ctx, tok && text && len && (ids || !n), AN_ERR_INPUT, "an_tokenizer_decode: NULL argument");
    an_text raw = {0}, out = {0};
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= tok->n_ids || tok->text[id].len == UINT32_MAX) {
            free(raw.data);
            return an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__,
                                "decode: id %d (position %zu) is not a token of %s (vocabulary size %d)", id, i,
                                tok->name, tok->n_ids);
        }
        if (skip_special && (tok->flags[id] & AN_TOK_SPECIAL)) continue;
        an_span b = tok->bytes[id];
        if (!an_text_append(&raw, tok->pool.data + b.off, b.len)) {
            free(raw.data);
            return an_error_set(ctx, AN_ERR_INTERNAL, __FILE__, __LINE__, "out of memory decoding");
        }
    }
    bool ok = an_unicode_append_lossy(&out, (const uint8_t *)raw.data, raw.len) && an_text_append(&out, "", 1);
    free(raw.data);
    if (!ok) {
        free(out.data);
        return an_error_set(ctx, AN_ERR_INTERNAL, __FILE__, __LINE__, "out of memory decoding");
    }
    *text = out.data;
    *len = out.len - 1;
    return AN_OK;
}

int32_t an_tokenizer_token_id(const an_tokenizer *tok, const char *token) {
    size_t n = strlen(token);
    int32_t added = an_strmap_get(&tok->added_by_text, &tok->pool, token, n);
    return added >= 0 ? tok->added[added].id : an_strmap_get(&tok->vocab, &tok->pool, token, n);
}

const char *an_tokenizer_token_text(const an_tokenizer *tok, int32_t id, size_t *len) {
    if (id < 0 || id >= tok->n_ids || tok->text[id].len == UINT32_MAX) return NULL;
    *len = tok->text[id].len;
    return tok->pool.data + tok->text[id].off;
}

int32_t an_tokenizer_vocab_size(const an_tokenizer *tok) { return tok->n_ids; }
int32_t an_tokenizer_bos_id(const an_tokenizer *tok) { return tok->bos_id; }
int32_t an_tokenizer_eos_id(const an_tokenizer *tok) { return tok->eos_id; }
int32_t an_tokenizer_pad_id(const an_tokenizer *tok) { return tok->pad_id; }
bool an_tokenizer_adds_bos(const an_tokenizer *tok) { return tok->n_prefix > 0 && tok->prefix[0] == tok->bos_id; }
bool an_tokenizer_is_special(const an_tokenizer *tok, int32_t id) {
    return id >= 0 && id < tok->n_ids && (tok->flags[id] & AN_TOK_SPECIAL);
}
