/* The CPU backend's own state, shared by its two files (cpu.c: inference ops,
 * cpu_train.c: training ops). Not part of the op table: nothing outside
 * src/backend/cpu*.c includes this. */
#ifndef RQ_CPU_INTERNAL_H
#define RQ_CPU_INTERNAL_H

#include <stddef.h>

#include "backend.h"
#include "ops_math.h"

/* Queries per block of the causal attention (forward and backward): a block
 * computes scores only for the keys its last query sees. */
#define RQ_CPU_ATTENTION_BLOCK 64

/* memset / memcpy of at least this many bytes run on all cores, in
 * RQ_CPU_PARALLEL_PARTS pieces (below it a parallel region costs more than it saves) */
#define RQ_CPU_PARALLEL_BYTES ((size_t)1 << 20)
#define RQ_CPU_PARALLEL_PARTS 64
/* Elementwise and row-wise ops on fewer floats than this (a decode step's one
 * row) run on one thread: a parallel region's fork/join (futex wake-ups under
 * OMP_WAIT_POLICY=passive) costs more than the work */
#define RQ_CPU_PARALLEL_FLOATS ((size_t)1 << 14)

typedef struct cpu_ctx {
    float *tile;        /* dequantization scratch for q2 weights, allocated once at creation:
                           RQ_CPU_Q2_TILE_FLOATS, forward and backward share it (ops never overlap) */
    size_t tile_floats;
    float *att;         /* attention score scratch, per thread, grown on demand (never per call:
                           fresh large allocations cost a page fault per 4 KiB) */
    size_t att_floats;
    float *ds;          /* attention_bwd's T x T score-gradient scratch, grown on demand, then held */
    size_t ds_floats;
    struct rq_decode_cache *decode; /* compact copies of bound fp32 weights for linear_rows (cpu_matvec.h) */
} cpu_ctx;

/* Rows of a q2 weight [out][in] dequantized at once into the tile: as many as
 * it holds, so a projection of a small model (SmolLM2: every one) is one GEMM
 * and a large one a few big ones. Always >= 2: rq_config_validate caps input
 * widths at 2^20 (model/build.c's MAX_HIDDEN) and the tile holds 2^21 floats. */
static inline int rq_cpu_q2_rows_per_gemm(const cpu_ctx *c, int out, int in) {
    size_t rows = c->tile_floats / (size_t)(in > 0 ? in : 1);
    if (rows < 1) rows = 1;
    return rows > (size_t)out ? out : (int)rows;
}

/* row[0..n) <- softmax(row[0..n)) in place: max, then e = exp(x - max) and its
 * sum in one vectorized pass (a fixed order: the same bits at any thread count),
 * then the scaling by 1 / sum. */
static inline void rq_softmax_row(float *row, int n) {
    float mx = row[0];
#pragma omp simd reduction(max : mx)
    for (int j = 1; j < n; j++) mx = row[j] > mx ? row[j] : mx;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < n; j++) {
        float e = rq_expf(row[j] - mx);
        row[j] = e;
        sum += e;
    }
    const float inv = 1.0f / sum;
#pragma omp simd
    for (int j = 0; j < n; j++) row[j] *= inv;
}

#endif
