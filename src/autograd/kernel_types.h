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

/* Causal attention, q (B, T, Hq, D), k and v (B, T, Hkv, D), Hkv divides Hq; query head h reads
 * kv head h / (Hq/Hkv); scores are scale * q.k. */
typedef struct {
    int64_t batch, seq, q_heads, kv_heads, head_dim;
    double scale;
} an_attention_shape;

/* The scalars one AdamW step shares across a parameter's elements (src/optim/adamw.c computes
 * them; the CPU loop and an_cuda_adamw_multi apply them in the same float64 operation order). */
typedef struct {
    double decay;      /* 1 - lr * weight_decay, or 1 without decay */
    double beta1, beta2;
    double step_size;  /* lr / (1 - beta1^t) */
    double bc2_sqrt;   /* sqrt(1 - beta2^t) */
    double eps;
    double grad_scale; /* from clipping; 1 when none */
} an_adamw_scalars;

#endif
