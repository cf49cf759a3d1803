/* Quantizers (RTN min/max, NF2 absmax, the clipping search) and the import of
 * fake-quantized weights. Every function works per (row, group); rows run in
 * parallel and each row's result does not depend on the thread count. */
#include "quantize.h"

#include <limits.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>

#define FP16_MAX 65504.0f

void rq_quant_opts_default(rq_quant_opts *o) {
    memset(o, 0, sizeof *o);
    o->method = RQ_QUANT_RTN;
    o->group_size = RQ_DEFAULT_GROUP_SIZE;
    o->clip_search = false;
    o->clip_min_shrink = 0.20f;
    o->clip_step = 0.01f;
    o->n_threads = 0;
}

const char *rq_quant_method_name(rq_quant_method m) { return m == RQ_QUANT_NF2 ? "nf2" : "rtn"; }

rq_status rq_quant_method_parse(const char *name, rq_quant_method *m, rq_err *err) {
    if (name && strcmp(name, "rtn") == 0) *m = RQ_QUANT_RTN;
    else if (name && strcmp(name, "nf2") == 0) *m = RQ_QUANT_NF2;
    else return RQ_FAIL(err, RQ_ERR_ARG, "unknown quantization method '%s' (expected \"rtn\" or \"nf2\")", name ? name : "(null)");
    return RQ_OK;
}

rq_q2_codebook_kind rq_quant_method_codebook(rq_quant_method m) { return m == RQ_QUANT_NF2 ? RQ_Q2_NF2 : RQ_Q2_INT2; }

static const char *label(const char *name) { return name && *name ? name : "(unnamed tensor)"; }

static int resolve_threads(int n) { return n > 0 ? n : omp_get_max_threads(); }

/* ---- one group's grid -------------------------------------------------------------- */

typedef rq_quant_params group_params;
typedef rq_quant_grid group_grid;

rq_quant_grid rq_quant_grid_make(const float cb[4], rq_quant_params p) {
    group_grid g;
    float s = rq_f16_to_f32(p.s), m = rq_f16_to_f32(p.m);
    for (int k = 0; k < 4; k++) g.lut[k] = s * cb[k] + m; /* exactly what rq_q2_dequant_row computes */
    for (int k = 0; k < 3; k++) g.mid[k] = g.lut[k] + 0.5f * (g.lut[k + 1] - g.lut[k]);
    g.flat = (p.s & 0x7fff) == 0;
    return g;
}

static group_grid make_grid(const float cb[4], group_params p) { return rq_quant_grid_make(cb, p); }

static bool grid_finite(const group_grid *g) {
    for (int k = 0; k < 4; k++)
        if (!isfinite(g->lut[k])) return false;
    return true;
}

#define grid_code rq_quant_grid_code
#define grid_value rq_quant_grid_value

/* sum (w - dequant)^2 in double: the score of every clipping candidate. */
static double group_sq_error(const float *w, int n, const group_grid *g) {
    double e = 0.0;
    for (int i = 0; i < n; i++) {
        double d = (double)w[i] - (double)grid_value(g, w[i]);
        e += d * d;
    }
    return e;
}

/* RTN from a clipping window [lo, hi]: m = fp16(lo), s = fp16((hi - m) / 3)
 * with m already rounded, so the top level lands on hi as closely as fp16
 * allows. A window of zero width gives s = 0. */
static group_params int2_params(float lo, float hi) {
    group_params p;
    p.m = rq_f32_to_f16(lo);
    float s = (hi - rq_f16_to_f32(p.m)) / 3.0f;
    p.s = s > 0.0f ? rq_f32_to_f16(s) : 0;
    return p;
}

static group_params nf2_params(float absmax) {
    group_params p = {rq_f32_to_f16(absmax), 0};
    return p;
}

/* Least-squares (s, m) for the codes the current grid assigns (NF2: m = 0),
 * returned only when it is a usable grid. */
static bool refit_params(const float *w, int n, const float cb[4], const group_grid *g, bool fit_offset,
                         group_params *out) {
    double sl = 0, sll = 0, sw = 0, swl = 0;
    for (int i = 0; i < n; i++) {
        double l = cb[grid_code(g, w[i])];
        sl += l;
        sll += l * l;
        sw += w[i];
        swl += w[i] * l;
    }
    double s, m = 0.0;
    if (fit_offset) {
        double den = n * sll - sl * sl;
        if (!(den > 0)) return false;
        s = (n * swl - sl * sw) / den;
        m = (sw - s * sl) / n;
    } else {
        if (!(sll > 0)) return false;
        s = swl / sll;
    }
    if (!(s > 0) || fabs(s) > FP16_MAX || fabs(m) > FP16_MAX) return false;
    out->s = rq_f32_to_f16((float)s);
    out->m = rq_f32_to_f16((float)m);
    return true;
}

/* The (s, m) of one group under opts. */
rq_quant_params rq_quant_group_params(const float *w, int n, const float cb[4], const rq_quant_opts *opts) {
    const bool nf2 = opts->method == RQ_QUANT_NF2;
    float lo = w[0], hi = w[0];
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        lo = w[i] < lo ? w[i] : lo;
        hi = w[i] > hi ? w[i] : hi;
        sum += w[i];
    }
    float absmax = fabsf(lo) > fabsf(hi) ? fabsf(lo) : fabsf(hi);
    if (hi == lo && !nf2) { /* a constant group: s = 0, codes 0, m = the value (exact up to fp16) */
        group_params flat = {0, rq_f32_to_f16(lo)};
        return flat;
    }
    group_params best = nf2 ? nf2_params(absmax) : int2_params(lo, hi);
    if (!opts->clip_search || hi == lo) return best;

    group_grid best_grid = make_grid(cb, best);
    double best_err = group_sq_error(w, n, &best_grid);
    /* Shrink toward the group mean: for a zero-mean group this is GPTQ's
     * (p * min, p * max); for a group sitting away from zero the window stays
     * over the weights instead of sliding toward 0. */
    const float anchor = (float)(sum / n);
    const float step = opts->clip_step > 0 ? opts->clip_step : 0.01f;
    const float floor_p = opts->clip_min_shrink > 0 ? opts->clip_min_shrink : 0.2f;
    for (int k = 1;; k++) {
        float p = 1.0f - (float)k * step;
        if (p < floor_p - 1e-6f || p <= 0.0f) break;
        group_params cand = nf2 ? nf2_params(p * absmax)
                                : int2_params(anchor + p * (lo - anchor), anchor + p * (hi - anchor));
        group_grid cg = make_grid(cb, cand);
        double e = group_sq_error(w, n, &cg);
        if (e < best_err) {
            best_err = e;
            best = cand;
            best_grid = cg;
        }
    }
    /* Two Lloyd-style refits: the grid search fixes the window, least squares
     * then moves (s, m) to the centroid of the codes it chose. */
    for (int it = 0; it < 2; it++) {
        group_params cand;
        if (!refit_params(w, n, cb, &best_grid, !nf2, &cand)) break;
        group_grid cg = make_grid(cb, cand);
        if (!grid_finite(&cg)) break;
        double e = group_sq_error(w, n, &cg);
        if (!(e < best_err)) break;
        best_err = e;
        best = cand;
        best_grid = cg;
    }
    return best;
}

/* The first (lowest row, then column) failure found by parallel rows. */
typedef struct first_failure {
    long long where; /* row * in + column; LLONG_MAX when none */
    int row, col, group;
    int why;         /* what went wrong, meaning per caller */
    int n_values;
    double value, misfit, tolerance;
} first_failure;

static void record_failure(first_failure *f, const first_failure *cand) {
#pragma omp critical(rq_quant_failure)
    {
        if (cand->where < f->where) *f = *cand;
    }
}

static rq_status check_tensor_args(const rq_q2_tensor *t, const float *w, int group_size, const char *name,
                                   rq_err *err) {
    if (!t || !w) return RQ_FAIL(err, RQ_ERR_ARG, "quantizing %s: no tensor or no weights given", label(name));
    if (group_size != t->group_size)
        return RQ_FAIL(err, RQ_ERR_ARG, "quantizing %s: group size %d does not match the q2 tensor's %d", label(name),
                       group_size, t->group_size);
    return RQ_OK;
}

rq_status rq_quantize_into(rq_q2_tensor *t, const float *w, const rq_quant_opts *opts, const char *name,
                           rq_err *err) {
    RQ_TRY(check_tensor_args(t, w, opts->group_size, name, err));
    if (opts->method != RQ_QUANT_RTN && opts->method != RQ_QUANT_NF2)
        return RQ_FAIL(err, RQ_ERR_ARG, "quantizing %s: unknown method %d", label(name), (int)opts->method);
    if (t->kind != rq_quant_method_codebook(opts->method))
        return RQ_FAIL(err, RQ_ERR_ARG, "quantizing %s with %s into a q2 tensor with the %s codebook", label(name),
                       rq_quant_method_name(opts->method), rq_q2_codebook_name(t->kind));
    if (opts->clip_search && (opts->clip_step < 0 || opts->clip_step >= 1 || opts->clip_min_shrink >= 1))
        return RQ_FAIL(err, RQ_ERR_ARG, "quantizing %s: clip step %g and lowest shrink %g must lie in (0, 1)",
                       label(name), opts->clip_step, opts->clip_min_shrink);

    const int in = t->in, gs = t->group_size;
    const int zero_code = t->kind == RQ_Q2_NF2 ? 1 : 0; /* the code of level 0: what a flat group stores */
    first_failure fail = {.where = LLONG_MAX};

#pragma omp parallel for schedule(dynamic, 4) num_threads(resolve_threads(opts->n_threads))
    for (int row = 0; row < t->out; row++) {
        const float *wr = w + (size_t)row * (size_t)in;
        uint8_t *codes = t->codes + (size_t)row * (size_t)t->row_bytes;
        memset(codes, 0, (size_t)t->row_bytes);
        for (int g = 0; g < t->n_groups; g++) {
            const int c0 = g * gs, n = in - c0 < gs ? in - c0 : gs;
            const float *wg = wr + c0;
            int bad = -1;
            for (int i = 0; i < n && bad < 0; i++)
                if (!(fabsf(wg[i]) <= FP16_MAX)) bad = i; /* also catches NaN */
            if (bad >= 0) {
                first_failure f = {.where = (long long)row * in + c0 + bad, .row = row, .col = c0 + bad,
                                   .group = g, .value = wg[bad]};
                record_failure(&fail, &f);
                break;
            }
            group_params p = rq_quant_group_params(wg, n, t->codebook, opts);
            group_grid grid = make_grid(t->codebook, p);
            t->scales[(size_t)row * t->n_groups + g] = p.s;
            t->offsets[(size_t)row * t->n_groups + g] = p.m;
            for (int i = 0; i < n; i++) {
                int col = c0 + i;
                int code = grid.flat ? zero_code : grid_code(&grid, wg[i]);
                codes[col >> 2] |= (uint8_t)(code << ((col & 3) * 2));
            }
        }
    }
    if (fail.where != LLONG_MAX)
        return RQ_FAIL(err, RQ_ERR_FORMAT,
                       "quantizing %s: row %d, column %d (group %d) holds %g, which fp16 scales and offsets cannot "
                       "represent (finite values of magnitude <= 65504 only); hint: the checkpoint is corrupt or "
                       "overflowed when it was saved",
                       label(name), fail.row, fail.col, fail.group, fail.value);
    return RQ_OK;
}

rq_status rq_quantize(const float *w, int out, int in, const rq_quant_opts *opts, const char *name,
                      rq_q2_tensor **t, rq_err *err) {
    *t = NULL;
    if (in <= 0 || out <= 0)
        return RQ_FAIL(err, RQ_ERR_ARG, "quantizing %s: shape [%d][%d] has no weights (in_features and "
                       "out_features must be at least 1)", label(name), out, in);
    rq_q2_tensor *q;
    rq_status st = rq_q2_create(out, in, opts->group_size, rq_quant_method_codebook(opts->method), &q, err);
    if (st != RQ_OK) {
        rq_err_prefix(err, "quantizing %s: ", label(name));
        return st;
    }
    st = rq_quantize_into(q, w, opts, name, err);
    if (st != RQ_OK) {
        rq_q2_free(q);
        return st;
    }
    *t = q;
    return RQ_OK;
}

/* ---- fake-quant import ----------------------------------------------------------------- */

void rq_import_opts_default(rq_import_opts *o) {
    memset(o, 0, sizeof *o);
    o->kind = RQ_Q2_INT2;
    o->group_size = RQ_DEFAULT_GROUP_SIZE;
    o->noise_rel = 1.0 / 128.0;
    o->n_threads = 0;
}

enum { IMPORT_OK = 0, IMPORT_TOO_MANY_VALUES, IMPORT_OFF_GRID, IMPORT_NOT_FINITE, IMPORT_MISFIT };

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static void sort_floats(float *v, int n) {
    if (n > 64) {
        qsort(v, (size_t)n, sizeof *v, cmp_float);
        return;
    }
    for (int i = 1; i < n; i++) { /* insertion sort: a group is short */
        float x = v[i];
        int j = i - 1;
        while (j >= 0 && v[j] > x) {
            v[j + 1] = v[j];
            j--;
        }
        v[j + 1] = x;
    }
}

/* The distinct levels of one group: its values clustered within tol. */
typedef struct group_levels {
    int k;             /* distinct values found (may exceed 4) */
    double center[4];  /* mean of each of the first 4 clusters, ascending */
    int count[4];
    double tol;
} group_levels;

static group_levels find_levels(const float *w, int n, double noise_rel, float *scratch) {
    group_levels lv = {0};
    memcpy(scratch, w, (size_t)n * sizeof *scratch);
    sort_floats(scratch, n);
    double absmax = fmax(fabs(scratch[0]), fabs(scratch[n - 1]));
    lv.tol = noise_rel * absmax;
    double first = 0.0;
    for (int i = 0; i < n; i++) {
        /* Measured from the cluster's first value, so a cluster is never wider
         * than tol however many values chain through it. */
        if (i == 0 || scratch[i] - first > lv.tol) {
            first = scratch[i];
            lv.k++;
        }
        if (lv.k <= 4) {
            lv.center[lv.k - 1] += scratch[i];
            lv.count[lv.k - 1]++;
        }
    }
    for (int j = 0; j < 4 && j < lv.k; j++) lv.center[j] /= lv.count[j];
    return lv;
}

/* Fit center[j] = s * cb[code[j]] + m for the k <= 4 levels: try every
 * ascending assignment of levels to codes and keep those whose largest misfit
 * is within tol and s > 0. With fewer than 4 levels several fit; the choice:
 *  1. one whose fp16-rounded s and m reproduce every level exactly (so weights
 *     written from fp16 parameters, e.g. by rq_q2_dequant, come back bit-exact
 *     even when a group does not use all 4 codes);
 *  2. then the smallest s (int2 with 2 values: codes 0 and 3, s = range / 3,
 *     what RTN would store; NF2: s = max |w|, absmax scaling);
 *  3. then the lowest codes (int2, 3 equally spaced values: codes 0-2, m = min).
 * NF2 tries m = 0 (how NF2 quantizes) before a free offset (an NF2 tensor after
 * a merge). One value: int2 s = 0, m = the value, code 0; NF2 s = |value|,
 * code of level +-1 (the value 0: s = 0 at level 0). */
static bool fit_levels(const group_levels *lv, const float cb[4], rq_q2_codebook_kind kind, double *s_out,
                       double *m_out, int code_of_level[4], double *misfit_out) {
    if (lv->k == 1) {
        double v = lv->center[0];
        if (kind == RQ_Q2_NF2) {
            *s_out = fabs(v);
            *m_out = 0.0;
            code_of_level[0] = v > 0 ? 3 : v < 0 ? 0 : 1;
        } else {
            *s_out = 0.0;
            *m_out = v;
            code_of_level[0] = 0;
        }
        *misfit_out = 0.0;
        return true;
    }
    double best_s = INFINITY, best_misfit = INFINITY;
    bool found = false, best_exact = false;
    for (int pass = 0; pass < 2 && !found; pass++) {
        bool free_offset = kind == RQ_Q2_INT2 || pass == 1;
        if (kind == RQ_Q2_INT2 && pass == 1) break;
        for (int mask = 1; mask < 16; mask++) {
            if (__builtin_popcount((unsigned)mask) != lv->k) continue;
            int codes[4], j = 0;
            for (int c = 0; c < 4; c++)
                if (mask & (1 << c)) codes[j++] = c;
            double wsum = 0, sl = 0, sll = 0, sv = 0, svl = 0;
            for (j = 0; j < lv->k; j++) {
                double n = lv->count[j], l = cb[codes[j]], v = lv->center[j];
                wsum += n;
                sl += n * l;
                sll += n * l * l;
                sv += n * v;
                svl += n * v * l;
            }
            double s, m = 0.0;
            if (free_offset) {
                double den = wsum * sll - sl * sl;
                if (!(den > 0)) continue;
                s = (wsum * svl - sl * sv) / den;
                m = (sv - s * sl) / wsum;
            } else {
                if (!(sll > 0)) continue;
                s = svl / sll;
            }
            if (!(s > 0)) continue;
            double misfit = 0.0;
            for (j = 0; j < lv->k; j++) misfit = fmax(misfit, fabs(lv->center[j] - (s * cb[codes[j]] + m)));
            if (misfit > lv->tol) {
                best_misfit = fmin(best_misfit, misfit);
                continue;
            }
            bool exact = true;
            group_params p = {rq_f32_to_f16((float)s), rq_f32_to_f16((float)m)};
            group_grid grid = make_grid(cb, p);
            for (j = 0; j < lv->k; j++) exact &= (double)grid.lut[codes[j]] == lv->center[j];
            if (!found || (exact && !best_exact) || (exact == best_exact && s < best_s * (1.0 - 1e-6))) {
                found = true;
                best_exact = exact;
                best_s = s;
                *s_out = s;
                *m_out = m;
                for (j = 0; j < lv->k; j++) code_of_level[j] = codes[j];
            }
        }
    }
    *misfit_out = found ? 0.0 : best_misfit;
    return found;
}

/* The index of the level nearest to x (levels ascend). */
static int nearest_level(const group_levels *lv, float x) {
    int best = 0;
    for (int j = 1; j < lv->k && j < 4; j++)
        if (fabs(x - lv->center[j]) < fabs(x - lv->center[best])) best = j;
    return best;
}

typedef struct row_report {
    double max_abs, max_rel;
    int worst_col;
    int groups_under_4;
} row_report;

/* One row of the import; IMPORT_OK or the reason, with *fail filled. */
static int import_row(rq_q2_tensor *t, const float *wr, int row, double noise_rel, float *scratch,
                      row_report *rep, first_failure *fail) {
    const int in = t->in, gs = t->group_size;
    uint8_t *codes = t->codes + (size_t)row * (size_t)t->row_bytes;
    memset(codes, 0, (size_t)t->row_bytes);
    memset(rep, 0, sizeof *rep);
    for (int g = 0; g < t->n_groups; g++) {
        const int c0 = g * gs, n = in - c0 < gs ? in - c0 : gs;
        const float *wg = wr + c0;
        fail->row = row;
        fail->group = g;
        fail->col = c0;
        fail->where = (long long)row * in + c0;
        for (int i = 0; i < n; i++)
            if (!(fabsf(wg[i]) <= FP16_MAX)) {
                fail->col = c0 + i;
                fail->value = wg[i];
                return IMPORT_NOT_FINITE;
            }
        group_levels lv = find_levels(wg, n, noise_rel, scratch);
        fail->n_values = lv.k;
        fail->tolerance = lv.tol;
        if (lv.k > 4) return IMPORT_TOO_MANY_VALUES;
        double s, m, misfit;
        int code_of_level[4];
        if (!fit_levels(&lv, t->codebook, t->kind, &s, &m, code_of_level, &misfit)) {
            fail->misfit = misfit;
            return IMPORT_OFF_GRID;
        }
        if (lv.k < 4) rep->groups_under_4++;
        group_params p = {rq_f32_to_f16((float)s), rq_f32_to_f16((float)m)};
        group_grid grid = make_grid(t->codebook, p);
        t->scales[(size_t)row * t->n_groups + g] = p.s;
        t->offsets[(size_t)row * t->n_groups + g] = p.m;
        /* Beyond the input noise, fp16 storage of s and m may move a level by
         * half an fp16 ulp of each term (2^-11 relative), plus fp32 rounding. */
        double absmax = fmax(fabs(lv.center[0]), fabs(lv.center[lv.k - 1]));
        double allowed = lv.tol + ldexp(fabs(s) * 1.0 + fabs(m), -10) + ldexp(absmax, -20);
        for (int i = 0; i < n; i++) {
            int code = code_of_level[nearest_level(&lv, wg[i])];
            int col = c0 + i;
            codes[col >> 2] |= (uint8_t)(code << ((col & 3) * 2));
            double e = fabs((double)wg[i] - (double)grid.lut[code]);
            if (e > allowed) {
                fail->col = col;
                fail->value = wg[i];
                fail->misfit = e;
                fail->tolerance = allowed;
                return IMPORT_MISFIT;
            }
            if (e > rep->max_abs) {
                rep->max_abs = e;
                rep->worst_col = col;
            }
            if (absmax > 0 && e / absmax > rep->max_rel) rep->max_rel = e / absmax;
        }
    }
    return IMPORT_OK;
}

static rq_status import_failure(const first_failure *f, const rq_q2_tensor *t, const char *name, rq_err *err) {
    const int gs = t->group_size;
    const int c0 = f->group * gs, c1 = (c0 + gs < t->in ? c0 + gs : t->in) - 1;
    const char *grid = rq_q2_codebook_name(t->kind);
    switch (f->why) {
    case IMPORT_TOO_MANY_VALUES:
        return RQ_FAIL(err, RQ_ERR_FORMAT,
                       "fake-quant import of %s: row %d, group %d (columns %d..%d) holds %d distinct values, more "
                       "than the 4 of a 2-bit grid (values closer than %.3g count as one); hint: the weights are not "
                       "fake-quantized at 2 bits with group size %d, or their storage noise exceeds noise_rel",
                       label(name), f->row, f->group, c0, c1, f->n_values, f->tolerance, gs);
    case IMPORT_OFF_GRID:
        return RQ_FAIL(err, RQ_ERR_FORMAT,
                       "fake-quant import of %s: row %d, group %d (columns %d..%d) holds %d distinct values that no "
                       "scale and offset put on the %s levels (closest fit misses by %.3g, tolerance %.3g); hint: "
                       "check the codebook (int2 needs equally spaced values, nf2 the NormalFloat ratios)",
                       label(name), f->row, f->group, c0, c1, f->n_values, grid, f->misfit, f->tolerance);
    case IMPORT_NOT_FINITE:
        return RQ_FAIL(err, RQ_ERR_FORMAT,
                       "fake-quant import of %s: row %d, column %d (group %d) holds %g, which fp16 scales and "
                       "offsets cannot represent",
                       label(name), f->row, f->col, f->group, f->value);
    default:
        return RQ_FAIL(err, RQ_ERR_FORMAT,
                       "fake-quant import of %s: row %d, column %d (group %d): the recovered %s grid reproduces %g "
                       "only to %.3g (tolerance %.3g); hint: levels closer than the noise tolerance were merged",
                       label(name), f->row, f->col, f->group, grid, f->value, f->misfit, f->tolerance);
    }
}

rq_status rq_q2_import_fake_quant(const float *w, int out, int in, const rq_import_opts *opts, const char *name,
                                  rq_q2_tensor **t, rq_import_report *report, rq_err *err) {
    *t = NULL;
    if (report) memset(report, 0, sizeof *report);
    if (!w || in <= 0 || out <= 0)
        return RQ_FAIL(err, RQ_ERR_ARG, "fake-quant import of %s: shape [%d][%d] has no weights", label(name), out,
                       in);
    if (!(opts->noise_rel >= 0 && opts->noise_rel < 0.1))
        return RQ_FAIL(err, RQ_ERR_ARG, "fake-quant import of %s: noise_rel %g must lie in [0, 0.1)", label(name),
                       opts->noise_rel);
    rq_q2_tensor *q;
    rq_status st = rq_q2_create(out, in, opts->group_size, opts->kind, &q, err);
    if (st != RQ_OK) {
        rq_err_prefix(err, "fake-quant import of %s: ", label(name));
        return st;
    }
    row_report *rows = rq_calloc((size_t)out, sizeof *rows, err);
    if (!rows) {
        rq_q2_free(q);
        return err ? err->code : RQ_ERR_NOMEM;
    }
    first_failure fail = {.where = LLONG_MAX};
    int scratch_missing = 0;
    const int gs = q->group_size < in ? q->group_size : in;

#pragma omp parallel num_threads(resolve_threads(opts->n_threads))
    {
        float *scratch = malloc((size_t)gs * sizeof *scratch);
        if (!scratch) {
#pragma omp atomic write
            scratch_missing = 1;
        }
#pragma omp for schedule(dynamic, 4)
        for (int row = 0; row < out; row++) {
            if (!scratch) continue;
            first_failure f = {0};
            f.why = import_row(q, w + (size_t)row * (size_t)in, row, opts->noise_rel, scratch, &rows[row], &f);
            if (f.why != IMPORT_OK) record_failure(&fail, &f);
        }
        free(scratch);
    }

    if (scratch_missing) st = RQ_FAIL(err, RQ_ERR_NOMEM, "fake-quant import of %s: out of memory", label(name));
    else if (fail.where != LLONG_MAX) st = import_failure(&fail, q, name, err);
    if (st != RQ_OK) {
        free(rows);
        rq_q2_free(q);
        return st;
    }
    if (report) {
        report->worst_row = report->worst_col = 0;
        for (int r = 0; r < out; r++) {
            if (rows[r].max_abs > report->max_abs_err) {
                report->max_abs_err = rows[r].max_abs;
                report->worst_row = r;
                report->worst_col = rows[r].worst_col;
            }
            report->max_rel_err = fmax(report->max_rel_err, rows[r].max_rel);
            report->groups_under_4 += rows[r].groups_under_4;
        }
        report->groups = (long long)out * q->n_groups;
    }
    free(rows);
    *t = q;
    return RQ_OK;
}
