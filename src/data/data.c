/* data.c — a recipe's data section into datasets and loaders (see data.h): prepared .h5 files are
 * opened, raw files are tokenized into <output_dir>/data/ once and reused while unchanged. */
#include "data/data.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static bool is_h5(const char *path) {
    size_t n = strlen(path);
    return (n > 3 && !strcmp(path + n - 3, ".h5")) || (n > 5 && !strcmp(path + n - 5, ".hdf5"));
}

/* mkdir -p */
static an_status make_dirs(an_ctx *ctx, const char *path) {
    char *p = strdup(path);
    AN_CHECK(ctx, p != NULL, AN_ERR_INTERNAL, "out of host memory");
    an_status st = AN_OK;
    for (char *s = p + 1;; s++) {
        if (*s != '/' && *s != '\0') continue;
        char c = *s;
        *s = '\0';
        if (mkdir(p, 0755) != 0 && errno != EEXIST)
            st = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s: cannot create directory: %s", p,
                              strerror(errno));
        *s = c;
        if (st != AN_OK || c == '\0') break;
    }
    free(p);
    return st;
}

/* Whether the dataset at path was made from exactly these inputs, as they are now, the same way. */
static bool cache_matches(const an_dataset *ds, const char *const *inputs, int n, const an_recipe *r) {
    const an_dataset_info *info = an_dataset_get_info(ds);
    if (strcmp(info->format, an_data_format_name(r->data.format)) != 0) return false;
    if (info->max_bad_fraction != r->data.max_bad_fraction) return false;
    if (strcmp(info->reasoning, an_chat_reasoning_name(AN_CHAT_REASONING_KEEP_LAST)) != 0) return false;
    if (info->n_sources != n) return false;
    for (int i = 0; i < n; i++) {
        const an_dataset_source *s = &info->sources[i];
        struct stat sb;
        if (strcmp(s->path, inputs[i]) != 0 || stat(inputs[i], &sb) != 0) return false;
        int64_t mtime_ns = (int64_t)sb.st_mtim.tv_sec * 1000000000 + sb.st_mtim.tv_nsec;
        if (s->size != (int64_t)sb.st_size || s->mtime_ns != mtime_ns) return false;
    }
    return true;
}

typedef struct {
    an_ctx *ctx;
    const an_recipe *recipe;
    an_tokenizer *tok;       /* borrowed or owned_tok */
    an_tokenizer *owned_tok;
    const char *sha;
} opener;

/* The dataset for inputs (one .h5, or raw files tokenized into cache_name under output_dir/data). */
static an_status open_inputs(opener *o, const char *what, const char *const *inputs, int n, const char *cache_name,
                             an_dataset **out, bool *prepared, an_dataset_prepare_report *report) {
    an_ctx *ctx = o->ctx;
    int n_h5 = 0;
    for (int i = 0; i < n; i++) n_h5 += is_h5(inputs[i]);
    AN_CHECK(ctx, n_h5 == 0 || (n_h5 == 1 && n == 1), AN_ERR_INPUT,
             "%s: give either one prepared .h5 dataset or raw data files, not %d .h5 files among %d", what, n_h5, n);
    *prepared = false;
    if (n_h5 == 1) return an_dataset_open(ctx, inputs[0], o->sha, out);

    const an_recipe *r = o->recipe;
    size_t len = strlen(r->output_dir) + strlen(cache_name) + 8;
    char *dir = malloc(len), *path = malloc(len);
    if (!dir || !path) {
        free(dir), free(path);
        AN_CHECK(ctx, 0, AN_ERR_INTERNAL, "out of host memory");
    }
    snprintf(dir, len, "%s/data", r->output_dir);
    snprintf(path, len, "%s/data/%s", r->output_dir, cache_name);
    an_status st = AN_OK;
    struct stat sb;
    if (stat(path, &sb) == 0) {
        an_dataset *ds;
        if (an_dataset_open(ctx, path, o->sha, &ds) == AN_OK) {
            if (cache_matches(ds, inputs, n, r)) {
                *out = ds;
                free(dir), free(path);
                return AN_OK;
            }
            an_dataset_free(ds);
        }
        an_error_clear(ctx);  /* stale or unreadable: made again below */
    }
    st = make_dirs(ctx, dir);
    if (st == AN_OK && !o->tok) {
        st = an_tokenizer_load(ctx, r->model.path, &o->owned_tok);
        o->tok = o->owned_tok;
    }
    an_dataset_prepare_opts opts = {
        .inputs = inputs,
        .n_inputs = n,
        .format = r->data.format,
        .max_bad_fraction = r->data.max_bad_fraction,
        .reasoning = AN_CHAT_REASONING_KEEP_LAST,
        .tokenizer_sha256 = o->sha,
    };
    if (st == AN_OK) st = an_dataset_prepare(ctx, o->tok, &opts, path, report);
    if (st == AN_OK) st = an_dataset_open(ctx, path, o->sha, out);
    if (st == AN_OK) *prepared = true;
    free(dir), free(path);
    return st;
}

void an_data_free(an_data *d) {
    if (!d) return;
    an_data_loader_free(d->train);
    an_data_loader_free(d->validation);
    an_dataset_free(d->train_set);
    an_dataset_free(d->validation_set);
    free(d);
}

static an_status open_all(an_ctx *ctx, opener *o, an_data *d) {
    const an_recipe *r = o->recipe;
    AN_CHECK(ctx, r->data.train.n >= 1, AN_ERR_INPUT, "recipe: data.train lists no file");
    AN_TRY(open_inputs(o, "data.train", (const char *const *)r->data.train.items, r->data.train.n, "train.h5",
                       &d->train_set, &d->train_prepared, &d->train_report));
    if (r->data.validation) {
        const char *v = r->data.validation;
        AN_TRY(open_inputs(o, "data.validation", &v, 1, "validation.h5", &d->validation_set, &d->validation_prepared,
                           &d->validation_report));
    }
    an_data_loader_opts train_opts = {
        .seq_len = r->data.seq_len,
        .micro_batch = r->training.micro_batch,
        .packing = r->data.packing,
        .shuffle = r->data.shuffle,
        .seed = r->seed,
    };
    an_data_loader_opts val_opts = train_opts;
    val_opts.shuffle = false;
    if (d->validation_set) {
        AN_TRY(an_data_loader_new(ctx, d->train_set, NULL, 0, &train_opts, &d->train));
        return an_data_loader_new(ctx, d->validation_set, NULL, 0, &val_opts, &d->validation);
    }
    if (r->data.validation_fraction <= 0) return an_data_loader_new(ctx, d->train_set, NULL, 0, &train_opts, &d->train);
    int64_t *train = NULL, *val = NULL, n_train = 0, n_val = 0;
    AN_TRY(an_data_split(ctx, an_dataset_documents(d->train_set), r->data.validation_fraction, r->seed, &train,
                         &n_train, &val, &n_val));
    an_status st = an_data_loader_new(ctx, d->train_set, train, n_train, &train_opts, &d->train);
    if (st == AN_OK) st = an_data_loader_new(ctx, d->train_set, val, n_val, &val_opts, &d->validation);
    free(train), free(val);
    return st;
}

an_status an_data_open(an_ctx *ctx, const an_recipe *recipe, an_tokenizer *tok, an_data **out) {
    an_data *d = calloc(1, sizeof *d);
    AN_CHECK(ctx, d != NULL, AN_ERR_INTERNAL, "out of host memory");
    opener o = {ctx, recipe, tok, NULL, d->tokenizer_sha256};
    an_status st = an_data_tokenizer_fingerprint(ctx, recipe->model.path, d->tokenizer_sha256);
    if (st == AN_OK) st = open_all(ctx, &o, d);
    an_tokenizer_free(o.owned_tok);
    if (st != AN_OK) {
        an_data_free(d);
        return st;
    }
    *out = d;
    return AN_OK;
}
