/* Elementwise kernels: residual add, scale, SwiGLU forward/backward, the Adam
 * step and the fp32 -> bf16 conversion feeding bf16 GEMMs. The per-element
 * math is ops_math.h's, shared with the CPU backend. */
#include <cuda_bf16.h>

#include "common.cuh"

__global__ void k_add_inplace(float *x, const float *y, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] += y[i];
}

__global__ void k_scale(float *x, float s, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] *= s;
}

__global__ void k_swiglu_fwd(float *out, const float *gate, const float *up, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = rq_swiglu(gate[i], up[i]);
}

__global__ void k_swiglu_bwd(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                             size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float dg = dgate[i], du = dup[i];
        rq_swiglu_bwd(gate[i], up[i], dout[i], &dg, &du);
        dgate[i] = dg;
        dup[i] = du;
    }
}

__global__ void k_adam(float *param, const float *grad, float *m, float *v, size_t n, float beta2, float omb1,
                       float omb2, float eps, float decay_mul, float l2, float step_size, float bc2_sqrt) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float p = param[i], mm = m[i], vv = v[i];
        rq_adam_elem(&p, grad[i], &mm, &vv, beta2, omb1, omb2, eps, decay_mul, l2, step_size, bc2_sqrt);
        param[i] = p;
        m[i] = mm;
        v[i] = vv;
    }
}

__global__ void k_f32_to_bf16(__nv_bfloat16 *dst, const float *src, size_t rows, size_t cols, size_t lds) {
    const size_t n = rows * cols;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / cols, c = i % cols;
        dst[i] = __float2bfloat16_rn(src[r * lds + c]);
    }
}

extern "C" cudaError_t rqk_add_inplace(cudaStream_t st, float *x, const float *y, size_t n) {
    if (!n) return cudaSuccess;
    k_add_inplace<<<rqk_blocks(n), RQK_THREADS, 0, st>>>(x, y, n);
    return RQK_LAUNCHED();
}

extern "C" cudaError_t rqk_scale(cudaStream_t st, float *x, float s, size_t n) {
    if (!n) return cudaSuccess;
    k_scale<<<rqk_blocks(n), RQK_THREADS, 0, st>>>(x, s, n);
    return RQK_LAUNCHED();
}

extern "C" cudaError_t rqk_swiglu_fwd(cudaStream_t st, float *out, const float *gate, const float *up, size_t n) {
    if (!n) return cudaSuccess;
    k_swiglu_fwd<<<rqk_blocks(n), RQK_THREADS, 0, st>>>(out, gate, up, n);
    return RQK_LAUNCHED();
}

extern "C" cudaError_t rqk_swiglu_bwd(cudaStream_t st, float *dgate, float *dup, const float *dout, const float *gate,
                                      const float *up, size_t n) {
    if (!n) return cudaSuccess;
    k_swiglu_bwd<<<rqk_blocks(n), RQK_THREADS, 0, st>>>(dgate, dup, dout, gate, up, n);
    return RQK_LAUNCHED();
}

extern "C" cudaError_t rqk_adam(cudaStream_t st, float *param, const float *grad, float *m, float *v, size_t n,
                                float beta2, float one_minus_beta1, float one_minus_beta2, float eps, float decay_mul,
                                float l2, float step_size, float bc2_sqrt) {
    if (!n) return cudaSuccess;
    k_adam<<<rqk_blocks(n), RQK_THREADS, 0, st>>>(param, grad, m, v, n, beta2, one_minus_beta1, one_minus_beta2, eps,
                                                  decay_mul, l2, step_size, bc2_sqrt);
    return RQK_LAUNCHED();
}

extern "C" cudaError_t rqk_f32_to_bf16(cudaStream_t st, uint16_t *dst, const float *src, size_t rows, size_t cols,
                                       size_t lds) {
    if (!rows || !cols) return cudaSuccess;
    k_f32_to_bf16<<<rqk_blocks(rows * cols), RQK_THREADS, 0, st>>>((__nv_bfloat16 *)dst, src, rows, cols, lds);
    return RQK_LAUNCHED();
}
