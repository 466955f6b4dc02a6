/* internal.h — private to src/recipe: the key table that drives parsing, resolving, writing and
 * comparing recipes, and the helpers those files share.
 *
 * Rules: one row per key, indexed by recipe_key_id, in the order the writer emits them; every field
 * of an_recipe is reachable through exactly one row (section rows have no field, except `export`,
 * whose row carries export_opts.enabled). Field helpers deep-copy and free heap strings. */
#ifndef AN_RECIPE_INTERNAL_H
#define AN_RECIPE_INTERNAL_H

#include <string.h>
#include <yaml.h>  /* yaml_document_t, yaml_node_t */

#include "recipe/recipe.h"

typedef enum {
    K_NAME, K_OUTPUT_DIR, K_SEED, K_DEVICE, K_DTYPE, K_METHOD, K_GRAD_CLIP,
    K_MODEL, K_MODEL_PATH, K_MODEL_GRADIENT_CHECKPOINTING,
    K_LORA, K_LORA_RANK, K_LORA_ALPHA, K_LORA_DROPOUT, K_LORA_TARGETS, K_LORA_RSLORA,
    K_DATA, K_DATA_TRAIN, K_DATA_VALIDATION, K_DATA_VALIDATION_FRACTION, K_DATA_FORMAT, K_DATA_MAX_BAD_FRACTION,
    K_DATA_SEQ_LEN, K_DATA_PACKING, K_DATA_SHUFFLE,
    K_TRAINING, K_TRAINING_MICRO_BATCH, K_TRAINING_GRAD_ACCUM, K_TRAINING_EPOCHS, K_TRAINING_MAX_STEPS,
    K_TRAINING_EVAL_EVERY, K_TRAINING_EVAL_STEPS,
    K_OPTIMIZER, K_OPTIMIZER_NAME, K_OPTIMIZER_LR, K_OPTIMIZER_BETAS, K_OPTIMIZER_EPS, K_OPTIMIZER_WEIGHT_DECAY,
    K_OPTIMIZER_UPDATE_IN_BACKWARD,
    K_SCHEDULE, K_SCHEDULE_TYPE, K_SCHEDULE_WARMUP_STEPS, K_SCHEDULE_WARMUP_RATIO, K_SCHEDULE_MIN_LR_RATIO,
    K_CHECKPOINT, K_CHECKPOINT_EVERY, K_CHECKPOINT_KEEP_LAST, K_CHECKPOINT_RESUME,
    K_LOGGING, K_LOGGING_EVERY, K_LOGGING_JSONL, K_LOGGING_PROGRESS, K_LOGGING_SAMPLES, K_LOGGING_SAMPLE_TOKENS,
    K_EXPORT, K_EXPORT_FORMAT, K_EXPORT_QUANT, K_EXPORT_DTYPE, K_EXPORT_PATH,
    K_COUNT
} recipe_key_id;

typedef enum {
    KIND_SECTION,  /* a mapping of keys */
    KIND_INT,      /* int64_t */
    KIND_NUMBER,   /* double, finite */
    KIND_BOOL,     /* bool */
    KIND_STRING,   /* char *, non-empty; NULL = unset (optional or derived) */
    KIND_ENUM,     /* an enum stored as int, spelled by the row's names */
    KIND_STRINGS,  /* an_recipe_strings: one string or a list */
    KIND_TARGETS,  /* lora.targets: all-linear or a list of module names */
    KIND_PAIR,     /* double[2] */
    KIND_RESUME,   /* checkpoint.resume: auto | never | a path */
} recipe_kind;

typedef struct {
    const char *name;
    int value;
} recipe_enum_value;

typedef struct {
    const char *path;       /* "training.micro_batch" */
    recipe_kind kind;
    size_t offset;          /* of the field in an_recipe */
    bool optional;          /* KIND_STRING: null is a value (unset) */
    double min, max;        /* KIND_INT / KIND_NUMBER / KIND_PAIR bounds */
    bool min_open, max_open;
    const recipe_enum_value *values;  /* KIND_ENUM */
    int n_values;
} recipe_key;

extern const recipe_key recipe_keys[K_COUNT];
extern const an_recipe recipe_defaults;  /* derived and required fields are NULL / empty here */

/* The LoRA target names anneal knows (Qwen2/Llama linear layers) and their count. */
extern const char *const recipe_lora_modules[];
extern const int recipe_n_lora_modules;

/* Key id of `path`, or -1. */
int recipe_find_key(const char *path);
/* The section row a key belongs to (K_MODEL for model.path), or -1 for top-level keys. */
int recipe_section_of(int id);
/* The field of key `id` inside r. */
void *recipe_field(an_recipe *r, int id);
const void *recipe_field_const(const an_recipe *r, int id);

/* Frees the field's heap parts and copies `src`'s value in (deep). False when out of memory. */
bool recipe_copy_field(an_recipe *dst, const an_recipe *src, int id);
void recipe_free_field(an_recipe *r, int id);
bool recipe_field_equal(const an_recipe *a, const an_recipe *b, int id);
/* Spelling of an enum value of key `id`, or NULL. */
const char *recipe_enum_name(int id, int value);

/* Optimal string alignment distance (Levenshtein with adjacent transpositions). */
int recipe_edit_distance(const char *a, const char *b);
/* The closest of `names` to `word` when it is close enough to be a likely typo, else NULL. */
const char *recipe_closest(const char *word, const char *const *names, int n);
/* The valid key path an unknown key most likely meant (typo, wrong section, or another tool's name
 * for it such as lora_alpha or learning_rate), or NULL. */
const char *recipe_suggest_key(const char *path);

/* Where each key got its value; later sources override earlier ones. */
typedef enum { ORIGIN_DEFAULT = 0, ORIGIN_FILE = 1, ORIGIN_COMMAND_LINE = 2 } recipe_origin;

typedef struct {
    recipe_origin origin;
    int line;                 /* 1-based line in the file (ORIGIN_FILE) */
    const char *override_text; /* the "key=value" argument (ORIGIN_COMMAND_LINE) */
} recipe_source;

typedef struct {
    an_ctx *ctx;
    const char *file;                /* the recipe's name in messages */
    recipe_source source[K_COUNT];
} recipe_state;

/* Records an AN_ERR_INPUT error prefixed with where key `id` was set: "f.yaml:12: ", "command line
 * 'key=value': ", or "f.yaml: " for a key left at its default. */
an_status recipe_fail_at_key(recipe_state *st, const char *cfile, int cline, int id, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
#define RECIPE_FAIL(st, id, ...) recipe_fail_at_key((st), __FILE__, __LINE__, (id), __VA_ARGS__)

/* One source being applied (the file, or one override) and the recipe it writes into. */
typedef struct {
    recipe_state *st;
    an_recipe *r;
    yaml_document_t *doc;
    recipe_origin origin;
    const char *override_text;  /* ORIGIN_COMMAND_LINE: the "key=value" argument */
} recipe_walker;

/* Where `node` is, for messages and recipe_state.source. */
recipe_source recipe_here(const recipe_walker *w, const yaml_node_t *node);
/* Like recipe_fail_at_key, at `node` of the source being applied. */
an_status recipe_fail_at_node(recipe_walker *w, const char *cfile, int cline, const yaml_node_t *node,
                              const char *fmt, ...) __attribute__((format(printf, 5, 6)));
#define NODE_FAIL(w, node, ...) recipe_fail_at_node((w), __FILE__, __LINE__, (node), __VA_ARGS__)

/* values.c: stores `node` as the value of key `id` and records where it came from (a section takes a
 * mapping of its keys, or null for its defaults). */
an_status recipe_apply_value(recipe_walker *w, int id, const yaml_node_t *node);
/* parse.c: the keys of mapping `map`, under section row `section` (-1 at the top level). */
an_status recipe_apply_mapping(recipe_walker *w, int section, const yaml_node_t *map);

/* libyaml nodes. A NULL node is an empty override value, which is null. */
static inline bool node_is_scalar(const yaml_node_t *n) { return n && n->type == YAML_SCALAR_NODE; }
static inline bool node_is_plain(const yaml_node_t *n) {
    return node_is_scalar(n) && n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
}
static inline const char *node_text(const yaml_node_t *n) { return (const char *)n->data.scalar.value; }
/* `key:` with nothing, `~`, `null`: plain scalars only ("null" quoted is a string). */
static inline bool node_is_null(const yaml_node_t *n) {
    if (!n) return true;
    if (!node_is_plain(n)) return false;
    const char *t = node_text(n);
    return !*t || !strcmp(t, "~") || !strcmp(t, "null") || !strcmp(t, "Null") || !strcmp(t, "NULL");
}
static inline const char *node_kind(const yaml_node_t *n) {
    return n->type == YAML_SEQUENCE_NODE ? "a list" : n->type == YAML_MAPPING_NODE ? "a mapping" : "a single value";
}

/* Cross-field rules and derived defaults, once the file and every override are applied. */
an_status recipe_resolve(recipe_state *st, an_recipe *r);

/* The reason key `id` has no effect in r (the writer comments it out), or NULL when it applies. */
const char *recipe_inactive_reason(const an_recipe *r, int id);

#endif
