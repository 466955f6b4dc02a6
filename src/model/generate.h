/* generate.h — batched text generation on the KV cache: greedy, temperature, top-k and top-p
 * sampling (in that order, as transformers applies them), eos ids, a per-token callback for
 * streaming and stop strings, and max new tokens. Draws come from ctx's RNG, so a seed repeats
 * a run exactly. Shared by `anneal generate`, evaluation and RL rollouts. */
#ifndef AN_MODEL_GENERATE_H
#define AN_MODEL_GENERATE_H

#include <stdbool.h>

#include "autograd/rng.h"
#include "model/model.h"

/* What an_generate did (filled when opts->stats is set). */
typedef struct {
    int64_t decode_steps;        /* forward passes after the prefill */
    int64_t graph_captures;      /* CUDA graphs captured (one per active batch size that ran twice) */
    int64_t graph_replays;       /* decode steps run as a replay of a captured graph */
    int64_t overlapped_steps;    /* replays queued before the host read the tokens they continue */
} an_generate_stats;

typedef struct {
    int64_t max_new_tokens;      /* per row */
    double temperature;          /* 0: greedy (argmax; ties to the lowest id) */
    int64_t top_k;               /* 0: off */
    double top_p;                /* 1: off */
    int64_t vocab_limit;         /* > 0: only ids below it are produced (the tokenizer's size when the
                                    embedding is padded beyond it); 0: the whole vocabulary */
    const int64_t *eos_ids;      /* a row stops after emitting one of these (it is kept in the output) */
    int n_eos_ids;
    /* Called for every new token in order of generation; returning true stops that row (stop
     * strings are checked here on the decoded text). May be NULL. */
    bool (*on_token)(void *user, int64_t row, int32_t token);
    void *user;
    bool eager;                  /* CUDA: run every decode step op by op, never as a CUDA graph (for
                                    comparison and debugging); the CPU is always eager */
    bool no_overlap;             /* CUDA: read each step's ids before queuing the next step (generate.c,
                                    "Overlap"; on by default, off only to measure what it gains) */
    an_generate_stats *stats;    /* filled when not NULL */
} an_generate_opts;

/* Greedy decoding with the model's eos ids and 128 new tokens. */
an_generate_opts an_generate_defaults(const an_model *model);

/* Continues n prompts (prompts[i] has prompt_lens[i] >= 1 ids). out[i] receives a malloc'ed array
 * of the new tokens (caller frees) and out_lens[i] its length. */
an_status an_generate(an_ctx *ctx, an_model *model, int64_t n, const int32_t *const *prompts, const int64_t *prompt_lens,
                      const an_generate_opts *opts, int32_t **out, int64_t *out_lens);

/* One token from logits (V) under opts' temperature/top-k/top-p, drawing one uniform from rng
 * when sampling. scratch holds 2 * V doubles. */
int32_t an_sample_token(const double *logits, int64_t vocab, const an_generate_opts *opts, an_rng *rng,
                        double *scratch);

/* The next token of every row of logits (B, V) on either device, under opts' temperature, top-k,
 * top-p and vocab_limit, into host tokens[B]. On the GPU the choice runs there (an_cuda_sample) and
 * only the B ids cross to the host; device_tokens, a (B) i32 tensor on the GPU, receives them
 * there too (the next step's input ids); it is unused (may be NULL) on the CPU. Either way row b
 * takes draw offset + b of ctx's RNG and the offset advances by B when sampling, so both devices
 * draw the same numbers and a seed repeats a run. */
an_status an_sample_rows(an_ctx *ctx, const an_tensor *logits, const an_generate_opts *opts, an_tensor *device_tokens,
                         int32_t *tokens);
/* The GPU half of an_sample_rows: queues the choice for logits (B, V) on the GPU into
 * device_tokens (B) i32 on the GPU and advances the draw offset, without waiting for it; the ids
 * reach the host by a copy the caller makes (generate.c overlaps it with the next decode step). */
an_status an_sample_rows_on_device(an_ctx *ctx, const an_tensor *logits, const an_generate_opts *opts,
                                   an_tensor *device_tokens);

#endif
