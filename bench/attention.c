/* attention.c — milliseconds and TFLOP/s of the training attention (bf16, causal, unsegmented) on
 * each of its CUDA paths: the library's choice (cuDNN's forward; the backward on
 * kernels/attention_wgmma.cu where it runs, else cuDNN's), cuDNN alone, kernels/attention_mma.cu,
 * and the CUDA-core kernels for a head size the tensor-core paths do not take. The backward is
 * also timed with dq alone and with dk, dv alone. (Moved here from test_cuda_attention, which
 * times nothing: tests assert, benches measure.)
 *
 *   bench/attention [--repeats N (20)]
 *
 * Shapes: DeepSeek-R1-Distill-Qwen-1.5B at one 2048-token sequence (B 1, T 2048, 16 q heads, 4 kv
 * heads: the 7B's grouping) and at the training bench's batch (B 8, T 1024, Hq 12, Hkv 2), head
 * size 128; then head size 96. TFLOP/s counts QK^T and PV over the causal half (4 B T^2 Hq D / 2),
 * the backward at 2.5x that.
 *
 * Timing: each sample is one call between two stream synchronisations (CLOCK_MONOTONIC); the
 * median of N samples after two warm-up samples is printed. Inputs are N(0, 1) bf16. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "autograd/tensor.h" /* an_tensor_new, an_tensor_fill_normal, an_tensor_copy_into */
#include "kernels/cuda.h"     /* an_cuda_attention(_backward), the path switches */

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static int cmp_double(const void *x, const void *y) {
    double a = *(const double *)x, c = *(const double *)y;
    return (a > c) - (a < c);
}

/* The tensors of one shape on the device: q, k, v, dout (random), out, lse, dq, dk, dv. */
typedef struct {
    an_attention_shape sh;
    an_tensor *t[9];
} problem;

enum { FORWARD, BACKWARD, BACKWARD_DQ, BACKWARD_DKV };

static an_status run(an_ctx *ctx, problem *p, int what) {
    void *d[9];
    for (int i = 0; i < 9; i++) d[i] = an_tensor_data(p->t[i]);
    if (what == FORWARD) return an_cuda_attention(ctx, &p->sh, AN_BF16, d[0], d[1], d[2], NULL, AN_I64, d[4], d[5]);
    return an_cuda_attention_backward(ctx, &p->sh, AN_BF16, d[0], d[1], d[2], NULL, AN_I64, d[4], d[5], d[3],
                                      what == BACKWARD_DKV ? NULL : d[6], what == BACKWARD_DQ ? NULL : d[7],
                                      what == BACKWARD_DQ ? NULL : d[8]);
}

/* Median milliseconds of `what`, or a negative value after printing the error. */
static double time_it(an_ctx *ctx, problem *p, int what, int repeats) {
    double samples[256];
    if (repeats > 256) repeats = 256;
    for (int s = -2; s < repeats; s++) {
        if (an_cuda_synchronize(ctx) != AN_OK) return -1;
        double t0 = now_ms();
        if (run(ctx, p, what) != AN_OK || an_cuda_synchronize(ctx) != AN_OK) {
            fprintf(stderr, "%s\n", an_error_message(ctx));
            return -1;
        }
        if (s >= 0) samples[s] = now_ms() - t0;
    }
    qsort(samples, (size_t)repeats, sizeof *samples, cmp_double);
    return samples[repeats / 2];
}

static void problem_free(problem *p) {
    for (int i = 0; i < 9; i++) an_tensor_release(p->t[i]);
}

static an_status problem_make(an_ctx *ctx, problem *p, int64_t B, int64_t T, int64_t Hq, int64_t Hkv, int64_t D) {
    memset(p, 0, sizeof *p);
    int64_t qs[4] = {B, T, Hq, D}, ks[4] = {B, T, Hkv, D}, ls[3] = {B, Hq, T};
    for (int i = 0; i < 9; i++) {
        bool kv = i == 1 || i == 2 || i == 7 || i == 8;
        an_tensor *t = i == 5 ? an_tensor_new(ctx, AN_F32, AN_CUDA, 3, ls)
                              : an_tensor_new(ctx, AN_BF16, AN_CUDA, 4, kv ? ks : qs);
        p->t[i] = t;
        if (!t) return an_error_status(ctx);
        if (i <= 3) { /* random inputs, drawn on the host */
            an_tensor *h = an_tensor_new(ctx, AN_BF16, AN_CPU, 4, kv ? ks : qs);
            an_status st = h ? an_tensor_fill_normal(ctx, h, 0, 1) : an_error_status(ctx);
            if (st == AN_OK) st = an_tensor_copy_into(ctx, t, h);
            an_tensor_release(h);
            AN_TRY(st);
        }
    }
    p->sh = (an_attention_shape){B, T, Hq, Hkv, D, 1.0 / sqrt((double)D)};
    return AN_OK;
}

/* One row: the forward and the backward (whole, dq alone, dk and dv alone) on the current path. */
static int time_shape(an_ctx *ctx, int64_t B, int64_t T, int64_t Hq, int64_t Hkv, int64_t D, const char *path,
                      int repeats) {
    problem p;
    if (problem_make(ctx, &p, B, T, Hq, Hkv, D) != AN_OK) {
        fprintf(stderr, "setup: %s\n", an_error_message(ctx));
        problem_free(&p);
        return 1;
    }
    double ms[4];
    for (int w = 0; w < 4; w++)
        if ((ms[w] = time_it(ctx, &p, w, repeats)) < 0) {
            problem_free(&p);
            return 1;
        }
    double flops = 2.0 * 2.0 * (double)(T * T) / 2 * (double)(D * Hq * B);
    printf("B %lld T %lld Hq %lld Hkv %lld D %lld  %-24s forward %7.3f ms (%5.1f TFLOP/s)  backward %7.3f ms "
           "(%5.1f TFLOP/s; dq alone %.3f, dk and dv alone %.3f)\n",
           (long long)B, (long long)T, (long long)Hq, (long long)Hkv, (long long)D, path, ms[FORWARD],
           flops / ms[FORWARD] * 1e-9, ms[BACKWARD], 2.5 * flops / ms[BACKWARD] * 1e-9, ms[BACKWARD_DQ],
           ms[BACKWARD_DKV]);
    problem_free(&p);
    return 0;
}

int main(int argc, char **argv) {
    long repeats = 20;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--repeats") && i + 1 < argc) repeats = atol(argv[++i]);
        else {
            fprintf(stderr, "unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    if (repeats < 1) {
        fprintf(stderr, "--repeats >= 1\n");
        return 2;
    }
    an_ctx *ctx = an_ctx_new(5);
    if (!ctx || an_ctx_use_cuda(ctx, 0) != AN_OK) {
        fprintf(stderr, "bench/attention needs a CUDA device: %s\n", ctx ? an_error_message(ctx) : "out of memory");
        return 1;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("attention, bf16, causal; median of %ld calls\n", repeats);
    const int64_t shapes[2][4] = {{1, 2048, 16, 4}, {8, 1024, 12, 2}};
    int rc = 0;
    for (int i = 0; i < 2 && rc == 0; i++) {
        const int64_t *d = shapes[i];
        rc |= time_shape(ctx, d[0], d[1], d[2], d[3], 128, "library's choice", (int)repeats);
        if (an_cuda_set_attention_wgmma(ctx, false) != AN_OK) rc = 1;
        rc |= time_shape(ctx, d[0], d[1], d[2], d[3], 128, "cuDNN", (int)repeats);
        if (an_cuda_set_attention_cudnn(ctx, false) != AN_OK) rc = 1;
        rc |= time_shape(ctx, d[0], d[1], d[2], d[3], 128, "attention_mma.cu", (int)repeats);
        if (an_cuda_set_attention_cudnn(ctx, true) != AN_OK || an_cuda_set_attention_wgmma(ctx, true) != AN_OK) rc = 1;
    }
    if (rc == 0) rc = time_shape(ctx, 1, 2048, 16, 4, 96, "CUDA cores (D 96)", (int)repeats);
    an_ctx_free(ctx);
    return rc;
}
