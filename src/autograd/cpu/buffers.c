/* buffers.c — float64 and int64 working copies of CPU tensors for the reference kernels. */
#include "autograd/cpu/cpu.h"

#include <stdlib.h>
#include <string.h>

static double *alloc_f64(an_ctx *ctx, int64_t n) {
    double *p = malloc((size_t)(n ? n : 1) * sizeof(double));
    AN_CHECK_NULL(ctx, p != NULL, AN_ERR_INTERNAL, "out of host memory for %lld doubles", (long long)n);
    return p;
}

static an_status check_cpu_float(an_ctx *ctx, const an_tensor *t) {
    AN_CHECK(ctx, t->device == AN_CPU, AN_ERR_INTERNAL, "CPU kernel given a CUDA tensor");
    AN_CHECK(ctx, an_dtype_is_float(t->dtype), AN_ERR_INPUT, "expected a float tensor, got %s",
             an_dtype_name(t->dtype));
    return AN_OK;
}

an_status an_f64_read(an_ctx *ctx, const an_tensor *t, an_f64 *out) {
    AN_TRY(check_cpu_float(ctx, t));
    if (t->dtype == AN_F64) {
        *out = (an_f64){an_tensor_data(t), false};
        return AN_OK;
    }
    int64_t n = an_tensor_numel(t);
    double *p = alloc_f64(ctx, n);
    if (!p) return an_error_status(ctx);
    an_dtype_convert(an_tensor_data(t), t->dtype, p, AN_F64, (size_t)n);
    *out = (an_f64){p, true};
    return AN_OK;
}

an_status an_f64_write(an_ctx *ctx, const an_tensor *t, an_f64 *out) {
    AN_TRY(check_cpu_float(ctx, t));
    if (t->dtype == AN_F64) {
        *out = (an_f64){an_tensor_data(t), false};
        return AN_OK;
    }
    double *p = alloc_f64(ctx, an_tensor_numel(t));
    if (!p) return an_error_status(ctx);
    *out = (an_f64){p, true};
    return AN_OK;
}

an_status an_f64_zeroed(an_ctx *ctx, const an_tensor *t, an_f64 *out) {
    AN_TRY(an_f64_write(ctx, t, out));
    memset(out->data, 0, (size_t)an_tensor_numel(t) * sizeof(double));
    return AN_OK;
}

void an_f64_commit(an_tensor *t, an_f64 *buf) {
    if (buf->owned) an_dtype_convert(buf->data, AN_F64, an_tensor_data(t), t->dtype, (size_t)an_tensor_numel(t));
    an_f64_free(buf);
}

void an_f64_free(an_f64 *buf) {
    if (buf->owned) free(buf->data);
    buf->data = NULL;
    buf->owned = false;
}

an_status an_f64_read_all(an_ctx *ctx, an_tensor *const *ts, int n, an_f64 *bufs) {
    for (int i = 0; i < n; i++) bufs[i] = (an_f64){NULL, false}; /* freeable even after a failure */
    for (int i = 0; i < n; i++) {
        an_status st = ts[i] ? an_f64_read(ctx, ts[i], &bufs[i]) : AN_OK;
        if (st != AN_OK) {
            an_f64_free_all(bufs, i);
            return st;
        }
    }
    return AN_OK;
}

an_status an_f64_write_all(an_ctx *ctx, an_tensor *const *ts, int n, an_f64 *bufs) {
    for (int i = 0; i < n; i++) bufs[i] = (an_f64){NULL, false};
    for (int i = 0; i < n; i++) {
        an_status st = ts[i] ? an_f64_write(ctx, ts[i], &bufs[i]) : AN_OK;
        if (st != AN_OK) {
            an_f64_free_all(bufs, i);
            return st;
        }
    }
    return AN_OK;
}

void an_f64_commit_all(an_tensor *const *ts, int n, an_f64 *bufs) {
    for (int i = 0; i < n; i++)
        if (ts[i]) an_f64_commit(ts[i], &bufs[i]);
}

void an_f64_free_all(an_f64 *bufs, int n) {
    for (int i = 0; i < n; i++) an_f64_free(&bufs[i]);
}

an_status an_i64_read(an_ctx *ctx, const an_tensor *t, an_i64 *out) {
    AN_CHECK(ctx, t->device == AN_CPU, AN_ERR_INTERNAL, "CPU kernel given a CUDA tensor");
    AN_CHECK(ctx, t->dtype == AN_I32 || t->dtype == AN_I64, AN_ERR_INPUT, "expected i32 or i64 indices, got %s",
             an_dtype_name(t->dtype));
    if (t->dtype == AN_I64) {
        *out = (an_i64){an_tensor_data(t), false};
        return AN_OK;
    }
    int64_t n = an_tensor_numel(t);
    int64_t *p = malloc((size_t)(n ? n : 1) * sizeof *p);
    AN_CHECK(ctx, p != NULL, AN_ERR_INTERNAL, "out of host memory");
    const int32_t *src = an_tensor_data(t);
    for (int64_t i = 0; i < n; i++) p[i] = src[i];
    *out = (an_i64){p, true};
    return AN_OK;
}

void an_i64_free(an_i64 *buf) {
    if (buf->owned) free(buf->data);
    buf->data = NULL;
    buf->owned = false;
}

void an_cpu_add_into(void *dst, const void *src, an_dtype dtype, int64_t n) {
    if (dtype == AN_F32) {
        float *d = dst;
        const float *s = src;
        for (int64_t i = 0; i < n; i++) d[i] += s[i];
    } else if (dtype == AN_F64) {
        double *d = dst;
        const double *s = src;
        for (int64_t i = 0; i < n; i++) d[i] += s[i];
    } else {
        for (int64_t i = 0; i < n; i++)
            an_dtype_store(dst, dtype, (size_t)i, an_dtype_load(dst, dtype, (size_t)i) + an_dtype_load(src, dtype, (size_t)i));
    }
}
