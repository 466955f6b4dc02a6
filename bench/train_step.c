/* train_step.c — tokens/s, step time and peak device memory of training steps on a model
 * directory: forward + backward + AdamW over random token ids, after warm-up steps.
 *
 *   bench/train_step MODEL_DIR [--device cuda|cpu] [--dtype bf16|f32] [--seq N] [--batch N]
 *                    [--lora R (0: full fine-tune)] [--targets qv|all] [--steps N] [--checkpointing]
 *                    [--adapter DIR (start from this PEFT adapter)] [--lr X] [--losses]
 *                    [--profile (one more step, timed op by op: autograd/profile.h)]
 *                    [--peak-tflops X (the MFU denominator; 989, dense bf16 of an H100/H200 SXM)]
 *                    [--loss-chunk N (rows of logits per chunk of the fused loss; 0: its default)]
 *                    [--attention-nondeterministic (cuDNN's atomic dQ backward, not bit-reproducible)]
 *                    [--no-wgmma (cuBLASLt and separate kernels where kernels/gemm_wgmma.cu would run)]
 *                    [--ab-wgmma (steps alternate with and without them; both rates printed: an A/B under
 *                     the same clocks and temperature, where separate runs differ by 2-3%)]
 *                    [--update-in-backward (AdamW during backward, on the side stream: src/optim/in_backward.c)]
 *                    [--ab-update (steps alternate with and without it; both rates printed)]
 *                    [--ab-logits-stats (steps alternate with and without the loss's row statistics,
 *                     an_cuda_set_logits_stats; both rates printed)]
 *                    [--ab-projections (steps alternate with q, k, v in one launch and as separate GEMMs,
 *                     an_cuda_set_projections; both rates printed)]
 *                    [--ab-lora-grads (steps alternate with the adapters' gradients from
 *                     an_cuda_lora_grads and from cuBLASLt's thin GEMMs; both rates printed)]
 *                    [--ab-attention (steps alternate with the attention backward on attention_wgmma.cu
 *                     and on cuDNN, an_cuda_set_attention_wgmma; both rates printed)]
 *                    [--ab-column-sums (steps alternate with the bias gradients from an_cuda_column_sums
 *                     and from cuBLASLt's dW epilogue, an_cuda_set_column_sums; both rates printed)]
 *                    [--ab-rope (steps alternate with q's and k's rotation in the projections' GEMM
 *                     epilogue and with the rope kernel after it, an_cuda_set_rope_epilogue; both rates printed)]
 *                    [--ab-turn (steps alternate with q's and k's gradients turned back by the rotation in the
 *                     attention backward's stores and by the rope pass after, an_cuda_set_attention_turns_rope)]
 *                    [--ab-stacked-mlp (steps alternate with a frozen MLP's dgate | dup side by side and x's
 *                     gradient one cuBLASLt GEMM over the stacked weights, and with the two-pair launch,
 *                     an_cuda_set_swiglu_stacked; biased as --ab-loss-chunk is: its arms allocate one
 *                     (rows, 2 inter) buffer and two (rows, inter) in turn, so compare separate runs with
 *                     --off stacked-mlp)]
 *                    [--off NAME (the switch --ab-NAME alternates, off for every step: separate runs)]
 *                    [--gemm-group R (an_cuda_set_gemm_group_rows: rows of tiles gemm_wgmma.cu's kernels walk
 *                     the columns with; 0 its default)]
 *                    [--ab-gemm-group R (steps alternate with R and with --gemm-group's; both rates printed)]
 *                    [--ab-loss-chunk N (steps alternate with N rows of logits per loss chunk and with
 *                     --loss-chunk's (the op's default unless given); both rates printed. Biased: the
 *                     two sizes' buffers alternate in the device cache too, which slows the steps of one
 *                     of them; separate runs with --loss-chunk decide, docs/performance.md)]
 *                    (one --ab-* option at a time)
 *                    [--sync-phases (synchronise after the forward, the backward and the optimizer, as this
 *                     bench did before 2026-11-27: the GPU idles while the host queues each next phase)]
 *                    [--host-times (the host's milliseconds after the optimizer call, per step)]
 *                    [--side-equal-priority (the side stream at the stream's priority, not the lowest)]
 *                    [--side-grain N (elements a block of the update in backward covers; 4096)]
 *
 * Token ids are ((b * seq + t) * 2654435761) mod (vocab - 1), as bench/peer_train_step.py makes
 * them, so with --adapter (the peer's initial adapter) both runs start from the same point and
 * --losses prints the per-step loss curves to compare.
 * Prints one line per measured step and a summary line with MFU (6 x trainable-path FLOPs are
 * not used: the model FLOPs are 6 P T for full fine-tuning, 4 P T for LoRA, plus attention).
 * The PyTorch figure for the same shape comes from bench/peer_train_step.py in the same call. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/profile.h"
#include "autograd/tape.h"
#include "kernels/cuda.h"
#include "model/load.h"
#include "model/lora.h"
#include "optim/optim.h"
#include "train/metrics.h"

/* Phase boundary i of a step: a CUDA event on the stream, or the host clock on the CPU (after a
 * synchronisation with sync). */
static void mark_phase(an_ctx *ctx, an_device device, bool sync, void **ev, double *t_host, int i) {
    if (sync && device == AN_CUDA) an_cuda_synchronize(ctx);
    t_host[i] = an_metrics_now();
    if (device == AN_CUDA && an_cuda_event_record(ctx, &ev[i]) != AN_OK) ev[i] = NULL;
}

/* The forward, backward and optimizer seconds between the four marks (events freed). */
static an_status phase_seconds(an_ctx *ctx, an_device device, void **ev, const double *t_host, double *forward,
                               double *backward, double *optim) {
    double *out[3] = {forward, backward, optim};
    an_status st = AN_OK;
    for (int i = 0; i < 3; i++) {
        double ms = 0;
        if (device != AN_CUDA) ms = 1e3 * (t_host[i + 1] - t_host[i]);
        else if (st == AN_OK) st = ev[i] && ev[i + 1] ? an_cuda_event_elapsed(ctx, ev[i], ev[i + 1], &ms) : an_error_status(ctx);
        *out[i] = ms / 1e3;
    }
    for (int i = 0; i < 4; i++) an_cuda_event_free(ev[i]);
    return st;
}

/* The library's on/off switches that --ab-NAME alternates: on for steps 0, 2, .., off for 1, 3, .. */
static const struct {
    const char *flag;
    an_status (*set)(an_ctx *, bool);
} ab_switches[] = {{"--ab-wgmma", an_cuda_set_wgmma},
                   {"--ab-logits-stats", an_cuda_set_logits_stats},
                   {"--ab-projections", an_cuda_set_projections},
                   {"--ab-lora-grads", an_cuda_set_lora_grads},
                   {"--ab-attention", an_cuda_set_attention_wgmma},
                   {"--ab-column-sums", an_cuda_set_column_sums},
                   {"--ab-rope", an_cuda_set_rope_epilogue},
                   {"--ab-turn", an_cuda_set_attention_turns_rope},
                   {"--ab-stacked-mlp", an_cuda_set_swiglu_stacked}};
#define N_AB_SWITCHES ((int)(sizeof ab_switches / sizeof *ab_switches))

/* The index of arg in ab_switches, or -1. */
static int ab_switch_of(const char *arg) {
    for (int i = 0; i < N_AB_SWITCHES; i++)
        if (!strcmp(arg, ab_switches[i].flag)) return i;
    return -1;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL_DIR [--device cuda|cpu] [--dtype bf16|f32] [--seq N] [--batch N] [--lora R] "
                        "[--targets qv|all] [--steps N] [--checkpointing] [--profile] [--peak-tflops X] [--loss-chunk N]\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1], *targets = "qv", *adapter = NULL;
    double lr = 1e-5;
    bool losses = false, profile = false;
    double peak_tflops = 989; /* dense bf16 of an H100/H200 SXM, the MFU denominator */
    an_cross_entropy_opts loss_opts = {AN_IGNORE_INDEX, 0, 0.0, 0}; /* chunk_rows 0: the op's default */
    an_device device = AN_CUDA;
    an_dtype dtype = AN_BF16;
    long seq = 1024, batch = 8, rank = 16, steps = 6;
    bool checkpointing = false, attention_nondeterministic = false, no_wgmma = false;
    bool update_in_backward = false, ab_update = false, side_equal = false, sync_phases = false, host_times = false;
    long side_grain = 0, ab_chunk = 0, base_chunk = 0, gemm_group = 0, ab_group = -1;
    int ab_switch = -1, ab_count = 0; /* ab_switches' index given; the --ab-* options given (at most one) */
    bool switched_off[N_AB_SWITCHES] = {false}; /* --off NAME: that switch off for every step */
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--device") && i + 1 < argc) device = !strcmp(argv[++i], "cpu") ? AN_CPU : AN_CUDA;
        else if (!strcmp(argv[i], "--dtype") && i + 1 < argc) dtype = !strcmp(argv[++i], "f32") ? AN_F32 : AN_BF16;
        else if (!strcmp(argv[i], "--seq") && i + 1 < argc) seq = atol(argv[++i]);
        else if (!strcmp(argv[i], "--batch") && i + 1 < argc) batch = atol(argv[++i]);
        else if (!strcmp(argv[i], "--lora") && i + 1 < argc) rank = atol(argv[++i]);
        else if (!strcmp(argv[i], "--targets") && i + 1 < argc) targets = argv[++i];
        else if (!strcmp(argv[i], "--steps") && i + 1 < argc) steps = atol(argv[++i]);
        else if (!strcmp(argv[i], "--checkpointing")) checkpointing = true;
        else if (!strcmp(argv[i], "--adapter") && i + 1 < argc) adapter = argv[++i];
        else if (!strcmp(argv[i], "--lr") && i + 1 < argc) lr = atof(argv[++i]);
        else if (!strcmp(argv[i], "--losses")) losses = true;
        else if (!strcmp(argv[i], "--profile")) profile = true;
        else if (!strcmp(argv[i], "--peak-tflops") && i + 1 < argc) peak_tflops = atof(argv[++i]);
        else if (!strcmp(argv[i], "--loss-chunk") && i + 1 < argc) loss_opts.chunk_rows = atol(argv[++i]);
        else if (!strcmp(argv[i], "--attention-nondeterministic")) attention_nondeterministic = true;
        else if (!strcmp(argv[i], "--no-wgmma")) no_wgmma = true;
        else if (ab_switch_of(argv[i]) >= 0) ab_switch = ab_switch_of(argv[i]), ab_count++;
        else if (!strcmp(argv[i], "--off") && i + 1 < argc) {
            char flag[64];
            snprintf(flag, sizeof flag, "--ab-%s", argv[++i]);
            if (ab_switch_of(flag) < 0) {
                fprintf(stderr, "--off %s: not a switch of --ab-*\n", argv[i]);
                return 2;
            }
            switched_off[ab_switch_of(flag)] = true;
        }
        else if (!strcmp(argv[i], "--ab-loss-chunk") && i + 1 < argc) ab_chunk = atol(argv[++i]), ab_count++;
        else if (!strcmp(argv[i], "--gemm-group") && i + 1 < argc) gemm_group = atol(argv[++i]);
        else if (!strcmp(argv[i], "--ab-gemm-group") && i + 1 < argc) ab_group = atol(argv[++i]), ab_count++;
        else if (!strcmp(argv[i], "--update-in-backward")) update_in_backward = true;
        else if (!strcmp(argv[i], "--ab-update")) ab_update = true, ab_count++;
        else if (!strcmp(argv[i], "--sync-phases")) sync_phases = true;
        else if (!strcmp(argv[i], "--host-times")) host_times = true;
        else if (!strcmp(argv[i], "--side-equal-priority")) side_equal = true;
        else if (!strcmp(argv[i], "--side-grain") && i + 1 < argc) side_grain = atol(argv[++i]);
        else {
            fprintf(stderr, "unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    if (ab_count > 1) {
        fprintf(stderr, "%d --ab-* options: steps alternate one thing at a time\n", ab_count);
        return 2;
    }
    an_ctx *ctx = an_ctx_new(1);
    an_model *m = NULL;
    an_optim *opt = NULL;
    if ((device == AN_CUDA && an_ctx_use_cuda(ctx, 0) != AN_OK) || an_model_load(ctx, dir, dtype, device, &m) != AN_OK) {
        fprintf(stderr, "%s\n", an_error_message(ctx));
        return 1;
    }
    if ((attention_nondeterministic && an_cuda_set_attention_cudnn_deterministic(ctx, false) != AN_OK) ||
        (no_wgmma && an_cuda_set_wgmma(ctx, false) != AN_OK) ||
        (side_equal && an_cuda_set_side_equal_priority(ctx, true) != AN_OK)) {
        fprintf(stderr, "%s\n", an_error_message(ctx));
        return 1;
    }
    for (int i = 0; i < N_AB_SWITCHES; i++)
        if (switched_off[i] && ab_switches[i].set(ctx, false) != AN_OK) {
            fprintf(stderr, "%s\n", an_error_message(ctx));
            return 1;
        }
    m->gradient_checkpointing = checkpointing;
    m->training = true;
    if (adapter) {
        if (an_lora_load_peft(ctx, m, adapter) != AN_OK) {
            fprintf(stderr, "%s\n", an_error_message(ctx));
            return 1;
        }
        rank = m->lora.rank;
    } else if (rank > 0) {
        an_lora_config lc = {rank, 2.0 * (double)rank, 0.0, false, strcmp(targets, "all") ? (AN_LORA_Q | AN_LORA_V) : AN_LORA_ALL_LINEAR};
        if (an_lora_attach(ctx, m, &lc) != AN_OK) {
            fprintf(stderr, "%s\n", an_error_message(ctx));
            return 1;
        }
    } else {
        an_model_set_requires_grad(m, true);
    }
    an_adamw_config oc = an_adamw_config_default();
    oc.lr = lr;
    an_optim_create(ctx, &oc, &opt);
    if (side_grain && an_optim_backward_grain(ctx, opt, side_grain) != AN_OK) {
        fprintf(stderr, "%s\n", an_error_message(ctx));
        return 2;
    }
    if (rank > 0) an_optim_add_params(ctx, opt, m->adapter_params, m->n_adapter_params);
    else an_optim_add_params(ctx, opt, m->params, m->n_params);
    an_tensor *host = an_tensor_new(ctx, AN_I32, AN_CPU, 2, (int64_t[]){batch, seq});
    for (long i = 0; i < batch * seq; i++)
        ((int32_t *)an_tensor_data(host))[i] = (int32_t)((uint64_t)i * 2654435761ull % (uint64_t)(m->config.vocab_size - 1));
    an_tensor *ids = an_tensor_to(ctx, host, AN_I32, device);
    double P = (double)an_model_config_num_params(&m->config);
    double attn = 2.0 * 2.0 * (double)m->config.num_layers * (double)seq * (double)(m->config.num_heads * m->config.head_dim);
    double flops_per_token = (rank > 0 ? 4.0 : 6.0) * P + (rank > 0 ? 2.0 : 3.0) * attn / 2.0;
    double total = 0, ab_total[2] = {0, 0};
    int measured = 0, ab_measured[2] = {0, 0};
    base_chunk = loss_opts.chunk_rows;
    for (long s = 0; s < steps + 2 + (profile ? 1 : 0); s++) {
        if (ab_chunk > 0) loss_opts.chunk_rows = s % 2 == 0 ? ab_chunk : base_chunk;
        if ((ab_switch >= 0 && ab_switches[ab_switch].set(ctx, s % 2 == 0) != AN_OK) ||
            (device == AN_CUDA && (gemm_group || ab_group >= 0) &&
             an_cuda_set_gemm_group_rows(ctx, (int)(ab_group >= 0 && s % 2 == 0 ? ab_group : gemm_group)) != AN_OK)) {
            fprintf(stderr, "%s\n", an_error_message(ctx));
            return 1;
        }
        if (device == AN_CUDA) an_cuda_synchronize(ctx); /* the step boundary, as a training loop's loss readback */
        an_mem_reset_peak(ctx, device);
        if (profile && s == steps + 2) an_profile_begin(ctx); /* an extra last step: syncing after every op slows it */
        /* the phases' times: CUDA events between them (no synchronisation inside the step, which
         * would leave the GPU idle while the host queues the next phase), host clocks on the CPU */
        void *ev[4] = {NULL, NULL, NULL, NULL};
        double t_host[4];
        mark_phase(ctx, device, false, ev, t_host, 0);
        double t0 = t_host[0];
        an_tensor *loss = an_model_loss(ctx, m, ids, ids, NULL, NULL, &loss_opts);
        mark_phase(ctx, device, sync_phases, ev, t_host, 1);
        bool in_backward = update_in_backward || (ab_update && s % 2 == 0);
        an_status st = !loss ? an_error_status(ctx) : in_backward ? an_optim_backward_begin(ctx, opt) : AN_OK;
        if (st == AN_OK) st = an_backward(ctx, loss);
        if (st != AN_OK && in_backward) an_optim_backward_cancel(ctx, opt);
        mark_phase(ctx, device, sync_phases, ev, t_host, 2);
        if (st == AN_OK) st = in_backward ? an_optim_backward_end(ctx, opt, NULL) : an_optim_step(ctx, opt, NULL);
        mark_phase(ctx, device, sync_phases, ev, t_host, 3);
        if (st != AN_OK) {
            fprintf(stderr, "step failed: %s\n", an_error_message(ctx));
            return 1;
        }
        double loss_value = NAN;
        if (losses) { /* read after the step: the readback is the step's one synchronisation */
            an_tensor *h = an_tensor_to(ctx, loss, AN_F64, AN_CPU);
            loss_value = h ? an_tensor_get(h, 0) : NAN;
            an_tensor_release(h);
            printf("anneal step %ld loss %.6f\n", s, loss_value);
        }
        double h_end = an_metrics_now();
        an_optim_zero_grad(opt);
        double h_zero = an_metrics_now();
        an_tensor_release(loss);
        double h_release = an_metrics_now();
        if (device == AN_CUDA) an_cuda_synchronize(ctx);
        double dt = an_metrics_now() - t0, t_forward, t_backward, t_optim;
        if (host_times) /* where the host's time after the optimizer goes (the GPU idles in it when nothing is queued) */
            printf("host: optimizer call returned %.3f ms into the step, zero_grad %.3f ms, loss release %.3f ms, "
                   "final sync %.3f ms\n", 1e3 * (h_end - t0), 1e3 * (h_zero - h_end), 1e3 * (h_release - h_zero),
                   1e3 * (t0 + dt - h_release));
        if (phase_seconds(ctx, device, ev, t_host, &t_forward, &t_backward, &t_optim) != AN_OK) {
            fprintf(stderr, "step timing: %s\n", an_error_message(ctx));
            return 1;
        }
        if (ctx->profile) {
            printf("per-op time of step %ld (synchronised after every op, so slower than the step above):\n", s);
            an_profile_print(ctx, stdout);
            an_profile_end(ctx);
        } else if (s >= 2) { /* two warm-up steps */
            total += dt, measured++;
            ab_total[s % 2] += dt, ab_measured[s % 2]++;
        }
        printf("step %ld: %.3f s (forward %.3f, backward %.3f, optimizer %.3f), %.0f tokens/s, peak %.2f GiB\n", s, dt,
               t_forward, t_backward, t_optim, (double)(batch * seq) / dt, (double)ctx->mem[device].peak / (1u << 30));
    }
    if (ab_count && ab_measured[0] && ab_measured[1]) {
        double on = (double)(batch * seq) * ab_measured[0] / ab_total[0];
        double off = (double)(batch * seq) * ab_measured[1] / ab_total[1];
        printf("%s: with %.0f tokens/s (%d steps), without %.0f tokens/s (%d steps): %.4fx\n",
               ab_switch >= 0 ? ab_switches[ab_switch].flag + 2 : ab_chunk > 0 ? "ab-loss-chunk" : ab_group >= 0 ? "ab-gemm-group" : "ab-update", on,
               ab_measured[0], off, ab_measured[1], on / off);
    }
    double tps = (double)(batch * seq) * measured / total;
    double tflops = tps * flops_per_token / 1e12;
    printf("anneal %s %s %s seq %ld batch %ld%s%s: %.0f tokens/s, %.3f s/step, peak %.2f GiB, %.1f TFLOP/s model, "
           "MFU %.1f%% of %.0f\n",
           rank > 0 ? "lora" : "full", rank > 0 ? targets : "", dtype == AN_BF16 ? "bf16" : "f32", seq, batch,
           checkpointing ? " +ckpt" : "", update_in_backward ? " +update-in-backward" : "", tps, total / measured, (double)ctx->mem[device].peak / (1u << 30), tflops,
           100 * tflops / peak_tflops, peak_tflops);
    return 0;
}
