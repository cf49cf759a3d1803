/* A recipe: one JSON file naming the model, the quantizer, the adapters, the
 * two training stages, the merge, the exports and the evaluation of a whole
 * run (`rilq run`). The keys and their types form a fixed schema
 * (rq_recipe_schema_help lists it); an unknown key or a value of the wrong type
 * is an error naming the key and the file. Missing optional keys take their
 * defaults, and the resolved tree (defaults filled, overrides applied,
 * ${VAR} substituted) is what a run records, so a run directory's recipe.json
 * says everything the run did.
 *
 * Substitution: in every string value, ${NAME} is replaced by the environment
 * variable NAME (an error when unset) and ${NAME:-default} by NAME or, when
 * NAME is unset or empty, by default. Overrides are "section.key=value" (e.g.
 * stage1.lr=3e-4, stage2.epochs=1, eval.tasks=piqa,arc_easy): the value is
 * parsed as the key's type (lists are comma-separated, booleans true/false). */
#ifndef RQ_RECIPE_H
#define RQ_RECIPE_H

#include <stdbool.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "../core/core.h"
#include "stages.h"

/* The sections that configure a stage are that stage's options struct
 * (src/pipeline/stages.h), filled from the recipe's keys with the stage's
 * defaults for the rest; the schema is generated from the stages' option
 * tables (one line per option there). */
typedef struct rq_recipe {
    cJSON *root;      /* the resolved tree; every string below points into it */
    char *file;       /* the file it was read from */
    const char *name, *notes;
    struct {
        const char *path, *tokenizer; /* tokenizer: "" when the model carries its own */
    } model;
    rq_stage_quantize_opts quantize;
    rq_adapter_opts adapter;          /* also copied into stage1.adapter and stage2.adapter */
    rq_stage_calibrate_opts stage1;
    rq_stage_finetune_opts stage2;
    rq_stage_merge_opts merge;
    rq_stage_export_opts export_;
    rq_stage_eval_opts eval;
} rq_recipe;

/* Read and validate a recipe file, apply n_overrides "key=value" strings,
 * fill defaults, substitute ${VAR}, check the combination. On error *out is
 * left empty and err names the file (or the override) and the key. */
rq_status rq_recipe_load(const char *path, const char *const *overrides, int n_overrides, rq_recipe *out, rq_err *err);
/* The same from JSON text (file: the name used in messages). */
rq_status rq_recipe_parse(const char *text, const char *file, const char *const *overrides, int n_overrides,
                          rq_recipe *out, rq_err *err);
void rq_recipe_free(rq_recipe *r);

/* ${VAR} / ${VAR:-default} substitution of one string (malloc'd result); key
 * and file only name the place in messages. */
rq_status rq_recipe_substitute(const char *in, const char *key, const char *file, char **out, rq_err *err);

/* The resolved recipe as indented JSON text (malloc'd, newline-terminated). */
char *rq_recipe_to_json(const rq_recipe *r);

/* Every key, its type, default and meaning, one per line (malloc'd). */
char *rq_recipe_schema_help(void);

/* Compare two resolved trees; on a difference writes the first differing key
 * path into where (e.g. "stage1.lr") and returns false. */
bool rq_recipe_same(const cJSON *a, const cJSON *b, char *where, size_t where_size);

#endif
