/* The LLaMA forward pass over the backend op table (inference; training adds
 * saved activations and a backward pass on top of the same layer loop). */
#include <math.h>
#include <stdlib.h>

#include "../adapter/adapter.h"
#include "bind.h"
#include "forward.h"

/* Rows of logits computed at once by rq_forward_nll: bounds the logits
 * buffer to NLL_CHUNK x vocab floats whatever B*T is. */
#define NLL_CHUNK 64
/* Rows of logits a training state computes at once (the losses' head GEMMs):
 * each head GEMM repacks the whole [vocab][dim] head, so few large chunks beat
 * many small ones (SmolLM2: 48 MiB of logits instead of 12, against one
 * fourth of the packing); still never [B*T][vocab] for long windows. */
#define TRAIN_HEAD_CHUNK 256

/* Activations of one decoder layer for one call, [N = B*T rows][...]. In
 * inference every layer shares one set (nothing is kept); in training each
 * layer has its own, since the backward pass reads them. */
typedef struct layer_acts {
    float *rstd1, *xn1;   /* attention norm: 1/rms [N], output [N][dim] */
    float *q, *k, *v;     /* projections, q and k after RoPE */
    float *att;           /* softmax probabilities [B][nh][T][T] (training only) */
    float *att_out;       /* [N][q_dim] */
    float *x_mid;         /* residual after attention [N][dim] */
    float *rstd2, *xn2;   /* MLP norm */
    float *gate, *up, *hb;/* [N][hidden]: gate and up pre-activation, silu(gate) * up */
    float *xt[RQ_N_PROJ]; /* QA-LoRA pooled adapter inputs [N][G] (NULL: none / plain LoRA) */
    float *u[RQ_N_PROJ];  /* adapter intermediates [N][r] */
} layer_acts;

struct rq_forward_state {
    const rq_model *m;
    rq_backend *be;
    rq_forward_opts o;
    rq_adapter_set *adapters;
    float *act;           /* the one allocation behind every activation buffer */
    float **res;          /* residual stream: res[l] enters layer l, res[n_layers] the final norm
                             (training: n_layers + 1 buffers; inference: all alias one) */
    layer_acts *la;       /* [n_saved] */
    int n_saved;          /* n_layers in training, else 1 */
    float *rstd_final, *hidden, *logits, *logits2, *rope_dev, *gather, *row_loss;
    /* backward scratch (training only) */
    float *d_x, *d_xn, *d_q, *d_k, *d_v, *d_att, *d_hb, *d_gate, *d_up, *d_adapter, *d_tmp, *y_tmp;
    /* K/V: [n_cache_layers][B][max_seq][kv_dim] (one allocation) */
    float *kv;
    int n_cache_layers;
    float *inv_freq;      /* host [hd/2] */
    float *rope_host;     /* host cos|sin [max_seq][hd/2] each */
    size_t act_bytes, kv_bytes, host_bytes;
    size_t rope_host_floats, logits_host_floats;
    int head_chunk;       /* rows of s->logits (and logits2): NLL_CHUNK (or opts.head_rows), TRAIN_HEAD_CHUNK in
                             training */
    int last_B, last_T;
    float *logits_host;   /* [NLL_CHUNK][vocab] for the loss on the host */
    bool bound;           /* the model's weights are bound to be for the state's lifetime */
    /* packed runs (rq_forward_run_packed) */
    const struct packed_run *packed; /* the run in progress, else NULL */
    int kv_rows_kept;     /* rows of K/V the last packed run with keep_kv left in each layer's cache */
    float *join;          /* backends without attention_packed: one sequence's keys and values joined */
    size_t join_floats;
};

/* A packed run in progress: many sequences of different lengths in one batch of rows. */
typedef struct packed_run {
    const rq_attn_seq *seqs;
    int n_seqs;
    bool keep_kv;
} packed_run;

/* inv_freq as HF computes it (fp32), with linear or llama3 scaling. */
static void rope_inv_freq(const rq_config *c, float *inv_freq) {
    int half = c->head_dim / 2;
    for (int i = 0; i < half; i++) {
        float expo = (float)(2 * i) / (float)c->head_dim;
        float f = 1.0f / powf(c->rope_theta, expo);
        if (c->rope_scaling == RQ_ROPE_SCALING_LINEAR) {
            f = f / c->rope_factor;
        } else if (c->rope_scaling == RQ_ROPE_SCALING_LLAMA3) {
            float lo_wavelen = (float)c->rope_orig_max_pos / c->rope_low_freq_factor;
            float hi_wavelen = (float)c->rope_orig_max_pos / c->rope_high_freq_factor;
            float wavelen = 2.0f * 3.14159265358979323846f / f;
            float scaled = wavelen > lo_wavelen ? f / c->rope_factor : f;
            if (!(wavelen < hi_wavelen) && !(wavelen > lo_wavelen)) {
                float smooth = ((float)c->rope_orig_max_pos / wavelen - c->rope_low_freq_factor) /
                               (c->rope_high_freq_factor - c->rope_low_freq_factor);
                scaled = (1.0f - smooth) * scaled / c->rope_factor + smooth * scaled;
            }
            f = scaled;
        }
        inv_freq[i] = f;
    }
}

size_t rq_forward_bytes(const rq_forward_state *s) { return s->act_bytes + s->kv_bytes; }

/* The size table of one allocation: entries are (pointer to set, floats). */
typedef struct size_entry {
    float **p;
    size_t n;
} size_entry;

typedef struct size_table {
    size_entry *e;
    int n, cap;
    bool failed;
} size_table;

static void table_add(size_table *t, float **p, size_t n) {
    if (t->failed || n == 0) return;
    if (t->n == t->cap) {
        int cap = t->cap ? 2 * t->cap : 64;
        size_entry *ne = realloc(t->e, sizeof *ne * (size_t)cap);
        if (!ne) {
            t->failed = true;
            return;
        }
        t->e = ne;
        t->cap = cap;
    }
    t->e[t->n].p = p;
    t->e[t->n++].n = n;
}

/* Floats an entry takes: rounded up to 16, so every buffer starts 64-byte aligned. */
static size_t table_floats(const size_entry *e) { return (e->n + 15) & ~(size_t)15; }

static size_t adapter_r(const rq_adapter *a) { return a ? (size_t)a->r : 0; }

/* The size table of a state for model shape c: every buffer of the one
 * activation allocation in order, then the K/V and the host arrays. Fills
 * s->n_saved, s->la, s->res (host bookkeeping), the byte counts and t (entries
 * point into s). rq_forward_create allocates exactly this table and
 * rq_forward_size_of reports it without allocating, so the memory plan and the
 * allocation cannot drift apart. */
static rq_status forward_layout(const rq_config *c, const rq_forward_opts *o, rq_adapter_set *attached,
                                rq_forward_state *s, size_table *table, rq_err *err) {
    if (o->max_batch <= 0 || o->max_seq <= 0)
        return RQ_FAIL(err, RQ_ERR_ARG, "forward: batch %d and sequence length %d must be positive", o->max_batch,
                       o->max_seq);
    if (o->train && o->kv_cache)
        return RQ_FAIL(err, RQ_ERR_ARG, "forward: a training state keeps activations, not a KV cache");
    if (attached && (attached->model.dim != c->dim || attached->model.n_layers != c->n_layers ||
                     attached->model.hidden_dim != c->hidden_dim))
        return RQ_FAIL(err, RQ_ERR_ARG, "forward: the adapters were built for another model shape");
    s->o = *o;
    s->adapters = attached;
    s->n_saved = o->train ? c->n_layers : 1;
    s->la = rq_calloc((size_t)s->n_saved, sizeof *s->la, err);
    s->res = rq_calloc((size_t)c->n_layers + 1, sizeof *s->res, err);
    if (!s->la || !s->res) return RQ_ERR_NOMEM;
    size_table t = {0};
    const size_t B = (size_t)o->max_batch, T = (size_t)o->max_seq, N = B * T;
    const size_t q_dim = (size_t)c->n_heads * c->head_dim, kv_dim = (size_t)c->n_kv_heads * c->head_dim;
    const size_t half = (size_t)c->head_dim / 2, H = (size_t)c->hidden_dim;
    for (int r = 0; r < (o->train ? c->n_layers + 1 : 1); r++) table_add(&t, &s->res[r], N * c->dim);
    size_t adapter_scratch = 0;
    for (int l = 0; l < s->n_saved; l++) {
        layer_acts *a = &s->la[l];
        table_add(&t, &a->rstd1, N);
        table_add(&t, &a->xn1, N * c->dim);
        table_add(&t, &a->q, N * q_dim);
        table_add(&t, &a->k, N * kv_dim);
        table_add(&t, &a->v, N * kv_dim);
        if (o->train) table_add(&t, &a->att, B * c->n_heads * T * T);
        table_add(&t, &a->att_out, N * q_dim);
        table_add(&t, &a->x_mid, N * c->dim);
        table_add(&t, &a->rstd2, N);
        table_add(&t, &a->xn2, N * c->dim);
        table_add(&t, &a->gate, N * H);
        table_add(&t, &a->up, N * H);
        table_add(&t, &a->hb, N * H);
        for (int p = 0; p < RQ_N_PROJ && s->adapters; p++) {
            /* inference shares one layer's buffers: size them for the largest adapter of any layer */
            size_t r_max = 0, g_max = 0;
            for (int ll = (o->train ? l : 0); ll < (o->train ? l + 1 : c->n_layers); ll++) {
                const rq_adapter *ad = rq_adapter_set_get(s->adapters, ll, p);
                if (!ad) continue;
                if (adapter_r(ad) > r_max) r_max = adapter_r(ad);
                if (ad->type == RQ_ADAPTER_QALORA && (size_t)ad->a_cols > g_max) g_max = (size_t)ad->a_cols;
                size_t sc = rq_adapter_scratch_floats(ad, (int)N);
                if (sc > adapter_scratch) adapter_scratch = sc;
            }
            table_add(&t, &a->u[p], N * r_max);
            table_add(&t, &a->xt[p], N * g_max);
        }
    }
    table_add(&t, &s->rstd_final, N);
    table_add(&t, &s->hidden, N * c->dim);
    s->head_chunk = o->train ? TRAIN_HEAD_CHUNK : NLL_CHUNK;
    if (!o->train && o->head_rows > NLL_CHUNK)
        s->head_chunk = o->head_rows < TRAIN_HEAD_CHUNK ? o->head_rows : TRAIN_HEAD_CHUNK;
    table_add(&t, &s->logits, (size_t)s->head_chunk * c->vocab_size);
    table_add(&t, &s->gather, (size_t)s->head_chunk * c->dim);
    table_add(&t, &s->row_loss, (size_t)s->head_chunk);
    table_add(&t, &s->rope_dev, 2 * T * half);
    if (o->train) {
        table_add(&t, &s->d_x, N * c->dim);
        table_add(&t, &s->d_xn, N * c->dim);
        table_add(&t, &s->d_q, N * q_dim);
        table_add(&t, &s->d_k, N * kv_dim);
        table_add(&t, &s->d_v, N * kv_dim);
        table_add(&t, &s->d_att, N * q_dim);
        table_add(&t, &s->d_hb, N * H);
        table_add(&t, &s->d_gate, N * H);
        table_add(&t, &s->d_up, N * H);
        table_add(&t, &s->d_adapter, adapter_scratch);
        table_add(&t, &s->d_tmp, N * c->dim);
        table_add(&t, &s->logits2, (size_t)s->head_chunk * c->vocab_size);
        table_add(&t, &s->y_tmp, N * c->dim);
    }
    *table = t; /* the caller frees it, whatever happens */
    if (t.failed) return RQ_FAIL(err, RQ_ERR_NOMEM, "forward: out of memory building the size table");
    size_t total = 0;
    for (int i = 0; i < t.n; i++) total += table_floats(&t.e[i]);
    s->act_bytes = total * sizeof(float);
    /* without a cache the K/V of an inference call still need a home (training reads la[l].k/v) */
    s->n_cache_layers = o->train ? 0 : o->kv_cache ? c->n_layers : 1;
    s->kv_bytes = 2 * (size_t)s->n_cache_layers * N * kv_dim * sizeof(float);
    s->rope_host_floats = 2 * T * half;
    s->logits_host_floats = (size_t)NLL_CHUNK * c->vocab_size;
    s->host_bytes = (half + s->rope_host_floats + s->logits_host_floats) * sizeof(float);
    return RQ_OK;
}

rq_status rq_forward_size_of(const rq_config *c, const rq_forward_opts *o, rq_forward_size *out, rq_err *err) {
    *out = (rq_forward_size){0};
    rq_forward_state s = {0};
    size_table t = {0};
    rq_status st = forward_layout(c, o, o->adapters, &s, &t, err);
    if (st == RQ_OK)
        *out = (rq_forward_size){.act_bytes = s.act_bytes, .kv_bytes = s.kv_bytes, .host_bytes = s.host_bytes};
    free(t.e);
    free(s.la);
    free(s.res);
    return st;
}

rq_status rq_forward_create(const rq_model *m, rq_backend *be, const rq_forward_opts *o, rq_forward_state **out,
                            rq_err *err) {
    *out = NULL;
    const rq_config *c = &m->cfg;
    rq_forward_state *s = rq_calloc(1, sizeof *s, err);
    if (!s) return RQ_ERR_NOMEM;
    s->m = m;
    s->be = be;
    size_table t = {0};
    rq_status st = forward_layout(c, o, o->adapters ? o->adapters : m->adapters, s, &t, err);
    if (st != RQ_OK) {
        free(t.e);
        rq_forward_free(s);
        return st;
    }
    s->act = be->alloc(be, s->act_bytes, err);
    if (!s->act) goto fail;
    float *p = s->act;
    for (int i = 0; i < t.n; i++) {
        *t.e[i].p = p;
        p += table_floats(&t.e[i]);
    }
    if (!o->train)
        for (int r = 1; r <= c->n_layers; r++) s->res[r] = s->res[0];
    if (s->kv_bytes) {
        s->kv = be->alloc(be, s->kv_bytes, err);
        if (!s->kv) goto fail;
    }
    s->inv_freq = rq_calloc((size_t)c->head_dim / 2, sizeof(float), err);
    s->rope_host = rq_calloc(s->rope_host_floats, sizeof(float), err);
    s->logits_host = rq_calloc(s->logits_host_floats, sizeof(float), err);
    if (!s->inv_freq || !s->rope_host || !s->logits_host) goto fail;
    rope_inv_freq(c, s->inv_freq);
    if (rq_model_bind(m, be, err) != RQ_OK) goto fail;
    s->bound = true;
    free(t.e);
    *out = s;
    return RQ_OK;
fail:
    free(t.e);
    rq_forward_free(s);
    return err && err->code ? err->code : RQ_ERR_NOMEM;
}

void rq_forward_free(rq_forward_state *s) {
    if (!s) return;
    if (s->bound) rq_model_unbind(s->m, s->be);
    if (s->act) s->be->free(s->be, s->act);
    if (s->kv) s->be->free(s->be, s->kv);
    free(s->inv_freq);
    free(s->rope_host);
    free(s->logits_host);
    if (s->join) s->be->free(s->be, s->join);
    free(s->la);
    free(s->res);
    free(s);
}

/* cos/sin of T rows as HF computes them: angle = pos * inv_freq in fp32, row t
 * at position pos0 + t, or, with a packed run's sequences, its position in its sequence. */
static rq_status upload_rope(rq_forward_state *s, int T, int pos0, const packed_run *pk, rq_err *err) {
    const int half = s->m->cfg.head_dim / 2;
    float *cs = s->rope_host, *sn = s->rope_host + (size_t)T * half;
    for (int q = 0, t = 0; pk ? q < pk->n_seqs : q < 1; q++) {
        const int n = pk ? pk->seqs[q].n : T, start = pk ? pk->seqs[q].pos0 : pos0;
        for (int j = 0; j < n; j++, t++)
            for (int i = 0; i < half; i++) {
                float a = (float)(start + j) * s->inv_freq[i];
                cs[(size_t)t * half + i] = cosf(a);
                sn[(size_t)t * half + i] = sinf(a);
            }
    }
    return s->be->upload(s->be, s->rope_dev, s->rope_host, 2 * (size_t)T * half * sizeof(float), err);
}

/* out[N][W.out] (+)= in W^T: a decode state's small calls through the backend's matrix-vector op. */
static void linear_fwd(rq_forward_state *s, float *out, const float *in, const rq_linear *W, int N, bool accumulate) {
    if (s->o.decode && N <= RQ_LINEAR_ROWS_MAX && s->be->linear_rows)
        s->be->linear_rows(s->be, out, in, W, N, accumulate);
    else
        s->be->linear(s->be, out, in, W, N, accumulate);
}

/* out[N][W.out] (+)= in W^T, plus the adapter's s * B A x~ when one is attached. */
static void proj_forward(rq_forward_state *s, int l, int p, float *out, const float *in, int N, bool accumulate,
                         layer_acts *a) {
    const rq_layer *L = &s->m->layers[l];
    linear_fwd(s, out, in, rq_layer_proj((rq_layer *)L, p), N, accumulate);
    rq_adapter *ad = s->adapters ? rq_adapter_set_get(s->adapters, l, p) : NULL;
    if (!ad) return;
    const float *xt = rq_adapter_input(s->be, ad, in, N, a->xt[p]);
    rq_adapter_forward(s->be, ad, out, xt, a->u[p], N);
}

/* The attention of a packed run (its rows are B = 1 x T = N): prefixes come from
 * this layer's cache rows, left by an earlier run with keep_kv; with keep_kv the
 * run's own K/V then replace rows [0, N) of the cache (after the attention has
 * read the prefixes: each layer reads only its own cache). */
static void attend_packed(rq_forward_state *s, layer_acts *a, float *k_cache, float *v_cache) {
    const rq_config *c = &s->m->cfg;
    rq_backend *be = s->be;
    const packed_run *pk = s->packed;
    const int hd = c->head_dim, nh = c->n_heads, nkv = c->n_kv_heads;
    const size_t kv_dim = (size_t)nkv * hd, q_dim = (size_t)nh * hd;
    if (be->attention_packed) {
        be->attention_packed(be, a->att_out, a->q, a->k, a->v, k_cache, v_cache, pk->seqs, pk->n_seqs, nh, nkv, hd);
    } else { /* one sequence at a time: prefix and own keys joined (rq_forward_run_packed sized join) */
        for (int i = 0; i < pk->n_seqs; i++) {
            const rq_attn_seq *q = &pk->seqs[i];
            const size_t len = (size_t)(q->pos0 + q->n);
            float *jk = s->join, *jv = s->join + len * kv_dim;
            be->copy(be, jk, k_cache + (size_t)q->pre_row * kv_dim, (size_t)q->pos0 * kv_dim * sizeof(float));
            be->copy(be, jv, v_cache + (size_t)q->pre_row * kv_dim, (size_t)q->pos0 * kv_dim * sizeof(float));
            be->copy(be, jk + (size_t)q->pos0 * kv_dim, a->k + (size_t)q->row * kv_dim, (size_t)q->n * kv_dim * sizeof(float));
            be->copy(be, jv + (size_t)q->pos0 * kv_dim, a->v + (size_t)q->row * kv_dim, (size_t)q->n * kv_dim * sizeof(float));
            be->attention_fwd(be, a->att_out + (size_t)q->row * q_dim, NULL, a->q + (size_t)q->row * q_dim, jk, jv, 1,
                              q->n, q->pos0, (int)len, nh, nkv, hd);
        }
    }
    if (pk->keep_kv) {
        const int N = pk->seqs[pk->n_seqs - 1].row + pk->seqs[pk->n_seqs - 1].n;
        be->copy(be, k_cache, a->k, (size_t)N * kv_dim * sizeof(float));
        be->copy(be, v_cache, a->v, (size_t)N * kv_dim * sizeof(float));
    }
}

/* One decoder layer on the residual stream res[l] -> res[l + 1] (the same buffer in
 * inference). hk (may be NULL) sees the input of q (shared by k and v), o, gate
 * (shared by up) and down. */
static void run_layer(rq_forward_state *s, int l, int B, int T, int pos0, const float *cos_t, const float *sin_t,
                      const rq_forward_hooks *hk) {
    const rq_model *m = s->m;
    const rq_config *c = &m->cfg;
    rq_backend *be = s->be;
    const int N = B * T, hd = c->head_dim, nh = c->n_heads, nkv = c->n_kv_heads;
    const int kv_dim = nkv * hd, Tmax = s->o.max_seq;
    const bool see = hk && hk->proj_in;
    const rq_layer *L = &m->layers[l];
    layer_acts *a = &s->la[s->o.train ? l : 0];
    const float *x_in = s->res[l];
    float *x_out = s->res[l + 1];
    float *k_cache, *v_cache;
    int kv_len = Tmax;
    if (s->o.train) { /* keys and values of the window are the cache, [B][T][kv_dim] */
        kv_len = T;
        k_cache = a->k;
        v_cache = a->v;
    } else {
        const size_t layer_kv = (size_t)(s->o.kv_cache ? l : 0) * s->o.max_batch * Tmax * kv_dim;
        k_cache = s->kv + layer_kv;
        v_cache = s->kv + (size_t)s->n_cache_layers * s->o.max_batch * Tmax * kv_dim + layer_kv;
    }
    /* attention block: x_mid = x_in + o_proj(attention(rope(q), rope(k), v)) */
    be->rmsnorm_fwd(be, a->xn1, a->rstd1, x_in, L->attn_norm, N, c->dim, c->norm_eps);
    if (see) hk->proj_in(hk->user, l, RQ_PROJ_Q, a->xn1, N, c->dim);
    proj_forward(s, l, RQ_PROJ_Q, a->q, a->xn1, N, false, a);
    proj_forward(s, l, RQ_PROJ_K, a->k, a->xn1, N, false, a);
    proj_forward(s, l, RQ_PROJ_V, a->v, a->xn1, N, false, a);
    be->rope_fwd(be, a->q, cos_t, sin_t, B, T, nh, hd);
    be->rope_fwd(be, a->k, cos_t, sin_t, B, T, nkv, hd);
    if (s->packed) {
        attend_packed(s, a, k_cache, v_cache);
    } else {
        if (!s->o.train) {
            be->cache_store(be, k_cache, a->k, B, T, pos0, Tmax, kv_dim);
            be->cache_store(be, v_cache, a->v, B, T, pos0, Tmax, kv_dim);
        }
        be->attention_fwd(be, a->att_out, a->att, a->q, k_cache, v_cache, B, T, pos0, kv_len, nh, nkv, hd);
    }
    if (a->x_mid != x_in) be->copy(be, a->x_mid, x_in, (size_t)N * c->dim * sizeof(float));
    if (see) hk->proj_in(hk->user, l, RQ_PROJ_O, a->att_out, N, nh * hd);
    proj_forward(s, l, RQ_PROJ_O, a->x_mid, a->att_out, N, true, a);
    /* MLP block: x_out = x_mid + down(silu(gate(xn2)) * up(xn2)) */
    be->rmsnorm_fwd(be, a->xn2, a->rstd2, a->x_mid, L->ffn_norm, N, c->dim, c->norm_eps);
    if (see) hk->proj_in(hk->user, l, RQ_PROJ_GATE, a->xn2, N, c->dim);
    proj_forward(s, l, RQ_PROJ_GATE, a->gate, a->xn2, N, false, a);
    proj_forward(s, l, RQ_PROJ_UP, a->up, a->xn2, N, false, a);
    be->swiglu_fwd(be, a->hb, a->gate, a->up, N, c->hidden_dim);
    if (x_out != a->x_mid) be->copy(be, x_out, a->x_mid, (size_t)N * c->dim * sizeof(float));
    if (see) hk->proj_in(hk->user, l, RQ_PROJ_DOWN, a->hb, N, c->hidden_dim);
    proj_forward(s, l, RQ_PROJ_DOWN, x_out, a->hb, N, true, a);
}

rq_status rq_forward_run(rq_forward_state *s, const int *tokens, int B, int T, int pos0, rq_err *err) {
    const rq_model *m = s->m;
    const rq_config *c = &m->cfg;
    rq_backend *be = s->be;
    if (B <= 0 || T <= 0 || B > s->o.max_batch)
        return RQ_FAIL(err, RQ_ERR_ARG, "forward: batch %d x %d tokens does not fit the state (batch <= %d)", B, T,
                       s->o.max_batch);
    if (pos0 < 0 || pos0 + T > s->o.max_seq || (pos0 > 0 && !s->o.kv_cache))
        return RQ_FAIL(err, RQ_ERR_ARG,
                       "forward: positions %d..%d do not fit (max sequence %d%s)", pos0, pos0 + T - 1,
                       s->o.max_seq, s->o.kv_cache ? "" : "; continuing at pos0 > 0 needs a KV cache");
    if (s->o.kv_cache && pos0 > 0 && B != s->last_B)
        return RQ_FAIL(err, RQ_ERR_ARG, "forward: continuing a cache of %d sequences with %d", s->last_B, B);
    const int N = B * T;
    for (int i = 0; i < N; i++)
        if (tokens[i] < 0 || tokens[i] >= c->vocab_size)
            return RQ_FAIL(err, RQ_ERR_ARG, "forward: token id %d at index %d is outside the vocabulary (0..%d)",
                           tokens[i], i, c->vocab_size - 1);
    if (s->o.train && pos0 != 0)
        return RQ_FAIL(err, RQ_ERR_ARG, "forward: a training state runs whole sequences from position 0");
    const int half = c->head_dim / 2;
    RQ_TRY(upload_rope(s, T, pos0, NULL, err));
    s->kv_rows_kept = 0; /* the cache now holds [B][max_seq] sequences, not packed rows */
    const float *cos_t = s->rope_dev, *sin_t = s->rope_dev + (size_t)T * half;

    be->embedding(be, s->res[0], tokens, m->tok_embed, N, c->dim);
    for (int l = 0; l < c->n_layers; l++) run_layer(s, l, B, T, pos0, cos_t, sin_t, NULL);
    be->rmsnorm_fwd(be, s->hidden, s->rstd_final, s->res[c->n_layers], m->final_norm, N, c->dim, c->norm_eps);
    s->last_B = B;
    s->last_T = T;
    return RQ_OK;
}

rq_status rq_forward_run_packed(rq_forward_state *s, const int *tokens, const rq_attn_seq *seqs, int n_seqs,
                                bool keep_kv, rq_err *err) {
    const rq_model *m = s->m;
    const rq_config *c = &m->cfg;
    rq_backend *be = s->be;
    if (!s->o.kv_cache) return RQ_FAIL(err, RQ_ERR_ARG, "forward: a packed run needs a state with a KV cache");
    if (n_seqs <= 0) return RQ_FAIL(err, RQ_ERR_ARG, "forward: a packed run of %d sequences", n_seqs);
    int N = 0, longest = 0;
    for (int i = 0; i < n_seqs; i++) {
        const rq_attn_seq *q = &seqs[i];
        if (q->row != N || q->n <= 0 || q->pos0 < 0 ||
            (q->pos0 > 0 && (q->pre_row < 0 || q->pre_row > s->kv_rows_kept - q->pos0)))
            return RQ_FAIL(err, RQ_ERR_ARG,
                           "forward: packed sequence %d (row %d, %d tokens at position %d, prefix row %d) does not "
                           "follow the previous one or its prefix is not among the %d cached rows",
                           i, q->row, q->n, q->pos0, q->pre_row, s->kv_rows_kept);
        if (q->n > s->o.max_seq - N)
            return RQ_FAIL(err, RQ_ERR_ARG, "forward: packed sequences of more than %d rows do not fit the state",
                           s->o.max_seq);
        N += q->n;
        if (q->pos0 + q->n > longest) longest = q->pos0 + q->n;
    }
    for (int i = 0; i < N; i++)
        if (tokens[i] < 0 || tokens[i] >= c->vocab_size)
            return RQ_FAIL(err, RQ_ERR_ARG, "forward: token id %d at index %d is outside the vocabulary (0..%d)",
                           tokens[i], i, c->vocab_size - 1);
    const size_t kv_dim = (size_t)c->n_kv_heads * c->head_dim;
    if (!be->attention_packed && s->join_floats < 2 * (size_t)longest * kv_dim) {
        if (s->join) be->free(be, s->join);
        s->join_floats = 0;
        s->join = be->alloc(be, 2 * (size_t)longest * kv_dim * sizeof(float), err);
        if (!s->join) return err && err->code ? err->code : RQ_ERR_NOMEM;
        s->join_floats = 2 * (size_t)longest * kv_dim;
    }
    const packed_run pk = {.seqs = seqs, .n_seqs = n_seqs, .keep_kv = keep_kv};
    const int half = c->head_dim / 2;
    RQ_TRY(upload_rope(s, N, 0, &pk, err));
    be->embedding(be, s->res[0], tokens, m->tok_embed, N, c->dim);
    s->packed = &pk;
    for (int l = 0; l < c->n_layers; l++)
        run_layer(s, l, 1, N, 0, s->rope_dev, s->rope_dev + (size_t)N * half, NULL);
    s->packed = NULL;
    be->rmsnorm_fwd(be, s->hidden, s->rstd_final, s->res[c->n_layers], m->final_norm, N, c->dim, c->norm_eps);
    if (keep_kv) s->kv_rows_kept = N;
    s->last_B = 1;
    s->last_T = N;
    return RQ_OK;
}

/* ---- a layer at a time ---- */

static rq_status check_stream(const rq_forward_state *s, int B, int T, rq_err *err) {
    if (s->o.kv_cache)
        return RQ_FAIL(err, RQ_ERR_ARG, "forward: layer-at-a-time runs need a state without a KV cache");
    if (B <= 0 || T <= 0 || B > s->o.max_batch || T > s->o.max_seq)
        return RQ_FAIL(err, RQ_ERR_ARG, "forward: batch %d x %d tokens does not fit the state (%d x %d)", B, T,
                       s->o.max_batch, s->o.max_seq);
    return RQ_OK;
}

float *rq_forward_stream(rq_forward_state *s) { return s->res[0]; }
const float *rq_forward_stream_out(const rq_forward_state *s) { return s->res[s->o.train ? s->m->cfg.n_layers : 0]; }

rq_status rq_forward_embed(rq_forward_state *s, const int *tokens, int B, int T, rq_err *err) {
    RQ_TRY(check_stream(s, B, T, err));
    const rq_config *c = &s->m->cfg;
    for (int i = 0; i < B * T; i++)
        if (tokens[i] < 0 || tokens[i] >= c->vocab_size)
            return RQ_FAIL(err, RQ_ERR_ARG, "forward: token id %d at index %d is outside the vocabulary (0..%d)",
                           tokens[i], i, c->vocab_size - 1);
    s->be->embedding(s->be, s->res[0], tokens, s->m->tok_embed, B * T, c->dim);
    return RQ_OK;
}

rq_status rq_forward_layers(rq_forward_state *s, int l0, int l1, int B, int T, const rq_forward_hooks *hk,
                            rq_err *err) {
    RQ_TRY(check_stream(s, B, T, err));
    if (l0 < 0 || l1 > s->m->cfg.n_layers || l0 > l1)
        return RQ_FAIL(err, RQ_ERR_ARG, "forward: layers %d..%d outside 0..%d", l0, l1, s->m->cfg.n_layers);
    if (s->o.train && (l0 != 0 || l1 != s->m->cfg.n_layers))
        return RQ_FAIL(err, RQ_ERR_ARG, "forward: a training state runs all its layers (0..%d), not %d..%d",
                       s->m->cfg.n_layers, l0, l1);
    const int half = s->m->cfg.head_dim / 2;
    RQ_TRY(upload_rope(s, T, 0, NULL, err));
    for (int l = l0; l < l1; l++) run_layer(s, l, B, T, 0, s->rope_dev, s->rope_dev + (size_t)T * half, hk);
    s->last_B = B;
    s->last_T = T;
    return RQ_OK;
}

rq_status rq_forward_final_norm(rq_forward_state *s, int B, int T, rq_err *err) {
    RQ_TRY(check_stream(s, B, T, err));
    const rq_config *c = &s->m->cfg;
    s->be->rmsnorm_fwd(s->be, s->hidden, s->rstd_final, s->res[0], s->m->final_norm, B * T, c->dim, c->norm_eps);
    s->last_B = B;
    s->last_T = T;
    return RQ_OK;
}

rq_status rq_forward_cache_fork(rq_forward_state *s, int len, int B, rq_err *err) {
    const rq_config *c = &s->m->cfg;
    if (!s->o.kv_cache) return RQ_FAIL(err, RQ_ERR_ARG, "forward: sharing a prefix needs a KV cache");
    if (B < 1 || B > s->o.max_batch || len < 0 || len > s->o.max_seq)
        return RQ_FAIL(err, RQ_ERR_ARG, "forward: cannot fork %d tokens into %d sequences (max %d x %d)", len, B,
                       s->o.max_batch, s->o.max_seq);
    const size_t kv_dim = (size_t)c->n_kv_heads * c->head_dim, Tmax = (size_t)s->o.max_seq;
    const size_t seq_floats = Tmax * kv_dim, layer_floats = (size_t)s->o.max_batch * seq_floats;
    for (int kv = 0; kv < 2; kv++)
        for (int l = 0; l < s->n_cache_layers; l++) {
            float *base = s->kv + ((size_t)kv * s->n_cache_layers + l) * layer_floats;
            for (int b = 1; b < B; b++)
                s->be->copy(s->be, base + b * seq_floats, base, (size_t)len * kv_dim * sizeof(float));
        }
    s->last_B = B;
    s->kv_rows_kept = 0;
    return RQ_OK;
}

const float *rq_forward_hidden(const rq_forward_state *s) { return s->hidden; }

rq_status rq_forward_logits(rq_forward_state *s, const int *rows, int n, float *out, rq_err *err) {
    const rq_config *c = &s->m->cfg;
    rq_backend *be = s->be;
    const int N = s->last_B * s->last_T;
    for (int i = 0; i < n; i++) {
        int r = rows ? rows[i] : i;
        if (r < 0 || r >= N) return RQ_FAIL(err, RQ_ERR_ARG, "logits: row %d outside the last run's %d rows", r, N);
    }
    for (int r0 = 0; r0 < n; r0 += s->head_chunk) {
        int cnt = n - r0 < s->head_chunk ? n - r0 : s->head_chunk;
        const float *src;
        if (rows) {
            be->gather_rows(be, s->gather, s->hidden, rows + r0, cnt, c->dim);
            src = s->gather;
        } else {
            src = s->hidden + (size_t)r0 * c->dim;
        }
        linear_fwd(s, s->logits, src, &s->m->lm_head, cnt, false);
        RQ_TRY(be->download(be, out + (size_t)r0 * c->vocab_size, s->logits,
                            (size_t)cnt * c->vocab_size * sizeof(float), err));
    }
    return RQ_OK;
}

rq_status rq_forward_nll(rq_forward_state *s, const int *targets, int B, int T, double *nll, int64_t *n,
                         rq_err *err) {
    const rq_config *c = &s->m->cfg;
    const int V = c->vocab_size;
    if (B != s->last_B || T != s->last_T)
        return RQ_FAIL(err, RQ_ERR_ARG, "nll: targets are %d x %d but the last run was %d x %d", B, T, s->last_B,
                       s->last_T);
    const int N = B * T;
    for (int i = 0; i < N; i++)
        if (targets[i] >= V)
            return RQ_FAIL(err, RQ_ERR_ARG, "nll: target id %d at index %d is outside the vocabulary (0..%d)",
                           targets[i], i, V - 1);
    for (int b = 0; b < B; b++) {
        nll[b] = 0.0;
        n[b] = 0;
    }
    double row_nll[NLL_CHUNK];
    for (int r0 = 0; r0 < N; r0 += NLL_CHUNK) {
        int cnt = N - r0 < NLL_CHUNK ? N - r0 : NLL_CHUNK;
        bool any = false;
        for (int i = 0; i < cnt; i++) any |= targets[r0 + i] >= 0;
        if (!any) continue;
        s->be->linear(s->be, s->logits, s->hidden + (size_t)r0 * c->dim, &s->m->lm_head, cnt, false);
        RQ_TRY(s->be->download(s->be, s->logits_host, s->logits, (size_t)cnt * V * sizeof(float), err));
#pragma omp parallel for schedule(static)
        for (int i = 0; i < cnt; i++) {
            int tgt = targets[r0 + i];
            row_nll[i] = 0.0;
            if (tgt < 0) continue;
            const float *l = s->logits_host + (size_t)i * V;
            float mx = l[0];
            for (int v = 1; v < V; v++) mx = l[v] > mx ? l[v] : mx;
            float sum = 0.0f;
            for (int v = 0; v < V; v++) sum += expf(l[v] - mx);
            row_nll[i] = (double)(logf(sum) + mx - l[tgt]);
        }
        for (int i = 0; i < cnt; i++) /* in row order, so the fp64 sums do not depend on threads */
            if (targets[r0 + i] >= 0) {
                int b = (r0 + i) / T;
                nll[b] += row_nll[i];
                n[b]++;
            }
    }
    return RQ_OK;
}

/* ---- training: loss gradients at the top and the backward pass ---------------- */

float *rq_forward_hidden_mut(rq_forward_state *s) { return s->hidden; }

rq_status rq_forward_ce_grad(rq_forward_state *s, const int *targets, float grad_scale, float *d_hidden,
                             double *loss_sum, int64_t *count, rq_err *err) {
    const rq_config *c = &s->m->cfg;
    rq_backend *be = s->be;
    const int V = c->vocab_size, N = s->last_B * s->last_T;
    if (!be->cross_entropy) return RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "backend %s has no cross_entropy op", be->name);
    for (int i = 0; i < N; i++)
        if (targets[i] >= V)
            return RQ_FAIL(err, RQ_ERR_ARG, "loss: target id %d at index %d is outside the vocabulary (0..%d)",
                           targets[i], i, V - 1);
    double total = 0.0;
    int64_t n = 0;
    float row_loss[TRAIN_HEAD_CHUNK > NLL_CHUNK ? TRAIN_HEAD_CHUNK : NLL_CHUNK];
    /* runs of consecutive counted rows, at most head_chunk at a time: masked rows
       (a finetune source, padding) never go through the head */
    for (int r0 = 0; r0 < N;) {
        if (targets[r0] < 0) {
            r0++;
            continue;
        }
        int cnt = 1;
        while (cnt < s->head_chunk && r0 + cnt < N && targets[r0 + cnt] >= 0) cnt++;
        const float *h = s->hidden + (size_t)r0 * c->dim;
        be->linear(be, s->logits, h, &s->m->lm_head, cnt, false);
        /* dlogits overwrite the logits chunk in place, then flow back through the frozen head */
        be->cross_entropy(be, s->row_loss, d_hidden ? s->logits : NULL, s->logits, targets + r0, cnt, V, grad_scale);
        if (d_hidden) be->linear_bwd_input(be, d_hidden + (size_t)r0 * c->dim, s->logits, &s->m->lm_head, cnt);
        RQ_TRY(be->download(be, row_loss, s->row_loss, sizeof(float) * (size_t)cnt, err));
        for (int i = 0; i < cnt; i++) total += row_loss[i];
        n += cnt;
        r0 += cnt;
    }
    if (loss_sum) *loss_sum = total;
    if (count) *count = n;
    return RQ_OK;
}

rq_status rq_forward_logit_mse_grad(rq_forward_state *s, const float *teacher_hidden, int r0, int rows,
                                    float grad_scale, float *d_hidden, double *sq_sum, rq_err *err) {
    const rq_config *c = &s->m->cfg;
    rq_backend *be = s->be;
    const int V = c->vocab_size, N = s->last_B * s->last_T;
    if (!s->o.train) return RQ_FAIL(err, RQ_ERR_ARG, "logit MSE: the forward state was not created for training");
    if (r0 < 0 || rows < 0 || r0 + rows > N)
        return RQ_FAIL(err, RQ_ERR_ARG, "logit MSE: rows %d..%d outside the last run's %d", r0, r0 + rows, N);
    double total = 0.0;
    for (int c0 = r0; c0 < r0 + rows; c0 += s->head_chunk) {
        int cnt = r0 + rows - c0 < s->head_chunk ? r0 + rows - c0 : s->head_chunk;
        const size_t n = (size_t)cnt * V;
        /* teacher logits from the teacher's final hidden states: the head is not quantized, so it is the
           teacher's own head and the full [T][vocab] teacher logits never need storing */
        be->linear(be, s->logits, s->hidden + (size_t)c0 * c->dim, &s->m->lm_head, cnt, false);
        be->linear(be, s->logits2, teacher_hidden + (size_t)(c0 - r0) * c->dim, &s->m->lm_head, cnt, false);
        total += be->mse(be, NULL, s->logits, s->logits2, n, 0.0f);
        if (d_hidden) { /* logits2 <- 2 * grad_scale * (student - teacher), then back through the head */
            be->scale(be, s->logits2, -1.0f, n);
            be->add_inplace(be, s->logits2, s->logits, n);
            be->scale(be, s->logits2, 2.0f * grad_scale, n);
            be->linear_bwd_input(be, d_hidden + (size_t)c0 * c->dim, s->logits2, &s->m->lm_head, cnt);
        }
    }
    *sq_sum = total;
    return RQ_OK;
}

/* din (+)= dout W for a projection, plus the adapter's gradients when one is attached. */
static void proj_backward(rq_forward_state *s, int l, int p, float *din, const float *dout, const float *in, int N,
                          layer_acts *a, const rq_backward_hooks *hk) {
    const rq_layer *L = &s->m->layers[l];
    if (hk && hk->proj_grad) hk->proj_grad(hk->user, l, p, in, dout, N);
    s->be->linear_bwd_input(s->be, din, dout, rq_layer_proj((rq_layer *)L, p), N);
    rq_adapter *ad = s->adapters ? rq_adapter_set_get(s->adapters, l, p) : NULL;
    if (!ad) return;
    const float *xt = ad->type == RQ_ADAPTER_QALORA ? a->xt[p] : in;
    rq_adapter_backward(s->be, ad, din, dout, xt, a->u[p], N, s->d_adapter);
    if (ad->S) rq_adapter_scale_backward(s->be, s->adapters, ad, in, dout, N); /* trained group scales */
}

/* y = a - b over n floats (the output of o_proj / down_proj, recovered from the
 * residual stream they were added into). */
static void sub_into(rq_backend *be, float *y, const float *a, const float *b, size_t n) {
    be->copy(be, y, a, n * sizeof(float));
    be->scale(be, y, -1.0f, n);
    be->add_inplace(be, y, b, n);
    be->scale(be, y, -1.0f, n);
}

rq_status rq_forward_backward(rq_forward_state *s, const float *d_hidden, rq_err *err) {
    return rq_forward_backward_hooked(s, d_hidden, NULL, err);
}

rq_status rq_forward_backward_hooked(rq_forward_state *s, const float *d_hidden, const rq_backward_hooks *hk,
                                     rq_err *err) {
    const rq_model *m = s->m;
    const rq_config *c = &m->cfg;
    rq_backend *be = s->be;
    if (!s->o.train) return RQ_FAIL(err, RQ_ERR_ARG, "backward: the forward state was not created for training");
    if (s->last_B <= 0) return RQ_FAIL(err, RQ_ERR_ARG, "backward: no forward run to differentiate");
    if (!be->linear_bwd_input || !be->rmsnorm_bwd || !be->attention_bwd)
        return RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "backend %s has no backward ops", be->name);
    const int B = s->last_B, T = s->last_T, N = B * T;
    const int hd = c->head_dim, nh = c->n_heads, nkv = c->n_kv_heads, H = c->hidden_dim;
    const size_t q_dim = (size_t)nh * hd, kv_dim = (size_t)nkv * hd, D = (size_t)N * c->dim;
    const float *cos_t = s->rope_dev, *sin_t = s->rope_dev + (size_t)T * (hd / 2);
    const bool proj_hooks = hk && hk->proj_out;
    /* d_x holds the gradient of the residual stream, walking down from the final norm */
    be->fill_zero(be, s->d_x, D);
    if (d_hidden) be->rmsnorm_bwd(be, s->d_x, d_hidden, s->res[c->n_layers], m->final_norm, s->rstd_final, N, c->dim);
    for (int l = c->n_layers - 1; l >= 0; l--) {
        const rq_layer *L = &m->layers[l];
        layer_acts *a = &s->la[l];
        if (hk && hk->layer_out) hk->layer_out(hk->user, l, s->res[l + 1], s->d_x, N);
        /* MLP block: down_proj's output gradient is the residual's, plus any loss on it */
        const float *d_down = s->d_x;
        if (proj_hooks) {
            be->copy(be, s->d_tmp, s->d_x, D * sizeof(float));
            sub_into(be, s->y_tmp, s->res[l + 1], a->x_mid, D);
            hk->proj_out(hk->user, l, RQ_PROJ_DOWN, s->y_tmp, s->d_tmp, N);
            d_down = s->d_tmp;
        }
        be->fill_zero(be, s->d_hb, (size_t)N * H);
        proj_backward(s, l, RQ_PROJ_DOWN, s->d_hb, d_down, a->hb, N, a, hk);
        be->fill_zero(be, s->d_gate, (size_t)N * H);
        be->fill_zero(be, s->d_up, (size_t)N * H);
        be->swiglu_bwd(be, s->d_gate, s->d_up, s->d_hb, a->gate, a->up, N, H);
        if (proj_hooks) {
            hk->proj_out(hk->user, l, RQ_PROJ_GATE, a->gate, s->d_gate, N);
            hk->proj_out(hk->user, l, RQ_PROJ_UP, a->up, s->d_up, N);
        }
        be->fill_zero(be, s->d_xn, D);
        proj_backward(s, l, RQ_PROJ_GATE, s->d_xn, s->d_gate, a->xn2, N, a, hk);
        proj_backward(s, l, RQ_PROJ_UP, s->d_xn, s->d_up, a->xn2, N, a, hk);
        be->rmsnorm_bwd(be, s->d_x, s->d_xn, a->x_mid, L->ffn_norm, a->rstd2, N, c->dim); /* + residual path */
        /* attention block */
        const float *d_o = s->d_x;
        if (proj_hooks) {
            be->copy(be, s->d_tmp, s->d_x, D * sizeof(float));
            sub_into(be, s->y_tmp, a->x_mid, s->res[l], D);
            hk->proj_out(hk->user, l, RQ_PROJ_O, s->y_tmp, s->d_tmp, N);
            d_o = s->d_tmp;
        }
        be->fill_zero(be, s->d_att, (size_t)N * q_dim);
        proj_backward(s, l, RQ_PROJ_O, s->d_att, d_o, a->att_out, N, a, hk);
        be->fill_zero(be, s->d_q, (size_t)N * q_dim);
        be->fill_zero(be, s->d_k, (size_t)N * kv_dim);
        be->fill_zero(be, s->d_v, (size_t)N * kv_dim);
        be->attention_bwd(be, s->d_q, s->d_k, s->d_v, s->d_att, a->att, a->q, a->k, a->v, B, T, nh, nkv, hd);
        if (proj_hooks) { /* q and k are seen after RoPE: a rotation, so MSE-type losses are unchanged */
            hk->proj_out(hk->user, l, RQ_PROJ_Q, a->q, s->d_q, N);
            hk->proj_out(hk->user, l, RQ_PROJ_K, a->k, s->d_k, N);
            hk->proj_out(hk->user, l, RQ_PROJ_V, a->v, s->d_v, N);
        }
        be->rope_bwd(be, s->d_q, cos_t, sin_t, B, T, nh, hd);
        be->rope_bwd(be, s->d_k, cos_t, sin_t, B, T, nkv, hd);
        be->fill_zero(be, s->d_xn, D);
        proj_backward(s, l, RQ_PROJ_Q, s->d_xn, s->d_q, a->xn1, N, a, hk);
        proj_backward(s, l, RQ_PROJ_K, s->d_xn, s->d_k, a->xn1, N, a, hk);
        proj_backward(s, l, RQ_PROJ_V, s->d_xn, s->d_v, a->xn1, N, a, hk);
        if (l > 0) /* the embedding is frozen: layer 0's input gradient is not needed */
            be->rmsnorm_bwd(be, s->d_x, s->d_xn, s->res[l], L->attn_norm, a->rstd1, N, c->dim);
    }
    return RQ_OK;
}

const float *rq_forward_proj_output(const rq_forward_state *s, int layer, int proj, float *tmp) {
    if (!s->o.train || layer < 0 || layer >= s->m->cfg.n_layers || s->last_B <= 0) return NULL;
    const layer_acts *a = &s->la[layer];
    const size_t D = (size_t)s->last_B * s->last_T * s->m->cfg.dim;
    switch (proj) {
    case RQ_PROJ_Q: return a->q;
    case RQ_PROJ_K: return a->k;
    case RQ_PROJ_V: return a->v;
    case RQ_PROJ_GATE: return a->gate;
    case RQ_PROJ_UP: return a->up;
    case RQ_PROJ_O: sub_into(s->be, tmp, a->x_mid, s->res[layer], D); return tmp;
    case RQ_PROJ_DOWN: sub_into(s->be, tmp, s->res[layer + 1], a->x_mid, D); return tmp;
    }
    return NULL;
}

const float *rq_forward_layer_output(const rq_forward_state *s, int layer) {
    return s->o.train && layer >= 0 && layer < s->m->cfg.n_layers ? s->res[layer + 1] : NULL;
}
