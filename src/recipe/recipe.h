/* recipe.h — a training run described by a YAML recipe file, with command-line `key=value`
 * overrides, read into one typed struct and validated (docs/recipes.md documents every key).
 *
 * Rules: loading is strict. An unknown key (with the closest valid key suggested), a value of the
 * wrong type or out of range, a duplicate key, a YAML syntax error, or two settings that contradict
 * each other is an AN_ERR_INPUT error whose message names the file and line (or "command line" and
 * the override) and the key path. Every key has a default; after a successful load every field is
 * resolved (derived defaults such as output_dir and logging.jsonl are filled in), so the struct can
 * be written back with an_recipe_write_yaml and loaded again to an identical struct.
 * Ownership: an an_recipe owns its strings and lists (heap); an_recipe_free releases them. A failed
 * load leaves *out untouched. Paths are kept as written; they are relative to the directory anneal
 * runs in, not to the recipe file, and nothing here checks that they exist. */
#ifndef AN_RECIPE_H
#define AN_RECIPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "autograd/ctx.h"    /* an_ctx, an_device, an_status */
#include "autograd/dtype.h"  /* an_dtype */

typedef struct {
    char **items;  /* n owned strings */
    int n;
} an_recipe_strings;

typedef enum { AN_RECIPE_METHOD_FULL = 0, AN_RECIPE_METHOD_LORA = 1 } an_recipe_method;

typedef enum {
    AN_RECIPE_FORMAT_AUTO = 0,           /* decided per file from the first record */
    AN_RECIPE_FORMAT_TEXT,               /* {"text": ...} lines or plain text */
    AN_RECIPE_FORMAT_PROMPT_COMPLETION,  /* {"prompt": ..., "completion": ...}; loss on the completion */
    AN_RECIPE_FORMAT_CHAT,               /* {"messages": [...]} through the chat template; loss on replies */
} an_recipe_data_format;

typedef enum { AN_RECIPE_OPTIMIZER_ADAMW = 0 } an_recipe_optimizer_name;

typedef enum {
    AN_RECIPE_SCHEDULE_CONSTANT = 0,
    AN_RECIPE_SCHEDULE_LINEAR,
    AN_RECIPE_SCHEDULE_COSINE,
} an_recipe_schedule_type;

typedef enum {
    AN_RECIPE_RESUME_AUTO = 0,  /* continue from the newest complete step_<N> in output_dir, if any */
    AN_RECIPE_RESUME_NEVER,     /* always start from the model; an existing run directory is an error */
    AN_RECIPE_RESUME_PATH,      /* continue from the step directory in resume_path */
} an_recipe_resume;

typedef enum {
    AN_RECIPE_PROGRESS_AUTO = 0,  /* bar on a terminal, plain lines otherwise */
    AN_RECIPE_PROGRESS_BAR,
    AN_RECIPE_PROGRESS_PLAIN,
    AN_RECIPE_PROGRESS_OFF,
} an_recipe_progress;

typedef enum {
    AN_RECIPE_EXPORT_SAFETENSORS_MERGED = 0,  /* HF directory, LoRA merged into the base */
    AN_RECIPE_EXPORT_GGUF,                    /* one .gguf file for llama.cpp / Ollama */
    AN_RECIPE_EXPORT_AWQ,                     /* AWQ int4 safetensors for vLLM / transformers */
    AN_RECIPE_EXPORT_GPTQ,                    /* GPTQ int4/int8 safetensors for vLLM / transformers */
} an_recipe_export_format;

typedef enum {
    AN_RECIPE_QUANT_NONE = 0,  /* safetensors_merged */
    AN_RECIPE_QUANT_F16,       /* gguf */
    AN_RECIPE_QUANT_Q8_0,      /* gguf */
    AN_RECIPE_QUANT_Q4_0,      /* gguf */
    AN_RECIPE_QUANT_Q4_K_M,    /* gguf */
    AN_RECIPE_QUANT_INT4,      /* awq, gptq */
    AN_RECIPE_QUANT_INT8,      /* gptq */
} an_recipe_quant;

typedef struct {
    char *name;             /* run name: [A-Za-z0-9._-]+; default: the recipe file name without .yaml */
    char *output_dir;       /* default checkpoints/runs/<name> */
    int64_t seed;           /* >= 0 */
    an_device device;       /* AN_CPU or AN_CUDA */
    an_dtype dtype;         /* AN_F32, AN_BF16 or AN_F16: parameters and activations */
    an_recipe_method method;
    double grad_clip;       /* max global gradient L2 norm; 0 = no clipping */

    struct {
        char *path;                   /* Hugging Face model directory (required) */
        bool gradient_checkpointing;  /* recompute each block in backward */
    } model;

    struct {                          /* meaningful only with method lora (see docs/recipes.md) */
        int64_t rank;                 /* r >= 1 */
        double alpha;                 /* scale = alpha / rank (alpha / sqrt(rank) with rslora) */
        double dropout;               /* on the LoRA input, in [0, 1) */
        bool targets_all_linear;      /* every linear layer of the blocks; then targets is empty */
        an_recipe_strings targets;    /* module names: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj */
        bool rslora;
    } lora;

    struct {
        an_recipe_strings train;      /* at least one file */
        char *validation;             /* NULL when not given */
        double validation_fraction;   /* of the training documents held out; 0 when validation is given */
        an_recipe_data_format format;
        double max_bad_fraction;      /* share of records that may be malformed (skipped, counted) */
        int64_t seq_len;              /* tokens per packed row */
        bool packing;
        bool shuffle;
    } data;

    struct {
        int64_t micro_batch;          /* rows per forward/backward */
        int64_t grad_accum;           /* micro-batches per optimizer step */
        int64_t epochs;               /* used when max_steps == -1 */
        int64_t max_steps;            /* optimizer steps; -1 = derived from epochs */
        int64_t eval_every;           /* optimizer steps between evaluations; 0 = no evaluation */
        int64_t eval_steps;           /* micro-batches per evaluation; 0 = the whole validation set */
    } training;

    struct {
        an_recipe_optimizer_name name;
        double lr;                    /* peak learning rate */
        double betas[2];
        double eps;
        double weight_decay;          /* decoupled (AdamW); never applied to norms, biases, embeddings */
        bool update_in_backward;      /* each parameter updated once its gradient is final, during the
                                         last micro-batch's backward (src/optim/in_backward.c); needs
                                         grad_clip 0 */
    } optimizer;

    struct {
        an_recipe_schedule_type type;
        int64_t warmup_steps;         /* linear warmup from 0; at most one of warmup_steps/warmup_ratio > 0 */
        double warmup_ratio;          /* of the total optimizer steps */
        double min_lr_ratio;          /* linear/cosine decay ends at lr * min_lr_ratio */
    } schedule;

    struct {
        int64_t every;                /* optimizer steps between checkpoints; 0 = only at the end */
        int64_t keep_last;            /* newest step directories kept; 0 = keep all */
        an_recipe_resume resume;
        char *resume_path;            /* the step directory when resume == AN_RECIPE_RESUME_PATH, else NULL */
    } checkpoint;

    struct {
        int64_t every;                /* optimizer steps between metric lines */
        char *jsonl;                  /* metrics file; default <output_dir>/metrics.jsonl */
        an_recipe_progress progress;
        int64_t samples;              /* validation prompts continued (greedy) before and after training */
        int64_t sample_tokens;        /* new tokens per sample */
    } logging;

    struct {                          /* parsed and validated only; `anneal export` acts on it */
        bool enabled;                 /* an export block was given; the fields below are meaningless otherwise */
        an_recipe_export_format format;
        an_recipe_quant quant;        /* default per format: none, q4_k_m, int4, int4 */
        an_dtype dtype;               /* unquantized tensors (and AWQ/GPTQ scales); unused by gguf */
        char *path;                   /* default under output_dir, named after the format */
    } export_opts;
} an_recipe;

/* Reads the recipe at `path`, applies `overrides` ("key.path=value", value parsed as a YAML scalar,
 * flow sequence or flow mapping) in order, fills defaults and validates. On success *out is a new
 * recipe the caller frees with an_recipe_free. */
an_status an_recipe_load(an_ctx *ctx, const char *path, int n_overrides, const char *const *overrides,
                         an_recipe *out);

/* The same for YAML text in memory; `source` stands for the file name in messages and gives the
 * default run name. */
an_status an_recipe_parse(an_ctx *ctx, const char *source, const char *text, size_t len, int n_overrides,
                          const char *const *overrides, an_recipe *out);

/* The fully resolved recipe as YAML (every key, defaults included; keys that do not apply are written
 * as comments saying why). *out is a new NUL-terminated string the caller frees with free(). */
an_status an_recipe_to_yaml(an_ctx *ctx, const an_recipe *recipe, char **out);

/* an_recipe_to_yaml written to `path` atomically (a temporary file renamed into place). */
an_status an_recipe_write_yaml(an_ctx *ctx, const an_recipe *recipe, const char *path);

/* The key path ("training.micro_batch") of the first field where a and b differ, or NULL when they
 * are identical (a resumed run uses it to say which setting changed). */
const char *an_recipe_first_difference(const an_recipe *a, const an_recipe *b);

/* Releases the strings and lists; the struct itself is the caller's. Safe on a zeroed struct. */
void an_recipe_free(an_recipe *recipe);

#endif
