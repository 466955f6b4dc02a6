/* weights.c — the weights of a checkpoint: a LoRA run's adapter in PEFT format
 * (adapter_config.json + adapter_model.safetensors), or a full fine-tune's every parameter as a
 * Hugging Face model directory (model.safetensors with HF names and metadata format=pt, plus the
 * base model's config.json), and the base model's tokenizer files either way.
 *
 * Rules: weights are written in the parameters' own dtype and read back only into parameters of
 * the same name, shape and dtype, so a round trip is bit for bit. Every file is written atomically
 * and fsynced (ckpt/atomic.h). */
#include "ckpt/checkpoint_internal.h"

#include <errno.h>
#include <jansson.h>  /* adapter_config.json */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ckpt/atomic.h"  /* an_atomic_*: copies appear whole and fsynced */
#include "model/lora.h"   /* an_lora_save_peft, an_lora_parse_targets */
#include "model/save.h"   /* an_model_copy_tokenizer */

static bool is_file(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* The base directory's config.json must describe the model being saved. */
static an_status check_base_config(an_ctx *ctx, const char *config_path, const an_model_config *m) {
    an_model_config b;
    AN_TRY(an_model_config_load(ctx, config_path, &b));
    struct {
        const char *key;
        int64_t base, model;
    } fields[] = {
        {"vocab_size", b.vocab_size, m->vocab_size},
        {"hidden_size", b.hidden_size, m->hidden_size},
        {"intermediate_size", b.intermediate_size, m->intermediate_size},
        {"num_hidden_layers", b.num_layers, m->num_layers},
        {"num_attention_heads", b.num_heads, m->num_heads},
        {"num_key_value_heads", b.num_kv_heads, m->num_kv_heads},
        {"head_dim", b.head_dim, m->head_dim},
        {"tie_word_embeddings", b.tie_word_embeddings, m->tie_word_embeddings},
        {"architectures", b.architecture, m->architecture},
    };
    for (size_t i = 0; i < sizeof fields / sizeof *fields; i++)
        AN_CHECK(ctx, fields[i].base == fields[i].model, AN_ERR_INPUT,
                 "%s: %s = %lld but the model being saved has %lld (base_model_dir is not this run's model)",
                 config_path, fields[i].key, (long long)fields[i].base, (long long)fields[i].model);
    return AN_OK;
}

static an_status write_full(an_ctx *ctx, const char *dir, const an_ckpt_contents *c) {
    const an_model *m = c->model;
    AN_CHECK(ctx, c->base_model_dir != NULL, AN_ERR_INPUT,
             "checkpoint: a full fine-tune needs base_model_dir (its config.json makes step_<N> a Hugging Face model "
             "directory)");
    char from[4096], to[4096];
    snprintf(from, sizeof from, "%s/config.json", c->base_model_dir);
    AN_TRY(check_base_config(ctx, from, &m->config));
    snprintf(to, sizeof to, "%s/config.json", dir);
    AN_TRY(an_atomic_copy_file(ctx, from, to));

    const char **names = malloc((size_t)m->n_params * sizeof *names);
    an_tensor **tensors = malloc((size_t)m->n_params * sizeof *tensors);
    if (!names || !tensors) {
        free(names), free(tensors);
        AN_CHECK(ctx, 0, AN_ERR_INTERNAL, "out of host memory");
    }
    for (int i = 0; i < m->n_params; i++) {
        names[i] = m->params[i].name;
        tensors[i] = *m->params[i].slot;
    }
    snprintf(to, sizeof to, "%s/%s", dir, CKPT_MODEL_WEIGHTS);
    an_safetensors_meta meta[] = {{"format", "pt"}, {"producer", "anneal " ANNEAL_VERSION}};
    an_status st = an_safetensors_write(ctx, to, m->n_params, names, tensors, 2, meta);
    free(names), free(tensors);
    return st;
}

an_status ckpt_weights_write(an_ctx *ctx, const char *dir, const an_ckpt_contents *c) {
    if (c->model->n_adapter_params > 0) AN_TRY(an_lora_save_peft(ctx, c->model, dir, c->base_model_dir));
    else AN_TRY(write_full(ctx, dir, c));
    return c->base_model_dir ? an_model_copy_tokenizer(ctx, c->base_model_dir, dir) : AN_OK;
}

/* ---- reading back ------------------------------------------------------------------------------ */

/* "q_proj, v_proj" */
static void target_list(unsigned targets, char *buf, size_t size) {
    const char *names[7];
    int k = an_lora_target_names(targets, names);
    buf[0] = '\0';
    for (int i = 0; i < k; i++) snprintf(buf + strlen(buf), size - strlen(buf), "%s%s", i ? ", " : "", names[i]);
}

/* adapter_config.json must describe the model's adapter: same rank, alpha, dropout, rsLoRA and
 * target set (otherwise the adapter tensors or the training would differ). */
static an_status check_adapter_config(an_ctx *ctx, const char *dir, const an_model *m) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, CKPT_ADAPTER_CONFIG);
    json_error_t jerr;
    json_t *cfg = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    AN_CHECK(ctx, cfg != NULL, AN_ERR_INPUT, "%s: %s (line %d)", path, jerr.text, jerr.line);
    json_t *r = json_object_get(cfg, "r"), *alpha = json_object_get(cfg, "lora_alpha");
    json_t *dropout = json_object_get(cfg, "lora_dropout"), *rs = json_object_get(cfg, "use_rslora");
    json_t *list = json_object_get(cfg, "target_modules");
    const char *targets[8];
    size_t n = json_is_array(list) ? json_array_size(list) : 0;
    bool strings = n > 0 && n <= 8;
    for (size_t i = 0; strings && i < n; i++) {
        strings = json_is_string(json_array_get(list, i));
        if (strings) targets[i] = json_string_value(json_array_get(list, i));
    }
    unsigned bits = 0;
    an_status st = AN_OK;
    if (!json_is_integer(r) || !json_is_number(alpha) || !json_is_number(dropout) || !json_is_boolean(rs) || !strings)
        st = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__,
                          "%s: expected integer 'r', numbers 'lora_alpha' and 'lora_dropout', boolean 'use_rslora' and "
                          "a list of module names 'target_modules'", path);
    else st = an_lora_parse_targets(ctx, targets, (int)n, &bits);
    if (st == AN_OK && json_integer_value(r) != m->lora.rank)
        st = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s: r = %lld but the model's adapter has rank %lld",
                          path, (long long)json_integer_value(r), (long long)m->lora.rank);
    else if (st == AN_OK && (json_number_value(alpha) != m->lora.alpha || json_number_value(dropout) != m->lora.dropout ||
                             json_is_true(rs) != m->lora.rslora))
        st = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__,
                          "%s: lora_alpha %g, lora_dropout %g, use_rslora %d differ from the model's adapter (%g, %g, %d)",
                          path, json_number_value(alpha), json_number_value(dropout), (int)json_is_true(rs), m->lora.alpha,
                          m->lora.dropout, (int)m->lora.rslora);
    else if (st == AN_OK && bits != m->lora.targets) {
        char file_list[128], model_list[128];
        target_list(bits, file_list, sizeof file_list);
        target_list(m->lora.targets, model_list, sizeof model_list);
        st = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__,
                          "%s: target_modules are %s but the model's adapter has %s: a checkpoint of another run?", path,
                          file_list, model_list);
    }
    json_decref(cfg);
    return st;
}

static void shape_text(int ndim, const int64_t *shape, char *buf, size_t size) {
    snprintf(buf, size, "(");
    for (int i = 0; i < ndim; i++) snprintf(buf + strlen(buf), size - strlen(buf), "%s%lld", i ? ", " : "", (long long)shape[i]);
    snprintf(buf + strlen(buf), size - strlen(buf), ")");
}

/* Every table entry is in the file with its shape and dtype, and the file holds nothing else. */
static an_status check_tensors(an_ctx *ctx, const ckpt_weights *w, const an_param *table, int n) {
    for (int i = 0; i < n; i++) {
        const an_param *p = &table[i];
        const an_tensor *param = *p->slot;
        const an_safetensors_tensor *t = an_safetensors_find(w->st, p->name);
        AN_CHECK(ctx, t != NULL, AN_ERR_INPUT, "%s: no tensor '%s' (a checkpoint of another model?)", w->file, p->name);
        bool same = t->ndim == param->ndim;
        for (int d = 0; same && d < t->ndim; d++) same = t->shape[d] == param->shape[d];
        char got[96], want[96];
        shape_text(t->ndim < AN_MAX_DIMS ? t->ndim : AN_MAX_DIMS, t->shape, got, sizeof got);
        shape_text(param->ndim, param->shape, want, sizeof want);
        AN_CHECK(ctx, same, AN_ERR_INPUT, "%s: tensor '%s' has shape %s, the model's is %s (a checkpoint of another model?)",
                 w->file, p->name, got, want);
        AN_CHECK(ctx, t->has_dtype && t->dtype == param->dtype, AN_ERR_INPUT,
                 "%s: tensor '%s' is %s but the model's is %s (resume in the dtype the run was saved in)", w->file,
                 p->name, t->dtype_name, an_dtype_name(param->dtype));
    }
    for (int64_t i = 0; i < an_safetensors_count(w->st); i++) {
        const char *name = an_safetensors_name(w->st, i);
        bool known = false;
        for (int j = 0; !known && j < n; j++) known = strcmp(table[j].name, name) == 0;
        AN_CHECK(ctx, known, AN_ERR_INPUT, "%s: tensor '%s' is not a parameter of this model (a checkpoint of another "
                 "model?)", w->file, name);
    }
    return AN_OK;
}

an_status ckpt_weights_open(an_ctx *ctx, const char *dir, an_model *m, ckpt_weights *w) {
    memset(w, 0, sizeof *w);
    char adapter[4096], full[4096];
    snprintf(adapter, sizeof adapter, "%s/%s", dir, CKPT_ADAPTER_WEIGHTS);
    snprintf(full, sizeof full, "%s/%s", dir, CKPT_MODEL_WEIGHTS);
    bool has_adapter = is_file(adapter), has_full = is_file(full);
    AN_CHECK(ctx, has_adapter != has_full, AN_ERR_INPUT, "%s: expected exactly one of %s and %s, found %s", dir,
             CKPT_ADAPTER_WEIGHTS, CKPT_MODEL_WEIGHTS, has_adapter ? "both" : "neither");
    bool lora = m->n_adapter_params > 0;
    AN_CHECK(ctx, !has_adapter || lora, AN_ERR_INPUT,
             "%s: holds a LoRA adapter but the model has none (attach the run's adapter before loading)", dir);
    AN_CHECK(ctx, !has_full || !lora, AN_ERR_INPUT,
             "%s: holds a full model (%s) but the model has LoRA adapters (a checkpoint of another run?)", dir,
             CKPT_MODEL_WEIGHTS);
    if (lora) AN_TRY(check_adapter_config(ctx, dir, m));
    w->adapter = lora;
    snprintf(w->file, sizeof w->file, "%s", lora ? adapter : full);
    AN_TRY(an_safetensors_open(ctx, w->file, &w->st));
    an_status st = lora ? check_tensors(ctx, w, m->adapter_params, m->n_adapter_params)
                        : check_tensors(ctx, w, m->params, m->n_params);
    if (st != AN_OK) ckpt_weights_close(w);
    return st;
}

an_status ckpt_weights_apply(an_ctx *ctx, const ckpt_weights *w, an_model *m) {
    const an_param *table = w->adapter ? m->adapter_params : m->params;
    int n = w->adapter ? m->n_adapter_params : m->n_params;
    for (int i = 0; i < n; i++) AN_TRY(an_safetensors_load_into(ctx, w->st, table[i].name, *table[i].slot));
    return AN_OK;
}

void ckpt_weights_close(ckpt_weights *w) {
    an_safetensors_close(w->st);
    w->st = NULL;
}
