/* Matrix-vector kernels of the CPU backend for a few rows of activations (a
 * decode step): y[M][out] (+)= x[M][in] W^T read straight from the weight's
 * storage, one pass over W for all M rows.
 *
 * q2: the 2-bit codes are expanded to fp32 in registers (a 4-entry table per
 * group, picked lane by lane), never into a dequantized tile in memory. Each
 * weight is the one rq_q2_dequant_rows produces, fl(fl(s * level) + m) from
 * the fp16 scale and offset (the tables are built with a separate multiply
 * and add); only the order in which a dot product sums its terms differs from
 * the GEMM path (and the SIMD variants fuse each multiply with its add).
 *
 * Variants: a portable C loop, and AVX2+FMA and AVX-512 loops built with
 * per-function target attributes whatever the build's -march, chosen at run
 * time from what the CPU (and the OS) supports. Rows are split over OpenMP
 * threads; each output is summed by one thread in a fixed order, so results do
 * not depend on the thread count. Not part of the op table: cpu.c installs
 * rq_cpu_linear_rows as be->linear_rows, tests and benchmarks call the
 * variants directly. */
#ifndef RQ_CPU_MATVEC_H
#define RQ_CPU_MATVEC_H

#include "../quant/q2.h"
#include "backend.h"

typedef enum rq_matvec_isa {
    RQ_MATVEC_SCALAR = 0, /* portable C: any CPU */
    RQ_MATVEC_AVX2 = 1,   /* AVX2 + FMA + F16C */
    RQ_MATVEC_AVX512 = 2  /* AVX-512F */
} rq_matvec_isa;
#define RQ_MATVEC_N_ISA 3

/* Whether this CPU (and OS) runs a variant; the scalar one always. */
bool rq_matvec_isa_supported(rq_matvec_isa isa);
/* The fastest supported variant: what rq_cpu_linear_rows uses. */
rq_matvec_isa rq_matvec_isa_best(void);
const char *rq_matvec_isa_name(rq_matvec_isa isa); /* "scalar", "avx2", "avx512" */

/* y[m][ldy] for m < M, columns o < W->out: (+)= sum_i W[o][i] * x[m * W->in + i].
 * Any M >= 1 (taken 4 rows at a time). n_threads: <= 0 the OpenMP default,
 * 1 serial (also what small weights get). isa must be supported. */
void rq_q2_matvec(rq_matvec_isa isa, const rq_q2_tensor *W, const float *x, int M, float *y, int ldy,
                  bool accumulate, int n_threads);

/* The same for an fp32 weight w[out][in]. */
void rq_f32_matvec(rq_matvec_isa isa, const float *w, int out, int in, const float *x, int M, float *y, int ldy,
                   bool accumulate, int n_threads);

/* be->linear_rows of the CPU backend: rq_q2_matvec or rq_f32_matvec with the
 * best variant, on the backend's threads. */
void rq_cpu_linear_rows(rq_backend *be, float *out, const float *in, const rq_linear *W, int N, bool accumulate);

#endif
