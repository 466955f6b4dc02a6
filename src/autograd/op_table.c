/* op_table.c — instantiates one an_op per row of ops.def, and the table that lists them. */
#include "autograd/op_table.h"

#define AN_OP(name, max_inputs) const an_op an_op_##name = {#name, max_inputs, an_##name##_backward};
#include "autograd/ops.def"
#undef AN_OP

const an_op *const an_op_table[] = {
#define AN_OP(name, max_inputs) &an_op_##name,
#include "autograd/ops.def"
#undef AN_OP
};
const int an_op_count = (int)(sizeof an_op_table / sizeof an_op_table[0]);
