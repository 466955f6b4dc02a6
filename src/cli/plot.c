/* plot.c — `anneal plot RUN_DIR [--out FILE]`: the run's loss curves (metrics.jsonl) as SVG,
 * written to RUN_DIR/loss.svg unless --out says otherwise. */
#include <stdio.h>

#include "cli/cli.h"
#include "train/plot.h"

int an_cli_plot(int argc, char **argv) {
    const char *run_dir = NULL, *out = NULL;
    for (int i = 0; i < argc; i++) {
        int bad = 0;
        const char *v = an_cli_flag(argc, argv, &i, "--out", &bad);
        if (v) out = v;
        else if (!bad && argv[i][0] != '-' && !run_dir) run_dir = argv[i];
        else bad = 1;
        if (bad) {
            fprintf(stderr, "anneal plot: bad argument '%s'\nusage: anneal plot RUN_DIR [--out FILE.svg]\n", argv[i]);
            return 2;
        }
    }
    if (!run_dir) {
        fputs("usage: anneal plot RUN_DIR [--out FILE.svg]\n", stderr);
        return 2;
    }
    char metrics[4096], svg[4096];
    snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", run_dir);
    snprintf(svg, sizeof svg, "%s/loss.svg", run_dir);
    an_ctx *ctx = an_ctx_new(0);
    int rc = an_plot_loss_svg(ctx, metrics, out ? out : svg) == AN_OK ? 0 : an_cli_fail(ctx, "plot");
    if (rc == 0) printf("wrote %s\n", out ? out : svg);
    an_ctx_free(ctx);
    return rc;
}
