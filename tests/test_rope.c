/* test_rope.c — an_rope: NEOX (rotate halves, HF apply_rotary_pos_emb) and interleaved forwards
 * against float64 loops at positions that restart per packed document; llama3 frequency scaling
 * against a line-by-line transcription of transformers' _compute_llama3_parameters and against
 * its defining properties; float64 gradient checks; odd D and other bad inputs rejected. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/cpu/cpu.h"  /* an_cpu_rope_inv_freq */
#include "support/test_util.h"

#define PI 3.14159265358979323846

/* transformers' _compute_default_rope_parameters: 1 / base^(arange(0, dim, 2) / dim). */
static void hf_default_inv_freq(double base, int64_t dim, double *inv_freq) {
    for (int64_t k = 0; k < dim / 2; k++) inv_freq[k] = 1.0 / pow(base, (double)(2 * k) / (double)dim);
}

/* transformers' _compute_llama3_parameters, transcribed statement by statement (torch.where and
 * the masks become per-element conditionals). */
static void hf_llama3_inv_freq(double base, int64_t dim, double factor, double low_freq_factor,
                               double high_freq_factor, double old_context_len, double *out) {
    double *inv_freq = malloc((size_t)(dim / 2) * sizeof *inv_freq);
    hf_default_inv_freq(base, dim, inv_freq);
    double low_freq_wavelen = old_context_len / low_freq_factor;
    double high_freq_wavelen = old_context_len / high_freq_factor;
    for (int64_t k = 0; k < dim / 2; k++) {
        double wavelen = 2 * PI / inv_freq[k];
        /* wavelen < high_freq_wavelen: do nothing; wavelen > low_freq_wavelen: divide by factor */
        double inv_freq_llama = wavelen > low_freq_wavelen ? inv_freq[k] / factor : inv_freq[k];
        /* otherwise: interpolate between the two, using a smooth factor */
        double smooth_factor = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
        double smoothed_inv_freq = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama;
        bool is_medium_freq = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
        out[k] = is_medium_freq ? smoothed_inv_freq : inv_freq_llama;
    }
    free(inv_freq);
}

static void config_inv_freq(const an_rope_config *c, int64_t D, double *inv_freq) {
    if (c->llama3_factor > 0)
        hf_llama3_inv_freq(c->theta, D, c->llama3_factor, c->llama3_low_freq_factor, c->llama3_high_freq_factor,
                           c->llama3_original_max_position, inv_freq);
    else
        hf_default_inv_freq(c->theta, D, inv_freq);
}

/* out (B, T, H, D) by the definitions: NEOX is x * cos + rotate_half(x) * sin with cos/sin
 * repeated over both halves; interleaved rotates (x[2i], x[2i+1]) as the complex number x * e^(i angle). */
static void reference(const an_tensor *x, const an_tensor *positions, const an_rope_config *c, double *out) {
    int64_t B = x->shape[0], T = x->shape[1], H = x->shape[2], D = x->shape[3], half = D / 2;
    double *inv_freq = malloc((size_t)half * sizeof *inv_freq);
    config_inv_freq(c, D, inv_freq);
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++)
            for (int64_t h = 0; h < H; h++) {
                int64_t base = ((b * T + t) * H + h) * D;
                double p = an_tensor_get(positions, b * T + t);
                for (int64_t j = 0; j < D; j++) {
                    double xj = an_tensor_get(x, base + j);
                    if (c->style == AN_ROPE_NEOX) {
                        double angle = p * inv_freq[j % half]; /* emb = cat(freqs, freqs) */
                        double rotated = j < half ? -an_tensor_get(x, base + j + half)  /* rotate_half */
                                                  : an_tensor_get(x, base + j - half);
                        out[base + j] = xj * cos(angle) + rotated * sin(angle);
                    } else {
                        double angle = p * inv_freq[j / 2];
                        double re = an_tensor_get(x, base + (j & ~1)), im = an_tensor_get(x, base + (j | 1));
                        out[base + j] = j % 2 == 0 ? re * cos(angle) - im * sin(angle)
                                                   : im * cos(angle) + re * sin(angle);
                    }
                }
            }
    free(inv_freq);
}

static const an_rope_config neox = {AN_ROPE_NEOX, 10000, 0, 0, 0, 0};
static const an_rope_config interleaved = {AN_ROPE_INTERLEAVED, 10000, 0, 0, 0, 0};
static const an_rope_config llama3_neox = {AN_ROPE_NEOX, 500000, 8, 1, 4, 8192};
static const an_rope_config llama3_interleaved = {AN_ROPE_INTERLEAVED, 500000, 8, 1, 4, 8192};

/* Positions of packed documents: each row restarts at 0 at every document boundary. */
static an_tensor *packed_positions(an_ctx *ctx, an_dtype dtype, int64_t B, int64_t T, int64_t start) {
    an_tensor *p = an_tensor_new(ctx, dtype, AN_CPU, 2, (int64_t[]){B, T});
    ck_assert_ptr_nonnull(p);
    for (int64_t b = 0; b < B; b++) {
        int64_t pos = start + b; /* rows start at different offsets */
        for (int64_t t = 0; t < T; t++) {
            if (t > 0 && (t % (3 + b)) == 0) pos = 0; /* a new document */
            an_tensor_set(p, b * T + t, (double)pos++);
        }
    }
    return p;
}

static const int64_t shapes[][4] = {
    {2, 5, 3, 8}, /* H = 3 */
    {1, 1, 1, 2}, /* T = 1, H = 1, one pair */
    {3, 7, 1, 6}, /* H = 1, D/2 odd */
    {1, 4, 2, 10},
};
#define N_SHAPES (sizeof shapes / sizeof *shapes)

START_TEST(test_rope_forward_matches_float64_loops_in_both_styles) {
    const an_rope_config *configs[] = {&neox, &interleaved, &llama3_neox, &llama3_interleaved};
    an_ctx *ctx = test_ctx(31);
    for (size_t s = 0; s < N_SHAPES; s++) {
        for (size_t c = 0; c < 4; c++) {
            for (int variant = 0; variant < 3; variant++) {
                /* i32 and i64 positions; the third variant uses far positions (long context) in f32 */
                an_dtype dtype = variant == 2 ? AN_F32 : AN_F64;
                an_tensor *x = test_uniform(ctx, dtype, 4, shapes[s], -2, 2, false);
                an_tensor *pos = packed_positions(ctx, variant == 0 ? AN_I32 : AN_I64, shapes[s][0], shapes[s][1],
                                                  variant == 2 ? 100000 : 0);
                int64_t n = an_tensor_numel(x);
                double *want = malloc((size_t)n * sizeof *want);
                reference(x, pos, configs[c], want);
                an_tensor *y = an_rope(ctx, x, pos, configs[c]);
                ck_assert_msg(y != NULL, "%s", an_error_message(ctx));
                ck_assert(an_tensor_same_shape(y, x));
                ck_assert_int_eq(y->dtype, dtype);
                test_assert_close(y, want, variant == 2 ? 6e-8 : 1e-12, variant == 2 ? 1e-9 : 1e-12, "rope forward");
                an_tensor_release(y);
                free(want);
                an_tensor_release(pos);
                an_tensor_release(x);
            }
        }
    }
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_rope_uses_positions_not_time_index) {
    /* the same token vector at t = 0 and t = 3 with position 0 both times is left unrotated */
    an_ctx *ctx = test_ctx(32);
    an_tensor *x = test_uniform(ctx, AN_F64, 4, (int64_t[]){1, 4, 1, 4}, -1, 1, false);
    an_tensor *pos = an_tensor_from_data(ctx, AN_I64, 2, (int64_t[]){1, 4}, (int64_t[]){0, 1, 2, 0});
    an_tensor *y = an_rope(ctx, x, pos, &neox);
    ck_assert_msg(y != NULL, "%s", an_error_message(ctx));
    for (int j = 0; j < 4; j++) {
        ck_assert(an_tensor_get(y, j) == an_tensor_get(x, j));
        ck_assert(an_tensor_get(y, 12 + j) == an_tensor_get(x, 12 + j));
    }
    an_tensor_release(y);
    an_tensor_release(pos);
    an_tensor_release(x);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_rope_llama3_inv_freq_matches_transformers_and_its_bands) {
    const int64_t dims[] = {128, 64, 2};
    const double thetas[] = {500000, 10000};
    for (size_t di = 0; di < sizeof dims / sizeof *dims; di++) {
        for (size_t ti = 0; ti < 2; ti++) {
            int64_t D = dims[di], half = D / 2;
            an_rope_config c = llama3_neox;
            c.theta = thetas[ti];
            double got[64], want[64], plain[64];
            an_cpu_rope_inv_freq(&c, D, got);
            hf_llama3_inv_freq(c.theta, D, c.llama3_factor, c.llama3_low_freq_factor, c.llama3_high_freq_factor,
                               c.llama3_original_max_position, want);
            hf_default_inv_freq(c.theta, D, plain);
            int high = 0, low = 0, medium = 0;
            for (int64_t i = 0; i < half; i++) {
                ck_assert_msg(fabs(got[i] - want[i]) <= 1e-15 * fabs(want[i]), "D %lld dim %lld: %.17g vs %.17g",
                              (long long)D, (long long)i, got[i], want[i]);
                double wavelen = 2 * PI / plain[i];
                if (wavelen < c.llama3_original_max_position / c.llama3_high_freq_factor) { /* high frequency */
                    ck_assert(got[i] == plain[i]);
                    high++;
                } else if (wavelen > c.llama3_original_max_position / c.llama3_low_freq_factor) { /* low */
                    ck_assert(fabs(got[i] - plain[i] / c.llama3_factor) <= 1e-16 * plain[i]);
                    low++;
                } else { /* medium: strictly between the two */
                    ck_assert(got[i] > plain[i] / c.llama3_factor && got[i] < plain[i]);
                    medium++;
                }
            }
            /* the Llama 3.1 setting (D 128, theta 500000) has all three bands */
            if (D == 128 && c.theta == 500000) ck_assert(high > 0 && low > 0 && medium > 0);
            /* without scaling the same config gives the plain frequencies */
            c.llama3_factor = 0;
            an_cpu_rope_inv_freq(&c, D, got);
            for (int64_t i = 0; i < half; i++) ck_assert(fabs(got[i] - plain[i]) <= 1e-16 * plain[i]);
        }
    }
}
END_TEST

START_TEST(test_rope_llama3_scaling_reaches_the_op) {
    /* x = e_i at position 1 is rotated by exactly inv_freq[i]: read the angle back from the output */
    an_ctx *ctx = test_ctx(33);
    const int64_t D = 128, half = D / 2;
    an_tensor *x = an_tensor_zeros(ctx, AN_F64, AN_CPU, 4, (int64_t[]){1, 1, half, D});
    for (int64_t i = 0; i < half; i++) an_tensor_set(x, i * D + i, 1.0); /* head i holds e_i */
    an_tensor *pos = an_tensor_from_data(ctx, AN_I32, 2, (int64_t[]){1, 1}, (int32_t[]){1});
    an_tensor *y = an_rope(ctx, x, pos, &llama3_neox);
    ck_assert_msg(y != NULL, "%s", an_error_message(ctx));
    double want[64], plain[64];
    hf_llama3_inv_freq(500000, D, 8, 1, 4, 8192, want);
    hf_default_inv_freq(500000, D, plain);
    for (int64_t i = 0; i < half; i++) {
        double angle = atan2(an_tensor_get(y, i * D + i + half), an_tensor_get(y, i * D + i));
        ck_assert_msg(fabs(angle - want[i]) <= 1e-15 + 1e-13 * want[i], "dim %lld: angle %.17g, expected %.17g",
                      (long long)i, angle, want[i]);
        if (i == half - 1) ck_assert(fabs(angle - plain[i] / 8) <= 1e-13 * plain[i]); /* lowest frequency / 8 */
    }
    an_tensor_release(y);
    an_tensor_release(pos);
    an_tensor_release(x);
    test_ctx_free(ctx);
}
END_TEST

static an_tensor *run_rope(an_ctx *ctx, an_tensor *const *in, void *user) {
    return an_rope(ctx, in[0], in[1], (const an_rope_config *)user);
}

START_TEST(test_rope_gradcheck_both_styles) {
    const an_rope_config *configs[] = {&neox, &interleaved, &llama3_neox, &llama3_interleaved};
    for (size_t s = 0; s < N_SHAPES; s++) {
        for (size_t c = 0; c < 4; c++) {
            an_ctx *ctx = test_ctx(300 + 4 * s + c);
            an_tensor *x = test_uniform(ctx, AN_F64, 4, shapes[s], -2, 2, true);
            an_tensor *pos = packed_positions(ctx, c % 2 ? AN_I32 : AN_I64, shapes[s][0], shapes[s][1], 5);
            test_assert_gradcheck(ctx, run_rope, (an_tensor *[]){x, pos}, 2, (void *)configs[c], "rope");
            ck_assert_ptr_null(pos->grad);
            an_tensor_release(pos);
            an_tensor_release(x);
            test_ctx_free(ctx);
        }
    }
}
END_TEST

static void expect_input_error(an_ctx *ctx, an_tensor *out, const char *part) {
    ck_assert_ptr_null(out);
    ck_assert_int_eq(an_error_status(ctx), AN_ERR_INPUT);
    ck_assert_msg(strstr(an_error_message(ctx), part) != NULL, "message '%s' lacks '%s'", an_error_message(ctx), part);
    an_error_clear(ctx);
}

START_TEST(test_rope_rejects_odd_head_dim_and_bad_inputs) {
    an_ctx *ctx = test_ctx(34);
    an_tensor *odd = test_uniform(ctx, AN_F32, 4, (int64_t[]){1, 3, 2, 5}, -1, 1, true);
    an_tensor *x = test_uniform(ctx, AN_F32, 4, (int64_t[]){1, 3, 2, 4}, -1, 1, true);
    an_tensor *x3 = test_uniform(ctx, AN_F32, 3, (int64_t[]){3, 2, 4}, -1, 1, false);
    an_tensor *pos = test_ids(ctx, AN_I32, 2, (int64_t[]){1, 3}, 10);
    an_tensor *pos_short = test_ids(ctx, AN_I32, 2, (int64_t[]){1, 2}, 10);
    an_tensor *pos_float = test_uniform(ctx, AN_F32, 2, (int64_t[]){1, 3}, 0, 3, false);
    an_tensor *pos_negative = an_tensor_from_data(ctx, AN_I64, 2, (int64_t[]){1, 3}, (int64_t[]){0, -2, 1});
    for (int style = 0; style < 2; style++)
        expect_input_error(ctx, an_rope(ctx, odd, pos, style ? &interleaved : &neox), "D = 5");
    expect_input_error(ctx, an_rope(ctx, x3, pos, &neox), "must be (B, T, H, D)");
    expect_input_error(ctx, an_rope(ctx, x, pos_short, &neox), "positions");
    expect_input_error(ctx, an_rope(ctx, x, pos_float, &neox), "positions must be i32 or i64");
    expect_input_error(ctx, an_rope(ctx, x, pos_negative, &neox), "position -2");
    expect_input_error(ctx, an_rope(ctx, x, pos, NULL), "no config");
    an_rope_config bad = llama3_neox;
    bad.llama3_high_freq_factor = bad.llama3_low_freq_factor;
    expect_input_error(ctx, an_rope(ctx, x, pos, &bad), "high_freq_factor");
    bad = neox;
    bad.theta = 0;
    expect_input_error(ctx, an_rope(ctx, x, pos, &bad), "theta");
    bad = neox;
    bad.style = (an_rope_style)7;
    expect_input_error(ctx, an_rope(ctx, x, pos, &bad), "style");
    ck_assert_int_eq(an_tape_length(ctx), 0); /* failed ops record nothing */
    ck_assert_ptr_null(an_rope(ctx, NULL, pos, &neox));
    an_tensor *all[] = {odd, x, x3, pos, pos_short, pos_float, pos_negative};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) an_tensor_release(all[i]);
    test_ctx_free(ctx);
}
END_TEST


/* an_rope_check_positions names the first negative position; an_rope_trusted, which skips the
 * per-call check for checked positions, records the same node: its output and gradient are
 * an_rope's bit for bit. */
START_TEST(test_rope_positions_checked_once_then_trusted) {
    an_ctx *ctx = test_ctx(35);
    an_tensor *bad = an_tensor_from_data(ctx, AN_I64, 2, (int64_t[]){1, 4}, (int64_t[]){0, 1, -7, -1});
    ck_assert_int_eq(an_rope_check_positions(ctx, bad), AN_ERR_INPUT);
    ck_assert_msg(strstr(an_error_message(ctx), "position -7 (element 2 of positions) is negative") != NULL, "%s",
                  an_error_message(ctx));
    an_error_clear(ctx);
    an_tensor *pos = packed_positions(ctx, AN_I32, 2, 5, 3);
    ck_assert_int_eq(an_rope_check_positions(ctx, pos), AN_OK);
    an_tensor *x = test_uniform(ctx, AN_F32, 4, (int64_t[]){2, 5, 3, 8}, -1, 1, true);
    an_tensor *g = test_uniform(ctx, AN_F32, 4, (int64_t[]){2, 5, 3, 8}, -1, 1, false);
    an_tensor *grads[2] = {NULL, NULL}, *outs[2] = {NULL, NULL};
    for (int trusted = 0; trusted < 2; trusted++) {
        outs[trusted] = trusted ? an_rope_trusted(ctx, x, pos, &llama3_neox) : an_rope(ctx, x, pos, &llama3_neox);
        ck_assert_msg(outs[trusted] != NULL, "%s", an_error_message(ctx));
        ck_assert_int_eq(an_tape_length(ctx), 1); /* recorded, as an_rope is */
        an_tensor *weighted = an_mul(ctx, outs[trusted], g);
        an_tensor *loss = an_sum(ctx, weighted);
        ck_assert_int_eq(an_backward(ctx, loss), AN_OK);
        an_tensor_release(weighted), an_tensor_release(loss);
        grads[trusted] = x->grad;
        x->grad = NULL;
    }
    ck_assert_mem_eq(an_tensor_data(outs[0]), an_tensor_data(outs[1]), (size_t)an_tensor_nbytes(outs[0]));
    ck_assert_mem_eq(an_tensor_data(grads[0]), an_tensor_data(grads[1]), (size_t)an_tensor_nbytes(grads[0]));
    an_tensor *all[] = {bad, pos, x, g, grads[0], grads[1], outs[0], outs[1]};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) an_tensor_release(all[i]);
    test_ctx_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("rope");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_rope_forward_matches_float64_loops_in_both_styles);
    tcase_add_test(tc, test_rope_uses_positions_not_time_index);
    tcase_add_test(tc, test_rope_llama3_inv_freq_matches_transformers_and_its_bands);
    tcase_add_test(tc, test_rope_llama3_scaling_reaches_the_op);
    tcase_add_test(tc, test_rope_gradcheck_both_styles);
    tcase_add_test(tc, test_rope_rejects_odd_head_dim_and_bad_inputs);
    tcase_add_test(tc, test_rope_positions_checked_once_then_trusted);
    suite_add_tcase(s, tc);
    return test_run(s);
}
