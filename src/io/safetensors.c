/* safetensors reader and writer.
 *
 * File: u64 little-endian N, N bytes of JSON ({"name": {"dtype", "shape",
 * "data_offsets": [begin, end]}, "__metadata__": {...}}), then the data buffer.
 * The header is hostile input: every size is checked before use. */
#include <cjson/cJSON.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "safetensors.h"

#define ST_MAX_HEADER 100000000ull /* the reference implementation's limit */
#define ST_MAX_INT 9007199254740992.0 /* 2^53: JSON numbers beyond this are not exact doubles */

/* ---- reading ------------------------------------------------------------------ */

/* A JSON number that is a non-negative integer we can represent exactly. */
static bool json_uint(const cJSON *j, uint64_t *out) {
    if (!cJSON_IsNumber(j)) return false;
    double d = j->valuedouble;
    if (!(d >= 0.0) || d > ST_MAX_INT || d != (double)(uint64_t)d) return false;
    *out = (uint64_t)d;
    return true;
}

static int cmp_view_begin(const void *a, const void *b) {
    const rq_tensor_view *x = a, *y = b;
    if (x->data != y->data) return x->data < y->data ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

static int cmp_name_ptr(const void *a, const void *b) {
    return strcmp((*(const rq_tensor_view *const *)a)->name, (*(const rq_tensor_view *const *)b)->name);
}

/* Duplicate names among items[from..count): an error naming the tensor. */
static rq_status check_duplicates(const rq_tensor_table *tab, int from, const char *what, rq_err *err) {
    int n = tab->count - from;
    if (n < 2) return RQ_OK;
    const rq_tensor_view **sorted = rq_calloc((size_t)n, sizeof *sorted, err);
    if (!sorted) return RQ_ERR_NOMEM;
    for (int i = 0; i < n; i++) sorted[i] = &tab->items[from + i];
    qsort(sorted, (size_t)n, sizeof *sorted, cmp_name_ptr);
    rq_status s = RQ_OK;
    for (int i = 1; i < n && s == RQ_OK; i++)
        if (strcmp(sorted[i]->name, sorted[i - 1]->name) == 0)
            s = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: tensor '%s' appears twice (in %s and %s)", what, sorted[i]->name,
                        sorted[i - 1]->file, sorted[i]->file);
    free(sorted);
    return s;
}

/* One header entry -> a view. data/data_size: the data buffer after the header. */
static rq_status parse_entry(const char *path, const cJSON *e, const uint8_t *data, uint64_t data_size,
                             rq_tensor_view *v, rq_err *err) {
    const char *name = e->string;
    memset(v, 0, sizeof *v);
    size_t name_len = strlen(name);
    if (name_len == 0 || name_len >= RQ_TENSOR_NAME_MAX)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: tensor name of %zu bytes (must be 1..%d)", path, name_len,
                       RQ_TENSOR_NAME_MAX - 1);
    memcpy(v->name, name, name_len + 1);
    v->file = path;
    if (!cJSON_IsObject(e)) return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: tensor '%s': header entry is not an object", path, name);

    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    if (!cJSON_IsString(dt)) return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: tensor '%s': missing string field 'dtype'", path, name);
    if (!rq_dtype_from_safetensors(dt->valuestring, &v->dtype))
        return RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "%s: tensor '%s': unknown or unsupported dtype '%s'", path, name,
                       dt->valuestring);

    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(e, "shape");
    if (!cJSON_IsArray(shape)) return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: tensor '%s': missing array field 'shape'", path, name);
    int ndim = cJSON_GetArraySize(shape);
    if (ndim > RQ_MAX_DIMS)
        return RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "%s: tensor '%s': shape has %d dimensions (at most %d supported)", path,
                       name, ndim, RQ_MAX_DIMS);
    v->ndim = ndim;
    uint64_t numel = 1;
    int k = 0;
    for (const cJSON *d = shape->child; d; d = d->next, k++) {
        uint64_t dim;
        if (!json_uint(d, &dim)) return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: tensor '%s': shape[%d] is not a non-negative integer", path, name, k);
        if (dim != 0 && numel > UINT64_MAX / dim)
            return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: tensor '%s': shape overflows", path, name);
        numel *= dim;
        v->shape[k] = (int64_t)dim;
    }
    uint64_t nbytes;
    if (!rq_dtype_nbytes(v->dtype, numel, &nbytes) || numel > (uint64_t)INT64_MAX)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: tensor '%s': shape overflows", path, name);

    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    uint64_t begin, end;
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 || !json_uint(offs->child, &begin) ||
        !json_uint(offs->child->next, &end))
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: tensor '%s': 'data_offsets' must be two non-negative integers", path, name);
    if (begin > end || end > data_size)
        return RQ_FAIL(err, RQ_ERR_FORMAT,
                       "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] outside the %" PRIu64 "-byte data buffer",
                       path, name, begin, end, data_size);
    if (end - begin != nbytes)
        return RQ_FAIL(err, RQ_ERR_FORMAT,
                       "%s: tensor '%s': data_offsets span %" PRIu64 " bytes but %s x %" PRIu64 " elements need %" PRIu64,
                       path, name, end - begin, rq_dtype_name(v->dtype), numel, nbytes);
    v->data = data + begin;
    v->nbytes = nbytes;
    return RQ_OK;
}

static rq_status parse_header(rq_safetensors *f, rq_tensor_table *tab, rq_err *err) {
    const char *path = f->path;
    const uint8_t *base = f->view.data;
    size_t size = f->view.size;
    if (size < 8)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: %zu bytes is too short for a safetensors file (8-byte header size)", path, size);
    uint64_t n = rq_rd_u64(base);
    if (n > ST_MAX_HEADER)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: header size %" PRIu64 " exceeds the limit of %llu bytes", path, n,
                       ST_MAX_HEADER);
    if (n > size - 8)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: header size %" PRIu64 " + 8 is past the end of the %zu-byte file (truncated?)",
                       path, n, size);
    if (n < 2 || base[8] != '{')
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: header does not start with '{' (not a safetensors file?)", path);
    /* cJSON wants a NUL-terminated string; a NUL inside the header is malformed. */
    char *json = malloc((size_t)n + 1);
    if (!json) return RQ_FAIL(err, RQ_ERR_NOMEM, "%s: out of memory for a %" PRIu64 "-byte header", path, n);
    memcpy(json, base + 8, (size_t)n);
    json[n] = 0;
    if (strlen(json) != (size_t)n) {
        free(json);
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: header contains a NUL byte", path);
    }
    const char *parse_end = NULL;
    cJSON *root = cJSON_ParseWithOpts(json, &parse_end, 1);
    if (!root || !cJSON_IsObject(root)) {
        size_t at = parse_end ? (size_t)(parse_end - json) : 0;
        cJSON_Delete(root);
        free(json);
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: header is not a valid JSON object (error near byte %zu)", path, at);
    }

    const uint8_t *data = base + 8 + n;
    uint64_t data_size = size - 8 - n;
    int start = tab->count;
    rq_status s = RQ_OK;
    for (const cJSON *e = root->child; e && s == RQ_OK; e = e->next) {
        if (strcmp(e->string, "__metadata__") == 0) continue;
        rq_tensor_view v;
        s = parse_entry(path, e, data, data_size, &v, err);
        if (s == RQ_OK) s = rq_tensor_table_add(tab, &v, err);
    }
    cJSON_Delete(root);
    free(json);
    if (s == RQ_OK) s = check_duplicates(tab, start, path, err);
    if (s == RQ_OK && tab->count - start > 1) {
        /* No two tensors may share bytes: sort a copy by start offset. */
        int cnt = tab->count - start;
        rq_tensor_view *sorted = rq_calloc((size_t)cnt, sizeof *sorted, err);
        if (!sorted) s = RQ_ERR_NOMEM;
        else {
            memcpy(sorted, tab->items + start, (size_t)cnt * sizeof *sorted);
            qsort(sorted, (size_t)cnt, sizeof *sorted, cmp_view_begin);
            for (int i = 1; i < cnt && s == RQ_OK; i++) {
                const rq_tensor_view *a = &sorted[i - 1], *b = &sorted[i];
                if (b->data < a->data + a->nbytes)
                    s = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: tensors '%s' and '%s' overlap in the data buffer (offsets %td and %td)",
                                path, a->name, b->name, a->data - data, b->data - data);
            }
            free(sorted);
        }
    }
    if (s != RQ_OK) tab->count = start;
    return s;
}

rq_status rq_safetensors_open(const char *path, rq_safetensors *f, rq_tensor_table *tab, rq_err *err) {
    memset(f, 0, sizeof *f);
    f->path = rq_strdup(path, err);
    if (!f->path) return RQ_ERR_NOMEM;
    rq_status s = rq_file_map(path, &f->view, err);
    if (s == RQ_OK) s = parse_header(f, tab, err);
    if (s != RQ_OK) rq_safetensors_close(f);
    return s;
}

rq_status rq_safetensors_open_buffer(const char *name, uint8_t *bytes, size_t size, rq_safetensors *f,
                                     rq_tensor_table *tab, rq_err *err) {
    memset(f, 0, sizeof *f);
    f->view.data = bytes;
    f->view.size = size;
    f->view.owned = bytes; /* freed by rq_safetensors_close, also on failure below */
    f->path = rq_strdup(name, err);
    rq_status s = f->path ? parse_header(f, tab, err) : RQ_ERR_NOMEM;
    if (s != RQ_OK) rq_safetensors_close(f);
    return s;
}

bool rq_safetensors_metadata(const rq_safetensors *f, const char *key, char *out, size_t n) {
    if (!f->view.data || f->view.size < 8) return false;
    uint64_t hn = rq_rd_u64(f->view.data);
    if (hn > f->view.size - 8 || hn > ST_MAX_HEADER) return false; /* checked by the open: defensive */
    cJSON *root = cJSON_ParseWithLength((const char *)f->view.data + 8, (size_t)hn);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "__metadata__"), key);
    bool found = cJSON_IsString(v) && strlen(v->valuestring) < n;
    if (found) snprintf(out, n, "%s", v->valuestring);
    cJSON_Delete(root);
    return found;
}

void rq_safetensors_close(rq_safetensors *f) {
    rq_file_unmap(&f->view);
    free(f->path);
    memset(f, 0, sizeof *f);
}

/* ---- checkpoints (single file or sharded) --------------------------------------- */

static rq_status ck_add_file(rq_st_checkpoint *ck, const char *path, rq_err *err) {
    rq_safetensors *nf = realloc(ck->files, (size_t)(ck->n_files + 1) * sizeof *nf);
    if (!nf) return RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory opening %s", path);
    ck->files = nf;
    RQ_TRY(rq_safetensors_open(path, &ck->files[ck->n_files], &ck->table, err));
    ck->n_files++;
    return RQ_OK;
}

void rq_st_checkpoint_close(rq_st_checkpoint *ck) {
    for (int i = 0; i < ck->n_files; i++) rq_safetensors_close(&ck->files[i]);
    free(ck->files);
    rq_tensor_table_free(&ck->table);
    memset(ck, 0, sizeof *ck);
}

/* A shard name from an index must stay inside the checkpoint directory. */
static bool shard_name_ok(const char *s) {
    if (!*s || s[0] == '/' || strlen(s) > 512) return false;
    for (const char *p = s; *p;) {
        const char *slash = strchr(p, '/');
        size_t len = slash ? (size_t)(slash - p) : strlen(p);
        if (len == 0 || (len == 2 && p[0] == '.' && p[1] == '.')) return false;
        p += len + (slash ? 1 : 0);
        if (slash && !*p) return false;
    }
    return true;
}

rq_status rq_st_checkpoint_open_index(const char *index_path, rq_st_checkpoint *ck, rq_err *err) {
    memset(ck, 0, sizeof *ck);
    char *text = NULL;
    size_t text_len = 0;
    RQ_TRY(rq_file_read_all(index_path, &text, &text_len, err));
    cJSON *root = cJSON_ParseWithLength(text, text_len);
    free(text);
    const cJSON *wm = root ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
    if (!root || !cJSON_IsObject(root) || !cJSON_IsObject(wm)) {
        cJSON_Delete(root);
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: not a JSON object with a 'weight_map' object", index_path);
    }
    const char *slash = strrchr(index_path, '/');
    size_t dlen = slash ? (size_t)(slash - index_path) : 1;
    char *dir = malloc(dlen + 1);
    if (!dir) {
        cJSON_Delete(root);
        return RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory opening %s", index_path);
    }
    if (slash) memcpy(dir, index_path, dlen);
    else dir[0] = '.';
    dir[dlen] = 0;

    /* Distinct shard names in order of first appearance. */
    const char **shards = NULL;
    int n_shards = 0;
    rq_status s = RQ_OK;
    int n_entries = cJSON_GetArraySize(wm);
    shards = rq_calloc((size_t)n_entries + 1, sizeof *shards, err);
    if (!shards) s = RQ_ERR_NOMEM;
    for (const cJSON *e = wm->child; e && s == RQ_OK; e = e->next) {
        if (!cJSON_IsString(e) || !shard_name_ok(e->valuestring)) {
            s = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: weight_map entry '%s' does not name a shard file inside the directory",
                        index_path, e->string);
            break;
        }
        int k = 0;
        while (k < n_shards && strcmp(shards[k], e->valuestring) != 0) k++;
        if (k == n_shards) shards[n_shards++] = e->valuestring;
    }
    if (s == RQ_OK && n_shards == 0) s = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: weight_map is empty", index_path);
    for (int k = 0; k < n_shards && s == RQ_OK; k++) {
        char *path = rq_path_join_alloc(dir, shards[k], err);
        s = path ? ck_add_file(ck, path, err) : RQ_ERR_NOMEM;
        if (s != RQ_OK) rq_err_prefix(err, "%s: shard %d of %d: ", index_path, k + 1, n_shards);
        free(path);
    }
    if (s == RQ_OK) s = check_duplicates(&ck->table, 0, index_path, err);
    /* Every named tensor must be in the shard the index says. */
    for (const cJSON *e = wm->child; e && s == RQ_OK; e = e->next) {
        const rq_tensor_view *v = rq_tensor_table_find(&ck->table, e->string);
        int k = 0;
        while (k < n_shards && strcmp(shards[k], e->valuestring) != 0) k++;
        if (!v || v->file != ck->files[k].path)
            s = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: tensor '%s' is listed in shard %s but %s", index_path, e->string,
                        e->valuestring, v ? "found in another shard" : "not found there");
    }
    free(shards);
    free(dir);
    cJSON_Delete(root);
    if (s != RQ_OK) rq_st_checkpoint_close(ck);
    return s;
}

rq_status rq_st_checkpoint_open_dir(const char *dir, rq_st_checkpoint *ck, rq_err *err) {
    memset(ck, 0, sizeof *ck);
    char *index = rq_path_join_alloc(dir, "model.safetensors.index.json", err);
    char *single = index ? rq_path_join_alloc(dir, "model.safetensors", err) : NULL;
    rq_status s = single ? RQ_OK : RQ_ERR_NOMEM;
    if (s == RQ_OK && rq_file_exists(index)) s = rq_st_checkpoint_open_index(index, ck, err);
    else if (s == RQ_OK && !rq_file_exists(single))
        s = RQ_FAIL(err, RQ_ERR_IO, "%s: no model.safetensors or model.safetensors.index.json in the directory", dir);
    else if (s == RQ_OK) {
        s = ck_add_file(ck, single, err);
        if (s != RQ_OK) rq_st_checkpoint_close(ck);
    }
    free(index);
    free(single);
    return s;
}

/* ---- writing ------------------------------------------------------------------ */

static void append_json_string(rq_buf *b, const char *s) {
    rq_buf_append(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            char esc[2] = {'\\', (char)*p};
            rq_buf_append(b, esc, 2);
        } else if (*p < 0x20) {
            rq_buf_appendf(b, "\\u%04x", *p);
        } else {
            rq_buf_append(b, (const char *)p, 1);
        }
    }
    rq_buf_append(b, "\"", 1);
}

typedef struct write_item {
    const rq_st_tensor *t;
    uint64_t nbytes;
    int elem_bytes;
} write_item;

static int cmp_write_item(const void *a, const void *b) {
    const write_item *x = a, *y = b;
    if (x->elem_bytes != y->elem_bytes) return y->elem_bytes - x->elem_bytes;
    return strcmp(x->t->name, y->t->name);
}

static rq_status tensor_nbytes(const char *path, const rq_st_tensor *t, uint64_t *nbytes, int *elem, rq_err *err) {
    uint64_t one;
    if (!t->name || !*t->name || strlen(t->name) >= RQ_TENSOR_NAME_MAX)
        return RQ_FAIL(err, RQ_ERR_ARG, "%s: a tensor name is empty or longer than %d bytes", path, RQ_TENSOR_NAME_MAX - 1);
    if ((int)t->dtype < 0 || t->dtype >= RQ_DTYPE_COUNT || rq_dtype_block(t->dtype) != 1 || !rq_dtype_nbytes(t->dtype, 1, &one))
        return RQ_FAIL(err, RQ_ERR_ARG, "%s: tensor '%s': dtype %s cannot be stored in safetensors", path, t->name,
                       rq_dtype_name(t->dtype));
    if (t->ndim < 0 || t->ndim > RQ_MAX_DIMS)
        return RQ_FAIL(err, RQ_ERR_ARG, "%s: tensor '%s': %d dimensions", path, t->name, t->ndim);
    uint64_t numel = 1;
    for (int i = 0; i < t->ndim; i++) {
        if (t->shape[i] < 0 || (t->shape[i] && numel > UINT64_MAX / (uint64_t)t->shape[i]))
            return RQ_FAIL(err, RQ_ERR_ARG, "%s: tensor '%s': bad shape", path, t->name);
        numel *= (uint64_t)t->shape[i];
    }
    if (!rq_dtype_nbytes(t->dtype, numel, nbytes) || *nbytes > (uint64_t)SIZE_MAX)
        return RQ_FAIL(err, RQ_ERR_ARG, "%s: tensor '%s': size overflows", path, t->name);
    if (*nbytes && !t->data) return RQ_FAIL(err, RQ_ERR_ARG, "%s: tensor '%s': no data", path, t->name);
    *elem = (int)one;
    return RQ_OK;
}

rq_status rq_safetensors_write(const char *path, const rq_st_tensor *tensors, int n, const char *const *meta, int n_meta,
                               rq_err *err) {
    if (n < 0 || n_meta < 0) return RQ_FAIL(err, RQ_ERR_ARG, "%s: negative tensor count", path);
    write_item *items = rq_calloc((size_t)n + 1, sizeof *items, err);
    if (!items) return RQ_ERR_NOMEM;
    rq_status s = RQ_OK;
    for (int i = 0; i < n && s == RQ_OK; i++) {
        items[i].t = &tensors[i];
        s = tensor_nbytes(path, &tensors[i], &items[i].nbytes, &items[i].elem_bytes, err);
    }
    if (s != RQ_OK) {
        free(items);
        return s;
    }
    qsort(items, (size_t)n, sizeof *items, cmp_write_item);
    for (int i = 1; i < n; i++)
        if (strcmp(items[i].t->name, items[i - 1].t->name) == 0) {
            s = RQ_FAIL(err, RQ_ERR_ARG, "%s: tensor '%s' given twice", path, items[i].t->name);
            free(items);
            return s;
        }

    rq_buf hdr = {0};
    rq_buf_puts(&hdr, "{\"__metadata__\":{\"format\":\"pt\"");
    for (int k = 0; k < n_meta; k++) {
        if (strcmp(meta[2 * k], "format") == 0) continue;
        rq_buf_puts(&hdr, ",");
        append_json_string(&hdr, meta[2 * k]);
        rq_buf_puts(&hdr, ":");
        append_json_string(&hdr, meta[2 * k + 1]);
    }
    rq_buf_puts(&hdr, "}");
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        const rq_st_tensor *t = items[i].t;
        rq_buf_puts(&hdr, ",");
        append_json_string(&hdr, t->name);
        rq_buf_appendf(&hdr, ":{\"dtype\":\"%s\",\"shape\":[", rq_dtype_name(t->dtype));
        for (int d = 0; d < t->ndim; d++) rq_buf_appendf(&hdr, "%s%" PRId64, d ? "," : "", t->shape[d]);
        rq_buf_appendf(&hdr, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", off, off + items[i].nbytes);
        off += items[i].nbytes;
    }
    rq_buf_puts(&hdr, "}");
    while (!hdr.failed && hdr.len % 8 != 0) rq_buf_puts(&hdr, " ");
    if (hdr.failed) {
        rq_buf_free(&hdr);
        free(items);
        return RQ_FAIL(err, RQ_ERR_NOMEM, "%s: out of memory building the header", path);
    }

    rq_atomic_file af;
    s = rq_atomic_open(&af, path, err);
    if (s == RQ_OK) {
        uint8_t len8[8];
        for (int b = 0; b < 8; b++) len8[b] = (uint8_t)((uint64_t)hdr.len >> (8 * b));
        s = rq_atomic_write(&af, len8, 8, err);
        if (s == RQ_OK) s = rq_atomic_write(&af, hdr.data, hdr.len, err);
        for (int i = 0; i < n && s == RQ_OK; i++) s = rq_atomic_write(&af, items[i].t->data, (size_t)items[i].nbytes, err);
        if (s == RQ_OK) s = rq_atomic_commit(&af, err);
        else rq_atomic_abort(&af);
    }
    rq_buf_free(&hdr);
    free(items);
    return s;
}

typedef struct name_shard {
    const char *name;
    int shard;
} name_shard;

static int cmp_name_shard(const void *a, const void *b) {
    return strcmp(((const name_shard *)a)->name, ((const name_shard *)b)->name);
}

static rq_status write_in_dir(const char *dir, const char *name, const rq_st_tensor *tensors, int n, rq_err *err) {
    char *path = rq_path_join_alloc(dir, name, err);
    if (!path) return RQ_ERR_NOMEM;
    rq_status s = rq_safetensors_write(path, tensors, n, NULL, 0, err);
    free(path);
    return s;
}

rq_status rq_safetensors_write_sharded(const char *dir, const rq_st_tensor *tensors, int n, uint64_t max_shard_bytes,
                                       rq_err *err) {
    if (n <= 0) return RQ_FAIL(err, RQ_ERR_ARG, "%s: no tensors to write", dir);
    /* Greedy in the given order: a shard closes when the next tensor would overflow it. */
    int *shard_of = rq_calloc((size_t)n, sizeof *shard_of, err);
    if (!shard_of) return RQ_ERR_NOMEM;
    uint64_t total = 0, in_shard = 0;
    int n_shards = 1;
    rq_status s = RQ_OK;
    for (int i = 0; i < n && s == RQ_OK; i++) {
        uint64_t nb;
        int elem;
        s = tensor_nbytes(dir, &tensors[i], &nb, &elem, err);
        if (s != RQ_OK) break;
        if (in_shard > 0 && in_shard + nb > max_shard_bytes) {
            n_shards++;
            in_shard = 0;
        }
        in_shard += nb;
        total += nb;
        shard_of[i] = n_shards - 1;
    }
    if (s == RQ_OK) s = rq_mkdir_p(dir, err);
    if (s == RQ_OK && n_shards == 1) {
        s = write_in_dir(dir, "model.safetensors", tensors, n, err);
        free(shard_of);
        return s;
    }
    rq_st_tensor *sub = s == RQ_OK ? rq_calloc((size_t)n, sizeof *sub, err) : NULL;
    if (s == RQ_OK && !sub) s = RQ_ERR_NOMEM;
    for (int k = 0; k < n_shards && s == RQ_OK; k++) {
        int m = 0;
        for (int i = 0; i < n; i++)
            if (shard_of[i] == k) sub[m++] = tensors[i];
        char fname[64];
        snprintf(fname, sizeof fname, "model-%05d-of-%05d.safetensors", k + 1, n_shards);
        s = write_in_dir(dir, fname, sub, m, err);
    }
    free(sub);
    /* The index: weight_map sorted by name, as transformers writes it. */
    name_shard *ns = s == RQ_OK ? rq_calloc((size_t)n, sizeof *ns, err) : NULL;
    if (s == RQ_OK && !ns) s = RQ_ERR_NOMEM;
    if (s == RQ_OK) {
        for (int i = 0; i < n; i++) ns[i] = (name_shard){tensors[i].name, shard_of[i]};
        qsort(ns, (size_t)n, sizeof *ns, cmp_name_shard);
        rq_buf j = {0};
        rq_buf_appendf(&j, "{\n  \"metadata\": {\n    \"total_size\": %" PRIu64 "\n  },\n  \"weight_map\": {", total);
        for (int i = 0; i < n; i++) {
            rq_buf_puts(&j, i ? ",\n    " : "\n    ");
            append_json_string(&j, ns[i].name);
            rq_buf_appendf(&j, ": \"model-%05d-of-%05d.safetensors\"", ns[i].shard + 1, n_shards);
        }
        rq_buf_puts(&j, "\n  }\n}\n");
        char *path = j.failed ? NULL : rq_path_join_alloc(dir, "model.safetensors.index.json", err);
        if (j.failed) s = RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory building the shard index");
        else s = path ? rq_write_file_atomic(path, j.data, j.len, err) : RQ_ERR_NOMEM;
        free(path);
        rq_buf_free(&j);
    }
    free(ns);
    free(shard_of);
    return s;
}
