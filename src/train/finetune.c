/* Stage 2 data (see finetune.h). */
#include <stdio.h>
#include <stdlib.h>

#include "../data/tasks.h"
#include "finetune.h"

void rq_ft_default_opts(rq_ft_opts *o) {
    memset(o, 0, sizeof *o);
    o->max_source = 384;
    o->max_target = 128;
    o->bos = RQ_BOS_OFF;
}

rq_status rq_ft_tokenize_pair(const rq_tokenizer *tok, const char *context, const char *continuation, int max_source,
                              int max_target, rq_bos_mode bos, rq_ft_example *ex, bool *src_cut, bool *tgt_cut,
                              rq_err *err) {
    memset(ex, 0, sizeof *ex);
    *src_cut = *tgt_cut = false;
    const size_t lc = strlen(context), ln = strlen(continuation);
    char *joined = malloc(lc + ln + 1);
    if (!joined) return RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory tokenizing a training example");
    memcpy(joined, context, lc);
    memcpy(joined + lc, continuation, ln + 1);
    int *whole = NULL, *ctx = NULL, n_whole = 0, n_ctx = 0;
    rq_status st = rq_tokenizer_encode(tok, joined, lc + ln, bos, &whole, &n_whole, err);
    if (st == RQ_OK) st = rq_tokenizer_encode(tok, context, lc, bos, &ctx, &n_ctx, err);
    free(joined);
    if (st == RQ_OK) {
        /* the continuation is what the joint tokenization has after the context's own tokens */
        int n_src = n_ctx < n_whole ? n_ctx : n_whole, n_tgt = n_whole - n_src;
        int src_first = 0;
        if (n_src > max_source) {
            src_first = n_src - max_source;
            n_src = max_source;
            *src_cut = true;
        }
        if (n_tgt > max_target) {
            n_tgt = max_target;
            *tgt_cut = true;
        }
        ex->ids = malloc(sizeof(int) * (size_t)(n_src + n_tgt > 0 ? n_src + n_tgt : 1));
        if (!ex->ids) st = RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory tokenizing a training example");
        else {
            memcpy(ex->ids, whole + src_first, sizeof(int) * (size_t)(n_src + n_tgt));
            ex->n = n_src + n_tgt;
            ex->n_src = n_src;
        }
    }
    free(whole);
    free(ctx);
    return st;
}

static rq_status add_pair(rq_ft_set *set, int64_t *cap, const rq_tokenizer *tok, const rq_ft_opts *o, const char *context,
                          const char *continuation, rq_err *err) {
    rq_ft_example ex;
    bool sc, tc;
    RQ_TRY(rq_ft_tokenize_pair(tok, context, continuation, o->max_source, o->max_target, o->bos, &ex, &sc, &tc, err));
    if (ex.n_src < 1 || ex.n - ex.n_src < 1) { /* nothing to learn from it */
        free(ex.ids);
        set->skipped++;
        return RQ_OK;
    }
    if (set->n == *cap) {
        *cap = *cap ? 2 * *cap : 256;
        rq_ft_example *ne = realloc(set->ex, sizeof *ne * (size_t)*cap);
        if (!ne) {
            free(ex.ids);
            return RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory collecting training examples");
        }
        set->ex = ne;
    }
    set->ex[set->n++] = ex;
    set->truncated_sources += sc;
    set->truncated_targets += tc;
    if (ex.n - 1 > set->max_len) set->max_len = ex.n - 1;
    return RQ_OK;
}

static bool in_fold(const rq_ft_opts *o, size_t i) {
    return (int64_t)i >= o->fold_begin && (o->fold_end <= 0 || (int64_t)i < o->fold_end);
}

rq_status rq_ft_set_load(const rq_tokenizer *tok, const rq_ft_opts *o, rq_ft_set *set, rq_err *err) {
    memset(set, 0, sizeof *set);
    if (!tok) return RQ_FAIL(err, RQ_ERR_ARG, "fine-tuning needs a tokenizer");
    if (!o->task || !o->dataset_root) return RQ_FAIL(err, RQ_ERR_ARG, "fine-tuning: no task or no dataset root");
    if (o->max_source < 1 || o->max_target < 1)
        return RQ_FAIL(err, RQ_ERR_ARG, "fine-tuning: max source %d and max target %d must be positive", o->max_source,
                       o->max_target);
    rq_task_id id;
    RQ_TRY(rq_task_lookup(o->task, &id, err));
    const char *docs_file;
    if (!rq_task_files(id, RQ_SPLIT_TRAIN, &docs_file, NULL))
        return RQ_FAIL(err, RQ_ERR_ARG, "fine-tuning supports arc_easy, arc_challenge, piqa and gsm8k, not '%s'", o->task);
    if (id == RQ_TASK_PIQA && o->fold_end <= 0)
        return RQ_FAIL(err, RQ_ERR_ARG, "piqa has no local training split: name a fold of the validation set "
                                        "(e.g. --fold 0:1000) and evaluate on the other documents");
    char *path = rq_path_join_alloc(o->dataset_root, docs_file, err); /* the file trained on, for messages */
    if (!path) return RQ_ERR_NOMEM;
    const rq_task_load_opts load = {.split = RQ_SPLIT_TRAIN};
    int64_t cap = 0;
    rq_status st = RQ_OK;
    size_t n_docs = 0;
    if (id == RQ_TASK_GSM8K) {
        rq_gsm8k_set train = {0};
        st = rq_task_load_gsm8k(o->dataset_root, &load, &train, err);
        n_docs = train.n_docs;
        for (size_t i = 0; i < train.n_docs && st == RQ_OK; i++) {
            if (!in_fold(o, i)) continue;
            if (o->limit > 0 && set->n + set->skipped >= o->limit) break;
            char *prompt = NULL, *target = NULL;
            st = rq_gsm8k_finetune_pair(&train.docs[i], &prompt, &target, err);
            if (st == RQ_OK) st = add_pair(set, &cap, tok, o, prompt, target, err);
            free(prompt);
            free(target);
        }
        rq_gsm8k_set_free(&train);
    } else {
        rq_mc_task task = {0};
        st = rq_task_load_mc(o->dataset_root, id, &load, &task, err);
        n_docs = task.n_docs;
        for (size_t i = 0; i < task.n_docs && st == RQ_OK; i++) {
            if (!in_fold(o, i)) continue;
            if (o->limit > 0 && set->n + set->skipped >= o->limit) break;
            const rq_mc_doc *d = &task.docs[i];
            st = add_pair(set, &cap, tok, o, rq_mc_doc_context(d, d->gold), rq_mc_doc_continuation(d, d->gold), err);
        }
        rq_mc_task_free(&task);
    }
    if (st == RQ_OK && (o->fold_begin < 0 || (size_t)o->fold_begin >= n_docs || (o->fold_end > 0 && (size_t)o->fold_end > n_docs)))
        st = RQ_FAIL(err, RQ_ERR_ARG, "%s: fold %d:%d outside its %zu documents", path, o->fold_begin, o->fold_end, n_docs);
    if (st == RQ_OK && set->n == 0) st = RQ_FAIL(err, RQ_ERR_ARG, "%s: no training examples", path);
    if (st == RQ_OK)
        snprintf(set->split, sizeof set->split, "%s docs %d:%d%s", path, o->fold_begin,
                 o->fold_end > 0 ? o->fold_end : (int)n_docs, o->limit > 0 ? " (limited)" : "");
    free(path);
    if (st != RQ_OK) rq_ft_set_free(set);
    return st;
}

void rq_ft_set_free(rq_ft_set *set) {
    for (int64_t i = 0; i < set->n; i++) free(set->ex[i].ids);
    free(set->ex);
    memset(set, 0, sizeof *set);
}

rq_status rq_ft_fill(const rq_ft_set *set, int64_t k, int T, int *tokens, int *targets, int *len, rq_err *err) {
    if (k < 0 || k >= set->n) return RQ_FAIL(err, RQ_ERR_ARG, "fine-tuning example %lld outside 0..%lld", (long long)k,
                                            (long long)set->n - 1);
    const rq_ft_example *e = &set->ex[k];
    const int L = e->n - 1;
    if (L > T) return RQ_FAIL(err, RQ_ERR_ARG, "fine-tuning example %lld has %d positions, more than %d", (long long)k, L, T);
    for (int t = 0; t < L; t++) {
        tokens[t] = e->ids[t];
        targets[t] = t + 1 >= e->n_src ? e->ids[t + 1] : -1;
    }
    *len = L;
    return RQ_OK;
}
