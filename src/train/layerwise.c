/* Layer-wise quantization: GPTQ and block-wise reconstruction (see layerwise.h). */
#include "layerwise.h"

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

void rq_layerwise_opts_default(rq_layerwise_opts *o) {
    memset(o, 0, sizeof *o);
    rq_gptq_opts_default(&o->gptq);
    o->refine_lr = 2e-3;
    o->refine_weight_lr = 1e-3;
    o->batch = 1;
}

/* Adam (PyTorch's defaults: betas 0.9, 0.999, eps 1e-8, bias-corrected) on host arrays. */
static void adam_host(float *p, const float *g, float *m1, float *m2, size_t n, float lr, int64_t step) {
    const float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
    const float c1 = 1.0f - powf(b1, (float)step), c2 = 1.0f - powf(b2, (float)step);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        m1[i] = b1 * m1[i] + (1 - b1) * g[i];
        m2[i] = b2 * m2[i] + (1 - b2) * g[i] * g[i];
        p[i] -= lr * (m1[i] / c1) / (sqrtf(m2[i] / c2) + eps);
    }
}

static const char *proj_block(int p) { return p <= RQ_PROJ_O ? "self_attn" : "mlp"; }

/* ---- block-wise reconstruction of one layer ---------------------------------------------------- */

/* One projection's trainable state: weights, scales and offsets in fp32 with
 * their gradients and Adam moments; w^ (the fake-quantized weights the layer
 * computes with) and its gradient. */
typedef struct refine_proj {
    int p, out, in, gs, G;
    /* trained in units of each group's initial step s0, so one learning rate fits every
       model: s = s0 exp(a), m = m0 + s0 b, w = w0 + s0 c (a, b, c start at 0) */
    float *s0, *m0, *w0, *a, *b, *c;
    float *w, *s, *m;       /* the current values [out][in], [out][G], [out][G] */
    float *gw, *gs_, *gm;   /* gradients */
    float *mw, *vw, *ms, *vs, *mm, *vm; /* Adam moments */
    float *what;            /* w^ [out][in], host */
    float *gwhat;           /* dL/dw^ [out][in], on the backend */
    float *gwhat_h;         /* host copy */
} refine_proj;

static void refine_proj_free(refine_proj *r) {
    free(r->s0), free(r->m0), free(r->w0), free(r->a), free(r->b), free(r->c);
    free(r->w), free(r->s), free(r->m), free(r->gw), free(r->gs_), free(r->gm);
    free(r->mw), free(r->vw), free(r->ms), free(r->vs), free(r->mm), free(r->vm), free(r->what), free(r->gwhat_h);
}

/* w^ = s clamp(round((w - m) / s), 0, 3) + m */
static void fake_quant(refine_proj *r) {
#pragma omp parallel for schedule(static)
    for (int o = 0; o < r->out; o++)
        for (int i = 0; i < r->in; i++) {
            const size_t g = (size_t)o * r->G + i / r->gs;
            const float s = r->s[g], m = r->m[g], w = r->w[(size_t)o * r->in + i];
            float q = s > 0 ? nearbyintf((w - m) / s) : 0.0f;
            q = q < 0 ? 0 : q > 3 ? 3 : q;
            r->what[(size_t)o * r->in + i] = s * q + m;
        }
}

/* dL/dw^ -> dL/dw, dL/ds, dL/dm (straight-through rounding, see layerwise.h) */
static void fake_quant_grad(refine_proj *r, bool weights) {
    memset(r->gs_, 0, sizeof(float) * (size_t)r->out * r->G);
    memset(r->gm, 0, sizeof(float) * (size_t)r->out * r->G);
#pragma omp parallel for schedule(static)
    for (int o = 0; o < r->out; o++)
        for (int i = 0; i < r->in; i++) {
            const size_t g = (size_t)o * r->G + i / r->gs, k = (size_t)o * r->in + i;
            const float s = r->s[g], m = r->m[g], w = r->w[k], d = r->gwhat_h[k];
            const float u = s > 0 ? (w - m) / s : 0.0f, q = nearbyintf(u);
            if (q >= 0 && q <= 3) {
                r->gs_[g] += d * (q - u);
                if (weights) r->gw[k] = d;
            } else {
                r->gs_[g] += d * (q < 0 ? 0.0f : 3.0f);
                r->gm[g] += d;
                if (weights) r->gw[k] = 0;
            }
        }
    /* to the trained coordinates: da = ds s, db = dm s0, dc = dw s0 */
    for (size_t g = 0; g < (size_t)r->out * r->G; g++) r->gs_[g] *= r->s[g], r->gm[g] *= r->s0[g];
    if (weights)
        for (int o = 0; o < r->out; o++)
            for (int i = 0; i < r->in; i++) r->gw[(size_t)o * r->in + i] *= r->s0[(size_t)o * r->G + i / r->gs];
}

/* s, m, w from the trained coordinates */
static void refine_values(refine_proj *r) {
    for (size_t g = 0; g < (size_t)r->out * r->G; g++) {
        r->s[g] = r->s0[g] * expf(r->a[g]);
        r->m[g] = r->m0[g] + r->s0[g] * r->b[g];
    }
    for (int o = 0; o < r->out; o++)
        for (int i = 0; i < r->in; i++) {
            const size_t k = (size_t)o * r->in + i;
            r->w[k] = r->w0[k] + r->s0[(size_t)o * r->G + i / r->gs] * r->c[k];
        }
}

typedef struct refine_ctx {
    rq_backend *be;
    refine_proj *rp[RQ_N_PROJ]; /* NULL: not trained */
    const float *d_out;         /* dL/d(layer output) on the backend */
    size_t n_out;
} refine_ctx;

static void add_output_grad(void *user, int layer, const float *res_out, float *d_res, int N) {
    (void)layer, (void)res_out, (void)N;
    refine_ctx *c = user;
    c->be->add_inplace(c->be, d_res, c->d_out, c->n_out);
}

static void weight_grad(void *user, int layer, int proj, const float *x, const float *dy, int N) {
    (void)layer;
    refine_ctx *c = user;
    refine_proj *r = c->rp[proj];
    if (r) c->be->matmul_tn_acc(c->be, r->gwhat, dy, x, N, r->out, r->in);
}

/* Train layer l's quantization parameters: inputs xq [n][T][dim] (the quantized
 * stream), targets y [n][T][dim] (the full-precision layer's outputs). The
 * layer's projections in mask hold their initial q2 tensors; w0[p] their weights
 * to start from. On return the q2 tensors hold the trained parameters. */
static rq_status refine_layer(rq_model *m, rq_backend *be, int l, int label, const float *xq, const float *y, int n,
                              int T, float *const w0[RQ_N_PROJ], unsigned mask, const rq_layerwise_opts *o,
                              rq_err *err) {
    const rq_config *c = &m->cfg;
    const int B = o->batch > 0 ? o->batch : 1;
    rq_status st = RQ_OK;
    refine_proj rp[RQ_N_PROJ];
    memset(rp, 0, sizeof rp);
    refine_ctx ctx = {.be = be};
    rq_layer lv = m->layers[l];
    rq_model view = *m; /* a one-layer model whose projections compute with w^ */
    view.cfg.n_layers = 1;
    view.layers = &lv;
    view.adapters = NULL;
    rq_forward_state *fs = NULL;
    float *d_dev = NULL, *out_h = NULL, *d_h = NULL;
    const size_t chunk = (size_t)B * T * c->dim;
    for (int p = 0; p < RQ_N_PROJ && st == RQ_OK; p++) {
        if (!(mask & (1u << p))) continue;
        rq_linear *lin = rq_layer_proj(&m->layers[l], p);
        const rq_q2_tensor *t = lin->q2;
        refine_proj *r = &rp[p];
        r->p = p, r->out = t->out, r->in = t->in, r->gs = t->group_size, r->G = t->n_groups;
        const size_t nw = (size_t)r->out * r->in, ng = (size_t)r->out * r->G;
        r->w = malloc(sizeof(float) * nw), r->gw = calloc(nw, sizeof(float)), r->what = malloc(sizeof(float) * nw);
        r->gwhat_h = malloc(sizeof(float) * nw);
        r->s = malloc(sizeof(float) * ng), r->m = malloc(sizeof(float) * ng), r->gs_ = calloc(ng, sizeof(float));
        r->gm = calloc(ng, sizeof(float));
        r->s0 = malloc(sizeof(float) * ng), r->m0 = malloc(sizeof(float) * ng), r->w0 = malloc(sizeof(float) * nw);
        r->a = calloc(ng, sizeof(float)), r->b = calloc(ng, sizeof(float)), r->c = calloc(nw, sizeof(float));
        r->ms = calloc(ng, sizeof(float)), r->vs = calloc(ng, sizeof(float)), r->mm = calloc(ng, sizeof(float));
        r->vm = calloc(ng, sizeof(float));
        if (o->refine_weights) r->mw = calloc(nw, sizeof(float)), r->vw = calloc(nw, sizeof(float));
        r->gwhat = be->alloc(be, sizeof(float) * nw, err);
        if (!r->w || !r->gw || !r->what || !r->gwhat_h || !r->s || !r->m || !r->gs_ || !r->gm || !r->ms || !r->vs ||
            !r->mm || !r->vm || (o->refine_weights && (!r->mw || !r->vw)) || !r->gwhat || !r->s0 || !r->m0 || !r->w0 ||
            !r->a || !r->b || !r->c) {
            st = RQ_FAIL(err, RQ_ERR_NOMEM, "block-wise reconstruction: out of memory for layer %d", label);
            break;
        }
        memcpy(r->w0, w0[p], sizeof(float) * nw);
        /* (a flat group, s0 = 0, stays as it is: every coordinate moves in units of s0) */
        for (size_t g = 0; g < ng; g++) r->s0[g] = rq_f16_to_f32(t->scales[g]), r->m0[g] = rq_f16_to_f32(t->offsets[g]);
        refine_values(r);
        fake_quant(r);
        *rq_layer_proj(&lv, p) = (rq_linear){r->out, r->in, r->what, NULL};
        ctx.rp[p] = r;
    }
    rq_forward_opts fo = {.max_batch = B, .max_seq = T, .train = true};
    if (st == RQ_OK) st = rq_forward_create(&view, be, &fo, &fs, err);
    if (st == RQ_OK) {
        d_dev = be->alloc(be, sizeof(float) * chunk, err);
        out_h = malloc(sizeof(float) * chunk);
        d_h = malloc(sizeof(float) * chunk);
        if (!d_dev || !out_h || !d_h) st = RQ_FAIL(err, RQ_ERR_NOMEM, "block-wise reconstruction: out of memory");
    }
    rq_backward_hooks hk = {.user = &ctx, .layer_out = add_output_grad, .proj_grad = weight_grad};
    int64_t step = 0;
    double first = NAN, last = NAN;
    for (int ep = 0; ep < o->refine_epochs && st == RQ_OK; ep++) {
        double sum = 0;
        int64_t count = 0;
        for (int w0i = 0; w0i < n && st == RQ_OK; w0i += B) {
            const int b = n - w0i < B ? n - w0i : B;
            const size_t len = (size_t)b * T * c->dim, off = (size_t)w0i * T * c->dim;
            st = rq_model_rebind(&view, be, err); /* w^ changed since the last step */
            if (st == RQ_OK) st = be->upload(be, rq_forward_stream(fs), xq + off, sizeof(float) * len, err);
            if (st == RQ_OK) st = rq_forward_layers(fs, 0, 1, b, T, NULL, err);
            if (st == RQ_OK) st = be->download(be, out_h, rq_forward_stream_out(fs), sizeof(float) * len, err);
            if (st != RQ_OK) break;
            double sq = 0;
            const float scale = 2.0f / (float)len;
            for (size_t i = 0; i < len; i++) {
                const float d = out_h[i] - y[off + i];
                sq += (double)d * d;
                d_h[i] = scale * d;
            }
            sum += sq / (double)len;
            count++;
            st = be->upload(be, d_dev, d_h, sizeof(float) * len, err);
            ctx.d_out = d_dev, ctx.n_out = len;
            for (int p = 0; p < RQ_N_PROJ && st == RQ_OK; p++)
                if (ctx.rp[p]) be->fill_zero(be, ctx.rp[p]->gwhat, (size_t)ctx.rp[p]->out * ctx.rp[p]->in);
            if (st == RQ_OK) st = rq_forward_backward_hooked(fs, NULL, &hk, err);
            step++;
            for (int p = 0; p < RQ_N_PROJ && st == RQ_OK; p++) {
                refine_proj *r = ctx.rp[p];
                if (!r) continue;
                const size_t nw = (size_t)r->out * r->in, ng = (size_t)r->out * r->G;
                st = be->download(be, r->gwhat_h, r->gwhat, sizeof(float) * nw, err);
                if (st != RQ_OK) break;
                fake_quant_grad(r, o->refine_weights);
                adam_host(r->a, r->gs_, r->ms, r->vs, ng, (float)o->refine_lr, step);
                adam_host(r->b, r->gm, r->mm, r->vm, ng, (float)o->refine_lr, step);
                if (o->refine_weights) adam_host(r->c, r->gw, r->mw, r->vw, nw, (float)o->refine_weight_lr, step);
                refine_values(r);
                fake_quant(r);
            }
        }
        const double mse = count ? sum / count : NAN;
        if (ep == 0) first = mse;
        last = mse;
        rq_log(RQ_LOG_PROGRESS, "refine layer %d: epoch %d/%d, output MSE %.6g", label, ep + 1, o->refine_epochs, mse);
    }
    if (st == RQ_OK) rq_info("refine layer %d: output MSE %.6g (first epoch) -> %.6g (last)", label, first, last);
    /* freeze: s and m to fp16, the codes against them */
    for (int p = 0; p < RQ_N_PROJ && st == RQ_OK; p++) {
        refine_proj *r = ctx.rp[p];
        if (!r) continue;
        rq_q2_tensor *t = rq_layer_proj(&m->layers[l], p)->q2;
        for (int oo = 0; oo < r->out; oo++) {
            uint8_t *codes = t->codes + (size_t)oo * t->row_bytes;
            memset(codes, 0, (size_t)t->row_bytes);
            for (int g = 0; g < r->G; g++) {
                const size_t k = (size_t)oo * r->G + g;
                rq_quant_params qp = {rq_f32_to_f16(r->s[k]), rq_f32_to_f16(r->m[k])};
                t->scales[k] = qp.s, t->offsets[k] = qp.m;
                rq_quant_grid grid = rq_quant_grid_make(t->codebook, qp);
                const int c0 = g * r->gs, c1 = c0 + r->gs < r->in ? c0 + r->gs : r->in;
                for (int i = c0; i < c1; i++) {
                    const int code = grid.flat ? 0 : rq_quant_grid_code(&grid, r->w[(size_t)oo * r->in + i]);
                    codes[i >> 2] |= (uint8_t)(code << ((i & 3) * 2));
                }
            }
        }
    }
    rq_forward_free(fs);
    if (d_dev) be->free(be, d_dev);
    free(out_h);
    free(d_h);
    for (int p = 0; p < RQ_N_PROJ; p++) {
        if (rp[p].gwhat) be->free(be, rp[p].gwhat);
        refine_proj_free(&rp[p]);
    }
    return st;
}

/* ---- the model ---------------------------------------------------------------------------------- */

/* Where the layers come from: the model quantized in place (m: layer l is
 * m->layers[l] and the forward state runs layer l of m), or a checkpoint read a
 * layer at a time (a one-layer model whose layer 0 is the one loaded into
 * storage; the q2 tensors made go to q2[l * RQ_N_PROJ + p]). */
typedef struct layer_src {
    rq_model *m;
    const rq_config *cfg;
    const rq_tensor_table *tab;
    rq_model shell;
    rq_layer layer;
    float *storage, *embed;
    rq_q2_tensor **q2;
} layer_src;

static rq_model *src_model(layer_src *s) { return s->m ? s->m : &s->shell; }
static int src_index(const layer_src *s, int l) { return s->m ? l : 0; }
static rq_layer *src_layer(layer_src *s, int l) { return &src_model(s)->layers[src_index(s, l)]; }

/* checkpoint: layer l's fp32 weights into the shell (and onto a device holding its binding) */
static rq_status src_load(layer_src *s, rq_backend *be, int l, rq_err *err) {
    if (s->m) return RQ_OK;
    RQ_TRY(rq_model_build_layer(s->cfg, s->tab, l, s->storage, &s->layer, err));
    return rq_model_rebind(&s->shell, be, err);
}

/* checkpoint: the layer's q2 tensors move to the results before the next layer is loaded */
static void src_done(layer_src *s, int l) {
    if (s->m) return;
    for (int p = 0; p < RQ_N_PROJ; p++) {
        rq_linear *lin = rq_layer_proj(&s->layer, p);
        if (lin->q2) s->q2[(size_t)l * RQ_N_PROJ + p] = lin->q2;
        lin->q2 = NULL;
    }
}

static rq_status quantize_layers(layer_src *src, rq_backend *be, const int *tokens, int n_windows, int T,
                                 const rq_layerwise_opts *o, rq_model_quant_report *report, rq_err *err) {
    rq_model_quant_report rep;
    memset(&rep, 0, sizeof rep);
    const double t0 = rq_now_seconds();
    rq_model *m = src_model(src);
    const rq_config *c = src->m ? &src->m->cfg : src->cfg;
    const unsigned mask = o->proj_mask ? o->proj_mask : (1u << RQ_N_PROJ) - 1;
    const int B = o->batch > 0 ? o->batch : 1;
    const bool refine = o->refine_epochs > 0;
    if (n_windows <= 0 || T <= 0) return RQ_FAIL(err, RQ_ERR_ARG, "layer-wise quantization: no calibration windows");
    if (refine && rq_quant_method_codebook(o->gptq.quant.method) != RQ_Q2_INT2)
        return RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "block-wise reconstruction trains the int2 grid (scale and offset); "
                       "the nf2 codebook is not supported");
    for (int l = 0; src->m && l < c->n_layers; l++)
        for (int p = 0; p < RQ_N_PROJ; p++)
            if ((mask & (1u << p)) && !rq_layer_proj(&m->layers[l], p)->w)
                return RQ_FAIL(err, RQ_ERR_ARG, "model.layers.%d.%s.%s is already 2-bit: quantize a full-precision model",
                               l, proj_block(p), rq_proj_names[p]);
    int max_in = c->dim > c->hidden_dim ? c->dim : c->hidden_dim;
    if (c->n_heads * c->head_dim > max_in) max_in = c->n_heads * c->head_dim;
    size_t max_numel = 0;
    int shape_out[RQ_N_PROJ], shape_in[RQ_N_PROJ];
    for (int p = 0; p < RQ_N_PROJ; p++) {
        rq_proj_shape(c, p, &shape_out[p], &shape_in[p]);
        if ((size_t)shape_out[p] * shape_in[p] > max_numel) max_numel = (size_t)shape_out[p] * shape_in[p];
    }
    const size_t xs_n = (size_t)n_windows * T * c->dim, chunk = (size_t)B * T * max_in;
    rq_forward_state *fs = NULL;
    float *x = malloc(sizeof(float) * xs_n), *xfp = refine ? malloc(sizeof(float) * xs_n) : NULL;
    float *xh = malloc(sizeof(float) * chunk), *scratch = malloc(sizeof(float) * max_numel);
    double *xd = malloc(sizeof(double) * chunk), *H = malloc(sizeof(double) * (size_t)max_in * max_in),
           *Hc = malloc(sizeof(double) * (size_t)max_in * max_in);
    float *w0[RQ_N_PROJ] = {0}; /* each projection's full-precision weights (the layer's linears lose them) */
    for (int p = 0; p < RQ_N_PROJ; p++) w0[p] = malloc(sizeof(float) * (size_t)shape_out[p] * shape_in[p]);
    rq_status st = RQ_OK;
    bool oom = !x || (refine && !xfp) || !xh || !scratch || !xd || !H || !Hc;
    for (int p = 0; p < RQ_N_PROJ; p++) oom |= !w0[p];
    if (oom)
        st = RQ_FAIL(err, RQ_ERR_NOMEM, "layer-wise quantization: out of memory for %d windows of %d tokens (%.1f MiB of "
                     "inputs per stream)", n_windows, T, sizeof(float) * (double)xs_n / 1048576.0);
    rq_forward_opts fo = {.max_batch = B, .max_seq = T};
    if (st == RQ_OK) st = rq_forward_create(m, be, &fo, &fs, err);
    /* the embeddings of every window: the inputs of layer 0 */
    for (int w0i = 0; st == RQ_OK && w0i < n_windows; w0i += B) {
        const int b = n_windows - w0i < B ? n_windows - w0i : B;
        st = rq_forward_embed(fs, tokens + (size_t)w0i * T, b, T, err);
        if (st == RQ_OK)
            st = be->download(be, x + (size_t)w0i * T * c->dim, rq_forward_stream(fs),
                              sizeof(float) * (size_t)b * T * c->dim, err);
    }
    if (st == RQ_OK && refine) memcpy(xfp, x, sizeof(float) * xs_n);
    if (!src->m) { /* the embedding table is needed no more */
        free(src->embed);
        src->embed = src->shell.tok_embed = NULL;
    }
    double err_sum = 0;
    for (int l = 0; st == RQ_OK && l < c->n_layers; l++) {
        const int li = src_index(src, l); /* the layer's index in the model the forward state runs */
        rq_layer *layer = src_layer(src, l);
        st = src_load(src, be, l, err);
        if (st != RQ_OK) break;
        const float *orig[RQ_N_PROJ]; /* the full-precision weights stay in the model's allocation */
        for (int p = 0; p < RQ_N_PROJ; p++) {
            const rq_linear *lin = rq_layer_proj(layer, p);
            orig[p] = lin->w ? lin->w : NULL;
            if (lin->w) memcpy(w0[p], lin->w, sizeof(float) * (size_t)lin->out * lin->in);
        }
        /* the full-precision layer's outputs on the full-precision stream: the targets */
        if (refine) st = run_layer_all(fs, be, xfp, n_windows, T, c->dim, li, B, NULL, true, err);
        for (int g = 0; st == RQ_OK && g < 4; g++) {
            bool any = false;
            for (int k = 0; k < 3; k++) any |= group_members[g][k] >= 0 && (mask & (1u << group_members[g][k]));
            if (!any) continue;
            int out_unused, in;
            rq_proj_shape(c, group_first[g], &out_unused, &in);
            if (o->gptq_init) {
                memset(H, 0, sizeof(double) * (size_t)in * in);
                capture cap = {be, li, group_first[g], H, xh, xd, 0, RQ_OK, err};
                rq_forward_hooks hk = {&cap, capture_input};
                st = run_layer_all(fs, be, x, n_windows, T, c->dim, li, B, &hk, false, err);
                if (st == RQ_OK) st = cap.st;
                if (st != RQ_OK) break;
                /* H = 2 X^T X / N, both triangles */
                const double scale = 2.0 / (double)cap.rows;
                for (int i = 0; i < in; i++)
                    for (int j = i; j < in; j++) H[(size_t)j * in + i] = H[(size_t)i * in + j] *= scale;
            }
            for (int k = 0; k < 3 && st == RQ_OK; k++) {
                const int p = group_members[g][k];
                if (p < 0 || !(mask & (1u << p))) continue;
                rq_linear *lin = rq_layer_proj(layer, p);
                char name[RQ_TENSOR_NAME_MAX];
                snprintf(name, sizeof name, "model.layers.%d.%s.%s", l, proj_block(p), rq_proj_names[p]);
                rq_q2_tensor *t = NULL;
                if (o->gptq_init) {
                    memcpy(scratch, lin->w, sizeof(float) * (size_t)lin->out * lin->in);
                    memcpy(Hc, H, sizeof(double) * (size_t)in * in);
                    st = rq_gptq_quantize(scratch, lin->out, lin->in, Hc, &o->gptq, name, &t, NULL, err);
                    /* block-wise training starts from GPTQ's model: its error-compensated weights,
                       which round to GPTQ's codes */
                    if (st == RQ_OK && refine) memcpy(w0[p], scratch, sizeof(float) * (size_t)lin->out * lin->in);
                } else {
                    st = rq_quantize(lin->w, lin->out, lin->in, &o->gptq.quant, name, &t, err);
                }
                if (st != RQ_OK) break;
                lin->q2 = t; /* the layer now computes with it: the next group sees its inputs through it */
                lin->w = NULL;
                st = rq_model_rebind(m, be, err); /* a device holds the layer's new weights */
            }
        }
        if (st == RQ_OK && refine) {
            rq_forward_free(fs); /* the training state of one layer replaces it meanwhile */
            fs = NULL;
            st = refine_layer(m, be, li, l, x, xfp, n_windows, T, w0, mask, o, err);
            if (st == RQ_OK) st = rq_model_rebind(m, be, err);
            if (st == RQ_OK) st = rq_forward_create(m, be, &fo, &fs, err);
        }
        /* report against the original weights */
        for (int p = 0; p < RQ_N_PROJ && st == RQ_OK; p++) {
            if (!(mask & (1u << p))) continue;
            const rq_linear *lin = rq_layer_proj(layer, p);
            rq_q2_dequant(lin->q2, scratch, 0);
            double num = 0, den = 0;
            const float *wf = orig[p];
            for (size_t i = 0; wf && i < (size_t)lin->out * lin->in; i++) {
                const double d = (double)wf[i] - scratch[i];
                num += d * d;
                den += (double)wf[i] * wf[i];
            }
            const double e = den > 0 ? sqrt(num / den) : sqrt(num);
            char name[RQ_TENSOR_NAME_MAX];
            snprintf(name, sizeof name, "model.layers.%d.%s.%s", l, proj_block(p), rq_proj_names[p]);
            err_sum += e;
            if (e >= rep.max_rel_err) {
                rep.max_rel_err = e;
                snprintf(rep.worst, sizeof rep.worst, "%s", name);
            }
            rep.tensors++;
            rep.weights += (int64_t)lin->out * lin->in;
            rep.q2_bytes += rq_q2_nbytes(lin->q2);
        }
        /* the quantized layer's outputs are the next layer's inputs */
        if (st == RQ_OK) st = run_layer_all(fs, be, x, n_windows, T, c->dim, li, B, NULL, true, err);
        if (st == RQ_OK) src_done(src, l);
        if (st == RQ_OK)
            rq_log(l + 1 == c->n_layers ? RQ_LOG_DONE : RQ_LOG_PROGRESS, "%s: layer %d/%d",
                   o->gptq_init ? "gptq" : "layer-wise", l + 1, c->n_layers);
    }
    rq_forward_free(fs);
    free(x);
    free(xfp);
    free(xh);
    free(scratch);
    free(xd);
    free(H);
    free(Hc);
    for (int p = 0; p < RQ_N_PROJ; p++) free(w0[p]);
    if (st != RQ_OK) return st;
    rep.mean_rel_err = rep.tensors ? err_sum / rep.tensors : 0;
    rep.seconds = rq_now_seconds() - t0;
    if (report) *report = rep;
    return RQ_OK;
}

/* What the quantized model records of how it was made. */
static void note_method(rq_model *m, const rq_layerwise_opts *o, const char *source_dtypes) {
    const bool refine = o->refine_epochs > 0;
    snprintf(m->quant.method, sizeof m->quant.method, "%s%s",
             o->gptq_init ? "gptq" : rq_quant_method_name(o->gptq.quant.method),
             !refine ? "" : o->refine_weights ? "+blockap" : "+clip");
    m->quant.clip_search = o->gptq.quant.clip_search;
    snprintf(m->quant.source_dtypes, sizeof m->quant.source_dtypes, "%s", source_dtypes);
}

rq_status rq_layerwise_quantize(rq_model *m, rq_backend *be, const int *tokens, int n_windows, int T,
                                const rq_layerwise_opts *o, rq_model_quant_report *report, rq_err *err) {
    layer_src src = {.m = m};
    rq_model_quant_report rep;
    RQ_TRY(quantize_layers(&src, be, tokens, n_windows, T, o, &rep, err));
    if (rep.tensors > 0) note_method(m, o, m->dtypes);
    if (report) *report = rep;
    return RQ_OK;
}

rq_status rq_layerwise_quantize_checkpoint(const rq_config *cfg, const rq_tensor_table *tab, rq_backend *be,
                                           const int *tokens, int n_windows, int T, const rq_layerwise_opts *o,
                                           rq_model **out, rq_model_quant_report *report, rq_err *err) {
    *out = NULL;
    const unsigned mask = o->proj_mask ? o->proj_mask : (1u << RQ_N_PROJ) - 1;
    layer_src src = {.cfg = cfg, .tab = tab};
    src.shell.cfg = *cfg;
    src.shell.cfg.n_layers = 1;
    src.shell.layers = &src.layer;
    src.shell.lm_head = (rq_linear){.out = cfg->vocab_size, .in = cfg->dim}; /* never run */
    const size_t n_q2 = (size_t)cfg->n_layers * RQ_N_PROJ;
    src.q2 = rq_calloc(n_q2, sizeof *src.q2, err);
    src.storage = rq_alloc_aligned(sizeof(float) * rq_layer_floats(cfg), err);
    src.embed = rq_alloc_aligned(sizeof(float) * (size_t)cfg->vocab_size * cfg->dim, err);
    rq_status st = src.q2 && src.storage && src.embed ? RQ_OK : RQ_ERR_NOMEM;
    if (st == RQ_OK)
        st = rq_model_build_tensor(tab, "model.embed_tokens.weight", cfg->vocab_size, cfg->dim, src.embed, err);
    src.shell.tok_embed = src.embed;
    rq_model_quant_report rep;
    if (st == RQ_OK) st = quantize_layers(&src, be, tokens, n_windows, T, o, &rep, err);
    for (int p = 0; p < RQ_N_PROJ; p++) rq_q2_free(rq_layer_proj(&src.layer, p)->q2); /* a failed layer's */
    free(src.embed);
    free(src.storage);
    /* the projections not quantized (mask) are read in fp32 with the rest: embedding, norms, head */
    for (int l = 0; st == RQ_OK && l < cfg->n_layers; l++)
        for (int p = 0; p < RQ_N_PROJ; p++)
            if (!(mask & (1u << p))) src.q2[(size_t)l * RQ_N_PROJ + p] = NULL;
    if (st == RQ_OK) st = rq_model_build_q2(cfg, tab, src.q2, out, err);
    if (st == RQ_OK && rep.tensors > 0) {
        char dtypes[128];
        st = rq_model_table_dtypes(cfg, tab, dtypes, sizeof dtypes, err);
        if (st == RQ_OK) {
            note_method(*out, o, dtypes);
            snprintf((*out)->dtypes, sizeof (*out)->dtypes, "%s", dtypes); /* as the loaded model would say */
        }
        else {
            rq_model_free(*out);
            *out = NULL;
        }
    }
    if (st == RQ_OK && report) *report = rep;
    for (size_t k = 0; src.q2 && k < n_q2; k++) rq_q2_free(src.q2[k]); /* what the model did not take */
    free(src.q2);
    return st;
}
