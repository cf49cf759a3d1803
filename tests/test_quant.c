/* The q2 tensor and the quantizers: packing, dequantization paths against the
 * defining formula, RTN / NF2 error bounds, the clipping search, fake-quant
 * import, the randomized SVD against a Jacobi reference, and LoftQ. */
#include "test.h"

#include <stdint.h>

#include "core/core.h"
#include "quant/loftq.h"
#include "quant/q2.h"
#include "quant/quantize.h"
#include "quant/svd.h"

/* ---- helpers ------------------------------------------------------------------ */

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;
static uint64_t next_u64(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}
static double uniform(void) { return ((double)(next_u64() >> 11) + 0.5) * 0x1.0p-53; }
static double gaussian(void) { return sqrt(-2.0 * log(uniform())) * cos(6.283185307179586 * uniform()); }
static float round_f16(float x) { return rq_f16_to_f32(rq_f32_to_f16(x)); }
static float round_bf16(float x) { return rq_bf16_to_f32(rq_f32_to_bf16(x)); }

static float *gaussian_matrix(int rows, int cols, double sigma) {
    float *w = malloc((size_t)rows * cols * sizeof *w);
    for (size_t i = 0; i < (size_t)rows * cols; i++) w[i] = (float)(sigma * gaussian());
    return w;
}

/* A q2 tensor with random codes and random fp16 scales (positive) and offsets. */
static rq_q2_tensor *random_q2(int out, int in, int gs, rq_q2_codebook_kind kind, bool zero_offsets) {
    rq_err err = {0};
    rq_q2_tensor *t = NULL;
    if (rq_q2_create(out, in, gs, kind, &t, &err) != RQ_OK) return NULL;
    for (int o = 0; o < out; o++)
        for (int i = 0; i < in; i++) rq_q2_set_code(t, o, i, (int)(next_u64() & 3));
    for (size_t k = 0; k < (size_t)out * t->n_groups; k++) {
        t->scales[k] = rq_f32_to_f16((float)(0.01 + 0.05 * uniform()));
        t->offsets[k] = zero_offsets ? 0 : rq_f32_to_f16((float)(0.1 * gaussian()));
    }
    return t;
}

static double group_sse(const float *w, const float *deq, int n) {
    double e = 0.0;
    for (int i = 0; i < n; i++) {
        double d = (double)w[i] - (double)deq[i];
        e += d * d;
    }
    return e;
}

/* ---- codebook, packing, sizes --------------------------------------------------------- */

static void test_codebooks(void) {
    float lv[4];
    rq_q2_codebook(RQ_Q2_NF2, lv);
    CHECK(lv[0] == -1.0f && lv[1] == 0.0f && lv[3] == 1.0f);
    /* the documented value 0.3379152 has 7 digits: it is correct to 5e-8 */
    CHECK_NEAR(lv[2], 0.3379152, 6e-8);
    rq_q2_codebook(RQ_Q2_INT2, lv);
    CHECK(lv[0] == 0.0f && lv[1] == 1.0f && lv[2] == 2.0f && lv[3] == 3.0f);
    rq_err err = {0};
    rq_q2_codebook_kind kind;
    CHECK(rq_q2_codebook_parse("nf2", &kind, &err) == RQ_OK && kind == RQ_Q2_NF2);
    CHECK(rq_q2_codebook_parse("int3", &kind, &err) == RQ_ERR_ARG && strstr(err.msg, "int3"));
}

static void test_pack_unpack(void) {
    const int sizes[] = {1, 2, 3, 4, 5, 7, 8, 63, 64, 100, 172};
    for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
        int n = sizes[s];
        uint8_t codes[172], back[172], packed[43];
        for (int i = 0; i < n; i++) codes[i] = (uint8_t)(next_u64() & 3);
        memset(packed, 0xff, sizeof packed);
        rq_q2_pack_codes(packed, codes, n);
        rq_q2_unpack_codes(back, packed, n);
        CHECKF(memcmp(codes, back, (size_t)n) == 0, "n = %d", n);
        if (n % 4) CHECKF((packed[n / 4] >> (2 * (n % 4))) == 0, "padding bits of n = %d are not 0", n);
        /* lowest bits first: code i at bits 2*(i%4) of byte i/4 */
        CHECK((packed[0] & 3) == codes[0]);
    }
    rq_err err = {0};
    rq_q2_tensor *t = NULL;
    CHECK_OK(rq_q2_create(3, 10, 4, RQ_Q2_INT2, &t, &err), &err);
    if (!t) return;
    for (int o = 0; o < 3; o++)
        for (int i = 0; i < 10; i++) rq_q2_set_code(t, o, i, (o * 7 + i) & 3);
    int ok = 1;
    for (int o = 0; o < 3; o++)
        for (int i = 0; i < 10; i++) ok &= rq_q2_get_code(t, o, i) == ((o * 7 + i) & 3);
    CHECK(ok);
    CHECK(t->row_bytes == 3 && t->n_groups == 3);
    rq_q2_free(t);

    /* 1536 x 576, gs 64: 2 bits of code + 2 x 16 bits per 64 weights = 2.5 bits per weight */
    CHECK(rq_q2_data_bytes(1536, 576, 64) == (size_t)1536 * 144 + (size_t)1536 * 9 * 4);
    CHECK(rq_q2_data_bytes(0, 576, 64) == 0);
    CHECK(rq_q2_create(4, 0, 64, RQ_Q2_INT2, &t, &err) == RQ_ERR_ARG && t == NULL);
    CHECK(rq_q2_create(4, 8, 0, RQ_Q2_INT2, &t, &err) == RQ_ERR_ARG && strstr(err.msg, "group size"));
}

/* ---- dequantization paths agree with the formula, bit for bit ------------------------------- */

static void test_dequant_paths(void) {
    struct { int out, in, gs; } shapes[] = {
        {7, 172, 64}, {7, 172, 32}, {5, 100, 64}, {4, 1, 64}, {3, 13, 6}, {9, 64, 64},
        {6, 30, 8},   {300, 257, 64}, {2, 5, 2}, {3, 9, 12},
    };
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        for (int kind = 0; kind < 2; kind++) {
            int out = shapes[s].out, in = shapes[s].in, gs = shapes[s].gs;
            rq_q2_tensor *t = random_q2(out, in, gs, (rq_q2_codebook_kind)kind, false);
            CHECK(t != NULL);
            if (!t) continue;
            float *ref = malloc((size_t)out * in * sizeof *ref);
            float *whole = malloc((size_t)out * in * sizeof *whole);
            float *whole_mt = malloc((size_t)out * in * sizeof *whole_mt);
            float *row = malloc((size_t)in * sizeof *row);
            for (int o = 0; o < out; o++)
                for (int i = 0; i < in; i++) ref[(size_t)o * in + i] = rq_q2_weight(t, o, i);
            rq_q2_dequant(t, whole, 1);
            rq_q2_dequant(t, whole_mt, 0);
            CHECKF(memcmp(ref, whole, (size_t)out * in * sizeof *ref) == 0, "whole, %dx%d gs %d kind %d", out, in,
                   gs, kind);
            CHECKF(memcmp(ref, whole_mt, (size_t)out * in * sizeof *ref) == 0, "threaded, %dx%d gs %d", out, in, gs);
            int rows_ok = 1;
            for (int o = 0; o < out; o++) {
                rq_q2_dequant_row(t, o, row);
                rows_ok &= memcmp(row, ref + (size_t)o * in, (size_t)in * sizeof *row) == 0;
            }
            CHECKF(rows_ok, "rows, %dx%d gs %d", out, in, gs);
            int r0 = out / 3, r1 = out - out / 4;
            if (r1 <= r0) r1 = r0 + 1;
            memset(whole, 0, (size_t)out * in * sizeof *whole);
            rq_q2_dequant_rows(t, r0, r1, whole, 2);
            CHECKF(memcmp(whole, ref + (size_t)r0 * in, (size_t)(r1 - r0) * in * sizeof *whole) == 0,
                   "tile [%d, %d), %dx%d gs %d", r0, r1, out, in, gs);
            free(ref);
            free(whole);
            free(whole_mt);
            free(row);
            rq_q2_free(t);
        }
    }
}

/* ---- RTN and NF2 -------------------------------------------------------------------------------- */

static void check_rtn_bounds(int out, int in, int gs) {
    rq_err err = {0};
    float *w = gaussian_matrix(out, in, 0.02);
    for (int i = 0; i < in; i++) w[(size_t)1 * in + i] += 0.5f; /* a row far from zero: offsets matter */
    rq_quant_opts o;
    rq_quant_opts_default(&o);
    o.group_size = gs;
    rq_q2_tensor *t = NULL;
    CHECK_OK(rq_quantize(w, out, in, &o, "rtn", &t, &err), &err);
    if (!t) {
        free(w);
        return;
    }
    float *deq = malloc((size_t)out * in * sizeof *deq);
    rq_q2_dequant(t, deq, 0);
    int bound_ok = 1, params_ok = 1;
    for (int r = 0; r < out; r++)
        for (int g = 0; g < t->n_groups; g++) {
            int c0 = g * gs, c1 = c0 + gs < in ? c0 + gs : in;
            float lo = INFINITY, hi = -INFINITY;
            for (int i = c0; i < c1; i++) {
                lo = fminf(lo, w[(size_t)r * in + i]);
                hi = fmaxf(hi, w[(size_t)r * in + i]);
            }
            double s = rq_q2_scale(t, r, g), m = rq_q2_offset(t, r, g);
            double absmax = fmax(fabs(lo), fabs(hi));
            /* fp16 rounding of m (2^-11 |min|) and of s times 3 levels (2^-11 range <= 2^-10 max|w|) */
            double slack = ldexp(absmax, -9);
            params_ok &= fabs(m - lo) <= ldexp(fabs(lo), -11) && fabs(3 * s - (hi - lo)) <= slack;
            for (int i = c0; i < c1; i++) {
                double e = fabs((double)w[(size_t)r * in + i] - deq[(size_t)r * in + i]);
                if (e > s / 2 + slack) {
                    bound_ok = 0;
                    fprintf(stderr, "rtn %dx%d gs %d: row %d col %d error %g > s/2 %g + %g\n", out, in, gs, r, i, e,
                            s / 2, slack);
                }
            }
        }
    CHECKF(bound_ok, "RTN error bound, in %d gs %d", in, gs);
    CHECKF(params_ok, "RTN s = (max - min) / 3, m = min, in %d gs %d", in, gs);
    /* the result does not depend on the thread count */
    rq_q2_tensor *t1 = NULL;
    o.n_threads = 1;
    CHECK_OK(rq_quantize(w, out, in, &o, "rtn", &t1, &err), &err);
    if (t1) {
        CHECK(memcmp(t->codes, t1->codes, (size_t)out * t->row_bytes) == 0);
        CHECK(memcmp(t->scales, t1->scales, (size_t)out * t->n_groups * 2) == 0);
    }
    rq_q2_free(t1);
    rq_q2_free(t);
    free(deq);
    free(w);
}

static void test_rtn(void) {
    check_rtn_bounds(9, 172, 64);
    check_rtn_bounds(9, 172, 32);
    check_rtn_bounds(9, 100, 64);
    check_rtn_bounds(5, 4096, 128);
}

static void test_nf2(void) {
    rq_err err = {0};
    const int out = 8, in = 172, gs = 64;
    float *w = gaussian_matrix(out, in, 0.03);
    rq_quant_opts o;
    rq_quant_opts_default(&o);
    o.method = RQ_QUANT_NF2;
    rq_q2_tensor *t = NULL;
    CHECK_OK(rq_quantize(w, out, in, &o, "nf2", &t, &err), &err);
    if (!t) {
        free(w);
        return;
    }
    CHECK(t->kind == RQ_Q2_NF2);
    int nearest_ok = 1, params_ok = 1;
    for (int r = 0; r < out; r++)
        for (int g = 0; g < t->n_groups; g++) {
            int c0 = g * gs, c1 = c0 + gs < in ? c0 + gs : in;
            float absmax = 0;
            for (int i = c0; i < c1; i++) absmax = fmaxf(absmax, fabsf(w[(size_t)r * in + i]));
            float s = rq_q2_scale(t, r, g);
            params_ok &= s == round_f16(absmax) && t->offsets[(size_t)r * t->n_groups + g] == 0;
            for (int i = c0; i < c1; i++) {
                double u = w[(size_t)r * in + i] / (double)s;
                double chosen = fabs(u - t->codebook[rq_q2_get_code(t, r, i)]);
                for (int k = 0; k < 4; k++) /* 1e-6: midpoints are taken in fp32 after scaling */
                    if (fabs(u - t->codebook[k]) < chosen - 1e-6) nearest_ok = 0;
            }
        }
    CHECK(nearest_ok);
    CHECK(params_ok);
    rq_q2_free(t);
    free(w);
}

/* ---- the clipping search ------------------------------------------------------------------------ */

static void check_clip(rq_quant_method method, bool heavy_tails) {
    rq_err err = {0};
    const int out = 64, in = 256, gs = 64;
    float *w = gaussian_matrix(out, in, 0.02);
    if (heavy_tails) /* Laplace-like bulk plus a few large outliers per group, as in LLM weights */
        for (size_t i = 0; i < (size_t)out * in; i++) {
            double u = uniform() - 0.5;
            w[i] = (float)(-0.02 * (u < 0 ? -1 : 1) * log(1 - 2 * fabs(u)));
            if (next_u64() % 40 == 0) w[i] *= 8.0f;
        }
    rq_quant_opts o;
    rq_quant_opts_default(&o);
    o.method = method;
    rq_q2_tensor *plain = NULL, *clipped = NULL;
    CHECK_OK(rq_quantize(w, out, in, &o, "clip", &plain, &err), &err);
    o.clip_search = true;
    CHECK_OK(rq_quantize(w, out, in, &o, "clip", &clipped, &err), &err);
    if (!plain || !clipped) {
        free(w);
        return;
    }
    float *dp = malloc((size_t)out * in * sizeof *dp), *dc = malloc((size_t)out * in * sizeof *dc);
    rq_q2_dequant(plain, dp, 0);
    rq_q2_dequant(clipped, dc, 0);
    int never_worse = 1;
    double total_plain = 0, total_clip = 0;
    for (int r = 0; r < out; r++)
        for (int c0 = 0; c0 < in; c0 += gs) {
            size_t off = (size_t)r * in + c0;
            double ep = group_sse(w + off, dp + off, gs), ec = group_sse(w + off, dc + off, gs);
            never_worse &= ec <= ep; /* exact: the search scores groups the same way, p = 1 is plain RTN/NF2 */
            total_plain += ep;
            total_clip += ec;
        }
    CHECKF(never_worse, "clip search worse than plain %s on some group", rq_quant_method_name(method));
    printf("clip search %s, %s weights: squared error %.4g -> %.4g (%.1f%%)\n", rq_quant_method_name(method),
           heavy_tails ? "heavy-tailed" : "gaussian", total_plain, total_clip, 100.0 * total_clip / total_plain);
    if (heavy_tails) CHECKF(total_clip < 0.9 * total_plain, "clip %g vs plain %g", total_clip, total_plain);
    else CHECK(total_clip < total_plain);
    free(dp);
    free(dc);
    rq_q2_free(plain);
    rq_q2_free(clipped);
    free(w);
}

static void test_clip_search(void) {
    check_clip(RQ_QUANT_RTN, false);
    check_clip(RQ_QUANT_RTN, true);
    check_clip(RQ_QUANT_NF2, false);
    check_clip(RQ_QUANT_NF2, true);
}

/* ---- constant, zero and one-column groups; bad input ------------------------------------------------- */

static void test_degenerate_groups(void) {
    rq_err err = {0};
    const int out = 3, in = 72, gs = 32; /* groups of 32, 32, 8 */
    float w[3 * 72];
    for (int i = 0; i < in; i++) {
        w[i] = 0.0f;                          /* row 0: all zero */
        w[in + i] = 0.1234567f;               /* row 1: constant, not an fp16 value */
        w[2 * in + i] = i < 32 ? -2.5f : 1.0f; /* row 2: constant groups, fp16 values */
    }
    for (int method = 0; method < 2; method++)
        for (int clip = 0; clip < 2; clip++) {
            rq_quant_opts o;
            rq_quant_opts_default(&o);
            o.method = (rq_quant_method)method;
            o.group_size = gs;
            o.clip_search = clip;
            rq_q2_tensor *t = NULL;
            CHECK_OK(rq_quantize(w, out, in, &o, "flat", &t, &err), &err);
            if (!t) continue;
            float deq[3 * 72];
            rq_q2_dequant(t, deq, 1);
            int ok = 1;
            for (int i = 0; i < in; i++) {
                ok &= deq[i] == 0.0f;
                ok &= deq[in + i] == round_f16(0.1234567f); /* exact up to fp16 storage */
                ok &= deq[2 * in + i] == w[2 * in + i];     /* fp16 values are exact */
            }
            CHECKF(ok, "flat groups, method %d clip %d", method, clip);
            if (method == RQ_QUANT_RTN) { /* documented: s = 0, codes 0, m = the value */
                CHECK(t->scales[0] == 0 && rq_q2_get_code(t, 1, 5) == 0 && t->scales[t->n_groups] == 0);
            } else {
                CHECK(rq_q2_get_code(t, 0, 0) == 1); /* level 0 */
            }
            rq_q2_free(t);
        }

    /* in = 1: every group is one weight */
    float col[5] = {0.5f, -0.25f, 0.0f, 3.0f, -1e-3f};
    for (int method = 0; method < 2; method++) {
        rq_quant_opts o;
        rq_quant_opts_default(&o);
        o.method = (rq_quant_method)method;
        rq_q2_tensor *t = NULL;
        CHECK_OK(rq_quantize(col, 5, 1, &o, "in1", &t, &err), &err);
        if (!t) continue;
        float deq[5];
        rq_q2_dequant(t, deq, 1);
        int ok = 1;
        for (int i = 0; i < 5; i++) ok &= deq[i] == round_f16(col[i]);
        CHECKF(ok, "in = 1, method %d", method);
        rq_q2_free(t);
    }

    /* bad input names the tensor and place */
    float bad[2 * 8] = {0};
    bad[8 + 5] = NAN;
    rq_quant_opts o;
    rq_quant_opts_default(&o);
    rq_q2_tensor *t = NULL;
    CHECK(rq_quantize(bad, 2, 8, &o, "model.layers.3.self_attn.q_proj", &t, &err) == RQ_ERR_FORMAT && t == NULL);
    CHECKF(strstr(err.msg, "q_proj") && strstr(err.msg, "row 1, column 5"), "%s", err.msg);
    bad[8 + 5] = 1e6f;
    CHECK(rq_quantize(bad, 2, 8, &o, "big", &t, &err) == RQ_ERR_FORMAT && strstr(err.msg, "65504"));
    CHECK(rq_quantize(bad, 2, 0, &o, "empty", &t, &err) == RQ_ERR_ARG && strstr(err.msg, "empty"));
}

/* ---- fake-quant import ----------------------------------------------------------------------------- */

/* Codes (and, when with_params, s and m) agree on every group of src that uses
 * all 4 codes. */
static bool same_params_on_full_groups(const rq_q2_tensor *src, const rq_q2_tensor *t, bool with_params) {
    int compared = 0;
    for (int r = 0; r < src->out; r++)
        for (int g = 0; g < src->n_groups; g++) {
            int c0 = g * src->group_size, c1 = c0 + src->group_size < src->in ? c0 + src->group_size : src->in;
            int used = 0;
            for (int i = c0; i < c1; i++) used |= 1 << rq_q2_get_code(src, r, i);
            if (used != 15) continue;
            compared++;
            for (int i = c0; i < c1; i++)
                if (rq_q2_get_code(src, r, i) != rq_q2_get_code(t, r, i)) return false;
            size_t k = (size_t)r * src->n_groups + g;
            if (with_params && (src->scales[k] != t->scales[k] || src->offsets[k] != t->offsets[k])) return false;
        }
    return compared > 0;
}

static void check_import_roundtrip(rq_q2_codebook_kind kind, bool zero_offsets, int in, int gs) {
    rq_err err = {0};
    const int out = 24;
    rq_q2_tensor *src = random_q2(out, in, gs, kind, zero_offsets);
    float *w = malloc((size_t)out * in * sizeof *w), *deq = malloc((size_t)out * in * sizeof *deq);
    rq_q2_dequant(src, w, 0);
    rq_import_opts io;
    rq_import_opts_default(&io);
    io.kind = kind;
    io.group_size = gs;
    rq_q2_tensor *t = NULL;
    rq_import_report rep;
    CHECK_OK(rq_q2_import_fake_quant(w, out, in, &io, "imp", &t, &rep, &err), &err);
    if (t) {
        rq_q2_dequant(t, deq, 0);
        CHECKF(memcmp(w, deq, (size_t)out * in * sizeof *w) == 0 && rep.max_abs_err == 0,
               "exact import, %s in %d gs %d: max err %g", rq_q2_codebook_name(kind), in, gs, rep.max_abs_err);
        /* Where a group uses all 4 codes, codes, s and m are recovered
         * themselves; a group with fewer (short ragged groups) may come back as
         * an equivalent grid, which the bit-exact dequant above covers. */
        CHECK(same_params_on_full_groups(src, t, true));
        CHECK(rep.groups == (long long)out * t->n_groups);
    }
    rq_q2_free(t);

    /* the same weights after a round trip through fp16 and bf16 storage */
    for (int noise = 0; noise < 2; noise++) {
        for (size_t i = 0; i < (size_t)out * in; i++) deq[i] = noise ? round_bf16(w[i]) : round_f16(w[i]);
        t = NULL;
        CHECK_OK(rq_q2_import_fake_quant(deq, out, in, &io, "imp-noisy", &t, &rep, &err), &err);
        /* error = the storage rounding (fp16 2^-11, bf16 2^-9, relative to |w| <= max|w|)
         * plus fp16 rounding of the recovered s and m (2^-11 each): 2x margin */
        double bound = noise ? ldexp(1, -8) : ldexp(1, -9);
        CHECKF(t && rep.max_rel_err <= bound, "%s noise, %s: relative error %g > %g",
               noise ? "bf16" : "fp16", rq_q2_codebook_name(kind), rep.max_rel_err, bound);
        if (t && !noise) /* fp16 noise leaves every code in place */
            CHECK(same_params_on_full_groups(src, t, false));
        printf("import %s (in %d, gs %d) with %s noise: max |w - dequant| %.3g (%.3g of the group's max|w|)\n",
               rq_q2_codebook_name(kind), in, gs, noise ? "bf16" : "fp16", rep.max_abs_err, rep.max_rel_err);
        rq_q2_free(t);
    }
    rq_q2_free(src);
    free(w);
    free(deq);
}

static void test_import(void) {
    check_import_roundtrip(RQ_Q2_INT2, false, 172, 64);
    check_import_roundtrip(RQ_Q2_INT2, false, 172, 32);
    check_import_roundtrip(RQ_Q2_NF2, true, 172, 64);
    check_import_roundtrip(RQ_Q2_NF2, false, 100, 64); /* NF2 after a merge: nonzero offsets */

    rq_err err = {0};
    rq_import_opts io;
    rq_import_opts_default(&io);
    io.group_size = 8;
    /* groups with 1, 2 and 3 distinct values */
    float w[4 * 8] = {
        0.25f, 0.25f, 0.25f, 0.25f, 0.25f, 0.25f, 0.25f, 0.25f, /* one value: s = 0, m = value */
        -0.5f, 0.25f, -0.5f, 0.25f, 0.25f, 0.25f, -0.5f, -0.5f, /* two: codes 0 and 3, s = range / 3 */
        0.0f,  0.5f,  1.0f,  0.5f,  0.0f,  1.0f,  1.0f,  0.5f,  /* three equally spaced: codes 0..2 */
        0.0f,  0.5f,  1.5f,  0.5f,  0.0f,  1.5f,  1.5f,  0.5f,  /* three, gaps 1:2: codes 0, 1, 3 */
    };
    rq_q2_tensor *t = NULL;
    rq_import_report rep;
    CHECK_OK(rq_q2_import_fake_quant(w, 4, 8, &io, "few", &t, &rep, &err), &err);
    if (t) {
        float deq[32];
        rq_q2_dequant(t, deq, 1);
        CHECK(memcmp(deq, w, sizeof w) == 0);
        CHECK(rq_q2_scale(t, 0, 0) == 0.0f && rq_q2_offset(t, 0, 0) == 0.25f);
        CHECK(rq_q2_scale(t, 1, 0) == 0.25f && rq_q2_get_code(t, 1, 1) == 3);
        CHECK(rq_q2_scale(t, 2, 0) == 0.5f && rq_q2_get_code(t, 2, 2) == 2 && rq_q2_offset(t, 2, 0) == 0.0f);
        CHECK(rq_q2_scale(t, 3, 0) == 0.5f && rq_q2_get_code(t, 3, 2) == 3);
        CHECK(rep.groups_under_4 == 4);
        rq_q2_free(t);
    }
    /* NF2: one value and two values, offsets stay 0 */
    io.kind = RQ_Q2_NF2;
    float nf[2 * 8] = {0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, -0.75f, 0, 0, -0.75f, 0, 0, 0, 0};
    t = NULL;
    CHECK_OK(rq_q2_import_fake_quant(nf, 2, 8, &io, "few-nf2", &t, &rep, &err), &err);
    if (t) {
        CHECK(rq_q2_scale(t, 0, 0) == 0.5f && rq_q2_offset(t, 0, 0) == 0.0f && rq_q2_get_code(t, 0, 0) == 3);
        CHECK(rq_q2_scale(t, 1, 0) == 0.75f && rq_q2_get_code(t, 1, 0) == 0 && rq_q2_get_code(t, 1, 1) == 1);
        rq_q2_free(t);
    }

    /* five values in row 3, group 1: a clear error naming tensor, row and group */
    const int out = 6, in = 172, gs = 64;
    rq_q2_tensor *src = random_q2(out, in, gs, RQ_Q2_INT2, false);
    float *wq = malloc((size_t)out * in * sizeof *wq);
    rq_q2_dequant(src, wq, 1);
    float s = rq_q2_scale(src, 3, 1), m = rq_q2_offset(src, 3, 1);
    wq[(size_t)3 * in + 64 + 10] = m + 1.5f * s; /* halfway between two levels */
    rq_import_opts_default(&io);
    t = NULL;
    CHECK(rq_q2_import_fake_quant(wq, out, in, &io, "model.layers.0.mlp.down_proj", &t, &rep, &err) ==
              RQ_ERR_FORMAT && t == NULL);
    CHECKF(strstr(err.msg, "model.layers.0.mlp.down_proj") && strstr(err.msg, "row 3, group 1") &&
               strstr(err.msg, "5 distinct values"),
           "message: %s", err.msg);
    printf("five-value group: %s\n", err.msg);
    /* four values that are not equally spaced: not an int2 grid */
    float uneven[8] = {0, 1, 2, 4, 0, 1, 2, 4};
    io.group_size = 8;
    CHECK(rq_q2_import_fake_quant(uneven, 1, 8, &io, "uneven", &t, &rep, &err) == RQ_ERR_FORMAT &&
          strstr(err.msg, "uneven") && strstr(err.msg, "row 0, group 0"));
    /* in = 1 */
    float one[3] = {0.3f, -0.2f, 0.0f};
    io.group_size = 64;
    t = NULL;
    CHECK_OK(rq_q2_import_fake_quant(one, 3, 1, &io, "in1", &t, &rep, &err), &err);
    if (t) {
        float deq[3];
        rq_q2_dequant(t, deq, 1);
        CHECK(deq[0] == round_f16(0.3f) && deq[1] == round_f16(-0.2f) && deq[2] == 0.0f);
    }
    rq_q2_free(t);
    rq_q2_free(src);
    free(wq);
}

/* ---- SVD against a Jacobi reference -------------------------------------------------------------------- */

/* Singular values of a small matrix by one-sided Jacobi in double: the
 * reference (slow, exact to double rounding). */
static void jacobi_singular_values(const float *E, int m, int n, double *sv) {
    int rows = m >= n ? m : n, cols = m >= n ? n : m; /* work on the taller orientation */
    double *a = malloc((size_t)rows * cols * sizeof *a);
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            if (m >= n) a[(size_t)i * cols + j] = E[(size_t)i * n + j];
            else a[(size_t)j * cols + i] = E[(size_t)i * n + j];
        }
    for (int sweep = 0; sweep < 60; sweep++) {
        int rotated = 0;
        for (int p = 0; p < cols; p++)
            for (int q = p + 1; q < cols; q++) {
                double alpha = 0, beta = 0, gamma = 0;
                for (int i = 0; i < rows; i++) {
                    double x = a[(size_t)i * cols + p], y = a[(size_t)i * cols + q];
                    alpha += x * x;
                    beta += y * y;
                    gamma += x * y;
                }
                if (fabs(gamma) <= 1e-15 * sqrt(alpha * beta) || gamma == 0) continue;
                rotated = 1;
                double zeta = (beta - alpha) / (2 * gamma);
                double t = (zeta >= 0 ? 1 : -1) / (fabs(zeta) + sqrt(1 + zeta * zeta));
                double c = 1 / sqrt(1 + t * t), s = c * t;
                for (int i = 0; i < rows; i++) {
                    double x = a[(size_t)i * cols + p], y = a[(size_t)i * cols + q];
                    a[(size_t)i * cols + p] = c * x - s * y;
                    a[(size_t)i * cols + q] = s * x + c * y;
                }
            }
        if (!rotated) break;
    }
    for (int j = 0; j < cols; j++) {
        double s = 0;
        for (int i = 0; i < rows; i++) s += a[(size_t)i * cols + j] * a[(size_t)i * cols + j];
        sv[j] = sqrt(s);
    }
    for (int i = 0; i < cols; i++) /* descending */
        for (int j = i + 1; j < cols; j++)
            if (sv[j] > sv[i]) {
                double tmp = sv[i];
                sv[i] = sv[j];
                sv[j] = tmp;
            }
    free(a);
}

/* ||E - U S Vt||_F in double */
static double lowrank_residual(const float *E, int m, int n, int r, const float *U, const float *S, const float *Vt) {
    double e = 0;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double x = E[(size_t)i * n + j];
            for (int k = 0; k < r; k++) x -= (double)U[(size_t)i * r + k] * S[k] * Vt[(size_t)k * n + j];
            e += x * x;
        }
    return sqrt(e);
}

static void check_svd(int m, int n, int r, int true_rank, double decay, const char *what) {
    rq_err err = {0};
    /* E = X diag(decay^k) Y + noise-free: a controlled spectrum (true_rank 0: full gaussian) */
    float *E = calloc((size_t)m * n, sizeof *E);
    if (true_rank <= 0) {
        for (size_t i = 0; i < (size_t)m * n; i++) E[i] = (float)gaussian();
    } else {
        for (int k = 0; k < true_rank; k++) {
            double sk = pow(decay, k);
            float *x = gaussian_matrix(m, 1, 1), *y = gaussian_matrix(1, n, 1);
            for (int i = 0; i < m; i++)
                for (int j = 0; j < n; j++) E[(size_t)i * n + j] += (float)(sk * x[i] * y[j]);
            free(x);
            free(y);
        }
    }
    int mn = m < n ? m : n;
    double *sv = malloc((size_t)mn * sizeof *sv);
    jacobi_singular_values(E, m, n, sv);
    double optimal = 0;
    for (int k = r; k < mn; k++) optimal += sv[k] * sv[k];
    optimal = sqrt(optimal);
    double total = 0;
    for (int k = 0; k < mn; k++) total += sv[k] * sv[k];
    total = sqrt(total);

    float *U = malloc((size_t)m * r * sizeof *U), *S = malloc((size_t)r * sizeof *S);
    float *Vt = malloc((size_t)r * n * sizeof *Vt);
    rq_rsvd_opts so;
    rq_rsvd_opts_default(&so);
    CHECK_OK(rq_svd_top_r(E, m, n, r, &so, U, S, Vt, &err), &err);
    double got = lowrank_residual(E, m, n, r, U, S, Vt);
    /* 1% of the optimal error, plus fp32 rounding of E itself (1e-6 of ||E||) for the exact cases */
    double allowed = 1.01 * optimal + 1e-5 * total;
    CHECKF(got <= allowed, "%s: rank-%d residual %.6g, optimal %.6g", what, r, got, optimal);
    int sv_ok = 1;
    for (int k = 0; k < r && k < mn; k++) /* the top values to 1% of the largest */
        sv_ok &= fabs(S[k] - sv[k]) <= 1e-2 * sv[0] + 1e-5 * total;
    CHECKF(sv_ok, "%s: singular values (%g vs %g, ...)", what, S[0], sv[0]);
    printf("svd %s (%dx%d, rank %d): residual %.6g, optimal %.6g (ratio %.5f)\n", what, m, n, r, got, optimal,
           optimal > 0 ? got / optimal : 0.0);
    free(U);
    free(S);
    free(Vt);
    free(sv);
    free(E);
}

static void test_svd(void) {
    check_svd(60, 40, 8, 0, 0, "gaussian (flat spectrum)");
    check_svd(40, 70, 8, 0, 0, "gaussian, wide");
    check_svd(80, 50, 10, 50, 0.85, "decaying spectrum");
    check_svd(50, 30, 6, 3, 0.5, "rank 3 at rank 6");
    check_svd(20, 12, 16, 0, 0, "rank above min(m, n)");
    check_svd(7, 1, 4, 0, 0, "one column");
    /* the Jacobi eigensolver on its own: a known 2x2 */
    double a[4] = {2, 1, 1, 2}, wv[2], v[4];
    rq_sym_eigen_jacobi(a, 2, wv, v);
    CHECK_NEAR(wv[0], 3.0, 1e-14);
    CHECK_NEAR(wv[1], 1.0, 1e-14);
    CHECK_NEAR(fabs(v[0]), sqrt(0.5), 1e-14);
}

/* ---- LoftQ ----------------------------------------------------------------------------------------------- */

static void check_loftq(rq_quant_method method, int out, int in, int rank, float scaling) {
    rq_err err = {0};
    /* a weight with a few strong directions on top of gaussian noise, like a trained projection */
    float *w = gaussian_matrix(out, in, 0.02);
    for (int k = 0; k < 4; k++) {
        float *x = gaussian_matrix(out, 1, 0.05), *y = gaussian_matrix(1, in, 1);
        for (int i = 0; i < out; i++)
            for (int j = 0; j < in; j++) w[(size_t)i * in + j] += x[i] * y[j];
        free(x);
        free(y);
    }
    rq_loftq_opts lo;
    rq_loftq_opts_default(&lo);
    lo.quant.method = method;
    lo.rank = rank;
    lo.iters = 5;
    lo.scaling = scaling;
    float *A = malloc((size_t)rank * in * sizeof *A), *B = malloc((size_t)out * rank * sizeof *B);
    double hist[5];
    rq_loftq_report rep;
    rq_q2_tensor *q = NULL;
    CHECK_OK(rq_loftq_init(w, out, in, &lo, "loftq", &q, A, B, hist, &rep, &err), &err);
    if (!q) {
        free(w);
        free(A);
        free(B);
        return;
    }
    printf("loftq %s %dx%d r %d scaling %g: ||W|| %.4g, quantizer alone %.4g, iterations", rq_quant_method_name(method),
           out, in, rank, scaling, rep.weight_norm, rep.plain_error);
    for (int t = 0; t < 5; t++) printf(" %.4g", hist[t]);
    printf(", returned %d\n", rep.best_iter);
    CHECK(hist[0] < rep.plain_error);
    CHECK(rep.final_error <= hist[0] && rep.final_error < 0.95 * rep.plain_error);
    /* The second alternation improves on the first (LoftQ's point). Later ones
     * are not monotone: min/max scales follow the moving target, and the
     * error can creep up again after 2-3 rounds, hence the best is returned. */
    CHECK(hist[1] < hist[0]);
    double best_seen = hist[0];
    for (int t = 1; t < 5; t++) best_seen = fmin(best_seen, hist[t]);
    CHECK(rep.final_error == best_seen);
    /* what is returned reproduces the reported error: ||W - Q - scaling B A|| */
    float *deq = malloc((size_t)out * in * sizeof *deq);
    rq_q2_dequant(q, deq, 0);
    double e = 0;
    for (int i = 0; i < out; i++)
        for (int j = 0; j < in; j++) {
            double x = (double)w[(size_t)i * in + j] - deq[(size_t)i * in + j];
            for (int k = 0; k < rank; k++) x -= scaling * (double)B[(size_t)i * rank + k] * A[(size_t)k * in + j];
            e += x * x;
        }
    /* fp32 GEMM accumulation over rank terms: 1e-4 relative */
    CHECK_NEAR(sqrt(e), rep.final_error, 1e-4 * rep.final_error + 1e-7);
    free(deq);
    rq_q2_free(q);
    free(A);
    free(B);
    free(w);
}

static void test_loftq(void) {
    check_loftq(RQ_QUANT_RTN, 96, 160, 8, 1.0f);
    check_loftq(RQ_QUANT_NF2, 96, 160, 8, 2.0f);
    check_loftq(RQ_QUANT_NF2, 64, 172, 16, 0.5f);
    /* in = 1 and a rank above min(out, in) */
    rq_err err = {0};
    float w[6] = {0.1f, -0.3f, 0.25f, 0.0f, 0.7f, -0.05f}, A[4], B[24];
    rq_loftq_opts lo;
    rq_loftq_opts_default(&lo);
    lo.rank = 4;
    lo.iters = 2;
    rq_q2_tensor *q = NULL;
    rq_loftq_report rep;
    CHECK_OK(rq_loftq_init(w, 6, 1, &lo, "in1", &q, A, B, NULL, &rep, &err), &err);
    CHECK(q && rep.final_error <= rep.plain_error && rep.final_error < 1e-6);
    rq_q2_free(q);
    lo.rank = 0;
    CHECK(rq_loftq_init(w, 6, 1, &lo, "r0", &q, A, B, NULL, &rep, &err) == RQ_ERR_ARG);
}

int main(void) {
    test_codebooks();
    test_pack_unpack();
    test_dequant_paths();
    test_rtn();
    test_nf2();
    test_clip_search();
    test_degenerate_groups();
    test_import();
    test_svd();
    test_loftq();
    return rq_test_finish();
}
