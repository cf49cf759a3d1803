/* LoRA and group-pooled QA-LoRA adapters attached to the linear projections.
 *
 * Conventions (the merge tool and every reader of our adapter files rely on
 * them; they are recorded in adapter_config.json under "rilq_adapter"):
 *
 *   LoRA:     y = W x + s * B (A x),          A [r][in], B [out][r]
 *   QA-LoRA:  y = W x + s * B (A pool(x)),    A [r][G],  B [out][r]
 *
 *   s = alpha / r (no rsLoRA), G = ceil(in / gs).
 *   pool(x)_g = MEAN of x over group g = inputs [g*gs, min((g+1)*gs, in)): the
 *   groups are contiguous and the last one may be shorter (in = 172, gs = 64:
 *   64, 64, 44 members); its mean is over its real members (sum / 44), not over
 *   gs. pooling = "mean" (never the sum-pooling variant, never PEFT's
 *   mean * (in / gs) variant).
 *
 *   Merge into a q2 weight (W = s_q * code + m per row o, group g, groups equal
 *   to the quantization groups): the adapter adds, for every input i of group g,
 *     dW[o][i] = s * (B A)[o][g] / len(g),     len(g) = members of group g,
 *   a constant inside the group, so m[o][g] += s * (B A)[o][g] / len(g), exactly.
 *
 * Data: A, B and their gradients live in backend memory; an rq_adapter_set owns
 * one allocation for all parameters and one for all gradients, with the same
 * layout (so the optimizer sees two flat buffers of n_params floats): layers in
 * order, projections in rq_proj_names order, A then B for each targeted one.
 *
 * Forward / backward go through backend ops only (matmul_nt, linear_bwd_input,
 * matmul_tn_acc, group_pool_fwd/bwd, scale, fill_zero), so a device backend
 * reuses this code. */
#ifndef RQ_ADAPTER_H
#define RQ_ADAPTER_H

#include "../backend/backend.h"
#include "../model/model.h"

typedef enum rq_adapter_type {
    RQ_ADAPTER_LORA = 0,  /* A reads the full input */
    RQ_ADAPTER_QALORA = 1 /* A reads the group means of the input */
} rq_adapter_type;

typedef enum rq_adapter_init {
    RQ_INIT_GAUSSIAN = 0,    /* A ~ N(0, (1/r)^2), B = 0: PEFT init_lora_weights="gaussian", the RILQ default */
    RQ_INIT_KAIMING_UNIFORM, /* A ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform a=sqrt(5)), B = 0: PEFT's default */
    RQ_INIT_XAVIER_UNIFORM,  /* A ~ U(-a, a), a = sqrt(6 / (fan_in + r)), B = 0: QA-LoRA's peft_utils */
    RQ_INIT_ZERO             /* A = B = 0: values to be given (rq_adapter_set_assign, load) */
} rq_adapter_init;

const char *rq_adapter_type_name(rq_adapter_type t);   /* "lora", "qalora" */
const char *rq_adapter_init_name(rq_adapter_init i);   /* "gaussian", "kaiming_uniform", "xavier_uniform", "zero" */
rq_status rq_adapter_init_parse(const char *name, rq_adapter_init *out, rq_err *err);

/* One adapter on one linear [out][in]. Pointers are into the set's buffers. */
typedef struct rq_adapter {
    rq_adapter_type type;
    int out, in;
    int r;
    int group_size; /* QA-LoRA pooling group (LoRA: 0) */
    int a_cols;     /* columns of A: in (LoRA) or G = ceil(in / group_size) (QA-LoRA) */
    float scaling;  /* alpha / r */
    float *A, *B;   /* [r][a_cols], [out][r] on the backend */
    float *dA, *dB; /* gradients, same shapes */
    /* trained group scales (a set with train_scales): the scale of every (row, group)
       of the 2-bit weight under the adapter, [out][a_cols] fp32 masters on the backend;
       q2 is that weight (rq_adapter_set_attach_scales), whose fp16 scales follow them */
    float *S, *dS;
    struct rq_q2_tensor *q2;
} rq_adapter;

/* ---- one adapter: forward and backward ---------------------------------------- */

/* The adapter's input x~ [N][a_cols]: x itself for LoRA (pooled unused, may be
 * NULL); for QA-LoRA the group means written into pooled [N][a_cols]. Returns
 * the pointer to use as xt below. Adapters of the same input and group size
 * (q, k, v; gate, up) can share one pooled buffer. */
const float *rq_adapter_input(rq_backend *be, const rq_adapter *a, const float *x, int N, float *pooled);

/* out[N][out] += s * (xt A^T) B^T. u [N][r] receives s * xt A^T (already
 * scaled) and must be kept for backward. */
void rq_adapter_forward(rq_backend *be, const rq_adapter *a, float *out, const float *xt, float *u, int N);

/* Floats of scratch rq_adapter_backward needs for N rows: N*r (+ N*G for QA-LoRA). */
size_t rq_adapter_scratch_floats(const rq_adapter *a, int N);

/* Given dout [N][out], the forward's xt and u:
 *   dB += dout^T u                   (= s * dout^T (xt A^T))
 *   dA += (s * dout B)^T xt
 *   dx [N][in] += s * (dout B) A     (spread back over the groups for QA-LoRA)
 * dx may be NULL (input gradient not wanted). scratch: rq_adapter_scratch_floats. */
void rq_adapter_backward(rq_backend *be, const rq_adapter *a, float *dx, const float *dout, const float *xt,
                         const float *u, int N, float *scratch);

/* ---- a set of adapters for a whole model --------------------------------------- */

typedef struct rq_adapter_config {
    rq_adapter_type type;
    int r;
    float alpha;         /* scaling = alpha / r */
    int group_size;      /* QA-LoRA pooling group (RQ_DEFAULT_GROUP_SIZE when <= 0) */
    unsigned targets;    /* bit (1u << RQ_PROJ_x) for each adapted projection */
    rq_adapter_init init;
    uint64_t seed;
    /* PEQA / EfficientQAT's end-to-end step: the per-(row, group) scales of the 2-bit
       weights train beside the adapters (QA-LoRA whose pooling group is the
       quantization group only; saved with the adapters; folded by the merge) */
    bool train_scales;
} rq_adapter_config;

#define RQ_ADAPTER_ALL_PROJ ((1u << RQ_N_PROJ) - 1u)

typedef struct rq_adapter_set {
    rq_adapter_config cfg;
    rq_config model;    /* the model shape it was built for */
    rq_backend *be;
    rq_adapter *items;  /* [n_layers][RQ_N_PROJ]; an untargeted entry has A == NULL */
    float *params;      /* n_params floats on the backend */
    float *grads;       /* n_params floats on the backend, zeroed at creation */
    size_t n_params;
    /* train_scales: the model whose q2 scales the set's S hold (attach), whether S
       came from a file (else attach takes the model's), a host scratch */
    rq_model *scales_model;
    bool scales_loaded;
    float *scale_scratch;
} rq_adapter_set;

/* "q_proj,k_proj,..." or "all" -> target bits; RQ_ERR_ARG naming the unknown name. */
rq_status rq_adapter_targets_parse(const char *list, unsigned *targets, rq_err *err);

/* Allocate and initialize (cfg->init, seeded with cfg->seed) the adapters of a
 * model of shape mc on be. */
rq_status rq_adapter_set_create(const rq_config *mc, const rq_adapter_config *cfg, rq_backend *be,
                                rq_adapter_set **out, rq_err *err);
void rq_adapter_set_free(rq_adapter_set *s);

/* The shapes (items' out, in, r, a_cols; n_params) of the set cfg would build
 * for a model of shape mc, with nothing allocated on a backend (be, params,
 * grads and every A, B NULL): what memory plans size forward states and
 * optimizer moments with. Free with rq_adapter_set_free; never run it. */
rq_status rq_adapter_set_plan(const rq_config *mc, const rq_adapter_config *cfg, rq_adapter_set **out, rq_err *err);

/* The adapter of (layer, projection), or NULL when that projection has none. */
rq_adapter *rq_adapter_set_get(rq_adapter_set *s, int layer, int proj);

/* Re-initialize every adapter (A drawn per adapter in set order from one
 * rq_rng seeded with seed; B = 0). */
rq_status rq_adapter_set_init(rq_adapter_set *s, rq_adapter_init init, uint64_t seed, rq_err *err);

/* Give one adapter explicit values (host arrays A [r][a_cols], B [out][r]). */
rq_status rq_adapter_set_assign(rq_adapter_set *s, int layer, int proj, const float *A, const float *B, rq_err *err);

/* Number of adapted projections and bytes of params (= bytes of grads). */
int rq_adapter_set_count(const rq_adapter_set *s);
size_t rq_adapter_set_bytes(const rq_adapter_set *s);

/* ---- trained group scales (cfg.train_scales) ---------------------------------------- */

/* Tie the set's scales to model m's 2-bit weights: every adapted projection must
 * be q2 with the adapters' group size. A set whose scales came from a file writes
 * them (rounded to fp16) into m's q2 tensors; a fresh set takes m's. A set without
 * train_scales: nothing to do. */
rq_status rq_adapter_set_attach_scales(rq_adapter_set *s, rq_model *m, rq_err *err);
/* After the scales changed (an optimizer step, a restore): the attached q2
 * tensors' fp16 scales <- fp16(S), and the model rebound to the backend. */
rq_status rq_adapter_set_sync_scales(rq_adapter_set *s, rq_err *err);
/* dS += d/dS of the projection's output given its input x [N][in] and its output's
 * gradient dout [N][out]: dS[o][g] += sum over i in g of (dout^T x)[o][i] cb[code[o][i]]
 * (the codes and offsets fixed). Host memory only (a backend with weights on the host). */
void rq_adapter_scale_backward(rq_backend *be, const rq_adapter_set *s, const rq_adapter *a, const float *x,
                               const float *dout, int N);

/* ---- PEFT files ------------------------------------------------------------------ */

/* Write dir/adapter_config.json and dir/adapter_model.safetensors (fp32, PEFT
 * key names base_model.model.model.layers.N.{self_attn,mlp}.P.lora_{A,B}.weight),
 * each atomically; dir is created if needed. */
rq_status rq_adapter_set_save_peft(const rq_adapter_set *s, const char *dir, rq_err *err);

/* Read dir/adapter_config.json into cfg (type, r, alpha, group size, targets;
 * init = RQ_INIT_ZERO). Unknown peft_type, pooling other than "mean", or an
 * unknown target module are errors. */
rq_status rq_adapter_config_read_peft(const char *dir, rq_adapter_config *cfg, rq_err *err);

/* Load dir's tensors into an existing set: every expected tensor must be
 * present with the expected shape, and no unexpected lora tensor may be there;
 * the error names the file, the tensor, the expected and the found shape. The
 * config in dir must agree with the set's (type, r, alpha, group size, targets). */
rq_status rq_adapter_set_load_peft(rq_adapter_set *s, const char *dir, rq_err *err);

/* rq_adapter_config_read_peft + rq_adapter_set_create + rq_adapter_set_load_peft. */
rq_status rq_adapter_set_open_peft(const char *dir, const rq_config *mc, rq_backend *be, rq_adapter_set **out,
                                   rq_err *err);

/* rq_adapter_set_open_peft for model m, with trained group scales (if the set has
 * them) attached to m's 2-bit weights: what every command that puts adapters on a
 * model calls. */
rq_status rq_adapter_set_open_for(const char *dir, rq_model *m, rq_backend *be, rq_adapter_set **out, rq_err *err);

#endif
