/* load.h — building an an_model from a Hugging Face model directory. */
#ifndef AN_MODEL_LOAD_H
#define AN_MODEL_LOAD_H

#include "model/model.h"

/* Reads MODEL_DIR/config.json and the weights (single file or sharded), converting them to
 * `dtype` on `device`. On failure nothing is returned and the error names the file and tensor. */
an_status an_model_load(an_ctx *ctx, const char *model_dir, an_dtype dtype, an_device device, an_model **out);

#endif
