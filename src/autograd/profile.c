/* profile.c — per-op forward and backward time tables (see profile.h). */
#include "autograd/profile.h"

#include <stdlib.h>
#include <time.h>

#include "autograd/op_table.h"  /* an_op_table, an_op_count */
#include "kernels/cuda.h"       /* an_cuda_synchronize */

struct an_profile {
    double forward_s[64], backward_s[64]; /* by index in an_op_table */
    long forward_n[64], backward_n[64];
    double mark;
};

static double wall(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double an_profile_clock(an_ctx *ctx) {
    if (ctx->cuda) (void)an_cuda_synchronize(ctx); /* an error stays in ctx for the op that caused it */
    return wall();
}

static int index_of(const an_op *op) {
    for (int i = 0; i < an_op_count && i < 64; i++)
        if (an_op_table[i] == op) return i;
    return -1;
}

an_status an_profile_begin(an_ctx *ctx) {
    AN_CHECK(ctx, an_op_count <= 64, AN_ERR_INTERNAL, "profile: %d ops exceed the table of 64", an_op_count);
    if (!ctx->profile) ctx->profile = malloc(sizeof *ctx->profile);
    AN_CHECK(ctx, ctx->profile != NULL, AN_ERR_INTERNAL, "profile: out of host memory");
    *ctx->profile = (an_profile){0};
    ctx->profile->mark = an_profile_clock(ctx);
    return AN_OK;
}

void an_profile_mark(an_ctx *ctx) {
    if (ctx->profile) ctx->profile->mark = an_profile_clock(ctx);
}

void an_profile_forward(an_ctx *ctx, const an_op *op) {
    int i = index_of(op);
    if (!ctx->profile || i < 0) return;
    double now = an_profile_clock(ctx);
    ctx->profile->forward_s[i] += now - ctx->profile->mark;
    ctx->profile->forward_n[i]++;
    ctx->profile->mark = now;
}

void an_profile_backward(an_ctx *ctx, const an_op *op, double seconds) {
    int i = index_of(op);
    if (!ctx->profile || i < 0) return;
    ctx->profile->backward_s[i] += seconds;
    ctx->profile->backward_n[i]++;
}

long an_profile_calls(const an_ctx *ctx, const an_op *op, bool backward) {
    int i = index_of(op);
    if (!ctx->profile || i < 0) return 0;
    return backward ? ctx->profile->backward_n[i] : ctx->profile->forward_n[i];
}

void an_profile_print(const an_ctx *ctx, FILE *out) {
    const an_profile *p = ctx->profile;
    if (!p) return;
    int order[64], n = an_op_count < 64 ? an_op_count : 64;
    double total = 0;
    for (int i = 0; i < n; i++) order[i] = i, total += p->forward_s[i] + p->backward_s[i];
    for (int i = 1; i < n; i++) /* insertion sort by total time, largest first */
        for (int j = i; j > 0; j--) {
            int a = order[j - 1], b = order[j];
            if (p->forward_s[a] + p->backward_s[a] >= p->forward_s[b] + p->backward_s[b]) break;
            order[j - 1] = b, order[j] = a;
        }
    fprintf(out, "%-22s %10s %6s %10s %6s %6s\n", "op", "forward ms", "calls", "backward ms", "calls", "share");
    for (int k = 0; k < n; k++) {
        int i = order[k];
        if (!p->forward_n[i] && !p->backward_n[i]) continue;
        fprintf(out, "%-22s %10.2f %6ld %10.2f %6ld %5.1f%%\n", an_op_table[i]->name, 1e3 * p->forward_s[i],
                p->forward_n[i], 1e3 * p->backward_s[i], p->backward_n[i],
                total > 0 ? 100 * (p->forward_s[i] + p->backward_s[i]) / total : 0.0);
    }
}

void an_profile_end(an_ctx *ctx) {
    free(ctx->profile);
    ctx->profile = NULL;
}
