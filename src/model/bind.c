/* The list of a model's weight arrays, handed to the backend's binding ops. */
#include <stdlib.h>

#include "../quant/q2.h"
#include "bind.h"

static void add_span(rq_weight_span *spans, size_t *n, const void *host, size_t bytes) {
    if (host && bytes) spans[(*n)++] = (rq_weight_span){host, bytes};
}

static void add_linear(rq_weight_span *spans, size_t *n, const rq_linear *W) {
    if (W->w) {
        add_span(spans, n, W->w, sizeof(float) * (size_t)W->out * (size_t)W->in);
    } else if (W->q2) {
        const rq_q2_tensor *q = W->q2;
        const size_t group_bytes = (size_t)q->out * (size_t)q->n_groups * sizeof(uint16_t);
        add_span(spans, n, q->codes, (size_t)q->out * q->row_bytes);
        add_span(spans, n, q->scales, group_bytes);
        add_span(spans, n, q->offsets, group_bytes);
    }
}

/* spans of m in a new array (*n of them); NULL when out of memory */
static rq_weight_span *model_spans(const rq_model *m, size_t *n, rq_err *err) {
    const rq_config *c = &m->cfg;
    const size_t per_layer = 2 + 3 * RQ_N_PROJ;
    rq_weight_span *spans = rq_calloc((size_t)c->n_layers * per_layer + 2, sizeof *spans, err);
    *n = 0;
    if (!spans) return NULL;
    const size_t norm_bytes = sizeof(float) * (size_t)c->dim;
    for (int l = 0; l < c->n_layers; l++) {
        rq_layer *L = &m->layers[l];
        add_span(spans, n, L->attn_norm, norm_bytes);
        add_span(spans, n, L->ffn_norm, norm_bytes);
        for (int p = 0; p < RQ_N_PROJ; p++) add_linear(spans, n, rq_layer_proj(L, p));
    }
    add_span(spans, n, m->final_norm, norm_bytes);
    add_linear(spans, n, &m->lm_head);
    return spans;
}

rq_status rq_model_bind(const rq_model *m, rq_backend *be, rq_err *err) {
    if (!be->bind_weights) return RQ_OK;
    size_t n;
    rq_weight_span *spans = model_spans(m, &n, err);
    if (!spans) return RQ_ERR_NOMEM;
    rq_status s = be->bind_weights(be, m, spans, n, err);
    free(spans);
    return s;
}

void rq_model_unbind(const rq_model *m, rq_backend *be) {
    if (be->unbind_weights) be->unbind_weights(be, m);
}

rq_status rq_model_rebind(const rq_model *m, rq_backend *be, rq_err *err) {
    if (!be->rebind_weights) return RQ_OK;
    size_t n;
    rq_weight_span *spans = model_spans(m, &n, err);
    if (!spans) return RQ_ERR_NOMEM;
    rq_status s = be->rebind_weights(be, m, spans, n, err);
    free(spans);
    return s;
}
