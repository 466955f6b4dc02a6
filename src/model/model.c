/* model.c — parameter table, initialisation and the forward pass of the Qwen2/Llama decoder.
 * The model owns its parameters; activations are new tensors released as soon as the next op
 * has consumed them (the tape keeps what backward needs). */
#include "model/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/cpu/cpu.h" /* an_cpu_rope_inv_freq for the fused decode block */
#include "autograd/ops.h"   /* the ops the transformer is built from */
#include "autograd/tape.h"  /* an_checkpoint */
#include "kernels/cuda.h"   /* an_cuda_kv_* : the KV cache's device bookkeeping */
#include "model/kv_cache.h" /* an_kv_cache, an_model_forward_cached */

static void add_param(an_model *m, an_tensor **slot, bool no_decay, int ndim, int64_t d0, int64_t d1,
                      const char *fmt, int layer) {
    an_param *p = &m->params[m->n_params++];
    snprintf(p->name, sizeof p->name, fmt, layer);
    p->slot = slot;
    p->ndim = ndim;
    p->shape[0] = d0;
    p->shape[1] = d1;
    p->no_decay = no_decay;
}

/* Lists every parameter with its HF name and shape (checkpoint order). */
static void build_table(an_model *m) {
    const an_model_config *c = &m->config;
    int64_t h = c->hidden_size, q = c->num_heads * c->head_dim, kv = c->num_kv_heads * c->head_dim;
    int64_t inter = c->intermediate_size;
    add_param(m, &m->embed_tokens, true, 2, c->vocab_size, h, "model.embed_tokens.weight", 0);
    for (int i = 0; i < c->num_layers; i++) {
        an_layer *l = &m->layers[i];
        l->model = m;
        add_param(m, &l->input_layernorm, true, 1, h, 0, "model.layers.%d.input_layernorm.weight", i);
        add_param(m, &l->q_proj.weight, false, 2, q, h, "model.layers.%d.self_attn.q_proj.weight", i);
        if (c->qkv_bias) add_param(m, &l->q_proj.bias, true, 1, q, 0, "model.layers.%d.self_attn.q_proj.bias", i);
        add_param(m, &l->k_proj.weight, false, 2, kv, h, "model.layers.%d.self_attn.k_proj.weight", i);
        if (c->qkv_bias) add_param(m, &l->k_proj.bias, true, 1, kv, 0, "model.layers.%d.self_attn.k_proj.bias", i);
        add_param(m, &l->v_proj.weight, false, 2, kv, h, "model.layers.%d.self_attn.v_proj.weight", i);
        if (c->qkv_bias) add_param(m, &l->v_proj.bias, true, 1, kv, 0, "model.layers.%d.self_attn.v_proj.bias", i);
        add_param(m, &l->o_proj.weight, false, 2, h, q, "model.layers.%d.self_attn.o_proj.weight", i);
        add_param(m, &l->post_attention_layernorm, true, 1, h, 0, "model.layers.%d.post_attention_layernorm.weight", i);
        add_param(m, &l->gate_proj.weight, false, 2, inter, h, "model.layers.%d.mlp.gate_proj.weight", i);
        add_param(m, &l->up_proj.weight, false, 2, inter, h, "model.layers.%d.mlp.up_proj.weight", i);
        add_param(m, &l->down_proj.weight, false, 2, h, inter, "model.layers.%d.mlp.down_proj.weight", i);
    }
    add_param(m, &m->norm, true, 1, h, 0, "model.norm.weight", 0);
    if (!c->tie_word_embeddings) add_param(m, &m->lm_head, false, 2, c->vocab_size, h, "lm_head.weight", 0);
}

/* *slots[i] = rows [start_i, start_i + rows[i]) of one new (sum rows, cols) tensor (cols 0: a 1-D
 * one of sum rows elements), in order. */
static an_status alloc_row_views(an_ctx *ctx, an_dtype dtype, an_device device, int64_t cols, const int64_t *rows,
                                 an_tensor **const *slots, int n) {
    int64_t total = 0;
    for (int i = 0; i < n; i++) total += rows[i];
    an_tensor *whole = cols ? an_tensor_new(ctx, dtype, device, 2, (int64_t[]){total, cols})
                            : an_tensor_new(ctx, dtype, device, 1, (int64_t[]){total});
    if (!whole) return an_error_status(ctx);
    an_status st = AN_OK;
    for (int i = 0, start = 0; i < n && st == AN_OK; start += (int)rows[i++]) {
        *slots[i] = an_tensor_rows(ctx, whole, start, rows[i]);
        if (!*slots[i]) st = an_error_status(ctx);
    }
    an_tensor_release(whole);
    return st;
}

/* A layer's q, k and v weights (and biases) share one allocation, rows q | k | v, and gate and up
 * another, gate | up: each parameter is a view of its rows, so a decode step of many tokens can
 * project q, k and v with one GEMM (decode_qkv_rope, block_decode). */
static an_status alloc_grouped_params(an_ctx *ctx, an_model *m, an_dtype dtype, an_device device) {
    const an_model_config *c = &m->config;
    int64_t h = c->hidden_size, q = c->num_heads * c->head_dim, kv = c->num_kv_heads * c->head_dim;
    int64_t inter = c->intermediate_size;
    for (int i = 0; i < c->num_layers; i++) {
        an_layer *l = &m->layers[i];
        AN_TRY(alloc_row_views(ctx, dtype, device, h, (int64_t[]){q, kv, kv},
                               (an_tensor **const[]){&l->q_proj.weight, &l->k_proj.weight, &l->v_proj.weight}, 3));
        if (c->qkv_bias)
            AN_TRY(alloc_row_views(ctx, dtype, device, 0, (int64_t[]){q, kv, kv},
                                   (an_tensor **const[]){&l->q_proj.bias, &l->k_proj.bias, &l->v_proj.bias}, 3));
        AN_TRY(alloc_row_views(ctx, dtype, device, h, (int64_t[]){inter, inter},
                               (an_tensor **const[]){&l->gate_proj.weight, &l->up_proj.weight}, 2));
    }
    return AN_OK;
}

an_status an_model_create(an_ctx *ctx, const an_model_config *config, an_dtype dtype, an_device device,
                          an_model **out) {
    an_model *m = calloc(1, sizeof *m);
    AN_CHECK(ctx, m != NULL, AN_ERR_INTERNAL, "out of host memory");
    m->config = *config;
    m->layers = calloc((size_t)config->num_layers, sizeof *m->layers);
    m->params = calloc((size_t)(3 + 13 * config->num_layers), sizeof *m->params);
    if (!m->layers || !m->params) {
        an_model_free(m);
        AN_CHECK(ctx, 0, AN_ERR_INTERNAL, "out of host memory");
    }
    build_table(m);
    if (alloc_grouped_params(ctx, m, dtype, device) != AN_OK) {
        an_model_free(m);
        return an_error_status(ctx);
    }
    for (int i = 0; i < m->n_params; i++) {
        an_param *p = &m->params[i];
        if (*p->slot) continue; /* a view of a grouped allocation */
        *p->slot = an_tensor_new(ctx, dtype, device, p->ndim, p->shape);
        if (!*p->slot) {
            an_model_free(m);
            return an_error_status(ctx);
        }
    }
    if (config->tie_word_embeddings) m->lm_head = an_tensor_retain(m->embed_tokens);
    *out = m;
    return AN_OK;
}

void an_model_free(an_model *m) {
    if (!m) return;
    for (int i = 0; i < m->n_params; i++) an_tensor_release(*m->params[i].slot);
    for (int i = 0; i < m->n_adapter_params; i++) an_tensor_release(*m->adapter_params[i].slot);
    free(m->adapter_params);
    if (m->config.tie_word_embeddings) an_tensor_release(m->lm_head);
    free(m->params);
    free(m->layers);
    free(m);
}

an_param *an_model_find(an_model *m, const char *name) {
    for (int i = 0; i < m->n_params; i++)
        if (strcmp(m->params[i].name, name) == 0) return &m->params[i];
    return NULL;
}

an_status an_model_init_random(an_ctx *ctx, an_model *m, double std) {
    for (int i = 0; i < m->n_params; i++) {
        an_param *p = &m->params[i];
        bool norm = strstr(p->name, "norm") != NULL, bias = strstr(p->name, ".bias") != NULL;
        an_status st = norm   ? an_tensor_fill(ctx, *p->slot, 1.0)
                       : bias ? an_tensor_fill(ctx, *p->slot, 0.0)
                              : an_tensor_fill_normal(ctx, *p->slot, 0.0, std);
        AN_TRY(st);
    }
    return AN_OK;
}

void an_model_set_requires_grad(an_model *m, bool requires_grad) {
    for (int i = 0; i < m->n_params; i++) an_tensor_set_requires_grad(*m->params[i].slot, requires_grad);
}

/* Releases its argument and returns the new value: lets a forward read as a chain of steps. */
static an_tensor *step(an_tensor *old, an_tensor *next) {
    an_tensor_release(old);
    return next;
}

/* (B, T, heads * D) -> (B, T, heads, D) */
static an_tensor *split_heads(an_ctx *ctx, an_tensor *x, int64_t heads, int64_t head_dim) {
    if (!x) return NULL;
    return step(x, an_reshape(ctx, x, 4, (int64_t[]){x->shape[0], x->shape[1], heads, head_dim}));
}

static bool has_adapter(const an_model *m, const an_projection *p) {
    return p->lora_a && m->lora_enabled;
}

/* x W^T + b, plus scale * B(A(dropout(x))) when the projection has an enabled adapter. */
static an_tensor *project(an_ctx *ctx, const an_model *m, an_tensor *x, const an_projection *p) {
    if (!has_adapter(m, p)) return an_linear(ctx, x, p->weight, p->bias);
    an_tensor *in = m->training && m->lora.dropout > 0 ? an_dropout(ctx, x, m->lora.dropout) : an_tensor_retain(x);
    an_tensor *out = in ? an_lora_linear(ctx, x, in, p->weight, p->bias, p->lora_a, p->lora_b, m->lora_scale) : NULL;
    an_tensor_release(in);
    return out;
}

/* q, k and v of the attention block's normed input xn into out[0..2] as one op (ops/qkv_linear.c:
 * its backward forms xn's gradient from all three projections in one sum), each what project()
 * gives, q and k then rotated at positions as an_rope_trusted would (on an H100 in the GEMM's
 * epilogue): the adapters' dropout masks drawn in q, k, v order, as project() draws them. On
 * error out stays NULL. */
static void project_qkv(an_ctx *ctx, const an_model *m, const an_layer *l, an_tensor *xn, an_tensor *positions,
                        an_tensor *rope_table, an_tensor *out[3]) {
    const an_projection *p[3] = {&l->q_proj, &l->k_proj, &l->v_proj};
    an_qkv_proj proj[3];
    bool ok = xn != NULL;
    for (int i = 0; i < 3; i++) {
        proj[i] = (an_qkv_proj){p[i]->weight, p[i]->bias, NULL, NULL, NULL, 0.0};
        if (!ok || !has_adapter(m, p[i])) continue;
        proj[i].lora_a = p[i]->lora_a, proj[i].lora_b = p[i]->lora_b, proj[i].scale = m->lora_scale;
        if (m->training && m->lora.dropout > 0)
            ok = (proj[i].dropout_mask = an_dropout_mask(ctx, xn, m->lora.dropout)) != NULL;
    }
    out[0] = out[1] = out[2] = NULL;
    if (ok) an_qkv_linear_rope(ctx, xn, proj, positions, &m->config.rope, m->config.head_dim, rope_table, out);
    for (int i = 0; i < 3; i++) an_tensor_release(proj[i].dropout_mask);
}

/* residual + x W^T + b: in the projection's GEMM (one rounding) when it has no enabled adapter;
 * an adapter's projection adds after (its small branch must not meet the residual first:
 * ops/lora_linear.c). With `norm`, also rmsnorm of the sum in *normed (the add and the norm in one
 * kernel on CUDA in the adapter's case). */
static an_tensor *project_residual(an_ctx *ctx, const an_model *m, an_tensor *x, const an_projection *p,
                                   an_tensor *residual, an_tensor *norm, double eps, an_tensor **normed) {
    an_tensor *sum = NULL;
    if (!x) return NULL;
    if (!has_adapter(m, p)) {
        sum = an_linear_residual(ctx, x, p->weight, p->bias, residual);
        if (sum && norm) *normed = an_rmsnorm(ctx, sum, norm, eps);
        return sum;
    }
    an_tensor *y = project(ctx, m, x, p);
    if (y && norm) *normed = an_add_rmsnorm(ctx, residual, y, norm, eps, &sum);
    else if (y) sum = an_add(ctx, residual, y);
    an_tensor_release(y);
    return sum;
}

/* Where a cached forward keeps keys and values (NULL in training). */
typedef struct {
    an_kv_cache *cache;
    int64_t layer;
    an_tensor *rows;       /* (B') i64 on the CPU: cache row of each batch entry */
    an_tensor *dev_rows;   /* (B') i64 on the GPU for a CUDA cache (the cache's row table), else NULL */
    bool fresh;            /* every row empty before this step, T > 1, not in a graph capture: attention
                              over the new tokens alone (the training attention), then the cache write */
} cache_step;

/* k and v (B', T, Hkv, D) into the cache rows at each row's current length. On CUDA one kernel
 * reads rows and lengths from the device tables (no host data: capturable); on the CPU batch
 * entries whose cache rows follow each other and hold equally many tokens go in one copy. */
static an_status cache_store(an_ctx *ctx, const cache_step *cs, an_tensor *k, an_tensor *v) {
    an_kv_cache *c = cs->cache;
    int64_t bq = k->shape[0], t = k->shape[1];
    size_t elt = an_dtype_size(k->dtype), token = (size_t)(c->kv_heads * c->head_dim) * elt;
    an_tensor *src[2] = {k, v}, *dst[2] = {c->k[cs->layer], c->v[cs->layer]};
    AN_CHECK(ctx, k->dtype == dst[0]->dtype && v->dtype == dst[1]->dtype && k->device == dst[0]->device &&
                      v->device == dst[1]->device,
             AN_ERR_INPUT, "cached forward: keys and values must have the cache's dtype and device");
    if (cs->dev_rows)
        return an_cuda_kv_store(ctx, an_tensor_data(k), an_tensor_data(v), an_tensor_data(dst[0]), an_tensor_data(dst[1]),
                                an_tensor_data(cs->dev_rows), an_tensor_data(c->device_length), bq, t, c->capacity,
                                token);
    const int64_t *rows = an_tensor_data(cs->rows), *len = an_tensor_data(c->length);
    for (int64_t b = 0, g; b < bq; b += g) {
        for (g = 1; b + g < bq && rows[b + g] == rows[b] + g && len[rows[b + g]] == len[rows[b]]; g++) {}
        size_t row_pitch = (size_t)c->capacity * token, width = (size_t)t * token;
        for (int i = 0; i < 2; i++) {
            const char *from = (const char *)an_tensor_data(src[i]) + (size_t)b * width;
            char *to = (char *)an_tensor_data(dst[i]) + (size_t)rows[b] * row_pitch + (size_t)len[rows[b]] * token;
            for (int64_t j = 0; j < g; j++) memcpy(to + (size_t)j * row_pitch, from + (size_t)j * width, width);
        }
    }
    return AN_OK;
}

/* The decode rule: a cached forward on CUDA (device row table) takes block_decode's fused kernels
 * unless m->decode_unfused is set, an enabled adapter sits on one of the layer's projections (its
 * extra terms need an_lora_linear), o_proj or down_proj has a bias (the residual is accumulated
 * into x by their GEMMs), or the head dim is odd or above AN_CUDA_ROPE_MAX_D; those take the op
 * by op path of block_forward. Within the fused block, q, k and v come from one
 * an_cuda_rmsnorm_qkv_rope (with their biases) when the step has at most AN_CUDA_GEMV_RULE_ROWS
 * tokens (an_cuda_gemm's GEMV rule), else from an_rmsnorm and one GEMM against the stacked weights
 * (the rope kernel adds the biases). */
static bool decode_fused(const an_layer *l, const cache_step *cs) {
    const an_model *m = l->model;
    const an_projection *p[7] = {&l->q_proj, &l->k_proj, &l->v_proj, &l->o_proj, &l->gate_proj, &l->up_proj, &l->down_proj};
    if (!cs || !cs->dev_rows || cs->fresh || m->decode_unfused || l->o_proj.bias || l->down_proj.bias) return false;
    for (int i = 0; i < 7; i++)
        if (has_adapter(m, p[i])) return false;
    int64_t d = m->config.head_dim;
    return d % 2 == 0 && d <= AN_CUDA_ROPE_MAX_D;
}

/* y (rows, N) += a (rows, K) W^T for W (N, K): the residual added by the projection's GEMM. */
static an_status project_into(an_ctx *ctx, const an_tensor *a, const an_tensor *w, an_tensor *y, int64_t rows) {
    an_gemm_shape sh = {.batch = 1, .m = rows, .n = w->shape[0], .k = w->shape[1], .trans_b = true, .accumulate = true};
    AN_CHECK(ctx, a->dtype == w->dtype && y->dtype == w->dtype && an_tensor_numel(a) == rows * sh.k &&
                      an_tensor_numel(y) == rows * sh.n,
             AN_ERR_INPUT, "decode block: projection shapes or dtypes disagree");
    return an_cuda_gemm(ctx, &sh, w->dtype, an_tensor_data(a), an_tensor_data(w), an_tensor_data(y));
}

/* y (rows, sum of N_i) = a (rows, K) W^T for W the stacked weights w[0..n) (each (N_i, K)): one GEMM. */
static an_status project_stacked(an_ctx *ctx, const an_tensor *a, const an_tensor *const *w, int n, an_tensor *y,
                                 int64_t rows) {
    int64_t total = 0;
    for (int i = 0; i < n; i++) total += w[i]->shape[0];
    AN_CHECK(ctx, an_tensor_stacked(w, n), AN_ERR_INTERNAL,
             "decode block: the weights of one GEMM must be one allocation (an_model_create lays them out so)");
    an_gemm_shape sh = {.batch = 1, .m = rows, .n = total, .k = w[0]->shape[1], .trans_b = true};
    AN_CHECK(ctx, a->dtype == w[0]->dtype && y->dtype == a->dtype && an_tensor_numel(a) == rows * sh.k &&
                      an_tensor_numel(y) == rows * total,
             AN_ERR_INPUT, "decode block: stacked projection shapes or dtypes disagree");
    return an_cuda_gemm(ctx, &sh, a->dtype, an_tensor_data(a), an_tensor_data(w[0]), an_tensor_data(y));
}

/* q (B, T, Hq, D) of norm(x), rotated, with the rotated k and v of these tokens written into the
 * layer's cache rows (decode_fused's rule for the GEMV): one an_cuda_rmsnorm_qkv_rope launch at
 * most AN_CUDA_GEMV_RULE_ROWS tokens, else an_rmsnorm, one GEMM against the stacked q | k | v
 * weights and an_cuda_qkv_rope_store (which adds the biases). */
static an_status decode_qkv_rope(an_ctx *ctx, const an_layer *l, an_tensor *x, const cache_step *cs, an_tensor **q) {
    const an_model *m = l->model;
    const an_model_config *c = &m->config;
    an_kv_cache *cache = cs->cache;
    an_tensor *kc = cache->k[cs->layer], *vc = cache->v[cs->layer];
    int64_t b = x->shape[0], t = x->shape[1], h = x->shape[2], d = c->head_dim;
    const an_projection *p[3] = {&l->q_proj, &l->k_proj, &l->v_proj};
    int64_t heads[3] = {c->num_heads, c->num_kv_heads, c->num_kv_heads};
    AN_CHECK(ctx, kc->dtype == x->dtype, AN_ERR_INPUT, "cached forward: keys and values must have the cache's dtype");
    for (int i = 0; i < 3; i++)
        AN_CHECK(ctx, p[i]->weight->dtype == x->dtype && (!p[i]->bias || (p[i]->bias->dtype == x->dtype &&
                                                                            p[i]->bias->device == AN_CUDA)),
                 AN_ERR_INPUT, "cached forward: q/k/v weights and biases must be x's dtype on CUDA");
    double inv_freq[AN_CUDA_ROPE_MAX_D / 2];
    an_cpu_rope_inv_freq(&c->rope, d, inv_freq);
    const int interleaved = c->rope.style == AN_ROPE_INTERLEAVED;
    AN_CHECK(ctx, l->input_layernorm->dtype == x->dtype && p[0]->weight->shape[1] == h, AN_ERR_INPUT,
             "decode block: the norm or q_proj does not match x");
    *q = an_tensor_new(ctx, x->dtype, AN_CUDA, 4, (int64_t[]){b, t, heads[0], d});
    if (!*q) return an_error_status(ctx);
    an_status st;
    if (b * t <= AN_CUDA_GEMV_RULE_ROWS) {
        an_cuda_proj proj[3];
        for (int i = 0; i < 3; i++)
            proj[i] = (an_cuda_proj){an_tensor_data(p[i]->weight), p[i]->bias ? an_tensor_data(p[i]->bias) : NULL,
                                     i == 0 ? an_tensor_data(*q) : NULL, heads[i] * d};
        an_cuda_kv_rope kv = {an_tensor_data(kc), an_tensor_data(vc), an_tensor_data(cs->dev_rows),
                              an_tensor_data(cache->device_length), t, cache->capacity, heads[0], heads[1], d,
                              inv_freq, interleaved};
        st = an_cuda_rmsnorm_qkv_rope(ctx, x->dtype, an_tensor_data(x), b * t, h, an_tensor_data(l->input_layernorm),
                                      c->rms_norm_eps, proj, &kv);
    } else {
        const an_tensor *w[3] = {p[0]->weight, p[1]->weight, p[2]->weight};
        an_tensor *xn = an_rmsnorm(ctx, x, l->input_layernorm, c->rms_norm_eps);
        an_tensor *qkv = xn ? an_tensor_new(ctx, x->dtype, AN_CUDA, 2, (int64_t[]){b * t, (heads[0] + 2 * heads[1]) * d})
                            : NULL;
        st = qkv ? project_stacked(ctx, xn, w, 3, qkv, b * t) : an_error_status(ctx);
        const void *bd[3];
        for (int i = 0; i < 3; i++) bd[i] = p[i]->bias ? an_tensor_data(p[i]->bias) : NULL;
        if (st == AN_OK)
            st = an_cuda_qkv_rope_store(ctx, x->dtype, an_tensor_data(qkv), an_tensor_data(*q), bd[0], bd[1], bd[2],
                                        an_tensor_data(kc), an_tensor_data(vc), an_tensor_data(cs->dev_rows),
                                        an_tensor_data(cache->device_length), b, t, heads[0], heads[1], d,
                                        cache->capacity, inv_freq, interleaved);
        an_tensor_release(xn), an_tensor_release(qkv);
    }
    if (st != AN_OK) *q = step(*q, NULL);
    return st;
}

/* act (B, T, I) = swiglu(gate, up) of norm(x) from one an_cuda_rmsnorm_swiglu_gemv launch (the
 * fused block's MLP at most AN_CUDA_GEMV_RULE_ROWS tokens). */
static an_status decode_mlp_act(an_ctx *ctx, const an_layer *l, const an_tensor *x, an_tensor **act) {
    const an_tensor *wg = l->gate_proj.weight, *wu = l->up_proj.weight, *bg = l->gate_proj.bias, *bu = l->up_proj.bias;
    const an_tensor *nw = l->post_attention_layernorm;
    int64_t b = x->shape[0], t = x->shape[1], h = x->shape[2], inter = wg->shape[0];
    AN_CHECK(ctx, wg->dtype == x->dtype && wu->dtype == x->dtype && nw->dtype == x->dtype && wg->shape[1] == h &&
                      an_tensor_same_shape(wg, wu) && (!bg || bg->dtype == x->dtype) && (!bu || bu->dtype == x->dtype),
             AN_ERR_INPUT, "decode block: the MLP's norm, gate or up does not match x");
    *act = an_tensor_new(ctx, x->dtype, AN_CUDA, 3, (int64_t[]){b, t, inter});
    if (!*act) return an_error_status(ctx);
    return an_cuda_rmsnorm_swiglu_gemv(ctx, x->dtype, an_tensor_data(x), b * t, h, an_tensor_data(nw),
                                       l->model->config.rms_norm_eps, an_tensor_data(wg), bg ? an_tensor_data(bg) : NULL,
                                       an_tensor_data(wu), bu ? an_tensor_data(bu) : NULL, inter, an_tensor_data(*act));
}

/* The decoder block of a cached forward on CUDA by the fused kernels (decode_fused's rule): the
 * same arithmetic as block_forward with fewer launches. x (B, T, H) is owned by the cached forward
 * alone and is updated in place: it becomes the block's output (returned with a new reference).
 * Launches: q/k/v with bias, rope and the cache write (one kernel at most AN_CUDA_GEMV_RULE_ROWS
 * tokens, else norm + one GEMM over the stacked q | k | v + one kernel), attention, o_proj adding
 * into x, norm + gate + up + swiglu (one GEMV at most AN_CUDA_GEMV_RULE_ROWS tokens, else norm +
 * one GEMM over the stacked gate | up + swiglu, the swiglu in that GEMM's epilogue at 3-16 rows:
 * an_cuda_gemm_decode_swiglu), down_proj adding into x. */
static an_tensor *block_decode(an_ctx *ctx, const an_layer *l, an_tensor *x, const cache_step *cs) {
    const an_model *m = l->model;
    const an_model_config *c = &m->config;
    an_kv_cache *cache = cs->cache;
    int64_t b = x->shape[0], t = x->shape[1], d = c->head_dim;
    an_tensor *q = NULL, *attn = NULL, *hn = NULL, *gate_up = NULL, *act = NULL;
    an_tensor *kc = cache->k[cs->layer], *vc = cache->v[cs->layer];
    an_status st = decode_qkv_rope(ctx, l, x, cs, &q);
    if (st == AN_OK) {
        attn = an_attention_cached(ctx, q, kc, vc, cs->dev_rows, cache->device_length, 1.0 / sqrt((double)d));
        st = attn ? project_into(ctx, attn, l->o_proj.weight, x, b * t) : an_error_status(ctx);
    }
    if (st == AN_OK && b * t <= AN_CUDA_GEMV_RULE_ROWS) { /* norm, gate, up and swiglu in one launch */
        st = decode_mlp_act(ctx, l, x, &act);
    } else if (st == AN_OK) { /* norm, one GEMM against the stacked gate | up, swiglu of its halves */
        const an_tensor *w[2] = {l->gate_proj.weight, l->up_proj.weight};
        int64_t inter = w[0]->shape[0];
        if (l->gate_proj.bias || l->up_proj.bias || !an_tensor_same_shape(w[0], w[1]))
            st = an_error_set(ctx, AN_ERR_INTERNAL, __FILE__, __LINE__,
                              "decode block: gate and up must be bias-free and of one shape");
        hn = st == AN_OK ? an_rmsnorm(ctx, x, l->post_attention_layernorm, c->rms_norm_eps) : NULL;
        act = hn ? an_tensor_new(ctx, x->dtype, AN_CUDA, 3, (int64_t[]){b, t, inter}) : NULL;
        if (st == AN_OK && !act) st = an_error_status(ctx);
        const bool fused = st == AN_OK && an_tensor_stacked(w, 2) &&
                           an_cuda_decode_gemm_rule(x->dtype, an_tensor_data(hn), b * t, hn->shape[2], an_tensor_data(w[0]));
        if (fused) { /* 3-16 rows: the swiglu in the decode GEMM's epilogue */
            st = an_cuda_gemm_decode_swiglu(ctx, x->dtype, an_tensor_data(hn), b * t, hn->shape[2], an_tensor_data(w[0]),
                                            inter, an_tensor_data(act));
        } else if (st == AN_OK) {
            gate_up = an_tensor_new(ctx, x->dtype, AN_CUDA, 2, (int64_t[]){b * t, 2 * inter});
            st = gate_up ? project_stacked(ctx, hn, w, 2, gate_up, b * t) : an_error_status(ctx);
            if (st == AN_OK)
                st = an_cuda_swiglu_rows(ctx, x->dtype, an_tensor_data(gate_up), b * t, inter, an_tensor_data(act));
        }
    }
    if (st == AN_OK) st = project_into(ctx, act, l->down_proj.weight, x, b * t);
    an_tensor_release(q), an_tensor_release(attn);
    an_tensor_release(hn), an_tensor_release(gate_up), an_tensor_release(act);
    return st == AN_OK ? an_tensor_retain(x) : NULL;
}

/* One decoder block: x + attn(norm(x)), then + mlp(norm(.)). x (B, T, H), positions (B, T),
 * segments (B, T) or NULL; with a cache step, attention reads and extends the KV cache. */
static an_tensor *block_forward(an_ctx *ctx, const an_layer *l, an_tensor *x, an_tensor *positions,
                                an_tensor *rope_table, an_tensor *segments, const cache_step *cs) {
    if (decode_fused(l, cs)) return block_decode(ctx, l, x, cs);
    const an_model *m = l->model;
    const an_model_config *c = &m->config;
    int64_t b = x->shape[0], t = x->shape[1], hq = c->num_heads, hkv = c->num_kv_heads, d = c->head_dim;

    an_tensor *xn = an_rmsnorm(ctx, x, l->input_layernorm, c->rms_norm_eps), *qkv[3];
    /* q and k rotated in the projections' op; positions checked once per forward (an_model_hidden)
     * or formed from the cache's lengths */
    project_qkv(ctx, m, l, xn, positions, rope_table, qkv);
    an_tensor *q = split_heads(ctx, qkv[0], hq, d);
    an_tensor *k = split_heads(ctx, qkv[1], hkv, d);
    an_tensor *v = split_heads(ctx, qkv[2], hkv, d);
    xn = step(xn, NULL);
    double scale = 1.0 / sqrt((double)d);
    an_tensor *attn = NULL;
    bool stored = !cs || (q && k && v && cache_store(ctx, cs, k, v) == AN_OK);
    if (stored && (!cs || cs->fresh)) attn = an_attention(ctx, q, k, v, segments, scale);
    else if (stored)
        attn = cs->dev_rows ? an_attention_cached(ctx, q, cs->cache->k[cs->layer], cs->cache->v[cs->layer],
                                                  cs->dev_rows, cs->cache->device_length, scale)
                            : an_attention_cached(ctx, q, cs->cache->k[cs->layer], cs->cache->v[cs->layer], cs->rows,
                                                  cs->cache->length, scale);
    q = step(q, NULL), k = step(k, NULL), v = step(v, NULL);
    attn = step(attn, attn ? an_reshape(ctx, attn, 3, (int64_t[]){b, t, hq * d}) : NULL);
    /* The residual joins x + o_proj(attn) and h + down_proj(act), the first with the norm after it. */
    an_tensor *hn = NULL;
    an_tensor *h = step(attn, project_residual(ctx, m, attn, &l->o_proj, x, l->post_attention_layernorm,
                                               c->rms_norm_eps, &hn));

    /* The MLP: one op (ops/swiglu_mlp.c: fused GEMMs on an H100) unless an adapter or a bias joins in */
    const an_projection *mlp[3] = {&l->gate_proj, &l->up_proj, &l->down_proj};
    bool plain = h != NULL;
    for (int i = 0; i < 3; i++) plain = plain && !has_adapter(m, mlp[i]) && !mlp[i]->bias;
    an_tensor *out = NULL;
    if (plain) {
        out = hn ? an_swiglu_mlp(ctx, hn, l->gate_proj.weight, l->up_proj.weight, l->down_proj.weight, h) : NULL;
        hn = step(hn, NULL);
    } else {
        an_tensor *gate = project(ctx, m, hn, &l->gate_proj);
        an_tensor *up = project(ctx, m, hn, &l->up_proj);
        hn = step(hn, NULL);
        an_tensor *act = an_swiglu(ctx, gate, up);
        gate = step(gate, NULL), up = step(up, NULL);
        out = h ? step(act, project_residual(ctx, m, act, &l->down_proj, h, NULL, 0, NULL)) : step(act, NULL);
    }
    h = step(h, NULL);
    return out;
}

/* The block shaped for an_checkpoint: inputs x, positions, then optionally the segments (i32/i64)
 * and the rope table (f32, an_rope_table's), told apart by dtype. */
static an_tensor *decoder_block(an_ctx *ctx, an_tensor *const *inputs, int n_inputs, void *user) {
    an_tensor *segments = NULL, *table = NULL;
    for (int i = 2; i < n_inputs; i++) {
        if (inputs[i]->dtype == AN_F32) table = inputs[i];
        else segments = inputs[i];
    }
    return block_forward(ctx, user, inputs[0], inputs[1], table, segments, NULL);
}

/* 0..T-1 in every row, as i32 on the ids' device. */
static an_tensor *default_positions(an_ctx *ctx, const an_tensor *ids) {
    int64_t b = ids->shape[0], t = ids->shape[1];
    an_tensor *host = an_tensor_new(ctx, AN_I32, AN_CPU, 2, (int64_t[]){b, t});
    if (!host) return NULL;
    int32_t *p = an_tensor_data(host);
    for (int64_t i = 0; i < b * t; i++) p[i] = (int32_t)(i % t);
    if (ids->device == AN_CPU) return host;
    return step(host, an_tensor_to(ctx, host, AN_I32, ids->device));
}

an_tensor *an_model_hidden(an_ctx *ctx, an_model *m, an_tensor *ids, an_tensor *positions, an_tensor *segments) {
    if (!ids) return NULL;
    char d[96];
    AN_CHECK_NULL(ctx, ids->ndim == 2, AN_ERR_INPUT, "model: ids must be (batch, time), got %s",
                  an_tensor_describe(ids, d, sizeof d));
    /* the layers' rope calls trust the positions: checked here once, or formed here */
    if (positions && an_rope_check_positions(ctx, positions) != AN_OK) return NULL;
    an_tensor *pos = positions ? an_tensor_retain(positions) : default_positions(ctx, ids);
    an_tensor *table = NULL; /* q's and k's rotation, formed once for every layer */
    an_tensor *x =
        pos && an_rope_table(ctx, pos, &m->config.rope, m->config.head_dim, m->embed_tokens->dtype, &table) == AN_OK
            ? an_embedding(ctx, ids, m->embed_tokens)
            : NULL;
    for (int i = 0; i < m->config.num_layers && x; i++) {
        an_tensor *inputs[4] = {x, pos};
        int n = 2;
        if (segments) inputs[n++] = segments;
        if (table) inputs[n++] = table;
        an_layer *l = &m->layers[i];
        x = step(x, m->gradient_checkpointing ? an_checkpoint(ctx, decoder_block, inputs, n, l)
                                              : decoder_block(ctx, inputs, n, l));
    }
    an_tensor_release(pos), an_tensor_release(table);
    return x ? step(x, an_rmsnorm(ctx, x, m->norm, m->config.rms_norm_eps)) : NULL;
}

an_tensor *an_model_logits(an_ctx *ctx, an_model *m, an_tensor *ids, an_tensor *positions, an_tensor *segments) {
    an_tensor *h = an_model_hidden(ctx, m, ids, positions, segments);
    return h ? step(h, an_linear(ctx, h, m->lm_head, NULL)) : NULL;
}

/* The next-token targets of labels (B, T): targets[b, t] = labels[b, t + 1] and the ignore index at
 * each row's end, on the labels' device (CUDA: a device kernel in the labels' dtype, no readback;
 * CPU: i64). */
static an_tensor *shifted_targets(an_ctx *ctx, an_tensor *labels) {
    int64_t b = labels->shape[0], t = labels->shape[1];
    if (labels->device == AN_CUDA) {
        AN_CHECK_NULL(ctx, labels->dtype == AN_I32 || labels->dtype == AN_I64, AN_ERR_INPUT,
                      "model: labels must be i32 or i64, got %s", an_dtype_name(labels->dtype));
        an_tensor *out = an_tensor_new(ctx, labels->dtype, AN_CUDA, 1, (int64_t[]){b * t});
        if (out && an_cuda_shift_ids(ctx, an_tensor_data(labels), labels->dtype, b, t, AN_IGNORE_INDEX,
                                     an_tensor_data(out)) != AN_OK) {
            an_tensor_release(out);
            out = NULL;
        }
        return out;
    }
    an_tensor *out = an_tensor_new(ctx, AN_I64, AN_CPU, 1, (int64_t[]){b * t});
    if (out) {
        int64_t *dst = an_tensor_data(out);
        for (int64_t r = 0; r < b; r++)
            for (int64_t i = 0; i < t; i++)
                dst[r * t + i] = i + 1 < t ? (int64_t)an_tensor_get(labels, r * t + i + 1) : AN_IGNORE_INDEX;
    }
    return out;
}

an_tensor *an_model_loss(an_ctx *ctx, an_model *m, an_tensor *ids, an_tensor *labels, an_tensor *positions,
                         an_tensor *segments, const an_cross_entropy_opts *opts) {
    if (!ids || !labels) return NULL;
    char di[96], dl[96];
    AN_CHECK_NULL(ctx, labels->ndim == 2 && an_tensor_same_shape(ids, labels), AN_ERR_INPUT,
                  "model: labels %s must have the shape of ids %s", an_tensor_describe(labels, dl, sizeof dl),
                  an_tensor_describe(ids, di, sizeof di));
    /* targets made and (on CUDA) checked before the forward: their device scan reads back, which
     * mid-step would idle the GPU between the last layer and the loss */
    an_cross_entropy_opts o = opts ? *opts : AN_CROSS_ENTROPY_DEFAULTS;
    an_tensor *targets = shifted_targets(ctx, labels);
    if (targets && targets->device == AN_CUDA && o.checked_count <= 0 &&
        an_cross_entropy_check_targets(ctx, "linear_cross_entropy", targets, m->lm_head->shape[0], o.ignore_index,
                                       &o.checked_count) != AN_OK) {
        an_tensor_release(targets);
        return NULL;
    }
    an_tensor *h = targets ? an_model_hidden(ctx, m, ids, positions, segments) : NULL;
    an_tensor *flat = h ? an_reshape(ctx, h, 2, (int64_t[]){an_tensor_numel(h) / h->shape[2], h->shape[2]}) : NULL;
    an_tensor *loss = flat ? an_linear_cross_entropy(ctx, flat, m->lm_head, targets, &o) : NULL;
    an_tensor_release(flat);
    an_tensor_release(targets);
    an_tensor_release(h);
    return loss;
}

/* Positions (B', T) of the new tokens on the cache's device: on CUDA formed there from the device
 * tables (dev_rows), on the CPU from the host lengths. */
static an_tensor *cached_positions(an_ctx *ctx, const an_kv_cache *cache, const an_tensor *rows, an_tensor *dev_rows,
                                   int64_t t) {
    int64_t bq = rows->shape[0];
    if (dev_rows) {
        an_tensor *pos = an_tensor_new(ctx, AN_I64, AN_CUDA, 2, (int64_t[]){bq, t});
        if (pos && an_cuda_kv_positions(ctx, an_tensor_data(dev_rows), an_tensor_data(cache->device_length), bq, t,
                                        an_tensor_data(pos)) != AN_OK)
            pos = step(pos, NULL);
        return pos;
    }
    an_tensor *pos = an_tensor_new(ctx, AN_I64, AN_CPU, 2, (int64_t[]){bq, t});
    if (!pos) return NULL;
    const int64_t *r = an_tensor_data(rows), *len = an_tensor_data(cache->length);
    for (int64_t b = 0; b < bq; b++)
        for (int64_t i = 0; i < t; i++) ((int64_t *)an_tensor_data(pos))[b * t + i] = len[r[b]] + i;
    return pos;
}

/* The cached forward of both entry points (kv_cache.h); trusted: ids need no range check. */
static an_tensor *forward_cached(an_ctx *ctx, an_model *m, an_tensor *ids, an_tensor *rows, an_kv_cache *cache,
                                 bool trusted) {
    if (!ids || !rows) return NULL;
    AN_CHECK_NULL(ctx, !an_grad_enabled(ctx), AN_ERR_INPUT, "cached forward: inference only (use an_no_grad_begin)");
    AN_CHECK_NULL(ctx, ids->ndim == 2 && rows->ndim == 1 && rows->shape[0] == ids->shape[0] && rows->dtype == AN_I64 &&
                           rows->device == AN_CPU,
                  AN_ERR_INPUT, "cached forward: ids must be (B, T) and rows (B) i64 on the CPU");
    AN_CHECK_NULL(ctx, ids->device == m->embed_tokens->device && (cache->device_length != NULL) == (ids->device == AN_CUDA),
                  AN_ERR_INPUT, "cached forward: ids, model and cache must be on one device");
    int64_t bq = ids->shape[0], t = ids->shape[1];
    const int64_t *r = an_tensor_data(rows);
    int64_t *len = an_tensor_data(cache->length);
    for (int64_t b = 0; b < bq; b++) {
        AN_CHECK_NULL(ctx, r[b] >= 0 && r[b] < cache->rows && len[r[b]] + t <= cache->capacity, AN_ERR_INPUT,
                      "cached forward: cache row %lld cannot take %lld more tokens (capacity %lld)", (long long)r[b],
                      (long long)t, (long long)cache->capacity);
        for (int64_t e = 0; e < b; e++) /* the device advance adds T once per entry */
            AN_CHECK_NULL(ctx, r[e] != r[b], AN_ERR_INPUT, "cached forward: cache row %lld appears twice in rows",
                          (long long)r[b]);
    }
    /* A prompt into empty rows attends only to itself: the training attention (flash / cuDNN) instead
     * of the decode kernel's walk over the cache. Not inside a graph capture: a replay would find
     * the rows no longer empty. */
    bool fresh = t > 1 && !(ids->device == AN_CUDA && an_cuda_capturing(ctx));
    for (int64_t b = 0; b < bq && fresh; b++) fresh = len[r[b]] == 0;
    an_tensor *dev_rows = cache->device_length ? an_kv_cache_device_rows(ctx, cache, rows) : NULL;
    if (cache->device_length && !dev_rows) return NULL;
    /* positions for the layers that rope through an_rope: the fused decode kernels form their own
     * from the cache's lengths (one launch fewer a step) */
    bool need_pos = false;
    for (int64_t l = 0; l < m->config.num_layers && !need_pos; l++) {
        cache_step cs = {cache, l, rows, dev_rows, fresh};
        need_pos = !decode_fused(&m->layers[l], &cs);
    }
    an_tensor *pos = need_pos ? cached_positions(ctx, cache, rows, dev_rows, t) : NULL;
    an_tensor *table = NULL; /* q's and k's rotation, formed once for the layers that rope */
    bool ready = !need_pos || (pos && an_rope_table(ctx, pos, &m->config.rope, m->config.head_dim,
                                                     m->embed_tokens->dtype, &table) == AN_OK);
    an_tensor *x = !ready    ? NULL
                   : trusted ? an_embedding_trusted(ctx, ids, m->embed_tokens)
                             : an_embedding(ctx, ids, m->embed_tokens);
    for (int64_t l = 0; l < m->config.num_layers && x; l++) {
        cache_step cs = {cache, l, rows, dev_rows, fresh};
        x = step(x, block_forward(ctx, &m->layers[l], x, pos, table, NULL, &cs));
    }
    an_tensor_release(pos), an_tensor_release(table);
    if (x && dev_rows &&
        an_cuda_kv_advance(ctx, an_tensor_data(dev_rows), an_tensor_data(cache->device_length), bq, t) != AN_OK)
        x = step(x, NULL);
    an_tensor_release(dev_rows);
    if (!x) return NULL;
    for (int64_t b = 0; b < bq; b++) len[r[b]] += t; /* the host mirror, by the amount the device added */
    return step(x, an_rmsnorm(ctx, x, m->norm, m->config.rms_norm_eps));
}

an_tensor *an_model_forward_cached(an_ctx *ctx, an_model *m, an_tensor *ids, an_tensor *rows, an_kv_cache *cache) {
    return forward_cached(ctx, m, ids, rows, cache, false);
}

an_tensor *an_model_forward_cached_trusted(an_ctx *ctx, an_model *m, an_tensor *ids, an_tensor *rows,
                                           an_kv_cache *cache) {
    return forward_cached(ctx, m, ids, rows, cache, true);
}
