/* save.h — writing a model as a Hugging Face directory that anneal and transformers both load. */
#ifndef AN_MODEL_SAVE_H
#define AN_MODEL_SAVE_H

#include "model/model.h"

/* DIR/config.json and DIR/model.safetensors (tensors as `dtype`: f32, bf16 or f16); DIR is created
 * when absent. A model with unmerged LoRA adapters is refused. */
an_status an_model_save(an_ctx *ctx, const an_model *model, const char *dir, an_dtype dtype);

#endif
