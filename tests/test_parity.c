/* Forward-pass parity with the PyTorch reference (tools/reference/llama_ref.py).
 *
 * The ctest fixture reference_fixtures (tests/fixtures.cmake) writes random HF
 * models and their reference logits under $RQ_TEST_OUT/ref; this test loads the
 * same models with rq_model_load, runs them on the CPU backend and compares.
 * It also checks what must hold between our own runs (sharded == single file,
 * batched == one sequence at a time, KV-cache decoding == full run), the summed
 * NLL, and the stories260K golden outputs of upstream llama2.c (SOURCE.md).
 *
 * Tolerances. The reference and rilq both compute in fp32 but sum in different
 * orders (OpenBLAS blocking, OpenMP splits, different softmax/norm loops), so
 * logits differ by accumulated fp32 rounding. Measured: the reference's fp32
 * logits differ from a float64 run of the same model by 2.5e-6 on the random
 * model (logits up to 4.5) and 1e-5 on stories260K (logits up to 22), i.e.
 * about 5e-7 of the logit scale. We allow 1e-4 of the scale
 * (scale = max(1, max |reference logit|)): ~100x the measured rounding noise,
 * and far below what a real convention error causes (a missing q/k permutation
 * moves stories260K logits by 11; leaving out llama3 rope scaling moves the
 * random model's by 1.3, mis-scaling only its middle band by 1.0). rilq
 * measured 2e-6..2e-5 when this test was written. */
#include "backend/backend.h"
#include "model/forward.h"
#include "test.h"

/* Of the logit scale: see the header comment. */
#define LOGIT_TOL_REL_SCALE 1e-4
/* Per-element |diff| / max(|ref|, 1): a sanity bound that also catches errors
 * confined to small logits; 10x the scale-relative bound. */
#define LOGIT_TOL_REL_ELEM 1e-3
/* Two runs of rilq's own code on the same fp32 weights that may only differ in
 * GEMM blocking (batch size, call shape): a tenth of the reference tolerance. */
#define SELF_TOL_REL_SCALE 1e-5
/* SOURCE.md's stated tolerance for the golden stories260K numbers, which are
 * printed to 4 decimals from llama2.c run.c. */
#define GOLDEN_TOL 1e-3

/* ---- reference logits files ------------------------------------------------ */

/* Format (llama_ref.py write_logits): int32 magic "RQLG", version 1, B, T, V;
 * int32 tokens[B][T]; float32 logits[B][T][V]; little-endian. */
#define REF_MAGIC 0x474C5152
#define REF_VERSION 1

typedef struct ref_logits {
    int B, T, V;
    int *tokens;   /* [B][T] */
    float *logits; /* [B][T][V] */
} ref_logits;

static void ref_free(ref_logits *r) {
    free(r->tokens);
    free(r->logits);
    memset(r, 0, sizeof *r);
}

/* Reads a reference file; a malformed file is a test failure (returns 0). */
static int ref_load(const char *path, ref_logits *r) {
    memset(r, 0, sizeof *r);
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cannot open reference %s\n", path);
        return 0;
    }
    int32_t h[5];
    int ok = fread(h, sizeof h, 1, f) == 1 && h[0] == REF_MAGIC && h[1] == REF_VERSION && h[2] > 0 &&
             h[3] > 0 && h[4] > 0 && h[2] <= 64 && h[3] <= 65536 && h[4] <= (1 << 20);
    if (ok) {
        r->B = h[2], r->T = h[3], r->V = h[4];
        size_t nt = (size_t)r->B * r->T, nl = nt * r->V;
        r->tokens = malloc(nt * sizeof(int));
        r->logits = malloc(nl * sizeof(float));
        ok = r->tokens && r->logits && fread(r->tokens, sizeof(int), nt, f) == nt &&
             fread(r->logits, sizeof(float), nl, f) == nl && fgetc(f) == EOF;
    }
    fclose(f);
    if (!ok) {
        fprintf(stderr, "malformed reference file %s\n", path);
        ref_free(r);
    }
    CHECKF(ok, "reference %s readable", path);
    return ok;
}

/* ---- comparisons -------------------------------------------------------------- */

typedef struct diff_stats {
    double max_abs, max_rel_elem, scale;
} diff_stats;

/* The logit scale tolerances are relative to: max(1, max |x|). */
static double logit_scale(const float *x, size_t n) {
    double s = 1.0;
    for (size_t i = 0; i < n; i++)
        if (fabs(x[i]) > s) s = fabs(x[i]);
    return s;
}

static diff_stats compare(const float *got, const float *want, size_t n) {
    diff_stats d = {0, 0, logit_scale(want, n)};
    for (size_t i = 0; i < n; i++) {
        double a = fabs((double)got[i] - want[i]);
        if (!(a <= d.max_abs)) d.max_abs = a; /* also catches NaN */
        double rel = a / fmax(fabs(want[i]), 1.0);
        if (!(rel <= d.max_rel_elem)) d.max_rel_elem = rel;
    }
    return d;
}

/* Compare against the reference with the stated tolerances; prints the numbers. */
static void check_vs_ref(const char *what, const float *got, const float *want, size_t n) {
    diff_stats d = compare(got, want, n);
    double tol = LOGIT_TOL_REL_SCALE * d.scale;
    printf("  %-36s max_abs %.3g (tol %.3g, scale %.3g)  max_rel %.3g (tol %.3g)\n", what, d.max_abs, tol, d.scale,
           d.max_rel_elem, LOGIT_TOL_REL_ELEM);
    CHECKF(d.max_abs <= tol, "%s: max abs diff %.3g > %.3g", what, d.max_abs, tol);
    CHECKF(d.max_rel_elem <= LOGIT_TOL_REL_ELEM, "%s: max rel diff %.3g > %.3g", what, d.max_rel_elem,
           LOGIT_TOL_REL_ELEM);
}

/* Compare two rilq runs (self-consistency); exact when want_exact. */
static void check_vs_self(const char *what, const float *got, const float *want, size_t n, int want_exact) {
    diff_stats d = compare(got, want, n);
    double tol = want_exact ? 0.0 : SELF_TOL_REL_SCALE * d.scale;
    printf("  %-36s max_abs %.3g (tol %.3g)\n", what, d.max_abs, tol);
    CHECKF(d.max_abs <= tol, "%s: max abs diff %.3g > %.3g", what, d.max_abs, tol);
}

/* ---- running the model ---------------------------------------------------------- */

typedef struct runner {
    rq_model *m;
    rq_backend *be;
    rq_forward_state *s;
    int V;
} runner;

static void runner_free(runner *r) {
    rq_forward_free(r->s);
    rq_model_free(r->m);
    memset(r, 0, sizeof *r);
}

static int runner_open(runner *r, const char *path, const char *tok_path, rq_backend *be, int max_batch, int max_seq,
                       bool kv_cache) {
    memset(r, 0, sizeof *r);
    rq_err err = {0};
    r->be = be;
    CHECK_OK(rq_model_load(path, tok_path, &r->m, &err), &err);
    if (!r->m) return 0;
    rq_forward_opts o = {.max_batch = max_batch, .max_seq = max_seq, .kv_cache = kv_cache};
    CHECK_OK(rq_forward_create(r->m, be, &o, &r->s, &err), &err);
    if (!r->s) {
        runner_free(r);
        return 0;
    }
    r->V = r->m->cfg.vocab_size;
    return 1;
}

/* Logits of tokens[B][T] at pos0 into out[B][T][V] (host memory). */
static int run_logits(runner *r, const int *tokens, int B, int T, int pos0, float *out) {
    rq_err err = {0};
    rq_status st = rq_forward_run(r->s, tokens, B, T, pos0, &err);
    CHECKF(st == RQ_OK, "rq_forward_run(B=%d, T=%d, pos0=%d): %s", B, T, pos0, err.msg);
    if (st != RQ_OK) return 0;
    st = rq_forward_logits(r->s, NULL, B * T, out, &err);
    CHECKF(st == RQ_OK, "rq_forward_logits: %s", err.msg);
    return st == RQ_OK;
}

static float *alloc_logits(const ref_logits *ref) {
    float *p = calloc((size_t)ref->B * ref->T * ref->V, sizeof(float));
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    return p;
}

static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* ---- the checks ------------------------------------------------------------------- */

/* Full-sequence logits of a model against its reference; returns rilq's logits
 * (caller frees) for the self-consistency checks, or NULL on failure. */
static float *check_model_vs_ref(const char *what, const char *model_dir, const ref_logits *ref, rq_backend *be) {
    runner r;
    if (!runner_open(&r, model_dir, NULL, be, ref->B, ref->T, false)) return NULL;
    CHECKF(r.V == ref->V, "%s: vocab %d, reference %d", what, r.V, ref->V);
    float *got = alloc_logits(ref);
    int ok = r.V == ref->V && run_logits(&r, ref->tokens, ref->B, ref->T, 0, got);
    if (ok) check_vs_ref(what, got, ref->logits, (size_t)ref->B * ref->T * ref->V);
    runner_free(&r);
    if (!ok) {
        free(got);
        return NULL;
    }
    return got;
}

/* Batched rows equal one-sequence-at-a-time runs of the same state. */
static void check_batch_vs_single(const char *model_dir, const ref_logits *ref, const float *batched, rq_backend *be) {
    runner r;
    if (!runner_open(&r, model_dir, NULL, be, ref->B, ref->T, false)) return;
    size_t row = (size_t)ref->T * ref->V;
    float *one = malloc(row * sizeof(float));
    for (int b = 0; one && b < ref->B; b++) {
        if (!run_logits(&r, ref->tokens + (size_t)b * ref->T, 1, ref->T, 0, one)) break;
        char what[64];
        snprintf(what, sizeof what, "batched row %d == single run", b);
        check_vs_self(what, batched + b * row, one, row, 0);
    }
    free(one);
    runner_free(&r);
}

/* KV cache: run a prefix, then the rest one token at a time at pos0 > 0; each
 * step's logits must equal the full run's reference at that position. */
static void check_kv_cache(const char *what, const char *model_dir, const char *tok_path, const ref_logits *ref,
                           int prefix, rq_backend *be) {
    runner r;
    if (!runner_open(&r, model_dir, tok_path, be, ref->B, ref->T, true)) return;
    int B = ref->B, T = ref->T, V = ref->V;
    float *got = alloc_logits(ref); /* reassembled [B][T][V] */
    float *step = malloc((size_t)B * prefix * V * sizeof(float));
    int *toks = malloc((size_t)B * prefix * sizeof(int));
    int ok = step && toks;
    for (int b = 0; ok && b < B; b++) memcpy(toks + b * prefix, ref->tokens + (size_t)b * T, prefix * sizeof(int));
    ok = ok && run_logits(&r, toks, B, prefix, 0, step);
    for (int b = 0; ok && b < B; b++)
        memcpy(got + (size_t)b * T * V, step + (size_t)b * prefix * V, (size_t)prefix * V * sizeof(float));
    for (int t = prefix; ok && t < T; t++) {
        for (int b = 0; b < B; b++) toks[b] = ref->tokens[(size_t)b * T + t];
        ok = run_logits(&r, toks, B, 1, t, step);
        for (int b = 0; ok && b < B; b++)
            memcpy(got + ((size_t)b * T + t) * V, step + (size_t)b * V, (size_t)V * sizeof(float));
    }
    if (ok) check_vs_ref(what, got, ref->logits, (size_t)B * T * V);
    free(toks);
    free(step);
    free(got);
    runner_free(&r);
}

/* rq_forward_nll against a double-precision log-softmax of the reference logits,
 * per sequence. Targets are the next tokens; the last position and one position
 * in the middle of each row are masked (< 0) so the counts are checked too. */
#define NLL_MAX_B 8
static void check_nll(const char *model_dir, const ref_logits *ref, rq_backend *be) {
    int B = ref->B, T = ref->T, V = ref->V;
    CHECK(B <= NLL_MAX_B);
    if (B > NLL_MAX_B) return;
    runner r;
    if (!runner_open(&r, model_dir, NULL, be, B, T, false)) return;
    int *targets = malloc((size_t)B * T * sizeof(int));
    double want[NLL_MAX_B] = {0};
    int64_t want_n[NLL_MAX_B] = {0};
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            int y = t + 1 < T && t != T / 2 + b ? ref->tokens[(size_t)b * T + t + 1] : -1;
            targets[(size_t)b * T + t] = y;
            if (y < 0) continue;
            const float *l = ref->logits + ((size_t)b * T + t) * V;
            double mx = l[0], sum = 0.0;
            for (int v = 1; v < V; v++) mx = fmax(mx, l[v]);
            for (int v = 0; v < V; v++) sum += exp((double)l[v] - mx);
            want[b] += mx + log(sum) - l[y];
            want_n[b]++;
        }
    rq_err err = {0};
    double nll[NLL_MAX_B] = {0};
    int64_t n[NLL_MAX_B] = {0};
    CHECK_OK(rq_forward_run(r.s, ref->tokens, B, T, 0, &err), &err);
    CHECK_OK(rq_forward_nll(r.s, targets, B, T, nll, n, &err), &err);
    /* One token's -log p moves by at most 2x the largest logit error (the
     * target logit and the log-sum-exp each by at most that much); the fp32
     * log-sum-exp adds rounding of order 1e-6 per token, far below that. */
    double scale = logit_scale(ref->logits, (size_t)B * T * V);
    for (int b = 0; b < B; b++) {
        double tol = 2.0 * (double)want_n[b] * LOGIT_TOL_REL_SCALE * scale;
        printf("  rq_forward_nll row %d: %.6f ref %.6f |diff| %.3g (tol %.3g) count %lld ref %lld\n", b, nll[b],
               want[b], fabs(nll[b] - want[b]), tol, (long long)n[b], (long long)want_n[b]);
        CHECK(n[b] == want_n[b]);
        CHECK_NEAR(nll[b], want[b], tol);
    }
    free(targets);
    runner_free(&r);
}

/* The stories260K golden outputs of upstream llama2.c (models/stories260K/SOURCE.md). */
static const int golden_tokens[32] = {1,   403, 407, 261, 378, 432, 383, 286, 261, 376, 298,
                                      315, 421, 395, 317, 426, 338, 401, 396, 267, 337, 410,
                                      408, 419, 292, 411, 322, 265, 282, 295, 433, 426};

/* Position-0 numbers printed by llama2.c, and the prompt's logits vs the reference. */
static void check_stories_prompt(runner *r, const ref_logits *golden, float *lg) {
    int V = r->V;
    if (!run_logits(r, golden->tokens, 1, golden->T, 0, lg)) return;
    int best = argmax(lg, V);
    printf("  pos 0: l[0] %.4f l[1] %.4f l[2] %.4f argmax %d (%.4f)\n", lg[0], lg[1], lg[2], best, lg[best]);
    CHECK_NEAR(lg[0], -6.2229, GOLDEN_TOL);
    CHECK_NEAR(lg[1], 8.4043, GOLDEN_TOL);
    CHECK_NEAR(lg[2], -6.2237, GOLDEN_TOL);
    CHECK(best == 403);
    CHECK_NEAR(lg[403], 17.0235, GOLDEN_TOL);
    check_vs_ref("prompt logits vs reference", lg, golden->logits, (size_t)golden->T * V);
}

/* Greedy continuation of the 5-token prompt with the KV cache: pure argmax over
 * our logits must reproduce llama2.c's 32 tokens. */
static void check_stories_greedy(runner *r, float *lg) {
    int V = r->V, toks[32];
    memcpy(toks, golden_tokens, 5 * sizeof(int));
    int n = 5, ok = run_logits(r, toks, 1, 5, 0, lg);
    const float *last = lg + (size_t)4 * V;
    while (ok && n < 32) {
        toks[n] = argmax(last, V);
        if (n + 1 < 32) ok = run_logits(r, toks + n, 1, 1, n, lg);
        last = lg;
        n++;
    }
    int first_bad = -1;
    for (int i = 0; i < 32 && first_bad < 0; i++)
        if (toks[i] != golden_tokens[i]) first_bad = i;
    printf("  greedy 32 tokens with KV cache: %s", first_bad < 0 ? "match golden\n" : "MISMATCH:");
    if (first_bad >= 0) {
        for (int i = 0; i < 32; i++) printf(" %d", toks[i]);
        printf(" (first difference at %d)\n", first_bad);
    }
    CHECKF(ok && first_bad < 0, "greedy decoding differs from golden at position %d", first_bad);
}

static void check_stories(const char *model, const char *tok, const ref_logits *golden, const ref_logits *longer,
                          rq_backend *be) {
    printf("stories260K (%s)\n", model);
    runner r;
    if (!runner_open(&r, model, tok, be, longer->B, longer->T, true)) return;
    CHECKF(r.V == 512 && golden->V == 512 && longer->V == 512, "stories260K vocab %d (reference %d, %d)", r.V,
           golden->V, longer->V);
    float *lg = calloc((size_t)longer->B * longer->T * longer->V, sizeof(float));
    if (lg && r.V == 512 && golden->V == 512 && longer->V == 512 && golden->T <= longer->T) {
        check_stories_prompt(&r, golden, lg);
        check_stories_greedy(&r, lg);
        /* Longer sequences (greedy continuation and random tokens), B=2, full run. */
        if (run_logits(&r, longer->tokens, longer->B, longer->T, 0, lg))
            check_vs_ref("B=2 T=128 logits vs reference", lg, longer->logits, (size_t)longer->B * longer->T * 512);
    }
    free(lg);
    runner_free(&r);
    /* Incremental decoding on the long batch: prefix 40, then one token at a time. */
    check_kv_cache("B=2 KV cache (prefix 40, +1 x 88)", model, tok, longer, 40, be);
}

/* Skip only when nothing has failed yet: a skip must never hide a failure. */
static void missing(const char *what) {
    if (rq_test_failed) {
        fprintf(stderr, "missing %s (after failures above)\n", what);
        exit(rq_test_finish());
    }
    rq_test_missing(what);
}

static int file_exists(const char *p) {
    FILE *f = fopen(p, "rb");
    if (f) fclose(f);
    return f != NULL;
}

int main(void) {
    if (!file_exists(rq_test_out("ref/DONE")))
        rq_test_missing("reference fixtures in $RQ_TEST_OUT/ref (ctest runs reference_fixtures first; it needs "
                        "/usr/bin/python3 with python3-torch)");
    rq_err err = {0};
    rq_backend *be = NULL;
    CHECK_OK(rq_backend_cpu_create(0, &be, &err), &err);
    if (!be) return rq_test_finish();

    ref_logits batch, lng, bf16, tied;
    if (!ref_load(rq_test_out("ref/random_f32.batch.logits"), &batch) ||
        !ref_load(rq_test_out("ref/random_f32.long.logits"), &lng) ||
        !ref_load(rq_test_out("ref/random_bf16.batch.logits"), &bf16) ||
        !ref_load(rq_test_out("ref/random_tied.batch.logits"), &tied))
        return rq_test_finish();

    printf("random llama3-scaled GQA model (F32)\n");
    char f32_dir[4096]; /* rq_test_out's buffers are reused after 8 calls */
    snprintf(f32_dir, sizeof f32_dir, "%s", rq_test_out("ref/random_f32"));
    float *f32_logits = check_model_vs_ref("B=2 T=40 logits vs reference", f32_dir, &batch, be);
    float *tmp = check_model_vs_ref("B=1 T=200 logits vs reference", f32_dir, &lng, be);
    free(tmp);
    if (f32_logits) check_batch_vs_single(f32_dir, &batch, f32_logits, be);
    check_kv_cache("B=1 KV cache (prefix 150, +1 x 50)", f32_dir, NULL, &lng, 150, be);
    check_kv_cache("B=2 KV cache (prefix 30, +1 x 10)", f32_dir, NULL, &batch, 30, be);
    check_kv_cache("B=2 KV cache (prefix 1, +1 x 39)", f32_dir, NULL, &batch, 1, be);
    check_nll(f32_dir, &batch, be);

    printf("sharded F32 (3 files + index)\n");
    float *sharded = check_model_vs_ref("B=2 T=40 logits vs reference", rq_test_out("ref/random_sharded"), &batch, be);
    /* Same fp32 weights, same code, same shapes: nothing may differ. */
    if (sharded && f32_logits)
        check_vs_self("sharded == single file (bitwise)", sharded, f32_logits, (size_t)batch.B * batch.T * batch.V, 1);
    free(sharded);
    free(f32_logits);

    printf("BF16 (reference run on bf16-rounded weights)\n");
    free(check_model_vs_ref("B=2 T=40 logits vs reference", rq_test_out("ref/random_bf16"), &bf16, be));

    ref_logits f16;
    if (ref_load(rq_test_out("ref/random_f16.batch.logits"), &f16)) {
        printf("F16 (reference run on fp16-rounded weights)\n");
        free(check_model_vs_ref("B=2 T=40 logits vs reference", rq_test_out("ref/random_f16"), &f16, be));
        ref_free(&f16);
    }

    printf("tied head, linear rope scaling, MHA, defaulted config keys\n");
    free(check_model_vs_ref("B=2 T=40 logits vs reference", rq_test_out("ref/random_tied"), &tied, be));

    ref_free(&batch);
    ref_free(&lng);
    ref_free(&bf16);
    ref_free(&tied);

    /* stories260K: needs the real model ($RILQ_DATA) and the fixture's dumps of it. */
    const char *root = getenv("RILQ_DATA");
    char model[4096], tok[4096];
    snprintf(model, sizeof model, "%s/models/stories260K/stories260K.bin", root ? root : "");
    snprintf(tok, sizeof tok, "%s/models/stories260K/tok512.bin", root ? root : "");
    if (!root || !*root || !file_exists(model)) {
        rq_backend_destroy(be);
        missing("stories260K ($RILQ_DATA/models/stories260K/stories260K.bin)");
    }
    if (!file_exists(rq_test_out("ref/stories260K.golden.logits"))) {
        rq_backend_destroy(be);
        missing("ref/stories260K.*.logits (the fixture ran without RILQ_DATA)");
    }
    ref_logits golden, longer;
    if (ref_load(rq_test_out("ref/stories260K.golden.logits"), &golden) &&
        ref_load(rq_test_out("ref/stories260K.long.logits"), &longer)) {
        check_stories(model, tok, &golden, &longer, be);
        ref_free(&golden);
        ref_free(&longer);
    }
    rq_backend_destroy(be);
    return rq_test_finish();
}
