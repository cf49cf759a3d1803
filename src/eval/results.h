/* Evaluation results in lm-evaluation-harness's results-file shape, plus the
 * exact settings of the run.
 *
 *   {"results":   {task: {"alias": task, "acc,none": x, "acc_stderr,none": y, ...}},
 *    "configs":   {task: {dataset, split, prompt template, delimiters, metric_list, ...}},
 *    "versions":  {task: 1.0}, "n-shot": {task: k}, "higher_is_better": {task: {metric: true}},
 *    "n-samples": {task: {"original": N, "effective": n}},
 *    "config":    {"model": "rilq", "model_args": path, "limit": n, "bootstrap_iters": 0},
 *    "rilq":      {version, model, format, bos, limit, seed, gsm8k settings, dataset files,
 *                  skipped lines, seconds per task, backend}}
 *
 * Stderrs are lm-eval's mean_stderr; where it cannot be computed (one
 * document) the value is the string "N/A", as lm-eval writes it. Perplexity
 * (GPTQ-style protocol, not lm-eval's wikitext task) appears under the task
 * names "wikitext2" and "c4" with the metric "ppl". */
#ifndef RQ_EVAL_RESULTS_H
#define RQ_EVAL_RESULTS_H

#include <stdbool.h>
#include <stddef.h>

#include <cjson/cJSON.h>

#include "gsm8k.h"
#include "mc.h"
#include "ppl.h"

typedef struct rq_eval_settings {
    const char *model_path;
    const char *model_format;  /* "gguf", "hf", "llama2c" */
    const char *model_dtypes;
    const char *adapter_path;  /* adapters attached (NULL: none) */
    rq_bos_mode bos;
    size_t limit;              /* 0: every document */
    rq_gsm8k_format gsm8k_format;
    size_t gsm8k_shots;
    int gsm8k_max_gen_tokens;
    const char *data_root;     /* the datasets/ folder */
    const char *backend;
    int threads;
    int ppl_batch;
    int mc_batch_tokens;       /* token positions per packed multiple-choice forward (0: one document at a time) */
    bool skip_bad_lines;
} rq_eval_settings;

typedef struct rq_eval_report {
    cJSON *root;
    cJSON *results, *configs, *versions, *n_shot, *higher_is_better, *n_samples;
    cJSON *rilq, *dataset_files, *skipped_lines, *seconds;
} rq_eval_report;

const char *rq_bos_mode_name(rq_bos_mode bos);           /* "off", "on", "default" */
const char *rq_gsm8k_format_name(rq_gsm8k_format f);     /* "fewshot", "zeroshot", "finetuned" */

/* The data files a task reads, relative to the datasets/ folder (1 or 2). */
size_t rq_eval_task_files(rq_task_id id, const char *files[2]);

rq_status rq_eval_report_init(rq_eval_report *rep, const rq_eval_settings *s, rq_err *err);
void rq_eval_report_free(rq_eval_report *rep);

/* skipped_lines: malformed lines skipped while loading (--skip-bad-lines). */
rq_status rq_eval_report_add_mc(rq_eval_report *rep, rq_task_id id, const rq_mc_result *r, size_t skipped_lines,
                                rq_err *err);
rq_status rq_eval_report_add_gsm8k(rq_eval_report *rep, const rq_gsm8k_opts *o, const rq_gsm8k_result *r,
                                   const char *const *stops, size_t n_stops, size_t skipped_lines, rq_err *err);
rq_status rq_eval_report_add_ppl(rq_eval_report *rep, rq_ppl_dataset dataset, const rq_ppl_result *r, rq_err *err);

/* Written atomically (temp file, fsync, rename). */
rq_status rq_eval_report_write(const rq_eval_report *rep, const char *path, rq_err *err);
/* The results as a readable table in lm-eval's markdown layout (malloc'd). */
rq_status rq_eval_report_table(const rq_eval_report *rep, char **out, rq_err *err);

#endif /* RQ_EVAL_RESULTS_H */
