/* softmax.c — reference softmax over the last dim of a (rows, cols) array, and its gradient.
 * Numerics: float64 throughout; each row subtracts its max before exp, so large logits neither
 * overflow nor lose the small ones. Outputs are written with =; out may alias the input. */
#include "autograd/cpu/cpu.h"

#include <math.h>

void an_cpu_softmax(const double *x, int64_t rows, int64_t cols, double *y) {
    for (int64_t i = 0; i < rows; i++) {
        const double *xi = x + i * cols;
        double *yi = y + i * cols;
        double max = -INFINITY;
        for (int64_t j = 0; j < cols; j++)
            if (xi[j] > max) max = xi[j];
        double total = 0.0;
        for (int64_t j = 0; j < cols; j++) {
            yi[j] = exp(xi[j] - max);
            total += yi[j];
        }
        for (int64_t j = 0; j < cols; j++) yi[j] /= total;
    }
}

void an_cpu_softmax_backward(const double *y, const double *dy, int64_t rows, int64_t cols, double *dx) {
    for (int64_t i = 0; i < rows; i++) {
        const double *yi = y + i * cols, *dyi = dy + i * cols;
        double *dxi = dx + i * cols;
        double dot = 0.0; /* sum_j dy_j * y_j */
        for (int64_t j = 0; j < cols; j++) dot += dyi[j] * yi[j];
        for (int64_t j = 0; j < cols; j++) dxi[j] = yi[j] * (dyi[j] - dot);
    }
}
