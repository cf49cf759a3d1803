/* Randomized truncated SVD (Halko, Martinsson & Tropp 2011, subspace iteration
 * with orthonormalization after every product) and a Jacobi eigensolver for the
 * small projected problem. Basis vectors are kept as rows (Qt [k][m]) so every
 * vector is contiguous for the Gram-Schmidt step. */
#include "svd.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>

void rq_rsvd_opts_default(rq_rsvd_opts *o) {
    o->oversample = 10;
    o->power_iters = 2;
    o->seed = 0x5eed1f7cULL;
}

/* ---- Gaussian numbers: xoshiro256** and Box-Muller ------------------------------- */

#define RQ_TWO_PI 6.283185307179586476925286766559

typedef struct gauss_rng {
    uint64_t s[4];
} gauss_rng;

static uint64_t rotl64(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t rng_next(gauss_rng *g) {
    uint64_t result = rotl64(g->s[1] * 5, 7) * 9, t = g->s[1] << 17;
    g->s[2] ^= g->s[0];
    g->s[3] ^= g->s[1];
    g->s[1] ^= g->s[2];
    g->s[0] ^= g->s[3];
    g->s[2] ^= t;
    g->s[3] = rotl64(g->s[3], 45);
    return result;
}

static void rng_seed(gauss_rng *g, uint64_t seed) {
    for (int i = 0; i < 4; i++) { /* splitmix64 spreads one seed over the state */
        uint64_t z = (seed += 0x9e3779b97f4a7c15ULL);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        g->s[i] = z ^ (z >> 31);
    }
}

static void fill_gaussian(gauss_rng *g, float *v, size_t n) {
    for (size_t i = 0; i < n; i += 2) {
        double u1 = ((double)(rng_next(g) >> 11) + 1.0) * 0x1.0p-53; /* (0, 1]: log stays finite */
        double u2 = (double)(rng_next(g) >> 11) * 0x1.0p-53;
        double r = sqrt(-2.0 * log(u1));
        v[i] = (float)(r * cos(RQ_TWO_PI * u2));
        if (i + 1 < n) v[i + 1] = (float)(r * sin(RQ_TWO_PI * u2));
    }
}

/* ---- small dense pieces ----------------------------------------------------------- */

static double norm2(const float *v, int n) {
    double s = 0.0;
    for (int i = 0; i < n; i++) s += (double)v[i] * v[i];
    return sqrt(s);
}

/* Orthonormalize the k rows of Q [k][len] in order: classical Gram-Schmidt run
 * twice per vector ("twice is enough" for fp32 orthogonality), BLAS-2 over the
 * rows already done. A row that (nearly) lies in the span of the previous ones
 * carries no new direction; it is replaced by a random vector, so the basis
 * always has k orthonormal rows even for a rank-deficient E. */
static void orthonormalize_rows(float *Q, int k, int len, float *coef, gauss_rng *g) {
    for (int i = 0; i < k; i++) {
        float *v = Q + (size_t)i * len;
        for (int attempt = 0; attempt < 8; attempt++) {
            double before = norm2(v, len);
            for (int pass = 0; pass < 2 && i > 0; pass++) {
                cblas_sgemv(CblasRowMajor, CblasNoTrans, i, len, 1.0f, Q, len, v, 1, 0.0f, coef, 1);
                cblas_sgemv(CblasRowMajor, CblasTrans, i, len, -1.0f, Q, len, coef, 1, 1.0f, v, 1);
            }
            double after = norm2(v, len);
            /* Below 1e-5 of its length the remainder is fp32 cancellation noise. */
            if (after > 0.0 && after > 1e-5 * before) {
                float inv = (float)(1.0 / after);
                for (int j = 0; j < len; j++) v[j] *= inv;
                break;
            }
            fill_gaussian(g, v, (size_t)len);
        }
    }
}

void rq_sym_eigen_jacobi(double *A, int k, double *w, double *V) {
    for (int i = 0; i < k; i++)
        for (int j = 0; j < k; j++) V[i * k + j] = i == j ? 1.0 : 0.0;
    for (int sweep = 0; sweep < 100; sweep++) {
        double off = 0.0, diag = 0.0;
        for (int p = 0; p < k; p++) {
            diag += A[p * k + p] * A[p * k + p];
            for (int q = p + 1; q < k; q++) off += A[p * k + q] * A[p * k + q];
        }
        if (off <= 1e-30 * diag || off == 0.0) break; /* off-diagonal at double rounding level */
        for (int p = 0; p < k; p++) {
            for (int q = p + 1; q < k; q++) {
                double apq = A[p * k + q];
                if (apq == 0.0) continue;
                double theta = (A[q * k + q] - A[p * k + p]) / (2.0 * apq);
                double t = (theta >= 0 ? 1.0 : -1.0) / (fabs(theta) + sqrt(theta * theta + 1.0));
                double c = 1.0 / sqrt(t * t + 1.0), s = t * c;
                for (int r = 0; r < k; r++) { /* A <- A P */
                    double arp = A[r * k + p], arq = A[r * k + q];
                    A[r * k + p] = c * arp - s * arq;
                    A[r * k + q] = s * arp + c * arq;
                }
                for (int r = 0; r < k; r++) { /* A <- P^T A */
                    double apr = A[p * k + r], aqr = A[q * k + r];
                    A[p * k + r] = c * apr - s * aqr;
                    A[q * k + r] = s * apr + c * aqr;
                }
                A[p * k + q] = A[q * k + p] = 0.0;
                for (int r = 0; r < k; r++) { /* V <- V P */
                    double vrp = V[r * k + p], vrq = V[r * k + q];
                    V[r * k + p] = c * vrp - s * vrq;
                    V[r * k + q] = s * vrp + c * vrq;
                }
            }
        }
    }
    for (int i = 0; i < k; i++) w[i] = A[i * k + i];
    for (int i = 0; i < k; i++) { /* selection sort, descending, columns of V along */
        int best = i;
        for (int j = i + 1; j < k; j++)
            if (w[j] > w[best]) best = j;
        if (best == i) continue;
        double tw = w[i];
        w[i] = w[best];
        w[best] = tw;
        for (int r = 0; r < k; r++) {
            double tv = V[r * k + i];
            V[r * k + i] = V[r * k + best];
            V[r * k + best] = tv;
        }
    }
}

/* ---- the randomized SVD ------------------------------------------------------------- */

rq_status rq_svd_top_r(const float *E, int m, int n, int r, const rq_rsvd_opts *opts, float *U, float *S,
                       float *Vt, rq_err *err) {
    if (m <= 0 || n <= 0 || r <= 0)
        return RQ_FAIL(err, RQ_ERR_ARG, "truncated SVD of a [%d][%d] matrix at rank %d: all must be positive", m, n, r);
    rq_rsvd_opts def;
    if (!opts) {
        rq_rsvd_opts_default(&def);
        opts = &def;
    }
    const int mn = m < n ? m : n;
    const int r_eff = r < mn ? r : mn;
    const int oversample = opts->oversample > 0 ? opts->oversample : 0;
    const int k = r_eff + oversample < mn ? r_eff + oversample : mn;

    memset(U, 0, (size_t)m * r * sizeof *U);
    memset(S, 0, (size_t)r * sizeof *S);
    memset(Vt, 0, (size_t)r * n * sizeof *Vt);

    float *Qt = rq_alloc_aligned((size_t)k * m * sizeof(float), err);     /* basis of the column space, rows */
    float *Zt = rq_alloc_aligned((size_t)k * n * sizeof(float), err);     /* basis of the row space, then Q^T E */
    double *Bd = rq_alloc_aligned((size_t)k * n * sizeof(double), err);   /* Q^T E in double for the Gram matrix */
    double *G = rq_alloc_aligned((size_t)k * k * sizeof(double), err);
    double *W = rq_alloc_aligned((size_t)k * k * sizeof(double), err);
    double *lambda = rq_alloc_aligned((size_t)k * sizeof(double), err);
    float *Wf = rq_alloc_aligned((size_t)k * r_eff * sizeof(float), err);
    float *coef = rq_alloc_aligned((size_t)k * sizeof(float), err);
    rq_status st = RQ_OK;
    if (!Qt || !Zt || !Bd || !G || !W || !lambda || !Wf || !coef) {
        st = err ? err->code : RQ_ERR_NOMEM;
        goto done;
    }

    gauss_rng g;
    rng_seed(&g, opts->seed);
    fill_gaussian(&g, Zt, (size_t)k * n);
    /* Qt = orth(Omega^T E^T), then power passes, re-orthonormalized after every
     * product so small singular directions are not lost to fp32 rounding. */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, k, m, n, 1.0f, Zt, n, E, n, 0.0f, Qt, m);
    orthonormalize_rows(Qt, k, m, coef, &g);
    for (int it = 0; it < opts->power_iters; it++) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, k, n, m, 1.0f, Qt, m, E, n, 0.0f, Zt, n);
        orthonormalize_rows(Zt, k, n, coef, &g);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, k, m, n, 1.0f, Zt, n, E, n, 0.0f, Qt, m);
        orthonormalize_rows(Qt, k, m, coef, &g);
    }
    /* The projected matrix Bm = Q^T E [k][n]; its SVD from the eigenpairs of
     * Bm Bm^T. Squaring costs accuracy only in singular values far below the
     * top ones, which the rank-r product barely feels; the Gram matrix is
     * formed in double to keep even those to fp32 level. */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, k, n, m, 1.0f, Qt, m, E, n, 0.0f, Zt, n);
    for (size_t i = 0; i < (size_t)k * n; i++) Bd[i] = Zt[i];
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasNoTrans, k, n, 1.0, Bd, n, 0.0, G, k);
    for (int i = 0; i < k; i++)
        for (int j = 0; j < i; j++) G[i * k + j] = G[j * k + i];
    rq_sym_eigen_jacobi(G, k, lambda, W);

    for (int l = 0; l < k; l++)
        for (int j = 0; j < r_eff; j++) Wf[l * r_eff + j] = (float)W[l * k + j];
    /* U = Q W[:, :r], Vt = diag(1/sigma) W[:, :r]^T Bm */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, m, r_eff, k, 1.0f, Qt, m, Wf, r_eff, 0.0f, U, r);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r_eff, n, k, 1.0f, Wf, r_eff, Zt, n, 0.0f, Vt, n);
    double sigma0 = sqrt(fmax(lambda[0], 0.0));
    for (int j = 0; j < r_eff; j++) {
        double sigma = sqrt(fmax(lambda[j], 0.0));
        float *row = Vt + (size_t)j * n;
        /* Directions below fp32 resolution of the largest are noise: drop them. */
        if (!(sigma > 1e-7 * sigma0)) {
            memset(row, 0, (size_t)n * sizeof *row);
            for (int i = 0; i < m; i++) U[(size_t)i * r + j] = 0.0f;
            continue;
        }
        S[j] = (float)sigma;
        float inv = (float)(1.0 / sigma);
        for (int i = 0; i < n; i++) row[i] *= inv;
    }

done:
    free(Qt);
    free(Zt);
    free(Bd);
    free(G);
    free(W);
    free(lambda);
    free(Wf);
    free(coef);
    return st;
}
