/* The quantized model artifact: a directory every rilq command loads as a model.
 *
 *   config.json         the HF LlamaConfig keys plus a quantization_config block:
 *                       {"quant_method": "rilq-q2", "format_version": 1, "bits": 2,
 *                        "method": "rtn"|"nf2"|"fake-quant", "clip_search": bool,
 *                        "group_size": 64, "codebook_name": "int2"|"nf2",
 *                        "codebook": [4 floats], "quantized_modules": [names],
 *                        "code_packing": "...", "weight": "...",
 *                        "tensor_file": "model.safetensors"|"model.safetensors.zst",
 *                        "tokenizer_file": "tokenizer.json"|"tokenizer.bin"|"tokenizer.gguf"|null,
 *                        "source_dtypes": "...",
 *                        "merged_adapters": "..." (only when adapters were merged:
 *                        one line per merge, "; "-separated, src/adapter/merge.h)}
 *   model.safetensors   for each quantized module NAME (HF name without ".weight"):
 *                       NAME.codes U8 [out][ceil(in/4)], NAME.scales F16 [out][n_groups],
 *                       NAME.offsets F16 [out][n_groups]; every other tensor under its
 *                       HF name as F32 (the in-memory precision; the source dtypes are
 *                       recorded in source_dtypes). With compression the same bytes are
 *                       one zstd frame in model.safetensors.zst, decompressed into memory
 *                       on load.
 *   tokenizer.*         the tokenizer the model was loaded with, in a form that loads back
 *                       to the same tokenizer: an HF tokenizer.json or a llama2.c
 *                       tokenizer.bin is copied byte for byte; a GGUF model's tokenizer
 *                       becomes tokenizer.gguf, a GGUF file with no tensors holding the
 *                       source's tokenizer.* metadata copied verbatim.
 *
 * The directory is written as DIR.tmp-PID and renamed to DIR when complete, so a
 * killed run never leaves a DIR that loads half a model. */
#ifndef RQ_IO_ARTIFACT_H
#define RQ_IO_ARTIFACT_H

#include "../model/model.h"

#define RQ_ARTIFACT_QUANT_METHOD "rilq-q2"
#define RQ_ARTIFACT_FORMAT_VERSION 1

typedef struct rq_artifact_opts {
    bool compress;          /* model.safetensors.zst instead of model.safetensors */
    int compression_level;  /* zstd level; 0: the default (3) */
} rq_artifact_opts;

/* Write m (whose q2 linears share one group size and one codebook) to the
 * directory dir, which must not exist or be empty. */
rq_status rq_artifact_write(const rq_model *m, const char *dir, const rq_artifact_opts *opts, rq_err *err);

/* Does dir hold a config.json whose quantization_config.quant_method is "rilq-q2"? */
bool rq_artifact_is_q2(const char *dir);

/* Load an artifact directory: q2 linears with no fp32 copy, fp32 for the rest,
 * and its tokenizer. */
rq_status rq_artifact_load(const char *dir, rq_model **out, rq_err *err);

/* Bytes the artifact's files take on disk (0 when dir cannot be read). */
uint64_t rq_artifact_disk_bytes(const char *dir);

#endif
