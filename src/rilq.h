/* rilq: fine-tuning and deployment of 2-bit LLaMA-family models.
 *
 * The one public header of librilq. Handles are opaque; every function that can
 * fail returns rq_status and, when given an rq_err, fills it with what went
 * wrong, where, and a hint. The library never prints, never exits and keeps no
 * global state: everything lives in the handles the caller owns. */
#ifndef RILQ_H
#define RILQ_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define RILQ_VERSION "0.1.0"

typedef enum rq_status {
    RQ_OK = 0,
    RQ_ERR_IO,          /* a file could not be opened, read or written */
    RQ_ERR_FORMAT,      /* a file's contents are malformed or inconsistent */
    RQ_ERR_UNSUPPORTED, /* well-formed input that rilq does not handle */
    RQ_ERR_ARG,         /* a bad argument or option value */
    RQ_ERR_NOMEM,       /* an allocation failed */
    RQ_ERR_INTERNAL,    /* a bug in rilq */
    RQ_ERR_NUMERIC      /* a computation went non-finite (NaN / Inf): training diverged or the model holds NaN */
} rq_status;

/* Error details. Zero-initialize one and pass it to calls; on failure it holds
 * a message meant for the user and the source location that raised it. */
typedef struct rq_err {
    rq_status code;
    char msg[1024];
    const char *src_file;
    int src_line;
} rq_err;

const char *rq_status_name(rq_status s);

typedef struct rq_model rq_model;
typedef struct rq_tokenizer rq_tokenizer;

/* Model loading: a Hugging Face directory (config.json + safetensors), a GGUF
 * file, or a llama2.c .bin (tokenizer.bin found beside it unless tokenizer_path
 * names one). tokenizer_path may be NULL. */
rq_status rq_model_load(const char *path, const char *tokenizer_path, rq_model **out, rq_err *err);
void rq_model_free(rq_model *m);

#ifdef __cplusplus
}
#endif
#endif /* RILQ_H */
