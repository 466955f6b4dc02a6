/* generate.c — `anneal generate --model DIR --prompt TEXT [options]`: continues a prompt with the
 * KV-cached inference engine, streaming text to stdout as tokens arrive. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "data/chat.h"       /* an_chat_encode_prompt */
#include "data/tokenizer.h"
#include "model/generate.h"
#include "model/load.h"
#include "model/lora.h"

static const char usage[] =
    "usage: anneal generate --model DIR --prompt TEXT [options]\n"
    "  --adapter DIR         a PEFT LoRA adapter to apply\n"
    "  --max-new-tokens N    default 128\n"
    "  --temperature T       0 = greedy (default)\n"
    "  --top-k K             0 = off (default)\n"
    "  --top-p P             1 = off (default)\n"
    "  --seed S              sampling seed (default 0)\n"
    "  --stop TEXT           stop when the output contains TEXT (repeatable, up to 8)\n"
    "  --chat                format the prompt as one user turn with the model's chat template\n"
    "                        (DeepSeek-R1: ...<｜User｜>TEXT<｜Assistant｜><think>\\n) and the generation prompt\n"
    "  --system TEXT         a system message (with --chat)\n"
    "  --no-bos              do not prepend the tokenizer's bos token\n"
    "  --device cpu|cuda     where the model runs (default cpu)\n"
    "  --dtype D             float32 (default), bfloat16 or float16\n";

/* Streams decoded text and checks stop strings after each token. */
typedef struct {
    an_ctx *ctx;
    an_tokenizer *tok;
    int32_t *ids;          /* generated so far */
    size_t n, cap;
    size_t printed;        /* bytes of the decoded continuation already written */
    const char *stops[8];
    int n_stops;
    bool failed;
} stream;

static bool on_token(void *user, int64_t row, int32_t token) {
    stream *s = user;
    (void)row;
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 64;
        int32_t *ids = realloc(s->ids, cap * sizeof *ids);
        if (!ids) return s->failed = true;
        s->ids = ids;
        s->cap = cap;
    }
    s->ids[s->n++] = token;
    char *text = NULL;
    size_t len = 0;
    if (an_tokenizer_decode(s->ctx, s->tok, s->ids, s->n, true, &text, &len) != AN_OK) return s->failed = true;
    /* Hold back a trailing U+FFFD: it is usually a character whose remaining bytes are still to come. */
    size_t ready = len >= 3 && memcmp(text + len - 3, "\xEF\xBF\xBD", 3) == 0 ? len - 3 : len;
    bool stop = false;
    for (int i = 0; i < s->n_stops; i++) {
        char *at = strstr(text, s->stops[i]);
        if (at) {
            ready = (size_t)(at - text);
            stop = true;
        }
    }
    if (ready > s->printed) {
        fwrite(text + s->printed, 1, ready - s->printed, stdout);
        fflush(stdout);
        s->printed = ready;
    }
    free(text);
    return stop;
}

/* The prompt's ids: plain text, or one user turn (after an optional system message) through the
 * model's chat template with its generation prompt. */
static an_status encode_prompt(an_ctx *ctx, an_tokenizer *tok, const char *prompt, const char *system_text, bool chat,
                               bool bos, int32_t **ids, size_t *n) {
    if (!chat) {
        AN_CHECK(ctx, !system_text, AN_ERR_INPUT, "--system needs --chat");
        return an_tokenizer_encode(ctx, tok, prompt, strlen(prompt), bos, ids, n);
    }
    an_data_encoder enc;
    AN_TRY(an_data_encoder_init(ctx, tok, AN_CHAT_REASONING_KEEP_LAST, &enc));
    an_chat_message messages[2];
    int count = 0;
    if (system_text) messages[count++] = (an_chat_message){AN_CHAT_SYSTEM, system_text, strlen(system_text)};
    messages[count++] = (an_chat_message){AN_CHAT_USER, prompt, strlen(prompt)};
    return an_chat_encode_prompt(ctx, &enc, messages, count, ids, n);
}

int an_cli_generate(int argc, char **argv) {
    const char *model_dir = NULL, *adapter = NULL, *prompt = NULL, *system_text = NULL;
    bool chat = false;
    long long max_new = 128, top_k = 0, seed = 0;
    double temperature = 0, top_p = 1;
    bool bos = true;
    stream s = {0};
    an_device device = AN_CPU;
    an_dtype dtype = AN_F32;
    for (int i = 0; i < argc; i++) {
        int bad = 0;
        const char *v;
        char *end = "";
        int dev = an_cli_device_flags(argc, argv, &i, &device, &dtype);
        if (dev < 0) return 2;
        if (dev > 0) continue;
        if ((v = an_cli_flag(argc, argv, &i, "--model", &bad))) model_dir = v;
        else if ((v = an_cli_flag(argc, argv, &i, "--adapter", &bad))) adapter = v;
        else if ((v = an_cli_flag(argc, argv, &i, "--prompt", &bad))) prompt = v;
        else if ((v = an_cli_flag(argc, argv, &i, "--system", &bad))) system_text = v;
        else if (!bad && strcmp(argv[i], "--chat") == 0) chat = true;
        else if ((v = an_cli_flag(argc, argv, &i, "--max-new-tokens", &bad))) max_new = strtoll(v, &end, 10), bad = max_new < 0;
        else if ((v = an_cli_flag(argc, argv, &i, "--top-k", &bad))) top_k = strtoll(v, &end, 10), bad = top_k < 0;
        else if ((v = an_cli_flag(argc, argv, &i, "--seed", &bad))) seed = strtoll(v, &end, 10), bad = seed < 0;
        else if ((v = an_cli_flag(argc, argv, &i, "--temperature", &bad))) temperature = strtod(v, &end), bad = !(temperature >= 0);
        else if ((v = an_cli_flag(argc, argv, &i, "--top-p", &bad))) top_p = strtod(v, &end), bad = !(top_p > 0 && top_p <= 1);
        else if ((v = an_cli_flag(argc, argv, &i, "--stop", &bad))) {
            bad = s.n_stops == 8 || !*v;
            if (!bad) s.stops[s.n_stops++] = v;
        } else if (!bad && strcmp(argv[i], "--no-bos") == 0) bos = false;
        else if (!bad && strcmp(argv[i], "--help") == 0) {
            fputs(usage, stdout);
            return 0;
        } else bad = 1;
        if (bad || *end) {
            fprintf(stderr, "anneal generate: bad argument '%s'\n%s", argv[i], usage);
            return 2;
        }
    }
    if (!model_dir || !prompt) {
        fputs(usage, stderr);
        return 2;
    }
    an_ctx *ctx = an_ctx_new((uint64_t)seed);
    an_model *m = NULL;
    int32_t *ids = NULL, *out = NULL;
    size_t n = 0;
    int64_t out_len = 0;
    int rc = 0;
    s.ctx = ctx;
    if (an_cli_use_device(ctx, device) != AN_OK || an_model_load(ctx, model_dir, dtype, device, &m) != AN_OK || an_tokenizer_load(ctx, model_dir, &s.tok) != AN_OK ||
        (adapter && an_lora_load_peft(ctx, m, adapter) != AN_OK) ||
        encode_prompt(ctx, s.tok, prompt, system_text, chat, bos, &ids, &n) != AN_OK) {
        rc = an_cli_fail(ctx, "generate");
    }
    if (rc == 0 && n == 0) {
        fprintf(stderr, "anneal generate: the prompt encodes to no tokens\n");
        rc = 2;
    }
    if (rc == 0) {
        an_generate_opts o = an_generate_defaults(m);
        o.max_new_tokens = max_new;
        o.temperature = temperature;
        o.top_k = top_k;
        o.top_p = top_p;
        o.vocab_limit = an_tokenizer_vocab_size(s.tok);
        o.on_token = on_token;
        o.user = &s;
        const int32_t *prompts[1] = {ids};
        int64_t lens[1] = {(int64_t)n};
        if (an_generate(ctx, m, 1, prompts, lens, &o, &out, &out_len) != AN_OK || s.failed) rc = an_cli_fail(ctx, "generate");
        else putchar('\n');
    }
    free(ids), free(out), free(s.ids);
    an_tokenizer_free(s.tok);
    an_model_free(m);
    an_ctx_free(ctx);
    return rc;
}
