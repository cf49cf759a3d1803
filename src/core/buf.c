/* The growable byte/string buffer (see core.h). */
#include <stdio.h>
#include <stdlib.h>

#include "core.h"

bool rq_buf_reserve(rq_buf *b, size_t n) {
    if (b->failed) return false;
    if (n > SIZE_MAX / 2 - b->len - 1) {
        b->failed = true;
        return false;
    }
    if (b->len + n + 1 <= b->cap) return true;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + n + 1) cap *= 2;
    char *p = realloc(b->data, cap);
    if (!p) {
        b->failed = true;
        return false;
    }
    b->data = p;
    b->cap = cap;
    return true;
}

bool rq_buf_append(rq_buf *b, const void *data, size_t n) {
    if (!rq_buf_reserve(b, n)) return false;
    if (n) memcpy(b->data + b->len, data, n);
    b->len += n;
    b->data[b->len] = 0;
    return true;
}

bool rq_buf_puts(rq_buf *b, const char *s) { return rq_buf_append(b, s, strlen(s)); }

bool rq_buf_vappendf(rq_buf *b, const char *fmt, va_list ap) {
    if (b->failed) return false;
    va_list probe;
    va_copy(probe, ap);
    char small[256];
    int n = vsnprintf(small, sizeof small, fmt, probe);
    va_end(probe);
    if (n < 0) {
        b->failed = true;
        return false;
    }
    if ((size_t)n < sizeof small) return rq_buf_append(b, small, (size_t)n);
    /* longer than the stack copy: format again straight into the buffer */
    if (!rq_buf_reserve(b, (size_t)n)) return false;
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
    return true;
}

bool rq_buf_appendf(rq_buf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    bool ok = rq_buf_vappendf(b, fmt, ap);
    va_end(ap);
    return ok;
}

rq_status rq_buf_status(const rq_buf *b, const char *what, rq_err *err) {
    if (!b->failed) return RQ_OK;
    return RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory building %s", what);
}

rq_status rq_buf_finish(rq_buf *b, char **out, size_t *len, const char *what, rq_err *err) {
    *out = NULL;
    if (len) *len = 0;
    if (!b->data) rq_buf_append(b, "", 0);
    rq_status st = rq_buf_status(b, what, err);
    if (st != RQ_OK) {
        rq_buf_free(b);
        return st;
    }
    *out = b->data;
    if (len) *len = b->len;
    memset(b, 0, sizeof *b);
    return RQ_OK;
}

void rq_buf_free(rq_buf *b) {
    free(b->data);
    memset(b, 0, sizeof *b);
}

char *rq_path_join_alloc(const char *dir, const char *name, rq_err *err) {
    rq_buf b = {0};
    size_t dl = strlen(dir);
    rq_buf_puts(&b, dir);
    if (dl == 0 || dir[dl - 1] != '/') rq_buf_append(&b, "/", 1);
    rq_buf_puts(&b, name);
    char *path;
    if (rq_buf_finish(&b, &path, NULL, "a path", err) != RQ_OK) return NULL;
    return path;
}
