/* The CPU backend's training ops: backward passes, losses, the Adam step and a
 * few vector helpers. fp32 storage; reductions that decide a loss or a norm are
 * accumulated in double. Gradients ADD into their outputs (+=) unless the op's
 * comment in backend.h says otherwise. */
#include <cblas.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>

#include "../quant/q2.h"
#include "backend.h"
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
    /* q2: din += dout[:, r0:r1] * deq(W[r0:r1]) one tile of weight rows at a
     * time, ~256 KiB per tile so it stays in L2 between dequantization and GEMM
     * (the same tiling as the forward linear). The tile is this call's own: the
     * op table has no error path, and the forward's scratch belongs to cpu.c. */
    int tile_rows = rq_cpu_q2_tile_rows(W->out, W->in);
    float *tile = malloc(sizeof(float) * (size_t)tile_rows * (size_t)W->in);
    if (!tile) {
        /* Out of memory for 256 KiB: still correct, one weight at a time. */
        for (int o = 0; o < W->out; o++)
            for (int i = 0; i < W->in; i++) {
                float w = rq_q2_weight(W->q2, o, i);
                for (int n = 0; n < N; n++) din[(size_t)n * W->in + i] += dout[(size_t)n * W->out + o] * w;
            }
        return;
    }
    for (int r0 = 0; r0 < W->out; r0 += tile_rows) {
        int r1 = r0 + tile_rows < W->out ? r0 + tile_rows : W->out;
        rq_q2_dequant_rows(W->q2, r0, r1, tile, 0);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, W->in, r1 - r0, 1.0f, dout + r0, W->out, tile,
                    W->in, 1.0f, din, W->in);
    }
    free(tile);
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
 * and dV); OpenBLAS and the row loop use the cores inside each head. */
static void attention_bwd_gemm(float *ds, float *dq, float *dk, float *dv, const float *dout, const float *att,
                               const float *q, const float *k, const float *v, int B, int T, int nh, int nkv, int hd) {
    const float scale = 1.0f / sqrtf((float)hd);
    const int group = nh / nkv;
    const int ldq = nh * hd, ldkv = nkv * hd;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < nh; h++) {
            const int kvh = h / group;
            const float *p = att + ((size_t)b * nh + h) * T * T;
            const size_t qoff = (size_t)b * T * ldq + (size_t)h * hd, kvoff = (size_t)b * T * ldkv + (size_t)kvh * hd;
            /* dV += P^T dO;  dP = dO V^T (into ds) */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, 1.0f, p, T, dout + qoff, ldq, 1.0f,
                        dv + kvoff, ldkv);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, 1.0f, dout + qoff, ldq, v + kvoff, ldkv,
                        0.0f, ds, T);
#pragma omp parallel for schedule(static)
            for (int t = 0; t < T; t++) {
                const float *pr = p + (size_t)t * T;
                float *row = ds + (size_t)t * T;
                float row_dot = 0.0f;
                for (int j = 0; j <= t; j++) row_dot += pr[j] * row[j];
                for (int j = 0; j <= t; j++) row[j] = rq_attn_dscore(pr[j], row[j], row_dot, scale);
                for (int j = t + 1; j < T; j++) row[j] = 0.0f; /* causal: no gradient above the diagonal */
            }
            /* dQ += dS K;  dK += dS^T Q */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, 1.0f, ds, T, k + kvoff, ldkv, 1.0f,
                        dq + qoff, ldq);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, 1.0f, ds, T, q + qoff, ldq, 1.0f,
                        dk + kvoff, ldkv);
        }
}


static void cpu_attention_bwd(rq_backend *be, float *dq, float *dk, float *dv, const float *dout, const float *att,
                              const float *q, const float *k, const float *v, int B, int T, int nh, int nkv,
                              int hd) {
    float *ds = T >= RQ_CPU_ATTENTION_BWD_GEMM_MIN_T ? malloc(sizeof(float) * (size_t)T * (size_t)T) : NULL;
    if (ds) attention_bwd_gemm(ds, dq, dk, dv, dout, att, q, k, v, B, T, nh, nkv, hd);
    else attention_bwd_loops(dq, dk, dv, dout, att, q, k, v, B, T, nh, nkv, hd);
    free(ds);
}

static void cpu_swiglu_bwd(rq_backend *be, float *dgate, float *dup, const float *dout, const float *gate,
                           const float *up, int N, int H) {
    size_t n = (size_t)N * H;
#pragma omp parallel for schedule(static)
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
 * subtracting the row max (exact enough: every term is <= 1). A target outside
 * [0, V) counts as masked (the loss layer rejects such targets before this). */
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
        float mx = -FLT_MAX;
        for (int i = 0; i < V; i++)
            if (z[i] > mx) mx = z[i];
        float sum = 0.0f;
        for (int i = 0; i < V; i++) sum += expf(z[i] - mx);
        float lse = mx + logf(sum);
        loss[n] = lse - z[target];
        if (dz) {
            float inv = 1.0f / sum;
            for (int i = 0; i < V; i++) dz[i] = rq_ce_dlogit(z[i], mx, inv, grad_scale);
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

static void cpu_fill_zero(rq_backend *be, float *x, size_t n) {
    if (n) memset(x, 0, sizeof(float) * n);
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
