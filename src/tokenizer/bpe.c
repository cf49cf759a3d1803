/* BPE over one word with a rank-ordered binary min-heap (reference doc 3.5).
 *
 * The word's symbols form a doubly linked list over an array; every adjacent
 * pair that may merge is pushed as (rank, left position). Popping the minimum
 * gives the next merge: lowest rank first, leftmost on ties, which is both
 * HF's merge order and SentencePiece's (highest score, leftmost). Merging
 * leaves stale heap entries behind instead of searching the heap for them; an
 * entry is stale when either symbol's length changed since it was pushed,
 * because a symbol only changes by absorbing its right neighbour. The cost is
 * O(n log n) per word, so a 1 MB text encoded as one SPM word is fine. */
#include <stdlib.h>

#include "tok_internal.h"
#include "unicode.h"

typedef struct bpe_symbol {
    int32_t start, len; /* bytes of buf; len 0 = merged away */
    int32_t prev, next; /* -1 at the ends */
    int32_t id;         /* vocab id, or -1 (SPM: a char that is not a piece; byte fallback at the end) */
} bpe_symbol;

/* 16 bytes, so that a heap over a whole long text stays compact. Symbol
 * lengths fit 16 bits: tokens longer than 65535 bytes are refused at creation
 * and an unmerged symbol is one char. */
typedef struct bpe_entry {
    uint64_t key;                 /* rank << 32 | left position: one compare orders by rank, then leftmost */
    int32_t merged;               /* id of the merged token */
    uint16_t left_len, right_len; /* lengths when pushed: a mismatch marks the entry stale */
} bpe_entry;

static bool entry_less(const bpe_entry *a, const bpe_entry *b) { return a->key < b->key; }

static rq_status heap_push(rq_bpe_work *w, bpe_entry e, rq_err *err) {
    if (w->heap_n == w->heap_cap) {
        size_t cap = w->heap_cap ? w->heap_cap * 2 : 256, bytes;
        if (!rq_mul_ok(cap, sizeof(bpe_entry), &bytes)) return RQ_FAIL(err, RQ_ERR_NOMEM, "BPE heap size overflows");
        bpe_entry *grown = realloc(w->heap, bytes);
        if (!grown) return RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory growing the BPE heap to %zu entries", cap);
        w->heap = grown;
        w->heap_cap = cap;
    }
    size_t i = w->heap_n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!entry_less(&e, &w->heap[parent])) break;
        w->heap[i] = w->heap[parent];
        i = parent;
    }
    w->heap[i] = e;
    return RQ_OK;
}

static bpe_entry heap_pop(rq_bpe_work *w) {
    bpe_entry top = w->heap[0];
    bpe_entry last = w->heap[--w->heap_n];
    size_t n = w->heap_n, i = 0;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= n) break;
        if (child + 1 < n && entry_less(&w->heap[child + 1], &w->heap[child])) child++;
        if (!entry_less(&w->heap[child], &last)) break;
        w->heap[i] = w->heap[child];
        i = child;
    }
    if (n) w->heap[i] = last;
    return top;
}

/* May a token take part in merges as a piece of text? Control, unknown, byte
 * and unused entries are matched only by id, never from text. */
static bool mergeable_type(const struct rq_tokenizer *t, int id) {
    uint8_t ty = t->types[id];
    return ty == RQ_TOKTYPE_NORMAL || ty == RQ_TOKTYPE_USER;
}

/* Initial id of one char of the word. */
static int initial_id(const struct rq_tokenizer *t, const char *s, size_t len) {
    int id = rq_str_map_get(&t->vocab, t, s, len);
    if (id < 0) return -1;
    if (t->kind == RQ_TOK_SPM && !mergeable_type(t, id)) return -1;
    return id;
}

/* Push the pair (left, its right neighbour) if it has a merge. */
static rq_status push_pair(const struct rq_tokenizer *t, rq_bpe_work *w, const char *buf, int32_t left, rq_err *err) {
    if (left < 0) return RQ_OK;
    const bpe_symbol *l = &w->symbols[left];
    if (l->next < 0) return RQ_OK;
    const bpe_symbol *r = &w->symbols[l->next];
    int32_t rank, merged;
    if (t->has_merges) {
        if (l->id < 0 || r->id < 0) return RQ_OK;
        uint64_t key = ((uint64_t)(uint32_t)l->id << 32) | (uint32_t)r->id;
        const rq_pair_map *m = &t->merges;
        uint64_t h = (key * 0x9E3779B97F4A7C15ull) >> 17;
        for (uint64_t i = h & m->mask;; i = (i + 1) & m->mask) {
            if (m->keys[i] == UINT64_MAX) return RQ_OK;
            if (m->keys[i] == key) {
                rank = m->ranks[i];
                merged = m->merged[i];
                break;
            }
        }
    } else {
        /* SentencePiece: the pair merges iff the concatenated text is a piece;
         * adjacent symbols are adjacent spans of buf, so no copy is needed */
        merged = rq_str_map_get(&t->vocab, t, buf + l->start, (size_t)l->len + (size_t)r->len);
        if (merged < 0 || t->merge_rank[merged] < 0) return RQ_OK;
        rank = t->merge_rank[merged];
    }
    bpe_entry e = {((uint64_t)(uint32_t)rank << 32) | (uint32_t)left, merged, (uint16_t)l->len, (uint16_t)r->len};
    return heap_push(w, e, err);
}

static rq_status emit_symbol(const struct rq_tokenizer *t, const bpe_symbol *s, const char *buf, rq_id_vec *out,
                             rq_err *err) {
    if (s->id >= 0) return rq_id_vec_push(out, s->id, err);
    if (t->kind == RQ_TOK_SPM) {
        /* byte fallback: the char's UTF-8 bytes as <0xXX> tokens */
        for (int32_t i = 0; i < s->len; i++) {
            int id = t->byte_token[(unsigned char)buf[s->start + i]];
            if (id < 0) id = t->unk_id;
            if (id >= 0) RQ_TRY(rq_id_vec_push(out, id, err));
        }
        return RQ_OK;
    }
    if (t->unk_id >= 0) return rq_id_vec_push(out, t->unk_id, err);
    return RQ_OK; /* HF drops chars it cannot map when there is no unk token */
}

rq_status rq_bpe_word(const struct rq_tokenizer *t, rq_bpe_work *w, const char *buf, size_t len, rq_id_vec *out,
                      rq_err *err) {
    if (len == 0) return RQ_OK;
    if (len > INT32_MAX) return RQ_FAIL(err, RQ_ERR_ARG, "text segment of %zu bytes is too long to encode (max 2 GiB)", len);
    if (w->symbols_cap < len) {
        size_t bytes;
        if (!rq_mul_ok(len, sizeof(bpe_symbol), &bytes)) return RQ_FAIL(err, RQ_ERR_NOMEM, "BPE symbol array overflows");
        bpe_symbol *grown = realloc(w->symbols, bytes);
        if (!grown) return RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory for %zu BPE symbols", len);
        w->symbols = grown;
        w->symbols_cap = len;
    }
    bpe_symbol *sym = w->symbols;
    int32_t n = 0;
    for (size_t pos = 0; pos < len;) {
        uint32_t cp;
        int clen = rq_utf8_decode((const unsigned char *)buf + pos, len - pos, &cp);
        sym[n].start = (int32_t)pos;
        sym[n].len = clen;
        sym[n].prev = n - 1;
        sym[n].next = -1;
        if (n > 0) sym[n - 1].next = n;
        sym[n].id = initial_id(t, buf + pos, (size_t)clen);
        n++;
        pos += (size_t)clen;
    }
    w->heap_n = 0;
    for (int32_t i = 0; i + 1 < n; i++) RQ_TRY(push_pair(t, w, buf, i, err));
    while (w->heap_n > 0) {
        bpe_entry e = heap_pop(w);
        int32_t left = (int32_t)(uint32_t)e.key;
        bpe_symbol *l = &sym[left];
        if (l->len != e.left_len || l->next < 0) continue;
        bpe_symbol *r = &sym[l->next];
        if (r->len != e.right_len) continue;
        l->len += r->len;
        l->id = e.merged;
        l->next = r->next;
        if (r->next >= 0) sym[r->next].prev = left;
        r->len = 0;
        RQ_TRY(push_pair(t, w, buf, l->prev, err));
        RQ_TRY(push_pair(t, w, buf, left, err));
    }
    for (int32_t i = 0; i >= 0 && i < n; i = sym[i].next) RQ_TRY(emit_symbol(t, &sym[i], buf, out, err));
    return RQ_OK;
}

void rq_bpe_work_free(rq_bpe_work *w) {
    free(w->symbols);
    free(w->heap);
    memset(w, 0, sizeof *w);
}
