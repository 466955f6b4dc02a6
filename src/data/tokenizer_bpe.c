/* tokenizer_bpe.c — the tokenizer's lookup structures (string map, merge-pair map, added-token trie)
 * and the BPE step: one pre-token's bytes -> ids, with a cache per distinct pre-token.
 *
 * The merge loop is the library's (models/bpe/word.rs) so ties resolve identically: a min-heap of
 * (rank, position) over adjacent pairs; a popped entry is stale, and skipped, when its left symbol was
 * absorbed, is last, or the pair there no longer merges into the entry's id. Bytes whose byte-level
 * character is missing from the vocabulary are dropped, as the library does without an unk token.
 * Cost: O(k log k) per distinct pre-token of k bytes; repeated pre-tokens are one hash lookup. */
#include <stdlib.h>
#include <string.h>

#include "data/tokenizer_internal.h"

enum { CACHE_MAX_ENTRIES = 1 << 20, CACHE_MAX_KEY_BYTES = 64 << 20 };

uint64_t an_tok_hash(const void *data, size_t n) {
    const uint8_t *p = data;
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xC2B2AE3D27D4EB4Full);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xFF51AFD7ED558CCDull;
        h ^= h >> 32;
        p += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, p, n);
    h = (h ^ w) * 0xC4CEB9FE1A85EC53ull;
    h ^= h >> 29;
    h *= 0xFF51AFD7ED558CCDull;
    return h ^ (h >> 32);
}

/* ---- string map ----------------------------------------------------------------------------- */

static bool span_equals(const an_text *pool, an_span s, const char *key, size_t n) {
    return s.len == n && memcmp(pool->data + s.off, key, n) == 0;
}

static bool strmap_grow(an_strmap *m, const an_text *pool) {
    uint32_t cap = m->cap ? m->cap * 2 : 1024;
    uint32_t *slots = calloc(cap, sizeof *slots);
    an_span *keys = realloc(m->keys, (size_t)(cap / 2) * sizeof *keys);
    if (keys) m->keys = keys;
    int32_t *values = keys ? realloc(m->values, (size_t)(cap / 2) * sizeof *values) : NULL;
    if (values) m->values = values;
    if (!slots || !keys || !values) {
        free(slots);
        return false;
    }
    for (uint32_t e = 0; e < m->n; e++) {
        uint64_t h = an_tok_hash(pool->data + m->keys[e].off, m->keys[e].len);
        uint32_t i = (uint32_t)h & (cap - 1);
        while (slots[i]) i = (i + 1) & (cap - 1);
        slots[i] = e + 1;
    }
    free(m->slots);
    m->slots = slots;
    m->cap = cap;
    return true;
}

bool an_strmap_put(an_strmap *m, const an_text *pool, an_span key, int32_t value, int32_t *existing) {
    *existing = -1;
    if ((m->n + 1) * 2 > m->cap && !strmap_grow(m, pool)) return false;
    const char *k = pool->data + key.off;
    uint32_t i = (uint32_t)an_tok_hash(k, key.len) & (m->cap - 1);
    for (; m->slots[i]; i = (i + 1) & (m->cap - 1)) {
        uint32_t e = m->slots[i] - 1;
        if (span_equals(pool, m->keys[e], k, key.len)) {
            *existing = m->values[e];
            return true;
        }
    }
    m->keys[m->n] = key;
    m->values[m->n] = value;
    m->slots[i] = ++m->n;
    return true;
}

int32_t an_strmap_get(const an_strmap *m, const an_text *pool, const char *key, size_t n) {
    if (!m->cap) return -1;
    for (uint32_t i = (uint32_t)an_tok_hash(key, n) & (m->cap - 1); m->slots[i]; i = (i + 1) & (m->cap - 1)) {
        uint32_t e = m->slots[i] - 1;
        if (span_equals(pool, m->keys[e], key, n)) return m->values[e];
    }
    return -1;
}

void an_strmap_free(an_strmap *m) {
    free(m->slots);
    free(m->keys);
    free(m->values);
    memset(m, 0, sizeof *m);
}

/* ---- merge-pair map ------------------------------------------------------------------------- */

static uint32_t pair_slot(uint64_t key, uint32_t cap) {
    uint64_t h = key * 0x9E3779B97F4A7C15ull;
    return (uint32_t)(h >> 32) & (cap - 1);
}

static bool pairmap_grow(an_pairmap *m) {
    uint32_t cap = m->cap ? m->cap * 2 : 1024;
    uint64_t *keys = malloc((size_t)cap * sizeof *keys);
    uint32_t *rank = malloc((size_t)cap * sizeof *rank);
    int32_t *merged = malloc((size_t)cap * sizeof *merged);
    if (!keys || !rank || !merged) {
        free(keys);
        free(rank);
        free(merged);
        return false;
    }
    memset(keys, 0xFF, (size_t)cap * sizeof *keys);
    for (uint32_t i = 0; i < m->cap; i++) {
        if (m->keys[i] == UINT64_MAX) continue;
        uint32_t j = pair_slot(m->keys[i], cap);
        while (keys[j] != UINT64_MAX) j = (j + 1) & (cap - 1);
        keys[j] = m->keys[i];
        rank[j] = m->rank[i];
        merged[j] = m->merged[i];
    }
    an_pairmap_free(m);
    m->keys = keys;
    m->rank = rank;
    m->merged = merged;
    m->cap = cap;
    return true;
}

bool an_pairmap_put(an_pairmap *m, int32_t left, int32_t right, uint32_t rank, int32_t merged) {
    uint32_t n = m->n;
    if ((n + 1) * 2 > m->cap) {
        if (!pairmap_grow(m)) return false;
        m->n = n;
    }
    uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    uint32_t i = pair_slot(key, m->cap);
    while (m->keys[i] != UINT64_MAX && m->keys[i] != key) i = (i + 1) & (m->cap - 1);
    if (m->keys[i] == UINT64_MAX) m->n++;
    m->keys[i] = key; /* a repeated pair takes the later rank, as the library's HashMap collect does */
    m->rank[i] = rank;
    m->merged[i] = merged;
    return true;
}

/* Rank and merged id of (left, right); false when the pair does not merge. */
static bool pairmap_get(const an_pairmap *m, int32_t left, int32_t right, uint32_t *rank, int32_t *merged) {
    if (!m->cap) return false;
    uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    for (uint32_t i = pair_slot(key, m->cap); m->keys[i] != UINT64_MAX; i = (i + 1) & (m->cap - 1)) {
        if (m->keys[i] == key) {
            *rank = m->rank[i];
            *merged = m->merged[i];
            return true;
        }
    }
    return false;
}

void an_pairmap_free(an_pairmap *m) {
    free(m->keys);
    free(m->rank);
    free(m->merged);
    memset(m, 0, sizeof *m);
}

/* ---- added-token trie ----------------------------------------------------------------------- */

static int32_t trie_node(an_trie *t, uint8_t byte) {
    if (t->n == t->cap) {
        int32_t cap = t->cap ? t->cap * 2 : 64;
        an_trie_node *p = realloc(t->nodes, (size_t)cap * sizeof *p);
        if (!p) return -1;
        t->nodes = p;
        t->cap = cap;
    }
    t->nodes[t->n] = (an_trie_node){.child = -1, .sibling = -1, .token = -1, .byte = byte};
    return t->n++;
}

bool an_trie_add(an_trie *t, const uint8_t *s, size_t n, int32_t token) {
    if (!t->n && trie_node(t, 0) < 0) return false;
    if (!n) return true;
    t->first[s[0] >> 3] |= (uint8_t)(1u << (s[0] & 7));
    int32_t node = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t c = t->nodes[node].child;
        while (c >= 0 && t->nodes[c].byte != s[i]) c = t->nodes[c].sibling;
        if (c < 0) {
            c = trie_node(t, s[i]);
            if (c < 0) return false;
            t->nodes[c].sibling = t->nodes[node].child;
            t->nodes[node].child = c;
        }
        node = c;
    }
    if (t->nodes[node].token < 0) t->nodes[node].token = token; /* the first of equal contents wins */
    return true;
}

int32_t an_trie_longest(const an_trie *t, const uint8_t *s, size_t n, size_t *len) {
    if (!t->n || !n || !(t->first[s[0] >> 3] & (1u << (s[0] & 7)))) return -1;
    int32_t node = 0, best = -1;
    for (size_t i = 0; i < n; i++) {
        int32_t c = t->nodes[node].child;
        while (c >= 0 && t->nodes[c].byte != s[i]) c = t->nodes[c].sibling;
        if (c < 0) break;
        node = c;
        if (t->nodes[node].token >= 0) {
            best = t->nodes[node].token;
            *len = i + 1;
        }
    }
    return best;
}

void an_trie_free(an_trie *t) {
    free(t->nodes);
    memset(t, 0, sizeof *t);
}

/* ---- ids buffer ----------------------------------------------------------------------------- */

bool an_token_ids_push(an_token_ids *out, const int32_t *ids, size_t n) {
    if (out->cap - out->n < n) {
        size_t cap = out->cap ? out->cap : 256;
        while (cap - out->n < n) cap *= 2;
        int32_t *p = realloc(out->ids, cap * sizeof *p);
        if (!p) return false;
        out->ids = p;
        out->cap = cap;
    }
    if (n) memcpy(out->ids + out->n, ids, n * sizeof *ids);
    out->n += n;
    return true;
}

/* ---- the piece cache ------------------------------------------------------------------------ */

static void cache_clear(an_piece_cache *c) {
    if (c->slots) memset(c->slots, 0, (size_t)c->cap * sizeof *c->slots);
    c->n = 0;
    c->keys.len = 0;
    c->ids_len_total = 0;
}

static const int32_t *cache_get(const an_piece_cache *c, const uint8_t *piece, size_t n, uint64_t h, size_t *count) {
    if (!c->cap) return NULL;
    for (uint32_t i = (uint32_t)h & (c->cap - 1); c->slots[i]; i = (i + 1) & (c->cap - 1)) {
        uint32_t e = c->slots[i] - 1;
        if (c->hash[e] == h && c->key_len[e] == n && memcmp(c->keys.data + c->key_off[e], piece, n) == 0) {
            *count = c->ids_len[e];
            return c->ids + c->ids_off[e];
        }
    }
    return NULL;
}

static bool cache_grow(an_piece_cache *c) {
    uint32_t cap = c->cap ? c->cap * 2 : 4096, entries = cap / 2;
    uint32_t *slots = calloc(cap, sizeof *slots);
    if (!slots) return false;
    uint64_t *hash = realloc(c->hash, entries * sizeof *hash);
    if (hash) c->hash = hash;
    uint32_t **arrays[4] = {&c->key_off, &c->key_len, &c->ids_off, &c->ids_len};
    bool ok = hash != NULL;
    for (int k = 0; k < 4 && ok; k++) {
        uint32_t *a = realloc(*arrays[k], entries * sizeof **arrays[k]);
        if (a) *arrays[k] = a;
        ok = a != NULL;
    }
    if (!ok) {
        free(slots);
        return false;
    }
    for (uint32_t e = 0; e < c->n; e++) {
        uint32_t i = (uint32_t)c->hash[e] & (cap - 1);
        while (slots[i]) i = (i + 1) & (cap - 1);
        slots[i] = e + 1;
    }
    free(c->slots);
    c->slots = slots;
    c->cap = cap;
    return true;
}

/* Remembers piece -> ids; a full cache starts over (false only when memory runs out). */
static bool cache_put(an_piece_cache *c, const uint8_t *piece, size_t n, uint64_t h, const int32_t *ids, size_t count) {
    if (c->n >= CACHE_MAX_ENTRIES || c->keys.len + n > CACHE_MAX_KEY_BYTES) cache_clear(c);
    if ((c->n + 1) * 2 > c->cap && !cache_grow(c)) return false;
    if (c->ids_cap - c->ids_len_total < count) {
        size_t cap = c->ids_cap ? c->ids_cap : 4096;
        while (cap - c->ids_len_total < count) cap *= 2;
        int32_t *p = realloc(c->ids, cap * sizeof *p);
        if (!p) return false;
        c->ids = p;
        c->ids_cap = cap;
    }
    uint32_t e = c->n;
    c->hash[e] = h;
    c->key_off[e] = (uint32_t)c->keys.len;
    c->key_len[e] = (uint32_t)n;
    c->ids_off[e] = (uint32_t)c->ids_len_total;
    c->ids_len[e] = (uint32_t)count;
    if (!an_text_append(&c->keys, piece, n)) return false;
    if (count) memcpy(c->ids + c->ids_len_total, ids, count * sizeof *ids);
    c->ids_len_total += count;
    uint32_t i = (uint32_t)h & (c->cap - 1);
    while (c->slots[i]) i = (i + 1) & (c->cap - 1);
    c->slots[i] = ++c->n;
    return true;
}

/* ---- the merge loop ------------------------------------------------------------------------- */

struct an_merge_entry {
    uint32_t rank, pos;
    int32_t merged;
};

static bool entry_before(const struct an_merge_entry *a, const struct an_merge_entry *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static bool heap_push(an_bpe_scratch *s, struct an_merge_entry e) {
    if (s->heap_n == s->heap_cap) {
        size_t cap = s->heap_cap ? s->heap_cap * 2 : 256;
        struct an_merge_entry *p = realloc(s->heap, cap * sizeof *p);
        if (!p) return false;
        s->heap = p;
        s->heap_cap = cap;
    }
    size_t i = s->heap_n++;
    while (i > 0 && entry_before(&e, &s->heap[(i - 1) / 2])) {
        s->heap[i] = s->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    s->heap[i] = e;
    return true;
}

static struct an_merge_entry heap_pop(an_bpe_scratch *s) {
    struct an_merge_entry top = s->heap[0], last = s->heap[--s->heap_n];
    size_t i = 0, n = s->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && entry_before(&s->heap[c + 1], &s->heap[c])) c++;
        if (!entry_before(&s->heap[c], &last)) break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (n) s->heap[i] = last;
    return top;
}

static bool push_pair(an_tokenizer *tok, uint32_t pos, int32_t left, int32_t right) {
    struct an_merge_entry e = {.pos = pos};
    if (!pairmap_get(&tok->merges, left, right, &e.rank, &e.merged)) return true;
    return heap_push(&tok->scratch, e);
}

/* BPE over the byte symbols of piece; appends the resulting ids to out. */
static bool merge_piece(an_tokenizer *tok, const uint8_t *piece, size_t n, an_token_ids *out) {
    an_bpe_scratch *s = &tok->scratch;
    if (s->cap < n) {
        size_t cap = n < 64 ? 64 : n;
        int32_t *id = realloc(s->id, cap * sizeof *id);
        if (id) s->id = id;
        int32_t *prev = id ? realloc(s->prev, cap * sizeof *prev) : NULL;
        if (prev) s->prev = prev;
        int32_t *next = prev ? realloc(s->next, cap * sizeof *next) : NULL;
        if (next) s->next = next;
        uint32_t *len = next ? realloc(s->len, cap * sizeof *len) : NULL;
        if (!len) return false;
        s->len = len;
        s->cap = cap;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = tok->byte_id[piece[i]];
        if (id < 0) continue;
        s->id[k] = id;
        s->prev[k] = (int32_t)k - 1;
        s->next[k] = -1;
        if (k) s->next[k - 1] = (int32_t)k;
        s->len[k] = 1;
        k++;
    }
    s->heap_n = 0;
    for (size_t i = 0; i + 1 < k; i++)
        if (!push_pair(tok, (uint32_t)i, s->id[i], s->id[i + 1])) return false;
    while (s->heap_n) {
        struct an_merge_entry top = heap_pop(s);
        uint32_t pos = top.pos;
        if (!s->len[pos] || s->next[pos] < 0) continue;
        int32_t right = s->next[pos];
        uint32_t rank;
        int32_t merged;
        if (!pairmap_get(&tok->merges, s->id[pos], s->id[right], &rank, &merged) || merged != top.merged) continue;
        s->id[pos] = merged;
        s->len[pos] += s->len[right];
        s->next[pos] = s->next[right];
        s->len[right] = 0;
        if (s->next[pos] >= 0) s->prev[s->next[pos]] = (int32_t)pos;
        if (s->prev[pos] >= 0 && !push_pair(tok, (uint32_t)s->prev[pos], s->id[s->prev[pos]], merged)) return false;
        if (s->next[pos] >= 0 && !push_pair(tok, pos, merged, s->id[s->next[pos]])) return false;
    }
    for (size_t i = 0; i < k; i++)
        if (s->len[i] && !an_token_ids_push(out, &s->id[i], 1)) return false;
    return true;
}

an_status an_bpe_piece(an_ctx *ctx, an_tokenizer *tok, const uint8_t *piece, size_t n, an_token_ids *out) {
    bool cacheable = n <= AN_TOK_CACHE_MAX_PIECE;
    uint64_t h = 0;
    if (cacheable) {
        h = an_tok_hash(piece, n);
        size_t count;
        const int32_t *hit = cache_get(&tok->cache, piece, n, h, &count);
        if (hit) {
            AN_CHECK(ctx, an_token_ids_push(out, hit, count), AN_ERR_INTERNAL, "out of memory encoding text");
            return AN_OK;
        }
    }
    size_t start = out->n;
    bool whole = false;
    if (tok->ignore_merges) { /* a pre-token that is itself in the vocabulary is emitted whole */
        tok->mapped.len = 0;
        for (size_t i = 0; i < n; i++)
            AN_CHECK(ctx, an_text_append(&tok->mapped, tok->byte_char[piece[i]], tok->byte_char_len[piece[i]]),
                     AN_ERR_INTERNAL, "out of memory encoding text");
        int32_t id = an_strmap_get(&tok->vocab, &tok->pool, tok->mapped.data, tok->mapped.len);
        if (id >= 0) {
            AN_CHECK(ctx, an_token_ids_push(out, &id, 1), AN_ERR_INTERNAL, "out of memory encoding text");
            whole = true;
        }
    }
    if (!whole) AN_CHECK(ctx, merge_piece(tok, piece, n, out), AN_ERR_INTERNAL, "out of memory encoding text");
    if (cacheable)
        AN_CHECK(ctx, cache_put(&tok->cache, piece, n, h, out->ids + start, out->n - start), AN_ERR_INTERNAL,
                 "out of memory encoding text");
    return AN_OK;
}

void an_bpe_free(an_tokenizer *tok) {
    an_piece_cache *c = &tok->cache;
    free(c->slots);
    free(c->hash);
    free(c->key_off);
    free(c->key_len);
    free(c->ids_off);
    free(c->ids_len);
    free(c->keys.data);
    free(c->ids);
    an_bpe_scratch *s = &tok->scratch;
    free(s->id);
    free(s->prev);
    free(s->next);
    free(s->len);
    free(s->heap);
}
