/* evaluate.c — validation loss (the same an_model_loss as training, summed over tokens, no
 * dropout, no tape) and greedy samples of validation prompts. */
#include "train/run.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/tape.h"    /* an_no_grad_* */
#include "model/generate.h"

an_status an_eval_loss(an_ctx *ctx, an_model *m, an_data_loader *loader, int64_t max_batches, double *loss,
                       int64_t *tokens_out) {
    *loss = NAN;
    bool was_training = m->training;
    m->training = false;
    an_data_loader_rewind(loader);
    double total = 0;
    int64_t tokens = 0;
    an_status st = AN_OK;
    an_no_grad_begin(ctx);
    for (int64_t b = 0; st == AN_OK && (max_batches == 0 || b < max_batches); b++) {
        an_data_batch batch;
        st = an_data_loader_next(ctx, loader, &batch);
        if (st != AN_OK) break;
        if (batch.epoch > 0) { /* wrapped around: the whole set has been seen */
            an_data_batch_release(&batch);
            break;
        }
        if ((st = an_data_batch_to(ctx, &batch, m->embed_tokens->device)) != AN_OK) {
            an_data_batch_release(&batch);
            break;
        }
        an_cross_entropy_opts opts = AN_CROSS_ENTROPY_DEFAULTS;
        opts.normalizer = 1.0; /* the sum over tokens; divided by the count below */
        an_tensor *l = an_model_loss(ctx, m, batch.ids, batch.labels, batch.positions, batch.segments, &opts);
        if (!l) st = an_error_status(ctx);
        else if (l->device == AN_CPU) total += an_tensor_get(l, 0);
        else {
            an_tensor *host = an_tensor_to(ctx, l, AN_F64, AN_CPU);
            if (host) total += an_tensor_get(host, 0);
            else st = an_error_status(ctx);
            an_tensor_release(host);
        }
        tokens += batch.loss_tokens;
        bool last = batch.epoch_end;
        an_tensor_release(l);
        an_data_batch_release(&batch);
        if (last) break;
    }
    an_no_grad_end(ctx);
    m->training = was_training;
    if (st == AN_OK && tokens > 0) *loss = total / (double)tokens;
    if (tokens_out) *tokens_out = tokens;
    return st;
}

an_status an_run_evaluate(an_ctx *ctx, an_run *run, double *loss) {
    *loss = NAN;
    if (!run->validation) return AN_OK;
    return an_eval_loss(ctx, run->model, run->validation, run->recipe->training.eval_steps, loss, NULL);
}

/* The document's tokens up to its first trained one (the prompt), as a malloc'ed array. */
static an_status prompt_of(an_ctx *ctx, an_dataset *ds, int64_t doc, int32_t **ids, int64_t *n) {
    int64_t len = an_dataset_document_length(ds, doc);
    int32_t *tokens = malloc((size_t)(len ? len : 1) * sizeof *tokens);
    uint8_t *mask = malloc((size_t)(len ? len : 1));
    an_status st = tokens && mask ? an_dataset_read(ctx, ds, doc, 0, len, tokens, mask)
                                  : an_error_set(ctx, AN_ERR_INTERNAL, __FILE__, __LINE__, "out of host memory");
    int64_t k = 0;
    while (st == AN_OK && k < len && !mask[k]) k++;
    free(mask);
    if (st != AN_OK) {
        free(tokens);
        return st;
    }
    *ids = tokens;
    *n = k < len ? k : 0; /* a document with nothing trained has no prompt/answer split */
    return AN_OK;
}

an_status an_run_samples(an_ctx *ctx, an_run *run, const char *title) {
    const an_recipe *r = run->recipe;
    if (!run->validation || r->logging.samples == 0) return AN_OK;
    char path[4200];
    snprintf(path, sizeof path, "%s/samples.txt", r->output_dir);
    FILE *out = fopen(path, "a");
    AN_CHECK(ctx, out != NULL, AN_ERR_INPUT, "%s: cannot open for appending", path);
    fprintf(out, "== %s (step %lld)\n", title, (long long)run->step);
    an_metrics_say(&run->metrics, "-- %s (greedy, %lld new tokens) --", title, (long long)r->logging.sample_tokens);
    an_model *m = run->model;
    bool was_training = m->training;
    m->training = false;
    an_status st = AN_OK;
    int64_t shown = 0;
    int64_t n_docs = an_data_loader_documents(run->validation);
    an_dataset *ds = an_data_loader_dataset(run->validation);
    for (int64_t i = 0; st == AN_OK && i < n_docs && shown < r->logging.samples; i++) {
        int32_t *prompt = NULL, *reply = NULL;
        int64_t n = 0, reply_len = 0;
        st = prompt_of(ctx, ds, an_data_loader_document(run->validation, i), &prompt, &n);
        if (st == AN_OK && n >= 2) { /* a prompt beyond the bos: chat and prompt/completion documents */
            an_generate_opts o = an_generate_defaults(m);
            o.max_new_tokens = r->logging.sample_tokens;
            o.vocab_limit = an_tokenizer_vocab_size(run->tok);
            int32_t eos = an_tokenizer_eos_id(run->tok);
            int64_t eos_ids[1] = {eos};
            if (eos >= 0) o.eos_ids = eos_ids, o.n_eos_ids = 1;
            const int32_t *prompts[1] = {prompt};
            st = an_generate(ctx, m, 1, prompts, &n, &o, &reply, &reply_len);
            char *ptext = NULL, *rtext = NULL;
            size_t plen, rlen;
            if (st == AN_OK) st = an_tokenizer_decode(ctx, run->tok, prompt, (size_t)n, true, &ptext, &plen);
            if (st == AN_OK) st = an_tokenizer_decode(ctx, run->tok, reply, (size_t)reply_len, true, &rtext, &rlen);
            if (st == AN_OK) {
                an_metrics_say(&run->metrics, "prompt: %s\nreply:  %s", ptext, rtext);
                fprintf(out, "prompt: %s\nreply:  %s\n", ptext, rtext);
                shown++;
            }
            free(ptext), free(rtext), free(reply);
        }
        free(prompt);
    }
    m->training = was_training;
    fclose(out);
    return st;
}
