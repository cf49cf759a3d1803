/* The backend op table: the seam between model code and devices.
 *
 * Model, adapter, loss and optimizer code call these ops on buffers that live
 * on the backend; they never touch a device themselves. Shapes are given in a
 * one-line comment on each op; matrices are row-major. */
#ifndef RQ_BACKEND_H
#define RQ_BACKEND_H

#include "../core/core.h"
#include "../model/model.h"

typedef struct rq_backend rq_backend;

struct rq_backend {
    const char *name;
    void *ctx;
    int n_threads;

    /* Memory on the device. */
    void *(*alloc)(rq_backend *be, size_t bytes, rq_err *err);
    void (*free)(rq_backend *be, void *p);
    rq_status (*upload)(rq_backend *be, void *dst, const void *src, size_t bytes, rq_err *err);
    rq_status (*download)(rq_backend *be, void *dst, const void *src, size_t bytes, rq_err *err);
    /* dst[rows][C] = src[idx[r]][C]: gather rows of a matrix on the device */
    void (*gather_rows)(rq_backend *be, float *dst, const float *src, const int *idx, int rows, int C);

    /* out[N][W.out] = in[N][W.in] * W^T (+ out when accumulate). W may be fp32
     * or q2 (dequantized tile by tile). */
    void (*linear)(rq_backend *be, float *out, const float *in, const rq_linear *W, int N, bool accumulate);
    /* out[N][M] = a[N][K] * b[M][K]^T (+ out when accumulate), plain fp32. */
    void (*matmul_nt)(rq_backend *be, float *out, const float *a, const float *b, int N, int M, int K,
                      bool accumulate);
    /* out[N][C] = table[tokens[n]][C] */
    void (*embedding)(rq_backend *be, float *out, const int *tokens, const float *table, int N, int C);
    /* out[N][C] = w * x / sqrt(mean(x^2) + eps); rstd[N] saved for backward (may be NULL) */
    void (*rmsnorm_fwd)(rq_backend *be, float *out, float *rstd, const float *x, const float *w, int N, int C,
                        float eps);
    /* x[B][T][n_heads][hd] rotated in place, rotate-half pairs (i, i+hd/2); token t
     * uses cos[t][hd/2], sin[t][hd/2] (angles already include rope scaling). */
    void (*rope_fwd)(rq_backend *be, float *x, const float *cos, const float *sin, int B, int T, int n_heads,
                     int hd);
    /* Causal grouped-query attention for B sequences of T new queries each:
     * q[B][T][nh][hd]; k, v caches [B][Tk_max][nkv][hd] hold keys of positions
     * 0 .. pos0+T-1; query t sits at position pos0+t and sees keys <= its position.
     * out[B][T][nh][hd]. att[B][nh][T][pos0+T] (probabilities) saved when not NULL. */
    void (*attention_fwd)(rq_backend *be, float *out, float *att, const float *q, const float *k, const float *v,
                          int B, int T, int pos0, int Tk_max, int nh, int nkv, int hd);
    /* out[N][H] = silu(gate) * up */
    void (*swiglu_fwd)(rq_backend *be, float *out, const float *gate, const float *up, int N, int H);
    /* dst[B][T][C] rows -> cache[B][Tmax][C] at positions pos0 .. pos0+T-1 */
    void (*cache_store)(rq_backend *be, float *cache, const float *src, int B, int T, int pos0, int Tmax, int C);
    /* x[i] += y[i] */
    void (*add_inplace)(rq_backend *be, float *x, const float *y, size_t n);

    void (*destroy)(rq_backend *be);
};

/* The CPU backend: CBLAS GEMMs, OpenMP loops. n_threads <= 0: OpenMP default. */
rq_status rq_backend_cpu_create(int n_threads, rq_backend **out, rq_err *err);
/* By name: "cpu" (or "cuda" when built with it). */
rq_status rq_backend_create(const char *name, int n_threads, rq_backend **out, rq_err *err);
void rq_backend_destroy(rq_backend *be);

#endif
