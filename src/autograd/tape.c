/* tape.c — the node list, the backward walk, gradient accumulation and checkpointing.
 * Gradients are added with += into .grad; a non-leaf's .grad is released as soon as the node
 * that produced it has run, so only leaves keep gradients after backward.
 * A leaf's storage counts the nodes that read it (inputs and saved tensors, views included):
 * when backward has freed the last of them, the leaf's gradient is final and nothing will read
 * its values again this step, which is when ctx->grad_ready may update it. */
#include "autograd/tape.h"

#include <stdlib.h>
#include <string.h>

#include "autograd/cpu/cpu.h"  /* an_cpu_add_into */
#include "autograd/op_table.h"  /* an_op_checkpoint */
#include "autograd/profile.h"   /* an_profile_forward, an_profile_clock, an_profile_backward */
#include "kernels/cuda.h"      /* an_cuda_add_into */

struct an_tape {
    an_node **nodes;
    int64_t len, cap;
};

an_tape *an_tape_new(void) { return calloc(1, sizeof(an_tape)); }

_Static_assert(AN_NODE_MAX_INPUTS + AN_NODE_MAX_SAVED <= 32, "an_node.counted has a bit for each input and saved tensor");
#define SAVED_BIT(j) (AN_NODE_MAX_INPUTS + (j))

/* Whether node reads of t count in its storage's tape_uses: t is a leaf with values. */
static bool counts_use(const an_tensor *t) { return t && !t->grad_fn && t->storage; }

/* t NULL: an op moved the saved tensor out (cross_entropy.c hands its saved gradient on), and
 * its count stays with the storage it took along; storage NULL: let go, the count went with it. */
static void uncount(an_tensor *t) {
    if (t && t->storage) t->storage->tape_uses--;
}

static void node_free(an_node *node) {
    for (int i = 0; i < node->n_inputs; i++)
        if (node->counted >> i & 1u) uncount(node->inputs[i]);
    for (int i = 0; i < node->n_saved; i++)
        if (node->counted >> SAVED_BIT(i) & 1u) uncount(node->saved[i]);
    for (int i = 0; i < node->n_inputs; i++) {
        an_tensor *t = node->inputs[i];
        /* During backward this node may hold the last reference to an input whose producer has
         * not run yet; hand that producer a reference so the input's gradient survives. */
        if (t && t->grad_fn && t->grad_fn->output == t && !t->grad_fn->owns_output) {
            t->grad_fn->owns_output = true;
            an_tensor_retain(t);
        }
        if (t && (node->routing_only >> i & 1u)) t->routing_refs--;
        an_tensor_release(t);
    }
    for (int i = 0; i < node->n_saved; i++) an_tensor_release(node->saved[i]);
    if (node->output) {
        node->output->grad_fn = NULL;
        if (node->owns_output) an_tensor_release(node->output);
    }
    if (node->extra_free) node->extra_free(node->extra);
    free(node);
}

static void tape_truncate(an_tape *tape, int64_t len) {
    for (int64_t i = tape->len - 1; i >= len; i--) {
        if (tape->nodes[i]) node_free(tape->nodes[i]);
        tape->nodes[i] = NULL;
    }
    tape->len = len;
}

void an_tape_free(an_ctx *ctx, an_tape *tape) {
    (void)ctx;
    if (!tape) return;
    tape_truncate(tape, 0);
    free(tape->nodes);
    free(tape);
}

void an_tape_clear(an_ctx *ctx) { tape_truncate(ctx->tape, 0); }

int an_tape_readers_since(const an_ctx *ctx, const an_tensor *t, const an_node *since) {
    int n = 0;
    for (int64_t i = ctx->tape->len - 1; i >= 0 && ctx->tape->nodes[i] != since; i--) {
        const an_node *node = ctx->tape->nodes[i];
        for (int j = 0; node && j < node->n_inputs; j++) n += node->inputs[j] == t;
    }
    return n;
}
int64_t an_tape_length(const an_ctx *ctx) { return ctx->tape->len; }

void an_no_grad_begin(an_ctx *ctx) { ctx->no_grad_depth++; }
void an_no_grad_end(an_ctx *ctx) { ctx->no_grad_depth--; }
bool an_grad_enabled(const an_ctx *ctx) { return ctx->no_grad_depth == 0; }

static an_node *record(an_ctx *ctx, const an_op *op, an_tensor *output, an_tensor *const *inputs, int n_inputs) {
    AN_CHECK_NULL(ctx, n_inputs <= AN_NODE_MAX_INPUTS, AN_ERR_INTERNAL, "op %s: %d inputs", op->name, n_inputs);
    an_tape *tape = ctx->tape;
    if (tape->len == tape->cap) {
        int64_t cap = tape->cap ? 2 * tape->cap : 256;
        an_node **nodes = realloc(tape->nodes, (size_t)cap * sizeof *nodes);
        AN_CHECK_NULL(ctx, nodes != NULL, AN_ERR_INTERNAL, "out of host memory growing the tape");
        tape->nodes = nodes;
        tape->cap = cap;
    }
    an_node *node = calloc(1, sizeof *node);
    AN_CHECK_NULL(ctx, node != NULL, AN_ERR_INTERNAL, "out of host memory");
    node->op = op;
    node->n_inputs = n_inputs;
    for (int i = 0; i < n_inputs; i++) {
        node->inputs[i] = an_tensor_retain(inputs[i]);
        if (counts_use(inputs[i])) inputs[i]->storage->tape_uses++, node->counted |= 1u << i;
    }
    node->output = output;
    output->requires_grad = true;
    output->grad_fn = node;
    tape->nodes[tape->len++] = node;
    return node;
}

an_node *an_tape_record(an_ctx *ctx, const an_op *op, an_tensor *output, an_tensor *const *inputs, int n_inputs) {
    if (ctx->profile) an_profile_forward(ctx, op);
    if (!an_grad_enabled(ctx)) return NULL;
    bool any = false;
    for (int i = 0; i < n_inputs; i++) any = any || (inputs[i] && inputs[i]->requires_grad);
    return any ? record(ctx, op, output, inputs, n_inputs) : NULL;
}

void an_node_save(an_node *node, an_tensor *t) {
    if (node->n_saved >= AN_NODE_MAX_SAVED) return;
    if (counts_use(t)) t->storage->tape_uses++, node->counted |= 1u << SAVED_BIT(node->n_saved);
    node->saved[node->n_saved++] = an_tensor_retain(t);
}

void an_node_input_routing_only(an_node *node, int i) {
    an_tensor *t = node && i < node->n_inputs ? node->inputs[i] : NULL;
    if (!t || (node->routing_only >> i & 1u)) return;
    for (int j = 0; j < node->n_inputs; j++) /* the same tensor as another, data-reading input */
        if (j != i && node->inputs[j] == t && !(node->routing_only >> j & 1u)) return;
    node->routing_only |= 1u << i;
    t->routing_refs++;
}

void an_node_input_recomputable(an_node *node, int i) {
    an_tensor *t = node && i < node->n_inputs ? node->inputs[i] : NULL;
    if (!t || (node->routing_only >> i & 1u) || !t->grad_fn || !t->grad_fn->recompute || t->grad_fn->output != t ||
        t->offset != 0)
        return;
    node->routing_only |= 1u << i; /* the op materializes t before every read, whichever input it is */
    t->routing_refs++;
}

an_status an_tensor_materialize(an_ctx *ctx, an_tensor *t) {
    if (!t || t->storage) return AN_OK;
    an_node *producer = t->grad_fn;
    AN_CHECK(ctx, producer && producer->recompute && producer->output == t, AN_ERR_INTERNAL,
             "the values of a tensor were let go and its producer cannot form them again");
    AN_TRY(an_tensor_restore_storage(ctx, t));
    return producer->recompute(ctx, producer, t);
}

bool an_node_needs_grad(const an_node *node, int i) {
    return i < node->n_inputs && node->inputs[i] && node->inputs[i]->requires_grad;
}

void an_node_forget_output(an_node *node, an_tensor *output) {
    if (node->output == output) node->output = NULL;
}

an_status an_grad_accumulate(an_ctx *ctx, an_tensor *t, an_tensor *src) {
    char a[96], b[96];
    AN_CHECK(ctx, an_tensor_numel(src) == an_tensor_numel(t) && src->dtype == t->dtype && src->device == t->device,
             AN_ERR_INTERNAL, "gradient %s does not match its tensor %s", an_tensor_describe(src, b, sizeof b),
             an_tensor_describe(t, a, sizeof a));
    if (!t->grad || t->grad->storage->refcount > 1) {
        /* none yet, or one shared with another tensor's (an_node_pass_grad): a copy of its own, then the sum */
        an_tensor *shared = t->grad, *own = an_tensor_new(ctx, t->dtype, t->device, t->ndim, t->shape);
        if (!own) return an_error_status(ctx);
        t->grad = own;
        an_status st = an_tensor_copy_into(ctx, own, shared ? shared : src);
        an_tensor_release(shared);
        if (!shared || st != AN_OK) return st;
    }
    if (t->device == AN_CPU) {
        an_cpu_add_into(an_tensor_data(t->grad), an_tensor_data(src), t->dtype, an_tensor_numel(t));
        return AN_OK;
    }
    return an_cuda_add_into(ctx, an_tensor_data(t->grad), an_tensor_data(src), t->dtype, an_tensor_numel(t));
}

/* Whether grad may become t's gradient without a copy: t has none yet, and grad is held only by
 * the caller (one reference, sole user of its storage), is no graph output and matches t. */
static bool can_adopt(const an_tensor *t, const an_tensor *grad) {
    return !t->grad && grad->refcount == 1 && grad->storage && grad->storage->refcount == 1 && !grad->grad_fn &&
           grad->dtype == t->dtype && grad->device == t->device && an_tensor_numel(grad) == an_tensor_numel(t);
}

an_status an_node_accumulate(an_ctx *ctx, an_node *node, int i, an_tensor *grad) {
    if (!grad) return an_error_status(ctx) ? an_error_status(ctx) : AN_ERR_INTERNAL;
    an_status st = AN_OK;
    if (an_node_needs_grad(node, i)) {
        an_tensor *t = node->inputs[i];
        /* Adopt a fresh gradient instead of copying it: nothing else can see it. */
        if (can_adopt(t, grad)) {
            memcpy(grad->shape, t->shape, sizeof grad->shape);
            grad->ndim = t->ndim;
            t->grad = grad;
            return AN_OK;
        }
        st = an_grad_accumulate(ctx, t, grad);
    }
    an_tensor_release(grad);
    return st;
}

an_tensor *an_node_grad_sink(an_node *node, int i) {
    if (!an_node_needs_grad(node, i)) return NULL;
    an_tensor *t = node->inputs[i], *g = t->grad;
    if (!g || !g->storage || g->storage->refcount != 1 || g->refcount != 1 || g->dtype != t->dtype ||
        g->device != t->device || an_tensor_numel(g) != an_tensor_numel(t))
        return NULL;
    return g;
}

/* Whether grad, which others may hold too, may become t's gradient as a view: t has none yet and is
 * no leaf (a non-leaf's gradient is only read, by its producer's backward, then dropped; a leaf's is
 * kept and changed in place by optimizers). Whoever writes to a shared gradient later copies it
 * first: an_node_grad_sink refuses shared storage and an_grad_accumulate copies it. */
static bool can_share(const an_tensor *t, const an_tensor *grad) {
    return !t->grad && t->grad_fn && grad->storage && grad->dtype == t->dtype && grad->device == t->device &&
           an_tensor_numel(grad) == an_tensor_numel(t);
}

an_status an_node_pass_grad(an_ctx *ctx, an_node *node, int i, an_tensor *grad_out) {
    if (!an_node_needs_grad(node, i)) return AN_OK;
    an_tensor *t = node->inputs[i];
    /* the backward loop's reference is the only one, or t only reads it: share, don't copy (an add's
     * two inputs both take grad_out so) */
    if (can_adopt(t, grad_out) || can_share(t, grad_out)) {
        t->grad = an_tensor_view(ctx, grad_out, t->ndim, t->shape);
        return t->grad ? AN_OK : an_error_status(ctx);
    }
    return an_grad_accumulate(ctx, t, grad_out);
}

/* Frees node and calls ctx->grad_ready for each leaf that requires grad, has a gradient and is
 * read by no node left on the tape (its storage's count reached 0 with this node). */
static an_status free_and_report(an_ctx *ctx, an_node *node) {
    an_tensor *leaves[AN_NODE_MAX_INPUTS + AN_NODE_MAX_SAVED];
    int n = 0;
    for (int i = 0; ctx->grad_ready && i < node->n_inputs + node->n_saved; i++) {
        an_tensor *t = i < node->n_inputs ? node->inputs[i] : node->saved[i - node->n_inputs];
        int bit = i < node->n_inputs ? i : SAVED_BIT(i - node->n_inputs);
        bool seen = false;
        for (int j = 0; j < n; j++) seen = seen || leaves[j] == t;
        if (t && (node->counted >> bit & 1u) && t->requires_grad && !seen) leaves[n++] = an_tensor_retain(t);
    }
    node_free(node);
    an_status st = AN_OK;
    for (int j = 0; j < n; j++) {
        an_tensor *t = leaves[j];
        if (st == AN_OK && t->grad && t->storage && t->storage->tape_uses == 0)
            st = ctx->grad_ready(ctx, t, ctx->grad_ready_user);
        an_tensor_release(t);
    }
    return st;
}

/* Runs nodes [from, len) in reverse, then drops them. */
static an_status run_backward(an_ctx *ctx, int64_t from) {
    an_tape *tape = ctx->tape;
    an_status st = AN_OK;
    ctx->no_grad_depth++;
    for (int64_t i = tape->len - 1; i >= from && st == AN_OK; i--) {
        an_node *node = tape->nodes[i];
        an_tensor *out = node->output;
        if (out && out->grad) {
            an_tensor *grad_out = out->grad; /* consumed here: a non-leaf keeps no gradient */
            out->grad = NULL;
            double t0 = ctx->profile ? an_profile_clock(ctx) : 0;
            st = node->op->backward(ctx, node, grad_out);
            if (ctx->profile) an_profile_backward(ctx, node->op, an_profile_clock(ctx) - t0);
            an_tensor_release(grad_out);
        }
        if (st == AN_OK) st = free_and_report(ctx, node);
        else node_free(node);
        tape->nodes[i] = NULL;
    }
    ctx->no_grad_depth--;
    tape_truncate(tape, from);
    return st;
}

an_status an_backward(an_ctx *ctx, an_tensor *loss) {
    AN_CHECK(ctx, loss != NULL, AN_ERR_INTERNAL, "backward of a failed forward: %s", an_error_message(ctx));
    AN_CHECK(ctx, an_tensor_numel(loss) == 1, AN_ERR_INPUT, "backward needs a scalar loss, got %lld elements",
             (long long)an_tensor_numel(loss));
    AN_CHECK(ctx, loss->requires_grad, AN_ERR_INPUT, "backward of a loss that depends on nothing requiring grad");
    an_tensor *one = an_tensor_scalar(ctx, loss->dtype, loss->device, 1.0);
    if (!one) return an_error_status(ctx);
    an_status st = an_grad_accumulate(ctx, loss, one);
    an_tensor_release(one);
    if (st != AN_OK) return st;
    if (!loss->grad_fn) return AN_OK; /* a leaf loss: its gradient is the seed itself */
    return run_backward(ctx, 0);
}

typedef struct {
    an_checkpoint_fn fn;
    void *user;
    an_rng rng_at_forward;
} checkpoint_state;

an_status an_checkpoint_backward(an_ctx *ctx, an_node *node, an_tensor *grad_out) {
    checkpoint_state *s = node->extra;
    an_tensor *detached[AN_NODE_MAX_INPUTS] = {0};
    for (int i = 0; i < node->n_inputs; i++) {
        detached[i] = an_tensor_detach(ctx, node->inputs[i]);
        if (!detached[i]) return an_error_status(ctx);
        detached[i]->requires_grad = node->inputs[i]->requires_grad;
    }
    /* Re-run the forward with recording on and the RNG as it was, then put both back. */
    an_rng rng_now = ctx->rng;
    ctx->rng = s->rng_at_forward;
    int depth = ctx->no_grad_depth;
    ctx->no_grad_depth = 0;
    int64_t mark = ctx->tape->len;
    an_tensor *out = s->fn(ctx, detached, node->n_inputs, s->user);
    ctx->no_grad_depth = depth;
    ctx->rng = rng_now;

    an_status st = out ? AN_OK : an_error_status(ctx);
    if (st == AN_OK && out->grad_fn) {
        st = an_grad_accumulate(ctx, out, grad_out);
        if (st == AN_OK) st = run_backward(ctx, mark);
    }
    tape_truncate(ctx->tape, mark);
    for (int i = 0; i < node->n_inputs; i++) {
        if (st == AN_OK && detached[i]->grad) st = an_node_accumulate(ctx, node, i, an_tensor_retain(detached[i]->grad));
        an_tensor_release(detached[i]);
    }
    an_tensor_release(out);
    return st;
}

an_tensor *an_checkpoint(an_ctx *ctx, an_checkpoint_fn fn, an_tensor *const *inputs, int n_inputs, void *user) {
    for (int i = 0; i < n_inputs; i++)
        if (!inputs[i]) return NULL;
    an_rng rng_at_forward = ctx->rng;
    an_no_grad_begin(ctx);
    an_tensor *out = fn(ctx, inputs, n_inputs, user);
    an_no_grad_end(ctx);
    if (!out || !an_grad_enabled(ctx)) return out;
    checkpoint_state *s = malloc(sizeof *s);
    an_node *node = s ? record(ctx, &an_op_checkpoint, out, inputs, n_inputs) : NULL;
    if (!node) {
        free(s);
        an_tensor_release(out);
        AN_CHECK_NULL(ctx, 0, AN_ERR_INTERNAL, "out of host memory recording a checkpoint");
    }
    *s = (checkpoint_state){fn, user, rng_at_forward};
    node->extra = s;
    node->extra_free = free;
    return out;
}
