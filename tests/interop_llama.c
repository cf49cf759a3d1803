/* llama.cpp as a real client of our GGUF exports (label interop).
 *
 * llama.cpp b11434 (built once by tools/interop.sh into
 * ${RILQ_CACHE:-$HOME/.cache/rilq}/llama.cpp-b11434) runs the exports of
 * stories260K and SmolLM2-135M, each as full precision (all F32), 2-bit RTN
 * (Q4_1; stories260K's 172-wide down_proj as exact F32) and 2-bit with a random
 * QA-LoRA adapter merged into the offsets. tests/interop/llama_client.c (our
 * client, compiled here against the cached libllama) writes llama.cpp's logits,
 * greedy tokens and tokenization; llama-perplexity and llama-quantize are
 * llama.cpp's own tools. For each case:
 *
 *   tokenization   llama.cpp's tokens of the WikiText-2 sample == rilq's.
 *   F32 path       llama-quantize --allow-requantize FILE F32 (llama.cpp's own
 *                  dequantization of the file), F32 KV cache: the same weights
 *                  as rilq, so only the summation order differs (ggml's tiled
 *                  dot products vs OpenBLAS; its softmax/RoPE code): bound
 *                  max |diff| <= F32_REL * max |logit| with F32_REL = 1e-4, argmax
 *                  equal at every position, greedy continuation identical.
 *   Q4_1 direct    (the export itself; for SmolLM2's full precision, its own
 *                  Q4_1 source file, whose weights it is) llama.cpp multiplies
 *                  Q4_1 weights with activations it first quantizes to Q8_1 (8
 *                  bits, one scale per 32 values), so each dot product carries a
 *                  relative error of ~2^-8 of the block's largest activation.
 *                  The gap this leaves is stated by two bounds: the mean |diff|
 *                  of the logits <= Q8_MEAN_REL of the largest logit, and the
 *                  perplexity's log (the mean NLL) within Q8_NLL nats of rilq's.
 *                  How large it is depends on the model: a working model
 *                  (SmolLM2 at full precision, perplexity ~32) shows mean |diff|
 *                  ~0.006 of the largest logit and +0.005 nats; 2-bit RTN without
 *                  any recovery (perplexity 10^3..10^6: the model is destroyed,
 *                  its activations have large outliers and its near-uniform
 *                  predictions follow the noise) up to ~0.03 and 0.09 nats. So
 *                  the bounds are 0.02 / 0.02 nats for a model whose rilq
 *                  perplexity is below WORKING_PPL, 0.06 / 0.2 nats otherwise.
 *   perplexity     llama-perplexity on the F32 file (F32 KV cache) vs rilq with
 *                  llama-perplexity's protocol (chunks of n_ctx tokens, BOS in
 *                  place of the first token when the vocab adds one, the second
 *                  half of each chunk scored): relative 1e-3 (fp32 sums over a
 *                  few hundred tokens, printed with 4 decimals by the tool).
 *
 * Without the cached build: skipped saying why (tools/interop.sh build), and a
 * failure under CI=true. */
#include "interop/interop.h"

#include <sys/stat.h>
#include <unistd.h>

#include "model/generate.h"
#include "io/export.h"

#define F32_REL 1e-4
#define WORKING_PPL 100.0
#define Q8_MEAN_REL(ppl) ((ppl) < WORKING_PPL ? 0.02 : 0.06)
#define Q8_NLL(ppl) ((ppl) < WORKING_PPL ? 0.02 : 0.2)
#define PPL_REL 1e-3

static char llama_dir[4096], client[4200];

static bool exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

/* Find the cached build and compile our client against it (skip/fail when absent). */
static void setup_llama(void) {
    const char *cache = getenv("RILQ_CACHE"), *home = getenv("HOME");
    if (cache && *cache) snprintf(llama_dir, sizeof llama_dir, "%s/llama.cpp-b11434", cache);
    else snprintf(llama_dir, sizeof llama_dir, "%s/.cache/rilq/llama.cpp-b11434", home ? home : "");
    char stamp[4200], failed[4200], why[8400];
    snprintf(stamp, sizeof stamp, "%s/.stamp", llama_dir);
    snprintf(failed, sizeof failed, "%s/FAILED", llama_dir);
    if (!exists(stamp)) {
        char *msg = NULL;
        size_t n = 0;
        if (rq_file_read_all(failed, &msg, &n, NULL) == RQ_OK) {
            snprintf(why, sizeof why, "llama.cpp b11434: its build failed: %s", msg);
            free(msg);
        } else {
            snprintf(why, sizeof why, "llama.cpp b11434 is not built in %s (run tools/interop.sh build)", llama_dir);
        }
        rq_test_missing(why);
    }
    const char *tools[] = {"llama-perplexity", "llama-quantize"};
    for (int i = 0; i < 2; i++) {
        snprintf(why, sizeof why, "%s/bin/%s", llama_dir, tools[i]);
        if (!exists(why)) rq_test_missing(why);
    }
    snprintf(client, sizeof client, "%s", rq_test_out("llama_client"));
    static char cmd[1 << 16];
    snprintf(cmd, sizeof cmd,
             "cc -O2 -std=c11 -Wall -Wextra -Werror -I'%s/include' '%s/tests/interop/llama_client.c' -o '%s' "
             "'%s/lib/libllama.a' '%s/lib/libggml.a' '%s/lib/libggml-cpu.a' '%s/lib/libggml-base.a' -lstdc++ -fopenmp "
             "-lm -lpthread",
             llama_dir, ip_source_dir(), client, llama_dir, llama_dir, llama_dir, llama_dir);
    int rc = ip_system(cmd);
    if (rc != 0) {
        snprintf(why, sizeof why, "tests/interop/llama_client.c does not compile against %s (exit %d)", llama_dir, rc);
        rq_test_missing(why);
    }
}

/* Our perplexity with llama-perplexity's protocol over tokens[n]. */
static double our_ppl_llama_protocol(const rq_model *m, const int *tokens, int n, int n_ctx, int n_chunks) {
    rq_err err = {0};
    int bos = rq_tokenizer_bos(m->tok);
    bool add_bos = false;
    rq_tokenizer_desc d;
    if (rq_tokenizer_describe(m->tok, &d, &err) == RQ_OK) {
        add_bos = d.spec.add_bos_default;
        rq_tokenizer_describe_free(&d);
    }
    rq_forward_opts o = {.max_batch = 1, .max_seq = n_ctx};
    rq_forward_state *s = NULL;
    CHECK_OK(rq_forward_create(m, ip_be, &o, &s, &err), &err);
    if (!s) return NAN;
    int *chunk = malloc(sizeof(int) * (size_t)n_ctx), *targets = malloc(sizeof(int) * (size_t)n_ctx);
    double nll_sum = 0;
    int64_t count = 0;
    for (int c = 0; c < n_chunks && (c + 1) * n_ctx <= n; c++) {
        memcpy(chunk, tokens + (size_t)c * n_ctx, sizeof(int) * (size_t)n_ctx);
        if (add_bos) chunk[0] = bos;
        for (int j = 0; j < n_ctx; j++) targets[j] = j >= n_ctx / 2 && j + 1 < n_ctx ? tokens[c * n_ctx + j + 1] : -1;
        double nll = 0;
        int64_t k = 0;
        CHECK_OK(rq_forward_run(s, chunk, 1, n_ctx, 0, &err), &err);
        CHECK_OK(rq_forward_nll(s, targets, 1, n_ctx, &nll, &k, &err), &err);
        nll_sum += nll;
        count += k;
    }
    free(chunk);
    free(targets);
    rq_forward_free(s);
    return count ? exp(nll_sum / (double)count) : NAN;
}

/* The number after "Final estimate: PPL = " in file path, or NAN. */
static double final_estimate(const char *path) {
    char *out = NULL;
    size_t n = 0;
    double ppl = NAN;
    if (rq_file_read_all(path, &out, &n, NULL) == RQ_OK) {
        const char *p = strstr(out, "Final estimate: PPL = ");
        if (p) ppl = strtod(p + strlen("Final estimate: PPL = "), NULL);
        free(out);
    }
    return ppl;
}

/* llama-perplexity's "Final estimate: PPL = X" on file with the text; NAN when absent.
 * Its log lines are written by a background thread (common_log): on our loaded
 * machine runs that exited 0 sometimes left the redirected output without its
 * last lines. So stdout is line-buffered (stdbuf), the tool also writes
 * --log-file, both are read, and a run whose estimate is missing from both is
 * repeated (three runs at most). */
static double llama_ppl(const char *gguf, const char *text_path, int n_ctx, int n_chunks, const char *log) {
    static char cmd[1 << 16];
    char log2[4400];
    snprintf(log2, sizeof log2, "%.4300s.file", log);
    snprintf(cmd, sizeof cmd,
             "stdbuf -oL -eL '%s/bin/llama-perplexity' -m '%s' -f '%s' -c %d -b %d --chunks %d -t 1 -ctk f32 -ctv f32 "
             "-fa off --log-file '%s' >'%s' 2>&1",
             llama_dir, gguf, text_path, n_ctx, n_ctx, n_chunks, log2, log);
    double ppl = NAN;
    for (int attempt = 0; attempt < 3 && isnan(ppl); attempt++) {
        int rc = ip_system(cmd);
        CHECKF(rc == 0, "llama-perplexity on %s: exit %d (log %s)", gguf, rc, log);
        ppl = final_estimate(log);
        if (isnan(ppl)) ppl = final_estimate(log2);
        if (isnan(ppl)) printf("llama-perplexity on %s: no final estimate in its logs; run %d\n", gguf, attempt + 2);
    }
    CHECKF(!isnan(ppl), "llama-perplexity printed no final estimate (log %s)", log);
    return ppl;
}

typedef struct text_sample {
    char *text;
    size_t len;
    char path[4200];
    int *tokens; /* rilq's tokens of text, RQ_BOS_DEFAULT (as llama.cpp's tools tokenize) */
    int n_tokens;
} text_sample;

/* One export, run every way. The Q4_1 direct path runs on the export when it
 * holds Q4_1 tensors, else on src_q4_1 when given (the full-precision model's
 * own Q4_1 source file, whose dequantized weights it is). */
static void check_export(const rq_model *m, const char *name, const text_sample *ts, int n_ctx, int n_chunks,
                         const char *src_q4_1) {
    rq_err err = {0};
    char gguf[4200], f32[4300], ids[4300], out[4300], logpath[4300];
    snprintf(gguf, sizeof gguf, "%.4000s.gguf", rq_test_out(name));
    unlink(gguf);
    rq_export_report rep;
    CHECK_OK(rq_export_gguf(m, gguf, &(rq_export_opts){.name = name}, &rep, &err), &err);
    if (err.code) return;
    const char *qfile = rep.q_tensors > 0 ? gguf : src_q4_1;
    bool q4_1 = qfile != NULL;

    /* llama.cpp's tokenization of the sample */
    snprintf(out, sizeof out, "%s.tokens", gguf);
    static char cmd[1 << 16];
    snprintf(cmd, sizeof cmd, "'%s' '%s' tokenize '%s' '%s'", client, gguf, ts->path, out);
    CHECKF(ip_system(cmd) == 0, "%s: llama_client tokenize failed", name);
    int **lines = NULL, *lens = NULL;
    int nl = ip_read_id_lines(out, &lines, &lens);
    bool same_tok = nl == 1 && lens[0] == ts->n_tokens && !memcmp(lines[0], ts->tokens, sizeof(int) * (size_t)ts->n_tokens);
    CHECKF(same_tok, "%s: llama.cpp tokenizes the WikiText-2 sample into %d tokens, rilq into %d%s", name,
           nl == 1 ? lens[0] : -1, ts->n_tokens, nl == 1 && lens[0] == ts->n_tokens ? " (different ids)" : "");
    ip_free_id_lines(lines, lens, nl);

    /* the F32 file: llama.cpp's own dequantization */
    if (rep.q_tensors > 0) {
        snprintf(f32, sizeof f32, "%s.f32.gguf", gguf);
        snprintf(cmd, sizeof cmd, "'%s/bin/llama-quantize' --allow-requantize '%s' '%s' F32 1 >'%s.quantize.log' 2>&1",
                 llama_dir, gguf, f32, gguf);
        CHECKF(ip_system(cmd) == 0, "%s: llama-quantize to F32 failed (log %s.quantize.log)", name, gguf);
    } else {
        snprintf(f32, sizeof f32, "%s", gguf); /* already all F32 */
    }

    /* perplexity */
    double ours_ppl = our_ppl_llama_protocol(m, ts->tokens, ts->n_tokens, n_ctx, n_chunks);
    snprintf(logpath, sizeof logpath, "%s.ppl-f32.log", gguf);
    double ppl32 = llama_ppl(f32, ts->path, n_ctx, n_chunks, logpath);
    CHECKF(fabs(ppl32 - ours_ppl) <= PPL_REL * ours_ppl, "%s: llama-perplexity (F32) %.4f vs rilq %.4f", name, ppl32,
           ours_ppl);
    double pplq = NAN;
    if (q4_1) {
        snprintf(logpath, sizeof logpath, "%s.ppl-q4_1.log", gguf);
        pplq = llama_ppl(qfile, ts->path, n_ctx, n_chunks, logpath);
        CHECKF(fabs(log(pplq) - log(ours_ppl)) <= Q8_NLL(ours_ppl),
               "%s: llama-perplexity (Q4_1) %.4f vs rilq %.4f: %.3g nats apart (bound %.3g)", name, pplq, ours_ppl,
               fabs(log(pplq) - log(ours_ppl)), Q8_NLL(ours_ppl));
    }
    printf("%s: perplexity (%d chunks of %d, second halves scored): rilq %.4f, llama.cpp F32 %.4f (%+.2e rel)%s", name,
           n_chunks, n_ctx, ours_ppl, ppl32, (ppl32 - ours_ppl) / ours_ppl, q4_1 ? "" : "\n");
    if (q4_1) printf(", llama.cpp Q4_1 %.4f (%+.2e rel, %+.4f nats)\n", pplq, (pplq - ours_ppl) / ours_ppl,
                     log(pplq) - log(ours_ppl));
    /* logits on fixed windows: tokens from the sample */
    enum { NW = 2, T = 64 };
    int V = m->cfg.vocab_size;
    int win[NW * T];
    for (int w = 0; w < NW; w++) memcpy(win + w * T, ts->tokens + 5 + w * (ts->n_tokens / NW), sizeof(int) * T);
    snprintf(ids, sizeof ids, "%s.windows.ids", gguf);
    CHECK(ip_write_ids(ids, win, NW, T));
    float *ours = ip_logits(m, win, NW, T);
    const char *paths[2] = {f32, qfile};
    for (int k = 0; k < (q4_1 ? 2 : 1); k++) {
        snprintf(out, sizeof out, "%s.llama%d.f32", gguf, k);
        snprintf(cmd, sizeof cmd, "'%s' '%s' logits '%s' '%s' f32", client, paths[k], ids, out);
        CHECKF(ip_system(cmd) == 0, "%s: llama_client logits on %s failed", name, paths[k]);
        float *theirs = ip_read_f32(out, (size_t)NW * T * (size_t)V);
        CHECKF(theirs != NULL, "%s: llama.cpp logits missing", name);
        if (!theirs) continue;
        ip_diff d = ip_compare(ours, theirs, NW * T, V);
        if (k == 0) {
            CHECKF(d.max_abs <= F32_REL * d.max_ref, "%s: F32 path: logits differ by %.3g (bound %.3g)", name, d.max_abs,
                   F32_REL * d.max_ref);
            CHECKF(d.argmax_same == d.rows, "%s: F32 path: argmax equal at %d of %d positions", name, d.argmax_same, d.rows);
        } else {
            CHECKF(d.mean_abs <= Q8_MEAN_REL(ours_ppl) * d.max_ref, "%s: Q4_1 direct: mean |diff| %.3g (bound %.3g)", name,
                   d.mean_abs, Q8_MEAN_REL(ours_ppl) * d.max_ref);
        }
        printf("%s: %s: llama.cpp vs rilq logits (%d x %d): max |diff| %.3g (%.2g of max |logit| %.3g), mean |diff| "
               "%.3g, argmax equal %d/%d\n",
               name, k == 0 ? "F32 path (llama-quantize F32, F32 KV)"
               : rep.q_tensors > 0 ? "Q4_1 direct (Q8_1 activations)"
                                   : "Q4_1 direct, the source GGUF (Q8_1 activations)",
               NW, T,
               d.max_abs, d.max_abs / d.max_ref, d.max_ref, d.mean_abs, d.argmax_same, d.rows);
        free(theirs);
        unlink(out);
    }
    free(ours);

    /* greedy continuation on the F32 path */
    enum { NP = 16, NG = 24 };
    snprintf(ids, sizeof ids, "%s.prompt.ids", gguf);
    CHECK(ip_write_ids(ids, ts->tokens, 1, NP));
    snprintf(out, sizeof out, "%s.greedy.ids", gguf);
    snprintf(cmd, sizeof cmd, "'%s' '%s' greedy '%s' %d '%s'", client, f32, ids, NG, out);
    CHECKF(ip_system(cmd) == 0, "%s: llama_client greedy failed", name);
    int *gen = NULL, n_gen = 0;
    rq_sample_opts so = {.max_new = NG, .temperature = 0, .top_p = 1};
    CHECK_OK(rq_generate(m, ip_be, ts->tokens, NP, &so, NULL, 0, NULL, NULL, &gen, &n_gen, &err), &err);
    nl = ip_read_id_lines(out, &lines, &lens);
    bool same_gen = nl == 1 && lens[0] == n_gen && !memcmp(lines[0], gen, sizeof(int) * (size_t)n_gen);
    CHECKF(same_gen, "%s: greedy continuations differ (llama.cpp %d tokens, rilq %d)", name, nl == 1 ? lens[0] : -1, n_gen);
    printf("%s: greedy %d tokens after a %d-token prompt: %s\n", name, n_gen, NP, same_gen ? "identical" : "DIFFERENT");
    ip_free_id_lines(lines, lens, nl);
    free(gen);

    unlink(f32); /* the large all-F32 file (for the fp case, the export itself); Q4_1 files and logs stay */
}

static void run_model(const char *path, const char *tag, const text_sample *ts, int n_ctx, int n_chunks) {
    rq_err err = {0};
    rq_model *m = NULL;
    CHECK_OK(rq_model_load(path, NULL, &m, &err), &err);
    if (!m) return;
    char name[64];
    snprintf(name, sizeof name, "llama_%s_fp", tag);
    size_t n = strlen(path);
    check_export(m, name, ts, n_ctx, n_chunks, n > 5 && !strcmp(path + n - 5, ".gguf") ? path : NULL);
    ip_quantize(m);
    snprintf(name, sizeof name, "llama_%s_q2", tag);
    check_export(m, name, ts, n_ctx, n_chunks, NULL);
    ip_merge_random_adapter(m);
    snprintf(name, sizeof name, "llama_%s_merged", tag);
    check_export(m, name, ts, n_ctx, n_chunks, NULL);
    rq_model_free(m);
}

/* The sample as a file and as rilq's tokens of model_path's tokenizer. */
static bool make_sample(const char *model_path, const char *tag, const char *text, size_t len, text_sample *ts) {
    rq_err err = {0};
    memset(ts, 0, sizeof *ts);
    rq_model *m = NULL;
    CHECK_OK(rq_model_load(model_path, NULL, &m, &err), &err);
    if (!m) return false;
    snprintf(ts->path, sizeof ts->path, "%.4000s.%s.txt", rq_test_out("llama_wikitext"), tag);
    FILE *f = fopen(ts->path, "wb");
    bool ok = f && fwrite(text, 1, len, f) == len;
    if (f) ok = fclose(f) == 0 && ok;
    CHECK(ok);
    CHECK_OK(rq_tokenizer_encode(m->tok, text, len, RQ_BOS_DEFAULT, &ts->tokens, &ts->n_tokens, &err), &err);
    rq_model_free(m);
    return ok && ts->tokens;
}

int main(void) {
    rq_err err = {0};
    const char *stories = rq_test_data("models/stories260K/stories260K.bin");
    const char *smollm2 = rq_test_smollm2();
    size_t len = 0;
    char *text = ip_wikitext(12000, &len);
    if (!text) return rq_test_finish();
    setup_llama();
    CHECK_OK(rq_backend_create("cpu", 1, &ip_be, &err), &err);
    if (!ip_be) return 1;
    text_sample ts;
    if (make_sample(stories, "stories", text, len, &ts)) run_model(stories, "stories", &ts, 128, 4);
    free(ts.tokens);
    if (make_sample(smollm2, "smollm2", text, len, &ts)) run_model(smollm2, "smollm2", &ts, 256, 4);
    free(ts.tokens);
    free(text);
    rq_backend_destroy(ip_be);
    return rq_test_finish();
}
