/* files.h — file helpers the safetensors suites share: whole-file reads and writes, temp dirs
 * (removed again by the test), and the check that a call failed with AN_ERR_INPUT and a message
 * naming what it must name. Header-only (static inline) so each suite takes what it uses. */
#ifndef AN_TEST_FILES_H
#define AN_TEST_FILES_H

#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test_util.h"  /* Check, an_ctx, an_error_* */

static inline unsigned char *read_bytes(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "open %s: %s", path, strerror(errno));
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *p = malloc((size_t)size + 1);
    ck_assert(fread(p, 1, (size_t)size, f) == (size_t)size);
    fclose(f);
    *n = (size_t)size;
    return p;
}

static inline void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    ck_assert_msg(f != NULL, "create %s: %s", path, strerror(errno));
    ck_assert(fwrite(data, 1, n, f) == n);
    fclose(f);
}

static inline bool exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0;
}

static inline void make_tmpdir(char *out, size_t size) {
    const char *base = getenv("TMPDIR");
    snprintf(out, size, "%s/anneal_st_XXXXXX", base && base[0] ? base : "/tmp");
    ck_assert_msg(mkdtemp(out) != NULL, "mkdtemp: %s", strerror(errno));
}

static inline void remove_tree(const char *path) {
    DIR *d = opendir(path);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char child[1024];
            int n = snprintf(child, sizeof child, "%s/%s", path, e->d_name);
            ck_assert_msg(n > 0 && (size_t)n < sizeof child, "path too long under %s", path);
            remove_tree(child);
        }
        closedir(d);
        rmdir(path);
    } else {
        unlink(path);
    }
}

static inline void copy_file(const char *from, const char *to) {
    size_t n;
    unsigned char *p = read_bytes(from, &n);
    write_bytes(to, p, n);
    free(p);
}

/* Fails unless the last call failed with AN_ERR_INPUT and a message holding every needle; clears. */
static inline void expect_input_error(an_ctx *ctx, an_status st, const char *const *needles, int n, const char *what) {
    ck_assert_msg(st == AN_ERR_INPUT && an_error_status(ctx) == AN_ERR_INPUT, "%s: status %d, message '%s'", what,
                  (int)st, an_error_message(ctx));
    for (int i = 0; i < n; i++)
        ck_assert_msg(strstr(an_error_message(ctx), needles[i]) != NULL, "%s: message '%s' does not mention '%s'", what,
                      an_error_message(ctx), needles[i]);
    an_error_clear(ctx);
}
#define EXPECT_INPUT_ERROR(ctx, st, what, ...)                                                              \
    expect_input_error((ctx), (st), (const char *[]){__VA_ARGS__},                                         \
                       (int)(sizeof((const char *[]){__VA_ARGS__}) / sizeof(const char *)), (what))

/* The header of a file in memory: its JSON, length in *n. */
static inline const char *header_of(const unsigned char *bytes, size_t *n) {
    uint64_t h = 0;
    for (int i = 7; i >= 0; i--) h = h << 8 | bytes[i];
    *n = (size_t)h;
    return (const char *)bytes + 8;
}

#endif
