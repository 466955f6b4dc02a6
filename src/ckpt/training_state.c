/* training_state.c — training_state[.rank<R>].h5: the optimizer's state tensors by name (exact
 * bytes, stored with their dtype), the step count, the RNG, the data cursor, the schedule position
 * and the trainer's counters, through the HDF5 C API (layout: docs/formats.md, "Checkpoints").
 *
 * Rules: scalars are attributes, tensors are datasets with the tensor's shape and an attribute
 * "dtype" (an_dtype_name); file types are fixed little-endian ones and reading checks the file type
 * before reading, so HDF5 never converts a value. HDF5's automatic error printing is off around
 * every call here (library code never prints): failures become one AN_ERR_INPUT message naming the
 * file, the object and HDF5's own innermost reason. Object timestamps are not written, so the same
 * state gives the same bytes. */
#include "ckpt/checkpoint_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define OPTIM_GROUP "optimizer"

void ckpt_state_file_name(int world_size, int rank, char *buf, size_t size) {
    if (ckpt_world(world_size) == 1) snprintf(buf, size, "training_state.h5");
    else snprintf(buf, size, "training_state.rank%d.h5", rank);
}

/* ---- HDF5 plumbing ----------------------------------------------------------------------------- */

typedef struct {
    H5E_auto2_t fn;
    void *data;
} quiet_scope;

static void quiet_begin(quiet_scope *q) {
    if (H5Eget_auto2(H5E_DEFAULT, &q->fn, &q->data) < 0) q->fn = NULL, q->data = NULL;
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

static void quiet_end(const quiet_scope *q) { H5Eset_auto2(H5E_DEFAULT, q->fn, q->data); }

static herr_t innermost(unsigned n, const H5E_error2_t *e, void *data) {
    if (n == 0 && e->desc) snprintf(data, 200, "%s", e->desc);
    return 0;
}

/* Records "path: what (HDF5: reason)" and clears HDF5's error stack. */
static an_status h5_fail(an_ctx *ctx, int line, const char *path, const char *what) {
    char reason[200] = "";
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, innermost, reason);
    H5Eclear2(H5E_DEFAULT);
    return an_error_set(ctx, AN_ERR_INPUT, __FILE__, line, "%s: %s%s%s%s", path, what, reason[0] ? " (HDF5: " : "",
                        reason, reason[0] ? ")" : "");
}
#define H5_FAIL(what) h5_fail(ctx, __LINE__, path, (what))

static void h5_close(hid_t id) {
    if (id >= 0) H5Oclose(id);
}

/* File access without HDF5's file locks: a step directory has one writer and is read only after
 * its rename, and locking fails on file systems clusters use (Lustre, NFS). */
static hid_t file_access(void) {
    hid_t p = H5Pcreate(H5P_FILE_ACCESS);
#if H5_VERSION_GE(1, 10, 7)
    if (p >= 0) H5Pset_file_locking(p, 0, 1);
#endif
    return p;
}

/* The file type a dtype is stored as; bf16 and f16 are stored as their raw 16 bits. */
static hid_t file_type(an_dtype d) {
    switch (d) {
    case AN_F32: return H5T_IEEE_F32LE;
    case AN_F64: return H5T_IEEE_F64LE;
    case AN_BF16: case AN_F16: return H5T_STD_U16LE;
    case AN_I32: return H5T_STD_I32LE;
    case AN_I64: return H5T_STD_I64LE;
    default: return H5T_STD_U8LE;
    }
}

static hid_t memory_type(an_dtype d) {
    switch (d) {
    case AN_F32: return H5T_NATIVE_FLOAT;
    case AN_F64: return H5T_NATIVE_DOUBLE;
    case AN_BF16: case AN_F16: return H5T_NATIVE_UINT16;
    case AN_I32: return H5T_NATIVE_INT32;
    case AN_I64: return H5T_NATIVE_INT64;
    default: return H5T_NATIVE_UINT8;
    }
}

/* Object creation properties without timestamps (groups and datasets). */
static hid_t untimed(hid_t cls) {
    hid_t p = H5Pcreate(cls);
    if (p >= 0) H5Pset_obj_track_times(p, 0);
    return p;
}

static herr_t put_attr(hid_t loc, const char *name, hid_t ftype, hid_t mtype, const void *value) {
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t a = space >= 0 ? H5Acreate2(loc, name, ftype, space, H5P_DEFAULT, H5P_DEFAULT) : -1;
    herr_t r = a >= 0 ? H5Awrite(a, mtype, value) : -1;
    if (a >= 0) H5Aclose(a);
    if (space >= 0) H5Sclose(space);
    return r;
}

static herr_t put_i64(hid_t loc, const char *name, int64_t v) {
    return put_attr(loc, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &v);
}
static herr_t put_u64(hid_t loc, const char *name, uint64_t v) {
    return put_attr(loc, name, H5T_STD_U64LE, H5T_NATIVE_UINT64, &v);
}
static herr_t put_f64(hid_t loc, const char *name, double v) {
    return put_attr(loc, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &v);
}
static herr_t put_str(hid_t loc, const char *name, const char *v) {
    hid_t t = H5Tcopy(H5T_C_S1);
    herr_t r = t >= 0 && H5Tset_size(t, strlen(v) + 1) >= 0 ? put_attr(loc, name, t, t, v) : -1;
    if (t >= 0) H5Tclose(t);
    return r;
}

/* Reads scalar attribute `name` of `where` (an object of path) when its file type is exactly
 * `ftype`. */
static an_status get_attr(an_ctx *ctx, const char *path, hid_t loc, const char *where, const char *name, hid_t ftype,
                          hid_t mtype, void *value) {
    char what[256];
    htri_t has = H5Aexists(loc, name);
    snprintf(what, sizeof what, "%s has no attribute '%s'", where, name);
    if (has <= 0) return H5_FAIL(what);
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
    hid_t t = a >= 0 ? H5Aget_type(a) : -1;
    hid_t s = a >= 0 ? H5Aget_space(a) : -1;
    bool ok = t >= 0 && s >= 0 && H5Tequal(t, ftype) > 0 && H5Sget_simple_extent_type(s) == H5S_SCALAR;
    herr_t r = ok ? H5Aread(a, mtype, value) : -1;
    if (t >= 0) H5Tclose(t);
    if (s >= 0) H5Sclose(s);
    if (a >= 0) H5Aclose(a);
    snprintf(what, sizeof what, "%s: attribute '%s' is not a scalar of the type anneal writes", where, name);
    if (!ok) return H5_FAIL(what);
    snprintf(what, sizeof what, "%s: attribute '%s' cannot be read", where, name);
    if (r < 0) return H5_FAIL(what);
    return AN_OK;
}

static an_status get_i64(an_ctx *ctx, const char *path, hid_t loc, const char *where, const char *name, int64_t *v) {
    return get_attr(ctx, path, loc, where, name, H5T_STD_I64LE, H5T_NATIVE_INT64, v);
}
static an_status get_u64(an_ctx *ctx, const char *path, hid_t loc, const char *where, const char *name, uint64_t *v) {
    return get_attr(ctx, path, loc, where, name, H5T_STD_U64LE, H5T_NATIVE_UINT64, v);
}

/* String attribute into buf (fixed-length strings only, as written here). */
static an_status get_str(an_ctx *ctx, const char *path, hid_t loc, const char *name, char *buf, size_t size) {
    char what[256];
    snprintf(what, sizeof what, "no attribute '%s' (not an anneal training state file)", name);
    if (H5Aexists(loc, name) <= 0) return H5_FAIL(what);
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
    hid_t t = a >= 0 ? H5Aget_type(a) : -1;
    size_t n = t >= 0 && H5Tget_class(t) == H5T_STRING && !H5Tis_variable_str(t) ? H5Tget_size(t) : 0;
    herr_t r = -1;
    if (n > 0 && n < size) {
        memset(buf, 0, size);
        r = H5Aread(a, t, buf);
    }
    if (t >= 0) H5Tclose(t);
    if (a >= 0) H5Aclose(a);
    snprintf(what, sizeof what, "attribute '%s' is not a short fixed-length string", name);
    if (r < 0) return H5_FAIL(what);
    return AN_OK;
}

/* ---- writing ----------------------------------------------------------------------------------- */

static an_status write_tensor(an_ctx *ctx, const char *path, hid_t group, const char *name, const an_tensor *t) {
    char what[512];
    snprintf(what, sizeof what, "cannot write optimizer state '%s'", name);
    AN_CHECK(ctx, name[0] && !strchr(name, '/') && strcmp(name, ".") != 0, AN_ERR_INPUT,
             "%s: optimizer state name '%s' cannot be an HDF5 dataset name", path, name);
    an_tensor *host = t->device == AN_CPU ? an_tensor_retain((an_tensor *)t) : an_tensor_to(ctx, t, t->dtype, AN_CPU);
    if (!host) return an_error_status(ctx);
    hsize_t dims[AN_MAX_DIMS];
    for (int i = 0; i < t->ndim; i++) dims[i] = (hsize_t)t->shape[i];
    hid_t space = t->ndim ? H5Screate_simple(t->ndim, dims, NULL) : H5Screate(H5S_SCALAR);
    hid_t dcpl = untimed(H5P_DATASET_CREATE);
    hid_t ds = space >= 0 && dcpl >= 0
                   ? H5Dcreate2(group, name, file_type(t->dtype), space, H5P_DEFAULT, dcpl, H5P_DEFAULT)
                   : -1;
    herr_t r = ds >= 0 ? H5Dwrite(ds, memory_type(t->dtype), H5S_ALL, H5S_ALL, H5P_DEFAULT, an_tensor_data(host)) : -1;
    if (r >= 0) r = put_str(ds, "dtype", an_dtype_name(t->dtype));
    if (ds >= 0) H5Dclose(ds);
    if (dcpl >= 0) H5Pclose(dcpl);
    if (space >= 0) H5Sclose(space);
    an_tensor_release(host);
    if (r < 0) return H5_FAIL(what);
    return AN_OK;
}

static hid_t new_group(hid_t file, const char *name) {
    hid_t gcpl = untimed(H5P_GROUP_CREATE);
    hid_t g = gcpl >= 0 ? H5Gcreate2(file, name, H5P_DEFAULT, gcpl, H5P_DEFAULT) : -1;
    if (gcpl >= 0) H5Pclose(gcpl);
    return g;
}

static an_status write_body(an_ctx *ctx, const char *path, hid_t file, const an_ckpt_contents *c) {
    an_optim *opt = c->optim;
    bool ok = put_str(file, "format", CKPT_STATE_FORMAT) >= 0 && put_i64(file, "format_version", CKPT_STATE_VERSION) >= 0 &&
              put_str(file, "producer", "anneal " ANNEAL_VERSION) >= 0 && put_i64(file, "step", c->step) >= 0 &&
              put_i64(file, "world_size", ckpt_world(c->world_size)) >= 0 && put_i64(file, "rank", c->rank) >= 0;
    if (!ok) return H5_FAIL("cannot write the file attributes");

    hid_t g = new_group(file, "rng");
    ok = g >= 0 && put_u64(g, "seed", c->rng->seed) >= 0 && put_u64(g, "offset", c->rng->offset) >= 0;
    h5_close(g);
    if (!ok) return H5_FAIL("cannot write /rng");

    g = new_group(file, "data_cursor");
    ok = g >= 0 && put_i64(g, "epoch", c->cursor->epoch) >= 0 && put_i64(g, "position", c->cursor->position) >= 0 &&
         put_i64(g, "shuffle_seed", c->cursor->shuffle_seed) >= 0;
    h5_close(g);
    if (!ok) return H5_FAIL("cannot write /data_cursor");

    g = new_group(file, "schedule");
    ok = g >= 0 && put_i64(g, "position", an_optim_step_count(opt)) >= 0 && put_f64(g, "next_lr", an_optim_lr(opt)) >= 0;
    h5_close(g);
    if (!ok) return H5_FAIL("cannot write /schedule");

    g = new_group(file, "counters");
    ok = g >= 0;
    for (int i = 0; ok && i < c->n_counters; i++) ok = put_i64(g, c->counters[i].name, c->counters[i].value) >= 0;
    h5_close(g);
    if (!ok) return H5_FAIL("cannot write /counters");

    g = new_group(file, OPTIM_GROUP);
    if (g < 0 || put_i64(g, "step", an_optim_step_count(opt)) < 0) {
        h5_close(g);
        return H5_FAIL("cannot write /" OPTIM_GROUP);
    }
    an_status st = AN_OK;
    for (int i = 0; st == AN_OK && i < an_optim_state_count(opt); i++) {
        const char *name;
        an_tensor *t = an_optim_state_at(opt, i, &name);
        st = write_tensor(ctx, path, g, name, t);
    }
    h5_close(g);
    return st;
}

static bool counter_name_ok(const char *s) {
    if (!s[0] || strlen(s) >= AN_CKPT_COUNTER_NAME_MAX) return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || *s == '_' || *s == '.'))
            return false;
    return true;
}

an_status ckpt_state_write(an_ctx *ctx, const char *path, const an_ckpt_contents *c) {
    AN_CHECK(ctx, c->n_counters >= 0 && c->n_counters <= AN_CKPT_MAX_COUNTERS, AN_ERR_INPUT,
             "checkpoint: %d counters; at most %d", c->n_counters, AN_CKPT_MAX_COUNTERS);
    for (int i = 0; i < c->n_counters; i++) {
        AN_CHECK(ctx, counter_name_ok(c->counters[i].name), AN_ERR_INPUT,
                 "checkpoint: counter name '%.*s' must be 1-%d characters of [A-Za-z0-9_.]", AN_CKPT_COUNTER_NAME_MAX,
                 c->counters[i].name, AN_CKPT_COUNTER_NAME_MAX - 1);
        for (int j = 0; j < i; j++)
            AN_CHECK(ctx, strcmp(c->counters[i].name, c->counters[j].name) != 0, AN_ERR_INPUT,
                     "checkpoint: counter '%s' given twice", c->counters[i].name);
    }
    quiet_scope q;
    quiet_begin(&q);
    an_status st = AN_OK;
    hid_t fapl = file_access();
    hid_t file = fapl >= 0 ? H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, fapl) : -1;
    if (fapl >= 0) H5Pclose(fapl);
    if (file < 0) st = H5_FAIL("cannot create the file");
    else {
        st = write_body(ctx, path, file, c);
        if (H5Fclose(file) < 0 && st == AN_OK) st = H5_FAIL("cannot close the file");
    }
    quiet_end(&q);
    if (st != AN_OK) return st;
    /* HDF5 does not fsync; the directory rename must not overtake the data. */
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    AN_CHECK(ctx, fd >= 0, AN_ERR_INPUT, "%s: cannot reopen to fsync: %s", path, strerror(errno));
    int r = fsync(fd);
    close(fd);
    AN_CHECK(ctx, r == 0, AN_ERR_INPUT, "%s: fsync failed: %s", path, strerror(errno));
    return AN_OK;
}

/* ---- reading ----------------------------------------------------------------------------------- */

void ckpt_state_free(ckpt_state *s) {
    for (int i = 0; i < s->n_tensors; i++) {
        free(s->names[i]);
        an_tensor_release(s->tensors[i]);
    }
    free(s->names);
    free(s->tensors);
    memset(s, 0, sizeof *s);
}

/* Dataset `name` of group: checks its dtype attribute and file type (f32 for optimizer state),
 * rank, and reads it into a new CPU tensor. */
static an_status read_tensor(an_ctx *ctx, const char *path, hid_t group, const char *name, an_tensor **out) {
    char where[512], what[700];
    snprintf(where, sizeof where, "/" OPTIM_GROUP "/%s", name);
    hid_t ds = H5Dopen2(group, name, H5P_DEFAULT);
    snprintf(what, sizeof what, "%s is not a dataset", where);
    if (ds < 0) return H5_FAIL(what);
    char dtype_name[16];
    an_status st = get_str(ctx, path, ds, "dtype", dtype_name, sizeof dtype_name);
    hid_t t = H5Dget_type(ds), space = H5Dget_space(ds);
    int ndim = space >= 0 ? H5Sget_simple_extent_ndims(space) : -1;
    hsize_t dims[AN_MAX_DIMS] = {0};
    an_tensor *tensor = NULL;
    if (st == AN_OK && strcmp(dtype_name, "f32") != 0)
        st = an_error_set(ctx, AN_ERR_INPUT, __FILE__, __LINE__, "%s: %s has dtype %s; optimizer state is f32", path,
                          where, dtype_name);
    if (st == AN_OK && (t < 0 || H5Tequal(t, H5T_IEEE_F32LE) <= 0)) {
        snprintf(what, sizeof what, "%s is not stored as little-endian f32", where);
        st = H5_FAIL(what);
    }
    if (st == AN_OK && (ndim < 0 || ndim > AN_MAX_DIMS)) {
        snprintf(what, sizeof what, "%s has %d dimensions; at most %d expected", where, ndim, AN_MAX_DIMS);
        st = H5_FAIL(what);
    }
    if (st == AN_OK && ndim > 0) H5Sget_simple_extent_dims(space, dims, NULL);
    if (st == AN_OK) {
        int64_t shape[AN_MAX_DIMS];
        for (int i = 0; i < ndim; i++) shape[i] = (int64_t)dims[i];
        tensor = an_tensor_new(ctx, AN_F32, AN_CPU, ndim, shape);
        if (!tensor) st = an_error_status(ctx);
    }
    if (st == AN_OK && H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, an_tensor_data(tensor)) < 0) {
        snprintf(what, sizeof what, "cannot read %s (truncated or corrupted file?)", where);
        st = H5_FAIL(what);
    }
    if (t >= 0) H5Tclose(t);
    if (space >= 0) H5Sclose(space);
    H5Dclose(ds);
    if (st != AN_OK) {
        an_tensor_release(tensor);
        return st;
    }
    *out = tensor;
    return AN_OK;
}

static an_status read_optimizer(an_ctx *ctx, const char *path, hid_t file, ckpt_state *s) {
    hid_t g = H5Gopen2(file, OPTIM_GROUP, H5P_DEFAULT);
    if (g < 0) return H5_FAIL("no group /" OPTIM_GROUP);
    H5G_info_t info;
    an_status st = get_i64(ctx, path, g, "/" OPTIM_GROUP, "step", &s->optimizer_step);
    if (st == AN_OK && H5Gget_info(g, &info) < 0) st = H5_FAIL("cannot list /" OPTIM_GROUP);
    if (st == AN_OK && info.nlinks > (hsize_t)1 << 24) st = H5_FAIL("/" OPTIM_GROUP " lists too many tensors");
    if (st == AN_OK) {
        s->names = calloc(info.nlinks + 1, sizeof *s->names);
        s->tensors = calloc(info.nlinks + 1, sizeof *s->tensors);
        if (!s->names || !s->tensors) st = an_error_set(ctx, AN_ERR_INTERNAL, __FILE__, __LINE__, "out of host memory");
    }
    for (hsize_t i = 0; st == AN_OK && i < info.nlinks; i++) {
        ssize_t n = H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, NULL, 0, H5P_DEFAULT);
        char *name = n > 0 ? calloc((size_t)n + 1, 1) : NULL;
        if (!name || H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, name, (size_t)n + 1, H5P_DEFAULT) != n) {
            free(name);
            st = H5_FAIL("cannot read the names in /" OPTIM_GROUP);
            break;
        }
        s->names[s->n_tensors] = name;
        st = read_tensor(ctx, path, g, name, &s->tensors[s->n_tensors]);
        if (st != AN_OK) free(name), s->names[s->n_tensors] = NULL;
        else s->n_tensors++;
    }
    H5Gclose(g);
    return st;
}

typedef struct {
    ckpt_state *s;
    bool bad;
} counter_names;

static herr_t collect_counter(hid_t loc, const char *name, const H5A_info_t *info, void *data) {
    counter_names *c = data;
    if (c->s->n_counters == AN_CKPT_MAX_COUNTERS || strlen(name) >= AN_CKPT_COUNTER_NAME_MAX) {
        c->bad = true;
        return 1; /* stop */
    }
    snprintf(c->s->counters[c->s->n_counters++].name, AN_CKPT_COUNTER_NAME_MAX, "%s", name);
    return 0;
}

static an_status read_counters(an_ctx *ctx, const char *path, hid_t file, ckpt_state *s) {
    hid_t g = H5Gopen2(file, "counters", H5P_DEFAULT);
    if (g < 0) return H5_FAIL("no group /counters");
    counter_names names = {s, false};
    hsize_t idx = 0;
    an_status st = AN_OK;
    if (H5Aiterate2(g, H5_INDEX_NAME, H5_ITER_INC, &idx, collect_counter, &names) < 0) st = H5_FAIL("cannot list /counters");
    else if (names.bad) st = H5_FAIL("/counters holds too many counters or a name too long");
    for (int i = 0; st == AN_OK && i < s->n_counters; i++)
        st = get_i64(ctx, path, g, "/counters", s->counters[i].name, &s->counters[i].value);
    H5Gclose(g);
    return st;
}

static an_status read_body(an_ctx *ctx, const char *path, hid_t file, ckpt_state *s) {
    char format[64];
    int64_t version;
    AN_TRY(get_str(ctx, path, file, "format", format, sizeof format));
    AN_CHECK(ctx, strcmp(format, CKPT_STATE_FORMAT) == 0, AN_ERR_INPUT, "%s: format is '%s', expected '%s'", path,
             format, CKPT_STATE_FORMAT);
    AN_TRY(get_i64(ctx, path, file, "/", "format_version", &version));
    AN_CHECK(ctx, version == CKPT_STATE_VERSION, AN_ERR_INPUT,
             "%s: format_version %lld; this anneal reads version %d", path, (long long)version, CKPT_STATE_VERSION);
    AN_TRY(get_i64(ctx, path, file, "/", "step", &s->step));
    AN_TRY(get_i64(ctx, path, file, "/", "world_size", &s->world_size));
    AN_TRY(get_i64(ctx, path, file, "/", "rank", &s->rank));
    AN_CHECK(ctx, s->step >= 0 && s->world_size >= 1 && s->rank >= 0 && s->rank < s->world_size, AN_ERR_INPUT,
             "%s: step %lld, world_size %lld, rank %lld are not consistent", path, (long long)s->step,
             (long long)s->world_size, (long long)s->rank);

    hid_t g = H5Gopen2(file, "rng", H5P_DEFAULT);
    if (g < 0) return H5_FAIL("no group /rng");
    an_status st = get_u64(ctx, path, g, "/rng", "seed", &s->rng.seed);
    if (st == AN_OK) st = get_u64(ctx, path, g, "/rng", "offset", &s->rng.offset);
    H5Gclose(g);
    AN_TRY(st);

    g = H5Gopen2(file, "data_cursor", H5P_DEFAULT);
    if (g < 0) return H5_FAIL("no group /data_cursor");
    st = get_i64(ctx, path, g, "/data_cursor", "epoch", &s->cursor.epoch);
    if (st == AN_OK) st = get_i64(ctx, path, g, "/data_cursor", "position", &s->cursor.position);
    if (st == AN_OK) st = get_i64(ctx, path, g, "/data_cursor", "shuffle_seed", &s->cursor.shuffle_seed);
    H5Gclose(g);
    AN_TRY(st);

    int64_t position;
    g = H5Gopen2(file, "schedule", H5P_DEFAULT);
    if (g < 0) return H5_FAIL("no group /schedule");
    st = get_i64(ctx, path, g, "/schedule", "position", &position);
    H5Gclose(g);
    AN_TRY(st);

    AN_TRY(read_counters(ctx, path, file, s));
    AN_TRY(read_optimizer(ctx, path, file, s));
    AN_CHECK(ctx, position == s->optimizer_step && s->optimizer_step >= 0, AN_ERR_INPUT,
             "%s: /schedule position %lld differs from the optimizer step %lld", path, (long long)position,
             (long long)s->optimizer_step);
    return AN_OK;
}

an_status ckpt_state_read(an_ctx *ctx, const char *path, ckpt_state *out) {
    ckpt_state s;
    memset(&s, 0, sizeof s);
    AN_CHECK(ctx, access(path, R_OK) == 0, AN_ERR_INPUT, "%s: cannot read: %s", path, strerror(errno));
    quiet_scope q;
    quiet_begin(&q);
    an_status st = AN_OK;
    hid_t fapl = file_access();
    hid_t file = fapl >= 0 ? H5Fopen(path, H5F_ACC_RDONLY, fapl) : -1;
    if (fapl >= 0) H5Pclose(fapl);
    if (file < 0) st = H5_FAIL("not a readable HDF5 file (truncated or corrupted?)");
    else {
        st = read_body(ctx, path, file, &s);
        H5Fclose(file);
    }
    H5Eclear2(H5E_DEFAULT);
    quiet_end(&q);
    if (st != AN_OK) {
        ckpt_state_free(&s);
        return st;
    }
    *out = s;
    return AN_OK;
}
