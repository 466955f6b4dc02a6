/* optim.c — milliseconds per AdamW step of a full fine-tune shaped like DeepSeek-R1-Distill-Qwen-1.5B
 * (339 parameters, 1.78 G elements: bf16 parameters with fp32 masters and moments, fp32 gradients):
 * the one-launch gradient norm and update (an_cuda_sum_squares_multi, an_cuda_adamw_multi),
 * an_optim_step itself, and the update in backward's per-parameter side launches (an_cuda_adamw_side,
 * here with nothing beside them), in the same process on the same buffers. (The per-parameter launches they
 * replaced were measured by this program at commit dc8521d; docs/performance.md has both.)
 *
 *   bench/optim [--layers N (28)] [--repeats N (10)] [--clip X (1.0)]
 *
 * Timing: each sample is one call between two stream synchronisations (CLOCK_MONOTONIC); the
 * median of N samples after two warm-up samples is printed. GB/s counts the bytes each must move
 * at least: the norm reads the fp32 gradient (4 B/parameter); the update reads the gradient,
 * reads and writes master, exp_avg, exp_avg_sq and writes the bf16 parameter (30 B); the step does
 * both (34 B). A device-to-device copy of 1 GB gives the card's bandwidth in the same run. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/cuda.h"  /* the launchers timed here */
#include "optim/optim.h"

enum { MAX_PARAMS = 4096 };

typedef struct {
    an_ctx *ctx;
    an_optim *opt;
    int n;
    an_tensor *params[MAX_PARAMS];          /* bf16 on the device, each with an fp32 .grad */
    char names[MAX_PARAMS][96];
    an_adamw_segment *table_dev;             /* (n) on the device: the multi-tensor launches' table */
    an_adamw_segment *table;                 /* (n) the same on the host: the side launches' segments */
    double *partial_dev;                     /* the side launches' per-block sums of squares */
    size_t partial_bytes;
    int64_t side_grain;                      /* elements a side block covers in the SIDE job */
    int64_t chunks;
    double *sum_dev;                         /* one device double: the norm's sum of squares */
    an_adamw_scalars k;
    an_tensor *copy_src, *copy_dst;          /* 1 GB each */
    an_tensor *tile_bf16, *tile_f32;         /* (TILE) N(0, 0.02) and N(0, 1e-3): what tensors are filled with */
} bench;

enum { TILE = 1 << 20 }; /* random values drawn on the host once, copied over the 1.78 G on the device */

/* Fills t (on the device) with copies of the tile of its dtype. */
static an_status fill(bench *b, an_tensor *t) {
    const an_tensor *tile = t->dtype == AN_BF16 ? b->tile_bf16 : b->tile_f32;
    size_t es = an_dtype_size(t->dtype);
    int64_t n = an_tensor_numel(t);
    for (int64_t i = 0; i < n; i += TILE) {
        size_t count = (size_t)(n - i < TILE ? n - i : TILE);
        AN_TRY(an_cuda_memcpy(b->ctx, (char *)an_tensor_data(t) + (size_t)i * es, AN_CUDA, an_tensor_data(tile),
                              AN_CUDA, count * es));
    }
    return AN_OK;
}

enum { NORM, UPDATE, STEP, SIDE, COPY };

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static an_tensor *state(bench *b, int i, const char *suffix) {
    char name[128];
    snprintf(name, sizeof name, "%s.%s", b->names[i], suffix);
    return an_optim_state_find(b->opt, name);
}

static an_status norm(bench *b) {
    double sum;
    AN_TRY(an_cuda_sum_squares_multi(b->ctx, b->table_dev, b->n, b->chunks, b->sum_dev));
    return an_cuda_memcpy(b->ctx, &sum, AN_CPU, b->sum_dev, AN_CUDA, sizeof sum);
}

/* The update as the update in backward runs it, one an_cuda_adamw_side launch a parameter (with the
 * gradients' sums of squares), alone on the device here, then the join. */
static an_status side(bench *b) {
    int64_t first = 0;
    for (int i = 0; i < b->n; i++) {
        an_adamw_segment seg = b->table[i];
        seg.first_chunk = first;
        first += (seg.n + b->side_grain - 1) / b->side_grain;
        AN_TRY(an_cuda_adamw_side(b->ctx, &b->k, &seg, b->side_grain, b->partial_dev));
    }
    return an_cuda_side_join(b->ctx);
}

static an_status run(bench *b, int what) {
    switch (what) {
    case NORM: return norm(b);
    case UPDATE: return an_cuda_adamw_multi(b->ctx, &b->k, b->table_dev, b->n, b->chunks);
    case STEP: return an_optim_step(b->ctx, b->opt, NULL);
    case SIDE: return side(b);
    default:
        return an_cuda_memcpy(b->ctx, an_tensor_data(b->copy_dst), AN_CUDA, an_tensor_data(b->copy_src), AN_CUDA,
                              an_tensor_nbytes(b->copy_src));
    }
}

static int cmp_double(const void *x, const void *y) {
    double a = *(const double *)x, c = *(const double *)y;
    return (a > c) - (a < c);
}

/* Median milliseconds of `what`, or a negative value after printing the error. */
static double time_it(bench *b, int what, int repeats) {
    double samples[256];
    if (repeats > 256) repeats = 256;
    for (int s = -2; s < repeats; s++) {
        if (an_cuda_synchronize(b->ctx) != AN_OK) return -1;
        double t0 = now_ms();
        if (run(b, what) != AN_OK || an_cuda_synchronize(b->ctx) != AN_OK) {
            fprintf(stderr, "%s\n", an_error_message(b->ctx));
            return -1;
        }
        if (s >= 0) samples[s] = now_ms() - t0;
    }
    qsort(samples, (size_t)repeats, sizeof *samples, cmp_double);
    return samples[repeats / 2];
}

static int add(bench *b, const char *name, int64_t rows, int64_t cols) {
    if (b->n == MAX_PARAMS) return -1;
    int64_t shape[2] = {rows, cols};
    int ndim = cols > 0 ? 2 : 1;
    an_tensor *p = an_tensor_new(b->ctx, AN_BF16, AN_CUDA, ndim, shape);
    if (!p || fill(b, p) != AN_OK) return an_tensor_release(p), -1;
    an_tensor_set_requires_grad(p, true);
    p->grad = an_tensor_new(b->ctx, AN_F32, AN_CUDA, ndim, shape);
    snprintf(b->names[b->n], sizeof b->names[b->n], "%s", name);
    b->params[b->n++] = p;
    if (!p->grad || fill(b, p->grad) != AN_OK) return -1;
    return an_optim_add(b->ctx, b->opt, name, &b->params[b->n - 1], an_optim_no_decay(name), 0, an_tensor_numel(p)) ==
                   AN_OK
               ? 0
               : -1;
}

int main(int argc, char **argv) {
    long layers = 28, repeats = 10;
    double clip = 1.0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--layers") && i + 1 < argc) layers = atol(argv[++i]);
        else if (!strcmp(argv[i], "--repeats") && i + 1 < argc) repeats = atol(argv[++i]);
        else if (!strcmp(argv[i], "--clip") && i + 1 < argc) clip = atof(argv[++i]);
        else {
            fprintf(stderr, "unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    if (layers < 1 || layers > 300 || repeats < 1) {
        fprintf(stderr, "--layers in 1..300, --repeats >= 1\n");
        return 2;
    }
    bench *b = calloc(1, sizeof *b);
    b->ctx = an_ctx_new(1);
    if (!b->ctx || an_ctx_use_cuda(b->ctx, 0) != AN_OK) {
        fprintf(stderr, "bench/optim needs a CUDA device: %s\n", b->ctx ? an_error_message(b->ctx) : "out of memory");
        return 1;
    }
    an_ctx *ctx = b->ctx;
    setvbuf(stdout, NULL, _IOLBF, 0);
    int64_t tile = TILE;
    an_tensor *host_bf16 = an_tensor_new(ctx, AN_BF16, AN_CPU, 1, &tile), *host_f32 = an_tensor_new(ctx, AN_F32, AN_CPU, 1, &tile);
    if (host_bf16 && host_f32 && an_tensor_fill_normal(ctx, host_bf16, 0, 0.02) == AN_OK &&
        an_tensor_fill_normal(ctx, host_f32, 0, 1e-3) == AN_OK) {
        b->tile_bf16 = an_tensor_to(ctx, host_bf16, AN_BF16, AN_CUDA);
        b->tile_f32 = an_tensor_to(ctx, host_f32, AN_F32, AN_CUDA);
    }
    an_tensor_release(host_bf16), an_tensor_release(host_f32);
    an_adamw_config c = an_adamw_config_default();
    c.max_grad_norm = clip;
    int rc = 1;
    if (!b->tile_bf16 || !b->tile_f32 || an_optim_create(ctx, &c, &b->opt) != AN_OK) goto fail;
    const int64_t H = 1536, KV = 256, I = 8960, V = 151936;
    char name[96];
    if (add(b, "model.embed_tokens.weight", V, H)) goto fail;
    for (long l = 0; l < layers; l++) {
        const struct {
            const char *what;
            int64_t rows, cols;
        } shapes[] = {{"self_attn.q_proj.weight", H, H}, {"self_attn.q_proj.bias", H, 0},
                      {"self_attn.k_proj.weight", KV, H}, {"self_attn.k_proj.bias", KV, 0},
                      {"self_attn.v_proj.weight", KV, H}, {"self_attn.v_proj.bias", KV, 0},
                      {"self_attn.o_proj.weight", H, H}, {"mlp.gate_proj.weight", I, H},
                      {"mlp.up_proj.weight", I, H},       {"mlp.down_proj.weight", H, I},
                      {"input_layernorm.weight", H, 0},   {"post_attention_layernorm.weight", H, 0}};
        for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
            snprintf(name, sizeof name, "model.layers.%ld.%s", l, shapes[s].what);
            if (add(b, name, shapes[s].rows, shapes[s].cols)) goto fail;
        }
    }
    if (add(b, "model.norm.weight", H, 0) || add(b, "lm_head.weight", V, H)) goto fail;

    /* the multi-tensor table, as src/optim builds it */
    an_adamw_segment *table = calloc((size_t)b->n, sizeof *table);
    int64_t total = 0;
    for (int i = 0; i < b->n; i++) {
        an_tensor *p = b->params[i];
        table[i] = (an_adamw_segment){.master = an_tensor_data(state(b, i, "master")),
                                      .exp_avg = an_tensor_data(state(b, i, "exp_avg")),
                                      .exp_avg_sq = an_tensor_data(state(b, i, "exp_avg_sq")),
                                      .grad = an_tensor_data(p->grad), .param = an_tensor_data(p),
                                      .n = an_tensor_numel(p), .first_chunk = b->chunks,
                                      .grad_dtype = AN_F32, .param_dtype = AN_BF16,
                                      .no_decay = an_optim_no_decay(b->names[i])};
        b->chunks += (table[i].n + AN_ADAMW_CHUNK - 1) / AN_ADAMW_CHUNK;
        total += table[i].n;
    }
    b->table_dev = an_mem_alloc(ctx, AN_CUDA, (size_t)b->n * sizeof *table);
    b->sum_dev = an_mem_alloc(ctx, AN_CUDA, sizeof(double));
    int64_t gb = (int64_t)1 << 30;
    b->copy_src = an_tensor_new(ctx, AN_U8, AN_CUDA, 1, &gb);
    b->copy_dst = an_tensor_new(ctx, AN_U8, AN_CUDA, 1, &gb);
    bool ok = b->table_dev && b->sum_dev && b->copy_src && b->copy_dst &&
              an_cuda_memcpy(ctx, b->table_dev, AN_CUDA, table, AN_CPU, (size_t)b->n * sizeof *table) == AN_OK;
    b->table = table;
    /* a partial per block at the finest grain the SIDE jobs use, AN_ADAMW_SIDE_CHUNK */
    b->partial_bytes = (size_t)(total / AN_ADAMW_SIDE_CHUNK + b->n) * sizeof(double);
    b->partial_dev = an_mem_alloc(ctx, AN_CUDA, b->partial_bytes);
    if (!ok || !b->partial_dev) goto fail;
    b->k = (an_adamw_scalars){.decay = 1 - c.lr * c.weight_decay, .beta1 = c.beta1, .beta2 = c.beta2, .eps = c.eps,
                              .grad_scale = 1.0, .step_size = c.lr / (1 - c.beta1), .bc2_sqrt = sqrt(1 - c.beta2)};

    printf("optim: %d parameters, %.3f G elements (bf16, fp32 grads, masters and moments), %ld layers; "
           "median of %ld samples\n",
           b->n, (double)total * 1e-9, layers, repeats);
    printf("%-44s %9s %8s\n", "what", "ms", "GB/s");
    const struct {
        int what;
        const char *label;
        double bytes_per_param;
    } jobs[] = {{COPY, "copy 1 GiB device to device", 0},
                {NORM, "norm, one launch (an_cuda_sum_squares_multi)", 4},
                {UPDATE, "update, one launch (an_cuda_adamw_multi)", 30},
                {STEP, "an_optim_step (norm, clip, update)", 34},
                {SIDE, "side launches, blocks of 4096 (an_cuda_adamw_side)", 30},
                {SIDE, "side launches, blocks of 32768", 30}};
    rc = 0;
    for (size_t j = 0; j < sizeof jobs / sizeof *jobs; j++) {
        b->side_grain = strstr(jobs[j].label, "32768") ? 32768 : AN_ADAMW_SIDE_CHUNK;
        double ms = time_it(b, jobs[j].what, (int)repeats);
        if (ms < 0) {
            rc = 1;
            continue;
        }
        double bytes = jobs[j].what == COPY ? 2.0 * (double)gb : jobs[j].bytes_per_param * (double)total;
        printf("%-44s %9.3f %8.0f\n", jobs[j].label, ms, bytes / ms * 1e-6);
    }
    goto done;
fail:
    fprintf(stderr, "setup failed: %s\n", an_error_message(ctx));
done:
    for (int i = 0; i < b->n; i++) an_tensor_release(b->params[i]);
    an_optim_free(b->opt);
    if (b->table_dev) an_mem_free(ctx, AN_CUDA, b->table_dev, (size_t)b->n * sizeof(an_adamw_segment));
    if (b->sum_dev) an_mem_free(ctx, AN_CUDA, b->sum_dev, sizeof(double));
    if (b->partial_dev) an_mem_free(ctx, AN_CUDA, b->partial_dev, b->partial_bytes);
    free(b->table);
    an_tensor_release(b->copy_src), an_tensor_release(b->copy_dst);
    an_tensor_release(b->tile_bf16), an_tensor_release(b->tile_f32);
    an_ctx_free(ctx);
    free(b);
    return rc;
}
