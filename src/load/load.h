/* Model loading beyond rq_model_load (src/rilq.h): a full-precision checkpoint
 * opened without converting its weights, for passes that read one layer at a
 * time (the layer-streamed teacher). */
#ifndef RQ_LOAD_H
#define RQ_LOAD_H

#include "../io/checkpoint.h"

/* Open the checkpoint at path (an HF directory, a GGUF or a llama2.c file: the
 * same detection and tokenizer rules as rq_model_load); a rilq-q2 artifact is
 * RQ_ERR_UNSUPPORTED (its projections are 2-bit: load it whole). Close with
 * rq_checkpoint_close; ck must not be copied (its table points into it). */
rq_status rq_model_open_checkpoint(const char *path, const char *tokenizer_path, rq_checkpoint *ck, rq_err *err);

#endif
