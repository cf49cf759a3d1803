/* Model-level gradient check: the adapter gradients of the fp32 training
 * forward/backward (rq_forward_run + rq_forward_ce_grad + rq_forward_backward)
 * against central finite differences of a double-precision reference model
 * written here, for LoRA and QA-LoRA (ragged pooling groups), with and without
 * grouped-query attention. The loss is the RILQ one: 0.5 * mean cross-entropy
 * + 0.5 * MSE of the final hidden states against a fixed "teacher" target. */
#include <math.h>

#include "adapter/adapter.h"
#include "model/forward.h"
#include "test.h"

/* Extra losses for the hook check: MSE of every layer's output against
 * layer_target[l], and of the o_proj / down_proj / gate outputs and q (after
 * RoPE) against proj_target, each with weight HOOK_W / elements. */
#define HOOK_W 0.25
typedef struct ref_model {
    const rq_model *m;
    const rq_adapter_set *ad;
    int hooks;                       /* 0: none, 1: layer outputs, 2: projection outputs */
    bool logit_mse;                  /* Model-Loss on logits (teacher logits = teacher hidden through the head) */
    const double *layer_target;      /* [n_layers][B*T][dim] */
    const double *proj_target;       /* [n_layers][4][B*T][max(hidden, q_dim)] */
    double *A[8][RQ_N_PROJ], *Bm[8][RQ_N_PROJ]; /* double copies of the adapters, perturbed by FD */
} ref_model;

/* y[out] = W x + s B A x~ in double */
static void ref_proj(const ref_model *r, int l, int p, const double *x, double *y) {
    rq_linear *W = rq_layer_proj(&r->m->layers[l], p);
    for (int o = 0; o < W->out; o++) {
        double acc = 0;
        for (int i = 0; i < W->in; i++) acc += (double)W->w[(size_t)o * W->in + i] * x[i];
        y[o] = acc;
    }
    const rq_adapter *a = rq_adapter_set_get((rq_adapter_set *)r->ad, l, p);
    if (!a) return;
    double xt[4096], u[64];
    if (a->type == RQ_ADAPTER_QALORA) {
        for (int g = 0; g < a->a_cols; g++) {
            int lo = g * a->group_size, hi = lo + a->group_size < a->in ? lo + a->group_size : a->in;
            double sum = 0;
            for (int i = lo; i < hi; i++) sum += x[i];
            xt[g] = sum / (hi - lo);
        }
    } else {
        for (int i = 0; i < a->in; i++) xt[i] = x[i];
    }
    for (int k = 0; k < a->r; k++) {
        double acc = 0;
        for (int j = 0; j < a->a_cols; j++) acc += r->A[l][p][k * a->a_cols + j] * xt[j];
        u[k] = acc;
    }
    for (int o = 0; o < a->out; o++) {
        double acc = 0;
        for (int k = 0; k < a->r; k++) acc += r->Bm[l][p][o * a->r + k] * u[k];
        y[o] += a->scaling * acc;
    }
}

static void ref_rmsnorm(const double *x, const float *w, int C, double eps, double *y) {
    double ss = 0;
    for (int i = 0; i < C; i++) ss += x[i] * x[i];
    double r = 1.0 / sqrt(ss / C + eps);
    for (int i = 0; i < C; i++) y[i] = w[i] * x[i] * r;
}

static int hook_proj(int i) { return i == 0 ? RQ_PROJ_Q : i == 1 ? RQ_PROJ_O : i == 2 ? RQ_PROJ_GATE : RQ_PROJ_DOWN; }
static int proj_width(const rq_config *c, int p) {
    return p == RQ_PROJ_GATE || p == RQ_PROJ_UP ? c->hidden_dim : p == RQ_PROJ_Q ? c->n_heads * c->head_dim : c->dim;
}
#define PT_STRIDE 64 /* >= any projection width of the test models */

static double hook_mse(const double *y, const double *t, int n, double *acc_count) {
    double s = 0;
    for (int i = 0; i < n; i++) s += (y[i] - t[i]) * (y[i] - t[i]);
    (void)acc_count;
    return s;
}

/* The RILQ loss of B sequences of T tokens in double. */
static double ref_loss(const ref_model *r, const int *tok, const int *tgt, const double *teacher, int B, int T) {
    const rq_config *c = &r->m->cfg;
    const int D = c->dim, H = c->hidden_dim, nh = c->n_heads, nkv = c->n_kv_heads, hd = c->head_dim;
    const int qd = nh * hd, kvd = nkv * hd, V = c->vocab_size;
    double *x = calloc((size_t)T * D, sizeof(double)), *xn = calloc((size_t)T * D, sizeof(double));
    double *q = calloc((size_t)T * qd, sizeof(double)), *k = calloc((size_t)T * kvd, sizeof(double));
    double *v = calloc((size_t)T * kvd, sizeof(double)), *att = calloc((size_t)T * qd, sizeof(double));
    double *g = calloc((size_t)T * H, sizeof(double)), *up = calloc((size_t)T * H, sizeof(double));
    double tmp[4096], ce = 0, mse = 0, hook = 0;
    int counted = 0;
    const int BT = B * T;
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++)
            for (int i = 0; i < D; i++) x[t * D + i] = r->m->tok_embed[(size_t)tok[b * T + t] * D + i];
        for (int l = 0; l < c->n_layers; l++) {
            const rq_layer *L = &r->m->layers[l];
            for (int t = 0; t < T; t++) {
                ref_rmsnorm(x + t * D, L->attn_norm, D, c->norm_eps, xn + t * D);
                ref_proj(r, l, RQ_PROJ_Q, xn + t * D, q + t * qd);
                /* (the q hook is applied after RoPE, below) */
                ref_proj(r, l, RQ_PROJ_K, xn + t * D, k + t * kvd);
                ref_proj(r, l, RQ_PROJ_V, xn + t * D, v + t * kvd);
                for (int h = 0; h < nh + nkv; h++) { /* rotate-half RoPE on q heads then k heads */
                    double *vec = h < nh ? q + t * qd + h * hd : k + t * kvd + (h - nh) * hd;
                    for (int i = 0; i < hd / 2; i++) {
                        double f = 1.0 / pow(c->rope_theta, 2.0 * i / hd), ang = t * f;
                        double a0 = vec[i], a1 = vec[i + hd / 2];
                        vec[i] = a0 * cos(ang) - a1 * sin(ang);
                        vec[i + hd / 2] = a1 * cos(ang) + a0 * sin(ang);
                    }
                }
            }
            if (r->hooks == 2)
                for (int t = 0; t < T; t++)
                    hook += HOOK_W / ((double)BT * qd) *
                            hook_mse(q + t * qd, r->proj_target + (((size_t)l * 4 + 0) * BT + b * T + t) * PT_STRIDE, qd, NULL);
            for (int t = 0; t < T; t++)
                for (int h = 0; h < nh; h++) {
                    int kh = h / (nh / nkv);
                    double sc[512], mx = -1e300, sum = 0;
                    for (int j = 0; j <= t; j++) {
                        double d = 0;
                        for (int i = 0; i < hd; i++) d += q[t * qd + h * hd + i] * k[j * kvd + kh * hd + i];
                        sc[j] = d / sqrt((double)hd);
                        mx = sc[j] > mx ? sc[j] : mx;
                    }
                    for (int j = 0; j <= t; j++) sum += (sc[j] = exp(sc[j] - mx));
                    for (int i = 0; i < hd; i++) {
                        double o = 0;
                        for (int j = 0; j <= t; j++) o += sc[j] / sum * v[j * kvd + kh * hd + i];
                        att[t * qd + h * hd + i] = o;
                    }
                }
            for (int t = 0; t < T; t++) {
                ref_proj(r, l, RQ_PROJ_O, att + t * qd, tmp);
                if (r->hooks == 2)
                    hook += HOOK_W / ((double)BT * D) *
                            hook_mse(tmp, r->proj_target + (((size_t)l * 4 + 1) * BT + b * T + t) * PT_STRIDE, D, NULL);
                for (int i = 0; i < D; i++) x[t * D + i] += tmp[i];
                ref_rmsnorm(x + t * D, L->ffn_norm, D, c->norm_eps, xn + t * D);
                ref_proj(r, l, RQ_PROJ_GATE, xn + t * D, g + t * H);
                ref_proj(r, l, RQ_PROJ_UP, xn + t * D, up + t * H);
                if (r->hooks == 2) /* gate's output before the activation */
                    hook += HOOK_W / ((double)BT * H) *
                            hook_mse(g + t * H, r->proj_target + (((size_t)l * 4 + 2) * BT + b * T + t) * PT_STRIDE, H, NULL);
                for (int i = 0; i < H; i++) g[t * H + i] = g[t * H + i] / (1 + exp(-g[t * H + i])) * up[t * H + i];
                ref_proj(r, l, RQ_PROJ_DOWN, g + t * H, tmp);
                if (r->hooks == 2)
                    hook += HOOK_W / ((double)BT * D) *
                            hook_mse(tmp, r->proj_target + (((size_t)l * 4 + 3) * BT + b * T + t) * PT_STRIDE, D, NULL);
                for (int i = 0; i < D; i++) x[t * D + i] += tmp[i];
                if (r->hooks == 1)
                    hook += HOOK_W / ((double)BT * D) *
                            hook_mse(x + t * D, r->layer_target + ((size_t)l * BT + b * T + t) * D, D, NULL);
            }
        }
        for (int t = 0; t < T; t++) {
            ref_rmsnorm(x + t * D, r->m->final_norm, D, c->norm_eps, xn + t * D);
            const double *th = teacher + ((size_t)b * T + t) * D;
            double lg[1024], mx = -1e300, sum = 0;
            for (int vv = 0; vv < V; vv++) {
                double acc = 0, acc_t = 0;
                for (int i = 0; i < D; i++) {
                    acc += (double)r->m->lm_head.w[(size_t)vv * D + i] * xn[t * D + i];
                    acc_t += (double)(float)r->m->lm_head.w[(size_t)vv * D + i] * (double)(float)th[i];
                }
                lg[vv] = acc;
                mx = acc > mx ? acc : mx;
                if (r->logit_mse) mse += (acc - acc_t) * (acc - acc_t);
            }
            if (!r->logit_mse)
                for (int i = 0; i < D; i++) {
                    double d = xn[t * D + i] - th[i];
                    mse += d * d;
                }
            int y = tgt[b * T + t];
            if (y < 0) continue;
            for (int vv = 0; vv < V; vv++) sum += exp(lg[vv] - mx);
            ce += log(sum) + mx - lg[y];
            counted++;
        }
    }
    free(x), free(xn), free(q), free(k), free(v), free(att), free(g), free(up);
    return 0.5 * ce / counted + 0.5 * mse / ((double)B * T * (r->logit_mse ? V : D)) + hook;
}

/* The same extra losses on the C side, as backward hooks. */
typedef struct hook_ctx {
    const ref_model *r;
    int B, T;
} hook_ctx;

static void add_mse_grad(const float *y, float *dy, const double *t, int rows, int width, int stride, double n_el) {
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < width; j++)
            dy[(size_t)i * width + j] += (float)(HOOK_W * 2.0 * (y[(size_t)i * width + j] - t[(size_t)i * stride + j]) / n_el);
}

static void on_layer(void *user, int layer, const float *res, float *d_res, int N) {
    hook_ctx *h = user;
    const int D = h->r->m->cfg.dim;
    add_mse_grad(res, d_res, h->r->layer_target + (size_t)layer * N * D, N, D, D, (double)N * D);
}

static void on_proj(void *user, int layer, int proj, const float *y, float *dy, int N) {
    hook_ctx *h = user;
    for (int i = 0; i < 4; i++)
        if (hook_proj(i) == proj) {
            int w = proj_width(&h->r->m->cfg, proj);
            add_mse_grad(y, dy, h->r->proj_target + ((size_t)layer * 4 + i) * N * PT_STRIDE, N, w, PT_STRIDE,
                         (double)N * w);
        }
}

static void run_case(const char *name, int n_kv, rq_adapter_type type, int gs, int hooks, bool logit_mse) {
    rq_err err = {0};
    const int B = 2, T = 6;
    rq_config cfg = {.dim = 16, .hidden_dim = 24, .n_layers = 2, .n_heads = 4, .n_kv_heads = n_kv, .head_dim = 4,
                     .vocab_size = 23, .max_seq_len = 16, .norm_eps = 1e-5f, .rope_theta = 10000.0f,
                     .tie_embeddings = false, .bos_id = 1};
    rq_model *m = NULL;
    rq_backend *be = NULL;
    rq_adapter_set *ad = NULL;
    rq_forward_state *fs = NULL;
    CHECK_OK(rq_model_random(&cfg, 5, &m, &err), &err);
    CHECK_OK(rq_backend_cpu_create(1, &be, &err), &err);
    rq_adapter_config ac = {.type = type, .r = 2, .alpha = 4.0f, .group_size = gs, .targets = RQ_ADAPTER_ALL_PROJ,
                            .init = RQ_INIT_GAUSSIAN, .seed = 9};
    CHECK_OK(rq_adapter_set_create(&m->cfg, &ac, be, &ad, &err), &err);
    if (!m || !be || !ad) return;
    /* B = 0 after init would make every A gradient zero: give B random values too */
    rq_rng rng;
    rq_rng_seed(&rng, 77);
    for (size_t i = 0; i < ad->n_params; i++) ad->params[i] = 0.3f * rq_rng_normal(&rng);
    ref_model ref = {.m = m, .ad = ad, .hooks = hooks, .logit_mse = logit_mse};
    double *layer_target = calloc((size_t)cfg.n_layers * B * T * cfg.dim, sizeof(double));
    double *proj_target = calloc((size_t)cfg.n_layers * 4 * B * T * PT_STRIDE, sizeof(double));
    for (size_t i = 0; i < (size_t)cfg.n_layers * B * T * cfg.dim; i++) layer_target[i] = rq_rng_normal(&rng);
    for (size_t i = 0; i < (size_t)cfg.n_layers * 4 * B * T * PT_STRIDE; i++) proj_target[i] = rq_rng_normal(&rng);
    ref.layer_target = layer_target;
    ref.proj_target = proj_target;
    hook_ctx hc = {&ref, B, T};
    rq_backward_hooks hk = {.user = &hc, .layer_out = hooks == 1 ? on_layer : NULL, .proj_out = hooks == 2 ? on_proj : NULL};
    for (int l = 0; l < cfg.n_layers; l++)
        for (int p = 0; p < RQ_N_PROJ; p++) {
            rq_adapter *a = rq_adapter_set_get(ad, l, p);
            ref.A[l][p] = malloc(sizeof(double) * a->r * a->a_cols);
            ref.Bm[l][p] = malloc(sizeof(double) * a->out * a->r);
            for (int i = 0; i < a->r * a->a_cols; i++) ref.A[l][p][i] = a->A[i];
            for (int i = 0; i < a->out * a->r; i++) ref.Bm[l][p][i] = a->B[i];
        }
    int tok[12], tgt[12];
    double teacher[12 * 16];
    float d_hidden[12 * 16];
    for (int i = 0; i < B * T; i++) {
        tok[i] = (i * 7 + 3) % cfg.vocab_size;
        tgt[i] = (i % T == T - 1) ? -1 : (i * 5 + 1) % cfg.vocab_size; /* a masked position per sequence */
    }
    for (int i = 0; i < B * T * cfg.dim; i++) teacher[i] = rq_rng_normal(&rng);
    rq_forward_opts fo = {.max_batch = B, .max_seq = T, .train = true, .adapters = ad};
    CHECK_OK(rq_forward_create(m, be, &fo, &fs, &err), &err);
    CHECK_OK(rq_forward_run(fs, tok, B, T, 0, &err), &err);
    int counted = 0;
    for (int i = 0; i < B * T; i++) counted += tgt[i] >= 0;
    const float *h = rq_forward_hidden(fs);
    double mse = 0;
    if (logit_mse) {
        float teacher_f[12 * 16];
        for (int i = 0; i < B * T * cfg.dim; i++) teacher_f[i] = (float)teacher[i];
        memset(d_hidden, 0, sizeof d_hidden);
        CHECK_OK(rq_forward_logit_mse_grad(fs, teacher_f, 0, B * T, (float)(0.5 / ((double)B * T * cfg.vocab_size)),
                                           d_hidden, &mse, &err), &err);
        mse *= (double)cfg.dim / cfg.vocab_size; /* so loss32 below divides by B*T*V */
    } else {
        for (int i = 0; i < B * T * cfg.dim; i++) {
            double d = h[i] - teacher[i];
            mse += d * d;
            d_hidden[i] = (float)(0.5 * 2.0 * d / (B * T * cfg.dim));
        }
    }
    double ce_sum = 0;
    int64_t ce_n = 0;
    CHECK_OK(rq_forward_ce_grad(fs, tgt, 0.5f / counted, d_hidden, &ce_sum, &ce_n, &err), &err);
    be->fill_zero(be, ad->grads, ad->n_params);
    CHECK_OK(rq_forward_backward_hooked(fs, d_hidden, hooks ? &hk : NULL, &err), &err);
    double loss32 = 0.5 * ce_sum / ce_n + 0.5 * mse / (B * T * cfg.dim);
    double loss64 = ref_loss(&ref, tok, tgt, teacher, B, T);
    /* the fp32 model and the double reference agree to fp32 rounding (hook losses: reference only) */
    if (!hooks) CHECKF(fabs(loss32 - loss64) < 1e-5 * fabs(loss64) + 1e-6, "%s: loss fp32 %.9g vs double %.9g", name, loss32,
           loss64);
    /* every adapter parameter: central differences in double, eps 1e-6 (truncation error ~1e-12) */
    double max_rel = 0, max_grad = 0;
    int checked = 0, bad = 0;
    for (int l = 0; l < cfg.n_layers; l++)
        for (int p = 0; p < RQ_N_PROJ; p++) {
            rq_adapter *a = rq_adapter_set_get(ad, l, p);
            for (int which = 0; which < 2; which++) {
                double *vals = which ? ref.Bm[l][p] : ref.A[l][p];
                const float *grad = which ? a->dB : a->dA;
                int n = which ? a->out * a->r : a->r * a->a_cols;
                for (int i = 0; i < n; i++) {
                    double keep = vals[i], e = 1e-6;
                    vals[i] = keep + e;
                    double lp = ref_loss(&ref, tok, tgt, teacher, B, T);
                    vals[i] = keep - e;
                    double lm = ref_loss(&ref, tok, tgt, teacher, B, T);
                    vals[i] = keep;
                    double fd = (lp - lm) / (2 * e);
                    /* fp32 gradients carry ~1e-6 relative rounding per op over a few dozen ops:
                       allow 1e-3 relative, with an absolute floor at 1e-4 of the largest gradient */
                    double tol = 1e-3 * fabs(fd) + 1e-6;
                    double diff = fabs(fd - grad[i]);
                    if (fabs(fd) > max_grad) max_grad = fabs(fd);
                    if (fabs(fd) > 1e-4) max_rel = fmax(max_rel, diff / fabs(fd));
                    if (diff > tol && diff > 1e-4 * fmax(max_grad, 1e-3)) {
                        if (bad < 5)
                            fprintf(stderr, "%s: layer %d %s %s[%d]: analytic %.8g, finite difference %.8g\n", name,
                                    l, rq_proj_names[p], which ? "B" : "A", i, grad[i], fd);
                        bad++;
                    }
                    checked++;
                }
            }
        }
    CHECKF(bad == 0, "%s: %d of %d adapter gradients disagree with finite differences", name, bad, checked);
    printf("%s: %d adapter gradients checked, max relative error %.2e (largest gradient %.3g)\n", name, checked,
           max_rel, max_grad);
    for (int l = 0; l < cfg.n_layers; l++)
        for (int p = 0; p < RQ_N_PROJ; p++) free(ref.A[l][p]), free(ref.Bm[l][p]);
    free(layer_target);
    free(proj_target);
    rq_forward_free(fs);
    rq_adapter_set_free(ad);
    rq_backend_destroy(be);
    rq_model_free(m);
}

int main(void) {
    run_case("lora, GQA 4/2", 2, RQ_ADAPTER_LORA, 0, 0, false);
    run_case("lora, MHA", 4, RQ_ADAPTER_LORA, 0, 0, false);
    /* gs 16: dim 16 -> one group, hidden 24 -> groups of 16 and 8 (ragged) */
    run_case("qalora gs16, GQA 4/2", 2, RQ_ADAPTER_QALORA, 16, 0, false);
    /* gs 5: every width ragged (16 = 5+5+5+1, 24 = 5*4+4) */
    run_case("qalora gs5, MHA", 4, RQ_ADAPTER_QALORA, 5, 0, false);
    /* the scope-ablation hooks: losses on every layer's output, and on projection outputs */
    run_case("qalora gs5, GQA, layer-output losses", 2, RQ_ADAPTER_QALORA, 5, 1, false);
    run_case("lora, GQA, projection-output losses", 2, RQ_ADAPTER_LORA, 0, 2, false);
    /* Model-Loss on logits instead of hidden states */
    run_case("qalora gs5, GQA, logit model-loss", 2, RQ_ADAPTER_QALORA, 5, 0, true);
    return rq_test_finish();
}
