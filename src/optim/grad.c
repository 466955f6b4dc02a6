/* grad.c — what the optimizer does to gradients before it uses them: the weight-decay name rule,
 * zero_grad, the float64 sum of squares behind the global norm, and clip_grad_norm_.
 *
 * Norms are accumulated in float64 whatever the gradient dtype (on CUDA by one
 * an_cuda_sum_squares_multi launch over every gradient, in a fixed order of its own:
 * deterministic, but not the CPU's sequential order; one copy brings the sum back); clipping
 * multiplies in float64 on the CPU (fp32 on CUDA, an_cuda_scale) and rounds once into the
 * gradient's dtype. */
#include "optim/internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>  /* strncasecmp */

#include "kernels/cuda.h"  /* an_cuda_scale, an_cuda_sum_squares_multi */

enum { CHUNK = 1024 }; /* elements widened to float64 at a time */

/* The first occurrence of `pattern` in `from`, ignoring case, or NULL. */
static const char *find_ci(const char *from, const char *pattern) {
    size_t n = strlen(pattern);
    for (const char *p = from; *p; p++)
        if (strncasecmp(p, pattern, n) == 0) return p;
    return NULL;
}

bool an_optim_no_decay(const char *name) {
    if (find_ci(name, "bias") || find_ci(name, "layernorm") || find_ci(name, "rmsnorm") || find_ci(name, "embed"))
        return true;
    /* transformers: r"(?:^|\.)norm(?:$|\.)" and r"_norm(?:$|\.)" */
    for (const char *p = find_ci(name, "norm"); p; p = find_ci(p + 1, "norm")) {
        bool ends = p[4] == '\0' || p[4] == '.';
        bool starts = p == name || p[-1] == '.' || p[-1] == '_';
        if (ends && starts) return true;
    }
    return false;
}

void an_optim_zero_grad(an_optim *opt) {
    for (int i = 0; i < opt->n_entries; i++)
        if (*opt->entries[i].slot) an_tensor_zero_grad(*opt->entries[i].slot);
}

void an_optim_zero_grad_params(const an_param *params, int n_params) {
    for (int i = 0; i < n_params; i++)
        if (*params[i].slot) an_tensor_zero_grad(*params[i].slot);
}

an_tensor *optim_slice(an_ctx *ctx, an_tensor *t, int64_t start, int64_t end) {
    an_tensor *flat = an_tensor_view(ctx, t, 1, (int64_t[]){an_tensor_numel(t)});
    if (!flat) return NULL;
    an_tensor *rows = an_tensor_rows(ctx, flat, start, end - start);
    an_tensor_release(flat);
    return rows;
}

double optim_cpu_sum_sq(const an_tensor *grad, int64_t start, int64_t end) {
    size_t size = an_dtype_size(grad->dtype);
    const char *data = (const char *)an_tensor_data(grad) + (size_t)start * size;
    double buf[CHUNK], sum = 0;
    for (int64_t i = start; i < end; i += CHUNK) {
        size_t n = (size_t)(end - i < CHUNK ? end - i : CHUNK);
        an_dtype_convert(data + (size_t)(i - start) * size, grad->dtype, buf, AN_F64, n);
        for (size_t j = 0; j < n; j++) sum += buf[j] * buf[j];
    }
    return sum;
}

int64_t optim_layout(an_adamw_segment *table, int n) {
    int64_t chunks = 0;
    for (int i = 0; i < n; i++) {
        table[i].first_chunk = chunks;
        chunks += (table[i].n + AN_ADAMW_CHUNK - 1) / AN_ADAMW_CHUNK;
    }
    return chunks;
}

an_status optim_table_sum_sq(an_ctx *ctx, const an_adamw_segment *table, int n, int64_t n_chunks, double *slot,
                             double *sum) {
    AN_TRY(an_cuda_sum_squares_multi(ctx, table, n, n_chunks, slot));
    return an_cuda_memcpy(ctx, sum, AN_CPU, slot, AN_CUDA, sizeof *sum);
}

an_status optim_grads_sum_sq(an_ctx *ctx, const an_tensor *const *grads, const int64_t *starts, const int64_t *ends,
                             int n, double *total) {
    int n_cuda = 0;
    for (int i = 0; i < n; i++) n_cuda += grads[i] && grads[i]->device == AN_CUDA;
    an_adamw_segment *table = n_cuda ? calloc((size_t)n_cuda, sizeof *table) : NULL; /* (n_cuda) */
    AN_CHECK(ctx, !n_cuda || table, AN_ERR_INTERNAL, "gradient norm: out of host memory");
    int used = 0;
    an_status st = AN_OK;
    for (int i = 0; i < n && st == AN_OK; i++) {
        const an_tensor *g = grads[i];
        if (!g || g->device != AN_CUDA) continue;
        int64_t start = starts ? starts[i] : 0, end = ends ? ends[i] : an_tensor_numel(g);
        if (g->dtype != AN_F32 && g->dtype != AN_BF16 && g->dtype != AN_F16)
            st = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__,
                              "gradient norm: a %s gradient on CUDA; f32, bf16 or f16 expected", an_dtype_name(g->dtype));
        else if (end > start)
            table[used++] = (an_adamw_segment){
                .grad = (const char *)an_tensor_data(g) + (size_t)start * an_dtype_size(g->dtype),
                .n = end - start, .grad_dtype = (int32_t)g->dtype};
    }
    double cuda_sum = 0;
    if (st == AN_OK && used) {
        int64_t chunks = optim_layout(table, used);
        size_t bytes = (size_t)used * sizeof *table;
        char *dev = an_mem_alloc(ctx, AN_CUDA, bytes + sizeof(double)); /* the table, then the sum */
        if (!dev) st = an_error_status(ctx);                             /* an_mem_alloc recorded why */
        if (st == AN_OK) st = an_cuda_memcpy(ctx, dev, AN_CUDA, table, AN_CPU, bytes);
        if (st == AN_OK)
            st = optim_table_sum_sq(ctx, (const an_adamw_segment *)(void *)dev, used, chunks,
                                    (double *)(void *)(dev + bytes), &cuda_sum);
        if (dev) an_mem_free(ctx, AN_CUDA, dev, bytes + sizeof(double));
    }
    free(table);
    AN_TRY(st);
    *total += cuda_sum;
    for (int i = 0; i < n; i++) /* the host gradients, in order */
        if (grads[i] && grads[i]->device != AN_CUDA)
            *total += optim_cpu_sum_sq(grads[i], starts ? starts[i] : 0, ends ? ends[i] : an_tensor_numel(grads[i]));
    return AN_OK;
}

double optim_clip_scale(double max_norm, double total_norm) {
    if (max_norm <= 0) return 1.0;
    double coef = max_norm / (total_norm + OPTIM_GRAD_EPS);
    return coef < 1.0 ? coef : 1.0;
}

/* grad *= s, rounding once into grad's dtype. */
static an_status scale_grad(an_ctx *ctx, an_tensor *grad, double s) {
    int64_t total = an_tensor_numel(grad);
    void *data = an_tensor_data(grad);
    if (grad->device == AN_CUDA) return an_cuda_scale(ctx, grad->dtype, data, total, s, data);
    size_t size = an_dtype_size(grad->dtype);
    double buf[CHUNK];
    for (int64_t i = 0; i < total; i += CHUNK) {
        size_t n = (size_t)(total - i < CHUNK ? total - i : CHUNK);
        char *at = (char *)data + (size_t)i * size;
        an_dtype_convert(at, grad->dtype, buf, AN_F64, n);
        for (size_t j = 0; j < n; j++) buf[j] *= s;
        an_dtype_convert(buf, AN_F64, at, grad->dtype, n);
    }
    return AN_OK;
}

/* torch/nn/utils/clip_grad.py, clip_grad_norm_ (norm_type 2, error_if_nonfinite=True):
 *   total_norm = vector_norm(stack([vector_norm(g) for g in grads]))
 *   clip_coef = max_norm / (total_norm + 1e-6); clip_coef_clamped = clamp(clip_coef, max=1.0)
 *   g.mul_(clip_coef_clamped)
 * Multiplying by a clamped 1.0 changes nothing, so grads are touched only when the coef is < 1. */
an_status an_optim_clip_grad_norm(an_ctx *ctx, an_tensor *const *params, int n_params, double max_norm,
                                  double *total_norm) {
    AN_CHECK(ctx, max_norm > 0 && isfinite(max_norm), AN_ERR_INPUT, "clip_grad_norm: max_norm = %g, expected > 0",
             max_norm);
    double sum_sq = 0;
    const an_tensor **grads = malloc((size_t)(n_params ? n_params : 1) * sizeof *grads);
    AN_CHECK(ctx, grads != NULL, AN_ERR_INTERNAL, "clip_grad_norm: out of host memory");
    for (int i = 0; i < n_params; i++) grads[i] = params[i] ? params[i]->grad : NULL;
    an_status st = optim_grads_sum_sq(ctx, grads, NULL, NULL, n_params, &sum_sq);
    free(grads);
    AN_TRY(st);
    double total = sqrt(sum_sq);
    if (total_norm) *total_norm = total;
    AN_CHECK(ctx, isfinite(total), AN_ERR_INPUT,
             "clip_grad_norm: the total gradient norm is %g; no gradient was clipped", total);
    double s = optim_clip_scale(max_norm, total);
    if (s < 1.0)
        for (int i = 0; i < n_params; i++)
            if (params[i] && params[i]->grad) AN_TRY(scale_grad(ctx, params[i]->grad, s));
    return AN_OK;
}
