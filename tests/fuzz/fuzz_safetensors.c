/* fuzz_safetensors.c — libFuzzer target for the safetensors reader: arbitrary bytes are written to a
 * file and opened with an_safetensors_open (and from memory with an_safetensors_open_buffer, which
 * must agree); a file that opens is walked completely: every tensor found by name, every loadable
 * tensor converted to f32, every metadata entry read. Any crash, sanitizer report or leak is a bug.
 *
 * Build: cmake -S . -B build-fuzz -DANNEAL_FUZZ=ON -DANNEAL_CUDA=OFF -DCMAKE_C_COMPILER=clang
 * Run:   build-fuzz/fuzz_safetensors -max_total_time=60 -dict=tests/fuzz/safetensors.dict CORPUS_DIR \
 *          tests/fixtures/safetensors */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ckpt/safetensors.h"

static char path[64];

/* Walks everything a successfully opened file offers. */
static void walk(an_ctx *ctx, const an_safetensors *st) {
    for (int64_t i = 0; i < an_safetensors_count(st); i++) {
        const an_safetensors_tensor *t = an_safetensors_at(st, i);
        if (an_safetensors_find(st, t->name) != t) abort(); /* names are unique and findable */
        volatile unsigned char sink = 0;
        for (size_t b = 0; b < t->nbytes; b++) sink ^= ((const unsigned char *)t->data)[b];
        (void)sink;
        if (t->nbytes > (1u << 20)) continue;
        an_tensor *x = an_safetensors_load(ctx, st, t->name, AN_F32, AN_CPU);
        if (x) an_tensor_release(x);
        else if (t->has_dtype && t->ndim <= AN_MAX_DIMS) abort(); /* a valid tensor must load */
        an_error_clear(ctx);
    }
    for (int i = 0; i < an_safetensors_metadata_count(st); i++) {
        const char *key, *value;
        an_safetensors_metadata_at(st, i, &key, &value);
        if (an_safetensors_metadata(st, key) != value) abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!path[0]) snprintf(path, sizeof path, "/tmp/fuzz_safetensors_%d.safetensors", (int)getpid());
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (size && fwrite(data, 1, size, f) != size) abort();
    fclose(f);

    an_ctx *ctx = an_ctx_new(0);
    an_safetensors *st = NULL, *mem = NULL;
    an_status from_file = an_safetensors_open(ctx, path, &st);
    if (from_file == AN_OK) walk(ctx, st);
    if (from_file != AN_OK && (an_error_status(ctx) != AN_ERR_INPUT || st != NULL)) abort();
    an_error_clear(ctx);
    an_status from_memory = an_safetensors_open_buffer(ctx, "fuzz", data, size, &mem);
    if (from_memory != from_file) abort();
    if (mem && an_safetensors_count(mem) != an_safetensors_count(st)) abort();
    an_safetensors_close(st);
    an_safetensors_close(mem);
    an_error_clear(ctx);
    if (ctx->live_tensors != 0) abort();
    an_ctx_free(ctx);
    unlink(path);
    return 0;
}
