/* GGUF reader (llama.cpp's self-describing checkpoint format), v2 and v3.
 *
 * Layout: "GGUF", u32 version, u64 n_tensors, u64 n_kv; n_kv key/value pairs;
 * n_tensors tensor infos; zero padding to general.alignment; the data section.
 * Every count and length is checked against the bytes left in the file before
 * it is used, so a hostile file cannot make us read outside the mapping or
 * allocate more than the file could describe. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "checkpoint.h"
#include "gguf.h"

#define GGUF_MAX_ARRAY_DEPTH 4   /* arrays of arrays of ...: deeper is refused */
#define GGUF_MAX_KEY_LEN 65535
#define GGUF_DEFAULT_ALIGNMENT 32
#define RQ_TWO_PI 6.283185307179586476925

/* ---- ggml types --------------------------------------------------------------- */

typedef struct ggml_type_info {
    const char *name;
    int block, block_bytes;
    int rq; /* rq_dtype it maps to, or -1 when rilq cannot convert it */
} ggml_type_info;

static const ggml_type_info ggml_types[] = {
    [0] = {"F32", 1, 4, RQ_F32},         [1] = {"F16", 1, 2, RQ_F16},        [2] = {"Q4_0", 32, 18, RQ_Q4_0},
    [3] = {"Q4_1", 32, 20, RQ_Q4_1},     [6] = {"Q5_0", 32, 22, -1},         [7] = {"Q5_1", 32, 24, -1},
    [8] = {"Q8_0", 32, 34, RQ_Q8_0},     [9] = {"Q8_1", 32, 40, -1},         [10] = {"Q2_K", 256, 84, -1},
    [11] = {"Q3_K", 256, 110, -1},       [12] = {"Q4_K", 256, 144, -1},      [13] = {"Q5_K", 256, 176, -1},
    [14] = {"Q6_K", 256, 210, -1},       [15] = {"Q8_K", 256, 292, -1},      [16] = {"IQ2_XXS", 256, 66, -1},
    [17] = {"IQ2_XS", 256, 74, -1},      [18] = {"IQ3_XXS", 256, 98, -1},    [19] = {"IQ1_S", 256, 50, -1},
    [20] = {"IQ4_NL", 32, 18, -1},       [21] = {"IQ3_S", 256, 110, -1},     [22] = {"IQ2_S", 256, 82, -1},
    [23] = {"IQ4_XS", 256, 136, -1},     [24] = {"I8", 1, 1, RQ_I8},         [25] = {"I16", 1, 2, RQ_I16},
    [26] = {"I32", 1, 4, RQ_I32},        [27] = {"I64", 1, 8, RQ_I64},       [28] = {"F64", 1, 8, RQ_F64},
    [29] = {"IQ1_M", 256, 56, -1},       [30] = {"BF16", 1, 2, RQ_BF16},     [34] = {"TQ1_0", 256, 54, -1},
    [35] = {"TQ2_0", 256, 66, -1},
};
#define N_GGML_TYPES ((uint32_t)(sizeof ggml_types / sizeof ggml_types[0]))

static const ggml_type_info *ggml_type(uint32_t t) {
    return t < N_GGML_TYPES && ggml_types[t].name ? &ggml_types[t] : NULL;
}

const char *rq_gguf_type_name(uint32_t t) {
    const ggml_type_info *i = ggml_type(t);
    return i ? i->name : NULL;
}

bool rq_gguf_type_block(uint32_t t, int *block, int *block_bytes) {
    const ggml_type_info *i = ggml_type(t);
    if (!i) return false;
    *block = i->block;
    *block_bytes = i->block_bytes;
    return true;
}

static const int kv_scalar_size[RQ_GGUF_TYPE_COUNT] = {
    [RQ_GGUF_U8] = 1, [RQ_GGUF_I8] = 1, [RQ_GGUF_U16] = 2, [RQ_GGUF_I16] = 2, [RQ_GGUF_U32] = 4, [RQ_GGUF_I32] = 4,
    [RQ_GGUF_F32] = 4, [RQ_GGUF_BOOL] = 1, [RQ_GGUF_U64] = 8, [RQ_GGUF_I64] = 8, [RQ_GGUF_F64] = 8,
};

static const char *kv_type_name(uint32_t t) {
    static const char *names[RQ_GGUF_TYPE_COUNT] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32",
                                                     "bool", "string", "array", "u64", "i64", "f64"};
    return t < RQ_GGUF_TYPE_COUNT ? names[t] : "unknown";
}

/* ---- a bounds-checked cursor over the mapping ------------------------------------- */

typedef struct cursor {
    const uint8_t *base, *p, *end;
    const char *path;
    rq_err *err;
} cursor;

static uint64_t cur_left(const cursor *c) { return (uint64_t)(c->end - c->p); }
static size_t cur_pos(const cursor *c) { return (size_t)(c->p - c->base); }

static rq_status cur_need(cursor *c, uint64_t n, const char *what) {
    if (cur_left(c) < n)
        return RQ_FAIL(c->err, RQ_ERR_FORMAT, "%s: %s: needs %" PRIu64 " bytes at offset %zu, past the end of the file (%" PRIu64 " left; truncated?)",
                       c->path, what, n, cur_pos(c), cur_left(c));
    return RQ_OK;
}

static rq_status cur_u32(cursor *c, uint32_t *v, const char *what) {
    RQ_TRY(cur_need(c, 4, what));
    *v = rq_rd_u32(c->p);
    c->p += 4;
    return RQ_OK;
}

static rq_status cur_u64(cursor *c, uint64_t *v, const char *what) {
    RQ_TRY(cur_need(c, 8, what));
    *v = rq_rd_u64(c->p);
    c->p += 8;
    return RQ_OK;
}

/* A gguf string: u64 length + bytes. Returns a pointer into the mapping. */
static rq_status cur_str(cursor *c, const uint8_t **s, uint64_t *len, const char *what) {
    RQ_TRY(cur_u64(c, len, what));
    if (*len > cur_left(c))
        return RQ_FAIL(c->err, RQ_ERR_FORMAT, "%s: %s: string length %" PRIu64 " at offset %zu runs past the end of the file (%" PRIu64 " bytes left)",
                       c->path, what, *len, cur_pos(c) - 8, cur_left(c));
    *s = c->p;
    c->p += *len;
    return RQ_OK;
}

/* Validate and step over one value of the given type. */
static rq_status skip_value(cursor *c, uint32_t type, int depth, const char *key) {
    if (type >= RQ_GGUF_TYPE_COUNT)
        return RQ_FAIL(c->err, RQ_ERR_FORMAT, "%s: key '%s': unknown value type %u", c->path, key, type);
    if (type == RQ_GGUF_STRING) {
        const uint8_t *s;
        uint64_t len;
        return cur_str(c, &s, &len, key);
    }
    if (type != RQ_GGUF_ARRAY) {
        RQ_TRY(cur_need(c, (uint64_t)kv_scalar_size[type], key));
        c->p += kv_scalar_size[type];
        return RQ_OK;
    }
    if (depth >= GGUF_MAX_ARRAY_DEPTH)
        return RQ_FAIL(c->err, RQ_ERR_FORMAT, "%s: key '%s': arrays nested deeper than %d", c->path, key, GGUF_MAX_ARRAY_DEPTH);
    uint32_t et;
    uint64_t n;
    RQ_TRY(cur_u32(c, &et, key));
    RQ_TRY(cur_u64(c, &n, key));
    if (et >= RQ_GGUF_TYPE_COUNT)
        return RQ_FAIL(c->err, RQ_ERR_FORMAT, "%s: key '%s': unknown array element type %u", c->path, key, et);
    if (et != RQ_GGUF_STRING && et != RQ_GGUF_ARRAY) {
        uint64_t size = (uint64_t)kv_scalar_size[et];
        if (n > cur_left(c) / size)
            return RQ_FAIL(c->err, RQ_ERR_FORMAT, "%s: key '%s': array of %" PRIu64 " %s runs past the end of the file",
                           c->path, key, n, kv_type_name(et));
        c->p += n * size;
        return RQ_OK;
    }
    /* Each string takes at least 8 bytes, each array at least 12: bound n first. */
    uint64_t min_elem = et == RQ_GGUF_STRING ? 8 : 12;
    if (n > cur_left(c) / min_elem)
        return RQ_FAIL(c->err, RQ_ERR_FORMAT, "%s: key '%s': array count %" PRIu64 " runs past the end of the file", c->path,
                       key, n);
    for (uint64_t i = 0; i < n; i++) RQ_TRY(skip_value(c, et, depth + 1, key));
    return RQ_OK;
}

/* ---- open ------------------------------------------------------------------------ */

static int cmp_key_ptr(const void *a, const void *b) {
    return strcmp((*(const rq_gguf_kv *const *)a)->key, (*(const rq_gguf_kv *const *)b)->key);
}

static rq_status parse_kvs(rq_gguf *g, cursor *c, uint64_t n_kv) {
    /* A KV takes at least 8 (key length) + 1 (key) + 4 (type) + 1 bytes. */
    if (n_kv > cur_left(c) / 14)
        return RQ_FAIL(c->err, RQ_ERR_FORMAT, "%s: header: metadata count %" PRIu64 " is impossible for a %zu-byte file (truncated?)",
                       g->path, n_kv, g->view.size);
    g->kv = rq_calloc((size_t)n_kv + 1, sizeof *g->kv, c->err);
    if (!g->kv) return RQ_ERR_NOMEM;
    for (uint64_t i = 0; i < n_kv; i++) {
        char what[64];
        snprintf(what, sizeof what, "metadata key #%" PRIu64, i);
        const uint8_t *ks;
        uint64_t klen;
        RQ_TRY(cur_str(c, &ks, &klen, what));
        if (klen == 0 || klen > GGUF_MAX_KEY_LEN || memchr(ks, 0, (size_t)klen))
            return RQ_FAIL(c->err, RQ_ERR_FORMAT, "%s: %s: key of %" PRIu64 " bytes is empty, too long or holds a NUL",
                           g->path, what, klen);
        rq_gguf_kv *kv = &g->kv[i];
        kv->key = malloc((size_t)klen + 1);
        if (!kv->key) return RQ_FAIL(c->err, RQ_ERR_NOMEM, "out of memory");
        memcpy(kv->key, ks, (size_t)klen);
        kv->key[klen] = 0;
        g->n_kv = (int64_t)i + 1;
        RQ_TRY(cur_u32(c, &kv->type, kv->key));
        kv->value = c->p;
        if (kv->type == RQ_GGUF_ARRAY && cur_left(c) >= 12) {
            kv->arr_type = rq_rd_u32(c->p);
            kv->arr_n = rq_rd_u64(c->p + 4);
            kv->arr_data = c->p + 12;
        }
        RQ_TRY(skip_value(c, kv->type, 0, kv->key));
    }
    if (g->n_kv > 1) {
        rq_gguf_kv **sorted = rq_calloc((size_t)g->n_kv, sizeof *sorted, c->err);
        if (!sorted) return RQ_ERR_NOMEM;
        for (int64_t i = 0; i < g->n_kv; i++) sorted[i] = &g->kv[i];
        qsort(sorted, (size_t)g->n_kv, sizeof *sorted, cmp_key_ptr);
        rq_status s = RQ_OK;
        for (int64_t i = 1; i < g->n_kv && s == RQ_OK; i++)
            if (strcmp(sorted[i]->key, sorted[i - 1]->key) == 0)
                s = RQ_FAIL(c->err, RQ_ERR_FORMAT, "%s: metadata key '%s' appears twice", g->path, sorted[i]->key);
        free(sorted);
        RQ_TRY(s);
    }
    return RQ_OK;
}

static rq_status parse_tensor_infos(rq_gguf *g, cursor *c, uint64_t n_tensors) {
    /* A tensor info takes at least 8 + 1 + 4 + 8 + 4 + 8 bytes. */
    if (n_tensors > cur_left(c) / 33)
        return RQ_FAIL(c->err, RQ_ERR_FORMAT, "%s: header: tensor count %" PRIu64 " is impossible for a %zu-byte file (truncated?)",
                       g->path, n_tensors, g->view.size);
    g->tensors = rq_calloc((size_t)n_tensors + 1, sizeof *g->tensors, c->err);
    if (!g->tensors) return RQ_ERR_NOMEM;
    for (uint64_t i = 0; i < n_tensors; i++) {
        char what[64];
        snprintf(what, sizeof what, "tensor info #%" PRIu64, i);
        rq_gguf_tensor *t = &g->tensors[i];
        const uint8_t *ns;
        uint64_t nlen;
        RQ_TRY(cur_str(c, &ns, &nlen, what));
        if (nlen == 0 || nlen >= RQ_TENSOR_NAME_MAX || memchr(ns, 0, (size_t)nlen))
            return RQ_FAIL(c->err, RQ_ERR_FORMAT, "%s: %s: name of %" PRIu64 " bytes is empty, holds a NUL or is not below %d",
                           g->path, what, nlen, RQ_TENSOR_NAME_MAX);
        memcpy(t->name, ns, (size_t)nlen);
        t->name[nlen] = 0;
        g->n_tensors = (int64_t)i + 1;
        uint32_t n_dims;
        RQ_TRY(cur_u32(c, &n_dims, t->name));
        if (n_dims < 1 || n_dims > RQ_MAX_DIMS)
            return RQ_FAIL(c->err, RQ_ERR_FORMAT, "%s: tensor '%s': n_dims %u (must be 1..%d)", g->path, t->name, n_dims,
                           RQ_MAX_DIMS);
        t->n_dims = (int)n_dims;
        uint64_t numel = 1;
        for (uint32_t d = 0; d < n_dims; d++) {
            uint64_t ne;
            RQ_TRY(cur_u64(c, &ne, t->name));
            if (ne > (uint64_t)INT64_MAX || (ne != 0 && numel > (uint64_t)INT64_MAX / ne))
                return RQ_FAIL(c->err, RQ_ERR_FORMAT, "%s: tensor '%s': ne[%u] = %" PRIu64 " overflows", g->path, t->name, d, ne);
            numel *= ne;
            t->ne[d] = (int64_t)ne;
        }
        RQ_TRY(cur_u32(c, &t->ggml_type, t->name));
        const ggml_type_info *ti = ggml_type(t->ggml_type);
        if (!ti) return RQ_FAIL(c->err, RQ_ERR_FORMAT, "%s: tensor '%s': unknown ggml type %u", g->path, t->name, t->ggml_type);
        if (t->ne[0] % ti->block != 0)
            return RQ_FAIL(c->err, RQ_ERR_FORMAT, "%s: tensor '%s': row length ne[0] = %" PRId64 " is not a multiple of the %s block size %d",
                           g->path, t->name, t->ne[0], ti->name, ti->block);
        t->nbytes = numel / (uint64_t)ti->block * (uint64_t)ti->block_bytes; /* numel < 2^63, block_bytes/block <= 8 */
        if (numel / (uint64_t)ti->block > UINT64_MAX / (uint64_t)ti->block_bytes)
            return RQ_FAIL(c->err, RQ_ERR_FORMAT, "%s: tensor '%s': size overflows", g->path, t->name);
        RQ_TRY(cur_u64(c, &t->offset, t->name));
    }
    return RQ_OK;
}

static int cmp_tensor_offset(const void *a, const void *b) {
    const rq_gguf_tensor *x = *(const rq_gguf_tensor *const *)a, *y = *(const rq_gguf_tensor *const *)b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp((*(const rq_gguf_tensor *const *)a)->name, (*(const rq_gguf_tensor *const *)b)->name);
}

static rq_status check_tensor_data(rq_gguf *g, rq_err *err) {
    uint64_t data_size = g->view.size - g->data_offset;
    for (int64_t i = 0; i < g->n_tensors; i++) {
        const rq_gguf_tensor *t = &g->tensors[i];
        if (t->offset % g->alignment != 0)
            return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: tensor '%s': offset %" PRIu64 " is not a multiple of the alignment %" PRIu64,
                           g->path, t->name, t->offset, g->alignment);
        if (t->offset > data_size || t->nbytes > data_size - t->offset)
            return RQ_FAIL(err, RQ_ERR_FORMAT,
                           "%s: tensor '%s': data [%" PRIu64 ", +%" PRIu64 ") is outside the %" PRIu64 "-byte data section (truncated file?)",
                           g->path, t->name, t->offset, t->nbytes, data_size);
    }
    if (g->n_tensors < 2) return RQ_OK;
    const rq_gguf_tensor **sorted = rq_calloc((size_t)g->n_tensors, sizeof *sorted, err);
    if (!sorted) return RQ_ERR_NOMEM;
    for (int64_t i = 0; i < g->n_tensors; i++) sorted[i] = &g->tensors[i];
    rq_status s = RQ_OK;
    qsort(sorted, (size_t)g->n_tensors, sizeof *sorted, cmp_tensor_name);
    for (int64_t i = 1; i < g->n_tensors && s == RQ_OK; i++)
        if (strcmp(sorted[i]->name, sorted[i - 1]->name) == 0)
            s = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: tensor '%s' appears twice", g->path, sorted[i]->name);
    qsort(sorted, (size_t)g->n_tensors, sizeof *sorted, cmp_tensor_offset);
    for (int64_t i = 1; i < g->n_tensors && s == RQ_OK; i++) {
        const rq_gguf_tensor *a = sorted[i - 1], *b = sorted[i];
        if (b->offset < a->offset + a->nbytes)
            s = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: tensors '%s' and '%s' overlap in the data section (offsets %" PRIu64 " and %" PRIu64 ")",
                        g->path, a->name, b->name, a->offset, b->offset);
    }
    free(sorted);
    return s;
}

static rq_status parse_file(rq_gguf *g, rq_err *err) {
    cursor c = {g->view.data, g->view.data, g->view.data + g->view.size, g->path, err};
    if (g->view.size < 4 || memcmp(g->view.data, "GGUF", 4) != 0)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: bad magic: not a GGUF file (expected the bytes 'GGUF')", g->path);
    c.p += 4;
    RQ_TRY(cur_u32(&c, &g->version, "header: version"));
    if (g->version == 0x03000000u || g->version == 0x02000000u)
        return RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "%s: header: big-endian GGUF is not supported", g->path);
    if (g->version != 2 && g->version != 3)
        return RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "%s: header: GGUF version %u is not supported (only 2 and 3)", g->path, g->version);
    uint64_t n_tensors, n_kv;
    RQ_TRY(cur_u64(&c, &n_tensors, "header: tensor count"));
    RQ_TRY(cur_u64(&c, &n_kv, "header: metadata count"));
    RQ_TRY(parse_kvs(g, &c, n_kv));

    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    if (rq_gguf_find(g, "general.alignment")) {
        uint32_t a;
        RQ_TRY(rq_gguf_get_u32(g, "general.alignment", &a, err));
        if (a == 0 || (a & (a - 1)) != 0 || a > (1u << 20))
            return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: general.alignment = %u is not a power of two up to 2^20", g->path, a);
        g->alignment = a;
    }
    RQ_TRY(parse_tensor_infos(g, &c, n_tensors));
    uint64_t pos = cur_pos(&c);
    uint64_t pad = (g->alignment - pos % g->alignment) % g->alignment;
    if (pad > cur_left(&c) && n_tensors > 0)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: data section would start at offset %" PRIu64 ", past the end of the %zu-byte file (truncated?)",
                       g->path, pos + pad, g->view.size);
    g->data_offset = pad > cur_left(&c) ? g->view.size : pos + pad;
    return check_tensor_data(g, err);
}

rq_status rq_gguf_open(const char *path, rq_gguf *g, rq_err *err) {
    memset(g, 0, sizeof *g);
    g->path = rq_strdup(path, err);
    if (!g->path) return RQ_ERR_NOMEM;
    rq_status s = rq_file_map(path, &g->view, err);
    if (s == RQ_OK) s = parse_file(g, err);
    if (s != RQ_OK) rq_gguf_close(g);
    return s;
}

void rq_gguf_close(rq_gguf *g) {
    for (int64_t i = 0; i < g->n_kv; i++) free(g->kv[i].key);
    free(g->kv);
    free(g->tensors);
    rq_file_unmap(&g->view);
    free(g->path);
    memset(g, 0, sizeof *g);
}

/* ---- metadata lookups ------------------------------------------------------------ */

const rq_gguf_kv *rq_gguf_find(const rq_gguf *g, const char *key) {
    for (int64_t i = 0; i < g->n_kv; i++)
        if (strcmp(g->kv[i].key, key) == 0) return &g->kv[i];
    return NULL;
}

static rq_status find_typed(const rq_gguf *g, const char *key, const rq_gguf_kv **kv, rq_err *err) {
    *kv = rq_gguf_find(g, key);
    if (!*kv) return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: missing metadata key '%s'", g->path, key);
    return RQ_OK;
}

static bool is_int_type(uint32_t t) {
    return t == RQ_GGUF_U8 || t == RQ_GGUF_I8 || t == RQ_GGUF_U16 || t == RQ_GGUF_I16 || t == RQ_GGUF_U32 ||
           t == RQ_GGUF_I32 || t == RQ_GGUF_U64 || t == RQ_GGUF_I64;
}

/* Decode an integer of type t at p; false when a u64 does not fit int64. */
static bool decode_int(uint32_t t, const uint8_t *p, int64_t *out) {
    switch (t) {
    case RQ_GGUF_U8: *out = p[0]; return true;
    case RQ_GGUF_I8: *out = (int8_t)p[0]; return true;
    case RQ_GGUF_U16: *out = rq_rd_u16(p); return true;
    case RQ_GGUF_I16: *out = (int16_t)rq_rd_u16(p); return true;
    case RQ_GGUF_U32: *out = rq_rd_u32(p); return true;
    case RQ_GGUF_I32: *out = (int32_t)rq_rd_u32(p); return true;
    case RQ_GGUF_I64: *out = (int64_t)rq_rd_u64(p); return true;
    case RQ_GGUF_U64: {
        uint64_t v = rq_rd_u64(p);
        if (v > (uint64_t)INT64_MAX) return false;
        *out = (int64_t)v;
        return true;
    }
    default: return false;
    }
}

rq_status rq_gguf_get_i64(const rq_gguf *g, const char *key, int64_t *out, rq_err *err) {
    const rq_gguf_kv *kv;
    RQ_TRY(find_typed(g, key, &kv, err));
    if (!is_int_type(kv->type) || !decode_int(kv->type, kv->value, out))
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: metadata key '%s' has type %s, expected an integer", g->path, key,
                       kv_type_name(kv->type));
    return RQ_OK;
}

rq_status rq_gguf_get_u32(const rq_gguf *g, const char *key, uint32_t *out, rq_err *err) {
    int64_t v;
    RQ_TRY(rq_gguf_get_i64(g, key, &v, err));
    if (v < 0 || v > (int64_t)UINT32_MAX)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: metadata key '%s' = %" PRId64 " is out of range for u32", g->path, key, v);
    *out = (uint32_t)v;
    return RQ_OK;
}

rq_status rq_gguf_get_f32(const rq_gguf *g, const char *key, float *out, rq_err *err) {
    const rq_gguf_kv *kv;
    RQ_TRY(find_typed(g, key, &kv, err));
    int64_t iv;
    if (kv->type == RQ_GGUF_F32) *out = rq_rd_f32(kv->value);
    else if (kv->type == RQ_GGUF_F64) {
        uint64_t bits = rq_rd_u64(kv->value);
        double d;
        memcpy(&d, &bits, 8);
        *out = (float)d;
    } else if (is_int_type(kv->type) && decode_int(kv->type, kv->value, &iv)) *out = (float)iv;
    else
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: metadata key '%s' has type %s, expected a number", g->path, key,
                       kv_type_name(kv->type));
    return RQ_OK;
}

rq_status rq_gguf_get_bool(const rq_gguf *g, const char *key, bool *out, rq_err *err) {
    const rq_gguf_kv *kv;
    RQ_TRY(find_typed(g, key, &kv, err));
    if (kv->type != RQ_GGUF_BOOL)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: metadata key '%s' has type %s, expected bool", g->path, key, kv_type_name(kv->type));
    *out = kv->value[0] != 0;
    return RQ_OK;
}

rq_status rq_gguf_get_str(const rq_gguf *g, const char *key, char **out, rq_err *err) {
    const rq_gguf_kv *kv;
    *out = NULL;
    RQ_TRY(find_typed(g, key, &kv, err));
    if (kv->type != RQ_GGUF_STRING)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: metadata key '%s' has type %s, expected string", g->path, key, kv_type_name(kv->type));
    uint64_t len = rq_rd_u64(kv->value); /* validated against the file when opened */
    char *s = malloc((size_t)len + 1);
    if (!s) return RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory reading '%s'", key);
    memcpy(s, kv->value + 8, (size_t)len);
    s[len] = 0;
    *out = s;
    return RQ_OK;
}

static rq_status find_array(const rq_gguf *g, const char *key, const rq_gguf_kv **kv, rq_err *err) {
    RQ_TRY(find_typed(g, key, kv, err));
    if ((*kv)->type != RQ_GGUF_ARRAY)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: metadata key '%s' has type %s, expected an array", g->path, key,
                       kv_type_name((*kv)->type));
    if ((*kv)->arr_n > (uint64_t)INT32_MAX)
        return RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "%s: metadata array '%s' has %" PRIu64 " elements (too many)", g->path, key,
                       (*kv)->arr_n);
    return RQ_OK;
}

rq_status rq_gguf_get_str_array(const rq_gguf *g, const char *key, rq_gguf_strings *out, rq_err *err) {
    memset(out, 0, sizeof *out);
    const rq_gguf_kv *kv;
    RQ_TRY(find_array(g, key, &kv, err));
    if (kv->arr_type != RQ_GGUF_STRING)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: metadata key '%s' is an array of %s, expected strings", g->path, key,
                       kv_type_name(kv->arr_type));
    size_t n = (size_t)kv->arr_n;
    /* Lengths were validated at open; sum them for one blob. */
    size_t total = 0;
    const uint8_t *p = kv->arr_data;
    for (size_t i = 0; i < n; i++) {
        uint64_t len = rq_rd_u64(p);
        total += (size_t)len + 1;
        p += 8 + len;
    }
    out->items = rq_calloc(n + 1, sizeof *out->items, err);
    out->lens = rq_calloc(n + 1, sizeof *out->lens, err);
    out->blob = rq_calloc(total + 1, 1, err);
    if (!out->items || !out->lens || !out->blob) {
        rq_gguf_strings_free(out);
        return RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory reading '%s'", key);
    }
    char *dst = out->blob;
    p = kv->arr_data;
    for (size_t i = 0; i < n; i++) {
        uint64_t len = rq_rd_u64(p);
        if (len > INT32_MAX) {
            rq_gguf_strings_free(out);
            return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: '%s'[%zu]: string too long", g->path, key, i);
        }
        memcpy(dst, p + 8, (size_t)len);
        dst[len] = 0;
        out->items[i] = dst;
        out->lens[i] = (int)len;
        dst += len + 1;
        p += 8 + len;
    }
    out->n = (int64_t)n;
    return RQ_OK;
}

void rq_gguf_strings_free(rq_gguf_strings *s) {
    free(s->items);
    free(s->lens);
    free(s->blob);
    memset(s, 0, sizeof *s);
}

rq_status rq_gguf_get_f32_array(const rq_gguf *g, const char *key, float **out, int64_t *n, rq_err *err) {
    *out = NULL;
    const rq_gguf_kv *kv;
    RQ_TRY(find_array(g, key, &kv, err));
    if (kv->arr_type != RQ_GGUF_F32 && kv->arr_type != RQ_GGUF_F64)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: metadata key '%s' is an array of %s, expected f32", g->path, key,
                       kv_type_name(kv->arr_type));
    float *v = rq_calloc((size_t)kv->arr_n + 1, sizeof *v, err);
    if (!v) return RQ_ERR_NOMEM;
    for (uint64_t i = 0; i < kv->arr_n; i++) {
        if (kv->arr_type == RQ_GGUF_F32) v[i] = rq_rd_f32(kv->arr_data + 4 * i);
        else {
            uint64_t bits = rq_rd_u64(kv->arr_data + 8 * i);
            double d;
            memcpy(&d, &bits, 8);
            v[i] = (float)d;
        }
    }
    *out = v;
    *n = (int64_t)kv->arr_n;
    return RQ_OK;
}

rq_status rq_gguf_get_i32_array(const rq_gguf *g, const char *key, int32_t **out, int64_t *n, rq_err *err) {
    *out = NULL;
    const rq_gguf_kv *kv;
    RQ_TRY(find_array(g, key, &kv, err));
    if (!is_int_type(kv->arr_type))
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: metadata key '%s' is an array of %s, expected integers", g->path, key,
                       kv_type_name(kv->arr_type));
    int32_t *v = rq_calloc((size_t)kv->arr_n + 1, sizeof *v, err);
    if (!v) return RQ_ERR_NOMEM;
    int size = kv_scalar_size[kv->arr_type];
    for (uint64_t i = 0; i < kv->arr_n; i++) {
        int64_t x;
        if (!decode_int(kv->arr_type, kv->arr_data + (size_t)size * i, &x) || x < INT32_MIN || x > INT32_MAX) {
            free(v);
            return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: '%s'[%" PRIu64 "] does not fit in int32", g->path, key, i);
        }
        v[i] = (int32_t)x;
    }
    *out = v;
    *n = (int64_t)kv->arr_n;
    return RQ_OK;
}

uint64_t rq_gguf_kv_value_size(const rq_gguf *g, const rq_gguf_kv *kv) {
    /* validated when the file was opened: stepping over it again cannot fail */
    cursor c = {g->view.data, kv->value, g->view.data + g->view.size, g->path, NULL};
    if (skip_value(&c, kv->type, 0, kv->key) != RQ_OK) return 0;
    return (uint64_t)(c.p - kv->value);
}

const rq_gguf_tensor *rq_gguf_find_tensor(const rq_gguf *g, const char *name) {
    for (int64_t i = 0; i < g->n_tensors; i++)
        if (strcmp(g->tensors[i].name, name) == 0) return &g->tensors[i];
    return NULL;
}

/* ---- llama: config --------------------------------------------------------------- */

/* An optional positive int key; absent leaves *out. */
static rq_status opt_int(const rq_gguf *g, const char *key, int *out, rq_err *err) {
    if (!rq_gguf_find(g, key)) return RQ_OK;
    int64_t v;
    RQ_TRY(rq_gguf_get_i64(g, key, &v, err));
    if (v < 0 || v > INT32_MAX) return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: '%s' = %" PRId64 " is out of range", g->path, key, v);
    *out = (int)v;
    return RQ_OK;
}

static rq_status req_int(const rq_gguf *g, const char *key, int *out, rq_err *err) {
    if (!rq_gguf_find(g, key)) return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: missing metadata key '%s'", g->path, key);
    return opt_int(g, key, out, err);
}

/* The rope_freqs divisor llama3 scaling gives frequency i (HF's formula). */
static double llama3_divisor(double inv_freq, double factor, double low, double high, double orig) {
    double wavelen = RQ_TWO_PI / inv_freq;
    if (wavelen < orig / high) return 1.0;
    if (wavelen > orig / low) return factor;
    double smooth = (orig / wavelen - low) / (high - low);
    return 1.0 / ((1.0 - smooth) / factor + smooth);
}

static bool llama3_matches(const float *div, int n, int hd, double theta, double factor, double low, double high,
                           double orig) {
    for (int i = 0; i < n; i++) {
        double inv = pow(theta, -2.0 * i / hd);
        double want = llama3_divisor(inv, factor, low, high, orig);
        if (fabs(want - div[i]) > 1e-3 * fabs(want)) return false;
    }
    return true;
}

/* GGUF stores llama3 rope scaling only as rope_freqs.weight, the per-frequency
 * divisors. rq_config wants the HF parameters, so recover them: factor is the
 * largest divisor; try Llama-3.1's (low 1, high 4, orig 8192) and otherwise fit
 * the two unknowns from the smoothly interpolated middle band. The divisors
 * depend on (orig, low, high) only through orig/low, orig/high and their
 * ratio, so fixing low = 1 loses nothing. Every recovered set is checked
 * against all divisors (relative 1e-3) before it is used. */
static rq_status infer_llama3(const rq_gguf *g, const float *div, int n, rq_config *c, rq_err *err) {
    int hd = c->head_dim;
    double theta = c->rope_theta, factor = 0;
    for (int i = 0; i < n; i++) {
        if (!isfinite(div[i]) || div[i] <= 0)
            return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: rope_freqs.weight[%d] = %g is not a positive divisor", g->path, i, div[i]);
        if (div[i] > factor) factor = div[i];
    }
    bool all_one = true;
    for (int i = 0; i < n; i++) all_one &= fabs(div[i] - 1.0) < 1e-6;
    if (all_one) return RQ_OK;
    double low = 1, high = 4, orig = 8192;
    if (!llama3_matches(div, n, hd, theta, factor, low, high, orig)) {
        int first = -1, last = -1;
        for (int i = 0; i < n; i++)
            if (div[i] > 1.0 + 1e-4 && div[i] < factor * (1.0 - 1e-4)) {
                if (first < 0) first = i;
                last = i;
            }
        bool ok = first >= 0 && last > first;
        if (ok) {
            double w1 = RQ_TWO_PI / pow(theta, -2.0 * first / hd), w2 = RQ_TWO_PI / pow(theta, -2.0 * last / hd);
            double s1 = (1.0 / div[first] - 1.0 / factor) / (1.0 - 1.0 / factor);
            double s2 = (1.0 / div[last] - 1.0 / factor) / (1.0 - 1.0 / factor);
            double a = (s1 - s2) / (1.0 / w1 - 1.0 / w2), b = a / w1 - s1; /* s = a / w - b */
            ok = isfinite(a) && isfinite(b) && b > 0 && a > 0;
            if (ok) {
                orig = round(a / b);
                high = 1.0 + 1.0 / b;
                ok = orig >= 1 && orig < INT32_MAX && llama3_matches(div, n, hd, theta, factor, low, high, orig);
            }
        }
        if (!ok)
            return RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "%s: rope_freqs.weight does not match llama3 rope scaling", g->path);
    }
    c->rope_scaling = RQ_ROPE_SCALING_LLAMA3;
    c->rope_factor = (float)factor;
    c->rope_low_freq_factor = (float)low;
    c->rope_high_freq_factor = (float)high;
    c->rope_orig_max_pos = (int)orig;
    return RQ_OK;
}

static rq_status read_rope_scaling(const rq_gguf *g, rq_config *c, rq_err *err) {
    if (rq_gguf_find(g, "llama.rope.scaling.type")) {
        char *type = NULL;
        RQ_TRY(rq_gguf_get_str(g, "llama.rope.scaling.type", &type, err));
        rq_status s = RQ_OK;
        if (strcmp(type, "linear") == 0) {
            c->rope_scaling = RQ_ROPE_SCALING_LINEAR;
            s = rq_gguf_get_f32(g, "llama.rope.scaling.factor", &c->rope_factor, err);
        } else if (strcmp(type, "none") != 0) {
            s = RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "%s: llama.rope.scaling.type '%s' is not supported (none, linear)", g->path, type);
        }
        free(type);
        RQ_TRY(s);
        if (c->rope_scaling != RQ_ROPE_SCALING_NONE) return RQ_OK;
    }
    const rq_gguf_tensor *rf = rq_gguf_find_tensor(g, "rope_freqs.weight");
    if (!rf) return RQ_OK;
    if (rf->ggml_type != 0 || rf->n_dims != 1 || rf->ne[0] != c->head_dim / 2)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: rope_freqs.weight must be F32 [%d] (head_dim / 2)", g->path, c->head_dim / 2);
    float *div = rq_calloc((size_t)rf->ne[0] + 1, sizeof *div, err);
    if (!div) return RQ_ERR_NOMEM;
    const uint8_t *p = g->view.data + g->data_offset + rf->offset;
    for (int64_t i = 0; i < rf->ne[0]; i++) div[i] = rq_rd_f32(p + 4 * i);
    rq_status s = infer_llama3(g, div, (int)rf->ne[0], c, err);
    free(div);
    return s;
}

static rq_status add_token_id(const rq_gguf *g, const char *key, int *out, rq_err *err) {
    if (!rq_gguf_find(g, key)) return RQ_OK;
    uint32_t v;
    RQ_TRY(rq_gguf_get_u32(g, key, &v, err));
    if (v > INT32_MAX) return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: '%s' = %u is out of range", g->path, key, v);
    *out = (int)v;
    return RQ_OK;
}

rq_status rq_gguf_llama_config(const rq_gguf *g, rq_config *c, rq_err *err) {
    memset(c, 0, sizeof *c);
    c->bos_id = -1;
    char *arch = NULL;
    RQ_TRY(rq_gguf_get_str(g, "general.architecture", &arch, err));
    bool is_llama = strcmp(arch, "llama") == 0;
    if (!is_llama) {
        rq_status s = RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "%s: general.architecture '%s' is not supported (only llama)", g->path, arch);
        free(arch);
        return s;
    }
    free(arch);
    RQ_TRY(req_int(g, "llama.embedding_length", &c->dim, err));
    RQ_TRY(req_int(g, "llama.feed_forward_length", &c->hidden_dim, err));
    RQ_TRY(req_int(g, "llama.block_count", &c->n_layers, err));
    RQ_TRY(req_int(g, "llama.attention.head_count", &c->n_heads, err));
    RQ_TRY(opt_int(g, "llama.attention.head_count_kv", &c->n_kv_heads, err));
    RQ_TRY(opt_int(g, "llama.attention.key_length", &c->head_dim, err));
    int value_len = 0, rope_dim = 0;
    RQ_TRY(opt_int(g, "llama.attention.value_length", &value_len, err));
    RQ_TRY(opt_int(g, "llama.rope.dimension_count", &rope_dim, err));
    if (c->head_dim == 0 && c->n_heads > 0 && c->dim % c->n_heads == 0) c->head_dim = c->dim / c->n_heads;
    if (value_len && value_len != c->head_dim)
        return RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "%s: llama.attention.value_length %d differs from key_length %d", g->path,
                       value_len, c->head_dim);
    if (rope_dim && rope_dim != c->head_dim)
        return RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "%s: llama.rope.dimension_count %d != head_dim %d (partial rotary)", g->path,
                       rope_dim, c->head_dim);
    RQ_TRY(opt_int(g, "llama.context_length", &c->max_seq_len, err));
    c->norm_eps = 1e-5f;
    if (rq_gguf_find(g, "llama.attention.layer_norm_rms_epsilon"))
        RQ_TRY(rq_gguf_get_f32(g, "llama.attention.layer_norm_rms_epsilon", &c->norm_eps, err));
    c->rope_theta = 10000.0f;
    if (rq_gguf_find(g, "llama.rope.freq_base")) RQ_TRY(rq_gguf_get_f32(g, "llama.rope.freq_base", &c->rope_theta, err));

    /* vocab: the key, else the token list, else the embedding's rows. */
    RQ_TRY(opt_int(g, "llama.vocab_size", &c->vocab_size, err));
    const rq_gguf_kv *toks = rq_gguf_find(g, "tokenizer.ggml.tokens");
    const rq_gguf_tensor *emb = rq_gguf_find_tensor(g, "token_embd.weight");
    if (c->vocab_size == 0 && toks && toks->type == RQ_GGUF_ARRAY && toks->arr_n <= INT32_MAX) c->vocab_size = (int)toks->arr_n;
    if (c->vocab_size == 0 && emb && emb->n_dims == 2 && emb->ne[1] <= INT32_MAX) c->vocab_size = (int)emb->ne[1];
    c->tie_embeddings = rq_gguf_find_tensor(g, "output.weight") == NULL;

    RQ_TRY(add_token_id(g, "tokenizer.ggml.bos_token_id", &c->bos_id, err));
    /* llama.cpp stops generation on any end-of-generation token: eos, eot, eom. */
    const char *eog_keys[] = {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"};
    for (int k = 0; k < 3; k++) {
        int id = -1;
        RQ_TRY(add_token_id(g, eog_keys[k], &id, err));
        bool seen = id < 0;
        for (int j = 0; j < c->n_eos; j++) seen |= c->eos_ids[j] == id;
        if (!seen) c->eos_ids[c->n_eos++] = id;
    }
    if (c->head_dim > 0) RQ_TRY(read_rope_scaling(g, c, err));
    return RQ_OK;
}

/* ---- llama: tensors --------------------------------------------------------------- */

typedef struct name_map {
    const char *gguf, *hf;
    int unpermute; /* 1: q (n_heads), 2: k (n_kv_heads) */
} name_map;

static const name_map layer_names[] = {
    {"attn_norm.weight", "input_layernorm.weight", 0},
    {"attn_q.weight", "self_attn.q_proj.weight", 1},
    {"attn_k.weight", "self_attn.k_proj.weight", 2},
    {"attn_v.weight", "self_attn.v_proj.weight", 0},
    {"attn_output.weight", "self_attn.o_proj.weight", 0},
    {"ffn_norm.weight", "post_attention_layernorm.weight", 0},
    {"ffn_gate.weight", "mlp.gate_proj.weight", 0},
    {"ffn_up.weight", "mlp.up_proj.weight", 0},
    {"ffn_down.weight", "mlp.down_proj.weight", 0},
};

static const name_map global_names[] = {
    {"token_embd.weight", "model.embed_tokens.weight", 0},
    {"output_norm.weight", "model.norm.weight", 0},
    {"output.weight", "lm_head.weight", 0},
};

/* HF name for a GGUF name; false when it is not a llama weight we know. */
static bool map_name(const char *gguf, char *hf, size_t cap, int *unpermute) {
    *unpermute = 0;
    for (size_t i = 0; i < sizeof global_names / sizeof global_names[0]; i++)
        if (strcmp(gguf, global_names[i].gguf) == 0) {
            snprintf(hf, cap, "%s", global_names[i].hf);
            return true;
        }
    if (strncmp(gguf, "blk.", 4) != 0) return false;
    const char *p = gguf + 4;
    long layer = 0;
    int digits = 0;
    while (*p >= '0' && *p <= '9' && digits < 7) layer = layer * 10 + (*p++ - '0'), digits++;
    if (digits == 0 || *p != '.') return false;
    p++;
    for (size_t i = 0; i < sizeof layer_names / sizeof layer_names[0]; i++)
        if (strcmp(p, layer_names[i].gguf) == 0) {
            snprintf(hf, cap, "model.layers.%ld.%s", layer, layer_names[i].hf);
            *unpermute = layer_names[i].unpermute;
            return true;
        }
    return false;
}

rq_status rq_gguf_llama_tensors(const rq_gguf *g, const rq_config *cfg, rq_tensor_table *tab, rq_err *err) {
    for (int64_t i = 0; i < g->n_tensors; i++) {
        const rq_gguf_tensor *t = &g->tensors[i];
        rq_tensor_view v;
        memset(&v, 0, sizeof v);
        int unpermute;
        bool known = map_name(t->name, v.name, sizeof v.name, &unpermute);
        if (!known) snprintf(v.name, sizeof v.name, "%s", t->name);
        const ggml_type_info *ti = ggml_type(t->ggml_type);
        if (ti->rq < 0) {
            if (!known) continue; /* not a weight we use: its type does not matter */
            return RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "%s: tensor '%s' has ggml type %s, which rilq cannot read (use F32, F16, BF16, Q8_0, Q4_0 or Q4_1)",
                           g->path, t->name, ti->name);
        }
        v.dtype = (rq_dtype)ti->rq;
        v.ndim = t->n_dims;
        for (int d = 0; d < t->n_dims; d++) v.shape[d] = t->ne[t->n_dims - 1 - d];
        v.data = g->view.data + g->data_offset + t->offset;
        v.nbytes = t->nbytes;
        v.file = g->path;
        v.unpermute_heads = unpermute == 1 ? cfg->n_heads : unpermute == 2 ? cfg->n_kv_heads : 0;
        RQ_TRY(rq_tensor_table_add(tab, &v, err));
    }
    return RQ_OK;
}

/* ---- tokenizer --------------------------------------------------------------------- */

static rq_status opt_token_id(const rq_gguf *g, const char *key, int n_vocab, int *out, rq_err *err) {
    *out = -1;
    if (!rq_gguf_find(g, key)) return RQ_OK;
    int64_t v;
    RQ_TRY(rq_gguf_get_i64(g, key, &v, err));
    if (v < 0 || v >= n_vocab)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: '%s' = %" PRId64 " is outside the vocabulary of %d tokens", g->path, key, v, n_vocab);
    *out = (int)v;
    return RQ_OK;
}

static rq_status opt_bool(const rq_gguf *g, const char *key, bool *out, rq_err *err) {
    if (!rq_gguf_find(g, key)) return RQ_OK;
    return rq_gguf_get_bool(g, key, out, err);
}

rq_status rq_gguf_tokenizer(const rq_gguf *g, rq_tokenizer **out, rq_err *err) {
    *out = NULL;
    if (!rq_gguf_find(g, "tokenizer.ggml.model")) return RQ_OK;
    char *model = NULL, *pre = NULL;
    rq_gguf_strings tokens = {0}, merges = {0};
    float *scores = NULL;
    int32_t *types = NULL;
    int *special = NULL;
    rq_tokenizer_spec spec;
    memset(&spec, 0, sizeof spec);
    rq_status s = rq_gguf_get_str(g, "tokenizer.ggml.model", &model, err);
    if (s != RQ_OK) goto done;
    if (strcmp(model, "none") == 0 || strcmp(model, "no_vocab") == 0) goto done;
    if (strcmp(model, "llama") == 0) spec.kind = RQ_TOK_SPM;
    else if (strcmp(model, "gpt2") == 0) spec.kind = RQ_TOK_BYTE_BPE;
    else {
        s = RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "%s: tokenizer.ggml.model '%s' is not supported (llama or gpt2)", g->path, model);
        goto done;
    }
    s = rq_gguf_get_str_array(g, "tokenizer.ggml.tokens", &tokens, err);
    if (s != RQ_OK) goto done;
    int n = (int)tokens.n;
    if (n <= 0) {
        s = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: tokenizer.ggml.tokens is empty", g->path);
        goto done;
    }
    spec.n_vocab = n;
    spec.tokens = (const char *const *)tokens.items;
    spec.token_lens = tokens.lens;
    int64_t cnt = 0;
    if (rq_gguf_find(g, "tokenizer.ggml.scores")) {
        s = rq_gguf_get_f32_array(g, "tokenizer.ggml.scores", &scores, &cnt, err);
        if (s == RQ_OK && cnt != n) s = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: tokenizer.ggml.scores has %" PRId64 " entries, tokens has %d", g->path, cnt, n);
        if (s != RQ_OK) goto done;
        if (spec.kind == RQ_TOK_SPM) spec.scores = scores;
    } else if (spec.kind == RQ_TOK_SPM) {
        s = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: SentencePiece vocabulary without tokenizer.ggml.scores", g->path);
        goto done;
    }
    if (rq_gguf_find(g, "tokenizer.ggml.token_type")) {
        s = rq_gguf_get_i32_array(g, "tokenizer.ggml.token_type", &types, &cnt, err);
        if (s == RQ_OK && cnt != n) s = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: tokenizer.ggml.token_type has %" PRId64 " entries, tokens has %d", g->path, cnt, n);
        if (s != RQ_OK) goto done;
        spec.token_types = types;
        /* Control, user-defined and unknown tokens are matched whole on the raw
         * text, as llama.cpp's special-token pass does (and HF, where <unk> is a
         * special added token; the llama2.c loader does the same). */
        special = rq_calloc((size_t)n, sizeof *special, err);
        if (!special) {
            s = RQ_ERR_NOMEM;
            goto done;
        }
        for (int i = 0; i < n; i++)
            if (types[i] == RQ_TOKTYPE_CONTROL || types[i] == RQ_TOKTYPE_USER || types[i] == RQ_TOKTYPE_UNKNOWN)
                special[spec.n_special++] = i;
        spec.special_ids = special;
    }
    if (spec.kind == RQ_TOK_BYTE_BPE) {
        s = rq_gguf_get_str_array(g, "tokenizer.ggml.merges", &merges, err);
        if (s != RQ_OK) goto done;
        spec.merges = (const char *const *)merges.items;
        spec.n_merges = (int)merges.n;
        /* Pre-tokenizer: the names llama.cpp's converter writes. Unknown names
         * (and "default"/"gpt2") get the GPT-2 split, the common ancestor. */
        spec.pretok = RQ_PRETOK_GPT2;
        if (rq_gguf_find(g, "tokenizer.ggml.pre")) {
            s = rq_gguf_get_str(g, "tokenizer.ggml.pre", &pre, err);
            if (s != RQ_OK) goto done;
            if (strcmp(pre, "smollm") == 0) spec.pretok = RQ_PRETOK_SMOLLM;
            else if (strcmp(pre, "llama-bpe") == 0 || strcmp(pre, "llama3") == 0) {
                spec.pretok = RQ_PRETOK_LLAMA3;
                spec.ignore_merges = true;
            }
        }
    } else {
        spec.pretok = RQ_PRETOK_NONE;
    }
    /* Defaults as llama.cpp assumes them when the keys are absent. */
    spec.add_bos_default = spec.kind == RQ_TOK_SPM;
    spec.add_space_prefix = spec.kind == RQ_TOK_SPM;
    s = opt_bool(g, "tokenizer.ggml.add_bos_token", &spec.add_bos_default, err);
    if (s == RQ_OK) s = opt_bool(g, "tokenizer.ggml.add_space_prefix", &spec.add_space_prefix, err);
    if (s == RQ_OK) s = opt_token_id(g, "tokenizer.ggml.bos_token_id", n, &spec.bos_id, err);
    if (s == RQ_OK) s = opt_token_id(g, "tokenizer.ggml.eos_token_id", n, &spec.eos_id, err);
    if (s == RQ_OK) s = opt_token_id(g, "tokenizer.ggml.unknown_token_id", n, &spec.unk_id, err);
    if (s == RQ_OK) s = opt_token_id(g, "tokenizer.ggml.padding_token_id", n, &spec.pad_id, err);
    if (s == RQ_OK) s = rq_tokenizer_create(&spec, out, err);
    if (s != RQ_OK) rq_err_prefix(err, "%s: tokenizer: ", g->path);
done:
    free(model);
    free(pre);
    free(scores);
    free(types);
    free(special);
    rq_gguf_strings_free(&tokens);
    rq_gguf_strings_free(&merges);
    return s;
}

/* ---- the whole model ------------------------------------------------------------- */

rq_status rq_gguf_load(const char *path, rq_model **out, rq_err *err) {
    *out = NULL;
    rq_checkpoint ck;
    RQ_TRY(rq_checkpoint_open_gguf(path, &ck, err));
    rq_status s = rq_checkpoint_build(&ck, out, err);
    rq_checkpoint_close(&ck);
    return s;
}
