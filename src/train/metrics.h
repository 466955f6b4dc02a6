/* metrics.h — what a run shows and records: one JSON object per line in metrics.jsonl (flushed
 * each line, so a killed run keeps what it logged), and progress on the terminal: a redrawn bar
 * on a TTY, plain lines otherwise. Keys follow the trainer's names: step, loss, lr, grad_norm,
 * tokens_per_s, peak_mem_bytes, eval_loss, eval_ppl. */
#ifndef AN_TRAIN_METRICS_H
#define AN_TRAIN_METRICS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "autograd/ctx.h"

typedef enum { AN_PROGRESS_BAR, AN_PROGRESS_PLAIN, AN_PROGRESS_OFF } an_progress_style;

typedef struct {
    FILE *jsonl;            /* NULL: not recording */
    an_progress_style style;
    FILE *terminal;         /* stdout or stderr */
    int64_t total_steps;
    double start_time;      /* seconds, monotonic */
    int64_t start_step;     /* resumed runs measure ETA from here */
    bool bar_drawn;         /* a bar line is on screen and must be ended before other output */
} an_metrics;

typedef struct {
    const char *key;
    double value;
} an_metric;

/* Opens (appends to) `jsonl_path` when not NULL. style AUTO is decided by the caller (isatty). */
an_status an_metrics_open(an_ctx *ctx, const char *jsonl_path, an_progress_style style, FILE *terminal,
                          int64_t total_steps, int64_t start_step, an_metrics *out);
void an_metrics_close(an_metrics *m);
/* Appends {"step": step, "kind": kind, key: value, ...} to metrics.jsonl; NaN and infinities are
 * written as null (JSON has no such numbers). */
an_status an_metrics_record(an_ctx *ctx, an_metrics *m, int64_t step, const char *kind, const an_metric *values,
                            int n);
/* Redraws the bar (or prints a plain line) for a training step. */
void an_metrics_progress(an_metrics *m, int64_t step, double loss, double lr, double tokens_per_s);
/* A line of text on the terminal that does not garble the bar (evaluations, samples, saves). */
void an_metrics_say(an_metrics *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
double an_metrics_now(void);

#endif
