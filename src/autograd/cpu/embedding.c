/* embedding.c — reference embedding lookup (a row gather) and its scatter-add gradient.
 * The gather copies elements as bytes, so it is exact in every dtype; the gradient is summed in
 * float64 in token order, so repeated ids give the same sum on every run. */
#include "autograd/cpu/cpu.h"

#include <string.h>

void an_cpu_embedding(const int64_t *ids, int64_t n, const void *table, int64_t D, size_t elem_size, void *out) {
    size_t row_bytes = (size_t)D * elem_size;
    const char *src = table;
    char *dst = out;
    for (int64_t i = 0; i < n; i++) memcpy(dst + (size_t)i * row_bytes, src + (size_t)ids[i] * row_bytes, row_bytes);
}

void an_cpu_embedding_backward(const int64_t *ids, int64_t n, const double *grad_out, int64_t D, double *grad_table) {
    for (int64_t i = 0; i < n; i++) {
        const double *g = grad_out + i * D; /* (D) */
        double *row = grad_table + ids[i] * D; /* (D) */
        for (int64_t j = 0; j < D; j++) row[j] += g[j];
    }
}
