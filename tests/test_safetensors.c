/* test_safetensors.c — the safetensors reader, directory loader and writer against files written by
 * the Python safetensors library (tests/fixtures/make_safetensors.py and its expected.json): every
 * dtype's values, sharded and single-file model directories, the writer byte for byte against the
 * library's layout, and bit-exact round trips of every dtype. Broken input is in
 * test_safetensors_errors.c. */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt/safetensors.h"
#include "support/files.h"  /* read_bytes, make_tmpdir, remove_tree, EXPECT_INPUT_ERROR, header_of */
#include "support/test_util.h"

#define FIXTURES ANNEAL_SOURCE_DIR "/tests/fixtures/safetensors"


/* ANNEAL_SAFETENSORS_KEEP=DIR keeps the files the round-trip tests write, for
 * tests/fixtures/check_safetensors_roundtrip.py; else a new temp dir. True when kept. */
static bool output_dir(char *dir, size_t size) {
    const char *keep = getenv("ANNEAL_SAFETENSORS_KEEP");
    if (keep && keep[0]) {
        snprintf(dir, size, "%s", keep);
        return true;
    }
    make_tmpdir(dir, size);
    return false;
}

/* ---- expected.json ---- */

static json_t *expected_files(void) {
    json_error_t err;
    json_t *root = json_load_file(FIXTURES "/expected.json", 0, &err);
    ck_assert_msg(root != NULL, "expected.json: %s", err.text);
    json_t *files = json_incref(json_object_get(root, "files"));
    json_decref(root);
    ck_assert_ptr_nonnull(files);
    return files;
}

static unsigned char *hex_decode(const char *hex, size_t *n) {
    size_t len = strlen(hex) / 2;
    unsigned char *p = malloc(len + 1);
    for (size_t i = 0; i < len; i++) {
        unsigned v;
        ck_assert(sscanf(hex + 2 * i, "%2x", &v) == 1);
        p[i] = (unsigned char)v;
    }
    *n = len;
    return p;
}

static bool dtype_from_name(const char *name, an_dtype *out) {
    static const struct { const char *name; an_dtype dtype; } map[] = {
        {"F32", AN_F32}, {"F64", AN_F64}, {"BF16", AN_BF16}, {"F16", AN_F16},
        {"I32", AN_I32}, {"I64", AN_I64}, {"U8", AN_U8},
    };
    for (size_t i = 0; i < sizeof map / sizeof *map; i++)
        if (!strcmp(map[i].name, name)) {
            *out = map[i].dtype;
            return true;
        }
    return false;
}

/* Element i of raw little-endian data of a dtype anneal has no an_dtype for, against its decimal. */
static void check_raw_integer(const char *dtype, const unsigned char *data, size_t i, const char *want,
                              const char *what) {
    if (!strcmp(dtype, "U64") || !strcmp(dtype, "U32") || !strcmp(dtype, "U16")) {
        size_t w = dtype[1] == '6' ? 8 : dtype[1] == '3' ? 4 : 2;
        unsigned long long v = 0;
        for (size_t b = w; b-- > 0;) v = v << 8 | data[i * w + b];
        ck_assert_msg(v == strtoull(want, NULL, 10), "%s[%zu]: %llu, expected %s", what, i, v, want);
    } else if (!strcmp(dtype, "I16") || !strcmp(dtype, "I8") || !strcmp(dtype, "BOOL")) {
        long long v = !strcmp(dtype, "I16") ? (int16_t)(data[2 * i] | data[2 * i + 1] << 8)
                      : !strcmp(dtype, "I8") ? (int8_t)data[i] : data[i];
        ck_assert_msg(v == strtoll(want, NULL, 10), "%s[%zu]: %lld, expected %s", what, i, v, want);
    } else {
        ck_abort_msg("%s: no decoder for %s", what, dtype);
    }
}

/* Every tensor of `st` (from file `rel`) against expected.json's record of it. */
static void check_against_expected(an_ctx *ctx, const an_safetensors *st, json_t *file, bool check_count) {
    json_t *tensors = json_object_get(file, "tensors");
    if (check_count) ck_assert_int_eq(an_safetensors_count(st), (int64_t)json_object_size(tensors));
    const char *name;
    json_t *want;
    json_object_foreach(tensors, name, want) {
        const an_safetensors_tensor *t = an_safetensors_find(st, name);
        ck_assert_msg(t != NULL, "tensor '%s' not found", name);
        ck_assert_str_eq(t->name, name);
        ck_assert_str_eq(t->dtype_name, json_string_value(json_object_get(want, "dtype")));
        json_t *shape = json_object_get(want, "shape");
        ck_assert_int_eq(t->ndim, (int)json_array_size(shape));
        int64_t numel = 1;
        for (int d = 0; d < t->ndim; d++) {
            ck_assert_int_eq(t->shape[d], json_integer_value(json_array_get(shape, (size_t)d)));
            numel *= t->shape[d];
        }
        ck_assert_int_eq(t->numel, numel);
        size_t nbytes;
        unsigned char *bytes = hex_decode(json_string_value(json_object_get(want, "hex")), &nbytes);
        ck_assert_msg(t->nbytes == nbytes && memcmp(t->data, bytes, nbytes) == 0, "%s: raw bytes differ", name);
        json_t *values = json_object_get(want, "values");
        an_dtype dtype;
        bool ours = dtype_from_name(t->dtype_name, &dtype);
        ck_assert_int_eq(t->has_dtype, ours);
        if (ours) ck_assert_int_eq(t->dtype, dtype);
        if (values && ours && t->ndim <= AN_MAX_DIMS) {
            /* f64 holds every value of every an_dtype exactly, except i64 beyond 2^53: load those as i64. */
            an_dtype as = dtype == AN_I64 ? AN_I64 : AN_F64;
            an_tensor *x = an_safetensors_load(ctx, st, name, as, AN_CPU);
            ck_assert_msg(x != NULL, "%s: %s", name, an_error_message(ctx));
            ck_assert_int_eq(an_tensor_numel(x), (int64_t)json_array_size(values));
            for (size_t i = 0; i < json_array_size(values); i++) {
                const char *s = json_string_value(json_array_get(values, i));
                if (as == AN_I64) {
                    long long got = ((const int64_t *)an_tensor_data(x))[i];
                    ck_assert_msg(got == strtoll(s, NULL, 10), "%s[%zu]: %lld, expected %s", name, i, got, s);
                    continue;
                }
                double got = ((const double *)an_tensor_data(x))[i], w = strtod(s, NULL);
                ck_assert_msg(isnan(w) ? isnan(got) : got == w && signbit(got) == signbit(w),
                              "%s[%zu]: %.17g, expected %s", name, i, got, s);
            }
            an_tensor_release(x);
        } else if (values && !ours && strcmp(t->dtype_name, "F32") != 0) {
            for (size_t i = 0; i < json_array_size(values); i++)
                check_raw_integer(t->dtype_name, t->data, i, json_string_value(json_array_get(values, i)), name);
        }
        free(bytes);
    }
    json_t *meta = json_object_get(file, "metadata");
    ck_assert_int_eq(an_safetensors_metadata_count(st), (int)json_object_size(meta));
    const char *key;
    json_t *value;
    json_object_foreach(meta, key, value) {
        const char *got = an_safetensors_metadata(st, key);
        ck_assert_msg(got && !strcmp(got, json_string_value(value)), "metadata %s: '%s', expected '%s'", key,
                      got ? got : "(absent)", json_string_value(value));
    }
}

/* ---- reading what Python wrote ---- */

START_TEST(test_every_fixture_reads_back_as_python_wrote_it) {
    an_ctx *ctx = test_ctx(1);
    json_t *files = expected_files();
    const char *rel;
    json_t *file;
    json_object_foreach(files, rel, file) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", FIXTURES, rel);
        an_safetensors *st = NULL;
        ck_assert_msg(an_safetensors_open(ctx, path, &st) == AN_OK, "%s", an_error_message(ctx));
        check_against_expected(ctx, st, file, true);
        for (int64_t i = 1; i < an_safetensors_count(st); i++) /* listed in byte order of name */
            ck_assert(strcmp(an_safetensors_name(st, i - 1), an_safetensors_name(st, i)) < 0);
        ck_assert_ptr_null(an_safetensors_find(st, "no.such.tensor"));
        ck_assert_ptr_null(an_safetensors_metadata(st, "no such key"));
        an_safetensors_close(st);
    }
    /* The generator recorded its library versions. */
    json_t *meta = json_object_get(json_object_get(files, "all_dtypes.safetensors"), "metadata");
    ck_assert_ptr_nonnull(json_object_get(meta, "safetensors"));
    ck_assert_ptr_nonnull(json_object_get(meta, "numpy"));
    json_decref(files);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_misaligned_data_loads_the_same_values) {
    /* The same bytes one past an aligned address: every tensor's data is misaligned. */
    an_ctx *ctx = test_ctx(2);
    size_t n;
    unsigned char *bytes = read_bytes(FIXTURES "/all_dtypes.safetensors", &n);
    unsigned char *shifted = malloc(n + 8);
    memcpy(shifted + 1, bytes, n);
    an_safetensors *st = NULL;
    ck_assert_int_eq(an_safetensors_open_buffer(ctx, "shifted", shifted + 1, n, &st), AN_OK);
    ck_assert_uint_eq((uintptr_t)an_safetensors_find(st, "f64.vector")->data % 8, 1);
    json_t *files = expected_files();
    check_against_expected(ctx, st, json_object_get(files, "all_dtypes.safetensors"), true);
    json_decref(files);
    an_safetensors_close(st);
    free(shifted);
    free(bytes);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_load_converts_bf16_and_f16_to_f32_and_back) {
    an_ctx *ctx = test_ctx(3);
    an_safetensors *st = NULL;
    ck_assert_int_eq(an_safetensors_open(ctx, FIXTURES "/all_dtypes.safetensors", &st), AN_OK);
    const char *names[] = {"bf16.values", "f16.values", "i32.ids", "u8.bytes", "f64.vector"};
    for (size_t k = 0; k < sizeof names / sizeof *names; k++) {
        const an_safetensors_tensor *t = an_safetensors_find(st, names[k]);
        an_tensor *f32 = an_safetensors_load(ctx, st, names[k], AN_F32, AN_CPU);
        ck_assert_msg(f32 != NULL, "%s", an_error_message(ctx));
        ck_assert_int_eq(f32->ndim, t->ndim);
        for (int64_t i = 0; i < t->numel; i++) {
            /* reference: the raw element widened by the one converter, then rounded to f32 */
            float want = (float)an_dtype_load(t->data, t->dtype, (size_t)i);
            float got = ((const float *)an_tensor_data(f32))[i];
            ck_assert_msg(isnan(want) ? isnan(got) : memcmp(&got, &want, 4) == 0, "%s[%lld]", names[k], (long long)i);
        }
        an_tensor_release(f32);
    }
    /* f32 -> bf16 rounds to nearest even, as an_f32_to_bf16 does. */
    const an_safetensors_tensor *m = an_safetensors_find(st, "f32.matrix");
    an_tensor *bf = an_safetensors_load(ctx, st, "f32.matrix", AN_BF16, AN_CPU);
    ck_assert_ptr_nonnull(bf);
    for (int64_t i = 0; i < m->numel; i++) {
        float v;
        memcpy(&v, (const char *)m->data + 4 * i, 4);
        ck_assert_uint_eq(((const uint16_t *)an_tensor_data(bf))[i], an_f32_to_bf16(v));
    }
    an_tensor_release(bf);
    an_safetensors_close(st);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_unsupported_dtypes_are_listed_and_loading_them_names_tensor_and_dtype) {
    an_ctx *ctx = test_ctx(4);
    const char *path = FIXTURES "/all_dtypes.safetensors";
    an_safetensors *st = NULL;
    ck_assert_int_eq(an_safetensors_open(ctx, path, &st), AN_OK);
    const char *names[] = {"i8.raw", "bool.mask", "f8_e4m3.raw", "u16.raw", "c64.raw", "f4.raw"};
    const char *dtypes[] = {"I8", "BOOL", "F8_E4M3", "U16", "C64", "F4"};
    for (int k = 0; k < 6; k++) {
        const an_safetensors_tensor *t = an_safetensors_find(st, names[k]);
        ck_assert_ptr_nonnull(t);
        ck_assert(!t->has_dtype);
        ck_assert_str_eq(t->dtype_name, dtypes[k]);
        an_tensor *x = an_safetensors_load(ctx, st, names[k], AN_F32, AN_CPU);
        ck_assert_ptr_null(x);
        char quoted[64];
        snprintf(quoted, sizeof quoted, "'%s'", names[k]);
        EXPECT_INPUT_ERROR(ctx, an_error_status(ctx), names[k], path, quoted, dtypes[k]);
    }
    ck_assert_int_eq(an_safetensors_find(st, "f4.raw")->nbytes, 3); /* 6 four-bit values */
    ck_assert_ptr_null(an_safetensors_load(ctx, st, "f32.rank5", AN_F32, AN_CPU));
    EXPECT_INPUT_ERROR(ctx, an_error_status(ctx), "rank 5", path, "'f32.rank5'", "5 dims");
    ck_assert_ptr_null(an_safetensors_load(ctx, st, "model.missing", AN_F32, AN_CPU));
    EXPECT_INPUT_ERROR(ctx, an_error_status(ctx), "missing", path, "no tensor named 'model.missing'");
    an_safetensors_close(st);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_load_into_requires_the_exact_shape) {
    an_ctx *ctx = test_ctx(5);
    const char *path = FIXTURES "/all_dtypes.safetensors";
    an_safetensors *st = NULL;
    ck_assert_int_eq(an_safetensors_open(ctx, path, &st), AN_OK);
    an_tensor *good = an_tensor_zeros(ctx, AN_F64, AN_CPU, 2, (int64_t[]){2, 3});
    ck_assert_int_eq(an_safetensors_load_into(ctx, st, "i32.ids", good), AN_ERR_INPUT); /* (2, 2) */
    EXPECT_INPUT_ERROR(ctx, AN_ERR_INPUT, "i32", path, "'i32.ids'", "shape [2, 2], expected [2, 3]");
    ck_assert_int_eq(an_safetensors_load_into(ctx, st, "f32.matrix", good), AN_OK);
    ck_assert(isinf(an_tensor_get(good, 1)) && an_tensor_get(good, 1) > 0);
    an_tensor *flat = an_tensor_zeros(ctx, AN_F32, AN_CPU, 1, (int64_t[]){6});
    ck_assert_int_eq(an_safetensors_load_into(ctx, st, "f32.matrix", flat), AN_ERR_INPUT);
    EXPECT_INPUT_ERROR(ctx, AN_ERR_INPUT, "flat", "'f32.matrix'", "shape [2, 3], expected [6]");
    an_tensor_release(good);
    an_tensor_release(flat);
    an_safetensors_close(st);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_load_onto_the_gpu_matches_the_cpu) {
    an_ctx *ctx = test_gpu_ctx(6, "test_load_onto_the_gpu_matches_the_cpu");
    if (!ctx) return;
    an_safetensors *st = NULL;
    ck_assert_int_eq(an_safetensors_open(ctx, FIXTURES "/all_dtypes.safetensors", &st), AN_OK);
    const char *names[] = {"bf16.values", "f16.values", "f32.matrix", "i64.ids"};
    an_dtype wants[] = {AN_BF16, AN_F32, AN_BF16, AN_I64};
    for (int k = 0; k < 4; k++) {
        an_tensor *cpu = an_safetensors_load(ctx, st, names[k], wants[k], AN_CPU);
        an_tensor *gpu = an_safetensors_load(ctx, st, names[k], wants[k], AN_CUDA);
        ck_assert_msg(cpu && gpu, "%s: %s", names[k], an_error_message(ctx));
        an_tensor *back = an_tensor_to(ctx, gpu, wants[k], AN_CPU);
        ck_assert(memcmp(an_tensor_data(back), an_tensor_data(cpu), an_tensor_nbytes(cpu)) == 0);
        an_tensor_release(cpu);
        an_tensor_release(gpu);
        an_tensor_release(back);
    }
    an_safetensors_close(st);
    test_ctx_free(ctx);
}
END_TEST

/* ---- model directories ---- */

START_TEST(test_sharded_dir_routes_each_tensor_to_its_shard) {
    an_ctx *ctx = test_ctx(7);
    an_safetensors *st = NULL;
    ck_assert_msg(an_safetensors_dir_open(ctx, FIXTURES "/sharded", &st) == AN_OK, "%s", an_error_message(ctx));
    json_error_t err;
    json_t *index = json_load_file(FIXTURES "/sharded/model.safetensors.index.json", 0, &err);
    json_t *weight_map = json_object_get(index, "weight_map");
    ck_assert_int_eq(an_safetensors_count(st), (int64_t)json_object_size(weight_map));
    const char *name;
    json_t *shard;
    json_object_foreach(weight_map, name, shard) {
        const an_safetensors_tensor *t = an_safetensors_find(st, name);
        ck_assert_msg(t != NULL, "%s", name);
        const char *base = strrchr(t->file, '/') + 1;
        ck_assert_str_eq(base, json_string_value(shard));
    }
    json_t *files = expected_files();
    check_against_expected(ctx, st, json_object_get(files, "sharded/model-00001-of-00002.safetensors"), false);
    check_against_expected(ctx, st, json_object_get(files, "sharded/model-00002-of-00002.safetensors"), false);
    ck_assert_str_eq(an_safetensors_metadata(st, "format"), "pt");
    an_tensor *w = an_safetensors_load(ctx, st, "lm_head.weight", AN_F32, AN_CPU); /* routed to shard 2 */
    ck_assert_msg(w != NULL && w->shape[0] == 8 && w->shape[1] == 4, "%s", an_error_message(ctx));
    an_tensor_release(w);
    json_decref(files);
    json_decref(index);
    an_safetensors_close(st);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_dir_without_index_opens_model_safetensors) {
    an_ctx *ctx = test_ctx(8);
    an_safetensors *st = NULL;
    ck_assert_msg(an_safetensors_dir_open(ctx, FIXTURES "/single", &st) == AN_OK, "%s", an_error_message(ctx));
    json_t *files = expected_files();
    check_against_expected(ctx, st, json_object_get(files, "single/model.safetensors"), true);
    ck_assert_ptr_nonnull(strstr(an_safetensors_at(st, 0)->file, "single/model.safetensors"));
    json_decref(files);
    an_safetensors_close(st);
    test_ctx_free(ctx);
}
END_TEST

/* ---- writing ---- */

/* The layout fixture's tensors, rebuilt from expected.json's raw bytes (new references). */
static int layout_tensors(an_ctx *ctx, json_t *file, const char **names, an_tensor **tensors) {
    const char *name;
    json_t *want;
    int n = 0;
    json_object_foreach(json_object_get(file, "tensors"), name, want) {
        an_dtype dtype;
        ck_assert(dtype_from_name(json_string_value(json_object_get(want, "dtype")), &dtype));
        json_t *shape = json_object_get(want, "shape");
        int64_t dims[AN_MAX_DIMS];
        for (size_t d = 0; d < json_array_size(shape); d++) dims[d] = json_integer_value(json_array_get(shape, d));
        size_t nbytes;
        unsigned char *bytes = hex_decode(json_string_value(json_object_get(want, "hex")), &nbytes);
        names[n] = name;
        tensors[n] = an_tensor_from_data(ctx, dtype, (int)json_array_size(shape), dims, bytes);
        ck_assert_uint_eq(an_tensor_nbytes(tensors[n]), nbytes);
        free(bytes);
        n++;
    }
    return n;
}

START_TEST(test_write_matches_the_python_library_byte_for_byte) {
    an_ctx *ctx = test_ctx(10);
    json_t *files = expected_files();
    const char *names[32];
    an_tensor *tensors[32];
    int n = layout_tensors(ctx, json_object_get(files, "layout.safetensors"), names, tensors);
    an_safetensors *py = NULL;
    ck_assert_int_eq(an_safetensors_open(ctx, FIXTURES "/layout.safetensors", &py), AN_OK);
    ck_assert_int_eq(an_safetensors_metadata_count(py), 1);
    an_safetensors_meta meta;
    an_safetensors_metadata_at(py, 0, &meta.key, &meta.value);
    char dir[512], path[1024];
    make_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/ours.safetensors", dir);
    ck_assert_msg(an_safetensors_write(ctx, path, n, names, tensors, 1, &meta) == AN_OK, "%s", an_error_message(ctx));
    size_t n_ours, n_theirs;
    unsigned char *ours = read_bytes(path, &n_ours), *theirs = read_bytes(FIXTURES "/layout.safetensors", &n_theirs);
    ck_assert_uint_eq(n_ours, n_theirs);
    for (size_t i = 0; i < n_ours; i++)
        ck_assert_msg(ours[i] == theirs[i], "byte %zu: 0x%02x, the Python library wrote 0x%02x", i, ours[i], theirs[i]);
    free(ours);
    free(theirs);
    ck_assert(!exists(strcat(path, ".tmp")));
    for (int i = 0; i < n; i++) an_tensor_release(tensors[i]);
    an_safetensors_close(py);
    json_decref(files);
    remove_tree(dir);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_write_raw_copies_every_dtype_as_the_python_library_lays_it_out) {
    /* all_dtypes has four metadata keys in the library's hash order; everything else must match. */
    an_ctx *ctx = test_ctx(11);
    an_safetensors *py = NULL;
    ck_assert_int_eq(an_safetensors_open(ctx, FIXTURES "/all_dtypes.safetensors", &py), AN_OK);
    int n = (int)an_safetensors_count(py), n_meta = an_safetensors_metadata_count(py);
    an_safetensors_tensor *raw = malloc((size_t)n * sizeof *raw);
    for (int i = 0; i < n; i++) raw[n - 1 - i] = *an_safetensors_at(py, i); /* reversed: the writer sorts */
    an_safetensors_meta meta[8];
    for (int i = 0; i < n_meta; i++) an_safetensors_metadata_at(py, i, &meta[i].key, &meta[i].value);
    char dir[512], path[1024];
    make_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/copy.safetensors", dir);
    ck_assert_msg(an_safetensors_write_raw(ctx, path, n, raw, n_meta, meta) == AN_OK, "%s", an_error_message(ctx));

    size_t n_ours, n_theirs, h_ours, h_theirs;
    unsigned char *ours = read_bytes(path, &n_ours), *theirs = read_bytes(FIXTURES "/all_dtypes.safetensors", &n_theirs);
    const char *jo = header_of(ours, &h_ours), *jt = header_of(theirs, &h_theirs);
    ck_assert_uint_eq(n_ours, n_theirs);
    ck_assert_uint_eq(h_ours, h_theirs);
    ck_assert(memcmp(ours + 8 + h_ours, theirs + 8 + h_theirs, n_ours - 8 - h_ours) == 0); /* data section */
    const char *to = strchr(jo, '}'), *tt = strchr(jt, '}');  /* end of "__metadata__" (no '}' inside) */
    ck_assert(to - jo == tt - jt && memcmp(to, tt, h_ours - (size_t)(to - jo)) == 0);   /* tensors and padding */
    free(ours);
    free(theirs);

    an_safetensors *back = NULL;
    ck_assert_int_eq(an_safetensors_open(ctx, path, &back), AN_OK);
    json_t *files = expected_files();
    check_against_expected(ctx, back, json_object_get(files, "all_dtypes.safetensors"), true);
    json_decref(files);
    an_safetensors_close(back);
    an_safetensors_close(py);
    free(raw);
    remove_tree(dir);
    test_ctx_free(ctx);
}
END_TEST

/* Rank of a dtype in the reference implementation's Dtype enum (the writer's order, highest first). */
static int dtype_rank(const char *name) {
    static const char *order[] = {"BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0",
                                  "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "C64", "F64", "I64", "U64"};
    for (int i = 0; i < 20; i++)
        if (!strcmp(order[i], name)) return i;
    ck_abort_msg("unknown dtype %s", name);
    return -1;
}

/* The layout rules of the Python library, checked on any file: 8-aligned header of compact JSON
 * padded with spaces, "__metadata__" first, tensors in (dtype rank desc, name) order with offsets
 * following each other, each tensor's data aligned to its element size within the file. */
static void check_layout_rules(an_ctx *ctx, const char *path) {
    size_t size, hlen;
    unsigned char *bytes = read_bytes(path, &size);
    const char *json = header_of(bytes, &hlen);
    ck_assert_uint_eq((8 + hlen) % 8, 0);
    size_t end = hlen;
    while (end > 0 && json[end - 1] == ' ') end--;
    ck_assert_msg(hlen - end < 8 && json[end - 1] == '}', "padding of %zu", hlen - end);
    ck_assert_ptr_null(memchr(json, '\n', end)); /* compact: newlines only inside strings, escaped */
    ck_assert_ptr_null(strstr(json, "\": "));
    json_error_t err;
    json_t *root = json_loadb(json, hlen, 0, &err);
    ck_assert_ptr_nonnull(root);
    if (json_object_get(root, "__metadata__")) ck_assert(!strncmp(json, "{\"__metadata__\"", 15));
    an_safetensors *st = NULL;
    ck_assert_int_eq(an_safetensors_open(ctx, path, &st), AN_OK);
    /* In file order: by data offset. */
    int64_t n = an_safetensors_count(st);
    const an_safetensors_tensor **order = malloc((size_t)(n ? n : 1) * sizeof *order);
    for (int64_t i = 0; i < n; i++) order[i] = an_safetensors_at(st, i);
    for (int64_t i = 1; i < n; i++) /* insertion sort by (data pointer, nbytes) */
        for (int64_t j = i; j > 0 && ((const char *)order[j]->data < (const char *)order[j - 1]->data ||
                                      (order[j]->data == order[j - 1]->data && order[j]->nbytes < order[j - 1]->nbytes));
             j--) {
            const an_safetensors_tensor *tmp = order[j];
            order[j] = order[j - 1];
            order[j - 1] = tmp;
        }
    const char *prev_at = json;
    for (int64_t i = 0; i < n; i++) {
        const an_safetensors_tensor *t = order[i];
        size_t offset = (size_t)((const unsigned char *)t->data - bytes);
        if (t->has_dtype && t->nbytes) ck_assert_uint_eq(offset % an_dtype_size(t->dtype), 0);
        if (i > 0) {
            const an_safetensors_tensor *p = order[i - 1];
            int rp = dtype_rank(p->dtype_name), rt = dtype_rank(t->dtype_name);
            ck_assert_msg(rp > rt || (rp == rt && strcmp(p->name, t->name) < 0), "'%s' before '%s'", p->name, t->name);
        }
        /* and the header lists them in the same order (names here need no JSON escapes) */
        char key[256];
        snprintf(key, sizeof key, "\"%s\":{\"dtype\":", t->name);
        const char *at = strstr(json, key);
        ck_assert_msg(at != NULL && at > prev_at, "'%s' is not listed in data order", t->name);
        prev_at = at;
    }
    free(order);
    an_safetensors_close(st);
    json_decref(root);
    free(bytes);
}

START_TEST(test_round_trip_of_every_dtype_is_bit_exact) {
    an_ctx *ctx = test_ctx(12);
    const an_dtype dtypes[] = {AN_F32, AN_F64, AN_BF16, AN_F16, AN_I32, AN_I64, AN_U8};
    const int64_t shapes[][4] = {{0}, {1}, {7}, {0, 3}, {3, 5}, {2, 3, 1, 7}};
    const int ndims[] = {0, 1, 1, 2, 2, 4};
    enum { N = 7 * 6 };
    an_tensor *tensors[N];
    char names_buf[N][48];
    const char *names[N];
    int n = 0;
    for (int d = 0; d < 7; d++)
        for (int s = 0; s < 6; s++) {
            an_tensor *t = an_tensor_new(ctx, dtypes[d], AN_CPU, ndims[s], shapes[s]);
            /* random bits: every pattern, NaN payloads and subnormals included, must survive */
            for (size_t b = 0; b < an_tensor_nbytes(t); b++)
                ((unsigned char *)an_tensor_data(t))[b] = (unsigned char)an_rng_u64(&ctx->rng);
            snprintf(names_buf[n], sizeof names_buf[n], "layers.%d.%s.w%d", (d * 5 + s * 3) % 11,
                     an_dtype_name(dtypes[d]), s);
            names[n] = names_buf[n];
            tensors[n++] = t;
        }
    an_safetensors_meta meta[] = {{"format", "pt"}, {"quote\"d\n", "caf\xc3\xa9 \\ \x01"}, {"a", ""}};
    char dir[512], path[1024];
    bool kept = output_dir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/anneal_round_trip.safetensors", dir);
    ck_assert_msg(an_safetensors_write(ctx, path, n, names, tensors, 3, meta) == AN_OK, "%s", an_error_message(ctx));
    check_layout_rules(ctx, path);
    an_safetensors *st = NULL;
    ck_assert_int_eq(an_safetensors_open(ctx, path, &st), AN_OK);
    ck_assert_int_eq(an_safetensors_count(st), n);
    for (int i = 0; i < n; i++) {
        const an_safetensors_tensor *t = an_safetensors_find(st, names[i]);
        ck_assert_ptr_nonnull(t);
        ck_assert(t->has_dtype && t->dtype == tensors[i]->dtype && t->ndim == tensors[i]->ndim);
        for (int k = 0; k < t->ndim; k++) ck_assert_int_eq(t->shape[k], tensors[i]->shape[k]);
        ck_assert(t->nbytes == an_tensor_nbytes(tensors[i]) &&
                  memcmp(t->data, an_tensor_data(tensors[i]), t->nbytes) == 0);
        an_tensor *x = an_safetensors_load(ctx, st, names[i], t->dtype, AN_CPU);
        ck_assert(memcmp(an_tensor_data(x), an_tensor_data(tensors[i]), t->nbytes) == 0);
        an_tensor_release(x);
    }
    ck_assert_int_eq(an_safetensors_metadata_count(st), 3);
    for (int i = 0; i < 3; i++) ck_assert_str_eq(an_safetensors_metadata(st, meta[i].key), meta[i].value);
    const char *key, *value;
    an_safetensors_metadata_at(st, 0, &key, &value);
    ck_assert_str_eq(key, "a"); /* byte order of keys */
    an_safetensors_close(st);
    for (int i = 0; i < n; i++) an_tensor_release(tensors[i]);

    /* No tensors at all is a valid file too. */
    snprintf(path, sizeof path, "%s/anneal_empty.safetensors", dir);
    ck_assert_int_eq(an_safetensors_write(ctx, path, 0, NULL, NULL, 0, NULL), AN_OK);
    ck_assert_int_eq(an_safetensors_open(ctx, path, &st), AN_OK);
    ck_assert_int_eq(an_safetensors_count(st), 0);
    an_safetensors_close(st);
    if (!kept) remove_tree(dir);
    test_ctx_free(ctx);
}
END_TEST

/* The values the Python check (tests/fixtures/check_safetensors_roundtrip.py) expects in tensor k:
 * element i is ((i * 7 + 3 * k) % 19) - 9, halved for float dtypes, plus 9 for u8. */
static double pattern(int k, int64_t i, an_dtype dtype) {
    double v = (double)((i * 7 + 3 * k) % 19) - 9;
    return dtype == AN_U8 ? v + 9 : an_dtype_is_float(dtype) ? v / 2 : v;
}

START_TEST(test_pattern_file_for_the_python_check_reads_back) {
    an_ctx *ctx = test_ctx(13);
    const an_dtype dtypes[] = {AN_F32, AN_F64, AN_BF16, AN_F16, AN_I32, AN_I64, AN_U8};
    const int64_t shape[] = {3, 5};
    an_tensor *tensors[7];
    char names_buf[7][32];
    const char *names[7];
    for (int k = 0; k < 7; k++) {
        tensors[k] = an_tensor_new(ctx, dtypes[k], AN_CPU, 2, shape);
        for (int64_t i = 0; i < 15; i++) an_tensor_set(tensors[k], i, pattern(k, i, dtypes[k]));
        snprintf(names_buf[k], sizeof names_buf[k], "pattern.%d.%s", k, an_dtype_name(dtypes[k]));
        names[k] = names_buf[k];
    }
    char dir[512], path[1024];
    bool kept = output_dir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/anneal_written.safetensors", dir);
    an_safetensors_meta meta[] = {{"format", "pt"}};
    ck_assert_int_eq(an_safetensors_write(ctx, path, 7, names, tensors, 1, meta), AN_OK);
    check_layout_rules(ctx, path);
    an_safetensors *st = NULL;
    ck_assert_int_eq(an_safetensors_open(ctx, path, &st), AN_OK);
    for (int k = 0; k < 7; k++) {
        an_tensor *x = an_safetensors_load(ctx, st, names[k], AN_F64, AN_CPU);
        for (int64_t i = 0; i < 15; i++) ck_assert(an_tensor_get(x, i) == pattern(k, i, dtypes[k]));
        an_tensor_release(x);
        an_tensor_release(tensors[k]);
    }
    an_safetensors_close(st);
    if (!kept) remove_tree(dir);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_write_from_the_gpu_matches_the_cpu) {
    an_ctx *ctx = test_gpu_ctx(14, "test_write_from_the_gpu_matches_the_cpu");
    if (!ctx) return;
    an_tensor *cpu = test_uniform(ctx, AN_BF16, 2, (int64_t[]){5, 3}, -2, 2, false);
    an_tensor *gpu = an_tensor_to(ctx, cpu, AN_BF16, AN_CUDA);
    an_tensor *gpu32 = an_tensor_to(ctx, cpu, AN_F32, AN_CUDA);
    char dir[512], path[1024];
    make_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/gpu.safetensors", dir);
    ck_assert_int_eq(an_safetensors_write(ctx, path, 3, (const char *[]){"cpu", "gpu", "gpu32"},
                                          (an_tensor *[]){cpu, gpu, gpu32}, 0, NULL), AN_OK);
    an_safetensors *st = NULL;
    ck_assert_int_eq(an_safetensors_open(ctx, path, &st), AN_OK);
    ck_assert(memcmp(an_safetensors_find(st, "cpu")->data, an_safetensors_find(st, "gpu")->data, 30) == 0);
    an_tensor *back = an_safetensors_load(ctx, st, "gpu32", AN_BF16, AN_CPU);
    ck_assert(memcmp(an_tensor_data(back), an_tensor_data(cpu), 30) == 0);
    an_tensor_release(back);
    an_safetensors_close(st);
    an_tensor_release(cpu);
    an_tensor_release(gpu);
    an_tensor_release(gpu32);
    remove_tree(dir);
    test_ctx_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("safetensors");
    TCase *read = tcase_create("read");
    tcase_add_test(read, test_every_fixture_reads_back_as_python_wrote_it);
    tcase_add_test(read, test_misaligned_data_loads_the_same_values);
    tcase_add_test(read, test_load_converts_bf16_and_f16_to_f32_and_back);
    tcase_add_test(read, test_unsupported_dtypes_are_listed_and_loading_them_names_tensor_and_dtype);
    tcase_add_test(read, test_load_into_requires_the_exact_shape);
    tcase_add_test(read, test_load_onto_the_gpu_matches_the_cpu);
    suite_add_tcase(s, read);
    TCase *dir = tcase_create("dir");
    tcase_add_test(dir, test_sharded_dir_routes_each_tensor_to_its_shard);
    tcase_add_test(dir, test_dir_without_index_opens_model_safetensors);
    suite_add_tcase(s, dir);
    TCase *write = tcase_create("write");
    tcase_add_test(write, test_write_matches_the_python_library_byte_for_byte);
    tcase_add_test(write, test_write_raw_copies_every_dtype_as_the_python_library_lays_it_out);
    tcase_add_test(write, test_round_trip_of_every_dtype_is_bit_exact);
    tcase_add_test(write, test_pattern_file_for_the_python_check_reads_back);
    tcase_add_test(write, test_write_from_the_gpu_matches_the_cpu);
    suite_add_tcase(s, write);
    return test_run(s);
}
