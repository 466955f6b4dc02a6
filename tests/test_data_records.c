/* test_data_records.c — the record readers: each JSONL format and plain text give the right fields;
 * format auto decides per file (with its precedence) and refuses a file that mixes formats; bad lines
 * are counted and named with file:line (and archive entry); the max_bad_fraction rule; tar, tar.gz
 * and zip shards give exactly the records of the loose files; unknown files and entries are errors. */
#include <stdlib.h>
#include <string.h>

#include "data/records.h"
#include "support/data_util.h"
#include "support/files.h"
#include "support/test_util.h"

typedef struct {
    char dir[256];
    char path[512];
} tmp;

static const char *tmp_file(tmp *t, const char *name, const char *content) {
    join(t->path, sizeof t->path, t->dir, name);
    write_text(t->path, content);
    return t->path;
}

/* Reads path; the records (with locations) into *out (free out->text). */
static an_status read_into(an_ctx *ctx, const char *path, an_recipe_data_format format, an_data_read_stats *stats,
                           collected *out) {
    return an_data_read(ctx, path, format, stats, collect_with_where, out);
}

START_TEST(test_each_format_gives_its_fields_and_location) {
    an_ctx *ctx = test_ctx(1);
    tmp t;
    make_tmpdir(t.dir, sizeof t.dir);
    char text_path[512], pc_path[512], chat_path[512];
    snprintf(text_path, sizeof text_path, "%s", tmp_file(&t, "t.jsonl",
             "{\"text\": \"first doc\", \"id\": 7}\n\n{\"text\": \"line\\nbreak \\u4e2d\"}\r\n   \n{\"text\":\"no newline\"}"));
    snprintf(pc_path, sizeof pc_path, "%s", tmp_file(&t, "p.jsonl",
             "\xEF\xBB\xBF{\"prompt\": \"Q: 1+1\", \"completion\": \" 2\"}\n{\"prompt\": \"\", \"completion\": \"x\"}\n"));
    snprintf(chat_path, sizeof chat_path, "%s", tmp_file(&t, "c.jsonl",
             "{\"messages\": [{\"role\": \"system\", \"content\": \"S\"}, {\"role\": \"user\", \"content\": \"U\"}, "
             "{\"role\": \"assistant\", \"content\": \"A\"}]}\n"));
    an_data_read_stats stats = {0};
    collected got = {0};
    ck_assert_int_eq(read_into(ctx, text_path, AN_RECIPE_FORMAT_AUTO, &stats, &got), AN_OK);
    ck_assert_int_eq(read_into(ctx, pc_path, AN_RECIPE_FORMAT_AUTO, &stats, &got), AN_OK);
    ck_assert_int_eq(read_into(ctx, chat_path, AN_RECIPE_FORMAT_CHAT, &stats, &got), AN_OK);
    char want[4096];
    snprintf(want, sizeof want,
             "%s:1|text|first doc\n%s:3|text|line\nbreak \xe4\xb8\xad\n%s:5|text|no newline\n"
             "%s:1|prompt_completion|Q: 1+1| 2\n%s:2|prompt_completion||x\n"
             "%s:1|chat|system:S|user:U|assistant:A\n",
             text_path, text_path, text_path, pc_path, pc_path, chat_path);
    ck_assert_str_eq(got.text, want);
    ck_assert_int_eq(stats.records, 6);
    ck_assert_int_eq(stats.bad, 0);
    ck_assert_uint_eq(stats.formats, (1u << AN_RECIPE_FORMAT_TEXT) | (1u << AN_RECIPE_FORMAT_PROMPT_COMPLETION) |
                                         (1u << AN_RECIPE_FORMAT_CHAT));
    ck_assert_int_eq(an_data_check_bad(ctx, &stats, 0.0, "data"), AN_OK);
    free(got.text);
    remove_tree(t.dir);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_auto_takes_messages_before_prompt_before_text) {
    an_ctx *ctx = test_ctx(1);
    tmp t;
    make_tmpdir(t.dir, sizeof t.dir);
    /* UltraChat-style rows: a prompt beside the messages. */
    const char *path = tmp_file(&t, "u.jsonl",
                                "{\"prompt\": \"p\", \"text\": \"t\", \"messages\": [{\"role\": \"user\", \"content\": \"p\"}, "
                                "{\"role\": \"assistant\", \"content\": \"r\"}]}\n"
                                "{\"prompt\": \"a\", \"completion\": \"b\", \"text\": \"ignored\"}\n");
    an_data_read_stats stats = {0};
    collected got = {0};
    an_status st = read_into(ctx, path, AN_RECIPE_FORMAT_AUTO, &stats, &got);
    EXPECT_INPUT_ERROR(ctx, st, "mixed file", "u.jsonl", "line 2 is a prompt_completion record", "line 1 is chat",
                       "data.format");
    ck_assert_str_eq(strchr(got.text, '|') + 1, "chat|user:p|assistant:r\n");
    free(got.text);

    /* An explicit format reads every line by its fields; other formats' lines are then bad records. */
    path = tmp_file(&t, "x.jsonl", "{\"prompt\": \"a\", \"completion\": \"b\", \"text\": \"kept\"}\n{\"prompt\": \"c\"}\n");
    stats = (an_data_read_stats){0};
    got = (collected){0};
    ck_assert_int_eq(read_into(ctx, path, AN_RECIPE_FORMAT_TEXT, &stats, &got), AN_OK);
    ck_assert_str_eq(strchr(got.text, '|') + 1, "text|kept\n");
    ck_assert_int_eq(stats.records, 2);
    ck_assert_int_eq(stats.bad, 1);
    ck_assert_ptr_nonnull(strstr(stats.shown[0], "x.jsonl:2: missing field 'text'"));
    free(got.text);
    remove_tree(t.dir);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_bad_lines_are_counted_and_named_with_file_and_line) {
    an_ctx *ctx = test_ctx(1);
    tmp t;
    make_tmpdir(t.dir, sizeof t.dir);
    const char *path = tmp_file(&t, "bad.jsonl",
                                "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"}]}\n"
                                "not json at all\n"
                                "[1, 2]\n"
                                "{\"messages\": \"nope\"}\n"
                                "{\"messages\": [{\"role\": \"tool\", \"content\": \"x\"}]}\n"
                                "{\"messages\": [{\"role\": \"user\", \"content\": \"only a question\"}]}\n"
                                "{\"messages\": [{\"role\": \"assistant\", \"content\": null}]}\n"
                                "{\"messages\": []}\n"
                                "{\"other\": 1}\n"
                                "{\"messages\": [{\"role\": \"user\", \"content\": 5}, {\"role\": \"assistant\", \"content\": \"a\"}]}\n"
                                "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"content\": \"a\"}]}\n");
    an_data_read_stats stats = {0};
    collected got = {0};
    ck_assert_int_eq(read_into(ctx, path, AN_RECIPE_FORMAT_AUTO, &stats, &got), AN_OK);
    ck_assert_int_eq(got.n, 2);
    ck_assert_int_eq(stats.records, 11);
    ck_assert_int_eq(stats.bad, 9);
    ck_assert_int_eq(stats.n_shown, AN_DATA_BAD_SHOWN);
    const char *want[AN_DATA_BAD_SHOWN] = {
        "bad.jsonl:2: not JSON", "bad.jsonl:3: not a JSON object (got an array)",
        "bad.jsonl:4: 'messages' must be an array, got a string",
        "bad.jsonl:5: messages[0].role 'tool' is not system, user or assistant",
        "bad.jsonl:6: no assistant message",
    };
    for (int i = 0; i < AN_DATA_BAD_SHOWN; i++)
        ck_assert_msg(strstr(stats.shown[i], want[i]), "shown[%d] = '%s', expected '%s'", i, stats.shown[i], want[i]);

    /* 9 of 11 bad: only a fraction of at least 9/11 passes; the error names the first ones and the rest. */
    ck_assert_int_eq(an_data_check_bad(ctx, &stats, 0.82, "data"), AN_OK);
    an_status st = an_data_check_bad(ctx, &stats, 0.8, "data");
    EXPECT_INPUT_ERROR(ctx, st, "fraction rule", "9 of 11 records are bad", "max_bad_fraction = 0.8",
                       "bad.jsonl:2: not JSON", "bad.jsonl:6: no assistant message", "and 4 more");

    /* The remaining reasons, one file each. */
    const char *lines[][2] = {
        {"{\"messages\": [{\"role\": \"assistant\", \"content\": null}]}\n", "tool calls are not supported"},
        {"{\"messages\": []}\n", "'messages' is empty"},
        {"{\"other\": 1}\n", "no 'messages', 'prompt'/'completion' or 'text' field"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": 5}]}\n", "messages[0].content must be a string, got a number"},
        {"{\"text\": \"\"}\n", "'text' is empty"},
        {"{\"text\": 3}\n", "'text' must be a string, got a number"},
        {"{\"prompt\": \"p\", \"completion\": \"\"}\n", "'completion' is empty"},
        {"{\"prompt\": \"p\"}\n", "missing field 'completion'"},
        {"{\"text\": \"a\"} trailing\n", "not JSON"},
    };
    for (size_t i = 0; i < sizeof lines / sizeof *lines; i++) {
        path = tmp_file(&t, "one.jsonl", lines[i][0]);
        stats = (an_data_read_stats){0};
        ck_assert_int_eq(read_into(ctx, path, AN_RECIPE_FORMAT_AUTO, &stats, &got), AN_OK);
        ck_assert_int_eq(stats.bad, 1);
        ck_assert_msg(strstr(stats.shown[0], lines[i][1]) && strstr(stats.shown[0], "one.jsonl:1: "),
                      "'%s' gave '%s'", lines[i][0], stats.shown[0]);
        st = an_data_check_bad(ctx, &stats, 0.5, "data");
        EXPECT_INPUT_ERROR(ctx, st, "all bad", "no usable record");
    }
    free(got.text);
    remove_tree(t.dir);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_plain_text_files_are_one_document_each) {
    an_ctx *ctx = test_ctx(1);
    tmp t;
    make_tmpdir(t.dir, sizeof t.dir);
    const char *body = "Title\n\nFirst paragraph.\n\nSecond paragraph, \xe4\xb8\xad\xe6\x96\x87.\n";
    const char *path = tmp_file(&t, "book.txt", body);
    an_data_read_stats stats = {0};
    collected got = {0};
    ck_assert_int_eq(read_into(ctx, path, AN_RECIPE_FORMAT_AUTO, &stats, &got), AN_OK);
    char want[1024];
    snprintf(want, sizeof want, "%s:1|text|%s\n", path, body);
    ck_assert_str_eq(got.text, want);

    path = tmp_file(&t, "empty.txt", " \n\t\n");
    ck_assert_int_eq(read_into(ctx, path, AN_RECIPE_FORMAT_TEXT, &stats, &got), AN_OK);
    path = tmp_file(&t, "latin1.txt", "caf\xe9 au lait");
    ck_assert_int_eq(read_into(ctx, path, AN_RECIPE_FORMAT_AUTO, &stats, &got), AN_OK);
    path = tmp_file(&t, "surrogate.txt", "ok \xed\xa0\x80");
    ck_assert_int_eq(read_into(ctx, path, AN_RECIPE_FORMAT_AUTO, &stats, &got), AN_OK);
    ck_assert_int_eq(stats.records, 4);
    ck_assert_int_eq(stats.bad, 3);
    ck_assert_ptr_nonnull(strstr(stats.shown[0], "empty.txt:1: empty file"));
    ck_assert_ptr_nonnull(strstr(stats.shown[1], "latin1.txt:1: not valid UTF-8 (byte 3)"));
    ck_assert_ptr_nonnull(strstr(stats.shown[2], "surrogate.txt:1: not valid UTF-8 (byte 3)"));

    an_status st = read_into(ctx, path, AN_RECIPE_FORMAT_CHAT, &stats, &got);
    EXPECT_INPUT_ERROR(ctx, st, "txt as chat", "surrogate.txt", "plain text", "chat");
    free(got.text);
    remove_tree(t.dir);
    test_ctx_free(ctx);
}
END_TEST

static const char *const entry_names[] = {"dir/a.jsonl", "b.txt", "dir/c.jsonl"};
static const char *const entry_bodies[] = {
    "{\"text\": \"alpha\"}\n{\"text\": \"beta\"}\n",
    "a whole plain document\n\nwith two paragraphs\n",
    "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"content\": \"a\"}]}\n"
    "{broken\n",
};

START_TEST(test_tar_tar_gz_and_zip_shards_give_the_records_of_the_loose_files) {
    an_ctx *ctx = test_ctx(1);
    tmp t;
    make_tmpdir(t.dir, sizeof t.dir);
    collected loose = {0};
    an_data_read_stats loose_stats = {0};
    static const char *const loose_names[] = {"a.jsonl", "b.txt", "c.jsonl"};
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(an_data_read(ctx, tmp_file(&t, loose_names[i], entry_bodies[i]), AN_RECIPE_FORMAT_AUTO,
                                      &loose_stats, collect_without_where, &loose),
                         AN_OK);
    ck_assert_int_eq(loose.n, 4);
    static const struct { shard_kind kind; const char *name; } shards[] = {
        {SHARD_TAR, "s.tar"}, {SHARD_TAR_GZ, "s.tar.gz"}, {SHARD_TAR_GZ, "s.tgz"}, {SHARD_ZIP, "s.zip"}};
    for (size_t k = 0; k < sizeof shards / sizeof *shards; k++) {
        char path[512];
        join(path, sizeof path, t.dir, shards[k].name);
        make_shard(path, shards[k].kind, entry_names, entry_bodies, 3);
        collected got = {0};
        an_data_read_stats stats = {0};
        ck_assert_int_eq(an_data_read(ctx, path, AN_RECIPE_FORMAT_AUTO, &stats, collect_without_where, &got), AN_OK);
        ck_assert_str_eq(got.text, loose.text);
        ck_assert_int_eq(stats.records, loose_stats.records);
        ck_assert_int_eq(stats.bad, 1);
        char want[700];
        snprintf(want, sizeof want, "%s[dir/c.jsonl]:2: not JSON", path);
        ck_assert_msg(strstr(stats.shown[0], want), "'%s' lacks '%s'", stats.shown[0], want);
        /* locations name the entry */
        free(got.text);
        got = (collected){0};
        stats = (an_data_read_stats){0};
        ck_assert_int_eq(an_data_read(ctx, path, AN_RECIPE_FORMAT_AUTO, &stats, collect_with_where, &got), AN_OK);
        snprintf(want, sizeof want, "%s[b.txt]:1|text|", path);
        ck_assert_ptr_nonnull(strstr(got.text, want));
        free(got.text);
    }
    free(loose.text);
    remove_tree(t.dir);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_unknown_files_and_entries_are_errors) {
    an_ctx *ctx = test_ctx(1);
    tmp t;
    make_tmpdir(t.dir, sizeof t.dir);
    an_data_read_stats stats = {0};
    collected got = {0};
    an_status st = read_into(ctx, tmp_file(&t, "data.csv", "a,b\n"), AN_RECIPE_FORMAT_AUTO, &stats, &got);
    EXPECT_INPUT_ERROR(ctx, st, "csv", "data.csv", "unknown data file type", ".jsonl");
    char missing[512];
    st = read_into(ctx, join(missing, sizeof missing, t.dir, "nope.jsonl"), AN_RECIPE_FORMAT_AUTO, &stats, &got);
    EXPECT_INPUT_ERROR(ctx, st, "missing", "nope.jsonl", "cannot open");
    st = read_into(ctx, t.dir, AN_RECIPE_FORMAT_AUTO, &stats, &got);
    EXPECT_INPUT_ERROR(ctx, st, "directory", "not a regular file");

    char path[512];
    join(path, sizeof path, t.dir, "s.tar");
    const char *names[] = {"a.jsonl", "README.md"}, *bodies[] = {"{\"text\": \"x\"}\n", "# readme\n"};
    make_shard(path, SHARD_TAR, names, bodies, 2);
    st = read_into(ctx, path, AN_RECIPE_FORMAT_AUTO, &stats, &got);
    EXPECT_INPUT_ERROR(ctx, st, "entry", "s.tar", "entry 'README.md' is neither .jsonl nor .txt");

    st = read_into(ctx, tmp_file(&t, "fake.tar.gz", "this is not gzip data at all"), AN_RECIPE_FORMAT_AUTO, &stats,
                   &got);
    EXPECT_INPUT_ERROR(ctx, st, "fake archive", "fake.tar.gz");
    free(got.text);
    remove_tree(t.dir);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_a_long_line_is_read_whole) {
    an_ctx *ctx = test_ctx(1);
    tmp t;
    make_tmpdir(t.dir, sizeof t.dir);
    size_t n = 300000;  /* several read blocks */
    char *line = malloc(n + 64);
    strcpy(line, "{\"text\": \"");
    size_t at = strlen(line);
    for (size_t i = 0; i < n; i++) line[at + i] = (char)('a' + i % 26);
    strcpy(line + at + n, "\"}\n{\"text\": \"short\"}\n");
    an_data_read_stats stats = {0};
    collected got = {0};
    ck_assert_int_eq(read_into(ctx, tmp_file(&t, "long.jsonl", line), AN_RECIPE_FORMAT_AUTO, &stats, &got), AN_OK);
    ck_assert_int_eq(got.n, 2);
    ck_assert_int_eq(stats.bad, 0);
    ck_assert(memcmp(strstr(got.text, "|text|") + 6, line + at, n) == 0);
    ck_assert_ptr_nonnull(strstr(got.text, "long.jsonl:2|text|short\n"));
    free(line);
    free(got.text);
    remove_tree(t.dir);
    test_ctx_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("data_records");
    TCase *tc = tcase_create("records");
    tcase_add_test(tc, test_each_format_gives_its_fields_and_location);
    tcase_add_test(tc, test_auto_takes_messages_before_prompt_before_text);
    tcase_add_test(tc, test_bad_lines_are_counted_and_named_with_file_and_line);
    tcase_add_test(tc, test_plain_text_files_are_one_document_each);
    tcase_add_test(tc, test_tar_tar_gz_and_zip_shards_give_the_records_of_the_loose_files);
    tcase_add_test(tc, test_unknown_files_and_entries_are_errors);
    tcase_add_test(tc, test_a_long_line_is_read_whole);
    suite_add_tcase(s, tc);
    return test_run(s);
}
