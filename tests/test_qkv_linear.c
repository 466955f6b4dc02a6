/* test_qkv_linear.c — the attention block's q, k, v projections as one op (ops/qkv_linear.c):
 * float64 finite-difference gradient checks of every input with and without adapters (on q and v,
 * on all three), biases and dropout masks, trained and frozen weights; on the CPU in f32 and bf16
 * the outputs and every gradient bit for bit those of the separate ops the model ran before
 * (an_linear, an_lora_linear, an_dropout's multiply), also when only some of q, k, v reach the
 * loss and when x needs no gradient; an_qkv_linear_rope likewise against the projections followed
 * by an_rope on q's and k's head views (NEOX and interleaved, llama3 scaling, packed positions);
 * shape errors that name the projection. The CUDA path against the separate ops is in
 * tests/test_cuda_ops.c (qkv_linear). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "support/test_util.h"

/* inputs: x, W_q, W_k, W_v, bias_q, bias_k, bias_v, then A and B of q, k and v */
enum { IX = 0, IW = 1, IBIAS = 4, IA = 7, N_IN = 13 };

typedef struct {
    int lora;            /* 0: none, 1: q and v (the LoRA q,v recipe), 2: q, k and v */
    bool bias, mask;     /* biases on all three; dropout masks on the adapters */
    unsigned use;        /* bit p: output p enters the loss */
    an_tensor *masks[3]; /* x's shape and dtype, or NULL */
    an_tensor *r[3];     /* the loss's weights of each output */
    int rope;            /* 0: none; 1 NEOX, 2 interleaved (3: NEOX with llama3 scaling), head_dim d */
    int64_t d;
    an_tensor *positions; /* (B, T) i64 with rope */
} case_opts;

static an_rope_config rope_of(const case_opts *o) {
    an_rope_config c = {o->rope == 2 ? AN_ROPE_INTERLEAVED : AN_ROPE_NEOX, 10000.0, 0, 0, 0, 0};
    if (o->rope == 3) c.llama3_factor = 8, c.llama3_low_freq_factor = 1, c.llama3_high_freq_factor = 4,
                      c.llama3_original_max_position = 16;
    return c;
}

/* (B, T) i64 positions that restart as packed documents do, one of them large. */
static an_tensor *packed_positions(an_ctx *ctx, int64_t B, int64_t T) {
    an_tensor *pos = an_tensor_new(ctx, AN_I64, AN_CPU, 2, (int64_t[]){B, T});
    int64_t *p = an_tensor_data(pos);
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++) p[b * T + t] = t < 2 ? t + b : t == 2 ? 1000 + b : t - 3;
    return pos;
}

static bool has_lora(const case_opts *o, int p) { return o->lora == 2 || (o->lora == 1 && p != 1); }
static double scale_of(int p) { return 0.75 + 0.5 * p; }

static an_status fused(an_ctx *ctx, an_tensor *const *in, const case_opts *o, an_tensor *out[3]) {
    an_qkv_proj proj[3];
    for (int p = 0; p < 3; p++) {
        bool l = has_lora(o, p);
        proj[p] = (an_qkv_proj){in[IW + p], o->bias ? in[IBIAS + p] : NULL, l ? in[IA + 2 * p] : NULL,
                                l ? in[IA + 2 * p + 1] : NULL, l && o->mask ? o->masks[p] : NULL, scale_of(p)};
    }
    if (!o->rope) return an_qkv_linear(ctx, in[IX], proj, out);
    an_rope_config c = rope_of(o);
    return an_qkv_linear_rope(ctx, in[IX], proj, o->positions, &c, o->d, NULL, out);
}

/* out (B, T, n) rotated as the model rotated it before: an_rope on its (B, T, n / d, d) view. */
static an_tensor *rotated(an_ctx *ctx, an_tensor *out, const case_opts *o) {
    an_rope_config c = rope_of(o);
    int64_t B = out->shape[0], T = out->shape[1], n = out->shape[2];
    an_tensor *heads = an_reshape(ctx, out, 4, (int64_t[]){B, T, n / o->d, o->d});
    an_tensor *r = heads ? an_rope(ctx, heads, o->positions, &c) : NULL;
    an_tensor *flat = r ? an_reshape(ctx, r, 3, (int64_t[]){B, T, n}) : NULL;
    an_tensor_release(heads), an_tensor_release(r), an_tensor_release(out);
    return flat;
}

/* The same three projections as the model formed them before: an_dropout's multiply and
 * an_lora_linear, or an_linear, q then k then v. */
static an_status composed(an_ctx *ctx, an_tensor *const *in, const case_opts *o, an_tensor *out[3]) {
    for (int p = 0; p < 3; p++) {
        an_tensor *x = in[IX], *b = o->bias ? in[IBIAS + p] : NULL;
        if (!has_lora(o, p)) {
            out[p] = an_linear(ctx, x, in[IW + p], b);
        } else {
            an_tensor *xl = o->mask ? an_mul(ctx, x, o->masks[p]) : an_tensor_retain(x);
            out[p] = an_lora_linear(ctx, x, xl, in[IW + p], b, in[IA + 2 * p], in[IA + 2 * p + 1], scale_of(p));
            an_tensor_release(xl);
        }
        if (out[p] && o->rope && p < 2) out[p] = rotated(ctx, out[p], o);
        if (!out[p]) return an_error_status(ctx);
    }
    return AN_OK;
}

/* sum over the used outputs p of sum(out_p * r_p); releases out. */
static an_tensor *loss_of(an_ctx *ctx, an_tensor *out[3], const case_opts *o) {
    an_tensor *loss = NULL;
    for (int p = 0; p < 3; p++) {
        if (o->use >> p & 1u) {
            an_tensor *m = an_mul(ctx, out[p], o->r[p]), *s = an_sum(ctx, m);
            an_tensor *next = loss ? an_add(ctx, loss, s) : an_tensor_retain(s);
            an_tensor_release(m), an_tensor_release(s), an_tensor_release(loss);
            loss = next;
        }
        an_tensor_release(out[p]);
        out[p] = NULL;
    }
    return loss;
}

static an_tensor *fused_loss(an_ctx *ctx, an_tensor *const *in, void *user) {
    an_tensor *out[3];
    return fused(ctx, in, user, out) == AN_OK ? loss_of(ctx, out, user) : NULL;
}

/* Inputs for shape (B, T, in, q_out, kv_out, r) in f64: x and the adapters require grad, the
 * weights and biases when train_w (a full fine-tune; frozen under LoRA). */
static void make_inputs(an_ctx *ctx, const int64_t *sh, bool train_w, an_tensor *in[N_IN]) {
    int64_t B = sh[0], T = sh[1], d = sh[2], out[3] = {sh[3], sh[4], sh[4]}, r = sh[5];
    in[IX] = test_uniform(ctx, AN_F64, 3, (int64_t[]){B, T, d}, -1, 1, true);
    for (int p = 0; p < 3; p++) {
        in[IW + p] = test_uniform(ctx, AN_F64, 2, (int64_t[]){out[p], d}, -1, 1, train_w);
        in[IBIAS + p] = test_uniform(ctx, AN_F64, 1, (int64_t[]){out[p]}, -1, 1, train_w);
        in[IA + 2 * p] = test_uniform(ctx, AN_F64, 2, (int64_t[]){r, d}, -1, 1, true);
        in[IA + 2 * p + 1] = test_uniform(ctx, AN_F64, 2, (int64_t[]){out[p], r}, -1, 1, true);
    }
}

static void set_case_tensors(an_ctx *ctx, case_opts *o, an_tensor *x, const int64_t *sh, an_dtype dtype) {
    int64_t out[3] = {sh[3], sh[4], sh[4]};
    for (int p = 0; p < 3; p++) {
        an_tensor *m = an_dropout_mask(ctx, x, 0.3);
        o->masks[p] = an_tensor_to(ctx, m, dtype, AN_CPU);
        an_tensor_release(m);
        o->r[p] = test_uniform(ctx, dtype, 3, (int64_t[]){sh[0], sh[1], out[p]}, -1, 1, false);
    }
}

static void release_case_tensors(case_opts *o) {
    for (int p = 0; p < 3; p++) an_tensor_release(o->masks[p]), an_tensor_release(o->r[p]);
    an_tensor_release(o->positions);
}

/* Head sizes of the rope cases: shapes[1] (q 6, kv 2) at 2, shapes[2] (q 8, kv 4) at 4. */
static int64_t rope_d_of(size_t z) { return z == 1 ? 2 : z == 2 ? 4 : 0; }

static const int64_t shapes[][6] = {{1, 1, 1, 1, 1, 1}, {2, 3, 5, 6, 2, 2}, {1, 4, 8, 8, 4, 3}, {3, 2, 7, 5, 3, 1}};
#define N_SHAPES (sizeof shapes / sizeof *shapes)

START_TEST(test_qkv_linear_passes_gradcheck_with_and_without_adapters_biases_and_dropout) {
    for (size_t z = 0; z < N_SHAPES; z++)
        for (int variant = 0; variant < 12; variant++) {
            /* adapters none / q,v / all; bias; (with adapters) masks; weights trained without adapters */
            case_opts o = {variant % 3, (variant / 3) % 2 == 1, (variant / 6) % 2 == 1, 7u, {0}, {0}, 0, 0, NULL};
            if (o.mask && !o.lora) o.use = 5u; /* no adapter to mask: check q and v alone instead */
            bool train_w = o.lora == 0 || variant == 11;
            an_ctx *ctx = test_ctx(500 + 20 * z + variant);
            an_tensor *in[N_IN];
            make_inputs(ctx, shapes[z], train_w, in);
            for (int i = IBIAS; i < IBIAS + 3; i++) an_tensor_set_requires_grad(in[i], train_w && o.bias);
            for (int p = 0; p < 3; p++)
                for (int j = 0; j < 2; j++) an_tensor_set_requires_grad(in[IA + 2 * p + j], has_lora(&o, p));
            set_case_tensors(ctx, &o, in[IX], shapes[z], AN_F64);
            if (rope_d_of(z) && variant % 4 != 2) /* rotated: NEOX, interleaved, llama3 in turn */
                o.rope = 1 + variant % 3, o.d = rope_d_of(z), o.positions = packed_positions(ctx, shapes[z][0], shapes[z][1]);
            char what[160];
            snprintf(what, sizeof what, "qkv_linear shape %zu lora %d bias %d mask %d use %u train_w %d rope %d", z,
                     o.lora, o.bias, o.mask, o.use, train_w, o.rope);
            test_assert_gradcheck(ctx, fused_loss, in, N_IN, &o, what);
            release_case_tensors(&o);
            for (int i = 0; i < N_IN; i++) an_tensor_release(in[i]);
            an_tape_clear(ctx);
            test_ctx_free(ctx);
        }
}
END_TEST

/* Runs build's forward and the loss's backward; copies out (host values) and every input's
 * gradient (NULL where none) for comparison, and clears the gradients. */
typedef an_status (*build_fn)(an_ctx *ctx, an_tensor *const *in, const case_opts *o, an_tensor *out[3]);

static void run_side(an_ctx *ctx, build_fn build, an_tensor *const *in, const case_opts *o, an_tensor *out[3],
                     an_tensor *grads[N_IN]) {
    an_tensor *o3[3];
    test_ok(ctx, build(ctx, in, o, o3), "forward");
    for (int p = 0; p < 3; p++) out[p] = an_tensor_retain(o3[p]);
    an_tensor *loss = loss_of(ctx, o3, o);
    test_ok(ctx, an_backward(ctx, loss), "backward");
    an_tensor_release(loss);
    for (int i = 0; i < N_IN; i++) {
        grads[i] = in[i]->grad;
        in[i]->grad = NULL;
    }
}

static void expect_same_bits(const an_tensor *got, const an_tensor *want, const char *what, const char *name) {
    ck_assert_msg((got == NULL) == (want == NULL), "%s: %s: one side has no tensor", what, name);
    if (!got) return;
    ck_assert_msg(an_tensor_numel(got) == an_tensor_numel(want) && got->dtype == want->dtype, "%s: %s differs in size",
                  what, name);
    ck_assert_msg(memcmp(an_tensor_data(got), an_tensor_data(want), an_tensor_nbytes(got)) == 0,
                  "%s: %s is not bit for bit the separate ops'", what, name);
}

START_TEST(test_qkv_linear_gives_the_separate_ops_bits_on_the_cpu) {
    static const char *const names[N_IN] = {"dx",  "dW_q", "dW_k", "dW_v", "dbias_q", "dbias_k", "dbias_v",
                                            "dA_q", "dB_q", "dA_k", "dB_k", "dA_v",    "dB_v"};
    const an_dtype dtypes[] = {AN_F32, AN_BF16};
    for (size_t z = 1; z < N_SHAPES; z++)
        for (int d = 0; d < 2; d++)
            for (int variant = 0; variant < 24; variant++) {
                case_opts o = {variant % 3, (variant / 3) % 2 == 1, (variant / 6) % 2 == 1, 7u, {0}, {0}, 0, 0, NULL};
                /* every output, then k and v alone (q gets no gradient), then q alone */
                o.use = (variant / 12) % 2 ? (z % 2 ? 6u : 1u) : 7u;
                bool train_w = o.lora == 0 || variant % 5 == 0, x_grad = variant % 7 != 3;
                an_ctx *ctx = test_ctx(700 + 30 * z + variant);
                an_tensor *in64[N_IN], *in[N_IN];
                make_inputs(ctx, shapes[z], train_w, in64);
                for (int i = 0; i < N_IN; i++) {
                    in[i] = an_tensor_to(ctx, in64[i], dtypes[d], AN_CPU);
                    an_tensor_set_requires_grad(in[i], in64[i]->requires_grad);
                }
                an_tensor_set_requires_grad(in[IX], x_grad);
                set_case_tensors(ctx, &o, in[IX], shapes[z], dtypes[d]);
                if (rope_d_of(z) && variant % 4 != 3) /* rotated: NEOX, interleaved, llama3 in turn */
                    o.rope = 1 + variant % 3, o.d = rope_d_of(z),
                    o.positions = packed_positions(ctx, shapes[z][0], shapes[z][1]);
                char what[200];
                snprintf(what, sizeof what,
                         "qkv_linear %s shape %zu lora %d bias %d mask %d use %u train_w %d x_grad %d rope %d",
                         an_dtype_name(dtypes[d]), z, o.lora, o.bias, o.mask, o.use, train_w, x_grad, o.rope);
                an_tensor *out[2][3], *grads[2][N_IN];
                run_side(ctx, fused, in, &o, out[0], grads[0]);
                run_side(ctx, composed, in, &o, out[1], grads[1]);
                for (int p = 0; p < 3; p++) expect_same_bits(out[0][p], out[1][p], what, p ? p == 1 ? "k" : "v" : "q");
                for (int i = 0; i < N_IN; i++) expect_same_bits(grads[0][i], grads[1][i], what, names[i]);
                ck_assert_msg(!x_grad || grads[0][IX], "%s: x got no gradient", what);
                for (int s = 0; s < 2; s++) {
                    for (int p = 0; p < 3; p++) an_tensor_release(out[s][p]);
                    for (int i = 0; i < N_IN; i++) an_tensor_release(grads[s][i]);
                }
                release_case_tensors(&o);
                for (int i = 0; i < N_IN; i++) an_tensor_release(in[i]), an_tensor_release(in64[i]);
                test_ctx_free(ctx);
            }
}
END_TEST

/* Nothing requires grad: no node; the outputs as with recording. */
START_TEST(test_qkv_linear_records_nothing_without_grad) {
    an_ctx *ctx = test_ctx(9);
    an_tensor *in[N_IN];
    make_inputs(ctx, shapes[1], false, in);
    for (int i = 0; i < N_IN; i++) an_tensor_set_requires_grad(in[i], false);
    case_opts o = {1, true, false, 7u, {0}, {0}, 0, 0, NULL};
    an_tensor *out[3];
    test_ok(ctx, fused(ctx, in, &o, out), "forward");
    ck_assert_int_eq(an_tape_length(ctx), 0);
    for (int p = 0; p < 3; p++) {
        ck_assert(!out[p]->requires_grad);
        an_tensor_release(out[p]);
    }
    for (int i = 0; i < N_IN; i++) an_tensor_release(in[i]);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_qkv_linear_rejects_mismatched_shapes) {
    an_ctx *ctx = test_ctx(8);
    an_tensor *in[N_IN];
    make_inputs(ctx, shapes[1], false, in); /* in 5, q 6, kv 2, r 2 */
    an_tensor *b_bad = test_uniform(ctx, AN_F64, 2, (int64_t[]){2, 3}, -1, 1, false);
    an_tensor *mask_bad = test_uniform(ctx, AN_F64, 2, (int64_t[]){6, 5}, -1, 1, false);
    an_qkv_proj proj[3];
    for (int p = 0; p < 3; p++) proj[p] = (an_qkv_proj){in[IW + p], NULL, NULL, NULL, NULL, 1.0};
    an_tensor *out[3] = {in[0], in[0], in[0]};
    proj[2] = (an_qkv_proj){in[IW + 2], NULL, in[IA + 4], b_bad, NULL, 1.0};
    ck_assert_int_eq(an_qkv_linear(ctx, in[IX], proj, out), AN_ERR_INPUT);
    ck_assert_msg(strstr(an_error_message(ctx), "v's A") != NULL, "message: %s", an_error_message(ctx));
    ck_assert(!out[0] && !out[1] && !out[2]);
    an_error_clear(ctx);
    proj[2] = (an_qkv_proj){in[IW + 2], NULL, in[IA + 4], in[IA + 5], mask_bad, 1.0};
    ck_assert_int_eq(an_qkv_linear(ctx, in[IX], proj, out), AN_ERR_INPUT);
    ck_assert_msg(strstr(an_error_message(ctx), "v's dropout mask") != NULL, "message: %s", an_error_message(ctx));
    an_error_clear(ctx);
    proj[2] = (an_qkv_proj){in[IW + 2], NULL, NULL, NULL, NULL, 1.0};
    proj[1].weight = in[IW]; /* fine: q's weight as k's */
    proj[0].bias = in[IBIAS + 1];
    ck_assert_int_eq(an_qkv_linear(ctx, in[IX], proj, out), AN_ERR_INPUT);
    ck_assert_msg(strstr(an_error_message(ctx), "q's bias must be (6)") != NULL, "message: %s", an_error_message(ctx));
    an_error_clear(ctx);
    proj[0].bias = NULL;
    an_rope_config neox = {AN_ROPE_NEOX, 10000.0, 0, 0, 0, 0};
    an_tensor *pos = packed_positions(ctx, 2, 3), *pos_bad = packed_positions(ctx, 3, 2);
    ck_assert_int_eq(an_qkv_linear_rope(ctx, in[IX], proj, pos, &neox, 4, NULL, out), AN_ERR_INPUT); /* q 6 wide */
    ck_assert_msg(strstr(an_error_message(ctx), "q's width 6 is not whole heads") != NULL, "message: %s",
                  an_error_message(ctx));
    an_error_clear(ctx);
    ck_assert_int_eq(an_qkv_linear_rope(ctx, in[IX], proj, pos_bad, &neox, 2, NULL, out), AN_ERR_INPUT);
    ck_assert_msg(strstr(an_error_message(ctx), "must be (B, T)") != NULL, "message: %s", an_error_message(ctx));
    an_error_clear(ctx);
    neox.theta = -1;
    ck_assert_int_eq(an_qkv_linear_rope(ctx, in[IX], proj, pos, &neox, 2, NULL, out), AN_ERR_INPUT);
    ck_assert_msg(strstr(an_error_message(ctx), "theta") != NULL, "message: %s", an_error_message(ctx));
    ck_assert(!out[0] && !out[1] && !out[2]);
    an_error_clear(ctx);
    an_tensor_release(pos), an_tensor_release(pos_bad);
    ck_assert_int_eq(an_qkv_linear(ctx, NULL, proj, out), AN_ERR_INPUT); /* no earlier error: one of its own */
    ck_assert_msg(strstr(an_error_message(ctx), "qkv_linear") != NULL, "message: %s", an_error_message(ctx));
    an_error_clear(ctx);
    ck_assert_int_eq(an_tape_length(ctx), 0);
    an_tensor_release(b_bad), an_tensor_release(mask_bad);
    for (int i = 0; i < N_IN; i++) an_tensor_release(in[i]);
    test_ctx_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("qkv_linear");
    test_add_case(s, "gradcheck", test_qkv_linear_passes_gradcheck_with_and_without_adapters_biases_and_dropout);
    test_add_case(s, "separate ops' bits", test_qkv_linear_gives_the_separate_ops_bits_on_the_cpu);
    test_add_case(s, "no grad", test_qkv_linear_records_nothing_without_grad);
    test_add_case(s, "errors", test_qkv_linear_rejects_mismatched_shapes);
    return test_run(s);
}
