/* dtype.c — element sizes, names and the exact bf16/f16 conversions (round to nearest even). */
#include "autograd/dtype.h"

#include <math.h>
#include <string.h>

static const struct {
    const char *name;
    const char *long_name;
    size_t size;
    bool is_float;
} dtype_info[AN_DTYPE_COUNT] = {
    [AN_F32] = {"f32", "float32", 4, true},  [AN_F64] = {"f64", "float64", 8, true},
    [AN_BF16] = {"bf16", "bfloat16", 2, true}, [AN_F16] = {"f16", "float16", 2, true},
    [AN_I32] = {"i32", "int32", 4, false},   [AN_I64] = {"i64", "int64", 8, false},
    [AN_U8] = {"u8", "uint8", 1, false},
};

size_t an_dtype_size(an_dtype dtype) { return dtype_info[dtype].size; }
const char *an_dtype_name(an_dtype dtype) { return dtype_info[dtype].name; }
bool an_dtype_is_float(an_dtype dtype) { return dtype_info[dtype].is_float; }

bool an_dtype_parse(const char *name, an_dtype *out) {
    for (int d = 0; d < AN_DTYPE_COUNT; d++) {
        if (strcmp(name, dtype_info[d].name) == 0 || strcmp(name, dtype_info[d].long_name) == 0) {
            *out = (an_dtype)d;
            return true;
        }
    }
    return false;
}

static uint32_t f32_bits(float x) { uint32_t u; memcpy(&u, &x, 4); return u; }
static float bits_f32(uint32_t u) { float x; memcpy(&x, &u, 4); return x; }

uint16_t an_f32_to_bf16(float x) {
    uint32_t u = f32_bits(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u); /* quiet NaN */
    uint32_t lsb = (u >> 16) & 1u;
    u += 0x7fffu + lsb; /* round to nearest, ties to even; overflow carries into Inf */
    return (uint16_t)(u >> 16);
}

float an_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

/* Shift right by s (1..31) rounding to nearest, ties to even. */
static uint32_t shift_round_even(uint32_t m, int s) {
    uint32_t q = m >> s, rem = m & ((1u << s) - 1u), half = 1u << (s - 1);
    if (rem > half || (rem == half && (q & 1u))) q++;
    return q;
}

uint16_t an_f32_to_f16(float x) {
    uint32_t u = f32_bits(x);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7e00u;            /* NaN */
    if (a >= 0x477ff000u) return sign | 0x7c00u;           /* >= 65520 rounds to Inf; Inf stays */
    if (a < 0x38800000u) {                                 /* below 2^-14: f16 subnormal or zero */
        int e = (int)(a >> 23);
        if (e == 0) return sign;                           /* f32 subnormals are far below 2^-25 */
        int s = 126 - e;                                   /* value = m * 2^-24 >> s */
        if (s > 31) return sign;
        uint32_t m = (a & 0x7fffffu) | 0x800000u;
        return sign | (uint16_t)shift_round_even(m, s);    /* may carry into the smallest normal */
    }
    uint32_t e16 = (a >> 23) - 127u + 15u;
    uint32_t h = (e16 << 10) | ((a & 0x7fffffu) >> 13);
    uint32_t rem = a & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++; /* carry into the exponent is right */
    return sign | (uint16_t)h;
}

float an_f16_to_f32(uint16_t h) {
    uint32_t sign = ((uint32_t)h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) {
        float v = ldexpf((float)m, -24); /* zero or subnormal, exact */
        return sign ? -v : v;
    }
    if (e == 31) return bits_f32(sign | 0x7f800000u | (m << 13)); /* Inf or NaN (payload kept) */
    return bits_f32(sign | ((e - 15u + 127u) << 23) | (m << 13));
}

/* double -> f32 rounding to odd: an inexact result gets an odd last bit. Rounding that again to
 * bf16 or f16 (at least 2 fewer bits) then equals rounding the double directly, which a plain
 * round-to-nearest intermediate would not guarantee (a value just above a tie would become the tie). */
static float f64_to_f32_round_odd(double v) {
    float f = (float)v;
    if (isnan(v) || isinf(f) || (double)f == v) return f;
    if ((f32_bits(f) & 1u) == 0) f = nextafterf(f, v > (double)f ? INFINITY : -INFINITY);
    return f;
}

double an_dtype_load(const void *data, an_dtype dtype, size_t i) {
    switch (dtype) {
    case AN_F32: return ((const float *)data)[i];
    case AN_F64: return ((const double *)data)[i];
    case AN_BF16: return an_bf16_to_f32(((const uint16_t *)data)[i]);
    case AN_F16: return an_f16_to_f32(((const uint16_t *)data)[i]);
    case AN_I32: return ((const int32_t *)data)[i];
    case AN_I64: return (double)((const int64_t *)data)[i];
    case AN_U8: return ((const uint8_t *)data)[i];
    default: return NAN;
    }
}

void an_dtype_store(void *data, an_dtype dtype, size_t i, double v) {
    switch (dtype) {
    case AN_F32: ((float *)data)[i] = (float)v; break;
    case AN_F64: ((double *)data)[i] = v; break;
    case AN_BF16: ((uint16_t *)data)[i] = an_f32_to_bf16(f64_to_f32_round_odd(v)); break;
    case AN_F16: ((uint16_t *)data)[i] = an_f32_to_f16(f64_to_f32_round_odd(v)); break;
    case AN_I32: ((int32_t *)data)[i] = (int32_t)v; break;
    case AN_I64: ((int64_t *)data)[i] = (int64_t)v; break;
    case AN_U8: ((uint8_t *)data)[i] = (uint8_t)v; break;
    default: break;
    }
}

void an_dtype_convert(const void *src, an_dtype src_dtype, void *dst, an_dtype dst_dtype, size_t n) {
    if (src_dtype == dst_dtype) {
        memcpy(dst, src, n * an_dtype_size(src_dtype));
        return;
    }
    /* The reference kernels widen f32 to f64 and round back on every op: keep those loops tight. */
    if (src_dtype == AN_F32 && dst_dtype == AN_F64) {
        for (size_t i = 0; i < n; i++) ((double *)dst)[i] = ((const float *)src)[i];
        return;
    }
    if (src_dtype == AN_F64 && dst_dtype == AN_F32) {
        for (size_t i = 0; i < n; i++) ((float *)dst)[i] = (float)((const double *)src)[i];
        return;
    }
    if (src_dtype == AN_F32 && dst_dtype == AN_BF16) {
        for (size_t i = 0; i < n; i++) ((uint16_t *)dst)[i] = an_f32_to_bf16(((const float *)src)[i]);
        return;
    }
    if (src_dtype == AN_BF16 && dst_dtype == AN_F32) {
        for (size_t i = 0; i < n; i++) ((float *)dst)[i] = an_bf16_to_f32(((const uint16_t *)src)[i]);
        return;
    }
    for (size_t i = 0; i < n; i++) an_dtype_store(dst, dst_dtype, i, an_dtype_load(src, src_dtype, i));
}
