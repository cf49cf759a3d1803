/* Multiple-choice scoring speed: scored continuations per second on arc_easy
 * (first 100 documents) for SmolLM2-135M, with context sharing (the context
 * runs once, the choices as one batch from the forked KV cache) against the
 * naive path (every continuation scored alone from scratch), and the share of
 * forward FLOPs saved, counted as token positions run through the model
 * (forward FLOPs are ~2 x parameters per position; attention over a ~100-token
 * prompt adds little). Prints what it measured; asserts nothing.
 *
 *   RILQ_SMOLLM2  the GGUF (default /work/main/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf)
 *   RILQ_DATA     the data root holding datasets/
 *   RILQ_BENCH_DOCS  documents (default 100)  RILQ_BENCH_THREADS  CPU threads (default all) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "eval/mc.h"

static const char *env_or(const char *name, const char *fallback) {
    const char *v = getenv(name);
    return v && *v ? v : fallback;
}

typedef struct run_figures {
    double seconds;
    int64_t continuations;
    rq_mc_stats stats;
    double acc;
} run_figures;

static rq_status run(const rq_model *m, rq_backend *be, const rq_mc_task *task, size_t n_docs, bool naive,
                     run_figures *f, double *lls, rq_err *err) {
    rq_mc_opts o = {.bos = RQ_BOS_OFF, .naive = naive};
    rq_mc_scorer *s = NULL;
    RQ_TRY(rq_mc_scorer_create(m, be, &o, &s, err));
    double t0 = rq_now_seconds(), correct = 0;
    rq_status st = RQ_OK;
    size_t k = 0;
    for (size_t d = 0; st == RQ_OK && d < n_docs; d++) {
        const rq_mc_doc *doc = &task->docs[d];
        st = rq_mc_score_doc(s, doc, lls + k, NULL, err);
        if (st != RQ_OK) break;
        size_t pred, pred_norm;
        rq_mc_predict(doc, lls + k, &pred, &pred_norm);
        correct += pred == doc->gold;
        k += doc->n_choices;
    }
    f->seconds = rq_now_seconds() - t0;
    f->stats = *rq_mc_scorer_stats(s);
    f->continuations = f->stats.requests;
    f->acc = correct / (double)n_docs;
    rq_mc_scorer_free(s);
    return st;
}

int main(int argc, char **argv) {
    (void)argc;
    rq_reexec_with_passive_openmp(argv);
    const char *model_path = env_or("RILQ_SMOLLM2", "/work/main/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    const char *data = env_or("RILQ_DATA", "/work/shared");
    size_t n_docs = (size_t)atoi(env_or("RILQ_BENCH_DOCS", "100"));
    int threads = atoi(env_or("RILQ_BENCH_THREADS", "0"));
    char datasets[4096];
    snprintf(datasets, sizeof datasets, "%s/datasets", data);
    rq_err err = {0};
    rq_model *m = NULL;
    rq_backend *be = NULL;
    rq_mc_task task = {0};
    if (rq_model_load(model_path, NULL, &m, &err) != RQ_OK || rq_backend_create("cpu", threads, &be, &err) != RQ_OK ||
        rq_mc_task_load("arc_easy", datasets, &task, &err) != RQ_OK) {
        fprintf(stderr, "bench_eval: %s\n", err.msg);
        rq_backend_destroy(be);
        rq_model_free(m);
        return 1;
    }
    if (n_docs == 0 || n_docs > task.n_docs) n_docs = task.n_docs;
    size_t n_cont = 0;
    for (size_t d = 0; d < n_docs; d++) n_cont += task.docs[d].n_choices;
    double *ll_shared = calloc(n_cont, sizeof(double)), *ll_naive = calloc(n_cont, sizeof(double));
    run_figures shared = {0}, naive = {0};
    int rc = 0;
    if (!ll_shared || !ll_naive || run(m, be, &task, n_docs, false, &shared, ll_shared, &err) != RQ_OK ||
        run(m, be, &task, n_docs, true, &naive, ll_naive, &err) != RQ_OK) {
        fprintf(stderr, "bench_eval: %s\n", err.msg[0] ? err.msg : "out of memory");
        rc = 1;
    } else {
        double worst = 0;
        for (size_t i = 0; i < n_cont; i++) worst = fmax(worst, fabs(ll_shared[i] - ll_naive[i]));
        printf("bench_eval: arc_easy, first %zu documents, %zu continuations\n", n_docs, n_cont);
        printf("model: %s (%s, %lld parameters), backend %s, %d threads\n", model_path, m->dtypes,
               (long long)m->n_params, be->name, be->n_threads);
        printf("%-8s %9s %14s %16s %12s %8s\n", "path", "seconds", "continuations/s", "positions run", "of naive",
               "acc");
        const run_figures *rows[2] = {&naive, &shared};
        const char *names[2] = {"naive", "shared"};
        for (int i = 0; i < 2; i++)
            printf("%-8s %9.2f %14.1f %16lld %11.1f%% %8.3f\n", names[i], rows[i]->seconds,
                   rows[i]->continuations / rows[i]->seconds, (long long)rows[i]->stats.positions_run,
                   100.0 * rows[i]->stats.positions_run / (double)naive.stats.positions_run, rows[i]->acc);
        printf("speed-up of sharing: %.2fx; forward FLOPs saved: %.1f%% of the naive path "
               "(%.1f%% counting only real tokens, without end padding)\n",
               naive.seconds / shared.seconds,
               100.0 * (1.0 - shared.stats.positions_run / (double)naive.stats.positions_run),
               100.0 * (1.0 - shared.stats.positions_useful / (double)naive.stats.positions_run));
        printf("max |ll shared - ll naive| = %.2e over %zu continuations\n", worst, n_cont);
    }
    free(ll_shared);
    free(ll_naive);
    rq_mc_task_free(&task);
    rq_backend_destroy(be);
    rq_model_free(m);
    return rc;
}
