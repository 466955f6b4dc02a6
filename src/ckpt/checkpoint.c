/* checkpoint.c — the step directories of a run: atomic saves (temp directory, SHA256SUMS last,
 * rename, fsync), retention, finding the newest complete checkpoint for `resume: auto`, and
 * loading one back all-or-nothing (see checkpoint.h; file layout in docs/formats.md).
 *
 * Ownership: nothing here outlives a call; the contents' pointers are borrowed. */
#include "ckpt/checkpoint_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt/atomic.h"  /* an_atomic_write_text: recipe.yaml */
#include "ckpt/sha256.h"  /* SHA256SUMS */

#define PATH_SIZE 4096

void an_ckpt_step_dir(const char *run_dir, int64_t step, char *buf, size_t size) {
    snprintf(buf, size, "%s/step_%lld", run_dir, (long long)step);
}

static void tmp_dir(const char *run_dir, int64_t step, char *buf, size_t size) {
    snprintf(buf, size, "%s/step_%lld.tmp", run_dir, (long long)step);
}

/* ---- file-system helpers ----------------------------------------------------------------------- */

/* buf = dir/name; AN_ERR_INPUT when it does not fit. */
static an_status join(an_ctx *ctx, char *buf, size_t size, const char *dir, const char *name) {
    int n = snprintf(buf, size, "%s/%s", dir, name);
    AN_CHECK(ctx, n >= 0 && (size_t)n < size, AN_ERR_INPUT, "%s/%s: path too long", dir, name);
    return AN_OK;
}

static bool is_dir(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

static bool exists(const char *path) {
    struct stat sb;
    return lstat(path, &sb) == 0;
}

/* mkdir -p */
static an_status make_dirs(an_ctx *ctx, const char *path) {
    char buf[PATH_SIZE];
    AN_CHECK(ctx, strlen(path) > 0 && strlen(path) < sizeof buf, AN_ERR_INPUT, "checkpoint: run directory '%s' is not a usable path", path);
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1;; p++) {
        if (*p != '/' && *p != '\0') continue;
        char saved = *p;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s: cannot create directory: %s", buf, strerror(errno));
        *p = saved;
        if (!saved) break;
    }
    AN_CHECK(ctx, is_dir(path), AN_ERR_INPUT, "%s: exists and is not a directory", path);
    return AN_OK;
}

/* rm -rf path (a missing path is fine). */
static an_status remove_tree(an_ctx *ctx, const char *path) {
    struct stat sb;
    if (lstat(path, &sb) != 0) {
        AN_CHECK(ctx, errno == ENOENT, AN_ERR_INPUT, "%s: cannot stat: %s", path, strerror(errno));
        return AN_OK;
    }
    if (S_ISDIR(sb.st_mode)) {
        DIR *d = opendir(path);
        AN_CHECK(ctx, d != NULL, AN_ERR_INPUT, "%s: cannot open directory: %s", path, strerror(errno));
        struct dirent *e;
        an_status st = AN_OK;
        while (st == AN_OK && (e = readdir(d)) != NULL) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char child[PATH_SIZE];
            snprintf(child, sizeof child, "%s/%s", path, e->d_name);
            st = remove_tree(ctx, child);
        }
        closedir(d);
        AN_TRY(st);
        AN_CHECK(ctx, rmdir(path) == 0 || errno == ENOENT, AN_ERR_INPUT, "%s: cannot remove: %s", path, strerror(errno));
    } else {
        AN_CHECK(ctx, unlink(path) == 0 || errno == ENOENT, AN_ERR_INPUT, "%s: cannot remove: %s", path, strerror(errno));
    }
    return AN_OK;
}

/* Makes a directory's entries durable. Best effort: some file systems refuse fsync on directories. */
static void sync_dir(const char *path) {
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
}

/* "step_<N>" (canonical decimal, no sign or leading zero) with an optional ".tmp"; false otherwise. */
static bool parse_step_name(const char *name, int64_t *step, bool *is_tmp) {
    if (strncmp(name, "step_", 5) != 0) return false;
    const char *p = name + 5;
    int digits = 0;
    int64_t n = 0;
    while (p[digits] >= '0' && p[digits] <= '9') {
        if (digits == 18) return false;
        n = n * 10 + (p[digits] - '0');
        digits++;
    }
    if (digits == 0 || (digits > 1 && p[0] == '0')) return false;
    const char *rest = p + digits;
    if (*rest && strcmp(rest, ".tmp") != 0) return false;
    *step = n;
    *is_tmp = *rest != '\0';
    return true;
}

static int newest_first(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* The N of every step_<N> directory of run_dir, newest first (malloc'd; *n may be 0). */
static an_status list_steps(an_ctx *ctx, const char *run_dir, int64_t **steps, int *n) {
    *steps = NULL, *n = 0;
    DIR *d = opendir(run_dir);
    AN_CHECK(ctx, d != NULL, AN_ERR_INPUT, "%s: cannot open directory: %s", run_dir, strerror(errno));
    int cap = 0;
    an_status st = AN_OK;
    struct dirent *e;
    while (st == AN_OK && (e = readdir(d)) != NULL) {
        int64_t step;
        bool is_tmp;
        char path[PATH_SIZE];
        snprintf(path, sizeof path, "%s/%s", run_dir, e->d_name);
        if (!parse_step_name(e->d_name, &step, &is_tmp) || is_tmp || !is_dir(path)) continue;
        if (*n == cap) {
            cap = cap ? 2 * cap : 16;
            int64_t *grown = realloc(*steps, (size_t)cap * sizeof *grown);
            if (!grown) {
                st = an_error_set(ctx, AN_ERR_INTERNAL, __FILE__, __LINE__, "out of host memory");
                break;
            }
            *steps = grown;
        }
        (*steps)[(*n)++] = step;
    }
    closedir(d);
    if (st != AN_OK) {
        free(*steps);
        *steps = NULL, *n = 0;
        return st;
    }
    if (*n > 1) qsort(*steps, (size_t)*n, sizeof **steps, newest_first);
    return AN_OK;
}

an_status an_ckpt_clean(an_ctx *ctx, const char *run_dir) {
    DIR *d = opendir(run_dir);
    if (!d && errno == ENOENT) return AN_OK;
    AN_CHECK(ctx, d != NULL, AN_ERR_INPUT, "%s: cannot open directory: %s", run_dir, strerror(errno));
    an_status st = AN_OK;
    struct dirent *e;
    while (st == AN_OK && (e = readdir(d)) != NULL) {
        int64_t step;
        bool is_tmp;
        if (!parse_step_name(e->d_name, &step, &is_tmp) || !is_tmp) continue;
        char path[PATH_SIZE];
        snprintf(path, sizeof path, "%s/%s", run_dir, e->d_name);
        st = remove_tree(ctx, path);
    }
    closedir(d);
    return st;
}

/* ---- saving ------------------------------------------------------------------------------------ */

an_status an_ckpt_save_begin(an_ctx *ctx, const char *run_dir, int64_t step) {
    AN_CHECK(ctx, step >= 0, AN_ERR_INPUT, "checkpoint: step %lld; expected >= 0", (long long)step);
    AN_TRY(make_dirs(ctx, run_dir));
    AN_TRY(an_ckpt_clean(ctx, run_dir));
    char final[PATH_SIZE], tmp[PATH_SIZE];
    an_ckpt_step_dir(run_dir, step, final, sizeof final);
    tmp_dir(run_dir, step, tmp, sizeof tmp);
    AN_CHECK(ctx, !exists(final), AN_ERR_INPUT,
             "%s: already exists; a checkpoint is never overwritten (remove it, or save under another step)", final);
    AN_CHECK(ctx, mkdir(tmp, 0755) == 0, AN_ERR_INPUT, "%s: cannot create directory: %s", tmp, strerror(errno));
    return AN_OK;
}

static an_status check_save_contents(an_ctx *ctx, const an_ckpt_contents *c) {
    AN_CHECK(ctx, c->model && c->optim && c->rng && c->cursor, AN_ERR_INPUT,
             "checkpoint: saving needs the model, the optimizer, the RNG and the data cursor");
    AN_CHECK(ctx, c->step >= 0, AN_ERR_INPUT, "checkpoint: step %lld; expected >= 0", (long long)c->step);
    AN_CHECK(ctx, c->world_size >= 0 && c->rank >= 0 && c->rank < ckpt_world(c->world_size), AN_ERR_INPUT,
             "checkpoint: rank %d of world size %d", c->rank, c->world_size);
    AN_CHECK(ctx, c->rank != 0 || c->recipe_text != NULL, AN_ERR_INPUT,
             "checkpoint: the resolved recipe text is required (it is saved as %s)", CKPT_RECIPE_FILE);
    AN_CHECK(ctx, c->keep_last >= 0, AN_ERR_INPUT, "checkpoint: keep_last = %d; expected >= 0 (0 keeps all)", c->keep_last);
    return AN_OK;
}

an_status an_ckpt_save_rank(an_ctx *ctx, const char *run_dir, const an_ckpt_contents *c) {
    AN_TRY(check_save_contents(ctx, c));
    char tmp[PATH_SIZE], name[64], path[PATH_SIZE];
    tmp_dir(run_dir, c->step, tmp, sizeof tmp);
    AN_CHECK(ctx, is_dir(tmp), AN_ERR_INPUT, "%s: does not exist (an_ckpt_save_begin first)", tmp);
    ckpt_state_file_name(c->world_size, c->rank, name, sizeof name);
    AN_TRY(join(ctx, path, sizeof path, tmp, name));
    AN_TRY(ckpt_state_write(ctx, path, c));
    if (c->rank != 0) return AN_OK;
    AN_TRY(ckpt_weights_write(ctx, tmp, c));
    AN_TRY(join(ctx, path, sizeof path, tmp, CKPT_RECIPE_FILE));
    return an_atomic_write_text(ctx, path, c->recipe_text);
}

/* keep_last: deletes the oldest complete checkpoints older than `step` beyond the newest `keep`.
 * Each goes through a rename to step_<M>.tmp first, so a crash mid-delete leaves a leftover the
 * next clean removes, never a damaged step_<M>. */
static an_status apply_retention(an_ctx *ctx, const char *run_dir, int64_t step, int keep) {
    if (keep <= 0) return AN_OK;
    int64_t *steps;
    int n;
    AN_TRY(list_steps(ctx, run_dir, &steps, &n));
    an_status st = AN_OK;
    int kept = 0;
    for (int i = 0; st == AN_OK && i < n; i++) {
        if (steps[i] > step) continue; /* a later run's: not ours to judge */
        if (kept++ < keep) continue;
        char dir[PATH_SIZE], doomed[PATH_SIZE];
        an_ckpt_step_dir(run_dir, steps[i], dir, sizeof dir);
        tmp_dir(run_dir, steps[i], doomed, sizeof doomed);
        st = remove_tree(ctx, doomed);
        if (st == AN_OK && rename(dir, doomed) != 0)
            st = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__,
                              "%s: step_%lld was saved, but removing this older checkpoint (keep_last %d) failed: %s",
                              dir, (long long)step, keep, strerror(errno));
        if (st == AN_OK) st = remove_tree(ctx, doomed);
    }
    free(steps);
    if (st == AN_OK) sync_dir(run_dir);
    return st;
}

an_status an_ckpt_save_commit(an_ctx *ctx, const char *run_dir, const an_ckpt_contents *c) {
    AN_TRY(check_save_contents(ctx, c));
    AN_CHECK(ctx, c->rank == 0, AN_ERR_INPUT, "checkpoint: only rank 0 commits (this is rank %d)", c->rank);
    char tmp[PATH_SIZE], final[PATH_SIZE], name[64], path[PATH_SIZE];
    tmp_dir(run_dir, c->step, tmp, sizeof tmp);
    an_ckpt_step_dir(run_dir, c->step, final, sizeof final);
    for (int r = 0; r < ckpt_world(c->world_size); r++) {
        ckpt_state_file_name(c->world_size, r, name, sizeof name);
        AN_TRY(join(ctx, path, sizeof path, tmp, name));
        AN_CHECK(ctx, exists(path), AN_ERR_INPUT, "%s: rank %d has not written its training state (%s)", tmp, r, name);
    }
    AN_TRY(an_sha256sums_write(ctx, tmp));
    sync_dir(tmp);
    AN_CHECK(ctx, !exists(final), AN_ERR_INPUT, "%s: appeared while saving; refusing to overwrite it", final);
    AN_CHECK(ctx, rename(tmp, final) == 0, AN_ERR_INPUT, "%s: cannot rename %s to it: %s", final, tmp, strerror(errno));
    sync_dir(run_dir);
    return apply_retention(ctx, run_dir, c->step, c->keep_last);
}

an_status an_ckpt_save(an_ctx *ctx, const char *run_dir, const an_ckpt_contents *c) {
    AN_CHECK(ctx, ckpt_world(c->world_size) == 1, AN_ERR_INPUT,
             "checkpoint: world size %d: with several ranks use an_ckpt_save_begin/_rank/_commit with barriers between",
             c->world_size);
    AN_TRY(check_save_contents(ctx, c));
    AN_TRY(an_ckpt_save_begin(ctx, run_dir, c->step));
    an_status st = an_ckpt_save_rank(ctx, run_dir, c);
    if (st == AN_OK) st = an_ckpt_save_commit(ctx, run_dir, c);
    char tmp[PATH_SIZE];
    tmp_dir(run_dir, c->step, tmp, sizeof tmp);
    if (st != AN_OK && exists(tmp)) (void)remove_tree(ctx, tmp); /* the first error is kept */
    return st;
}

/* ---- verifying and finding --------------------------------------------------------------------- */

an_status an_ckpt_verify(an_ctx *ctx, const char *step_dir) {
    AN_CHECK(ctx, is_dir(step_dir), AN_ERR_INPUT, "%s: not a directory", step_dir);
    AN_TRY(an_sha256sums_verify(ctx, step_dir));
    char path[PATH_SIZE];
    const char *needed[][2] = {{CKPT_RECIPE_FILE, NULL}, {CKPT_ADAPTER_WEIGHTS, CKPT_MODEL_WEIGHTS},
                               {"training_state.h5", "training_state.rank0.h5"}};
    for (size_t i = 0; i < sizeof needed / sizeof *needed; i++) {
        bool found = false;
        for (int k = 0; k < 2 && !found; k++) {
            if (!needed[i][k]) continue;
            snprintf(path, sizeof path, "%s/%s", step_dir, needed[i][k]);
            found = exists(path);
        }
        AN_CHECK(ctx, found, AN_ERR_INPUT, "%s: no %s%s%s: not a complete checkpoint", step_dir, needed[i][0],
                 needed[i][1] ? " or " : "", needed[i][1] ? needed[i][1] : "");
    }
    return AN_OK;
}

/* The recorded message without its "file.c:line: " prefix. */
static const char *reason_of(const an_ctx *ctx) {
    const char *m = an_error_message(ctx), *p = strstr(m, ": ");
    return p ? p + 2 : m;
}

an_status an_ckpt_find_latest(an_ctx *ctx, const char *run_dir, char *path, size_t size, int64_t *step) {
    *step = -1;
    if (size) path[0] = '\0';
    if (!exists(run_dir)) return AN_OK;
    AN_CHECK(ctx, is_dir(run_dir), AN_ERR_INPUT, "%s: is not a directory", run_dir);
    AN_TRY(an_ckpt_clean(ctx, run_dir));
    int64_t *steps;
    int n;
    AN_TRY(list_steps(ctx, run_dir, &steps, &n));
    if (n == 0) {
        free(steps);
        return AN_OK;
    }
    char newest[PATH_SIZE];
    an_ckpt_step_dir(run_dir, steps[0], newest, sizeof newest);
    if (an_ckpt_verify(ctx, newest) == AN_OK) {
        AN_CHECK(ctx, strlen(newest) < size, AN_ERR_INPUT, "%s: path longer than the %zu bytes given", newest, size);
        snprintf(path, size, "%s", newest);
        *step = steps[0];
        free(steps);
        return AN_OK;
    }
    char why[1024], older[PATH_SIZE] = "";
    snprintf(why, sizeof why, "%s", reason_of(ctx));
    an_error_clear(ctx);
    for (int i = 1; i < n && !older[0]; i++) {
        char dir[PATH_SIZE];
        an_ckpt_step_dir(run_dir, steps[i], dir, sizeof dir);
        if (an_ckpt_verify(ctx, dir) == AN_OK) snprintf(older, sizeof older, "%s", dir);
        an_error_clear(ctx);
    }
    free(steps);
    if (older[0])
        return an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__,
                            "resume: auto: the newest checkpoint %s is damaged: %s. anneal does not fall back to an "
                            "older checkpoint on its own; to continue from the newest intact one, pass resume: %s",
                            newest, why, older);
    return an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__,
                        "resume: auto: the newest checkpoint %s is damaged: %s. No older checkpoint in %s verifies "
                        "either", newest, why, run_dir);
}

/* ---- loading ----------------------------------------------------------------------------------- */

static void tensor_shape(const an_tensor *t, char *buf, size_t size) {
    snprintf(buf, size, "(");
    for (int i = 0; i < t->ndim; i++) snprintf(buf + strlen(buf), size - strlen(buf), "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    snprintf(buf + strlen(buf), size - strlen(buf), ")");
}

/* The file's optimizer state must be exactly the optimizer's: same names, same shapes. */
static an_status check_optim_state(an_ctx *ctx, const char *file, const ckpt_state *s, const an_optim *opt) {
    int count = an_optim_state_count(opt);
    for (int i = 0; i < count; i++) {
        const char *name;
        const an_tensor *want = an_optim_state_at(opt, i, &name);
        int j = 0;
        while (j < s->n_tensors && strcmp(s->names[j], name) != 0) j++;
        AN_CHECK(ctx, j < s->n_tensors, AN_ERR_INPUT,
                 "%s: no optimizer state '%s' (the file has %d state tensors, this run's optimizer %d): a checkpoint of "
                 "another model or adapter?", file, name, s->n_tensors, count);
        const an_tensor *got = s->tensors[j];
        bool same = got->ndim == want->ndim;
        for (int d = 0; same && d < got->ndim; d++) same = got->shape[d] == want->shape[d];
        char a[96], b[96];
        tensor_shape(got, a, sizeof a), tensor_shape(want, b, sizeof b);
        AN_CHECK(ctx, same, AN_ERR_INPUT,
                 "%s: optimizer state '%s' has shape %s, this run's is %s: a checkpoint of another model?", file, name, a, b);
    }
    for (int j = 0; j < s->n_tensors; j++)
        AN_CHECK(ctx, an_optim_state_find(opt, s->names[j]) != NULL, AN_ERR_INPUT,
                 "%s: optimizer state '%s' belongs to no parameter this run trains: a checkpoint of another model?",
                 file, s->names[j]);
    return AN_OK;
}

static an_status read_state(an_ctx *ctx, const char *step_dir, const an_ckpt_contents *c, ckpt_state *s, char *file,
                            size_t size) {
    int world = ckpt_world(c->world_size);
    AN_CHECK(ctx, c->world_size >= 0 && c->rank >= 0 && c->rank < world, AN_ERR_INPUT,
             "checkpoint: rank %d of world size %d", c->rank, c->world_size);
    char name[64];
    ckpt_state_file_name(c->world_size, c->rank, name, sizeof name);
    snprintf(file, size, "%s/%s", step_dir, name);
    if (!exists(file)) {
        char other[PATH_SIZE];
        snprintf(other, sizeof other, "%s/%s", step_dir, world == 1 ? "training_state.rank0.h5" : "training_state.h5");
        AN_CHECK(ctx, !exists(other), AN_ERR_INPUT,
                 "%s: missing; the checkpoint was saved by %s, this run has world size %d (resharding is not supported)",
                 file, world == 1 ? "several ranks" : "one process", world);
        AN_CHECK(ctx, 0, AN_ERR_INPUT, "%s: missing (a partial checkpoint)", file);
    }
    AN_TRY(ckpt_state_read(ctx, file, s));
    if (s->world_size != world || s->rank != c->rank) {
        an_status st = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__,
                                    "%s: written by rank %lld of %lld; this is rank %d of %d", file, (long long)s->rank,
                                    (long long)s->world_size, c->rank, world);
        ckpt_state_free(s);
        return st;
    }
    return AN_OK;
}

an_status an_ckpt_load(an_ctx *ctx, const char *step_dir, an_ckpt_contents *c) {
    AN_CHECK(ctx, c->model != NULL, AN_ERR_INPUT, "checkpoint: loading needs the model");
    if (!c->verified) AN_TRY(an_ckpt_verify(ctx, step_dir));
    ckpt_weights w;
    AN_TRY(ckpt_weights_open(ctx, step_dir, c->model, &w));
    ckpt_state s;
    char file[PATH_SIZE];
    an_status st = read_state(ctx, step_dir, c, &s, file, sizeof file);
    if (st != AN_OK) {
        ckpt_weights_close(&w);
        return st;
    }
    if (c->optim) st = check_optim_state(ctx, file, &s, c->optim);
    /* Everything fits: from here on only copies. */
    if (st == AN_OK) st = ckpt_weights_apply(ctx, &w, c->model);
    if (st == AN_OK && c->optim)
        st = an_optim_restore(ctx, c->optim, s.optimizer_step, s.n_tensors, (const char *const *)s.names, s.tensors);
    if (st == AN_OK) {
        if (c->rng) *c->rng = s.rng;
        if (c->cursor) *c->cursor = s.cursor;
        memcpy(c->counters, s.counters, sizeof c->counters);
        c->n_counters = s.n_counters;
        c->step = s.step;
    }
    ckpt_state_free(&s);
    ckpt_weights_close(&w);
    return st;
}
