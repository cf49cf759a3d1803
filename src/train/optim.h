/* Optimizers over one flat parameter buffer, gradient-norm clipping, and
 * learning-rate schedules.
 *
 * The optimizer sees the adapter set's two flat buffers (params, grads: n
 * floats each on the backend) and owns the moments (one allocation of 2n
 * floats, made once). Semantics follow torch.optim.Adam / AdamW exactly
 * (see rq_adam_elem in backend/ops_math.h); clipping follows
 * torch.nn.utils.clip_grad_norm_; schedules follow transformers'
 * get_{constant,linear,cosine}_schedule_with_warmup. */
#ifndef RQ_OPTIM_H
#define RQ_OPTIM_H

#include "../backend/backend.h"

typedef enum rq_optim_kind {
    RQ_OPTIM_ADAM = 0, /* torch.optim.Adam: weight_decay is an L2 term added to the gradient */
    RQ_OPTIM_ADAMW = 1 /* torch.optim.AdamW: decoupled decay, param *= 1 - lr * wd before the step */
} rq_optim_kind;

typedef struct rq_optim_config {
    rq_optim_kind kind;
    float beta1, beta2, eps; /* torch defaults: 0.9, 0.999, 1e-8 */
    float weight_decay;      /* torch defaults: 0 for Adam, 0.01 for AdamW */
    float max_grad_norm;     /* global L2 norm clip; <= 0: no clipping */
} rq_optim_config;

/* torch's defaults for kind (max_grad_norm 0: off). */
rq_optim_config rq_optim_defaults(rq_optim_kind kind);
const char *rq_optim_kind_name(rq_optim_kind k); /* "adam", "adamw" */
rq_status rq_optim_kind_parse(const char *name, rq_optim_kind *out, rq_err *err);

typedef struct rq_optim {
    rq_optim_config cfg;
    rq_backend *be;
    size_t n;
    float *moments; /* [2][n] on the backend: m then v */
    float *m, *v;
    int64_t step;   /* optimizer steps taken (torch's state["step"]) */
} rq_optim;

rq_status rq_optim_create(rq_backend *be, size_t n, const rq_optim_config *cfg, rq_optim **out, rq_err *err);
/* Backend bytes rq_optim_create allocates for n parameters (the moments; the
 * caller has checked that 2n floats do not overflow). */
size_t rq_optim_moment_bytes(size_t n);
void rq_optim_free(rq_optim *o);

/* Global L2 norm of grad[n] (accumulated in double). */
double rq_grad_norm(rq_backend *be, const float *grad, size_t n);
/* torch's clip_grad_norm_: when norm > max_norm, grad *= max_norm / (norm + 1e-6).
 * Returns the norm before clipping. */
double rq_grad_clip(rq_backend *be, float *grad, size_t n, double max_norm);

/* One step at learning rate lr: clips grad when cfg.max_grad_norm > 0 (grad is
 * modified), then updates param and the moments. grad_norm (may be NULL)
 * receives the norm before clipping (computed only when clipping or asked).
 * Does not zero grad: the caller does when the accumulation window ends. */
rq_status rq_optim_step(rq_optim *o, float *param, float *grad, double lr, double *grad_norm, rq_err *err);

/* Checkpoint state: "RQOPTIM1", kind, n, step, then m[n] and v[n] (fp32,
 * little-endian as in memory on every supported host). */
size_t rq_optim_state_bytes(const rq_optim *o);
size_t rq_optim_state_bytes_for(size_t n); /* the same, before an optimizer exists (memory plans) */
rq_status rq_optim_state_save(const rq_optim *o, void *buf, size_t size, rq_err *err);
/* Restores step, m and v; the state must be of the same kind and size. */
rq_status rq_optim_state_load(rq_optim *o, const void *buf, size_t size, rq_err *err);

/* ---- learning-rate schedules ------------------------------------------------------ */

typedef enum rq_schedule_kind { RQ_SCHED_CONSTANT = 0, RQ_SCHED_LINEAR, RQ_SCHED_COSINE } rq_schedule_kind;

typedef struct rq_schedule {
    rq_schedule_kind kind;
    double lr;            /* peak learning rate */
    int64_t warmup_steps; /* linear ramp 0 -> lr over these steps */
    int64_t total_steps;  /* linear / cosine reach 0 at this step */
} rq_schedule;

const char *rq_schedule_kind_name(rq_schedule_kind k); /* "constant", "linear", "cosine" */
rq_status rq_schedule_kind_parse(const char *name, rq_schedule_kind *out, rq_err *err);

/* The learning rate of optimizer step `step` (0-based: the number of steps
 * already taken, transformers' convention: with warmup the first step runs at
 * lr 0):
 *   warmup  (step < W):  lr * step / W
 *   constant:            lr
 *   linear:              lr * max(0, (total - step) / (total - W))
 *   cosine:              lr * 0.5 * (1 + cos(pi * min(1, (step - W) / (total - W))))
 * (total - W is taken as at least 1). */
double rq_schedule_lr(const rq_schedule *s, int64_t step);

#endif
