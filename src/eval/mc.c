/* Multiple-choice log-likelihood scoring (see mc.h for the protocol). */
#include <math.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>

#include "../model/bind.h"
#include "../model/forward.h"
#include "mc.h"

/* Rows of logits computed at once: bounds the host buffer to ROWS x vocab. */
#define LOGIT_ROWS 32

struct rq_mc_scorer {
    const rq_model *m;
    rq_backend *be;
    rq_mc_opts o;
    int max_length;
    rq_forward_state *fs;
    int cap_batch, cap_seq;
    float *logits; /* [LOGIT_ROWS][vocab] */
    rq_mc_stats stats;
};

/* One tokenized request. cont points into whole (or is whole when the context
 * was empty and became the prefix token). */
typedef struct mc_request {
    int *ctx_ids;
    int n_ctx;
    int *whole;
    int n_whole;
    const int *cont;
    int n_cont;
} mc_request;

static void request_free(mc_request *r) {
    free(r->ctx_ids);
    free(r->whole);
    memset(r, 0, sizeof *r);
}

rq_status rq_mc_scorer_create(const rq_model *m, rq_backend *be, const rq_mc_opts *o, rq_mc_scorer **out,
                              rq_err *err) {
    *out = NULL;
    if (!m->tok)
        return RQ_FAIL(err, RQ_ERR_ARG, "%s has no tokenizer: multiple-choice scoring needs one (--tokenizer PATH)",
                       m->path);
    rq_mc_scorer *s = rq_calloc(1, sizeof *s, err);
    if (!s) return RQ_ERR_NOMEM;
    s->m = m;
    s->be = be;
    s->o = *o;
    s->max_length = o->max_length > 0 ? o->max_length : m->cfg.max_seq_len;
    s->logits = rq_calloc((size_t)LOGIT_ROWS * m->cfg.vocab_size, sizeof(float), err);
    if (!s->logits) {
        free(s);
        return RQ_ERR_NOMEM;
    }
    /* the scorer's own binding keeps the weights on the backend while its forward state is re-created larger */
    rq_status st = rq_model_bind(m, be, err);
    if (st != RQ_OK) {
        free(s->logits);
        free(s);
        return st;
    }
    *out = s;
    return RQ_OK;
}

void rq_mc_scorer_free(rq_mc_scorer *s) {
    if (!s) return;
    rq_forward_free(s->fs);
    rq_model_unbind(s->m, s->be);
    free(s->logits);
    free(s);
}

const rq_mc_stats *rq_mc_scorer_stats(const rq_mc_scorer *s) { return &s->stats; }

/* The forward state grows to the largest batch and length seen so far (sized
 * by the data rather than the model's context: 5 choices x 8192 positions of
 * KV cache would be gigabytes for a few hundred tokens of use). */
static rq_status ensure_capacity(rq_mc_scorer *s, int batch, int seq, rq_err *err) {
    if (s->fs && batch <= s->cap_batch && seq <= s->cap_seq) return RQ_OK;
    int new_batch = batch > s->cap_batch ? batch : s->cap_batch;
    int new_seq = seq > s->cap_seq ? seq : s->cap_seq;
    new_seq = (new_seq + 63) / 64 * 64; /* fewer re-creations as documents get longer */
    if (new_seq > s->max_length && seq <= s->max_length) new_seq = s->max_length;
    rq_forward_free(s->fs);
    s->fs = NULL;
    rq_forward_opts fo = {.max_batch = new_batch, .max_seq = new_seq, .kv_cache = true};
    RQ_TRY(rq_forward_create(s->m, s->be, &fo, &s->fs, err));
    s->cap_batch = new_batch;
    s->cap_seq = new_seq;
    return RQ_OK;
}

/* Python's str.isspace for the characters our contexts could end with. */
static bool is_space(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

/* lm-eval's _encode_pair: trailing whitespace of the context moves to the
 * continuation; whole = encode(ctx + cont), cont_ids = whole[len(ctx_ids):].
 * An empty context becomes the prefix token (BOS, else EOS) and the
 * continuation is encoded alone. */
static rq_status request_prepare(const rq_mc_scorer *s, const char *context, const char *continuation,
                                 mc_request *r, rq_err *err) {
    memset(r, 0, sizeof *r);
    const rq_tokenizer *tok = s->m->tok;
    size_t ctx_len = strlen(context), cont_len = strlen(continuation);
    size_t kept = ctx_len;
    while (kept > 0 && is_space(context[kept - 1])) kept--;
    char *joined = malloc(ctx_len + cont_len + 1);
    if (!joined) return RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory for a request of %zu bytes", ctx_len + cont_len);
    memcpy(joined, context, ctx_len);
    memcpy(joined + ctx_len, continuation, cont_len + 1);
    rq_status st;
    if (kept == 0) {
        int prefix = rq_tokenizer_bos(tok) >= 0 ? rq_tokenizer_bos(tok) : rq_tokenizer_eos(tok);
        r->ctx_ids = rq_calloc(1, sizeof(int), err);
        st = r->ctx_ids ? RQ_OK : RQ_ERR_NOMEM;
        if (st == RQ_OK && prefix < 0)
            st = RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "empty context and the tokenizer has neither BOS nor EOS");
        if (st == RQ_OK) {
            r->ctx_ids[0] = prefix;
            r->n_ctx = 1;
            st = rq_tokenizer_encode(tok, joined, ctx_len + cont_len, s->o.bos, &r->whole, &r->n_whole, err);
        }
        if (st == RQ_OK) {
            r->cont = r->whole;
            r->n_cont = r->n_whole;
        }
    } else {
        st = rq_tokenizer_encode(tok, joined, ctx_len + cont_len, s->o.bos, &r->whole, &r->n_whole, err);
        if (st == RQ_OK) st = rq_tokenizer_encode(tok, context, kept, s->o.bos, &r->ctx_ids, &r->n_ctx, err);
        if (st == RQ_OK) {
            r->cont = r->whole + (r->n_whole > r->n_ctx ? r->n_ctx : r->n_whole);
            r->n_cont = r->n_whole - r->n_ctx;
        }
    }
    free(joined);
    if (st == RQ_OK && r->n_cont <= 0)
        st = RQ_FAIL(err, RQ_ERR_FORMAT, "continuation '%.60s' adds no tokens to its context '%.60s'", continuation,
                     context);
    if (st != RQ_OK) request_free(r);
    return st;
}

/* log_softmax(logits)[target] with the log-sum-exp in fp32, and whether target
 * is the (first) argmax. */
static double token_logprob(const float *logits, int V, int target, bool *greedy) {
    int best = 0;
    for (int v = 1; v < V; v++)
        if (logits[v] > logits[best]) best = v;
    const float mx = logits[best];
    float sum = 0.0f;
    for (int v = 0; v < V; v++) sum += expf(logits[v] - mx);
    *greedy = best == target;
    return (double)(logits[target] - (mx + logf(sum)));
}

/* After a run: row rows[i] of the flattened [B*T] positions predicts
 * targets[i]; its log-probability adds into ll[owner[i]]. */
static rq_status score_rows(rq_mc_scorer *s, const int *rows, const int *targets, const int *owner, int n,
                            double *ll, bool *greedy, rq_err *err) {
    const int V = s->m->cfg.vocab_size;
    for (int r0 = 0; r0 < n; r0 += LOGIT_ROWS) {
        int cnt = n - r0 < LOGIT_ROWS ? n - r0 : LOGIT_ROWS;
        RQ_TRY(rq_forward_logits(s->fs, rows + r0, cnt, s->logits, err));
        for (int i = 0; i < cnt; i++) {
            bool g;
            double lp = token_logprob(s->logits + (size_t)i * V, V, targets[r0 + i], &g);
            if (!isfinite(lp))
                return RQ_FAIL(err, RQ_ERR_NUMERIC, "the model's logits are not finite (log-probability %g): it holds "
                               "NaN/Inf weights or adapters; refusing to score it", lp);
            ll[owner[r0 + i]] += lp;
            greedy[owner[r0 + i]] &= g;
        }
    }
    return RQ_OK;
}

typedef struct row_list {
    int *rows, *targets, *owner;
    int n;
} row_list;

static rq_status row_list_alloc(row_list *l, int cap, rq_err *err) {
    l->n = 0;
    l->rows = rq_calloc((size_t)cap, sizeof(int), err);
    l->targets = rq_calloc((size_t)cap, sizeof(int), err);
    l->owner = rq_calloc((size_t)cap, sizeof(int), err);
    return l->rows && l->targets && l->owner ? RQ_OK : RQ_ERR_NOMEM;
}

static void row_list_free(row_list *l) {
    free(l->rows);
    free(l->targets);
    free(l->owner);
}

static void row_push(row_list *l, int row, int target, int owner) {
    l->rows[l->n] = row;
    l->targets[l->n] = target;
    l->owner[l->n] = owner;
    l->n++;
}

/* Requests scored independently from position 0, as one batch padded at the
 * end: input = (ctx_ids + cont_ids)[-(max_length+1):][:-1]. */
static rq_status score_independent(rq_mc_scorer *s, const mc_request *req, int n, double *ll, bool *greedy,
                                   rq_err *err) {
    int T = 0, total_cont = 0;
    for (int b = 0; b < n; b++) {
        int full = req[b].n_ctx + req[b].n_cont;
        int keep = full < s->max_length + 1 ? full : s->max_length + 1;
        if (req[b].n_cont > keep - 1)
            return RQ_FAIL(err, RQ_ERR_ARG, "a continuation of %d tokens does not fit the model context of %d",
                           req[b].n_cont, s->max_length);
        if (keep - 1 > T) T = keep - 1;
        total_cont += req[b].n_cont;
    }
    RQ_TRY(ensure_capacity(s, n, T, err));
    int *tokens = rq_calloc((size_t)n * T, sizeof(int), err);
    row_list rl;
    rq_status st = tokens ? row_list_alloc(&rl, total_cont, err) : RQ_ERR_NOMEM;
    if (st != RQ_OK) {
        free(tokens);
        return st;
    }
    for (int b = 0; b < n; b++) {
        const mc_request *r = &req[b];
        int full = r->n_ctx + r->n_cont;
        int keep = full < s->max_length + 1 ? full : s->max_length + 1;
        int skip = full - keep, n_in = keep - 1;
        int *row = tokens + (size_t)b * T;
        for (int i = 0; i < n_in; i++) {
            int p = skip + i;
            row[i] = p < r->n_ctx ? r->ctx_ids[p] : r->cont[p - r->n_ctx];
        }
        for (int i = n_in; i < T; i++) row[i] = row[n_in - 1]; /* end padding: never seen by real positions */
        for (int j = 0; j < r->n_cont; j++) row_push(&rl, b * T + n_in - r->n_cont + j, r->cont[j], b);
        ll[b] = 0.0;
        greedy[b] = true;
        s->stats.positions_useful += n_in;
        s->stats.positions_naive += n_in;
    }
    st = rq_forward_run(s->fs, tokens, n, T, 0, err);
    if (st == RQ_OK) st = score_rows(s, rl.rows, rl.targets, rl.owner, rl.n, ll, greedy, err);
    s->stats.positions_run += (int64_t)n * T;
    s->stats.requests += n;
    free(tokens);
    row_list_free(&rl);
    return st;
}

/* Requests sharing one context: the context once, then the forked cache
 * continues every choice in one batch at pos0 = len(ctx_ids). */
static rq_status score_shared(rq_mc_scorer *s, const mc_request *req, int n, double *ll, bool *greedy,
                              rq_err *err) {
    const int n_ctx = req[0].n_ctx;
    int tail = 0, total_cont = 0; /* tail: the longest cont_ids[:-1] */
    for (int b = 0; b < n; b++) {
        /* truncation would cut each request's context differently: no sharing then */
        if (n_ctx + req[b].n_cont > s->max_length + 1) {
            s->stats.unshared_docs++;
            return score_independent(s, req, n, ll, greedy, err);
        }
        if (req[b].n_cont - 1 > tail) tail = req[b].n_cont - 1;
        total_cont += req[b].n_cont;
    }
    RQ_TRY(ensure_capacity(s, n, n_ctx + tail, err));
    int *tokens = rq_calloc((size_t)n * (tail > 0 ? tail : 1), sizeof(int), err);
    row_list rl;
    rq_status st = tokens ? row_list_alloc(&rl, total_cont, err) : RQ_ERR_NOMEM;
    if (st != RQ_OK) {
        free(tokens);
        return st;
    }
    for (int b = 0; b < n; b++) {
        ll[b] = 0.0;
        greedy[b] = true;
        row_push(&rl, n_ctx - 1, req[b].cont[0], b); /* the context's last position predicts every first token */
        s->stats.positions_naive += n_ctx + req[b].n_cont - 1;
        s->stats.positions_useful += req[b].n_cont - 1;
    }
    st = rq_forward_run(s->fs, req[0].ctx_ids, 1, n_ctx, 0, err);
    if (st == RQ_OK) st = score_rows(s, rl.rows, rl.targets, rl.owner, rl.n, ll, greedy, err);
    s->stats.positions_run += n_ctx;
    s->stats.positions_useful += n_ctx;
    if (st == RQ_OK && tail > 0) {
        rl.n = 0;
        for (int b = 0; b < n; b++) {
            const mc_request *r = &req[b];
            int *row = tokens + (size_t)b * tail;
            for (int j = 0; j < r->n_cont - 1; j++) {
                row[j] = r->cont[j];
                row_push(&rl, b * tail + j, r->cont[j + 1], b);
            }
            for (int j = r->n_cont - 1; j < tail; j++) row[j] = r->cont[0]; /* end padding */
        }
        st = rq_forward_cache_fork(s->fs, n_ctx, n, err);
        if (st == RQ_OK) st = rq_forward_run(s->fs, tokens, n, tail, n_ctx, err);
        if (st == RQ_OK) st = score_rows(s, rl.rows, rl.targets, rl.owner, rl.n, ll, greedy, err);
        s->stats.positions_run += (int64_t)n * tail;
    }
    s->stats.requests += n;
    free(tokens);
    row_list_free(&rl);
    return st;
}

rq_status rq_mc_loglikelihood(rq_mc_scorer *s, const char *context, const char *continuation, double *ll,
                              bool *is_greedy, rq_err *err) {
    mc_request r;
    RQ_TRY(request_prepare(s, context, continuation, &r, err));
    bool greedy;
    rq_status st = score_independent(s, &r, 1, ll, &greedy, err);
    if (is_greedy) *is_greedy = greedy;
    request_free(&r);
    return st;
}

rq_status rq_mc_score_doc(rq_mc_scorer *s, const rq_mc_doc *doc, double *ll, bool *is_greedy, rq_err *err) {
    const size_t n = doc->n_choices;
    if (n == 0 || n > INT32_MAX / 2) return RQ_FAIL(err, RQ_ERR_ARG, "document with %zu choices", n);
    mc_request *req = rq_calloc(n, sizeof *req, err);
    bool *greedy = rq_calloc(n, sizeof *greedy, err);
    rq_status st = req && greedy ? RQ_OK : RQ_ERR_NOMEM;
    for (size_t i = 0; st == RQ_OK && i < n; i++)
        st = request_prepare(s, rq_mc_doc_context(doc, i), rq_mc_doc_continuation(doc, i), &req[i], err);
    if (st == RQ_OK) {
        if (s->o.naive) {
            for (size_t i = 0; st == RQ_OK && i < n; i++) st = score_independent(s, &req[i], 1, &ll[i], &greedy[i], err);
        } else if (doc->n_contexts == 1) {
            st = score_shared(s, req, (int)n, ll, greedy, err);
        } else {
            st = score_independent(s, req, (int)n, ll, greedy, err);
        }
    }
    if (st == RQ_OK && is_greedy) memcpy(is_greedy, greedy, n * sizeof *greedy);
    for (size_t i = 0; req && i < n; i++) request_free(&req[i]);
    free(req);
    free(greedy);
    return st;
}

/* ---- metrics ---------------------------------------------------------------- */

size_t rq_argmax_first(const double *v, size_t n) {
    size_t best = 0;
    for (size_t i = 1; i < n; i++)
        if (v[i] > v[best]) best = i; /* strictly greater: a tie keeps the first */
    return best;
}

void rq_mc_predict(const rq_mc_doc *doc, const double *ll, size_t *pred, size_t *pred_norm) {
    const size_t n = doc->n_choices;
    *pred = rq_argmax_first(ll, n);
    *pred_norm = SIZE_MAX;
    if (!doc->choice_texts) return;
    /* argmax of ll_i / len_i; done inline to avoid a buffer (same tie rule) */
    size_t best = 0;
    double best_v = 0.0;
    for (size_t i = 0; i < n; i++) {
        double v = ll[i] / (double)rq_utf8_length(doc->choice_texts[i]);
        if (i == 0 || v > best_v) {
            best = i;
            best_v = v;
        }
    }
    *pred_norm = best;
}

void rq_mean_stderr(const double *x, size_t n, double *mean, double *stderr_of_mean) {
    double sum = 0.0;
    for (size_t i = 0; i < n; i++) sum += x[i];
    double mu = n ? sum / (double)n : NAN;
    *mean = mu;
    if (n < 2) {
        *stderr_of_mean = NAN;
        return;
    }
    double ss = 0.0;
    for (size_t i = 0; i < n; i++) ss += (x[i] - mu) * (x[i] - mu);
    *stderr_of_mean = sqrt(ss / (double)(n - 1)) / sqrt((double)n);
}

static bool has_text(const char *s) {
    if (!s) return false;
    for (; *s; s++)
        if (!is_space(*s)) return true;
    return false;
}

rq_status rq_mc_doc_check(const rq_mc_doc *doc, const char *where, rq_err *err) {
    if (doc->n_choices < 2)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s, line %zu: %zu choice(s); multiple choice needs at least 2", where,
                       doc->source_line, doc->n_choices);
    if (doc->gold >= doc->n_choices)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s, line %zu: gold label %zu is out of range (the document has %zu choices)",
                       where, doc->source_line, doc->gold, doc->n_choices);
    for (size_t i = 0; i < doc->n_choices; i++) {
        if (!rq_mc_doc_context(doc, i))
            return RQ_FAIL(err, RQ_ERR_FORMAT, "%s, line %zu: choice %zu has no context", where, doc->source_line, i);
        if (!has_text(rq_mc_doc_continuation(doc, i)) || (doc->choice_texts && !has_text(doc->choice_texts[i])))
            return RQ_FAIL(err, RQ_ERR_FORMAT, "%s, line %zu: choice %zu is empty (acc_norm would divide by zero length)",
                           where, doc->source_line, i);
    }
    return RQ_OK;
}

/* ---- a whole task ------------------------------------------------------------- */

void rq_mc_result_free(rq_mc_result *r) {
    if (!r) return;
    for (size_t i = 0; r->records && i < r->n_docs; i++) {
        free(r->records[i].ll);
        free(r->records[i].is_greedy);
    }
    free(r->records);
    r->records = NULL;
}

rq_status rq_mc_evaluate(rq_mc_scorer *s, const rq_mc_task *task, size_t limit, bool keep_records, bool quiet,
                         rq_mc_result *r, rq_err *err) {
    memset(r, 0, sizeof *r);
    const char *name = rq_task_name(task->id) ? rq_task_name(task->id) : "task";
    size_t n = limit && limit < task->n_docs ? limit : task->n_docs;
    r->n_docs_total = task->n_docs;
    if (n == 0) return RQ_FAIL(err, RQ_ERR_ARG, "%s: no documents to evaluate", name);
    /* check every document first: a bad label found after an hour of scoring helps nobody */
    for (size_t d = 0; d < n; d++) {
        rq_status st = rq_mc_doc_check(&task->docs[d], name, err);
        if (st != RQ_OK) return st;
    }
    size_t max_choices = 0;
    for (size_t d = 0; d < n; d++)
        if (task->docs[d].n_choices > max_choices) max_choices = task->docs[d].n_choices;
    double *acc = rq_calloc(n, sizeof(double), err);
    double *acc_norm = rq_calloc(n, sizeof(double), err);
    double *ll = rq_calloc(max_choices, sizeof(double), err);
    bool *greedy = rq_calloc(max_choices, sizeof(bool), err);
    rq_status st = acc && acc_norm && ll && greedy ? RQ_OK : RQ_ERR_NOMEM;
    if (st == RQ_OK && keep_records) {
        r->records = rq_calloc(n, sizeof *r->records, err);
        if (!r->records) st = RQ_ERR_NOMEM;
    }
    r->has_acc_norm = task->docs[0].choice_texts != NULL;
    rq_progress prog;
    rq_progress_init(&prog, name, (int64_t)n);
    const double t0 = rq_now_seconds();
    const int64_t requests0 = s->stats.requests;
    double correct = 0.0;
    for (size_t d = 0; st == RQ_OK && d < n; d++) {
        const rq_mc_doc *doc = &task->docs[d];
        st = rq_mc_score_doc(s, doc, ll, greedy, err);
        if (st != RQ_OK) {
            rq_err_prefix(err, "%s document %zu (line %zu): ", name, d + 1, doc->source_line);
            break;
        }
        size_t pred, pred_norm;
        rq_mc_predict(doc, ll, &pred, &pred_norm);
        acc[d] = pred == doc->gold;
        acc_norm[d] = pred_norm == doc->gold;
        correct += acc[d];
        if (r->records) {
            rq_mc_doc_record *rec = &r->records[d];
            *rec = (rq_mc_doc_record){.doc_index = d, .source_line = doc->source_line, .gold = doc->gold,
                                      .pred = pred, .pred_norm = pred_norm, .n_choices = doc->n_choices};
            rec->ll = rq_calloc(doc->n_choices, sizeof(double), err);
            rec->is_greedy = rq_calloc(doc->n_choices, sizeof(bool), err);
            if (!rec->ll || !rec->is_greedy) {
                st = RQ_ERR_NOMEM;
                break;
            }
            memcpy(rec->ll, ll, doc->n_choices * sizeof(double));
            memcpy(rec->is_greedy, greedy, doc->n_choices * sizeof(bool));
        }
        r->n_docs = d + 1;
        if (!quiet) {
            char extra[64];
            snprintf(extra, sizeof extra, "acc %.4f", correct / (double)(d + 1));
            rq_progress_update(&prog, (int64_t)(d + 1), "docs", extra);
        }
    }
    if (st == RQ_OK) {
        if (!quiet) rq_progress_finish(&prog, (int64_t)n, "docs");
        rq_mean_stderr(acc, n, &r->acc, &r->acc_stderr);
        rq_mean_stderr(acc_norm, n, &r->acc_norm, &r->acc_norm_stderr);
        if (!r->has_acc_norm) r->acc_norm = r->acc_norm_stderr = NAN;
        r->requests = s->stats.requests - requests0;
        r->seconds = rq_now_seconds() - t0;
    } else if (r->records) {
        for (size_t i = 0; i < n; i++) {
            free(r->records[i].ll);
            free(r->records[i].is_greedy);
        }
        free(r->records);
        r->records = NULL;
    }
    free(acc);
    free(acc_norm);
    free(ll);
    free(greedy);
    return st;
}
