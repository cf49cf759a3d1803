/* Benchmark: greedy decode speed (tokens/s of the one-token steps after the
 * prompt, KV cache) of a 2-bit model on the CPU backend, at 1 and 2 threads.
 *
 * Figure: rq_generate as `rilq generate` and GSM8K evaluation run it (decode
 * steps through the matrix-vector kernels, src/backend/cpu_matvec.c).
 * Reference, measured in the same run and interleaved with the figure:
 *   llama.cpp's decode speed on the same model exported with `rilq export
 *   --format gguf` (llama-bench, tg of the same number of tokens after a
 *   context of the prompt's length, same threads), when llama-bench is found
 *   at $RILQ_LLAMA_BENCH or ${RILQ_CACHE:-$HOME/.cache/rilq}/llama.cpp-b11434/bin/llama-bench;
 *   always also the GEMM path the decode steps took before the kernels
 *   (q2 rows dequantized into a tile, then sgemm; the backend without
 *   linear_rows), which is the reference when llama.cpp is missing.
 * Prints figures and ratios; asserts nothing. Repetitions alternate between
 * the paths; medians are printed, with the machine load before and after.
 *
 * usage: bench_decode [MODEL] [--tokens N] [--reps R] [--threads "1 2"]
 * MODEL: a rilq 2-bit artifact, or any model rilq loads (then quantized in
 * memory: RTN, group 64, all seven projections); default $RILQ_SMOLLM2. */
#define _POSIX_C_SOURCE 200809L
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "backend/cpu_matvec.h"
#include "model/generate.h"
#include "io/export.h"
#include "model/model.h"
#include "quant/quantize_model.h"
#include "rilq.h"

/* A GSM8K-style question (the decode workload of evaluation), the same text every run. */
static const char *prompt_text =
    "Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?\nAnswer:";

typedef struct timing {
    int n;
    double first, last; /* times of the first and the last new token */
} timing;

static bool on_token(void *user, int id) {
    timing *t = user;
    double now = rq_now_seconds();
    if (t->n++ == 0) t->first = now;
    t->last = now;
    return true;
}

/* Decode tokens/s of one generation: the steps after the first new token (which the prefill produces). */
static double decode_rate(const rq_model *m, rq_backend *be, const int *ids, int n_ids, int n_new, bool kernels) {
    rq_err err = {0};
    void (*rows)(rq_backend *, float *, const float *, const rq_linear *, int, bool) = be->linear_rows;
    if (!kernels) be->linear_rows = NULL;
    rq_sample_opts so = {.max_new = n_new};
    timing t = {0};
    int *out = NULL, n_out = 0;
    rq_status st = rq_generate(m, be, ids, n_ids, &so, NULL, 0, on_token, &t, &out, &n_out, &err);
    be->linear_rows = rows;
    free(out);
    if (st != RQ_OK) {
        fprintf(stderr, "bench_decode: %s\n", err.msg);
        return 0.0;
    }
    return t.n > 1 && t.last > t.first ? (t.n - 1) / (t.last - t.first) : 0.0;
}

/* llama-bench's avg_ts for tg n_new after a context of depth tokens, threads th, one repetition; 0 on failure. */
static double llama_rate(const char *bin, const char *gguf, int depth, int n_new, int th) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "'%s' -m '%s' -p 0 -n %d -d %d -t %d -r 1 -o json 2>/dev/null", bin, gguf, n_new, depth,
             th);
    FILE *p = popen(cmd, "r");
    if (!p) return 0.0;
    size_t len = 0, cap = 1 << 16;
    char *text = malloc(cap);
    for (size_t got; text && (got = fread(text + len, 1, cap - 1 - len, p)) > 0;) {
        len += got;
        if (len + 1 == cap) {
            char *t = realloc(text, cap *= 2);
            if (!t) break;
            text = t;
        }
    }
    int rc = pclose(p);
    double rate = 0.0;
    if (text) {
        text[len] = 0;
        cJSON *doc = rc == 0 ? cJSON_Parse(text) : NULL; /* an array of one result object */
        const cJSON *first = cJSON_IsArray(doc) ? cJSON_GetArrayItem(doc, 0) : NULL;
        const cJSON *ts = first ? cJSON_GetObjectItemCaseSensitive(first, "avg_ts") : NULL;
        if (cJSON_IsNumber(ts)) rate = ts->valuedouble;
        cJSON_Delete(doc);
    }
    free(text);
    return rate;
}

static double median(double *v, int n) {
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && v[j] < v[j - 1]; j--) {
            double t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static void print_load(const char *when) {
    double load[3] = {0};
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (fscanf(f, "%lf %lf %lf", &load[0], &load[1], &load[2]) != 3) load[0] = -1;
        fclose(f);
    }
    printf("  machine load %s: %.2f %.2f %.2f (1, 5, 15 min) on %ld cores\n", when, load[0], load[1], load[2],
           sysconf(_SC_NPROCESSORS_ONLN));
}

int main(int argc, char **argv) {
    rq_reexec_with_passive_openmp(argv); /* as `rilq` runs */
    const char *path = getenv("RILQ_SMOLLM2"), *threads = "1 2";
    int n_new = 64, reps = 3;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--tokens") && i + 1 < argc) n_new = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = argv[++i];
        else if (argv[i][0] != '-') path = argv[i];
        else {
            fprintf(stderr, "usage: bench_decode [MODEL] [--tokens N] [--reps R] [--threads \"1 2\"]\n");
            return 2;
        }
    }
    if (reps < 1 || reps > 64) reps = 3;
    if (n_new < 2) n_new = 2;
    if (!path) {
        fprintf(stderr, "bench_decode: give MODEL or set RILQ_SMOLLM2\n");
        return 2;
    }
    rq_err err = {0};
    rq_model *m = NULL;
    if (rq_model_load(path, NULL, &m, &err) != RQ_OK) {
        fprintf(stderr, "bench_decode: %s\n", err.msg);
        return 1;
    }
    bool quantized_here = !m->layers[0].wq.q2;
    if (quantized_here) {
        rq_model_quant_opts qo;
        rq_model_quant_opts_default(&qo);
        if (rq_model_quantize(m, &qo, NULL, &err) != RQ_OK) {
            fprintf(stderr, "bench_decode: %s\n", err.msg);
            return 1;
        }
    }
    int *ids = NULL, n_ids = 0;
    if (!m->tok || rq_tokenizer_encode(m->tok, prompt_text, strlen(prompt_text), RQ_BOS_DEFAULT, &ids, &n_ids, &err)) {
        fprintf(stderr, "bench_decode: the model needs a tokenizer (%s)\n", err.msg);
        return 1;
    }
    if (n_ids + n_new > m->cfg.max_seq_len) n_new = m->cfg.max_seq_len - n_ids;
    /* the GEMM path is several times slower: fewer steps measure its rate as well */
    const int n_old = n_new < 16 ? n_new : 16;

    /* the reference program and the model in its format */
    char llama[2048], gguf[] = "/tmp/bench_decode_XXXXXX";
    const char *lb = getenv("RILQ_LLAMA_BENCH"), *cache = getenv("RILQ_CACHE"), *home = getenv("HOME");
    if (lb) snprintf(llama, sizeof llama, "%s", lb);
    else if (cache) snprintf(llama, sizeof llama, "%s/llama.cpp-b11434/bin/llama-bench", cache);
    else snprintf(llama, sizeof llama, "%s/.cache/rilq/llama.cpp-b11434/bin/llama-bench", home ? home : "");
    bool have_llama = access(llama, X_OK) == 0;
    if (have_llama) {
        int fd = mkstemp(gguf);
        if (fd >= 0) close(fd);
        rq_export_report rep;
        if (fd < 0 || rq_export_gguf(m, gguf, NULL, &rep, &err) != RQ_OK) {
            fprintf(stderr, "bench_decode: exporting the GGUF for llama.cpp failed: %s\n", err.msg);
            have_llama = false;
        }
    }

    printf("bench_decode: %s (%s, %d layers, dim %d, vocab %d), 2-bit %s, group %d; head/embedding fp32\n", path,
           quantized_here ? "quantized here: rtn" : "artifact", m->cfg.n_layers, m->cfg.dim, m->cfg.vocab_size,
           m->quant.method[0] ? m->quant.method : "rtn", m->layers[0].wq.q2->group_size);
    printf("  prompt %d tokens, then %d greedy tokens (GEMM path: %d); decode tokens/s = steps after the first new "
           "token; median of %d alternating repetitions; matvec variant %s\n",
           n_ids, n_new, n_old, reps, rq_matvec_isa_name(rq_matvec_isa_best()));
    if (have_llama)
        printf("  reference: llama.cpp %s on the exported GGUF (tg%d at depth %d, same threads)\n", llama, n_new,
               n_ids);
    else
        printf("  llama.cpp is missing (%s): the reference is the GEMM path decode took before\n", llama);
    print_load("before");
    char list[256];
    snprintf(list, sizeof list, "%s", threads);
    char *save = NULL;
    for (char *tk = strtok_r(list, " ,", &save); tk; tk = strtok_r(NULL, " ,", &save)) {
        int th = atoi(tk);
        if (th < 1) continue;
        rq_backend *be = NULL;
        if (rq_backend_cpu_create(th, &be, &err) != RQ_OK) {
            fprintf(stderr, "bench_decode: %s\n", err.msg);
            return 1;
        }
        decode_rate(m, be, ids, n_ids, 8, true); /* warm-up: page in the weights */
        double fig[64], old[64], ref[64];
        int n_ref = 0;
        for (int r = 0; r < reps; r++) {
            fig[r] = decode_rate(m, be, ids, n_ids, n_new, true);
            old[r] = decode_rate(m, be, ids, n_ids, n_old, false);
            if (have_llama) {
                double x = llama_rate(llama, gguf, n_ids, n_new, th);
                if (x > 0) ref[n_ref++] = x;
            }
        }
        rq_backend_destroy(be);
        double f = median(fig, reps), o = median(old, reps);
        printf("  threads %d: decode kernels %.1f tok/s | GEMM path (before) %.1f tok/s (%.2fx)", th, f, o,
               o > 0 ? f / o : 0.0);
        if (n_ref) {
            double l = median(ref, n_ref);
            printf(" | llama.cpp %.1f tok/s | ratio %.2f (target >= 1)\n", l, l > 0 ? f / l : 0.0);
        } else {
            printf(" | ratio to the GEMM path %.2f%s\n", o > 0 ? f / o : 0.0,
                   have_llama ? " (llama-bench failed)" : " (llama.cpp missing)");
        }
        fflush(stdout);
    }
    print_load("after");
    if (have_llama) unlink(gguf);
    free(ids);
    rq_model_free(m);
    return 0;
}
