/* checkpoint.h — checkpoints of a training run that resume bit for bit: weights, optimizer state,
 * RNG, data cursor, the recipe and SHA-256 sums in RUN_DIR/step_<N>/ (layout: docs/formats.md,
 * "Checkpoints").
 *
 * Rules:
 * - Atomic at the directory level: everything is written into step_<N>.tmp/ (each file fsynced),
 *   SHA256SUMS last, then the directory is renamed to step_<N>/ and RUN_DIR fsynced. A crash
 *   leaves no step_<N>, or a complete one. A step_<N>.tmp/ is never a checkpoint: leftovers are
 *   removed by the next save and by an_ckpt_find_latest.
 * - A checkpoint is loaded only after SHA256SUMS verifies (every listed file present and matching,
 *   nothing unlisted), and only into a model and optimizer it fits exactly: same parameter names,
 *   shapes and dtypes, same optimizer state names and shapes, same world size. Everything is
 *   checked before anything is changed; on error the model, optimizer, RNG and cursor are as they
 *   were. Every refusal is AN_ERR_INPUT naming the file and what is wrong.
 * - `resume: auto` never falls back silently: a damaged newest checkpoint is an error that names
 *   the newest intact older one the user may pass explicitly.
 * - Several ranks (ZeRO): each rank writes its own training_state.rank<R>.h5 into the same
 *   step_<N>.tmp/ through the three phases below, with barriers between them; rank 0 writes the
 *   weights and the recipe and commits. One process uses an_ckpt_save, which runs all three. */
#ifndef AN_CKPT_CHECKPOINT_H
#define AN_CKPT_CHECKPOINT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "autograd/ctx.h"  /* an_ctx, an_status, an_rng */
#include "ckpt/cursor.h"   /* an_data_cursor */
#include "model/model.h"   /* an_model: params, adapter_params */
#include "optim/optim.h"   /* an_optim: state tensors, step count */

#define AN_CKPT_MAX_COUNTERS 16
#define AN_CKPT_COUNTER_NAME_MAX 64

/* A named integer the trainer wants back on resume (tokens_seen, an RL stage, ...). Names use
 * [A-Za-z0-9_.] only. */
typedef struct {
    char name[AN_CKPT_COUNTER_NAME_MAX];
    int64_t value;
} an_ckpt_counter;

/* What a checkpoint holds. Pointers are borrowed. Save reads every field marked "save"; load fills
 * or restores every field marked "load" (a NULL pointer there: that part is not restored). */
typedef struct {
    int64_t step;                  /* save: the trainer step N (directory step_<N>); load: set from the file */
    an_model *model;               /* save, load: the adapter when model->n_adapter_params > 0 (PEFT files),
                                      else every parameter of model->params (HF model.safetensors) */
    an_optim *optim;               /* save (required), load: every state tensor and the step count, which
                                      is also the schedule's position */
    an_rng *rng;                   /* save (required), load: seed and offset (usually &ctx->rng) */
    an_data_cursor *cursor;        /* save (required), load */
    an_ckpt_counter counters[AN_CKPT_MAX_COUNTERS]; /* save: n_counters of them; load: replaced by the file's */
    int n_counters;
    const char *recipe_text;       /* save (required): the resolved recipe, written as recipe.yaml */
    const char *base_model_dir;    /* save: the Hugging Face directory the run started from; its config.json
                                      (required for a full fine-tune) and tokenizer files are copied. May be
                                      NULL for a LoRA run. */
    int world_size, rank;          /* save, load: 0 or 1 means one process (training_state.h5); more means
                                      training_state.rank<R>.h5 per rank */
    int keep_last;                 /* save: > 0 keeps this many checkpoints (the newest by N, this one
                                      included) and deletes older ones after a successful save; 0 keeps all */
    bool verified;                 /* load: true when an_ckpt_verify already passed on this directory (rank 0
                                      verifies, then a barrier), so it is not hashed again */
} an_ckpt_contents;

/* The directory of step N: RUN_DIR/step_<N> into buf. */
void an_ckpt_step_dir(const char *run_dir, int64_t step, char *buf, size_t size);

/* One process: the three phases below in order (world_size must be 0 or 1). On failure the
 * step_<N>.tmp directory is removed and no step_<N> appears. */
an_status an_ckpt_save(an_ctx *ctx, const char *run_dir, const an_ckpt_contents *c);

/* Phase 1 (rank 0, then a barrier): creates RUN_DIR if needed, removes leftover step_*.tmp
 * directories, refuses a step_<N> that already exists, and creates step_<N>.tmp/. */
an_status an_ckpt_save_begin(an_ctx *ctx, const char *run_dir, int64_t step);
/* Phase 2 (every rank, then a barrier): this rank's training state; rank 0 also writes the
 * weights, the copied config and tokenizer files, and recipe.yaml. */
an_status an_ckpt_save_rank(an_ctx *ctx, const char *run_dir, const an_ckpt_contents *c);
/* Phase 3 (rank 0): checks that every rank's state file is there, writes SHA256SUMS, fsyncs,
 * renames step_<N>.tmp to step_<N>, fsyncs RUN_DIR, then applies keep_last (checkpoints with a
 * larger N than this one are never deleted). */
an_status an_ckpt_save_commit(an_ctx *ctx, const char *run_dir, const an_ckpt_contents *c);

/* Removes every step_<N>.tmp directory of RUN_DIR (a save that did not finish). */
an_status an_ckpt_clean(an_ctx *ctx, const char *run_dir);

/* `resume: auto`: the newest complete step_<N> of RUN_DIR by N, verified. *step = N and path =
 * its directory; *step = -1 and path = "" when RUN_DIR has no checkpoint (or does not exist): a
 * fresh run. Leftover .tmp directories are removed first. When the newest fails verification the
 * result is an AN_ERR_INPUT error saying what is wrong and naming the newest older checkpoint that
 * does verify (to pass explicitly), or that there is none. With several ranks, rank 0 calls it and
 * passes the path on (it removes files). */
an_status an_ckpt_find_latest(an_ctx *ctx, const char *run_dir, char *path, size_t size, int64_t *step);

/* Checks STEP_DIR against its SHA256SUMS (see ckpt/sha256.h) and that it holds the files a
 * checkpoint needs: weights (adapter or full), recipe.yaml and the training state. */
an_status an_ckpt_verify(an_ctx *ctx, const char *step_dir);

/* Verifies STEP_DIR (unless c->verified), checks that it fits c->model and c->optim, then restores
 * weights, optimizer state and step count, RNG, cursor and counters, and sets c->step. The
 * state is read into host memory first (for the all-or-nothing check). */
an_status an_ckpt_load(an_ctx *ctx, const char *step_dir, an_ckpt_contents *c);

#endif
