/* A linear projection's frozen weight, fp32 or q2: what the model's layers
 * hold and what the backend's linear ops take. It lives below both src/model
 * and src/backend so the op table needs no model types. */
#ifndef RQ_LINEAR_H
#define RQ_LINEAR_H

#include "../core/core.h"

struct rq_q2_tensor; /* q2.h: the 2-bit group-quantized weight */

/* A linear projection y = W x, W is [out][in]. */
typedef struct rq_linear {
    int out, in;
    float *w;                /* fp32 [out][in], or NULL when q2 holds the weight */
    struct rq_q2_tensor *q2; /* 2-bit weight, or NULL */
} rq_linear;

#endif
