/* Per-element math shared by the CPU loops and the CUDA kernels.
 *
 * Each function here compiles both as C (the CPU backend calls it in its
 * loops) and as CUDA (__host__ __device__), so the CPU tests exercise the same
 * arithmetic the GPU runs. Keep them free of library calls other than expf,
 * sqrtf, cosf and sinf. */
#ifndef RQ_OPS_MATH_H
#define RQ_OPS_MATH_H

#include <math.h>

#ifdef __CUDACC__
#define RQ_HD __host__ __device__ __forceinline__
#else
#define RQ_HD static inline
#endif

RQ_HD float rq_silu(float x) { return x / (1.0f + expf(-x)); }

/* SwiGLU: silu(gate) * up */
RQ_HD float rq_swiglu(float gate, float up) { return rq_silu(gate) * up; }

/* 1 / sqrt(mean of squares + eps), from a sum of squares over C elements */
RQ_HD float rq_rms_rstd(float sum_sq, int C, float eps) { return 1.0f / sqrtf(sum_sq / (float)C + eps); }

/* Rotate one rotate-half pair (x0 = x[i], x1 = x[i + hd/2]) by angle with cos c, sin s. */
RQ_HD void rq_rope_pair(float *x0, float *x1, float c, float s) {
    float a = *x0, b = *x1;
    *x0 = a * c - b * s;
    *x1 = b * c + a * s;
}

#endif
