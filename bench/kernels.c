/* kernels.c — microseconds per call and achieved GB/s of the memory-bound launchers of
 * kernels/cuda.h (rmsnorm forward/backward, rope forward/backward, and linear_cross_entropy's
 * per-chunk an_cuda_cross_entropy_rows_grad) at the DeepSeek-R1-Distill-Qwen-1.5B training shape,
 * next to a device-to-device cudaMemcpy of the same bytes in the same run.
 *
 *   bench/kernels [--rows N (8192)] [--hidden D (1536)] [--heads H (12)] [--kv-heads H (2)]
 *                 [--head-dim D (128)] [--dtype bf16|f16|f32] [--repeats N (20)] [--batch K (10)]
 *                 [--ce-rows N (1024)] [--vocab V (151936)]
 *
 * The cross-entropy chunk (ce-rows, vocab) replaces its logits by dlogits in place, so after the
 * first call each call reads the previous one's gradients (finite). Its GB/s counts one read and
 * one write of the logits.
 *
 * Timing: each sample is K back-to-back launches between two stream synchronisations, timed with
 * CLOCK_MONOTONIC and divided by K (the launches queue up, so the host's launch cost hides behind
 * the GPU's work); the median of N samples after three warm-up samples is printed. GB/s counts the
 * bytes the op must move at least (each input read once, each output written once), so 100% of
 * the copy's figure means the kernel runs at the copy's bandwidth. Inputs are N(0, 1). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "autograd/cpu/cpu.h"  /* an_cpu_rope_inv_freq */
#include "autograd/ops.h"      /* an_rope_config */
#include "kernels/cuda.h"      /* the launchers timed here */

typedef struct {
    const char *what;
    int kind;
    int64_t rows, width; /* rmsnorm: (rows, D); rope: (rows, H * head_dim) */
    int64_t heads;       /* rope only */
    double sign;         /* rope only */
    bool grad_w;         /* rmsnorm backward: also grad_w */
} job;

enum { RMSNORM_FWD, RMSNORM_BWD, ROPE, MEMCPY, CE_ROWS_GRAD, CE_MEMCPY };

typedef struct {
    an_ctx *ctx;
    an_dtype dtype;
    int64_t head_dim;
    double *inv_freq; /* (head_dim / 2) */
    void *x, *w, *g, *y, *dx, *dw, *pos; /* device buffers, large enough for every job */
    float *rstd;
    void *logits, *logits_copy, *targets; /* (ce_rows, vocab) twice, (ce_rows) i32 */
    float *lse, *loss;                    /* (ce_rows) */
} bench;

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec * 1e-3;
}

static an_status launch(bench *b, const job *j) {
    switch (j->kind) {
    case RMSNORM_FWD:
        return an_cuda_rmsnorm(b->ctx, b->dtype, b->x, b->w, j->rows, j->width, 1e-6, b->y, b->rstd);
    case RMSNORM_BWD:
        return an_cuda_rmsnorm_backward(b->ctx, b->dtype, b->x, b->w, b->rstd, b->g, j->rows, j->width, b->dx,
                                        j->grad_w ? b->dw : NULL, 0);
    case ROPE:
        return an_cuda_rope(b->ctx, b->dtype, b->x, b->pos, AN_I32, j->rows, j->heads, b->head_dim, b->inv_freq, 0,
                            j->sign, b->y);
    case CE_ROWS_GRAD:
        return an_cuda_cross_entropy_rows_grad(b->ctx, b->dtype, b->logits, b->targets, AN_I32, j->rows, j->width,
                                               -100, 1.0 / (double)j->rows, b->lse, b->loss);
    case CE_MEMCPY:
        return an_cuda_memcpy(b->ctx, b->logits_copy, AN_CUDA, b->logits, AN_CUDA,
                              (size_t)(j->rows * j->width) * an_dtype_size(b->dtype));
    default:
        return an_cuda_memcpy(b->ctx, b->y, AN_CUDA, b->x, AN_CUDA,
                              (size_t)(j->rows * j->width) * an_dtype_size(b->dtype));
    }
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median microseconds per call of j, or a negative value after printing the error. */
static double time_job(bench *b, const job *j, int repeats, int batch) {
    double *samples = malloc((size_t)repeats * sizeof *samples);
    if (!samples) return -1;
    for (int s = -3; s < repeats; s++) {
        if (an_cuda_synchronize(b->ctx) != AN_OK) goto fail;
        double t0 = now_us();
        for (int k = 0; k < batch; k++)
            if (launch(b, j) != AN_OK) goto fail;
        if (an_cuda_synchronize(b->ctx) != AN_OK) goto fail;
        if (s >= 0) samples[s] = (now_us() - t0) / batch;
    }
    qsort(samples, (size_t)repeats, sizeof *samples, cmp_double);
    double median = samples[repeats / 2];
    free(samples);
    return median;
fail:
    fprintf(stderr, "%s: %s\n", j->what, an_error_message(b->ctx));
    free(samples);
    return -1;
}

/* Bytes j must move at least: rmsnorm forward reads x, w and writes y, rstd; backward reads x, w,
 * rstd, grad_y and writes grad_x (and grad_w); rope reads x and writes out; the cross-entropy
 * chunk reads its logits and writes dlogits over them (its targets, lse and losses left out: 12
 * bytes a row); the copy reads and writes its bytes. */
static double job_bytes(const bench *b, const job *j) {
    double es = (double)an_dtype_size(b->dtype), n = (double)(j->rows * j->width);
    double row_f32 = 4.0 * (double)j->rows, vec = es * (double)j->width;
    switch (j->kind) {
    case RMSNORM_FWD: return 2 * n * es + vec + row_f32;
    case RMSNORM_BWD: return 3 * n * es + vec + row_f32 + (j->grad_w ? vec : 0);
    default: return 2 * n * es;
    }
}

static void *device_buffer(an_ctx *ctx, an_dtype dtype, int64_t n, an_tensor **keep) {
    *keep = an_tensor_new(ctx, dtype, AN_CUDA, 1, &n);
    if (!*keep || an_tensor_fill_normal(ctx, *keep, 0, 1) != AN_OK) return NULL;
    return an_tensor_data(*keep);
}

int main(int argc, char **argv) {
    long rows = 8192, hidden = 1536, heads = 12, kv_heads = 2, head_dim = 128, repeats = 20, batch = 10;
    long ce_rows = 1024, vocab = 151936;
    an_dtype dtype = AN_BF16;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--rows") && i + 1 < argc) rows = atol(argv[++i]);
        else if (!strcmp(argv[i], "--hidden") && i + 1 < argc) hidden = atol(argv[++i]);
        else if (!strcmp(argv[i], "--heads") && i + 1 < argc) heads = atol(argv[++i]);
        else if (!strcmp(argv[i], "--kv-heads") && i + 1 < argc) kv_heads = atol(argv[++i]);
        else if (!strcmp(argv[i], "--head-dim") && i + 1 < argc) head_dim = atol(argv[++i]);
        else if (!strcmp(argv[i], "--repeats") && i + 1 < argc) repeats = atol(argv[++i]);
        else if (!strcmp(argv[i], "--batch") && i + 1 < argc) batch = atol(argv[++i]);
        else if (!strcmp(argv[i], "--ce-rows") && i + 1 < argc) ce_rows = atol(argv[++i]);
        else if (!strcmp(argv[i], "--vocab") && i + 1 < argc) vocab = atol(argv[++i]);
        else if (!strcmp(argv[i], "--dtype") && i + 1 < argc) {
            if (!an_dtype_parse(argv[++i], &dtype) || !an_dtype_is_float(dtype) || dtype == AN_F64) {
                fprintf(stderr, "--dtype %s: expected bf16, f16 or f32\n", argv[i]);
                return 2;
            }
        } else {
            fprintf(stderr, "unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    if (rows < 1 || hidden < 1 || heads < 1 || kv_heads < 1 || head_dim < 2 || head_dim % 2 || repeats < 1 ||
        batch < 1 || ce_rows < 1 || vocab < 1) {
        fprintf(stderr, "sizes must be >= 1 (head dim even)\n");
        return 2;
    }
    an_ctx *ctx = an_ctx_new(1);
    if (!ctx || an_ctx_use_cuda(ctx, 0) != AN_OK) {
        fprintf(stderr, "bench/kernels needs a CUDA device: %s\n", ctx ? an_error_message(ctx) : "out of memory");
        an_ctx_free(ctx);
        return 1;
    }
    int64_t width = hidden > heads * head_dim ? hidden : heads * head_dim, n = rows * width;
    bench b = {.ctx = ctx, .dtype = dtype, .head_dim = head_dim};
    an_tensor *keep[13] = {0};
    b.x = device_buffer(ctx, dtype, n, &keep[0]);
    b.g = device_buffer(ctx, dtype, n, &keep[1]);
    b.y = device_buffer(ctx, dtype, n, &keep[2]);
    b.dx = device_buffer(ctx, dtype, n, &keep[3]);
    b.w = device_buffer(ctx, dtype, width, &keep[4]);
    b.dw = device_buffer(ctx, dtype, width, &keep[5]);
    b.rstd = device_buffer(ctx, AN_F32, rows, &keep[6]);
    b.logits = device_buffer(ctx, dtype, (int64_t)ce_rows * vocab, &keep[8]); /* N(0, 1) logits */
    b.logits_copy = device_buffer(ctx, dtype, (int64_t)ce_rows * vocab, &keep[9]);
    b.lse = device_buffer(ctx, AN_F32, ce_rows, &keep[10]);
    b.loss = device_buffer(ctx, AN_F32, ce_rows, &keep[11]);
    int64_t rows64 = rows, ce_rows64 = ce_rows;
    an_tensor *targets_h = an_tensor_new(ctx, AN_I32, AN_CPU, 1, &ce_rows64);
    an_tensor *pos_h = an_tensor_new(ctx, AN_I32, AN_CPU, 1, &rows64);
    b.inv_freq = malloc((size_t)(head_dim / 2) * sizeof *b.inv_freq);
    int rc = 1;
    if (!b.x || !b.g || !b.y || !b.dx || !b.w || !b.dw || !b.rstd || !pos_h || !b.inv_freq || !b.logits ||
        !b.logits_copy || !b.lse || !b.loss || !targets_h) {
        fprintf(stderr, "allocation failed: %s\n", an_error_message(ctx));
        goto done;
    }
    for (int64_t r = 0; r < rows; r++) an_tensor_set(pos_h, r, (double)(r % 1024)); /* sequences of 1024 */
    for (int64_t r = 0; r < ce_rows; r++) an_tensor_set(targets_h, r, (double)((r * 7919) % vocab));
    keep[7] = an_tensor_to(ctx, pos_h, AN_I32, AN_CUDA);
    keep[12] = an_tensor_to(ctx, targets_h, AN_I32, AN_CUDA);
    if (!keep[7] || !keep[12]) {
        fprintf(stderr, "positions, targets: %s\n", an_error_message(ctx));
        goto done;
    }
    b.pos = an_tensor_data(keep[7]);
    b.targets = an_tensor_data(keep[12]);
    an_rope_config rope = {AN_ROPE_NEOX, 10000, 0, 1, 4, 8192};
    an_cpu_rope_inv_freq(&rope, head_dim, b.inv_freq);
    /* rmsnorm runs in the forward of 57 norms; every one of them is its own launch. */
    const job jobs[] = {
        {"copy (rmsnorm bytes)", MEMCPY, rows, hidden, 0, 0, false},
        {"rmsnorm forward", RMSNORM_FWD, rows, hidden, 0, 0, false},
        {"rmsnorm backward dx", RMSNORM_BWD, rows, hidden, 0, 0, false},
        {"rmsnorm backward dx+dw", RMSNORM_BWD, rows, hidden, 0, 0, true},
        {"copy (rope q bytes)", MEMCPY, rows, heads * head_dim, 0, 0, false},
        {"rope forward q", ROPE, rows, heads * head_dim, heads, 1.0, false},
        {"rope backward q", ROPE, rows, heads * head_dim, heads, -1.0, false},
        {"copy (rope k bytes)", MEMCPY, rows, kv_heads * head_dim, 0, 0, false},
        {"rope forward k", ROPE, rows, kv_heads * head_dim, kv_heads, 1.0, false},
        {"rope backward k", ROPE, rows, kv_heads * head_dim, kv_heads, -1.0, false},
        {"copy (ce chunk bytes)", CE_MEMCPY, ce_rows, vocab, 0, 0, false},
        {"cross_entropy rows_grad", CE_ROWS_GRAD, ce_rows, vocab, 0, 0, false},
    };
    printf("kernels: %s rows %ld hidden %ld heads %ld/%ld head_dim %ld, cross-entropy chunk %ld x %ld; median of "
           "%ld samples of %ld calls\n",
           an_dtype_name(dtype), rows, hidden, heads, kv_heads, head_dim, ce_rows, vocab, repeats, batch);
    printf("%-24s %10s %10s %8s\n", "op", "us/call", "GB/s", "of copy");
    double copy_gbs = 0;
    rc = 0;
    for (size_t i = 0; i < sizeof jobs / sizeof *jobs; i++) {
        double us = time_job(&b, &jobs[i], (int)repeats, (int)batch);
        if (us < 0) {
            rc = 1;
            continue;
        }
        double gbs = job_bytes(&b, &jobs[i]) / us * 1e-3;
        if (jobs[i].kind == MEMCPY || jobs[i].kind == CE_MEMCPY) copy_gbs = gbs;
        printf("%-24s %10.1f %10.0f %7.0f%%\n", jobs[i].what, us, gbs, copy_gbs > 0 ? 100 * gbs / copy_gbs : 0);
    }
done:
    free(b.inv_freq);
    an_tensor_release(pos_h), an_tensor_release(targets_h);
    for (int i = 0; i < 13; i++) an_tensor_release(keep[i]);
    an_ctx_free(ctx);
    return rc;
}
