/* The dry runs the memory plan reads, against what the code allocates: the
 * shape-only adapter set against a real one, rq_forward_size_of against the
 * states rq_forward_create makes, rq_train_size_of against the optimizer
 * state a checkpoint writes, be->scratch_bytes against scratch.h, and the
 * plan as the sum of those (so a new buffer in forward.c or trainer.c shows
 * up in the plan without anyone editing plan.c). */
#include "backend/scratch.h"
#include "model/forward.h"
#include "test.h"
#include "train/plan.h"

/* dim 40, hidden 172, GQA 4 heads over 2 KV heads of 10, vocabulary 100 (test_plan.c's shape). */
static rq_config small_config(void) {
    rq_config c = {0};
    c.dim = 40, c.hidden_dim = 172, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 10;
    c.vocab_size = 100, c.max_seq_len = 64, c.norm_eps = 1e-5f, c.rope_theta = 10000.0f, c.tie_embeddings = true;
    c.bos_id = 1;
    return c;
}

static void check_forward(const rq_model *m, rq_backend *be, const rq_forward_opts *real, rq_adapter_set *dry) {
    rq_err err = {0};
    rq_forward_state *fs = NULL;
    CHECK_OK(rq_forward_create(m, be, real, &fs, &err), &err);
    if (!fs) return;
    rq_forward_opts o = *real;
    rq_forward_size sz;
    CHECK_OK(rq_forward_size_of(&m->cfg, &o, &sz, &err), &err);
    CHECKF(sz.act_bytes + sz.kv_bytes == rq_forward_bytes(fs), "dry %zu + %zu, allocated %zu", sz.act_bytes,
           sz.kv_bytes, rq_forward_bytes(fs));
    if (real->train) CHECK(sz.kv_bytes == 0);
    /* the same table through the shape-only set */
    if (real->adapters && dry) {
        o.adapters = dry;
        rq_forward_size dz;
        CHECK_OK(rq_forward_size_of(&m->cfg, &o, &dz, &err), &err);
        CHECK(dz.act_bytes == sz.act_bytes && dz.kv_bytes == sz.kv_bytes && dz.host_bytes == sz.host_bytes);
    }
    rq_forward_free(fs);
}

static void test_adapters_and_forward(rq_adapter_type type, int gs, unsigned targets) {
    rq_config c = small_config();
    rq_err err = {0};
    rq_model *m = NULL;
    rq_backend *be = NULL;
    rq_adapter_set *ad = NULL, *dry = NULL;
    CHECK_OK(rq_model_random(&c, 3, &m, &err), &err);
    CHECK_OK(rq_backend_cpu_create(1, &be, &err), &err);
    if (!m || !be) goto out;
    rq_adapter_config ac = {.type = type, .r = 3, .alpha = 8, .group_size = gs, .targets = targets, .seed = 2};
    CHECK_OK(rq_adapter_set_create(&c, &ac, be, &ad, &err), &err);
    CHECK_OK(rq_adapter_set_plan(&c, &ac, &dry, &err), &err);
    if (!ad || !dry) goto out;
    CHECK(dry->n_params == ad->n_params && rq_adapter_set_count(dry) == rq_adapter_set_count(ad));
    CHECK(dry->params == NULL && dry->grads == NULL && dry->be == NULL);
    for (int l = 0; l < c.n_layers; l++)
        for (int p = 0; p < RQ_N_PROJ; p++) {
            const rq_adapter *a = rq_adapter_set_get(ad, l, p), *d = rq_adapter_set_get(dry, l, p);
            CHECK(!a == !d);
            if (a && d) CHECK(a->out == d->out && a->in == d->in && a->r == d->r && a->a_cols == d->a_cols && !d->A);
        }
    const int shapes[][2] = {{2, 9}, {1, 37}, {3, 5}};
    for (int i = 0; i < 3; i++) {
        const int B = shapes[i][0], T = shapes[i][1];
        check_forward(m, be, &(rq_forward_opts){.max_batch = B, .max_seq = T, .train = true, .adapters = ad}, dry);
        check_forward(m, be, &(rq_forward_opts){.max_batch = B, .max_seq = T, .train = true}, NULL);
        check_forward(m, be, &(rq_forward_opts){.max_batch = B, .max_seq = T, .adapters = ad}, dry);
        check_forward(m, be, &(rq_forward_opts){.max_batch = B, .max_seq = T, .kv_cache = true, .adapters = ad}, dry);
    }
    rq_forward_size sz;
    CHECK(rq_forward_size_of(&c, &(rq_forward_opts){.max_batch = 1, .max_seq = 4, .train = true, .kv_cache = true}, &sz,
                             &err) == RQ_ERR_ARG);
out:
    rq_adapter_set_free(dry);
    rq_adapter_set_free(ad);
    rq_backend_destroy(be);
    rq_model_free(m);
}

static void test_trainer_table(void) {
    rq_config c = small_config();
    rq_err err = {0};
    rq_backend *be = NULL;
    rq_optim *opt = NULL;
    CHECK_OK(rq_backend_cpu_create(1, &be, &err), &err);
    if (!be) return;
    const size_t n = 1234;
    rq_optim_config oc = rq_optim_defaults(RQ_OPTIM_ADAMW);
    CHECK_OK(rq_optim_create(be, n, &oc, &opt, &err), &err);
    if (opt) CHECK(rq_optim_state_bytes_for(n) == rq_optim_state_bytes(opt) && rq_optim_moment_bytes(n) == 2 * n * 4);
    rq_optim_free(opt);
    rq_backend_destroy(be);
    rq_train_opts o;
    rq_train_default_opts(&o);
    o.micro_batch = 3, o.seq_len = 11;
    const size_t N = 33, D = N * 40 * sizeof(float);
    for (int v = 0; v < 3; v++) {
        o.mse_weight = v >= 1 ? 0.5 : 0.0;
        o.scope = v == 2 ? RQ_SCOPE_LINEAR : RQ_SCOPE_MODEL;
        rq_train_size ts;
        rq_train_size_of(&c, &o, n, &ts);
        CHECK(ts.device == D * (size_t)(1 + (v >= 1) + (v == 2)));
        /* tokens, targets, one example's targets, lengths; teacher window; checkpoint transfer + best copy;
           the optimizer state a checkpoint writes */
        CHECK(ts.host == 3 * N * sizeof(int) + 3 * sizeof(int) + (v >= 1 ? D : 0) + 2 * n * sizeof(float) +
                             rq_optim_state_bytes_for(n));
    }
}

static void test_backend_scratch(void) {
    rq_config c = small_config();
    rq_err err = {0};
    rq_backend *be = NULL;
    CHECK_OK(rq_backend_cpu_create(2, &be, &err), &err);
    if (!be) return;
    CHECK(be->scratch_bytes != NULL);
    if (be->scratch_bytes) {
        const size_t tile = RQ_CPU_Q2_TILE_FLOATS * sizeof(float);
        CHECK(be->scratch_bytes(be, &c, 1, 16, true, false) == tile); /* T < 32: loops, no per-call buffer */
        CHECK(be->scratch_bytes(be, &c, 1, 64, true, false) == tile + 64 * 64 * sizeof(float));
        CHECK(be->scratch_bytes(be, &c, 1, 64, false, true) == tile + 2 * 64 * 64 * sizeof(float)); /* 2 threads */
        CHECK(be->scratch_bytes(be, &c, 4, 64, true, true) == rq_cpu_scratch_bytes(2, &c, 4, 64, true, true));
    }
    rq_backend_destroy(be);
    /* the CUDA formula builds without CUDA: workspace, bf16 operand (widest 172 x 12 rows), the whole
       q2 weight as one bf16 tile (172 x 40), attention backward (7 * 4 heads * 3 * 10 + 4 * 3 * 3 floats),
       staged ints and loss rows, each grown by a quarter + 256 bytes */
    const size_t want = RQ_CUDA_GEMM_WORKSPACE_BYTES + rq_cuda_scratch_grown(12 * 172 * 2) +
                        rq_cuda_scratch_grown(172 * 40 * 2) +
                        rq_cuda_scratch_grown((7 * 4 * 3 * 10 * 4 + 4 * 4 * 3 * 3) * 4) +
                        2 * rq_cuda_scratch_grown(12 * 4);
    CHECKF(rq_cuda_scratch_bytes(true, &c, 4, 3, true, true) == want, "%zu, expected %zu",
           rq_cuda_scratch_bytes(true, &c, 4, 3, true, true), want);
    CHECK(rq_cuda_q2_tile_rows(11008, 4096) == 11008 && rq_cuda_q2_tile_rows(128256, 4096) == 16384);
}

/* The plan is the sum of the dry runs, and nothing else. */
static void test_plan_is_the_tables(void) {
    rq_config c = small_config();
    rq_err err = {0};
    rq_plan_opts o;
    rq_plan_default_opts(&o);
    o.r = 4, o.adapter_group_size = 32, o.seq_len = 9, o.micro_batch = 2;
    rq_plan pc, pg;
    CHECK_OK(rq_plan_compute(&c, &o, &pc, &err), &err);
    o.device = RQ_PLAN_CUDA;
    CHECK_OK(rq_plan_compute(&c, &o, &pg, &err), &err);
    rq_adapter_config ac = {.type = o.adapter, .r = o.r, .alpha = 1, .group_size = o.adapter_group_size,
                            .targets = o.targets};
    rq_adapter_set *dry = NULL;
    CHECK_OK(rq_adapter_set_plan(&c, &ac, &dry, &err), &err);
    if (!dry) return;
    rq_forward_size fs;
    CHECK_OK(rq_forward_size_of(&c, &(rq_forward_opts){.max_batch = 2, .max_seq = 9, .train = true, .adapters = dry},
                                &fs, &err),
             &err);
    rq_train_opts to;
    rq_train_default_opts(&to);
    to.micro_batch = 2, to.seq_len = 9, to.mse_weight = o.mse_weight;
    rq_train_size ts;
    rq_train_size_of(&c, &to, dry->n_params, &ts);
    CHECK(pc.activations == fs.act_bytes && pc.moments == rq_optim_moment_bytes(dry->n_params));
    CHECK(pc.scratch == ts.device && pc.host == ts.host + fs.host_bytes && pg.host == pc.host);
    CHECK(pg.scratch == ts.device + rq_cuda_scratch_bytes(true, &c, 2, 9, true, true));
    rq_adapter_set_free(dry);
}

int main(void) {
    test_adapters_and_forward(RQ_ADAPTER_QALORA, 32, RQ_ADAPTER_ALL_PROJ);
    test_adapters_and_forward(RQ_ADAPTER_LORA, 0, (1u << RQ_PROJ_Q) | (1u << RQ_PROJ_V) | (1u << RQ_PROJ_DOWN));
    test_trainer_table();
    test_backend_scratch();
    test_plan_is_the_tables();
    return rq_test_finish();
}
