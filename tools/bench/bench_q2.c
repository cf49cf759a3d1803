/* Dequantization throughput of the q2 tensor (the CPU backend's hot path).
 *
 * For a 1536 x 576 and a 4096 x 11008 tensor (group size 64), single thread and
 * all threads, three ways:
 *   whole   rq_q2_dequant_rows over all rows into one fp32 buffer (bound by
 *           writing fp32 to memory for the large tensor);
 *   tiles   256 KiB tiles of rows into one reused buffer per thread, as the backend does before
 *           each GEMM (the output stays in cache: the compute-bound figure);
 *   naive   the defining formula per weight (rq_q2_weight): the reference the
 *           fast path is compared against;
 * and memset of the same fp32 output as the memory-write ceiling. Then the
 * quantizers' throughput on the large shape (RTN, NF2, each with and without
 * the clipping search), all threads. Prints only;
 * a benchmark never asserts a time. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/core.h"
#include "quant/q2.h"
#include "quant/quantize.h"

static uint64_t rng = 0x243f6a8885a308d3ULL;
static uint64_t next_u64(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static volatile float sink;

typedef struct bench_case {
    const rq_q2_tensor *t;
    float *dst;
    float *tiles; /* [threads][tile rows][in]: one cache-resident tile per thread */
    int n_threads;
} bench_case;

static void run_whole(const bench_case *c) { rq_q2_dequant_rows(c->t, 0, c->t->out, c->dst, c->n_threads); }

/* Rows per tile: 256 KiB of fp32, which stays in L2 for the GEMM that follows. */
static int tile_rows(int in) { return in >= 65536 ? 1 : 65536 / in; }

static void run_tiles(const bench_case *c) {
    const int tile = tile_rows(c->t->in);
    if (c->n_threads == 1) {
        for (int r0 = 0; r0 < c->t->out; r0 += tile)
            rq_q2_dequant_rows(c->t, r0, r0 + tile < c->t->out ? r0 + tile : c->t->out, c->tiles, 1);
        return;
    }
    /* each thread its own cache-resident tile buffer */
#pragma omp parallel num_threads(c->n_threads)
    {
        float *mine = c->tiles + (size_t)omp_get_thread_num() * (size_t)tile * (size_t)c->t->in;
#pragma omp for schedule(static)
        for (int r0 = 0; r0 < c->t->out; r0 += tile)
            rq_q2_dequant_rows(c->t, r0, r0 + tile < c->t->out ? r0 + tile : c->t->out, mine, 1);
    }
}

static void run_naive(const bench_case *c) {
    const rq_q2_tensor *t = c->t;
#pragma omp parallel for schedule(static) num_threads(c->n_threads)
    for (int o = 0; o < t->out; o++)
        for (int i = 0; i < t->in; i++) c->dst[(size_t)o * t->in + i] = rq_q2_weight(t, o, i);
}

static void run_memset(const bench_case *c) {
    size_t n = (size_t)c->t->out * c->t->in;
#pragma omp parallel num_threads(c->n_threads)
    {
        int nt = omp_get_num_threads(), id = omp_get_thread_num();
        size_t a = n * id / nt, b = n * (id + 1) / nt;
        memset(c->dst + a, 0, (b - a) * sizeof(float));
    }
}

/* Seconds per call: repeat until at least 0.3 s has passed, best of 3 rounds. */
static double time_it(void (*fn)(const bench_case *), const bench_case *c) {
    fn(c); /* warm up: page faults, thread pool */
    double best = 1e30;
    for (int round = 0; round < 3; round++) {
        int reps = 0;
        double t0 = rq_now_seconds(), el;
        do {
            fn(c);
            reps++;
            el = rq_now_seconds() - t0;
        } while (el < 0.3);
        if (el / reps < best) best = el / reps;
    }
    sink = c->dst[0];
    return best;
}

int main(int argc, char **argv) {
    (void)argc;
    rq_reexec_with_passive_openmp(argv);
    const struct { int out, in; const char *what; } shapes[] = {
        {1536, 576, "1536x576 (SmolLM2-135M gate/up)"},
        {4096, 11008, "4096x11008 (LLaMA-2-7B down_proj^T shape)"},
    };
    const int gs = 64;
    int all = omp_get_max_threads();
    printf("q2 dequant benchmark: group size %d, %s loops, %d threads available\n", gs, rq_q2_dequant_isa(), all);
    printf("%-44s %7s %-7s %9s %10s %8s\n", "tensor", "threads", "method", "ms", "GB/s fp32", "Gw/s");
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        rq_err err = {0};
        rq_q2_tensor *t = NULL;
        if (rq_q2_create(shapes[s].out, shapes[s].in, gs, RQ_Q2_NF2, &t, &err) != RQ_OK) {
            fprintf(stderr, "bench_q2: %s\n", err.msg);
            return 1;
        }
        for (size_t i = 0; i < (size_t)t->out * t->row_bytes; i++) t->codes[i] = (uint8_t)next_u64();
        for (size_t i = 0; i < (size_t)t->out * t->n_groups; i++) {
            t->scales[i] = rq_f32_to_f16(0.01f + (float)(next_u64() % 1000) * 1e-5f);
            t->offsets[i] = rq_f32_to_f16((float)(next_u64() % 1000) * 1e-5f - 0.005f);
        }
        size_t n = (size_t)t->out * t->in;
        float *dst = rq_alloc_aligned(n * sizeof(float), &err);
        float *tiles = dst ? rq_alloc_aligned((size_t)all * tile_rows(t->in) * t->in * sizeof(float), &err) : NULL;
        if (!tiles) {
            fprintf(stderr, "bench_q2: %s\n", err.msg);
            return 1;
        }
        const int threads[2] = {1, all};
        for (int k = 0; k < 2; k++) {
            if (k == 1 && all == 1) break;
            bench_case c = {t, dst, tiles, threads[k]};
            double t_whole = time_it(run_whole, &c), t_tiles = time_it(run_tiles, &c);
            double t_naive = time_it(run_naive, &c), t_set = time_it(run_memset, &c);
            const char *names[4] = {"whole", "tiles", "naive", "memset"};
            double times[4] = {t_whole, t_tiles, t_naive, t_set};
            for (int m = 0; m < 4; m++)
                printf("%-44s %7d %-7s %9.3f %10.2f %8.2f\n", shapes[s].what, threads[k], names[m], times[m] * 1e3,
                       n * 4.0 / times[m] / 1e9, n / times[m] / 1e9);
            printf("%-44s %7d ratios: whole %.1fx naive, tiles %.1fx naive, whole at %.0f%% of memset\n", "",
                   threads[k], t_naive / t_whole, t_naive / t_tiles, 100.0 * t_set / t_whole);
        }
        if (s == sizeof shapes / sizeof *shapes - 1) { /* quantizers, on the large shape */
            float *w = dst;
            for (size_t i = 0; i < n; i++) w[i] = (float)((int64_t)(next_u64() % 2001) - 1000) * 2e-5f;
            for (int method = 0; method < 2; method++)
                for (int clip = 0; clip < 2; clip++) {
                    rq_quant_opts o;
                    rq_quant_opts_default(&o);
                    o.method = (rq_quant_method)method;
                    o.clip_search = clip;
                    rq_q2_tensor *q = NULL;
                    double t0 = rq_now_seconds();
                    if (rq_quantize(w, t->out, t->in, &o, "bench", &q, &err) != RQ_OK) {
                        fprintf(stderr, "bench_q2: %s\n", err.msg);
                        return 1;
                    }
                    double el = rq_now_seconds() - t0;
                    printf("quantize %s%s %s, %d threads: %.1f ms, %.3f Gw/s\n", rq_quant_method_name(o.method),
                           clip ? " + clip search" : "", shapes[s].what, all, el * 1e3, n / el / 1e9);
                    rq_q2_free(q);
                }
        }
        free(dst);
        free(tiles);
        rq_q2_free(t);
    }
    return 0;
}
