/* tape.h — reverse-mode autograd: the op descriptor, tape nodes, backward, no-grad scopes and
 * gradient checkpointing.
 *
 * Rules: gradients are accumulated with += into .grad (a tensor used twice gets the sum); a node
 * retains its inputs and saved tensors until backward has run it, and points weakly at its
 * output; backward rules run with recording off and compute in the inputs' dtype. */
#ifndef AN_TAPE_H
#define AN_TAPE_H

#include "autograd/tensor.h"

#define AN_NODE_MAX_INPUTS 16 /* qkv_linear: x and five per projection */
#define AN_NODE_MAX_SAVED 6

/* One row of the op table: what backward needs to know about an op. */
typedef struct an_op {
    const char *name;
    int n_inputs;      /* maximum; optional inputs may be NULL */
    an_status (*backward)(an_ctx *ctx, an_node *node, an_tensor *grad_out);
} an_op;

struct an_node {
    const an_op *op;
    an_tensor *inputs[AN_NODE_MAX_INPUTS]; /* retained; NULL for an absent optional input */
    int n_inputs;
    an_tensor *saved[AN_NODE_MAX_SAVED];   /* retained; forward by-products backward reuses */
    int n_saved;
    an_tensor *output;                     /* weak: cleared when the output is released... */
    bool owns_output;                      /* ...unless backward handed this node a reference */
    unsigned routing_only;                 /* bit i: input i is held only to route its gradient */
    uint32_t counted;                      /* bit i: input i, bit AN_NODE_MAX_INPUTS + j: saved j,
                                              counted in its storage's tape_uses (a leaf's; see
                                              an_grad_ready_fn) */
    /* Set by ops whose output is cheap to form again from their inputs: writes the output's values
     * into out (whose storage was restored) so a consumer can let them go (an_node_input_recomputable). */
    an_status (*recompute)(an_ctx *ctx, an_node *node, an_tensor *out);
    double args[8];                        /* small scalar arguments (eps, scale, flags) */
    int64_t iargs[8];
    void *extra;                           /* larger op state, freed with extra_free */
    void (*extra_free)(void *extra);
};

an_tape *an_tape_new(void);
void an_tape_free(an_ctx *ctx, an_tape *tape);

/* Records a node for `output` when recording is on and any input requires grad; sets
 * output->requires_grad and grad_fn. Returns the node (to save tensors and args on) or NULL when
 * nothing was recorded. Inputs may contain NULL for absent optional inputs. */
an_node *an_tape_record(an_ctx *ctx, const an_op *op, an_tensor *output, an_tensor *const *inputs, int n_inputs);
void an_node_save(an_node *node, an_tensor *t);         /* retains t */
/* Declares that node's backward never reads input i's values (only routes its gradient): once
 * every other reference to that tensor is gone, its storage is freed before the backward runs
 * (an_tensor_data then returns NULL). Ops call it right after recording. */
void an_node_input_routing_only(an_node *node, int i);
/* Like an_node_input_routing_only for an input whose values the backward does read, when that
 * input's producer can recompute it (its node has recompute): the values are let go after the
 * forward and formed again by an_tensor_materialize in the backward, which the op must call before
 * every read of that tensor (under any of its input slots). No-op otherwise. */
void an_node_input_recomputable(an_node *node, int i);
/* Makes t's values available again (recomputing them from its producer when they were let go). */
an_status an_tensor_materialize(an_ctx *ctx, an_tensor *t);
bool an_node_needs_grad(const an_node *node, int i);
/* Adds grad into node->inputs[i]->grad and releases the caller's reference to grad. */
an_status an_node_accumulate(an_ctx *ctx, an_node *node, int i, an_tensor *grad);
/* Input i's existing gradient when a backward rule may add its product straight into it (a GEMM
 * with beta 1 instead of a fresh buffer and an_node_accumulate's add pass): the input needs a
 * gradient, already has one of its dtype, device and size, and that gradient alone holds its
 * storage. NULL otherwise: form a fresh gradient and hand it to an_node_accumulate. Borrowed. */
an_tensor *an_node_grad_sink(an_node *node, int i);
/* Hands the node's upstream gradient itself to input i (borrowed): when nothing else holds it and the
 * input has no gradient yet, the input's gradient becomes a view of it (no copy; the backward loop
 * drops its own reference right after); otherwise it is added like an_node_accumulate would. For
 * rules whose gradient is grad_out unchanged (reshape, add). */
an_status an_node_pass_grad(an_ctx *ctx, an_node *node, int i, an_tensor *grad_out);
/* Adds src into t->grad (allocating it on first use); borrows src. */
an_status an_grad_accumulate(an_ctx *ctx, an_tensor *t, an_tensor *src);
void an_node_forget_output(an_node *node, an_tensor *output); /* called by an_tensor_release */

/* How many nodes recorded after `since` (and still on the tape: during backward, those not yet
 * run) take t as an input: for a backward rule that must know it is t's only reader. */
int an_tape_readers_since(const an_ctx *ctx, const an_tensor *t, const an_node *since);

/* Runs every recorded node in reverse order from a scalar `loss` (seeded with 1), leaves the
 * gradients of leaves in their .grad, and clears the tape. */
an_status an_backward(an_ctx *ctx, an_tensor *loss);
/* Drops every recorded node without running it (evaluation forward passes with grad on). */
void an_tape_clear(an_ctx *ctx);
int64_t an_tape_length(const an_ctx *ctx);

void an_no_grad_begin(an_ctx *ctx);
void an_no_grad_end(an_ctx *ctx);
bool an_grad_enabled(const an_ctx *ctx);

/* Gradient checkpointing: runs fn(inputs) without recording and records one node; its backward
 * re-runs fn with recording on (restoring the RNG so dropout repeats) and backpropagates through
 * it. Parameters fn reads through `user` get their gradients as in an un-checkpointed run. The
 * output is marked requires_grad whenever recording is on. */
typedef an_tensor *(*an_checkpoint_fn)(an_ctx *ctx, an_tensor *const *inputs, int n_inputs, void *user);
an_tensor *an_checkpoint(an_ctx *ctx, an_checkpoint_fn fn, an_tensor *const *inputs, int n_inputs, void *user);

#endif
