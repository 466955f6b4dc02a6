/* test_dtype.c — bf16/f16 conversions: every 16-bit pattern round-trips, f32 -> f16 matches the
 * compiler's _Float16 conversion on random and edge inputs, f32 -> bf16 matches an independent
 * nearest-even reference, and double -> bf16/f16 rounds once (no double-rounding error). */
#include <math.h>
#include <string.h>

#include "support/test_util.h"

static uint32_t bits(float x) { uint32_t u; memcpy(&u, &x, 4); return u; }
static float from_bits(uint32_t u) { float x; memcpy(&x, &u, 4); return x; }

START_TEST(test_every_16bit_pattern_round_trips) {
    for (uint32_t h = 0; h < 65536; h++) {
        float f = an_f16_to_f32((uint16_t)h);
        float b = an_bf16_to_f32((uint16_t)h);
        if (isnan(f)) ck_assert(isnan(an_f16_to_f32(an_f32_to_f16(f))));
        else ck_assert_uint_eq(an_f32_to_f16(f), h);
        if (isnan(b)) ck_assert(isnan(an_bf16_to_f32(an_f32_to_bf16(b))));
        else ck_assert_uint_eq(an_f32_to_bf16(b), h);
    }
}
END_TEST

/* Nearest bf16 to x by comparing distances in double; ties go to the even pattern. */
static uint16_t bf16_reference(float x) {
    if (isnan(x)) return 0x7fc0;
    uint32_t u = bits(x);
    uint16_t lo = (uint16_t)(u >> 16), hi = (uint16_t)(lo + 1); /* magnitudes: lo <= |x| < hi */
    double dlo = fabs((double)x - (double)an_bf16_to_f32(lo));
    /* Past the largest finite value the upper neighbour is Inf, which rounding treats as 2^128. */
    double hi_value = (hi & 0x7fffu) == 0x7f80u ? copysign(0x1p128, (double)x) : (double)an_bf16_to_f32(hi);
    double dhi = fabs(hi_value - (double)x);
    if ((u & 0xffffu) == 0) return lo;
    if (dlo < dhi) return lo;
    if (dhi < dlo) return hi;
    return (lo & 1u) ? hi : lo;
}

START_TEST(test_f32_to_f16_matches_compiler_and_bf16_matches_reference) {
    an_rng rng;
    an_rng_init(&rng, 7);
    const float edges[] = {0.0f, -0.0f, INFINITY, -INFINITY, 65504.0f, 65519.99f, 65520.0f, -65520.0f, 0x1p-24f,
                           0x1p-25f, 0x1.000002p-25f, 0x1.8p-24f, 0x1p-14f, 0x1.ff8p-15f, 0x1.ffcp-15f, 1.0f + 0x1p-11f,
                           1.0f + 0x1p-8f, 1.0f + 0x3p-8f, 3.4028235e38f, 1e-45f, 0x1.fffffep127f};
    for (int i = 0; i < 400000 + (int)(sizeof edges / sizeof *edges); i++) {
        float x = i < (int)(sizeof edges / sizeof *edges) ? edges[i] : from_bits((uint32_t)an_rng_u64(&rng));
        if (isnan(x)) {
            ck_assert(isnan(an_f16_to_f32(an_f32_to_f16(x))) && isnan(an_bf16_to_f32(an_f32_to_bf16(x))));
            continue;
        }
        _Float16 h = (_Float16)x;
        uint16_t want;
        memcpy(&want, &h, 2);
        ck_assert_msg(an_f32_to_f16(x) == want, "f16(%a) = 0x%04x, compiler says 0x%04x", (double)x, an_f32_to_f16(x),
                      want);
        ck_assert_msg(an_f32_to_bf16(x) == bf16_reference(x), "bf16(%a) = 0x%04x, reference 0x%04x", (double)x,
                      an_f32_to_bf16(x), bf16_reference(x));
    }
}
END_TEST

START_TEST(test_named_edge_cases) {
    ck_assert_uint_eq(an_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);      /* tie -> even (down) */
    ck_assert_uint_eq(an_f32_to_bf16(1.0f + 0x3p-8f), 0x3f82);      /* tie -> even (up) */
    ck_assert_uint_eq(an_f32_to_bf16(INFINITY), 0x7f80);
    ck_assert_uint_eq(an_f32_to_bf16(-0.0f), 0x8000);
    ck_assert_uint_eq(an_f32_to_bf16(0x1.fffffep127f), 0x7f80);     /* rounds up to Inf */
    ck_assert_uint_eq(an_f32_to_f16(65520.0f), 0x7c00);             /* first value that overflows */
    ck_assert_uint_eq(an_f32_to_f16(65519.0f), 0x7bff);             /* 65504 */
    ck_assert_uint_eq(an_f32_to_f16(0x1p-24f), 0x0001);             /* smallest subnormal */
    ck_assert_uint_eq(an_f32_to_f16(0x1p-25f), 0x0000);             /* tie with zero -> even */
    ck_assert_uint_eq(an_f32_to_f16(0x1.000002p-25f), 0x0001);      /* just above the tie */
    ck_assert_uint_eq(an_f32_to_f16(0x1.ffcp-15f), 0x0400);         /* carries into the smallest normal */
    ck_assert_float_eq(an_f16_to_f32(0x03ff), 0x1.ff8p-15f);        /* largest subnormal */
    ck_assert(isnan(an_f16_to_f32(0x7e00)) && isnan(an_bf16_to_f32(0x7fc1)));
    ck_assert(signbit(an_f16_to_f32(0x8000)));
}
END_TEST

START_TEST(test_double_to_half_rounds_once) {
    /* Just above the bf16 tie between 1 and 1 + 2^-7: float rounding alone would land on the tie
     * and then round to even (down); the right answer is up. */
    uint16_t out;
    an_dtype_store(&out, AN_BF16, 0, 1.0 + 0x1p-8 + 0x1p-40);
    ck_assert_uint_eq(out, 0x3f81);
    an_dtype_store(&out, AN_BF16, 0, 1.0 + 0x1p-8 - 0x1p-40);
    ck_assert_uint_eq(out, 0x3f80);
    an_dtype_store(&out, AN_F16, 0, 1.0 + 0x1p-11 + 0x1p-40);
    ck_assert_uint_eq(out, 0x3c01);
    an_dtype_store(&out, AN_F16, 0, 1.0 + 0x1p-11);
    ck_assert_uint_eq(out, 0x3c00);
}
END_TEST

START_TEST(test_names_and_sizes) {
    an_dtype d;
    ck_assert(an_dtype_parse("bfloat16", &d) && d == AN_BF16);
    ck_assert(an_dtype_parse("f16", &d) && d == AN_F16);
    ck_assert(!an_dtype_parse("float8", &d));
    ck_assert_uint_eq(an_dtype_size(AN_I64), 8);
    ck_assert_uint_eq(an_dtype_size(AN_BF16), 2);
    ck_assert_str_eq(an_dtype_name(AN_U8), "u8");
}
END_TEST

START_TEST(test_tensor_conversion_and_views) {
    an_ctx *ctx = test_ctx(3);
    an_tensor *x = test_uniform(ctx, AN_F32, 2, (int64_t[]){4, 6}, -100, 100, false);
    an_tensor *h = an_tensor_to(ctx, x, AN_BF16, AN_CPU);
    an_tensor *back = an_tensor_to(ctx, h, AN_F32, AN_CPU);
    for (int64_t i = 0; i < 24; i++)
        ck_assert_float_eq(an_tensor_get(back, i), an_bf16_to_f32(an_f32_to_bf16((float)an_tensor_get(x, i))));
    an_tensor *rows = an_tensor_rows(ctx, x, 1, 2);
    ck_assert_int_eq(rows->shape[0], 2);
    ck_assert_double_eq(an_tensor_get(rows, 0), an_tensor_get(x, 6));
    an_tensor *v = an_tensor_view(ctx, x, 3, (int64_t[]){2, 3, 4});
    ck_assert_double_eq(an_tensor_get(v, 23), an_tensor_get(x, 23));
    ck_assert_ptr_null(an_tensor_view(ctx, x, 1, (int64_t[]){25}));
    ck_assert_int_eq(an_error_status(ctx), AN_ERR_INPUT);
    an_error_clear(ctx);
    an_tensor *cuda = an_tensor_new(ctx, AN_F32, AN_CUDA, 1, (int64_t[]){4});
    ck_assert_ptr_null(cuda); /* no an_ctx_use_cuda: an error, not a CPU tensor */
    an_error_clear(ctx);
    an_tensor_release(v);
    an_tensor_release(rows);
    an_tensor_release(back);
    an_tensor_release(h);
    an_tensor_release(x);
    ck_assert_uint_eq(ctx->mem[AN_CPU].current, 0);
    test_ctx_free(ctx);
}
END_TEST

/* an_tensor_stacked: views that follow each other in one storage are stacked; a gap, the wrong order,
 * another dtype's storage or separate allocations are not. */
START_TEST(test_tensor_stacked_views) {
    an_ctx *ctx = test_ctx(4);
    an_tensor *all = an_tensor_zeros(ctx, AN_F32, AN_CPU, 2, (int64_t[]){6, 4});
    an_tensor *a = an_tensor_rows(ctx, all, 0, 2), *b = an_tensor_rows(ctx, all, 2, 3), *c = an_tensor_rows(ctx, all, 5, 1);
    an_tensor *gap = an_tensor_rows(ctx, all, 3, 2);
    an_tensor *other = an_tensor_zeros(ctx, AN_F32, AN_CPU, 2, (int64_t[]){3, 4});
    ck_assert(an_tensor_stacked((const an_tensor *[]){a, b, c}, 3));
    ck_assert(an_tensor_stacked((const an_tensor *[]){a, b}, 2));
    ck_assert(an_tensor_stacked((const an_tensor *[]){b}, 1));
    ck_assert(!an_tensor_stacked((const an_tensor *[]){b, a}, 2));   /* order */
    ck_assert(!an_tensor_stacked((const an_tensor *[]){a, gap}, 2)); /* a row between them */
    ck_assert(!an_tensor_stacked((const an_tensor *[]){a, other}, 2)); /* another allocation */
    an_tensor *t[] = {a, b, c, gap, other, all};
    for (int i = 0; i < 6; i++) an_tensor_release(t[i]);
    ck_assert_uint_eq(ctx->mem[AN_CPU].current, 0);
    test_ctx_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("dtype");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_every_16bit_pattern_round_trips);
    tcase_add_test(tc, test_f32_to_f16_matches_compiler_and_bf16_matches_reference);
    tcase_add_test(tc, test_named_edge_cases);
    tcase_add_test(tc, test_double_to_half_rounds_once);
    tcase_add_test(tc, test_names_and_sizes);
    tcase_add_test(tc, test_tensor_conversion_and_views);
    tcase_add_test(tc, test_tensor_stacked_views);
    suite_add_tcase(s, tc);
    return test_run(s);
}
