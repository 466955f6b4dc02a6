/* test_cuda_decode_graph.c — decode steps replayed as CUDA graphs (model/generate.c,
 * kernels/graph.cu): generation through captured graphs equals op-by-op (eager) generation on the
 * GPU and generation on the CPU token for token, greedy and sampled with a seed, with rows that
 * stop at different steps (a per-row limit in the token callback, and an eos) so the graph is
 * re-captured at smaller batches; the graph path is really taken (captures and replays are
 * counted) and each replay is queued before the host has read the ids it continues, also where rows
 * stop under it (their survivors' logits are gathered); the caching allocator's counters are the same after a generation as before it and a
 * repeated generation makes no cudaMalloc; a captured add replays on new input data, the blocks
 * it freed stay parked (in use) until the graph is freed, and calls that cannot be captured are
 * refused with an error. Without a GPU (or in a build without CUDA) every test prints SKIP. */
#include <stdlib.h>
#include <string.h>

#include "autograd/ops.h"   /* an_add for the hand-made graph */
#include "kernels/cuda.h"   /* an_cuda_graph_*, an_cuda_memory_stats */
#include "model/generate.h"
#include "model/load.h"
#include "support/test_util.h"

#define ROWS 5

/* Stops row r after limits[r] tokens (rows finish at different steps without an eos). */
static bool stop_at_limit(void *user, int64_t row, int32_t token) {
    int64_t *state = user; /* [0, ROWS): limits, [ROWS, 2 ROWS): tokens seen */
    (void)token;
    return ++state[ROWS + row] >= state[row];
}

typedef struct {
    int32_t *tokens[ROWS];
    int64_t lens[ROWS];
    an_generate_stats stats;
} run;

static void run_free(run *r) {
    for (int i = 0; i < ROWS; i++) free(r->tokens[i]);
}

static void generate(an_ctx *ctx, an_model *m, const an_generate_opts *base, bool eager, const int64_t *limits, run *r,
                     const char *what) {
    const int32_t p0[] = {5, 6, 7, 8, 9, 10, 11}, p1[] = {200, 3, 9}, p2[] = {17, 42, 99}, p3[] = {1, 2, 3},
                  p4[] = {250};
    const int32_t *prompts[ROWS] = {p0, p1, p2, p3, p4};
    int64_t lens[ROWS] = {7, 3, 3, 3, 1}, state[2 * ROWS] = {0};
    an_generate_opts o = *base;
    o.eager = eager;
    o.stats = &r->stats;
    if (limits) {
        memcpy(state, limits, ROWS * sizeof *limits);
        o.on_token = stop_at_limit, o.user = state;
    }
    an_rng_init(&ctx->rng, 11);
    test_ok(ctx, an_generate(ctx, m, ROWS, prompts, lens, &o, r->tokens, r->lens), what);
}

static void expect_same(const run *a, const run *b, const char *what) {
    for (int i = 0; i < ROWS; i++) {
        ck_assert_msg(a->lens[i] == b->lens[i], "%s: row %d has %lld vs %lld tokens", what, i, (long long)a->lens[i],
                      (long long)b->lens[i]);
        for (int64_t j = 0; j < a->lens[i]; j++)
            ck_assert_msg(a->tokens[i][j] == b->tokens[i][j], "%s: row %d token %lld: %d vs %d", what, i, (long long)j,
                          a->tokens[i][j], b->tokens[i][j]);
    }
}

static void check_family(const char *family, const an_generate_opts *base) {
    an_ctx *ctx = test_gpu_ctx(3, "cuda decode graphs");
    if (!ctx) return;
    an_model *cpu = test_fixture_model(ctx, family, AN_F32, AN_CPU), *gpu = test_fixture_model(ctx, family, AN_F32, AN_CUDA);
    an_generate_opts o = *base;
    o.max_new_tokens = 12;
    o.n_eos_ids = 0;
    /* pass 0: every row runs 12 steps (one capture); pass 1: rows stop after 12, 3, 7, 4, 9 tokens
     * (captures at sizes 5, 4, 3, 2 that run at least twice); pass 2: also an eos from pass 0 */
    const int64_t limits[ROWS] = {12, 3, 7, 4, 9};
    int64_t eos[1];
    for (int pass = 0; pass < 3; pass++) {
        run want, eager, graph;
        generate(ctx, cpu, &o, true, pass ? limits : NULL, &want, "generate on the cpu");
        an_cuda_mem_stats before, after;
        test_ok(ctx, an_cuda_memory_stats(ctx, &before), "memory stats");
        generate(ctx, gpu, &o, false, pass ? limits : NULL, &graph, "generate with graphs");
        test_ok(ctx, an_cuda_memory_stats(ctx, &after), "memory stats");
        /* every tensor and graph of the run is gone (the first run may grow the scratch buffer: in_use
         * is compared on the repeat below) */
        ck_assert_msg(after.tensor_bytes == before.tensor_bytes, "%s pass %d: tensor bytes %zu -> %zu", family, pass,
                      before.tensor_bytes, after.tensor_bytes);
        generate(ctx, gpu, &o, true, pass ? limits : NULL, &eager, "generate eager");
        ck_assert_int_eq(eager.stats.graph_captures, 0);
        ck_assert_int_eq(eager.stats.graph_replays, 0);
        ck_assert_int_eq(eager.stats.overlapped_steps, 0);
        /* every replay is queued before the host reads the ids it continues (none where this token is
         * a row's last) */
        ck_assert_int_eq(graph.stats.overlapped_steps, graph.stats.graph_replays);
        if (pass == 0) ck_assert_int_eq(graph.stats.graph_captures, 1);
        if (pass == 0) ck_assert_int_eq(graph.stats.graph_replays, 9);
        ck_assert_int_eq(graph.stats.decode_steps, eager.stats.decode_steps);
        if (pass == 1) {
            /* a row that stops under a queued step leaves its survivors that step at the old size:
             * size 5 runs eager, capture, replay (row 1 stops under it); size 4 none; size 3 eager,
             * capture, replay, replay (row 2 stops under the last); size 2 eager; size 1 eager,
             * capture, replay: 11 steps, captures at 5, 3 and 1, 4 replays */
            ck_assert_int_eq(graph.stats.graph_captures, 3);
            ck_assert_int_eq(graph.stats.graph_replays, 4);
        }
        /* the same with each step's ids read before the next step is queued (opts.no_overlap) */
        run serial;
        an_generate_opts serial_opts = o;
        serial_opts.no_overlap = true;
        generate(ctx, gpu, &serial_opts, false, pass ? limits : NULL, &serial, "generate with graphs, no overlap");
        ck_assert_int_eq(serial.stats.overlapped_steps, 0);
        ck_assert_int_eq(serial.stats.decode_steps, eager.stats.decode_steps);
        if (pass == 1) { /* sizes 5, 4, 3, 2, 1 run 2, 1, 3, 2, 3 steps: captured at 5, 3, 2, 1 */
            ck_assert_int_eq(serial.stats.graph_captures, 4);
            ck_assert_int_eq(serial.stats.graph_replays, 2);
        }
        expect_same(&serial, &eager, "graph without overlap vs eager");
        expect_same(&graph, &eager, "graph vs eager");
        expect_same(&graph, &want, "graph vs cpu");
        /* the same generation again: the allocator already holds what it needs */
        run again;
        test_ok(ctx, an_cuda_memory_stats(ctx, &before), "memory stats");
        generate(ctx, gpu, &o, false, pass ? limits : NULL, &again, "generate with graphs again");
        test_ok(ctx, an_cuda_memory_stats(ctx, &after), "memory stats");
        ck_assert_int_eq(after.cuda_mallocs, before.cuda_mallocs);
        ck_assert_uint_eq(after.in_use, before.in_use);
        ck_assert_uint_eq(after.tensor_bytes, before.tensor_bytes);
        expect_same(&again, &graph, "graph run repeated");
        printf("%s (T %g) pass %d: %lld steps, %lld captures, %lld replays; graph = eager = cpu\n", family,
               o.temperature, pass, (long long)graph.stats.decode_steps, (long long)graph.stats.graph_captures,
               (long long)graph.stats.graph_replays);
        if (pass == 1) { /* pass 2: the 3rd token of row 4 becomes eos (row 4 stops there at the latest) */
            eos[0] = want.tokens[4][2];
            o.eos_ids = eos, o.n_eos_ids = 1;
        }
        run_free(&want), run_free(&eager), run_free(&graph), run_free(&again), run_free(&serial);
    }
    an_model_free(gpu), an_model_free(cpu);
    test_ctx_free(ctx);
}

START_TEST(test_graph_generation_equals_eager_and_cpu_greedy) {
    an_generate_opts o = {.temperature = 0.0, .top_p = 1.0};
    check_family("qwen2", &o);
    check_family("llama", &o);
}
END_TEST

START_TEST(test_graph_generation_equals_eager_and_cpu_sampled_with_a_seed) {
    an_generate_opts o = {.temperature = 1.0, .top_k = 20, .top_p = 0.9};
    check_family("qwen2", &o);
    check_family("llama", &o);
}
END_TEST

START_TEST(test_captured_add_replays_on_new_data_and_parks_its_blocks) {
    an_ctx *ctx = test_gpu_ctx(5, "cuda graph capture");
    if (!ctx) return;
    const int64_t n = 1000;
    float ha[1000], hb[1000];
    for (int64_t i = 0; i < n; i++) ha[i] = (float)i, hb[i] = 0.5f * (float)i;
    an_tensor *a = an_tensor_from_data(ctx, AN_F32, 1, &n, ha), *b = an_tensor_from_data(ctx, AN_F32, 1, &n, hb);
    an_tensor *da = an_tensor_to(ctx, a, AN_F32, AN_CUDA), *db = an_tensor_to(ctx, b, AN_F32, AN_CUDA);
    ck_assert(da && db);
    an_no_grad_begin(ctx);
    an_cuda_mem_stats s0, s1, s2;
    test_ok(ctx, an_cuda_memory_stats(ctx, &s0), "stats");
    test_ok(ctx, an_cuda_graph_begin(ctx), "begin");
    ck_assert(an_cuda_capturing(ctx));
    an_tensor *t = an_add(ctx, da, db);            /* freed inside the capture: parked */
    an_tensor *out = t ? an_add(ctx, t, da) : NULL; /* out = 2a + b, kept */
    an_tensor_release(t);
    /* what cannot be captured is refused, and the capture can still end cleanly */
    ck_assert_int_ne(an_cuda_synchronize(ctx), AN_OK);
    ck_assert_msg(strstr(an_error_message(ctx), "capture") != NULL, "%s", an_error_message(ctx));
    an_error_clear(ctx);
    an_tensor *host_copy = an_tensor_to(ctx, da, AN_F32, AN_CPU);
    ck_assert_ptr_null(host_copy);
    an_error_clear(ctx);
    an_cuda_graph *g = NULL;
    test_ok(ctx, an_cuda_graph_end(ctx, out ? AN_OK : AN_ERR_INTERNAL, &g), "end");
    ck_assert(!an_cuda_capturing(ctx));
    test_ok(ctx, an_cuda_memory_stats(ctx, &s1), "stats");
    ck_assert_uint_gt(s1.in_use, s0.in_use); /* out and the parked intermediate */
    for (int rep = 0; rep < 3; rep++) {
        for (int64_t i = 0; i < n; i++) ha[i] = (float)(i * (rep + 1)); /* new input data, same address */
        test_ok(ctx, an_cuda_memcpy(ctx, an_tensor_data(da), AN_CUDA, ha, AN_CPU, sizeof ha), "upload");
        an_tensor *scratch = an_tensor_zeros(ctx, AN_F32, AN_CUDA, 1, &n); /* must not get the parked block */
        test_ok(ctx, an_tensor_fill(ctx, scratch, 7.0), "fill");
        test_ok(ctx, an_cuda_graph_launch(ctx, g), "launch");
        an_tensor *h = an_tensor_to(ctx, out, AN_F32, AN_CPU), *hs = an_tensor_to(ctx, scratch, AN_F32, AN_CPU);
        ck_assert(h && hs);
        for (int64_t i = 0; i < n; i++) {
            ck_assert_float_eq(((float *)an_tensor_data(h))[i], 2.0f * ha[i] + hb[i]);
            ck_assert_float_eq(((float *)an_tensor_data(hs))[i], 7.0f);
        }
        an_tensor_release(h), an_tensor_release(hs), an_tensor_release(scratch);
        test_ok(ctx, an_cuda_memory_stats(ctx, &s2), "stats");
        ck_assert_uint_eq(s2.in_use, s1.in_use);
        ck_assert_int_eq(s2.cuda_mallocs, s1.cuda_mallocs);
    }
    an_cuda_graph_free(ctx, g);
    an_tensor_release(out);
    test_ok(ctx, an_cuda_memory_stats(ctx, &s2), "stats");
    ck_assert_uint_eq(s2.in_use, s0.in_use);
    ck_assert_uint_eq(s2.tensor_bytes, s0.tensor_bytes);
    /* a capture whose body failed is discarded and reports the body's error */
    test_ok(ctx, an_cuda_graph_begin(ctx), "begin");
    an_tensor *x = an_add(ctx, da, db);
    an_tensor_release(x);
    an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__, "the body failed");
    ck_assert_int_eq(an_cuda_graph_end(ctx, AN_ERR_INPUT, &g), AN_ERR_INPUT);
    ck_assert_ptr_null(g);
    an_error_clear(ctx);
    test_ok(ctx, an_cuda_memory_stats(ctx, &s2), "stats");
    ck_assert_uint_eq(s2.in_use, s0.in_use);
    an_no_grad_end(ctx);
    an_tensor_release(a), an_tensor_release(b), an_tensor_release(da), an_tensor_release(db);
    test_ctx_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("cuda_decode_graph");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_captured_add_replays_on_new_data_and_parks_its_blocks);
    tcase_add_test(tc, test_graph_generation_equals_eager_and_cpu_greedy);
    tcase_add_test(tc, test_graph_generation_equals_eager_and_cpu_sampled_with_a_seed);
    suite_add_tcase(s, tc);
    return test_run(s);
}
