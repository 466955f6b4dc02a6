/* test_checkpoint.c — checkpoints resume bit for bit: a LoRA run (bf16, dropout on, so the RNG
 * matters) and full fine-tunes (f32 and bf16) are trained a few steps, saved, perturbed, loaded;
 * every weight, optimizer state tensor, the RNG, the cursor and the counters come back identical
 * and the next step equals the step taken without save/restore. Also: the full fine-tune directory
 * is a Hugging Face model directory anneal loads and `sha256sum -c` accepts; retention keeps K;
 * several ranks write one state file each; every damaged or foreign checkpoint is refused with a
 * message naming the file; SHA-256 matches the published test vectors. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt/checkpoint.h"
#include "ckpt/safetensors.h"
#include "ckpt/sha256.h"
#include "model/load.h"
#include "model/lora.h"
#include "support/files.h"
#include "support/test_util.h"

#define TINY_QWEN2 ANNEAL_SOURCE_DIR "/tests/fixtures/models/tiny-qwen2"
#define RECIPE "model: tiny\nmethod: lora\nlr: 0.01\n"

/* EXPECT_INPUT_ERROR, printing the message first: the test log shows what a user would read. */
#define REFUSED(ctx, call, what, ...)                                  \
    do {                                                               \
        an_status refused_ = (call);                                   \
        printf("refused (%s): %s\n", (what), an_error_message(ctx));  \
        EXPECT_INPUT_ERROR((ctx), refused_, (what), __VA_ARGS__);      \
    } while (0)

/* ---- a tiny run --------------------------------------------------------------------------------- */

static an_model_config tiny_config(void) {
    an_model_config c;
    memset(&c, 0, sizeof c);
    c.architecture = AN_ARCH_QWEN2;
    snprintf(c.architecture_name, sizeof c.architecture_name, "Qwen2ForCausalLM");
    c.vocab_size = 37, c.hidden_size = 16, c.intermediate_size = 24, c.num_layers = 2;
    c.num_heads = 4, c.num_kv_heads = 2, c.head_dim = 4, c.max_position_embeddings = 64;
    c.rms_norm_eps = 1e-6;
    c.rope = (an_rope_config){AN_ROPE_NEOX, 10000.0, 0, 0, 0, 0};
    c.qkv_bias = true;
    c.torch_dtype = AN_F32;
    c.bos_token_id = -1;
    return c;
}

typedef struct {
    an_model *model;
    an_optim *opt;
    an_data_cursor cursor;
} run;

static an_optim *new_optim(an_ctx *ctx, const an_param *params, int n) {
    an_adamw_config c = an_adamw_config_default();
    c.lr = 1e-2, c.weight_decay = 0.1, c.max_grad_norm = 1.0;
    c.schedule = (an_schedule){AN_SCHEDULE_COSINE, 2, 20, 0.1};
    an_optim *opt = NULL;
    ck_assert_int_eq(an_optim_create(ctx, &c, &opt), AN_OK);
    ck_assert_msg(an_optim_add_params(ctx, opt, params, n) == AN_OK, "%s", an_error_message(ctx));
    return opt;
}

/* A LoRA run on the hand-made config; base weights from `base` when given (a resumed run starts
 * from the same base model), else random. */
static run lora_run(an_ctx *ctx, an_dtype dtype, unsigned targets, int64_t rank, const an_model *base) {
    an_model_config config = tiny_config();
    run r = {NULL, NULL, {0, 0, 0}};
    ck_assert_int_eq(an_model_create(ctx, &config, dtype, AN_CPU, &r.model), AN_OK);
    ck_assert_int_eq(an_model_init_random(ctx, r.model, 0.2), AN_OK);
    for (int i = 0; base && i < r.model->n_params; i++)
        ck_assert_int_eq(an_tensor_copy_into(ctx, *r.model->params[i].slot, *base->params[i].slot), AN_OK);
    an_lora_config lora = {rank, 8.0, 0.1, false, targets};
    ck_assert_int_eq(an_lora_attach(ctx, r.model, &lora), AN_OK);
    r.model->training = true; /* adapter dropout draws from ctx->rng */
    r.opt = new_optim(ctx, r.model->adapter_params, r.model->n_adapter_params);
    return r;
}

/* A full fine-tune of the tiny-qwen2 fixture's architecture, random weights of scale std. */
static run full_run(an_ctx *ctx, an_dtype dtype, double std) {
    an_model_config config;
    ck_assert_int_eq(an_model_config_load(ctx, TINY_QWEN2, &config), AN_OK);
    run r = {NULL, NULL, {0, 0, 0}};
    ck_assert_int_eq(an_model_create(ctx, &config, dtype, AN_CPU, &r.model), AN_OK);
    ck_assert_int_eq(an_model_init_random(ctx, r.model, std), AN_OK);
    an_model_set_requires_grad(r.model, true);
    r.opt = new_optim(ctx, r.model->params, r.model->n_params);
    return r;
}

static void run_free(run *r) {
    an_optim_zero_grad(r->opt);
    an_optim_free(r->opt);
    an_model_free(r->model);
}

/* One optimizer step on the causal LM loss of ids (labels = ids). */
static void train_step(an_ctx *ctx, run *r, an_tensor *ids) {
    an_tensor *loss = an_model_loss(ctx, r->model, ids, ids, NULL, NULL, NULL);
    ck_assert_msg(loss != NULL, "%s", an_error_message(ctx));
    ck_assert_int_eq(an_backward(ctx, loss), AN_OK);
    an_tensor_release(loss);
    ck_assert_msg(an_optim_step(ctx, r->opt, NULL) == AN_OK, "%s", an_error_message(ctx));
    an_optim_zero_grad(r->opt);
    r->cursor.position += ids->shape[0];
}

static an_ckpt_contents contents_of(an_ctx *ctx, run *r, int64_t step, const char *base_dir, int keep_last) {
    an_ckpt_contents c;
    memset(&c, 0, sizeof c);
    c.step = step, c.model = r->model, c.optim = r->opt, c.rng = &ctx->rng, c.cursor = &r->cursor;
    c.recipe_text = RECIPE, c.base_model_dir = base_dir, c.keep_last = keep_last;
    c.n_counters = 2;
    snprintf(c.counters[0].name, sizeof c.counters[0].name, "tokens_seen");
    c.counters[0].value = 1000 * step + 7;
    snprintf(c.counters[1].name, sizeof c.counters[1].name, "stage");
    c.counters[1].value = -3;
    return c;
}

static void save(an_ctx *ctx, const char *run_dir, an_ckpt_contents *c) {
    ck_assert_msg(an_ckpt_save(ctx, run_dir, c) == AN_OK, "save step %lld: %s", (long long)c->step, an_error_message(ctx));
}

/* ---- snapshots ---------------------------------------------------------------------------------- */

/* Copies of every trainable weight and every optimizer state tensor, by name. */
typedef struct {
    int n;
    char names[512][160];
    an_tensor *tensors[512];
    int64_t optim_step;
} snapshot;

static void snap(an_ctx *ctx, const run *r, snapshot *s) {
    s->n = 0;
    const an_param *table = r->model->n_adapter_params ? r->model->adapter_params : r->model->params;
    int n = r->model->n_adapter_params ? r->model->n_adapter_params : r->model->n_params;
    for (int i = 0; i < n; i++, s->n++) {
        snprintf(s->names[s->n], sizeof s->names[s->n], "%s", table[i].name);
        s->tensors[s->n] = an_tensor_to(ctx, *table[i].slot, (*table[i].slot)->dtype, AN_CPU);
    }
    for (int i = 0; i < an_optim_state_count(r->opt); i++, s->n++) {
        const char *name;
        an_tensor *t = an_optim_state_at(r->opt, i, &name);
        snprintf(s->names[s->n], sizeof s->names[s->n], "%s", name);
        s->tensors[s->n] = an_tensor_to(ctx, t, t->dtype, AN_CPU);
    }
    ck_assert_int_lt(s->n, 512);
    s->optim_step = an_optim_step_count(r->opt);
}

static void snap_free(snapshot *s) {
    for (int i = 0; i < s->n; i++) an_tensor_release(s->tensors[i]);
    s->n = 0;
}

static bool same_bits(const an_tensor *a, const an_tensor *b) {
    return a->dtype == b->dtype && an_tensor_same_shape(a, b) && an_tensor_nbytes(a) == an_tensor_nbytes(b) &&
           memcmp(an_tensor_data(a), an_tensor_data(b), an_tensor_nbytes(a)) == 0;
}

/* Every tensor of r equals the snapshot's bit for bit (and the counts agree). */
static void assert_matches(an_ctx *ctx, const run *r, const snapshot *want, const char *what) {
    snapshot got;
    snap(ctx, r, &got);
    ck_assert_int_eq(got.n, want->n);
    ck_assert_int_eq(got.optim_step, want->optim_step);
    for (int i = 0; i < want->n; i++) {
        ck_assert_str_eq(got.names[i], want->names[i]);
        ck_assert_msg(same_bits(got.tensors[i], want->tensors[i]), "%s: %s is not bit-identical", what, want->names[i]);
    }
    snap_free(&got);
}

static bool any_differs(an_ctx *ctx, const run *r, const snapshot *want) {
    snapshot got;
    snap(ctx, r, &got);
    bool differs = got.optim_step != want->optim_step;
    for (int i = 0; i < want->n && i < got.n; i++) differs |= !same_bits(got.tensors[i], want->tensors[i]);
    snap_free(&got);
    return differs;
}

/* ---- resume is bit for bit ---------------------------------------------------------------------- */

/* Trains `a` 3 steps, saves step 3, takes step 4 as the reference; then `b` (built by the caller,
 * perturbed here) loads step 3 and takes step 4 itself: both must agree bit for bit throughout. */
static void check_resume(an_ctx *ctx, run *a, run *b, const char *base_dir, const char *what) {
    char run_dir[512];
    make_tmpdir(run_dir, sizeof run_dir);
    an_tensor *batch[5];
    for (int i = 0; i < 5; i++) batch[i] = test_ids(ctx, AN_I64, 2, (int64_t[]){2, 6}, a->model->config.vocab_size);
    a->cursor = (an_data_cursor){2, 40, -987654321};
    for (int i = 0; i < 3; i++) train_step(ctx, a, batch[i]);
    an_ckpt_contents ca = contents_of(ctx, a, 3, base_dir, 0);
    save(ctx, run_dir, &ca);
    an_rng rng_saved = ctx->rng;
    double lr_saved = an_optim_lr(a->opt);
    an_data_cursor cursor_saved = a->cursor;
    snapshot at_save, after_next;
    snap(ctx, a, &at_save);
    train_step(ctx, a, batch[3]);
    snap(ctx, a, &after_next);
    an_rng rng_after = ctx->rng;

    /* Perturb everything b holds: its weights differ already; its optimizer takes a step of its
     * own; the RNG and cursor are set elsewhere. */
    train_step(ctx, b, batch[4]);
    ck_assert(any_differs(ctx, b, &at_save));
    an_rng_init(&ctx->rng, 4242);
    (void)an_rng_u64(&ctx->rng);
    b->cursor = (an_data_cursor){9, 9, 9};

    char found[1024];
    int64_t step;
    ck_assert_msg(an_ckpt_find_latest(ctx, run_dir, found, sizeof found, &step) == AN_OK, "%s", an_error_message(ctx));
    ck_assert_int_eq(step, 3);
    an_ckpt_contents cb = contents_of(ctx, b, -1, NULL, 0);
    cb.n_counters = 0;
    ck_assert_msg(an_ckpt_load(ctx, found, &cb) == AN_OK, "%s: %s", what, an_error_message(ctx));
    assert_matches(ctx, b, &at_save, what);
    ck_assert(ctx->rng.seed == rng_saved.seed && ctx->rng.offset == rng_saved.offset);
    ck_assert(memcmp(&b->cursor, &cursor_saved, sizeof cursor_saved) == 0);
    ck_assert_int_eq(cb.step, 3);
    ck_assert_int_eq(cb.n_counters, 2);
    for (int i = 0; i < 2; i++) { /* the file lists them by name */
        const an_ckpt_counter *k = &cb.counters[i];
        ck_assert(!strcmp(k->name, "stage") ? k->value == -3 : !strcmp(k->name, "tokens_seen") && k->value == 3007);
    }
    ck_assert(an_optim_lr(b->opt) == lr_saved); /* the schedule continues where it was */

    train_step(ctx, b, batch[3]);
    assert_matches(ctx, b, &after_next, what);
    ck_assert(ctx->rng.seed == rng_after.seed && ctx->rng.offset == rng_after.offset);
    printf("%s: resumed step 4 is bit-identical (%d tensors, rng offset %llu)\n", what, after_next.n,
           (unsigned long long)rng_after.offset);

    snap_free(&at_save), snap_free(&after_next);
    for (int i = 0; i < 5; i++) an_tensor_release(batch[i]);
    remove_tree(run_dir);
}

START_TEST(test_lora_resume_is_bit_identical) {
    an_ctx *ctx = test_ctx(11);
    run a = lora_run(ctx, AN_BF16, AN_LORA_Q | AN_LORA_V | AN_LORA_DOWN, 2, NULL);
    run b = lora_run(ctx, AN_BF16, AN_LORA_Q | AN_LORA_V | AN_LORA_DOWN, 2, a.model);
    check_resume(ctx, &a, &b, NULL, "lora bf16");
    run_free(&a), run_free(&b);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_full_finetune_resume_is_bit_identical) {
    an_dtype dtypes[2] = {AN_F32, AN_BF16};
    for (int d = 0; d < 2; d++) {
        an_ctx *ctx = test_ctx(12);
        run a = full_run(ctx, dtypes[d], 0.02), b = full_run(ctx, dtypes[d], 0.05);
        check_resume(ctx, &a, &b, TINY_QWEN2, dtypes[d] == AN_F32 ? "full f32" : "full bf16");
        run_free(&a), run_free(&b);
        test_ctx_free(ctx);
    }
}
END_TEST

/* ---- the directory ------------------------------------------------------------------------------ */

START_TEST(test_full_finetune_step_is_a_hf_model_dir) {
    an_ctx *ctx = test_ctx(13);
    run a = full_run(ctx, AN_BF16, 0.02);
    an_tensor *ids = test_ids(ctx, AN_I64, 2, (int64_t[]){2, 5}, 256);
    train_step(ctx, &a, ids);
    char run_dir[512], dir[600], path[700];
    make_tmpdir(run_dir, sizeof run_dir);
    an_ckpt_contents c = contents_of(ctx, &a, 1, TINY_QWEN2, 0);
    save(ctx, run_dir, &c);
    an_ckpt_step_dir(run_dir, 1, dir, sizeof dir);
    static const char *files[] = {"SHA256SUMS", "config.json", "generation_config.json", "model.safetensors",
                                  "recipe.yaml", "training_state.h5"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        ck_assert_msg(exists(path), "%s is missing", path);
    }
    size_t n1, n2;
    snprintf(path, sizeof path, "%s/config.json", dir);
    unsigned char *copy = read_bytes(path, &n1), *orig = read_bytes(TINY_QWEN2 "/config.json", &n2);
    ck_assert(n1 == n2 && memcmp(copy, orig, n1) == 0);
    free(copy), free(orig);
    snprintf(path, sizeof path, "%s/recipe.yaml", dir);
    char *recipe = (char *)read_bytes(path, &n1);
    ck_assert(n1 == strlen(RECIPE) && memcmp(recipe, RECIPE, n1) == 0);
    free(recipe);

    /* transformers needs metadata format=pt; anneal loads it as a model directory. */
    an_safetensors *st;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    ck_assert_int_eq(an_safetensors_open(ctx, path, &st), AN_OK);
    ck_assert_str_eq(an_safetensors_metadata(st, "format"), "pt");
    ck_assert_int_eq(an_safetensors_count(st), a.model->n_params);
    an_safetensors_close(st);
    an_model *loaded;
    ck_assert_msg(an_model_load(ctx, dir, AN_BF16, AN_CPU, &loaded) == AN_OK, "%s", an_error_message(ctx));
    for (int i = 0; i < a.model->n_params; i++)
        ck_assert_msg(same_bits(*loaded->params[i].slot, *a.model->params[i].slot), "%s", a.model->params[i].name);
    an_model_free(loaded);

    /* SHA256SUMS is what sha256sum writes, and lists every file. */
    if (system("command -v sha256sum >/dev/null 2>&1") == 0) {
        char cmd[800];
        snprintf(cmd, sizeof cmd, "cd '%s' && sha256sum -c --quiet --strict SHA256SUMS", dir);
        ck_assert_msg(system(cmd) == 0, "sha256sum -c rejects %s/SHA256SUMS", dir);
    } else {
        printf("SKIP sha256sum -c: no sha256sum on this machine\n");
    }
    snprintf(path, sizeof path, "%s/SHA256SUMS", dir);
    char *sums = (char *)read_bytes(path, &n1);
    sums[n1] = '\0';
    int lines = 0;
    for (char *p = sums; *p; p++) lines += *p == '\n';
    ck_assert_int_eq(lines, (int)(sizeof files / sizeof *files) - 1);
    free(sums);

    an_tensor_release(ids);
    run_free(&a);
    remove_tree(run_dir);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_retention_keeps_the_last_k) {
    an_ctx *ctx = test_ctx(14);
    run a = lora_run(ctx, AN_F32, AN_LORA_Q, 1, NULL);
    char run_dir[512], dir[600];
    make_tmpdir(run_dir, sizeof run_dir);
    /* A checkpoint with a larger N (another run's future) is never deleted. */
    an_ckpt_contents far = contents_of(ctx, &a, 90, NULL, 0);
    save(ctx, run_dir, &far);
    for (int64_t step = 1; step <= 5; step++) {
        an_ckpt_contents c = contents_of(ctx, &a, step, NULL, 2);
        save(ctx, run_dir, &c);
    }
    for (int64_t step = 1; step <= 5; step++) {
        an_ckpt_step_dir(run_dir, step, dir, sizeof dir);
        ck_assert_msg(exists(dir) == (step >= 4), "step_%lld %s", (long long)step, exists(dir) ? "kept" : "deleted");
    }
    an_ckpt_step_dir(run_dir, 90, dir, sizeof dir);
    ck_assert(exists(dir));
    /* A checkpoint is never overwritten. */
    an_ckpt_contents again = contents_of(ctx, &a, 5, NULL, 2);
    REFUSED(ctx, an_ckpt_save(ctx, run_dir, &again), "save over step_5", "step_5", "already exists");
    run_free(&a);
    remove_tree(run_dir);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_each_rank_writes_its_own_state_file) {
    an_ctx *ctx = test_ctx(15);
    run a = lora_run(ctx, AN_F32, AN_LORA_Q | AN_LORA_K, 2, NULL);
    an_tensor *ids = test_ids(ctx, AN_I64, 2, (int64_t[]){1, 5}, 37);
    train_step(ctx, &a, ids);
    char run_dir[512], dir[600], path[700];
    make_tmpdir(run_dir, sizeof run_dir);
    an_ckpt_contents r0 = contents_of(ctx, &a, 7, NULL, 0), r1 = r0;
    r0.world_size = r1.world_size = 2;
    r1.rank = 1, r1.recipe_text = NULL;
    REFUSED(ctx, an_ckpt_save(ctx, run_dir, &r0), "one-call save of 2 ranks", "an_ckpt_save_begin");
    ck_assert_int_eq(an_ckpt_save_begin(ctx, run_dir, 7), AN_OK);
    ck_assert_msg(an_ckpt_save_rank(ctx, run_dir, &r1) == AN_OK, "%s", an_error_message(ctx));
    REFUSED(ctx, an_ckpt_save_commit(ctx, run_dir, &r0), "commit before rank 0 wrote", "rank 0",
                       "training_state.rank0.h5");
    ck_assert_msg(an_ckpt_save_rank(ctx, run_dir, &r0) == AN_OK, "%s", an_error_message(ctx));
    ck_assert_msg(an_ckpt_save_commit(ctx, run_dir, &r0) == AN_OK, "%s", an_error_message(ctx));
    an_ckpt_step_dir(run_dir, 7, dir, sizeof dir);
    for (int r = 0; r < 2; r++) {
        snprintf(path, sizeof path, "%s/training_state.rank%d.h5", dir, r);
        ck_assert_msg(exists(path), "%s is missing", path);
    }
    snprintf(path, sizeof path, "%s/training_state.h5", dir);
    ck_assert(!exists(path));

    an_ckpt_contents load = contents_of(ctx, &a, -1, NULL, 0);
    load.world_size = 2, load.rank = 1;
    ck_assert_msg(an_ckpt_load(ctx, dir, &load) == AN_OK, "%s", an_error_message(ctx));
    ck_assert_int_eq(load.step, 7);
    load.world_size = 1, load.rank = 0;
    REFUSED(ctx, an_ckpt_load(ctx, dir, &load), "load with another world size", "training_state.h5",
                       "several ranks", "world size 1");
    an_tensor_release(ids);
    run_free(&a);
    remove_tree(run_dir);
    test_ctx_free(ctx);
}
END_TEST

/* ---- damaged and foreign checkpoints ------------------------------------------------------------ */

static void flip_byte(const char *path, size_t at) {
    size_t n;
    unsigned char *p = read_bytes(path, &n);
    ck_assert(at < n);
    p[at] ^= 0x40;
    write_bytes(path, p, n);
    free(p);
}

START_TEST(test_damaged_checkpoints_are_refused) {
    an_ctx *ctx = test_ctx(16);
    run a = lora_run(ctx, AN_F32, AN_LORA_Q | AN_LORA_V, 2, NULL);
    an_tensor *ids = test_ids(ctx, AN_I64, 2, (int64_t[]){2, 5}, 37);
    char run_dir[512], s2[600], s3[600], path[700], found[1024];
    make_tmpdir(run_dir, sizeof run_dir);
    for (int64_t step = 2; step <= 3; step++) {
        train_step(ctx, &a, ids);
        an_ckpt_contents c = contents_of(ctx, &a, step, NULL, 0);
        save(ctx, run_dir, &c);
    }
    an_ckpt_step_dir(run_dir, 2, s2, sizeof s2);
    an_ckpt_step_dir(run_dir, 3, s3, sizeof s3);
    int64_t step;
    an_ckpt_contents load = contents_of(ctx, &a, -1, NULL, 0);

    /* A flipped byte in the adapter: refused by verify, load and resume: auto, which names step_2. */
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", s3);
    flip_byte(path, 200);
    REFUSED(ctx, an_ckpt_verify(ctx, s3), "flipped byte", "adapter_model.safetensors", "does not match",
                       "SHA256SUMS");
    REFUSED(ctx, an_ckpt_load(ctx, s3, &load), "load flipped byte", "adapter_model.safetensors", "does not match");
    REFUSED(ctx, an_ckpt_find_latest(ctx, run_dir, found, sizeof found, &step), "auto over a damaged newest",
                       s3, "adapter_model.safetensors", "does not fall back", s2);
    flip_byte(path, 200);
    ck_assert_msg(an_ckpt_verify(ctx, s3) == AN_OK, "%s", an_error_message(ctx));

    /* The training state deleted, then truncated. */
    snprintf(path, sizeof path, "%s/training_state.h5", s3);
    size_t n;
    unsigned char *state = read_bytes(path, &n);
    ck_assert_int_eq(unlink(path), 0);
    REFUSED(ctx, an_ckpt_verify(ctx, s3), "deleted state", "training_state.h5", "missing");
    write_bytes(path, state, n / 2);
    REFUSED(ctx, an_ckpt_load(ctx, s3, &load), "truncated state", "training_state.h5", "does not match");
    /* Even with sums that agree (rewritten by hand), the HDF5 reader refuses the truncated file. */
    ck_assert_int_eq(an_sha256sums_write(ctx, s3), AN_OK);
    snapshot before;
    snap(ctx, &a, &before);
    REFUSED(ctx, an_ckpt_load(ctx, s3, &load), "truncated state, sums rewritten", "training_state.h5",
                       "truncated");
    assert_matches(ctx, &a, &before, "after a refused load");
    write_bytes(path, state, n);
    ck_assert_int_eq(an_sha256sums_write(ctx, s3), AN_OK);
    free(state);

    /* SHA256SUMS missing (a save that died before its last file), a file nobody listed. */
    snprintf(path, sizeof path, "%s/SHA256SUMS", s3);
    unsigned char *sums = read_bytes(path, &n);
    ck_assert_int_eq(unlink(path), 0);
    REFUSED(ctx, an_ckpt_verify(ctx, s3), "no sums", "SHA256SUMS", "incomplete");
    write_bytes(path, sums, n);
    free(sums);
    snprintf(path, sizeof path, "%s/notes.txt", s3);
    write_bytes(path, "hi\n", 3);
    REFUSED(ctx, an_ckpt_verify(ctx, s3), "unlisted file", "notes.txt", "not listed");
    ck_assert_int_eq(unlink(path), 0);

    /* Leftover .tmp directories (a save killed midway) are ignored, then removed. */
    char leftover[600];
    snprintf(leftover, sizeof leftover, "%s/step_9.tmp", run_dir);
    ck_assert_int_eq(mkdir(leftover, 0755), 0);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", leftover);
    write_bytes(path, "partial", 7);
    ck_assert_msg(an_ckpt_find_latest(ctx, run_dir, found, sizeof found, &step) == AN_OK, "%s", an_error_message(ctx));
    ck_assert_int_eq(step, 3);
    ck_assert_str_eq(found, s3);
    ck_assert(!exists(leftover));
    snprintf(leftover, sizeof leftover, "%s/step_4.tmp", run_dir);
    ck_assert_int_eq(mkdir(leftover, 0755), 0);
    an_ckpt_contents c4 = contents_of(ctx, &a, 4, NULL, 0);
    save(ctx, run_dir, &c4); /* the save of the same step cleans it first */
    ck_assert(!exists(leftover));

    /* Every damaged checkpoint: the message says so. */
    snprintf(path, sizeof path, "%s/step_4/recipe.yaml", run_dir);
    flip_byte(path, 0);
    snprintf(path, sizeof path, "%s/recipe.yaml", s3);
    flip_byte(path, 0);
    snprintf(path, sizeof path, "%s/recipe.yaml", s2);
    flip_byte(path, 0);
    REFUSED(ctx, an_ckpt_find_latest(ctx, run_dir, found, sizeof found, &step), "all damaged", "step_4",
                       "recipe.yaml", "No older checkpoint");

    an_tensor_release(ids);
    snap_free(&before);
    run_free(&a);
    remove_tree(run_dir);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_checkpoints_of_another_model_are_refused) {
    an_ctx *ctx = test_ctx(17);
    run a = lora_run(ctx, AN_F32, AN_LORA_Q | AN_LORA_V, 2, NULL);
    an_tensor *ids = test_ids(ctx, AN_I64, 2, (int64_t[]){2, 5}, 37);
    train_step(ctx, &a, ids);
    char run_dir[512], other_dir[512], dir[600], other[600], path[700], from[700];
    make_tmpdir(run_dir, sizeof run_dir);
    make_tmpdir(other_dir, sizeof other_dir);
    an_ckpt_contents c = contents_of(ctx, &a, 1, NULL, 0);
    save(ctx, run_dir, &c);
    an_ckpt_step_dir(run_dir, 1, dir, sizeof dir);

    /* Another adapter rank, other targets, no adapter at all. */
    run rank4 = lora_run(ctx, AN_F32, AN_LORA_Q | AN_LORA_V, 4, a.model);
    an_ckpt_contents load = contents_of(ctx, &rank4, -1, NULL, 0);
    REFUSED(ctx, an_ckpt_load(ctx, dir, &load), "rank 4 model", "adapter_config.json", "r = 2");
    run qk = lora_run(ctx, AN_F32, AN_LORA_Q | AN_LORA_K, 2, a.model);
    train_step(ctx, &qk, ids);
    load = contents_of(ctx, &qk, -1, NULL, 0);
    REFUSED(ctx, an_ckpt_load(ctx, dir, &load), "q/k model", "adapter_config.json", "target_modules");
    run full = full_run(ctx, AN_F32, 0.02);
    load = contents_of(ctx, &full, -1, NULL, 0);
    REFUSED(ctx, an_ckpt_load(ctx, dir, &load), "full model", "holds a LoRA adapter");

    /* The q/v checkpoint with the q/k run's training state (sums rewritten to match): the weights
     * fit, the state names do not, and nothing is changed. */
    an_ckpt_contents cq = contents_of(ctx, &qk, 1, NULL, 0);
    save(ctx, other_dir, &cq);
    an_ckpt_step_dir(other_dir, 1, other, sizeof other);
    snprintf(from, sizeof from, "%s/training_state.h5", other);
    snprintf(path, sizeof path, "%s/training_state.h5", dir);
    copy_file(from, path);
    ck_assert_int_eq(an_sha256sums_write(ctx, dir), AN_OK);
    snapshot before;
    snap(ctx, &a, &before);
    an_rng rng = ctx->rng;
    load = contents_of(ctx, &a, -1, NULL, 0);
    REFUSED(ctx, an_ckpt_load(ctx, dir, &load), "foreign state", "training_state.h5", "no optimizer state",
                       "self_attn.v_proj", "another model");
    assert_matches(ctx, &a, &before, "after a refused load");
    ck_assert(ctx->rng.offset == rng.offset);

    /* A full fine-tune of another shape. */
    an_ckpt_contents cf = contents_of(ctx, &full, 2, TINY_QWEN2, 0);
    save(ctx, other_dir, &cf);
    an_ckpt_step_dir(other_dir, 2, other, sizeof other);
    an_model_config config;
    ck_assert_int_eq(an_model_config_load(ctx, TINY_QWEN2, &config), AN_OK);
    config.intermediate_size = 96;
    run narrow = {NULL, NULL, {0, 0, 0}};
    ck_assert_int_eq(an_model_create(ctx, &config, AN_F32, AN_CPU, &narrow.model), AN_OK);
    ck_assert_int_eq(an_model_init_random(ctx, narrow.model, 0.02), AN_OK);
    an_model_set_requires_grad(narrow.model, true);
    narrow.opt = new_optim(ctx, narrow.model->params, narrow.model->n_params);
    load = contents_of(ctx, &narrow, -1, NULL, 0);
    REFUSED(ctx, an_ckpt_load(ctx, other, &load), "narrower model", "model.safetensors", "mlp", "(96, 64)");
    /* ... and saving it against the wrong base directory's config.json. */
    an_ckpt_contents cn = contents_of(ctx, &narrow, 3, TINY_QWEN2, 0);
    REFUSED(ctx, an_ckpt_save(ctx, other_dir, &cn), "wrong base config", "config.json", "intermediate_size");
    an_ckpt_step_dir(other_dir, 3, other, sizeof other);
    ck_assert(!exists(other));
    snprintf(path, sizeof path, "%s/step_3.tmp", other_dir);
    ck_assert(!exists(path));

    an_tensor_release(ids);
    snap_free(&before);
    run_free(&a), run_free(&rank4), run_free(&qk), run_free(&full), run_free(&narrow);
    remove_tree(run_dir), remove_tree(other_dir);
    test_ctx_free(ctx);
}
END_TEST

/* ---- GPU ---------------------------------------------------------------------------------------- */

/* Weights and optimizer state living on the GPU go through host copies both ways. The optimizer
 * state is set through an_optim_restore with random values (independent of the CUDA AdamW step). */
START_TEST(test_gpu_resident_state_round_trips) {
    an_ctx *ctx = test_gpu_ctx(19, "checkpoint of CUDA tensors");
    if (!ctx) return;
    an_model_config config;
    ck_assert_int_eq(an_model_config_load(ctx, TINY_QWEN2, &config), AN_OK);
    run r[2];
    for (int k = 0; k < 2; k++) {
        ck_assert_int_eq(an_model_create(ctx, &config, AN_BF16, AN_CUDA, &r[k].model), AN_OK);
        ck_assert_int_eq(an_model_init_random(ctx, r[k].model, k ? 0.05 : 0.02), AN_OK);
        an_model_set_requires_grad(r[k].model, true);
        r[k].opt = new_optim(ctx, r[k].model->params, r[k].model->n_params);
        r[k].cursor = (an_data_cursor){k, 3 * k, 5 * k};
    }
    int n = an_optim_state_count(r[0].opt);
    const char **names = malloc((size_t)n * sizeof *names);
    an_tensor **values = malloc((size_t)n * sizeof *values);
    for (int i = 0; i < n; i++) {
        an_tensor *t = an_optim_state_at(r[0].opt, i, &names[i]);
        ck_assert_int_eq(t->device, AN_CUDA);
        values[i] = test_uniform(ctx, AN_F32, t->ndim, t->shape, -1, 1, false);
    }
    ck_assert_msg(an_optim_restore(ctx, r[0].opt, 5, n, names, values) == AN_OK, "%s", an_error_message(ctx));
    for (int i = 0; i < n; i++) an_tensor_release(values[i]);
    free(names), free(values);
    char run_dir[512], dir[600];
    make_tmpdir(run_dir, sizeof run_dir);
    an_ckpt_contents c = contents_of(ctx, &r[0], 5, TINY_QWEN2, 0);
    save(ctx, run_dir, &c);
    snapshot want;
    snap(ctx, &r[0], &want);
    ck_assert(any_differs(ctx, &r[1], &want));
    an_ckpt_step_dir(run_dir, 5, dir, sizeof dir);
    an_ckpt_contents load = contents_of(ctx, &r[1], -1, NULL, 0);
    ck_assert_msg(an_ckpt_load(ctx, dir, &load) == AN_OK, "%s", an_error_message(ctx));
    assert_matches(ctx, &r[1], &want, "cuda");
    ck_assert(memcmp(&r[1].cursor, &r[0].cursor, sizeof r[0].cursor) == 0);
    printf("cuda: %d weights and state tensors round-trip bit for bit\n", want.n);
    snap_free(&want);
    run_free(&r[0]), run_free(&r[1]);
    remove_tree(run_dir);
    test_ctx_free(ctx);
}
END_TEST

/* ---- SHA-256 ------------------------------------------------------------------------------------ */

START_TEST(test_sha256_matches_published_vectors) {
    an_ctx *ctx = test_ctx(18);
    /* FIPS 180-2 / NIST CSRC examples. */
    static const struct {
        const char *text, *hex;
    } vectors[] = {
        {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
        {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
    };
    char hex[AN_SHA256_HEX_SIZE];
    for (size_t i = 0; i < sizeof vectors / sizeof *vectors; i++) {
        ck_assert_int_eq(an_sha256_buffer(ctx, vectors[i].text, strlen(vectors[i].text), hex), AN_OK);
        ck_assert_str_eq(hex, vectors[i].hex);
    }
    /* One million 'a', through a file; then 2.5 MiB (several read chunks) file vs buffer. */
    char dir[512], path[600];
    make_tmpdir(dir, sizeof dir);
    size_t n = 5u << 19;
    char *big = malloc(n);
    memset(big, 'a', 1000000);
    snprintf(path, sizeof path, "%s/million", dir);
    write_bytes(path, big, 1000000);
    ck_assert_int_eq(an_sha256_file(ctx, path, hex), AN_OK);
    ck_assert_str_eq(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    for (size_t i = 0; i < n; i++) big[i] = (char)(i * 2654435761u >> 13);
    snprintf(path, sizeof path, "%s/big", dir);
    write_bytes(path, big, n);
    char want[AN_SHA256_HEX_SIZE];
    ck_assert_int_eq(an_sha256_buffer(ctx, big, n, want), AN_OK);
    ck_assert_int_eq(an_sha256_file(ctx, path, hex), AN_OK);
    ck_assert_str_eq(hex, want);
    free(big);
    /* SHA256SUMS: sorted, two spaces, the vector for "abc". */
    remove_tree(dir);
    make_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/b.txt", dir);
    write_bytes(path, "abc", 3);
    snprintf(path, sizeof path, "%s/a.txt", dir);
    write_bytes(path, "", 0);
    ck_assert_int_eq(an_sha256sums_write(ctx, dir), AN_OK);
    snprintf(path, sizeof path, "%s/SHA256SUMS", dir);
    char *sums = (char *)read_bytes(path, &n);
    sums[n] = '\0';
    ck_assert_str_eq(sums, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  a.txt\n"
                           "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  b.txt\n");
    free(sums);
    ck_assert_int_eq(an_sha256sums_verify(ctx, dir), AN_OK);
    write_bytes(path, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad b.txt\n", 71);
    REFUSED(ctx, an_sha256sums_verify(ctx, dir), "one space", "SHA256SUMS", "line 1");
    remove_tree(dir);
    test_ctx_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("checkpoint");
    TCase *tc = tcase_create("checkpoint");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_sha256_matches_published_vectors);
    tcase_add_test(tc, test_lora_resume_is_bit_identical);
    tcase_add_test(tc, test_full_finetune_resume_is_bit_identical);
    tcase_add_test(tc, test_full_finetune_step_is_a_hf_model_dir);
    tcase_add_test(tc, test_retention_keeps_the_last_k);
    tcase_add_test(tc, test_each_rank_writes_its_own_state_file);
    tcase_add_test(tc, test_damaged_checkpoints_are_refused);
    tcase_add_test(tc, test_checkpoints_of_another_model_are_refused);
    tcase_add_test(tc, test_gpu_resident_state_round_trips);
    suite_add_tcase(s, tc);
    return test_run(s);
}
