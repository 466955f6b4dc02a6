/* rope.c — an_rope: rotary position embedding of x (B, T, H, D) at positions (B, T), in NEOX
 * (rotate halves) or interleaved layout, with optional llama3 frequency scaling; and its
 * backward, the rotation of the gradient by the opposite angle.
 * Positions are read from the tensor (packed documents restart them), never derived from t.
 * The node keeps the config in args[0..5] and the positions as its second input.
 * Both devices take the inverse frequencies from an_cpu_rope_inv_freq (float64). The CPU rotates
 * in float64; CUDA computes angles, cos and sin in float64, rounds cos/sin once to fp32 and
 * rotates in fp32 (kernels/rope.cu). On CUDA the forward checks the positions with a device scan
 * (which synchronises); the backward reuses the positions the forward checked. an_rope_trusted
 * skips that scan for positions the caller formed or checked itself (an_rope_check_positions):
 * the model checks once per forward for its two calls a layer, and a decode step stays free of
 * host synchronisation. */
#include "autograd/ops.h"

#include <math.h>
#include <stdlib.h>

#include "autograd/cpu/cpu.h"     /* an_cpu_rope, an_cpu_rope_inv_freq, an_i64_read, an_f64_* */
#include "autograd/op_support.h"  /* AN_OP_INPUTS, an_op_rope, an_op_check_* */
#include "kernels/cuda.h"         /* an_cuda_check_ids, an_cuda_rope */

an_status an_op_rope_check_config(an_ctx *ctx, const an_rope_config *c) {
    AN_CHECK(ctx, c != NULL, AN_ERR_INPUT, "rope: no config");
    AN_CHECK(ctx, c->style == AN_ROPE_NEOX || c->style == AN_ROPE_INTERLEAVED, AN_ERR_INPUT,
             "rope: style %d is neither AN_ROPE_NEOX nor AN_ROPE_INTERLEAVED", (int)c->style);
    AN_CHECK(ctx, c->theta > 0 && isfinite(c->theta), AN_ERR_INPUT, "rope: theta = %g, expected > 0", c->theta);
    AN_CHECK(ctx, c->llama3_factor >= 0 && isfinite(c->llama3_factor), AN_ERR_INPUT,
             "rope: llama3 factor = %g, expected > 0 (or 0 for no scaling)", c->llama3_factor);
    if (c->llama3_factor > 0) {
        AN_CHECK(ctx, c->llama3_low_freq_factor > 0 && c->llama3_high_freq_factor > c->llama3_low_freq_factor,
                 AN_ERR_INPUT, "rope: llama3 low_freq_factor = %g and high_freq_factor = %g, expected 0 < low < high",
                 c->llama3_low_freq_factor, c->llama3_high_freq_factor);
        AN_CHECK(ctx, c->llama3_original_max_position > 0, AN_ERR_INPUT,
                 "rope: llama3 original_max_position_embeddings = %g, expected > 0", c->llama3_original_max_position);
    }
    return AN_OK;
}

static an_status check_shapes(an_ctx *ctx, const an_tensor *x, const an_tensor *positions) {
    char dx[96], dp[96];
    an_tensor_describe(x, dx, sizeof dx);
    AN_CHECK(ctx, x->ndim == 4, AN_ERR_INPUT, "rope: x %s must be (B, T, H, D)", dx);
    AN_CHECK(ctx, x->shape[3] > 0 && x->shape[3] % 2 == 0, AN_ERR_INPUT,
             "rope: head dim D = %lld of x %s must be even and > 0 (dims rotate in pairs)", (long long)x->shape[3], dx);
    AN_CHECK(ctx, positions->ndim == 2 && positions->shape[0] == x->shape[0] && positions->shape[1] == x->shape[1],
             AN_ERR_INPUT, "rope: positions %s must be (B, T) = (%lld, %lld) for x %s",
             an_tensor_describe(positions, dp, sizeof dp), (long long)x->shape[0], (long long)x->shape[1], dx);
    return AN_OK;
}

/* The first negative one of n positions is AN_ERR_INPUT naming it. */
static an_status check_host_positions(an_ctx *ctx, const int64_t *pos, int64_t n) {
    int64_t bad = 0;
    while (bad < n && pos[bad] >= 0) bad++;
    AN_CHECK(ctx, bad == n, AN_ERR_INPUT, "rope: position %lld (element %lld of positions) is negative",
             (long long)(bad < n ? pos[bad] : 0), (long long)bad);
    return AN_OK;
}

an_status an_rope_check_positions(an_ctx *ctx, const an_tensor *positions) {
    AN_CHECK(ctx, positions != NULL, AN_ERR_INPUT, "rope: no positions");
    int64_t n = an_tensor_numel(positions);
    if (positions->device == AN_CUDA) {
        an_cuda_id_report rep;
        AN_TRY(an_cuda_check_ids(ctx, an_tensor_data(positions), positions->dtype, n, INT64_MAX, 0, 0, &rep));
        AN_CHECK(ctx, rep.first_bad == n, AN_ERR_INPUT, "rope: position %lld (element %lld of positions) is negative",
                 (long long)rep.bad_value, (long long)rep.first_bad);
        return AN_OK;
    }
    an_i64 pos;
    AN_TRY(an_i64_read(ctx, positions, &pos));
    an_status st = check_host_positions(ctx, pos.data, n);
    an_i64_free(&pos);
    return st;
}

/* out = src (rows, H, D) rotated by sign * angle (CPU); positions checked, inv_freq from config. */
static an_status rotate(an_ctx *ctx, const an_rope_config *config, const an_tensor *src, const an_tensor *positions,
                        int64_t rows, int64_t H, int64_t D, double sign, an_tensor *out) {
    an_i64 pos;
    AN_TRY(an_i64_read(ctx, positions, &pos));
    an_status checked = check_host_positions(ctx, pos.data, rows);
    if (checked != AN_OK) {
        an_i64_free(&pos);
        return checked;
    }
    double *inv_freq = malloc((size_t)(D / 2) * sizeof *inv_freq);
    an_f64 in = {0}, res = {0};
    an_status st = inv_freq ? AN_OK : an_error_set(ctx, AN_ERR_INTERNAL, __FILE__, __LINE__, "out of host memory");
    if (st == AN_OK && (st = an_f64_read(ctx, src, &in)) == AN_OK && (st = an_f64_write(ctx, out, &res)) == AN_OK) {
        an_cpu_rope_inv_freq(config, D, inv_freq);
        an_cpu_rope(in.data, pos.data, rows, H, D, inv_freq, config->style, sign, res.data);
        an_f64_commit(out, &res);
    }
    an_f64_free(&in);
    free(inv_freq);
    an_i64_free(&pos);
    return st;
}

/* out = src (rows, H, D) rotated by sign * angle on CUDA; check_positions: scan them for negatives first. */
static an_status rotate_cuda(an_ctx *ctx, const an_rope_config *config, const an_tensor *src,
                             const an_tensor *positions, int64_t rows, int64_t H, int64_t D, double sign,
                             bool check_positions, an_tensor *out) {
    if (check_positions) AN_TRY(an_rope_check_positions(ctx, positions));
    double *inv_freq = malloc((size_t)(D / 2) * sizeof *inv_freq);
    AN_CHECK(ctx, inv_freq != NULL, AN_ERR_INTERNAL, "out of host memory");
    an_cpu_rope_inv_freq(config, D, inv_freq);
    an_status st = an_cuda_rope(ctx, src->dtype, an_tensor_data(src), an_tensor_data(positions), positions->dtype, rows,
                                H, D, inv_freq, config->style == AN_ROPE_INTERLEAVED, sign, an_tensor_data(out));
    free(inv_freq);
    return st;
}

/* The forward of both entry points; trusted skips the CUDA scan of the positions. */
static an_tensor *rope_forward(an_ctx *ctx, an_tensor *x, an_tensor *positions, const an_rope_config *config,
                               bool trusted) {
    AN_OP_INPUTS(x, positions);
    if (an_op_rope_check_config(ctx, config) || an_op_check_float_peers(ctx, "rope", &x, 1) ||
        an_op_check_indices(ctx, "rope", "positions", positions, x) || check_shapes(ctx, x, positions))
        return NULL;
    an_tensor *out = an_op_new_like(ctx, x, 4, x->shape);
    if (!out) return NULL;
    int64_t rows = x->shape[0] * x->shape[1], H = x->shape[2], D = x->shape[3];
    an_status st = x->device == AN_CUDA ? rotate_cuda(ctx, config, x, positions, rows, H, D, 1.0, !trusted, out)
                                        : rotate(ctx, config, x, positions, rows, H, D, 1.0, out);
    if (st != AN_OK) {
        an_tensor_release(out);
        return NULL;
    }
    an_node *node = an_tape_record(ctx, &an_op_rope, out, (an_tensor *[]){x, positions}, 2);
    an_node_input_routing_only(node, 0); /* the backward rotates the gradient back: x is not read */
    if (node) {
        node->args[0] = (double)config->style;
        node->args[1] = config->theta;
        node->args[2] = config->llama3_factor;
        node->args[3] = config->llama3_low_freq_factor;
        node->args[4] = config->llama3_high_freq_factor;
        node->args[5] = config->llama3_original_max_position;
    }
    return out;
}

an_status an_rope_backward(an_ctx *ctx, an_node *node, an_tensor *grad_out) {
    an_tensor *x = node->inputs[0], *positions = node->inputs[1];
    if (!an_node_needs_grad(node, 0)) return AN_OK; /* positions are integers: no gradient */
    an_rope_config config = {
        .style = (an_rope_style)node->args[0],
        .theta = node->args[1],
        .llama3_factor = node->args[2],
        .llama3_low_freq_factor = node->args[3],
        .llama3_high_freq_factor = node->args[4],
        .llama3_original_max_position = node->args[5],
    };
    an_tensor *grad = an_op_new_like(ctx, x, 4, x->shape);
    if (!grad) return an_error_status(ctx);
    an_status st = an_op_rope_rotate(ctx, &config, grad_out, positions, x->shape[3], -1.0, grad);
    if (st != AN_OK) {
        an_tensor_release(grad);
        return st;
    }
    return an_node_accumulate(ctx, node, 0, grad);
}

an_status an_op_rope_rotate(an_ctx *ctx, const an_rope_config *config, const an_tensor *src,
                            const an_tensor *positions, int64_t head_dim, double sign, an_tensor *out) {
    int64_t rows = an_tensor_numel(positions), per_row = rows * head_dim;
    if (an_tensor_numel(src) == 0) return AN_OK; /* an empty batch: nothing to turn */
    AN_CHECK(ctx, head_dim > 0 && head_dim % 2 == 0 && per_row > 0 && an_tensor_numel(src) % per_row == 0, AN_ERR_INTERNAL,
             "rope: %lld elements are not whole heads of %lld for %lld positions", (long long)an_tensor_numel(src),
             (long long)head_dim, (long long)rows);
    int64_t H = an_tensor_numel(src) / per_row;
    return src->device == AN_CUDA ? rotate_cuda(ctx, config, src, positions, rows, H, head_dim, sign, false, out)
                                  : rotate(ctx, config, src, positions, rows, H, head_dim, sign, out);
}

an_tensor *an_rope(an_ctx *ctx, an_tensor *x, an_tensor *positions, const an_rope_config *config) {
    return rope_forward(ctx, x, positions, config, false);
}

an_tensor *an_rope_trusted(an_ctx *ctx, an_tensor *x, an_tensor *positions, const an_rope_config *config) {
    return rope_forward(ctx, x, positions, config, true);
}
