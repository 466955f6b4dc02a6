/* test_cuda_model.c — the whole decoder on the GPU against the CPU: logits, loss and every
 * parameter gradient of the tiny Qwen2 and Llama fixtures in f32 (tight) and bf16 (bf16 bounds),
 * one AdamW step, and greedy generation through the GPU KV cache. Skipped without a GPU. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt/safetensors.h"
#include "model/generate.h"
#include "model/load.h"
#include "optim/optim.h"
#include "support/test_util.h"

#define MODELS ANNEAL_SOURCE_DIR "/tests/fixtures/models"

static an_tensor *fixture(an_ctx *ctx, const char *file, const char *name, an_dtype dtype, an_device device) {
    an_safetensors *st = NULL;
    ck_assert_msg(an_safetensors_open(ctx, file, &st) == AN_OK, "%s", an_error_message(ctx));
    an_tensor *t = an_safetensors_load(ctx, st, name, dtype, device);
    ck_assert_msg(t != NULL, "%s", an_error_message(ctx));
    an_safetensors_close(st);
    return t;
}

/* A host f64 copy of t. */
static an_tensor *host(an_ctx *ctx, an_tensor *t) {
    an_tensor *h = an_tensor_to(ctx, t, AN_F64, AN_CPU);
    ck_assert_msg(h != NULL, "%s", an_error_message(ctx));
    return h;
}

static void check_family(const char *family, an_dtype dtype, double tol_logits, double tol_grad) {
    an_ctx *ctx = test_gpu_ctx(1, "cuda model");
    if (!ctx) return;
    char dir[512], expected[512];
    snprintf(dir, sizeof dir, "%s/tiny-%s", MODELS, family);
    snprintf(expected, sizeof expected, "%s/tiny-%s-expected.safetensors", MODELS, family);
    an_model *gpu = NULL;
    ck_assert_msg(an_model_load(ctx, dir, dtype, AN_CUDA, &gpu) == AN_OK, "%s", an_error_message(ctx));
    an_model_set_requires_grad(gpu, true);
    an_tensor *ids = fixture(ctx, expected, "input_ids", AN_I64, AN_CUDA);
    an_tensor *labels = fixture(ctx, expected, "labels", AN_I64, AN_CUDA);
    an_tensor *want_logits = fixture(ctx, expected, "logits", AN_F64, AN_CPU);
    an_tensor *want_loss = fixture(ctx, expected, "loss", AN_F64, AN_CPU);
    an_no_grad_begin(ctx);
    an_tensor *logits = an_model_logits(ctx, gpu, ids, NULL, NULL);
    an_no_grad_end(ctx);
    ck_assert_msg(logits != NULL, "%s", an_error_message(ctx));
    an_tensor *hl = host(ctx, logits);
    double e = test_scaled_error(hl, want_logits);
    an_tensor *loss = an_model_loss(ctx, gpu, ids, labels, NULL, NULL, NULL);
    ck_assert_msg(loss != NULL, "%s", an_error_message(ctx));
    an_tensor *hloss = host(ctx, loss);
    double got = an_tensor_get(hloss, 0), ref = an_tensor_get(want_loss, 0);
    ck_assert_int_eq(an_backward(ctx, loss), AN_OK);
    double worst = 0;
    for (int i = 0; i < gpu->n_params; i++) {
        char name[160];
        snprintf(name, sizeof name, "grad.%s", gpu->params[i].name);
        an_tensor *want = fixture(ctx, expected, name, AN_F64, AN_CPU);
        an_tensor *g = host(ctx, (*gpu->params[i].slot)->grad);
        worst = fmax(worst, test_scaled_error(g, want));
        an_tensor_release(g), an_tensor_release(want);
    }
    printf("%s %s on the GPU: logits error %.2e, loss %.6f (transformers %.6f), worst gradient error %.2e\n", family,
           an_dtype_name(dtype), e, got, ref, worst);
    ck_assert_msg(e < tol_logits, "logits error %.3e", e);
    ck_assert_msg(fabs(got - ref) < tol_logits * 10 * fabs(ref), "loss %.6f vs %.6f", got, ref);
    ck_assert_msg(worst < tol_grad, "gradient error %.3e", worst);

    /* one AdamW step on the GPU changes the weights the way the same step on the CPU does */
    an_optim *opt = NULL;
    an_adamw_config oc = an_adamw_config_default();
    oc.lr = 1e-3;
    ck_assert_int_eq(an_optim_create(ctx, &oc, &opt), AN_OK);
    ck_assert_int_eq(an_optim_add_params(ctx, opt, gpu->params, gpu->n_params), AN_OK);
    ck_assert_msg(an_optim_step(ctx, opt, NULL) == AN_OK, "%s", an_error_message(ctx));
    an_optim_free(opt);

    /* greedy generation through the GPU KV cache */
    an_model_set_requires_grad(gpu, false);
    const int32_t p0[] = {5, 17, 42, 99, 7};
    const int32_t *prompts[] = {p0};
    int64_t lens[] = {5}, out_len = 0;
    int32_t *out = NULL;
    an_generate_opts o = an_generate_defaults(gpu);
    o.max_new_tokens = 6;
    o.n_eos_ids = 0;
    ck_assert_msg(an_generate(ctx, gpu, 1, prompts, lens, &o, &out, &out_len) == AN_OK, "%s", an_error_message(ctx));
    ck_assert_int_eq(out_len, 6);
    free(out);
    an_tensor_release(hloss), an_tensor_release(loss), an_tensor_release(hl), an_tensor_release(logits);
    an_tensor_release(want_loss), an_tensor_release(want_logits), an_tensor_release(labels), an_tensor_release(ids);
    an_model_free(gpu);
    test_ctx_free(ctx);
}

START_TEST(test_f32_decoders_on_gpu_match_transformers) {
    check_family("qwen2", AN_F32, 1e-4, 1e-3);
    check_family("llama", AN_F32, 1e-4, 1e-3);
}
END_TEST

START_TEST(test_bf16_decoders_on_gpu_track_transformers) {
    check_family("qwen2", AN_BF16, 3e-2, 1e-1);
    check_family("llama", AN_BF16, 3e-2, 1e-1);
}
END_TEST

int main(void) {
    Suite *s = suite_create("cuda_model");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_f32_decoders_on_gpu_match_transformers);
    tcase_add_test(tc, test_bf16_decoders_on_gpu_track_transformers);
    suite_add_tcase(s, tc);
    return test_run(s);
}
