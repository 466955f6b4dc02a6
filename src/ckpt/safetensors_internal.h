/* safetensors_internal.h — what the safetensors reader, directory loader and writer share: the
 * dtype table and the layout of an_safetensors. Not part of the public interface. */
#ifndef AN_CKPT_SAFETENSORS_INTERNAL_H
#define AN_CKPT_SAFETENSORS_INTERNAL_H

#include "ckpt/safetensors.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the safetensors reader and writer assume a little-endian host"
#endif

/* A safetensors dtype. `rank` is its position in the reference implementation's Dtype enum, which
 * orders the data section (highest rank first); `bits` may be below 8 (F4, F6), in which case a
 * tensor's numel * bits must be a whole number of bytes. */
typedef struct {
    const char *name;  /* "BF16" */
    int bits;
    int rank;
    int an;            /* an_dtype, or -1 when anneal has none */
} an_st_dtype;

/* The entry for `name`, or NULL when the format has no such dtype. */
const an_st_dtype *an_st_dtype_find(const char *name);
/* The safetensors dtype of an anneal dtype (every an_dtype has one). */
const an_st_dtype *an_st_dtype_of(an_dtype dtype);
/* Every dtype name, comma separated, for error messages. */
const char *an_st_dtype_list(void);

/* One mapped (or borrowed) file and its metadata, keys in byte order. */
typedef struct {
    char *path;
    const unsigned char *base;
    size_t size;
    bool mapped;              /* munmap on close (else the buffer is borrowed) */
    int n_meta;
    char **meta_keys;
    char **meta_values;
} an_st_file;

struct an_safetensors {
    char *label;                    /* the file or directory, for messages */
    int n_files;
    an_st_file *files;
    int64_t n, cap;
    an_safetensors_tensor *tensors; /* in byte order of name; name and shape are owned (malloc) */
};

/* An empty set labelled `label` (NULL with an error when out of memory); freed by an_safetensors_close. */
an_safetensors *an_st_new(an_ctx *ctx, const char *label);

/* Maps `path` and appends it to st->files, then appends its tensors (validated) to st->tensors,
 * unsorted. On failure st keeps what it had plus possibly the file, and an_safetensors_close frees it. */
an_status an_st_add_file(an_ctx *ctx, an_safetensors *st, const char *path);
/* Sorts st->tensors by name; a name seen twice is an error naming both files. */
an_status an_st_finish(an_ctx *ctx, an_safetensors *st);

#endif
