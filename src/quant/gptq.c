/* GPTQ into the q2 format (see gptq.h). */
#include "gptq.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>


/* LAPACK (OpenBLAS ships it): Cholesky factor and inverse from it, column-major. */
extern void dpotrf_(const char *uplo, const int *n, double *a, const int *lda, int *info);
extern void dpotri_(const char *uplo, const int *n, double *a, const int *lda, int *info);

void rq_gptq_opts_default(rq_gptq_opts *o) {
    memset(o, 0, sizeof *o);
    rq_quant_opts_default(&o->quant);
    o->damp = 0.01;
    o->block = 128;
}

/* H (symmetric, [n][n]) -> U, the upper Cholesky factor of H^-1 (H^-1 = U^T U),
 * stored so that U(i, j), i <= j, is a[i + j n] (column-major). */
static rq_status hinv_cholesky(double *a, int n, const char *name, rq_err *err) {
    int info = 0;
    dpotrf_("L", &n, a, &n, &info);
    if (info == 0) dpotri_("L", &n, a, &n, &info);
    if (info != 0)
        return RQ_FAIL(err, RQ_ERR_ARG, "GPTQ %s: the dampened Hessian is not positive definite (LAPACK info %d); "
                       "raise the dampening or use more calibration windows", name, info);
    for (int j = 0; j < n; j++) /* the inverse's lower triangle into the upper one */
        for (int i = j + 1; i < n; i++) a[j + (size_t)i * n] = a[i + (size_t)j * n];
    dpotrf_("U", &n, a, &n, &info);
    if (info != 0)
        return RQ_FAIL(err, RQ_ERR_ARG, "GPTQ %s: H^-1 is not positive definite (LAPACK info %d); raise the "
                       "dampening", name, info);
    return RQ_OK;
}

rq_status rq_gptq_quantize(float *W, int out, int in, double *H, const rq_gptq_opts *o, const char *name,
                           rq_q2_tensor **t_out, double *proxy_loss, rq_err *err) {
    *t_out = NULL;
    const char *label = name && *name ? name : "(unnamed tensor)";
    const int gs = o->quant.group_size;
    if (out <= 0 || in <= 0 || gs <= 0) return RQ_FAIL(err, RQ_ERR_ARG, "GPTQ %s: shape [%d, %d], group %d", label, out, in, gs);
    for (size_t i = 0; i < (size_t)out * in; i++)
        if (!(fabsf(W[i]) <= 65504.0f))
            return RQ_FAIL(err, RQ_ERR_FORMAT, "GPTQ %s: weight %zu (row %zu) holds %g, which fp16 scales and offsets "
                           "cannot represent", label, i, i / (size_t)in, W[i]);
    const rq_q2_codebook_kind kind = rq_quant_method_codebook(o->quant.method);
    rq_q2_tensor *t = NULL;
    RQ_TRY(rq_q2_create(out, in, gs, kind, &t, err));
    const int zero_code = kind == RQ_Q2_NF2 ? 1 : 0; /* the code of level 0: what a flat group stores */
    /* dead inputs (never non-zero in the calibration data) carry no information: their weights go to 0 */
    double mean_diag = 0;
    for (int i = 0; i < in; i++) mean_diag += H[(size_t)i * in + i];
    mean_diag /= in;
    for (int i = 0; i < in; i++)
        if (H[(size_t)i * in + i] == 0) {
            H[(size_t)i * in + i] = 1;
            for (int r = 0; r < out; r++) W[(size_t)r * in + i] = 0;
        }
    const double damp = o->damp * (mean_diag > 0 ? mean_diag : 1.0);
    for (int i = 0; i < in; i++) H[(size_t)i * in + i] += damp;
    rq_status st = hinv_cholesky(H, in, label, err);
    const double *U = H; /* U(i, j) = U[i + j in] */
    const int block = ((o->block > 0 ? o->block : 128) + gs - 1) / gs * gs;
    const int bmax = block < in ? block : in;
    /* the transposed weights: column i of W is the contiguous row WT[i] */
    float *WT = st == RQ_OK ? malloc(sizeof(float) * (size_t)in * out) : NULL;
    float *E = WT ? malloc(sizeof(float) * (size_t)bmax * out) : NULL;
    float *Ub = E ? malloc(sizeof(float) * (size_t)bmax * in) : NULL;
    rq_quant_grid *grid = Ub ? malloc(sizeof(rq_quant_grid) * (size_t)out) : NULL;
    float *gw = grid ? malloc(sizeof(float) * (size_t)gs * out) : NULL;
    if (st == RQ_OK && !gw) st = RQ_FAIL(err, RQ_ERR_NOMEM, "GPTQ %s: out of memory", label);
    double loss = 0;
    if (st == RQ_OK) {
        for (int r = 0; r < out; r++)
            for (int i = 0; i < in; i++) WT[(size_t)i * out + r] = W[(size_t)r * in + i];
        for (int b1 = 0; b1 < in; b1 += block) {
            const int b2 = b1 + block < in ? b1 + block : in, nb = b2 - b1;
            for (int i = b1; i < b2; i++) {
                float *wi = WT + (size_t)i * out;
                if (i % gs == 0) { /* a group starts: its (s, m) from the weights as they are now */
                    const int g = i / gs, n = in - i < gs ? in - i : gs;
#pragma omp parallel for schedule(static)
                    for (int r = 0; r < out; r++) {
                        float *w = gw + (size_t)r * gs;
                        for (int k = 0; k < n; k++) w[k] = WT[(size_t)(i + k) * out + r];
                        rq_quant_params p = rq_quant_group_params(w, n, t->codebook, &o->quant);
                        t->scales[(size_t)r * t->n_groups + g] = p.s;
                        t->offsets[(size_t)r * t->n_groups + g] = p.m;
                        grid[r] = rq_quant_grid_make(t->codebook, p);
                    }
                }
                const double d = U[(size_t)i + (size_t)i * in];
                float *e = E + (size_t)(i - b1) * out;
                double col_loss = 0;
#pragma omp parallel for schedule(static) reduction(+ : col_loss)
                for (int r = 0; r < out; r++) {
                    const float w = wi[r];
                    const int code = grid[r].flat ? zero_code : rq_quant_grid_code(&grid[r], w);
                    const float q = grid[r].flat ? grid[r].lut[0] : grid[r].lut[code];
                    t->codes[(size_t)r * t->row_bytes + (i >> 2)] |= (uint8_t)(code << ((i & 3) * 2));
                    e[r] = (float)((w - q) / d);
                    col_loss += (double)(w - q) * (w - q) / (2 * d * d);
                }
                loss += col_loss;
                /* the error spreads over the rest of the block at once */
#pragma omp parallel for schedule(static)
                for (int j = i + 1; j < b2; j++) {
                    const float u = (float)U[(size_t)i + (size_t)j * in];
                    float *wj = WT + (size_t)j * out;
                    for (int r = 0; r < out; r++) wj[r] -= u * e[r];
                }
            }
            if (b2 < in) { /* and over the later columns once per block: WT[b2:] -= Ub^T E */
                const int rest = in - b2;
                for (int k = 0; k < nb; k++)
                    for (int j = 0; j < rest; j++) Ub[(size_t)k * rest + j] = (float)U[(size_t)(b1 + k) + (size_t)(b2 + j) * in];
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, rest, out, nb, -1.0f, Ub, rest, E, out, 1.0f,
                            WT + (size_t)b2 * out, out);
            }
        }
        for (int r = 0; r < out; r++)
            for (int i = 0; i < in; i++) W[(size_t)r * in + i] = WT[(size_t)i * out + r];
    }
    free(gw);
    free(grid);
    free(Ub);
    free(E);
    free(WT);
    if (st != RQ_OK) {
        rq_q2_free(t);
        return st;
    }
    if (proxy_loss) *proxy_loss = loss;
    *t_out = t;
    return RQ_OK;
}

