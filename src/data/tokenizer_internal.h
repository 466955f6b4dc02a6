/* tokenizer_internal.h — the an_tokenizer struct and the helpers its four files share:
 * tokenizer_load.c reads the JSON, tokenizer_tables.c builds the per-id tables and tries from it,
 * tokenizer_bpe.c holds the hash maps and the BPE merge loop with its per-piece cache, tokenizer.c
 * runs encode (added tokens, NFC, splits, BPE) and decode.
 *
 * Rules: all strings live in the tokenizer's byte pool and are referred to by (offset, length);
 * maps store ids, never pointers, so the pool may be realloc'd while loading. */
#ifndef AN_DATA_TOKENIZER_INTERNAL_H
#define AN_DATA_TOKENIZER_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "data/tokenizer.h"
#include "data/unicode.h" /* an_text */

enum { AN_TOK_MAX_SPLITS = 8, AN_TOK_CACHE_MAX_PIECE = 256 };

typedef struct {
    uint32_t off, len; /* bytes in the pool */
} an_span;

/* string -> int32 (open addressing; keys are spans of the pool) */
typedef struct {
    uint32_t *slots; /* (cap) entry index + 1, 0 = empty */
    an_span *keys;   /* (n) */
    int32_t *values; /* (n) */
    uint32_t n, cap;
} an_strmap;

/* (left id, right id) -> (rank, merged id) */
typedef struct {
    uint64_t *keys;  /* (cap) left << 32 | right, UINT64_MAX = empty */
    uint32_t *rank;  /* (cap) */
    int32_t *merged; /* (cap) */
    uint32_t n, cap;
} an_pairmap;

/* Byte trie over added-token contents; leftmost-longest matching. */
typedef struct {
    int32_t child, sibling, token; /* token: index into added[], -1 when no token ends here */
    uint8_t byte;
} an_trie_node;

typedef struct {
    an_trie_node *nodes;
    int32_t n, cap;
    uint8_t first[32]; /* bitmap of first bytes, to skip positions quickly */
} an_trie;

typedef struct {
    int32_t id;
    an_span content;
    bool special, normalized, single_word, lstrip, rstrip;
} an_added_token;

/* The per-piece cache: piece bytes -> the ids BPE (or ignore_merges) gave them. */
typedef struct {
    uint32_t *slots; /* (cap) entry index + 1, 0 = empty */
    uint64_t *hash;  /* (n) */
    uint32_t *key_off, *key_len, *ids_off, *ids_len;
    uint32_t n, cap;
    an_text keys;
    int32_t *ids;
    size_t ids_len_total, ids_cap;
} an_piece_cache;

/* Scratch for the merge loop, reused between pieces. */
typedef struct {
    int32_t *id, *prev, *next;
    uint32_t *len;
    size_t cap;
    struct an_merge_entry *heap;
    size_t heap_n, heap_cap;
} an_bpe_scratch;

struct an_tokenizer {
    char *name;     /* the tokenizer.json path, for messages */
    an_text pool;   /* every string */
    int32_t n_ids;  /* one more than the largest id */
    an_span *text;  /* (n_ids) vocabulary text; len == UINT32_MAX: no such id */
    an_span *bytes; /* (n_ids) what decode writes for the id */
    uint8_t *flags; /* (n_ids) AN_TOK_ADDED | AN_TOK_SPECIAL */

    an_strmap vocab;       /* model vocabulary */
    an_strmap added_by_text;
    an_pairmap merges;
    bool ignore_merges;
    int32_t byte_id[256];  /* id of each byte's byte-level character, -1 when the vocabulary lacks it */
    uint8_t byte_char[256][2], byte_char_len[256];

    an_added_token *added;
    int32_t n_added;
    an_trie raw_trie, normalized_trie; /* contents matched before / after normalisation */
    pcre2_code *word_re;               /* \w for single_word tokens, NULL when none needs it */
    pcre2_match_data *word_md;

    bool nfc;
    pcre2_code *split[AN_TOK_MAX_SPLITS]; /* applied in order, each to the pieces of the one before */
    pcre2_match_data *split_md[AN_TOK_MAX_SPLITS];
    bool split_jit[AN_TOK_MAX_SPLITS];
    int n_split;
    pcre2_jit_stack *jit_stack; /* up to 1 MiB, so long runs never hit the 32 KiB default */
    pcre2_match_context *match_ctx;

    int32_t *prefix, *suffix; /* ids add_special puts around a sequence */
    int n_prefix, n_suffix;
    int32_t bos_id, eos_id, pad_id;

    an_piece_cache cache;
    an_bpe_scratch scratch;
    an_text norm, mapped; /* NFC output; byte-level text of a piece */
    uint32_t *nfc_scratch;
    size_t nfc_scratch_cap;
};

enum { AN_TOK_ADDED = 1, AN_TOK_SPECIAL = 2 };

uint64_t an_tok_hash(const void *data, size_t n);

/* Maps return false only when memory runs out. */
bool an_strmap_put(an_strmap *m, const an_text *pool, an_span key, int32_t value, int32_t *existing);
int32_t an_strmap_get(const an_strmap *m, const an_text *pool, const char *key, size_t n); /* -1: absent */
void an_strmap_free(an_strmap *m);
bool an_pairmap_put(an_pairmap *m, int32_t left, int32_t right, uint32_t rank, int32_t merged);
void an_pairmap_free(an_pairmap *m);

bool an_trie_add(an_trie *t, const uint8_t *s, size_t n, int32_t token);
/* Longest token starting at s[0..n), or -1; *len receives its length. */
int32_t an_trie_longest(const an_trie *t, const uint8_t *s, size_t n, size_t *len);
void an_trie_free(an_trie *t);

/* Fills text, bytes, flags, byte_id, the tries and word_re once vocab, merges, added tokens and the
 * normalizer are loaded; file names tokenizer.json in messages. */
an_status an_tokenizer_build_tables(an_ctx *ctx, const char *file, an_tokenizer *tok);

/* Appends the ids of one pre-token (raw bytes, before the byte-level mapping) to out. */
an_status an_bpe_piece(an_ctx *ctx, an_tokenizer *tok, const uint8_t *piece, size_t n, an_token_ids *out);
void an_bpe_free(an_tokenizer *tok);

bool an_token_ids_push(an_token_ids *out, const int32_t *ids, size_t n);

#endif
