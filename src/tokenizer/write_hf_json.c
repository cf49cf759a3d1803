/* rq_tokenizer_to_hf_json: the tokenizer as a Hugging Face tokenizer.json
 * (tokenizers' own schema, read by transformers' PreTrainedTokenizerFast), for
 * the HF checkpoint export of models whose tokenizer came from a GGUF file or a
 * llama2.c tokenizer.bin. What each flavour becomes: tokenizer.h. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>

#include "tok_internal.h"

static const char metaspace[] = "\xE2\x96\x81"; /* U+2581, SentencePiece's space */

static cJSON *typed(const char *type) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "type", type);
    return o;
}

static cJSON *byte_level(bool prefix_space, bool trim_offsets, bool use_regex) {
    cJSON *o = typed("ByteLevel");
    cJSON_AddBoolToObject(o, "add_prefix_space", prefix_space);
    cJSON_AddBoolToObject(o, "trim_offsets", trim_offsets);
    cJSON_AddBoolToObject(o, "use_regex", use_regex);
    return o;
}

static cJSON *sequence(const char *list_key, cJSON *a, cJSON *b) {
    cJSON *o = typed("Sequence");
    cJSON *l = cJSON_AddArrayToObject(o, list_key);
    cJSON_AddItemToArray(l, a);
    if (b) cJSON_AddItemToArray(l, b);
    return o;
}

static cJSON *replace(const char *from, const char *to) {
    cJSON *o = typed("Replace");
    cJSON_AddStringToObject(cJSON_AddObjectToObject(o, "pattern"), "String", from);
    cJSON_AddStringToObject(o, "content", to);
    return o;
}

static cJSON *pre_tokenizer(const struct rq_tokenizer *t) {
    switch (t->pretok) {
    case RQ_PRETOK_SMOLLM: {
        cJSON *digits = typed("Digits");
        cJSON_AddBoolToObject(digits, "individual_digits", true);
        return sequence("pretokenizers", digits, byte_level(false, true, true));
    }
    case RQ_PRETOK_LLAMA3: {
        cJSON *split = typed("Split");
        cJSON_AddStringToObject(cJSON_AddObjectToObject(split, "pattern"), "Regex", rq_llama3_pattern);
        cJSON_AddStringToObject(split, "behavior", "Isolated");
        cJSON_AddBoolToObject(split, "invert", false);
        return sequence("pretokenizers", split, byte_level(false, true, false));
    }
    default: return byte_level(false, true, true);
    }
}

/* "<s> $A" when BOS is added by default: HF's TemplateProcessing. */
static cJSON *bos_template(const struct rq_tokenizer *t) {
    const char *bos = rq_tok_str(t, t->bos_id);
    cJSON *o = typed("TemplateProcessing");
    cJSON *single = cJSON_AddArrayToObject(o, "single"), *pair = cJSON_AddArrayToObject(o, "pair");
    for (int k = 0; k < 2; k++) {
        cJSON *arr = k == 0 ? single : pair;
        for (int seq = 0; seq < (k == 0 ? 1 : 2); seq++) {
            cJSON *sp = cJSON_CreateObject(), *sq = cJSON_CreateObject();
            cJSON *spi = cJSON_AddObjectToObject(sp, "SpecialToken"), *sqi = cJSON_AddObjectToObject(sq, "Sequence");
            cJSON_AddStringToObject(spi, "id", bos);
            cJSON_AddNumberToObject(spi, "type_id", seq);
            cJSON_AddStringToObject(sqi, "id", seq == 0 ? "A" : "B");
            cJSON_AddNumberToObject(sqi, "type_id", seq);
            cJSON_AddItemToArray(arr, sp);
            cJSON_AddItemToArray(arr, sq);
        }
    }
    cJSON *entry = cJSON_AddObjectToObject(cJSON_AddObjectToObject(o, "special_tokens"), bos);
    cJSON_AddStringToObject(entry, "id", bos);
    cJSON_AddItemToObject(entry, "ids", cJSON_CreateIntArray(&t->bos_id, 1));
    cJSON *toks = cJSON_AddArrayToObject(entry, "tokens");
    cJSON_AddItemToArray(toks, cJSON_CreateString(bos));
    return o;
}

/* ---- SPM merges from scores ---- */

typedef struct spm_merge {
    float score;
    int merged, left, right;
} spm_merge;

static int compare_spm_merge(const void *a, const void *b) {
    const spm_merge *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    if (x->merged != y->merged) return x->merged < y->merged ? -1 : 1;
    if (x->left != y->left) return x->left < y->left ? -1 : 1;
    return (x->right > y->right) - (x->right < y->right);
}

/* Every split of a normal token at a code-point boundary into two vocab
 * entries, ordered by the token's score (highest first), then token id, then
 * the parts' ids: transformers' SentencePieceExtractor order. A BPE applying
 * these by rank merges the pair whose result scores highest, as SentencePiece
 * BPE (and rilq's SPM encoder) does. */
static rq_status spm_merges(const struct rq_tokenizer *t, cJSON *out, rq_err *err) {
    size_t cap = 1024, n = 0;
    spm_merge *m = rq_calloc(cap, sizeof *m, err);
    if (!m) return RQ_ERR_NOMEM;
    for (int id = 0; id < t->n_vocab; id++) {
        if (t->types[id] != RQ_TOKTYPE_NORMAL || t->tok_len[id] < 2) continue;
        const char *s = rq_tok_str(t, id);
        int len = t->tok_len[id];
        for (int k = 1; k < len; k++) {
            if (((unsigned char)s[k] & 0xC0) == 0x80) continue; /* inside a code point */
            int l = rq_str_map_get(&t->vocab, t, s, (size_t)k), r = rq_str_map_get(&t->vocab, t, s + k, (size_t)(len - k));
            if (l < 0 || r < 0) continue;
            if (n == cap) {
                spm_merge *grown = realloc(m, 2 * cap * sizeof *m);
                if (!grown) {
                    free(m);
                    return RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory deriving SentencePiece merges");
                }
                m = grown, cap *= 2;
            }
            m[n++] = (spm_merge){t->scores ? t->scores[id] : 0.0f, id, l, r};
        }
    }
    qsort(m, n, sizeof *m, compare_spm_merge);
    for (size_t i = 0; i < n; i++) {
        const char *ls = rq_tok_str(t, m[i].left), *rs = rq_tok_str(t, m[i].right);
        size_t ll = (size_t)t->tok_len[m[i].left], rl = (size_t)t->tok_len[m[i].right];
        char *p = malloc(ll + rl + 2);
        if (!p) {
            free(m);
            return RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory writing merges");
        }
        memcpy(p, ls, ll);
        p[ll] = ' ';
        memcpy(p + ll + 1, rs, rl);
        p[ll + 1 + rl] = 0;
        cJSON_AddItemToArray(out, cJSON_CreateString(p));
        free(p);
    }
    free(m);
    return RQ_OK;
}

static rq_status build(const struct rq_tokenizer *t, const rq_tokenizer_desc *d, cJSON *root, rq_err *err) {
    bool spm = t->kind == RQ_TOK_SPM;
    /* token strings must be unique (a JSON object) and free of NUL bytes */
    for (int id = 0; id < t->n_vocab; id++) {
        const char *s = rq_tok_str(t, id);
        if (strlen(s) != (size_t)t->tok_len[id])
            return RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "tokenizer.json: token %d contains a NUL byte, which JSON strings cannot hold", id);
        int found = rq_str_map_get(&t->vocab, t, s, (size_t)t->tok_len[id]);
        if (found != id)
            return RQ_FAIL(err, RQ_ERR_UNSUPPORTED,
                           "tokenizer.json: token %d \"%.40s\" has the same text as token %d; tokenizer.json's vocab maps "
                           "each text to one id",
                           id, s, found);
    }
    cJSON_AddStringToObject(root, "version", "1.0");
    cJSON_AddNullToObject(root, "truncation");
    cJSON_AddNullToObject(root, "padding");
    cJSON *added = cJSON_AddArrayToObject(root, "added_tokens");
    for (int i = 0; i < t->n_special; i++) {
        int id = t->special_ids[i];
        cJSON *a = cJSON_CreateObject();
        cJSON_AddNumberToObject(a, "id", id);
        cJSON_AddStringToObject(a, "content", rq_tok_str(t, id));
        cJSON_AddBoolToObject(a, "single_word", false);
        cJSON_AddBoolToObject(a, "lstrip", false);
        cJSON_AddBoolToObject(a, "rstrip", false);
        cJSON_AddBoolToObject(a, "normalized", false);
        cJSON_AddBoolToObject(a, "special", t->types[id] == RQ_TOKTYPE_CONTROL);
        cJSON_AddItemToArray(added, a);
    }
    if (spm) {
        cJSON *rep = replace(" ", metaspace);
        if (t->add_space_prefix) {
            cJSON *prep = typed("Prepend");
            cJSON_AddStringToObject(prep, "prepend", metaspace);
            cJSON_AddItemToObject(root, "normalizer", sequence("normalizers", prep, rep));
        } else {
            cJSON_AddItemToObject(root, "normalizer", sequence("normalizers", rep, NULL));
        }
        cJSON_AddNullToObject(root, "pre_tokenizer");
    } else {
        cJSON_AddNullToObject(root, "normalizer");
        cJSON_AddItemToObject(root, "pre_tokenizer", pre_tokenizer(t));
    }
    bool bos = t->add_bos_default && t->bos_id >= 0 && t->bos_id < t->n_vocab;
    if (bos) cJSON_AddItemToObject(root, "post_processor", bos_template(t));
    else if (!spm) cJSON_AddItemToObject(root, "post_processor", byte_level(true, false, true));
    else cJSON_AddNullToObject(root, "post_processor");
    if (spm) {
        cJSON *dec = sequence("decoders", replace(metaspace, " "), typed("ByteFallback"));
        cJSON *list = cJSON_GetObjectItemCaseSensitive(dec, "decoders");
        cJSON_AddItemToArray(list, typed("Fuse"));
        if (t->add_space_prefix) {
            cJSON *strip = typed("Strip");
            cJSON_AddStringToObject(strip, "content", " ");
            cJSON_AddNumberToObject(strip, "start", 1);
            cJSON_AddNumberToObject(strip, "stop", 0);
            cJSON_AddItemToArray(list, strip);
        }
        cJSON_AddItemToObject(root, "decoder", dec);
    } else {
        cJSON_AddItemToObject(root, "decoder", byte_level(true, true, true));
    }
    cJSON *model = typed("BPE");
    cJSON_AddItemToObject(root, "model", model);
    cJSON_AddNullToObject(model, "dropout");
    if (t->unk_id >= 0) cJSON_AddStringToObject(model, "unk_token", rq_tok_str(t, t->unk_id));
    else cJSON_AddNullToObject(model, "unk_token");
    cJSON_AddNullToObject(model, "continuing_subword_prefix");
    cJSON_AddNullToObject(model, "end_of_word_suffix");
    cJSON_AddBoolToObject(model, "fuse_unk", spm);
    cJSON_AddBoolToObject(model, "byte_fallback", spm);
    cJSON_AddBoolToObject(model, "ignore_merges", t->ignore_merges);
    cJSON *vocab = cJSON_AddObjectToObject(model, "vocab");
    for (int id = 0; id < t->n_vocab; id++) cJSON_AddNumberToObject(vocab, rq_tok_str(t, id), id);
    cJSON *merges = cJSON_AddArrayToObject(model, "merges");
    if (spm) return spm_merges(t, merges, err);
    for (int k = 0; k < d->spec.n_merges; k++) /* byte-level: the merge table in rank order */
        cJSON_AddItemToArray(merges, cJSON_CreateString(d->merges[k]));
    return RQ_OK;
}

rq_status rq_tokenizer_to_hf_json(const rq_tokenizer *t, cJSON **json, rq_err *err) {
    *json = NULL;
    if (!t) return RQ_FAIL(err, RQ_ERR_ARG, "rq_tokenizer_to_hf_json: no tokenizer");
    rq_tokenizer_desc d;
    RQ_TRY(rq_tokenizer_describe(t, &d, err));
    cJSON *root = cJSON_CreateObject();
    rq_status s = root ? build(t, &d, root, err) : RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory building tokenizer.json");
    rq_tokenizer_describe_free(&d);
    if (s != RQ_OK) {
        cJSON_Delete(root);
        return s;
    }
    *json = root;
    return RQ_OK;
}
