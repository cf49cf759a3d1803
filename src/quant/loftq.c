/* LoftQ: alternating quantization and truncated SVD. See loftq.h. */
#include "loftq.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>

void rq_loftq_opts_default(rq_loftq_opts *o) {
    memset(o, 0, sizeof *o);
    rq_quant_opts_default(&o->quant);
    o->rank = 16;
    o->iters = 5;
    o->scaling = 1.0f;
    rq_rsvd_opts_default(&o->svd);
}

static const char *label(const char *name) { return name && *name ? name : "(unnamed tensor)"; }

static double frobenius(const float *x, size_t n) {
    double s = 0.0;
#pragma omp parallel for reduction(+ : s) schedule(static)
    for (size_t i = 0; i < n; i++) s += (double)x[i] * x[i];
    return sqrt(s);
}

rq_status rq_loftq_init(const float *w, int out, int in, const rq_loftq_opts *opts, const char *name,
                        rq_q2_tensor **q, float *A, float *B, double *history, rq_loftq_report *report,
                        rq_err *err) {
    *q = NULL;
    if (out <= 0 || in <= 0)
        return RQ_FAIL(err, RQ_ERR_ARG, "LoftQ init of %s: shape [%d][%d] has no weights", label(name), out, in);
    if (opts->rank <= 0 || opts->iters <= 0)
        return RQ_FAIL(err, RQ_ERR_ARG, "LoftQ init of %s: rank %d and iterations %d must be at least 1", label(name),
                       opts->rank, opts->iters);
    if (!(opts->scaling > 0.0f) || !isfinite(opts->scaling))
        return RQ_FAIL(err, RQ_ERR_ARG, "LoftQ init of %s: LoRA scaling %g must be positive (alpha / r)",
                       label(name), opts->scaling);
    const int r = opts->rank;
    const size_t n = (size_t)out * (size_t)in;

    rq_q2_tensor *cur = NULL, *best = NULL;
    float *target = rq_alloc_aligned(n * sizeof(float), err); /* W - s B A, then the error E */
    float *deq = rq_alloc_aligned(n * sizeof(float), err);
    float *U = rq_alloc_aligned((size_t)out * r * sizeof(float), err);
    float *S = rq_alloc_aligned((size_t)r * sizeof(float), err);
    float *Vt = rq_alloc_aligned((size_t)r * in * sizeof(float), err);
    float *bestA = rq_alloc_aligned((size_t)r * in * sizeof(float), err);
    float *bestB = rq_alloc_aligned((size_t)out * r * sizeof(float), err);
    rq_status st = RQ_OK;
    if (!target || !deq || !U || !S || !Vt || !bestA || !bestB) {
        st = err ? err->code : RQ_ERR_NOMEM;
        goto done;
    }
    st = rq_q2_create(out, in, opts->quant.group_size, rq_quant_method_codebook(opts->quant.method), &cur, err);
    if (st == RQ_OK) st = rq_q2_create(out, in, opts->quant.group_size, cur->kind, &best, err);
    if (st != RQ_OK) goto done;

    double best_err = INFINITY;
    int best_iter = 0;
    double plain_err = 0.0;
    memcpy(target, w, n * sizeof(float));
    for (int t = 1; t <= opts->iters; t++) {
        /* Q_t = dequant(quant(W - s B A)); E = W - Q_t */
        st = rq_quantize_into(cur, target, &opts->quant, name, err);
        if (st != RQ_OK) goto done;
        rq_q2_dequant(cur, deq, opts->quant.n_threads);
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) target[i] = w[i] - deq[i];
        if (t == 1) plain_err = frobenius(target, n);

        /* E ~ U S Vt; B = U sqrt(S / s), A = sqrt(S / s) Vt so that s B A = U S Vt */
        rq_rsvd_opts svd = opts->svd;
        svd.seed += (uint64_t)t; /* a fresh test matrix each round */
        st = rq_svd_top_r(target, out, in, r, &svd, U, S, Vt, err);
        if (st != RQ_OK) {
            rq_err_prefix(err, "LoftQ init of %s, iteration %d: ", label(name), t);
            goto done;
        }
        for (int j = 0; j < r; j++) {
            float root = sqrtf(S[j] / opts->scaling);
            for (int i = 0; i < out; i++) B[(size_t)i * r + j] = U[(size_t)i * r + j] * root;
            for (int i = 0; i < in; i++) A[(size_t)j * in + i] = Vt[(size_t)j * in + i] * root;
        }

        /* target <- E - s B A: the residual the adapter leaves, then W - s B A
         * for the next round as residual + Q_t. */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, out, in, r, -opts->scaling, B, r, A, in, 1.0f,
                    target, in);
        double e = frobenius(target, n);
        if (history) history[t - 1] = e;
        if (e < best_err) {
            best_err = e;
            best_iter = t;
            memcpy(best->codes, cur->codes, (size_t)out * cur->row_bytes);
            memcpy(best->scales, cur->scales, (size_t)out * cur->n_groups * sizeof(uint16_t));
            memcpy(best->offsets, cur->offsets, (size_t)out * cur->n_groups * sizeof(uint16_t));
            memcpy(bestA, A, (size_t)r * in * sizeof(float));
            memcpy(bestB, B, (size_t)out * r * sizeof(float));
        }
        if (t < opts->iters) {
#pragma omp parallel for schedule(static)
            for (size_t i = 0; i < n; i++) target[i] += deq[i];
        }
    }
    memcpy(A, bestA, (size_t)r * in * sizeof(float));
    memcpy(B, bestB, (size_t)out * r * sizeof(float));
    if (report) {
        report->weight_norm = frobenius(w, n);
        report->plain_error = plain_err;
        report->final_error = best_err;
        report->best_iter = best_iter;
    }
    *q = best;
    best = NULL;

done:
    rq_q2_free(cur);
    rq_q2_free(best);
    free(target);
    free(deq);
    free(U);
    free(S);
    free(Vt);
    free(bestA);
    free(bestB);
    return st;
}
