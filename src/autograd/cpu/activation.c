/* activation.c — reference silu and swiglu (silu(gate) * up) with their gradients. */
#include "autograd/cpu/cpu.h"

#include <math.h>

static double sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

void an_cpu_swiglu(const double *gate, const double *up, int64_t n, double *out) {
    for (int64_t i = 0; i < n; i++) {
        double silu = gate[i] * sigmoid(gate[i]);
        out[i] = up ? silu * up[i] : silu;
    }
}

void an_cpu_swiglu_backward(const double *gate, const double *up, int64_t n, const double *grad_out,
                            double *grad_gate, double *grad_up) {
    for (int64_t i = 0; i < n; i++) {
        double s = sigmoid(gate[i]);
        double silu = gate[i] * s;
        double dsilu = s * (1.0 + gate[i] * (1.0 - s)); /* d/dx x*sigmoid(x) */
        double u = up ? up[i] : 1.0;
        if (grad_gate) grad_gate[i] = grad_out[i] * u * dsilu;
        if (up && grad_up) grad_up[i] = grad_out[i] * silu;
    }
}
