/* rmsnorm.c — reference RMSNorm, y = x * rstd * w with rstd = 1 / sqrt(mean(x^2) + eps) per row
 * (HF Qwen2RMSNorm / LlamaRMSNorm), and its gradients from the saved rstd.
 *
 * Gradients, with g = dL/dy and r = rstd of the row:
 *   dL/dw[j] = sum over rows of g[j] * x[j] * r
 *   dL/dx[j] = r * g[j] * w[j] - r^3 * x[j] * mean_k(g[k] * w[k] * x[k]) */
#include "autograd/cpu/cpu.h"

#include <math.h>
#include <string.h>

void an_cpu_rmsnorm(const double *x, const double *w, int64_t rows, int64_t D, double eps, double *y, double *rstd) {
    for (int64_t r = 0; r < rows; r++) {
        const double *xr = x + r * D; /* (D) */
        double *yr = y + r * D;       /* (D) */
        double sum_sq = 0.0;
        for (int64_t j = 0; j < D; j++) sum_sq += xr[j] * xr[j];
        double s = 1.0 / sqrt(sum_sq / (double)D + eps);
        for (int64_t j = 0; j < D; j++) yr[j] = xr[j] * s * w[j];
        rstd[r] = s;
    }
}

void an_cpu_rmsnorm_backward(const double *x, const double *w, const double *rstd, const double *grad_y, int64_t rows,
                             int64_t D, double *grad_x, double *grad_w) {
    if (grad_w) memset(grad_w, 0, (size_t)D * sizeof *grad_w);
    for (int64_t r = 0; r < rows; r++) {
        const double *xr = x + r * D, *gr = grad_y + r * D; /* (D) each */
        double s = rstd[r];
        if (grad_w)
            for (int64_t j = 0; j < D; j++) grad_w[j] += gr[j] * xr[j] * s;
        if (!grad_x) continue;
        double dot = 0.0; /* sum_k g[k] w[k] x[k] */
        for (int64_t j = 0; j < D; j++) dot += gr[j] * w[j] * xr[j];
        double coef = s * s * s * dot / (double)D;
        double *gx = grad_x + r * D; /* (D) */
        for (int64_t j = 0; j < D; j++) gx[j] = s * gr[j] * w[j] - coef * xr[j];
    }
}
