/* Rotary embeddings (rotate-half pairs), forward and its transpose. */
#include "common.cuh"

/* one thread per (row, head, pair i < hd/2); row = b * T + t */
__global__ void k_rope(float *x, const float *cos_t, const float *sin_t, size_t n, int T, int n_heads, int hd,
                       int backward) {
    const int half = hd / 2;
    for (size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x; k < n; k += (size_t)gridDim.x * blockDim.x) {
        const int i = (int)(k % half);
        const size_t rh = k / half; /* row * n_heads + head */
        const size_t row = rh / n_heads;
        const int t = (int)(row % T);
        float *xh = x + rh * hd;
        float a = xh[i], b = xh[i + half];
        const float c = cos_t[(size_t)t * half + i], s = sin_t[(size_t)t * half + i];
        if (backward) rq_rope_pair_bwd(&a, &b, c, s);
        else rq_rope_pair(&a, &b, c, s);
        xh[i] = a;
        xh[i + half] = b;
    }
}

extern "C" cudaError_t rqk_rope(cudaStream_t st, float *x, const float *cos_t, const float *sin_t, int B, int T,
                                int n_heads, int hd, int backward) {
    const size_t n = (size_t)B * T * n_heads * (hd / 2);
    if (!n) return cudaSuccess;
    k_rope<<<rqk_blocks(n), RQK_THREADS, 0, st>>>(x, cos_t, sin_t, n, T, n_heads, hd, backward);
    return RQK_LAUNCHED();
}
