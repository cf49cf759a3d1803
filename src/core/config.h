/* A LLaMA model's shape: the numbers every layer, loader and backend agree on.
 * Below src/model and src/backend, so an op table can size its scratch from a
 * shape without seeing the model (rq_config_validate lives in src/model). */
#ifndef RQ_CONFIG_H
#define RQ_CONFIG_H

#include <stdbool.h>

typedef enum rq_rope_scaling {
    RQ_ROPE_SCALING_NONE = 0,
    RQ_ROPE_SCALING_LINEAR, /* inv_freq /= factor */
    RQ_ROPE_SCALING_LLAMA3  /* the smooth wavelength-dependent scaling of LLaMA-3.1+ */
} rq_rope_scaling;

typedef struct rq_config {
    int dim;          /* hidden_size */
    int hidden_dim;   /* intermediate_size */
    int n_layers;
    int n_heads;
    int n_kv_heads;
    int head_dim;     /* usually dim / n_heads */
    int vocab_size;
    int max_seq_len;  /* max_position_embeddings */
    float norm_eps;
    float rope_theta;
    rq_rope_scaling rope_scaling;
    float rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int rope_orig_max_pos;
    bool tie_embeddings;
    int bos_id;       /* -1 when unknown */
    int eos_ids[8];   /* generation stops on any of these */
    int n_eos;
} rq_config;

/* The seven projections of a decoder layer, in this order everywhere. */
enum { RQ_PROJ_Q, RQ_PROJ_K, RQ_PROJ_V, RQ_PROJ_O, RQ_PROJ_GATE, RQ_PROJ_UP, RQ_PROJ_DOWN, RQ_N_PROJ };

/* out and in of projection p of a layer of shape c ([out][in] weights). */
static inline void rq_proj_shape(const rq_config *c, int p, int *out, int *in) {
    const int qd = c->n_heads * c->head_dim, kvd = c->n_kv_heads * c->head_dim;
    switch (p) {
    case RQ_PROJ_Q: *out = qd, *in = c->dim; break;
    case RQ_PROJ_K:
    case RQ_PROJ_V: *out = kvd, *in = c->dim; break;
    case RQ_PROJ_O: *out = c->dim, *in = qd; break;
    case RQ_PROJ_GATE:
    case RQ_PROJ_UP: *out = c->hidden_dim, *in = c->dim; break;
    default: *out = c->dim, *in = c->hidden_dim; break; /* down */
    }
}

#endif
