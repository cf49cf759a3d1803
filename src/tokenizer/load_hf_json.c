/* HF tokenizer.json (reference doc 3.1-3.4) for model.type "BPE": the
 * vocabulary, merges and added tokens, plus the few pipeline settings that
 * change the result (which flavour, which split pattern, the dummy prefix,
 * whether BOS is added, ignore_merges). Anything else in the pipeline that
 * would change the tokens is refused with a message rather than ignored. */
#include <cjson/cJSON.h>
#include <stdlib.h>

#include "tok_internal.h"

const char rq_gpt2_pattern[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
const char rq_llama3_pattern[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
    "\\s+(?!\\S)|\\s+";

typedef struct hf_load {
    const char *path;
    rq_err *err;
    int n_vocab;
    char **tokens;
    int *types;
    char **merges;
    int n_merges;
    int *special_ids;
    int n_special;
} hf_load;

static void hf_load_free(hf_load *h) {
    if (h->tokens)
        for (int i = 0; i < h->n_vocab; i++) free(h->tokens[i]);
    free(h->tokens);
    free(h->types);
    if (h->merges)
        for (int i = 0; i < h->n_merges; i++) free(h->merges[i]);
    free(h->merges);
    free(h->special_ids);
}

static const char *type_of(const cJSON *obj) {
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(obj, "type");
    return cJSON_IsString(t) ? t->valuestring : "";
}

static bool bool_field(const cJSON *obj, const char *name, bool fallback) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    if (cJSON_IsBool(v)) return cJSON_IsTrue(v);
    return fallback;
}

/* An integer id in 0 .. 2^30, from a JSON number. */
static bool json_id(const cJSON *v, int *id) {
    if (!cJSON_IsNumber(v)) return false;
    double d = v->valuedouble;
    if (!(d >= 0 && d < (double)(1 << 30)) || d != (double)(int)d) return false;
    *id = (int)d;
    return true;
}

/* What the pre-tokenizer and normalizer say, gathered from nested Sequences. */
typedef struct pipeline {
    bool byte_level, byte_level_regex, byte_level_prefix_space;
    bool digits_individual, digits;
    const char *split_pattern;
    bool metaspace, metaspace_prefix, metaspace_first_only;
    bool prepend_space, replace_space;
    const char *unsupported; /* the first step we do not implement */
} pipeline;

static void scan_pre_tokenizer(const cJSON *p, pipeline *pl, int depth) {
    if (!p || cJSON_IsNull(p) || depth > 8) return;
    const char *type = type_of(p);
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(p, "pretokenizers");
        const cJSON *item;
        cJSON_ArrayForEach(item, list) scan_pre_tokenizer(item, pl, depth + 1);
    } else if (strcmp(type, "ByteLevel") == 0) {
        pl->byte_level = true;
        pl->byte_level_regex = bool_field(p, "use_regex", true);
        pl->byte_level_prefix_space = bool_field(p, "add_prefix_space", true);
    } else if (strcmp(type, "Digits") == 0) {
        pl->digits = true;
        pl->digits_individual = bool_field(p, "individual_digits", false);
    } else if (strcmp(type, "Split") == 0) {
        const cJSON *pattern = cJSON_GetObjectItemCaseSensitive(p, "pattern");
        const cJSON *regex = cJSON_GetObjectItemCaseSensitive(pattern, "Regex");
        if (cJSON_IsString(regex) && !pl->split_pattern) pl->split_pattern = regex->valuestring;
        else if (!pl->unsupported) pl->unsupported = "Split without a Regex pattern";
    } else if (strcmp(type, "Metaspace") == 0) {
        pl->metaspace = true;
        const cJSON *scheme = cJSON_GetObjectItemCaseSensitive(p, "prepend_scheme");
        if (cJSON_IsString(scheme)) {
            pl->metaspace_prefix = strcmp(scheme->valuestring, "never") != 0;
            pl->metaspace_first_only = strcmp(scheme->valuestring, "first") == 0;
        } else {
            pl->metaspace_prefix = bool_field(p, "add_prefix_space", true);
        }
        if (bool_field(p, "split", false) && !pl->unsupported) pl->unsupported = "Metaspace with split=true";
    } else if (!pl->unsupported) {
        pl->unsupported = type[0] ? type : "a pre-tokenizer without a type";
    }
}

static void scan_normalizer(const cJSON *n, pipeline *pl, int depth) {
    if (!n || cJSON_IsNull(n) || depth > 8) return;
    const char *type = type_of(n);
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "normalizers");
        const cJSON *item;
        cJSON_ArrayForEach(item, list) scan_normalizer(item, pl, depth + 1);
    } else if (strcmp(type, "Prepend") == 0) {
        const cJSON *with = cJSON_GetObjectItemCaseSensitive(n, "prepend");
        if (cJSON_IsString(with) && strcmp(with->valuestring, "\xE2\x96\x81") == 0) pl->prepend_space = true;
        else if (!pl->unsupported) pl->unsupported = "Prepend of something other than U+2581";
    } else if (strcmp(type, "Replace") == 0) {
        const cJSON *pattern = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(n, "pattern"), "String");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(n, "content");
        if (cJSON_IsString(pattern) && cJSON_IsString(content) && strcmp(pattern->valuestring, " ") == 0 &&
            strcmp(content->valuestring, "\xE2\x96\x81") == 0)
            pl->replace_space = true;
        else if (!pl->unsupported)
            pl->unsupported = "Replace other than \" \" -> U+2581";
    } else if (!pl->unsupported) {
        pl->unsupported = type[0] ? type : "a normalizer without a type";
    }
}

/* TemplateProcessing "single" that starts with a special token adds BOS. */
static void scan_post_processor(const cJSON *p, const hf_load *h, const cJSON *vocab, bool *add_bos, int *bos_id, int depth) {
    if (!p || cJSON_IsNull(p) || depth > 8) return;
    const char *type = type_of(p);
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *item;
        cJSON_ArrayForEach(item, cJSON_GetObjectItemCaseSensitive(p, "processors"))
            scan_post_processor(item, h, vocab, add_bos, bos_id, depth + 1);
        return;
    }
    if (strcmp(type, "TemplateProcessing") != 0) return;
    const cJSON *first = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(p, "single"), 0);
    const cJSON *special = cJSON_GetObjectItemCaseSensitive(first, "SpecialToken");
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(special, "id");
    if (!cJSON_IsString(name)) return;
    const cJSON *entry = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(p, "special_tokens"), name->valuestring);
    int id;
    if (json_id(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(entry, "ids"), 0), &id) ||
        json_id(cJSON_GetObjectItemCaseSensitive(vocab, name->valuestring), &id)) {
        *add_bos = true;
        *bos_id = id;
    }
}

static rq_status set_token(hf_load *h, int id, const char *s, const char *where) {
    if (id >= h->n_vocab) return RQ_FAIL(h->err, RQ_ERR_INTERNAL, "%s: %s: id %d beyond the counted vocab", h->path, where, id);
    if (h->tokens[id]) {
        if (strcmp(h->tokens[id], s) == 0) return RQ_OK;
        return RQ_FAIL(h->err, RQ_ERR_FORMAT, "%s: %s: id %d is both \"%.60s\" and \"%.60s\"", h->path, where, id,
                       h->tokens[id], s);
    }
    h->tokens[id] = rq_strdup(s, h->err);
    return h->tokens[id] ? RQ_OK : RQ_ERR_NOMEM;
}

static rq_status read_vocab(hf_load *h, const cJSON *vocab, const cJSON *added) {
    if (!cJSON_IsObject(vocab)) return RQ_FAIL(h->err, RQ_ERR_FORMAT, "%s: model.vocab: expected an object of token -> id", h->path);
    int max_id = -1, count = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, vocab) {
        int id;
        if (!json_id(item, &id))
            return RQ_FAIL(h->err, RQ_ERR_FORMAT, "%s: model.vocab[\"%.60s\"]: expected an integer id in 0 .. 2^30", h->path,
                           item->string ? item->string : "");
        if (id > max_id) max_id = id;
        count++;
    }
    if (added && !cJSON_IsArray(added)) return RQ_FAIL(h->err, RQ_ERR_FORMAT, "%s: added_tokens: expected an array", h->path);
    int i = 0;
    cJSON_ArrayForEach(item, added) {
        int id;
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(item, "content");
        if (!json_id(cJSON_GetObjectItemCaseSensitive(item, "id"), &id) || !cJSON_IsString(content))
            return RQ_FAIL(h->err, RQ_ERR_FORMAT, "%s: added_tokens[%d]: expected an integer \"id\" and a string \"content\"",
                           h->path, i);
        if (id > max_id) max_id = id;
        count++;
        i++;
    }
    if (max_id < 0) return RQ_FAIL(h->err, RQ_ERR_FORMAT, "%s: model.vocab is empty", h->path);
    if (max_id >= count) /* every id in 0 .. max must be named once: a gap means a broken file */
        return RQ_FAIL(h->err, RQ_ERR_FORMAT, "%s: model.vocab: largest id %d but only %d tokens: ids have gaps", h->path,
                       max_id, count);
    h->n_vocab = max_id + 1;
    h->tokens = rq_calloc((size_t)h->n_vocab, sizeof(char *), h->err);
    h->types = rq_calloc((size_t)h->n_vocab, sizeof(int), h->err);
    h->special_ids = rq_calloc((size_t)(i ? i : 1), sizeof(int), h->err);
    if (!h->tokens || !h->types || !h->special_ids) return RQ_ERR_NOMEM;
    cJSON_ArrayForEach(item, vocab) {
        int id = (int)item->valuedouble;
        h->types[id] = RQ_TOKTYPE_NORMAL;
        RQ_TRY(set_token(h, id, item->string, "model.vocab"));
    }
    cJSON_ArrayForEach(item, added) {
        int id = (int)cJSON_GetObjectItemCaseSensitive(item, "id")->valuedouble;
        RQ_TRY(set_token(h, id, cJSON_GetObjectItemCaseSensitive(item, "content")->valuestring, "added_tokens"));
        h->types[id] = bool_field(item, "special", false) ? RQ_TOKTYPE_CONTROL : RQ_TOKTYPE_USER;
        h->special_ids[h->n_special++] = id;
    }
    for (int id = 0; id < h->n_vocab; id++)
        if (!h->tokens[id]) return RQ_FAIL(h->err, RQ_ERR_FORMAT, "%s: model.vocab: no token has id %d", h->path, id);
    return RQ_OK;
}

static rq_status read_merges(hf_load *h, const cJSON *merges) {
    if (!merges || cJSON_IsNull(merges)) return RQ_OK;
    if (!cJSON_IsArray(merges)) return RQ_FAIL(h->err, RQ_ERR_FORMAT, "%s: model.merges: expected an array", h->path);
    int n = cJSON_GetArraySize(merges);
    h->merges = rq_calloc((size_t)(n ? n : 1), sizeof(char *), h->err);
    if (!h->merges) return RQ_ERR_NOMEM;
    const cJSON *item;
    cJSON_ArrayForEach(item, merges) {
        int rank = h->n_merges;
        const char *left = NULL, *right = NULL;
        if (cJSON_IsString(item)) {
            h->merges[h->n_merges++] = rq_strdup(item->valuestring, h->err);
            if (!h->merges[rank]) return RQ_ERR_NOMEM;
            continue; /* "left right": checked when the merge table is built */
        }
        if (cJSON_IsArray(item) && cJSON_GetArraySize(item) == 2) {
            const cJSON *a = cJSON_GetArrayItem(item, 0), *b = cJSON_GetArrayItem(item, 1);
            if (cJSON_IsString(a) && cJSON_IsString(b)) left = a->valuestring, right = b->valuestring;
        }
        if (!left) return RQ_FAIL(h->err, RQ_ERR_FORMAT, "%s: model.merges[%d]: expected \"a b\" or [\"a\", \"b\"]", h->path, rank);
        if (strchr(left, ' ') || strchr(right, ' '))
            return RQ_FAIL(h->err, RQ_ERR_UNSUPPORTED, "%s: model.merges[%d]: a token contains a space", h->path, rank);
        size_t la = strlen(left), lb = strlen(right);
        char *s = malloc(la + lb + 2);
        if (!s) return RQ_FAIL(h->err, RQ_ERR_NOMEM, "out of memory reading merges");
        memcpy(s, left, la);
        s[la] = ' ';
        memcpy(s + la + 1, right, lb + 1);
        h->merges[h->n_merges++] = s;
    }
    return RQ_OK;
}

static int find_token(const hf_load *h, const char *const *names) {
    for (int k = 0; names[k]; k++)
        for (int id = 0; id < h->n_vocab; id++)
            if (strcmp(h->tokens[id], names[k]) == 0) return id;
    return -1;
}

static rq_status load(hf_load *h, const cJSON *root, rq_tokenizer **out) {
    const char *path = h->path;
    rq_err *err = h->err;
    if (!cJSON_IsObject(root)) return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: expected a JSON object at the top level", path);
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsObject(model)) return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: \"model\": expected an object", path);
    const cJSON *mtype = cJSON_GetObjectItemCaseSensitive(model, "type");
    /* files written before "type" existed are BPE when they carry merges */
    bool is_bpe = cJSON_IsString(mtype) ? strcmp(mtype->valuestring, "BPE") == 0
                                        : cJSON_GetObjectItemCaseSensitive(model, "merges") != NULL;
    if (!is_bpe)
        return RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "%s: model.type \"%s\": only BPE tokenizers are supported", path,
                       cJSON_IsString(mtype) ? mtype->valuestring : "(missing)");
    const cJSON *prefix = cJSON_GetObjectItemCaseSensitive(model, "continuing_subword_prefix");
    const cJSON *suffix = cJSON_GetObjectItemCaseSensitive(model, "end_of_word_suffix");
    if ((cJSON_IsString(prefix) && prefix->valuestring[0]) || (cJSON_IsString(suffix) && suffix->valuestring[0]))
        return RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "%s: model: continuing_subword_prefix / end_of_word_suffix are not supported", path);
    RQ_TRY(read_vocab(h, cJSON_GetObjectItemCaseSensitive(model, "vocab"), cJSON_GetObjectItemCaseSensitive(root, "added_tokens")));
    RQ_TRY(read_merges(h, cJSON_GetObjectItemCaseSensitive(model, "merges")));

    pipeline pl = {0};
    scan_pre_tokenizer(cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), &pl, 0);
    scan_normalizer(cJSON_GetObjectItemCaseSensitive(root, "normalizer"), &pl, 0);
    if (pl.unsupported)
        return RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "%s: normalizer/pre_tokenizer step \"%s\" is not supported", path, pl.unsupported);
    rq_tokenizer_spec spec = {.n_vocab = h->n_vocab, .bos_id = -1, .eos_id = -1, .unk_id = -1, .pad_id = -1};
    bool prefix_first_only = false;
    if (pl.byte_level) {
        spec.kind = RQ_TOK_BYTE_BPE;
        if (pl.byte_level_prefix_space)
            return RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "%s: pre_tokenizer ByteLevel with add_prefix_space=true is not supported", path);
        if (pl.split_pattern) {
            if (strcmp(pl.split_pattern, rq_gpt2_pattern) == 0) spec.pretok = RQ_PRETOK_GPT2;
            else if (strcmp(pl.split_pattern, rq_llama3_pattern) == 0) spec.pretok = RQ_PRETOK_LLAMA3;
            else
                return RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "%s: pre_tokenizer Split pattern \"%.200s\" is neither the GPT-2 nor the LLaMA-3 pattern",
                               path, pl.split_pattern);
            if (pl.byte_level_regex || pl.digits)
                return RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "%s: pre_tokenizer: Split combined with ByteLevel(use_regex) or Digits is not supported", path);
        } else if (pl.digits) {
            if (!pl.digits_individual || !pl.byte_level_regex)
                return RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "%s: pre_tokenizer: Digits is supported only as Digits(individual_digits=true) + ByteLevel(use_regex=true)", path);
            spec.pretok = RQ_PRETOK_SMOLLM;
        } else if (pl.byte_level_regex) {
            spec.pretok = RQ_PRETOK_GPT2;
        } else {
            return RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "%s: pre_tokenizer ByteLevel(use_regex=false) without a Split is not supported", path);
        }
    } else if (pl.metaspace || pl.prepend_space || pl.replace_space || bool_field(model, "byte_fallback", false)) {
        spec.kind = RQ_TOK_SPM;
        if (pl.split_pattern || pl.digits)
            return RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "%s: pre_tokenizer Split/Digits with a SentencePiece-style vocabulary is not supported", path);
        if (!pl.metaspace && !pl.replace_space)
            return RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "%s: SentencePiece-style BPE without Metaspace or a Replace(\" \" -> U+2581) normalizer", path);
        spec.add_space_prefix = pl.prepend_space || (pl.metaspace && pl.metaspace_prefix);
        prefix_first_only = pl.metaspace && pl.metaspace_first_only && !pl.prepend_space;
        spec.pretok = RQ_PRETOK_NONE;
    } else {
        return RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "%s: BPE without a ByteLevel pre-tokenizer or a SentencePiece-style (Metaspace / Prepend+Replace / byte_fallback) setup is not supported", path);
    }
    if (h->n_merges == 0 && spec.kind == RQ_TOK_BYTE_BPE)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: model.merges: a byte-level BPE needs merges", path);
    if (h->n_merges == 0)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: model.merges is empty (a tokenizer.json carries no scores to merge by)", path);
    spec.tokens = (const char *const *)h->tokens;
    spec.token_types = h->types;
    spec.merges = (const char *const *)h->merges;
    spec.n_merges = h->n_merges;
    spec.ignore_merges = bool_field(model, "ignore_merges", false);
    spec.special_ids = h->special_ids;
    spec.n_special = h->n_special;

    const cJSON *unk = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
    if (cJSON_IsString(unk)) {
        const char *names[] = {unk->valuestring, NULL};
        spec.unk_id = find_token(h, names);
        if (spec.unk_id >= 0 && h->types[spec.unk_id] == RQ_TOKTYPE_NORMAL) h->types[spec.unk_id] = RQ_TOKTYPE_UNKNOWN;
    }
    scan_post_processor(cJSON_GetObjectItemCaseSensitive(root, "post_processor"), h,
                        cJSON_GetObjectItemCaseSensitive(model, "vocab"), &spec.add_bos_default, &spec.bos_id, 0);
    if (spec.bos_id >= h->n_vocab) return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: post_processor: BOS id %d is outside the vocabulary", path, spec.bos_id);
    /* tokenizer.json does not name BOS/EOS outside the template: fall back on the
     * conventional names (tokenizer_config.json is the authority) */
    static const char *const bos_names[] = {"<s>", "<|begin_of_text|>", "<|startoftext|>", "<|im_start|>", NULL};
    static const char *const eos_names[] = {"</s>", "<|end_of_text|>", "<|endoftext|>", "<|im_end|>", NULL};
    if (spec.bos_id < 0) spec.bos_id = find_token(h, bos_names);
    spec.eos_id = find_token(h, eos_names);
    RQ_TRY(rq_tokenizer_create(&spec, out, err));
    (*out)->prefix_first_segment_only = prefix_first_only;
    return RQ_OK;
}

rq_status rq_tokenizer_load_hf_json(const char *path, rq_tokenizer **out, rq_err *err) {
    *out = NULL;
    if (!path) return RQ_FAIL(err, RQ_ERR_ARG, "tokenizer.json path is NULL");
    char *text;
    size_t size;
    RQ_TRY(rq_file_read_all(path, &text, &size, err));
    const char *parse_end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, size, &parse_end, false);
    if (!root) {
        size_t at = parse_end && parse_end >= text && parse_end <= text + size ? (size_t)(parse_end - text) : 0;
        free(text);
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: not valid JSON (parsing stopped near byte %zu of %zu)", path, at, size);
    }
    hf_load h = {.path = path, .err = err};
    rq_status st = load(&h, root, out);
    hf_load_free(&h);
    cJSON_Delete(root);
    free(text);
    return st;
}
