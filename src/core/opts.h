/* Option tables: one line per option of a stage (its struct field, type,
 * default, limits, command-line flag, recipe key and help text). From one
 * table come the command's parser and --help, the recipe schema (rilq run
 * --keys), the defaults and the checks, so an option is added in one place and
 * a value is checked the same way wherever it comes from.
 *
 * Values are stored in the stage's options struct at `off`:
 *   RQ_OPT_STR   const char *   borrowed: argv, the recipe's tree, or the default literal
 *   RQ_OPT_INT   int64_t        within [min, max]
 *   RQ_OPT_NUM   double         finite, within [min, max]
 *   RQ_OPT_BOOL  bool           a flag on the command line (no value), true/false elsewhere
 *   RQ_OPT_LIST  rq_list        comma-separated on the command line, a JSON list in a recipe
 * A string or list item with `choices` ("a|b|c") must be one of them. */
#ifndef RQ_OPTS_H
#define RQ_OPTS_H

#include <cjson/cJSON.h>
#include <stdio.h>

#include "core.h"

typedef enum rq_opt_kind { RQ_OPT_STR, RQ_OPT_INT, RQ_OPT_NUM, RQ_OPT_BOOL, RQ_OPT_LIST } rq_opt_kind;

#define RQ_LIST_MAX 8
#define RQ_LIST_ITEM 32
/* A short list of short names (tasks, projections, formats), held by value. */
typedef struct rq_list {
    int n;
    char item[RQ_LIST_MAX][RQ_LIST_ITEM];
} rq_list;

typedef struct rq_opt {
    const char *flag;    /* "--lr"; NULL: not on the command line */
    const char *key;     /* recipe key "stage1.lr"; NULL: not in recipes */
    rq_opt_kind kind;
    size_t off;          /* offset of the field in the options struct */
    const char *def;     /* default as text ("1e-4", "true", "q,k,v"); NULL: none (empty / 0 / false) */
    const char *choices; /* "a|b|c" for strings and list items; NULL: any */
    double min, max;     /* numbers */
    const char *meta;    /* value name in --help ("LR"); NULL: from the kind */
    const char *help;
    const char *recipe_def; /* the recipe's default when it differs from def (NULL: def; "" for a
                               string or list without def) */
} rq_opt;

/* Table lines. O = the options struct type, F = its field. */
#define RQ_OPT_S(flag, key, O, F, def, choices, meta, help) \
    {flag, key, RQ_OPT_STR, offsetof(O, F), def, choices, 0, 0, meta, help, NULL}
#define RQ_OPT_I(flag, key, O, F, def, lo, hi, meta, help) \
    {flag, key, RQ_OPT_INT, offsetof(O, F), def, NULL, lo, hi, meta, help, NULL}
#define RQ_OPT_N(flag, key, O, F, def, lo, hi, meta, help) \
    {flag, key, RQ_OPT_NUM, offsetof(O, F), def, NULL, lo, hi, meta, help, NULL}
#define RQ_OPT_B(flag, key, O, F, def, help) {flag, key, RQ_OPT_BOOL, offsetof(O, F), def, NULL, 0, 0, NULL, help, NULL}
#define RQ_OPT_L(flag, key, O, F, def, choices, meta, help) \
    {flag, key, RQ_OPT_LIST, offsetof(O, F), def, choices, 0, 0, meta, help, NULL}

typedef struct rq_opt_table {
    const rq_opt *opt;
    size_t n;
    size_t size; /* of the options struct */
} rq_opt_table;
#define RQ_OPT_TABLE(opts, O) {(opts), sizeof(opts) / sizeof((opts)[0]), sizeof(O)}

/* Every field of the table to its default. */
rq_status rq_opts_defaults(rq_opt_table t, void *o, rq_err *err);
/* Parse text as the option's kind, check it, store it. where: "--lr" or
 * "recipes/x.json: stage1.lr", used in messages. */
rq_status rq_opt_set(const rq_opt *e, void *o, const char *text, const char *where, rq_err *err);
/* The same from a JSON value (a recipe's). */
rq_status rq_opt_set_json(const rq_opt *e, void *o, const cJSON *v, const char *where, rq_err *err);
/* The option's value as a JSON item (for stage.json and the resolved recipe). */
cJSON *rq_opt_to_json(const rq_opt *e, const void *o);
/* The option's value as text, as the command line would take it (snprintf semantics). */
int rq_opt_format(const rq_opt *e, const void *o, char *buf, size_t n);
/* The option whose flag or key is name, or NULL. */
const rq_opt *rq_opt_find_flag(rq_opt_table t, const char *flag);
const rq_opt *rq_opt_find_key(rq_opt_table t, const char *key);

/* Parse argv[1..argc-1] into o: flags of the table ("--x v", "--x=v", boolean
 * "--x"), and up to max_pos positional arguments into pos[]. A usage error
 * (unknown option, missing or bad value, too many positionals) returns
 * RQ_ERR_ARG with the message; "--help"/"-h" sets *help and returns RQ_OK. */
rq_status rq_opts_parse_argv(rq_opt_table t, void *o, int argc, char **argv, const char **pos, int max_pos, int *n_pos,
                             bool *help, rq_err *err);

/* The options part of --help: one line or more per flag, with the default. */
void rq_opts_print_help(rq_opt_table t, FILE *f);

/* "a,b,c" <-> rq_list (items checked against choices when given). */
rq_status rq_list_parse(const char *text, const char *choices, rq_list *out, const char *where, rq_err *err);
void rq_list_join(const rq_list *l, char *buf, size_t n);
bool rq_list_has(const rq_list *l, const char *item);

#endif
