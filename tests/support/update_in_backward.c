/* update_in_backward.c — see update_in_backward.h. */
#include "update_in_backward.h"

#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ops.h"
#include "autograd/tape.h"
#include "kernels/cuda.h" /* an_cuda_synchronize */
#include "optim/optim.h"
#include "test_util.h"

enum { PER_LAYER = 4, MAX_LAYERS = 8 };

typedef struct {
    an_tensor *w[MAX_LAYERS][PER_LAYER]; /* W1, b1, W2, W3 */
    an_optim *opt;
} net;

static void net_make(an_ctx *ctx, net *n, const test_update_in_backward_shape *s, an_tensor *const *init) {
    an_adamw_config c = an_adamw_config_default();
    c.lr = 2e-2;
    c.weight_decay = 0.1;
    c.schedule = (an_schedule){.kind = AN_SCHEDULE_LINEAR, .warmup_steps = 1, .total_steps = 10};
    test_ok(ctx, an_optim_create(ctx, &c, &n->opt), "optimizer");
    for (int l = 0; l < s->layers; l++)
        for (int k = 0; k < PER_LAYER; k++) {
            an_tensor *t = an_tensor_to(ctx, init[l * PER_LAYER + k], s->dtype, s->device);
            ck_assert_ptr_nonnull(t);
            t->requires_grad = true;
            n->w[l][k] = t;
            char name[64];
            snprintf(name, sizeof name, "layers.%d.%s", l, (const char *[]){"w1", "b1.bias", "w2", "w3"}[k]);
            test_ok(ctx, an_optim_add(ctx, n->opt, name, &n->w[l][k], k == 1, 0, an_tensor_numel(t)), "register");
        }
}

static void net_free(net *n, int layers) {
    for (int l = 0; l < layers; l++)
        for (int k = 0; k < PER_LAYER; k++) an_tensor_release(n->w[l][k]);
    an_optim_free(n->opt);
}

/* mean over the rows of (h_L)^2 with h_0 = x, h_{l+1} = h_l + W3 swiglu(W1 h_l + b1, W2 h_l). */
static an_tensor *net_loss(an_ctx *ctx, net *n, int layers, an_tensor *x) {
    an_tensor *h = an_tensor_retain(x);
    for (int l = 0; l < layers; l++) {
        an_tensor *g = an_linear(ctx, h, n->w[l][0], n->w[l][1]);
        an_tensor *u = an_linear(ctx, h, n->w[l][2], NULL);
        an_tensor *a = an_swiglu(ctx, g, u);
        an_tensor *o = an_linear(ctx, a, n->w[l][3], NULL);
        an_tensor *next = an_add(ctx, o, h);
        an_tensor_release(g), an_tensor_release(u), an_tensor_release(a), an_tensor_release(o), an_tensor_release(h);
        h = next;
    }
    an_tensor *sq = an_mul(ctx, h, h);
    an_tensor *loss = an_mean(ctx, sq);
    an_tensor_release(sq), an_tensor_release(h);
    ck_assert_msg(loss != NULL, "%s", an_error_message(ctx));
    return loss;
}

static void backward(an_ctx *ctx, net *n, int layers, an_tensor *x) {
    an_tensor *loss = net_loss(ctx, n, layers, x);
    test_ok(ctx, an_backward(ctx, loss), "backward");
    an_tensor_release(loss);
}

static void expect_same_bits(an_ctx *ctx, const an_tensor *a, const an_tensor *b, const char *what) {
    an_tensor *ha = an_tensor_to(ctx, a, a->dtype, AN_CPU), *hb = an_tensor_to(ctx, b, b->dtype, AN_CPU);
    ck_assert_ptr_nonnull(ha);
    ck_assert_ptr_nonnull(hb);
    ck_assert_int_eq((long long)an_tensor_nbytes(ha), (long long)an_tensor_nbytes(hb));
    size_t es = an_dtype_size(ha->dtype);
    for (int64_t i = 0; i < an_tensor_numel(ha); i++)
        ck_assert_msg(memcmp((char *)an_tensor_data(ha) + i * es, (char *)an_tensor_data(hb) + i * es, es) == 0,
                      "%s: element %lld is %.9g stepping after backward, %.9g in it", what, (long long)i,
                      an_tensor_get(ha, i), an_tensor_get(hb, i));
    an_tensor_release(ha), an_tensor_release(hb);
}

void test_update_in_backward_matches_step(an_ctx *ctx, const test_update_in_backward_shape *s) {
    ck_assert_int_le(s->layers, MAX_LAYERS);
    an_tensor *init[MAX_LAYERS * PER_LAYER];
    for (int l = 0; l < s->layers; l++) {
        init[l * PER_LAYER + 0] = test_uniform(ctx, AN_F32, 2, (int64_t[]){s->ff, s->dim}, -0.3, 0.3, false);
        init[l * PER_LAYER + 1] = test_uniform(ctx, AN_F32, 1, (int64_t[]){s->ff}, -0.1, 0.1, false);
        init[l * PER_LAYER + 2] = test_uniform(ctx, AN_F32, 2, (int64_t[]){s->ff, s->dim}, -0.3, 0.3, false);
        init[l * PER_LAYER + 3] = test_uniform(ctx, AN_F32, 2, (int64_t[]){s->dim, s->ff}, -0.3, 0.3, false);
    }
    net after, during;
    net_make(ctx, &after, s, init);
    net_make(ctx, &during, s, init);
    if (s->grain) test_ok(ctx, an_optim_backward_grain(ctx, during.opt, s->grain), "grain");
    for (int step = 0; step < s->steps; step++) {
        an_tensor *xs[8];
        ck_assert_int_le(s->micro_batches, 8);
        for (int b = 0; b < s->micro_batches; b++) {
            an_tensor *hx = test_uniform(ctx, AN_F32, 2, (int64_t[]){s->rows, s->dim}, -1, 1, false);
            xs[b] = an_tensor_to(ctx, hx, s->dtype, s->device);
            an_tensor_release(hx);
        }
        an_optim_report ra, rd;
        for (int b = 0; b < s->micro_batches; b++) backward(ctx, &after, s->layers, xs[b]);
        test_ok(ctx, an_optim_step(ctx, after.opt, &ra), "step after backward");
        for (int b = 0; b < s->micro_batches; b++) {
            if (b == s->micro_batches - 1) test_ok(ctx, an_optim_backward_begin(ctx, during.opt), "begin");
            backward(ctx, &during, s->layers, xs[b]);
        }
        test_ok(ctx, an_optim_backward_end(ctx, during.opt, &rd), "end");
        ck_assert_int_eq(rd.step, ra.step);
        ck_assert_msg(rd.lr == ra.lr, "step %d: lr %.17g and %.17g", step, rd.lr, ra.lr);
        ck_assert_msg(rd.grad_scale == 1.0 && ra.grad_scale == 1.0, "step %d: clipped", step);
        ck_assert_msg(ra.grad_norm > 0 && fabs(rd.grad_norm - ra.grad_norm) <= 1e-12 * ra.grad_norm,
                      "step %d: gradient norm %.17g in backward, %.17g after", step, rd.grad_norm, ra.grad_norm);
        int n_state = an_optim_state_count(after.opt);
        ck_assert_int_eq(an_optim_state_count(during.opt), n_state);
        char what[160];
        for (int i = 0; i < n_state; i++) {
            const char *name;
            an_tensor *sa = an_optim_state_at(after.opt, i, &name), *sd = an_optim_state_at(during.opt, i, NULL);
            snprintf(what, sizeof what, "step %d: %s", step, name);
            expect_same_bits(ctx, sa, sd, what);
        }
        for (int l = 0; l < s->layers; l++)
            for (int k = 0; k < PER_LAYER; k++) {
                snprintf(what, sizeof what, "step %d: layer %d parameter %d", step, l, k);
                expect_same_bits(ctx, after.w[l][k], during.w[l][k], what);
            }
        an_optim_zero_grad(after.opt), an_optim_zero_grad(during.opt);
        for (int b = 0; b < s->micro_batches; b++) an_tensor_release(xs[b]);
    }
    net_free(&after, s->layers), net_free(&during, s->layers);
    for (int i = 0; i < s->layers * PER_LAYER; i++) an_tensor_release(init[i]);
}
