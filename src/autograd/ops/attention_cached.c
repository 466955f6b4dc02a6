/* attention_cached.c — an_attention_cached: decode attention over a KV cache, inference only
 * (it records no tape node and refuses inputs that require grad). Kernels: cpu/attention_cached.c
 * (float64) and an_cuda_attention_cached in kernels/attention.cu (fp32 math). rows and lengths
 * come either from the host (validated here; on CUDA uploaded per call, a synchronisation) or,
 * on CUDA, from the device as the KV cache keeps them (validated by the caller against its host
 * mirror: model.c's cached forward), which makes the call capturable in a CUDA graph. */
#include "autograd/ops.h"

#include "autograd/cpu/cpu.h"     /* an_cpu_attention_cached, an_f64_*, an_i64_* */
#include "autograd/op_support.h"  /* AN_OP_INPUTS, checks */
#include "kernels/cuda.h"         /* an_cuda_attention_cached */

an_tensor *an_attention_cached(an_ctx *ctx, an_tensor *q, an_tensor *k_cache, an_tensor *v_cache, an_tensor *rows,
                               an_tensor *lengths, double scale) {
    AN_OP_INPUTS(q, k_cache, v_cache, rows, lengths);
    if (an_op_check_float_peers(ctx, "attention_cached", (an_tensor *[]){q, k_cache, v_cache}, 3)) return NULL;
    char dq[96], dk[96];
    an_tensor_describe(q, dq, sizeof dq);
    an_tensor_describe(k_cache, dk, sizeof dk);
    AN_CHECK_NULL(ctx, !(an_grad_enabled(ctx) && q->requires_grad), AN_ERR_INPUT,
                  "attention_cached: inference only, but q requires grad (use an_no_grad_begin)");
    AN_CHECK_NULL(ctx, q->ndim == 4 && k_cache->ndim == 4 && an_tensor_same_shape(k_cache, v_cache), AN_ERR_INPUT,
                  "attention_cached: q %s and caches %s must be 4-D and the caches alike", dq, dk);
    int64_t B = q->shape[0], T = q->shape[1], Hq = q->shape[2], D = q->shape[3];
    int64_t Bc = k_cache->shape[0], S = k_cache->shape[1], Hkv = k_cache->shape[2];
    AN_CHECK_NULL(ctx, k_cache->shape[3] == D && Hkv > 0 && Hq % Hkv == 0, AN_ERR_INPUT,
                  "attention_cached: q %s does not match cache %s (head_dim, kv heads dividing q heads)", dq, dk);
    AN_CHECK_NULL(ctx, rows->ndim == 1 && rows->shape[0] == B && lengths->ndim == 1 && lengths->shape[0] == Bc &&
                           rows->dtype == AN_I64 && lengths->dtype == AN_I64 && rows->device == lengths->device &&
                           (rows->device == AN_CPU || rows->device == q->device),
                  AN_ERR_INPUT, "attention_cached: rows must be (%lld) and lengths (%lld), i64, both on the CPU or both on q's device",
                  (long long)B, (long long)Bc);
    if (rows->device == AN_CPU) {
        const int64_t *r = an_tensor_data(rows), *len = an_tensor_data(lengths);
        for (int64_t b = 0; b < B; b++)
            AN_CHECK_NULL(ctx, r[b] >= 0 && r[b] < Bc && len[r[b]] >= 0 && len[r[b]] + T <= S, AN_ERR_INPUT,
                          "attention_cached: row %lld -> cache row %lld with %lld + %lld keys exceeds capacity %lld",
                          (long long)b, (long long)r[b], (long long)(r[b] >= 0 && r[b] < Bc ? len[r[b]] : -1),
                          (long long)T, (long long)S);
    }
    an_tensor *out = an_op_new_like(ctx, q, 4, q->shape);
    if (!out) return NULL;
    if (q->device == AN_CUDA) {
        /* host tables travel to the device for this call (the device ones are used as they are) */
        an_tensor *dev_rows = rows->device == AN_CPU ? an_tensor_to(ctx, rows, AN_I64, AN_CUDA) : an_tensor_retain(rows);
        an_tensor *dev_len = rows->device == AN_CPU ? an_tensor_to(ctx, lengths, AN_I64, AN_CUDA) : an_tensor_retain(lengths);
        an_attention_shape sh = {B, T, Hq, Hkv, D, scale};
        an_status st = dev_rows && dev_len ? an_cuda_attention_cached(ctx, &sh, S, Bc, q->dtype, an_tensor_data(q),
                                                                      an_tensor_data(k_cache), an_tensor_data(v_cache),
                                                                      an_tensor_data(dev_rows), an_tensor_data(dev_len),
                                                                      an_tensor_data(out))
                                           : an_error_status(ctx);
        an_tensor_release(dev_rows), an_tensor_release(dev_len);
        if (st != AN_OK) {
            an_tensor_release(out);
            return NULL;
        }
        return out;
    }
    const int64_t *r = an_tensor_data(rows), *len = an_tensor_data(lengths);
    an_f64 in[3], res;
    an_status st = an_f64_read_all(ctx, (an_tensor *[]){q, k_cache, v_cache}, 3, in);
    if (st == AN_OK && (st = an_f64_write(ctx, out, &res)) == AN_OK) {
        an_attention_shape sh = {B, T, Hq, Hkv, D, scale};
        st = an_cpu_attention_cached(ctx, &sh, S, in[0].data, in[1].data, in[2].data, r, len, res.data);
        if (st == AN_OK) an_f64_commit(out, &res);
        else an_f64_free(&res);
    }
    an_f64_free_all(in, 3);
    if (st != AN_OK) {
        an_tensor_release(out);
        return NULL;
    }
    return out;
}
