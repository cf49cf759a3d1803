/* Hugging Face checkpoint directories: config.json (+ generation_config.json),
 * safetensors weights (single or sharded), tokenizer.json. */
#ifndef RQ_IO_HF_H
#define RQ_IO_HF_H

#include "../model/model.h"

/* Parse config.json (LlamaForCausalLM) into cfg. Unsupported variants
 * (biases, other architectures, unknown rope scaling) are refused with a
 * message naming the key. cfg is not validated here (rq_config_validate). */
rq_status rq_hf_read_config(const char *config_path, rq_config *cfg, rq_err *err);
/* Parse the same from JSON text in memory; what names it in messages. */
rq_status rq_hf_parse_config(const char *json, size_t len, const char *what, rq_config *cfg, rq_err *err);

/* Add generation_config.json's eos_token_id(s) to cfg (ids already present
 * are not repeated) and take its bos_token_id when cfg has none. */
rq_status rq_hf_read_generation_config(const char *path, rq_config *cfg, rq_err *err);

/* Load a whole directory: config.json, generation_config.json if present,
 * the safetensors weights, tokenizer.json if present (else m->tok is NULL). */
rq_status rq_hf_load(const char *dir, rq_model **out, rq_err *err);

/* A new cJSON object holding c as Hugging Face LlamaConfig keys (what
 * rq_hf_parse_config reads back to the same config; floats go through double
 * exactly and cJSON prints enough digits to round-trip), with torch_dtype.
 * The caller adds its own blocks (quantization_config) and frees it. */
struct cJSON *rq_hf_config_json(const rq_config *c, const char *torch_dtype);

#endif
