/* gemm.cu — an_cuda_gemm: row-major batched GEMM (an_gemm_shape) through cuBLASLt.
 *
 * Numerics: bf16 and f16 operands multiply with fp32 accumulation (CUBLAS_COMPUTE_32F) and round
 * once to the output dtype; f32 uses CUBLAS_COMPUTE_32F too, so TF32 is never used. C is written
 * with = (beta 0: the old C is not read) or += with shape->accumulate (beta 1: on an H100 its sums
 * move as many outputs as rounding op(A) op(B) before C joins it would, not as one rounding: see
 * src/autograd/ops/lora_linear.c's numerics), or as D = op(A) op(B)
 * + C with C another matrix of D's layout (an_cuda_gemm_addend: a residual added in the epilogue,
 * beta 1 with cuBLASLt's C and D pointers apart, one rounding). A bias
 * (an_cuda_gemm_bias) rides in cuBLASLt's epilogue (CUBLASLT_EPILOGUE_BIAS): added to the fp32
 * result before the one rounding, so a biased projection is one pass, not a GEMM and an add (a
 * bias that is not 16-byte aligned, which the epilogue refuses, is added by a second kernel).
 *
 * Layout: cuBLASLt is column-major, and a row-major (R, C) matrix is a column-major (C, R) one.
 * So C = op(A) op(B) is computed as C^T = op(B)^T op(A)^T: cuBLASLt's first operand is our B,
 * its second our A, and its (N, M) column-major output is our (M, N) row-major C. Batches are
 * strided; a shared B has batch stride 0, and with an untransposed A it folds into one GEMM of
 * batch*M rows. At most AN_CUDA_GEMV_RULE_ROWS rows against a transposed B go to an_cuda_gemv
 * (kernels/gemv.cu) instead, by cuda.h's rule on the weight's bytes and the card's bandwidth, and
 * up to AN_CUDA_DECODE_GEMM_RULE_ROWS to an_cuda_gemm_decode (kernels/gemm_decode.cu).
 * Descriptors and the chosen algorithm are cached per shape, dtype and pointer alignment in the
 * state (AN_GEMM_PLAN_SLOTS entries, replaced round-robin). */
#include "kernels/cuda_common.cuh"

#include <stdint.h>
#include <stdlib.h>

struct an_gemm_plan {
    bool used;
    /* key */
    an_dtype dtype;   /* of A and B */
    an_dtype c_dtype; /* of C: dtype, or f32 (an_cuda_gemm_f32_out) */
    int64_t batch, m, n, k;
    bool trans_a, trans_b, b_shared;
    bool bias;      /* the bias epilogue (its pointer is set per call) */
    bool bias_grad; /* the bias-gradient epilogue: sums of op(A) over K (BGRADB; pointer per call) */
    uint32_t align_a, align_b, align_c;
    /* cuBLASLt objects: lt_a describes our B, lt_b our A (see the top of the file) */
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t lt_a, lt_b, lt_c;
    cublasLtMatmulAlgo_t algo;
};

namespace {

void plan_destroy(an_gemm_plan *p) {
    if (!p->used) return;
    if (p->op) (void)cublasLtMatmulDescDestroy(p->op);
    if (p->lt_a) (void)cublasLtMatrixLayoutDestroy(p->lt_a);
    if (p->lt_b) (void)cublasLtMatrixLayoutDestroy(p->lt_b);
    if (p->lt_c) (void)cublasLtMatrixLayoutDestroy(p->lt_c);
    *p = an_gemm_plan{};
}

/* Largest power of two (at most 256) dividing the address and, for batches, the batch stride. */
uint32_t alignment_of(const void *ptr, int64_t stride_bytes, int64_t batch) {
    uint64_t bits = (uint64_t)(uintptr_t)ptr | 256u;
    if (batch > 1 && stride_bytes > 0) bits |= (uint64_t)stride_bytes;
    return (uint32_t)(bits & (~bits + 1));
}

cudaDataType_t cuda_type(an_dtype dtype) {
    return dtype == AN_BF16 ? CUDA_R_16BF : dtype == AN_F16 ? CUDA_R_16F : CUDA_R_32F;
}

an_status layout(an_ctx *ctx, cublasLtMatrixLayout_t *out, an_dtype dtype, int64_t rows, int64_t cols, int64_t ld,
                 int64_t batch, int64_t stride) {
    AN_CUBLAS_CHECK(ctx, cublasLtMatrixLayoutCreate(out, cuda_type(dtype), (uint64_t)rows, (uint64_t)cols, ld));
    if (batch > 1) {
        int32_t count = (int32_t)batch;
        AN_CUBLAS_CHECK(ctx, cublasLtMatrixLayoutSetAttribute(*out, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count,
                                                              sizeof count));
        AN_CUBLAS_CHECK(ctx, cublasLtMatrixLayoutSetAttribute(*out, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                                              &stride, sizeof stride));
    }
    return AN_OK;
}

/* Fills p (already keyed) with descriptors and the heuristic's best algorithm. *found is false
 * when cuBLASLt has no algorithm for this problem (p is then left unused). */
an_status plan_build(an_ctx *ctx, an_cuda_state *s, an_gemm_plan *p, bool *found) {
    *found = false;
    int64_t m = p->m, n = p->n, k = p->k;
    AN_CUBLAS_CHECK(ctx, cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t op_a = p->trans_b ? CUBLAS_OP_T : CUBLAS_OP_N; /* cuBLASLt's A is our B */
    cublasOperation_t op_b = p->trans_a ? CUBLAS_OP_T : CUBLAS_OP_N; /* cuBLASLt's B is our A */
    AN_CUBLAS_CHECK(ctx, cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof op_a));
    AN_CUBLAS_CHECK(ctx, cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof op_b));
    if (p->bias) { /* a vector over the rows of the column-major output: our columns */
        cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
        AN_CUBLAS_CHECK(ctx, cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
    }
    if (p->bias_grad) { /* cuBLASLt's B is our A: its reduction over K, one value per column of its D = our row */
        cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BGRADB;
        AN_CUBLAS_CHECK(ctx, cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
    }
    /* Our B: (K, N) row-major = (N, K) column-major, ld N; transposed (N, K) row-major = (K, N), ld K. */
    AN_TRY(layout(ctx, &p->lt_a, p->dtype, p->trans_b ? k : n, p->trans_b ? n : k, p->trans_b ? k : n, p->batch,
                  p->b_shared ? 0 : k * n));
    /* Our A: (M, K) row-major = (K, M) column-major, ld K; transposed (K, M) row-major = (M, K), ld M. */
    AN_TRY(layout(ctx, &p->lt_b, p->dtype, p->trans_a ? m : k, p->trans_a ? k : m, p->trans_a ? m : k, p->batch,
                  m * k));
    /* C: (M, N) row-major = (N, M) column-major, ld N. */
    AN_TRY(layout(ctx, &p->lt_c, p->c_dtype, n, m, n, p->batch, m * n));

    cublasLtMatmulPreference_t pref = nullptr;
    AN_CUBLAS_CHECK(ctx, cublasLtMatmulPreferenceCreate(&pref));
    size_t ws = s->workspace_bytes;
    cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                                             sizeof ws);
    /* Alignments: cuBLASLt assumes 256 bytes unless told; views and batch strides can be less. */
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &p->align_b,
                                                  sizeof p->align_b);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &p->align_a,
                                                  sizeof p->align_a);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &p->align_c,
                                                  sizeof p->align_c);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &p->align_c,
                                                  sizeof p->align_c);
    cublasLtMatmulHeuristicResult_t result = {};
    int returned = 0;
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulAlgoGetHeuristic(s->lt, p->op, p->lt_a, p->lt_b, p->lt_c, p->lt_c, pref, 1, &result,
                                            &returned);
    cublasStatus_t destroy_st = cublasLtMatmulPreferenceDestroy(pref);
    if (st == CUBLAS_STATUS_NOT_SUPPORTED || (st == CUBLAS_STATUS_SUCCESS && returned == 0)) return AN_OK;
    if (st != CUBLAS_STATUS_SUCCESS)
        return an_error_set(ctx, AN_ERR_INTERNAL, __FILE__, __LINE__,
                            "cuBLASLt matmul preference / cublasLtMatmulAlgoGetHeuristic failed: %s (%d)",
                            an_cublas_status_string(st), (int)st);
    AN_CUBLAS_CHECK(ctx, destroy_st);
    p->algo = result.algo;
    *found = true;
    return AN_OK;
}

/* The cached plan for this key, building it on a miss; NULL in *out when cuBLASLt has no
 * algorithm for it. */
an_status plan_get(an_ctx *ctx, an_cuda_state *s, const an_gemm_plan &key, an_gemm_plan **out) {
    *out = nullptr;
    if (!s->plans) {
        s->plans = (an_gemm_plan *)calloc(AN_GEMM_PLAN_SLOTS, sizeof(an_gemm_plan));
        AN_CHECK(ctx, s->plans != nullptr, AN_ERR_INTERNAL, "out of host memory for the GEMM plan cache");
    }
    for (int i = 0; i < AN_GEMM_PLAN_SLOTS; i++) {
        an_gemm_plan *p = &s->plans[i];
        if (p->used && p->dtype == key.dtype && p->c_dtype == key.c_dtype && p->batch == key.batch && p->m == key.m && p->n == key.n &&
            p->k == key.k && p->trans_a == key.trans_a && p->trans_b == key.trans_b && p->b_shared == key.b_shared && p->bias == key.bias && p->bias_grad == key.bias_grad &&
            p->align_a == key.align_a && p->align_b == key.align_b && p->align_c == key.align_c) {
            *out = p;
            return AN_OK;
        }
    }
    an_gemm_plan *p = &s->plans[s->plan_next];
    s->plan_next = (s->plan_next + 1) % AN_GEMM_PLAN_SLOTS;
    plan_destroy(p);
    *p = key;
    p->used = true; /* so a failed build is still destroyed */
    bool found = false;
    an_status st = plan_build(ctx, s, p, &found);
    if (st != AN_OK || !found) {
        plan_destroy(p);
        return st;
    }
    *out = p;
    return AN_OK;
}

/* One cuBLASLt call for (possibly batched) row-major shape s, plus bias (n) on every row when
 * given; false in *ran when cuBLASLt has no algorithm for it. */
an_status gemm_once(an_ctx *ctx, an_cuda_state *s, const an_gemm_shape &shape, an_dtype dtype, an_dtype c_dtype,
                    const void *a, const void *b, const void *bias, const void *addend, void *c, bool *ran,
                    void *bias_grad = nullptr, float alpha = 1.0f) {
    *ran = false;
    size_t es = an_dtype_size(dtype), cs = an_dtype_size(c_dtype);
    an_gemm_plan key = {};
    key.dtype = dtype;
    key.c_dtype = c_dtype;
    key.batch = shape.batch;
    key.m = shape.m;
    key.n = shape.n;
    key.k = shape.k;
    key.trans_a = shape.trans_a;
    key.trans_b = shape.trans_b;
    key.b_shared = shape.b_shared;
    key.bias = bias != nullptr;
    key.bias_grad = bias_grad != nullptr;
    key.align_a = alignment_of(a, shape.m * shape.k * (int64_t)es, shape.batch);
    key.align_b = alignment_of(b, shape.b_shared ? 0 : shape.k * shape.n * (int64_t)es, shape.batch);
    key.align_c = alignment_of(c, shape.m * shape.n * (int64_t)cs, shape.batch);
    if (addend) { /* C and D share one layout: the smaller alignment of the two */
        uint32_t align_addend = alignment_of(addend, shape.m * shape.n * (int64_t)cs, shape.batch);
        if (align_addend < key.align_c) key.align_c = align_addend;
    }
    an_gemm_plan *p = nullptr;
    AN_TRY(plan_get(ctx, s, key, &p));
    if (!p) return AN_OK;
    float beta = shape.accumulate || addend ? 1.0f : 0.0f;
    if (bias)
        AN_CUBLAS_CHECK(ctx, cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
    if (bias_grad)
        AN_CUBLAS_CHECK(ctx, cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_grad,
                                                            sizeof bias_grad));
    const void *c_in = addend ? addend : c;
    AN_CUBLAS_CHECK(ctx, cublasLtMatmul(s->lt, p->op, &alpha, b, p->lt_a, a, p->lt_b, &beta, c_in, p->lt_c, c, p->lt_c,
                                        &p->algo, s->workspace, s->workspace_bytes, s->stream));
    *ran = true;
    return AN_OK;
}

} // namespace

void an_cuda_gemm_plans_free(an_cuda_state *s) {
    if (!s->plans) return;
    for (int i = 0; i < AN_GEMM_PLAN_SLOTS; i++) plan_destroy(&s->plans[i]);
    free(s->plans);
    s->plans = nullptr;
}

namespace {

/* C of c_dtype (dtype, or f32 for bf16/f16 operands) = alpha op(A) op(B) of dtype, plus bias (N, of
 * dtype = c_dtype) on every row when given, plus addend (C's layout and dtype; may be C) when given;
 * alpha other than 1 only without bias, addend or accumulate (an_cuda_gemm_scaled). */
an_status gemm(an_ctx *ctx, const an_gemm_shape *shape, an_dtype dtype, an_dtype c_dtype, const void *a, const void *b,
               const void *bias, const void *addend, void *c, float alpha = 1.0f) {
    AN_CUDA_STATE(ctx, s);
    AN_CHECK(ctx, dtype == AN_F32 || dtype == AN_BF16 || dtype == AN_F16, AN_ERR_INPUT, "gemm: no CUDA kernel for %s",
             an_dtype_name(dtype));
    an_gemm_shape sh = *shape;
    AN_CHECK(ctx, sh.batch >= 0 && sh.m >= 0 && sh.n >= 0 && sh.k >= 0, AN_ERR_INTERNAL,
             "gemm: negative size (batch %lld, m %lld, n %lld, k %lld)", (long long)sh.batch, (long long)sh.m,
             (long long)sh.n, (long long)sh.k);
    AN_CHECK(ctx, !bias || c_dtype == dtype, AN_ERR_INTERNAL, "gemm: a bias needs C in the operand dtype");
    AN_CHECK(ctx, !addend || !sh.accumulate, AN_ERR_INTERNAL, "gemm: an addend and accumulate together");
    AN_CHECK(ctx, alpha == 1.0f || (!bias && !addend && !sh.accumulate), AN_ERR_INTERNAL,
             "gemm: a scale with a bias, an addend or accumulate");
    if (sh.batch == 0 || sh.m == 0 || sh.n == 0) return AN_OK;
    size_t es = an_dtype_size(dtype), cs = an_dtype_size(c_dtype);
    if (addend == c) addend = nullptr, sh.accumulate = true; /* C += op(A) op(B) */
    /* The empty sum and the GEMV's rows have no C pointer or scale of their own: an addend is copied
     * into C first (then accumulated into), a scale is a pass after the product. */
    const bool rows_shape = sh.batch == 1 && !sh.trans_a && sh.trans_b && c_dtype == dtype;
    const bool decode_gemm = rows_shape && an_cuda_decode_gemm_rule(dtype, a, sh.m, sh.k, b);
    const bool plain_paths = sh.k == 0 || decode_gemm || (rows_shape && sh.m <= AN_CUDA_GEMV_RULE_ROWS);
    if (addend && plain_paths) {
        AN_CUDA_CHECK(ctx, cudaMemcpyAsync(c, addend, (size_t)(sh.batch * sh.m * sh.n) * cs, cudaMemcpyDeviceToDevice,
                                           s->stream));
        addend = nullptr, sh.accumulate = true;
    }
    if (alpha != 1.0f && plain_paths) {
        AN_TRY(gemm(ctx, &sh, dtype, c_dtype, a, b, nullptr, nullptr, c));
        return an_cuda_scale(ctx, c_dtype, c, sh.batch * sh.m * sh.n, alpha, c);
    }
    if (sh.k == 0) { /* an empty sum: C = 0 (+ bias), or C unchanged (+ bias) when accumulating */
        if (!sh.accumulate) AN_TRY(an_cuda_memset(ctx, c, 0, (size_t)(sh.batch * sh.m * sh.n) * cs));
        if (bias) AN_TRY(an_cuda_binary(ctx, AN_BINARY_ADD, dtype, c, sh.batch * sh.m * sh.n, bias, sh.n, c));
        return AN_OK;
    }
    if (sh.b_shared && !sh.trans_a) { /* rows of every batch entry stack into one GEMM */
        sh.m *= sh.batch;
        sh.batch = 1;
    }
    if (sh.batch == 1) sh.b_shared = false;
    /* A few rows times a transposed B (a decode step's x W^T): the weight-streaming GEMV (H200,
     * M = 1, in a decode graph: down_proj 8.0 vs 11.1 us for cuBLASLt) by cuda.h's rule on the
     * weight's size and the card's bandwidth (the lm_head: faster than cuBLASLt on an H100, slower
     * on an H200). */
    const bool gemv_weight = (size_t)sh.n * (size_t)sh.k * es <= AN_CUDA_GEMV_MAX_WEIGHT_BYTES ||
                             s->peak_bandwidth < AN_CUDA_GEMV_LARGE_MAX_BANDWIDTH;
    if (rows_shape && sh.m <= AN_CUDA_GEMV_RULE_ROWS && gemv_weight)
        return an_cuda_gemv(ctx, dtype, a, sh.m, sh.k, b, sh.n, bias, sh.accumulate, c);
    /* A batched decode step's rows (3-16 tokens): W streamed once on tensor cores (gemm_decode.cu) */
    if (decode_gemm) return an_cuda_gemm_decode(ctx, dtype, a, sh.m, sh.k, b, sh.n, bias, sh.accumulate, c);
    AN_CHECK(ctx, sh.batch <= INT32_MAX, AN_ERR_INPUT, "gemm: batch %lld exceeds cuBLASLt's limit",
             (long long)sh.batch);
    if (bias && (uintptr_t)bias % 16 != 0) { /* the epilogue wants a 16-byte aligned bias: add it after */
        AN_TRY(gemm(ctx, &sh, dtype, c_dtype, a, b, nullptr, addend, c));
        return an_cuda_binary(ctx, AN_BINARY_ADD, dtype, c, sh.batch * sh.m * sh.n, bias, sh.n, c);
    }
    bool ran = false;
    AN_TRY(gemm_once(ctx, s, sh, dtype, c_dtype, a, b, bias, addend, c, &ran, nullptr, alpha));
    if (ran) return AN_OK;
    /* No batched algorithm (a shared B with stride 0 can have none): one call per batch entry. */
    AN_CHECK(ctx, sh.batch > 1, AN_ERR_INTERNAL,
             "gemm: cuBLASLt has no algorithm for %s m %lld n %lld k %lld (trans_a %d, trans_b %d)",
             an_dtype_name(dtype), (long long)sh.m, (long long)sh.n, (long long)sh.k, sh.trans_a, sh.trans_b);
    an_gemm_shape one = sh;
    one.batch = 1;
    one.b_shared = false;
    for (int64_t i = 0; i < sh.batch; i++) {
        const char *ai = (const char *)a + (size_t)(i * sh.m * sh.k) * es;
        const char *bi = (const char *)b + (sh.b_shared ? 0 : (size_t)(i * sh.k * sh.n) * es);
        char *ci = (char *)c + (size_t)(i * sh.m * sh.n) * cs;
        const char *di = addend ? (const char *)addend + (size_t)(i * sh.m * sh.n) * cs : nullptr;
        AN_TRY(gemm_once(ctx, s, one, dtype, c_dtype, ai, bi, bias, di, ci, &ran, nullptr, alpha));
        AN_CHECK(ctx, ran, AN_ERR_INTERNAL, "gemm: cuBLASLt has no algorithm for %s m %lld n %lld k %lld",
                 an_dtype_name(dtype), (long long)sh.m, (long long)sh.n, (long long)sh.k);
    }
    return AN_OK;
}

} // namespace

extern "C" an_status an_cuda_gemm(an_ctx *ctx, const an_gemm_shape *shape, an_dtype dtype, const void *a,
                                  const void *b, void *c) {
    return gemm(ctx, shape, dtype, dtype, a, b, nullptr, nullptr, c);
}

extern "C" an_status an_cuda_gemm_bias(an_ctx *ctx, const an_gemm_shape *shape, an_dtype dtype, const void *a,
                                       const void *b, const void *bias, void *c) {
    return gemm(ctx, shape, dtype, dtype, a, b, bias, nullptr, c);
}

extern "C" an_status an_cuda_gemm_scaled(an_ctx *ctx, const an_gemm_shape *shape, an_dtype dtype, double alpha,
                                         const void *a, const void *b, void *c) {
    return gemm(ctx, shape, dtype, dtype, a, b, nullptr, nullptr, c, (float)alpha);
}

extern "C" an_status an_cuda_gemm_addend(an_ctx *ctx, const an_gemm_shape *shape, an_dtype dtype, const void *a,
                                         const void *b, const void *bias, const void *addend, void *c) {
    return gemm(ctx, shape, dtype, dtype, a, b, bias, addend, c);
}

/* C (+)= op(A) op(B) with grad_bias (M) = the sums of op(A) over K in the same GEMM (cuBLASLt's
 * BGRADB epilogue: a linear's dW = dY^T X with its bias gradient, the column sums of dY); where
 * cuBLASLt plans no such GEMM (or the shape is batched or small enough for the GEMV), the GEMM and a
 * column-sum kernel, the same sums. */
extern "C" an_status an_cuda_gemm_bias_grad(an_ctx *ctx, const an_gemm_shape *shape, an_dtype dtype, const void *a,
                                            const void *b, void *grad_bias, void *c) {
    AN_CUDA_STATE(ctx, s);
    AN_CHECK(ctx, shape->trans_a, AN_ERR_INTERNAL, "gemm_bias_grad: A must be transposed (dW = dY^T X)");
    bool ran = false;
    if (shape->batch == 1 && shape->m > 0 && shape->n > 0 && shape->k > 0 && (uintptr_t)grad_bias % 16 == 0 &&
        (dtype == AN_BF16 || dtype == AN_F16))
        AN_TRY(gemm_once(ctx, s, *shape, dtype, dtype, a, b, nullptr, nullptr, c, &ran, grad_bias));
    if (ran) return AN_OK;
    AN_TRY(gemm(ctx, shape, dtype, dtype, a, b, nullptr, nullptr, c));
    /* op(A) = A^T for A (K, M): the column sums of A */
    return an_cuda_binary_backward(ctx, AN_BINARY_ADD, dtype, a, shape->batch * shape->k * shape->m, grad_bias,
                                   shape->m, a, nullptr, grad_bias);
}

extern "C" an_status an_cuda_gemm_f32_out(an_ctx *ctx, const an_gemm_shape *shape, an_dtype dtype, const void *a,
                                          const void *b, float *c) {
    return gemm(ctx, shape, dtype, AN_F32, a, b, nullptr, nullptr, c);
}
