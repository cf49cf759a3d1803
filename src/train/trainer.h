/* The training loop shared by every stage: micro-batches with gradient
 * accumulation, the weighted loss (cross-entropy on targets and/or MSE of the
 * final hidden states against a teacher), Adam/AdamW with a schedule,
 * validation with early stopping and best-adapter restore, a progress line,
 * metrics.jsonl, and atomic checkpoints that resume bit-identically.
 *
 * Data comes from a callback: micro-batch i of the data order (epochs of a
 * seeded permutation of the dataset's examples, or the dataset's own order).
 * The data position is the micro-batch counter, so a checkpoint needs only the
 * step counters and the seed to resume the same order. */
#ifndef RQ_TRAINER_H
#define RQ_TRAINER_H

#include "../adapter/adapter.h"
#include "../model/forward.h"
#include "optim.h"

/* Fill example `example` (0 .. n_examples-1) into buffers of seq_len
 * positions: tokens, targets (the next token each position predicts, < 0
 * where not counted) and, when the loss has a model term, teacher [seq_len][dim]
 * (final hidden states of the full-precision model). *len receives the number
 * of positions used (1 .. seq_len; the rest is ignored): a micro-batch runs at
 * the length of its longest example, so short examples cost little. */
typedef rq_status (*rq_example_fn)(void *user, int64_t example, int *tokens, int *targets, float *teacher,
                                   int *len, rq_err *err);

typedef struct rq_train_data {
    rq_example_fn get;
    void *user;
    int64_t n_examples;
} rq_train_data;

/* Where the Model-Loss compares student and teacher (the RILQ paper's ablation). */
typedef enum rq_loss_scope {
    RQ_SCOPE_MODEL = 0, /* the final hidden states (or logits): the RILQ default */
    RQ_SCOPE_LAYER,     /* every decoder layer's output, mean over layers */
    RQ_SCOPE_LINEAR     /* every projection's output, mean over the 7 x n_layers projections */
} rq_loss_scope;

typedef struct rq_train_opts {
    int seq_len;          /* T: the longest example */
    int micro_batch;      /* B: examples per forward/backward */
    int accum;            /* micro-batches per optimizer step */
    int64_t max_steps;    /* optimizer steps at most */
    bool shuffle;         /* a seeded permutation per epoch; false: the dataset's order, cycling */
    uint64_t seed;
    double ce_weight;     /* weight of the mean cross-entropy on targets (GT-Loss) */
    double mse_weight;    /* weight of the Model-Loss: MSE of final hidden states vs teacher */
    bool mse_on_logits;   /* Model-Loss on the logits instead (teacher logits = teacher hidden
                             through the same head; mean over positions x vocabulary) */
    rq_loss_scope scope;
    const rq_model *teacher; /* layer / linear scope: the full-precision model, run alongside the
                                student on each micro-batch (its per-layer activations are L or 7L
                                times the final hidden states: too many to cache). Examples must then
                                all have seq_len tokens (no padding). */
    rq_optim_config optim;
    rq_schedule schedule;
    int eval_every;       /* validate every N optimizer steps (0: never) */
    int patience;         /* stop after N validations without improvement (0: no early stopping);
                             with patience > 0 the best adapters are restored at the end */
    int checkpoint_every; /* optimizer steps between checkpoints (0: only at the end) */
    const char *out_dir;  /* checkpoint.bin, metrics.jsonl; NULL: nothing written */
    bool resume;          /* continue from out_dir/checkpoint.bin when it exists */
    bool quiet;           /* no progress line */
} rq_train_opts;

void rq_train_default_opts(rq_train_opts *o);

typedef struct rq_train_result {
    int64_t steps;        /* optimizer steps done in total (including before a resume) */
    double last_loss;     /* mean loss of the last step */
    double best_val;      /* best validation loss (NAN when never validated) */
    int64_t best_step;
    double first_val;     /* validation loss before training (NAN when never validated) */
    double seconds;       /* wall time of the loop, validation included */
    double val_seconds;   /* of which validation passes */
    double tokens_per_s;  /* training tokens / (seconds - val_seconds) */
    bool stopped_early;
    bool resumed;
    int64_t resumed_at;   /* the step a resume started from */
} rq_train_result;

/* Per-step losses reported to the caller (tests compare them bit for bit). */
typedef void (*rq_step_fn)(void *user, int64_t step, double loss, double grad_norm, double lr);

/* The buffers rq_train allocates besides the model, the adapters (params +
 * grads), the optimizer's moments (rq_optim_moment_bytes) and the forward
 * states (rq_forward_size_of), for adapters of n_params parameters; read from
 * the size table rq_train allocates from. Not counted: the shuffle order, 8
 * bytes per training example (the data's size, not the run's shape).
 *   device: d_hidden [B*T][dim] fp32; the uploaded teacher targets (mse_weight
 *           > 0); the scope hooks' buffer (layer / linear scope), as large each
 *   host:   tokens, targets, one example's targets [B*T] ints, lengths [B];
 *           the teacher targets (mse_weight > 0); the checkpoint transfer and
 *           best-adapter copies (n_params floats each); the optimizer state a
 *           checkpoint writes (rq_optim_state_bytes_for) */
typedef struct rq_train_size {
    size_t device, host;
} rq_train_size;
void rq_train_size_of(const rq_config *c, const rq_train_opts *o, size_t n_params, rq_train_size *out);

/* Train the adapters of m. val may have n_examples == 0 (no validation). */
rq_status rq_train(const rq_model *m, rq_backend *be, rq_adapter_set *ad, const rq_train_data *train,
                   const rq_train_data *val, const rq_train_opts *o, rq_step_fn on_step, void *user,
                   rq_train_result *res, rq_err *err);

#endif
