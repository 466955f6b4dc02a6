/* sha256.h — SHA-256 digests through OpenSSL's EVP API, and SHA256SUMS files that `sha256sum -c`
 * accepts: one line "<64 lowercase hex digits>  <file name>\n" per file, sorted by name (byte order).
 *
 * Used by checkpoints (every file of a step directory is listed) and by export bundles. Names in a
 * SHA256SUMS file are plain file names in the same directory: no '/', no "." or "..", no
 * backslash or newline (which sha256sum would escape). */
#ifndef AN_CKPT_SHA256_H
#define AN_CKPT_SHA256_H

#include <stddef.h>

#include "autograd/ctx.h"  /* an_ctx, an_status */

#define AN_SHA256_HEX_SIZE 65 /* 64 hex digits and the terminating NUL */
#define AN_SHA256SUMS_NAME "SHA256SUMS"

/* hex = SHA-256 of n bytes, lowercase. */
an_status an_sha256_buffer(an_ctx *ctx, const void *data, size_t n, char hex[AN_SHA256_HEX_SIZE]);
/* hex = SHA-256 of the file's bytes (read in chunks; any size). AN_ERR_INPUT naming the path when
 * it cannot be read. */
an_status an_sha256_file(an_ctx *ctx, const char *path, char hex[AN_SHA256_HEX_SIZE]);

/* Writes DIR/SHA256SUMS (atomically, fsynced) listing every regular file of DIR except
 * SHA256SUMS itself, sorted by name. Anything else in DIR (a subdirectory, a link) and names
 * sha256sum would escape are AN_ERR_INPUT errors. */
an_status an_sha256sums_write(an_ctx *ctx, const char *dir);

/* Checks DIR against DIR/SHA256SUMS, strictly:
 * - SHA256SUMS exists and every line is "<64 hex>  <name>" (sha256sum's " *" binary marker is
 *   accepted too), without duplicate names;
 * - every listed file exists and its SHA-256 matches;
 * - every entry of DIR other than SHA256SUMS is a listed regular file (anything added after the
 *   sums were written is refused: the directory must be exactly what was written).
 * AN_ERR_INPUT naming DIR, the file and what is wrong. */
an_status an_sha256sums_verify(an_ctx *ctx, const char *dir);

#endif
