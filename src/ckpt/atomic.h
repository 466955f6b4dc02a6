/* atomic.h — files that appear whole or not at all: written to PATH.tmp, fsynced, renamed over
 * PATH, and the directory fsynced. On failure PATH.tmp is removed and PATH is as it was. Disk
 * errors are AN_ERR_INPUT naming the path (a full disk or a read-only directory is the user's). */
#ifndef AN_CKPT_ATOMIC_H
#define AN_CKPT_ATOMIC_H

#include <stddef.h>

#include "autograd/ctx.h"

typedef struct {
    char *path;  /* owned */
    char *tmp;   /* owned: path + ".tmp" */
    int fd;
} an_atomic_file;

an_status an_atomic_open(an_ctx *ctx, const char *path, an_atomic_file *f);
an_status an_atomic_write(an_ctx *ctx, an_atomic_file *f, const void *data, size_t n);
/* fsync, close, rename over the path; frees f either way. */
an_status an_atomic_commit(an_ctx *ctx, an_atomic_file *f);
/* Closes and removes the temporary file; frees f. */
void an_atomic_abort(an_atomic_file *f);
/* A copy of FROM as TO. */
an_status an_atomic_copy_file(an_ctx *ctx, const char *from, const char *to);
/* The whole of `text` as PATH. */
an_status an_atomic_write_text(an_ctx *ctx, const char *path, const char *text);

#endif
