/* metrics.c — metrics.jsonl lines and terminal progress (see metrics.h). */
#include "train/metrics.h"

#include <math.h>
#include <stdarg.h>
#include <string.h>
#include <time.h>

double an_metrics_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

an_status an_metrics_open(an_ctx *ctx, const char *jsonl_path, an_progress_style style, FILE *terminal,
                          int64_t total_steps, int64_t start_step, an_metrics *out) {
    *out = (an_metrics){NULL, style, terminal, total_steps, an_metrics_now(), start_step, false};
    if (jsonl_path) {
        out->jsonl = fopen(jsonl_path, "a");
        AN_CHECK(ctx, out->jsonl != NULL, AN_ERR_INPUT, "%s: cannot open for appending metrics", jsonl_path);
    }
    return AN_OK;
}

static void end_bar(an_metrics *m) {
    if (m->bar_drawn) fputc('\n', m->terminal);
    m->bar_drawn = false;
}

void an_metrics_close(an_metrics *m) {
    end_bar(m);
    if (m->jsonl) fclose(m->jsonl);
    m->jsonl = NULL;
}

an_status an_metrics_record(an_ctx *ctx, an_metrics *m, int64_t step, const char *kind, const an_metric *values,
                            int n) {
    if (!m->jsonl) return AN_OK;
    fprintf(m->jsonl, "{\"step\": %lld, \"kind\": \"%s\"", (long long)step, kind);
    for (int i = 0; i < n; i++) {
        /* 17 significant digits: a double reads back exactly, so runs can be compared bit for bit */
        if (isfinite(values[i].value)) fprintf(m->jsonl, ", \"%s\": %.17g", values[i].key, values[i].value);
        else fprintf(m->jsonl, ", \"%s\": null", values[i].key);
    }
    fputs("}\n", m->jsonl);
    AN_CHECK(ctx, fflush(m->jsonl) == 0 && !ferror(m->jsonl), AN_ERR_INPUT, "metrics.jsonl: write failed");
    return AN_OK;
}

static void format_duration(char *buf, size_t n, double seconds) {
    if (!isfinite(seconds) || seconds < 0) snprintf(buf, n, "--:--");
    else if (seconds < 3600) snprintf(buf, n, "%02d:%02d", (int)seconds / 60, (int)seconds % 60);
    else snprintf(buf, n, "%dh%02dm", (int)seconds / 3600, ((int)seconds % 3600) / 60);
}

void an_metrics_progress(an_metrics *m, int64_t step, double loss, double lr, double tokens_per_s) {
    if (m->style == AN_PROGRESS_OFF) return;
    double elapsed = an_metrics_now() - m->start_time;
    int64_t done = step - m->start_step, left = m->total_steps - step;
    char eta[32];
    format_duration(eta, sizeof eta, done > 0 ? elapsed / (double)done * (double)left : NAN);
    if (m->style == AN_PROGRESS_PLAIN) {
        fprintf(m->terminal, "step %lld/%lld  loss %.4f  lr %.3g  %.0f tok/s  eta %s\n", (long long)step,
                (long long)m->total_steps, loss, lr, tokens_per_s, eta);
        fflush(m->terminal);
        return;
    }
    enum { width = 24 };
    int filled = m->total_steps > 0 ? (int)(width * step / m->total_steps) : 0;
    char bar[width + 1];
    for (int i = 0; i < width; i++) bar[i] = i < filled ? '#' : '.';
    bar[width] = '\0';
    fprintf(m->terminal, "\r[%s] %lld/%lld  loss %.4f  lr %.3g  %.0f tok/s  eta %s  ", bar, (long long)step,
            (long long)m->total_steps, loss, lr, tokens_per_s, eta);
    fflush(m->terminal);
    m->bar_drawn = true;
}

void an_metrics_say(an_metrics *m, const char *fmt, ...) {
    if (m->style == AN_PROGRESS_OFF) return;
    end_bar(m);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(m->terminal, fmt, ap);
    va_end(ap);
    fputc('\n', m->terminal);
    fflush(m->terminal);
}
