/* block_cache.c — the caching allocator of block_cache.h: size-rounded blocks in two pools, best
 * fit with splitting, merging of free neighbours, release of wholly free segments.
 *
 * Bookkeeping: each block is a host struct. Blocks of one segment form an address-ordered list
 * (prev/next); a free block sits in its pool's bin for floor(log2(size)), each bin sorted by
 * (size, address), so the bins in order are the one sorted list a best fit walks (the same block is
 * found), cut where its sizes cross powers of two; a block handed out sits in the hash table by
 * address. Insertion walks one bin, a best fit that bin and then takes the head of the next
 * non-empty one. (One sorted list cost 1.4 us a free at the full fine-tune's ~340 gradients,
 * 0.47 ms a step that the GPU waited for with the update in backward; docs/performance.md.) The first block of a segment (prev == NULL) starts at the address the
 * raw allocator returned and is never merged into another, so it is what goes back at release. */
#include "autograd/block_cache.h"

#include <stdio.h>
#include <stdlib.h>

struct an_block {
    char *ptr;              /* start of the block (device address) */
    size_t size;            /* rounded bytes */
    int pool;               /* 0 small, 1 large: that of its segment */
    int allocated;          /* handed out */
    an_block *prev, *next;  /* address neighbours in the same segment */
    an_block *free_prev, *free_next; /* in free_bins[pool][bin_of(size)] while free */
    an_block *hash_next;    /* in the table while allocated */
};

#define TABLE_MIN 256

void an_block_cache_init(an_block_cache *c, an_raw_alloc_fn raw_alloc, an_raw_free_fn raw_free, void *user) {
    *c = (an_block_cache){0};
    c->raw_alloc = raw_alloc;
    c->raw_free = raw_free;
    c->user = user;
}

size_t an_block_cache_round(size_t bytes) {
    if (bytes < AN_BLOCK_ALIGN) return AN_BLOCK_ALIGN;
    return (bytes + AN_BLOCK_ALIGN - 1) / AN_BLOCK_ALIGN * AN_BLOCK_ALIGN;
}

static size_t bucket(const an_block_cache *c, const void *ptr) {
    uint64_t h = (uint64_t)(uintptr_t)ptr >> 9; /* blocks are 512-byte aligned within a segment */
    h *= 0x9E3779B97F4A7C15ull;
    return (size_t)(h >> 32) & (c->table_size - 1);
}

/* Doubles the table (or creates it); 0 when out of host memory (the old table stays usable). */
static int table_grow(an_block_cache *c) {
    size_t n = c->table_size ? c->table_size * 2 : TABLE_MIN;
    an_block **t = calloc(n, sizeof *t);
    if (!t) return 0;
    an_block **old = c->table;
    size_t old_n = c->table_size;
    c->table = t;
    c->table_size = n;
    for (size_t i = 0; i < old_n; i++) {
        for (an_block *b = old[i], *nx; b; b = nx) {
            nx = b->hash_next;
            size_t k = bucket(c, b->ptr);
            b->hash_next = t[k];
            t[k] = b;
        }
    }
    free(old);
    return 1;
}

static void table_insert(an_block_cache *c, an_block *b) {
    size_t k = bucket(c, b->ptr);
    b->hash_next = c->table[k];
    c->table[k] = b;
}

static an_block *table_remove(an_block_cache *c, const void *ptr) {
    if (!c->table) return NULL;
    for (an_block **link = &c->table[bucket(c, ptr)]; *link; link = &(*link)->hash_next) {
        an_block *b = *link;
        if (b->ptr == ptr) {
            *link = b->hash_next;
            b->hash_next = NULL;
            return b;
        }
    }
    return NULL;
}

static an_block *table_find(const an_block_cache *c, const void *ptr) {
    if (!c->table) return NULL;
    for (an_block *b = c->table[bucket(c, ptr)]; b; b = b->hash_next)
        if (b->ptr == ptr) return b;
    return NULL;
}

/* floor(log2(size)) for the rounded sizes (>= 512) */
static int bin_of(size_t size) {
    int bin = 0;
    while (size >>= 1) bin++;
    return bin < AN_BLOCK_BINS ? bin : AN_BLOCK_BINS - 1;
}

static int before(const an_block *a, const an_block *b) {
    return a->size < b->size || (a->size == b->size && (uintptr_t)a->ptr < (uintptr_t)b->ptr);
}

static void free_insert(an_block_cache *c, an_block *b) {
    an_block **head = &c->free_bins[b->pool][bin_of(b->size)];
    an_block *prev = NULL, *at = *head;
    while (at && before(at, b)) {
        prev = at;
        at = at->free_next;
    }
    b->free_prev = prev;
    b->free_next = at;
    if (at) at->free_prev = b;
    if (prev) prev->free_next = b;
    else *head = b;
}

static void free_remove(an_block_cache *c, an_block *b) {
    if (b->free_prev) b->free_prev->free_next = b->free_next;
    else c->free_bins[b->pool][bin_of(b->size)] = b->free_next;
    if (b->free_next) b->free_next->free_prev = b->free_prev;
    b->free_prev = b->free_next = NULL;
}

static an_block *best_fit(an_block_cache *c, int pool, size_t size) {
    const int first = bin_of(size);
    for (an_block *b = c->free_bins[pool][first]; b; b = b->free_next)
        if (b->size >= size) return b;
    for (int bin = first + 1; bin < AN_BLOCK_BINS; bin++) /* all larger than size: the head is the best */
        if (c->free_bins[pool][bin]) return c->free_bins[pool][bin];
    return NULL;
}

static int worth_splitting(int pool, size_t remainder) {
    return pool == 0 ? remainder >= AN_BLOCK_ALIGN : remainder > AN_BLOCK_SMALL;
}

/* A new segment of `bytes` as one free-standing block (not in any list); NULL with why set. */
static an_block *new_segment(an_block_cache *c, int pool, size_t bytes, char *why, size_t why_size) {
    an_block *b = calloc(1, sizeof *b);
    if (!b) {
        snprintf(why, why_size, "out of host memory for allocator bookkeeping");
        return NULL;
    }
    void *p = NULL;
    if (c->raw_alloc(c->user, bytes, &p, why, why_size) != 0) {
        free(b);
        return NULL;
    }
    b->ptr = p;
    b->size = bytes;
    b->pool = pool;
    c->stats.raw_allocs++;
    c->stats.segments++;
    c->stats.reserved += bytes;
    if (c->stats.reserved > c->stats.peak_reserved) c->stats.peak_reserved = c->stats.reserved;
    return b;
}

void *an_block_cache_alloc(an_block_cache *c, size_t bytes, char *why, size_t why_size) {
    if (bytes > SIZE_MAX / 2) {
        snprintf(why, why_size, "allocation of %zu bytes is larger than any device", bytes);
        return NULL;
    }
    if (c->stats.blocks_in_use + 1 > (int64_t)c->table_size && !table_grow(c)) {
        snprintf(why, why_size, "out of host memory for allocator bookkeeping");
        return NULL;
    }
    size_t size = an_block_cache_round(bytes);
    int pool = size <= AN_BLOCK_SMALL ? 0 : 1;
    an_block *b = best_fit(c, pool, size);
    if (b) {
        free_remove(c, b);
    } else {
        size_t segment = pool == 0 ? AN_BLOCK_SMALL_SEGMENT
                                   : (size + AN_BLOCK_LARGE_ROUND - 1) / AN_BLOCK_LARGE_ROUND * AN_BLOCK_LARGE_ROUND;
        char first[256] = "";
        b = new_segment(c, pool, segment, first, sizeof first);
        if (!b && !c->parking && an_block_cache_release(c) > 0) b = new_segment(c, pool, segment, first, sizeof first);
        if (!b) {
            snprintf(why, why_size, "out of device memory: %zu bytes asked (segment of %zu), %zu bytes in use, %zu cached (%s)",
                     bytes, segment, c->stats.in_use, c->stats.reserved - c->stats.in_use, first);
            return NULL;
        }
    }
    if (worth_splitting(pool, b->size - size)) {
        an_block *rest = calloc(1, sizeof *rest);
        if (rest) { /* without host memory for the split, the whole block is handed out */
            rest->ptr = b->ptr + size;
            rest->size = b->size - size;
            rest->pool = pool;
            rest->prev = b;
            rest->next = b->next;
            if (b->next) b->next->prev = rest;
            b->next = rest;
            b->size = size;
            free_insert(c, rest);
        }
    }
    b->allocated = 1;
    table_insert(c, b);
    c->stats.in_use += b->size;
    c->stats.blocks_in_use++;
    if (c->stats.in_use > c->stats.peak_in_use) c->stats.peak_in_use = c->stats.in_use;
    return b->ptr;
}

/* Folds n, the address neighbour after a (same segment, in no list), into a. */
static void merge(an_block *a, an_block *n) {
    a->size += n->size;
    a->next = n->next;
    if (n->next) n->next->prev = a;
    free(n);
}

/* Parks ptr (a block handed out) instead of freeing it; 1 when recorded. */
static int park(an_block_cache *c, void *ptr) {
    if (c->n_parked == c->parked_cap) {
        int64_t cap = c->parked_cap ? 2 * c->parked_cap : 256;
        void **grown = realloc(c->parked, (size_t)cap * sizeof *grown);
        if (!grown) return 0;
        c->parked = grown;
        c->parked_cap = cap;
    }
    c->parked[c->n_parked++] = ptr;
    return 1;
}

void an_block_cache_park_begin(an_block_cache *c) {
    c->parking = 1;
    c->park_failed = 0;
}

int64_t an_block_cache_park_end(an_block_cache *c, void ***out) {
    int64_t n = c->park_failed ? -1 : c->n_parked;
    *out = c->parked;
    c->parked = NULL;
    c->n_parked = c->parked_cap = 0;
    c->parking = 0;
    c->park_failed = 0;
    return n;
}

int an_block_cache_free(an_block_cache *c, void *ptr) {
    if (!ptr) return 1;
    if (c->parking) {
        if (!table_find(c, ptr)) return 0;
        if (!park(c, ptr)) c->park_failed = 1; /* stays in use: never reused, never lost track of by a graph */
        return 1;
    }
    an_block *b = table_remove(c, ptr);
    if (!b) return 0;
    b->allocated = 0;
    c->stats.in_use -= b->size;
    c->stats.blocks_in_use--;
    if (b->next && !b->next->allocated) {
        free_remove(c, b->next);
        merge(b, b->next);
    }
    if (b->prev && !b->prev->allocated) {
        an_block *p = b->prev;
        free_remove(c, p);
        merge(p, b);
        b = p;
    }
    free_insert(c, b);
    return 1;
}

size_t an_block_cache_release(an_block_cache *c) {
    size_t released = 0;
    for (int pool = 0; pool < 2; pool++)
        for (int bin = 0; bin < AN_BLOCK_BINS; bin++)
            for (an_block *b = c->free_bins[pool][bin], *nx; b; b = nx) {
                nx = b->free_next;
                if (b->prev || b->next) continue; /* part of a segment still in use */
                free_remove(c, b);
                c->raw_free(c->user, b->ptr);
                c->stats.raw_frees++;
                c->stats.segments--;
                c->stats.reserved -= b->size;
                released += b->size;
                free(b);
            }
    return released;
}

/* Frees one block struct; raw-frees its segment when it is the segment's first block. */
static void drop(an_block_cache *c, an_block *b) {
    if (!b->prev) {
        c->raw_free(c->user, b->ptr);
        c->stats.raw_frees++;
    }
    free(b);
}

void an_block_cache_destroy(an_block_cache *c) {
    for (int pool = 0; pool < 2; pool++)
        for (int bin = 0; bin < AN_BLOCK_BINS; bin++) {
            for (an_block *b = c->free_bins[pool][bin], *nx; b; b = nx) {
                nx = b->free_next;
                drop(c, b);
            }
            c->free_bins[pool][bin] = NULL;
        }
    for (size_t i = 0; i < c->table_size; i++) {
        for (an_block *b = c->table[i], *nx; b; b = nx) {
            nx = b->hash_next;
            drop(c, b);
        }
    }
    free(c->table);
    free(c->parked);
    c->table = NULL;
    c->table_size = 0;
    c->stats.in_use = c->stats.reserved = 0;
    c->stats.segments = c->stats.blocks_in_use = 0;
}
