/* What a run shows at the end: the results table (text) and report.html
 * (self-contained: loss and validation curves as inline SVG, the table, the
 * stages and the recipe; no external assets).
 *
 * Both read a results tree of this shape (rilq run writes it as results.json):
 *   {"recipe": name,
 *    "columns": [{"task": "arc_easy", "metric": "acc"}, {"task": "wikitext2", "metric": "ppl"}, ...],
 *    "rows": [{"id": "fp", "label": "full precision", "results": {"arc_easy": {"acc": 0.5, ...}}}, ...],
 *    "stages": [{"name": "quantize", "status": "done", "seconds": 1.5}, ...],
 *    "merge": {...}}            (optional: the merge check's numbers)
 * and, for the curves, the text of the run's metrics.jsonl: one JSON object a
 * line with a "stage" tag ("calibrate", "finetune") and the trainer's keys
 * ("step" with "loss" or "val_loss"). */
#ifndef RQ_REPORT_H
#define RQ_REPORT_H

#include <cjson/cJSON.h>

#include "../core/core.h"

/* o as indented JSON plus a newline, written atomically to path. */
rq_status rq_json_write_file(const char *path, const cJSON *o, rq_err *err);

/* The table as aligned text (malloc'd); a missing value prints as "-". */
char *rq_report_table(const cJSON *results);

/* The HTML page (malloc'd). recipe_json: the resolved recipe's text (may be NULL). */
rq_status rq_report_html(const cJSON *results, const char *metrics_jsonl, const char *recipe_json, char **out,
                         rq_err *err);

#endif
