/* tensor.c — tensor and storage lifetime, views, conversions and fills.
 * A tensor's storage is freed when the last tensor viewing it is released. */
#include "autograd/tensor.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/tape.h"   /* an_node (grad_fn's weak back-pointer to its output) */
#include "kernels/cuda.h"    /* an_cuda_memcpy, an_cuda_memset, an_cuda_fill_bits */

static an_storage *storage_new(an_ctx *ctx, an_device device, size_t nbytes) {
    an_storage *s = malloc(sizeof *s);
    AN_CHECK_NULL(ctx, s != NULL, AN_ERR_INTERNAL, "out of host memory");
    s->data = an_mem_alloc(ctx, device, nbytes);
    if (!s->data) {
        free(s);
        return NULL;
    }
    s->nbytes = nbytes;
    s->device = device;
    s->refcount = 1;
    s->tape_uses = 0;
    s->ctx = ctx;
    return s;
}

static void storage_release(an_storage *s) {
    if (!s || --s->refcount > 0) return; /* NULL: let go early (routing references) */
    an_mem_free(s->ctx, s->device, s->data, s->nbytes);
    free(s);
}

static an_tensor *tensor_header(an_ctx *ctx, an_dtype dtype, an_device device, int ndim, const int64_t *shape) {
    AN_CHECK_NULL(ctx, ndim >= 0 && ndim <= AN_MAX_DIMS, AN_ERR_INPUT, "tensor of %d dims (at most %d)", ndim,
                  AN_MAX_DIMS);
    AN_CHECK_NULL(ctx, device == AN_CPU || ctx->cuda != NULL, AN_ERR_INPUT, "CUDA tensor before an_ctx_use_cuda");
    AN_CHECK_NULL(ctx, device == AN_CPU || dtype != AN_F64, AN_ERR_INPUT, "f64 tensors live on the CPU only");
    an_tensor *t = calloc(1, sizeof *t);
    AN_CHECK_NULL(ctx, t != NULL, AN_ERR_INTERNAL, "out of host memory");
    t->dtype = dtype;
    t->device = device;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) {
            free(t);
            AN_CHECK_NULL(ctx, 0, AN_ERR_INPUT, "negative dimension %lld", (long long)shape[i]);
        }
        t->shape[i] = shape[i];
    }
    t->refcount = 1;
    t->ctx = ctx;
    ctx->live_tensors++;
    return t;
}

an_tensor *an_tensor_new(an_ctx *ctx, an_dtype dtype, an_device device, int ndim, const int64_t *shape) {
    an_tensor *t = tensor_header(ctx, dtype, device, ndim, shape);
    if (!t) return NULL;
    t->storage = storage_new(ctx, device, an_tensor_nbytes(t));
    if (!t->storage) {
        ctx->live_tensors--;
        free(t);
        return NULL;
    }
    return t;
}

an_status an_tensor_restore_storage(an_ctx *ctx, an_tensor *t) {
    AN_CHECK(ctx, !t->storage && t->offset == 0, AN_ERR_INTERNAL, "restore_storage of a tensor that %s",
             t->storage ? "still has its storage" : "views at an offset");
    t->storage = storage_new(ctx, t->device, an_tensor_nbytes(t));
    return t->storage ? AN_OK : an_error_status(ctx);
}

an_tensor *an_tensor_zeros(an_ctx *ctx, an_dtype dtype, an_device device, int ndim, const int64_t *shape) {
    an_tensor *t = an_tensor_new(ctx, dtype, device, ndim, shape);
    if (!t) return NULL;
    if (device == AN_CPU) memset(t->storage->data, 0, t->storage->nbytes);
    else if (an_cuda_memset(ctx, t->storage->data, 0, t->storage->nbytes) != AN_OK) {
        an_tensor_release(t);
        return NULL;
    }
    return t;
}

an_tensor *an_tensor_from_data(an_ctx *ctx, an_dtype dtype, int ndim, const int64_t *shape, const void *data) {
    an_tensor *t = an_tensor_new(ctx, dtype, AN_CPU, ndim, shape);
    if (t) memcpy(t->storage->data, data, an_tensor_nbytes(t));
    return t;
}

an_tensor *an_tensor_scalar(an_ctx *ctx, an_dtype dtype, an_device device, double value) {
    an_tensor *t = an_tensor_new(ctx, dtype, device, 0, NULL);
    if (t && an_tensor_fill(ctx, t, value) != AN_OK) {
        an_tensor_release(t);
        return NULL;
    }
    return t;
}

an_tensor *an_tensor_retain(an_tensor *t) {
    if (t) t->refcount++;
    return t;
}

void an_tensor_release(an_tensor *t) {
    if (!t) return;
    if (--t->refcount > 0) {
        if (t->refcount == t->routing_refs && t->storage) { /* nobody left reads the values */
            storage_release(t->storage);
            t->storage = NULL;
        }
        return;
    }
    if (t->grad_fn) an_node_forget_output(t->grad_fn, t);
    an_tensor_release(t->grad);
    storage_release(t->storage);
    t->ctx->live_tensors--;
    free(t);
}

int64_t an_tensor_numel(const an_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

size_t an_tensor_nbytes(const an_tensor *t) { return (size_t)an_tensor_numel(t) * an_dtype_size(t->dtype); }

void *an_tensor_data(const an_tensor *t) {
    if (!t->storage) return NULL; /* values let go: only routing references remained */
    return (char *)t->storage->data + (size_t)t->offset * an_dtype_size(t->dtype);
}

bool an_tensor_same_shape(const an_tensor *a, const an_tensor *b) {
    if (a->ndim != b->ndim) return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return false;
    return true;
}

const char *an_tensor_describe(const an_tensor *t, char *buf, size_t size) {
    size_t n = (size_t)snprintf(buf, size, "(");
    for (int i = 0; i < t->ndim && n < size; i++)
        n += (size_t)snprintf(buf + n, size - n, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    if (n < size)
        snprintf(buf + n, size - n, ") %s %s", an_dtype_name(t->dtype), t->device == AN_CPU ? "cpu" : "cuda");
    return buf;
}

static an_tensor *share(an_ctx *ctx, an_tensor *t, int ndim, const int64_t *shape, int64_t offset) {
    an_tensor *v = tensor_header(ctx, t->dtype, t->device, ndim, shape);
    if (!v) return NULL;
    v->storage = t->storage;
    v->storage->refcount++;
    v->offset = offset;
    return v;
}

an_tensor *an_tensor_view(an_ctx *ctx, an_tensor *t, int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    AN_CHECK_NULL(ctx, n == an_tensor_numel(t), AN_ERR_INPUT, "view of %lld elements over a tensor of %lld",
                  (long long)n, (long long)an_tensor_numel(t));
    return share(ctx, t, ndim, shape, t->offset);
}

an_tensor *an_tensor_rows(an_ctx *ctx, an_tensor *t, int64_t start, int64_t count) {
    AN_CHECK_NULL(ctx, t->ndim >= 1 && start >= 0 && count >= 0 && start + count <= t->shape[0], AN_ERR_INPUT,
                  "rows [%lld, %lld) out of range", (long long)start, (long long)(start + count));
    int64_t shape[AN_MAX_DIMS];
    memcpy(shape, t->shape, sizeof shape);
    shape[0] = count;
    int64_t row = t->shape[0] ? an_tensor_numel(t) / t->shape[0] : 0;
    return share(ctx, t, t->ndim, shape, t->offset + start * row);
}

bool an_tensor_stacked(const an_tensor *const *t, int n) {
    for (int i = 1; i < n; i++)
        if (!t[0]->storage || t[i]->storage != t[0]->storage || t[i]->dtype != t[0]->dtype ||
            t[i]->offset != t[i - 1]->offset + an_tensor_numel(t[i - 1]))
            return false;
    return true;
}

an_tensor *an_tensor_detach(an_ctx *ctx, an_tensor *t) { return share(ctx, t, t->ndim, t->shape, t->offset); }

an_status an_tensor_copy_into(an_ctx *ctx, an_tensor *dst, const an_tensor *src) {
    size_t n = (size_t)an_tensor_numel(src);
    AN_CHECK(ctx, (int64_t)n == an_tensor_numel(dst), AN_ERR_INPUT, "copy of %zu elements into %lld", n,
             (long long)an_tensor_numel(dst));
    if (src->device == AN_CPU && dst->device == AN_CPU) {
        an_dtype_convert(an_tensor_data(src), src->dtype, an_tensor_data(dst), dst->dtype, n);
        return AN_OK;
    }
    if (src->dtype == dst->dtype)
        return an_cuda_memcpy(ctx, an_tensor_data(dst), dst->device, an_tensor_data(src), src->device,
                              an_tensor_nbytes(src));
    if (src->device == AN_CUDA && dst->device == AN_CUDA)
        return an_cuda_cast(ctx, an_tensor_data(src), src->dtype, an_tensor_data(dst), dst->dtype, n);
    /* Across devices with a dtype change: convert on the host side. */
    size_t stage_bytes = n * an_dtype_size(src->device == AN_CPU ? dst->dtype : src->dtype);
    void *stage = malloc(stage_bytes ? stage_bytes : 1);
    AN_CHECK(ctx, stage != NULL, AN_ERR_INTERNAL, "out of host memory");
    an_status st;
    if (src->device == AN_CPU) {
        an_dtype_convert(an_tensor_data(src), src->dtype, stage, dst->dtype, n);
        st = an_cuda_memcpy(ctx, an_tensor_data(dst), AN_CUDA, stage, AN_CPU, stage_bytes);
    } else {
        st = an_cuda_memcpy(ctx, stage, AN_CPU, an_tensor_data(src), AN_CUDA, stage_bytes);
        if (st == AN_OK) an_dtype_convert(stage, src->dtype, an_tensor_data(dst), dst->dtype, n);
    }
    free(stage);
    return st;
}

an_tensor *an_tensor_to(an_ctx *ctx, const an_tensor *t, an_dtype dtype, an_device device) {
    an_tensor *out = an_tensor_new(ctx, dtype, device, t->ndim, t->shape);
    if (out && an_tensor_copy_into(ctx, out, t) != AN_OK) {
        an_tensor_release(out);
        return NULL;
    }
    return out;
}

double an_tensor_get(const an_tensor *t, int64_t i) { return an_dtype_load(an_tensor_data(t), t->dtype, (size_t)i); }
void an_tensor_set(an_tensor *t, int64_t i, double v) { an_dtype_store(an_tensor_data(t), t->dtype, (size_t)i, v); }

/* Fills t with n values from draw(); CUDA tensors are filled through a host staging copy. */
static an_status fill_with(an_ctx *ctx, an_tensor *t, double (*draw)(an_ctx *, const double *), const double *arg) {
    an_tensor *host = t;
    if (t->device != AN_CPU) {
        host = an_tensor_new(ctx, t->dtype, AN_CPU, t->ndim, t->shape);
        if (!host) return an_error_status(ctx);
    }
    int64_t n = an_tensor_numel(t);
    for (int64_t i = 0; i < n; i++) an_tensor_set(host, i, draw(ctx, arg));
    an_status st = AN_OK;
    if (host != t) {
        st = an_tensor_copy_into(ctx, t, host);
        an_tensor_release(host);
    }
    return st;
}

static double draw_uniform(an_ctx *ctx, const double *a) { return a[0] + (a[1] - a[0]) * an_rng_uniform(&ctx->rng); }
static double draw_normal(an_ctx *ctx, const double *a) { return a[0] + a[1] * an_rng_normal(&ctx->rng); }
static double draw_constant(an_ctx *ctx, const double *a) { (void)ctx; return a[0]; }

an_status an_tensor_fill_uniform(an_ctx *ctx, an_tensor *t, double low, double high) {
    return fill_with(ctx, t, draw_uniform, (double[]){low, high});
}
an_status an_tensor_fill_normal(an_ctx *ctx, an_tensor *t, double mean, double std) {
    return fill_with(ctx, t, draw_normal, (double[]){mean, std});
}
an_status an_tensor_fill(an_ctx *ctx, an_tensor *t, double value) {
    if (t->device == AN_CUDA) { /* the value's bits, rounded here as on the CPU, filled on the stream */
        uint64_t bits = 0;
        an_dtype_store(&bits, t->dtype, 0, value);
        return an_cuda_fill_bits(ctx, an_tensor_data(t), an_tensor_numel(t), (int)an_dtype_size(t->dtype), bits);
    }
    return fill_with(ctx, t, draw_constant, (double[]){value});
}

void an_tensor_set_requires_grad(an_tensor *t, bool requires_grad) { t->requires_grad = requires_grad; }

void an_tensor_zero_grad(an_tensor *t) {
    an_tensor_release(t->grad);
    t->grad = NULL;
}
