/* The CPU backend's training ops against double precision.
 *
 * Every backward op is checked against central finite differences of its
 * forward computed in DOUBLE by plain reference loops written here: the loss
 * L(x) = sum_i dout_i * f_i(x) with random dout, so dL/dx is exactly what the
 * op must add into its gradient. Gradient buffers start with random contents,
 * and (after - before) is compared, which also checks the += contract.
 * Sizes are awkward on purpose: odd widths, T = 7, GQA ratios 1, 2 and 3,
 * ragged pooling groups (C = 172 with gs 64 and 32).
 *
 * Tolerance for gradients: max |analytic - numeric| <= 1e-4 * max |numeric|.
 * The op runs in fp32 (sums of up to a few hundred terms: relative rounding
 * ~1e-6), the finite difference in double with h = 1e-6 (truncation ~1e-12,
 * cancellation ~1e-10), so 1e-4 leaves a wide margin yet catches any wrong
 * term (those show up at the 1e-1 level). */
#include <math.h>

#include "backend/backend.h"
#include "backend/ops_math.h"
#include "quant/q2.h"
#include "test.h"
#include "train/loss.h"
#include "train/optim.h"

#define TOL_GRAD 1e-4
#define FD_STEP 1e-6

static rq_backend *be;
static rq_rng rng;

static float *randv(size_t n, float scale) {
    float *x = malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) x[i] = scale * (2.0f * rq_rng_uniform(&rng) - 1.0f);
    return x;
}
static double *to_double(const float *x, size_t n) {
    double *d = malloc(sizeof(double) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) d[i] = x[i];
    return d;
}
static float *copyv(const float *x, size_t n) {
    float *c = malloc(sizeof(float) * (n ? n : 1));
    memcpy(c, x, sizeof(float) * n);
    return c;
}

/* L(x) in double for the op under test */
typedef double (*ref_loss_fn)(const void *ctx, const double *x);

/* Central differences of L over the n entries of x (x restored afterwards). */
static double *numeric_grad(ref_loss_fn f, const void *ctx, double *x, size_t n) {
    double *g = malloc(sizeof(double) * n);
    for (size_t i = 0; i < n; i++) {
        double x0 = x[i];
        x[i] = x0 + FD_STEP;
        double lp = f(ctx, x);
        x[i] = x0 - FD_STEP;
        double lm = f(ctx, x);
        x[i] = x0;
        g[i] = (lp - lm) / (2.0 * FD_STEP);
    }
    return g;
}

/* (after - before) vs numeric, within TOL_GRAD of the largest numeric entry */
static void check_grad(const char *what, const float *after, const float *before, const double *numeric, size_t n) {
    double max_err = 0.0, max_ref = 0.0;
    for (size_t i = 0; i < n; i++) {
        double a = (double)after[i] - (before ? (double)before[i] : 0.0);
        double e = fabs(a - numeric[i]);
        if (e > max_err) max_err = e;
        if (fabs(numeric[i]) > max_ref) max_ref = fabs(numeric[i]);
    }
    CHECKF(max_ref > 0.0, "%s: numeric gradient is all zero (test is vacuous)", what);
    CHECKF(max_err <= TOL_GRAD * max_ref, "%s: max |analytic - numeric| = %.3g, max |numeric| = %.3g", what, max_err,
           max_ref);
}

/* ---- linear_bwd_input, matmul_tn_acc --------------------------------------------- */

typedef struct {
    int N, out, in;
    const double *W;    /* [out][in] */
    const double *x;    /* [N][in] (when differentiating W) */
    const double *dout; /* [N][out] */
} linear_ctx;

static double linear_loss_wrt_x(const void *vctx, const double *x) {
    const linear_ctx *c = vctx;
    double L = 0.0;
    for (int n = 0; n < c->N; n++)
        for (int o = 0; o < c->out; o++) {
            double y = 0.0;
            for (int i = 0; i < c->in; i++) y += x[(size_t)n * c->in + i] * c->W[(size_t)o * c->in + i];
            L += c->dout[(size_t)n * c->out + o] * y;
        }
    return L;
}
static double linear_loss_wrt_w(const void *vctx, const double *W) {
    linear_ctx c = *(const linear_ctx *)vctx;
    const double *x = c.x;
    c.W = W;
    return linear_loss_wrt_x(&c, x);
}

static rq_q2_tensor *random_q2(int out, int in, int gs) {
    rq_err err = {0};
    rq_q2_tensor *t = NULL;
    if (rq_q2_create(out, in, gs, RQ_Q2_INT2, &t, &err) != RQ_OK) return NULL;
    for (int o = 0; o < out; o++) {
        for (int i = 0; i < in; i++) rq_q2_set_code(t, o, i, (int)(rq_rng_u64(&rng) & 3));
        for (int g = 0; g < t->n_groups; g++) {
            t->scales[(size_t)o * t->n_groups + g] = rq_f32_to_f16(0.05f + 0.1f * rq_rng_uniform(&rng));
            t->offsets[(size_t)o * t->n_groups + g] = rq_f32_to_f16(-0.15f + 0.1f * rq_rng_uniform(&rng));
        }
    }
    return t;
}

static void test_linear_bwd_input(int N, int out, int in, int gs, bool finite_differences) {
    char what[96];
    snprintf(what, sizeof what, "linear_bwd_input N=%d out=%d in=%d %s", N, out, in, gs ? "q2" : "fp32");
    rq_linear W = {.out = out, .in = in};
    float *wf = NULL;
    double *wd = malloc(sizeof(double) * (size_t)out * in);
    if (gs) {
        W.q2 = random_q2(out, in, gs);
        CHECK(W.q2 != NULL);
        if (!W.q2) return;
        for (int o = 0; o < out; o++)
            for (int i = 0; i < in; i++) wd[(size_t)o * in + i] = rq_q2_weight(W.q2, o, i);
    } else {
        wf = randv((size_t)out * in, 0.5f);
        W.w = wf;
        for (size_t i = 0; i < (size_t)out * in; i++) wd[i] = wf[i];
    }
    float *x = randv((size_t)N * in, 1.0f), *dout = randv((size_t)N * out, 1.0f);
    float *din = randv((size_t)N * in, 1.0f), *din0 = copyv(din, (size_t)N * in);
    be->linear_bwd_input(be, din, dout, &W, N);
    double *xd = to_double(x, (size_t)N * in), *doutd = to_double(dout, (size_t)N * out);
    linear_ctx c = {N, out, in, wd, NULL, doutd};
    double *g;
    if (finite_differences) {
        g = numeric_grad(linear_loss_wrt_x, &c, xd, (size_t)N * in);
    } else {
        /* large shapes (several dequantization tiles): the exact gradient of a
         * linear map, dout W, in double, is what the differences converge to */
        g = calloc((size_t)N * in, sizeof(double));
        for (int n = 0; n < N; n++)
            for (int o = 0; o < out; o++)
                for (int i = 0; i < in; i++) g[(size_t)n * in + i] += doutd[(size_t)n * out + o] * wd[(size_t)o * in + i];
    }
    check_grad(what, din, din0, g, (size_t)N * in);
    free(g), free(xd), free(doutd), free(x), free(dout), free(din), free(din0), free(wd), free(wf);
    rq_q2_free(W.q2);
}

static void test_matmul_tn_acc(int N, int M, int K) {
    float *x = randv((size_t)N * K, 1.0f), *dout = randv((size_t)N * M, 1.0f), *w = randv((size_t)M * K, 1.0f);
    float *dW = randv((size_t)M * K, 1.0f), *dW0 = copyv(dW, (size_t)M * K);
    be->matmul_tn_acc(be, dW, dout, x, N, M, K);
    double *xd = to_double(x, (size_t)N * K), *doutd = to_double(dout, (size_t)N * M), *wd = to_double(w, (size_t)M * K);
    linear_ctx c = {N, M, K, NULL, xd, doutd};
    double *g = numeric_grad(linear_loss_wrt_w, &c, wd, (size_t)M * K);
    check_grad("matmul_tn_acc", dW, dW0, g, (size_t)M * K);
    free(g), free(xd), free(doutd), free(wd), free(x), free(dout), free(w), free(dW), free(dW0);
}

/* ---- rmsnorm ------------------------------------------------------------------------- */

typedef struct {
    int N, C;
    double eps;
    const double *w, *dout;
} rms_ctx;

static double rms_loss(const void *vctx, const double *x) {
    const rms_ctx *c = vctx;
    double L = 0.0;
    for (int n = 0; n < c->N; n++) {
        const double *xr = x + (size_t)n * c->C;
        double ss = 0.0;
        for (int i = 0; i < c->C; i++) ss += xr[i] * xr[i];
        double r = 1.0 / sqrt(ss / c->C + c->eps);
        for (int i = 0; i < c->C; i++) L += c->dout[(size_t)n * c->C + i] * c->w[i] * xr[i] * r;
    }
    return L;
}

static void test_rmsnorm_bwd(int N, int C) {
    const float eps = 1e-5f;
    float *x = randv((size_t)N * C, 1.0f), *w = randv(C, 1.0f), *dout = randv((size_t)N * C, 1.0f);
    float *out = malloc(sizeof(float) * N * C), *rstd = malloc(sizeof(float) * N);
    be->rmsnorm_fwd(be, out, rstd, x, w, N, C, eps);
    float *dx = randv((size_t)N * C, 1.0f), *dx0 = copyv(dx, (size_t)N * C);
    be->rmsnorm_bwd(be, dx, dout, x, w, rstd, N, C);
    double *xd = to_double(x, (size_t)N * C), *wd = to_double(w, C), *dd = to_double(dout, (size_t)N * C);
    rms_ctx c = {N, C, eps, wd, dd};
    double *g = numeric_grad(rms_loss, &c, xd, (size_t)N * C);
    check_grad("rmsnorm_bwd", dx, dx0, g, (size_t)N * C);
    free(g), free(xd), free(wd), free(dd), free(x), free(w), free(dout), free(out), free(rstd), free(dx), free(dx0);
}

/* ---- rope ---------------------------------------------------------------------------- */

typedef struct {
    int B, T, nh, hd;
    const float *cos_t, *sin_t;
    const double *dout;
} rope_ctx;

static double rope_loss(const void *vctx, const double *x) {
    const rope_ctx *c = vctx;
    int half = c->hd / 2;
    double L = 0.0;
    for (int b = 0; b < c->B; b++)
        for (int t = 0; t < c->T; t++)
            for (int h = 0; h < c->nh; h++) {
                size_t base = (((size_t)b * c->T + t) * c->nh + h) * c->hd;
                for (int i = 0; i < half; i++) {
                    double cs = c->cos_t[(size_t)t * half + i], sn = c->sin_t[(size_t)t * half + i];
                    double a = x[base + i], bb = x[base + i + half];
                    L += c->dout[base + i] * (a * cs - bb * sn) + c->dout[base + i + half] * (bb * cs + a * sn);
                }
            }
    return L;
}

static void test_rope_bwd(int B, int T, int nh, int hd) {
    int half = hd / 2;
    size_t n = (size_t)B * T * nh * hd;
    float *cos_t = malloc(sizeof(float) * T * half), *sin_t = malloc(sizeof(float) * T * half);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < half; i++) {
            double ang = t * pow(10000.0, -2.0 * i / hd);
            cos_t[t * half + i] = (float)cos(ang), sin_t[t * half + i] = (float)sin(ang);
        }
    float *x = randv(n, 1.0f), *dx = randv(n, 1.0f);
    double *dd = to_double(dx, n), *xd = to_double(x, n);
    be->rope_bwd(be, dx, cos_t, sin_t, B, T, nh, hd); /* in place: the result is the gradient itself */
    rope_ctx c = {B, T, nh, hd, cos_t, sin_t, dd};
    double *g = numeric_grad(rope_loss, &c, xd, n);
    check_grad("rope_bwd", dx, NULL, g, n);
    /* rope_bwd undoes rope_fwd: a rotation's transpose is its inverse */
    float *y = copyv(x, n);
    be->rope_fwd(be, y, cos_t, sin_t, B, T, nh, hd);
    be->rope_bwd(be, y, cos_t, sin_t, B, T, nh, hd);
    double max_diff = 0.0;
    for (size_t i = 0; i < n; i++) max_diff = fmax(max_diff, fabs((double)y[i] - x[i]));
    CHECKF(max_diff < 1e-6, "rope_bwd(rope_fwd(x)) differs from x by %.3g", max_diff); /* fp32 rounding of |x| <= 1 */
    free(g), free(xd), free(dd), free(x), free(dx), free(cos_t), free(sin_t), free(y);
}

/* ---- attention ------------------------------------------------------------------------- */

typedef struct {
    int B, T, nh, nkv, hd;
    const double *dout;
} att_ctx;

/* x = [q | k | v]: q [B][T][nh][hd], k and v [B][T][nkv][hd] */
static double att_loss(const void *vctx, const double *x) {
    const att_ctx *c = vctx;
    const int B = c->B, T = c->T, nh = c->nh, nkv = c->nkv, hd = c->hd, group = nh / nkv;
    const double *q = x, *k = q + (size_t)B * T * nh * hd, *v = k + (size_t)B * T * nkv * hd;
    double L = 0.0, p[192]; /* T <= 192 */
    for (int b = 0; b < B; b++)
        for (int h = 0; h < nh; h++)
            for (int t = 0; t < T; t++) {
                const double *qt = q + (((size_t)b * T + t) * nh + h) * hd;
                double mx = -INFINITY, sum = 0.0;
                for (int j = 0; j <= t; j++) {
                    const double *kj = k + (((size_t)b * T + j) * nkv + h / group) * hd;
                    double s = 0.0;
                    for (int i = 0; i < hd; i++) s += qt[i] * kj[i];
                    p[j] = s / sqrt((double)hd);
                    mx = fmax(mx, p[j]);
                }
                for (int j = 0; j <= t; j++) sum += (p[j] = exp(p[j] - mx));
                for (int i = 0; i < hd; i++) {
                    double o = 0.0;
                    for (int j = 0; j <= t; j++) o += p[j] / sum * v[(((size_t)b * T + j) * nkv + h / group) * hd + i];
                    L += c->dout[(((size_t)b * T + t) * nh + h) * hd + i] * o;
                }
            }
    return L;
}

static void test_attention_bwd(int B, int T, int nh, int nkv, int hd) {
    char what[96];
    snprintf(what, sizeof what, "attention_bwd B=%d T=%d nh=%d nkv=%d hd=%d", B, T, nh, nkv, hd);
    size_t nq = (size_t)B * T * nh * hd, nk = (size_t)B * T * nkv * hd, ntot = nq + 2 * nk;
    float *x = randv(ntot, 1.0f), *q = x, *k = x + nq, *v = x + nq + nk;
    float *dout = randv(nq, 1.0f), *out = malloc(sizeof(float) * nq);
    float *att = malloc(sizeof(float) * (size_t)B * nh * T * T);
    be->attention_fwd(be, out, att, q, k, v, B, T, 0, T, nh, nkv, hd);
    float *dx = randv(ntot, 1.0f), *dx0 = copyv(dx, ntot);
    be->attention_bwd(be, dx, dx + nq, dx + nq + nk, dout, att, q, k, v, B, T, nh, nkv, hd);
    double *xd = to_double(x, ntot), *dd = to_double(dout, nq);
    att_ctx c = {B, T, nh, nkv, hd, dd};
    double *g = numeric_grad(att_loss, &c, xd, ntot);
    char part[128];
    snprintf(part, sizeof part, "%s dq", what);
    check_grad(part, dx, dx0, g, nq);
    snprintf(part, sizeof part, "%s dk", what);
    check_grad(part, dx + nq, dx0 + nq, g + nq, nk);
    snprintf(part, sizeof part, "%s dv", what);
    check_grad(part, dx + nq + nk, dx0 + nq + nk, g + nq + nk, nk);
    free(g), free(xd), free(dd), free(x), free(dout), free(out), free(att), free(dx), free(dx0);
}

/* The blocked forward (blocks of RQ_CPU_ATTENTION_BLOCK queries that skip the
 * masked keys) continuing a cache: the last T - pos0 queries run at pos0 > 0
 * against the keys of a cache longer than the sequence give the rows of the
 * whole run, and both match a double-precision reference. */
static void test_attention_fwd_blocks(int T, int pos0, int nh, int nkv, int hd) {
    const int Tmax = T + 5, group = nh / nkv;
    size_t nq = (size_t)T * nh * hd, nk = (size_t)Tmax * nkv * hd;
    float *q = randv(nq, 1.0f), *k = randv(nk, 1.0f), *v = randv(nk, 1.0f);
    float *full = malloc(sizeof(float) * nq), *tail = malloc(sizeof(float) * nq);
    be->attention_fwd(be, full, NULL, q, k, v, 1, T, 0, Tmax, nh, nkv, hd);
    be->attention_fwd(be, tail, NULL, q + (size_t)pos0 * nh * hd, k, v, 1, T - pos0, pos0, Tmax, nh, nkv, hd);
    double worst_ref = 0.0, worst_tail = 0.0, p[512];
    for (int h = 0; h < nh; h++)
        for (int t = 0; t < T; t++) {
            const float *qt = q + ((size_t)t * nh + h) * hd;
            double mx = -INFINITY, sum = 0.0;
            for (int j = 0; j <= t; j++) {
                double sc = 0.0;
                for (int i = 0; i < hd; i++) sc += (double)qt[i] * k[((size_t)j * nkv + h / group) * hd + i];
                p[j] = sc / sqrt((double)hd);
                mx = fmax(mx, p[j]);
            }
            for (int j = 0; j <= t; j++) sum += (p[j] = exp(p[j] - mx));
            for (int i = 0; i < hd; i++) {
                double o = 0.0;
                for (int j = 0; j <= t; j++) o += p[j] / sum * v[((size_t)j * nkv + h / group) * hd + i];
                const size_t at = ((size_t)t * nh + h) * hd + i;
                worst_ref = fmax(worst_ref, fabs(full[at] - o));
                if (t >= pos0) worst_tail = fmax(worst_tail, fabs(tail[at - (size_t)pos0 * nh * hd] - full[at]));
            }
        }
    /* fp32 scores and sums over <= T terms of size ~1 */
    CHECKF(worst_ref < 2e-5, "attention_fwd T=%d: %.3g from the double reference", T, worst_ref);
    CHECKF(worst_tail < 2e-5, "attention_fwd T=%d from pos0=%d: %.3g from the whole run", T, pos0, worst_tail);
    free(q), free(k), free(v), free(full), free(tail);
}

/* rq_expf (the vectorizable exp of the CPU loops) against libm's expf: <= 2 ulp
 * over the range the losses and activations use, 0 below -87, inf above 88.72,
 * NaN through. */
static void test_expf(void) {
    double worst = 0.0;
    for (float x = -87.0f; x <= 88.0f; x += 0.001953125f) {
        float want = expf(x), got = rq_expf(x);
        double ulp = fabs((double)got - want) / (nextafterf(want, INFINITY) - want);
        worst = fmax(worst, ulp);
    }
    CHECKF(worst <= 2.0, "rq_expf: %.2f ulp from expf", worst);
    CHECK(rq_expf(0.0f) == 1.0f);
    CHECK(rq_expf(-100.0f) == 0.0f && rq_expf(-INFINITY) == 0.0f);
    CHECK(isinf(rq_expf(89.0f)) && isinf(rq_expf(INFINITY)));
    CHECK(isnan(rq_expf(NAN)));
}

/* ---- swiglu, group pooling ---------------------------------------------------------------- */

typedef struct {
    size_t n;
    int N, C, gs;
    const double *dout;
} elem_ctx;

/* x = [gate | up] */
static double swiglu_loss(const void *vctx, const double *x) {
    const elem_ctx *c = vctx;
    double L = 0.0;
    for (size_t i = 0; i < c->n; i++) L += c->dout[i] * x[i] / (1.0 + exp(-x[i])) * x[c->n + i];
    return L;
}

static void test_swiglu_bwd(int N, int H) {
    size_t n = (size_t)N * H;
    float *x = randv(2 * n, 3.0f), *dout = randv(n, 1.0f);
    float *dx = randv(2 * n, 1.0f), *dx0 = copyv(dx, 2 * n);
    be->swiglu_bwd(be, dx, dx + n, dout, x, x + n, N, H);
    double *xd = to_double(x, 2 * n), *dd = to_double(dout, n);
    elem_ctx c = {n, N, H, 0, dd};
    double *g = numeric_grad(swiglu_loss, &c, xd, 2 * n);
    check_grad("swiglu_bwd", dx, dx0, g, 2 * n);
    free(g), free(xd), free(dd), free(x), free(dout), free(dx), free(dx0);
}

static double pool_loss(const void *vctx, const double *x) {
    const elem_ctx *c = vctx;
    int G = (c->C + c->gs - 1) / c->gs;
    double L = 0.0;
    for (int n = 0; n < c->N; n++)
        for (int g = 0; g < G; g++) {
            int i0 = g * c->gs, i1 = i0 + c->gs < c->C ? i0 + c->gs : c->C;
            double s = 0.0;
            for (int i = i0; i < i1; i++) s += x[(size_t)n * c->C + i];
            L += c->dout[(size_t)n * G + g] * s / (i1 - i0);
        }
    return L;
}

static void test_group_pool(int N, int C, int gs) {
    char what[64];
    snprintf(what, sizeof what, "group_pool C=%d gs=%d", C, gs);
    int G = (C + gs - 1) / gs;
    float *x = randv((size_t)N * C, 1.0f), *pooled = malloc(sizeof(float) * N * G);
    be->group_pool_fwd(be, pooled, x, N, C, gs);
    double max_diff = 0.0;
    for (int n = 0; n < N; n++)
        for (int g = 0; g < G; g++) {
            int i0 = g * gs, i1 = i0 + gs < C ? i0 + gs : C;
            double s = 0.0;
            for (int i = i0; i < i1; i++) s += x[(size_t)n * C + i];
            max_diff = fmax(max_diff, fabs(s / (i1 - i0) - pooled[n * G + g])); /* mean over real members */
        }
    CHECKF(max_diff < 1e-6, "%s forward: max diff %.3g", what, max_diff); /* fp32 mean of |x| <= 1 */
    float *dout = randv((size_t)N * G, 1.0f), *dx = randv((size_t)N * C, 1.0f), *dx0 = copyv(dx, (size_t)N * C);
    be->group_pool_bwd(be, dx, dout, N, C, gs);
    double *xd = to_double(x, (size_t)N * C), *dd = to_double(dout, (size_t)N * G);
    elem_ctx c = {0, N, C, gs, dd};
    double *g = numeric_grad(pool_loss, &c, xd, (size_t)N * C);
    check_grad(what, dx, dx0, g, (size_t)N * C);
    free(g), free(xd), free(dd), free(x), free(pooled), free(dout), free(dx), free(dx0);
}

/* ---- losses ---------------------------------------------------------------------------------- */

typedef struct {
    int N, V;
    const int *targets;
    double scale;
} ce_ctx;

static double ce_loss(const void *vctx, const double *z) {
    const ce_ctx *c = vctx;
    double L = 0.0;
    for (int n = 0; n < c->N; n++) {
        if (c->targets[n] < 0) continue;
        const double *zr = z + (size_t)n * c->V;
        double mx = -INFINITY, s = 0.0;
        for (int i = 0; i < c->V; i++) mx = fmax(mx, zr[i]);
        for (int i = 0; i < c->V; i++) s += exp(zr[i] - mx);
        L += c->scale * (mx + log(s) - zr[c->targets[n]]);
    }
    return L;
}

static void test_cross_entropy(void) {
    const int N = 6, V = 11;
    const int targets[6] = {3, -1, 0, 10, -100, 7};
    const float scale = 0.25f;
    float *z = randv((size_t)N * V, 4.0f), *loss = malloc(sizeof(float) * N), *dz = randv((size_t)N * V, 1.0f);
    be->cross_entropy(be, loss, dz, z, targets, N, V, scale);
    double *zd = to_double(z, (size_t)N * V);
    ce_ctx c = {N, V, targets, scale};
    double *g = numeric_grad(ce_loss, &c, zd, (size_t)N * V);
    check_grad("cross_entropy dlogits", dz, NULL, g, (size_t)N * V); /* overwrite, not += */
    for (int n = 0; n < N; n++) {
        ce_ctx one = {1, V, targets + n, 1.0};
        double ref = ce_loss(&one, zd + (size_t)n * V);
        /* fp32 log-sum-exp of 11 terms after max subtraction: a few ulps of ~5 */
        CHECK_NEAR(loss[n], ref, 2e-6 * fmax(1.0, fabs(ref)));
    }
    free(g), free(zd), free(z), free(loss), free(dz);
}

typedef struct {
    size_t n;
    const double *b;
    double scale;
} mse_ctx;

static double mse_loss(const void *vctx, const double *a) {
    const mse_ctx *c = vctx;
    double L = 0.0;
    for (size_t i = 0; i < c->n; i++) L += c->scale * (a[i] - c->b[i]) * (a[i] - c->b[i]);
    return L;
}

static void test_mse(void) {
    const size_t n = 37;
    const float scale = 0.5f / 37.0f;
    float *a = randv(n, 1.0f), *b = randv(n, 1.0f), *d = randv(n, 1.0f), *d0 = copyv(d, n);
    double sum = be->mse(be, d, a, b, n, scale);
    double *ad = to_double(a, n), *bd = to_double(b, n);
    mse_ctx c = {n, bd, scale};
    CHECK_NEAR(sum * scale, mse_loss(&c, ad), 1e-12); /* both accumulate in double */
    double *g = numeric_grad(mse_loss, &c, ad, n);
    check_grad("mse d", d, d0, g, n);
    CHECK_NEAR(be->mse(be, NULL, a, b, n, 1.0f), sum, 0.0);
    free(g), free(ad), free(bd), free(a), free(b), free(d), free(d0);
}

static void test_loss_wrappers(void) {
    rq_err err = {0};
    const int N = 5, V = 9;
    const int targets[5] = {1, -1, 8, 0, -1};
    int64_t count = 0;
    CHECK_OK(rq_loss_count_targets(targets, N, V, &count, &err), &err);
    CHECK(count == 3);
    const int bad[2] = {1, 9};
    CHECK(rq_loss_count_targets(bad, 2, V, &count, &err) == RQ_ERR_ARG);
    CHECK(strstr(err.msg, "position 1") != NULL);

    /* mean over counted tokens, gradient of weight * mean */
    float *z = randv((size_t)N * V, 2.0f), *dz = malloc(sizeof(float) * N * V), *rows = malloc(sizeof(float) * N);
    double sum = 0.0;
    CHECK_OK(rq_loss_cross_entropy(be, z, targets, N, V, 3, 0.5, dz, rows, &sum, &err), &err);
    double *zd = to_double(z, (size_t)N * V);
    ce_ctx c = {N, V, targets, 1.0};
    CHECK_NEAR(sum / 3.0, ce_loss(&c, zd) / 3.0, 1e-5); /* fp32 row losses of size ~3 */
    c.scale = 0.5 / 3.0;
    double *g = numeric_grad(ce_loss, &c, zd, (size_t)N * V);
    check_grad("rq_loss_cross_entropy dlogits", dz, NULL, g, (size_t)N * V);
    CHECK(rq_loss_cross_entropy(be, z, targets, N, V, 0, 0.5, dz, rows, &sum, &err) == RQ_ERR_ARG);

    float *a = randv(12, 1.0f), *b = randv(12, 1.0f), *d = calloc(12, sizeof(float));
    double sq = 0.0;
    CHECK_OK(rq_loss_mse(be, a, b, 12, 12, 0.5, d, &sq, &err), &err);
    double ref = 0.0;
    for (int i = 0; i < 12; i++) ref += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
    CHECK_NEAR(sq, ref, 1e-12);
    CHECK_NEAR(d[5], 0.5 / 12.0 * 2.0 * ((double)a[5] - b[5]), 1e-7);

    const double losses[2] = {2.0, 4.0}, weights[2] = {0.5, 0.5};
    CHECK_NEAR(rq_loss_weighted_sum(losses, weights, 2), 3.0, 0.0);
    free(z), free(dz), free(rows), free(zd), free(g), free(a), free(b), free(d);
}

/* ---- optimizer --------------------------------------------------------------------------------- */

/* torch's Adam / AdamW in double, written from the definition */
static void adam_ref(double *p, const double *g_in, double *m, double *v, size_t n, double lr, double b1, double b2,
                     double eps, double wd, bool decoupled, int t) {
    for (size_t i = 0; i < n; i++) {
        double g = g_in[i];
        if (decoupled) p[i] *= 1.0 - lr * wd;
        else g += wd * p[i];
        m[i] = b1 * m[i] + (1.0 - b1) * g;
        v[i] = b2 * v[i] + (1.0 - b2) * g * g;
        double mhat = m[i] / (1.0 - pow(b1, t));
        double denom = sqrt(v[i]) / sqrt(1.0 - pow(b2, t)) + eps;
        p[i] -= lr * mhat / denom;
    }
}

static void test_adam_two_steps(bool decoupled, float wd) {
    const size_t n = 9;
    const float lr = 1e-2f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
    float *p = randv(n, 1.0f), *m = calloc(n, sizeof(float)), *v = calloc(n, sizeof(float));
    double *pd = to_double(p, n), *md = calloc(n, sizeof(double)), *vd = calloc(n, sizeof(double));
    for (int t = 1; t <= 2; t++) {
        float *g = randv(n, 1.0f);
        double *gd = to_double(g, n);
        if (decoupled) be->adamw(be, p, g, m, v, n, lr, b1, b2, eps, wd, t);
        else be->adam_l2(be, p, g, m, v, n, lr, b1, b2, eps, wd, t);
        adam_ref(pd, gd, md, vd, n, lr, b1, b2, eps, wd, decoupled, t);
        free(g), free(gd);
    }
    /* params ~1, steps ~lr: fp32 rounding of the update and of p is ~1e-7 */
    for (size_t i = 0; i < n; i++) {
        CHECK_NEAR(p[i], pd[i], 5e-7);
        CHECK_NEAR(m[i], md[i], 1e-6 * fmax(1.0, fabs(md[i])));
        CHECK_NEAR(v[i], vd[i], 1e-6 * fmax(1.0, fabs(vd[i])));
    }
    free(p), free(m), free(v), free(pd), free(md), free(vd);
}

static bool read_floats(FILE *f, const char *tag, float *x, int n) {
    char word[32];
    if (fscanf(f, "%31s", word) != 1 || strcmp(word, tag) != 0) return false;
    for (int i = 0; i < n; i++)
        if (fscanf(f, "%f", &x[i]) != 1) return false;
    return true;
}

/* Trajectories generated once by torch.optim.Adam / AdamW
 * (tests/data/gen_adam_torch_expect.py). */
static void test_adam_vs_torch(void) {
    FILE *f = fopen("data/adam_torch_expect.txt", "r");
    CHECKF(f != NULL, "tests/data/adam_torch_expect.txt not found (tests run from tests/)");
    if (!f) return;
    int cases = 0, n = 0, steps = 0, c;
    while ((c = fgetc(f)) == '#')
        while ((c = fgetc(f)) != '\n' && c != EOF) {}
    ungetc(c, f);
    CHECK(fscanf(f, " cases %d n %d steps %d", &cases, &n, &steps) == 3 && n > 0 && n <= 64);
    double max_diff = 0.0;
    int compared = 0;
    for (int k = 0; k < cases; k++) {
        char name[16];
        float lr = 0, wd = 0, p[64], g[64], expect[64], m[64] = {0}, v[64] = {0};
        if (fscanf(f, " case %15s lr %f wd %f", name, &lr, &wd) != 3 || !read_floats(f, "p0", p, n)) break;
        for (int s = 1; s <= steps; s++) {
            char gt[16], pt[16];
            snprintf(gt, sizeof gt, "g%d", s), snprintf(pt, sizeof pt, "p%d", s);
            if (!read_floats(f, gt, g, n) || !read_floats(f, pt, expect, n)) break;
            if (strcmp(name, "adamw") == 0) be->adamw(be, p, g, m, v, n, lr, 0.9f, 0.999f, 1e-8f, wd, s);
            else be->adam_l2(be, p, g, m, v, n, lr, 0.9f, 0.999f, 1e-8f, wd, s);
            for (int i = 0; i < n; i++) max_diff = fmax(max_diff, fabs((double)p[i] - expect[i]));
            compared++;
        }
    }
    fclose(f);
    CHECKF(compared == cases * steps && compared > 0, "read %d of %d torch steps", compared, cases * steps);
    /* Same operation order as torch; the constants 1 - beta and lr arrive as
     * fp32 here and as Python doubles there, which moves results by an ulp or
     * two of |p| <= 1 (6e-8 each). */
    CHECKF(max_diff <= 2.5e-7, "max |p - p_torch| = %.3g", max_diff);
    printf("adam vs torch: max |p - p_torch| = %.3g over %d steps\n", max_diff, compared);
}

static void test_clip_and_optim(void) {
    rq_err err = {0};
    float g[4] = {3.0f, 0.0f, -4.0f, 0.0f};
    CHECK_NEAR(rq_grad_norm(be, g, 4), 5.0, 1e-12);
    double norm = rq_grad_clip(be, g, 4, 1.0);
    CHECK_NEAR(norm, 5.0, 1e-12);
    CHECK_NEAR(g[0], 3.0 / (5.0 + 1e-6), 1e-7); /* torch: max_norm / (norm + 1e-6) */
    CHECK_NEAR(g[2], -4.0 / (5.0 + 1e-6), 1e-7);
    float h[2] = {0.3f, 0.4f};
    rq_grad_clip(be, h, 2, 1.0);
    CHECK(h[0] == 0.3f && h[1] == 0.4f); /* below the limit: untouched */

    /* rq_optim_step = clip + the op; state save/load resumes bit-identically */
    const size_t n = 10;
    rq_optim_config cfg = rq_optim_defaults(RQ_OPTIM_ADAMW);
    cfg.max_grad_norm = 0.5f;
    rq_optim *o = NULL, *o2 = NULL;
    CHECK_OK(rq_optim_create(be, n, &cfg, &o, &err), &err);
    CHECK_OK(rq_optim_create(be, n, &cfg, &o2, &err), &err);
    if (!o || !o2) return;
    float *p = randv(n, 1.0f), *grads[4];
    for (int s = 0; s < 4; s++) grads[s] = randv(n, 2.0f);
    float *gtmp = malloc(sizeof(float) * n);
    for (int s = 0; s < 2; s++) {
        memcpy(gtmp, grads[s], sizeof(float) * n);
        double gn = 0.0;
        CHECK_OK(rq_optim_step(o, p, gtmp, 1e-2, &gn, &err), &err);
        CHECK(gn > 0.5);
        CHECK_NEAR(rq_grad_norm(be, gtmp, n), 0.5, 1e-6); /* clipped to max_grad_norm */
    }
    size_t bytes = rq_optim_state_bytes(o);
    unsigned char *state = malloc(bytes);
    CHECK_OK(rq_optim_state_save(o, state, bytes, &err), &err);
    float *p_saved = copyv(p, n);
    for (int s = 2; s < 4; s++) {
        memcpy(gtmp, grads[s], sizeof(float) * n);
        CHECK_OK(rq_optim_step(o, p, gtmp, 1e-2, NULL, &err), &err);
    }
    CHECK_OK(rq_optim_state_load(o2, state, bytes, &err), &err);
    CHECK(o2->step == 2);
    for (int s = 2; s < 4; s++) {
        memcpy(gtmp, grads[s], sizeof(float) * n);
        CHECK_OK(rq_optim_step(o2, p_saved, gtmp, 1e-2, NULL, &err), &err);
    }
    CHECK(memcmp(p, p_saved, sizeof(float) * n) == 0);
    state[0] ^= 1;
    CHECK(rq_optim_state_load(o2, state, bytes, &err) == RQ_ERR_FORMAT);
    state[0] ^= 1;
    CHECK(rq_optim_state_load(o2, state, bytes - 4, &err) == RQ_ERR_FORMAT);
    rq_optim *o3 = NULL;
    rq_optim_config adam = rq_optim_defaults(RQ_OPTIM_ADAM);
    CHECK_OK(rq_optim_create(be, n, &adam, &o3, &err), &err);
    CHECK(o3 && rq_optim_state_load(o3, state, bytes, &err) == RQ_ERR_FORMAT && strstr(err.msg, "adamw"));
    rq_optim_free(o3);
    for (int s = 0; s < 4; s++) free(grads[s]);
    free(p), free(p_saved), free(gtmp), free(state);
    rq_optim_free(o);
    rq_optim_free(o2);
}

static void test_schedules(void) {
    rq_schedule s = {RQ_SCHED_CONSTANT, 1e-3, 10, 110};
    CHECK_NEAR(rq_schedule_lr(&s, 0), 0.0, 0.0); /* transformers: the first warmup step runs at 0 */
    CHECK_NEAR(rq_schedule_lr(&s, 5), 5e-4, 1e-15);
    CHECK_NEAR(rq_schedule_lr(&s, 10), 1e-3, 1e-15);
    CHECK_NEAR(rq_schedule_lr(&s, 1000), 1e-3, 1e-15);
    s.kind = RQ_SCHED_LINEAR;
    CHECK_NEAR(rq_schedule_lr(&s, 10), 1e-3, 1e-15);
    CHECK_NEAR(rq_schedule_lr(&s, 60), 5e-4, 1e-15);
    CHECK_NEAR(rq_schedule_lr(&s, 110), 0.0, 1e-15);
    CHECK_NEAR(rq_schedule_lr(&s, 200), 0.0, 0.0);
    s.kind = RQ_SCHED_COSINE;
    CHECK_NEAR(rq_schedule_lr(&s, 3), 3e-4, 1e-15);
    CHECK_NEAR(rq_schedule_lr(&s, 10), 1e-3, 1e-15);
    CHECK_NEAR(rq_schedule_lr(&s, 35), 1e-3 * 0.5 * (1.0 + cos(3.14159265358979323846 * 0.25)), 1e-15);
    CHECK_NEAR(rq_schedule_lr(&s, 60), 5e-4, 1e-15);
    CHECK_NEAR(rq_schedule_lr(&s, 110), 0.0, 1e-15);
    CHECK_NEAR(rq_schedule_lr(&s, 150), 0.0, 1e-15); /* stays at 0 past the end */
    rq_schedule nowarm = {RQ_SCHED_LINEAR, 2e-4, 0, 4};
    CHECK_NEAR(rq_schedule_lr(&nowarm, 0), 2e-4, 1e-15);
    CHECK_NEAR(rq_schedule_lr(&nowarm, 1), 1.5e-4, 1e-15);
    rq_err err = {0};
    rq_schedule_kind k;
    CHECK(rq_schedule_kind_parse("cosine", &k, &err) == RQ_OK && k == RQ_SCHED_COSINE);
    CHECK(rq_schedule_kind_parse("step", &k, &err) == RQ_ERR_ARG);
}

int main(void) {
    rq_err err = {0};
    CHECK_OK(rq_backend_cpu_create(0, &be, &err), &err);
    if (!be) return rq_test_finish();
    rq_rng_seed(&rng, 1234);

    test_linear_bwd_input(5, 13, 37, 0, true);
    test_linear_bwd_input(3, 37, 172, 64, true);  /* q2, ragged last group */
    test_linear_bwd_input(2, 400, 172, 64, false); /* q2 over two dequantization tiles */
    test_matmul_tn_acc(7, 5, 13);
    test_rmsnorm_bwd(3, 37);
    test_rope_bwd(2, 7, 3, 8);
    test_attention_bwd(2, 7, 2, 2, 4); /* GQA ratio 1 */
    test_attention_bwd(2, 7, 4, 2, 4); /* ratio 2 */
    test_attention_bwd(1, 7, 6, 2, 6); /* ratio 3 */
    test_attention_bwd(1, 7, 3, 1, 5); /* one KV head, odd head dim */
    test_attention_bwd(2, 37, 6, 2, 4); /* T >= 32: the GEMM path, ratio 3 */
    test_attention_bwd(1, 33, 2, 2, 3); /* GEMM path, ratio 1 */
    test_attention_bwd(1, 150, 3, 1, 4); /* three blocks of queries, the last one ragged */
    test_attention_fwd_blocks(150, 0, 3, 1, 8);
    test_attention_fwd_blocks(150, 70, 6, 2, 8); /* a cache continued inside a block */
    test_attention_fwd_blocks(200, 128, 2, 2, 16); /* ... at a block boundary */
    test_expf();
    test_swiglu_bwd(3, 13);
    test_group_pool(3, 172, 64);
    test_group_pool(3, 172, 32);
    test_group_pool(2, 37, 64); /* one group shorter than gs */
    test_cross_entropy();
    test_mse();
    test_loss_wrappers();
    test_adam_two_steps(true, 0.0f);
    test_adam_two_steps(true, 0.05f);
    test_adam_two_steps(false, 0.0f);
    test_adam_two_steps(false, 0.1f);
    test_adam_vs_torch();
    test_clip_and_optim();
    test_schedules();

    rq_backend_destroy(be);
    return rq_test_finish();
}
