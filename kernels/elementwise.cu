/* elementwise.cu — casts, add/sub/mul with a broadcast b and their gradients, scale, silu/swiglu
 * and their gradients, the sum of every element, and the scalar-gradient fill.
 *
 * Numerics: elements of f32, bf16 or f16 are widened to fp32, computed in fp32 and rounded once to
 * the output dtype (round to nearest even). Reductions (grad_b over the broadcast rows, sum)
 * accumulate in fp32 in a fixed order with no atomics, so a launch is bit-reproducible on one
 * device. Outputs are written with = (add_into excepted: dst +=). Loads and stores are 16-byte
 * vectors when every pointer allows it, scalar otherwise. */
#include "kernels/cuda_common.cuh"
#include "kernels/silu.cuh" /* an_sigmoid, an_swiglu_grad */

#include <stdint.h>

namespace {

const int kThreads = 256;

template <typename T, int N> struct alignas(sizeof(T) * N) Pack {
    T v[N];
};

template <int N, typename T> __device__ __forceinline__ void load(const T *p, float (&out)[N]) {
    Pack<T, N> pk = *reinterpret_cast<const Pack<T, N> *>(p);
#pragma unroll
    for (int k = 0; k < N; k++) out[k] = an_load(pk.v[k]);
}

template <int N, typename T> __device__ __forceinline__ void store(T *p, const float (&in)[N]) {
    Pack<T, N> pk;
#pragma unroll
    for (int k = 0; k < N; k++) pk.v[k] = an_store<T>(in[k]);
    *reinterpret_cast<Pack<T, N> *>(p) = pk;
}

/* Each thread takes packs of N elements (grid-stride); the last, partial pack goes one by one. */
template <int N, typename Op> __global__ void map_kernel(int64_t n, Op op) {
    int64_t packs = (n + N - 1) / N;
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; c < packs; c += stride) {
        int64_t i = c * N;
        if (i + N <= n) {
            op.template apply<N>(i);
        } else {
            for (; i < n; i++) op.template apply<1>(i);
        }
    }
}

bool aligned(const void *p, size_t bytes) { return p == nullptr || (uintptr_t)p % bytes == 0; }

/* Runs op over n elements: N-wide packs when `vec`, else one element at a time. */
template <int N, typename Op> an_status launch_map(an_ctx *ctx, int64_t n, bool vec, const Op &op, const char *what) {
    AN_CUDA_STATE(ctx, s);
    if (n <= 0) return AN_OK;
    if (vec && N > 1)
        map_kernel<N, Op><<<an_cuda_blocks(s, (n + N - 1) / N, kThreads), kThreads, 0, s->stream>>>(n, op);
    else
        map_kernel<1, Op><<<an_cuda_blocks(s, n, kThreads), kThreads, 0, s->stream>>>(n, op);
    AN_CUDA_LAUNCH_CHECK(ctx, what);
    return AN_OK;
}

template <typename S, typename D> struct CastOp {
    const S *src;
    D *dst;
    template <int N> __device__ void apply(int64_t i) const {
        float v[N];
        load<N>(src + i, v);
        store<N>(dst + i, v);
    }
};

template <typename T> struct AddIntoOp {
    T *dst;
    const T *src;
    template <int N> __device__ void apply(int64_t i) const {
        float d[N], v[N];
        load<N>(dst + i, d);
        load<N>(src + i, v);
#pragma unroll
        for (int k = 0; k < N; k++) d[k] += v[k];
        store<N>(dst + i, d);
    }
};

/* out = a (op) b[i % nb]; out may be a. b_vec: b's pack at i % nb can be loaded whole (nb is a
 * multiple of N and b is aligned). */
template <typename T> struct BinaryOp {
    const T *a, *b;
    T *out;
    int64_t n, nb;
    int kind;
    bool b_vec;
    template <int N> __device__ void apply(int64_t i) const {
        float x[N], y[N];
        load<N>(a + i, x);
        int64_t j = nb == n ? i : i % nb;
        if (N > 1 && b_vec) {
            load<N>(b + j, y);
        } else {
#pragma unroll
            for (int k = 0; k < N; k++) {
                y[k] = an_load(b[j]);
                if (++j == nb) j = 0;
            }
        }
#pragma unroll
        for (int k = 0; k < N; k++)
            x[k] = kind == AN_BINARY_ADD ? x[k] + y[k] : kind == AN_BINARY_SUB ? x[k] - y[k] : x[k] * y[k];
        store<N>(out + i, x);
    }
};

/* dst = round_T(round_T(src) * scale[0]) for fp32 src: an_cuda_cast to T and then a multiply by the
 * device scalar, in one pass (the same two roundings). */
template <typename T> struct CastMulOp {
    const float *src;
    const T *scale;
    T *dst;
    template <int N> __device__ void apply(int64_t i) const {
        float v[N];
        load<N>(src + i, v);
        const float g = an_load(scale[0]);
#pragma unroll
        for (int k = 0; k < N; k++) v[k] = an_load(an_store<T>(v[k])) * g;
        store<N>(dst + i, v);
    }
};

template <typename T> struct ScaleOp {
    const T *x;
    T *out;
    float s;
    template <int N> __device__ void apply(int64_t i) const {
        float v[N];
        load<N>(x + i, v);
#pragma unroll
        for (int k = 0; k < N; k++) v[k] *= s;
        store<N>(out + i, v);
    }
};

/* out = silu(gate) * up, or silu(gate) when up is null. */
template <typename T> struct SwigluOp {
    const T *gate, *up;
    T *out;
    template <int N> __device__ void apply(int64_t i) const {
        float g[N], u[N];
        load<N>(gate + i, g);
        if (up) load<N>(up + i, u);
#pragma unroll
        for (int k = 0; k < N; k++) {
            float silu = g[k] * an_sigmoid(g[k]);
            g[k] = up ? silu * u[k] : silu;
        }
        store<N>(out + i, g);
    }
};

/* SwigluOp on gate | up rows of width 2 n: element i = r n + j reads gate_up[r 2n + j] and
 * gate_up[r 2n + n + j] (a pack of N never crosses a row: n is a multiple of N when vectorised). */
template <typename T> struct SwigluRowsOp {
    const T *gate_up;
    T *out;
    int64_t n;
    template <int N> __device__ void apply(int64_t i) const {
        const int64_t r = i / n, j = i - r * n;
        const T *g_row = gate_up + 2 * r * n + j;
        float g[N], u[N];
        load<N>(g_row, g);
        load<N>(g_row + n, u);
#pragma unroll
        for (int k = 0; k < N; k++) g[k] = g[k] * an_sigmoid(g[k]) * u[k];
        store<N>(out + i, g);
    }
};

template <typename T> struct SwigluBackwardOp {
    const T *gate, *up, *grad_out;
    T *grad_gate, *grad_up; /* either may be null; grad_up is ignored without up */
    template <int N> __device__ void apply(int64_t i) const {
        float g[N], u[N], go[N], dg[N], du[N];
        load<N>(gate + i, g);
        load<N>(grad_out + i, go);
        if (up) load<N>(up + i, u);
#pragma unroll
        for (int k = 0; k < N; k++) an_swiglu_grad(go[k], g[k], up ? u[k] : 1.0f, &dg[k], &du[k]);
        if (grad_gate) store<N>(grad_gate + i, dg);
        if (up && grad_up) store<N>(grad_up + i, du);
    }
};

template <typename T> struct FillOp {
    const T *x; /* one element */
    T *out;
    float scale;
    template <int N> __device__ void apply(int64_t i) const {
        float v = an_load(x[0]) * scale, w[N];
#pragma unroll
        for (int k = 0; k < N; k++) w[k] = v;
        store<N>(out + i, w);
    }
};

/* ---- grad_b: column sums of (rows, nb) ---- */

/* Block of kThreads = w columns x (kThreads / w) rows. Block (x, y) sums columns
 * [x*w, x*w + w) over rows [y*rows_per_split, ...) in a fixed order; with `final` it writes
 * sign * sum to out (one split), else the fp32 partial to partial[y * nb + col]. */
template <typename T, bool kMul, bool kFinal>
__global__ void column_sum_kernel(const T *g, const T *a, int64_t rows, int64_t nb, int w, int64_t rows_per_split,
                                  float sign, float *partial, T *out) {
    __shared__ float sm[kThreads];
    int tx = threadIdx.x % w, ty = threadIdx.x / w, h = kThreads / w;
    int64_t col = (int64_t)blockIdx.x * w + tx;
    int64_t r0 = (int64_t)blockIdx.y * rows_per_split;
    int64_t r1 = r0 + rows_per_split < rows ? r0 + rows_per_split : rows;
    float acc = 0.0f;
    if (col < nb) {
        for (int64_t r = r0 + ty; r < r1; r += h) {
            float v = an_load(g[r * nb + col]);
            if (kMul) v *= an_load(a[r * nb + col]);
            acc += v;
        }
    }
    sm[threadIdx.x] = acc;
    __syncthreads();
    for (int half = h / 2; half > 0; half /= 2) { /* h is a power of two */
        if (ty < half) sm[threadIdx.x] += sm[threadIdx.x + half * w];
        __syncthreads();
    }
    if (ty == 0 && col < nb) {
        if (kFinal) out[col] = an_store<T>(sign * sm[tx]);
        else partial[(int64_t)blockIdx.y * nb + col] = sm[tx];
    }
}

/* out[col] = sign * sum over splits of partial[s * nb + col], in split order. */
template <typename T> __global__ void column_sum_finish_kernel(const float *partial, int64_t splits, int64_t nb,
                                                               float sign, T *out) {
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t col = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; col < nb; col += stride) {
        float acc = 0.0f;
        for (int64_t sp = 0; sp < splits; sp++) acc += partial[sp * nb + col];
        out[col] = an_store<T>(sign * acc);
    }
}

template <typename T, bool kMul>
an_status column_sum(an_ctx *ctx, const T *g, const T *a, int64_t rows, int64_t nb, float sign, T *out) {
    AN_CUDA_STATE(ctx, s);
    if (nb <= 0) return AN_OK;
    int w = 1;
    while (w < 32 && w < nb) w *= 2;
    int h = kThreads / w;
    int64_t col_blocks = (nb + w - 1) / w;
    AN_CHECK(ctx, col_blocks <= INT32_MAX, AN_ERR_INPUT, "column sum over %lld columns", (long long)nb);
    /* Split the rows when the columns alone would leave the GPU idle; each split keeps at least
     * 4 rows per thread. The split count depends only on the shape and the device. */
    int64_t target_blocks = 4LL * s->sm_count;
    int64_t splits = col_blocks >= target_blocks ? 1 : (target_blocks + col_blocks - 1) / col_blocks;
    int64_t max_splits = rows / (4LL * h);
    if (splits > max_splits) splits = max_splits;
    if (splits > 1024) splits = 1024;
    if (splits < 1) splits = 1;
    int64_t rows_per_split = (rows + splits - 1) / splits;
    if (rows_per_split < 1) rows_per_split = 1;
    splits = rows > 0 ? (rows + rows_per_split - 1) / rows_per_split : 1;
    dim3 grid((unsigned)col_blocks, (unsigned)splits);
    if (splits == 1) {
        column_sum_kernel<T, kMul, true><<<grid, kThreads, 0, s->stream>>>(g, a, rows, nb, w, rows_per_split, sign,
                                                                           nullptr, out);
        AN_CUDA_LAUNCH_CHECK(ctx, "column_sum_kernel");
        return AN_OK;
    }
    void *scratch = nullptr;
    AN_TRY(an_cuda_scratch(ctx, (size_t)splits * (size_t)nb * sizeof(float), &scratch));
    float *partial = (float *)scratch;
    column_sum_kernel<T, kMul, false><<<grid, kThreads, 0, s->stream>>>(g, a, rows, nb, w, rows_per_split, sign,
                                                                        partial, nullptr);
    AN_CUDA_LAUNCH_CHECK(ctx, "column_sum_kernel");
    column_sum_finish_kernel<T><<<an_cuda_blocks(s, nb, kThreads), kThreads, 0, s->stream>>>(partial, splits, nb,
                                                                                            sign, out);
    AN_CUDA_LAUNCH_CHECK(ctx, "column_sum_finish_kernel");
    return AN_OK;
}

/* ---- sum ---- */

const int kSumMaxBlocks = 1024; /* fixed, so the summation order depends only on n */

/* Sum of the block's values in a fixed order (warp shuffles, then the warps' sums); thread 0 gets it. */
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float warp_sums[32];
#pragma unroll
    for (int off = 16; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (int)(blockDim.x / 32) ? warp_sums[lane] : 0.0f;
#pragma unroll
        for (int off = 16; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
    }
    return v;
}

/* partial[block] = sum of this block's grid-stride packs of x. */
template <typename T, int N> __global__ void sum_partial_kernel(const T *x, int64_t n, float *partial) {
    float acc = 0.0f;
    int64_t packs = (n + N - 1) / N;
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; c < packs; c += stride) {
        int64_t i = c * N;
        if (i + N <= n) {
            float v[N];
            load<N>(x + i, v);
#pragma unroll
            for (int k = 0; k < N; k++) acc += v[k];
        } else {
            for (; i < n; i++) acc += an_load(x[i]);
        }
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

/* out[0] = scale * sum(partial[0..count)); one block of kSumMaxBlocks threads. */
template <typename T> __global__ void sum_finish_kernel(const float *partial, int count, float scale, T *out) {
    float v = (int)threadIdx.x < count ? partial[threadIdx.x] : 0.0f;
    v = block_sum(v);
    if (threadIdx.x == 0) out[0] = an_store<T>(v * scale);
}

template <typename T> an_status sum(an_ctx *ctx, const T *x, int64_t n, float scale, T *out) {
    AN_CUDA_STATE(ctx, s);
    const int N = 16 / sizeof(T);
    bool vec = aligned(x, 16);
    int64_t items = vec ? (n + N - 1) / N : n;
    int64_t per_block = (int64_t)kThreads * 4; /* at least 4 items per thread before adding blocks */
    int64_t blocks64 = (items + per_block - 1) / per_block;
    int blocks = (int)(blocks64 > kSumMaxBlocks ? kSumMaxBlocks : blocks64);
    void *scratch = nullptr;
    AN_TRY(an_cuda_scratch(ctx, kSumMaxBlocks * sizeof(float), &scratch));
    float *partial = (float *)scratch;
    if (blocks > 0) {
        if (vec) sum_partial_kernel<T, N><<<blocks, kThreads, 0, s->stream>>>(x, n, partial);
        else sum_partial_kernel<T, 1><<<blocks, kThreads, 0, s->stream>>>(x, n, partial);
        AN_CUDA_LAUNCH_CHECK(ctx, "sum_partial_kernel");
    }
    sum_finish_kernel<T><<<1, kSumMaxBlocks, 0, s->stream>>>(partial, blocks, scale, out);
    AN_CUDA_LAUNCH_CHECK(ctx, "sum_finish_kernel");
    return AN_OK;
}

template <typename T> constexpr int vec_of() { return 16 / sizeof(T); }

an_status check_count(an_ctx *ctx, const char *what, int64_t n) {
    AN_CHECK(ctx, n >= 0, AN_ERR_INTERNAL, "%s: negative element count %lld", what, (long long)n);
    return AN_OK;
}

an_status check_broadcast(an_ctx *ctx, const char *what, int64_t n, int64_t nb) {
    AN_CHECK(ctx, n >= 0 && nb >= 0 && (nb == 0 ? n == 0 : n % nb == 0), AN_ERR_INTERNAL,
             "%s: %lld elements do not repeat a broadcast operand of %lld", what, (long long)n, (long long)nb);
    return AN_OK;
}

template <typename S> an_status cast_from(an_ctx *ctx, const S *src, void *dst, an_dtype dst_dtype, int64_t n) {
    AN_CUDA_DISPATCH_FLOAT(ctx, dst_dtype, "cast", {
        const int N = 16 / (sizeof(S) > sizeof(T) ? sizeof(S) : sizeof(T));
        bool vec = aligned(src, N * sizeof(S)) && aligned(dst, N * sizeof(T));
        return launch_map<N>(ctx, n, vec, CastOp<S, T>{src, (T *)dst}, "cast");
    });
    return AN_OK;
}

} // namespace

extern "C" {

an_status an_cuda_cast(an_ctx *ctx, const void *src, an_dtype src_dtype, void *dst, an_dtype dst_dtype, size_t n) {
    if (n == 0) return AN_OK;
    AN_CUDA_STATE(ctx, s);
    if (src_dtype == dst_dtype) {
        AN_CUDA_CHECK(ctx, cudaMemcpyAsync(dst, src, n * an_dtype_size(src_dtype), cudaMemcpyDeviceToDevice, s->stream));
        return AN_OK;
    }
    AN_CHECK(ctx, an_dtype_is_float(src_dtype) && an_dtype_is_float(dst_dtype), AN_ERR_INPUT,
             "cast: no CUDA kernel from %s to %s", an_dtype_name(src_dtype), an_dtype_name(dst_dtype));
    AN_CUDA_DISPATCH_FLOAT(ctx, src_dtype, "cast", return cast_from<T>(ctx, (const T *)src, dst, dst_dtype, (int64_t)n));
    return AN_OK;
}

an_status an_cuda_cast_mul(an_ctx *ctx, const float *src, void *dst, an_dtype dst_dtype, int64_t n,
                           const void *scale) {
    AN_TRY(check_count(ctx, "cast_mul", n));
    AN_CUDA_DISPATCH_FLOAT(ctx, dst_dtype, "cast_mul", {
        const int N = 16 / sizeof(float);
        bool vec = aligned(src, 16) && aligned(dst, N * sizeof(T));
        return launch_map<N>(ctx, n, vec, CastMulOp<T>{src, (const T *)scale, (T *)dst}, "cast_mul");
    });
    return AN_OK;
}

an_status an_cuda_add_into(an_ctx *ctx, void *dst, const void *src, an_dtype dtype, int64_t n) {
    AN_TRY(check_count(ctx, "add_into", n));
    AN_CUDA_DISPATCH_FLOAT(ctx, dtype, "add_into", {
        const int N = vec_of<T>();
        bool vec = aligned(dst, 16) && aligned(src, 16);
        return launch_map<N>(ctx, n, vec, AddIntoOp<T>{(T *)dst, (const T *)src}, "add_into");
    });
    return AN_OK;
}

an_status an_cuda_binary(an_ctx *ctx, an_binary_kind kind, an_dtype dtype, const void *a, int64_t n, const void *b,
                         int64_t nb, void *out) {
    AN_TRY(check_broadcast(ctx, "binary", n, nb));
    AN_CUDA_DISPATCH_FLOAT(ctx, dtype, "binary", {
        const int N = vec_of<T>();
        bool vec = aligned(a, 16) && aligned(out, 16);
        bool b_vec = aligned(b, 16) && nb % N == 0;
        BinaryOp<T> op{(const T *)a, (const T *)b, (T *)out, n, nb, (int)kind, b_vec};
        return launch_map<N>(ctx, n, vec, op, "binary");
    });
    return AN_OK;
}

an_status an_cuda_binary_backward(an_ctx *ctx, an_binary_kind kind, an_dtype dtype, const void *a, int64_t n,
                                  const void *b, int64_t nb, const void *grad_out, void *grad_a, void *grad_b) {
    AN_TRY(check_broadcast(ctx, "binary_backward", n, nb));
    AN_CUDA_STATE(ctx, s);
    if (grad_a) {
        /* d/da: grad_out, or grad_out * b for mul (b is only read for mul). */
        if (kind == AN_BINARY_MUL) AN_TRY(an_cuda_binary(ctx, AN_BINARY_MUL, dtype, grad_out, n, b, nb, grad_a));
        else if (n > 0)
            AN_CUDA_CHECK(ctx, cudaMemcpyAsync(grad_a, grad_out, (size_t)n * an_dtype_size(dtype),
                                               cudaMemcpyDeviceToDevice, s->stream));
    }
    if (grad_b) {
        /* d/db: grad_out (add), -grad_out (sub) or grad_out * a (mul), summed over the rows; a is
         * only read for mul. */
        int64_t rows = nb ? n / nb : 0;
        float sign = kind == AN_BINARY_SUB ? -1.0f : 1.0f;
        if (rows == 1) { /* no broadcast: a plain map, the same values as the one-row column sum */
            if (kind == AN_BINARY_MUL) return an_cuda_binary(ctx, AN_BINARY_MUL, dtype, grad_out, n, a, n, grad_b);
            if (kind == AN_BINARY_SUB) return an_cuda_scale(ctx, dtype, grad_out, n, -1.0, grad_b);
            AN_CUDA_CHECK(ctx, cudaMemcpyAsync(grad_b, grad_out, (size_t)n * an_dtype_size(dtype),
                                               cudaMemcpyDeviceToDevice, s->stream));
            return AN_OK;
        }
        AN_CUDA_DISPATCH_FLOAT(ctx, dtype, "binary_backward", {
            if (kind == AN_BINARY_MUL)
                return column_sum<T, true>(ctx, (const T *)grad_out, (const T *)a, rows, nb, sign, (T *)grad_b);
            return column_sum<T, false>(ctx, (const T *)grad_out, nullptr, rows, nb, sign, (T *)grad_b);
        });
    }
    return AN_OK;
}

an_status an_cuda_scale(an_ctx *ctx, an_dtype dtype, const void *x, int64_t n, double s, void *out) {
    AN_TRY(check_count(ctx, "scale", n));
    AN_CUDA_DISPATCH_FLOAT(ctx, dtype, "scale", {
        const int N = vec_of<T>();
        bool vec = aligned(x, 16) && aligned(out, 16);
        return launch_map<N>(ctx, n, vec, ScaleOp<T>{(const T *)x, (T *)out, (float)s}, "scale");
    });
    return AN_OK;
}

an_status an_cuda_swiglu(an_ctx *ctx, an_dtype dtype, const void *gate, const void *up, int64_t n, void *out) {
    AN_TRY(check_count(ctx, "swiglu", n));
    AN_CUDA_DISPATCH_FLOAT(ctx, dtype, "swiglu", {
        const int N = vec_of<T>();
        bool vec = aligned(gate, 16) && aligned(up, 16) && aligned(out, 16);
        return launch_map<N>(ctx, n, vec, SwigluOp<T>{(const T *)gate, (const T *)up, (T *)out}, "swiglu");
    });
    return AN_OK;
}

an_status an_cuda_swiglu_rows(an_ctx *ctx, an_dtype dtype, const void *gate_up, int64_t rows, int64_t n, void *out) {
    AN_TRY(check_count(ctx, "swiglu_rows", rows * n));
    AN_CUDA_DISPATCH_FLOAT(ctx, dtype, "swiglu_rows", {
        const int N = vec_of<T>();
        bool vec = aligned(gate_up, 16) && aligned(out, 16) && n % N == 0;
        return launch_map<N>(ctx, rows * n, vec, SwigluRowsOp<T>{(const T *)gate_up, (T *)out, n}, "swiglu_rows");
    });
    return AN_OK;
}

an_status an_cuda_swiglu_backward(an_ctx *ctx, an_dtype dtype, const void *gate, const void *up, int64_t n,
                                  const void *grad_out, void *grad_gate, void *grad_up) {
    AN_TRY(check_count(ctx, "swiglu_backward", n));
    if (!grad_gate && !(up && grad_up)) return AN_OK;
    AN_CUDA_DISPATCH_FLOAT(ctx, dtype, "swiglu_backward", {
        const int N = vec_of<T>();
        bool vec = aligned(gate, 16) && aligned(up, 16) && aligned(grad_out, 16) && aligned(grad_gate, 16) &&
                   aligned(grad_up, 16);
        SwigluBackwardOp<T> op{(const T *)gate, (const T *)up, (const T *)grad_out, (T *)grad_gate, (T *)grad_up};
        return launch_map<N>(ctx, n, vec, op, "swiglu_backward");
    });
    return AN_OK;
}

an_status an_cuda_sum(an_ctx *ctx, an_dtype dtype, const void *x, int64_t n, double scale, void *out) {
    AN_TRY(check_count(ctx, "sum", n));
    AN_CUDA_DISPATCH_FLOAT(ctx, dtype, "sum", return sum<T>(ctx, (const T *)x, n, (float)scale, (T *)out));
    return AN_OK;
}

an_status an_cuda_fill_from_scalar(an_ctx *ctx, an_dtype dtype, const void *x, double scale, int64_t n, void *out) {
    AN_TRY(check_count(ctx, "fill_from_scalar", n));
    AN_CUDA_DISPATCH_FLOAT(ctx, dtype, "fill_from_scalar", {
        const int N = vec_of<T>();
        return launch_map<N>(ctx, n, aligned(out, 16), FillOp<T>{(const T *)x, (T *)out, (float)scale},
                             "fill_from_scalar");
    });
    return AN_OK;
}

} // extern "C"
