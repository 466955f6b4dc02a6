/* in_backward.c — the AdamW step taken during backward: each parameter is updated as soon as its
 * gradient is final (autograd/tape.c calls ctx->grad_ready when no node left on the tape reads
 * it), on the CUDA side stream, so the memory-bound update runs beside the backward's GEMMs
 * instead of after them.
 *
 * Rules:
 * - The same per-element update as an_optim_step (the same kernels' arithmetic, bit-identical
 *   results) with grad_scale 1: there is no clipping, because the global norm is known only
 *   after the last gradient (an_optim_backward_begin refuses max_grad_norm > 0).
 * - The gradient norm is still reported: each update chunk sums its gradient's squares as it
 *   reads them (float64, a fixed order, but not an_optim_step's order, so the two norms can differ
 *   in their last bits). A non-finite norm is an error at an_optim_backward_end, after the
 *   parameters took the update: unlike an_optim_step, the step cannot be skipped.
 * - Gradient accumulation works: begin before the last micro-batch's backward only; a parameter
 *   whose gradient came from earlier micro-batches alone is updated at the end.
 * - Gradients stay allocated until the caller's an_optim_zero_grad, after the end: the side
 *   stream reads them until the end joins it to the stream. */
#include "optim/internal.h"

#include <math.h>
#include <stdlib.h>

#include "kernels/cuda.h" /* an_cuda_adamw_side, an_cuda_side_join, an_cuda_sum_doubles */

static an_status update_entry(an_ctx *ctx, an_optim *opt, int i) {
    const optim_entry *e = &opt->entries[i];
    AN_TRY(optim_check_entry(ctx, e));
    opt->bwd_done[i] = true;
    if (e->end == e->start) return AN_OK;
    if ((*e->slot)->device == AN_CUDA) {
        an_adamw_segment seg = optim_entry_segment(e);
        seg.first_chunk = opt->bwd_first_chunk[i];
        return an_cuda_adamw_side(ctx, &opt->bwd_scalars, &seg, opt->bwd_grain, an_tensor_data(opt->bwd_partial));
    }
    opt->bwd_host_sum_sq += optim_cpu_sum_sq((*e->slot)->grad, e->start, e->end);
    optim_update_cpu_entry(&opt->bwd_scalars, e);
    return AN_OK;
}

/* ctx->grad_ready: every entry of this leaf, once. */
static an_status grad_ready(an_ctx *ctx, an_tensor *leaf, void *user) {
    an_optim *opt = user;
    for (int i = 0; i < opt->n_entries; i++) {
        if (*opt->entries[i].slot != leaf) continue;
        AN_CHECK(ctx, !opt->bwd_done[i], AN_ERR_INTERNAL,
                 "optimizer: %s gained gradient after its update in backward (a node read it again later in the "
                 "backward)", opt->entries[i].name);
        AN_TRY(update_entry(ctx, opt, i));
    }
    return AN_OK;
}

an_status an_optim_backward_begin(an_ctx *ctx, an_optim *opt) {
    AN_CHECK(ctx, !opt->in_backward && !ctx->grad_ready, AN_ERR_INTERNAL,
             "optimizer: an update in backward is already open");
    AN_CHECK(ctx, opt->config.max_grad_norm == 0, AN_ERR_INPUT,
             "optimizer: the update in backward cannot clip gradients (max_grad_norm %g): their global norm is known "
             "only after the last one; turn clipping off or step after backward",
             opt->config.max_grad_norm);
    int n = opt->n_entries;
    int64_t chunks = 0;
    if (opt->bwd_grain == 0) opt->bwd_grain = AN_ADAMW_SIDE_CHUNK;
    bool *done = realloc(opt->bwd_done, (size_t)(n ? n : 1) * sizeof *done);
    if (done) opt->bwd_done = done;
    int64_t *first = realloc(opt->bwd_first_chunk, (size_t)(n ? n : 1) * sizeof *first);
    if (first) opt->bwd_first_chunk = first;
    AN_CHECK(ctx, done && first, AN_ERR_INTERNAL, "optimizer: out of host memory");
    for (int i = 0; i < n; i++) {
        const optim_entry *e = &opt->entries[i];
        AN_TRY(optim_check_entry(ctx, e));
        done[i] = false;
        first[i] = chunks;
        if ((*e->slot)->device == AN_CUDA) chunks += (e->end - e->start + opt->bwd_grain - 1) / opt->bwd_grain;
    }
    if (chunks > 0) {
        if (!opt->bwd_partial || opt->bwd_chunks != chunks) {
            an_tensor_release(opt->bwd_partial);
            int64_t bytes = (chunks + 1) * (int64_t)sizeof(double); /* u8: f64 tensors are CPU-only */
            opt->bwd_partial = an_tensor_new(ctx, AN_U8, AN_CUDA, 1, &bytes);
            opt->bwd_chunks = opt->bwd_partial ? chunks : 0;
            if (!opt->bwd_partial) return an_error_status(ctx);
        }
        /* entries without a gradient this step leave their chunks at 0 */
        AN_TRY(an_cuda_memset(ctx, an_tensor_data(opt->bwd_partial), 0, (size_t)chunks * sizeof(double)));
    }
    opt->bwd_scalars = optim_scalars(opt, 1.0);
    opt->bwd_host_sum_sq = 0;
    opt->in_backward = true;
    ctx->grad_ready = grad_ready;
    ctx->grad_ready_user = opt;
    return AN_OK;
}

/* Closes the update: no more hooks, and the stream waits for the side stream's updates. */
static an_status close_update(an_ctx *ctx, an_optim *opt) {
    opt->in_backward = false;
    if (ctx->grad_ready_user == opt) ctx->grad_ready = NULL, ctx->grad_ready_user = NULL;
    return opt->bwd_partial && ctx->cuda ? an_cuda_side_join(ctx) : AN_OK;
}

an_status an_optim_backward_end(an_ctx *ctx, an_optim *opt, an_optim_report *report) {
    AN_CHECK(ctx, opt->in_backward, AN_ERR_INTERNAL, "optimizer: an_optim_backward_end without its begin");
    an_status st = AN_OK;
    /* gradients the backward did not report: from earlier micro-batches only, or reached through a
       view that outlived the parameter's own last use */
    for (int i = 0; i < opt->n_entries && st == AN_OK; i++)
        if (!opt->bwd_done[i] && (*opt->entries[i].slot)->grad) st = update_entry(ctx, opt, i);
    an_status closed = close_update(ctx, opt);
    AN_TRY(st);
    AN_TRY(closed);
    double sum_sq = opt->bwd_host_sum_sq;
    if (opt->bwd_chunks > 0) {
        double *partial = an_tensor_data(opt->bwd_partial), dev_sum = 0;
        AN_TRY(an_cuda_sum_doubles(ctx, partial, opt->bwd_chunks, partial + opt->bwd_chunks));
        AN_TRY(an_cuda_memcpy(ctx, &dev_sum, AN_CPU, partial + opt->bwd_chunks, AN_CUDA, sizeof dev_sum));
        sum_sq += dev_sum;
    }
    double norm = sqrt(sum_sq), lr = an_optim_lr(opt);
    opt->step++;
    if (report) *report = (an_optim_report){.step = opt->step, .lr = lr, .grad_norm = norm, .grad_scale = 1.0};
    AN_CHECK(ctx, isfinite(norm), AN_ERR_INPUT,
             "optimizer: the gradient norm is %g at step %lld; the update in backward has already applied it, so "
             "the parameters hold non-finite values now (resume from the last checkpoint)",
             norm, (long long)opt->step);
    return AN_OK;
}

an_status an_optim_backward_grain(an_ctx *ctx, an_optim *opt, int64_t elements) {
    AN_CHECK(ctx, elements >= 8 && elements % 8 == 0 && !opt->in_backward, AN_ERR_INPUT,
             "optimizer: update-in-backward blocks of %lld elements (a multiple of 8, set outside a step)",
             (long long)elements);
    opt->bwd_grain = elements;
    return AN_OK;
}

an_status an_optim_backward_cancel(an_ctx *ctx, an_optim *opt) {
    if (!opt->in_backward) return AN_OK;
    return close_update(ctx, opt);
}
