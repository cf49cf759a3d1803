/* The LLaMA forward pass over the backend op table (inference; training adds
 * saved activations and a backward pass on top of the same layer loop). */
#include <math.h>
#include <stdlib.h>

#include "../io/tensors.h"
#include "forward.h"

/* Rows of logits computed at once by rq_forward_nll: bounds the logits
 * buffer to NLL_CHUNK x vocab floats whatever B*T is. */
#define NLL_CHUNK 64

struct rq_forward_state {
    const rq_model *m;
    rq_backend *be;
    rq_forward_opts o;
    /* activations for one call, [B*T][...] each (one allocation) */
    float *act;
    float *x, *xn, *q, *k_new, *v_new, *att_out, *hb, *hb2, *hidden, *logits;
    /* K/V: [n_cache_layers][B][max_seq][kv_dim] (one allocation) */
    float *kv;
    int n_cache_layers;
    /* rope */
    float *inv_freq;      /* host [hd/2] */
    float *rope_host;     /* host cos|sin [max_seq][hd/2] each */
    float *rope_dev;      /* backend copy */
    size_t act_bytes, kv_bytes;
    int last_B, last_T;
    float *logits_host;   /* [NLL_CHUNK][vocab] for the loss on the host */
};

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

rq_status rq_forward_create(const rq_model *m, rq_backend *be, const rq_forward_opts *o, rq_forward_state **out,
                            rq_err *err) {
    *out = NULL;
    const rq_config *c = &m->cfg;
    if (o->max_batch <= 0 || o->max_seq <= 0)
        return RQ_FAIL(err, RQ_ERR_ARG, "forward: batch %d and sequence length %d must be positive", o->max_batch,
                       o->max_seq);
    rq_forward_state *s = rq_calloc(1, sizeof *s, err);
    if (!s) return RQ_ERR_NOMEM;
    s->m = m;
    s->be = be;
    s->o = *o;
    const size_t N = (size_t)o->max_batch * o->max_seq;
    const size_t q_dim = (size_t)c->n_heads * c->head_dim, kv_dim = (size_t)c->n_kv_heads * c->head_dim;
    const size_t half = (size_t)c->head_dim / 2;
    /* the size table: one allocation for all activations */
    struct {
        float **p;
        size_t n;
    } table[] = {
        {&s->x, N * c->dim},           {&s->xn, N * c->dim},      {&s->q, N * q_dim},
        {&s->k_new, N * kv_dim},       {&s->v_new, N * kv_dim},   {&s->att_out, N * q_dim},
        {&s->hb, N * c->hidden_dim},   {&s->hb2, N * c->hidden_dim}, {&s->hidden, N * c->dim},
        {&s->logits, (size_t)NLL_CHUNK * c->vocab_size}, {&s->rope_dev, 2 * (size_t)o->max_seq * half},
    };
    size_t total = 0;
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) total += (table[i].n + 15) & ~(size_t)15;
    s->act_bytes = total * sizeof(float);
    s->act = be->alloc(be, s->act_bytes, err);
    if (!s->act) goto fail;
    float *p = s->act;
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        *table[i].p = p;
        p += (table[i].n + 15) & ~(size_t)15;
    }
    /* without a cache the K/V of the current call still need a home: one layer's worth, reused */
    s->n_cache_layers = o->kv_cache ? c->n_layers : 1;
    s->kv_bytes = 2 * (size_t)s->n_cache_layers * N * kv_dim * sizeof(float);
    s->kv = be->alloc(be, s->kv_bytes, err);
    if (!s->kv) goto fail;
    s->inv_freq = rq_calloc(half, sizeof(float), err);
    s->rope_host = rq_calloc(2 * (size_t)o->max_seq * half, sizeof(float), err);
    s->logits_host = rq_calloc((size_t)NLL_CHUNK * c->vocab_size, sizeof(float), err);
    if (!s->inv_freq || !s->rope_host || !s->logits_host) goto fail;
    rope_inv_freq(c, s->inv_freq);
    *out = s;
    return RQ_OK;
fail:
    rq_forward_free(s);
    return err ? err->code : RQ_ERR_NOMEM;
}

void rq_forward_free(rq_forward_state *s) {
    if (!s) return;
    if (s->act) s->be->free(s->be, s->act);
    if (s->kv) s->be->free(s->be, s->kv);
    free(s->inv_freq);
    free(s->rope_host);
    free(s->logits_host);
    free(s);
}

/* cos/sin of positions pos0 .. pos0+T-1 as HF computes them: angle = pos * inv_freq in fp32. */
static rq_status upload_rope(rq_forward_state *s, int T, int pos0, rq_err *err) {
    const int half = s->m->cfg.head_dim / 2;
    float *cs = s->rope_host, *sn = s->rope_host + (size_t)T * half;
    for (int t = 0; t < T; t++)
        for (int i = 0; i < half; i++) {
            float a = (float)(pos0 + t) * s->inv_freq[i];
            cs[(size_t)t * half + i] = cosf(a);
            sn[(size_t)t * half + i] = sinf(a);
        }
    return s->be->upload(s->be, s->rope_dev, s->rope_host, 2 * (size_t)T * half * sizeof(float), err);
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
    const int hd = c->head_dim, nh = c->n_heads, nkv = c->n_kv_heads;
    const int kv_dim = nkv * hd, Tmax = s->o.max_seq;
    const int half = hd / 2;
    RQ_TRY(upload_rope(s, T, pos0, err));
    const float *cos_t = s->rope_dev, *sin_t = s->rope_dev + (size_t)T * half;

    be->embedding(be, s->x, tokens, m->tok_embed, N, c->dim);
    for (int l = 0; l < c->n_layers; l++) {
        const rq_layer *L = &m->layers[l];
        const size_t layer_kv = (size_t)(s->o.kv_cache ? l : 0) * s->o.max_batch * Tmax * kv_dim;
        float *k_cache = s->kv + layer_kv;
        float *v_cache = s->kv + (size_t)s->n_cache_layers * s->o.max_batch * Tmax * kv_dim + layer_kv;
        /* attention block */
        be->rmsnorm_fwd(be, s->xn, NULL, s->x, L->attn_norm, N, c->dim, c->norm_eps);
        be->linear(be, s->q, s->xn, &L->wq, N, false);
        be->linear(be, s->k_new, s->xn, &L->wk, N, false);
        be->linear(be, s->v_new, s->xn, &L->wv, N, false);
        be->rope_fwd(be, s->q, cos_t, sin_t, B, T, nh, hd);
        be->rope_fwd(be, s->k_new, cos_t, sin_t, B, T, nkv, hd);
        be->cache_store(be, k_cache, s->k_new, B, T, pos0, Tmax, kv_dim);
        be->cache_store(be, v_cache, s->v_new, B, T, pos0, Tmax, kv_dim);
        be->attention_fwd(be, s->att_out, NULL, s->q, k_cache, v_cache, B, T, pos0, Tmax, nh, nkv, hd);
        be->linear(be, s->x, s->att_out, &L->wo, N, true); /* residual: x += o_proj(att) */
        /* MLP block */
        be->rmsnorm_fwd(be, s->xn, NULL, s->x, L->ffn_norm, N, c->dim, c->norm_eps);
        be->linear(be, s->hb, s->xn, &L->w_gate, N, false);
        be->linear(be, s->hb2, s->xn, &L->w_up, N, false);
        be->swiglu_fwd(be, s->hb, s->hb, s->hb2, N, c->hidden_dim);
        be->linear(be, s->x, s->hb, &L->w_down, N, true); /* residual: x += down(...) */
    }
    be->rmsnorm_fwd(be, s->hidden, NULL, s->x, m->final_norm, N, c->dim, c->norm_eps);
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
    for (int r0 = 0; r0 < n; r0 += NLL_CHUNK) {
        int cnt = n - r0 < NLL_CHUNK ? n - r0 : NLL_CHUNK;
        const float *src;
        if (rows) {
            be->gather_rows(be, s->xn, s->hidden, rows + r0, cnt, c->dim);
            src = s->xn;
        } else {
            src = s->hidden + (size_t)r0 * c->dim;
        }
        be->linear(be, s->logits, src, &s->m->lm_head, cnt, false);
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
