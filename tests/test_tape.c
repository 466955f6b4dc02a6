/* test_tape.c — the tape itself: gradients of a tensor used twice add up, intermediates the
 * caller released still carry gradient, no-grad scopes record nothing, repeated backward calls
 * accumulate, gradient checkpointing gives bit-identical gradients with fewer bytes alive, and the
 * op profiler counts each op once per pass, inputs held only to route gradients let their
 * storage go early, an add's two non-leaf inputs share one gradient until one of them gets more,
 * and ctx->grad_ready reports each leaf once, when its gradient is final. */
#include <math.h>
#include <string.h>

#include "autograd/op_table.h" /* an_op_mul, an_op_sum, an_op_add */
#include "autograd/profile.h"
#include "support/test_util.h"

START_TEST(test_leaf_used_twice_gets_the_sum) {
    an_ctx *ctx = test_ctx(1);
    an_tensor *a = test_uniform(ctx, AN_F64, 1, (int64_t[]){5}, -2, 2, true);
    an_tensor *sq = an_mul(ctx, a, a);         /* a used twice in one op */
    an_tensor *y = an_add(ctx, sq, a);         /* and once more */
    an_tensor *loss = an_sum(ctx, y);
    an_tensor_release(sq);
    an_tensor_release(y);                      /* released intermediates still get gradients */
    ck_assert_int_eq(an_backward(ctx, loss), AN_OK);
    for (int i = 0; i < 5; i++) ck_assert_double_eq_tol(an_tensor_get(a->grad, i), 2 * an_tensor_get(a, i) + 1, 1e-15);
    ck_assert_int_eq(an_tape_length(ctx), 0);
    /* A second backward over a new graph adds to the same .grad. */
    an_tensor *loss2 = an_sum(ctx, a);
    ck_assert_int_eq(an_backward(ctx, loss2), AN_OK);
    for (int i = 0; i < 5; i++) ck_assert_double_eq_tol(an_tensor_get(a->grad, i), 2 * an_tensor_get(a, i) + 2, 1e-15);
    an_tensor_release(loss);
    an_tensor_release(loss2);
    an_tensor_release(a);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_no_grad_records_nothing) {
    an_ctx *ctx = test_ctx(2);
    an_tensor *a = test_uniform(ctx, AN_F64, 1, (int64_t[]){3}, -1, 1, true);
    an_no_grad_begin(ctx);
    an_tensor *y = an_mul(ctx, a, a);
    an_no_grad_end(ctx);
    ck_assert(!y->requires_grad);
    ck_assert_ptr_null(y->grad_fn);
    ck_assert_int_eq(an_tape_length(ctx), 0);
    an_tensor *s = an_sum(ctx, y);
    ck_assert_int_ne(an_backward(ctx, s), AN_OK); /* nothing to differentiate: an error */
    ck_assert_int_eq(an_error_status(ctx), AN_ERR_INPUT);
    an_error_clear(ctx);
    an_tensor *frozen = test_uniform(ctx, AN_F64, 1, (int64_t[]){3}, -1, 1, false);
    an_tensor *z = an_mul(ctx, frozen, frozen);
    ck_assert_int_eq(an_tape_length(ctx), 0); /* no input requires grad */
    an_tensor *v = an_mul(ctx, a, a);
    ck_assert_int_ne(an_backward(ctx, v), AN_OK); /* not a scalar */
    ck_assert_ptr_nonnull(strstr(an_error_message(ctx), "scalar"));
    an_error_clear(ctx);
    an_tensor_release(v);
    an_tensor_release(z);
    an_tensor_release(frozen);
    an_tensor_release(s);
    an_tensor_release(y);
    an_tensor_release(a);
    test_ctx_free(ctx);
}
END_TEST

/* A transformer-like block: out = x + W3 (swiglu(W1 x, W2 x) * dropout_mask), the mask drawn
 * from ctx's RNG so checkpointing must replay it. */
typedef struct {
    an_tensor *w1, *w2, *w3; /* (F, D), (F, D), (D, F) */
    bool dropout;            /* off for finite differences, which need a deterministic forward */
} block_params;

static an_tensor *block(an_ctx *ctx, an_tensor *const *in, int n, void *user) {
    block_params *p = user;
    an_tensor *x = in[0];
    an_tensor *g = an_linear(ctx, x, p->w1, NULL);
    an_tensor *u = an_linear(ctx, x, p->w2, NULL);
    an_tensor *h = an_swiglu(ctx, g, u);
    an_tensor *mask = g ? an_tensor_new(ctx, g->dtype, AN_CPU, g->ndim, g->shape) : NULL;
    if (mask) an_tensor_fill_uniform(ctx, mask, p->dropout ? 0.5 : 1.0, p->dropout ? 1.5 : 1.0);
    an_tensor *hm = an_mul(ctx, h, mask);
    an_tensor *o = an_linear(ctx, hm, p->w3, NULL);
    an_tensor *out = an_add(ctx, o, x);
    an_tensor_release(g), an_tensor_release(u), an_tensor_release(h), an_tensor_release(mask);
    an_tensor_release(hm), an_tensor_release(o);
    return out;
}

/* Runs `layers` blocks (checkpointed or not) and backward; returns the peak bytes of the run. */
static size_t run_stack(an_ctx *ctx, an_tensor *x, block_params *p, int layers, bool checkpointed) {
    an_mem_reset_peak(ctx, AN_CPU);
    an_tensor *h = an_tensor_retain(x);
    for (int l = 0; l < layers; l++) {
        an_tensor *next = checkpointed ? an_checkpoint(ctx, block, &h, 1, &p[l]) : block(ctx, &h, 1, &p[l]);
        ck_assert_msg(next != NULL, "%s", an_error_message(ctx));
        an_tensor_release(h);
        h = next;
    }
    an_tensor *sq = an_mul(ctx, h, h);
    an_tensor *loss = an_mean(ctx, sq);
    an_tensor_release(sq);
    ck_assert_int_eq(an_backward(ctx, loss), AN_OK);
    an_tensor_release(loss);
    an_tensor_release(h);
    return ctx->mem[AN_CPU].peak;
}

START_TEST(test_checkpoint_gradients_are_bit_identical_and_use_less_memory) {
    enum { layers = 6, rows = 256, dim = 32, ff = 96 };
    an_ctx *ctx = test_ctx(11);
    block_params p[layers];
    for (int l = 0; l < layers; l++) {
        p[l].w1 = test_uniform(ctx, AN_F32, 2, (int64_t[]){ff, dim}, -0.2, 0.2, true);
        p[l].w2 = test_uniform(ctx, AN_F32, 2, (int64_t[]){ff, dim}, -0.2, 0.2, true);
        p[l].w3 = test_uniform(ctx, AN_F32, 2, (int64_t[]){dim, ff}, -0.2, 0.2, true);
        p[l].dropout = true;
    }
    an_tensor *x = test_uniform(ctx, AN_F32, 2, (int64_t[]){rows, dim}, -1, 1, true);

    an_rng start = ctx->rng;
    size_t peak_plain = run_stack(ctx, x, p, layers, false);
    an_tensor *plain[3 * layers + 1];
    for (int l = 0; l < layers; l++) {
        plain[3 * l] = p[l].w1->grad, plain[3 * l + 1] = p[l].w2->grad, plain[3 * l + 2] = p[l].w3->grad;
        p[l].w1->grad = p[l].w2->grad = p[l].w3->grad = NULL;
    }
    plain[3 * layers] = x->grad;
    x->grad = NULL;

    ctx->rng = start; /* same dropout draws */
    size_t peak_ckpt = run_stack(ctx, x, p, layers, true);
    an_tensor *ckpt[3 * layers + 1];
    for (int l = 0; l < layers; l++) ckpt[3 * l] = p[l].w1->grad, ckpt[3 * l + 1] = p[l].w2->grad, ckpt[3 * l + 2] = p[l].w3->grad;
    ckpt[3 * layers] = x->grad;

    for (int i = 0; i < 3 * layers + 1; i++) {
        ck_assert_msg(plain[i] && ckpt[i], "gradient %d missing", i);
        ck_assert_msg(memcmp(an_tensor_data(plain[i]), an_tensor_data(ckpt[i]), an_tensor_nbytes(plain[i])) == 0,
                      "gradient %d differs between checkpointed and plain runs", i);
        an_tensor_release(plain[i]);
    }
    printf("checkpointing %d blocks: peak %zu bytes plain, %zu checkpointed\n", layers, peak_plain, peak_ckpt);
    ck_assert_msg(peak_ckpt * 2 < peak_plain, "checkpointed peak %zu is not well below plain %zu", peak_ckpt, peak_plain);
    for (int l = 0; l < layers; l++) {
        an_tensor_release(p[l].w1), an_tensor_release(p[l].w2), an_tensor_release(p[l].w3);
    }
    an_tensor_release(x);
    test_ctx_free(ctx);
}
END_TEST

static an_tensor *checkpointed_block(an_ctx *ctx, an_tensor *const *in, void *user) {
    return an_checkpoint(ctx, block, in, 1, user);
}

START_TEST(test_checkpoint_passes_gradcheck) {
    an_ctx *ctx = test_ctx(12);
    block_params p = {
        test_uniform(ctx, AN_F64, 2, (int64_t[]){6, 4}, -0.5, 0.5, true),
        test_uniform(ctx, AN_F64, 2, (int64_t[]){6, 4}, -0.5, 0.5, true),
        test_uniform(ctx, AN_F64, 2, (int64_t[]){4, 6}, -0.5, 0.5, true),
        false,
    };
    an_tensor *x = test_uniform(ctx, AN_F64, 2, (int64_t[]){3, 4}, -1, 1, true);
    /* The parameters reached through `user` are inputs of the check too: list them so their
     * gradients (accumulated during the checkpoint's re-run) are compared as well. */
    an_tensor *inputs[] = {x, p.w1, p.w2, p.w3};
    test_assert_gradcheck(ctx, checkpointed_block, inputs, 4, &p, "checkpoint(block)");
    an_tensor_release(p.w1), an_tensor_release(p.w2), an_tensor_release(p.w3);
    an_tensor_release(x);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_profile_counts_each_op_once_per_pass) {
    an_ctx *ctx = test_ctx(5);
    an_tensor *a = test_uniform(ctx, AN_F64, 1, (int64_t[]){4}, -1, 1, true);
    ck_assert_int_eq(an_profile_begin(ctx), AN_OK);
    an_tensor *y = an_mul(ctx, a, a);
    an_tensor *z = an_mul(ctx, y, a);
    an_tensor *loss = an_sum(ctx, z);
    ck_assert_int_eq(an_backward(ctx, loss), AN_OK);
    ck_assert_int_eq(an_profile_calls(ctx, &an_op_mul, false), 2);
    ck_assert_int_eq(an_profile_calls(ctx, &an_op_mul, true), 2);
    ck_assert_int_eq(an_profile_calls(ctx, &an_op_sum, false), 1);
    ck_assert_int_eq(an_profile_calls(ctx, &an_op_sum, true), 1);
    ck_assert_int_eq(an_profile_calls(ctx, &an_op_add, false), 0);
    /* the table names the ops that ran and only those */
    char buf[2048] = {0};
    FILE *f = fmemopen(buf, sizeof buf - 1, "w");
    an_profile_print(ctx, f);
    fclose(f);
    ck_assert_msg(strstr(buf, "\nmul ") && strstr(buf, "\nsum ") && !strstr(buf, "\nadd "), "table:\n%s", buf);
    an_profile_end(ctx);
    ck_assert_int_eq(an_profile_calls(ctx, &an_op_mul, false), 0);
    an_tensor_release(y), an_tensor_release(z), an_tensor_release(loss), an_tensor_release(a);
    test_ctx_free(ctx);
}
END_TEST

/* h = a * a feeds only a frozen linear (whose backward reads the weight, not h) and a scale: once
 * the caller lets h go, its storage is freed before backward, and a's gradient is still
 * 2 a (w^T 1 + 3). */
START_TEST(test_routing_only_inputs_free_their_storage_early) {
    an_ctx *ctx = test_ctx(6);
    an_tensor *a = test_uniform(ctx, AN_F64, 2, (int64_t[]){3, 4}, -1, 1, true);
    an_tensor *w = test_uniform(ctx, AN_F64, 2, (int64_t[]){5, 4}, -1, 1, false);
    an_tensor *h = an_mul(ctx, a, a);
    an_tensor *y = an_linear(ctx, h, w, NULL), *s = an_scale(ctx, h, 3.0);
    an_tensor *ys = an_sum(ctx, y), *ss = an_sum(ctx, s), *loss = an_add(ctx, ys, ss);
    int64_t before = ctx->mem[AN_CPU].current;
    an_tensor_release(h);
    ck_assert_int_eq(before - ctx->mem[AN_CPU].current, 3 * 4 * (int64_t)sizeof(double));
    an_tensor_release(y), an_tensor_release(s), an_tensor_release(ys), an_tensor_release(ss);
    ck_assert_int_eq(an_backward(ctx, loss), AN_OK);
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 4; j++) {
            double colsum = 0;
            for (int o = 0; o < 5; o++) colsum += an_tensor_get(w, o * 4 + j);
            ck_assert_double_eq_tol(an_tensor_get(a->grad, i * 4 + j), 2 * an_tensor_get(a, i * 4 + j) * (colsum + 3),
                                    1e-12);
        }
    /* a weight that trains keeps its input's values */
    an_tensor *w2 = test_uniform(ctx, AN_F64, 2, (int64_t[]){5, 4}, -1, 1, true);
    an_tensor *h2 = an_mul(ctx, a, a), *y2 = an_linear(ctx, h2, w2, NULL);
    before = ctx->mem[AN_CPU].current;
    an_tensor_release(h2);
    ck_assert_int_eq(ctx->mem[AN_CPU].current, before);
    an_tensor *loss2 = an_sum(ctx, y2);
    ck_assert_int_eq(an_backward(ctx, loss2), AN_OK);
    an_tensor_release(loss), an_tensor_release(loss2), an_tensor_release(y2);
    an_tensor_release(a), an_tensor_release(w), an_tensor_release(w2);
    test_ctx_free(ctx);
}
END_TEST

/* h = swiglu(g, u) feeds only a trained linear: its values go after the forward and are formed
 * again for dW = dY^T h in the backward, which equals the dW of a run that kept them. */
START_TEST(test_recomputable_input_is_formed_again_for_backward) {
    an_ctx *ctx = test_ctx(9);
    an_tensor *g = test_uniform(ctx, AN_F64, 2, (int64_t[]){3, 4}, -1, 1, true);
    an_tensor *u = test_uniform(ctx, AN_F64, 2, (int64_t[]){3, 4}, -1, 1, true);
    an_tensor *w = test_uniform(ctx, AN_F64, 2, (int64_t[]){2, 4}, -1, 1, true);
    an_tensor *want = NULL;
    for (int keep = 1; keep >= 0; keep--) {
        an_tensor *h = an_swiglu(ctx, g, u), *y = an_linear(ctx, h, w, NULL), *loss = an_sum(ctx, y);
        int64_t before = ctx->mem[AN_CPU].current;
        an_tensor *held = keep ? an_tensor_retain(h) : NULL; /* a reader of h keeps its values */
        an_tensor_release(h);
        ck_assert_int_eq(before - ctx->mem[AN_CPU].current, keep ? 0 : 3 * 4 * (int64_t)sizeof(double));
        ck_assert_int_eq(an_backward(ctx, loss), AN_OK);
        if (keep) want = an_tensor_retain(w->grad);
        else test_assert_tensors_close(w->grad, want, 0, 0, "dW from recomputed h");
        an_tensor_release(w->grad), an_tensor_release(g->grad), an_tensor_release(u->grad);
        w->grad = g->grad = u->grad = NULL;
        an_tensor_release(held), an_tensor_release(y), an_tensor_release(loss);
    }
    an_tensor_release(want), an_tensor_release(g), an_tensor_release(u), an_tensor_release(w);
    test_ctx_free(ctx);
}
END_TEST

/* s = p + q of two non-leaves shares one gradient buffer between p and q (no copy); p also feeds a
 * mul whose gradient then adds to p's: the shared buffer is copied first, so q's stays ds. Analytic
 * gradients: loss = sum(s * s) + sum(p * c), p = 2 x, q = 3 y: dx = 2 (2 s + c), dy = 3 (2 s). */
START_TEST(test_add_shares_its_gradient_and_copies_before_a_sum) {
    an_ctx *ctx = test_ctx(10);
    an_tensor *x = test_uniform(ctx, AN_F64, 2, (int64_t[]){3, 4}, -1, 1, true);
    an_tensor *y = test_uniform(ctx, AN_F64, 2, (int64_t[]){3, 4}, -1, 1, true);
    an_tensor *c = test_uniform(ctx, AN_F64, 2, (int64_t[]){3, 4}, -1, 1, false);
    for (int order = 0; order < 2; order++) { /* p first in the add, then q first */
        an_tensor *p = an_scale(ctx, x, 2.0), *q = an_scale(ctx, y, 3.0);
        an_tensor *pc = an_mul(ctx, p, c); /* recorded before the add: its backward runs after */
        an_tensor *s = order ? an_add(ctx, q, p) : an_add(ctx, p, q);
        an_tensor *ss = an_mul(ctx, s, s), *l1 = an_sum(ctx, ss), *l2 = an_sum(ctx, pc), *loss = an_add(ctx, l1, l2);
        ck_assert_int_eq(an_backward(ctx, loss), AN_OK);
        for (int i = 0; i < 12; i++) {
            double sv = an_tensor_get(s, i), cv = an_tensor_get(c, i);
            ck_assert_double_eq_tol(an_tensor_get(x->grad, i), 2 * (2 * sv + cv), 1e-12);
            ck_assert_double_eq_tol(an_tensor_get(y->grad, i), 3 * (2 * sv), 1e-12);
        }
        an_tensor *tmp[] = {p, q, pc, s, ss, l1, l2, loss};
        for (size_t i = 0; i < sizeof tmp / sizeof *tmp; i++) an_tensor_release(tmp[i]);
        an_tensor_zero_grad(x), an_tensor_zero_grad(y);
    }
    an_tensor_release(x), an_tensor_release(y), an_tensor_release(c);
    test_ctx_free(ctx);
}
END_TEST

/* ctx->grad_ready's record: which leaf, in which order, with a copy of its gradient then. */
typedef struct {
    an_tensor *leaf[32];
    an_tensor *grad_then[32];
    int n;
} ready_log;

static an_status log_ready(an_ctx *ctx, an_tensor *leaf, void *user) {
    ready_log *log = user;
    ck_assert_int_lt(log->n, 32);
    log->leaf[log->n] = leaf;
    log->grad_then[log->n] = an_tensor_to(ctx, leaf->grad, leaf->grad->dtype, AN_CPU);
    log->n++;
    return AN_OK;
}

static int logged_at(const ready_log *log, const an_tensor *t) {
    for (int i = 0; i < log->n; i++)
        if (log->leaf[i] == t) return i;
    return -1;
}

START_TEST(test_grad_ready_reports_each_leaf_once_its_gradient_is_final) {
    enum { layers = 3, rows = 16, dim = 8, ff = 24 };
    for (int checkpointed = 0; checkpointed < 2; checkpointed++) {
        an_ctx *ctx = test_ctx(31);
        block_params p[layers];
        for (int l = 0; l < layers; l++) {
            p[l].w1 = test_uniform(ctx, AN_F64, 2, (int64_t[]){ff, dim}, -0.3, 0.3, true);
            p[l].w2 = test_uniform(ctx, AN_F64, 2, (int64_t[]){ff, dim}, -0.3, 0.3, true);
            p[l].w3 = test_uniform(ctx, AN_F64, 2, (int64_t[]){dim, ff}, -0.3, 0.3, true);
            p[l].dropout = false;
        }
        /* tied: the last layer reuses the first one's w1. Not under checkpointing: the re-run of
           the last layer's block is the only reader on the tape when it ends, so the tied weight
           would be reported there and again after the first layer's re-run (the optimizer refuses
           the second report: test_optim's update-in-backward case) */
        if (!checkpointed) {
            an_tensor_release(p[2].w1);
            p[2].w1 = an_tensor_retain(p[0].w1);
        }
        an_tensor *frozen = p[1].w2;
        frozen->requires_grad = false; /* never reported: it gets no gradient */
        an_tensor *x = test_uniform(ctx, AN_F64, 2, (int64_t[]){rows, dim}, -1, 1, true);
        ready_log log = {.n = 0};
        ctx->grad_ready = log_ready, ctx->grad_ready_user = &log;
        run_stack(ctx, x, p, layers, checkpointed);
        ctx->grad_ready = NULL;
        /* x and eight distinct weights (one tied, one frozen of nine), each once; checkpointing
           adds its re-run's detached inputs (leaves of the re-run's graph) */
        int ours = 0;
        for (int l = 0; l < layers; l++)
            ours += (logged_at(&log, p[l].w1) >= 0) + (logged_at(&log, p[l].w2) >= 0) + (logged_at(&log, p[l].w3) >= 0);
        int tied = !checkpointed;
        ck_assert_int_eq(ours + (logged_at(&log, x) >= 0), 1 + 3 * layers - 1); /* the tied one counted twice */
        if (!checkpointed) ck_assert_int_eq(log.n, 1 + 3 * layers - 2);
        an_tensor *known[1 + 3 * layers] = {x};
        for (int l = 0; l < layers; l++) known[1 + 3 * l] = p[l].w1, known[2 + 3 * l] = p[l].w2, known[3 + 3 * l] = p[l].w3;
        for (int k = 0; k < 1 + 3 * layers; k++) {
            int i = logged_at(&log, known[k]);
            if (known[k] == frozen) continue;
            ck_assert_int_ge(i, 0);
            for (int j = i + 1; j < log.n; j++) ck_assert_ptr_ne(log.leaf[j], known[k]); /* once */
            ck_assert_msg(memcmp(an_tensor_data(log.grad_then[i]), an_tensor_data(known[k]->grad),
                                 an_tensor_nbytes(known[k]->grad)) == 0,
                          "checkpointed %d: leaf %d was reported before its gradient was final", checkpointed, k);
        }
        for (int i = 0; i < log.n; i++) an_tensor_release(log.grad_then[i]);
        ck_assert_int_eq(logged_at(&log, frozen), -1);
        /* the last layer's weights are final long before the first layer's; the tied w1 only after
           its first layer's use, with x (the same node, the first one recorded, reads both) */
        ck_assert_int_lt(logged_at(&log, p[2].w3), logged_at(&log, p[0].w3));
        if (tied) ck_assert_int_gt(logged_at(&log, p[0].w1), logged_at(&log, p[1].w1));
        ck_assert_int_ge(logged_at(&log, x), log.n - 2);
        ck_assert_int_ge(logged_at(&log, p[0].w1), log.n - 2);
        for (int l = 0; l < layers; l++) {
            an_tensor_release(p[l].w1), an_tensor_release(p[l].w2), an_tensor_release(p[l].w3);
        }
        an_tensor_release(x);
        test_ctx_free(ctx);
    }
}
END_TEST

int main(void) {
    Suite *s = suite_create("tape");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_leaf_used_twice_gets_the_sum);
    tcase_add_test(tc, test_no_grad_records_nothing);
    tcase_add_test(tc, test_checkpoint_gradients_are_bit_identical_and_use_less_memory);
    tcase_add_test(tc, test_checkpoint_passes_gradcheck);
    tcase_add_test(tc, test_profile_counts_each_op_once_per_pass);
    tcase_add_test(tc, test_routing_only_inputs_free_their_storage_early);
    tcase_add_test(tc, test_recomputable_input_is_formed_again_for_backward);
    tcase_add_test(tc, test_add_shares_its_gradient_and_copies_before_a_sum);
    tcase_add_test(tc, test_grad_ready_reports_each_leaf_once_its_gradient_is_final);
    suite_add_tcase(s, tc);
    return test_run(s);
}
