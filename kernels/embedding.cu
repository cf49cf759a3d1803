/* Row gathers (embedding lookup, gather_rows) and the KV-cache store. */
#include "common.cuh"

/* one block per output row, threads over the columns */
__global__ void k_gather_rows(float *out, const float *table, const int *idx, int C) {
    const float *src = table + (size_t)idx[blockIdx.x] * C;
    float *dst = out + (size_t)blockIdx.x * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) dst[c] = src[c];
}

/* grid (T, B): row t of sequence b */
__global__ void k_cache_store(float *cache, const float *src, int T, int pos0, int Tmax, int C) {
    const int t = blockIdx.x, b = blockIdx.y;
    const float *s = src + ((size_t)b * T + t) * C;
    float *d = cache + ((size_t)b * Tmax + pos0 + t) * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) d[c] = s[c];
}

extern "C" cudaError_t rqk_gather_rows(cudaStream_t st, float *out, const float *table, const int *idx, int n, int C) {
    if (n <= 0 || C <= 0) return cudaSuccess;
    k_gather_rows<<<n, RQK_THREADS, 0, st>>>(out, table, idx, C);
    return RQK_LAUNCHED();
}

extern "C" cudaError_t rqk_cache_store(cudaStream_t st, float *cache, const float *src, int B, int T, int pos0,
                                       int Tmax, int C) {
    if (B <= 0 || T <= 0 || C <= 0) return cudaSuccess;
    k_cache_store<<<dim3(T, B), RQK_THREADS, 0, st>>>(cache, src, T, pos0, Tmax, C);
    return RQK_LAUNCHED();
}
