/* Training losses over backend buffers, chunk-friendly.
 *
 * Means are taken over a denominator the caller gives (the number of counted
 * tokens, or of elements, in the whole optimizer micro-batch), so a loss can be
 * evaluated chunk by chunk (logits are never B*T*vocab at once) and the
 * gradients of all chunks add up to the gradient of the mean. Each gradient is
 * scaled by its weight in the total, so a weighted sum of losses (RILQ:
 * 0.5 * model loss + 0.5 * GT loss) needs no extra pass. */
#ifndef RQ_LOSS_H
#define RQ_LOSS_H

#include "../backend/backend.h"

/* Count the targets that take part in a cross-entropy (target >= 0) in a host
 * array; a target >= vocab is an error naming its position. */
rq_status rq_loss_count_targets(const int *targets, size_t n, int vocab, int64_t *count, rq_err *err);

/* Masked next-token cross-entropy on one chunk: logits [N][V], targets [N]
 * (backend memory; a target < 0 is masked; callers pass the shifted tokens).
 * denom: the number of counted targets of the whole micro-batch (>= 1).
 * row_loss [N]: backend scratch. When dlogits [N][V] is not NULL it is
 * OVERWRITTEN with weight / denom * (softmax - onehot) on counted rows, 0 on
 * masked ones: the gradient of weight * mean CE. loss_sum receives the sum of
 * this chunk's row losses (fp64): the mean is loss_sum / denom once all chunks
 * are in. */
rq_status rq_loss_cross_entropy(rq_backend *be, const float *logits, const int *targets, int N, int V,
                                int64_t denom, double weight, float *dlogits, float *row_loss, double *loss_sum,
                                rq_err *err);

/* MSE between a and b [n] (one chunk), mean over denom elements (all elements
 * of the micro-batch: nn.MSELoss(reduction='mean')). When d is not NULL it
 * ACCUMULATES (+=) weight / denom * 2 * (a - b): the gradient with respect to a.
 * Returns the chunk's sum of squared differences in sq_sum. */
rq_status rq_loss_mse(rq_backend *be, const float *a, const float *b, size_t n, size_t denom, double weight,
                      float *d, double *sq_sum, rq_err *err);

/* sum_i weights[i] * losses[i] (e.g. 0.5 * L_model + 0.5 * L_gt). */
double rq_loss_weighted_sum(const double *losses, const double *weights, int n);

#endif
