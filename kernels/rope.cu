/* rope.cu — rotary position embedding of (rows, H, D) activations at per-row positions, NEOX
 * (pairs (i, i + D/2)) or interleaved (pairs (2i, 2i + 1)); sign -1 rotates back (the backward).
 *
 * Numerics: the inverse frequencies are the CPU's (an_cpu_rope_inv_freq, float64, llama3 scaling
 * included) and travel by value as a kernel argument (no copy, no synchronisation). For each
 * (row, pair): angle = position * inv_freq[i] in float64, cos and sin in float64 (CUDA's sincos,
 * accurate for any angle a position can give), each rounded once to fp32, so they are within half
 * an fp32 ulp (<= 6e-8) of the CPU's float64 values; the rotation itself is fp32 (x1 c - x2 s and
 * x2 c + x1 s, each product and sum rounded on its own: no fused multiply-add) and rounds once to
 * the dtype. Positions come from the caller (packed documents restart them) and are >= 0.
 *
 * Paths, chosen by shape; both follow the numerics above, so they give the same bits (the tests
 * check it through a misaligned copy). Vector: when a pack of 16 / sizeof(dtype) elements (4 f32,
 * 8 bf16/f16) holds whole pairs of one half (NEOX: D/2 a multiple of the pack; interleaved: D a
 * multiple of it) and x, out are 16-byte aligned, a thread takes one pack column of a row for all
 * H heads: it computes that column's cos and sin once (one float64 sincos per (row, pair) whatever
 * H is) while its first loads are in flight, and moves the heads with 16-byte loads and stores.
 * Scalar, otherwise: a block per row, the row's cos/sin in shared memory, 2- or 4-byte accesses. */
#include "kernels/block_reduce.cuh"  /* an_load_id, an_row_threads */
#include "kernels/rope_rotate.cuh"   /* an_rope_rotate: both paths' rotation */
#include "kernels/vec.cuh"           /* an_pack: 16-byte loads and stores */

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
        float o1, o2;
        an_rope_rotate(an_load(xr[a]), an_load(xr[b]), cs[i], sn[i], &o1, &o2);
        orow[a] = an_store<T>(o1);
        orow[b] = an_store<T>(o2);
    }
}

const int kVecThreads = 128; /* threads per block of the vector path: several rows of pack columns */
const int kHeadChunk = 4;    /* heads loaded together by a vector-path thread */

/* Thread (row r, pack column j): pairs j P .. j P + P - 1 of every head of row r, with P = the
 * pack width (NEOX: the pack at element j P and its partner D/2 later) or half of it
 * (interleaved: the pack at element 2 j P, P adjacent pairs). out may be x. */
template <typename T, bool kInterleaved>
__global__ void rope_vec_kernel(const T *x, const void *positions, bool pos64, int64_t rows, int H, int D, int cols,
                                InvFreq inv, float sign, T *out) {
    const int V = an_vec_width<T>::value, P = kInterleaved ? V / 2 : V;
    int per_block = blockDim.x / cols, local = threadIdx.x / cols, j = threadIdx.x - local * cols;
    int64_t r = (int64_t)blockIdx.x * per_block + local;
    if (local >= per_block || r >= rows) return;
    const T *xr = x + r * H * D; /* (H, D) */
    T *orow = out + r * H * D;   /* (H, D) */
    int a = kInterleaved ? 2 * j * P : j * P, b = a + D / 2; /* b: NEOX only */
    an_pack<T> lo[kHeadChunk], hi[kHeadChunk];
#pragma unroll
    for (int u = 0; u < kHeadChunk; u++)
        if (u < H) {
            lo[u] = an_pack_load(xr + u * D + a);
            if (!kInterleaved) hi[u] = an_pack_load(xr + u * D + b);
        }
    /* the loads are in flight while the float64 sincos run */
    double pos = (double)an_load_id(positions, pos64, r);
    float c[P], s[P];
#pragma unroll
    for (int k = 0; k < P; k++) {
        double sd, cd;
        sincos(pos * inv.v[j * P + k], &sd, &cd);
        c[k] = (float)cd;
        s[k] = sign * (float)sd;
    }
    for (int h0 = 0; h0 < H; h0 += kHeadChunk) {
        if (h0 > 0)
#pragma unroll
            for (int u = 0; u < kHeadChunk; u++)
                if (h0 + u < H) {
                    lo[u] = an_pack_load(xr + (h0 + u) * D + a);
                    if (!kInterleaved) hi[u] = an_pack_load(xr + (h0 + u) * D + b);
                }
#pragma unroll
        for (int u = 0; u < kHeadChunk; u++) {
            if (h0 + u >= H) continue;
            an_pack<T> ol, oh;
            if (kInterleaved) {
#pragma unroll
                for (int k = 0; k < P; k++) {
                    float o1, o2;
                    an_rope_rotate(an_load(lo[u].v[2 * k]), an_load(lo[u].v[2 * k + 1]), c[k], s[k], &o1, &o2);
                    ol.v[2 * k] = an_store<T>(o1);
                    ol.v[2 * k + 1] = an_store<T>(o2);
                }
            } else {
#pragma unroll
                for (int k = 0; k < P; k++) {
                    float o1, o2;
                    an_rope_rotate(an_load(lo[u].v[k]), an_load(hi[u].v[k]), c[k], s[k], &o1, &o2);
                    ol.v[k] = an_store<T>(o1);
                    oh.v[k] = an_store<T>(o2);
                }
                an_pack_store(orow + (h0 + u) * D + b, oh);
            }
            an_pack_store(orow + (h0 + u) * D + a, ol);
        }
    }
}

/* table (rows, D/2) of (cos, sin) at angle positions[r] * inv[i]: the values the kernels above
 * rotate with at sign +1 (float64 sincos, each rounded once to fp32). */
__global__ void rope_table_kernel(const void *positions, bool pos64, int64_t rows, int half, InvFreq inv,
                                  float2 *table) {
    int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= rows * half) return;
    int64_t r = e / half;
    int i = (int)(e - r * half);
    double sd, cd;
    sincos((double)an_load_id(positions, pos64, r) * inv.v[i], &sd, &cd);
    table[e] = make_float2((float)cd, (float)sd);
}

} // namespace

extern "C" an_status an_cuda_rope_table(an_ctx *ctx, const void *positions, an_dtype pos_dtype, int64_t rows,
                                        int64_t D, const double *inv_freq, float *table) {
    AN_CUDA_STATE(ctx, s);
    AN_CHECK(ctx, pos_dtype == AN_I32 || pos_dtype == AN_I64, AN_ERR_INPUT,
             "rope_table: positions must be i32 or i64, got %s", an_dtype_name(pos_dtype));
    AN_CHECK(ctx, D >= 2 && D % 2 == 0 && D <= AN_CUDA_ROPE_MAX_D && rows >= 0 && rows <= INT32_MAX, AN_ERR_INPUT,
             "rope_table: %lld rows at head dim %lld (even, at most %d)", (long long)rows, (long long)D,
             AN_CUDA_ROPE_MAX_D);
    if (rows == 0) return AN_OK;
    InvFreq inv = {};
    for (int64_t i = 0; i < D / 2; i++) inv.v[i] = inv_freq[i];
    int64_t n = rows * (D / 2);
    rope_table_kernel<<<(unsigned)((n + 255) / 256), 256, 0, s->stream>>>(positions, pos_dtype == AN_I64, rows,
                                                                          (int)(D / 2), inv, (float2 *)table);
    AN_CUDA_LAUNCH_CHECK(ctx, "rope_table_kernel");
    return AN_OK;
}

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
    bool aligned = an_aligned16(x) && an_aligned16(out) && H <= INT32_MAX / D;
    int threads = an_row_threads(H * (D / 2), 256);
    AN_CUDA_DISPATCH_FLOAT(ctx, dtype, "rope", {
        const int V = an_vec_width<T>::value;
        if (aligned && (interleaved ? D % V == 0 : (D / 2) % V == 0)) {
            int cols = (int)(interleaved ? D / V : D / 2 / V);
            int per_block = cols >= kVecThreads ? 1 : kVecThreads / cols;
            unsigned blocks = (unsigned)((rows + per_block - 1) / per_block);
            bool pos64 = pos_dtype == AN_I64;
            if (interleaved)
                rope_vec_kernel<T, true><<<blocks, per_block * cols, 0, s->stream>>>(
                    (const T *)x, positions, pos64, rows, (int)H, (int)D, cols, inv, (float)sign, (T *)out);
            else
                rope_vec_kernel<T, false><<<blocks, per_block * cols, 0, s->stream>>>(
                    (const T *)x, positions, pos64, rows, (int)H, (int)D, cols, inv, (float)sign, (T *)out);
            AN_CUDA_LAUNCH_CHECK(ctx, "rope_vec_kernel");
            return AN_OK;
        }
        rope_kernel<T><<<(unsigned)rows, threads, 0, s->stream>>>((const T *)x, positions, pos_dtype == AN_I64, H, D,
                                                                 inv, interleaved != 0, (float)sign, (T *)out);
        AN_CUDA_LAUNCH_CHECK(ctx, "rope_kernel");
    });
    return AN_OK;
}
