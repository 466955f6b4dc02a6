/* test_lora.c — LoRA against peft: a PEFT adapter loads and gives peft's loss, logits and adapter
 * gradients (q/v, and all-linear with rsLoRA); what anneal saves loads back identically; merging
 * equals the adapter; a fresh adapter starts as PEFT's does and leaves the base frozen. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt/safetensors.h"
#include "model/load.h"
#include "model/lora.h"
#include "model/save.h"
#include "optim/optim.h"
#include <sys/stat.h>
#include "support/files.h"
#include "support/test_util.h"

#define MODELS ANNEAL_SOURCE_DIR "/tests/fixtures/models"
#define LORA ANNEAL_SOURCE_DIR "/tests/fixtures/lora"

static an_model *base(an_ctx *ctx) {
    an_model *m = NULL;
    ck_assert_msg(an_model_load(ctx, MODELS "/tiny-qwen2", AN_F32, AN_CPU, &m) == AN_OK, "%s", an_error_message(ctx));
    return m;
}

static an_tensor *fixture(an_ctx *ctx, const char *file, const char *name, an_dtype dtype) {
    an_safetensors *st = NULL;
    ck_assert_msg(an_safetensors_open(ctx, file, &st) == AN_OK, "%s", an_error_message(ctx));
    an_tensor *t = an_safetensors_load(ctx, st, name, dtype, AN_CPU);
    ck_assert_msg(t != NULL, "%s", an_error_message(ctx));
    an_safetensors_close(st);
    return t;
}

static void check_against_peft(const char *tag) {
    an_ctx *ctx = test_ctx(1);
    an_model *m = base(ctx);
    char dir[512], key[256];
    snprintf(dir, sizeof dir, "%s/lora-%s", LORA, tag);
    ck_assert_msg(an_lora_load_peft(ctx, m, dir) == AN_OK, "%s", an_error_message(ctx));
    const char *expected = LORA "/lora-expected.safetensors";
    an_tensor *ids = fixture(ctx, MODELS "/tiny-qwen2-expected.safetensors", "input_ids", AN_I64);
    an_tensor *labels = fixture(ctx, MODELS "/tiny-qwen2-expected.safetensors", "labels", AN_I64);
    snprintf(key, sizeof key, "%s.logits", tag);
    an_tensor *want_logits = fixture(ctx, expected, key, AN_F32);
    snprintf(key, sizeof key, "%s.loss", tag);
    an_tensor *want_loss = fixture(ctx, expected, key, AN_F64);

    an_no_grad_begin(ctx);
    an_tensor *logits = an_model_logits(ctx, m, ids, NULL, NULL);
    an_no_grad_end(ctx);
    double e = test_scaled_error(logits, want_logits);
    ck_assert_msg(e < 1e-4, "%s: logits differ from peft by %.3e", tag, e);

    an_tensor *loss = an_model_loss(ctx, m, ids, labels, NULL, NULL, NULL);
    ck_assert_msg(loss != NULL, "%s", an_error_message(ctx));
    double got = an_tensor_get(loss, 0), want = an_tensor_get(want_loss, 0);
    printf("lora-%s: loss %.8f, peft %.8f; logits error %.2e\n", tag, got, want, e);
    ck_assert_msg(fabs(got - want) <= 1e-5 * fabs(want), "%s loss %.9g vs peft %.9g", tag, got, want);
    ck_assert_int_eq(an_backward(ctx, loss), AN_OK);
    for (int i = 0; i < m->n_params; i++) ck_assert_ptr_null((*m->params[i].slot)->grad); /* base frozen */
    double worst = 0;
    for (int i = 0; i < m->n_adapter_params; i++) {
        snprintf(key, sizeof key, "%s.grad.%s", tag, m->adapter_params[i].name);
        an_tensor *g = fixture(ctx, expected, key, AN_F32);
        an_tensor *ours = (*m->adapter_params[i].slot)->grad;
        ck_assert_msg(ours != NULL, "no gradient for %s", m->adapter_params[i].name);
        double ge = test_scaled_error(ours, g);
        worst = fmax(worst, ge);
        ck_assert_msg(ge < 1e-3, "%s: gradient of %s differs from peft by %.3e", tag, m->adapter_params[i].name, ge);
        an_tensor_release(g);
    }
    printf("lora-%s: %d adapter gradients, worst error %.2e\n", tag, m->n_adapter_params, worst);
    an_tensor_release(loss), an_tensor_release(logits), an_tensor_release(want_loss), an_tensor_release(want_logits);
    an_tensor_release(ids), an_tensor_release(labels);
    an_model_free(m);
    test_ctx_free(ctx);
}

START_TEST(test_qv_adapter_matches_peft) { check_against_peft("qv"); }
END_TEST
START_TEST(test_all_linear_rslora_adapter_matches_peft) { check_against_peft("all"); }
END_TEST

START_TEST(test_saved_adapter_loads_back_and_merge_equals_adapter) {
    an_ctx *ctx = test_ctx(2);
    an_model *m = base(ctx);
    ck_assert_int_eq(an_lora_load_peft(ctx, m, LORA "/lora-all"), AN_OK);
    char dir[] = "/tmp/anneal-lora-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    ck_assert_msg(an_lora_save_peft(ctx, m, dir, "tiny-qwen2") == AN_OK, "%s", an_error_message(ctx));
    an_model *again = base(ctx);
    ck_assert_msg(an_lora_load_peft(ctx, again, dir) == AN_OK, "%s", an_error_message(ctx));
    ck_assert_int_eq(again->n_adapter_params, m->n_adapter_params);
    ck_assert(again->lora.rslora && again->lora.targets == AN_LORA_ALL_LINEAR && again->lora.rank == 2);
    for (int i = 0; i < m->n_adapter_params; i++) {
        an_tensor *a = *m->adapter_params[i].slot, *b = *again->adapter_params[i].slot;
        ck_assert_str_eq(m->adapter_params[i].name, again->adapter_params[i].name);
        ck_assert(memcmp(an_tensor_data(a), an_tensor_data(b), an_tensor_nbytes(a)) == 0);
    }
    an_tensor *ids = test_ids(ctx, AN_I32, 2, (int64_t[]){2, 7}, 256);
    an_no_grad_begin(ctx);
    an_tensor *with_adapter = an_model_logits(ctx, m, ids, NULL, NULL);
    m->lora_enabled = false;
    an_tensor *base_only = an_model_logits(ctx, m, ids, NULL, NULL);
    m->lora_enabled = true;
    ck_assert_int_eq(an_lora_merge(ctx, m), AN_OK);
    ck_assert_int_eq(m->n_adapter_params, 0);
    an_tensor *merged = an_model_logits(ctx, m, ids, NULL, NULL);
    an_no_grad_end(ctx);
    double e_merge = test_scaled_error(merged, with_adapter), e_base = test_scaled_error(base_only, with_adapter);
    printf("merged vs adapter logits %.2e; adapter changes logits by %.2e\n", e_merge, e_base);
    ck_assert_msg(e_merge < 1e-5, "merged model differs from the adapter model by %.3e", e_merge);
    ck_assert_msg(e_base > 1e-3, "the adapter does not change the outputs (%.3e)", e_base);
    an_tensor_release(with_adapter), an_tensor_release(base_only), an_tensor_release(merged), an_tensor_release(ids);
    remove_tree(dir);
    an_model_free(m), an_model_free(again);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_fresh_adapter_starts_like_peft) {
    an_ctx *ctx = test_ctx(3);
    an_model *m = base(ctx);
    an_model_set_requires_grad(m, true);
    const char *names[] = {"q_proj", "v_proj"};
    an_lora_config cfg = {8, 16, 0.1, false, 0};
    ck_assert_int_eq(an_lora_parse_targets(ctx, names, 2, &cfg.targets), AN_OK);
    ck_assert_int_eq(an_lora_attach(ctx, m, &cfg), AN_OK);
    ck_assert_int_eq(m->n_adapter_params, 2 * 2 * m->config.num_layers);
    ck_assert_double_eq(m->lora_scale, 2.0);
    for (int i = 0; i < m->n_params; i++) ck_assert(!(*m->params[i].slot)->requires_grad);
    for (int i = 0; i < m->n_adapter_params; i++) {
        an_tensor *t = *m->adapter_params[i].slot;
        ck_assert(t->requires_grad);
        bool is_a = strstr(m->adapter_params[i].name, "lora_A") != NULL;
        double bound = 1.0 / sqrt((double)t->shape[1]), maxabs = 0;
        for (int64_t j = 0; j < an_tensor_numel(t); j++) maxabs = fmax(maxabs, fabs(an_tensor_get(t, j)));
        if (is_a) ck_assert(maxabs <= bound && maxabs > 0.5 * bound);
        else ck_assert_double_eq(maxabs, 0.0);
    }
    /* B = 0: the adapted model computes exactly the base model. */
    an_tensor *ids = test_ids(ctx, AN_I32, 2, (int64_t[]){1, 5}, 256);
    an_no_grad_begin(ctx);
    an_tensor *a = an_model_logits(ctx, m, ids, NULL, NULL);
    m->lora_enabled = false;
    an_tensor *b = an_model_logits(ctx, m, ids, NULL, NULL);
    an_no_grad_end(ctx);
    ck_assert_double_eq(test_scaled_error(a, b), 0.0);
    const char *bad[] = {"qkv_proj"};
    unsigned t;
    ck_assert_int_eq(an_lora_parse_targets(ctx, bad, 1, &t), AN_ERR_INPUT);
    ck_assert_ptr_nonnull(strstr(an_error_message(ctx), "qkv_proj"));
    an_error_clear(ctx);
    an_tensor_release(a), an_tensor_release(b), an_tensor_release(ids);
    an_model_free(m);
    test_ctx_free(ctx);
}
END_TEST

/* Trains a fresh all-linear adapter a few steps, saves it (PEFT) and the merged model, and writes
 * the logits anneal computes with it. With ANNEAL_PEFT_CHECK_DIR set the files are kept there for
 * tests/fixtures/make_peft_adapter.py --check DIR, which loads them with peft and transformers. */
START_TEST(test_trained_adapter_round_trips_for_peft) {
    an_ctx *ctx = test_ctx(6);
    an_model *m = base(ctx);
    an_lora_config cfg = {4, 8, 0.0, false, AN_LORA_ALL_LINEAR};
    ck_assert_int_eq(an_lora_attach(ctx, m, &cfg), AN_OK);
    an_optim *opt = NULL;
    an_adamw_config oc = an_adamw_config_default();
    oc.lr = 1e-2;
    ck_assert_int_eq(an_optim_create(ctx, &oc, &opt), AN_OK);
    ck_assert_int_eq(an_optim_add_params(ctx, opt, m->adapter_params, m->n_adapter_params), AN_OK);
    an_tensor *ids = fixture(ctx, MODELS "/tiny-qwen2-expected.safetensors", "input_ids", AN_I64);
    an_tensor *labels = fixture(ctx, MODELS "/tiny-qwen2-expected.safetensors", "labels", AN_I64);
    double first = 0, last = 0;
    for (int step = 0; step < 4; step++) {
        an_tensor *loss = an_model_loss(ctx, m, ids, labels, NULL, NULL, NULL);
        ck_assert_msg(loss != NULL, "%s", an_error_message(ctx));
        last = an_tensor_get(loss, 0);
        if (step == 0) first = last;
        ck_assert_int_eq(an_backward(ctx, loss), AN_OK);
        ck_assert_int_eq(an_optim_step(ctx, opt, NULL), AN_OK);
        an_optim_zero_grad(opt);
        an_tensor_release(loss);
    }
    ck_assert_msg(last < first, "loss %.4f -> %.4f", first, last);
    const char *keep = getenv("ANNEAL_PEFT_CHECK_DIR");
    char dir[512] = "/tmp/anneal-peftcheck-XXXXXX", path[600];
    if (keep) snprintf(dir, sizeof dir, "%s", keep), mkdir(dir, 0755);
    else ck_assert_ptr_nonnull(mkdtemp(dir));
    ck_assert_msg(an_lora_save_peft(ctx, m, dir, "tests/fixtures/models/tiny-qwen2") == AN_OK, "%s", an_error_message(ctx));
    an_no_grad_begin(ctx);
    an_tensor *logits = an_model_logits(ctx, m, ids, NULL, NULL);
    an_no_grad_end(ctx);
    snprintf(path, sizeof path, "%s/anneal-logits.safetensors", dir);
    an_safetensors_meta meta[] = {{"format", "pt"}};
    ck_assert_int_eq(an_safetensors_write(ctx, path, 1, (const char *[]){"logits"}, &logits, 1, meta), AN_OK);
    ck_assert_int_eq(an_lora_merge(ctx, m), AN_OK);
    snprintf(path, sizeof path, "%s/merged", dir);
    ck_assert_msg(an_model_save(ctx, m, path, AN_F32) == AN_OK, "%s", an_error_message(ctx));
    an_model *merged = NULL;
    ck_assert_int_eq(an_model_load(ctx, path, AN_F32, AN_CPU, &merged), AN_OK);
    an_no_grad_begin(ctx);
    an_tensor *again = an_model_logits(ctx, merged, ids, NULL, NULL);
    an_no_grad_end(ctx);
    ck_assert_msg(test_scaled_error(again, logits) < 1e-5, "merged model differs: %.3e", test_scaled_error(again, logits));
    printf("trained adapter: loss %.4f -> %.4f; saved to %s (PEFT) with its logits and the merged model\n", first, last, dir);
    if (!keep) remove_tree(dir);
    an_tensor_release(logits), an_tensor_release(again), an_tensor_release(ids), an_tensor_release(labels);
    an_optim_free(opt);
    an_model_free(m), an_model_free(merged);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_unsupported_adapter_features_are_errors) {
    const char *cases[][2] = {{"\"use_dora\": false", "\"use_dora\": true"},
                              {"\"rank_pattern\": {}", "\"rank_pattern\": {\"q_proj\": 8}"},
                              {"\"peft_type\": \"LORA\"", "\"peft_type\": \"IA3\""}};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        an_ctx *ctx = test_ctx(4);
        char dir[] = "/tmp/anneal-lora-XXXXXX", cmd[1024], path[600];
        ck_assert_ptr_nonnull(mkdtemp(dir));
        snprintf(cmd, sizeof cmd, "cp " LORA "/lora-qv/* %s/", dir);
        ck_assert_int_eq(system(cmd), 0);
        snprintf(path, sizeof path, "%s/adapter_config.json", dir);
        FILE *f = fopen(path, "r");
        char text[8192];
        size_t n = fread(text, 1, sizeof text - 1, f);
        fclose(f);
        text[n] = 0;
        char *at = strstr(text, cases[c][0]);
        ck_assert_ptr_nonnull(at);
        f = fopen(path, "w");
        fprintf(f, "%.*s%s%s", (int)(at - text), text, cases[c][1], at + strlen(cases[c][0]));
        fclose(f);
        an_model *m = base(ctx);
        ck_assert_int_eq(an_lora_load_peft(ctx, m, dir), AN_ERR_INPUT);
        ck_assert_ptr_nonnull(strstr(an_error_message(ctx), "adapter_config.json"));
        an_error_clear(ctx);
        an_model_free(m);
        remove_tree(dir);
        test_ctx_free(ctx);
    }
}
END_TEST

int main(void) {
    Suite *s = suite_create("lora");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_qv_adapter_matches_peft);
    tcase_add_test(tc, test_all_linear_rslora_adapter_matches_peft);
    tcase_add_test(tc, test_saved_adapter_loads_back_and_merge_equals_adapter);
    tcase_add_test(tc, test_fresh_adapter_starts_like_peft);
    tcase_add_test(tc, test_trained_adapter_round_trips_for_peft);
    tcase_add_test(tc, test_unsupported_adapter_features_are_errors);
    suite_add_tcase(s, tc);
    return test_run(s);
}
