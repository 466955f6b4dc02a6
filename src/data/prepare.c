/* prepare.c — raw data files into a tokenized dataset (an_dataset_prepare, dataset.h): read every
 * record (records.h), format and tokenize it (chat.h), append it to the HDF5 writer (dataset.c), and
 * commit only when the bad-record fraction is within bounds. */
#include "data/dataset.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef struct {
    an_data_encoder enc;
    an_data_tokens doc;          /* the record being encoded */
    an_dataset_writer *w;
    int64_t documents, tokens, loss_tokens;
    bool any_chat;
} prep;

/* msg without the "file.c:123: " location an_error_set puts first. */
static const char *without_location(const char *msg) {
    const char *p = strstr(msg, ".c:"), *space = strchr(msg, ' ');
    if (!p || (space && space < p)) return msg;
    p += 3;
    if (!isdigit((unsigned char)*p)) return msg;
    while (isdigit((unsigned char)*p)) p++;
    return p[0] == ':' && p[1] == ' ' ? p + 2 : msg;
}

static an_status on_record(an_ctx *ctx, void *user, const an_data_record *rec, char *bad, size_t bad_size) {
    prep *p = user;
    p->doc.ids.n = 0;
    an_status st = an_data_encode(ctx, &p->enc, rec, &p->doc);
    if (st == AN_ERR_INPUT) {  /* the tokenizer rejected this record's text: a bad record, not a failed run */
        snprintf(bad, bad_size, "%s", without_location(an_error_message(ctx)));
        an_error_clear(ctx);
        return AN_OK;
    }
    AN_TRY(st);
    if (p->doc.ids.n == 0) {
        snprintf(bad, bad_size, "no tokens after tokenization");
        return AN_OK;
    }
    p->any_chat |= rec->format == AN_RECIPE_FORMAT_CHAT;
    int64_t n = (int64_t)p->doc.ids.n, loss = 0;
    for (int64_t i = 0; i < n; i++) loss += p->doc.mask[i];
    p->documents++, p->tokens += n, p->loss_tokens += loss;
    return an_dataset_writer_add(ctx, p->w, p->doc.ids.ids, p->doc.mask, n);
}

static void formats_string(unsigned bits, char *out, size_t size) {
    static const an_recipe_data_format order[] = {AN_RECIPE_FORMAT_TEXT, AN_RECIPE_FORMAT_PROMPT_COMPLETION,
                                                  AN_RECIPE_FORMAT_CHAT};
    out[0] = '\0';
    for (int i = 0; i < 3; i++)
        if (bits & (1u << order[i])) {
            size_t used = strlen(out);
            snprintf(out + used, size - used, "%s%s", used ? "+" : "", an_data_format_name(order[i]));
        }
}

static an_status read_all(an_ctx *ctx, const an_dataset_prepare_opts *o, prep *p, an_dataset_info *info,
                          an_data_read_stats *total) {
    for (int i = 0; i < o->n_inputs; i++) {
        const char *path = o->inputs[i];
        an_dataset_source *src = &info->sources[i];
        struct stat sb;
        AN_CHECK(ctx, stat(path, &sb) == 0, AN_ERR_INPUT, "%s: cannot open: %s", path, strerror(errno));
        an_data_read_stats part = {0};
        AN_TRY(an_data_read(ctx, path, o->format, &part, on_record, p));
        an_data_read_stats_add(total, &part);
        src->path = (char *)path;
        formats_string(part.formats, src->formats, sizeof src->formats);
        src->records = part.records, src->bad_records = part.bad;
        src->size = (int64_t)sb.st_size, src->mtime_ns = (int64_t)sb.st_mtim.tv_sec * 1000000000 + sb.st_mtim.tv_nsec;
        info->n_sources = i + 1;
    }
    return AN_OK;
}

an_status an_dataset_prepare(an_ctx *ctx, an_tokenizer *tok, const an_dataset_prepare_opts *o, const char *out_path,
                             an_dataset_prepare_report *report) {
    AN_CHECK(ctx, o->n_inputs >= 1, AN_ERR_INPUT, "data prepare: no input files");
    AN_CHECK(ctx, o->max_bad_fraction >= 0 && o->max_bad_fraction < 1, AN_ERR_INPUT,
             "data prepare: max_bad_fraction = %g must be in [0, 1)", o->max_bad_fraction);
    AN_CHECK(ctx, o->format >= AN_RECIPE_FORMAT_AUTO && o->format <= AN_RECIPE_FORMAT_CHAT, AN_ERR_INPUT,
             "data prepare: unknown format %d", (int)o->format);
    prep p = {0};
    AN_TRY(an_data_encoder_init(ctx, tok, o->reasoning, &p.enc));
    an_dataset_info info = {
        .max_bad_fraction = o->max_bad_fraction,
        .bos_id = an_tokenizer_bos_id(tok),
        .eos_id = an_tokenizer_eos_id(tok),
        .pad_id = an_tokenizer_pad_id(tok),
        .vocab_size = an_tokenizer_vocab_size(tok),
    };
    snprintf(info.tokenizer_sha256, sizeof info.tokenizer_sha256, "%s", o->tokenizer_sha256 ? o->tokenizer_sha256 : "");
    snprintf(info.format, sizeof info.format, "%s", an_data_format_name(o->format));
    snprintf(info.reasoning, sizeof info.reasoning, "%s", an_chat_reasoning_name(o->reasoning));
    info.sources = calloc((size_t)o->n_inputs, sizeof *info.sources);
    AN_CHECK(ctx, info.sources != NULL, AN_ERR_INTERNAL, "out of host memory");

    an_data_read_stats total = {0};
    an_status st = an_dataset_writer_open(ctx, out_path, &p.w);
    if (st == AN_OK) st = read_all(ctx, o, &p, &info, &total);
    if (st == AN_OK) st = an_data_check_bad(ctx, &total, o->max_bad_fraction, "data");
    if (st == AN_OK) {
        info.records = total.records, info.bad_records = total.bad;
        if (p.any_chat) snprintf(info.chat_template, sizeof info.chat_template, "%s",
                                 an_chat_template_name(p.enc.chat_template));
        st = an_dataset_writer_commit(ctx, p.w, &info);  /* frees the writer either way */
        p.w = NULL;
    }
    if (p.w) an_dataset_writer_abort(p.w);
    free(info.sources);  /* the paths are the caller's */
    an_data_tokens_free(&p.doc);
    if (st == AN_OK && report) {
        *report = (an_dataset_prepare_report){.read = total, .documents = p.documents, .tokens = p.tokens,
                                              .loss_tokens = p.loss_tokens};
        snprintf(report->chat_template, sizeof report->chat_template, "%s", info.chat_template);
    }
    return st;
}
