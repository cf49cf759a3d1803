/* safetensors: read (memory-mapped, single file or sharded through
 * model.safetensors.index.json) and write (atomic, HF-compatible layout). */
#ifndef RQ_IO_SAFETENSORS_H
#define RQ_IO_SAFETENSORS_H

#include "../core/tensors.h"

/* One mapped .safetensors file. Views taken from it stay valid until close. */
typedef struct rq_safetensors {
    char *path;
    rq_file_view view;
} rq_safetensors;

/* Map path, validate its header, and append one view per tensor to tab
 * (views point into the mapping; their file is f->path). On failure nothing is
 * left open and tab holds what it held before. */
rq_status rq_safetensors_open(const char *path, rq_safetensors *f, rq_tensor_table *tab, rq_err *err);
/* The same over bytes already in memory (a decompressed artifact): takes
 * ownership of the malloc'ed buffer, which rq_safetensors_close frees (on
 * failure it is freed at once). name is what messages call the file. */
rq_status rq_safetensors_open_buffer(const char *name, uint8_t *bytes, size_t size, rq_safetensors *f,
                                     rq_tensor_table *tab, rq_err *err);
void rq_safetensors_close(rq_safetensors *f);
/* The string value of key in an open file's "__metadata__" into out (size n):
 * false when the key is absent (or not a string, or does not fit). */
bool rq_safetensors_metadata(const rq_safetensors *f, const char *key, char *out, size_t n);

/* A whole checkpoint: one file, or every shard an index names. */
typedef struct rq_st_checkpoint {
    rq_safetensors *files;
    int n_files;
    rq_tensor_table table;
} rq_st_checkpoint;

/* Open a checkpoint directory: model.safetensors.index.json when present, else
 * model.safetensors. */
rq_status rq_st_checkpoint_open_dir(const char *dir, rq_st_checkpoint *ck, rq_err *err);
/* Open the shards an index file names (each distinct shard once, relative to
 * the index's directory) and check every named tensor is in its shard. */
rq_status rq_st_checkpoint_open_index(const char *index_path, rq_st_checkpoint *ck, rq_err *err);
void rq_st_checkpoint_close(rq_st_checkpoint *ck);

/* ---- writing ---------------------------------------------------------------- */

typedef struct rq_st_tensor {
    const char *name;
    rq_dtype dtype; /* a safetensors dtype (not a ggml block type) */
    int ndim;       /* 0 = scalar */
    int64_t shape[RQ_MAX_DIMS];
    const void *data; /* numel * element size bytes, little-endian */
} rq_st_tensor;

/* Write tensors to path atomically. Layout follows the reference writer:
 * tensors ordered by element size descending, then by name (so every tensor is
 * naturally aligned), JSON padded with spaces to a multiple of 8, metadata
 * {"format": "pt"} plus the n_meta extra string pairs meta[2k] = meta[2k+1]. */
rq_status rq_safetensors_write(const char *path, const rq_st_tensor *tensors, int n, const char *const *meta, int n_meta,
                               rq_err *err);

/* Write tensors as shards of at most max_shard_bytes of data each (a tensor
 * larger than that gets a shard of its own) into dir: a single
 * model.safetensors when everything fits in one shard, else
 * model-0000K-of-0000N.safetensors plus model.safetensors.index.json. */
rq_status rq_safetensors_write_sharded(const char *dir, const rq_st_tensor *tensors, int n, uint64_t max_shard_bytes,
                                       rq_err *err);

#endif
