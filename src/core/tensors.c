/* The tensor table every checkpoint reader fills, and the conversion of any
 * stored element type (plain floats, ggml blocks) to fp32. */
#include <stdlib.h>

#include "tensors.h"

typedef struct dtype_info {
    const char *name;   /* safetensors spelling where one exists */
    int block;          /* elements per block */
    int block_bytes;    /* bytes per block */
    bool is_float;      /* convertible to fp32 by rq_tensor_to_f32 */
    bool in_safetensors;
} dtype_info;

static const dtype_info dtype_table[RQ_DTYPE_COUNT] = {
    [RQ_F32] = {"F32", 1, 4, true, true},      [RQ_F16] = {"F16", 1, 2, true, true},
    [RQ_BF16] = {"BF16", 1, 2, true, true},    [RQ_F64] = {"F64", 1, 8, true, true},
    [RQ_I8] = {"I8", 1, 1, false, true},       [RQ_U8] = {"U8", 1, 1, false, true},
    [RQ_I16] = {"I16", 1, 2, false, true},     [RQ_U16] = {"U16", 1, 2, false, true},
    [RQ_I32] = {"I32", 1, 4, false, true},     [RQ_U32] = {"U32", 1, 4, false, true},
    [RQ_I64] = {"I64", 1, 8, false, true},     [RQ_U64] = {"U64", 1, 8, false, true},
    [RQ_BOOL] = {"BOOL", 1, 1, false, true},   [RQ_Q8_0] = {"Q8_0", 32, 34, true, false},
    [RQ_Q4_0] = {"Q4_0", 32, 18, true, false}, [RQ_Q4_1] = {"Q4_1", 32, 20, true, false},
};

static bool dtype_valid(rq_dtype t) { return (int)t >= 0 && t < RQ_DTYPE_COUNT; }

const char *rq_dtype_name(rq_dtype t) { return dtype_valid(t) ? dtype_table[t].name : "?"; }

bool rq_dtype_from_safetensors(const char *s, rq_dtype *out) {
    for (int t = 0; t < RQ_DTYPE_COUNT; t++) {
        if (dtype_table[t].in_safetensors && strcmp(s, dtype_table[t].name) == 0) {
            *out = (rq_dtype)t;
            return true;
        }
    }
    return false;
}

int rq_dtype_block(rq_dtype t) { return dtype_valid(t) ? dtype_table[t].block : 1; }

bool rq_dtype_is_float(rq_dtype t) { return dtype_valid(t) && dtype_table[t].is_float; }

bool rq_dtype_nbytes(rq_dtype t, uint64_t n, uint64_t *out) {
    if (!dtype_valid(t)) return false;
    const dtype_info *d = &dtype_table[t];
    if (n % (uint64_t)d->block != 0) return false;
    uint64_t blocks = n / (uint64_t)d->block;
    if (blocks > UINT64_MAX / (uint64_t)d->block_bytes) return false;
    *out = blocks * (uint64_t)d->block_bytes;
    return true;
}

/* ---- the table ------------------------------------------------------------ */

rq_status rq_tensor_table_add(rq_tensor_table *t, const rq_tensor_view *v, rq_err *err) {
    if (t->count == t->cap) {
        if (t->cap > (1 << 24)) return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: too many tensors (> %d)", v->file ? v->file : "?", t->cap);
        int ncap = t->cap ? t->cap * 2 : 64;
        rq_tensor_view *n = realloc(t->items, (size_t)ncap * sizeof *n);
        if (!n) return RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory growing a tensor table to %d entries", ncap);
        t->items = n;
        t->cap = ncap;
    }
    t->items[t->count++] = *v;
    return RQ_OK;
}

const rq_tensor_view *rq_tensor_table_find(const rq_tensor_table *t, const char *name) {
    for (int i = 0; i < t->count; i++)
        if (strcmp(t->items[i].name, name) == 0) return &t->items[i];
    return NULL;
}

void rq_tensor_table_free(rq_tensor_table *t) {
    free(t->items);
    memset(t, 0, sizeof *t);
}

int64_t rq_tensor_numel(const rq_tensor_view *v) {
    int64_t n = 1;
    for (int i = 0; i < v->ndim; i++) {
        if (v->shape[i] < 0) return -1;
        if (v->shape[i] != 0 && n > INT64_MAX / v->shape[i]) return -1;
        n *= v->shape[i];
    }
    return n;
}

/* ---- conversion to fp32 ------------------------------------------------------- */

static void q8_0_to_f32(const uint8_t *src, size_t n_blocks, float *out) {
    for (size_t b = 0; b < n_blocks; b++, src += 34, out += 32) {
        float d = rq_f16_to_f32(rq_rd_u16(src));
        for (int i = 0; i < 32; i++) out[i] = d * (float)(int8_t)src[2 + i];
    }
}

static void q4_0_to_f32(const uint8_t *src, size_t n_blocks, float *out) {
    for (size_t b = 0; b < n_blocks; b++, src += 18, out += 32) {
        float d = rq_f16_to_f32(rq_rd_u16(src));
        const uint8_t *qs = src + 2;
        for (int j = 0; j < 16; j++) {
            out[j] = d * (float)((int)(qs[j] & 0x0f) - 8);
            out[j + 16] = d * (float)((int)(qs[j] >> 4) - 8);
        }
    }
}

static void q4_1_to_f32(const uint8_t *src, size_t n_blocks, float *out) {
    for (size_t b = 0; b < n_blocks; b++, src += 20, out += 32) {
        float d = rq_f16_to_f32(rq_rd_u16(src));
        float m = rq_f16_to_f32(rq_rd_u16(src + 2));
        const uint8_t *qs = src + 4;
        for (int j = 0; j < 16; j++) {
            out[j] = d * (float)(qs[j] & 0x0f) + m;
            out[j + 16] = d * (float)(qs[j] >> 4) + m;
        }
    }
}

/* GGUF and llama2.c keep each head's q/k rows in the order that makes RoPE
 * rotate adjacent pairs (2i, 2i+1); HF's rotate-half pairs (i, i + hd/2).
 * Within each head: HF row j*(hd/2) + i = stored row 2i + j. */
static rq_status unpermute_rows(const rq_tensor_view *v, float *w, int64_t rows, int64_t cols, rq_err *err) {
    int heads = v->unpermute_heads;
    if (heads <= 0 || rows % heads != 0 || (rows / heads) % 2 != 0)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: tensor '%s': cannot un-permute %lld rows into %d heads of even size",
                       v->file ? v->file : "?", v->name, (long long)rows, heads);
    int64_t hd = rows / heads, half = hd / 2;
    size_t tmp_n;
    if (!rq_mul_ok((size_t)hd, (size_t)cols, &tmp_n))
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: tensor '%s' too large", v->file ? v->file : "?", v->name);
    float *tmp = rq_calloc(tmp_n, sizeof(float), err);
    if (!tmp) return err ? err->code : RQ_ERR_NOMEM;
    for (int h = 0; h < heads; h++) {
        float *head = w + (size_t)h * (size_t)hd * (size_t)cols;
        memcpy(tmp, head, tmp_n * sizeof(float));
        for (int64_t i = 0; i < half; i++)
            for (int j = 0; j < 2; j++)
                memcpy(head + (size_t)(j * half + i) * (size_t)cols, tmp + (size_t)(2 * i + j) * (size_t)cols,
                       (size_t)cols * sizeof(float));
    }
    free(tmp);
    return RQ_OK;
}

rq_status rq_tensor_to_f32(const rq_tensor_view *v, float *out, rq_err *err) {
    const char *file = v->file ? v->file : "?";
    int64_t numel = rq_tensor_numel(v);
    uint64_t need;
    if (numel < 0 || !dtype_valid(v->dtype) || !rq_dtype_nbytes(v->dtype, (uint64_t)numel, &need))
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: tensor '%s': %lld elements do not fit type %s", file, v->name,
                       (long long)numel, rq_dtype_name(v->dtype));
    if (need != v->nbytes)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: tensor '%s': %llu bytes of data, %s x %lld needs %llu", file, v->name,
                       (unsigned long long)v->nbytes, rq_dtype_name(v->dtype), (long long)numel,
                       (unsigned long long)need);
    size_t n = (size_t)numel;
    const uint8_t *p = v->data;
    switch (v->dtype) {
    case RQ_F32:
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        if (n) memcpy(out, p, n * 4);
#else
        for (size_t i = 0; i < n; i++) out[i] = rq_rd_f32(p + 4 * i);
#endif
        break;
    case RQ_F16:
        for (size_t i = 0; i < n; i++) out[i] = rq_f16_to_f32(rq_rd_u16(p + 2 * i));
        break;
    case RQ_BF16:
        for (size_t i = 0; i < n; i++) out[i] = rq_bf16_to_f32(rq_rd_u16(p + 2 * i));
        break;
    case RQ_F64:
        for (size_t i = 0; i < n; i++) {
            uint64_t bits = rq_rd_u64(p + 8 * i);
            double d;
            memcpy(&d, &bits, 8);
            out[i] = (float)d;
        }
        break;
    case RQ_Q8_0: q8_0_to_f32(p, n / 32, out); break;
    case RQ_Q4_0: q4_0_to_f32(p, n / 32, out); break;
    case RQ_Q4_1: q4_1_to_f32(p, n / 32, out); break;
    default:
        return RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "%s: tensor '%s' has type %s, which cannot be converted to fp32 weights",
                       file, v->name, rq_dtype_name(v->dtype));
    }
    if (v->unpermute_heads) {
        int64_t rows = v->ndim >= 1 ? v->shape[0] : 1;
        int64_t cols = rows > 0 ? numel / rows : 0;
        RQ_TRY(unpermute_rows(v, out, rows, cols, err));
    }
    return RQ_OK;
}
