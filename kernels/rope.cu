/* rope.cu — rotary position embedding of (rows, H, D) activations at per-row positions, NEOX
 * (pairs (i, i + D/2)) or interleaved (pairs (2i, 2i + 1)); sign -1 rotates back (the backward).
 *
 * Numerics: the inverse frequencies are the CPU's (an_cpu_rope_inv_freq, float64, llama3 scaling
 * included) and travel by value as a kernel argument (no copy, no synchronisation). Each block
 * takes one row: angle = position * inv_freq[i] in float64, cos and sin in float64 (CUDA's sincos,
 * accurate for any angle a position can give), each rounded once to fp32, so they are within half
 * an fp32 ulp (<= 6e-8) of the CPU's float64 values; the rotation itself is fp32 and rounds once
 * to the dtype. Positions come from the caller (packed documents restart them) and are >= 0. */
#include "kernels/block_reduce.cuh"

#include <stdint.h>

namespace {

const int kMaxPairs = AN_CUDA_ROPE_MAX_D / 2;

struct InvFreq {
    double v[kMaxPairs]; /* (D/2) */
};

template <typename T>
__global__ void rope_kernel(const T *x, const void *positions, bool pos64, int64_t H, int64_t D, InvFreq inv,
                            bool interleaved, float sign, T *out) {
    __shared__ float cs[kMaxPairs], sn[kMaxPairs];
    int64_t r = blockIdx.x, half = D / 2;
    double pos = (double)an_load_id(positions, pos64, r);
    for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
        double s, c;
        sincos(pos * inv.v[i], &s, &c);
        cs[i] = (float)c;
        sn[i] = sign * (float)s;
    }
    __syncthreads();
    const T *xr = x + r * H * D; /* (H, D) */
    T *orow = out + r * H * D;   /* (H, D) */
    for (int64_t e = threadIdx.x; e < H * half; e += blockDim.x) {
        int64_t h = e / half, i = e - h * half;
        int64_t a = h * D + (interleaved ? 2 * i : i), b = a + (interleaved ? 1 : half);
        float x1 = an_load(xr[a]), x2 = an_load(xr[b]), c = cs[i], s = sn[i];
        orow[a] = an_store<T>(x1 * c - x2 * s);
        orow[b] = an_store<T>(x2 * c + x1 * s);
    }
}

} // namespace

extern "C" an_status an_cuda_rope(an_ctx *ctx, an_dtype dtype, const void *x, const void *positions,
                                  an_dtype pos_dtype, int64_t rows, int64_t H, int64_t D, const double *inv_freq,
                                  int interleaved, double sign, void *out) {
    AN_CUDA_STATE(ctx, s);
    AN_CHECK(ctx, pos_dtype == AN_I32 || pos_dtype == AN_I64, AN_ERR_INPUT,
             "rope: positions must be i32 or i64, got %s", an_dtype_name(pos_dtype));
    AN_CHECK(ctx, D >= 2 && D % 2 == 0 && D <= AN_CUDA_ROPE_MAX_D, AN_ERR_INPUT,
             "rope: head dim D = %lld; the CUDA kernel takes even D up to %d", (long long)D, AN_CUDA_ROPE_MAX_D);
    AN_CHECK(ctx, rows >= 0 && rows <= INT32_MAX && H >= 0, AN_ERR_INPUT, "rope: %lld rows of %lld heads",
             (long long)rows, (long long)H);
    if (rows == 0 || H == 0) return AN_OK;
    InvFreq inv = {};
    for (int64_t i = 0; i < D / 2; i++) inv.v[i] = inv_freq[i];
    int threads = an_row_threads(H * (D / 2), 256);
    AN_CUDA_DISPATCH_FLOAT(ctx, dtype, "rope", {
        rope_kernel<T><<<(unsigned)rows, threads, 0, s->stream>>>((const T *)x, positions, pos_dtype == AN_I64, H, D,
                                                                 inv, interleaved != 0, (float)sign, (T *)out);
        AN_CUDA_LAUNCH_CHECK(ctx, "rope_kernel");
    });
    return AN_OK;
}
