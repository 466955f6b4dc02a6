/* safetensors.h — read and write safetensors files, the Hugging Face checkpoint format, and open
 * whole model directories (one model.safetensors, or shards listed in model.safetensors.index.json).
 *
 * The format: an 8-byte little-endian header length N, N bytes of JSON
 *   {"__metadata__": {"key": "value", ...},                       (optional, strings only)
 *    "<name>": {"dtype": "BF16", "shape": [d0, ...], "data_offsets": [begin, end]}, ...}
 * padded with spaces, then the data section. Offsets count from the start of the data section, and
 * the tensors cover it exactly, in order, without gaps or overlaps. Values are little-endian.
 *
 * Reading is strict: every header that lies (sizes, offsets, dtypes, duplicate names) is an
 * AN_ERR_INPUT error naming the file, the tensor or field, and what was expected.
 *
 * Ownership: an_safetensors maps its files read-only and owns everything it hands out (names,
 * shapes, data pointers), which stay valid until an_safetensors_close. an_safetensors_load returns
 * a new tensor the caller releases. Writes are atomic: PATH.tmp is written, fsynced and renamed, so
 * a failed write leaves nothing at PATH (and an older file there untouched). */
#ifndef AN_CKPT_SAFETENSORS_H
#define AN_CKPT_SAFETENSORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "autograd/tensor.h"  /* an_tensor, an_dtype, an_device, an_ctx, an_status */

/* The header may be at most this many bytes (the limit of the reference implementation). */
#define AN_SAFETENSORS_MAX_HEADER 100000000ull

typedef struct an_safetensors an_safetensors;

/* One tensor as the file describes it. Every safetensors dtype is listed and readable as raw bytes;
 * has_dtype says whether it is one anneal computes with (F32 F64 BF16 F16 I32 I64 U8). */
typedef struct {
    const char *name;        /* Hugging Face name, e.g. "model.layers.0.self_attn.q_proj.weight" */
    const char *dtype_name;  /* as in the file: "F32", "BF16", "I8", "BOOL", "F8_E4M3", ... */
    bool has_dtype;          /* false for I8, BOOL, U16, F8_*, ...: an_safetensors_load refuses them */
    an_dtype dtype;          /* valid when has_dtype */
    int ndim;                /* any rank; anneal tensors take at most AN_MAX_DIMS */
    const int64_t *shape;    /* ndim entries */
    int64_t numel;
    const void *data;        /* nbytes raw little-endian bytes; NOT necessarily aligned to the element size */
    size_t nbytes;
    const char *file;        /* the file it lives in (a shard's path for a directory) */
} an_safetensors_tensor;

/* Opens one file (mmap, read-only) and validates its whole header. */
an_status an_safetensors_open(an_ctx *ctx, const char *path, an_safetensors **out);
/* The same on bytes in memory, borrowed: `data` must outlive the result. `label` names it in errors. */
an_status an_safetensors_open_buffer(an_ctx *ctx, const char *label, const void *data, size_t size,
                                     an_safetensors **out);
/* Opens a model directory: the shards named by model.safetensors.index.json ("weight_map": tensor
 * name -> shard file) when that file exists, else model.safetensors. Each shard is opened once, and
 * the index and the shards must agree exactly: no shard missing, no tensor the index lists but its
 * shard lacks, no shard tensor the index does not list, no tensor in two shards. */
an_status an_safetensors_dir_open(an_ctx *ctx, const char *model_dir, an_safetensors **out);
void an_safetensors_close(an_safetensors *st); /* NULL is fine */

/* Tensors in byte order of their names (across all shards). */
int64_t an_safetensors_count(const an_safetensors *st);
const an_safetensors_tensor *an_safetensors_at(const an_safetensors *st, int64_t i);
const char *an_safetensors_name(const an_safetensors *st, int64_t i);
/* NULL when there is no such tensor (no error is recorded: callers probe optional tensors). */
const an_safetensors_tensor *an_safetensors_find(const an_safetensors *st, const char *name);

/* "__metadata__" of the file (of the first shard, by file name, for a directory); NULL when absent.
 * Entries are in byte order of their keys. */
const char *an_safetensors_metadata(const an_safetensors *st, const char *key);
int an_safetensors_metadata_count(const an_safetensors *st);
void an_safetensors_metadata_at(const an_safetensors *st, int i, const char **key, const char **value);

/* A new tensor with tensor `name`'s values converted to `want` on `device` (BF16 -> f32 and the
 * like; integers convert through double). AN_ERR_INPUT naming the file and tensor when it is
 * absent, has a dtype anneal has no an_dtype for, or has more than AN_MAX_DIMS dims. */
an_tensor *an_safetensors_load(an_ctx *ctx, const an_safetensors *st, const char *name, an_dtype want,
                               an_device device);
/* Converts tensor `name` into dst (any dtype and device), which must have exactly its shape. */
an_status an_safetensors_load_into(an_ctx *ctx, const an_safetensors *st, const char *name, an_tensor *dst);

typedef struct {
    const char *key;
    const char *value;
} an_safetensors_meta;

/* Writes tensors[i] (CPU or CUDA, any an_dtype) under names[i] to `path`, laid out byte for byte as
 * the Python safetensors library lays it out: tensors ordered by dtype (widest first, in the
 * library's dtype order) then by name, JSON compact with serde_json's escapes, padded with spaces to
 * a multiple of 8 bytes, so every tensor's data is aligned to its element size. Metadata keys are
 * written in byte order (the library's order is a hash map's). Names must be distinct, valid UTF-8
 * and not "__metadata__". transformers refuses files without metadata "format" = "pt". */
an_status an_safetensors_write(an_ctx *ctx, const char *path, int n, const char *const *names,
                               an_tensor *const *tensors, int n_metadata, const an_safetensors_meta *metadata);
/* The same from raw bytes of any safetensors dtype: uses name, dtype_name, ndim, shape, data and
 * nbytes of each entry (nbytes must match the shape), e.g. to copy tensors from one file to another. */
an_status an_safetensors_write_raw(an_ctx *ctx, const char *path, int n, const an_safetensors_tensor *tensors,
                                   int n_metadata, const an_safetensors_meta *metadata);

#endif
