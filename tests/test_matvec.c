/* The decode matrix-vector kernels (src/backend/cpu_matvec.c): every variant
 * this CPU runs (portable C, AVX2, AVX-512) against the dequantize-then-dot
 * product in double, on odd shapes (ragged last groups such as stories260K's
 * 172-wide down_proj, rows that are no multiple of a vector, group sizes that
 * straddle bytes), M = 1..9 activation rows; each weight as a kernel uses it
 * is the reference dequantization's bit for bit (one-hot inputs); results do
 * not depend on the thread count; accumulate adds exactly the fresh result.
 * Exact compact copies of fp32 matrices (int8 blocks, bf16, fp16) give the
 * fp32 kernels' results bit for bit, and the backend drops its copies when a
 * model is unbound or rebound. */
#include <math.h>

#include "backend/cpu_matvec.h"
#include "quant/q2.h"
#include "test.h"

static rq_rng rng = {0};
static uint64_t next_u64(void) { return rq_rng_u64(&rng); }
/* uniform in [-1, 1) */
static float uniform(void) { return 2.0f * rq_rng_uniform(&rng) - 1.0f; }

/* A q2 tensor with random codes (padding codes stay 0) and random fp16 scales
 * and offsets over several magnitudes, both signs. */
static rq_q2_tensor *random_q2(int out, int in, int gs, rq_q2_codebook_kind kind) {
    rq_err err = {0};
    rq_q2_tensor *t = NULL;
    CHECK_OK(rq_q2_create(out, in, gs, kind, &t, &err), &err);
    if (!t) return NULL;
    for (int r = 0; r < out; r++)
        for (int c = 0; c < in; c++) rq_q2_set_code(t, r, c, (int)(next_u64() & 3));
    for (size_t i = 0; i < (size_t)out * (size_t)t->n_groups; i++) {
        float mag = (float)ldexp(1.0, (int)(next_u64() % 12) - 10);
        t->scales[i] = rq_f32_to_f16(uniform() * mag);
        t->offsets[i] = rq_f32_to_f16(uniform() * mag);
    }
    return t;
}

static float *random_vec(size_t n) {
    float *v = malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) v[i] = uniform();
    return v;
}

/* Error bound of an fp32 dot product of n terms summed in any order, with or
 * without fused multiply-adds: |err| <= gamma(n + 1) * sum |w x|, gamma(k) =
 * k u / (1 - k u), u = 2^-24 (each term passes through at most n additions and
 * one multiplication rounding). Plus the final rounding of the double reference
 * to compare against: covered by the +1. */
static double dot_bound(int n, double abs_sum) {
    const double u = ldexp(1.0, -24), k = (double)n + 2.0;
    return k * u / (1.0 - k * u) * abs_sum + 1e-30;
}

/* Check y[M][ldy] (out columns) against the double dot products of w[out][in] (the
 * reference weights) with x[M][in]; returns the number of outputs outside the bound. */
static int check_against_double(const float *w, int out, int in, const float *x, int M, const float *y, int ldy,
                                const char *what) {
    int bad = 0;
    for (int mi = 0; mi < M; mi++)
        for (int o = 0; o < out; o++) {
            double ref = 0.0, abs_sum = 0.0;
            for (int i = 0; i < in; i++) {
                double p = (double)w[(size_t)o * in + i] * (double)x[(size_t)mi * in + i];
                ref += p;
                abs_sum += fabs(p);
            }
            double got = y[(size_t)mi * ldy + o];
            if (!(fabs(got - ref) <= dot_bound(in, abs_sum))) {
                if (bad < 3)
                    fprintf(stderr, "%s: row %d out %d: %.9g vs double %.9g (bound %.3g)\n", what, mi, o, got, ref,
                            dot_bound(in, abs_sum));
                bad++;
            }
        }
    return bad;
}

typedef struct shape {
    int out, in, gs;
} shape;

static const shape shapes[] = {
    {37, 172, 64},   /* stories260K down_proj: groups of 64, 64 and 44 */
    {64, 576, 64},   /* SmolLM2 q_proj width */
    {33, 64, 64},    /* one whole group */
    {40, 1536, 64},  /* SmolLM2 down_proj width */
    {19, 100, 32},   /* groups of 32, a ragged 4 */
    {23, 300, 128},  /* groups of 128 and a ragged 44 */
    {16, 90, 12},    /* groups of 12: whole bytes, no whole vector */
    {17, 50, 10},    /* groups of 10 straddle bytes */
    {3, 7, 64},      /* narrower than a group and a byte-ragged row */
    {1, 5, 3},
    {70, 4160, 64},  /* more groups than one table batch (65) */
    {130, 4160, 64}, /* large enough to be split over threads */
};

static void test_q2_shape(const shape *sh, rq_q2_codebook_kind kind) {
    rq_q2_tensor *t = random_q2(sh->out, sh->in, sh->gs, kind);
    if (!t) return;
    float *w = malloc(sizeof(float) * (size_t)sh->out * sh->in);
    rq_q2_dequant(t, w, 1); /* the reference weights */
    const int max_m = 9, ldy = sh->out + 3;
    float *x = random_vec((size_t)max_m * sh->in);
    float *y = malloc(sizeof(float) * (size_t)max_m * ldy), *y2 = malloc(sizeof(float) * (size_t)max_m * ldy);
    float *y0 = random_vec((size_t)max_m * ldy);
    char what[128];
    for (int isa = 0; isa < RQ_MATVEC_N_ISA; isa++) {
        if (!rq_matvec_isa_supported((rq_matvec_isa)isa)) continue;
        for (int M = 1; M <= max_m; M++) {
            snprintf(what, sizeof what, "q2 %s %dx%d gs %d %s M=%d", rq_matvec_isa_name((rq_matvec_isa)isa), sh->out,
                     sh->in, sh->gs, rq_q2_codebook_name(kind), M);
            rq_q2_matvec((rq_matvec_isa)isa, t, x, M, y, ldy, false, 1);
            CHECKF(check_against_double(w, sh->out, sh->in, x, M, y, ldy, what) == 0, "%s", what);
            /* the same bits on 2 and 3 threads */
            for (int nt = 2; nt <= 3; nt++) {
                rq_q2_matvec((rq_matvec_isa)isa, t, x, M, y2, ldy, false, nt);
                int diff = 0;
                for (int mi = 0; mi < M; mi++)
                    for (int o = 0; o < sh->out; o++) diff += y2[(size_t)mi * ldy + o] != y[(size_t)mi * ldy + o];
                CHECKF(diff == 0, "%s: %d outputs differ on %d threads", what, diff, nt);
            }
            /* accumulate: y0 + the fresh result, exactly; columns past out untouched */
            memcpy(y2, y0, sizeof(float) * (size_t)M * ldy);
            rq_q2_matvec((rq_matvec_isa)isa, t, x, M, y2, ldy, true, 1);
            int diff = 0;
            for (int mi = 0; mi < M; mi++)
                for (int o = 0; o < ldy; o++) {
                    size_t k = (size_t)mi * ldy + o;
                    diff += o < sh->out ? y2[k] != y0[k] + y[k] : y2[k] != y0[k];
                }
            CHECKF(diff == 0, "%s: accumulate differs at %d outputs", what, diff);
        }
        /* each weight as the kernel uses it: one-hot inputs pick single columns,
           4 per call (M = 4), and must give the reference weights bit for bit */
        if ((long long)sh->out * sh->in <= 100000) {
            int diff = 0;
            float *hot = calloc((size_t)4 * sh->in, sizeof(float));
            for (int c0 = 0; c0 < sh->in; c0 += 4) {
                int n = sh->in - c0 < 4 ? sh->in - c0 : 4;
                memset(hot, 0, sizeof(float) * 4 * (size_t)sh->in);
                for (int k = 0; k < n; k++) hot[(size_t)k * sh->in + c0 + k] = 1.0f;
                rq_q2_matvec((rq_matvec_isa)isa, t, hot, n, y, ldy, false, 1);
                for (int k = 0; k < n; k++)
                    for (int o = 0; o < sh->out; o++) diff += y[(size_t)k * ldy + o] != w[(size_t)o * sh->in + c0 + k];
            }
            CHECKF(diff == 0, "q2 %s %dx%d gs %d: %d weights differ from rq_q2_dequant",
                   rq_matvec_isa_name((rq_matvec_isa)isa), sh->out, sh->in, sh->gs, diff);
            free(hot);
        }
    }
    free(w), free(x), free(y), free(y2), free(y0);
    rq_q2_free(t);
}

/* The SIMD variants and the portable one agree within twice the bound (each is within it of the exact value). */
static void test_variants_agree(void) {
    rq_q2_tensor *t = random_q2(200, 576, 64, RQ_Q2_INT2);
    if (!t) return;
    float *x = random_vec(576), ys[RQ_MATVEC_N_ISA][200];
    float *w = malloc(sizeof(float) * 200 * 576);
    rq_q2_dequant(t, w, 1);
    for (int isa = 0; isa < RQ_MATVEC_N_ISA; isa++)
        if (rq_matvec_isa_supported((rq_matvec_isa)isa))
            rq_q2_matvec((rq_matvec_isa)isa, t, x, 1, ys[isa], 200, false, 0);
    int bad = 0, compared = 0;
    for (int isa = 1; isa < RQ_MATVEC_N_ISA; isa++) {
        if (!rq_matvec_isa_supported((rq_matvec_isa)isa)) continue;
        compared++;
        for (int o = 0; o < 200; o++) {
            double abs_sum = 0;
            for (int i = 0; i < 576; i++) abs_sum += fabs((double)w[o * 576 + i] * x[i]);
            bad += !(fabs((double)ys[isa][o] - ys[0][o]) <= 2 * dot_bound(576, abs_sum));
        }
    }
    printf("matvec variants on this CPU: best %s, %d SIMD variant(s) compared with the portable loop\n",
           rq_matvec_isa_name(rq_matvec_isa_best()), compared);
    CHECKF(bad == 0, "%d outputs of a SIMD variant differ from the portable loop beyond the bound", bad);
    free(x), free(w);
    rq_q2_free(t);
}

static void test_f32_shape(int out, int in) {
    float *w = random_vec((size_t)out * in);
    const int max_m = 6, ldy = out + 1;
    float *x = random_vec((size_t)max_m * in);
    float *y = malloc(sizeof(float) * (size_t)max_m * ldy), *y2 = malloc(sizeof(float) * (size_t)max_m * ldy);
    char what[96];
    for (int isa = 0; isa < RQ_MATVEC_N_ISA; isa++) {
        if (!rq_matvec_isa_supported((rq_matvec_isa)isa)) continue;
        for (int M = 1; M <= max_m; M++) {
            snprintf(what, sizeof what, "f32 %s %dx%d M=%d", rq_matvec_isa_name((rq_matvec_isa)isa), out, in, M);
            rq_f32_matvec((rq_matvec_isa)isa, w, out, in, x, M, y, ldy, false, 1);
            CHECKF(check_against_double(w, out, in, x, M, y, ldy, what) == 0, "%s", what);
            rq_f32_matvec((rq_matvec_isa)isa, w, out, in, x, M, y2, ldy, false, 2);
            int diff = 0;
            for (int mi = 0; mi < M; mi++)
                for (int o = 0; o < out; o++) diff += y2[(size_t)mi * ldy + o] != y[(size_t)mi * ldy + o];
            CHECKF(diff == 0, "%s: %d outputs differ on 2 threads", what, diff);
        }
    }
    free(w), free(x), free(y), free(y2);
}

/* A matrix whose every block of 32 is d * q with an fp16 d and int8 q (as a
 * GGUF Q8_0 tensor dequantized in fp32), or bf16 / fp16 values, or plain fp32. */
static float *dense_values(int out, int in, rq_dense_kind kind) {
    float *w = random_vec((size_t)out * in);
    for (size_t b = 0; kind == RQ_DENSE_I8 && b < (size_t)out * in / 32; b++) {
        float d = rq_f16_to_f32(rq_f32_to_f16(0.01f + 0.001f * (float)(b % 17)));
        for (int i = 0; i < 32; i++) w[b * 32 + i] = d * (float)((int)(next_u64() % 255) - 127);
        w[b * 32 + b % 32] = (b & 1 ? -127.0f : 127.0f) * d; /* Q8_0's d = max|w| / 127: some |q| is 127 */
    }
    for (size_t i = 0; i < (size_t)out * in; i++) {
        if (kind == RQ_DENSE_BF16) w[i] = rq_bf16_to_f32(rq_f32_to_bf16(w[i]));
        if (kind == RQ_DENSE_F16) w[i] = rq_f16_to_f32(rq_f32_to_f16(w[i]));
    }
    return w;
}

/* Exact compact copies: the expected kind for each kind of values, and the
 * kernels on a copy give the fp32 kernels' results bit for bit (the same
 * weights in the same summation order), at any M and thread count. */
static void test_dense_compact(int out, int in) {
    rq_err err = {0};
    for (int kind = RQ_DENSE_F32; kind <= RQ_DENSE_F16; kind++) {
        float *w = dense_values(out, in, (rq_dense_kind)kind);
        rq_dense_matrix cm;
        CHECK_OK(rq_dense_compact(w, out, in, &cm, &err), &err);
        /* int8 blocks need whole blocks of 32; bf16 values are also fp16 values only by chance */
        rq_dense_kind want = kind == RQ_DENSE_I8 && in % 32 ? RQ_DENSE_F32 : (rq_dense_kind)kind;
        if (kind == RQ_DENSE_I8 && in % 32) want = cm.kind; /* whatever 16-bit form fits, or fp32 */
        CHECKF(cm.kind == want, "%dx%d values of kind %s compacted to %s", out, in,
               rq_dense_kind_name((rq_dense_kind)kind), rq_dense_kind_name(cm.kind));
        CHECK((cm.kind == RQ_DENSE_F32) == (cm.owned == NULL) && (cm.kind != RQ_DENSE_F32 || cm.w == w));
        const int ldy = out;
        float *x = random_vec((size_t)5 * in), *a = malloc(sizeof(float) * 5 * out), *b = malloc(sizeof(float) * 5 * out);
        for (int isa = 0; isa < RQ_MATVEC_N_ISA; isa++) {
            if (!rq_matvec_isa_supported((rq_matvec_isa)isa)) continue;
            for (int M = 1; M <= 5; M++) {
                rq_f32_matvec((rq_matvec_isa)isa, w, out, in, x, M, a, ldy, false, 1);
                rq_dense_matvec((rq_matvec_isa)isa, &cm, x, M, b, ldy, false, 2);
                CHECKF(memcmp(a, b, sizeof(float) * (size_t)M * out) == 0, "%s copy (%s, %dx%d, M=%d) differs from fp32",
                       rq_dense_kind_name(cm.kind), rq_matvec_isa_name((rq_matvec_isa)isa), out, in, M);
            }
        }
        free(x), free(a), free(b), free(w);
        rq_dense_free(&cm);
    }
    /* -0.0 is not d * q (that gives +0.0): no int8 copy */
    float *w = dense_values(out, in, RQ_DENSE_I8);
    w[0] = -0.0f;
    rq_dense_matrix cm;
    CHECK_OK(rq_dense_compact(w, out, in, &cm, &err), &err);
    CHECK(cm.kind != RQ_DENSE_I8);
    rq_dense_free(&cm);
    free(w);
}

/* The backend keeps compact copies only of bound weights, and drops them when
 * the model is unbound (last binding) or rebound (its arrays rewritten). */
static void test_decode_cache(void) {
    rq_err err = {0};
    rq_backend *be = NULL;
    CHECK_OK(rq_backend_cpu_create(0, &be, &err), &err);
    if (!be || !be->linear_rows) return;
    const int out = 1024, in = 512; /* 2 MiB of fp32: above the size worth a copy */
    float *w = dense_values(out, in, RQ_DENSE_BF16);
    rq_linear L = {.out = out, .in = in, .w = w};
    float *x = random_vec(in), *ref = malloc(sizeof(float) * out), *y = malloc(sizeof(float) * out);
    int key; /* any address serves as the model's key */
    rq_weight_span span = {w, sizeof(float) * (size_t)out * in};
    CHECK_OK(be->bind_weights(be, (const struct rq_model *)&key, &span, 1, &err), &err);
    CHECK_OK(be->bind_weights(be, (const struct rq_model *)&key, &span, 1, &err), &err); /* bindings nest */
    rq_f32_matvec(rq_matvec_isa_best(), w, out, in, x, 1, ref, out, false, 0);
    be->linear_rows(be, y, x, &L, 1, false);
    CHECK(memcmp(ref, y, sizeof(float) * out) == 0);
    be->unbind_weights(be, (const struct rq_model *)&key); /* still bound once: the copy stays valid */
    be->linear_rows(be, y, x, &L, 1, false);
    CHECK(memcmp(ref, y, sizeof(float) * out) == 0);
    /* rewritten and rebound: the next call reads the new values */
    for (int i = 0; i < in; i++) w[i] = rq_bf16_to_f32(rq_f32_to_bf16(2.0f * w[i] + 1.0f));
    CHECK_OK(be->rebind_weights(be, (const struct rq_model *)&key, &span, 1, &err), &err);
    rq_f32_matvec(rq_matvec_isa_best(), w, out, in, x, 1, ref, out, false, 0);
    be->linear_rows(be, y, x, &L, 1, false);
    CHECKF(memcmp(ref, y, sizeof(float) * out) == 0, "linear_rows after a rebind reads stale weights");
    /* unbound: no copy; rewritten values (no longer bf16) are read as they are */
    be->unbind_weights(be, (const struct rq_model *)&key);
    for (int i = 0; i < in; i++) w[i] += 1e-3f;
    rq_f32_matvec(rq_matvec_isa_best(), w, out, in, x, 1, ref, out, false, 0);
    be->linear_rows(be, y, x, &L, 1, false);
    CHECKF(memcmp(ref, y, sizeof(float) * out) == 0, "linear_rows after the last unbind reads a stale copy");
    free(w), free(x), free(ref), free(y);
    rq_backend_destroy(be);
}

/* The backend op: linear_rows agrees with linear (the GEMM path) for fp32 and q2 weights. */
static void test_backend_op(void) {
    rq_err err = {0};
    rq_backend *be = NULL;
    CHECK_OK(rq_backend_cpu_create(0, &be, &err), &err);
    if (!be) return;
    CHECK(be->linear_rows != NULL);
    rq_q2_tensor *t = random_q2(150, 172, 64, RQ_Q2_INT2);
    float *wf = malloc(sizeof(float) * 150 * 172);
    if (t) rq_q2_dequant(t, wf, 1);
    rq_linear lq = {.out = 150, .in = 172, .q2 = t}, lf = {.out = 150, .in = 172, .w = wf};
    float *x = random_vec(4 * 172), a[4 * 150], b[4 * 150];
    for (int which = 0; t && be->linear_rows && which < 2; which++) {
        const rq_linear *L = which ? &lf : &lq;
        for (int N = 1; N <= RQ_LINEAR_ROWS_MAX; N++) {
            be->linear(be, a, x, L, N, false);
            be->linear_rows(be, b, x, L, N, false);
            CHECKF(check_against_double(wf, 150, 172, x, N, b, 150, "linear_rows") == 0, "%s N=%d",
                   which ? "fp32" : "q2", N);
            CHECKF(check_against_double(wf, 150, 172, x, N, a, 150, "linear") == 0, "%s N=%d", which ? "fp32" : "q2",
                   N);
        }
    }
    free(x), free(wf);
    rq_q2_free(t);
    rq_backend_destroy(be);
}

int main(void) {
    rq_rng_seed(&rng, 20261203);
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        test_q2_shape(&shapes[i], RQ_Q2_INT2);
        test_q2_shape(&shapes[i], RQ_Q2_NF2);
    }
    test_variants_agree();
    test_f32_shape(49, 576);
    test_f32_shape(13, 172);
    test_f32_shape(5, 7);
    test_f32_shape(70, 1000);
    test_f32_shape(600, 1000); /* split over threads */
    test_dense_compact(40, 576);
    test_dense_compact(13, 172);
    test_dense_compact(3, 7);
    test_decode_cache();
    test_backend_op();
    return rq_test_finish();
}
