/* Benchmark: RILQ updates on a device. Tokens/s and model-FLOP utilization
 * (MFU) against a stated peak, for a LLaMA-2-7B-shaped student with random
 * 2-bit weights (RTN-like int2 codes, group 64), QA-LoRA r=64 (gs 64) on all
 * seven projections, micro-batch 1 x 512 tokens, 8 micro-batches per update,
 * loss 0.5 * MSE(final hidden, teacher targets) + 0.5 * CE: the paper's
 * calibration settings (algorithms.md). Synthetic tokens and targets; the
 * teacher targets are random floats fed through the trainer's callback as the
 * teacher cache would be.
 *
 * FLOPs per micro-batch: src/train/plan.c's rq_plan_flops_compute, the
 * accounting of bench_train.c (projections and head forward + input-gradient
 * backward, causal attention forward + 2x backward) plus the adapters.
 * MFU = FLOPs / second / peak; the default peak is an H100 SXM's dense bf16
 * tensor-core rate, 989 TFLOP/s (--peak-tflops for another part: H200 has the
 * same 989, A100 312).
 *
 *   bench_gpu_rilq [--device cuda|cpu] [--shape llama2-7b|smollm2] [--steps N]
 *                  [--accum K] [--seq-len T] [--rank R] [--peak-tflops P] [--threads N]
 *
 * Without a CUDA backend it prints "cuda backend unavailable: <reason>" and
 * exits 0. --device cpu --shape smollm2 --accum 1 --steps 1 --seq-len 128 is
 * a quick sanity run on a CPU. Prints figures; asserts nothing. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/tensors.h"
#include "quant/q2.h"
#include "train/plan.h"
#include "train/trainer.h"

static rq_config shape(const char *name) {
    if (!strcmp(name, "smollm2"))
        return (rq_config){.dim = 576, .hidden_dim = 1536, .n_layers = 30, .n_heads = 9, .n_kv_heads = 3,
                           .head_dim = 64, .vocab_size = 49152, .max_seq_len = 8192, .norm_eps = 1e-5f,
                           .rope_theta = 100000.0f, .tie_embeddings = true, .bos_id = 1};
    /* LLaMA-2-7B (tests/data/llama2-7b-config.json) */
    return (rq_config){.dim = 4096, .hidden_dim = 11008, .n_layers = 32, .n_heads = 32, .n_kv_heads = 32,
                       .head_dim = 128, .vocab_size = 32000, .max_seq_len = 4096, .norm_eps = 1e-5f,
                       .rope_theta = 10000.0f, .tie_embeddings = false, .bos_id = 1};
}

/* A student with random q2 projections (codes uniform, scale 0.9/sqrt(in) and
 * offset -1.5 * scale: zero-mean weights of std ~1/sqrt(in)) and random fp32
 * embedding, norms and head, built through rq_model_build_q2 as an artifact is. */
static rq_status random_q2_model(const rq_config *c, rq_model **out, rq_err *err) {
    rq_rng rng;
    rq_rng_seed(&rng, 1);
    const int n_q2 = c->n_layers * RQ_N_PROJ;
    rq_q2_tensor **q2 = rq_calloc((size_t)n_q2, sizeof *q2, err);
    if (!q2) return RQ_ERR_NOMEM;
    const int qd = c->n_heads * c->head_dim, kvd = c->n_kv_heads * c->head_dim;
    const int outs[RQ_N_PROJ] = {qd, kvd, kvd, c->dim, c->hidden_dim, c->hidden_dim, c->dim};
    const int ins[RQ_N_PROJ] = {c->dim, c->dim, c->dim, qd, c->dim, c->dim, c->hidden_dim};
    rq_status st = RQ_OK;
    for (int i = 0; i < n_q2 && st == RQ_OK; i++) {
        int p = i % RQ_N_PROJ;
        st = rq_q2_create(outs[p], ins[p], 64, RQ_Q2_INT2, &q2[i], err);
        if (st) break;
        rq_q2_tensor *t = q2[i];
        size_t nb = (size_t)t->out * t->row_bytes;
        for (size_t b = 0; b + 8 <= nb; b += 8) {
            uint64_t r = rq_rng_u64(&rng);
            memcpy(t->codes + b, &r, 8);
        }
        uint16_t s = rq_f32_to_f16(0.9f / sqrtf((float)t->in)), m = rq_f32_to_f16(-1.35f / sqrtf((float)t->in));
        for (size_t k = 0; k < (size_t)t->out * t->n_groups; k++) t->scales[k] = s, t->offsets[k] = m;
    }
    /* the fp32 tensors */
    const size_t embed = (size_t)c->vocab_size * c->dim;
    size_t total = embed * (c->tie_embeddings ? 1 : 2) + (size_t)c->dim * (2 * c->n_layers + 1);
    float *buf = st == RQ_OK ? rq_calloc(total, sizeof(float), err) : NULL;
    if (st == RQ_OK && !buf) st = RQ_ERR_NOMEM;
    rq_tensor_table tab = {0};
    float *p = buf;
    char name[RQ_TENSOR_NAME_MAX];
    for (int k = 0; st == RQ_OK && k < 2 * c->n_layers + 3; k++) {
        size_t cnt;
        int64_t rows, cols = 0;
        float sc = 0.1f, base = 1.0f;
        if (k < 2 * c->n_layers) {
            snprintf(name, sizeof name, k % 2 ? "model.layers.%d.post_attention_layernorm.weight"
                                              : "model.layers.%d.input_layernorm.weight", k / 2);
            rows = c->dim;
        } else if (k == 2 * c->n_layers) {
            snprintf(name, sizeof name, "model.norm.weight");
            rows = c->dim;
        } else if (k == 2 * c->n_layers + 1) {
            snprintf(name, sizeof name, "model.embed_tokens.weight");
            rows = c->vocab_size, cols = c->dim, sc = 1.0f, base = 0.0f;
        } else {
            if (c->tie_embeddings) break;
            snprintf(name, sizeof name, "lm_head.weight");
            rows = c->vocab_size, cols = c->dim, sc = 1.0f / sqrtf((float)c->dim), base = 0.0f;
        }
        cnt = (size_t)rows * (cols ? (size_t)cols : 1);
        for (size_t j = 0; j < cnt; j++) p[j] = base + sc * (2.0f * rq_rng_uniform(&rng) - 1.0f) * 1.7320508f;
        rq_tensor_view v = {.dtype = RQ_F32, .ndim = cols ? 2 : 1, .data = (const uint8_t *)p,
                            .nbytes = cnt * sizeof(float), .file = "random model"};
        snprintf(v.name, sizeof v.name, "%s", name);
        v.shape[0] = rows, v.shape[1] = cols;
        st = rq_tensor_table_add(&tab, &v, err);
        p += cnt;
    }
    if (st == RQ_OK) st = rq_model_build_q2(c, &tab, q2, out, err);
    for (int i = 0; i < n_q2; i++) rq_q2_free(q2[i]); /* NULL where the model took them */
    free(q2);
    rq_tensor_table_free(&tab);
    free(buf);
    return st;
}

typedef struct synth {
    int T, V, dim;
} synth;

static rq_status get_example(void *user, int64_t ex, int *tokens, int *targets, float *teacher, int *len, rq_err *err) {
    (void)err;
    const synth *s = user;
    for (int t = 0; t < s->T; t++) {
        tokens[t] = (int)((ex * 7919 + t * 104729) % s->V);
        targets[t] = t + 1 < s->T ? (int)((ex * 7919 + (t + 1) * 104729) % s->V) : -1;
    }
    if (teacher) {
        uint32_t x = (uint32_t)ex * 2654435761u + 1;
        for (size_t i = 0; i < (size_t)s->T * s->dim; i++) {
            x ^= x << 13, x ^= x >> 17, x ^= x << 5;
            teacher[i] = (float)((int32_t)x) * (1.0f / 2147483648.0f);
        }
    }
    *len = s->T;
    return RQ_OK;
}

int main(int argc, char **argv) {
    rq_reexec_with_passive_openmp(argv);
    const char *device = "cuda", *shape_name = "llama2-7b";
    int steps = 3, accum = 8, T = 512, rank = 64, threads = 0;
    double peak = 989.0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) return fprintf(stderr, "bench_gpu_rilq: %s needs a value\n", a), 2;
        if (!strcmp(a, "--device")) device = v;
        else if (!strcmp(a, "--shape")) shape_name = v;
        else if (!strcmp(a, "--steps")) steps = atoi(v);
        else if (!strcmp(a, "--accum")) accum = atoi(v);
        else if (!strcmp(a, "--seq-len")) T = atoi(v);
        else if (!strcmp(a, "--rank")) rank = atoi(v);
        else if (!strcmp(a, "--peak-tflops")) peak = atof(v);
        else if (!strcmp(a, "--threads")) threads = atoi(v);
        else return fprintf(stderr, "bench_gpu_rilq: unknown option %s (see the comment at the top)\n", a), 2;
        i++;
    }
    if (steps < 1 || accum < 1 || T < 2 || rank < 1 || !(peak > 0) ||
        (strcmp(shape_name, "llama2-7b") != 0 && strcmp(shape_name, "smollm2") != 0))
        return fprintf(stderr, "bench_gpu_rilq: bad arguments\n"), 2;
    rq_err err = {0};
    rq_backend *be = NULL;
    if (rq_backend_create(device, threads, &be, &err) != RQ_OK) {
        printf("%s backend unavailable: %s\n", device, err.msg);
        return 0;
    }
    const rq_config c = shape(shape_name);
    rq_plan_opts po;
    rq_plan_default_opts(&po);
    po.device = !strcmp(device, "cuda") ? RQ_PLAN_CUDA : RQ_PLAN_CPU;
    po.r = rank, po.seq_len = T, po.micro_batch = 1, po.teacher_cached = true;
    rq_plan plan;
    rq_plan_flops fl;
    if (rq_plan_compute(&c, &po, &plan, &err)) return fprintf(stderr, "bench_gpu_rilq: %s\n", err.msg), 1;
    rq_plan_flops_compute(&c, &po, &fl);
    size_t free_b = 0, total_b = 0;
    if (be->mem_info(be, &free_b, &total_b, &err) == RQ_OK && plan.total > free_b) {
        printf("bench_gpu_rilq: the plan needs %.2f GiB on %s, %.2f GiB free: not run\n", plan.total / 1073741824.0,
               device, free_b / 1073741824.0);
        rq_backend_destroy(be);
        return 0;
    }
    rq_model *m = NULL;
    rq_adapter_set *ad = NULL;
    double t0 = rq_now_seconds();
    if (random_q2_model(&c, &m, &err)) return fprintf(stderr, "bench_gpu_rilq: %s\n", err.msg), 1;
    rq_adapter_config ac = {.type = RQ_ADAPTER_QALORA, .r = rank, .alpha = 16, .group_size = 64,
                            .targets = RQ_ADAPTER_ALL_PROJ, .init = RQ_INIT_GAUSSIAN, .seed = 1};
    if (rq_adapter_set_create(&c, &ac, be, &ad, &err)) return fprintf(stderr, "bench_gpu_rilq: %s\n", err.msg), 1;
    double build_s = rq_now_seconds() - t0;
    synth s = {T, c.vocab_size, c.dim};
    rq_train_data data = {get_example, &s, 1 << 20}, none = {get_example, &s, 0};
    rq_train_opts o;
    rq_train_default_opts(&o);
    o.seq_len = T, o.micro_batch = 1, o.accum = accum, o.shuffle = false, o.quiet = true;
    o.ce_weight = 0.5, o.mse_weight = 0.5;
    o.schedule = (rq_schedule){.kind = RQ_SCHED_CONSTANT, .lr = 1e-4};
    rq_train_result r;
    o.max_steps = 1; /* warm-up: first touch of every buffer, weight mirrors, GEMM plans */
    if (rq_train(m, be, ad, &data, &none, &o, NULL, NULL, &r, &err)) return fprintf(stderr, "bench_gpu_rilq: %s\n", err.msg), 1;
    double warm_s = r.seconds;
    o.max_steps = steps;
    if (rq_train(m, be, ad, &data, &none, &o, NULL, NULL, &r, &err)) return fprintf(stderr, "bench_gpu_rilq: %s\n", err.msg), 1;
    const double upd_s = r.seconds / steps, tokens = (double)T * accum;
    const double flops_upd = fl.total * accum, achieved = flops_upd / upd_s;
    printf("bench_gpu_rilq: %s shape (random q2 weights, group 64), QA-LoRA r=%d gs=64 on all 7 projections "
           "(%zu parameters), 1 x %d tokens x %d micro-batches per update, 0.5 MSE + 0.5 CE, device %s\n",
           shape_name, rank, ad->n_params, T, accum, device);
    printf("  model built in %.1f s; warm-up update %.3f s\n", build_s, warm_s);
    printf("  update: %.3f s (%d updates), %.0f tokens/s\n", upd_s, steps, tokens / upd_s);
    printf("  FLOPs per token %.2f G (projections %.1f%%, head %.1f%%, attention %.1f%%, adapters %.1f%%); "
           "per update %.2f TFLOP\n",
           fl.per_token / 1e9, 100 * (fl.proj_fwd + fl.proj_bwd) / fl.total, 100 * (fl.head_fwd + fl.head_bwd) / fl.total,
           100 * (fl.attn_fwd + fl.attn_bwd) / fl.total, 100 * (fl.adapter_fwd + fl.adapter_bwd) / fl.total,
           flops_upd / 1e12);
    printf("  achieved %.1f GFLOP/s = MFU %.2f%% of %.0f TFLOP/s (stated peak)\n", achieved / 1e9,
           100 * achieved / (peak * 1e12), peak);
    const double mib = 1048576.0;
    printf("  memory plan (training): %.1f MiB on the device (weights %.1f, adapters+grads+moments %.1f, activations "
           "%.1f, scratch %.1f%s); %s reported %.2f GiB free of %.2f before the run\n",
           plan.training / mib, (plan.weights_q2 + plan.weights_dense) / mib,
           (plan.adapters + plan.grads + plan.moments) / mib, plan.activations / mib, plan.scratch / mib,
           po.device == RQ_PLAN_CPU ? ", host buffers included" : "", device, free_b / 1073741824.0,
           total_b / 1073741824.0);
    if (be->mem_info(be, &free_b, &total_b, &err) == RQ_OK)
        printf("  after the run %s reports %.2f GiB free of %.2f\n", device, free_b / 1073741824.0,
               total_b / 1073741824.0);
    rq_adapter_set_free(ad);
    rq_model_free(m);
    rq_backend_destroy(be);
    return 0;
}
