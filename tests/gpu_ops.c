/* The CUDA backend against the CPU backend, op by op, on random inputs of
 * awkward sizes: ragged groups (in = 172 with gs 64: 64, 64, 44), T not a
 * multiple of a tile (37, 129), GQA ratios 1, 2, 3 and 8, a vocabulary of 250
 * (not a multiple of 32), odd widths. Every op of src/backend/backend.h runs.
 *
 * Skips (exit 77) when rq_backend_create("cuda") fails, also under CI=true: a
 * machine without a GPU is not missing data. tools/gpu_test.sh runs it where
 * there is one. RILQ_GPU_TEST_DEVICE=cpu compares the CPU backend with itself
 * (a self-check of the harness on machines without a GPU).
 *
 * Where arguments live (what forward.c, adapter.c, optim.c and loss.c hand the
 * ops): float buffers an op reads or writes as activations, gradients,
 * parameters and moments are backend memory (alloc + upload/download); model
 * tensors (rq_linear weights fp32 or q2, the embedding table, norm weights) are
 * the model's host memory, which a device backend mirrors; int arrays (tokens,
 * row indices, targets) and cross_entropy's per-row losses are host memory
 * (forward.c passes a stack array). Host tensors are never freed before the
 * end, so a mirror keyed by host address cannot go stale inside the test.
 *
 * Tolerances, relative to the largest |value| of the CPU result:
 *   TOL_BF16 1e-2  ops whose products run on bf16 inputs with fp32 accumulation
 *                  (linear, matmul_nt, linear_bwd_input, matmul_tn_acc,
 *                  attention): bf16 keeps 8 significant bits (relative rounding
 *                  2^-9 ~ 2e-3 per input); random-sign sums of K products grow
 *                  like sqrt(K) in value and in error alike, so the error stays
 *                  a few 1e-3 of the output's scale;
 *   TOL_F32  1e-5  fp32 elementwise ops and row reductions (rmsnorm, rope,
 *                  swiglu, pooling, cross-entropy, Adam): only the summation
 *                  order differs from the CPU;
 *   exact          copies and gathers (copy, upload/download, gather_rows,
 *                  embedding, cache_store, fill_zero). */
#include <math.h>

#include "backend/backend.h"
#include "quant/q2.h"
#include "test.h"

#define TOL_BF16 1e-2
#define TOL_F32 1e-5

static rq_backend *cpu, *gpu;
static rq_rng rng;

/* host array, uniform in [-scale, scale); never freed (see above) */
static float *randv(size_t n, float scale) {
    float *x = malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) x[i] = scale * (2.0f * rq_rng_uniform(&rng) - 1.0f);
    return x;
}
static float *copyv(const float *x, size_t n) {
    float *c = malloc(sizeof(float) * (n ? n : 1));
    memcpy(c, x, sizeof(float) * n);
    return c;
}
/* a GPU buffer holding a copy of host[n] */
static float *up(const float *host, size_t n) {
    rq_err err = {0};
    float *d = gpu->alloc(gpu, sizeof(float) * (n ? n : 1), &err);
    if (!d) {
        fprintf(stderr, "gpu alloc of %zu floats failed: %s\n", n, err.msg);
        exit(1);
    }
    if (n && gpu->upload(gpu, d, host, sizeof(float) * n, &err) != RQ_OK) {
        fprintf(stderr, "gpu upload failed: %s\n", err.msg);
        exit(1);
    }
    return d;
}
static float *down(const float *dev, size_t n) {
    rq_err err = {0};
    float *h = malloc(sizeof(float) * (n ? n : 1));
    if (n && gpu->download(gpu, h, dev, sizeof(float) * n, &err) != RQ_OK) {
        fprintf(stderr, "gpu download failed: %s\n", err.msg);
        exit(1);
    }
    return h;
}

/* max |got - ref| <= tol * max |ref| (tol 0: bit-exact) */
static void cmp_host(const char *what, const float *ref, const float *got, size_t n, double tol) {
    double max_err = 0.0, max_ref = 0.0;
    size_t worst = 0;
    bool nan = false;
    for (size_t i = 0; i < n; i++) {
        if (isnan(got[i]) != isnan(ref[i])) nan = true;
        double e = fabs((double)got[i] - (double)ref[i]);
        if (e > max_err) max_err = e, worst = i;
        if (fabs(ref[i]) > max_ref) max_ref = fabs(ref[i]);
    }
    CHECKF(!nan, "%s: NaN where the CPU has none (or the reverse)", what);
    CHECKF(max_err <= tol * max_ref, "%s: max |gpu - cpu| = %.3g at %zu (cpu %.6g, gpu %.6g), max |cpu| = %.3g, tol %.1g",
           what, max_err, worst, n ? ref[worst] : 0.0, n ? got[worst] : 0.0, max_ref, tol);
}
static void cmp(const char *what, const float *ref, const float *got_dev, size_t n, double tol) {
    float *got = down(got_dev, n);
    cmp_host(what, ref, got, n, tol);
    free(got);
}
static void cmp_double(const char *what, double ref, double got, double tol) {
    CHECKF(fabs(got - ref) <= tol * fabs(ref), "%s: cpu %.12g, gpu %.12g (rel tol %.1g)", what, ref, got, tol);
}

/* a q2 tensor with random codes, scales and offsets (host; never freed) */
static rq_q2_tensor *random_q2(int out, int in, int gs) {
    rq_err err = {0};
    rq_q2_tensor *t = NULL;
    if (rq_q2_create(out, in, gs, RQ_Q2_INT2, &t, &err) != RQ_OK) {
        fprintf(stderr, "%s\n", err.msg);
        exit(1);
    }
    for (int o = 0; o < out; o++)
        for (int i = 0; i < in; i++) rq_q2_set_code(t, o, i, (int)(rq_rng_u64(&rng) & 3));
    for (int k = 0; k < out * t->n_groups; k++) {
        t->scales[k] = rq_f32_to_f16(0.02f + 0.05f * rq_rng_uniform(&rng));
        t->offsets[k] = rq_f32_to_f16(-0.08f + 0.02f * rq_rng_uniform(&rng));
    }
    return t;
}

/* ---- memory -------------------------------------------------------------------------- */

static void test_memory(void) {
    rq_err err = {0};
    size_t fb = 0, tb = 0;
    CHECK_OK(gpu->mem_info(gpu, &fb, &tb, &err), &err);
    CHECKF(tb > 0 && fb <= tb, "mem_info: free %zu of total %zu", fb, tb);
    const size_t n = 1000003;
    float *x = randv(n, 3.0f), *d = up(x, n), *d2 = up(x, n);
    gpu->fill_zero(gpu, d2, n);
    float *z = calloc(n, sizeof(float));
    cmp("fill_zero", z, d2, n, 0);
    gpu->copy(gpu, d2, d, n * sizeof(float));
    cmp("upload/copy/download", x, d2, n, 0);
    float *y = randv(n, 1.0f), *dy = up(y, n);
    float *ref = copyv(x, n);
    cpu->add_inplace(cpu, ref, y, n);
    gpu->add_inplace(gpu, d, dy, n);
    cmp("add_inplace", ref, d, n, TOL_F32);
    cpu->scale(cpu, ref, -0.37f, n);
    gpu->scale(gpu, d, -0.37f, n);
    cmp("scale", ref, d, n, TOL_F32);
    cmp_double("sum_squares", cpu->sum_squares(cpu, ref, n), gpu->sum_squares(gpu, d, n), 1e-6);
    free(z);
    gpu->free(gpu, d);
    gpu->free(gpu, d2);
    gpu->free(gpu, dy);
}

/* ---- gathers --------------------------------------------------------------------------- */

static void test_gathers(void) {
    const int V = 250, C = 96, N = 37;
    float *table = randv((size_t)V * C, 1.0f); /* a model tensor: host */
    int tokens[37];
    for (int i = 0; i < N; i++) tokens[i] = (int)(rq_rng_u64(&rng) % V);
    tokens[0] = 0, tokens[1] = V - 1;
    float *ref = calloc((size_t)N * C, sizeof(float)), *d = up(ref, (size_t)N * C);
    cpu->embedding(cpu, ref, tokens, table, N, C);
    gpu->embedding(gpu, d, tokens, table, N, C);
    cmp("embedding", ref, d, (size_t)N * C, 0);
    /* gather_rows from a device matrix */
    float *src = randv((size_t)V * C, 1.0f), *dsrc = up(src, (size_t)V * C);
    cpu->gather_rows(cpu, ref, src, tokens, N, C);
    gpu->gather_rows(gpu, d, dsrc, tokens, N, C);
    cmp("gather_rows", ref, d, (size_t)N * C, 0);
    /* cache_store: B=2 sequences of T=5 rows into a cache of Tmax=11 at pos0=3 */
    const int B = 2, T = 5, Tmax = 11, pos0 = 3, W = 40;
    float *rows = randv((size_t)B * T * W, 1.0f), *cache = randv((size_t)B * Tmax * W, 1.0f);
    float *dc = up(cache, (size_t)B * Tmax * W), *drows = up(rows, (size_t)B * T * W);
    cpu->cache_store(cpu, cache, rows, B, T, pos0, Tmax, W);
    gpu->cache_store(gpu, dc, drows, B, T, pos0, Tmax, W);
    cmp("cache_store", cache, dc, (size_t)B * Tmax * W, 0);
    free(ref);
    gpu->free(gpu, d), gpu->free(gpu, dsrc), gpu->free(gpu, dc), gpu->free(gpu, drows);
}

/* ---- GEMMs ----------------------------------------------------------------------------- */

static void test_linear(int N, int out, int in, int gs) {
    char what[128];
    rq_linear W = {.out = out, .in = in};
    if (gs > 0) W.q2 = random_q2(out, in, gs);
    else W.w = randv((size_t)out * in, 1.0f / sqrtf((float)in));
    const char *kind = gs > 0 ? "q2" : "fp32";
    float *x = randv((size_t)N * in, 1.0f), *dx = up(x, (size_t)N * in);
    float *y0 = randv((size_t)N * out, 1.0f);
    for (int acc = 0; acc < 2; acc++) {
        float *ref = copyv(y0, (size_t)N * out), *d = up(y0, (size_t)N * out);
        cpu->linear(cpu, ref, x, &W, N, acc);
        gpu->linear(gpu, d, dx, &W, N, acc);
        snprintf(what, sizeof what, "linear %s N=%d out=%d in=%d gs=%d accumulate=%d", kind, N, out, in, gs, acc);
        cmp(what, ref, d, (size_t)N * out, TOL_BF16);
        free(ref);
        gpu->free(gpu, d);
    }
    /* input gradient through the frozen weight (+=) */
    float *g = randv((size_t)N * out, 1.0f), *dg = up(g, (size_t)N * out);
    float *ref = randv((size_t)N * in, 1.0f), *d = up(ref, (size_t)N * in);
    cpu->linear_bwd_input(cpu, ref, g, &W, N);
    gpu->linear_bwd_input(gpu, d, dg, &W, N);
    snprintf(what, sizeof what, "linear_bwd_input %s N=%d out=%d in=%d gs=%d", kind, N, out, in, gs);
    cmp(what, ref, d, (size_t)N * in, TOL_BF16);
    gpu->free(gpu, dx), gpu->free(gpu, dg), gpu->free(gpu, d);
    free(ref);
}

static void test_matmuls(int N, int M, int K) {
    char what[96];
    float *a = randv((size_t)N * K, 1.0f), *b = randv((size_t)M * K, 1.0f);
    float *da = up(a, (size_t)N * K), *db = up(b, (size_t)M * K);
    for (int acc = 0; acc < 2; acc++) {
        float *ref = randv((size_t)N * M, 1.0f), *d = up(ref, (size_t)N * M);
        cpu->matmul_nt(cpu, ref, a, b, N, M, K, acc);
        gpu->matmul_nt(gpu, d, da, db, N, M, K, acc);
        snprintf(what, sizeof what, "matmul_nt N=%d M=%d K=%d accumulate=%d", N, M, K, acc);
        cmp(what, ref, d, (size_t)N * M, TOL_BF16);
        free(ref);
        gpu->free(gpu, d);
    }
    /* dW[M][K] += dout[N][M]^T in[N][K] */
    float *dout = randv((size_t)N * M, 1.0f), *ddout = up(dout, (size_t)N * M);
    float *ref = randv((size_t)M * K, 1.0f), *d = up(ref, (size_t)M * K);
    cpu->matmul_tn_acc(cpu, ref, dout, a, N, M, K);
    gpu->matmul_tn_acc(gpu, d, ddout, da, N, M, K);
    snprintf(what, sizeof what, "matmul_tn_acc N=%d M=%d K=%d", N, M, K);
    cmp(what, ref, d, (size_t)M * K, TOL_BF16);
    free(ref);
    gpu->free(gpu, da), gpu->free(gpu, db), gpu->free(gpu, ddout), gpu->free(gpu, d);
}

/* ---- row ops ----------------------------------------------------------------------------- */

static void test_rmsnorm(int N, int C) {
    char what[64];
    float *x = randv((size_t)N * C, 2.0f), *w = randv((size_t)C, 1.0f); /* w: a model tensor (host) */
    float *dx = up(x, (size_t)N * C);
    float *ref = calloc((size_t)N * C, sizeof(float)), *rstd = calloc((size_t)N, sizeof(float));
    float *d = up(ref, (size_t)N * C), *drstd = up(rstd, (size_t)N);
    cpu->rmsnorm_fwd(cpu, ref, rstd, x, w, N, C, 1e-5f);
    gpu->rmsnorm_fwd(gpu, d, drstd, dx, w, N, C, 1e-5f);
    snprintf(what, sizeof what, "rmsnorm_fwd N=%d C=%d", N, C);
    cmp(what, ref, d, (size_t)N * C, TOL_F32);
    cmp("rmsnorm_fwd rstd", rstd, drstd, (size_t)N, TOL_F32);
    gpu->rmsnorm_fwd(gpu, d, NULL, dx, w, N, C, 1e-5f); /* rstd may be NULL */
    cmp("rmsnorm_fwd without rstd", ref, d, (size_t)N * C, TOL_F32);
    float *g = randv((size_t)N * C, 1.0f), *dg = up(g, (size_t)N * C);
    float *gx = randv((size_t)N * C, 1.0f), *dgx = up(gx, (size_t)N * C);
    cpu->rmsnorm_bwd(cpu, gx, g, x, w, rstd, N, C);
    gpu->rmsnorm_bwd(gpu, dgx, dg, dx, w, drstd, N, C);
    snprintf(what, sizeof what, "rmsnorm_bwd N=%d C=%d", N, C);
    cmp(what, gx, dgx, (size_t)N * C, TOL_F32);
    free(ref), free(rstd);
    gpu->free(gpu, dx), gpu->free(gpu, d), gpu->free(gpu, drstd), gpu->free(gpu, dg), gpu->free(gpu, dgx);
}

static void test_rope(int B, int T, int nh, int hd) {
    const int half = hd / 2;
    const size_t n = (size_t)B * T * nh * hd;
    float *cs = malloc(sizeof(float) * (size_t)T * half), *sn = malloc(sizeof(float) * (size_t)T * half);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < half; i++) {
            float a = (float)t * powf(10000.0f, -2.0f * i / hd);
            cs[t * half + i] = cosf(a), sn[t * half + i] = sinf(a);
        }
    float *dcs = up(cs, (size_t)T * half), *dsn = up(sn, (size_t)T * half);
    float *x = randv(n, 1.0f), *dx = up(x, n);
    cpu->rope_fwd(cpu, x, cs, sn, B, T, nh, hd);
    gpu->rope_fwd(gpu, dx, dcs, dsn, B, T, nh, hd);
    cmp("rope_fwd", x, dx, n, TOL_F32);
    cpu->rope_bwd(cpu, x, cs, sn, B, T, nh, hd);
    gpu->rope_bwd(gpu, dx, dcs, dsn, B, T, nh, hd);
    cmp("rope_bwd", x, dx, n, TOL_F32);
    free(cs), free(sn);
    gpu->free(gpu, dcs), gpu->free(gpu, dsn), gpu->free(gpu, dx);
}

static void test_swiglu(int N, int H) {
    const size_t n = (size_t)N * H;
    float *gate = randv(n, 4.0f), *upv = randv(n, 2.0f), *dgate_in = up(gate, n), *dup_in = up(upv, n);
    float *ref = calloc(n, sizeof(float)), *d = up(ref, n);
    cpu->swiglu_fwd(cpu, ref, gate, upv, N, H);
    gpu->swiglu_fwd(gpu, d, dgate_in, dup_in, N, H);
    cmp("swiglu_fwd", ref, d, n, TOL_F32);
    float *g = randv(n, 1.0f), *dg = up(g, n);
    float *rg = randv(n, 1.0f), *ru = randv(n, 1.0f), *drg = up(rg, n), *dru = up(ru, n);
    cpu->swiglu_bwd(cpu, rg, ru, g, gate, upv, N, H);
    gpu->swiglu_bwd(gpu, drg, dru, dg, dgate_in, dup_in, N, H);
    cmp("swiglu_bwd dgate", rg, drg, n, TOL_F32);
    cmp("swiglu_bwd dup", ru, dru, n, TOL_F32);
    free(ref);
    gpu->free(gpu, dgate_in), gpu->free(gpu, dup_in), gpu->free(gpu, d), gpu->free(gpu, dg);
    gpu->free(gpu, drg), gpu->free(gpu, dru);
}

static void test_pool(int N, int C, int gs) {
    char what[64];
    const int G = (C + gs - 1) / gs;
    float *x = randv((size_t)N * C, 1.0f), *dx = up(x, (size_t)N * C);
    float *ref = calloc((size_t)N * G, sizeof(float)), *d = up(ref, (size_t)N * G);
    cpu->group_pool_fwd(cpu, ref, x, N, C, gs);
    gpu->group_pool_fwd(gpu, d, dx, N, C, gs);
    snprintf(what, sizeof what, "group_pool_fwd N=%d C=%d gs=%d", N, C, gs);
    cmp(what, ref, d, (size_t)N * G, TOL_F32);
    float *g = randv((size_t)N * G, 1.0f), *dg = up(g, (size_t)N * G);
    float *gi = randv((size_t)N * C, 1.0f), *dgi = up(gi, (size_t)N * C);
    cpu->group_pool_bwd(cpu, gi, g, N, C, gs);
    gpu->group_pool_bwd(gpu, dgi, dg, N, C, gs);
    snprintf(what, sizeof what, "group_pool_bwd N=%d C=%d gs=%d", N, C, gs);
    cmp(what, gi, dgi, (size_t)N * C, TOL_F32);
    free(ref);
    gpu->free(gpu, dx), gpu->free(gpu, d), gpu->free(gpu, dg), gpu->free(gpu, dgi);
}

/* ---- attention ------------------------------------------------------------------------------ */

/* Training shape (pos0 = 0, Tk_max = T, probabilities saved) forward and backward. */
static void test_attention(int B, int T, int nh, int nkv, int hd) {
    char what[96];
    const size_t nq = (size_t)B * T * nh * hd, nk = (size_t)B * T * nkv * hd, na = (size_t)B * nh * T * T;
    float *q = randv(nq, 1.0f), *k = randv(nk, 1.0f), *v = randv(nk, 1.0f);
    float *dq_in = up(q, nq), *dk_in = up(k, nk), *dv_in = up(v, nk);
    float *ref = calloc(nq, sizeof(float)), *att = calloc(na, sizeof(float));
    float *d = up(ref, nq), *datt = up(att, na);
    cpu->attention_fwd(cpu, ref, att, q, k, v, B, T, 0, T, nh, nkv, hd);
    gpu->attention_fwd(gpu, d, datt, dq_in, dk_in, dv_in, B, T, 0, T, nh, nkv, hd);
    snprintf(what, sizeof what, "attention_fwd B=%d T=%d nh=%d nkv=%d hd=%d", B, T, nh, nkv, hd);
    cmp(what, ref, d, nq, TOL_BF16);
    snprintf(what, sizeof what, "attention_fwd probabilities B=%d T=%d nh=%d nkv=%d", B, T, nh, nkv);
    cmp(what, att, datt, na, TOL_BF16);
    /* backward from the CPU's probabilities on both sides, so only the backward differs */
    gpu->upload(gpu, datt, att, sizeof(float) * na, &(rq_err){0});
    float *g = randv(nq, 1.0f), *dg = up(g, nq);
    float *gq = randv(nq, 1.0f), *gk = randv(nk, 1.0f), *gv = randv(nk, 1.0f);
    float *dgq = up(gq, nq), *dgk = up(gk, nk), *dgv = up(gv, nk);
    cpu->attention_bwd(cpu, gq, gk, gv, g, att, q, k, v, B, T, nh, nkv, hd);
    gpu->attention_bwd(gpu, dgq, dgk, dgv, dg, datt, dq_in, dk_in, dv_in, B, T, nh, nkv, hd);
    snprintf(what, sizeof what, "attention_bwd dq B=%d T=%d nh=%d nkv=%d", B, T, nh, nkv);
    cmp(what, gq, dgq, nq, TOL_BF16);
    snprintf(what, sizeof what, "attention_bwd dk B=%d T=%d nh=%d nkv=%d", B, T, nh, nkv);
    cmp(what, gk, dgk, nk, TOL_BF16);
    snprintf(what, sizeof what, "attention_bwd dv B=%d T=%d nh=%d nkv=%d", B, T, nh, nkv);
    cmp(what, gv, dgv, nk, TOL_BF16);
    free(ref), free(att);
    gpu->free(gpu, dq_in), gpu->free(gpu, dk_in), gpu->free(gpu, dv_in), gpu->free(gpu, d), gpu->free(gpu, datt);
    gpu->free(gpu, dg), gpu->free(gpu, dgq), gpu->free(gpu, dgk), gpu->free(gpu, dgv);
}

/* Decoding shape: T new queries at pos0 > 0 against a cache of Tk_max rows, no probabilities. */
static void test_attention_cached(int B, int T, int pos0, int Tk_max, int nh, int nkv, int hd) {
    char what[96];
    const size_t nq = (size_t)B * T * nh * hd, nk = (size_t)B * Tk_max * nkv * hd;
    float *q = randv(nq, 1.0f), *k = randv(nk, 1.0f), *v = randv(nk, 1.0f);
    float *dq_in = up(q, nq), *dk_in = up(k, nk), *dv_in = up(v, nk);
    float *ref = calloc(nq, sizeof(float)), *d = up(ref, nq);
    cpu->attention_fwd(cpu, ref, NULL, q, k, v, B, T, pos0, Tk_max, nh, nkv, hd);
    gpu->attention_fwd(gpu, d, NULL, dq_in, dk_in, dv_in, B, T, pos0, Tk_max, nh, nkv, hd);
    snprintf(what, sizeof what, "attention_fwd cached B=%d T=%d pos0=%d Tk_max=%d nh=%d nkv=%d", B, T, pos0, Tk_max,
             nh, nkv);
    cmp(what, ref, d, nq, TOL_BF16);
    free(ref);
    gpu->free(gpu, dq_in), gpu->free(gpu, dk_in), gpu->free(gpu, dv_in), gpu->free(gpu, d);
}

/* ---- losses and optimizer ---------------------------------------------------------------------- */

static void test_losses(int N, int V) {
    float *logits = randv((size_t)N * V, 6.0f), *dl = up(logits, (size_t)N * V);
    int *targets = malloc(sizeof(int) * (size_t)N);
    for (int i = 0; i < N; i++) targets[i] = i % 7 == 3 ? -1 : (int)(rq_rng_u64(&rng) % V);
    targets[0] = V - 1;
    float *loss_c = calloc((size_t)N, sizeof(float)), *loss_g = calloc((size_t)N, sizeof(float));
    float *gref = randv((size_t)N * V, 1.0f), *dgrad = up(gref, (size_t)N * V);
    cpu->cross_entropy(cpu, loss_c, gref, logits, targets, N, V, 0.37f);
    gpu->cross_entropy(gpu, loss_g, dgrad, dl, targets, N, V, 0.37f);
    cmp_host("cross_entropy loss", loss_c, loss_g, (size_t)N, TOL_F32);
    cmp("cross_entropy dlogits", gref, dgrad, (size_t)N * V, TOL_F32);
    memset(loss_g, 0, sizeof(float) * (size_t)N);
    gpu->cross_entropy(gpu, loss_g, NULL, dl, targets, N, V, 0.37f); /* value only */
    cmp_host("cross_entropy loss (no gradient)", loss_c, loss_g, (size_t)N, TOL_F32);
    /* in place: dlogits overwrite the logits (forward.c does this) */
    float *inplace = copyv(logits, (size_t)N * V), *dinplace = up(logits, (size_t)N * V);
    cpu->cross_entropy(cpu, loss_c, inplace, inplace, targets, N, V, 0.5f);
    gpu->cross_entropy(gpu, loss_g, dinplace, dinplace, targets, N, V, 0.5f);
    cmp("cross_entropy in place", inplace, dinplace, (size_t)N * V, TOL_F32);

    const size_t n = (size_t)N * 96 + 5;
    float *a = randv(n, 1.0f), *b = randv(n, 1.0f), *da = up(a, n), *db = up(b, n);
    float *d = randv(n, 1.0f), *dd = up(d, n);
    double sc = cpu->mse(cpu, d, a, b, n, 0.25f), sg = gpu->mse(gpu, dd, da, db, n, 0.25f);
    cmp_double("mse value", sc, sg, 1e-6);
    cmp("mse gradient", d, dd, n, TOL_F32);
    cmp_double("mse value (no gradient)", sc, gpu->mse(gpu, NULL, da, db, n, 0.0f), 1e-6);
    free(loss_c), free(loss_g), free(gref), free(targets), free(inplace);
    gpu->free(gpu, dl), gpu->free(gpu, dgrad), gpu->free(gpu, dinplace), gpu->free(gpu, da), gpu->free(gpu, db);
    gpu->free(gpu, dd);
}

static void test_adam(bool decoupled) {
    const size_t n = 1001;
    float *p = randv(n, 1.0f), *m = calloc(n, sizeof(float)), *v = calloc(n, sizeof(float));
    float *p0 = copyv(p, n);
    float *dp = up(p, n), *dm = up(m, n), *dv = up(v, n);
    for (int t = 1; t <= 3; t++) {
        float *g = randv(n, 0.1f), *dg = up(g, n);
        if (decoupled) {
            cpu->adamw(cpu, p, g, m, v, n, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, t);
            gpu->adamw(gpu, dp, dg, dm, dv, n, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, t);
        } else {
            cpu->adam_l2(cpu, p, g, m, v, n, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, t);
            gpu->adam_l2(gpu, dp, dg, dm, dv, n, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, t);
        }
        gpu->free(gpu, dg);
    }
    /* the updates (p - p0), not the parameters, so a wrong step cannot hide under |p| */
    float *gp = down(dp, n);
    for (size_t i = 0; i < n; i++) gp[i] -= p0[i], p[i] -= p0[i];
    cmp_host(decoupled ? "adamw update" : "adam_l2 update", p, gp, n, TOL_F32);
    cmp(decoupled ? "adamw m" : "adam_l2 m", m, dm, n, TOL_F32);
    cmp(decoupled ? "adamw v" : "adam_l2 v", v, dv, n, TOL_F32);
    free(gp), free(m), free(v), free(p0);
    gpu->free(gpu, dp), gpu->free(gpu, dm), gpu->free(gpu, dv);
}

int main(void) {
    rq_err err = {0};
    /* RILQ_GPU_TEST_DEVICE=cpu runs the harness against a second CPU backend (a self-check
       of the test where there is no GPU) */
    const char *dev = getenv("RILQ_GPU_TEST_DEVICE") ? getenv("RILQ_GPU_TEST_DEVICE") : "cuda";
    if (rq_backend_create(dev, 0, &gpu, &err) != RQ_OK) {
        /* no GPU (or a build without CUDA) is not missing data: skipped even under CI */
        printf("SKIPPED: cuda backend unavailable: %s\n", err.msg);
        return 77;
    }
    CHECK_OK(rq_backend_cpu_create(0, &cpu, &err), &err);
    if (!cpu) return rq_test_finish();
    rq_rng_seed(&rng, 2024);

    test_memory();
    test_gathers();
    test_linear(37, 172, 96, 0);
    test_linear(129, 96, 172, 0);
    test_linear(37, 172, 96, 64);   /* one group of 64, one of 32 */
    test_linear(129, 96, 172, 64);  /* 64, 64, 44 */
    test_linear(37, 33, 172, 32);   /* five of 32, one of 12; odd out */
    test_linear(5, 250, 96, 0);     /* the head: vocabulary not a multiple of 32 */
    test_linear(1, 172, 96, 64);    /* one row (decoding) */
    test_matmuls(37, 29, 172);
    test_matmuls(129, 64, 3);       /* a QA-LoRA A: 3 pooled groups */
    test_matmuls(1, 7, 5);
    test_rmsnorm(37, 172);
    test_rmsnorm(1, 96);
    test_rope(2, 37, 3, 16);
    test_rope(1, 129, 8, 64);
    test_swiglu(37, 172);
    test_pool(37, 172, 64);
    test_pool(129, 172, 32);
    test_pool(3, 40, 64);           /* a single short group */
    const int gqa[][2] = {{4, 4}, {4, 2}, {6, 2}, {8, 1}};
    for (int i = 0; i < 4; i++) {
        test_attention(2, 37, gqa[i][0], gqa[i][1], 16);
        test_attention(1, 129, gqa[i][0], gqa[i][1], 16);
    }
    test_attention(1, 129, 4, 2, 64);
    test_attention(3, 1, 6, 2, 16); /* T = 1 */
    test_attention_cached(2, 3, 5, 40, 6, 2, 16);
    test_attention_cached(1, 1, 128, 129, 8, 1, 64);
    test_losses(37, 250);
    test_losses(129, 32000);
    test_adam(true);
    test_adam(false);

    rq_backend_destroy(gpu);
    rq_backend_destroy(cpu);
    return rq_test_finish();
}
