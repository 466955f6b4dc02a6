/* attention.c — reference causal attention with grouped-query heads and packed documents,
 * forward and backward, flash-attention style: the forward keeps only each row's logsumexp, the
 * backward recomputes the probabilities from it. No (T, T) matrix ever exists.
 *
 * Numerics: float64 throughout; scores, outputs and gradients are dgemm products (an_cpu_gemm)
 * on contiguous per-head copies, softmax is done per row in float64 with the row max subtracted.
 * Outputs and gradients are written with = (the op accumulates them into .grad).
 *
 * Work is done per (batch b, kv head g): K and V of that head are copied to contiguous (T, D)
 * blocks, then each query head of the group is processed TILE query rows at a time. A tile reads
 * keys [lo, hi): hi is one past its last row and lo the first token of the earliest document any
 * of its rows belongs to, so a packed batch of short documents reads little beyond them.
 * Cost per (b, query head): about E = T*(T+TILE)/2 score entries for one document (fewer when
 * packed); forward = 2 GEMMs of E*D multiply-adds + E exps, backward = 5 GEMMs (S, dP, dQ, dK, dV)
 * + E exps. Memory: O(T*D) per kv head plus one (TILE, T) tile; nothing of size B*H*T*T.
 * Measured (tests/test_attention.c prints it; Release, one core, OpenBLAS with 1 thread, AMD EPYC):
 * B=8 T=256 Hq=8 Hkv=2 D=32 f32, unpacked: forward ~36 ms, backward ~52 ms per layer. */
#include "autograd/cpu/cpu.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define TILE 64 /* query rows per tile */

/* Working memory for one call, reused across every (b, head). */
typedef struct {
    double *q, *dout;   /* (T, D) one query head: queries, output gradient */
    double *k, *v;      /* (T, D) one kv head */
    double *dk, *dv;    /* (T, D) gradients of that kv head, summed over its query heads */
    double *s, *dp;     /* (TILE, T) scores -> probabilities; dP -> dS */
    double *rows;       /* (TILE, D) output or dQ rows of one tile */
    int64_t *first;     /* (T) first token of each token's document */
} scratch;

static void scratch_free(scratch *w) {
    free(w->q), free(w->dout), free(w->k), free(w->v), free(w->dk), free(w->dv);
    free(w->s), free(w->dp), free(w->rows), free(w->first);
}

static an_status scratch_alloc(an_ctx *ctx, const an_attention_shape *sh, bool backward, scratch *w) {
    size_t td = (size_t)(sh->seq * sh->head_dim), tile = (size_t)(TILE * sh->seq);
    *w = (scratch){0};
    w->q = malloc(td * sizeof(double));
    w->k = malloc(td * sizeof(double));
    w->v = malloc(td * sizeof(double));
    w->s = malloc(tile * sizeof(double));
    w->rows = malloc((size_t)(TILE * sh->head_dim) * sizeof(double));
    w->first = malloc((size_t)sh->seq * sizeof(int64_t));
    bool ok = w->q && w->k && w->v && w->s && w->rows && w->first;
    if (backward) {
        w->dout = malloc(td * sizeof(double));
        w->dk = malloc(td * sizeof(double));
        w->dv = malloc(td * sizeof(double));
        w->dp = malloc(tile * sizeof(double));
        ok = ok && w->dout && w->dk && w->dv && w->dp;
    }
    if (!ok) scratch_free(w);
    AN_CHECK(ctx, ok, AN_ERR_INTERNAL, "attention: out of host memory for T = %lld, D = %lld scratch",
             (long long)sh->seq, (long long)sh->head_dim);
    return AN_OK;
}

/* dst (T, D) <- head `h` of src (T, H, D) for one batch entry (src points at its first token). */
static void gather(double *dst, const double *src, int64_t T, int64_t H, int64_t D, int64_t h) {
    for (int64_t t = 0; t < T; t++) memcpy(dst + t * D, src + (t * H + h) * D, (size_t)D * sizeof(double));
}

/* Head `h` of dst (n, H, D) <- src (n, D). */
static void scatter(double *dst, const double *src, int64_t n, int64_t H, int64_t D, int64_t h) {
    for (int64_t t = 0; t < n; t++) memcpy(dst + (t * H + h) * D, src + t * D, (size_t)D * sizeof(double));
}

/* first[i]: the smallest j with seg[j] == seg[i] (0 for every i without segments). O(T) per
 * document start, so O(T * documents) <= O(T^2), below the attention's own O(T^2 * D). */
static void document_starts(const int64_t *seg, int64_t T, int64_t *first) {
    for (int64_t i = 0; i < T; i++) {
        if (!seg) first[i] = 0;
        else if (i > 0 && seg[i] == seg[i - 1]) first[i] = first[i - 1];
        else {
            int64_t j = 0;
            while (seg[j] != seg[i]) j++; /* stops at i at the latest */
            first[i] = j;
        }
    }
}

/* Key range [lo, hi) of query rows [i0, i1). */
static int64_t tile_lo(const int64_t *first, int64_t i0, int64_t i1) {
    int64_t lo = first[i0];
    for (int64_t i = i0 + 1; i < i1; i++) lo = first[i] < lo ? first[i] : lo;
    return lo;
}

/* S (rows, n) = scale * Q[i0:i1] K[lo:hi]^T with masked entries set to -inf. */
static void scores(const an_attention_shape *sh, const scratch *w, const int64_t *seg, int64_t i0, int64_t i1,
                   int64_t lo) {
    int64_t rows = i1 - i0, n = i1 - lo, D = sh->head_dim;
    an_gemm_shape g = {1, rows, n, D, false, true, false, false};
    an_cpu_gemm(&g, AN_F64, w->q + i0 * D, w->k + lo * D, w->s);
    for (int64_t r = 0; r < rows; r++) {
        int64_t i = i0 + r;
        double *row = w->s + r * n;
        for (int64_t c = 0; c < n; c++) {
            int64_t j = lo + c;
            bool visible = j <= i && (!seg || seg[j] == seg[i]);
            row[c] = visible ? row[c] * sh->scale : -INFINITY;
        }
    }
}

an_status an_cpu_attention(an_ctx *ctx, const an_attention_shape *sh, const double *q, const double *k,
                           const double *v, const int64_t *segments, double *out, double *lse) {
    int64_t B = sh->batch, T = sh->seq, Hq = sh->q_heads, Hkv = sh->kv_heads, D = sh->head_dim;
    if (B == 0 || T == 0) return AN_OK;
    scratch w;
    AN_TRY(scratch_alloc(ctx, sh, false, &w));
    int64_t group = Hq / Hkv;
    for (int64_t b = 0; b < B; b++) {
        const int64_t *seg = segments ? segments + b * T : NULL;
        document_starts(seg, T, w.first);
        for (int64_t g = 0; g < Hkv; g++) {
            gather(w.k, k + b * T * Hkv * D, T, Hkv, D, g);
            gather(w.v, v + b * T * Hkv * D, T, Hkv, D, g);
            for (int64_t h = g * group; h < (g + 1) * group; h++) {
                gather(w.q, q + b * T * Hq * D, T, Hq, D, h);
                double *lse_bh = lse + (b * Hq + h) * T; /* (T) */
                for (int64_t i0 = 0; i0 < T; i0 += TILE) {
                    int64_t i1 = i0 + TILE < T ? i0 + TILE : T, rows = i1 - i0;
                    int64_t lo = tile_lo(w.first, i0, i1), n = i1 - lo;
                    scores(sh, &w, seg, i0, i1, lo);
                    for (int64_t r = 0; r < rows; r++) {
                        double *row = w.s + r * n, max = -INFINITY, sum = 0.0;
                        for (int64_t c = 0; c < n; c++) max = row[c] > max ? row[c] : max;
                        for (int64_t c = 0; c < n; c++) sum += row[c] = exp(row[c] - max);
                        for (int64_t c = 0; c < n; c++) row[c] /= sum;
                        lse_bh[i0 + r] = max + log(sum);
                    }
                    an_gemm_shape pv = {1, rows, D, n, false, false, false, false}; /* O = P V */
                    an_cpu_gemm(&pv, AN_F64, w.s, w.v + lo * D, w.rows);
                    scatter(out + (b * T + i0) * Hq * D, w.rows, rows, Hq, D, h);
                }
            }
        }
    }
    scratch_free(&w);
    return AN_OK;
}

an_status an_cpu_attention_backward(an_ctx *ctx, const an_attention_shape *sh, const double *q, const double *k,
                                    const double *v, const int64_t *segments, const double *lse,
                                    const double *grad_out, double *grad_q, double *grad_k, double *grad_v) {
    int64_t B = sh->batch, T = sh->seq, Hq = sh->q_heads, Hkv = sh->kv_heads, D = sh->head_dim;
    if (B == 0 || T == 0) return AN_OK;
    scratch w;
    AN_TRY(scratch_alloc(ctx, sh, true, &w));
    int64_t group = Hq / Hkv;
    bool need_ds = grad_q || grad_k;
    for (int64_t b = 0; b < B; b++) {
        const int64_t *seg = segments ? segments + b * T : NULL;
        document_starts(seg, T, w.first);
        for (int64_t g = 0; g < Hkv; g++) {
            gather(w.k, k + b * T * Hkv * D, T, Hkv, D, g);
            gather(w.v, v + b * T * Hkv * D, T, Hkv, D, g);
            memset(w.dk, 0, (size_t)(T * D) * sizeof(double));
            memset(w.dv, 0, (size_t)(T * D) * sizeof(double));
            for (int64_t h = g * group; h < (g + 1) * group; h++) {
                gather(w.q, q + b * T * Hq * D, T, Hq, D, h);
                gather(w.dout, grad_out + b * T * Hq * D, T, Hq, D, h);
                const double *lse_bh = lse + (b * Hq + h) * T; /* (T) */
                for (int64_t i0 = 0; i0 < T; i0 += TILE) {
                    int64_t i1 = i0 + TILE < T ? i0 + TILE : T, rows = i1 - i0;
                    int64_t lo = tile_lo(w.first, i0, i1), n = i1 - lo;
                    scores(sh, &w, seg, i0, i1, lo);
                    for (int64_t r = 0; r < rows; r++) { /* P = exp(S - lse), 0 where masked */
                        double *row = w.s + r * n, l = lse_bh[i0 + r];
                        for (int64_t c = 0; c < n; c++) row[c] = exp(row[c] - l);
                    }
                    double *dout_tile = w.dout + i0 * D; /* (rows, D) */
                    if (grad_v) { /* dV[lo:hi] += P^T dO */
                        an_gemm_shape s = {1, n, D, rows, true, false, false, true};
                        an_cpu_gemm(&s, AN_F64, w.s, dout_tile, w.dv + lo * D);
                    }
                    if (!need_ds) continue;
                    an_gemm_shape s = {1, rows, n, D, false, true, false, false}; /* dP = dO V^T */
                    an_cpu_gemm(&s, AN_F64, dout_tile, w.v + lo * D, w.dp);
                    for (int64_t r = 0; r < rows; r++) { /* dS = scale * P * (dP - rowsum(P * dP)) */
                        const double *p = w.s + r * n;
                        double *ds = w.dp + r * n, dot = 0.0;
                        for (int64_t c = 0; c < n; c++) dot += p[c] * ds[c];
                        for (int64_t c = 0; c < n; c++) ds[c] = sh->scale * p[c] * (ds[c] - dot);
                    }
                    if (grad_q) { /* dQ = dS K, written once per row */
                        an_gemm_shape sq = {1, rows, D, n, false, false, false, false};
                        an_cpu_gemm(&sq, AN_F64, w.dp, w.k + lo * D, w.rows);
                        scatter(grad_q + (b * T + i0) * Hq * D, w.rows, rows, Hq, D, h);
                    }
                    if (grad_k) { /* dK[lo:hi] += dS^T Q */
                        an_gemm_shape sk = {1, n, D, rows, true, false, false, true};
                        an_cpu_gemm(&sk, AN_F64, w.dp, w.q + i0 * D, w.dk + lo * D);
                    }
                }
            }
            if (grad_k) scatter(grad_k + b * T * Hkv * D, w.dk, T, Hkv, D, g);
            if (grad_v) scatter(grad_v + b * T * Hkv * D, w.dv, T, Hkv, D, g);
        }
    }
    scratch_free(&w);
    return AN_OK;
}
