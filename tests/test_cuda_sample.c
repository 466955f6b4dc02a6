/* test_cuda_sample.c — choosing tokens on the GPU (kernels/sample.cu through an_sample_rows)
 * against the CPU reference (an_sample_token) on the same random logits, and generation on the
 * GPU against generation on the CPU.
 *
 * Sampling: for each dtype (f32, bf16: bf16 logits tie often, which exercises the tie order) and
 * vocabulary size (1, 2, 1009, 50000, and the 1.5B model's 151936), random logits in [-4, 4) (never
 * all equal), greedy and several temperature / top-k / top-p / vocab_limit settings (top_p x top_k
 * never a whole number: with bf16 ties the top-k tokens can weigh exactly alike, and whether
 * top_p * mass is reached at a whole count is then a rounding of the two sums' last bits, which
 * the CPU's doubles and the GPU's integers settle differently): the GPU's ids
 * equal the CPU's exactly for every row, both contexts' RNG offsets advance alike, and the GPU run
 * repeated from the same RNG state gives the same ids. Greedy ties go to the lowest id, NaN as
 * the CPU's argmax treats it, and rows of 151936 logits split over many blocks agree with the CPU.
 * The same comparison on logits that stress kernels/sample.cu's paths: normal logits (the bench's),
 * a dozen distinct values (ties in bins larger than the shared-memory list: resolved from the row),
 * every logit equal, f32 logits all in one narrow bin (distinct, one bin), at vocabularies 151936,
 * 151935 (rows not 16-byte aligned), 12289, 7 and 3, batch 1 and more, with top-k beyond the number
 * of distinct logits, top-p near 0 and near 1, temperatures 0.05 to 2.5 and a vocab limit
 * (top_p x top_k and top_p x V never near a whole number, for the reason above).
 * Generation: the tiny Qwen2 and Llama fixtures in f32, prompts of different and of equal lengths
 * (batched prefill, one strided KV-cache write per run of rows), greedy and sampled with one seed,
 * and an eos that stops one row early: the GPU's tokens equal the CPU's token for token.
 * Without a GPU (or in a build without CUDA) every test prints SKIP and passes. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/generate.h"
#include "model/load.h"
#include "support/test_util.h"


/* ids (B) from an_sample_rows on logits (a tensor of either device) with ctx's RNG at `offset`. */
static void pick(an_ctx *ctx, an_tensor *logits, const an_generate_opts *o, uint64_t offset, int32_t *ids) {
    an_rng_init(&ctx->rng, 77);
    ctx->rng.offset = offset;
    an_tensor *dev = NULL;
    if (logits->device == AN_CUDA) dev = test_poisoned_gpu(ctx, AN_I32, 1, (int64_t[]){logits->shape[0]});
    test_ok(ctx, an_sample_rows(ctx, logits, o, dev, ids), "an_sample_rows");
    if (dev) { /* the device copy holds the same ids */
        an_tensor *h = an_tensor_to(ctx, dev, AN_I32, AN_CPU);
        ck_assert_ptr_nonnull(h);
        ck_assert(memcmp(an_tensor_data(h), ids, (size_t)logits->shape[0] * sizeof *ids) == 0);
        an_tensor_release(h);
    }
    an_tensor_release(dev);
}

typedef struct {
    double temperature;
    int64_t top_k;
    double top_p;
    int64_t vocab_limit;
} setting;

/* For each setting that fits the vocabulary of cpu / gpu (the same logits, rows <= 16): the GPU's
 * ids equal the CPU's row for row, the GPU run repeated from the same RNG state gives the same ids,
 * both runs advance the RNG offset alike, and every id lies below the vocab limit. Setting s draws
 * from counter offset seed0 + s * seed_step. Returns the rows compared; *distinct (may be NULL)
 * gains the rows whose id differs from row 0's. */
static int64_t compare_settings(an_ctx *ctx, const char *what, an_tensor *cpu, an_tensor *gpu, const setting *settings,
                                size_t n_settings, uint64_t seed0, uint64_t seed_step, int64_t *distinct) {
    int64_t rows = cpu->shape[0], V = cpu->shape[1], checked = 0;
    ck_assert(rows <= 16);
    for (size_t s = 0; s < n_settings; s++) {
        const setting *c = &settings[s];
        if (c->vocab_limit >= V) continue;
        an_generate_opts o = {.temperature = c->temperature, .top_k = c->top_k, .top_p = c->top_p,
                              .vocab_limit = c->vocab_limit};
        int32_t want[16], got[16], again[16];
        uint64_t seed = seed0 + seed_step * (uint64_t)s;
        pick(ctx, cpu, &o, seed, want);
        uint64_t cpu_offset = ctx->rng.offset;
        pick(ctx, gpu, &o, seed, got);
        ck_assert_uint_eq(ctx->rng.offset, cpu_offset);
        pick(ctx, gpu, &o, seed, again);
        int64_t allowed = c->vocab_limit ? c->vocab_limit : V;
        for (int64_t r = 0; r < rows; r++) {
            ck_assert_msg(got[r] == want[r], "%s %s V %lld setting %zu (T %g, k %lld, p %g, limit %lld) row %lld: "
                          "GPU id %d, CPU id %d", what, an_dtype_name(cpu->dtype), (long long)V, s, c->temperature,
                          (long long)c->top_k, c->top_p, (long long)c->vocab_limit, (long long)r, got[r], want[r]);
            ck_assert_int_eq(again[r], got[r]);
            ck_assert(got[r] >= 0 && got[r] < allowed);
            checked++;
            if (distinct) *distinct += r > 0 && got[r] != got[0];
        }
    }
    return checked;
}

START_TEST(test_gpu_sampling_equals_the_cpu_reference_on_random_logits) {
    an_ctx *ctx = test_gpu_ctx(1, "cuda sampling");
    if (!ctx) return;
    const an_dtype dtypes[] = {AN_F32, AN_BF16};
    const int64_t vocabs[] = {1, 2, 1009, 50000, 151936};
    const setting settings[] = {
        {0.0, 0, 1.0, 0},    {1.0, 0, 1.0, 0},   {0.7, 40, 1.0, 0},  {1.3, 0, 0.9, 0},
        {0.8, 100, 0.805, 0},  {1.0, 1, 1.0, 0},   {2.0, 5, 0.5, 0},   {1.0, 0, 0.999, 700},
        {0.5, 3000, 1.0, 0}, {1.0, 0, 0.05, 0},
    };
    int64_t rows = 6, checked = 0, distinct_draws = 0;
    for (int d = 0; d < 2; d++) {
        for (int v = 0; v < 5; v++) {
            int64_t V = vocabs[v];
            an_tensor *cpu = test_uniform(ctx, dtypes[d], 2, (int64_t[]){rows, V}, -4.0, 4.0, false);
            an_tensor *gpu = an_tensor_to(ctx, cpu, dtypes[d], AN_CUDA);
            ck_assert_ptr_nonnull(gpu);
            checked += compare_settings(ctx, "random", cpu, gpu, settings, sizeof settings / sizeof *settings, 1000, 1,
                                        &distinct_draws);
            an_tensor_release(gpu), an_tensor_release(cpu);
        }
    }
    printf("cuda sampling: %lld rows equal to the CPU reference\n", (long long)checked);
    ck_assert_int_gt(distinct_draws, 0); /* rows really differ: the comparison can fail */
    test_ctx_free(ctx);
}
END_TEST

/* Logits of one of the stress patterns (f32 made, then rounded to dtype), a fixed stream a case. */
enum { NORMAL, FEW_VALUES, ALL_EQUAL, NARROW };

static double unit(uint64_t *st) { /* (0, 1] */
    *st = *st * 6364136223846793005ull + 1442695040888963407ull;
    return ((double)(*st >> 11) + 1.0) * 0x1.0p-53;
}

static an_tensor *patterned(an_ctx *ctx, an_dtype dtype, int64_t rows, int64_t V, int pattern) {
    an_tensor *f = test_uniform(ctx, AN_F32, 2, (int64_t[]){rows, V}, -4.0, 4.0, false);
    float *x = an_tensor_data(f);
    uint64_t st = 0x9e3779b97f4a7c15ull ^ (uint64_t)(V * 131 + pattern * 7 + rows);
    for (int64_t i = 0; i < rows * V; i++) {
        double u1 = unit(&st), u2 = unit(&st);
        if (pattern == NORMAL) x[i] = (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
        else if (pattern == FEW_VALUES) x[i] = (float)(floor(u1 * 11.999) / 4.0 - 1.0); /* 12 values, 0 included */
        else if (pattern == ALL_EQUAL) x[i] = 0.75f;
        else x[i] = (float)(1.0 + 0.2499 * u1); /* [1, 1.25): one bin of the key's top 11 bits */
    }
    an_tensor *t = an_tensor_to(ctx, f, dtype, AN_CPU);
    ck_assert_ptr_nonnull(t);
    an_tensor_release(f);
    return t;
}

START_TEST(test_gpu_sampling_stress_equals_the_cpu_reference) {
    an_ctx *ctx = test_gpu_ctx(4, "cuda sampling stress");
    if (!ctx) return;
    static const char *names[] = {"normal", "few values", "all equal", "narrow"};
    const struct {
        int pattern;
        int64_t V, rows;
    } cases[] = {
        {NORMAL, 151936, 3}, {NORMAL, 151935, 1}, {FEW_VALUES, 151936, 2}, {ALL_EQUAL, 151936, 2},
        {NARROW, 151936, 2}, {NORMAL, 12289, 9},  {FEW_VALUES, 7, 9},      {NORMAL, 3, 5},
    };
    const setting settings[] = {
        {1.0, 51, 0.9, 0},   {1.0, 0, 0.9, 0},    {1.0, 0, 1.0, 0},         {0.6, 0, 0.97, 0},
        {1.7, 0, 0.35, 0},   {1.0, 0, 0.001, 0},  {1.0, 0, 0.9999, 0},      {0.3, 37, 0.53, 0},
        {2.5, 19999, 0.77, 100003}, {0.05, 0, 0.9, 0}, {1.3, 200, 1.0, 0},
    };
    const an_dtype dtypes[] = {AN_F32, AN_BF16};
    int64_t checked = 0;
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++)
        for (int d = 0; d < 2; d++) {
            int64_t V = cases[ci].V, rows = cases[ci].rows;
            an_tensor *cpu = patterned(ctx, dtypes[d], rows, V, cases[ci].pattern);
            an_tensor *gpu = an_tensor_to(ctx, cpu, dtypes[d], AN_CUDA);
            ck_assert_ptr_nonnull(gpu);
            checked += compare_settings(ctx, names[cases[ci].pattern], cpu, gpu, settings,
                                        sizeof settings / sizeof *settings, 500, 17, NULL);
            an_tensor_release(gpu), an_tensor_release(cpu);
        }
    printf("cuda sampling stress: %lld rows equal to the CPU reference\n", (long long)checked);
    test_ctx_free(ctx);
}
END_TEST

START_TEST(test_gpu_greedy_ties_go_to_the_lowest_id) {
    an_ctx *ctx = test_gpu_ctx(2, "cuda sampling ties");
    if (!ctx) return;
    /* 3001 logits: element loads; 3008 (rows 16-byte aligned for f32 and bf16): 16-byte packs */
    const int64_t Vs[] = {3001, 3008};
    const an_dtype dtypes[] = {AN_F32, AN_BF16};
    for (int vi = 0; vi < 2; vi++)
        for (int di = 0; di < 2; di++) {
            int64_t V = Vs[vi];
            an_tensor *cpu = test_uniform(ctx, AN_F32, 2, (int64_t[]){4, V}, -4.0, 4.0, false);
            float *x = an_tensor_data(cpu);
            /* row 0: the maximum at V-2 and 17; row 1: at 0 and V-1; row 2: at 1500, 1501 and 1502
             * (one pack); row 3: at 1503 and 1496 (one bf16 pack, two f32 packs) */
            x[V - 2] = x[17] = 9.0f;
            x[V + 0] = x[V + V - 1] = 9.0f;
            x[2 * V + 1500] = x[2 * V + 1501] = x[2 * V + 1502] = 9.0f;
            x[3 * V + 1503] = x[3 * V + 1496] = 9.0f;
            an_tensor *typed = an_tensor_to(ctx, cpu, dtypes[di], AN_CPU); /* the ties survive the rounding */
            an_tensor *gpu = an_tensor_to(ctx, typed, dtypes[di], AN_CUDA);
            an_generate_opts o = {.temperature = 0.0, .top_p = 1.0};
            int32_t want[4], got[4];
            pick(ctx, typed, &o, 0, want);
            pick(ctx, gpu, &o, 0, got);
            ck_assert_int_eq(want[0], 17);
            ck_assert_int_eq(want[1], 0);
            ck_assert_int_eq(want[2], 1500);
            ck_assert_int_eq(want[3], 1496);
            for (int r = 0; r < 4; r++)
                ck_assert_msg(got[r] == want[r], "V %lld %s row %d: %d, expected %d", (long long)V,
                              an_dtype_name(dtypes[di]), r, got[r], want[r]);
            /* a vocab limit that ends mid-pack: ids past the last whole pack go one by one */
            x[V - 3] = 10.0f, x[V - 1] = 11.0f; /* row 0: 11 is outside the limit, 10 inside */
            an_tensor_release(gpu), an_tensor_release(typed);
            typed = an_tensor_to(ctx, cpu, dtypes[di], AN_CPU), gpu = an_tensor_to(ctx, typed, dtypes[di], AN_CUDA);
            o.vocab_limit = V - 2;
            pick(ctx, typed, &o, 0, want);
            pick(ctx, gpu, &o, 0, got);
            ck_assert_int_eq(want[0], V - 3);
            for (int r = 0; r < 4; r++)
                ck_assert_msg(got[r] == want[r], "V %lld %s limit %lld row %d: %d, expected %d", (long long)V,
                              an_dtype_name(dtypes[di]), (long long)(V - 2), r, got[r], want[r]);
            /* NaN as the CPU's argmax treats it: skipped (row 0: NaN at 3 and 2000, the maximum 11
             * at V - 1), except at id 0 (row 1) or everywhere (row 2): id 0 */
            x[3] = x[2000] = NAN;
            x[V + 0] = NAN;
            for (int64_t i = 0; i < V; i++) x[2 * V + i] = NAN;
            an_tensor_release(gpu), an_tensor_release(typed);
            typed = an_tensor_to(ctx, cpu, dtypes[di], AN_CPU), gpu = an_tensor_to(ctx, typed, dtypes[di], AN_CUDA);
            o.vocab_limit = 0;
            pick(ctx, typed, &o, 0, want);
            pick(ctx, gpu, &o, 0, got);
            ck_assert_int_eq(want[0], V - 1);
            ck_assert_int_eq(want[1], 0);
            ck_assert_int_eq(want[2], 0);
            for (int r = 0; r < 4; r++)
                ck_assert_msg(got[r] == want[r], "V %lld %s NaN row %d: %d, expected %d", (long long)V,
                              an_dtype_name(dtypes[di]), r, got[r], want[r]);
            an_tensor_release(gpu), an_tensor_release(typed), an_tensor_release(cpu);
        }
    test_ctx_free(ctx);
}
END_TEST

/* Greedy over the 1.5B model's vocabulary (151936 logits: 32 slices a row at batch 1) at batch 1,
 * 3 and 40 (slices of other widths), the maximum placed in every slice in turn and ties across
 * slices, against the CPU. */
START_TEST(test_gpu_greedy_wide_rows_match_cpu) {
    an_ctx *ctx = test_gpu_ctx(4, "cuda greedy wide rows");
    if (!ctx) return;
    const int64_t V = 151936, Bs[] = {1, 3, 40};
    for (int bi = 0; bi < 3; bi++) {
        int64_t B = Bs[bi];
        an_tensor *cpu = test_uniform(ctx, AN_F32, 2, (int64_t[]){B, V}, -4.0, 4.0, false);
        float *x = an_tensor_data(cpu);
        for (int64_t r = 0; r < B; r++) {
            int64_t at = (r * 4751 + 13) % V; /* a different slice each row */
            x[r * V + at] = 9.0f;
            if (r % 2) x[r * V + (at + V / 2) % V] = 9.0f; /* a tie in another slice */
        }
        an_tensor *typed = an_tensor_to(ctx, cpu, AN_BF16, AN_CPU), *gpu = an_tensor_to(ctx, typed, AN_BF16, AN_CUDA);
        int32_t *want = malloc((size_t)B * sizeof *want), *got = malloc((size_t)B * sizeof *got);
        an_generate_opts o = {.temperature = 0.0, .top_p = 1.0};
        pick(ctx, typed, &o, 0, want);
        pick(ctx, gpu, &o, 0, got);
        for (int64_t r = 0; r < B; r++) {
            int64_t at = (r * 4751 + 13) % V, other = (at + V / 2) % V;
            ck_assert_int_eq(want[r], r % 2 && other < at ? other : at);
            ck_assert_msg(got[r] == want[r], "batch %lld row %lld: %d, expected %d", (long long)B, (long long)r, got[r],
                          want[r]);
        }
        free(want), free(got);
        an_tensor_release(gpu), an_tensor_release(typed), an_tensor_release(cpu);
    }
    test_ctx_free(ctx);
}
END_TEST

/* Generates from the same prompts with a CPU and a GPU copy of a fixture and compares. */
static void check_generation(const char *family, const an_generate_opts *base, bool eos_mid_row) {
    an_ctx *ctx = test_gpu_ctx(3, "cuda generation");
    if (!ctx) return;
    an_model *cpu = test_fixture_model(ctx, family, AN_F32, AN_CPU), *gpu = test_fixture_model(ctx, family, AN_F32, AN_CUDA);
    /* rows 1-3 share a length (one prefill, one strided cache write per layer), 0 and 4 do not */
    const int32_t p0[] = {5, 6, 7, 8, 9, 10, 11}, p1[] = {200, 3, 9}, p2[] = {17, 42, 99}, p3[] = {1, 2, 3},
                  p4[] = {250};
    const int32_t *prompts[] = {p0, p1, p2, p3, p4};
    int64_t lens[] = {7, 3, 3, 3, 1};
    an_generate_opts o = *base;
    o.max_new_tokens = 12;
    o.n_eos_ids = 0;
    int32_t *want[5], *got[5];
    int64_t want_lens[5], got_lens[5];
    int64_t eos[1];
    for (int pass = 0; pass < (eos_mid_row ? 2 : 1); pass++) {
        if (pass == 1) { /* the token row 2 made 4th becomes eos: row 2 (at least) stops early */
            eos[0] = want[2][3];
            o.eos_ids = eos, o.n_eos_ids = 1;
            for (int i = 0; i < 5; i++) free(want[i]), free(got[i]);
        }
        an_rng_init(&ctx->rng, 11);
        test_ok(ctx, an_generate(ctx, cpu, 5, prompts, lens, &o, want, want_lens), "generate on the cpu");
        an_rng_init(&ctx->rng, 11);
        test_ok(ctx, an_generate(ctx, gpu, 5, prompts, lens, &o, got, got_lens), "generate on the gpu");
        for (int i = 0; i < 5; i++) {
            ck_assert_int_eq(got_lens[i], want_lens[i]);
            for (int64_t j = 0; j < want_lens[i]; j++)
                ck_assert_msg(got[i][j] == want[i][j], "%s (T %g) pass %d row %d token %lld: GPU %d, CPU %d", family,
                              o.temperature, pass, i, (long long)j, got[i][j], want[i][j]);
        }
        if (pass == 1) ck_assert_int_le(want_lens[2], 4);
    }
    printf("%s on the GPU (T %g, top-k %lld, top-p %g): generation equals the CPU's token for token\n", family,
           o.temperature, (long long)o.top_k, o.top_p);
    for (int i = 0; i < 5; i++) free(want[i]), free(got[i]);
    an_model_free(gpu), an_model_free(cpu);
    test_ctx_free(ctx);
}

START_TEST(test_gpu_greedy_generation_equals_cpu_token_for_token) {
    an_generate_opts o = {.temperature = 0.0, .top_p = 1.0};
    check_generation("qwen2", &o, true);
    check_generation("llama", &o, true);
}
END_TEST

START_TEST(test_gpu_sampled_generation_with_a_seed_equals_cpu) {
    an_generate_opts o = {.temperature = 1.0, .top_k = 20, .top_p = 0.9};
    check_generation("qwen2", &o, false);
    o.top_k = 0, o.top_p = 1.0, o.temperature = 0.8;
    check_generation("llama", &o, false);
}
END_TEST

int main(void) {
    Suite *s = suite_create("cuda_sample");
    test_add_case(s, "sampling", test_gpu_sampling_equals_the_cpu_reference_on_random_logits);
    test_add_case(s, "sampling_stress", test_gpu_sampling_stress_equals_the_cpu_reference);
    test_add_case(s, "greedy_ties", test_gpu_greedy_ties_go_to_the_lowest_id);
    test_add_case(s, "greedy_wide", test_gpu_greedy_wide_rows_match_cpu);
    test_add_case(s, "greedy_generation", test_gpu_greedy_generation_equals_cpu_token_for_token);
    test_add_case(s, "sampled_generation", test_gpu_sampled_generation_with_a_seed_equals_cpu);
    return test_run(s);
}
