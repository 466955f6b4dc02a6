/* load.c — a model from a Hugging Face directory: config.json plus model.safetensors or the
 * shards of model.safetensors.index.json. Every parameter must be present with exactly the shape
 * the config implies, and every tensor in the checkpoint must be a parameter (a checkpoint of
 * another model is refused, never half-loaded). Values are converted to the requested dtype. */
#include "model/load.h"

#include <stdio.h>
#include <string.h>

#include "ckpt/safetensors.h"  /* an_safetensors_dir_open, _find, _load_into */

/* Buffers some exporters leave in checkpoints; they are recomputed from the config. */
static bool is_ignored_buffer(const char *name) {
    size_t n = strlen(name);
    const char *suffix = ".rotary_emb.inv_freq";
    size_t s = strlen(suffix);
    return n > s && strcmp(name + n - s, suffix) == 0;
}

static an_status check_shape(an_ctx *ctx, const an_safetensors_tensor *t, const an_param *p, const char *config) {
    bool ok = t->ndim == p->ndim;
    for (int i = 0; ok && i < p->ndim; i++) ok = t->shape[i] == p->shape[i];
    char got[64] = "(", want[64] = "(";
    for (int i = 0; i < t->ndim && i < 4; i++)
        snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    for (int i = 0; i < p->ndim; i++)
        snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", i ? ", " : "", (long long)p->shape[i]);
    AN_CHECK(ctx, ok, AN_ERR_INPUT, "%s: tensor '%s' has shape %s) but %s implies %s)", t->file, t->name, got, config,
             want);
    return AN_OK;
}

an_status an_model_load(an_ctx *ctx, const char *model_dir, an_dtype dtype, an_device device, an_model **out) {
    char config_path[4096];
    snprintf(config_path, sizeof config_path, "%s/config.json", model_dir);
    an_model_config config;
    AN_TRY(an_model_config_load(ctx, config_path, &config));
    an_safetensors *st = NULL;
    AN_TRY(an_safetensors_dir_open(ctx, model_dir, &st));
    an_model *m = NULL;
    an_status status = an_model_create(ctx, &config, dtype, device, &m);
    for (int i = 0; status == AN_OK && i < m->n_params; i++) {
        const an_param *p = &m->params[i];
        const an_safetensors_tensor *t = an_safetensors_find(st, p->name);
        if (!t) {
            status = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s: the checkpoint has no tensor '%s'",
                                  model_dir, p->name);
            break;
        }
        status = check_shape(ctx, t, p, config_path);
        if (status == AN_OK) status = an_safetensors_load_into(ctx, st, p->name, *p->slot);
    }
    for (int64_t i = 0; status == AN_OK && i < an_safetensors_count(st); i++) {
        const an_safetensors_tensor *t = an_safetensors_at(st, i);
        bool tied_head = config.tie_word_embeddings && strcmp(t->name, "lm_head.weight") == 0;
        if (!an_model_find(m, t->name) && !is_ignored_buffer(t->name) && !tied_head)
            status = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__,
                                  "%s: tensor '%s' is not a parameter of %s as %s describes it (a checkpoint of "
                                  "another model?)", t->file, t->name, config.architecture_name, config_path);
    }
    an_safetensors_close(st);
    if (status != AN_OK) {
        an_model_free(m);
        return status;
    }
    *out = m;
    return AN_OK;
}
