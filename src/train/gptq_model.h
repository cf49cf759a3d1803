/* GPTQ on a whole model (the solver: src/quant/gptq.h): calibration windows
 * run one decoder layer at a time (only one layer's inputs are resident, never
 * the whole model's activations); in each layer the projections sharing an
 * input are quantized together and in order (q, k, v; o; gate, up; down), each
 * from the inputs it sees with everything before it already quantized
 * (H = 2 X^T X / N in fp64), and the quantized layer's outputs are the next
 * layer's inputs. */
#ifndef RQ_GPTQ_MODEL_H
#define RQ_GPTQ_MODEL_H

#include "../backend/backend.h"
#include "../model/model.h"
#include "../quant/gptq.h"
#include "../quant/quantize_model.h"

typedef struct rq_gptq_model_opts {
    rq_gptq_opts gptq;
    unsigned proj_mask; /* projections to quantize (0: all seven) */
    int batch;          /* windows per forward call (1) */
} rq_gptq_model_opts;

/* Quantize m's projections in place with GPTQ on the calibration windows
 * tokens [n_windows][T]. The report's relative errors compare with the original
 * weights; rep may be NULL. On failure m may be left partly quantized (free it). */
rq_status rq_gptq_model(rq_model *m, rq_backend *be, const int *tokens, int n_windows, int T,
                        const rq_gptq_model_opts *o, rq_model_quant_report *rep, rq_err *err);

#endif
