/* values.c — one YAML node into the value of one recipe key: scalars typed by the key (integers,
 * numbers, booleans, strings, choices), lists, lora.targets, optimizer.betas, checkpoint.resume.
 *
 * Rules: numbers, integers and booleans must be plain (unquoted) scalars; strings and choices may be
 * quoted. Bounds come from the key table. A failed conversion leaves the field as it was or in a state
 * an_recipe_free releases; the message shows the value as written. */
#include "recipe/internal.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>  /* strcasecmp */

/* ---- scalars ---- */

/* Only digits, signs, '.', 'e' and at least one digit: what parse_number accepts when in range. */
static bool looks_numeric(const char *t) {
    bool digit = false;
    for (const char *q = t; *q; q++) {
        if (isdigit((unsigned char)*q)) digit = true;
        else if (!strchr("+-.eE", *q)) return false;
    }
    return digit;
}

/* The scalar as the user wrote it, for messages: numbers as written, anything else in double quotes,
 * control characters escaped, long values cut. */
static const char *shown(const yaml_node_t *n, char *buf, size_t size) {
    const char *t = node_text(n);
    bool quote = !node_is_plain(n) || !looks_numeric(t);
    size_t o = 0;
    if (quote) buf[o++] = '"';
    for (; *t && o + 8 < size; t++) {
        unsigned char c = (unsigned char)*t;
        if (o > 60) {
            o += (size_t)snprintf(buf + o, size - o, "...");
            break;
        }
        if (c == '"' || c == '\\') o += (size_t)snprintf(buf + o, size - o, "\\%c", c);
        else if (c == '\n') o += (size_t)snprintf(buf + o, size - o, "\\n");
        else if (c < 0x20) o += (size_t)snprintf(buf + o, size - o, "\\x%02x", c);
        else buf[o++] = (char)c;
    }
    if (quote) buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}

/* Fails unless `n` is a scalar usable as `key`'s value; `expected` is "a number", "true or false", ... */
static an_status want_scalar_as(recipe_walker *w, const char *key, const yaml_node_t *n, const char *expected) {
    if (node_is_null(n)) return NODE_FAIL(w, n, "%s has no value (expected %s)", key, expected);
    if (!node_is_scalar(n)) return NODE_FAIL(w, n, "%s is %s, expected %s", key, node_kind(n), expected);
    if (strlen(node_text(n)) != n->data.scalar.length) return NODE_FAIL(w, n, "%s contains a NUL character", key);
    return AN_OK;
}

static an_status want_scalar(recipe_walker *w, int id, const yaml_node_t *n, const char *expected) {
    return want_scalar_as(w, recipe_keys[id].path, n, expected);
}

/* A scalar that is not `what` ("a number", "an integer", "true or false"); quoted ones get a hint. */
static an_status not_a_as(recipe_walker *w, const char *label, const yaml_node_t *n, const char *what) {
    char buf[96];
    const char *hint = !node_is_plain(n) ? " (it is quoted; write it without quotes)"
                       : looks_numeric(node_text(n)) && !strcmp(what, "a number") ? " (out of range)"
                                                                                  : "";
    return NODE_FAIL(w, n, "%s = %s is not %s%s", label, shown(n, buf, sizeof buf), what, hint);
}

static an_status not_a(recipe_walker *w, int id, const yaml_node_t *n, const char *what) {
    return not_a_as(w, recipe_keys[id].path, n, what);
}

static bool parse_int(const char *t, int64_t *out) {
    const char *p = t + (*t == '-' || *t == '+');
    if (!isdigit((unsigned char)*p)) return false;
    for (const char *q = p; *q; q++)
        if (!isdigit((unsigned char)*q)) return false;
    errno = 0;
    long long v = strtoll(t, NULL, 10);
    if (errno == ERANGE) return false;
    *out = v;
    return true;
}

/* Decimal or exponent notation only: no hex, inf or nan. */
static bool parse_number(const char *t, double *out) {
    if (!looks_numeric(t)) return false;
    char *end;
    errno = 0;
    double v = strtod(t, &end);
    if (*end || errno == ERANGE || !isfinite(v)) return false;
    *out = v;
    return true;
}

static int parse_bool(const char *t) {
    if (!strcmp(t, "true") || !strcmp(t, "True") || !strcmp(t, "TRUE")) return 1;
    if (!strcmp(t, "false") || !strcmp(t, "False") || !strcmp(t, "FALSE")) return 0;
    return -1;
}

/* "must be >= 1", "must be in [0, 1)", ... for the key's bounds. */
static void describe_bounds(const recipe_key *k, char *buf, size_t size) {
    bool int_kind = k->kind == KIND_INT;
    if (isinf(k->max) || k->max > 9e18)
        snprintf(buf, size, "must be %s %.17g", k->min_open ? ">" : ">=", k->min);
    else if (int_kind)
        snprintf(buf, size, "must be between %.17g and %.17g", k->min, k->max);
    else
        snprintf(buf, size, "must be in %c%.17g, %.17g%c", k->min_open ? '(' : '[', k->min, k->max,
                 k->max_open ? ')' : ']');
}

static bool in_bounds(const recipe_key *k, double v) {
    return (k->min_open ? v > k->min : v >= k->min) && (k->max_open ? v < k->max : v <= k->max);
}

static an_status get_number(recipe_walker *w, int id, const yaml_node_t *n, const char *label, double *out) {
    AN_TRY(want_scalar_as(w, label, n, "a number"));
    const recipe_key *k = &recipe_keys[id];
    char buf[96], bounds[96];
    if (!node_is_plain(n) || !parse_number(node_text(n), out)) return not_a_as(w, label, n, "a number");
    describe_bounds(k, bounds, sizeof bounds);
    if (!in_bounds(k, *out)) return NODE_FAIL(w, n, "%s = %s %s", label, shown(n, buf, sizeof buf), bounds);
    return AN_OK;
}

/* ---- enum spellings ---- */

/* Common other spellings of our enum values, offered as suggestions (never accepted silently). */
static const char *const value_aliases[][2] = {
    {"bf16", "bfloat16"}, {"fp16", "float16"}, {"f16", "float16"},  {"half", "float16"}, {"fp32", "float32"},
    {"f32", "float32"},   {"float", "float32"}, {"gpu", "cuda"},    {"peft", "lora"},    {"adam", "adamw"},
    {"prompt-completion", "prompt_completion"}, {"safetensors", "safetensors_merged"},
};

static const char *suggest_value(int id, const char *t) {
    const recipe_key *k = &recipe_keys[id];
    const char *names[16];
    for (int i = 0; i < k->n_values; i++) names[i] = k->values[i].name;
    for (size_t a = 0; a < sizeof value_aliases / sizeof *value_aliases; a++)
        for (int i = 0; i < k->n_values; i++)
            if (!strcasecmp(t, value_aliases[a][0]) && !strcmp(names[i], value_aliases[a][1])) return names[i];
    for (int i = 0; i < k->n_values; i++)
        if (!strcasecmp(t, names[i])) return names[i];
    return recipe_closest(t, names, k->n_values);
}

static an_status get_enum(recipe_walker *w, int id, const yaml_node_t *n, int *out) {
    const recipe_key *k = &recipe_keys[id];
    char allowed[256] = "", buf[96], hint[96] = "";
    for (int i = 0; i < k->n_values; i++) {
        if (n && node_is_scalar(n) && !strcmp(node_text(n), k->values[i].name)) {
            *out = k->values[i].value;
            return AN_OK;
        }
        size_t used = strlen(allowed);
        snprintf(allowed + used, sizeof allowed - used, "%s%s", i ? ", " : "", k->values[i].name);
    }
    char expected[300];
    snprintf(expected, sizeof expected, "one of %s", allowed);
    AN_TRY(want_scalar(w, id, n, expected));
    const char *s = suggest_value(id, node_text(n));
    if (s) snprintf(hint, sizeof hint, " (did you mean %s?)", s);
    return NODE_FAIL(w, n, "%s = %s is not one of %s%s", k->path, shown(n, buf, sizeof buf), allowed, hint);
}

/* ---- one key ---- */

static an_status set_string(recipe_walker *w, int id, const yaml_node_t *n, char **field) {
    const recipe_key *k = &recipe_keys[id];
    if (k->optional && node_is_null(n)) {
        free(*field);
        *field = NULL;
        return AN_OK;
    }
    AN_TRY(want_scalar(w, id, n, k->optional ? "a path or null" : "a string"));
    if (!*node_text(n)) return NODE_FAIL(w, n, "%s is an empty string", k->path);
    char *copy = strdup(node_text(n));
    AN_CHECK(w->st->ctx, copy, AN_ERR_INTERNAL, "out of memory");
    free(*field);
    *field = copy;
    return AN_OK;
}

/* A scalar, or a sequence of scalars, as a list of strings. */
static an_status get_list(recipe_walker *w, int id, const yaml_node_t *n, const char *expected,
                          an_recipe_strings *out) {
    const char *key = recipe_keys[id].path;
    if (node_is_null(n) || (n->type != YAML_SCALAR_NODE && n->type != YAML_SEQUENCE_NODE))
        return node_is_null(n) ? NODE_FAIL(w, n, "%s has no value (expected %s)", key, expected)
                               : NODE_FAIL(w, n, "%s is %s, expected %s", key, node_kind(n), expected);
    int count = n->type == YAML_SCALAR_NODE ? 1 : (int)(n->data.sequence.items.top - n->data.sequence.items.start);
    if (count == 0) return NODE_FAIL(w, n, "%s is an empty list (expected %s)", key, expected);
    out->items = calloc((size_t)count, sizeof *out->items);
    AN_CHECK(w->st->ctx, out->items, AN_ERR_INTERNAL, "out of memory");
    for (int i = 0; i < count; i++) {
        const yaml_node_t *item =
            n->type == YAML_SCALAR_NODE ? n : yaml_document_get_node(w->doc, n->data.sequence.items.start[i]);
        if (node_is_null(item) || !node_is_scalar(item))
            return NODE_FAIL(w, item, "%s: item %d is %s, expected %s", key, i + 1,
                             node_is_null(item) ? "empty" : node_kind(item), expected);
        AN_TRY(want_scalar(w, id, item, expected));
        out->items[i] = strdup(node_text(item));
        AN_CHECK(w->st->ctx, out->items[i], AN_ERR_INTERNAL, "out of memory");
        out->n = i + 1;
    }
    return AN_OK;
}

/* "q_prj" -> " (did you mean q_proj?)", or "". */
static void target_hint(const char *t, char *hint, size_t size) {
    const char *names[16] = {"all-linear"};
    for (int m = 0; m < recipe_n_lora_modules; m++) names[m + 1] = recipe_lora_modules[m];
    const char *guess = recipe_closest(t, names, recipe_n_lora_modules + 1);
    if (guess) snprintf(hint, size, " (did you mean %s?)", guess);
    else hint[0] = '\0';
}

static an_status check_targets(recipe_walker *w, const yaml_node_t *n, const an_recipe_strings *list,
                               bool *all_linear) {
    static const char expected[] =
        "all-linear or a list of module names (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)";
    *all_linear = false;
    for (int i = 0; i < list->n; i++) {
        const char *t = list->items[i];
        if (!strcmp(t, "all-linear")) {
            if (n->type != YAML_SCALAR_NODE)
                return NODE_FAIL(w, n, "lora.targets: all-linear stands alone, not in a list");
            *all_linear = true;
            continue;
        }
        bool known = false;
        for (int m = 0; m < recipe_n_lora_modules; m++) known |= !strcmp(t, recipe_lora_modules[m]);
        if (!known) {
            char hint[64];
            target_hint(t, hint, sizeof hint);
            return NODE_FAIL(w, n, "lora.targets: '%s' is not a linear layer anneal can adapt%s; expected %s%s", t,
                             hint, expected, strchr(t, ',') ? " (a list is written [a, b])" : "");
        }
        for (int j = 0; j < i; j++)
            if (!strcmp(t, list->items[j])) return NODE_FAIL(w, n, "lora.targets lists '%s' twice", t);
    }
    return AN_OK;
}

static an_status set_targets(recipe_walker *w, int id, const yaml_node_t *n) {
    an_recipe_strings list = {0};
    bool all_linear = false;
    an_status s = get_list(w, id, n, "all-linear or a list of module names", &list);
    if (s == AN_OK) s = check_targets(w, n, &list, &all_linear);
    if (s == AN_OK) {
        recipe_free_field(w->r, id);
        w->r->lora.targets_all_linear = all_linear;
        if (!all_linear) {
            w->r->lora.targets = list; /* the field owns it now */
            return AN_OK;
        }
    }
    for (int i = 0; i < list.n; i++) free(list.items[i]);
    free(list.items);
    return s;
}

static an_status set_resume(recipe_walker *w, int id, const yaml_node_t *n) {
    AN_TRY(want_scalar(w, id, n, "auto, never or a checkpoint directory"));
    const char *t = node_text(n);
    if (!*t)
        return NODE_FAIL(w, n, "checkpoint.resume is an empty string (expected auto, never or a checkpoint directory)");
    an_recipe *r = w->r;
    if (!strcmp(t, "auto") || !strcmp(t, "never")) {
        recipe_free_field(r, id);
        r->checkpoint.resume = !strcmp(t, "auto") ? AN_RECIPE_RESUME_AUTO : AN_RECIPE_RESUME_NEVER;
        return AN_OK;
    }
    if (!strchr(t, '/')) {
        static const char *const modes[] = {"auto", "never"};
        const char *guess = recipe_closest(t, modes, 2);
        char buf[96];
        if (guess)
            return NODE_FAIL(w, n, "checkpoint.resume = %s is not auto or never (did you mean %s?)",
                             shown(n, buf, sizeof buf), guess);
        return NODE_FAIL(w, n, "checkpoint.resume = %s is not auto, never or a checkpoint directory (write a directory "
                         "with a '/', like ./%s)", shown(n, buf, sizeof buf), t);
    }
    char *copy = strdup(t);
    AN_CHECK(w->st->ctx, copy, AN_ERR_INTERNAL, "out of memory");
    recipe_free_field(r, id);
    r->checkpoint.resume = AN_RECIPE_RESUME_PATH;
    r->checkpoint.resume_path = copy;
    return AN_OK;
}

static an_status set_pair(recipe_walker *w, int id, const yaml_node_t *n, double *field) {
    const char *key = recipe_keys[id].path;
    if (node_is_null(n) || n->type != YAML_SEQUENCE_NODE ||
        n->data.sequence.items.top - n->data.sequence.items.start != 2) {
        char got[64];
        if (n && n->type == YAML_SEQUENCE_NODE)
            snprintf(got, sizeof got, "a list of %d", (int)(n->data.sequence.items.top - n->data.sequence.items.start));
        else snprintf(got, sizeof got, "%s", node_is_null(n) ? "empty" : node_kind(n));
        return NODE_FAIL(w, n, "%s is %s, expected a list of two numbers like [0.9, 0.999]", key, got);
    }
    double v[2];
    for (int i = 0; i < 2; i++) {
        char label[64];
        snprintf(label, sizeof label, "%s[%d]", key, i);
        AN_TRY(get_number(w, id, yaml_document_get_node(w->doc, n->data.sequence.items.start[i]), label, &v[i]));
    }
    field[0] = v[0], field[1] = v[1];
    return AN_OK;
}

static an_status reset_section(an_recipe *r, recipe_state *st, int section) {
    for (int i = section + 1; i < K_COUNT && recipe_section_of(i) == section; i++) {
        AN_CHECK(st->ctx, recipe_copy_field(r, &recipe_defaults, i), AN_ERR_INTERNAL, "out of memory");
        st->source[i] = (recipe_source){ORIGIN_DEFAULT, 0, NULL};
    }
    return AN_OK;
}

an_status recipe_apply_value(recipe_walker *w, int id, const yaml_node_t *n) {
    const recipe_key *k = &recipe_keys[id];
    void *field = recipe_field(w->r, id);
    char buf[96], bounds[96];
    switch (k->kind) {
    case KIND_SECTION:
        if (node_is_null(n)) {
            /* an empty block: every key of the section at its default; `export:` alone means no export */
            AN_TRY(reset_section(w->r, w->st, id));
            if (id == K_EXPORT) w->r->export_opts.enabled = false;
            break;
        }
        if (n->type != YAML_MAPPING_NODE)
            return NODE_FAIL(w, n, "'%s' is %s, expected a block of keys (a mapping)", k->path, node_kind(n));
        if (id == K_EXPORT) w->r->export_opts.enabled = true;
        w->st->source[id] = recipe_here(w, n);
        return recipe_apply_mapping(w, id, n);
    case KIND_INT: {
        int64_t v;
        AN_TRY(want_scalar(w, id, n, "an integer"));
        if (!node_is_plain(n) || !parse_int(node_text(n), &v)) {
            double d;
            /* 1e3 or 99999999999999999999: a whole number, but not one we read as an integer */
            bool whole = node_is_plain(n) && parse_number(node_text(n), &d) && d == floor(d);
            return whole ? NODE_FAIL(w, n, "%s = %s is not an integer%s", k->path, shown(n, buf, sizeof buf),
                                     fabs(d) < 9e18 ? " (write it in digits)" : " (out of range)")
                         : not_a(w, id, n, "an integer");
        }
        describe_bounds(k, bounds, sizeof bounds);
        if (!in_bounds(k, (double)v)) return NODE_FAIL(w, n, "%s = %s %s", k->path, shown(n, buf, sizeof buf), bounds);
        *(int64_t *)field = v;
        break;
    }
    case KIND_NUMBER: AN_TRY(get_number(w, id, n, k->path, field)); break;
    case KIND_BOOL: {
        AN_TRY(want_scalar(w, id, n, "true or false"));
        int b = node_is_plain(n) ? parse_bool(node_text(n)) : -1;
        if (b < 0) return not_a(w, id, n, "true or false");
        *(bool *)field = b;
        break;
    }
    case KIND_STRING: AN_TRY(set_string(w, id, n, field)); break;
    case KIND_ENUM: AN_TRY(get_enum(w, id, n, field)); break;
    case KIND_STRINGS: {
        an_recipe_strings list = {0};
        an_status s = get_list(w, id, n, "a path or a list of paths", &list);
        recipe_free_field(w->r, id);
        *(an_recipe_strings *)field = list; /* freed with the recipe even when s failed */
        AN_TRY(s);
        break;
    }
    case KIND_TARGETS: AN_TRY(set_targets(w, id, n)); break;
    case KIND_PAIR: AN_TRY(set_pair(w, id, n, field)); break;
    case KIND_RESUME: AN_TRY(set_resume(w, id, n)); break;
    }
    w->st->source[id] = recipe_here(w, n);
    return AN_OK;
}

