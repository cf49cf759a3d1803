/* The backends' own scratch sizes (see scratch.h). Built in every
 * configuration: a CUDA plan needs no CUDA. */
#include "scratch.h"

static size_t max_sz(size_t a, size_t b) { return a > b ? a : b; }

size_t rq_cpu_scratch_bytes(int n_threads, const rq_config *c, int batch, int seq, bool train, bool q2) {
    (void)batch; /* attention scratch is per (sequence, head) task, per thread */
    size_t bytes = RQ_CPU_Q2_TILE_FLOATS * sizeof(float);
    const size_t T = (size_t)(seq > 0 ? seq : 0);
    if (!train) return bytes + T * T * (size_t)(n_threads > 0 ? n_threads : 1) * sizeof(float);
    /* q2 backward dequantizes into the forward's tile: only attention_bwd's T x T is added */
    return bytes + (seq >= RQ_CPU_ATTENTION_BWD_GEMM_MIN_T ? T * T * sizeof(float) : 0);
}

size_t rq_cuda_scratch_bytes(bool q2_bf16, const rq_config *c, int batch, int seq, bool train, bool q2) {
    const size_t N = (size_t)batch * (size_t)seq;
    size_t bytes = RQ_CUDA_GEMM_WORKSPACE_BYTES;
    if (q2) {
        size_t widest = 0, tile = 0;
        for (int p = 0; p < RQ_N_PROJ; p++) {
            int out, in;
            rq_proj_shape(c, p, &out, &in);
            widest = max_sz(widest, (size_t)(in > out ? in : out)); /* forward reads in, backward out */
            tile = max_sz(tile, (size_t)rq_cuda_q2_tile_rows(out, in) * (size_t)in);
        }
        if (q2_bf16) bytes += rq_cuda_scratch_grown(N * widest * 2);
        bytes += rq_cuda_scratch_grown(tile * (q2_bf16 ? 2 : 4));
    }
    size_t attn = rq_cuda_attention_fwd_floats(batch, seq, seq, c->n_heads, c->head_dim, train);
    if (train) attn = max_sz(attn, rq_cuda_attention_bwd_floats(batch, seq, c->n_heads, c->head_dim));
    bytes += rq_cuda_scratch_grown(attn * sizeof(float));
    /* index rows staged from the host (tokens, gathered rows, targets) and cross_entropy's loss rows */
    bytes += rq_cuda_scratch_grown(N * sizeof(int)) + rq_cuda_scratch_grown(N * sizeof(float));
    return bytes;
}
