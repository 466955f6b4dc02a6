/* fuzz_tokenizer.c — libFuzzer target for the tokenizer. The first input byte picks what the rest is:
 *   0: a tokenizer.json (loaded from memory; when it loads, some text is encoded and decoded with it)
 *   1: a tokenizer_config.json next to the qwen2 fixture's tokenizer.json
 *   2-4: text encoded by the qwen2 / llama3 / gpt2 fixture (with and without special tokens), whose
 *        ids are decoded again; invalid UTF-8 must be refused, never crash
 *   5: ids (4 bytes each) decoded by the llama3 fixture
 * Every call must end with no error left unchecked and nothing leaked (ASan checks the latter).
 *
 * Build by hand (until the ANNEAL_FUZZ CMake option exists), from the repository root:
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Isrc -I. -D_POSIX_C_SOURCE=200809L \
 *     -DANNEAL_SOURCE_DIR=\"$PWD\" tests/fuzz/fuzz_tokenizer.c $(find src/data src/autograd -name '*.c') \
 *     kernels/cuda_stub.c -ljansson -lpcre2-8 -lopenblas -lm -o fuzz_tokenizer
 * Seed it with the fixtures: for each tokenizer.json, a file holding a 0 byte followed by it. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/tokenizer.h"

#ifndef ANNEAL_SOURCE_DIR
#define ANNEAL_SOURCE_DIR "."
#endif
#define FIXTURES ANNEAL_SOURCE_DIR "/tests/fixtures/tokenizer/"

static an_ctx *ctx;
static an_tokenizer *fixture[3];
static char *qwen2_json;
static size_t qwen2_json_len;

static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *data = malloc((size_t)n + 1);
    if (data && fread(data, 1, (size_t)n, f) != (size_t)n) {
        free(data);
        data = NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return data;
}

static void setup(void) {
    ctx = an_ctx_new(1);
    const char *names[3] = {"qwen2", "llama3", "gpt2"};
    for (int k = 0; k < 3; k++) {
        char dir[1024];
        snprintf(dir, sizeof dir, FIXTURES "%s", names[k]);
        if (an_tokenizer_load(ctx, dir, &fixture[k]) != AN_OK) {
            fprintf(stderr, "fuzz_tokenizer: %s\n", an_error_message(ctx));
            abort();
        }
    }
    qwen2_json = slurp(FIXTURES "qwen2/tokenizer.json", &qwen2_json_len);
    if (!qwen2_json) abort();
}

/* Encodes text with tok, checks the ids, decodes them; the status must be OK or a recorded error. */
static void round_trip(an_tokenizer *tok, const char *text, size_t len, bool add_special) {
    int32_t *ids = NULL;
    size_t n = 0;
    an_status st = an_tokenizer_encode(ctx, tok, text, len, add_special, &ids, &n);
    if (st != AN_OK) {
        if (st != AN_ERR_INPUT || !an_error_message(ctx)[0]) abort(); /* only bad UTF-8 may fail */
        an_error_clear(ctx);
        return;
    }
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= an_tokenizer_vocab_size(tok)) abort();
    char *out = NULL;
    size_t out_len;
    if (an_tokenizer_decode(ctx, tok, ids, n, false, &out, &out_len) != AN_OK || strlen(out) > out_len) abort();
    free(out);
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!ctx) setup();
    if (size < 1) return 0;
    const char *rest = (const char *)data + 1;
    size_t n = size - 1;
    an_tokenizer *tok = NULL;
    switch (data[0] % 6) {
    case 0:
        if (an_tokenizer_load_json(ctx, "tokenizer.json", rest, n, NULL, NULL, 0, &tok) == AN_OK) {
            const char *sample = "Hello, world! 你好 <think>x</think> 12345 \r\n\t ";
            round_trip(tok, sample, strlen(sample), true);
            round_trip(tok, rest, n > 512 ? 512 : n, false);
            an_tokenizer_free(tok);
        } else if (!an_error_message(ctx)[0] || tok) {
            abort();
        }
        break;
    case 1:
        if (an_tokenizer_load_json(ctx, "tokenizer.json", qwen2_json, qwen2_json_len, "tokenizer_config.json", rest, n,
                                   &tok) == AN_OK) {
            round_trip(tok, "<｜User｜>hi", strlen("<｜User｜>hi"), true);
            an_tokenizer_free(tok);
        }
        break;
    case 2:
    case 3:
    case 4:
        round_trip(fixture[data[0] % 6 - 2], rest, n, false);
        round_trip(fixture[data[0] % 6 - 2], rest, n, true);
        break;
    default: {
        size_t count = n / 4;
        int32_t *ids = malloc((count ? count : 1) * sizeof *ids);
        if (count) memcpy(ids, rest, count * sizeof *ids);
        char *out = NULL;
        size_t len;
        if (an_tokenizer_decode(ctx, fixture[1], ids, count, data[0] & 8, &out, &len) == AN_OK) free(out);
        free(ids);
        break;
    }
    }
    an_error_clear(ctx);
    return 0;
}
