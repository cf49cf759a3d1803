/* Error reporting: the library fills an rq_err, only the CLI prints it. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>

#include "core.h"

const char *rq_status_name(rq_status s) {
    switch (s) {
    case RQ_OK: return "ok";
    case RQ_ERR_IO: return "i/o error";
    case RQ_ERR_FORMAT: return "format error";
    case RQ_ERR_UNSUPPORTED: return "unsupported";
    case RQ_ERR_ARG: return "bad argument";
    case RQ_ERR_NOMEM: return "out of memory";
    case RQ_ERR_INTERNAL: return "internal error";
    case RQ_ERR_NUMERIC: return "non-finite numbers";
    }
    return "unknown status";
}

rq_status rq_fail_at(rq_err *err, rq_status code, const char *src_file, int src_line, const char *fmt, ...) {
    if (err) {
        err->code = code;
        err->src_file = src_file;
        err->src_line = src_line;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return code;
}

void rq_err_prefix(rq_err *err, const char *fmt, ...) {
    if (!err) return;
    char prefix[512], old[sizeof err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    /* prefix + old message, truncated to the buffer (the tail of a long message matters least) */
    size_t pl = strnlen(prefix, sizeof prefix), ol = strnlen(old, sizeof old - 1);
    if (pl > sizeof err->msg - 1) pl = sizeof err->msg - 1;
    if (ol > sizeof err->msg - 1 - pl) ol = sizeof err->msg - 1 - pl;
    memcpy(err->msg, prefix, pl);
    memcpy(err->msg + pl, old, ol);
    err->msg[pl + ol] = 0;
}

const char *rq_json_number(char *buf, double v) {
    if (isfinite(v)) snprintf(buf, 32, "%.9g", v);
    else snprintf(buf, 32, "null");
    return buf;
}
