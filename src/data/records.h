/* records.h — training records read from JSONL files, plain text files, and tar / tar.gz / zip shards
 * of them (read through libarchive, never unpacked to disk), with malformed records counted and named.
 *
 * What a file holds is decided by its name: `.jsonl` (one JSON object per line), `.txt` (the whole file
 * is one text document), `.tar`, `.tar.gz`, `.tgz`, `.tar.bz2`, `.tar.xz`, `.tar.zst` and `.zip` (shards
 * whose regular-file entries are `.jsonl` or `.txt`, read in archive order; directories and links are
 * skipped, any other entry is an error naming it). Anything else is an AN_ERR_INPUT error.
 *
 * A JSONL record is one of (extra keys are ignored):
 *   text               {"text": "..."}
 *   prompt_completion  {"prompt": "...", "completion": "..."}
 *   chat               {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
 * With format auto, each file (each archive entry) takes the format of its first record that has one of
 * those keys — "messages" first, then "prompt"/"completion", then "text", so {"prompt", "messages"}
 * rows (as in UltraChat) are chat — and a later record of another format is an AN_ERR_INPUT error
 * naming both lines. With an explicit format every record must have that format's fields.
 *
 * Bad records — a line that is not a JSON object, a missing field, a field of the wrong type, an
 * unknown role, a chat without an assistant reply, an empty text or completion, a plain text file
 * that is empty or not UTF-8 — are skipped and counted; the first AN_DATA_BAD_SHOWN are kept with
 * their location, "file:line" or "shard.tar[entry.jsonl]:line". an_data_check_bad fails the read when
 * more than max_bad_fraction of the records were bad. Blank lines are not records.
 *
 * Ownership: a record and every string it points to live only during the callback that receives it;
 * strings are UTF-8 with a length (they may contain what the tokenizer treats as special tokens). */
#ifndef AN_DATA_RECORDS_H
#define AN_DATA_RECORDS_H

#include <stddef.h>
#include <stdint.h>

#include "autograd/ctx.h"    /* an_ctx, an_status */
#include "recipe/recipe.h"   /* an_recipe_data_format */

#define AN_DATA_BAD_SHOWN 5

typedef enum { AN_CHAT_SYSTEM = 0, AN_CHAT_USER, AN_CHAT_ASSISTANT } an_chat_role;

typedef struct {
    an_chat_role role;
    const char *content;  /* len bytes of UTF-8, not NUL-terminated */
    size_t len;
} an_chat_message;

typedef struct {
    an_recipe_data_format format;      /* TEXT, PROMPT_COMPLETION or CHAT (never AUTO) */
    const char *text;                  /* TEXT */
    size_t text_len;
    const char *prompt, *completion;   /* PROMPT_COMPLETION */
    size_t prompt_len, completion_len;
    const an_chat_message *messages;   /* CHAT: n_messages >= 1, at least one assistant reply */
    int n_messages;
    const char *where;                 /* "file:line" or "shard[entry]:line", for messages */
} an_data_record;

typedef struct {
    int64_t records;   /* records seen, good and bad (blank lines are not records) */
    int64_t bad;       /* skipped as malformed */
    unsigned formats;  /* bit (1u << format) for every format a file or entry was read as */
    int n_shown;
    char shown[AN_DATA_BAD_SHOWN][384];  /* "where: reason" of the first bad records */
} an_data_read_stats;

/* Receives each well-formed record. To reject it as bad (e.g. nothing left after tokenization) write
 * the reason into bad[0..bad_size) and return AN_OK; any other status stops the read and is returned. */
typedef an_status (*an_data_record_fn)(an_ctx *ctx, void *user, const an_data_record *rec, char *bad,
                                       size_t bad_size);

/* Reads every record of the file at path (see above) in order, calling fn for the good ones and
 * counting into *stats (accumulated: zero it before the first file). */
an_status an_data_read(an_ctx *ctx, const char *path, an_recipe_data_format format, an_data_read_stats *stats,
                       an_data_record_fn fn, void *user);

/* Adds part's counts and first bad records to *total. */
void an_data_read_stats_add(an_data_read_stats *total, const an_data_read_stats *part);

/* AN_ERR_INPUT when stats holds no good record, or when bad / records > max_bad_fraction; the message
 * gives the counts and names the first bad records. `what` names the inputs ("training data"). */
an_status an_data_check_bad(an_ctx *ctx, const an_data_read_stats *stats, double max_bad_fraction, const char *what);

/* "text", "prompt_completion", "chat" or "auto". */
const char *an_data_format_name(an_recipe_data_format format);

#endif
