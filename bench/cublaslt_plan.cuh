/* cublaslt_plan.cuh — cuBLASLt as kernels/gemm.cu runs it (fp32 compute, its heuristic's first
 * algorithm, a 32 MiB workspace), for the standalone sweeps gemv_variants.cu,
 * gemm_decode_variants.cu and gemm_wgmma_variants.cu: y (M, N) = x (M, K) W^T for W (N, K) in
 * bf16, or with bt y = x W for W stored (K, N). Column-major view: y^T (N, M) = op(W) x^T. A
 * benchmark helper: any cuBLASLt error exits. */
#ifndef AN_BENCH_CUBLASLT_PLAN_CUH
#define AN_BENCH_CUBLASLT_PLAN_CUH

#include <cstdio>
#include <cstdlib>

#include <cublasLt.h>
#include <cuda_bf16.h>

#define LT_CHECK(x)                                                                                    \
    do {                                                                                               \
        cublasStatus_t e_ = (x);                                                                       \
        if (e_ != CUBLAS_STATUS_SUCCESS) {                                                             \
            printf("%s:%d cublas %d\n", __FILE__, __LINE__, (int)e_);                                  \
            exit(1);                                                                                   \
        }                                                                                              \
    } while (0)

struct LtPlan {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t w = nullptr, x = nullptr, y = nullptr;
    cublasLtMatmulAlgo_t algo;
    static constexpr size_t WORKSPACE = 32 << 20;
};

/* The heuristic's algorithm number nth (0: its first, the library's); *count, when given, gets
 * how many it offered (at most 16). */
inline LtPlan lt_plan(cublasLtHandle_t lt, int M, int N, int K, bool bt = false, int nth = 0, int *count = nullptr) {
    LtPlan p;
    LT_CHECK(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t t = CUBLAS_OP_T;
    if (!bt) LT_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof t));
    LT_CHECK(bt ? cublasLtMatrixLayoutCreate(&p.w, CUDA_R_16BF, N, K, N) : cublasLtMatrixLayoutCreate(&p.w, CUDA_R_16BF, K, N, K));
    LT_CHECK(cublasLtMatrixLayoutCreate(&p.x, CUDA_R_16BF, K, M, K));
    LT_CHECK(cublasLtMatrixLayoutCreate(&p.y, CUDA_R_16BF, N, M, N));
    cublasLtMatmulPreference_t pref;
    LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    size_t wsz = LtPlan::WORKSPACE;
    LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsz, sizeof wsz));
    cublasLtMatmulHeuristicResult_t h[16]; /* best first, whatever count is asked for */
    int n = 0;
    LT_CHECK(cublasLtMatmulAlgoGetHeuristic(lt, p.op, p.w, p.x, p.y, p.y, pref, count || nth >= 16 ? 16 : nth + 1, h, &n));
    if (count) *count = n;
    if (nth >= 16 || n <= nth) {
        printf("no cuBLASLt algorithm %d for %d x %d x %d\n", nth, M, N, K);
        exit(1);
    }
    p.algo = h[nth].algo;
    LT_CHECK(cublasLtMatmulPreferenceDestroy(pref));
    return p;
}

/* An algorithm's configuration as cuBLASLt numbers it (cublasLt.h's enums): its id, tile, stages,
 * k splits and cluster shape, to name a choice by what it is rather than by its place in a list. */
inline void lt_describe(const cublasLtMatmulAlgo_t &a, char *out, size_t size) {
    int id = -1, tile = -1, stages = -1, splitk = -1, cluster = -1;
    size_t w;
    cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_ID, &id, sizeof id, &w);
    cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof tile, &w);
    cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages, sizeof stages, &w);
    cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitk, sizeof splitk, &w);
    cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, &cluster, sizeof cluster, &w);
    snprintf(out, size, "id %d tile %d stages %d splitk %d cluster %d", id, tile, stages, splitk, cluster);
}

/* y = x op(W), or with beta 1 y += x op(W) (y's old values added before the one rounding). */
inline void lt_run(cublasLtHandle_t lt, const LtPlan &p, const __nv_bfloat16 *x, const __nv_bfloat16 *w,
                   __nv_bfloat16 *y, void *workspace, cudaStream_t st, float beta = 0.0f) {
    float alpha = 1.0f;
    LT_CHECK(cublasLtMatmul(lt, p.op, &alpha, w, p.w, x, p.x, &beta, y, p.y, y, p.y, &p.algo, workspace,
                            LtPlan::WORKSPACE, st));
}

inline void lt_free(LtPlan &p) {
    if (p.op) LT_CHECK(cublasLtMatmulDescDestroy(p.op));
    for (cublasLtMatrixLayout_t l : {p.w, p.x, p.y})
        if (l) LT_CHECK(cublasLtMatrixLayoutDestroy(l));
    p = LtPlan();
}

#endif
