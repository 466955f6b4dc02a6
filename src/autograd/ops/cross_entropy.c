/* cross_entropy.c — the language-model loss and the RL log-probs over a vocabulary of V:
 * cross_entropy on logits (N, V), linear_cross_entropy fused with the output projection, and
 * log_softmax_gather; each with its backward rule.
 *
 * Numerics: logits are widened to float64 one row at a time (a V-double scratch row from the
 * counted allocator; none when they are f64 already), row maxima are subtracted before exp, sums
 * accumulate in float64, and each node saves the per-row log-sum-exp (N) f64 for backward.
 * Targets equal to the ignore index are not counted and get zero gradient; any other target
 * outside [0, V) is AN_ERR_INPUT naming its row and value.
 * Memory: linear_cross_entropy computes logits chunk_rows rows at a time into one (chunk_rows, V)
 * tensor, in forward and again in backward on the CPU, so no (N, V) buffer ever exists; on CUDA,
 * when the node is recorded, the forward also turns each chunk into dlogits at a unit upstream
 * gradient and forms dh (N, D) and dw (V, D), which the backward only scales (the logits GEMM runs
 * once per step, not twice; a forward whose backward never runs pays for two GEMMs it did not need). Its GEMMs run through
 * an_cpu_gemm in f32 for f32 inputs and f64 for f64 inputs; bf16/f16 inputs are widened once to
 * f32 copies (O((N + V) * D), never O(N * V)). Every buffer here is a tensor or an_mem_alloc'd, so
 * ctx->mem counts it.
 *
 * CUDA (kernels/cross_entropy.cu): targets/ids are checked by a device scan whose report (first bad
 * element, counted targets) is copied back, which synchronises (unless the caller checked the
 * targets before and passes their count, opts->checked_count); rows are computed in fp32, the
 * loss is an fp32 scalar on the device (summed in fp64; every device's loss scalar is fp32, or f64
 * for f64 inputs), and the backward reads the upstream gradient on the device.
 * linear_cross_entropy's chunk logits are one (chunk_rows, V) tensor in the input dtype from
 * an_cuda_gemm (fp32 accumulation), turned into dlogits in place (with gradients on an H100,
 * an_cuda_gemm_logits_stats forms them with each row's running log-sum-exp per column tile, and
 * an_cuda_cross_entropy_stats_grad merges the lse from those and reads the logits once); its
 * weight gradient accumulates over chunks in an fp32 (V, D) buffer for bf16/f16 (each chunk's GEMM adds into it
 * with an fp32 C, an_cuda_gemm_f32_out), which the backward casts to the weight's dtype and scales
 * by the upstream gradient in one pass (an_cuda_cast_mul: the cast's and the multiply's roundings,
 * one read of the buffer), directly with GEMM accumulation for f32.
 * Saved tensors, one contract on both devices: saved[0] is the per-row log-sum-exp (N) on the
 * logits' device, in the precision that device computes in (f64 on the CPU, f32 on CUDA); args[0]
 * is 1 / the loss denominator, iargs[0] the ignore index, iargs[1] chunk_rows; on CUDA,
 * linear_cross_entropy adds saved[1] dh and saved[2] dw (either NULL when not wanted; dw fp32 when it
 * accumulated over chunks) with iargs[2] = 1. */
#include "autograd/ops.h"

#include <math.h>
#include <string.h>

#include "autograd/cpu/cpu.h"     /* an_cpu_cross_entropy*, an_cpu_log_softmax_gather*, an_cpu_gemm */
#include "autograd/op_support.h"  /* AN_OP_INPUTS, an_op_* descriptors and checks */
#include "kernels/cuda.h"         /* an_cuda_check_ids, an_cuda_cross_entropy_*, an_cuda_gemm, ... */

#define DEFAULT_CHUNK_ROWS 1024
/* The default when linear_cross_entropy forms the weight's gradient on CUDA: each chunk then
 * rereads and rewrites the (V, D) fp32 accumulator of dW, so fewer, larger chunks pay for their
 * logits. Measured on the 1.5B shape (one H200, full fine-tune, bench/train_step --loss-chunk):
 * 4096 rows 2.5% faster than 1024 for 0.87 GiB more peak; 8192 no faster than 4096. */
#define WEIGHT_GRAD_CHUNK_ROWS 4096

/* opts (or the defaults when NULL) with chunk_rows 0 read as default_rows, checked. */
static an_status resolve_opts(an_ctx *ctx, const char *op, const an_cross_entropy_opts *opts, int64_t default_rows,
                              an_cross_entropy_opts *out) {
    *out = opts ? *opts : AN_CROSS_ENTROPY_DEFAULTS;
    if (out->chunk_rows == 0) out->chunk_rows = default_rows;
    AN_CHECK(ctx, out->chunk_rows > 0, AN_ERR_INPUT, "%s: chunk_rows = %lld, expected > 0 (0 for the default)", op,
             (long long)out->chunk_rows);
    AN_CHECK(ctx, isfinite(out->normalizer) && out->normalizer >= 0, AN_ERR_INPUT,
             "%s: normalizer = %g, expected >= 0 (0 for the number of counted targets)", op, out->normalizer);
    return AN_OK;
}

/* logits (N, V) with V >= 1 and one id per row: ids (N). */
static an_status check_rows(an_ctx *ctx, const char *op, const an_tensor *logits, const char *what,
                            const an_tensor *ids) {
    char dl[96], di[96];
    an_tensor_describe(logits, dl, sizeof dl);
    an_tensor_describe(ids, di, sizeof di);
    AN_CHECK(ctx, logits->ndim == 2 && logits->shape[1] >= 1, AN_ERR_INPUT, "%s: logits %s must be (N, V) with V >= 1",
             op, dl);
    AN_CHECK(ctx, ids->ndim == 1 && ids->shape[0] == logits->shape[0], AN_ERR_INPUT,
             "%s: %s %s must be (%lld), one per row of logits %s", op, what, di, (long long)logits->shape[0], dl);
    return AN_OK;
}

/* ids as int64, each in [0, V) or (when ignorable) equal to ignore_index. */
static an_status read_ids(an_ctx *ctx, const char *op, const char *what, const an_tensor *ids, int64_t V,
                          bool ignorable, int64_t ignore_index, an_i64 *out) {
    AN_TRY(an_i64_read(ctx, ids, out));
    int64_t n = an_tensor_numel(ids);
    for (int64_t i = 0; i < n; i++) {
        int64_t v = out->data[i];
        if ((v >= 0 && v < V) || (ignorable && v == ignore_index)) continue;
        an_i64_free(out);
        if (ignorable)
            AN_CHECK(ctx, 0, AN_ERR_INPUT, "%s: %s[%lld] = %lld is outside [0, %lld) and is not the ignore index %lld",
                     op, what, (long long)i, (long long)v, (long long)V, (long long)ignore_index);
        AN_CHECK(ctx, 0, AN_ERR_INPUT, "%s: %s[%lld] = %lld is outside [0, %lld)", op, what, (long long)i,
                 (long long)v, (long long)V);
    }
    return AN_OK;
}

/* The CUDA counterpart of read_ids: the same checks and messages, run on the device; *counted
 * gets the number of ids not equal to the ignore index (all of them when !ignorable). */
static an_status check_ids_cuda(an_ctx *ctx, const char *op, const char *what, const an_tensor *ids, int64_t V,
                                bool ignorable, int64_t ignore_index, int64_t *counted) {
    int64_t n = an_tensor_numel(ids);
    an_cuda_id_report rep;
    AN_TRY(an_cuda_check_ids(ctx, an_tensor_data(ids), ids->dtype, n, V, ignorable, ignore_index, &rep));
    if (rep.first_bad < n && ignorable)
        AN_CHECK(ctx, 0, AN_ERR_INPUT, "%s: %s[%lld] = %lld is outside [0, %lld) and is not the ignore index %lld", op,
                 what, (long long)rep.first_bad, (long long)rep.bad_value, (long long)V, (long long)ignore_index);
    AN_CHECK(ctx, rep.first_bad == n, AN_ERR_INPUT, "%s: %s[%lld] = %lld is outside [0, %lld)", op, what,
             (long long)rep.first_bad, (long long)rep.bad_value, (long long)V);
    *counted = rep.counted;
    return AN_OK;
}

an_status an_cross_entropy_check_targets(an_ctx *ctx, const char *op, const an_tensor *targets, int64_t V,
                                         int64_t ignore_index, int64_t *counted) {
    if (targets->device == AN_CUDA) return check_ids_cuda(ctx, op, "targets", targets, V, true, ignore_index, counted);
    an_i64 ids;
    AN_TRY(read_ids(ctx, op, "targets", targets, V, true, ignore_index, &ids));
    int64_t n = an_tensor_numel(targets), c = 0;
    for (int64_t i = 0; i < n; i++) c += ids.data[i] != ignore_index;
    an_i64_free(&ids);
    *counted = c;
    return AN_OK;
}

/* Element i of a contiguous tensor (a device pointer for CUDA tensors). */
static void *element_at(const an_tensor *t, int64_t i) {
    return (char *)an_tensor_data(t) + (size_t)i * an_dtype_size(t->dtype);
}

/* One float64 row of V for widening non-f64 rows; no memory when dtype is f64. */
typedef struct {
    double *data;
    size_t bytes;
} row_scratch;

static an_status scratch_new(an_ctx *ctx, an_dtype dtype, int64_t V, row_scratch *s) {
    *s = (row_scratch){NULL, 0};
    if (dtype == AN_F64) return AN_OK;
    size_t bytes = (size_t)V * sizeof(double);
    s->data = an_mem_alloc(ctx, AN_CPU, bytes);
    if (!s->data) return an_error_status(ctx);
    s->bytes = bytes;
    return AN_OK;
}

static void scratch_free(an_ctx *ctx, row_scratch *s) {
    an_mem_free(ctx, AN_CPU, s->data, s->bytes);
    *s = (row_scratch){NULL, 0};
}

/* Rows [i, i + *n) of x (rows, V) of `dtype` as float64: a pointer into x when it is f64 (every
 * remaining row at once), else row i widened into scratch (*n = 1). */
static double *widen_rows(const void *x, an_dtype dtype, int64_t i, int64_t rows, int64_t V, double *scratch,
                          int64_t *n) {
    if (dtype == AN_F64) {
        *n = rows - i;
        return (double *)x + i * V;
    }
    *n = 1;
    an_dtype_convert((const char *)x + (size_t)(i * V) * an_dtype_size(dtype), dtype, scratch, AN_F64, (size_t)V);
    return scratch;
}

/* Where the float64 result for rows [i, ...) of dst goes: dst itself when f64, else scratch,
 * which narrow_rows then rounds into dst. */
static double *result_rows(void *dst, an_dtype dtype, int64_t i, int64_t V, double *scratch) {
    return dtype == AN_F64 ? (double *)dst + i * V : scratch;
}

static void narrow_rows(const double *src, void *dst, an_dtype dtype, int64_t i, int64_t n, int64_t V) {
    if (dtype != AN_F64)
        an_dtype_convert(src, AN_F64, (char *)dst + (size_t)(i * V) * an_dtype_size(dtype), dtype, (size_t)(n * V));
}

/* Summed loss of rows (rows, V) of x; writes lse (rows), adds counted rows to *counted. */
static double rows_loss(const void *x, an_dtype dtype, const int64_t *targets, int64_t rows, int64_t V,
                        int64_t ignore_index, double *scratch, double *lse, int64_t *counted) {
    double total = 0.0;
    int64_t n;
    for (int64_t i = 0; i < rows; i += n) {
        const double *xi = widen_rows(x, dtype, i, rows, V, scratch, &n);
        total += an_cpu_cross_entropy(xi, targets + i, n, V, ignore_index, lse + i, counted);
    }
    return total;
}

/* dx (rows, V) = scale * (softmax(x) - onehot(target)), 0 on ignored rows; dx may be x. */
static void rows_loss_backward(const void *x, an_dtype dtype, const double *lse, const int64_t *targets, int64_t rows,
                               int64_t V, int64_t ignore_index, double scale, double *scratch, void *dx) {
    int64_t n;
    for (int64_t i = 0; i < rows; i += n) {
        const double *xi = widen_rows(x, dtype, i, rows, V, scratch, &n);
        double *di = result_rows(dx, dtype, i, V, scratch);
        an_cpu_cross_entropy_backward(xi, lse + i, targets + i, n, V, ignore_index, scale, di);
        narrow_rows(di, dx, dtype, i, n, V);
    }
}

/* 1 / the loss denominator (the normalizer, else the counted targets); 0 when nothing counts. */
static double loss_inv(const an_cross_entropy_opts *o, int64_t counted) {
    double denom = o->normalizer > 0 ? o->normalizer : (double)counted;
    return counted > 0 ? 1.0 / denom : 0.0; /* nothing counted: loss 0, gradients 0 */
}

/* Records the loss node: the saved lse, inv and the options. */
static an_node *record_loss(an_ctx *ctx, const an_op *op, an_tensor *loss, an_tensor *const *inputs, int n_inputs,
                            double inv, const an_cross_entropy_opts *o, an_tensor *lse) {
    an_node *node = an_tape_record(ctx, op, loss, inputs, n_inputs);
    if (node) {
        an_node_save(node, lse);
        node->args[0] = inv;
        node->iargs[0] = o->ignore_index;
        node->iargs[1] = o->chunk_rows;
    }
    return node;
}

/* The scalar loss total / denominator in like's dtype, recorded with the saved lse. */
/* The loss scalar is fp32 at least (f64 for f64 inputs): a bf16 loss could not show a change
 * smaller than 1/16 near 10, so logged curves would move in steps. */
static an_dtype loss_dtype(an_dtype input) { return input == AN_F64 ? AN_F64 : AN_F32; }

/* The upstream gradient (the loss's dtype) in the dtype the CUDA backward kernels read: usually the
 * seed 1.0, exact in bf16/f16; the normaliser is applied separately (node->args[0]). New reference. */
static an_tensor *grad_in(an_ctx *ctx, an_tensor *grad_out, an_dtype dtype) {
    return grad_out->dtype == dtype ? an_tensor_retain(grad_out) : an_tensor_to(ctx, grad_out, dtype, grad_out->device);
}

static an_tensor *finish_loss(an_ctx *ctx, const an_op *op, const an_tensor *like, an_tensor *const *inputs,
                              int n_inputs, double total, int64_t counted, const an_cross_entropy_opts *o,
                              an_tensor *lse) {
    double inv = loss_inv(o, counted);
    an_tensor *loss = an_tensor_scalar(ctx, loss_dtype(like->dtype), AN_CPU, total * inv);
    if (loss) record_loss(ctx, op, loss, inputs, n_inputs, inv, o, lse);
    return loss;
}

/* What a CUDA rows function may also produce: the input gradients at a unit upstream gradient,
 * computed in the forward while the logits exist (linear_cross_entropy; see its backward). */
typedef struct {
    double inv;            /* 1 / the loss denominator */
    bool want_h, want_w;   /* which gradients to form */
    an_tensor *dh, *dw;    /* out: (N, D) and (V, D), or NULL */
} cuda_grads;

/* Fills lse and loss_rows (N) fp32 on the device for cross_entropy or the chunked linear variant. */
typedef an_status (*cuda_rows_fn)(an_ctx *ctx, an_tensor *const *inputs, const an_cross_entropy_opts *o,
                                  an_tensor *lse, an_tensor *loss_rows, cuda_grads *grads);

/* The CUDA loss: targets checked on the device, rows(...) fills the per-row lse and losses, their
 * sum times inv becomes an fp32 device scalar, recorded like finish_loss does; gradients the rows
 * function formed are saved as saved[1] (dh) and saved[2] (dw), with iargs[2] = 1. */
static an_tensor *cuda_loss(an_ctx *ctx, const an_op *op, const an_tensor *like, an_tensor *const *inputs,
                            int n_inputs, const an_tensor *targets, int64_t V, const an_cross_entropy_opts *o,
                            cuda_rows_fn rows) {
    int64_t N = targets->shape[0], counted = o->checked_count;
    if (counted <= 0 && check_ids_cuda(ctx, op->name, "targets", targets, V, true, o->ignore_index, &counted) != AN_OK)
        return NULL;
    an_tensor *lse = an_tensor_new(ctx, AN_F32, AN_CUDA, 1, &N);                   /* (N) */
    an_tensor *loss_rows = lse ? an_tensor_new(ctx, AN_F32, AN_CUDA, 1, &N) : NULL; /* (N) */
    an_tensor *loss = loss_rows ? an_tensor_new(ctx, loss_dtype(like->dtype), AN_CUDA, 0, NULL) : NULL;
    bool recording = an_grad_enabled(ctx);
    cuda_grads grads = {loss_inv(o, counted), recording && inputs[0]->requires_grad,
                        recording && n_inputs > 2 && inputs[1]->requires_grad, NULL, NULL};
    an_status st = loss ? rows(ctx, inputs, o, lse, loss_rows, &grads) : an_error_status(ctx);
    if (st == AN_OK)
        st = an_cuda_loss_total(ctx, loss->dtype, an_tensor_data(loss_rows), N, grads.inv, an_tensor_data(loss));
    if (st == AN_OK) {
        an_node *node = record_loss(ctx, op, loss, inputs, n_inputs, grads.inv, o, lse);
        if (node && (grads.dh || grads.dw)) {
            an_node_save(node, grads.dh), an_node_save(node, grads.dw);
            node->iargs[2] = 1;
        }
    } else {
        an_tensor_release(loss);
        loss = NULL;
    }
    an_tensor_release(grads.dh), an_tensor_release(grads.dw);
    an_tensor_release(lse);
    an_tensor_release(loss_rows);
    return loss;
}

/* cross_entropy's rows on CUDA: inputs {logits (N, V), targets (N)}. */
static an_status cross_entropy_rows_cuda(an_ctx *ctx, an_tensor *const *inputs, const an_cross_entropy_opts *o,
                                         an_tensor *lse, an_tensor *loss_rows, cuda_grads *grads) {
    (void)grads; /* the backward forms dlogits from the logits it keeps */
    const an_tensor *logits = inputs[0], *targets = inputs[1];
    return an_cuda_cross_entropy_rows(ctx, logits->dtype, an_tensor_data(logits), an_tensor_data(targets),
                                      targets->dtype, logits->shape[0], logits->shape[1], o->ignore_index,
                                      an_tensor_data(lse), an_tensor_data(loss_rows));
}

an_tensor *an_cross_entropy(an_ctx *ctx, an_tensor *logits, an_tensor *targets, const an_cross_entropy_opts *opts) {
    AN_OP_INPUTS(logits, targets);
    an_cross_entropy_opts o;
    if (an_op_check_float_peers(ctx, "cross_entropy", &logits, 1) ||
        an_op_check_indices(ctx, "cross_entropy", "targets", targets, logits) ||
        check_rows(ctx, "cross_entropy", logits, "targets", targets) || resolve_opts(ctx, "cross_entropy", opts, DEFAULT_CHUNK_ROWS, &o))
        return NULL;
    if (logits->device == AN_CUDA)
        return cuda_loss(ctx, &an_op_cross_entropy, logits, (an_tensor *[]){logits, targets}, 2, targets,
                         logits->shape[1], &o, cross_entropy_rows_cuda);
    int64_t N = logits->shape[0], V = logits->shape[1];
    an_i64 tgt;
    if (read_ids(ctx, "cross_entropy", "targets", targets, V, true, o.ignore_index, &tgt) != AN_OK) return NULL;
    an_tensor *lse = an_tensor_new(ctx, AN_F64, AN_CPU, 1, &N); /* (N) */
    an_tensor *loss = NULL;
    row_scratch scratch = {NULL, 0};
    if (lse && scratch_new(ctx, logits->dtype, V, &scratch) == AN_OK) {
        int64_t counted = 0;
        double total = rows_loss(an_tensor_data(logits), logits->dtype, tgt.data, N, V, o.ignore_index, scratch.data,
                                 an_tensor_data(lse), &counted);
        loss = finish_loss(ctx, &an_op_cross_entropy, logits, (an_tensor *[]){logits, targets}, 2, total, counted, &o,
                           lse);
    }
    scratch_free(ctx, &scratch);
    an_i64_free(&tgt);
    an_tensor_release(lse);
    return loss;
}

an_status an_cross_entropy_backward(an_ctx *ctx, an_node *node, an_tensor *grad_out) {
    an_tensor *logits = node->inputs[0], *targets = node->inputs[1], *lse = node->saved[0];
    int64_t N = logits->shape[0], V = logits->shape[1];
    an_tensor *grad = an_op_new_like(ctx, logits, 2, logits->shape); /* (N, V) */
    if (grad && logits->device == AN_CUDA) { /* the upstream gradient is read on the device */
        an_tensor *g = grad_in(ctx, grad_out, logits->dtype);
        an_status st = g ? an_cuda_cross_entropy_backward(ctx, logits->dtype, an_tensor_data(logits), an_tensor_data(lse),
                                                          an_tensor_data(targets), targets->dtype, N, V, node->iargs[0],
                                                          an_tensor_data(g), node->args[0], an_tensor_data(grad))
                         : an_error_status(ctx);
        an_tensor_release(g);
        if (st != AN_OK) {
            an_tensor_release(grad);
            return st;
        }
        return an_node_accumulate(ctx, node, 0, grad);
    }
    double scale = grad ? an_tensor_get(grad_out, 0) * node->args[0] : 0.0;
    an_i64 tgt = {NULL, false};
    row_scratch scratch = {NULL, 0};
    an_status st = grad ? an_i64_read(ctx, targets, &tgt) : an_error_status(ctx);
    if (st == AN_OK) st = scratch_new(ctx, logits->dtype, V, &scratch);
    if (st == AN_OK)
        rows_loss_backward(an_tensor_data(logits), logits->dtype, an_tensor_data(lse), tgt.data, N, V, node->iargs[0],
                           scale, scratch.data, an_tensor_data(grad));
    scratch_free(ctx, &scratch);
    an_i64_free(&tgt);
    if (st != AN_OK) {
        an_tensor_release(grad);
        return st;
    }
    return an_node_accumulate(ctx, node, 0, grad);
}

/* ---- linear_cross_entropy: logits = hidden @ weight^T, chunk_rows rows at a time ---- */

/* hidden and weight in the GEMM dtype: f32 and f64 as they are, bf16/f16 widened to f32 copies. */
static an_status gemm_operands(an_ctx *ctx, an_tensor *hidden, an_tensor *weight, an_tensor **h, an_tensor **w) {
    if (hidden->dtype == AN_F32 || hidden->dtype == AN_F64) {
        *h = an_tensor_retain(hidden);
        *w = an_tensor_retain(weight);
        return AN_OK;
    }
    *h = an_tensor_to(ctx, hidden, AN_F32, AN_CPU);
    *w = *h ? an_tensor_to(ctx, weight, AN_F32, AN_CPU) : NULL;
    if (*w) return AN_OK;
    an_tensor_release(*h);
    *h = NULL;
    return an_error_status(ctx);
}

/* Row r of a 2-D tensor. */
static void *row_at(const an_tensor *t, int64_t r) {
    return (char *)an_tensor_data(t) + (size_t)(r * t->shape[1]) * an_dtype_size(t->dtype);
}

/* chunk (c, V) = h[r0 : r0 + c] (c, D) @ w (V, D)^T. */
static void chunk_logits(const an_tensor *h, const an_tensor *w, int64_t r0, int64_t c, an_tensor *chunk) {
    an_gemm_shape s = {1, c, w->shape[0], h->shape[1], false, true, false, false};
    an_cpu_gemm(&s, h->dtype, row_at(h, r0), an_tensor_data(w), an_tensor_data(chunk));
}

static bool any_counted(const int64_t *targets, int64_t n, int64_t ignore_index) {
    for (int64_t i = 0; i < n; i++)
        if (targets[i] != ignore_index) return true;
    return false;
}

/* Checks of hidden (N, D), weight (V, D) and targets (N). */
static an_status check_linear(an_ctx *ctx, const an_tensor *hidden, const an_tensor *weight,
                              const an_tensor *targets) {
    const char *op = "linear_cross_entropy";
    AN_TRY(an_op_check_float_peers(ctx, op, (an_tensor *[]){(an_tensor *)hidden, (an_tensor *)weight}, 2));
    AN_TRY(an_op_check_indices(ctx, op, "targets", targets, hidden));
    char dh[96], dw[96], dt[96];
    an_tensor_describe(hidden, dh, sizeof dh);
    an_tensor_describe(weight, dw, sizeof dw);
    an_tensor_describe(targets, dt, sizeof dt);
    AN_CHECK(ctx, hidden->ndim == 2 && hidden->shape[1] >= 1, AN_ERR_INPUT, "%s: hidden %s must be (N, D) with D >= 1",
             op, dh);
    AN_CHECK(ctx, weight->ndim == 2 && weight->shape[0] >= 1 && weight->shape[1] == hidden->shape[1], AN_ERR_INPUT,
             "%s: weight %s must be (V, %lld) with V >= 1 to match hidden %s", op, dw, (long long)hidden->shape[1], dh);
    AN_CHECK(ctx, targets->ndim == 1 && targets->shape[0] == hidden->shape[0], AN_ERR_INPUT,
             "%s: targets %s must be (%lld), one per row of hidden %s", op, dt, (long long)hidden->shape[0], dh);
    return AN_OK;
}

/* chunk (c, V) = hidden rows [r0, r0 + c) (c, D) @ weight (V, D)^T on the GPU, in the input dtype
 * with fp32 accumulation. */
static an_status chunk_logits_cuda(an_ctx *ctx, const an_tensor *hidden, const an_tensor *weight, int64_t r0,
                                   int64_t c, an_tensor *chunk) {
    an_gemm_shape s = {1, c, weight->shape[0], hidden->shape[1], false, true, false, false};
    return an_cuda_gemm(ctx, &s, hidden->dtype, row_at(hidden, r0), an_tensor_data(weight), an_tensor_data(chunk));
}

/* linear_cross_entropy's rows on CUDA, chunk_rows rows of logits at a time: inputs {hidden (N, D),
 * weight (V, D), targets (N)}. When the node will be recorded, each chunk's logits also become
 * dlogits in place at a unit upstream gradient, dh rows = dlogits @ w and dw += dlogits^T @ h
 * (fp32 accumulation over chunks for bf16/f16, see the top of the file): the backward then only
 * scales them, and the logits are computed once per step instead of twice. */
static an_status linear_rows_cuda(an_ctx *ctx, an_tensor *const *inputs, const an_cross_entropy_opts *o,
                                  an_tensor *lse, an_tensor *loss_rows, cuda_grads *grads) {
    const an_tensor *hidden = inputs[0], *weight = inputs[1], *targets = inputs[2];
    int64_t N = hidden->shape[0], D = hidden->shape[1], V = weight->shape[0];
    int64_t chunk_rows = o->chunk_rows < N ? o->chunk_rows : N;
    an_dtype dt = hidden->dtype;
    bool wide_dw = grads->want_w && dt != AN_F32 && N > chunk_rows; /* several chunks add into dw */
    int64_t vd[2] = {V, D};
    an_tensor *chunk = an_tensor_new(ctx, dt, AN_CUDA, 2, (int64_t[]){chunk_rows ? chunk_rows : 1, V}); /* (chunk_rows, V) */
    an_tensor *dh = chunk && grads->want_h ? an_tensor_new(ctx, dt, AN_CUDA, 2, hidden->shape) : NULL; /* (N, D) */
    /* (V, D); fp32 when it accumulates over chunks (the backward casts and scales it in one pass) */
    an_tensor *dw = chunk && grads->want_w ? an_tensor_new(ctx, wide_dw ? AN_F32 : dt, AN_CUDA, 2, vd) : NULL;
    an_status st = chunk && (dh || !grads->want_h) && (dw || !grads->want_w) ? AN_OK : an_error_status(ctx);
    /* With gradients, on an H100: the logits GEMM also leaves each row's running log-sum-exp per
     * column tile (stats, (chunk_rows, tiles) float pairs), so the loss pass reads the logits once */
    const void *gemm_ptrs[] = {an_tensor_data(hidden), an_tensor_data(weight), chunk ? an_tensor_data(chunk) : NULL};
    bool with_stats = st == AN_OK && (dh || dw) && an_cuda_logits_stats_apply(ctx, dt, chunk_rows, D, V, gemm_ptrs, 3);
    int64_t tiles = with_stats ? an_cuda_logits_stats_tiles(V) : 0, stats_shape[] = {chunk_rows, tiles, 2};
    an_tensor *stats = with_stats ? an_tensor_new(ctx, AN_F32, AN_CUDA, 3, stats_shape) : NULL; /* (max, sum) pairs */
    if (with_stats && !stats) st = an_error_status(ctx);
    for (int64_t r0 = 0; st == AN_OK && r0 < N; r0 += chunk_rows) {
        int64_t c = N - r0 < chunk_rows ? N - r0 : chunk_rows;
        /* lse and losses, and with gradients the dlogits in place of this chunk's logits */
        if (with_stats) {
            st = an_cuda_gemm_logits_stats(ctx, dt, row_at(hidden, r0), c, D, an_tensor_data(weight), V,
                                           an_tensor_data(chunk), an_tensor_data(stats));
            if (st == AN_OK)
                st = an_cuda_cross_entropy_stats_grad(ctx, dt, an_tensor_data(chunk), an_tensor_data(stats), tiles,
                                                      element_at(targets, r0), targets->dtype, c, V, o->ignore_index,
                                                      grads->inv, element_at(lse, r0), element_at(loss_rows, r0));
        } else {
            st = chunk_logits_cuda(ctx, hidden, weight, r0, c, chunk);
            if (st == AN_OK && !(dh || dw))
                st = an_cuda_cross_entropy_rows(ctx, dt, an_tensor_data(chunk), element_at(targets, r0),
                                                targets->dtype, c, V, o->ignore_index, element_at(lse, r0),
                                                element_at(loss_rows, r0));
            else if (st == AN_OK)
                st = an_cuda_cross_entropy_rows_grad(ctx, dt, an_tensor_data(chunk), element_at(targets, r0),
                                                     targets->dtype, c, V, o->ignore_index, grads->inv,
                                                     element_at(lse, r0), element_at(loss_rows, r0));
        }
        if (st != AN_OK || !(dh || dw)) continue;
        if (st == AN_OK && dh) { /* dh rows (c, D) = dlogits (c, V) @ w (V, D) */
            an_gemm_shape s = {1, c, D, V, false, false, false, false};
            st = an_cuda_gemm(ctx, &s, dt, an_tensor_data(chunk), an_tensor_data(weight), row_at(dh, r0));
        }
        if (st == AN_OK && dw) { /* dw (V, D) (+)= dlogits^T (V, c) @ h rows (c, D), into fp32 over chunks */
            an_gemm_shape s = {1, V, D, c, true, false, false, r0 > 0};
            st = wide_dw ? an_cuda_gemm_f32_out(ctx, &s, dt, an_tensor_data(chunk), row_at(hidden, r0),
                                                an_tensor_data(dw))
                         : an_cuda_gemm(ctx, &s, dt, an_tensor_data(chunk), row_at(hidden, r0), an_tensor_data(dw));
        }
    }
    if (st == AN_OK && dw && N == 0) st = an_cuda_memset(ctx, an_tensor_data(dw), 0, an_tensor_nbytes(dw));
    an_tensor_release(chunk), an_tensor_release(stats);
    if (st == AN_OK) {
        grads->dh = dh, grads->dw = dw;
    } else {
        an_tensor_release(dh), an_tensor_release(dw);
    }
    return st;
}

an_tensor *an_linear_cross_entropy(an_ctx *ctx, an_tensor *hidden, an_tensor *weight, an_tensor *targets,
                                   const an_cross_entropy_opts *opts) {
    AN_OP_INPUTS(hidden, weight, targets);
    an_cross_entropy_opts o;
    bool weight_grad_cuda = hidden->device == AN_CUDA && weight->requires_grad && an_grad_enabled(ctx);
    if (check_linear(ctx, hidden, weight, targets) ||
        resolve_opts(ctx, "linear_cross_entropy", opts, weight_grad_cuda ? WEIGHT_GRAD_CHUNK_ROWS : DEFAULT_CHUNK_ROWS,
                     &o))
        return NULL;
    if (hidden->device == AN_CUDA)
        return cuda_loss(ctx, &an_op_linear_cross_entropy, hidden, (an_tensor *[]){hidden, weight, targets}, 3,
                         targets, weight->shape[0], &o, linear_rows_cuda);
    int64_t N = hidden->shape[0], V = weight->shape[0];
    int64_t chunk_rows = o.chunk_rows < N ? o.chunk_rows : N;
    an_i64 tgt;
    if (read_ids(ctx, "linear_cross_entropy", "targets", targets, V, true, o.ignore_index, &tgt) != AN_OK) return NULL;
    an_tensor *h = NULL, *w = NULL, *lse = NULL, *chunk = NULL, *loss = NULL;
    row_scratch scratch = {NULL, 0};
    an_status st = gemm_operands(ctx, hidden, weight, &h, &w);
    if (st == AN_OK) {
        lse = an_tensor_new(ctx, AN_F64, AN_CPU, 1, &N);                                   /* (N) */
        chunk = lse ? an_tensor_new(ctx, h->dtype, AN_CPU, 2, (int64_t[]){chunk_rows, V}) : NULL; /* (chunk_rows, V) */
        st = chunk ? scratch_new(ctx, h->dtype, V, &scratch) : an_error_status(ctx);
    }
    if (st == AN_OK) {
        double total = 0.0, *lse_rows = an_tensor_data(lse);
        int64_t counted = 0;
        for (int64_t r0 = 0; r0 < N; r0 += chunk_rows) {
            int64_t c = N - r0 < chunk_rows ? N - r0 : chunk_rows;
            if (!any_counted(tgt.data + r0, c, o.ignore_index)) { /* nothing to learn here: skip the GEMM */
                memset(lse_rows + r0, 0, (size_t)c * sizeof(double));
                continue;
            }
            chunk_logits(h, w, r0, c, chunk);
            total += rows_loss(an_tensor_data(chunk), h->dtype, tgt.data + r0, c, V, o.ignore_index, scratch.data,
                               lse_rows + r0, &counted);
        }
        loss = finish_loss(ctx, &an_op_linear_cross_entropy, hidden, (an_tensor *[]){hidden, weight, targets}, 3, total,
                           counted, &o, lse);
    }
    scratch_free(ctx, &scratch);
    an_i64_free(&tgt);
    an_tensor_release(h), an_tensor_release(w), an_tensor_release(lse), an_tensor_release(chunk);
    return loss;
}

/* The gradient computed in the GEMM dtype, converted to the input's dtype, into node input i. */
static an_status accumulate_as(an_ctx *ctx, an_node *node, int i, an_tensor *grad) {
    an_tensor *input = node->inputs[i];
    if (grad && grad->dtype != input->dtype) {
        an_tensor *converted = an_tensor_to(ctx, grad, input->dtype, AN_CPU);
        an_tensor_release(grad);
        grad = converted;
    }
    return an_node_accumulate(ctx, node, i, grad);
}

/* linear_cross_entropy's backward on CUDA: the forward formed dh and dw at a unit upstream
 * gradient (saved[1], saved[2]); each wanted one is scaled in place by the device scalar grad_out
 * and handed to its input (the node runs once and drops its saved tensors after: no copy, and
 * the input adopts it as its gradient when it has none yet). */
static an_status linear_cross_entropy_backward_cuda(an_ctx *ctx, an_node *node, an_tensor *grad_out) {
    AN_CHECK(ctx, node->iargs[2] == 1 && node->n_saved == 3, AN_ERR_INTERNAL,
             "linear_cross_entropy backward: the forward formed no gradients");
    an_tensor *g = grad_in(ctx, grad_out, node->inputs[0]->dtype);
    an_status st = g ? AN_OK : an_error_status(ctx);
    for (int i = 0; i < 2 && st == AN_OK; i++) {
        if (!an_node_needs_grad(node, i)) continue;
        an_tensor *unit = node->saved[1 + i]; /* dh (N, D) or dw (V, D); this reference moves to the input */
        AN_CHECK(ctx, unit != NULL, AN_ERR_INTERNAL, "linear_cross_entropy backward: input %d gained requires_grad "
                 "after the forward", i);
        node->saved[1 + i] = NULL;
        an_dtype want = node->inputs[i]->dtype;
        if (unit->dtype != want) { /* dw summed over chunks in fp32: cast and scaled in one pass */
            an_tensor *cast = an_tensor_new(ctx, want, AN_CUDA, unit->ndim, unit->shape);
            st = cast ? an_cuda_cast_mul(ctx, an_tensor_data(unit), an_tensor_data(cast), want, an_tensor_numel(unit),
                                         an_tensor_data(g))
                      : an_error_status(ctx);
            an_tensor_release(unit);
            unit = cast;
        } else {
            st = an_cuda_binary(ctx, AN_BINARY_MUL, unit->dtype, an_tensor_data(unit), an_tensor_numel(unit),
                                an_tensor_data(g), 1, an_tensor_data(unit));
        }
        if (st == AN_OK) st = an_node_accumulate(ctx, node, i, unit);
        else an_tensor_release(unit);
    }
    an_tensor_release(g);
    return st;
}

an_status an_linear_cross_entropy_backward(an_ctx *ctx, an_node *node, an_tensor *grad_out) {
    an_tensor *hidden = node->inputs[0], *weight = node->inputs[1], *targets = node->inputs[2];
    if (hidden->device == AN_CUDA) return linear_cross_entropy_backward_cuda(ctx, node, grad_out);
    const double *lse = an_tensor_data(node->saved[0]); /* (N) */
    int64_t N = hidden->shape[0], D = hidden->shape[1], V = weight->shape[0], ignore_index = node->iargs[0];
    int64_t chunk_rows = node->iargs[1] < N ? node->iargs[1] : N;
    double scale = an_tensor_get(grad_out, 0) * node->args[0];
    bool need_h = an_node_needs_grad(node, 0), need_w = an_node_needs_grad(node, 1);

    an_tensor *h = NULL, *w = NULL, *chunk = NULL, *dh = NULL, *dw = NULL;
    an_i64 tgt = {NULL, false};
    row_scratch scratch = {NULL, 0};
    an_status st = gemm_operands(ctx, hidden, weight, &h, &w);
    if (st == AN_OK) {
        an_dtype dt = h->dtype;
        chunk = an_tensor_new(ctx, dt, AN_CPU, 2, (int64_t[]){chunk_rows, V}); /* (chunk_rows, V) */
        if (chunk && need_h) dh = an_tensor_new(ctx, dt, AN_CPU, 2, (int64_t[]){N, D});
        if (chunk && need_w) dw = an_tensor_new(ctx, dt, AN_CPU, 2, (int64_t[]){V, D});
        st = an_error_status(ctx);
    }
    if (st == AN_OK) st = scratch_new(ctx, h->dtype, V, &scratch);
    if (st == AN_OK) st = an_i64_read(ctx, targets, &tgt);
    if (st == AN_OK) {
        bool dw_written = false;
        for (int64_t r0 = 0; r0 < N; r0 += chunk_rows) {
            int64_t c = N - r0 < chunk_rows ? N - r0 : chunk_rows;
            if (!any_counted(tgt.data + r0, c, ignore_index)) {
                if (dh) memset(row_at(dh, r0), 0, (size_t)(c * D) * an_dtype_size(dh->dtype));
                continue;
            }
            /* dlogits of this chunk, in place of its recomputed logits */
            chunk_logits(h, w, r0, c, chunk);
            rows_loss_backward(an_tensor_data(chunk), h->dtype, lse + r0, tgt.data + r0, c, V, ignore_index, scale,
                               scratch.data, an_tensor_data(chunk));
            if (dh) { /* dh rows (c, D) = dlogits (c, V) @ w (V, D) */
                an_gemm_shape s = {1, c, D, V, false, false, false, false};
                an_cpu_gemm(&s, h->dtype, an_tensor_data(chunk), an_tensor_data(w), row_at(dh, r0));
            }
            if (dw) { /* dw (V, D) += dlogits^T (V, c) @ h rows (c, D) */
                an_gemm_shape s = {1, V, D, c, true, false, false, dw_written};
                an_cpu_gemm(&s, h->dtype, an_tensor_data(chunk), row_at(h, r0), an_tensor_data(dw));
                dw_written = true;
            }
        }
        if (dw && !dw_written) memset(an_tensor_data(dw), 0, an_tensor_nbytes(dw));
    }
    scratch_free(ctx, &scratch);
    an_i64_free(&tgt);
    an_tensor_release(h), an_tensor_release(w), an_tensor_release(chunk);
    if (st == AN_OK && dh) st = accumulate_as(ctx, node, 0, dh);
    else an_tensor_release(dh);
    if (st == AN_OK && dw) st = accumulate_as(ctx, node, 1, dw);
    else an_tensor_release(dw);
    return st;
}

/* ---- log_softmax_gather ---- */

an_tensor *an_log_softmax_gather(an_ctx *ctx, an_tensor *logits, an_tensor *ids) {
    AN_OP_INPUTS(logits, ids);
    const char *op = "log_softmax_gather";
    if (an_op_check_float_peers(ctx, op, &logits, 1) || an_op_check_indices(ctx, op, "ids", ids, logits) ||
        check_rows(ctx, op, logits, "ids", ids))
        return NULL;
    int64_t N = logits->shape[0], V = logits->shape[1];
    if (logits->device == AN_CUDA) {
        int64_t counted;
        if (check_ids_cuda(ctx, op, "ids", ids, V, false, 0, &counted) != AN_OK) return NULL;
        an_tensor *lse = an_tensor_new(ctx, AN_F32, AN_CUDA, 1, &N);     /* (N) */
        an_tensor *out = lse ? an_op_new_like(ctx, logits, 1, &N) : NULL; /* (N) */
        an_status st = out ? an_cuda_log_softmax_gather(ctx, logits->dtype, an_tensor_data(logits), an_tensor_data(ids),
                                                        ids->dtype, N, V, an_tensor_data(lse), an_tensor_data(out))
                           : an_error_status(ctx);
        if (st == AN_OK) {
            an_node *node = an_tape_record(ctx, &an_op_log_softmax_gather, out, (an_tensor *[]){logits, ids}, 2);
            if (node) an_node_save(node, lse);
        } else {
            an_tensor_release(out);
            out = NULL;
        }
        an_tensor_release(lse);
        return out;
    }
    an_i64 id;
    if (read_ids(ctx, op, "ids", ids, V, false, 0, &id) != AN_OK) return NULL;
    an_tensor *lse = an_tensor_new(ctx, AN_F64, AN_CPU, 1, &N);      /* (N) */
    an_tensor *out = lse ? an_op_new_like(ctx, logits, 1, &N) : NULL; /* (N) */
    row_scratch scratch = {NULL, 0};
    an_f64 res = {NULL, false};
    an_status st = out ? scratch_new(ctx, logits->dtype, V, &scratch) : an_error_status(ctx);
    if (st == AN_OK) st = an_f64_write(ctx, out, &res);
    if (st == AN_OK) {
        int64_t n;
        for (int64_t i = 0; i < N; i += n) {
            const double *xi = widen_rows(an_tensor_data(logits), logits->dtype, i, N, V, scratch.data, &n);
            an_cpu_log_softmax_gather(xi, id.data + i, n, V, (double *)an_tensor_data(lse) + i, res.data + i);
        }
        an_f64_commit(out, &res);
        an_node *node = an_tape_record(ctx, &an_op_log_softmax_gather, out, (an_tensor *[]){logits, ids}, 2);
        if (node) an_node_save(node, lse);
    }
    scratch_free(ctx, &scratch);
    an_i64_free(&id);
    an_tensor_release(lse);
    if (st != AN_OK) {
        an_tensor_release(out);
        return NULL;
    }
    return out;
}

an_status an_log_softmax_gather_backward(an_ctx *ctx, an_node *node, an_tensor *grad_out) {
    an_tensor *logits = node->inputs[0], *ids = node->inputs[1];
    const double *lse = an_tensor_data(node->saved[0]); /* (N) */
    int64_t N = logits->shape[0], V = logits->shape[1];
    an_dtype dtype = logits->dtype;
    an_tensor *grad = an_op_new_like(ctx, logits, 2, logits->shape); /* (N, V) */
    if (grad && logits->device == AN_CUDA) { /* lse is (N) f32 there */
        an_status st = an_cuda_log_softmax_gather_backward(ctx, dtype, an_tensor_data(logits),
                                                           an_tensor_data(node->saved[0]), an_tensor_data(ids),
                                                           ids->dtype, an_tensor_data(grad_out), N, V,
                                                           an_tensor_data(grad));
        if (st != AN_OK) {
            an_tensor_release(grad);
            return st;
        }
        return an_node_accumulate(ctx, node, 0, grad);
    }
    an_i64 id = {NULL, false};
    an_f64 g = {NULL, false}; /* (N) */
    row_scratch scratch = {NULL, 0};
    an_status st = grad ? an_i64_read(ctx, ids, &id) : an_error_status(ctx);
    if (st == AN_OK) st = an_f64_read(ctx, grad_out, &g);
    if (st == AN_OK) st = scratch_new(ctx, dtype, V, &scratch);
    if (st == AN_OK) {
        int64_t n;
        for (int64_t i = 0; i < N; i += n) {
            const double *xi = widen_rows(an_tensor_data(logits), dtype, i, N, V, scratch.data, &n);
            double *di = result_rows(an_tensor_data(grad), dtype, i, V, scratch.data);
            an_cpu_log_softmax_gather_backward(xi, lse + i, id.data + i, g.data + i, n, V, di);
            narrow_rows(di, an_tensor_data(grad), dtype, i, n, V);
        }
    }
    scratch_free(ctx, &scratch);
    an_f64_free(&g);
    an_i64_free(&id);
    if (st != AN_OK) {
        an_tensor_release(grad);
        return st;
    }
    return an_node_accumulate(ctx, node, 0, grad);
}
