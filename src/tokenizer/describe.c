/* rq_tokenizer_describe: the tokenizer back as an rq_tokenizer_spec, so a writer
 * can store it in another format (src/io/export.c writes GGUF tokenizer.ggml.*
 * keys from it) without knowing which file it was loaded from. */
#include <stdio.h>
#include <stdlib.h>

#include "tok_internal.h"

typedef struct merge_entry {
    int32_t rank;
    int left, right, merged;
} merge_entry;

static int compare_rank(const void *a, const void *b) {
    const merge_entry *x = a, *y = b;
    return x->rank < y->rank ? -1 : x->rank > y->rank;
}

/* The merge table in rank order (*n entries, malloc'ed). */
static rq_status merges_in_order(const struct rq_tokenizer *t, merge_entry **out, int *n, rq_err *err) {
    *out = NULL;
    *n = 0;
    if (!t->has_merges) return RQ_OK;
    uint64_t slots = t->merges.mask + 1;
    int count = 0;
    for (uint64_t i = 0; i < slots; i++) count += t->merges.keys[i] != UINT64_MAX;
    merge_entry *e = rq_calloc((size_t)count + 1, sizeof *e, err);
    if (!e) return RQ_ERR_NOMEM;
    int k = 0;
    for (uint64_t i = 0; i < slots; i++) {
        uint64_t key = t->merges.keys[i];
        if (key == UINT64_MAX) continue;
        e[k++] = (merge_entry){t->merges.ranks[i], (int)(key >> 32), (int)(uint32_t)key, t->merges.merged[i]};
    }
    qsort(e, (size_t)count, sizeof *e, compare_rank);
    *out = e;
    *n = count;
    return RQ_OK;
}

static rq_status describe(const struct rq_tokenizer *t, rq_tokenizer_desc *d, rq_err *err) {
    int n = t->n_vocab;
    rq_tokenizer_spec *s = &d->spec;
    d->tokens = rq_calloc((size_t)n, sizeof *d->tokens, err);
    d->lens = rq_calloc((size_t)n, sizeof *d->lens, err);
    d->types = rq_calloc((size_t)n, sizeof *d->types, err);
    d->special = rq_calloc((size_t)t->n_special + 1, sizeof *d->special, err);
    if (!d->tokens || !d->lens || !d->types || !d->special) return RQ_ERR_NOMEM;
    for (int i = 0; i < n; i++) {
        d->tokens[i] = rq_tok_str(t, i);
        d->lens[i] = t->tok_len[i];
        d->types[i] = t->types[i];
    }
    for (int i = 0; i < t->n_special; i++) d->special[i] = t->special_ids[i];

    merge_entry *m = NULL;
    int n_merges = 0;
    RQ_TRY(merges_in_order(t, &m, &n_merges, err));
    rq_status st = RQ_OK;
    if (t->kind == RQ_TOK_SPM) {
        d->scores = rq_calloc((size_t)n, sizeof *d->scores, err);
        if (!d->scores) st = RQ_ERR_NOMEM;
        else if (t->scores) memcpy(d->scores, t->scores, (size_t)n * sizeof(float));
        else {
            /* a merge list: higher score merges first, so score = -rank of the
             * first merge producing the token */
            for (int i = 0; i < n; i++) d->scores[i] = -(float)(n_merges + 1);
            for (int k = n_merges - 1; k >= 0; k--) d->scores[m[k].merged] = -(float)m[k].rank;
        }
    } else if (n_merges > 0) {
        d->merges = rq_calloc((size_t)n_merges, sizeof *d->merges, err);
        if (!d->merges) st = RQ_ERR_NOMEM;
        for (int k = 0; k < n_merges && st == RQ_OK; k++) {
            int ll = t->tok_len[m[k].left], rl = t->tok_len[m[k].right];
            char *p = malloc((size_t)ll + (size_t)rl + 2);
            if (!p) {
                st = RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory for merge %d", k);
                break;
            }
            memcpy(p, rq_tok_str(t, m[k].left), (size_t)ll);
            p[ll] = ' ';
            memcpy(p + ll + 1, rq_tok_str(t, m[k].right), (size_t)rl);
            p[ll + 1 + rl] = 0;
            d->merges[k] = p;
            s->n_merges = k + 1;
        }
    }
    free(m);
    RQ_TRY(st);

    s->kind = t->kind;
    s->pretok = t->pretok;
    s->n_vocab = n;
    s->tokens = d->tokens;
    s->token_lens = d->lens;
    s->scores = d->scores;
    s->token_types = d->types;
    s->merges = (const char *const *)d->merges;
    s->ignore_merges = t->ignore_merges;
    s->add_space_prefix = t->add_space_prefix;
    s->add_bos_default = t->add_bos_default;
    s->bos_id = t->bos_id;
    s->eos_id = t->eos_id;
    s->unk_id = t->unk_id;
    s->pad_id = t->pad_id;
    s->special_ids = d->special;
    s->n_special = t->n_special;
    return RQ_OK;
}

rq_status rq_tokenizer_describe(const rq_tokenizer *t, rq_tokenizer_desc *d, rq_err *err) {
    memset(d, 0, sizeof *d);
    if (!t) return RQ_FAIL(err, RQ_ERR_ARG, "rq_tokenizer_describe: no tokenizer");
    rq_status s = describe(t, d, err);
    if (s != RQ_OK) rq_tokenizer_describe_free(d);
    return s;
}

void rq_tokenizer_describe_free(rq_tokenizer_desc *d) {
    if (d->merges)
        for (int k = 0; k < d->spec.n_merges; k++) free(d->merges[k]);
    free(d->merges);
    free(d->tokens);
    free(d->lens);
    free(d->types);
    free(d->special);
    free(d->scores);
    memset(d, 0, sizeof *d);
}
