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

/* A linear projection y = x W^T + b, with an optional LoRA branch + scale * B(A(dropout(x))). */
typedef struct {
    an_tensor *weight;  /* (out, in) */
    an_tensor *bias;    /* (out) or NULL */
    an_tensor *lora_a;  /* (r, in) or NULL when this projection has no adapter */
    an_tensor *lora_b;  /* (out, r) */
} an_projection;

typedef struct an_model an_model;

typedef struct {
    const an_model *model;
    an_tensor *input_layernorm;          /* (H) */
    an_projection q_proj;                /* (Hq*D, H), bias (Hq*D) for Qwen2 */
    an_projection k_proj, v_proj;        /* (Hkv*D, H), bias (Hkv*D) for Qwen2 */
    an_projection o_proj;                /* (H, Hq*D) */
    an_tensor *post_attention_layernorm; /* (H) */
    an_projection gate_proj, up_proj;    /* (I, H) */
    an_projection down_proj;             /* (H, I) */
} an_layer;

/* LoRA adapter settings (PEFT semantics). */
typedef struct {
    int64_t rank;        /* r */
    double alpha;        /* lora_alpha */
    double dropout;      /* on the adapter's input, training only */
    bool rslora;         /* scale alpha / sqrt(r) instead of alpha / r */
    unsigned targets;    /* bit set of an_lora_target */
} an_lora_config;

typedef enum {
    AN_LORA_Q = 1u << 0, AN_LORA_K = 1u << 1, AN_LORA_V = 1u << 2, AN_LORA_O = 1u << 3,
    AN_LORA_GATE = 1u << 4, AN_LORA_UP = 1u << 5, AN_LORA_DOWN = 1u << 6,
    AN_LORA_ALL_LINEAR = 0x7fu, /* PEFT's "all-linear": every projection, never lm_head */
} an_lora_target;

typedef struct {
    char name[96];        /* Hugging Face name, e.g. "model.layers.3.self_attn.q_proj.weight" */
    an_tensor **slot;     /* the struct field holding it */
    int ndim;
    int64_t shape[2];
    bool no_decay;        /* norms, biases and embeddings: no weight decay (by name rule) */
} an_param;

struct an_model {
    an_model_config config;
    an_tensor *embed_tokens;  /* (V, H) */
    an_layer *layers;         /* num_layers */
    an_tensor *norm;          /* (H) */
    an_tensor *lm_head;       /* (V, H); the same tensor as embed_tokens when tied */
    an_param *params;         /* every distinct parameter, in checkpoint order */
    int n_params;
    bool gradient_checkpointing; /* recompute each block in backward */
    /* LoRA (see model/lora.h): adapter parameters in their own table, PEFT names. */
    an_lora_config lora;
    double lora_scale;        /* alpha / r or alpha / sqrt(r) */
    bool lora_enabled;        /* false: the frozen base alone (the RL reference policy) */
    bool training;            /* dropout on */
    bool decode_unfused;      /* cached forward on CUDA op by op, not by the fused decode kernels (model.c) */
    an_param *adapter_params;
    int n_adapter_params;
};

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
