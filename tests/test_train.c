/* test_train.c — whole runs of the trainer on a tiny model: LoRA and full fine-tuning lower the
 * loss and leave their artifacts; a run killed with SIGKILL and resumed gives bit-identical
 * losses to an uninterrupted one; gradient accumulation equals the bigger batch; bad recipes and
 * an occupied run directory are refused. */
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "model/model.h"
#include "model/save.h"
#include "recipe/recipe.h"
#include "support/files.h"
#include "support/test_util.h"
#include "train/train.h"

#define TOKENIZER ANNEAL_SOURCE_DIR "/tests/fixtures/tokenizer/qwen2"

/* A tiny Qwen2 (vocab fits the fixture tokenizer) and a small chat dataset in DIR. */
static void make_world(const char *dir) {
    an_ctx *ctx = test_ctx(1);
    an_model_config c = {0};
    c.architecture = AN_ARCH_QWEN2;
    snprintf(c.architecture_name, sizeof c.architecture_name, "Qwen2ForCausalLM");
    c.vocab_size = 1536, c.hidden_size = 32, c.intermediate_size = 64, c.num_layers = 2, c.num_heads = 4;
    c.num_kv_heads = 2, c.head_dim = 8, c.max_position_embeddings = 256, c.rms_norm_eps = 1e-6;
    c.rope = (an_rope_config){AN_ROPE_NEOX, 10000, 0, 0, 0, 0};
    c.qkv_bias = true, c.torch_dtype = AN_F32, c.bos_token_id = -1;
    an_model *m = NULL;
    ck_assert_int_eq(an_model_create(ctx, &c, AN_F32, AN_CPU, &m), AN_OK);
    ck_assert_int_eq(an_model_init_random(ctx, m, 0.05), AN_OK);
    char path[512];
    snprintf(path, sizeof path, "%s/model", dir);
    ck_assert_msg(an_model_save(ctx, m, path, AN_F32) == AN_OK, "%s", an_error_message(ctx));
    ck_assert_int_eq(an_model_copy_tokenizer(ctx, TOKENIZER, path), AN_OK);
    an_model_free(m);
    test_ctx_free(ctx);
    snprintf(path, sizeof path, "%s/chat.jsonl", dir);
    FILE *f = fopen(path, "w");
    const char *towns[] = {"Ashford", "Brindle", "Corvale", "Dunmoor", "Elmwick", "Fenholt"};
    for (int i = 0; i < 96; i++)
        fprintf(f, "{\"messages\": [{\"role\": \"user\", \"content\": \"Weather in %s?\"}, {\"role\": \"assistant\", "
                   "\"content\": \"Forecast for %s: rain, high %d, low %d.\"}]}\n",
                towns[i % 6], towns[i % 6], 10 + i % 7, i % 5);
    fclose(f);
}

/* Runs the test recipe (with DIR substituted) and `key=value` overrides in-process. */
static an_status train_with(const char *dir, const char *const *overrides, int n_overrides, an_train_summary *summary,
                            char *err, size_t err_size) {
    char yaml[4096];
    snprintf(yaml, sizeof yaml,
             "name: t\noutput_dir: %s/run\nseed: 3\ndevice: cpu\ndtype: float32\nmethod: lora\n"
             "model: {path: %s/model}\n"
             "lora: {rank: 4, alpha: 8, dropout: 0.1, targets: all-linear}\n"
             "data: {train: %s/chat.jsonl, validation_fraction: 0.1, seq_len: 64, packing: true, shuffle: true}\n"
             "training: {micro_batch: 4, grad_accum: 1, max_steps: 12, eval_every: 6}\n"
             "optimizer: {lr: 2.0e-2}\nschedule: {type: cosine, warmup_steps: 2}\n"
             "checkpoint: {every: 3, keep_last: 2}\nlogging: {every: 1, progress: off, samples: 1, sample_tokens: 8}\n",
             dir, dir, dir);
    an_ctx *ctx = test_ctx(9);
    an_recipe r;
    an_status st = an_recipe_parse(ctx, "test.yaml", yaml, strlen(yaml), n_overrides, overrides, &r);
    char *text = NULL;
    if (st == AN_OK) st = an_recipe_to_yaml(ctx, &r, &text);
    FILE *quiet = fopen("/dev/null", "w");
    if (st == AN_OK) st = an_train(ctx, &r, text, quiet, summary);
    fclose(quiet);
    if (st == AN_OK) an_recipe_free(&r);
    else if (text) an_recipe_free(&r);
    snprintf(err, err_size, "%s", an_error_message(ctx));
    free(text);
    an_error_clear(ctx);
    test_ctx_free(ctx);
    return st;
}

/* The last logged training loss of each step 1..n from RUN/metrics.jsonl (later lines win). */
#define TRAIN(dir, summary, err, ...) \
    train_with(dir, (const char *const[]){"seed=3", __VA_ARGS__}, \
               (int)(sizeof((const char *const[]){"seed=3", __VA_ARGS__}) / sizeof(const char *)), summary, err, sizeof err)

static int read_losses(const char *dir, double *loss, int n) {
    char path[512], line[1024];
    snprintf(path, sizeof path, "%s/run/metrics.jsonl", dir);
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    int seen = 0;
    for (int i = 0; i < n; i++) loss[i] = NAN;
    while (fgets(line, sizeof line, f)) {
        json_t *j = json_loads(line, 0, NULL);
        ck_assert_ptr_nonnull(j);
        const char *kind = json_string_value(json_object_get(j, "kind"));
        int step = (int)json_integer_value(json_object_get(j, "step"));
        if (kind && strcmp(kind, "train") == 0 && step >= 1 && step <= n) {
            loss[step - 1] = json_number_value(json_object_get(j, "loss"));
            seen++;
        }
        json_decref(j);
    }
    fclose(f);
    return seen;
}

static void fresh_dir(char *dir) {
    strcpy(dir, "/tmp/anneal-train-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    make_world(dir);
}

static bool exists_in(const char *dir, const char *name) {
    char path[600];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    struct stat sb;
    return stat(path, &sb) == 0;
}

START_TEST(test_lora_run_learns_and_leaves_artifacts) {
    char dir[64], err[1024];
    fresh_dir(dir);
    an_train_summary s;
    an_status st = TRAIN(dir, &s, err, "export={format: safetensors_merged, dtype: float32}");
    ck_assert_msg(st == AN_OK, "%s", err);
    printf("LoRA: eval loss %.4f -> %.4f over %lld steps\n", s.first_eval_loss, s.last_eval_loss, (long long)s.final_step);
    ck_assert_int_eq(s.final_step, 12);
    ck_assert_msg(s.last_eval_loss < s.first_eval_loss - 0.5, "eval loss %.4f -> %.4f", s.first_eval_loss, s.last_eval_loss);
    ck_assert(exists_in(dir, "run/step_12/adapter_model.safetensors") && exists_in(dir, "run/step_12/SHA256SUMS"));
    ck_assert(exists_in(dir, "run/step_9") && !exists_in(dir, "run/step_6")); /* keep_last 2 */
    ck_assert(exists_in(dir, "run/adapter/adapter_config.json") && exists_in(dir, "run/merged/model.safetensors"));
    ck_assert(exists_in(dir, "run/merged/tokenizer.json") && exists_in(dir, "run/samples.txt"));
    ck_assert(exists_in(dir, "run/recipe.yaml") && exists_in(dir, "run/metrics.jsonl"));
    /* everything is done: running again resumes at step 12 and takes no step */
    ck_assert_msg(TRAIN(dir, &s, err, "logging.every=1") == AN_OK, "%s", err);
    ck_assert_int_eq(s.start_step, 12);
    ck_assert_int_eq(s.final_step, 12);
    remove_tree(dir);
}
END_TEST

START_TEST(test_full_fine_tune_learns) {
    char dir[64], err[1024];
    fresh_dir(dir);
    an_train_summary s;
    an_status st = TRAIN(dir, &s, err, "method=full", "optimizer={lr: 3.0e-3, weight_decay: 0.01}");
    ck_assert_msg(st == AN_OK, "%s", err);
    printf("full: eval loss %.4f -> %.4f\n", s.first_eval_loss, s.last_eval_loss);
    ck_assert(s.last_eval_loss < s.first_eval_loss - 0.5);
    ck_assert(exists_in(dir, "run/step_12/model.safetensors") && exists_in(dir, "run/step_12/config.json"));
    remove_tree(dir);
}
END_TEST

START_TEST(test_resume_after_sigkill_is_bit_identical) {
    enum { steps = 12 };
    char a[64], b[64], err[1024];
    an_train_summary s;
    fresh_dir(a);
    ck_assert_msg(TRAIN(a, &s, err, "logging.every=1") == AN_OK, "%s", err);
    double want[steps], got[steps];
    ck_assert_int_eq(read_losses(a, want, steps), steps);

    fresh_dir(b);
    /* a child trains and is killed once it has logged step 7 (step_6 is the newest checkpoint) */
    pid_t child = fork();
    if (child == 0) {
        an_status cs = TRAIN(b, &s, err, "logging.every=1");
        _exit(cs == AN_OK ? 0 : 3);
    }
    char path[600], line[1024];
    snprintf(path, sizeof path, "%s/run/metrics.jsonl", b);
    bool killed = false;
    for (int wait = 0; wait < 6000 && !killed; wait++) {
        FILE *f = fopen(path, "r");
        int train_lines = 0;
        while (f && fgets(line, sizeof line, f)) train_lines += strstr(line, "\"train\"") != NULL;
        if (f) fclose(f);
        if (train_lines >= 7) {
            kill(child, SIGKILL);
            killed = true;
        } else nanosleep(&(struct timespec){0, 10000000}, NULL);
    }
    int status;
    waitpid(child, &status, 0);
    ck_assert_msg(killed && WIFSIGNALED(status), "the child finished before it could be killed");
    ck_assert_msg(TRAIN(b, &s, err, "logging.every=1") == AN_OK, "%s", err);
    ck_assert_msg(s.start_step >= 6 && s.start_step < steps, "resumed at step %lld", (long long)s.start_step);
    ck_assert_int_eq(s.final_step, steps);
    read_losses(b, got, steps);
    for (int i = 0; i < steps; i++)
        ck_assert_msg(memcmp(&got[i], &want[i], sizeof(double)) == 0, "step %d: %.17g after resume, %.17g uninterrupted",
                      i + 1, got[i], want[i]);
    printf("killed after step 7, resumed from step %lld: %d losses bit-identical\n", (long long)s.start_step, steps);
    remove_tree(a), remove_tree(b);
}
END_TEST

/* The first six losses of a fresh run of the test recipe without checkpoints or samples, with
 * these overrides on top. */
static void six_losses(const char *const *overrides, int n, double loss[6]) {
    char dir[64], err[1024];
    const char *all[8] = {"seed=3", "checkpoint.every=0", "logging.samples=0"};
    ck_assert_int_le(n, 5);
    memcpy(all + 3, overrides, (size_t)n * sizeof *all);
    an_train_summary s;
    fresh_dir(dir);
    ck_assert_msg(train_with(dir, all, 3 + n, &s, err, sizeof err) == AN_OK, "%s", err);
    read_losses(dir, loss, 6);
    remove_tree(dir);
}
#define SIX_LOSSES(loss, ...) \
    six_losses((const char *const[]){__VA_ARGS__}, (int)(sizeof((const char *const[]){__VA_ARGS__}) / sizeof(const char *)), loss)

START_TEST(test_gradient_accumulation_equals_bigger_batch) {
    double one[6], two[6];
    SIX_LOSSES(one, "lora.dropout=0.0", "training={micro_batch: 8, grad_accum: 1, max_steps: 6, eval_every: 0}");
    SIX_LOSSES(two, "lora.dropout=0.0", "training={micro_batch: 2, grad_accum: 4, max_steps: 6, eval_every: 0}");
    for (int i = 0; i < 6; i++)
        ck_assert_msg(fabs(one[i] - two[i]) <= 1e-5 * fabs(one[i]), "step %d: batch 8 loss %.9g, 4 x 2 accumulated %.9g",
                      i + 1, one[i], two[i]);
}
END_TEST

/* The update during backward (optimizer.update_in_backward) moves every parameter exactly as the
 * step after backward does: the same losses bit for bit, with gradient accumulation. */
START_TEST(test_update_in_backward_gives_the_same_losses) {
    double after[6], during[6];
    SIX_LOSSES(after, "grad_clip=0", "training={micro_batch: 2, grad_accum: 2, max_steps: 6, eval_every: 0}");
    SIX_LOSSES(during, "grad_clip=0", "optimizer.update_in_backward=true",
               "training={micro_batch: 2, grad_accum: 2, max_steps: 6, eval_every: 0}");
    for (int i = 0; i < 6; i++)
        ck_assert_msg(memcmp(&after[i], &during[i], sizeof(double)) == 0, "step %d: loss %.17g stepping after backward, "
                      "%.17g in it", i + 1, after[i], during[i]);
    ck_assert_msg(after[5] != after[0], "the loss never moved");
}
END_TEST

START_TEST(test_bad_recipes_and_occupied_run_dirs_are_refused) {
    char dir[64], err[1024];
    fresh_dir(dir);
    an_train_summary s;
    ck_assert_int_eq(TRAIN(dir, &s, err, "training.micro_bach=2"), AN_ERR_INPUT);
    ck_assert_msg(strstr(err, "did you mean 'training.micro_batch'"), "%s", err);
    ck_assert_msg(TRAIN(dir, &s, err, "training.max_steps=3", "training.eval_every=0") == AN_OK, "%s", err);
    ck_assert_int_eq(TRAIN(dir, &s, err, "checkpoint.resume=never"), AN_ERR_INPUT);
    ck_assert_msg(strstr(err, "already holds checkpoints"), "%s", err);
    char path[600];
    snprintf(path, sizeof path, "%s/chat.jsonl", dir);
    FILE *f = fopen(path, "a");
    fputs("{\"messages\": oops\n", f);
    fclose(f);
    ck_assert_int_eq(TRAIN(dir, &s, err, "output_dir=/tmp/anneal-never-used-x"), AN_ERR_INPUT);
    ck_assert_msg(strstr(err, "chat.jsonl") && strstr(err, "97"), "%s", err);
    remove_tree(dir);
    remove_tree("/tmp/anneal-never-used-x");
}
END_TEST

int main(void) {
    Suite *s = suite_create("train");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_lora_run_learns_and_leaves_artifacts);
    tcase_add_test(tc, test_full_fine_tune_learns);
    tcase_add_test(tc, test_resume_after_sigkill_is_bit_identical);
    tcase_add_test(tc, test_gradient_accumulation_equals_bigger_batch);
    tcase_add_test(tc, test_update_in_backward_gives_the_same_losses);
    tcase_add_test(tc, test_bad_recipes_and_occupied_run_dirs_are_refused);
    suite_add_tcase(s, tc);
    return test_run(s);
}
