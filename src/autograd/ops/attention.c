/* attention.c — causal attention with grouped-query heads and packed documents (an_attention)
 * and its backward rule.
 *
 * Saved-tensor contract: the forward saves the per-row logsumexp lse (B, Hq, T) of the scaled,
 * masked scores, on q's device in that device's math precision — float64 on the CPU, float32 on
 * CUDA — and the backward recomputes the probabilities P = exp(scale q.k - lse) from it
 * (flash-attention style: no (T, T) matrix is kept on the tape). Where CUDA takes the tensor-core
 * path (bf16/f16, head_dim 64 or 128) it also keeps the output (a detached alias, no copy), from
 * which the backward forms delta = rowsum(dO * O). Where q and k come rotated from
 * an_qkv_linear_rope and nothing else reads them, the CUDA backward may hand their gradients over
 * already turned back (an_qkv_rope_turn_table: the qkv_linear node then skips its rope pass).
 * The kernels are in cpu/attention.c (float64 reference) and kernels/attention.cu (fp32 math). */
#include "autograd/ops.h"

#include "autograd/cpu/cpu.h"     /* an_cpu_attention, an_cpu_attention_backward, an_f64_*, an_i64_* */
#include "autograd/op_support.h"  /* AN_OP_INPUTS, an_op_attention */
#include "kernels/cuda.h"         /* an_cuda_attention, an_cuda_attention_backward */

/* Shapes of q (B, T, Hq, D), k = v (B, T, Hkv, D) and segments (B, T) into *sh. */
static an_status check_shapes(an_ctx *ctx, const an_tensor *q, const an_tensor *k, const an_tensor *v,
                              const an_tensor *segments, double scale, an_attention_shape *sh) {
    char dq[96], dk[96], dv[96];
    an_tensor_describe(q, dq, sizeof dq);
    an_tensor_describe(k, dk, sizeof dk);
    an_tensor_describe(v, dv, sizeof dv);
    AN_CHECK(ctx, q->ndim == 4 && k->ndim == 4 && v->ndim == 4, AN_ERR_INPUT,
             "attention: q %s, k %s and v %s must be 4-D (B, T, heads, D)", dq, dk, dv);
    AN_CHECK(ctx, an_tensor_same_shape(k, v), AN_ERR_INPUT, "attention: k %s and v %s differ", dk, dv);
    AN_CHECK(ctx, q->shape[0] == k->shape[0] && q->shape[1] == k->shape[1] && q->shape[3] == k->shape[3],
             AN_ERR_INPUT, "attention: q %s and k %s differ in batch, time or head_dim", dq, dk);
    int64_t Hq = q->shape[2], Hkv = k->shape[2];
    AN_CHECK(ctx, Hkv > 0 && Hq % Hkv == 0, AN_ERR_INPUT,
             "attention: kv heads Hkv = %lld do not divide query heads Hq = %lld (q %s, k %s)", (long long)Hkv,
             (long long)Hq, dq, dk);
    AN_CHECK(ctx, q->shape[3] > 0, AN_ERR_INPUT, "attention: head_dim of q %s is 0", dq);
    if (segments) {
        AN_TRY(an_op_check_indices(ctx, "attention", "segments", segments, q));
        char ds[96];
        AN_CHECK(ctx, segments->ndim == 2 && segments->shape[0] == q->shape[0] && segments->shape[1] == q->shape[1],
                 AN_ERR_INPUT, "attention: segments %s must be (B, T) = (%lld, %lld)",
                 an_tensor_describe(segments, ds, sizeof ds), (long long)q->shape[0], (long long)q->shape[1]);
    }
    *sh = (an_attention_shape){q->shape[0], q->shape[1], Hq, Hkv, q->shape[3], scale};
    return AN_OK;
}

an_tensor *an_attention(an_ctx *ctx, an_tensor *q, an_tensor *k, an_tensor *v, an_tensor *segments, double scale) {
    AN_OP_INPUTS(q, k, v);
    an_attention_shape sh;
    if (an_op_check_float_peers(ctx, "attention", (an_tensor *[]){q, k, v}, 3) ||
        check_shapes(ctx, q, k, v, segments, scale, &sh))
        return NULL;
    bool cuda = q->device == AN_CUDA;
    an_tensor *out = an_op_new_like(ctx, q, 4, q->shape);
    an_tensor *lse = an_tensor_new(ctx, cuda ? AN_F32 : AN_F64, q->device, 3,
                                   (int64_t[]){sh.batch, sh.q_heads, sh.seq}); /* see the top of the file */
    an_status st = out && lse ? AN_OK : an_error_status(ctx);
    an_f64 in[3], res;
    an_i64 seg = {NULL, false};
    if (st == AN_OK && cuda) {
        st = an_cuda_attention(ctx, &sh, q->dtype, an_tensor_data(q), an_tensor_data(k), an_tensor_data(v),
                               segments ? an_tensor_data(segments) : NULL, segments ? segments->dtype : AN_I64,
                               an_tensor_data(out), an_tensor_data(lse));
    } else if (st == AN_OK && (st = an_f64_read_all(ctx, (an_tensor *[]){q, k, v}, 3, in)) == AN_OK) {
        if ((!segments || (st = an_i64_read(ctx, segments, &seg)) == AN_OK) &&
            (st = an_f64_write(ctx, out, &res)) == AN_OK) {
            st = an_cpu_attention(ctx, &sh, in[0].data, in[1].data, in[2].data, seg.data, res.data,
                                  an_tensor_data(lse));
            if (st == AN_OK) an_f64_commit(out, &res);
            else an_f64_free(&res);
        }
        an_i64_free(&seg);
        an_f64_free_all(in, 3);
    }
    if (st != AN_OK) {
        an_tensor_release(out);
        an_tensor_release(lse);
        return NULL;
    }
    an_node *node = an_tape_record(ctx, &an_op_attention, out, (an_tensor *[]){q, k, v, segments}, 4);
    bool keep_out = cuda && an_cuda_attention_uses_tensor_cores(q->dtype, sh.head_dim); /* read by that path only */
    an_tensor *alias = node && keep_out ? an_tensor_detach(ctx, out) : NULL;
    if (node) {
        an_node_save(node, lse);
        if (alias) an_node_save(node, alias); /* saved[1] */
        node->args[0] = scale;
    }
    an_tensor_release(alias);
    an_tensor_release(lse);
    return out;
}

an_status an_attention_backward(an_ctx *ctx, an_node *node, an_tensor *grad_out) {
    an_tensor *q = node->inputs[0], *k = node->inputs[1], *v = node->inputs[2], *segments = node->inputs[3];
    an_tensor *lse = node->saved[0]; /* (B, Hq, T): f64 on the CPU, f32 on CUDA */
    an_attention_shape sh = {q->shape[0], q->shape[1], q->shape[2], k->shape[2], q->shape[3], node->args[0]};
    an_tensor *grads[3];
    for (int i = 0; i < 3; i++) {
        an_tensor *x = node->inputs[i];
        grads[i] = an_node_needs_grad(node, i) ? an_op_new_like(ctx, x, 4, x->shape) : NULL;
    }
    an_status st = an_error_status(ctx);
    an_f64 in[4], res[3];
    an_i64 seg = {NULL, false};
    if (st == AN_OK && q->device == AN_CUDA) {
        char dg[96];
        void *g[3];
        for (int i = 0; i < 3; i++) g[i] = grads[i] ? an_tensor_data(grads[i]) : NULL;
        an_tensor *out = node->n_saved > 1 ? node->saved[1] : NULL; /* (B, T, Hq, D), tensor-core path only */
        if (grad_out->device != AN_CUDA || grad_out->dtype != q->dtype || !an_tensor_same_shape(grad_out, q))
            st = an_error_set(ctx, AN_ERR_INTERNAL, __FILE__, __LINE__,
                              "attention backward: gradient %s does not match the output",
                              an_tensor_describe(grad_out, dg, sizeof dg));
        else {
            /* q's and k's rotation turned back in the kernels' stores where they can (no rope pass) */
            an_node *owner = NULL;
            an_tensor *turn = an_qkv_rope_turn_table(ctx, node, &owner);
            bool turned = false;
            st = an_cuda_attention_backward_turning(
                ctx, &sh, q->dtype, an_tensor_data(q), an_tensor_data(k), an_tensor_data(v),
                segments ? an_tensor_data(segments) : NULL, segments ? segments->dtype : AN_I64,
                out ? an_tensor_data(out) : NULL, an_tensor_data(lse), an_tensor_data(grad_out), g[0], g[1], g[2],
                turn ? an_tensor_data(turn) : NULL, &turned);
            if (st == AN_OK && turned) an_qkv_grads_turned(owner);
        }
    } else if (st == AN_OK && (st = an_f64_read_all(ctx, (an_tensor *[]){q, k, v, grad_out}, 4, in)) == AN_OK) {
        if ((!segments || (st = an_i64_read(ctx, segments, &seg)) == AN_OK) &&
            (st = an_f64_write_all(ctx, grads, 3, res)) == AN_OK) {
            st = an_cpu_attention_backward(ctx, &sh, in[0].data, in[1].data, in[2].data, seg.data,
                                           an_tensor_data(lse), in[3].data, res[0].data, res[1].data, res[2].data);
            if (st == AN_OK) an_f64_commit_all(grads, 3, res);
            else an_f64_free_all(res, 3);
        }
        an_i64_free(&seg);
        an_f64_free_all(in, 4);
    }
    for (int i = 0; i < 3; i++) {
        if (st == AN_OK && grads[i]) st = an_node_accumulate(ctx, node, i, grads[i]);
        else an_tensor_release(grads[i]);
    }
    return st;
}
