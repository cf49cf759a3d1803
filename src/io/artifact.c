/* The quantized model artifact (layout in artifact.h): write, detect, load. */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include "../quant/q2.h"
#include "artifact.h"
#include "gguf.h"
#include "hf.h"
#include "safetensors.h"

#define TENSOR_FILE "model.safetensors"
#define TENSOR_FILE_ZST "model.safetensors.zst"
/* Every file name an artifact may hold: the cleanup of a failed write removes
 * exactly these and nothing else. */
static const char *const artifact_files[] = {"config.json",    TENSOR_FILE,     TENSOR_FILE_ZST,
                                             "tokenizer.json", "tokenizer.bin", "tokenizer.gguf"};
#define N_ARTIFACT_FILES ((int)(sizeof artifact_files / sizeof artifact_files[0]))

/* ---- module names ------------------------------------------------------------------ */

static void module_name(char *buf, size_t cap, int layer, int proj) {
    const char *block = proj <= RQ_PROJ_O ? "self_attn" : "mlp";
    snprintf(buf, cap, "model.layers.%d.%s.%s", layer, block, rq_proj_names[proj]);
}

/* "model.layers.L.self_attn.q_proj" -> (L, RQ_PROJ_Q); false for anything else. */
static bool parse_module_name(const char *name, int n_layers, int *layer, int *proj) {
    const char *prefix = "model.layers.";
    size_t plen = strlen(prefix);
    if (strncmp(name, prefix, plen) != 0) return false;
    const char *p = name + plen;
    long l = 0;
    int digits = 0;
    while (*p >= '0' && *p <= '9' && digits < 7) l = l * 10 + (*p++ - '0'), digits++;
    if (digits == 0 || l >= n_layers || *p != '.') return false;
    for (int k = 0; k < RQ_N_PROJ; k++) {
        char want[RQ_TENSOR_NAME_MAX];
        module_name(want, sizeof want, (int)l, k);
        if (strcmp(want, name) == 0) {
            *layer = (int)l;
            *proj = k;
            return true;
        }
    }
    return false;
}

/* Bounded copy; names and paths that do not fit are cut (they only appear in
 * messages, or were length-checked on the way in). */
static void copy_str(char *dst, size_t cap, const char *src) {
    size_t n = strlen(src);
    if (n >= cap) n = cap - 1;
    memcpy(dst, src, n);
    dst[n] = 0;
}

/* ---- small file helpers ------------------------------------------------------------- */

static rq_status copy_file(const char *src, const char *dst, rq_err *err) {
    rq_file_view v;
    RQ_TRY(rq_file_map(src, &v, err));
    rq_status s = rq_write_file_atomic(dst, v.data, v.size, err);
    rq_file_unmap(&v);
    return s;
}

/* ---- tokenizer --------------------------------------------------------------------- */

/* Bytes of one encoded GGUF value of type at p (inside [p, end)); false when
 * it runs past end or nests too deep. */
static bool gguf_value_size(uint32_t type, const uint8_t *p, const uint8_t *end, int depth, uint64_t *size) {
    static const uint8_t fixed[RQ_GGUF_TYPE_COUNT] = {[RQ_GGUF_U8] = 1,  [RQ_GGUF_I8] = 1,  [RQ_GGUF_U16] = 2,
                                                      [RQ_GGUF_I16] = 2, [RQ_GGUF_U32] = 4, [RQ_GGUF_I32] = 4,
                                                      [RQ_GGUF_F32] = 4, [RQ_GGUF_BOOL] = 1, [RQ_GGUF_U64] = 8,
                                                      [RQ_GGUF_I64] = 8, [RQ_GGUF_F64] = 8};
    uint64_t left = (uint64_t)(end - p);
    if (type >= RQ_GGUF_TYPE_COUNT) return false;
    if (fixed[type]) {
        *size = fixed[type];
        return *size <= left;
    }
    if (type == RQ_GGUF_STRING) {
        if (left < 8) return false;
        uint64_t len = rq_rd_u64(p);
        if (len > left - 8) return false;
        *size = 8 + len;
        return true;
    }
    /* array: u32 element type, u64 count, elements */
    if (depth >= 4 || left < 12) return false;
    uint32_t et = rq_rd_u32(p);
    uint64_t n = rq_rd_u64(p + 4), used = 12;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t one;
        if (!gguf_value_size(et, p + used, end, depth + 1, &one)) return false;
        used += one;
    }
    *size = used;
    return true;
}

/* A GGUF with no tensors holding src's tokenizer.* metadata verbatim: the GGUF
 * tokenizer loader then reads exactly what it read from the source model. */
static rq_status write_tokenizer_gguf(const char *src, const char *dst, rq_err *err) {
    rq_gguf g;
    RQ_TRY(rq_gguf_open(src, &g, err));
    const uint8_t *end = g.view.data + g.view.size;
    size_t cap = 64, n = 0;
    uint64_t n_kv = 0;
    rq_status s = RQ_OK;
    for (int64_t i = 0; i < g.n_kv && s == RQ_OK; i++) {
        const rq_gguf_kv *kv = &g.kv[i];
        uint64_t vs;
        if (strncmp(kv->key, "tokenizer.", 10) != 0) continue;
        if (!gguf_value_size(kv->type, kv->value, end, 0, &vs))
            s = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: metadata '%s' runs past the end of the file", src, kv->key);
        else cap += 8 + strlen(kv->key) + 4 + (size_t)vs, n_kv++;
    }
    uint8_t *buf = s == RQ_OK ? rq_calloc(1, cap + 32, err) : NULL;
    if (s == RQ_OK && !buf) s = RQ_ERR_NOMEM;
    if (s == RQ_OK) {
        uint64_t header[2] = {0, n_kv}; /* n_tensors, n_kv (little-endian hosts only, like the reader) */
        memcpy(buf, "GGUF", 4);
        uint32_t version = 3;
        memcpy(buf + 4, &version, 4);
        memcpy(buf + 8, header, 16);
        n = 24;
        for (int64_t i = 0; i < g.n_kv; i++) {
            const rq_gguf_kv *kv = &g.kv[i];
            uint64_t vs, klen = strlen(kv->key);
            if (strncmp(kv->key, "tokenizer.", 10) != 0) continue;
            gguf_value_size(kv->type, kv->value, end, 0, &vs);
            memcpy(buf + n, &klen, 8);
            memcpy(buf + n + 8, kv->key, (size_t)klen);
            n += 8 + (size_t)klen;
            memcpy(buf + n, &kv->type, 4);
            memcpy(buf + n + 4, kv->value, (size_t)vs);
            n += 4 + (size_t)vs;
        }
        n = (n + 31) / 32 * 32; /* the default alignment; the padding is zeros */
        s = rq_write_file_atomic(dst, buf, n, err);
    }
    free(buf);
    rq_gguf_close(&g);
    return s;
}

static bool has_gguf_magic(const char *path) {
    FILE *f = fopen(path, "rb");
    char magic[4] = {0};
    bool yes = f && fread(magic, 1, 4, f) == 4 && memcmp(magic, "GGUF", 4) == 0;
    if (f) fclose(f);
    return yes;
}

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* Carry the model's tokenizer into dir; *name receives the file name used, or
 * NULL when the model has no tokenizer. */
static rq_status write_tokenizer(const rq_model *m, const char *dir, const char **name, rq_err *err) {
    *name = NULL;
    if (!m->tok) return RQ_OK;
    const char *src = m->tokenizer_path;
    if (!src[0] || !rq_file_exists(src))
        return RQ_FAIL(err, RQ_ERR_ARG,
                       "the model's tokenizer has no source file to carry into the artifact (tokenizer_path '%s')", src);
    const bool gguf = has_gguf_magic(src);
    *name = gguf ? "tokenizer.gguf" : ends_with(src, ".json") ? "tokenizer.json" : "tokenizer.bin";
    char *dst = rq_path_join_alloc(dir, *name, err);
    if (!dst) return RQ_ERR_NOMEM;
    rq_status s = gguf ? write_tokenizer_gguf(src, dst, err) : copy_file(src, dst, err);
    free(dst);
    return s;
}

static rq_status load_tokenizer_file(rq_model *m, const char *dir, const char *name, const char *path, rq_err *err) {
    if (!rq_file_exists(path))
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: config.json names tokenizer_file '%s' but it is missing", dir, name);
    if (!strcmp(name, "tokenizer.json")) RQ_TRY(rq_tokenizer_load_hf_json(path, &m->tok, err));
    else if (!strcmp(name, "tokenizer.bin")) RQ_TRY(rq_tokenizer_load_llama2c(path, m->cfg.vocab_size, &m->tok, err));
    else {
        rq_gguf g;
        RQ_TRY(rq_gguf_open(path, &g, err));
        rq_status s = rq_gguf_tokenizer(&g, &m->tok, err);
        rq_gguf_close(&g);
        RQ_TRY(s);
        if (!m->tok) return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: holds no tokenizer.ggml.model", path);
    }
    copy_str(m->tokenizer_path, sizeof m->tokenizer_path, path);
    return RQ_OK;
}

static rq_status load_tokenizer(rq_model *m, const char *dir, const char *name, rq_err *err) {
    char *path = rq_path_join_alloc(dir, name, err);
    if (!path) return RQ_ERR_NOMEM;
    rq_status s = load_tokenizer_file(m, dir, name, path, err);
    free(path);
    return s;
}

/* ---- zstd ------------------------------------------------------------------------------ */

/* src -> dst as one zstd frame with its content size, streamed in chunks. */
static rq_status compress_file(const char *src, const char *dst, int level, rq_err *err) {
    rq_file_view v;
    RQ_TRY(rq_file_map(src, &v, err));
    ZSTD_CCtx *cc = ZSTD_createCCtx();
    size_t out_cap = ZSTD_CStreamOutSize();
    uint8_t *out = malloc(out_cap);
    rq_atomic_file af;
    rq_status s = RQ_OK;
    if (!cc || !out) s = RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory for zstd compression");
    if (s == RQ_OK) {
        size_t r = ZSTD_CCtx_setParameter(cc, ZSTD_c_compressionLevel, level);
        if (!ZSTD_isError(r)) r = ZSTD_CCtx_setParameter(cc, ZSTD_c_checksumFlag, 1);
        if (!ZSTD_isError(r)) r = ZSTD_CCtx_setPledgedSrcSize(cc, v.size);
        if (ZSTD_isError(r)) s = RQ_FAIL(err, RQ_ERR_INTERNAL, "zstd: %s", ZSTD_getErrorName(r));
    }
    if (s == RQ_OK) s = rq_atomic_open(&af, dst, err);
    if (s != RQ_OK) {
        ZSTD_freeCCtx(cc);
        free(out);
        rq_file_unmap(&v);
        return s;
    }
    const size_t chunk = 1 << 20;
    size_t pos = 0;
    for (;;) {
        size_t take = v.size - pos < chunk ? v.size - pos : chunk;
        ZSTD_EndDirective mode = pos + take == v.size ? ZSTD_e_end : ZSTD_e_continue;
        ZSTD_inBuffer in = {v.data + pos, take, 0};
        size_t remaining;
        do {
            ZSTD_outBuffer ob = {out, out_cap, 0};
            remaining = ZSTD_compressStream2(cc, &ob, &in, mode);
            if (ZSTD_isError(remaining)) {
                s = RQ_FAIL(err, RQ_ERR_INTERNAL, "%s: zstd: %s", dst, ZSTD_getErrorName(remaining));
                break;
            }
            s = rq_atomic_write(&af, out, ob.pos, err);
        } while (s == RQ_OK && (mode == ZSTD_e_end ? remaining != 0 : in.pos < in.size));
        pos += take;
        if (s != RQ_OK || mode == ZSTD_e_end) break;
    }
    if (s == RQ_OK) s = rq_atomic_commit(&af, err);
    else rq_atomic_abort(&af);
    ZSTD_freeCCtx(cc);
    free(out);
    rq_file_unmap(&v);
    return s;
}

/* Decompress one zstd frame into a new malloc'ed buffer (never a temp file).
 * Truncated input, trailing bytes and a size other than the declared one are
 * errors. */
static rq_status decompress_file(const char *path, uint8_t **bytes, size_t *size, rq_err *err) {
    *bytes = NULL;
    *size = 0;
    rq_file_view v;
    RQ_TRY(rq_file_map(path, &v, err));
    unsigned long long declared = ZSTD_getFrameContentSize(v.data, v.size);
    if (declared == ZSTD_CONTENTSIZE_ERROR) {
        rq_file_unmap(&v);
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: not a zstd frame (bad magic or header)", path);
    }
    bool known = declared != ZSTD_CONTENTSIZE_UNKNOWN;
    if (known && declared > ((unsigned long long)1 << 40)) {
        rq_file_unmap(&v);
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: declared content size %llu bytes is implausible", path, declared);
    }
    size_t cap = known ? (size_t)declared : (v.size < ((size_t)1 << 40) / 4 ? v.size * 4 + 4096 : v.size);
    uint8_t *buf = malloc(cap ? cap : 1);
    ZSTD_DCtx *dc = ZSTD_createDCtx();
    rq_status s = RQ_OK;
    if (!buf || !dc) s = RQ_FAIL(err, RQ_ERR_NOMEM, "%s: out of memory for %zu decompressed bytes", path, cap);
    ZSTD_inBuffer in = {v.data, v.size, 0};
    size_t done = 0, ret = 1;
    while (s == RQ_OK) {
        if (done == cap) {
            if (known) {
                /* the declared size is full but the frame goes on */
                uint8_t probe;
                ZSTD_outBuffer ob = {&probe, 1, 0};
                ret = ZSTD_decompressStream(dc, &ob, &in);
                if (ZSTD_isError(ret)) s = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: corrupt zstd stream: %s", path, ZSTD_getErrorName(ret));
                else if (ob.pos > 0) s = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: more data than the declared %llu bytes", path, declared);
                break;
            }
            uint8_t *nb = cap < SIZE_MAX / 2 ? realloc(buf, cap * 2) : NULL;
            if (!nb) {
                s = RQ_FAIL(err, RQ_ERR_NOMEM, "%s: out of memory decompressing", path);
                break;
            }
            buf = nb;
            cap *= 2;
        }
        ZSTD_outBuffer ob = {buf + done, cap - done, 0};
        ret = ZSTD_decompressStream(dc, &ob, &in);
        if (ZSTD_isError(ret)) {
            s = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: corrupt zstd stream: %s", path, ZSTD_getErrorName(ret));
            break;
        }
        done += ob.pos;
        if (ret == 0) break;                                 /* frame complete */
        if (in.pos == in.size && ob.pos < ob.size) break;    /* input exhausted mid-frame */
    }
    if (s == RQ_OK && ret != 0)
        s = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: truncated zstd stream (ends after %zu of %zu compressed bytes mid-frame)", path,
                    in.pos, v.size);
    if (s == RQ_OK && in.pos != in.size)
        s = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: %zu bytes of trailing data after the zstd frame", path, v.size - in.pos);
    if (s == RQ_OK && known && done != declared)
        s = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: truncated zstd stream: %zu of the declared %llu bytes", path, done, declared);
    ZSTD_freeDCtx(dc);
    rq_file_unmap(&v);
    if (s != RQ_OK) {
        free(buf);
        return s;
    }
    *bytes = buf;
    *size = done;
    return RQ_OK;
}

/* ---- writing ----------------------------------------------------------------------- */

typedef struct tensor_list {
    rq_st_tensor *items;
    char (*names)[RQ_TENSOR_NAME_MAX];
    int n, cap;
} tensor_list;

static void add_tensor(tensor_list *t, const char *name, rq_dtype dtype, int64_t rows, int64_t cols, const void *data) {
    rq_st_tensor *x = &t->items[t->n];
    copy_str(t->names[t->n], RQ_TENSOR_NAME_MAX, name);
    x->name = t->names[t->n];
    x->dtype = dtype;
    x->ndim = cols ? 2 : 1;
    x->shape[0] = rows;
    x->shape[1] = cols;
    x->data = data;
    t->n++;
}

/* The one group size and codebook every q2 linear of m shares (first: the
 * reference tensor, NULL when m has none). */
static rq_status check_uniform_q2(const rq_model *m, const rq_q2_tensor **first, int *count, rq_err *err) {
    *first = NULL;
    *count = 0;
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int p = 0; p < RQ_N_PROJ; p++) {
            const rq_q2_tensor *t = rq_layer_proj(&m->layers[l], p)->q2;
            if (!t) continue;
            (*count)++;
            if (!*first) {
                *first = t;
                continue;
            }
            char name[RQ_TENSOR_NAME_MAX];
            module_name(name, sizeof name, l, p);
            if (t->group_size != (*first)->group_size || memcmp(t->codebook, (*first)->codebook, sizeof t->codebook) != 0)
                return RQ_FAIL(err, RQ_ERR_UNSUPPORTED,
                               "%s: group size %d / codebook differ from the other q2 tensors (group size %d): an "
                               "artifact records one of each",
                               name, t->group_size, (*first)->group_size);
        }
    return RQ_OK;
}

/* The dtype the unquantized tensors are written in: the source's own F16 or
 * BF16 when every weight came from it (exact: the values came from it), else F32. */
static rq_dtype plain_dtype(const rq_model *m) {
    return m->source_float_dtype == RQ_F16 || m->source_float_dtype == RQ_BF16 ? (rq_dtype)m->source_float_dtype
                                                                                : RQ_F32;
}

static cJSON *config_json(const rq_model *m, const rq_q2_tensor *ref, const char *tensor_file, const char *tokenizer_file) {
    const rq_config *c = &m->cfg;
    cJSON *root = rq_hf_config_json(c, "float32");

    cJSON *q = cJSON_AddObjectToObject(root, "quantization_config");
    cJSON_AddStringToObject(q, "quant_method", RQ_ARTIFACT_QUANT_METHOD);
    cJSON_AddNumberToObject(q, "format_version", RQ_ARTIFACT_FORMAT_VERSION);
    cJSON_AddNumberToObject(q, "bits", 2);
    cJSON_AddStringToObject(q, "method", m->quant.method[0] ? m->quant.method : "unknown");
    cJSON_AddBoolToObject(q, "clip_search", m->quant.clip_search);
    int gs = ref ? ref->group_size : RQ_DEFAULT_GROUP_SIZE;
    rq_q2_codebook_kind kind = ref ? ref->kind : RQ_Q2_INT2;
    float levels[4];
    if (ref) memcpy(levels, ref->codebook, sizeof levels);
    else rq_q2_codebook(kind, levels);
    cJSON_AddNumberToObject(q, "group_size", gs);
    cJSON_AddStringToObject(q, "codebook_name", rq_q2_codebook_name(kind));
    cJSON *cb = cJSON_AddArrayToObject(q, "codebook");
    for (int i = 0; i < 4; i++) cJSON_AddItemToArray(cb, cJSON_CreateNumber((double)levels[i]));
    cJSON *mods = cJSON_AddArrayToObject(q, "quantized_modules");
    for (int l = 0; l < c->n_layers; l++)
        for (int p = 0; p < RQ_N_PROJ; p++)
            if (rq_layer_proj(&m->layers[l], p)->q2) {
                char name[RQ_TENSOR_NAME_MAX];
                module_name(name, sizeof name, l, p);
                cJSON_AddItemToArray(mods, cJSON_CreateString(name));
            }
    cJSON_AddStringToObject(q, "code_packing", "4 codes per byte along in_features, lowest bits first");
    cJSON_AddStringToObject(q, "weight", "scale * codebook[code] + offset");
    cJSON_AddStringToObject(q, "tensor_file", tensor_file);
    if (tokenizer_file) cJSON_AddStringToObject(q, "tokenizer_file", tokenizer_file);
    else cJSON_AddNullToObject(q, "tokenizer_file");
    cJSON_AddStringToObject(q, "unquantized_dtype", rq_dtype_name(plain_dtype(m)));
    cJSON_AddStringToObject(q, "source_dtypes", m->quant.source_dtypes[0] ? m->quant.source_dtypes : m->dtypes);
    if (m->quant.merged_adapters[0]) cJSON_AddStringToObject(q, "merged_adapters", m->quant.merged_adapters);
    return root;
}

/* Half-precision copies of the unquantized tensors, carved from one buffer. */
typedef struct half_arena {
    uint16_t *buf;
    size_t used, cap;
} half_arena;

static const void *plain_data(half_arena *a, rq_dtype dt, const float *src, size_t n) {
    if (dt == RQ_F32) return src;
    uint16_t *dst = a->buf + a->used;
    a->used += n;
    for (size_t i = 0; i < n; i++) dst[i] = dt == RQ_F16 ? rq_f32_to_f16(src[i]) : rq_f32_to_bf16(src[i]);
    return dst;
}

static rq_status write_config(const rq_model *m, const rq_q2_tensor *ref, const rq_artifact_opts *opts,
                              const char *tok_name, const char *path, rq_err *err) {
    cJSON *root = config_json(m, ref, opts && opts->compress ? TENSOR_FILE_ZST : TENSOR_FILE, tok_name);
    char *text = root ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    if (!text) return RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory building config.json");
    size_t len = strlen(text);
    text[len] = '\n'; /* replace the NUL: the file ends with a newline */
    rq_status s = rq_write_file_atomic(path, text, len + 1, err);
    free(text);
    return s;
}

/* Everything but the rename: the files of the artifact inside tmp. */
static rq_status write_files(const rq_model *m, const char *tmp, const rq_artifact_opts *opts, rq_err *err) {
    const rq_config *c = &m->cfg;
    const rq_q2_tensor *ref;
    int n_q2;
    RQ_TRY(check_uniform_q2(m, &ref, &n_q2, err));
    const rq_dtype pd = plain_dtype(m);
    half_arena ha = {0};
    if (pd != RQ_F32) {
        size_t n = (size_t)c->vocab_size * c->dim * (c->tie_embeddings ? 1 : 2) + (size_t)c->dim * (2 * c->n_layers + 1);
        for (int l = 0; l < c->n_layers; l++)
            for (int p = 0; p < RQ_N_PROJ; p++) {
                const rq_linear *lin = rq_layer_proj(&m->layers[l], p);
                if (!lin->q2) n += (size_t)lin->out * lin->in;
            }
        ha.buf = rq_calloc(n, sizeof(uint16_t), err);
        if (!ha.buf) return RQ_ERR_NOMEM;
        ha.cap = n;
    }
    tensor_list tl = {0};
    tl.cap = 3 + c->n_layers * (2 + 3 * RQ_N_PROJ);
    tl.items = rq_calloc((size_t)tl.cap, sizeof *tl.items, err);
    tl.names = tl.items ? rq_calloc((size_t)tl.cap, sizeof *tl.names, err) : NULL;
    if (!tl.names) {
        free(tl.items);
        free(ha.buf);
        return RQ_ERR_NOMEM;
    }
    add_tensor(&tl, "model.embed_tokens.weight", pd, c->vocab_size, c->dim,
               plain_data(&ha, pd, m->tok_embed, (size_t)c->vocab_size * c->dim));
    for (int l = 0; l < c->n_layers; l++) {
        rq_layer *L = &m->layers[l];
        char name[RQ_TENSOR_NAME_MAX + 16], mod[RQ_TENSOR_NAME_MAX];
        snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", l);
        add_tensor(&tl, name, pd, c->dim, 0, plain_data(&ha, pd, L->attn_norm, (size_t)c->dim));
        snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", l);
        add_tensor(&tl, name, pd, c->dim, 0, plain_data(&ha, pd, L->ffn_norm, (size_t)c->dim));
        for (int p = 0; p < RQ_N_PROJ; p++) {
            const rq_linear *lin = rq_layer_proj(L, p);
            module_name(mod, sizeof mod, l, p);
            if (lin->q2) {
                const rq_q2_tensor *t = lin->q2;
                snprintf(name, sizeof name, "%s.codes", mod);
                add_tensor(&tl, name, RQ_U8, t->out, t->row_bytes, t->codes);
                snprintf(name, sizeof name, "%s.scales", mod);
                add_tensor(&tl, name, RQ_F16, t->out, t->n_groups, t->scales);
                snprintf(name, sizeof name, "%s.offsets", mod);
                add_tensor(&tl, name, RQ_F16, t->out, t->n_groups, t->offsets);
            } else {
                snprintf(name, sizeof name, "%s.weight", mod);
                add_tensor(&tl, name, pd, lin->out, lin->in, plain_data(&ha, pd, lin->w, (size_t)lin->out * lin->in));
            }
        }
    }
    add_tensor(&tl, "model.norm.weight", pd, c->dim, 0, plain_data(&ha, pd, m->final_norm, (size_t)c->dim));
    if (!c->tie_embeddings)
        add_tensor(&tl, "lm_head.weight", pd, c->vocab_size, c->dim,
                   plain_data(&ha, pd, m->lm_head.w, (size_t)c->vocab_size * c->dim));

    char *st_path = rq_path_join_alloc(tmp, TENSOR_FILE, err);
    char *zst_path = st_path ? rq_path_join_alloc(tmp, TENSOR_FILE_ZST, err) : NULL;
    char *cfg_path = zst_path ? rq_path_join_alloc(tmp, "config.json", err) : NULL;
    rq_status s = cfg_path ? RQ_OK : RQ_ERR_NOMEM;
    /* the group size again beside the tensors: shapes alone cannot tell every group size apart
       (ceil(64/64) = ceil(64/80)), so a loader checks config.json against it */
    char gs_text[24];
    snprintf(gs_text, sizeof gs_text, "%d", ref ? ref->group_size : 0);
    const char *meta[] = {"rilq_quant_method", RQ_ARTIFACT_QUANT_METHOD, "rilq_group_size", gs_text};
    if (s == RQ_OK) s = rq_safetensors_write(st_path, tl.items, tl.n, meta, ref ? 2 : 1, err);
    free(ha.buf);
    free(tl.items);
    free(tl.names);
    if (s == RQ_OK && opts && opts->compress) {
        s = compress_file(st_path, zst_path, opts->compression_level > 0 ? opts->compression_level : 3, err);
        unlink(st_path);
    }
    const char *tok_name = NULL;
    if (s == RQ_OK) s = write_tokenizer(m, tmp, &tok_name, err);
    /* config.json last: a directory without it is not a model */
    if (s == RQ_OK) s = write_config(m, ref, opts, tok_name, cfg_path, err);
    free(st_path);
    free(zst_path);
    free(cfg_path);
    return s;
}

typedef struct write_job {
    const rq_model *m;
    const rq_artifact_opts *opts;
} write_job;

static rq_status fill_artifact(void *user, const char *tmp, rq_err *err) {
    const write_job *j = user;
    return write_files(j->m, tmp, j->opts, err);
}

rq_status rq_artifact_write(const rq_model *m, const char *dir, const rq_artifact_opts *opts, rq_err *err) {
    write_job j = {m, opts};
    return rq_write_dir_atomic(dir, artifact_files, N_ARTIFACT_FILES, fill_artifact, &j, err);
}

uint64_t rq_artifact_disk_bytes(const char *dir) {
    uint64_t total = 0;
    struct stat st;
    for (int i = 0; i < N_ARTIFACT_FILES; i++) {
        char *p = rq_path_join_alloc(dir, artifact_files[i], NULL);
        if (p && stat(p, &st) == 0) total += (uint64_t)st.st_size;
        free(p);
    }
    return total;
}

/* ---- detection and loading ------------------------------------------------------------ */

static cJSON *read_json(const char *path, rq_err *err) {
    char *text = NULL;
    size_t len = 0;
    if (rq_file_read_all(path, &text, &len, err) != RQ_OK) return NULL;
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        RQ_FAIL(err, RQ_ERR_FORMAT, "%s: not a JSON object", path);
        return NULL;
    }
    return root;
}

bool rq_artifact_is_q2(const char *dir) {
    char *path = rq_path_join_alloc(dir, "config.json", NULL);
    cJSON *root = path ? read_json(path, NULL) : NULL;
    free(path);
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(root, "quantization_config");
    const cJSON *qm = cJSON_GetObjectItemCaseSensitive(q, "quant_method");
    bool yes = cJSON_IsString(qm) && strcmp(qm->valuestring, RQ_ARTIFACT_QUANT_METHOD) == 0;
    cJSON_Delete(root);
    return yes;
}

/* What quantization_config says, checked. */
typedef struct quant_block {
    int group_size;
    rq_q2_codebook_kind kind;
    float codebook[4];
    const cJSON *modules;
    const char *tensor_file;
    const char *tokenizer_file; /* NULL: none */
    rq_quant_info info;
} quant_block;

static bool json_small_int(const cJSON *j, int lo, int hi, int *out) {
    if (!cJSON_IsNumber(j) || !(j->valuedouble >= lo && j->valuedouble <= hi) || j->valuedouble != floor(j->valuedouble))
        return false;
    *out = (int)j->valuedouble;
    return true;
}

static rq_status parse_quant_block(const cJSON *root, const char *what, quant_block *qb, rq_err *err) {
    memset(qb, 0, sizeof *qb);
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(root, "quantization_config");
    if (!cJSON_IsObject(q)) return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: quantization_config must be an object", what);
    int v;
    const cJSON *fv = cJSON_GetObjectItemCaseSensitive(q, "format_version");
    if (!json_small_int(fv, 0, INT32_MAX, &v))
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: quantization_config.format_version must be a non-negative integer", what);
    if (v != RQ_ARTIFACT_FORMAT_VERSION)
        return RQ_FAIL(err, RQ_ERR_UNSUPPORTED,
                       "%s: unknown artifact format_version %d (this rilq reads version %d; a newer rilq wrote it?)",
                       what, v, RQ_ARTIFACT_FORMAT_VERSION);
    if (!json_small_int(cJSON_GetObjectItemCaseSensitive(q, "bits"), 0, 64, &v) || v != 2)
        return RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "%s: quantization_config.bits must be 2", what);
    if (!json_small_int(cJSON_GetObjectItemCaseSensitive(q, "group_size"), 1, 1 << 20, &qb->group_size))
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: quantization_config.group_size must be an integer in [1, 2^20]", what);
    const cJSON *cbn = cJSON_GetObjectItemCaseSensitive(q, "codebook_name");
    qb->kind = RQ_Q2_INT2;
    if (cbn && !cJSON_IsString(cbn))
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: quantization_config.codebook_name must be a string", what);
    if (cbn) {
        RQ_TRY(rq_q2_codebook_parse(cbn->valuestring, &qb->kind, err));
    }
    const cJSON *cb = cJSON_GetObjectItemCaseSensitive(q, "codebook");
    if (!cJSON_IsArray(cb) || cJSON_GetArraySize(cb) != 4)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: quantization_config.codebook must be an array of 4 numbers", what);
    int i = 0;
    for (const cJSON *e = cb->child; e; e = e->next, i++) {
        if (!cJSON_IsNumber(e) || !isfinite(e->valuedouble) || fabs(e->valuedouble) > 65504.0)
            return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: quantization_config.codebook[%d] is not a finite number", what, i);
        qb->codebook[i] = (float)e->valuedouble;
    }
    qb->modules = cJSON_GetObjectItemCaseSensitive(q, "quantized_modules");
    if (!cJSON_IsArray(qb->modules))
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: quantization_config.quantized_modules must be an array of names", what);
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(q, "method");
    if (cJSON_IsString(m)) snprintf(qb->info.method, sizeof qb->info.method, "%s", m->valuestring);
    qb->info.clip_search = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(q, "clip_search"));
    const cJSON *sd = cJSON_GetObjectItemCaseSensitive(q, "source_dtypes");
    if (cJSON_IsString(sd)) snprintf(qb->info.source_dtypes, sizeof qb->info.source_dtypes, "%s", sd->valuestring);
    const cJSON *ma = cJSON_GetObjectItemCaseSensitive(q, "merged_adapters"); /* optional: written by rilq merge */
    if (cJSON_IsString(ma))
        snprintf(qb->info.merged_adapters, sizeof qb->info.merged_adapters, "%s", ma->valuestring);
    /* file names are read from a hostile file: only the names rilq writes */
    const cJSON *tf = cJSON_GetObjectItemCaseSensitive(q, "tensor_file");
    qb->tensor_file = TENSOR_FILE;
    if (tf) {
        if (!cJSON_IsString(tf) || (strcmp(tf->valuestring, TENSOR_FILE) && strcmp(tf->valuestring, TENSOR_FILE_ZST)))
            return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: quantization_config.tensor_file must be \"%s\" or \"%s\"", what,
                           TENSOR_FILE, TENSOR_FILE_ZST);
        qb->tensor_file = tf->valuestring;
    }
    const cJSON *tk = cJSON_GetObjectItemCaseSensitive(q, "tokenizer_file");
    if (tk && !cJSON_IsNull(tk)) {
        if (!cJSON_IsString(tk) || (strcmp(tk->valuestring, "tokenizer.json") && strcmp(tk->valuestring, "tokenizer.bin") &&
                                    strcmp(tk->valuestring, "tokenizer.gguf")))
            return RQ_FAIL(err, RQ_ERR_FORMAT,
                           "%s: quantization_config.tokenizer_file must be tokenizer.json, tokenizer.bin or tokenizer.gguf",
                           what);
        qb->tokenizer_file = tk->valuestring;
    }
    return RQ_OK;
}

static void shape_text(char *buf, size_t cap, rq_dtype dt, int ndim, const int64_t *shape) {
    size_t n = (size_t)snprintf(buf, cap, "%s [", rq_dtype_name(dt));
    for (int i = 0; i < ndim && n < cap; i++) n += (size_t)snprintf(buf + n, cap - n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (n < cap) snprintf(buf + n, cap - n, "]");
}

/* The tensor module + suffix with dtype and [rows, cols], or a message naming
 * the file, tensor, expected and found. */
static rq_status find_part(const rq_tensor_table *tab, const char *file, const char *module, const char *suffix, rq_dtype dt,
                           int64_t rows, int64_t cols, const rq_tensor_view **out, rq_err *err) {
    char name[RQ_TENSOR_NAME_MAX + 16], want[96], got[96];
    snprintf(name, sizeof name, "%s.%s", module, suffix);
    int64_t shape[2] = {rows, cols};
    shape_text(want, sizeof want, dt, 2, shape);
    const rq_tensor_view *v = rq_tensor_table_find(tab, name);
    if (!v)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: tensor '%s' is missing (quantized module listed in config.json; expected %s)",
                       file, name, want);
    if (v->dtype != dt || v->ndim != 2 || v->shape[0] != rows || v->shape[1] != cols) {
        shape_text(got, sizeof got, v->dtype, v->ndim, v->shape);
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: tensor '%s': expected %s, found %s", file, name, want, got);
    }
    *out = v;
    return RQ_OK;
}

/* Build one q2 tensor from its three views, checking every scale and offset
 * is finite (an inf/nan would poison every output of the layer). */
static rq_status read_q2(const rq_tensor_table *tab, const char *file, const char *module, int out, int in,
                         const quant_block *qb, rq_q2_tensor **t, rq_err *err) {
    int n_groups = (in + qb->group_size - 1) / qb->group_size, row_bytes = (in + 3) / 4;
    const rq_tensor_view *codes, *scales, *offsets;
    RQ_TRY(find_part(tab, file, module, "codes", RQ_U8, out, row_bytes, &codes, err));
    RQ_TRY(find_part(tab, file, module, "scales", RQ_F16, out, n_groups, &scales, err));
    RQ_TRY(find_part(tab, file, module, "offsets", RQ_F16, out, n_groups, &offsets, err));
    RQ_TRY(rq_q2_create(out, in, qb->group_size, qb->kind, t, err));
    rq_q2_tensor *q = *t;
    memcpy(q->codebook, qb->codebook, sizeof q->codebook);
    memcpy(q->codes, codes->data, (size_t)out * (size_t)row_bytes);
    size_t n = (size_t)out * (size_t)n_groups;
    for (size_t i = 0; i < n; i++) {
        q->scales[i] = rq_rd_u16(scales->data + 2 * i);
        q->offsets[i] = rq_rd_u16(offsets->data + 2 * i);
        if (!isfinite(rq_f16_to_f32(q->scales[i])) || !isfinite(rq_f16_to_f32(q->offsets[i]))) {
            rq_q2_free(q);
            *t = NULL;
            return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: module '%s': non-finite scale or offset at row %zu, group %zu", file,
                           module, i / (size_t)n_groups, i % (size_t)n_groups);
        }
    }
    return RQ_OK;
}

/* The q2 tensors the config lists, in the builder's [layer * RQ_N_PROJ + proj] slots. */
static rq_status read_all_q2(const rq_config *c, const rq_tensor_table *tab, const char *file, const quant_block *qb,
                             rq_q2_tensor **q2, rq_err *err) {
    int idx = 0;
    for (const cJSON *e = qb->modules->child; e; e = e->next, idx++) {
        int l, p;
        if (!cJSON_IsString(e) || !parse_module_name(e->valuestring, c->n_layers, &l, &p))
            return RQ_FAIL(err, RQ_ERR_FORMAT,
                           "%s: quantized_modules[%d] is not a projection of this model (expected "
                           "model.layers.N.self_attn.q_proj ... mlp.down_proj with N < %d)",
                           file, idx, c->n_layers);
        rq_q2_tensor **slot = &q2[(size_t)l * RQ_N_PROJ + p];
        if (*slot) return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: quantized_modules lists '%s' twice", file, e->valuestring);
        int64_t qd = (int64_t)c->n_heads * c->head_dim, kvd = (int64_t)c->n_kv_heads * c->head_dim;
        int64_t outs[RQ_N_PROJ] = {qd, kvd, kvd, c->dim, c->hidden_dim, c->hidden_dim, c->dim};
        int64_t ins[RQ_N_PROJ] = {c->dim, c->dim, c->dim, qd, c->dim, c->dim, c->hidden_dim};
        RQ_TRY(read_q2(tab, file, e->valuestring, (int)outs[p], (int)ins[p], qb, slot, err));
    }
    return RQ_OK;
}

static rq_status artifact_load(const char *dir, const char *cfg_path, rq_model **out, rq_err *err) {
    cJSON *root = read_json(cfg_path, err);
    if (!root) return err ? err->code : RQ_ERR_FORMAT;
    rq_config cfg;
    quant_block qb;
    rq_status s = parse_quant_block(root, cfg_path, &qb, err);
    char *text = s == RQ_OK ? cJSON_PrintUnformatted(root) : NULL;
    if (s == RQ_OK && !text) s = RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory");
    if (s == RQ_OK) s = rq_hf_parse_config(text, strlen(text), cfg_path, &cfg, err);
    free(text);
    if (s == RQ_OK) s = rq_config_validate(&cfg, cfg_path, err);
    char tensor_file[32] = {0}, tokenizer_file[32] = {0};
    if (s == RQ_OK) {
        snprintf(tensor_file, sizeof tensor_file, "%s", qb.tensor_file);
        if (qb.tokenizer_file) snprintf(tokenizer_file, sizeof tokenizer_file, "%s", qb.tokenizer_file);
    }
    rq_q2_tensor **q2 = NULL;
    if (s == RQ_OK) {
        q2 = rq_calloc((size_t)cfg.n_layers * RQ_N_PROJ, sizeof *q2, err);
        if (!q2) s = RQ_ERR_NOMEM;
    }
    char *st_path = NULL;
    if (s == RQ_OK) {
        st_path = rq_path_join_alloc(dir, tensor_file, err);
        if (!st_path) s = RQ_ERR_NOMEM;
    }

    rq_safetensors f = {0};
    rq_tensor_table tab = {0};
    bool opened = false;
    if (s == RQ_OK && !rq_file_exists(st_path))
        s = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: config.json names tensor_file '%s' but it is missing", dir, tensor_file);
    if (s == RQ_OK) {
        if (ends_with(tensor_file, ".zst")) {
            uint8_t *bytes;
            size_t size;
            s = decompress_file(st_path, &bytes, &size, err);
            if (s == RQ_OK) s = rq_safetensors_open_buffer(st_path, bytes, size, &f, &tab, err);
        } else {
            s = rq_safetensors_open(st_path, &f, &tab, err);
        }
        opened = s == RQ_OK;
    }
    if (s == RQ_OK) s = read_all_q2(&cfg, &tab, st_path, &qb, q2, err);
    /* shapes fit (checked above); the group size they were written with must be config.json's too */
    char meta_gs[24];
    if (s == RQ_OK && rq_safetensors_metadata(&f, "rilq_group_size", meta_gs, sizeof meta_gs) &&
        atoi(meta_gs) != qb.group_size)
        s = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: config.json says group_size %d, but %s was written with group size %s "
                    "(an edited config.json or files of two artifacts); quantize again", dir, qb.group_size, st_path,
                    meta_gs);
    rq_model *m = NULL;
    if (s == RQ_OK) s = rq_model_build_q2(&cfg, &tab, q2, &m, err);
    for (int64_t k = 0; q2 && k < (int64_t)cfg.n_layers * RQ_N_PROJ; k++) rq_q2_free(q2[k]); /* those not taken */
    free(q2);
    rq_tensor_table_free(&tab);
    if (opened) rq_safetensors_close(&f);
    free(st_path);
    cJSON_Delete(root); /* qb points into it: used up above */
    if (s == RQ_OK && tokenizer_file[0]) s = load_tokenizer(m, dir, tokenizer_file, err);
    if (s != RQ_OK) {
        rq_model_free(m);
        return s;
    }
    m->quant = qb.info;
    snprintf(m->format, sizeof m->format, "rilq-q2");
    snprintf(m->path, sizeof m->path, "%s", dir);
    *out = m;
    return RQ_OK;
}

rq_status rq_artifact_load(const char *dir, rq_model **out, rq_err *err) {
    *out = NULL;
    char *cfg_path = rq_path_join_alloc(dir, "config.json", err);
    if (!cfg_path) return RQ_ERR_NOMEM;
    rq_status s = artifact_load(dir, cfg_path, out, err);
    free(cfg_path);
    return s;
}
