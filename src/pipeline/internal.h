/* Internal helpers of the pipeline stages. */
#ifndef RQ_PIPELINE_INTERNAL_H
#define RQ_PIPELINE_INTERNAL_H

#include "../backend/backend.h"
#include "stages.h"

/* The quantization group size of m's first q2 projection; 0 when none is quantized. */
int rq_model_q2_group_size(const rq_model *m);
/* dir/name <- o as indented JSON, atomically. */
rq_status rq_stage_write_json(const char *dir, const char *name, const cJSON *o, rq_err *err);
/* key: v, or null when v is not finite (JSON has no NaN). */
void rq_json_add_finite(cJSON *o, const char *key, double v);

#endif
