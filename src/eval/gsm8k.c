/* gsm8k: generation, stop strings, filters and exact match (see gsm8k.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "../model/bind.h"
#include "../model/generate.h"
#include "gsm8k.h"
#include "gsm8k_extract.h"
#include "mc.h"

void rq_gsm8k_default_opts(rq_gsm8k_opts *o) {
    memset(o, 0, sizeof *o);
    o->format = RQ_GSM8K_FEWSHOT;
    o->num_fewshot = RQ_GSM8K_DEFAULT_SHOTS;
    o->fewshot_seed = RQ_GSM8K_DEFAULT_FEWSHOT_SEED;
    o->max_gen_tokens = RQ_GSM8K_MAX_GEN_TOKENS;
    o->bos = RQ_BOS_OFF;
}

void rq_gsm8k_stop_strings(const rq_tokenizer *tok, const char *stops[4], size_t *n) {
    static const char *const until[3] = {"Question:", "</s>", "<|im_end|>"};
    size_t k = 0;
    for (int i = 0; i < 3; i++) stops[k++] = until[i];
    /* lm-eval appends the decoded EOS token unless it is already listed */
    const char *eos = tok ? rq_tokenizer_token(tok, rq_tokenizer_eos(tok)) : NULL;
    bool listed = !eos || !eos[0];
    for (size_t i = 0; !listed && i < k; i++) listed = strcmp(stops[i], eos) == 0;
    if (!listed) stops[k++] = eos;
    *n = k;
}

/* Per-token state of a generation: the new ids so far, and whether their
 * decoded text (special tokens kept, as lm-eval's stopping criterion decodes)
 * already holds a stop string. */
typedef struct stop_watch {
    const rq_tokenizer *tok;
    const char *stops[4];
    size_t n_stops;
    int *ids;
    int n, cap;
    rq_status st;
    rq_err *err;
} stop_watch;

static bool on_token(void *user, int id) {
    stop_watch *w = user;
    if (w->n == w->cap) {
        int ncap = w->cap ? 2 * w->cap : 64;
        int *p = realloc(w->ids, sizeof(int) * (size_t)ncap);
        if (!p) {
            w->st = RQ_FAIL(w->err, RQ_ERR_NOMEM, "gsm8k: out of memory while generating");
            return false;
        }
        w->ids = p;
        w->cap = ncap;
    }
    w->ids[w->n++] = id;
    char *text = NULL;
    rq_status st = rq_tokenizer_decode(w->tok, w->ids, w->n, false, &text, w->err);
    if (st != RQ_OK) {
        w->st = st;
        return false;
    }
    bool stop = rq_gsm8k_stop_length(text, w->stops, w->n_stops) < strlen(text);
    free(text);
    return !stop;
}

rq_status rq_gsm8k_generate_one(const rq_model *m, rq_backend *be, const char *prompt, const rq_gsm8k_opts *o,
                                char **response, int *prompt_tokens, int *new_tokens, bool *truncated, rq_err *err) {
    *response = NULL;
    const rq_tokenizer *tok = m->tok;
    if (!tok) return RQ_FAIL(err, RQ_ERR_ARG, "%s has no tokenizer: gsm8k needs one (--tokenizer PATH)", m->path);
    const int max_gen = o->max_gen_tokens > 0 ? o->max_gen_tokens : RQ_GSM8K_MAX_GEN_TOKENS;
    const int max_length = o->max_length > 0 ? o->max_length : m->cfg.max_seq_len;
    const int max_ctx = max_length - max_gen;
    if (max_ctx < 1)
        return RQ_FAIL(err, RQ_ERR_ARG, "gsm8k: %d new tokens leave no room for a prompt in a context of %d", max_gen,
                       max_length);
    int *ids = NULL, n_ids = 0;
    RQ_TRY(rq_tokenizer_encode(tok, prompt, strlen(prompt), o->bos, &ids, &n_ids, err));
    if (n_ids == 0) {
        free(ids);
        return RQ_FAIL(err, RQ_ERR_ARG, "gsm8k: the prompt encodes to no tokens");
    }
    /* lm-eval keeps the last max_length - max_gen_toks context tokens */
    const int skip = n_ids > max_ctx ? n_ids - max_ctx : 0;
    if (truncated) *truncated = skip > 0;
    if (prompt_tokens) *prompt_tokens = n_ids - skip;

    int stop_ids[9], n_stop = 0;
    for (int i = 0; i < m->cfg.n_eos && n_stop < 8; i++) stop_ids[n_stop++] = m->cfg.eos_ids[i];
    if (rq_tokenizer_eos(tok) >= 0) stop_ids[n_stop++] = rq_tokenizer_eos(tok);

    stop_watch w = {.tok = tok, .st = RQ_OK, .err = err};
    rq_gsm8k_stop_strings(tok, w.stops, &w.n_stops);
    rq_sample_opts so = {.max_new = max_gen, .temperature = 0.0f, .top_p = 1.0f};
    int *out = NULL, n_out = 0;
    rq_status st = rq_generate(m, be, ids + skip, n_ids - skip, &so, stop_ids, n_stop, on_token, &w, &out, &n_out, err);
    if (st == RQ_OK) st = w.st;
    free(ids);
    char *text = NULL;
    /* the answer text: new tokens only, special tokens skipped, cut at the earliest stop string */
    if (st == RQ_OK) st = rq_tokenizer_decode(tok, out, n_out, true, &text, err);
    if (st == RQ_OK) {
        text[rq_gsm8k_stop_length(text, w.stops, w.n_stops)] = 0;
        *response = text;
        if (new_tokens) *new_tokens = n_out;
    }
    free(out);
    free(w.ids);
    return st;
}

void rq_gsm8k_result_free(rq_gsm8k_result *r) {
    if (!r) return;
    for (size_t i = 0; r->records && i < r->n_docs; i++) {
        free(r->records[i].response);
        free(r->records[i].strict);
        free(r->records[i].flexible);
    }
    free(r->records);
    r->records = NULL;
}

rq_status rq_gsm8k_evaluate(const rq_model *m, rq_backend *be, const rq_gsm8k_set *test, const rq_gsm8k_set *train,
                            const rq_gsm8k_opts *o, rq_gsm8k_result *r, rq_err *err) {
    memset(r, 0, sizeof *r);
    const size_t n = o->limit && o->limit < test->n_docs ? o->limit : test->n_docs;
    r->n_docs_total = test->n_docs;
    if (n == 0) return RQ_FAIL(err, RQ_ERR_ARG, "gsm8k: no documents to evaluate");
    rq_gsm8k_prompter prompter;
    RQ_TRY(rq_gsm8k_prompter_init(&prompter, train, o->format, o->num_fewshot, o->fewshot_seed, err));
    double *strict_ok = rq_calloc(n, sizeof(double), err);
    double *flexible_ok = rq_calloc(n, sizeof(double), err);
    rq_status st = strict_ok && flexible_ok ? RQ_OK : RQ_ERR_NOMEM;
    if (st == RQ_OK && o->keep_records) {
        r->records = rq_calloc(n, sizeof *r->records, err);
        if (!r->records) st = RQ_ERR_NOMEM;
    }
    /* one binding for the whole set, since each document's generation makes its own forward state */
    const bool bound = st == RQ_OK && (st = rq_model_bind(m, be, err)) == RQ_OK;
    rq_progress prog;
    rq_progress_init(&prog, "gsm8k", (int64_t)n);
    const double t0 = rq_now_seconds();
    double strict_sum = 0.0, flexible_sum = 0.0;
    for (size_t d = 0; st == RQ_OK && d < n; d++) {
        const rq_gsm8k_doc *doc = &test->docs[d];
        char *prompt = NULL, *response = NULL, *strict = NULL, *flexible = NULL;
        int prompt_tokens = 0, new_tokens = 0;
        bool truncated = false, strict_match = false, flexible_match = false;
        /* the prompter advances its random stream per document, in order */
        st = rq_gsm8k_prompter_next(&prompter, doc, &prompt, NULL, err);
        if (st == RQ_OK)
            st = rq_gsm8k_generate_one(m, be, prompt, o, &response, &prompt_tokens, &new_tokens, &truncated, err);
        if (st == RQ_OK) st = rq_gsm8k_strict_match(response, &strict, err);
        if (st == RQ_OK) st = rq_gsm8k_flexible_extract(response, &flexible, err);
        if (st == RQ_OK) st = rq_gsm8k_exact_match(strict, doc->answer, &strict_match, err);
        if (st == RQ_OK) st = rq_gsm8k_exact_match(flexible, doc->answer, &flexible_match, err);
        free(prompt);
        if (st != RQ_OK) {
            rq_err_prefix(err, "gsm8k document %zu (line %zu): ", d + 1, doc->source_line);
            free(response);
            free(strict);
            free(flexible);
            break;
        }
        strict_ok[d] = strict_match;
        flexible_ok[d] = flexible_match;
        strict_sum += strict_match;
        flexible_sum += flexible_match;
        r->prompt_tokens += prompt_tokens;
        r->new_tokens += new_tokens;
        r->truncated_prompts += truncated;
        if (r->records) {
            r->records[d] = (rq_gsm8k_record){.doc_index = d, .source_line = doc->source_line, .response = response,
                                              .strict = strict, .flexible = flexible,
                                              .strict_correct = strict_match, .flexible_correct = flexible_match,
                                              .prompt_tokens = prompt_tokens, .new_tokens = new_tokens};
        } else {
            free(response);
            free(strict);
            free(flexible);
        }
        r->n_docs = d + 1;
        if (!o->quiet) {
            char extra[96];
            snprintf(extra, sizeof extra, "strict %.3f flexible %.3f | %.1f gen tok/s", strict_sum / (double)(d + 1),
                     flexible_sum / (double)(d + 1), (double)r->new_tokens / (rq_now_seconds() - t0));
            rq_progress_update(&prog, (int64_t)(d + 1), "docs", extra);
        }
    }
    if (st == RQ_OK) {
        if (!o->quiet) rq_progress_finish(&prog, (int64_t)n, "docs");
        rq_mean_stderr(strict_ok, n, &r->strict, &r->strict_stderr);
        rq_mean_stderr(flexible_ok, n, &r->flexible, &r->flexible_stderr);
        r->seconds = rq_now_seconds() - t0;
    } else {
        rq_gsm8k_result_free(r);
    }
    if (bound) rq_model_unbind(m, be);
    free(strict_ok);
    free(flexible_ok);
    return st;
}
