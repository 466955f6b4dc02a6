/* cross_entropy.c — reference loops for cross-entropy and log-softmax-gather over rows of logits
 * (rows, cols): per-row log-sum-exp, the summed loss, and the gradients with respect to the logits.
 * Numerics: float64 throughout; every row subtracts its max before exp; sums accumulate in float64.
 * Targets and ids must already be checked by the op (in [0, cols), or the ignore index). Gradients
 * are written with =, and dx may alias x (each element is read before it is written). */
#include "autograd/cpu/cpu.h"

#include <math.h>

/* log(sum_j exp(x_j)), stable; +-inf rows give their max back instead of NaN. */
static double row_logsumexp(const double *x, int64_t cols) {
    double max = -INFINITY;
    for (int64_t j = 0; j < cols; j++)
        if (x[j] > max) max = x[j];
    if (isinf(max)) return max;
    double total = 0.0;
    for (int64_t j = 0; j < cols; j++) total += exp(x[j] - max);
    return max + log(total);
}

double an_cpu_cross_entropy(const double *x, const int64_t *targets, int64_t rows, int64_t cols, int64_t ignore_index,
                            double *lse, int64_t *counted) {
    double total = 0.0;
    for (int64_t i = 0; i < rows; i++) {
        if (targets[i] == ignore_index) {
            lse[i] = 0.0;
            continue;
        }
        lse[i] = row_logsumexp(x + i * cols, cols);
        total += lse[i] - x[i * cols + targets[i]];
        (*counted)++;
    }
    return total;
}

void an_cpu_cross_entropy_backward(const double *x, const double *lse, const int64_t *targets, int64_t rows,
                                   int64_t cols, int64_t ignore_index, double scale, double *dx) {
    for (int64_t i = 0; i < rows; i++) {
        const double *xi = x + i * cols;
        double *dxi = dx + i * cols;
        bool counted = targets[i] != ignore_index;
        for (int64_t j = 0; j < cols; j++) dxi[j] = counted ? scale * exp(xi[j] - lse[i]) : 0.0;
        if (counted) dxi[targets[i]] -= scale;
    }
}

void an_cpu_log_softmax_gather(const double *x, const int64_t *ids, int64_t rows, int64_t cols, double *lse,
                               double *out) {
    for (int64_t i = 0; i < rows; i++) {
        lse[i] = row_logsumexp(x + i * cols, cols);
        out[i] = x[i * cols + ids[i]] - lse[i];
    }
}

void an_cpu_log_softmax_gather_backward(const double *x, const double *lse, const int64_t *ids, const double *grad,
                                        int64_t rows, int64_t cols, double *dx) {
    for (int64_t i = 0; i < rows; i++) {
        const double *xi = x + i * cols;
        double *dxi = dx + i * cols;
        for (int64_t j = 0; j < cols; j++) dxi[j] = -grad[i] * exp(xi[j] - lse[i]);
        dxi[ids[i]] += grad[i];
    }
}
