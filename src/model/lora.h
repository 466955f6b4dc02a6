/* lora.h — LoRA adapters on the model's projections, in PEFT's format and semantics.
 *
 * A (r, in) starts kaiming-uniform (bound 1/sqrt(in), PEFT's default), B (out, r) starts at zero,
 * the branch adds scale * B(A(dropout(x))) with scale = alpha / r (or alpha / sqrt(r) with rsLoRA).
 * Attaching freezes every base parameter. Adapter tensors are named as PEFT saves them:
 * "base_model.model.<HF module name>.lora_A.weight". */
#ifndef AN_MODEL_LORA_H
#define AN_MODEL_LORA_H

#include "model/model.h"

#define AN_LORA_MAX_TENSORS 4096

/* Parses target names ("q_proj", ..., or the single name "all-linear") into a target bit set. */
an_status an_lora_parse_targets(an_ctx *ctx, const char *const *names, int n, unsigned *targets);
/* The PEFT module names of a bit set, e.g. "q_proj", in projection order; returns the count. */
int an_lora_target_names(unsigned targets, const char *names[7]);

/* Adds adapters (initialised as above, on each base weight's dtype and device) and freezes the base. */
an_status an_lora_attach(an_ctx *ctx, an_model *model, const an_lora_config *config);
/* Writes DIR/adapter_config.json and DIR/adapter_model.safetensors (each atomically). */
an_status an_lora_save_peft(an_ctx *ctx, const an_model *model, const char *dir, const char *base_model_name);
/* Reads a PEFT LoRA adapter directory into a model without adapters; features this file does not
 * implement (DoRA, bias training, rank patterns, modules_to_save, ...) are AN_ERR_INPUT errors. */
an_status an_lora_load_peft(an_ctx *ctx, an_model *model, const char *dir);
/* W += scale * B @ A for every adapter, then removes the adapters (the model is plain again). */
an_status an_lora_merge(an_ctx *ctx, an_model *model);

#endif
