/* The scratch each backend holds for itself (memory beyond be->alloc), as
 * functions of the model's shape and the pass: the one place those sizes are
 * written. The backends size their buffers with the helpers below and answer
 * be->scratch_bytes with the totals; the memory plan (src/train/plan.c) calls
 * the totals directly, since a plan is computed from a config alone, for a
 * device this build or this machine may not have. */
#ifndef RQ_BACKEND_SCRATCH_H
#define RQ_BACKEND_SCRATCH_H

#include "backend.h"

/* ---- CPU (cpu.c, cpu_train.c) ---- */

/* The q2 dequantization tile, allocated once at creation and shared by the
 * forward and backward GEMMs: 2M floats (8 MiB) hold a whole projection of up
 * to 2M weights (SmolLM2-135M's largest is 0.9M), so each is one GEMM; a larger
 * one is a few GEMMs of as many rows as fit (LLaMA-2-7B: 190 to 512 rows). */
#define RQ_CPU_Q2_TILE_FLOATS ((size_t)1 << 21)
/* Below this many queries attention_bwd runs loops without scratch (GEMM call
 * overhead, tiny squares); from it on, a T x T scratch (grown once, then held). */
#define RQ_CPU_ATTENTION_BWD_GEMM_MIN_T 32

/* High-water mark of the CPU backend's own buffers for passes of model c over
 * batch x seq tokens with n_threads threads: the forward tile (held from
 * creation); in inference the attention scores, seq x seq floats per thread
 * (grown once, then held); in training attention_bwd's T x T. */
size_t rq_cpu_scratch_bytes(int n_threads, const rq_config *c, int batch, int seq, bool train, bool q2);

/* ---- CUDA (cuda.c; these build without CUDA, for plans) ---- */

/* The cuBLASLt workspace, allocated at creation. */
#define RQ_CUDA_GEMM_WORKSPACE_BYTES ((size_t)32 << 20)
/* q2 weights are dequantized in tiles of at most this many weights (128 MiB of bf16). */
#define RQ_CUDA_Q2_TILE_ELEMS ((size_t)64 << 20)

/* Tile rows for a q2 weight [out][in]: the whole weight when it fits
 * RQ_CUDA_Q2_TILE_ELEMS, else a multiple of 64 rows (tile offsets stay
 * 128-byte aligned in bf16). */
static inline int rq_cuda_q2_tile_rows(int out, int in) {
    size_t rows = RQ_CUDA_Q2_TILE_ELEMS / (size_t)(in > 0 ? in : 1);
    if (rows >= (size_t)out) return out;
    rows = rows / 64 * 64;
    return rows < 64 ? 64 : (int)rows;
}

/* Bytes a scratch buffer asked for `bytes` allocates: a little headroom, since
 * shapes vary a little between calls (it grows only when a request exceeds it,
 * so this of the largest request bounds it). */
static inline size_t rq_cuda_scratch_grown(size_t bytes) { return bytes + bytes / 4 + 256; }

/* Attention workspace in floats: forward Qt, Ot [B*nh][T][hd], Kx, Vx
 * [B*nh][Tk][hd] (+ the scores [B*nh][T][Tk] when the caller keeps none);
 * backward Qt, Kx, Vx, dOt, dQt, dKx, dVx [B*nh][T][hd] and dS [B*nh][T][T]. */
static inline size_t rq_cuda_attention_fwd_floats(int B, int T, int Tk, int nh, int hd, bool scores_kept) {
    const size_t batch = (size_t)B * nh, nq = batch * T * hd, nkx = batch * Tk * hd, ns = batch * T * Tk;
    return 2 * nq + 2 * nkx + (scores_kept ? 0 : ns);
}
static inline size_t rq_cuda_attention_bwd_floats(int B, int T, int nh, int hd) {
    const size_t batch = (size_t)B * nh, nx = batch * T * hd, ns = batch * T * T;
    return 7 * nx + ns;
}

/* High-water mark of the CUDA backend's own device buffers for passes of
 * model c over batch x seq tokens: the cuBLASLt workspace; with q2
 * projections the bf16 copy of a GEMM's activation operand (q2_bf16) and the
 * dequantized tile; the attention workspace; staged index and loss rows.
 * Each scratch grown as rq_cuda_scratch_grown says. */
size_t rq_cuda_scratch_bytes(bool q2_bf16, const rq_config *c, int batch, int seq, bool train, bool q2);

#endif
