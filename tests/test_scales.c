/* Trainable group scales (--train-scales): the scale gradient against finite
 * differences through a whole training forward; the scales follow the optimizer
 * into the fp16 weights; save and load with the adapters; the merge folds them
 * (the merged model computes what the adapter model computed); plain LoRA refused. */
#include "adapter/adapter.h"
#include "adapter/merge.h"
#include "model/forward.h"
#include "quant/quantize_model.h"
#include "test.h"

static rq_config cfg_small(void) {
    rq_config c = {.dim = 64, .hidden_dim = 128, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2, .head_dim = 16,
                   .vocab_size = 40, .max_seq_len = 16, .norm_eps = 1e-5f, .rope_theta = 10000.0f, .bos_id = 1};
    return c;
}

static rq_model *q2_model(rq_err *err) {
    rq_config c = cfg_small();
    rq_model *m = NULL;
    if (rq_model_random(&c, 12, &m, err)) return NULL;
    rq_model_quant_opts qo;
    rq_model_quant_opts_default(&qo);
    qo.quant.group_size = 32;
    if (rq_model_quantize(m, &qo, NULL, err)) {
        rq_model_free(m);
        return NULL;
    }
    return m;
}

/* CE loss of the model with the adapters over fixed tokens (sum over positions). */
static double ce_loss(rq_model *m, rq_backend *be, rq_adapter_set *ad, const int *tok, const int *tgt, int T) {
    rq_err err = {0};
    rq_forward_state *s = NULL;
    rq_forward_opts fo = {.max_batch = 1, .max_seq = T, .adapters = ad};
    double nll = NAN;
    int64_t n = 0;
    if (rq_forward_create(m, be, &fo, &s, &err) == RQ_OK && rq_forward_run(s, tok, 1, T, 0, &err) == RQ_OK)
        rq_forward_nll(s, tgt, 1, T, &nll, &n, &err);
    rq_forward_free(s);
    return nll;
}

static void test_gradient(void) {
    rq_err err = {0};
    rq_backend *be = NULL;
    rq_model *m = q2_model(&err);
    CHECK_OK(rq_backend_create("cpu", 1, &be, &err), &err);
    rq_adapter_config ac = {.type = RQ_ADAPTER_QALORA, .r = 4, .alpha = 8, .group_size = 32,
                            .targets = RQ_ADAPTER_ALL_PROJ, .init = RQ_INIT_GAUSSIAN, .seed = 3, .train_scales = true};
    rq_adapter_set *ad = NULL;
    CHECK_OK(rq_adapter_set_create(&m->cfg, &ac, be, &ad, &err), &err);
    CHECK_OK(rq_adapter_set_attach_scales(ad, m, &err), &err);
    if (!ad || !m) return;
    rq_rng r;
    rq_rng_seed(&r, 5);
    for (int l = 0; l < m->cfg.n_layers; l++) /* B != 0, so the adapters take part */
        for (int p = 0; p < RQ_N_PROJ; p++) {
            rq_adapter *a = rq_adapter_set_get(ad, l, p);
            for (int i = 0; i < a->out * a->r; i++) a->B[i] = 0.1f * rq_rng_normal(&r);
            /* the masters start at the model's fp16 scales */
            CHECK(a->S[7] == rq_f16_to_f32(a->q2->scales[7]));
        }
    const int T = 12;
    int tok[12], tgt[12];
    for (int i = 0; i < T; i++) tok[i] = (i * 11 + 2) % m->cfg.vocab_size, tgt[i] = i + 1 < T ? (i * 3 + 1) % m->cfg.vocab_size : -1;
    rq_forward_state *fs = NULL;
    rq_forward_opts fo = {.max_batch = 1, .max_seq = T, .train = true, .adapters = ad};
    CHECK_OK(rq_forward_create(m, be, &fo, &fs, &err), &err);
    CHECK_OK(rq_forward_run(fs, tok, 1, T, 0, &err), &err);
    float *dh = calloc((size_t)T * m->cfg.dim, sizeof(float));
    double ce = 0;
    int64_t cnt = 0;
    CHECK_OK(rq_forward_ce_grad(fs, tgt, 1.0f, dh, &ce, &cnt, &err), &err);
    be->fill_zero(be, ad->grads, ad->n_params);
    CHECK_OK(rq_forward_backward(fs, dh, &err), &err);
    rq_forward_free(fs);
    /* finite differences on the fp16 scales themselves (what the forward reads) */
    int checked = 0, bad = 0;
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int p = 0; p < RQ_N_PROJ; p++) {
            rq_adapter *a = rq_adapter_set_get(ad, l, p);
            for (int k = 0; k < 3; k++) {
                const size_t idx = (size_t)(k * 37 + p * 5 + l) % ((size_t)a->out * a->a_cols);
                const uint16_t orig = a->q2->scales[idx];
                const float s0 = rq_f16_to_f32(orig), h = 0.02f * s0;
                a->q2->scales[idx] = rq_f32_to_f16(s0 + h);
                const float sp = rq_f16_to_f32(a->q2->scales[idx]);
                const double lp = ce_loss(m, be, ad, tok, tgt, T);
                a->q2->scales[idx] = rq_f32_to_f16(s0 - h);
                const float sm = rq_f16_to_f32(a->q2->scales[idx]);
                const double lm = ce_loss(m, be, ad, tok, tgt, T);
                a->q2->scales[idx] = orig;
                const double fd = (lp - lm) / ((double)sp - sm), an = a->dS[idx];
                checked++;
                if (!(fabs(fd - an) <= 0.05 * fabs(fd) + 2e-3)) {
                    bad++;
                    fprintf(stderr, "layer %d %s scale %zu: backward %.6g, finite difference %.6g\n", l,
                            rq_proj_names[p], idx, an, fd);
                }
            }
        }
    CHECKF(bad == 0, "%d of %d scale gradients off", bad, checked);
    /* a step moves the masters; sync puts fp16 of them into the weights */
    rq_adapter *a = rq_adapter_set_get(ad, 1, RQ_PROJ_UP);
    a->S[3] *= 1.25f;
    CHECK_OK(rq_adapter_set_sync_scales(ad, &err), &err);
    CHECK(a->q2->scales[3] == rq_f32_to_f16(a->S[3]));
    free(dh);
    rq_adapter_set_free(ad);
    rq_model_free(m);
    rq_backend_destroy(be);
}

/* Saved with the adapters, read back; the merge folds them. */
static void test_save_and_merge(void) {
    rq_err err = {0};
    rq_backend *be = NULL;
    rq_model *m = q2_model(&err), *m2 = q2_model(&err);
    CHECK_OK(rq_backend_create("cpu", 1, &be, &err), &err);
    rq_adapter_config ac = {.type = RQ_ADAPTER_QALORA, .r = 4, .alpha = 8, .group_size = 32,
                            .targets = RQ_ADAPTER_ALL_PROJ, .init = RQ_INIT_GAUSSIAN, .seed = 4, .train_scales = true};
    rq_adapter_set *ad = NULL, *back = NULL;
    CHECK_OK(rq_adapter_set_create(&m->cfg, &ac, be, &ad, &err), &err);
    CHECK_OK(rq_adapter_set_attach_scales(ad, m, &err), &err);
    if (!ad || !m || !m2) return;
    rq_rng r;
    rq_rng_seed(&r, 8);
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int p = 0; p < RQ_N_PROJ; p++) {
            rq_adapter *a = rq_adapter_set_get(ad, l, p);
            for (int i = 0; i < a->out * a->r; i++) a->B[i] = 0.05f * rq_rng_normal(&r);
            for (int i = 0; i < a->out * a->a_cols; i++) a->S[i] *= 1.0f + 0.1f * rq_rng_normal(&r);
        }
    CHECK_OK(rq_adapter_set_sync_scales(ad, &err), &err);
    const char *dir = rq_test_out("scales-adapter");
    CHECK_OK(rq_adapter_set_save_peft(ad, dir, &err), &err);
    /* read back onto a fresh copy of the 2-bit model: its scales become the trained ones */
    CHECK_OK(rq_adapter_set_open_for(dir, m2, be, &back, &err), &err);
    if (!back) return;
    CHECK(back->cfg.train_scales && !memcmp(back->params, ad->params, sizeof(float) * ad->n_params));
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int p = 0; p < RQ_N_PROJ; p++) {
            const rq_q2_tensor *x = rq_layer_proj(&m->layers[l], p)->q2, *y = rq_layer_proj(&m2->layers[l], p)->q2;
            CHECK(!memcmp(x->scales, y->scales, sizeof(uint16_t) * (size_t)x->out * x->n_groups));
        }
    /* a set without scales does not silently drop a file's scales */
    rq_adapter_config plain = ac;
    plain.train_scales = false;
    rq_adapter_set *ns = NULL;
    CHECK_OK(rq_adapter_set_create(&m->cfg, &plain, be, &ns, &err), &err);
    CHECK(rq_adapter_set_load_peft(ns, dir, &err) != RQ_OK);
    CHECKF(strstr(err.msg, "differs"), "%s", err.msg);
    rq_adapter_set_free(ns);
    /* the merge: offsets absorb the adapters, the scales are the trained ones already */
    rq_merge_opts mo;
    rq_merge_opts_default(&mo);
    rq_merge_report rep;
    CHECK_OK(rq_merge_model(m2, back, be, &mo, &rep, &err), &err);
    CHECKF(rep.verified && rep.passed, "merge check: relative %g, bound %g", rep.max_rel_diff, rep.tolerance);
    CHECK(rep.exact == 14);
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int p = 0; p < RQ_N_PROJ; p++) {
            const rq_q2_tensor *x = rq_layer_proj(&m->layers[l], p)->q2, *y = rq_layer_proj(&m2->layers[l], p)->q2;
            CHECK(!memcmp(x->scales, y->scales, sizeof(uint16_t) * (size_t)x->out * x->n_groups));
        }
    /* plain LoRA cannot train group scales */
    rq_adapter_config lora = ac;
    lora.type = RQ_ADAPTER_LORA;
    rq_adapter_set *ls = NULL;
    CHECK(rq_adapter_set_create(&m->cfg, &lora, be, &ls, &err) == RQ_ERR_ARG);
    CHECKF(strstr(err.msg, "QA-LoRA"), "%s", err.msg);
    rq_adapter_set_free(back);
    rq_adapter_set_free(ad);
    rq_model_free(m);
    rq_model_free(m2);
    rq_backend_destroy(be);
}

int main(void) {
    test_gradient();
    test_save_and_merge();
    return rq_test_finish();
}
