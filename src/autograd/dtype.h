/* dtype.h — element types, their sizes and names, and the bf16/f16 <-> f32 conversions.
 *
 * Conversions to bf16 and f16 round to nearest, ties to even; NaN stays NaN (quiet), infinities and
 * signed zeros are kept, f16 subnormals are produced and read exactly. */
#ifndef AN_DTYPE_H
#define AN_DTYPE_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

typedef enum {
    AN_F32 = 0,
    AN_F64,  /* CPU only: gradient checks and reference loops */
    AN_BF16,
    AN_F16,
    AN_I32,
    AN_I64,
    AN_U8,
    AN_DTYPE_COUNT
} an_dtype;

size_t an_dtype_size(an_dtype dtype);
const char *an_dtype_name(an_dtype dtype);   /* "f32", "bf16", ... */
bool an_dtype_is_float(an_dtype dtype);
/* Parses "f32"/"float32", "bf16"/"bfloat16", ...; false when the name is unknown. */
bool an_dtype_parse(const char *name, an_dtype *out);

uint16_t an_f32_to_bf16(float x);
float an_bf16_to_f32(uint16_t h);
uint16_t an_f32_to_f16(float x);
float an_f16_to_f32(uint16_t h);

/* Element i of a buffer of `dtype` as a double, and the reverse (rounding as above for bf16/f16,
 * truncation toward zero for integers). These are the only element converters in the project. */
double an_dtype_load(const void *data, an_dtype dtype, size_t i);
void an_dtype_store(void *data, an_dtype dtype, size_t i, double value);
/* Converts n elements between buffers of any two dtypes (may not overlap). */
void an_dtype_convert(const void *src, an_dtype src_dtype, void *dst, an_dtype dst_dtype, size_t n);

#endif
