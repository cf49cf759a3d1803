/* GGUF writer (v3, little-endian): metadata key/values and tensors, written
 * atomically. The reader is gguf.h; the layout is the one it validates:
 *
 *   "GGUF", u32 3, u64 n_tensors, u64 n_kv, the KVs in the order they were set,
 *   the tensor infos in the order they were added, zero padding to the
 *   alignment (32, general.alignment is not written), then each tensor's data
 *   padded to the alignment, offsets increasing in tensor-info order (what
 *   llama.cpp's loader requires).
 *
 * Tensor data is produced on demand by a fill callback while the file is
 * written, one tensor at a time, so a large model is never held twice. */
#ifndef RQ_IO_GGUF_WRITE_H
#define RQ_IO_GGUF_WRITE_H

#include "gguf.h"

typedef struct rq_gguf_writer rq_gguf_writer;

/* Writes exactly nbytes of a tensor's data into dst. */
typedef rq_status (*rq_gguf_fill_fn)(void *ctx, uint8_t *dst, uint64_t nbytes, rq_err *err);

rq_status rq_gguf_writer_create(rq_gguf_writer **out, rq_err *err);
void rq_gguf_writer_free(rq_gguf_writer *w);

/* Metadata. A key set twice is an error (RQ_ERR_ARG naming it). */
rq_status rq_gguf_set_u32(rq_gguf_writer *w, const char *key, uint32_t v, rq_err *err);
rq_status rq_gguf_set_i32(rq_gguf_writer *w, const char *key, int32_t v, rq_err *err);
rq_status rq_gguf_set_f32(rq_gguf_writer *w, const char *key, float v, rq_err *err);
rq_status rq_gguf_set_bool(rq_gguf_writer *w, const char *key, bool v, rq_err *err);
rq_status rq_gguf_set_str(rq_gguf_writer *w, const char *key, const char *v, rq_err *err);
/* lens may be NULL (strlen); strings may hold NUL bytes when lens is given. */
rq_status rq_gguf_set_str_array(rq_gguf_writer *w, const char *key, const char *const *items, const int *lens,
                                int64_t n, rq_err *err);
rq_status rq_gguf_set_f32_array(rq_gguf_writer *w, const char *key, const float *v, int64_t n, rq_err *err);
rq_status rq_gguf_set_i32_array(rq_gguf_writer *w, const char *key, const int32_t *v, int64_t n, rq_err *err);
/* An already encoded value of the given RQ_GGUF_* type (nbytes of it, as a
 * reader's rq_gguf_kv.value points at): copies metadata from another file
 * verbatim. */
rq_status rq_gguf_set_raw(rq_gguf_writer *w, const char *key, uint32_t type, const uint8_t *value, uint64_t nbytes,
                          rq_err *err);
bool rq_gguf_writer_has_key(const rq_gguf_writer *w, const char *key);

/* A tensor: ne[0] is the fastest dimension (an HF [out, in] matrix is ne =
 * {in, out}); ne[0] must be a multiple of the type's block size. fill(ctx, ...)
 * is called once during rq_gguf_writer_write. */
rq_status rq_gguf_add_tensor(rq_gguf_writer *w, const char *name, uint32_t ggml_type, int n_dims, const int64_t *ne,
                             rq_gguf_fill_fn fill, void *ctx, rq_err *err);

/* Write everything to path atomically (temp file + fsync + rename). */
rq_status rq_gguf_writer_write(rq_gguf_writer *w, const char *path, rq_err *err);

#endif
