/* column_sums.cu — the bias gradients of projections that read the same rows, in one pass
 * (an_cuda_column_sums): out_i (w_i) = the column sums of y_i (rows, w_i) for up to
 * AN_CUDA_COLUMN_SUMS_MAX tensors, a linear's dY alone or q's, k's and v's together.
 *
 * Why not cuBLASLt's bias-gradient epilogue (BGRADB, an_cuda_gemm_bias_grad): it runs its column
 * sums as a small kernel of its own after each dW GEMM. In a full fine-tune of the 1.5B model with
 * the update in backward, whose AdamW blocks fill every multiprocessor the backward leaves, those
 * kernels took 16-107 us each (58 on average, three a layer: 4.9 ms a step) against ~9 alone
 * (docs/performance.md). This pass reads all three of a layer's gradients once, with a grid wide
 * enough to take its share of the machine.
 *
 * Shape of the work: a thread sums one 16-byte pack of columns (8 bf16/f16 or 4 f32) over the rows
 * of its split, kRowLanes rows apart, kUnroll loads in flight; a block is kPacksWide packs x
 * kRowLanes row lanes; blockIdx.x numbers the (tensor, column block) pairs, blockIdx.y the split
 * of kSplitRows rows. Each block writes its fp32 column sums to partial (splits, total columns:
 * the tensors side by side), and finish_kernel adds the splits in order and rounds once.
 *
 * Numerics: fp32 sums. A thread adds its rows in row order, the row lanes are added as a fixed
 * tree, the splits in split order; the split count depends on rows alone, so the same bits come on
 * every run and device, whichever tensors share the launch. Not cuBLASLt's bits (its order is its
 * own); both are fp32 sums rounded once. */
#include "kernels/cuda_common.cuh" /* AN_CUDA_STATE, an_cuda_scratch, an_load, an_store */
#include "kernels/vec.cuh"         /* an_pack, an_aligned16: 16-byte loads */

#include <stdint.h>

namespace column_sums {

const int kPacksWide = 32; /* packs of columns a block */
const int kRowLanes = 8;   /* rows a block reads at once */
const int kThreads = kPacksWide * kRowLanes;
const int kUnroll = 4;           /* a thread's loads in flight */
const int64_t kSplitRows = 128;  /* rows a split: 16 loads a thread */
const int kMax = AN_CUDA_COLUMN_SUMS_MAX;

struct Tensors {
    const void *y[kMax]; /* (rows, width[i]) */
    void *out[kMax];     /* (width[i]) */
    int64_t width[kMax];
    int64_t col0[kMax]; /* first column of tensor i in partial */
    int block0[kMax + 1]; /* first blockIdx.x of tensor i; block0[count] = gridDim.x */
    int count;
};

template <typename T>
__global__ void __launch_bounds__(kThreads) partial_kernel(Tensors t, int64_t rows, int64_t total, float *partial) {
    const int P = an_vec_width<T>::value;
    __shared__ float sm[kRowLanes][kPacksWide * P];
    int i = 0;
    while (i + 1 < t.count && (int)blockIdx.x >= t.block0[i + 1]) i++;
    int lane = threadIdx.x % kPacksWide, ty = threadIdx.x / kPacksWide;
    int64_t col = ((int64_t)(blockIdx.x - t.block0[i]) * kPacksWide + lane) * P; /* the pack's first column */
    int64_t width = t.width[i];
    const T *y = (const T *)t.y[i];
    int64_t r0 = (int64_t)blockIdx.y * kSplitRows, r1 = r0 + kSplitRows < rows ? r0 + kSplitRows : rows;
    float acc[P];
#pragma unroll
    for (int k = 0; k < P; k++) acc[k] = 0.0f;
    if (col < width) {
        for (int64_t r = r0 + ty; r < r1; r += kRowLanes * kUnroll) {
            an_pack<T> v[kUnroll];
#pragma unroll
            for (int u = 0; u < kUnroll; u++)
                if (r + u * kRowLanes < r1) v[u] = an_pack_load(y + (r + u * kRowLanes) * width + col);
#pragma unroll
            for (int u = 0; u < kUnroll; u++) /* in row order */
                if (r + u * kRowLanes < r1) {
#pragma unroll
                    for (int k = 0; k < P; k++) acc[k] += an_load(v[u].v[k]);
                }
        }
    }
#pragma unroll
    for (int k = 0; k < P; k++) sm[ty][lane * P + k] = acc[k];
    __syncthreads();
#pragma unroll
    for (int half = kRowLanes / 2; half > 0; half /= 2) {
        if (ty < half)
#pragma unroll
            for (int k = 0; k < P; k++) sm[ty][lane * P + k] += sm[ty + half][lane * P + k];
        __syncthreads();
    }
    /* the block's kPacksWide * P sums, one a thread while they last: coalesced */
    int64_t first = (int64_t)(blockIdx.x - t.block0[i]) * kPacksWide * P;
    float *dst = partial + (int64_t)blockIdx.y * total + t.col0[i];
    for (int c = threadIdx.x; c < kPacksWide * P; c += kThreads)
        if (first + c < width) dst[first + c] = sm[0][c];
}

/* out_i[c] = the sum over splits of partial[s][col0_i + c], in split order, rounded once. */
template <typename T> __global__ void finish_kernel(Tensors t, const float *partial, int64_t splits, int64_t total) {
    for (int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; c < total; c += (int64_t)gridDim.x * blockDim.x) {
        int i = 0;
        while (i + 1 < t.count && c >= t.col0[i + 1]) i++;
        float acc = 0.0f;
        for (int64_t s = 0; s < splits; s++) acc += partial[s * total + c];
        ((T *)t.out[i])[c - t.col0[i]] = an_store<T>(acc);
    }
}

template <typename T> an_status run(an_ctx *ctx, an_cuda_state *s, int64_t rows, Tensors t) {
    const int P = an_vec_width<T>::value;
    int64_t total = 0, blocks = 0;
    for (int i = 0; i < t.count; i++) {
        t.col0[i] = total, t.block0[i] = (int)blocks;
        total += t.width[i];
        blocks += (t.width[i] / P + kPacksWide - 1) / kPacksWide;
    }
    t.block0[t.count] = (int)blocks;
    int64_t splits = (rows + kSplitRows - 1) / kSplitRows;
    void *scratch = nullptr;
    AN_TRY(an_cuda_scratch(ctx, (size_t)(splits * total) * sizeof(float), &scratch));
    float *partial = (float *)scratch;
    partial_kernel<T><<<dim3((unsigned)blocks, (unsigned)splits), kThreads, 0, s->stream>>>(t, rows, total, partial);
    AN_CUDA_LAUNCH_CHECK(ctx, "column_sums::partial_kernel");
    finish_kernel<T><<<an_cuda_blocks(s, total, 256), 256, 0, s->stream>>>(t, partial, splits, total);
    AN_CUDA_LAUNCH_CHECK(ctx, "column_sums::finish_kernel");
    return AN_OK;
}

} // namespace column_sums

extern "C" int an_cuda_column_sums_rule(an_ctx *ctx, an_dtype dtype, int64_t rows, int count, const void *const *y,
                                        const int64_t *width, void *const *out) {
    if (!ctx->cuda || ctx->cuda->column_sums_off) return 0;
    if (dtype != AN_BF16 && dtype != AN_F16 && dtype != AN_F32) return 0;
    int64_t pack = 16 / an_dtype_size(dtype);
    if (count < 1 || count > AN_CUDA_COLUMN_SUMS_MAX || rows < 1 || (rows + column_sums::kSplitRows - 1) /
                                                                          column_sums::kSplitRows > 65535)
        return 0;
    int64_t blocks = 0;
    for (int i = 0; i < count; i++) {
        if (!y[i] || !out[i] || !an_aligned16(y[i]) || width[i] < pack || width[i] % pack) return 0;
        blocks += (width[i] / pack + column_sums::kPacksWide - 1) / column_sums::kPacksWide;
    }
    return blocks <= INT32_MAX;
}

extern "C" an_status an_cuda_column_sums(an_ctx *ctx, an_dtype dtype, int64_t rows, int count, const void *const *y,
                                         const int64_t *width, void *const *out) {
    AN_CUDA_STATE(ctx, s);
    AN_CHECK(ctx, an_cuda_column_sums_rule(ctx, dtype, rows, count, y, width, out), AN_ERR_INPUT,
             "column_sums: %d tensors of %lld rows in %s: needs bf16, f16 or f32, 1 to %d tensors, widths multiples "
             "of 16 bytes' elements, 16-byte aligned inputs, fewer than %lld rows, and not turned off",
             count, (long long)rows, an_dtype_name(dtype), AN_CUDA_COLUMN_SUMS_MAX,
             (long long)(65535 * column_sums::kSplitRows));
    column_sums::Tensors t = {};
    t.count = count;
    for (int i = 0; i < count; i++) t.y[i] = y[i], t.out[i] = out[i], t.width[i] = width[i];
    AN_CUDA_DISPATCH_FLOAT(ctx, dtype, "column_sums", { return column_sums::run<T>(ctx, s, rows, t); });
    return AN_OK;
}
