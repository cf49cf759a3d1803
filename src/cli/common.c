/* Option parsing, help, messages and error printing shared by the subcommands. */
#include <stdarg.h>
#include <stdlib.h>
#include <unistd.h>

#include "cli.h"

int cli_fail(const char *cmd, const rq_err *err) {
    fprintf(stderr, "rilq %s: error: %s\n", cmd, err->msg[0] ? err->msg : rq_status_name(err->code));
    if (getenv("RILQ_DEBUG") && err->src_file) fprintf(stderr, "  (raised at %s:%d)\n", err->src_file, err->src_line);
    return 1;
}

int cli_usage_error(const char *cmd, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "rilq %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n(see 'rilq %s --help')\n", cmd);
    va_end(ap);
    return 2;
}

int cli_parse_table(const char *cmd, const char *usage, const char *epilog, rq_opt_table t, void *o, int argc,
                    char **argv, const char **pos, int max_pos, int *n_pos) {
    rq_err err = {0};
    bool help = false;
    if (rq_opts_parse_argv(t, o, argc, argv, pos, max_pos, n_pos, &help, &err) != RQ_OK)
        return cli_usage_error(cmd, "%s", err.msg);
    if (help) {
        fputs(usage, stdout);
        fputs("options:\n", stdout);
        rq_opts_print_help(t, stdout);
        if (epilog) fputs(epilog, stdout);
        return -1;
    }
    return 0;
}

void cli_log_sink(void *user, rq_log_level level, const char *line) {
    (void)user;
    static int tty = -1;
    static bool pending; /* a progress line is on the terminal without its newline */
    if (tty < 0) tty = isatty(2);
    if (pending && (level != RQ_LOG_PROGRESS || !tty)) {
        fputs("\r\033[K", stderr);
        pending = false;
    }
    switch (level) {
    case RQ_LOG_INFO:
        fflush(stderr);
        fprintf(stdout, "%s\n", line);
        fflush(stdout);
        break;
    case RQ_LOG_WARN: fprintf(stderr, "%s\n", line); break;
    case RQ_LOG_PROGRESS:
        if (tty) {
            fprintf(stderr, "\r\033[K%s", line);
            pending = true;
        } else fprintf(stderr, "%s\n", line);
        break;
    case RQ_LOG_DONE: fprintf(stderr, "%s\n", line); break;
    }
    fflush(stderr);
}

/* ---- the older hand-written parsing ---- */

#include <errno.h>

bool cli_is_help(const char *a) { return !strcmp(a, "--help") || !strcmp(a, "-h"); }

bool cli_opt(int argc, char **argv, int *i, const char *name, const char **value) {
    const char *a = argv[*i];
    size_t n = strlen(name);
    if (strncmp(a, name, n) != 0) return false;
    if (a[n] == '=') {
        *value = a + n + 1;
        return true;
    }
    if (a[n] != 0) return false;
    *value = (*i + 1 < argc) ? argv[++*i] : NULL;
    return true;
}

bool cli_flag(char **argv, int i, const char *name) { return !strcmp(argv[i], name); }

bool cli_parse_int(const char *s, long lo, long hi, long *out) {
    if (!s || !*s) return false;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > hi) return false;
    *out = v;
    return true;
}

bool cli_parse_float(const char *s, double lo, double hi, double *out) {
    if (!s || !*s) return false;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || !(v >= lo && v <= hi)) return false;
    *out = v;
    return true;
}

const char *cli_data_root(const char *given) {
    if (given && *given) return given;
    const char *env = getenv("RILQ_DATA");
    return env && *env ? env : NULL;
}

int cli_common_opt(const char *cmd, int argc, char **argv, int *i, cli_common *c) {
    const char *v;
    if (cli_opt(argc, argv, i, "--device", &v)) {
        if (!v) return cli_usage_error(cmd, "--device needs a value (cpu or cuda)"), -1;
        c->device = v;
        return 1;
    }
    if (cli_opt(argc, argv, i, "--tokenizer", &v)) {
        if (!v) return cli_usage_error(cmd, "--tokenizer needs a path"), -1;
        c->tokenizer = v;
        return 1;
    }
    if (cli_opt(argc, argv, i, "--threads", &v)) {
        long n;
        if (!cli_parse_int(v, 1, 1024, &n)) return cli_usage_error(cmd, "--threads expects 1..1024, got '%s'", v ? v : ""), -1;
        c->threads = (int)n;
        return 1;
    }
    return 0;
}

int cli_parse(const char *cmd, const char *help, int argc, char **argv, cli_common *common, const cli_value_opt *values,
              size_t n_values, const cli_bool_opt *bools, size_t n_bools, const char **positional) {
    for (int i = 1; i < argc; i++) {
        if (cli_is_help(argv[i])) {
            fputs(help, stdout);
            return -1;
        }
        int r = cli_common_opt(cmd, argc, argv, &i, common);
        if (r < 0) return 2;
        if (r > 0) continue;
        bool matched = false;
        for (size_t k = 0; k < n_values && !matched; k++) {
            const char *v;
            if (cli_opt(argc, argv, &i, values[k].name, &v)) {
                if (!v) return cli_usage_error(cmd, "%s needs a value", values[k].name);
                *values[k].value = v;
                matched = true;
            }
        }
        for (size_t k = 0; k < n_bools && !matched; k++)
            if (cli_flag(argv, i, bools[k].name)) {
                *bools[k].value = true;
                matched = true;
            }
        if (matched) continue;
        if (argv[i][0] == '-') return cli_usage_error(cmd, "unknown option '%s'", argv[i]);
        if (*positional) return cli_usage_error(cmd, "unexpected argument '%s'", argv[i]);
        *positional = argv[i];
    }
    return 0;
}
