/* Shared pieces of the subcommands: option parsing and error printing. Only
 * the command prints and chooses exit codes; the library never does. */
#ifndef RQ_CLI_H
#define RQ_CLI_H

#include <stdbool.h>
#include <stdio.h>

#include "../core/core.h"

typedef struct rq_command {
    const char *name;
    const char *help;
    int (*run)(int argc, char **argv);
} rq_command;

int cmd_inspect(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_ppl(int argc, char **argv);
int cmd_quantize(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_train_lm(int argc, char **argv);
int cmd_calibrate(int argc, char **argv);
int cmd_finetune(int argc, char **argv);
int cmd_merge(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_run(int argc, char **argv);

/* Print "rilq CMD: error: <message>" and return exit code 1. */
int cli_fail(const char *cmd, const rq_err *err);
/* Print a usage error and return exit code 2. */
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Option matching: "--name value" or "--name=value". When argv[*i] is option
 * name, sets *value (NULL if missing), advances *i past the value, returns true. */
bool cli_opt(int argc, char **argv, int *i, const char *name, const char **value);
bool cli_flag(char **argv, int i, const char *name);
bool cli_parse_int(const char *s, long lo, long hi, long *out);
bool cli_parse_float(const char *s, double lo, double hi, double *out);
bool cli_is_help(const char *a);

/* The data root: --data if given, else $RILQ_DATA, else NULL. */
const char *cli_data_root(const char *given);

/* Options every model-loading command shares. */
typedef struct cli_common {
    const char *device;
    const char *tokenizer;
    int threads;
} cli_common;
/* Try to consume a shared option at argv[*i]; returns 1 if consumed, 0 if not
 * ours, -1 on a bad value (message printed). */
int cli_common_opt(const char *cmd, int argc, char **argv, int *i, cli_common *c);
/* Table-driven parsing for commands with many options. */
typedef struct cli_value_opt {
    const char *name;   /* "--rank" */
    const char **value; /* receives the option's value (keeps its default when absent) */
} cli_value_opt;
typedef struct cli_bool_opt {
    const char *name;   /* "--resume" */
    bool *value;        /* set to true when present */
} cli_bool_opt;
/* Parse argv[1..]: --help (prints help; returns -1), the common options, the
 * value and boolean options of the tables, and one positional argument into
 * *positional. Returns 0, -1 after help, or 2 after a usage error (printed). */
int cli_parse(const char *cmd, const char *help, int argc, char **argv, cli_common *common, const cli_value_opt *values,
              size_t n_values, const cli_bool_opt *bools, size_t n_bools, const char **positional);

/* The run's memory plan (src/train/plan.h; o holds the run's settings, the
 * device and the student's q2 group size are filled from be and m) printed in
 * one line, then refused when it exceeds be->mem_info's free memory less
 * `resident` (bytes of the plan already allocated there). Returns 0 to go on,
 * 1 after printing the refusal. disabled: --no-memory-check. */
struct rq_backend;
struct rq_plan_opts;
int cli_memory_check(const char *cmd, struct rq_backend *be, const struct rq_model *m, struct rq_plan_opts *o,
                     uint64_t resident, bool disabled);

#define CLI_MEMCHECK_HELP "  --no-memory-check     run even when the memory plan exceeds the free memory\n"

#define CLI_COMMON_HELP                                                                     \
    "  --device cpu|cuda     backend (default cpu)\n"                                        \
    "  --threads N           CPU threads (default: all cores)\n"                            \
    "  --tokenizer PATH      tokenizer file, for llama2.c models without one beside them\n"

#endif
