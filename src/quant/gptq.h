/* GPTQ (Frantar et al., 2022) into the q2 format: contiguous groups, each
 * group's scale and offset chosen from the error-compensated weights when the
 * group starts and rounded to fp16 before its codes are chosen (the stored model
 * is the one GPTQ optimized), lazy blocks, dampening, dead columns, the upper
 * Cholesky factor of H^-1.
 *
 * One matrix: W [out][in] and H = 2 X^T X / N [in][in] (fp64) of the inputs X it
 * sees. For column i (in order), every row's weight is rounded to its group's
 * grid and the error e = (w - q) / U[i][i] is spread over the later columns j of
 * the row as w_j -= e U[i][j] (U: upper Cholesky factor of H^-1, H dampened by
 * damp * mean(diag H)); within a block of columns the updates are immediate,
 * beyond it they are applied once per block as one GEMM.
 * A whole model: src/train/gptq_model.h. */
#ifndef RQ_GPTQ_H
#define RQ_GPTQ_H

#include "quantize.h"

typedef struct rq_gptq_opts {
    rq_quant_opts quant; /* codebook (method rtn: int2, nf2: NF2), group size, clip search of each group */
    double damp;         /* 0.01: H += damp * mean(diag H) * I */
    int block;           /* 128: columns per lazy block (rounded up to a multiple of the group size) */
} rq_gptq_opts;

void rq_gptq_opts_default(rq_gptq_opts *o);

/* Quantize W [out][in] (overwritten: on return column i holds the
 * error-compensated weights as they were when column i was rounded, which round
 * to the chosen codes) with H [in][in] (overwritten: its factors) into a new q2
 * tensor *t. *proxy_loss (may be NULL): sum over columns of ||w - q||^2 / (2 U_ii^2),
 * GPTQ's own objective. */
rq_status rq_gptq_quantize(float *W, int out, int in, double *H, const rq_gptq_opts *o, const char *name,
                           rq_q2_tensor **t, double *proxy_loss, rq_err *err);

#endif
