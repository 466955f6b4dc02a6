/* chat.h — records (records.h) into token ids and a per-token loss mask: the chat template for
 * `messages`, and the plain layouts of `text` and `prompt`/`completion` records.
 *
 * The Jinja chat_template of tokenizer_config.json is not executed. The DeepSeek-R1-Distill template is
 * reproduced in C (it is chosen when the tokenizer has <｜User｜>, <｜Assistant｜>, <｜end▁of▁sentence｜>
 * and a bos token); its rendering of a conversation, tokenized, equals transformers'
 * apply_chat_template(messages, tokenize=True) id for id:
 *   bos + S + for each message in order:  user: <｜User｜> + content
 *                                          assistant: <｜Assistant｜> + content + <｜end▁of▁sentence｜>
 * where S is the content of the last system message (the template puts it first, wherever it stands).
 * Any other tokenizer gets a generic role-tag layout:
 *   [bos] + for each message: "<|role|>\n" + content + ("<eos>" for assistant) + "\n"
 * with [bos] only when the tokenizer adds one.
 *
 * Loss mask: 1 on each assistant reply's content and its end-of-sentence (eos) token, 0 on everything
 * else (bos, system, user turns, the role markers). prompt_completion: [bos] + prompt + completion + eos,
 * loss on completion + eos. text: [bos] + text + eos (eos only when the tokenizer has one), loss on all
 * but the bos. The pieces are tokenized one by one; for the DeepSeek template every boundary is an
 * added token, so this equals tokenizing the rendered string whole.
 *
 * Special tokens: text inside content that spells an added token (e.g. "<｜Assistant｜>" typed by a
 * user) becomes that token, as transformers does when it tokenizes the rendered template. It keeps the
 * mask of the turn it is in.
 *
 * Reasoning: the template replaces every assistant content by what follows its last "</think>", which
 * removes the reasoning of a turn. For training the default (keep_last) keeps the reasoning of the
 * final assistant turn — the reply being learned, as the model produces it after the generation prompt
 * "<｜Assistant｜><think>\n" — and strips it from earlier assistant turns exactly as the template
 * does, which is how earlier turns appear in the context at inference. `strip` reproduces the template
 * for every turn (apply_chat_template's ids), `keep_all` strips nothing. */
#ifndef AN_DATA_CHAT_H
#define AN_DATA_CHAT_H

#include <stdbool.h>
#include <stdint.h>

#include "autograd/ctx.h"     /* an_ctx, an_status */
#include "data/records.h"     /* an_data_record, an_chat_message */
#include "data/tokenizer.h"   /* an_tokenizer, an_token_ids */

typedef enum { AN_CHAT_TEMPLATE_DEEPSEEK = 0, AN_CHAT_TEMPLATE_ROLE_TAGS } an_chat_template;
typedef enum { AN_CHAT_REASONING_KEEP_LAST = 0, AN_CHAT_REASONING_STRIP, AN_CHAT_REASONING_KEEP_ALL } an_chat_reasoning;

/* Token ids and their loss mask, grown together; {0} is empty; an_data_tokens_free when done. */
typedef struct {
    an_token_ids ids;
    uint8_t *mask;      /* ids.n entries */
    size_t mask_cap;
} an_data_tokens;

typedef struct {
    an_tokenizer *tok;            /* borrowed */
    an_chat_template chat_template;
    an_chat_reasoning reasoning;
    bool adds_bos;                /* text and prompt_completion records start with bos */
    int32_t bos, eos;             /* -1 when the tokenizer has none */
    int32_t user, assistant, end; /* the DeepSeek markers (deepseek template only) */
} an_data_encoder;

/* The template for tok (see above) and its token ids. */
an_status an_data_encoder_init(an_ctx *ctx, an_tokenizer *tok, an_chat_reasoning reasoning, an_data_encoder *out);

/* Appends rec's ids and mask to out (out->ids.n grows by the document's length). AN_ERR_INPUT when the
 * tokenizer lacks a token the record needs (an eos for prompt_completion or chat) or rejects the text. */
an_status an_data_encode(an_ctx *ctx, const an_data_encoder *enc, const an_data_record *rec, an_data_tokens *out);

/* The ids that prompt a reply to messages[0..n): the conversation as above (reasoning stripped from
 * every assistant turn, as the template does) followed by the generation prompt —
 * "<｜Assistant｜><think>\n" for DeepSeek, "<|assistant|>\n" for role tags. *ids is malloc'd. */
an_status an_chat_encode_prompt(an_ctx *ctx, const an_data_encoder *enc, const an_chat_message *messages, int n,
                                int32_t **ids, size_t *n_ids);

const char *an_chat_template_name(an_chat_template t);       /* "deepseek", "role_tags" */
const char *an_chat_reasoning_name(an_chat_reasoning r);     /* "keep_last", "strip", "keep_all" */
/* Parses a reasoning name; AN_ERR_INPUT listing the choices when unknown. */
an_status an_chat_reasoning_parse(an_ctx *ctx, const char *name, an_chat_reasoning *out);

void an_data_tokens_free(an_data_tokens *t);

#endif
