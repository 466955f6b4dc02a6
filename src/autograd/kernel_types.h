/* kernel_types.h — small descriptors shared by the CPU reference kernels and the CUDA launchers. */
#ifndef AN_KERNEL_TYPES_H
#define AN_KERNEL_TYPES_H

#include <stdbool.h>
#include <stdint.h>

typedef enum { AN_BINARY_ADD, AN_BINARY_SUB, AN_BINARY_MUL } an_binary_kind;

/* C (batch, M, N) = op(A) @ op(B): A is (batch, M, K), or (batch, K, M) when trans_a; B is
 * (batch, K, N), or (batch, N, K) when trans_b; b_shared: one B for every batch entry;
 * accumulate: C += instead of C =. */
typedef struct {
    int64_t batch, m, n, k;
    bool trans_a, trans_b;
    bool b_shared;
    bool accumulate;
} an_gemm_shape;

#endif
