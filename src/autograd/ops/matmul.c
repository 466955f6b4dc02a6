/* matmul.c — batched matmul with transposed operands, and linear (x @ w^T + bias, plus a residual
 * of the output's shape when given: the residual rides in the GEMM, its gradient passes through).
 * GEMMs run through an_cpu_gemm (OpenBLAS) or an_cuda_gemm (cuBLASLt, fp32 accumulate);
 * every gradient is one or two more GEMMs with the transposes swapped. */
#include "autograd/ops.h"

#include <string.h>

#include "autograd/cpu/cpu.h"     /* an_cpu_gemm, an_cpu_binary, an_f64_* */
#include "autograd/op_support.h"  /* AN_OP_INPUTS, an_op_matmul, an_op_linear */
#include "kernels/cuda.h"         /* an_cuda_gemm, an_cuda_binary, an_cuda_binary_backward */

/* c (rows, n) = alpha op(a) @ op(b) (+ c, or + addend of c's shape) + bias (n; NULL: none) on the
 * CPU (alpha other than 1 only alone). bf16/f16 operands widen to f64, multiply, scale, add the
 * bias (and addend) and round once (as the CUDA GEMM's epilogue rounds once); f32/f64 multiply in
 * their own type, into a copy of the addend, and take the scale and the bias after. */
static an_status cpu_gemm_bias(an_ctx *ctx, const an_gemm_shape *shape, double alpha, const an_tensor *a,
                               const an_tensor *b, const an_tensor *bias, const an_tensor *addend, an_tensor *c) {
    int64_t n = an_tensor_numel(c), width = bias ? bias->shape[0] : 0;
    an_gemm_shape sh = *shape;
    sh.accumulate = shape->accumulate || addend;
    if (a->dtype == AN_F32 || a->dtype == AN_F64) {
        if (addend && addend != c) memcpy(an_tensor_data(c), an_tensor_data(addend), an_tensor_nbytes(c));
        an_cpu_gemm(&sh, a->dtype, an_tensor_data(a), an_tensor_data(b), an_tensor_data(c));
        if (alpha != 1.0) {
            if (a->dtype == AN_F64)
                for (int64_t i = 0; i < n; i++) ((double *)an_tensor_data(c))[i] *= alpha;
            else
                for (int64_t i = 0; i < n; i++) ((float *)an_tensor_data(c))[i] *= (float)alpha;
        }
        if (!bias) return AN_OK;
        an_f64 o, bv;
        AN_TRY(an_f64_read(ctx, c, &o));
        an_status st = an_f64_read(ctx, bias, &bv);
        if (st == AN_OK) {
            an_cpu_binary(AN_BINARY_ADD, o.data, n, bv.data, width, o.data);
            an_f64_free(&bv);
            an_f64_commit(c, &o);
        } else {
            an_f64_free(&o);
        }
        return st;
    }
    an_f64 in[3], out;
    int n_in = bias ? 3 : 2;
    AN_TRY(an_f64_read_all(ctx, (an_tensor *[]){(an_tensor *)a, (an_tensor *)b, (an_tensor *)bias}, n_in, in));
    /* the addend widened in a buffer of its own: for an f64 c, an_f64_read would hand back c's data */
    an_status st = shape->accumulate && !addend ? an_f64_read(ctx, c, &out) : an_f64_write(ctx, c, &out);
    if (st == AN_OK && addend) {
        an_f64 add;
        if ((st = an_f64_read(ctx, addend, &add)) == AN_OK) {
            memcpy(out.data, add.data, (size_t)n * sizeof(double));
            an_f64_free(&add);
        } else {
            an_f64_free(&out);
        }
    }
    if (st == AN_OK) {
        an_cpu_gemm(&sh, AN_F64, in[0].data, in[1].data, out.data);
        if (alpha != 1.0)
            for (int64_t i = 0; i < n; i++) out.data[i] *= alpha;
        if (bias) an_cpu_binary(AN_BINARY_ADD, out.data, n, in[2].data, width, out.data);
        an_f64_commit(c, &out);
    }
    an_f64_free_all(in, n_in);
    return st;
}

an_status an_op_gemm(an_ctx *ctx, const an_gemm_shape *shape, const an_tensor *a, const an_tensor *b, an_tensor *c) {
    return an_op_gemm_bias(ctx, shape, a, b, NULL, c);
}

an_status an_op_gemm_bias(an_ctx *ctx, const an_gemm_shape *shape, const an_tensor *a, const an_tensor *b,
                          const an_tensor *bias, an_tensor *c) {
    return an_op_gemm_bias_add(ctx, shape, a, b, bias, NULL, c);
}

an_status an_op_gemm_bias_add(an_ctx *ctx, const an_gemm_shape *shape, const an_tensor *a, const an_tensor *b,
                              const an_tensor *bias, const an_tensor *addend, an_tensor *c) {
    if (a->device == AN_CUDA && addend)
        return an_cuda_gemm_addend(ctx, shape, a->dtype, an_tensor_data(a), an_tensor_data(b),
                                   bias ? an_tensor_data(bias) : NULL, an_tensor_data(addend), an_tensor_data(c));
    if (a->device == AN_CUDA)
        return bias ? an_cuda_gemm_bias(ctx, shape, a->dtype, an_tensor_data(a), an_tensor_data(b),
                                        an_tensor_data(bias), an_tensor_data(c))
                    : an_cuda_gemm(ctx, shape, a->dtype, an_tensor_data(a), an_tensor_data(b), an_tensor_data(c));
    return cpu_gemm_bias(ctx, shape, 1.0, a, b, bias, addend, c);
}

an_status an_op_gemm_scaled(an_ctx *ctx, const an_gemm_shape *shape, double alpha, const an_tensor *a,
                            const an_tensor *b, an_tensor *c) {
    AN_CHECK(ctx, !shape->accumulate, AN_ERR_INTERNAL, "gemm_scaled: accumulate");
    if (a->device == AN_CUDA)
        return an_cuda_gemm_scaled(ctx, shape, a->dtype, alpha, an_tensor_data(a), an_tensor_data(b), an_tensor_data(c));
    return cpu_gemm_bias(ctx, shape, alpha, a, b, NULL, NULL, c);
}

/* Rows (M) and columns (K) of op(t) for the last two dims. */
static void mat_dims(const an_tensor *t, bool trans, int64_t *rows, int64_t *cols) {
    int64_t r = t->shape[t->ndim - 2], c = t->shape[t->ndim - 1];
    *rows = trans ? c : r;
    *cols = trans ? r : c;
}

/* Product of the dims before the last two. */
static int64_t batch_of(const an_tensor *t) {
    int64_t batch = 1;
    for (int i = 0; i < t->ndim - 2; i++) batch *= t->shape[i];
    return batch;
}

an_tensor *an_matmul(an_ctx *ctx, an_tensor *a, an_tensor *b, bool trans_a, bool trans_b) {
    AN_OP_INPUTS(a, b);
    if (an_op_check_float_peers(ctx, "matmul", (an_tensor *[]){a, b}, 2)) return NULL;
    char da[96], db[96];
    an_tensor_describe(a, da, sizeof da);
    an_tensor_describe(b, db, sizeof db);
    AN_CHECK_NULL(ctx, a->ndim >= 2 && b->ndim >= 2, AN_ERR_INPUT, "matmul: operands %s and %s need 2+ dims", da, db);
    bool b_shared = b->ndim == 2 && a->ndim > 2;
    bool same_batch = a->ndim == b->ndim;
    for (int i = 0; same_batch && i < a->ndim - 2; i++) same_batch = a->shape[i] == b->shape[i];
    AN_CHECK_NULL(ctx, b_shared || same_batch, AN_ERR_INPUT, "matmul: batch dims of %s and %s differ", da, db);
    int64_t m, k, kb, n;
    mat_dims(a, trans_a, &m, &k);
    mat_dims(b, trans_b, &kb, &n);
    AN_CHECK_NULL(ctx, k == kb, AN_ERR_INPUT, "matmul: inner dims differ: %s%s @ %s%s", da, trans_a ? "^T" : "", db,
                  trans_b ? "^T" : "");
    int64_t shape[AN_MAX_DIMS];
    memcpy(shape, a->shape, sizeof shape);
    shape[a->ndim - 2] = m;
    shape[a->ndim - 1] = n;
    an_tensor *out = an_op_new_like(ctx, a, a->ndim, shape);
    if (!out) return NULL;
    an_gemm_shape s = {batch_of(a), m, n, k, trans_a, trans_b, b_shared, false};
    if (an_op_gemm(ctx, &s, a, b, out) != AN_OK) {
        an_tensor_release(out);
        return NULL;
    }
    an_node *node = an_tape_record(ctx, &an_op_matmul, out, (an_tensor *[]){a, b}, 2);
    if (node) {
        node->iargs[0] = trans_a;
        node->iargs[1] = trans_b;
    }
    return out;
}

/* Entry i of the leading batch of t (viewed as (batch, rest)); a new view. */
static an_tensor *batch_entry(an_ctx *ctx, an_tensor *t, int64_t batch, int64_t i) {
    an_tensor *flat = an_tensor_view(ctx, t, 2, (int64_t[]){batch, an_tensor_numel(t) / batch});
    an_tensor *entry = flat ? an_tensor_rows(ctx, flat, i, 1) : NULL;
    an_tensor_release(flat);
    return entry;
}

/* c_i (+)= op(x_i) @ op(y_i) over the batch, where `shared` (0: x, 1: y, -1: none) is one matrix
 * used by every entry and c is shared too when sum_into_c (accumulating over the batch). */
static an_status gemm_per_entry(an_ctx *ctx, an_gemm_shape s, int64_t batch, an_tensor *x, an_tensor *y,
                                an_tensor *c, int shared, bool sum_into_c) {
    an_status st = AN_OK;
    s.batch = 1;
    for (int64_t i = 0; i < batch && st == AN_OK; i++) {
        an_tensor *xi = shared == 0 ? an_tensor_retain(x) : batch_entry(ctx, x, batch, i);
        an_tensor *yi = shared == 1 ? an_tensor_retain(y) : batch_entry(ctx, y, batch, i);
        an_tensor *ci = sum_into_c ? an_tensor_retain(c) : batch_entry(ctx, c, batch, i);
        s.accumulate = sum_into_c && i > 0;
        st = xi && yi && ci ? an_op_gemm(ctx, &s, xi, yi, ci) : an_error_status(ctx);
        an_tensor_release(xi), an_tensor_release(yi), an_tensor_release(ci);
    }
    return st;
}

an_status an_matmul_backward(an_ctx *ctx, an_node *node, an_tensor *grad_out) {
    an_tensor *a = node->inputs[0], *b = node->inputs[1];
    bool ta = node->iargs[0], tb = node->iargs[1];
    bool b_shared = b->ndim == 2 && a->ndim > 2;
    int64_t m, k, n, unused;
    mat_dims(a, ta, &m, &k);
    mat_dims(b, tb, &unused, &n);
    int64_t batch = batch_of(a);
    an_tensor *grads[2] = {
        an_node_needs_grad(node, 0) ? an_op_new_like(ctx, a, a->ndim, a->shape) : NULL,
        an_node_needs_grad(node, 1) ? an_op_new_like(ctx, b, b->ndim, b->shape) : NULL,
    };
    an_status st = an_error_status(ctx);
    if (st == AN_OK && grads[0]) {
        if (!ta) { /* dA = dC @ op(B)^T */
            an_gemm_shape s = {batch, m, k, n, false, !tb, b_shared, false};
            st = an_op_gemm(ctx, &s, grad_out, b, grads[0]);
        } else { /* dA = op(B) @ dC^T */
            an_gemm_shape s = {batch, k, m, n, tb, true, false, false};
            st = b_shared ? gemm_per_entry(ctx, s, batch, b, grad_out, grads[0], 0, false)
                          : an_op_gemm(ctx, &s, b, grad_out, grads[0]);
        }
    }
    if (st == AN_OK && grads[1]) {
        /* dB = op(A)^T @ dC, or dC^T @ op(A) when B is transposed; a shared B sums over the batch. */
        an_gemm_shape s = tb ? (an_gemm_shape){batch, n, k, m, true, ta, false, false}
                             : (an_gemm_shape){batch, k, n, m, !ta, false, false, false};
        an_tensor *x = tb ? grad_out : a, *y = tb ? a : grad_out;
        if (!b_shared) {
            st = an_op_gemm(ctx, &s, x, y, grads[1]);
        } else if (!ta) { /* rows of every entry stack into one (batch*M)-deep product */
            s.batch = 1;
            s.k = batch * m;
            st = an_op_gemm(ctx, &s, x, y, grads[1]);
        } else {
            st = gemm_per_entry(ctx, s, batch, x, y, grads[1], -1, true);
        }
    }
    for (int i = 0; i < 2; i++) {
        if (st == AN_OK && grads[i]) st = an_node_accumulate(ctx, node, i, grads[i]);
        else an_tensor_release(grads[i]);
    }
    return st;
}

/* The column-sum launch for gb[i] = the column sums of grad_out[i] (i < count), when
 * an_cuda_column_sums takes it: one dtype, the same rows, its rule (CUDA tensors only). */
typedef struct {
    const void *y[AN_CUDA_COLUMN_SUMS_MAX];
    void *out[AN_CUDA_COLUMN_SUMS_MAX];
    int64_t width[AN_CUDA_COLUMN_SUMS_MAX], rows;
} column_sums_args;

static bool column_sums_apply(an_ctx *ctx, int count, an_tensor *const *grad_out, an_tensor *const *gb,
                              column_sums_args *a) {
    if (count < 1 || count > AN_CUDA_COLUMN_SUMS_MAX || gb[0]->device != AN_CUDA) return false;
    a->rows = an_tensor_numel(grad_out[0]) / (gb[0]->shape[0] ? gb[0]->shape[0] : 1);
    for (int i = 0; i < count; i++) {
        a->y[i] = an_tensor_data(grad_out[i]), a->out[i] = an_tensor_data(gb[i]), a->width[i] = gb[i]->shape[0];
        if (gb[i]->dtype != gb[0]->dtype || an_tensor_numel(grad_out[i]) != a->rows * a->width[i]) return false;
    }
    return an_cuda_column_sums_rule(ctx, gb[0]->dtype, a->rows, count, a->y, a->width, a->out);
}

an_status an_op_bias_grads(an_ctx *ctx, int count, an_tensor *const *grad_out, an_tensor *const *gb) {
    column_sums_args a;
    if (column_sums_apply(ctx, count, grad_out, gb, &a))
        return an_cuda_column_sums(ctx, gb[0]->dtype, a.rows, count, a.y, a.width, a.out);
    for (int i = 0; i < count; i++) {
        int64_t n = an_tensor_numel(grad_out[i]), width = gb[i]->shape[0];
        if (gb[i]->device == AN_CUDA) {
            AN_TRY(an_cuda_binary_backward(ctx, AN_BINARY_ADD, gb[i]->dtype, an_tensor_data(grad_out[i]), n,
                                           an_tensor_data(gb[i]), width, an_tensor_data(grad_out[i]), NULL,
                                           an_tensor_data(gb[i])));
            continue;
        }
        an_f64 g, res;
        an_status st = an_f64_read(ctx, grad_out[i], &g);
        if (st == AN_OK && (st = an_f64_write(ctx, gb[i], &res)) == AN_OK) {
            an_cpu_binary_backward(AN_BINARY_ADD, NULL, n, NULL, width, g.data, NULL, res.data);
            an_f64_commit(gb[i], &res);
        }
        an_f64_free(&g);
        AN_TRY(st);
    }
    return AN_OK;
}

an_status an_op_bias_grad(an_ctx *ctx, an_tensor *grad_out, an_tensor *gb) {
    return an_op_bias_grads(ctx, 1, &grad_out, &gb);
}

static an_tensor *linear(an_ctx *ctx, an_tensor *x, an_tensor *w, an_tensor *bias, an_tensor *residual) {
    AN_OP_INPUTS(x, w);
    if (an_op_check_float_peers(ctx, "linear", (an_tensor *[]){x, w, bias, residual}, 4)) return NULL;
    char dx[96], dw[96];
    an_tensor_describe(x, dx, sizeof dx);
    an_tensor_describe(w, dw, sizeof dw);
    AN_CHECK_NULL(ctx, x->ndim >= 1 && w->ndim == 2 && x->shape[x->ndim - 1] == w->shape[1], AN_ERR_INPUT,
                  "linear: input %s does not match weight %s (out, in)", dx, dw);
    AN_CHECK_NULL(ctx, !bias || (bias->ndim == 1 && bias->shape[0] == w->shape[0]), AN_ERR_INPUT,
                  "linear: bias must be (%lld)", (long long)w->shape[0]);
    int64_t in = w->shape[1], out_features = w->shape[0], rows = an_tensor_numel(x) / (in ? in : 1);
    int64_t shape[AN_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[x->ndim - 1] = out_features;
    if (an_op_check_residual(ctx, "linear", residual, x->ndim, shape) != AN_OK) return NULL;
    an_tensor *out = an_op_new_like(ctx, x, x->ndim, shape);
    if (!out) return NULL;
    an_gemm_shape s = {1, rows, out_features, in, false, true, false, false};
    an_status st = an_op_gemm_bias_add(ctx, &s, x, w, bias, residual, out); /* on CUDA both ride in the GEMM */
    if (st != AN_OK) {
        an_tensor_release(out);
        return NULL;
    }
    an_op_record_linear(ctx, x, w, bias, residual, out);
    return out;
}

an_node *an_op_record_linear(an_ctx *ctx, an_tensor *x, an_tensor *w, an_tensor *bias, an_tensor *residual,
                             an_tensor *out) {
    an_node *node = an_tape_record(ctx, &an_op_linear, out, (an_tensor *[]){x, w, bias, residual}, 4);
    if (node && !w->requires_grad) an_node_input_routing_only(node, 0); /* dX = dY W reads no x */
    else an_node_input_recomputable(node, 0);                            /* dW reads x: formed again */
    if (node && residual) an_node_input_routing_only(node, 3);           /* its gradient is dY itself */
    return node;
}

an_tensor *an_linear(an_ctx *ctx, an_tensor *x, an_tensor *w, an_tensor *bias) {
    return linear(ctx, x, w, bias, NULL);
}

an_tensor *an_linear_residual(an_ctx *ctx, an_tensor *x, an_tensor *w, an_tensor *bias, an_tensor *residual) {
    AN_CHECK_NULL(ctx, residual != NULL, AN_ERR_INPUT, "linear_residual: no residual");
    return linear(ctx, x, w, bias, residual);
}

/* dW (+)= dY^T x for node input `index` (w), with gb (not NULL: on CUDA) the bias gradient from the
 * same GEMM's epilogue. */
static an_status weight_grad(an_ctx *ctx, an_node *node, int index, an_tensor *grad_out, an_tensor *x, an_tensor *gb) {
    an_tensor *w = node->inputs[index];
    int64_t in = w->shape[1], out_features = w->shape[0], rows = an_tensor_numel(x) / (in ? in : 1);
    an_status st = an_tensor_materialize(ctx, x);
    an_tensor *w_sink = an_node_grad_sink(node, index); /* a later micro-batch: dW adds into W's gradient */
    an_tensor *gw = st != AN_OK ? NULL : w_sink ? w_sink : an_op_new_like(ctx, w, 2, w->shape);
    an_gemm_shape s = {1, out_features, in, rows, true, false, false, w_sink != NULL}; /* dW (+)= dY^T @ X */
    if (!gw) st = an_error_status(ctx);
    else if (gb) st = an_cuda_gemm_bias_grad(ctx, &s, w->dtype, an_tensor_data(grad_out), an_tensor_data(x),
                                             an_tensor_data(gb), an_tensor_data(gw));
    else st = an_op_gemm(ctx, &s, grad_out, x, gw);
    if (st == AN_OK && !w_sink) st = an_node_accumulate(ctx, node, index, gw);
    else if (!w_sink) an_tensor_release(gw);
    return st;
}

an_status an_op_linear_weight_grad(an_ctx *ctx, an_node *node, int index, an_tensor *grad_out, an_tensor *x) {
    return weight_grad(ctx, node, index, grad_out, x, NULL);
}

/* One linear's gradients with the bias's from the dW GEMM's epilogue (cuBLASLt's BGRADB) on CUDA
 * when both are wanted: the path an_cuda_set_column_sums(false) measures. */
static an_status epilogue_param_grads(an_ctx *ctx, an_node *node, int w_index, int bias_index, an_tensor *grad_out,
                                      an_tensor *x) {
    an_tensor *w = node->inputs[w_index], *bias = node->inputs[bias_index];
    an_tensor *gb = NULL;
    bool want_w = an_node_needs_grad(node, w_index), want_b = an_node_needs_grad(node, bias_index);
    if (want_w && want_b && w->device == AN_CUDA && !(gb = an_op_new_like(ctx, bias, 1, bias->shape)))
        return an_error_status(ctx);
    if (want_w) {
        an_status st = weight_grad(ctx, node, w_index, grad_out, x, gb);
        if (st != AN_OK) {
            an_tensor_release(gb);
            return st;
        }
    }
    if (!gb && want_b) {
        if (!(gb = an_op_new_like(ctx, bias, 1, bias->shape))) return an_error_status(ctx);
        an_status st = an_op_bias_grad(ctx, grad_out, gb);
        if (st != AN_OK) {
            an_tensor_release(gb);
            return st;
        }
    }
    return gb ? an_node_accumulate(ctx, node, bias_index, gb) : AN_OK;
}

an_status an_op_linears_param_grads(an_ctx *ctx, an_node *node, int count, const int *w_index, const int *bias_index,
                                    an_tensor *const *grad_out, an_tensor *x) {
    AN_CHECK(ctx, count >= 1 && count <= AN_CUDA_COLUMN_SUMS_MAX, AN_ERR_INTERNAL,
             "linears_param_grads: %d linears, expected 1 to %d", count, AN_CUDA_COLUMN_SUMS_MAX);
    an_tensor *gb[AN_CUDA_COLUMN_SUMS_MAX] = {0}, *gy[AN_CUDA_COLUMN_SUMS_MAX];
    int slot[AN_CUDA_COLUMN_SUMS_MAX], nb = 0;
    an_status st = AN_OK;
    for (int i = 0; i < count && st == AN_OK; i++) {
        an_tensor *bias = node->inputs[bias_index[i]];
        if (!an_node_needs_grad(node, bias_index[i])) continue;
        gy[nb] = grad_out[i], slot[nb] = bias_index[i];
        if (!(gb[nb++] = an_op_new_like(ctx, bias, 1, bias->shape))) st = an_error_status(ctx);
    }
    /* On CUDA: the bias gradients in one column-sum pass, unless it does not apply or is turned off
     * (then each from its dW GEMM's epilogue, as before). Elsewhere the same sums either way. */
    column_sums_args a;
    if (st == AN_OK && nb > 0 && gb[0]->device == AN_CUDA && !column_sums_apply(ctx, nb, gy, gb, &a)) {
        for (int j = 0; j < nb; j++) an_tensor_release(gb[j]);
        for (int i = 0; i < count; i++)
            AN_TRY(epilogue_param_grads(ctx, node, w_index[i], bias_index[i], grad_out[i], x));
        return AN_OK;
    }
    for (int i = 0; i < count && st == AN_OK; i++)
        if (an_node_needs_grad(node, w_index[i])) st = weight_grad(ctx, node, w_index[i], grad_out[i], x, NULL);
    bool on_cuda = st == AN_OK && nb > 0 && gb[0]->device == AN_CUDA; /* column_sums_apply took them above */
    if (st == AN_OK)
        st = on_cuda ? an_cuda_column_sums(ctx, gb[0]->dtype, a.rows, nb, a.y, a.width, a.out)
                     : an_op_bias_grads(ctx, nb, gy, gb);
    for (int j = 0; j < nb; j++) {
        if (st == AN_OK) st = an_node_accumulate(ctx, node, slot[j], gb[j]);
        else an_tensor_release(gb[j]);
    }
    return st;
}

an_status an_op_linear_param_grads(an_ctx *ctx, an_node *node, int w_index, int bias_index, an_tensor *grad_out,
                                   an_tensor *x) {
    return an_op_linears_param_grads(ctx, node, 1, &w_index, &bias_index, &grad_out, x);
}

an_status an_linear_backward(an_ctx *ctx, an_node *node, an_tensor *grad_out) {
    an_tensor *x = node->inputs[0], *w = node->inputs[1];
    int64_t in = w->shape[1], out_features = w->shape[0], rows = an_tensor_numel(x) / (in ? in : 1);
    an_tensor *sink = an_node_grad_sink(node, 0); /* x's gradient so far: the GEMM adds into it */
    if (sink) {
        an_gemm_shape s = {1, rows, in, out_features, false, false, false, true}; /* dX += dY @ W */
        AN_TRY(an_op_gemm(ctx, &s, grad_out, w, sink));
    } else if (an_node_needs_grad(node, 0)) {
        an_tensor *gx = an_op_new_like(ctx, x, x->ndim, x->shape);
        if (!gx) return an_error_status(ctx);
        an_gemm_shape s = {1, rows, in, out_features, false, false, false, false}; /* dX = dY @ W */
        an_status st = an_op_gemm(ctx, &s, grad_out, w, gx);
        if (st != AN_OK) {
            an_tensor_release(gx);
            return st;
        }
        AN_TRY(an_node_accumulate(ctx, node, 0, gx));
    }
    AN_TRY(an_op_linear_param_grads(ctx, node, 1, 2, grad_out, x));
    return an_node_pass_grad(ctx, node, 3, grad_out); /* the residual's (none without one) */
}
