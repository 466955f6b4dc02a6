/* internal.h — what the files of src/optim share and nothing outside reads: the optimizer
 * struct, one registered parameter's state, and the gradient helpers. */
#ifndef AN_OPTIM_INTERNAL_H
#define AN_OPTIM_INTERNAL_H

#include "optim/optim.h"
#include "kernels/cuda.h"  /* an_adamw_segment */

#define OPTIM_NAME_MAX 96                 /* as an_param.name */
#define OPTIM_STATE_NAME_MAX (OPTIM_NAME_MAX + 16)
#define OPTIM_GRAD_EPS 1e-6               /* clip_grad_norm_: max_norm / (total + 1e-6) */

enum { STATE_EXP_AVG = 0, STATE_EXP_AVG_SQ = 1, STATE_MASTER = 2 };

typedef struct {
    char name[OPTIM_NAME_MAX];
    an_tensor **slot;          /* the parameter; elements [start, end) of it are ours */
    bool no_decay;
    int64_t start, end;
    an_tensor *state[3];       /* exp_avg, exp_avg_sq, master (NULL for f32 parameters); f32,
                                  the parameter's shape for a whole tensor, else (end - start) */
    char state_names[3][OPTIM_STATE_NAME_MAX];
} optim_entry;

struct an_optim {
    an_adamw_config config;
    optim_entry *entries;
    int n_entries, cap;
    int64_t step;              /* steps taken */
    /* The CUDA entries with a gradient as one table for an_cuda_adamw_multi and
     * an_cuda_sum_squares_multi: table (n_table, host) is what table_dev holds, uploaded again only
     * when a step's table differs (a new gradient address, a swapped parameter); n_table < 0: none. */
    an_adamw_segment *table;
    int n_table, table_cap;
    int64_t table_chunks;
    an_tensor *table_dev;      /* (n_table * sizeof(an_adamw_segment) + 8) u8 on CUDA; the last 8
                                  bytes are the device double the gradient norm's sum lands in */
    /* the update in backward (in_backward.c), between an_optim_backward_begin and _end */
    bool in_backward;
    an_adamw_scalars bwd_scalars;
    bool *bwd_done;            /* (n_entries) updated during this backward */
    int64_t *bwd_first_chunk;  /* (n_entries) a CUDA entry's first chunk in bwd_partial */
    an_tensor *bwd_partial;    /* (bwd_chunks + 1) doubles on CUDA (u8): each chunk's sum of squares, then their total */
    int64_t bwd_chunks;
    int64_t bwd_grain;         /* elements a side block updates (0: AN_ADAMW_SIDE_CHUNK) */
    double bwd_host_sum_sq;    /* the CPU entries' sum of squares */
};

/* adamw.c: the step's scalars (learning rate and bias corrections of step + 1) with this clipping
 * factor; an entry's checks before an update; a CUDA entry with a gradient as a table row
 * (first_chunk 0); the update of a host entry that has a gradient (k's decay, or 1 for a no_decay
 * entry; see adamw.c for the formula). */
an_adamw_scalars optim_scalars(const an_optim *opt, double grad_scale);
an_status optim_check_entry(an_ctx *ctx, const optim_entry *e);
an_adamw_segment optim_entry_segment(const optim_entry *e);
void optim_update_cpu_entry(const an_adamw_scalars *k, const optim_entry *e);

/* Sets each segment's first_chunk (in order) and returns the chunks they cover together. */
int64_t optim_layout(an_adamw_segment *table, int n);
/* The float64 sum of squares of the gradients of a device table (n segments, n_chunks chunks, on
 * the device), through *slot (a device double) and one copy back into *sum. */
an_status optim_table_sum_sq(an_ctx *ctx, const an_adamw_segment *table, int n, int64_t n_chunks, double *slot,
                             double *sum);
/* The CPU sum of squares of grad elements [start, end), in order. */
double optim_cpu_sum_sq(const an_tensor *grad, int64_t start, int64_t end);
/* Elements [start, end) of t as a 1-D view sharing storage (new reference), or NULL. */
an_tensor *optim_slice(an_ctx *ctx, an_tensor *t, int64_t start, int64_t end);
/* The float64 sum of squares of the elements [starts[i], ends[i]) of grads[i] (NULL entries skipped;
 * starts and ends NULL: whole tensors), added into *total: the CUDA gradients' sum first (one
 * launch over all of them, one copy back), then each host gradient's in order. */
an_status optim_grads_sum_sq(an_ctx *ctx, const an_tensor *const *grads, const int64_t *starts, const int64_t *ends,
                             int n, double *total);
/* max_norm / (total + 1e-6) clamped to at most 1, or 1 when max_norm <= 0. */
double optim_clip_scale(double max_norm, double total_norm);

#endif
