/* Adam / AdamW over a flat buffer, clipping, schedules. See optim.h. */
#include "optim.h"

#include <math.h>
#include <stdlib.h>

#define OPTIM_MAGIC "RQOPTIM1"
#define OPTIM_HEADER_BYTES 32 /* magic[8], u32 kind, u32 reserved, u64 n, i64 step */

rq_optim_config rq_optim_defaults(rq_optim_kind kind) {
    rq_optim_config c = {.kind = kind, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f,
                         .weight_decay = kind == RQ_OPTIM_ADAMW ? 0.01f : 0.0f, .max_grad_norm = 0.0f};
    return c;
}

const char *rq_optim_kind_name(rq_optim_kind k) { return k == RQ_OPTIM_ADAMW ? "adamw" : "adam"; }

rq_status rq_optim_kind_parse(const char *name, rq_optim_kind *out, rq_err *err) {
    if (strcmp(name, "adam") == 0) *out = RQ_OPTIM_ADAM;
    else if (strcmp(name, "adamw") == 0) *out = RQ_OPTIM_ADAMW;
    else return RQ_FAIL(err, RQ_ERR_ARG, "unknown optimizer '%s' (expected adam or adamw)", name);
    return RQ_OK;
}

rq_status rq_optim_create(rq_backend *be, size_t n, const rq_optim_config *cfg, rq_optim **out, rq_err *err) {
    *out = NULL;
    if (!(cfg->beta1 >= 0.0f && cfg->beta1 < 1.0f) || !(cfg->beta2 >= 0.0f && cfg->beta2 < 1.0f))
        return RQ_FAIL(err, RQ_ERR_ARG, "optimizer betas (%g, %g) must lie in [0, 1)", (double)cfg->beta1,
                       (double)cfg->beta2);
    if (!(cfg->eps >= 0.0f) || !(cfg->weight_decay >= 0.0f))
        return RQ_FAIL(err, RQ_ERR_ARG, "optimizer eps %g and weight decay %g must be >= 0", (double)cfg->eps,
                       (double)cfg->weight_decay);
    if (cfg->kind != RQ_OPTIM_ADAM && cfg->kind != RQ_OPTIM_ADAMW)
        return RQ_FAIL(err, RQ_ERR_ARG, "unknown optimizer kind %d", (int)cfg->kind);
    size_t bytes;
    if (!rq_mul_ok(n, 2 * sizeof(float), &bytes))
        return RQ_FAIL(err, RQ_ERR_NOMEM, "optimizer state for %zu parameters overflows", n);
    rq_optim *o = rq_calloc(1, sizeof *o, err);
    if (!o) return RQ_ERR_NOMEM;
    o->cfg = *cfg;
    o->be = be;
    o->n = n;
    o->moments = be->alloc(be, rq_optim_moment_bytes(n), err);
    if (!o->moments) {
        free(o);
        return RQ_ERR_NOMEM;
    }
    o->m = o->moments;
    o->v = o->moments + n;
    be->fill_zero(be, o->moments, 2 * n);
    *out = o;
    return RQ_OK;
}

void rq_optim_free(rq_optim *o) {
    if (!o) return;
    if (o->moments) o->be->free(o->be, o->moments);
    free(o);
}

double rq_grad_norm(rq_backend *be, const float *grad, size_t n) { return sqrt(be->sum_squares(be, grad, n)); }

double rq_grad_clip(rq_backend *be, float *grad, size_t n, double max_norm) {
    double norm = rq_grad_norm(be, grad, n);
    /* torch: clip_coef = max_norm / (total_norm + 1e-6), applied when < 1 */
    double coef = max_norm / (norm + 1e-6);
    if (coef < 1.0) be->scale(be, grad, (float)coef, n);
    return norm;
}

rq_status rq_optim_step(rq_optim *o, float *param, float *grad, double lr, double *grad_norm, rq_err *err) {
    if (!isfinite(lr) || lr < 0.0) return RQ_FAIL(err, RQ_ERR_ARG, "learning rate %g must be finite and >= 0", lr);
    if (o->step >= INT32_MAX) return RQ_FAIL(err, RQ_ERR_ARG, "optimizer step count %lld overflows", (long long)o->step);
    double norm = -1.0;
    if (o->cfg.max_grad_norm > 0.0f) norm = rq_grad_clip(o->be, grad, o->n, o->cfg.max_grad_norm);
    else if (grad_norm) norm = rq_grad_norm(o->be, grad, o->n);
    if (grad_norm) *grad_norm = norm;
    o->step++;
    const rq_optim_config *c = &o->cfg;
    if (c->kind == RQ_OPTIM_ADAMW)
        o->be->adamw(o->be, param, grad, o->m, o->v, o->n, (float)lr, c->beta1, c->beta2, c->eps, c->weight_decay,
                     (int)o->step);
    else
        o->be->adam_l2(o->be, param, grad, o->m, o->v, o->n, (float)lr, c->beta1, c->beta2, c->eps,
                       c->weight_decay, (int)o->step);
    return RQ_OK;
}

size_t rq_optim_moment_bytes(size_t n) { return n ? 2 * n * sizeof(float) : sizeof(float); }

size_t rq_optim_state_bytes_for(size_t n) { return OPTIM_HEADER_BYTES + 2 * n * sizeof(float); }

size_t rq_optim_state_bytes(const rq_optim *o) { return rq_optim_state_bytes_for(o->n); }

static void put_u32(uint8_t *p, uint32_t x) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(x >> (8 * i));
}
static void put_u64(uint8_t *p, uint64_t x) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(x >> (8 * i));
}

rq_status rq_optim_state_save(const rq_optim *o, void *buf, size_t size, rq_err *err) {
    size_t need = rq_optim_state_bytes(o);
    if (size < need) return RQ_FAIL(err, RQ_ERR_ARG, "optimizer state needs %zu bytes, buffer has %zu", need, size);
    uint8_t *p = buf;
    memcpy(p, OPTIM_MAGIC, 8);
    put_u32(p + 8, (uint32_t)o->cfg.kind);
    put_u32(p + 12, 0);
    put_u64(p + 16, (uint64_t)o->n);
    put_u64(p + 24, (uint64_t)o->step);
    return o->be->download(o->be, p + OPTIM_HEADER_BYTES, o->moments, 2 * o->n * sizeof(float), err);
}

rq_status rq_optim_state_load(rq_optim *o, const void *buf, size_t size, rq_err *err) {
    const uint8_t *p = buf;
    if (size < OPTIM_HEADER_BYTES || memcmp(p, OPTIM_MAGIC, 8) != 0)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "optimizer state: bad header (expected %s)", OPTIM_MAGIC);
    uint32_t kind = rq_rd_u32(p + 8);
    uint64_t n = rq_rd_u64(p + 16);
    int64_t step = (int64_t)rq_rd_u64(p + 24);
    if (kind != (uint32_t)o->cfg.kind)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "optimizer state is for %s, this run uses %s",
                       kind == RQ_OPTIM_ADAMW ? "adamw" : kind == RQ_OPTIM_ADAM ? "adam" : "an unknown optimizer",
                       rq_optim_kind_name(o->cfg.kind));
    if (n != (uint64_t)o->n)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "optimizer state holds %llu parameters, expected %zu",
                       (unsigned long long)n, o->n);
    if (size != rq_optim_state_bytes(o))
        return RQ_FAIL(err, RQ_ERR_FORMAT, "optimizer state is %zu bytes, expected %zu", size,
                       rq_optim_state_bytes(o));
    if (step < 0 || step >= INT32_MAX)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "optimizer state: bad step count %lld", (long long)step);
    RQ_TRY(o->be->upload(o->be, o->moments, p + OPTIM_HEADER_BYTES, 2 * o->n * sizeof(float), err));
    o->step = step;
    return RQ_OK;
}

/* ---- schedules ----------------------------------------------------------------------- */

static const char *const sched_names[] = {"constant", "linear", "cosine"};

const char *rq_schedule_kind_name(rq_schedule_kind k) {
    return (unsigned)k < 3 ? sched_names[k] : "?";
}

rq_status rq_schedule_kind_parse(const char *name, rq_schedule_kind *out, rq_err *err) {
    for (int i = 0; i < 3; i++)
        if (strcmp(name, sched_names[i]) == 0) {
            *out = (rq_schedule_kind)i;
            return RQ_OK;
        }
    return RQ_FAIL(err, RQ_ERR_ARG, "unknown schedule '%s' (expected constant, linear or cosine)", name);
}

double rq_schedule_lr(const rq_schedule *s, int64_t step) {
    const double pi = 3.14159265358979323846;
    int64_t w = s->warmup_steps > 0 ? s->warmup_steps : 0;
    if (step < w) return s->lr * (double)step / (double)w;
    int64_t span = s->total_steps - w > 1 ? s->total_steps - w : 1;
    double f = 1.0;
    switch (s->kind) {
    case RQ_SCHED_LINEAR: f = (double)(s->total_steps - step) / (double)span; break;
    case RQ_SCHED_COSINE: {
        /* clamped at 1: transformers lets the cosine rise again past total_steps */
        double progress = (double)(step - w) / (double)span;
        f = 0.5 * (1.0 + cos(pi * (progress < 1.0 ? progress : 1.0)));
    } break;
    default: break;
    }
    return s->lr * (f > 0.0 ? f : 0.0);
}
