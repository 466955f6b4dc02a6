/* test_model.c — the Qwen2 and Llama decoders against transformers: logits, loss and every
 * parameter gradient on the tiny fixture models (tests/fixtures/make_tiny_models.py), with and
 * without gradient checkpointing; bf16 checkpoints; and every way a model directory can be wrong. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt/safetensors.h"
#include "model/load.h"
#include "model/save.h"
#include "support/files.h"
#include "support/test_util.h"

#define FIXTURES ANNEAL_SOURCE_DIR "/tests/fixtures/models"

static an_model *load(an_ctx *ctx, const char *dir, an_dtype dtype) {
    an_model *m = NULL;
    an_status st = an_model_load(ctx, dir, dtype, AN_CPU, &m);
    ck_assert_msg(st == AN_OK, "loading %s: %s", dir, an_error_message(ctx));
    return m;
}

static void check_family(const char *family, bool checkpointing) {
    an_ctx *ctx = test_ctx(1);
    char dir[512], expected_path[512];
    snprintf(dir, sizeof dir, "%s/tiny-%s", FIXTURES, family);
    snprintf(expected_path, sizeof expected_path, "%s/tiny-%s-expected.safetensors", FIXTURES, family);
    an_model *m = load(ctx, dir, AN_F32);
    m->gradient_checkpointing = checkpointing;
    an_safetensors *ex = NULL;
    ck_assert_msg(an_safetensors_open(ctx, expected_path, &ex) == AN_OK, "%s", an_error_message(ctx));
    an_tensor *ids = an_safetensors_load(ctx, ex, "input_ids", AN_I64, AN_CPU);
    an_tensor *labels = an_safetensors_load(ctx, ex, "labels", AN_I64, AN_CPU);
    an_tensor *want_logits = an_safetensors_load(ctx, ex, "logits", AN_F32, AN_CPU);
    an_tensor *want_loss = an_safetensors_load(ctx, ex, "loss", AN_F64, AN_CPU);

    an_no_grad_begin(ctx);
    an_tensor *logits = an_model_logits(ctx, m, ids, NULL, NULL);
    an_no_grad_end(ctx);
    ck_assert_msg(logits != NULL, "%s", an_error_message(ctx));
    double e = test_scaled_error(logits, want_logits);
    printf("%s%s: logits error %.2e (scaled by max |logit|)\n", family, checkpointing ? " (checkpointed)" : "", e);
    ck_assert_msg(e < 1e-4, "%s logits differ from transformers by %.3e", family, e);

    an_model_set_requires_grad(m, true);
    an_tensor *loss = an_model_loss(ctx, m, ids, labels, NULL, NULL, NULL);
    ck_assert_msg(loss != NULL, "%s", an_error_message(ctx));
    double got_loss = an_tensor_get(loss, 0), ref_loss = an_tensor_get(want_loss, 0);
    printf("%s: loss %.8f, transformers %.8f\n", family, got_loss, ref_loss);
    ck_assert_msg(fabs(got_loss - ref_loss) <= 1e-5 * fabs(ref_loss), "%s loss %.9g vs %.9g", family, got_loss, ref_loss);
    ck_assert_int_eq(an_backward(ctx, loss), AN_OK);
    double worst = 0;
    for (int i = 0; i < m->n_params; i++) {
        char name[160];
        snprintf(name, sizeof name, "grad.%s", m->params[i].name);
        an_tensor *want = an_safetensors_load(ctx, ex, name, AN_F32, AN_CPU);
        ck_assert_msg(want != NULL, "%s", an_error_message(ctx));
        an_tensor *got = (*m->params[i].slot)->grad;
        ck_assert_msg(got != NULL, "no gradient for %s", m->params[i].name);
        double ge = test_scaled_error(got, want);
        worst = fmax(worst, ge);
        ck_assert_msg(ge < 1e-3, "%s: gradient of %s differs by %.3e", family, m->params[i].name, ge);
        an_tensor_release(want);
    }
    printf("%s: worst parameter-gradient error %.2e over %d tensors\n", family, worst, m->n_params);
    an_tensor_release(loss), an_tensor_release(logits), an_tensor_release(want_loss), an_tensor_release(want_logits);
    an_tensor_release(labels), an_tensor_release(ids);
    an_safetensors_close(ex);
    an_model_free(m);
    test_ctx_free(ctx);
}

START_TEST(test_qwen2_matches_transformers) { check_family("qwen2", false); }
END_TEST
START_TEST(test_llama_matches_transformers) { check_family("llama", false); }
END_TEST
START_TEST(test_checkpointed_models_match_transformers) {
    check_family("qwen2", true);
    check_family("llama", true);
}
END_TEST

START_TEST(test_bf16_checkpoint_loads_and_tracks_f32) {
    an_ctx *ctx = test_ctx(2);
    an_model *f32 = load(ctx, FIXTURES "/tiny-qwen2", AN_F32);
    an_model *bf = load(ctx, FIXTURES "/tiny-qwen2-bf16", AN_F32); /* bf16 on disk, f32 in memory */
    ck_assert_int_eq(bf->config.torch_dtype, AN_BF16);
    an_tensor *ids = test_ids(ctx, AN_I32, 2, (int64_t[]){2, 9}, 256);
    an_no_grad_begin(ctx);
    an_tensor *a = an_model_logits(ctx, f32, ids, NULL, NULL), *b = an_model_logits(ctx, bf, ids, NULL, NULL);
    an_no_grad_end(ctx);
    double e = test_scaled_error(b, a);
    printf("bf16 weights vs f32 weights: logits differ by %.2e\n", e);
    ck_assert_msg(e < 5e-2 && e > 0, "bf16 checkpoint logits differ by %.3e", e);
    an_tensor_release(a), an_tensor_release(b), an_tensor_release(ids);
    an_model_free(f32), an_model_free(bf);
    test_ctx_free(ctx);
}
END_TEST

/* A copy of a fixture directory in a temp dir, with config.json replaced when `config` is set. */
static void make_dir(char *dir, size_t n, const char *fixture, const char *config) {
    snprintf(dir, n, "/tmp/anneal-model-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "cp %s/%s/model.safetensors %s/%s/config.json %s/", FIXTURES, fixture, FIXTURES, fixture, dir);
    ck_assert_int_eq(system(cmd), 0);
    if (config) {
        char path[600];
        snprintf(path, sizeof path, "%s/config.json", dir);
        FILE *f = fopen(path, "w");
        fputs(config, f);
        fclose(f);
    }
}

/* The fixture's config.json with `from` replaced by `to`. */
static char *edited_config(const char *fixture, const char *from, const char *to) {
    char path[600];
    snprintf(path, sizeof path, "%s/%s/config.json", FIXTURES, fixture);
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    static char text[8192], out[8192];
    size_t len = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[len] = 0;
    char *at = strstr(text, from);
    ck_assert_msg(at != NULL, "'%s' not in %s", from, path);
    snprintf(out, sizeof out, "%.*s%s%s", (int)(at - text), text, to, at + strlen(from));
    return out;
}

static void expect_load_error(const char *fixture, const char *config, const char *needle1, const char *needle2) {
    an_ctx *ctx = test_ctx(3);
    char dir[256];
    make_dir(dir, sizeof dir, fixture, config);
    an_model *m = NULL;
    an_status st = an_model_load(ctx, dir, AN_F32, AN_CPU, &m);
    ck_assert_int_eq(st, AN_ERR_INPUT);
    ck_assert_ptr_null(m);
    ck_assert_msg(strstr(an_error_message(ctx), needle1) && strstr(an_error_message(ctx), needle2),
                  "message '%s' lacks '%s' / '%s'", an_error_message(ctx), needle1, needle2);
    an_error_clear(ctx);
    remove_tree(dir);
    test_ctx_free(ctx);
}

/* Positions are checked once per forward (the layers' rope calls trust them): a negative one is
 * an input error naming it, and nothing is recorded. */
START_TEST(test_negative_positions_are_rejected_once_per_forward) {
    an_ctx *ctx = test_ctx(4);
    an_model *m = load(ctx, FIXTURES "/tiny-qwen2", AN_F32);
    an_model_set_requires_grad(m, true);
    an_tensor *ids = an_tensor_from_data(ctx, AN_I64, 2, (int64_t[]){1, 4}, (int64_t[]){1, 2, 3, 4});
    an_tensor *pos = an_tensor_from_data(ctx, AN_I64, 2, (int64_t[]){1, 4}, (int64_t[]){0, 1, -5, 3});
    ck_assert_ptr_null(an_model_logits(ctx, m, ids, pos, NULL));
    ck_assert_int_eq(an_error_status(ctx), AN_ERR_INPUT);
    ck_assert_msg(strstr(an_error_message(ctx), "position -5 (element 2 of positions) is negative") != NULL, "%s",
                  an_error_message(ctx));
    ck_assert_int_eq(an_tape_length(ctx), 0);
    an_error_clear(ctx);
    an_tensor_release(ids), an_tensor_release(pos);
    an_model_free(m);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_bad_model_directories_are_named_errors) {
    expect_load_error("tiny-qwen2", edited_config("tiny-qwen2", "\"hidden_size\": 64,", ""), "config.json",
                      "'hidden_size' is missing");
    expect_load_error("tiny-qwen2", edited_config("tiny-qwen2", "Qwen2ForCausalLM", "GPT2LMHeadModel"), "config.json",
                      "GPT2LMHeadModel");
    expect_load_error("tiny-qwen2", edited_config("tiny-qwen2", "\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3"),
                      "config.json", "does not divide");
    expect_load_error("tiny-qwen2", edited_config("tiny-qwen2", "\"intermediate_size\": 160", "\"intermediate_size\": 128"),
                      "model.safetensors", "mlp.gate_proj.weight' has shape (160, 64) but");
    expect_load_error("tiny-qwen2", edited_config("tiny-qwen2", "\"use_sliding_window\": false", "\"use_sliding_window\": true"),
                      "config.json", "sliding-window");
    expect_load_error("tiny-qwen2", edited_config("tiny-qwen2", "\"use_cache\": true", "\"use_cache\": true, \"frobnicate\": 1"),
                      "config.json", "unknown key 'frobnicate'");
    expect_load_error("tiny-llama", edited_config("tiny-llama", "\"rope_type\": \"llama3\"", "\"rope_type\": \"yarn\""),
                      "config.json", "yarn");
    expect_load_error("tiny-qwen2", edited_config("tiny-qwen2", "\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1"),
                      "model.layers.1", "not a parameter");
    expect_load_error("tiny-qwen2", edited_config("tiny-qwen2", "\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3"),
                      "no tensor", "model.layers.2.");
    expect_load_error("tiny-qwen2", "{\"architectures\": [\"Qwen2ForCausalLM\"", "config.json", "line");
}
END_TEST

START_TEST(test_saved_model_reloads_identically) {
    an_ctx *ctx = test_ctx(5);
    an_model *m = load(ctx, FIXTURES "/tiny-llama", AN_F32);
    char dir[] = "/tmp/anneal-save-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    ck_assert_msg(an_model_save(ctx, m, dir, AN_F32) == AN_OK, "%s", an_error_message(ctx));
    an_model *again = load(ctx, dir, AN_F32);
    ck_assert(memcmp(&again->config.rope, &m->config.rope, sizeof m->config.rope) == 0);
    ck_assert_int_eq(again->config.num_kv_heads, m->config.num_kv_heads);
    ck_assert_int_eq(again->config.eos_token_ids[0], m->config.eos_token_ids[0]);
    for (int i = 0; i < m->n_params; i++) {
        an_tensor *a = *m->params[i].slot, *b = *again->params[i].slot;
        ck_assert_msg(memcmp(an_tensor_data(a), an_tensor_data(b), an_tensor_nbytes(a)) == 0, "%s differs",
                      m->params[i].name);
    }
    ck_assert_msg(an_model_save(ctx, m, dir, AN_BF16) == AN_OK, "%s", an_error_message(ctx));
    an_model *half = load(ctx, dir, AN_F32);
    ck_assert_int_eq(half->config.torch_dtype, AN_BF16);
    ck_assert_int_eq(an_model_save(ctx, m, dir, AN_I32), AN_ERR_INPUT);
    an_error_clear(ctx);
    remove_tree(dir);
    an_model_free(m), an_model_free(again), an_model_free(half);
    test_ctx_free(ctx);
}
END_TEST

/* an_model_create lays a layer's q, k, v weights (and biases) out as consecutive rows of one
 * allocation, and gate and up likewise (the decode step's stacked GEMMs rely on it); loading
 * fills the views in place. */
static void expect_stacked(an_tensor *const *t, int n, const char *what, int layer) {
    for (int i = 1; i < n; i++) {
        size_t gap = (size_t)((char *)an_tensor_data(t[i]) - (char *)an_tensor_data(t[i - 1]));
        ck_assert_msg(t[i]->storage == t[0]->storage && gap == an_tensor_nbytes(t[i - 1]),
                      "layer %d: %s part %d does not follow part %d in one allocation", layer, what, i, i - 1);
    }
}

START_TEST(test_layer_projections_are_stacked_views) {
    an_ctx *ctx = test_ctx(6);
    an_model *m = load(ctx, FIXTURES "/tiny-qwen2", AN_F32);
    ck_assert(m->config.qkv_bias);
    for (int i = 0; i < m->config.num_layers; i++) {
        const an_layer *l = &m->layers[i];
        expect_stacked((an_tensor *const[]){l->q_proj.weight, l->k_proj.weight, l->v_proj.weight}, 3, "q/k/v weight", i);
        expect_stacked((an_tensor *const[]){l->q_proj.bias, l->k_proj.bias, l->v_proj.bias}, 3, "q/k/v bias", i);
        expect_stacked((an_tensor *const[]){l->gate_proj.weight, l->up_proj.weight}, 2, "gate/up weight", i);
    }
    /* the loaded values sit in the views: k_proj's first row as the checkpoint holds it */
    an_safetensors *st = NULL;
    ck_assert_msg(an_safetensors_open(ctx, FIXTURES "/tiny-qwen2/model.safetensors", &st) == AN_OK, "%s",
                  an_error_message(ctx));
    an_tensor *k = an_safetensors_load(ctx, st, "model.layers.1.self_attn.k_proj.weight", AN_F32, AN_CPU);
    ck_assert_msg(k != NULL, "%s", an_error_message(ctx));
    ck_assert(memcmp(an_tensor_data(k), an_tensor_data(m->layers[1].k_proj.weight), an_tensor_nbytes(k)) == 0);
    an_tensor_release(k);
    an_safetensors_close(st);
    an_model_free(m);
    test_ctx_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("model");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_qwen2_matches_transformers);
    tcase_add_test(tc, test_llama_matches_transformers);
    tcase_add_test(tc, test_checkpointed_models_match_transformers);
    tcase_add_test(tc, test_bf16_checkpoint_loads_and_tracks_f32);
    tcase_add_test(tc, test_negative_positions_are_rejected_once_per_forward);
    tcase_add_test(tc, test_bad_model_directories_are_named_errors);
    tcase_add_test(tc, test_saved_model_reloads_identically);
    tcase_add_test(tc, test_layer_projections_are_stacked_views);
    suite_add_tcase(s, tc);
    return test_run(s);
}
