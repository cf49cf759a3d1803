/* Merge: QA-LoRA adapters folded into the group offsets of q2 tensors.
 *
 * - The merged weights equal deq(W) + dW up to the fp16 rounding of each new
 *   offset (<= 2^-11 |m'|, plus fp32 rounding of the two dequantization sums).
 * - Logits of the merged model equal the adapter model's within the bound of
 *   merge.h (relative 2e-3) on stories260K and a random model with ragged
 *   groups (dim 96, hidden 172), both codebooks, group sizes 32 / 64 / 128,
 *   ranks 1 / 8 / 16, with random non-zero A and B whose effect on the logits
 *   is printed (and required to be far above the bound: not vacuous).
 * - The bound catches a wrong merge (one projection's update applied twice).
 * - Refusals: plain LoRA without requantize, pooling group != quantization
 *   group, an offset that overflows fp16 (and the model stays unchanged).
 * - --requantize reports its weight error and logit difference.
 * - End to end: rq_merge_artifact (the command's entry) and the rilq-merge
 *   tool write an artifact that reloads without adapters, records the merge,
 *   and reproduces the adapter model's logits.
 * RQ_MERGE_TEST_SEED=N draws other random adapters (the margins of merge.h were
 * measured over seeds 1-8 and 2024). */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "test.h"
#include "adapter_fixtures.h"

#include "adapter/merge.h"
#include "io/artifact.h"
#include "model/forward.h"
#include "quant/q2.h"
#include "quant/quantize_model.h"

static rq_backend *be;
static rq_rng rng;
/* over the exact-merge matrix: the relative logit difference, and its ratio to
 * the rounding perturbation and to 2^-11 sqrt(n) (the two estimates of merge.h) */
static double worst_rel, worst_k, worst_k_apriori;

static void remove_tree(const char *dir) {
    char cmd[4400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", dir);
}

/* dim 96 (gs 64: 64 + 32; gs 128: one group of 96), hidden 172 (gs 64: 64, 64, 44). */
static rq_config random_config(void) {
    rq_config c = {0};
    c.dim = 96, c.hidden_dim = 172, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 24;
    c.vocab_size = 96, c.max_seq_len = 64, c.norm_eps = 1e-5f, c.rope_theta = 10000.0f;
    return c;
}

/* The fp32 source model: the random one or stories260K. */
static rq_model *source_model(bool stories) {
    rq_err err = {0};
    rq_model *m = NULL;
    if (stories) CHECK_OK(rq_model_load(rq_test_data("models/stories260K/stories260K.bin"), NULL, &m, &err), &err);
    else {
        rq_config c = random_config();
        CHECK_OK(rq_model_random(&c, 42, &m, &err), &err);
    }
    return m;
}

/* Quantize a fresh source model and write it as an artifact at dir. */
static void make_artifact(bool stories, rq_quant_method method, int gs, const char *dir) {
    rq_err err = {0};
    rq_model *m = source_model(stories);
    if (!m) return;
    rq_model_quant_opts o;
    rq_model_quant_opts_default(&o);
    o.quant.method = method;
    o.quant.group_size = gs;
    o.quant.n_threads = 1;
    remove_tree(dir);
    CHECK_OK(rq_model_quantize(m, &o, NULL, &err), &err);
    CHECK_OK(rq_artifact_write(m, dir, NULL, &err), &err);
    rq_model_free(m);
}

static rq_model *load(const char *dir) {
    rq_err err = {0};
    rq_model *m = NULL;
    CHECK_OK(rq_artifact_load(dir, &m, &err), &err);
    return m;
}

static rq_adapter_set *random_adapters(const rq_model *m, rq_adapter_type type, int r, int gs, float b) {
    return rq_test_random_adapters(m, be, &rng, type, r, gs, b);
}

static float b_range(int r, int gs) { return rq_test_b_range(0.01f, r, gs); }

/* Every weight of the merged tensor against deq(W) + dW, dW in double from A
 * and B: off by at most the fp16 rounding of its group's new offset plus one
 * fp32 rounding of each dequantization sum (the bound of merge.h). */
static void check_weights(const rq_q2_tensor *orig, const rq_q2_tensor *merged, const rq_adapter_set *s,
                          const rq_adapter *a, const char *what) {
    rq_err err = {0};
    size_t n = (size_t)orig->out * orig->in;
    float *host = malloc(sizeof(float) * s->n_params), *w0 = malloc(sizeof(float) * n), *w1 = malloc(sizeof(float) * n);
    be->download(be, host, s->params, sizeof(float) * s->n_params, &err);
    const float *A = host + (a->A - s->params), *B = host + (a->B - s->params);
    rq_q2_dequant(orig, w0, 1);
    rq_q2_dequant(merged, w1, 1);
    double worst = 0.0, max_dw = 0.0;
    for (int o = 0; o < orig->out; o++)
        for (int g = 0; g < orig->n_groups; g++) {
            int i0 = g * orig->group_size, i1 = i0 + orig->group_size < orig->in ? i0 + orig->group_size : orig->in;
            double ba = 0.0;
            for (int k = 0; k < a->r; k++) ba += (double)B[(size_t)o * a->r + k] * A[(size_t)k * a->a_cols + g];
            double dw = (double)a->scaling * ba / (i1 - i0), m1 = fabs((double)rq_q2_offset(merged, o, g));
            if (fabs(dw) > max_dw) max_dw = fabs(dw);
            for (int i = i0; i < i1; i++) {
                size_t k = (size_t)o * orig->in + i;
                double bound = 0x1p-11 * fmax(m1, 0x1p-14) + 0x1p-23 * (fabs((double)w0[k]) + fabs((double)w1[k]));
                double e = fabs((double)w1[k] - ((double)w0[k] + dw));
                if (e / bound > worst) worst = e / bound;
            }
        }
    CHECKF(worst <= 1.0, "%s: merged weight off deq(W) + dW by %.3g of the rounding bound", what, worst);
    CHECKF(max_dw > 0, "%s: the update is zero (test vacuous)", what);
    free(host), free(w0), free(w1);
}

/* One exact merge on a loaded artifact: weights, logits within the bound. */
static void merge_case(const char *dir, const char *label, int r, int gs, bool stories) {
    rq_err err = {0};
    rq_model *m = load(dir);
    if (!m) return;
    rq_adapter_set *s = random_adapters(m, RQ_ADAPTER_QALORA, r, gs, b_range(r, gs));
    rq_q2_tensor *down0 = NULL, *q0 = NULL;
    rq_q2_clone(m->layers[m->cfg.n_layers - 1].w_down.q2, &down0, &err);
    rq_q2_clone(m->layers[0].wq.q2, &q0, &err);
    rq_merge_opts o;
    rq_merge_opts_default(&o);
    o.n_threads = 1;
    rq_merge_report rep;
    char what[160];
    snprintf(what, sizeof what, "%s r=%d", label, r);
    CHECK_OK(rq_merge_model(m, s, be, &o, &rep, &err), &err);
    CHECK(rep.exact == m->cfg.n_layers * RQ_N_PROJ && rep.requantized == 0 && rep.dense == 0);
    CHECK(rep.verified && rep.passed && rep.verify_seqs == 4 && rep.verify_len == 64);
    CHECKF(rep.max_offset_rounding <= 0x1p-11, "%s: offset rounding %.3g", what, rep.max_offset_rounding);
    double tol = rq_merge_default_tolerance(rep.rounding_perturbation, rep.exact);
    CHECKF(rep.tolerance == tol && rep.max_rel_diff <= tol, "%s: relative logit difference %.3g (bound %.3g)", what, rep.max_rel_diff, tol);
    CHECKF(rep.max_weight_err_ratio > 0 && rep.max_weight_err_ratio <= 1, "%s: weight check %.3g", what, rep.max_weight_err_ratio);
    /* not vacuous: the adapters move the logits far more than the merge leaves */
    CHECKF(rep.adapter_rel_diff >= 5 * tol, "%s: adapters move the logits by only %.3g", what,
           rep.adapter_rel_diff);
    if (rep.max_rel_diff > worst_rel) worst_rel = rep.max_rel_diff;
    double k = rep.max_rel_diff / rep.rounding_perturbation, k_apriori = rep.max_rel_diff / (0x1p-11 * sqrt((double)rep.exact));
    if (k_apriori > worst_k_apriori) worst_k_apriori = k_apriori;
    CHECK(rep.rounding_perturbation > 0);
    if (k > worst_k) worst_k = k;
    printf("%-28s merged-vs-adapter max|d| %.3e rel %.3e (bound %.3e, rel/rounding %.2f) | adapter effect rel %.3f | "
           "update mean %.3f max %.2f steps | weight check %.2f\n",
           what, rep.max_abs_diff, rep.max_rel_diff, tol, k, rep.adapter_rel_diff, rep.mean_update_steps,
           rep.max_update_steps, rep.max_weight_err_ratio);
    check_weights(down0, m->layers[m->cfg.n_layers - 1].w_down.q2, s,
                  rq_adapter_set_get(s, m->cfg.n_layers - 1, RQ_PROJ_DOWN), what);
    check_weights(q0, m->layers[0].wq.q2, s, rq_adapter_set_get(s, 0, RQ_PROJ_Q), what);
    rq_q2_free(down0);
    rq_q2_free(q0);
    rq_adapter_set_free(s);
    rq_model_free(m);
}

static void test_matrix(bool stories) {
    const int gss[] = {32, 64, 128}, ranks[] = {1, 8, 16};
    const rq_quant_method methods[] = {RQ_QUANT_RTN, RQ_QUANT_NF2};
    for (int k = 0; k < 2; k++)
        for (int j = 0; j < 3; j++) {
            char dir[64], label[96];
            snprintf(dir, sizeof dir, "merge-%s-%s-%d", stories ? "stories" : "random",
                     rq_quant_method_name(methods[k]), gss[j]);
            const char *path = rq_test_out(dir);
            make_artifact(stories, methods[k], gss[j], path);
            snprintf(label, sizeof label, "%s %s gs=%d", stories ? "stories260K" : "random", 
                     rq_q2_codebook_name(rq_quant_method_codebook(methods[k])), gss[j]);
            for (int i = 0; i < 3; i++) merge_case(path, label, ranks[i], gss[j], stories);
            remove_tree(path);
        }
}

/* The bound is not too loose: the update of one projection applied twice. */
static void test_bound_catches_error(const char *dir) {
    rq_err err = {0};
    rq_model *m = load(dir);
    if (!m) return;
    rq_adapter_set *s = random_adapters(m, RQ_ADAPTER_QALORA, 8, 64, b_range(8, 64));
    enum { N = 4, T = 64 };
    const int V = m->cfg.vocab_size;
    int *tok = malloc(sizeof(int) * N * T);
    float *ref = malloc(sizeof(float) * N * T * V), *got = malloc(sizeof(float) * N * T * V);
    rq_merge_verify_tokens(tok, N, T, V, 7);
    CHECK_OK(rq_merge_logits(m, be, s, tok, N, T, ref, &err), &err);
    rq_merge_opts o;
    rq_merge_opts_default(&o);
    o.verify_seqs = 0;
    rq_merge_report rep;
    CHECK_OK(rq_merge_model(m, s, be, &o, &rep, &err), &err);
    CHECK_OK(rq_merge_logits(m, be, NULL, tok, N, T, got, &err), &err);
    double d_abs, d_rel;
    rq_merge_compare(ref, got, (size_t)N * T, V, &d_abs, &d_rel, NULL);
    const double tol = rq_merge_default_tolerance(rep.rounding_perturbation, rep.exact);
    CHECKF(d_rel <= tol, "correct merge: %.3g", d_rel);
    /* the layer-2 v_proj update once more */
    rq_q2_tensor *t = m->layers[2].wv.q2;
    float *host = malloc(sizeof(float) * s->n_params);
    be->download(be, host, s->params, sizeof(float) * s->n_params, &err);
    const rq_adapter *a = rq_adapter_set_get(s, 2, RQ_PROJ_V);
    CHECK_OK(rq_merge_qalora_offsets(t, a, host + (a->A - s->params), host + (a->B - s->params), "v", t->offsets, NULL,
                                     &err),
             &err);
    CHECK_OK(rq_merge_logits(m, be, NULL, tok, N, T, got, &err), &err);
    double w_abs, w_rel;
    rq_merge_compare(ref, got, (size_t)N * T, V, &w_abs, &w_rel, NULL);
    printf("one projection merged twice: relative logit difference %.3e (correct merge %.3e, bound %.3e)\n", w_rel, d_rel,
           tol);
    CHECKF(w_rel > 2 * tol, "a doubled update of one projection is not caught: %.3g", w_rel);
    free(tok), free(ref), free(got), free(host);
    rq_adapter_set_free(s);
    rq_model_free(m);
}

static bool same_offsets(const rq_model *a, const rq_model *b) {
    for (int l = 0; l < a->cfg.n_layers; l++)
        for (int p = 0; p < RQ_N_PROJ; p++) {
            const rq_q2_tensor *x = rq_layer_proj(&a->layers[l], p)->q2, *y = rq_layer_proj(&b->layers[l], p)->q2;
            if (memcmp(x->offsets, y->offsets, sizeof(uint16_t) * (size_t)x->out * x->n_groups) != 0) return false;
        }
    return true;
}

/* The verification's tokens: text the adapter model samples (from BOS, seeded,
 * the same for the same seed), or uniform random tokens; both verify a correct merge. */
static void test_verify_tokens(const char *dir) {
    rq_err err = {0};
    rq_model *m = load(dir);
    if (!m) return;
    rq_adapter_set *s = random_adapters(m, RQ_ADAPTER_QALORA, 8, 64, b_range(8, 64));
    enum { N = 2, T = 24 };
    int a[N * T], b[N * T], c[N * T];
    CHECK_OK(rq_merge_sample_tokens(m, be, s, a, N, T, 5, &err), &err);
    CHECK_OK(rq_merge_sample_tokens(m, be, s, b, N, T, 5, &err), &err);
    CHECK_OK(rq_merge_sample_tokens(m, be, s, c, N, T, 6, &err), &err);
    CHECK(memcmp(a, b, sizeof a) == 0 && memcmp(a, c, sizeof a) != 0);
    bool in_range = true;
    for (int i = 0; i < N * T; i++) in_range &= a[i] >= 0 && a[i] < m->cfg.vocab_size;
    CHECK(in_range);
    if (m->cfg.bos_id >= 0) CHECK(a[0] == m->cfg.bos_id && a[T] == m->cfg.bos_id);
    CHECK(m->adapters == NULL); /* the adapters were attached only while sampling */
    rq_merge_opts o;
    rq_merge_opts_default(&o);
    o.verify_random = true;
    rq_merge_report rep;
    CHECK_OK(rq_merge_model(m, s, be, &o, &rep, &err), &err);
    CHECK(rep.verified && rep.passed);
    printf("random-token verification: relative %.3e (bound %.3e)\n", rep.max_rel_diff, rep.tolerance);
    rq_adapter_set_free(s);
    rq_model_free(m);
}

static void test_refusals(const char *dir) {
    rq_err err = {0};
    rq_model *m = load(dir), *pristine = load(dir);
    if (!m || !pristine) return;
    rq_merge_opts o;
    rq_merge_opts_default(&o);
    o.verify_seqs = 1;

    /* plain LoRA: refused, with the reason and the way out */
    rq_adapter_set *s = random_adapters(m, RQ_ADAPTER_LORA, 4, 0, 0.01f);
    CHECK(rq_merge_model(m, s, be, &o, NULL, &err) == RQ_ERR_UNSUPPORTED);
    CHECKF(strstr(err.msg, "LoRA") && strstr(err.msg, "--requantize") && strstr(err.msg, "q_proj"), "message: %s", err.msg);
    printf("LoRA refused: %s\n", err.msg);
    rq_adapter_set_free(s);

    /* pooling group 32 on quantization group 64: refused naming both */
    s = random_adapters(m, RQ_ADAPTER_QALORA, 4, 32, 0.01f);
    CHECK(rq_merge_model(m, s, be, &o, NULL, &err) == RQ_ERR_UNSUPPORTED);
    CHECKF(strstr(err.msg, "pooling group size 32") && strstr(err.msg, "quantization group size 64"), "message: %s",
           err.msg);
    printf("group mismatch refused: %s\n", err.msg);
    rq_adapter_set_free(s);

    /* an offset beyond fp16: refused naming tensor, row, group; the model is untouched */
    s = random_adapters(m, RQ_ADAPTER_QALORA, 4, 64, 0.01f);
    float *host = malloc(sizeof(float) * s->n_params);
    be->download(be, host, s->params, sizeof(float) * s->n_params, &err);
    rq_adapter *a = rq_adapter_set_get(s, 3, RQ_PROJ_UP);
    for (int k = 0; k < a->r; k++) {
        host[(a->B - s->params) + 5 * a->r + k] = 1e6f;           /* row 5 of B */
        host[(a->A - s->params) + (size_t)k * a->a_cols] = 1.0f;  /* group 0 of A: update 1e6 * 16 / 44 */
    }
    be->upload(be, s->params, host, sizeof(float) * s->n_params, &err);
    CHECK(rq_merge_model(m, s, be, &o, NULL, &err) == RQ_ERR_UNSUPPORTED);
    CHECKF(strstr(err.msg, "overflows fp16") && strstr(err.msg, "model.layers.3.mlp.up_proj") && strstr(err.msg, "row 5"),
           "message: %s", err.msg);
    printf("overflow refused: %s\n", err.msg);
    CHECK(same_offsets(m, pristine));
    free(host);
    rq_adapter_set_free(s);
    rq_model_free(m);
    rq_model_free(pristine);
}

/* --requantize: LoRA folded by quantizing W + dW again; the error is reported. */
static void test_requantize(const char *dir, bool stories) {
    rq_err err = {0};
    rq_model *m = load(dir);
    if (!m) return;
    rq_adapter_set *s = random_adapters(m, RQ_ADAPTER_LORA, 8, 0, 0.2f * b_range(8, 1));
    rq_merge_opts o;
    rq_merge_opts_default(&o);
    o.requantize = true;
    o.n_threads = 1;
    rq_merge_report rep;
    CHECK_OK(rq_merge_model(m, s, be, &o, &rep, &err), &err);
    CHECK(rep.requantized == m->cfg.n_layers * RQ_N_PROJ && rep.exact == 0);
    CHECK(rep.verified && rep.passed && rep.tolerance == 0.0); /* reported, not checked */
    CHECK(rep.requant_max_rel_err > 0 && rep.requant_max_rel_err < 1 && rep.requant_worst[0]);
    CHECK(rep.max_rel_diff > 0 && isfinite(rep.max_rel_diff));
    printf("%s requantize (LoRA r=8): weight rel err mean %.4f max %.4f (%s), err/||dW|| %.2f; logits max|d| %.3e rel "
           "%.3e (adapter effect rel %.3f)\n",
           stories ? "stories260K" : "random", rep.requant_mean_rel_err, rep.requant_max_rel_err, rep.requant_worst,
           rep.requant_max_err_over_update, rep.max_abs_diff, rep.max_rel_diff, rep.adapter_rel_diff);
    rq_adapter_set_free(s);
    rq_model_free(m);

    /* with a tolerance the requantized merge is checked too (and fails here) */
    m = load(dir);
    s = random_adapters(m, RQ_ADAPTER_LORA, 8, 0, 0.2f * b_range(8, 1));
    o.check_requantized = true;
    o.tolerance = 1e-6;
    CHECK(rq_merge_model(m, s, be, &o, &rep, &err) == RQ_ERR_INTERNAL && !rep.passed);
    CHECKF(strstr(err.msg, "verification failed"), "message: %s", err.msg);
    rq_adapter_set_free(s);
    rq_model_free(m);
}

/* The command's entry point and the tool: write, reload, compare. */
static void test_end_to_end(const char *dir) {
    rq_err err = {0};
    rq_model *m = load(dir);
    if (!m) return;
    rq_adapter_set *s = random_adapters(m, RQ_ADAPTER_QALORA, 8, 64, b_range(8, 64));
    const char *run = rq_test_out("merge-run"), *out = rq_test_out("merge-out"), *out2 = rq_test_out("merge-out-tool");
    remove_tree(run), remove_tree(out), remove_tree(out2);
    char adir[4200];
    snprintf(adir, sizeof adir, "%s/adapter", run); /* a calibrate-style run directory */
    CHECK_OK(rq_adapter_set_save_peft(s, adir, &err), &err);

    enum { N = 2, T = 48 };
    const int V = m->cfg.vocab_size;
    int *tok = malloc(sizeof(int) * N * T);
    float *ref = malloc(sizeof(float) * N * T * V), *got = malloc(sizeof(float) * N * T * V);
    rq_merge_verify_tokens(tok, N, T, V, 99);
    CHECK_OK(rq_merge_logits(m, be, s, tok, N, T, ref, &err), &err);

    rq_merge_opts o;
    rq_merge_opts_default(&o);
    o.n_threads = 1;
    rq_merge_report rep;
    CHECK_OK(rq_merge_artifact(dir, run, out, "cpu", 1, &o, &rep, &err), &err);
    CHECK(rep.passed && rep.exact == m->cfg.n_layers * RQ_N_PROJ);
    rq_model *mm = load(out);
    if (mm) {
        CHECK(mm->adapters == NULL);
        CHECKF(strstr(mm->quant.merged_adapters, "qalora r=8") && strstr(mm->quant.merged_adapters, "exact"),
               "merged_adapters: '%s'", mm->quant.merged_adapters);
        CHECK(strcmp(mm->quant.method, "nf2") == 0);
        CHECK_OK(rq_merge_logits(mm, be, NULL, tok, N, T, got, &err), &err);
        double d_abs, d_rel;
        rq_merge_compare(ref, got, (size_t)N * T, V, &d_abs, &d_rel, NULL);
        CHECKF(d_rel <= rep.tolerance, "reloaded merged artifact: relative logit difference %.3g", d_rel);
        printf("end to end (stories260K nf2 gs=64 r=8, reloaded): max|d| %.3e rel %.3e\n", d_abs, d_rel);
    }
    /* an existing output is refused, nothing overwritten */
    CHECK(rq_merge_artifact(dir, run, out, "cpu", 1, &o, &rep, &err) == RQ_ERR_ARG);
    /* no adapter there */
    CHECK(rq_merge_artifact(dir, out, out2, "cpu", 1, &o, &rep, &err) == RQ_ERR_IO && strstr(err.msg, "adapter_config.json"));

    /* the standalone tool: same code, same result (bit-identical offsets) */
    const char *bin = getenv("RQ_BINARY_DIR");
    char cmd[16384];
    snprintf(cmd, sizeof cmd, "%s/rilq-merge %s %s --out %s --threads 1 > %s.log 2>&1", bin ? bin : "build", dir, adir, out2,
             out2);
    int rc = system(cmd);
    CHECKF(rc == 0, "%s -> %d", cmd, rc);
    rq_model *mt = rc == 0 ? load(out2) : NULL;
    if (mt && mm) CHECK(same_offsets(mt, mm));
    rq_model_free(mt);
    rq_model_free(mm);
    free(tok), free(ref), free(got);
    rq_adapter_set_free(s);
    rq_model_free(m);
    remove_tree(run), remove_tree(out), remove_tree(out2);
}

/* fp16 rounding straight from double: agrees with the fp32 converter on fp32
 * inputs, rounds once where going through fp32 would round twice, refuses overflow. */
static void test_round_once(void) {
    uint16_t h = 0;
    for (int i = 0; i < 200000; i++) {
        float x = ldexpf(2.0f * rq_rng_uniform(&rng) - 1.0f, (int)(rq_rng_u64(&rng) % 40) - 28);
        if (!rq_f64_to_f16_once((double)x, &h) || h != rq_f32_to_f16(x)) {
            CHECKF(0, "x = %.9g: %04x vs %04x", (double)x, h, rq_f32_to_f16(x));
            break;
        }
    }
    CHECK(rq_f64_to_f16_once(1.0 + 0x1p-11 + 0x1p-40, &h) && rq_f16_to_f32(h) == 1.0f + 0x1p-10f);
    CHECK(rq_f32_to_f16((float)(1.0 + 0x1p-11 + 0x1p-40)) == rq_f32_to_f16(1.0f)); /* the double rounding avoided */
    CHECK(rq_f64_to_f16_once(-(0x1p-24 + 0x1p-26), &h) && rq_f16_to_f32(h) == -0x1p-24f); /* subnormal */
    CHECK(rq_f64_to_f16_once(65519.0, &h) && rq_f16_to_f32(h) == 65504.0f);
    CHECK(!rq_f64_to_f16_once(65520.0, &h) && !rq_f64_to_f16_once(-1e6, &h) && !rq_f64_to_f16_once(NAN, &h));
}

int main(void) {
    rq_err err = {0};
    rq_rng_seed(&rng, getenv("RQ_MERGE_TEST_SEED") ? strtoull(getenv("RQ_MERGE_TEST_SEED"), NULL, 10) : 2024);
    if (rq_backend_cpu_create(1, &be, &err) != RQ_OK) {
        fprintf(stderr, "backend: %s\n", err.msg);
        return 1;
    }
    test_round_once();
    test_matrix(false);
    test_matrix(true);
    printf("worst relative logit difference over the exact merges: %.3e; worst rel / rounding perturbation: %.2f (K %.0f); "
           "worst rel / (2^-11 sqrt(n)): %.2f (K %.0f)\n",
           worst_rel, worst_k, RQ_MERGE_TOLERANCE_K_MEASURED, worst_k_apriori, RQ_MERGE_TOLERANCE_K_A_PRIORI);
    /* the constants of merge.h keep a margin of at least 2 over what was measured here */
    CHECKF(worst_k * 2 <= RQ_MERGE_TOLERANCE_K_MEASURED, "K_MEASURED leaves less than a 2x margin: %.2f", worst_k);
    CHECKF(worst_k_apriori * 2 <= RQ_MERGE_TOLERANCE_K_A_PRIORI, "K_A_PRIORI leaves less than a 2x margin: %.2f",
           worst_k_apriori);

    const char *dir = rq_test_out("merge-stories-nf2-64");
    make_artifact(true, RQ_QUANT_NF2, 64, dir);
    test_bound_catches_error(dir);
    test_verify_tokens(dir);
    test_refusals(dir);
    test_requantize(dir, true);
    test_end_to_end(dir);
    remove_tree(dir);
    const char *rdir = rq_test_out("merge-random-rtn-64");
    make_artifact(false, RQ_QUANT_RTN, 64, rdir);
    test_requantize(rdir, false);
    remove_tree(rdir);

    rq_backend_destroy(be);
    printf("%d passed, %d failed\n", rq_test_passed, rq_test_failed);
    return rq_test_failed ? 1 : 0;
}
