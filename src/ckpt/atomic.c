/* atomic.c — temp-file-and-rename writes (see atomic.h). */
#include "ckpt/atomic.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

an_status an_atomic_open(an_ctx *ctx, const char *path, an_atomic_file *f) {
    size_t n = strlen(path);
    *f = (an_atomic_file){strdup(path), malloc(n + 5), -1};
    if (!f->path || !f->tmp) {
        an_atomic_abort(f);
        AN_CHECK(ctx, 0, AN_ERR_INTERNAL, "out of host memory");
    }
    snprintf(f->tmp, n + 5, "%s.tmp", path);
    f->fd = open(f->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (f->fd < 0) {
        an_status st = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s: cannot create: %s", f->tmp, strerror(errno));
        free(f->path), free(f->tmp);
        *f = (an_atomic_file){NULL, NULL, -1};
        return st;
    }
    return AN_OK;
}

an_status an_atomic_write(an_ctx *ctx, an_atomic_file *f, const void *data, size_t n) {
    const char *p = data;
    while (n > 0) {
        ssize_t w = write(f->fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        AN_CHECK(ctx, w > 0, AN_ERR_INPUT, "%s: write failed: %s", f->tmp, w < 0 ? strerror(errno) : "no progress");
        p += w;
        n -= (size_t)w;
    }
    return AN_OK;
}

/* Best effort: makes the rename durable. Some file systems refuse fsync on a directory. */
static void sync_parent(const char *path) {
    char *dir = strdup(path);
    if (!dir) return;
    char *slash = strrchr(dir, '/');
    const char *d = slash ? (slash == dir ? "/" : (*slash = '\0', dir)) : ".";
    int fd = open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
    free(dir);
}

an_status an_atomic_commit(an_ctx *ctx, an_atomic_file *f) {
    an_status st = AN_OK;
    if (fsync(f->fd) != 0) st = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s: fsync failed: %s", f->tmp, strerror(errno));
    if (close(f->fd) != 0 && st == AN_OK)
        st = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s: close failed: %s", f->tmp, strerror(errno));
    f->fd = -1;
    if (st == AN_OK && rename(f->tmp, f->path) != 0)
        st = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s: cannot rename %s over it: %s", f->path, f->tmp,
                          strerror(errno));
    if (st == AN_OK) sync_parent(f->path);
    else unlink(f->tmp);
    free(f->path), free(f->tmp);
    *f = (an_atomic_file){NULL, NULL, -1};
    return st;
}

void an_atomic_abort(an_atomic_file *f) {
    if (f->fd >= 0) close(f->fd);
    if (f->tmp) unlink(f->tmp);
    free(f->path), free(f->tmp);
    *f = (an_atomic_file){NULL, NULL, -1};
}

an_status an_atomic_write_text(an_ctx *ctx, const char *path, const char *text) {
    an_atomic_file f;
    AN_TRY(an_atomic_open(ctx, path, &f));
    an_status st = an_atomic_write(ctx, &f, text, strlen(text));
    if (st != AN_OK) {
        an_atomic_abort(&f);
        return st;
    }
    return an_atomic_commit(ctx, &f);
}

an_status an_atomic_copy_file(an_ctx *ctx, const char *from, const char *to) {
    FILE *in = fopen(from, "rb");
    AN_CHECK(ctx, in != NULL, AN_ERR_INPUT, "%s: cannot open: %s", from, strerror(errno));
    an_atomic_file out;
    an_status st = an_atomic_open(ctx, to, &out);
    if (st != AN_OK) {
        fclose(in);
        return st;
    }
    char buf[1 << 16];
    size_t n;
    while (st == AN_OK && (n = fread(buf, 1, sizeof buf, in)) > 0) st = an_atomic_write(ctx, &out, buf, n);
    if (st == AN_OK && ferror(in)) st = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s: read failed", from);
    fclose(in);
    if (st != AN_OK) {
        an_atomic_abort(&out);
        return st;
    }
    return an_atomic_commit(ctx, &out);
}
