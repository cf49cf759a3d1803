/* Quantize a loaded model's projections into q2 tensors, in place. */
#ifndef RQ_QUANTIZE_MODEL_H
#define RQ_QUANTIZE_MODEL_H

#include "../core/tensors.h"
#include "../model/model.h"
#include "quantize.h"

typedef struct rq_model_quant_opts {
    rq_quant_opts quant;  /* method (rtn / nf2), group size, clip search, threads */
    /* Import weights that already lie on a 2-bit grid (rq_q2_import_fake_quant)
     * instead of quantizing them; the grid's codebook is quant.method's. */
    bool fake_quant;
    unsigned proj_mask;   /* bit (1 << RQ_PROJ_*) per projection to quantize; 0: all seven */
} rq_model_quant_opts;

typedef struct rq_model_quant_report {
    int tensors;              /* projections quantized */
    int64_t weights;          /* their weights */
    size_t q2_bytes;          /* codes + scales + offsets */
    double mean_rel_err;      /* mean over tensors of ||W - deq(W)||_F / ||W||_F */
    double max_rel_err;
    char worst[RQ_TENSOR_NAME_MAX]; /* the tensor with max_rel_err */
    double seconds;
} rq_model_quant_report;

void rq_model_quant_opts_default(rq_model_quant_opts *o);

/* "q,k,v,o,gate,up,down" (any subset, comma separated) -> proj_mask. */
rq_status rq_proj_mask_parse(const char *list, unsigned *mask, rq_err *err);

/* Replace the chosen fp32 projections of every layer by q2 tensors (the
 * embedding, the norms and the head stay). Projections already q2 are an
 * error. The fp32 weights stay in m->weights (one allocation) but no linear
 * points at them any more; save and reload (src/io/artifact) to drop them.
 * On failure m is unchanged. report may be NULL. */
rq_status rq_model_quantize(rq_model *m, const rq_model_quant_opts *o, rq_model_quant_report *report, rq_err *err);

#endif
