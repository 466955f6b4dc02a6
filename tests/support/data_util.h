/* data_util.h — what the data suites share: writing small text files, building tar / tar.gz / zip
 * shards with libarchive's writer, and collecting the records a reader delivers as one comparable
 * line each. Header-only (static inline) so each suite takes what it uses. */
#ifndef AN_TEST_DATA_UTIL_H
#define AN_TEST_DATA_UTIL_H

#include <archive.h>
#include <archive_entry.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/records.h"
#include "files.h"  /* write_bytes, make_tmpdir, remove_tree */

static inline void write_text(const char *path, const char *text) { write_bytes(path, text, strlen(text)); }

/* "dir/name" into out. */
static inline const char *join(char *out, size_t size, const char *dir, const char *name) {
    snprintf(out, size, "%s/%s", dir, name);
    return out;
}

typedef enum { SHARD_TAR, SHARD_TAR_GZ, SHARD_ZIP } shard_kind;

/* An archive at path with n regular entries names[i] holding contents[i], after a directory entry
 * "dir/" (which readers skip). */
static inline void make_shard(const char *path, shard_kind kind, const char *const *names,
                              const char *const *contents, int n) {
    struct archive *a = archive_write_new();
    if (kind == SHARD_ZIP) {
        ck_assert_int_eq(archive_write_set_format_zip(a), ARCHIVE_OK);
    } else {
        ck_assert_int_eq(archive_write_set_format_pax_restricted(a), ARCHIVE_OK);
        if (kind == SHARD_TAR_GZ) ck_assert_int_eq(archive_write_add_filter_gzip(a), ARCHIVE_OK);
    }
    ck_assert_msg(archive_write_open_filename(a, path) == ARCHIVE_OK, "%s", archive_error_string(a));
    struct archive_entry *e = archive_entry_new();
    archive_entry_set_pathname(e, "dir/");
    archive_entry_set_filetype(e, AE_IFDIR);
    archive_entry_set_perm(e, 0755);
    ck_assert_int_eq(archive_write_header(a, e), ARCHIVE_OK);
    archive_entry_free(e);
    for (int i = 0; i < n; i++) {
        size_t len = strlen(contents[i]);
        e = archive_entry_new();
        archive_entry_set_pathname(e, names[i]);
        archive_entry_set_filetype(e, AE_IFREG);
        archive_entry_set_perm(e, 0644);
        archive_entry_set_size(e, (la_int64_t)len);
        ck_assert_int_eq(archive_write_header(a, e), ARCHIVE_OK);
        ck_assert(archive_write_data(a, contents[i], len) == (la_ssize_t)len);
        archive_entry_free(e);
    }
    ck_assert_int_eq(archive_write_close(a), ARCHIVE_OK);
    archive_write_free(a);
}

/* Records as lines "where|format|fields..." appended to one string. */
typedef struct {
    char *text;
    size_t len, cap;
    int n;
} collected;

static inline void collect_append(collected *c, const char *s, size_t n) {
    if (c->len + n + 1 > c->cap) {
        c->cap = (c->len + n + 1) * 2;
        c->text = realloc(c->text, c->cap);
    }
    memcpy(c->text + c->len, s, n);
    c->len += n;
    c->text[c->len] = '\0';
}

static inline void collect_str(collected *c, const char *s) { collect_append(c, s, strlen(s)); }

/* An an_data_record_fn; with where == false the location is left out (to compare shards with files). */
static inline an_status collect_record(collected *c, const an_data_record *rec, bool where) {
    static const char *const roles[] = {"system", "user", "assistant"};
    if (where) collect_str(c, rec->where), collect_str(c, "|");
    collect_str(c, an_data_format_name(rec->format));
    if (rec->format == AN_RECIPE_FORMAT_TEXT) {
        collect_str(c, "|"), collect_append(c, rec->text, rec->text_len);
    } else if (rec->format == AN_RECIPE_FORMAT_PROMPT_COMPLETION) {
        collect_str(c, "|"), collect_append(c, rec->prompt, rec->prompt_len);
        collect_str(c, "|"), collect_append(c, rec->completion, rec->completion_len);
    } else {
        for (int i = 0; i < rec->n_messages; i++) {
            collect_str(c, "|"), collect_str(c, roles[rec->messages[i].role]), collect_str(c, ":");
            collect_append(c, rec->messages[i].content, rec->messages[i].len);
        }
    }
    collect_str(c, "\n");
    c->n++;
    return AN_OK;
}

static inline an_status collect_with_where(an_ctx *ctx, void *user, const an_data_record *rec, char *bad, size_t n) {
    return collect_record(user, rec, true);
}

static inline an_status collect_without_where(an_ctx *ctx, void *user, const an_data_record *rec, char *bad,
                                              size_t n) {
    return collect_record(user, rec, false);
}

#endif
