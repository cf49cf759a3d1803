/* q2 dequantization into GEMM tiles (see src/quant/q2.h for the format).
 *
 * W[o][i] = fl(fl(s * level) + m): __fmul_rn / __fadd_rn are never contracted
 * into an FMA, so the fp32 value is the CPU's bit for bit; the bf16 tile then
 * rounds it to nearest even. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common.cuh"

struct codebook4 {
    float v[4];
};

/* one thread per 4 weights (one code byte); k runs over rows x row_bytes */
template <bool BF16>
__global__ void k_q2_dequant(void *dst, const uint8_t *codes, const uint16_t *scales, const uint16_t *offsets,
                             codebook4 cb, int r0, size_t n, int in, int group_size, int n_groups, int row_bytes) {
    for (size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x; k < n; k += (size_t)gridDim.x * blockDim.x) {
        const size_t r = k / row_bytes; /* row within the tile */
        const int byte = (int)(k % row_bytes);
        const size_t o = (size_t)r0 + r;
        const unsigned bits = codes[o * row_bytes + byte];
        for (int j = 0; j < 4; j++) {
            const int i = byte * 4 + j;
            if (i >= in) break;
            const int g = i / group_size;
            const float s = __half2float(__ushort_as_half(scales[o * n_groups + g]));
            const float m = __half2float(__ushort_as_half(offsets[o * n_groups + g]));
            const float w = __fadd_rn(__fmul_rn(s, cb.v[(bits >> (2 * j)) & 3u]), m);
            if (BF16) ((__nv_bfloat16 *)dst)[r * in + i] = __float2bfloat16_rn(w);
            else ((float *)dst)[r * in + i] = w;
        }
    }
}

extern "C" cudaError_t rqk_q2_dequant(cudaStream_t st, void *dst, int bf16, const uint8_t *codes,
                                      const uint16_t *scales, const uint16_t *offsets, const float codebook[4], int r0,
                                      int r1, int in, int group_size, int n_groups, int row_bytes) {
    const size_t n = (size_t)(r1 - r0) * row_bytes;
    if (!n) return cudaSuccess;
    codebook4 cb = {{codebook[0], codebook[1], codebook[2], codebook[3]}};
    if (bf16)
        k_q2_dequant<true><<<rqk_blocks(n), RQK_THREADS, 0, st>>>(dst, codes, scales, offsets, cb, r0, n, in,
                                                                  group_size, n_groups, row_bytes);
    else
        k_q2_dequant<false><<<rqk_blocks(n), RQK_THREADS, 0, st>>>(dst, codes, scales, offsets, cb, r0, n, in,
                                                                   group_size, n_groups, row_bytes);
    return RQK_LAUNCHED();
}
