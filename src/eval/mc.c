/* Multiple-choice log-likelihood scoring (see mc.h for the protocol). */
#include <math.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>

#include "../model/bind.h"
#include "../model/forward.h"
#include "mc.h"

/* Rows of logits computed at once: bounds the host buffer to ROWS x vocab
 * (SmolLM2: 48 MiB). Each head GEMM packs the whole [vocab][dim] head, so more
 * rows per call amortize it; the packed state's head GEMMs take as many. */
#define LOGIT_ROWS 256

struct rq_mc_scorer {
    const rq_model *m;
    rq_backend *be;
    rq_mc_opts o;
    int max_length;
    rq_forward_state *fs;
    int cap_batch, cap_seq;
    rq_forward_state *packed; /* packed runs: max_batch 1, cap_rows rows (rq_forward_run_packed) */
    int cap_rows;
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
    rq_forward_free(s->packed);
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

/* A row's log-softmax normalizer (the log-sum-exp in fp32) and its first argmax. */
static void row_lse(const float *logits, int V, float *lse, int *argmax) {
    int best = 0;
    for (int v = 1; v < V; v++)
        if (logits[v] > logits[best]) best = v;
    const float mx = logits[best];
    float sum = 0.0f;
    for (int v = 0; v < V; v++) sum += expf(logits[v] - mx);
    *lse = mx + logf(sum);
    *argmax = best;
}

static int cmp_i64(const void *a, const void *b) {
    const int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* After a run of fs: row rows[i] of the flattened [B*T] positions predicts
 * targets[i]; its log-probability, log_softmax(logits)[target], adds into
 * ll[owner[i]] in the order of i. A row listed several times (a context's last
 * position predicts every choice's first token) goes through the head once;
 * the rows' normalizers run in parallel, the fp64 sums do not. */
static rq_status score_rows(rq_mc_scorer *s, rq_forward_state *fs, const int *rows, const int *targets,
                            const int *owner, int n, double *ll, bool *greedy, rq_err *err) {
    if (n <= 0) return RQ_OK;
    const int V = s->m->cfg.vocab_size;
    int64_t *order = rq_calloc((size_t)n, sizeof(int64_t), err); /* (row << 32) | entry, sorted */
    int *uniq = rq_calloc((size_t)n, sizeof(int), err);
    double *lps = rq_calloc((size_t)n, sizeof(double), err);
    bool *gs = rq_calloc((size_t)n, sizeof(bool), err);
    rq_status st = order && uniq && lps && gs ? RQ_OK : RQ_ERR_NOMEM;
    int n_uniq = 0;
    if (st == RQ_OK) { /* entries sorted by row, then the distinct rows */
        for (int i = 0; i < n; i++) order[i] = (int64_t)rows[i] << 32 | (int64_t)i; /* rows are >= 0 */
        qsort(order, (size_t)n, sizeof *order, cmp_i64);
        for (int i = 0; i < n; i++)
            if (n_uniq == 0 || uniq[n_uniq - 1] != (int)(order[i] >> 32)) uniq[n_uniq++] = (int)(order[i] >> 32);
    }
    float lse[LOGIT_ROWS];
    int best[LOGIT_ROWS];
    for (int u0 = 0, e = 0; st == RQ_OK && u0 < n_uniq; u0 += LOGIT_ROWS) {
        const int cnt = n_uniq - u0 < LOGIT_ROWS ? n_uniq - u0 : LOGIT_ROWS;
        st = rq_forward_logits(fs, uniq + u0, cnt, s->logits, err);
        if (st != RQ_OK) break;
#pragma omp parallel for schedule(static)
        for (int u = 0; u < cnt; u++) row_lse(s->logits + (size_t)u * V, V, &lse[u], &best[u]);
        for (int u = 0; u < cnt; u++) /* the entries of distinct row u0 + u */
            for (; e < n && (int)(order[e] >> 32) == uniq[u0 + u]; e++) {
                const int i = (int)(order[e] & 0xffffffff);
                lps[i] = (double)(s->logits[(size_t)u * V + targets[i]] - lse[u]);
                gs[i] = best[u] == targets[i];
            }
        s->stats.rows_scored += cnt;
    }
    for (int i = 0; st == RQ_OK && i < n; i++) {
        if (!isfinite(lps[i])) {
            st = RQ_FAIL(err, RQ_ERR_NUMERIC, "the model's logits are not finite (log-probability %g): it holds "
                         "NaN/Inf weights or adapters; refusing to score it", lps[i]);
            break;
        }
        ll[owner[i]] += lps[i];
        greedy[owner[i]] &= gs[i];
    }
    free(order);
    free(uniq);
    free(lps);
    free(gs);
    return st;
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

/* lm-eval's model input of a request, (ctx_ids + cont_ids)[-(max_length+1):][:-1]:
 * its length, and its tokens into dst when not NULL. */
static int request_input(const rq_mc_scorer *s, const mc_request *r, int *dst) {
    const int full = r->n_ctx + r->n_cont, keep = full < s->max_length + 1 ? full : s->max_length + 1;
    const int skip = full - keep;
    for (int i = 0; dst && i < keep - 1; i++) {
        int p = skip + i;
        dst[i] = p < r->n_ctx ? r->ctx_ids[p] : r->cont[p - r->n_ctx];
    }
    return keep - 1;
}

static rq_status check_fits(const rq_mc_scorer *s, const mc_request *r, rq_err *err) {
    if (r->n_cont <= request_input(s, r, NULL)) return RQ_OK;
    return RQ_FAIL(err, RQ_ERR_ARG, "a continuation of %d tokens does not fit the model context of %d", r->n_cont,
                   s->max_length);
}

/* Requests scored independently from position 0, as one batch padded at the
 * end (request_input). */
static rq_status score_independent(rq_mc_scorer *s, const mc_request *req, int n, double *ll, bool *greedy,
                                   rq_err *err) {
    int T = 0, total_cont = 0;
    for (int b = 0; b < n; b++) {
        RQ_TRY(check_fits(s, &req[b], err));
        if (request_input(s, &req[b], NULL) > T) T = request_input(s, &req[b], NULL);
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
        int *row = tokens + (size_t)b * T;
        const int n_in = request_input(s, r, row);
        for (int i = n_in; i < T; i++) row[i] = row[n_in - 1]; /* end padding: never seen by real positions */
        for (int j = 0; j < r->n_cont; j++) row_push(&rl, b * T + n_in - r->n_cont + j, r->cont[j], b);
        ll[b] = 0.0;
        greedy[b] = true;
        s->stats.positions_useful += n_in;
        s->stats.positions_naive += n_in;
    }
    st = rq_forward_run(s->fs, tokens, n, T, 0, err);
    if (st == RQ_OK) st = score_rows(s, s->fs, rl.rows, rl.targets, rl.owner, rl.n, ll, greedy, err);
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
    if (st == RQ_OK) st = score_rows(s, s->fs, rl.rows, rl.targets, rl.owner, rl.n, ll, greedy, err);
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
        if (st == RQ_OK) st = score_rows(s, s->fs, rl.rows, rl.targets, rl.owner, rl.n, ll, greedy, err);
        s->stats.positions_run += (int64_t)n * tail;
    }
    s->stats.requests += n;
    free(tokens);
    row_list_free(&rl);
    return st;
}

/* ---- many documents per forward ------------------------------------------------ */

/* The packed state grows to the largest phase seen (rounded up to 64 rows; at
 * least the batch budget, so a run usually creates it once). */
static rq_status ensure_packed(rq_mc_scorer *s, int rows, rq_err *err) {
    if (s->packed && rows <= s->cap_rows) return RQ_OK;
    int want = rows > s->o.batch_tokens ? rows : s->o.batch_tokens;
    want = (want + 63) / 64 * 64;
    rq_forward_free(s->packed);
    s->packed = NULL;
    s->cap_rows = 0;
    rq_forward_opts fo = {.max_batch = 1, .max_seq = want, .kv_cache = true, .head_rows = LOGIT_ROWS};
    RQ_TRY(rq_forward_create(s->m, s->be, &fo, &s->packed, err));
    s->cap_rows = want;
    return RQ_OK;
}

/* The rows of one phase of a packed batch: its sequences and tokens, and the
 * rows whose log-probabilities are scored. */
typedef struct mc_phase {
    int *tokens;
    rq_attn_seq *seqs;
    int n_rows, n_seqs;
    row_list rl;
} mc_phase;

static void phase_free(mc_phase *p) {
    free(p->tokens);
    free(p->seqs);
    row_list_free(&p->rl);
    memset(p, 0, sizeof *p);
}

static rq_status phase_alloc(mc_phase *p, int rows, int seqs, int scored, rq_err *err) {
    memset(p, 0, sizeof *p);
    p->tokens = rq_calloc((size_t)(rows > 0 ? rows : 1), sizeof(int), err);
    p->seqs = rq_calloc((size_t)(seqs > 0 ? seqs : 1), sizeof(rq_attn_seq), err);
    rq_status st = p->tokens && p->seqs ? row_list_alloc(&p->rl, scored > 0 ? scored : 1, err) : RQ_ERR_NOMEM;
    if (st != RQ_OK) phase_free(p);
    return st;
}

/* A new sequence of n rows at position pos0 (prefix at pre_row); returns its first row. */
static int phase_seq(mc_phase *p, int n, int pos0, int pre_row) {
    const int row = p->n_rows;
    p->seqs[p->n_seqs++] = (rq_attn_seq){.row = row, .n = n, .pos0 = pos0, .pre_row = pre_row};
    p->n_rows += n;
    return row;
}

/* How a document runs in a packed batch, from its tokenized requests: shared
 * (its context in phase 1, every choice continued from it in phase 2) or
 * independent (each request from position 0 in phase 1, lm-eval's left
 * truncation applied). A shared document's phase 1 also runs the first
 * `common` continuation tokens when every choice begins with them (piqa's
 * minimal pairs: "Rub hard with bed sheets" / "Rub hard with dryer sheets"):
 * those positions are the same for every choice, as its context's are, and
 * phase 1's rows n_ctx-1 .. n_ctx-1+common score every choice's first
 * common+1 tokens. rows[2]: the rows it adds to each phase. */
typedef struct mc_doc_plan {
    mc_request *req;
    int n;
    bool shared;
    int common;
    int rows[2], seqs[2], scored[2];
} mc_doc_plan;

/* Leading continuation tokens every choice shares, leaving each choice at least
 * its last token to score (so at most the shortest n_cont - 1). */
static int common_prefix(const mc_request *req, int n) {
    int k = req[0].n_cont - 1;
    for (int b = 1; b < n; b++) {
        int j = 0;
        const int lim = req[b].n_cont - 1 < k ? req[b].n_cont - 1 : k;
        while (j < lim && req[b].cont[j] == req[0].cont[j]) j++;
        k = j;
    }
    return k > 0 ? k : 0;
}

static rq_status doc_plan(const rq_mc_scorer *s, const rq_mc_doc *doc, mc_request *req, int n, mc_doc_plan *p,
                          rq_err *err) {
    *p = (mc_doc_plan){.req = req, .n = n, .shared = doc->n_contexts == 1};
    for (int b = 0; b < n; b++)
        if (req[0].n_ctx + req[b].n_cont > s->max_length + 1) p->shared = false;
    if (p->shared) p->common = common_prefix(req, n);
    for (int b = 0; b < n; b++) {
        const mc_request *r = &req[b];
        if (p->shared) {
            const int tail = r->n_cont - 1 - p->common;
            if (tail > 0) {
                p->rows[1] += tail;
                p->seqs[1]++;
                p->scored[1] += tail;
            }
            p->scored[0] += p->common + 1;
        } else {
            RQ_TRY(check_fits(s, r, err));
            p->rows[0] += request_input(s, r, NULL);
            p->seqs[0]++;
            p->scored[0] += r->n_cont;
        }
    }
    if (p->shared) {
        p->rows[0] = req[0].n_ctx + p->common;
        p->seqs[0] = 1;
    }
    return RQ_OK;
}

/* Adds a planned document to the two phases; owner0: its first choice's index
 * into the batch's ll and greedy. */
static void doc_pack(rq_mc_scorer *s, const mc_doc_plan *p, int owner0, mc_phase *ph, double *ll, bool *greedy) {
    const mc_request *req = p->req;
    for (int b = 0; b < p->n; b++) {
        ll[owner0 + b] = 0.0;
        greedy[owner0 + b] = true;
    }
    if (p->shared) {
        const int n_ctx = req[0].n_ctx, k = p->common;
        const int c0 = phase_seq(&ph[0], n_ctx + k, 0, 0);
        memcpy(ph[0].tokens + c0, req[0].ctx_ids, sizeof(int) * (size_t)n_ctx);
        memcpy(ph[0].tokens + c0 + n_ctx, req[0].cont, sizeof(int) * (size_t)k);
        for (int b = 0; b < p->n; b++) /* the context's last position predicts every first token, and so on */
            for (int j = 0; j <= k; j++) row_push(&ph[0].rl, c0 + n_ctx - 1 + j, req[b].cont[j], owner0 + b);
        for (int b = 0; b < p->n; b++) {
            const mc_request *r = &req[b];
            s->stats.positions_naive += n_ctx + r->n_cont - 1;
            const int tail = r->n_cont - 1 - k;
            if (tail <= 0) continue;
            const int row = phase_seq(&ph[1], tail, n_ctx + k, c0);
            for (int j = 0; j < tail; j++) {
                ph[1].tokens[row + j] = r->cont[k + j];
                row_push(&ph[1].rl, row + j, r->cont[k + j + 1], owner0 + b);
            }
        }
    } else {
        for (int b = 0; b < p->n; b++) {
            const mc_request *r = &req[b];
            const int n_in = request_input(s, r, NULL);
            const int row = phase_seq(&ph[0], n_in, 0, 0);
            request_input(s, r, ph[0].tokens + row);
            for (int j = 0; j < r->n_cont; j++) row_push(&ph[0].rl, row + n_in - r->n_cont + j, r->cont[j], owner0 + b);
            s->stats.positions_naive += n_in;
        }
    }
    s->stats.requests += p->n;
}

/* Scores documents docs[0 .. *n_done) as one packed batch: as many documents as
 * fit batch_tokens rows in each phase (at least one), their choices' ll and
 * greedy one document after another. */
static rq_status score_packed(rq_mc_scorer *s, const rq_mc_doc *docs, size_t n_avail, size_t *n_done, double *ll,
                              bool *greedy, rq_err *err) {
    *n_done = 0;
    if (n_avail > (size_t)s->o.batch_tokens + 1) n_avail = (size_t)s->o.batch_tokens + 1; /* a document is >= 1 row */
    mc_doc_plan *plans = rq_calloc(n_avail, sizeof *plans, err);
    if (!plans) return RQ_ERR_NOMEM;
    rq_status st = RQ_OK;
    int rows[2] = {0, 0}, seqs[2] = {0, 0}, scored[2] = {0, 0};
    size_t n = 0;
    for (; st == RQ_OK && n < n_avail; n++) {
        const rq_mc_doc *doc = &docs[n];
        if (doc->n_choices == 0 || doc->n_choices > INT32_MAX / 2) {
            st = RQ_FAIL(err, RQ_ERR_ARG, "document with %zu choices", doc->n_choices);
            break;
        }
        mc_request *req = rq_calloc(doc->n_choices, sizeof *req, err);
        if (!req) {
            st = RQ_ERR_NOMEM;
            break;
        }
        plans[n].req = req; /* freed below whatever happens */
        for (size_t i = 0; st == RQ_OK && i < doc->n_choices; i++)
            st = request_prepare(s, rq_mc_doc_context(doc, i), rq_mc_doc_continuation(doc, i), &req[i], err);
        if (st == RQ_OK) st = doc_plan(s, doc, req, (int)doc->n_choices, &plans[n], err);
        if (st != RQ_OK) {
            if (n > 0) rq_err_prefix(err, "document %zu of the batch: ", n + 1);
            n++;
            break;
        }
        const mc_doc_plan *p = &plans[n];
        if (n > 0 && (rows[0] + p->rows[0] > s->o.batch_tokens || rows[1] + p->rows[1] > s->o.batch_tokens)) {
            n++; /* prepared but left for the next batch */
            break;
        }
        for (int k = 0; k < 2; k++) {
            rows[k] += p->rows[k];
            seqs[k] += p->seqs[k];
            scored[k] += p->scored[k];
        }
        *n_done = n + 1;
    }
    const size_t n_prepared = n < n_avail ? n : n_avail;
    mc_phase ph[2] = {{0}};
    if (st == RQ_OK) st = phase_alloc(&ph[0], rows[0], seqs[0], scored[0], err);
    if (st == RQ_OK) st = phase_alloc(&ph[1], rows[1], seqs[1], scored[1], err);
    if (st == RQ_OK) st = ensure_packed(s, rows[0] > rows[1] ? rows[0] : rows[1], err);
    if (st == RQ_OK) {
        int owner = 0;
        for (size_t d = 0; d < *n_done; d++) {
            doc_pack(s, &plans[d], owner, ph, ll, greedy);
            if (!plans[d].shared && docs[d].n_contexts == 1) s->stats.unshared_docs++;
            owner += plans[d].n;
        }
        s->stats.batches++;
        st = rq_forward_run_packed(s->packed, ph[0].tokens, ph[0].seqs, ph[0].n_seqs, ph[1].n_seqs > 0, err);
        if (st == RQ_OK)
            st = score_rows(s, s->packed, ph[0].rl.rows, ph[0].rl.targets, ph[0].rl.owner, ph[0].rl.n, ll, greedy, err);
        if (st == RQ_OK && ph[1].n_seqs > 0) {
            st = rq_forward_run_packed(s->packed, ph[1].tokens, ph[1].seqs, ph[1].n_seqs, false, err);
            if (st == RQ_OK)
                st = score_rows(s, s->packed, ph[1].rl.rows, ph[1].rl.targets, ph[1].rl.owner, ph[1].rl.n, ll, greedy,
                                err);
        }
        s->stats.positions_run += ph[0].n_rows + ph[1].n_rows;
        s->stats.positions_useful += ph[0].n_rows + ph[1].n_rows;
    }
    phase_free(&ph[0]);
    phase_free(&ph[1]);
    for (size_t d = 0; d < n_prepared; d++) {
        for (int i = 0; plans[d].req && i < (int)docs[d].n_choices; i++) request_free(&plans[d].req[i]);
        free(plans[d].req);
    }
    free(plans);
    if (st != RQ_OK) *n_done = 0;
    return st;
}

rq_status rq_mc_request_input(rq_mc_scorer *s, const char *context, const char *continuation, int **input,
                              int *n_input, int **cont, int *n_cont, rq_err *err) {
    *input = *cont = NULL;
    mc_request r;
    RQ_TRY(request_prepare(s, context, continuation, &r, err));
    const int n_in = request_input(s, &r, NULL);
    rq_status st = check_fits(s, &r, err);
    int *in = st == RQ_OK ? rq_calloc((size_t)n_in, sizeof(int), err) : NULL;
    int *ct = st == RQ_OK ? rq_calloc((size_t)r.n_cont, sizeof(int), err) : NULL;
    if (st == RQ_OK && (!in || !ct)) st = RQ_ERR_NOMEM;
    if (st == RQ_OK) {
        request_input(s, &r, in);
        memcpy(ct, r.cont, sizeof(int) * (size_t)r.n_cont);
        *input = in;
        *n_input = n_in;
        *cont = ct;
        *n_cont = r.n_cont;
    } else {
        free(in);
        free(ct);
    }
    request_free(&r);
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

/* One document on its own (batch_tokens 0 or naive): shared context or independent requests. */
static rq_status score_doc_alone(rq_mc_scorer *s, const rq_mc_doc *doc, double *ll, bool *is_greedy, rq_err *err) {
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

/* The next documents of docs[0 .. n_avail): *n_done of them (>= 1 on success),
 * their choices' ll and greedy one document after another. */
static rq_status score_next(rq_mc_scorer *s, const rq_mc_doc *docs, size_t n_avail, size_t *n_done, double *ll,
                            bool *greedy, rq_err *err) {
    if (s->o.batch_tokens > 0 && !s->o.naive) return score_packed(s, docs, n_avail, n_done, ll, greedy, err);
    *n_done = 0;
    RQ_TRY(score_doc_alone(s, &docs[0], ll, greedy, err));
    *n_done = 1;
    return RQ_OK;
}

rq_status rq_mc_score_docs(rq_mc_scorer *s, const rq_mc_doc *docs, size_t n_docs, double *ll, bool *is_greedy,
                           rq_err *err) {
    size_t total = 0;
    for (size_t d = 0; d < n_docs; d++) total += docs[d].n_choices;
    bool *greedy = is_greedy ? is_greedy : rq_calloc(total ? total : 1, sizeof(bool), err);
    if (!greedy) return RQ_ERR_NOMEM;
    rq_status st = RQ_OK;
    for (size_t d = 0, k = 0, done = 0; st == RQ_OK && d < n_docs; d += done) {
        st = score_next(s, docs + d, n_docs - d, &done, ll + k, greedy + k, err);
        for (size_t i = 0; st == RQ_OK && i < done; i++) k += docs[d + i].n_choices;
    }
    if (greedy != is_greedy) free(greedy);
    return st;
}

rq_status rq_mc_score_doc(rq_mc_scorer *s, const rq_mc_doc *doc, double *ll, bool *is_greedy, rq_err *err) {
    return rq_mc_score_docs(s, doc, 1, ll, is_greedy, err);
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
    size_t total_choices = 0; /* room for a batch of every document */
    for (size_t d = 0; d < n; d++) total_choices += task->docs[d].n_choices;
    double *acc = rq_calloc(n, sizeof(double), err);
    double *acc_norm = rq_calloc(n, sizeof(double), err);
    double *ll = rq_calloc(total_choices, sizeof(double), err);
    bool *greedy = rq_calloc(total_choices, sizeof(bool), err);
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
    size_t batch_end = 0, k = 0; /* documents [d, batch_end) are scored; their choices from ll + k */
    for (size_t d = 0; st == RQ_OK && d < n; d++) {
        const rq_mc_doc *doc = &task->docs[d];
        if (d == batch_end) {
            size_t done = 0;
            k = 0;
            st = score_next(s, doc, n - d, &done, ll, greedy, err);
            if (st != RQ_OK) {
                rq_err_prefix(err, "%s document %zu (line %zu)%s: ", name, d + 1, doc->source_line,
                              s->o.batch_tokens > 0 && !s->o.naive ? " or a later one of its batch" : "");
                break;
            }
            batch_end = d + done;
        }
        const double *doc_ll = ll + k;
        const bool *doc_greedy = greedy + k;
        k += doc->n_choices;
        size_t pred, pred_norm;
        rq_mc_predict(doc, doc_ll, &pred, &pred_norm);
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
            memcpy(rec->ll, doc_ll, doc->n_choices * sizeof(double));
            memcpy(rec->is_greedy, doc_greedy, doc->n_choices * sizeof(bool));
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
