/* Greedy generation through the decode kernels or the GEMM path, for the
 * decode tests (test_decode*.c): the same rq_generate, with the backend's
 * linear_rows op taken away for the GEMM path. */
#ifndef RQ_TEST_DECODE_COMMON_H
#define RQ_TEST_DECODE_COMMON_H

#include "model/generate.h"
#include "test.h"

/* n_new greedy tokens after prompt[n_prompt]; *n_out of them came. */
static int *generate_greedy(const rq_model *m, rq_backend *be, const int *prompt, int n_prompt, int n_new,
                            bool kernels, int *n_out) {
    rq_err err = {0};
    void (*linear_rows)(rq_backend *, float *, const float *, const rq_linear *, int, bool) = be->linear_rows;
    if (!kernels) be->linear_rows = NULL;
    rq_sample_opts o = {.max_new = n_new};
    int *out = NULL;
    *n_out = 0;
    CHECK_OK(rq_generate(m, be, prompt, n_prompt, &o, NULL, 0, NULL, NULL, &out, n_out, &err), &err);
    be->linear_rows = linear_rows;
    return out;
}

#endif
