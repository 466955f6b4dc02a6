/* cursor.h — where a run is in its data: the one struct the data loaders fill and a checkpoint
 * stores (training_state.h5, group /data_cursor), so that a resumed run reads the same examples
 * in the same order as the run that was interrupted.
 *
 * The checkpoint treats it as opaque integers: it stores and restores the three fields bit for
 * bit and never interprets them. Their meaning is the data module's, and must stay a pure function
 * of these fields (no hidden state in the loader) for resume to be exact. */
#ifndef AN_CKPT_CURSOR_H
#define AN_CKPT_CURSOR_H

#include <stdint.h>

typedef struct {
    int64_t epoch;        /* epochs completed before the current one (0 during the first) */
    int64_t position;     /* items of the current epoch's order already consumed (the next one to read) */
    int64_t shuffle_seed; /* seed of the current epoch's permutation (the loader derives it per epoch) */
} an_data_cursor;

#endif
