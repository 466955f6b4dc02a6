/* error.h — status codes and the check macros every fallible call goes through.
 *
 * Rules: library functions never exit. They record one message in the context (file:line of the
 * check, then the reason) and return a status, or NULL for functions that return a tensor. Only
 * the CLI turns a status into an exit code: 2 for bad input, 1 for an internal failure. */
#ifndef AN_ERROR_H
#define AN_ERROR_H

typedef enum {
    AN_OK = 0,
    AN_ERR_INTERNAL = 1, /* our bug, a failed allocation, a failed CUDA call */
    AN_ERR_INPUT = 2,    /* the caller's or the user's input is wrong: shapes, files, fields */
} an_status;

typedef struct an_ctx an_ctx;

/* Records an error in ctx (the first one wins until an_error_clear) and returns `status`. */
an_status an_error_set(an_ctx *ctx, an_status status, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
const char *an_error_message(const an_ctx *ctx); /* "" when there is none */
an_status an_error_status(const an_ctx *ctx);
void an_error_clear(an_ctx *ctx);

/* Return `status` from the enclosing function when cond is false. */
#define AN_CHECK(ctx, cond, status, ...)                                        \
    do {                                                                         \
        if (!(cond)) return an_error_set((ctx), (status), __FILE__, __LINE__, __VA_ARGS__); \
    } while (0)

/* Same, for functions that return a pointer: record and return NULL. */
#define AN_CHECK_NULL(ctx, cond, status, ...)                                   \
    do {                                                                         \
        if (!(cond)) {                                                           \
            an_error_set((ctx), (status), __FILE__, __LINE__, __VA_ARGS__);     \
            return NULL;                                                         \
        }                                                                        \
    } while (0)

/* Propagate a failed status from a callee unchanged (its message is already recorded). */
#define AN_TRY(expr)                         \
    do {                                     \
        an_status an_try_status_ = (expr);   \
        if (an_try_status_ != AN_OK) return an_try_status_; \
    } while (0)

#endif
