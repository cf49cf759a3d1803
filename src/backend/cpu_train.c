/* The CPU backend's training ops: backward passes, losses, the Adam step and a
 * few vector helpers. fp32 storage; reductions that decide a loss or a norm are
 * accumulated in double. Gradients ADD into their outputs (+=) unless the op's
 * comment in backend.h says otherwise. */
#include <cblas.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../quant/q2.h"
#include "backend.h"
#include "cpu_internal.h"
#include "ops_math.h"
#include "scratch.h"

void rq_cpu_train_ops_install(rq_backend *be);

/* ---- GEMM-shaped ops ---------------------------------------------------------- */

/* din[N][in] += dout[N][out] * W[out][in] */
static void cpu_linear_bwd_input(rq_backend *be, float *din, const float *dout, const rq_linear *W, int N) {
    if (N == 0 || W->out == 0 || W->in == 0) return;
    if (W->w) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, W->in, W->out, 1.0f, dout, W->out, W->w, W->in,
                    1.0f, din, W->in);
        return;
    }
    /* q2: din += dout[:, r0:r1] * deq(W[r0:r1]), as many weight rows at once as
     * the backend's tile holds (all of a small model's): one large GEMM */
    cpu_ctx *c = be->ctx;
    const int rows = rq_cpu_q2_rows_per_gemm(c, W->out, W->in);
    for (int r0 = 0; r0 < W->out; r0 += rows) {
        int r1 = r0 + rows < W->out ? r0 + rows : W->out;
        rq_q2_dequant_rows(W->q2, r0, r1, c->tile, 0);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, W->in, r1 - r0, 1.0f, dout + r0, W->out, c->tile,
                    W->in, 1.0f, din, W->in);
    }
}

/* dW[M][K] += dout[N][M]^T * in[N][K] */
static void cpu_matmul_tn_acc(rq_backend *be, float *dW, const float *dout, const float *in, int N, int M, int K) {
    if (N == 0 || M == 0 || K == 0) return;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, M, K, N, 1.0f, dout, M, in, K, 1.0f, dW, K);
}

/* ---- row-wise ops --------------------------------------------------------------- */

/* out_i = w_i x_i r, r = (mean(x^2) + eps)^-1/2:
 * dx_i += r w_i g_i - r^3 x_i / C * sum_j g_j w_j x_j */
static void cpu_rmsnorm_bwd(rq_backend *be, float *dx, const float *dout, const float *x, const float *w,
                            const float *rstd, int N, int C) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *xr = x + (size_t)n * C, *g = dout + (size_t)n * C;
        float *d = dx + (size_t)n * C;
        float r = rstd[n];
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int i = 0; i < C; i++) dot += g[i] * w[i] * xr[i];
        float coef = rq_rms_bwd_coef(r, dot, C);
        for (int i = 0; i < C; i++) d[i] += rq_rms_bwd_elem(r, w[i], g[i], coef, xr[i]);
    }
}

static void cpu_rope_bwd(rq_backend *be, float *dx, const float *cos_t, const float *sin_t, int B, int T, int n_heads,
                         int hd) {
    int half = hd / 2;
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            const float *c = cos_t + (size_t)t * half, *s = sin_t + (size_t)t * half;
            float *row = dx + ((size_t)b * T + t) * n_heads * hd;
            for (int h = 0; h < n_heads; h++) {
                float *dh = row + (size_t)h * hd;
                for (int i = 0; i < half; i++) rq_rope_pair_bwd(&dh[i], &dh[i + half], c[i], s[i]);
            }
        }
}

/* Causal GQA attention backward from the saved probabilities P (att):
 *   dV_j += sum_t P_tj dO_t
 *   dP_tj = dO_t . V_j,  dS_tj = P_tj (dP_tj - sum_k P_tk dP_tk)
 *   dQ_t += scale sum_j dS_tj K_j,  dK_j += scale sum_t dS_tj Q_t
 *
 * Two implementations of the same formulas. Short sequences (and the rare case
 * where the T x T scratch cannot be allocated) take the loop version: one task
 * per (sequence, KV head), which owns that head's dK and dV rows so the query
 * heads of its group accumulate without races, and dP is computed twice (for
 * the row sum, then for dS) so it needs no scratch. Longer sequences take four
 * CBLAS GEMMs per query head over the full T x T square (the zeros above the
 * diagonal cost 2x in flops but run at GEMM speed, ~10x the scalar loops). */
static void attention_bwd_loops(float *dq, float *dk, float *dv, const float *dout, const float *att, const float *q,
                                const float *k, const float *v, int B, int T, int nh, int nkv, int hd) {
    const float scale = 1.0f / sqrtf((float)hd);
    const int group = nh / nkv;
    const size_t qstride = (size_t)nh * hd, kvstride = (size_t)nkv * hd;
#pragma omp parallel for collapse(2) schedule(dynamic, 1)
    for (int b = 0; b < B; b++)
        for (int kvh = 0; kvh < nkv; kvh++) {
            const float *kb = k + (size_t)b * T * kvstride + (size_t)kvh * hd;
            const float *vb = v + (size_t)b * T * kvstride + (size_t)kvh * hd;
            float *dkb = dk + (size_t)b * T * kvstride + (size_t)kvh * hd;
            float *dvb = dv + (size_t)b * T * kvstride + (size_t)kvh * hd;
            for (int h = kvh * group; h < (kvh + 1) * group; h++) {
                for (int t = 0; t < T; t++) {
                    const float *p = att + (((size_t)b * nh + h) * T + t) * T;
                    const float *go = dout + ((size_t)b * T + t) * qstride + (size_t)h * hd;
                    const float *qt = q + ((size_t)b * T + t) * qstride + (size_t)h * hd;
                    float *dqt = dq + ((size_t)b * T + t) * qstride + (size_t)h * hd;
                    float row_dot = 0.0f; /* sum_j P_tj dP_tj */
                    for (int j = 0; j <= t; j++) {
                        const float *vj = vb + (size_t)j * kvstride;
                        float *dvj = dvb + (size_t)j * kvstride;
                        float pj = p[j], dp = 0.0f;
                        for (int i = 0; i < hd; i++) {
                            dp += go[i] * vj[i];
                            dvj[i] += pj * go[i];
                        }
                        row_dot += pj * dp;
                    }
                    for (int j = 0; j <= t; j++) {
                        const float *vj = vb + (size_t)j * kvstride, *kj = kb + (size_t)j * kvstride;
                        float *dkj = dkb + (size_t)j * kvstride;
                        float dp = 0.0f;
                        for (int i = 0; i < hd; i++) dp += go[i] * vj[i];
                        float ds = rq_attn_dscore(p[j], dp, row_dot, scale);
                        for (int i = 0; i < hd; i++) {
                            dqt[i] += ds * kj[i];
                            dkj[i] += ds * qt[i];
                        }
                    }
                }
            }
        }
}

/* ds [T][T] scratch. Heads run one after another (heads of a group share dK
 * and dV); inside a head the work is cut in blocks of RQ_CPU_ATTENTION_BLOCK
 * that skip the masked half of the scores:
 *   by query block i (rows [t0, t1), keys [0, t1)):  dP_i = dO_i V^T, the
 *     softmax backward row by row into dS_i, dQ_i += dS_i K;
 *   by key block j (keys [j0, j1), queries [j0, T)):  dV_j += P^T dO,
 *     dK_j += dS^T Q (P and dS are zero above the diagonal inside the block).
 * Blocks run in parallel with single-threaded GEMMs; every output element is
 * computed by the same GEMM call whatever the thread count, so the result is too. */
static void attention_bwd_gemm(float *ds, float *dq, float *dk, float *dv, const float *dout, const float *att,
                               const float *q, const float *k, const float *v, int B, int T, int nh, int nkv, int hd) {
    const float scale = 1.0f / sqrtf((float)hd);
    const int group = nh / nkv;
    const int ldq = nh * hd, ldkv = nkv * hd;
    const int BS = RQ_CPU_ATTENTION_BLOCK, n_blocks = (T + BS - 1) / BS;
    const bool pthread_blas = openblas_get_parallel() == 1; /* see cpu_attention_fwd */
    const int blas_threads = openblas_get_num_threads();
    if (pthread_blas) openblas_set_num_threads(1);
    /* one parallel region for the whole call: every thread walks the heads, the
       blocks of each phase are shared out (the implicit barrier after each phase
       orders phase 1 before 2, and a head's phase 2 before the next head reuses ds) */
#pragma omp parallel
    for (int b = 0; b < B; b++)
        for (int h = 0; h < nh; h++) {
            const int kvh = h / group;
            const float *p = att + ((size_t)b * nh + h) * T * T;
            const size_t qoff = (size_t)b * T * ldq + (size_t)h * hd, kvoff = (size_t)b * T * ldkv + (size_t)kvh * hd;
            {
#pragma omp for schedule(dynamic, 1)
                for (int i = n_blocks - 1; i >= 0; i--) { /* largest first */
                    const int t0 = i * BS, t1 = t0 + BS < T ? t0 + BS : T;
                    float *dsb = ds + (size_t)t0 * T;
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, t1 - t0, t1, hd, 1.0f,
                                dout + qoff + (size_t)t0 * ldq, ldq, v + kvoff, ldkv, 0.0f, dsb, T);
                    for (int t = t0; t < t1; t++) {
                        const float *pr = p + (size_t)t * T;
                        float *row = ds + (size_t)t * T;
                        float row_dot = 0.0f;
#pragma omp simd reduction(+ : row_dot)
                        for (int j = 0; j <= t; j++) row_dot += pr[j] * row[j];
#pragma omp simd
                        for (int j = 0; j <= t; j++) row[j] = rq_attn_dscore(pr[j], row[j], row_dot, scale);
                        for (int j = t + 1; j < t1; j++) row[j] = 0.0f; /* causal: no gradient above the diagonal */
                    }
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, t1 - t0, hd, t1, 1.0f, dsb, T, k + kvoff,
                                ldkv, 1.0f, dq + qoff + (size_t)t0 * ldq, ldq);
                }
#pragma omp for schedule(dynamic, 1)
                for (int j = 0; j < n_blocks; j++) { /* largest first: key block j sees queries [j0, T) */
                    const int j0 = j * BS, j1 = j0 + BS < T ? j0 + BS : T;
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, j1 - j0, hd, T - j0, 1.0f,
                                p + (size_t)j0 * T + j0, T, dout + qoff + (size_t)j0 * ldq, ldq, 1.0f,
                                dv + kvoff + (size_t)j0 * ldkv, ldkv);
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, j1 - j0, hd, T - j0, 1.0f,
                                ds + (size_t)j0 * T + j0, T, q + qoff + (size_t)j0 * ldq, ldq, 1.0f,
                                dk + kvoff + (size_t)j0 * ldkv, ldkv);
                }
            }
        }
    if (pthread_blas) openblas_set_num_threads(blas_threads);
}

/* The T x T scratch of the GEMM path, grown once and then held (a fresh 1 MiB
 * buffer per call cost a page fault per 4 KiB, every layer of every step). */
static void cpu_attention_bwd(rq_backend *be, float *dq, float *dk, float *dv, const float *dout, const float *att,
                              const float *q, const float *k, const float *v, int B, int T, int nh, int nkv,
                              int hd) {
    cpu_ctx *c = be->ctx;
    const size_t need = (size_t)T * (size_t)T;
    if (T >= RQ_CPU_ATTENTION_BWD_GEMM_MIN_T && c->ds_floats < need) {
        free(c->ds);
        c->ds = malloc(sizeof(float) * need);
        c->ds_floats = c->ds ? need : 0;
    }
    if (T >= RQ_CPU_ATTENTION_BWD_GEMM_MIN_T && c->ds) attention_bwd_gemm(c->ds, dq, dk, dv, dout, att, q, k, v, B, T, nh, nkv, hd);
    else attention_bwd_loops(dq, dk, dv, dout, att, q, k, v, B, T, nh, nkv, hd);
}

static void cpu_swiglu_bwd(rq_backend *be, float *dgate, float *dup, const float *dout, const float *gate,
                           const float *up, int N, int H) {
    size_t n = (size_t)N * H;
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) rq_swiglu_bwd(gate[i], up[i], dout[i], &dgate[i], &dup[i]);
}

static void cpu_group_pool_fwd(rq_backend *be, float *out, const float *in, int N, int C, int gs) {
    const int G = (C + gs - 1) / gs;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = in + (size_t)n * C;
        float *o = out + (size_t)n * G;
        for (int g = 0; g < G; g++) {
            int i0 = g * gs, i1 = i0 + gs < C ? i0 + gs : C;
            float s = 0.0f;
#pragma omp simd reduction(+ : s)
            for (int i = i0; i < i1; i++) s += x[i];
            o[g] = rq_group_mean(s, i1 - i0);
        }
    }
}

static void cpu_group_pool_bwd(rq_backend *be, float *din, const float *dout, int N, int C, int gs) {
    const int G = (C + gs - 1) / gs;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        float *d = din + (size_t)n * C;
        const float *g_out = dout + (size_t)n * G;
        for (int g = 0; g < G; g++) {
            int i0 = g * gs, i1 = i0 + gs < C ? i0 + gs : C;
            float share = rq_group_mean(g_out[g], i1 - i0);
            for (int i = i0; i < i1; i++) d[i] += share;
        }
    }
}

/* ---- losses ------------------------------------------------------------------ */

/* Rows are independent: one thread per row, the log-sum-exp in fp32 after
 * subtracting the row max (exact enough: every term is <= 1). With a gradient,
 * the sum pass keeps e = exp(z - max) in dlogits (which may be the logits
 * themselves: the target's logit is read first), so each logit costs one exp.
 * A target outside [0, V) counts as masked (the loss layer rejects such targets
 * before this). */
static void cpu_cross_entropy(rq_backend *be, float *loss, float *dlogits, const float *logits, const int *targets,
                              int N, int V, float grad_scale) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *z = logits + (size_t)n * V;
        float *dz = dlogits ? dlogits + (size_t)n * V : NULL;
        int target = targets[n];
        if (target < 0 || target >= V) {
            loss[n] = 0.0f;
            if (dz) memset(dz, 0, sizeof(float) * (size_t)V);
            continue;
        }
        const float z_target = z[target];
        float mx = -FLT_MAX;
#pragma omp simd reduction(max : mx)
        for (int i = 0; i < V; i++) mx = z[i] > mx ? z[i] : mx;
        float sum = 0.0f;
        if (dz) {
#pragma omp simd reduction(+ : sum)
            for (int i = 0; i < V; i++) {
                float e = rq_expf(z[i] - mx);
                dz[i] = e;
                sum += e;
            }
        } else {
#pragma omp simd reduction(+ : sum)
            for (int i = 0; i < V; i++) sum += rq_expf(z[i] - mx);
        }
        float lse = mx + logf(sum);
        loss[n] = lse - z_target;
        if (dz) {
            float inv = 1.0f / sum;
#pragma omp simd
            for (int i = 0; i < V; i++) dz[i] = rq_ce_dlogit_from_exp(dz[i], inv, grad_scale);
            dz[target] -= grad_scale;
        }
    }
}

/* Reductions in a fixed number of fixed blocks summed in order: the result is
 * the same bits whatever the thread count and scheduling, which bit-identical
 * resume (and reproducible logs) rely on. OpenMP's reduction clause combines
 * partial sums in thread-arrival order. */
#define RQ_REDUCE_BLOCKS 64

static double cpu_mse(rq_backend *be, float *d, const float *a, const float *b, size_t n, float grad_scale) {
    double part[RQ_REDUCE_BLOCKS];
    const float g2 = 2.0f * grad_scale;
#pragma omp parallel for schedule(static)
    for (int k = 0; k < RQ_REDUCE_BLOCKS; k++) {
        size_t lo = n * (size_t)k / RQ_REDUCE_BLOCKS, hi = n * (size_t)(k + 1) / RQ_REDUCE_BLOCKS;
        double acc = 0.0;
        for (size_t i = lo; i < hi; i++) {
            float diff = a[i] - b[i];
            acc += (double)diff * (double)diff;
            if (d) d[i] += g2 * diff;
        }
        part[k] = acc;
    }
    double total = 0.0;
    for (int k = 0; k < RQ_REDUCE_BLOCKS; k++) total += part[k];
    return total;
}

/* ---- optimizer and vector helpers --------------------------------------------- */

static void cpu_adam_common(float *param, const float *grad, float *m, float *v, size_t n, float lr, float beta1,
                            float beta2, float eps, float decay_mul, float l2, int t) {
    /* Scalars in double as torch computes them in Python, then rounded once. */
    double bc1 = 1.0 - pow((double)beta1, t), bc2 = 1.0 - pow((double)beta2, t);
    float step_size = (float)((double)lr / bc1), bc2_sqrt = (float)sqrt(bc2);
    float omb1 = (float)(1.0 - (double)beta1), omb2 = (float)(1.0 - (double)beta2);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++)
        rq_adam_elem(&param[i], grad[i], &m[i], &v[i], beta2, omb1, omb2, eps, decay_mul, l2, step_size, bc2_sqrt);
}

static void cpu_adamw(rq_backend *be, float *param, const float *grad, float *m, float *v, size_t n, float lr,
                      float beta1, float beta2, float eps, float weight_decay, int t) {
    float decay_mul = (float)(1.0 - (double)lr * (double)weight_decay);
    cpu_adam_common(param, grad, m, v, n, lr, beta1, beta2, eps, decay_mul, 0.0f, t);
}

static void cpu_adam_l2(rq_backend *be, float *param, const float *grad, float *m, float *v, size_t n, float lr,
                        float beta1, float beta2, float eps, float weight_decay, int t) {
    cpu_adam_common(param, grad, m, v, n, lr, beta1, beta2, eps, 1.0f, weight_decay, t);
}

static double cpu_sum_squares(rq_backend *be, const float *x, size_t n) {
    double part[RQ_REDUCE_BLOCKS];
#pragma omp parallel for schedule(static)
    for (int k = 0; k < RQ_REDUCE_BLOCKS; k++) {
        size_t lo = n * (size_t)k / RQ_REDUCE_BLOCKS, hi = n * (size_t)(k + 1) / RQ_REDUCE_BLOCKS;
        double acc = 0.0;
        for (size_t i = lo; i < hi; i++) acc += (double)x[i] * (double)x[i];
        part[k] = acc;
    }
    double total = 0.0;
    for (int k = 0; k < RQ_REDUCE_BLOCKS; k++) total += part[k];
    return total;
}

static void cpu_scale(rq_backend *be, float *x, float s, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) x[i] *= s;
}

/* Backward clears several [N][hidden] gradient buffers per layer: above
 * RQ_CPU_PARALLEL_BYTES the cores share the memset. */
static void cpu_fill_zero(rq_backend *be, float *x, size_t n) {
    const size_t bytes = sizeof(float) * n;
    if (bytes < RQ_CPU_PARALLEL_BYTES) {
        if (n) memset(x, 0, bytes);
        return;
    }
#pragma omp parallel for schedule(static)
    for (int k = 0; k < RQ_CPU_PARALLEL_PARTS; k++) {
        size_t lo = n * (size_t)k / RQ_CPU_PARALLEL_PARTS, hi = n * (size_t)(k + 1) / RQ_CPU_PARALLEL_PARTS;
        memset(x + lo, 0, sizeof(float) * (hi - lo));
    }
}

void rq_cpu_train_ops_install(rq_backend *be) {
    be->linear_bwd_input = cpu_linear_bwd_input;
    be->matmul_tn_acc = cpu_matmul_tn_acc;
    be->rmsnorm_bwd = cpu_rmsnorm_bwd;
    be->rope_bwd = cpu_rope_bwd;
    be->attention_bwd = cpu_attention_bwd;
    be->swiglu_bwd = cpu_swiglu_bwd;
    be->group_pool_fwd = cpu_group_pool_fwd;
    be->group_pool_bwd = cpu_group_pool_bwd;
    be->cross_entropy = cpu_cross_entropy;
    be->mse = cpu_mse;
    be->adamw = cpu_adamw;
    be->adam_l2 = cpu_adam_l2;
    be->sum_squares = cpu_sum_squares;
    be->scale = cpu_scale;
    be->fill_zero = cpu_fill_zero;
}
