/* C entry points of the CUDA kernels (the kernels/ directory), called by the CUDA
 * backend (src/backend/cuda.c), which is plain C.
 *
 * Every launcher enqueues work on the given stream and returns the launch's
 * cudaError_t (cudaGetLastError right after the launch); execution errors
 * surface at the backend's next synchronizing call. All pointers are device
 * memory. Shapes and semantics are those of the op table (src/backend/backend.h). */
#ifndef RQ_KERNELS_H
#define RQ_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- elementwise (elementwise.cu) ---- */
cudaError_t rqk_add_inplace(cudaStream_t st, float *x, const float *y, size_t n);
cudaError_t rqk_scale(cudaStream_t st, float *x, float s, size_t n);
cudaError_t rqk_swiglu_fwd(cudaStream_t st, float *out, const float *gate, const float *up, size_t n);
cudaError_t rqk_swiglu_bwd(cudaStream_t st, float *dgate, float *dup, const float *dout, const float *gate,
                           const float *up, size_t n);
/* One Adam step over n elements; the scalars are computed on the host as the CPU backend does. */
cudaError_t rqk_adam(cudaStream_t st, float *param, const float *grad, float *m, float *v, size_t n, float beta2,
                     float one_minus_beta1, float one_minus_beta2, float eps, float decay_mul, float l2,
                     float step_size, float bc2_sqrt);
/* dst[r][c] = bf16(src[r][c]) for a rows x cols block of src (row stride lds) into dst (stride cols). */
cudaError_t rqk_f32_to_bf16(cudaStream_t st, uint16_t *dst, const float *src, size_t rows, size_t cols, size_t lds);

/* ---- gathers and copies (embedding.cu) ---- */
/* out[n][C] = table[idx[n]][C] (embedding and gather_rows) */
cudaError_t rqk_gather_rows(cudaStream_t st, float *out, const float *table, const int *idx, int n, int C);
cudaError_t rqk_cache_store(cudaStream_t st, float *cache, const float *src, int B, int T, int pos0, int Tmax, int C);

/* ---- row ops (rmsnorm.cu, rope.cu, pool.cu) ---- */
cudaError_t rqk_rmsnorm_fwd(cudaStream_t st, float *out, float *rstd, const float *x, const float *w, int N, int C,
                            float eps);
cudaError_t rqk_rmsnorm_bwd(cudaStream_t st, float *dx, const float *dout, const float *x, const float *w,
                            const float *rstd, int N, int C);
/* backward = 0: rope_fwd; 1: rope_bwd */
cudaError_t rqk_rope(cudaStream_t st, float *x, const float *cos_t, const float *sin_t, int B, int T, int n_heads,
                     int hd, int backward);
cudaError_t rqk_group_pool_fwd(cudaStream_t st, float *out, const float *in, int N, int C, int gs);
cudaError_t rqk_group_pool_bwd(cudaStream_t st, float *din, const float *dout, int N, int C, int gs);

/* ---- attention helpers (attention.cu); the GEMMs run through gemm.cu ---- */
/* dst[b][h][t][hd] = src[b][t][h][hd] (src row stride n_heads*hd, T_src rows per sequence, first T copied) */
cudaError_t rqk_heads_to_major(cudaStream_t st, float *dst, const float *src, int B, int T, int T_src, int n_heads,
                               int hd);
/* dst[b][h][t][hd] = src[b][t][h / group][hd]: K or V rows repeated for every query head of a group */
cudaError_t rqk_kv_expand(cudaStream_t st, float *dst, const float *src, int B, int T, int T_src, int nh, int nkv,
                          int hd);
/* dst[b][t][h][hd] (+)= src[b][h][t][hd] */
cudaError_t rqk_heads_from_major(cudaStream_t st, float *dst, const float *src, int B, int T, int n_heads, int hd,
                                 int accumulate);
/* dst[b][t][g][hd] += sum over the group's query heads h of src[b][h][t][hd] (in head order) */
cudaError_t rqk_kv_reduce_acc(cudaStream_t st, float *dst, const float *src, int B, int T, int nh, int nkv, int hd);
/* rows of s[rows][Tk] (row r is query t = r % T): causal softmax over keys <= pos0 + t, zeros after */
cudaError_t rqk_causal_softmax(cudaStream_t st, float *s, int rows, int T, int Tk, int pos0);
/* ds[rows][T] holds dP on entry, dS on return: p (dp - sum_k p dp) scale on j <= t, zero above */
cudaError_t rqk_softmax_bwd(cudaStream_t st, float *ds, const float *p, int rows, int T, float scale);

/* ---- losses and reductions (loss.cu) ---- */
cudaError_t rqk_cross_entropy(cudaStream_t st, float *loss, float *dlogits, const float *logits, const int *targets,
                              int N, int V, float grad_scale);
/* Deterministic sums: partial[RQK_REDUCE_BLOCKS] then one block adds them in order into *out (device double). */
#define RQK_REDUCE_BLOCKS 256
cudaError_t rqk_mse(cudaStream_t st, double *out, double *partial, float *d, const float *a, const float *b, size_t n,
                    float grad_scale);
cudaError_t rqk_sum_squares(cudaStream_t st, double *out, double *partial, const float *x, size_t n);

/* ---- q2 dequantization (q2.cu) ---- */
/* Rows [r0, r1) of a q2 weight into dst [r1 - r0][in], as bf16 (bf16 != 0) or fp32, exactly
 * fl(fl(s * level) + m) before the bf16 rounding. */
cudaError_t rqk_q2_dequant(cudaStream_t st, void *dst, int bf16, const uint8_t *codes, const uint16_t *scales,
                           const uint16_t *offsets, const float codebook[4], int r0, int r1, int in, int group_size,
                           int n_groups, int row_bytes);

/* ---- cuBLASLt GEMMs (gemm.cu) ---- */
typedef struct rqk_gemm rqk_gemm; /* handle, workspace and the per-shape plan cache of one backend */

typedef enum rqk_dtype { RQK_F32 = 0, RQK_BF16 = 1 } rqk_dtype;

/* Row-major, cblas-like: C[M][N] = alpha op(A)[M][K] op(B)[K][N] + beta C, batch
 * times with element strides sa, sb, sc between batches. A and B share dtype ab
 * (fp32 computes in full fp32; bf16 in fp32 accumulation); C is fp32. */
typedef struct rqk_gemm_args {
    int trans_a, trans_b;
    int M, N, K;
    float alpha, beta;
    const void *A;
    long long lda, sa;
    const void *B;
    long long ldb, sb;
    float *C;
    long long ldc, sc;
    int batch;
    rqk_dtype ab;
} rqk_gemm_args;

/* 0 on success; otherwise non-zero and msg (msg_len bytes) names the failed call, its status and where. */
int rqk_gemm_create(rqk_gemm **out, cudaStream_t stream, size_t workspace_bytes, char *msg, size_t msg_len);
void rqk_gemm_destroy(rqk_gemm *g);
int rqk_gemm_run(rqk_gemm *g, const rqk_gemm_args *a, char *msg, size_t msg_len);

#ifdef __cplusplus
}
#endif

#endif
