/* LoftQ initialization of LoRA adapters (Li et al. 2023; PEFT loftq_utils.py):
 * alternate quantizing W - scaling * B A and fitting B A to the quantization
 * error by a truncated SVD, so that Q + scaling * B A starts closer to W than Q
 * alone. The baseline that RILQ is compared against. */
#ifndef RQ_LOFTQ_H
#define RQ_LOFTQ_H

#include "quantize.h"
#include "svd.h"

typedef struct rq_loftq_opts {
    rq_quant_opts quant; /* the quantizer inside the loop: rtn or nf2, group size, clip search */
    int rank;            /* r: A is [r][in], B is [out][r] */
    int iters;           /* T alternations (the LoftQ README uses 5; PEFT's default is 1) */
    /* The LoRA scaling the adapter will run with (alpha / r, or alpha / sqrt(r)
     * for rsLoRA). B and A are returned so that scaling * B A is the rank-r fit
     * of the error: B = U sqrt(S / scaling), A = sqrt(S / scaling) Vt. PEFT
     * copies U sqrt(S) and sqrt(S) Vt unscaled, which is right only for
     * alpha = r (PEFT issue #1982); dividing here keeps any alpha correct. */
    float scaling;
    rq_rsvd_opts svd;
} rq_loftq_opts;

typedef struct rq_loftq_report {
    double weight_norm;   /* ||W||_F */
    double plain_error;   /* ||W - Q(W)||_F: the quantizer alone */
    double final_error;   /* ||W - Q - scaling B A||_F of what is returned */
    int best_iter;        /* 1-based iteration returned */
} rq_loftq_report;

/* Defaults: rtn, gs 64, rank 16, 5 iterations, scaling 1, rsvd defaults. */
void rq_loftq_opts_default(rq_loftq_opts *o);

/* LoftQ for one linear weight w [out][in] (fp32). On success *q holds the
 * quantized backbone, A [rank][in] and B [out][rank] (caller-allocated) the
 * adapter. history, when not NULL, receives ||W - Q_t - scaling B_t A_t||_F of
 * every iteration t = 1..iters. The alternation is not guaranteed monotone
 * (min/max scales move with the target), so the best iteration is returned;
 * iteration 1 already beats the quantizer alone. name is for messages. */
rq_status rq_loftq_init(const float *w, int out, int in, const rq_loftq_opts *opts, const char *name,
                        rq_q2_tensor **q, float *A, float *B, double *history, rq_loftq_report *report,
                        rq_err *err);

#endif /* RQ_LOFTQ_H */
