/* test_data_dataset.c — the HDF5 tokenized dataset and what makes it: writer → reader round trip
 * (attributes, documents, token ranges, a document crossing the writer's flush), atomic writes, SHA-256
 * fingerprints and the refusal of another tokenizer's dataset, broken files refused with the field
 * named; an_dataset_prepare on each format with the Qwen2 fixture tokenizer (equal to encoding each
 * record), shards equal to loose files, the bad-record fraction; an_data_open from a recipe (prepare,
 * reuse while unchanged, validation split or file, prepared .h5 inputs). */
#include <hdf5.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ckpt/sha256.h"  /* an_sha256_file */
#include "data/data.h"
#include "support/data_util.h"
#include "support/files.h"
#include "support/test_util.h"

#define QWEN2 ANNEAL_SOURCE_DIR "/tests/fixtures/tokenizer/qwen2"
#define LLAMA3 ANNEAL_SOURCE_DIR "/tests/fixtures/tokenizer/llama3"

static an_dataset *open_ok(an_ctx *ctx, const char *path, const char *sha) {
    an_dataset *ds = NULL;
    ck_assert_msg(an_dataset_open(ctx, path, sha, &ds) == AN_OK, "%s", an_error_message(ctx));
    return ds;
}

/* ---- writer and reader ---- */

START_TEST(test_written_documents_and_attributes_read_back) {
    an_ctx *ctx = test_ctx(1);
    char dir[256], path[512], tmp_path[600];
    make_tmpdir(dir, sizeof dir);
    join(path, sizeof path, dir, "d.h5");
    snprintf(tmp_path, sizeof tmp_path, "%s.tmp", path);
    an_rng rng;
    an_rng_init(&rng, 5);
    enum { N = 40 };
    int64_t lens[N], offsets[N + 1] = {0};
    for (int i = 0; i < N; i++) lens[i] = 1 + (int64_t)(an_rng_u64(&rng) % 300);
    lens[17] = (1 << 20) + 12345;  /* crosses the writer's flush */
    for (int i = 0; i < N; i++) offsets[i + 1] = offsets[i] + lens[i];
    int64_t total = offsets[N], loss = 0;
    int32_t *ids = malloc((size_t)total * sizeof *ids);
    uint8_t *mask = malloc((size_t)total);
    for (int64_t k = 0; k < total; k++) {
        ids[k] = (int32_t)(an_rng_u64(&rng) % 150000);
        mask[k] = an_rng_u64(&rng) % 3 != 0;
        loss += mask[k];
    }
    an_dataset_writer *w;
    ck_assert_int_eq(an_dataset_writer_open(ctx, path, &w), AN_OK);
    for (int i = 0; i < N; i++) ck_assert_int_eq(an_dataset_writer_add(ctx, w, ids + offsets[i], mask + offsets[i], lens[i]), AN_OK);
    ck_assert(exists(tmp_path) && !exists(path));
    an_dataset_source sources[2] = {
        {.path = "a/train.jsonl", .formats = "chat", .records = 30, .bad_records = 1, .size = 1234, .mtime_ns = 99},
        {.path = "b/shard.tar", .formats = "text+chat", .records = 11, .bad_records = 0, .size = 5, .mtime_ns = -1},
    };
    an_dataset_info info = {.tokenizer_sha256 = "ab12", .format = "auto", .chat_template = "deepseek",
                            .reasoning = "keep_last", .max_bad_fraction = 0.05, .bos_id = 1, .eos_id = 2,
                            .pad_id = -1, .vocab_size = 151665, .records = 41, .bad_records = 1,
                            .sources = sources, .n_sources = 2};
    ck_assert_int_eq(an_dataset_writer_commit(ctx, w, &info), AN_OK);
    ck_assert(exists(path) && !exists(tmp_path));

    an_dataset *ds = open_ok(ctx, path, "ab12");
    ck_assert_int_eq(an_dataset_documents(ds), N);
    ck_assert_int_eq(an_dataset_tokens(ds), total);
    ck_assert_int_eq(an_dataset_loss_tokens(ds), loss);
    const an_dataset_info *got = an_dataset_get_info(ds);
    ck_assert_str_eq(got->tokenizer_sha256, "ab12");
    ck_assert_str_eq(got->format, "auto");
    ck_assert_str_eq(got->chat_template, "deepseek");
    ck_assert_str_eq(got->reasoning, "keep_last");
    ck_assert(got->max_bad_fraction == 0.05);
    ck_assert(got->bos_id == 1 && got->eos_id == 2 && got->pad_id == -1 && got->vocab_size == 151665);
    ck_assert(got->records == 41 && got->bad_records == 1);
    ck_assert_int_eq(got->n_sources, 2);
    for (int i = 0; i < 2; i++) {
        ck_assert_str_eq(got->sources[i].path, sources[i].path);
        ck_assert_str_eq(got->sources[i].formats, sources[i].formats);
        ck_assert(got->sources[i].records == sources[i].records && got->sources[i].bad_records == sources[i].bad_records &&
                  got->sources[i].size == sources[i].size && got->sources[i].mtime_ns == sources[i].mtime_ns);
    }
    int32_t *rid = malloc((size_t)lens[17] * sizeof *rid);
    uint8_t *rmask = malloc((size_t)lens[17]);
    for (int i = 0; i < N; i++) {
        ck_assert_int_eq(an_dataset_document_length(ds, i), lens[i]);
        ck_assert_int_eq(an_dataset_read(ctx, ds, i, 0, lens[i], rid, rmask), AN_OK);
        ck_assert(memcmp(rid, ids + offsets[i], (size_t)lens[i] * sizeof *rid) == 0);
        ck_assert(memcmp(rmask, mask + offsets[i], (size_t)lens[i]) == 0);
    }
    ck_assert_int_eq(an_dataset_read(ctx, ds, 17, 1000000, 50000, rid, NULL), AN_OK);  /* a middle range */
    ck_assert(memcmp(rid, ids + offsets[17] + 1000000, 50000 * sizeof *rid) == 0);
    an_status st = an_dataset_read(ctx, ds, 3, 1, lens[3], rid, rmask);
    EXPECT_INPUT_ERROR(ctx, st, "past the end", "d.h5", "of document 3");
    st = an_dataset_read(ctx, ds, N, 0, 1, rid, rmask);
    EXPECT_INPUT_ERROR(ctx, st, "no such document", "document 40 of 40");
    an_dataset_free(ds);

    /* A new commit replaces the file whole; an aborted writer leaves the old one. */
    ck_assert_int_eq(an_dataset_writer_open(ctx, path, &w), AN_OK);
    ck_assert_int_eq(an_dataset_writer_add(ctx, w, ids, mask, 3), AN_OK);
    an_dataset_writer_abort(w);
    ck_assert(!exists(tmp_path));
    ds = open_ok(ctx, path, NULL);
    ck_assert_int_eq(an_dataset_documents(ds), N);
    an_dataset_free(ds);
    ck_assert_int_eq(an_dataset_writer_open(ctx, path, &w), AN_OK);
    ck_assert_int_eq(an_dataset_writer_add(ctx, w, ids, mask, 3), AN_OK);
    an_dataset_info bare = {.bos_id = -1, .eos_id = -1, .pad_id = -1};
    ck_assert_int_eq(an_dataset_writer_commit(ctx, w, &bare), AN_OK);
    ds = open_ok(ctx, path, NULL);
    ck_assert_int_eq(an_dataset_documents(ds), 1);
    ck_assert_int_eq(an_dataset_get_info(ds)->n_sources, 0);
    an_dataset_free(ds);

    char nowhere[600];
    snprintf(nowhere, sizeof nowhere, "%s/missing/d.h5", dir);
    st = an_dataset_writer_open(ctx, nowhere, &w);
    EXPECT_INPUT_ERROR(ctx, st, "no directory", "missing/d.h5.tmp", "cannot create");
    free(ids), free(mask), free(rid), free(rmask);
    remove_tree(dir);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_fingerprint_is_the_sha256_of_tokenizer_json_and_another_tokenizer_is_refused) {
    an_ctx *ctx = test_ctx(1);
    char dir[256], path[512], sha[65], qwen[65], llama[65];
    make_tmpdir(dir, sizeof dir);
    ck_assert_int_eq(an_data_tokenizer_fingerprint(ctx, QWEN2, qwen), AN_OK);
    ck_assert_int_eq(an_sha256_file(ctx, QWEN2 "/tokenizer.json", sha), AN_OK);
    ck_assert_str_eq(qwen, sha);
    ck_assert_int_eq(an_data_tokenizer_fingerprint(ctx, LLAMA3, llama), AN_OK);
    ck_assert_str_ne(qwen, llama);
    an_status st = an_data_tokenizer_fingerprint(ctx, dir, sha);
    EXPECT_INPUT_ERROR(ctx, st, "no tokenizer.json", "tokenizer.json", "cannot open");

    an_dataset_writer *w;
    join(path, sizeof path, dir, "d.h5");
    ck_assert_int_eq(an_dataset_writer_open(ctx, path, &w), AN_OK);
    ck_assert_int_eq(an_dataset_writer_add(ctx, w, (int32_t[]){1, 2}, (uint8_t[]){0, 1}, 2), AN_OK);
    an_dataset_info info = {.bos_id = -1, .eos_id = -1, .pad_id = -1};
    memcpy(info.tokenizer_sha256, qwen, 65);
    ck_assert_int_eq(an_dataset_writer_commit(ctx, w, &info), AN_OK);
    an_dataset *ds = open_ok(ctx, path, qwen);
    an_dataset_free(ds);
    ds = NULL;
    st = an_dataset_open(ctx, path, llama, &ds);
    EXPECT_INPUT_ERROR(ctx, st, "other tokenizer", "d.h5", "another tokenizer", qwen, llama, "prepare the dataset again");
    ck_assert_ptr_null(ds);
    remove_tree(dir);
    test_ctx_free(ctx);
}
END_TEST

/* Edits a committed dataset with the HDF5 API. */
static void rewrite_i64_attr(const char *path, const char *name, int64_t value) {
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    ck_assert(f >= 0);
    hid_t a = H5Aopen(f, name, H5P_DEFAULT);
    ck_assert(a >= 0 && H5Awrite(a, H5T_NATIVE_INT64, &value) >= 0);
    H5Aclose(a), H5Fclose(f);
}

static void write_small(an_ctx *ctx, const char *path) {
    an_dataset_writer *w;
    ck_assert_int_eq(an_dataset_writer_open(ctx, path, &w), AN_OK);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(an_dataset_writer_add(ctx, w, (int32_t[]){1, 2, 3}, (uint8_t[]){0, 1, 1}, 3 - i), AN_OK);
    an_dataset_info info = {.bos_id = -1, .eos_id = -1, .pad_id = -1};
    ck_assert_int_eq(an_dataset_writer_commit(ctx, w, &info), AN_OK);
}

START_TEST(test_broken_datasets_are_refused_naming_the_problem) {
    an_ctx *ctx = test_ctx(1);
    char dir[256], path[512];
    make_tmpdir(dir, sizeof dir);
    an_dataset *ds = NULL;
    write_text(join(path, sizeof path, dir, "text.h5"), "{\"text\": \"not hdf5\"}\n");
    an_status st = an_dataset_open(ctx, path, NULL, &ds);
    EXPECT_INPUT_ERROR(ctx, st, "not HDF5", "text.h5", "cannot open as HDF5");

    join(path, sizeof path, dir, "other.h5");  /* HDF5, but not ours */
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    H5Fclose(f);
    st = an_dataset_open(ctx, path, NULL, &ds);
    EXPECT_INPUT_ERROR(ctx, st, "foreign HDF5", "other.h5", "not a tokenized dataset", "anneal data prepare");

    join(path, sizeof path, dir, "v.h5");
    write_small(ctx, path);
    rewrite_i64_attr(path, "anneal_dataset_version", 9);
    st = an_dataset_open(ctx, path, NULL, &ds);
    EXPECT_INPUT_ERROR(ctx, st, "version", "v.h5", "version 9", "prepare the data again");

    join(path, sizeof path, dir, "n.h5");
    write_small(ctx, path);
    rewrite_i64_attr(path, "documents", 4);
    st = an_dataset_open(ctx, path, NULL, &ds);
    EXPECT_INPUT_ERROR(ctx, st, "documents", "n.h5", "documents = 4", "holds 3");

    join(path, sizeof path, dir, "o.h5");
    write_small(ctx, path);
    f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t d = H5Dopen2(f, "doc_offsets", H5P_DEFAULT);
    int64_t bad[4] = {0, 3, 3, 6};
    ck_assert(H5Dwrite(d, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, bad) >= 0);
    H5Dclose(d), H5Fclose(f);
    st = an_dataset_open(ctx, path, NULL, &ds);
    EXPECT_INPUT_ERROR(ctx, st, "offsets", "o.h5", "doc_offsets[2] = 3 is not above doc_offsets[1] = 3");

    join(path, sizeof path, dir, "m.h5");
    write_small(ctx, path);
    f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    ck_assert(H5Ldelete(f, "loss_mask", H5P_DEFAULT) >= 0);
    H5Fclose(f);
    st = an_dataset_open(ctx, path, NULL, &ds);
    EXPECT_INPUT_ERROR(ctx, st, "missing mask", "m.h5", "'/loss_mask' is missing");

    join(path, sizeof path, dir, "a.h5");
    write_small(ctx, path);
    f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    ck_assert(H5Adelete(f, "tokenizer_sha256") >= 0);
    H5Fclose(f);
    st = an_dataset_open(ctx, path, NULL, &ds);
    EXPECT_INPUT_ERROR(ctx, st, "missing attribute", "a.h5", "attribute 'tokenizer_sha256' is missing");
    ck_assert_ptr_null(ds);
    remove_tree(dir);
    test_ctx_free(ctx);
}
END_TEST

/* ---- prepare ---- */

static const char *const text_jsonl = "{\"text\": \"Hello world, 中文.\"}\n{\"text\": \"second\\n\\nparagraphs\"}\n";
static const char *const pc_jsonl = "{\"prompt\": \"Q: 2+2 =\", \"completion\": \" 4\"}\n";
static const char *const chat_jsonl =
    "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": \"Hi\"}, "
    "{\"role\": \"assistant\", \"content\": \"<think>\\nGreet.\\n</think>\\n\\nHello!\"}]}\n"
    "{\"messages\": [{\"role\": \"user\", \"content\": \"2?\"}, {\"role\": \"assistant\", \"content\": \"two\"}]}\n";
static const char *const plain_txt = "A plain document.\n\nIt stays one document.\n";

typedef struct {
    an_data_encoder enc;
    an_data_tokens all;
    int64_t *ends;  /* document ends in all */
    int n;
} expected_docs;

static an_status expect_record(an_ctx *ctx, void *user, const an_data_record *rec, char *bad, size_t size) {
    expected_docs *e = user;
    AN_TRY(an_data_encode(ctx, &e->enc, rec, &e->all));
    e->ends = realloc(e->ends, (size_t)(e->n + 1) * sizeof *e->ends);
    e->ends[e->n++] = (int64_t)e->all.ids.n;
    return AN_OK;
}

/* The dataset holds exactly the encoding of every record of inputs, in order. */
static void assert_dataset_is_encoding(an_ctx *ctx, an_tokenizer *tok, an_dataset *ds, const char *const *inputs,
                                       int n) {
    expected_docs e = {0};
    ck_assert_int_eq(an_data_encoder_init(ctx, tok, AN_CHAT_REASONING_KEEP_LAST, &e.enc), AN_OK);
    an_data_read_stats stats = {0};
    for (int i = 0; i < n; i++)
        ck_assert_int_eq(an_data_read(ctx, inputs[i], AN_RECIPE_FORMAT_AUTO, &stats, expect_record, &e), AN_OK);
    ck_assert_int_eq(an_dataset_documents(ds), e.n);
    ck_assert_int_eq(an_dataset_tokens(ds), (int64_t)e.all.ids.n);
    int32_t ids[4096];
    uint8_t mask[4096];
    for (int d = 0; d < e.n; d++) {
        int64_t start = d ? e.ends[d - 1] : 0, len = e.ends[d] - start;
        ck_assert_int_le(len, 4096);
        ck_assert_int_eq(an_dataset_document_length(ds, d), len);
        ck_assert_int_eq(an_dataset_read(ctx, ds, d, 0, len, ids, mask), AN_OK);
        ck_assert(memcmp(ids, e.all.ids.ids + start, (size_t)len * sizeof *ids) == 0);
        ck_assert(memcmp(mask, e.all.mask + start, (size_t)len) == 0);
    }
    an_data_tokens_free(&e.all);
    free(e.ends);
}

START_TEST(test_prepare_tokenizes_every_format_into_the_dataset) {
    an_ctx *ctx = test_ctx(1);
    char dir[256], paths[4][512], out[512], sha[65];
    make_tmpdir(dir, sizeof dir);
    write_text(join(paths[0], sizeof paths[0], dir, "t.jsonl"), text_jsonl);
    write_text(join(paths[1], sizeof paths[1], dir, "p.jsonl"), pc_jsonl);
    write_text(join(paths[2], sizeof paths[2], dir, "c.jsonl"), chat_jsonl);
    write_text(join(paths[3], sizeof paths[3], dir, "b.txt"), plain_txt);
    const char *inputs[4] = {paths[0], paths[1], paths[2], paths[3]};
    an_tokenizer *tok;
    ck_assert_int_eq(an_tokenizer_load(ctx, QWEN2, &tok), AN_OK);
    ck_assert_int_eq(an_data_tokenizer_fingerprint(ctx, QWEN2, sha), AN_OK);
    an_dataset_prepare_opts o = {.inputs = inputs, .n_inputs = 4, .format = AN_RECIPE_FORMAT_AUTO,
                                 .tokenizer_sha256 = sha};
    an_dataset_prepare_report rep;
    join(out, sizeof out, dir, "out.h5");
    ck_assert_msg(an_dataset_prepare(ctx, tok, &o, out, &rep) == AN_OK, "%s", an_error_message(ctx));
    ck_assert_int_eq(rep.read.records, 6);
    ck_assert_int_eq(rep.read.bad, 0);
    ck_assert_int_eq(rep.documents, 6);
    ck_assert_str_eq(rep.chat_template, "deepseek");
    an_dataset *ds = open_ok(ctx, out, sha);
    assert_dataset_is_encoding(ctx, tok, ds, inputs, 4);
    ck_assert_int_eq(an_dataset_tokens(ds), rep.tokens);
    ck_assert_int_eq(an_dataset_loss_tokens(ds), rep.loss_tokens);
    const an_dataset_info *info = an_dataset_get_info(ds);
    ck_assert_str_eq(info->tokenizer_sha256, sha);
    ck_assert_str_eq(info->format, "auto");
    ck_assert_str_eq(info->chat_template, "deepseek");
    ck_assert_int_eq(info->eos_id, an_tokenizer_eos_id(tok));
    ck_assert_int_eq(info->pad_id, an_tokenizer_pad_id(tok));
    ck_assert_int_eq(info->n_sources, 4);
    static const char *const formats[] = {"text", "prompt_completion", "chat", "text"};
    static const int64_t records[] = {2, 1, 2, 1};
    for (int i = 0; i < 4; i++) {
        ck_assert_str_eq(info->sources[i].path, inputs[i]);
        ck_assert_str_eq(info->sources[i].formats, formats[i]);
        ck_assert_int_eq(info->sources[i].records, records[i]);
        ck_assert_int_gt(info->sources[i].size, 0);
    }
    /* document 0 is bos + text + eos with the loss everywhere but the bos */
    int32_t ids[64];
    uint8_t mask[64];
    int64_t len = an_dataset_document_length(ds, 0);
    ck_assert_int_eq(an_dataset_read(ctx, ds, 0, 0, len, ids, mask), AN_OK);
    ck_assert_int_eq(ids[0], an_tokenizer_bos_id(tok));
    ck_assert_int_eq(ids[len - 1], an_tokenizer_eos_id(tok));
    ck_assert_int_eq(mask[0], 0);
    for (int64_t k = 1; k < len; k++) ck_assert_int_eq(mask[k], 1);
    an_dataset_free(ds);

    /* an explicit format: lines of another format are bad records */
    o.format = AN_RECIPE_FORMAT_CHAT;
    o.max_bad_fraction = 0.9;
    o.n_inputs = 3;
    ck_assert_int_eq(an_dataset_prepare(ctx, tok, &o, out, &rep), AN_OK);
    ck_assert_int_eq(rep.read.records, 5);
    ck_assert_int_eq(rep.read.bad, 3);
    ck_assert_int_eq(rep.documents, 2);
    an_tokenizer_free(tok);
    remove_tree(dir);
    test_ctx_free(ctx);
}
END_TEST

/* All ids, masks and lengths of a dataset, as bytes (malloc'd). */
static unsigned char *dataset_bytes(an_ctx *ctx, an_dataset *ds, size_t *size) {
    size_t n = (size_t)an_dataset_tokens(ds), docs = (size_t)an_dataset_documents(ds);
    unsigned char *out = malloc(n * 5 + docs * 8 + 1);
    size_t at = 0;
    for (size_t d = 0; d < docs; d++) {
        int64_t len = an_dataset_document_length(ds, (int64_t)d);
        memcpy(out + at, &len, 8);
        at += 8;
        ck_assert_int_eq(an_dataset_read(ctx, ds, (int64_t)d, 0, len, (int32_t *)(void *)(out + at), NULL), AN_OK);
        at += (size_t)len * 4;
        ck_assert_int_eq(an_dataset_read(ctx, ds, (int64_t)d, 0, len, NULL, out + at), AN_OK);
        at += (size_t)len;
    }
    *size = at;
    return out;
}

START_TEST(test_tar_tar_gz_and_zip_shards_give_the_dataset_of_the_loose_files) {
    an_ctx *ctx = test_ctx(1);
    char dir[256], paths[3][512], out[512];
    make_tmpdir(dir, sizeof dir);
    static const char *const names[] = {"part/t.jsonl", "part/c.jsonl", "b.txt"};
    const char *bodies[] = {text_jsonl, chat_jsonl, plain_txt};
    for (int i = 0; i < 3; i++) {
        join(paths[i], sizeof paths[i], dir, strrchr(names[i], '/') ? strrchr(names[i], '/') + 1 : names[i]);
        write_text(paths[i], bodies[i]);
    }
    const char *loose[3] = {paths[0], paths[1], paths[2]};
    an_tokenizer *tok;
    ck_assert_int_eq(an_tokenizer_load(ctx, QWEN2, &tok), AN_OK);
    an_dataset_prepare_opts o = {.inputs = loose, .n_inputs = 3};
    join(out, sizeof out, dir, "loose.h5");
    ck_assert_int_eq(an_dataset_prepare(ctx, tok, &o, out, NULL), AN_OK);
    an_dataset *ds = open_ok(ctx, out, NULL);
    size_t want_size;
    unsigned char *want = dataset_bytes(ctx, ds, &want_size);
    ck_assert_int_eq(an_dataset_documents(ds), 5);
    an_dataset_free(ds);
    static const struct { shard_kind kind; const char *name; } shards[] = {
        {SHARD_TAR, "s.tar"}, {SHARD_TAR_GZ, "s.tar.gz"}, {SHARD_ZIP, "s.zip"}};
    for (int k = 0; k < 3; k++) {
        char shard[512];
        join(shard, sizeof shard, dir, shards[k].name);
        make_shard(shard, shards[k].kind, names, bodies, 3);
        const char *in[1] = {shard};
        o = (an_dataset_prepare_opts){.inputs = in, .n_inputs = 1};
        join(out, sizeof out, dir, "shard.h5");
        ck_assert_msg(an_dataset_prepare(ctx, tok, &o, out, NULL) == AN_OK, "%s", an_error_message(ctx));
        ds = open_ok(ctx, out, NULL);
        size_t size;
        unsigned char *got = dataset_bytes(ctx, ds, &size);
        ck_assert_uint_eq(size, want_size);
        ck_assert_msg(memcmp(got, want, size) == 0, "%s differs from the loose files", shards[k].name);
        ck_assert_str_eq(an_dataset_get_info(ds)->sources[0].formats, "text+chat");
        ck_assert_int_eq(an_dataset_get_info(ds)->sources[0].records, 5);
        free(got);
        an_dataset_free(ds);
    }
    free(want);
    an_tokenizer_free(tok);
    remove_tree(dir);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_prepare_fails_above_max_bad_fraction_and_writes_nothing) {
    an_ctx *ctx = test_ctx(1);
    char dir[256], path[512], out[512], tmp_path[600];
    make_tmpdir(dir, sizeof dir);
    write_text(join(path, sizeof path, dir, "mixed.jsonl"),
               "{\"text\": \"one\"}\n{\"text\": \"two\"}\n{\"txt\": \"typo\"}\n{\"text\": \"four\"}\n");
    const char *in[1] = {path};
    an_tokenizer *tok;
    ck_assert_int_eq(an_tokenizer_load(ctx, QWEN2, &tok), AN_OK);
    join(out, sizeof out, dir, "out.h5");
    snprintf(tmp_path, sizeof tmp_path, "%s.tmp", out);
    an_dataset_prepare_opts o = {.inputs = in, .n_inputs = 1, .max_bad_fraction = 0.2};
    an_status st = an_dataset_prepare(ctx, tok, &o, out, NULL);
    EXPECT_INPUT_ERROR(ctx, st, "1 of 4 bad", "1 of 4 records are bad", "max_bad_fraction = 0.2",
                       "mixed.jsonl:3: no 'messages', 'prompt'/'completion' or 'text' field");
    ck_assert(!exists(out) && !exists(tmp_path));
    o.max_bad_fraction = 0.25;
    an_dataset_prepare_report rep;
    ck_assert_int_eq(an_dataset_prepare(ctx, tok, &o, out, &rep), AN_OK);
    ck_assert_int_eq(rep.read.bad, 1);
    ck_assert_int_eq(rep.read.n_shown, 1);
    an_dataset *ds = open_ok(ctx, out, NULL);
    ck_assert_int_eq(an_dataset_documents(ds), 3);
    ck_assert_int_eq(an_dataset_get_info(ds)->bad_records, 1);
    ck_assert_int_eq(an_dataset_get_info(ds)->records, 4);
    an_dataset_free(ds);
    an_tokenizer_free(tok);
    remove_tree(dir);
    test_ctx_free(ctx);
}
END_TEST

/* ---- an_data_open ---- */

static an_recipe recipe(an_ctx *ctx, const char *model, const char *dir, const char *train, const char *extra) {
    char yaml[4096];
    snprintf(yaml, sizeof yaml,
             "model: {path: %s}\noutput_dir: %s/run\nseed: 3\n"
             "data: {train: [%s], seq_len: 32%s}\ntraining: {micro_batch: 2}\n",
             model, dir, train, extra);
    an_recipe r;
    ck_assert_msg(an_recipe_parse(ctx, "r.yaml", yaml, strlen(yaml), 0, NULL, &r) == AN_OK, "%s",
                  an_error_message(ctx));
    return r;
}

START_TEST(test_data_open_prepares_once_splits_and_reuses) {
    an_ctx *ctx = test_ctx(1);
    char dir[256], a[512], b[512], list[2400];
    make_tmpdir(dir, sizeof dir);
    char many[4096] = "";
    for (int i = 0; i < 40; i++) {
        char line[128];
        snprintf(line, sizeof line, "{\"text\": \"document number %d, with some words\"}\n", i);
        strcat(many, line);
    }
    write_text(join(a, sizeof a, dir, "a.jsonl"), many);
    write_text(join(b, sizeof b, dir, "b.jsonl"), chat_jsonl);
    snprintf(list, sizeof list, "%s, %s", a, b);
    an_recipe r = recipe(ctx, QWEN2, dir, list, ", validation_fraction: 0.1");
    an_data *d;
    ck_assert_msg(an_data_open(ctx, &r, NULL, &d) == AN_OK, "%s", an_error_message(ctx));
    ck_assert(d->train_prepared);
    ck_assert_int_eq(d->train_report.documents, 42);
    ck_assert_ptr_null(d->validation_set);
    ck_assert_ptr_nonnull(d->validation);
    ck_assert_int_eq(an_data_loader_documents(d->validation), 4);
    ck_assert_int_eq(an_data_loader_documents(d->train), 38);
    an_data_batch batch;
    ck_assert_int_eq(an_data_loader_next(ctx, d->train, &batch), AN_OK);
    ck_assert(batch.ids->shape[0] == 2 && batch.ids->shape[1] == 32);
    an_data_batch_release(&batch);
    an_data_free(d);

    char cached[600];
    snprintf(cached, sizeof cached, "%s/run/data/train.h5", dir);
    ck_assert(exists(cached));
    ck_assert_int_eq(an_data_open(ctx, &r, NULL, &d), AN_OK);
    ck_assert(!d->train_prepared);  /* unchanged inputs: reused */
    an_data_free(d);
    write_text(b, "{\"text\": \"changed\"}\n");  /* a different size */
    ck_assert_int_eq(an_data_open(ctx, &r, NULL, &d), AN_OK);
    ck_assert(d->train_prepared);
    ck_assert_int_eq(an_dataset_documents(d->train_set), 41);
    an_data_free(d);
    an_recipe_free(&r);

    /* The prepared file given directly, with a validation file beside it. */
    char extra[700];
    snprintf(extra, sizeof extra, ", validation: %s", b);
    r = recipe(ctx, QWEN2, dir, cached, extra);
    ck_assert_msg(an_data_open(ctx, &r, NULL, &d) == AN_OK, "%s", an_error_message(ctx));
    ck_assert(!d->train_prepared && d->validation_prepared);
    ck_assert_int_eq(an_data_loader_documents(d->train), 41);
    ck_assert_int_eq(an_data_loader_documents(d->validation), 1);
    an_data_free(d);
    an_recipe_free(&r);

    /* ... but not with a model whose tokenizer is another */
    r = recipe(ctx, LLAMA3, dir, cached, "");
    an_status st = an_data_open(ctx, &r, NULL, &d);
    EXPECT_INPUT_ERROR(ctx, st, "other model", "train.h5", "another tokenizer");
    an_recipe_free(&r);
    snprintf(list, sizeof list, "%s, %s", cached, a);
    r = recipe(ctx, QWEN2, dir, list, "");
    st = an_data_open(ctx, &r, NULL, &d);
    EXPECT_INPUT_ERROR(ctx, st, "mixed inputs", "data.train", "one prepared .h5 dataset or raw data files");
    an_recipe_free(&r);
    remove_tree(dir);
    test_ctx_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("data_dataset");
    TCase *tc = tcase_create("dataset");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_written_documents_and_attributes_read_back);
    tcase_add_test(tc, test_fingerprint_is_the_sha256_of_tokenizer_json_and_another_tokenizer_is_refused);
    tcase_add_test(tc, test_broken_datasets_are_refused_naming_the_problem);
    tcase_add_test(tc, test_prepare_tokenizes_every_format_into_the_dataset);
    tcase_add_test(tc, test_tar_tar_gz_and_zip_shards_give_the_dataset_of_the_loose_files);
    tcase_add_test(tc, test_prepare_fails_above_max_bad_fraction_and_writes_nothing);
    tcase_add_test(tc, test_data_open_prepares_once_splits_and_reuses);
    suite_add_tcase(s, tc);
    return test_run(s);
}
