/* LoRA / QA-LoRA adapters: forward against the dense formula, gradients
 * against finite differences in double, initialization statistics, PEFT
 * save/load round trip and clear errors on mismatching files.
 *
 * Gradient tolerance: max |analytic - numeric| <= 1e-4 * max |numeric| (fp32
 * GEMMs over <= 172 terms against double central differences with h = 1e-6;
 * a wrong term shows up at the 1e-1 level). */
#include <math.h>

#include "adapter/adapter.h"
#include "io/safetensors.h"
#include "test.h"

#define TOL_GRAD 1e-4
#define FD_STEP 1e-6

static rq_backend *be;
static rq_rng rng;

static float *randv(size_t n, float scale) {
    float *x = malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) x[i] = scale * (2.0f * rq_rng_uniform(&rng) - 1.0f);
    return x;
}

/* dim 40 (QA-LoRA gs 64: a single short group), hidden 172 (gs 64: 64, 64, 44;
 * gs 32: five of 32 and one of 12), GQA 4 heads over 2 KV heads. */
static rq_config tiny_config(int n_layers, int hidden) {
    rq_config c = {0};
    c.dim = 40, c.hidden_dim = hidden, c.n_layers = n_layers, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 10;
    c.vocab_size = 32, c.max_seq_len = 16, c.norm_eps = 1e-5f, c.rope_theta = 10000.0f;
    return c;
}

/* ---- the dense formula in double ---------------------------------------------------- */

typedef struct {
    const rq_adapter *a;
    int N;
    const double *dout; /* [N][out] */
} dense_ctx;

/* pool(x) in double: the mean over each group's real members */
static void pool_ref(const rq_adapter *a, const double *x, double *xt) {
    if (a->type == RQ_ADAPTER_LORA) {
        memcpy(xt, x, sizeof(double) * a->in);
        return;
    }
    for (int g = 0; g < a->a_cols; g++) {
        int i0 = g * a->group_size, i1 = i0 + a->group_size < a->in ? i0 + a->group_size : a->in;
        double s = 0.0;
        for (int i = i0; i < i1; i++) s += x[i];
        xt[g] = s / (i1 - i0);
    }
}

/* y[N][out] = s * B A pool(x), from v = [A | B | x] in double */
static void dense_forward(const rq_adapter *a, int N, const double *v, double *y) {
    const double *A = v, *B = A + (size_t)a->r * a->a_cols, *x = B + (size_t)a->out * a->r;
    double *xt = malloc(sizeof(double) * a->a_cols), *u = malloc(sizeof(double) * a->r);
    for (int n = 0; n < N; n++) {
        pool_ref(a, x + (size_t)n * a->in, xt);
        for (int k = 0; k < a->r; k++) {
            u[k] = 0.0;
            for (int j = 0; j < a->a_cols; j++) u[k] += A[(size_t)k * a->a_cols + j] * xt[j];
        }
        for (int o = 0; o < a->out; o++) {
            double s = 0.0;
            for (int k = 0; k < a->r; k++) s += B[(size_t)o * a->r + k] * u[k];
            y[(size_t)n * a->out + o] = a->scaling * s;
        }
    }
    free(xt), free(u);
}

static double dense_loss(const dense_ctx *c, const double *v) {
    double *y = malloc(sizeof(double) * (size_t)c->N * c->a->out), L = 0.0;
    dense_forward(c->a, c->N, v, y);
    for (size_t i = 0; i < (size_t)c->N * c->a->out; i++) L += c->dout[i] * y[i];
    free(y);
    return L;
}

static void check_grad(const char *what, const float *after, const float *before, const double *numeric, size_t n) {
    double max_err = 0.0, max_ref = 0.0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)after[i] - (before ? (double)before[i] : 0.0) - numeric[i]);
        if (e > max_err) max_err = e;
        if (fabs(numeric[i]) > max_ref) max_ref = fabs(numeric[i]);
    }
    CHECKF(max_ref > 0.0, "%s: numeric gradient is all zero (test is vacuous)", what);
    CHECKF(max_err <= TOL_GRAD * max_ref, "%s: max |analytic - numeric| = %.3g, max |numeric| = %.3g", what, max_err,
           max_ref);
}

/* Forward vs the dense formula, then dA, dB, dx vs finite differences. */
static void check_adapter(rq_adapter_set *s, int layer, int proj, int N) {
    rq_adapter *a = rq_adapter_set_get(s, layer, proj);
    CHECK(a != NULL);
    if (!a) return;
    char what[128];
    snprintf(what, sizeof what, "%s %s gs=%d (in %d, A cols %d)", rq_adapter_type_name(a->type), rq_proj_names[proj],
             a->group_size, a->in, a->a_cols);
    size_t na = (size_t)a->r * a->a_cols, nb = (size_t)a->out * a->r, nx = (size_t)N * a->in;
    size_t ny = (size_t)N * a->out;
    /* non-zero B, or dA and dx would be trivially zero */
    float *A = randv(na, 0.5f), *B = randv(nb, 0.5f), *x = randv(nx, 1.0f), *dout = randv(ny, 1.0f);
    rq_err err = {0};
    CHECK_OK(rq_adapter_set_assign(s, layer, proj, A, B, &err), &err);

    float *base = randv(ny, 1.0f), *out = malloc(sizeof(float) * ny);
    memcpy(out, base, sizeof(float) * ny);
    float *pooled = malloc(sizeof(float) * (size_t)N * a->a_cols), *u = malloc(sizeof(float) * (size_t)N * a->r);
    const float *xt = rq_adapter_input(be, a, x, N, pooled);
    rq_adapter_forward(be, a, out, xt, u, N);

    double *v = malloc(sizeof(double) * (na + nb + nx)), *y = malloc(sizeof(double) * ny);
    for (size_t i = 0; i < na; i++) v[i] = A[i];
    for (size_t i = 0; i < nb; i++) v[na + i] = B[i];
    for (size_t i = 0; i < nx; i++) v[na + nb + i] = x[i];
    dense_forward(a, N, v, y);
    double max_diff = 0.0, max_y = 0.0;
    for (size_t i = 0; i < ny; i++) {
        max_diff = fmax(max_diff, fabs((double)out[i] - base[i] - y[i]));
        max_y = fmax(max_y, fabs(y[i]));
    }
    /* fp32 products of <= 172 terms, then added to a base of size 1 */
    CHECKF(max_diff <= 1e-5 * fmax(1.0, max_y), "%s forward: max diff %.3g vs dense (max |y| %.3g)", what, max_diff,
           max_y);

    /* backward: grads start non-zero (accumulation), dx too */
    float *dA0 = randv(na, 1.0f), *dB0 = randv(nb, 1.0f), *dx = randv(nx, 1.0f);
    float *dx0 = malloc(sizeof(float) * nx);
    memcpy(dx0, dx, sizeof(float) * nx);
    be->upload(be, a->dA, dA0, sizeof(float) * na, &err);
    be->upload(be, a->dB, dB0, sizeof(float) * nb, &err);
    float *scratch = malloc(sizeof(float) * rq_adapter_scratch_floats(a, N));
    rq_adapter_backward(be, a, dx, dout, xt, u, N, scratch);

    double *dd = malloc(sizeof(double) * ny), *g = malloc(sizeof(double) * (na + nb + nx));
    for (size_t i = 0; i < ny; i++) dd[i] = dout[i];
    dense_ctx c = {a, N, dd};
    for (size_t i = 0; i < na + nb + nx; i++) {
        double v0 = v[i];
        v[i] = v0 + FD_STEP;
        double lp = dense_loss(&c, v);
        v[i] = v0 - FD_STEP;
        double lm = dense_loss(&c, v);
        v[i] = v0;
        g[i] = (lp - lm) / (2.0 * FD_STEP);
    }
    char part[160];
    snprintf(part, sizeof part, "%s dA", what);
    check_grad(part, a->dA, dA0, g, na);
    snprintf(part, sizeof part, "%s dB", what);
    check_grad(part, a->dB, dB0, g + na, nb);
    snprintf(part, sizeof part, "%s dx", what);
    check_grad(part, dx, dx0, g + na + nb, nx);
    free(A), free(B), free(x), free(dout), free(base), free(out), free(pooled), free(u), free(v), free(y);
    free(dA0), free(dB0), free(dx), free(dx0), free(scratch), free(dd), free(g);
}

static void test_forward_backward(rq_adapter_type type, int gs) {
    rq_config mc = tiny_config(2, 172);
    rq_adapter_config cfg = {.type = type, .r = 5, .alpha = 16.0f, .group_size = gs, .targets = RQ_ADAPTER_ALL_PROJ,
                             .init = RQ_INIT_GAUSSIAN, .seed = 7};
    rq_adapter_set *s = NULL;
    rq_err err = {0};
    CHECK_OK(rq_adapter_set_create(&mc, &cfg, be, &s, &err), &err);
    if (!s) return;
    CHECK(rq_adapter_set_count(s) == 14);
    check_adapter(s, 1, RQ_PROJ_Q, 3);    /* in 40 */
    check_adapter(s, 0, RQ_PROJ_K, 3);    /* GQA: out 20 */
    check_adapter(s, 1, RQ_PROJ_DOWN, 3); /* in 172: ragged groups */
    rq_adapter_set_free(s);
}

/* ---- sizes, init ------------------------------------------------------------------------ */

static void test_sizes(void) {
    rq_config mc = tiny_config(2, 172);
    rq_adapter_config cfg = {.type = RQ_ADAPTER_QALORA, .r = 4, .alpha = 8.0f, .group_size = 64,
                             .targets = (1u << RQ_PROJ_V) | (1u << RQ_PROJ_DOWN), .init = RQ_INIT_GAUSSIAN};
    rq_adapter_set *s = NULL;
    rq_err err = {0};
    CHECK_OK(rq_adapter_set_create(&mc, &cfg, be, &s, &err), &err);
    if (!s) return;
    /* per layer: v: A 4x1, B 20x4; down: A 4x3, B 40x4 */
    CHECK(s->n_params == 2 * (4 * 1 + 20 * 4 + 4 * 3 + 40 * 4));
    CHECK(rq_adapter_set_get(s, 0, RQ_PROJ_Q) == NULL);
    rq_adapter *d = rq_adapter_set_get(s, 1, RQ_PROJ_DOWN);
    CHECK(d && d->a_cols == 3 && d->scaling == 2.0f && d->out == 40 && d->in == 172);
    CHECK(d && d->dA - s->grads == d->A - s->params); /* grads mirror params */
    rq_adapter_set_free(s);
    unsigned t = 0;
    CHECK(rq_adapter_targets_parse("q_proj,down_proj", &t, &err) == RQ_OK && t == ((1u << RQ_PROJ_Q) | (1u << RQ_PROJ_DOWN)));
    CHECK(rq_adapter_targets_parse("q_proj,lm_head", &t, &err) == RQ_ERR_ARG && strstr(err.msg, "lm_head"));
    cfg.r = 0;
    CHECK(rq_adapter_set_create(&mc, &cfg, be, &s, &err) == RQ_ERR_ARG);
}

static void stats(const float *x, size_t n, double *std, double *max_abs) {
    double s = 0.0, ss = 0.0;
    *max_abs = 0.0;
    for (size_t i = 0; i < n; i++) {
        s += x[i], ss += (double)x[i] * x[i];
        *max_abs = fmax(*max_abs, fabs(x[i]));
    }
    *std = sqrt(ss / n - (s / n) * (s / n));
}

static void test_init(void) {
    rq_config mc = tiny_config(1, 256);
    mc.dim = 256, mc.n_heads = 4, mc.head_dim = 64;
    rq_err err = {0};
    const rq_adapter_init inits[3] = {RQ_INIT_GAUSSIAN, RQ_INIT_KAIMING_UNIFORM, RQ_INIT_XAVIER_UNIFORM};
    for (int k = 0; k < 3; k++) {
        rq_adapter_config cfg = {.type = RQ_ADAPTER_LORA, .r = 8, .alpha = 16.0f, .targets = RQ_ADAPTER_ALL_PROJ,
                                 .init = inits[k], .seed = 42};
        rq_adapter_set *s = NULL;
        CHECK_OK(rq_adapter_set_create(&mc, &cfg, be, &s, &err), &err);
        if (!s) continue;
        rq_adapter *a = rq_adapter_set_get(s, 0, RQ_PROJ_UP); /* A: 8 x 256 = 2048 samples */
        double std, max_abs, expect_std, bound = 0.0;
        stats(a->A, (size_t)a->r * a->a_cols, &std, &max_abs);
        if (inits[k] == RQ_INIT_GAUSSIAN) {
            expect_std = 1.0 / 8.0;
        } else {
            bound = inits[k] == RQ_INIT_KAIMING_UNIFORM ? 1.0 / sqrt(256.0) : sqrt(6.0 / (256.0 + 8.0));
            expect_std = bound / sqrt(3.0);
            CHECKF(max_abs <= bound, "%s: max |A| %.4g above the bound %.4g", rq_adapter_init_name(inits[k]),
                   max_abs, bound);
        }
        /* the sample std of 2048 draws has a relative standard error of ~1.6%: 6% is ~4 sigma */
        CHECKF(fabs(std / expect_std - 1.0) < 0.06, "%s: std %.4g, expected %.4g", rq_adapter_init_name(inits[k]), std,
               expect_std);
        bool b_zero = true;
        for (int l = 0; l < 1; l++)
            for (int p = 0; p < RQ_N_PROJ; p++) {
                rq_adapter *q = rq_adapter_set_get(s, l, p);
                for (size_t i = 0; i < (size_t)q->out * q->r; i++) b_zero &= q->B[i] == 0.0f;
            }
        CHECK(b_zero);
        /* B = 0: the adapted output equals the base output exactly */
        const int N = 3;
        float *x = randv((size_t)N * a->in, 1.0f), *base = randv((size_t)N * a->out, 1.0f);
        float *out = malloc(sizeof(float) * N * a->out), *u = malloc(sizeof(float) * N * a->r);
        memcpy(out, base, sizeof(float) * N * a->out);
        rq_adapter_forward(be, a, out, rq_adapter_input(be, a, x, N, NULL), u, N);
        CHECK(memcmp(out, base, sizeof(float) * N * a->out) == 0);
        free(x), free(base), free(out), free(u);
        /* same seed, same values; another seed, other values */
        float first = a->A[0];
        CHECK_OK(rq_adapter_set_init(s, inits[k], 42, &err), &err);
        CHECK(a->A[0] == first);
        CHECK_OK(rq_adapter_set_init(s, inits[k], 43, &err), &err);
        CHECK(a->A[0] != first);
        rq_adapter_set_free(s);
    }
}

/* ---- PEFT files ------------------------------------------------------------------------- */

static char *read_text(const char *path) {
    char *text = NULL;
    size_t n = 0;
    rq_err err = {0};
    return rq_file_read_all(path, &text, &n, &err) == RQ_OK ? text : NULL;
}

static void test_peft_round_trip(rq_adapter_type type, int gs, const char *dir) {
    rq_config mc = tiny_config(2, 172);
    rq_adapter_config cfg = {.type = type, .r = 6, .alpha = 12.0f, .group_size = gs,
                             .targets = RQ_ADAPTER_ALL_PROJ & ~(1u << RQ_PROJ_O), .init = RQ_INIT_XAVIER_UNIFORM,
                             .seed = 3};
    rq_adapter_set *s = NULL, *t = NULL;
    rq_err err = {0};
    CHECK_OK(rq_adapter_set_create(&mc, &cfg, be, &s, &err), &err);
    if (!s) return;
    for (size_t i = 0; i < s->n_params; i++) s->params[i] = rq_rng_normal(&rng); /* B non-zero too */
    CHECK_OK(rq_adapter_set_save_peft(s, dir, &err), &err);
    CHECK_OK(rq_adapter_set_open_peft(dir, &mc, be, &t, &err), &err);
    if (t) {
        CHECK(t->n_params == s->n_params && t->cfg.type == type && t->cfg.r == 6 && t->cfg.alpha == 12.0f &&
              t->cfg.targets == cfg.targets && t->cfg.group_size == s->cfg.group_size);
        CHECK(memcmp(t->params, s->params, sizeof(float) * s->n_params) == 0); /* bit-exact */
    }
    rq_adapter_set_free(t);

    char path[4096];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    char *json = read_text(path);
    CHECK(json != NULL);
    if (json) {
        CHECK(strstr(json, "\"peft_type\":\t\"LORA\"") || strstr(json, "\"peft_type\": \"LORA\""));
        CHECK(strstr(json, "\"task_type\"") && strstr(json, "CAUSAL_LM") && strstr(json, "\"bias\""));
        CHECK(strstr(json, "\"gate_proj\"") && !strstr(json, "\"o_proj\""));
        if (type == RQ_ADAPTER_QALORA) CHECK(strstr(json, "\"qalora\"") && strstr(json, "\"mean\""));
        free(json);
    }
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    rq_safetensors f;
    rq_tensor_table tab = {0};
    CHECK_OK(rq_safetensors_open(path, &f, &tab, &err), &err);
    const rq_tensor_view *v = rq_tensor_table_find(&tab, "base_model.model.model.layers.1.mlp.down_proj.lora_A.weight");
    CHECK(v && v->ndim == 2 && v->shape[0] == 6 && v->shape[1] == (type == RQ_ADAPTER_QALORA ? (172 + gs - 1) / gs : 172));
    CHECK(rq_tensor_table_find(&tab, "base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight") != NULL);
    CHECK(tab.count == 2 * 2 * 6);
    rq_safetensors_close(&f);
    rq_tensor_table_free(&tab);
    rq_adapter_set_free(s);
}

static void test_peft_errors(const char *dir) {
    rq_config mc = tiny_config(2, 172);
    rq_adapter_config cfg = {.type = RQ_ADAPTER_LORA, .r = 4, .alpha = 8.0f, .targets = RQ_ADAPTER_ALL_PROJ,
                             .init = RQ_INIT_GAUSSIAN, .seed = 1};
    rq_adapter_set *s = NULL, *t = NULL;
    rq_err err = {0};
    CHECK_OK(rq_adapter_set_create(&mc, &cfg, be, &s, &err), &err);
    if (!s) return;
    CHECK_OK(rq_adapter_set_save_peft(s, dir, &err), &err);

    /* wrong shape: a model with another MLP width */
    rq_config other = tiny_config(2, 100);
    CHECK(rq_adapter_set_open_peft(dir, &other, be, &t, &err) == RQ_ERR_FORMAT && t == NULL);
    CHECK(strstr(err.msg, "adapter_model.safetensors") && strstr(err.msg, "layers.0.mlp.gate_proj.lora_B.weight") &&
          strstr(err.msg, "[172, 4]") && strstr(err.msg, "expected [100, 4]"));
    fprintf(stderr, "expected error: %s\n", err.msg);

    /* missing key: a model with one more layer */
    other = tiny_config(3, 172);
    CHECK(rq_adapter_set_open_peft(dir, &other, be, &t, &err) == RQ_ERR_FORMAT);
    CHECK(strstr(err.msg, "missing tensor base_model.model.model.layers.2.self_attn.q_proj.lora_A.weight") &&
          strstr(err.msg, "expected shape [4, 40]"));
    fprintf(stderr, "expected error: %s\n", err.msg);

    /* extra key: a model with one layer fewer */
    other = tiny_config(1, 172);
    CHECK(rq_adapter_set_open_peft(dir, &other, be, &t, &err) == RQ_ERR_FORMAT);
    CHECK(strstr(err.msg, "unexpected tensor base_model.model.model.layers.1.") != NULL);
    fprintf(stderr, "expected error: %s\n", err.msg);

    /* config disagreement: loading into a set of another rank */
    rq_adapter_config cfg8 = cfg;
    cfg8.r = 8;
    CHECK_OK(rq_adapter_set_create(&mc, &cfg8, be, &t, &err), &err);
    if (t) {
        CHECK(rq_adapter_set_load_peft(t, dir, &err) == RQ_ERR_FORMAT && strstr(err.msg, "r 4") && strstr(err.msg, "r 8"));
        rq_adapter_set_free(t);
        t = NULL;
    }

    /* a pooling convention we do not implement */
    char path[4096];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    const char *sum_pool = "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, \"target_modules\": [\"q_proj\"],"
                           " \"rilq_adapter\": {\"type\": \"qalora\", \"group_size\": 64, \"pooling\": \"sum\"}}";
    CHECK_OK(rq_write_file_atomic(path, sum_pool, strlen(sum_pool), &err), &err);
    rq_adapter_config read;
    CHECK(rq_adapter_config_read_peft(dir, &read, &err) == RQ_ERR_UNSUPPORTED && strstr(err.msg, "pooling"));
    const char *bad_target = "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, \"target_modules\": [\"lm_head\"]}";
    CHECK_OK(rq_write_file_atomic(path, bad_target, strlen(bad_target), &err), &err);
    CHECK(rq_adapter_config_read_peft(dir, &read, &err) == RQ_ERR_UNSUPPORTED && strstr(err.msg, "lm_head"));
    rq_adapter_set_free(s);
}

int main(void) {
    rq_err err = {0};
    CHECK_OK(rq_backend_cpu_create(0, &be, &err), &err);
    if (!be) return rq_test_finish();
    rq_rng_seed(&rng, 99);

    test_sizes();
    test_forward_backward(RQ_ADAPTER_LORA, 0);
    test_forward_backward(RQ_ADAPTER_QALORA, 64);
    test_forward_backward(RQ_ADAPTER_QALORA, 32);
    test_init();
    test_peft_round_trip(RQ_ADAPTER_LORA, 0, rq_test_out("adapter_lora"));
    test_peft_round_trip(RQ_ADAPTER_QALORA, 64, rq_test_out("adapter_qalora"));
    test_peft_errors(rq_test_out("adapter_errors"));

    rq_backend_destroy(be);
    return rq_test_finish();
}
