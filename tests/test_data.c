/* src/data: Python-compatible random (against python3 outputs), the JSONL
 * reader's error handling, and every task's documents and prompts on the real
 * datasets under $RILQ_DATA/datasets. */
#include <inttypes.h>
#include <stdint.h>

#include "test.h"

#include "data/jsonl.h"
#include "data/pyrandom.h"
#include "data/tasks.h"

/* Path of a committed file under tests/data (ctest runs in tests/). */
static const char *test_data_path(const char *name) {
    static char buf[4096];
    const char *src = getenv("RQ_SOURCE_DIR");
    if (src && *src) snprintf(buf, sizeof buf, "%s/tests/data/%s", src, name);
    else snprintf(buf, sizeof buf, "data/%s", name);
    return buf;
}

static char *read_text(const char *path) {
    char *data = NULL;
    size_t size;
    rq_err err = {0};
    if (rq_file_read_all(path, &data, &size, &err) != RQ_OK) {
        fprintf(stderr, "cannot read %s: %s\n", path, err.msg);
        return NULL;
    }
    return data;
}

/* ---- pyrandom --------------------------------------------------------------- */

/* Parse "SEED OP ARGS | RESULTS" and run OP on a fresh generator; returns the
 * number of mismatching values. */
static int run_pyrandom_case(char *line) {
    char *bar = strchr(line, '|');
    if (!bar) return 1;
    *bar = 0;
    char *tok[8];
    int ntok = 0;
    for (char *t = strtok(line, " "); t && ntok < 8; t = strtok(NULL, " ")) tok[ntok++] = t;
    if (ntok < 2) return 1;
    char *results[1024];
    int nres = 0;
    for (char *t = strtok(bar + 1, " \n"); t && nres < 1024; t = strtok(NULL, " \n")) results[nres++] = t;

    rq_pyrandom rng;
    rq_pyrandom_seed(&rng, strtoull(tok[0], NULL, 10));
    const char *op = tok[1];
    rq_err err = {0};
    int bad = 0, produced = 0;
#define EXPECT_U64(v)                                                                                       \
    do {                                                                                                    \
        uint64_t want_ = strtoull(results[produced], NULL, 10);                                            \
        if ((v) != want_) bad++;                                                                            \
        produced++;                                                                                         \
    } while (0)
    if (strcmp(op, "u32") == 0) {
        for (int i = 0; i < atoi(tok[2]); i++) EXPECT_U64((uint64_t)rq_pyrandom_u32(&rng));
    } else if (strcmp(op, "bits") == 0) {
        for (int i = 0; i < atoi(tok[3]); i++) {
            uint64_t v;
            if (rq_pyrandom_getrandbits(&rng, atoi(tok[2]), &v, &err) != RQ_OK) return 1;
            EXPECT_U64(v);
        }
    } else if (strcmp(op, "random") == 0) {
        for (int i = 0; i < atoi(tok[2]); i++) {
            double v = rq_pyrandom_random(&rng);
            if (v != strtod(results[produced], NULL)) bad++;
            produced++;
        }
    } else if (strcmp(op, "randint") == 0) {
        int64_t a = strtoll(tok[2], NULL, 10), b = strtoll(tok[3], NULL, 10);
        for (int i = 0; i < atoi(tok[4]); i++) {
            int64_t v;
            if (rq_pyrandom_randint(&rng, a, b, &v, &err) != RQ_OK) return 1;
            if (v != strtoll(results[produced], NULL, 10)) bad++;
            produced++;
        }
    } else if (strcmp(op, "sample") == 0) {
        size_t n = strtoull(tok[2], NULL, 10), k = strtoull(tok[3], NULL, 10);
        size_t picked[512];
        for (int r = 0; r < atoi(tok[4]); r++) {
            if (k > 512 || rq_pyrandom_sample(&rng, n, k, picked, &err) != RQ_OK) return 1;
            for (size_t i = 0; i < k; i++) EXPECT_U64((uint64_t)picked[i]);
        }
    } else if (strcmp(op, "shuffle") == 0) {
        size_t n = strtoull(tok[2], NULL, 10);
        uint32_t x[64];
        for (size_t i = 0; i < n; i++) x[i] = (uint32_t)i;
        if (n > 64 || rq_pyrandom_shuffle(&rng, x, n, sizeof x[0], &err) != RQ_OK) return 1;
        for (size_t i = 0; i < n; i++) EXPECT_U64((uint64_t)x[i]);
    } else if (strcmp(op, "mixed") == 0) {
        for (int round = 0; round < atoi(tok[2]); round++) {
            double f = rq_pyrandom_random(&rng);
            if (f != strtod(results[produced++], NULL)) bad++;
            int64_t v;
            if (rq_pyrandom_randint(&rng, 0, 45575, &v, &err) != RQ_OK) return 1;
            EXPECT_U64((uint64_t)v);
            size_t picked[4];
            if (rq_pyrandom_sample(&rng, 30, 4, picked, &err) != RQ_OK) return 1;
            for (int i = 0; i < 4; i++) EXPECT_U64((uint64_t)picked[i]);
            uint64_t bits;
            if (rq_pyrandom_getrandbits(&rng, 7, &bits, &err) != RQ_OK) return 1;
            EXPECT_U64(bits);
        }
    } else if (strcmp(op, "state") == 0) {
        for (int i = 0; i < atoi(tok[2]); i++) rq_pyrandom_u32(&rng);
        EXPECT_U64((uint64_t)rng.index);
        EXPECT_U64((uint64_t)rng.mt[0]);
        EXPECT_U64((uint64_t)rng.mt[1]);
        EXPECT_U64((uint64_t)rng.mt[623]);
    } else {
        fprintf(stderr, "unknown op %s\n", op);
        return 1;
    }
#undef EXPECT_U64
    if (produced != nres) bad++;
    return bad;
}

static void test_pyrandom_vs_python(void) {
    char *text = read_text(test_data_path("pyrandom_expect.txt"));
    CHECK(text != NULL);
    if (!text) return;
    int cases = 0;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (line[0] == '#') continue;
        char copy[16384];
        snprintf(copy, sizeof copy, "%s", line);
        int bad = run_pyrandom_case(copy);
        CHECKF(bad == 0, "%d mismatches in case: %.120s", bad, line);
        cases++;
    }
    CHECKF(cases >= 150, "only %d cases read", cases);
    free(text);
}

static void test_pyrandom_state_and_errors(void) {
    rq_pyrandom a, b;
    rq_err err = {0};
    rq_pyrandom_seed(&a, 42);
    for (int i = 0; i < 1000; i++) rq_pyrandom_u32(&a);
    uint8_t state[RQ_PYRANDOM_STATE_BYTES];
    rq_pyrandom_state_save(&a, state);
    double first[10];
    for (int i = 0; i < 10; i++) first[i] = rq_pyrandom_random(&a);
    CHECK_OK(rq_pyrandom_state_load(&b, state, &err), &err);
    int same = 0;
    for (int i = 0; i < 10; i++) same += rq_pyrandom_random(&b) == first[i];
    CHECK(same == 10);

    state[4 * RQ_PYRANDOM_N] = 0x71; /* index 625: out of range */
    state[4 * RQ_PYRANDOM_N + 1] = 0x02;
    CHECK(rq_pyrandom_state_load(&b, state, &err) == RQ_ERR_FORMAT);

    int64_t v;
    uint64_t u;
    size_t idx[4];
    CHECK(rq_pyrandom_randint(&a, 5, 4, &v, &err) == RQ_ERR_ARG);
    CHECK(strstr(err.msg, "empty range") != NULL);
    CHECK(rq_pyrandom_randbelow(&a, 0, &u, &err) == RQ_ERR_ARG);
    CHECK(rq_pyrandom_getrandbits(&a, 65, &u, &err) == RQ_ERR_ARG);
    CHECK(rq_pyrandom_sample(&a, 3, 4, idx, &err) == RQ_ERR_ARG);
    CHECK_OK(rq_pyrandom_sample(&a, 3, 0, idx, &err), &err);
    CHECK_OK(rq_pyrandom_randint(&a, INT64_MIN, INT64_MIN + 10, &v, &err), &err);
    CHECK(v >= INT64_MIN && v <= INT64_MIN + 10);
}

/* ---- jsonl ---------------------------------------------------------------------- */

static void test_jsonl(void) {
    rq_err err = {0};
    rq_jsonl_reader r;
    const char good[] = "{\"a\":1}\r\n\n   \n[2]\n\"three\"";
    CHECK_OK(rq_jsonl_open_memory(&r, "good.jsonl", good, sizeof good - 1, RQ_JSONL_STOP_ON_BAD_LINE, &err), &err);
    cJSON *v;
    int n = 0;
    size_t lines[3] = {0};
    while (rq_jsonl_next(&r, &v, &err) == RQ_OK && v) {
        if (n < 3) lines[n] = r.line_no;
        n++;
        cJSON_Delete(v);
    }
    CHECK(n == 3);
    CHECK(lines[0] == 1 && lines[1] == 4 && lines[2] == 5);
    rq_jsonl_close(&r);

    /* bad lines: 2 (parse error), 3 (extra text), 5 (invalid UTF-8), 6 (NUL escape) */
    const char bad[] = "{\"a\":1}\n{\"a\":\n{\"a\":1} x\n{\"b\":\"\\\\u0000\"}\n{\"c\":\"\xff\"}\n{\"d\":\"\\u0000\"}\n[]";
    CHECK_OK(rq_jsonl_open_memory(&r, "bad.jsonl", bad, sizeof bad - 1, RQ_JSONL_STOP_ON_BAD_LINE, &err), &err);
    CHECK_OK(rq_jsonl_next(&r, &v, &err), &err);
    cJSON_Delete(v);
    CHECK(rq_jsonl_next(&r, &v, &err) == RQ_ERR_FORMAT);
    CHECKF(strstr(err.msg, "bad.jsonl:2:") != NULL, "%s", err.msg);
    CHECK(v == NULL);
    rq_jsonl_close(&r);

    CHECK_OK(rq_jsonl_open_memory(&r, "bad.jsonl", bad, sizeof bad - 1, RQ_JSONL_SKIP_BAD_LINES, &err), &err);
    n = 0;
    size_t good_lines[4] = {0};
    rq_status st;
    while ((st = rq_jsonl_next(&r, &v, &err)) == RQ_OK && v) {
        if (n < 4) good_lines[n] = r.line_no;
        n++;
        cJSON_Delete(v);
    }
    CHECK(st == RQ_OK);
    CHECKF(n == 3 && good_lines[0] == 1 && good_lines[1] == 4 && good_lines[2] == 7, "n=%d", n);
    CHECKF(r.skipped_lines == 4, "skipped %zu", r.skipped_lines);
    CHECKF(strstr(r.first_skip_msg, "bad.jsonl:2:") != NULL, "%s", r.first_skip_msg);
    rq_jsonl_close(&r);

    CHECK(rq_jsonl_open(&r, "/nonexistent/x.jsonl", RQ_JSONL_STOP_ON_BAD_LINE, &err) == RQ_ERR_IO);
    CHECK(rq_utf8_valid("caf\xc3\xa9", 5));
    CHECK(!rq_utf8_valid("\xc0\x80", 2));       /* overlong NUL */
    CHECK(!rq_utf8_valid("\xed\xa0\x80", 3));   /* surrogate */
    CHECK(!rq_utf8_valid("\xf4\x90\x80\x80", 4)); /* above U+10FFFF */
}

/* ---- synthetic task errors --------------------------------------------------------- */

static void test_task_errors(void) {
    rq_err err = {0};
    rq_task_id id;
    CHECK(rq_task_lookup("mmlu", &id, &err) == RQ_ERR_ARG);
    CHECKF(strstr(err.msg, "mmlu") && strstr(err.msg, "arc_challenge") && strstr(err.msg, "winogrande"), "%s",
           err.msg);
    CHECK_OK(rq_task_lookup("hellaswag", &id, &err), &err);
    CHECK(id == RQ_TASK_HELLASWAG && rq_task_kind_of(id) == RQ_TASK_MULTIPLE_CHOICE);
    CHECK(rq_task_kind_of(RQ_TASK_GSM8K) == RQ_TASK_GENERATE);
    CHECK(strcmp(rq_task_name(RQ_TASK_ARC_EASY), "arc_easy") == 0);

    rq_mc_task t;
    CHECK(rq_mc_task_load("gsm8k", "/nowhere", &t, &err) == RQ_ERR_ARG);
    CHECK(strstr(err.msg, "generation") != NULL);
    CHECK(rq_mc_task_load("piqa", "/nonexistent-root", &t, &err) == RQ_ERR_IO);
    CHECKF(strstr(err.msg, "piqa/valid.jsonl") != NULL, "%s", err.msg);

    const char arc_ok[] = "{\"question\":{\"stem\":\"Q1\",\"choices\":[{\"text\":\"x\",\"label\":\"1\"},"
                          "{\"text\":\"y\",\"label\":\"2\"}]},\"answerKey\":\"2\"}\n";
    const char *arc_bad[][2] = {
        {"{\"question\":{\"choices\":[]},\"answerKey\":\"A\"}", "field 'question.stem'"},
        {"{\"question\":{\"stem\":\"s\",\"choices\":[]},\"answerKey\":\"A\"}", "'question.choices' has 0"},
        {"{\"question\":{\"stem\":\"s\",\"choices\":[{\"text\":\"a\",\"label\":\"A\"},{\"text\":\"b\",\"label\":\"B\"}]},"
         "\"answerKey\":\"C\"}",
         "answerKey 'C'"},
        {"{\"question\":{\"stem\":\"s\",\"choices\":[{\"text\":\"a\",\"label\":\"A\"},{\"label\":\"B\"}]},"
         "\"answerKey\":\"A\"}",
         "question.choices[1].text"},
        {"{\"question\":\"s\",\"answerKey\":\"A\"}", "field 'question'"},
        {"[1,2]", "not a JSON object"},
        {"{\"question\":{\"stem\":\"s\",\"choices\":[{\"text\":\"a\",\"label\":\"A\"},{\"text\":\"b\",\"label\":\"A\"}]},"
         "\"answerKey\":\"A\"}",
         "appears twice"},
    };
    for (size_t i = 0; i < sizeof arc_bad / sizeof arc_bad[0]; i++) {
        char buf[1024];
        snprintf(buf, sizeof buf, "%s%s\n", arc_ok, arc_bad[i][0]);
        rq_status st = rq_arc_parse("t.jsonl", buf, strlen(buf), RQ_TASK_ARC_EASY, &t, &err);
        CHECKF(st == RQ_ERR_FORMAT && strstr(err.msg, "t.jsonl:2:") && strstr(err.msg, arc_bad[i][1]),
               "case %zu: %s", i, err.msg);
        CHECK(t.docs == NULL && t.n_docs == 0);
    }
    CHECK_OK(rq_arc_parse("t.jsonl", arc_ok, sizeof arc_ok - 1, RQ_TASK_ARC_CHALLENGE, &t, &err), &err);
    CHECK(t.n_docs == 1 && t.docs[0].gold == 1 && strcmp(t.docs[0].continuations[1], " y") == 0);
    rq_mc_task_free(&t);
    CHECK(rq_arc_parse("t.jsonl", "\n\n", 2, RQ_TASK_ARC_EASY, &t, &err) == RQ_ERR_FORMAT);

    const char piqa[] = "{\"goal\":\"g\",\"sol1\":\"a\",\"sol2\":\"b\"}\n{\"goal\":\"g2\",\"sol1\":\"a\",\"sol2\":\"b\"}\n";
    CHECK(rq_piqa_parse("p.jsonl", piqa, sizeof piqa - 1, "p.lst", "0\n2\n", 4, &t, &err) == RQ_ERR_FORMAT);
    CHECKF(strstr(err.msg, "p.lst:2:") && strstr(err.msg, "'2'"), "%s", err.msg);
    CHECK(rq_piqa_parse("p.jsonl", piqa, sizeof piqa - 1, "p.lst", "0\n", 2, &t, &err) == RQ_ERR_FORMAT);
    CHECKF(strstr(err.msg, "p.jsonl:2:") && strstr(err.msg, "no label"), "%s", err.msg);
    CHECK(rq_piqa_parse("p.jsonl", piqa, sizeof piqa - 1, "p.lst", "0\n1\n1\n", 6, &t, &err) == RQ_ERR_FORMAT);
    CHECKF(strstr(err.msg, "3 labels") && strstr(err.msg, "2 records"), "%s", err.msg);
    CHECK_OK(rq_piqa_parse("p.jsonl", piqa, sizeof piqa - 1, "p.lst", "0\r\n1\r\n", 6, &t, &err), &err);
    CHECK(t.n_docs == 2 && t.docs[1].gold == 1 && t.docs[1].source_line == 2);
    rq_mc_task_free(&t);

    const char wino[] = "{\"context_options\":[\"A x\",\"A y\"],\"continuation\":\" went home. \",\"gold\":1}\n";
    CHECK(rq_winogrande_parse("w.jsonl", wino, sizeof wino - 1, "w.lst", "1\n", 2, &t, &err) == RQ_ERR_FORMAT);
    CHECKF(strstr(err.msg, "w.jsonl:1:") && strstr(err.msg, "disagrees"), "%s", err.msg);
    CHECK_OK(rq_winogrande_parse("w.jsonl", wino, sizeof wino - 1, "w.lst", "2\n", 2, &t, &err), &err);
    CHECK(t.n_docs == 1 && t.docs[0].gold == 1 && strcmp(rq_mc_doc_continuation(&t.docs[0], 1), " went home.") == 0);
    CHECK(strcmp(rq_mc_doc_context(&t.docs[0], 1), "A y") == 0 && t.docs[0].choice_texts == NULL);
    rq_mc_task_free(&t);
    const char wino_bad[] = "{\"context_options\":[\"A x\"],\"continuation\":\"c\",\"gold\":0}\n";
    CHECK(rq_winogrande_parse("w.jsonl", wino_bad, sizeof wino_bad - 1, "w.lst", "1\n", 2, &t, &err) ==
          RQ_ERR_FORMAT);
    CHECKF(strstr(err.msg, "w.jsonl:1:") && strstr(err.msg, "context_options"), "%s", err.msg);

    const char hs_bad[] = "Act: a b\n7\ne0\ne1\ne2\ne3\n";
    CHECK(rq_hellaswag_parse("h.txt", hs_bad, sizeof hs_bad - 1, &t, &err) == RQ_ERR_FORMAT);
    CHECKF(strstr(err.msg, "h.txt:2:") && strstr(err.msg, "'7'"), "%s", err.msg);
    const char hs_short[] = "Act: a b\n1\ne0\ne1\n";
    CHECK(rq_hellaswag_parse("h.txt", hs_short, sizeof hs_short - 1, &t, &err) == RQ_ERR_FORMAT);
    CHECK(strstr(err.msg, "multiple of 6") != NULL);

    const char gsm_bad[] = "{\"question\":\"q\",\"answer\":\"#### 1\"}\n{\"question\":\"q\"}\n";
    rq_gsm8k_set gs;
    CHECK(rq_gsm8k_parse("g.jsonl", gsm_bad, sizeof gsm_bad - 1, &gs, &err) == RQ_ERR_FORMAT);
    CHECKF(strstr(err.msg, "g.jsonl:2:") && strstr(err.msg, "'answer'"), "%s", err.msg);
    CHECK(gs.docs == NULL);
}

static void test_hellaswag_text_rules(void) {
    rq_err err = {0};
    char *s = NULL;
    /* expected strings computed with lm-eval's preprocess in python3 */
    CHECK_OK(rq_hellaswag_clean("  [header] How to x [title] Do y.  [step]  Z  ", &s, &err), &err);
    CHECKF(s && strcmp(s, " How to x. Do y.  Z") == 0, "[%s]", s);
    free(s);
    CHECK_OK(rq_hellaswag_clean("a [b [c] d] e [unclosed", &s, &err), &err);
    CHECKF(s && strcmp(s, "a d] e [unclosed") == 0, "[%s]", s);
    free(s);
    CHECK_OK(rq_hellaswag_clean("", &s, &err), &err);
    CHECK(s && s[0] == 0);
    free(s);
    CHECK_OK(rq_hellaswag_query_from_line("Roof shingle removal: A man is sitting on a roof. he", &s, &err), &err);
    CHECKF(s && strcmp(s, "Roof shingle removal: A man is sitting on a roof. He") == 0, "[%s]", s);
    free(s);
    CHECK_OK(rq_hellaswag_query_from_line("Cooking: Put it in. Then stir.", &s, &err), &err);
    CHECKF(s && strcmp(s, "Cooking: Put it in. Then stir.") == 0, "[%s]", s);
    free(s);
    CHECK_OK(rq_hellaswag_query_from_line("Ski: the man", &s, &err), &err);
    CHECKF(s && strcmp(s, "Ski: The man") == 0, "[%s]", s);
    free(s);
    CHECK(rq_hellaswag_query_from_line("no separator", &s, &err) == RQ_ERR_FORMAT);
    CHECK(rq_utf8_length("caf\xc3\xa9 \xe2\x82\xac") == 6);
}

/* ---- real datasets ---------------------------------------------------------------- */

static char dataset_root[4096];

static const rq_mc_doc *find_line(const rq_mc_task *t, size_t line) {
    for (size_t i = 0; i < t->n_docs; i++)
        if (t->docs[i].source_line == line) return &t->docs[i];
    return NULL;
}

static void check_mc_shape(const rq_mc_task *t) {
    size_t bad = 0;
    for (size_t i = 0; i < t->n_docs; i++) {
        const rq_mc_doc *d = &t->docs[i];
        if (d->gold >= d->n_choices || d->n_choices < 2) bad++;
        for (size_t c = 0; c < d->n_choices; c++) {
            const char *cont = rq_mc_doc_continuation(d, c), *ctx = rq_mc_doc_context(d, c);
            if (!cont || cont[0] != ' ' || !ctx || !ctx[0]) bad++;
            if (d->choice_texts && strcmp(cont + 1, d->choice_texts[c]) != 0) bad++;
        }
    }
    CHECKF(bad == 0, "%s: %zu malformed documents", rq_task_name(t->id), bad);
}

static void test_arc(void) {
    rq_err err = {0};
    rq_mc_task easy, chal;
    CHECK_OK(rq_mc_task_load("arc_easy", dataset_root, &easy, &err), &err);
    CHECK_OK(rq_mc_task_load("arc_challenge", dataset_root, &chal, &err), &err);
    CHECKF(easy.n_docs == 2376, "%zu", easy.n_docs);
    CHECKF(chal.n_docs == 1172, "%zu", chal.n_docs);
    check_mc_shape(&easy);
    check_mc_shape(&chal);

    /* numeric labels "1".."4", answerKey "2" -> gold 1 */
    const rq_mc_doc *d = find_line(&easy, 15);
    CHECK(d && d->n_choices == 4 && d->gold == 1);
    if (d) {
        CHECK(strcmp(d->contexts[0], "Question: All living and nonliving material is composed of\nAnswer:") == 0);
        CHECK(strcmp(d->continuations[1], " elements") == 0 && strcmp(d->choice_texts[1], "elements") == 0);
    }
    d = find_line(&easy, 64);
    CHECK(d && d->gold == 1 && strcmp(d->contexts[0], "Question: What are genes composed of?\nAnswer:") == 0 &&
          strcmp(d->continuations[1], " DNA") == 0);
    /* 3 choices (letters), 5 choices (gold E) */
    d = find_line(&easy, 94);
    CHECK(d && d->n_choices == 3 && d->gold == 1 && strcmp(d->continuations[1], " increase") == 0);
    d = find_line(&easy, 1442);
    CHECK(d && d->n_choices == 5 && d->gold == 4 &&
          strcmp(d->contexts[0], "Question: What happens when an animal hibernates?\nAnswer:") == 0 &&
          strcmp(d->continuations[4], " It is using less energy than when it is active.") == 0);
    /* ARC-Challenge: 3 choices with numeric labels "1".."3", answerKey "2" */
    d = find_line(&chal, 386);
    CHECK(d && d->n_choices == 3 && d->gold == 1 && strcmp(d->continuations[1], " increase") == 0);
    d = find_line(&chal, 837);
    CHECK(d && d->n_choices == 5 && d->gold == 3 &&
          strcmp(d->contexts[0], "Question: How are warm-blooded animals different from cold-blooded animals?\n"
                                 "Answer:") == 0);
    d = find_line(&chal, 45);
    CHECK(d && d->n_choices == 4 && d->gold == 1 &&
          strcmp(d->choice_texts[1], "Kinetic energy increases and potential energy decreases.") == 0);

    size_t three = 0, five = 0;
    for (size_t i = 0; i < chal.n_docs; i++) {
        three += chal.docs[i].n_choices == 3;
        five += chal.docs[i].n_choices == 5;
    }
    CHECKF(three == 4 && five == 3, "ARC-C: %zu with 3 choices, %zu with 5", three, five);
    three = five = 0;
    for (size_t i = 0; i < easy.n_docs; i++) {
        three += easy.docs[i].n_choices == 3;
        five += easy.docs[i].n_choices == 5;
    }
    CHECKF(three == 7 && five == 4, "ARC-E: %zu with 3 choices, %zu with 5", three, five);
    rq_mc_task_free(&easy);
    rq_mc_task_free(&chal);
}

static void test_piqa(void) {
    rq_err err = {0};
    rq_mc_task t;
    CHECK_OK(rq_mc_task_load("piqa", dataset_root, &t, &err), &err);
    CHECKF(t.n_docs == 1838, "%zu", t.n_docs);
    check_mc_shape(&t);
    if (t.n_docs < 2) return;
    const rq_mc_doc *d = &t.docs[0];
    CHECK(d->gold == 0 && d->n_choices == 2);
    CHECK(strcmp(d->contexts[0], "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:") == 0);
    CHECK(strncmp(d->continuations[0], " Provide the guinea pig with a cage full of a few inches of bedding made of "
                                       "ripped paper strips",
                  95) == 0);
    /* fields keep their trailing / double spaces, as the HF loader yields them */
    d = &t.docs[1];
    CHECK(d->gold == 1 && strcmp(d->contexts[0], "Question: dresser\nAnswer:") == 0);
    CHECK(strcmp(d->continuations[0], " replace drawer with bobby pin ") == 0);
    CHECK(strcmp(d->continuations[1], " finish, woodgrain with  bobby pin ") == 0);
    CHECK(rq_utf8_length(d->choice_texts[1]) == 34);
    rq_mc_task_free(&t);
}

static void test_hellaswag(void) {
    rq_err err = {0};
    rq_mc_task t;
    CHECK_OK(rq_mc_task_load("hellaswag", dataset_root, &t, &err), &err);
    CHECKF(t.n_docs == 10042, "%zu", t.n_docs);
    check_mc_shape(&t);
    if (t.n_docs < 5001) return;
    const rq_mc_doc *d = &t.docs[0];
    CHECK(d->gold == 3 && d->n_choices == 4);
    CHECKF(strcmp(d->contexts[0], "Roof shingle removal: A man is sitting on a roof. He") == 0, "%s", d->contexts[0]);
    CHECK(strcmp(d->continuations[0], " is using wrap to wrap a pair of skis.") == 0);
    CHECK(strcmp(d->continuations[3], " starts pulling up roofing on a roof.") == 0);
    d = &t.docs[1];
    CHECK(strcmp(d->contexts[0], "Clean and jerk: A lady walks to a barbell. She bends down and grabs the pole. The "
                                 "lady") == 0);
    /* WikiHow context that already ends a sentence: unchanged */
    d = &t.docs[5000];
    CHECK(d->gold == 1 && strncmp(d->contexts[0], "Personal Care and Style: How to buy a wedding band for men. Find",
                                  63) == 0);
    /* a bracket span the llama.cpp extractor kept, removed by lm-eval's preprocess */
    d = &t.docs[3505];
    CHECK(strstr(d->contexts[0], "[www.kiddio.org]") == NULL &&
          strstr(d->contexts[0], "Visit a site like to find loads of creative") != NULL);
    size_t brackets = 0;
    for (size_t i = 0; i < t.n_docs; i++)
        for (size_t c = 0; c < 4; c++)
            if (strchr(t.docs[i].choice_texts[c], '[')) brackets++;
    /* only unclosed "[" can survive the non-greedy \[.*?\] */
    CHECKF(brackets <= 6, "%zu endings still hold '['", brackets);
    rq_mc_task_free(&t);
}

static void test_winogrande(void) {
    rq_err err = {0};
    rq_mc_task t;
    CHECK_OK(rq_mc_task_load("winogrande", dataset_root, &t, &err), &err);
    CHECKF(t.n_docs == 1267, "%zu", t.n_docs);
    check_mc_shape(&t);
    if (t.n_docs < 3) return;
    const rq_mc_doc *d = &t.docs[0];
    CHECK(d->gold == 1 && d->n_contexts == 2 && d->n_continuations == 1 && d->choice_texts == NULL);
    CHECK(strcmp(d->contexts[0], "Sarah was a much better surgeon than Maria so Sarah") == 0);
    CHECK(strcmp(d->contexts[1], "Sarah was a much better surgeon than Maria so Maria") == 0);
    CHECK(strcmp(rq_mc_doc_continuation(d, 0), " always got the easier cases.") == 0);
    CHECK(t.docs[1].gold == 0);
    d = &t.docs[2];
    CHECK(d->gold == 1 && strcmp(rq_mc_doc_context(d, 1), "They were worried the wine would ruin the bed and the "
                                                          "blanket, but the bed") == 0 &&
          strcmp(rq_mc_doc_continuation(d, 1), " was't ruined.") == 0);
    rq_mc_task_free(&t);
}

static uint64_t fnv1a64(const char *s) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001b3ull;
    }
    return h;
}

static void test_gsm8k(void) {
    rq_err err = {0};
    rq_gsm8k_set test, train;
    CHECK_OK(rq_gsm8k_load(dataset_root, &test, &train, &err), &err);
    CHECKF(test.n_docs == 1319 && train.n_docs == 7473, "test %zu train %zu", test.n_docs, train.n_docs);
    if (test.n_docs != 1319 || train.n_docs != 7473) return;

    /* 5-shot contexts of every test doc against the python reproduction of lm-eval */
    char *doc0 = read_text(test_data_path("gsm8k_5shot_doc0.txt"));
    char *expect = read_text(test_data_path("gsm8k_5shot_expect.txt"));
    CHECK(doc0 && expect);
    rq_gsm8k_prompter p;
    CHECK_OK(rq_gsm8k_prompter_init(&p, &train, RQ_GSM8K_FEWSHOT, RQ_GSM8K_DEFAULT_SHOTS,
                                    RQ_GSM8K_DEFAULT_FEWSHOT_SEED, &err),
             &err);
    size_t mismatched = 0, compared = 0;
    char *save = NULL;
    char *line = expect ? strtok_r(expect, "\n", &save) : NULL;
    for (size_t i = 0; i < test.n_docs; i++) {
        char *ctx = NULL;
        size_t shots[5];
        if (rq_gsm8k_prompter_next(&p, &test.docs[i], &ctx, shots, &err) != RQ_OK) {
            mismatched++;
            break;
        }
        if (i == 0 && doc0) CHECKF(strcmp(ctx, doc0) == 0, "doc 0 5-shot context differs:\n%s", ctx);
        while (line && line[0] == '#') line = strtok_r(NULL, "\n", &save);
        if (line) {
            size_t di, s[5], len;
            uint64_t h;
            if (sscanf(line, "%zu %zu %zu %zu %zu %zu %zu %" SCNx64, &di, &s[0], &s[1], &s[2], &s[3], &s[4], &len,
                       &h) == 8) {
                compared++;
                bool same = di == i && len == strlen(ctx) && h == fnv1a64(ctx);
                for (int k = 0; k < 5; k++) same = same && s[k] == shots[k];
                if (!same) {
                    if (mismatched == 0) fprintf(stderr, "first gsm8k context mismatch at doc %zu\n", i);
                    mismatched++;
                }
            }
            line = strtok_r(NULL, "\n", &save);
        }
        free(ctx);
    }
    CHECKF(mismatched == 0 && compared == 1319, "%zu of %zu contexts differ", mismatched, compared);
    free(doc0);
    free(expect);

    /* zero-shot and fine-tuned formats: the bare question template, no draws */
    const char *want0 = "Question: Janet\xe2\x80\x99s ducks lay 16 eggs per day.";
    char *ctx = NULL;
    CHECK_OK(rq_gsm8k_prompter_init(&p, NULL, RQ_GSM8K_ZEROSHOT, 5, 1234, &err), &err);
    CHECK_OK(rq_gsm8k_prompter_next(&p, &test.docs[0], &ctx, NULL, &err), &err);
    size_t qlen = strlen(test.docs[0].question);
    CHECK(ctx && strncmp(ctx, want0, strlen(want0)) == 0 && strlen(ctx) == qlen + 18 &&
          strcmp(ctx + 10 + qlen, "\nAnswer:") == 0);
    char *ft_ctx = NULL;
    CHECK_OK(rq_gsm8k_prompter_init(&p, NULL, RQ_GSM8K_FINETUNED, 0, 1234, &err), &err);
    CHECK_OK(rq_gsm8k_prompter_next(&p, &test.docs[0], &ft_ctx, NULL, &err), &err);
    CHECK(ctx && ft_ctx && strcmp(ctx, ft_ctx) == 0);
    char *prompt = NULL, *target = NULL;
    CHECK_OK(rq_gsm8k_finetune_pair(&train.docs[0], &prompt, &target, &err), &err);
    CHECK(prompt && target && target[0] == ' ' && strcmp(target + 1, train.docs[0].answer) == 0 &&
          strncmp(prompt, "Question: ", 10) == 0);
    free(ctx);
    free(ft_ctx);
    free(prompt);
    free(target);
    CHECK(rq_gsm8k_prompter_init(&p, NULL, RQ_GSM8K_FEWSHOT, 5, 1234, &err) == RQ_ERR_ARG);
    CHECK(rq_gsm8k_prompter_init(&p, &train, RQ_GSM8K_FEWSHOT, 8000, 1234, &err) == RQ_ERR_ARG);

    /* every reference answer ends in a "#### N" line */
    size_t without = 0;
    for (size_t i = 0; i < test.n_docs; i++) without += strstr(test.docs[i].answer, "\n#### ") == NULL;
    CHECK(without == 0);
    rq_gsm8k_set_free(&test);
    rq_gsm8k_set_free(&train);
}

int main(void) {
    test_pyrandom_vs_python();
    test_pyrandom_state_and_errors();
    test_jsonl();
    test_task_errors();
    test_hellaswag_text_rules();
    if (rq_test_failed) return rq_test_finish(); /* report these before a possible skip below */

    /* the real datasets: skipped (exit 77) when $RILQ_DATA is not there */
    const char *probe = rq_test_data("datasets/gsm8k/test.jsonl");
    snprintf(dataset_root, sizeof dataset_root, "%s/datasets", getenv("RILQ_DATA"));
    (void)probe;
    test_arc();
    test_piqa();
    test_hellaswag();
    test_winogrande();
    test_gsm8k();
    return rq_test_finish();
}
