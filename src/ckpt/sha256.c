/* sha256.c — SHA-256 through OpenSSL EVP (no hand-written hashing) and SHA256SUMS files (see
 * sha256.h). Ownership: everything allocated here is freed here; outputs are the caller's buffers. */
#include "ckpt/sha256.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>  /* EVP_MD_CTX, EVP_sha256 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt/atomic.h"  /* an_atomic_write_text: SHA256SUMS appears whole */

#define READ_CHUNK (1u << 20)

static void to_hex(const unsigned char *digest, char hex[AN_SHA256_HEX_SIZE]) {
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        hex[2 * i] = digits[digest[i] >> 4];
        hex[2 * i + 1] = digits[digest[i] & 15];
    }
    hex[64] = '\0';
}

an_status an_sha256_buffer(an_ctx *ctx, const void *data, size_t n, char hex[AN_SHA256_HEX_SIZE]) {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    AN_CHECK(ctx, md != NULL, AN_ERR_INTERNAL, "sha256: EVP_MD_CTX_new failed");
    bool ok = EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1 && EVP_DigestUpdate(md, data, n) == 1 &&
              EVP_DigestFinal_ex(md, digest, &len) == 1 && len == 32;
    EVP_MD_CTX_free(md);
    AN_CHECK(ctx, ok, AN_ERR_INTERNAL, "sha256: the OpenSSL digest failed");
    to_hex(digest, hex);
    return AN_OK;
}

an_status an_sha256_file(an_ctx *ctx, const char *path, char hex[AN_SHA256_HEX_SIZE]) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    AN_CHECK(ctx, fd >= 0, AN_ERR_INPUT, "%s: cannot open: %s", path, strerror(errno));
    unsigned char *buf = malloc(READ_CHUNK);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    an_status st = AN_OK;
    if (!buf || !md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1)
        st = an_error_set(ctx, AN_ERR_INTERNAL, __FILE__, __LINE__, "sha256 of %s: out of memory or EVP failure", path);
    while (st == AN_OK) {
        ssize_t got = read(fd, buf, READ_CHUNK);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) st = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s: read failed: %s", path, strerror(errno));
        else if (got == 0) break;
        else if (EVP_DigestUpdate(md, buf, (size_t)got) != 1)
            st = an_error_set(ctx, AN_ERR_INTERNAL, __FILE__, __LINE__, "sha256 of %s: EVP_DigestUpdate failed", path);
    }
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (st == AN_OK && (EVP_DigestFinal_ex(md, digest, &len) != 1 || len != 32))
        st = an_error_set(ctx, AN_ERR_INTERNAL, __FILE__, __LINE__, "sha256 of %s: EVP_DigestFinal_ex failed", path);
    if (st == AN_OK) to_hex(digest, hex);
    EVP_MD_CTX_free(md);
    free(buf);
    close(fd);
    return st;
}

/* ---- directory listings ------------------------------------------------------------------------ */

typedef struct {
    char **names;
    int n, cap;
} name_list;

static void list_free(name_list *l) {
    for (int i = 0; i < l->n; i++) free(l->names[i]);
    free(l->names);
    *l = (name_list){NULL, 0, 0};
}

static bool list_push(name_list *l, const char *name) {
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 16;
        char **grown = realloc(l->names, (size_t)cap * sizeof *grown);
        if (!grown) return false;
        l->names = grown, l->cap = cap;
    }
    l->names[l->n] = strdup(name);
    return l->names[l->n++] != NULL;
}

static int by_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* A name sha256sum prints as is and that stays inside the directory. */
static bool plain_name(const char *name) {
    if (!name[0] || !strcmp(name, ".") || !strcmp(name, "..")) return false;
    return strpbrk(name, "/\\\n\r") == NULL;
}

/* Every entry of dir except "." and ".." and SHA256SUMS, sorted; non-regular entries are errors. */
static an_status list_files(an_ctx *ctx, const char *dir, name_list *out) {
    DIR *d = opendir(dir);
    AN_CHECK(ctx, d != NULL, AN_ERR_INPUT, "%s: cannot open directory: %s", dir, strerror(errno));
    name_list l = {NULL, 0, 0};
    an_status st = AN_OK;
    struct dirent *e;
    while (st == AN_OK && (e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") || !strcmp(e->d_name, AN_SHA256SUMS_NAME)) continue;
        char path[4096];
        struct stat sb;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (lstat(path, &sb) != 0)
            st = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s: cannot stat: %s", path, strerror(errno));
        else if (!S_ISREG(sb.st_mode))
            st = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__,
                              "%s: '%s' is not a regular file (a checkpoint directory holds only files)", dir, e->d_name);
        else if (!plain_name(e->d_name))
            st = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s: file name '%s' cannot be listed in %s", dir,
                              e->d_name, AN_SHA256SUMS_NAME);
        else if (!list_push(&l, e->d_name))
            st = an_error_set(ctx, AN_ERR_INTERNAL, __FILE__, __LINE__, "out of host memory");
    }
    closedir(d);
    if (st != AN_OK) {
        list_free(&l);
        return st;
    }
    if (l.n > 1) qsort(l.names, (size_t)l.n, sizeof *l.names, by_name);
    *out = l;
    return AN_OK;
}

an_status an_sha256sums_write(an_ctx *ctx, const char *dir) {
    name_list files;
    AN_TRY(list_files(ctx, dir, &files));
    size_t cap = 1, used = 0;
    for (int i = 0; i < files.n; i++) cap += 64 + 2 + strlen(files.names[i]) + 1;
    char *text = malloc(cap);
    an_status st = text ? AN_OK : an_error_set(ctx, AN_ERR_INTERNAL, __FILE__, __LINE__, "out of host memory");
    if (text) text[0] = '\0';
    for (int i = 0; st == AN_OK && i < files.n; i++) {
        char path[4096], hex[AN_SHA256_HEX_SIZE];
        snprintf(path, sizeof path, "%s/%s", dir, files.names[i]);
        st = an_sha256_file(ctx, path, hex);
        if (st == AN_OK) used += (size_t)snprintf(text + used, cap - used, "%s  %s\n", hex, files.names[i]);
    }
    if (st == AN_OK) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, AN_SHA256SUMS_NAME);
        st = an_atomic_write_text(ctx, path, text);
    }
    free(text);
    list_free(&files);
    return st;
}

/* ---- verification ------------------------------------------------------------------------------ */

static bool is_hex64(const char *s) {
    for (int i = 0; i < 64; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return false;
    return true;
}

/* Parses SHA256SUMS text into names[i] / sums[i] (64 hex each, lowercase). */
static an_status parse_sums(an_ctx *ctx, const char *file, char *text, name_list *names, name_list *sums) {
    int line = 0;
    for (char *p = text; *p;) {
        line++;
        char *end = strchr(p, '\n');
        AN_CHECK(ctx, end != NULL, AN_ERR_INPUT, "%s: line %d is not terminated by a newline (truncated file?)", file, line);
        *end = '\0';
        /* "<64 hex><space><space or *><name>" */
        bool ok = end - p > 66 && is_hex64(p) && p[64] == ' ' && (p[65] == ' ' || p[65] == '*') && plain_name(p + 66);
        AN_CHECK(ctx, ok, AN_ERR_INPUT, "%s: line %d is not '<64 lowercase hex digits>  <file name>'", file, line);
        const char *name = p + 66;
        for (int i = 0; i < names->n; i++)
            AN_CHECK(ctx, strcmp(names->names[i], name) != 0, AN_ERR_INPUT, "%s: line %d lists '%s' a second time", file,
                     line, name);
        p[64] = '\0';
        AN_CHECK(ctx, list_push(names, name) && list_push(sums, p), AN_ERR_INTERNAL, "out of host memory");
        p = end + 1;
    }
    AN_CHECK(ctx, names->n > 0, AN_ERR_INPUT, "%s: lists no files", file);
    return AN_OK;
}

static an_status read_text(an_ctx *ctx, const char *path, char **out) {
    FILE *f = fopen(path, "rb");
    AN_CHECK(ctx, f != NULL, AN_ERR_INPUT, "%s: cannot open: %s (the checkpoint is incomplete: %s is written last)",
             path, strerror(errno), AN_SHA256SUMS_NAME);
    size_t cap = 4096, n = 0;
    char *text = malloc(cap);
    size_t got;
    while (text && (got = fread(text + n, 1, cap - n - 1, f)) > 0) {
        n += got;
        if (n + 1 == cap) {
            char *grown = cap < (64u << 20) ? realloc(text, 2 * cap) : NULL;
            if (!grown) free(text);
            text = grown, cap *= 2;
        }
    }
    bool failed = ferror(f);
    fclose(f);
    if (!text || failed) {
        free(text);
        AN_CHECK(ctx, 0, AN_ERR_INPUT, "%s: cannot read it whole", path);
    }
    text[n] = '\0';
    if (strlen(text) != n) {
        free(text);
        AN_CHECK(ctx, 0, AN_ERR_INPUT, "%s: holds a NUL byte (not a SHA256SUMS file)", path);
    }
    *out = text;
    return AN_OK;
}

an_status an_sha256sums_verify(an_ctx *ctx, const char *dir) {
    char file[4096];
    snprintf(file, sizeof file, "%s/%s", dir, AN_SHA256SUMS_NAME);
    char *text = NULL;
    AN_TRY(read_text(ctx, file, &text));
    name_list names = {NULL, 0, 0}, sums = {NULL, 0, 0}, present = {NULL, 0, 0};
    an_status st = parse_sums(ctx, file, text, &names, &sums);
    free(text);
    for (int i = 0; st == AN_OK && i < names.n; i++) {
        char path[4096], hex[AN_SHA256_HEX_SIZE];
        struct stat sb;
        snprintf(path, sizeof path, "%s/%s", dir, names.names[i]);
        if (lstat(path, &sb) != 0 || !S_ISREG(sb.st_mode)) {
            st = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__,
                              "%s: %s lists '%s' but the file is missing (a partial or damaged checkpoint)", dir,
                              AN_SHA256SUMS_NAME, names.names[i]);
            break;
        }
        st = an_sha256_file(ctx, path, hex);
        if (st == AN_OK && strcmp(hex, sums.names[i]) != 0)
            st = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__,
                              "%s: '%s' does not match %s (SHA-256 %s, listed %s): the file changed or is corrupted",
                              dir, names.names[i], AN_SHA256SUMS_NAME, hex, sums.names[i]);
    }
    if (st == AN_OK) st = list_files(ctx, dir, &present);
    for (int i = 0; st == AN_OK && i < present.n; i++) {
        bool listed = false;
        for (int j = 0; !listed && j < names.n; j++) listed = !strcmp(present.names[i], names.names[j]);
        if (!listed)
            st = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__,
                              "%s: '%s' is not listed in %s (added after the checkpoint was written; remove it)", dir,
                              present.names[i], AN_SHA256SUMS_NAME);
    }
    list_free(&names), list_free(&sums), list_free(&present);
    return st;
}
