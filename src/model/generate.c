/* Generation loop: prefill the prompt once, then one token at a time from the
 * KV cache (or, for tests, recomputing the whole sequence every step). */
#include <math.h>
#include <stdlib.h>

#include "forward.h"
#include "generate.h"

typedef struct prob_index {
    float p;
    int id;
} prob_index;

static int by_prob_desc(const void *a, const void *b) {
    float pa = ((const prob_index *)a)->p, pb = ((const prob_index *)b)->p;
    return (pa < pb) - (pa > pb);
}

int rq_sample_token(const float *logits, int V, float temperature, float top_p, rq_rng *rng) {
    int best = 0;
    for (int v = 1; v < V; v++)
        if (logits[v] > logits[best]) best = v; /* ties: the first index, like argmax */
    if (temperature <= 0.0f || !rng) return best;
    prob_index *pi = malloc(sizeof *pi * (size_t)V);
    if (!pi) return best;
    double sum = 0.0;
    for (int v = 0; v < V; v++) {
        pi[v].p = expf((logits[v] - logits[best]) / temperature);
        pi[v].id = v;
        sum += pi[v].p;
    }
    int n = V;
    if (top_p > 0.0f && top_p < 1.0f) {
        qsort(pi, (size_t)V, sizeof *pi, by_prob_desc);
        double cum = 0.0;
        for (n = 0; n < V; n++) {
            cum += pi[n].p / sum;
            if (cum >= top_p) {
                n++;
                break;
            }
        }
        if (n > V) n = V;
        sum = 0.0;
        for (int i = 0; i < n; i++) sum += pi[i].p;
    }
    double r = rq_rng_uniform(rng) * sum, cum = 0.0;
    int pick = pi[n - 1].id;
    for (int i = 0; i < n; i++) {
        cum += pi[i].p;
        if (r < cum) {
            pick = pi[i].id;
            break;
        }
    }
    free(pi);
    return pick;
}

rq_status rq_generate(const rq_model *m, rq_backend *be, const int *prompt, int n_prompt, const rq_sample_opts *o,
                      const int *stop_ids, int n_stop, rq_token_fn on_token, void *user, int **out, int *n_out,
                      rq_err *err) {
    if (out) *out = NULL;
    if (n_out) *n_out = 0;
    if (n_prompt <= 0) return RQ_FAIL(err, RQ_ERR_ARG, "generate: the prompt is empty (it needs at least one token)");
    int total = n_prompt + (o->max_new > 0 ? o->max_new : 0);
    if (total > m->cfg.max_seq_len) total = m->cfg.max_seq_len;
    if (n_prompt >= total)
        return RQ_FAIL(err, RQ_ERR_ARG, "generate: the prompt has %d tokens; the model's context is %d", n_prompt,
                       m->cfg.max_seq_len);
    const int V = m->cfg.vocab_size;
    rq_forward_opts fo = {.max_batch = 1, .max_seq = total, .kv_cache = !o->no_cache, .decode = true};
    rq_forward_state *fs = NULL;
    RQ_TRY(rq_forward_create(m, be, &fo, &fs, err));
    int *seq = rq_calloc((size_t)total, sizeof(int), err);
    float *logits = rq_calloc((size_t)V, sizeof(float), err);
    rq_status st = (seq && logits) ? RQ_OK : RQ_ERR_NOMEM;
    rq_rng rng;
    rq_rng_seed(&rng, o->seed);
    if (seq) memcpy(seq, prompt, sizeof(int) * (size_t)n_prompt);
    int len = n_prompt, n_new = 0;
    int pos = 0; /* tokens already in the cache */
    while (st == RQ_OK && len < total) {
        if (o->no_cache) {
            st = rq_forward_run(fs, seq, 1, len, 0, err);
        } else {
            st = rq_forward_run(fs, seq + pos, 1, len - pos, pos, err);
        }
        if (st != RQ_OK) break;
        int last_row = o->no_cache ? len - 1 : len - pos - 1;
        st = rq_forward_logits(fs, &last_row, 1, logits, err);
        for (int v = 0; st == RQ_OK && v < V; v++)
            if (!isfinite(logits[v]))
                st = RQ_FAIL(err, RQ_ERR_NUMERIC, "generate: the logits are not finite (%g at token %d): the model holds "
                             "NaN/Inf weights or adapters", logits[v], v);
        if (st != RQ_OK) break;
        pos = len;
        int next = rq_sample_token(logits, V, o->temperature, o->top_p, &rng);
        seq[len++] = next;
        n_new++;
        bool stop = false;
        for (int i = 0; i < n_stop; i++) stop |= next == stop_ids[i];
        if (on_token && !on_token(user, next)) stop = true;
        if (stop) break;
    }
    rq_forward_free(fs);
    if (st == RQ_OK && out) {
        *out = rq_calloc((size_t)(n_new ? n_new : 1), sizeof(int), err);
        if (!*out) st = RQ_ERR_NOMEM;
        else memcpy(*out, seq + n_prompt, sizeof(int) * (size_t)n_new);
    }
    if (st == RQ_OK && n_out) *n_out = n_new;
    free(seq);
    free(logits);
    return st;
}
