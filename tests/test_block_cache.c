/* test_block_cache.c — the caching allocator of autograd/block_cache.h on a host-memory raw
 * allocator with a capacity (so it runs everywhere, sanitizers included): rounding, reuse, best
 * fit (across the free bins), splitting, merging, release, the release-and-retry and out-of-memory paths, a repeated
 * training-like pattern that stops allocating, and a random workload whose live blocks are filled
 * with their own byte and checked for overlap, with every counter checked against a model. */
#include <stdlib.h>
#include <string.h>

#include "autograd/block_cache.h"
#include "autograd/rng.h"  /* an_rng for the random workload */
#include "support/test_util.h"

#define MiB ((size_t)1 << 20)
/* A check cheap enough for hot loops (each ck_assert writes its location to Check's pipe). */
#define REQUIRE(cond)                                                                   \
    do {                                                                                \
        if (!(cond)) ck_abort_msg("line %d: %s", __LINE__, #cond);                      \
    } while (0)

/* Host memory standing in for a device of `capacity` bytes. */
typedef struct {
    size_t capacity;
    size_t held;
    int64_t live; /* raw regions not yet freed */
} fake_device;

static size_t *header(void *p) { return (size_t *)p - 8; } /* 64 bytes before the region: its size */

static int fake_alloc(void *user, size_t bytes, void **out, char *why, size_t why_size) {
    fake_device *d = user;
    if (d->held + bytes > d->capacity) {
        snprintf(why, why_size, "fake device full");
        return 1;
    }
    char *p = aligned_alloc(64, bytes + 64);
    ck_assert_ptr_nonnull(p);
    *(size_t *)p = bytes;
    d->held += bytes;
    d->live++;
    *out = p + 64;
    return 0;
}

static void fake_free(void *user, void *ptr) {
    fake_device *d = user;
    size_t *h = header(ptr);
    d->held -= *h;
    d->live--;
    free(h);
}

static void check_close(an_block_cache *c, fake_device *d) {
    an_block_cache_destroy(c);
    ck_assert_int_eq(d->live, 0);
    ck_assert_uint_eq(d->held, 0);
    ck_assert_int_eq(c->stats.raw_allocs, c->stats.raw_frees);
}

START_TEST(test_sizes_round_to_512_bytes) {
    ck_assert_uint_eq(an_block_cache_round(0), 512);
    ck_assert_uint_eq(an_block_cache_round(1), 512);
    ck_assert_uint_eq(an_block_cache_round(512), 512);
    ck_assert_uint_eq(an_block_cache_round(513), 1024);
    ck_assert_uint_eq(an_block_cache_round(MiB + 1), MiB + 512);
}
END_TEST

START_TEST(test_free_then_same_or_smaller_reuses_without_raw_allocation) {
    fake_device d = {64 * MiB, 0, 0};
    an_block_cache c;
    char why[256];
    an_block_cache_init(&c, fake_alloc, fake_free, &d);
    void *a = an_block_cache_alloc(&c, 3 * MiB, why, sizeof why);
    ck_assert_ptr_nonnull(a);
    ck_assert_int_eq(c.stats.raw_allocs, 1);
    ck_assert_uint_eq(c.stats.reserved, 4 * MiB); /* 3 MiB rounded up to 2 MiB segments */
    ck_assert_int_eq(an_block_cache_free(&c, a), 1);
    ck_assert_uint_eq(c.stats.in_use, 0);
    void *b = an_block_cache_alloc(&c, 3 * MiB, why, sizeof why);
    ck_assert_ptr_eq(a, b);
    an_block_cache_free(&c, b);
    void *e = an_block_cache_alloc(&c, 3 * MiB - 5, why, sizeof why); /* smaller: same block, 1 MiB rest too small to split */
    ck_assert_ptr_eq(a, e);
    ck_assert_uint_eq(c.stats.in_use, 4 * MiB);
    an_block_cache_free(&c, e);
    void *s = an_block_cache_alloc(&c, 1000, why, sizeof why); /* the small pool never borrows a large block */
    ck_assert_int_eq(c.stats.raw_allocs, 2);
    void *s2 = (an_block_cache_free(&c, s), an_block_cache_alloc(&c, 700, why, sizeof why));
    ck_assert_ptr_eq(s, s2);
    ck_assert_int_eq(c.stats.raw_allocs, 2);
    ck_assert_int_eq(an_block_cache_free(&c, (char *)s2 + 512), 0); /* not a block start: ignored */
    ck_assert_int_eq(an_block_cache_free(&c, NULL), 1);
    an_block_cache_free(&c, s2);
    check_close(&c, &d);
}
END_TEST

/* Best fit across the free bins (one a power of two of the size): free segments of 6, 8 and 10 MiB
 * (4 and 6 MiB share a bin, 8 and 10 the next); each request gets the smallest free block that
 * holds it, within its own bin or from the head of a later one, and the kept 4 MiB block is never
 * handed out. */
START_TEST(test_best_fit_across_size_bins) {
    fake_device d = {64 * MiB, 0, 0};
    an_block_cache c;
    an_block_cache_init(&c, fake_alloc, fake_free, &d);
    char why[256];
    void *keep = an_block_cache_alloc(&c, 4 * MiB, why, sizeof why);
    void *p6 = an_block_cache_alloc(&c, 6 * MiB, why, sizeof why), *p10 = an_block_cache_alloc(&c, 10 * MiB, why, sizeof why);
    void *p8 = an_block_cache_alloc(&c, 8 * MiB, why, sizeof why);
    ck_assert(keep && p6 && p10 && p8);
    ck_assert_int_eq(c.stats.raw_allocs, 4); /* one segment each: no neighbours to merge */
    an_block_cache_free(&c, p6), an_block_cache_free(&c, p10), an_block_cache_free(&c, p8);
    ck_assert_ptr_eq(an_block_cache_alloc(&c, 5 * MiB, why, sizeof why), p6);  /* its own bin */
    ck_assert_ptr_eq(an_block_cache_alloc(&c, 7 * MiB, why, sizeof why), p8);  /* the next bin's head */
    ck_assert_ptr_eq(an_block_cache_alloc(&c, 9 * MiB, why, sizeof why), p10); /* within that bin */
    ck_assert_int_eq(c.stats.raw_allocs, 4);
    ck_assert_ptr_nonnull(an_block_cache_alloc(&c, 3 * MiB, why, sizeof why)); /* nothing free: a new segment */
    ck_assert_int_eq(c.stats.raw_allocs, 5);
    check_close(&c, &d);
}
END_TEST

START_TEST(test_blocks_split_and_merge_back_into_one_segment) {
    fake_device d = {64 * MiB, 0, 0};
    an_block_cache c;
    char why[256];
    an_block_cache_init(&c, fake_alloc, fake_free, &d);
    /* Small pool: two small requests share one 2 MiB segment, one after the other. */
    char *a = an_block_cache_alloc(&c, 1000, why, sizeof why);
    char *b = an_block_cache_alloc(&c, 1000, why, sizeof why);
    ck_assert_int_eq(c.stats.raw_allocs, 1);
    ck_assert_ptr_eq(b, a + 1024);
    ck_assert_uint_eq(c.stats.in_use, 2048);
    /* Large pool: a 10 MiB block splits into 3 MiB + 5 MiB + a free 2 MiB rest. */
    char *big = an_block_cache_alloc(&c, 10 * MiB, why, sizeof why);
    an_block_cache_free(&c, big);
    char *x = an_block_cache_alloc(&c, 3 * MiB, why, sizeof why);
    char *y = an_block_cache_alloc(&c, 5 * MiB, why, sizeof why);
    ck_assert_ptr_eq(x, big);
    ck_assert_ptr_eq(y, big + 3 * MiB);
    ck_assert_int_eq(c.stats.raw_allocs, 2);
    char *z = an_block_cache_alloc(&c, 3 * MiB, why, sizeof why); /* the 2 MiB rest is too small */
    ck_assert_int_eq(c.stats.raw_allocs, 3);
    ck_assert_uint_eq(an_block_cache_release(&c), 0); /* every segment has a block in use */
    /* Freed in an order that merges with the next block, then with the previous one. */
    an_block_cache_free(&c, x);
    an_block_cache_free(&c, y);
    an_block_cache_free(&c, z);
    an_block_cache_free(&c, b);
    an_block_cache_free(&c, a);
    ck_assert_uint_eq(c.stats.in_use, 0);
    char *whole = an_block_cache_alloc(&c, 10 * MiB, why, sizeof why); /* merged back to one block */
    ck_assert_ptr_eq(whole, big);
    ck_assert_int_eq(c.stats.raw_allocs, 3);
    an_block_cache_free(&c, whole);
    ck_assert_uint_eq(an_block_cache_release(&c), 2 * MiB + 10 * MiB + 4 * MiB);
    ck_assert_uint_eq(c.stats.reserved, 0);
    ck_assert_int_eq(c.stats.segments, 0);
    ck_assert_uint_eq(d.held, 0);
    check_close(&c, &d);
}
END_TEST

START_TEST(test_failed_raw_allocation_releases_cache_and_retries_then_reports) {
    fake_device d = {8 * MiB, 0, 0};
    an_block_cache c;
    char why[256] = "";
    an_block_cache_init(&c, fake_alloc, fake_free, &d);
    void *a = an_block_cache_alloc(&c, 4 * MiB, why, sizeof why);
    an_block_cache_free(&c, a); /* 4 MiB cached */
    void *b = an_block_cache_alloc(&c, 6 * MiB, why, sizeof why); /* fits only once the cache is released */
    ck_assert_msg(b != NULL, "%s", why);
    ck_assert_int_eq(c.stats.raw_frees, 1);
    ck_assert_uint_eq(c.stats.reserved, 6 * MiB);
    void *huge = an_block_cache_alloc(&c, 100 * MiB, why, sizeof why);
    ck_assert_ptr_null(huge);
    ck_assert_msg(strstr(why, "104857600 bytes asked") && strstr(why, "6291456 bytes in use") &&
                      strstr(why, "0 cached") && strstr(why, "fake device full"),
                  "message: %s", why);
    ck_assert_ptr_null(an_block_cache_alloc(&c, SIZE_MAX - 5, why, sizeof why));
    void *s = an_block_cache_alloc(&c, 100, why, sizeof why); /* still usable */
    ck_assert_ptr_nonnull(s);
    an_block_cache_free(&c, s);
    an_block_cache_free(&c, b);
    check_close(&c, &d);
}
END_TEST

START_TEST(test_repeated_step_pattern_stops_raw_allocation_after_first_step) {
    fake_device d = {1024 * MiB, 0, 0};
    an_block_cache c;
    char why[256];
    an_block_cache_init(&c, fake_alloc, fake_free, &d);
    an_rng rng;
    an_rng_init(&rng, 5);
    enum { N = 200 };
    size_t sizes[N];
    for (int i = 0; i < N; i++) sizes[i] = 1 + (size_t)(an_rng_uniform(&rng) * (i % 3 == 0 ? 12 * MiB : 64 * 1024));
    void *weights = an_block_cache_alloc(&c, 7 * MiB, why, sizeof why); /* lives through the loop */
    int64_t after_first = 0;
    for (int step = 0; step < 20; step++) {
        void *p[N];
        /* forward: allocate everything; backward: free in reverse, with some gradients made late */
        for (int i = 0; i < N; i++) p[i] = an_block_cache_alloc(&c, sizes[i], why, sizeof why);
        for (int i = N - 1; i >= 0; i--) {
            ck_assert_ptr_nonnull(p[i]);
            an_block_cache_free(&c, p[i]);
            if (i % 10 == 0) an_block_cache_free(&c, an_block_cache_alloc(&c, sizes[i] / 2 + 1, why, sizeof why));
        }
        if (step == 0) after_first = c.stats.raw_allocs;
        ck_assert_int_eq(c.stats.raw_allocs, after_first);
        ck_assert_int_eq(c.stats.raw_frees, 0);
    }
    an_block_cache_free(&c, weights);
    check_close(&c, &d);
}
END_TEST

START_TEST(test_random_workload_never_overlaps_and_counts_match) {
    fake_device d = {96 * MiB, 0, 0};
    an_block_cache c;
    char why[256];
    an_block_cache_init(&c, fake_alloc, fake_free, &d);
    an_rng rng;
    an_rng_init(&rng, 11);
    enum { SLOTS = 300 };
    unsigned char *p[SLOTS] = {0};
    size_t n[SLOTS] = {0};
    for (int iter = 0; iter < 20000; iter++) {
        int k = (int)(an_rng_uniform(&rng) * SLOTS);
        if (p[k]) {
            for (size_t i = 0; i < n[k]; i += 97) REQUIRE(p[k][i] == (unsigned char)k);
            REQUIRE(p[k][n[k] - 1] == (unsigned char)k);
            REQUIRE(an_block_cache_free(&c, p[k]) == 1);
            p[k] = NULL;
        } else {
            double u = an_rng_uniform(&rng);
            n[k] = 1 + (size_t)(u < 0.9 ? u * 20000 : (u - 0.9) * 40 * MiB);
            p[k] = an_block_cache_alloc(&c, n[k], why, sizeof why);
            if (!p[k]) { /* the fake device is full: release and drop half the live blocks */
                REQUIRE(strstr(why, "bytes asked") != NULL);
                for (int j = 0; j < SLOTS; j += 2)
                    if (p[j]) an_block_cache_free(&c, p[j]), p[j] = NULL;
                continue;
            }
            memset(p[k], k, n[k]);
        }
        if (iter % 1000 == 0) an_block_cache_release(&c);
        size_t in_use = 0;
        int64_t live = 0;
        for (int j = 0; j < SLOTS; j++)
            if (p[j]) in_use += an_block_cache_round(n[j]), live++;
        REQUIRE(c.stats.blocks_in_use == live);
        REQUIRE(c.stats.in_use >= in_use); /* whole blocks when the rest was too small to split */
        REQUIRE(c.stats.in_use <= c.stats.reserved);
        REQUIRE(c.stats.reserved == d.held);
        REQUIRE(c.stats.segments == d.live);
    }
    for (int j = 0; j < SLOTS; j++) an_block_cache_free(&c, p[j]);
    ck_assert_uint_eq(c.stats.in_use, 0);
    an_block_cache_release(&c);
    ck_assert_uint_eq(d.held, 0);
    check_close(&c, &d);
}
END_TEST

/* A capture-like pass: blocks freed while parking are never handed out again (a graph will write
 * them at every replay), they stay counted in use, and after the graph frees them the counters are
 * back where they started; no segment is released while parking even when an allocation fails. */
START_TEST(test_parked_blocks_are_not_reused_until_freed_and_counters_return) {
    fake_device d = {64 * MiB, 0, 0};
    an_block_cache c;
    an_block_cache_init(&c, fake_alloc, fake_free, &d);
    char why[256];
    void *keep = an_block_cache_alloc(&c, 3 * MiB, why, sizeof why);
    void *old = an_block_cache_alloc(&c, 4 * MiB, why, sizeof why);
    REQUIRE(keep && old);
    an_block_cache_free(&c, old); /* a wholly free cached segment */
    an_block_cache_stats before = c.stats;
    an_block_cache_park_begin(&c);
    void *seen[16];
    int n_seen = 0;
    for (int i = 0; i < 8; i++) { /* each intermediate freed at once: without parking, all would share one block */
        void *p = an_block_cache_alloc(&c, (size_t)(1000 + 300 * i), why, sizeof why);
        REQUIRE(p != NULL);
        for (int j = 0; j < n_seen; j++) REQUIRE(seen[j] != p);
        seen[n_seen++] = p;
        REQUIRE(an_block_cache_free(&c, p) == 1);
    }
    void *out = an_block_cache_alloc(&c, 2 * MiB, why, sizeof why); /* the graph's output: kept */
    REQUIRE(out != NULL);
    REQUIRE(an_block_cache_alloc(&c, 80 * MiB, why, sizeof why) == NULL); /* too big: no release while parking */
    ck_assert_int_eq(c.stats.raw_frees, before.raw_frees);
    ck_assert_int_eq(c.stats.blocks_in_use, before.blocks_in_use + 9);
    void **parked = NULL;
    int64_t n = an_block_cache_park_end(&c, &parked);
    ck_assert_int_eq(n, 8);
    for (int64_t i = 0; i < n; i++) REQUIRE(parked[i] == seen[i]);
    void *after = an_block_cache_alloc(&c, 1000, why, sizeof why); /* parking off: never a parked block */
    for (int j = 0; j < n_seen; j++) REQUIRE(seen[j] != after);
    an_block_cache_free(&c, after);
    for (int64_t i = 0; i < n; i++) REQUIRE(an_block_cache_free(&c, parked[i]) == 1);
    free(parked);
    an_block_cache_free(&c, out);
    ck_assert_uint_eq(c.stats.in_use, before.in_use);
    ck_assert_int_eq(c.stats.blocks_in_use, before.blocks_in_use);
    an_block_cache_free(&c, keep);
    ck_assert_uint_eq(c.stats.in_use, 0);
    check_close(&c, &d);
}
END_TEST

int main(void) {
    Suite *s = suite_create("block_cache");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_sizes_round_to_512_bytes);
    tcase_add_test(tc, test_free_then_same_or_smaller_reuses_without_raw_allocation);
    tcase_add_test(tc, test_best_fit_across_size_bins);
    tcase_add_test(tc, test_blocks_split_and_merge_back_into_one_segment);
    tcase_add_test(tc, test_failed_raw_allocation_releases_cache_and_retries_then_reports);
    tcase_add_test(tc, test_repeated_step_pattern_stops_raw_allocation_after_first_step);
    tcase_add_test(tc, test_random_workload_never_overlaps_and_counts_match);
    tcase_add_test(tc, test_parked_blocks_are_not_reused_until_freed_and_counters_return);
    suite_add_tcase(s, tc);
    return test_run(s);
}
