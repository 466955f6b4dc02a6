/* checkpoint_internal.h — what the checkpoint files share and nothing outside reads: the file
 * names of a step directory, the training state as read from HDF5, and the weight files. */
#ifndef AN_CKPT_CHECKPOINT_INTERNAL_H
#define AN_CKPT_CHECKPOINT_INTERNAL_H

#include "ckpt/checkpoint.h"
#include "ckpt/safetensors.h"  /* an_safetensors: the weight file kept open between check and apply */

#define CKPT_RECIPE_FILE "recipe.yaml"
#define CKPT_ADAPTER_CONFIG "adapter_config.json"
#define CKPT_ADAPTER_WEIGHTS "adapter_model.safetensors"
#define CKPT_MODEL_WEIGHTS "model.safetensors"
#define CKPT_STATE_FORMAT "anneal training state"
#define CKPT_STATE_VERSION 1

/* "training_state.h5" for one process, "training_state.rank<R>.h5" for rank R of several. */
void ckpt_state_file_name(int world_size, int rank, char *buf, size_t size);
/* world_size 0 means 1. */
static inline int ckpt_world(int world_size) { return world_size > 1 ? world_size : 1; }

/* ---- training_state.c: the HDF5 file ----------------------------------------------------------- */

/* A training state file read whole into host memory. */
typedef struct {
    int64_t step, optimizer_step;
    int64_t world_size, rank;
    an_rng rng;
    an_data_cursor cursor;
    an_ckpt_counter counters[AN_CKPT_MAX_COUNTERS];
    int n_counters;
    int n_tensors;
    char **names;         /* optimizer state names, in the file's (byte) order; owned */
    an_tensor **tensors;  /* CPU f32 with the shapes written; owned references */
} ckpt_state;

/* Writes c's optimizer state, step, RNG, cursor and counters to path (fsynced). */
an_status ckpt_state_write(an_ctx *ctx, const char *path, const an_ckpt_contents *c);
/* Reads and checks the whole file; on failure *out is empty and needs no free. */
an_status ckpt_state_read(an_ctx *ctx, const char *path, ckpt_state *out);
void ckpt_state_free(ckpt_state *s);

/* ---- weights.c: the adapter or the full model -------------------------------------------------- */

/* Writes the weights of c->model into dir, plus config/tokenizer files copied from c->base_model_dir. */
an_status ckpt_weights_write(an_ctx *ctx, const char *dir, const an_ckpt_contents *c);

typedef struct {
    an_safetensors *st;
    bool adapter;
    char file[4096];
} ckpt_weights;

/* Opens dir's weights and checks that they fit model exactly (names, shapes, dtypes; for an
 * adapter also adapter_config.json against the model's LoRA settings). */
an_status ckpt_weights_open(an_ctx *ctx, const char *dir, an_model *model, ckpt_weights *w);
/* Copies the checked weights into the model (bit for bit: dtypes are equal). */
an_status ckpt_weights_apply(an_ctx *ctx, const ckpt_weights *w, an_model *model);
void ckpt_weights_close(ckpt_weights *w);

#endif
