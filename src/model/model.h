/* The in-memory LLaMA model: one representation whatever the source format. */
#ifndef RQ_MODEL_H
#define RQ_MODEL_H

#include "../core/config.h"
#include "../core/core.h"
#include "../quant/linear.h"
#include "../tokenizer/tokenizer.h"

/* Fill defaults that HF assumes when a key is absent, then check that the
 * numbers are consistent. what names the source for messages. */
rq_status rq_config_validate(rq_config *c, const char *what, rq_err *err);

typedef struct rq_layer {
    float *attn_norm; /* [dim] */
    rq_linear wq, wk, wv, wo;
    float *ffn_norm;  /* [dim] */
    rq_linear w_gate, w_up, w_down;
} rq_layer;

/* The seven projections of a layer in a fixed order (PEFT names). */
extern const char *const rq_proj_names[RQ_N_PROJ]; /* "q_proj", ..., "down_proj" */
rq_linear *rq_layer_proj(rq_layer *l, int which);

/* How a model's q2 linears were produced (method "" when it has none). */
typedef struct rq_quant_info {
    char method[16];  /* "rtn", "nf2", "fake-quant" */
    bool clip_search;
    char source_dtypes[128]; /* the dtypes of the checkpoint that was quantized */
    /* Adapters folded into the weights (src/adapter/merge.c), "; "-separated,
     * "" when none: quantization_config.merged_adapters of an artifact. */
    char merged_adapters[1024];
} rq_quant_info;

struct rq_model {
    rq_config cfg;
    float *tok_embed;  /* [vocab][dim] */
    rq_layer *layers;  /* [n_layers] */
    float *final_norm; /* [dim] */
    rq_linear lm_head; /* w == tok_embed when tied */
    float *weights;    /* the one fp32 allocation the pointers above point into */
    size_t weights_bytes;
    rq_tokenizer *tok; /* may be NULL when the source has no tokenizer */
    char format[16];   /* "hf", "gguf", "llama2c" */
    char path[1024];
    char dtypes[128];  /* the source dtypes, e.g. "Q4_1 x210, F32 x61, Q8_0 x1" */
    int64_t n_params;  /* learned parameters (tied head counted once) */
    int source_float_dtype; /* the rq_dtype (F32, F16 or BF16) every fp32 weight was converted
                               from, when they all share one; -1 otherwise */
    rq_quant_info quant;
    /* The file m->tok was read from ("" when none): a quantized artifact
     * carries the tokenizer over from it (src/io/artifact.c). */
    char tokenizer_path[1024];
    /* Adapters attached to the model (not owned): every forward state made for
     * the model applies them unless its options name others. */
    struct rq_adapter_set *adapters;
};

/* Build a model from a config and an HF-named tensor table: checks every
 * expected tensor is present with the expected shape, converts to fp32. */
struct rq_tensor_table;
rq_status rq_model_build(const rq_config *cfg, const struct rq_tensor_table *tab, rq_model **out, rq_err *err);

/* The same, with some projections given as q2 tensors: q2 holds
 * n_layers * RQ_N_PROJ entries (index layer * RQ_N_PROJ + RQ_PROJ_*), NULL
 * for projections read from the table as fp32. A given projection needs no
 * tensor in the table and gets no fp32 storage; its q2 shape must match the
 * config. On success the model owns the given tensors and their entries are
 * set to NULL; on failure the caller still owns them. q2 may be NULL. */
struct rq_q2_tensor;
rq_status rq_model_build_q2(const rq_config *cfg, const struct rq_tensor_table *tab, struct rq_q2_tensor **q2,
                            rq_model **out, rq_err *err);

/* ---- a part at a time: a layer-streamed pass (the teacher of src/train/calib.c) holds one
 * decoder layer's fp32 weights instead of the model's. The same name and shape checks and
 * the same conversion (rq_tensor_to_f32) as rq_model_build: one path reads every tensor. */

/* cfg as rq_model_build would use it with tab: validated, tie_embeddings as the tensors say. */
rq_status rq_model_table_config(const rq_config *cfg, const struct rq_tensor_table *tab, rq_config *out, rq_err *err);
/* The source dtypes of every tensor rq_model_build would read from tab, as m->dtypes
 * describes them ("BF16 x272"), into buf (size cap). */
rq_status rq_model_table_dtypes(const rq_config *cfg, const struct rq_tensor_table *tab, char *buf, size_t cap,
                                rq_err *err);
/* Floats of one decoder layer's norms and projections (fp32). */
size_t rq_layer_floats(const rq_config *c);
/* Layer l of the checkpoint tab into storage (rq_layer_floats(cfg) floats); out's arrays point
 * into it. Every tensor of the layer is checked before any is converted. */
rq_status rq_model_build_layer(const rq_config *cfg, const struct rq_tensor_table *tab, int l, float *storage,
                               rq_layer *out, rq_err *err);
/* One named tensor, checked to have shape [rows, cols] ([rows] when cols is 0), into out. */
rq_status rq_model_build_tensor(const struct rq_tensor_table *tab, const char *name, int64_t rows, int64_t cols,
                                float *out, rq_err *err);

/* Bytes of weights the model holds: the fp32 allocation plus every q2 tensor. */
size_t rq_model_weight_bytes(const rq_model *m);

/* A model with random weights (N(0, 1/fan_in) matrices, norms near 1) and no
 * tokenizer, built through rq_model_build: for benchmarks and tests. */
rq_status rq_model_random(const rq_config *cfg, uint64_t seed, rq_model **out, rq_err *err);

/* Parameter count and the bytes of fp32 weights a config implies. */
int64_t rq_config_n_params(const rq_config *c);

#endif
