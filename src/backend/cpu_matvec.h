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
    RQ_MATVEC_AVX512 = 2  /* AVX-512 F, BW and VL */
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

/* A dense weight [out][in] as the kernels read it: fp32, or an exact compact
 * copy of an fp32 matrix, the same values bit for bit in fewer bytes (the
 * LM head is the largest read of a decode step: SmolLM2's is 113 MB in fp32). */
typedef enum rq_dense_kind {
    RQ_DENSE_F32 = 0,
    RQ_DENSE_I8 = 1,   /* blocks of RQ_DENSE_I8_BLOCK: int8 q and an fp32 d per block, w = d * q
                          exactly (what a GGUF Q8_0 tensor dequantized in fp32 holds) */
    RQ_DENSE_BF16 = 2, /* the high half of each fp32 (a bf16 checkpoint's values) */
    RQ_DENSE_F16 = 3   /* fp16 (an fp16 checkpoint's values) */
} rq_dense_kind;
#define RQ_DENSE_I8_BLOCK 32

typedef struct rq_dense_matrix {
    rq_dense_kind kind;
    int out, in;
    const void *w;  /* [out][in] of fp32, int8 or 16-bit floats */
    const float *d; /* RQ_DENSE_I8: [out][in / RQ_DENSE_I8_BLOCK] */
    void *owned;    /* the allocation behind w and d of a compact copy, else NULL */
} rq_dense_matrix;

/* The same as rq_q2_matvec for a dense weight. */
void rq_dense_matvec(rq_matvec_isa isa, const rq_dense_matrix *W, const float *x, int M, float *y, int ldy,
                     bool accumulate, int n_threads);
/* ... for an fp32 weight w[out][in]. */
void rq_f32_matvec(rq_matvec_isa isa, const float *w, int out, int in, const float *x, int M, float *y, int ldy,
                   bool accumulate, int n_threads);

/* The most compact exact copy of w[out][in]: int8 blocks when every block of
 * 32 is d * q bit for bit (d = max|w| / 127, |q| <= 127), else bf16, else fp16
 * when every value converts back to itself; else cm is w itself (kind F32,
 * nothing owned). RQ_ERR_NOMEM only when a copy could not be allocated. */
rq_status rq_dense_compact(const float *w, int out, int in, rq_dense_matrix *cm, rq_err *err);
size_t rq_dense_bytes(const rq_dense_matrix *cm); /* bytes a compact copy owns (0 for plain fp32) */
void rq_dense_free(rq_dense_matrix *cm);
const char *rq_dense_kind_name(rq_dense_kind kind);

/* ---- the CPU backend's op ----------------------------------------------------- */

/* be->linear_rows of the CPU backend: rq_q2_matvec or rq_dense_matvec with the
 * best variant, on the backend's threads. An fp32 weight of at least
 * RQ_DENSE_COMPACT_MIN_BYTES that a bound model holds is read from its exact
 * compact copy, made on first use and kept while the model stays bound, up to
 * RQ_DECODE_CACHE_BUDGET bytes of copies per backend. */
void rq_cpu_linear_rows(rq_backend *be, float *out, const float *in, const rq_linear *W, int N, bool accumulate);
#define RQ_DENSE_COMPACT_MIN_BYTES ((size_t)1 << 20)
#define RQ_DECODE_CACHE_BUDGET ((size_t)512 << 20)

/* The copies and the bound models they belong to (cpu.c forwards its bind ops here). */
typedef struct rq_decode_cache rq_decode_cache;
void rq_decode_cache_bind(rq_decode_cache **c, const void *key, const rq_weight_span *spans, size_t n);
/* rebind: the model's arrays were rewritten: its copies go, its binding stays */
void rq_decode_cache_unbind(rq_decode_cache *c, const void *key, bool rebind);
void rq_decode_cache_free(rq_decode_cache *c);
rq_decode_cache *rq_cpu_decode_cache(rq_backend *be); /* cpu.c */

#endif
