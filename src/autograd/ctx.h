/* ctx.h — the runtime context a run owns and passes down: device, RNG, tape, memory counters,
 * the last error, and (when a GPU is in use) the CUDA state. There is no other mutable global. */
#ifndef AN_CTX_H
#define AN_CTX_H

#include <stddef.h>
#include <stdint.h>

#include "autograd/error.h"
#include "autograd/rng.h"

typedef enum { AN_CPU = 0, AN_CUDA = 1, AN_DEVICE_COUNT } an_device;

typedef struct {
    size_t current;      /* bytes held now */
    size_t peak;         /* most bytes held at once since creation or an_mem_reset_peak */
    int64_t allocations; /* number of allocations made */
} an_mem_stats;

typedef struct an_tape an_tape;
typedef struct an_cuda_state an_cuda_state;
typedef struct an_tensor an_tensor;
/* Called by backward for a leaf that requires grad once no node left on the tape reads it: its
 * gradient is final and its values may change (src/optim's update in backward installs it). */
typedef an_status (*an_grad_ready_fn)(an_ctx *ctx, an_tensor *leaf, void *user);

struct an_ctx {
    an_device device;        /* where new tensors go unless a call says otherwise */
    an_rng rng;              /* dropout, initialisation, sampling */
    an_tape *tape;           /* nodes recorded since the last backward */
    int no_grad_depth;       /* > 0: ops record nothing */
    an_mem_stats mem[AN_DEVICE_COUNT]; /* requested bytes of tensors; the CUDA cache: an_cuda_memory_stats */
    int64_t live_tensors;    /* tensor structs alive; tests use it to prove memory is released */
    an_status error_status;
    char error[1024];
    an_cuda_state *cuda;     /* stream, cuBLASLt handle, workspace; NULL until an_ctx_use_cuda */
    struct an_profile *profile; /* per-op times (autograd/profile.h); NULL when off */
    an_grad_ready_fn grad_ready; /* NULL unless an optimizer updates during backward */
    void *grad_ready_user;
};

/* A new CPU context seeded with `seed`; NULL only when out of memory. Caller frees it. */
an_ctx *an_ctx_new(uint64_t seed);
/* Frees the tape and the CUDA state. Every tensor of this context must be released first. */
void an_ctx_free(an_ctx *ctx);
/* Selects CUDA device `index` for new tensors; AN_ERR_INPUT when this build has no CUDA or the
 * machine has no such device. */
an_status an_ctx_use_cuda(an_ctx *ctx, int index);
/* True when this build was compiled with the CUDA backend (it may still find no GPU). */
int an_cuda_compiled(void);

/* Raw memory with accounting. Returns NULL and records an error when the allocation fails. */
void *an_mem_alloc(an_ctx *ctx, an_device device, size_t bytes);
void an_mem_free(an_ctx *ctx, an_device device, void *ptr, size_t bytes);
void an_mem_reset_peak(an_ctx *ctx, an_device device);

#endif
