/* A minimal test harness: CHECK macros that count, and a closing line that
 * ctest and CI read ("N passed, N failed"). A test whose data is missing
 * exits 77 (ctest SKIP) outside CI and fails under CI=true. */
#ifndef RQ_TEST_H
#define RQ_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"

static int rq_test_passed, rq_test_failed;

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (cond) rq_test_passed++;                                                   \
        else {                                                                        \
            rq_test_failed++;                                                         \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);  \
        }                                                                             \
    } while (0)

#define CHECKF(cond, ...)                                                             \
    do {                                                                              \
        if (cond) rq_test_passed++;                                                   \
        else {                                                                        \
            rq_test_failed++;                                                         \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond);  \
            fprintf(stderr, __VA_ARGS__);                                             \
            fputc('\n', stderr);                                                      \
        }                                                                             \
    } while (0)

/* Check an rq_status call; print the error message when it fails. */
#define CHECK_OK(expr, errp)                                                          \
    do {                                                                              \
        rq_status st_ = (expr);                                                       \
        if (st_ == RQ_OK) rq_test_passed++;                                           \
        else {                                                                        \
            rq_test_failed++;                                                         \
            fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #expr,      \
                    (errp)->msg);                                                     \
        }                                                                             \
    } while (0)

#define CHECK_NEAR(a, b, tol)                                                         \
    do {                                                                              \
        double a_ = (a), b_ = (b);                                                    \
        if (fabs(a_ - b_) <= (tol)) rq_test_passed++;                                 \
        else {                                                                        \
            rq_test_failed++;                                                         \
            fprintf(stderr, "%s:%d: %s = %.9g, %s = %.9g, |diff| %.3g > %.3g\n",      \
                    __FILE__, __LINE__, #a, a_, #b, b_, fabs(a_ - b_), (double)(tol));\
        }                                                                             \
    } while (0)

static inline int rq_test_in_ci(void) {
    const char *ci = getenv("CI");
    return ci && (strcmp(ci, "true") == 0 || strcmp(ci, "1") == 0);
}

/* Missing input: skip (exit 77) outside CI, fail under CI. */
static inline void rq_test_missing(const char *what) {
    if (rq_test_in_ci()) {
        fprintf(stderr, "FAILED: required test input missing under CI: %s\n", what);
        printf("0 passed, 1 failed\n");
        exit(1);
    }
    fprintf(stderr, "SKIPPED: missing %s\n", what);
    exit(77);
}

/* Path of a file under $RILQ_DATA (datasets/, models/), or skip/fail. */
static inline const char *rq_test_data(const char *rel) {
    static char buf[8][4096];
    static int slot;
    const char *root = getenv("RILQ_DATA");
    if (!root || !*root) {
        char what[4200];
        snprintf(what, sizeof what, "RILQ_DATA is not set (needed for %s)", rel);
        rq_test_missing(what);
    }
    char *p = buf[slot++ & 7];
    snprintf(p, 4096, "%s/%s", root, rel);
    FILE *f = fopen(p, "rb");
    if (!f) {
        char what[4200];
        snprintf(what, sizeof what, "%s", p);
        rq_test_missing(what);
    } else {
        fclose(f);
    }
    return p;
}

/* Path of a file produced by a ctest fixture under the build tree (RQ_TEST_OUT). */
static inline const char *rq_test_out(const char *rel) {
    static char buf[8][4096];
    static int slot;
    const char *root = getenv("RQ_TEST_OUT");
    if (!root || !*root) { /* run by hand, outside ctest: keep the source tree clean */
        root = "/tmp/rilq-test-out";
        rq_mkdir_p(root, NULL);
    }
    char *p = buf[slot++ & 7];
    snprintf(p, 4096, "%s/%s", root, rel);
    return p;
}

/* The SmolLM2-135M GGUF that tools/fetch_models.sh downloads from the Python
 * package index (RILQ_SMOLLM2 points at it), or skip/fail. */
static inline const char *rq_test_smollm2(void) {
    const char *p = getenv("RILQ_SMOLLM2");
    FILE *f = p && *p ? fopen(p, "rb") : NULL;
    if (!f) rq_test_missing("SmolLM2-135M GGUF (set RILQ_SMOLLM2; tools/fetch_models.sh downloads it)");
    fclose(f);
    return p;
}

static inline int rq_test_finish(void) {
    printf("%d passed, %d failed\n", rq_test_passed, rq_test_failed);
    return rq_test_failed ? 1 : 0;
}

#endif
