/* records.c — JSONL, plain text and archive shards into records (see records.h for the formats and
 * the bad-record rules). Files are streamed: a JSONL line is parsed, handed to the callback and freed
 * before the next is read; only a plain text document is held whole. */
#include "data/records.h"

#include <archive.h>        /* tar / zip shards */
#include <archive_entry.h>
#include <errno.h>
#include <jansson.h>        /* one JSON object per line */
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

const char *an_data_format_name(an_recipe_data_format format) {
    switch (format) {
    case AN_RECIPE_FORMAT_TEXT: return "text";
    case AN_RECIPE_FORMAT_PROMPT_COMPLETION: return "prompt_completion";
    case AN_RECIPE_FORMAT_CHAT: return "chat";
    default: return "auto";
    }
}

/* ---- what a path holds ---- */

typedef enum { KIND_UNKNOWN = 0, KIND_JSONL, KIND_TXT, KIND_ARCHIVE } file_kind;

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static file_kind kind_of(const char *name) {
    if (ends_with(name, ".jsonl")) return KIND_JSONL;
    if (ends_with(name, ".txt")) return KIND_TXT;
    static const char *const archives[] = {".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst", ".zip"};
    for (size_t i = 0; i < sizeof archives / sizeof *archives; i++)
        if (ends_with(name, archives[i])) return KIND_ARCHIVE;
    return KIND_UNKNOWN;
}

/* ---- byte sources: a loose file or the current entry of an archive ---- */

typedef struct {
    FILE *f;
    struct archive *a;
    const char *name;  /* for messages: "path" or "path[entry]" */
} source;

/* Bytes read (0 at the end), or AN_ERR_INPUT recorded and -1. */
static long long source_read(an_ctx *ctx, source *s, char *buf, size_t n) {
    if (s->f) {
        size_t r = fread(buf, 1, n, s->f);
        if (r == 0 && ferror(s->f)) {
            an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s: read failed: %s", s->name, strerror(errno));
            return -1;
        }
        return (long long)r;
    }
    for (;;) {
        la_ssize_t r = archive_read_data(s->a, buf, n);
        if (r == ARCHIVE_RETRY) continue;
        if (r < 0) {
            an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s: cannot read: %s", s->name,
                         archive_error_string(s->a) ? archive_error_string(s->a) : "unknown archive error");
            return -1;
        }
        return (long long)r;
    }
}

/* Growable byte buffer. */
typedef struct {
    char *p;
    size_t len, cap;
} bytes;

static an_status reserve(an_ctx *ctx, bytes *b, size_t need) {
    if (need <= b->cap) return AN_OK;
    size_t cap = b->cap ? b->cap : 1 << 16;
    while (cap < need) cap *= 2;
    char *p = realloc(b->p, cap);
    AN_CHECK(ctx, p != NULL, AN_ERR_INTERNAL, "out of host memory (%zu bytes for a record)", cap);
    b->p = p, b->cap = cap;
    return AN_OK;
}

/* ---- bad records ---- */

typedef struct {
    an_ctx *ctx;
    an_recipe_data_format format;  /* requested: AUTO decides per file */
    an_data_read_stats *stats;
    an_data_record_fn fn;
    void *user;
} reader;

static void note_bad(an_data_read_stats *stats, const char *where, const char *reason) {
    stats->bad++;
    if (stats->n_shown < AN_DATA_BAD_SHOWN) {
        char *out = stats->shown[stats->n_shown++];
        if (snprintf(out, sizeof stats->shown[0], "%s: %s", where, reason) < 0) out[0] = '\0';  /* may cut */
    }
}

/* Counts one record and hands it on; a record the callback rejects counts as bad. */
static an_status deliver(reader *r, const an_data_record *rec) {
    char bad[256] = "";
    AN_TRY(r->fn(r->ctx, r->user, rec, bad, sizeof bad));
    if (bad[0]) note_bad(r->stats, rec->where, bad);
    return AN_OK;
}

/* ---- one JSON record ---- */

static const char *json_type_name(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: case JSON_REAL: return "a number";
    case JSON_TRUE: case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

/* A string field; false with the reason in why when it is missing or not a string. */
static bool get_string(json_t *obj, const char *key, const char **p, size_t *n, char *why, size_t why_size) {
    json_t *v = json_object_get(obj, key);
    if (!v) {
        snprintf(why, why_size, "missing field '%s'", key);
        return false;
    }
    if (!json_is_string(v)) {
        snprintf(why, why_size, "'%s' must be a string, got %s", key, json_type_name(v));
        return false;
    }
    *p = json_string_value(v);
    *n = json_string_length(v);
    return true;
}

static an_recipe_data_format classify(json_t *obj) {
    if (json_object_get(obj, "messages")) return AN_RECIPE_FORMAT_CHAT;
    if (json_object_get(obj, "prompt") || json_object_get(obj, "completion")) return AN_RECIPE_FORMAT_PROMPT_COMPLETION;
    if (json_object_get(obj, "text")) return AN_RECIPE_FORMAT_TEXT;
    return AN_RECIPE_FORMAT_AUTO;
}

/* Fills rec from obj read as `format`; false with the reason in why for a bad record. msgs is the
 * caller's array, grown as needed (freed by the caller). */
static bool fill_record(json_t *obj, an_recipe_data_format format, an_data_record *rec, an_chat_message **msgs,
                        int *msgs_cap, char *why, size_t why_size) {
    rec->format = format;
    if (format == AN_RECIPE_FORMAT_TEXT) {
        if (!get_string(obj, "text", &rec->text, &rec->text_len, why, why_size)) return false;
        if (rec->text_len == 0) return snprintf(why, why_size, "'text' is empty"), false;
        return true;
    }
    if (format == AN_RECIPE_FORMAT_PROMPT_COMPLETION) {
        if (!get_string(obj, "prompt", &rec->prompt, &rec->prompt_len, why, why_size)) return false;
        if (!get_string(obj, "completion", &rec->completion, &rec->completion_len, why, why_size)) return false;
        if (rec->completion_len == 0) return snprintf(why, why_size, "'completion' is empty"), false;
        return true;
    }
    json_t *list = json_object_get(obj, "messages");
    if (!list) return snprintf(why, why_size, "missing field 'messages'"), false;
    if (!json_is_array(list))
        return snprintf(why, why_size, "'messages' must be an array, got %s", json_type_name(list)), false;
    size_t n = json_array_size(list);
    if (n == 0) return snprintf(why, why_size, "'messages' is empty"), false;
    if (n > (size_t)1 << 20) return snprintf(why, why_size, "'messages' has %zu entries", n), false;
    if ((int)n > *msgs_cap) {
        an_chat_message *p = realloc(*msgs, n * sizeof *p);
        if (!p) return snprintf(why, why_size, "out of host memory for %zu messages", n), false;
        *msgs = p, *msgs_cap = (int)n;
    }
    bool any_assistant = false;
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_array_get(list, i);
        if (!json_is_object(m))
            return snprintf(why, why_size, "messages[%zu] must be an object, got %s", i, json_type_name(m)), false;
        json_t *role = json_object_get(m, "role"), *content = json_object_get(m, "content");
        if (!role || !json_is_string(role))
            return snprintf(why, why_size, "messages[%zu].role must be a string", i), false;
        const char *r = json_string_value(role);
        an_chat_role cr;
        if (!strcmp(r, "system")) cr = AN_CHAT_SYSTEM;
        else if (!strcmp(r, "user")) cr = AN_CHAT_USER;
        else if (!strcmp(r, "assistant")) cr = AN_CHAT_ASSISTANT;
        else
            return snprintf(why, why_size, "messages[%zu].role '%.40s' is not system, user or assistant", i, r), false;
        if (!content || !json_is_string(content))
            return snprintf(why, why_size, "messages[%zu].content must be a string, got %s%s", i,
                            content ? json_type_name(content) : "nothing",
                            content && json_is_null(content) ? " (tool calls are not supported)" : ""),
                   false;
        (*msgs)[i] = (an_chat_message){cr, json_string_value(content), json_string_length(content)};
        any_assistant |= cr == AN_CHAT_ASSISTANT;
    }
    if (!any_assistant) return snprintf(why, why_size, "no assistant message (nothing to train on)"), false;
    rec->messages = *msgs;
    rec->n_messages = (int)n;
    return true;
}

/* ---- JSONL ---- */

/* The per-file (per-entry) state of format auto. */
typedef struct {
    an_recipe_data_format decided;  /* AUTO until the first record with a known key */
    long long decided_line;
} file_format;

static an_status jsonl_line(reader *r, const char *name, long long line_no, const char *line, size_t len,
                            file_format *ff, an_chat_message **msgs, int *msgs_cap) {
    char where[1280], why[256];
    snprintf(where, sizeof where, "%s:%lld", name, line_no);
    r->stats->records++;
    json_error_t err;
    json_t *obj = json_loadb(line, len, 0, &err);
    if (!obj) {
        snprintf(why, sizeof why, "not JSON: %s (column %d)", err.text, err.column);
        note_bad(r->stats, where, why);
        return AN_OK;
    }
    an_status st = AN_OK;
    an_recipe_data_format format = r->format;
    if (!json_is_object(obj)) {
        snprintf(why, sizeof why, "not a JSON object (got %s)", json_type_name(obj));
        note_bad(r->stats, where, why);
        goto done;
    }
    if (format == AN_RECIPE_FORMAT_AUTO) {
        format = classify(obj);
        if (format == AN_RECIPE_FORMAT_AUTO) {
            note_bad(r->stats, where, "no 'messages', 'prompt'/'completion' or 'text' field");
            goto done;
        }
        if (ff->decided == AN_RECIPE_FORMAT_AUTO) {
            ff->decided = format, ff->decided_line = line_no;
            r->stats->formats |= 1u << format;
        } else if (format != ff->decided) {
            st = an_error_set(r->ctx, AN_ERR_INPUT, __FILE__, __LINE__,
                              "%s: line %lld is a %s record but line %lld is %s; a file must hold one format "
                              "(or set data.format to read every line as one)",
                              name, line_no, an_data_format_name(format), ff->decided_line,
                              an_data_format_name(ff->decided));
            goto done;
        }
    } else if (ff->decided == AN_RECIPE_FORMAT_AUTO) {
        ff->decided = format;
        r->stats->formats |= 1u << format;
    }
    an_data_record rec = {.where = where};
    if (!fill_record(obj, format, &rec, msgs, msgs_cap, why, sizeof why)) note_bad(r->stats, where, why);
    else st = deliver(r, &rec);
done:
    json_decref(obj);
    return st;
}

static bool blank(const char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r') return false;
    return true;
}

static an_status read_jsonl(reader *r, source *src) {
    bytes buf = {0};
    an_chat_message *msgs = NULL;
    int msgs_cap = 0;
    file_format ff = {AN_RECIPE_FORMAT_AUTO, 0};
    size_t start = 0;  /* the unread part of buf is [start, buf.len) */
    long long line_no = 0;
    bool eof = false;
    an_status st = AN_OK;
    while (st == AN_OK) {
        char *nl = buf.len > start ? memchr(buf.p + start, '\n', buf.len - start) : NULL;
        if (!nl && !eof) {
            if (start > 0) memmove(buf.p, buf.p + start, buf.len - start);  /* keep the partial line */
            buf.len -= start, start = 0;
            if ((st = reserve(r->ctx, &buf, buf.len + (1 << 16))) != AN_OK) break;
            long long got = source_read(r->ctx, src, buf.p + buf.len, buf.cap - buf.len);
            if (got < 0) { st = an_error_status(r->ctx); break; }
            if (got == 0) eof = true;
            buf.len += (size_t)got;
            continue;
        }
        if (!nl && start == buf.len) break;  /* end of file after a newline */
        size_t end = nl ? (size_t)(nl - buf.p) : buf.len;
        const char *line = buf.p + start;
        size_t len = end - start;
        line_no++;
        if (line_no == 1 && len >= 3 && memcmp(line, "\xEF\xBB\xBF", 3) == 0) line += 3, len -= 3;  /* BOM */
        if (len > 0 && line[len - 1] == '\r') len--;
        if (!blank(line, len)) st = jsonl_line(r, src->name, line_no, line, len, &ff, &msgs, &msgs_cap);
        start = nl ? end + 1 : buf.len;
    }
    free(buf.p);
    free(msgs);
    return st;
}

/* ---- plain text ---- */

static bool only_space(const char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!strchr(" \t\r\n", p[i]) || p[i] == '\0') return false;
    return true;
}

/* Offset of the first byte that is not well-formed UTF-8 (no overlongs, surrogates or > U+10FFFF),
 * or -1 when all n bytes are. */
static long long utf8_invalid_at(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t k;
        unsigned lo = 0x80, hi = 0xBF;
        if (c < 0x80) { i++; continue; }
        if (c >= 0xC2 && c <= 0xDF) k = 1;
        else if (c >= 0xE0 && c <= 0xEF) k = 2, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
        else if (c >= 0xF0 && c <= 0xF4) k = 3, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
        else return (long long)i;
        if (i + k >= n) return (long long)i;  /* truncated */
        if (s[i + 1] < lo || s[i + 1] > hi) return (long long)i;
        for (size_t j = 2; j <= k; j++)
            if (s[i + j] < 0x80 || s[i + j] > 0xBF) return (long long)i;
        i += k + 1;
    }
    return -1;
}

static an_status read_txt(reader *r, source *src) {
    AN_CHECK(r->ctx, r->format == AN_RECIPE_FORMAT_AUTO || r->format == AN_RECIPE_FORMAT_TEXT, AN_ERR_INPUT,
             "%s: a .txt file is one plain text document, which data.format %s cannot read (use text or auto)",
             src->name, an_data_format_name(r->format));
    bytes buf = {0};
    an_status st = AN_OK;
    for (;;) {
        if ((st = reserve(r->ctx, &buf, buf.len + (1 << 16))) != AN_OK) break;
        long long got = source_read(r->ctx, src, buf.p + buf.len, buf.cap - buf.len);
        if (got < 0) { st = an_error_status(r->ctx); break; }
        if (got == 0) break;
        buf.len += (size_t)got;
    }
    if (st == AN_OK) {
        char where[1280], why[128];
        snprintf(where, sizeof where, "%s:1", src->name);
        r->stats->records++;
        r->stats->formats |= 1u << AN_RECIPE_FORMAT_TEXT;
        const char *text = buf.p;
        size_t len = buf.len;
        if (len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0) text += 3, len -= 3;
        long long bad_at = utf8_invalid_at((const unsigned char *)text, len);
        if (only_space(text, len)) {
            note_bad(r->stats, where, "empty file");
        } else if (bad_at >= 0) {
            snprintf(why, sizeof why, "not valid UTF-8 (byte %lld)", bad_at);
            note_bad(r->stats, where, why);
        } else {
            an_data_record rec = {.format = AN_RECIPE_FORMAT_TEXT, .text = text, .text_len = len, .where = where};
            st = deliver(r, &rec);
        }
    }
    free(buf.p);
    return st;
}

/* ---- archives ---- */

static an_status read_archive(reader *r, const char *path) {
    struct archive *a = archive_read_new();
    AN_CHECK(r->ctx, a != NULL, AN_ERR_INTERNAL, "out of host memory");
    archive_read_support_filter_all(a);
    archive_read_support_format_tar(a);
    archive_read_support_format_zip(a);
    an_status st = AN_OK;
    if (archive_read_open_filename(a, path, 1 << 16) != ARCHIVE_OK) {
        st = an_error_set(r->ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s: cannot open as an archive: %s", path,
                          archive_error_string(a) ? archive_error_string(a) : "unknown error");
        archive_read_free(a);
        return st;
    }
    for (;;) {
        struct archive_entry *e;
        int rc = archive_read_next_header(a, &e);
        if (rc == ARCHIVE_EOF) break;
        if (rc == ARCHIVE_RETRY) continue;
        if (rc < ARCHIVE_WARN) {
            st = an_error_set(r->ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s: not a readable tar or zip archive: %s",
                              path, archive_error_string(a) ? archive_error_string(a) : "unknown error");
            break;
        }
        if (archive_entry_filetype(e) != AE_IFREG) continue;  /* directories, links */
        const char *entry = archive_entry_pathname_utf8(e);
        if (!entry) entry = archive_entry_pathname(e);
        if (!entry) entry = "?";
        char name[1200];
        snprintf(name, sizeof name, "%s[%s]", path, entry);
        file_kind kind = kind_of(entry);
        if (kind != KIND_JSONL && kind != KIND_TXT) {
            st = an_error_set(r->ctx, AN_ERR_INPUT, __FILE__, __LINE__,
                              "%s: entry '%s' is neither .jsonl nor .txt (a shard may only hold those)", path, entry);
            break;
        }
        source src = {NULL, a, name};
        st = kind == KIND_JSONL ? read_jsonl(r, &src) : read_txt(r, &src);
        if (st != AN_OK) break;
    }
    archive_read_free(a);
    return st;
}

/* ---- the entry point ---- */

an_status an_data_read(an_ctx *ctx, const char *path, an_recipe_data_format format, an_data_read_stats *stats,
                       an_data_record_fn fn, void *user) {
    struct stat sb;
    AN_CHECK(ctx, stat(path, &sb) == 0, AN_ERR_INPUT, "%s: cannot open: %s", path, strerror(errno));
    AN_CHECK(ctx, S_ISREG(sb.st_mode), AN_ERR_INPUT, "%s: not a regular file (data files are listed one by one)",
             path);
    file_kind kind = kind_of(path);
    AN_CHECK(ctx, kind != KIND_UNKNOWN, AN_ERR_INPUT,
             "%s: unknown data file type; expected .jsonl, .txt, .tar, .tar.gz, .tgz, .tar.bz2, .tar.xz, .tar.zst "
             "or .zip",
             path);
    reader r = {ctx, format, stats, fn, user};
    if (kind == KIND_ARCHIVE) return read_archive(&r, path);
    FILE *f = fopen(path, "rb");
    AN_CHECK(ctx, f != NULL, AN_ERR_INPUT, "%s: cannot open: %s", path, strerror(errno));
    source src = {f, NULL, path};
    an_status st = kind == KIND_JSONL ? read_jsonl(&r, &src) : read_txt(&r, &src);
    fclose(f);
    return st;
}

void an_data_read_stats_add(an_data_read_stats *total, const an_data_read_stats *part) {
    total->records += part->records;
    total->bad += part->bad;
    total->formats |= part->formats;
    for (int i = 0; i < part->n_shown && total->n_shown < AN_DATA_BAD_SHOWN; i++)
        memcpy(total->shown[total->n_shown++], part->shown[i], sizeof total->shown[0]);
}

an_status an_data_check_bad(an_ctx *ctx, const an_data_read_stats *stats, double max_bad_fraction, const char *what) {
    char list[AN_DATA_BAD_SHOWN * 400] = "";
    size_t used = 0;
    for (int i = 0; i < stats->n_shown && used + 8 < sizeof list; i++)
        used += (size_t)snprintf(list + used, sizeof list - used, "\n  %s", stats->shown[i]);
    if (stats->bad > stats->n_shown && used + 8 < sizeof list)
        snprintf(list + used, sizeof list - used, "\n  ... and %lld more", (long long)(stats->bad - stats->n_shown));
    AN_CHECK(ctx, stats->records > stats->bad, AN_ERR_INPUT, "%s: no usable record (%lld records, all bad)%s", what,
             (long long)stats->records, list);
    double fraction = (double)stats->bad / (double)stats->records;
    AN_CHECK(ctx, fraction <= max_bad_fraction, AN_ERR_INPUT,
             "%s: %lld of %lld records are bad (%.4g%%), more than data.max_bad_fraction = %g allows:%s", what,
             (long long)stats->bad, (long long)stats->records, 100.0 * fraction, max_bad_fraction, list);
    return AN_OK;
}
