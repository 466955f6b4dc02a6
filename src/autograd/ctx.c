/* ctx.c — context lifetime, error recording and accounted allocation (CPU here, CUDA through the
 * launchers in kernels/). */
#include "autograd/ctx.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/tape.h"   /* an_tape_new, an_tape_free */
#include "kernels/cuda.h"    /* an_cuda_* runtime launchers; stubs that fail when built without CUDA */

an_ctx *an_ctx_new(uint64_t seed) {
    an_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx) return NULL;
    ctx->device = AN_CPU;
    an_rng_init(&ctx->rng, seed);
    ctx->tape = an_tape_new();
    if (!ctx->tape) {
        free(ctx);
        return NULL;
    }
    return ctx;
}

void an_ctx_free(an_ctx *ctx) {
    if (!ctx) return;
    an_tape_free(ctx, ctx->tape);
    if (ctx->cuda) an_cuda_state_free(ctx->cuda);
    free(ctx->profile);
    free(ctx);
}

int an_cuda_compiled(void) { return an_cuda_available_in_build(); }

an_status an_ctx_use_cuda(an_ctx *ctx, int index) {
    AN_CHECK(ctx, an_cuda_available_in_build(), AN_ERR_INPUT,
             "device: cuda requested but this anneal was built without CUDA (configure with nvcc on PATH)");
    if (!ctx->cuda) {
        char why[256] = "";
        ctx->cuda = an_cuda_state_new(index, why, sizeof why);
        AN_CHECK(ctx, ctx->cuda != NULL, AN_ERR_INPUT, "device: cuda:%d unavailable: %s", index, why);
    }
    ctx->device = AN_CUDA;
    return AN_OK;
}

an_status an_error_set(an_ctx *ctx, an_status status, const char *file, int line, const char *fmt, ...) {
    if (ctx->error_status != AN_OK) return status; /* keep the first, root-cause message */
    const char *base = strrchr(file, '/');
    int n = snprintf(ctx->error, sizeof ctx->error, "%s:%d: ", base ? base + 1 : file, line);
    va_list ap;
    va_start(ap, fmt);
    if (n > 0 && (size_t)n < sizeof ctx->error) vsnprintf(ctx->error + n, sizeof ctx->error - (size_t)n, fmt, ap);
    va_end(ap);
    ctx->error_status = status;
    return status;
}

const char *an_error_message(const an_ctx *ctx) { return ctx->error; }
an_status an_error_status(const an_ctx *ctx) { return ctx->error_status; }
void an_error_clear(an_ctx *ctx) {
    ctx->error_status = AN_OK;
    ctx->error[0] = '\0';
}

void *an_mem_alloc(an_ctx *ctx, an_device device, size_t bytes) {
    void *p = NULL;
    size_t n = bytes ? bytes : 1;
    if (device == AN_CPU) {
        /* 64-byte alignment for SIMD; aligned_alloc wants a multiple of the alignment. */
        p = aligned_alloc(64, (n + 63) & ~(size_t)63);
        AN_CHECK_NULL(ctx, p != NULL, AN_ERR_INTERNAL, "out of host memory allocating %zu bytes", bytes);
    } else {
        AN_CHECK_NULL(ctx, ctx->cuda != NULL, AN_ERR_INTERNAL, "CUDA allocation before an_ctx_use_cuda");
        char why[512] = "";
        p = an_cuda_malloc(ctx->cuda, n, why, sizeof why); /* the caching allocator (kernels/runtime.cu) */
        AN_CHECK_NULL(ctx, p != NULL, AN_ERR_INTERNAL, "CUDA allocation of %zu bytes failed: %s", bytes, why);
    }
    an_mem_stats *m = &ctx->mem[device];
    m->current += bytes;
    m->allocations++;
    if (m->current > m->peak) m->peak = m->current;
    return p;
}

void an_mem_free(an_ctx *ctx, an_device device, void *ptr, size_t bytes) {
    if (!ptr) return;
    if (device == AN_CPU) free(ptr);
    else an_cuda_free(ctx->cuda, ptr);
    ctx->mem[device].current -= bytes;
}

void an_mem_reset_peak(an_ctx *ctx, an_device device) { ctx->mem[device].peak = ctx->mem[device].current; }
