/* resolve.c — the rules between keys, once the file and the overrides are applied: required keys,
 * settings that exclude each other, and the defaults that depend on other keys.
 *
 * Rules: two settings that exclude each other are an error when they come from the same place (both
 * in the file, or both on the command line); when one comes from a later place (the command line
 * over the file), that one wins and the other returns to its default, so `training.max_steps=10`
 * works on a recipe that sets epochs. A key that cannot apply keeps its default value (the writer
 * comments it out), which is what makes write -> load an identity. */
#include "recipe/internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool is_set(const recipe_state *st, int id) { return st->source[id].origin != ORIGIN_DEFAULT; }

static an_status reset(recipe_state *st, an_recipe *r, int id) {
    AN_CHECK(st->ctx, recipe_copy_field(r, &recipe_defaults, id), AN_ERR_INTERNAL, "out of memory");
    st->source[id] = (recipe_source){ORIGIN_DEFAULT, 0, NULL};
    return AN_OK;
}

/* Keys a and b are both set and exclude each other: keep the later source's, or fail with `why`. */
static an_status exclusive(recipe_state *st, an_recipe *r, int a, int b, const char *why) {
    recipe_origin oa = st->source[a].origin, ob = st->source[b].origin;
    if (oa > ob) return reset(st, r, b);
    if (ob > oa) return reset(st, r, a);
    int at = st->source[a].line > st->source[b].line ? a : b; /* the later line, where the clash shows */
    return RECIPE_FAIL(st, at, "%s", why);
}

/* Key `id` is set but `controller` makes it meaningless: drop it when the controller came from a later
 * source, else fail with `why`. */
static an_status inapplicable(recipe_state *st, an_recipe *r, int id, int controller, const char *why) {
    if (!is_set(st, id)) return AN_OK;
    if (st->source[controller].origin > st->source[id].origin) return reset(st, r, id);
    return RECIPE_FAIL(st, id, "%s %s", recipe_keys[id].path, why);
}

static an_status set_string(recipe_state *st, char **field, const char *fmt, const char *a, const char *b) {
    int n = snprintf(NULL, 0, fmt, a, b);
    char *s = malloc((size_t)n + 1);
    AN_CHECK(st->ctx, s, AN_ERR_INTERNAL, "out of memory");
    snprintf(s, (size_t)n + 1, fmt, a, b);
    free(*field);
    *field = s;
    return AN_OK;
}

static bool valid_name(const char *s) {
    if (!*s || !strcmp(s, ".") || !strcmp(s, "..") || strlen(s) > 128) return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || strchr("._-", *s)))
            return false;
    return true;
}

/* name defaults to the recipe file's name without its directory and .yaml/.yml. */
static an_status resolve_name(recipe_state *st, an_recipe *r) {
    if (!r->name) {
        const char *base = strrchr(st->file, '/');
        base = base ? base + 1 : st->file;
        size_t len = strlen(base);
        if (len > 5 && !strcmp(base + len - 5, ".yaml")) len -= 5;
        else if (len > 4 && !strcmp(base + len - 4, ".yml")) len -= 4;
        r->name = strndup(base, len);
        AN_CHECK(st->ctx, r->name, AN_ERR_INTERNAL, "out of memory");
        if (!valid_name(r->name))
            return RECIPE_FAIL(st, K_NAME,
                               "the run name '%s' (taken from the file name) may only contain letters, digits, '.', "
                               "'_' and '-'; set name: in the recipe",
                               r->name);
    }
    if (!valid_name(r->name))
        return RECIPE_FAIL(st, K_NAME, "name = '%s' may only contain letters, digits, '.', '_' and '-' (at most 128)",
                           r->name);
    if (!r->output_dir) AN_TRY(set_string(st, &r->output_dir, "checkpoints/runs/%s%s", r->name, ""));
    if (!r->logging.jsonl) AN_TRY(set_string(st, &r->logging.jsonl, "%s/%s", r->output_dir, "metrics.jsonl"));
    return AN_OK;
}

static an_status resolve_training(recipe_state *st, an_recipe *r) {
    if (r->training.max_steps == 0)
        return RECIPE_FAIL(st, K_TRAINING_MAX_STEPS,
                           "training.max_steps = 0 must be -1 (run for training.epochs) or >= 1");
    if (r->training.max_steps >= 1 && is_set(st, K_TRAINING_EPOCHS))
        AN_TRY(exclusive(st, r, K_TRAINING_EPOCHS, K_TRAINING_MAX_STEPS,
                         "training.epochs and training.max_steps are both set; set one of them"));
    if (r->schedule.warmup_steps > 0 && r->schedule.warmup_ratio > 0)
        AN_TRY(exclusive(st, r, K_SCHEDULE_WARMUP_STEPS, K_SCHEDULE_WARMUP_RATIO,
                         "schedule.warmup_steps and schedule.warmup_ratio are both set; set one of them"));
    if (r->training.max_steps >= 1 && r->schedule.warmup_steps > r->training.max_steps)
        return RECIPE_FAIL(st, K_SCHEDULE_WARMUP_STEPS,
                           "schedule.warmup_steps = %lld is more than training.max_steps = %lld",
                           (long long)r->schedule.warmup_steps, (long long)r->training.max_steps);
    if (r->schedule.type == AN_RECIPE_SCHEDULE_CONSTANT && r->schedule.min_lr_ratio > 0)
        AN_TRY(inapplicable(st, r, K_SCHEDULE_MIN_LR_RATIO, K_SCHEDULE_TYPE,
                            "has no effect with schedule.type constant (the rate never decays)"));
    if (r->optimizer.update_in_backward && r->grad_clip > 0)
        return RECIPE_FAIL(st, K_OPTIMIZER_UPDATE_IN_BACKWARD,
                           "optimizer.update_in_backward needs grad_clip: 0 (it is %g): clipping needs the global "
                           "gradient norm, known only after the last gradient, when the parameters have moved",
                           r->grad_clip);
    if (r->training.eval_every == 0 && r->training.eval_steps > 0)
        AN_TRY(inapplicable(st, r, K_TRAINING_EVAL_STEPS, K_TRAINING_EVAL_EVERY,
                            "has no effect while training.eval_every is 0 (no evaluation)"));
    return AN_OK;
}

static an_status resolve_data(recipe_state *st, an_recipe *r) {
    if (r->data.train.n == 0)
        return RECIPE_FAIL(st, K_DATA_TRAIN, "data.train is required (a training file or a list of them)");
    if (r->data.validation && r->data.validation_fraction > 0 && is_set(st, K_DATA_VALIDATION_FRACTION))
        AN_TRY(exclusive(st, r, K_DATA_VALIDATION, K_DATA_VALIDATION_FRACTION,
                         "data.validation and data.validation_fraction > 0 are both set; hold out a fraction or "
                         "give a validation file, not both"));
    if (r->data.validation && !is_set(st, K_DATA_VALIDATION_FRACTION)) r->data.validation_fraction = 0.0;
    if (r->training.eval_every > 0 && !r->data.validation && r->data.validation_fraction == 0)
        return RECIPE_FAIL(st, K_TRAINING_EVAL_EVERY,
                           "training.eval_every = %lld needs validation data: set data.validation or "
                           "data.validation_fraction > 0",
                           (long long)r->training.eval_every);
    return AN_OK;
}

static an_status resolve_lora(recipe_state *st, an_recipe *r) {
    if (r->method != AN_RECIPE_METHOD_FULL) return AN_OK;
    for (int id = K_LORA + 1; id < K_COUNT && recipe_section_of(id) == K_LORA; id++)
        AN_TRY(inapplicable(st, r, id, K_METHOD,
                            "is set but method is full; LoRA settings apply only to method: lora (remove the lora "
                            "block, set method: lora, or pass lora=null)"));
    return AN_OK;
}

/* Quant types each export format can write, the first being its default. */
static const an_recipe_quant quants_of[][5] = {
    [AN_RECIPE_EXPORT_SAFETENSORS_MERGED] = {AN_RECIPE_QUANT_NONE},
    [AN_RECIPE_EXPORT_GGUF] = {AN_RECIPE_QUANT_Q4_K_M, AN_RECIPE_QUANT_Q8_0, AN_RECIPE_QUANT_Q4_0, AN_RECIPE_QUANT_F16},
    [AN_RECIPE_EXPORT_AWQ] = {AN_RECIPE_QUANT_INT4},
    [AN_RECIPE_EXPORT_GPTQ] = {AN_RECIPE_QUANT_INT4, AN_RECIPE_QUANT_INT8},
};
static const int n_quants_of[] = {1, 4, 1, 2};

static an_status resolve_export(recipe_state *st, an_recipe *r) {
    an_recipe_export_format f = r->export_opts.format;
    for (int id = K_EXPORT + 1; id < K_COUNT && recipe_section_of(id) == K_EXPORT; id++)
        if (is_set(st, id)) r->export_opts.enabled = true; /* export.format=gguf alone makes a block */
    if (!r->export_opts.enabled) return AN_OK;
    if (!is_set(st, K_EXPORT_FORMAT)) {
        int at = K_EXPORT;
        for (int id = K_EXPORT + 1; id < K_COUNT && !is_set(st, at); id++)
            if (is_set(st, id)) at = id;
        return RECIPE_FAIL(st, at,
                           "export.format is required in an export block (safetensors_merged, gguf, awq, gptq)");
    }

    bool quant_ok = false;
    char allowed[128] = "";
    for (int i = 0; i < n_quants_of[f]; i++) {
        quant_ok |= quants_of[f][i] == r->export_opts.quant;
        size_t used = strlen(allowed);
        snprintf(allowed + used, sizeof allowed - used, "%s%s", i ? ", " : "",
                 recipe_enum_name(K_EXPORT_QUANT, quants_of[f][i]));
    }
    if (is_set(st, K_EXPORT_QUANT) && !quant_ok) {
        char why[256];
        snprintf(why, sizeof why, "= %s is not available for export.format %s (allowed: %s)",
                 recipe_enum_name(K_EXPORT_QUANT, r->export_opts.quant), recipe_enum_name(K_EXPORT_FORMAT, f), allowed);
        AN_TRY(inapplicable(st, r, K_EXPORT_QUANT, K_EXPORT_FORMAT, why));
    }
    if (!is_set(st, K_EXPORT_QUANT)) r->export_opts.quant = quants_of[f][0];

    an_dtype dtype = r->export_opts.dtype;
    if (f == AN_RECIPE_EXPORT_GGUF)
        AN_TRY(inapplicable(st, r, K_EXPORT_DTYPE, K_EXPORT_FORMAT,
                            "does not apply to export.format gguf (export.quant sets the tensor types)"));
    else if (f != AN_RECIPE_EXPORT_SAFETENSORS_MERGED && is_set(st, K_EXPORT_DTYPE) && dtype == AN_F32)
        AN_TRY(inapplicable(st, r, K_EXPORT_DTYPE, K_EXPORT_FORMAT,
                            "= float32 is not available for quantized exports (allowed: float16, bfloat16)"));
    if (!is_set(st, K_EXPORT_DTYPE) && (f == AN_RECIPE_EXPORT_AWQ || f == AN_RECIPE_EXPORT_GPTQ))
        r->export_opts.dtype = AN_F16; /* what vLLM's AWQ/GPTQ kernels expect for scales and activations */

    if (!r->export_opts.path) {
        const char *q = recipe_enum_name(K_EXPORT_QUANT, r->export_opts.quant);
        if (f == AN_RECIPE_EXPORT_SAFETENSORS_MERGED)
            AN_TRY(set_string(st, &r->export_opts.path, "%s/%s", r->output_dir, "merged"));
        else if (f == AN_RECIPE_EXPORT_GGUF) {
            char file[200];
            snprintf(file, sizeof file, "%s-%s.gguf", r->name, q);
            AN_TRY(set_string(st, &r->export_opts.path, "%s/%s", r->output_dir, file));
        } else {
            char dir[64];
            snprintf(dir, sizeof dir, "%s-%s", recipe_enum_name(K_EXPORT_FORMAT, f), q);
            AN_TRY(set_string(st, &r->export_opts.path, "%s/%s", r->output_dir, dir));
        }
    }
    return AN_OK;
}

an_status recipe_resolve(recipe_state *st, an_recipe *r) {
    if (!r->model.path)
        return RECIPE_FAIL(st, K_MODEL_PATH, "model.path is required (a Hugging Face model directory)");
    AN_TRY(resolve_lora(st, r));
    AN_TRY(resolve_training(st, r));
    AN_TRY(resolve_data(st, r));
    AN_TRY(resolve_name(st, r));
    AN_TRY(resolve_export(st, r));
    return AN_OK;
}

const char *recipe_inactive_reason(const an_recipe *r, int id) {
    int section = recipe_keys[id].kind == KIND_SECTION ? id : recipe_section_of(id);
    if (section == K_LORA && r->method == AN_RECIPE_METHOD_FULL) return "method is full";
    if (section == K_EXPORT && !r->export_opts.enabled) return "no export block";
    switch (id) {
    case K_TRAINING_EPOCHS: return r->training.max_steps >= 1 ? "training.max_steps is set" : NULL;
    case K_TRAINING_EVAL_STEPS: return r->training.eval_every == 0 ? "training.eval_every is 0" : NULL;
    case K_SCHEDULE_MIN_LR_RATIO:
        return r->schedule.type == AN_RECIPE_SCHEDULE_CONSTANT ? "schedule.type is constant" : NULL;
    case K_EXPORT_DTYPE:
        return r->export_opts.format == AN_RECIPE_EXPORT_GGUF ? "gguf tensor types come from export.quant" : NULL;
    default: return NULL;
    }
}
