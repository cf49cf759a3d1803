/* The q2 tensor: the one 2-bit group-quantized weight format of rilq.
 *
 * A linear weight W [out][in] is stored as
 *   codes    2 bits per weight, 4 per byte along the input dimension, lowest
 *            bits first (code of column i sits at bits 2*(i%4) of byte i/4);
 *            each row is padded to whole bytes (row_bytes = ceil(in/4)), the
 *            padding codes are 0;
 *   scales   fp16 s[out][n_groups], n_groups = ceil(in / group_size);
 *   offsets  fp16 m[out][n_groups];
 *   codebook 4 fp32 levels for the whole tensor (int2: {0,1,2,3}; nf2: the
 *            NormalFloat levels {-1, 0, 0.3379152, 1}).
 * and
 *   W[o][i] = s[o][g] * codebook[code[o][i]] + m[o][g],   g = i / group_size,
 * evaluated in fp32 as fl(fl(s * level) + m) (the build uses -ffp-contract=off,
 * so no fused multiply-add changes the rounding). Every dequantizer in rilq,
 * CPU or CUDA, must produce exactly this value. The last group of a row is
 * shorter when in is not a multiple of group_size (in = 172, gs = 64: groups of
 * 64, 64 and 44). */
#ifndef RQ_Q2_H
#define RQ_Q2_H

#include "../core/core.h"

/* Columns per group unless a recipe or flag says otherwise: of q2 tensors, and
 * of QA-LoRA's input pooling, which must equal the q2 group to merge. A plain
 * number, so RQ_STR(RQ_DEFAULT_GROUP_SIZE) gives the text default. */
#define RQ_DEFAULT_GROUP_SIZE 64

typedef enum rq_q2_codebook_kind {
    RQ_Q2_INT2 = 0, /* levels {0, 1, 2, 3}: asymmetric min/max (RTN), the paper's Eq. 1 */
    RQ_Q2_NF2 = 1   /* levels {-1, 0, 0.3379152, 1}: LoftQ's NormalFloat-2, absmax scaling */
} rq_q2_codebook_kind;

typedef struct rq_q2_tensor {
    int out, in;        /* W is [out][in] */
    int group_size;     /* columns per group (default RQ_DEFAULT_GROUP_SIZE) */
    int n_groups;       /* ceil(in / group_size) per row */
    int row_bytes;      /* ceil(in / 4): bytes of codes per row */
    rq_q2_codebook_kind kind;
    float codebook[4];  /* level of each code */
    uint8_t *codes;     /* [out][row_bytes] */
    uint16_t *scales;   /* fp16 [out][n_groups] */
    uint16_t *offsets;  /* fp16 [out][n_groups] */
} rq_q2_tensor;

/* ---- codebooks ----------------------------------------------------------- */

/* The 4 levels of a codebook kind, ascending. NF2 is computed here from its
 * definition (PEFT's create_normal_map with offset 0.9677083, 2 bits, not
 * symmetric): {-Phi^-1(0.9677083), 0, Phi^-1(0.73385415), Phi^-1(0.9677083)}
 * divided by the largest, the quantile function evaluated in double. */
void rq_q2_codebook(rq_q2_codebook_kind kind, float levels[4]);
const char *rq_q2_codebook_name(rq_q2_codebook_kind kind); /* "int2", "nf2" */
/* "int2" / "nf2" -> kind; RQ_ERR_ARG naming the accepted values otherwise. */
rq_status rq_q2_codebook_parse(const char *name, rq_q2_codebook_kind *kind, rq_err *err);

/* ---- lifetime -------------------------------------------------------------- */

/* A zeroed tensor (all codes 0, all scales and offsets +0). out, in >= 1,
 * group_size >= 1 (a group_size above in gives one short group per row).
 * Group sizes that are multiples of 4 dequantize fastest: groups then start on
 * whole bytes. */
rq_status rq_q2_create(int out, int in, int group_size, rq_q2_codebook_kind kind, rq_q2_tensor **t,
                       rq_err *err);
void rq_q2_free(rq_q2_tensor *t);
/* A deep copy. */
rq_status rq_q2_clone(const rq_q2_tensor *src, rq_q2_tensor **dst, rq_err *err);

/* Bytes of codes + scales + offsets of an out x in tensor (what is stored on
 * disk and held in memory, without the small struct); 0 when it overflows or a
 * dimension is not positive. */
size_t rq_q2_data_bytes(int out, int in, int group_size);
size_t rq_q2_nbytes(const rq_q2_tensor *t);
/* Storage bits per weight including scales and offsets (2 + 32/gs for whole groups). */
double rq_q2_bits_per_weight(const rq_q2_tensor *t);

/* ---- codes ------------------------------------------------------------------ */

static inline int rq_q2_get_code(const rq_q2_tensor *t, int row, int col) {
    const uint8_t *b = t->codes + (size_t)row * (size_t)t->row_bytes + (size_t)(col >> 2);
    return (*b >> ((col & 3) * 2)) & 3;
}
static inline void rq_q2_set_code(rq_q2_tensor *t, int row, int col, int code) {
    uint8_t *b = t->codes + (size_t)row * (size_t)t->row_bytes + (size_t)(col >> 2);
    int shift = (col & 3) * 2;
    *b = (uint8_t)((*b & ~(3u << shift)) | ((unsigned)(code & 3) << shift));
}
/* n codes (values 0..3, one per byte) -> ceil(n/4) packed bytes; the unused
 * high bits of a last partial byte are 0. */
void rq_q2_pack_codes(uint8_t *packed, const uint8_t *codes, int n);
/* ceil(n/4) packed bytes -> n codes, one per byte. */
void rq_q2_unpack_codes(uint8_t *codes, const uint8_t *packed, int n);

static inline float rq_q2_scale(const rq_q2_tensor *t, int row, int group) {
    return rq_f16_to_f32(t->scales[(size_t)row * (size_t)t->n_groups + (size_t)group]);
}
static inline float rq_q2_offset(const rq_q2_tensor *t, int row, int group) {
    return rq_f16_to_f32(t->offsets[(size_t)row * (size_t)t->n_groups + (size_t)group]);
}

/* ---- dequantization (the hot path of the CPU backend) ------------------------ */

/* dst[in] = row `row` of W in fp32. Serial; safe inside a parallel region. */
void rq_q2_dequant_row(const rq_q2_tensor *t, int row, float *dst);

/* dst[r1 - r0][in] = rows [r0, r1) of W, row-major with stride in: the tile a
 * CPU GEMM consumes (C = X * tile^T with cblas_sgemm(..., CblasTrans, ...)).
 * The caller guarantees 0 <= r0 <= r1 <= out (not checked: the hot path). A
 * tile of ~256 KiB (65536 / in rows) stays in L2 for the GEMM that follows.
 * n_threads: 1 = serial (use this inside your own OpenMP region), <= 0 = the
 * OpenMP default, > 1 = that many threads. Small tiles run serially whatever
 * n_threads says (a parallel region costs more than it saves). */
void rq_q2_dequant_rows(const rq_q2_tensor *t, int r0, int r1, float *dst, int n_threads);

/* dst[out][in] = all of W (tests, export, merge; the training path dequantizes
 * tiles instead). */
void rq_q2_dequant(const rq_q2_tensor *t, float *dst, int n_threads);

/* The instruction set the dequant loops were built for ("avx512", "avx2",
 * "scalar"): for benchmark and log lines. */
const char *rq_q2_dequant_isa(void);

/* One weight, by the defining formula: the reference the fast paths are tested
 * against. */
float rq_q2_weight(const rq_q2_tensor *t, int row, int col);

#endif /* RQ_Q2_H */
