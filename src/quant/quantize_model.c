/* Model-level quantization: every chosen projection of every layer -> q2. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "quantize_model.h"

void rq_model_quant_opts_default(rq_model_quant_opts *o) {
    memset(o, 0, sizeof *o);
    rq_quant_opts_default(&o->quant);
}

rq_status rq_proj_mask_parse(const char *list, unsigned *mask, rq_err *err) {
    static const char *const short_names[RQ_N_PROJ] = {"q", "k", "v", "o", "gate", "up", "down"};
    *mask = 0;
    if (!list || !*list) return RQ_FAIL(err, RQ_ERR_ARG, "empty module list (expected a subset of q,k,v,o,gate,up,down)");
    const char *p = list;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        int found = -1;
        for (int k = 0; k < RQ_N_PROJ && found < 0; k++) {
            /* the short name or the PEFT name ("q" or "q_proj") */
            if ((strlen(short_names[k]) == len && !strncmp(p, short_names[k], len)) ||
                (strlen(rq_proj_names[k]) == len && !strncmp(p, rq_proj_names[k], len)))
                found = k;
        }
        if (found < 0)
            return RQ_FAIL(err, RQ_ERR_ARG, "unknown module '%.*s' in '%s' (expected a subset of q,k,v,o,gate,up,down)",
                           (int)len, p, list);
        *mask |= 1u << found;
        p += len;
        if (*p == ',') p++;
    }
    return RQ_OK;
}

/* ||W - deq||_F / ||W||_F in double. */
static double relative_error(const float *w, const rq_q2_tensor *t, float *scratch, int n_threads) {
    rq_q2_dequant(t, scratch, n_threads);
    size_t n = (size_t)t->out * (size_t)t->in;
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)w[i] - (double)scratch[i];
        num += d * d;
        den += (double)w[i] * (double)w[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

rq_status rq_model_quantize(rq_model *m, const rq_model_quant_opts *o, rq_model_quant_report *report, rq_err *err) {
    rq_model_quant_report rep;
    memset(&rep, 0, sizeof rep);
    double t0 = rq_now_seconds();
    unsigned mask = o->proj_mask ? o->proj_mask : (1u << RQ_N_PROJ) - 1;
    const rq_config *c = &m->cfg;
    size_t n_slots = (size_t)c->n_layers * RQ_N_PROJ, max_numel = 0;
    /* First pass: every chosen projection must be an fp32 matrix we can quantize. */
    for (int l = 0; l < c->n_layers; l++)
        for (int p = 0; p < RQ_N_PROJ; p++) {
            if (!(mask & (1u << p))) continue;
            const rq_linear *lin = rq_layer_proj(&m->layers[l], p);
            const char *block = p <= RQ_PROJ_O ? "self_attn" : "mlp";
            if (lin->q2)
                return RQ_FAIL(err, RQ_ERR_ARG, "model.layers.%d.%s.%s is already 2-bit: quantize a full-precision model", l,
                               block, rq_proj_names[p]);
            if (lin->out <= 0 || lin->in <= 0 || !lin->w)
                return RQ_FAIL(err, RQ_ERR_ARG,
                               "model.layers.%d.%s.%s has shape [%d, %d]: nothing to quantize (in_features and "
                               "out_features must be at least 1)",
                               l, block, rq_proj_names[p], lin->out, lin->in);
            size_t numel = (size_t)lin->out * (size_t)lin->in;
            if (numel > max_numel) max_numel = numel;
        }
    if (o->quant.group_size <= 0)
        return RQ_FAIL(err, RQ_ERR_ARG, "group size %d: must be at least 1 (the default is %d)", o->quant.group_size,
                       RQ_DEFAULT_GROUP_SIZE);
    rq_q2_tensor **made = rq_calloc(n_slots, sizeof *made, err);
    float *scratch = made && max_numel ? rq_alloc_aligned(max_numel * sizeof(float), err) : NULL;
    if (!made || (max_numel && !scratch)) {
        free(made);
        return RQ_ERR_NOMEM;
    }
    rq_import_opts imp;
    rq_import_opts_default(&imp);
    imp.kind = rq_quant_method_codebook(o->quant.method);
    imp.group_size = o->quant.group_size;
    imp.n_threads = o->quant.n_threads;
    rq_status s = RQ_OK;
    double err_sum = 0;
    for (int l = 0; l < c->n_layers && s == RQ_OK; l++)
        for (int p = 0; p < RQ_N_PROJ && s == RQ_OK; p++) {
            if (!(mask & (1u << p))) continue;
            const rq_linear *lin = rq_layer_proj(&m->layers[l], p);
            char name[RQ_TENSOR_NAME_MAX];
            snprintf(name, sizeof name, "model.layers.%d.%s.%s", l, p <= RQ_PROJ_O ? "self_attn" : "mlp", rq_proj_names[p]);
            rq_q2_tensor **slot = &made[(size_t)l * RQ_N_PROJ + p];
            if (o->fake_quant) s = rq_q2_import_fake_quant(lin->w, lin->out, lin->in, &imp, name, slot, NULL, err);
            else s = rq_quantize(lin->w, lin->out, lin->in, &o->quant, name, slot, err);
            if (s != RQ_OK) break;
            double e = relative_error(lin->w, *slot, scratch, o->quant.n_threads);
            err_sum += e;
            if (e >= rep.max_rel_err) {
                rep.max_rel_err = e;
                snprintf(rep.worst, sizeof rep.worst, "%s", name);
            }
            rep.tensors++;
            rep.weights += (int64_t)lin->out * lin->in;
            rep.q2_bytes += rq_q2_nbytes(*slot);
        }
    free(scratch);
    if (s != RQ_OK) {
        for (size_t k = 0; k < n_slots; k++) rq_q2_free(made[k]);
        free(made);
        return s;
    }
    /* Commit: the linears now read their q2 tensors. */
    for (int l = 0; l < c->n_layers; l++)
        for (int p = 0; p < RQ_N_PROJ; p++) {
            rq_q2_tensor *t = made[(size_t)l * RQ_N_PROJ + p];
            if (!t) continue;
            rq_linear *lin = rq_layer_proj(&m->layers[l], p);
            lin->q2 = t;
            lin->w = NULL;
        }
    free(made);
    if (rep.tensors > 0) {
        snprintf(m->quant.method, sizeof m->quant.method, "%s", o->fake_quant ? "fake-quant" : rq_quant_method_name(o->quant.method));
        m->quant.clip_search = !o->fake_quant && o->quant.clip_search;
        snprintf(m->quant.source_dtypes, sizeof m->quant.source_dtypes, "%s", m->dtypes);
    }
    rep.mean_rel_err = rep.tensors ? err_sum / rep.tensors : 0;
    rep.seconds = rq_now_seconds() - t0;
    if (report) *report = rep;
    return RQ_OK;
}
