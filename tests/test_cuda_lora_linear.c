/* test_cuda_lora_linear.c — the fused LoRA linear op on CUDA against the same op on the CPU, on
 * the same fresh random inputs in f32, bf16 and f16: the output and every gradient (x and x_lora
 * apart and shared, with bias, trainable and frozen weight), at shapes with one row, odd sizes and
 * the DeepSeek-R1-Distill-Qwen-1.5B q_proj (1536 -> 1536, r 16). Both sides round down, d_down and
 * each result to the dtype; the GEMMs accumulate in fp32 (GPU) or float64/fp32 (CPU), so each
 * element must be within 2 rtol |cpu| + rtol rms(cpu), rtol f32 1e-5, bf16 1e-2, f16 2e-3; NaN
 * never passes. Without a GPU every test prints SKIP and passes. */
#include <math.h>
#include <stdlib.h>

#include "support/test_util.h"

static double rtol_of(an_dtype dtype) { return dtype == AN_F32 ? 1e-5 : dtype == AN_BF16 ? 1e-2 : 2e-3; }

static void expect_close(an_ctx *ctx, const an_tensor *gpu, const an_tensor *cpu, double rtol, const char *what) {
    ck_assert_msg(gpu && cpu, "%s: missing (%s)", what, an_error_message(ctx));
    an_tensor *back = an_tensor_to(ctx, gpu, gpu->dtype, AN_CPU);
    double *g = test_values(back), *c = test_values(cpu);
    int64_t n = an_tensor_numel(cpu);
    double ms = 0;
    for (int64_t i = 0; i < n; i++) ms += c[i] * c[i] / (double)n;
    for (int64_t i = 0; i < n; i++)
        ck_assert_msg(!isnan(g[i]) && fabs(g[i] - c[i]) <= 2 * rtol * fabs(c[i]) + rtol * sqrt(ms),
                      "%s: element %lld of %lld is %.9g on the GPU, %.9g on the CPU", what, (long long)i, (long long)n,
                      g[i], c[i]);
    free(g), free(c);
    an_tensor_release(back);
}

START_TEST(test_cuda_lora_linear_matches_cpu) {
    an_ctx *ctx = test_gpu_ctx(11, "cuda lora_linear");
    if (!ctx) return;
    const int64_t shapes[][4] = {{1, 1, 1, 1}, {37, 33, 65, 3}, {64, 96, 80, 16}, {512, 1536, 1536, 16}}; /* rows in out r */
    const an_dtype dtypes[] = {AN_F32, AN_BF16, AN_F16};
    char what[160];
    for (size_t z = 0; z < sizeof shapes / sizeof *shapes; z++)
        for (int d = 0; d < 3; d++)
            for (int shared = 0; shared < 2; shared++) {
                int64_t rows = shapes[z][0], in = shapes[z][1], out = shapes[z][2], r = shapes[z][3];
                an_dtype dtype = dtypes[d];
                const int64_t *dims[6] = {(int64_t[]){rows, in}, (int64_t[]){rows, in}, (int64_t[]){out, in},
                                          (int64_t[]){out},      (int64_t[]){r, in},    (int64_t[]){out, r}};
                const int nd[6] = {2, 2, 2, 1, 2, 2};
                an_tensor *cpu[6], *gpu[6];
                for (int i = 0; i < 6; i++) {
                    bool grad = !(i == 2 && shared); /* the weight is frozen in the shared case */
                    cpu[i] = test_uniform(ctx, dtype, nd[i], dims[i], -1, 1, grad);
                    gpu[i] = an_tensor_to(ctx, cpu[i], dtype, AN_CUDA);
                    ck_assert_ptr_nonnull(gpu[i]);
                    an_tensor_set_requires_grad(gpu[i], grad);
                }
                an_tensor *ys[2], *ws[2];
                for (int dev = 0; dev < 2; dev++) { /* one graph at a time: backward clears the tape */
                    an_tensor **t = dev ? gpu : cpu;
                    ys[dev] = an_lora_linear(ctx, t[0], shared ? t[0] : t[1], t[2], t[3], t[4], t[5], 2.0);
                    ck_assert_msg(ys[dev] != NULL, "forward: %s", an_error_message(ctx));
                    ws[dev] = test_uniform(ctx, dtype, 2, (int64_t[]){rows, out}, -1, 1, false);
                    if (dev) {
                        an_tensor *h = ws[1];
                        ws[1] = an_tensor_to(ctx, ws[0], dtype, AN_CUDA);
                        an_tensor_release(h);
                    }
                    an_tensor *m = an_mul(ctx, ys[dev], ws[dev]), *loss = an_sum(ctx, m);
                    test_ok(ctx, an_backward(ctx, loss), "backward");
                    an_tensor_release(m), an_tensor_release(loss);
                }
                snprintf(what, sizeof what, "lora_linear %s rows %lld in %lld out %lld r %lld shared %d",
                         an_dtype_name(dtype), (long long)rows, (long long)in, (long long)out, (long long)r, shared);
                double rtol = rtol_of(dtype);
                expect_close(ctx, ys[1], ys[0], rtol, what);
                for (int i = 0; i < 6; i++) {
                    if (!cpu[i]->requires_grad || (shared && i == 1)) {
                        ck_assert_msg(gpu[i]->grad == NULL, "%s: input %d got a gradient", what, i);
                        continue;
                    }
                    char g[200];
                    snprintf(g, sizeof g, "%s: gradient of input %d", what, i);
                    /* the output's rounding enters every gradient: one more rtol */
                    expect_close(ctx, gpu[i]->grad, cpu[i]->grad, 2 * rtol, g);
                }
                for (int i = 0; i < 2; i++) an_tensor_release(ys[i]), an_tensor_release(ws[i]);
                for (int i = 0; i < 6; i++) an_tensor_release(cpu[i]), an_tensor_release(gpu[i]);
            }
    test_ctx_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("cuda_lora_linear");
    test_add_case(s, "matches cpu", test_cuda_lora_linear_matches_cpu);
    return test_run(s);
}
