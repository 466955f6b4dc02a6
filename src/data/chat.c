/* chat.c — records into ids and loss masks through the DeepSeek or role-tag template (see chat.h for
 * the layouts, the mask rules and how reasoning is treated). On failure the output is left as it was. */
#include "data/chat.h"

#include <stdlib.h>
#include <string.h>

static const char DS_USER[] = "<｜User｜>";
static const char DS_ASSISTANT[] = "<｜Assistant｜>";
static const char DS_END[] = "<｜end▁of▁sentence｜>";
static const char THINK_END[] = "</think>";

const char *an_chat_template_name(an_chat_template t) {
    return t == AN_CHAT_TEMPLATE_DEEPSEEK ? "deepseek" : "role_tags";
}

static const char *const reasoning_names[] = {"keep_last", "strip", "keep_all"};

const char *an_chat_reasoning_name(an_chat_reasoning r) {
    return (unsigned)r < 3 ? reasoning_names[r] : "?";
}

an_status an_chat_reasoning_parse(an_ctx *ctx, const char *name, an_chat_reasoning *out) {
    for (int i = 0; i < 3; i++)
        if (!strcmp(name, reasoning_names[i])) {
            *out = (an_chat_reasoning)i;
            return AN_OK;
        }
    AN_CHECK(ctx, 0, AN_ERR_INPUT, "chat reasoning '%s' is not one of keep_last, strip, keep_all", name);
}

an_status an_data_encoder_init(an_ctx *ctx, an_tokenizer *tok, an_chat_reasoning reasoning, an_data_encoder *out) {
    AN_CHECK(ctx, (unsigned)reasoning < 3, AN_ERR_INPUT, "chat reasoning %d is not one of keep_last, strip, keep_all",
             (int)reasoning);
    an_data_encoder e = {
        .tok = tok,
        .reasoning = reasoning,
        .adds_bos = an_tokenizer_adds_bos(tok),
        .bos = an_tokenizer_bos_id(tok),
        .eos = an_tokenizer_eos_id(tok),
        .user = an_tokenizer_token_id(tok, DS_USER),
        .assistant = an_tokenizer_token_id(tok, DS_ASSISTANT),
        .end = an_tokenizer_token_id(tok, DS_END),
    };
    AN_CHECK(ctx, !e.adds_bos || e.bos >= 0, AN_ERR_INPUT, "tokenizer: it adds a bos token but names none");
    bool deepseek = e.user >= 0 && e.assistant >= 0 && e.end >= 0 && e.bos >= 0;
    e.chat_template = deepseek ? AN_CHAT_TEMPLATE_DEEPSEEK : AN_CHAT_TEMPLATE_ROLE_TAGS;
    *out = e;
    return AN_OK;
}

void an_data_tokens_free(an_data_tokens *t) {
    free(t->ids.ids);
    free(t->mask);
    *t = (an_data_tokens){0};
}

/* ---- appending ---- */

/* Makes the mask as long as the ids, setting the new entries [from, n) to m. */
static an_status mask_new(an_ctx *ctx, an_data_tokens *t, size_t from, uint8_t m) {
    if (t->ids.n > t->mask_cap) {
        size_t cap = t->mask_cap ? t->mask_cap : 256;
        while (cap < t->ids.n) cap *= 2;
        uint8_t *p = realloc(t->mask, cap);
        AN_CHECK(ctx, p != NULL, AN_ERR_INTERNAL, "out of host memory (%zu mask bytes)", cap);
        t->mask = p, t->mask_cap = cap;
    }
    memset(t->mask + from, m, t->ids.n - from);
    return AN_OK;
}

static an_status push_id(an_ctx *ctx, an_data_tokens *t, int32_t id, uint8_t m) {
    if (t->ids.n == t->ids.cap) {
        size_t cap = t->ids.cap ? 2 * t->ids.cap : 256;
        int32_t *p = realloc(t->ids.ids, cap * sizeof *p);
        AN_CHECK(ctx, p != NULL, AN_ERR_INTERNAL, "out of host memory (%zu ids)", cap);
        t->ids.ids = p, t->ids.cap = cap;
    }
    size_t from = t->ids.n;
    t->ids.ids[t->ids.n++] = id;
    return mask_new(ctx, t, from, m);
}

static an_status push_text(an_ctx *ctx, const an_data_encoder *e, an_data_tokens *t, const char *s, size_t n,
                           uint8_t m) {
    size_t from = t->ids.n;
    if (n > 0) AN_TRY(an_tokenizer_encode_append(ctx, e->tok, s, n, false, &t->ids));
    return mask_new(ctx, t, from, m);
}

/* What follows the last "</think>" of s, as the template's content.split('</think>')[-1]. */
static void strip_reasoning(const char **s, size_t *n) {
    size_t k = sizeof THINK_END - 1;
    for (size_t i = *n; i >= k; i--)
        if (memcmp(*s + i - k, THINK_END, k) == 0) {
            *s += i, *n -= i;
            return;
        }
}

static int last_assistant(const an_chat_message *m, int n) {
    for (int i = n - 1; i >= 0; i--)
        if (m[i].role == AN_CHAT_ASSISTANT) return i;
    return -1;
}

static const char *role_tag(an_chat_role r) {
    return r == AN_CHAT_SYSTEM ? "<|system|>\n" : r == AN_CHAT_USER ? "<|user|>\n" : "<|assistant|>\n";
}

/* The conversation (not the generation prompt). reasoning decides which assistant turns keep it;
 * train: whether assistant replies are loss targets. */
static an_status conversation(an_ctx *ctx, const an_data_encoder *e, const an_chat_message *msgs, int n,
                              an_chat_reasoning reasoning, bool train, an_data_tokens *t) {
    int last = last_assistant(msgs, n);
    uint8_t reply = train ? 1 : 0;
    if (e->chat_template == AN_CHAT_TEMPLATE_DEEPSEEK) {
        AN_TRY(push_id(ctx, t, e->bos, 0));
        for (int i = n - 1; i >= 0; i--)
            if (msgs[i].role == AN_CHAT_SYSTEM) {
                AN_TRY(push_text(ctx, e, t, msgs[i].content, msgs[i].len, 0));
                break;
            }
    } else if (e->adds_bos) {
        AN_TRY(push_id(ctx, t, e->bos, 0));
    }
    for (int i = 0; i < n; i++) {
        const an_chat_message *m = &msgs[i];
        const char *content = m->content;
        size_t len = m->len;
        bool assistant = m->role == AN_CHAT_ASSISTANT;
        if (assistant && (reasoning == AN_CHAT_REASONING_STRIP || (reasoning == AN_CHAT_REASONING_KEEP_LAST && i != last)))
            strip_reasoning(&content, &len);
        if (e->chat_template == AN_CHAT_TEMPLATE_DEEPSEEK) {
            if (m->role == AN_CHAT_SYSTEM) continue;  /* placed first, above */
            AN_TRY(push_id(ctx, t, assistant ? e->assistant : e->user, 0));
            AN_TRY(push_text(ctx, e, t, content, len, assistant ? reply : 0));
            if (assistant) AN_TRY(push_id(ctx, t, e->end, reply));
        } else {
            const char *tag = role_tag(m->role);
            AN_TRY(push_text(ctx, e, t, tag, strlen(tag), 0));
            AN_TRY(push_text(ctx, e, t, content, len, assistant ? reply : 0));
            if (assistant) AN_TRY(push_id(ctx, t, e->eos, reply));
            AN_TRY(push_text(ctx, e, t, "\n", 1, 0));
        }
    }
    return AN_OK;
}

static an_status encode(an_ctx *ctx, const an_data_encoder *e, const an_data_record *rec, an_data_tokens *t) {
    switch (rec->format) {
    case AN_RECIPE_FORMAT_TEXT:
        if (e->adds_bos) AN_TRY(push_id(ctx, t, e->bos, 0));
        AN_TRY(push_text(ctx, e, t, rec->text, rec->text_len, 1));
        if (e->eos >= 0) AN_TRY(push_id(ctx, t, e->eos, 1));
        return AN_OK;
    case AN_RECIPE_FORMAT_PROMPT_COMPLETION:
        AN_CHECK(ctx, e->eos >= 0, AN_ERR_INPUT,
                 "%s: prompt_completion records end with the eos token, and the tokenizer has none "
                 "(eos_token in tokenizer_config.json)",
                 rec->where);
        if (e->adds_bos) AN_TRY(push_id(ctx, t, e->bos, 0));
        AN_TRY(push_text(ctx, e, t, rec->prompt, rec->prompt_len, 0));
        AN_TRY(push_text(ctx, e, t, rec->completion, rec->completion_len, 1));
        return push_id(ctx, t, e->eos, 1);
    case AN_RECIPE_FORMAT_CHAT:
        AN_CHECK(ctx, e->chat_template == AN_CHAT_TEMPLATE_DEEPSEEK || e->eos >= 0, AN_ERR_INPUT,
                 "%s: chat replies end with the eos token, and the tokenizer has none "
                 "(eos_token in tokenizer_config.json)",
                 rec->where);
        return conversation(ctx, e, rec->messages, rec->n_messages, e->reasoning, true, t);
    default:
        AN_CHECK(ctx, 0, AN_ERR_INTERNAL, "%s: record without a format", rec->where);
    }
}

an_status an_data_encode(an_ctx *ctx, const an_data_encoder *e, const an_data_record *rec, an_data_tokens *out) {
    size_t n0 = out->ids.n;
    an_status st = encode(ctx, e, rec, out);
    if (st != AN_OK) out->ids.n = n0;
    return st;
}

an_status an_chat_encode_prompt(an_ctx *ctx, const an_data_encoder *e, const an_chat_message *messages, int n,
                                int32_t **ids, size_t *n_ids) {
    an_data_tokens t = {0};
    an_status st = conversation(ctx, e, messages, n, AN_CHAT_REASONING_STRIP, false, &t);
    if (st == AN_OK && e->chat_template == AN_CHAT_TEMPLATE_DEEPSEEK) {
        st = push_id(ctx, &t, e->assistant, 0);
        if (st == AN_OK) st = push_text(ctx, e, &t, "<think>\n", 8, 0);
    } else if (st == AN_OK) {
        st = push_text(ctx, e, &t, "<|assistant|>\n", 14, 0);
    }
    if (st != AN_OK) {
        an_data_tokens_free(&t);
        return st;
    }
    free(t.mask);
    *ids = t.ids.ids;
    *n_ids = t.ids.n;
    return AN_OK;
}
