/* Internals shared by the files of src/tokenizer (not part of the interface). */
#ifndef RQ_TOK_INTERNAL_H
#define RQ_TOK_INTERNAL_H

#include "tokenizer.h"

/* string -> token id: open addressing over ids; slot value id + 1, 0 = empty. */
typedef struct rq_str_map {
    uint32_t *slots;
    uint32_t mask;
} rq_str_map;

/* (left id, right id) -> (rank, merged id). */
typedef struct rq_pair_map {
    uint64_t *keys; /* UINT64_MAX = empty */
    int32_t *ranks;
    int32_t *merged;
    uint64_t mask;
} rq_pair_map;

struct rq_tokenizer {
    rq_tok_kind kind;
    rq_pretok pretok;
    int n_vocab;
    char *arena;        /* all token strings, each NUL-terminated */
    size_t *tok_offset; /* token i starts at arena + tok_offset[i] */
    int *tok_len;
    uint8_t *types;     /* RQ_TOKTYPE_* */
    int *merge_rank;    /* SPM without a merges list: rank of a merged token from its score (higher score,
                           lower rank), -1 for tokens that no merge may produce */
    float *scores;      /* the source's scores (SPM), or NULL: read back by rq_tokenizer_describe */
    rq_str_map vocab;
    rq_pair_map merges;
    bool has_merges;
    bool ignore_merges, add_space_prefix, add_bos_default;
    bool prefix_first_segment_only;
    bool spm_chunks_independent;    /* no token has "▁" after another char: SPM text may be split before
                                       each word's "▁" without changing the result (tokenizer.c) */ /* Metaspace prepend_scheme "first": not after an added token */
    int bos_id, eos_id, unk_id, pad_id;
    int byte_token[256];       /* SPM: id of <0xXX>, or -1 */
    int16_t *byte_value;       /* SPM: per token, the byte of a <0xXX> token, or -1 */
    int byte_char_id[256];     /* byte-level: id of the char that stands for each byte, or -1 */
    char byte_char[256][3];    /* byte-level: UTF-8 of the char for each byte */
    uint8_t byte_char_len[256];
    int16_t char_to_byte[324]; /* byte-level: code points 0..323 back to bytes, or -1 */
    int *special_ids;          /* added tokens matched on raw text, longest first */
    int n_special;
    bool special_first_byte[256];
};

int rq_str_map_get(const rq_str_map *m, const struct rq_tokenizer *t, const char *s, size_t len);

/* Pre-tokenizer word iterator (pretokenize.c). */
typedef struct rq_pretok_iter {
    rq_pretok pattern;
    const unsigned char *text;
    size_t len, pos;
    size_t piece_end; /* SmolLM: end of the current stretch without digits */
} rq_pretok_iter;

void rq_pretok_iter_init(rq_pretok_iter *it, rq_pretok pattern, const char *text, size_t len);
bool rq_pretok_iter_next(rq_pretok_iter *it, size_t *start, size_t *end);

/* A growable id list. */
typedef struct rq_id_vec {
    int *ids;
    size_t n, cap;
} rq_id_vec;

rq_status rq_id_vec_push(rq_id_vec *v, int id, rq_err *err);

/* Scratch for BPE over one word, reused across the words of one encode call. */
typedef struct rq_bpe_work {
    struct bpe_symbol *symbols;
    size_t symbols_cap;
    struct bpe_entry *heap;
    size_t heap_n, heap_cap;
} rq_bpe_work;

/* BPE over one word (bpe.c). SPM: buf is the normalized text ("▁" for spaces);
 * byte-level: the word in the byte->char map. Appends the ids to out. */
rq_status rq_bpe_word(const struct rq_tokenizer *t, rq_bpe_work *work, const char *buf, size_t len, rq_id_vec *out,
                      rq_err *err);
void rq_bpe_work_free(rq_bpe_work *work);

/* The pre-tokenizer split patterns as tokenizer.json writes them (load_hf_json.c). */
extern const char rq_gpt2_pattern[], rq_llama3_pattern[];

/* Builds the GPT-2 byte <-> char tables. */
void rq_byte_level_tables(struct rq_tokenizer *t);

/* The token string of id (NUL-terminated; length t->tok_len[id]). */
static inline const char *rq_tok_str(const struct rq_tokenizer *t, int id) { return t->arena + t->tok_offset[id]; }

#endif
