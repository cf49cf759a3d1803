/* Checkpoint and resume: train N steps (checkpointing at N), then M more; a
 * second run restarted from the step-N checkpoint must reproduce the last M
 * losses and the final adapters bit for bit. Also: an uninterrupted N+M run
 * gives the same bits, a checkpoint from another seed is refused, and early
 * stopping restores the best adapters. */
#include <math.h>
#include <unistd.h>

#include "train/trainer.h"
#include "test.h"

#define T_LEN 12
#define N_EX 10

typedef struct corpus {
    int tokens[N_EX][T_LEN + 1];
    float teacher[N_EX][T_LEN * 16];
    bool variable; /* examples of different lengths */
} corpus;

static rq_status get_example(void *user, int64_t ex, int *tokens, int *targets, float *teacher, int *len, rq_err *err) {
    corpus *c = user;
    if (c->variable) *len = 3 + (int)(ex % (T_LEN - 2)); /* 3 .. T_LEN */
    memcpy(tokens, c->tokens[ex], sizeof(int) * T_LEN);
    memcpy(targets, c->tokens[ex] + 1, sizeof(int) * T_LEN);
    if (teacher) memcpy(teacher, c->teacher[ex], sizeof(float) * T_LEN * 16);
    return RQ_OK;
}

typedef struct loss_log {
    double loss[64];
    int64_t n;
} loss_log;

static void record(void *user, int64_t step, double loss, double gn, double lr) {
    loss_log *l = user;
    if (l->n < 64) l->loss[l->n++] = loss;
}

static rq_adapter_set *fresh_adapters(const rq_model *m, rq_backend *be) {
    rq_err err = {0};
    rq_adapter_config ac = {.type = RQ_ADAPTER_QALORA, .r = 4, .alpha = 8, .group_size = 5,
                            .targets = RQ_ADAPTER_ALL_PROJ, .init = RQ_INIT_GAUSSIAN, .seed = 3};
    rq_adapter_set *ad = NULL;
    CHECK_OK(rq_adapter_set_create(&m->cfg, &ac, be, &ad, &err), &err);
    return ad;
}

int main(void) {
    rq_err err = {0};
    rq_config cfg = {.dim = 16, .hidden_dim = 24, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2, .head_dim = 4,
                     .vocab_size = 31, .max_seq_len = 32, .norm_eps = 1e-5f, .rope_theta = 10000.0f};
    rq_model *m = NULL;
    rq_backend *be = NULL;
    CHECK_OK(rq_model_random(&cfg, 11, &m, &err), &err);
    CHECK_OK(rq_backend_cpu_create(0, &be, &err), &err);
    if (!m || !be) return rq_test_finish();
    corpus c = {0};
    rq_rng rng;
    rq_rng_seed(&rng, 5);
    for (int e = 0; e < N_EX; e++) {
        for (int t = 0; t <= T_LEN; t++) c.tokens[e][t] = (int)(rq_rng_u64(&rng) % cfg.vocab_size);
        for (int i = 0; i < T_LEN * 16; i++) c.teacher[e][i] = rq_rng_normal(&rng);
    }
    rq_train_data train = {get_example, &c, 8}, val = {get_example, &c, 0};
    char dir_a[4096], dir_b[4096];
    snprintf(dir_a, sizeof dir_a, "%s", rq_test_out("resume_a"));
    snprintf(dir_b, sizeof dir_b, "%s", rq_test_out("resume_b"));
    unlink(rq_test_out("resume_a/checkpoint.bin"));
    unlink(rq_test_out("resume_b/checkpoint.bin"));

    rq_train_opts o;
    rq_train_default_opts(&o);
    o.seq_len = T_LEN;
    o.micro_batch = 2;
    o.accum = 2;
    o.ce_weight = 0.5;
    o.mse_weight = 0.5;
    o.schedule.lr = 5e-3;
    o.quiet = true;
    o.seed = 9;
    const int N = 4, M = 5;

    /* run A: N steps, then resume to N + M */
    rq_adapter_set *a = fresh_adapters(m, be);
    loss_log la1 = {0}, la2 = {0};
    rq_train_result r;
    o.out_dir = dir_a;
    o.max_steps = N;
    CHECK_OK(rq_train(m, be, a, &train, &val, &o, record, &la1, &r, &err), &err);
    CHECK(r.steps == N);
    rq_adapter_set_free(a);
    a = fresh_adapters(m, be); /* a new process would start from fresh adapters and the checkpoint */
    o.max_steps = N + M;
    o.resume = true;
    CHECK_OK(rq_train(m, be, a, &train, &val, &o, record, &la2, &r, &err), &err);
    CHECK(r.resumed && r.resumed_at == N && r.steps == N + M && la2.n == M);

    /* run B: N + M steps straight through */
    rq_adapter_set *b = fresh_adapters(m, be);
    loss_log lb = {0};
    o.out_dir = dir_b;
    o.resume = false;
    CHECK_OK(rq_train(m, be, b, &train, &val, &o, record, &lb, &r, &err), &err);
    CHECK(lb.n == N + M);
    int same_losses = la1.n == N && la2.n == M;
    for (int i = 0; same_losses && i < N; i++) same_losses = memcmp(&la1.loss[i], &lb.loss[i], sizeof(double)) == 0;
    for (int i = 0; same_losses && i < M; i++) same_losses = memcmp(&la2.loss[i], &lb.loss[N + i], sizeof(double)) == 0;
    CHECKF(same_losses, "resumed losses differ from the uninterrupted run");
    CHECKF(memcmp(a->params, b->params, a->n_params * sizeof(float)) == 0, "final adapters differ after resume");
    CHECK(lb.loss[N + M - 1] < lb.loss[0]); /* and it learns */

    /* a checkpoint written with another seed is refused */
    o.out_dir = dir_a;
    o.resume = true;
    o.seed = 10;
    o.max_steps = N + M + 1;
    CHECK(rq_train(m, be, a, &train, &val, &o, NULL, NULL, &r, &err) == RQ_ERR_ARG);
    CHECKF(strstr(err.msg, "seed") != NULL, "message: %s", err.msg);

    /* early stopping: validate every step on the training examples with a huge lr,
       stop after 2 bad validations, and come back with the best adapters */
    rq_adapter_set *e = fresh_adapters(m, be);
    rq_train_data val2 = {get_example, &c, N_EX};
    rq_train_opts oe = o;
    oe.out_dir = NULL;
    oe.resume = false;
    oe.seed = 9;
    oe.max_steps = 40;
    oe.eval_every = 1;
    oe.patience = 2;
    oe.schedule.lr = 0.5;
    CHECK_OK(rq_train(m, be, e, &train, &val2, &oe, NULL, NULL, &r, &err), &err);
    CHECK(r.stopped_early && r.steps < 40 && r.best_step >= 1 && r.best_step <= r.steps - 2);
    /* the restored adapters score exactly the best validation loss */
    rq_train_result r2;
    oe.max_steps = 0;
    CHECK_OK(rq_train(m, be, e, &train, &val2, &oe, NULL, NULL, &r2, &err), &err);
    CHECKF(r2.first_val == r.best_val, "restored adapters score %.9g, best was %.9g", r2.first_val, r.best_val);
    /* variable-length examples: a micro-batch packs them at its longest length and
       masks the padding, so the validation loss does not depend on the batching */
    c.variable = true;
    rq_train_result v1, v2;
    oe.max_steps = 0;
    oe.micro_batch = 1;
    CHECK_OK(rq_train(m, be, e, &train, &val2, &oe, NULL, NULL, &v1, &err), &err);
    oe.micro_batch = 4;
    CHECK_OK(rq_train(m, be, e, &train, &val2, &oe, NULL, NULL, &v2, &err), &err);
    /* same math, different GEMM shapes: agreement to fp32 rounding */
    CHECKF(fabs(v1.first_val - v2.first_val) < 1e-5 * fabs(v1.first_val), "batched %.9g vs single %.9g",
           v2.first_val, v1.first_val);
    /* layer and linear scope: the teacher (here the same random model with other weights)
       runs alongside; the loss the backward hooks accumulate equals the value-only path on
       the same examples and adapters, and training lowers it */
    c.variable = false;
    rq_model *teacher = NULL;
    CHECK_OK(rq_model_random(&cfg, 12, &teacher, &err), &err);
    for (int scope = RQ_SCOPE_LAYER; teacher && scope <= RQ_SCOPE_LINEAR; scope++) {
        rq_adapter_set *sa = fresh_adapters(m, be);
        rq_train_data two = {get_example, &c, 2};
        rq_train_opts os;
        rq_train_default_opts(&os);
        os.seq_len = T_LEN;
        os.micro_batch = 2;
        os.accum = 1;
        os.shuffle = false;
        os.ce_weight = 0.0;
        os.mse_weight = 1.0;
        os.scope = (rq_loss_scope)scope;
        os.teacher = teacher;
        os.quiet = true;
        os.eval_every = 1;
        os.max_steps = 0;
        os.schedule.lr = 1e-2;
        rq_train_result r0, r1;
        CHECK_OK(rq_train(m, be, sa, &two, &two, &os, NULL, NULL, &r0, &err), &err);
        loss_log ls = {0};
        os.max_steps = 30;
        os.eval_every = 0;
        CHECK_OK(rq_train(m, be, sa, &two, &two, &os, record, &ls, &r1, &err), &err);
        CHECKF(ls.n == 30 && fabs(ls.loss[0] - r0.first_val) <= 1e-12 * r0.first_val,
               "scope %d: hook loss %.12g vs value %.12g", scope, ls.loss[0], r0.first_val);
        CHECKF(ls.loss[29] < ls.loss[0], "scope %d: loss %.6g -> %.6g", scope, ls.loss[0], ls.loss[29]);
        rq_adapter_set_free(sa);
    }
    rq_model_free(teacher);
    rq_adapter_set_free(a);
    rq_adapter_set_free(b);
    rq_adapter_set_free(e);
    rq_backend_destroy(be);
    rq_model_free(m);
    return rq_test_finish();
}
