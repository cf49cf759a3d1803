/* Shared by the interop tests (tests/interop_*.c, label "interop"): the model
 * cases (full precision, 2-bit RTN, 2-bit with a QA-LoRA adapter merged into its
 * offsets), fixed text windows, rilq's logits, file helpers and the comparison. */
#ifndef RQ_TEST_INTEROP_H
#define RQ_TEST_INTEROP_H

#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>

#include "../test.h"
#include "../adapter_fixtures.h"

#include "adapter/adapter.h"
#include "adapter/merge.h"
#include "eval/ppl.h"
#include "model/forward.h"
#include "quant/quantize_model.h"

static rq_backend *ip_be;

/* Run a shell command; its exit code (-1 when it could not run or was killed). */
static int ip_system(const char *cmd) {
    fflush(stdout);
    fflush(stderr);
    int rc = system(cmd);
    return rc != -1 && WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

/* The repository root (ctest sets RQ_SOURCE_DIR; by hand: the parent of tests/). */
static const char *ip_source_dir(void) {
    const char *s = getenv("RQ_SOURCE_DIR");
    return s && *s ? s : "..";
}

/* ---- the model cases ---- */

/* Quantize m in place: RTN, int2 codebook, groups of 64, every projection. */
static void ip_quantize(rq_model *m) {
    rq_err err = {0};
    rq_model_quant_opts o;
    rq_model_quant_opts_default(&o);
    o.quant.method = RQ_QUANT_RTN;
    o.quant.group_size = 64;
    CHECK_OK(rq_model_quantize(m, &o, NULL, &err), &err);
}

/* Merge a QA-LoRA adapter (rank 8, groups of 64, all seven projections) with
 * random A ~ U(-1, 1) and B ~ U(-b, b) into m's offsets, in place: b gives
 * updates of about 0.05 of a quantization step, a fine-tuning size (the
 * sizing of tests/test_merge.c), so the merged offsets are no longer what RTN
 * produced and no longer s times an integer. */
static void ip_merge_random_adapter(rq_model *m) {
    rq_err err = {0};
    rq_rng rng;
    rq_rng_seed(&rng, 4242);
    rq_adapter_set *s = rq_test_random_adapters(m, ip_be, &rng, RQ_ADAPTER_QALORA, 8, 64, rq_test_b_range(0.05f, 8, 64));
    if (!s) return;
    rq_merge_opts o;
    rq_merge_opts_default(&o);
    o.n_threads = 1;
    o.verify_seqs = 0; /* tests/test_merge.c verifies merges; here only the exports matter */
    rq_merge_report rep;
    CHECK_OK(rq_merge_model(m, s, ip_be, &o, &rep, &err), &err);
    CHECKF(rep.exact == m->cfg.n_layers * RQ_N_PROJ, "merge: %d of %d projections folded exactly", rep.exact,
           m->cfg.n_layers * RQ_N_PROJ);
    rq_adapter_set_free(s);
}

/* ---- text and windows ---- */

/* The first max_bytes of the WikiText-2 test text (GPTQ joining), cut at a
 * line end. */
static char *ip_wikitext(size_t max_bytes, size_t *len) {
    rq_err err = {0};
    char *text = NULL;
    const char *raw = rq_test_data("datasets/wikitext2/wiki.test.raw");
    CHECK_OK(rq_wikitext2_text(raw, &text, len, &err), &err);
    if (!text) return NULL;
    if (*len > max_bytes) {
        size_t n = max_bytes;
        while (n > 0 && text[n - 1] != '\n') n--;
        *len = n;
        text[n] = 0;
    }
    return text;
}

/* Token ids as text: n_rows lines of T ids each. */
static bool ip_write_ids(const char *path, const int *ids, int n_rows, int T) {
    FILE *f = fopen(path, "w");
    if (!f) return false;
    for (int r = 0; r < n_rows; r++)
        for (int t = 0; t < T; t++) fprintf(f, "%d%c", ids[(size_t)r * T + t], t + 1 < T ? ' ' : '\n');
    return fclose(f) == 0;
}

/* Lines of ids back (one malloc'ed int array per line, lens[i]); returns the line count. */
static int ip_read_id_lines(const char *path, int ***lines, int **lens) {
    char *text = NULL;
    size_t size = 0;
    *lines = NULL;
    *lens = NULL;
    if (rq_file_read_all(path, &text, &size, NULL) != RQ_OK) return -1;
    int n = 0;
    for (size_t i = 0; i < size; i++) n += text[i] == '\n';
    *lines = calloc((size_t)n + 1, sizeof **lines);
    *lens = calloc((size_t)n + 1, sizeof **lens);
    char *p = text;
    for (int k = 0; k < n; k++) {
        char *end = strchr(p, '\n');
        *end = 0;
        int cap = 16, c = 0;
        int *ids = malloc(sizeof(int) * (size_t)cap);
        for (char *q = p, *e;; q = e) {
            long v = strtol(q, &e, 10);
            if (e == q) break;
            if (c == cap) ids = realloc(ids, sizeof(int) * (size_t)(cap *= 2));
            ids[c++] = (int)v;
        }
        (*lines)[k] = ids;
        (*lens)[k] = c;
        p = end + 1;
    }
    free(text);
    return n;
}

static void ip_free_id_lines(int **lines, int *lens, int n) {
    for (int i = 0; i < n; i++) free(lines[i]);
    free(lines);
    free(lens);
}

/* n floats from a raw float32 file, or NULL when its size is not n floats. */
static float *ip_read_f32(const char *path, size_t n) {
    char *data = NULL;
    size_t size = 0;
    if (rq_file_read_all(path, &data, &size, NULL) != RQ_OK) return NULL;
    if (size != n * sizeof(float)) {
        fprintf(stderr, "%s: %zu bytes, expected %zu floats\n", path, size, n);
        free(data);
        return NULL;
    }
    return (float *)data;
}

/* rilq's logits of each window [n][T] from scratch: [n][T][vocab]. */
static float *ip_logits(const rq_model *m, const int *windows, int n, int T) {
    rq_err err = {0};
    size_t V = (size_t)m->cfg.vocab_size;
    float *out = malloc(sizeof(float) * (size_t)n * (size_t)T * V);
    rq_forward_opts o = {.max_batch = 1, .max_seq = T};
    rq_forward_state *s = NULL;
    rq_status st = rq_forward_create(m, ip_be, &o, &s, &err);
    for (int w = 0; w < n && st == RQ_OK; w++) {
        st = rq_forward_run(s, windows + (size_t)w * T, 1, T, 0, &err);
        if (st == RQ_OK) st = rq_forward_logits(s, NULL, T, out + (size_t)w * T * V, &err);
    }
    CHECKF(st == RQ_OK, "forward: %s", err.msg);
    rq_forward_free(s);
    return out;
}

/* How two logit sets [rows][V] differ: largest and mean |a - b|, the largest
 * |a| and the rows whose argmax agrees. */
typedef struct ip_diff {
    double max_abs, mean_abs, max_ref;
    int rows, argmax_same;
} ip_diff;

static int ip_argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

static ip_diff ip_compare(const float *ref, const float *got, int rows, int V) {
    ip_diff d = {0};
    double sum = 0;
    d.rows = rows;
    for (int r = 0; r < rows; r++) {
        const float *a = ref + (size_t)r * V, *b = got + (size_t)r * V;
        for (int v = 0; v < V; v++) {
            double e = fabs((double)a[v] - (double)b[v]);
            sum += e;
            if (e > d.max_abs) d.max_abs = e;
            if (fabs(a[v]) > d.max_ref) d.max_ref = fabs(a[v]);
        }
        d.argmax_same += ip_argmax(a, V) == ip_argmax(b, V);
    }
    d.mean_abs = sum / ((double)rows * V);
    return d;
}

#endif
