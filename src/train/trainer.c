/* The training loop (see trainer.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "trainer.h"

#define CKPT_MAGIC "RQCKPT01"
#define CKPT_VERSION 2u /* 2: content_hash */

void rq_train_default_opts(rq_train_opts *o) {
    memset(o, 0, sizeof *o);
    o->seq_len = 512;
    o->micro_batch = 1;
    o->accum = 8;
    o->max_steps = 100;
    o->shuffle = true;
    o->seed = 42;
    o->ce_weight = 1.0;
    o->optim = rq_optim_defaults(RQ_OPTIM_ADAM);
    o->schedule = (rq_schedule){.kind = RQ_SCHED_CONSTANT, .lr = 1e-4};
}

/* ---- data order ---------------------------------------------------------------- */

typedef struct data_order {
    int64_t n;
    bool shuffle;
    uint64_t seed;
    int64_t epoch; /* epoch whose permutation is in perm (-1: none) */
    int64_t *perm;
} data_order;

/* Example at position `e` of the endless order: epoch e / n, a Fisher-Yates
 * permutation seeded by (seed, epoch), so any position is reproducible from
 * the counter alone. */
static int64_t order_example(data_order *d, int64_t e) {
    int64_t epoch = e / d->n, pos = e % d->n;
    if (!d->shuffle) return pos;
    if (epoch != d->epoch) {
        rq_rng rng;
        rq_rng_seed(&rng, d->seed ^ (0x9e3779b97f4a7c15ull * (uint64_t)(epoch + 1)));
        for (int64_t i = 0; i < d->n; i++) d->perm[i] = i;
        for (int64_t i = d->n - 1; i > 0; i--) {
            int64_t j = (int64_t)(rq_rng_u64(&rng) % (uint64_t)(i + 1));
            int64_t t = d->perm[i];
            d->perm[i] = d->perm[j];
            d->perm[j] = t;
        }
        d->epoch = epoch;
    }
    return d->perm[pos];
}

/* ---- loss of one micro-batch ------------------------------------------------------ */

typedef struct batch_bufs {
    rq_backend *be;
    int *tokens, *targets;
    float *teacher;     /* host [B][T][dim] or NULL: the data source fills it */
    float *teacher_dev; /* its copy on the backend, uploaded by load_batch */
    float *d_hidden;    /* backend [B][T][dim] */
    int *one_target; /* [B][T] scratch: one example's targets, others masked */
    int *lens;       /* [B] real positions of each row */
} batch_bufs;

/* Load B examples and pack them at the stride of the longest one (T_batch);
 * shorter rows are padded with token 0 and masked targets (the padding sits
 * after the real tokens, so causal attention keeps it out of their results). */
static rq_status load_batch(const rq_train_data *data, data_order *order, int64_t first, int B, int T, int dim,
                            batch_bufs *bb, bool want_teacher, bool ordered, int *T_batch, rq_err *err) {
    int *lens = bb->lens;
    int T_max = 1;
    for (int b = 0; b < B; b++) {
        int64_t ex = ordered ? order_example(order, first + b) : first + b;
        lens[b] = T;
        RQ_TRY(data->get(data->user, ex, bb->tokens + (size_t)b * T, bb->targets + (size_t)b * T,
                         want_teacher ? bb->teacher + (size_t)b * T * dim : NULL, &lens[b], err));
        if (lens[b] < 1 || lens[b] > T)
            return RQ_FAIL(err, RQ_ERR_INTERNAL, "train: example %lld has length %d (expected 1..%d)", (long long)ex,
                           lens[b], T);
        if (lens[b] > T_max) T_max = lens[b];
    }
    /* repack row b from stride T to stride T_max (rows only move toward the front) */
    for (int b = 0; b < B; b++) {
        memmove(bb->tokens + (size_t)b * T_max, bb->tokens + (size_t)b * T, sizeof(int) * (size_t)lens[b]);
        memmove(bb->targets + (size_t)b * T_max, bb->targets + (size_t)b * T, sizeof(int) * (size_t)lens[b]);
        for (int t = lens[b]; t < T_max; t++) {
            bb->tokens[(size_t)b * T_max + t] = 0;
            bb->targets[(size_t)b * T_max + t] = -1;
        }
        if (want_teacher) {
            memmove(bb->teacher + (size_t)b * T_max * dim, bb->teacher + (size_t)b * T * dim,
                    sizeof(float) * (size_t)lens[b] * dim);
            memset(bb->teacher + ((size_t)b * T_max + lens[b]) * dim, 0, sizeof(float) * (size_t)(T_max - lens[b]) * dim);
        }
    }
    *T_batch = T_max;
    /* asynchronous on a device backend: the copy overlaps the host work that follows */
    if (want_teacher)
        RQ_TRY(bb->be->upload(bb->be, bb->teacher_dev, bb->teacher, sizeof(float) * (size_t)B * T_max * dim, err));
    return RQ_OK;
}

/* ---- layer / linear scope: Model-Loss terms inside the network ---------------------- */

typedef struct scope_ctx {
    rq_backend *be;
    rq_forward_state *teacher;
    rq_loss_scope scope;
    int n_terms;       /* layers, or layers x 7 projections */
    double weight;     /* Model-Loss weight / grad_div (0: value only) */
    double value;      /* mean over terms of each term's MSE */
    float *tmp;        /* [N][dim] for the teacher's o / down outputs */
    int dim, n_heads, n_kv_heads, head_dim, hidden;
} scope_ctx;

static int proj_width(const scope_ctx *c, int p) {
    switch (p) {
    case RQ_PROJ_Q: return c->n_heads * c->head_dim;
    case RQ_PROJ_K:
    case RQ_PROJ_V: return c->n_kv_heads * c->head_dim;
    case RQ_PROJ_GATE:
    case RQ_PROJ_UP: return c->hidden;
    default: return c->dim;
    }
}

static void scope_term(scope_ctx *c, const float *y, float *dy, const float *t, size_t n) {
    float scale = dy ? (float)(c->weight / ((double)n * c->n_terms)) : 0.0f;
    c->value += c->be->mse(c->be, dy, y, t, n, scale) / (double)n / c->n_terms;
}

static void scope_layer_hook(void *user, int layer, const float *res, float *d_res, int N) {
    scope_ctx *c = user;
    scope_term(c, res, d_res, rq_forward_layer_output(c->teacher, layer), (size_t)N * c->dim);
}

static void scope_proj_hook(void *user, int layer, int proj, const float *y, float *dy, int N) {
    scope_ctx *c = user;
    scope_term(c, y, dy, rq_forward_proj_output(c->teacher, layer, proj, c->tmp), (size_t)N * proj_width(c, proj));
}

/* Value only (validation): the same terms from the two forward states. */
static void scope_value(scope_ctx *c, rq_forward_state *student, float *tmp_student, int n_layers, int N) {
    for (int l = 0; l < n_layers; l++) {
        if (c->scope == RQ_SCOPE_LAYER) {
            scope_term(c, rq_forward_layer_output(student, l), NULL, rq_forward_layer_output(c->teacher, l),
                       (size_t)N * c->dim);
            continue;
        }
        for (int p = 0; p < RQ_N_PROJ; p++)
            scope_term(c, rq_forward_proj_output(student, l, p, tmp_student), NULL,
                       rq_forward_proj_output(c->teacher, l, p, c->tmp), (size_t)N * proj_width(c, p));
    }
}

/* Forward the micro-batch, compute the loss parts per example (mean CE over
 * each example's counted targets, MSE over its elements) and, when grad_div >
 * 0, d_hidden of (weighted loss mean over examples) / grad_div followed by the
 * backward pass. ce_mean / mse_mean: means over the B examples. */
static rq_status micro_step(rq_forward_state *fs, rq_backend *be, const rq_model *m, const rq_train_opts *o,
                            batch_bufs *bb, int B, int T, double grad_div, scope_ctx *sc, double *ce_mean,
                            double *mse_mean, rq_err *err) {
    const int dim = m->cfg.dim;
    const bool backward = grad_div > 0;
    const bool in_network = o->scope != RQ_SCOPE_MODEL && o->mse_weight > 0;
    if (in_network) {
        for (int b = 0; b < B; b++)
            if (bb->lens[b] != T)
                return RQ_FAIL(err, RQ_ERR_ARG, "train: layer / linear scope needs examples of equal length (%d and %d)",
                               bb->lens[b], T);
        RQ_TRY(rq_forward_run(sc->teacher, bb->tokens, B, T, 0, err));
    }
    RQ_TRY(rq_forward_run(fs, bb->tokens, B, T, 0, err));
    const float *h = rq_forward_hidden(fs);
    double ce_total = 0.0, mse_total = 0.0;
    if (backward) be->fill_zero(be, bb->d_hidden, (size_t)B * T * dim);
    for (int b = 0; b < B; b++) {
        if (o->ce_weight > 0) {
            int counted = 0;
            for (int i = 0; i < B * T; i++) {
                bool mine = i / T == b;
                bb->one_target[i] = mine ? bb->targets[i] : -1;
                counted += mine && bb->targets[i] >= 0;
            }
            if (counted > 0) {
                double sum = 0.0;
                int64_t n = 0;
                float scale = backward ? (float)(o->ce_weight / ((double)counted * B * grad_div)) : 0.0f;
                RQ_TRY(rq_forward_ce_grad(fs, bb->one_target, scale, backward ? bb->d_hidden : NULL, &sum, &n, err));
                ce_total += sum / (double)n;
            }
        }
        if (o->mse_weight > 0 && !in_network) { /* over the example's real positions (padding excluded) */
            const int len = bb->lens[b];
            const size_t off = (size_t)b * T * dim;
            const size_t cnt = (size_t)len * (o->mse_on_logits ? (size_t)m->cfg.vocab_size : (size_t)dim);
            float scale = backward ? (float)(o->mse_weight / ((double)cnt * B * grad_div)) : 0.0f;
            double sq;
            if (o->mse_on_logits) {
                RQ_TRY(rq_forward_logit_mse_grad(fs, bb->teacher_dev + off, b * T, len, scale,
                                                 backward ? bb->d_hidden : NULL, &sq, err));
            } else {
                sq = be->mse(be, backward ? bb->d_hidden + off : NULL, h + off, bb->teacher_dev + off, cnt, scale);
            }
            mse_total += sq / (double)cnt;
        }
    }
    *ce_mean = ce_total / B;
    *mse_mean = mse_total / B;
    if (in_network) {
        sc->weight = backward ? o->mse_weight / grad_div : 0.0;
        sc->value = 0.0;
        if (!backward) scope_value(sc, fs, bb->d_hidden, m->cfg.n_layers, B * T);
        else {
            rq_backward_hooks hk = {.user = sc,
                                    .layer_out = o->scope == RQ_SCOPE_LAYER ? scope_layer_hook : NULL,
                                    .proj_out = o->scope == RQ_SCOPE_LINEAR ? scope_proj_hook : NULL};
            RQ_TRY(rq_forward_backward_hooked(fs, bb->d_hidden, &hk, err));
        }
        *mse_mean = sc->value;
        return RQ_OK;
    }
    if (backward) RQ_TRY(rq_forward_backward(fs, bb->d_hidden, err));
    return RQ_OK;
}

static double weighted(const rq_train_opts *o, double ce, double mse) {
    return (o->ce_weight > 0 ? o->ce_weight * ce : 0.0) + (o->mse_weight > 0 ? o->mse_weight * mse : 0.0);
}

/* rq_train's own buffers in bytes: one table that the allocations below read
 * and rq_train_size_of sums, so the memory plan cannot drift from them. */
typedef struct train_table {
    size_t ids;     /* host: tokens, targets, one_target, [B*T] ints each */
    size_t lens;    /* host: [B] ints */
    size_t hidden;  /* [B*T][dim] floats: d_hidden (backend); with a Model-Loss the teacher targets
                       (host, and their backend copy); in layer / linear scope the hooks' buffer (backend) */
    bool teacher, scope_tmp;
    size_t params;  /* host: params_host (checkpoint transfers) and best, n_params floats each */
    size_t ckpt;    /* host: the optimizer state a checkpoint writes (while writing it) */
} train_table;

static train_table train_table_of(const rq_config *c, const rq_train_opts *o, size_t n_params) {
    const size_t N = (size_t)o->micro_batch * (size_t)o->seq_len;
    return (train_table){.ids = N * sizeof(int),
                         .lens = (size_t)o->micro_batch * sizeof(int),
                         .hidden = N * (size_t)c->dim * sizeof(float),
                         .teacher = o->mse_weight > 0,
                         .scope_tmp = o->scope != RQ_SCOPE_MODEL,
                         .params = n_params * sizeof(float),
                         .ckpt = rq_optim_state_bytes_for(n_params)};
}

void rq_train_size_of(const rq_config *c, const rq_train_opts *o, size_t n_params, rq_train_size *out) {
    const train_table t = train_table_of(c, o, n_params);
    out->device = t.hidden * (1 + (t.teacher ? 1 : 0) + (t.scope_tmp ? 1 : 0));
    out->host = 3 * t.ids + t.lens + (t.teacher ? t.hidden : 0) + 2 * t.params + t.ckpt;
}

static rq_status bufs_alloc(batch_bufs *bb, rq_backend *be, const train_table *tt, rq_err *err) {
    memset(bb, 0, sizeof *bb);
    bb->be = be;
    bb->tokens = rq_calloc(tt->ids, 1, err);
    bb->targets = rq_calloc(tt->ids, 1, err);
    bb->one_target = rq_calloc(tt->ids, 1, err);
    bb->lens = rq_calloc(tt->lens, 1, err);
    if (!bb->tokens || !bb->targets || !bb->one_target || !bb->lens) return RQ_ERR_NOMEM;
    bb->d_hidden = be->alloc(be, tt->hidden, err);
    if (!bb->d_hidden) return err && err->code ? err->code : RQ_ERR_NOMEM;
    if (tt->teacher) {
        bb->teacher = rq_calloc(tt->hidden, 1, err);
        if (!bb->teacher) return RQ_ERR_NOMEM;
        bb->teacher_dev = be->alloc(be, tt->hidden, err);
        if (!bb->teacher_dev) return err && err->code ? err->code : RQ_ERR_NOMEM;
    }
    return RQ_OK;
}

static void bufs_free(batch_bufs *bb) {
    free(bb->tokens);
    free(bb->targets);
    free(bb->one_target);
    free(bb->lens);
    if (bb->d_hidden) bb->be->free(bb->be, bb->d_hidden);
    free(bb->teacher);
    if (bb->teacher_dev) bb->be->free(bb->be, bb->teacher_dev);
}

/* ---- non-finite losses ------------------------------------------------------------------ */

static bool all_finite(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return false;
    return true;
}

/* Whether backend buffer x [n] holds a non-finite value (downloaded through host scratch). */
static bool dev_nonfinite(rq_backend *be, const float *x, size_t n, float *host) {
    rq_err e = {0};
    return x && be->download(be, host, x, n * sizeof(float), &e) == RQ_OK && !all_finite(host, n);
}

/* Fill err with what went non-finite at `step` and the first place it shows in
 * the micro-batch that fs last ran (layers in order, projections in forward
 * order), or the teacher targets; one extra pass over the activations, paid
 * only on failure. */
static rq_status nonfinite_fail(rq_forward_state *fs, rq_backend *be, const rq_model *m, const batch_bufs *bb,
                                bool with_teacher, int N, int64_t step, const char *what, double value,
                                const char *ckpt_note, rq_err *err) {
    const rq_config *c = &m->cfg;
    size_t widest = (size_t)(c->hidden_dim > c->dim ? c->hidden_dim : c->dim);
    if ((size_t)c->n_heads * c->head_dim > widest) widest = (size_t)c->n_heads * c->head_dim;
    float *host = malloc(sizeof(float) * (size_t)N * widest);
    float *tmp = be->alloc(be, sizeof(float) * (size_t)N * c->dim, NULL);
    char where[160] = "";
    for (int l = 0; host && tmp && !where[0] && l < c->n_layers; l++)
        for (int p = 0; !where[0] && p < RQ_N_PROJ; p++) {
            const rq_linear *lin = rq_layer_proj((rq_layer *)&m->layers[l], p);
            const float *y = rq_forward_proj_output(fs, l, p, tmp);
            if (y && dev_nonfinite(be, y, (size_t)N * (p == RQ_PROJ_O || p == RQ_PROJ_DOWN ? c->dim : lin->out), host))
                snprintf(where, sizeof where, "; the first non-finite output is layer %d %s", l, rq_proj_names[p]);
        }
    if (host && !where[0] && dev_nonfinite(be, rq_forward_hidden(fs), (size_t)N * c->dim, host))
        snprintf(where, sizeof where, "; the first non-finite output is the final norm");
    if (!where[0] && with_teacher && bb->teacher && !all_finite(bb->teacher, (size_t)N * c->dim))
        snprintf(where, sizeof where, "; the student's activations are finite, the teacher targets are not (a damaged "
                                      "teacher cache, or a teacher model that holds NaN/Inf)");
    if (!where[0])
        snprintf(where, sizeof where, "; the activations are finite: the adapters diverged (a lower learning rate may help)");
    free(host);
    if (tmp) be->free(be, tmp);
    return RQ_FAIL(err, RQ_ERR_NUMERIC, "train: step %lld: %s is not finite (%g)%s; stopped%s", (long long)step, what,
                   value, where, ckpt_note);
}

static rq_status evaluate(rq_forward_state *fs, rq_backend *be, const rq_model *m, const rq_train_data *data,
                          const rq_train_opts *o, batch_bufs *bb, scope_ctx *sc, double *loss, double *ce, double *mse,
                          double *seconds, int64_t step, const char *ckpt_note, rq_err *err) {
    double ce_sum = 0.0, mse_sum = 0.0, t0 = rq_now_seconds();
    for (int64_t first = 0; first < data->n_examples; first += o->micro_batch) {
        int B = (int)(data->n_examples - first < o->micro_batch ? data->n_examples - first : o->micro_batch);
        double c, s;
        int Tb;
        RQ_TRY(load_batch(data, NULL, first, B, o->seq_len, m->cfg.dim, bb, o->mse_weight > 0, false, &Tb, err));
        RQ_TRY(micro_step(fs, be, m, o, bb, B, Tb, 0.0, sc, &c, &s, err));
        if (!isfinite(weighted(o, c, s)))
            return nonfinite_fail(fs, be, m, bb, o->mse_weight > 0, B * Tb, step, "the validation loss", weighted(o, c, s),
                                  ckpt_note, err);
        ce_sum += c * B;
        mse_sum += s * B;
    }
    *ce = ce_sum / (double)data->n_examples;
    *mse = mse_sum / (double)data->n_examples;
    *loss = weighted(o, *ce, *mse);
    *seconds += rq_now_seconds() - t0; /* validation time, kept apart from the training rate */
    return RQ_OK;
}

/* ---- checkpoints ------------------------------------------------------------------------ */

typedef struct ckpt_header {
    char magic[8];
    uint32_t version, has_best;
    int64_t step, best_step, bad_evals;
    uint64_t seed, n_params, optim_bytes;
    double best_val, first_val;
    double lr;             /* the schedule's learning rate */
    uint64_t settings;     /* settings_hash of the run that wrote it: a resume must bring the same */
    uint64_t content_hash; /* XXH64 of this header (with content_hash 0), the adapters, the best adapters, the optimizer state */
} ckpt_header;

/* What a resume must not change: everything that shapes the updates and the
 * data order, but for the length of the run (max_steps, and the schedule's
 * total and warmup steps that follow from it: a resume may extend a run). */
static uint64_t settings_hash(const rq_train_opts *o) {
    const double v[] = {o->seq_len, o->micro_batch, o->accum, o->shuffle, (double)o->seed, o->ce_weight, o->mse_weight,
                        o->mse_on_logits, o->scope, o->optim.kind, o->optim.beta1, o->optim.beta2, o->optim.eps,
                        o->optim.weight_decay, o->optim.max_grad_norm, o->schedule.kind, o->schedule.lr, o->eval_every,
                        o->patience};
    return rq_hash64(v, sizeof v, 0x5e77);
}

static uint64_t ckpt_hash(const ckpt_header *h, const void *params, const void *best, const void *optim) {
    ckpt_header z = *h;
    z.content_hash = 0;
    uint64_t x = rq_hash64(&z, sizeof z, 0);
    x = rq_hash64(params, h->n_params * sizeof(float), x);
    if (h->has_best) x = rq_hash64(best, h->n_params * sizeof(float), x);
    return rq_hash64(optim, h->optim_bytes, x);
}

static rq_status ckpt_save(const char *dir, const ckpt_header *h, const float *params, const float *best,
                           const rq_optim *opt, rq_err *err) {
    char *path = rq_path_join_alloc(dir, "checkpoint.bin", err);
    if (!path) return RQ_ERR_NOMEM;
    size_t n = h->n_params, ob = h->optim_bytes;
    uint8_t *obuf = malloc(ob ? ob : 1);
    if (!obuf) {
        rq_status st = RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory writing %s", path);
        free(path);
        return st;
    }
    rq_status st = rq_optim_state_save(opt, obuf, ob, err);
    ckpt_header hh = *h;
    hh.content_hash = ckpt_hash(h, params, best, obuf);
    rq_atomic_file af;
    if (st == RQ_OK) st = rq_atomic_open(&af, path, err);
    if (st == RQ_OK) {
        st = rq_atomic_write(&af, &hh, sizeof hh, err);
        if (st == RQ_OK) st = rq_atomic_write(&af, params, n * sizeof(float), err);
        if (st == RQ_OK && h->has_best) st = rq_atomic_write(&af, best, n * sizeof(float), err);
        if (st == RQ_OK) st = rq_atomic_write(&af, obuf, ob, err);
        if (st == RQ_OK) st = rq_atomic_commit(&af, err);
        else rq_atomic_abort(&af);
    }
    free(obuf);
    free(path);
    return st;
}

static rq_status ckpt_load(const char *path, ckpt_header *h, float *params, float *best, rq_optim *opt,
                           size_t n_params, const rq_train_opts *o, rq_err *err) {
    const uint64_t seed = o->seed;
    rq_file_view v;
    RQ_TRY(rq_file_map(path, &v, err));
    rq_status st = RQ_OK;
    if (v.size < sizeof *h) {
        st = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: %zu bytes is too short for a checkpoint header", path, v.size);
        goto done;
    }
    memcpy(h, v.data, sizeof *h);
    if (memcmp(h->magic, CKPT_MAGIC, 8) != 0 || h->version != CKPT_VERSION) {
        st = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: not a rilq checkpoint of version %u; delete it to restart this stage from "
                     "its beginning", path, CKPT_VERSION);
        goto done;
    }
    {
        const uint8_t *body = v.data + sizeof *h;
        size_t pb = (size_t)h->n_params * sizeof(float), total = sizeof *h + pb * (h->has_best ? 2 : 1) + h->optim_bytes;
        if (h->n_params > (uint64_t)(SIZE_MAX / 8) || h->optim_bytes > v.size || v.size != total ||
            ckpt_hash(h, body, body + pb, body + pb * (h->has_best ? 2 : 1)) != h->content_hash) {
            st = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: damaged checkpoint (its content hash or size does not match); delete it "
                         "to restart this stage from its beginning", path);
            goto done;
        }
    }
    if (h->n_params != n_params) {
        st = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: holds %llu adapter parameters, the adapters have %zu", path,
                     (unsigned long long)h->n_params, n_params);
        goto done;
    }
    if (h->seed != seed) {
        st = RQ_FAIL(err, RQ_ERR_ARG, "%s: was written with seed %llu, this run uses %llu (the data order would differ)",
                     path, (unsigned long long)h->seed, (unsigned long long)seed);
        goto done;
    }
    if (h->lr != o->schedule.lr || h->settings != settings_hash(o)) {
        char what[96];
        if (h->lr != o->schedule.lr)
            snprintf(what, sizeof what, "learning rate %g, this run uses %g", h->lr, o->schedule.lr);
        else
            snprintf(what, sizeof what, "other training settings (batch, accumulation, schedule, optimizer or loss)");
        st = RQ_FAIL(err, RQ_ERR_ARG, "%s: was written with %s; resume with the same settings, or delete it to start "
                     "this stage over", path, what);
        goto done;
    }
    size_t need = sizeof *h + n_params * sizeof(float) * (h->has_best ? 2 : 1) + h->optim_bytes;
    if (v.size != need) {
        st = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: %zu bytes, expected %zu", path, v.size, need);
        goto done;
    }
    const uint8_t *p = v.data + sizeof *h;
    memcpy(params, p, n_params * sizeof(float));
    p += n_params * sizeof(float);
    if (h->has_best) {
        memcpy(best, p, n_params * sizeof(float));
        p += n_params * sizeof(float);
    }
    st = rq_optim_state_load(opt, p, h->optim_bytes, err);
done:
    rq_file_unmap(&v);
    return st;
}

/* metrics.jsonl after a resume: keep only the lines of steps the checkpoint covers. */
static rq_status metrics_truncate(const char *path, int64_t step, rq_err *err) {
    if (!rq_file_exists(path)) return RQ_OK;
    char *text = NULL;
    size_t n = 0;
    RQ_TRY(rq_file_read_all(path, &text, &n, err));
    char *out = malloc(n + 1);
    if (!out) {
        free(text);
        return RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory reading %s", path);
    }
    size_t o = 0;
    for (char *line = text; line < text + n;) {
        char *nl = memchr(line, '\n', (size_t)(text + n - line));
        size_t len = nl ? (size_t)(nl - line) + 1 : (size_t)(text + n - line);
        long long s = -1;
        if (sscanf(line, "{\"step\":%lld", &s) == 1 && s <= step) {
            memcpy(out + o, line, len);
            o += len;
        }
        line += len;
    }
    rq_status st = rq_write_file_atomic(path, out, o, err);
    free(out);
    free(text);
    return st;
}

/* ---- the loop ------------------------------------------------------------------------------ */

rq_status rq_train(const rq_model *m, rq_backend *be, rq_adapter_set *ad, const rq_train_data *train,
                   const rq_train_data *val, const rq_train_opts *o, rq_step_fn on_step, void *user,
                   rq_train_result *res, rq_err *err) {
    memset(res, 0, sizeof *res);
    res->best_val = res->first_val = NAN;
    if (train->n_examples <= 0) return RQ_FAIL(err, RQ_ERR_ARG, "train: no training examples");
    if (o->micro_batch <= 0 || o->accum <= 0 || o->seq_len <= 1 || o->max_steps < 0)
        return RQ_FAIL(err, RQ_ERR_ARG, "train: micro-batch %d, accumulation %d, sequence %d and steps %lld must be positive",
                       o->micro_batch, o->accum, o->seq_len, (long long)o->max_steps);
    if (!(o->ce_weight > 0) && !(o->mse_weight > 0))
        return RQ_FAIL(err, RQ_ERR_ARG, "train: no loss (cross-entropy and model-loss weights are both 0)");
    const int B = o->micro_batch, T = o->seq_len, dim = m->cfg.dim;
    const bool validate = o->eval_every > 0 && val && val->n_examples > 0;
    rq_forward_state *fs = NULL;
    rq_optim *opt = NULL;
    batch_bufs bb = {0};
    data_order order = {.n = train->n_examples, .shuffle = o->shuffle, .seed = o->seed, .epoch = -1};
    float *best = NULL;        /* host: the best adapters so far */
    float *params_host = NULL; /* host: checkpoint transfers of ad->params (backend memory) */
    FILE *metrics = NULL;
    char *metrics_path = NULL, *ckpt_path = NULL;
    rq_forward_opts fo = {.max_batch = B, .max_seq = T, .train = true, .adapters = ad};
    scope_ctx sc = {.be = be, .scope = o->scope, .dim = dim, .n_heads = m->cfg.n_heads,
                    .n_kv_heads = m->cfg.n_kv_heads, .head_dim = m->cfg.head_dim, .hidden = m->cfg.hidden_dim,
                    .n_terms = o->scope == RQ_SCOPE_LINEAR ? RQ_N_PROJ * m->cfg.n_layers : m->cfg.n_layers};
    if (o->scope != RQ_SCOPE_MODEL && !o->teacher)
        return RQ_FAIL(err, RQ_ERR_ARG, "train: layer / linear scope needs the teacher model");
    if (o->scope != RQ_SCOPE_MODEL && o->mse_on_logits)
        return RQ_FAIL(err, RQ_ERR_ARG, "train: the logits Model-Loss belongs to the model scope");
    const train_table tt = train_table_of(&m->cfg, o, ad->n_params);
    rq_status st = rq_forward_create(m, be, &fo, &fs, err);
    if (st == RQ_OK && tt.scope_tmp) {
        rq_forward_opts to = {.max_batch = B, .max_seq = T, .train = true};
        st = rq_forward_create(o->teacher, be, &to, &sc.teacher, err);
        sc.tmp = st == RQ_OK ? be->alloc(be, tt.hidden, err) : NULL;
        if (st == RQ_OK && !sc.tmp) st = err && err->code ? err->code : RQ_ERR_NOMEM;
    }
    if (st == RQ_OK) st = rq_optim_create(be, ad->n_params, &o->optim, &opt, err);
    if (st == RQ_OK) st = bufs_alloc(&bb, be, &tt, err);
    else memset(&bb, 0, sizeof bb);
    params_host = st == RQ_OK ? rq_calloc(tt.params ? tt.params : sizeof(float), 1, err) : NULL;
    if (st == RQ_OK && !params_host) st = RQ_ERR_NOMEM;
    order.perm = st == RQ_OK && o->shuffle ? rq_calloc((size_t)train->n_examples, sizeof(int64_t), err) : NULL;
    best = st == RQ_OK ? rq_calloc(tt.params, 1, err) : NULL;
    if (st == RQ_OK && (!best || (o->shuffle && !order.perm))) st = RQ_ERR_NOMEM;
    ckpt_header h = {.version = CKPT_VERSION, .seed = o->seed, .n_params = ad->n_params, .best_val = INFINITY,
                     .first_val = NAN, .lr = o->schedule.lr, .settings = settings_hash(o)};
    memcpy(h.magic, CKPT_MAGIC, 8);
    if (st == RQ_OK && o->out_dir) {
        st = rq_mkdir_p(o->out_dir, err);
        if (st == RQ_OK) rq_remove_stale_temps(o->out_dir); /* checkpoint and metrics temporaries of a killed run */
        if (st == RQ_OK) {
            metrics_path = rq_path_join_alloc(o->out_dir, "metrics.jsonl", err);
            ckpt_path = metrics_path ? rq_path_join_alloc(o->out_dir, "checkpoint.bin", err) : NULL;
            if (!ckpt_path) st = RQ_ERR_NOMEM;
        }
        if (st == RQ_OK && o->resume && rq_file_exists(ckpt_path)) {
            st = ckpt_load(ckpt_path, &h, params_host, best, opt, ad->n_params, o, err);
            if (st == RQ_OK) st = be->upload(be, ad->params, params_host, ad->n_params * sizeof(float), err);
            if (st == RQ_OK) st = rq_adapter_set_sync_scales(ad, err); /* trained group scales, if any */
            if (st == RQ_OK) {
                res->resumed = true;
                res->resumed_at = h.step;
                st = metrics_truncate(metrics_path, h.step, err);
            }
        }
        if (st == RQ_OK) {
            metrics = fopen(metrics_path, res->resumed ? "a" : "w");
            if (!metrics) st = RQ_FAIL(err, RQ_ERR_IO, "%s: cannot open for writing", metrics_path);
        }
    }
    h.optim_bytes = opt ? rq_optim_state_bytes(opt) : 0;
    char ckpt_note[300] = ""; /* where the last finite state is kept, for a non-finite stop */
    if (res->resumed) snprintf(ckpt_note, sizeof ckpt_note, "; the checkpoint of step %lld is kept in %.200s", (long long)h.step, ckpt_path);
    rq_progress prog;
    rq_progress_init(&prog, "train", o->max_steps);
    double t0 = rq_now_seconds();
    int64_t tokens_done = 0;
    if (st == RQ_OK && validate && !res->resumed) { /* logged, not a candidate for best (as RILQ does) */
        double vl, vc, vm;
        st = evaluate(fs, be, m, val, o, &bb, &sc, &vl, &vc, &vm, &res->val_seconds, h.step, ckpt_note, err);
        if (st == RQ_OK) {
            h.first_val = vl;
            if (metrics) fprintf(metrics, "{\"step\":0,\"val_loss\":%.9g,\"val_ce\":%.9g,\"val_mse\":%.9g}\n", vl, vc, vm);
        }
    }
    if (st == RQ_OK) be->fill_zero(be, ad->grads, ad->n_params);
    bool stop = o->patience > 0 && h.bad_evals >= o->patience;
    while (st == RQ_OK && !stop && h.step < o->max_steps) {
        double ce_acc = 0.0, mse_acc = 0.0;
        for (int a = 0; a < o->accum && st == RQ_OK; a++) {
            int64_t first = (h.step * o->accum + a) * B;
            double c = 0.0, s = 0.0;
            int Tb = T;
            st = load_batch(train, &order, first, B, T, dim, &bb, o->mse_weight > 0, true, &Tb, err);
            if (st == RQ_OK) st = micro_step(fs, be, m, o, &bb, B, Tb, (double)o->accum, &sc, &c, &s, err);
            if (st == RQ_OK && !isfinite(weighted(o, c, s)))
                st = nonfinite_fail(fs, be, m, &bb, o->mse_weight > 0, B * Tb, h.step + 1, "the loss", weighted(o, c, s),
                                    ckpt_note, err);
            tokens_done += (int64_t)B * Tb;
            ce_acc += c / o->accum;
            mse_acc += s / o->accum;
        }
        if (st != RQ_OK) break;
        double lr = rq_schedule_lr(&o->schedule, h.step), gnorm = 0.0;
        st = rq_optim_step(opt, ad->params, ad->grads, lr, &gnorm, err);
        if (st == RQ_OK && !isfinite(gnorm))
            st = RQ_FAIL(err, RQ_ERR_NUMERIC, "train: step %lld: the gradient norm is not finite (%g) with a finite loss; "
                         "stopped%s", (long long)h.step + 1, gnorm, ckpt_note);
        if (st == RQ_OK) st = rq_adapter_set_sync_scales(ad, err); /* the 2-bit weights follow trained scales */
        if (st != RQ_OK) break;
        be->fill_zero(be, ad->grads, ad->n_params);
        h.step++;
        double loss = weighted(o, ce_acc, mse_acc);
        res->last_loss = loss;
        double el = rq_now_seconds() - t0;
        if (metrics)
            fprintf(metrics,
                    "{\"step\":%lld,\"loss\":%.9g,\"ce\":%.9g,\"mse\":%.9g,\"grad_norm\":%.6g,\"lr\":%.6g,\"tokens_per_s\":%.1f}\n",
                    (long long)h.step, loss, ce_acc, mse_acc, gnorm, lr, el > 0 ? tokens_done / el : 0.0);
        if (on_step) on_step(user, h.step, loss, gnorm, lr);
        if (!o->quiet) {
            char extra[160];
            snprintf(extra, sizeof extra, "loss %.4f | grad norm %.3g | lr %.3g | %.0f tok/s", loss, gnorm, lr,
                     el > 0 ? tokens_done / el : 0.0);
            rq_progress_update(&prog, h.step, "steps", extra);
        }
        if (validate && h.step % o->eval_every == 0) {
            double vl, vc, vm;
            st = evaluate(fs, be, m, val, o, &bb, &sc, &vl, &vc, &vm, &res->val_seconds, h.step, ckpt_note, err);
            if (st != RQ_OK) break;
            if (vl < h.best_val) { /* NaN never improves */
                h.best_val = vl;
                h.best_step = h.step;
                h.bad_evals = 0;
                h.has_best = 1;
                st = be->download(be, best, ad->params, ad->n_params * sizeof(float), err);
                if (st != RQ_OK) break;
            } else {
                h.bad_evals++;
            }
            if (metrics)
                fprintf(metrics, "{\"step\":%lld,\"val_loss\":%.9g,\"val_ce\":%.9g,\"val_mse\":%.9g,\"best\":%s}\n",
                        (long long)h.step, vl, vc, vm, h.best_step == h.step ? "true" : "false");
            if (!o->quiet)
                rq_info("step %lld: validation loss %.5f (best %.5f at step %lld)", (long long)h.step, vl, h.best_val,
                        (long long)h.best_step);
            if (o->patience > 0 && h.bad_evals >= o->patience) stop = true;
        }
        if (metrics) fflush(metrics);
        if (o->out_dir && ((o->checkpoint_every > 0 && h.step % o->checkpoint_every == 0) || h.step == o->max_steps ||
                          stop)) {
            st = be->download(be, params_host, ad->params, ad->n_params * sizeof(float), err);
            if (st == RQ_OK && !all_finite(params_host, ad->n_params))
                st = RQ_FAIL(err, RQ_ERR_NUMERIC, "train: step %lld: the adapters are not finite after the update; "
                             "stopped without a checkpoint%s", (long long)h.step, ckpt_note);
            if (st == RQ_OK) st = ckpt_save(o->out_dir, &h, params_host, best, opt, err);
            if (st == RQ_OK)
                snprintf(ckpt_note, sizeof ckpt_note, "; the checkpoint of step %lld is kept in %.200s", (long long)h.step,
                         ckpt_path);
        }
    }
    if (st == RQ_OK && !o->quiet) rq_progress_finish(&prog, h.step, "steps");
    if (st == RQ_OK && h.has_best && o->patience > 0) { /* restore the best adapters */
        st = be->upload(be, ad->params, best, ad->n_params * sizeof(float), err);
        if (st == RQ_OK) st = rq_adapter_set_sync_scales(ad, err);
    }
    res->steps = h.step;
    res->best_val = h.has_best ? h.best_val : NAN;
    res->best_step = h.best_step;
    res->first_val = h.first_val;
    res->stopped_early = stop;
    res->seconds = rq_now_seconds() - t0;
    res->tokens_per_s = res->seconds - res->val_seconds > 0 ? tokens_done / (res->seconds - res->val_seconds) : 0.0;
    if (metrics) fclose(metrics);
    free(best);
    free(params_host);
    free(order.perm);
    free(metrics_path);
    free(ckpt_path);
    bufs_free(&bb);
    rq_optim_free(opt);
    rq_forward_free(fs);
    rq_forward_free(sc.teacher);
    if (sc.tmp) be->free(be, sc.tmp);
    return st;
}
