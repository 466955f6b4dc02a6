/* unicode.c — UTF-8 checks, NFC (decompose, canonical order, compose; UAX #15), lossy repair and
 * the split-pattern translation declared in unicode.h. The data comes from unicode_tables.c. */
#include "data/unicode.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool an_text_reserve(an_text *t, size_t extra) {
    if (t->cap - t->len >= extra) return true;
    size_t cap = t->cap ? t->cap : 64;
    while (cap - t->len < extra) {
        if (cap > SIZE_MAX / 2) return false;
        cap *= 2;
    }
    char *p = realloc(t->data, cap);
    if (!p) return false;
    t->data = p;
    t->cap = cap;
    return true;
}

bool an_text_append(an_text *t, const void *bytes, size_t n) {
    if (!an_text_reserve(t, n)) return false;
    if (n) memcpy(t->data + t->len, bytes, n);
    t->len += n;
    return true;
}

/* ---- UTF-8 ---------------------------------------------------------------------------------- */

/* Length of the well-formed sequence at s[0..n), or 0 with *valid_prefix set to how many of its bytes
 * (lead included) were acceptable before it went wrong. */
static size_t utf8_sequence(const uint8_t *s, size_t n, size_t *valid_prefix) {
    uint8_t b = s[0];
    size_t need;
    uint8_t lo = 0x80, hi = 0xBF;
    *valid_prefix = 0;
    if (b < 0x80) return 1;
    if (b < 0xC2) return 0;
    if (b < 0xE0) {
        need = 1;
    } else if (b < 0xF0) {
        need = 2;
        if (b == 0xE0) lo = 0xA0;
        if (b == 0xED) hi = 0x9F;
    } else if (b < 0xF5) {
        need = 3;
        if (b == 0xF0) lo = 0x90;
        if (b == 0xF4) hi = 0x8F;
    } else {
        return 0;
    }
    *valid_prefix = 1;
    for (size_t k = 1; k <= need; k++) {
        if (k >= n) return 0;
        uint8_t c = s[k];
        if (k == 1 ? (c < lo || c > hi) : (c & 0xC0) != 0x80) return 0;
        *valid_prefix = k + 1;
    }
    return need + 1;
}

size_t an_unicode_utf8_invalid_at(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        if (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (!(w & 0x8080808080808080ull)) {
                i += 8;
                continue;
            }
        }
        size_t prefix, len = utf8_sequence(s + i, n - i, &prefix);
        if (!len) return i;
        i += len;
    }
    return n;
}

uint32_t an_unicode_utf8_decode(const uint8_t *s, size_t *len) {
    uint8_t b = s[0];
    if (b < 0x80) {
        *len = 1;
        return b;
    }
    if (b < 0xE0) {
        *len = 2;
        return (uint32_t)(b & 0x1F) << 6 | (s[1] & 0x3F);
    }
    if (b < 0xF0) {
        *len = 3;
        return (uint32_t)(b & 0x0F) << 12 | (uint32_t)(s[1] & 0x3F) << 6 | (s[2] & 0x3F);
    }
    *len = 4;
    return (uint32_t)(b & 0x07) << 18 | (uint32_t)(s[1] & 0x3F) << 12 | (uint32_t)(s[2] & 0x3F) << 6 | (s[3] & 0x3F);
}

int an_unicode_utf8_encode(uint32_t cp, uint8_t out[4]) {
    if (cp < 0x80) {
        out[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (uint8_t)(0xC0 | cp >> 6);
        out[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xE0 | cp >> 12);
        out[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (uint8_t)(0xF0 | cp >> 18);
    out[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

bool an_unicode_append_lossy(an_text *out, const uint8_t *s, size_t n) {
    static const uint8_t replacement[3] = {0xEF, 0xBF, 0xBD};
    if (!n) return true; /* s may be NULL */
    size_t i = 0, run = 0; /* s[run..i) is valid and not yet copied */
    while (i < n) {
        size_t prefix, len = utf8_sequence(s + i, n - i, &prefix);
        if (len) {
            i += len;
            continue;
        }
        if (!an_text_append(out, s + run, i - run) || !an_text_append(out, replacement, 3)) return false;
        i += prefix ? prefix : 1;
        run = i;
    }
    return an_text_append(out, s + run, n - run);
}

bool an_unicode_is_space(uint32_t cp) {
    if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D);
    if (cp < 0x85) return false;
    return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
           cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

/* ---- NFC ------------------------------------------------------------------------------------ */

enum { SBASE = 0xAC00, LBASE = 0x1100, VBASE = 0x1161, TBASE = 0x11A7, LCOUNT = 19, VCOUNT = 21, TCOUNT = 28 };
enum { NCOUNT = VCOUNT * TCOUNT, SCOUNT = LCOUNT * NCOUNT };

static uint8_t ccc_of(uint32_t cp) {
    if (cp < 0x300) return 0;
    int lo = 0, hi = an_unicode_ccc_count - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (cp < an_unicode_ccc[mid].first) hi = mid - 1;
        else if (cp > an_unicode_ccc[mid].last) lo = mid + 1;
        else return an_unicode_ccc[mid].ccc;
    }
    return 0;
}

static bool nfc_not_yes(uint32_t cp) {
    int lo = 0, hi = an_unicode_nfc_not_yes_count - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (cp < an_unicode_nfc_not_yes[mid].first) hi = mid - 1;
        else if (cp > an_unicode_nfc_not_yes[mid].last) lo = mid + 1;
        else return true;
    }
    return false;
}

static const an_unicode_decomposition *decomposition_of(uint32_t cp) {
    int lo = 0, hi = an_unicode_decomposition_count - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (cp < an_unicode_decompositions[mid].cp) hi = mid - 1;
        else if (cp > an_unicode_decompositions[mid].cp) lo = mid + 1;
        else return &an_unicode_decompositions[mid];
    }
    return NULL;
}

/* The primary composite of (a, b), or 0 when there is none. */
static uint32_t compose(uint32_t a, uint32_t b) {
    if (a >= LBASE && a < LBASE + LCOUNT && b >= VBASE && b < VBASE + VCOUNT)
        return SBASE + ((a - LBASE) * VCOUNT + (b - VBASE)) * TCOUNT;
    if (a >= SBASE && a < SBASE + SCOUNT && (a - SBASE) % TCOUNT == 0 && b > TBASE && b < TBASE + TCOUNT)
        return a + (b - TBASE);
    int lo = 0, hi = an_unicode_composition_count - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        const an_unicode_composition *c = &an_unicode_compositions[mid];
        if (a < c->first || (a == c->first && b < c->second)) hi = mid - 1;
        else if (a > c->first || b > c->second) lo = mid + 1;
        else return c->composite;
    }
    return 0;
}

bool an_unicode_nfc_quick_check(const uint8_t *s, size_t n) {
    uint8_t last = 0;
    for (size_t i = 0; i < n;) {
        if (s[i] < 0xCC) { /* below U+0300: class 0 and never changed by NFC */
            last = 0;
            i += s[i] < 0x80 ? 1 : 2;
            continue;
        }
        size_t len;
        uint32_t cp = an_unicode_utf8_decode(s + i, &len);
        i += len;
        uint8_t c = ccc_of(cp);
        if ((c && last > c) || nfc_not_yes(cp)) return false;
        last = c;
    }
    return true;
}

typedef struct {
    uint32_t *cp;
    size_t n, cap;
} cp_buf;

static bool push_cp(cp_buf *b, uint32_t cp) {
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        uint32_t *p = realloc(b->cp, cap * sizeof *p);
        if (!p) return false;
        b->cp = p;
        b->cap = cap;
    }
    b->cp[b->n++] = cp;
    return true;
}

static bool decompose(cp_buf *b, uint32_t cp, int depth) {
    if (cp >= SBASE && cp < SBASE + SCOUNT) {
        uint32_t s = cp - SBASE, t = s % TCOUNT;
        if (!push_cp(b, LBASE + s / NCOUNT) || !push_cp(b, VBASE + (s % NCOUNT) / TCOUNT)) return false;
        return t == 0 || push_cp(b, TBASE + t);
    }
    const an_unicode_decomposition *d = cp >= 0xC0 && depth < 8 ? decomposition_of(cp) : NULL;
    if (!d) return push_cp(b, cp);
    return decompose(b, d->first, depth + 1) && (d->second == 0 || decompose(b, d->second, depth + 1));
}

/* Stable sort of a run of non-starters by combining class: insertion sort for short runs, a
 * counting sort over the 255 classes for long ones (so adversarial input stays linear). */
static bool order_run(uint32_t *cp, uint8_t *cls, size_t n) {
    if (n < 32) {
        for (size_t i = 1; i < n; i++) {
            uint32_t c = cp[i];
            uint8_t k = cls[i];
            size_t j = i;
            for (; j > 0 && cls[j - 1] > k; j--) {
                cp[j] = cp[j - 1];
                cls[j] = cls[j - 1];
            }
            cp[j] = c;
            cls[j] = k;
        }
        return true;
    }
    size_t start[257] = {0};
    for (size_t i = 0; i < n; i++) start[cls[i] + 1]++;
    for (int k = 1; k <= 256; k++) start[k] += start[k - 1];
    uint32_t *tmp = malloc(n * sizeof *tmp);
    if (!tmp) return false;
    for (size_t i = 0; i < n; i++) tmp[start[cls[i]]++] = cp[i];
    memcpy(cp, tmp, n * sizeof *tmp);
    free(tmp);
    for (size_t i = 0; i < n; i++) cls[i] = ccc_of(cp[i]);
    return true;
}

bool an_unicode_nfc(const uint8_t *s, size_t n, an_text *out, uint32_t **scratch, size_t *scratch_cap) {
    cp_buf b = {*scratch, 0, *scratch_cap};
    bool ok = true;
    for (size_t i = 0; i < n && ok;) {
        size_t len;
        uint32_t cp = an_unicode_utf8_decode(s + i, &len);
        i += len;
        ok = decompose(&b, cp, 0);
    }
    uint8_t *cls = ok ? malloc(b.n ? b.n : 1) : NULL;
    ok = ok && cls;
    for (size_t i = 0; ok && i < b.n; i++) cls[i] = ccc_of(b.cp[i]);
    for (size_t i = 0; ok && i < b.n;) { /* canonical ordering of each run of non-starters */
        if (!cls[i]) {
            i++;
            continue;
        }
        size_t j = i;
        while (j < b.n && cls[j]) j++;
        ok = order_run(b.cp + i, cls + i, j - i);
        i = j;
    }
    size_t kept = 0;
    if (ok && b.n) { /* canonical composition */
        size_t starter = 0;
        int last = cls[0] ? 256 : 0; /* a leading non-starter has no starter to join */
        kept = 1;
        for (size_t i = 1; i < b.n; i++) {
            uint32_t c = b.cp[i];
            int k = cls[i];
            uint32_t composite = (last < k || last == 0) ? compose(b.cp[starter], c) : 0;
            if (composite) {
                b.cp[starter] = composite;
                continue;
            }
            if (k == 0) starter = kept;
            last = k;
            b.cp[kept++] = c;
        }
    }
    for (size_t i = 0; ok && i < kept; i++) {
        uint8_t u[4];
        ok = an_text_append(out, u, (size_t)an_unicode_utf8_encode(b.cp[i], u));
    }
    free(cls);
    *scratch = b.cp;
    *scratch_cap = b.cap;
    return ok;
}

/* ---- split patterns ------------------------------------------------------------------------- */

static bool emit(an_text *t, const char *s) { return an_text_append(t, s, strlen(s)); }

static bool emit_class(an_text *t, bool in_class, bool negate, const char *base, const char *extra) {
    if (in_class) return emit(t, base) && emit(t, extra);
    return emit(t, negate ? "[^" : "[") && emit(t, base) && emit(t, extra) && emit(t, "]");
}

char *an_unicode_translate_regex(const char *p, size_t n, char *why, size_t why_len) {
    an_text t = {0};
    bool in_class = false, ok = true;
    why[0] = '\0';
    for (size_t i = 0; i < n && ok;) {
        char c = p[i];
        if (c == '\\') {
            if (i + 1 >= n) {
                snprintf(why, why_len, "pattern ends with a lone backslash");
                ok = false;
                break;
            }
            char d = p[i + 1];
            if (d == 's') {
                ok = in_class ? emit(&t, an_unicode_regex_space) : emit_class(&t, false, false, an_unicode_regex_space, "");
                i += 2;
            } else if (d == 'S' && !in_class) {
                ok = emit_class(&t, false, true, an_unicode_regex_space, "");
                i += 2;
            } else if ((d == 'p' || d == 'P') && i + 4 < n && p[i + 2] == '{' && (p[i + 3] == 'L' || p[i + 3] == 'N') &&
                       p[i + 4] == '}' && (d == 'p' || !in_class)) {
                bool letter = p[i + 3] == 'L';
                ok = emit_class(&t, in_class, d == 'P', letter ? "\\p{L}" : "\\p{N}",
                                letter ? an_unicode_regex_letter_extra : an_unicode_regex_number_extra);
                i += 5;
            } else if (d == 'u') { /* Oniguruma's \uHHHH */
                char hex[5] = {0};
                if (i + 6 <= n) memcpy(hex, p + i + 2, 4);
                char buf[16];
                snprintf(buf, sizeof buf, "\\x{%s}", hex);
                if (strspn(hex, "0123456789abcdefABCDEF") != 4) {
                    snprintf(why, why_len, "malformed \\u escape");
                    ok = false;
                    break;
                }
                ok = emit(&t, buf);
                i += 6;
            } else {
                ok = an_text_append(&t, p + i, 2);
                i += 2;
            }
            continue;
        }
        if (c == '[' && !in_class) {
            in_class = true;
            size_t j = i + 1;
            if (j < n && p[j] == '^') j++;
            if (j < n && p[j] == ']') j++; /* a leading ] is a literal */
            ok = an_text_append(&t, p + i, j - i);
            i = j;
            continue;
        }
        if (in_class && c == '[') {
            if (i + 1 < n && p[i + 1] == ':') { /* POSIX class [:name:] */
                const char *end = NULL;
                for (size_t j = i + 2; j + 1 < n; j++)
                    if (p[j] == ':' && p[j + 1] == ']') {
                        end = p + j + 2;
                        break;
                    }
                if (end) {
                    ok = an_text_append(&t, p + i, (size_t)(end - (p + i)));
                    i = (size_t)(end - p);
                    continue;
                }
            }
            snprintf(why, why_len, "nested character classes are not supported");
            ok = false;
            break;
        }
        if (in_class && c == '&' && i + 1 < n && p[i + 1] == '&') {
            snprintf(why, why_len, "class intersection (&&) is not supported");
            ok = false;
            break;
        }
        if (in_class && c == ']') in_class = false;
        ok = an_text_append(&t, p + i, 1);
        i++;
    }
    if (ok && !an_text_append(&t, "", 1)) ok = false;
    if (!ok) {
        if (!why[0]) snprintf(why, why_len, "out of memory");
        free(t.data);
        return NULL;
    }
    return t.data;
}
