/* model.h — the decoder-only transformer of Qwen2 and Llama checkpoints, built from autograd ops.
 *
 * One definition serves both families: the config decides q/k/v biases, rope scaling, tied
 * embeddings and sizes. Every parameter keeps its Hugging Face name, reachable through the
 * struct fields and, for loading/saving/optimising, through the name table `params`. The model
 * owns its parameter tensors. */
#ifndef AN_MODEL_MODEL_H
#define AN_MODEL_MODEL_H

#include "autograd/tensor.h"
#include "model/config.h"

typedef struct {
    const an_model_config *config;
    an_tensor *input_layernorm;          /* (H) */
    an_tensor *q_proj, *q_bias;          /* (Hq*D, H), (Hq*D) or NULL */
    an_tensor *k_proj, *k_bias;          /* (Hkv*D, H), (Hkv*D) or NULL */
    an_tensor *v_proj, *v_bias;          /* (Hkv*D, H), (Hkv*D) or NULL */
    an_tensor *o_proj;                   /* (H, Hq*D) */
    an_tensor *post_attention_layernorm; /* (H) */
    an_tensor *gate_proj, *up_proj;      /* (I, H) */
    an_tensor *down_proj;                /* (H, I) */
} an_layer;

typedef struct {
    char name[96];        /* Hugging Face name, e.g. "model.layers.3.self_attn.q_proj.weight" */
    an_tensor **slot;     /* the struct field holding it */
    int ndim;
    int64_t shape[2];
    bool no_decay;        /* norms, biases and embeddings: no weight decay (by name rule) */
} an_param;

typedef struct {
    an_model_config config;
    an_tensor *embed_tokens;  /* (V, H) */
    an_layer *layers;         /* num_layers */
    an_tensor *norm;          /* (H) */
    an_tensor *lm_head;       /* (V, H); the same tensor as embed_tokens when tied */
    an_param *params;         /* every distinct parameter, in checkpoint order */
    int n_params;
    bool gradient_checkpointing; /* recompute each block in backward */
} an_model;

/* A model with parameters allocated (uninitialised) as `dtype` on `device`. Free with
 * an_model_free. */
an_status an_model_create(an_ctx *ctx, const an_model_config *config, an_dtype dtype, an_device device,
                          an_model **out);
void an_model_free(an_model *model);
/* The table entry named `name`, or NULL. */
an_param *an_model_find(an_model *model, const char *name);
/* Normal(0, std) weights, ones for norms, zeros for biases (for tests and from-scratch models). */
an_status an_model_init_random(an_ctx *ctx, an_model *model, double std);
void an_model_set_requires_grad(an_model *model, bool requires_grad);

/* Final hidden states (B, T, H) after the last norm for ids (B, T) i32/i64. positions (B, T) may
 * be NULL for 0..T-1 in every row; segments (B, T) may be NULL when each row is one document. */
an_tensor *an_model_hidden(an_ctx *ctx, an_model *model, an_tensor *ids, an_tensor *positions, an_tensor *segments);
/* Logits (B, T, V) = hidden @ lm_head^T. */
an_tensor *an_model_logits(an_ctx *ctx, an_model *model, an_tensor *ids, an_tensor *positions, an_tensor *segments);
/* Causal LM loss as transformers computes it: token t predicts labels[t + 1]; labels -100 are not
 * counted; the mean over counted tokens (or the sum over opts->normalizer). Full (B*T, V) logits
 * are never formed (chunked fused cross-entropy). */
an_tensor *an_model_loss(an_ctx *ctx, an_model *model, an_tensor *ids, an_tensor *labels, an_tensor *positions,
                         an_tensor *segments, const an_cross_entropy_opts *opts);

#endif
