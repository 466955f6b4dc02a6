/* test_recipe.c — recipes: the shipped ones load with the settings they promise; defaults match
 * docs/recipes.md; every error class (unknown key with suggestion and line, wrong type, out of range,
 * duplicate key, YAML syntax, bad override, conflicting settings) stops the load with a message that
 * names the place, the key and the expectation; overrides apply; write -> load is the identity. */
#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "recipe/internal.h"  /* recipe_keys: the docs test walks every key */
#include "recipe/recipe.h"
#include "support/test_util.h"

static const char minimal[] = "model: {path: m}\ndata: {train: t.jsonl}\n";

static an_status parse(an_ctx *ctx, const char *yaml, int n, const char *const *overrides, an_recipe *out) {
    return an_recipe_parse(ctx, "recipe.yaml", yaml, strlen(yaml), n, overrides, out);
}

static an_recipe parse_ok(an_ctx *ctx, const char *yaml, int n, const char *const *overrides) {
    an_recipe r;
    an_status s = parse(ctx, yaml, n, overrides, &r);
    ck_assert_msg(s == AN_OK, "expected the recipe to load, got: %s\n--- recipe:\n%s", an_error_message(ctx), yaml);
    return r;
}

/* The load must fail with AN_ERR_INPUT and a message containing `want` (and `also`, when given). */
static void expect_error(const char *yaml, int n, const char *const *overrides, const char *want, const char *also) {
    an_ctx *ctx = test_ctx(1);
    an_recipe r;
    memset(&r, 0x5a, sizeof r);
    an_recipe untouched = r;
    an_status s = parse(ctx, yaml, n, overrides, &r);
    ck_assert_msg(s == AN_ERR_INPUT, "expected an input error containing \"%s\", got status %d (%s)\n--- recipe:\n%s",
                  want, s, an_error_message(ctx), yaml);
    ck_assert_msg(strstr(an_error_message(ctx), want), "message \"%s\"\n  lacks \"%s\"", an_error_message(ctx), want);
    if (also)
        ck_assert_msg(strstr(an_error_message(ctx), also), "message \"%s\"\n  lacks \"%s\"", an_error_message(ctx),
                      also);
    ck_assert_msg(memcmp(&r, &untouched, sizeof r) == 0, "a failed load changed *out");
    an_error_clear(ctx);
    test_ctx_free(ctx);
}

static void expect_file_error(const char *yaml, const char *want, const char *also) {
    expect_error(yaml, 0, NULL, want, also);
}

static void expect_override_error(const char *override, const char *want, const char *also) {
    const char *ov[] = {override};
    expect_error(minimal, 1, ov, want, also);
}

static char *cat(const char *a, const char *b) {
    char *s = malloc(strlen(a) + strlen(b) + 1);
    strcpy(s, a);
    strcat(s, b);
    return s;
}

/* minimal + extra, expected to fail. */
static void expect_minimal_plus_error(const char *extra, const char *want, const char *also) {
    char *yaml = cat(minimal, extra);
    expect_file_error(yaml, want, also);
    free(yaml);
}

static void assert_round_trip(an_ctx *ctx, const an_recipe *r, const char *dir) {
    char path[512];
    snprintf(path, sizeof path, "%s/resolved.yaml", dir);
    ck_assert_msg(an_recipe_write_yaml(ctx, r, path) == AN_OK, "%s", an_error_message(ctx));
    an_recipe back;
    ck_assert_msg(an_recipe_load(ctx, path, 0, NULL, &back) == AN_OK, "the written recipe does not load: %s",
                  an_error_message(ctx));
    const char *diff = an_recipe_first_difference(r, &back);
    char *yaml = NULL;
    if (diff) an_recipe_to_yaml(ctx, r, &yaml);
    ck_assert_msg(diff == NULL, "write -> load changed '%s'\n%s", diff, yaml ? yaml : "");
    an_recipe_free(&back);
    unlink(path);
}

static char *temp_dir(void) {
    char *dir = strdup("/tmp/anneal-recipe-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    return dir;
}

/* ---- shipped recipes ---- */

START_TEST(test_every_shipped_recipe_loads_and_round_trips) {
    an_ctx *ctx = test_ctx(1);
    char *tmp = temp_dir();
    DIR *d = opendir(ANNEAL_SOURCE_DIR "/recipes");
    ck_assert_ptr_nonnull(d);
    int count = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len < 6 || strcmp(e->d_name + len - 5, ".yaml")) continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/recipes/%s", ANNEAL_SOURCE_DIR, e->d_name);
        an_recipe r;
        ck_assert_msg(an_recipe_load(ctx, path, 0, NULL, &r) == AN_OK, "%s: %s", e->d_name, an_error_message(ctx));
        ck_assert_msg(strncmp(r.name, e->d_name, len - 5) == 0 && strlen(r.name) == len - 5,
                      "%s: name '%s' should match the file name", e->d_name, r.name);
        assert_round_trip(ctx, &r, tmp);
        an_recipe_free(&r);
        count++;
    }
    closedir(d);
    ck_assert_int_ge(count, 3);
    rmdir(tmp);
    free(tmp);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_shipped_recipes_hold_the_settings_they_promise) {
    an_ctx *ctx = test_ctx(1);
    an_recipe q, l, f;
    ck_assert_msg(an_recipe_load(ctx, ANNEAL_SOURCE_DIR "/recipes/quickstart.yaml", 0, NULL, &q) == AN_OK, "%s",
                  an_error_message(ctx));
    ck_assert_str_eq(q.model.path, "checkpoints/tiny-qwen2-quickstart");
    ck_assert(q.device == AN_CPU && q.dtype == AN_F32 && q.method == AN_RECIPE_METHOD_LORA);
    ck_assert(q.lora.rank == 16 && q.lora.alpha == 32.0 && q.lora.targets_all_linear && q.lora.targets.n == 0);
    ck_assert(q.data.seq_len == 256 && q.training.micro_batch == 8 && q.training.max_steps == 100);
    ck_assert(q.data.validation != NULL && q.export_opts.enabled);
    ck_assert_str_eq(q.output_dir, "checkpoints/runs/quickstart");

    ck_assert_msg(an_recipe_load(ctx, ANNEAL_SOURCE_DIR "/recipes/lora-domain.yaml", 0, NULL, &l) == AN_OK, "%s",
                  an_error_message(ctx));
    ck_assert(l.device == AN_CUDA && l.dtype == AN_BF16 && l.method == AN_RECIPE_METHOD_LORA);
    ck_assert(l.lora.rank == 16 && l.lora.alpha == 32.0 && !l.lora.targets_all_linear && l.lora.targets.n == 2);
    ck_assert_str_eq(l.lora.targets.items[0], "q_proj");
    ck_assert_str_eq(l.lora.targets.items[1], "v_proj");
    ck_assert(l.data.seq_len == 2048 && l.schedule.type == AN_RECIPE_SCHEDULE_COSINE);
    ck_assert(l.schedule.warmup_ratio > 0 || l.schedule.warmup_steps > 0);

    ck_assert_msg(an_recipe_load(ctx, ANNEAL_SOURCE_DIR "/recipes/full-ft.yaml", 0, NULL, &f) == AN_OK, "%s",
                  an_error_message(ctx));
    ck_assert(f.device == AN_CUDA && f.dtype == AN_BF16 && f.method == AN_RECIPE_METHOD_FULL);
    ck_assert(f.optimizer.lr == 1e-5 && f.model.gradient_checkpointing);
    ck_assert_str_eq(f.model.path, l.model.path); /* the same model */
    an_recipe_free(&q);
    an_recipe_free(&l);
    an_recipe_free(&f);
    test_ctx_free(ctx);
}
END_TEST

/* ---- defaults ---- */

START_TEST(test_minimal_recipe_gets_the_documented_defaults) {
    an_ctx *ctx = test_ctx(1);
    an_recipe r;
    ck_assert_int_eq(an_recipe_parse(ctx, "some/dir/my-run.yml", minimal, strlen(minimal), 0, NULL, &r), AN_OK);
    ck_assert_str_eq(r.name, "my-run");
    ck_assert_str_eq(r.output_dir, "checkpoints/runs/my-run");
    ck_assert_str_eq(r.logging.jsonl, "checkpoints/runs/my-run/metrics.jsonl");
    ck_assert(r.seed == 0 && r.device == AN_CPU && r.dtype == AN_BF16 && r.method == AN_RECIPE_METHOD_LORA);
    ck_assert(r.grad_clip == 1.0 && !r.model.gradient_checkpointing);
    ck_assert(r.lora.rank == 16 && r.lora.alpha == 32.0 && r.lora.dropout == 0.05 && !r.lora.rslora);
    ck_assert(!r.lora.targets_all_linear && r.lora.targets.n == 2);
    ck_assert_str_eq(r.lora.targets.items[0], "q_proj");
    ck_assert_str_eq(r.lora.targets.items[1], "v_proj");
    ck_assert(r.data.train.n == 1 && !strcmp(r.data.train.items[0], "t.jsonl") && r.data.validation == NULL);
    ck_assert(r.data.validation_fraction == 0.01 && r.data.format == AN_RECIPE_FORMAT_AUTO);
    ck_assert(r.data.max_bad_fraction == 0.0 && r.data.seq_len == 2048 && r.data.packing && r.data.shuffle);
    ck_assert(r.training.micro_batch == 1 && r.training.grad_accum == 1 && r.training.epochs == 1);
    ck_assert(r.training.max_steps == -1 && r.training.eval_every == 0 && r.training.eval_steps == 0);
    ck_assert(r.optimizer.name == AN_RECIPE_OPTIMIZER_ADAMW && r.optimizer.lr == 2e-4);
    ck_assert(r.optimizer.betas[0] == 0.9 && r.optimizer.betas[1] == 0.999 && r.optimizer.eps == 1e-8);
    ck_assert(r.optimizer.weight_decay == 0.0);
    ck_assert(r.schedule.type == AN_RECIPE_SCHEDULE_COSINE && r.schedule.warmup_steps == 0);
    ck_assert(r.schedule.warmup_ratio == 0.0 && r.schedule.min_lr_ratio == 0.0);
    ck_assert(r.checkpoint.every == 500 && r.checkpoint.keep_last == 3);
    ck_assert(r.checkpoint.resume == AN_RECIPE_RESUME_AUTO && r.checkpoint.resume_path == NULL);
    ck_assert(r.logging.every == 10 && r.logging.progress == AN_RECIPE_PROGRESS_AUTO);
    ck_assert(!r.export_opts.enabled);
    an_recipe_free(&r);

    /* validation_fraction's default depends on data.validation */
    const char *yaml = "model: {path: m}\ndata: {train: t, validation: v.jsonl}\n";
    r = parse_ok(ctx, yaml, 0, NULL);
    ck_assert(r.data.validation_fraction == 0.0 && !strcmp(r.data.validation, "v.jsonl"));
    an_recipe_free(&r);
    /* a name override moves the derived paths with it */
    const char *ov[] = {"name=other"};
    r = parse_ok(ctx, minimal, 1, ov);
    ck_assert_str_eq(r.output_dir, "checkpoints/runs/other");
    ck_assert_str_eq(r.logging.jsonl, "checkpoints/runs/other/metrics.jsonl");
    an_recipe_free(&r);
    /* an empty section means its defaults */
    r = parse_ok(ctx, "model: {path: m}\ndata: {train: t}\nlora:\n  # rank: 4\ntraining:\n", 0, NULL);
    ck_assert(r.lora.rank == 16 && r.training.micro_batch == 1);
    an_recipe_free(&r);
    test_ctx_free(ctx);
}
END_TEST

/* Every key has a row in docs/recipes.md; a default written there as one `literal`, given as an
 * override, must change nothing. */
START_TEST(test_docs_list_every_key_with_its_real_default) {
    an_ctx *ctx = test_ctx(1);
    FILE *f = fopen(ANNEAL_SOURCE_DIR "/docs/recipes.md", "r");
    ck_assert_ptr_nonnull(f);
    bool documented[K_COUNT] = {false};
    int checked = 0;
    an_recipe base = parse_ok(ctx, minimal, 0, NULL);
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "| `", 3) != 0) continue;
        char *cells[8];
        int n = 0;
        for (char *p = strtok(line + 1, "|"); p && n < 8; p = strtok(NULL, "|")) cells[n++] = p;
        if (n < 4) continue;
        char key[128], dflt[256];
        if (sscanf(cells[0], " `%127[^`]`", key) != 1) continue;
        int id = recipe_find_key(key);
        ck_assert_msg(id >= 0, "docs/recipes.md documents '%s', which is not a key", key);
        documented[id] = true;
        char *d = cells[2];
        while (*d == ' ') d++;
        size_t len = strlen(d);
        while (len && d[len - 1] == ' ') d[--len] = '\0';
        if (len < 2 || d[0] != '`' || d[len - 1] != '`' || memchr(d + 1, '`', len - 2)) continue; /* derived */
        snprintf(dflt, sizeof dflt, "%s=%.*s", key, (int)len - 2, d + 1);
        const char *ov[] = {dflt};
        an_recipe r = parse_ok(ctx, minimal, 1, ov);
        const char *diff = an_recipe_first_difference(&base, &r);
        ck_assert_msg(diff == NULL, "docs say the default of %s is %s, but setting it changes '%s'", key, d, diff);
        an_recipe_free(&r);
        checked++;
    }
    fclose(f);
    for (int id = 0; id < K_COUNT; id++)
        ck_assert_msg(recipe_keys[id].kind == KIND_SECTION || documented[id], "docs/recipes.md has no row for '%s'",
                      recipe_keys[id].path);
    ck_assert_int_ge(checked, 35);
    an_recipe_free(&base);
    test_ctx_free(ctx);
}
END_TEST

/* ---- errors ---- */

START_TEST(test_unknown_key_names_file_line_and_closest_key) {
    expect_minimal_plus_error("training:\n  micro_batch: 2\n  micro_bach: 4\n",
                              "recipe.yaml:5: unknown key 'training.micro_bach' (did you mean 'training.micro_batch'?)",
                              NULL);
    expect_minimal_plus_error("trainig:\n  epochs: 2\n", "recipe.yaml:3: unknown key 'trainig'",
                              "(did you mean 'training'?)");
    expect_minimal_plus_error("micro_batch: 2\n", "unknown key 'micro_batch'",
                              "(did you mean 'training.micro_batch'?)");
    expect_minimal_plus_error("lora: {lora_alpha: 8}\n", "unknown key 'lora.lora_alpha'",
                              "(did you mean 'lora.alpha'?)");
    expect_minimal_plus_error("optimizer: {learning_rate: 1e-3}\n", "(did you mean 'optimizer.lr'?)", NULL);
    expect_minimal_plus_error("lora: {r: 8}\n", "(did you mean 'lora.rank'?)", NULL);
    expect_minimal_plus_error("Seed: 3\n", "(did you mean 'seed'?)", NULL);
    /* nothing close: no suggestion */
    an_ctx *ctx = test_ctx(1);
    an_recipe r;
    char *yaml = cat(minimal, "flux_capacitor: 1\n");
    ck_assert_int_eq(parse(ctx, yaml, 0, NULL, &r), AN_ERR_INPUT);
    ck_assert_ptr_nonnull(strstr(an_error_message(ctx), "recipe.yaml:3: unknown key 'flux_capacitor'"));
    ck_assert_ptr_null(strstr(an_error_message(ctx), "did you mean"));
    an_error_clear(ctx);
    free(yaml);
    test_ctx_free(ctx);
    expect_minimal_plus_error("training.micro_batch: 3\n", "recipe.yaml:3: key 'training.micro_batch' contains a dot",
                              NULL);
}
END_TEST

START_TEST(test_wrong_types_name_key_value_and_expectation) {
    expect_minimal_plus_error("optimizer:\n  lr: fast\n", "recipe.yaml:4: optimizer.lr = \"fast\" is not a number",
                              NULL);
    expect_minimal_plus_error("optimizer: {lr: \"2e-4\"}\n", "optimizer.lr = \"2e-4\" is not a number",
                              "quoted");
    expect_minimal_plus_error("seed: 1.5\n", "seed = 1.5 is not an integer", NULL);
    expect_minimal_plus_error("seed: 99999999999999999999\n", "is not an integer", "out of range");
    expect_minimal_plus_error("training: {micro_batch: \"4\"}\n", "training.micro_batch = \"4\" is not an integer",
                              NULL);
    expect_file_error("model: {path: m}\ndata: {train: t, packing: yes}\n",
                      "recipe.yaml:2: data.packing = \"yes\" is not true or false", NULL);
    expect_minimal_plus_error("training: 3\n", "'training' is a single value, expected a block of keys", NULL);
    expect_minimal_plus_error("optimizer: {lr: [1, 2]}\n", "optimizer.lr is a list, expected a number", NULL);
    expect_minimal_plus_error("dtype: bf16\n", "dtype = \"bf16\" is not one of float32, bfloat16, float16",
                              "(did you mean bfloat16?)");
    expect_minimal_plus_error("schedule: {type: cosin}\n", "(did you mean cosine?)", NULL);
    expect_minimal_plus_error("device: GPU\n", "(did you mean cuda?)", NULL);
    expect_minimal_plus_error("optimizer: {betas: [0.9, 0.99, 0.999]}\n", "optimizer.betas is a list of 3", NULL);
    expect_minimal_plus_error("lora: {targets: [q_proj, q_prj]}\n", "'q_prj' is not a linear layer",
                              "(did you mean q_proj?)");
    expect_minimal_plus_error("lora: {targets: [q_proj, q_proj]}\n", "lora.targets lists 'q_proj' twice", NULL);
    expect_minimal_plus_error("lora: {targets: [all-linear]}\n", "all-linear stands alone", NULL);
    expect_minimal_plus_error("optimizer: {lr: }\n", "optimizer.lr has no value (expected a number)", NULL);
    expect_file_error("model: {path: m}\ndata: {train: []}\n", "data.train is an empty list", NULL);
    expect_minimal_plus_error("checkpoint: {resume: atuo}\n", "checkpoint.resume = \"atuo\" is not auto or never",
                              "(did you mean auto?)");
    expect_minimal_plus_error("name: \"\"\n", "name is an empty string", NULL);
    expect_minimal_plus_error("name: my/run\n", "name = 'my/run' may only contain", NULL);
    expect_file_error("- a\n- b\n", "recipe.yaml:1: a recipe is a mapping of keys", NULL);
}
END_TEST

START_TEST(test_out_of_range_values_name_the_bound) {
    expect_minimal_plus_error("lora:\n  rank: 0\n", "recipe.yaml:4: lora.rank = 0 must be >= 1", NULL);
    expect_minimal_plus_error("lora: {dropout: 1.0}\n", "lora.dropout = 1.0 must be in [0, 1)", NULL);
    expect_minimal_plus_error("lora: {alpha: 0}\n", "lora.alpha = 0 must be > 0", NULL);
    expect_minimal_plus_error("optimizer: {lr: -1e-3}\n", "optimizer.lr = -1e-3 must be > 0", NULL);
    expect_minimal_plus_error("optimizer: {betas: [0.9, 1.5]}\n", "optimizer.betas[1] = 1.5 must be in [0, 1)", NULL);
    expect_file_error("model: {path: m}\ndata: {train: t, seq_len: 1}\n",
                      "data.seq_len = 1 must be between 2 and 1048576", NULL);
    expect_minimal_plus_error("training: {max_steps: 0}\n", "training.max_steps = 0 must be -1", NULL);
    expect_minimal_plus_error("training: {max_steps: -2}\n", "training.max_steps = -2 must be >= -1", NULL);
    expect_minimal_plus_error("grad_clip: -1\n", "grad_clip = -1 must be >= 0", NULL);
    expect_minimal_plus_error("grad_clip: 1e999\n", "grad_clip = 1e999 is not a number (out of range)", NULL);
    expect_minimal_plus_error("schedule: {min_lr_ratio: 1.5}\n", "schedule.min_lr_ratio = 1.5 must be in [0, 1]",
                              NULL);
}
END_TEST

START_TEST(test_duplicate_keys_are_errors) {
    expect_minimal_plus_error("training:\n  micro_batch: 4\n  grad_accum: 2\n  micro_batch: 8\n",
                              "recipe.yaml:6: duplicate key 'training.micro_batch' (first given on line 4)", NULL);
    expect_minimal_plus_error("seed: 1\nseed: 2\n", "recipe.yaml:4: duplicate key 'seed' (first given on line 3)",
                              NULL);
    expect_minimal_plus_error("model: {path: n}\n", "recipe.yaml:3: duplicate key 'model' (first given on line 1)",
                              NULL);
}
END_TEST

START_TEST(test_yaml_syntax_errors_report_line_and_column) {
    expect_file_error("model: {path: m}\ntraining:\n   micro_batch: 4\n  grad_accum: 2\n",
                      "recipe.yaml:4:3: YAML syntax error: did not find expected key", NULL);
    expect_file_error("model: {path: m}\ndata: {train: [a, b}\n", "recipe.yaml:2:", "YAML syntax error");
    expect_file_error("model: {path: m}\n\tdata: x\n", "recipe.yaml:2:", "YAML syntax error");
    expect_file_error("model: {path: m}\nname: \"\xff\"\n", "recipe.yaml:2: YAML syntax error: invalid leading UTF-8",
                      NULL);
    expect_file_error("model: {path: m}\ndata: {train: t}\n---\nseed: 1\n", "more than one YAML document", NULL);
    expect_file_error("model: {path: *nowhere}\n", "recipe.yaml:1:", "undefined alias");
}
END_TEST

START_TEST(test_overrides_are_applied_after_the_file) {
    an_ctx *ctx = test_ctx(1);
    const char *yaml = "model: {path: m}\ndata: {train: [x.jsonl, y.jsonl]}\n"
                       "training: {micro_batch: 2}\nlora: {targets: all-linear}\n";
    const char *ov[] = {"training.micro_batch=4", "lora.targets=[q_proj,k_proj]", "optimizer.betas=[0.9,0.95]",
                        "data.train=a.jsonl", " optimizer.lr = 1e-3", "lora={rank: 4, alpha: 8.5}",
                        "export.format=gguf", "checkpoint.resume=runs/x/step_10", "data.validation=\"v 1.jsonl\""};
    an_recipe r = parse_ok(ctx, yaml, 9, ov);
    ck_assert_int_eq(r.training.micro_batch, 4);
    ck_assert(!r.lora.targets_all_linear && r.lora.targets.n == 2);
    ck_assert_str_eq(r.lora.targets.items[0], "q_proj");
    ck_assert_str_eq(r.lora.targets.items[1], "k_proj");
    ck_assert(r.optimizer.betas[0] == 0.9 && r.optimizer.betas[1] == 0.95);
    ck_assert(r.data.train.n == 1 && !strcmp(r.data.train.items[0], "a.jsonl"));
    ck_assert(r.optimizer.lr == 1e-3 && r.lora.rank == 4 && r.lora.alpha == 8.5);
    ck_assert(r.export_opts.enabled && r.export_opts.format == AN_RECIPE_EXPORT_GGUF);
    ck_assert(r.export_opts.quant == AN_RECIPE_QUANT_Q4_K_M);
    ck_assert_str_eq(r.export_opts.path, "checkpoints/runs/recipe/recipe-q4_k_m.gguf");
    ck_assert(r.checkpoint.resume == AN_RECIPE_RESUME_PATH && !strcmp(r.checkpoint.resume_path, "runs/x/step_10"));
    ck_assert_str_eq(r.data.validation, "v 1.jsonl");
    ck_assert(r.data.validation_fraction == 0.0);
    an_recipe_free(&r);

    /* a section set to null returns to its defaults; export=null drops the block */
    const char *yaml2 = "model: {path: m}\ndata: {train: t}\nlora: {rank: 4}\nexport: {format: awq}\n";
    const char *ov2[] = {"lora=null", "export=null"};
    r = parse_ok(ctx, yaml2, 2, ov2);
    ck_assert(r.lora.rank == 16 && !r.export_opts.enabled && r.export_opts.path == NULL);
    an_recipe_free(&r);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_bad_overrides_say_they_came_from_the_command_line) {
    expect_override_error("training.micro_bach=4",
                          "command line 'training.micro_bach=4': unknown key 'training.micro_bach' (did you mean "
                          "'training.micro_batch'?)",
                          NULL);
    expect_override_error("training.micro_batch", "command line 'training.micro_batch': not a key=value", NULL);
    expect_override_error("=4", "the override has no key", NULL);
    expect_override_error("optimizer.lr=fast",
                          "command line 'optimizer.lr=fast': optimizer.lr = \"fast\" is not a number", NULL);
    expect_override_error("lora.rank=0", "command line 'lora.rank=0': lora.rank = 0 must be >= 1", NULL);
    expect_override_error("lora.targets=[q_proj", "command line 'lora.targets=[q_proj': the value is not valid YAML",
                          NULL);
    expect_override_error("lora.targets=[q_proj,[k_proj]]", "lora.targets: item 2 is a list", NULL);
    expect_override_error("lora.targets=[q_proj,k_prj]", "'k_prj' is not a linear layer", "(did you mean k_proj?)");
    expect_override_error("optimizer.betas=[0.9,[0.95]]", "optimizer.betas[1] is a list, expected a number", NULL);
    expect_override_error("optimizer.betas=[0.9]", "optimizer.betas is a list of 1, expected a list of two numbers",
                          NULL);
    expect_override_error("optimizer.betas=0.9", "optimizer.betas is a single value", NULL);
    expect_override_error("data.train=[]", "data.train is an empty list", NULL);
    expect_override_error("data.train=", "data.train has no value", NULL);
    expect_override_error("training={micro_batch: 0}", "training.micro_batch = 0 must be >= 1", NULL);
    expect_override_error("training={micro_bach: 2}", "unknown key 'training.micro_bach'", "did you mean");
    const char *twice[] = {"seed=1", "seed=2"};
    expect_error(minimal, 2, twice, "command line 'seed=2': seed is given twice (also in 'seed=1')", NULL);
}
END_TEST

START_TEST(test_settings_that_exclude_each_other) {
    /* in one place: an error at the later line */
    expect_minimal_plus_error("method: full\nlora:\n  rank: 8\n",
                              "recipe.yaml:5: lora.rank is set but method is full", NULL);
    expect_minimal_plus_error("training:\n  epochs: 3\n  max_steps: 100\n",
                              "recipe.yaml:5: training.epochs and training.max_steps are both set", NULL);
    expect_minimal_plus_error("schedule: {warmup_steps: 10, warmup_ratio: 0.1}\n",
                              "schedule.warmup_steps and schedule.warmup_ratio are both set", NULL);
    expect_file_error("model: {path: m}\ndata: {train: t, validation: v, validation_fraction: 0.1}\n",
                      "data.validation and data.validation_fraction > 0 are both set", NULL);
    const char *no_validation[] = {"data.validation_fraction=0", "training.eval_every=50"};
    expect_error(minimal, 2, no_validation, "training.eval_every = 50 needs validation data", NULL);
    expect_minimal_plus_error("schedule: {type: constant, min_lr_ratio: 0.1}\n",
                              "schedule.min_lr_ratio has no effect with schedule.type constant", NULL);
    expect_minimal_plus_error("training: {eval_steps: 20}\n", "training.eval_steps has no effect", NULL);
    expect_minimal_plus_error("optimizer: {update_in_backward: true}\n",
                              "optimizer.update_in_backward needs grad_clip: 0 (it is 1)", NULL);
    expect_minimal_plus_error("training: {max_steps: 10}\nschedule: {warmup_steps: 20}\n",
                              "schedule.warmup_steps = 20 is more than training.max_steps = 10", NULL);
    expect_minimal_plus_error("export: {quant: q8_0}\n", "recipe.yaml:3: export.format is required", NULL);
    expect_minimal_plus_error("export: {format: awq, quant: q8_0}\n",
                              "export.quant = q8_0 is not available for export.format awq (allowed: int4)", NULL);
    expect_minimal_plus_error("export: {format: gguf, dtype: float16}\n", "export.dtype does not apply to", NULL);
    expect_minimal_plus_error("export: {format: gptq, dtype: float32}\n", "export.dtype = float32 is not available",
                              NULL);
    expect_file_error("data: {train: t}\n", "recipe.yaml: model.path is required", NULL);
    expect_file_error("model: {path: m}\n", "recipe.yaml: data.train is required", NULL);
    /* a command-line setting that would itself be ignored is still an error */
    const char *lora_on_full[] = {"lora.rank=8"};
    char *full = cat(minimal, "method: full\n");
    expect_error(full, 1, lora_on_full, "command line 'lora.rank=8': lora.rank is set but method is full", NULL);
    free(full);

    /* the command line over the file: the command line wins, the file's setting returns to its default */
    an_ctx *ctx = test_ctx(1);
    char *yaml = cat(minimal, "method: lora\nlora: {rank: 4, targets: all-linear}\ntraining: {epochs: 3}\n"
                              "schedule: {warmup_ratio: 0.1, min_lr_ratio: 0.2}\n"
                              "export: {format: gguf, quant: q8_0}\n");
    const char *ov[] = {"method=full", "training.max_steps=10", "schedule.warmup_steps=2", "schedule.type=constant",
                        "export.format=awq"};
    an_recipe r = parse_ok(ctx, yaml, 5, ov);
    ck_assert(r.method == AN_RECIPE_METHOD_FULL && r.lora.rank == 16 && !r.lora.targets_all_linear);
    ck_assert(r.training.max_steps == 10 && r.training.epochs == 1);
    ck_assert(r.schedule.warmup_steps == 2 && r.schedule.warmup_ratio == 0.0 && r.schedule.min_lr_ratio == 0.0);
    ck_assert(r.export_opts.format == AN_RECIPE_EXPORT_AWQ && r.export_opts.quant == AN_RECIPE_QUANT_INT4);
    ck_assert(r.export_opts.dtype == AN_F16);
    ck_assert_str_eq(r.export_opts.path, "checkpoints/runs/recipe/awq-int4");
    an_recipe_free(&r);
    free(yaml);
    test_ctx_free(ctx);
}
END_TEST

/* ---- writing ---- */

START_TEST(test_write_then_load_gives_an_identical_recipe) {
    an_ctx *ctx = test_ctx(1);
    char *tmp = temp_dir();
    const char *recipes[] = {
        minimal,
        "name: odd.name_1\noutput_dir: \"out dir/with: colon # and hash\"\nseed: 123456789012\ndevice: cuda\n"
        "dtype: float16\ngrad_clip: 0\nmodel: {path: 'm \"quoted\" \\ back', gradient_checkpointing: true}\n"
        "lora: {rank: 3, alpha: 0.1, dropout: 0, targets: [down_proj, up_proj, gate_proj], rslora: true}\n"
        "data:\n  train: [\"a b.jsonl\", '-dash', 'null', \"tab\\there\", ./rel, 'über/ß.txt', '123']\n"
        "  validation: \"true\"\n  format: chat\n  max_bad_fraction: 0.125\n  seq_len: 4099\n  packing: false\n"
        "  shuffle: false\n"
        "training: {micro_batch: 3, grad_accum: 7, epochs: 5, eval_every: 13, eval_steps: 2}\n"
        "optimizer: {lr: 0.1, betas: [0, 0.3333333333333333], eps: 1e-300, weight_decay: 1e-1}\n"
        "schedule: {type: linear, warmup_ratio: 0.07, min_lr_ratio: 1}\n"
        "checkpoint: {every: 0, keep_last: 0, resume: \"./x y/step_7\"}\n"
        "logging: {every: 1, jsonl: m.jsonl, progress: off}\n"
        "export: {format: gptq, quant: int8, dtype: bfloat16, path: q}\n",
        "model: {path: m}\ndata: {train: t}\nmethod: full\ntraining: {max_steps: 7}\n"
        "schedule: {type: constant}\nexport: {format: gguf, quant: f16}\ncheckpoint: {resume: never}\n",
        "model: {path: m}\ndata: {train: t, validation_fraction: 0.2}\nexport: {format: safetensors_merged}\n",
    };
    for (size_t i = 0; i < sizeof recipes / sizeof *recipes; i++) {
        an_recipe r = parse_ok(ctx, recipes[i], 0, NULL);
        assert_round_trip(ctx, &r, tmp);
        an_recipe_free(&r);
    }
    /* and with overrides folded in */
    const char *ov[] = {"training.max_steps=3", "lora.targets=[k_proj]", "data.train=[p, q]"};
    an_recipe r = parse_ok(ctx, recipes[1], 3, ov);
    ck_assert(r.training.epochs == 1);
    assert_round_trip(ctx, &r, tmp);
    an_recipe_free(&r);
    rmdir(tmp);
    free(tmp);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_first_difference_finds_each_changed_field) {
    an_ctx *ctx = test_ctx(1);
    an_recipe a = parse_ok(ctx, minimal, 0, NULL);
    ck_assert_ptr_null(an_recipe_first_difference(&a, &a));
    struct {
        const char *override, *key;
    } cases[] = {{"seed=1", "seed"},
                 {"optimizer.betas=[0.9, 0.998]", "optimizer.betas"},
                 {"lora.targets=[q_proj]", "lora.targets"},
                 {"lora.targets=all-linear", "lora.targets"},
                 {"data.train=[t.jsonl, t.jsonl]", "data.train"},
                 {"checkpoint.resume=never", "checkpoint.resume"},
                 {"export.format=safetensors_merged", "export"},
                 {"logging.jsonl=x", "logging.jsonl"},
                 {"data.validation=v", "data.validation"}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        an_recipe b = parse_ok(ctx, minimal, 1, &cases[i].override);
        const char *diff = an_recipe_first_difference(&a, &b);
        ck_assert_msg(diff && !strcmp(diff, cases[i].key), "%s: first difference %s, expected %s", cases[i].override,
                      diff ? diff : "(none)", cases[i].key);
        an_recipe_free(&b);
    }
    an_recipe_free(&a);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_resolved_yaml_comments_out_what_does_not_apply) {
    an_ctx *ctx = test_ctx(1);
    const char *yaml = "model: {path: m}\ndata: {train: t}\nmethod: full\ntraining: {max_steps: 9}\n";
    an_recipe r = parse_ok(ctx, yaml, 0, NULL);
    char *out;
    ck_assert_int_eq(an_recipe_to_yaml(ctx, &r, &out), AN_OK);
    ck_assert_ptr_nonnull(strstr(out, "\n# lora: not used (method is full)\n"));
    ck_assert_ptr_nonnull(strstr(out, "\n  # epochs: not used (training.max_steps is set)\n"));
    ck_assert_ptr_nonnull(strstr(out, "\n# export: not used (no export block)\n"));
    ck_assert_ptr_nonnull(strstr(out, "\n  max_steps: 9\n"));
    ck_assert_ptr_nonnull(strstr(out, "\n  lr: 0.0002\n"));
    ck_assert_ptr_null(strstr(out, "rank:"));
    free(out);
    an_recipe_free(&r);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_missing_file_is_an_input_error) {
    an_ctx *ctx = test_ctx(1);
    an_recipe r;
    ck_assert_int_eq(an_recipe_load(ctx, "/nonexistent/recipe.yaml", 0, NULL, &r), AN_ERR_INPUT);
    ck_assert_ptr_nonnull(strstr(an_error_message(ctx), "/nonexistent/recipe.yaml: cannot open the recipe"));
    an_error_clear(ctx);
    ck_assert_int_eq(an_recipe_write_yaml(ctx, &(an_recipe){0}, "/nonexistent/dir/out.yaml"), AN_ERR_INPUT);
    an_error_clear(ctx);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_key_suggestions_use_edit_distance_with_transpositions) {
    ck_assert_int_eq(recipe_edit_distance("micro_bach", "micro_batch"), 1);
    ck_assert_int_eq(recipe_edit_distance("seeed", "seed"), 1);
    ck_assert_int_eq(recipe_edit_distance("eposhc", "epochs"), 2); /* one transposition + one substitution */
    ck_assert_int_eq(recipe_edit_distance("ab", "ba"), 1);
    ck_assert_int_eq(recipe_edit_distance("", "abc"), 3);
    ck_assert_int_eq(recipe_edit_distance("kitten", "sitting"), 3);
    ck_assert_str_eq(recipe_suggest_key("training.grad_acum"), "training.grad_accum");
    ck_assert_str_eq(recipe_suggest_key("optimizer.weight_decya"), "optimizer.weight_decay");
    ck_assert_str_eq(recipe_suggest_key("training.seq_len"), "data.seq_len");
    ck_assert_ptr_null(recipe_suggest_key("completely_unrelated"));
}
END_TEST

int main(void) {
    Suite *s = suite_create("recipe");
    TCase *tc = tcase_create("recipe");
    tcase_add_test(tc, test_every_shipped_recipe_loads_and_round_trips);
    tcase_add_test(tc, test_shipped_recipes_hold_the_settings_they_promise);
    tcase_add_test(tc, test_minimal_recipe_gets_the_documented_defaults);
    tcase_add_test(tc, test_docs_list_every_key_with_its_real_default);
    tcase_add_test(tc, test_unknown_key_names_file_line_and_closest_key);
    tcase_add_test(tc, test_wrong_types_name_key_value_and_expectation);
    tcase_add_test(tc, test_out_of_range_values_name_the_bound);
    tcase_add_test(tc, test_duplicate_keys_are_errors);
    tcase_add_test(tc, test_yaml_syntax_errors_report_line_and_column);
    tcase_add_test(tc, test_overrides_are_applied_after_the_file);
    tcase_add_test(tc, test_bad_overrides_say_they_came_from_the_command_line);
    tcase_add_test(tc, test_settings_that_exclude_each_other);
    tcase_add_test(tc, test_write_then_load_gives_an_identical_recipe);
    tcase_add_test(tc, test_first_difference_finds_each_changed_field);
    tcase_add_test(tc, test_resolved_yaml_comments_out_what_does_not_apply);
    tcase_add_test(tc, test_missing_file_is_an_input_error);
    tcase_add_test(tc, test_key_suggestions_use_edit_distance_with_transpositions);
    suite_add_tcase(s, tc);
    return test_run(s);
}
