/* Evaluation's names for the data layer's one task loader (src/data/tasks.h:
 * rq_task_load_mc, rq_task_load_gsm8k, where the skip-bad-lines policy is
 * described), kept for the callers written against them. */
#ifndef RQ_EVAL_TASK_DATA_H
#define RQ_EVAL_TASK_DATA_H

#include <stdbool.h>
#include <stddef.h>

#include "../data/tasks.h"

/* datasets: the datasets/ folder. skipped may be NULL; it is zeroed first. */
static inline rq_status rq_eval_load_mc(const char *name, const char *datasets, bool skip_bad_lines, rq_mc_task *out,
                                        rq_skip_report *skipped, rq_err *err) {
    memset(out, 0, sizeof *out);
    if (skipped) memset(skipped, 0, sizeof *skipped);
    rq_task_id id;
    RQ_TRY(rq_task_lookup(name, &id, err));
    rq_task_load_opts opts = {.split = RQ_SPLIT_EVAL, .skip_bad_lines = skip_bad_lines, .skipped = skipped};
    return rq_task_load_mc(datasets, id, &opts, out, err);
}

/* gsm8k's test split, and its train split (the few-shot pool) unless train is NULL. */
static inline rq_status rq_eval_load_gsm8k(const char *datasets, bool skip_bad_lines, rq_gsm8k_set *test,
                                           rq_gsm8k_set *train, rq_skip_report *skipped, rq_err *err) {
    if (skipped) memset(skipped, 0, sizeof *skipped);
    rq_task_load_opts opts = {.skip_bad_lines = skip_bad_lines, .skipped = skipped};
    return rq_gsm8k_load_with(datasets, &opts, test, train, err);
}

#endif /* RQ_EVAL_TASK_DATA_H */
