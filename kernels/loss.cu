/* Cross-entropy rows and the deterministic fp64 reductions (MSE, sum of squares). */
#include <float.h>

#include "common.cuh"

/* (max, sum of exp(x - max)) pairs: the online softmax state */
struct ms_pair {
    float m, s;
};

__device__ inline ms_pair ms_merge(ms_pair a, ms_pair b) {
    if (a.m == -INFINITY) return b;
    if (b.m == -INFINITY) return a;
    const float m = fmaxf(a.m, b.m);
    return ms_pair{m, a.s * expf(a.m - m) + b.s * expf(b.m - m)};
}

/* One block per row. Each thread runs the online softmax over its strided
 * share of the vocabulary (one pass over the logits), the block merges the
 * states in a fixed tree order, then a second pass writes the gradients.
 * dlogits may alias logits: every element is read before it is overwritten by
 * the same thread, and the target logit is read before the first barrier. */
__global__ void k_cross_entropy(float *loss, float *dlogits, const float *logits, const int *targets, int V,
                                float grad_scale) {
    __shared__ ms_pair red[RQK_THREADS];
    __shared__ float z_target;
    const size_t row = blockIdx.x;
    const float *z = logits + row * V;
    float *dz = dlogits ? dlogits + row * V : NULL;
    const int target = targets[row];
    if (target < 0 || target >= V) {
        if (threadIdx.x == 0) loss[row] = 0.0f;
        if (dz)
            for (int i = threadIdx.x; i < V; i += blockDim.x) dz[i] = 0.0f;
        return;
    }
    if (threadIdx.x == 0) z_target = z[target];
    ms_pair st = {-INFINITY, 0.0f};
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        const float x = z[i];
        if (x > st.m) {
            st.s = (st.m == -INFINITY ? 0.0f : st.s * expf(st.m - x)) + 1.0f;
            st.m = x;
        } else if (x != -INFINITY) { /* a -inf logit adds 0 (-inf - -inf would be NaN); a NaN still propagates */
            st.s += expf(x - st.m);
        }
    }
    red[threadIdx.x] = st;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
        if ((int)threadIdx.x < w) red[threadIdx.x] = ms_merge(red[threadIdx.x], red[threadIdx.x + w]);
        __syncthreads();
    }
    const float mx = red[0].m, sum = red[0].s;
    if (threadIdx.x == 0) loss[row] = (mx + logf(sum)) - z_target;
    if (!dz) return;
    const float inv = 1.0f / sum;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        float g = rq_ce_dlogit(z[i], mx, inv, grad_scale);
        if (i == target) g -= grad_scale;
        dz[i] = g;
    }
}

/* Fixed blocks, fixed per-thread strides, fixed tree: the same bits on every run. */
__global__ void k_mse_partial(double *partial, float *d, const float *a, const float *b, size_t n, float g2) {
    __shared__ double red[32];
    double acc = 0.0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float diff = a[i] - b[i];
        acc += (double)diff * (double)diff;
        if (d) d[i] += g2 * diff;
    }
    acc = rqk_block_sum(acc, red);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

__global__ void k_sumsq_partial(double *partial, const float *x, size_t n) {
    __shared__ double red[32];
    double acc = 0.0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        acc += (double)x[i] * (double)x[i];
    acc = rqk_block_sum(acc, red);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

/* one thread adds the partials in order */
__global__ void k_sum_partials(double *out, const double *partial, int n) {
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    double s = 0.0;
    for (int i = 0; i < n; i++) s += partial[i];
    *out = s;
}

extern "C" cudaError_t rqk_cross_entropy(cudaStream_t st, float *loss, float *dlogits, const float *logits,
                                         const int *targets, int N, int V, float grad_scale) {
    if (N <= 0) return cudaSuccess;
    k_cross_entropy<<<N, RQK_THREADS, 0, st>>>(loss, dlogits, logits, targets, V, grad_scale);
    return RQK_LAUNCHED();
}

extern "C" cudaError_t rqk_mse(cudaStream_t st, double *out, double *partial, float *d, const float *a, const float *b,
                               size_t n, float grad_scale) {
    k_mse_partial<<<RQK_REDUCE_BLOCKS, RQK_THREADS, 0, st>>>(partial, d, a, b, n, 2.0f * grad_scale);
    cudaError_t e = RQK_LAUNCHED();
    if (e != cudaSuccess) return e;
    k_sum_partials<<<1, 32, 0, st>>>(out, partial, RQK_REDUCE_BLOCKS);
    return RQK_LAUNCHED();
}

extern "C" cudaError_t rqk_sum_squares(cudaStream_t st, double *out, double *partial, const float *x, size_t n) {
    k_sumsq_partial<<<RQK_REDUCE_BLOCKS, RQK_THREADS, 0, st>>>(partial, x, n);
    cudaError_t e = RQK_LAUNCHED();
    if (e != cudaSuccess) return e;
    k_sum_partials<<<1, 32, 0, st>>>(out, partial, RQK_REDUCE_BLOCKS);
    return RQK_LAUNCHED();
}
