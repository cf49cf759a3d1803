/* Perplexity, GPTQ-style protocol (reference/formats-and-eval.md 1.9 A). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "../data/jsonl.h"
#include "../data/pyrandom.h"
#include "../model/forward.h"
#include "ppl.h"

void rq_ppl_default_opts(rq_ppl_opts *o) {
    memset(o, 0, sizeof *o);
    o->dataset = RQ_PPL_WIKITEXT2;
    o->batch = 1;
    o->c4_windows = 256;
}

rq_status rq_wikitext2_text(const char *raw_path, char **text, size_t *len, rq_err *err) {
    char *raw = NULL;
    size_t n = 0;
    RQ_TRY(rq_file_read_all(raw_path, &raw, &n, err));
    /* worst case every line doubles ("\n\n" joins), so 2n + 2 bounds the output */
    char *out = malloc(2 * n + 2);
    if (!out) {
        free(raw);
        return RQ_FAIL(err, RQ_ERR_NOMEM, "%s: out of memory", raw_path);
    }
    size_t o = 0, i = 0;
    bool first = true;
    while (i < n) {
        size_t j = i;
        while (j < n && raw[j] != '\n') j++;
        size_t line_end = j < n ? j + 1 : j; /* the row keeps its newline */
        bool blank = (line_end - i == 2 && raw[i] == ' ' && raw[i + 1] == '\n') ||
                     (line_end - i == 1 && raw[i] == '\n');
        if (!first) {
            out[o++] = '\n';
            out[o++] = '\n';
        }
        first = false;
        if (!blank) {
            memcpy(out + o, raw + i, line_end - i);
            o += line_end - i;
        }
        i = line_end;
    }
    out[o] = 0;
    free(raw);
    *text = out;
    *len = o;
    return RQ_OK;
}

rq_status rq_ppl_windows(const rq_model *m, rq_backend *be, const int *windows, int n_windows, int ctx, int batch,
                         bool quiet, rq_ppl_result *r, rq_err *err) {
    memset(r, 0, sizeof *r);
    if (n_windows <= 0) return RQ_FAIL(err, RQ_ERR_ARG, "perplexity: no windows to evaluate");
    if (ctx < 2) return RQ_FAIL(err, RQ_ERR_ARG, "perplexity: window length %d is too short (needs >= 2)", ctx);
    if (ctx > m->cfg.max_seq_len)
        return RQ_FAIL(err, RQ_ERR_ARG, "perplexity: window length %d exceeds the model's context %d", ctx,
                       m->cfg.max_seq_len);
    if (batch < 1) batch = 1;
    if (batch > n_windows) batch = n_windows;
    rq_forward_opts fo = {.max_batch = batch, .max_seq = ctx, .kv_cache = false};
    rq_forward_state *fs = NULL;
    RQ_TRY(rq_forward_create(m, be, &fo, &fs, err));
    int *targets = rq_calloc((size_t)batch * ctx, sizeof(int), err);
    double *nll = rq_calloc((size_t)batch, sizeof(double), err);
    int64_t *n = rq_calloc((size_t)batch, sizeof(int64_t), err);
    if (!targets || !nll || !n) {
        free(targets);
        free(nll);
        free(n);
        rq_forward_free(fs);
        return RQ_ERR_NOMEM;
    }
    rq_progress prog;
    rq_progress_init(&prog, "ppl", (int64_t)n_windows * ctx);
    double sum_window_nll = 0.0; /* sum over windows of each window's mean NLL, in fp64 */
    int64_t scored = 0;
    rq_status st = RQ_OK;
    double t0 = rq_now_seconds();
    for (int w0 = 0; w0 < n_windows && st == RQ_OK; w0 += batch) {
        int nb = n_windows - w0 < batch ? n_windows - w0 : batch;
        const int *tok = windows + (size_t)w0 * ctx;
        for (int b = 0; b < nb; b++) {
            for (int t = 0; t < ctx - 1; t++) targets[(size_t)b * ctx + t] = tok[(size_t)b * ctx + t + 1];
            targets[(size_t)b * ctx + ctx - 1] = -1; /* the last position predicts nothing */
        }
        st = rq_forward_run(fs, tok, nb, ctx, 0, err);
        if (st == RQ_OK) st = rq_forward_nll(fs, targets, nb, ctx, nll, n, err);
        for (int b = 0; b < nb && st == RQ_OK; b++) {
            if (!isfinite(nll[b]))
                st = RQ_FAIL(err, RQ_ERR_NUMERIC, "perplexity: window %d: the negative log-likelihood is not finite "
                             "(%g): the model holds NaN/Inf weights or adapters; refusing to score it", w0 + b, nll[b]);
            sum_window_nll += nll[b] / (double)n[b];
            scored += n[b];
        }
        r->windows += nb;
        if (!quiet) {
            char extra[64];
            snprintf(extra, sizeof extra, "ppl %.4f", exp(sum_window_nll / r->windows));
            rq_progress_update(&prog, (int64_t)r->windows * ctx, "tok", extra);
        }
    }
    if (!quiet && st == RQ_OK) rq_progress_finish(&prog, (int64_t)r->windows * ctx, "tok");
    r->seconds = rq_now_seconds() - t0;
    free(targets);
    free(nll);
    free(n);
    rq_forward_free(fs);
    if (st != RQ_OK) return st;
    r->ctx = ctx;
    r->tokens_scored = scored;
    r->mean_nll = sum_window_nll / r->windows;
    r->ppl = exp(r->mean_nll);
    r->tokens_per_s = r->seconds > 0 ? (double)r->windows * ctx / r->seconds : 0;
    return RQ_OK;
}

static int default_ctx(const rq_model *m, const rq_ppl_opts *o) {
    if (o->ctx > 0) return o->ctx;
    return m->cfg.max_seq_len < 2048 ? m->cfg.max_seq_len : 2048;
}

static rq_status ppl_wikitext2(const rq_model *m, rq_backend *be, const rq_ppl_opts *o, const char *path,
                               rq_ppl_result *r, rq_err *err) {
    char *text = NULL;
    size_t len = 0;
    RQ_TRY(rq_wikitext2_text(path, &text, &len, err));
    int *ids = NULL, n = 0;
    rq_status st = rq_tokenizer_encode(m->tok, text, len, RQ_BOS_DEFAULT, &ids, &n, err);
    free(text);
    if (st != RQ_OK) return st;
    int ctx = default_ctx(m, o);
    int n_windows = n / ctx;
    if (o->max_windows > 0 && n_windows > o->max_windows) n_windows = o->max_windows;
    if (n_windows == 0) {
        free(ids);
        return RQ_FAIL(err, RQ_ERR_ARG, "%s: %d tokens make no window of %d", path, n, ctx);
    }
    st = rq_ppl_windows(m, be, ids, n_windows, ctx, o->batch, o->quiet, r, err);
    r->text_tokens = n;
    free(ids);
    return st;
}

/* C4, GPTQ-style: random.seed(0); for each window draw a document with
 * randint until one has >= L tokens, then a start with randint(0, len - L - 1).
 * Documents are tokenized once, lazily, and only those in [doc_begin, doc_end)
 * can be drawn, so calibration documents can be kept out. */
static rq_status ppl_c4(const rq_model *m, rq_backend *be, const rq_ppl_opts *o, const char *path, rq_ppl_result *r,
                        rq_err *err) {
    rq_jsonl_reader jr;
    RQ_TRY(rq_jsonl_open(&jr, path, RQ_JSONL_STOP_ON_BAD_LINE, err));
    /* collect the texts of the documents in range */
    char **texts = NULL;
    int n_docs = 0, cap = 0, line = 0;
    rq_status st = RQ_OK;
    for (;;) {
        cJSON *doc = NULL;
        st = rq_jsonl_next(&jr, &doc, err);
        if (st != RQ_OK || !doc) break;
        bool in_range = line >= o->c4_doc_begin && (o->c4_doc_end <= 0 || line < o->c4_doc_end);
        line++;
        if (in_range) {
            const cJSON *t = cJSON_GetObjectItemCaseSensitive(doc, "text");
            if (!cJSON_IsString(t)) {
                st = RQ_FAIL(err, RQ_ERR_FORMAT, "%s:%zu: field \"text\" is missing or not a string", path, jr.line_no);
                cJSON_Delete(doc);
                break;
            }
            if (n_docs == cap) {
                cap = cap ? 2 * cap : 256;
                char **nt = realloc(texts, sizeof *nt * (size_t)cap);
                if (!nt) {
                    st = RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory reading %s", path);
                    cJSON_Delete(doc);
                    break;
                }
                texts = nt;
            }
            texts[n_docs] = rq_strdup(t->valuestring, err);
            if (!texts[n_docs]) st = RQ_ERR_NOMEM;
            else n_docs++;
        }
        cJSON_Delete(doc);
        if (st != RQ_OK) break;
    }
    rq_jsonl_close(&jr);
    const int L = default_ctx(m, o);
    if (st == RQ_OK && n_docs == 0)
        st = RQ_FAIL(err, RQ_ERR_ARG, "%s: no documents in the range %d:%d (the file has %d)", path, o->c4_doc_begin,
                     o->c4_doc_end, line);
    int **doc_ids = st == RQ_OK ? rq_calloc((size_t)n_docs, sizeof *doc_ids, err) : NULL;
    int *doc_len = st == RQ_OK ? rq_calloc((size_t)n_docs, sizeof *doc_len, err) : NULL;
    int *windows = st == RQ_OK ? rq_calloc((size_t)o->c4_windows * L, sizeof(int), err) : NULL;
    if (st == RQ_OK && (!doc_ids || !doc_len || !windows)) st = RQ_ERR_NOMEM;
    rq_pyrandom rng;
    rq_pyrandom_seed(&rng, 0);
    int tokenized = 0, long_enough = 0;
    for (int w = 0; w < o->c4_windows && st == RQ_OK; w++) {
        int64_t i = 0;
        for (;;) {
            st = rq_pyrandom_randint(&rng, 0, n_docs - 1, &i, err);
            if (st != RQ_OK) break;
            if (!doc_ids[i]) {
                st = rq_tokenizer_encode(m->tok, texts[i], strlen(texts[i]), RQ_BOS_DEFAULT, &doc_ids[i], &doc_len[i],
                                         err);
                if (st != RQ_OK) break;
                tokenized++;
                long_enough += doc_len[i] >= L;
            }
            if (doc_len[i] >= L) break;
            if (tokenized == n_docs && long_enough == 0) {
                st = RQ_FAIL(err, RQ_ERR_ARG,
                             "%s: no document in range %d:%d has %d tokens or more; use a shorter --ctx", path,
                             o->c4_doc_begin, o->c4_doc_end, L);
                break;
            }
        }
        if (st != RQ_OK) break;
        if (doc_len[i] == L) { /* Python's randint(0, -1) raises here; so do we, rather than invent a rule */
            st = RQ_FAIL(err, RQ_ERR_ARG,
                         "%s: document %lld has exactly %d tokens; the reference protocol fails on it (empty range)",
                         path, (long long)(i + o->c4_doc_begin), L);
            break;
        }
        int64_t j = 0;
        st = rq_pyrandom_randint(&rng, 0, doc_len[i] - L - 1, &j, err);
        if (st == RQ_OK) memcpy(windows + (size_t)w * L, doc_ids[i] + j, sizeof(int) * (size_t)L);
    }
    if (st == RQ_OK) {
        int n_windows = o->c4_windows;
        if (o->max_windows > 0 && n_windows > o->max_windows) n_windows = o->max_windows;
        st = rq_ppl_windows(m, be, windows, n_windows, L, o->batch, o->quiet, r, err);
    }
    for (int d = 0; d < n_docs; d++) {
        free(texts[d]);
        if (doc_ids) free(doc_ids[d]);
    }
    free(texts);
    free(doc_ids);
    free(doc_len);
    free(windows);
    return st;
}

const char *rq_ppl_dataset_file(rq_ppl_dataset d) {
    switch (d) {
    case RQ_PPL_WIKITEXT2: return "wikitext2/wiki.test.raw";
    case RQ_PPL_C4: return "c4/c4-validation-2k.jsonl";
    }
    return NULL;
}

rq_status rq_ppl_run(const rq_model *m, rq_backend *be, const rq_ppl_opts *o, rq_ppl_result *r, rq_err *err) {
    memset(r, 0, sizeof *r);
    if (!m->tok) return RQ_FAIL(err, RQ_ERR_ARG, "perplexity needs a tokenizer and model '%s' has none", m->path);
    if (!o->data_root) return RQ_FAIL(err, RQ_ERR_ARG, "perplexity: no data directory (set RILQ_DATA or --data)");
    const char *file = rq_ppl_dataset_file(o->dataset);
    if (!file) return RQ_FAIL(err, RQ_ERR_ARG, "unknown perplexity dataset %d", (int)o->dataset);
    char *path = rq_path_join_alloc(o->data_root, file, err);
    if (!path) return RQ_ERR_NOMEM;
    rq_status st = o->dataset == RQ_PPL_WIKITEXT2 ? ppl_wikitext2(m, be, o, path, r, err) : ppl_c4(m, be, o, path, r, err);
    free(path);
    return st;
}
