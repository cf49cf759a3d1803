/* Model building: config checks, and the one fp32 weight allocation filled
 * from an HF-named tensor table. The format readers (src/io) call it; the
 * format dispatch is src/load/load.c. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "../core/tensors.h"
#include "../quant/q2.h"
#include "model.h"

const char *const rq_proj_names[RQ_N_PROJ] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};

rq_linear *rq_layer_proj(rq_layer *l, int which) {
    switch (which) {
    case RQ_PROJ_Q: return &l->wq;
    case RQ_PROJ_K: return &l->wk;
    case RQ_PROJ_V: return &l->wv;
    case RQ_PROJ_O: return &l->wo;
    case RQ_PROJ_GATE: return &l->w_gate;
    case RQ_PROJ_UP: return &l->w_up;
    case RQ_PROJ_DOWN: return &l->w_down;
    default: return NULL;
    }
}

/* ---- config ----------------------------------------------------------------------- */

/* Upper bounds far above any LLaMA-family model; they keep every product of
 * sizes inside int64 and reject garbage headers early. */
#define MAX_DIM (1 << 16)
#define MAX_HIDDEN (1 << 20)
#define MAX_LAYERS 1024
#define MAX_HEADS 1024
#define MAX_VOCAB (1 << 23)

static rq_status check_range(const char *what, const char *name, int v, int lo, int hi, rq_err *err) {
    if (v < lo || v > hi) return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: %s = %d is out of range [%d, %d]", what, name, v, lo, hi);
    return RQ_OK;
}

rq_status rq_config_validate(rq_config *c, const char *what, rq_err *err) {
    if (!what) what = "config";
    RQ_TRY(check_range(what, "dim (hidden_size)", c->dim, 1, MAX_DIM, err));
    RQ_TRY(check_range(what, "hidden_dim (intermediate_size)", c->hidden_dim, 1, MAX_HIDDEN, err));
    RQ_TRY(check_range(what, "n_layers", c->n_layers, 1, MAX_LAYERS, err));
    RQ_TRY(check_range(what, "n_heads", c->n_heads, 1, MAX_HEADS, err));
    if (c->n_kv_heads == 0) c->n_kv_heads = c->n_heads;
    RQ_TRY(check_range(what, "n_kv_heads", c->n_kv_heads, 1, c->n_heads, err));
    if (c->n_heads % c->n_kv_heads != 0)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: n_heads %d is not a multiple of n_kv_heads %d", what, c->n_heads, c->n_kv_heads);
    if (c->head_dim == 0) {
        if (c->dim % c->n_heads != 0)
            return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: dim %d is not divisible by n_heads %d and head_dim is not given", what,
                           c->dim, c->n_heads);
        c->head_dim = c->dim / c->n_heads;
    }
    RQ_TRY(check_range(what, "head_dim", c->head_dim, 2, 4096, err));
    if (c->head_dim % 2 != 0) return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: head_dim %d must be even for RoPE", what, c->head_dim);
    if ((int64_t)c->n_heads * c->head_dim > MAX_DIM * 4)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: n_heads * head_dim = %lld is too large", what,
                       (long long)c->n_heads * c->head_dim);
    RQ_TRY(check_range(what, "vocab_size", c->vocab_size, 1, MAX_VOCAB, err));
    if (c->max_seq_len == 0) c->max_seq_len = 2048; /* LLaMA's original context when a source does not say */
    RQ_TRY(check_range(what, "max_seq_len", c->max_seq_len, 1, 1 << 24, err));
    if (c->norm_eps == 0) c->norm_eps = 1e-5f;
    if (!(c->norm_eps > 0 && c->norm_eps < 1))
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: norm_eps %g must be in (0, 1)", what, (double)c->norm_eps);
    if (c->rope_theta == 0) c->rope_theta = 10000.0f;
    if (!(c->rope_theta > 1 && isfinite(c->rope_theta)))
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: rope_theta %g must be a finite number > 1", what, (double)c->rope_theta);
    if (c->rope_scaling != RQ_ROPE_SCALING_NONE) {
        if (!(c->rope_factor > 0 && isfinite(c->rope_factor)))
            return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: rope scaling factor %g must be positive", what, (double)c->rope_factor);
    }
    if (c->rope_scaling == RQ_ROPE_SCALING_LLAMA3) {
        if (c->rope_low_freq_factor == 0) c->rope_low_freq_factor = 1.0f;  /* Llama-3.1's values */
        if (c->rope_high_freq_factor == 0) c->rope_high_freq_factor = 4.0f;
        if (!(c->rope_low_freq_factor > 0 && c->rope_high_freq_factor > c->rope_low_freq_factor))
            return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: llama3 rope scaling needs 0 < low_freq_factor (%g) < high_freq_factor (%g)",
                           what, (double)c->rope_low_freq_factor, (double)c->rope_high_freq_factor);
        if (c->rope_orig_max_pos <= 0)
            return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: llama3 rope scaling needs original_max_position_embeddings > 0", what);
    }
    if (c->bos_id < -1 || c->bos_id >= c->vocab_size)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: bos_token_id %d is outside the vocabulary of %d", what, c->bos_id, c->vocab_size);
    if (c->n_eos < 0 || c->n_eos > (int)(sizeof c->eos_ids / sizeof c->eos_ids[0]))
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: %d eos ids", what, c->n_eos);
    for (int i = 0; i < c->n_eos; i++)
        if (c->eos_ids[i] < 0 || c->eos_ids[i] >= c->vocab_size)
            return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: eos_token_id %d is outside the vocabulary of %d", what, c->eos_ids[i],
                           c->vocab_size);
    return RQ_OK;
}

int64_t rq_config_n_params(const rq_config *c) {
    int64_t per_layer = (int64_t)rq_layer_floats(c);
    int64_t embed = (int64_t)c->vocab_size * c->dim;
    return embed + (int64_t)c->n_layers * per_layer + c->dim + (c->tie_embeddings ? 0 : embed);
}

/* ---- building ---------------------------------------------------------------------- */

/* The builder walks the expected tensors twice: a checking pass (every tensor
 * present with its shape, nothing allocated, so a mismatched checkpoint fails
 * before gigabytes are allocated) and a converting pass into the allocation. */
typedef struct builder {
    const rq_tensor_table *tab;
    rq_q2_tensor **q2; /* [n_layers * RQ_N_PROJ] projections given as q2, or NULL */
    bool check_only;
    float *next; /* the next free float of the weight allocation */
    float *end;
    int dtype_count[RQ_DTYPE_COUNT];
    rq_err *err;
} builder;

static void shape_str(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t n = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && n < cap; i++) n += (size_t)snprintf(buf + n, cap - n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (n < cap) snprintf(buf + n, cap - n, "]");
}

/* Take the next rows*cols floats of the allocation and fill them from the
 * tensor called name, which must have shape [rows, cols] ([rows] when cols is 0). */
static rq_status load_weight(builder *b, const char *name, int64_t rows, int64_t cols, float **dest) {
    int64_t expect[2] = {rows, cols};
    int ndim = cols ? 2 : 1;
    char want[64], got[96];
    shape_str(want, sizeof want, ndim, expect);
    const rq_tensor_view *v = rq_tensor_table_find(b->tab, name);
    if (!v) {
        const char *file = b->tab->count > 0 && b->tab->items[0].file ? b->tab->items[0].file : "checkpoint";
        return RQ_FAIL(b->err, RQ_ERR_FORMAT, "%s: tensor '%s' is missing (expected shape %s)", file, name, want);
    }
    bool same = v->ndim == ndim && v->shape[0] == rows && (ndim == 1 || v->shape[1] == cols);
    if (!same) {
        shape_str(got, sizeof got, v->ndim, v->shape);
        return RQ_FAIL(b->err, RQ_ERR_FORMAT, "%s: tensor '%s': expected shape %s, found %s", v->file ? v->file : "?", name,
                       want, got);
    }
    int64_t n = rows * (cols ? cols : 1);
    if ((int)v->dtype >= 0 && v->dtype < RQ_DTYPE_COUNT) b->dtype_count[v->dtype]++;
    if (b->check_only) return RQ_OK;
    if (n > b->end - b->next) return RQ_FAIL(b->err, RQ_ERR_INTERNAL, "weight allocation too small at tensor '%s'", name);
    *dest = b->next;
    b->next += n;
    return rq_tensor_to_f32(v, *dest, b->err);
}

static void describe_dtypes(const int *count, char *buf, size_t cap) {
    int done[RQ_DTYPE_COUNT] = {0};
    size_t n = 0;
    buf[0] = 0;
    for (;;) {
        int best = -1;
        for (int t = 0; t < RQ_DTYPE_COUNT; t++)
            if (!done[t] && count[t] > 0 && (best < 0 || count[t] > count[best])) best = t;
        if (best < 0 || n >= cap) break;
        done[best] = 1;
        n += (size_t)snprintf(buf + n, cap - n, "%s%s x%d", n ? ", " : "", rq_dtype_name((rq_dtype)best), count[best]);
    }
}

/* A projection given as a q2 tensor: check its shape against the config; it
 * takes no fp32 storage. */
static rq_status check_q2_weight(builder *b, const char *name, const rq_q2_tensor *t, int64_t rows, int64_t cols) {
    if (t->out != rows || t->in != cols)
        return RQ_FAIL(b->err, RQ_ERR_FORMAT, "q2 tensor '%s': expected shape [%lld, %lld], found [%d, %d]", name,
                       (long long)rows, (long long)cols, t->out, t->in);
    return RQ_OK;
}

/* Layer l's norms and projections in allocation order, into L. */
static rq_status walk_layer(builder *b, const rq_config *cp, int l, rq_layer *L) {
    const rq_config c = *cp;
    int64_t d = c.dim, q = (int64_t)c.n_heads * c.head_dim, kv = (int64_t)c.n_kv_heads * c.head_dim, ff = c.hidden_dim;
    struct {
        const char *suffix;
        int64_t rows, cols;
        float **dest;
        rq_linear *lin;
        int proj; /* RQ_PROJ_*, or -1 for a norm */
    } parts[] = {
        {"input_layernorm.weight", d, 0, &L->attn_norm, NULL, -1},
        {"self_attn.q_proj.weight", q, d, &L->wq.w, &L->wq, RQ_PROJ_Q},
        {"self_attn.k_proj.weight", kv, d, &L->wk.w, &L->wk, RQ_PROJ_K},
        {"self_attn.v_proj.weight", kv, d, &L->wv.w, &L->wv, RQ_PROJ_V},
        {"self_attn.o_proj.weight", d, q, &L->wo.w, &L->wo, RQ_PROJ_O},
        {"post_attention_layernorm.weight", d, 0, &L->ffn_norm, NULL, -1},
        {"mlp.gate_proj.weight", ff, d, &L->w_gate.w, &L->w_gate, RQ_PROJ_GATE},
        {"mlp.up_proj.weight", ff, d, &L->w_up.w, &L->w_up, RQ_PROJ_UP},
        {"mlp.down_proj.weight", d, ff, &L->w_down.w, &L->w_down, RQ_PROJ_DOWN},
    };
    rq_status s = RQ_OK;
    for (size_t k = 0; k < sizeof parts / sizeof parts[0] && s == RQ_OK; k++) {
        char name[RQ_TENSOR_NAME_MAX];
        snprintf(name, sizeof name, "model.layers.%d.%s", l, parts[k].suffix);
        const rq_q2_tensor *given = b->q2 && parts[k].proj >= 0 ? b->q2[(size_t)l * RQ_N_PROJ + parts[k].proj] : NULL;
        if (given) s = check_q2_weight(b, name, given, parts[k].rows, parts[k].cols);
        else s = load_weight(b, name, parts[k].rows, parts[k].cols, parts[k].dest);
        if (parts[k].lin) {
            parts[k].lin->out = (int)parts[k].rows;
            parts[k].lin->in = (int)parts[k].cols;
        }
    }
    return s;
}

/* Every weight of the model in allocation order. */
static rq_status walk_weights(builder *b, rq_model *m) {
    const rq_config c = m->cfg;
    rq_status s = load_weight(b, "model.embed_tokens.weight", c.vocab_size, c.dim, &m->tok_embed);
    for (int l = 0; l < c.n_layers && s == RQ_OK; l++) s = walk_layer(b, &m->cfg, l, &m->layers[l]);
    if (s == RQ_OK) s = load_weight(b, "model.norm.weight", c.dim, 0, &m->final_norm);
    m->lm_head.out = c.vocab_size;
    m->lm_head.in = c.dim;
    if (s == RQ_OK) {
        if (c.tie_embeddings) m->lm_head.w = m->tok_embed;
        else s = load_weight(b, "lm_head.weight", c.vocab_size, c.dim, &m->lm_head.w);
    }
    return s;
}

/* ---- a part at a time (a layer-streamed pass) ---------------------------------------- */

static const char *table_what(const rq_tensor_table *tab) {
    return tab->count > 0 && tab->items[0].file ? tab->items[0].file : "config";
}

rq_status rq_model_table_config(const rq_config *cfg, const rq_tensor_table *tab, rq_config *out, rq_err *err) {
    *out = *cfg;
    RQ_TRY(rq_config_validate(out, table_what(tab), err));
    /* A checkpoint that carries lm_head.weight is untied whatever the config
     * says (some tied exports still store it); one without it reuses the embedding. */
    out->tie_embeddings = rq_tensor_table_find(tab, "lm_head.weight") == NULL;
    return RQ_OK;
}

rq_status rq_model_table_dtypes(const rq_config *cfg, const rq_tensor_table *tab, char *buf, size_t cap, rq_err *err) {
    buf[0] = 0;
    rq_model m;
    memset(&m, 0, sizeof m);
    RQ_TRY(rq_model_table_config(cfg, tab, &m.cfg, err));
    m.layers = rq_calloc((size_t)m.cfg.n_layers, sizeof *m.layers, err);
    if (!m.layers) return RQ_ERR_NOMEM;
    builder check = {.tab = tab, .check_only = true, .err = err};
    rq_status s = walk_weights(&check, &m);
    if (s == RQ_OK) describe_dtypes(check.dtype_count, buf, cap);
    free(m.layers);
    return s;
}

size_t rq_layer_floats(const rq_config *c) {
    const size_t d = (size_t)c->dim, q = (size_t)c->n_heads * c->head_dim, kv = (size_t)c->n_kv_heads * c->head_dim;
    return 2 * d + q * d + 2 * kv * d + d * q + 3 * d * (size_t)c->hidden_dim;
}

rq_status rq_model_build_layer(const rq_config *cfg, const rq_tensor_table *tab, int l, float *storage, rq_layer *out,
                               rq_err *err) {
    if (l < 0 || l >= cfg->n_layers)
        return RQ_FAIL(err, RQ_ERR_ARG, "%s: layer %d outside 0..%d", table_what(tab), l, cfg->n_layers - 1);
    memset(out, 0, sizeof *out);
    builder check = {.tab = tab, .check_only = true, .err = err};
    RQ_TRY(walk_layer(&check, cfg, l, out)); /* every tensor present with its shape before any conversion */
    builder b = {.tab = tab, .next = storage, .end = storage + rq_layer_floats(cfg), .err = err};
    return walk_layer(&b, cfg, l, out);
}

rq_status rq_model_build_tensor(const rq_tensor_table *tab, const char *name, int64_t rows, int64_t cols, float *out,
                                rq_err *err) {
    builder b = {.tab = tab, .next = out, .end = out + rows * (cols ? cols : 1), .err = err};
    float *dest = NULL;
    return load_weight(&b, name, rows, cols, &dest);
}

rq_status rq_model_build(const rq_config *cfg, const struct rq_tensor_table *tab, rq_model **out, rq_err *err) {
    return rq_model_build_q2(cfg, tab, NULL, out, err);
}

rq_status rq_model_build_q2(const rq_config *cfg, const struct rq_tensor_table *tab, rq_q2_tensor **q2, rq_model **out,
                            rq_err *err) {
    *out = NULL;
    rq_config c;
    const char *what = table_what(tab);
    RQ_TRY(rq_model_table_config(cfg, tab, &c, err));
    int64_t n_params = rq_config_n_params(&c);
    /* Projections given as q2 take no room in the fp32 allocation. */
    int64_t n_fp32 = n_params;
    int n_q2 = 0;
    for (int64_t k = 0; q2 && k < (int64_t)c.n_layers * RQ_N_PROJ; k++)
        if (q2[k]) {
            n_fp32 -= (int64_t)q2[k]->out * q2[k]->in;
            n_q2++;
        }
    size_t bytes;
    if (n_params <= 0 || n_fp32 <= 0 || !rq_mul_ok((size_t)n_fp32, sizeof(float), &bytes))
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: model size overflows", what);

    rq_model *m = rq_calloc(1, sizeof *m, err);
    if (!m) return RQ_ERR_NOMEM;
    m->cfg = c;
    m->layers = rq_calloc((size_t)c.n_layers, sizeof *m->layers, err);
    if (!m->layers) {
        rq_model_free(m);
        return RQ_ERR_NOMEM;
    }
    m->n_params = n_params;

    builder check = {.tab = tab, .q2 = q2, .check_only = true, .err = err};
    rq_status s = walk_weights(&check, m);
    builder b = {.tab = tab, .q2 = q2, .next = NULL, .err = err};
    if (s == RQ_OK) {
        m->weights = rq_alloc_aligned(bytes, err);
        if (!m->weights) s = err ? err->code : RQ_ERR_NOMEM;
    }
    if (s == RQ_OK) {
        m->weights_bytes = bytes;
        b.next = m->weights;
        b.end = m->weights + n_fp32;
        s = walk_weights(&b, m);
    }
    if (s == RQ_OK && b.next != b.end) s = RQ_FAIL(err, RQ_ERR_INTERNAL, "weight allocation size mismatch");
    if (s != RQ_OK) {
        rq_model_free(m);
        return s;
    }
    describe_dtypes(b.dtype_count, m->dtypes, sizeof m->dtypes);
    /* the one float dtype every fp32 weight came from, if there is one (artifacts store their
       unquantized tensors in it: exact, since the values came from it) */
    m->source_float_dtype = -1;
    for (int t = 0; t < RQ_DTYPE_COUNT; t++)
        if (b.dtype_count[t] > 0) {
            bool plain = t == RQ_F32 || t == RQ_F16 || t == RQ_BF16;
            m->source_float_dtype = (m->source_float_dtype == -1 && plain) ? t : -2;
        }
    if (m->source_float_dtype < 0) m->source_float_dtype = -1;
    if (n_q2 > 0) {
        size_t n = strlen(m->dtypes);
        snprintf(m->dtypes + n, sizeof m->dtypes - n, "%sq2 x%d", n ? ", " : "", n_q2);
        for (int l = 0; l < c.n_layers; l++)
            for (int p = 0; p < RQ_N_PROJ; p++) {
                rq_q2_tensor **slot = &q2[(size_t)l * RQ_N_PROJ + p];
                if (!*slot) continue;
                rq_linear *lin = rq_layer_proj(&m->layers[l], p);
                lin->q2 = *slot;
                lin->w = NULL;
                *slot = NULL;
            }
    }
    *out = m;
    return RQ_OK;
}

size_t rq_model_weight_bytes(const rq_model *m) {
    size_t total = m->weights_bytes;
    for (int l = 0; m->layers && l < m->cfg.n_layers; l++)
        for (int p = 0; p < RQ_N_PROJ; p++) {
            const rq_linear *lin = rq_layer_proj(&m->layers[l], p);
            if (lin->q2) total += rq_q2_nbytes(lin->q2);
        }
    return total;
}

void rq_model_free(rq_model *m) {
    if (!m) return;
    if (m->tok) rq_tokenizer_free(m->tok);
    for (int l = 0; m->layers && l < m->cfg.n_layers; l++)
        for (int p = 0; p < RQ_N_PROJ; p++) rq_q2_free(rq_layer_proj(&m->layers[l], p)->q2);
    free(m->weights);
    free(m->layers);
    free(m);
}
