/* GPTQ into the q2 format (see gptq.h). */
#include "gptq.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#include "../model/forward.h"

/* LAPACK (OpenBLAS ships it): Cholesky factor and inverse from it, column-major. */
extern void dpotrf_(const char *uplo, const int *n, double *a, const int *lda, int *info);
extern void dpotri_(const char *uplo, const int *n, double *a, const int *lda, int *info);

void rq_gptq_opts_default(rq_gptq_opts *o) {
    memset(o, 0, sizeof *o);
    rq_quant_opts_default(&o->quant);
    o->damp = 0.01;
    o->block = 128;
}

/* H (symmetric, [n][n]) -> U, the upper Cholesky factor of H^-1 (H^-1 = U^T U),
 * stored so that U(i, j), i <= j, is a[i + j n] (column-major). */
static rq_status hinv_cholesky(double *a, int n, const char *name, rq_err *err) {
    int info = 0;
    dpotrf_("L", &n, a, &n, &info);
    if (info == 0) dpotri_("L", &n, a, &n, &info);
    if (info != 0)
        return RQ_FAIL(err, RQ_ERR_ARG, "GPTQ %s: the dampened Hessian is not positive definite (LAPACK info %d); "
                       "raise the dampening or use more calibration windows", name, info);
    for (int j = 0; j < n; j++) /* the inverse's lower triangle into the upper one */
        for (int i = j + 1; i < n; i++) a[j + (size_t)i * n] = a[i + (size_t)j * n];
    dpotrf_("U", &n, a, &n, &info);
    if (info != 0)
        return RQ_FAIL(err, RQ_ERR_ARG, "GPTQ %s: H^-1 is not positive definite (LAPACK info %d); raise the "
                       "dampening", name, info);
    return RQ_OK;
}

rq_status rq_gptq_quantize(float *W, int out, int in, double *H, const rq_gptq_opts *o, const char *name,
                           rq_q2_tensor **t_out, double *proxy_loss, rq_err *err) {
    *t_out = NULL;
    const char *label = name && *name ? name : "(unnamed tensor)";
    const int gs = o->quant.group_size;
    if (out <= 0 || in <= 0 || gs <= 0) return RQ_FAIL(err, RQ_ERR_ARG, "GPTQ %s: shape [%d, %d], group %d", label, out, in, gs);
    for (size_t i = 0; i < (size_t)out * in; i++)
        if (!(fabsf(W[i]) <= 65504.0f))
            return RQ_FAIL(err, RQ_ERR_FORMAT, "GPTQ %s: weight %zu (row %zu) holds %g, which fp16 scales and offsets "
                           "cannot represent", label, i, i / (size_t)in, W[i]);
    const rq_q2_codebook_kind kind = rq_quant_method_codebook(o->quant.method);
    rq_q2_tensor *t = NULL;
    RQ_TRY(rq_q2_create(out, in, gs, kind, &t, err));
    const int zero_code = kind == RQ_Q2_NF2 ? 1 : 0; /* the code of level 0: what a flat group stores */
    /* dead inputs (never non-zero in the calibration data) carry no information: their weights go to 0 */
    double mean_diag = 0;
    for (int i = 0; i < in; i++) mean_diag += H[(size_t)i * in + i];
    mean_diag /= in;
    for (int i = 0; i < in; i++)
        if (H[(size_t)i * in + i] == 0) {
            H[(size_t)i * in + i] = 1;
            for (int r = 0; r < out; r++) W[(size_t)r * in + i] = 0;
        }
    const double damp = o->damp * (mean_diag > 0 ? mean_diag : 1.0);
    for (int i = 0; i < in; i++) H[(size_t)i * in + i] += damp;
    rq_status st = hinv_cholesky(H, in, label, err);
    const double *U = H; /* U(i, j) = U[i + j in] */
    const int block = ((o->block > 0 ? o->block : 128) + gs - 1) / gs * gs;
    const int bmax = block < in ? block : in;
    /* the transposed weights: column i of W is the contiguous row WT[i] */
    float *WT = st == RQ_OK ? malloc(sizeof(float) * (size_t)in * out) : NULL;
    float *E = WT ? malloc(sizeof(float) * (size_t)bmax * out) : NULL;
    float *Ub = E ? malloc(sizeof(float) * (size_t)bmax * in) : NULL;
    rq_quant_grid *grid = Ub ? malloc(sizeof(rq_quant_grid) * (size_t)out) : NULL;
    float *gw = grid ? malloc(sizeof(float) * (size_t)gs * out) : NULL;
    if (st == RQ_OK && !gw) st = RQ_FAIL(err, RQ_ERR_NOMEM, "GPTQ %s: out of memory", label);
    double loss = 0;
    if (st == RQ_OK) {
        for (int r = 0; r < out; r++)
            for (int i = 0; i < in; i++) WT[(size_t)i * out + r] = W[(size_t)r * in + i];
        for (int b1 = 0; b1 < in; b1 += block) {
            const int b2 = b1 + block < in ? b1 + block : in, nb = b2 - b1;
            for (int i = b1; i < b2; i++) {
                float *wi = WT + (size_t)i * out;
                if (i % gs == 0) { /* a group starts: its (s, m) from the weights as they are now */
                    const int g = i / gs, n = in - i < gs ? in - i : gs;
#pragma omp parallel for schedule(static)
                    for (int r = 0; r < out; r++) {
                        float *w = gw + (size_t)r * gs;
                        for (int k = 0; k < n; k++) w[k] = WT[(size_t)(i + k) * out + r];
                        rq_quant_params p = rq_quant_group_params(w, n, t->codebook, &o->quant);
                        t->scales[(size_t)r * t->n_groups + g] = p.s;
                        t->offsets[(size_t)r * t->n_groups + g] = p.m;
                        grid[r] = rq_quant_grid_make(t->codebook, p);
                    }
                }
                const double d = U[(size_t)i + (size_t)i * in];
                float *e = E + (size_t)(i - b1) * out;
                double col_loss = 0;
#pragma omp parallel for schedule(static) reduction(+ : col_loss)
                for (int r = 0; r < out; r++) {
                    const float w = wi[r];
                    const int code = grid[r].flat ? zero_code : rq_quant_grid_code(&grid[r], w);
                    const float q = grid[r].flat ? grid[r].lut[0] : grid[r].lut[code];
                    t->codes[(size_t)r * t->row_bytes + (i >> 2)] |= (uint8_t)(code << ((i & 3) * 2));
                    e[r] = (float)((w - q) / d);
                    col_loss += (double)(w - q) * (w - q) / (2 * d * d);
                    wi[r] = q;
                }
                loss += col_loss;
                /* the error spreads over the rest of the block at once */
#pragma omp parallel for schedule(static)
                for (int j = i + 1; j < b2; j++) {
                    const float u = (float)U[(size_t)i + (size_t)j * in];
                    float *wj = WT + (size_t)j * out;
                    for (int r = 0; r < out; r++) wj[r] -= u * e[r];
                }
            }
            if (b2 < in) { /* and over the later columns once per block: WT[b2:] -= Ub^T E */
                const int rest = in - b2;
                for (int k = 0; k < nb; k++)
                    for (int j = 0; j < rest; j++) Ub[(size_t)k * rest + j] = (float)U[(size_t)(b1 + k) + (size_t)(b2 + j) * in];
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, rest, out, nb, -1.0f, Ub, rest, E, out, 1.0f,
                            WT + (size_t)b2 * out, out);
            }
        }
        for (int r = 0; r < out; r++)
            for (int i = 0; i < in; i++) W[(size_t)r * in + i] = WT[(size_t)i * out + r];
    }
    free(gw);
    free(grid);
    free(Ub);
    free(E);
    free(WT);
    if (st != RQ_OK) {
        rq_q2_free(t);
        return st;
    }
    if (proxy_loss) *proxy_loss = loss;
    *t_out = t;
    return RQ_OK;
}

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
                if (be->weights_changed) be->weights_changed(be);
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
