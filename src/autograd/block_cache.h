/* block_cache.h — a caching allocator over a raw device allocator (cudaMalloc/cudaFree on the GPU,
 * anything in tests): freed blocks are kept and handed out again, so a steady-state training loop
 * makes no raw allocation or release (cudaFree synchronises the whole device).
 *
 * Rules:
 * - Sizes are rounded up to AN_BLOCK_ALIGN (512) bytes. Requests of at most AN_BLOCK_SMALL (1 MiB)
 *   come from the small pool, carved out of AN_BLOCK_SMALL_SEGMENT (2 MiB) raw segments; larger ones
 *   from the large pool, whose segments are the rounded size rounded again up to 2 MiB. A pool never
 *   lends to the other, so small tensors do not fragment big blocks.
 * - Best fit: the smallest free block of the pool that is large enough. The rest is split off as a
 *   free block when it is at least 512 bytes (small pool) or more than 1 MiB (large pool); a freed
 *   block merges with free address neighbours of its segment, so a segment whose blocks are all
 *   free is one block again and can go back to the raw allocator.
 * - Reuse is safe without events only because every user of the memory works in one order: on the
 *   GPU, every kernel and copy of the owning an_cuda_state runs on its one stream, so a kernel
 *   launched after a free runs after every kernel that used the block before. Memory that another
 *   stream touches will need an event recorded at free and waited on before reuse.
 * - When the raw allocator fails, every wholly free segment is released and the allocation is
 *   retried once; a second failure reports the size asked, the bytes in use and the bytes cached.
 * - Parking (for CUDA graph capture, kernels/graph.cu): between an_block_cache_park_begin and
 *   _park_end, a freed block is not returned to its pool but parked: it stays counted in use and
 *   nobody else receives it, because a captured graph will write it again at every replay. Blocks
 *   allocated while parking come from the pools as usual (the same best fit), and a wholly free
 *   segment is never released while parking (the raw release would synchronise). park_end hands
 *   the parked blocks to the caller (the graph), which frees them with an_block_cache_free once
 *   the graph is gone.
 * - Not thread-safe: one cache belongs to one an_cuda_state, used from one thread. */
#ifndef AN_BLOCK_CACHE_H
#define AN_BLOCK_CACHE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define AN_BLOCK_ALIGN ((size_t)512)
#define AN_BLOCK_SMALL ((size_t)1 << 20)
#define AN_BLOCK_SMALL_SEGMENT ((size_t)2 << 20)
#define AN_BLOCK_LARGE_ROUND ((size_t)2 << 20)
#define AN_BLOCK_BINS 64 /* free-list bins: one a power of two of the size */

/* Raw allocation of `bytes`: 0 and *out on success, else nonzero with the reason in why. */
typedef int (*an_raw_alloc_fn)(void *user, size_t bytes, void **out, char *why, size_t why_size);
typedef void (*an_raw_free_fn)(void *user, void *ptr);

typedef struct an_block an_block;

typedef struct {
    size_t in_use;          /* bytes of blocks handed out (rounded sizes) */
    size_t reserved;        /* bytes held from the raw allocator: in use + cached */
    size_t peak_in_use;     /* most in_use since creation */
    size_t peak_reserved;   /* most reserved since creation */
    int64_t raw_allocs;     /* raw allocator calls that succeeded */
    int64_t raw_frees;      /* raw releases */
    int64_t segments;       /* raw regions held now */
    int64_t blocks_in_use;  /* blocks handed out now */
} an_block_cache_stats;

typedef struct {
    an_raw_alloc_fn raw_alloc;
    an_raw_free_fn raw_free;
    void *user;                 /* passed to raw_alloc/raw_free */
    /* free blocks of pool [0] small, [1] large, binned by floor(log2(size)): each bin ascending by
       (size, address), and every block of a bin smaller than every block of a later bin */
    an_block *free_bins[2][AN_BLOCK_BINS];
    an_block **table;           /* blocks handed out, hashed by address (chained), table_size buckets */
    size_t table_size;
    an_block_cache_stats stats;
    int parking;                /* 1 between park_begin and park_end */
    int park_failed;            /* a park could not record its block (host memory): reported at park_end */
    void **parked;              /* blocks freed while parking, n_parked of parked_cap */
    int64_t n_parked, parked_cap;
} an_block_cache;

void an_block_cache_init(an_block_cache *cache, an_raw_alloc_fn raw_alloc, an_raw_free_fn raw_free, void *user);
/* The size a request of `bytes` occupies (rounded to AN_BLOCK_ALIGN, at least AN_BLOCK_ALIGN). */
size_t an_block_cache_round(size_t bytes);
/* A block of at least `bytes`, or NULL with the reason in why. */
void *an_block_cache_alloc(an_block_cache *cache, size_t bytes, char *why, size_t why_size);
/* Returns ptr's block to the cache; 0 when ptr was not handed out by this cache (then nothing
 * happens), 1 otherwise. NULL is accepted and returns 1. */
int an_block_cache_free(an_block_cache *cache, void *ptr);
/* Starts parking freed blocks (see the rules above); parking must not already be on. */
void an_block_cache_park_begin(an_block_cache *cache);
/* Stops parking. *out receives a malloc'ed array of the parked blocks' addresses (caller frees the
 * array, and each block with an_block_cache_free when nothing will use it again) and the return
 * value their count; -1 when a block could not be recorded for lack of host memory (the blocks
 * recorded are in *out all the same; the others stay in use until the cache is destroyed). */
int64_t an_block_cache_park_end(an_block_cache *cache, void ***out);
/* Releases every segment whose blocks are all free to the raw allocator; returns the bytes released. */
size_t an_block_cache_release(an_block_cache *cache);
/* Releases every segment, in use or not, and all bookkeeping; the cache is empty afterwards. */
void an_block_cache_destroy(an_block_cache *cache);

#ifdef __cplusplus
}
#endif

#endif
