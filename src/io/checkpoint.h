/* A full-precision checkpoint opened for reading (a Hugging Face directory, a
 * GGUF file or a llama2.c .bin): its config, its tensors under HF names (views
 * into the mapped files: nothing converted yet) and its tokenizer. Loading a
 * whole model (rq_checkpoint_build) and a layer-streamed pass
 * (rq_model_build_layer on ck->table, src/train/calib.c) read the same views
 * through the same conversion. */
#ifndef RQ_IO_CHECKPOINT_H
#define RQ_IO_CHECKPOINT_H

#include "../model/model.h"
#include "gguf.h"
#include "llama2c.h"
#include "safetensors.h"

typedef enum rq_checkpoint_kind { RQ_CKPT_HF = 1, RQ_CKPT_GGUF, RQ_CKPT_LLAMA2C } rq_checkpoint_kind;

typedef struct rq_checkpoint {
    rq_checkpoint_kind kind;
    rq_config cfg;                /* validated; tie_embeddings as the tensors say */
    const rq_tensor_table *table; /* points into the format's handle below */
    rq_tokenizer *tok;            /* owned until taken; NULL when the checkpoint has none */
    char tokenizer_path[1024];    /* the file tok was read from ("" when none) */
    rq_st_checkpoint st;          /* RQ_CKPT_HF */
    rq_gguf gguf;                 /* RQ_CKPT_GGUF */
    rq_tensor_table gguf_table;
    rq_llama2c l2c;               /* RQ_CKPT_LLAMA2C */
} rq_checkpoint;

/* config.json (+ generation_config.json), the safetensors weights, tokenizer.json if present. */
rq_status rq_checkpoint_open_hf(const char *dir, rq_checkpoint *ck, rq_err *err);
/* A llama GGUF: config and tokenizer from its metadata. */
rq_status rq_checkpoint_open_gguf(const char *path, rq_checkpoint *ck, rq_err *err);
/* A llama2.c .bin; tokenizer_path NULL: tokenizer.bin, then tok<vocab>.bin beside it when present. */
rq_status rq_checkpoint_open_llama2c(const char *path, const char *tokenizer_path, rq_checkpoint *ck, rq_err *err);
/* The whole model (rq_model_build over the table); the tokenizer moves to it. */
rq_status rq_checkpoint_build(rq_checkpoint *ck, rq_model **out, rq_err *err);
/* "hf", "gguf" or "llama2c" (rq_model's format names) */
const char *rq_checkpoint_format(const rq_checkpoint *ck);
void rq_checkpoint_close(rq_checkpoint *ck);

#endif
