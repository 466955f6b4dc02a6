/* tokenizer_tables.c — the lookup tables a loaded tokenizer.json becomes: per-id text, flags and
 * decode bytes, the added-token tries, the byte-level character tables; and an_tokenizer_free.
 *
 * Rules: runs after the model and added tokens are read (tokenizer_load.c) and the normalizer is
 * known; everything it allocates belongs to the tokenizer. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/tokenizer_internal.h"

static an_status oom(an_ctx *ctx, const an_tokenizer *tok) {
    return an_error_set(ctx, AN_ERR_INTERNAL, __FILE__, __LINE__, "out of memory loading %s", tok->name);
}

/* Appends n bytes to the pool; false when memory (or the 4 GiB of span offsets) runs out. */
static bool pool_text(an_tokenizer *tok, const char *s, size_t n, an_span *out) {
    if (tok->pool.len + n >= UINT32_MAX) return false;
    out->off = (uint32_t)tok->pool.len;
    out->len = (uint32_t)n;
    return an_text_append(&tok->pool, s, n);
}

/* GPT-2's byte <-> character table: printable bytes map to themselves, the rest to U+0100 onwards. */
static void byte_level_tables(an_tokenizer *tok, int16_t char_byte[324]) {
    for (int c = 0; c < 324; c++) char_byte[c] = -1;
    int extra = 0;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
        uint32_t cp = printable ? (uint32_t)b : 256u + (uint32_t)extra++;
        char_byte[cp] = (int16_t)b;
        tok->byte_char_len[b] = (uint8_t)an_unicode_utf8_encode(cp, tok->byte_char[b]);
    }
}

/* text[id] and flags[id] from the vocabulary and the added tokens. */
static an_status id_tables(an_ctx *ctx, const char *file, an_tokenizer *tok) {
    size_t n = (size_t)(tok->n_ids ? tok->n_ids : 1);
    tok->text = malloc(n * sizeof *tok->text);
    tok->bytes = malloc(n * sizeof *tok->bytes);
    tok->flags = calloc(n, 1);
    if (!tok->text || !tok->bytes || !tok->flags) return oom(ctx, tok);
    for (size_t i = 0; i < n; i++) tok->text[i] = tok->bytes[i] = (an_span){0, UINT32_MAX};
    for (uint32_t e = 0; e < tok->vocab.n; e++) {
        int32_t id = tok->vocab.values[e];
        an_span was = tok->text[id], now = tok->vocab.keys[e];
        if (was.len != UINT32_MAX)
            return an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__,
                                "%s: model.vocab gives id %d to both \"%.*s\" and \"%.*s\"", file, id,
                        (int)(was.len > 60 ? 60 : was.len), tok->pool.data + was.off, (int)(now.len > 60 ? 60 : now.len),
                        tok->pool.data + now.off);
        tok->text[id] = now;
    }
    for (int32_t i = 0; i < tok->n_added; i++) {
        an_added_token *a = &tok->added[i];
        tok->text[a->id] = a->content;
        tok->flags[a->id] = (uint8_t)(AN_TOK_ADDED | (a->special ? AN_TOK_SPECIAL : 0));
    }
    return AN_OK;
}

/* The two added-token tries, and the \w pattern when a token is single_word. */
static an_status added_tries(an_ctx *ctx, an_tokenizer *tok) {
    an_text norm = {0};
    uint32_t *scratch = NULL;
    size_t scratch_cap = 0;
    bool ok = an_trie_add(&tok->raw_trie, NULL, 0, -1) && an_trie_add(&tok->normalized_trie, NULL, 0, -1);
    bool need_word = false;
    for (int32_t i = 0; i < tok->n_added && ok; i++) {
        an_added_token *a = &tok->added[i];
        const uint8_t *s = (const uint8_t *)tok->pool.data + a->content.off;
        need_word |= a->single_word;
        if (!a->normalized) {
            ok = an_trie_add(&tok->raw_trie, s, a->content.len, i);
        } else if (tok->nfc) {
            /* Matched against normalized text, so the content is normalized too; the library also
             * decodes the id to the normalized content (byte-level mapping included). */
            norm.len = 0;
            an_span text;
            ok = an_unicode_nfc(s, a->content.len, &norm, &scratch, &scratch_cap) &&
                 an_trie_add(&tok->normalized_trie, (const uint8_t *)norm.data, norm.len, i) &&
                 pool_text(tok, norm.data, norm.len, &text);
            if (ok) tok->text[a->id] = text;
        } else {
            ok = an_trie_add(&tok->normalized_trie, s, a->content.len, i);
        }
    }
    free(norm.data);
    free(scratch);
    if (!ok) return oom(ctx, tok);
    if (need_word) { /* Rust regex's Unicode \w, which the library's single_word test uses */
        char pattern[4096];
        int code;
        PCRE2_SIZE offset;
        snprintf(pattern, sizeof pattern, "[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}%s]",
                 an_unicode_regex_word_extra);
        tok->word_re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP | PCRE2_ANCHORED,
                                     &code, &offset, NULL);
        tok->word_md = tok->word_re ? pcre2_match_data_create_from_pattern(tok->word_re, NULL) : NULL;
        AN_CHECK(ctx, tok->word_md, AN_ERR_INTERNAL, "cannot build the word-character pattern");
    }
    return AN_OK;
}

/* bytes[id]: what decode writes — a token whose characters are all byte-level characters maps back
 * to those bytes, any other token is its own UTF-8 (the ByteLevel decoder's rule, per token). */
static an_status decode_tables(an_ctx *ctx, an_tokenizer *tok) {
    int16_t char_byte[324];
    byte_level_tables(tok, char_byte);
    for (int32_t id = 0; id < tok->n_ids; id++) {
        an_span t = tok->text[id];
        if (t.len == UINT32_MAX) continue;
        size_t start = tok->pool.len;
        bool mapped = true;
        for (size_t i = 0; i < t.len && mapped;) {
            size_t len;
            uint32_t cp = an_unicode_utf8_decode((const uint8_t *)tok->pool.data + t.off + i, &len);
            i += len;
            mapped = cp < 324 && char_byte[cp] >= 0;
            uint8_t byte = mapped ? (uint8_t)char_byte[cp] : 0;
            if (mapped && !an_text_append(&tok->pool, &byte, 1)) return oom(ctx, tok);
        }
        if (!mapped) {
            tok->pool.len = start;
            tok->bytes[id] = t;
        } else {
            tok->bytes[id] = (an_span){(uint32_t)start, (uint32_t)(tok->pool.len - start)};
        }
    }
    for (int b = 0; b < 256; b++)
        tok->byte_id[b] = an_strmap_get(&tok->vocab, &tok->pool, (const char *)tok->byte_char[b], tok->byte_char_len[b]);
    return AN_OK;
}

an_status an_tokenizer_build_tables(an_ctx *ctx, const char *file, an_tokenizer *tok) {
    AN_TRY(id_tables(ctx, file, tok));
    AN_TRY(added_tries(ctx, tok));
    return decode_tables(ctx, tok);
}

void an_tokenizer_free(an_tokenizer *tok) {
    if (!tok) return;
    free(tok->name);
    free(tok->pool.data);
    free(tok->text);
    free(tok->bytes);
    free(tok->flags);
    an_strmap_free(&tok->vocab);
    an_strmap_free(&tok->added_by_text);
    an_pairmap_free(&tok->merges);
    free(tok->added);
    an_trie_free(&tok->raw_trie);
    an_trie_free(&tok->normalized_trie);
    pcre2_match_data_free(tok->word_md);
    pcre2_code_free(tok->word_re);
    for (int i = 0; i < tok->n_split; i++) {
        pcre2_match_data_free(tok->split_md[i]);
        pcre2_code_free(tok->split[i]);
    }
    pcre2_match_context_free(tok->match_ctx);
    pcre2_jit_stack_free(tok->jit_stack);
    free(tok->prefix);
    free(tok->suffix);
    an_bpe_free(tok);
    free(tok->norm.data);
    free(tok->mapped.data);
    free(tok->nfc_scratch);
    free(tok);
}
