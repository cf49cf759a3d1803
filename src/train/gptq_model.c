/* GPTQ on a whole model, one layer at a time (see gptq_model.h). */
#include "gptq_model.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "../model/bind.h"
#include "../model/forward.h"

/* ---- a model, one layer at a time ---------------------------------------------------------------- */

/* The projections that share an input, in the order GPTQ quantizes them. */
static const int group_first[4] = {RQ_PROJ_Q, RQ_PROJ_O, RQ_PROJ_GATE, RQ_PROJ_DOWN};
static const int group_members[4][3] = {{RQ_PROJ_Q, RQ_PROJ_K, RQ_PROJ_V}, {RQ_PROJ_O, -1, -1},
                                        {RQ_PROJ_GATE, RQ_PROJ_UP, -1}, {RQ_PROJ_DOWN, -1, -1}};

typedef struct capture {
    rq_backend *be;
    int layer, proj;   /* the input wanted */
    double *H;         /* [in][in], upper triangle accumulated */
    float *xh;         /* host copy of the input [N][in] */
    double *xd;        /* the same in double */
    int64_t rows;      /* rows accumulated */
    rq_status st;
    rq_err *err;
} capture;

static void capture_input(void *user, int layer, int proj, const float *x, int N, int in) {
    capture *c = user;
    if (layer != c->layer || proj != c->proj || c->st != RQ_OK) return;
    c->st = c->be->download(c->be, c->xh, x, sizeof(float) * (size_t)N * in, c->err);
    if (c->st != RQ_OK) return;
    for (size_t i = 0; i < (size_t)N * in; i++) c->xd[i] = c->xh[i];
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, in, N, 1.0, c->xd, in, 1.0, c->H, in);
    c->rows += N;
}

static int proj_in_dim(const rq_config *c, int p) {
    return p == RQ_PROJ_O ? c->n_heads * c->head_dim : p == RQ_PROJ_DOWN ? c->hidden_dim : c->dim;
}

static double rel_error(const float *w, const rq_q2_tensor *t, float *scratch) {
    rq_q2_dequant(t, scratch, 0);
    double num = 0, den = 0;
    for (size_t i = 0; i < (size_t)t->out * t->in; i++) {
        double d = (double)w[i] - scratch[i];
        num += d * d;
        den += (double)w[i] * w[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* Run layer l over every window: x [n][T][dim] in, and (when write_back) the layer's output back into x. */
static rq_status run_layer_all(rq_forward_state *fs, rq_backend *be, float *x, int n, int T, int dim, int l, int B,
                               const rq_forward_hooks *hk, bool write_back, rq_err *err) {
    for (int w0 = 0; w0 < n; w0 += B) {
        const int b = n - w0 < B ? n - w0 : B;
        const size_t bytes = sizeof(float) * (size_t)b * T * dim;
        float *xs = x + (size_t)w0 * T * dim;
        RQ_TRY(be->upload(be, rq_forward_stream(fs), xs, bytes, err));
        RQ_TRY(rq_forward_layers(fs, l, l + 1, b, T, hk, err));
        if (write_back) RQ_TRY(be->download(be, xs, rq_forward_stream(fs), bytes, err));
    }
    return RQ_OK;
}

rq_status rq_gptq_model(rq_model *m, rq_backend *be, const int *tokens, int n_windows, int T,
                        const rq_gptq_model_opts *o, rq_model_quant_report *report, rq_err *err) {
    rq_model_quant_report rep;
    memset(&rep, 0, sizeof rep);
    const double t0 = rq_now_seconds();
    const rq_config *c = &m->cfg;
    const unsigned mask = o->proj_mask ? o->proj_mask : (1u << RQ_N_PROJ) - 1;
    const int B = o->batch > 0 ? o->batch : 1;
    if (n_windows <= 0 || T <= 0) return RQ_FAIL(err, RQ_ERR_ARG, "GPTQ: no calibration windows");
    for (int l = 0; l < c->n_layers; l++)
        for (int p = 0; p < RQ_N_PROJ; p++)
            if ((mask & (1u << p)) && !rq_layer_proj(&m->layers[l], p)->w)
                return RQ_FAIL(err, RQ_ERR_ARG, "model.layers.%d.%s is already 2-bit: GPTQ needs a full-precision model",
                               l, rq_proj_names[p]);
    int max_in = c->dim > c->hidden_dim ? c->dim : c->hidden_dim;
    if (c->n_heads * c->head_dim > max_in) max_in = c->n_heads * c->head_dim;
    size_t max_numel = 0;
    for (int p = 0; p < RQ_N_PROJ; p++) {
        const rq_linear *lin = rq_layer_proj(&m->layers[0], p);
        if ((size_t)lin->out * lin->in > max_numel) max_numel = (size_t)lin->out * lin->in;
    }
    const size_t xs_n = (size_t)n_windows * T * c->dim, chunk = (size_t)B * T * max_in;
    rq_forward_state *fs = NULL;
    float *x = malloc(sizeof(float) * xs_n), *xh = malloc(sizeof(float) * chunk), *W = malloc(sizeof(float) * max_numel);
    float *scratch = malloc(sizeof(float) * max_numel);
    double *xd = malloc(sizeof(double) * chunk), *H = malloc(sizeof(double) * (size_t)max_in * max_in),
           *Hc = malloc(sizeof(double) * (size_t)max_in * max_in);
    rq_status st = RQ_OK;
    if (!x || !xh || !W || !scratch || !xd || !H || !Hc)
        st = RQ_FAIL(err, RQ_ERR_NOMEM, "GPTQ: out of memory for %d windows of %d tokens (%.1f MiB of inputs)",
                     n_windows, T, sizeof(float) * (double)xs_n / 1048576.0);
    rq_forward_opts fo = {.max_batch = B, .max_seq = T};
    if (st == RQ_OK) st = rq_forward_create(m, be, &fo, &fs, err);
    /* the embeddings of every window: the inputs of layer 0 */
    for (int w0 = 0; st == RQ_OK && w0 < n_windows; w0 += B) {
        const int b = n_windows - w0 < B ? n_windows - w0 : B;
        st = rq_forward_embed(fs, tokens + (size_t)w0 * T, b, T, err);
        if (st == RQ_OK)
            st = be->download(be, x + (size_t)w0 * T * c->dim, rq_forward_stream(fs), sizeof(float) * (size_t)b * T * c->dim,
                              err);
    }
    double err_sum = 0;
    for (int l = 0; st == RQ_OK && l < c->n_layers; l++) {
        for (int g = 0; st == RQ_OK && g < 4; g++) {
            bool any = false;
            for (int k = 0; k < 3; k++) any |= group_members[g][k] >= 0 && (mask & (1u << group_members[g][k]));
            if (!any) continue;
            const int in = proj_in_dim(c, group_first[g]);
            memset(H, 0, sizeof(double) * (size_t)in * in);
            capture cap = {be, l, group_first[g], H, xh, xd, 0, RQ_OK, err};
            rq_forward_hooks hk = {&cap, capture_input};
            st = run_layer_all(fs, be, x, n_windows, T, c->dim, l, B, &hk, false, err);
            if (st == RQ_OK) st = cap.st;
            if (st != RQ_OK) break;
            /* H = 2 X^T X / N, both triangles */
            const double scale = 2.0 / (double)cap.rows;
            for (int i = 0; i < in; i++)
                for (int j = i; j < in; j++) H[(size_t)j * in + i] = H[(size_t)i * in + j] *= scale;
            for (int k = 0; k < 3 && st == RQ_OK; k++) {
                const int p = group_members[g][k];
                if (p < 0 || !(mask & (1u << p))) continue;
                rq_linear *lin = rq_layer_proj(&m->layers[l], p);
                char name[RQ_TENSOR_NAME_MAX];
                snprintf(name, sizeof name, "model.layers.%d.%s.%s", l, p <= RQ_PROJ_O ? "self_attn" : "mlp",
                         rq_proj_names[p]);
                memcpy(W, lin->w, sizeof(float) * (size_t)lin->out * lin->in);
                memcpy(Hc, H, sizeof(double) * (size_t)in * in);
                rq_q2_tensor *t = NULL;
                st = rq_gptq_quantize(W, lin->out, lin->in, Hc, &o->gptq, name, &t, NULL, err);
                if (st != RQ_OK) break;
                const double e = rel_error(lin->w, t, scratch);
                err_sum += e;
                if (e >= rep.max_rel_err) {
                    rep.max_rel_err = e;
                    snprintf(rep.worst, sizeof rep.worst, "%s", name);
                }
                rep.tensors++;
                rep.weights += (int64_t)lin->out * lin->in;
                rep.q2_bytes += rq_q2_nbytes(t);
                lin->q2 = t; /* the layer now computes with it: the next group sees its inputs through it */
                lin->w = NULL;
                st = rq_model_rebind(m, be, err); /* a device holds the layer's new weights */
            }
        }
        /* the quantized layer's outputs are the next layer's inputs */
        if (st == RQ_OK) st = run_layer_all(fs, be, x, n_windows, T, c->dim, l, B, NULL, true, err);
        if (st == RQ_OK) rq_log(l + 1 == c->n_layers ? RQ_LOG_DONE : RQ_LOG_PROGRESS, "gptq: layer %d/%d", l + 1, c->n_layers);
    }
    rq_forward_free(fs);
    free(x);
    free(xh);
    free(W);
    free(scratch);
    free(xd);
    free(H);
    free(Hc);
    if (st != RQ_OK) return st;
    if (rep.tensors > 0) {
        snprintf(m->quant.method, sizeof m->quant.method, "gptq");
        m->quant.clip_search = o->gptq.quant.clip_search;
        snprintf(m->quant.source_dtypes, sizeof m->quant.source_dtypes, "%s", m->dtypes);
    }
    rep.mean_rel_err = rep.tensors ? err_sum / rep.tensors : 0;
    rep.seconds = rq_now_seconds() - t0;
    if (report) *report = rep;
    return RQ_OK;
}
