/* RILQ training on the CUDA backend against the CPU backend, through the
 * library APIs the CPU path uses (forward, adapters, trainer, perplexity),
 * the backend chosen by name.
 *
 * The model: random weights, dim 96, ffn 172 (QA-LoRA and q2 groups of 64:
 * 64, 64, 44), 6 heads over 2 KV heads (GQA 3), head dim 16, vocabulary 250
 * (not a multiple of 32), untied head; the student is its RTN 2-bit
 * quantization (group 64), the teacher the fp32 model. Windows of T = 37.
 *
 *  1. One micro-batch (B = 2) of the RILQ loss 0.5 * MSE(final hidden, teacher)
 *     + 0.5 * CE with random A and B on all seven projections: the loss parts
 *     agree within 1e-2 relative, each adapter's dA and dB within 3e-2 of that
 *     tensor's largest |entry| (bf16 GEMM inputs, ~2e-3 relative rounding per
 *     input, through two layers forward and back), and the whole gradient
 *     vector within 1e-2 relative in norm.
 *  2. 20 RILQ updates (rq_train, Adam lr 1e-3, 1 x 37 tokens, 2 micro-batches
 *     per update) from the gaussian init on each backend: every update's loss
 *     within 2e-2 relative of the CPU's (the bf16 error of one step, ~1e-3,
 *     plus the drift of Adam-normalized updates over 20 steps), both losses
 *     falling; the trained adapters within 0.25 relative in norm (Adam moves
 *     near-zero gradients by +-lr whatever their size, so entries whose
 *     gradient is below the bf16 noise may move either way: a loose bound that
 *     still catches a wrong sign or scale, which shows up at ~1).
 *  3. Eval: the CPU-trained adapters merged into the q2 offsets of a fresh copy of the student
 *     (adapter.h's rule m[o][g] += s (BA)[o][g] / len(g), fp16), then the
 *     perplexity of 4 windows and the log-likelihoods of 3 continuations
 *     (context masked, as the multiple-choice scorer counts them) on both
 *     backends: within 5e-3 relative; the same with the adapters attached
 *     instead of merged.
 *
 * Skips (exit 77) when the cuda backend cannot be created, also under CI=true.
 * RILQ_GPU_TEST_DEVICE=cpu runs it against a second CPU backend (self-check). */
#include <math.h>

#include "eval/ppl.h"
#include "quant/q2.h"
#include "quant/quantize_model.h"
#include "adapter/merge.h"
#include "test.h"
#include "train/trainer.h"

#define T_WIN 37
#define N_WIN 24

static rq_backend *cpu, *gpu;
static rq_rng rng;

static rq_config config(void) {
    rq_config c = {0};
    c.dim = 96, c.hidden_dim = 172, c.n_layers = 2, c.n_heads = 6, c.n_kv_heads = 2, c.head_dim = 16;
    c.vocab_size = 250, c.max_seq_len = 128, c.norm_eps = 1e-5f, c.rope_theta = 10000.0f, c.tie_embeddings = false;
    c.bos_id = 1;
    return c;
}

typedef struct windows {
    int tokens[N_WIN][T_WIN];
    float *teacher; /* [N_WIN][T_WIN][dim] final hidden states of the fp32 model (CPU) */
    int dim;
} windows;

static rq_status get_window(void *user, int64_t ex, int *tokens, int *targets, float *teacher, int *len, rq_err *err) {
    (void)err;
    const windows *w = user;
    memcpy(tokens, w->tokens[ex], sizeof(int) * T_WIN);
    memcpy(targets, w->tokens[ex] + 1, sizeof(int) * (T_WIN - 1));
    targets[T_WIN - 1] = -1;
    if (teacher) memcpy(teacher, w->teacher + (size_t)ex * T_WIN * w->dim, sizeof(float) * (size_t)T_WIN * w->dim);
    *len = T_WIN;
    return RQ_OK;
}

static float *download(rq_backend *be, const float *src, size_t n) {
    float *h = malloc(sizeof(float) * (n ? n : 1));
    rq_err err = {0};
    if (be->download(be, h, src, sizeof(float) * n, &err) != RQ_OK) {
        fprintf(stderr, "download: %s\n", err.msg);
        exit(1);
    }
    return h;
}

static double rel_norm_diff(const float *a, const float *ref, size_t n) {
    double d = 0, r = 0;
    for (size_t i = 0; i < n; i++) d += ((double)a[i] - ref[i]) * ((double)a[i] - ref[i]), r += (double)ref[i] * ref[i];
    return r > 0 ? sqrt(d / r) : sqrt(d);
}

/* Random A and B (the same host values on every backend) on all projections. */
static void assign_random(rq_adapter_set *ad, uint64_t seed) {
    rq_rng r;
    rq_rng_seed(&r, seed);
    rq_err err = {0};
    for (int l = 0; l < ad->model.n_layers; l++)
        for (int p = 0; p < RQ_N_PROJ; p++) {
            rq_adapter *a = rq_adapter_set_get(ad, l, p);
            if (!a) continue;
            size_t na = (size_t)a->r * a->a_cols, nb = (size_t)a->out * a->r;
            float *A = malloc(sizeof(float) * na), *B = malloc(sizeof(float) * nb);
            for (size_t i = 0; i < na; i++) A[i] = 0.3f * rq_rng_normal(&r);
            for (size_t i = 0; i < nb; i++) B[i] = 0.05f * rq_rng_normal(&r);
            CHECK_OK(rq_adapter_set_assign(ad, l, p, A, B, &err), &err);
            free(A), free(B);
        }
}

static rq_adapter_config adapter_config(void) {
    return (rq_adapter_config){.type = RQ_ADAPTER_QALORA, .r = 8, .alpha = 16, .group_size = 64,
                               .targets = RQ_ADAPTER_ALL_PROJ, .init = RQ_INIT_GAUSSIAN, .seed = 1};
}

/* ---- 1. one micro-batch: loss and gradients ----------------------------------------------- */

typedef struct step_out {
    double ce, mse;
    float *grads; /* host copy, n_params */
    size_t n;
} step_out;

static void one_step(rq_backend *be, rq_model *student, const windows *w, step_out *out) {
    rq_err err = {0};
    const rq_config *c = &student->cfg;
    const int B = 2, N = B * T_WIN;
    rq_adapter_config ac = adapter_config();
    rq_adapter_set *ad = NULL;
    rq_forward_state *fs = NULL;
    CHECK_OK(rq_adapter_set_create(c, &ac, be, &ad, &err), &err);
    if (!ad) exit(1);
    assign_random(ad, 77);
    rq_forward_opts fo = {.max_batch = B, .max_seq = T_WIN, .train = true, .adapters = ad};
    CHECK_OK(rq_forward_create(student, be, &fo, &fs, &err), &err);
    if (!fs) exit(1);
    int tokens[2 * T_WIN], targets[2 * T_WIN];
    for (int b = 0; b < B; b++) {
        memcpy(tokens + b * T_WIN, w->tokens[b], sizeof(int) * T_WIN);
        memcpy(targets + b * T_WIN, w->tokens[b] + 1, sizeof(int) * (T_WIN - 1));
        targets[b * T_WIN + T_WIN - 1] = -1;
    }
    const size_t nh = (size_t)N * c->dim;
    float *d_hidden = be->alloc(be, sizeof(float) * nh, &err), *teacher = be->alloc(be, sizeof(float) * nh, &err);
    if (!d_hidden || !teacher) exit(1);
    CHECK_OK(be->upload(be, teacher, w->teacher, sizeof(float) * nh, &err), &err);
    be->fill_zero(be, d_hidden, nh);
    CHECK_OK(rq_forward_run(fs, tokens, B, T_WIN, 0, &err), &err);
    const int counted = N - B;
    double ce_sum = 0;
    int64_t cnt = 0;
    CHECK_OK(rq_forward_ce_grad(fs, targets, (float)(0.5 / counted), d_hidden, &ce_sum, &cnt, &err), &err);
    double sq = be->mse(be, d_hidden, rq_forward_hidden(fs), teacher, nh, (float)(0.5 / (double)nh));
    CHECK_OK(rq_forward_backward(fs, d_hidden, &err), &err);
    out->ce = ce_sum / (double)cnt;
    out->mse = sq / (double)nh;
    out->n = ad->n_params;
    out->grads = download(be, ad->grads, ad->n_params);
    be->free(be, d_hidden), be->free(be, teacher);
    rq_forward_free(fs);
    rq_adapter_set_free(ad);
}

static void test_one_step(rq_model *student, const windows *w) {
    step_out c = {0}, g = {0};
    one_step(cpu, student, w, &c);
    one_step(gpu, student, w, &g);
    CHECKF(fabs(g.ce - c.ce) <= 1e-2 * c.ce, "CE: cpu %.6f, gpu %.6f", c.ce, g.ce);
    CHECKF(fabs(g.mse - c.mse) <= 1e-2 * c.mse, "MSE: cpu %.6g, gpu %.6g", c.mse, g.mse);
    double rn = rel_norm_diff(g.grads, c.grads, c.n);
    CHECKF(rn <= 1e-2, "adapter gradients: ||gpu - cpu|| / ||cpu|| = %.3g", rn);
    /* per adapter tensor, in the set's layout: layers, projections, A then B */
    rq_config cfg = config();
    rq_adapter_config ac = adapter_config();
    rq_adapter_set *layout = NULL;
    rq_err err = {0};
    CHECK_OK(rq_adapter_set_create(&cfg, &ac, cpu, &layout, &err), &err);
    size_t off = 0;
    int bad = 0;
    for (int l = 0; layout && l < cfg.n_layers; l++)
        for (int p = 0; p < RQ_N_PROJ; p++) {
            const rq_adapter *a = rq_adapter_set_get(layout, l, p);
            size_t sizes[2] = {(size_t)a->r * a->a_cols, (size_t)a->out * a->r};
            for (int k = 0; k < 2; k++) {
                double max_ref = 0, max_err = 0;
                for (size_t i = off; i < off + sizes[k]; i++) {
                    max_ref = fmax(max_ref, fabs(c.grads[i]));
                    max_err = fmax(max_err, fabs((double)g.grads[i] - c.grads[i]));
                }
                if (!(max_err <= 3e-2 * max_ref) && bad++ < 5)
                    fprintf(stderr, "layer %d %s d%s: max |gpu - cpu| %.3g, max |cpu| %.3g\n", l, rq_proj_names[p],
                            k ? "B" : "A", max_err, max_ref);
                off += sizes[k];
            }
        }
    CHECKF(bad == 0, "%d adapter gradient tensors outside 3e-2 of their scale", bad);
    CHECK(off == c.n);
    printf("one step: CE cpu %.6f gpu %.6f, MSE cpu %.6g gpu %.6g, gradients rel. diff %.3g\n", c.ce, g.ce, c.mse,
           g.mse, rn);
    rq_adapter_set_free(layout);
    free(c.grads), free(g.grads);
}

/* ---- 2. 20 RILQ updates ----------------------------------------------------------------------- */

typedef struct losses {
    double v[32];
    int n;
} losses;

static void on_step(void *user, int64_t step, double loss, double gnorm, double lr) {
    (void)gnorm, (void)lr;
    losses *l = user;
    if (step >= 1 && step <= 32) l->v[step - 1] = loss, l->n = (int)step;
}

static float *train20(rq_backend *be, rq_model *student, windows *w, losses *ls, size_t *n_params) {
    rq_err err = {0};
    rq_adapter_config ac = adapter_config();
    rq_adapter_set *ad = NULL;
    CHECK_OK(rq_adapter_set_create(&student->cfg, &ac, be, &ad, &err), &err);
    if (!ad) exit(1);
    rq_train_data data = {get_window, w, N_WIN}, none = {get_window, w, 0};
    rq_train_opts o;
    rq_train_default_opts(&o);
    o.seq_len = T_WIN, o.micro_batch = 1, o.accum = 2, o.max_steps = 20, o.shuffle = false, o.seed = 42;
    o.ce_weight = 0.5, o.mse_weight = 0.5, o.quiet = true;
    o.schedule = (rq_schedule){.kind = RQ_SCHED_CONSTANT, .lr = 1e-3};
    rq_train_result r;
    CHECK_OK(rq_train(student, be, ad, &data, &none, &o, on_step, ls, &r, &err), &err);
    *n_params = ad->n_params;
    float *p = download(be, ad->params, ad->n_params);
    rq_adapter_set_free(ad);
    return p;
}

static float *test_twenty_updates(rq_model *student, windows *w, size_t *n) {
    losses lc = {0}, lg = {0};
    size_t nc = 0, ng = 0;
    float *pc = train20(cpu, student, w, &lc, &nc), *pg = train20(gpu, student, w, &lg, &ng);
    CHECK(lc.n == 20 && lg.n == 20 && nc == ng);
    double worst = 0;
    for (int i = 0; i < lc.n && i < lg.n; i++) worst = fmax(worst, fabs(lg.v[i] - lc.v[i]) / lc.v[i]);
    CHECKF(worst <= 2e-2, "20 updates: worst relative loss difference %.3g", worst);
    CHECKF(lc.v[19] < lc.v[0] && lg.v[19] < lg.v[0], "losses must fall: cpu %.5f -> %.5f, gpu %.5f -> %.5f", lc.v[0],
           lc.v[19], lg.v[0], lg.v[19]);
    double rn = rel_norm_diff(pg, pc, nc);
    CHECKF(rn <= 0.25, "trained adapters: ||gpu - cpu|| / ||cpu|| = %.3g", rn);
    printf("20 updates: loss cpu %.5f -> %.5f, gpu %.5f -> %.5f, worst rel. difference %.3g, adapters rel. diff %.3g\n",
           lc.v[0], lc.v[19], lg.v[0], lg.v[19], worst, rn);
    free(pg);
    *n = nc;
    return pc;
}

/* ---- 3. merge and eval ------------------------------------------------------------------------ */

/* the library's merge (src/adapter/merge.h) of QA-LoRA adapters whose groups are the q2 groups */
static void merge_into(rq_model *m, const rq_adapter_set *layout, const float *params) {
    rq_err err = {0};
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int p = 0; p < RQ_N_PROJ; p++) {
            const rq_adapter *a = rq_adapter_set_get((rq_adapter_set *)layout, l, p);
            rq_q2_tensor *t = rq_layer_proj(&m->layers[l], p)->q2;
            if (!a || !t) {
                CHECK(false);
                continue;
            }
            const float *A = params + (a->A - layout->params), *B = params + (a->B - layout->params);
            CHECK_OK(rq_merge_qalora_offsets(t, a, A, B, rq_proj_names[p], t->offsets, NULL, &err), &err);
        }
}

/* perplexity of 4 windows and the log-likelihoods of 3 continuations after a shared context */
static void eval_model(rq_backend *be, rq_model *m, const windows *w, double *ppl, double ll[3]) {
    rq_err err = {0};
    int win[4 * T_WIN];
    for (int k = 0; k < 4; k++) memcpy(win + k * T_WIN, w->tokens[N_WIN - 1 - k], sizeof(int) * T_WIN);
    rq_ppl_result r;
    CHECK_OK(rq_ppl_windows(m, be, win, 4, T_WIN, 2, true, &r, &err), &err);
    *ppl = r.ppl;
    rq_forward_opts fo = {.max_batch = 3, .max_seq = T_WIN};
    rq_forward_state *fs = NULL;
    CHECK_OK(rq_forward_create(m, be, &fo, &fs, &err), &err);
    if (!fs) return;
    int tokens[3 * T_WIN], targets[3 * T_WIN];
    for (int b = 0; b < 3; b++)
        for (int t = 0; t < T_WIN; t++) {
            /* a context of 20 shared tokens, then a continuation of its own; only the continuation counts */
            tokens[b * T_WIN + t] = t < 20 ? w->tokens[0][t] : w->tokens[b + 1][t];
            targets[b * T_WIN + t] = t + 1 >= 20 && t + 1 < T_WIN ? w->tokens[b + 1][t + 1] : -1;
        }
    double nll[3];
    int64_t n[3];
    CHECK_OK(rq_forward_run(fs, tokens, 3, T_WIN, 0, &err), &err);
    CHECK_OK(rq_forward_nll(fs, targets, 3, T_WIN, nll, n, &err), &err);
    for (int b = 0; b < 3; b++) ll[b] = -nll[b];
    rq_forward_free(fs);
}

/* returns the CPU's perplexity */
static double compare_eval(const char *what, rq_model *m_cpu, rq_model *m_gpu, const windows *w) {
    double pc, pg, lc[3], lg[3];
    eval_model(cpu, m_cpu, w, &pc, lc);
    eval_model(gpu, m_gpu, w, &pg, lg);
    CHECKF(fabs(pg - pc) <= 5e-3 * pc, "%s perplexity: cpu %.6f, gpu %.6f", what, pc, pg);
    for (int b = 0; b < 3; b++)
        CHECKF(fabs(lg[b] - lc[b]) <= 5e-3 * fabs(lc[b]), "%s log-likelihood %d: cpu %.6f, gpu %.6f", what, b, lc[b],
               lg[b]);
    printf("%s: perplexity cpu %.5f gpu %.5f; log-likelihoods cpu %.4f %.4f %.4f gpu %.4f %.4f %.4f\n", what, pc, pg,
           lc[0], lc[1], lc[2], lg[0], lg[1], lg[2]);
    return pc;
}

/* merged: a fresh copy of the student (new host tensors: a device mirror of the
   trained student's weights, keyed by host address, must not be reused) */
static void test_eval(rq_model *student, rq_model *fresh, const windows *w, const float *trained, size_t n) {
    rq_err err = {0};
    rq_adapter_config ac = adapter_config();
    ac.init = RQ_INIT_ZERO;
    rq_adapter_set *ad_c = NULL, *ad_g = NULL;
    CHECK_OK(rq_adapter_set_create(&student->cfg, &ac, cpu, &ad_c, &err), &err);
    CHECK_OK(rq_adapter_set_create(&student->cfg, &ac, gpu, &ad_g, &err), &err);
    if (!ad_c || !ad_g || ad_c->n_params != n) {
        CHECK(false);
        return;
    }
    CHECK_OK(cpu->upload(cpu, ad_c->params, trained, sizeof(float) * n, &err), &err);
    CHECK_OK(gpu->upload(gpu, ad_g->params, trained, sizeof(float) * n, &err), &err);
    /* adapters attached (each backend's own copy of the same values) */
    student->adapters = ad_c;
    double pc, pg, lc[3], lg[3];
    eval_model(cpu, student, w, &pc, lc);
    student->adapters = ad_g; /* the same values, on the other backend */
    eval_model(gpu, student, w, &pg, lg);
    student->adapters = NULL;
    CHECKF(fabs(pg - pc) <= 5e-3 * pc, "adapters attached, perplexity: cpu %.6f, gpu %.6f", pc, pg);
    for (int b = 0; b < 3; b++)
        CHECKF(fabs(lg[b] - lc[b]) <= 5e-3 * fabs(lc[b]), "adapters attached, log-likelihood %d: cpu %.6f, gpu %.6f",
               b, lc[b], lg[b]);
    printf("adapters attached: perplexity cpu %.5f gpu %.5f\n", pc, pg);
    /* merged into the q2 offsets: one merged model evaluated on both backends */
    merge_into(fresh, ad_c, trained);
    double merged = compare_eval("merged", fresh, fresh, w);
    /* the merge itself (on the CPU): only the fp16 rounding of the offsets separates the two */
    CHECKF(fabs(merged - pc) <= 1e-3 * pc, "merged perplexity %.6f vs adapters attached %.6f", merged, pc);
    rq_adapter_set_free(ad_c);
    rq_adapter_set_free(ad_g);
}

int main(void) {
    rq_err err = {0};
    const char *dev = getenv("RILQ_GPU_TEST_DEVICE") ? getenv("RILQ_GPU_TEST_DEVICE") : "cuda";
    if (rq_backend_create(dev, 0, &gpu, &err) != RQ_OK) {
        printf("SKIPPED: cuda backend unavailable: %s\n", err.msg);
        return 77;
    }
    CHECK_OK(rq_backend_cpu_create(0, &cpu, &err), &err);
    rq_rng_seed(&rng, 5);
    rq_config c = config();
    rq_model *teacher = NULL, *student = NULL, *fresh = NULL;
    CHECK_OK(rq_model_random(&c, 3, &teacher, &err), &err);
    CHECK_OK(rq_model_random(&c, 3, &student, &err), &err);
    CHECK_OK(rq_model_random(&c, 3, &fresh, &err), &err);
    if (!cpu || !teacher || !student || !fresh) return rq_test_finish();
    rq_model_quant_opts qo;
    rq_model_quant_opts_default(&qo);
    qo.quant.method = RQ_QUANT_RTN;
    qo.quant.group_size = 64;
    CHECK_OK(rq_model_quantize(student, &qo, NULL, &err), &err);
    CHECK_OK(rq_model_quantize(fresh, &qo, NULL, &err), &err); /* the same q2 tensors, for the merge */

    windows *w = calloc(1, sizeof *w);
    w->dim = c.dim;
    w->teacher = malloc(sizeof(float) * (size_t)N_WIN * T_WIN * c.dim);
    for (int k = 0; k < N_WIN; k++)
        for (int t = 0; t < T_WIN; t++) w->tokens[k][t] = (int)(rq_rng_u64(&rng) % c.vocab_size);
    /* teacher targets: the fp32 model's final hidden states, on the CPU (as the cache holds them) */
    rq_forward_opts fo = {.max_batch = 1, .max_seq = T_WIN};
    rq_forward_state *fs = NULL;
    CHECK_OK(rq_forward_create(teacher, cpu, &fo, &fs, &err), &err);
    for (int k = 0; fs && k < N_WIN; k++) {
        CHECK_OK(rq_forward_run(fs, w->tokens[k], 1, T_WIN, 0, &err), &err);
        memcpy(w->teacher + (size_t)k * T_WIN * c.dim, rq_forward_hidden(fs), sizeof(float) * (size_t)T_WIN * c.dim);
    }
    rq_forward_free(fs);

    test_one_step(student, w);
    size_t n = 0;
    float *trained = test_twenty_updates(student, w, &n);
    test_eval(student, fresh, w, trained, n);

    free(trained);
    free(w->teacher);
    free(w);
    rq_model_free(teacher);
    rq_model_free(student);
    rq_model_free(fresh);
    rq_backend_destroy(gpu);
    rq_backend_destroy(cpu);
    return rq_test_finish();
}
