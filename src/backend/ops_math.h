/* Per-element math shared by the CPU loops and the CUDA kernels.
 *
 * Each function here compiles both as C (the CPU backend calls it in its
 * loops) and as CUDA (__host__ __device__), so the CPU tests exercise the same
 * arithmetic the GPU runs. Keep them free of library calls other than expf
 * (through rq_expf), sqrtf, cosf and sinf. */
#ifndef RQ_OPS_MATH_H
#define RQ_OPS_MATH_H

#include <math.h>
#include <stdint.h>

#ifdef __CUDACC__
#define RQ_HD __host__ __device__ __forceinline__
#else
#define RQ_HD static inline
#include <string.h>
#endif

/* e^x. CUDA: expf. C: branch-free Cody-Waite range reduction and Cephes' degree-6
 * polynomial (relative error <= 2 ulp on [-87, 88], checked against expf over
 * that range in tests/test_train_ops.c), written so that compilers vectorize the
 * loops that call it: libm's expf is a call per element that no loop vectorizes
 * (it was ~4% of a training step). Below -87 it returns 0, above 88.7 +inf, NaN
 * stays NaN. Deterministic: plain fp32 operations in a fixed order. */
#ifdef __CUDACC__
RQ_HD float rq_expf(float x) { return expf(x); }
#else
RQ_HD float rq_expf(float x) {
    const float lo = -87.0f, hi = 88.0f;
    float xc = x > lo ? x : lo; /* NaN -> lo here (no cast of NaN to int below); restored at the end */
    xc = xc < hi ? xc : hi;
    /* n = round(x / ln 2) by the 1.5 * 2^23 trick (exact for |x / ln 2| < 2^22) */
    const float shifter = 12582912.0f;
    float t = xc * 1.44269504088896341f + shifter;
    float n = t - shifter;
    /* r = x - n ln 2 in two parts, so r keeps its low bits */
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float r2 = r * r;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r2 + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23; /* 2^n */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    float y = p * scale;
    y = x < lo ? 0.0f : y;
    y = x > 88.7228390f ? INFINITY : y;
    return x != x ? x : y;
}
#endif

RQ_HD float rq_silu(float x) { return x / (1.0f + rq_expf(-x)); }

/* SwiGLU: silu(gate) * up */
RQ_HD float rq_swiglu(float gate, float up) { return rq_silu(gate) * up; }

/* 1 / sqrt(mean of squares + eps), from a sum of squares over C elements */
RQ_HD float rq_rms_rstd(float sum_sq, int C, float eps) { return 1.0f / sqrtf(sum_sq / (float)C + eps); }

/* One RMSNorm output element: w * (x * rstd) */
RQ_HD float rq_rms_apply(float w, float x, float rstd) { return w * (x * rstd); }

/* Mean of a pooling group from its sum and its member count */
RQ_HD float rq_group_mean(float sum, int len) { return sum / (float)len; }

/* Rotate one rotate-half pair (x0 = x[i], x1 = x[i + hd/2]) by angle with cos c, sin s. */
RQ_HD void rq_rope_pair(float *x0, float *x1, float c, float s) {
    float a = *x0, b = *x1;
    *x0 = a * c - b * s;
    *x1 = b * c + a * s;
}

/* ---- training (backward, optimizer) ---------------------------------------- */

/* The transpose of rq_rope_pair: a rotation is orthogonal, so its backward is
 * the rotation by the opposite angle. */
RQ_HD void rq_rope_pair_bwd(float *d0, float *d1, float c, float s) { rq_rope_pair(d0, d1, c, -s); }

/* Backward of out = silu(gate) * up for one element:
 * silu'(g) = sigma(g) * (1 + g * (1 - sigma(g))). */
RQ_HD void rq_swiglu_bwd(float gate, float up, float dout, float *dgate, float *dup) {
    float sig = 1.0f / (1.0f + rq_expf(-gate));
    float silu = gate * sig;
    *dgate += dout * up * sig * (1.0f + gate * (1.0f - sig));
    *dup += dout * silu;
}

/* RMSNorm backward, out_i = w_i x_i r:
 *   dx_i += r w_i g_i - coef x_i,  coef = r^3 / C * sum_j g_j w_j x_j */
RQ_HD float rq_rms_bwd_coef(float rstd, float dot, int C) { return rstd * rstd * rstd * dot / (float)C; }
RQ_HD float rq_rms_bwd_elem(float rstd, float w, float g, float coef, float x) { return rstd * w * g - coef * x; }

/* Softmax backward of one causal attention score, from the probability p, its
 * gradient dp and the row's sum_k p_k dp_k; scale is the 1/sqrt(hd) of the scores. */
RQ_HD float rq_attn_dscore(float p, float dp, float row_dot, float scale) { return p * (dp - row_dot) * scale; }

/* Cross-entropy gradient of one logit before the one-hot term:
 * grad_scale * softmax(z) with the row max mx and inv = 1 / sum exp(z - mx). */
RQ_HD float rq_ce_dlogit(float z, float mx, float inv, float grad_scale) { return grad_scale * (rq_expf(z - mx) * inv); }
/* The same from e = rq_expf(z - mx) already computed (the CPU keeps it from the sum pass). */
RQ_HD float rq_ce_dlogit_from_exp(float e, float inv, float grad_scale) { return grad_scale * (e * inv); }

/* One Adam element step, in the order of torch.optim.Adam / AdamW's
 * single-tensor CPU path so results agree to rounding:
 *   decoupled decay (AdamW): p *= decay_mul (= 1 - lr * wd), before the update;
 *   coupled decay (Adam):    g += l2 * p (the L2 term enters the moments);
 *   m = lerp(m, g, 1 - b1)   (torch computes the first moment this way);
 *   v = b2 v + (1 - b2) g^2;
 *   p -= step_size * m / (sqrt(v) / bc2_sqrt + eps),
 * with step_size = lr / (1 - b1^t) and bc2_sqrt = sqrt(1 - b2^t) computed once
 * in double by the caller, as Python does. Pass decay_mul = 1, l2 = 0 for none. */
RQ_HD void rq_adam_elem(float *p, float g, float *m, float *v, float beta2, float one_minus_beta1,
                        float one_minus_beta2, float eps, float decay_mul, float l2, float step_size,
                        float bc2_sqrt) {
    float param = *p * decay_mul;
    if (l2 != 0.0f) g = g + l2 * param;
    float w = one_minus_beta1, mm = *m;
    /* torch's lerp: self + w * (end - self) for w < 0.5, else end - (end - self) * (1 - w) */
    mm = w < 0.5f ? mm + w * (g - mm) : g - (g - mm) * (1.0f - w);
    float vv = *v * beta2 + one_minus_beta2 * g * g;
    float denom = sqrtf(vv) / bc2_sqrt + eps;
    *m = mm;
    *v = vv;
    *p = param + (-step_size) * mm / denom;
}

#endif
