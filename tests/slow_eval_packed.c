/* Packed multiple-choice scoring (many documents per forward) on the real
 * SmolLM2-135M, full precision and its 2-bit RTN quantization, against one
 * document at a time on the first documents of arc_easy and piqa: identical
 * is_greedy flags and predictions (acc and acc_norm decisions), log-likelihoods
 * within the tolerance below, and bit-identical results when run twice.
 *
 * Tolerance: |ll_packed - ll_alone| <= LL_TOL_REL * |ll_alone| + LL_TOL_ABS.
 * Both paths compute every position from the same inputs; only the fp32
 * summation order differs (projection GEMMs over ~1000 rows instead of ~50,
 * whose blocking OpenBLAS picks by the row count; a continuation's attention
 * over its context's keys and its own in two GEMMs). Each token's
 * log-probability is a difference of fp32 numbers of the logits' size, moved by
 * a few ulps, so the error of a continuation's sum grows with the size of what
 * is summed, |ll|: seen up to 2.2e-6 |ll| on these documents and 4.7e-6 |ll|
 * on the first 40 piqa documents (the 2-bit RTN model's broken logits give piqa
 * log-likelihoods near -450 and differences near 1e-3 to 2e-3, the size the
 * one-document path shows against scoring every request alone). 2e-5 |ll|
 * leaves a margin of ~4x, far below any decision (choices' log-likelihoods
 * differ by ~1e-1 and more); the decisions themselves must agree exactly. */
#include <math.h>

#include "eval/mc.h"
#include "quant/quantize_model.h"
#include "test.h"

#define LL_TOL_REL 2e-5
#define LL_TOL_ABS 1e-5
#define DOCS 24

static void compare(rq_model *m, rq_backend *be, const char *model_name, const char *task_name,
                    const char *datasets) {
    rq_err err = {0};
    rq_mc_task task;
    CHECK_OK(rq_mc_task_load(task_name, datasets, &task, &err), &err);
    if (task.n_docs < DOCS) return;
    size_t total = 0;
    for (size_t d = 0; d < DOCS; d++) total += task.docs[d].n_choices;
    rq_mc_opts ao = {.bos = RQ_BOS_OFF}, po = {.bos = RQ_BOS_OFF, .batch_tokens = 1024};
    rq_mc_scorer *alone = NULL, *packed = NULL;
    CHECK_OK(rq_mc_scorer_create(m, be, &ao, &alone, &err), &err);
    CHECK_OK(rq_mc_scorer_create(m, be, &po, &packed, &err), &err);
    double *la = calloc(total, sizeof(double)), *lp = calloc(total, sizeof(double)), *l2 = calloc(total, sizeof(double));
    bool *ga = calloc(total, sizeof(bool)), *gp = calloc(total, sizeof(bool));
    if (alone && packed && la && lp && l2 && ga && gp) {
        CHECK_OK(rq_mc_score_docs(alone, task.docs, DOCS, la, ga, &err), &err);
        CHECK_OK(rq_mc_score_docs(packed, task.docs, DOCS, lp, gp, &err), &err);
        CHECK_OK(rq_mc_score_docs(packed, task.docs, DOCS, l2, NULL, &err), &err);
        double worst = 0, worst_rel = 0;
        int bad = 0, greedy_mismatch = 0, pred_mismatch = 0;
        for (size_t d = 0, k = 0; d < DOCS; d++) {
            const rq_mc_doc *doc = &task.docs[d];
            for (size_t c = 0; c < doc->n_choices; c++, k++) {
                const double diff = fabs(lp[k] - la[k]);
                worst = fmax(worst, diff);
                worst_rel = fmax(worst_rel, diff / fabs(la[k]));
                bad += !(diff <= LL_TOL_REL * fabs(la[k]) + LL_TOL_ABS);
                greedy_mismatch += ga[k] != gp[k];
            }
            size_t pa, pna, pp, pnp;
            rq_mc_predict(doc, la + k - doc->n_choices, &pa, &pna);
            rq_mc_predict(doc, lp + k - doc->n_choices, &pp, &pnp);
            pred_mismatch += pa != pp || pna != pnp;
        }
        CHECKF(bad == 0, "%s %s: %d log-likelihoods outside the tolerance (max %.3g)", model_name, task_name, bad,
               worst);
        CHECKF(greedy_mismatch == 0, "%s %s: is_greedy differs in %d requests", model_name, task_name,
               greedy_mismatch);
        CHECKF(pred_mismatch == 0, "%s %s: %d predictions differ", model_name, task_name, pred_mismatch);
        CHECKF(memcmp(lp, l2, total * sizeof(double)) == 0, "%s %s: packed scoring is not repeatable", model_name,
               task_name);
        const rq_mc_stats *as = rq_mc_scorer_stats(alone), *ps = rq_mc_scorer_stats(packed);
        printf("SmolLM2 %-3s %-8s: %zu requests, max |packed - alone| = %.2e (%.2e |ll|), positions %lld packed "
               "vs %lld alone, %lld batches\n",
               model_name, task_name, total, worst, worst_rel, (long long)ps->positions_run / 2,
               (long long)as->positions_run, (long long)ps->batches / 2);
    } else {
        CHECK(false);
    }
    free(la);
    free(lp);
    free(l2);
    free(ga);
    free(gp);
    rq_mc_scorer_free(alone);
    rq_mc_scorer_free(packed);
    rq_mc_task_free(&task);
}

int main(void) {
    const char *path = rq_test_smollm2();
    rq_test_data("datasets/arc/ARC-Easy-Test.jsonl");
    char datasets[4096];
    snprintf(datasets, sizeof datasets, "%s/datasets", getenv("RILQ_DATA"));
    rq_err err = {0};
    rq_model *m = NULL;
    rq_backend *be = NULL;
    CHECK_OK(rq_model_load(path, NULL, &m, &err), &err);
    CHECK_OK(rq_backend_create("cpu", 1, &be, &err), &err);
    if (m && be) {
        compare(m, be, "fp", "arc_easy", datasets);
        compare(m, be, "fp", "piqa", datasets);
        rq_model_quant_opts qo;
        rq_model_quant_opts_default(&qo);
        CHECK_OK(rq_model_quantize(m, &qo, NULL, &err), &err);
        compare(m, be, "q2", "arc_easy", datasets);
        compare(m, be, "q2", "piqa", datasets);
    }
    rq_backend_destroy(be);
    rq_model_free(m);
    return rq_test_finish();
}
