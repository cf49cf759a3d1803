/* Deployment exports (src/io/export.h): quantize -> artifact -> GGUF / HQQ.
 *
 * GGUF: read back with rilq's own GGUF reader, every Q4_1 weight (after the
 * reader's q/k un-permutation) must equal the artifact's q2 weight bit for bit,
 * the F32 tensors too, the logits must match, the tokenizer must encode the
 * same; then tools/reference/gguf_check.py validates the file with llama.cpp's
 * Python reader (the `gguf` package). HQQ: the codes/scale/zero are unpacked
 * here the way hqq does and compared with the artifact, then
 * tools/reference/hqq_check.py does the same in numpy. Rows that are not whole
 * Q4_1 blocks (in_features % 32 != 0: stories260K's down_proj, a dim-80 model)
 * go to GGUF as exact F32 (same checks, bit for bit). Refusals: the nf2
 * codebook, a group size that splits Q4_1 blocks, ragged last groups for HQQ.
 *
 * A missing python package skips the python part with a message outside CI
 * and fails it under CI=true. */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test.h"
#include "io_fixtures.h"

#include "io/artifact.h"
#include "io/export.h"
#include "io/safetensors.h"
#include "model/forward.h"
#include "quant/q2.h"
#include "quant/quantize_model.h"

static rq_backend *be;

static void remove_tree(const char *dir) {
    char cmd[4400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

/* An empty path under the test output root, copied into buf (rq_test_out's
 * buffers are reused after a few calls). */
typedef struct out_path {
    char p[4200];
} out_path;
static out_path fresh(const char *name) {
    out_path o;
    snprintf(o.p, sizeof o.p, "%s", rq_test_out(name));
    remove_tree(o.p);
    return o;
}

static bool path_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

/* ---- python reference checks ------------------------------------------------------ */

/* Run tools/reference/SCRIPT with ARGS under /usr/bin/python3 with the
 * repository's .cache/pylib (where tools/setup.sh installs gguf) on the path.
 * Exit 77 from the script = a missing package: a skip here, a failure in CI. */
static void run_python_check(const char *script, const char *a, const char *b) {
    const char *src = getenv("RQ_SOURCE_DIR");
    char cmd[13000];
    if (!src) src = "..";
    snprintf(cmd, sizeof cmd, "PYTHONPATH='%s/.cache/pylib'${PYTHONPATH:+:$PYTHONPATH} /usr/bin/python3 '%s/tools/reference/%s' '%s' '%s'",
             src, src, script, a, b);
    fflush(stdout);
    int rc = system(cmd);
    int code = rc != -1 && WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
    if (code == 77 || code == 127) {
        CHECKF(!rq_test_in_ci(), "%s: python or a python package is missing under CI (run tools/setup.sh)", script);
        if (!rq_test_in_ci()) printf("SKIPPED %s: python3 with numpy/gguf not available (run tools/setup.sh)\n", script);
        return;
    }
    CHECKF(code == 0, "%s %s %s: exit %d", script, a, b, code);
}

/* ---- model helpers ----------------------------------------------------------------- */

static float *logits_of(const rq_model *m, const int *tokens, int T) {
    rq_err err = {0};
    rq_forward_opts o = {.max_batch = 1, .max_seq = T};
    rq_forward_state *s = NULL;
    float *out = malloc(sizeof(float) * (size_t)T * (size_t)m->cfg.vocab_size);
    rq_status st = rq_forward_create(m, be, &o, &s, &err);
    if (st == RQ_OK) st = rq_forward_run(s, tokens, 1, T, 0, &err);
    if (st == RQ_OK) st = rq_forward_logits(s, NULL, T, out, &err);
    CHECKF(st == RQ_OK, "forward: %s", err.msg);
    rq_forward_free(s);
    return out;
}

/* The hyperparameters an export must carry over. */
static void check_same_config(const rq_config *a, const rq_config *b, const char *name) {
    CHECKF(a->dim == b->dim && a->hidden_dim == b->hidden_dim && a->n_layers == b->n_layers && a->n_heads == b->n_heads &&
               a->n_kv_heads == b->n_kv_heads && a->head_dim == b->head_dim && a->vocab_size == b->vocab_size &&
               a->max_seq_len == b->max_seq_len && a->norm_eps == b->norm_eps && a->rope_theta == b->rope_theta &&
               a->tie_embeddings == b->tie_embeddings && a->rope_scaling == b->rope_scaling,
           "%s: the configuration changed in the export", name);
    if (a->rope_scaling == RQ_ROPE_SCALING_LLAMA3)
        CHECK(b->rope_factor == a->rope_factor && b->rope_orig_max_pos == a->rope_orig_max_pos &&
              b->rope_low_freq_factor == a->rope_low_freq_factor && b->rope_high_freq_factor == a->rope_high_freq_factor);
}

/* Logits of the same weights read back from an export: a different GEMM
 * blocking (q2 row tiles vs one fp32 call) reorders fp32 sums; 1e-4 of the
 * largest logit covers that (as in test_artifact, where ~1e-6 is observed). */
static void check_same_logits(const rq_model *a, const rq_model *b, const char *name, double *max_diff, double *max_abs) {
    enum { T = 24 };
    int tokens[T];
    for (int t = 0; t < T; t++) tokens[t] = (t * 37 + 11) % a->cfg.vocab_size;
    float *la = logits_of(a, tokens, T), *lb = logits_of(b, tokens, T);
    *max_abs = 0, *max_diff = 0;
    for (size_t i = 0; i < (size_t)T * (size_t)a->cfg.vocab_size; i++) {
        if (fabs(la[i]) > *max_abs) *max_abs = fabs(la[i]);
        if (fabs(la[i] - lb[i]) > *max_diff) *max_diff = fabs(la[i] - lb[i]);
    }
    CHECKF(*max_diff <= 1e-4 * *max_abs + 1e-6, "%s: logits differ by %.3g (max |logit| %.3g)", name, *max_diff, *max_abs);
    free(la);
    free(lb);
}

static rq_model *quantize_to_artifact(rq_model *m, rq_quant_method method, int gs, unsigned mask, const char *dir) {
    rq_err err = {0};
    rq_model_quant_opts o;
    rq_model_quant_opts_default(&o);
    o.quant.method = method;
    o.quant.group_size = gs;
    o.proj_mask = mask;
    CHECK_OK(rq_model_quantize(m, &o, NULL, &err), &err);
    remove_tree(dir);
    CHECK_OK(rq_artifact_write(m, dir, NULL, &err), &err);
    rq_model *art = NULL;
    CHECK_OK(rq_artifact_load(dir, &art, &err), &err);
    return art;
}

static void attach_tokenizer(rq_model *m, const char *json) {
    rq_err err = {0};
    CHECK_OK(rq_tokenizer_load_hf_json(json, &m->tok, &err), &err);
    snprintf(m->tokenizer_path, sizeof m->tokenizer_path, "%s", json);
}

/* The texts of a tokenizer reference file (tests/data/tokenizer/NAME.jsonl). */
static char **reference_texts(const char *jsonl, int *n) {
    char path[512], *text = NULL;
    size_t len = 0;
    snprintf(path, sizeof path, "data/tokenizer/%s", jsonl);
    *n = 0;
    if (rq_file_read_all(path, &text, &len, NULL) != RQ_OK) return NULL;
    char **out = calloc(4096, sizeof *out);
    for (char *line = strtok(text, "\n"); line && *n < 4096; line = strtok(NULL, "\n")) {
        if (line[0] != '{') continue;
        cJSON *j = cJSON_Parse(line);
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "text");
        if (cJSON_IsString(t)) out[(*n)++] = strdup(t->valuestring);
        cJSON_Delete(j);
    }
    free(text);
    return out;
}

static void check_same_tokenizer(const rq_tokenizer *a, const rq_tokenizer *b, const char *jsonl, const char *what) {
    CHECKF(a && b, "%s: tokenizer missing after export", what);
    if (!a || !b) return;
    int n = 0, same = 0;
    char **texts = reference_texts(jsonl, &n);
    CHECKF(n > 10, "%s: reference texts of %s", what, jsonl);
    for (int i = 0; i < n; i++) {
        rq_err err = {0};
        int *ia = NULL, *ib = NULL, na = 0, nb = 0;
        rq_status sa = rq_tokenizer_encode(a, texts[i], strlen(texts[i]), RQ_BOS_DEFAULT, &ia, &na, &err);
        rq_status sb = rq_tokenizer_encode(b, texts[i], strlen(texts[i]), RQ_BOS_DEFAULT, &ib, &nb, &err);
        bool ok = sa == RQ_OK && sb == RQ_OK && na == nb && (na == 0 || memcmp(ia, ib, sizeof(int) * (size_t)na) == 0);
        if (!ok && same + 1 > i - 3) fprintf(stderr, "%s: text %d encodes differently after export: %.60s\n", what, i, texts[i]);
        same += ok;
        free(ia);
        free(ib);
        free(texts[i]);
    }
    free(texts);
    CHECKF(same == n, "%s: %d of %d texts encode the same after the GGUF round trip", what, same, n);
    printf("%s: tokenizer round trip: %d/%d reference texts encode identically\n", what, same, n);
}

/* ---- GGUF ---------------------------------------------------------------------------- */

static bool same_floats(const float *a, const float *b, size_t n) { return memcmp(a, b, n * sizeof(float)) == 0; }

/* Export art (an artifact loaded from art_dir) to GGUF, read it back with
 * rilq's reader and compare weights, logits and tokenizer. want_fallback: how
 * many q2 projections must come out as F32 (rows not whole Q4_1 blocks). */
static void gguf_round_trip(const rq_model *art, const char *art_dir, const char *name, const char *tok_jsonl,
                            int want_fallback) {
    rq_err err = {0};
    char path[4200];
    snprintf(path, sizeof path, "%s.gguf", rq_test_out(name));
    unlink(path);
    rq_export_report rep;
    CHECK_OK(rq_export_gguf(art, path, &(rq_export_opts){.name = name}, &rep, &err), &err);
    rq_model *g = NULL;
    CHECK_OK(rq_model_load(path, NULL, &g, &err), &err);
    if (!g) return;
    const rq_config *a = &art->cfg;
    check_same_config(a, &g->cfg, name);

    /* weights: Q4_1 dequant (d*q + m) == q2 (s*code + m), bit for bit */
    size_t ne = (size_t)a->vocab_size * (size_t)a->dim;
    CHECK(same_floats(art->tok_embed, g->tok_embed, ne));
    CHECK(same_floats(art->final_norm, g->final_norm, (size_t)a->dim));
    if (!a->tie_embeddings) CHECK(same_floats(art->lm_head.w, g->lm_head.w, ne));
    int compared = 0;
    for (int l = 0; l < a->n_layers; l++) {
        CHECK(same_floats(art->layers[l].attn_norm, g->layers[l].attn_norm, (size_t)a->dim));
        CHECK(same_floats(art->layers[l].ffn_norm, g->layers[l].ffn_norm, (size_t)a->dim));
        for (int p = 0; p < RQ_N_PROJ; p++) {
            const rq_linear *x = rq_layer_proj(&art->layers[l], p), *y = rq_layer_proj(&g->layers[l], p);
            size_t n = (size_t)x->out * (size_t)x->in;
            float *w = malloc(n * sizeof(float));
            if (x->q2) rq_q2_dequant(x->q2, w, 1);
            else memcpy(w, x->w, n * sizeof(float));
            CHECKF(y->w && same_floats(w, y->w, n), "%s: layer %d %s differs after the GGUF round trip", name, l, rq_proj_names[p]);
            compared += x->q2 != NULL;
            free(w);
        }
    }
    CHECKF(compared == rep.q_tensors + rep.f32_fallback && compared > 0, "%s: %d q2 projections, report %d Q4_1 + %d F32",
           name, compared, rep.q_tensors, rep.f32_fallback);
    CHECKF(rep.f32_fallback == want_fallback, "%s: %d projections written as F32, expected %d", name, rep.f32_fallback,
           want_fallback);
    CHECK(rep.f32_fallback_bytes == 4 * (uint64_t)rep.f32_fallback_weights);
    CHECK((rep.f32_fallback == 0) == (rep.f32_fallback_first[0] == 0));

    double max_diff = 0, max_abs = 0;
    check_same_logits(art, g, name, &max_diff, &max_abs);
    printf("%s: GGUF %.1f KiB, %d Q4_1 tensors at %.3f bits/weight, %d q2 projections as exact F32 (%.1f KiB%s%s); "
           "reread weights bit-identical; logits max |diff| %.3g (max |logit| %.3g); tokenizer: %s\n",
           name, rep.file_bytes / 1024.0, rep.q_tensors,
           rep.q_weights ? 8.0 * (double)rep.q_bytes / (double)rep.q_weights : 0.0, rep.f32_fallback,
           rep.f32_fallback_bytes / 1024.0, rep.f32_fallback ? ", first " : "", rep.f32_fallback_first, max_diff, max_abs,
           rep.tokenizer[0] ? rep.tokenizer : "none");
    if (tok_jsonl) check_same_tokenizer(art->tok, g->tok, tok_jsonl, name);
    rq_model_free(g);
    run_python_check("gguf_check.py", art_dir, path);
}

/* ---- HQQ ------------------------------------------------------------------------------ */

/* Unpack every quantized module of the HQQ file the way hqq does and compare:
 * codes exact, scale == s exact, (q - zero) * scale within the fp16 rounding of
 * zero (|zero| * 2^-11 * s) plus fp32 evaluation (2^-22 |W|). */
static void hqq_check_in_c(const rq_model *art, const char *dir, const char *name) {
    rq_err err = {0};
    char path[4400];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    rq_safetensors f;
    rq_tensor_table tab = {0};
    CHECK_OK(rq_safetensors_open(path, &f, &tab, &err), &err);
    if (err.code) return;
    double worst = 0;
    int modules = 0;
    for (int l = 0; l < art->cfg.n_layers; l++)
        for (int p = 0; p < RQ_N_PROJ; p++) {
            const rq_q2_tensor *q = rq_layer_proj(&art->layers[l], p)->q2;
            if (!q) continue;
            char base[128], nm[192];
            snprintf(base, sizeof base, "model.layers.%d.%s.%s", l, p <= RQ_PROJ_O ? "self_attn" : "mlp", rq_proj_names[p]);
            snprintf(nm, sizeof nm, "%s.W_q", base);
            const rq_tensor_view *wq = rq_tensor_table_find(&tab, nm);
            snprintf(nm, sizeof nm, "%s.scale", base);
            const rq_tensor_view *sc = rq_tensor_table_find(&tab, nm);
            snprintf(nm, sizeof nm, "%s.zero", base);
            const rq_tensor_view *ze = rq_tensor_table_find(&tab, nm);
            int64_t R = (int64_t)q->out * q->n_groups, gs = q->group_size;
            CHECKF(wq && sc && ze && wq->dtype == RQ_U8 && wq->shape[0] == R / 4 && wq->shape[1] == gs && sc->dtype == RQ_F16 &&
                       sc->shape[0] == R && ze->dtype == RQ_F16 && ze->shape[0] == R,
                   "%s: %s HQQ tensors missing or mis-shaped", name, base);
            if (!wq || !sc || !ze) continue;
            modules++;
            for (int64_t g = 0; g < R; g++) {
                int row = (int)(g / q->n_groups), grp = (int)(g % q->n_groups);
                float s = rq_f16_to_f32(rq_rd_u16(sc->data + 2 * g)), z = rq_f16_to_f32(rq_rd_u16(ze->data + 2 * g));
                int64_t pq = g % (R / 4), slot = g / (R / 4);
                float s_art = rq_q2_scale(q, row, grp);
                if (s_art != 0) CHECK(s == s_art);
                for (int c = 0; c < gs; c++) {
                    int code = (wq->data[pq * gs + c] >> (6 - 2 * slot)) & 3;
                    int col = grp * (int)gs + c;
                    if (s_art != 0 && code != rq_q2_get_code(q, row, col)) {
                        CHECKF(false, "%s: %s row %d col %d: code %d, artifact %d", name, base, row, col, code,
                               rq_q2_get_code(q, row, col));
                        g = R;
                        break;
                    }
                    float w = rq_q2_weight(q, row, col), wh = ((float)code - z) * s;
                    double diff = fabs((double)wh - (double)w);
                    double bound = fabs((double)s) * fabs((double)z) * ldexp(1.0, -11) + ldexp(fabs((double)w), -22);
                    if (diff > bound) {
                        CHECKF(false, "%s: %s row %d col %d: HQQ %.9g vs %.9g (bound %.3g)", name, base, row, col, wh, w, bound);
                        g = R;
                        break;
                    }
                    if (s != 0 && diff / fabs((double)s) > worst) worst = diff / fabs((double)s);
                }
            }
        }
    rq_tensor_table_free(&tab);
    rq_safetensors_close(&f);
    CHECK(modules > 0);
    printf("%s: HQQ: %d modules unpacked in C, max |W_hqq - W| / s = %.3g (fp16 zero rounding, bound |zero| * 2^-11)\n",
           name, modules, worst);
}

static void hqq_export(const rq_model *art, const char *art_dir, const char *name) {
    rq_err err = {0};
    out_path o = fresh(name);
    const char *dir = o.p;
    rq_export_report rep;
    CHECK_OK(rq_export_hqq(art, dir, NULL, &rep, &err), &err);
    if (err.code) return;
    CHECK(rep.q_weights > 0);
    printf("%s: HQQ dir %.1f KiB, %d modules at %.3f bits/weight\n", name, rep.file_bytes / 1024.0, rep.q_tensors,
           8.0 * (double)rep.q_bytes / (double)rep.q_weights);
    hqq_check_in_c(art, dir, name);
    run_python_check("hqq_check.py", art_dir, dir);
}

/* ---- Hugging Face checkpoint ------------------------------------------------------------- */

/* Export art as an HF directory in dtype, read it back with rilq's own HF
 * loader: every weight must be the artifact's (dequantized) weight rounded once
 * to dtype, bit for bit; F32 logits within summation order; the tokenizer
 * (tokenizer.json copied, or written from a GGUF / llama2.c tokenizer) must
 * encode the reference texts identically. */
static void hf_round_trip(const rq_model *art, const char *name, const char *dtype, const char *tok_jsonl) {
    rq_err err = {0};
    out_path o = fresh(name);
    rq_export_report rep;
    CHECK_OK(rq_export_hf(art, o.p, &(rq_export_opts){.dtype = dtype}, &rep, &err), &err);
    if (err.code) return;
    rq_model *g = NULL;
    CHECK_OK(rq_model_load(o.p, NULL, &g, &err), &err);
    if (!g) return;
    const rq_config *a = &art->cfg;
    check_same_config(a, &g->cfg, name);
    bool f32 = !strcmp(dtype, "f32"), f16 = !strcmp(dtype, "f16");
    int bad = 0, compared = 0;
    for (int l = 0; l < a->n_layers; l++)
        for (int p = 0; p < RQ_N_PROJ; p++) {
            const rq_linear *x = rq_layer_proj(&art->layers[l], p), *y = rq_layer_proj(&g->layers[l], p);
            size_t n = (size_t)x->out * (size_t)x->in;
            float *w = malloc(n * sizeof(float));
            if (x->q2) rq_q2_dequant(x->q2, w, 1);
            else memcpy(w, x->w, n * sizeof(float));
            for (size_t i = 0; i < n && y->w; i++) {
                float want = f32 ? w[i] : f16 ? rq_f16_to_f32(rq_f32_to_f16(w[i])) : rq_bf16_to_f32(rq_f32_to_bf16(w[i]));
                bad += memcmp(&want, &y->w[i], sizeof(float)) != 0;
            }
            compared += y->w != NULL;
            free(w);
        }
    CHECKF(bad == 0 && compared == a->n_layers * RQ_N_PROJ, "%s: %d weights are not the artifact's rounded to %s", name,
           bad, dtype);
    if (f32) {
        double max_diff = 0, max_abs = 0;
        check_same_logits(art, g, name, &max_diff, &max_abs);
    }
    printf("%s: HF export (%s) %.1f KiB, %d projections dequantized, reread weights exact; tokenizer: %s\n", name, dtype,
           rep.file_bytes / 1024.0, rep.q_tensors, rep.tokenizer[0] ? rep.tokenizer : "none");
    if (tok_jsonl) check_same_tokenizer(art->tok, g->tok, tok_jsonl, name);
    rq_model_free(g);
}

/* ---- refusals ---------------------------------------------------------------------------- */

static void check_refused(const rq_model *art, const char *name, const char *want1, const char *want2) {
    rq_err err = {0};
    char path[4200];
    snprintf(path, sizeof path, "%s.gguf", rq_test_out(name));
    unlink(path);
    CHECK(rq_export_gguf(art, path, NULL, NULL, &err) == RQ_ERR_UNSUPPORTED);
    CHECKF(strstr(err.msg, want1) && strstr(err.msg, want2), "GGUF refusal message: %s", err.msg);
    CHECKF(!path_exists(path), "%s: a refused export left a file", path);
    printf("%s: GGUF refused: %s\n", name, err.msg);
}

static void check_hqq_refused(const rq_model *art, const char *name, const char *want1, const char *want2) {
    rq_err err = {0};
    out_path o = fresh(name);
    const char *dir = o.p;
    CHECK(rq_export_hqq(art, dir, NULL, NULL, &err) == RQ_ERR_UNSUPPORTED);
    CHECKF(strstr(err.msg, want1) && strstr(err.msg, want2), "HQQ refusal message: %s", err.msg);
    char tmp[4300];
    snprintf(tmp, sizeof tmp, "%s.tmp-%ld", dir, (long)getpid());
    CHECKF(!path_exists(dir) && !path_exists(tmp), "%s: a refused export left a directory", dir);
    printf("%s: HQQ refused: %s\n", name, err.msg);
}

/* ---- cases --------------------------------------------------------------------------------- */

static rq_config base_config(int dim, int ff, int heads, int kv, int vocab, bool tied) {
    rq_config c = {0};
    c.dim = dim;
    c.hidden_dim = ff;
    c.n_layers = 2;
    c.n_heads = heads;
    c.n_kv_heads = kv;
    c.vocab_size = vocab;
    c.max_seq_len = 64;
    c.bos_id = -1;
    c.tie_embeddings = tied;
    return c;
}

/* Untied, GQA, int2 g64, a byte-level tokenizer.json with fewer tokens (700)
 * than embedding rows (704): llama.cpp needs the vocabulary padded. */
static void test_random_g64(void) {
    rq_err err = {0};
    rq_config c = base_config(128, 192, 4, 2, 704, false);
    rq_model *m = NULL;
    CHECK_OK(rq_model_random(&c, 11, &m, &err), &err);
    if (!m) return;
    attach_tokenizer(m, "data/tokenizer/hf_gpt2_small.json");
    out_path od = fresh("exp_random_g64");
    const char *dir = od.p;
    rq_model *art = quantize_to_artifact(m, RQ_QUANT_RTN, 64, 0, dir);
    if (art) {
        gguf_round_trip(art, dir, "exp_random_g64", "hf_gpt2_small.jsonl", 0);
        hqq_export(art, dir, "exp_random_g64_hqq");
        hf_round_trip(art, "exp_random_g64_hf", "f32", "hf_gpt2_small.jsonl");
        hf_round_trip(art, "exp_random_g64_hf16", "f16", NULL);
    }
    rq_model_free(art);
    rq_model_free(m);
}

/* Tied embeddings, llama3 rope scaling (rope_freqs.weight), group size 128,
 * the LLaMA-3 pre-tokenizer. */
static void test_random_tied_llama3(void) {
    rq_err err = {0};
    rq_config c = base_config(128, 256, 2, 1, 700, true);
    c.rope_theta = 500000.0f;
    c.rope_scaling = RQ_ROPE_SCALING_LLAMA3;
    c.rope_factor = 8.0f;
    c.rope_low_freq_factor = 1.0f;
    c.rope_high_freq_factor = 4.0f;
    c.rope_orig_max_pos = 8192;
    rq_model *m = NULL;
    CHECK_OK(rq_model_random(&c, 12, &m, &err), &err);
    if (!m) return;
    attach_tokenizer(m, "data/tokenizer/hf_llama3_small.json");
    out_path od = fresh("exp_random_tied");
    const char *dir = od.p;
    rq_model *art = quantize_to_artifact(m, RQ_QUANT_RTN, 128, 0, dir);
    if (art) {
        gguf_round_trip(art, dir, "exp_random_tied", "hf_llama3_small.jsonl", 0);
        hqq_export(art, dir, "exp_random_tied_hqq");
        hf_round_trip(art, "exp_random_tied_hf", "bf16", "hf_llama3_small.jsonl");
    }
    rq_model_free(art);
    rq_model_free(m);
}

/* A SentencePiece-style tokenizer.json (merges, no scores): GGUF "llama" with
 * scores derived from the merge ranks. */
static void test_random_spm_json(void) {
    rq_err err = {0};
    rq_config c = base_config(64, 128, 2, 2, 512, true);
    rq_model *m = NULL;
    CHECK_OK(rq_model_random(&c, 13, &m, &err), &err);
    if (!m) return;
    attach_tokenizer(m, "data/tokenizer/hf_spm_tok512.json");
    out_path od = fresh("exp_random_spm");
    const char *dir = od.p;
    rq_model *art = quantize_to_artifact(m, RQ_QUANT_RTN, 64, 0, dir);
    if (art) gguf_round_trip(art, dir, "exp_random_spm", "hf_spm_tok512.jsonl", 0);
    rq_model_free(art);
    rq_model_free(m);
}

static void test_refusals_random(void) {
    rq_err err = {0};
    /* nf2: levels Q4_1 / HQQ integer codes cannot carry */
    rq_config c = base_config(64, 128, 2, 2, 64, false);
    rq_model *m = NULL;
    CHECK_OK(rq_model_random(&c, 14, &m, &err), &err);
    if (!m) return;
    rq_model *art = quantize_to_artifact(m, RQ_QUANT_NF2, 64, 0, fresh("exp_nf2").p);
    if (art) {
        check_refused(art, "exp_nf2_refused", "model.layers.0.self_attn.q_proj", "nf2");
        check_hqq_refused(art, "exp_nf2_refused_hqq", "model.layers.0.self_attn.q_proj", "nf2");
    }
    rq_model_free(art);
    rq_model_free(m);

    /* group size 48: a Q4_1 block of 32 would straddle two groups */
    c = base_config(96, 192, 4, 2, 64, false);
    CHECK_OK(rq_model_random(&c, 15, &m, &err), &err);
    if (!m) return;
    art = quantize_to_artifact(m, RQ_QUANT_RTN, 48, 0, fresh("exp_g48").p);
    if (art) check_refused(art, "exp_g48_refused", "model.layers.0.self_attn.q_proj", "group size 48");
    rq_model_free(art);
    rq_model_free(m);
}

/* dim 80 (in_features 80 = 64 + 16 for q, k, v, o, gate, up; 2 layers) with
 * ffn 160 (down_proj: 64 + 64 + 32, whole Q4_1 blocks): the 12 ragged
 * projections go to GGUF as exact F32, q and k through the row permutation;
 * HQQ refuses; group size 48 is still refused by GGUF whatever the rows. */
static void test_random_ragged(void) {
    rq_err err = {0};
    rq_config c = base_config(80, 160, 2, 1, 96, false);
    rq_model *m = NULL;
    CHECK_OK(rq_model_random(&c, 17, &m, &err), &err);
    if (!m) return;
    out_path od = fresh("exp_ragged");
    rq_model *art = quantize_to_artifact(m, RQ_QUANT_RTN, 64, 0, od.p);
    if (art) {
        gguf_round_trip(art, od.p, "exp_ragged", NULL, 12);
        check_hqq_refused(art, "exp_ragged_hqq", "model.layers.0.self_attn.q_proj", "ragged");
    }
    rq_model_free(art);
    rq_model_free(m);

    m = NULL;
    CHECK_OK(rq_model_random(&c, 18, &m, &err), &err);
    if (!m) return;
    art = quantize_to_artifact(m, RQ_QUANT_RTN, 48, 0, fresh("exp_ragged_g48").p);
    if (art) check_refused(art, "exp_ragged_g48_refused", "model.layers.0.self_attn.q_proj", "group size 48");
    rq_model_free(art);
    rq_model_free(m);
}

/* stories260K: ffn 172 makes down_proj's last group ragged (64 + 64 + 44).
 * Fully quantized, GGUF writes the 5 down_proj as exact F32 (the end-to-end
 * pipeline on the tiny model) while HQQ refuses; with down_proj left in fp32
 * everything is Q4_1 / HQQ. The llama2.c tokenizer.bin becomes a "llama"
 * vocabulary. */
static void test_stories(void) {
    const char *bin = rq_test_data("models/stories260K/stories260K.bin");
    rq_err err = {0};
    rq_model *m = NULL;
    CHECK_OK(rq_model_load(bin, NULL, &m, &err), &err);
    if (!m) return;
    out_path oa = fresh("exp_stories_all");
    rq_model *art = quantize_to_artifact(m, RQ_QUANT_RTN, 64, 0, oa.p);
    if (art) {
        gguf_round_trip(art, oa.p, "exp_stories_all", "spm_tok512.jsonl", art->cfg.n_layers);
        hf_round_trip(art, "exp_stories_all_hf", "f32", "spm_tok512.jsonl");
        check_hqq_refused(art, "exp_stories_ragged_hqq", "model.layers.0.mlp.down_proj", "ragged");
    }
    rq_model_free(art);
    rq_model_free(m);

    m = NULL;
    CHECK_OK(rq_model_load(bin, NULL, &m, &err), &err);
    if (!m) return;
    unsigned mask = 0;
    CHECK_OK(rq_proj_mask_parse("q,k,v,o,gate,up", &mask, &err), &err);
    out_path od = fresh("exp_stories");
    const char *dir = od.p;
    art = quantize_to_artifact(m, RQ_QUANT_RTN, 64, mask, dir);
    if (art) {
        gguf_round_trip(art, dir, "exp_stories", "spm_tok512.jsonl", 0);
        hqq_export(art, dir, "exp_stories_hqq");
    }
    rq_model_free(art);
    rq_model_free(m);
}

/* A group whose scale is 0 (every weight equal to its offset m): HQQ cannot
 * divide by s, so the export writes codes 0, scale 1, zero -m; GGUF's d = 0
 * gives m directly. Checked against the modified in-memory model. */
static void test_zero_scale(void) {
    rq_err err = {0};
    rq_config c = base_config(64, 128, 2, 2, 64, false);
    rq_model *m = NULL;
    CHECK_OK(rq_model_random(&c, 16, &m, &err), &err);
    if (!m) return;
    out_path od = fresh("exp_zero_scale");
    rq_model *art = quantize_to_artifact(m, RQ_QUANT_RTN, 64, 0, od.p);
    if (art) {
        rq_q2_tensor *q = art->layers[1].w_up.q2;
        q->scales[3 * q->n_groups + 1] = 0;            /* row 3, group 1 */
        q->offsets[3 * q->n_groups + 1] = rq_f32_to_f16(-0.375f);
        out_path hq = fresh("exp_zero_scale_hqq");
        rq_export_report rep;
        CHECK_OK(rq_export_hqq(art, hq.p, NULL, &rep, &err), &err);
        hqq_check_in_c(art, hq.p, "exp_zero_scale_hqq");
    }
    rq_model_free(art);
    rq_model_free(m);
}

/* A GGUF source (the tiny llama of tests/io_fixtures.h, gpt2 vocabulary): the
 * artifact carries tokenizer.gguf, whose tokenizer.* keys the export copies
 * verbatim (gguf_check.py compares them key by key). Group size 32. */
static void test_gguf_source(void) {
    rq_err err = {0};
    tiny_gguf tg;
    tiny_gguf_build(&tg);
    out_path src = fresh("exp_tiny_src.gguf");
    CHECK(write_bytes(src.p, tg.file.p, tg.file.n));
    by_free(&tg.file);
    rq_model *m = NULL;
    CHECK_OK(rq_model_load(src.p, NULL, &m, &err), &err);
    if (!m) return;
    out_path od = fresh("exp_tiny");
    rq_model *art = quantize_to_artifact(m, RQ_QUANT_RTN, 32, 0, od.p);
    if (art) {
        gguf_round_trip(art, od.p, "exp_tiny", NULL, 0);
        hf_round_trip(art, "exp_tiny_hf", "f32", NULL);
    }
    rq_model_free(art);
    rq_model_free(m);
}

/* Bad input to the HF export: an unknown dtype, a weight F16 cannot hold. */
static void test_hf_refusals(void) {
    rq_err err = {0};
    rq_config c = base_config(64, 128, 2, 2, 64, false);
    rq_model *m = NULL;
    CHECK_OK(rq_model_random(&c, 19, &m, &err), &err);
    if (!m) return;
    out_path o = fresh("exp_hf_bad_dtype");
    CHECK(rq_export_hf(m, o.p, &(rq_export_opts){.dtype = "f8"}, NULL, &err) == RQ_ERR_ARG);
    CHECKF(strstr(err.msg, "f8") && strstr(err.msg, "f16, bf16 or f32"), "dtype message: %s", err.msg);
    m->layers[1].w_up.w[7] = 1e6f;
    o = fresh("exp_hf_overflow");
    CHECK(rq_export_hf(m, o.p, &(rq_export_opts){.dtype = "f16"}, NULL, &err) == RQ_ERR_UNSUPPORTED);
    CHECKF(strstr(err.msg, "model.layers.1.mlp.up_proj.weight") && strstr(err.msg, "bf16"), "overflow message: %s", err.msg);
    CHECKF(!path_exists(o.p), "%s: a refused export left a directory", o.p);
    printf("exp_hf: refused: %s\n", err.msg);
    o = fresh("exp_hf_overflow_bf16");
    CHECK_OK(rq_export_hf(m, o.p, &(rq_export_opts){.dtype = "bf16"}, NULL, &err), &err);
    rq_model_free(m);
}

int main(void) {
    rq_err err = {0};
    CHECK_OK(rq_backend_create("cpu", 1, &be, &err), &err);
    if (!be) return 1;
    test_random_g64();
    test_random_tied_llama3();
    test_random_spm_json();
    test_gguf_source();
    test_zero_scale();
    test_refusals_random();
    test_hf_refusals();
    test_random_ragged();
    test_stories();
    rq_backend_destroy(be);
    printf("%d passed, %d failed\n", rq_test_passed, rq_test_failed);
    return rq_test_failed ? 1 : 0;
}
