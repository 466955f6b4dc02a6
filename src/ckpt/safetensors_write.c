/* safetensors_write.c — writing safetensors files laid out byte for byte as the Python safetensors
 * library (its Rust core) lays them out, so files round-trip and diff cleanly against it:
 *   - tensors ordered by dtype, highest rank of the library's Dtype enum first (U64, I64, F64, C64,
 *     F32, U32, I32, BF16, F16, U16, I16, F8_*, I8, U8, F6_*, F4, BOOL), then by name in byte order;
 *     the header lists them in that order, with "__metadata__" first when there is any;
 *   - compact JSON, strings escaped as serde_json escapes them (\" \\ \b \f \n \r \t, other control
 *     bytes as \u00xx with lowercase hex; everything else, UTF-8 included, raw);
 *   - the JSON padded with spaces to a multiple of 8 bytes.
 * Metadata keys are written in byte order (the library's order comes from a hash map).
 *
 * Atomicity: everything is validated first; then PATH.tmp is written, fsynced and renamed over PATH,
 * and the directory is fsynced. On any failure PATH.tmp is removed and PATH is as it was. */
#include "ckpt/atomic.h"  /* an_atomic_open/write/commit */
#include "ckpt/safetensors_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/cuda.h" /* an_cuda_memcpy: staging CUDA tensors through host memory */

/* One tensor to write. */
typedef struct {
    const char *name;
    const an_st_dtype *dt;
    int ndim;
    const int64_t *shape;     /* ndim entries */
    size_t nbytes;
    const void *host;         /* the bytes, or NULL when they are on the GPU in `device_tensor` */
    const an_tensor *device_tensor;
} item;

/* A growing byte buffer; `failed` is set (and further appends dropped) when memory runs out. */
typedef struct {
    char *p;
    size_t len, cap;
    bool failed;
} buf;

static void put(buf *b, const char *s, size_t n) {
    if (b->failed) return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 4096;
        while (cap < b->len + n) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->failed = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void puts_(buf *b, const char *s) { put(b, s, strlen(s)); }

static void put_u64(buf *b, uint64_t v) {
    char s[24];
    put(b, s, (size_t)snprintf(s, sizeof s, "%llu", (unsigned long long)v));
}

/* A JSON string with serde_json's escapes. */
static void put_string(buf *b, const char *s) {
    static const char hex[] = "0123456789abcdef";
    put(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char e[7] = {'\\', 0};
        switch (*p) {
        case '"': e[1] = '"'; break;
        case '\\': e[1] = '\\'; break;
        case '\b': e[1] = 'b'; break;
        case '\f': e[1] = 'f'; break;
        case '\n': e[1] = 'n'; break;
        case '\r': e[1] = 'r'; break;
        case '\t': e[1] = 't'; break;
        default:
            if (*p < 0x20) {
                memcpy(e, (char[]){'\\', 'u', '0', '0', hex[*p >> 4], hex[*p & 15]}, 6);
                put(b, e, 6);
            } else {
                put(b, (const char *)p, 1);
            }
            continue;
        }
        put(b, e, 2);
    }
    put(b, "\"", 1);
}

/* Well-formed UTF-8 (no overlong forms, surrogates or code points above U+10FFFF), as JSON readers
 * (jansson, serde_json) require. */
static bool valid_utf8(const char *str) {
    const unsigned char *s = (const unsigned char *)str;
    while (*s) {
        unsigned c = *s;
        int n = c < 0x80 ? 0 : (c & 0xe0) == 0xc0 ? 1 : (c & 0xf0) == 0xe0 ? 2 : (c & 0xf8) == 0xf0 ? 3 : -1;
        if (n < 0) return false;
        uint32_t cp = n == 0 ? c : n == 1 ? (c & 0x1f) : n == 2 ? (c & 0x0f) : (c & 0x07);
        for (int i = 1; i <= n; i++) {
            if ((s[i] & 0xc0) != 0x80) return false;
            cp = cp << 6 | (s[i] & 0x3f);
        }
        static const uint32_t min[] = {0, 0x80, 0x800, 0x10000};
        if (cp < min[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
        s += n + 1;
    }
    return true;
}

static int cmp_item_name(const void *a, const void *b) {
    return strcmp(((const item *)a)->name, ((const item *)b)->name);
}

static int cmp_item_layout(const void *a, const void *b) {
    const item *x = a, *y = b;
    if (x->dt->rank != y->dt->rank) return y->dt->rank - x->dt->rank;
    return strcmp(x->name, y->name);
}

static int cmp_meta(const void *a, const void *b) {
    return strcmp(((const an_safetensors_meta *)a)->key, ((const an_safetensors_meta *)b)->key);
}

/* Checks names and metadata, sorts items into file order and metadata by key (in place). */
static an_status validate(an_ctx *ctx, const char *path, item *items, int n, an_safetensors_meta *meta, int n_meta) {
    for (int i = 0; i < n; i++) {
        AN_CHECK(ctx, valid_utf8(items[i].name), AN_ERR_INPUT, "%s: tensor name '%s' is not valid UTF-8", path,
                 items[i].name);
        AN_CHECK(ctx, strcmp(items[i].name, "__metadata__") != 0, AN_ERR_INPUT, "%s: \"__metadata__\" cannot name a "
                 "tensor (it is the header's metadata key)", path);
    }
    if (n > 1) qsort(items, (size_t)n, sizeof *items, cmp_item_name);
    for (int i = 1; i < n; i++)
        AN_CHECK(ctx, strcmp(items[i - 1].name, items[i].name) != 0, AN_ERR_INPUT, "%s: tensor name '%s' is given "
                 "twice (names must be distinct)", path, items[i].name);
    if (n > 1) qsort(items, (size_t)n, sizeof *items, cmp_item_layout);
    for (int i = 0; i < n_meta; i++) {
        AN_CHECK(ctx, meta[i].key && meta[i].value, AN_ERR_INPUT, "%s: metadata entry %d has a NULL key or value", path,
                 i);
        AN_CHECK(ctx, valid_utf8(meta[i].key) && valid_utf8(meta[i].value), AN_ERR_INPUT, "%s: metadata \"%s\" is not "
                 "valid UTF-8", path, meta[i].key);
    }
    if (n_meta > 1) qsort(meta, (size_t)n_meta, sizeof *meta, cmp_meta);
    for (int i = 1; i < n_meta; i++)
        AN_CHECK(ctx, strcmp(meta[i - 1].key, meta[i].key) != 0, AN_ERR_INPUT, "%s: metadata key \"%s\" is given "
                 "twice", path, meta[i].key);
    return AN_OK;
}

/* The header: JSON padded with spaces to a multiple of 8, preceded by its length. */
static an_status build_header(an_ctx *ctx, buf *b, const item *items, int n, const an_safetensors_meta *meta,
                              int n_meta) {
    put(b, "\0\0\0\0\0\0\0\0", 8);
    puts_(b, "{");
    if (n_meta > 0) {
        puts_(b, "\"__metadata__\":{");
        for (int i = 0; i < n_meta; i++) {
            if (i) puts_(b, ",");
            put_string(b, meta[i].key);
            puts_(b, ":");
            put_string(b, meta[i].value);
        }
        puts_(b, "}");
    }
    uint64_t offset = 0;
    for (int i = 0; i < n; i++) {
        if (i || n_meta > 0) puts_(b, ",");
        put_string(b, items[i].name);
        puts_(b, ":{\"dtype\":");
        put_string(b, items[i].dt->name);
        puts_(b, ",\"shape\":[");
        for (int d = 0; d < items[i].ndim; d++) {
            if (d) puts_(b, ",");
            put_u64(b, (uint64_t)items[i].shape[d]);
        }
        puts_(b, "],\"data_offsets\":[");
        put_u64(b, offset);
        puts_(b, ",");
        offset += items[i].nbytes;
        put_u64(b, offset);
        puts_(b, "]}");
    }
    puts_(b, "}");
    while ((b->len - 8) % 8) puts_(b, " ");
    AN_CHECK(ctx, !b->failed, AN_ERR_INTERNAL, "out of host memory");
    uint64_t hlen = b->len - 8;
    for (int i = 0; i < 8; i++) b->p[i] = (char)(hlen >> (8 * i) & 0xff);
    return AN_OK;
}

/* Header then data. */
static an_status write_body(an_ctx *ctx, an_atomic_file *f, const buf *header, const item *items, int n) {
    AN_TRY(an_atomic_write(ctx, f, header->p, header->len));
    size_t stage_size = 0;
    for (int i = 0; i < n; i++)
        if (!items[i].host && items[i].nbytes > stage_size) stage_size = items[i].nbytes;
    void *stage = NULL;
    if (stage_size) {
        stage = malloc(stage_size);
        AN_CHECK(ctx, stage != NULL, AN_ERR_INTERNAL, "out of host memory (%zu bytes to stage a GPU tensor)", stage_size);
    }
    an_status rc = AN_OK;
    for (int i = 0; i < n && rc == AN_OK; i++) {
        const void *src = items[i].host;
        if (!src && items[i].nbytes) {
            rc = an_cuda_memcpy(ctx, stage, AN_CPU, an_tensor_data(items[i].device_tensor), AN_CUDA, items[i].nbytes);
            src = stage;
        }
        if (rc == AN_OK) rc = an_atomic_write(ctx, f, src, items[i].nbytes);
    }
    free(stage);
    return rc;
}

static an_status write_items(an_ctx *ctx, const char *path, item *items, int n, int n_meta,
                             const an_safetensors_meta *metadata) {
    AN_CHECK(ctx, n >= 0 && n_meta >= 0, AN_ERR_INPUT, "%s: negative tensor or metadata count", path);
    AN_CHECK(ctx, n_meta == 0 || metadata != NULL, AN_ERR_INPUT, "%s: %d metadata entries but no array", path, n_meta);
    an_safetensors_meta *meta = malloc((size_t)(n_meta ? n_meta : 1) * sizeof *meta);
    AN_CHECK(ctx, meta != NULL, AN_ERR_INTERNAL, "out of host memory");
    if (n_meta) memcpy(meta, metadata, (size_t)n_meta * sizeof *meta);
    buf header = {0};
    an_status rc = validate(ctx, path, items, n, meta, n_meta);
    if (rc == AN_OK) rc = build_header(ctx, &header, items, n, meta, n_meta);
    free(meta);
    an_atomic_file f;
    if (rc == AN_OK) rc = an_atomic_open(ctx, path, &f);
    if (rc == AN_OK) {
        rc = write_body(ctx, &f, &header, items, n);
        if (rc == AN_OK) rc = an_atomic_commit(ctx, &f);
        else an_atomic_abort(&f);
    }
    free(header.p);
    return rc;
}

an_status an_safetensors_write(an_ctx *ctx, const char *path, int n, const char *const *names,
                               an_tensor *const *tensors, int n_metadata, const an_safetensors_meta *metadata) {
    AN_CHECK(ctx, n >= 0 && (n == 0 || (names && tensors)), AN_ERR_INPUT, "%s: %d tensors but no names or tensors",
             path, n);
    item *items = calloc((size_t)(n ? n : 1), sizeof *items);
    AN_CHECK(ctx, items != NULL, AN_ERR_INTERNAL, "out of host memory");
    an_status rc = AN_OK;
    for (int i = 0; i < n && rc == AN_OK; i++) {
        const an_tensor *t = tensors[i];
        if (!names[i] || !t) {
            rc = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s: tensor %d has a NULL %s", path, i,
                              names[i] ? "tensor" : "name");
            break;
        }
        items[i] = (item){.name = names[i], .dt = an_st_dtype_of(t->dtype), .ndim = t->ndim, .shape = t->shape,
                          .nbytes = an_tensor_nbytes(t), .host = t->device == AN_CPU ? an_tensor_data(t) : NULL,
                          .device_tensor = t};
    }
    if (rc == AN_OK) rc = write_items(ctx, path, items, n, n_metadata, metadata);
    free(items);
    return rc;
}

an_status an_safetensors_write_raw(an_ctx *ctx, const char *path, int n, const an_safetensors_tensor *tensors,
                                   int n_metadata, const an_safetensors_meta *metadata) {
    AN_CHECK(ctx, n >= 0 && (n == 0 || tensors), AN_ERR_INPUT, "%s: %d tensors but no array", path, n);
    item *items = calloc((size_t)(n ? n : 1), sizeof *items);
    AN_CHECK(ctx, items != NULL, AN_ERR_INTERNAL, "out of host memory");
    an_status rc = AN_OK;
    for (int i = 0; i < n && rc == AN_OK; i++) {
        const an_safetensors_tensor *t = &tensors[i];
        const char *name = t->name ? t->name : "(null)";
        const an_st_dtype *dt = t->dtype_name ? an_st_dtype_find(t->dtype_name) : NULL;
        uint64_t numel = 1, bits = 0;
        bool bad_shape = !t->name || t->ndim < 0 || (t->ndim > 0 && !t->shape);
        for (int d = 0; !bad_shape && d < t->ndim; d++)
            bad_shape = t->shape[d] < 0 || __builtin_mul_overflow(numel, (uint64_t)t->shape[d], &numel);
        if (!bad_shape && dt) bad_shape = __builtin_mul_overflow(numel, (uint64_t)dt->bits, &bits);
        if (!dt)
            rc = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s: tensor '%s': unknown dtype \"%s\" (expected "
                              "one of %s)", path, name, t->dtype_name ? t->dtype_name : "(null)", an_st_dtype_list());
        else if (bad_shape)
            rc = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s: tensor '%s': no name, or a shape with a "
                              "negative or overflowing dim", path, name);
        else if (bits % 8 != 0 || bits / 8 != t->nbytes || (t->nbytes && !t->data))
            rc = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s: tensor '%s': its shape of %s needs %llu bits "
                              "but %zu bytes are given%s", path, name, dt->name, (unsigned long long)bits, t->nbytes,
                              t->data ? "" : " (and no data)");
        items[i] = (item){.name = t->name, .dt = dt, .ndim = t->ndim, .shape = t->shape, .nbytes = t->nbytes,
                          .host = t->data ? t->data : ""};
    }
    if (rc == AN_OK) rc = write_items(ctx, path, items, n, n_metadata, metadata);
    free(items);
    return rc;
}
