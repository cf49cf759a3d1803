/* Monotonic time and progress lines on stderr. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include "core.h"

double rq_now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
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
    char eta[32] = "";
    if (p->total > 0 && rate > 0) format_eta(eta, sizeof eta, (p->total - done) / rate);
    fprintf(stderr, "%s%s: %lld", p->tty ? "\r\033[K" : "", p->what, (long long)done);
    if (p->total > 0) fprintf(stderr, "/%lld", (long long)p->total);
    fprintf(stderr, " %s | %.1f %s/s", unit, rate, unit);
    if (!final && eta[0]) fprintf(stderr, " | ETA %s", eta);
    if (final) fprintf(stderr, " | %.1fs", el);
    if (extra && extra[0]) fprintf(stderr, " | %s", extra);
    if (!p->tty || final) fputc('\n', stderr);
    fflush(stderr);
}

void rq_progress_update(rq_progress *p, int64_t done, const char *unit, const char *extra) {
    double now = rq_now_seconds();
    double every = p->tty ? 0.25 : 10.0;
    if (now - p->last_print < every) return;
    p->last_print = now;
    print_line(p, done, unit, extra, false);
}

void rq_progress_finish(rq_progress *p, int64_t done, const char *unit) { print_line(p, done, unit, NULL, true); }
