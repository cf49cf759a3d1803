/* Multiple-choice evaluation by log-likelihood, scored exactly as
 * lm-evaluation-harness v0.4.x does it (reference/formats-and-eval.md 1.3-1.5).
 *
 * A request is (context, continuation). Both `context + continuation` and
 * `context` are tokenized (same BOS rule); the continuation tokens are the
 * joint tokenization after the context's own tokens. The model input is
 * (ctx_ids + cont_ids) left-truncated to max_length + 1 tokens, minus the
 * last one; the score is the sum over the continuation tokens of their
 * log-softmax (log-sum-exp in fp32, the sum in double).
 *
 * Context sharing: when all choices of a document share one context (arc,
 * piqa, hellaswag) the context runs once (batch 1, KV cache); its last
 * position gives every choice's first-token log-probability; the cache is
 * forked to one sequence per choice and the choices' remaining tokens run as
 * one batch, padded at the end (causal attention: padding never influences
 * earlier positions). The numbers are those of scoring every request alone,
 * up to fp32 summation order inside the GEMMs (tests allow 1e-4 absolute).
 * Documents whose contexts differ per choice (winogrande) run their requests
 * from scratch as one padded batch.
 *
 * Packing (batch_tokens > 0, what `rilq eval` does): many documents per
 * forward, without padding (rq_mc_score_docs below). */
#ifndef RQ_EVAL_MC_H
#define RQ_EVAL_MC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../backend/backend.h"
#include "../data/tasks.h"
#include "../model/model.h"

typedef struct rq_mc_opts {
    rq_bos_mode bos; /* BOS on both tokenizations: off (lm-eval v0.4.x), on, tokenizer default */
    int max_length;  /* model context for truncation; 0: the model's max_position_embeddings */
    bool naive;      /* score every request alone from scratch (reference path for tests and benchmarks) */
    int batch_tokens; /* many documents per forward: token positions per packed forward (0: one document at a
                         time, the shared-context path above) */
} rq_mc_opts;

/* Work counters of a scorer, for the benchmark's "forward FLOPs saved" figure:
 * forward FLOPs are proportional to the token positions run through the model
 * (attention over short prompts is a small share). */
typedef struct rq_mc_stats {
    int64_t requests;          /* continuations scored */
    int64_t positions_run;     /* token positions through the model, end padding included */
    int64_t positions_useful;  /* the same without the padding */
    int64_t positions_naive;   /* what scoring every request alone would have run */
    int64_t unshared_docs;     /* shared-context documents run unshared: left truncation cut their contexts */
    int64_t batches;           /* packed batches of documents (each one or two forwards) */
    int64_t rows_scored;       /* positions whose logits went through the head */
} rq_mc_stats;

typedef struct rq_mc_scorer rq_mc_scorer;

/* The model must carry a tokenizer. */
rq_status rq_mc_scorer_create(const rq_model *m, rq_backend *be, const rq_mc_opts *o, rq_mc_scorer **out,
                              rq_err *err);
void rq_mc_scorer_free(rq_mc_scorer *s);
const rq_mc_stats *rq_mc_scorer_stats(const rq_mc_scorer *s);

/* One request scored alone from scratch (lm-eval's loglikelihood). */
rq_status rq_mc_loglikelihood(rq_mc_scorer *s, const char *context, const char *continuation, double *ll,
                              bool *is_greedy, rq_err *err);

/* One request as lm-eval feeds it to the model (for reference scorers fed the
 * same tokens): *input = (ctx_ids + cont_ids) left-truncated to max_length + 1
 * tokens minus the last one, *n_input tokens; *cont = cont_ids, *n_cont tokens,
 * predicted by the last *n_cont positions of the input. Both malloc'd. */
rq_status rq_mc_request_input(rq_mc_scorer *s, const char *context, const char *continuation, int **input,
                              int *n_input, int **cont, int *n_cont, rq_err *err);

/* All choices of a document: ll[n_choices], is_greedy[n_choices] (may be NULL).
 * Uses context sharing unless the scorer is naive; packed (one document) when
 * batch_tokens > 0. */
rq_status rq_mc_score_doc(rq_mc_scorer *s, const rq_mc_doc *doc, double *ll, bool *is_greedy, rq_err *err);

/* Many documents: ll and is_greedy (may be NULL) hold every document's choices,
 * one document after another. With batch_tokens > 0 (and not naive) documents
 * are packed, as many per forward as fit batch_tokens positions (a longer one
 * runs alone): phase 1 runs every shared context, and every request of a
 * document without one (or cut by truncation), from position 0 as one batch of
 * sequences without padding; phase 2 runs every choice's remaining tokens as
 * sequences that attend to their own context's cached keys. The logits are
 * computed only at the scored positions. The numbers are those of one document
 * at a time up to fp32 summation order in the larger GEMMs (tests/test_eval.c
 * states the tolerance); fixed for a fixed batch_tokens and thread count. */
rq_status rq_mc_score_docs(rq_mc_scorer *s, const rq_mc_doc *docs, size_t n_docs, double *ll, bool *is_greedy,
                           rq_err *err);

/* ---- metrics ---------------------------------------------------------------- */

/* Index of the largest value; ties go to the first (numpy argmax). */
size_t rq_argmax_first(const double *v, size_t n);

/* Predictions of one document from its log-likelihoods: pred = argmax ll,
 * pred_norm = argmax ll / code-point length of the choice text (SIZE_MAX when
 * the doc has no choice texts: winogrande). */
void rq_mc_predict(const rq_mc_doc *doc, const double *ll, size_t *pred, size_t *pred_norm);

/* Mean and lm-eval's mean_stderr: sample standard deviation (n - 1) / sqrt(n).
 * stderr is NaN when n < 2 (lm-eval cannot compute it either). */
void rq_mean_stderr(const double *x, size_t n, double *mean, double *stderr_of_mean);

/* Checks that make a scored number meaningful: 2+ choices, gold in range,
 * no empty choice text or continuation. `where` names the source for messages. */
rq_status rq_mc_doc_check(const rq_mc_doc *doc, const char *where, rq_err *err);

/* ---- a whole task ------------------------------------------------------------- */

typedef struct rq_mc_doc_record {
    size_t doc_index, source_line, gold, pred, pred_norm;
    size_t n_choices;
    double *ll;     /* [n_choices] */
    bool *is_greedy; /* [n_choices] */
} rq_mc_doc_record;

typedef struct rq_mc_result {
    size_t n_docs;       /* documents scored */
    size_t n_docs_total; /* documents in the split */
    double acc, acc_stderr;
    double acc_norm, acc_norm_stderr;
    bool has_acc_norm;
    int64_t requests;
    double seconds;
    rq_mc_doc_record *records; /* [n_docs] when asked for, else NULL */
} rq_mc_result;

/* Score the first `limit` documents (0: all). keep_records fills r->records.
 * quiet: no progress line. */
rq_status rq_mc_evaluate(rq_mc_scorer *s, const rq_mc_task *task, size_t limit, bool keep_records, bool quiet,
                         rq_mc_result *r, rq_err *err);
void rq_mc_result_free(rq_mc_result *r);

#endif /* RQ_EVAL_MC_H */
