/* lora.c — attaching, saving (PEFT), loading and merging LoRA adapters (see lora.h). */
#include "model/lora.h"

#include <jansson.h>  /* adapter_config.json */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ops.h"      /* an_matmul, an_scale, an_add for the merge */
#include "autograd/tape.h"     /* an_no_grad_* */
#include "ckpt/atomic.h"       /* an_atomic_write_text */
#include "ckpt/safetensors.h"  /* adapter_model.safetensors */

static const char *const target_names[7] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
static const char *const target_modules[7] = {"self_attn", "self_attn", "self_attn", "self_attn", "mlp", "mlp", "mlp"};

an_status an_lora_parse_targets(an_ctx *ctx, const char *const *names, int n, unsigned *targets) {
    unsigned t = 0;
    for (int i = 0; i < n; i++) {
        if (strcmp(names[i], "all-linear") == 0) {
            AN_CHECK(ctx, n == 1, AN_ERR_INPUT, "lora targets: 'all-linear' cannot be combined with other names");
            t = AN_LORA_ALL_LINEAR;
            continue;
        }
        int found = -1;
        for (int k = 0; k < 7; k++)
            if (strcmp(names[i], target_names[k]) == 0) found = k;
        AN_CHECK(ctx, found >= 0, AN_ERR_INPUT,
                 "lora targets: unknown module '%s' (expected q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, "
                 "down_proj or all-linear)", names[i]);
        t |= 1u << found;
    }
    AN_CHECK(ctx, t != 0, AN_ERR_INPUT, "lora targets: the list is empty");
    *targets = t;
    return AN_OK;
}

int an_lora_target_names(unsigned targets, const char *names[7]) {
    int n = 0;
    for (int k = 0; k < 7; k++)
        if (targets & (1u << k)) names[n++] = target_names[k];
    return n;
}

static an_projection *projection(an_layer *l, int k) {
    an_projection *all[7] = {&l->q_proj, &l->k_proj, &l->v_proj, &l->o_proj, &l->gate_proj, &l->up_proj, &l->down_proj};
    return all[k];
}

static void adapter_name(char *buf, size_t n, int layer, int k, char which) {
    snprintf(buf, n, "base_model.model.model.layers.%d.%s.%s.lora_%c.weight", layer, target_modules[k], target_names[k],
             which);
}

/* Creates the adapter tensors and their table entries (values uninitialised). */
static an_status create_adapters(an_ctx *ctx, an_model *m, const an_lora_config *config) {
    AN_CHECK(ctx, m->n_adapter_params == 0, AN_ERR_INPUT, "lora: the model already has adapters");
    AN_CHECK(ctx, config->rank >= 1 && config->alpha > 0 && config->dropout >= 0 && config->dropout < 1 && config->targets,
             AN_ERR_INPUT, "lora: rank %lld, alpha %g, dropout %g, targets 0x%x are not valid", (long long)config->rank,
             config->alpha, config->dropout, config->targets);
    int per_layer = __builtin_popcount(config->targets);
    m->adapter_params = calloc((size_t)(2 * per_layer * m->config.num_layers), sizeof *m->adapter_params);
    AN_CHECK(ctx, m->adapter_params != NULL, AN_ERR_INTERNAL, "out of host memory");
    for (int i = 0; i < m->config.num_layers; i++)
        for (int k = 0; k < 7; k++) {
            if (!(config->targets & (1u << k))) continue;
            an_projection *p = projection(&m->layers[i], k);
            int64_t out = p->weight->shape[0], in = p->weight->shape[1];
            for (int ab = 0; ab < 2; ab++) {
                an_param *e = &m->adapter_params[m->n_adapter_params++];
                adapter_name(e->name, sizeof e->name, i, k, ab ? 'B' : 'A');
                e->slot = ab ? &p->lora_b : &p->lora_a;
                e->ndim = 2;
                e->shape[0] = ab ? out : config->rank;
                e->shape[1] = ab ? config->rank : in;
                *e->slot = an_tensor_new(ctx, p->weight->dtype, p->weight->device, 2, e->shape);
                if (!*e->slot) return an_error_status(ctx);
                an_tensor_set_requires_grad(*e->slot, true);
            }
        }
    m->lora = *config;
    m->lora_scale = config->rslora ? config->alpha / sqrt((double)config->rank) : config->alpha / (double)config->rank;
    m->lora_enabled = true;
    an_model_set_requires_grad(m, false);
    return AN_OK;
}

an_status an_lora_attach(an_ctx *ctx, an_model *m, const an_lora_config *config) {
    AN_TRY(create_adapters(ctx, m, config));
    for (int i = 0; i < m->n_adapter_params; i++) {
        an_tensor *t = *m->adapter_params[i].slot;
        bool is_a = strstr(m->adapter_params[i].name, "lora_A") != NULL;
        double bound = 1.0 / sqrt((double)t->shape[1]);
        AN_TRY(is_a ? an_tensor_fill_uniform(ctx, t, -bound, bound) : an_tensor_fill(ctx, t, 0.0));
    }
    return AN_OK;
}

an_status an_lora_save_peft(an_ctx *ctx, const an_model *m, const char *dir, const char *base_model_name) {
    AN_CHECK(ctx, m->n_adapter_params > 0, AN_ERR_INPUT, "lora: the model has no adapters to save");
    json_t *cfg = json_object();
    json_t *targets = json_array();
    const char *names[7];
    int n = an_lora_target_names(m->lora.targets, names);
    for (int i = 0; i < n; i++) json_array_append_new(targets, json_string(names[i]));
    json_object_set_new(cfg, "peft_type", json_string("LORA"));
    json_object_set_new(cfg, "task_type", json_string("CAUSAL_LM"));
    json_object_set_new(cfg, "base_model_name_or_path", json_string(base_model_name ? base_model_name : ""));
    json_object_set_new(cfg, "r", json_integer(m->lora.rank));
    json_object_set_new(cfg, "lora_alpha", json_real(m->lora.alpha));
    json_object_set_new(cfg, "lora_dropout", json_real(m->lora.dropout));
    json_object_set_new(cfg, "use_rslora", json_boolean(m->lora.rslora));
    json_object_set_new(cfg, "target_modules", targets);
    json_object_set_new(cfg, "bias", json_string("none"));
    json_object_set_new(cfg, "fan_in_fan_out", json_false());
    json_object_set_new(cfg, "inference_mode", json_true());
    json_object_set_new(cfg, "init_lora_weights", json_true());
    json_object_set_new(cfg, "use_dora", json_false());
    json_object_set_new(cfg, "modules_to_save", json_null());
    json_object_set_new(cfg, "layers_to_transform", json_null());
    json_object_set_new(cfg, "rank_pattern", json_object());
    json_object_set_new(cfg, "alpha_pattern", json_object());
    char *text = json_dumps(cfg, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(cfg);
    AN_CHECK(ctx, text != NULL, AN_ERR_INTERNAL, "out of memory writing adapter_config.json");
    char path[4096];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    an_status st = an_atomic_write_text(ctx, path, text);
    free(text);
    AN_TRY(st);

    const char *tensor_names[AN_LORA_MAX_TENSORS];
    an_tensor *tensors[AN_LORA_MAX_TENSORS];
    AN_CHECK(ctx, m->n_adapter_params <= AN_LORA_MAX_TENSORS, AN_ERR_INTERNAL, "too many adapter tensors");
    for (int i = 0; i < m->n_adapter_params; i++) {
        tensor_names[i] = m->adapter_params[i].name;
        tensors[i] = *m->adapter_params[i].slot;
    }
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    an_safetensors_meta meta[] = {{"format", "pt"}, {"producer", "anneal " ANNEAL_VERSION}};
    return an_safetensors_write(ctx, path, m->n_adapter_params, tensor_names, tensors, 2, meta);
}

/* A key of adapter_config.json that must be absent or have its neutral value. */
static an_status require_neutral(an_ctx *ctx, const char *file, json_t *cfg, const char *key, const char *feature) {
    json_t *v = json_object_get(cfg, key);
    bool neutral = !v || json_is_null(v) || json_is_false(v) || (json_is_object(v) && json_object_size(v) == 0) ||
                   (json_is_string(v) && (strcmp(json_string_value(v), "none") == 0));
    AN_CHECK(ctx, neutral, AN_ERR_INPUT, "%s: '%s' is set: %s is not supported", file, key, feature);
    return AN_OK;
}

/* PEFT target_modules: short names ("q_proj") or, as PEFT writes for all-linear, full module paths
 * ("model.layers.3.self_attn.q_proj"). Full paths must cover every layer for each projection they
 * name: anneal's adapters are per projection kind, not per layer, and a partial set is an error. */
static an_status parse_target_modules(an_ctx *ctx, const char *file, json_t *list, int64_t num_layers,
                                      unsigned *targets) {
    int64_t layers_seen[7] = {0}; /* count of layers named per kind, for full paths */
    bool short_name[7] = {false};
    size_t i;
    json_t *v;
    AN_CHECK(ctx, json_array_size(list) > 0, AN_ERR_INPUT, "%s: 'target_modules' is empty", file);
    json_array_foreach(list, i, v) {
        AN_CHECK(ctx, json_is_string(v), AN_ERR_INPUT, "%s: 'target_modules[%zu]' is not a name", file, i);
        const char *name = json_string_value(v), *dot = strrchr(name, '.');
        const char *kind_name = dot ? dot + 1 : name;
        int kind = -1;
        for (int k = 0; k < 7; k++)
            if (strcmp(kind_name, target_names[k]) == 0) kind = k;
        AN_CHECK(ctx, kind >= 0, AN_ERR_INPUT, "%s: 'target_modules[%zu]' = \"%s\" is not a projection anneal adapts "
                 "(q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)", file, i, name);
        if (!dot) {
            short_name[kind] = true;
            continue;
        }
        char expect[160];
        long long layer = -1;
        int used = 0;
        sscanf(name, "model.layers.%lld.%n", &layer, &used);
        snprintf(expect, sizeof expect, "model.layers.%lld.%s.%s", layer, target_modules[kind], target_names[kind]);
        AN_CHECK(ctx, used > 0 && layer >= 0 && layer < num_layers && strcmp(name, expect) == 0, AN_ERR_INPUT,
                 "%s: 'target_modules[%zu]' = \"%s\" is not a module of this model", file, i, name);
        layers_seen[kind]++;
    }
    unsigned t = 0;
    for (int k = 0; k < 7; k++) {
        AN_CHECK(ctx, layers_seen[k] == 0 || layers_seen[k] == num_layers, AN_ERR_INPUT,
                 "%s: 'target_modules' adapts %s in %lld of %lld layers; per-layer targets are not supported", file,
                 target_names[k], (long long)layers_seen[k], (long long)num_layers);
        if (layers_seen[k] || short_name[k]) t |= 1u << k;
    }
    *targets = t;
    return AN_OK;
}

static an_status read_adapter_config(an_ctx *ctx, const char *file, int64_t num_layers, an_lora_config *out) {
    json_error_t jerr;
    json_t *cfg = json_load_file(file, JSON_REJECT_DUPLICATES, &jerr);
    AN_CHECK(ctx, cfg != NULL, AN_ERR_INPUT, "%s: %s (line %d)", file, jerr.text, jerr.line);
    an_status st = AN_OK;
    json_t *type = json_object_get(cfg, "peft_type");
    json_t *r = json_object_get(cfg, "r"), *alpha = json_object_get(cfg, "lora_alpha");
    json_t *dropout = json_object_get(cfg, "lora_dropout"), *rs = json_object_get(cfg, "use_rslora");
    json_t *targets = json_object_get(cfg, "target_modules");
    if (!json_is_string(type) || strcmp(json_string_value(type), "LORA") != 0)
        st = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s: 'peft_type' must be \"LORA\"", file);
    else if (!json_is_integer(r) || json_integer_value(r) < 1)
        st = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s: 'r' must be a positive integer", file);
    else if (!json_is_number(alpha))
        st = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s: 'lora_alpha' must be a number", file);
    else if (!json_is_array(targets))
        st = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__,
                          "%s: 'target_modules' must be a list of module names (a regex string is not supported)", file);
    /* Keys that change the adapter's math when set; initialisation-only keys (loftq_config,
     * eva_config, init_lora_weights, ...) do not matter for a trained adapter. */
    const char *keys[][2] = {{"use_dora", "DoRA"}, {"bias", "training biases"}, {"lora_bias", "LoRA biases"},
                             {"modules_to_save", "modules_to_save"}, {"layers_to_transform", "layers_to_transform"},
                             {"layers_pattern", "layers_pattern"}, {"rank_pattern", "per-module ranks"},
                             {"alpha_pattern", "per-module alphas"}, {"fan_in_fan_out", "fan_in_fan_out"},
                             {"layer_replication", "layer replication"}, {"exclude_modules", "exclude_modules"},
                             {"target_parameters", "target_parameters"}, {"trainable_token_indices", "trainable tokens"},
                             {"use_qalora", "QA-LoRA"}, {"use_bdlora", "BD-LoRA"},
                             {"alora_invocation_tokens", "activated LoRA"}};
    for (size_t i = 0; st == AN_OK && i < sizeof keys / sizeof *keys; i++)
        st = require_neutral(ctx, file, cfg, keys[i][0], keys[i][1]);
    if (st == AN_OK) {
        *out = (an_lora_config){json_integer_value(r), json_number_value(alpha),
                                json_is_number(dropout) ? json_number_value(dropout) : 0.0, json_is_true(rs), 0};
        st = parse_target_modules(ctx, file, targets, num_layers, &out->targets);
    }
    json_decref(cfg);
    return st;
}

an_status an_lora_load_peft(an_ctx *ctx, an_model *m, const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    an_lora_config config;
    AN_TRY(read_adapter_config(ctx, path, m->config.num_layers, &config));
    AN_TRY(create_adapters(ctx, m, &config));
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    an_safetensors *st = NULL;
    AN_TRY(an_safetensors_open(ctx, path, &st));
    an_status status = AN_OK;
    for (int i = 0; status == AN_OK && i < m->n_adapter_params; i++) {
        const an_param *p = &m->adapter_params[i];
        const an_safetensors_tensor *t = an_safetensors_find(st, p->name);
        if (!t) {
            status = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s: no tensor '%s' (adapter_config.json lists its module)", path, p->name);
            break;
        }
        bool ok = t->ndim == 2 && t->shape[0] == p->shape[0] && t->shape[1] == p->shape[1];
        if (!ok) {
            status = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s: tensor '%s' is not (%lld, %lld)", path,
                                  p->name, (long long)p->shape[0], (long long)p->shape[1]);
            break;
        }
        status = an_safetensors_load_into(ctx, st, p->name, *p->slot);
    }
    if (status == AN_OK && an_safetensors_count(st) != m->n_adapter_params)
        status = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__,
                              "%s: holds %lld tensors but adapter_config.json implies %d", path,
                              (long long)an_safetensors_count(st), m->n_adapter_params);
    an_safetensors_close(st);
    return status;
}

an_status an_lora_merge(an_ctx *ctx, an_model *m) {
    AN_CHECK(ctx, m->n_adapter_params > 0, AN_ERR_INPUT, "lora: the model has no adapters to merge");
    an_status st = AN_OK;
    an_no_grad_begin(ctx);
    for (int i = 0; st == AN_OK && i < m->config.num_layers; i++)
        for (int k = 0; st == AN_OK && k < 7; k++) {
            an_projection *p = projection(&m->layers[i], k);
            if (!p->lora_a) continue;
            an_tensor *ba = an_matmul(ctx, p->lora_b, p->lora_a, false, false); /* (out, in) */
            an_tensor *delta = an_scale(ctx, ba, m->lora_scale);
            an_tensor *merged = an_add(ctx, p->weight, delta);
            st = merged ? an_tensor_copy_into(ctx, p->weight, merged) : an_error_status(ctx);
            an_tensor_release(ba), an_tensor_release(delta), an_tensor_release(merged);
        }
    an_no_grad_end(ctx);
    AN_TRY(st);
    for (int i = 0; i < m->n_adapter_params; i++) {
        an_tensor_release(*m->adapter_params[i].slot);
        *m->adapter_params[i].slot = NULL;
    }
    free(m->adapter_params);
    m->adapter_params = NULL;
    m->n_adapter_params = 0;
    m->lora_enabled = false;
    return AN_OK;
}
