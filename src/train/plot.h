/* plot.h — loss curves of a run as an SVG image, drawn from its metrics.jsonl. */
#ifndef AN_TRAIN_PLOT_H
#define AN_TRAIN_PLOT_H

#include "autograd/ctx.h"

/* Reads METRICS (lines with "kind": "train" / "eval") and writes SVG_PATH atomically: training
 * loss against step, evaluation loss as points joined by a line, with axes and a legend. */
an_status an_plot_loss_svg(an_ctx *ctx, const char *metrics_path, const char *svg_path);

#endif
