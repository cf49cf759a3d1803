/* The evaluation command's library: multiple-choice scoring with shared
 * contexts equals scoring every request alone (on the real stories260K model
 * and real task data), metrics and their tie rules, lm-eval's stderr, bad
 * documents, the skip-bad-lines policy, gsm8k end to end, and the shape of the
 * results file read back with cJSON.
 *
 * Tolerance for shared vs naive log-likelihoods: 1e-4 absolute. Both paths
 * compute the same positions, but a batched call and a single one sum the
 * GEMMs in a different order (OpenBLAS blocks by the row count), so fp32
 * rounding differs in the last bits of each logit; a continuation of ~30
 * tokens accumulates that to ~1e-5.
 *
 * The same tolerance holds for packed scoring (many documents per forward)
 * against one document at a time: every position computes the same quantities
 * with the same inputs, but the projections are GEMMs over more rows (OpenBLAS
 * picks its blocking and edge kernels by the row count) and a continuation's
 * attention sums its context's keys and its own in two GEMMs instead of one:
 * again only the fp32 summation order differs, so per-logit differences are
 * ~1e-6 relative and a continuation's sum stays far below 1e-4. Decisions
 * (is_greedy, hence the argmaxes) must agree exactly. */
#include <math.h>
#include <stdint.h>
#include <sys/stat.h>

#include "eval/gsm8k.h"
#include "eval/mc.h"
#include "eval/results.h"
#include "eval/task_data.h"
#include "test.h"

#define LL_TOL 1e-4

static char datasets_dir[4096];

static rq_model *load_stories(void) {
    const char *path = rq_test_data("models/stories260K/stories260K.bin");
    rq_err err = {0};
    rq_model *m = NULL;
    CHECK_OK(rq_model_load(path, NULL, &m, &err), &err);
    if (m && !m->tok) {
        fprintf(stderr, "stories260K loaded without a tokenizer\n");
        rq_test_failed++;
    }
    return m;
}

/* Shared-context scoring, per-request naive scoring and rq_mc_loglikelihood on
 * the first 20 documents of a task give the same log-likelihoods. */
static void test_shared_equals_naive(rq_model *m, rq_backend *be, const char *task_name, int max_length) {
    rq_err err = {0};
    rq_mc_task task;
    CHECK_OK(rq_mc_task_load(task_name, datasets_dir, &task, &err), &err);
    if (task.n_docs == 0) return;
    rq_mc_opts shared_opts = {.bos = RQ_BOS_OFF, .max_length = max_length};
    rq_mc_opts naive_opts = {.bos = RQ_BOS_OFF, .max_length = max_length, .naive = true};
    rq_mc_scorer *shared = NULL, *naive = NULL, *single_scorer = NULL;
    CHECK_OK(rq_mc_scorer_create(m, be, &shared_opts, &shared, &err), &err);
    CHECK_OK(rq_mc_scorer_create(m, be, &naive_opts, &naive, &err), &err);
    CHECK_OK(rq_mc_scorer_create(m, be, &naive_opts, &single_scorer, &err), &err);
    if (!shared || !naive || !single_scorer) return;
    size_t n = task.n_docs < 20 ? task.n_docs : 20;
    double worst = 0.0;
    int greedy_mismatch = 0, finite = 1;
    for (size_t d = 0; d < n; d++) {
        const rq_mc_doc *doc = &task.docs[d];
        double ll_shared[16], ll_naive[16];
        bool g_shared[16], g_naive[16];
        CHECK(doc->n_choices <= 16);
        CHECK_OK(rq_mc_score_doc(shared, doc, ll_shared, g_shared, &err), &err);
        CHECK_OK(rq_mc_score_doc(naive, doc, ll_naive, g_naive, &err), &err);
        for (size_t c = 0; c < doc->n_choices; c++) {
            double single = 0.0;
            bool g_single = false;
            CHECK_OK(rq_mc_loglikelihood(single_scorer, rq_mc_doc_context(doc, c), rq_mc_doc_continuation(doc, c), &single,
                                         &g_single, &err),
                     &err);
            double diff = fabs(ll_shared[c] - ll_naive[c]);
            if (diff > worst) worst = diff;
            CHECK_NEAR(ll_naive[c], single, 1e-12); /* same path, same numbers */
            greedy_mismatch += g_shared[c] != g_naive[c];
            finite &= isfinite(ll_shared[c]) && ll_shared[c] < 0.0;
        }
    }
    CHECKF(worst <= LL_TOL, "%s (max_length %d): shared vs naive log-likelihoods differ by %.3g", task_name,
           max_length, worst);
    CHECKF(greedy_mismatch == 0, "%s: is_greedy differs in %d requests", task_name, greedy_mismatch);
    CHECKF(finite, "%s: a log-likelihood is not finite and negative", task_name);
    const rq_mc_stats *ss = rq_mc_scorer_stats(shared), *ns = rq_mc_scorer_stats(naive);
    CHECK(ss->positions_naive == ns->positions_run);
    if (task.id != RQ_TASK_WINOGRANDE && max_length == 0)
        CHECKF(ss->positions_run < ns->positions_run, "%s: sharing ran %lld positions, naive %lld", task_name,
               (long long)ss->positions_run, (long long)ns->positions_run);
    printf("%-10s max_length %3d: max |shared - naive| = %.2e, positions %lld shared vs %lld naive, %lld docs "
           "unshared\n", task_name, max_length, worst, (long long)ss->positions_run, (long long)ns->positions_run,
           (long long)ss->unshared_docs);
    if (max_length > 0) CHECKF(ss->unshared_docs > 0, "max_length %d truncated no context", max_length);
    else CHECK(ss->unshared_docs == 0);
    rq_mc_scorer_free(shared);
    rq_mc_scorer_free(naive);
    rq_mc_scorer_free(single_scorer);
    rq_mc_task_free(&task);
}

/* Packed scoring (batch_tokens > 0) against one document at a time, on the
 * first 24 documents of a task: the same log-likelihoods (LL_TOL), the same
 * is_greedy flags, bit-identical when run twice, identical through the
 * attention fallback of backends without attention_packed, and fewer positions
 * run (no padding). batch_tokens 48 makes many small batches and documents
 * larger than the budget (run alone). */
static void test_packed_equals_alone(rq_model *m, rq_backend *be, const char *task_name, int max_length,
                                     int batch_tokens) {
    rq_err err = {0};
    rq_mc_task task;
    CHECK_OK(rq_mc_task_load(task_name, datasets_dir, &task, &err), &err);
    if (task.n_docs == 0) return;
    size_t n = task.n_docs < 24 ? task.n_docs : 24, total = 0;
    for (size_t d = 0; d < n; d++) total += task.docs[d].n_choices;
    rq_mc_opts alone_opts = {.bos = RQ_BOS_OFF, .max_length = max_length};
    rq_mc_opts packed_opts = {.bos = RQ_BOS_OFF, .max_length = max_length, .batch_tokens = batch_tokens};
    rq_mc_scorer *alone = NULL, *packed = NULL;
    CHECK_OK(rq_mc_scorer_create(m, be, &alone_opts, &alone, &err), &err);
    CHECK_OK(rq_mc_scorer_create(m, be, &packed_opts, &packed, &err), &err);
    double *ll_alone = calloc(total, sizeof(double)), *ll_packed = calloc(total, sizeof(double));
    double *ll_again = calloc(total, sizeof(double)), *ll_fallback = calloc(total, sizeof(double));
    bool *g_alone = calloc(total, sizeof(bool)), *g_packed = calloc(total, sizeof(bool));
    if (!alone || !packed || !ll_alone || !ll_packed || !ll_again || !ll_fallback || !g_alone || !g_packed) {
        CHECK(false);
        goto done;
    }
    CHECK_OK(rq_mc_score_docs(alone, task.docs, n, ll_alone, g_alone, &err), &err);
    CHECK_OK(rq_mc_score_docs(packed, task.docs, n, ll_packed, g_packed, &err), &err);
    CHECK_OK(rq_mc_score_docs(packed, task.docs, n, ll_again, NULL, &err), &err);
    /* a backend without the packed attention op: the forward joins each sequence's keys */
    void (*op)(rq_backend *, float *, const float *, const float *, const float *, const float *, const float *,
               const rq_attn_seq *, int, int, int, int) = be->attention_packed;
    be->attention_packed = NULL;
    CHECK_OK(rq_mc_score_docs(packed, task.docs, n, ll_fallback, NULL, &err), &err);
    be->attention_packed = op;
    double worst = 0.0, worst_fallback = 0.0;
    int greedy_mismatch = 0;
    for (size_t i = 0; i < total; i++) {
        worst = fmax(worst, fabs(ll_packed[i] - ll_alone[i]));
        worst_fallback = fmax(worst_fallback, fabs(ll_fallback[i] - ll_packed[i]));
        greedy_mismatch += g_packed[i] != g_alone[i];
    }
    CHECKF(worst <= LL_TOL, "%s (max_length %d, batch %d): packed vs alone log-likelihoods differ by %.3g", task_name,
           max_length, batch_tokens, worst);
    CHECKF(worst_fallback <= LL_TOL, "%s: the attention fallback differs by %.3g", task_name, worst_fallback);
    CHECKF(greedy_mismatch == 0, "%s: is_greedy differs in %d requests", task_name, greedy_mismatch);
    CHECKF(memcmp(ll_packed, ll_again, total * sizeof(double)) == 0, "%s: packed scoring is not repeatable",
           task_name);
    const rq_mc_stats *as = rq_mc_scorer_stats(alone), *ps = rq_mc_scorer_stats(packed);
    CHECK(ps->requests == 3 * as->requests && ps->positions_naive == 3 * as->positions_naive);
    CHECK(ps->positions_run == ps->positions_useful && ps->unshared_docs == 3 * as->unshared_docs);
    CHECKF(ps->positions_run <= 3 * as->positions_run, "%s: packed ran %lld positions, alone %lld", task_name,
           (long long)ps->positions_run / 3, (long long)as->positions_run);
    printf("%-10s max_length %3d batch %4d: max |packed - alone| = %.2e (fallback attention %.2e), positions %lld "
           "packed vs %lld alone\n", task_name, max_length, batch_tokens, worst, worst_fallback,
           (long long)ps->positions_run / 3, (long long)as->positions_run);
done:
    free(ll_alone);
    free(ll_packed);
    free(ll_again);
    free(ll_fallback);
    free(g_alone);
    free(g_packed);
    rq_mc_scorer_free(alone);
    rq_mc_scorer_free(packed);
    rq_mc_task_free(&task);
}

/* rq_mc_evaluate packs documents too: the same records as one at a time. */
static void test_evaluate_packed(rq_model *m, rq_backend *be) {
    rq_err err = {0};
    rq_mc_task task;
    CHECK_OK(rq_mc_task_load("arc_easy", datasets_dir, &task, &err), &err);
    if (task.n_docs == 0) return;
    rq_mc_opts a_opts = {.bos = RQ_BOS_OFF}, p_opts = {.bos = RQ_BOS_OFF, .batch_tokens = 200};
    rq_mc_scorer *a = NULL, *p = NULL;
    CHECK_OK(rq_mc_scorer_create(m, be, &a_opts, &a, &err), &err);
    CHECK_OK(rq_mc_scorer_create(m, be, &p_opts, &p, &err), &err);
    rq_mc_result ra, rp;
    memset(&ra, 0, sizeof ra);
    memset(&rp, 0, sizeof rp);
    CHECK_OK(rq_mc_evaluate(a, &task, 30, true, true, &ra, &err), &err);
    CHECK_OK(rq_mc_evaluate(p, &task, 30, true, true, &rp, &err), &err);
    CHECK(ra.n_docs == 30 && rp.n_docs == 30 && ra.records && rp.records);
    CHECK(ra.acc == rp.acc && ra.acc_norm == rp.acc_norm && ra.requests == rp.requests);
    for (size_t d = 0; ra.records && rp.records && d < 30; d++) {
        const rq_mc_doc_record *x = &ra.records[d], *y = &rp.records[d];
        CHECK(x->doc_index == y->doc_index && x->pred == y->pred && x->pred_norm == y->pred_norm);
        for (size_t c = 0; c < x->n_choices; c++) {
            CHECK_NEAR(x->ll[c], y->ll[c], LL_TOL);
            CHECK(x->is_greedy[c] == y->is_greedy[c]);
        }
    }
    rq_mc_result_free(&ra);
    rq_mc_result_free(&rp);
    rq_mc_scorer_free(a);
    rq_mc_scorer_free(p);
    rq_mc_task_free(&task);
}

/* lm-eval moves a context's trailing whitespace to the continuation. */
static void test_trailing_space_moves(rq_model *m, rq_backend *be) {
    rq_err err = {0};
    rq_mc_opts o = {.bos = RQ_BOS_OFF};
    rq_mc_scorer *s = NULL;
    CHECK_OK(rq_mc_scorer_create(m, be, &o, &s, &err), &err);
    if (!s) return;
    double a = 0, b = 0;
    CHECK_OK(rq_mc_loglikelihood(s, "Once upon a time there was a", " little girl", &a, NULL, &err), &err);
    CHECK_OK(rq_mc_loglikelihood(s, "Once upon a time there was a ", "little girl", &b, NULL, &err), &err);
    CHECK_NEAR(a, b, 1e-12);
    rq_mc_scorer_free(s);
}

static void test_metrics(void) {
    /* ties go to the first index */
    double tie[4] = {-3.0, -1.0, -1.0, -2.0};
    CHECK(rq_argmax_first(tie, 4) == 1);
    double all_equal[3] = {-1.0, -1.0, -1.0};
    CHECK(rq_argmax_first(all_equal, 3) == 0);

    /* acc picks the highest ll; acc_norm divides by code points ("é" is one) */
    char *ctx[1] = {"Question: q\nAnswer:"};
    char *conts[3] = {" ab", " ééééé", " abcd"};
    char *texts[3] = {"ab", "ééééé", "abcd"};
    rq_mc_doc doc = {.n_choices = 3, .n_contexts = 1, .n_continuations = 3, .contexts = ctx, .continuations = conts,
                     .choice_texts = texts, .gold = 1, .source_line = 7};
    double ll[3] = {-2.0, -5.0, -6.0}; /* per char: -1.0, -1.0, -1.5: tie between 0 and 1 -> 0 */
    size_t pred, pred_norm;
    rq_mc_predict(&doc, ll, &pred, &pred_norm);
    CHECK(pred == 0);
    CHECK(pred_norm == 0);
    double ll2[3] = {-2.2, -5.0, -6.0}; /* per char -1.1, -1.0, -1.5 -> 1 */
    rq_mc_predict(&doc, ll2, &pred, &pred_norm);
    CHECK(pred == 0);
    CHECK(pred_norm == 1);
    doc.choice_texts = NULL; /* winogrande: acc only */
    rq_mc_predict(&doc, ll2, &pred, &pred_norm);
    CHECK(pred_norm == SIZE_MAX);

    /* lm-eval mean_stderr: sample std (n - 1) / sqrt(n) */
    double x[4] = {1, 0, 1, 1};
    double mean, se;
    rq_mean_stderr(x, 4, &mean, &se);
    CHECK_NEAR(mean, 0.75, 1e-15);
    CHECK_NEAR(se, 0.25, 1e-15); /* std = sqrt(0.75 / 3) = 0.5; / sqrt(4) */
    double y[5] = {0.5, 1.5, 2.0, 3.0, 8.0};
    rq_mean_stderr(y, 5, &mean, &se);
    CHECK_NEAR(mean, 3.0, 1e-15);
    CHECK_NEAR(se, sqrt((6.25 + 2.25 + 1.0 + 0.0 + 25.0) / 4.0) / sqrt(5.0), 1e-15);
    rq_mean_stderr(x, 1, &mean, &se);
    CHECK(mean == 1.0 && isnan(se));
}

static void test_bad_documents(void) {
    rq_err err = {0};
    char *ctx[1] = {"Question: q\nAnswer:"};
    char *conts[2] = {" yes", " "};
    char *texts[2] = {"yes", ""};
    rq_mc_doc doc = {.n_choices = 2, .n_contexts = 1, .n_continuations = 2, .contexts = ctx, .continuations = conts,
                     .choice_texts = texts, .gold = 0, .source_line = 12};
    CHECK(rq_mc_doc_check(&doc, "arc_easy", &err) == RQ_ERR_FORMAT);
    CHECKF(strstr(err.msg, "line 12") && strstr(err.msg, "empty"), "message: %s", err.msg);
    conts[1] = " no";
    texts[1] = "no";
    CHECK_OK(rq_mc_doc_check(&doc, "arc_easy", &err), &err);
    doc.gold = 2;
    CHECK(rq_mc_doc_check(&doc, "arc_easy", &err) == RQ_ERR_FORMAT);
    CHECKF(strstr(err.msg, "out of range"), "message: %s", err.msg);

    rq_mc_task task;
    CHECK(rq_eval_load_mc("arc_medium", datasets_dir, false, &task, NULL, &err) == RQ_ERR_ARG);
    CHECKF(strstr(err.msg, "arc_easy"), "unknown task message lists the known names: %s", err.msg);
    CHECK(rq_eval_load_mc("piqa", "/nonexistent-rilq-data", false, &task, NULL, &err) == RQ_ERR_IO);
    CHECKF(strstr(err.msg, "piqa/valid.jsonl"), "missing file message: %s", err.msg);
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "cannot write %s\n", path);
        rq_test_failed++;
        return;
    }
    fputs(text, f);
    fclose(f);
}

/* A malformed line stops loading with file and line, or is skipped and
 * counted; piqa's labels stay aligned with the remaining documents. */
static void test_skip_bad_lines(void) {
    char root[4096], dir[4200], path[4300];
    snprintf(root, sizeof root, "%s", rq_test_out("eval_bad_data"));
    mkdir(root, 0755);
    snprintf(dir, sizeof dir, "%s/piqa", root);
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/valid.jsonl", dir);
    write_text(path, "{\"goal\": \"g1\", \"sol1\": \"a\", \"sol2\": \"b\"}\n"
                     "{\"goal\": \"g2\", \"sol1\": \"a\", \"sol2\": \n"
                     "{\"goal\": \"g3\", \"sol1\": \"c\", \"sol2\": \"d\"}\n");
    snprintf(path, sizeof path, "%s/valid-labels.lst", dir);
    write_text(path, "1\n0\n1\n");
    rq_err err = {0};
    rq_mc_task task;
    CHECK(rq_eval_load_mc("piqa", root, false, &task, NULL, &err) == RQ_ERR_FORMAT);
    CHECKF(strstr(err.msg, "valid.jsonl:2"), "stop message names file and line: %s", err.msg);
    rq_skip_report skipped;
    CHECK_OK(rq_eval_load_mc("piqa", root, true, &task, &skipped, &err), &err);
    CHECK(task.n_docs == 2 && skipped.skipped_lines == 1);
    CHECKF(strstr(skipped.first, "valid.jsonl:2"), "skip report: %s", skipped.first);
    if (task.n_docs == 2) {
        CHECK(task.docs[0].gold == 1 && task.docs[1].gold == 1); /* the label of line 2 went with it */
        CHECK(task.docs[1].source_line == 3);
        CHECK(strcmp(task.docs[1].contexts[0], "Question: g3\nAnswer:") == 0);
    }
    rq_mc_task_free(&task);
}

static const cJSON *get_path(const cJSON *root, const char *a, const char *b, const char *c) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, a);
    if (b) v = cJSON_GetObjectItemCaseSensitive(v, b);
    if (c) v = cJSON_GetObjectItemCaseSensitive(v, c);
    return v;
}

/* gsm8k end to end (2 documents, 16 new tokens) plus arc_easy, written as a
 * results file and read back. */
static void test_gsm8k_and_results(rq_model *m, rq_backend *be) {
    rq_err err = {0};
    rq_gsm8k_set test = {0}, train = {0};
    CHECK_OK(rq_eval_load_gsm8k(datasets_dir, false, &test, &train, NULL, &err), &err);
    if (!test.n_docs) return;
    rq_gsm8k_opts o;
    rq_gsm8k_default_opts(&o);
    o.limit = 2;
    o.max_gen_tokens = 16;
    o.keep_records = true;
    o.quiet = true;
    rq_gsm8k_result gr;
    CHECK_OK(rq_gsm8k_evaluate(m, be, &test, &train, &o, &gr, &err), &err);
    CHECK(gr.n_docs == 2 && gr.n_docs_total == 1319);
    CHECK(gr.new_tokens >= 2 && gr.new_tokens <= 32);
    CHECK(gr.truncated_prompts == 2); /* 5-shot prompts exceed stories260K's 512 - 16 tokens */
    for (size_t i = 0; gr.records && i < gr.n_docs; i++) {
        CHECK(gr.records[i].response && gr.records[i].strict && gr.records[i].flexible);
        CHECK(gr.records[i].new_tokens >= 1 && gr.records[i].new_tokens <= 16);
        CHECK(!strstr(gr.records[i].response, "Question:"));
        printf("gsm8k doc %zu: %d new tokens, strict '%s', flexible '%s'\n", i, gr.records[i].new_tokens,
               gr.records[i].strict, gr.records[i].flexible);
    }
    CHECK(gr.strict >= 0.0 && gr.strict <= 1.0 && gr.flexible >= 0.0 && gr.flexible <= 1.0);
    const char *stops[4];
    size_t n_stops;
    rq_gsm8k_stop_strings(m->tok, stops, &n_stops);
    CHECK(n_stops >= 3 && !strcmp(stops[0], "Question:") && !strcmp(stops[1], "</s>") &&
          !strcmp(stops[2], "<|im_end|>"));

    rq_mc_task arc;
    rq_mc_result mr;
    memset(&mr, 0, sizeof mr);
    rq_mc_opts mo = {.bos = RQ_BOS_OFF};
    rq_mc_scorer *scorer = NULL;
    CHECK_OK(rq_mc_task_load("arc_easy", datasets_dir, &arc, &err), &err);
    CHECK_OK(rq_mc_scorer_create(m, be, &mo, &scorer, &err), &err);
    CHECK_OK(rq_mc_evaluate(scorer, &arc, 5, true, true, &mr, &err), &err);
    CHECK(mr.n_docs == 5 && mr.n_docs_total == 2376 && mr.has_acc_norm && mr.records);

    rq_eval_settings s = {.model_path = m->path, .model_format = m->format, .model_dtypes = m->dtypes,
                          .bos = RQ_BOS_OFF, .limit = 5, .gsm8k_format = RQ_GSM8K_FEWSHOT, .gsm8k_shots = 5,
                          .gsm8k_max_gen_tokens = 16, .data_root = datasets_dir, .backend = "cpu", .threads = 1};
    rq_eval_report rep;
    CHECK_OK(rq_eval_report_init(&rep, &s, &err), &err);
    CHECK_OK(rq_eval_report_add_mc(&rep, RQ_TASK_ARC_EASY, &mr, 0, &err), &err);
    CHECK_OK(rq_eval_report_add_gsm8k(&rep, &o, &gr, stops, n_stops, 0, &err), &err);
    const char *out = rq_test_out("eval_results.json");
    CHECK_OK(rq_eval_report_write(&rep, out, &err), &err);
    char *table = NULL;
    CHECK_OK(rq_eval_report_table(&rep, &table, &err), &err);
    CHECK(table && strstr(table, "arc_easy") && strstr(table, "acc_norm") && strstr(table, "flexible-extract"));
    if (table) fputs(table, stdout);
    free(table);
    rq_eval_report_free(&rep);

    char *text = NULL;
    size_t size = 0;
    CHECK_OK(rq_file_read_all(out, &text, &size, &err), &err);
    cJSON *root = text ? cJSON_Parse(text) : NULL;
    CHECKF(root != NULL, "the results file does not parse as JSON");
    if (root) {
        const cJSON *acc = get_path(root, "results", "arc_easy", "acc,none");
        CHECK(cJSON_IsNumber(acc) && fabs(acc->valuedouble - mr.acc) < 1e-12);
        CHECK(cJSON_IsNumber(get_path(root, "results", "arc_easy", "acc_stderr,none")));
        CHECK(cJSON_IsNumber(get_path(root, "results", "arc_easy", "acc_norm,none")));
        CHECK(cJSON_IsString(get_path(root, "results", "arc_easy", "alias")));
        const cJSON *strict = get_path(root, "results", "gsm8k", "exact_match,strict-match");
        const cJSON *flexible = get_path(root, "results", "gsm8k", "exact_match,flexible-extract");
        CHECK(cJSON_IsNumber(strict) && cJSON_IsNumber(flexible));
        CHECK(cJSON_GetObjectItemCaseSensitive(get_path(root, "results", "gsm8k", NULL),
                                               "exact_match_stderr,flexible-extract") != NULL);
        const cJSON *eff = get_path(root, "n-samples", "gsm8k", "effective");
        CHECK(cJSON_IsNumber(eff) && eff->valuedouble == 2);
        CHECK(cJSON_IsNumber(get_path(root, "n-shot", "gsm8k", NULL)) &&
              get_path(root, "n-shot", "gsm8k", NULL)->valuedouble == 5);
        CHECK(cJSON_IsNumber(get_path(root, "versions", "gsm8k", NULL)));
        const cJSON *until = get_path(root, "configs", "gsm8k", "generation_kwargs");
        until = cJSON_GetObjectItemCaseSensitive(until, "until");
        CHECK(cJSON_IsArray(until) && !strcmp(cJSON_GetArrayItem(until, 0)->valuestring, "Question:"));
        const cJSON *bos = get_path(root, "rilq", "bos", NULL);
        CHECK(cJSON_IsString(bos) && !strcmp(bos->valuestring, "off"));
        CHECK(cJSON_IsNumber(get_path(root, "rilq", "seed", NULL)) &&
              get_path(root, "rilq", "seed", NULL)->valuedouble == 1234);
        CHECK(cJSON_IsString(get_path(root, "rilq", "version", NULL)));
        CHECK(cJSON_IsArray(get_path(root, "rilq", "dataset_files", "gsm8k")));
        CHECK(cJSON_IsString(get_path(root, "rilq", "gsm8k", "format")));
        cJSON_Delete(root);
    }
    free(text);
    rq_mc_result_free(&mr);
    rq_mc_scorer_free(scorer);
    rq_mc_task_free(&arc);
    rq_gsm8k_result_free(&gr);
    rq_gsm8k_set_free(&test);
    rq_gsm8k_set_free(&train);
}

int main(void) {
    test_metrics();
    test_bad_documents();
    test_skip_bad_lines();
    rq_test_data("datasets/arc/ARC-Easy-Test.jsonl");
    snprintf(datasets_dir, sizeof datasets_dir, "%s/datasets", getenv("RILQ_DATA"));
    rq_model *m = load_stories();
    rq_err err = {0};
    rq_backend *be = NULL;
    CHECK_OK(rq_backend_create("cpu", 1, &be, &err), &err);
    if (m && m->tok && be) {
        test_trailing_space_moves(m, be);
        static const char *const tasks[4] = {"arc_easy", "piqa", "hellaswag", "winogrande"};
        for (int t = 0; t < 4; t++) test_shared_equals_naive(m, be, tasks[t], 0);
        /* a short model context: contexts get left-truncated and sharing must step aside */
        test_shared_equals_naive(m, be, "arc_easy", 96);
        for (int t = 0; t < 4; t++) test_packed_equals_alone(m, be, tasks[t], 0, 512);
        test_packed_equals_alone(m, be, "hellaswag", 0, 48);
        test_packed_equals_alone(m, be, "arc_easy", 96, 256); /* truncated contexts run unshared in phase 1 */
        test_evaluate_packed(m, be);
        test_gsm8k_and_results(m, be);
    }
    rq_backend_destroy(be);
    rq_model_free(m);
    return rq_test_finish();
}
