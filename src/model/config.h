/* config.h — the architecture of a Hugging Face model directory, read from its config.json.
 *
 * One struct covers Qwen2ForCausalLM and LlamaForCausalLM (the DeepSeek-R1-Distill families);
 * the differences are fields, not code paths. Loading is strict: an unknown architecture, a
 * missing required key, an inconsistent value, or a key that asks for a feature anneal does not
 * implement (sliding windows, mrope, quantized weights, other rope scalings, ...) is an
 * AN_ERR_INPUT error naming config.json and the key. Keys that cannot change the computation
 * (use_cache, initializer_range, generation defaults, ...) are listed in config.c and ignored. */
#ifndef AN_MODEL_CONFIG_H
#define AN_MODEL_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "autograd/ctx.h"
#include "autograd/dtype.h"
#include "autograd/ops.h"  /* an_rope_config */

typedef enum { AN_ARCH_QWEN2 = 0, AN_ARCH_LLAMA = 1 } an_architecture;

#define AN_MAX_EOS_IDS 8

typedef struct {
    an_architecture architecture;
    char architecture_name[64];   /* "Qwen2ForCausalLM" */
    int64_t vocab_size;
    int64_t hidden_size;
    int64_t intermediate_size;
    int64_t num_layers;
    int64_t num_heads;
    int64_t num_kv_heads;
    int64_t head_dim;
    int64_t max_position_embeddings;
    double rms_norm_eps;
    an_rope_config rope;          /* NEOX style; theta and optional llama3 scaling */
    bool tie_word_embeddings;
    bool qkv_bias;                /* Qwen2: q/k/v projections have a bias; o_proj never does */
    an_dtype torch_dtype;         /* the dtype the weights were saved in */
    int64_t bos_token_id;         /* -1 when absent */
    int64_t eos_token_ids[AN_MAX_EOS_IDS];
    int n_eos_token_ids;
} an_model_config;

/* Reads MODEL_DIR/config.json (or a config.json path) into *out. */
an_status an_model_config_load(an_ctx *ctx, const char *path, an_model_config *out);

/* Writes the config as config.json in the layout the DeepSeek-R1-Distill checkpoints use (top-level
 * rope_theta/rope_scaling, torch_dtype = `dtype`), atomically. */
an_status an_model_config_save(an_ctx *ctx, const an_model_config *config, an_dtype dtype, const char *path);

/* Parameter count of the model the config describes (embeddings and head counted once when tied). */
int64_t an_model_config_num_params(const an_model_config *c);

#endif
