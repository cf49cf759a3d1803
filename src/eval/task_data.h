/* Evaluation data with the user's policy for malformed JSONL lines.
 *
 * The data layer (src/data/tasks.h) stops at the first malformed line, which
 * is the default here too: a silently dropped document changes the score.
 * With skip_bad_lines, a line that is not one JSON object is skipped and
 * counted instead (its document is gone, and for piqa and winogrande the
 * matching line of the labels file too, so labels stay aligned); lines that
 * parse but lack a field, have empty choices or an out-of-range label still
 * stop loading, since those are not typos but a wrong file. */
#ifndef RQ_EVAL_TASK_DATA_H
#define RQ_EVAL_TASK_DATA_H

#include <stdbool.h>
#include <stddef.h>

#include "../data/tasks.h"

typedef struct rq_skip_report {
    size_t skipped_lines;
    char first[320]; /* "file:line: why" of the first skipped line */
} rq_skip_report;

/* datasets: the datasets/ folder. skipped may be NULL when !skip_bad_lines. */
rq_status rq_eval_load_mc(const char *name, const char *datasets, bool skip_bad_lines, rq_mc_task *out,
                          rq_skip_report *skipped, rq_err *err);
/* train may be NULL (zero-shot formats). */
rq_status rq_eval_load_gsm8k(const char *datasets, bool skip_bad_lines, rq_gsm8k_set *test, rq_gsm8k_set *train,
                             rq_skip_report *skipped, rq_err *err);

#endif /* RQ_EVAL_TASK_DATA_H */
