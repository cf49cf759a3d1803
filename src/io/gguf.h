/* GGUF (llama.cpp) reader: v2 and v3, memory-mapped. Metadata values and
 * tensor data stay in the mapping; lookups decode on demand. */
#ifndef RQ_IO_GGUF_H
#define RQ_IO_GGUF_H

#include "../model/model.h"
#include "../core/tensors.h"

enum {
    RQ_GGUF_U8 = 0, RQ_GGUF_I8 = 1, RQ_GGUF_U16 = 2, RQ_GGUF_I16 = 3, RQ_GGUF_U32 = 4, RQ_GGUF_I32 = 5,
    RQ_GGUF_F32 = 6, RQ_GGUF_BOOL = 7, RQ_GGUF_STRING = 8, RQ_GGUF_ARRAY = 9, RQ_GGUF_U64 = 10,
    RQ_GGUF_I64 = 11, RQ_GGUF_F64 = 12, RQ_GGUF_TYPE_COUNT
};

typedef struct rq_gguf_kv {
    char *key;
    uint32_t type;          /* RQ_GGUF_* */
    const uint8_t *value;   /* the encoded value inside the mapping */
    uint32_t arr_type;      /* arrays: element type */
    uint64_t arr_n;         /* arrays: element count */
    const uint8_t *arr_data; /* arrays: first element */
} rq_gguf_kv;

typedef struct rq_gguf_tensor {
    char name[RQ_TENSOR_NAME_MAX];
    int n_dims;
    int64_t ne[RQ_MAX_DIMS]; /* ne[0] is the fastest dimension (reverse of HF order) */
    uint32_t ggml_type;
    uint64_t offset;         /* from the start of the data section */
    uint64_t nbytes;
} rq_gguf_tensor;

typedef struct rq_gguf {
    char *path;
    rq_file_view view;
    uint32_t version;
    rq_gguf_kv *kv;
    int64_t n_kv;
    rq_gguf_tensor *tensors;
    int64_t n_tensors;
    uint64_t alignment;
    uint64_t data_offset; /* file offset of the data section */
} rq_gguf;

/* Map and validate a GGUF file: header, every KV (nested arrays to a bounded
 * depth, string lengths against the file), tensor infos (name length, dims,
 * known type, aligned non-overlapping offsets inside the data section). */
rq_status rq_gguf_open(const char *path, rq_gguf *g, rq_err *err);
void rq_gguf_close(rq_gguf *g);

const char *rq_gguf_type_name(uint32_t ggml_type); /* "Q4_1", or NULL when unknown */
/* Elements per block and bytes per block of a ggml type; false when unknown. */
bool rq_gguf_type_block(uint32_t ggml_type, int *block, int *block_bytes);

/* ggml type ids rilq writes */
enum { RQ_GGML_F32 = 0, RQ_GGML_F16 = 1, RQ_GGML_Q4_1 = 3 };

/* Metadata lookups. A missing key is RQ_ERR_FORMAT naming the key; use
 * rq_gguf_find first for optional keys. Integer getters accept any integer
 * type whose value fits; the float getter also accepts f64 and integers. */
const rq_gguf_kv *rq_gguf_find(const rq_gguf *g, const char *key);
rq_status rq_gguf_get_u32(const rq_gguf *g, const char *key, uint32_t *out, rq_err *err);
rq_status rq_gguf_get_i64(const rq_gguf *g, const char *key, int64_t *out, rq_err *err);
rq_status rq_gguf_get_f32(const rq_gguf *g, const char *key, float *out, rq_err *err);
rq_status rq_gguf_get_bool(const rq_gguf *g, const char *key, bool *out, rq_err *err);
/* A string value as a new NUL-terminated heap string (free it). */
rq_status rq_gguf_get_str(const rq_gguf *g, const char *key, char **out, rq_err *err);

/* An array of strings copied out: items[i] NUL-terminated (strings may hold NUL
 * bytes; lens[i] is the true length). Free with rq_gguf_strings_free. */
typedef struct rq_gguf_strings {
    char **items;
    int *lens;
    int64_t n;
    char *blob;
} rq_gguf_strings;
rq_status rq_gguf_get_str_array(const rq_gguf *g, const char *key, rq_gguf_strings *out, rq_err *err);
void rq_gguf_strings_free(rq_gguf_strings *s);
/* Numeric arrays (f32: f32/f64 elements; i32: any integer type that fits); malloc'ed. */
rq_status rq_gguf_get_f32_array(const rq_gguf *g, const char *key, float **out, int64_t *n, rq_err *err);
rq_status rq_gguf_get_i32_array(const rq_gguf *g, const char *key, int32_t **out, int64_t *n, rq_err *err);

/* Bytes of a KV's encoded value (what kv->value points at), for copying it
 * verbatim into another file. */
uint64_t rq_gguf_kv_value_size(const rq_gguf *g, const rq_gguf_kv *kv);

const rq_gguf_tensor *rq_gguf_find_tensor(const rq_gguf *g, const char *name);

/* llama models: config from llama.* keys (and rope_freqs.weight), tensor
 * views under HF names with HF shapes (attn_q/attn_k marked for
 * un-permutation), and the whole model with its tokenizer. */
rq_status rq_gguf_llama_config(const rq_gguf *g, rq_config *cfg, rq_err *err);
rq_status rq_gguf_llama_tensors(const rq_gguf *g, const rq_config *cfg, rq_tensor_table *tab, rq_err *err);
rq_status rq_gguf_tokenizer(const rq_gguf *g, rq_tokenizer **out, rq_err *err);
rq_status rq_gguf_load(const char *path, rq_model **out, rq_err *err);

#endif
