/* schema.c — the recipe keys: their table (type, field, bounds, spellings), the defaults, field-level
 * copy/free/compare, and "did you mean" suggestions for unknown keys and values.
 *
 * Rules: recipe_defaults holds every default that does not depend on another key; derived defaults
 * (name, output_dir, logging.jsonl, data.validation_fraction with data.validation, export.*) are
 * filled in by resolve.c. Docs in docs/recipes.md list the same defaults (a test checks them). */
#include "recipe/internal.h"

#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(sizeof(an_dtype) == sizeof(int) && sizeof(an_device) == sizeof(int) &&
                   sizeof(an_recipe_method) == sizeof(int) && sizeof(an_recipe_quant) == sizeof(int),
               "enum fields are read and written as int");

#define FIELD(member) offsetof(an_recipe, member)
#define KEY(path_, kind_, member) .path = (path_), .kind = (kind_), .offset = FIELD(member)
#define SECTION(path_) .path = (path_), .kind = KIND_SECTION
#define ENUM(list) .values = (list), .n_values = (int)(sizeof list / sizeof *list)

static const recipe_enum_value devices[] = {{"cpu", AN_CPU}, {"cuda", AN_CUDA}};
static const recipe_enum_value dtypes[] = {{"float32", AN_F32}, {"bfloat16", AN_BF16}, {"float16", AN_F16}};
static const recipe_enum_value methods[] = {{"full", AN_RECIPE_METHOD_FULL}, {"lora", AN_RECIPE_METHOD_LORA}};
static const recipe_enum_value formats[] = {{"auto", AN_RECIPE_FORMAT_AUTO},
                                            {"text", AN_RECIPE_FORMAT_TEXT},
                                            {"prompt_completion", AN_RECIPE_FORMAT_PROMPT_COMPLETION},
                                            {"chat", AN_RECIPE_FORMAT_CHAT}};
static const recipe_enum_value optimizers[] = {{"adamw", AN_RECIPE_OPTIMIZER_ADAMW}};
static const recipe_enum_value schedules[] = {{"constant", AN_RECIPE_SCHEDULE_CONSTANT},
                                              {"linear", AN_RECIPE_SCHEDULE_LINEAR},
                                              {"cosine", AN_RECIPE_SCHEDULE_COSINE}};
static const recipe_enum_value progress[] = {{"auto", AN_RECIPE_PROGRESS_AUTO},
                                             {"bar", AN_RECIPE_PROGRESS_BAR},
                                             {"plain", AN_RECIPE_PROGRESS_PLAIN},
                                             {"off", AN_RECIPE_PROGRESS_OFF}};
static const recipe_enum_value export_formats[] = {{"safetensors_merged", AN_RECIPE_EXPORT_SAFETENSORS_MERGED},
                                                   {"gguf", AN_RECIPE_EXPORT_GGUF},
                                                   {"awq", AN_RECIPE_EXPORT_AWQ},
                                                   {"gptq", AN_RECIPE_EXPORT_GPTQ}};
static const recipe_enum_value quants[] = {{"none", AN_RECIPE_QUANT_NONE}, {"f16", AN_RECIPE_QUANT_F16},
                                           {"q8_0", AN_RECIPE_QUANT_Q8_0}, {"q4_0", AN_RECIPE_QUANT_Q4_0},
                                           {"q4_k_m", AN_RECIPE_QUANT_Q4_K_M}, {"int4", AN_RECIPE_QUANT_INT4},
                                           {"int8", AN_RECIPE_QUANT_INT8}};

/* Bounds: [min, max] unless min_open / max_open. */
#define INT_AT_LEAST(m) .min = (m), .max = 9.2e18
#define NUMBER_AT_LEAST(m) .min = (m), .max = INFINITY
#define FRACTION .min = 0, .max = 1, .max_open = true

const recipe_key recipe_keys[K_COUNT] = {
    [K_NAME] = {KEY("name", KIND_STRING, name)},
    [K_OUTPUT_DIR] = {KEY("output_dir", KIND_STRING, output_dir)},
    [K_SEED] = {KEY("seed", KIND_INT, seed), INT_AT_LEAST(0)},
    [K_DEVICE] = {KEY("device", KIND_ENUM, device), ENUM(devices)},
    [K_DTYPE] = {KEY("dtype", KIND_ENUM, dtype), ENUM(dtypes)},
    [K_METHOD] = {KEY("method", KIND_ENUM, method), ENUM(methods)},
    [K_GRAD_CLIP] = {KEY("grad_clip", KIND_NUMBER, grad_clip), NUMBER_AT_LEAST(0)},

    [K_MODEL] = {SECTION("model")},
    [K_MODEL_PATH] = {KEY("model.path", KIND_STRING, model.path)},
    [K_MODEL_GRADIENT_CHECKPOINTING] = {KEY("model.gradient_checkpointing", KIND_BOOL, model.gradient_checkpointing)},

    [K_LORA] = {SECTION("lora")},
    [K_LORA_RANK] = {KEY("lora.rank", KIND_INT, lora.rank), INT_AT_LEAST(1)},
    [K_LORA_ALPHA] = {KEY("lora.alpha", KIND_NUMBER, lora.alpha), NUMBER_AT_LEAST(0), .min_open = true},
    [K_LORA_DROPOUT] = {KEY("lora.dropout", KIND_NUMBER, lora.dropout), FRACTION},
    [K_LORA_TARGETS] = {KEY("lora.targets", KIND_TARGETS, lora.targets)},
    [K_LORA_RSLORA] = {KEY("lora.rslora", KIND_BOOL, lora.rslora)},

    [K_DATA] = {SECTION("data")},
    [K_DATA_TRAIN] = {KEY("data.train", KIND_STRINGS, data.train)},
    [K_DATA_VALIDATION] = {KEY("data.validation", KIND_STRING, data.validation), .optional = true},
    [K_DATA_VALIDATION_FRACTION] = {KEY("data.validation_fraction", KIND_NUMBER, data.validation_fraction), FRACTION},
    [K_DATA_FORMAT] = {KEY("data.format", KIND_ENUM, data.format), ENUM(formats)},
    [K_DATA_MAX_BAD_FRACTION] = {KEY("data.max_bad_fraction", KIND_NUMBER, data.max_bad_fraction), FRACTION},
    [K_DATA_SEQ_LEN] = {KEY("data.seq_len", KIND_INT, data.seq_len), .min = 2, .max = 1048576},
    [K_DATA_PACKING] = {KEY("data.packing", KIND_BOOL, data.packing)},
    [K_DATA_SHUFFLE] = {KEY("data.shuffle", KIND_BOOL, data.shuffle)},

    [K_TRAINING] = {SECTION("training")},
    [K_TRAINING_MICRO_BATCH] = {KEY("training.micro_batch", KIND_INT, training.micro_batch), INT_AT_LEAST(1)},
    [K_TRAINING_GRAD_ACCUM] = {KEY("training.grad_accum", KIND_INT, training.grad_accum), INT_AT_LEAST(1)},
    [K_TRAINING_EPOCHS] = {KEY("training.epochs", KIND_INT, training.epochs), INT_AT_LEAST(1)},
    /* -1 or >= 1: resolve.c rejects 0 with its own message */
    [K_TRAINING_MAX_STEPS] = {KEY("training.max_steps", KIND_INT, training.max_steps), INT_AT_LEAST(-1)},
    [K_TRAINING_EVAL_EVERY] = {KEY("training.eval_every", KIND_INT, training.eval_every), INT_AT_LEAST(0)},
    [K_TRAINING_EVAL_STEPS] = {KEY("training.eval_steps", KIND_INT, training.eval_steps), INT_AT_LEAST(0)},

    [K_OPTIMIZER] = {SECTION("optimizer")},
    [K_OPTIMIZER_NAME] = {KEY("optimizer.name", KIND_ENUM, optimizer.name), ENUM(optimizers)},
    [K_OPTIMIZER_LR] = {KEY("optimizer.lr", KIND_NUMBER, optimizer.lr), NUMBER_AT_LEAST(0), .min_open = true},
    [K_OPTIMIZER_BETAS] = {KEY("optimizer.betas", KIND_PAIR, optimizer.betas), FRACTION},
    [K_OPTIMIZER_EPS] = {KEY("optimizer.eps", KIND_NUMBER, optimizer.eps), NUMBER_AT_LEAST(0), .min_open = true},
    [K_OPTIMIZER_WEIGHT_DECAY] = {KEY("optimizer.weight_decay", KIND_NUMBER, optimizer.weight_decay),
                                  NUMBER_AT_LEAST(0)},
    [K_OPTIMIZER_UPDATE_IN_BACKWARD] = {KEY("optimizer.update_in_backward", KIND_BOOL, optimizer.update_in_backward)},

    [K_SCHEDULE] = {SECTION("schedule")},
    [K_SCHEDULE_TYPE] = {KEY("schedule.type", KIND_ENUM, schedule.type), ENUM(schedules)},
    [K_SCHEDULE_WARMUP_STEPS] = {KEY("schedule.warmup_steps", KIND_INT, schedule.warmup_steps), INT_AT_LEAST(0)},
    [K_SCHEDULE_WARMUP_RATIO] = {KEY("schedule.warmup_ratio", KIND_NUMBER, schedule.warmup_ratio), FRACTION},
    [K_SCHEDULE_MIN_LR_RATIO] = {KEY("schedule.min_lr_ratio", KIND_NUMBER, schedule.min_lr_ratio), .min = 0,
                                 .max = 1},

    [K_CHECKPOINT] = {SECTION("checkpoint")},
    [K_CHECKPOINT_EVERY] = {KEY("checkpoint.every", KIND_INT, checkpoint.every), INT_AT_LEAST(0)},
    [K_CHECKPOINT_KEEP_LAST] = {KEY("checkpoint.keep_last", KIND_INT, checkpoint.keep_last), INT_AT_LEAST(0)},
    [K_CHECKPOINT_RESUME] = {KEY("checkpoint.resume", KIND_RESUME, checkpoint.resume)},

    [K_LOGGING] = {SECTION("logging")},
    [K_LOGGING_EVERY] = {KEY("logging.every", KIND_INT, logging.every), INT_AT_LEAST(1)},
    [K_LOGGING_JSONL] = {KEY("logging.jsonl", KIND_STRING, logging.jsonl)},
    [K_LOGGING_PROGRESS] = {KEY("logging.progress", KIND_ENUM, logging.progress), ENUM(progress)},
    [K_LOGGING_SAMPLES] = {KEY("logging.samples", KIND_INT, logging.samples), INT_AT_LEAST(0)},
    [K_LOGGING_SAMPLE_TOKENS] = {KEY("logging.sample_tokens", KIND_INT, logging.sample_tokens), INT_AT_LEAST(1)},

    [K_EXPORT] = {SECTION("export"), .offset = FIELD(export_opts.enabled)},
    [K_EXPORT_FORMAT] = {KEY("export.format", KIND_ENUM, export_opts.format), ENUM(export_formats)},
    [K_EXPORT_QUANT] = {KEY("export.quant", KIND_ENUM, export_opts.quant), ENUM(quants)},
    [K_EXPORT_DTYPE] = {KEY("export.dtype", KIND_ENUM, export_opts.dtype), ENUM(dtypes)},
    [K_EXPORT_PATH] = {KEY("export.path", KIND_STRING, export_opts.path)},
};

const char *const recipe_lora_modules[] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
const int recipe_n_lora_modules = (int)(sizeof recipe_lora_modules / sizeof *recipe_lora_modules);

static char *const default_targets[] = {"q_proj", "v_proj"};

const an_recipe recipe_defaults = {
    .seed = 0,
    .device = AN_CPU,
    .dtype = AN_BF16,
    .method = AN_RECIPE_METHOD_LORA,
    .grad_clip = 1.0,
    .model = {.gradient_checkpointing = false},
    .lora = {.rank = 16, .alpha = 32.0, .dropout = 0.05, .targets = {(char **)default_targets, 2}},
    .data = {.validation_fraction = 0.01, .format = AN_RECIPE_FORMAT_AUTO, .max_bad_fraction = 0.0,
             .seq_len = 2048, .packing = true, .shuffle = true},
    .training = {.micro_batch = 1, .grad_accum = 1, .epochs = 1, .max_steps = -1, .eval_every = 0, .eval_steps = 0},
    .optimizer = {.name = AN_RECIPE_OPTIMIZER_ADAMW, .lr = 2e-4, .betas = {0.9, 0.999}, .eps = 1e-8,
                  .weight_decay = 0.0, .update_in_backward = false},
    .schedule = {.type = AN_RECIPE_SCHEDULE_COSINE, .warmup_steps = 0, .warmup_ratio = 0.0, .min_lr_ratio = 0.0},
    .checkpoint = {.every = 500, .keep_last = 3, .resume = AN_RECIPE_RESUME_AUTO},
    .logging = {.every = 10, .progress = AN_RECIPE_PROGRESS_AUTO, .samples = 2, .sample_tokens = 48},
    .export_opts = {.enabled = false, .format = AN_RECIPE_EXPORT_SAFETENSORS_MERGED, .quant = AN_RECIPE_QUANT_NONE,
                    .dtype = AN_BF16},
};

int recipe_find_key(const char *path) {
    for (int i = 0; i < K_COUNT; i++)
        if (strcmp(recipe_keys[i].path, path) == 0) return i;
    return -1;
}

int recipe_section_of(int id) {
    if (!strchr(recipe_keys[id].path, '.')) return -1;
    for (int i = id - 1; i >= 0; i--)
        if (recipe_keys[i].kind == KIND_SECTION) return i;
    return -1;
}

void *recipe_field(an_recipe *r, int id) { return (char *)r + recipe_keys[id].offset; }
const void *recipe_field_const(const an_recipe *r, int id) { return (const char *)r + recipe_keys[id].offset; }

const char *recipe_enum_name(int id, int value) {
    const recipe_key *k = &recipe_keys[id];
    for (int i = 0; i < k->n_values; i++)
        if (k->values[i].value == value) return k->values[i].name;
    return NULL;
}

static void free_strings(an_recipe_strings *s) {
    for (int i = 0; i < s->n; i++) free(s->items[i]);
    free(s->items);
    s->items = NULL;
    s->n = 0;
}

static bool copy_strings(an_recipe_strings *dst, const an_recipe_strings *src) {
    free_strings(dst);
    if (src->n == 0) return true;
    dst->items = calloc((size_t)src->n, sizeof *dst->items);
    if (!dst->items) return false;
    for (int i = 0; i < src->n; i++) {
        dst->items[i] = strdup(src->items[i]);
        dst->n = i + 1;
        if (!dst->items[i]) return false;
    }
    return true;
}

static bool copy_string(char **dst, const char *src) {
    free(*dst);
    *dst = src ? strdup(src) : NULL;
    return *dst != NULL || src == NULL;
}

void recipe_free_field(an_recipe *r, int id) {
    switch (recipe_keys[id].kind) {
    case KIND_STRING: {
        char **s = recipe_field(r, id);
        free(*s);
        *s = NULL;
        break;
    }
    case KIND_STRINGS:
    case KIND_TARGETS: free_strings(recipe_field(r, id)); break;
    case KIND_RESUME:
        free(r->checkpoint.resume_path);
        r->checkpoint.resume_path = NULL;
        break;
    default: break;
    }
}

bool recipe_copy_field(an_recipe *dst, const an_recipe *src, int id) {
    void *d = recipe_field(dst, id);
    const void *s = recipe_field_const(src, id);
    switch (recipe_keys[id].kind) {
    case KIND_SECTION:
        if (id == K_EXPORT) dst->export_opts.enabled = src->export_opts.enabled;
        return true;
    case KIND_INT: *(int64_t *)d = *(const int64_t *)s; return true;
    case KIND_NUMBER: *(double *)d = *(const double *)s; return true;
    case KIND_BOOL: *(bool *)d = *(const bool *)s; return true;
    case KIND_ENUM: *(int *)d = *(const int *)s; return true;
    case KIND_PAIR: memcpy(d, s, 2 * sizeof(double)); return true;
    case KIND_STRING: return copy_string(d, *(char *const *)s);
    case KIND_STRINGS: return copy_strings(d, s);
    case KIND_TARGETS:
        dst->lora.targets_all_linear = src->lora.targets_all_linear;
        return copy_strings(d, s);
    case KIND_RESUME:
        dst->checkpoint.resume = src->checkpoint.resume;
        return copy_string(&dst->checkpoint.resume_path, src->checkpoint.resume_path);
    }
    return false;
}

static bool strings_equal(const char *a, const char *b) { return a == b || (a && b && strcmp(a, b) == 0); }

static bool lists_equal(const an_recipe_strings *a, const an_recipe_strings *b) {
    if (a->n != b->n) return false;
    for (int i = 0; i < a->n; i++)
        if (strcmp(a->items[i], b->items[i]) != 0) return false;
    return true;
}

bool recipe_field_equal(const an_recipe *a, const an_recipe *b, int id) {
    const void *x = recipe_field_const(a, id), *y = recipe_field_const(b, id);
    switch (recipe_keys[id].kind) {
    case KIND_SECTION: return id != K_EXPORT || a->export_opts.enabled == b->export_opts.enabled;
    case KIND_INT: return *(const int64_t *)x == *(const int64_t *)y;
    case KIND_NUMBER: return *(const double *)x == *(const double *)y;
    case KIND_BOOL: return *(const bool *)x == *(const bool *)y;
    case KIND_ENUM: return *(const int *)x == *(const int *)y;
    case KIND_PAIR: {
        const double *p = x, *q = y;
        return p[0] == q[0] && p[1] == q[1];
    }
    case KIND_STRING: return strings_equal(*(char *const *)x, *(char *const *)y);
    case KIND_STRINGS: return lists_equal(x, y);
    case KIND_TARGETS: return a->lora.targets_all_linear == b->lora.targets_all_linear && lists_equal(x, y);
    case KIND_RESUME:
        return a->checkpoint.resume == b->checkpoint.resume &&
               strings_equal(a->checkpoint.resume_path, b->checkpoint.resume_path);
    }
    return false;
}

const char *an_recipe_first_difference(const an_recipe *a, const an_recipe *b) {
    for (int i = 0; i < K_COUNT; i++)
        if (!recipe_field_equal(a, b, i)) return recipe_keys[i].path;
    return NULL;
}

void an_recipe_free(an_recipe *recipe) {
    if (!recipe) return;
    for (int i = 0; i < K_COUNT; i++) recipe_free_field(recipe, i);
}

/* ---- suggestions ---- */

#define MAX_WORD 128

int recipe_edit_distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    if (la > MAX_WORD || lb > MAX_WORD) return INT_MAX / 2;
    int rows[3][MAX_WORD + 1];
    int *before = rows[0], *prev = rows[1], *cur = rows[2]; /* DP rows i-2, i-1, i */
    for (size_t j = 0; j <= lb; j++) prev[j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        cur[0] = (int)i;
        for (size_t j = 1; j <= lb; j++) {
            int best = prev[j - 1] + (a[i - 1] != b[j - 1]);
            if (prev[j] + 1 < best) best = prev[j] + 1;
            if (cur[j - 1] + 1 < best) best = cur[j - 1] + 1;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && before[j - 2] + 1 < best)
                best = before[j - 2] + 1; /* adjacent transposition */
            cur[j] = best;
        }
        int *spare = before;
        before = prev, prev = cur, cur = spare;
    }
    return prev[lb];
}

/* How many edits still look like a typo of a word this long. */
static int typo_budget(size_t len) { return len <= 3 ? 1 : len <= 6 ? 2 : 3; }

const char *recipe_closest(const char *word, const char *const *names, int n) {
    const char *best = NULL;
    int best_d = INT_MAX;
    for (int i = 0; i < n; i++) {
        int d = recipe_edit_distance(word, names[i]);
        if (d < best_d) best_d = d, best = names[i];
    }
    size_t len = strlen(word);
    return best && best_d <= typo_budget(len) && (size_t)best_d < len ? best : NULL;
}

/* Other tools' names (Hugging Face Trainer, PEFT, TRL, torchtune) for our keys, by last component. */
static const char *const aliases[][2] = {
    {"r", "lora.rank"}, {"lora_r", "lora.rank"}, {"lora_rank", "lora.rank"}, {"lora_alpha", "lora.alpha"},
    {"lora_dropout", "lora.dropout"}, {"target_modules", "lora.targets"}, {"use_rslora", "lora.rslora"},
    {"learning_rate", "optimizer.lr"}, {"per_device_train_batch_size", "training.micro_batch"},
    {"batch_size", "training.micro_batch"}, {"gradient_accumulation_steps", "training.grad_accum"},
    {"num_train_epochs", "training.epochs"}, {"max_seq_length", "data.seq_len"}, {"max_seq_len", "data.seq_len"},
    {"max_length", "data.seq_len"}, {"lr_scheduler_type", "schedule.type"}, {"lr_scheduler", "schedule"},
    {"scheduler", "schedule"}, {"max_grad_norm", "grad_clip"}, {"clip_grad_norm", "grad_clip"},
    {"save_steps", "checkpoint.every"}, {"save_total_limit", "checkpoint.keep_last"},
    {"resume_from_checkpoint", "checkpoint.resume"}, {"logging_steps", "logging.every"},
    {"model_name_or_path", "model.path"}, {"torch_dtype", "dtype"}, {"bf16", "dtype"}, {"fp16", "dtype"},
    {"num_warmup_steps", "schedule.warmup_steps"}, {"adam_beta1", "optimizer.betas"},
    {"adam_beta2", "optimizer.betas"}, {"adam_epsilon", "optimizer.eps"}, {"optim", "optimizer.name"},
    {"train_file", "data.train"}, {"dataset", "data.train"}, {"validation_file", "data.validation"},
    {"eval_file", "data.validation"}, {"output", "output_dir"}, {"peft", "method"},
};

static const char *leaf_of(const char *path) {
    const char *dot = strrchr(path, '.');
    return dot ? dot + 1 : path;
}

static bool same_section(const char *a, const char *b) {
    size_t la = (size_t)(leaf_of(a) - a), lb = (size_t)(leaf_of(b) - b);
    return la == lb && strncmp(a, b, la) == 0;
}

const char *recipe_suggest_key(const char *path) {
    const char *leaf = leaf_of(path);
    for (size_t i = 0; i < sizeof aliases / sizeof *aliases; i++)
        if (strcmp(leaf, aliases[i][0]) == 0) return aliases[i][1];
    const char *best = NULL;
    int best_d = INT_MAX;
    for (int i = 0; i < K_COUNT; i++) {
        const char *cand = recipe_keys[i].path;
        int d = recipe_edit_distance(path, cand);
        /* the right name in the wrong section costs one extra edit */
        int dl = recipe_edit_distance(leaf, leaf_of(cand)) + (same_section(path, cand) ? 0 : 1);
        if (dl < d) d = dl;
        if (d < best_d) best_d = d, best = cand;
    }
    size_t len = strlen(leaf);
    return best && best_d <= typo_budget(len) && (size_t)best_d < (len > 2 ? len : 2) ? best : NULL;
}
