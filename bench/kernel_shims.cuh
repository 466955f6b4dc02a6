/* kernel_shims.cuh — what a standalone sweep supplies when it includes a kernel file with its
 * *_KERNEL_ONLY define (gemm_decode_variants.cu, lora_grads_variants.cu): the CHECK macro that exits
 * on a CUDA error, and the dtype loads and stores kernels/cuda_common.cuh would otherwise give
 * (fp32 math, stores round to nearest even). A benchmark helper, not library code. */
#ifndef AN_BENCH_KERNEL_SHIMS_CUH
#define AN_BENCH_KERNEL_SHIMS_CUH

#include <cstdio>
#include <cstdlib>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e)); exit(1);} } while (0)
typedef __nv_bfloat16 bf;

__device__ __forceinline__ float an_load(bf v) { return __bfloat162float(v); }
__device__ __forceinline__ float an_load(__half v) { return __half2float(v); }
template <typename T> __device__ __forceinline__ T an_store(float v);
template <> __device__ __forceinline__ bf an_store<bf>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __half an_store<__half>(float v) { return __float2half_rn(v); }

#endif
