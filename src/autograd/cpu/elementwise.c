/* elementwise.c — reference add/sub/mul with trailing-shape broadcast of b, and their gradients.
 * Gradients of a broadcast operand are summed over the broadcast rows (written with =). */
#include "autograd/cpu/cpu.h"

void an_cpu_binary(an_binary_kind kind, const double *a, int64_t n, const double *b, int64_t nb, double *out) {
    for (int64_t i = 0; i < n; i++) {
        double x = a[i], y = b[i % nb];
        out[i] = kind == AN_BINARY_ADD ? x + y : kind == AN_BINARY_SUB ? x - y : x * y;
    }
}

void an_cpu_binary_backward(an_binary_kind kind, const double *a, int64_t n, const double *b, int64_t nb,
                            const double *grad_out, double *grad_a, double *grad_b) {
    if (grad_a)
        for (int64_t i = 0; i < n; i++) grad_a[i] = kind == AN_BINARY_MUL ? grad_out[i] * b[i % nb] : grad_out[i];
    if (grad_b) {
        for (int64_t j = 0; j < nb; j++) grad_b[j] = 0.0;
        for (int64_t i = 0; i < n; i++) {
            double g = kind == AN_BINARY_MUL ? grad_out[i] * a[i] : kind == AN_BINARY_SUB ? -grad_out[i] : grad_out[i];
            grad_b[i % nb] += g;
        }
    }
}
