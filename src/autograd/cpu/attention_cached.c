/* attention_cached.c — reference decode attention over a key/value cache (inference only).
 * One query row at a time: scores against the visible cache keys, softmax in float64 with the
 * max subtracted, weighted sum of values. Cost per query: visible keys x D, twice. */
#include "autograd/cpu/cpu.h"

#include <math.h>
#include <stdlib.h>

an_status an_cpu_attention_cached(an_ctx *ctx, const an_attention_shape *sh, int64_t cache_len, const double *q,
                                  const double *k_cache, const double *v_cache, const int64_t *rows,
                                  const int64_t *lengths, double *out) {
    int64_t B = sh->batch, T = sh->seq, Hq = sh->q_heads, Hkv = sh->kv_heads, D = sh->head_dim;
    int64_t group = Hq / Hkv;
    double *p = malloc((size_t)(cache_len ? cache_len : 1) * sizeof *p); /* one row of probabilities */
    AN_CHECK(ctx, p != NULL, AN_ERR_INTERNAL, "attention_cached: out of host memory");
    for (int64_t b = 0; b < B; b++) {
        int64_t r = rows[b];
        const double *kc = k_cache + r * cache_len * Hkv * D, *vc = v_cache + r * cache_len * Hkv * D;
        for (int64_t t = 0; t < T; t++) {
            int64_t visible = lengths[r] + t + 1;
            for (int64_t h = 0; h < Hq; h++) {
                const double *qv = q + ((b * T + t) * Hq + h) * D;
                int64_t g = h / group;
                double max = -INFINITY, sum = 0.0;
                for (int64_t j = 0; j < visible; j++) {
                    const double *kv = kc + (j * Hkv + g) * D;
                    double s = 0.0;
                    for (int64_t d = 0; d < D; d++) s += qv[d] * kv[d];
                    p[j] = s * sh->scale;
                    max = p[j] > max ? p[j] : max;
                }
                for (int64_t j = 0; j < visible; j++) sum += p[j] = exp(p[j] - max);
                double *o = out + ((b * T + t) * Hq + h) * D;
                for (int64_t d = 0; d < D; d++) o[d] = 0.0;
                for (int64_t j = 0; j < visible; j++) {
                    const double *vv = vc + (j * Hkv + g) * D;
                    double w = p[j] / sum;
                    for (int64_t d = 0; d < D; d++) o[d] += w * vv[d];
                }
            }
        }
    }
    free(p);
    return AN_OK;
}
