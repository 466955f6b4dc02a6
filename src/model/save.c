/* save.c — a model as a Hugging Face directory: config.json and model.safetensors with the HF
 * names (metadata format = pt, as transformers requires), weights converted to the chosen dtype.
 * Each file is written atomically. */
#include "model/save.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "ckpt/atomic.h"       /* an_atomic_copy_file */
#include "ckpt/safetensors.h"  /* an_safetensors_write */

an_status an_model_save(an_ctx *ctx, const an_model *m, const char *dir, an_dtype dtype) {
    AN_CHECK(ctx, m->n_adapter_params == 0, AN_ERR_INPUT,
             "save %s: the model has LoRA adapters; merge them (an_lora_merge) or save the adapter", dir);
    AN_CHECK(ctx, dtype == AN_F32 || dtype == AN_BF16 || dtype == AN_F16, AN_ERR_INPUT,
             "save %s: weights can be saved as f32, bf16 or f16, not %s", dir, an_dtype_name(dtype));
    if (mkdir(dir, 0755) != 0) {
        struct stat st;
        AN_CHECK(ctx, stat(dir, &st) == 0 && S_ISDIR(st.st_mode), AN_ERR_INPUT, "save: cannot create directory %s", dir);
    }
    const char **names = malloc((size_t)m->n_params * sizeof *names);
    an_tensor **tensors = calloc((size_t)m->n_params, sizeof *tensors);
    an_status st = names && tensors ? AN_OK : an_error_set(ctx, AN_ERR_INTERNAL, __FILE__, __LINE__, "out of host memory");
    for (int i = 0; i < m->n_params && st == AN_OK; i++) {
        names[i] = m->params[i].name;
        an_tensor *t = *m->params[i].slot;
        tensors[i] = t->dtype == dtype ? an_tensor_retain(t) : an_tensor_to(ctx, t, dtype, t->device);
        if (!tensors[i]) st = an_error_status(ctx);
    }
    char path[4096];
    if (st == AN_OK) {
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        an_safetensors_meta meta[] = {{"format", "pt"}, {"producer", "anneal " ANNEAL_VERSION}};
        st = an_safetensors_write(ctx, path, m->n_params, names, tensors, 2, meta);
    }
    if (st == AN_OK) {
        snprintf(path, sizeof path, "%s/config.json", dir);
        st = an_model_config_save(ctx, &m->config, dtype, path);
    }
    for (int i = 0; tensors && i < m->n_params; i++) an_tensor_release(tensors[i]);
    free(names), free(tensors);
    return st;
}

an_status an_model_copy_tokenizer(an_ctx *ctx, const char *from_dir, const char *to_dir) {
    static const char *const files[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                        "generation_config.json"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        char from[4096], to[4096];
        snprintf(from, sizeof from, "%s/%s", from_dir, files[i]);
        snprintf(to, sizeof to, "%s/%s", to_dir, files[i]);
        struct stat sb;
        if (stat(from, &sb) == 0 && S_ISREG(sb.st_mode)) AN_TRY(an_atomic_copy_file(ctx, from, to));
    }
    return AN_OK;
}
