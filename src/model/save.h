/* save.h — writing a model as a Hugging Face directory that anneal and transformers both load. */
#ifndef AN_MODEL_SAVE_H
#define AN_MODEL_SAVE_H

#include "model/model.h"

/* DIR/config.json and DIR/model.safetensors (tensors as `dtype`: f32, bf16 or f16); DIR is created
 * when absent. A model with unmerged LoRA adapters is refused. */
an_status an_model_save(an_ctx *ctx, const an_model *model, const char *dir, an_dtype dtype);

/* Copies the tokenizer files of a model directory (tokenizer.json, tokenizer_config.json,
 * special_tokens_map.json, generation_config.json; those present) from FROM_DIR to TO_DIR. */
an_status an_model_copy_tokenizer(an_ctx *ctx, const char *from_dir, const char *to_dir);

#endif
