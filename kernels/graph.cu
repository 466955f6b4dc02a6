/* graph.cu — CUDA graphs of the state's one stream: capture a sequence of launches once, replay
 * it with one launch (a decode step: ~600 launches at 4-6 us of host time each become one).
 *
 * Rules:
 * - Capture is relaxed mode (cudaStreamCaptureModeRelaxed) on the state's stream: the caching
 *   allocator may cudaMalloc a new segment while capturing; the memory is the graph's from then on.
 * - Memory: while capturing, the allocator parks every block freed (autograd/block_cache.h), so no
 *   address the graph writes is ever handed to anything else while the graph lives; blocks still
 *   allocated when the capture ends (the graph's outputs) belong to the tensors that hold them.
 *   an_cuda_graph_free returns the parked blocks. Replays allocate nothing, so every counter of
 *   an_cuda_memory_stats is the same before and after a replay.
 * - What cannot be captured is refused with an error while capturing, never worked around:
 *   copies to or from host memory, stream synchronisation, emptying the cache, and growing the
 *   scratch buffer (kernels/runtime.cu). A capture whose body failed, or that CUDA invalidated, is
 *   discarded by an_cuda_graph_end, which reports the first error.
 * - Launches replay with the arguments they were captured with: device buffers whose contents
 *   change between replays (the next ids, the KV-cache lengths) are how a replay sees new data. */
#include "kernels/cuda_common.cuh"

#include <stdlib.h>

struct an_cuda_graph {
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    void **parked;     /* blocks freed during capture, owned by the graph until an_cuda_graph_free */
    int64_t n_parked;
};

/* Gives the parked blocks back to the cache and frees g. */
static void drop_graph(an_cuda_state *s, an_cuda_graph *g) {
    if (g->exec) (void)cudaGraphExecDestroy(g->exec);
    if (g->graph) (void)cudaGraphDestroy(g->graph);
    for (int64_t i = 0; i < g->n_parked; i++) an_cuda_free(s, g->parked[i]);
    free(g->parked);
    free(g);
}

extern "C" {

an_status an_cuda_graph_begin(an_ctx *ctx) {
    AN_CUDA_STATE(ctx, s);
    AN_CHECK(ctx, !s->capturing, AN_ERR_INTERNAL, "CUDA graph: a capture is already open on this stream");
    AN_CUDA_CHECK(ctx, cudaSetDevice(s->device));
    AN_CUDA_CHECK(ctx, cudaStreamBeginCapture(s->stream, cudaStreamCaptureModeRelaxed));
    an_block_cache_park_begin(&s->cache);
    s->capturing = 1;
    return AN_OK;
}

an_status an_cuda_graph_end(an_ctx *ctx, an_status body, an_cuda_graph **out) {
    AN_CUDA_STATE(ctx, s);
    *out = nullptr;
    AN_CHECK(ctx, s->capturing, AN_ERR_INTERNAL, "CUDA graph: no capture is open on this stream");
    an_cuda_graph *g = (an_cuda_graph *)calloc(1, sizeof *g);
    cudaGraph_t graph = nullptr;
    cudaError_t e = cudaStreamEndCapture(s->stream, &graph);
    s->capturing = 0;
    void **parked = nullptr;
    int64_t n = an_block_cache_park_end(&s->cache, &parked);
    if (!g) {
        if (graph) (void)cudaGraphDestroy(graph);
        for (int64_t i = 0; i < n; i++) an_cuda_free(s, parked[i]);
        free(parked);
        AN_CHECK(ctx, 0, AN_ERR_INTERNAL, "CUDA graph: out of host memory");
    }
    g->graph = graph;
    g->parked = parked;
    g->n_parked = n < 0 ? 0 : n;
    if (body != AN_OK || e != cudaSuccess || n < 0) {
        (void)cudaGetLastError(); /* an invalidated capture leaves its error pending */
        drop_graph(s, g);
        if (body != AN_OK) return body; /* the body's own error is already in ctx */
        AN_CHECK(ctx, n >= 0, AN_ERR_INTERNAL, "CUDA graph: out of host memory recording the capture's blocks");
        AN_CUDA_CHECK(ctx, e);
    }
    e = cudaGraphInstantiate(&g->exec, graph, 0);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        g->exec = nullptr;
        drop_graph(s, g);
        AN_CUDA_CHECK(ctx, e);
    }
    *out = g;
    return AN_OK;
}

an_status an_cuda_graph_launch(an_ctx *ctx, an_cuda_graph *g) {
    AN_CUDA_STATE(ctx, s);
    AN_CHECK(ctx, g != nullptr && !s->capturing, AN_ERR_INTERNAL, "CUDA graph: launch of %s",
             g ? "a graph inside a capture" : "no graph");
    AN_CUDA_CHECK(ctx, cudaGraphLaunch(g->exec, s->stream));
    return AN_OK;
}

void an_cuda_graph_free(an_ctx *ctx, an_cuda_graph *g) {
    if (!g) return;
    an_cuda_state *s = ctx->cuda;
    if (!s) return; /* cannot happen: a graph exists only on a CUDA ctx */
    (void)cudaStreamSynchronize(s->stream); /* a replay in flight still writes the parked blocks */
    drop_graph(s, g);
}

int an_cuda_capturing(an_ctx *ctx) { return ctx->cuda && ctx->cuda->capturing; }

} // extern "C"
