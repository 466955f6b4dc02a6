/* dataset.h — tokenized datasets in HDF5: every document's token ids and per-token loss mask, written
 * once by `anneal data prepare` (or by the trainer on first use) and read back by index.
 *
 * Layout (docs/formats.md, "Tokenized datasets"): /ids int32 (n_tokens), /loss_mask uint8 (n_tokens),
 * /doc_offsets int64 (n_documents + 1; document i is [doc_offsets[i], doc_offsets[i+1])), chunked and
 * deflate-compressed, and root attributes: the tokenizer fingerprint (SHA-256 of tokenizer.json), the
 * sources with their formats and record counts, the format asked for, the chat template, token ids.
 *
 * Rules: a dataset file appears whole or not at all (written as PATH.tmp, renamed over PATH). Opening
 * validates the layout and refuses a dataset made with another tokenizer. The reader keeps the
 * offsets in memory and reads token ranges on demand (HDF5 chunk cache). HDF5 prints nothing: its
 * automatic error printing is turned off by the functions here.
 * Ownership: an_dataset and an_dataset_writer own their strings and arrays; free / commit / abort them. */
#ifndef AN_DATA_DATASET_H
#define AN_DATA_DATASET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "autograd/ctx.h"     /* an_ctx, an_status */
#include "data/records.h"     /* an_data_read_stats */
#include "data/tokenizer.h"   /* an_tokenizer */
#include "data/chat.h"        /* an_chat_reasoning */
#include "recipe/recipe.h"    /* an_recipe_data_format */

#define AN_DATASET_VERSION 1

/* One input file of a dataset. */
typedef struct {
    char *path;           /* as given */
    char formats[64];     /* the formats its records were read as, "+"-joined ("chat", "text+chat") */
    int64_t records;      /* good + bad */
    int64_t bad_records;
    int64_t size;         /* bytes and modification time (ns since the epoch) when it was read: */
    int64_t mtime_ns;     /* a cached dataset is reused while its inputs are unchanged */
} an_dataset_source;

/* What a dataset records about how it was made (root attributes). */
typedef struct {
    char tokenizer_sha256[65];   /* hex; "" when not known */
    char format[24];             /* data.format asked for: auto, text, prompt_completion, chat */
    char chat_template[24];      /* deepseek, role_tags, or "" when no record was chat */
    char reasoning[24];          /* keep_last, strip, keep_all (chat.h) */
    double max_bad_fraction;
    int32_t bos_id, eos_id, pad_id;  /* -1 when the tokenizer has none */
    int32_t vocab_size;          /* one more than the largest id the tokenizer can give */
    int64_t records, bad_records;
    an_dataset_source *sources;  /* n_sources, owned */
    int n_sources;
} an_dataset_info;

/* ---- writing ---- */

typedef struct an_dataset_writer an_dataset_writer;

/* Starts PATH.tmp. */
an_status an_dataset_writer_open(an_ctx *ctx, const char *path, an_dataset_writer **out);
/* Appends one document of n >= 1 tokens: ids (n) and mask (n; 1 = a training target, 0 = context). */
an_status an_dataset_writer_add(an_ctx *ctx, an_dataset_writer *w, const int32_t *ids, const uint8_t *mask,
                                int64_t n);
/* Writes the attributes from info (borrowed), closes, syncs and renames PATH.tmp over PATH; frees w
 * either way (on failure PATH.tmp is removed and PATH is untouched). */
an_status an_dataset_writer_commit(an_ctx *ctx, an_dataset_writer *w, const an_dataset_info *info);
/* Removes PATH.tmp and frees w. */
void an_dataset_writer_abort(an_dataset_writer *w);

/* ---- preparing from raw files ---- */

typedef struct {
    const char *const *inputs;        /* n_inputs files (records.h says which kinds) */
    int n_inputs;
    an_recipe_data_format format;     /* AUTO decides per file */
    double max_bad_fraction;          /* in [0, 1) */
    an_chat_reasoning reasoning;      /* chat.h; AN_CHAT_REASONING_KEEP_LAST is the default */
    const char *tokenizer_sha256;     /* an_data_tokenizer_fingerprint of the model; NULL or "" for none */
} an_dataset_prepare_opts;

typedef struct {
    an_data_read_stats read;          /* records, bad records, the first bad ones named */
    int64_t documents, tokens, loss_tokens;
    char chat_template[24];           /* used for the chat records, or "" */
} an_dataset_prepare_report;

/* Reads every input, formats and tokenizes each record (chat.h), and writes the dataset to out_path
 * atomically. Fails (AN_ERR_INPUT, nothing written) when more than max_bad_fraction of the records
 * are bad, naming the first ones. report (may be NULL) receives the counts on success. */
an_status an_dataset_prepare(an_ctx *ctx, an_tokenizer *tok, const an_dataset_prepare_opts *opts,
                             const char *out_path, an_dataset_prepare_report *report);

/* ---- fingerprints ---- */

/* The tokenizer fingerprint of a model directory: the SHA-256 of model_dir/tokenizer.json's bytes, as
 * 64 lowercase hex digits + NUL. */
an_status an_data_tokenizer_fingerprint(an_ctx *ctx, const char *model_dir, char out[65]);

/* ---- reading ---- */

typedef struct an_dataset an_dataset;

/* Opens and validates the dataset at path. tokenizer_sha256 (NULL to skip the check): the model's
 * tokenizer fingerprint; a dataset made with another tokenizer is an AN_ERR_INPUT error naming both. */
an_status an_dataset_open(an_ctx *ctx, const char *path, const char *tokenizer_sha256, an_dataset **out);
void an_dataset_free(an_dataset *ds);

int64_t an_dataset_documents(const an_dataset *ds);
int64_t an_dataset_tokens(const an_dataset *ds);
int64_t an_dataset_loss_tokens(const an_dataset *ds);          /* mask ones */
int64_t an_dataset_document_length(const an_dataset *ds, int64_t doc);
const an_dataset_info *an_dataset_get_info(const an_dataset *ds);
const char *an_dataset_path(const an_dataset *ds);

/* Tokens [start, start + count) of document doc into ids (count) and mask (count; either may be NULL). */
an_status an_dataset_read(an_ctx *ctx, an_dataset *ds, int64_t doc, int64_t start, int64_t count, int32_t *ids,
                          uint8_t *mask);

/* Frees info's strings and arrays (not info itself). */
void an_dataset_info_free(an_dataset_info *info);

#endif
