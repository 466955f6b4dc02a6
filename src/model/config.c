/* config.c — config.json for Qwen2ForCausalLM and LlamaForCausalLM, strictly (see config.h). */
#include "model/config.h"

#include <jansson.h>  /* json_load_file and accessors */
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "ckpt/atomic.h"  /* an_atomic_write_text */

/* Keys that never change what the network computes; everything else must be understood. */
static const char *const ignored_keys[] = {
    "_name_or_path", "transformers_version", "use_cache", "initializer_range", "model_type", "pad_token_id",
    "architectures", "torch_dtype", "dtype", "bos_token_id", "eos_token_id", "max_position_embeddings",
    "pretraining_tp", /* slices the same matmul; the result is unchanged */
    "max_window_layers", "sliding_window", /* only read when use_sliding_window is true (rejected below) */
    "return_dict", "output_hidden_states", "output_attentions", "torchscript", "use_bfloat16", "pruned_heads",
    "tie_encoder_decoder", "is_decoder", "is_encoder_decoder", "add_cross_attention", "chunk_size_feed_forward",
    "id2label", "label2id", "problem_type", "tokenizer_class", "prefix", "sep_token_id", "decoder_start_token_id",
    "task_specific_params", "finetuning_task", "cross_attention_hidden_size", "max_length", "min_length",
    "do_sample", "early_stopping", "num_beams", "num_beam_groups", "diversity_penalty", "temperature", "top_k",
    "top_p", "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences", "output_scores",
    "return_dict_in_generate", "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
    "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens", "_attn_implementation_autoset",
    "_attn_implementation",
};

/* Keys this file reads; a key in neither list is an error. */
static const char *const known_keys[] = {
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta", "rope_scaling", "rope_parameters",
    "tie_word_embeddings", "attention_bias", "mlp_bias", "hidden_act", "attention_dropout", "use_sliding_window",
    "use_mrope", "layer_types", "quantization_config",
};

static bool in_list(const char *key, const char *const *list, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (strcmp(key, list[i]) == 0) return true;
    return false;
}

typedef struct {
    an_ctx *ctx;
    const char *file;
    json_t *root;
} reader;

/* Integer key: required (no default) when def == LLONG_MIN; must be >= min. */
static an_status get_int(reader *r, json_t *obj, const char *key, long long def, long long min, int64_t *out) {
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        AN_CHECK(r->ctx, def != LLONG_MIN, AN_ERR_INPUT, "%s: required key '%s' is missing", r->file, key);
        *out = def;
        return AN_OK;
    }
    AN_CHECK(r->ctx, json_is_integer(v), AN_ERR_INPUT, "%s: '%s' must be an integer", r->file, key);
    long long x = json_integer_value(v);
    AN_CHECK(r->ctx, x >= min, AN_ERR_INPUT, "%s: '%s' = %lld must be at least %lld", r->file, key, x, min);
    *out = x;
    return AN_OK;
}

static an_status get_number(reader *r, json_t *obj, const char *key, double def, bool required, double *out) {
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        AN_CHECK(r->ctx, !required, AN_ERR_INPUT, "%s: required key '%s' is missing", r->file, key);
        *out = def;
        return AN_OK;
    }
    AN_CHECK(r->ctx, json_is_number(v), AN_ERR_INPUT, "%s: '%s' must be a number", r->file, key);
    *out = json_number_value(v);
    return AN_OK;
}

static an_status get_bool(reader *r, const char *key, bool def, bool *out) {
    json_t *v = json_object_get(r->root, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return AN_OK;
    }
    AN_CHECK(r->ctx, json_is_boolean(v), AN_ERR_INPUT, "%s: '%s' must be true or false", r->file, key);
    *out = json_is_true(v);
    return AN_OK;
}

/* A key whose only supported value is `want` (absent is fine). */
static an_status require_bool(reader *r, const char *key, bool want, const char *feature) {
    bool v = want;
    AN_TRY(get_bool(r, key, want, &v));
    AN_CHECK(r->ctx, v == want, AN_ERR_INPUT, "%s: '%s' = %s asks for %s, which anneal does not support", r->file, key,
             v ? "true" : "false", feature);
    return AN_OK;
}

static an_status read_rope(reader *r, an_model_config *c) {
    json_t *params = json_object_get(r->root, "rope_parameters"); /* transformers >= 5 layout */
    json_t *scaling = json_object_get(r->root, "rope_scaling");
    const char *skey = "rope_scaling";
    if (params && !json_is_null(params)) {
        AN_CHECK(r->ctx, json_is_object(params), AN_ERR_INPUT, "%s: 'rope_parameters' must be an object", r->file);
        AN_TRY(get_number(r, params, "rope_theta", 10000.0, false, &c->rope.theta));
        scaling = params;
        skey = "rope_parameters";
    } else {
        AN_TRY(get_number(r, r->root, "rope_theta", 10000.0, false, &c->rope.theta));
    }
    AN_CHECK(r->ctx, c->rope.theta > 0, AN_ERR_INPUT, "%s: 'rope_theta' must be positive", r->file);
    c->rope.style = AN_ROPE_NEOX;
    if (!scaling || json_is_null(scaling)) return AN_OK;
    AN_CHECK(r->ctx, json_is_object(scaling), AN_ERR_INPUT, "%s: '%s' must be an object or null", r->file, skey);
    json_t *type = json_object_get(scaling, "rope_type");
    if (!type) type = json_object_get(scaling, "type");
    const char *t = json_is_string(type) ? json_string_value(type) : NULL;
    AN_CHECK(r->ctx, t != NULL, AN_ERR_INPUT, "%s: '%s.rope_type' is missing", r->file, skey);
    if (strcmp(t, "default") == 0) return AN_OK;
    AN_CHECK(r->ctx, strcmp(t, "llama3") == 0, AN_ERR_INPUT,
             "%s: '%s.rope_type' = \"%s\" is not supported (supported: default, llama3)", r->file, skey, t);
    AN_TRY(get_number(r, scaling, "factor", 0, true, &c->rope.llama3_factor));
    AN_TRY(get_number(r, scaling, "low_freq_factor", 0, true, &c->rope.llama3_low_freq_factor));
    AN_TRY(get_number(r, scaling, "high_freq_factor", 0, true, &c->rope.llama3_high_freq_factor));
    AN_TRY(get_number(r, scaling, "original_max_position_embeddings", 0, true,
                      &c->rope.llama3_original_max_position));
    AN_CHECK(r->ctx,
             c->rope.llama3_factor > 0 && c->rope.llama3_original_max_position > 0 &&
                 c->rope.llama3_high_freq_factor > c->rope.llama3_low_freq_factor,
             AN_ERR_INPUT, "%s: '%s' llama3 values are inconsistent (factor > 0, high_freq_factor > low_freq_factor)",
             r->file, skey);
    return AN_OK;
}

static an_status read_token_ids(reader *r, an_model_config *c) {
    int64_t bos = -1;
    AN_TRY(get_int(r, r->root, "bos_token_id", -1, 0, &bos));
    c->bos_token_id = bos;
    json_t *eos = json_object_get(r->root, "eos_token_id");
    c->n_eos_token_ids = 0;
    if (json_is_integer(eos)) {
        c->eos_token_ids[c->n_eos_token_ids++] = json_integer_value(eos);
    } else if (json_is_array(eos)) {
        size_t i;
        json_t *v;
        json_array_foreach(eos, i, v) {
            AN_CHECK(r->ctx, json_is_integer(v) && c->n_eos_token_ids < AN_MAX_EOS_IDS, AN_ERR_INPUT,
                     "%s: 'eos_token_id' must be an integer or a list of at most %d integers", r->file, AN_MAX_EOS_IDS);
            c->eos_token_ids[c->n_eos_token_ids++] = json_integer_value(v);
        }
    } else {
        AN_CHECK(r->ctx, !eos || json_is_null(eos), AN_ERR_INPUT, "%s: 'eos_token_id' must be an integer or a list",
                 r->file);
    }
    return AN_OK;
}

static an_status read_config(reader *r, an_model_config *c) {
    AN_CHECK(r->ctx, json_is_object(r->root), AN_ERR_INPUT, "%s: expected a JSON object", r->file);
    json_t *archs = json_object_get(r->root, "architectures");
    json_t *arch = json_is_array(archs) && json_array_size(archs) == 1 ? json_array_get(archs, 0) : NULL;
    AN_CHECK(r->ctx, json_is_string(arch), AN_ERR_INPUT, "%s: 'architectures' must be a list of one name", r->file);
    const char *name = json_string_value(arch);
    if (strcmp(name, "Qwen2ForCausalLM") == 0) c->architecture = AN_ARCH_QWEN2;
    else if (strcmp(name, "LlamaForCausalLM") == 0) c->architecture = AN_ARCH_LLAMA;
    else AN_CHECK(r->ctx, 0, AN_ERR_INPUT, "%s: architecture '%s' is not supported (supported: Qwen2ForCausalLM, LlamaForCausalLM)", r->file, name);
    snprintf(c->architecture_name, sizeof c->architecture_name, "%s", name);

    const char *key;
    json_t *value;
    json_object_foreach(r->root, key, value) {
        bool known = in_list(key, known_keys, sizeof known_keys / sizeof *known_keys) ||
                     in_list(key, ignored_keys, sizeof ignored_keys / sizeof *ignored_keys);
        AN_CHECK(r->ctx, known, AN_ERR_INPUT,
                 "%s: unknown key '%s' for %s (anneal cannot tell whether it changes the model; remove it if it "
                 "does not)", r->file, key, name);
    }

    json_t *model_type = json_object_get(r->root, "model_type");
    const char *want_type = c->architecture == AN_ARCH_QWEN2 ? "qwen2" : "llama";
    AN_CHECK(r->ctx, !model_type || (json_is_string(model_type) && strcmp(json_string_value(model_type), want_type) == 0),
             AN_ERR_INPUT, "%s: 'model_type' must be \"%s\" for %s", r->file, want_type, name);

    AN_TRY(get_int(r, r->root, "vocab_size", LLONG_MIN, 1, &c->vocab_size));
    AN_TRY(get_int(r, r->root, "hidden_size", LLONG_MIN, 1, &c->hidden_size));
    AN_TRY(get_int(r, r->root, "intermediate_size", LLONG_MIN, 1, &c->intermediate_size));
    AN_TRY(get_int(r, r->root, "num_hidden_layers", LLONG_MIN, 1, &c->num_layers));
    AN_TRY(get_int(r, r->root, "num_attention_heads", LLONG_MIN, 1, &c->num_heads));
    AN_TRY(get_int(r, r->root, "num_key_value_heads", c->num_heads, 1, &c->num_kv_heads));
    AN_CHECK(r->ctx, c->num_heads % c->num_kv_heads == 0, AN_ERR_INPUT,
             "%s: num_key_value_heads = %lld does not divide num_attention_heads = %lld", r->file,
             (long long)c->num_kv_heads, (long long)c->num_heads);
    AN_CHECK(r->ctx, c->hidden_size % c->num_heads == 0 || json_object_get(r->root, "head_dim"), AN_ERR_INPUT,
             "%s: num_attention_heads = %lld does not divide hidden_size = %lld and no head_dim is given", r->file,
             (long long)c->num_heads, (long long)c->hidden_size);
    AN_TRY(get_int(r, r->root, "head_dim", c->hidden_size / c->num_heads, 2, &c->head_dim));
    AN_CHECK(r->ctx, c->head_dim % 2 == 0, AN_ERR_INPUT, "%s: head_dim = %lld must be even for rotary embeddings",
             r->file, (long long)c->head_dim);
    AN_TRY(get_int(r, r->root, "max_position_embeddings", 2048, 1, &c->max_position_embeddings));
    AN_TRY(get_number(r, r->root, "rms_norm_eps", 0, true, &c->rms_norm_eps));
    AN_CHECK(r->ctx, c->rms_norm_eps > 0, AN_ERR_INPUT, "%s: 'rms_norm_eps' must be positive", r->file);
    AN_TRY(read_rope(r, c));
    AN_TRY(get_bool(r, "tie_word_embeddings", false, &c->tie_word_embeddings));

    if (c->architecture == AN_ARCH_QWEN2) {
        c->qkv_bias = true; /* Qwen2Attention: bias on q/k/v, none on o */
        AN_TRY(require_bool(r, "use_sliding_window", false, "sliding-window attention"));
        AN_TRY(require_bool(r, "use_mrope", false, "multimodal rotary embeddings"));
        AN_CHECK(r->ctx, !json_object_get(r->root, "attention_bias") && !json_object_get(r->root, "mlp_bias"),
                 AN_ERR_INPUT, "%s: 'attention_bias'/'mlp_bias' are Llama keys; Qwen2 fixes q/k/v bias on", r->file);
    } else {
        AN_TRY(get_bool(r, "attention_bias", false, &c->qkv_bias));
        AN_CHECK(r->ctx, !c->qkv_bias, AN_ERR_INPUT,
                 "%s: 'attention_bias' = true (bias on q/k/v/o for Llama) is not supported", r->file);
        AN_TRY(require_bool(r, "mlp_bias", false, "biases in the MLP"));
        AN_CHECK(r->ctx, !json_object_get(r->root, "use_sliding_window") && !json_object_get(r->root, "use_mrope"),
                 AN_ERR_INPUT, "%s: sliding-window/mrope keys are not Llama keys", r->file);
    }
    json_t *act = json_object_get(r->root, "hidden_act");
    AN_CHECK(r->ctx, !act || (json_is_string(act) && strcmp(json_string_value(act), "silu") == 0), AN_ERR_INPUT,
             "%s: 'hidden_act' must be \"silu\" (SwiGLU MLP)", r->file);
    double dropout = 0.0;
    AN_TRY(get_number(r, r->root, "attention_dropout", 0.0, false, &dropout));
    AN_CHECK(r->ctx, dropout == 0.0, AN_ERR_INPUT, "%s: 'attention_dropout' = %g is not supported (must be 0)",
             r->file, dropout);
    json_t *quant = json_object_get(r->root, "quantization_config");
    AN_CHECK(r->ctx, !quant || json_is_null(quant), AN_ERR_INPUT,
             "%s: 'quantization_config' is set: loading quantized checkpoints is not supported", r->file);
    json_t *layers = json_object_get(r->root, "layer_types");
    if (layers && !json_is_null(layers)) {
        size_t i;
        json_t *v;
        AN_CHECK(r->ctx, json_is_array(layers) && (int64_t)json_array_size(layers) == c->num_layers, AN_ERR_INPUT,
                 "%s: 'layer_types' must list %lld layers", r->file, (long long)c->num_layers);
        json_array_foreach(layers, i, v) AN_CHECK(r->ctx, json_is_string(v) && strcmp(json_string_value(v), "full_attention") == 0,
                                                  AN_ERR_INPUT, "%s: 'layer_types[%zu]' must be \"full_attention\"", r->file, i);
    }

    json_t *dtype = json_object_get(r->root, "torch_dtype");
    if (!dtype) dtype = json_object_get(r->root, "dtype");
    c->torch_dtype = AN_BF16;
    if (dtype && !json_is_null(dtype)) {
        AN_CHECK(r->ctx, json_is_string(dtype) && an_dtype_parse(json_string_value(dtype), &c->torch_dtype) &&
                             an_dtype_is_float(c->torch_dtype),
                 AN_ERR_INPUT, "%s: 'torch_dtype' must be bfloat16, float16 or float32", r->file);
    }
    return read_token_ids(r, c);
}

an_status an_model_config_load(an_ctx *ctx, const char *path, an_model_config *out) {
    char file[4096];
    struct stat st;
    size_t n = strlen(path);
    bool is_file = (stat(path, &st) == 0 && S_ISREG(st.st_mode)) || (n > 5 && strcmp(path + n - 5, ".json") == 0);
    if (is_file) snprintf(file, sizeof file, "%s", path);
    else snprintf(file, sizeof file, "%s/config.json", path);
    json_error_t jerr;
    json_t *root = json_load_file(file, JSON_REJECT_DUPLICATES, &jerr);
    if (!root && jerr.line > 0)
        AN_CHECK(ctx, 0, AN_ERR_INPUT, "%s: line %d: %s", file, jerr.line, jerr.text);
    AN_CHECK(ctx, root != NULL, AN_ERR_INPUT, "%s: cannot read: %s", file, jerr.text);
    an_model_config c;
    memset(&c, 0, sizeof c);
    reader r = {ctx, file, root};
    an_status status = read_config(&r, &c);
    json_decref(root);
    if (status == AN_OK) *out = c;
    return status;
}

int64_t an_model_config_num_params(const an_model_config *c) {
    int64_t h = c->hidden_size, q = c->num_heads * c->head_dim, kv = c->num_kv_heads * c->head_dim;
    int64_t attn = h * q + 2 * h * kv + q * h + (c->qkv_bias ? q + 2 * kv : 0);
    int64_t mlp = 3 * h * c->intermediate_size;
    int64_t layer = attn + mlp + 2 * h;
    int64_t embed = c->vocab_size * h;
    return embed * (c->tie_word_embeddings ? 1 : 2) + c->num_layers * layer + h;
}

an_status an_model_config_save(an_ctx *ctx, const an_model_config *c, an_dtype dtype, const char *path) {
    json_t *j = json_object();
    bool qwen2 = c->architecture == AN_ARCH_QWEN2;
    json_object_set_new(j, "architectures", json_pack("[s]", c->architecture_name));
    json_object_set_new(j, "model_type", json_string(qwen2 ? "qwen2" : "llama"));
    json_object_set_new(j, "vocab_size", json_integer(c->vocab_size));
    json_object_set_new(j, "hidden_size", json_integer(c->hidden_size));
    json_object_set_new(j, "intermediate_size", json_integer(c->intermediate_size));
    json_object_set_new(j, "num_hidden_layers", json_integer(c->num_layers));
    json_object_set_new(j, "num_attention_heads", json_integer(c->num_heads));
    json_object_set_new(j, "num_key_value_heads", json_integer(c->num_kv_heads));
    json_object_set_new(j, "head_dim", json_integer(c->head_dim));
    json_object_set_new(j, "max_position_embeddings", json_integer(c->max_position_embeddings));
    json_object_set_new(j, "rms_norm_eps", json_real(c->rms_norm_eps));
    json_object_set_new(j, "rope_theta", json_real(c->rope.theta));
    if (c->rope.llama3_factor > 0)
        json_object_set_new(j, "rope_scaling",
                            json_pack("{s:s, s:f, s:f, s:f, s:f}", "rope_type", "llama3", "factor", c->rope.llama3_factor,
                                      "low_freq_factor", c->rope.llama3_low_freq_factor, "high_freq_factor",
                                      c->rope.llama3_high_freq_factor, "original_max_position_embeddings",
                                      c->rope.llama3_original_max_position));
    else json_object_set_new(j, "rope_scaling", json_null());
    json_object_set_new(j, "tie_word_embeddings", json_boolean(c->tie_word_embeddings));
    json_object_set_new(j, "hidden_act", json_string("silu"));
    json_object_set_new(j, "attention_dropout", json_real(0.0));
    if (qwen2) json_object_set_new(j, "use_sliding_window", json_false());
    else {
        json_object_set_new(j, "attention_bias", json_false());
        json_object_set_new(j, "mlp_bias", json_false());
    }
    json_object_set_new(j, "torch_dtype", json_string(dtype == AN_BF16 ? "bfloat16" : dtype == AN_F16 ? "float16" : "float32"));
    if (c->bos_token_id >= 0) json_object_set_new(j, "bos_token_id", json_integer(c->bos_token_id));
    if (c->n_eos_token_ids == 1) json_object_set_new(j, "eos_token_id", json_integer(c->eos_token_ids[0]));
    else if (c->n_eos_token_ids > 1) {
        json_t *ids = json_array();
        for (int i = 0; i < c->n_eos_token_ids; i++) json_array_append_new(ids, json_integer(c->eos_token_ids[i]));
        json_object_set_new(j, "eos_token_id", ids);
    }
    json_object_set_new(j, "use_cache", json_true());
    char *text = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(j);
    AN_CHECK(ctx, text != NULL, AN_ERR_INTERNAL, "out of memory writing %s", path);
    an_status st = an_atomic_write_text(ctx, path, text);
    free(text);
    return st;
}
