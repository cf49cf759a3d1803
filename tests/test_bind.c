/* The weight-binding contract (src/backend/backend.h: bind_weights), checked
 * on the CPU with a recording backend: the CPU ops behind wrappers that fail
 * the test whenever an op reads a model weight that no open binding covers,
 * and bind / unbind / rebind that keep the books a device backend keeps.
 * The CUDA backend relies on exactly this: a weight outside every binding is
 * uploaded per call (slow), a bound one rewritten without a rebind is stale. */
#include "adapter/adapter.h"
#include "adapter/merge.h"
#include "model/bind.h"
#include "model/forward.h"
#include "quant/q2.h"
#include "quant/quantize_model.h"
#include "test.h"

#define MAX_MODELS 4
#define MAX_ALLOCS 64

typedef struct rec_model {
    const struct rq_model *m;
    int count;
    rq_weight_span *spans;
    size_t n;
    unsigned char **copy; /* [n]: the bytes as bound, what a device would hold */
} rec_model;

static rq_backend cpu_ops; /* the CPU backend's own table */
static rec_model rec[MAX_MODELS];
static int n_rec;
static int first_binds, rebinds, misses, stale, stray_unbinds;
static struct {
    const char *p;
    size_t bytes;
} allocs[MAX_ALLOCS];
static int n_allocs;

static rec_model *rec_find(const struct rq_model *m) {
    for (int i = 0; i < n_rec; i++)
        if (rec[i].m == m) return &rec[i];
    return NULL;
}

static void set_spans(rec_model *r, const rq_weight_span *spans, size_t n) {
    r->spans = malloc(sizeof *r->spans * (n ? n : 1));
    r->copy = malloc(sizeof *r->copy * (n ? n : 1));
    r->n = n;
    for (size_t k = 0; k < n; k++) {
        r->spans[k] = spans[k];
        r->copy[k] = malloc(spans[k].bytes);
        memcpy(r->copy[k], spans[k].host, spans[k].bytes);
    }
}

static void drop_spans(rec_model *r) {
    for (size_t k = 0; k < r->n; k++) free(r->copy[k]);
    free(r->copy);
    free(r->spans);
}

static rq_status rec_bind(rq_backend *be, const struct rq_model *m, const rq_weight_span *spans, size_t n, rq_err *err) {
    rec_model *r = rec_find(m);
    if (r) {
        r->count++;
        return RQ_OK;
    }
    if (n_rec == MAX_MODELS) return RQ_FAIL(err, RQ_ERR_INTERNAL, "test: too many bound models");
    rec[n_rec] = (rec_model){.m = m, .count = 1};
    set_spans(&rec[n_rec++], spans, n);
    first_binds++;
    return RQ_OK;
}

static void rec_unbind(rq_backend *be, const struct rq_model *m) {
    rec_model *r = rec_find(m);
    if (!r) {
        stray_unbinds++;
        return;
    }
    if (--r->count > 0) return;
    drop_spans(r);
    *r = rec[--n_rec];
}

static rq_status rec_rebind(rq_backend *be, const struct rq_model *m, const rq_weight_span *spans, size_t n,
                            rq_err *err) {
    rec_model *r = rec_find(m);
    if (!r) return RQ_OK;
    drop_spans(r);
    set_spans(r, spans, n);
    rebinds++;
    return RQ_OK;
}

static void *rec_alloc(rq_backend *be, size_t bytes, rq_err *err) {
    void *p = cpu_ops.alloc(be, bytes, err);
    if (p && n_allocs < MAX_ALLOCS) allocs[n_allocs].p = p, allocs[n_allocs++].bytes = bytes;
    return p;
}

static void rec_free(rq_backend *be, void *p) {
    for (int i = 0; i < n_allocs; i++)
        if (allocs[i].p == p) allocs[i] = allocs[--n_allocs];
    cpu_ops.free(be, p);
}

static bool inside(const char *p, size_t bytes, const char *base, size_t n) {
    return p >= base && (size_t)(p - base) < n && bytes <= n - (size_t)(p - base);
}

/* A weight read by an op: backend memory (adapters), or inside an open
 * binding and unchanged since it was bound (else a device copy is stale). */
static void check_weight(const char *op, const void *w, size_t bytes) {
    const char *p = w;
    for (int i = 0; i < n_allocs; i++)
        if (inside(p, bytes, allocs[i].p, allocs[i].bytes)) return;
    for (int i = 0; i < n_rec; i++)
        for (size_t k = 0; k < rec[i].n; k++) {
            const char *base = rec[i].spans[k].host;
            if (!inside(p, bytes, base, rec[i].spans[k].bytes)) continue;
            if (memcmp(p, rec[i].copy[k] + (p - base), bytes) != 0 && stale++ < 5)
                fprintf(stderr, "%s read %zu bytes at %p that changed since they were bound\n", op, bytes, w);
            return;
        }
    if (misses++ < 5) fprintf(stderr, "%s read %zu bytes at %p that no binding covers\n", op, bytes, w);
}

static void check_linear(const char *op, const rq_linear *W) {
    if (W->w) {
        check_weight(op, W->w, sizeof(float) * (size_t)W->out * W->in);
        return;
    }
    const rq_q2_tensor *q = W->q2;
    const size_t gb = (size_t)q->out * q->n_groups * sizeof(uint16_t);
    check_weight(op, q->codes, (size_t)q->out * q->row_bytes);
    check_weight(op, q->scales, gb);
    check_weight(op, q->offsets, gb);
}

static void rec_linear(rq_backend *be, float *out, const float *in, const rq_linear *W, int N, bool accumulate) {
    check_linear("linear", W);
    cpu_ops.linear(be, out, in, W, N, accumulate);
}

static void rec_linear_bwd_input(rq_backend *be, float *din, const float *dout, const rq_linear *W, int N) {
    check_linear("linear_bwd_input", W);
    cpu_ops.linear_bwd_input(be, din, dout, W, N);
}

static void rec_rmsnorm_fwd(rq_backend *be, float *out, float *rstd, const float *x, const float *w, int N, int C,
                            float eps) {
    check_weight("rmsnorm_fwd", w, sizeof(float) * (size_t)C);
    cpu_ops.rmsnorm_fwd(be, out, rstd, x, w, N, C, eps);
}

static void rec_rmsnorm_bwd(rq_backend *be, float *dx, const float *dout, const float *x, const float *w,
                            const float *rstd, int N, int C) {
    check_weight("rmsnorm_bwd", w, sizeof(float) * (size_t)C);
    cpu_ops.rmsnorm_bwd(be, dx, dout, x, w, rstd, N, C);
}

static rq_backend *recording_backend(void) {
    rq_err err = {0};
    rq_backend *be = NULL;
    CHECK_OK(rq_backend_cpu_create(1, &be, &err), &err);
    if (!be) return NULL;
    cpu_ops = *be;
    be->bind_weights = rec_bind;
    be->unbind_weights = rec_unbind;
    be->rebind_weights = rec_rebind;
    be->alloc = rec_alloc;
    be->free = rec_free;
    be->linear = rec_linear;
    be->linear_bwd_input = rec_linear_bwd_input;
    be->rmsnorm_fwd = rec_rmsnorm_fwd;
    be->rmsnorm_bwd = rec_rmsnorm_bwd;
    return be;
}

/* A small model with q2 and fp32 projections side by side. */
static rq_model *small_model(bool tie, unsigned quantized) {
    rq_config cfg = {.dim = 64, .hidden_dim = 96, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2, .head_dim = 16,
                     .vocab_size = 61, .max_seq_len = 64, .norm_eps = 1e-5f, .rope_theta = 10000.0f,
                     .tie_embeddings = tie, .bos_id = 1};
    rq_err err = {0};
    rq_model *m = NULL;
    CHECK_OK(rq_model_random(&cfg, 3, &m, &err), &err);
    if (!m) return NULL;
    rq_model_quant_opts qo;
    rq_model_quant_opts_default(&qo);
    qo.quant.n_threads = 1;
    qo.proj_mask = quantized;
    CHECK_OK(rq_model_quantize(m, &qo, NULL, &err), &err);
    return m;
}

static int bound_count(const rq_model *m) {
    rec_model *r = rec_find(m);
    return r ? r->count : 0;
}

/* Inference and training states bind for their lifetime; binds nest. */
static void test_forward_states(rq_backend *be, bool tie) {
    rq_err err = {0};
    rq_model *m = small_model(tie, (1u << RQ_PROJ_Q) | (1u << RQ_PROJ_K) | (1u << RQ_PROJ_GATE) | (1u << RQ_PROJ_DOWN));
    if (!m) return;
    const int B = 2, T = 8, V = m->cfg.vocab_size;
    int tok[16], tgt[16];
    for (int i = 0; i < B * T; i++) tok[i] = (i * 7 + 3) % V, tgt[i] = (i * 5 + 1) % V;
    const int first0 = first_binds, miss0 = misses;

    rq_forward_state *a = NULL, *b = NULL;
    rq_forward_opts fo = {.max_batch = B, .max_seq = T};
    CHECK_OK(rq_forward_create(m, be, &fo, &a, &err), &err);
    CHECK(bound_count(m) == 1);
    CHECK_OK(rq_forward_create(m, be, &fo, &b, &err), &err);
    CHECK(bound_count(m) == 2 && first_binds == first0 + 1); /* nested: the weights are listed once */
    CHECK_OK(rq_forward_run(a, tok, B, T, 0, &err), &err);
    double nll[2];
    int64_t cnt[2];
    CHECK_OK(rq_forward_nll(a, tgt, B, T, nll, cnt, &err), &err);
    rq_forward_free(a);
    CHECK(bound_count(m) == 1);
    rq_forward_free(b);
    CHECK(bound_count(m) == 0);

    /* training: the backward pass reads the frozen weights too (linear_bwd_input, rmsnorm_bwd) */
    rq_adapter_config ac = {.type = RQ_ADAPTER_QALORA, .r = 2, .alpha = 4.0f, .group_size = 16,
                            .targets = RQ_ADAPTER_ALL_PROJ, .init = RQ_INIT_GAUSSIAN, .seed = 9};
    rq_adapter_set *ad = NULL;
    CHECK_OK(rq_adapter_set_create(&m->cfg, &ac, be, &ad, &err), &err);
    rq_forward_opts to = {.max_batch = B, .max_seq = T, .train = true, .adapters = ad};
    rq_forward_state *t = NULL;
    CHECK_OK(rq_forward_create(m, be, &to, &t, &err), &err);
    float *d_hidden = calloc((size_t)B * T * m->cfg.dim, sizeof(float));
    double loss = 0;
    int64_t counted = 0;
    CHECK_OK(rq_forward_run(t, tok, B, T, 0, &err), &err);
    CHECK_OK(rq_forward_ce_grad(t, tgt, 1.0f / (B * T), d_hidden, &loss, &counted, &err), &err);
    CHECK_OK(rq_forward_backward(t, d_hidden, &err), &err);
    rq_forward_free(t);
    free(d_hidden);
    rq_adapter_set_free(ad);
    CHECK(bound_count(m) == 0);
    CHECKF(misses == miss0, "tie=%d: %d weight reads outside every binding", tie, misses - miss0);
    rq_model_free(m);
}

/* A merge rewrites the q2 tensors: a state that holds the model bound across
 * it reads the new arrays (rebind), not the freed ones. */
static void test_merge_rebinds(rq_backend *be) {
    rq_err err = {0};
    rq_model *m = small_model(false, 0);
    if (!m) return;
    rq_adapter_config ac = {.type = RQ_ADAPTER_QALORA, .r = 2, .alpha = 4.0f, .group_size = 64,
                            .targets = RQ_ADAPTER_ALL_PROJ, .init = RQ_INIT_GAUSSIAN, .seed = 4};
    rq_adapter_set *ad = NULL;
    CHECK_OK(rq_adapter_set_create(&m->cfg, &ac, be, &ad, &err), &err);
    if (!ad) return;
    for (size_t i = 0; i < ad->n_params; i++) ad->params[i] = 0.01f * (float)((int)(i % 7) - 3);
    const int T = 8;
    int tok[8];
    for (int i = 0; i < T; i++) tok[i] = (i * 11 + 2) % m->cfg.vocab_size;
    rq_forward_opts fo = {.max_batch = 1, .max_seq = T};
    rq_forward_state *held = NULL;
    CHECK_OK(rq_forward_create(m, be, &fo, &held, &err), &err);
    const int rebinds0 = rebinds, miss0 = misses, stale0 = stale;
    rq_merge_opts o;
    rq_merge_opts_default(&o);
    o.n_threads = 1;
    rq_merge_report rep;
    CHECK_OK(rq_merge_model(m, ad, be, &o, &rep, &err), &err);
    CHECK(rebinds == rebinds0 + 1 && bound_count(m) == 1);
    CHECK_OK(rq_forward_run(held, tok, 1, T, 0, &err), &err);
    CHECKF(misses == miss0, "after the merge: %d weight reads outside every binding", misses - miss0);
    CHECKF(stale == stale0, "after the merge: %d weight reads of arrays rewritten since they were bound", stale - stale0);
    rq_forward_free(held);
    CHECK(bound_count(m) == 0);
    /* not bound: the rebind has nothing to do */
    CHECK_OK(rq_model_rebind(m, be, &err), &err);
    CHECK(rebinds == rebinds0 + 1);
    rq_adapter_set_free(ad);
    rq_model_free(m);
}

int main(void) {
    rq_backend *be = recording_backend();
    if (!be) return rq_test_finish();
    test_forward_states(be, false);
    test_forward_states(be, true);
    test_merge_rebinds(be);
    CHECK(n_rec == 0 && stray_unbinds == 0 && stale == 0);
    rq_backend_destroy(be);
    return rq_test_finish();
}
