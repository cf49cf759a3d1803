/* llama2.c tokenizer.bin (reference doc 3.6): int32 max_token_length, then per
 * token float32 score, int32 byte length, the bytes. The vocab size is not in
 * the file; the model header gives it. The export wrote SentencePiece's "▁" as
 * a plain space and BOS/EOS as "\n<s>\n" / "\n</s>\n"; this loader undoes both so
 * the result is the SentencePiece vocabulary again. */
#include <stdlib.h>

#include "tok_internal.h"

typedef struct llama2c_vocab {
    char **tokens;
    int *lens;
    float *scores;
    int *types;
    int n;
} llama2c_vocab;

static void llama2c_vocab_free(llama2c_vocab *v) {
    if (v->tokens)
        for (int i = 0; i < v->n; i++) free(v->tokens[i]);
    free(v->tokens);
    free(v->lens);
    free(v->scores);
    free(v->types);
}

/* Copy a token, spaces back to "▁". */
static char *spm_token_from_export(const uint8_t *p, int len, int *out_len, rq_err *err) {
    int spaces = 0;
    for (int i = 0; i < len; i++) spaces += p[i] == ' ';
    size_t n = (size_t)len + 2 * (size_t)spaces;
    char *s = malloc(n + 1);
    if (!s) {
        RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory for a token of %zu bytes", n);
        return NULL;
    }
    size_t k = 0;
    for (int i = 0; i < len; i++) {
        if (p[i] == ' ') {
            memcpy(s + k, "\xE2\x96\x81", 3);
            k += 3;
        } else {
            s[k++] = (char)p[i];
        }
    }
    s[k] = 0;
    *out_len = (int)k;
    return s;
}

static rq_status parse(const char *path, const rq_file_view *f, int vocab_size, llama2c_vocab *v, rq_err *err) {
    const char *name = path;
    if (f->size < 4) return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: %zu bytes is too short for a llama2.c tokenizer (expected at least the 4-byte max_token_length)", name, f->size);
    int32_t max_len = (int32_t)rq_rd_u32(f->data);
    if (max_len <= 0) return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: max_token_length %d: expected a positive length", name, max_len);
    v->tokens = rq_calloc((size_t)vocab_size, sizeof(char *), err);
    v->lens = rq_calloc((size_t)vocab_size, sizeof(int), err);
    v->scores = rq_calloc((size_t)vocab_size, sizeof(float), err);
    v->types = rq_calloc((size_t)vocab_size, sizeof(int), err);
    if (!v->tokens || !v->lens || !v->scores || !v->types) return RQ_ERR_NOMEM;
    v->n = vocab_size;
    size_t off = 4;
    for (int i = 0; i < vocab_size; i++) {
        size_t left = f->size - off;
        if (left < 8)
            return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: token %d: the file ends (%zu bytes left, 8 needed for score and length); "
                           "the file holds fewer than the %d tokens the model expects", name, i, left, vocab_size);
        float score = rq_rd_f32(f->data + off);
        int32_t len = (int32_t)rq_rd_u32(f->data + off + 4);
        off += 8;
        left -= 8;
        if (len < 0) return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: token %d: negative length %d", name, i, len);
        if ((size_t)len > left)
            return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: token %d: length %d exceeds the file (%zu bytes left)", name, i, len, left);
        if (len > max_len)
            return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: token %d: length %d exceeds max_token_length %d", name, i, len, max_len);
        const uint8_t *p = f->data + off;
        off += (size_t)len;
        v->scores[i] = score;
        v->types[i] = RQ_TOKTYPE_NORMAL;
        if (len == 5 && memcmp(p, "<unk>", 5) == 0 && i == 0) v->types[i] = RQ_TOKTYPE_UNKNOWN;
        if (len == 5 && memcmp(p, "\n<s>\n", 5) == 0) p += 1, len = 3, v->types[i] = RQ_TOKTYPE_CONTROL;
        if (len == 6 && memcmp(p, "\n</s>\n", 6) == 0) p += 1, len = 4, v->types[i] = RQ_TOKTYPE_CONTROL;
        v->tokens[i] = spm_token_from_export(p, len, &v->lens[i], err);
        if (!v->tokens[i]) return RQ_ERR_NOMEM;
    }
    if (off != f->size)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: %zu bytes remain after %d tokens: the vocab size does not match the file "
                       "(the model says %d)", name, f->size - off, vocab_size, vocab_size);
    return RQ_OK;
}

rq_status rq_tokenizer_load_llama2c(const char *path, int vocab_size, rq_tokenizer **out, rq_err *err) {
    *out = NULL;
    if (!path) return RQ_FAIL(err, RQ_ERR_ARG, "llama2.c tokenizer: path is NULL");
    if (vocab_size <= 0 || vocab_size >= (1 << 30))
        return RQ_FAIL(err, RQ_ERR_ARG, "%s: vocab size %d: expected 1 .. 2^30 (from the model header)", path, vocab_size);
    rq_file_view f;
    RQ_TRY(rq_file_map(path, &f, err));
    llama2c_vocab v = {0};
    rq_status st = parse(path, &f, vocab_size, &v, err);
    rq_file_unmap(&f);
    if (st == RQ_OK) {
        int find_special[3] = {-1, -1, -1}; /* <unk>, <s>, </s> as the export marks them */
        for (int i = 0; i < v.n; i++) {
            if (v.types[i] == RQ_TOKTYPE_UNKNOWN && find_special[0] < 0) find_special[0] = i;
            if (v.types[i] == RQ_TOKTYPE_CONTROL && v.lens[i] == 3 && find_special[1] < 0) find_special[1] = i;
            if (v.types[i] == RQ_TOKTYPE_CONTROL && v.lens[i] == 4 && find_special[2] < 0) find_special[2] = i;
        }
        int specials[3], n_special = 0;
        for (int k = 0; k < 3; k++)
            if (find_special[k] >= 0) specials[n_special++] = find_special[k];
        rq_tokenizer_spec spec = {
            .kind = RQ_TOK_SPM,
            .pretok = RQ_PRETOK_NONE,
            .n_vocab = v.n,
            .tokens = (const char *const *)v.tokens,
            .token_lens = v.lens,
            .scores = v.scores,
            .token_types = v.types,
            .add_space_prefix = true,
            .add_bos_default = true, /* llama2.c and HF LLaMA-2 both start with BOS */
            .bos_id = find_special[1],
            .eos_id = find_special[2],
            .unk_id = find_special[0],
            .pad_id = -1,
            .special_ids = specials,
            .n_special = n_special,
        };
        st = rq_tokenizer_create(&spec, out, err);
        if (st != RQ_OK) rq_err_prefix(err, "%s: ", path);
    }
    llama2c_vocab_free(&v);
    return st;
}
