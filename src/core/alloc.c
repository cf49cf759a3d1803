/* Checked allocation: failures become RQ_ERR_NOMEM with the size asked for. */
#include <stdlib.h>

#include "core.h"

void *rq_calloc(size_t n, size_t size, rq_err *err) {
    size_t bytes;
    if (!rq_mul_ok(n, size, &bytes)) {
        RQ_FAIL(err, RQ_ERR_NOMEM, "allocation of %zu x %zu bytes overflows", n, size);
        return NULL;
    }
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory allocating %zu bytes", bytes);
    return p;
}

void *rq_alloc_aligned(size_t bytes, rq_err *err) {
    size_t rounded = (bytes + 63) & ~(size_t)63;
    if (rounded < bytes) {
        RQ_FAIL(err, RQ_ERR_NOMEM, "allocation of %zu bytes overflows", bytes);
        return NULL;
    }
    void *p = aligned_alloc(64, rounded ? rounded : 64);
    if (!p) {
        RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory allocating %zu bytes (%.1f MiB)", bytes, bytes / 1048576.0);
        return NULL;
    }
    memset(p, 0, rounded ? rounded : 64);
    return p;
}

char *rq_strdup(const char *s, rq_err *err) {
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (!p) {
        RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory copying a string of %zu bytes", n);
        return NULL;
    }
    memcpy(p, s, n);
    return p;
}
