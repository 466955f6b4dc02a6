/* rope.c — reference rotary position embedding: the inverse frequencies (with llama3 scaling)
 * and the rotation of (rows, H, D) activations at per-row positions.
 *
 * Numerics: frequencies, angles, cos and sin are float64 (transformers computes them in fp32);
 * the positions come from the caller, never from the row index, because packed documents restart
 * them. The rotation by -angle (sign -1) is the transpose, hence the backward. */
#include "autograd/cpu/cpu.h"

#include <math.h>

void an_cpu_rope_inv_freq(const an_rope_config *config, int64_t D, double *inv_freq) {
    const double two_pi = 2.0 * 3.14159265358979323846;
    double factor = config->llama3_factor;
    double low_freq_factor = config->llama3_low_freq_factor, high_freq_factor = config->llama3_high_freq_factor;
    double old_context_len = config->llama3_original_max_position;
    double low_freq_wavelen = factor > 0 ? old_context_len / low_freq_factor : 0.0;
    double high_freq_wavelen = factor > 0 ? old_context_len / high_freq_factor : 0.0;
    for (int64_t i = 0; i < D / 2; i++) {
        double inv = 1.0 / pow(config->theta, (double)(2 * i) / (double)D);
        if (factor > 0) {
            double wavelen = two_pi / inv;
            if (wavelen > low_freq_wavelen) { /* low frequency: slowed down by factor */
                inv = inv / factor;
            } else if (!(wavelen < high_freq_wavelen)) { /* medium: interpolate between the two */
                double smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                inv = (1.0 - smooth) * inv / factor + smooth * inv;
            } /* high frequency: unchanged */
        }
        inv_freq[i] = inv;
    }
}

void an_cpu_rope(const double *x, const int64_t *positions, int64_t rows, int64_t H, int64_t D,
                 const double *inv_freq, an_rope_style style, double sign, double *out) {
    int64_t half = D / 2;
    /* pair i is elements (i, i + D/2) in NEOX layout, (2i, 2i + 1) interleaved */
    int64_t first_stride = style == AN_ROPE_NEOX ? 1 : 2;
    int64_t second_offset = style == AN_ROPE_NEOX ? half : 1;
    for (int64_t r = 0; r < rows; r++) {
        double pos = (double)positions[r];
        for (int64_t i = 0; i < half; i++) {
            double angle = pos * inv_freq[i];
            double c = cos(angle), s = sign * sin(angle);
            int64_t a = i * first_stride, b = a + second_offset;
            for (int64_t h = 0; h < H; h++) {
                const double *xh = x + (r * H + h) * D; /* (D) */
                double *oh = out + (r * H + h) * D;      /* (D) */
                double x1 = xh[a], x2 = xh[b];
                oh[a] = x1 * c - x2 * s;
                oh[b] = x2 * c + x1 * s;
            }
        }
    }
}
