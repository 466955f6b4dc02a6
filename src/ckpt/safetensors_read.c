/* safetensors_read.c — opening safetensors files: mapping, strict header validation, lookup by name,
 * and conversion of a tensor's bytes into an an_tensor.
 *
 * Nothing in a file is trusted: the header length, every dim, every offset and their products are
 * checked (with overflow checks) before any data byte is touched, and the tensors must cover the data
 * section exactly, in order. The data is read in place from a read-only mapping; pointers into it
 * are not aligned in general, so conversions go through an aligned copy when they are not. */
#include "ckpt/safetensors_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* In the order of the reference implementation's Dtype enum (its `rank`). */
static const an_st_dtype dtypes[] = {
    {"BOOL", 8, 0, -1},        {"F4", 4, 1, -1},          {"F6_E2M3", 6, 2, -1},     {"F6_E3M2", 6, 3, -1},
    {"U8", 8, 4, AN_U8},       {"I8", 8, 5, -1},          {"F8_E5M2", 8, 6, -1},     {"F8_E4M3", 8, 7, -1},
    {"F8_E8M0", 8, 8, -1},     {"I16", 16, 9, -1},        {"U16", 16, 10, -1},       {"F16", 16, 11, AN_F16},
    {"BF16", 16, 12, AN_BF16}, {"I32", 32, 13, AN_I32},   {"U32", 32, 14, -1},       {"F32", 32, 15, AN_F32},
    {"C64", 64, 16, -1},       {"F64", 64, 17, AN_F64},   {"I64", 64, 18, AN_I64},   {"U64", 64, 19, -1},
};
#define N_DTYPES ((int)(sizeof dtypes / sizeof *dtypes))

const an_st_dtype *an_st_dtype_find(const char *name) {
    for (int i = 0; i < N_DTYPES; i++)
        if (strcmp(dtypes[i].name, name) == 0) return &dtypes[i];
    return NULL;
}

const an_st_dtype *an_st_dtype_of(an_dtype dtype) {
    for (int i = 0; i < N_DTYPES; i++)
        if (dtypes[i].an == (int)dtype) return &dtypes[i];
    return NULL;
}

const char *an_st_dtype_list(void) {
    return "BOOL, F4, F6_E2M3, F6_E3M2, U8, I8, F8_E5M2, F8_E4M3, F8_E8M0, I16, U16, F16, BF16, I32, U32, F32, "
           "C64, F64, I64, U64";
}

/* "[2, 3]" into buf (truncated when long). */
static const char *shape_str(const int64_t *shape, int ndim, char *buf, size_t size) {
    size_t n = (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < ndim && n < size; i++)
        n += (size_t)snprintf(buf + n, size - n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (n < size) snprintf(buf + n, size - n, "]");
    return buf;
}

static an_status grow_tensors(an_ctx *ctx, an_safetensors *st, int64_t need) {
    if (need <= st->cap) return AN_OK;
    int64_t cap = st->cap ? st->cap * 2 : 16;
    while (cap < need) cap *= 2;
    an_safetensors_tensor *t = realloc(st->tensors, (size_t)cap * sizeof *t);
    AN_CHECK(ctx, t != NULL, AN_ERR_INTERNAL, "out of host memory");
    st->tensors = t;
    st->cap = cap;
    return AN_OK;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* "__metadata__": an object of strings, kept with keys in byte order. */
static an_status read_metadata(an_ctx *ctx, an_st_file *f, json_t *meta) {
    AN_CHECK(ctx, json_is_object(meta), AN_ERR_INPUT, "%s: \"__metadata__\" is not an object (expected string keys "
             "and string values)", f->path);
    size_t n = json_object_size(meta);
    const char **keys = malloc((n ? n : 1) * sizeof *keys);
    AN_CHECK(ctx, keys != NULL, AN_ERR_INTERNAL, "out of host memory");
    const char *key;
    json_t *value;
    size_t k = 0;
    json_object_foreach(meta, key, value) {
        if (!json_is_string(value)) {
            free(keys);
            AN_CHECK(ctx, 0, AN_ERR_INPUT, "%s: \"__metadata__\".\"%s\" is not a string (metadata values must be "
                     "strings)", f->path, key);
        }
        keys[k++] = key;
    }
    qsort(keys, n, sizeof *keys, cmp_str);
    f->meta_keys = calloc(n ? n : 1, sizeof *f->meta_keys);
    f->meta_values = calloc(n ? n : 1, sizeof *f->meta_values);
    bool ok = f->meta_keys && f->meta_values;
    for (size_t i = 0; ok && i < n; i++) {
        f->meta_keys[i] = strdup(keys[i]);
        f->meta_values[i] = strdup(json_string_value(json_object_get(meta, keys[i])));
        f->n_meta = (int)i + 1;
        ok = f->meta_keys[i] && f->meta_values[i];
    }
    free(keys);
    AN_CHECK(ctx, ok, AN_ERR_INTERNAL, "out of host memory");
    return AN_OK;
}

/* A non-negative JSON integer, or false. */
static bool get_count(json_t *j, uint64_t *out) {
    if (!json_is_integer(j) || json_integer_value(j) < 0) return false;
    *out = (uint64_t)json_integer_value(j);
    return true;
}

/* Validates one header entry and fills t (whose name is set). `data` starts the data section of
 * `data_len` bytes. */
static an_status read_entry(an_ctx *ctx, const char *file, json_t *v, const unsigned char *data, uint64_t data_len,
                            an_safetensors_tensor *t) {
    const char *name = t->name;
    AN_CHECK(ctx, json_is_object(v), AN_ERR_INPUT, "%s: tensor '%s': expected an object with \"dtype\", \"shape\" and "
             "\"data_offsets\"", file, name);

    json_t *jd = json_object_get(v, "dtype");
    AN_CHECK(ctx, jd != NULL, AN_ERR_INPUT, "%s: tensor '%s': \"dtype\" is missing (expected a string such as \"BF16\")",
             file, name);
    AN_CHECK(ctx, json_is_string(jd), AN_ERR_INPUT, "%s: tensor '%s': \"dtype\" is not a string (expected one of %s)",
             file, name, an_st_dtype_list());
    const an_st_dtype *dt = an_st_dtype_find(json_string_value(jd));
    AN_CHECK(ctx, dt != NULL, AN_ERR_INPUT, "%s: tensor '%s': unknown \"dtype\" \"%s\" (expected one of %s)", file, name,
             json_string_value(jd), an_st_dtype_list());
    t->dtype_name = dt->name;
    t->has_dtype = dt->an >= 0;
    t->dtype = dt->an >= 0 ? (an_dtype)dt->an : AN_U8;

    json_t *js = json_object_get(v, "shape");
    AN_CHECK(ctx, js != NULL, AN_ERR_INPUT, "%s: tensor '%s': \"shape\" is missing (expected an array of non-negative "
             "integers)", file, name);
    AN_CHECK(ctx, json_is_array(js), AN_ERR_INPUT, "%s: tensor '%s': \"shape\" is not an array (expected an array of "
             "non-negative integers)", file, name);
    size_t ndim = json_array_size(js);
    AN_CHECK(ctx, ndim <= 1024, AN_ERR_INPUT, "%s: tensor '%s': \"shape\" has %zu dims (at most 1024)", file, name, ndim);
    int64_t *shape = malloc((ndim ? ndim : 1) * sizeof *shape);
    AN_CHECK(ctx, shape != NULL, AN_ERR_INTERNAL, "out of host memory");
    t->shape = shape;
    t->ndim = (int)ndim;
    uint64_t numel = 1;
    bool overflow = false;
    for (size_t i = 0; i < ndim; i++) {
        json_t *d = json_array_get(js, i);
        uint64_t dim;
        AN_CHECK(ctx, get_count(d, &dim), AN_ERR_INPUT, "%s: tensor '%s': \"shape\"[%zu] is %s%lld (expected a "
                 "non-negative integer)", file, name, i, json_is_integer(d) ? "" : "not an integer, ",
                 json_is_integer(d) ? (long long)json_integer_value(d) : 0LL);
        shape[i] = (int64_t)dim;
        overflow |= __builtin_mul_overflow(numel, dim, &numel);
    }
    uint64_t bits = 0;
    overflow |= numel > INT64_MAX || __builtin_mul_overflow(numel, (uint64_t)dt->bits, &bits);
    char sbuf[128];
    AN_CHECK(ctx, !overflow, AN_ERR_INPUT, "%s: tensor '%s': \"shape\" %s has more elements than any file can hold",
             file, name, shape_str(shape, t->ndim, sbuf, sizeof sbuf));
    AN_CHECK(ctx, bits % 8 == 0, AN_ERR_INPUT, "%s: tensor '%s': \"shape\" %s of %s is %llu bits, not a whole number "
             "of bytes", file, name, shape_str(shape, t->ndim, sbuf, sizeof sbuf), dt->name, (unsigned long long)bits);
    t->numel = (int64_t)numel;

    json_t *jo = json_object_get(v, "data_offsets");
    AN_CHECK(ctx, jo != NULL, AN_ERR_INPUT, "%s: tensor '%s': \"data_offsets\" is missing (expected [begin, end])", file,
             name);
    uint64_t begin, end;
    AN_CHECK(ctx, json_is_array(jo) && json_array_size(jo) == 2 && get_count(json_array_get(jo, 0), &begin) &&
             get_count(json_array_get(jo, 1), &end), AN_ERR_INPUT, "%s: tensor '%s': \"data_offsets\" is not "
             "[begin, end] (expected two non-negative integers)", file, name);
    AN_CHECK(ctx, begin <= end, AN_ERR_INPUT, "%s: tensor '%s': \"data_offsets\" [%llu, %llu] end before they begin",
             file, name, (unsigned long long)begin, (unsigned long long)end);
    AN_CHECK(ctx, end - begin == bits / 8, AN_ERR_INPUT, "%s: tensor '%s': \"shape\" %s of %s is %llu bytes, but "
             "\"data_offsets\" [%llu, %llu] span %llu bytes", file, name, shape_str(shape, t->ndim, sbuf, sizeof sbuf),
             dt->name, (unsigned long long)(bits / 8), (unsigned long long)begin, (unsigned long long)end,
             (unsigned long long)(end - begin));
    AN_CHECK(ctx, end <= data_len, AN_ERR_INPUT, "%s: tensor '%s': \"data_offsets\" [%llu, %llu] run past the end of "
             "the data section (%llu bytes; truncated file?)", file, name, (unsigned long long)begin,
             (unsigned long long)end, (unsigned long long)data_len);
    t->data = data + begin;
    t->nbytes = (size_t)(end - begin);
    return AN_OK;
}

static int cmp_by_offset(const void *a, const void *b) {
    const an_safetensors_tensor *x = *(an_safetensors_tensor *const *)a, *y = *(an_safetensors_tensor *const *)b;
    const unsigned char *xd = x->data, *yd = y->data;
    if (xd != yd) return xd < yd ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

/* The tensors [first, st->n) of one file must cover its data section [data, data + data_len) in
 * order, each byte once. */
static an_status check_coverage(an_ctx *ctx, an_safetensors *st, int64_t first, const char *file,
                                const unsigned char *data, uint64_t data_len) {
    int64_t n = st->n - first;
    an_safetensors_tensor **order = malloc((size_t)(n ? n : 1) * sizeof *order);
    AN_CHECK(ctx, order != NULL, AN_ERR_INTERNAL, "out of host memory");
    for (int64_t i = 0; i < n; i++) order[i] = &st->tensors[first + i];
    qsort(order, (size_t)n, sizeof *order, cmp_by_offset);
    uint64_t covered = 0;
    const an_safetensors_tensor *prev = NULL;
    an_status rc = AN_OK;
    for (int64_t i = 0; i < n && rc == AN_OK; i++) {
        const an_safetensors_tensor *t = order[i];
        uint64_t begin = (uint64_t)((const unsigned char *)t->data - data), end = begin + t->nbytes;
        if (begin < covered) {
            uint64_t pbegin = (uint64_t)((const unsigned char *)prev->data - data);
            rc = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s: tensors '%s' (\"data_offsets\" [%llu, %llu]) "
                              "and '%s' ([%llu, %llu]) overlap (each byte of the data section belongs to one tensor)",
                              file, prev->name, (unsigned long long)pbegin, (unsigned long long)(pbegin + prev->nbytes),
                              t->name, (unsigned long long)begin, (unsigned long long)end);
        } else if (begin > covered) {
            rc = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s: bytes [%llu, %llu) of the data section belong "
                              "to no tensor (tensor '%s' has \"data_offsets\" [%llu, %llu]; expected the tensors to "
                              "cover the data section contiguously)", file, (unsigned long long)covered,
                              (unsigned long long)begin, t->name, (unsigned long long)begin, (unsigned long long)end);
        }
        covered = end;
        prev = t;
    }
    free(order);
    AN_TRY(rc);
    AN_CHECK(ctx, covered == data_len, AN_ERR_INPUT, "%s: bytes [%llu, %llu) at the end of the data section belong to "
             "no tensor (expected the tensors to cover the data section exactly)", file, (unsigned long long)covered,
             (unsigned long long)data_len);
    return AN_OK;
}

/* Parses and validates file f (already in st->files) and appends its tensors to st. */
static an_status read_file(an_ctx *ctx, an_safetensors *st, an_st_file *f) {
    const char *file = f->path;
    AN_CHECK(ctx, f->size >= 8, AN_ERR_INPUT, "%s: file of %zu bytes is shorter than the 8-byte header length "
             "(truncated file?)", file, f->size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | f->base[i];
    AN_CHECK(ctx, hlen <= AN_SAFETENSORS_MAX_HEADER, AN_ERR_INPUT, "%s: header length %llu is above the limit of %llu "
             "bytes (not a safetensors file?)", file, (unsigned long long)hlen, AN_SAFETENSORS_MAX_HEADER);
    AN_CHECK(ctx, hlen <= f->size - 8, AN_ERR_INPUT, "%s: header length %llu runs past the end of the file (%zu "
             "bytes; truncated file?)", file, (unsigned long long)hlen, f->size);

    json_error_t jerr;
    json_t *root = json_loadb((const char *)f->base + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        bool dup = strncmp(jerr.text, "duplicate object key", 20) == 0;
        AN_CHECK(ctx, 0, AN_ERR_INPUT, "%s: header is not valid JSON: %s (byte %d of the header)%s", file, jerr.text,
                 jerr.position, dup ? "; each tensor name may appear once" : "");
    }
    if (!json_is_object(root)) {
        json_decref(root);
        AN_CHECK(ctx, 0, AN_ERR_INPUT, "%s: header is not a JSON object (expected {\"<tensor name>\": {...}, ...})", file);
    }
    const unsigned char *data = f->base + 8 + hlen;
    uint64_t data_len = f->size - 8 - hlen;
    int64_t first = st->n;
    an_status rc = grow_tensors(ctx, st, st->n + (int64_t)json_object_size(root));
    const char *key;
    json_t *value;
    json_object_foreach(root, key, value) {
        if (rc != AN_OK) break;
        if (strcmp(key, "__metadata__") == 0) {
            rc = read_metadata(ctx, f, value);
            continue;
        }
        an_safetensors_tensor *t = &st->tensors[st->n];
        memset(t, 0, sizeof *t);
        t->file = f->path;
        t->name = strdup(key);
        if (!t->name) {
            rc = an_error_set(ctx, AN_ERR_INTERNAL, __FILE__, __LINE__, "out of host memory");
            break;
        }
        st->n++; /* owned from here: close frees its name and shape */
        rc = read_entry(ctx, file, value, data, data_len, t);
    }
    json_decref(root);
    AN_TRY(rc);
    return check_coverage(ctx, st, first, file, data, data_len);
}

static an_status add_file(an_ctx *ctx, an_safetensors *st, const char *path, const void *base, size_t size,
                          bool mapped) {
    an_st_file *files = realloc(st->files, (size_t)(st->n_files + 1) * sizeof *files);
    if (!files && mapped && size) munmap((void *)base, size);
    AN_CHECK(ctx, files != NULL, AN_ERR_INTERNAL, "out of host memory");
    st->files = files;
    an_st_file *f = &files[st->n_files];
    memset(f, 0, sizeof *f);
    f->path = strdup(path);
    f->base = base;
    f->size = size;
    f->mapped = mapped;
    st->n_files++;
    AN_CHECK(ctx, f->path != NULL, AN_ERR_INTERNAL, "out of host memory");
    return read_file(ctx, st, f);
}

an_status an_st_add_file(an_ctx *ctx, an_safetensors *st, const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    AN_CHECK(ctx, fd >= 0, AN_ERR_INPUT, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int err = errno;
        close(fd);
        AN_CHECK(ctx, 0, AN_ERR_INPUT, "%s: cannot stat: %s", path, strerror(err));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        AN_CHECK(ctx, 0, AN_ERR_INPUT, "%s: %s", path, S_ISDIR(sb.st_mode) ? "is a directory, not a safetensors file"
                 : "is not a regular file");
    }
    size_t size = (size_t)sb.st_size;
    void *base = NULL;
    if (size > 0) {
        base = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (base == MAP_FAILED) {
            int err = errno;
            close(fd);
            AN_CHECK(ctx, 0, AN_ERR_INPUT, "%s: cannot map %zu bytes: %s", path, size, strerror(err));
        }
    }
    close(fd); /* the mapping stays valid */
    return add_file(ctx, st, path, base, size, size > 0);
}

static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp(((const an_safetensors_tensor *)a)->name, ((const an_safetensors_tensor *)b)->name);
}

an_status an_st_finish(an_ctx *ctx, an_safetensors *st) {
    if (st->n > 1) qsort(st->tensors, (size_t)st->n, sizeof *st->tensors, cmp_tensor_name);
    for (int64_t i = 1; i < st->n; i++)
        AN_CHECK(ctx, strcmp(st->tensors[i - 1].name, st->tensors[i].name) != 0, AN_ERR_INPUT,
                 "%s: tensor '%s' is in both %s and %s (each tensor must be in one shard)", st->label,
                 st->tensors[i].name, st->tensors[i - 1].file, st->tensors[i].file);
    return AN_OK;
}

an_safetensors *an_st_new(an_ctx *ctx, const char *label) {
    an_safetensors *st = calloc(1, sizeof *st);
    AN_CHECK_NULL(ctx, st != NULL, AN_ERR_INTERNAL, "out of host memory");
    st->label = strdup(label);
    if (!st->label) {
        free(st);
        AN_CHECK_NULL(ctx, 0, AN_ERR_INTERNAL, "out of host memory");
    }
    return st;
}

/* Hands st to *out on success, closes it on failure. */
static an_status settle(an_status rc, an_safetensors *st, an_safetensors **out) {
    if (rc != AN_OK) {
        an_safetensors_close(st);
        return rc;
    }
    *out = st;
    return AN_OK;
}

an_status an_safetensors_open(an_ctx *ctx, const char *path, an_safetensors **out) {
    an_safetensors *st = an_st_new(ctx, path);
    if (!st) return an_error_status(ctx);
    an_status rc = an_st_add_file(ctx, st, path);
    if (rc == AN_OK) rc = an_st_finish(ctx, st);
    return settle(rc, st, out);
}

an_status an_safetensors_open_buffer(an_ctx *ctx, const char *label, const void *data, size_t size,
                                     an_safetensors **out) {
    an_safetensors *st = an_st_new(ctx, label);
    if (!st) return an_error_status(ctx);
    an_status rc = add_file(ctx, st, label, data, size, false);
    if (rc == AN_OK) rc = an_st_finish(ctx, st);
    return settle(rc, st, out);
}

void an_safetensors_close(an_safetensors *st) {
    if (!st) return;
    for (int64_t i = 0; i < st->n; i++) {
        free((char *)st->tensors[i].name);
        free((int64_t *)st->tensors[i].shape);
    }
    free(st->tensors);
    for (int i = 0; i < st->n_files; i++) {
        an_st_file *f = &st->files[i];
        if (f->mapped) munmap((void *)f->base, f->size);
        for (int k = 0; k < f->n_meta; k++) {
            free(f->meta_keys[k]);
            free(f->meta_values[k]);
        }
        free(f->meta_keys);
        free(f->meta_values);
        free(f->path);
    }
    free(st->files);
    free(st->label);
    free(st);
}

int64_t an_safetensors_count(const an_safetensors *st) { return st->n; }

const an_safetensors_tensor *an_safetensors_at(const an_safetensors *st, int64_t i) {
    return i >= 0 && i < st->n ? &st->tensors[i] : NULL;
}

const char *an_safetensors_name(const an_safetensors *st, int64_t i) {
    return i >= 0 && i < st->n ? st->tensors[i].name : NULL;
}

const an_safetensors_tensor *an_safetensors_find(const an_safetensors *st, const char *name) {
    an_safetensors_tensor key = {.name = name};
    return bsearch(&key, st->tensors, (size_t)st->n, sizeof *st->tensors, cmp_tensor_name);
}

int an_safetensors_metadata_count(const an_safetensors *st) { return st->n_files ? st->files[0].n_meta : 0; }

void an_safetensors_metadata_at(const an_safetensors *st, int i, const char **key, const char **value) {
    *key = st->files[0].meta_keys[i];
    *value = st->files[0].meta_values[i];
}

const char *an_safetensors_metadata(const an_safetensors *st, const char *key) {
    if (!st->n_files || !st->files[0].n_meta) return NULL;
    const an_st_file *f = &st->files[0];
    char **hit = bsearch(&key, f->meta_keys, (size_t)f->n_meta, sizeof *f->meta_keys, cmp_str);
    return hit ? f->meta_values[hit - f->meta_keys] : NULL;
}

/* The tensor `name` if anneal can hold it as an an_tensor, else an error naming why. */
static const an_safetensors_tensor *loadable(an_ctx *ctx, const an_safetensors *st, const char *name) {
    const an_safetensors_tensor *t = an_safetensors_find(st, name);
    AN_CHECK_NULL(ctx, t != NULL, AN_ERR_INPUT, "%s: no tensor named '%s'", st->label, name);
    AN_CHECK_NULL(ctx, t->has_dtype, AN_ERR_INPUT, "%s: tensor '%s' has dtype %s, which anneal has no tensor type for "
                  "(expected F32, F64, BF16, F16, I32, I64 or U8; its raw bytes are readable through "
                  "an_safetensors_find)", t->file, name, t->dtype_name);
    AN_CHECK_NULL(ctx, t->ndim <= AN_MAX_DIMS, AN_ERR_INPUT, "%s: tensor '%s' has %d dims (anneal tensors have at most "
                  "%d)", t->file, name, t->ndim, AN_MAX_DIMS);
    return t;
}

/* Copies t's bytes, converted, into dst (same numel). The source is wrapped in a borrowed tensor
 * struct that never enters the allocator or the live-tensor count; misaligned data is copied to an
 * aligned buffer first. */
static an_status convert_into(an_ctx *ctx, const an_safetensors_tensor *t, an_tensor *dst) {
    size_t esize = an_dtype_size(t->dtype);
    const void *src = t->data;
    void *aligned = NULL;
    if ((uintptr_t)src % esize != 0) {
        aligned = malloc(t->nbytes ? t->nbytes : 1);
        AN_CHECK(ctx, aligned != NULL, AN_ERR_INTERNAL, "out of host memory");
        memcpy(aligned, src, t->nbytes);
        src = aligned;
    }
    an_storage storage = {.data = (void *)src, .nbytes = t->nbytes, .device = AN_CPU, .refcount = 1, .ctx = ctx};
    an_tensor view = {.dtype = t->dtype, .device = AN_CPU, .ndim = 1, .shape = {t->numel}, .storage = &storage,
                      .refcount = 1, .ctx = ctx};
    an_status rc = an_tensor_copy_into(ctx, dst, &view); /* reads view only */
    free(aligned);
    return rc;
}

an_status an_safetensors_load_into(an_ctx *ctx, const an_safetensors *st, const char *name, an_tensor *dst) {
    const an_safetensors_tensor *t = loadable(ctx, st, name);
    if (!t) return an_error_status(ctx);
    bool same = dst->ndim == t->ndim;
    for (int i = 0; same && i < t->ndim; i++) same = dst->shape[i] == t->shape[i];
    char want[128], got[128];
    AN_CHECK(ctx, same, AN_ERR_INPUT, "%s: tensor '%s' has shape %s, expected %s", t->file, name,
             shape_str(t->shape, t->ndim, got, sizeof got), shape_str(dst->shape, dst->ndim, want, sizeof want));
    return convert_into(ctx, t, dst);
}

an_tensor *an_safetensors_load(an_ctx *ctx, const an_safetensors *st, const char *name, an_dtype want,
                               an_device device) {
    const an_safetensors_tensor *t = loadable(ctx, st, name);
    if (!t) return NULL;
    an_tensor *out = an_tensor_new(ctx, want, device, t->ndim, t->shape);
    if (out && convert_into(ctx, t, out) != AN_OK) {
        an_tensor_release(out);
        return NULL;
    }
    return out;
}
