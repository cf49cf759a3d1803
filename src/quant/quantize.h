/* Quantizers: fp32 weights -> q2 tensor, and import of weights that are already
 * fake-quantized on a 2-bit grid.
 *
 * All quantizers work per (output row, group of group_size input columns) and
 * store the scale s and offset m in fp16. Codes are always chosen against the
 * fp16-rounded s and m that are stored, as the level whose dequantized value
 * fl(fl(s * level) + m) lies nearest to the weight (ties to the lower code), so
 * the fp16 rounding of s and m never adds a wrong code on top of its own small
 * error. For int2 this equals clamp(round((w - m) / s), 0, 3) except at exact
 * ties and within an ulp of the midpoints. */
#ifndef RQ_QUANTIZE_H
#define RQ_QUANTIZE_H

#include "q2.h"

typedef enum rq_quant_method {
    RQ_QUANT_RTN = 0, /* asymmetric min/max: m = min(w), s = (max - min) / 3, int2 codebook */
    RQ_QUANT_NF2 = 1  /* absmax: s = max |w|, m = 0, NF2 codebook (LoftQ's NormalFloat-2) */
} rq_quant_method;

typedef struct rq_quant_opts {
    rq_quant_method method;
    int group_size; /* RQ_DEFAULT_GROUP_SIZE */
    /* Clipping search, off by default. Per group, shrink factors
     * p = 1, 1 - clip_step, ..., down to clip_min_shrink are tried: RTN shrinks
     * [min, max] toward the group mean (for the usual zero-mean group this is
     * GPTQ's p * min, p * max), NF2 shrinks absmax. Then the (s, m) of the best
     * candidate is refitted by least squares on its codes (NF2 keeps m = 0),
     * twice. Every candidate is scored by the group's squared error
     * sum (w - dequant(w))^2 in double, with its fp16-rounded s and m and
     * nearest codes (squared error, not GPTQ's |err|^2.4: it is what the least
     * squares refit minimizes, and it is the output error for white inputs). A
     * candidate replaces the current best only when strictly better, and p = 1
     * is plain RTN / NF2 exactly, so the search is never worse than no search. */
    bool clip_search;
    float clip_min_shrink; /* 0.20 */
    float clip_step;       /* 0.01 */
    int n_threads;         /* <= 0: the OpenMP default */
} rq_quant_opts;

void rq_quant_opts_default(rq_quant_opts *o);
const char *rq_quant_method_name(rq_quant_method m); /* "rtn", "nf2" */
rq_status rq_quant_method_parse(const char *name, rq_quant_method *m, rq_err *err);
rq_q2_codebook_kind rq_quant_method_codebook(rq_quant_method m);

/* Quantize w [out][in] (fp32, row-major) into a new q2 tensor. name is the
 * tensor's name for messages (may be NULL). Fails on non-finite weights and on
 * weights beyond the fp16 range (their s or m could not be stored), naming the
 * tensor, row and column. */
rq_status rq_quantize(const float *w, int out, int in, const rq_quant_opts *opts, const char *name,
                      rq_q2_tensor **t, rq_err *err);
/* The same into an existing tensor of the matching shape, group size and
 * codebook (LoftQ re-quantizes into one tensor every iteration). */
rq_status rq_quantize_into(rq_q2_tensor *t, const float *w, const rq_quant_opts *opts, const char *name,
                           rq_err *err);

/* ---- one group (for quantizers built on these choices: GPTQ) ---------------------- */

typedef struct rq_quant_params {
    uint16_t s, m; /* fp16 bits, as stored */
} rq_quant_params;
/* The dequantized levels of a group and the midpoints between neighbours
 * (levels ascend: codebooks ascend and s >= 0). */
typedef struct rq_quant_grid {
    float lut[4];
    float mid[3];
    bool flat; /* s == 0: every code gives m */
} rq_quant_grid;
rq_quant_grid rq_quant_grid_make(const float cb[4], rq_quant_params p);
/* Nearest level, ties to the lower code; and its dequantized value. */
static inline int rq_quant_grid_code(const rq_quant_grid *g, float x) {
    return (x > g->mid[0]) + (x > g->mid[1]) + (x > g->mid[2]);
}
static inline float rq_quant_grid_value(const rq_quant_grid *g, float x) {
    float q = x > g->mid[0] ? g->lut[1] : g->lut[0];
    q = x > g->mid[1] ? g->lut[2] : q;
    return x > g->mid[2] ? g->lut[3] : q;
}
/* The stored (s, m) that rq_quantize chooses for the n weights of one group
 * (method, clip search) with codebook cb. A constant group gives s = 0. */
rq_quant_params rq_quant_group_params(const float *w, int n, const float cb[4], const rq_quant_opts *opts);

/* ---- fake-quant import ----------------------------------------------------------- */

typedef struct rq_import_opts {
    rq_q2_codebook_kind kind; /* the grid the weights lie on */
    int group_size;           /* RQ_DEFAULT_GROUP_SIZE */
    /* Values of a group closer than noise_rel * max|w| of the group are one
     * level (the storage noise of a checkpoint saved in fp16 or bf16 after fake
     * quantization). Default 2^-7: bf16 rounds to 2^-9 relative, so two copies
     * of one level differ by at most 2^-8 max|w|, and a factor 2 of margin. */
    double noise_rel;
    int n_threads; /* <= 0: the OpenMP default */
} rq_import_opts;

typedef struct rq_import_report {
    double max_abs_err;        /* max |w - dequant| over the tensor (fp16 storage of s, m and the input noise) */
    double max_rel_err;        /* max |w - dequant| / max|w| of its group */
    int worst_row, worst_col;  /* where max_abs_err occurs */
    long long groups;          /* groups imported */
    long long groups_under_4;  /* groups with 1-3 distinct values (s chosen as documented in quantize.c) */
} rq_import_report;

void rq_import_opts_default(rq_import_opts *o);

/* Recover codes, s and m of weights w [out][in] that lie on a 2-bit grid per
 * group, as written by OmniQuant, QuaRot or any fake-quantizing tool (and by
 * rq_q2_dequant). int2: up to 4 equally spaced values per group; nf2: up to 4
 * values s * level + m. A group with more than 4 distinct values, or values no
 * (s, m) maps onto the codebook, is RQ_ERR_FORMAT naming the tensor, row and
 * group. report may be NULL. */
rq_status rq_q2_import_fake_quant(const float *w, int out, int in, const rq_import_opts *opts, const char *name,
                                  rq_q2_tensor **t, rq_import_report *report, rq_err *err);

#endif /* RQ_QUANTIZE_H */
