/* plot.c — metrics.jsonl to an SVG line chart. Plain SVG text: no plotting library needed. */
#include "train/plot.h"

#include <jansson.h>  /* one JSON object per metrics line */
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt/atomic.h"  /* an_atomic_write_text */

typedef struct {
    double *x, *y;
    int n, cap;
} series;

static int push(series *s, double x, double y) {
    if (s->n == s->cap) {
        int cap = s->cap ? 2 * s->cap : 256;
        double *nx = realloc(s->x, (size_t)cap * sizeof *nx);
        if (!nx) return -1;
        s->x = nx;
        double *ny = realloc(s->y, (size_t)cap * sizeof *ny);
        if (!ny) return -1;
        s->y = ny;
        s->cap = cap;
    }
    s->x[s->n] = x;
    s->y[s->n++] = y;
    return 0;
}

/* Appends printf-formatted text to a growing buffer. */
typedef struct {
    char *p;
    size_t len, cap;
    bool failed;
} text;

static void put(text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(text *t, const char *fmt, ...) {
    if (t->failed) return;
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int n = vsnprintf(t->p ? t->p + t->len : NULL, t->p ? t->cap - t->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->failed = true;
            return;
        }
        if (t->p && t->len + (size_t)n < t->cap) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = (t->cap + (size_t)n + 1) * 2;
        char *p = realloc(t->p, cap);
        if (!p) {
            t->failed = true;
            return;
        }
        t->p = p;
        t->cap = cap;
    }
}

enum { W = 720, H = 420, LEFT = 70, RIGHT = 20, TOP = 40, BOTTOM = 50 };

static double px(double x, double x0, double x1) { return LEFT + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT); }
static double py(double y, double y0, double y1) { return H - BOTTOM - (y - y0) / (y1 - y0) * (H - TOP - BOTTOM); }

static void polyline(text *t, const series *s, double x0, double x1, double y0, double y1, const char *color, bool dots) {
    if (s->n == 0) return;
    put(t, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.6\" points=\"", color);
    for (int i = 0; i < s->n; i++) put(t, "%.1f,%.1f ", px(s->x[i], x0, x1), py(s->y[i], y0, y1));
    put(t, "\"/>\n");
    for (int i = 0; dots && i < s->n; i++)
        put(t, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n", px(s->x[i], x0, x1), py(s->y[i], y0, y1), color);
}

an_status an_plot_loss_svg(an_ctx *ctx, const char *metrics_path, const char *svg_path) {
    FILE *f = fopen(metrics_path, "r");
    AN_CHECK(ctx, f != NULL, AN_ERR_INPUT, "%s: cannot open", metrics_path);
    series train = {0}, eval = {0};
    char line[8192];
    int lineno = 0;
    an_status st = AN_OK;
    while (st == AN_OK && fgets(line, sizeof line, f)) {
        lineno++;
        json_error_t err;
        json_t *j = json_loads(line, 0, &err);
        if (!j || !json_is_object(j)) {
            st = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s:%d: not a JSON object", metrics_path, lineno);
            json_decref(j);
            break;
        }
        const char *kind = json_string_value(json_object_get(j, "kind"));
        json_t *step = json_object_get(j, "step");
        json_t *loss = json_object_get(j, kind && strcmp(kind, "eval") == 0 ? "eval_loss" : "loss");
        if (kind && json_is_number(step) && json_is_number(loss)) {
            series *s = strcmp(kind, "eval") == 0 ? &eval : strcmp(kind, "train") == 0 ? &train : NULL;
            if (s && push(s, json_number_value(step), json_number_value(loss)) != 0)
                st = an_error_set(ctx, AN_ERR_INTERNAL, __FILE__, __LINE__, "out of host memory");
        }
        json_decref(j);
    }
    fclose(f);
    if (st == AN_OK && train.n + eval.n == 0)
        st = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s: no training or evaluation loss to plot",
                          metrics_path);
    if (st == AN_OK) {
        double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
        const series *all[2] = {&train, &eval};
        for (int k = 0; k < 2; k++)
            for (int i = 0; i < all[k]->n; i++) {
                x0 = fmin(x0, all[k]->x[i]), x1 = fmax(x1, all[k]->x[i]);
                y0 = fmin(y0, all[k]->y[i]), y1 = fmax(y1, all[k]->y[i]);
            }
        if (x1 <= x0) x1 = x0 + 1;
        double pad = (y1 - y0) * 0.05 + 1e-9;
        y0 -= pad, y1 += pad;
        text t = {0};
        put(&t, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" "
                "font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n", W, H);
        put(&t, "<text x=\"%d\" y=\"24\" font-size=\"15\">loss — %s</text>\n", LEFT, metrics_path);
        for (int i = 0; i <= 5; i++) { /* grid and tick labels */
            double y = y0 + (y1 - y0) * i / 5, x = x0 + (x1 - x0) * i / 5;
            put(&t, "<line x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", LEFT, W - RIGHT,
                py(y, y0, y1), py(y, y0, y1));
            put(&t, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%.3g</text>\n", LEFT - 6, py(y, y0, y1) + 4, y);
            put(&t, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%.0f</text>\n", px(x, x0, x1), H - BOTTOM + 18, x);
        }
        put(&t, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#444\"/>\n", LEFT, TOP,
            W - LEFT - RIGHT, H - TOP - BOTTOM);
        put(&t, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">step</text>\n", (LEFT + W - RIGHT) / 2, H - 12);
        polyline(&t, &train, x0, x1, y0, y1, "#1f77b4", false);
        polyline(&t, &eval, x0, x1, y0, y1, "#d62728", true);
        put(&t, "<text x=\"%d\" y=\"%d\" fill=\"#1f77b4\">train loss (%d points)</text>\n", W - 260, TOP + 18, train.n);
        put(&t, "<text x=\"%d\" y=\"%d\" fill=\"#d62728\">eval loss (%d points)</text>\n", W - 260, TOP + 36, eval.n);
        put(&t, "</svg>\n");
        st = t.failed ? an_error_set(ctx, AN_ERR_INTERNAL, __FILE__, __LINE__, "out of host memory drawing the plot")
                      : an_atomic_write_text(ctx, svg_path, t.p);
        free(t.p);
    }
    free(train.x), free(train.y), free(eval.x), free(eval.y);
    return st;
}
