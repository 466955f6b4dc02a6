/* profile.h — per-op wall time of forward and backward, for finding where a training step goes
 * (bench/train_step --profile). Off unless an_profile_begin was called: then every recorded op
 * and every backward rule synchronises the device, which slows the run; never leave it on for
 * measurements of speed.
 *
 * Attribution: a backward rule's time is its own (the checkpoint op's includes the forward it
 * re-runs and the backward of the nodes inside). A forward op's time is the interval since the
 * previous recorded op (or an_profile_mark), so work that records no node (copies, ops under
 * no-grad) lands on the next op that does. */
#ifndef AN_AUTOGRAD_PROFILE_H
#define AN_AUTOGRAD_PROFILE_H

#include <stdbool.h>
#include <stdio.h>

#include "autograd/tape.h"  /* an_op */

typedef struct an_profile an_profile;

/* Starts (or restarts, from zero) collecting on ctx. */
an_status an_profile_begin(an_ctx *ctx);
/* Starts the forward clock: the next recorded op is charged from here. */
void an_profile_mark(an_ctx *ctx);
/* Charges the time since the last mark to op's forward and moves the mark. */
void an_profile_forward(an_ctx *ctx, const an_op *op);
/* Seconds now, after the device is idle (for timing a backward rule). */
double an_profile_clock(an_ctx *ctx);
void an_profile_backward(an_ctx *ctx, const an_op *op, double seconds);
/* How many forward (backward false) or backward calls of op were timed since an_profile_begin. */
long an_profile_calls(const an_ctx *ctx, const an_op *op, bool backward);
/* The table, ops by total time, to out. */
void an_profile_print(const an_ctx *ctx, FILE *out);
/* Stops collecting and frees the tables. */
void an_profile_end(an_ctx *ctx);

#endif
