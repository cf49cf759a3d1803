/* Attention helpers around the batched GEMMs of the CUDA backend's attention
 * (src/backend/cuda.c): layout changes to head-major [B][nh][T][hd] so that
 * every (sequence, head) pair is one batch entry at a fixed stride, GQA K/V
 * repeated per query head, the causal softmax and its backward. */
#include "common.cuh"

/* dst[b][h][t][:] = src[b][t][h][:], T_src rows per sequence in src */
__global__ void k_heads_to_major(float *dst, const float *src, size_t n, int T, int T_src, int n_heads, int hd) {
    for (size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x; k < n; k += (size_t)gridDim.x * blockDim.x) {
        const int i = (int)(k % hd);
        size_t r = k / hd;
        const int t = (int)(r % T);
        r /= T;
        const int h = (int)(r % n_heads);
        const size_t b = r / n_heads;
        dst[k] = src[((b * T_src + t) * n_heads + h) * hd + i];
    }
}

/* dst[b][h][t][:] = src[b][t][h / group][:] */
__global__ void k_kv_expand(float *dst, const float *src, size_t n, int T, int T_src, int nh, int nkv, int hd) {
    const int group = nh / nkv;
    for (size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x; k < n; k += (size_t)gridDim.x * blockDim.x) {
        const int i = (int)(k % hd);
        size_t r = k / hd;
        const int t = (int)(r % T);
        r /= T;
        const int h = (int)(r % nh);
        const size_t b = r / nh;
        dst[k] = src[((b * T_src + t) * nkv + h / group) * hd + i];
    }
}

/* dst[b][t][h][:] (+)= src[b][h][t][:]; k runs over dst */
__global__ void k_heads_from_major(float *dst, const float *src, size_t n, int T, int n_heads, int hd, int acc) {
    for (size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x; k < n; k += (size_t)gridDim.x * blockDim.x) {
        const int i = (int)(k % hd);
        size_t r = k / hd;
        const int h = (int)(r % n_heads);
        r /= n_heads;
        const int t = (int)(r % T);
        const size_t b = r / T;
        const float v = src[((b * n_heads + h) * T + t) * hd + i];
        dst[k] = acc ? dst[k] + v : v;
    }
}

/* dst[b][t][g][:] += sum over h of group g of src[b][h][t][:]; k runs over dst */
__global__ void k_kv_reduce_acc(float *dst, const float *src, size_t n, int T, int nh, int nkv, int hd) {
    const int group = nh / nkv;
    for (size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x; k < n; k += (size_t)gridDim.x * blockDim.x) {
        const int i = (int)(k % hd);
        size_t r = k / hd;
        const int g = (int)(r % nkv);
        r /= nkv;
        const int t = (int)(r % T);
        const size_t b = r / T;
        float s = 0.0f;
        for (int h = g * group; h < (g + 1) * group; h++) s += src[((b * nh + h) * T + t) * hd + i];
        dst[k] += s;
    }
}

/* one block per row; row r is query t = r % T at position pos0 + t */
__global__ void k_causal_softmax(float *s, int T, int Tk, int pos0) {
    __shared__ float red[32];
    float *row = s + (size_t)blockIdx.x * Tk;
    const int t = (int)(blockIdx.x % T);
    const int n_keys = pos0 + t + 1;
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < n_keys; j += blockDim.x) mx = fmaxf(mx, row[j]);
    mx = rqk_block_max(mx, red);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < n_keys; j += blockDim.x) {
        const float e = expf(row[j] - mx);
        row[j] = e;
        sum += e;
    }
    sum = rqk_block_sum(sum, red);
    const float inv = 1.0f / sum;
    for (int j = threadIdx.x; j < n_keys; j += blockDim.x) row[j] *= inv;
    for (int j = n_keys + threadIdx.x; j < Tk; j += blockDim.x) row[j] = 0.0f;
}

__global__ void k_softmax_bwd(float *ds, const float *p, int T, float scale) {
    __shared__ float red[32];
    const size_t base = (size_t)blockIdx.x * T;
    const int t = (int)(blockIdx.x % T);
    float dot = 0.0f;
    for (int j = threadIdx.x; j <= t; j += blockDim.x) dot += p[base + j] * ds[base + j];
    dot = rqk_block_sum(dot, red);
    for (int j = threadIdx.x; j < T; j += blockDim.x)
        ds[base + j] = j <= t ? rq_attn_dscore(p[base + j], ds[base + j], dot, scale) : 0.0f;
}

extern "C" cudaError_t rqk_heads_to_major(cudaStream_t st, float *dst, const float *src, int B, int T, int T_src,
                                          int n_heads, int hd) {
    const size_t n = (size_t)B * n_heads * T * hd;
    if (!n) return cudaSuccess;
    k_heads_to_major<<<rqk_blocks(n), RQK_THREADS, 0, st>>>(dst, src, n, T, T_src, n_heads, hd);
    return RQK_LAUNCHED();
}

extern "C" cudaError_t rqk_kv_expand(cudaStream_t st, float *dst, const float *src, int B, int T, int T_src, int nh,
                                     int nkv, int hd) {
    const size_t n = (size_t)B * nh * T * hd;
    if (!n) return cudaSuccess;
    k_kv_expand<<<rqk_blocks(n), RQK_THREADS, 0, st>>>(dst, src, n, T, T_src, nh, nkv, hd);
    return RQK_LAUNCHED();
}

extern "C" cudaError_t rqk_heads_from_major(cudaStream_t st, float *dst, const float *src, int B, int T, int n_heads,
                                            int hd, int accumulate) {
    const size_t n = (size_t)B * T * n_heads * hd;
    if (!n) return cudaSuccess;
    k_heads_from_major<<<rqk_blocks(n), RQK_THREADS, 0, st>>>(dst, src, n, T, n_heads, hd, accumulate);
    return RQK_LAUNCHED();
}

extern "C" cudaError_t rqk_kv_reduce_acc(cudaStream_t st, float *dst, const float *src, int B, int T, int nh, int nkv,
                                         int hd) {
    const size_t n = (size_t)B * T * nkv * hd;
    if (!n) return cudaSuccess;
    k_kv_reduce_acc<<<rqk_blocks(n), RQK_THREADS, 0, st>>>(dst, src, n, T, nh, nkv, hd);
    return RQK_LAUNCHED();
}

extern "C" cudaError_t rqk_causal_softmax(cudaStream_t st, float *s, int rows, int T, int Tk, int pos0) {
    if (rows <= 0 || Tk <= 0) return cudaSuccess;
    k_causal_softmax<<<rows, RQK_THREADS, 0, st>>>(s, T, Tk, pos0);
    return RQK_LAUNCHED();
}

extern "C" cudaError_t rqk_softmax_bwd(cudaStream_t st, float *ds, const float *p, int rows, int T, float scale) {
    if (rows <= 0 || T <= 0) return cudaSuccess;
    k_softmax_bwd<<<rows, RQK_THREADS, 0, st>>>(ds, p, T, scale);
    return RQK_LAUNCHED();
}
