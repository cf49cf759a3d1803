/* The LLaMA forward pass, written once over the backend op table.
 *
 * A forward state owns the activations for up to max_batch sequences of up to
 * max_seq tokens, and optionally a KV cache for incremental decoding. */
#ifndef RQ_FORWARD_H
#define RQ_FORWARD_H

#include "../backend/backend.h"
#include "model.h"

typedef struct rq_forward_state rq_forward_state;

struct rq_adapter_set;

typedef struct rq_forward_opts {
    int max_batch;  /* B: sequences per call */
    int max_seq;    /* T: tokens per sequence per call (and KV cache length) */
    bool kv_cache;  /* keep K/V so later calls can continue at pos0 > 0 (B sequences) */
    bool train;     /* keep every layer's activations for rq_forward_backward; runs whole
                       sequences (T <= max_seq) from position 0 */
    bool decode;    /* calls of at most RQ_LINEAR_ROWS_MAX rows (B*T: a generation step) run the
                       projections and the head through be->linear_rows when the backend has it
                       (the same weights, another summation order); everything else, and every
                       call of a state without it, takes the GEMM path */
    struct rq_adapter_set *adapters; /* LoRA / QA-LoRA adapters applied in the forward, or NULL */
    int head_rows;  /* inference: rows per head GEMM in rq_forward_logits (0: 64; at most 256). Each head
                       GEMM repacks the whole [vocab][dim] head: more rows amortize it */
} rq_forward_opts;

rq_status rq_forward_create(const rq_model *m, rq_backend *be, const rq_forward_opts *o, rq_forward_state **out,
                            rq_err *err);
void rq_forward_free(rq_forward_state *s);

/* Run tokens[B][T] (row-major) at positions pos0 .. pos0+T-1. With a KV cache,
 * pos0 > 0 continues the cached sequences; without one pos0 must be 0.
 * Leaves the final hidden states (after the final norm) in the state. */
rq_status rq_forward_run(rq_forward_state *s, const int *tokens, int B, int T, int pos0, rq_err *err);

/* A packed run: n_seqs sequences of different lengths in one batch without
 * padding (many documents per forward). tokens[N] holds every sequence's new
 * tokens, sequence i in rows seqs[i].row .. row+n-1 (rows consecutive from 0,
 * N <= max_seq: create the state with max_batch 1, a KV cache and max_seq rows);
 * its tokens sit at positions pos0 .. pos0+n-1 and, when pos0 > 0, continue the
 * prefix whose keys a previous packed run with keep_kv left in cache rows
 * pre_row .. pre_row+pos0-1 (several sequences may continue one prefix: the
 * choices of one context). keep_kv: this run's keys and values replace the
 * cache's rows [0, N) afterwards. The final hidden states are [N][dim] (B = 1,
 * T = N for rq_forward_logits' rows). Each sequence's numbers are those of
 * running it alone, up to fp32 summation order in the larger GEMMs. */
rq_status rq_forward_run_packed(rq_forward_state *s, const int *tokens, const rq_attn_seq *seqs, int n_seqs,
                                bool keep_kv, rq_err *err);

/* ---- a layer at a time (GPTQ and block-wise calibration, a layer-streamed teacher) ----
 * An inference state without a KV cache runs whole sequences (positions 0..T-1)
 * one layer at a time on its residual stream (a training state runs all its
 * layers, l0 = 0 and l1 = n_layers, and rq_forward_backward_hooked differentiates
 * the run: its layer_out hook adds the loss's gradient at the last layer), [B][T][dim] on the backend: fill it
 * (rq_forward_embed, or upload into rq_forward_stream), run layers [l0, l1), read it
 * or apply the final norm (then rq_forward_hidden, _logits and _nll read the result).
 * The numbers equal rq_forward_run's. */
typedef struct rq_forward_hooks {
    void *user;
    /* x [N][in] on the backend: the input of projection proj of layer `layer`; called for
     * q (k and v read the same), o, gate (up reads the same) and down */
    void (*proj_in)(void *user, int layer, int proj, const float *x, int N, int in);
} rq_forward_hooks;
float *rq_forward_stream(rq_forward_state *s);
/* The stream after the last layer run (the same buffer in inference; a training
 * state keeps each layer's output for its backward pass). */
const float *rq_forward_stream_out(const rq_forward_state *s);
rq_status rq_forward_embed(rq_forward_state *s, const int *tokens, int B, int T, rq_err *err);
rq_status rq_forward_layers(rq_forward_state *s, int l0, int l1, int B, int T, const rq_forward_hooks *hk,
                            rq_err *err);
rq_status rq_forward_final_norm(rq_forward_state *s, int B, int T, rq_err *err);

/* Share a prefix: copy sequence 0's cached keys/values at positions [0, len)
 * into sequences 1..B-1, so B continuations of one context can run as a batch
 * at pos0 = len without recomputing the context. Needs a KV cache. */
rq_status rq_forward_cache_fork(rq_forward_state *s, int len, int B, rq_err *err);

/* Final hidden states of the last run: [B][T][dim] on the backend. */
const float *rq_forward_hidden(const rq_forward_state *s);

/* Logits for n rows of the last run's hidden states, row indices rows[0..n)
 * into the flattened [B*T] positions (NULL: rows 0..n-1). out is [n][vocab]. */
rq_status rq_forward_logits(rq_forward_state *s, const int *rows, int n, float *out, rq_err *err);

/* Next-token negative log-likelihood of the last run, per sequence: position
 * t of sequence b predicts targets[b][t] (callers pass the shifted tokens); a
 * target < 0 is not counted. Computes logits in chunks (never B*T*vocab at
 * once), log-sum-exp in fp32. nll[b] is the fp64 sum over the counted
 * positions of sequence b and n[b] their count (arrays of B). */
rq_status rq_forward_nll(rq_forward_state *s, const int *targets, int B, int T, double *nll, int64_t *n,
                         rq_err *err);

/* ---- training (a state created with train = true) ---- */

/* The final hidden states of the last run, writable (for losses computed in place). */
float *rq_forward_hidden_mut(rq_forward_state *s);

/* Next-token cross-entropy over the last run's rows: row i predicts targets[i]
 * (< 0: not counted). Adds grad_scale * d(sum of row losses)/d(hidden) into
 * d_hidden [B*T][dim] when not NULL (callers pass grad_scale = weight / count
 * for a mean). Logits are computed in chunks through the frozen head.
 * *loss_sum (fp64) and *count receive the summed loss and the counted rows. */
rq_status rq_forward_ce_grad(rq_forward_state *s, const int *targets, float grad_scale, float *d_hidden,
                             double *loss_sum, int64_t *count, rq_err *err);

/* Model-Loss on logits: the sum of squared differences between the student's
 * logits and the teacher's (teacher logits = teacher_hidden through the same,
 * unquantized head) over rows [r0, r0+rows) of the last run; teacher_hidden
 * holds those rows [rows][dim]. Adds grad_scale * d(sum)/d(hidden) into
 * d_hidden [B*T][dim] when not NULL. Chunked: never [T][vocab] at once. */
rq_status rq_forward_logit_mse_grad(rq_forward_state *s, const float *teacher_hidden, int r0, int rows,
                                    float grad_scale, float *d_hidden, double *sq_sum, rq_err *err);

/* Backward pass of the last run given d_hidden [B*T][dim], the gradient of the
 * loss with respect to the final hidden states (after the final norm). Adds
 * into the attached adapters' gradients; the base model stays frozen. */
rq_status rq_forward_backward(rq_forward_state *s, const float *d_hidden, rq_err *err);

/* Extra losses inside the network (the RILQ scope ablation: each layer's
 * output, or each projection's output, against a teacher's). Hooks add the
 * gradient of such a loss into the gradient buffer they are handed. */
typedef struct rq_backward_hooks {
    void *user;
    /* res_out [N][dim]: the residual stream after layer `layer`; d_res: its gradient */
    void (*layer_out)(void *user, int layer, const float *res_out, float *d_res, int N);
    /* y [N][out]: projection `proj`'s output (q and k after RoPE; o and down: what
     * they add to the residual stream); dy: its gradient, before it enters the projection */
    void (*proj_out)(void *user, int layer, int proj, const float *y, float *dy, int N);
    /* x [N][in] and dy [N][out]: projection `proj`'s input and its output's gradient, for
     * a weight gradient dW += dy^T x (block-wise quantization trains the weights) */
    void (*proj_grad)(void *user, int layer, int proj, const float *x, const float *dy, int N);
} rq_backward_hooks;

/* rq_forward_backward with hooks (hk may be NULL; d_hidden may be NULL when
 * only hook losses count). */
rq_status rq_forward_backward_hooked(rq_forward_state *s, const float *d_hidden, const rq_backward_hooks *hk,
                                     rq_err *err);

/* The residual stream after layer `layer` of the last training run (NULL when
 * the state does not keep it). */
const float *rq_forward_layer_output(const rq_forward_state *s, int layer);

/* Projection `proj`'s output [B*T][out] in the last training run, as the
 * hooks see it (q and k after RoPE; o and down: what they added to the
 * residual stream, computed into tmp [B*T][dim]). NULL when not kept. */
const float *rq_forward_proj_output(const rq_forward_state *s, int layer, int proj, float *tmp);

/* Bytes of activations and cache this state holds. */
size_t rq_forward_bytes(const rq_forward_state *s);

/* What rq_forward_create would allocate for a model of shape c, without
 * allocating: the same size table, walked dry (the memory plan reads it, so
 * plan and allocation cannot differ). Adapters come from o->adapters only (a
 * shape-only set from rq_adapter_set_plan will do); the model's own attached
 * adapters are not seen here. */
typedef struct rq_forward_size {
    size_t act_bytes;  /* the one activation allocation on the backend */
    size_t kv_bytes;   /* K/V on the backend (inference states) */
    size_t host_bytes; /* host arrays: inv_freq, RoPE cos|sin, one chunk of logits */
} rq_forward_size;
rq_status rq_forward_size_of(const rq_config *c, const rq_forward_opts *o, rq_forward_size *out, rq_err *err);

#endif
