/* Merge: fold adapters into a 2-bit model, so the output has no adapters.
 *
 * QA-LoRA into a q2 weight (exact up to one fp16 rounding). The adapter adds
 * s * B A pool(x) with pool(x)_g the MEAN of x over group g (adapter.h), i.e.
 *   dW[o][i] = s * (B A)[o][g] / len(g)   for every input i of group g,
 * a constant inside the group, which the group's offset absorbs:
 *   m'[o][g] = m[o][g] + s * (B A)[o][g] / len(g),   s = alpha / r,
 * len(g) = the real members of group g (the last group of a row may be
 * shorter: in = 172, gs = 64 -> 64, 64, 44). (B A)[o][g] is summed in double,
 * the sum m + update is formed in double and rounded to fp16 ONCE (round to
 * nearest even, straight from double: no intermediate fp32 rounding). Needs
 * the adapter's pooling group size to equal the tensor's quantization group
 * size (else RQ_ERR_UNSUPPORTED naming both). A merged offset beyond the fp16
 * range (|m'| >= 65520 rounds to infinity) is RQ_ERR_UNSUPPORTED naming the
 * tensor, row and group.
 *
 * What remains of the adapter model after the merge is the fp16 rounding of
 * the new offsets: |m'_fp16 - m'_exact| <= 2^-11 |m'| (half an ulp; 2^-25 in
 * the subnormal range). The offset is the weight at the codebook's level 0
 * (both codebooks hold 0), so every weight of the model moves by at most
 * 2^-11 of the largest weight of its group: a relative weight perturbation of
 * u = 2^-11 = 4.9e-4, the rounding any fp16 model carries anyway.
 *
 * Plain LoRA (A reads the whole input) adds a full-rank-per-row dW that no
 * per-group offset can represent: refused, unless requantize is set, which
 * dequantizes W, adds the dense dW and quantizes W + dW again with the model's
 * method (rtn / nf2, clip search as recorded), codebook and group size. That
 * adds a quantization error of its own, reported per tensor. The same path
 * serves a QA-LoRA adapter whose pooling group differs from the quantization
 * group. Projections held in fp32 (not quantized) get W += dW in fp32.
 *
 * Checks. (1) Weights, exact: for rows 0, out/2 and out-1 of every folded
 * tensor, each merged weight must equal deq(W) + dW (dW in double) within
 * 2^-11 max(|m'|, 2^-14) + 2^-23 (|w| + |w'|), the offset's rounding plus the
 * fp32 rounding of the two dequantization sums (RQ_ERR_INTERNAL otherwise).
 * (2) Logits, end to end: before the merge, N sequences of T tokens run
 * through the model with the adapters attached (the reference) and without
 * them; after the merge, through the merged model. The tokens are text the
 * adapter model samples itself (temperature 1, seeded; verify_random: uniform
 * random tokens instead). Random tokens are a poor probe of a strongly
 * quantized model: far off its distribution its logits swing with
 * perturbations the size of fp16 rounding, while the adapters' effect there is
 * small. SmolLM2-135M, GPTQ + block-wise + RILQ: random tokens 0.303 (above
 * the bound 0.226), sampled text 0.197, and the merged model's WikiText-2
 * perplexity equals the adapter model's (1801.6 vs 1803.5). Per position the
 * relative difference is max_v |merged - ref| / max_v |ref|; the report holds
 * the largest absolute and relative difference over all positions, and the
 * adapters' own effect (adapter vs base) measured the same way.
 *
 * The logit bound. The rounding error e of an offset is shared by the whole
 * group: the merge equals the adapter model plus a weight change E with
 * E[o][i] = e[o][g(i)], so a projection's output moves by E x, and for inputs
 * of random sign ||E x|| / ||W' x|| ~ ||E||_F / ||W'||_F =: eps_t. The
 * roundings of different projections are independent, so through the network
 * the logits move by about c * eps, eps = sqrt(sum_t eps_t^2) (the report's
 * rounding_perturbation, computed exactly from this merge's roundings), c the
 * network's amplification. A priori: |e| <= u |m'| (u = 2^-11), and |m'| is at
 * most the group's largest weight (int2: the offset is the group minimum; nf2:
 * 0 before the merge, so only the update is rounded, much smaller), so
 * eps_t ~ u per projection and eps ~ u sqrt(n) over n projections.
 * Measured (tests/test_merge.c: stories260K and a random model with ragged
 * groups, int2 and nf2, group sizes 32 / 64 / 128, ranks 1 / 8 / 16, updates of
 * ~0.1 quantization step, 10 seeds of the random adapters; SmolLM2-135M by
 * hand, 210 projections): relative logit difference / eps is 1.3-14 (it
 * varies: activations are not of random sign and the max over positions is
 * heavy-tailed); / (u sqrt(n)) it is <= 8.0 (int2; nf2 0.05-1.5). The default
 * bound is the smaller of the two estimates with a margin:
 *   tol = max(1e-4, min(64 eps, 32 u sqrt(n)))
 * (>= 4.5x and >= 4x over the worst measured ratios; the 1e-4 floor is the
 * fp32 summation-order noise between the two forwards, measured <= 1.3e-5).
 * The eps term keeps the bound tight for nf2, whose rounding is tiny, so a
 * missing or wrong merge is not hidden under the int2-sized a priori bound;
 * tests/test_merge.c checks the margins still hold (>= 2x). Typical values:
 * stories260K int2: bound 0.092, measured 0.003-0.017; nf2: bound 0.01-0.02,
 * measured 2.4e-4-4.6e-3; SmolLM2-135M int2 gs 64: bound 0.23, measured
 * 0.011-0.017 (random adapters), 0.050 and 0.197 (RILQ adapters on RTN and
 * GPTQ bases refined block-wise, sampled text); nf2 gs 128: bound 0.015-0.04, measured 1.2e-5-3.9e-4. An error
 * in the formula is far larger: one projection's update applied twice moves
 * the logits by 0.33-0.99 (35-100x the bound) in the same test. Requantized
 * merges are reported, not checked, unless check_requantized. */
#ifndef RQ_MERGE_H
#define RQ_MERGE_H

#include "../quant/q2.h"
#include "adapter.h"

/* The default logit bound (derivation above):
 *   max(FLOOR, min(K_MEASURED * rounding_perturbation, K_A_PRIORI * 2^-11 * sqrt(n))),
 * n the projections folded exactly (or updated in fp32). */
#define RQ_MERGE_TOLERANCE_K_MEASURED 64.0
#define RQ_MERGE_TOLERANCE_K_A_PRIORI 32.0
#define RQ_MERGE_TOLERANCE_FLOOR 1e-4
double rq_merge_default_tolerance(double rounding_perturbation, int n_projections);

typedef struct rq_merge_opts {
    bool requantize;        /* fold what cannot fold exactly by re-quantizing W + dW */
    int verify_seqs;        /* N sequences for the verification (4); 0: no verification */
    int verify_len;         /* T tokens each (64; capped at the model's max_seq_len) */
    uint64_t verify_seed;   /* seeds the verification tokens */
    bool verify_random;     /* uniform random tokens instead of text the adapter model samples (the default) */
    double tolerance;       /* on the relative logit difference; <= 0: rq_merge_default_tolerance */
    bool check_requantized; /* apply the tolerance even when some projection was re-quantized */
    int n_threads;          /* re-quantization threads; <= 0: the OpenMP default */
    bool compress;          /* rq_merge_artifact: write model.safetensors.zst */
} rq_merge_opts;

void rq_merge_opts_default(rq_merge_opts *o);

typedef struct rq_merge_report {
    int exact;          /* q2 projections whose offsets absorbed a QA-LoRA adapter */
    int dense;          /* fp32 projections that got W += dW */
    int requantized;    /* q2 projections re-quantized with W + dW */
    /* exact merges: the fp16 rounding of the new offsets, max over all offsets of
     * |m'_fp16 - m'_exact| / max(|m'|, 2^-14) (<= 2^-11 by construction) */
    double max_offset_rounding;
    /* the rounding's size: sqrt(sum over folded tensors of (||E||_F / ||W'||_F)^2), E the
     * weight change the fp16 rounding of the new offsets makes (each offset's error
     * times its group) */
    double rounding_perturbation;
    /* the weight check: max |w' - (w + dW)| / its bound over the checked rows (<= 1) */
    double max_weight_err_ratio;
    /* size of the update in quantization steps, |s (BA)[o][g] / len(g)| / scale[o][g]:
     * mean and max over all merged groups */
    double mean_update_steps, max_update_steps;
    /* re-quantized projections: ||Q(W + dW) - (W + dW)||_F / ||W + dW||_F (mean, max)
     * and ||Q(W + dW) - (W + dW)||_F / ||dW||_F (max): how much of the update is lost */
    double requant_mean_rel_err, requant_max_rel_err, requant_max_err_over_update;
    char requant_worst[96];
    /* verification */
    bool verified;               /* logits were compared */
    int verify_seqs, verify_len; /* what was run */
    double max_abs_diff, max_rel_diff;       /* merged vs adapter model */
    double adapter_abs_diff, adapter_rel_diff; /* adapter model vs base model (the adapters' effect) */
    double max_abs_logit;        /* largest |logit| of the adapter model */
    double tolerance;            /* the bound applied (0: none applied) */
    bool passed;                 /* max_rel_diff <= tolerance, or no bound applied */
    double seconds;
} rq_merge_report;

/* x (double) -> fp16 bits, rounded ONCE to nearest even (no intermediate fp32:
 * 1 + 2^-11 + 2^-40 gives 1 + 2^-10, where fp32 first would tie down to 1);
 * false when x is not finite or |x| >= 65520 (rounds to infinity). */
bool rq_f64_to_f16_once(double x, uint16_t *out);

/* ---- one tensor ------------------------------------------------------------------------- */

/* Figures of exact merges, accumulated over tensors. */
typedef struct rq_merge_stats {
    double max_rounding; /* max |m'_fp16 - m'_exact| / max(|m'|, 2^-14) */
    double rounding_sq;  /* sum over groups of len(g) (m'_fp16 - m'_exact)^2: ||E||_F^2, E the rounding's weight change */
    double sum_steps;    /* sum over groups of |update| / scale (for a mean) */
    double max_steps;    /* max of the same */
    long long groups;    /* groups merged */
} rq_merge_stats;

/* Fold one QA-LoRA adapter (host copies A [r][a_cols], B [out][r]) into the
 * offsets of t: new offsets go to offsets_out [out][n_groups] (may be
 * t->offsets). name names the tensor in messages. stats (may be NULL) is
 * added to. */
rq_status rq_merge_qalora_offsets(const rq_q2_tensor *t, const rq_adapter *a, const float *A, const float *B,
                                  const char *name, uint16_t *offsets_out, rq_merge_stats *stats, rq_err *err);

/* dW [out][in] += s * B A~ in fp32, A~ = A (LoRA) or A spread over its groups
 * divided by their lengths (QA-LoRA): the dense update of one adapter. */
rq_status rq_merge_dense_update(const rq_adapter *a, const float *A, const float *B, float *dW, rq_err *err);

/* ---- a model ------------------------------------------------------------------------------ */

/* Fold the adapters s (built for m's shape) into m, in place, and verify as
 * documented above. On success m has no adapters attached (m->adapters is
 * cleared when it was s). All merged values are computed and checked before
 * m is modified, so a refused merge leaves m unchanged; a verification that
 * fails leaves m merged, returns RQ_ERR_INTERNAL and fills rep. rep may be NULL. */
rq_status rq_merge_model(rq_model *m, rq_adapter_set *s, rq_backend *be, const rq_merge_opts *o, rq_merge_report *rep,
                         rq_err *err);

/* Seeded random tokens [n][T] in [0, vocab). */
void rq_merge_verify_tokens(int *tokens, int n, int T, int vocab, uint64_t seed);
/* Tokens [n][T] the model with adapters ad sampled (temperature 1, from the BOS
 * token, or a seeded random first token when the model has none): text of the
 * kind the model reads, where uniform random tokens drive a strongly quantized
 * model far off its distribution (its logits there swing with perturbations the
 * size of fp16 rounding, and the adapters' effect is small). */
rq_status rq_merge_sample_tokens(rq_model *m, rq_backend *be, rq_adapter_set *ad, int *tokens, int n, int T,
                                 uint64_t seed, rq_err *err);
/* Logits [n][T][vocab] of n sequences of T tokens, one at a time, through m
 * with adapters ad attached (NULL: none, whatever m->adapters says). */
rq_status rq_merge_logits(rq_model *m, rq_backend *be, rq_adapter_set *ad, const int *tokens, int n, int T, float *out,
                          rq_err *err);
/* Largest absolute difference and largest per-row relative difference
 * (max_v |got - ref| / max_v |ref|) of rows [rows][vocab]; max_ref (may be NULL)
 * receives the largest |ref|. */
void rq_merge_compare(const float *ref, const float *got, size_t rows, int vocab, double *max_abs, double *max_rel,
                      double *max_ref);

/* ---- an artifact directory ------------------------------------------------------------------ */

/* The whole merge: load the q2 artifact in_dir, open the adapters of
 * adapter_dir (a PEFT directory with adapter_config.json, or a run directory
 * holding one in adapter/), rq_merge_model, record the merge in
 * quantization_config.merged_adapters and write out_dir (rq_artifact_write:
 * atomic; out_dir must not exist or be empty). Nothing is written when the
 * merge is refused or fails verification. device: backend name (NULL: "cpu"). */
rq_status rq_merge_artifact(const char *in_dir, const char *adapter_dir, const char *out_dir, const char *device,
                            int n_threads, const rq_merge_opts *o, rq_merge_report *rep, rq_err *err);

#endif
