/* attention_cudnn.cu — causal grouped-query attention, forward and backward, through cuDNN's fused
 * flash-attention engine (the backend graph API of cudnn_graph.h, plain C calls), for
 * kernels/attention.cu's unsegmented bf16/f16 shapes (attention_cudnn.cuh says which).
 *
 * Contract (kernels/cuda.h, an_cuda_attention*): q (B, T, Hq, D), k and v (B, T, Hkv, D), out and
 * the gradients in the same layouts, written with =; cuDNN reads and writes them in place as
 * (B, H, T, D) views through strides. lse (B, Hq, T) f32 is cuDNN's softmax "stats", the
 * natural-log logsumexp of each row's scaled, masked scores, so either path's backward can take
 * the other's forward. grad_k and grad_v are summed over each kv head's group of query heads.
 *
 * Graphs. The backend's SDPA_FWD/BWD operations have no causal attribute in cuDNN 9.14, so each
 * pass is written as the graph of primitive nodes that cuDNN's heuristics recognise and run as
 * one fused flash-attention kernel (the graph cudnn-frontend lowers its sdpa nodes to):
 *   forward   S = scale (Q K^T), masked to -inf where key > query (GEN_INDEX row/col, CMP_GE,
 *             BINARY_SELECT); m = rowmax S, E = exp(S - m), l = rowsum E; stats = m + log l;
 *             P = E / l (rounded to the dtype); O = P V.
 *   backward  delta = rowsum(dO * O) (fp32, kept in our workspace); P = exp(scale Q K^T - stats),
 *             masked as above; dV = P^T dO; dS = scale P (dO V^T - delta); dK = dS^T Q; dQ = dS K.
 *             With Hq > Hkv, dV and dK are formed per query head and summed over the group by a
 *             reduction node. cuDNN <= 9.15 also needs an explicit padding mask (seq lengths T,
 *             int32 in our workspace) when T is not a multiple of 128, as the frontend adds
 *             (an_cuda_set_attention_cudnn_padding_mask forces it, to test that graph on newer
 *             cuDNN).
 * Math is fp32 (matmul compute type, softmax, every intermediate); P and dS are rounded to the
 * dtype before their matmuls, as in any flash-attention kernel.
 *
 * Determinism: with dQ written straight from its matmul, cuDNN runs its deterministic "dP
 * workspace" backward (the frontend's set_deterministic_algorithm on Hopper); with an fp32 dQ
 * accumulator in the graph it accumulates dQ with atomics (faster, not bit-reproducible). The
 * state's switch (an_cuda_set_attention_cudnn_deterministic) picks; deterministic by default, as
 * our own kernels are.
 *
 * Plans: one execution plan per (pass, dtype, B, T, Hq, Hkv, D, determinism, padding mask, engine), built on
 * first use (heuristics mode A, the first engine config that finalises, or the engine-th after it:
 * an_cuda_set_attention_cudnn_engine, to measure the others) and cached in the state
 * (kPlanSlots, replaced round-robin) with every descriptor it was built from. The scale and -inf
 * travel by value at execution, so they are not in the key. Workspace (the plan's plus ours) comes
 * from the caching allocator per call and goes back after the launch (stream order makes that
 * safe). The cuDNN handle is created on first use, bound to the state's stream.
 *
 * Errors: every cuDNN call is checked; a failure records file:line, the call, cudnnGetErrorString
 * and cuDNN's last error message in ctx, and the launcher returns AN_ERR_INTERNAL. */
#include "kernels/attention_cudnn.cuh"

#include <cudnn_graph.h>

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

namespace {

const int kPlanSlots = 16;
const int kMaxDescs = 128; /* descriptors of one graph (the backward with every option uses ~100) */
const int kMaxOps = 48;
const size_t kAlign = 256; /* of each part of the workspace */

/* Unique ids of the tensors the caller (or our workspace) provides; virtual ones count from 100. */
enum : int64_t {
    UID_Q = 1, UID_K, UID_V, UID_O, UID_STATS, UID_DO, UID_DQ, UID_DK, UID_DV,
    UID_SCALE, UID_NEG_INF, UID_ONE, UID_DELTA, UID_DQ_ACCUM, UID_SEQ_Q, UID_SEQ_KV,
    UID_FIRST_VIRTUAL = 100
};

struct Plan {
    bool used;
    /* key */
    bool backward, deterministic;
    an_dtype dtype;
    int64_t B, T, Hq, Hkv, D;
    int engine; /* which of the heuristics' engine configs that finalise: 0, the first (see the setter) */
    /* what the key built */
    bool padding_mask;          /* the explicit padding mask (cuDNN <= 9.15 at T % 128 != 0, or forced) */
    cudnnBackendDescriptor_t plan;
    cudnnBackendDescriptor_t descs[kMaxDescs]; /* everything the plan was built from */
    int n_descs;
    int64_t plan_workspace;     /* bytes the engine asks for */
};

} // namespace

struct an_cudnn_attention {
    cudnnHandle_t handle;
    Plan plans[kPlanSlots];
    int next;      /* slot to overwrite when all are used */
    int engine[2]; /* forward's and backward's engine index (an_cuda_set_attention_cudnn_engine) */
};

namespace {

/* cuDNN's last error message (more specific than the status), without a trailing newline. */
void last_error(char *buf, size_t size) {
    buf[0] = '\0';
    cudnnGetLastErrorString(buf, size);
    size_t n = strlen(buf);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r')) buf[--n] = '\0';
}

an_status cudnn_error(an_ctx *ctx, int line, const char *call, const char *what, cudnnStatus_t st) {
    char msg[512];
    last_error(msg, sizeof msg);
    return an_error_set(ctx, AN_ERR_INTERNAL, __FILE__, line, "cuDNN attention (%s): %s failed: %s%s%s", what, call,
                        cudnnGetErrorString(st), msg[0] ? ": " : "", msg);
}

#define CUDNN_CHECK(ctx, call, what)                                                                   \
    do {                                                                                               \
        cudnnStatus_t cudnn_st_ = (call);                                                              \
        if (cudnn_st_ != CUDNN_STATUS_SUCCESS) return cudnn_error((ctx), __LINE__, #call, (what), cudnn_st_); \
    } while (0)

/* A graph under construction. The first failure is kept in st and every later step does nothing,
 * so a builder reads as a list of nodes; the caller checks st once. */
struct Graph {
    an_ctx *ctx;
    an_status st;
    cudnnBackendDescriptor_t descs[kMaxDescs];
    int n_descs;
    cudnnBackendDescriptor_t ops[kMaxOps];
    int n_ops;
    int64_t next_uid;
    cudnnDataType_t io; /* bf16 or f16 */
};

#define G_CHECK(g, call, what)                                                                         \
    do {                                                                                               \
        if ((g)->st == AN_OK) {                                                                        \
            cudnnStatus_t cudnn_st_ = (call);                                                          \
            if (cudnn_st_ != CUDNN_STATUS_SUCCESS) (g)->st = cudnn_error((g)->ctx, __LINE__, #call, (what), cudnn_st_); \
        }                                                                                              \
    } while (0)

cudnnBackendDescriptor_t make(Graph *g, cudnnBackendDescriptorType_t type, const char *what) {
    cudnnBackendDescriptor_t d = nullptr;
    if (g->st != AN_OK) return nullptr;
    if (g->n_descs == kMaxDescs) {
        g->st = an_error_set(g->ctx, AN_ERR_INTERNAL, __FILE__, __LINE__,
                             "cuDNN attention (%s): more than %d descriptors in one graph", what, kMaxDescs);
        return nullptr;
    }
    G_CHECK(g, cudnnBackendCreateDescriptor(type, &d), what);
    if (g->st != AN_OK) return nullptr;
    g->descs[g->n_descs++] = d;
    return d;
}

void set(Graph *g, cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type,
         int64_t count, const void *value, const char *what) {
    G_CHECK(g, cudnnBackendSetAttribute(d, name, type, count, value), what);
}

void set_desc(Graph *g, cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name, cudnnBackendDescriptor_t value,
              const char *what) {
    set(g, d, name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &value, what);
}

void finalize(Graph *g, cudnnBackendDescriptor_t d, const char *what) { G_CHECK(g, cudnnBackendFinalize(d), what); }

struct Dims {
    int64_t d[4], s[4]; /* sizes and strides in elements */
};

Dims packed(int64_t a, int64_t b, int64_t c, int64_t e) { return Dims{{a, b, c, e}, {b * c * e, c * e, e, 1}}; }

Dims strided(int64_t a, int64_t b, int64_t c, int64_t e, int64_t sa, int64_t sb, int64_t sc, int64_t se) {
    return Dims{{a, b, c, e}, {sa, sb, sc, se}};
}

enum Kind { REAL, VIRTUAL, BY_VALUE };

cudnnBackendDescriptor_t tensor(Graph *g, int64_t uid, cudnnDataType_t type, Dims dims, Kind kind, const char *what) {
    cudnnBackendDescriptor_t t = make(g, CUDNN_BACKEND_TENSOR_DESCRIPTOR, what);
    int64_t align = 16;
    bool yes = true;
    set(g, t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type, what);
    set(g, t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims.d, what);
    set(g, t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, dims.s, what);
    set(g, t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid, what);
    set(g, t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align, what);
    if (kind == VIRTUAL) set(g, t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &yes, what);
    if (kind == BY_VALUE) set(g, t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &yes, what);
    finalize(g, t, what);
    return t;
}

/* A virtual (never stored) intermediate. */
cudnnBackendDescriptor_t virt(Graph *g, cudnnDataType_t type, Dims dims, const char *what) {
    return tensor(g, g->next_uid++, type, dims, VIRTUAL, what);
}

void add_op(Graph *g, cudnnBackendDescriptor_t op, const char *what) {
    finalize(g, op, what);
    if (g->st != AN_OK) return;
    if (g->n_ops == kMaxOps) {
        g->st = an_error_set(g->ctx, AN_ERR_INTERNAL, __FILE__, __LINE__,
                             "cuDNN attention (%s): more than %d operations in one graph", what, kMaxOps);
        return;
    }
    g->ops[g->n_ops++] = op;
}

/* c = a b over the last two dimensions, batch dimensions broadcast (a kv head serves its group). */
void matmul(Graph *g, cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t c,
            const char *what) {
    cudnnBackendDescriptor_t desc = make(g, CUDNN_BACKEND_MATMUL_DESCRIPTOR, what);
    cudnnDataType_t f32 = CUDNN_DATA_FLOAT;
    set(g, desc, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f32, what);
    finalize(g, desc, what);
    cudnnBackendDescriptor_t op = make(g, CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR, what);
    set_desc(g, op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, a, what);
    set_desc(g, op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, b, what);
    set_desc(g, op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, c, what);
    set_desc(g, op, CUDNN_ATTR_OPERATION_MATMUL_DESC, desc, what);
    add_op(g, op, what);
}

/* y = mode(x[, b[, t]]) computed in `prec`; axis >= 0 for GEN_INDEX. BINARY_SELECT: y = t ? x : b. */
void pointwise(Graph *g, cudnnPointwiseMode_t mode, cudnnDataType_t prec, cudnnBackendDescriptor_t x,
               cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t t, cudnnBackendDescriptor_t y, int64_t axis,
               const char *what) {
    cudnnBackendDescriptor_t desc = make(g, CUDNN_BACKEND_POINTWISE_DESCRIPTOR, what);
    set(g, desc, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode, what);
    set(g, desc, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &prec, what);
    if (axis >= 0) set(g, desc, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis, what);
    finalize(g, desc, what);
    cudnnBackendDescriptor_t op = make(g, CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, what);
    set_desc(g, op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, desc, what);
    set_desc(g, op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, x, what);
    if (b) set_desc(g, op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, b, what);
    if (t) set_desc(g, op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, t, what);
    set_desc(g, op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, y, what);
    add_op(g, op, what);
}

/* y = x reduced (ADD or MAX) over the dimensions where y has size 1, or over groups where y's
 * size divides x's. */
void reduction(Graph *g, cudnnReduceTensorOp_t kind, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y,
               const char *what) {
    cudnnBackendDescriptor_t desc = make(g, CUDNN_BACKEND_REDUCTION_DESCRIPTOR, what);
    cudnnDataType_t f32 = CUDNN_DATA_FLOAT;
    set(g, desc, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &kind, what);
    set(g, desc, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f32, what);
    finalize(g, desc, what);
    cudnnBackendDescriptor_t op = make(g, CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR, what);
    set_desc(g, op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, x, what);
    set_desc(g, op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, y, what);
    set_desc(g, op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, desc, what);
    add_op(g, op, what);
}

/* y = x viewed with y's dimensions and strides (a transpose here). */
void reshape(Graph *g, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y, const char *what) {
    cudnnBackendDescriptor_t op = make(g, CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR, what);
    set_desc(g, op, CUDNN_ATTR_OPERATION_RESHAPE_XDESC, x, what);
    set_desc(g, op, CUDNN_ATTR_OPERATION_RESHAPE_YDESC, y, what);
    add_op(g, op, what);
}

const cudnnDataType_t F32 = CUDNN_DATA_FLOAT, I32 = CUDNN_DATA_INT32, BOOL = CUDNN_DATA_BOOLEAN;

/* The tensors both passes share: (B, H, T, D) views of the (B, T, H, D) buffers, K and V also
 * as their transposes (B, Hkv, D, T), the by-value scalars and the stats. */
struct Common {
    int64_t B, T, Hq, Hkv, D;
    Dims q, kv, kv_t, stats, scores, row; /* scores (B, Hq, T, T), row (B, Hq, T, 1) */
    cudnnBackendDescriptor_t scale, neg_inf;
};

Common common(Graph *g, const Plan *p) {
    Common c;
    c.B = p->B, c.T = p->T, c.Hq = p->Hq, c.Hkv = p->Hkv, c.D = p->D;
    int64_t T = c.T, D = c.D, Hq = c.Hq, Hkv = c.Hkv;
    c.q = strided(c.B, Hq, T, D, T * Hq * D, D, Hq * D, 1);
    c.kv = strided(c.B, Hkv, T, D, T * Hkv * D, D, Hkv * D, 1);
    c.kv_t = strided(c.B, Hkv, D, T, T * Hkv * D, D, 1, Hkv * D);
    c.stats = packed(c.B, Hq, T, 1);
    c.scores = packed(c.B, Hq, T, T);
    c.row = packed(c.B, Hq, T, 1);
    c.scale = tensor(g, UID_SCALE, F32, packed(1, 1, 1, 1), BY_VALUE, "scale");
    c.neg_inf = tensor(g, UID_NEG_INF, F32, packed(1, 1, 1, 1), BY_VALUE, "-inf");
    return c;
}

/* x with key > query set to -inf: the causal mask, as GEN_INDEX + CMP_GE + BINARY_SELECT. */
cudnnBackendDescriptor_t causal(Graph *g, const Common &c, cudnnBackendDescriptor_t x) {
    cudnnBackendDescriptor_t row = virt(g, I32, c.scores, "causal row index");
    cudnnBackendDescriptor_t col = virt(g, I32, c.scores, "causal column index");
    pointwise(g, CUDNN_POINTWISE_GEN_INDEX, F32, x, nullptr, nullptr, row, 2, "causal row index");
    pointwise(g, CUDNN_POINTWISE_GEN_INDEX, F32, x, nullptr, nullptr, col, 3, "causal column index");
    cudnnBackendDescriptor_t keep = virt(g, BOOL, c.scores, "causal row >= column");
    pointwise(g, CUDNN_POINTWISE_CMP_GE, BOOL, row, col, nullptr, keep, -1, "causal row >= column");
    cudnnBackendDescriptor_t y = virt(g, F32, c.scores, "causal select");
    pointwise(g, CUDNN_POINTWISE_BINARY_SELECT, F32, x, c.neg_inf, keep, y, -1, "causal select");
    return y;
}

/* x outside rows < seq_q and columns < seq_kv (int32 (B, 1, 1, 1), all T) set to -inf: the
 * padding mask cuDNN <= 9.15 needs in the backward when T % 128 != 0. */
cudnnBackendDescriptor_t padding(Graph *g, const Common &c, cudnnBackendDescriptor_t x) {
    Dims per_batch = packed(c.B, 1, 1, 1);
    cudnnBackendDescriptor_t seq_q = tensor(g, UID_SEQ_Q, I32, per_batch, REAL, "padding seq_q");
    cudnnBackendDescriptor_t seq_kv = tensor(g, UID_SEQ_KV, I32, per_batch, REAL, "padding seq_kv");
    cudnnBackendDescriptor_t row = virt(g, I32, c.scores, "padding row index");
    cudnnBackendDescriptor_t col = virt(g, I32, c.scores, "padding column index");
    pointwise(g, CUDNN_POINTWISE_GEN_INDEX, I32, x, nullptr, nullptr, row, 2, "padding row index");
    pointwise(g, CUDNN_POINTWISE_GEN_INDEX, I32, x, nullptr, nullptr, col, 3, "padding column index");
    cudnnBackendDescriptor_t row_in = virt(g, BOOL, c.scores, "padding row < seq_q");
    cudnnBackendDescriptor_t col_in = virt(g, BOOL, c.scores, "padding column < seq_kv");
    pointwise(g, CUDNN_POINTWISE_CMP_LT, BOOL, row, seq_q, nullptr, row_in, -1, "padding row < seq_q");
    pointwise(g, CUDNN_POINTWISE_CMP_LT, BOOL, col, seq_kv, nullptr, col_in, -1, "padding column < seq_kv");
    cudnnBackendDescriptor_t keep = virt(g, BOOL, c.scores, "padding and");
    pointwise(g, CUDNN_POINTWISE_LOGICAL_AND, BOOL, row_in, col_in, nullptr, keep, -1, "padding and");
    cudnnBackendDescriptor_t y = virt(g, F32, c.scores, "padding select");
    pointwise(g, CUDNN_POINTWISE_BINARY_SELECT, F32, x, c.neg_inf, keep, y, -1, "padding select");
    return y;
}

void build_forward(Graph *g, const Plan *p) {
    Common c = common(g, p);
    cudnnBackendDescriptor_t q = tensor(g, UID_Q, g->io, c.q, REAL, "q");
    cudnnBackendDescriptor_t k_t = tensor(g, UID_K, g->io, c.kv_t, REAL, "k");
    cudnnBackendDescriptor_t v = tensor(g, UID_V, g->io, c.kv, REAL, "v");
    cudnnBackendDescriptor_t o = tensor(g, UID_O, g->io, c.q, REAL, "out");
    cudnnBackendDescriptor_t stats = tensor(g, UID_STATS, F32, c.stats, REAL, "lse");

    cudnnBackendDescriptor_t s = virt(g, F32, c.scores, "q k^T");
    matmul(g, q, k_t, s, "q k^T");
    cudnnBackendDescriptor_t scaled = virt(g, F32, c.scores, "scale");
    pointwise(g, CUDNN_POINTWISE_MUL, F32, s, c.scale, nullptr, scaled, -1, "scale");
    cudnnBackendDescriptor_t masked = causal(g, c, scaled);
    cudnnBackendDescriptor_t m = virt(g, F32, c.row, "row max");
    reduction(g, CUDNN_REDUCE_TENSOR_MAX, masked, m, "row max");
    cudnnBackendDescriptor_t shifted = virt(g, F32, c.scores, "s - max");
    pointwise(g, CUDNN_POINTWISE_SUB, F32, masked, m, nullptr, shifted, -1, "s - max");
    cudnnBackendDescriptor_t e = virt(g, F32, c.scores, "exp");
    pointwise(g, CUDNN_POINTWISE_EXP, F32, shifted, nullptr, nullptr, e, -1, "exp");
    cudnnBackendDescriptor_t l = virt(g, F32, c.row, "row sum");
    reduction(g, CUDNN_REDUCE_TENSOR_ADD, e, l, "row sum");
    cudnnBackendDescriptor_t log_l = virt(g, F32, c.row, "log sum");
    pointwise(g, CUDNN_POINTWISE_LOG, F32, l, nullptr, nullptr, log_l, -1, "log sum");
    pointwise(g, CUDNN_POINTWISE_ADD, F32, m, log_l, nullptr, stats, -1, "stats = max + log sum");
    cudnnBackendDescriptor_t prob = virt(g, g->io, c.scores, "softmax");
    pointwise(g, CUDNN_POINTWISE_DIV, F32, e, l, nullptr, prob, -1, "softmax");
    matmul(g, prob, v, o, "p v");
}

void build_backward(Graph *g, const Plan *p) {
    Common c = common(g, p);
    int64_t B = c.B, T = c.T, Hq = c.Hq, D = c.D;
    cudnnBackendDescriptor_t q = tensor(g, UID_Q, g->io, c.q, REAL, "q");
    cudnnBackendDescriptor_t k_t = tensor(g, UID_K, g->io, c.kv_t, REAL, "k");
    cudnnBackendDescriptor_t v_t = tensor(g, UID_V, g->io, c.kv_t, REAL, "v");
    cudnnBackendDescriptor_t o = tensor(g, UID_O, g->io, c.q, REAL, "out");
    cudnnBackendDescriptor_t stats = tensor(g, UID_STATS, F32, c.stats, REAL, "lse");
    cudnnBackendDescriptor_t d_o = tensor(g, UID_DO, g->io, c.q, REAL, "grad_out");
    cudnnBackendDescriptor_t d_q = tensor(g, UID_DQ, g->io, c.q, REAL, "grad_q");
    cudnnBackendDescriptor_t d_k = tensor(g, UID_DK, g->io, c.kv, REAL, "grad_k");
    cudnnBackendDescriptor_t d_v = tensor(g, UID_DV, g->io, c.kv, REAL, "grad_v");
    cudnnBackendDescriptor_t one = tensor(g, UID_ONE, F32, packed(1, 1, 1, 1), BY_VALUE, "one");
    bool gqa = c.Hq != c.Hkv;

    /* delta = rowsum(dO * O), stored in our workspace (the frontend's layout for the product) */
    cudnnBackendDescriptor_t prod = virt(g, F32, strided(B, Hq, T, D, Hq * T * D, T * D, Hq * D, 1), "dO * O");
    pointwise(g, CUDNN_POINTWISE_MUL, F32, d_o, o, nullptr, prod, -1, "dO * O");
    cudnnBackendDescriptor_t sum = virt(g, F32, c.row, "rowsum dO * O");
    reduction(g, CUDNN_REDUCE_TENSOR_ADD, prod, sum, "rowsum dO * O");
    cudnnBackendDescriptor_t delta = tensor(g, UID_DELTA, F32, c.row, REAL, "delta");
    pointwise(g, CUDNN_POINTWISE_MUL, F32, sum, one, nullptr, delta, -1, "delta");

    /* P = exp(scale q k^T - stats), masked */
    cudnnBackendDescriptor_t s = virt(g, F32, c.scores, "q k^T");
    matmul(g, q, k_t, s, "q k^T");
    cudnnBackendDescriptor_t scaled = virt(g, F32, c.scores, "scale");
    pointwise(g, CUDNN_POINTWISE_MUL, F32, s, c.scale, nullptr, scaled, -1, "scale");
    cudnnBackendDescriptor_t centred = virt(g, F32, c.scores, "s - stats");
    pointwise(g, CUDNN_POINTWISE_SUB, F32, scaled, stats, nullptr, centred, -1, "s - stats");
    if (p->padding_mask) centred = padding(g, c, centred);
    cudnnBackendDescriptor_t masked = causal(g, c, centred);
    cudnnBackendDescriptor_t prob = virt(g, F32, c.scores, "p");
    pointwise(g, CUDNN_POINTWISE_EXP, F32, masked, nullptr, nullptr, prob, -1, "p");

    /* dV = P^T dO (per query head, then summed over the group) */
    Dims transposed = strided(B, Hq, T, T, Hq * T * T, T * T, 1, T);
    cudnnBackendDescriptor_t prob_t = virt(g, g->io, transposed, "p^T");
    reshape(g, prob, prob_t, "p^T");
    cudnnBackendDescriptor_t dv_heads = gqa ? virt(g, g->io, packed(B, Hq, T, D), "dV per query head") : d_v;
    matmul(g, prob_t, d_o, dv_heads, "p^T dO");
    if (gqa) reduction(g, CUDNN_REDUCE_TENSOR_ADD, dv_heads, d_v, "dV group sum");

    /* dS = scale P (dO V^T - delta) */
    cudnnBackendDescriptor_t dp = virt(g, F32, c.scores, "dO v^T");
    matmul(g, d_o, v_t, dp, "dO v^T");
    cudnnBackendDescriptor_t dp_c = virt(g, F32, c.scores, "dP - delta");
    pointwise(g, CUDNN_POINTWISE_SUB, F32, dp, delta, nullptr, dp_c, -1, "dP - delta");
    cudnnBackendDescriptor_t ds_u = virt(g, F32, c.scores, "p (dP - delta)");
    pointwise(g, CUDNN_POINTWISE_MUL, F32, dp_c, prob, nullptr, ds_u, -1, "p (dP - delta)");
    cudnnBackendDescriptor_t ds = virt(g, F32, c.scores, "dS");
    pointwise(g, CUDNN_POINTWISE_MUL, F32, ds_u, c.scale, nullptr, ds, -1, "dS");

    /* dK = dS^T Q (per query head, then summed over the group) */
    cudnnBackendDescriptor_t ds_t = virt(g, g->io, transposed, "dS^T");
    reshape(g, ds, ds_t, "dS^T");
    cudnnBackendDescriptor_t dk_heads = gqa ? virt(g, g->io, packed(B, Hq, T, D), "dK per query head") : d_k;
    matmul(g, ds_t, q, dk_heads, "dS^T q");
    if (gqa) reduction(g, CUDNN_REDUCE_TENSOR_ADD, dk_heads, d_k, "dK group sum");

    /* dQ = dS K: straight into dQ (deterministic), or through an fp32 accumulator (atomics) */
    cudnnBackendDescriptor_t k = virt(g, F32, c.kv, "k"); /* a virtual view; fp32 as the frontend types it */
    reshape(g, k_t, k, "k");
    if (p->deterministic) {
        matmul(g, ds, k, d_q, "dS k");
    } else {
        cudnnBackendDescriptor_t acc = tensor(g, UID_DQ_ACCUM, F32, packed(B, Hq, T, D), REAL, "dQ accumulator");
        matmul(g, ds, k, acc, "dS k");
        pointwise(g, CUDNN_POINTWISE_IDENTITY, F32, acc, nullptr, nullptr, d_q, -1, "dQ");
    }
}

/* Our part of the workspace after the engine's: delta, the dQ accumulator, the padding lengths. */
struct Layout {
    size_t delta, dq_accum, seq_q, seq_kv, total; /* byte offsets (0: absent, except delta) */
};

size_t round_up(size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

Layout layout_of(const Plan *p) {
    Layout w = {0, 0, 0, 0, round_up((size_t)p->plan_workspace)};
    if (!p->backward) return w;
    size_t rows = (size_t)(p->B * p->Hq * p->T);
    w.delta = w.total, w.total += round_up(rows * sizeof(float));
    if (!p->deterministic) w.dq_accum = w.total, w.total += round_up(rows * (size_t)p->D * sizeof(float));
    if (p->padding_mask) {
        w.seq_q = w.total, w.total += round_up((size_t)p->B * sizeof(int32_t));
        w.seq_kv = w.total, w.total += round_up((size_t)p->B * sizeof(int32_t));
    }
    return w;
}

void plan_destroy(Plan *p) {
    if (p->plan) (void)cudnnBackendDestroyDescriptor(p->plan);
    for (int i = 0; i < p->n_descs; i++) (void)cudnnBackendDestroyDescriptor(p->descs[i]);
    memset(p, 0, sizeof *p);
}

/* Operation graph, heuristics, and the first engine config that finalises into p->plan. */
an_status plan_build(an_ctx *ctx, cudnnHandle_t handle, Plan *p) {
    Graph *g = (Graph *)calloc(1, sizeof(Graph));
    AN_CHECK(ctx, g != nullptr, AN_ERR_INTERNAL, "out of host memory for a cuDNN attention graph");
    g->ctx = ctx, g->st = AN_OK, g->next_uid = UID_FIRST_VIRTUAL;
    g->io = p->dtype == AN_BF16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_HALF;
    const char *pass = p->backward ? "backward graph" : "forward graph";
    if (p->backward) build_backward(g, p);
    else build_forward(g, p);
    cudnnBackendDescriptor_t graph = make(g, CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, pass);
    set(g, graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle, pass);
    set(g, graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, g->n_ops, g->ops, pass);
    finalize(g, graph, pass);
    cudnnBackendDescriptor_t heur = make(g, CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, "heuristics");
    cudnnBackendHeurMode_t mode = CUDNN_HEUR_MODE_A;
    set_desc(g, heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, graph, "heuristics");
    set(g, heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode, "heuristics");
    finalize(g, heur, "heuristics");
    enum { kConfigs = 16 };
    cudnnBackendDescriptor_t cfgs[kConfigs];
    for (int i = 0; i < kConfigs; i++) cfgs[i] = make(g, CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, "engine configs");
    int64_t n_cfgs = 0;
    G_CHECK(g, cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, kConfigs,
                                        &n_cfgs, cfgs), "heuristics results");
    char first_why[512] = "";
    if (n_cfgs > kConfigs) n_cfgs = kConfigs;
    int finalised = 0; /* configs that finalised before this one: the key's engine-th is taken */
    for (int64_t i = 0; g->st == AN_OK && i < n_cfgs && !p->plan; i++) {
        cudnnBackendDescriptor_t plan = nullptr;
        cudnnStatus_t st = cudnnBackendCreateDescriptor(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, &plan);
        if (st == CUDNN_STATUS_SUCCESS)
            st = cudnnBackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
        if (st == CUDNN_STATUS_SUCCESS)
            st = cudnnBackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                          1, &cfgs[i]);
        if (st == CUDNN_STATUS_SUCCESS) st = cudnnBackendFinalize(plan);
        if (st == CUDNN_STATUS_SUCCESS && finalised++ == p->engine) {
            p->plan = plan;
            break;
        }
        if (st == CUDNN_STATUS_SUCCESS) { /* an earlier engine than the key's */
            (void)cudnnBackendDestroyDescriptor(plan);
            continue;
        }
        if (!first_why[0]) { /* a config the heuristics offered but cannot run here: try the next */
            char msg[400];
            last_error(msg, sizeof msg);
            snprintf(first_why, sizeof first_why, "%s%s%s", cudnnGetErrorString(st), msg[0] ? ": " : "", msg);
        }
        if (plan) (void)cudnnBackendDestroyDescriptor(plan);
    }
    if (g->st == AN_OK && !p->plan) {
        char msg[400];
        last_error(msg, sizeof msg);
        g->st = an_error_set(ctx, AN_ERR_INTERNAL, __FILE__, __LINE__,
                             "cuDNN attention %s (%s B %lld T %lld Hq %lld Hkv %lld D %lld): %d of %lld engine configs "
                             "finalised, engine %d asked for (first failure: %s)%s%s", pass, an_dtype_name(p->dtype),
                             (long long)p->B, (long long)p->T, (long long)p->Hq, (long long)p->Hkv, (long long)p->D,
                             finalised, (long long)n_cfgs, p->engine, first_why[0] ? first_why : "none",
                             msg[0] ? "; last: " : "", msg);
    }
    int64_t got = 0;
    if (g->st == AN_OK)
        G_CHECK(g, cudnnBackendGetAttribute(p->plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1,
                                            &got, &p->plan_workspace), "plan workspace size");
    memcpy(p->descs, g->descs, sizeof(cudnnBackendDescriptor_t) * (size_t)g->n_descs);
    p->n_descs = g->n_descs;
    an_status st = g->st;
    free(g);
    if (st != AN_OK) plan_destroy(p);
    return st;
}

an_status handle_of(an_ctx *ctx, an_cuda_state *s, an_cudnn_attention **out) {
    if (!s->cudnn) {
        AN_CUDA_CHECK(ctx, cudaSetDevice(s->device));
        an_cudnn_attention *c = (an_cudnn_attention *)calloc(1, sizeof *c);
        AN_CHECK(ctx, c != nullptr, AN_ERR_INTERNAL, "out of host memory for the cuDNN attention state");
        cudnnStatus_t st = cudnnCreate(&c->handle);
        if (st == CUDNN_STATUS_SUCCESS) st = cudnnSetStream(c->handle, s->stream);
        if (st != CUDNN_STATUS_SUCCESS) {
            if (c->handle) (void)cudnnDestroy(c->handle);
            free(c);
            return cudnn_error(ctx, __LINE__, "cudnnCreate / cudnnSetStream", "handle", st);
        }
        s->cudnn = c;
    }
    *out = s->cudnn;
    return AN_OK;
}

/* The cached plan for the key, built on a miss. */
an_status plan_get(an_ctx *ctx, const Plan &call, cudnnHandle_t *handle, Plan **out) {
    AN_CUDA_STATE(ctx, s);
    an_cudnn_attention *c;
    AN_TRY(handle_of(ctx, s, &c));
    *handle = c->handle;
    Plan key = call;
    key.engine = c->engine[call.backward ? 1 : 0];
    for (int i = 0; i < kPlanSlots; i++) {
        Plan *p = &c->plans[i];
        if (p->used && p->backward == key.backward && p->deterministic == key.deterministic &&
            p->padding_mask == key.padding_mask && p->engine == key.engine && p->dtype == key.dtype && p->B == key.B &&
            p->T == key.T && p->Hq == key.Hq && p->Hkv == key.Hkv && p->D == key.D) {
            *out = p;
            return AN_OK;
        }
    }
    int slot = -1;
    for (int i = 0; i < kPlanSlots && slot < 0; i++)
        if (!c->plans[i].used) slot = i;
    if (slot < 0) slot = c->next, c->next = (c->next + 1) % kPlanSlots;
    Plan *p = &c->plans[slot];
    plan_destroy(p);
    *p = key;
    AN_TRY(plan_build(ctx, c->handle, p));
    p->used = true;
    *out = p;
    return AN_OK;
}

/* The plan key of a call; the backward's options come from the state's switches. */
Plan key_of(const an_cuda_state *s, const an_attention_shape *sh, an_dtype dtype, bool backward) {
    Plan k;
    memset(&k, 0, sizeof k);
    k.backward = backward, k.dtype = dtype;
    k.B = sh->batch, k.T = sh->seq, k.Hq = sh->q_heads, k.Hkv = sh->kv_heads, k.D = sh->head_dim;
    k.deterministic = backward && !s->attention_cudnn_nondeterministic;
    k.padding_mask = backward && (s->attention_cudnn_padding_mask || (cudnnGetVersion() <= 91500 && k.T % 128 != 0));
    return k;
}

__global__ void fill_i32(int32_t *x, int n, int32_t value) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = value;
}

/* Runs p with the given (uid, pointer) pairs plus the by-value scalars and our workspace parts. */
an_status execute(an_ctx *ctx, cudnnHandle_t handle, const Plan *p, const an_attention_shape *sh, int n_io,
                  const int64_t *io_uids, void *const *io_ptrs) {
    AN_CUDA_STATE(ctx, s);
    Layout w = layout_of(p);
    char why[320] = "";
    char *ws = nullptr;
    if (w.total > 0) {
        ws = (char *)an_cuda_malloc(s, w.total, why, sizeof why);
        AN_CHECK(ctx, ws != nullptr, AN_ERR_INTERNAL, "cuDNN attention workspace of %zu bytes: %s", w.total, why);
    }
    float scale = (float)sh->scale, one = 1.0f;
    float neg_inf = cudnnGetVersion() < 91000 ? -FLT_MAX : -INFINITY; /* older engines want the lowest finite */
    int64_t uids[20]; /* at most 9 buffers, 3 scalars and 4 workspace parts */
    void *ptrs[20];
    int n = 0;
    for (int i = 0; i < n_io; i++) uids[n] = io_uids[i], ptrs[n++] = io_ptrs[i];
    uids[n] = UID_SCALE, ptrs[n++] = &scale;
    uids[n] = UID_NEG_INF, ptrs[n++] = &neg_inf;
    if (p->backward) {
        uids[n] = UID_ONE, ptrs[n++] = &one;
        uids[n] = UID_DELTA, ptrs[n++] = ws + w.delta;
        if (!p->deterministic) uids[n] = UID_DQ_ACCUM, ptrs[n++] = ws + w.dq_accum;
        if (p->padding_mask) {
            uids[n] = UID_SEQ_Q, ptrs[n++] = ws + w.seq_q;
            uids[n] = UID_SEQ_KV, ptrs[n++] = ws + w.seq_kv;
            for (int i = 0; i < 2; i++) {
                fill_i32<<<(unsigned)((p->B + 127) / 128), 128, 0, s->stream>>>(
                    (int32_t *)(ws + (i ? w.seq_kv : w.seq_q)), (int)p->B, (int32_t)p->T);
                cudaError_t e = cudaGetLastError();
                if (e != cudaSuccess) {
                    an_cuda_free(s, ws);
                    AN_CUDA_CHECK(ctx, e);
                }
            }
        }
    }
    cudnnBackendDescriptor_t pack = nullptr;
    void *workspace = ws;
    cudnnStatus_t st = cudnnBackendCreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &pack);
    const char *step = "cudnnBackendCreateDescriptor(VARIANT_PACK)";
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, n, uids),
        step = "cudnnBackendSetAttribute(VARIANT_PACK_UNIQUE_IDS)";
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, n, ptrs),
        step = "cudnnBackendSetAttribute(VARIANT_PACK_DATA_POINTERS)";
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace),
        step = "cudnnBackendSetAttribute(VARIANT_PACK_WORKSPACE)";
    if (st == CUDNN_STATUS_SUCCESS) st = cudnnBackendFinalize(pack), step = "cudnnBackendFinalize(VARIANT_PACK)";
    if (st == CUDNN_STATUS_SUCCESS) st = cudnnBackendExecute(handle, p->plan, pack), step = "cudnnBackendExecute";
    if (pack) (void)cudnnBackendDestroyDescriptor(pack);
    an_cuda_free(s, ws); /* stream order: the next user of the block runs after this launch */
    if (st != CUDNN_STATUS_SUCCESS) return cudnn_error(ctx, __LINE__, step, p->backward ? "backward" : "forward", st);
    return AN_OK;
}

} // namespace

bool an_attention_cudnn_takes(an_dtype dtype, int64_t head_dim) {
    return (dtype == AN_BF16 || dtype == AN_F16) && (head_dim == 64 || head_dim == 128);
}

an_status an_attention_cudnn_forward(an_ctx *ctx, const an_attention_shape *sh, an_dtype dtype, const void *q,
                                     const void *k, const void *v, void *out, float *lse) {
    AN_CHECK(ctx, an_attention_cudnn_takes(dtype, sh->head_dim), AN_ERR_INTERNAL,
             "cuDNN attention: %s head_dim %lld is not a cuDNN shape", an_dtype_name(dtype), (long long)sh->head_dim);
    if (sh->batch == 0 || sh->seq == 0) return AN_OK;
    AN_CUDA_STATE(ctx, s);
    Plan *p;
    cudnnHandle_t handle;
    AN_TRY(plan_get(ctx, key_of(s, sh, dtype, false), &handle, &p));
    const int64_t uids[] = {UID_Q, UID_K, UID_V, UID_O, UID_STATS};
    void *const ptrs[] = {(void *)q, (void *)k, (void *)v, out, lse};
    return execute(ctx, handle, p, sh, 5, uids, ptrs);
}

an_status an_attention_cudnn_backward(an_ctx *ctx, const an_attention_shape *sh, an_dtype dtype, const void *q,
                                      const void *k, const void *v, const void *out, const float *lse,
                                      const void *grad_out, void *grad_q, void *grad_k, void *grad_v) {
    AN_CUDA_STATE(ctx, s);
    AN_CHECK(ctx, an_attention_cudnn_takes(dtype, sh->head_dim), AN_ERR_INTERNAL,
             "cuDNN attention: %s head_dim %lld is not a cuDNN shape", an_dtype_name(dtype), (long long)sh->head_dim);
    if (sh->batch == 0 || sh->seq == 0 || (!grad_q && !grad_k && !grad_v)) return AN_OK;
    Plan *p;
    cudnnHandle_t handle;
    AN_TRY(plan_get(ctx, key_of(s, sh, dtype, true), &handle, &p));
    /* cuDNN writes all three gradients: an unwanted one goes to a temporary block */
    size_t elem = an_dtype_size(dtype);
    size_t q_bytes = (size_t)(sh->batch * sh->seq * sh->q_heads * sh->head_dim) * elem;
    size_t kv_bytes = (size_t)(sh->batch * sh->seq * sh->kv_heads * sh->head_dim) * elem;
    void *grads[3] = {grad_q, grad_k, grad_v}, *temp[3] = {nullptr, nullptr, nullptr};
    an_status st = AN_OK;
    for (int i = 0; i < 3 && st == AN_OK; i++) {
        if (grads[i]) continue;
        char why[320] = "";
        size_t bytes = i == 0 ? q_bytes : kv_bytes;
        temp[i] = grads[i] = an_cuda_malloc(s, bytes, why, sizeof why);
        if (!temp[i])
            st = an_error_set(ctx, AN_ERR_INTERNAL, __FILE__, __LINE__,
                              "cuDNN attention backward: temporary gradient of %zu bytes: %s", bytes, why);
    }
    if (st == AN_OK) {
        const int64_t uids[] = {UID_Q, UID_K, UID_V, UID_O, UID_STATS, UID_DO, UID_DQ, UID_DK, UID_DV};
        void *const ptrs[] = {(void *)q, (void *)k, (void *)v, (void *)out, (void *)lse, (void *)grad_out,
                              grads[0], grads[1], grads[2]};
        st = execute(ctx, handle, p, sh, 9, uids, ptrs);
    }
    for (int i = 0; i < 3; i++) an_cuda_free(s, temp[i]);
    return st;
}

void an_cuda_cudnn_free(an_cuda_state *s) {
    if (!s->cudnn) return;
    for (int i = 0; i < kPlanSlots; i++) plan_destroy(&s->cudnn->plans[i]);
    if (s->cudnn->handle) (void)cudnnDestroy(s->cudnn->handle);
    free(s->cudnn);
    s->cudnn = nullptr;
}

extern "C" int an_cuda_cudnn_version(void) { return (int)cudnnGetVersion(); }

extern "C" an_status an_cuda_set_attention_cudnn_engine(an_ctx *ctx, int backward, int engine) {
    AN_CUDA_STATE(ctx, s);
    AN_CHECK(ctx, engine >= 0 && engine < 16, AN_ERR_INPUT, "cuDNN attention engine %d: expected 0 to 15", engine);
    an_cudnn_attention *c = nullptr;
    AN_TRY(handle_of(ctx, s, &c));
    c->engine[backward ? 1 : 0] = engine;
    return AN_OK;
}
