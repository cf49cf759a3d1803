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
#define CLI_COMMON_HELP                                                                     \
    "  --device cpu|cuda     backend (default cpu)\n"                                        \
    "  --threads N           CPU threads (default: all cores)\n"                            \
    "  --tokenizer PATH      tokenizer file, for llama2.c models without one beside them\n"

#endif
