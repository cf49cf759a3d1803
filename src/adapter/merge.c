/* Merge adapters into a 2-bit model: exact QA-LoRA folding into the group
 * offsets, re-quantization for what cannot fold, and the logit check
 * (derivations and bounds in merge.h). */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "../io/artifact.h"
#include "../model/bind.h"
#include "../model/forward.h"
#include "../model/generate.h"
#include "../quant/quantize.h"
#include "merge.h"

void rq_merge_opts_default(rq_merge_opts *o) {
    memset(o, 0, sizeof *o);
    o->verify_seqs = 4;
    o->verify_len = 64;
    o->verify_seed = 1234;
}

double rq_merge_default_tolerance(double rounding_perturbation, int n_projections) {
    double measured = RQ_MERGE_TOLERANCE_K_MEASURED * rounding_perturbation;
    double a_priori = RQ_MERGE_TOLERANCE_K_A_PRIORI * 0x1p-11 * sqrt((double)(n_projections > 1 ? n_projections : 1));
    double t = measured < a_priori ? measured : a_priori;
    return t > RQ_MERGE_TOLERANCE_FLOOR ? t : RQ_MERGE_TOLERANCE_FLOOR;
}

static void module_name(char *buf, size_t cap, int layer, int proj) {
    snprintf(buf, cap, "model.layers.%d.%s.%s", layer, proj <= RQ_PROJ_O ? "self_attn" : "mlp", rq_proj_names[proj]);
}

static int group_len(int in, int gs, int g) {
    int i0 = g * gs;
    return in - i0 < gs ? in - i0 : gs;
}

/* Every fp16 value is an integer
 * multiple of its binade's quantum, so rounding x / quantum to an integer (an
 * exact power-of-two scaling) is the correctly rounded result, and the result
 * converts to fp32 and then fp16 without further rounding. */
bool rq_f64_to_f16_once(double x, uint16_t *out) {
    if (!isfinite(x)) return false;
    double ax = fabs(x);
    if (ax >= 65520.0) return false;
    double quantum;
    if (ax < 0x1p-14) quantum = 0x1p-24; /* subnormal spacing */
    else {
        int e;
        frexp(ax, &e);              /* ax in [2^(e-1), 2^e) */
        quantum = ldexp(1.0, e - 11); /* 11 significant bits */
    }
    double r = nearbyint(x / quantum) * quantum; /* the default rounding mode: to nearest even */
    *out = rq_f32_to_f16((float)r);
    return true;
}

rq_status rq_merge_qalora_offsets(const rq_q2_tensor *t, const rq_adapter *a, const float *A, const float *B,
                                  const char *name, uint16_t *offsets_out, rq_merge_stats *stats, rq_err *err) {
    if (!name) name = "tensor";
    if (a->type != RQ_ADAPTER_QALORA)
        return RQ_FAIL(err, RQ_ERR_UNSUPPORTED,
                       "%s: a plain LoRA adapter (A reads all %d inputs) cannot fold into per-group offsets", name, a->in);
    if (a->out != t->out || a->in != t->in)
        return RQ_FAIL(err, RQ_ERR_ARG, "%s: adapter is for a [%d, %d] weight, the tensor is [%d, %d]", name, a->out,
                       a->in, t->out, t->in);
    if (a->group_size != t->group_size)
        return RQ_FAIL(err, RQ_ERR_UNSUPPORTED,
                       "%s: the adapter's pooling group size %d differs from the quantization group size %d: the "
                       "update is not constant inside the quantization groups, so no offset can absorb it (re-train "
                       "the adapters with --group-size %d, or fold approximately with --requantize)",
                       name, a->group_size, t->group_size, t->group_size);
    if (a->a_cols != t->n_groups)
        return RQ_FAIL(err, RQ_ERR_INTERNAL, "%s: adapter has %d group columns, the tensor %d groups", name, a->a_cols,
                       t->n_groups);
    const int G = t->n_groups, r = a->r;
    const double s = (double)a->scaling; /* the float the forward multiplies by */
    double round_max = 0.0, steps_sum = 0.0, steps_max = 0.0, round_sq = 0.0;
    for (int o = 0; o < t->out; o++) {
        const float *Bo = B + (size_t)o * r;
        for (int g = 0; g < G; g++) {
            double ba = 0.0;
            for (int k = 0; k < r; k++) ba += (double)Bo[k] * (double)A[(size_t)k * G + g];
            size_t idx = (size_t)o * G + g;
            double m = rq_f16_to_f32(t->offsets[idx]);
            double update = s * ba / group_len(t->in, t->group_size, g);
            double merged = m + update;
            uint16_t h;
            if (!isfinite(update))
                return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: row %d, group %d: the adapter's update is not finite (%g)", name,
                               o, g, update);
            if (!rq_f64_to_f16_once(merged, &h))
                return RQ_FAIL(err, RQ_ERR_UNSUPPORTED,
                               "%s: row %d, group %d: merged offset %g (offset %g + update %g) overflows fp16 (max "
                               "65504)",
                               name, o, g, merged, m, update);
            double e = (double)rq_f16_to_f32(h) - merged, rounding = fabs(e) / fmax(fabs(merged), 0x1p-14);
            round_sq += e * e * group_len(t->in, t->group_size, g);
            if (rounding > round_max) round_max = rounding;
            double scale = fabs((double)rq_f16_to_f32(t->scales[idx]));
            double steps = scale > 0 ? fabs(update) / scale : 0.0;
            steps_sum += steps;
            if (steps > steps_max) steps_max = steps;
            offsets_out[idx] = h;
        }
    }
    if (stats) {
        if (round_max > stats->max_rounding) stats->max_rounding = round_max;
        if (steps_max > stats->max_steps) stats->max_steps = steps_max;
        stats->sum_steps += steps_sum;
        stats->rounding_sq += round_sq;
        stats->groups += (long long)t->out * G;
    }
    return RQ_OK;
}

rq_status rq_merge_dense_update(const rq_adapter *a, const float *A, const float *B, float *dW, rq_err *err) {
    const float *At = A;
    float *spread = NULL;
    if (a->type == RQ_ADAPTER_QALORA) {
        /* A~[k][i] = A[k][g(i)] / len(g(i)): the pooling folded into A */
        spread = rq_calloc((size_t)a->r * (size_t)a->in, sizeof(float), err);
        if (!spread) return RQ_ERR_NOMEM;
        for (int k = 0; k < a->r; k++)
            for (int i = 0; i < a->in; i++) {
                int g = i / a->group_size;
                spread[(size_t)k * a->in + i] = A[(size_t)k * a->a_cols + g] / (float)group_len(a->in, a->group_size, g);
            }
        At = spread;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, a->out, a->in, a->r, a->scaling, B, a->r, At, a->in, 1.0f,
                dW, a->in);
    free(spread);
    return RQ_OK;
}

/* ---- verification ------------------------------------------------------------------------- */

void rq_merge_verify_tokens(int *tokens, int n, int T, int vocab, uint64_t seed) {
    rq_rng rng;
    rq_rng_seed(&rng, seed);
    for (size_t i = 0; i < (size_t)n * (size_t)T; i++) tokens[i] = (int)(rq_rng_u64(&rng) % (uint64_t)vocab);
}

rq_status rq_merge_sample_tokens(rq_model *m, rq_backend *be, rq_adapter_set *ad, int *tokens, int n, int T,
                                 uint64_t seed, rq_err *err) {
    rq_merge_verify_tokens(tokens, n, T, m->cfg.vocab_size, seed); /* the first tokens when there is no BOS */
    rq_adapter_set *attached = m->adapters;
    m->adapters = ad; /* generation runs the model with what it has attached */
    rq_status s = RQ_OK;
    for (int i = 0; s == RQ_OK && i < n && T > 1; i++) {
        int *seq = tokens + (size_t)i * (size_t)T, *gen = NULL, n_gen = 0;
        if (m->cfg.bos_id >= 0 && m->cfg.bos_id < m->cfg.vocab_size) seq[0] = m->cfg.bos_id;
        rq_sample_opts so = {.max_new = T - 1, .temperature = 1.0f, .top_p = 1.0f, .seed = seed + (uint64_t)i};
        s = rq_generate(m, be, seq, 1, &so, NULL, 0, NULL, NULL, &gen, &n_gen, err);
        if (s == RQ_OK) memcpy(seq + 1, gen, sizeof(int) * (size_t)n_gen); /* n_gen == T - 1: no stop tokens */
        free(gen);
    }
    m->adapters = attached;
    return s;
}

rq_status rq_merge_logits(rq_model *m, rq_backend *be, rq_adapter_set *ad, const int *tokens, int n, int T, float *out,
                          rq_err *err) {
    /* the forward falls back to m->adapters when given none: detach them for a base run */
    rq_adapter_set *attached = m->adapters;
    m->adapters = NULL;
    rq_forward_opts fo = {.max_batch = 1, .max_seq = T, .adapters = ad};
    rq_forward_state *st = NULL;
    rq_status s = rq_forward_create(m, be, &fo, &st, err);
    for (int i = 0; s == RQ_OK && i < n; i++) {
        s = rq_forward_run(st, tokens + (size_t)i * T, 1, T, 0, err);
        if (s == RQ_OK) s = rq_forward_logits(st, NULL, T, out + (size_t)i * T * m->cfg.vocab_size, err);
    }
    rq_forward_free(st);
    m->adapters = attached;
    return s;
}

void rq_merge_compare(const float *ref, const float *got, size_t rows, int vocab, double *max_abs, double *max_rel,
                      double *max_ref) {
    double a_max = 0.0, r_max = 0.0, ref_max = 0.0;
    for (size_t r = 0; r < rows; r++) {
        const float *x = ref + r * (size_t)vocab, *y = got + r * (size_t)vocab;
        double d = 0.0, scale = 0.0;
        for (int v = 0; v < vocab; v++) {
            double e = fabs((double)y[v] - (double)x[v]);
            if (e > d || isnan(e)) d = e; /* a NaN difference sticks */
            if (fabs((double)x[v]) > scale) scale = fabs((double)x[v]);
        }
        double rel = scale > 0 ? d / scale : d;
        if (d > a_max || isnan(d)) a_max = d;
        if (rel > r_max || isnan(rel)) r_max = rel;
        if (scale > ref_max) ref_max = scale;
    }
    *max_abs = a_max;
    *max_rel = r_max;
    if (max_ref) *max_ref = ref_max;
}

/* ---- the model --------------------------------------------------------------------------------- */

/* What the merge will do to one projection. */
typedef enum { PLAN_NONE, PLAN_EXACT, PLAN_DENSE, PLAN_REQUANT } plan_kind;

/* The staged result of one projection, committed once all are computed. */
typedef struct staged {
    plan_kind kind;
    uint16_t *offsets;   /* PLAN_EXACT */
    float *w;            /* PLAN_DENSE: the new fp32 weight */
    rq_q2_tensor *q2;    /* PLAN_REQUANT */
} staged;

static rq_status quant_opts_of(const rq_model *m, const rq_q2_tensor *t, const rq_merge_opts *o, rq_quant_opts *q,
                               rq_err *err) {
    rq_quant_opts_default(q);
    q->group_size = t->group_size;
    q->clip_search = m->quant.clip_search;
    q->n_threads = o->n_threads;
    /* the recorded method; a fake-quant import re-quantizes with the quantizer of its codebook */
    if (!strcmp(m->quant.method, "rtn")) q->method = RQ_QUANT_RTN;
    else if (!strcmp(m->quant.method, "nf2")) q->method = RQ_QUANT_NF2;
    else q->method = t->kind == RQ_Q2_NF2 ? RQ_QUANT_NF2 : RQ_QUANT_RTN;
    if (rq_quant_method_codebook(q->method) != t->kind)
        return RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "re-quantization: method %s does not produce the tensor's %s codebook",
                       rq_quant_method_name(q->method), rq_q2_codebook_name(t->kind));
    return RQ_OK;
}

/* W + dW re-quantized into a new tensor; error figures into rep. */
static rq_status requantize_one(const rq_model *m, const rq_q2_tensor *t, const rq_adapter *a, const float *A,
                                const float *B, const char *name, const rq_merge_opts *o, rq_q2_tensor **out,
                                rq_merge_report *rep, double *err_sum, rq_err *err) {
    size_t n = (size_t)t->out * (size_t)t->in;
    rq_quant_opts q;
    RQ_TRY(quant_opts_of(m, t, o, &q, err));
    float *w = rq_alloc_aligned(n * sizeof(float), err);
    float *dw = w ? rq_alloc_aligned(n * sizeof(float), err) : NULL;
    rq_status s = dw ? RQ_OK : RQ_ERR_NOMEM;
    if (s == RQ_OK) s = rq_merge_dense_update(a, A, B, dw, err); /* dw starts zeroed */
    if (s == RQ_OK) {
        rq_q2_dequant(t, w, o->n_threads);
        for (size_t i = 0; i < n; i++) w[i] += dw[i];
        s = rq_quantize(w, t->out, t->in, &q, name, out, err);
    }
    if (s == RQ_OK) {
        float *deq = dw; /* reuse: dW's norm first */
        double upd = 0.0, num = 0.0, den = 0.0;
        for (size_t i = 0; i < n; i++) upd += (double)dw[i] * dw[i];
        rq_q2_dequant(*out, deq, o->n_threads);
        for (size_t i = 0; i < n; i++) {
            double d = (double)deq[i] - (double)w[i];
            num += d * d;
            den += (double)w[i] * w[i];
        }
        double rel = den > 0 ? sqrt(num / den) : sqrt(num), lost = upd > 0 ? sqrt(num / upd) : 0.0;
        *err_sum += rel;
        if (rel >= rep->requant_max_rel_err) {
            rep->requant_max_rel_err = rel;
            snprintf(rep->requant_worst, sizeof rep->requant_worst, "%s", name);
        }
        if (lost > rep->requant_max_err_over_update) rep->requant_max_err_over_update = lost;
    }
    free(w);
    free(dw);
    return s;
}

/* The exactness check on weights: rows 0, out/2 and out-1 of the merged
 * tensor against deq(W) + dW with dW in double. Both dequantize fl(s*level)
 * with the same s, so they differ by the offset's rounding e plus one fp32
 * rounding of each sum: |w' - (w + dW)| <= 2^-11 max(|m'|, 2^-14) + 2^-24
 * (|w| + |w'|); the check allows twice the last term. */
static rq_status check_rows(const rq_q2_tensor *t, const uint16_t *offsets, const rq_adapter *a, const float *A,
                            const float *B, const char *name, rq_merge_report *rep, rq_err *err) {
    rq_q2_tensor merged = *t; /* a view with the new offsets */
    merged.offsets = (uint16_t *)offsets;
    float *w0 = rq_calloc((size_t)2 * t->in, sizeof(float), err);
    if (!w0) return RQ_ERR_NOMEM;
    float *w1 = w0 + t->in;
    const int rows[3] = {0, t->out / 2, t->out - 1};
    rq_status s = RQ_OK;
    for (int k = 0; k < 3 && s == RQ_OK; k++) {
        int o = rows[k];
        rq_q2_dequant_row(t, o, w0);
        rq_q2_dequant_row(&merged, o, w1);
        for (int i = 0; i < t->in; i++) {
            int g = i / t->group_size;
            double ba = 0.0;
            for (int j = 0; j < a->r; j++) ba += (double)B[(size_t)o * a->r + j] * (double)A[(size_t)j * a->a_cols + g];
            double dw = (double)a->scaling * ba / group_len(t->in, t->group_size, g);
            double m1 = fabs((double)rq_q2_offset(&merged, o, g));
            double bound = 0x1p-11 * fmax(m1, 0x1p-14) + 0x1p-23 * (fabs((double)w0[i]) + fabs((double)w1[i]));
            double ratio = fabs((double)w1[i] - ((double)w0[i] + dw)) / bound;
            if (ratio > rep->max_weight_err_ratio) rep->max_weight_err_ratio = ratio;
            if (!(ratio <= 1.0)) {
                s = RQ_FAIL(err, RQ_ERR_INTERNAL,
                            "%s: row %d, column %d: merged weight %.9g differs from W + dW = %.9g by more than the "
                            "fp16 rounding of its offset allows (%.3g)",
                            name, o, i, (double)w1[i], (double)w0[i] + dw, bound);
                break;
            }
        }
    }
    free(w0);
    return s;
}

/* ||W'||_F^2 of t with the given offsets, in double; dequantized in tiles of
 * ~64K weights (rq_q2_dequant_rows threads them). */
static rq_status merged_norm_sq(const rq_q2_tensor *t, const uint16_t *offsets, int n_threads, double *out,
                                rq_err *err) {
    rq_q2_tensor merged = *t;
    merged.offsets = (uint16_t *)offsets;
    int rows = 65536 / t->in > 1 ? 65536 / t->in : 1;
    float *tile = rq_alloc_aligned((size_t)rows * t->in * sizeof(float), err);
    if (!tile) return RQ_ERR_NOMEM;
    double sq = 0.0;
    for (int r0 = 0; r0 < t->out; r0 += rows) {
        int r1 = r0 + rows < t->out ? r0 + rows : t->out;
        rq_q2_dequant_rows(&merged, r0, r1, tile, n_threads);
        for (size_t i = 0; i < (size_t)(r1 - r0) * t->in; i++) sq += (double)tile[i] * tile[i];
    }
    free(tile);
    *out = sq;
    return RQ_OK;
}

static void free_staged(staged *st, size_t n) {
    for (size_t i = 0; st && i < n; i++) {
        free(st[i].offsets);
        free(st[i].w);
        rq_q2_free(st[i].q2);
    }
    free(st);
}

/* Compute every projection's merged form into st (m untouched). */
static rq_status stage_all(const rq_model *m, const rq_adapter_set *s, const float *host, const rq_merge_opts *o,
                           staged *st, rq_merge_report *rep, rq_err *err) {
    const rq_config *c = &m->cfg;
    double requant_err_sum = 0.0, pert_sq = 0.0;
    rq_merge_stats ms = {0};
    /* refusals first, so no time is spent before a plain "no" */
    for (int l = 0; l < c->n_layers; l++)
        for (int p = 0; p < RQ_N_PROJ; p++) {
            const rq_adapter *a = &s->items[(size_t)l * RQ_N_PROJ + p];
            const rq_linear *lin = rq_layer_proj(&m->layers[l], p);
            staged *x = &st[(size_t)l * RQ_N_PROJ + p];
            char name[96];
            module_name(name, sizeof name, l, p);
            if (!a->A) continue;
            if (a->out != lin->out || a->in != lin->in)
                return RQ_FAIL(err, RQ_ERR_ARG, "%s: adapter is for a [%d, %d] weight, the model's is [%d, %d]", name,
                               a->out, a->in, lin->out, lin->in);
            if (!lin->q2) x->kind = PLAN_DENSE;
            else if (a->type == RQ_ADAPTER_QALORA && a->group_size == lin->q2->group_size) x->kind = PLAN_EXACT;
            else if (o->requantize) x->kind = PLAN_REQUANT;
            else if (a->type == RQ_ADAPTER_LORA)
                return RQ_FAIL(err, RQ_ERR_UNSUPPORTED,
                               "%s: a plain LoRA adapter cannot be folded into a 2-bit weight exactly: its update "
                               "B A differs across the inputs of a quantization group, while a group can only shift "
                               "by one offset. Use QA-LoRA adapters (--adapter qalora, group size %d) for an exact "
                               "merge, or pass --requantize to quantize W + B A again (adds quantization error, "
                               "reported)",
                               name, lin->q2->group_size);
            else
                return RQ_FAIL(err, RQ_ERR_UNSUPPORTED,
                               "%s: the adapter's pooling group size %d differs from the quantization group size %d: "
                               "the update is not constant inside the quantization groups, so no offset can absorb it "
                               "(train the adapters with --group-size %d, or fold approximately with --requantize)",
                               name, a->group_size, lin->q2->group_size, lin->q2->group_size);
        }
    for (int l = 0; l < c->n_layers; l++)
        for (int p = 0; p < RQ_N_PROJ; p++) {
            const rq_adapter *a = &s->items[(size_t)l * RQ_N_PROJ + p];
            const rq_linear *lin = rq_layer_proj(&m->layers[l], p);
            staged *x = &st[(size_t)l * RQ_N_PROJ + p];
            if (x->kind == PLAN_NONE) continue;
            const float *A = host + (a->A - s->params), *B = host + (a->B - s->params);
            char name[96];
            module_name(name, sizeof name, l, p);
            if (x->kind == PLAN_EXACT) {
                const rq_q2_tensor *t = lin->q2;
                x->offsets = rq_calloc((size_t)t->out * (size_t)t->n_groups, sizeof(uint16_t), err);
                if (!x->offsets) return RQ_ERR_NOMEM;
                double before = ms.rounding_sq, w_sq;
                RQ_TRY(rq_merge_qalora_offsets(t, a, A, B, name, x->offsets, &ms, err));
                RQ_TRY(check_rows(t, x->offsets, a, A, B, name, rep, err));
                RQ_TRY(merged_norm_sq(t, x->offsets, o->n_threads, &w_sq, err));
                if (w_sq > 0) pert_sq += (ms.rounding_sq - before) / w_sq;
                rep->exact++;
            } else if (x->kind == PLAN_DENSE) {
                size_t n = (size_t)lin->out * (size_t)lin->in;
                x->w = rq_alloc_aligned(n * sizeof(float), err);
                if (!x->w) return RQ_ERR_NOMEM;
                memcpy(x->w, lin->w, n * sizeof(float));
                RQ_TRY(rq_merge_dense_update(a, A, B, x->w, err));
                for (size_t i = 0; i < n; i++)
                    if (!isfinite(x->w[i]))
                        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: merged weight [%zu, %zu] is not finite", name,
                                       i / (size_t)lin->in, i % (size_t)lin->in);
                rep->dense++;
            } else {
                RQ_TRY(requantize_one(m, lin->q2, a, A, B, name, o, &x->q2, rep, &requant_err_sum, err));
                rep->requantized++;
            }
        }
    rep->max_offset_rounding = ms.max_rounding;
    rep->max_update_steps = ms.max_steps;
    rep->mean_update_steps = ms.groups ? ms.sum_steps / (double)ms.groups : 0.0;
    rep->rounding_perturbation = sqrt(pert_sq);
    rep->requant_mean_rel_err = rep->requantized ? requant_err_sum / rep->requantized : 0.0;
    return RQ_OK;
}

static void commit_all(rq_model *m, staged *st) {
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int p = 0; p < RQ_N_PROJ; p++) {
            rq_linear *lin = rq_layer_proj(&m->layers[l], p);
            staged *x = &st[(size_t)l * RQ_N_PROJ + p];
            if (x->kind == PLAN_EXACT) {
                memcpy(lin->q2->offsets, x->offsets, (size_t)lin->q2->out * lin->q2->n_groups * sizeof(uint16_t));
            } else if (x->kind == PLAN_DENSE) {
                /* lin->w points into the model's one fp32 allocation: copy in place */
                memcpy(lin->w, x->w, (size_t)lin->out * lin->in * sizeof(float));
            } else if (x->kind == PLAN_REQUANT) {
                rq_q2_free(lin->q2);
                lin->q2 = x->q2;
                x->q2 = NULL;
            }
        }
}

rq_status rq_merge_model(rq_model *m, rq_adapter_set *s, rq_backend *be, const rq_merge_opts *o_in,
                         rq_merge_report *rep_out, rq_err *err) {
    rq_merge_opts o;
    if (o_in) o = *o_in;
    else rq_merge_opts_default(&o);
    rq_merge_report rep_local, *rep = rep_out ? rep_out : &rep_local;
    memset(rep, 0, sizeof *rep);
    double t0 = rq_now_seconds();
    const rq_config *c = &m->cfg;
    if (s->model.dim != c->dim || s->model.n_layers != c->n_layers || s->model.hidden_dim != c->hidden_dim ||
        s->model.n_heads != c->n_heads || s->model.n_kv_heads != c->n_kv_heads || s->model.head_dim != c->head_dim)
        return RQ_FAIL(err, RQ_ERR_ARG,
                       "the adapters were built for another model shape (dim %d, hidden %d, %d layers; the model has "
                       "dim %d, hidden %d, %d layers)",
                       s->model.dim, s->model.hidden_dim, s->model.n_layers, c->dim, c->hidden_dim, c->n_layers);
    if (o.verify_seqs < 0 || o.verify_len < 0)
        return RQ_FAIL(err, RQ_ERR_ARG, "verification: %d sequences of %d tokens", o.verify_seqs, o.verify_len);
    const int n = o.verify_len > 0 ? o.verify_seqs : 0;
    const int T = o.verify_len < c->max_seq_len ? o.verify_len : c->max_seq_len;
    const int V = c->vocab_size;
    const size_t n_slots = (size_t)c->n_layers * RQ_N_PROJ, n_logits = (size_t)n * T * V;

    float *host = rq_calloc(s->n_params ? s->n_params : 1, sizeof(float), err);
    staged *st = host ? rq_calloc(n_slots, sizeof *st, err) : NULL;
    int *tokens = st ? rq_calloc((size_t)n * T + 1, sizeof(int), err) : NULL;
    float *ref = tokens && n ? rq_calloc(n_logits, sizeof(float), err) : NULL;
    float *got = ref ? rq_calloc(n_logits, sizeof(float), err) : NULL;
    rq_status r = tokens && (!n || got) ? RQ_OK : RQ_ERR_NOMEM;
    if (r == RQ_OK) r = be->download(be, host, s->params, sizeof(float) * s->n_params, err);
    if (r == RQ_OK) r = stage_all(m, s, host, &o, st, rep, err);
    if (r == RQ_OK && n > 0) {
        /* reference and base logits before anything changes */
        if (o.verify_random) rq_merge_verify_tokens(tokens, n, T, V, o.verify_seed);
        else r = rq_merge_sample_tokens(m, be, s, tokens, n, T, o.verify_seed, err);
        if (r == RQ_OK) r = rq_merge_logits(m, be, s, tokens, n, T, ref, err);
        if (r == RQ_OK) r = rq_merge_logits(m, be, NULL, tokens, n, T, got, err);
        if (r == RQ_OK)
            rq_merge_compare(ref, got, (size_t)n * T, V, &rep->adapter_abs_diff, &rep->adapter_rel_diff,
                             &rep->max_abs_logit);
    }
    if (r == RQ_OK) {
        commit_all(m, st);
        if (m->adapters == s) m->adapters = NULL;
        r = rq_model_rebind(m, be, err); /* a backend's copies of the old weights are stale */
    }
    if (r == RQ_OK && n > 0) {
        r = rq_merge_logits(m, be, NULL, tokens, n, T, got, err);
        if (r == RQ_OK) {
            rq_merge_compare(ref, got, (size_t)n * T, V, &rep->max_abs_diff, &rep->max_rel_diff, NULL);
            rep->verified = true;
            rep->verify_seqs = n;
            rep->verify_len = T;
            bool check = rep->requantized == 0 || o.check_requantized;
            rep->tolerance = !check ? 0.0 : o.tolerance > 0 ? o.tolerance : rq_merge_default_tolerance(rep->rounding_perturbation, rep->exact + rep->dense);
            rep->passed = !check || rep->max_rel_diff <= rep->tolerance;
            if (!rep->passed)
                r = RQ_FAIL(err, RQ_ERR_INTERNAL,
                            "merge verification failed: the merged model's logits differ from the adapter model's by "
                            "up to %.3g relative (%.3g absolute), above the bound %.3g (the adapters themselves move "
                            "them by %.3g relative)",
                            rep->max_rel_diff, rep->max_abs_diff, rep->tolerance, rep->adapter_rel_diff);
        }
    } else if (r == RQ_OK) {
        rep->passed = true;
    }
    rep->seconds = rq_now_seconds() - t0;
    free_staged(st, st ? n_slots : 0);
    free(host);
    free(tokens);
    free(ref);
    free(got);
    return r;
}

/* ---- the artifact --------------------------------------------------------------------------------- */

/* Whether dir/name exists (false when out of memory, with err filled). */
static bool file_in_dir(const char *dir, const char *name, rq_status *st, rq_err *err) {
    char *path = rq_path_join_alloc(dir, name, err);
    if (!path) *st = RQ_ERR_NOMEM;
    bool yes = path && rq_file_exists(path);
    free(path);
    return yes;
}

/* The PEFT directory (malloc'd): dir itself, or dir/adapter (a calibrate / finetune run directory). */
static rq_status resolve_adapter_dir(const char *dir, char **out, rq_err *err) {
    rq_status st = RQ_OK;
    *out = NULL;
    if (file_in_dir(dir, "adapter_config.json", &st, err)) {
        *out = rq_strdup(dir, err);
        return *out ? RQ_OK : RQ_ERR_NOMEM;
    }
    char *sub = st == RQ_OK ? rq_path_join_alloc(dir, "adapter", err) : NULL;
    if (!sub) return RQ_ERR_NOMEM;
    if (file_in_dir(sub, "adapter_config.json", &st, err)) {
        *out = sub;
        return RQ_OK;
    }
    free(sub);
    if (st != RQ_OK) return st;
    return RQ_FAIL(err, RQ_ERR_IO,
                   "%s: no adapter_config.json there or in %s/adapter (expected a PEFT adapter directory, as written "
                   "by rilq calibrate / finetune)",
                   dir, dir);
}

/* One line for quantization_config.merged_adapters; earlier merges are kept. */
static void record_merge(rq_model *m, const rq_adapter_set *s, const char *dir, const rq_merge_report *rep) {
    char line[1024];
    const rq_adapter_config *c = &s->cfg;
    if (c->type == RQ_ADAPTER_QALORA)
        snprintf(line, sizeof line, "qalora r=%d alpha=%g group_size=%d", c->r, (double)c->alpha, c->group_size);
    else snprintf(line, sizeof line, "lora r=%d alpha=%g", c->r, (double)c->alpha);
    size_t n = strlen(line);
    snprintf(line + n, sizeof line - n, " (%s%s) from %.400s", rep->requantized ? "re-quantized" : "exact, offsets",
             rep->dense ? ", fp32 weights updated" : "", dir);
    size_t used = strlen(m->quant.merged_adapters), cap = sizeof m->quant.merged_adapters;
    if (used && used + 2 < cap) {
        memcpy(m->quant.merged_adapters + used, "; ", 3);
        used += 2;
    }
    snprintf(m->quant.merged_adapters + used, cap - used, "%s", line);
}

rq_status rq_merge_artifact(const char *in_dir, const char *adapter_dir, const char *out_dir, const char *device,
                            int n_threads, const rq_merge_opts *o, rq_merge_report *rep, rq_err *err) {
    if (!rq_artifact_is_q2(in_dir))
        return RQ_FAIL(err, RQ_ERR_ARG,
                       "%s: not a rilq 2-bit artifact (no config.json with quantization_config.quant_method \"%s\"; "
                       "make one with rilq quantize)",
                       in_dir, RQ_ARTIFACT_QUANT_METHOD);
    char *adir;
    RQ_TRY(resolve_adapter_dir(adapter_dir, &adir, err));
    /* refuse an occupied output before any work (rq_artifact_write checks again) */
    rq_status r = RQ_OK;
    if (rq_file_exists(out_dir)) r = RQ_FAIL(err, RQ_ERR_ARG, "%s: exists and is a file, not a directory", out_dir);
    else if (file_in_dir(out_dir, "config.json", &r, err))
        r = RQ_FAIL(err, RQ_ERR_ARG, "%s: already holds a model (remove it or choose another --out)", out_dir);
    if (r != RQ_OK) {
        free(adir);
        return r;
    }
    rq_backend *be = NULL;
    rq_model *m = NULL;
    rq_adapter_set *s = NULL;
    r = rq_backend_create(device ? device : "cpu", n_threads, &be, err);
    if (r == RQ_OK) r = rq_artifact_load(in_dir, &m, err);
    if (r == RQ_OK) {
        r = rq_adapter_set_open_for(adir, m, be, &s, err);
        if (r != RQ_OK) rq_err_prefix(err, "adapters for %s: ", in_dir);
    }
    if (r == RQ_OK) r = rq_merge_model(m, s, be, o, rep, err);
    if (r == RQ_OK) {
        record_merge(m, s, adir, rep);
        rq_artifact_opts ao = {.compress = o && o->compress};
        r = rq_artifact_write(m, out_dir, &ao, err);
    }
    rq_adapter_set_free(s);
    rq_model_free(m);
    rq_backend_destroy(be);
    free(adir);
    return r;
}
