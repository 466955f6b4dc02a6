/* test_safetensors_errors.c — every way a safetensors file, a model directory or a write can go
 * wrong, each of which must be an AN_ERR_INPUT error whose message names the file and the field or
 * tensor: broken headers (built in a temp dir by patching a good file), index/shard disagreements,
 * bad writer input, and a write that fails half way (which must leave the old file untouched). */
#include <jansson.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "ckpt/safetensors.h"
#include "support/files.h"  /* read_bytes, make_tmpdir, remove_tree, EXPECT_INPUT_ERROR, header_of */
#include "support/test_util.h"

#define FIXTURES ANNEAL_SOURCE_DIR "/tests/fixtures/safetensors"

#define SHARD1 "model-00001-of-00002.safetensors"
#define SHARD2 "model-00002-of-00002.safetensors"
#define INDEX "model.safetensors.index.json"

/* Ways a model directory can be wrong: each edits a fresh copy of the sharded fixture in `dir`
 * (the index already loaded into `index`, saved after the edit unless the edit returns false). */
typedef bool (*dir_edit)(const char *dir, json_t *index);

static void path_in(char *out, size_t size, const char *dir, const char *name) { snprintf(out, size, "%s/%s", dir, name); }

static bool drop_shard2(const char *dir, json_t *index) {
    char p[1024];
    path_in(p, sizeof p, dir, SHARD2);
    unlink(p);
    return true;
}
static bool list_extra_tensor(const char *dir, json_t *index) {
    json_object_set_new(json_object_get(index, "weight_map"), "model.extra.weight", json_string(SHARD1));
    return true;
}
static bool unlist_lm_head(const char *dir, json_t *index) {
    json_object_del(json_object_get(index, "weight_map"), "lm_head.weight");
    return true;
}
static bool misplace_lm_head(const char *dir, json_t *index) {
    json_object_set_new(json_object_get(index, "weight_map"), "lm_head.weight", json_string(SHARD1));
    return true;
}
static bool shard2_copies_shard1(const char *dir, json_t *index) {
    char p[1024];
    path_in(p, sizeof p, dir, SHARD2);
    copy_file(FIXTURES "/sharded/" SHARD1, p);
    return true;
}
static bool shard_outside_dir(const char *dir, json_t *index) {
    json_object_set_new(json_object_get(index, "weight_map"), "lm_head.weight", json_string("../" SHARD2));
    return true;
}
static bool index_not_json(const char *dir, json_t *index) {
    char p[1024];
    path_in(p, sizeof p, dir, INDEX);
    write_bytes(p, "{\"weight_map\": {", 16);
    return false;
}
static bool empty_weight_map(const char *dir, json_t *index) {
    json_object_clear(json_object_get(index, "weight_map"));
    return true;
}
static bool no_weights_at_all(const char *dir, json_t *index) {
    char p[1024];
    const char *names[] = {SHARD1, SHARD2};
    for (int i = 0; i < 2; i++) {
        path_in(p, sizeof p, dir, names[i]);
        unlink(p);
    }
    return false; /* and no index written */
}

static const struct {
    const char *what;
    dir_edit edit;
    const char *needles[4]; /* besides the directory's path */
} dir_cases[] = {
    {"a shard the index lists is missing", drop_shard2, {SHARD2, INDEX, "is missing"}},
    {"the index lists a tensor its shard lacks", list_extra_tensor,
     {INDEX, "'model.extra.weight'", SHARD1, "no such tensor"}},
    {"a shard tensor the index does not list", unlist_lm_head,
     {INDEX, "'lm_head.weight'", SHARD2, "missing from the \"weight_map\""}},
    {"the index puts a tensor in the wrong shard", misplace_lm_head, {INDEX, "'lm_head.weight'", SHARD1, SHARD2}},
    {"the same tensor in two shards", shard2_copies_shard1, {"'model.embed_tokens.weight'", SHARD1, SHARD2, "in both"}},
    {"a shard path outside the directory", shard_outside_dir,
     {INDEX, "\"weight_map\".\"lm_head.weight\"", "outside the model directory"}},
    {"an index that is not JSON", index_not_json, {INDEX, "not valid JSON"}},
    {"an empty weight_map", empty_weight_map, {INDEX, "\"weight_map\" is empty"}},
    {"neither index nor model.safetensors", no_weights_at_all, {INDEX, "model.safetensors", "neither"}},
};

START_TEST(test_bad_model_dir_is_an_input_error_naming_index_shard_and_tensor) {
    an_ctx *ctx = test_ctx(9);
    char dir[512], p[1024];
    make_tmpdir(dir, sizeof dir);
    path_in(p, sizeof p, dir, SHARD1);
    copy_file(FIXTURES "/sharded/" SHARD1, p);
    path_in(p, sizeof p, dir, SHARD2);
    copy_file(FIXTURES "/sharded/" SHARD2, p);
    json_error_t err;
    json_t *index = json_load_file(FIXTURES "/sharded/" INDEX, 0, &err);
    ck_assert_ptr_nonnull(index);
    if (dir_cases[_i].edit(dir, index)) {
        path_in(p, sizeof p, dir, INDEX);
        ck_assert_int_eq(json_dump_file(index, p, JSON_INDENT(2)), 0);
    }
    json_decref(index);
    an_safetensors *st = NULL;
    an_status status = an_safetensors_dir_open(ctx, dir, &st);
    ck_assert_msg(status == AN_ERR_INPUT, "%s: status %d (%s)", dir_cases[_i].what, (int)status, an_error_message(ctx));
    ck_assert_ptr_null(st);
    ck_assert_msg(strstr(an_error_message(ctx), dir) != NULL, "%s: '%s' does not name %s", dir_cases[_i].what,
                  an_error_message(ctx), dir);
    for (int i = 0; i < 4 && dir_cases[_i].needles[i]; i++)
        ck_assert_msg(strstr(an_error_message(ctx), dir_cases[_i].needles[i]) != NULL, "%s: '%s' does not mention '%s'",
                      dir_cases[_i].what, an_error_message(ctx), dir_cases[_i].needles[i]);
    an_error_clear(ctx);
    remove_tree(dir);
    EXPECT_INPUT_ERROR(ctx, an_safetensors_dir_open(ctx, dir, &st), "no dir", dir, "cannot open model directory");
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_write_rejects_bad_input_and_leaves_nothing) {
    an_ctx *ctx = test_ctx(15);
    char dir[512], path[1024], tmp[1100];
    make_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/bad.safetensors", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    an_tensor *a = test_uniform(ctx, AN_F32, 1, (int64_t[]){4}, -1, 1, false);
    an_tensor *b = test_uniform(ctx, AN_F32, 1, (int64_t[]){2}, -1, 1, false);
    EXPECT_INPUT_ERROR(ctx, an_safetensors_write(ctx, path, 2, (const char *[]){"w", "w"}, (an_tensor *[]){a, b}, 0,
                                                 NULL), "duplicate", path, "'w'", "twice");
    EXPECT_INPUT_ERROR(ctx, an_safetensors_write(ctx, path, 1, (const char *[]){"__metadata__"}, (an_tensor *[]){a}, 0,
                                                 NULL), "reserved", path, "__metadata__");
    EXPECT_INPUT_ERROR(ctx, an_safetensors_write(ctx, path, 1, (const char *[]){"bad\xff"}, (an_tensor *[]){a}, 0,
                                                 NULL), "utf8", path, "UTF-8");
    an_safetensors_meta dup[] = {{"k", "1"}, {"k", "2"}};
    EXPECT_INPUT_ERROR(ctx, an_safetensors_write(ctx, path, 1, (const char *[]){"w"}, (an_tensor *[]){a}, 2, dup),
                       "meta", path, "\"k\"", "twice");
    const int64_t shape[] = {3};
    an_safetensors_tensor raw = {.name = "r", .dtype_name = "I8", .ndim = 1, .shape = shape, .data = "abcd", .nbytes = 4};
    EXPECT_INPUT_ERROR(ctx, an_safetensors_write_raw(ctx, path, 1, &raw, 0, NULL), "size", path, "'r'", "4 bytes");
    raw.dtype_name = "Q7";
    EXPECT_INPUT_ERROR(ctx, an_safetensors_write_raw(ctx, path, 1, &raw, 0, NULL), "dtype", path, "'r'", "\"Q7\"");
    ck_assert(!exists(path) && !exists(tmp));
    char nodir[1100];
    snprintf(nodir, sizeof nodir, "%s/missing/x.safetensors", dir);
    EXPECT_INPUT_ERROR(ctx, an_safetensors_write(ctx, nodir, 1, (const char *[]){"w"}, (an_tensor *[]){a}, 0, NULL),
                       "no dir", nodir, "cannot create");
    an_tensor_release(a);
    an_tensor_release(b);
    remove_tree(dir);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_failed_write_keeps_the_old_file_and_leaves_no_temp) {
    /* Check runs each test in its own process, so the file size limit stays here. */
    an_ctx *ctx = test_ctx(16);
    char dir[512], path[1024], tmp[1100];
    make_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    an_tensor *small = test_uniform(ctx, AN_F32, 1, (int64_t[]){2}, -1, 1, false);
    an_tensor *big = test_uniform(ctx, AN_F32, 1, (int64_t[]){4096}, -1, 1, false);
    ck_assert_int_eq(an_safetensors_write(ctx, path, 1, (const char *[]){"w"}, (an_tensor *[]){small}, 0, NULL), AN_OK);
    size_t n_before;
    unsigned char *before = read_bytes(path, &n_before);

    struct rlimit old, lim;
    getrlimit(RLIMIT_FSIZE, &old);
    lim = old;
    lim.rlim_cur = 1024; /* the 16 KiB tensor cannot be written */
    signal(SIGXFSZ, SIG_IGN);
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
    an_status st = an_safetensors_write(ctx, path, 1, (const char *[]){"w"}, (an_tensor *[]){big}, 0, NULL);
    setrlimit(RLIMIT_FSIZE, &old);
    EXPECT_INPUT_ERROR(ctx, st, "disk full", tmp, "write failed");

    size_t n_after;
    unsigned char *after = read_bytes(path, &n_after);
    ck_assert(n_after == n_before && memcmp(before, after, n_before) == 0);
    ck_assert(!exists(tmp));
    free(before);
    free(after);
    an_tensor_release(small);
    an_tensor_release(big);
    remove_tree(dir);
    test_ctx_free(ctx);
}
END_TEST

/* ---- broken files: one per way a header can lie ---- */

/* The good file: "a" F32 (2, 3) at [0, 24) and "b" BF16 (4) at [24, 32). */
#define GOOD_HEADER \
    "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},\"b\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[24,32]}}"

typedef struct {
    const char *what;
    const char *from, *to;  /* text patch of the header JSON (the length is recomputed) */
    long long length;       /* when nonzero, written as the header length instead */
    long long cut;          /* when nonzero: keep the first `cut` bytes (negative: drop the last -cut) */
    int append;             /* bytes of zeros appended to the data section */
    const char *needles[3]; /* besides the file's path */
} bad_case;

static const bad_case bad_cases[] = {
    {"header length past the file", NULL, NULL, 4096, 0, 0, {"header length 4096", "runs past the end of the file"}},
    {"header length above the limit", NULL, NULL, 200000000, 0, 0, {"header length 200000000", "above the limit"}},
    {"header not JSON", "\"dtype\":\"F32\"", "\"dtype\":F32", 0, 0, 0, {"not valid JSON"}},
    {"header not an object", GOOD_HEADER, "[1,2]", 0, 0, 0, {"not a JSON object"}},
    {"missing dtype", "\"dtype\":\"F32\",", "", 0, 0, 0, {"'a'", "\"dtype\" is missing"}},
    {"missing shape", "\"shape\":[4],", "", 0, 0, 0, {"'b'", "\"shape\" is missing"}},
    {"missing data_offsets", ",\"data_offsets\":[0,24]", "", 0, 0, 0, {"'a'", "\"data_offsets\" is missing"}},
    {"unknown dtype", "\"F32\"", "\"F31\"", 0, 0, 0, {"'a'", "unknown \"dtype\" \"F31\"", "BF16"}},
    {"negative dim", "[2,3]", "[-2,-3]", 0, 0, 0, {"'a'", "\"shape\"[0] is -2", "non-negative"}},
    {"dim not an integer", "[2,3]", "[2,3.0]", 0, 0, 0, {"'a'", "\"shape\"[1]", "not an integer"}},
    {"shape and span disagree", "[2,3]", "[2,2]", 0, 0, 0, {"'a'", "is 16 bytes", "span 24 bytes"}},
    {"offsets past the data", "[24,32]", "[28,36]", 0, 0, 0, {"'b'", "[28, 36]", "run past the end of the data"}},
    {"offsets reversed", "\"shape\":[4],\"data_offsets\":[24,32]", "\"shape\":[0],\"data_offsets\":[32,24]", 0, 0, 0,
     {"'b'", "[32, 24]", "end before they begin"}},
    {"offsets not a pair", "[24,32]", "[24,32,40]", 0, 0, 0, {"'b'", "\"data_offsets\" is not [begin, end]"}},
    {"gap between tensors", "\"shape\":[2,3],\"data_offsets\":[0,24]", "\"shape\":[2,2],\"data_offsets\":[0,16]", 0, 0,
     0, {"bytes [16, 24)", "belong to no tensor", "'b'"}},
    {"overlapping tensors", "[24,32]", "[20,28]", 0, 0, 0, {"'a'", "'b'", "overlap"}},
    {"bytes after the last tensor", NULL, NULL, 0, 0, 8, {"bytes [32, 40)", "belong to no tensor"}},
    {"duplicate name", "\"b\":{", "\"a\":{", 0, 0, 0, {"duplicate", "\"a\"", "may appear once"}},
    {"metadata not a string", "{\"a\":", "{\"__metadata__\":{\"k\":1},\"a\":", 0, 0, 0,
     {"\"__metadata__\".\"k\"", "not a string"}},
    {"truncated data", NULL, NULL, 0, -4, 0, {"'b'", "run past the end of the data section", "truncated"}},
    {"truncated header", NULL, NULL, 0, 40, 0, {"runs past the end of the file", "truncated"}},
    {"shorter than the length field", NULL, NULL, 0, 5, 0, {"file of 5 bytes", "8-byte header length"}},
};

START_TEST(test_broken_file_is_an_input_error_naming_file_and_field) {
    const bad_case *c = &bad_cases[_i];
    an_ctx *ctx = test_ctx(17);
    /* The good file, written by anneal, must open. */
    an_tensor *a = test_uniform(ctx, AN_F32, 2, (int64_t[]){2, 3}, -1, 1, false);
    an_tensor *b = test_uniform(ctx, AN_BF16, 1, (int64_t[]){4}, -1, 1, false);
    char dir[512], good[1024], bad[1024];
    make_tmpdir(dir, sizeof dir);
    snprintf(good, sizeof good, "%s/good.safetensors", dir);
    snprintf(bad, sizeof bad, "%s/bad.safetensors", dir);
    ck_assert_int_eq(an_safetensors_write(ctx, good, 2, (const char *[]){"a", "b"}, (an_tensor *[]){a, b}, 0, NULL),
                     AN_OK);
    size_t n;
    unsigned char *bytes = read_bytes(good, &n);
    size_t hlen;
    const char *json = header_of(bytes, &hlen);
    ck_assert_msg(hlen >= strlen(GOOD_HEADER) && !memcmp(json, GOOD_HEADER, strlen(GOOD_HEADER)), "%.*s", (int)hlen,
                  json);
    an_safetensors *st = NULL;
    ck_assert_int_eq(an_safetensors_open(ctx, good, &st), AN_OK);
    an_safetensors_close(st);

    /* Patch it. */
    char header[512];
    snprintf(header, sizeof header, "%s", GOOD_HEADER);
    if (c->from) {
        char *at = strstr(header, c->from);
        ck_assert_msg(at != NULL, "%s: patch target not found", c->what);
        char rest[512];
        snprintf(rest, sizeof rest, "%s", at + strlen(c->from));
        snprintf(at, sizeof header - (size_t)(at - header), "%s%s", c->to, rest);
    }
    size_t data_len = n - 8 - hlen, new_hlen = strlen(header);
    unsigned char *out = calloc(1, 8 + new_hlen + data_len + (size_t)c->append);
    uint64_t len_field = c->length ? (uint64_t)c->length : new_hlen;
    for (int i = 0; i < 8; i++) out[i] = (unsigned char)(len_field >> (8 * i));
    memcpy(out + 8, header, new_hlen);
    memcpy(out + 8 + new_hlen, bytes + 8 + hlen, data_len);
    size_t out_len = 8 + new_hlen + data_len + (size_t)c->append;
    if (c->cut > 0) out_len = (size_t)c->cut;
    if (c->cut < 0) out_len -= (size_t)-c->cut;
    write_bytes(bad, out, out_len);

    st = NULL;
    an_status status = an_safetensors_open(ctx, bad, &st);
    ck_assert_msg(status == AN_ERR_INPUT, "%s: status %d (%s)", c->what, (int)status, an_error_message(ctx));
    ck_assert_ptr_null(st);
    ck_assert_msg(strstr(an_error_message(ctx), bad) != NULL, "%s: '%s' does not name the file", c->what,
                  an_error_message(ctx));
    for (int i = 0; i < 3 && c->needles[i]; i++)
        ck_assert_msg(strstr(an_error_message(ctx), c->needles[i]) != NULL, "%s: '%s' does not mention '%s'", c->what,
                      an_error_message(ctx), c->needles[i]);
    an_error_clear(ctx);
    /* The same bytes from memory fail the same way. */
    ck_assert_int_eq(an_safetensors_open_buffer(ctx, "buffer", out, out_len, &st), AN_ERR_INPUT);
    an_error_clear(ctx);
    free(out);
    free(bytes);
    an_tensor_release(a);
    an_tensor_release(b);
    remove_tree(dir);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_open_names_a_missing_or_unreadable_path) {
    an_ctx *ctx = test_ctx(18);
    an_safetensors *st = NULL;
    EXPECT_INPUT_ERROR(ctx, an_safetensors_open(ctx, "/nonexistent/model.safetensors", &st), "missing",
                       "/nonexistent/model.safetensors", "cannot open");
    EXPECT_INPUT_ERROR(ctx, an_safetensors_open(ctx, FIXTURES, &st), "dir", FIXTURES, "is a directory");
    EXPECT_INPUT_ERROR(ctx, an_safetensors_open(ctx, FIXTURES "/sharded/" INDEX, &st), "json", INDEX,
                       "above the limit"); /* "{\n  \"me" read as a length */
    ck_assert_ptr_null(st);
    test_ctx_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("safetensors_errors");
    TCase *files = tcase_create("files");
    tcase_add_test(files, test_open_names_a_missing_or_unreadable_path);
    tcase_add_loop_test(files, test_broken_file_is_an_input_error_naming_file_and_field, 0,
                        (int)(sizeof bad_cases / sizeof *bad_cases));
    suite_add_tcase(s, files);
    TCase *dir = tcase_create("dir");
    tcase_add_loop_test(dir, test_bad_model_dir_is_an_input_error_naming_index_shard_and_tensor, 0,
                        (int)(sizeof dir_cases / sizeof *dir_cases));
    suite_add_tcase(s, dir);
    TCase *write = tcase_create("write");
    tcase_add_test(write, test_write_rejects_bad_input_and_leaves_nothing);
    tcase_add_test(write, test_failed_write_keeps_the_old_file_and_leaves_no_temp);
    suite_add_tcase(s, write);
    return test_run(s);
}
