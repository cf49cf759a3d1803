/* The RILQ stage's data: the calibration draw against Python
 * (tools/reference/calib_windows_expect.py), the teacher cache round trip
 * (bit-exact, key mismatch -> stale, truncated -> clear error), and the
 * stage-2 masking (loss only on answer tokens). */
#include "test.h"
#include "train/calib.h"
#include "train/finetune.h"

/* from tools/reference/calib_windows_expect.py */
static const int64_t expect_doc[20] = {81, 35, 17, 86, 11, 11, 77, 71, 91, 57, 35, 20, 35, 27, 11, 12, 77, 5, 15, 10};
static const int64_t expect_start[20] = {28, 125, 47, 139, 151, 55, 0, 50, 166, 18, 3, 357, 79, 48, 97, 45, 0, 373, 193, 282};
static const int expect_order[20] = {18, 16, 17, 19, 15, 8, 13, 7, 6, 14, 12, 5, 2, 9, 3, 4, 11, 0, 1, 10};

static rq_status fake_len(void *user, int64_t d, int *len, rq_err *err) {
    (void)user;
    (void)err;
    *len = (int)((d * 7919) % 900 + 50);
    return RQ_OK;
}

static rq_status short_len(void *user, int64_t d, int *len, rq_err *err) {
    (void)user;
    (void)d;
    (void)err;
    *len = 100;
    return RQ_OK;
}

static void test_draw(void) {
    rq_err err = {0};
    int64_t doc[20], start[20];
    int order[20];
    CHECK_OK(rq_calib_draw(100, fake_len, NULL, 512, 20, 42, doc, start, &err), &err);
    for (int k = 0; k < 20; k++) CHECKF(doc[k] == expect_doc[k] && start[k] == expect_start[k], "window %d: %lld@%lld vs %lld@%lld",
                                        k, (long long)doc[k], (long long)start[k], (long long)expect_doc[k], (long long)expect_start[k]);
    CHECK_OK(rq_calib_order(20, 5, 42, order, &err), &err);
    for (int k = 0; k < 20; k++) CHECKF(order[k] == expect_order[k], "order %d: %d vs %d", k, order[k], expect_order[k]);
    /* no document longer than the window: an error, not an endless loop */
    CHECK(rq_calib_draw(10, short_len, NULL, 512, 3, 42, doc, start, &err) == RQ_ERR_ARG);
    CHECK(strstr(err.msg, "more than 512") != NULL);
    CHECK(rq_calib_order(5, 5, 42, order, &err) == RQ_ERR_ARG);
}

static void test_cache(void) {
    const char *model = rq_test_data("models/stories260K/stories260K.bin");
    rq_err err = {0};
    rq_model *m = NULL;
    rq_backend *be = NULL;
    CHECK_OK(rq_model_load(model, NULL, &m, &err), &err);
    CHECK_OK(rq_backend_cpu_create(1, &be, &err), &err);
    if (!m || !be) return;
    rq_calib_windows w = {.T = 16, .n = 4, .n_val = 1};
    int tokens[64];
    for (int i = 0; i < 64; i++) tokens[i] = (i * 37 + 5) % m->cfg.vocab_size;
    w.tokens = tokens;
    char path[4096];
    snprintf(path, sizeof path, "%s", rq_test_out("test_calib_teacher.rqt"));
    CHECK_OK(rq_teacher_cache_write(m, be, &w, 0x1234, "key text", path, true, &err), &err);
    rq_teacher_cache *tc = NULL;
    bool stale = false;
    CHECK_OK(rq_teacher_cache_open(path, 0x1234, m->cfg.dim, 16, 4, &tc, &stale, &err), &err);
    rq_forward_opts fo = {.max_batch = 1, .max_seq = 16};
    rq_forward_state *fs = NULL;
    CHECK_OK(rq_forward_create(m, be, &fo, &fs, &err), &err);
    float *got = malloc(sizeof(float) * 16 * m->cfg.dim);
    for (int k = 3; tc && fs && k >= 0; k--) { /* random access: any order */
        CHECK_OK(rq_teacher_cache_read(tc, k, got, &err), &err);
        CHECK_OK(rq_forward_run(fs, tokens + 16 * k, 1, 16, 0, &err), &err);
        CHECKF(memcmp(got, rq_forward_hidden(fs), sizeof(float) * 16 * m->cfg.dim) == 0, "window %d not bit-exact", k);
    }
    CHECK(tc && rq_teacher_cache_read(tc, 4, got, &err) == RQ_ERR_ARG);
    rq_teacher_cache_close(tc);
    tc = NULL;
    /* another key or shape: stale (the caller recomputes) */
    CHECK(rq_teacher_cache_open(path, 0x9999, m->cfg.dim, 16, 4, &tc, &stale, &err) == RQ_ERR_ARG && stale);
    CHECK(rq_teacher_cache_open(path, 0x1234, m->cfg.dim, 32, 4, &tc, &stale, &err) == RQ_ERR_ARG && stale);
    /* truncated: a clear error naming the file, not stale */
    char *bytes = NULL;
    size_t n = 0;
    CHECK_OK(rq_file_read_all(path, &bytes, &n, &err), &err);
    char tpath[4096];
    snprintf(tpath, sizeof tpath, "%s", rq_test_out("test_calib_truncated.rqt"));
    if (bytes) {
        CHECK_OK(rq_write_file_atomic(tpath, bytes, n / 2, &err), &err);
        CHECK(rq_teacher_cache_open(tpath, 0x1234, m->cfg.dim, 16, 4, &tc, &stale, &err) == RQ_ERR_FORMAT && !stale);
        CHECK(strstr(err.msg, "truncated") != NULL && strstr(err.msg, tpath) != NULL);
        /* a damaged frame: decompression fails with the window named. The
         * first frame starts after the header (36 bytes + the key text, whose
         * length depends on the paths): break its zstd magic number. */
        size_t key_len = (size_t)(unsigned char)bytes[32] | (size_t)(unsigned char)bytes[33] << 8 |
                         (size_t)(unsigned char)bytes[34] << 16 | (size_t)(unsigned char)bytes[35] << 24;
        CHECK(36 + key_len < n);
        if (36 + key_len < n) bytes[36 + key_len] ^= 0x5a;
        CHECK_OK(rq_write_file_atomic(tpath, bytes, n, &err), &err);
        if (rq_teacher_cache_open(tpath, 0x1234, m->cfg.dim, 16, 4, &tc, &stale, &err) == RQ_OK) {
            CHECK(rq_teacher_cache_read(tc, 0, got, &err) != RQ_OK);
            rq_teacher_cache_close(tc);
        }
    }
    free(bytes);
    free(got);
    rq_forward_free(fs);
    rq_backend_destroy(be);
    rq_model_free(m);
}

static void test_masking(void) {
    const char *model = rq_test_data("models/stories260K/stories260K.bin");
    rq_err err = {0};
    rq_model *m = NULL;
    CHECK_OK(rq_model_load(model, NULL, &m, &err), &err);
    if (!m) return;
    rq_ft_example ex;
    bool sc, tc;
    CHECK_OK(rq_ft_tokenize_pair(m->tok, "Question: Where is the cat?\nAnswer:", " in the garden", 384, 128, RQ_BOS_OFF,
                                 &ex, &sc, &tc, &err), &err);
    CHECK(!sc && !tc && ex.n_src > 0 && ex.n > ex.n_src);
    rq_ft_set set = {.ex = &ex, .n = 1, .max_len = ex.n - 1};
    int tokens[256], targets[256], len = 0;
    CHECK_OK(rq_ft_fill(&set, 0, 256, tokens, targets, &len, &err), &err);
    CHECK(len == ex.n - 1);
    for (int t = 0; t < len; t++) {
        CHECK(tokens[t] == ex.ids[t]);
        /* a source position predicting a source token is masked; from the last source token on, every target counts */
        if (t + 1 < ex.n_src) CHECK(targets[t] == -1);
        else CHECK(targets[t] == ex.ids[t + 1]);
    }
    free(ex.ids);
    /* truncation: source from the left, target from the right */
    CHECK_OK(rq_ft_tokenize_pair(m->tok, "Question: Where is the cat?\nAnswer:", " in the garden", 3, 2, RQ_BOS_OFF, &ex,
                                 &sc, &tc, &err), &err);
    CHECK(sc && tc && ex.n_src == 3 && ex.n == 5);
    free(ex.ids);
    rq_model_free(m);
}

int main(void) {
    test_draw();
    test_cache();
    test_masking();
    return rq_test_finish();
}
