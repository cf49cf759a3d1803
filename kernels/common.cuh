/* Helpers shared by the kernel files: grid sizing and block reductions. */
#ifndef RQK_COMMON_CUH
#define RQK_COMMON_CUH

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#include "backend/ops_math.h"
#include "kernels.h"

#define RQK_THREADS 256

/* Blocks for a grid-stride loop over n elements: enough to fill the GPU, capped
 * so the grid size stays in range whatever n is. */
static inline unsigned rqk_blocks(size_t n) {
    size_t b = (n + RQK_THREADS - 1) / RQK_THREADS;
    if (b < 1) b = 1;
    if (b > 65535u * 8u) b = 65535u * 8u;
    return (unsigned)b;
}

/* Sum of v over the block (blockDim.x a multiple of 32, <= 1024), in a fixed
 * order: warp shuffles, then warp 0 over the warp sums. Every thread gets the
 * result. scratch: >= 32 elements of shared memory. */
template <typename T> __device__ T rqk_block_sum(T v, T *scratch) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    __syncthreads(); /* scratch may still be read by a previous call */
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < n_warps ? scratch[lane] : (T)0;
        for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
        if (lane == 0) scratch[0] = v;
    }
    __syncthreads();
    return scratch[0];
}

__device__ inline float rqk_block_max(float v, float *scratch) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < n_warps ? scratch[lane] : -INFINITY;
        for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
        if (lane == 0) scratch[0] = v;
    }
    __syncthreads();
    return scratch[0];
}

#define RQK_LAUNCHED() cudaGetLastError()

#endif
