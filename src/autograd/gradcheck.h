/* gradcheck.h — finite-difference checks of backward rules in float64.
 *
 * The checked scalar is L = sum(fn(inputs) * r) with r a fixed random tensor, so every output
 * element's gradient matters. Each float64 CPU input with requires_grad is perturbed by +-eps
 * (central differences) at every element, or at max_points random elements of a large input. */
#ifndef AN_GRADCHECK_H
#define AN_GRADCHECK_H

#include "autograd/tensor.h"

typedef an_tensor *(*an_gradcheck_fn)(an_ctx *ctx, an_tensor *const *inputs, void *user);

typedef struct {
    double eps;           /* default 1e-6 */
    double atol;          /* default 1e-6 */
    double rtol;          /* default 1e-5: pass when |analytic - numeric| <= atol + rtol * |numeric| */
    int64_t max_points;   /* per input; default 2048 */
} an_gradcheck_opts;

typedef struct {
    bool passed;
    int64_t points;       /* elements checked over all inputs */
    double max_abs_error;
    int worst_input;      /* where the largest violation (or error) is */
    int64_t worst_index;
    double worst_analytic, worst_numeric;
} an_gradcheck_result;

/* Runs the check; AN_OK means it ran (see result->passed), an error status means fn or backward
 * failed. opts may be NULL for the defaults. */
an_status an_gradcheck(an_ctx *ctx, an_gradcheck_fn fn, an_tensor *const *inputs, int n_inputs, void *user,
                       const an_gradcheck_opts *opts, an_gradcheck_result *result);

#endif
