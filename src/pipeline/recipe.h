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

#define RQ_RECIPE_MAX_LIST 8

typedef struct rq_recipe_list {
    int n;
    const char *item[RQ_RECIPE_MAX_LIST];
} rq_recipe_list;

typedef struct rq_recipe {
    cJSON *root;      /* the resolved tree; every string below points into it */
    char *file;       /* the file it was read from */
    const char *name, *notes;
    struct {
        const char *path, *tokenizer; /* tokenizer: "" when the model carries its own */
    } model;
    struct {
        const char *method;
        int64_t group_size;
        bool clip_search;
        rq_recipe_list modules; /* projections quantized (the rest stay in full precision) */
    } quantize;
    struct {
        const char *type;
        int64_t rank, group_size;
        double alpha;
    } adapter;
    struct {
        bool enabled;
        const char *data, *c4_docs, *scope, *model_loss, *teacher_cache;
        int64_t windows, val_windows, seq_len, seed, accum, micro_batch, eval_every, patience, max_micro_steps;
        double lr, model_weight, gt_weight;
    } stage1;
    struct {
        bool enabled;
        const char *task, *fold, *optim, *schedule;
        int64_t epochs, batch, micro_batch, limit, max_source, max_target, seed;
        double lr, weight_decay, warmup_ratio, max_grad_norm;
    } stage2;
    struct {
        bool enabled;
    } merge;
    struct {
        rq_recipe_list formats;
    } export_;
    struct {
        rq_recipe_list tasks, ppl, models;
        int64_t limit, ppl_windows, shots, max_gen_tokens;
        const char *gsm8k_format;
    } eval;
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
