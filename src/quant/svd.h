/* Truncated SVD for LoftQ: randomized subspace iteration over CBLAS GEMMs and a
 * small dense Jacobi eigensolver (no LAPACK needed). */
#ifndef RQ_SVD_H
#define RQ_SVD_H

#include "../core/core.h"

typedef struct rq_rsvd_opts {
    int oversample;  /* extra basis vectors beyond r (10): the accuracy of the top r grows with them */
    int power_iters; /* passes of (E E^T) over the basis (2): sharpen a slowly decaying spectrum */
    uint64_t seed;   /* of the Gaussian test matrix; the result is deterministic for a seed */
} rq_rsvd_opts;

void rq_rsvd_opts_default(rq_rsvd_opts *o);

/* E [m][n] (row-major fp32) ~ U diag(S) Vt with U [m][r], S [r] descending,
 * Vt [r][n]. When r exceeds min(m, n) the extra singular values are 0 and their
 * vectors are zero. The basis has min(r + oversample, min(m, n)) vectors; with
 * that many equal to min(m, n) the result is exact up to rounding. Uses the
 * BLAS's threads. */
rq_status rq_svd_top_r(const float *E, int m, int n, int r, const rq_rsvd_opts *opts, float *U, float *S,
                       float *Vt, rq_err *err);

/* Eigen-decomposition of a symmetric k x k matrix by cyclic Jacobi rotations,
 * in double: A = V diag(w) V^T with w descending, V [k][k] holding the
 * eigenvectors in columns. A is overwritten. */
void rq_sym_eigen_jacobi(double *A, int k, double *w, double *V);

#endif /* RQ_SVD_H */
