/* Benchmark: eval-forward speed of a SmolLM2-135M-shaped model (random
 * weights, fp32 CPU backend) at B=4, T=256, next to the sgemm rate the same
 * BLAS reaches on this machine in the same run. Prints figures; asserts nothing.
 *
 * Model FLOPs per token = 2 * (linear weights + head) + attention
 * (QK^T and PV: 2 * 2 * n_layers * T_avg * n_heads * head_dim, causal so T_avg = (T+1)/2). */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>

#include "model/forward.h"

static double sgemm_gflops(int M, int N, int K, int reps) {
    float *a = calloc((size_t)M * K, 4), *b = calloc((size_t)N * K, 4), *c = calloc((size_t)M * N, 4);
    for (size_t i = 0; i < (size_t)M * K; i++) a[i] = (float)(i % 7) * 0.1f;
    for (size_t i = 0; i < (size_t)N * K; i++) b[i] = (float)(i % 5) * 0.1f;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1, a, K, b, K, 0, c, N); /* warm-up */
    double t0 = rq_now_seconds();
    for (int r = 0; r < reps; r++) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1, a, K, b, K, 0, c, N);
    double dt = rq_now_seconds() - t0;
    free(a), free(b), free(c);
    return 2.0 * M * N * K * reps / dt / 1e9;
}

int main(int argc, char **argv) {
    rq_reexec_with_passive_openmp(argv);
    int B = 4, T = 256, iters = 3;
    if (argc > 1) iters = atoi(argv[1]);
    rq_config cfg = {.dim = 576, .hidden_dim = 1536, .n_layers = 30, .n_heads = 9, .n_kv_heads = 3, .head_dim = 64,
                     .vocab_size = 49152, .max_seq_len = 8192, .norm_eps = 1e-5f, .rope_theta = 100000.0f,
                     .tie_embeddings = true, .bos_id = 1};
    rq_err err = {0};
    rq_model *m = NULL;
    rq_backend *be = NULL;
    rq_forward_state *fs = NULL;
    if (rq_model_random(&cfg, 1, &m, &err) || rq_backend_cpu_create(0, &be, &err)) {
        fprintf(stderr, "bench_forward: %s\n", err.msg);
        return 1;
    }
    rq_forward_opts fo = {.max_batch = B, .max_seq = T};
    if (rq_forward_create(m, be, &fo, &fs, &err)) {
        fprintf(stderr, "bench_forward: %s\n", err.msg);
        return 1;
    }
    int *tok = malloc(sizeof(int) * B * T);
    for (int i = 0; i < B * T; i++) tok[i] = (i * 7919) % cfg.vocab_size;
    int *rows = malloc(sizeof(int) * B * T);
    for (int i = 0; i < B * T; i++) rows[i] = i;
    float *logits = malloc(sizeof(float) * (size_t)B * T * cfg.vocab_size / 8);
    /* the eval forward: all layers + the head over every position (in chunks) */
    double best = 1e30;
    for (int it = 0; it <= iters; it++) {
        double t0 = rq_now_seconds();
        rq_forward_run(fs, tok, B, T, 0, &err);
        for (int r0 = 0; r0 < B * T; r0 += B * T / 8) rq_forward_logits(fs, rows + r0, B * T / 8, logits, &err);
        double dt = rq_now_seconds() - t0;
        if (it > 0 && dt < best) best = dt; /* iteration 0 warms up */
    }
    const double qd = cfg.n_heads * cfg.head_dim, kvd = cfg.n_kv_heads * cfg.head_dim;
    double linear = cfg.n_layers * (cfg.dim * qd * 2 + cfg.dim * kvd * 2 + 3.0 * cfg.dim * cfg.hidden_dim);
    double head = (double)cfg.vocab_size * cfg.dim;
    double attn = 2.0 * 2.0 * cfg.n_layers * ((T + 1) / 2.0) * cfg.n_heads * cfg.head_dim;
    double flops_per_tok = 2.0 * (linear + head) + attn;
    double tokens = (double)B * T;
    double gflops = flops_per_tok * tokens / best / 1e9;
    /* the reference: sgemm at the shapes the model runs (tokens x in x out) and a large square */
    double ref_model = sgemm_gflops(B * T, cfg.hidden_dim, cfg.dim, 10);
    double ref_square = sgemm_gflops(1024, 1024, 1024, 5);
    double ref = ref_model > ref_square ? ref_model : ref_square;
    printf("bench_forward: SmolLM2-135M shape (30 layers, dim 576, ffn 1536, 9/3 heads, vocab 49152), fp32 CPU, "
           "%d threads\n", be->n_threads);
    printf("  forward B=%d T=%d: %.3f s per batch, %.0f tokens/s, %.2f GFLOP/token, %.1f GFLOP/s\n", B, T, best,
           tokens / best, flops_per_tok / 1e9, gflops);
    printf("  sgemm reference (same BLAS, this run): %.1f GFLOP/s at %dx%dx%d, %.1f GFLOP/s at 1024^3\n", ref_model,
           B * T, cfg.hidden_dim, cfg.dim, ref_square);
    printf("  ratio: %.1f%% of the best sgemm rate (target >= 50%%)\n", 100.0 * gflops / ref);
    free(tok);
    free(rows);
    free(logits);
    rq_forward_free(fs);
    rq_backend_destroy(be);
    rq_model_free(m);
    return 0;
}
