/* Multiple-choice scoring speed: documents/s of `rilq eval`'s scorer on
 * SmolLM2-135M, full precision (the GGUF as loaded, fp32 weights) and its 2-bit
 * RTN g64 quantization (made in process, as `rilq quantize` makes it), on the
 * first documents of ARC-Easy and PIQA, at 1 and 2 threads, three ways measured
 * in the same run, interleaved per row:
 *   packed   many documents per forward (rq_mc_opts.batch_tokens, eval's default)
 *   one-doc  one document at a time (shared context, the path before packing)
 *   torch    a batched PyTorch scorer, batch 8, lm-eval's way
 *            (tools/bench/torch_mc_scorer.py on the same tokens, on this model's
 *            weights exported as fp32 safetensors, same thread count)
 * It prints each figure, the ratios packed / torch (issue 14's target: >= 5x)
 * and packed / one-doc, the largest |log-likelihood| difference of packed
 * against one-doc and against torch, whether the accuracies agree, and the
 * machine's load average before and after. Asserts nothing.
 *
 *   RILQ_SMOLLM2       the GGUF (tools/fetch_models.sh prints its path; required)
 *   RILQ_DATA          the data root holding datasets/ (required)
 *   RILQ_BENCH_DOCS    documents per task (default 40)
 *   RILQ_BENCH_TASKS   default arc_easy,piqa      RILQ_BENCH_MODELS  default fp,q2
 *   RILQ_BENCH_THREADS default 1,2                RILQ_BENCH_BATCH_TOKENS  packed budget (default: eval's)
 *   RILQ_BENCH_TORCH   0: skip the PyTorch reference     RILQ_PYTHON  default /usr/bin/python3 */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "eval/mc.h"
#include "io/hf.h"
#include "io/safetensors.h"
#include "pipeline/stages.h"
#include "quant/q2.h"
#include "quant/quantize_model.h"

#ifndef RQ_SOURCE_DIR
#define RQ_SOURCE_DIR "."
#endif

static const char *env_or(const char *name, const char *fallback) {
    const char *v = getenv(name);
    return v && *v ? v : fallback;
}

static void print_load(const char *when) {
    FILE *f = fopen("/proc/loadavg", "r");
    char line[128] = "?";
    if (f) {
        if (!fgets(line, sizeof line, f)) snprintf(line, sizeof line, "?");
        fclose(f);
    }
    line[strcspn(line, "\n")] = 0;
    printf("load average %s: %s (%ld cores)\n", when, line, sysconf(_SC_NPROCESSORS_ONLN));
}

/* The model's weights as an HF directory (config.json + fp32 model.safetensors;
 * q2 projections dequantized) for the PyTorch scorer. */
static rq_status export_fp32(const rq_model *m, const char *dir, rq_err *err) {
    const rq_config *c = &m->cfg;
    mkdir(dir, 0755);
    const int n = 2 + c->n_layers * (2 + RQ_N_PROJ) + (m->lm_head.w != m->tok_embed);
    rq_st_tensor *t = rq_calloc((size_t)n, sizeof *t, err);
    char(*names)[96] = rq_calloc((size_t)n, sizeof *names, err);
    float **owned = rq_calloc((size_t)n, sizeof *owned, err);
    rq_status st = t && names && owned ? RQ_OK : RQ_ERR_NOMEM;
    int k = 0;
#define ADD(NAME, DATA, ROWS, COLS)                                                                                  \
    do {                                                                                                             \
        snprintf(names[k], sizeof names[k], "%s", NAME);                                                             \
        t[k] = (rq_st_tensor){.name = names[k], .dtype = RQ_F32, .ndim = (ROWS) > 0 ? 2 : 1, .data = (DATA)};       \
        t[k].shape[0] = (ROWS) > 0 ? (ROWS) : (COLS);                                                                \
        t[k].shape[1] = COLS;                                                                                        \
        k++;                                                                                                         \
    } while (0)
    if (st == RQ_OK) {
        ADD("model.embed_tokens.weight", m->tok_embed, c->vocab_size, c->dim);
        ADD("model.norm.weight", m->final_norm, 0, c->dim);
        if (m->lm_head.w != m->tok_embed) ADD("lm_head.weight", m->lm_head.w, c->vocab_size, c->dim);
    }
    for (int l = 0; st == RQ_OK && l < c->n_layers; l++) {
        rq_layer *L = &m->layers[l];
        char name[96];
        snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", l);
        ADD(name, L->attn_norm, 0, c->dim);
        snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", l);
        ADD(name, L->ffn_norm, 0, c->dim);
        for (int p = 0; st == RQ_OK && p < RQ_N_PROJ; p++) {
            const rq_linear *W = rq_layer_proj(L, p);
            const float *w = W->w;
            if (!w) {
                owned[k] = rq_calloc((size_t)W->out * W->in, sizeof(float), err);
                if (!owned[k]) {
                    st = RQ_ERR_NOMEM;
                    break;
                }
                rq_q2_dequant_rows(W->q2, 0, W->out, owned[k], 0);
                w = owned[k];
            }
            snprintf(name, sizeof name, "model.layers.%d.%s.%s.weight", l, p < 4 ? "self_attn" : "mlp",
                     rq_proj_names[p]);
            ADD(name, w, W->out, W->in);
        }
    }
#undef ADD
    char *st_path = st == RQ_OK ? rq_path_join_alloc(dir, "model.safetensors", err) : NULL;
    char *cfg_path = st == RQ_OK ? rq_path_join_alloc(dir, "config.json", err) : NULL;
    if (st == RQ_OK && (!st_path || !cfg_path)) st = RQ_ERR_NOMEM;
    if (st == RQ_OK) st = rq_safetensors_write(st_path, t, k, NULL, 0, err);
    if (st == RQ_OK) {
        cJSON *cfg = rq_hf_config_json(c, "float32");
        char *text = cfg ? cJSON_Print(cfg) : NULL;
        st = text ? rq_write_file_atomic(cfg_path, text, strlen(text), err) : RQ_ERR_NOMEM;
        free(text);
        cJSON_Delete(cfg);
    }
    for (int i = 0; owned && i < n; i++) free(owned[i]);
    free(owned);
    free(names);
    free(t);
    free(st_path);
    free(cfg_path);
    return st;
}

/* Model FLOPs: 2 x parameters per position through the layers, 2 x vocab x dim
 * per row through the head (attention's share left out). */
static double model_gflop(const rq_config *c, double positions, double head_rows) {
    double layer_params = 0;
    for (int p = 0; p < RQ_N_PROJ; p++) {
        int out, in;
        rq_proj_shape(c, p, &out, &in);
        layer_params += (double)out * in;
    }
    return 2e-9 * (positions * layer_params * c->n_layers + head_rows * (double)c->vocab_size * c->dim);
}

static int cmp_desc(const void *a, const void *b) { return *(const int *)b - *(const int *)a; }

/* Every request of the documents, tokenized by rilq, as the scorer's JSON input;
 * *torch_positions: the positions the PyTorch scorer runs (batches of 8 of the
 * requests sorted longest first, each padded to its longest), every one of
 * them through the head as well. */
static rq_status write_requests(rq_mc_scorer *s, const rq_mc_task *task, size_t n_docs, const char *path,
                                double *torch_positions, rq_err *err) {
    size_t n_req = 0, k = 0;
    for (size_t d = 0; d < n_docs; d++) n_req += task->docs[d].n_choices;
    int *lens = rq_calloc(n_req ? n_req : 1, sizeof(int), err);
    if (!lens) return RQ_ERR_NOMEM;
    cJSON *root = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(root, "requests");
    rq_status st = root && arr ? RQ_OK : RQ_ERR_NOMEM;
    for (size_t d = 0; st == RQ_OK && d < n_docs; d++) {
        const rq_mc_doc *doc = &task->docs[d];
        for (size_t c = 0; st == RQ_OK && c < doc->n_choices; c++) {
            int *in = NULL, *cont = NULL, n_in = 0, n_cont = 0;
            st = rq_mc_request_input(s, rq_mc_doc_context(doc, c), rq_mc_doc_continuation(doc, c), &in, &n_in, &cont,
                                     &n_cont, err);
            if (st != RQ_OK) break;
            cJSON *r = cJSON_CreateObject();
            cJSON_AddItemToObject(r, "input", cJSON_CreateIntArray(in, n_in));
            cJSON_AddItemToObject(r, "cont", cJSON_CreateIntArray(cont, n_cont));
            lens[k++] = n_in;
            cJSON_AddItemToArray(arr, r);
            free(in);
            free(cont);
        }
    }
    qsort(lens, k, sizeof(int), cmp_desc);
    *torch_positions = 0;
    for (size_t i = 0; i < k; i += 8) *torch_positions += (double)lens[i] * (double)(k - i < 8 ? k - i : 8);
    free(lens);
    char *text = st == RQ_OK ? cJSON_PrintUnformatted(root) : NULL;
    if (st == RQ_OK) st = text ? rq_write_file_atomic(path, text, strlen(text), err) : RQ_ERR_NOMEM;
    free(text);
    cJSON_Delete(root);
    return st;
}

typedef struct figures {
    double seconds, cpu_seconds, acc; /* wall time; the process's CPU time, all threads */
    double *ll; /* [choices] */
    int64_t batches; /* packed batches (ours) */
    double gflop;    /* model FLOPs run (ours): 2 x parameters per position through the layers, 2 x vocab x dim
                        per row through the head (attention's share left out) */
    bool ok;
} figures;

static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The same-run sgemm rate per CPU-second at a projection's shape (1024 tokens
 * x 576 in x 1536 out: SmolLM2's gate), the ceiling for the model FLOP rate. */
static double sgemm_gflop_per_cpu_s(void) {
    const int M = 1024, N = 1536, K = 576, reps = 20;
    float *a = calloc((size_t)M * K, sizeof(float)), *b = calloc((size_t)N * K, sizeof(float));
    float *c = calloc((size_t)M * N, sizeof(float));
    double rate = NAN;
    if (a && b && c) {
        for (size_t i = 0; i < (size_t)M * K; i++) a[i] = (float)(i % 7) * 0.1f;
        for (size_t i = 0; i < (size_t)N * K; i++) b[i] = (float)(i % 5) * 0.1f;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1, a, K, b, K, 0, c, N); /* warm-up */
        const double c0 = cpu_now();
        for (int r = 0; r < reps; r++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1, a, K, b, K, 0, c, N);
        rate = 2e-9 * M * N * K * reps / (cpu_now() - c0);
    }
    free(a);
    free(b);
    free(c);
    return rate;
}

static double accuracy(const rq_mc_task *task, size_t n_docs, const double *ll) {
    double correct = 0;
    for (size_t d = 0, k = 0; d < n_docs; k += task->docs[d].n_choices, d++) {
        size_t pred, pred_norm;
        rq_mc_predict(&task->docs[d], ll + k, &pred, &pred_norm);
        correct += pred == task->docs[d].gold;
    }
    return correct / (double)n_docs;
}

static rq_status run_ours(const rq_model *m, rq_backend *be, const rq_mc_task *task, size_t n_docs, int batch_tokens,
                          figures *f, rq_err *err) {
    rq_mc_opts o = {.bos = RQ_BOS_OFF, .batch_tokens = batch_tokens};
    rq_mc_scorer *s = NULL;
    RQ_TRY(rq_mc_scorer_create(m, be, &o, &s, err));
    const double t0 = rq_now_seconds(), c0 = cpu_now();
    rq_status st = rq_mc_score_docs(s, task->docs, n_docs, f->ll, NULL, err);
    f->seconds = rq_now_seconds() - t0;
    f->cpu_seconds = cpu_now() - c0;
    const rq_mc_stats *ss = rq_mc_scorer_stats(s);
    f->batches = ss->batches;
    f->gflop = model_gflop(&m->cfg, (double)ss->positions_run, (double)ss->rows_scored);
    rq_mc_scorer_free(s);
    f->acc = st == RQ_OK ? accuracy(task, n_docs, f->ll) : NAN;
    f->ok = st == RQ_OK;
    return st;
}

/* The PyTorch scorer in a child process; its result file read back. */
static void run_torch(const char *model_dir, const char *requests, const char *out, int threads,
                      const rq_mc_task *task, size_t n_docs, size_t n_choices, figures *f) {
    char cmd[32768];
    snprintf(cmd, sizeof cmd, "'%s' '%s/tools/bench/torch_mc_scorer.py' '%s' '%s' --threads %d --batch 8 --out '%s'",
             env_or("RILQ_PYTHON", "/usr/bin/python3"), env_or("RQ_SOURCE_DIR", RQ_SOURCE_DIR), model_dir, requests,
             threads, out);
    f->ok = false;
    if (system(cmd) != 0) {
        fprintf(stderr, "bench_eval: the PyTorch scorer failed: %s\n", cmd);
        return;
    }
    char *text = NULL;
    size_t size = 0;
    rq_err err = {0};
    if (rq_file_read_all(out, &text, &size, &err) != RQ_OK) {
        fprintf(stderr, "bench_eval: %s\n", err.msg);
        return;
    }
    cJSON *root = cJSON_Parse(text);
    const cJSON *sec = cJSON_GetObjectItemCaseSensitive(root, "seconds");
    const cJSON *cpu = cJSON_GetObjectItemCaseSensitive(root, "cpu_seconds");
    const cJSON *ll = cJSON_GetObjectItemCaseSensitive(root, "ll");
    if (cJSON_IsNumber(sec) && cJSON_IsNumber(cpu) && cJSON_IsArray(ll) && (size_t)cJSON_GetArraySize(ll) == n_choices) {
        f->seconds = sec->valuedouble;
        f->cpu_seconds = cpu->valuedouble;
        for (size_t i = 0; i < n_choices; i++) f->ll[i] = cJSON_GetArrayItem(ll, (int)i)->valuedouble;
        f->acc = accuracy(task, n_docs, f->ll);
        f->ok = true;
    } else {
        fprintf(stderr, "bench_eval: %s does not hold the scorer's result\n", out);
    }
    cJSON_Delete(root);
    free(text);
}

static double max_diff(const double *a, const double *b, size_t n) {
    double worst = 0;
    for (size_t i = 0; i < n; i++) worst = fmax(worst, fabs(a[i] - b[i]));
    return worst;
}

int main(int argc, char **argv) {
    (void)argc;
    rq_reexec_with_passive_openmp(argv);
    const char *model_path = env_or("RILQ_SMOLLM2", NULL), *data = env_or("RILQ_DATA", NULL);
    if (!model_path || !data) {
        fprintf(stderr, "bench_eval: set RILQ_SMOLLM2 (the SmolLM2-135M GGUF: tools/fetch_models.sh prints its path) "
                        "and RILQ_DATA (the folder holding datasets/)\n");
        return 2;
    }
    const size_t want_docs = (size_t)atol(env_or("RILQ_BENCH_DOCS", "40"));
    const char *tasks_list = env_or("RILQ_BENCH_TASKS", "arc_easy,piqa");
    const char *models_list = env_or("RILQ_BENCH_MODELS", "fp,q2");
    const char *threads_list = env_or("RILQ_BENCH_THREADS", "1,2");
    const bool torch_ref = strcmp(env_or("RILQ_BENCH_TORCH", "1"), "0") != 0;
    rq_err err = {0};
    rq_stage_eval_opts eo;
    if (rq_stage_eval_defaults(&eo, &err) != RQ_OK) {
        fprintf(stderr, "bench_eval: %s\n", err.msg);
        return 1;
    }
    const int batch_tokens = atoi(env_or("RILQ_BENCH_BATCH_TOKENS", "0")) > 0
                                 ? atoi(env_or("RILQ_BENCH_BATCH_TOKENS", "0"))
                                 : (int)eo.mc_batch_tokens;
    char datasets[4096], tmp[4096];
    snprintf(datasets, sizeof datasets, "%s/datasets", data);
    snprintf(tmp, sizeof tmp, "%s/rilq-bench-eval-%ld", env_or("TMPDIR", "/tmp"), (long)getpid());
    mkdir(tmp, 0755);
    rq_model *m = NULL;
    if (rq_model_load(model_path, NULL, &m, &err) != RQ_OK) {
        fprintf(stderr, "bench_eval: %s\n", err.msg);
        return 1;
    }
    printf("bench_eval: multiple-choice documents/s, %s (%lld parameters), packed batch %d tokens/forward\n",
           model_path, (long long)m->n_params, batch_tokens);
    print_load("at start");
    printf("documents per second of wall time (docs/s) and per second of the process's CPU time over all its\n"
           "threads (docs/cpu-s: what a loaded machine distorts least); ratios of packed to torch and to one-doc\n");
    printf("%-9s %-5s %3s %5s %7s | %8s %8s %8s | %7s %7s | %11s %11s %11s | %7s %7s | %9s %9s | %s\n", "task",
           "model", "thr", "docs", "batches", "packed", "one-doc", "torch", "ratio", "ratio", "packed", "one-doc",
           "torch", "ratio", "ratio", "max|dll|", "max|dll|", "acc");
    printf("%-9s %-5s %3s %5s %7s | %8s %8s %8s | %7s %7s | %11s %11s %11s | %7s %7s | %9s %9s | %s\n", "", "", "",
           "", "", "docs/s", "docs/s", "docs/s", "/torch", "/1-doc", "docs/cpu-s", "docs/cpu-s", "docs/cpu-s",
           "/torch", "/1-doc", "vs 1-doc", "vs torch", "packed / one-doc / torch");
    int rc = 0;
    char models[64];
    snprintf(models, sizeof models, "%s", models_list);
    for (char *mname = strtok(models, ","); mname && rc == 0; mname = strtok(NULL, ",")) {
        const bool q2 = !strcmp(mname, "q2");
        if (q2) { /* RTN 2-bit g64, in place: what `rilq quantize --method rtn` makes */
            rq_model_quant_opts qo;
            rq_model_quant_opts_default(&qo);
            if (rq_model_quantize(m, &qo, NULL, &err) != RQ_OK) {
                fprintf(stderr, "bench_eval: %s\n", err.msg);
                rc = 1;
                break;
            }
        }
        char model_dir[4200];
        snprintf(model_dir, sizeof model_dir, "%s/%s", tmp, mname);
        if (torch_ref && export_fp32(m, model_dir, &err) != RQ_OK) {
            fprintf(stderr, "bench_eval: exporting the weights for PyTorch: %s\n", err.msg);
            rc = 1;
            break;
        }
        char tasks[256];
        snprintf(tasks, sizeof tasks, "%s", tasks_list);
        char *tsave = NULL;
        for (char *tname = strtok_r(tasks, ",", &tsave); tname && rc == 0; tname = strtok_r(NULL, ",", &tsave)) {
            rq_mc_task task = {0};
            if (rq_mc_task_load(tname, datasets, &task, &err) != RQ_OK) {
                fprintf(stderr, "bench_eval: %s\n", err.msg);
                rc = 1;
                break;
            }
            size_t n_docs = want_docs == 0 || want_docs > task.n_docs ? task.n_docs : want_docs, n_choices = 0;
            for (size_t d = 0; d < n_docs; d++) n_choices += task.docs[d].n_choices;
            char requests[4400], result[4400];
            snprintf(requests, sizeof requests, "%s/%s-requests.json", tmp, tname);
            snprintf(result, sizeof result, "%s/%s-torch.json", tmp, tname);
            figures fp = {.ll = calloc(n_choices, sizeof(double))}, f1 = {.ll = calloc(n_choices, sizeof(double))};
            figures ft = {.ll = calloc(n_choices, sizeof(double))};
            char threads[64];
            snprintf(threads, sizeof threads, "%s", threads_list);
            char *hsave = NULL;
            for (char *th = strtok_r(threads, ",", &hsave); th && rc == 0; th = strtok_r(NULL, ",", &hsave)) {
                const int n_threads = atoi(th);
                rq_backend *be = NULL;
                rq_mc_scorer *tok_only = NULL;
                double torch_positions = 0;
                rq_mc_opts to = {.bos = RQ_BOS_OFF};
                if (rq_backend_create("cpu", n_threads, &be, &err) != RQ_OK ||
                    (torch_ref && (rq_mc_scorer_create(m, be, &to, &tok_only, &err) != RQ_OK ||
                                   write_requests(tok_only, &task, n_docs, requests, &torch_positions, &err) != RQ_OK)) ||
                    run_ours(m, be, &task, n_docs, batch_tokens, &fp, &err) != RQ_OK) {
                    fprintf(stderr, "bench_eval: %s\n", err.msg);
                    rc = 1;
                }
                rq_mc_scorer_free(tok_only);
                if (rc == 0 && torch_ref) run_torch(model_dir, requests, result, n_threads, &task, n_docs, n_choices, &ft);
                if (rc == 0 && run_ours(m, be, &task, n_docs, 0, &f1, &err) != RQ_OK) {
                    fprintf(stderr, "bench_eval: %s\n", err.msg);
                    rc = 1;
                }
                rq_backend_destroy(be);
                if (rc) break;
                const double dp = n_docs / fp.seconds, d1 = n_docs / f1.seconds;
                const double dt = ft.ok ? n_docs / ft.seconds : NAN;
                const double cp = n_docs / fp.cpu_seconds, c1 = n_docs / f1.cpu_seconds;
                const double ct = ft.ok ? n_docs / ft.cpu_seconds : NAN;
                const double sg = sgemm_gflop_per_cpu_s();
                printf("%-9s %-5s %3d %5zu %7lld | %8.2f %8.2f %8.2f | %6.2fx %6.2fx | %11.2f %11.2f %11.2f | %6.2fx "
                       "%6.2fx | %9.2e %9.2e | %.3f / %.3f / %.3f\n",
                       tname, mname, n_threads, n_docs, (long long)fp.batches, dp, d1, dt, dp / dt, dp / d1, cp, c1, ct,
                       cp / ct, cp / c1, max_diff(fp.ll, f1.ll, n_choices), ft.ok ? max_diff(fp.ll, ft.ll, n_choices) : NAN,
                       fp.acc, f1.acc, ft.ok ? ft.acc : NAN);
                const double torch_gflop = model_gflop(&m->cfg, torch_positions, torch_positions);
                printf("%-9s %-5s %3d        packed: %.1f model GFLOP, %.1f GFLOP/cpu-s = %.0f%% of sgemm's %.1f "
                       "(1024x576x1536, same threads, this run); torch: %.1f GFLOP (%.2fx packed's), %.1f GFLOP/cpu-s\n",
                       "", "", n_threads, fp.gflop, fp.gflop / fp.cpu_seconds, 100 * fp.gflop / fp.cpu_seconds / sg, sg,
                       torch_gflop, torch_gflop / fp.gflop, ft.ok ? torch_gflop / ft.cpu_seconds : NAN);
                fflush(stdout);
            }
            free(fp.ll);
            free(f1.ll);
            free(ft.ll);
            rq_mc_task_free(&task);
        }
    }
    print_load("at end");
    char cleanup[4200];
    snprintf(cleanup, sizeof cleanup, "rm -rf '%s'", tmp);
    if (getenv("RILQ_BENCH_KEEP")) printf("kept %s\n", tmp);
    else if (system(cleanup) != 0) fprintf(stderr, "bench_eval: could not remove %s\n", tmp);
    rq_model_free(m);
    return rc;
}
