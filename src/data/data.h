/* data.h — the trainer's entry to the data pipeline: a recipe's data section in, a training loader
 * and (when the recipe has validation data) a validation loader out.
 *
 * Where the tokens come from:
 *   - data.train is one .h5 file: a dataset made by `anneal data prepare`, opened as it is (it must have
 *     been made with the model's tokenizer);
 *   - otherwise data.train lists raw files (records.h); they are tokenized once into
 *     <output_dir>/data/train.h5, which later runs (and resumes) reuse while the inputs' paths, sizes
 *     and modification times, data.format, data.max_bad_fraction and the tokenizer are unchanged.
 * data.validation is handled the same way (<output_dir>/data/validation.h5). Without it,
 * data.validation_fraction > 0 holds out that share of the training documents (an_data_split, seeded
 * with the recipe's seed); 0 means no validation loader.
 *
 * Loaders (loader.h): seq_len, packing and micro_batch from the recipe for both; the training loader
 * shuffles when data.shuffle is on, the validation loader never does.
 * Ownership: an_data owns its datasets and loaders; an_data_free releases everything. */
#ifndef AN_DATA_DATA_H
#define AN_DATA_DATA_H

#include <stdbool.h>

#include "data/dataset.h"    /* an_dataset, an_dataset_prepare_report */
#include "data/loader.h"     /* an_data_loader */
#include "data/tokenizer.h"  /* an_tokenizer */
#include "recipe/recipe.h"   /* an_recipe */

typedef struct {
    an_dataset *train_set;                      /* owned */
    an_dataset *validation_set;                 /* owned; NULL unless data.validation is given */
    an_data_loader *train;
    an_data_loader *validation;                 /* NULL when the recipe has no validation data */
    char tokenizer_sha256[65];                  /* the model's tokenizer.json */
    bool train_prepared, validation_prepared;   /* tokenized by this call (else reused or given) */
    an_dataset_prepare_report train_report;     /* when train_prepared */
    an_dataset_prepare_report validation_report;/* when validation_prepared */
} an_data;

/* Opens (preparing when needed, see above) the recipe's data. tok: the model's tokenizer, or NULL to
 * load it from recipe->model.path when a dataset has to be prepared. */
an_status an_data_open(an_ctx *ctx, const an_recipe *recipe, an_tokenizer *tok, an_data **out);
void an_data_free(an_data *data);

#endif
