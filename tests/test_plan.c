/* The memory plan: hand-computed sizes on a small config, agreement with what
 * the CPU training state actually allocates (weights, adapters, forward
 * state), and the refusal path with a faked mem_info. */
#include "io/hf.h"
#include "model/forward.h"
#include "test.h"
#include "train/plan.h"

/* dim 40, hidden 172 (QA-LoRA gs 32: groups 5 x 32 + 12; q2 gs 64: 64, 64, 44),
 * GQA 4 heads over 2 KV heads of 10, vocabulary 100, tied head. */
static rq_config small_config(void) {
    rq_config c = {0};
    c.dim = 40, c.hidden_dim = 172, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 10;
    c.vocab_size = 100, c.max_seq_len = 64, c.norm_eps = 1e-5f, c.rope_theta = 10000.0f, c.tie_embeddings = true;
    c.bos_id = 1;
    return c;
}

static rq_status fake_mem_info(rq_backend *be, size_t *free_bytes, size_t *total_bytes, rq_err *err) {
    (void)be, (void)err;
    *free_bytes = 100000, *total_bytes = 200000;
    return RQ_OK;
}

static void test_hand(void) {
    rq_config c = small_config();
    rq_err err = {0};
    rq_plan_opts o;
    rq_plan_default_opts(&o);
    o.r = 4, o.adapter_group_size = 32, o.seq_len = 9, o.micro_batch = 2, o.n_windows = 10;
    rq_plan p;
    CHECK_OK(rq_plan_compute(&c, &o, &p, &err), &err);
    /* QA-LoRA r=4 gs=32: A r x ceil(in/32), B out x r per projection:
       q 8+160, k 8+80, v 8+80, o 8+160, gate 8+688, up 8+688, down 24+160 = 2088 per layer */
    CHECK(p.adapter_params == 2 * 2088);
    CHECK(p.adapters == 4 * 4176 && p.grads == p.adapters && p.moments == 2 * p.adapters);
    CHECK(p.n_adapters == 14);
    /* q2 gs 64: codes out * ceil(in/4) + fp16 scale and offset per group:
       q 400+160, k 200+80, v 200+80, o 400+160, gate 1720+688, up 1720+688, down 1720+480 = 8696 */
    CHECK(p.weights_q2 == 2 * 8696);
    /* embedding 100 x 40 (tied), 2 norms of 40 per layer, the final norm */
    CHECK(p.weights_dense == 4 * (4000 + 160 + 40));
    /* teacher targets: 10 windows x 9 x 40 fp32 on disk, one micro-batch resident */
    CHECK(p.cache_disk == 10ull * 9 * 40 * 4 && p.cache_resident == 2ull * 9 * 40 * 4);
    CHECK(p.total == (p.training > p.teacher_pass ? p.training : p.teacher_pass));

    o.adapter = RQ_ADAPTER_LORA;
    CHECK_OK(rq_plan_compute(&c, &o, &p, &err), &err);
    /* q 160+160, k 160+80, v 160+80, o 160+160, gate 160+688, up 160+688, down 688+160 = 3664 per layer */
    CHECK(p.adapter_params == 2 * 3664);

    /* FLOPs, B=1 T=3: projections 25440 weights per layer, attention 4 * L * nh * hd * T(T+1)/2 */
    rq_plan_flops f;
    o.micro_batch = 1, o.seq_len = 3, o.adapter = RQ_ADAPTER_QALORA;
    rq_plan_flops_compute(&c, &o, &f);
    CHECK_NEAR(f.proj_fwd, 2.0 * 25440 * 2 * 3, 1e-6);
    CHECK_NEAR(f.head_fwd, 2.0 * 4000 * 3, 1e-6);
    CHECK_NEAR(f.attn_fwd, 4.0 * 2 * 4 * 10 * 6, 1e-6);
    CHECK_NEAR(f.attn_bwd, 2 * f.attn_fwd, 1e-6);
    CHECK_NEAR(f.total, 2 * (f.proj_fwd + f.head_fwd) + 3 * f.attn_fwd + 3 * f.adapter_fwd, 1e-6);

    CHECK(rq_plan_compute(&c, &(rq_plan_opts){.r = 0, .micro_batch = 1, .seq_len = 1}, &p, &err) == RQ_ERR_ARG);
}

/* The plan against the allocations of the CPU training code. */
static void test_against_allocation(rq_adapter_type type, int gs, unsigned targets, int B, int T) {
    rq_config c = small_config();
    rq_err err = {0};
    rq_model *m = NULL;
    rq_backend *be = NULL;
    rq_adapter_set *ad = NULL;
    rq_forward_state *fs = NULL, *ts = NULL, *is = NULL;
    CHECK_OK(rq_model_random(&c, 7, &m, &err), &err);
    CHECK_OK(rq_backend_cpu_create(1, &be, &err), &err);
    if (!m || !be) goto out;
    rq_adapter_config ac = {.type = type, .r = 5, .alpha = 16, .group_size = gs, .targets = targets, .seed = 1};
    CHECK_OK(rq_adapter_set_create(&m->cfg, &ac, be, &ad, &err), &err);
    rq_forward_opts fo = {.max_batch = B, .max_seq = T, .train = true, .adapters = ad};
    CHECK_OK(rq_forward_create(m, be, &fo, &fs, &err), &err);
    rq_forward_opts to = {.max_batch = B, .max_seq = T, .train = true};
    CHECK_OK(rq_forward_create(m, be, &to, &ts, &err), &err);
    rq_forward_opts io = {.max_batch = 1, .max_seq = T};
    CHECK_OK(rq_forward_create(m, be, &io, &is, &err), &err);
    if (!ad || !fs || !ts || !is) goto out;

    rq_plan_opts o;
    rq_plan_default_opts(&o);
    o.adapter = type, o.r = 5, o.adapter_group_size = gs, o.targets = targets;
    o.micro_batch = B, o.seq_len = T, o.student_q2 = false, o.scope = RQ_SCOPE_LAYER;
    rq_plan p;
    CHECK_OK(rq_plan_compute(&m->cfg, &o, &p, &err), &err);
    CHECKF(p.activations == rq_forward_bytes(fs), "plan %llu, forward state %zu", (unsigned long long)p.activations,
           rq_forward_bytes(fs));
    CHECKF(p.teacher_activations == rq_forward_bytes(ts), "plan %llu, teacher state %zu",
           (unsigned long long)p.teacher_activations, rq_forward_bytes(ts));
    CHECK(p.weights_dense + p.weights_q2 == rq_model_weight_bytes(m));
    CHECK(p.teacher_weights == m->weights_bytes);
    CHECK(p.adapters == rq_adapter_set_bytes(ad) && p.adapter_params == ad->n_params);
    CHECK(p.n_adapters == rq_adapter_set_count(ad));
    /* the teacher pass: teacher + student weights, forward's host arrays and one inference state */
    uint64_t host_fwd = (uint64_t)(c.head_dim / 2 + 2 * T * (c.head_dim / 2) + 64 * c.vocab_size) * 4;
    CHECK(p.teacher_pass == 2 * rq_model_weight_bytes(m) + host_fwd + rq_forward_bytes(is));
    CHECK(p.teacher_whole == p.teacher_pass); /* layer scope keeps the whole teacher: its pass does not stream */
out:
    rq_forward_free(fs);
    rq_forward_free(ts);
    rq_forward_free(is);
    rq_adapter_set_free(ad);
    rq_backend_destroy(be);
    rq_model_free(m);
}

static void test_refusal(void) {
    rq_config c = small_config();
    rq_err err = {0};
    rq_plan_opts o;
    rq_plan_default_opts(&o);
    rq_plan p;
    CHECK_OK(rq_plan_compute(&c, &o, &p, &err), &err);
    CHECK(p.total > 100000);
    CHECK_OK(rq_plan_check_free(&p, &o, p.total, 0, "cpu", &err), &err);
    CHECK_OK(rq_plan_check_free(&p, &o, 1000, p.total - 1000, "cpu", &err), &err); /* most already allocated */
    rq_err e2 = {0};
    CHECK(rq_plan_check_free(&p, &o, p.total - 1, 0, "cpu", &e2) == RQ_ERR_NOMEM);
    CHECK(strstr(e2.msg, "--no-memory-check") && strstr(e2.msg, "--micro-batch") && strstr(e2.msg, "GiB"));
    /* through a backend whose mem_info reports 100000 free bytes */
    rq_backend *be = NULL;
    CHECK_OK(rq_backend_cpu_create(1, &be, &err), &err);
    if (!be) return;
    be->mem_info = fake_mem_info;
    rq_err e3 = {0};
    CHECK(rq_plan_check(&p, &o, be, 0, &e3) == RQ_ERR_NOMEM);
    CHECK(strstr(e3.msg, "on cpu") != NULL);
    CHECK_OK(rq_plan_check(&p, &o, be, p.total - 100000, &err), &err);
    rq_backend_destroy(be);
}

/* CUDA plans differ by the device scratch only in training, and keep the host apart. */
static void test_cuda(void) {
    rq_config c = small_config();
    rq_err err = {0};
    rq_plan_opts o;
    rq_plan_default_opts(&o);
    rq_plan pc, pg;
    CHECK_OK(rq_plan_compute(&c, &o, &pc, &err), &err);
    o.device = RQ_PLAN_CUDA;
    CHECK_OK(rq_plan_compute(&c, &o, &pg, &err), &err);
    CHECK(pg.activations == pc.activations && pg.scratch > pc.scratch);
    /* the trainer's device buffers: d_hidden and the uploaded teacher targets, [1][512][40] fp32 each */
    CHECK(pc.scratch == 2ull * 512 * 40 * 4);
    CHECK(pg.training - pg.scratch == pc.training - pc.host - pc.scratch);
    CHECK(pg.host_total >= pg.host + pg.weights_q2 + pg.weights_dense);
}

/* LLaMA-2-7B from its config alone, against the figures of algorithms.md. */
static void test_llama2_7b(void) {
    rq_config c;
    rq_err err = {0};
    CHECK_OK(rq_hf_read_config("data/llama2-7b-config.json", &c, &err), &err);
    CHECK_OK(rq_config_validate(&c, "llama2-7b-config.json", &err), &err);
    rq_plan_opts o;
    rq_plan_default_opts(&o);
    o.device = RQ_PLAN_CUDA;
    rq_plan p;
    CHECK_OK(rq_plan_compute(&c, &o, &p, &err), &err);
    /* "Trainable params, LLaMA-2-7B, r=64, gs=64: 88.2 M (vs 159.9 M for plain LoRA)" */
    CHECKF(p.adapter_params == 88170496, "QA-LoRA r=64: %zu parameters", p.adapter_params);
    /* 6,476,005,376 projection weights at 2 bits + fp16 scale and offset per 64: 2.5 bits */
    CHECK(p.weights_q2 == 2023751680ull);
    /* embedding and head 32000 x 4096 each, 65 norms of 4096 */
    CHECK(p.weights_dense == 4ull * (2ull * 32000 * 4096 + 65 * 4096));
    CHECK(p.cache_disk == 320ull * 512 * 4096 * 4);
    o.adapter = RQ_ADAPTER_LORA;
    CHECK_OK(rq_plan_compute(&c, &o, &p, &err), &err);
    CHECKF(p.adapter_params == 159907840, "LoRA r=64: %zu parameters", p.adapter_params);
    /* 27.36 GFLOP per token: 2 x 2 x 6.476e9 (projections) + 2 x 2 x 131e6 (head) + attention + adapters */
    rq_plan_flops f;
    o.adapter = RQ_ADAPTER_QALORA;
    rq_plan_flops_compute(&c, &o, &f);
    CHECK_NEAR(f.proj_fwd, 2.0 * 512 * 6476005376.0, 1.0);
    CHECK_NEAR(f.per_token / 1e9, 27.364, 1e-3);
}

int main(void) {
    test_hand();
    test_llama2_7b();
    test_against_allocation(RQ_ADAPTER_QALORA, 32, RQ_ADAPTER_ALL_PROJ, 2, 9);
    test_against_allocation(RQ_ADAPTER_QALORA, 64, RQ_ADAPTER_ALL_PROJ, 1, 37);
    test_against_allocation(RQ_ADAPTER_LORA, 0, (1u << RQ_PROJ_Q) | (1u << RQ_PROJ_V) | (1u << RQ_PROJ_DOWN), 3, 5);
    test_refusal();
    test_cuda();
    return rq_test_finish();
}
