/* llama2.c legacy (v0) checkpoints: a 7 x int32 header, then fp32 weights. */
#ifndef RQ_IO_LLAMA2C_H
#define RQ_IO_LLAMA2C_H

#include "../model/model.h"
#include "../core/tensors.h"

/* A mapped llama2.c file: its config and HF-named views into the mapping. */
typedef struct rq_llama2c {
    char *path;
    rq_file_view view;
    rq_config cfg;
    rq_tensor_table table;
} rq_llama2c;

/* Map path, check the header and that the file size is exactly what it
 * implies (with the classifier when vocab_size < 0), and list the weights
 * (wq/wk marked for un-permutation: run.c rotates adjacent pairs). */
rq_status rq_llama2c_open(const char *path, rq_llama2c *f, rq_err *err);
void rq_llama2c_close(rq_llama2c *f);

/* Load the model. tokenizer_path may be NULL: then "tokenizer.bin" or
 * "tok<vocab>.bin" beside the model is used when present (else no tokenizer). */
rq_status rq_llama2c_load(const char *path, const char *tokenizer_path, rq_model **out, rq_err *err);

#endif
