/* write.c — a resolved an_recipe back to YAML: every key, in table order, with the value the run
 * uses; keys that cannot apply (recipe_inactive_reason) are written as comments saying why.
 *
 * Rules: the output loads back to an identical struct. Numbers are written with the fewest digits
 * that read back to the same double; strings are plain when that is unambiguous, else double-quoted
 * with escapes. Files are written to a temporary name and renamed into place. */
#include "recipe/internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>  /* getpid, fsync */

static bool plain_safe(const char *s) {
    static const char *const special[] = {"null", "Null", "NULL", "~",     "true", "True", "TRUE", "false",
                                          "False", "FALSE", "yes",  "Yes",  "YES", "no",   "No",   "NO",
                                          "on",   "On",    "ON",   "off",  "Off", "OFF",  "y",    "n"};
    if (!*s || *s == '-' || *s == '+') return false;
    for (size_t i = 0; i < sizeof special / sizeof *special; i++)
        if (!strcmp(s, special[i])) return false;
    for (const char *p = s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || strchr("_./-+", *p)))
            return false;
    return true;
}

static void put_string(FILE *f, const char *s) {
    if (!s) {
        fputs("null", f);
        return;
    }
    if (plain_safe(s)) {
        fputs(s, f);
        return;
    }
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') fprintf(f, "\\%c", *p);
        else if (*p < 0x20 || *p == 0x7f) fprintf(f, "\\x%02x", *p);
        else fputc(*p, f);
    }
    fputc('"', f);
}

static void put_number(FILE *f, double v) {
    char buf[40];
    for (int digits = 1; digits <= 17; digits++) {
        snprintf(buf, sizeof buf, "%.*g", digits, v);
        if (strtod(buf, NULL) == v) break;
    }
    fputs(buf, f);
    if (!strpbrk(buf, ".e")) fputs(".0", f); /* reads as a number either way; looks like one too */
}

static void put_list(FILE *f, const an_recipe_strings *list) {
    fputc('[', f);
    for (int i = 0; i < list->n; i++) {
        if (i) fputs(", ", f);
        put_string(f, list->items[i]);
    }
    fputc(']', f);
}

static void put_value(FILE *f, const an_recipe *r, int id) {
    const void *field = recipe_field_const(r, id);
    switch (recipe_keys[id].kind) {
    case KIND_SECTION: break;
    case KIND_INT: fprintf(f, "%lld", (long long)*(const int64_t *)field); break;
    case KIND_NUMBER: put_number(f, *(const double *)field); break;
    case KIND_BOOL: fputs(*(const bool *)field ? "true" : "false", f); break;
    case KIND_STRING: put_string(f, *(char *const *)field); break;
    case KIND_ENUM: {
        const char *name = recipe_enum_name(id, *(const int *)field);
        fputs(name ? name : "invalid", f); /* only a struct not made by an_recipe_load can hold another value */
        break;
    }
    case KIND_STRINGS: put_list(f, field); break;
    case KIND_TARGETS:
        if (r->lora.targets_all_linear) fputs("all-linear", f);
        else put_list(f, field);
        break;
    case KIND_PAIR:
        fputc('[', f);
        put_number(f, ((const double *)field)[0]);
        fputs(", ", f);
        put_number(f, ((const double *)field)[1]);
        fputc(']', f);
        break;
    case KIND_RESUME:
        if (r->checkpoint.resume == AN_RECIPE_RESUME_PATH) put_string(f, r->checkpoint.resume_path);
        else fputs(r->checkpoint.resume == AN_RECIPE_RESUME_AUTO ? "auto" : "never", f);
        break;
    }
}

an_status an_recipe_to_yaml(an_ctx *ctx, const an_recipe *recipe, char **out) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    AN_CHECK(ctx, f, AN_ERR_INTERNAL, "out of memory");
    fputs("# anneal recipe, fully resolved: every key with the value the run uses, defaults included.\n"
          "# Keys that do not apply are comments that say why. Reference: docs/recipes.md\n",
          f);
    for (int id = 0; id < K_COUNT; id++) {
        const char *leaf = strrchr(recipe_keys[id].path, '.');
        leaf = leaf ? leaf + 1 : recipe_keys[id].path;
        int section = recipe_section_of(id);
        const char *indent = section >= 0 ? "  " : "";
        const char *why = recipe_inactive_reason(recipe, id);
        if (recipe_keys[id].kind == KIND_SECTION) {
            if (why) fprintf(f, "\n# %s: not used (%s)\n", leaf, why);
            else fprintf(f, "\n%s:\n", leaf);
            continue;
        }
        if (section >= 0 && recipe_inactive_reason(recipe, section)) continue; /* the whole block is out */
        if (why) {
            fprintf(f, "%s# %s: not used (%s)\n", indent, leaf, why);
            continue;
        }
        fprintf(f, "%s%s: ", indent, leaf);
        put_value(f, recipe, id);
        fputc('\n', f);
    }
    bool failed = ferror(f);
    fclose(f);
    if (failed) {
        free(buf);
        AN_CHECK(ctx, 0, AN_ERR_INTERNAL, "out of memory writing the recipe");
    }
    *out = buf;
    return AN_OK;
}

an_status an_recipe_write_yaml(an_ctx *ctx, const an_recipe *recipe, const char *path) {
    char *yaml;
    AN_TRY(an_recipe_to_yaml(ctx, recipe, &yaml));
    char tmp[4096];
    int n = snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    if (n < 0 || (size_t)n >= sizeof tmp) {
        free(yaml);
        AN_CHECK(ctx, 0, AN_ERR_INPUT, "%s: path too long", path);
    }
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        int e = errno;
        free(yaml);
        AN_CHECK(ctx, 0, AN_ERR_INPUT, "%s: cannot write the recipe: %s", tmp, strerror(e));
    }
    size_t len = strlen(yaml);
    bool ok = fwrite(yaml, 1, len, f) == len && fflush(f) == 0 && fsync(fileno(f)) == 0;
    int e = errno;
    ok = (fclose(f) == 0) && ok;
    free(yaml);
    if (!ok || rename(tmp, path) != 0) {
        if (ok) e = errno;
        remove(tmp);
        AN_CHECK(ctx, 0, AN_ERR_INPUT, "%s: cannot write the recipe: %s", path, strerror(e));
    }
    return AN_OK;
}
