/* Binding a model's frozen weights to a backend (the contract in
 * src/backend/backend.h: bind_weights): the model knows which host arrays it
 * holds, the backend only sees their addresses and sizes. */
#ifndef RQ_MODEL_BIND_H
#define RQ_MODEL_BIND_H

#include "../backend/backend.h"
#include "model.h"

/* The weight arrays ops read: every layer's norms and projections (fp32, or a
 * q2 tensor's codes, scales and offsets), the final norm and the head (the
 * embedding table when tied). Not an untied embedding table: the embedding op
 * gathers its rows on the host. */
rq_status rq_model_bind(const rq_model *m, rq_backend *be, rq_err *err);
void rq_model_unbind(const rq_model *m, rq_backend *be);
/* After m's weights were rewritten in place or its q2 tensors replaced (a
 * merge): a backend holding a binding of m copies the new values now. */
rq_status rq_model_rebind(const rq_model *m, rq_backend *be, rq_err *err);

#endif
