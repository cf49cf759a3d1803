/* A tensor table: named, typed, shaped views into a checkpoint's bytes.
 *
 * Every checkpoint reader (safetensors, GGUF, llama2.c) produces one of these
 * with Hugging Face tensor names ("model.layers.0.self_attn.q_proj.weight")
 * and HF shapes (a Linear weight is [out, in], row-major). The model builder
 * (src/model/build.c) consumes it without knowing which format it came from. */
#ifndef RQ_CORE_TENSORS_H
#define RQ_CORE_TENSORS_H

#include "core.h"

typedef enum rq_dtype {
    RQ_F32 = 0,
    RQ_F16,
    RQ_BF16,
    RQ_F64,
    RQ_I8,
    RQ_U8,
    RQ_I16,
    RQ_U16,
    RQ_I32,
    RQ_U32,
    RQ_I64,
    RQ_U64,
    RQ_BOOL,
    RQ_Q8_0, /* ggml blocks of 32: fp16 d, 32 x int8 */
    RQ_Q4_0, /* ggml blocks of 32: fp16 d, 16 bytes of nibbles, x = d * (q - 8) */
    RQ_Q4_1, /* ggml blocks of 32: fp16 d, fp16 m, 16 bytes of nibbles, x = d * q + m */
    RQ_DTYPE_COUNT
} rq_dtype;

const char *rq_dtype_name(rq_dtype t);
/* Parse a safetensors dtype string ("F32", "BF16", ...). False when unknown. */
bool rq_dtype_from_safetensors(const char *s, rq_dtype *out);
/* Bytes taken by n elements of type t (n must be a multiple of the block size
 * for block types). Returns false on overflow or a partial block. */
bool rq_dtype_nbytes(rq_dtype t, uint64_t n, uint64_t *out);
/* Elements per block (1 for plain types, 32 for Q8_0/Q4_0/Q4_1). */
int rq_dtype_block(rq_dtype t);
bool rq_dtype_is_float(rq_dtype t);

#define RQ_MAX_DIMS 4
#define RQ_TENSOR_NAME_MAX 256

typedef struct rq_tensor_view {
    char name[RQ_TENSOR_NAME_MAX];
    rq_dtype dtype;
    int ndim;
    int64_t shape[RQ_MAX_DIMS]; /* HF order: shape[0] is the slowest dimension */
    const uint8_t *data;        /* may be unaligned */
    uint64_t nbytes;
    const char *file;           /* the file it came from, for messages */
    /* Rows to un-permute when converting (GGUF and llama2.c store q/k rows in
     * the interleaved-pair RoPE layout; HF uses rotate-half). 0: none; else
     * the number of heads of this projection. */
    int unpermute_heads;
} rq_tensor_view;

typedef struct rq_tensor_table {
    rq_tensor_view *items;
    int count, cap;
} rq_tensor_table;

rq_status rq_tensor_table_add(rq_tensor_table *t, const rq_tensor_view *v, rq_err *err);
const rq_tensor_view *rq_tensor_table_find(const rq_tensor_table *t, const char *name);
void rq_tensor_table_free(rq_tensor_table *t);
int64_t rq_tensor_numel(const rq_tensor_view *v);

/* Convert a tensor (any float or ggml block type) to fp32, applying the q/k
 * row un-permutation if the view asks for it. out holds numel floats. */
rq_status rq_tensor_to_f32(const rq_tensor_view *v, float *out, rq_err *err);

#endif
