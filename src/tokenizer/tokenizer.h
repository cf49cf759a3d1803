/* Tokenizers: BPE with a rank-ordered heap, in two flavours.
 *
 *   RQ_TOK_SPM        SentencePiece-style BPE over code points with byte
 *                     fallback (<0xXX> tokens), "▁" for spaces and a dummy
 *                     prefix: LLaMA-2, TinyLlama, llama2.c tokenizer.bin,
 *                     GGUF tokenizer.ggml.model = "llama".
 *   RQ_TOK_BYTE_BPE   byte-level BPE (GPT-2 byte->char table) after a regex
 *                     pre-tokenizer split: GPT-2, LLaMA-3, SmolLM;
 *                     HF tokenizer.json and GGUF tokenizer.ggml.model = "gpt2".
 *
 * Every source (tokenizer.json, tokenizer.bin, GGUF metadata) is turned into
 * one rq_tokenizer_spec and built by rq_tokenizer_create. */
#ifndef RQ_TOKENIZER_H
#define RQ_TOKENIZER_H

#include "../core/core.h"

typedef enum rq_tok_kind { RQ_TOK_SPM = 1, RQ_TOK_BYTE_BPE = 2 } rq_tok_kind;

/* Pre-tokenizer split patterns for byte-level BPE. */
typedef enum rq_pretok {
    RQ_PRETOK_NONE = 0,   /* SPM: the whole segment is one word */
    RQ_PRETOK_GPT2,       /* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
    RQ_PRETOK_LLAMA3,     /* the LLaMA-3 pattern (case-insensitive contractions, \p{N}{1,3}, ...) */
    RQ_PRETOK_SMOLLM      /* every digit its own word, then the GPT-2 pattern */
} rq_pretok;

/* Token types as GGUF / SentencePiece number them. */
enum { RQ_TOKTYPE_NORMAL = 1, RQ_TOKTYPE_UNKNOWN = 2, RQ_TOKTYPE_CONTROL = 3, RQ_TOKTYPE_USER = 4,
       RQ_TOKTYPE_UNUSED = 5, RQ_TOKTYPE_BYTE = 6 };

typedef struct rq_tokenizer_spec {
    rq_tok_kind kind;
    rq_pretok pretok;
    int n_vocab;
    const char *const *tokens; /* n_vocab strings as the vocabulary stores them (UTF-8):
                                  SPM with "▁" for space (a tokenizer.bin's plain spaces are
                                  mapped to "▁" by its loader), byte-level in the GPT-2 char map */
    const int *token_lens;     /* byte lengths of tokens[i] (tokens may contain NUL); NULL: strlen */
    const float *scores;       /* SPM: merge priority (higher merges first); NULL for byte-level */
    const int *token_types;    /* RQ_TOKTYPE_*, or NULL (all normal) */
    const char *const *merges; /* byte-level: "left right" strings in rank order; NULL for SPM */
    int n_merges;
    bool ignore_merges;        /* LLaMA-3: a word that is itself a vocab entry is emitted whole */
    bool add_space_prefix;     /* SPM dummy prefix "▁" at the start of the text */
    bool add_bos_default;      /* does the tokenizer add BOS by default (HF post-processor) */
    int bos_id, eos_id, unk_id, pad_id; /* -1 when absent */
    /* Added/special tokens matched on raw text before BPE (ids into the vocab). */
    const int *special_ids;
    int n_special;
} rq_tokenizer_spec;

rq_status rq_tokenizer_create(const rq_tokenizer_spec *spec, rq_tokenizer **out, rq_err *err);
void rq_tokenizer_free(rq_tokenizer *t);

/* Loaders for the file formats that carry only a tokenizer. */
rq_status rq_tokenizer_load_llama2c(const char *path, int vocab_size, rq_tokenizer **out, rq_err *err);
rq_status rq_tokenizer_load_hf_json(const char *path, rq_tokenizer **out, rq_err *err);

typedef enum rq_bos_mode { RQ_BOS_OFF = 0, RQ_BOS_ON = 1, RQ_BOS_DEFAULT = 2 } rq_bos_mode;

/* Encode UTF-8 text (len bytes). bos: add BOS off/on/as the tokenizer does by
 * default. *ids is malloc'ed; the caller frees it. */
rq_status rq_tokenizer_encode(const rq_tokenizer *t, const char *text, size_t len, rq_bos_mode bos, int **ids,
                              int *n_ids, rq_err *err);
/* Decode ids to UTF-8 text (malloc'ed, NUL-terminated). skip_special: drop
 * control tokens (BOS/EOS/...). SPM drops the one leading space of the text
 * the way HF's decoder does when strip_leading_space is true. */
rq_status rq_tokenizer_decode(const rq_tokenizer *t, const int *ids, int n, bool skip_special, char **text,
                              rq_err *err);
/* The bytes one token contributes when it follows token prev (streaming
 * generation output). Writes at most cap bytes; returns the byte count. */
size_t rq_tokenizer_piece(const rq_tokenizer *t, int prev, int id, char *buf, size_t cap);

int rq_tokenizer_vocab_size(const rq_tokenizer *t);
int rq_tokenizer_bos(const rq_tokenizer *t);
int rq_tokenizer_eos(const rq_tokenizer *t);
rq_tok_kind rq_tokenizer_kind(const rq_tokenizer *t);
/* Token string as stored in the vocab (not decoded), or NULL when out of range. */
const char *rq_tokenizer_token(const rq_tokenizer *t, int id);
/* Id of an exact vocab string, or -1. */
int rq_tokenizer_find(const rq_tokenizer *t, const char *s);

/* The tokenizer as a spec again (the inverse of rq_tokenizer_create), for
 * writers that store it in another format (GGUF export). Everything in d->spec
 * points into storage d owns; free with rq_tokenizer_describe_free.
 *   tokens, token_lens, token_types   as the tokenizer holds them (SPM byte
 *                      pieces <0xXX> typed RQ_TOKTYPE_BYTE);
 *   scores             SPM only: the source's scores when it had them; for an
 *                      SPM built from a merge list, minus the rank of the first
 *                      merge that produces the token (the same merge order),
 *                      and -(n_merges + 1) for tokens no merge produces;
 *   merges             byte-level BPE: "left right" in rank order;
 *   special_ids        the added tokens matched on raw text. */
typedef struct rq_tokenizer_desc {
    rq_tokenizer_spec spec;
    const char **tokens;
    int *lens, *types, *special;
    float *scores;
    char **merges;
} rq_tokenizer_desc;
rq_status rq_tokenizer_describe(const rq_tokenizer *t, rq_tokenizer_desc *d, rq_err *err);
void rq_tokenizer_describe_free(rq_tokenizer_desc *d);

/* The tokenizer as Hugging Face tokenizers' tokenizer.json (write_hf_json.c), so
 * transformers' PreTrainedTokenizerFast encodes what rq_tokenizer_encode does:
 * byte-level BPE with its pre-tokenizer (GPT-2 regex; SmolLM: Digits(individual)
 * then the GPT-2 regex; LLaMA-3: its Split pattern), ByteLevel decoder; SPM as a
 * BPE with byte_fallback, the Prepend/Replace U+2581 normalizer and merges derived
 * from the scores the way transformers' SentencePiece converter does (every split
 * of a normal token into two vocab entries, ranked by the token's score). The
 * tokens matched on raw text (special_ids) become added_tokens; BOS is added by a
 * TemplateProcessing post-processor when the tokenizer adds it by default.
 * *json: a new cJSON tree (the caller frees it). */
struct cJSON;
rq_status rq_tokenizer_to_hf_json(const rq_tokenizer *t, struct cJSON **json, rq_err *err);

/* The pre-tokenizer split alone (byte-level BPE's "words"), for tests and
 * tools: *word_ends (malloc'ed, caller frees) receives the end offset of each
 * word; words are consecutive and cover the text. RQ_PRETOK_NONE: one word. */
rq_status rq_pretokenize(rq_pretok pattern, const char *text, size_t len, size_t **word_ends, size_t *n_words,
                         rq_err *err);

#endif
