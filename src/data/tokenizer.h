/* tokenizer.h — Hugging Face `tokenizer.json` byte-level BPE tokenizers (the Qwen2 and Llama-3
 * families, DeepSeek-R1-Distill included): encode and decode equal the Python `tokenizers` library
 * token for token.
 *
 * Supported: model BPE (vocab, merges as "a b" strings or [a, b] pairs, ignore_merges); normalizer
 * null, NFC, or a Sequence of NFC; pre_tokenizer ByteLevel (add_prefix_space false), alone or last in
 * a Sequence after Split steps (Regex or String pattern, behavior Isolated, invert false); added tokens
 * with every option (special, normalized, single_word, lstrip, rstrip); decoder ByteLevel;
 * post_processor null, ByteLevel, TemplateProcessing or a Sequence of those. Anything else in the file
 * is an AN_ERR_INPUT error that names the file and the JSON path of the field.
 *
 * tokenizer_config.json (optional): bos_token, eos_token, pad_token (a string or {"content": ...})
 * give the ids an_tokenizer_bos_id & co. return; add_bos_token / add_eos_token, when present, decide
 * whether encoding with add_special prepends bos / appends eos, as transformers' Llama tokenizers do
 * (this replaces what tokenizer.json's TemplateProcessing says; without them the template decides).
 *
 * Ownership and threads: an_tokenizer owns everything it points to. Encoding caches the pieces it
 * has seen, so one tokenizer must not encode from two threads at once (load one per thread).
 * Outputs (ids, text) are malloc'd and belong to the caller (free()). On failure outputs are untouched. */
#ifndef AN_DATA_TOKENIZER_H
#define AN_DATA_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "autograd/ctx.h" /* an_ctx, an_status and the error macros */

typedef struct an_tokenizer an_tokenizer;

/* Loads model_dir/tokenizer.json and, when it exists, model_dir/tokenizer_config.json. */
an_status an_tokenizer_load(an_ctx *ctx, const char *model_dir, an_tokenizer **out);
/* The same from bytes in memory; name is the file name errors mention. config may be NULL. */
an_status an_tokenizer_load_json(an_ctx *ctx, const char *name, const char *json, size_t len,
                                 const char *config_name, const char *config, size_t config_len, an_tokenizer **out);
void an_tokenizer_free(an_tokenizer *tok);

/* Growable id buffer that an_tokenizer_encode_append appends to; {0} is empty; free(ids) when done. */
typedef struct {
    int32_t *ids;
    size_t n, cap;
} an_token_ids;

/* Encodes UTF-8 text[0..len) (AN_ERR_INPUT when it is not valid UTF-8). add_special: add what the
 * post-processor adds around a single sequence (the bos for both DeepSeek distills), like the
 * library's add_special_tokens. *ids (malloc'd, NULL when *n == 0) receives the ids. */
an_status an_tokenizer_encode(an_ctx *ctx, an_tokenizer *tok, const char *text, size_t len, bool add_special,
                              int32_t **ids, size_t *n);
/* Same, appending to out (for tokenizing many documents into one buffer). */
an_status an_tokenizer_encode_append(an_ctx *ctx, an_tokenizer *tok, const char *text, size_t len, bool add_special,
                                     an_token_ids *out);
/* Decodes ids to UTF-8 (ill-formed byte sequences become U+FFFD, as in the library). skip_special
 * leaves out added tokens marked special. An id the tokenizer does not have is AN_ERR_INPUT.
 * *text is malloc'd and NUL-terminated; *len excludes the NUL. */
an_status an_tokenizer_decode(an_ctx *ctx, const an_tokenizer *tok, const int32_t *ids, size_t n, bool skip_special,
                              char **text, size_t *len);

/* The id of a token given by its text in the vocabulary (added tokens first), or -1. */
int32_t an_tokenizer_token_id(const an_tokenizer *tok, const char *token);
/* The vocabulary text of id (byte-level form, e.g. "Ġthe"), or NULL; *len receives its length. */
const char *an_tokenizer_token_text(const an_tokenizer *tok, int32_t id, size_t *len);
/* One more than the largest id (the embedding rows the tokenizer needs). */
int32_t an_tokenizer_vocab_size(const an_tokenizer *tok);
/* bos / eos / pad from tokenizer_config.json (bos falls back to the template's first special token);
 * -1 when unknown. */
int32_t an_tokenizer_bos_id(const an_tokenizer *tok);
int32_t an_tokenizer_eos_id(const an_tokenizer *tok);
int32_t an_tokenizer_pad_id(const an_tokenizer *tok);
/* Whether encoding with add_special prepends the bos id. */
bool an_tokenizer_adds_bos(const an_tokenizer *tok);
/* Whether id is an added token marked special (what decode's skip_special leaves out). */
bool an_tokenizer_is_special(const an_tokenizer *tok, int32_t id);

#endif
