/* loader.h — micro-batches for training and evaluation from a tokenized dataset (dataset.h): a
 * deterministic held-out split, a per-epoch shuffle, packing into rows of seq_len, and a cursor that
 * saves and restores the exact position in the stream.
 *
 * Rows. Each epoch the loader's documents are put in order — shuffled with Fisher–Yates by an an_rng
 * seeded from (seed, epoch) when shuffle is on, by index otherwise — and cut into pieces: a document
 * longer than seq_len becomes consecutive pieces of seq_len tokens (the last one shorter), each piece
 * a document of its own from then on (it attends only to itself, its positions start at 0, and its
 * first token is not a target, so the tokens at the cuts lose their left context). With packing, each
 * piece goes into the first row that still has room for it (first fit, rows in the order they were
 * opened), so a row holds whole pieces and never splits one. Without packing, each piece has a row.
 * A row's unused tail is padding.
 *
 * A row (T = seq_len) gives: ids; positions 0, 1, ... restarting at every piece; segments 0, 1, ... one
 * per piece and one more for the padding (an_attention lets a token see only its own segment);
 * labels = the id where the dataset's loss mask is 1, and -100 on masked tokens, on padding and on the
 * first token of every piece (the token before it belongs to another document). an_model_loss makes
 * token t predict labels[t + 1], so every label that is not -100 is exactly one counted target.
 * Padding tokens use the tokenizer's pad id (else eos, else 0); they affect nothing.
 *
 * Batches. A micro-batch is micro_batch consecutive rows of the epoch. The epoch's last batch is
 * filled up with padding rows (all labels -100) so every batch is (micro_batch, seq_len); it is marked
 * epoch_end and the next batch starts the next epoch. A batch never mixes two epochs.
 *
 * Cursor (an_data_cursor, ckpt/cursor.h): the next batch starts at row `position` of epoch `epoch`
 * (0-based), and `shuffle_seed` is the seed of that epoch's permutation, an_rng_at-derived from
 * (seed, epoch), so a cursor saved under another seed is recognised. Restoring a saved cursor with
 * an_data_loader_seek hands out the same batches, bit for bit, as the run that saved it would have.
 *
 * Ownership: the loader borrows the dataset (which must outlive it); batches hold new tensor
 * references the caller releases with an_data_batch_release. */
#ifndef AN_DATA_LOADER_H
#define AN_DATA_LOADER_H

#include <stdbool.h>
#include <stdint.h>

#include "autograd/tensor.h"  /* an_tensor */
#include "ckpt/cursor.h"      /* an_data_cursor: what a checkpoint stores */
#include "data/dataset.h"     /* an_dataset */

typedef struct {
    int64_t seq_len;      /* T >= 2 */
    int64_t micro_batch;  /* B >= 1 */
    bool packing;
    bool shuffle;
    int64_t seed;
} an_data_loader_opts;

typedef struct {
    an_tensor *ids;        /* (B, T) i32 */
    an_tensor *labels;     /* (B, T) i64: ids where trained, -100 elsewhere */
    an_tensor *positions;  /* (B, T) i32 */
    an_tensor *segments;   /* (B, T) i32 */
    int64_t loss_tokens;   /* labels != -100: the targets this batch adds to the loss */
    int64_t tokens;        /* tokens that are not padding */
    int64_t epoch;         /* the epoch its rows come from */
    int64_t position;      /* the epoch row of its first row (the cursor's position before it) */
    bool epoch_end;        /* it holds the epoch's last row */
} an_data_batch;

typedef struct an_data_loader an_data_loader;

/* A loader over docs[0..n_docs) of ds (document indices, any order; NULL for all documents). The
 * cursor starts at epoch 0, position 0. AN_ERR_INPUT when there is no document. */
an_status an_data_loader_new(an_ctx *ctx, an_dataset *ds, const int64_t *docs, int64_t n_docs,
                             const an_data_loader_opts *opts, an_data_loader **out);
void an_data_loader_free(an_data_loader *loader);

/* The next micro-batch; the cursor moves past it. */
an_status an_data_loader_next(an_ctx *ctx, an_data_loader *loader, an_data_batch *out);
void an_data_batch_release(an_data_batch *batch);
/* Moves the batch's tensors to `device` (no-op for the CPU); on failure the batch is unchanged. */
an_status an_data_batch_to(an_ctx *ctx, an_data_batch *batch, an_device device);

an_data_cursor an_data_loader_cursor(const an_data_loader *loader);
/* Continues from a saved cursor. AN_ERR_INPUT when its shuffle_seed is not the one the loader's seed
 * gives that epoch, or its position is past the rows of its epoch (the data changed since). */
an_status an_data_loader_seek(an_ctx *ctx, an_data_loader *loader, an_data_cursor cursor);
/* Back to the start of epoch 0 (evaluation passes). */
void an_data_loader_rewind(an_data_loader *loader);

/* Rows and micro-batches epoch `epoch` has (with packing they may differ a little between epochs). */
an_status an_data_loader_rows_in_epoch(an_ctx *ctx, an_data_loader *loader, int64_t epoch, int64_t *rows);
an_status an_data_loader_batches_in_epoch(an_ctx *ctx, an_data_loader *loader, int64_t epoch, int64_t *batches);
int64_t an_data_loader_documents(const an_data_loader *loader);
/* The dataset index of the loader's i-th document (ascending), and the dataset it reads. */
int64_t an_data_loader_document(const an_data_loader *loader, int64_t i);
an_dataset *an_data_loader_dataset(const an_data_loader *loader);

/* A deterministic held-out split of documents 0..n_docs-1: round(fraction * n_docs) of them (at least
 * one when fraction > 0), chosen by a seeded shuffle, go to *validation, the rest to *train; both
 * sorted and malloc'd (free()). The same (n_docs, fraction, seed) always gives the same split.
 * AN_ERR_INPUT when the split would leave no training document. */
an_status an_data_split(an_ctx *ctx, int64_t n_docs, double fraction, int64_t seed, int64_t **train, int64_t *n_train,
                        int64_t **validation, int64_t *n_validation);

/* The seed of epoch `epoch`'s permutation for a loader seeded with `seed` (the cursor's shuffle_seed). */
int64_t an_data_epoch_seed(int64_t seed, int64_t epoch);
/* The permutation epoch `epoch` uses: out[i] for i < n, a Fisher–Yates shuffle of 0..n-1 by an an_rng
 * seeded with an_data_epoch_seed(seed, epoch). */
void an_data_shuffle(int64_t *out, int64_t n, int64_t seed, int64_t epoch);

#endif
