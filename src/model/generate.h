/* Text generation: greedy or temperature / top-p sampling with a KV cache. */
#ifndef RQ_GENERATE_H
#define RQ_GENERATE_H

#include "../backend/backend.h"
#include "model.h"

typedef struct rq_sample_opts {
    int max_new;       /* new tokens at most */
    float temperature; /* 0: greedy (argmax) */
    float top_p;       /* nucleus sampling mass in (0, 1]; 1 = off */
    uint64_t seed;
    bool no_cache;     /* recompute the whole sequence every step (slow; for tests) */
} rq_sample_opts;

/* Called with each new token; return false to stop. */
typedef bool (*rq_token_fn)(void *user, int id);

/* Generate after prompt[n_prompt]; stops at max_new, at any id in stop_ids, or
 * when on_token returns false. The generated ids (stop id included) go to
 * *out (malloc'ed) and *n_out. on_token and out may be NULL. */
rq_status rq_generate(const rq_model *m, rq_backend *be, const int *prompt, int n_prompt, const rq_sample_opts *o,
                      const int *stop_ids, int n_stop, rq_token_fn on_token, void *user, int **out, int *n_out,
                      rq_err *err);

/* Pick the next token from logits[V] (greedy when temperature == 0). Uses the
 * scratch buffers inside; rng may be NULL for greedy. */
int rq_sample_token(const float *logits, int V, float temperature, float top_p, rq_rng *rng);

#endif
