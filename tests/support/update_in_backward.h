/* update_in_backward.h — the check test_optim (CPU) and test_cuda_adamw (GPU) share for
 * an_optim_backward_begin/_end: two copies of a small residual SwiGLU network train side by side,
 * one stepping after backward (an_optim_step) and one during it, and every parameter and every
 * optimizer state must stay bit-identical. */
#ifndef AN_TEST_UPDATE_IN_BACKWARD_H
#define AN_TEST_UPDATE_IN_BACKWARD_H

#include "autograd/tensor.h"

typedef struct {
    an_device device;
    an_dtype dtype;        /* of the parameters (bf16/f16 get fp32 masters) and activations */
    int layers;
    int64_t rows, dim, ff; /* x (rows, dim); each layer's W1, W2 (ff, dim), W3 (dim, ff), b1 (ff) */
    int micro_batches;     /* > 1: the step's earlier micro-batches backward before begin */
    int steps;
    int64_t grain;         /* an_optim_backward_grain, or 0 for the default */
} test_update_in_backward_shape;

/* Runs `steps` steps both ways and fails the test at the first differing bit (parameters, masters,
 * moments) or a reported norm further than 1e-12 relative from an_optim_step's. */
void test_update_in_backward_matches_step(an_ctx *ctx, const test_update_in_backward_shape *shape);

#endif
