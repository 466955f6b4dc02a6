/* tensor.h — an_tensor: dtype, device, up to 4 dims, row-major contiguous with an element offset
 * into refcounted storage (views share storage; there are no general strides).
 *
 * Ownership: every function that returns an_tensor * returns a new reference the caller releases
 * with an_tensor_release; functions that take a tensor borrow it unless they say otherwise. */
#ifndef AN_TENSOR_H
#define AN_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "autograd/ctx.h"
#include "autograd/dtype.h"

#define AN_MAX_DIMS 4

typedef struct an_storage {
    void *data;          /* host or device pointer */
    size_t nbytes;
    an_device device;
    int refcount;
    int tape_uses;       /* tape nodes that read a leaf tensor on this storage (as an input or saved
                            tensor): 0 during backward means a parameter's gradient is final and its
                            values are read no more (autograd/tape.c, ctx->grad_ready) */
    an_ctx *ctx;         /* for the memory counters and the CUDA free */
} an_storage;

typedef struct an_node an_node;

typedef struct an_tensor {
    an_dtype dtype;
    an_device device;
    int ndim;
    int64_t shape[AN_MAX_DIMS];
    int64_t offset;          /* first element, in elements of dtype, within storage */
    an_storage *storage;     /* NULL once only routing references remain (see routing_refs) */
    int refcount;
    int routing_refs;        /* references that need the tensor but never its values: tape nodes of
                                ops whose backward does not read this input (an_node_input_routing_only).
                                When every remaining reference is one, the storage is let go early. */
    bool requires_grad;
    struct an_tensor *grad;  /* same shape, dtype and device; accumulated by backward */
    an_node *grad_fn;        /* the tape node that produced this tensor; NULL for leaves */
    an_ctx *ctx;
} an_tensor;

/* New tensors. `shape` has `ndim` entries (0 <= ndim <= 4; ndim 0 is a scalar). */
an_tensor *an_tensor_new(an_ctx *ctx, an_dtype dtype, an_device device, int ndim, const int64_t *shape);
an_tensor *an_tensor_zeros(an_ctx *ctx, an_dtype dtype, an_device device, int ndim, const int64_t *shape);
/* A CPU tensor copied from `data`, which holds numel elements of `dtype`. */
an_tensor *an_tensor_from_data(an_ctx *ctx, an_dtype dtype, int ndim, const int64_t *shape, const void *data);
an_tensor *an_tensor_scalar(an_ctx *ctx, an_dtype dtype, an_device device, double value);

an_tensor *an_tensor_retain(an_tensor *t);
void an_tensor_release(an_tensor *t);

int64_t an_tensor_numel(const an_tensor *t);
size_t an_tensor_nbytes(const an_tensor *t);
void *an_tensor_data(const an_tensor *t);   /* first element (host or device pointer) */
bool an_tensor_same_shape(const an_tensor *a, const an_tensor *b);
/* "(2, 3, 4) f32 cpu" into buf; returns buf. */
const char *an_tensor_describe(const an_tensor *t, char *buf, size_t size);

/* A view with another shape of the same numel, sharing storage; not recorded on the tape (use
 * an_reshape for a differentiable reshape). */
an_tensor *an_tensor_view(an_ctx *ctx, an_tensor *t, int ndim, const int64_t *shape);
/* Rows [start, start+count) of dim 0, sharing storage; not recorded on the tape. */
an_tensor *an_tensor_rows(an_ctx *ctx, an_tensor *t, int64_t start, int64_t count);
/* Whether t[1..n) each follow the one before in one storage (a grouped allocation, as
 * an_model_create's): then t[0]'s data is the stacked matrix of them all. */
bool an_tensor_stacked(const an_tensor *const *t, int n);
/* Gives t (offset 0) fresh storage after its values were let go (see routing_refs); the tape's
 * recompute fills it. AN_ERR_INTERNAL when t still has storage or is a view at an offset. */
an_status an_tensor_restore_storage(an_ctx *ctx, an_tensor *t);
/* Same storage, no grad_fn, requires_grad false. */
an_tensor *an_tensor_detach(an_ctx *ctx, an_tensor *t);
/* A new tensor with the values of t converted to dtype on device (a copy even when both match). */
an_tensor *an_tensor_to(an_ctx *ctx, const an_tensor *t, an_dtype dtype, an_device device);
/* Copies src's values into dst (same numel; dtypes and devices may differ). */
an_status an_tensor_copy_into(an_ctx *ctx, an_tensor *dst, const an_tensor *src);

/* Element access for CPU tensors of any dtype, through double. */
double an_tensor_get(const an_tensor *t, int64_t i);
void an_tensor_set(an_tensor *t, int64_t i, double value);

/* Fill from ctx's RNG (CPU draws, copied to the device for CUDA tensors). */
an_status an_tensor_fill_uniform(an_ctx *ctx, an_tensor *t, double low, double high);
an_status an_tensor_fill_normal(an_ctx *ctx, an_tensor *t, double mean, double std);
an_status an_tensor_fill(an_ctx *ctx, an_tensor *t, double value);

void an_tensor_set_requires_grad(an_tensor *t, bool requires_grad);
void an_tensor_zero_grad(an_tensor *t); /* releases .grad */

#endif
