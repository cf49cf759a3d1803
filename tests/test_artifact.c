/* The quantized model artifact: quantize -> save -> load round trips (codes,
 * scales, offsets and logits bit-identical), q2 logits against the same model
 * with its dequantized weights materialized in fp32, ragged groups, NF2,
 * zstd, fake-quant import, and bad input. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test.h"

#include "io/artifact.h"
#include "model/forward.h"
#include "quant/q2.h"
#include "quant/quantize_model.h"

static rq_backend *be;

/* A fresh, empty scratch directory path under the test output root. */
static const char *scratch_dir(const char *name) {
    static char buf[8][4096];
    static int slot;
    char *p = buf[slot++ & 7];
    snprintf(p, 4096, "%s", rq_test_out(name));
    const char *files[] = {"config.json", "model.safetensors", "model.safetensors.zst", "tokenizer.json",
                           "tokenizer.bin", "tokenizer.gguf"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char f[4200];
        snprintf(f, sizeof f, "%s/%s", p, files[i]);
        unlink(f);
    }
    rmdir(p);
    return p;
}

/* Logits of every position of one sequence: [T][vocab], malloc'ed. */
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

static void test_tokens(int *tokens, int T, int vocab) {
    for (int t = 0; t < T; t++) tokens[t] = (t * 37 + 11) % vocab;
}

/* Every projection: same presence of q2 and identical codes, scales, offsets, codebook. */
static void check_same_q2(const rq_model *a, const rq_model *b) {
    int compared = 0;
    for (int l = 0; l < a->cfg.n_layers; l++)
        for (int p = 0; p < RQ_N_PROJ; p++) {
            const rq_q2_tensor *x = rq_layer_proj(&a->layers[l], p)->q2, *y = rq_layer_proj(&b->layers[l], p)->q2;
            CHECKF((x == NULL) == (y == NULL), "layer %d proj %d: q2 presence differs", l, p);
            if (!x || !y) continue;
            CHECK(rq_layer_proj(&b->layers[l], p)->w == NULL); /* no fp32 copy of a quantized weight */
            CHECK(x->out == y->out && x->in == y->in && x->group_size == y->group_size && x->kind == y->kind);
            CHECK(memcmp(x->codebook, y->codebook, sizeof x->codebook) == 0);
            size_t params = (size_t)x->out * (size_t)x->n_groups;
            CHECKF(memcmp(x->codes, y->codes, (size_t)x->out * (size_t)x->row_bytes) == 0, "layer %d proj %d codes", l, p);
            CHECKF(memcmp(x->scales, y->scales, params * 2) == 0, "layer %d proj %d scales", l, p);
            CHECKF(memcmp(x->offsets, y->offsets, params * 2) == 0, "layer %d proj %d offsets", l, p);
            compared++;
        }
    CHECK(compared > 0);
}

static void check_same_logits(const rq_model *a, const rq_model *b, const char *what) {
    enum { T = 24 };
    int tokens[T];
    test_tokens(tokens, T, a->cfg.vocab_size);
    float *la = logits_of(a, tokens, T), *lb = logits_of(b, tokens, T);
    /* the same code path on the same bits: bit-identical */
    CHECKF(memcmp(la, lb, sizeof(float) * T * (size_t)a->cfg.vocab_size) == 0, "%s: logits differ after the round trip", what);
    free(la);
    free(lb);
}

/* q2 logits vs the same model with every q2 weight dequantized into fp32
 * linears (the fp32 GEMM over the whole matrix instead of per tile). */
static void check_dequant_parity(rq_model *m, const char *what) {
    enum { T = 24 };
    int tokens[T];
    test_tokens(tokens, T, m->cfg.vocab_size);
    float *lq = logits_of(m, tokens, T);
    int n = m->cfg.n_layers * RQ_N_PROJ;
    float **bufs = calloc((size_t)n, sizeof *bufs);
    rq_q2_tensor **saved = calloc((size_t)n, sizeof *saved);
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int p = 0; p < RQ_N_PROJ; p++) {
            rq_linear *lin = rq_layer_proj(&m->layers[l], p);
            int k = l * RQ_N_PROJ + p;
            if (!lin->q2) continue;
            bufs[k] = malloc(sizeof(float) * (size_t)lin->out * (size_t)lin->in);
            rq_q2_dequant(lin->q2, bufs[k], 1);
            saved[k] = lin->q2;
            lin->q2 = NULL;
            lin->w = bufs[k];
        }
    float *lf = logits_of(m, tokens, T);
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int p = 0; p < RQ_N_PROJ; p++) {
            int k = l * RQ_N_PROJ + p;
            if (!saved[k]) continue;
            rq_linear *lin = rq_layer_proj(&m->layers[l], p);
            lin->q2 = saved[k];
            lin->w = NULL;
            free(bufs[k]);
        }
    /* The weights are bit-identical; only the GEMM's blocking differs (row
     * tiles vs one call), which reorders fp32 sums of up to max(dim, ffn)
     * terms per layer. 1e-4 relative to the largest logit covers that
     * reordering through a few layers (observed: ~1e-6). */
    double max_abs = 0, max_diff = 0;
    size_t cnt = (size_t)T * (size_t)m->cfg.vocab_size;
    for (size_t i = 0; i < cnt; i++) {
        if (fabs(lf[i]) > max_abs) max_abs = fabs(lf[i]);
        if (fabs(lf[i] - lq[i]) > max_diff) max_diff = fabs(lf[i] - lq[i]);
    }
    CHECKF(max_diff <= 1e-4 * max_abs + 1e-6, "%s: q2 vs dequantized fp32 logits differ by %.3g (max |logit| %.3g)", what,
           max_diff, max_abs);
    printf("%s: q2 vs materialized fp32 logits: max diff %.3g (max |logit| %.3g)\n", what, max_diff, max_abs);
    free(lq);
    free(lf);
    free(bufs);
    free(saved);
}

static rq_model *quantized(rq_model *m, rq_quant_method method, int gs, bool clip) {
    rq_err err = {0};
    rq_model_quant_opts o;
    rq_model_quant_opts_default(&o);
    o.quant.method = method;
    o.quant.group_size = gs;
    o.quant.clip_search = clip;
    rq_model_quant_report rep;
    CHECK_OK(rq_model_quantize(m, &o, &rep, &err), &err);
    CHECK(rep.tensors == m->cfg.n_layers * RQ_N_PROJ);
    CHECKF(rep.mean_rel_err > 0 && rep.mean_rel_err < 1, "mean relative error %g", rep.mean_rel_err);
    return m;
}

/* quantize -> write -> load: identical q2 data and logits. Returns the loaded model. */
static rq_model *round_trip(rq_model *m, const char *dir_name, bool compress) {
    rq_err err = {0};
    const char *dir = scratch_dir(dir_name);
    rq_artifact_opts ao = {.compress = compress};
    CHECK_OK(rq_artifact_write(m, dir, &ao, &err), &err);
    CHECK(rq_artifact_is_q2(dir));
    rq_model *back = NULL;
    CHECK_OK(rq_model_load(dir, NULL, &back, &err), &err);
    if (!back) return NULL;
    CHECK(strcmp(back->format, "rilq-q2") == 0);
    CHECK(strcmp(back->quant.method, m->quant.method) == 0);
    CHECK(back->cfg.tie_embeddings == m->cfg.tie_embeddings);
    check_same_q2(m, back);
    check_same_logits(m, back, dir_name);
    /* memory: no fp32 copies of quantized weights */
    int64_t q2_weights = 0;
    for (int l = 0; l < back->cfg.n_layers; l++)
        for (int p = 0; p < RQ_N_PROJ; p++) {
            const rq_q2_tensor *t = rq_layer_proj(&back->layers[l], p)->q2;
            if (t) q2_weights += (int64_t)t->out * t->in;
        }
    CHECKF(back->weights_bytes == (size_t)(back->n_params - q2_weights) * sizeof(float), "fp32 allocation %zu bytes",
           back->weights_bytes);
    return back;
}

static rq_config small_config(void) {
    rq_config c = {0};
    c.dim = 64;
    c.hidden_dim = 172; /* ragged: 64 + 64 + 44 */
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.vocab_size = 97;
    c.max_seq_len = 64;
    c.bos_id = -1;
    c.tie_embeddings = false;
    return c;
}

static char *read_text(const char *path);

static void test_random_model(void) {
    rq_err err = {0};
    rq_config c = small_config();
    rq_model *m = NULL, *back = NULL;
    CHECK_OK(rq_model_random(&c, 7, &m, &err), &err);
    if (!m) return;
    quantized(m, RQ_QUANT_RTN, 64, false);
    back = round_trip(m, "art_random_rtn64", false);
    if (back) check_dequant_parity(back, "random rtn gs64");
    rq_model_free(back);
    rq_model_free(m);

    /* weights that came from BF16: the unquantized tensors are stored in BF16, exactly */
    CHECK_OK(rq_model_random(&c, 9, &m, &err), &err);
    if (!m) return;
    for (size_t i = 0; i < m->weights_bytes / sizeof(float); i++)
        m->weights[i] = rq_bf16_to_f32(rq_f32_to_bf16(m->weights[i]));
    m->source_float_dtype = RQ_BF16;
    quantized(m, RQ_QUANT_RTN, 64, false);
    back = round_trip(m, "art_random_bf16", false);
    if (back) {
        CHECK(back->source_float_dtype == RQ_BF16);
        char *cfg_text = read_text(rq_test_out("art_random_bf16/config.json"));
        CHECKF(cfg_text && strstr(cfg_text, "\"unquantized_dtype\":\t\"BF16\""), "config: %.200s",
               cfg_text ? strstr(cfg_text, "unquantized") : "(none)");
        free(cfg_text);
    }
    rq_model_free(back);
    rq_model_free(m);

    /* tied embeddings, NF2, group size 32, clip search, compressed */
    c.tie_embeddings = true;
    CHECK_OK(rq_model_random(&c, 8, &m, &err), &err);
    if (!m) return;
    quantized(m, RQ_QUANT_NF2, 32, true);
    back = round_trip(m, "art_random_nf2_32", true);
    if (back) {
        CHECK(back->quant.clip_search);
        check_dequant_parity(back, "random nf2 gs32 clip");
    }
    rq_model_free(back);
    rq_model_free(m);
}

static void test_stories(void) {
    const char *bin = rq_test_data("models/stories260K/stories260K.bin");
    rq_err err = {0};
    struct {
        rq_quant_method method;
        int gs;
        bool compress;
        const char *dir;
    } cases[] = {
        {RQ_QUANT_RTN, 64, false, "art_stories_rtn64"},
        {RQ_QUANT_RTN, 32, true, "art_stories_rtn32_zst"},
        {RQ_QUANT_NF2, 64, false, "art_stories_nf2_64"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        rq_model *m = NULL;
        CHECK_OK(rq_model_load(bin, NULL, &m, &err), &err);
        if (!m) return;
        CHECK(m->tok != NULL && m->tokenizer_path[0]);
        CHECK(m->cfg.hidden_dim == 172); /* the ragged last group this test is about */
        quantized(m, cases[k].method, cases[k].gs, false);
        rq_model *back = round_trip(m, cases[k].dir, cases[k].compress);
        if (back) {
            /* the tokenizer came along and encodes the same */
            CHECK(back->tok != NULL);
            const char *text = "Once upon a time, there was a little girl named Lily.";
            int *ia = NULL, *ib = NULL, na = 0, nb = 0;
            CHECK_OK(rq_tokenizer_encode(m->tok, text, strlen(text), RQ_BOS_ON, &ia, &na, &err), &err);
            if (back->tok) CHECK_OK(rq_tokenizer_encode(back->tok, text, strlen(text), RQ_BOS_ON, &ib, &nb, &err), &err);
            CHECK(na > 0 && na == nb && ia && ib && memcmp(ia, ib, sizeof(int) * (size_t)na) == 0);
            free(ia);
            free(ib);
            check_dequant_parity(back, cases[k].dir);
            /* an artifact re-saved from an artifact is the same artifact */
            if (k == 0) {
                rq_model *again = round_trip(back, "art_stories_resave", false);
                rq_model_free(again);
            }
        }
        rq_model_free(back);
        rq_model_free(m);
    }
}

/* Weights put exactly on a q2 grid come back as the same grid. */
static void test_fake_quant(void) {
    const char *bin = rq_test_data("models/stories260K/stories260K.bin");
    rq_err err = {0};
    rq_model *a = NULL, *b = NULL;
    CHECK_OK(rq_model_load(bin, NULL, &a, &err), &err);
    CHECK_OK(rq_model_load(bin, NULL, &b, &err), &err);
    if (!a || !b) return;
    rq_model_quant_opts o;
    rq_model_quant_opts_default(&o);
    o.fake_quant = true;
    /* real weights are not on a grid: a clear error naming tensor and group */
    CHECK(rq_model_quantize(b, &o, NULL, &err) != RQ_OK);
    CHECKF(strstr(err.msg, "model.layers.0.self_attn.q_proj") && strstr(err.msg, "group"), "message: %s", err.msg);
    CHECK(b->layers[0].wq.q2 == NULL); /* unchanged on failure */

    quantized(a, RQ_QUANT_RTN, 64, false);
    for (int l = 0; l < a->cfg.n_layers; l++)
        for (int p = 0; p < RQ_N_PROJ; p++) rq_q2_dequant(rq_layer_proj(&a->layers[l], p)->q2, rq_layer_proj(&b->layers[l], p)->w, 1);
    rq_model_quant_report rep;
    CHECK_OK(rq_model_quantize(b, &o, &rep, &err), &err);
    CHECK(strcmp(b->quant.method, "fake-quant") == 0);
    /* the recovered (s, m) are stored in fp16 again: within a few fp16 ulps of the group range */
    CHECKF(rep.max_rel_err < 2e-3, "fake-quant import error %g", rep.max_rel_err);
    check_same_logits(b, b, "fake-quant self");
    rq_model *back = round_trip(b, "art_stories_fake", false);
    rq_model_free(back);
    rq_model_free(a);
    rq_model_free(b);
}

/* ---- bad input ------------------------------------------------------------------ */

static char *read_text(const char *path) {
    char *t = NULL;
    size_t n;
    rq_err err = {0};
    if (rq_file_read_all(path, &t, &n, &err) != RQ_OK) return NULL;
    return t;
}

/* Replace the first occurrence of from by to in a file. */
static void edit_file(const char *path, const char *from, const char *to) {
    char *t = read_text(path);
    char *at = t ? strstr(t, from) : NULL;
    CHECKF(at != NULL, "'%s' not found in %s", from, path);
    if (!at) {
        free(t);
        return;
    }
    FILE *f = fopen(path, "wb");
    fwrite(t, 1, (size_t)(at - t), f);
    fputs(to, f);
    fputs(at + strlen(from), f);
    fclose(f);
    free(t);
}

static void expect_load_error(const char *dir, const char *a, const char *b) {
    rq_err err = {0};
    rq_model *m = NULL;
    rq_status s = rq_model_load(dir, NULL, &m, &err);
    CHECKF(s != RQ_OK && m == NULL, "%s loaded", dir);
    CHECKF(strstr(err.msg, a) && (!b || strstr(err.msg, b)), "message '%s' lacks '%s' / '%s'", err.msg, a, b ? b : "");
    rq_model_free(m);
}

static const char *write_small(const char *name, int gs, unsigned mask, bool compress) {
    rq_err err = {0};
    rq_config c = small_config();
    rq_model *m = NULL;
    CHECK_OK(rq_model_random(&c, 3, &m, &err), &err);
    rq_model_quant_opts o;
    rq_model_quant_opts_default(&o);
    o.quant.group_size = gs;
    o.proj_mask = mask;
    CHECK_OK(rq_model_quantize(m, &o, NULL, &err), &err);
    const char *dir = scratch_dir(name);
    rq_artifact_opts ao = {.compress = compress};
    CHECK_OK(rq_artifact_write(m, dir, &ao, &err), &err);
    rq_model_free(m);
    return dir;
}

static void test_bad_input(void) {
    rq_err err = {0};
    char cfg[4200], path[4200];

    const char *dir = write_small("art_bad_version", 64, 0, false);
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    edit_file(cfg, "\"format_version\":\t1", "\"format_version\":\t99");
    expect_load_error(dir, "unknown artifact format_version 99", "config.json");

    /* scales stored for gs 64, config says 32: the scales' shape is wrong */
    dir = write_small("art_bad_scales", 64, 0, false);
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    edit_file(cfg, "\"group_size\":\t64", "\"group_size\":\t32");
    expect_load_error(dir, "model.layers.0.self_attn.q_proj.scales", "expected F16 [64, 2], found F16 [64, 1]");

    /* only q quantized; the config claims k is too: its codes are missing */
    dir = write_small("art_bad_missing", 64, 1u << RQ_PROJ_Q, false);
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    edit_file(cfg, "\"model.layers.0.self_attn.q_proj\"", "\"model.layers.0.self_attn.q_proj\", \"model.layers.0.self_attn.k_proj\"");
    expect_load_error(dir, "tensor 'model.layers.0.self_attn.k_proj.codes' is missing", NULL);

    /* a codebook entry that is not finite / a listed module that is not a projection */
    dir = write_small("art_bad_codebook", 64, 0, false);
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    edit_file(cfg, "\"codebook\":\t[0,", "\"codebook\":\t[\"x\",");
    expect_load_error(dir, "codebook[0]", NULL);
    dir = write_small("art_bad_module", 64, 0, false);
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    edit_file(cfg, "\"model.layers.1.mlp.down_proj\"", "\"model.layers.9.mlp.down_proj\"");
    expect_load_error(dir, "quantized_modules[", "not a projection");

    /* a truncated zstd stream */
    dir = write_small("art_bad_zst", 64, 0, true);
    snprintf(path, sizeof path, "%s/model.safetensors.zst", dir);
    struct stat st;
    CHECK(stat(path, &st) == 0);
    CHECK(truncate(path, st.st_size / 2) == 0);
    expect_load_error(dir, "truncated zstd stream", "model.safetensors.zst");
    /* ... and garbage in place of it */
    FILE *f = fopen(path, "wb");
    fputs("not zstd at all", f);
    fclose(f);
    expect_load_error(dir, "not a zstd frame", NULL);

    /* writing into a non-empty directory is refused and leaves it alone */
    rq_config c = small_config();
    rq_model *m = NULL;
    CHECK_OK(rq_model_random(&c, 3, &m, &err), &err);
    rq_artifact_opts ao = {0};
    CHECK(rq_artifact_write(m, dir, &ao, &err) != RQ_OK);
    CHECKF(strstr(err.msg, "not empty") != NULL, "message: %s", err.msg);

    /* a projection with in_features 0: a clear error, no crash */
    int saved_in = m->layers[1].w_down.in;
    m->layers[1].w_down.in = 0;
    rq_model_quant_opts o;
    rq_model_quant_opts_default(&o);
    CHECK(rq_model_quantize(m, &o, NULL, &err) != RQ_OK);
    CHECKF(strstr(err.msg, "model.layers.1.mlp.down_proj") && strstr(err.msg, "nothing to quantize"), "message: %s", err.msg);
    CHECK(m->layers[0].wq.q2 == NULL);
    m->layers[1].w_down.in = saved_in;
    /* quantizing twice is refused */
    CHECK_OK(rq_model_quantize(m, &o, NULL, &err), &err);
    CHECK(rq_model_quantize(m, &o, NULL, &err) != RQ_OK && strstr(err.msg, "already 2-bit"));
    rq_model_free(m);

    /* a config whose intermediate_size is 0 never reaches the quantizer */
    c.hidden_dim = 0;
    CHECK(rq_model_random(&c, 3, &m, &err) != RQ_OK);
    CHECKF(strstr(err.msg, "intermediate_size") != NULL, "message: %s", err.msg);

    unsigned mask;
    CHECK(rq_proj_mask_parse("q,k,bogus", &mask, &err) != RQ_OK && strstr(err.msg, "bogus"));
    CHECK_OK(rq_proj_mask_parse("q,v_proj,down", &mask, &err), &err);
    CHECK(mask == ((1u << RQ_PROJ_Q) | (1u << RQ_PROJ_V) | (1u << RQ_PROJ_DOWN)));
}

int main(void) {
    rq_err err = {0};
    CHECK_OK(rq_backend_create("cpu", 1, &be, &err), &err);
    if (!be) return rq_test_finish();
    test_random_model();
    test_bad_input();
    test_stories();
    test_fake_quant();
    rq_backend_destroy(be);
    return rq_test_finish();
}
