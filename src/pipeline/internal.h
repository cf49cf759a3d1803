/* Internal helpers of the pipeline stages. */
#ifndef RQ_PIPELINE_INTERNAL_H
#define RQ_PIPELINE_INTERNAL_H

#include "../backend/backend.h"
#include "../adapter/adapter.h"
#include "stages.h"

/* The quantization group size of m's first q2 projection; 0 when none is quantized. */
int rq_model_q2_group_size(const rq_model *m);
/* The adapter set's config from the adapter options (all seven projections;
 * group_size 0 stays 0: the caller takes the model's); init from the options'
 * name where it is one of the set's. */
rq_adapter_config rq_adapter_opts_config(const rq_adapter_opts *a, uint64_t seed);
/* dir/name <- o as indented JSON, atomically. */
rq_status rq_stage_write_json(const char *dir, const char *name, const cJSON *o, rq_err *err);
/* key: v, or null when v is not finite (JSON has no NaN). */
void rq_json_add_finite(cJSON *o, const char *key, double v);

#endif
