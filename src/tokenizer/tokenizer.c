/* Tokenizer construction, encoding and decoding (the BPE itself is in bpe.c,
 * the pre-tokenizer split in pretokenize.c, the file loaders in load_*.c). */
#include <stdlib.h>

#include "tok_internal.h"
#include "unicode.h"

/* ---- hash maps --------------------------------------------------------------------- */

static uint64_t hash_bytes(const char *s, size_t len) {
    uint64_t h = 0xCBF29CE484222325ull; /* FNV-1a */
    for (size_t i = 0; i < len; i++) h = (h ^ (unsigned char)s[i]) * 0x100000001B3ull;
    return h ^ (h >> 29);
}

static size_t table_size_for(size_t n) {
    size_t size = 16;
    while (size < n * 2) size *= 2; /* load factor at most 1/2 keeps probes short */
    return size;
}

int rq_str_map_get(const rq_str_map *m, const struct rq_tokenizer *t, const char *s, size_t len) {
    for (uint32_t i = (uint32_t)hash_bytes(s, len) & m->mask;; i = (i + 1) & m->mask) {
        uint32_t slot = m->slots[i];
        if (slot == 0) return -1;
        int id = (int)slot - 1;
        if ((size_t)t->tok_len[id] == len && memcmp(rq_tok_str(t, id), s, len) == 0) return id;
    }
}

/* Insert every token; a duplicate string keeps its lowest id. */
static rq_status build_vocab_map(struct rq_tokenizer *t, rq_err *err) {
    size_t size = table_size_for((size_t)t->n_vocab);
    t->vocab.slots = rq_calloc(size, sizeof(uint32_t), err);
    if (!t->vocab.slots) return RQ_ERR_NOMEM;
    t->vocab.mask = (uint32_t)(size - 1);
    for (int id = 0; id < t->n_vocab; id++) {
        const char *s = rq_tok_str(t, id);
        size_t len = (size_t)t->tok_len[id];
        for (uint32_t i = (uint32_t)hash_bytes(s, len) & t->vocab.mask;; i = (i + 1) & t->vocab.mask) {
            uint32_t slot = t->vocab.slots[i];
            if (slot == 0) {
                t->vocab.slots[i] = (uint32_t)id + 1;
                break;
            }
            int other = (int)slot - 1;
            if ((size_t)t->tok_len[other] == len && memcmp(rq_tok_str(t, other), s, len) == 0) break;
        }
    }
    return RQ_OK;
}

static rq_status build_merge_map(struct rq_tokenizer *t, const rq_tokenizer_spec *spec, rq_err *err) {
    size_t size = table_size_for((size_t)spec->n_merges);
    rq_pair_map *m = &t->merges;
    m->keys = rq_calloc(size, sizeof(uint64_t), err);
    m->ranks = rq_calloc(size, sizeof(int32_t), err);
    m->merged = rq_calloc(size, sizeof(int32_t), err);
    if (!m->keys || !m->ranks || !m->merged) return RQ_ERR_NOMEM;
    memset(m->keys, 0xFF, size * sizeof(uint64_t));
    m->mask = size - 1;
    char *joined = NULL;
    size_t joined_cap = 0;
    rq_status st = RQ_OK;
    for (int rank = 0; rank < spec->n_merges; rank++) {
        const char *line = spec->merges[rank];
        if (!line) {
            st = RQ_FAIL(err, RQ_ERR_FORMAT, "merge %d is NULL", rank);
            break;
        }
        const char *space = strchr(line, ' ');
        if (!space || space == line || space[1] == 0 || strchr(space + 1, ' ')) {
            st = RQ_FAIL(err, RQ_ERR_FORMAT, "merge %d \"%.80s\": expected two tokens separated by one space", rank,
                         line);
            break;
        }
        size_t left_len = (size_t)(space - line), right_len = strlen(space + 1);
        int left = rq_str_map_get(&t->vocab, t, line, left_len);
        int right = rq_str_map_get(&t->vocab, t, space + 1, right_len);
        if (joined_cap < left_len + right_len) {
            joined_cap = 2 * (left_len + right_len);
            char *grown = realloc(joined, joined_cap);
            if (!grown) {
                st = RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory building the merge table");
                break;
            }
            joined = grown;
        }
        memcpy(joined, line, left_len);
        memcpy(joined + left_len, space + 1, right_len);
        int merged = rq_str_map_get(&t->vocab, t, joined, left_len + right_len);
        if (left < 0 || right < 0 || merged < 0) {
            st = RQ_FAIL(err, RQ_ERR_FORMAT, "merge %d \"%.80s\": %s is not in the vocabulary", rank, line,
                         left < 0 ? "the left token" : right < 0 ? "the right token" : "the merged token");
            break;
        }
        uint64_t key = ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
        uint64_t h = (key * 0x9E3779B97F4A7C15ull) >> 17;
        for (uint64_t i = h & m->mask;; i = (i + 1) & m->mask) {
            if (m->keys[i] == key) break; /* a repeated merge keeps its first (lowest) rank */
            if (m->keys[i] == UINT64_MAX) {
                m->keys[i] = key;
                m->ranks[i] = rank;
                m->merged[i] = merged;
                break;
            }
        }
    }
    free(joined);
    return st;
}

/* ---- construction -------------------------------------------------------------------- */

typedef struct scored_id {
    float score;
    int id;
} scored_id;

static int compare_by_score(const void *a, const void *b) {
    const scored_id *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* SentencePiece merges by score: turn scores into ranks so the heap has one key. */
static rq_status build_score_ranks(struct rq_tokenizer *t, const float *scores, rq_err *err) {
    scored_id *order = rq_calloc((size_t)t->n_vocab, sizeof *order, err);
    t->merge_rank = rq_calloc((size_t)t->n_vocab, sizeof(int), err);
    if (!order || !t->merge_rank) {
        free(order);
        return RQ_ERR_NOMEM;
    }
    int n = 0;
    for (int id = 0; id < t->n_vocab; id++) {
        t->merge_rank[id] = -1;
        uint8_t ty = t->types[id];
        bool mergeable = ty == RQ_TOKTYPE_NORMAL || ty == RQ_TOKTYPE_USER;
        if (mergeable && !(scores[id] != scores[id])) order[n++] = (scored_id){scores[id], id}; /* NaN never merges */
    }
    qsort(order, (size_t)n, sizeof *order, compare_by_score);
    /* equal scores share a rank, so ties go to the leftmost pair as in SentencePiece */
    int rank = 0;
    for (int i = 0; i < n; i++) {
        if (i > 0 && order[i].score != order[i - 1].score) rank = i;
        t->merge_rank[order[i].id] = rank;
    }
    free(order);
    return RQ_OK;
}

void rq_byte_level_tables(struct rq_tokenizer *t) {
    int next_extra = 256;
    for (int i = 0; i < 324; i++) t->char_to_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        int cp = printable ? b : next_extra++;
        t->char_to_byte[cp] = (int16_t)b;
        if (cp < 0x80) {
            t->byte_char[b][0] = (char)cp;
            t->byte_char_len[b] = 1;
        } else {
            t->byte_char[b][0] = (char)(0xC0 | (cp >> 6));
            t->byte_char[b][1] = (char)(0x80 | (cp & 0x3F));
            t->byte_char_len[b] = 2;
        }
    }
}

/* "<0xXX>" with uppercase hex, as SentencePiece writes byte pieces: the byte, or -1. */
static int parse_byte_token(const char *s, int len) {
    if (len != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

static int compare_special_longest_first(const void *a, const void *b, const struct rq_tokenizer *t) {
    int ia = *(const int *)a, ib = *(const int *)b;
    if (t->tok_len[ia] != t->tok_len[ib]) return t->tok_len[ia] > t->tok_len[ib] ? -1 : 1;
    return ia < ib ? -1 : ia > ib;
}

/* Insertion sort: few added tokens, and qsort has no context pointer. */
static void sort_specials(struct rq_tokenizer *t) {
    for (int i = 1; i < t->n_special; i++) {
        int v = t->special_ids[i], j = i;
        while (j > 0 && compare_special_longest_first(&t->special_ids[j - 1], &v, t) > 0) {
            t->special_ids[j] = t->special_ids[j - 1];
            j--;
        }
        t->special_ids[j] = v;
    }
}

/* A "▁" at pos that follows a char other than "▁": where a new word starts in
 * SPM's normalized text. UTF-8 makes this a byte test: 0xE2 never continues a
 * char, so "\xE2\x96\x81" is always a whole "▁". */
static bool spm_chunk_boundary(const char *s, size_t pos, size_t len) {
    static const char meta[3] = {(char)0xE2, (char)0x96, (char)0x81};
    if (pos == 0 || pos + 3 > len || memcmp(s + pos, meta, 3) != 0) return false;
    return !(pos >= 3 && memcmp(s + pos - 3, meta, 3) == 0);
}

static rq_status check_spec(const rq_tokenizer_spec *spec, rq_err *err) {
    if (!spec) return RQ_FAIL(err, RQ_ERR_ARG, "tokenizer spec is NULL");
    if (spec->kind != RQ_TOK_SPM && spec->kind != RQ_TOK_BYTE_BPE)
        return RQ_FAIL(err, RQ_ERR_ARG, "tokenizer kind %d: expected RQ_TOK_SPM or RQ_TOK_BYTE_BPE", (int)spec->kind);
    if (spec->n_vocab <= 0 || spec->n_vocab >= (1 << 30))
        return RQ_FAIL(err, RQ_ERR_ARG, "tokenizer vocab size %d: expected 1 .. 2^30", spec->n_vocab);
    if (!spec->tokens) return RQ_FAIL(err, RQ_ERR_ARG, "tokenizer spec has no tokens");
    if (spec->kind == RQ_TOK_BYTE_BPE && (!spec->merges || spec->n_merges <= 0) && spec->n_merges != 0)
        return RQ_FAIL(err, RQ_ERR_ARG, "byte-level tokenizer: %d merges but no merge list", spec->n_merges);
    if (spec->n_merges < 0) return RQ_FAIL(err, RQ_ERR_ARG, "tokenizer merge count %d is negative", spec->n_merges);
    if (spec->n_merges > 0 && !spec->merges) return RQ_FAIL(err, RQ_ERR_ARG, "tokenizer spec: n_merges %d but merges is NULL", spec->n_merges);
    if (spec->kind == RQ_TOK_SPM && !spec->merges && !spec->scores)
        return RQ_FAIL(err, RQ_ERR_ARG, "SentencePiece tokenizer needs scores or a merge list");
    if (spec->kind == RQ_TOK_BYTE_BPE && spec->pretok == RQ_PRETOK_NONE)
        return RQ_FAIL(err, RQ_ERR_ARG, "byte-level tokenizer needs a pre-tokenizer pattern");
    if ((unsigned)spec->pretok > RQ_PRETOK_SMOLLM) return RQ_FAIL(err, RQ_ERR_ARG, "pre-tokenizer %d is unknown", (int)spec->pretok);
    if (spec->n_special < 0 || (spec->n_special > 0 && !spec->special_ids))
        return RQ_FAIL(err, RQ_ERR_ARG, "tokenizer spec: bad special token list (%d ids)", spec->n_special);
    const int ids[4] = {spec->bos_id, spec->eos_id, spec->unk_id, spec->pad_id};
    const char *names[4] = {"bos", "eos", "unk", "pad"};
    for (int i = 0; i < 4; i++)
        if (ids[i] < -1 || ids[i] >= spec->n_vocab)
            return RQ_FAIL(err, RQ_ERR_ARG, "tokenizer %s id %d is outside the vocabulary (size %d)", names[i], ids[i],
                           spec->n_vocab);
    for (int i = 0; i < spec->n_special; i++)
        if (spec->special_ids[i] < 0 || spec->special_ids[i] >= spec->n_vocab)
            return RQ_FAIL(err, RQ_ERR_ARG, "special token %d: id %d is outside the vocabulary (size %d)", i,
                           spec->special_ids[i], spec->n_vocab);
    return RQ_OK;
}

static rq_status create(const rq_tokenizer_spec *spec, struct rq_tokenizer *t, rq_err *err) {
    int n = spec->n_vocab;
    t->kind = spec->kind;
    t->pretok = spec->kind == RQ_TOK_SPM ? RQ_PRETOK_NONE : spec->pretok;
    t->n_vocab = n;
    t->ignore_merges = spec->ignore_merges;
    t->add_space_prefix = spec->kind == RQ_TOK_SPM && spec->add_space_prefix;
    t->add_bos_default = spec->add_bos_default;
    t->bos_id = spec->bos_id;
    t->eos_id = spec->eos_id;
    t->unk_id = spec->unk_id;
    t->pad_id = spec->pad_id;

    t->tok_offset = rq_calloc((size_t)n, sizeof(size_t), err);
    t->tok_len = rq_calloc((size_t)n, sizeof(int), err);
    t->types = rq_calloc((size_t)n, 1, err);
    t->byte_value = rq_calloc((size_t)n, sizeof(int16_t), err);
    if (!t->tok_offset || !t->tok_len || !t->types || !t->byte_value) return RQ_ERR_NOMEM;
    size_t total = 0;
    for (int id = 0; id < n; id++) {
        if (!spec->tokens[id]) return RQ_FAIL(err, RQ_ERR_ARG, "token %d is NULL", id);
        int len = spec->token_lens ? spec->token_lens[id] : (int)strlen(spec->tokens[id]);
        if (len < 0) return RQ_FAIL(err, RQ_ERR_ARG, "token %d has negative length %d", id, len);
        if (len > 65535) return RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "token %d is %d bytes long (at most 65535 supported)", id, len);
        t->tok_offset[id] = total;
        t->tok_len[id] = len;
        total += (size_t)len + 1;
    }
    t->arena = rq_calloc(total ? total : 1, 1, err);
    if (!t->arena) return RQ_ERR_NOMEM;
    for (int id = 0; id < n; id++) memcpy(t->arena + t->tok_offset[id], spec->tokens[id], (size_t)t->tok_len[id]);

    for (int b = 0; b < 256; b++) t->byte_token[b] = -1, t->byte_char_id[b] = -1;
    for (int id = 0; id < n; id++) {
        int ty = spec->token_types ? spec->token_types[id] : RQ_TOKTYPE_NORMAL;
        if (ty < RQ_TOKTYPE_NORMAL || ty > RQ_TOKTYPE_BYTE) ty = RQ_TOKTYPE_NORMAL; /* unknown types behave as text */
        int byte = t->kind == RQ_TOK_SPM ? parse_byte_token(rq_tok_str(t, id), t->tok_len[id]) : -1;
        /* SPM: <0xXX> pieces are byte tokens whether or not the source typed them */
        if (byte >= 0 && (ty == RQ_TOKTYPE_NORMAL || ty == RQ_TOKTYPE_BYTE)) {
            ty = RQ_TOKTYPE_BYTE;
            if (t->byte_token[byte] < 0) t->byte_token[byte] = id;
        }
        t->types[id] = (uint8_t)ty;
        t->byte_value[id] = (int16_t)(ty == RQ_TOKTYPE_BYTE ? byte : -1);
    }
    RQ_TRY(build_vocab_map(t, err));
    if (spec->scores) { /* kept for writers of other formats (describe.c) */
        t->scores = rq_calloc((size_t)n, sizeof(float), err);
        if (!t->scores) return RQ_ERR_NOMEM;
        memcpy(t->scores, spec->scores, (size_t)n * sizeof(float));
    }
    if (spec->merges && spec->n_merges > 0) {
        RQ_TRY(build_merge_map(t, spec, err));
        t->has_merges = true;
    } else if (t->kind == RQ_TOK_SPM) {
        RQ_TRY(build_score_ranks(t, spec->scores, err));
    }
    if (t->kind == RQ_TOK_SPM) {
        t->spm_chunks_independent = true;
        for (int id = 0; id < n && t->spm_chunks_independent; id++)
            for (int i = 1; i < t->tok_len[id]; i++)
                if (spm_chunk_boundary(rq_tok_str(t, id), (size_t)i, (size_t)t->tok_len[id])) {
                    t->spm_chunks_independent = false;
                    break;
                }
    }
    if (t->kind == RQ_TOK_BYTE_BPE) {
        rq_byte_level_tables(t);
        for (int b = 0; b < 256; b++)
            t->byte_char_id[b] = rq_str_map_get(&t->vocab, t, t->byte_char[b], t->byte_char_len[b]);
    }
    if (spec->n_special > 0) {
        t->special_ids = rq_calloc((size_t)spec->n_special, sizeof(int), err);
        if (!t->special_ids) return RQ_ERR_NOMEM;
        for (int i = 0; i < spec->n_special; i++) {
            int id = spec->special_ids[i];
            if (t->tok_len[id] == 0) continue; /* an empty added token would match everywhere */
            t->special_ids[t->n_special++] = id;
            t->special_first_byte[(unsigned char)rq_tok_str(t, id)[0]] = true;
        }
        sort_specials(t);
    }
    return RQ_OK;
}

rq_status rq_tokenizer_create(const rq_tokenizer_spec *spec, rq_tokenizer **out, rq_err *err) {
    *out = NULL;
    RQ_TRY(check_spec(spec, err));
    struct rq_tokenizer *t = rq_calloc(1, sizeof *t, err);
    if (!t) return RQ_ERR_NOMEM;
    rq_status st = create(spec, t, err);
    if (st != RQ_OK) {
        rq_tokenizer_free(t);
        return st;
    }
    *out = t;
    return RQ_OK;
}

void rq_tokenizer_free(rq_tokenizer *t) {
    if (!t) return;
    free(t->arena);
    free(t->tok_offset);
    free(t->tok_len);
    free(t->types);
    free(t->merge_rank);
    free(t->scores);
    free(t->byte_value);
    free(t->vocab.slots);
    free(t->merges.keys);
    free(t->merges.ranks);
    free(t->merges.merged);
    free(t->special_ids);
    free(t);
}

/* ---- encoding ---------------------------------------------------------------------- */

rq_status rq_id_vec_push(rq_id_vec *v, int id, rq_err *err) {
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 64, bytes;
        if (!rq_mul_ok(cap, sizeof(int), &bytes) || cap > INT32_MAX)
            return RQ_FAIL(err, RQ_ERR_NOMEM, "token list of %zu ids is too long", cap);
        int *grown = realloc(v->ids, bytes);
        if (!grown) return RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory for %zu token ids", cap);
        v->ids = grown;
        v->cap = cap;
    }
    v->ids[v->n++] = id;
    return RQ_OK;
}

/* Per-call cache of byte-level word results: natural text repeats its words, and
 * a hash lookup is much cheaper than BPE. Keys point into the caller's text. */
typedef struct word_cache {
    struct word_cache_slot {
        const char *word; /* NULL = empty */
        uint32_t len, first, count; /* ids pool[first .. first + count) */
    } *slots;
    size_t mask, used;
    rq_id_vec pool;
} word_cache;

static void word_cache_free(word_cache *c) {
    free(c->slots);
    free(c->pool.ids);
}

static struct word_cache_slot *word_cache_find(word_cache *c, const char *w, size_t len) {
    for (size_t i = hash_bytes(w, len) & c->mask;; i = (i + 1) & c->mask) {
        struct word_cache_slot *s = &c->slots[i];
        if (!s->word || (s->len == len && memcmp(s->word, w, len) == 0)) return s;
    }
}

static rq_status word_cache_grow(word_cache *c, rq_err *err) {
    size_t size = c->slots ? (c->mask + 1) * 2 : 1024;
    struct word_cache_slot *old = c->slots;
    size_t old_size = c->slots ? c->mask + 1 : 0;
    c->slots = rq_calloc(size, sizeof *c->slots, err);
    if (!c->slots) {
        c->slots = old;
        return RQ_ERR_NOMEM;
    }
    c->mask = size - 1;
    for (size_t i = 0; i < old_size; i++)
        if (old[i].word) *word_cache_find(c, old[i].word, old[i].len) = old[i];
    free(old);
    return RQ_OK;
}

static void word_cache_clear(word_cache *c) {
    if (c->slots) memset(c->slots, 0, (c->mask + 1) * sizeof *c->slots);
    c->used = 0;
    c->pool.n = 0;
}

/* Remember a word's ids in slot (found empty by word_cache_find). */
static rq_status word_cache_store(word_cache *c, struct word_cache_slot *slot, const char *word, size_t len,
                                  const int *ids, size_t count, rq_err *err) {
    if (c->pool.n + count > UINT32_MAX) return RQ_OK; /* cache full: keep encoding without it */
    slot->word = word;
    slot->len = (uint32_t)len;
    slot->first = (uint32_t)c->pool.n;
    slot->count = (uint32_t)count;
    c->used++;
    for (size_t i = 0; i < count; i++) RQ_TRY(rq_id_vec_push(&c->pool, ids[i], err));
    return RQ_OK;
}

typedef struct encode_state {
    const struct rq_tokenizer *t;
    rq_id_vec out;
    rq_bpe_work work;
    char *buf; /* normalized (SPM) or byte->char mapped (byte-level) text */
    size_t buf_cap;
    word_cache cache;
} encode_state;

static rq_status reserve_buf(encode_state *s, size_t need, rq_err *err) {
    if (need <= s->buf_cap) return RQ_OK;
    size_t cap = need < 256 ? 256 : need;
    char *grown = realloc(s->buf, cap);
    if (!grown) return RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory for %zu bytes of normalized text", cap);
    s->buf = grown;
    s->buf_cap = cap;
    return RQ_OK;
}

/* Encode one chunk of SPM normalized text through the per-call cache. The keys
 * point into s->buf, so the cache is emptied for every segment. */
static rq_status encode_spm_chunk(encode_state *s, const char *chunk, size_t len, rq_err *err) {
    word_cache *c = &s->cache;
    if (len > UINT32_MAX / 2) return RQ_FAIL(err, RQ_ERR_ARG, "text chunk of %zu bytes is too long", len);
    if ((c->used + 1) * 2 > (c->slots ? c->mask + 1 : 0)) RQ_TRY(word_cache_grow(c, err));
    struct word_cache_slot *slot = word_cache_find(c, chunk, len);
    if (slot->word) {
        for (uint32_t i = 0; i < slot->count; i++) RQ_TRY(rq_id_vec_push(&s->out, c->pool.ids[slot->first + i], err));
        return RQ_OK;
    }
    size_t first = s->out.n;
    RQ_TRY(rq_bpe_word(s->t, &s->work, chunk, len, &s->out, err));
    return word_cache_store(c, slot, chunk, len, s->out.ids + first, s->out.n - first, err);
}

static rq_status encode_spm_segment(encode_state *s, const char *text, size_t len, bool at_text_start, rq_err *err) {
    const struct rq_tokenizer *t = s->t;
    if (len == 0) return RQ_OK;
    size_t need;
    if (!rq_mul_ok(len, 3, &need) || need > SIZE_MAX - 3) return RQ_FAIL(err, RQ_ERR_ARG, "text too long");
    RQ_TRY(reserve_buf(s, need + 3, err));
    size_t n = 0;
    static const char meta[3] = {(char)0xE2, (char)0x96, (char)0x81}; /* U+2581 "▁" */
    if (t->add_space_prefix && (at_text_start || !t->prefix_first_segment_only)) {
        memcpy(s->buf, meta, 3);
        n = 3;
    }
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') {
            memcpy(s->buf + n, meta, 3);
            n += 3;
        } else {
            s->buf[n++] = text[i];
        }
    }
    if (!t->spm_chunks_independent) return rq_bpe_word(t, &s->work, s->buf, n, &s->out, err);
    /* No vocab entry has a "▁" after another char, so no merge can ever join the
     * chunks "...x" and "▁y...": BPE on each chunk gives exactly the ids of BPE on
     * the whole segment, with small heaps and repeated words served from the cache. */
    word_cache_clear(&s->cache);
    size_t start = 0;
    for (size_t i = 1; i < n; i++) {
        if ((unsigned char)s->buf[i] != 0xE2 || !spm_chunk_boundary(s->buf, i, n)) continue;
        RQ_TRY(encode_spm_chunk(s, s->buf + start, i - start, err));
        start = i;
    }
    return encode_spm_chunk(s, s->buf + start, n - start, err);
}

static rq_status encode_byte_level_word(encode_state *s, const char *word, size_t len, rq_err *err) {
    const struct rq_tokenizer *t = s->t;
    if (len > UINT32_MAX / 2) return RQ_FAIL(err, RQ_ERR_ARG, "word of %zu bytes is too long", len);
    word_cache *c = &s->cache;
    if ((c->used + 1) * 2 > (c->slots ? c->mask + 1 : 0)) RQ_TRY(word_cache_grow(c, err));
    struct word_cache_slot *slot = word_cache_find(c, word, len);
    if (slot->word) {
        for (uint32_t i = 0; i < slot->count; i++) RQ_TRY(rq_id_vec_push(&s->out, c->pool.ids[slot->first + i], err));
        return RQ_OK;
    }
    RQ_TRY(reserve_buf(s, 2 * len, err));
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char b = (unsigned char)word[i];
        memcpy(s->buf + n, t->byte_char[b], t->byte_char_len[b]);
        n += t->byte_char_len[b];
    }
    size_t first = s->out.n;
    int whole = t->ignore_merges ? rq_str_map_get(&t->vocab, t, s->buf, n) : -1;
    if (whole >= 0) RQ_TRY(rq_id_vec_push(&s->out, whole, err));
    else RQ_TRY(rq_bpe_word(t, &s->work, s->buf, n, &s->out, err));
    return word_cache_store(c, slot, word, len, s->out.ids + first, s->out.n - first, err);
}

static rq_status encode_segment(encode_state *s, const char *text, size_t len, bool at_text_start, rq_err *err) {
    if (s->t->kind == RQ_TOK_SPM) return encode_spm_segment(s, text, len, at_text_start, err);
    rq_pretok_iter it;
    rq_pretok_iter_init(&it, s->t->pretok, text, len);
    size_t start, end;
    while (rq_pretok_iter_next(&it, &start, &end)) RQ_TRY(encode_byte_level_word(s, text + start, end - start, err));
    return RQ_OK;
}

/* Leftmost-longest added token at pos, or -1 (specials are sorted longest first). */
static int match_special(const struct rq_tokenizer *t, const char *text, size_t len, size_t pos) {
    for (int i = 0; i < t->n_special; i++) {
        int id = t->special_ids[i];
        size_t tl = (size_t)t->tok_len[id];
        if (tl <= len - pos && memcmp(text + pos, rq_tok_str(t, id), tl) == 0) return id;
    }
    return -1;
}

static rq_status encode_all(encode_state *s, const char *text, size_t len, rq_bos_mode bos, rq_err *err) {
    const struct rq_tokenizer *t = s->t;
    bool add_bos = bos == RQ_BOS_ON || (bos == RQ_BOS_DEFAULT && t->add_bos_default);
    if (add_bos && t->bos_id >= 0) RQ_TRY(rq_id_vec_push(&s->out, t->bos_id, err));
    size_t segment = 0;
    for (size_t pos = 0; pos < len;) {
        int id = t->special_first_byte[(unsigned char)text[pos]] ? match_special(t, text, len, pos) : -1;
        if (id < 0) {
            pos++;
            continue;
        }
        RQ_TRY(encode_segment(s, text + segment, pos - segment, segment == 0, err));
        RQ_TRY(rq_id_vec_push(&s->out, id, err));
        pos += (size_t)t->tok_len[id];
        segment = pos;
    }
    return encode_segment(s, text + segment, len - segment, segment == 0, err);
}

rq_status rq_tokenizer_encode(const rq_tokenizer *t, const char *text, size_t len, rq_bos_mode bos, int **ids,
                              int *n_ids, rq_err *err) {
    *ids = NULL;
    *n_ids = 0;
    if (!t) return RQ_FAIL(err, RQ_ERR_ARG, "rq_tokenizer_encode: tokenizer is NULL");
    if (!text && len) return RQ_FAIL(err, RQ_ERR_ARG, "rq_tokenizer_encode: text is NULL but len is %zu", len);
    encode_state s;
    memset(&s, 0, sizeof s);
    s.t = t;
    rq_status st = encode_all(&s, text, len, bos, err);
    if (st == RQ_OK && s.out.n > INT32_MAX) st = RQ_FAIL(err, RQ_ERR_ARG, "text gives more than 2^31 tokens");
    if (st == RQ_OK && !s.out.ids) st = rq_id_vec_push(&s.out, 0, err), s.out.n = 0; /* a valid pointer for 0 ids */
    rq_bpe_work_free(&s.work);
    word_cache_free(&s.cache);
    free(s.buf);
    if (st != RQ_OK) {
        free(s.out.ids);
        return st;
    }
    *ids = s.out.ids;
    *n_ids = (int)s.out.n;
    return RQ_OK;
}

/* ---- decoding ----------------------------------------------------------------------- */

static const char replacement_char[3] = {(char)0xEF, (char)0xBF, (char)0xBD}; /* U+FFFD */

/* Bytes taken by the sequence at s: a whole character, or the maximal subpart of
 * an ill-formed one (at least 1), as in Unicode's "substitution of maximal
 * subparts" that Rust's and Python's lossy decoding follow. *valid tells which. */
static size_t utf8_subpart(const unsigned char *s, size_t n, bool *valid) {
    unsigned char b0 = s[0];
    *valid = false;
    if (b0 < 0x80) {
        *valid = true;
        return 1;
    }
    size_t need;
    unsigned char lo = 0x80, hi = 0xBF;
    if (b0 >= 0xC2 && b0 <= 0xDF) need = 2;
    else if (b0 >= 0xE0 && b0 <= 0xEF) {
        need = 3;
        if (b0 == 0xE0) lo = 0xA0;
        if (b0 == 0xED) hi = 0x9F;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        need = 4;
        if (b0 == 0xF0) lo = 0x90;
        if (b0 == 0xF4) hi = 0x8F;
    } else
        return 1;
    size_t i = 1;
    for (; i < need && i < n; i++) {
        unsigned char c = s[i];
        if (i == 1 ? (c < lo || c > hi) : (c & 0xC0) != 0x80) return i;
    }
    if (i == need) *valid = true;
    return i;
}

/* Append bytes with every ill-formed part replaced by U+FFFD. */
static void append_lossy(rq_buf *b, const char *p, size_t n) {
    size_t i = 0;
    while (i < n) {
        bool valid;
        size_t k = utf8_subpart((const unsigned char *)p + i, n - i, &valid);
        if (valid) rq_buf_append(b, p + i, k);
        else rq_buf_append(b, replacement_char, 3);
        i += k;
    }
}

static bool utf8_all_valid(const char *p, size_t n) {
    for (size_t i = 0; i < n;) {
        bool valid;
        i += utf8_subpart((const unsigned char *)p + i, n - i, &valid);
        if (!valid) return false;
    }
    return true;
}

static bool is_skipped(const struct rq_tokenizer *t, int id, bool skip_special) {
    return skip_special && (t->types[id] == RQ_TOKTYPE_CONTROL || t->types[id] == RQ_TOKTYPE_UNKNOWN);
}

/* Append a token's text with "▁" turned into spaces. */
static void append_spm_text(rq_buf *b, const char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        if (i + 3 <= n && (unsigned char)s[i] == 0xE2 && (unsigned char)s[i + 1] == 0x96 && (unsigned char)s[i + 2] == 0x81) {
            rq_buf_append(b, " ", 1);
            i += 3;
        } else {
            rq_buf_append(b, s + i, 1);
            i++;
        }
    }
}

/* HF's ByteFallback decoder: a run of <0xXX> tokens that is valid UTF-8 becomes
 * its text; otherwise every byte of the run becomes U+FFFD. */
static void flush_bytes(rq_buf *out, const char *bytes, size_t n) {
    if (utf8_all_valid(bytes, n)) rq_buf_append(out, bytes, n);
    else
        for (size_t i = 0; i < n; i++) rq_buf_append(out, replacement_char, 3);
}

static void decode_spm(const struct rq_tokenizer *t, const int *ids, int n, bool skip_special, rq_buf *raw) {
    rq_buf bytes = {0};
    for (int i = 0; i < n; i++) {
        int id = ids[i];
        if (is_skipped(t, id, skip_special)) continue;
        if (t->byte_value[id] >= 0) {
            char c = (char)t->byte_value[id];
            rq_buf_append(&bytes, &c, 1);
            continue;
        }
        if (bytes.len) flush_bytes(raw, bytes.data, bytes.len), rq_buf_clear(&bytes);
        append_spm_text(raw, rq_tok_str(t, id), (size_t)t->tok_len[id]);
    }
    if (bytes.len) flush_bytes(raw, bytes.data, bytes.len);
    if (bytes.failed) raw->failed = true;
    rq_buf_free(&bytes);
}

/* Byte-level token text back to bytes; chars outside the table (added tokens
 * written as plain text) pass through unchanged. */
static void append_byte_level_text(const struct rq_tokenizer *t, rq_buf *b, const char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        int len = rq_utf8_decode((const unsigned char *)s + i, n - i, &cp);
        if (cp < 324 && t->char_to_byte[cp] >= 0) {
            char c = (char)t->char_to_byte[cp];
            rq_buf_append(b, &c, 1);
        } else {
            rq_buf_append(b, s + i, (size_t)len);
        }
        i += (size_t)len;
    }
}

rq_status rq_tokenizer_decode(const rq_tokenizer *t, const int *ids, int n, bool skip_special, char **text,
                              rq_err *err) {
    *text = NULL;
    if (!t) return RQ_FAIL(err, RQ_ERR_ARG, "rq_tokenizer_decode: tokenizer is NULL");
    if (n < 0 || (n > 0 && !ids)) return RQ_FAIL(err, RQ_ERR_ARG, "rq_tokenizer_decode: bad id list (%d ids)", n);
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= t->n_vocab)
            return RQ_FAIL(err, RQ_ERR_ARG, "decode: id %d at position %d is outside the vocabulary (size %d)", ids[i], i,
                           t->n_vocab);
    rq_buf raw = {0}, out = {0};
    if (t->kind == RQ_TOK_SPM) {
        decode_spm(t, ids, n, skip_special, &raw);
    } else {
        for (int i = 0; i < n; i++)
            if (!is_skipped(t, ids[i], skip_special))
                append_byte_level_text(t, &raw, rq_tok_str(t, ids[i]), (size_t)t->tok_len[ids[i]]);
    }
    size_t skip = 0;
    if (t->kind == RQ_TOK_SPM && t->add_space_prefix && raw.len > 0 && raw.data[0] == ' ') skip = 1; /* HF Strip(" ", 1, 0) */
    append_lossy(&out, raw.data ? raw.data + skip : "", raw.len - skip);
    rq_buf_append(&out, "", 0);
    bool failed = raw.failed || out.failed;
    rq_buf_free(&raw);
    if (failed) {
        rq_buf_free(&out);
        return RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory decoding %d tokens", n);
    }
    *text = out.data;
    return RQ_OK;
}

size_t rq_tokenizer_piece(const rq_tokenizer *t, int prev, int id, char *buf, size_t cap) {
    if (!t || id < 0 || id >= t->n_vocab || !buf) return 0;
    if (t->types[id] == RQ_TOKTYPE_CONTROL || t->types[id] == RQ_TOKTYPE_UNKNOWN) return 0;
    rq_buf b = {0};
    if (t->kind == RQ_TOK_SPM) {
        if (t->byte_value[id] >= 0) {
            char c = (char)t->byte_value[id];
            rq_buf_append(&b, &c, 1);
        } else {
            append_spm_text(&b, rq_tok_str(t, id), (size_t)t->tok_len[id]);
        }
    } else {
        append_byte_level_text(t, &b, rq_tok_str(t, id), (size_t)t->tok_len[id]);
    }
    size_t skip = 0;
    /* the dummy prefix: the first piece of a text (after BOS or nothing) loses its leading space */
    bool text_start = prev < 0 || prev == t->bos_id;
    if (t->kind == RQ_TOK_SPM && t->add_space_prefix && text_start && b.len > 0 && b.data[0] == ' ') skip = 1;
    size_t n = b.failed ? 0 : b.len - skip;
    if (n > cap) n = cap;
    if (n) memcpy(buf, b.data + skip, n);
    rq_buf_free(&b);
    return n;
}

/* ---- accessors ----------------------------------------------------------------------- */

int rq_tokenizer_vocab_size(const rq_tokenizer *t) { return t ? t->n_vocab : 0; }
int rq_tokenizer_bos(const rq_tokenizer *t) { return t ? t->bos_id : -1; }
int rq_tokenizer_eos(const rq_tokenizer *t) { return t ? t->eos_id : -1; }
rq_tok_kind rq_tokenizer_kind(const rq_tokenizer *t) { return t ? t->kind : (rq_tok_kind)0; }

const char *rq_tokenizer_token(const rq_tokenizer *t, int id) {
    if (!t || id < 0 || id >= t->n_vocab) return NULL;
    return rq_tok_str(t, id);
}

int rq_tokenizer_find(const rq_tokenizer *t, const char *s) {
    if (!t || !s) return -1;
    return rq_str_map_get(&t->vocab, t, s, strlen(s));
}
