/* safetensors_dir.c — opening a Hugging Face model directory: the shards that
 * model.safetensors.index.json names (its "weight_map": tensor name -> shard file), or the single
 * model.safetensors when there is no index.
 *
 * Each shard is opened once, in byte order of its file name. The index and the shards must agree
 * exactly; any disagreement is an AN_ERR_INPUT error naming the index, the shard and the tensor. */
#include "ckpt/safetensors_internal.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define INDEX_NAME "model.safetensors.index.json"
#define SINGLE_NAME "model.safetensors"

/* dir + "/" + name, malloc'd (NULL when out of memory). */
static char *join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (p) snprintf(p, a + b + 2, "%s%s%s", dir, a && dir[a - 1] == '/' ? "" : "/", name);
    return p;
}

static bool exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* A shard name from the index must stay inside the directory: relative, no ".." component. */
static bool safe_relative(const char *name) {
    if (!name[0] || name[0] == '/') return false;
    for (const char *p = name; *p;) {
        const char *slash = strchr(p, '/');
        size_t len = slash ? (size_t)(slash - p) : strlen(p);
        if (len == 2 && p[0] == '.' && p[1] == '.') return false;
        p += len + (slash ? 1 : 0);
    }
    return true;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Checks the index's weight_map against the opened shards (st->files follow `shards`, which is
 * sorted). */
static an_status cross_check(an_ctx *ctx, an_safetensors *st, const char *index, json_t *weight_map,
                             const char **shards, int n_shards) {
    const char *name;
    json_t *value;
    json_object_foreach(weight_map, name, value) {
        const char *shard = json_string_value(value);
        const char **hit = bsearch(&shard, shards, (size_t)n_shards, sizeof *shards, cmp_str);
        const char *path = st->files[hit - shards].path;
        const an_safetensors_tensor *t = an_safetensors_find(st, name);
        AN_CHECK(ctx, t != NULL, AN_ERR_INPUT, "%s: \"weight_map\" puts tensor '%s' in %s, but %s has no such tensor",
                 index, name, shard, path);
        AN_CHECK(ctx, t->file == path, AN_ERR_INPUT, "%s: \"weight_map\" puts tensor '%s' in %s, but it is in %s", index,
                 name, shard, t->file);
    }
    for (int64_t i = 0; i < st->n; i++)
        AN_CHECK(ctx, json_object_get(weight_map, st->tensors[i].name) != NULL, AN_ERR_INPUT, "%s: tensor '%s' is "
                 "missing from the \"weight_map\" of %s (every tensor of every shard must be listed)",
                 st->tensors[i].file, st->tensors[i].name, index);
    return AN_OK;
}

/* Reads the index, opens every shard it names into st, and checks that they agree. */
static an_status open_sharded(an_ctx *ctx, an_safetensors *st, const char *dir, const char *index) {
    json_error_t jerr;
    json_t *root = json_load_file(index, JSON_REJECT_DUPLICATES, &jerr);
    AN_CHECK(ctx, root != NULL, AN_ERR_INPUT, "%s: not valid JSON: %s (line %d, column %d)", index, jerr.text,
             jerr.line, jerr.column);
    json_t *weight_map = json_is_object(root) ? json_object_get(root, "weight_map") : NULL;
    an_status rc = AN_OK;
    if (!json_is_object(weight_map) || json_object_size(weight_map) == 0)
        rc = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s: \"weight_map\" is %s (expected an object "
                          "mapping each tensor name to its shard file)", index,
                          !weight_map ? "missing" : json_is_object(weight_map) ? "empty" : "not an object");

    /* The distinct shard names, sorted. */
    size_t n_entries = rc == AN_OK ? json_object_size(weight_map) : 0;
    const char **shards = malloc((n_entries ? n_entries : 1) * sizeof *shards);
    if (!shards && rc == AN_OK) rc = an_error_set(ctx, AN_ERR_INTERNAL, __FILE__, __LINE__, "out of host memory");
    int n_shards = 0;
    const char *name;
    json_t *value;
    if (rc == AN_OK) {
        json_object_foreach(weight_map, name, value) {
            if (!json_is_string(value) || !safe_relative(json_string_value(value))) {
                rc = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s: \"weight_map\".\"%s\" is %s (expected "
                                  "the file name of a shard in %s)", index, name,
                                  json_is_string(value) ? "a path outside the model directory" : "not a string", dir);
                break;
            }
            shards[n_shards++] = json_string_value(value);
        }
    }
    if (rc == AN_OK) {
        qsort(shards, (size_t)n_shards, sizeof *shards, cmp_str);
        int u = 0;
        for (int i = 0; i < n_shards; i++)
            if (u == 0 || strcmp(shards[u - 1], shards[i]) != 0) shards[u++] = shards[i];
        n_shards = u;
    }
    for (int i = 0; rc == AN_OK && i < n_shards; i++) {
        char *path = join(dir, shards[i]);
        if (!path) rc = an_error_set(ctx, AN_ERR_INTERNAL, __FILE__, __LINE__, "out of host memory");
        else if (!exists(path))
            rc = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s: shard %s, which %s lists, is missing: %s",
                              path, shards[i], index, strerror(errno));
        else rc = an_st_add_file(ctx, st, path);
        free(path);
    }
    if (rc == AN_OK) rc = an_st_finish(ctx, st);
    if (rc == AN_OK) rc = cross_check(ctx, st, index, weight_map, shards, n_shards);
    free(shards);
    json_decref(root);
    return rc;
}

an_status an_safetensors_dir_open(an_ctx *ctx, const char *model_dir, an_safetensors **out) {
    struct stat sb;
    AN_CHECK(ctx, stat(model_dir, &sb) == 0, AN_ERR_INPUT, "%s: cannot open model directory: %s", model_dir,
             strerror(errno));
    AN_CHECK(ctx, S_ISDIR(sb.st_mode), AN_ERR_INPUT, "%s: not a directory (expected a Hugging Face model directory)",
             model_dir);
    char *index = join(model_dir, INDEX_NAME), *single = join(model_dir, SINGLE_NAME);
    an_safetensors *st = an_st_new(ctx, model_dir);
    an_status rc = AN_OK;
    if (!index || !single || !st) {
        rc = an_error_set(ctx, AN_ERR_INTERNAL, __FILE__, __LINE__, "out of host memory");
    } else if (exists(index)) {
        rc = open_sharded(ctx, st, model_dir, index);
    } else if (exists(single)) {
        rc = an_st_add_file(ctx, st, single);
        if (rc == AN_OK) rc = an_st_finish(ctx, st);
    } else {
        rc = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s: neither %s nor %s is there (expected a Hugging "
                          "Face model directory)", model_dir, INDEX_NAME, SINGLE_NAME);
    }
    free(index);
    free(single);
    if (rc != AN_OK) {
        an_safetensors_close(st);
        return rc;
    }
    *out = st;
    return AN_OK;
}
