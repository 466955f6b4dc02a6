/* loader.c — split, shuffle, packing plan and micro-batches (see loader.h for the rules). An epoch's
 * plan (which piece of which document goes in which row) is a pure function of (documents, seq_len,
 * packing, shuffle, seed, epoch); the loader keeps the plan of the epoch it is in. */
#include "data/loader.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ops.h"  /* AN_IGNORE_INDEX */
#include "autograd/rng.h"  /* an_rng: the shuffle and the split */

#define SHUFFLE_STREAM 0x5348554646ull  /* keeps the shuffle's draws apart from the split's */
#define SPLIT_STREAM 0x53504c4954ull

typedef struct {
    int64_t doc;    /* dataset document index */
    int64_t start;  /* first token of the piece within the document */
    int64_t len;    /* 1..seq_len */
} piece;

typedef struct {
    int64_t epoch;      /* -1: none computed */
    piece *pieces;      /* n_pieces, grouped by row */
    int64_t n_pieces;
    int64_t *row_start; /* n_rows + 1: row r holds pieces [row_start[r], row_start[r + 1]) */
    int64_t n_rows;
} plan;

struct an_data_loader {
    an_dataset *ds;            /* borrowed */
    int64_t *docs;             /* n_docs dataset indices, sorted */
    int64_t n_docs;
    int64_t n_pieces;          /* pieces per epoch (the same every epoch) */
    an_data_loader_opts opts;
    int32_t pad_id;
    an_data_cursor cursor;
    plan plan;
    int32_t *row_ids;          /* seq_len scratch */
    uint8_t *row_mask;
};

/* ---- shuffles ---- */

/* Uniform in [0, bound) without modulo bias. */
static uint64_t below(an_rng *rng, uint64_t bound) {
    uint64_t limit = UINT64_MAX - UINT64_MAX % bound;
    uint64_t x;
    do x = an_rng_u64(rng);
    while (x >= limit);
    return x % bound;
}

static void fisher_yates(int64_t *a, int64_t n, uint64_t seed) {
    an_rng rng;
    an_rng_init(&rng, seed);
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)below(&rng, (uint64_t)i + 1);
        int64_t t = a[i];
        a[i] = a[j], a[j] = t;
    }
}

int64_t an_data_epoch_seed(int64_t seed, int64_t epoch) {
    return (int64_t)an_rng_at((uint64_t)seed ^ SHUFFLE_STREAM, (uint64_t)epoch);
}

void an_data_shuffle(int64_t *out, int64_t n, int64_t seed, int64_t epoch) {
    for (int64_t i = 0; i < n; i++) out[i] = i;
    fisher_yates(out, n, (uint64_t)an_data_epoch_seed(seed, epoch));
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

an_status an_data_split(an_ctx *ctx, int64_t n_docs, double fraction, int64_t seed, int64_t **train, int64_t *n_train,
                        int64_t **validation, int64_t *n_validation) {
    AN_CHECK(ctx, fraction >= 0 && fraction < 1, AN_ERR_INPUT, "data.validation_fraction = %g must be in [0, 1)",
             fraction);
    int64_t n_val = (int64_t)llround(fraction * (double)n_docs);
    if (fraction > 0 && n_val == 0) n_val = 1;
    AN_CHECK(ctx, n_val < n_docs, AN_ERR_INPUT,
             "data.validation_fraction = %g of %lld documents leaves no training document", fraction,
             (long long)n_docs);
    int64_t *perm = malloc((size_t)(n_docs > 0 ? n_docs : 1) * sizeof *perm);
    int64_t *t = malloc((size_t)(n_docs - n_val > 0 ? n_docs - n_val : 1) * sizeof *t);
    int64_t *v = malloc((size_t)(n_val > 0 ? n_val : 1) * sizeof *v);
    if (!perm || !t || !v) {
        free(perm), free(t), free(v);
        AN_CHECK(ctx, 0, AN_ERR_INTERNAL, "out of host memory (%lld documents)", (long long)n_docs);
    }
    for (int64_t i = 0; i < n_docs; i++) perm[i] = i;
    fisher_yates(perm, n_docs, an_rng_at((uint64_t)seed ^ SPLIT_STREAM, 0));
    memcpy(v, perm, (size_t)n_val * sizeof *v);
    memcpy(t, perm + n_val, (size_t)(n_docs - n_val) * sizeof *t);
    free(perm);
    qsort(v, (size_t)n_val, sizeof *v, cmp_i64);
    qsort(t, (size_t)(n_docs - n_val), sizeof *t, cmp_i64);
    *train = t, *n_train = n_docs - n_val;
    *validation = v, *n_validation = n_val;
    return AN_OK;
}

/* ---- the plan of one epoch ---- */

static void plan_free(plan *p) {
    free(p->pieces);
    free(p->row_start);
    *p = (plan){.epoch = -1};
}

/* Leftmost row with room >= len in a max segment tree over row capacities (tree[1] is the root,
 * leaves at [size, 2 size)). Every unopened row has room seq_len, so one is always found. */
static int64_t first_fit(const int32_t *tree, int64_t size, int64_t len) {
    int64_t node = 1;
    while (node < size) node = tree[2 * node] >= len ? 2 * node : 2 * node + 1;
    return node - size;
}

static void tree_set(int32_t *tree, int64_t size, int64_t row, int32_t room) {
    int64_t node = row + size;
    tree[node] = room;
    for (node /= 2; node >= 1; node /= 2)
        tree[node] = tree[2 * node] > tree[2 * node + 1] ? tree[2 * node] : tree[2 * node + 1];
}

static an_status plan_build(an_ctx *ctx, const an_data_loader *l, int64_t epoch, plan *out) {
    const int64_t T = l->opts.seq_len, n = l->n_docs, np = l->n_pieces;
    int64_t *order = malloc((size_t)n * sizeof *order);
    piece *seq = malloc((size_t)np * sizeof *seq);       /* pieces in document order */
    int64_t *row_of = malloc((size_t)np * sizeof *row_of);
    plan p = {.epoch = epoch};
    p.pieces = malloc((size_t)np * sizeof *p.pieces);
    p.row_start = calloc((size_t)np + 2, sizeof *p.row_start);
    int64_t size = 1;
    while (size < np) size *= 2;
    int32_t *tree = l->opts.packing ? malloc(2 * (size_t)size * sizeof *tree) : NULL;
    if (!order || !seq || !row_of || !p.pieces || !p.row_start || (l->opts.packing && !tree)) {
        free(order), free(seq), free(row_of), free(tree), plan_free(&p);
        AN_CHECK(ctx, 0, AN_ERR_INTERNAL, "out of host memory (a plan of %lld pieces)", (long long)np);
    }
    if (l->opts.shuffle) an_data_shuffle(order, n, l->opts.seed, epoch);
    else for (int64_t i = 0; i < n; i++) order[i] = i;
    int64_t k = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t doc = l->docs[order[i]], len = an_dataset_document_length(l->ds, doc);
        for (int64_t s = 0; s < len; s += T) seq[k++] = (piece){doc, s, len - s < T ? len - s : T};
    }
    if (tree)
        for (int64_t i = 0; i < 2 * size; i++) tree[i] = (int32_t)T;
    int64_t n_rows = 0;
    for (int64_t i = 0; i < np; i++) {
        int64_t r = tree ? first_fit(tree, size, seq[i].len) : i;
        if (tree) tree_set(tree, size, r, tree[r + size] - (int32_t)seq[i].len);
        row_of[i] = r;
        if (r + 1 > n_rows) n_rows = r + 1;
    }
    /* Group by row, keeping the fill order within a row (a counting sort). */
    for (int64_t i = 0; i < np; i++) p.row_start[row_of[i] + 1]++;
    for (int64_t r = 0; r < n_rows; r++) p.row_start[r + 1] += p.row_start[r];
    int64_t *next = row_of;  /* reused: first the row of each piece, then each row's fill position */
    int64_t *fill = malloc((size_t)(n_rows > 0 ? n_rows : 1) * sizeof *fill);
    if (!fill) {
        free(order), free(seq), free(row_of), free(tree), plan_free(&p);
        AN_CHECK(ctx, 0, AN_ERR_INTERNAL, "out of host memory");
    }
    memcpy(fill, p.row_start, (size_t)n_rows * sizeof *fill);
    for (int64_t i = 0; i < np; i++) p.pieces[fill[next[i]]++] = seq[i];
    p.n_pieces = np, p.n_rows = n_rows;
    free(fill), free(order), free(seq), free(row_of), free(tree);
    *out = p;
    return AN_OK;
}

/* Makes l->plan the plan of epoch. */
static an_status plan_for(an_ctx *ctx, an_data_loader *l, int64_t epoch) {
    if (l->plan.epoch == epoch) return AN_OK;
    /* Without shuffling every epoch has the same plan. */
    if (!l->opts.shuffle && l->plan.epoch >= 0) {
        l->plan.epoch = epoch;
        return AN_OK;
    }
    plan p;
    AN_TRY(plan_build(ctx, l, epoch, &p));
    plan_free(&l->plan);
    l->plan = p;
    return AN_OK;
}

/* ---- the loader ---- */

an_status an_data_loader_new(an_ctx *ctx, an_dataset *ds, const int64_t *docs, int64_t n_docs,
                             const an_data_loader_opts *opts, an_data_loader **out) {
    AN_CHECK(ctx, opts->seq_len >= 2 && opts->seq_len <= (1 << 30), AN_ERR_INPUT,
             "data loader: seq_len = %lld must be in [2, 2^30]", (long long)opts->seq_len);
    AN_CHECK(ctx, opts->micro_batch >= 1, AN_ERR_INPUT, "data loader: micro_batch = %lld must be at least 1",
             (long long)opts->micro_batch);
    if (!docs) n_docs = an_dataset_documents(ds);
    AN_CHECK(ctx, n_docs >= 1, AN_ERR_INPUT, "%s: no document to load", an_dataset_path(ds));
    an_data_loader *l = calloc(1, sizeof *l);
    AN_CHECK(ctx, l != NULL, AN_ERR_INTERNAL, "out of host memory");
    l->ds = ds;
    l->opts = *opts;
    l->plan.epoch = -1;
    l->n_docs = n_docs;
    l->docs = malloc((size_t)n_docs * sizeof *l->docs);
    l->row_ids = malloc((size_t)opts->seq_len * sizeof *l->row_ids);
    l->row_mask = malloc((size_t)opts->seq_len);
    if (!l->docs || !l->row_ids || !l->row_mask) {
        an_data_loader_free(l);
        AN_CHECK(ctx, 0, AN_ERR_INTERNAL, "out of host memory");
    }
    for (int64_t i = 0; i < n_docs; i++) {
        int64_t d = docs ? docs[i] : i;
        if (d < 0 || d >= an_dataset_documents(ds)) {
            an_data_loader_free(l);
            AN_CHECK(ctx, 0, AN_ERR_INPUT, "%s: document %lld of %lld", an_dataset_path(ds), (long long)d,
                     (long long)an_dataset_documents(ds));
        }
        l->docs[i] = d;
        int64_t len = an_dataset_document_length(ds, d);
        l->n_pieces += (len + opts->seq_len - 1) / opts->seq_len;
    }
    qsort(l->docs, (size_t)n_docs, sizeof *l->docs, cmp_i64);  /* the order is the loader's, not the caller's */
    const an_dataset_info *info = an_dataset_get_info(ds);
    l->pad_id = info->pad_id >= 0 ? info->pad_id : info->eos_id >= 0 ? info->eos_id : 0;
    l->cursor = (an_data_cursor){0, 0, an_data_epoch_seed(opts->seed, 0)};
    *out = l;
    return AN_OK;
}

void an_data_loader_free(an_data_loader *l) {
    if (!l) return;
    plan_free(&l->plan);
    free(l->docs), free(l->row_ids), free(l->row_mask);
    free(l);
}

int64_t an_data_loader_documents(const an_data_loader *l) { return l->n_docs; }
int64_t an_data_loader_document(const an_data_loader *l, int64_t i) { return l->docs[i]; }
an_dataset *an_data_loader_dataset(const an_data_loader *l) { return l->ds; }

an_data_cursor an_data_loader_cursor(const an_data_loader *l) { return l->cursor; }

void an_data_loader_rewind(an_data_loader *l) { l->cursor = (an_data_cursor){0, 0, an_data_epoch_seed(l->opts.seed, 0)}; }

an_status an_data_loader_rows_in_epoch(an_ctx *ctx, an_data_loader *l, int64_t epoch, int64_t *rows) {
    AN_CHECK(ctx, epoch >= 0, AN_ERR_INPUT, "data loader: epoch %lld", (long long)epoch);
    if (l->plan.epoch == epoch || (!l->opts.shuffle && l->plan.epoch >= 0)) {
        *rows = l->plan.n_rows;
        return AN_OK;
    }
    plan p;
    AN_TRY(plan_build(ctx, l, epoch, &p));
    *rows = p.n_rows;
    plan_free(&p);
    return AN_OK;
}

an_status an_data_loader_batches_in_epoch(an_ctx *ctx, an_data_loader *l, int64_t epoch, int64_t *batches) {
    int64_t rows = 0;
    AN_TRY(an_data_loader_rows_in_epoch(ctx, l, epoch, &rows));
    *batches = (rows + l->opts.micro_batch - 1) / l->opts.micro_batch;
    return AN_OK;
}

an_status an_data_loader_seek(an_ctx *ctx, an_data_loader *l, an_data_cursor c) {
    AN_CHECK(ctx, c.epoch >= 0 && c.position >= 0, AN_ERR_INPUT, "data cursor: epoch %lld, position %lld",
             (long long)c.epoch, (long long)c.position);
    AN_CHECK(ctx, c.shuffle_seed == an_data_epoch_seed(l->opts.seed, c.epoch), AN_ERR_INPUT,
             "data cursor: its shuffle seed %lld is not the one seed %lld gives epoch %lld (the seed cannot change "
             "on resume)",
             (long long)c.shuffle_seed, (long long)l->opts.seed, (long long)c.epoch);
    AN_TRY(plan_for(ctx, l, c.epoch));
    AN_CHECK(ctx, c.position < l->plan.n_rows, AN_ERR_INPUT,
             "data cursor: row %lld of epoch %lld, which has %lld rows (has the dataset changed since it was saved?)",
             (long long)c.position, (long long)c.epoch, (long long)l->plan.n_rows);
    l->cursor = c;
    return AN_OK;
}

void an_data_batch_release(an_data_batch *b) {
    an_tensor_release(b->ids);
    an_tensor_release(b->labels);
    an_tensor_release(b->positions);
    an_tensor_release(b->segments);
    *b = (an_data_batch){0};
}

/* Row r of the current plan into the row's slices of the batch arrays; counts into b. */
static an_status fill_row(an_ctx *ctx, an_data_loader *l, int64_t r, int32_t *ids, int64_t *labels, int32_t *pos,
                          int32_t *seg, an_data_batch *b) {
    const int64_t T = l->opts.seq_len;
    int64_t at = 0;
    int32_t segment = 0;
    if (r < l->plan.n_rows) {
        for (int64_t k = l->plan.row_start[r]; k < l->plan.row_start[r + 1]; k++, segment++) {
            const piece *pc = &l->plan.pieces[k];
            AN_TRY(an_dataset_read(ctx, l->ds, pc->doc, pc->start, pc->len, l->row_ids, l->row_mask));
            for (int64_t i = 0; i < pc->len; i++) {
                ids[at + i] = l->row_ids[i];
                labels[at + i] = i > 0 && l->row_mask[i] ? l->row_ids[i] : AN_IGNORE_INDEX;
                pos[at + i] = (int32_t)i;
                seg[at + i] = segment;
                b->loss_tokens += labels[at + i] != AN_IGNORE_INDEX;
            }
            at += pc->len;
        }
        b->tokens += at;
    }
    for (int64_t i = at; i < T; i++) {
        ids[i] = l->pad_id;
        labels[i] = AN_IGNORE_INDEX;
        pos[i] = (int32_t)(i - at);
        seg[i] = segment;
    }
    return AN_OK;
}

an_status an_data_loader_next(an_ctx *ctx, an_data_loader *l, an_data_batch *out) {
    const int64_t B = l->opts.micro_batch, T = l->opts.seq_len;
    AN_TRY(plan_for(ctx, l, l->cursor.epoch));
    an_data_batch b = {.epoch = l->cursor.epoch, .position = l->cursor.position};
    int64_t shape[2] = {B, T};
    b.ids = an_tensor_new(ctx, AN_I32, AN_CPU, 2, shape);
    b.labels = an_tensor_new(ctx, AN_I64, AN_CPU, 2, shape);
    b.positions = an_tensor_new(ctx, AN_I32, AN_CPU, 2, shape);
    b.segments = an_tensor_new(ctx, AN_I32, AN_CPU, 2, shape);
    if (!b.ids || !b.labels || !b.positions || !b.segments) {
        an_data_batch_release(&b);
        return an_error_status(ctx) != AN_OK ? an_error_status(ctx) : AN_ERR_INTERNAL;
    }
    int32_t *ids = an_tensor_data(b.ids), *pos = an_tensor_data(b.positions), *seg = an_tensor_data(b.segments);
    int64_t *labels = an_tensor_data(b.labels);
    an_status st = AN_OK;
    for (int64_t row = 0; st == AN_OK && row < B; row++)
        st = fill_row(ctx, l, l->cursor.position + row, ids + row * T, labels + row * T, pos + row * T, seg + row * T, &b);
    if (st != AN_OK) {
        an_data_batch_release(&b);
        return st;
    }
    l->cursor.position += B;
    if (l->cursor.position >= l->plan.n_rows) {
        b.epoch_end = true;
        l->cursor = (an_data_cursor){l->cursor.epoch + 1, 0, an_data_epoch_seed(l->opts.seed, l->cursor.epoch + 1)};
    }
    *out = b;
    return AN_OK;
}

an_status an_data_batch_to(an_ctx *ctx, an_data_batch *b, an_device device) {
    an_tensor **fields[4] = {&b->ids, &b->labels, &b->positions, &b->segments};
    an_tensor *moved[4] = {0};
    for (int i = 0; i < 4; i++) {
        an_tensor *t = *fields[i];
        moved[i] = !t || t->device == device ? an_tensor_retain(t) : an_tensor_to(ctx, t, t->dtype, device);
        if (t && !moved[i]) {
            for (int j = 0; j < i; j++) an_tensor_release(moved[j]);
            return an_error_status(ctx);
        }
    }
    for (int i = 0; i < 4; i++) {
        an_tensor_release(*fields[i]);
        *fields[i] = moved[i];
    }
    return AN_OK;
}
