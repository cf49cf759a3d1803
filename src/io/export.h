/* Deployment exports of a 2-bit model (an rq_model whose projections are q2
 * tensors, usually loaded from an artifact directory):
 *
 *   GGUF (llama.cpp)   every q2 group becomes Q4_1 blocks of 32 with d = s,
 *                      m = m (the fp16 bits copied) and 4-bit codes 0..3; the
 *                      rest F32. Exact: Q4_1 dequantizes d * q + m, and for an
 *                      fp16 s and q in 0..3 the product is exact in fp32, so
 *                      the value equals rilq's fl(fl(s * code) + m) bit for bit
 *                      (with or without a fused multiply-add). 5 bits per
 *                      quantized weight on disk (20 bytes per 32).
 *                      A q2 projection whose in_features is not a multiple
 *                      of 32 (stories260K's down_proj: 172 = 64 + 64 + 44)
 *                      cannot be whole Q4_1 rows: it is written as F32
 *                      holding rq_q2_dequant_row's values bit for bit (q/k
 *                      rows permuted like the rest), so the file is still the
 *                      model exactly, at 32 bits per weight for that tensor
 *                      (counted in the report's f32_fallback fields).
 *   HF safetensors     a plain dequantized LlamaForCausalLM checkpoint (F16,
 *                      BF16 or F32) for any Hugging Face tool.
 *   HQQ safetensors    the layout of mobiusml/hqq (axis 1, "2bit_u8" packing)
 *                      that transformers + hqq load as a pre-quantized model;
 *                      2.5 bits per weight. Not bit-exact: see export.c.
 *
 * What a format cannot hold is refused before anything is written, naming the
 * tensor and the reason: the nf2 codebook (neither format has non-uniform
 * levels), group sizes that split a format's block (GGUF: not a multiple of
 * 32), and for HQQ ragged last groups (in_features not a multiple of the group
 * size: its groups would straddle rows). */
#ifndef RQ_IO_EXPORT_H
#define RQ_IO_EXPORT_H

#include "../model/model.h"

typedef struct rq_export_opts {
    const char *name;  /* GGUF general.name; NULL: "rilq-q2" */
    const char *dtype; /* HF export: "f16" (NULL), "bf16" or "f32" */
} rq_export_opts;

typedef struct rq_export_report {
    int q_tensors;                /* quantized projections written as Q4_1 (GGUF) or HQQ codes */
    int64_t q_weights;            /* their weights */
    uint64_t q_bytes;             /* their bytes in the file (blocks, or codes + scale + zero) */
    int f32_fallback;             /* GGUF: q2 projections written as exact F32 (in_features % 32 != 0) */
    int64_t f32_fallback_weights; /* their weights */
    uint64_t f32_fallback_bytes;  /* their bytes in the file (4 per weight) */
    char f32_fallback_first[128]; /* the first such module ("model.layers.0.mlp.down_proj"); "" when none */
    int f32_fallback_in;          /* its in_features */
    uint64_t file_bytes;          /* the whole file (GGUF) or directory (HQQ) */
    int64_t total_weights;        /* every parameter written (a tied head once) */
    char tokenizer[96];           /* how the tokenizer was written; "" when the model has none */
} rq_export_report;

/* Write m as a llama.cpp GGUF file at path (atomically). */
rq_status rq_export_gguf(const rq_model *m, const char *path, const rq_export_opts *opts, rq_export_report *rep,
                         rq_err *err);

/* Write m as an HQQ-layout checkpoint directory at dir (config.json,
 * model.safetensors, the tokenizer file), which must not exist or be empty;
 * written as DIR.tmp-PID and renamed. */
rq_status rq_export_hqq(const rq_model *m, const char *dir, const rq_export_opts *opts, rq_export_report *rep,
                        rq_err *err);

/* Write m as a plain Hugging Face LlamaForCausalLM directory at dir (which must
 * not exist or be empty; written as DIR.tmp-PID and renamed): model.safetensors
 * with every weight (q2 projections dequantized) in opts->dtype, config.json,
 * generation_config.json, and the tokenizer as transformers loads it
 * (tokenizer.json copied from an HF source, else written from the tokenizer by
 * rq_tokenizer_to_hf_json; tokenizer_config.json). F32 is exact; F16/BF16
 * round each weight once. A weight F16 cannot hold is refused, naming it. */
rq_status rq_export_hf(const rq_model *m, const char *dir, const rq_export_opts *opts, rq_export_report *rep,
                       rq_err *err);

#endif
