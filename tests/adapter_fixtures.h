/* Random adapters for tests that need a non-trivial merge (test_merge.c, the
 * interop tests). */
#ifndef RQ_TEST_ADAPTER_FIXTURES_H
#define RQ_TEST_ADAPTER_FIXTURES_H

#include "test.h"

#include "adapter/adapter.h"

/* Adapters on all seven projections with random non-zero A and B: A ~ U(-1, 1),
 * B ~ U(-b, b). b sets the size of the update relative to the weights. */
static rq_adapter_set *rq_test_random_adapters(const rq_model *m, rq_backend *be, rq_rng *rng, rq_adapter_type type,
                                               int r, int gs, float b) {
    rq_err err = {0};
    rq_adapter_config ac = {.type = type, .r = r, .alpha = 16.0f, .group_size = gs, .targets = RQ_ADAPTER_ALL_PROJ,
                            .init = RQ_INIT_ZERO, .seed = 1};
    rq_adapter_set *s = NULL;
    CHECK_OK(rq_adapter_set_create(&m->cfg, &ac, be, &s, &err), &err);
    if (!s) return NULL;
    float *host = calloc(s->n_params, sizeof(float));
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int p = 0; p < RQ_N_PROJ; p++) {
            rq_adapter *a = rq_adapter_set_get(s, l, p);
            float *A = host + (a->A - s->params), *B = host + (a->B - s->params);
            for (size_t i = 0; i < (size_t)a->r * a->a_cols; i++) A[i] = 2.0f * rq_rng_uniform(rng) - 1.0f;
            for (size_t i = 0; i < (size_t)a->out * a->r; i++) B[i] = b * (2.0f * rq_rng_uniform(rng) - 1.0f);
        }
    CHECK_OK(be->upload(be, s->params, host, sizeof(float) * s->n_params, &err), &err);
    free(host);
    return s;
}

/* B's range giving updates of a fine-tuning size: |s (BA)[o][g] / len(g)| ~ k
 * in weight units (k = 0.01 ~ 0.1 of a quantization step of these models):
 * s = 16 / r, |BA| ~ sqrt(r) |A| |B| with E|U(-1,1)| = 1/2 each. */
static inline float rq_test_b_range(float k, int r, int gs) { return k * 4.0f * (float)gs * sqrtf((float)r) / 16.0f; }

#endif
