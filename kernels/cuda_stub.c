/* cuda_stub.c — the CUDA interface in a build without CUDA: every call fails with a message that
 * names the missing backend, so nothing silently runs on the wrong device. */
#include "kernels/cuda.h"

#include <stdio.h>

#define NO_CUDA(ctx) \
    an_error_set((ctx), AN_ERR_INPUT, __FILE__, __LINE__, "this anneal was built without CUDA (configure with nvcc on PATH)")

int an_cuda_available_in_build(void) { return 0; }

an_cuda_state *an_cuda_state_new(int index, char *why, size_t why_size) {
    (void)index;
    snprintf(why, why_size, "built without CUDA");
    return NULL;
}
void an_cuda_state_free(an_cuda_state *state) { (void)state; }
void *an_cuda_malloc(an_cuda_state *state, size_t bytes, char *why, size_t why_size) {
    (void)state, (void)bytes;
    snprintf(why, why_size, "built without CUDA");
    return NULL;
}
void an_cuda_free(an_cuda_state *state, void *ptr) { (void)state, (void)ptr; }
an_status an_cuda_memory_stats(an_ctx *ctx, an_cuda_mem_stats *out) {
    (void)out;
    return NO_CUDA(ctx);
}
an_status an_cuda_empty_cache(an_ctx *ctx) { return NO_CUDA(ctx); }
an_status an_cuda_memcpy(an_ctx *ctx, void *dst, an_device dd, const void *src, an_device sd, size_t bytes) {
    (void)dst, (void)dd, (void)src, (void)sd, (void)bytes;
    return NO_CUDA(ctx);
}
an_status an_cuda_memset(an_ctx *ctx, void *ptr, int value, size_t bytes) {
    (void)ptr, (void)value, (void)bytes;
    return NO_CUDA(ctx);
}
an_status an_cuda_synchronize(an_ctx *ctx) { return NO_CUDA(ctx); }
an_status an_cuda_read_mark(an_ctx *ctx) { return NO_CUDA(ctx); }
an_status an_cuda_read_marked(an_ctx *ctx, void *dst, const void *src, size_t bytes) {
    (void)dst, (void)src, (void)bytes;
    return NO_CUDA(ctx);
}
an_status an_cuda_memcpy_2d(an_ctx *ctx, void *dst, size_t dst_pitch, const void *src, size_t src_pitch,
                            size_t width, size_t height) {
    (void)dst, (void)dst_pitch, (void)src, (void)src_pitch, (void)width, (void)height;
    return NO_CUDA(ctx);
}
an_status an_cuda_set_pdl(an_ctx *ctx, int on) {
    (void)on;
    return NO_CUDA(ctx);
}
an_status an_cuda_set_wgmma(an_ctx *ctx, bool on) {
    (void)on;
    return NO_CUDA(ctx);
}
an_status an_cuda_set_logits_stats(an_ctx *ctx, bool on) {
    (void)on;
    return NO_CUDA(ctx);
}
an_status an_cuda_set_projections(an_ctx *ctx, bool on) {
    (void)on;
    return NO_CUDA(ctx);
}
an_status an_cuda_set_rope_epilogue(an_ctx *ctx, bool on) {
    (void)on;
    return NO_CUDA(ctx);
}
an_status an_cuda_set_gemm_group_rows(an_ctx *ctx, int rows) {
    (void)rows;
    return NO_CUDA(ctx);
}
an_status an_cuda_set_lora_grads(an_ctx *ctx, bool on) {
    (void)on;
    return NO_CUDA(ctx);
}
an_status an_cuda_set_column_sums(an_ctx *ctx, bool on) {
    (void)on;
    return NO_CUDA(ctx);
}
int an_cuda_logits_stats_apply(an_ctx *ctx, an_dtype dtype, int64_t M, int64_t K, int64_t N, const void *const *ptrs,
                               int n_ptrs) {
    (void)ctx, (void)dtype, (void)M, (void)K, (void)N, (void)ptrs, (void)n_ptrs;
    return 0;
}
an_status an_cuda_set_attention_cudnn(an_ctx *ctx, bool on) {
    (void)on;
    return NO_CUDA(ctx);
}
an_status an_cuda_set_attention_wgmma(an_ctx *ctx, bool on) {
    (void)on;
    return NO_CUDA(ctx);
}
an_status an_cuda_set_attention_turns_rope(an_ctx *ctx, bool on) {
    (void)on;
    return NO_CUDA(ctx);
}
an_status an_cuda_set_attention_cudnn_engine(an_ctx *ctx, int backward, int engine) {
    (void)backward, (void)engine;
    return NO_CUDA(ctx);
}
an_status an_cuda_set_attention_cudnn_deterministic(an_ctx *ctx, bool on) {
    (void)on;
    return NO_CUDA(ctx);
}
an_status an_cuda_set_attention_cudnn_padding_mask(an_ctx *ctx, bool always) {
    (void)always;
    return NO_CUDA(ctx);
}
int an_cuda_cudnn_version(void) { return 0; }
an_status an_cuda_event_record(an_ctx *ctx, void **event) {
    (void)event;
    return NO_CUDA(ctx);
}
an_status an_cuda_event_elapsed(an_ctx *ctx, void *start, void *stop, double *ms) {
    (void)start, (void)stop, (void)ms;
    return NO_CUDA(ctx);
}
void an_cuda_event_free(void *event) { (void)event; }
an_status an_cuda_copy_bandwidth(an_ctx *ctx, size_t bytes, int reps, double *bytes_per_second) {
    (void)bytes, (void)reps, (void)bytes_per_second;
    return NO_CUDA(ctx);
}
an_status an_cuda_fill_bits(an_ctx *ctx, void *ptr, int64_t n, int elem_size, uint64_t bits) {
    (void)ptr, (void)n, (void)elem_size, (void)bits;
    return NO_CUDA(ctx);
}
an_status an_cuda_cast(an_ctx *ctx, const void *src, an_dtype sdt, void *dst, an_dtype ddt, size_t n) {
    (void)src, (void)sdt, (void)dst, (void)ddt, (void)n;
    return NO_CUDA(ctx);
}
an_status an_cuda_cast_mul(an_ctx *ctx, const float *src, void *dst, an_dtype dst_dtype, int64_t n, const void *scale) {
    (void)src, (void)dst, (void)dst_dtype, (void)n, (void)scale;
    return NO_CUDA(ctx);
}
an_status an_cuda_add_into(an_ctx *ctx, void *dst, const void *src, an_dtype dtype, int64_t n) {
    (void)dst, (void)src, (void)dtype, (void)n;
    return NO_CUDA(ctx);
}
an_status an_cuda_binary(an_ctx *ctx, an_binary_kind kind, an_dtype dtype, const void *a, int64_t n, const void *b,
                         int64_t nb, void *out) {
    (void)kind, (void)dtype, (void)a, (void)n, (void)b, (void)nb, (void)out;
    return NO_CUDA(ctx);
}
an_status an_cuda_binary_backward(an_ctx *ctx, an_binary_kind kind, an_dtype dtype, const void *a, int64_t n,
                                  const void *b, int64_t nb, const void *grad_out, void *grad_a, void *grad_b) {
    (void)kind, (void)dtype, (void)a, (void)n, (void)b, (void)nb, (void)grad_out, (void)grad_a, (void)grad_b;
    return NO_CUDA(ctx);
}
an_status an_cuda_scale(an_ctx *ctx, an_dtype dtype, const void *x, int64_t n, double s, void *out) {
    (void)dtype, (void)x, (void)n, (void)s, (void)out;
    return NO_CUDA(ctx);
}
an_status an_cuda_swiglu(an_ctx *ctx, an_dtype dtype, const void *gate, const void *up, int64_t n, void *out) {
    (void)dtype, (void)gate, (void)up, (void)n, (void)out;
    return NO_CUDA(ctx);
}
an_status an_cuda_swiglu_rows(an_ctx *ctx, an_dtype dtype, const void *gate_up, int64_t rows, int64_t n, void *out) {
    (void)dtype, (void)gate_up, (void)rows, (void)n, (void)out;
    return NO_CUDA(ctx);
}
an_status an_cuda_swiglu_backward(an_ctx *ctx, an_dtype dtype, const void *gate, const void *up, int64_t n,
                                  const void *grad_out, void *grad_gate, void *grad_up) {
    (void)dtype, (void)gate, (void)up, (void)n, (void)grad_out, (void)grad_gate, (void)grad_up;
    return NO_CUDA(ctx);
}
an_status an_cuda_sum(an_ctx *ctx, an_dtype dtype, const void *x, int64_t n, double scale, void *out) {
    (void)dtype, (void)x, (void)n, (void)scale, (void)out;
    return NO_CUDA(ctx);
}
an_status an_cuda_fill_from_scalar(an_ctx *ctx, an_dtype dtype, const void *x, double scale, int64_t n, void *out) {
    (void)dtype, (void)x, (void)scale, (void)n, (void)out;
    return NO_CUDA(ctx);
}
an_status an_cuda_gemm(an_ctx *ctx, const an_gemm_shape *shape, an_dtype dtype, const void *a, const void *b, void *c) {
    (void)shape, (void)dtype, (void)a, (void)b, (void)c;
    return NO_CUDA(ctx);
}
an_status an_cuda_gemm_bias(an_ctx *ctx, const an_gemm_shape *shape, an_dtype dtype, const void *a, const void *b,
                            const void *bias, void *c) {
    (void)shape, (void)dtype, (void)a, (void)b, (void)bias, (void)c;
    return NO_CUDA(ctx);
}
an_status an_cuda_gemm_bias_grad(an_ctx *ctx, const an_gemm_shape *shape, an_dtype dtype, const void *a, const void *b,
                                 void *grad_bias, void *c) {
    (void)shape, (void)dtype, (void)a, (void)b, (void)grad_bias, (void)c;
    return NO_CUDA(ctx);
}
an_status an_cuda_gemm_scaled(an_ctx *ctx, const an_gemm_shape *shape, an_dtype dtype, double alpha, const void *a,
                              const void *b, void *c) {
    (void)shape, (void)dtype, (void)alpha, (void)a, (void)b, (void)c;
    return NO_CUDA(ctx);
}
an_status an_cuda_gemm_addend(an_ctx *ctx, const an_gemm_shape *shape, an_dtype dtype, const void *a, const void *b,
                              const void *bias, const void *addend, void *c) {
    (void)shape, (void)dtype, (void)a, (void)b, (void)bias, (void)addend, (void)c;
    return NO_CUDA(ctx);
}
an_status an_cuda_gemm_f32_out(an_ctx *ctx, const an_gemm_shape *shape, an_dtype dtype, const void *a, const void *b,
                               float *c) {
    (void)shape, (void)dtype, (void)a, (void)b, (void)c;
    return NO_CUDA(ctx);
}
an_status an_cuda_attention(an_ctx *ctx, const an_attention_shape *shape, an_dtype dtype, const void *q,
                            const void *k, const void *v, const void *segments, an_dtype seg_dtype, void *out,
                            float *lse) {
    (void)shape, (void)dtype, (void)q, (void)k, (void)v, (void)segments, (void)seg_dtype, (void)out, (void)lse;
    return NO_CUDA(ctx);
}
bool an_cuda_attention_uses_tensor_cores(an_dtype dtype, int64_t head_dim) {
    (void)dtype, (void)head_dim;
    return false;
}

an_status an_cuda_attention_backward(an_ctx *ctx, const an_attention_shape *shape, an_dtype dtype, const void *q,
                                     const void *k, const void *v, const void *segments, an_dtype seg_dtype,
                                     const void *out, const float *lse, const void *grad_out, void *grad_q,
                                     void *grad_k, void *grad_v) {
    (void)shape, (void)dtype, (void)q, (void)k, (void)v, (void)segments, (void)seg_dtype, (void)out, (void)lse;
    (void)grad_out;
    (void)grad_q, (void)grad_k, (void)grad_v;
    return NO_CUDA(ctx);
}
an_status an_cuda_attention_backward_turning(an_ctx *ctx, const an_attention_shape *shape, an_dtype dtype, const void *q,
                                             const void *k, const void *v, const void *segments, an_dtype seg_dtype,
                                             const void *out, const float *lse, const void *grad_out, void *grad_q,
                                             void *grad_k, void *grad_v, const float *rope_table, bool *turned) {
    (void)shape, (void)dtype, (void)q, (void)k, (void)v, (void)segments, (void)seg_dtype, (void)out, (void)lse;
    (void)grad_out, (void)grad_q, (void)grad_k, (void)grad_v, (void)rope_table;
    *turned = false;
    return NO_CUDA(ctx);
}
an_status an_cuda_attention_cached(an_ctx *ctx, const an_attention_shape *shape, int64_t cache_len, int64_t cache_rows,
                                   an_dtype dtype, const void *q, const void *k_cache, const void *v_cache,
                                   const int64_t *rows, const int64_t *lengths, void *out) {
    (void)shape, (void)cache_len, (void)cache_rows, (void)dtype, (void)q, (void)k_cache, (void)v_cache, (void)rows;
    (void)lengths, (void)out;
    return NO_CUDA(ctx);
}
an_status an_cuda_kv_positions(an_ctx *ctx, const int64_t *rows, const int64_t *lengths, int64_t B, int64_t T,
                               int64_t *positions) {
    (void)rows, (void)lengths, (void)B, (void)T, (void)positions;
    return NO_CUDA(ctx);
}
an_status an_cuda_kv_store(an_ctx *ctx, const void *k, const void *v, void *k_cache, void *v_cache, const int64_t *rows,
                           const int64_t *lengths, int64_t B, int64_t T, int64_t capacity, size_t token_bytes) {
    (void)k, (void)v, (void)k_cache, (void)v_cache, (void)rows, (void)lengths, (void)B, (void)T, (void)capacity;
    (void)token_bytes;
    return NO_CUDA(ctx);
}
an_status an_cuda_kv_advance(an_ctx *ctx, const int64_t *rows, int64_t *lengths, int64_t B, int64_t T) {
    (void)rows, (void)lengths, (void)B, (void)T;
    return NO_CUDA(ctx);
}
an_status an_cuda_rmsnorm_gemv(an_ctx *ctx, an_dtype dtype, const void *x, int64_t M, int64_t K, const void *norm_w,
                               double eps, const an_cuda_proj *proj, int n_proj) {
    (void)dtype, (void)x, (void)M, (void)K, (void)norm_w, (void)eps, (void)proj, (void)n_proj;
    return NO_CUDA(ctx);
}
an_status an_cuda_rmsnorm_swiglu_gemv(an_ctx *ctx, an_dtype dtype, const void *x, int64_t M, int64_t K,
                                      const void *norm_w, double eps, const void *gate_w, const void *gate_b,
                                      const void *up_w, const void *up_b, int64_t N, void *act) {
    (void)dtype, (void)x, (void)M, (void)K, (void)norm_w, (void)eps, (void)gate_w, (void)gate_b, (void)up_w;
    (void)up_b, (void)N, (void)act;
    return NO_CUDA(ctx);
}
an_status an_cuda_rmsnorm_qkv_rope(an_ctx *ctx, an_dtype dtype, const void *x, int64_t M, int64_t K,
                                   const void *norm_w, double eps, const an_cuda_proj *proj,
                                   const an_cuda_kv_rope *kv) {
    (void)dtype, (void)x, (void)M, (void)K, (void)norm_w, (void)eps, (void)proj, (void)kv;
    return NO_CUDA(ctx);
}
an_status an_cuda_kv_rope_store(an_ctx *ctx, an_dtype dtype, void *q, const void *k, const void *v,
                                const void *q_bias, const void *k_bias, const void *v_bias, void *k_cache,
                                void *v_cache, const int64_t *rows, const int64_t *lengths, int64_t B, int64_t seq,
                                int64_t Hq, int64_t Hkv, int64_t D, int64_t capacity, const double *inv_freq,
                                int interleaved) {
    (void)dtype, (void)q, (void)k, (void)v, (void)q_bias, (void)k_bias, (void)v_bias, (void)k_cache, (void)v_cache;
    (void)rows, (void)lengths, (void)B;
    (void)seq, (void)Hq, (void)Hkv, (void)D, (void)capacity, (void)inv_freq, (void)interleaved;
    return NO_CUDA(ctx);
}
an_status an_cuda_qkv_rope_store(an_ctx *ctx, an_dtype dtype, const void *qkv, void *q, const void *q_bias,
                                 const void *k_bias, const void *v_bias, void *k_cache, void *v_cache,
                                 const int64_t *rows, const int64_t *lengths, int64_t B, int64_t seq, int64_t Hq,
                                 int64_t Hkv, int64_t D, int64_t capacity, const double *inv_freq, int interleaved) {
    (void)dtype, (void)qkv, (void)q, (void)q_bias, (void)k_bias, (void)v_bias, (void)k_cache, (void)v_cache;
    (void)rows, (void)lengths, (void)B;
    (void)seq, (void)Hq, (void)Hkv, (void)D, (void)capacity, (void)inv_freq, (void)interleaved;
    return NO_CUDA(ctx);
}
an_status an_cuda_graph_begin(an_ctx *ctx) { return NO_CUDA(ctx); }
an_status an_cuda_graph_end(an_ctx *ctx, an_status body, an_cuda_graph **out) {
    (void)body;
    *out = NULL;
    return NO_CUDA(ctx);
}
an_status an_cuda_graph_launch(an_ctx *ctx, an_cuda_graph *g) {
    (void)g;
    return NO_CUDA(ctx);
}
void an_cuda_graph_free(an_ctx *ctx, an_cuda_graph *g) { (void)ctx, (void)g; }
int an_cuda_capturing(an_ctx *ctx) {
    (void)ctx;
    return 0;
}
an_status an_cuda_adamw_multi(an_ctx *ctx, const an_adamw_scalars *k, const an_adamw_segment *table, int n,
                              int64_t n_chunks) {
    (void)k, (void)table, (void)n, (void)n_chunks;
    return NO_CUDA(ctx);
}
an_status an_cuda_adamw_side(an_ctx *ctx, const an_adamw_scalars *k, const an_adamw_segment *seg, int64_t chunk,
                             double *partial) {
    (void)k, (void)seg, (void)chunk, (void)partial;
    return NO_CUDA(ctx);
}
an_status an_cuda_sum_doubles(an_ctx *ctx, const double *partial, int64_t count, double *sum) {
    (void)partial, (void)count, (void)sum;
    return NO_CUDA(ctx);
}
an_status an_cuda_side_join(an_ctx *ctx) { return NO_CUDA(ctx); }
an_status an_cuda_set_side_equal_priority(an_ctx *ctx, bool equal) {
    (void)equal;
    return NO_CUDA(ctx);
}
an_status an_cuda_sum_squares_multi(an_ctx *ctx, const an_adamw_segment *table, int n, int64_t n_chunks,
                                    double *sum) {
    (void)table, (void)n, (void)n_chunks, (void)sum;
    return NO_CUDA(ctx);
}
an_status an_cuda_check_ids(an_ctx *ctx, const void *ids, an_dtype id_dtype, int64_t n, int64_t limit,
                            int allow_ignore, int64_t ignore_index, an_cuda_id_report *report) {
    (void)ids, (void)id_dtype, (void)n, (void)limit, (void)allow_ignore, (void)ignore_index, (void)report;
    return NO_CUDA(ctx);
}
an_status an_cuda_shift_ids(an_ctx *ctx, const void *ids, an_dtype id_dtype, int64_t rows, int64_t t, int64_t fill,
                            void *out) {
    (void)ids, (void)id_dtype, (void)rows, (void)t, (void)fill, (void)out;
    return NO_CUDA(ctx);
}
an_status an_cuda_embedding(an_ctx *ctx, an_dtype dtype, const void *ids, an_dtype id_dtype, int64_t n,
                            const void *table, int64_t V, int64_t D, void *out) {
    (void)dtype, (void)ids, (void)id_dtype, (void)n, (void)table, (void)V, (void)D, (void)out;
    return NO_CUDA(ctx);
}
an_status an_cuda_embedding_backward(an_ctx *ctx, an_dtype dtype, const void *ids, an_dtype id_dtype, int64_t n,
                                     const void *grad_out, int64_t V, int64_t D, void *grad_table) {
    (void)dtype, (void)ids, (void)id_dtype, (void)n, (void)grad_out, (void)V, (void)D, (void)grad_table;
    return NO_CUDA(ctx);
}
an_status an_cuda_rmsnorm(an_ctx *ctx, an_dtype dtype, const void *x, const void *w, int64_t rows, int64_t D,
                          double eps, void *y, float *rstd) {
    (void)dtype, (void)x, (void)w, (void)rows, (void)D, (void)eps, (void)y, (void)rstd;
    return NO_CUDA(ctx);
}
an_status an_cuda_add_rmsnorm(an_ctx *ctx, an_dtype dtype, const void *x, const void *res, const void *w, int64_t rows,
                              int64_t D, double eps, void *sum, void *y, float *rstd) {
    (void)dtype, (void)x, (void)res, (void)w, (void)rows, (void)D, (void)eps, (void)sum, (void)y, (void)rstd;
    return NO_CUDA(ctx);
}
an_status an_cuda_rmsnorm_backward(an_ctx *ctx, an_dtype dtype, const void *x, const void *w, const float *rstd,
                                   const void *grad_y, int64_t rows, int64_t D, void *grad_x, void *grad_w, int add_x) {
    (void)dtype, (void)x, (void)w, (void)rstd, (void)grad_y, (void)rows, (void)D, (void)grad_x, (void)grad_w, (void)add_x;
    return NO_CUDA(ctx);
}
an_status an_cuda_rope(an_ctx *ctx, an_dtype dtype, const void *x, const void *positions, an_dtype pos_dtype,
                       int64_t rows, int64_t H, int64_t D, const double *inv_freq, int interleaved, double sign,
                       void *out) {
    (void)dtype, (void)x, (void)positions, (void)pos_dtype, (void)rows, (void)H, (void)D, (void)inv_freq;
    (void)interleaved, (void)sign, (void)out;
    return NO_CUDA(ctx);
}
an_status an_cuda_rope_table(an_ctx *ctx, const void *positions, an_dtype pos_dtype, int64_t rows, int64_t D,
                             const double *inv_freq, float *table) {
    (void)positions, (void)pos_dtype, (void)rows, (void)D, (void)inv_freq, (void)table;
    return NO_CUDA(ctx);
}
an_status an_cuda_softmax(an_ctx *ctx, an_dtype dtype, const void *x, int64_t rows, int64_t cols, void *y) {
    (void)dtype, (void)x, (void)rows, (void)cols, (void)y;
    return NO_CUDA(ctx);
}
an_status an_cuda_softmax_backward(an_ctx *ctx, an_dtype dtype, const void *y, const void *dy, int64_t rows,
                                   int64_t cols, void *dx) {
    (void)dtype, (void)y, (void)dy, (void)rows, (void)cols, (void)dx;
    return NO_CUDA(ctx);
}
an_status an_cuda_cross_entropy_rows(an_ctx *ctx, an_dtype dtype, const void *logits, const void *targets,
                                     an_dtype target_dtype, int64_t N, int64_t V, int64_t ignore_index, float *lse,
                                     float *loss_rows) {
    (void)dtype, (void)logits, (void)targets, (void)target_dtype, (void)N, (void)V, (void)ignore_index, (void)lse;
    (void)loss_rows;
    return NO_CUDA(ctx);
}
an_status an_cuda_cross_entropy_rows_grad(an_ctx *ctx, an_dtype dtype, void *logits, const void *targets,
                                          an_dtype target_dtype, int64_t N, int64_t V, int64_t ignore_index,
                                          double scale, float *lse, float *loss_rows) {
    (void)dtype, (void)logits, (void)targets, (void)target_dtype, (void)N, (void)V, (void)ignore_index, (void)scale;
    (void)lse, (void)loss_rows;
    return NO_CUDA(ctx);
}
an_status an_cuda_cross_entropy_stats_grad(an_ctx *ctx, an_dtype dtype, void *logits, const float *stats,
                                           int64_t tiles, const void *targets, an_dtype target_dtype, int64_t N,
                                           int64_t V, int64_t ignore_index, double scale, float *lse,
                                           float *loss_rows) {
    (void)dtype, (void)logits, (void)stats, (void)tiles, (void)targets, (void)target_dtype, (void)N, (void)V;
    (void)ignore_index, (void)scale, (void)lse, (void)loss_rows;
    return NO_CUDA(ctx);
}
an_status an_cuda_loss_total(an_ctx *ctx, an_dtype dtype, const float *values, int64_t n, double scale, void *out) {
    (void)dtype, (void)values, (void)n, (void)scale, (void)out;
    return NO_CUDA(ctx);
}
an_status an_cuda_cross_entropy_backward(an_ctx *ctx, an_dtype dtype, const void *logits, const float *lse,
                                         const void *targets, an_dtype target_dtype, int64_t N, int64_t V,
                                         int64_t ignore_index, const void *grad, double scale, void *dx) {
    (void)dtype, (void)logits, (void)lse, (void)targets, (void)target_dtype, (void)N, (void)V, (void)ignore_index;
    (void)grad, (void)scale, (void)dx;
    return NO_CUDA(ctx);
}
an_status an_cuda_log_softmax_gather(an_ctx *ctx, an_dtype dtype, const void *logits, const void *ids,
                                     an_dtype id_dtype, int64_t N, int64_t V, float *lse, void *out) {
    (void)dtype, (void)logits, (void)ids, (void)id_dtype, (void)N, (void)V, (void)lse, (void)out;
    return NO_CUDA(ctx);
}
an_status an_cuda_log_softmax_gather_backward(an_ctx *ctx, an_dtype dtype, const void *logits, const float *lse,
                                              const void *ids, an_dtype id_dtype, const void *grad, int64_t N,
                                              int64_t V, void *dx) {
    (void)dtype, (void)logits, (void)lse, (void)ids, (void)id_dtype, (void)grad, (void)N, (void)V, (void)dx;
    return NO_CUDA(ctx);
}
an_status an_cuda_sample(an_ctx *ctx, an_dtype dtype, const void *logits, int64_t B, int64_t V, int64_t allowed,
                         double temperature, int64_t top_k, double top_p, uint64_t seed, uint64_t offset,
                         int32_t *tokens) {
    (void)dtype, (void)logits, (void)B, (void)V, (void)allowed, (void)temperature, (void)top_k, (void)top_p,
        (void)seed, (void)offset, (void)tokens;
    return NO_CUDA(ctx);
}
an_status an_cuda_gemm_decode(an_ctx *ctx, an_dtype dtype, const void *x, int64_t M, int64_t K, const void *w,
                              int64_t N, const void *bias, int accumulate, void *y) {
    (void)dtype, (void)x, (void)M, (void)K, (void)w, (void)N, (void)bias, (void)accumulate, (void)y;
    return NO_CUDA(ctx);
}
an_status an_cuda_gemm_decode_swiglu(an_ctx *ctx, an_dtype dtype, const void *x, int64_t M, int64_t K,
                                     const void *gate_up, int64_t N, void *y) {
    (void)dtype, (void)x, (void)M, (void)K, (void)gate_up, (void)N, (void)y;
    return NO_CUDA(ctx);
}
an_status an_cuda_gemm_swiglu(an_ctx *ctx, an_dtype dtype, const void *x, int64_t M, int64_t K, const void *w_gate,
                              const void *w_up, int64_t N, void *gate, void *up, void *act) {
    (void)dtype, (void)x, (void)M, (void)K, (void)w_gate, (void)w_up, (void)N, (void)gate, (void)up, (void)act;
    return NO_CUDA(ctx);
}
an_status an_cuda_gemm_swiglu_backward(an_ctx *ctx, an_dtype dtype, const void *dy, int64_t M, int64_t K,
                                       const void *w, int64_t N, const void *gate, const void *up, void *dgate,
                                       void *dup, void *act) {
    (void)dtype, (void)dy, (void)M, (void)K, (void)w, (void)N, (void)gate, (void)up, (void)dgate, (void)dup, (void)act;
    return NO_CUDA(ctx);
}
an_status an_cuda_gemm_swiglu_backward_stacked(an_ctx *ctx, an_dtype dtype, const void *dy, int64_t M, int64_t K,
                                               const void *w, int64_t N, const void *gate, const void *up, void *dgu) {
    (void)dtype, (void)dy, (void)M, (void)K, (void)w, (void)N, (void)gate, (void)up, (void)dgu;
    return NO_CUDA(ctx);
}
int an_cuda_swiglu_stacked_rule(an_ctx *ctx, an_dtype dtype, int64_t M, int64_t K, int64_t N, const void *const *ptrs,
                                int n_ptrs) {
    (void)ctx, (void)dtype, (void)M, (void)K, (void)N, (void)ptrs, (void)n_ptrs;
    return 0;
}
an_status an_cuda_set_swiglu_stacked(an_ctx *ctx, bool on) {
    (void)on;
    return NO_CUDA(ctx);
}
an_status an_cuda_gemm_segments(an_ctx *ctx, an_dtype dtype, int64_t M, int64_t N, int segments,
                                const void *const *a, const int64_t *k, const void *const *b, bool bt, void *d) {
    (void)dtype, (void)M, (void)N, (void)segments, (void)a, (void)k, (void)b, (void)bt, (void)d;
    return NO_CUDA(ctx);
}
int an_cuda_column_sums_rule(an_ctx *ctx, an_dtype dtype, int64_t rows, int count, const void *const *y,
                             const int64_t *width, void *const *out) {
    (void)ctx, (void)dtype, (void)rows, (void)count, (void)y, (void)width, (void)out;
    return 0;
}
an_status an_cuda_column_sums(an_ctx *ctx, an_dtype dtype, int64_t rows, int count, const void *const *y,
                              const int64_t *width, void *const *out) {
    (void)dtype, (void)rows, (void)count, (void)y, (void)width, (void)out;
    return NO_CUDA(ctx);
}
int an_cuda_lora_grads_rule(an_ctx *ctx, an_dtype dtype, int64_t M, int64_t K, int count, const an_cuda_lora_grad *ad) {
    (void)ctx, (void)dtype, (void)M, (void)K, (void)count, (void)ad;
    return 0;
}
an_status an_cuda_lora_grads(an_ctx *ctx, an_dtype dtype, int64_t M, int64_t K, int count,
                             const an_cuda_lora_grad *ad) {
    (void)dtype, (void)M, (void)K, (void)count, (void)ad;
    return NO_CUDA(ctx);
}
int an_cuda_gemm_projections_rule(an_ctx *ctx, an_dtype dtype, const void *x, int64_t M, int64_t K, int count,
                                  const an_cuda_projection *proj) {
    (void)ctx, (void)dtype, (void)x, (void)M, (void)K, (void)count, (void)proj;
    return 0;
}
an_status an_cuda_gemm_projections(an_ctx *ctx, an_dtype dtype, const void *x, int64_t M, int64_t K, int count,
                                   const an_cuda_projection *proj) {
    (void)dtype, (void)x, (void)M, (void)K, (void)count, (void)proj;
    return NO_CUDA(ctx);
}
int64_t an_cuda_logits_stats_tiles(int64_t N) {
    (void)N;
    return 0;
}
an_status an_cuda_gemm_logits_stats(an_ctx *ctx, an_dtype dtype, const void *x, int64_t M, int64_t K, const void *w,
                                    int64_t N, void *logits, float *stats) {
    (void)dtype, (void)x, (void)M, (void)K, (void)w, (void)N, (void)logits, (void)stats;
    return NO_CUDA(ctx);
}
int an_cuda_gemm_swiglu_rule(an_ctx *ctx, an_dtype dtype, int64_t M, int64_t K, int64_t N, const void *const *ptrs,
                             int n_ptrs) {
    (void)ctx, (void)dtype, (void)M, (void)K, (void)N, (void)ptrs, (void)n_ptrs;
    return 0;
}
int an_cuda_decode_gemm_rule(an_dtype dtype, const void *x, int64_t M, int64_t K, const void *w) {
    (void)dtype, (void)x, (void)M, (void)K, (void)w;
    return 0;
}
an_status an_cuda_gemv(an_ctx *ctx, an_dtype dtype, const void *x, int64_t M, int64_t K, const void *w, int64_t N,
                       const void *bias, int accumulate, void *y) {
    (void)dtype, (void)x, (void)M, (void)K, (void)w, (void)N, (void)bias, (void)accumulate, (void)y;
    return NO_CUDA(ctx);
}
