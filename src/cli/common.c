/* Option parsing and error printing shared by the subcommands. */
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>

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
