/* op_table.h — the table of every differentiable op, generated from ops.def. */
#ifndef AN_OP_TABLE_H
#define AN_OP_TABLE_H

#include "autograd/tape.h"  /* an_op, an_node */

#define AN_OP(name, max_inputs)                                                        \
    an_status an_##name##_backward(an_ctx *ctx, an_node *node, an_tensor *grad_out); \
    extern const an_op an_op_##name;
#include "autograd/ops.def"
#undef AN_OP

extern const an_op *const an_op_table[];
extern const int an_op_count;

#endif
