/* Monotonic time, the message sink and progress lines. */
#define _POSIX_C_SOURCE 200809L
#include <stdarg.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include "core.h"

double rq_now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static rq_log_fn log_fn;
static void *log_user;

void rq_log_set(rq_log_fn fn, void *user) {
    log_fn = fn;
    log_user = user;
}

void rq_log(rq_log_level level, const char *fmt, ...) {
    if (!log_fn) return;
    char line[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    log_fn(log_user, level, line);
}

void rq_progress_init(rq_progress *p, const char *what, int64_t total) {
    p->what = what;
    p->start = p->last_print = rq_now_seconds();
    p->total = total;
    p->tty = isatty(2);
}

static void format_eta(char *buf, size_t n, double s) {
    if (s < 0 || s > 1e7) snprintf(buf, n, "?");
    else if (s >= 3600) snprintf(buf, n, "%dh%02dm", (int)(s / 3600), (int)(s / 60) % 60);
    else snprintf(buf, n, "%dm%02ds", (int)(s / 60), (int)s % 60);
}

static void print_line(rq_progress *p, int64_t done, const char *unit, const char *extra, bool final) {
    double el = rq_now_seconds() - p->start;
    double rate = el > 0 ? done / el : 0;
    char eta[32] = "", line[1024];
    if (p->total > 0 && rate > 0) format_eta(eta, sizeof eta, (p->total - done) / rate);
    size_t n = 0;
#define ADD(...) n += (size_t)snprintf(line + n, n < sizeof line ? sizeof line - n : 0, __VA_ARGS__)
    ADD("%s: %lld", p->what, (long long)done);
    if (p->total > 0) ADD("/%lld", (long long)p->total);
    ADD(" %s | %.1f %s/s", unit, rate, unit);
    if (!final && eta[0]) ADD(" | ETA %s", eta);
    if (final) ADD(" | %.1fs", el);
    if (extra && extra[0]) ADD(" | %s", extra);
#undef ADD
    rq_log(final ? RQ_LOG_DONE : RQ_LOG_PROGRESS, "%s", line);
}

void rq_progress_update(rq_progress *p, int64_t done, const char *unit, const char *extra) {
    double now = rq_now_seconds();
    double every = p->tty ? 0.25 : 10.0;
    if (now - p->last_print < every) return;
    p->last_print = now;
    print_line(p, done, unit, extra, false);
}

void rq_progress_finish(rq_progress *p, int64_t done, const char *unit) { print_line(p, done, unit, NULL, true); }
