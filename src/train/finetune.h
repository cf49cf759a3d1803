/* Stage 2: task fine-tuning data (PIQA, ARC-Easy, ARC-Challenge, GSM8K).
 *
 * An example is the evaluation prompt and its gold answer, tokenized the way
 * the evaluation tokenizes a request: context = "Question: ...\nAnswer:",
 * continuation = " " + answer (arc: the gold choice text; piqa: the gold
 * solution; gsm8k: the full solution ending in "#### N"); both context+continuation
 * and context are tokenized (the same BOS rule) and the continuation tokens are
 * the joint tokenization after the context's own tokens. The source is cut to
 * its last max_source tokens, the target to its first max_target. The loss
 * counts target tokens only: position t predicts ids[t+1], counted when
 * ids[t+1] is a target token.
 *
 * Training splits: arc/ARC-*-Train.jsonl, gsm8k/train.jsonl. PIQA has no local
 * training split: a fold [A, B) of piqa/valid.jsonl trains, and the evaluation
 * must then use the other validation documents (the fold is recorded). */
#ifndef RQ_TRAIN_FINETUNE_H
#define RQ_TRAIN_FINETUNE_H

#include "../tokenizer/tokenizer.h"

typedef struct rq_ft_example {
    int *ids;  /* source then target tokens */
    int n;     /* total tokens (>= 2) */
    int n_src; /* source tokens (>= 1); ids[n_src..n) are the target */
} rq_ft_example;

typedef struct rq_ft_set {
    rq_ft_example *ex;
    int64_t n;
    int max_len;               /* longest n - 1 (the model input length) */
    int64_t truncated_sources; /* examples whose source lost tokens on the left */
    int64_t truncated_targets; /* examples whose target was cut */
    int64_t skipped;           /* examples with an empty target after tokenization */
    char split[4200];          /* the file trained on, and the fold */
} rq_ft_set;

typedef struct rq_ft_opts {
    const char *task;         /* arc_easy, arc_challenge, piqa, gsm8k */
    const char *dataset_root; /* $RILQ_DATA/datasets */
    int fold_begin, fold_end; /* documents [begin, end) of the training file; end 0 = all */
    int64_t limit;            /* first N examples after the fold (0: all) */
    int max_source, max_target; /* 384, 128 */
    rq_bos_mode bos;          /* RQ_BOS_OFF, as lm-eval v0.4.x scores */
} rq_ft_opts;

void rq_ft_default_opts(rq_ft_opts *o);

/* Tokenize one (context, continuation) pair into ex (see above). */
rq_status rq_ft_tokenize_pair(const rq_tokenizer *tok, const char *context, const char *continuation, int max_source,
                              int max_target, rq_bos_mode bos, rq_ft_example *ex, bool *src_cut, bool *tgt_cut,
                              rq_err *err);

rq_status rq_ft_set_load(const rq_tokenizer *tok, const rq_ft_opts *o, rq_ft_set *set, rq_err *err);
void rq_ft_set_free(rq_ft_set *set);

/* The trainer's example: tokens = ids[0 .. n-2], targets masked (-1) on source
 * positions, *len = n - 1 (<= T). */
rq_status rq_ft_fill(const rq_ft_set *set, int64_t k, int T, int *tokens, int *targets, int *len, rq_err *err);

#endif
