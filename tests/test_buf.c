/* rq_buf (the growable buffer every text builder uses), rq_path_join_alloc and RQ_STR. */
#include <stdint.h>

#include "quant/q2.h"
#include "test.h"

static void test_append_and_finish(void) {
    rq_buf b = {0};
    rq_err err = {0};
    CHECK(b.data == NULL && b.len == 0);
    CHECK(rq_buf_puts(&b, "Question: "));
    CHECK(rq_buf_append(&b, "abcdef", 3));
    CHECK(rq_buf_append(&b, "", 0));
    CHECK(b.len == 13 && strcmp(b.data, "Question: abc") == 0);
    CHECK(rq_buf_appendf(&b, " %d+%s=%.1f", 2, "x", 2.5));
    CHECK(strcmp(b.data, "Question: abc 2+x=2.5") == 0);
    CHECK(rq_buf_status(&b, "a test string", &err) == RQ_OK);
    char *s;
    size_t n;
    CHECK_OK(rq_buf_finish(&b, &s, &n, "a test string", &err), &err);
    CHECK(n == strlen(s) && strcmp(s, "Question: abc 2+x=2.5") == 0);
    CHECK(b.data == NULL && b.len == 0 && b.cap == 0); /* reset, reusable */
    free(s);
}

static void test_empty_finish_is_empty_string(void) {
    rq_buf b = {0};
    rq_err err = {0};
    char *s = NULL;
    CHECK_OK(rq_buf_finish(&b, &s, NULL, "nothing", &err), &err);
    CHECK(s && s[0] == 0);
    free(s);
    rq_buf_free(&b); /* freeing an empty buffer is fine */
    rq_buf_free(&b);
}

/* Many small appends, a long formatted piece (beyond the 256-byte stack copy)
 * and embedded NUL bytes all come out exactly. */
static void test_growth_and_bytes(void) {
    rq_buf b = {0};
    char expect[5000];
    size_t k = 0;
    for (int i = 0; i < 1000; i++) {
        char c = (char)('a' + i % 26);
        CHECK(rq_buf_append(&b, &c, 1));
        expect[k++] = c;
    }
    char big[1200];
    memset(big, 'Z', sizeof big - 1);
    big[sizeof big - 1] = 0;
    CHECK(rq_buf_appendf(&b, "<%s|%05d>", big, 42));
    k += (size_t)snprintf(expect + k, sizeof expect - k, "<%s|%05d>", big, 42);
    const uint8_t bin[4] = {0, 1, 0, 255};
    CHECK(rq_buf_append(&b, bin, sizeof bin));
    memcpy(expect + k, bin, sizeof bin);
    k += sizeof bin;
    CHECK(b.len == k && memcmp(b.data, expect, k) == 0 && b.data[k] == 0);
    CHECK(b.cap > b.len);
    size_t cap = b.cap;
    rq_buf_clear(&b); /* reuse keeps the memory */
    CHECK(b.len == 0 && b.cap == cap && b.data && b.data[0] == 0);
    CHECK(rq_buf_puts(&b, "again") && strcmp(b.data, "again") == 0);
    rq_buf_free(&b);
    CHECK(b.data == NULL && b.len == 0);
}

/* After a failure every append is refused and finish reports RQ_ERR_NOMEM. */
static void test_failure_is_sticky(void) {
    rq_buf b = {0};
    rq_err err = {0};
    CHECK(rq_buf_puts(&b, "start"));
    CHECK(!rq_buf_append(&b, "x", SIZE_MAX - 8)); /* overflows the size: refused before any allocation */
    CHECK(b.failed);
    CHECK(!rq_buf_puts(&b, "more"));
    CHECK(!rq_buf_appendf(&b, "%d", 7));
    CHECK(rq_buf_status(&b, "a prompt", &err) == RQ_ERR_NOMEM);
    CHECK(strstr(err.msg, "out of memory building a prompt") != NULL);
    char *s = (char *)1;
    err = (rq_err){0};
    CHECK(rq_buf_finish(&b, &s, NULL, "a prompt", &err) == RQ_ERR_NOMEM);
    CHECK(s == NULL && b.data == NULL && !b.failed);
}

static void test_path_join_alloc(void) {
    rq_err err = {0};
    char fixed[64];
    const char *cases[][2] = {{"/data", "piqa/valid.jsonl"}, {"/data/", "x"}, {"", "x"}, {"rel", ""}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *p = rq_path_join_alloc(cases[i][0], cases[i][1], &err);
        CHECK(p && rq_path_join(fixed, sizeof fixed, cases[i][0], cases[i][1]));
        CHECKF(p && strcmp(p, fixed) == 0, "%s vs %s", p ? p : "(null)", fixed);
        free(p);
    }
    /* longer than any fixed path buffer */
    char dir[6000];
    memset(dir, 'd', sizeof dir - 1);
    dir[sizeof dir - 1] = 0;
    char *p = rq_path_join_alloc(dir, "name", &err);
    CHECK(p && strlen(p) == sizeof dir - 1 + 5 && strcmp(p + sizeof dir - 1, "/name") == 0);
    free(p);
}

/* Text defaults (option tables, help) spell the numeric default through RQ_STR. */
static void test_str_macro(void) {
    CHECK(strcmp(RQ_STR(RQ_DEFAULT_GROUP_SIZE), "64") == 0);
    CHECK(atoi(RQ_STR(RQ_DEFAULT_GROUP_SIZE)) == RQ_DEFAULT_GROUP_SIZE);
}

int main(void) {
    test_append_and_finish();
    test_empty_finish_is_empty_string();
    test_growth_and_bytes();
    test_failure_is_sticky();
    test_path_join_alloc();
    test_str_macro();
    return rq_test_finish();
}
