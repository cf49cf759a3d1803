/* Benchmark: the adapter update users run, on the CPU backend, next to the
 * sgemm rate of the same BLAS measured in the same run, at the thread count
 * given (--threads N, default all cores). Prints figures; asserts nothing.
 *
 *   calibrate  the default RILQ update: SmolLM2-135M quantized to q2 (RTN, group 64),
 *              QA-LoRA r=64 alpha 16 gs 64 on all seven projections, 1 x 512 tokens,
 *              0.5 Model-Loss (final hidden states against a teacher's) + 0.5 GT-Loss
 *   finetune   the same student and adapters, one example of a 384-token source and
 *              a 128-token target, cross-entropy on the target only
 * One micro-step per optimizer step (forward + backward + Adam); the first step (first
 * touch of every buffer) is not timed.
 *
 * Model FLOPs: src/train/plan.c's rq_plan_flops_compute (projections, head and
 * causal attention forward, input gradients backward, adapters); for finetune
 * the head counts only the target rows (the rows whose logits a loss needs).
 *
 *   --ref-only  print only the sgemm reference and the calibrate FLOPs per token
 *               (tools/bench/bench_calib.sh reads them: key=value lines)
 *
 * Each figure twice: by the wall clock (the target's measure, on an idle machine) and by
 * the process's CPU time (step and sgemm alike), which a machine shared with other
 * programs disturbs much less.
 *
 * Needs RILQ_SMOLLM2 (the GGUF); without it a random model of the same shape. */
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "quant/quantize_model.h"
#include "train/plan.h"
#include "train/trainer.h"

/* CPU seconds of the whole process: on a shared machine the wall clock also counts
 * other programs' time slices, this only our threads' (spin-waits included) */
static double cpu_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double sgemm_cpu_gflops; /* the reference per CPU second of all threads, x threads */

static double sgemm_gflops(int M, int N, int K, int reps) {
    float *a = calloc((size_t)M * K, 4), *b = calloc((size_t)N * K, 4), *c = calloc((size_t)M * N, 4);
    for (size_t i = 0; i < (size_t)M * K; i++) a[i] = (float)(i % 7) * 0.1f;
    for (size_t i = 0; i < (size_t)N * K; i++) b[i] = (float)(i % 5) * 0.1f;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1, a, K, b, K, 0, c, N); /* warm-up */
    double t0 = rq_now_seconds(), c0 = cpu_seconds();
    for (int r = 0; r < reps; r++) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1, a, K, b, K, 0, c, N);
    double dt = rq_now_seconds() - t0, dc = cpu_seconds() - c0;
    free(a), free(b), free(c);
    double per_cpu = 2.0 * M * N * K * reps / dc / 1e9 * openblas_get_num_threads();
    if (per_cpu > sgemm_cpu_gflops) sgemm_cpu_gflops = per_cpu;
    return 2.0 * M * N * K * reps / dt / 1e9;
}

/* the better of a projection-shaped GEMM (T x hidden x dim) and a square one */
static double sgemm_reference(const rq_config *c, int T) {
    double ref = sgemm_gflops(T, c->hidden_dim, c->dim, 20), sq = sgemm_gflops(1024, 1024, 1024, 5);
    return sq > ref ? sq : ref;
}

typedef struct windows {
    int T, V, dim, n_src; /* n_src > 0: finetune-shaped, targets after n_src tokens only */
} windows;

static rq_status get_example(void *user, int64_t ex, int *tokens, int *targets, float *teacher, int *len, rq_err *err) {
    const windows *w = user;
    for (int t = 0; t < w->T; t++) {
        tokens[t] = (int)((ex * 7919 + t * 104729) % w->V);
        targets[t] = t + 1 < w->n_src ? -1 : (int)((ex * 7919 + (t + 1) * 104729) % w->V);
    }
    if (teacher)
        for (size_t i = 0; i < (size_t)w->T * w->dim; i++) teacher[i] = (float)((i * 2654435761u) % 1000) * 1e-3f - 0.5f;
    *len = w->T;
    return RQ_OK;
}

/* Steady-state seconds per step: the time between the end of the first step
 * and the end of the last (the first one touches every fresh buffer once). */
typedef struct step_clock {
    double first, last, cpu_first, cpu_last;
} step_clock;

static void on_step(void *user, int64_t step, double loss, double gnorm, double lr) {
    step_clock *c = user;
    (void)loss, (void)gnorm, (void)lr;
    if (step == 1) c->first = rq_now_seconds(), c->cpu_first = cpu_seconds();
    c->last = rq_now_seconds();
    c->cpu_last = cpu_seconds();
}

static double last_cpu_per_step; /* CPU seconds per step of the last step_seconds call */

static double step_seconds(const rq_model *m, rq_backend *be, rq_adapter_set *ad, windows *w, const rq_train_opts *base,
                           int steps, rq_err *err) {
    rq_train_data data = {get_example, w, 64}, none = {get_example, w, 0};
    rq_train_opts o = *base;
    rq_train_result r;
    step_clock clk = {0};
    o.max_steps = steps + 1;
    if (rq_train(m, be, ad, &data, &none, &o, on_step, &clk, &r, err)) return -1;
    last_cpu_per_step = (clk.cpu_last - clk.cpu_first) / steps;
    return (clk.last - clk.first) / steps;
}

int main(int argc, char **argv) {
    rq_reexec_with_passive_openmp(argv);
    int threads = 0, steps = 3;
    bool ref_only = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--steps") && i + 1 < argc) steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--ref-only")) ref_only = true;
        else return fprintf(stderr, "usage: bench_update [--threads N] [--steps S] [--ref-only]\n"), 2;
    }
    const int T = 512;
    rq_err err = {0};
    rq_model *m = NULL;
    rq_backend *be = NULL;
    rq_adapter_set *ad = NULL;
    if (rq_backend_cpu_create(threads, &be, &err)) return fprintf(stderr, "bench_update: %s\n", err.msg), 1;
    const char *real = getenv("RILQ_SMOLLM2");
    rq_config cfg = {.dim = 576, .hidden_dim = 1536, .n_layers = 30, .n_heads = 9, .n_kv_heads = 3,
                     .head_dim = 64, .vocab_size = 49152, .max_seq_len = 8192, .norm_eps = 1e-5f,
                     .rope_theta = 100000.0f, .tie_embeddings = true, .bos_id = 1};
    rq_plan_opts po;
    rq_plan_default_opts(&po);
    rq_plan_flops calib_flops;
    rq_plan_flops_compute(&cfg, &po, &calib_flops);
    const double ref = sgemm_reference(&cfg, T);
    if (ref_only) {
        printf("threads=%d\nsgemm_gflops=%.3f\ncalib_flops_per_token=%.6e\n", be->n_threads, ref,
               calib_flops.per_token);
        rq_backend_destroy(be);
        return 0;
    }
    if (real && *real && rq_model_load(real, NULL, &m, &err) != RQ_OK)
        return fprintf(stderr, "bench_update: %s\n", err.msg), 1;
    if (!m && rq_model_random(&cfg, 1, &m, &err)) return fprintf(stderr, "bench_update: %s\n", err.msg), 1;
    rq_model_quant_opts qo;
    rq_model_quant_opts_default(&qo);
    if (rq_model_quantize(m, &qo, NULL, &err)) return fprintf(stderr, "bench_update: %s\n", err.msg), 1;
    const rq_config *c = &m->cfg;
    rq_adapter_config ac = {.type = RQ_ADAPTER_QALORA, .r = 64, .alpha = 16, .group_size = 64,
                            .targets = RQ_ADAPTER_ALL_PROJ, .init = RQ_INIT_GAUSSIAN, .seed = 1};
    if (rq_adapter_set_create(c, &ac, be, &ad, &err)) return fprintf(stderr, "bench_update: %s\n", err.msg), 1;
    rq_train_opts o;
    rq_train_default_opts(&o);
    o.seq_len = T;
    o.micro_batch = 1;
    o.accum = 1;
    o.quiet = true;
    o.optim = rq_optim_defaults(RQ_OPTIM_ADAMW);
    printf("bench_update: %s, q2 (RTN g64) student, QA-LoRA r=64 on all 7 projections (%zu parameters), %d threads\n",
           real && *real ? "SmolLM2-135M (GGUF weights)" : "SmolLM2-135M shape (random weights)", ad->n_params,
           be->n_threads);
    printf("  sgemm reference (same BLAS, this run, %d threads): %.1f GFLOP/s (per CPU time: %.1f)\n", be->n_threads, ref,
           sgemm_cpu_gflops);
    /* calibrate: 0.5 Model-Loss on the final hidden states + 0.5 GT-Loss over the window */
    windows wc = {.T = T, .V = c->vocab_size, .dim = c->dim, .n_src = 0};
    o.ce_weight = 0.5;
    o.mse_weight = 0.5;
    double s_cal = step_seconds(m, be, ad, &wc, &o, steps, &err);
    if (s_cal < 0) return fprintf(stderr, "bench_update: %s\n", err.msg), 1;
    double g_cal = calib_flops.total / s_cal / 1e9;
    printf("  calibrate update (1 x %d, Model-Loss + GT-Loss): %.3f s/micro-step, %.0f tokens/s, %.2f GFLOP/token, "
           "%.1f GFLOP/s; ratio to sgemm %.1f%% (target >= 50%%); CPU time %.3f s/micro-step, "
           "ratio by CPU time %.1f%%\n",
           T, s_cal, T / s_cal, calib_flops.per_token / 1e9, g_cal, 100.0 * g_cal / ref, last_cpu_per_step,
           100.0 * calib_flops.total / (last_cpu_per_step / be->n_threads) / 1e9 / sgemm_cpu_gflops);
    /* finetune: source 384 + target 128 in one example of 512 tokens (511 positions), CE on the target */
    const int n_src = 384, n_tgt = 128;
    windows wf = {.T = n_src + n_tgt - 1, .V = c->vocab_size, .dim = c->dim, .n_src = n_src};
    o.seq_len = wf.T;
    o.ce_weight = 1.0;
    o.mse_weight = 0.0;
    po.stage = RQ_PLAN_FINETUNE;
    po.mse_weight = 0.0;
    po.ce_weight = 1.0;
    po.seq_len = wf.T;
    rq_plan_flops ff;
    rq_plan_flops_compute(c, &po, &ff);
    double ft_total = ff.total - (ff.head_fwd + ff.head_bwd) * (1.0 - (double)n_tgt / wf.T);
    double s_ft = step_seconds(m, be, ad, &wf, &o, steps, &err);
    if (s_ft < 0) return fprintf(stderr, "bench_update: %s\n", err.msg), 1;
    double g_ft = ft_total / s_ft / 1e9;
    printf("  finetune update (source %d + target %d, CE on the target): %.3f s/micro-step, %.0f tokens/s, %.1f GFLOP/s; "
           "ratio to sgemm %.1f%% (target >= 50%%); CPU time %.3f s/micro-step, ratio by CPU time %.1f%%\n",
           n_src, n_tgt, s_ft, wf.T / s_ft, g_ft, 100.0 * g_ft / ref, last_cpu_per_step,
           100.0 * ft_total / (last_cpu_per_step / be->n_threads) / 1e9 / sgemm_cpu_gflops);
    rq_adapter_set_free(ad);
    rq_backend_destroy(be);
    rq_model_free(m);
    return 0;
}
