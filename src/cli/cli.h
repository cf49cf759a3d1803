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
/* main reached: disarm the start-up watchdog of preinit.c (set only under ulimit -v). */
void cli_startup_done(void);
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

#endif
