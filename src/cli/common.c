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
