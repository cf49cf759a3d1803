/* JSON Lines reader over cJSON.
 *
 * One JSON value per line; LF or CRLF line ends; blank lines are ignored (a
 * final newline is normal). A line is malformed when it does not parse, has
 * text after the value, holds a NUL byte (raw or as an escape, which cJSON would
 * silently cut the string at) or is not valid UTF-8 (Python's json loader
 * rejects such lines too; it accepts NaN/Infinity, cJSON does not). The
 * caller chooses whether a malformed line stops reading with an error naming
 * file and line, or is skipped and counted. Evaluation sets should stop: a
 * silently dropped document changes the score. */
#ifndef RQ_DATA_JSONL_H
#define RQ_DATA_JSONL_H

#include <stdbool.h>
#include <stddef.h>

#include <cjson/cJSON.h>

#include "../core/core.h"

typedef enum rq_jsonl_on_error {
    RQ_JSONL_STOP_ON_BAD_LINE = 0, /* rq_jsonl_next fails with RQ_ERR_FORMAT */
    RQ_JSONL_SKIP_BAD_LINES        /* counted in skipped_lines, first one kept in first_skip_msg */
} rq_jsonl_on_error;

typedef struct rq_jsonl_reader {
    char *name;      /* file path (or the name given for a memory buffer), for messages */
    char *data;      /* the whole input, owned */
    size_t size;
    size_t pos;      /* start of the next unread line */
    size_t line_no;  /* 1-based number of the line last returned (or failed) */
    rq_jsonl_on_error on_error;
    size_t skipped_lines;
    char first_skip_msg[256];
} rq_jsonl_reader;

rq_status rq_jsonl_open(rq_jsonl_reader *r, const char *path, rq_jsonl_on_error on_error, rq_err *err);
/* Read from a copy of data[0..size) (tests, fuzzing, text already in memory). */
rq_status rq_jsonl_open_memory(rq_jsonl_reader *r, const char *name, const char *data, size_t size,
                               rq_jsonl_on_error on_error, rq_err *err);
/* The next value: *out is a cJSON tree the caller frees with cJSON_Delete, or
 * NULL at end of input (then RQ_OK). r->line_no is its line number. */
rq_status rq_jsonl_next(rq_jsonl_reader *r, cJSON **out, rq_err *err);
void rq_jsonl_close(rq_jsonl_reader *r);

/* Lines of a plain text file (labels files such as valid-labels.lst): *count
 * lines, each a NUL-terminated string inside one block; free(*lines) frees all.
 * The final newline does not start an extra empty line; CR before LF is dropped. */
rq_status rq_text_lines_read(const char *path, char ***lines, size_t *count, rq_err *err);

/* True when s[0..n) is well-formed UTF-8 (no overlongs, surrogates or values
 * above U+10FFFF). */
bool rq_utf8_valid(const char *s, size_t n);

#endif /* RQ_DATA_JSONL_H */
