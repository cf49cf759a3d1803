/* Perplexity, GPTQ-style protocol (reference/formats-and-eval.md 1.9 A). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

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

static rq_status ppl_wikitext2(const rq_model *m, rq_backend *be, const rq_ppl_opts *o, rq_ppl_result *r,
                               rq_err *err) {
    char path[4096];
    if (!rq_path_join(path, sizeof path, o->data_root, "wikitext2/wiki.test.raw"))
        return RQ_FAIL(err, RQ_ERR_ARG, "data path too long: %s", o->data_root);
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

rq_status rq_ppl_run(const rq_model *m, rq_backend *be, const rq_ppl_opts *o, rq_ppl_result *r, rq_err *err) {
    memset(r, 0, sizeof *r);
    if (!m->tok) return RQ_FAIL(err, RQ_ERR_ARG, "perplexity needs a tokenizer and model '%s' has none", m->path);
    if (!o->data_root) return RQ_FAIL(err, RQ_ERR_ARG, "perplexity: no data directory (set RILQ_DATA or --data)");
    switch (o->dataset) {
    case RQ_PPL_WIKITEXT2: return ppl_wikitext2(m, be, o, r, err);
    case RQ_PPL_C4: return RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "c4 perplexity: not built yet");
    }
    return RQ_FAIL(err, RQ_ERR_ARG, "unknown perplexity dataset %d", (int)o->dataset);
}
