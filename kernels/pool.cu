/* QA-LoRA group pooling: group means and their backward. One thread per
 * (row, group) for the forward (groups are short), per input for the backward. */
#include "common.cuh"

__global__ void k_group_pool_fwd(float *out, const float *in, size_t n, int C, int gs, int G) {
    for (size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x; k < n; k += (size_t)gridDim.x * blockDim.x) {
        const size_t row = k / G;
        const int g = (int)(k % G);
        const int i0 = g * gs, i1 = i0 + gs < C ? i0 + gs : C;
        const float *x = in + row * C;
        float s = 0.0f;
        for (int i = i0; i < i1; i++) s += x[i]; /* in order, as the CPU sums */
        out[k] = rq_group_mean(s, i1 - i0);
    }
}

__global__ void k_group_pool_bwd(float *din, const float *dout, size_t n, int C, int gs, int G) {
    for (size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x; k < n; k += (size_t)gridDim.x * blockDim.x) {
        const size_t row = k / C;
        const int i = (int)(k % C), g = i / gs;
        const int i0 = g * gs, i1 = i0 + gs < C ? i0 + gs : C;
        din[k] += rq_group_mean(dout[row * G + g], i1 - i0);
    }
}

extern "C" cudaError_t rqk_group_pool_fwd(cudaStream_t st, float *out, const float *in, int N, int C, int gs) {
    if (N <= 0 || C <= 0) return cudaSuccess;
    const int G = (C + gs - 1) / gs;
    const size_t n = (size_t)N * G;
    k_group_pool_fwd<<<rqk_blocks(n), RQK_THREADS, 0, st>>>(out, in, n, C, gs, G);
    return RQK_LAUNCHED();
}

extern "C" cudaError_t rqk_group_pool_bwd(cudaStream_t st, float *din, const float *dout, int N, int C, int gs) {
    if (N <= 0 || C <= 0) return cudaSuccess;
    const int G = (C + gs - 1) / gs;
    const size_t n = (size_t)N * C;
    k_group_pool_bwd<<<rqk_blocks(n), RQK_THREADS, 0, st>>>(din, dout, n, C, gs, G);
    return RQK_LAUNCHED();
}
