/* GGUF writer (layout in gguf_write.h). Metadata is encoded into one growing
 * buffer as it is set; tensors are recorded as infos plus a fill callback and
 * their bytes are produced only while the file is written. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "gguf_write.h"

#define GGUF_ALIGNMENT 32
#define GGUF_MAX_NAME 63 /* llama.cpp's GGML_MAX_NAME is 64 including the NUL */

typedef struct writer_tensor {
    char name[GGUF_MAX_NAME + 1];
    uint32_t type;
    int n_dims;
    int64_t ne[RQ_MAX_DIMS];
    uint64_t nbytes, offset;
    rq_gguf_fill_fn fill;
    void *ctx;
} writer_tensor;

struct rq_gguf_writer {
    rq_buf kv;            /* encoded key/value pairs */
    uint64_t n_kv;
    char **keys;          /* for the duplicate check */
    size_t keys_cap;
    writer_tensor *tensors;
    int64_t n_tensors, tensors_cap;
};

rq_status rq_gguf_writer_create(rq_gguf_writer **out, rq_err *err) {
    *out = rq_calloc(1, sizeof **out, err);
    return *out ? RQ_OK : RQ_ERR_NOMEM;
}

void rq_gguf_writer_free(rq_gguf_writer *w) {
    if (!w) return;
    for (uint64_t i = 0; i < w->n_kv; i++) free(w->keys[i]);
    free(w->keys);
    rq_buf_free(&w->kv);
    free(w->tensors);
    free(w);
}

/* ---- metadata encoding --------------------------------------------------------------- */

static rq_status kv_reserve(rq_gguf_writer *w, uint64_t more, rq_err *err) {
    if (more > SIZE_MAX / 2 - w->kv.len) return RQ_FAIL(err, RQ_ERR_NOMEM, "GGUF metadata too large");
    if (!rq_buf_reserve(&w->kv, (size_t)more))
        return RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory for %zu bytes of GGUF metadata",
                       w->kv.len + (size_t)more);
    return RQ_OK;
}

/* The caller reserved the room, so the append cannot fail. */
static void put(rq_gguf_writer *w, const void *p, size_t n) { rq_buf_append(&w->kv, p, n); }
static void put_u32(rq_gguf_writer *w, uint32_t v) {
    uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    put(w, b, 4);
}
static void put_u64(rq_gguf_writer *w, uint64_t v) {
    put_u32(w, (uint32_t)v);
    put_u32(w, (uint32_t)(v >> 32));
}
static void put_str(rq_gguf_writer *w, const char *s, uint64_t len) {
    put_u64(w, len);
    put(w, s, (size_t)len);
}

bool rq_gguf_writer_has_key(const rq_gguf_writer *w, const char *key) {
    for (uint64_t i = 0; i < w->n_kv; i++)
        if (strcmp(w->keys[i], key) == 0) return true;
    return false;
}

/* Check the key, reserve room for key + type + value_bytes, write key and type. */
static rq_status begin_kv(rq_gguf_writer *w, const char *key, uint32_t type, uint64_t value_bytes, rq_err *err) {
    size_t klen = strlen(key);
    if (klen == 0 || klen > 65535) return RQ_FAIL(err, RQ_ERR_ARG, "GGUF metadata key '%.80s' is empty or too long", key);
    if (rq_gguf_writer_has_key(w, key)) return RQ_FAIL(err, RQ_ERR_ARG, "GGUF metadata key '%s' is set twice", key);
    if (w->n_kv == w->keys_cap) {
        size_t cap = w->keys_cap ? 2 * w->keys_cap : 64;
        char **k = realloc(w->keys, cap * sizeof *k);
        if (!k) return RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory for GGUF keys");
        w->keys = k;
        w->keys_cap = cap;
    }
    if (value_bytes > UINT64_MAX / 2) return RQ_FAIL(err, RQ_ERR_ARG, "GGUF metadata '%s' too large", key);
    RQ_TRY(kv_reserve(w, 8 + klen + 4 + value_bytes, err));
    w->keys[w->n_kv] = rq_strdup(key, err);
    if (!w->keys[w->n_kv]) return RQ_ERR_NOMEM;
    w->n_kv++;
    put_str(w, key, klen);
    put_u32(w, type);
    return RQ_OK;
}

rq_status rq_gguf_set_u32(rq_gguf_writer *w, const char *key, uint32_t v, rq_err *err) {
    RQ_TRY(begin_kv(w, key, RQ_GGUF_U32, 4, err));
    put_u32(w, v);
    return RQ_OK;
}

rq_status rq_gguf_set_i32(rq_gguf_writer *w, const char *key, int32_t v, rq_err *err) {
    RQ_TRY(begin_kv(w, key, RQ_GGUF_I32, 4, err));
    put_u32(w, (uint32_t)v);
    return RQ_OK;
}

rq_status rq_gguf_set_f32(rq_gguf_writer *w, const char *key, float v, rq_err *err) {
    RQ_TRY(begin_kv(w, key, RQ_GGUF_F32, 4, err));
    put_u32(w, rq_bits_from_f32(v));
    return RQ_OK;
}

rq_status rq_gguf_set_bool(rq_gguf_writer *w, const char *key, bool v, rq_err *err) {
    RQ_TRY(begin_kv(w, key, RQ_GGUF_BOOL, 1, err));
    uint8_t b = v ? 1 : 0;
    put(w, &b, 1);
    return RQ_OK;
}

rq_status rq_gguf_set_str(rq_gguf_writer *w, const char *key, const char *v, rq_err *err) {
    size_t n = strlen(v);
    RQ_TRY(begin_kv(w, key, RQ_GGUF_STRING, 8 + (uint64_t)n, err));
    put_str(w, v, n);
    return RQ_OK;
}

rq_status rq_gguf_set_str_array(rq_gguf_writer *w, const char *key, const char *const *items, const int *lens,
                                int64_t n, rq_err *err) {
    if (n < 0) return RQ_FAIL(err, RQ_ERR_ARG, "GGUF array '%s': negative count", key);
    uint64_t bytes = 12;
    for (int64_t i = 0; i < n; i++) {
        if (lens && lens[i] < 0) return RQ_FAIL(err, RQ_ERR_ARG, "GGUF array '%s'[%" PRId64 "]: negative length", key, i);
        bytes += 8 + (uint64_t)(lens ? (size_t)lens[i] : strlen(items[i]));
    }
    RQ_TRY(begin_kv(w, key, RQ_GGUF_ARRAY, bytes, err));
    put_u32(w, RQ_GGUF_STRING);
    put_u64(w, (uint64_t)n);
    for (int64_t i = 0; i < n; i++) put_str(w, items[i], lens ? (uint64_t)lens[i] : strlen(items[i]));
    return RQ_OK;
}

static rq_status set_u32_array(rq_gguf_writer *w, const char *key, uint32_t elem_type, const void *v, int64_t n,
                               rq_err *err) {
    if (n < 0 || (uint64_t)n > UINT64_MAX / 8) return RQ_FAIL(err, RQ_ERR_ARG, "GGUF array '%s': bad count", key);
    RQ_TRY(begin_kv(w, key, RQ_GGUF_ARRAY, 12 + 4 * (uint64_t)n, err));
    put_u32(w, elem_type);
    put_u64(w, (uint64_t)n);
    const uint8_t *bytes = v;
    for (int64_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, bytes + 4 * (size_t)i, 4); /* float or int32: the bits, without aliasing them */
        put_u32(w, u);
    }
    return RQ_OK;
}

rq_status rq_gguf_set_f32_array(rq_gguf_writer *w, const char *key, const float *v, int64_t n, rq_err *err) {
    return set_u32_array(w, key, RQ_GGUF_F32, v, n, err);
}

rq_status rq_gguf_set_i32_array(rq_gguf_writer *w, const char *key, const int32_t *v, int64_t n, rq_err *err) {
    return set_u32_array(w, key, RQ_GGUF_I32, v, n, err);
}

rq_status rq_gguf_set_raw(rq_gguf_writer *w, const char *key, uint32_t type, const uint8_t *value, uint64_t nbytes,
                          rq_err *err) {
    if (type >= RQ_GGUF_TYPE_COUNT) return RQ_FAIL(err, RQ_ERR_ARG, "GGUF metadata '%s': unknown value type %u", key, type);
    RQ_TRY(begin_kv(w, key, type, nbytes, err));
    put(w, value, (size_t)nbytes);
    return RQ_OK;
}

/* ---- tensors -------------------------------------------------------------------------- */

rq_status rq_gguf_add_tensor(rq_gguf_writer *w, const char *name, uint32_t ggml_type, int n_dims, const int64_t *ne,
                             rq_gguf_fill_fn fill, void *ctx, rq_err *err) {
    size_t nlen = strlen(name);
    if (nlen == 0 || nlen > GGUF_MAX_NAME)
        return RQ_FAIL(err, RQ_ERR_ARG, "GGUF tensor name '%s' must be 1..%d bytes (llama.cpp's limit)", name, GGUF_MAX_NAME);
    int block, block_bytes;
    if (!rq_gguf_type_block(ggml_type, &block, &block_bytes))
        return RQ_FAIL(err, RQ_ERR_ARG, "GGUF tensor '%s': unknown ggml type %u", name, ggml_type);
    if (n_dims < 1 || n_dims > RQ_MAX_DIMS)
        return RQ_FAIL(err, RQ_ERR_ARG, "GGUF tensor '%s': %d dimensions (1..%d)", name, n_dims, RQ_MAX_DIMS);
    uint64_t numel = 1;
    for (int d = 0; d < n_dims; d++) {
        if (ne[d] <= 0 || (uint64_t)ne[d] > (uint64_t)INT64_MAX / numel)
            return RQ_FAIL(err, RQ_ERR_ARG, "GGUF tensor '%s': ne[%d] = %" PRId64 " is not positive or overflows", name, d, ne[d]);
        numel *= (uint64_t)ne[d];
    }
    if (ne[0] % block != 0)
        return RQ_FAIL(err, RQ_ERR_ARG, "GGUF tensor '%s': row length %" PRId64 " is not a multiple of the %s block size %d",
                       name, ne[0], rq_gguf_type_name(ggml_type), block);
    for (int64_t i = 0; i < w->n_tensors; i++)
        if (strcmp(w->tensors[i].name, name) == 0) return RQ_FAIL(err, RQ_ERR_ARG, "GGUF tensor '%s' is added twice", name);
    if (w->n_tensors == w->tensors_cap) {
        int64_t cap = w->tensors_cap ? 2 * w->tensors_cap : 64;
        writer_tensor *t = realloc(w->tensors, (size_t)cap * sizeof *t);
        if (!t) return RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory for GGUF tensor infos");
        w->tensors = t;
        w->tensors_cap = cap;
    }
    writer_tensor *t = &w->tensors[w->n_tensors++];
    memset(t, 0, sizeof *t);
    memcpy(t->name, name, nlen + 1);
    t->type = ggml_type;
    t->n_dims = n_dims;
    for (int d = 0; d < n_dims; d++) t->ne[d] = ne[d];
    t->nbytes = numel / (uint64_t)block * (uint64_t)block_bytes;
    t->fill = fill;
    t->ctx = ctx;
    return RQ_OK;
}

/* ---- the file --------------------------------------------------------------------------- */

static uint64_t align_up(uint64_t x) { return (x + GGUF_ALIGNMENT - 1) / GGUF_ALIGNMENT * GGUF_ALIGNMENT; }

rq_status rq_gguf_writer_write(rq_gguf_writer *w, const char *path, rq_err *err) {
    /* header + tensor infos go into the metadata buffer's tail, after the KVs */
    uint64_t data_off = 0, max_bytes = 0, info_bytes = 0;
    for (int64_t i = 0; i < w->n_tensors; i++) {
        writer_tensor *t = &w->tensors[i];
        t->offset = data_off;
        data_off = align_up(data_off + t->nbytes);
        if (t->nbytes > max_bytes) max_bytes = t->nbytes;
        info_bytes += 8 + strlen(t->name) + 4 + 8 * (uint64_t)t->n_dims + 4 + 8;
    }
    uint8_t head[24];
    memcpy(head, "GGUF", 4);
    uint32_t version = 3;
    for (int k = 0; k < 4; k++) head[4 + k] = (uint8_t)(version >> (8 * k));
    for (int k = 0; k < 8; k++) head[8 + k] = (uint8_t)((uint64_t)w->n_tensors >> (8 * k));
    for (int k = 0; k < 8; k++) head[16 + k] = (uint8_t)(w->n_kv >> (8 * k));

    /* tensor infos, encoded after the KVs in the same buffer (its length restored after) */
    size_t kv_end = w->kv.len;
    RQ_TRY(kv_reserve(w, info_bytes + GGUF_ALIGNMENT, err));
    for (int64_t i = 0; i < w->n_tensors; i++) {
        const writer_tensor *t = &w->tensors[i];
        put_str(w, t->name, strlen(t->name));
        put_u32(w, (uint32_t)t->n_dims);
        for (int d = 0; d < t->n_dims; d++) put_u64(w, (uint64_t)t->ne[d]);
        put_u32(w, t->type);
        put_u64(w, t->offset);
    }
    uint64_t header_len = 24 + w->kv.len;
    static const uint8_t zeros[GGUF_ALIGNMENT];
    put(w, zeros, (size_t)(align_up(header_len) - header_len));
    size_t meta_len = w->kv.len;
    w->kv.len = kv_end; /* the infos stay in the buffer past its length until written below */

    uint8_t *buf = NULL;
    if (max_bytes > 0) {
        if (max_bytes > SIZE_MAX - GGUF_ALIGNMENT) return RQ_FAIL(err, RQ_ERR_NOMEM, "%s: tensor too large", path);
        buf = rq_calloc(1, (size_t)max_bytes + GGUF_ALIGNMENT, err);
        if (!buf) return RQ_ERR_NOMEM;
    }
    rq_atomic_file af;
    rq_status s = rq_atomic_open(&af, path, err);
    if (s != RQ_OK) {
        free(buf);
        return s;
    }
    s = rq_atomic_write(&af, head, sizeof head, err);
    if (s == RQ_OK) s = rq_atomic_write(&af, w->kv.data, meta_len, err);
    for (int64_t i = 0; i < w->n_tensors && s == RQ_OK; i++) {
        const writer_tensor *t = &w->tensors[i];
        size_t padded = (size_t)(align_up(t->nbytes));
        memset(buf, 0, padded);
        s = t->fill(t->ctx, buf, t->nbytes, err);
        if (s != RQ_OK) rq_err_prefix(err, "%s: tensor '%s': ", path, t->name);
        /* every tensor padded, the last one too (llama.cpp sizes the data section that way) */
        if (s == RQ_OK) s = rq_atomic_write(&af, buf, padded, err);
    }
    if (s == RQ_OK) s = rq_atomic_commit(&af, err);
    else rq_atomic_abort(&af);
    free(buf);
    return s;
}
