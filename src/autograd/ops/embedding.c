/* embedding.c — an_embedding: rows of a table (V, D) picked by integer ids, and its backward, a
 * scatter-add of the output gradient into a dense (V, D) table gradient.
 * Every id is checked against [0, V) before anything is read (on CUDA by a device scan whose
 * report is copied back, which synchronises); ids get no gradient. Both devices sum repeated ids
 * in token order (CUDA: a stable sort by id, fp32 sums), so the gradient is deterministic.
 * an_embedding_trusted (inference only) skips the CUDA check for ids the caller vouches for. */
#include "autograd/ops.h"

#include <string.h>

#include "autograd/cpu/cpu.h"     /* an_cpu_embedding, an_i64_read, an_f64_* */
#include "autograd/op_support.h"  /* AN_OP_INPUTS, an_op_embedding, an_op_check_* */
#include "kernels/cuda.h"         /* an_cuda_check_ids, an_cuda_embedding, an_cuda_embedding_backward */

/* The CUDA forward: ids checked on the device (unless the caller vouches for them: trusted),
 * then the gather. */
static an_tensor *embedding_cuda(an_ctx *ctx, an_tensor *ids, an_tensor *table, const int64_t *shape, bool trusted) {
    int64_t V = table->shape[0], D = table->shape[1], n = an_tensor_numel(ids);
    an_cuda_id_report rep;
    if (!trusted) {
        if (an_cuda_check_ids(ctx, an_tensor_data(ids), ids->dtype, n, V, 0, 0, &rep) != AN_OK) return NULL;
        AN_CHECK_NULL(ctx, rep.first_bad == n, AN_ERR_INPUT,
                      "embedding: id %lld (element %lld of ids) is outside [0, V = %lld)", (long long)rep.bad_value,
                      (long long)rep.first_bad, (long long)V);
    }
    an_tensor *out = an_op_new_like(ctx, table, ids->ndim + 1, shape);
    if (out && an_cuda_embedding(ctx, table->dtype, an_tensor_data(ids), ids->dtype, n, an_tensor_data(table), V, D,
                                 an_tensor_data(out)) != AN_OK) {
        an_tensor_release(out);
        return NULL;
    }
    return out;
}

/* The forward of both entry points; trusted skips the CUDA range check (see ops.h). */
static an_tensor *embedding(an_ctx *ctx, an_tensor *ids, an_tensor *table, bool trusted) {
    AN_OP_INPUTS(ids, table);
    if (an_op_check_float_peers(ctx, "embedding", &table, 1) ||
        an_op_check_indices(ctx, "embedding", "ids", ids, table))
        return NULL;
    char dt[96], di[96];
    AN_CHECK_NULL(ctx, table->ndim == 2, AN_ERR_INPUT, "embedding: table %s must be (V, D)",
                  an_tensor_describe(table, dt, sizeof dt));
    AN_CHECK_NULL(ctx, ids->ndim < AN_MAX_DIMS, AN_ERR_INPUT,
                  "embedding: ids %s have too many dims for a (..., D) output", an_tensor_describe(ids, di, sizeof di));
    int64_t shape[AN_MAX_DIMS];
    memcpy(shape, ids->shape, (size_t)ids->ndim * sizeof *shape);
    shape[ids->ndim] = table->shape[1];
    if (table->device == AN_CUDA) {
        an_tensor *out = embedding_cuda(ctx, ids, table, shape, trusted);
        if (out) an_tape_record(ctx, &an_op_embedding, out, (an_tensor *[]){ids, table}, 2);
        return out;
    }
    int64_t V = table->shape[0], D = table->shape[1], n = an_tensor_numel(ids);
    an_i64 id;
    if (an_i64_read(ctx, ids, &id) != AN_OK) return NULL;
    int64_t bad = 0;
    while (bad < n && id.data[bad] >= 0 && id.data[bad] < V) bad++;
    if (bad < n) {
        long long value = (long long)id.data[bad];
        an_i64_free(&id);
        AN_CHECK_NULL(ctx, 0, AN_ERR_INPUT, "embedding: id %lld (element %lld of ids) is outside [0, V = %lld)", value,
                      (long long)bad, (long long)V);
    }
    an_tensor *out = an_op_new_like(ctx, table, ids->ndim + 1, shape);
    if (out) an_cpu_embedding(id.data, n, an_tensor_data(table), D, an_dtype_size(table->dtype), an_tensor_data(out));
    an_i64_free(&id);
    if (out) an_tape_record(ctx, &an_op_embedding, out, (an_tensor *[]){ids, table}, 2);
    return out;
}

an_tensor *an_embedding(an_ctx *ctx, an_tensor *ids, an_tensor *table) { return embedding(ctx, ids, table, false); }

an_tensor *an_embedding_trusted(an_ctx *ctx, an_tensor *ids, an_tensor *table) {
    AN_OP_INPUTS(ids, table);
    AN_CHECK_NULL(ctx, !(an_grad_enabled(ctx) && table->requires_grad), AN_ERR_INPUT,
                  "embedding_trusted: inference only, but the table requires grad (use an_no_grad_begin)");
    return embedding(ctx, ids, table, true);
}

an_status an_embedding_backward(an_ctx *ctx, an_node *node, an_tensor *grad_out) {
    an_tensor *ids = node->inputs[0], *table = node->inputs[1];
    if (!an_node_needs_grad(node, 1)) return AN_OK; /* ids are integers: no gradient */
    an_tensor *grad = an_op_new_like(ctx, table, 2, table->shape);
    if (!grad) return an_error_status(ctx);
    if (table->device == AN_CUDA) { /* ids were checked by the forward */
        an_status st = an_cuda_embedding_backward(ctx, table->dtype, an_tensor_data(ids), ids->dtype,
                                                  an_tensor_numel(ids), an_tensor_data(grad_out), table->shape[0],
                                                  table->shape[1], an_tensor_data(grad));
        if (st != AN_OK) {
            an_tensor_release(grad);
            return st;
        }
        return an_node_accumulate(ctx, node, 1, grad);
    }
    an_i64 id = {0};
    an_f64 g, res;
    an_status st = an_i64_read(ctx, ids, &id);
    if (st == AN_OK && (st = an_f64_read(ctx, grad_out, &g)) == AN_OK) {
        if ((st = an_f64_zeroed(ctx, grad, &res)) == AN_OK) {
            an_cpu_embedding_backward(id.data, an_tensor_numel(ids), g.data, table->shape[1], res.data);
            an_f64_commit(grad, &res);
        }
        an_f64_free(&g);
    }
    an_i64_free(&id);
    if (st != AN_OK) {
        an_tensor_release(grad);
        return st;
    }
    return an_node_accumulate(ctx, node, 1, grad);
}
