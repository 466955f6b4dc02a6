/* test_metrics.c — metrics.jsonl lines (flushed, non-finite values as null) and the SVG loss plot
 * drawn from them; a malformed metrics file is a named error. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "support/files.h"
#include "support/test_util.h"
#include "train/metrics.h"
#include "train/plot.h"

static char *slurp(const char *path) {
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    return buf;
}

START_TEST(test_metrics_lines_and_plot) {
    an_ctx *ctx = test_ctx(1);
    char dir[] = "/tmp/anneal-metrics-XXXXXX", path[256], svg[256];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    snprintf(svg, sizeof svg, "%s/loss.svg", dir);
    an_metrics m;
    FILE *sink = fopen("/dev/null", "w");
    ck_assert_int_eq(an_metrics_open(ctx, path, AN_PROGRESS_PLAIN, sink, 30, 0, &m), AN_OK);
    for (int s = 1; s <= 30; s++) {
        an_metric v[] = {{"loss", 5.0 / s}, {"lr", 1e-3}, {"grad_norm", s == 7 ? NAN : 1.0}};
        ck_assert_int_eq(an_metrics_record(ctx, &m, s, "train", v, 3), AN_OK);
        an_metrics_progress(&m, s, 5.0 / s, 1e-3, 1000);
        if (s % 10 == 0) {
            an_metric e[] = {{"eval_loss", 4.0 / s}, {"eval_ppl", exp(4.0 / s)}};
            ck_assert_int_eq(an_metrics_record(ctx, &m, s, "eval", e, 2), AN_OK);
        }
    }
    an_metrics_close(&m);
    fclose(sink);
    const char *text = slurp(path);
    ck_assert_ptr_nonnull(strstr(text, "{\"step\": 7, \"kind\": \"train\", \"loss\": 0.7142857142857143, \"lr\": 0.001, \"grad_norm\": null}"));
    ck_assert_ptr_nonnull(strstr(text, "\"kind\": \"eval\", \"eval_loss\": 0.4"));
    ck_assert_int_eq(an_plot_loss_svg(ctx, path, svg), AN_OK);
    const char *image = slurp(svg);
    ck_assert_ptr_nonnull(strstr(image, "<svg"));
    ck_assert_ptr_nonnull(strstr(image, "train loss (30 points)"));
    ck_assert_ptr_nonnull(strstr(image, "eval loss (3 points)"));
    int circles = 0;
    for (const char *p = image; (p = strstr(p, "<circle")); p++) circles++;
    ck_assert_int_eq(circles, 3);
    FILE *f = fopen(path, "a");
    fputs("not json\n", f);
    fclose(f);
    ck_assert_int_eq(an_plot_loss_svg(ctx, path, svg), AN_ERR_INPUT);
    ck_assert_ptr_nonnull(strstr(an_error_message(ctx), "metrics.jsonl:34"));
    an_error_clear(ctx);
    remove_tree(dir);
    test_ctx_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("metrics");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_metrics_lines_and_plot);
    suite_add_tcase(s, tc);
    return test_run(s);
}
