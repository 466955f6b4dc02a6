/* state.c — the optimizer's state as named tensors, for checkpoints: listing it and restoring it.
 *
 * Ownership: the listed tensors are the optimizer's own (borrowed by the caller). Restoring copies
 * bit for bit and checks every name, dtype and size before the first copy. */
#include "optim/internal.h"

#include <string.h>

int an_optim_state_count(const an_optim *opt) {
    int n = 0;
    for (int i = 0; i < opt->n_entries; i++) n += opt->entries[i].state[STATE_MASTER] ? 3 : 2;
    return n;
}

/* Entry and state index of the i-th state tensor; false when i is out of range. */
static bool locate(const an_optim *opt, int i, int *entry, int *state) {
    if (i < 0) return false;
    for (int e = 0; e < opt->n_entries; e++) {
        int n = opt->entries[e].state[STATE_MASTER] ? 3 : 2;
        if (i < n) {
            *entry = e, *state = i;
            return true;
        }
        i -= n;
    }
    return false;
}

an_tensor *an_optim_state_at(const an_optim *opt, int i, const char **name) {
    int e, s;
    if (!locate(opt, i, &e, &s)) return NULL;
    if (name) *name = opt->entries[e].state_names[s];
    return opt->entries[e].state[s];
}

an_tensor *an_optim_state_find(const an_optim *opt, const char *name) {
    for (int e = 0; e < opt->n_entries; e++)
        for (int s = 0; s < 3; s++)
            if (opt->entries[e].state[s] && strcmp(opt->entries[e].state_names[s], name) == 0)
                return opt->entries[e].state[s];
    return NULL;
}

an_status an_optim_restore(an_ctx *ctx, an_optim *opt, int64_t step, int n, const char *const *names,
                           an_tensor *const *values) {
    int count = an_optim_state_count(opt);
    AN_CHECK(ctx, step >= 0, AN_ERR_INPUT, "optimizer state: step = %lld, expected >= 0", (long long)step);
    AN_CHECK(ctx, n == count, AN_ERR_INPUT, "optimizer state: %d tensors given, this optimizer has %d", n, count);
    /* n == count and every state tensor matched by exactly one distinct name: a bijection. */
    for (int i = 0; i < count; i++) {
        const char *name = NULL;
        an_tensor *state = an_optim_state_at(opt, i, &name);
        int found = -1;
        for (int j = 0; j < n; j++) {
            if (!names[j] || strcmp(names[j], name) != 0) continue;
            AN_CHECK(ctx, found < 0, AN_ERR_INPUT, "optimizer state: %s given twice", name);
            found = j;
        }
        AN_CHECK(ctx, found >= 0, AN_ERR_INPUT, "optimizer state: %s is missing", name);
        const an_tensor *v = values[found];
        AN_CHECK(ctx, v != NULL, AN_ERR_INPUT, "optimizer state: %s has no tensor", name);
        AN_CHECK(ctx, v->dtype == AN_F32 && an_tensor_numel(v) == an_tensor_numel(state), AN_ERR_INPUT,
                 "optimizer state: %s is %lld elements of %s; %lld of f32 expected", name,
                 (long long)an_tensor_numel(v), an_dtype_name(v->dtype), (long long)an_tensor_numel(state));
    }
    for (int e = 0; e < opt->n_entries; e++)
        AN_CHECK(ctx, *opt->entries[e].slot != NULL, AN_ERR_INPUT, "optimizer state: %s has no parameter tensor",
                 opt->entries[e].name);
    for (int e = 0; e < opt->n_entries; e++) {
        optim_entry *entry = &opt->entries[e];
        for (int s = 0; s < 3; s++) {
            if (!entry->state[s]) continue;
            int j = 0;
            while (strcmp(names[j], entry->state_names[s]) != 0) j++;
            AN_TRY(an_tensor_copy_into(ctx, entry->state[s], values[j]));
        }
        if (entry->state[STATE_MASTER]) { /* the parameter is its master, rounded */
            an_tensor *dst = optim_slice(ctx, *entry->slot, entry->start, entry->end);
            if (!dst) return an_error_status(ctx);
            an_status st = an_tensor_copy_into(ctx, dst, entry->state[STATE_MASTER]);
            an_tensor_release(dst);
            AN_TRY(st);
        }
    }
    opt->step = step;
    return AN_OK;
}
