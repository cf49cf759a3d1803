/* Layer-at-a-time forward and block-wise reconstruction (src/train/layerwise.c):
 * the layer-at-a-time forward equals the whole forward; the weight-gradient hook
 * of the backward pass against finite differences; a refinement that does not
 * move starts and ends at the initial quantizer's model bit for bit (RTN and
 * GPTQ); on stories260K, block-wise reconstruction lowers the perplexity. */
#include "model/bind.h"
#include "model/forward.h"
#include "quant/q2.h"
#include "train/layerwise.h"
#include "test.h"

static rq_config small_cfg(void) {
    rq_config c = {.dim = 64, .hidden_dim = 128, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2, .head_dim = 16,
                   .vocab_size = 50, .max_seq_len = 64, .norm_eps = 1e-5f, .rope_theta = 10000.0f, .bos_id = 1};
    return c;
}

static void test_layers_equal_run(void) {
    rq_config c = small_cfg();
    rq_err err = {0};
    rq_model *m = NULL;
    rq_backend *be = NULL;
    CHECK_OK(rq_model_random(&c, 3, &m, &err), &err);
    CHECK_OK(rq_backend_create("cpu", 1, &be, &err), &err);
    const int B = 2, T = 12;
    int tokens[24];
    for (int i = 0; i < B * T; i++) tokens[i] = (i * 7 + 3) % c.vocab_size;
    rq_forward_state *a = NULL, *b = NULL;
    rq_forward_opts fo = {.max_batch = B, .max_seq = T};
    CHECK_OK(rq_forward_create(m, be, &fo, &a, &err), &err);
    CHECK_OK(rq_forward_create(m, be, &fo, &b, &err), &err);
    CHECK_OK(rq_forward_run(a, tokens, B, T, 0, &err), &err);
    CHECK_OK(rq_forward_embed(b, tokens, B, T, &err), &err);
    CHECK_OK(rq_forward_layers(b, 0, 1, B, T, NULL, &err), &err);
    CHECK_OK(rq_forward_layers(b, 1, 2, B, T, NULL, &err), &err);
    CHECK_OK(rq_forward_final_norm(b, B, T, &err), &err);
    CHECK(!memcmp(rq_forward_hidden(a), rq_forward_hidden(b), sizeof(float) * (size_t)B * T * c.dim));
    CHECK(rq_forward_layers(b, 1, 3, B, T, NULL, &err) == RQ_ERR_ARG);
    rq_forward_free(a);
    rq_forward_free(b);
    rq_backend_destroy(be);
    rq_model_free(m);
}

typedef struct grads {
    rq_backend *be;
    float *dW[RQ_N_PROJ];
    const float *d_out;
    size_t n;
} grads;

static void add_d(void *user, int layer, const float *res_out, float *d_res, int N) {
    (void)layer, (void)res_out, (void)N;
    grads *g = user;
    g->be->add_inplace(g->be, d_res, g->d_out, g->n);
}
static void grad_w(void *user, int layer, int proj, const float *x, const float *dy, int N) {
    (void)layer;
    grads *g = user;
    const int out = proj == RQ_PROJ_O || proj == RQ_PROJ_DOWN ? 64 : proj == RQ_PROJ_Q ? 64 : proj == RQ_PROJ_K || proj == RQ_PROJ_V ? 32 : 128;
    const int in = proj == RQ_PROJ_DOWN ? 128 : 64;
    g->be->matmul_tn_acc(g->be, g->dW[proj], dy, x, N, out, in);
}

/* L = sum (out - y)^2 / 2 of a one-layer model on input x. */
static double layer_loss(rq_model *m, rq_backend *be, const float *x, const float *y, int B, int T) {
    rq_err err = {0};
    rq_forward_state *s = NULL;
    rq_forward_opts fo = {.max_batch = B, .max_seq = T};
    double L = NAN;
    if (rq_forward_create(m, be, &fo, &s, &err) == RQ_OK) {
        const size_t n = (size_t)B * T * m->cfg.dim;
        memcpy(rq_forward_stream(s), x, sizeof(float) * n);
        if (rq_forward_layers(s, 0, 1, B, T, NULL, &err) == RQ_OK) {
            const float *o = rq_forward_stream_out(s);
            L = 0;
            for (size_t i = 0; i < n; i++) L += 0.5 * ((double)o[i] - y[i]) * ((double)o[i] - y[i]);
        }
    }
    rq_forward_free(s);
    return L;
}

/* The proj_grad hook: dW of every projection of a training run against finite differences. */
static void test_weight_gradient(void) {
    rq_config c = small_cfg();
    c.n_layers = 1;
    rq_err err = {0};
    rq_model *m = NULL;
    rq_backend *be = NULL;
    CHECK_OK(rq_model_random(&c, 9, &m, &err), &err);
    CHECK_OK(rq_backend_create("cpu", 1, &be, &err), &err);
    const int B = 1, T = 8;
    const size_t n = (size_t)B * T * c.dim;
    float *x = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n), *d = malloc(sizeof(float) * n);
    rq_rng r;
    rq_rng_seed(&r, 4);
    for (size_t i = 0; i < n; i++) x[i] = rq_rng_normal(&r), y[i] = rq_rng_normal(&r);
    grads g = {.be = be, .d_out = d, .n = n};
    for (int p = 0; p < RQ_N_PROJ; p++) {
        const rq_linear *lin = rq_layer_proj(&m->layers[0], p);
        g.dW[p] = calloc((size_t)lin->out * lin->in, sizeof(float));
    }
    rq_forward_state *s = NULL;
    rq_forward_opts fo = {.max_batch = B, .max_seq = T, .train = true};
    CHECK_OK(rq_forward_create(m, be, &fo, &s, &err), &err);
    memcpy(rq_forward_stream(s), x, sizeof(float) * n);
    CHECK_OK(rq_forward_layers(s, 0, 1, B, T, NULL, &err), &err);
    const float *o = rq_forward_stream_out(s);
    for (size_t i = 0; i < n; i++) d[i] = o[i] - y[i];
    rq_backward_hooks hk = {.user = &g, .layer_out = add_d, .proj_grad = grad_w};
    CHECK_OK(rq_forward_backward_hooked(s, NULL, &hk, &err), &err);
    rq_forward_free(s);
    for (int p = 0; p < RQ_N_PROJ; p++) {
        rq_linear *lin = rq_layer_proj(&m->layers[0], p);
        /* the largest gradient entries: finite differences resolve them well */
        size_t best[3] = {0, 1, 2};
        const size_t nw = (size_t)lin->out * lin->in;
        for (size_t k = 0; k < nw; k++)
            if (fabsf(g.dW[p][k]) > fabsf(g.dW[p][best[2]])) {
                best[2] = k;
                for (int j = 2; j > 0 && fabsf(g.dW[p][best[j]]) > fabsf(g.dW[p][best[j - 1]]); j--) {
                    size_t t = best[j];
                    best[j] = best[j - 1], best[j - 1] = t;
                }
            }
        for (int j = 0; j < 3; j++) {
            const size_t k = best[j];
            const float w = lin->w[k], h = 1e-2f * (fabsf(w) > 0.05f ? fabsf(w) : 0.05f);
            lin->w[k] = w + h;
            const double lp = layer_loss(m, be, x, y, B, T);
            lin->w[k] = w - h;
            const double lm = layer_loss(m, be, x, y, B, T);
            lin->w[k] = w;
            const double fd = (lp - lm) / (2.0 * h), an = g.dW[p][k];
            CHECKF(fabs(fd - an) <= 2e-2 * fabs(fd) + 1e-4, "%s[%zu]: hook %.6g, finite difference %.6g", rq_proj_names[p],
                   k, an, fd);
        }
        free(g.dW[p]);
    }
    free(x), free(y), free(d);
    rq_backend_destroy(be);
    rq_model_free(m);
}

static bool same_q2(const rq_model *a, const rq_model *b) {
    for (int l = 0; l < a->cfg.n_layers; l++)
        for (int p = 0; p < RQ_N_PROJ; p++) {
            const rq_q2_tensor *x = rq_layer_proj(&a->layers[l], p)->q2, *y = rq_layer_proj(&b->layers[l], p)->q2;
            if (!x || !y) return false;
            const size_t pg = (size_t)x->out * x->n_groups;
            if (memcmp(x->codes, y->codes, (size_t)x->out * x->row_bytes) || memcmp(x->scales, y->scales, 2 * pg) ||
                memcmp(x->offsets, y->offsets, 2 * pg))
                return false;
        }
    return true;
}

/* A refinement that cannot move (learning rates 0) keeps the initial model bit for bit. */
static void test_refine_starts_at_initial(void) {
    rq_config c = small_cfg();
    rq_err err = {0};
    rq_backend *be = NULL;
    CHECK_OK(rq_backend_create("cpu", 1, &be, &err), &err);
    const int n = 4, T = 16;
    int tokens[64];
    for (int i = 0; i < n * T; i++) tokens[i] = (i * 13 + 5) % c.vocab_size;
    for (int gptq = 0; gptq < 2; gptq++) {
        rq_model *a = NULL, *b = NULL;
        CHECK_OK(rq_model_random(&c, 21, &a, &err), &err);
        CHECK_OK(rq_model_random(&c, 21, &b, &err), &err);
        rq_layerwise_opts o;
        rq_layerwise_opts_default(&o);
        o.gptq_init = gptq;
        rq_model_quant_report ra, rb;
        CHECK_OK(rq_layerwise_quantize(a, be, tokens, n, T, &o, &ra, &err), &err);
        o.refine_epochs = 2;
        o.refine_weights = true;
        o.refine_lr = o.refine_weight_lr = 0;
        CHECK_OK(rq_layerwise_quantize(b, be, tokens, n, T, &o, &rb, &err), &err);
        CHECKF(same_q2(a, b), "%s: a refinement without steps changed the model", gptq ? "gptq" : "rtn");
        CHECK(ra.tensors == 14 && rb.tensors == 14);
        if (!gptq) { /* and RTN through the layer-wise driver is plain RTN */
            rq_model *q = NULL;
            CHECK_OK(rq_model_random(&c, 21, &q, &err), &err);
            rq_model_quant_opts qo;
            rq_model_quant_opts_default(&qo);
            CHECK_OK(rq_model_quantize(q, &qo, NULL, &err), &err);
            CHECK(same_q2(a, q));
            rq_model_free(q);
        }
        rq_model_free(a);
        rq_model_free(b);
    }
    rq_model *d = NULL;
    CHECK_OK(rq_model_random(&c, 21, &d, &err), &err);
    rq_layerwise_opts o;
    rq_layerwise_opts_default(&o);
    o.gptq.quant.method = RQ_QUANT_NF2;
    o.refine_epochs = 1;
    CHECK(rq_layerwise_quantize(d, be, tokens, n, T, &o, NULL, &err) == RQ_ERR_UNSUPPORTED);
    CHECKF(strstr(err.msg, "nf2"), "%s", err.msg);
    rq_model_free(d);
    rq_backend_destroy(be);
}

/* stories260K: RTN vs RTN + block-wise reconstruction, perplexity on held-out windows. */
static double window_ppl(rq_model *m, rq_backend *be, const int *tok, int n, int T) {
    rq_err err = {0};
    rq_forward_state *s = NULL;
    rq_forward_opts fo = {.max_batch = 1, .max_seq = T};
    double nll = 0;
    int64_t cnt = 0;
    if (rq_forward_create(m, be, &fo, &s, &err) != RQ_OK) return NAN;
    int *targets = malloc(sizeof(int) * T);
    for (int w = 0; w < n; w++) {
        const int *t = tok + (size_t)w * T;
        for (int i = 0; i < T; i++) targets[i] = i + 1 < T ? t[i + 1] : -1;
        double x;
        int64_t k;
        if (rq_forward_run(s, t, 1, T, 0, &err) || rq_forward_nll(s, targets, 1, T, &x, &k, &err)) break;
        nll += x, cnt += k;
    }
    free(targets);
    rq_forward_free(s);
    return exp(nll / (double)cnt);
}

static void test_stories_refine(void) {
    const char *path = rq_test_data("models/stories260K/stories260K.bin");
    rq_err err = {0};
    rq_backend *be = NULL;
    rq_model *fp = NULL, *rtn = NULL, *ref = NULL;
    CHECK_OK(rq_backend_create("cpu", 1, &be, &err), &err);
    CHECK_OK(rq_model_load(path, NULL, &fp, &err), &err);
    CHECK_OK(rq_model_load(path, NULL, &rtn, &err), &err);
    CHECK_OK(rq_model_load(path, NULL, &ref, &err), &err);
    if (!fp || !rtn || !ref) return;
    const int n = 16, T = 64, ne = 4;
    int *tok = malloc(sizeof(int) * (n + ne) * T);
    /* text windows: a short story-like text, each window starting elsewhere */
    const char *text = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. "
                       "One day, she saw a big red ball under a tree. She ran to get it and smiled. Her mom said, "
                       "\"Lily, come home for lunch!\" Lily was happy and went home with the ball.";
    int *ids = NULL, nid = 0;
    CHECK_OK(rq_tokenizer_encode(fp->tok, text, strlen(text), RQ_BOS_OFF, &ids, &nid, &err), &err);
    if (!ids || nid < 8) return;
    for (int w = 0; w < n + ne; w++)
        for (int i = 0; i < T; i++) tok[(size_t)w * T + i] = ids[(w * 7 + i) % nid];
    rq_layerwise_opts o;
    rq_layerwise_opts_default(&o);
    CHECK_OK(rq_layerwise_quantize(rtn, be, tok, n, T, &o, NULL, &err), &err);
    o.refine_epochs = 3;
    o.refine_weights = true;
    CHECK_OK(rq_layerwise_quantize(ref, be, tok, n, T, &o, NULL, &err), &err);
    const double pf = window_ppl(fp, be, tok + (size_t)n * T, ne, T), pr = window_ppl(rtn, be, tok + (size_t)n * T, ne, T),
                 pb = window_ppl(ref, be, tok + (size_t)n * T, ne, T);
    fprintf(stderr, "stories260K held-out windows: fp %.3f, RTN %.3f, RTN + block-wise %.3f\n", pf, pr, pb);
    CHECKF(pb < 0.8 * pr, "block-wise %.3f vs RTN %.3f", pb, pr);
    free(tok);
    free(ids);
    rq_model_free(fp);
    rq_model_free(rtn);
    rq_model_free(ref);
    rq_backend_destroy(be);
}

int main(void) {
    test_layers_equal_run();
    test_weight_gradient();
    test_refine_starts_at_initial();
    test_stories_refine();
    return rq_test_finish();
}
