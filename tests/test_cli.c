/* test_cli.c — the `anneal` command as a user meets it: exit codes (0 ok, 2 bad input), messages
 * that name the file and field without our source locations, and each subcommand's output on the
 * fixture models. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "support/test_util.h"

#define FIXTURES ANNEAL_SOURCE_DIR "/tests/fixtures"

/* Runs `anneal ARGS` (stdin from /dev/null unless the args redirect it), capturing stdout+stderr
 * into out; returns the exit code. */
static int run(const char *args, char *out, size_t size) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s %s 2>&1", ANNEAL_BINARY, args);
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    size_t n = fread(out, 1, size - 1, p);
    out[n] = '\0';
    int status = pclose(p);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

START_TEST(test_version_help_and_unknown_command) {
    char out[8192];
    ck_assert_int_eq(run("--version", out, sizeof out), 0);
    ck_assert_ptr_nonnull(strstr(out, "anneal 0."));
    ck_assert_int_eq(run("--help", out, sizeof out), 0);
    ck_assert_ptr_nonnull(strstr(out, "generate"));
    ck_assert_int_eq(run("frobnicate", out, sizeof out), 2);
    ck_assert_ptr_nonnull(strstr(out, "unknown command 'frobnicate'"));
    ck_assert_int_eq(run("", out, sizeof out), 2);
}
END_TEST

START_TEST(test_inspect_reports_and_rejects) {
    char out[8192];
    ck_assert_int_eq(run("inspect " FIXTURES "/models/tiny-qwen2", out, sizeof out), 0);
    ck_assert_ptr_nonnull(strstr(out, "Qwen2ForCausalLM"));
    ck_assert_ptr_nonnull(strstr(out, "parameters   119360"));
    ck_assert_ptr_nonnull(strstr(out, "16 B x P"));
    ck_assert_int_eq(run("inspect /nonexistent-model", out, sizeof out), 2);
    ck_assert_ptr_nonnull(strstr(out, "/nonexistent-model/config.json"));
    ck_assert_ptr_null(strstr(out, ".c:")); /* no source locations for bad input */
    ck_assert_int_eq(run("inspect " FIXTURES "/models/tiny-qwen2 --gpus 0", out, sizeof out), 2);
}
END_TEST

START_TEST(test_tokenize_ids_and_counts) {
    char out[8192];
    ck_assert_int_eq(run("tokenize --model " FIXTURES "/tokenizer/qwen2 < " FIXTURES "/tokenizer/qwen2/tokenizer_config.json",
                         out, sizeof out), 0);
    ck_assert(strlen(out) > 10);
    ck_assert_int_eq(run("tokenize --count --model " FIXTURES "/tokenizer/qwen2 " FIXTURES "/tokenizer/qwen2/tokenizer_config.json",
                         out, sizeof out), 0);
    ck_assert_ptr_nonnull(strstr(out, "total: "));
    ck_assert_int_eq(run("tokenize --model " FIXTURES "/models/tiny-qwen2", out, sizeof out), 2); /* no tokenizer.json */
    ck_assert_ptr_nonnull(strstr(out, "tokenizer.json"));
}
END_TEST

START_TEST(test_init_then_generate) {
    char out[8192], dir[] = "/tmp/anneal-cli-XXXXXX", args[1024];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(args, sizeof args, "init " FIXTURES "/models/tiny-qwen2/config.json %s/m --seed 5 --tokenizer " FIXTURES
             "/tokenizer/qwen2", dir);
    ck_assert_int_eq(run(args, out, sizeof out), 2); /* the tokenizer has more ids than the model's vocab */
    /* ... so use a model whose vocab fits the tokenizer: the fixture config with vocab 2048 */
    snprintf(args, sizeof args,
             "sed 's/\"vocab_size\": 256/\"vocab_size\": 2048/' " FIXTURES "/models/tiny-qwen2/config.json > %s/config.json",
             dir);
    ck_assert_int_eq(system(args), 0);
    snprintf(args, sizeof args, "init %s/config.json %s/m --seed 5 --tokenizer " FIXTURES "/tokenizer/qwen2", dir, dir);
    ck_assert_msg(run(args, out, sizeof out) == 0, "%s", out);
    snprintf(args, sizeof args, "generate --model %s/m --prompt 'Hello there' --max-new-tokens 5 --seed 1", dir);
    ck_assert_msg(run(args, out, sizeof out) == 0, "%s", out);
    snprintf(args, sizeof args, "echo '{\"prompt\": \"Hi\", \"completion\": \" there, friend\"}' > %s/d.jsonl", dir);
    ck_assert_int_eq(system(args), 0);
    snprintf(args, sizeof args, "eval --model %s/m --data %s/d.jsonl --seq-len 32", dir, dir);
    ck_assert_msg(run(args, out, sizeof out) == 0, "%s", out);
    ck_assert_ptr_nonnull(strstr(out, "perplexity"));
    snprintf(args, sizeof args, "data prepare --model %s/m --out %s/d.h5 %s/d.jsonl", dir, dir, dir);
    ck_assert_msg(run(args, out, sizeof out) == 0, "%s", out);
    ck_assert_ptr_nonnull(strstr(out, "1 documents"));
    snprintf(args, sizeof args, "eval --model %s/m --data %s/d.h5 --seq-len 32", dir, dir);
    ck_assert_msg(run(args, out, sizeof out) == 0, "%s", out);
    snprintf(args, sizeof args, "eval --model %s/m --data %s/missing.jsonl", dir, dir);
    ck_assert_int_eq(run(args, out, sizeof out), 2);
    ck_assert_ptr_nonnull(strstr(out, "missing.jsonl"));
    snprintf(args, sizeof args, "generate --model %s/m --prompt 'Hello' --chat --system 'Be brief' --max-new-tokens 3", dir);
    ck_assert_msg(run(args, out, sizeof out) == 0, "%s", out);
    snprintf(args, sizeof args, "generate --model %s/m --prompt hi --system x", dir);
    ck_assert_int_eq(run(args, out, sizeof out), 2);
    ck_assert_ptr_nonnull(strstr(out, "--system needs --chat"));
    snprintf(args, sizeof args, "generate --model %s/m --prompt hi --top-p 1.5", dir);
    ck_assert_int_eq(run(args, out, sizeof out), 2);
    snprintf(args, sizeof args, "rm -rf %s", dir);
    ck_assert_int_eq(system(args), 0);
}
END_TEST

int main(void) {
    Suite *s = suite_create("cli");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_version_help_and_unknown_command);
    tcase_add_test(tc, test_inspect_reports_and_rejects);
    tcase_add_test(tc, test_tokenize_ids_and_counts);
    tcase_add_test(tc, test_init_then_generate);
    suite_add_tcase(s, tc);
    return test_run(s);
}
