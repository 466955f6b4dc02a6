/* dataset.c — the HDF5 tokenized dataset: writer (appending documents to extendible chunked datasets,
 * attributes at commit, temp file renamed into place), reader (validated layout, offsets in memory,
 * token ranges by hyperslab), and the tokenizer fingerprint. docs/formats.md documents the layout. */
#include "data/dataset.h"

#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ckpt/sha256.h"  /* an_sha256_file: the tokenizer fingerprint */

#define CHUNK 16384                 /* elements per HDF5 chunk: 64 KiB of ids */
#define FLUSH_TOKENS (1 << 20)      /* tokens buffered by the writer between appends */
#define CACHE_BYTES (16u << 20)     /* chunk cache per dataset when reading */

/* ---- HDF5 helpers ---- */

static void hdf5_quiet(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

static herr_t first_error(unsigned n, const H5E_error2_t *e, void *user) {
    char *out = user;
    if (n == 0 && e->desc) snprintf(out, 160, "%s", e->desc);
    return 0;
}

/* The innermost HDF5 error description, for messages. */
static const char *hdf5_reason(char buf[160]) {
    buf[0] = '\0';
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, first_error, buf);
    if (!buf[0]) snprintf(buf, 160, "HDF5 error");
    return buf;
}

static hid_t string_type(void) {
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    H5Tset_cset(t, H5T_CSET_UTF8);
    return t;
}

static bool attr_write(hid_t loc, const char *name, hid_t file_type, hid_t mem_type, hsize_t n, bool scalar,
                       const void *data) {
    hid_t space = scalar ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, &n, NULL);
    hid_t a = space >= 0 ? H5Acreate2(loc, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT) : -1;
    bool ok = a >= 0 && H5Awrite(a, mem_type, data) >= 0;
    if (a >= 0) H5Aclose(a);
    if (space >= 0) H5Sclose(space);
    return ok;
}

static bool attr_string(hid_t loc, const char *name, const char *value) {
    hid_t t = string_type();
    bool ok = attr_write(loc, name, t, t, 1, true, &value);
    H5Tclose(t);
    return ok;
}

static bool attr_strings(hid_t loc, const char *name, const char *const *values, int n) {
    hid_t t = string_type();
    bool ok = attr_write(loc, name, t, t, (hsize_t)n, false, values);
    H5Tclose(t);
    return ok;
}

static bool attr_i64(hid_t loc, const char *name, int64_t v) {
    return attr_write(loc, name, H5T_STD_I64LE, H5T_NATIVE_INT64, 1, true, &v);
}

static bool attr_i64s(hid_t loc, const char *name, const int64_t *v, int n) {
    return attr_write(loc, name, H5T_STD_I64LE, H5T_NATIVE_INT64, (hsize_t)n, false, v);
}

/* ---- writer ---- */

struct an_dataset_writer {
    char *path, *tmp;
    hid_t file, ids, mask, offsets_set;
    int64_t *offsets;          /* n_docs + 1 */
    int64_t n_docs, offsets_cap;
    int32_t *buf_ids;          /* FLUSH_TOKENS tokens not yet appended */
    uint8_t *buf_mask;
    int64_t buffered, written, loss_tokens;
};

static hid_t create_extendible(hid_t file, const char *name, hid_t type) {
    hsize_t dims = 0, maxdims = H5S_UNLIMITED, chunk = CHUNK;
    hid_t space = H5Screate_simple(1, &dims, &maxdims);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    hid_t d = -1;
    if (space >= 0 && dcpl >= 0 && H5Pset_chunk(dcpl, 1, &chunk) >= 0 && H5Pset_shuffle(dcpl) >= 0 &&
        H5Pset_deflate(dcpl, 4) >= 0)
        d = H5Dcreate2(file, name, type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    if (dcpl >= 0) H5Pclose(dcpl);
    if (space >= 0) H5Sclose(space);
    return d;
}

static bool append(hid_t d, hid_t mem_type, hsize_t at, hsize_t n, const void *data) {
    if (n == 0) return true;
    hsize_t size = at + n;
    if (H5Dset_extent(d, &size) < 0) return false;
    hid_t fspace = H5Dget_space(d);
    hid_t mspace = H5Screate_simple(1, &n, NULL);
    bool ok = fspace >= 0 && mspace >= 0 && H5Sselect_hyperslab(fspace, H5S_SELECT_SET, &at, NULL, &n, NULL) >= 0 &&
              H5Dwrite(d, mem_type, mspace, fspace, H5P_DEFAULT, data) >= 0;
    if (mspace >= 0) H5Sclose(mspace);
    if (fspace >= 0) H5Sclose(fspace);
    return ok;
}

static void writer_close_handles(an_dataset_writer *w) {
    if (w->ids >= 0) H5Dclose(w->ids);
    if (w->mask >= 0) H5Dclose(w->mask);
    if (w->offsets_set >= 0) H5Dclose(w->offsets_set);
    if (w->file >= 0) H5Fclose(w->file);
    w->ids = w->mask = w->offsets_set = w->file = -1;
}

static void writer_free(an_dataset_writer *w) {
    free(w->path), free(w->tmp), free(w->offsets), free(w->buf_ids), free(w->buf_mask);
    free(w);
}

void an_dataset_writer_abort(an_dataset_writer *w) {
    if (!w) return;
    writer_close_handles(w);
    if (w->tmp) unlink(w->tmp);
    writer_free(w);
}

an_status an_dataset_writer_open(an_ctx *ctx, const char *path, an_dataset_writer **out) {
    hdf5_quiet();
    an_dataset_writer *w = calloc(1, sizeof *w);
    AN_CHECK(ctx, w != NULL, AN_ERR_INTERNAL, "out of host memory");
    w->file = w->ids = w->mask = w->offsets_set = -1;
    size_t n = strlen(path);
    w->path = strdup(path);
    w->tmp = malloc(n + 5);
    w->offsets_cap = 1024;
    w->offsets = malloc((size_t)w->offsets_cap * sizeof *w->offsets);
    w->buf_ids = malloc(FLUSH_TOKENS * sizeof *w->buf_ids);
    w->buf_mask = malloc(FLUSH_TOKENS);
    if (!w->path || !w->tmp || !w->offsets || !w->buf_ids || !w->buf_mask) {
        writer_free(w);
        AN_CHECK(ctx, 0, AN_ERR_INTERNAL, "out of host memory");
    }
    snprintf(w->tmp, n + 5, "%s.tmp", path);
    w->offsets[0] = 0;
    char why[160];
    w->file = H5Fcreate(w->tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (w->file < 0) {
        an_status st = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s: cannot create: %s (%s)", w->tmp,
                                    hdf5_reason(why), strerror(errno));
        an_dataset_writer_abort(w);
        return st;
    }
    w->ids = create_extendible(w->file, "ids", H5T_STD_I32LE);
    w->mask = create_extendible(w->file, "loss_mask", H5T_STD_U8LE);
    w->offsets_set = create_extendible(w->file, "doc_offsets", H5T_STD_I64LE);
    if (w->ids < 0 || w->mask < 0 || w->offsets_set < 0) {
        an_status st = an_error_set(ctx, AN_ERR_INTERNAL, __FILE__, __LINE__, "%s: cannot create the datasets: %s",
                                    w->tmp, hdf5_reason(why));
        an_dataset_writer_abort(w);
        return st;
    }
    *out = w;
    return AN_OK;
}

static an_status flush(an_ctx *ctx, an_dataset_writer *w) {
    char why[160];
    AN_CHECK(ctx,
             append(w->ids, H5T_NATIVE_INT32, (hsize_t)w->written, (hsize_t)w->buffered, w->buf_ids) &&
                 append(w->mask, H5T_NATIVE_UINT8, (hsize_t)w->written, (hsize_t)w->buffered, w->buf_mask),
             AN_ERR_INPUT, "%s: write failed: %s", w->tmp, hdf5_reason(why));
    w->written += w->buffered;
    w->buffered = 0;
    return AN_OK;
}

an_status an_dataset_writer_add(an_ctx *ctx, an_dataset_writer *w, const int32_t *ids, const uint8_t *mask,
                                int64_t n) {
    AN_CHECK(ctx, n >= 1, AN_ERR_INTERNAL, "dataset writer: a document needs at least one token");
    if (w->n_docs + 2 > w->offsets_cap) {
        int64_t cap = 2 * w->offsets_cap;
        int64_t *p = realloc(w->offsets, (size_t)cap * sizeof *p);
        AN_CHECK(ctx, p != NULL, AN_ERR_INTERNAL, "out of host memory (%lld document offsets)", (long long)cap);
        w->offsets = p, w->offsets_cap = cap;
    }
    for (int64_t done = 0; done < n;) {
        int64_t k = n - done < FLUSH_TOKENS - w->buffered ? n - done : FLUSH_TOKENS - w->buffered;
        memcpy(w->buf_ids + w->buffered, ids + done, (size_t)k * sizeof *ids);
        memcpy(w->buf_mask + w->buffered, mask + done, (size_t)k);
        for (int64_t i = 0; i < k; i++) w->loss_tokens += mask[done + i] != 0;
        w->buffered += k, done += k;
        if (w->buffered == FLUSH_TOKENS) AN_TRY(flush(ctx, w));
    }
    w->n_docs++;
    w->offsets[w->n_docs] = w->offsets[w->n_docs - 1] + n;
    return AN_OK;
}

static bool write_attributes(an_dataset_writer *w, const an_dataset_info *info) {
    hid_t f = w->file;
    bool ok = attr_i64(f, "anneal_dataset_version", AN_DATASET_VERSION) &&
              attr_string(f, "tokenizer_sha256", info->tokenizer_sha256) && attr_string(f, "format", info->format) &&
              attr_string(f, "chat_template", info->chat_template) && attr_string(f, "reasoning", info->reasoning) &&
              attr_write(f, "max_bad_fraction", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 1, true, &info->max_bad_fraction) &&
              attr_i64(f, "bos_id", info->bos_id) && attr_i64(f, "eos_id", info->eos_id) &&
              attr_i64(f, "pad_id", info->pad_id) && attr_i64(f, "vocab_size", info->vocab_size) &&
              attr_i64(f, "records", info->records) && attr_i64(f, "bad_records", info->bad_records) &&
              attr_i64(f, "documents", w->n_docs) && attr_i64(f, "tokens", w->written) &&
              attr_i64(f, "loss_tokens", w->loss_tokens);
    int n = info->n_sources;
    if (!ok || n == 0) return ok;
    const char **paths = malloc((size_t)n * sizeof *paths), **formats = malloc((size_t)n * sizeof *formats);
    int64_t *num = malloc(4 * (size_t)n * sizeof *num);
    if (!paths || !formats || !num) ok = false;
    for (int i = 0; ok && i < n; i++) {
        const an_dataset_source *s = &info->sources[i];
        paths[i] = s->path, formats[i] = s->formats;
        num[i] = s->records, num[n + i] = s->bad_records, num[2 * n + i] = s->size, num[3 * n + i] = s->mtime_ns;
    }
    ok = ok && attr_strings(f, "sources", paths, n) && attr_strings(f, "source_formats", formats, n) &&
         attr_i64s(f, "source_records", num, n) && attr_i64s(f, "source_bad_records", num + n, n) &&
         attr_i64s(f, "source_sizes", num + 2 * n, n) && attr_i64s(f, "source_mtimes_ns", num + 3 * n, n);
    free(paths), free(formats), free(num);
    return ok;
}

/* Best effort: makes the rename durable. */
static void sync_path(const char *path, bool directory) {
    int fd = open(path, O_RDONLY | O_CLOEXEC | (directory ? O_DIRECTORY : 0));
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
}

an_status an_dataset_writer_commit(an_ctx *ctx, an_dataset_writer *w, const an_dataset_info *info) {
    char why[160];
    an_status st = flush(ctx, w);
    if (st == AN_OK && !append(w->offsets_set, H5T_NATIVE_INT64, 0, (hsize_t)w->n_docs + 1, w->offsets))
        st = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s: write failed: %s", w->tmp, hdf5_reason(why));
    if (st == AN_OK && !write_attributes(w, info))
        st = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s: writing the attributes failed: %s", w->tmp,
                          hdf5_reason(why));
    if (st == AN_OK) {
        H5Dclose(w->ids), H5Dclose(w->mask), H5Dclose(w->offsets_set);
        w->ids = w->mask = w->offsets_set = -1;
        herr_t rc = H5Fclose(w->file);
        w->file = -1;
        if (rc < 0)
            st = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s: close failed: %s", w->tmp, hdf5_reason(why));
    }
    if (st == AN_OK) {
        sync_path(w->tmp, false);
        if (rename(w->tmp, w->path) != 0)
            st = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s: cannot rename %s over it: %s", w->path,
                              w->tmp, strerror(errno));
    }
    if (st != AN_OK) {
        an_dataset_writer_abort(w);
        return st;
    }
    char *dir = strdup(w->path);
    if (dir) {
        char *slash = strrchr(dir, '/');
        sync_path(slash ? (slash == dir ? "/" : (*slash = '\0', dir)) : ".", true);
        free(dir);
    }
    writer_free(w);
    return AN_OK;
}

/* ---- fingerprints ---- */

an_status an_data_tokenizer_fingerprint(an_ctx *ctx, const char *model_dir, char out[65]) {
    size_t n = strlen(model_dir) + sizeof "/tokenizer.json";
    char *path = malloc(n);
    AN_CHECK(ctx, path != NULL, AN_ERR_INTERNAL, "out of host memory");
    snprintf(path, n, "%s/tokenizer.json", model_dir);
    an_status st = an_sha256_file(ctx, path, out);
    free(path);
    return st;
}

/* ---- reader ---- */

struct an_dataset {
    char *path;
    hid_t file, ids, mask;
    int64_t *offsets;  /* n_docs + 1 */
    int64_t n_docs, n_tokens, loss_tokens;
    an_dataset_info info;
};

void an_dataset_info_free(an_dataset_info *info) {
    for (int i = 0; i < info->n_sources; i++) free(info->sources[i].path);
    free(info->sources);
    info->sources = NULL;
    info->n_sources = 0;
}

void an_dataset_free(an_dataset *ds) {
    if (!ds) return;
    if (ds->ids >= 0) H5Dclose(ds->ids);
    if (ds->mask >= 0) H5Dclose(ds->mask);
    if (ds->file >= 0) H5Fclose(ds->file);
    an_dataset_info_free(&ds->info);
    free(ds->offsets);
    free(ds->path);
    free(ds);
}

typedef struct {
    an_ctx *ctx;
    const char *path;
    hid_t file;
} attr_reader;

/* The attribute's element count, or -1 with an error recorded (missing, or not of class cls). */
static hssize_t attr_open(attr_reader *r, const char *name, H5T_class_t cls, hid_t *a) {
    if (H5Aexists(r->file, name) <= 0) {
        an_error_set(r->ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s: attribute '%s' is missing", r->path, name);
        return -1;
    }
    *a = H5Aopen(r->file, name, H5P_DEFAULT);
    hid_t t = *a >= 0 ? H5Aget_type(*a) : -1, space = *a >= 0 ? H5Aget_space(*a) : -1;
    hssize_t n = space >= 0 ? H5Sget_simple_extent_npoints(space) : -1;
    bool ok = t >= 0 && H5Tget_class(t) == cls && n >= 0;
    if (t >= 0) H5Tclose(t);
    if (space >= 0) H5Sclose(space);
    if (!ok) {
        if (*a >= 0) H5Aclose(*a);
        an_error_set(r->ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s: attribute '%s' must be %s", r->path, name,
                     cls == H5T_STRING ? "a string" : cls == H5T_FLOAT ? "a number" : "an integer");
        return -1;
    }
    return n;
}

static an_status read_i64s(attr_reader *r, const char *name, int64_t *out, hssize_t want) {
    hid_t a;
    hssize_t n = attr_open(r, name, H5T_INTEGER, &a);
    if (n < 0) return AN_ERR_INPUT;
    herr_t rc = n == want ? H5Aread(a, H5T_NATIVE_INT64, out) : -1;
    H5Aclose(a);
    AN_CHECK(r->ctx, n == want, AN_ERR_INPUT, "%s: attribute '%s' has %lld values, expected %lld", r->path, name,
             (long long)n, (long long)want);
    AN_CHECK(r->ctx, rc >= 0, AN_ERR_INPUT, "%s: attribute '%s' cannot be read", r->path, name);
    return AN_OK;
}

static an_status read_i64(attr_reader *r, const char *name, int64_t *out) { return read_i64s(r, name, out, 1); }

/* n strings (variable or fixed length) into malloc'd copies. */
static an_status read_strings(attr_reader *r, const char *name, char **out, hssize_t want) {
    hid_t a;
    hssize_t n = attr_open(r, name, H5T_STRING, &a);
    if (n < 0) return AN_ERR_INPUT;
    if (n != want) {
        H5Aclose(a);
        AN_CHECK(r->ctx, 0, AN_ERR_INPUT, "%s: attribute '%s' has %lld values, expected %lld", r->path, name,
                 (long long)n, (long long)want);
    }
    hid_t ftype = H5Aget_type(a);
    bool variable = H5Tis_variable_str(ftype) > 0;
    size_t width = H5Tget_size(ftype);
    hid_t mtype = H5Tcopy(H5T_C_S1);
    H5Tset_size(mtype, variable ? H5T_VARIABLE : width + 1);
    H5Tset_cset(mtype, H5Tget_cset(ftype));
    an_status st = AN_OK;
    if (variable) {
        char **tmp = calloc((size_t)n + 1, sizeof *tmp);
        if (!tmp || H5Aread(a, mtype, tmp) < 0) st = AN_ERR_INPUT;
        for (hssize_t i = 0; tmp && i < n; i++) {
            if (st == AN_OK) out[i] = strdup(tmp[i] ? tmp[i] : "");
            if (tmp[i]) H5free_memory(tmp[i]);
        }
        free(tmp);
    } else {
        char *tmp = calloc((size_t)n + 1, width + 1);
        if (!tmp || H5Aread(a, mtype, tmp) < 0) st = AN_ERR_INPUT;
        for (hssize_t i = 0; st == AN_OK && i < n; i++) out[i] = strdup(tmp + (size_t)i * (width + 1));
        free(tmp);
    }
    H5Tclose(mtype), H5Tclose(ftype), H5Aclose(a);
    AN_CHECK(r->ctx, st == AN_OK, AN_ERR_INPUT, "%s: attribute '%s' cannot be read", r->path, name);
    return AN_OK;
}

static an_status read_string(attr_reader *r, const char *name, char *out, size_t size) {
    char *s = NULL;
    AN_TRY(read_strings(r, name, &s, 1));
    AN_CHECK(r->ctx, s != NULL, AN_ERR_INTERNAL, "out of host memory");
    bool fits = strlen(s) < size;
    if (fits) memcpy(out, s, strlen(s) + 1);
    free(s);
    AN_CHECK(r->ctx, fits, AN_ERR_INPUT, "%s: attribute '%s' is longer than %zu bytes", r->path, name, size - 1);
    return AN_OK;
}

static an_status read_info(attr_reader *r, an_dataset_info *info) {
    int64_t v[4];
    AN_TRY(read_string(r, "tokenizer_sha256", info->tokenizer_sha256, sizeof info->tokenizer_sha256));
    AN_TRY(read_string(r, "format", info->format, sizeof info->format));
    AN_TRY(read_string(r, "chat_template", info->chat_template, sizeof info->chat_template));
    AN_TRY(read_string(r, "reasoning", info->reasoning, sizeof info->reasoning));
    hid_t a;
    hssize_t n_frac = attr_open(r, "max_bad_fraction", H5T_FLOAT, &a);
    if (n_frac < 0) return AN_ERR_INPUT;
    herr_t rc = n_frac == 1 ? H5Aread(a, H5T_NATIVE_DOUBLE, &info->max_bad_fraction) : -1;
    H5Aclose(a);
    AN_CHECK(r->ctx, rc >= 0, AN_ERR_INPUT, "%s: attribute 'max_bad_fraction' must be one number", r->path);
    AN_TRY(read_i64(r, "bos_id", &v[0]));
    AN_TRY(read_i64(r, "eos_id", &v[1]));
    AN_TRY(read_i64(r, "pad_id", &v[2]));
    AN_TRY(read_i64(r, "vocab_size", &v[3]));
    info->bos_id = (int32_t)v[0], info->eos_id = (int32_t)v[1], info->pad_id = (int32_t)v[2];
    info->vocab_size = (int32_t)v[3];
    AN_TRY(read_i64(r, "records", &info->records));
    AN_TRY(read_i64(r, "bad_records", &info->bad_records));
    if (H5Aexists(r->file, "sources") <= 0) return AN_OK;  /* written without sources */
    hid_t s;
    hssize_t n = attr_open(r, "sources", H5T_STRING, &s);
    if (n < 0) return AN_ERR_INPUT;
    H5Aclose(s);
    AN_CHECK(r->ctx, n < 1 << 24, AN_ERR_INPUT, "%s: attribute 'sources' has %lld values", r->path, (long long)n);
    char **paths = calloc((size_t)n + 1, sizeof *paths), **formats = calloc((size_t)n + 1, sizeof *formats);
    int64_t *num = calloc(4 * (size_t)n + 1, sizeof *num);
    info->sources = calloc((size_t)n + 1, sizeof *info->sources);
    an_status st = paths && formats && num && info->sources ? AN_OK : AN_ERR_INTERNAL;
    if (st != AN_OK) an_error_set(r->ctx, st, __FILE__, __LINE__, "out of host memory");
    if (st == AN_OK) st = read_strings(r, "sources", paths, n);
    if (st == AN_OK) st = read_strings(r, "source_formats", formats, n);
    if (st == AN_OK) st = read_i64s(r, "source_records", num, n);
    if (st == AN_OK) st = read_i64s(r, "source_bad_records", num + n, n);
    if (st == AN_OK) st = read_i64s(r, "source_sizes", num + 2 * n, n);
    if (st == AN_OK) st = read_i64s(r, "source_mtimes_ns", num + 3 * n, n);
    for (hssize_t i = 0; st == AN_OK && i < n; i++) {
        an_dataset_source *src = &info->sources[i];
        *src = (an_dataset_source){.path = paths[i], .records = num[i], .bad_records = num[n + i],
                                   .size = num[2 * n + i], .mtime_ns = num[3 * n + i]};
        paths[i] = NULL;
        snprintf(src->formats, sizeof src->formats, "%s", formats[i] ? formats[i] : "");
        info->n_sources = (int)i + 1;
    }
    for (hssize_t i = 0; paths && i < n; i++) free(paths[i]);
    for (hssize_t i = 0; formats && i < n; i++) free(formats[i]);
    free(paths), free(formats), free(num);
    return st;
}

/* A rank-1 integer dataset and its length, or -1 with an error recorded. */
static hid_t open_column(attr_reader *r, const char *name, hid_t dapl, int64_t *len) {
    if (H5Lexists(r->file, name, H5P_DEFAULT) <= 0) {
        an_error_set(r->ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s: dataset '/%s' is missing", r->path, name);
        return -1;
    }
    hid_t d = H5Dopen2(r->file, name, dapl);
    hid_t t = d >= 0 ? H5Dget_type(d) : -1, space = d >= 0 ? H5Dget_space(d) : -1;
    hsize_t dims = 0;
    bool ok = t >= 0 && space >= 0 && H5Tget_class(t) == H5T_INTEGER && H5Sget_simple_extent_ndims(space) == 1 &&
              H5Sget_simple_extent_dims(space, &dims, NULL) == 1;
    if (t >= 0) H5Tclose(t);
    if (space >= 0) H5Sclose(space);
    if (!ok) {
        if (d >= 0) H5Dclose(d);
        an_error_set(r->ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s: '/%s' must be a one-dimensional integer dataset",
                     r->path, name);
        return -1;
    }
    *len = (int64_t)dims;
    return d;
}

static an_status read_range(an_ctx *ctx, const char *path, hid_t d, hid_t mem_type, int64_t start, int64_t count,
                            void *out) {
    if (count == 0) return AN_OK;
    hsize_t at = (hsize_t)start, n = (hsize_t)count;
    hid_t fspace = H5Dget_space(d), mspace = H5Screate_simple(1, &n, NULL);
    bool ok = fspace >= 0 && mspace >= 0 && H5Sselect_hyperslab(fspace, H5S_SELECT_SET, &at, NULL, &n, NULL) >= 0 &&
              H5Dread(d, mem_type, mspace, fspace, H5P_DEFAULT, out) >= 0;
    if (mspace >= 0) H5Sclose(mspace);
    if (fspace >= 0) H5Sclose(fspace);
    char why[160];
    AN_CHECK(ctx, ok, AN_ERR_INPUT, "%s: read of %lld values at %lld failed: %s", path, (long long)count,
             (long long)start, hdf5_reason(why));
    return AN_OK;
}

static an_status open_checked(an_ctx *ctx, an_dataset *ds, const char *tokenizer_sha256) {
    char why[160];
    ds->file = H5Fopen(ds->path, H5F_ACC_RDONLY, H5P_DEFAULT);
    AN_CHECK(ctx, ds->file >= 0, AN_ERR_INPUT, "%s: cannot open as HDF5: %s", ds->path, hdf5_reason(why));
    attr_reader r = {ctx, ds->path, ds->file};
    AN_CHECK(ctx, H5Aexists(ds->file, "anneal_dataset_version") > 0, AN_ERR_INPUT,
             "%s: not a tokenized dataset (no 'anneal_dataset_version' attribute); make one with anneal data prepare",
             ds->path);
    int64_t version;
    AN_TRY(read_i64(&r, "anneal_dataset_version", &version));
    AN_CHECK(ctx, version == AN_DATASET_VERSION, AN_ERR_INPUT,
             "%s: dataset layout version %lld; this anneal reads version %d (prepare the data again)", ds->path,
             (long long)version, AN_DATASET_VERSION);
    AN_TRY(read_info(&r, &ds->info));
    if (tokenizer_sha256 && tokenizer_sha256[0])
        AN_CHECK(ctx, strcmp(tokenizer_sha256, ds->info.tokenizer_sha256) == 0, AN_ERR_INPUT,
                 "%s: tokenized with another tokenizer (tokenizer.json sha256 %s) than the model's (sha256 %s); "
                 "prepare the dataset again with this model",
                 ds->path, ds->info.tokenizer_sha256[0] ? ds->info.tokenizer_sha256 : "unknown", tokenizer_sha256);

    hid_t dapl = H5Pcreate(H5P_DATASET_ACCESS);
    if (dapl >= 0) H5Pset_chunk_cache(dapl, 1021, CACHE_BYTES, 1.0);
    int64_t n_ids = 0, n_mask = 0, n_offsets = 0;
    ds->ids = open_column(&r, "ids", dapl, &n_ids);
    ds->mask = ds->ids >= 0 ? open_column(&r, "loss_mask", dapl, &n_mask) : -1;
    hid_t offsets = ds->mask >= 0 ? open_column(&r, "doc_offsets", H5P_DEFAULT, &n_offsets) : -1;
    if (dapl >= 0) H5Pclose(dapl);
    if (offsets < 0) return AN_ERR_INPUT;
    an_status st = AN_OK;
    if (n_offsets < 1 || n_ids != n_mask)
        st = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__,
                          "%s: inconsistent layout: %lld ids, %lld loss_mask values, %lld doc_offsets", ds->path,
                          (long long)n_ids, (long long)n_mask, (long long)n_offsets);
    if (st == AN_OK) {
        ds->offsets = malloc((size_t)n_offsets * sizeof *ds->offsets);
        if (!ds->offsets) st = an_error_set(ctx, AN_ERR_INTERNAL, __FILE__, __LINE__, "out of host memory");
    }
    if (st == AN_OK) st = read_range(ctx, ds->path, offsets, H5T_NATIVE_INT64, 0, n_offsets, ds->offsets);
    H5Dclose(offsets);
    AN_TRY(st);
    ds->n_docs = n_offsets - 1;
    ds->n_tokens = n_ids;
    AN_CHECK(ctx, ds->offsets[0] == 0 && ds->offsets[ds->n_docs] == n_ids, AN_ERR_INPUT,
             "%s: doc_offsets run from %lld to %lld but there are %lld ids", ds->path, (long long)ds->offsets[0],
             (long long)ds->offsets[ds->n_docs], (long long)n_ids);
    for (int64_t i = 0; i < ds->n_docs; i++)
        AN_CHECK(ctx, ds->offsets[i + 1] > ds->offsets[i], AN_ERR_INPUT,
                 "%s: doc_offsets[%lld] = %lld is not above doc_offsets[%lld] = %lld (documents are never empty)",
                 ds->path, (long long)(i + 1), (long long)ds->offsets[i + 1], (long long)i,
                 (long long)ds->offsets[i]);
    int64_t n_docs_attr;
    AN_TRY(read_i64(&r, "documents", &n_docs_attr));
    AN_TRY(read_i64(&r, "loss_tokens", &ds->loss_tokens));
    AN_CHECK(ctx, n_docs_attr == ds->n_docs, AN_ERR_INPUT, "%s: attribute documents = %lld but doc_offsets holds %lld",
             ds->path, (long long)n_docs_attr, (long long)ds->n_docs);
    return AN_OK;
}

an_status an_dataset_open(an_ctx *ctx, const char *path, const char *tokenizer_sha256, an_dataset **out) {
    hdf5_quiet();
    an_dataset *ds = calloc(1, sizeof *ds);
    AN_CHECK(ctx, ds != NULL, AN_ERR_INTERNAL, "out of host memory");
    ds->file = ds->ids = ds->mask = -1;
    ds->path = strdup(path);
    an_status st = ds->path ? open_checked(ctx, ds, tokenizer_sha256)
                            : an_error_set(ctx, AN_ERR_INTERNAL, __FILE__, __LINE__, "out of host memory");
    if (st != AN_OK) {
        an_dataset_free(ds);
        return st;
    }
    *out = ds;
    return AN_OK;
}

int64_t an_dataset_documents(const an_dataset *ds) { return ds->n_docs; }
int64_t an_dataset_tokens(const an_dataset *ds) { return ds->n_tokens; }
int64_t an_dataset_loss_tokens(const an_dataset *ds) { return ds->loss_tokens; }
const an_dataset_info *an_dataset_get_info(const an_dataset *ds) { return &ds->info; }
const char *an_dataset_path(const an_dataset *ds) { return ds->path; }

int64_t an_dataset_document_length(const an_dataset *ds, int64_t doc) {
    return ds->offsets[doc + 1] - ds->offsets[doc];
}

an_status an_dataset_read(an_ctx *ctx, an_dataset *ds, int64_t doc, int64_t start, int64_t count, int32_t *ids,
                          uint8_t *mask) {
    AN_CHECK(ctx, doc >= 0 && doc < ds->n_docs, AN_ERR_INPUT, "%s: document %lld of %lld", ds->path, (long long)doc,
             (long long)ds->n_docs);
    int64_t len = ds->offsets[doc + 1] - ds->offsets[doc];
    AN_CHECK(ctx, start >= 0 && count >= 0 && start + count <= len, AN_ERR_INPUT,
             "%s: tokens [%lld, %lld) of document %lld, which has %lld", ds->path, (long long)start,
             (long long)(start + count), (long long)doc, (long long)len);
    int64_t at = ds->offsets[doc] + start;
    if (ids) AN_TRY(read_range(ctx, ds->path, ds->ids, H5T_NATIVE_INT32, at, count, ids));
    if (mask) AN_TRY(read_range(ctx, ds->path, ds->mask, H5T_NATIVE_UINT8, at, count, mask));
    return AN_OK;
}
