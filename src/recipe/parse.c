/* parse.c — recipe YAML (libyaml's document API) and command-line `key=value` overrides into an
 * an_recipe: documents, mappings of keys (unknown and duplicate keys), overrides, error locations,
 * and the public load/parse entry points. values.c converts each value.
 *
 * Rules: a key takes the value of the last source that set it (defaults, then the file, then each
 * override in order) and remembers where that was, so resolve.c can name it in cross-field errors.
 * The file is read whole; the an_recipe being built owns every string stored in it, and is freed,
 * with *out untouched, when anything fails. */
#include "recipe/internal.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- error messages ---- */

static an_status vfail(recipe_state *st, const char *cfile, int cline, recipe_source where, const char *fmt,
                       va_list ap) {
    char msg[768];
    vsnprintf(msg, sizeof msg, fmt, ap);
    if (where.origin == ORIGIN_COMMAND_LINE)
        return an_error_set(st->ctx, AN_ERR_INPUT, cfile, cline, "command line '%s': %s", where.override_text, msg);
    if (where.origin == ORIGIN_FILE && where.line > 0)
        return an_error_set(st->ctx, AN_ERR_INPUT, cfile, cline, "%s:%d: %s", st->file, where.line, msg);
    return an_error_set(st->ctx, AN_ERR_INPUT, cfile, cline, "%s: %s", st->file, msg);
}

an_status recipe_fail_at_key(recipe_state *st, const char *cfile, int cline, int id, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    an_status s = vfail(st, cfile, cline, st->source[id], fmt, ap);
    va_end(ap);
    return s;
}

recipe_source recipe_here(const recipe_walker *w, const yaml_node_t *node) {
    recipe_source s = {w->origin, node ? (int)node->start_mark.line + 1 : 0, w->override_text};
    return s;
}

an_status recipe_fail_at_node(recipe_walker *w, const char *cfile, int cline, const yaml_node_t *node,
                              const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    an_status s = vfail(w->st, cfile, cline, recipe_here(w, node), fmt, ap);
    va_end(ap);
    return s;
}

static an_status unknown_key(recipe_walker *w, const yaml_node_t *node, const char *path) {
    const char *guess = recipe_suggest_key(path);
    char hint[128] = "";
    if (guess) snprintf(hint, sizeof hint, " (did you mean '%s'?)", guess);
    return NODE_FAIL(w, node, "unknown key '%s'%s", path, hint);
}

/* The keys of `map`, under section row `section` (-1 at the top level). */
an_status recipe_apply_mapping(recipe_walker *w, int section, const yaml_node_t *map) {
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        const yaml_node_t *key = yaml_document_get_node(w->doc, p->key);
        const yaml_node_t *value = yaml_document_get_node(w->doc, p->value);
        if (!node_is_scalar(key) || node_is_null(key))
            return NODE_FAIL(w, key, "keys must be names; found %s",
                             node_is_null(key) ? "an empty key" : node_kind(key));
        char path[256];
        snprintf(path, sizeof path, "%s%s%s", section >= 0 ? recipe_keys[section].path : "", section >= 0 ? "." : "",
                 node_text(key));
        if (strchr(node_text(key), '.') && w->origin == ORIGIN_FILE)
            return NODE_FAIL(w, key, "key '%s' contains a dot; in a file, nest it (dotted keys are for command-line "
                             "overrides)", node_text(key));
        int id = recipe_find_key(path);
        if (id < 0) return unknown_key(w, key, path);
        if (w->st->source[id].origin == w->origin) {
            if (w->origin == ORIGIN_FILE)
                return NODE_FAIL(w, key, "duplicate key '%s' (first given on line %d)", path, w->st->source[id].line);
            return NODE_FAIL(w, key, "%s is given twice (also in '%s')", path, w->st->source[id].override_text);
        }
        AN_TRY(recipe_apply_value(w, id, value));
    }
    return AN_OK;
}

/* ---- documents ---- */

static int line_of_offset(const char *s, size_t len, size_t offset) {
    int line = 1;
    for (size_t i = 0; i < offset && i < len; i++) line += s[i] == '\n';
    return line;
}

/* Parses one YAML document from `s`; the caller deletes *doc. A syntax error names the line and
 * column (for an override, the column inside its value). */
static an_status load_document(recipe_walker *w, const char *s, size_t len, yaml_document_t *doc) {
    yaml_parser_t parser;
    AN_CHECK(w->st->ctx, yaml_parser_initialize(&parser), AN_ERR_INTERNAL, "out of memory");
    yaml_parser_set_input_string(&parser, (const unsigned char *)s, len);
    bool ok = yaml_parser_load(&parser, doc);
    yaml_document_t extra;
    bool more = false;
    if (ok) {
        if (yaml_parser_load(&parser, &extra)) {
            more = yaml_document_get_root_node(&extra) != NULL;
            yaml_document_delete(&extra);
        } else {
            ok = false;
            yaml_document_delete(doc);
        }
    }
    if (ok && !more) {
        yaml_parser_delete(&parser);
        return AN_OK;
    }
    if (more) yaml_document_delete(doc);
    int line = (int)parser.problem_mark.line + 1, column = (int)parser.problem_mark.column + 1;
    if (parser.error == YAML_READER_ERROR) {
        line = line_of_offset(s, len, parser.problem_offset);
        column = 0;
    }
    char problem[400];
    if (more) snprintf(problem, sizeof problem, "more than one YAML document ('---' separates documents)");
    else if (parser.error == YAML_MEMORY_ERROR) snprintf(problem, sizeof problem, "out of memory");
    else if (parser.context)
        snprintf(problem, sizeof problem, "%s (%s that starts at line %d)", parser.problem, parser.context,
                 (int)parser.context_mark.line + 1);
    else snprintf(problem, sizeof problem, "%s", parser.problem ? parser.problem : "unknown error");
    bool memory = parser.error == YAML_MEMORY_ERROR;
    yaml_parser_delete(&parser);
    if (memory) return an_error_set(w->st->ctx, AN_ERR_INTERNAL, __FILE__, __LINE__, "libyaml: out of memory");
    if (w->origin == ORIGIN_COMMAND_LINE)
        return an_error_set(w->st->ctx, AN_ERR_INPUT, __FILE__, __LINE__,
                            "command line '%s': the value is not valid YAML: %s", w->override_text, problem);
    if (more) return an_error_set(w->st->ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s: %s", w->st->file, problem);
    if (column > 0)
        return an_error_set(w->st->ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s:%d:%d: YAML syntax error: %s",
                            w->st->file, line, column, problem);
    return an_error_set(w->st->ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s:%d: YAML syntax error: %s", w->st->file,
                        line, problem);
}

static an_status apply_file(recipe_walker *w, const char *s, size_t len) {
    yaml_document_t doc;
    AN_TRY(load_document(w, s, len, &doc));
    w->doc = &doc;
    const yaml_node_t *root = yaml_document_get_root_node(&doc);
    an_status st = AN_OK;
    if (root && !node_is_null(root)) {
        if (root->type != YAML_MAPPING_NODE)
            st = NODE_FAIL(w, root, "a recipe is a mapping of keys (name: value), found %s", node_kind(root));
        else st = recipe_apply_mapping(w, -1, root);
    }
    yaml_document_delete(&doc);
    w->doc = NULL;
    return st;
}

static an_status apply_override(recipe_walker *w, const char *arg) {
    w->override_text = arg;
    const char *eq = strchr(arg, '=');
    if (!eq)
        return an_error_set(w->st->ctx, AN_ERR_INPUT, __FILE__, __LINE__,
                            "command line '%s': not a key=value override (like training.micro_batch=4)", arg);
    char key[256];
    const char *a = arg, *b = eq;
    while (a < b && isspace((unsigned char)*a)) a++;
    while (b > a && isspace((unsigned char)b[-1])) b--;
    snprintf(key, sizeof key, "%.*s", (int)(b - a), a);
    if (!*key) return NODE_FAIL(w, NULL, "the override has no key before '='");
    int id = recipe_find_key(key);
    if (id < 0) return unknown_key(w, NULL, key);
    if (w->st->source[id].origin == ORIGIN_COMMAND_LINE)
        return NODE_FAIL(w, NULL, "%s is given twice (also in '%s')", key, w->st->source[id].override_text);

    const char *value = eq + 1;
    yaml_document_t doc;
    AN_TRY(load_document(w, value, strlen(value), &doc));
    w->doc = &doc;
    an_status st = recipe_apply_value(w, id, yaml_document_get_root_node(&doc));
    yaml_document_delete(&doc);
    w->doc = NULL;
    return st;
}

/* ---- public ---- */

an_status an_recipe_parse(an_ctx *ctx, const char *source, const char *yaml, size_t len, int n_overrides,
                          const char *const *overrides, an_recipe *out) {
    AN_CHECK(ctx, source && (yaml || len == 0) && out && n_overrides >= 0 && (overrides || n_overrides == 0),
             AN_ERR_INTERNAL, "an_recipe_parse: bad arguments");
    recipe_state st = {.ctx = ctx, .file = source};
    an_recipe r = {0};
    an_status s = AN_OK;
    for (int i = 0; i < K_COUNT && s == AN_OK; i++)
        if (!recipe_copy_field(&r, &recipe_defaults, i))
            s = an_error_set(ctx, AN_ERR_INTERNAL, __FILE__, __LINE__, "out of memory");
    recipe_walker w = {.st = &st, .r = &r, .origin = ORIGIN_FILE};
    if (s == AN_OK) s = apply_file(&w, yaml ? yaml : "", len);
    w.origin = ORIGIN_COMMAND_LINE;
    for (int i = 0; s == AN_OK && i < n_overrides; i++) s = apply_override(&w, overrides[i]);
    if (s == AN_OK) s = recipe_resolve(&st, &r);
    if (s != AN_OK) {
        an_recipe_free(&r);
        return s;
    }
    *out = r;
    return AN_OK;
}

an_status an_recipe_load(an_ctx *ctx, const char *path, int n_overrides, const char *const *overrides,
                         an_recipe *out) {
    AN_CHECK(ctx, path && out, AN_ERR_INTERNAL, "an_recipe_load: bad arguments");
    FILE *f = fopen(path, "rb");
    AN_CHECK(ctx, f, AN_ERR_INPUT, "%s: cannot open the recipe: %s", path, strerror(errno));
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int read_errno = 0;
    for (;;) {
        if (len + 4096 > cap) {
            cap = cap ? cap * 2 : 65536;
            char *grown = realloc(buf, cap);
            if (!grown) {
                free(buf);
                fclose(f);
                AN_CHECK(ctx, 0, AN_ERR_INTERNAL, "out of memory reading %s", path);
            }
            buf = grown;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0) {
            if (ferror(f)) read_errno = errno ? errno : EIO;
            break;
        }
    }
    fclose(f);
    if (read_errno) {
        free(buf);
        AN_CHECK(ctx, 0, AN_ERR_INPUT, "%s: cannot read the recipe: %s", path, strerror(read_errno));
    }
    an_status s = an_recipe_parse(ctx, path, buf, len, n_overrides, overrides, out);
    free(buf);
    return s;
}
