/* Benchmark: one training step (forward + backward + Adam) of QA-LoRA r=16 on
 * all seven projections of a SmolLM2-135M-shaped model at B=1, T=512, fp32 CPU,
 * next to this machine's sgemm rate measured in the same run; plus the memory
 * plan against the peak RSS. Prints figures; asserts nothing.
 *
 * Model FLOPs of a step (the base is frozen, so no weight gradients):
 *   forward  2 * (projection weights + head) per token + attention 4 * L * Tavg * nh * hd
 *   backward 2 * (projection weights + head) per token (input gradients) + attention 2x forward
 * Adapter FLOPs (r=16) are < 1% and not counted. (src/train/plan.c's rq_plan_flops_compute
 * counts the same terms and the adapters besides.) The memory plan is rq_plan_compute's. */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>

#include "train/plan.h"
#include "train/trainer.h"

static double sgemm_gflops(int M, int N, int K, int reps) {
    float *a = calloc((size_t)M * K, 4), *b = calloc((size_t)N * K, 4), *c = calloc((size_t)M * N, 4);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1, a, K, b, K, 0, c, N);
    double t0 = rq_now_seconds();
    for (int r = 0; r < reps; r++) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1, a, K, b, K, 0, c, N);
    double dt = rq_now_seconds() - t0;
    free(a), free(b), free(c);
    return 2.0 * M * N * K * reps / dt / 1e9;
}

typedef struct windows {
    int T, V;
} windows;

static rq_status get_example(void *user, int64_t ex, int *tokens, int *targets, float *teacher, int *len, rq_err *err) {
    const windows *w = user;
    for (int t = 0; t < w->T; t++) {
        tokens[t] = (int)((ex * 7919 + t * 104729) % w->V);
        targets[t] = (int)((ex * 7919 + (t + 1) * 104729) % w->V);
    }
    return RQ_OK;
}

int main(int argc, char **argv) {
    rq_reexec_with_passive_openmp(argv);
    const int T = 512, steps = argc > 1 ? atoi(argv[1]) : 3;
    rq_err err = {0};
    rq_model *m = NULL;
    rq_backend *be = NULL;
    rq_adapter_set *ad = NULL;
    const char *real = getenv("RILQ_SMOLLM2");
    if (real && *real && rq_model_load(real, NULL, &m, &err) != RQ_OK) {
        fprintf(stderr, "bench_train: %s\n", err.msg);
        return 1;
    }
    if (!m) {
        rq_config cfg = {.dim = 576, .hidden_dim = 1536, .n_layers = 30, .n_heads = 9, .n_kv_heads = 3,
                         .head_dim = 64, .vocab_size = 49152, .max_seq_len = 8192, .norm_eps = 1e-5f,
                         .rope_theta = 100000.0f, .tie_embeddings = true, .bos_id = 1};
        if (rq_model_random(&cfg, 1, &m, &err)) return fprintf(stderr, "bench_train: %s\n", err.msg), 1;
    }
    const rq_config *c = &m->cfg;
    rq_adapter_config ac = {.type = RQ_ADAPTER_QALORA, .r = 16, .alpha = 16, .group_size = 64,
                            .targets = RQ_ADAPTER_ALL_PROJ, .init = RQ_INIT_GAUSSIAN, .seed = 1};
    if (rq_backend_cpu_create(0, &be, &err) || rq_adapter_set_create(c, &ac, be, &ad, &err))
        return fprintf(stderr, "bench_train: %s\n", err.msg), 1;
    windows w = {T, c->vocab_size};
    rq_train_data data = {get_example, &w, 64}, none = {get_example, &w, 0};
    rq_train_opts o;
    rq_train_default_opts(&o);
    o.seq_len = T;
    o.micro_batch = 1;
    o.accum = 1;
    o.quiet = true;
    o.max_steps = 1; /* warm-up step: first-touch of every buffer */
    rq_train_result r;
    if (rq_train(m, be, ad, &data, &none, &o, NULL, NULL, &r, &err)) return fprintf(stderr, "bench_train: %s\n", err.msg), 1;
    o.max_steps = steps;
    if (rq_train(m, be, ad, &data, &none, &o, NULL, NULL, &r, &err)) return fprintf(stderr, "bench_train: %s\n", err.msg), 1;
    double step_s = r.seconds / steps;
    const double qd = (double)c->n_heads * c->head_dim, kvd = (double)c->n_kv_heads * c->head_dim;
    double proj = c->n_layers * (c->dim * qd * 2 + c->dim * kvd * 2 + 3.0 * c->dim * c->hidden_dim);
    double head = (double)c->vocab_size * c->dim;
    double attn_fwd = 4.0 * c->n_layers * ((T + 1) / 2.0) * c->n_heads * c->head_dim;
    double flops_tok = 2 * 2.0 * (proj + head) + 3.0 * attn_fwd;
    double gflops = flops_tok * T / step_s / 1e9;
    double ref = sgemm_gflops(T, c->hidden_dim, c->dim, 20);
    double ref2 = sgemm_gflops(1024, 1024, 1024, 5);
    if (ref2 > ref) ref = ref2;
    /* the memory plan against the peak resident set */
    rq_plan_opts po;
    rq_plan_default_opts(&po);
    po.stage = RQ_PLAN_FINETUNE;
    po.mse_weight = 0, po.ce_weight = 1;
    po.r = ac.r, po.adapter_group_size = ac.group_size, po.micro_batch = 1, po.seq_len = T;
    po.student_q2 = false; /* the model is fp32 (GGUF weights are dequantized on load) */
    rq_plan pl;
    if (rq_plan_compute(c, &po, &pl, &err)) return fprintf(stderr, "bench_train: %s\n", err.msg), 1;
    double mib = 1048576.0, adb = (double)pl.adapters, act = (double)pl.activations, plan = (double)pl.training;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("bench_train: %s, QA-LoRA r=16 gs=64 on all 7 projections (%zu parameters), B=1 T=%d, fp32 CPU, %d threads\n",
           real && *real ? "SmolLM2-135M (GGUF weights)" : "SmolLM2-135M shape (random weights)", ad->n_params, T,
           be->n_threads);
    printf("  step (forward + backward + Adam): %.3f s, %.0f tokens/s, %.2f GFLOP/token, %.1f GFLOP/s\n", step_s,
           T / step_s, flops_tok / 1e9, gflops);
    printf("  sgemm reference (same BLAS, this run): %.1f GFLOP/s; ratio %.1f%% (target >= 40%%)\n", ref,
           100.0 * gflops / ref);
    printf("  memory plan: weights %.1f MiB + adapters %.1f + grads %.1f + moments %.1f + activations %.1f + host "
           "buffers %.1f = %.1f MiB; peak RSS %.1f MiB (plan/RSS %.3f)\n",
           (double)pl.weights_dense / mib, adb / mib, adb / mib, 2 * adb / mib, act / mib, (double)pl.host / mib,
           plan / mib, ru.ru_maxrss / 1024.0, plan / 1024.0 / (double)ru.ru_maxrss);
    /* the backend's own buffers are outside the CPU plan (see src/train/plan.h); the rest of the RSS
       is the program, its libraries and OpenMP/OpenBLAS thread stacks and buffers */
    double be_scratch = (double)be->scratch_bytes(be, c, 1, T, true, po.student_q2);
    printf("  CPU backend scratch (be->scratch_bytes, outside the plan): %.1f MiB; plan + scratch %.1f MiB "
           "(/RSS %.3f)\n",
           be_scratch / mib, (plan + be_scratch) / mib, (plan + be_scratch) / 1024.0 / (double)ru.ru_maxrss);
    rq_adapter_set_free(ad);
    rq_backend_destroy(be);
    rq_model_free(m);
    return 0;
}
