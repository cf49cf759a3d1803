/* transformers as a real client of `rilq export --format hf` (label interop).
 *
 * For SmolLM2-135M (a GGUF source: tokenizer.json written from the GGUF
 * tokenizer) and stories260K (a llama2.c source: tokenizer.json with merges
 * derived from tok512.bin's scores), 2-bit RTN with a random QA-LoRA adapter
 * merged into the offsets: export, then tools/reference/hf_run.py loads the
 * directory with transformers 4.45 (AutoModelForCausalLM + AutoTokenizer) and
 * the test compares
 *   - tokenization, token for token, of sample texts (digits, runs of spaces,
 *     newlines, tabs, non-ASCII, special-token text) and of WikiText-2 lines;
 *   - logits on fixed WikiText-2 windows, the model loaded in float32:
 *       F32 export: same weights; only the summation order differs (OpenBLAS
 *         tiles vs torch's GEMM, attention and softmax done differently), a few
 *         fp32 ulps per dot product, so max |diff| <= 1e-4 * max |logit|;
 *       F16 export (stories260K): each weight is rounded once to fp16, which
 *         moves this tiny model's logits by ~1% of their size (printed, not
 *         bounded: it is the dtype's choice, not an error). transformers is then
 *         compared with rilq running the same rounded weights (the export read
 *         back by rilq's own HF loader): summation order only, the same bound.
 * Missing python packages skip outside CI and fail under CI=true. */
#include "interop/interop.h"

#include <cjson/cJSON.h>

#include "io/export.h"

/* Texts that stress the pre-tokenizer and the byte handling. */
static const char *const sample_texts[] = {
    "Hello world",
    "The year 2024 had 366 days; 3.14159 is pi, and 1,000,000 is a million.",
    "  two leading spaces\nand\n\nblank lines\ttabs   three spaces  trailing  ",
    "Unicode: na\xC3\xAFve caf\xC3\xA9, \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E, emoji \xF0\x9F\x8E\x89 and "
    "\xD0\x9F\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82",
    "<|im_start|>user\nWhat is 12+7?<|im_end|>\n",
    "Once upon a time, there was a little girl named Lily. She liked to play outside.",
    "x=1;y=22;z=333 # code-like\n\tif (a[0] != b) { return -1; }",
};

static void write_texts(const char *path, char *const *extra, int n_extra) {
    FILE *f = fopen(path, "w");
    int n = (int)(sizeof sample_texts / sizeof sample_texts[0]);
    for (int i = 0; i < n + n_extra && f; i++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "text", i < n ? sample_texts[i] : extra[i - n]);
        char *line = cJSON_PrintUnformatted(o);
        fprintf(f, "%s\n", line);
        free(line);
        cJSON_Delete(o);
    }
    if (f) fclose(f);
}

/* Returns false when transformers is missing (skipped outside CI). */
static bool run_hf(const char *dir, const char *windows, const char *logits, const char *texts, const char *ids) {
    char cmd[32768];
    snprintf(cmd, sizeof cmd,
             "PYTHONPATH='%s/.cache/pylib'${PYTHONPATH:+:$PYTHONPATH} /usr/bin/python3 '%s/tools/reference/hf_run.py' "
             "'%s' '%s' '%s' '%s' '%s' 2>&1 | grep -v 'Starting from v4.46'",
             ip_source_dir(), ip_source_dir(), dir, windows, logits, texts, ids);
    static char full[33000];
    snprintf(full, sizeof full, "bash -o pipefail -c \"%s\"", cmd);
    /* the pipe hides python's exit code from sh; run through bash -o pipefail */
    int code = ip_system(full);
    if (code == 77) {
        if (rq_test_in_ci()) CHECKF(false, "transformers missing under CI (run tools/setup.sh)");
        else printf("SKIPPED: torch/transformers not importable by /usr/bin/python3 (run tools/setup.sh)\n");
        return false;
    }
    CHECKF(code == 0, "hf_run.py on %s: exit %d", dir, code);
    return code == 0;
}

static void check_case(rq_model *m, const char *name, const char *dtype, const char *text, size_t text_len) {
    const double rel_tol = 1e-4;
    rq_err err = {0};
    char dir[4096], windows[4200], logits[4200], texts[4200], ids[4200];
    snprintf(dir, sizeof dir, "%.4000s", rq_test_out(name));
    char rm[4300];
    snprintf(rm, sizeof rm, "rm -rf '%s'", dir);
    ip_system(rm);
    rq_export_report rep;
    CHECK_OK(rq_export_hf(m, dir, &(rq_export_opts){.dtype = dtype}, &rep, &err), &err);
    if (err.code) return;
    printf("%s: HF export (%s) %.1f MiB, %d projections dequantized; tokenizer: %s\n", name, dtype,
           rep.file_bytes / 1048576.0, rep.q_tensors, rep.tokenizer);

    /* windows: fixed WikiText-2 windows tokenized by rilq */
    enum { NW = 2, T = 48 };
    int *all = NULL, n_all = 0;
    CHECK_OK(rq_tokenizer_encode(m->tok, text, text_len, RQ_BOS_OFF, &all, &n_all, &err), &err);
    if (n_all < NW * T + 64) {
        CHECKF(false, "%s: only %d tokens of text", name, n_all);
        free(all);
        return;
    }
    int win[NW * T];
    for (int w = 0; w < NW; w++) memcpy(win + w * T, all + 17 + w * (n_all / NW), sizeof(int) * T);
    /* some WikiText-2 lines as extra tokenization texts */
    char *extra[6];
    int n_extra = 0;
    const char *p = text;
    for (int k = 0; k < 40 && n_extra < 6; k++) {
        const char *nl = strchr(p, '\n');
        if (!nl) break;
        if (nl - p > 40) extra[n_extra++] = strndup(p, (size_t)(nl - p));
        p = nl + 1;
    }
    snprintf(windows, sizeof windows, "%s.windows.ids", dir);
    snprintf(logits, sizeof logits, "%s.hf.f32", dir);
    snprintf(texts, sizeof texts, "%s.texts.jsonl", dir);
    snprintf(ids, sizeof ids, "%s.hf.ids", dir);
    CHECK(ip_write_ids(windows, win, NW, T));
    write_texts(texts, extra, n_extra);
    if (!run_hf(dir, windows, logits, texts, ids)) goto done;

    /* tokenization, token for token */
    int **lines = NULL, *lens = NULL;
    int n_lines = ip_read_id_lines(ids, &lines, &lens);
    int n_texts = (int)(sizeof sample_texts / sizeof sample_texts[0]) + n_extra, same = 0;
    CHECKF(n_lines == n_texts, "%s: %d tokenized texts from transformers, expected %d", name, n_lines, n_texts);
    for (int i = 0; i < n_lines && i < n_texts; i++) {
        const char *t = i < n_texts - n_extra ? sample_texts[i] : extra[i - (n_texts - n_extra)];
        int *ours = NULL, n_ours = 0;
        CHECK_OK(rq_tokenizer_encode(m->tok, t, strlen(t), RQ_BOS_DEFAULT, &ours, &n_ours, &err), &err);
        bool ok = n_ours == lens[i] && (n_ours == 0 || memcmp(ours, lines[i], sizeof(int) * (size_t)n_ours) == 0);
        if (!ok) {
            fprintf(stderr, "%s: text %d \"%.50s\": rilq %d tokens, transformers %d:", name, i, t, n_ours, lens[i]);
            for (int k = 0; k < 12 && k < n_ours; k++) fprintf(stderr, " %d", ours[k]);
            fprintf(stderr, " |");
            for (int k = 0; k < 12 && k < lens[i]; k++) fprintf(stderr, " %d", lines[i][k]);
            fprintf(stderr, "\n");
        }
        same += ok;
        free(ours);
    }
    CHECKF(same == n_texts, "%s: %d of %d texts tokenized identically by transformers", name, same, n_texts);
    printf("%s: tokenization: %d/%d texts identical (rilq vs transformers' AutoTokenizer)\n", name, same, n_texts);
    ip_free_id_lines(lines, lens, n_lines);

    /* logits */
    int V = m->cfg.vocab_size;
    float *ours = ip_logits(m, win, NW, T), *theirs = ip_read_f32(logits, (size_t)NW * T * (size_t)V);
    CHECKF(theirs != NULL, "%s: transformers' logits missing", name);
    if (theirs && strcmp(dtype, "f32") != 0) {
        /* rounded weights: rilq on the export itself (its HF loader), the rounding's effect printed */
        ip_diff r = ip_compare(ours, theirs, NW * T, V);
        printf("%s: %s rounding of the weights moves the logits by max %.3g = %.2g of max |logit| (mean %.3g, argmax "
               "equal %d/%d)\n", name, dtype, r.max_abs, r.max_abs / r.max_ref, r.mean_abs, r.argmax_same, r.rows);
        rq_model *back = NULL;
        CHECK_OK(rq_model_load(dir, NULL, &back, &err), &err);
        free(ours);
        ours = back ? ip_logits(back, win, NW, T) : NULL;
        rq_model_free(back);
    }
    if (theirs && ours) {
        ip_diff d = ip_compare(ours, theirs, NW * T, V);
        CHECKF(d.max_abs <= rel_tol * d.max_ref, "%s: logits differ by %.3g, bound %.3g (max |logit| %.3g)", name,
               d.max_abs, rel_tol * d.max_ref, d.max_ref);
        CHECKF(d.argmax_same == d.rows, "%s: argmax equal at %d of %d positions", name, d.argmax_same, d.rows);
        printf("%s: logits vs transformers (%d windows x %d, rilq on the %s): max |diff| %.3g = %.2g of max |logit| %.3g (bound %.2g), "
               "mean |diff| %.3g, argmax equal %d/%d\n",
               name, NW, T, strcmp(dtype, "f32") ? "export read back" : "2-bit model", d.max_abs, d.max_abs / d.max_ref, d.max_ref, rel_tol, d.mean_abs, d.argmax_same, d.rows);
    }
    free(ours);
    free(theirs);
done:
    for (int i = 0; i < n_extra; i++) free(extra[i]);
    free(all);
}

static void test_stories(const char *text, size_t len) {
    rq_err err = {0};
    rq_model *m = NULL;
    CHECK_OK(rq_model_load(rq_test_data("models/stories260K/stories260K.bin"), NULL, &m, &err), &err);
    if (!m) return;
    ip_quantize(m);
    ip_merge_random_adapter(m);
    check_case(m, "hf_stories_merged_f32", "f32", text, len);
    check_case(m, "hf_stories_merged_f16", "f16", text, len);
    rq_model_free(m);
}

static void test_smollm2(const char *text, size_t len) {
    rq_err err = {0};
    rq_model *m = NULL;
    CHECK_OK(rq_model_load(rq_test_smollm2(), NULL, &m, &err), &err);
    if (!m) return;
    ip_quantize(m);
    ip_merge_random_adapter(m);
    check_case(m, "hf_smollm2_merged_f32", "f32", text, len);
    rq_model_free(m);
}

int main(void) {
    rq_err err = {0};
    CHECK_OK(rq_backend_create("cpu", 1, &ip_be, &err), &err);
    if (!ip_be) return 1;
    size_t len = 0;
    char *text = ip_wikitext(60000, &len);
    if (text) {
        test_stories(text, len);
        test_smollm2(text, len);
    }
    free(text);
    rq_backend_destroy(ip_be);
    return rq_test_finish();
}
