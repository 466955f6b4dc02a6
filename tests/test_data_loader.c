/* test_data_loader.c — packing and batches on synthetic datasets whose every token id is unique (so a
 * row tells exactly which document tokens it holds): positions restart and segments differ per
 * document, labels follow the mask with the first token of each piece and all padding at -100, long
 * documents split into seq_len pieces, no token lost or repeated in an epoch, unpacked rows; the
 * shuffle is deterministic by seed and differs by epoch; the validation split is disjoint, sized and
 * stable; a restored cursor continues with the exact same batches; epoch ends pad the last batch. */
#include <stdlib.h>
#include <string.h>

#include "data/loader.h"
#include "support/data_util.h"
#include "support/files.h"
#include "support/test_util.h"

#define FIRST_ID 1000  /* token j of the dataset (in file order) has id FIRST_ID + j */
#define PAD 7

typedef struct {
    char dir[256];
    int64_t n_docs;
    int64_t *offset;   /* n_docs + 1 */
    uint8_t *mask;     /* n_tokens */
    int64_t n_tokens;
    an_dataset *ds;
} synth;

/* A dataset of documents with the given lengths, random masks (about 3 in 4 ones), pad id PAD. */
static void make_synth(an_ctx *ctx, synth *s, const int64_t *lens, int64_t n, uint64_t seed) {
    make_tmpdir(s->dir, sizeof s->dir);
    char path[512];
    join(path, sizeof path, s->dir, "d.h5");
    s->n_docs = n;
    s->offset = calloc((size_t)n + 1, sizeof *s->offset);
    for (int64_t i = 0; i < n; i++) s->offset[i + 1] = s->offset[i] + lens[i];
    s->n_tokens = s->offset[n];
    s->mask = malloc((size_t)s->n_tokens);
    an_rng rng;
    an_rng_init(&rng, seed);
    an_dataset_writer *w;
    ck_assert_int_eq(an_dataset_writer_open(ctx, path, &w), AN_OK);
    for (int64_t i = 0; i < n; i++) {
        int32_t *ids = malloc((size_t)lens[i] * sizeof *ids);
        for (int64_t j = 0; j < lens[i]; j++) {
            ids[j] = (int32_t)(FIRST_ID + s->offset[i] + j);
            s->mask[s->offset[i] + j] = an_rng_u64(&rng) % 4 != 0;
        }
        ck_assert_int_eq(an_dataset_writer_add(ctx, w, ids, s->mask + s->offset[i], lens[i]), AN_OK);
        free(ids);
    }
    an_dataset_info info = {.bos_id = -1, .eos_id = 3, .pad_id = PAD, .vocab_size = 1 << 30};
    ck_assert_int_eq(an_dataset_writer_commit(ctx, w, &info), AN_OK);
    ck_assert_msg(an_dataset_open(ctx, path, NULL, &s->ds) == AN_OK, "%s", an_error_message(ctx));
}

static void free_synth(synth *s) {
    an_dataset_free(s->ds);
    free(s->offset), free(s->mask);
    remove_tree(s->dir);
}

static int64_t doc_of(const synth *s, int64_t token) {
    int64_t lo = 0, hi = s->n_docs - 1;
    while (lo < hi) {
        int64_t mid = (lo + hi + 1) / 2;
        if (s->offset[mid] <= token) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

static an_data_loader *loader(an_ctx *ctx, synth *s, const int64_t *docs, int64_t n, int64_t T, int64_t B,
                              bool packing, bool shuffle, int64_t seed) {
    an_data_loader_opts o = {.seq_len = T, .micro_batch = B, .packing = packing, .shuffle = shuffle, .seed = seed};
    an_data_loader *l = NULL;
    ck_assert_msg(an_data_loader_new(ctx, s->ds, docs, n, &o, &l) == AN_OK, "%s", an_error_message(ctx));
    return l;
}

typedef struct {
    int64_t pieces, pad_rows, loss_tokens, tokens;
    int *seen;  /* n_tokens counters */
    int64_t first_token_of_first_piece;  /* of the first row checked, -1 before */
} tally;

/* Checks every rule of one row and counts what it holds. */
static void check_row(const synth *s, const int32_t *ids, const int64_t *labels, const int32_t *pos,
                      const int32_t *seg, int64_t T, bool packing, tally *t) {
    int64_t i = 0, pieces = 0;
    while (i < T && ids[i] >= FIRST_ID) {  /* one piece: consecutive tokens of one document */
        int64_t start = i, token = ids[i] - FIRST_ID, doc = doc_of(s, token);
        ck_assert_msg((token - s->offset[doc]) % T == 0, "a piece starts at token %lld of its document, not a "
                      "multiple of seq_len %lld", (long long)(token - s->offset[doc]), (long long)T);
        if (t->first_token_of_first_piece < 0) t->first_token_of_first_piece = token;
        while (i < T && ids[i] >= FIRST_ID && ids[i] - FIRST_ID == token + (i - start) &&
               token + (i - start) < s->offset[doc + 1] && (i == start || pos[i] != 0)) {
            int64_t k = token + (i - start);
            ck_assert_int_eq(pos[i], i - start);
            ck_assert_int_eq(seg[i], pieces);
            int64_t want = i > start && s->mask[k] ? ids[i] : -100;
            ck_assert_msg(labels[i] == want, "label %lld at %lld, expected %lld", (long long)labels[i], (long long)i,
                          (long long)want);
            t->seen[k]++;
            t->loss_tokens += labels[i] != -100;
            t->tokens++;
            i++;
        }
        pieces++;
    }
    ck_assert(!packing ? pieces <= 1 : true);
    if (i == 0) t->pad_rows++;
    for (int64_t j = i; j < T; j++) {  /* padding: its own segment, never a target */
        ck_assert_int_eq(ids[j], PAD);
        ck_assert_int_eq(labels[j], -100);
        ck_assert_int_eq(seg[j], pieces);
        ck_assert_int_eq(pos[j], j - i);
    }
    t->pieces += pieces;
}

/* Runs one epoch from the loader's cursor; checks every batch; returns the batches. */
static int64_t run_epoch(an_ctx *ctx, an_data_loader *l, const synth *s, int64_t T, int64_t B, bool packing,
                         tally *t) {
    int64_t batches = 0;
    for (;;) {
        an_data_batch b;
        ck_assert_msg(an_data_loader_next(ctx, l, &b) == AN_OK, "%s", an_error_message(ctx));
        ck_assert_int_eq(b.ids->shape[0], B);
        ck_assert_int_eq(b.ids->shape[1], T);
        ck_assert(b.ids->dtype == AN_I32 && b.labels->dtype == AN_I64 && b.positions->dtype == AN_I32 &&
                  b.segments->dtype == AN_I32);
        int64_t loss_before = t->loss_tokens, tokens_before = t->tokens;
        for (int64_t r = 0; r < B; r++)
            check_row(s, (int32_t *)an_tensor_data(b.ids) + r * T, (int64_t *)an_tensor_data(b.labels) + r * T,
                      (int32_t *)an_tensor_data(b.positions) + r * T, (int32_t *)an_tensor_data(b.segments) + r * T,
                      T, packing, t);
        ck_assert_int_eq(b.loss_tokens, t->loss_tokens - loss_before);
        ck_assert_int_eq(b.tokens, t->tokens - tokens_before);
        bool end = b.epoch_end;
        an_data_batch_release(&b);
        batches++;
        if (end) return batches;
        ck_assert_int_lt(batches, 100000);
    }
}

static const int64_t lengths[] = {5, 16, 40, 1, 3, 17, 9, 31, 2, 8, 8, 12, 33, 4, 6, 15, 7, 64, 11, 2, 1, 9, 10};
#define N_LENGTHS ((int64_t)(sizeof lengths / sizeof *lengths))

START_TEST(test_packed_rows_restart_positions_keep_documents_apart_and_lose_no_token) {
    an_ctx *ctx = test_ctx(1);
    synth s;
    make_synth(ctx, &s, lengths, N_LENGTHS, 11);
    const int64_t T = 16, B = 3;
    an_data_loader *l = loader(ctx, &s, NULL, 0, T, B, true, true, 5);
    int64_t expected_pieces = 0, expected_loss = 0;
    for (int64_t i = 0; i < N_LENGTHS; i++) {
        expected_pieces += (lengths[i] + T - 1) / T;
        for (int64_t j = 0; j < lengths[i]; j++) expected_loss += j % T != 0 && s.mask[s.offset[i] + j];
    }
    for (int epoch = 0; epoch < 2; epoch++) {
        tally t = {.seen = calloc((size_t)s.n_tokens, sizeof(int)), .first_token_of_first_piece = -1};
        int64_t rows, batches;
        ck_assert_int_eq(an_data_loader_rows_in_epoch(ctx, l, epoch, &rows), AN_OK);
        ck_assert_int_eq(an_data_loader_batches_in_epoch(ctx, l, epoch, &batches), AN_OK);
        ck_assert_int_eq(run_epoch(ctx, l, &s, T, B, true, &t), batches);
        for (int64_t k = 0; k < s.n_tokens; k++)
            ck_assert_msg(t.seen[k] == 1, "epoch %d: token %lld seen %d times", epoch, (long long)k, t.seen[k]);
        ck_assert_int_eq(t.pieces, expected_pieces);
        ck_assert_int_eq(t.loss_tokens, expected_loss);
        ck_assert_int_eq(t.tokens, s.n_tokens);
        ck_assert_int_eq(t.pad_rows, batches * B - rows);
        /* packing fills rows: fewer rows than pieces, at least the token count allows */
        ck_assert_int_lt(rows, expected_pieces);
        ck_assert_int_ge(rows, (s.n_tokens + T - 1) / T);
        an_data_cursor c = an_data_loader_cursor(l);
        ck_assert_int_eq(c.epoch, epoch + 1);
        ck_assert_int_eq(c.position, 0);
        ck_assert_int_eq(c.shuffle_seed, an_data_epoch_seed(5, epoch + 1));
        free(t.seen);
    }
    an_data_loader_free(l);
    free_synth(&s);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_unpacked_rows_hold_one_piece_right_padded) {
    an_ctx *ctx = test_ctx(1);
    synth s;
    make_synth(ctx, &s, lengths, N_LENGTHS, 12);
    const int64_t T = 16, B = 4;
    an_data_loader *l = loader(ctx, &s, NULL, 0, T, B, false, false, 5);
    tally t = {.seen = calloc((size_t)s.n_tokens, sizeof(int)), .first_token_of_first_piece = -1};
    int64_t rows, pieces = 0;
    for (int64_t i = 0; i < N_LENGTHS; i++) pieces += (lengths[i] + T - 1) / T;
    ck_assert_int_eq(an_data_loader_rows_in_epoch(ctx, l, 0, &rows), AN_OK);
    ck_assert_int_eq(rows, pieces);  /* one row per piece: 40 tokens are rows of 16, 16 and 8 */
    run_epoch(ctx, l, &s, T, B, false, &t);
    ck_assert_int_eq(t.pieces, pieces);
    for (int64_t k = 0; k < s.n_tokens; k++) ck_assert_int_eq(t.seen[k], 1);
    ck_assert_int_eq(t.first_token_of_first_piece, 0);  /* no shuffle: document order */
    free(t.seen);
    an_data_loader_free(l);
    free_synth(&s);
    test_ctx_free(ctx);
}
END_TEST

/* The ids of the next `n` batches, concatenated (malloc'd). */
static int32_t *take_ids(an_ctx *ctx, an_data_loader *l, int n, int64_t T, int64_t B, bool *crossed) {
    int32_t *out = malloc((size_t)(n * B * T) * sizeof *out);
    for (int i = 0; i < n; i++) {
        an_data_batch b;
        ck_assert_int_eq(an_data_loader_next(ctx, l, &b), AN_OK);
        memcpy(out + i * B * T, an_tensor_data(b.ids), (size_t)(B * T) * sizeof *out);
        if (crossed) *crossed |= b.epoch_end;
        an_data_batch_release(&b);
    }
    return out;
}

START_TEST(test_shuffle_is_deterministic_by_seed_and_differs_by_epoch) {
    an_ctx *ctx = test_ctx(1);
    synth s;
    make_synth(ctx, &s, lengths, N_LENGTHS, 13);
    const int64_t T = 16, B = 2;
    int64_t batches;
    an_data_loader *a = loader(ctx, &s, NULL, 0, T, B, true, true, 42);
    an_data_loader *b = loader(ctx, &s, NULL, 0, T, B, true, true, 42);
    an_data_loader *c = loader(ctx, &s, NULL, 0, T, B, true, true, 43);
    ck_assert_int_eq(an_data_loader_batches_in_epoch(ctx, a, 0, &batches), AN_OK);
    int n = (int)batches;
    int32_t *a0 = take_ids(ctx, a, n, T, B, NULL), *b0 = take_ids(ctx, b, n, T, B, NULL);
    int32_t *c0 = take_ids(ctx, c, n, T, B, NULL);
    ck_assert(memcmp(a0, b0, (size_t)(n * B * T) * sizeof *a0) == 0);
    ck_assert(memcmp(a0, c0, (size_t)(n * B * T) * sizeof *a0) != 0);
    ck_assert_int_eq(an_data_loader_cursor(a).epoch, 1);
    int64_t batches1;
    ck_assert_int_eq(an_data_loader_batches_in_epoch(ctx, a, 1, &batches1), AN_OK);
    int n1 = (int)(batches1 < batches ? batches1 : batches);
    int32_t *a1 = take_ids(ctx, a, n1, T, B, NULL), *b1 = take_ids(ctx, b, n1, T, B, NULL);
    ck_assert(memcmp(a1, b1, (size_t)(n1 * B * T) * sizeof *a1) == 0);
    ck_assert(memcmp(a0, a1, (size_t)(n1 * B * T) * sizeof *a1) != 0);

    /* an_data_shuffle is a permutation, a function of (seed, epoch) */
    int64_t p[50], q[50], r[50];
    an_data_shuffle(p, 50, 9, 0), an_data_shuffle(q, 50, 9, 0), an_data_shuffle(r, 50, 9, 1);
    int hits[50] = {0};
    for (int i = 0; i < 50; i++) hits[p[i]]++;
    for (int i = 0; i < 50; i++) ck_assert_int_eq(hits[i], 1);
    ck_assert(memcmp(p, q, sizeof p) == 0);
    ck_assert(memcmp(p, r, sizeof p) != 0);
    free(a0), free(b0), free(c0), free(a1), free(b1);
    an_data_loader_free(a), an_data_loader_free(b), an_data_loader_free(c);
    free_synth(&s);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_validation_split_is_disjoint_sized_and_stable) {
    an_ctx *ctx = test_ctx(1);
    static const struct { int64_t n; double fraction; int64_t want; } cases[] = {
        {101, 0.1, 10}, {1000, 0.01, 10}, {7, 0.001, 1}, {2, 0.5, 1}, {5, 0.0, 0}, {3, 0.34, 1}};
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        int64_t *t1, *v1, nt1, nv1, *t2, *v2, nt2, nv2, *t3, *v3, nt3, nv3;
        ck_assert_int_eq(an_data_split(ctx, cases[k].n, cases[k].fraction, 3, &t1, &nt1, &v1, &nv1), AN_OK);
        ck_assert_int_eq(an_data_split(ctx, cases[k].n, cases[k].fraction, 3, &t2, &nt2, &v2, &nv2), AN_OK);
        ck_assert_int_eq(an_data_split(ctx, cases[k].n, cases[k].fraction, 4, &t3, &nt3, &v3, &nv3), AN_OK);
        ck_assert_int_eq(nv1, cases[k].want);
        ck_assert_int_eq(nt1 + nv1, cases[k].n);
        char *owner = calloc((size_t)cases[k].n, 1);
        for (int64_t i = 0; i < nt1; i++) owner[t1[i]] += 1;
        for (int64_t i = 0; i < nv1; i++) owner[v1[i]] += 2;
        for (int64_t i = 0; i < cases[k].n; i++) ck_assert_msg(owner[i] == 1 || owner[i] == 2, "doc %lld", (long long)i);
        for (int64_t i = 1; i < nv1; i++) ck_assert_int_lt(v1[i - 1], v1[i]);
        ck_assert_int_eq(nv2, nv1);
        ck_assert(nv1 == 0 || memcmp(v1, v2, (size_t)nv1 * sizeof *v1) == 0);
        if (cases[k].n >= 100) ck_assert(memcmp(v1, v3, (size_t)nv1 * sizeof *v1) != 0);  /* seed matters */
        free(owner), free(t1), free(v1), free(t2), free(v2), free(t3), free(v3);
    }
    int64_t *t, *v, nt, nv;
    an_status st = an_data_split(ctx, 1, 0.5, 3, &t, &nt, &v, &nv);
    EXPECT_INPUT_ERROR(ctx, st, "one document", "validation_fraction", "no training document");
    st = an_data_split(ctx, 10, 1.0, 3, &t, &nt, &v, &nv);
    EXPECT_INPUT_ERROR(ctx, st, "fraction 1", "[0, 1)");
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_loaders_over_a_split_see_only_their_documents) {
    an_ctx *ctx = test_ctx(1);
    synth s;
    make_synth(ctx, &s, lengths, N_LENGTHS, 14);
    int64_t *train, *val, nt, nv;
    ck_assert_int_eq(an_data_split(ctx, s.n_docs, 0.2, 8, &train, &nt, &val, &nv), AN_OK);
    const int64_t T = 8, B = 2;
    an_data_loader *lt = loader(ctx, &s, train, nt, T, B, true, true, 8);
    an_data_loader *lv = loader(ctx, &s, val, nv, T, B, true, false, 8);
    ck_assert_int_eq(an_data_loader_documents(lv), nv);
    tally tt = {.seen = calloc((size_t)s.n_tokens, sizeof(int)), .first_token_of_first_piece = -1};
    tally tv = {.seen = calloc((size_t)s.n_tokens, sizeof(int)), .first_token_of_first_piece = -1};
    run_epoch(ctx, lt, &s, T, B, true, &tt);
    run_epoch(ctx, lv, &s, T, B, true, &tv);
    char *is_val = calloc((size_t)s.n_docs, 1);
    for (int64_t i = 0; i < nv; i++) is_val[val[i]] = 1;
    for (int64_t k = 0; k < s.n_tokens; k++) {
        int64_t d = doc_of(&s, k);
        ck_assert_int_eq(tt.seen[k], is_val[d] ? 0 : 1);
        ck_assert_int_eq(tv.seen[k], is_val[d] ? 1 : 0);
    }
    /* evaluation passes start over */
    an_data_loader_rewind(lv);
    ck_assert_int_eq(an_data_loader_cursor(lv).epoch, 0);
    ck_assert_int_eq(an_data_loader_cursor(lv).position, 0);
    free(is_val), free(tt.seen), free(tv.seen), free(train), free(val);
    an_data_loader_free(lt), an_data_loader_free(lv);
    free_synth(&s);
    test_ctx_free(ctx);
}
END_TEST

/* Every tensor of the next n batches, and their counts, as bytes (malloc'd). */
static unsigned char *take_all(an_ctx *ctx, an_data_loader *l, int n, size_t *size) {
    size_t cap = 1 << 16, used = 0;
    unsigned char *out = malloc(cap);
    for (int i = 0; i < n; i++) {
        an_data_batch b;
        ck_assert_int_eq(an_data_loader_next(ctx, l, &b), AN_OK);
        an_tensor *ts[4] = {b.ids, b.labels, b.positions, b.segments};
        for (int k = 0; k < 5; k++) {
            const void *p = k < 4 ? an_tensor_data(ts[k]) : (const void *)&b.loss_tokens;
            size_t n_bytes = k < 4 ? an_tensor_nbytes(ts[k]) : sizeof b.loss_tokens;
            while (used + n_bytes + 16 > cap) out = realloc(out, cap *= 2);
            memcpy(out + used, p, n_bytes);
            used += n_bytes;
        }
        memcpy(out + used, &b.epoch, sizeof b.epoch);
        used += sizeof b.epoch;
        out[used++] = b.epoch_end;
        an_data_batch_release(&b);
    }
    *size = used;
    return out;
}

START_TEST(test_a_restored_cursor_continues_with_the_same_batches) {
    an_ctx *ctx = test_ctx(1);
    synth s;
    make_synth(ctx, &s, lengths, N_LENGTHS, 15);
    const int64_t T = 12, B = 3;
    for (int packing = 0; packing < 2; packing++) {
        an_data_loader *a = loader(ctx, &s, NULL, 0, T, B, packing, true, 21);
        int32_t *skip = take_ids(ctx, a, 5, T, B, NULL);
        free(skip);
        an_data_cursor saved = an_data_loader_cursor(a);
        int64_t batches;
        ck_assert_int_eq(an_data_loader_batches_in_epoch(ctx, a, 0, &batches), AN_OK);
        int n = (int)batches + 7;  /* runs into the next epochs */
        size_t size_a, size_b;
        unsigned char *after_a = take_all(ctx, a, n, &size_a);

        an_data_loader *b = loader(ctx, &s, NULL, 0, T, B, packing, true, 21);
        ck_assert_int_eq(an_data_loader_seek(ctx, b, saved), AN_OK);
        unsigned char *after_b = take_all(ctx, b, n, &size_b);
        ck_assert_uint_eq(size_a, size_b);
        ck_assert(memcmp(after_a, after_b, size_a) == 0);
        ck_assert(an_data_loader_cursor(a).epoch == an_data_loader_cursor(b).epoch &&
                  an_data_loader_cursor(a).position == an_data_loader_cursor(b).position);

        an_status st = an_data_loader_seek(ctx, b, (an_data_cursor){0, 0, an_data_epoch_seed(22, 0)});
        EXPECT_INPUT_ERROR(ctx, st, "other seed", "shuffle seed", "seed 21", "cannot change");
        int64_t rows;
        ck_assert_int_eq(an_data_loader_rows_in_epoch(ctx, b, 3, &rows), AN_OK);
        st = an_data_loader_seek(ctx, b, (an_data_cursor){3, rows, an_data_epoch_seed(21, 3)});
        EXPECT_INPUT_ERROR(ctx, st, "past the epoch", "epoch 3", "dataset changed");
        free(after_a), free(after_b);
        an_data_loader_free(a), an_data_loader_free(b);
    }
    free_synth(&s);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_the_last_batch_of_an_epoch_is_filled_with_padding_rows) {
    an_ctx *ctx = test_ctx(1);
    const int64_t lens[] = {4, 4, 4, 4, 4};
    synth s;
    make_synth(ctx, &s, lens, 5, 16);
    an_data_loader *l = loader(ctx, &s, NULL, 0, 4, 2, false, false, 1);  /* 5 rows, batches of 2 */
    int64_t batches;
    ck_assert_int_eq(an_data_loader_batches_in_epoch(ctx, l, 0, &batches), AN_OK);
    ck_assert_int_eq(batches, 3);
    for (int i = 0; i < 3; i++) {
        an_data_batch b;
        ck_assert_int_eq(an_data_loader_next(ctx, l, &b), AN_OK);
        ck_assert_int_eq(b.epoch, 0);
        ck_assert_int_eq(b.position, 2 * i);
        ck_assert(b.epoch_end == (i == 2));
        ck_assert_int_eq(b.tokens, i == 2 ? 4 : 8);
        if (i == 2)
            for (int64_t k = 4; k < 8; k++) {
                ck_assert_int_eq(an_tensor_get(b.ids, k), PAD);
                ck_assert_int_eq(an_tensor_get(b.labels, k), -100);
            }
        an_data_batch_release(&b);
    }
    an_data_batch b;
    ck_assert_int_eq(an_data_loader_next(ctx, l, &b), AN_OK);
    ck_assert_int_eq(b.epoch, 1);
    ck_assert_int_eq(an_tensor_get(b.ids, 0), FIRST_ID);
    an_data_batch_release(&b);

    an_data_loader_opts bad = {.seq_len = 1, .micro_batch = 1};
    an_data_loader *none;
    an_status st = an_data_loader_new(ctx, s.ds, NULL, 0, &bad, &none);
    EXPECT_INPUT_ERROR(ctx, st, "seq_len 1", "seq_len = 1");
    an_data_loader_free(l);
    free_synth(&s);
    test_ctx_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("data_loader");
    TCase *tc = tcase_create("loader");
    tcase_add_test(tc, test_packed_rows_restart_positions_keep_documents_apart_and_lose_no_token);
    tcase_add_test(tc, test_unpacked_rows_hold_one_piece_right_padded);
    tcase_add_test(tc, test_shuffle_is_deterministic_by_seed_and_differs_by_epoch);
    tcase_add_test(tc, test_validation_split_is_disjoint_sized_and_stable);
    tcase_add_test(tc, test_loaders_over_a_split_see_only_their_documents);
    tcase_add_test(tc, test_a_restored_cursor_continues_with_the_same_batches);
    tcase_add_test(tc, test_the_last_batch_of_an_epoch_is_filled_with_padding_rows);
    suite_add_tcase(s, tc);
    return test_run(s);
}
