/* RMSNorm forward and backward: one block per row, the row's sum in a fixed
 * reduction order (deterministic; it differs from the CPU's sequential sum only
 * by fp32 rounding). */
#include "common.cuh"

__global__ void k_rmsnorm_fwd(float *out, float *rstd, const float *x, const float *w, int C, float eps) {
    __shared__ float red[32];
    const float *xr = x + (size_t)blockIdx.x * C;
    float *o = out + (size_t)blockIdx.x * C;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < C; i += blockDim.x) ss += xr[i] * xr[i];
    ss = rqk_block_sum(ss, red);
    const float r = rq_rms_rstd(ss, C, eps);
    if (rstd && threadIdx.x == 0) rstd[blockIdx.x] = r;
    for (int i = threadIdx.x; i < C; i += blockDim.x) o[i] = rq_rms_apply(w[i], xr[i], r);
}

__global__ void k_rmsnorm_bwd(float *dx, const float *dout, const float *x, const float *w, const float *rstd, int C) {
    __shared__ float red[32];
    const size_t row = blockIdx.x;
    const float *xr = x + row * C, *g = dout + row * C;
    float *d = dx + row * C;
    const float r = rstd[row];
    float dot = 0.0f;
    for (int i = threadIdx.x; i < C; i += blockDim.x) dot += g[i] * w[i] * xr[i];
    dot = rqk_block_sum(dot, red);
    const float coef = rq_rms_bwd_coef(r, dot, C);
    for (int i = threadIdx.x; i < C; i += blockDim.x) d[i] += rq_rms_bwd_elem(r, w[i], g[i], coef, xr[i]);
}

extern "C" cudaError_t rqk_rmsnorm_fwd(cudaStream_t st, float *out, float *rstd, const float *x, const float *w, int N,
                                       int C, float eps) {
    if (N <= 0 || C <= 0) return cudaSuccess;
    k_rmsnorm_fwd<<<N, RQK_THREADS, 0, st>>>(out, rstd, x, w, C, eps);
    return RQK_LAUNCHED();
}

extern "C" cudaError_t rqk_rmsnorm_bwd(cudaStream_t st, float *dx, const float *dout, const float *x, const float *w,
                                       const float *rstd, int N, int C) {
    if (N <= 0 || C <= 0) return cudaSuccess;
    k_rmsnorm_bwd<<<N, RQK_THREADS, 0, st>>>(dx, dout, x, w, rstd, C);
    return RQK_LAUNCHED();
}
