/* A model with random weights for a given config: benchmarks and tests use it
 * to get realistic shapes without a checkpoint. Built through the same
 * tensor-table path as a real checkpoint (rq_model_build). */
#include <stdio.h>
#include <math.h>
#include <stdlib.h>

#include "../core/tensors.h"
#include "model.h"



typedef struct named_shape {
    char name[RQ_TENSOR_NAME_MAX];
    int64_t rows, cols; /* cols 0: a vector */
    bool is_norm;
} named_shape;

rq_status rq_model_random(const rq_config *cfg_in, uint64_t seed, rq_model **out, rq_err *err) {
    *out = NULL;
    rq_config cfg = *cfg_in;
    RQ_TRY(rq_config_validate(&cfg, "random model", err));
    const int n_per_layer = 9;
    int n = 2 + n_per_layer * cfg.n_layers + (cfg.tie_embeddings ? 0 : 1);
    named_shape *ns = rq_calloc((size_t)n, sizeof *ns, err);
    if (!ns) return RQ_ERR_NOMEM;
    int k = 0;
    const int64_t qd = (int64_t)cfg.n_heads * cfg.head_dim, kvd = (int64_t)cfg.n_kv_heads * cfg.head_dim;
    snprintf(ns[k].name, RQ_TENSOR_NAME_MAX, "model.embed_tokens.weight");
    ns[k].rows = cfg.vocab_size, ns[k++].cols = cfg.dim;
    for (int l = 0; l < cfg.n_layers; l++) {
        struct {
            const char *fmt;
            int64_t r, c;
            bool norm;
        } t[] = {
            {"model.layers.%d.input_layernorm.weight", cfg.dim, 0, true},
            {"model.layers.%d.self_attn.q_proj.weight", qd, cfg.dim, false},
            {"model.layers.%d.self_attn.k_proj.weight", kvd, cfg.dim, false},
            {"model.layers.%d.self_attn.v_proj.weight", kvd, cfg.dim, false},
            {"model.layers.%d.self_attn.o_proj.weight", cfg.dim, qd, false},
            {"model.layers.%d.post_attention_layernorm.weight", cfg.dim, 0, true},
            {"model.layers.%d.mlp.gate_proj.weight", cfg.hidden_dim, cfg.dim, false},
            {"model.layers.%d.mlp.up_proj.weight", cfg.hidden_dim, cfg.dim, false},
            {"model.layers.%d.mlp.down_proj.weight", cfg.dim, cfg.hidden_dim, false},
        };
        for (int j = 0; j < n_per_layer; j++) {
            snprintf(ns[k].name, RQ_TENSOR_NAME_MAX, t[j].fmt, l);
            ns[k].rows = t[j].r;
            ns[k].cols = t[j].c;
            ns[k++].is_norm = t[j].norm;
        }
    }
    snprintf(ns[k].name, RQ_TENSOR_NAME_MAX, "model.norm.weight");
    ns[k].rows = cfg.dim, ns[k++].is_norm = true;
    if (!cfg.tie_embeddings) {
        snprintf(ns[k].name, RQ_TENSOR_NAME_MAX, "lm_head.weight");
        ns[k].rows = cfg.vocab_size, ns[k++].cols = cfg.dim;
    }
    size_t total = 0;
    for (int i = 0; i < n; i++) total += (size_t)ns[i].rows * (ns[i].cols ? ns[i].cols : 1);
    float *buf = rq_calloc(total, sizeof(float), err);
    rq_tensor_table tab = {0};
    rq_status st = buf ? RQ_OK : RQ_ERR_NOMEM;
    rq_rng rng;
    rq_rng_seed(&rng, seed);
    float *p = buf;
    for (int i = 0; i < n && st == RQ_OK; i++) {
        size_t cnt = (size_t)ns[i].rows * (ns[i].cols ? ns[i].cols : 1);
        /* norms near 1; matrices scaled by 1/sqrt(fan-in) so activations stay O(1) */
        float scale = ns[i].cols ? 1.0f / sqrtf((float)ns[i].cols) : 0.1f;
        for (size_t j = 0; j < cnt; j++) p[j] = (ns[i].is_norm ? 1.0f : 0.0f) + scale * rq_rng_normal(&rng);
        rq_tensor_view v = {0};
        snprintf(v.name, sizeof v.name, "%s", ns[i].name);
        v.dtype = RQ_F32;
        v.ndim = ns[i].cols ? 2 : 1;
        v.shape[0] = ns[i].rows;
        v.shape[1] = ns[i].cols;
        v.data = (const uint8_t *)p;
        v.nbytes = cnt * sizeof(float);
        v.file = "random model";
        st = rq_tensor_table_add(&tab, &v, err);
        p += cnt;
    }
    if (st == RQ_OK) st = rq_model_build(&cfg, &tab, out, err);
    if (st == RQ_OK) snprintf((*out)->format, sizeof (*out)->format, "random");
    rq_tensor_table_free(&tab);
    free(buf);
    free(ns);
    return st;
}
