/* Tokenizer tests: ids against references made by the real libraries
 * (tools/reference/make_tokenizer_refs.py -> tests/data/tokenizer/), decode
 * round trips, the pre-tokenizer word boundaries, added tokens, BOS modes,
 * and clean errors on bad files. */
#include <cjson/cJSON.h>
#include <stdint.h>

#include "test.h"
#include "tokenizer/tokenizer.h"

/* ---- reference files: '#' comment lines, then one JSON object per line ------------- */

typedef struct ref_rows {
    cJSON **rows;
    int n;
} ref_rows;

static ref_rows load_refs(const char *name) {
    char path[512];
    snprintf(path, sizeof path, "data/tokenizer/%s", name);
    ref_rows r = {0};
    char *text = NULL;
    size_t size = 0;
    rq_err err = {0};
    if (rq_file_read_all(path, &text, &size, &err) != RQ_OK) {
        CHECKF(0, "cannot read %s: %s", path, err.msg);
        return r;
    }
    int cap = 0;
    for (char *line = text; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = 0;
        if (line[0] && line[0] != '#') {
            cJSON *row = cJSON_Parse(line);
            CHECKF(row != NULL, "%s: bad JSON line", path);
            if (row) {
                if (r.n == cap) {
                    cap = cap ? cap * 2 : 256;
                    r.rows = realloc(r.rows, (size_t)cap * sizeof *r.rows);
                }
                r.rows[r.n++] = row;
            }
        }
        line = nl ? nl + 1 : NULL;
    }
    free(text);
    CHECKF(r.n > 0, "%s: no rows", path);
    return r;
}

static void free_refs(ref_rows *r) {
    for (int i = 0; i < r->n; i++) cJSON_Delete(r->rows[i]);
    free(r->rows);
}

static const char *row_text(const cJSON *row) {
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(row, "text");
    return cJSON_IsString(t) ? t->valuestring : NULL;
}

/* Printable form of a test string for failure messages. */
static const char *show(const char *s) {
    static char buf[200];
    size_t k = 0;
    for (; *s && k + 5 < sizeof buf; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '\n') buf[k++] = '\\', buf[k++] = 'n';
        else if (c == '\t') buf[k++] = '\\', buf[k++] = 't';
        else if (c < 0x20) k += (size_t)snprintf(buf + k, 5, "\\x%02x", c);
        else buf[k++] = (char)c;
    }
    buf[k] = 0;
    return buf;
}

static bool ids_equal(const int *ids, int n, const cJSON *expect) {
    if (cJSON_GetArraySize(expect) != n) return false;
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, expect) if ((int)e->valuedouble != ids[i++]) return false;
    return true;
}

static void print_ids(const char *label, const int *ids, int n, const cJSON *expect) {
    fprintf(stderr, "  %s:", label);
    for (int i = 0; i < n && i < 40; i++) fprintf(stderr, " %d", ids[i]);
    fprintf(stderr, "\n  expected:");
    const cJSON *e;
    int k = 0;
    cJSON_ArrayForEach(e, expect) if (k++ < 40) fprintf(stderr, " %d", (int)e->valuedouble);
    fprintf(stderr, "\n");
}

/* Compare ids for every row; optionally require decode(encode(s)) == s (or the
 * row's "decoded"). skip_if: rows whose text contains it are not compared
 * (e.g. control-token text that sentencepiece reads as plain text). */
static void check_ids(const rq_tokenizer *t, const char *refs_name, rq_bos_mode bos, bool round_trip,
                      const char *const *skip_if) {
    ref_rows refs = load_refs(refs_name);
    int compared = 0, mismatches = 0, round_trip_fail = 0;
    for (int r = 0; r < refs.n; r++) {
        const char *text = row_text(refs.rows[r]);
        const cJSON *expect = cJSON_GetObjectItemCaseSensitive(refs.rows[r], "ids");
        if (!text || !expect) continue;
        bool skip = false;
        for (int k = 0; skip_if && skip_if[k]; k++) skip |= strstr(text, skip_if[k]) != NULL;
        if (skip) continue;
        int *ids = NULL, n = 0;
        rq_err err = {0};
        CHECK_OK(rq_tokenizer_encode(t, text, strlen(text), bos, &ids, &n, &err), &err);
        compared++;
        if (!ids_equal(ids, n, expect)) {
            if (mismatches++ < 5) {
                fprintf(stderr, "%s: ids differ for \"%s\"\n", refs_name, show(text));
                print_ids("ours", ids, n, expect);
            }
        }
        const cJSON *decoded = cJSON_GetObjectItemCaseSensitive(refs.rows[r], "decoded");
        if (round_trip || cJSON_IsString(decoded)) {
            char *back = NULL;
            /* decode what the reference says, so the decoder is tested independently of the encoder */
            int m = cJSON_GetArraySize(expect), i = 0;
            int *ref_ids = calloc((size_t)m + 1, sizeof(int));
            const cJSON *e;
            cJSON_ArrayForEach(e, expect) ref_ids[i++] = (int)e->valuedouble;
            /* with an expected "decoded" text: HF's decode(skip_special_tokens=True); else the exact input back */
            CHECK_OK(rq_tokenizer_decode(t, ref_ids, m, cJSON_IsString(decoded), &back, &err), &err);
            const char *want = cJSON_IsString(decoded) ? decoded->valuestring : text;
            if (back && strcmp(back, want) != 0 && round_trip_fail++ < 5)
                fprintf(stderr, "%s: decode gives \"%s\"", refs_name, show(back)), fprintf(stderr, " for \"%s\"\n", show(want));
            free(back);
            free(ref_ids);
        }
        free(ids);
    }
    CHECKF(mismatches == 0, "%s: %d of %d strings encode differently", refs_name, mismatches, compared);
    CHECKF(round_trip_fail == 0, "%s: %d strings decode differently", refs_name, round_trip_fail);
    printf("%s: %d strings compared, %d id mismatches, %d decode mismatches\n", refs_name, compared, mismatches,
           round_trip_fail);
    free_refs(&refs);
}

static void check_splits(rq_pretok pattern, const char *refs_name) {
    ref_rows refs = load_refs(refs_name);
    int bad = 0;
    for (int r = 0; r < refs.n; r++) {
        const char *text = row_text(refs.rows[r]);
        const cJSON *words = cJSON_GetObjectItemCaseSensitive(refs.rows[r], "words");
        size_t *ends = NULL, n = 0;
        rq_err err = {0};
        CHECK_OK(rq_pretokenize(pattern, text, strlen(text), &ends, &n, &err), &err);
        bool same = (int)n == cJSON_GetArraySize(words);
        size_t start = 0, i = 0;
        const cJSON *w;
        cJSON_ArrayForEach(w, words) {
            if (!same || i >= n) break;
            size_t len = strlen(w->valuestring);
            if (ends[i] - start != len || memcmp(text + start, w->valuestring, len) != 0) same = false;
            start = ends[i++];
        }
        if (!same && bad++ < 5) {
            fprintf(stderr, "%s: words differ for \"%s\":", refs_name, show(text));
            start = 0;
            for (size_t k = 0; k < n; k++) {
                char word[200];
                size_t len = ends[k] - start < 199 ? ends[k] - start : 199;
                memcpy(word, text + start, len);
                word[len] = 0;
                fprintf(stderr, " [%s]", show(word));
                start = ends[k];
            }
            fprintf(stderr, "\n");
        }
        free(ends);
    }
    CHECKF(bad == 0, "%s: %d of %d strings split differently", refs_name, bad, refs.n);
    printf("%s: %d strings, %d split mismatches\n", refs_name, refs.n, bad);
    free_refs(&refs);
}

/* ---- SPM: llama2.c tokenizer.bin files against sentencepiece ------------------------- */

static uint64_t fnv1a64_ids(const int *ids, int n) {
    uint64_t h = 0xCBF29CE484222325ull;
    for (int i = 0; i < n; i++) {
        uint32_t v = (uint32_t)ids[i];
        for (int b = 0; b < 4; b++) h = (h ^ ((v >> (8 * b)) & 0xFF)) * 0x100000001B3ull;
    }
    return h;
}

static void test_wikitext_speed(const rq_tokenizer *t) {
    ref_rows refs = load_refs("spm_llama2.jsonl");
    const cJSON *first = refs.n ? refs.rows[0] : NULL;
    const cJSON *file = cJSON_GetObjectItemCaseSensitive(first, "file");
    CHECKF(cJSON_IsString(file), "spm_llama2.jsonl: first row should describe the WikiText-2 check");
    if (cJSON_IsString(file)) {
        const char *path = rq_test_data(file->valuestring);
        char *text = NULL;
        size_t size = 0;
        rq_err err = {0};
        CHECK_OK(rq_file_read_all(path, &text, &size, &err), &err);
        int *ids = NULL, n = 0;
        double t0 = rq_now_seconds();
        CHECK_OK(rq_tokenizer_encode(t, text, size, RQ_BOS_OFF, &ids, &n, &err), &err);
        double secs = rq_now_seconds() - t0;
        int want_n = (int)cJSON_GetObjectItemCaseSensitive(first, "n_ids")->valuedouble;
        char hash[32];
        snprintf(hash, sizeof hash, "%016llx", (unsigned long long)fnv1a64_ids(ids, n));
        CHECKF(n == want_n, "WikiText-2 test: %d ids, sentencepiece gives %d", n, want_n);
        CHECKF(strcmp(hash, cJSON_GetObjectItemCaseSensitive(first, "fnv1a64")->valuestring) == 0,
               "WikiText-2 test: id hash %s differs from sentencepiece's", hash);
        printf("WikiText-2 test text (%zu bytes) as one SPM segment, llama2 32k vocab: %d ids in %.3f s (%.1f MB/s)\n",
               size, n, secs, size / 1e6 / secs);
        char *back = NULL;
        CHECK_OK(rq_tokenizer_decode(t, ids, n, true, &back, &err), &err);
        CHECKF(back && strcmp(back, text) == 0, "WikiText-2 test text does not survive encode + decode");
        free(back);
        free(ids);
        free(text);
    }
    free_refs(&refs);
}

/* The same check through the heap over the whole 1.3 MB text as ONE word: an
 * extra vocab entry "\x01▁" (never in the text, so the ids cannot change) stops
 * the tokenizer from splitting SPM text at word starts. */
static void test_wikitext_one_heap(const char *bin_path) {
    char *raw = NULL;
    size_t size = 0;
    rq_err err = {0};
    CHECK_OK(rq_file_read_all(bin_path, &raw, &size, &err), &err);
    if (!raw) return;
    enum { N = 32000 };
    char **tokens = calloc(N + 1, sizeof(char *));
    float *scores = calloc(N + 1, sizeof(float));
    int *types = calloc(N + 1, sizeof(int));
    size_t off = 4;
    for (int i = 0; i < N; i++) {
        scores[i] = rq_rd_f32((const uint8_t *)raw + off);
        int len = (int)rq_rd_u32((const uint8_t *)raw + off + 4);
        off += 8;
        tokens[i] = calloc((size_t)len * 3 + 1, 1);
        size_t k = 0;
        for (int j = 0; j < len; j++) {
            if (raw[off + (size_t)j] == ' ') memcpy(tokens[i] + k, "\xE2\x96\x81", 3), k += 3;
            else tokens[i][k++] = raw[off + (size_t)j];
        }
        off += (size_t)len;
        types[i] = i == 0 ? RQ_TOKTYPE_UNKNOWN : i <= 2 ? RQ_TOKTYPE_CONTROL : i <= 258 ? RQ_TOKTYPE_BYTE : RQ_TOKTYPE_NORMAL;
    }
    tokens[N] = rq_strdup("\x01\xE2\x96\x81", &err);
    scores[N] = -1e30f;
    types[N] = RQ_TOKTYPE_NORMAL;
    rq_tokenizer_spec spec = {.kind = RQ_TOK_SPM, .n_vocab = N + 1, .tokens = (const char *const *)tokens,
                              .scores = scores, .token_types = types, .add_space_prefix = true,
                              .bos_id = 1, .eos_id = 2, .unk_id = 0, .pad_id = -1};
    rq_tokenizer *t = NULL;
    CHECK_OK(rq_tokenizer_create(&spec, &t, &err), &err);
    ref_rows refs = load_refs("spm_llama2.jsonl");
    const cJSON *first = refs.n ? refs.rows[0] : NULL;
    const cJSON *file = cJSON_GetObjectItemCaseSensitive(first, "file");
    if (t && cJSON_IsString(file)) {
        char *text = NULL;
        CHECK_OK(rq_file_read_all(rq_test_data(file->valuestring), &text, &size, &err), &err);
        int *ids = NULL, n = 0;
        double t0 = rq_now_seconds();
        CHECK_OK(rq_tokenizer_encode(t, text, size, RQ_BOS_OFF, &ids, &n, &err), &err);
        double secs = rq_now_seconds() - t0;
        char hash[32];
        snprintf(hash, sizeof hash, "%016llx", (unsigned long long)fnv1a64_ids(ids, n));
        CHECKF(n == (int)cJSON_GetObjectItemCaseSensitive(first, "n_ids")->valuedouble &&
                   strcmp(hash, cJSON_GetObjectItemCaseSensitive(first, "fnv1a64")->valuestring) == 0,
               "WikiText-2 through one heap: %d ids, hash %s differ from sentencepiece's", n, hash);
        printf("WikiText-2 test text through one BPE heap (no word split): %d ids in %.3f s\n", n, secs);
        free(ids);
        free(text);
    }
    free_refs(&refs);
    rq_tokenizer_free(t);
    for (int i = 0; i <= N; i++) free(tokens[i]);
    free(tokens);
    free(scores);
    free(types);
    free(raw);
}

static void encode_or_fail(const rq_tokenizer *t, const char *s, rq_bos_mode bos, int **ids, int *n) {
    rq_err err = {0};
    CHECK_OK(rq_tokenizer_encode(t, s, strlen(s), bos, ids, n, &err), &err);
}

/* "a</s>b" = encode("a") + [</s>] + encode("b"): added tokens split the text first
 * (and, like HF's legacy LLaMA normalizer, every segment gets the dummy prefix). */
static void check_special_split(const rq_tokenizer *t, const char *left, const char *special, const char *right) {
    char joined[256];
    snprintf(joined, sizeof joined, "%s%s%s", left, special, right);
    int *a, *b, *all, na, nb, nall;
    encode_or_fail(t, left, RQ_BOS_OFF, &a, &na);
    encode_or_fail(t, right, RQ_BOS_OFF, &b, &nb);
    encode_or_fail(t, joined, RQ_BOS_OFF, &all, &nall);
    int sid = rq_tokenizer_find(t, special);
    bool ok = sid >= 0 && nall == na + 1 + nb && memcmp(all, a, (size_t)na * sizeof(int)) == 0 && all[na] == sid &&
              memcmp(all + na + 1, b, (size_t)nb * sizeof(int)) == 0;
    CHECKF(ok, "added token %s inside \"%s\" is not matched as one id", special, show(joined));
    free(a);
    free(b);
    free(all);
}

static void test_spm_files(void) {
    static const char *const control_text[] = {"<s>", "</s>", "<unk>", NULL};
    /* sentencepiece keeps a literal "▁" as text; our decode turns every "▁" into a space, like HF */
    static const char *const not_round_trip[] = {"<s>", "</s>", "<unk>", "\xE2\x96\x81", NULL};
    rq_err err = {0};
    rq_tokenizer *t = NULL;
    CHECK_OK(rq_tokenizer_load_llama2c(rq_test_data("models/stories260K/tok512.bin"), 512, &t, &err), &err);
    if (t) {
        check_ids(t, "spm_tok512.jsonl", RQ_BOS_OFF, false, control_text);
        check_ids(t, "spm_tok512.jsonl", RQ_BOS_OFF, true, not_round_trip);
        CHECK(rq_tokenizer_kind(t) == RQ_TOK_SPM && rq_tokenizer_vocab_size(t) == 512);
        CHECK(rq_tokenizer_bos(t) == 1 && rq_tokenizer_eos(t) == 2);
        CHECK(rq_tokenizer_find(t, "<s>") == 1 && rq_tokenizer_find(t, "</s>") == 2);
        CHECK(strcmp(rq_tokenizer_token(t, 259), "\xE2\x96\x81t") == 0); /* " t" stored with a space in the file */
        CHECK(rq_tokenizer_token(t, 512) == NULL && rq_tokenizer_token(t, -1) == NULL && rq_tokenizer_token(NULL, 0) == NULL);
        int *ids, n;
        encode_or_fail(t, "Once upon a time", RQ_BOS_DEFAULT, &ids, &n);
        CHECK(n > 1 && ids[0] == 1 && ids[1] == 403); /* llama2.c: BOS, " Once" */
        char piece[16];
        CHECK(rq_tokenizer_piece(t, 1, 403, piece, sizeof piece) == 4 && memcmp(piece, "Once", 4) == 0);
        CHECK(rq_tokenizer_piece(t, 403, 407, piece, sizeof piece) == 5 && memcmp(piece, " upon", 5) == 0);
        CHECK(rq_tokenizer_piece(t, 403, 1, piece, sizeof piece) == 0);
        CHECK(rq_tokenizer_piece(t, 403, 3 + 0x41, piece, sizeof piece) == 1 && piece[0] == 'A');
        free(ids);
        encode_or_fail(t, "", RQ_BOS_DEFAULT, &ids, &n);
        CHECK(n == 1 && ids[0] == 1);
        free(ids);
        encode_or_fail(t, "", RQ_BOS_OFF, &ids, &n);
        CHECK(n == 0 && ids != NULL);
        free(ids);
        check_special_split(t, "Hello", "</s>", "world");
        /* decode: bytes that are not UTF-8 become U+FFFD each, like HF's ByteFallback */
        int bad_bytes[] = {3 + 0xE4, 3 + 0xBD, 3 + 'x'}; /* one run of three byte tokens, not UTF-8 */
        char *text = NULL;
        CHECK_OK(rq_tokenizer_decode(t, bad_bytes, 3, true, &text, &err), &err);
        CHECK(text && strcmp(text, "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD") == 0);
        free(text);
        int with_bos[] = {1, 403, 2};
        CHECK_OK(rq_tokenizer_decode(t, with_bos, 3, false, &text, &err), &err);
        CHECK(text && strcmp(text, "<s> Once</s>") == 0);
        free(text);
        int out_of_range[] = {5, 600};
        CHECK(rq_tokenizer_decode(t, out_of_range, 2, true, &text, &err) == RQ_ERR_ARG && text == NULL);
        rq_tokenizer_free(t);
    }
    t = NULL;
    CHECK_OK(rq_tokenizer_load_llama2c(rq_test_data("models/llama2-tokenizer/tokenizer.bin"), 32000, &t, &err), &err);
    if (t) {
        check_ids(t, "spm_llama2.jsonl", RQ_BOS_OFF, false, control_text);
        check_ids(t, "spm_llama2.jsonl", RQ_BOS_OFF, true, not_round_trip);
        int *ids, n;
        encode_or_fail(t, "\n", RQ_BOS_OFF, &ids, &n);
        CHECK(n == 2 && ids[0] == 29871 && ids[1] == 13); /* "▁", <0x0A> */
        free(ids);
        check_special_split(t, "a", "<s>", " b");
        test_wikitext_speed(t);
        rq_tokenizer_free(t);
        test_wikitext_one_heap(rq_test_data("models/llama2-tokenizer/tokenizer.bin"));
    }
}

/* ---- byte-level: SmolLM2's vocab from the GGUF ---------------------------------------- */

/* TEST-ONLY minimal GGUF metadata reader: just enough to pull the tokenizer.ggml.*
 * arrays out of the SmolLM2 file for this test, so the tokenizer tests do not
 * depend on src/io/gguf.c. Not hardened: the file is a known fixture. */
typedef struct gguf_meta {
    char **tokens;
    int n_tokens;
    char **merges;
    int n_merges;
    int *types;
    int n_types;
} gguf_meta;

static size_t gguf_scalar_size(uint32_t type) {
    static const size_t sizes[13] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    return type < 13 ? sizes[type] : 0;
}

static bool gguf_skip_value(const uint8_t *d, size_t size, size_t *off, uint32_t type);

static bool gguf_read_string(const uint8_t *d, size_t size, size_t *off, const char **s, size_t *len) {
    if (size - *off < 8) return false;
    uint64_t n = rq_rd_u64(d + *off);
    if (n > size - *off - 8) return false;
    *s = (const char *)d + *off + 8;
    *len = (size_t)n;
    *off += 8 + (size_t)n;
    return true;
}

static bool gguf_skip_value(const uint8_t *d, size_t size, size_t *off, uint32_t type) {
    if (type == 8) {
        const char *s;
        size_t len;
        return gguf_read_string(d, size, off, &s, &len);
    }
    if (type == 9) {
        if (size - *off < 12) return false;
        uint32_t et = rq_rd_u32(d + *off);
        uint64_t n = rq_rd_u64(d + *off + 4);
        *off += 12;
        for (uint64_t i = 0; i < n; i++)
            if (!gguf_skip_value(d, size, off, et)) return false;
        return true;
    }
    size_t sz = gguf_scalar_size(type);
    if (!sz || size - *off < sz) return false;
    *off += sz;
    return true;
}

static bool gguf_string_array(const uint8_t *d, size_t size, size_t *off, char ***out, int *count) {
    if (size - *off < 12 || rq_rd_u32(d + *off) != 8) return false;
    uint64_t n = rq_rd_u64(d + *off + 4);
    *off += 12;
    if (n > 10000000) return false;
    *out = calloc((size_t)n, sizeof(char *));
    for (uint64_t i = 0; i < n; i++) {
        const char *s;
        size_t len;
        if (!gguf_read_string(d, size, off, &s, &len)) return false;
        (*out)[i] = malloc(len + 1);
        memcpy((*out)[i], s, len);
        (*out)[i][len] = 0;
        *count = (int)i + 1;
    }
    return true;
}

static bool gguf_read_tokenizer(const char *path, gguf_meta *m) {
    rq_file_view f;
    rq_err err = {0};
    if (rq_file_map(path, &f, &err) != RQ_OK) return false;
    const uint8_t *d = f.data;
    size_t size = f.size, off = 24;
    bool ok = size >= 24 && memcmp(d, "GGUF", 4) == 0;
    uint64_t n_kv = ok ? rq_rd_u64(d + 16) : 0;
    for (uint64_t k = 0; ok && k < n_kv; k++) {
        const char *key;
        size_t key_len;
        ok = gguf_read_string(d, size, &off, &key, &key_len) && size - off >= 4;
        if (!ok) break;
        uint32_t type = rq_rd_u32(d + off);
        off += 4;
        char name[128];
        snprintf(name, sizeof name, "%.*s", (int)(key_len < 127 ? key_len : 127), key);
        if (type == 9 && strcmp(name, "tokenizer.ggml.tokens") == 0) ok = gguf_string_array(d, size, &off, &m->tokens, &m->n_tokens);
        else if (type == 9 && strcmp(name, "tokenizer.ggml.merges") == 0) ok = gguf_string_array(d, size, &off, &m->merges, &m->n_merges);
        else if (type == 9 && strcmp(name, "tokenizer.ggml.token_type") == 0 && size - off >= 12 && rq_rd_u32(d + off) == 5) {
            uint64_t n = rq_rd_u64(d + off + 4);
            off += 12;
            ok = n <= (size - off) / 4;
            if (ok) {
                m->types = calloc((size_t)n, sizeof(int));
                for (uint64_t i = 0; i < n; i++) m->types[i] = (int)rq_rd_u32(d + off + 4 * i);
                m->n_types = (int)n;
                off += 4 * (size_t)n;
            }
        } else
            ok = gguf_skip_value(d, size, &off, type);
    }
    rq_file_unmap(&f);
    return ok && m->n_tokens > 0 && m->n_merges > 0 && m->n_types == m->n_tokens;
}

static void gguf_meta_free(gguf_meta *m) {
    for (int i = 0; i < m->n_tokens; i++) free(m->tokens[i]);
    for (int i = 0; i < m->n_merges; i++) free(m->merges[i]);
    free(m->tokens);
    free(m->merges);
    free(m->types);
}

static void test_smollm2(void) {
    const char *path = rq_test_smollm2();
    gguf_meta m = {0};
    CHECKF(gguf_read_tokenizer(path, &m), "cannot read the tokenizer arrays of %s", path);
    if (m.n_tokens > 0 && m.n_types == m.n_tokens) {
        int *specials = calloc((size_t)m.n_tokens, sizeof(int)), n_special = 0;
        for (int i = 0; i < m.n_tokens; i++)
            if (m.types[i] == RQ_TOKTYPE_CONTROL) specials[n_special++] = i;
        rq_tokenizer_spec spec = {
            .kind = RQ_TOK_BYTE_BPE, .pretok = RQ_PRETOK_SMOLLM, .n_vocab = m.n_tokens,
            .tokens = (const char *const *)m.tokens, .token_types = m.types,
            .merges = (const char *const *)m.merges, .n_merges = m.n_merges,
            .bos_id = 1, .eos_id = 2, .unk_id = 0, .pad_id = 2,
            .special_ids = specials, .n_special = n_special,
        };
        rq_tokenizer *t = NULL;
        rq_err err = {0};
        CHECK_OK(rq_tokenizer_create(&spec, &t, &err), &err);
        if (t) {
            check_ids(t, "bytelevel_smollm2.jsonl", RQ_BOS_OFF, true, NULL);
            int *ids, n;
            encode_or_fail(t, "hi", RQ_BOS_DEFAULT, &ids, &n); /* SmolLM adds no BOS by default */
            CHECK(n >= 1 && ids[0] != 1);
            free(ids);
            encode_or_fail(t, "hi", RQ_BOS_ON, &ids, &n);
            CHECK(n >= 2 && ids[0] == 1);
            free(ids);
            check_special_split(t, "x", "<|im_start|>", "y");
            check_special_split(t, "", "<|im_end|>", "\n");
            /* a byte-level vocab decodes any byte string exactly, as long as it is UTF-8 */
            const char *odd = "\x01\x7f \xc2\xa0\xe2\x80\xa8 \xf0\x9f\x98\x80";
            encode_or_fail(t, odd, RQ_BOS_OFF, &ids, &n);
            char *back = NULL;
            CHECK_OK(rq_tokenizer_decode(t, ids, n, true, &back, &err), &err);
            CHECK(back && strcmp(back, odd) == 0);
            free(back);
            free(ids);
            rq_tokenizer_free(t);
        }
        free(specials);
    }
    gguf_meta_free(&m);
}

/* ---- HF tokenizer.json ------------------------------------------------------------------- */

static void test_hf_json(void) {
    static const struct {
        const char *json, *refs;
        rq_tok_kind kind;
    } files[] = {
        {"data/tokenizer/hf_spm_tok512.json", "hf_spm_tok512.jsonl", RQ_TOK_SPM},
        {"data/tokenizer/hf_gpt2_small.json", "hf_gpt2_small.jsonl", RQ_TOK_BYTE_BPE},
        {"data/tokenizer/hf_llama3_small.json", "hf_llama3_small.jsonl", RQ_TOK_BYTE_BPE},
    };
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        rq_tokenizer *t = NULL;
        rq_err err = {0};
        CHECK_OK(rq_tokenizer_load_hf_json(files[i].json, &t, &err), &err);
        if (!t) continue;
        CHECK(rq_tokenizer_kind(t) == files[i].kind);
        check_ids(t, files[i].refs, RQ_BOS_DEFAULT, false, NULL);
        rq_tokenizer_free(t);
    }
}

/* ---- pre-tokenizer, added tokens on a hand-made vocab ----------------------------------- */

static void test_small_spec(void) {
    /* leftmost-longest: "<x><x>" wins over "<x>" where both match */
    const char *tokens[] = {"<unk>", "<s>", "</s>", "<x>", "<x><x>", "\xE2\x96\x81", "a", "b", "\xE2\x96\x81" "a"};
    const float scores[] = {0, 0, 0, 0, 0, -1, -2, -3, -0.5f};
    const int types[] = {2, 3, 3, 3, 3, 1, 1, 1, 1};
    const int specials[] = {3, 4, 1, 2};
    rq_tokenizer_spec spec = {.kind = RQ_TOK_SPM, .n_vocab = 9, .tokens = tokens, .scores = scores,
                              .token_types = types, .add_space_prefix = true, .add_bos_default = true,
                              .bos_id = 1, .eos_id = 2, .unk_id = 0, .pad_id = -1,
                              .special_ids = specials, .n_special = 4};
    rq_tokenizer *t = NULL;
    rq_err err = {0};
    CHECK_OK(rq_tokenizer_create(&spec, &t, &err), &err);
    if (t) {
        int *ids, n;
        encode_or_fail(t, "a<x><x><x>b", RQ_BOS_OFF, &ids, &n);
        /* "a" -> "▁a"; "<x><x>", "<x>"; "b" -> "▁" "b" (no "▁b" piece); no byte tokens: unknowns are <unk> */
        int want[] = {8, 4, 3, 5, 7};
        CHECKF(n == 5 && memcmp(ids, want, sizeof want) == 0, "leftmost-longest added tokens: got %d ids", n);
        free(ids);
        encode_or_fail(t, "ac", RQ_BOS_ON, &ids, &n);
        int want2[] = {1, 8, 0};
        CHECKF(n == 3 && memcmp(ids, want2, sizeof want2) == 0, "unknown char without byte tokens gives <unk>");
        free(ids);
        rq_tokenizer_free(t);
    }
    /* bad specs are refused with a message */
    rq_tokenizer_spec bad = spec;
    bad.bos_id = 9;
    CHECK(rq_tokenizer_create(&bad, &t, &err) == RQ_ERR_ARG && strstr(err.msg, "bos") && t == NULL);
    bad = spec;
    bad.scores = NULL;
    CHECK(rq_tokenizer_create(&bad, &t, &err) == RQ_ERR_ARG);
    bad = spec;
    bad.n_vocab = 0;
    CHECK(rq_tokenizer_create(&bad, &t, &err) == RQ_ERR_ARG);
    const char *merges[] = {"a zz"};
    bad = spec;
    bad.merges = merges;
    bad.n_merges = 1;
    CHECK(rq_tokenizer_create(&bad, &t, &err) == RQ_ERR_FORMAT && strstr(err.msg, "not in the vocabulary"));
}

/* ---- bad files ---------------------------------------------------------------------------- */

static bool write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return false;
    bool ok = fwrite(data, 1, n, f) == n;
    return fclose(f) == 0 && ok;
}

static void expect_llama2c_error(const char *path, int vocab, const char *needle) {
    rq_tokenizer *t = (rq_tokenizer *)1;
    rq_err err = {0};
    rq_status st = rq_tokenizer_load_llama2c(path, vocab, &t, &err);
    CHECKF(st != RQ_OK && t == NULL && strstr(err.msg, needle), "expected an error with \"%s\", got %d \"%s\"", needle,
           (int)st, err.msg);
}

static void expect_json_error(const char *json, const char *needle) {
    const char *path = rq_test_out("tok_bad.json");
    CHECK(write_file(path, json, strlen(json)));
    rq_tokenizer *t = (rq_tokenizer *)1;
    rq_err err = {0};
    rq_status st = rq_tokenizer_load_hf_json(path, &t, &err);
    CHECKF(st != RQ_OK && t == NULL && strstr(err.msg, needle), "JSON %.60s: expected an error with \"%s\", got %d \"%s\"",
           json, needle, (int)st, err.msg);
}

static void test_bad_files(void) {
    rq_err err = {0};
    uint8_t *bin = NULL;
    size_t size = 0;
    CHECK_OK(rq_file_read_all(rq_test_data("models/stories260K/tok512.bin"), (char **)&bin, &size, &err), &err);
    if (!bin) return;
    const char *path = rq_test_out("tok_bad.bin");
    CHECK(write_file(path, bin, size / 2));
    expect_llama2c_error(path, 512, "the file ends");
    CHECK(write_file(path, bin, 2));
    expect_llama2c_error(path, 512, "too short");
    /* token 17's length field: 4 (max_token_length) + 17 * (8 + 6)... tokens 0..2 differ in length, so walk */
    size_t off = 4;
    for (int i = 0; i < 17; i++) off += 8 + rq_rd_u32(bin + off + 4);
    uint8_t *copy = malloc(size);
    memcpy(copy, bin, size);
    int32_t huge = 4000000, negative = -5;
    memcpy(copy + off + 4, &huge, 4);
    CHECK(write_file(path, copy, size));
    expect_llama2c_error(path, 512, "token 17: length 4000000 exceeds the file");
    memcpy(copy + off + 4, &negative, 4);
    CHECK(write_file(path, copy, size));
    expect_llama2c_error(path, 512, "token 17: negative length -5");
    CHECK(write_file(path, bin, size));
    expect_llama2c_error(path, 500, "vocab size does not match");
    expect_llama2c_error(path, 600, "fewer than the 600 tokens");
    expect_llama2c_error(path, 0, "vocab size 0");
    expect_llama2c_error("/nonexistent/tok.bin", 512, "cannot open");
    free(copy);
    free(bin);

    expect_json_error("{", "not valid JSON");
    expect_json_error("[]", "top level");
    expect_json_error("{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}", "only BPE");
    expect_json_error("{\"model\": {\"type\": \"BPE\", \"vocab\": [1, 2]}}", "model.vocab: expected an object");
    expect_json_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 5}, \"merges\": []}}", "gaps");
    expect_json_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -1}}}", "integer id");
    expect_json_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [\"a c\"]},"
                      " \"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false}}",
                      "not in the vocabulary");
    expect_json_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [[\"a\"]]},"
                      " \"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false}}",
                      "model.merges[0]");
    expect_json_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [\"a b\"]},"
                      " \"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": {\"Regex\": \"\\\\w+\"}},"
                      " {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"use_regex\": false}]}}",
                      "Split pattern");
    expect_json_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [\"a b\"]},"
                      " \"normalizer\": {\"type\": \"NFKC\"}, \"pre_tokenizer\": {\"type\": \"ByteLevel\"}}",
                      "NFKC");
    expect_json_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}}, \"added_tokens\": [{\"id\": 0, \"content\": \"b\"}]}",
                      "is both");
}

int main(void) {
    test_small_spec();
    test_bad_files();
    check_splits(RQ_PRETOK_GPT2, "split_gpt2.jsonl");
    check_splits(RQ_PRETOK_LLAMA3, "split_llama3.jsonl");
    check_splits(RQ_PRETOK_SMOLLM, "split_smollm.jsonl");
    test_hf_json();
    test_spm_files();
    test_smollm2();
    return rq_test_finish();
}
