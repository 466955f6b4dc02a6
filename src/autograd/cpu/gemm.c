/* gemm.c — batched GEMM on OpenBLAS: sgemm for f32 (fp32 accumulate), dgemm for f64. */
#include "autograd/cpu/cpu.h"

#include <cblas.h>  /* cblas_sgemm, cblas_dgemm (OpenBLAS) */

void an_cpu_gemm(const an_gemm_shape *s, an_dtype dtype, const void *a, const void *b, void *c) {
    int64_t lda = s->trans_a ? s->m : s->k, ldb = s->trans_b ? s->k : s->n, ldc = s->n;
    int64_t stride_a = s->m * s->k, stride_b = s->b_shared ? 0 : s->k * s->n, stride_c = s->m * s->n;
    enum CBLAS_TRANSPOSE ta = s->trans_a ? CblasTrans : CblasNoTrans, tb = s->trans_b ? CblasTrans : CblasNoTrans;
    double beta = s->accumulate ? 1.0 : 0.0;
    /* A shared B with an untransposed A is one big GEMM over batch*M rows. */
    int64_t batch = s->batch, m = s->m;
    if (s->b_shared && !s->trans_a) {
        m *= batch;
        batch = 1;
    }
    for (int64_t i = 0; i < batch; i++) {
        if (dtype == AN_F32)
            cblas_sgemm(CblasRowMajor, ta, tb, (int)m, (int)s->n, (int)s->k, 1.0f, (const float *)a + i * stride_a,
                        (int)lda, (const float *)b + i * stride_b, (int)ldb, (float)beta, (float *)c + i * stride_c,
                        (int)ldc);
        else
            cblas_dgemm(CblasRowMajor, ta, tb, (int)m, (int)s->n, (int)s->k, 1.0, (const double *)a + i * stride_a,
                        (int)lda, (const double *)b + i * stride_b, (int)ldb, beta, (double *)c + i * stride_c,
                        (int)ldc);
    }
}
