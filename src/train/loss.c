/* Cross-entropy and MSE losses over backend ops. See loss.h. */
#include "loss.h"

#include <stdlib.h>

rq_status rq_loss_count_targets(const int *targets, size_t n, int vocab, int64_t *count, rq_err *err) {
    int64_t c = 0;
    for (size_t i = 0; i < n; i++) {
        if (targets[i] >= vocab)
            return RQ_FAIL(err, RQ_ERR_ARG, "target token %d at position %zu is outside the vocabulary (%d)",
                           targets[i], i, vocab);
        c += targets[i] >= 0;
    }
    *count = c;
    return RQ_OK;
}

rq_status rq_loss_cross_entropy(rq_backend *be, const float *logits, const int *targets, int N, int V,
                                int64_t denom, double weight, float *dlogits, float *row_loss, double *loss_sum,
                                rq_err *err) {
    *loss_sum = 0.0;
    if (denom < 1) return RQ_FAIL(err, RQ_ERR_ARG, "cross-entropy over %lld counted tokens: need at least one",
                                  (long long)denom);
    if (N <= 0) return RQ_OK;
    be->cross_entropy(be, row_loss, dlogits, logits, targets, N, V, (float)(weight / (double)denom));
    float *host = malloc(sizeof(float) * (size_t)N);
    if (!host) return RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory for %d row losses", N);
    rq_status st = be->download(be, host, row_loss, sizeof(float) * (size_t)N, err);
    double sum = 0.0;
    for (int n = 0; n < N; n++) sum += host[n];
    free(host);
    *loss_sum = sum;
    return st;
}

rq_status rq_loss_mse(rq_backend *be, const float *a, const float *b, size_t n, size_t denom, double weight,
                      float *d, double *sq_sum, rq_err *err) {
    *sq_sum = 0.0;
    if (denom < 1) return RQ_FAIL(err, RQ_ERR_ARG, "MSE over %zu elements: need at least one", denom);
    *sq_sum = be->mse(be, d, a, b, n, (float)(weight / (double)denom));
    return RQ_OK;
}

double rq_loss_weighted_sum(const double *losses, const double *weights, int n) {
    double s = 0.0;
    for (int i = 0; i < n; i++) s += weights[i] * losses[i];
    return s;
}
