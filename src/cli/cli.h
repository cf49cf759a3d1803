/* Shared pieces of the subcommands: option parsing, help and error printing.
 * Only the command prints and chooses exit codes; the library reports through
 * rq_log (core.h), whose sink main() installs (cli_log_sink). */
#ifndef RQ_CLI_H
#define RQ_CLI_H

#include <stdbool.h>
#include <stdio.h>

#include "../core/core.h"
#include "../core/opts.h"

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

/* The command line of every subcommand: argv parsed with an option table
 * (src/core/opts.h) into o (holding its defaults), positionals into pos[0..max_pos).
 * --help prints usage (the text before the options), then the table's options,
 * then epilog (may be NULL). Returns 0 to go on, -1 after --help (exit 0), 2
 * after a usage error (printed). */
int cli_parse_table(const char *cmd, const char *usage, const char *epilog, rq_opt_table t, void *o, int argc,
                    char **argv, const char **pos, int max_pos, int *n_pos);

/* The sink of rq_log for commands: information on stdout, warnings on stderr,
 * progress lines on stderr (redrawn in place on a terminal). */
void cli_log_sink(void *user, rq_log_level level, const char *line);

/* ---- the older hand-written parsing (inspect, generate, ppl, train-lm) ---- */

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

#define CLI_MEMCHECK_HELP "  --no-memory-check     run even when the memory plan exceeds the free memory\n"

#define CLI_COMMON_HELP                                                                     \
    "  --device cpu|cuda     backend (default cpu)\n"                                        \
    "  --threads N           CPU threads (default: all cores)\n"                            \
    "  --tokenizer PATH      tokenizer file, for llama2.c models without one beside them\n"

#endif
