/* Checkpoint readers and the model loader on files the test writes itself:
 * safetensors (single, sharded, bad), HF directories, GGUF, llama2.c, half
 * conversions. Real-model checks live in test_io_smollm2.c / test_io_stories.c. */
#define _GNU_SOURCE /* memmem */
#include <unistd.h>

#include "io/gguf.h"
#include "io/hf.h"
#include "io/llama2c.h"
#include "io/safetensors.h"
#include "io_fixtures.h"
#include "model/model.h"
#include "test.h"

/* The call fails, and its message names every given substring. */
#define CHECK_FAILS_WITH(expr, errp, ...)                                                             \
    do {                                                                                              \
        memset((errp), 0, sizeof *(errp));                                                            \
        rq_status st_ = (expr);                                                                       \
        CHECKF(st_ != RQ_OK, "%s unexpectedly succeeded", #expr);                                     \
        const char *subs_[] = {__VA_ARGS__};                                                          \
        for (size_t i_ = 0; st_ != RQ_OK && i_ < sizeof subs_ / sizeof subs_[0]; i_++)                \
            CHECKF(strstr((errp)->msg, subs_[i_]) != NULL, "message '%s' lacks '%s'", (errp)->msg,    \
                   subs_[i_]);                                                                        \
    } while (0)

static char tmpdir[4096];

static const char *tmp_path(const char *name) {
    static char buf[8][4200];
    static int slot;
    char *p = buf[slot++ & 7];
    snprintf(p, 4200, "%s/%s", tmpdir, name);
    return p;
}

/* ---- half precision ------------------------------------------------------------------ */

static void test_half(void) {
    CHECK(rq_f32_to_f16(1.0f) == 0x3c00);
    CHECK(rq_f32_to_f16(-2.0f) == 0xc000);
    CHECK(rq_f32_to_f16(65504.0f) == 0x7bff);
    CHECK(rq_f32_to_f16(65519.99f) == 0x7bff);
    CHECK(rq_f32_to_f16(65520.0f) == 0x7c00); /* rounds up past the largest half */
    CHECK(rq_f32_to_f16(1e10f) == 0x7c00);
    CHECK(rq_f32_to_f16(-0.0f) == 0x8000);
    CHECK(rq_f32_to_f16(ldexpf(1, -24)) == 0x0001);        /* smallest subnormal */
    CHECK(rq_f32_to_f16(ldexpf(1, -25)) == 0x0000);        /* tie between 0 and 1 unit: even */
    CHECK(rq_f32_to_f16(ldexpf(1.0000001f, -25)) == 0x0001);
    CHECK(rq_f32_to_f16(ldexpf(3, -25)) == 0x0002);        /* 1.5 units: tie to even 2 */
    CHECK(rq_f32_to_f16(ldexpf(5, -25)) == 0x0002);        /* 2.5 units: tie to even 2 */
    CHECK(rq_f32_to_f16(ldexpf(1023, -24)) == 0x03ff);     /* largest subnormal */
    CHECK(rq_f32_to_f16(ldexpf(1, -14)) == 0x0400);        /* smallest normal */
    CHECK(rq_f32_to_f16(ldexpf(2047, -25)) == 0x0400);     /* subnormal rounding into the normal range */
    CHECK(rq_f32_to_f16(1.0f + ldexpf(1, -11)) == 0x3c00); /* tie, even stays */
    CHECK(rq_f32_to_f16(1.0f + ldexpf(3, -11)) == 0x3c02); /* tie, odd rounds up */
    CHECK(rq_f32_to_f16(1.0f + ldexpf(1, -11) + ldexpf(1, -20)) == 0x3c01);
    CHECK(rq_f32_to_f16(INFINITY) == 0x7c00);
    CHECK(rq_f32_to_f16(-INFINITY) == 0xfc00);
    uint16_t hn = rq_f32_to_f16(NAN);
    CHECK((hn & 0x7c00) == 0x7c00 && (hn & 0x03ff) != 0);
    CHECK(isnan(rq_f16_to_f32(0x7c01)) && isinf(rq_f16_to_f32(0xfc00)));
    CHECK(rq_f16_to_f32(0x0001) == ldexpf(1, -24));
    CHECK(rq_f16_to_f32(0x8400) == -ldexpf(1, -14));
    /* Every half survives f16 -> f32 -> f16 (NaN stays NaN). */
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = rq_f16_to_f32((uint16_t)h);
        uint16_t back = rq_f32_to_f16(f);
        bool is_nan = (h & 0x7c00) == 0x7c00 && (h & 0x3ff);
        if (is_nan ? !isnan(rq_f16_to_f32(back)) : back != h) bad++;
    }
    CHECKF(bad == 0, "%d halves do not round-trip", bad);

    CHECK(rq_f32_to_bf16(1.0f) == 0x3f80);
    CHECK(rq_f32_to_bf16(rq_f32_from_bits(0x3f808000)) == 0x3f80); /* tie, even */
    CHECK(rq_f32_to_bf16(rq_f32_from_bits(0x3f818000)) == 0x3f82); /* tie, odd up */
    CHECK(rq_f32_to_bf16(rq_f32_from_bits(0x3f808001)) == 0x3f81);
    CHECK(rq_f32_to_bf16(rq_f32_from_bits(0x7f7fffff)) == 0x7f80); /* FLT_MAX rounds to inf */
    CHECK(rq_f32_to_bf16(INFINITY) == 0x7f80 && rq_f32_to_bf16(-INFINITY) == 0xff80);
    CHECK(isnan(rq_bf16_to_f32(rq_f32_to_bf16(rq_f32_from_bits(0x7f800001))))); /* low-bit NaN stays NaN */
    CHECK(isnan(rq_bf16_to_f32(rq_f32_to_bf16(NAN))));
    CHECK(rq_f32_to_bf16(rq_f32_from_bits(0x00000001)) == 0x0000); /* tiny subnormal rounds to 0 */
    CHECK(rq_f32_to_bf16(rq_f32_from_bits(0x00018000)) == 0x0002);
    CHECK(rq_bf16_to_f32(0xc0a0) == -5.0f);
}

/* ---- dtypes and blocks ---------------------------------------------------------------- */

static void test_dtypes(void) {
    rq_dtype t;
    CHECK(rq_dtype_from_safetensors("BF16", &t) && t == RQ_BF16);
    CHECK(rq_dtype_from_safetensors("I64", &t) && t == RQ_I64);
    CHECK(!rq_dtype_from_safetensors("F8_E4M3", &t));
    CHECK(!rq_dtype_from_safetensors("Q4_1", &t)); /* ggml types are not safetensors dtypes */
    CHECK(strcmp(rq_dtype_name(RQ_Q8_0), "Q8_0") == 0);
    uint64_t n;
    CHECK(rq_dtype_nbytes(RQ_Q4_1, 64, &n) && n == 40);
    CHECK(rq_dtype_nbytes(RQ_Q8_0, 32, &n) && n == 34);
    CHECK(!rq_dtype_nbytes(RQ_Q4_0, 33, &n));
    CHECK(!rq_dtype_nbytes(RQ_F64, UINT64_MAX / 4, &n));
    CHECK(rq_dtype_block(RQ_Q4_0) == 32 && rq_dtype_block(RQ_F16) == 1);

    /* Un-permutation on a tiny [2 heads x 4 rows, 1 col] matrix: row values = stored index. */
    float stored[8] = {0, 1, 2, 3, 4, 5, 6, 7}, out[8];
    rq_tensor_view v = {.name = "q", .dtype = RQ_F32, .ndim = 2, .shape = {8, 1}, .data = (const uint8_t *)stored,
                        .nbytes = 32, .file = "mem", .unpermute_heads = 2};
    rq_err err = {0};
    CHECK_OK(rq_tensor_to_f32(&v, out, &err), &err);
    /* HF row j*(hd/2)+i = stored row 2i+j, hd = 4: HF rows 0,1,2,3 = stored 0,2,1,3 */
    const float want[8] = {0, 2, 1, 3, 4, 6, 5, 7};
    CHECK(memcmp(out, want, sizeof want) == 0);
    v.unpermute_heads = 3;
    CHECK_FAILS_WITH(rq_tensor_to_f32(&v, out, &err), &err, "mem", "'q'");
}

/* ---- safetensors -------------------------------------------------------------------- */

static void test_safetensors_roundtrip(void) {
    rq_err err = {0};
    float a[15];
    for (int i = 0; i < 15; i++) a[i] = (float)i * 0.5f - 3.0f;
    uint16_t h[7], bf[6];
    for (int i = 0; i < 7; i++) h[i] = rq_f32_to_f16((float)i / 8.0f);
    for (int i = 0; i < 6; i++) bf[i] = rq_f32_to_bf16(-(float)i * 1.5f);
    float scalar = 42.5f;
    int32_t ints[4] = {1, -2, 3, -4};
    int64_t i64[3] = {1, 1LL << 40, -7};
    rq_st_tensor ts[] = {
        {"zeta.f32", RQ_F32, 2, {3, 5}, a},     {"alpha.f16", RQ_F16, 1, {7}, h},  {"mid.bf16", RQ_BF16, 3, {2, 3, 1}, bf},
        {"scalar", RQ_F32, 0, {0}, &scalar},    {"ints", RQ_I32, 1, {4}, ints},     {"big", RQ_I64, 1, {3}, i64},
        {"empty", RQ_F32, 2, {0, 3}, NULL},
    };
    const char *meta[] = {"producer", "rilq \"test\""};
    const char *path = tmp_path("rt.safetensors");
    CHECK_OK(rq_safetensors_write(path, ts, 7, meta, 1, &err), &err);

    rq_safetensors f;
    rq_tensor_table tab = {0};
    CHECK_OK(rq_safetensors_open(path, &f, &tab, &err), &err);
    CHECK(tab.count == 7);
    uint64_t hdr = rq_rd_u64(f.view.data);
    CHECK(hdr % 8 == 0);
    CHECK(memmem(f.view.data + 8, hdr, "\"format\":\"pt\"", 13) != NULL);
    CHECK(memmem(f.view.data + 8, hdr, "\"producer\":\"rilq \\\"test\\\"\"", 26) != NULL);
    /* Order: 8-byte types first, then 4, then 2, names ascending within. */
    const rq_tensor_view *big = rq_tensor_table_find(&tab, "big"), *ints_v = rq_tensor_table_find(&tab, "ints");
    const rq_tensor_view *zeta = rq_tensor_table_find(&tab, "zeta.f32"), *alpha = rq_tensor_table_find(&tab, "alpha.f16");
    const rq_tensor_view *mid = rq_tensor_table_find(&tab, "mid.bf16"), *sc = rq_tensor_table_find(&tab, "scalar");
    const rq_tensor_view *empty = rq_tensor_table_find(&tab, "empty");
    CHECK(big && ints_v && zeta && alpha && mid && sc && empty);
    if (big && ints_v && zeta && alpha && mid && sc && empty) {
        const uint8_t *data0 = f.view.data + 8 + hdr;
        CHECK(big->data == data0);
        CHECK(ints_v->data < sc->data && sc->data < zeta->data && zeta->data < alpha->data && alpha->data < mid->data);
        CHECK(big->dtype == RQ_I64 && memcmp(big->data, i64, sizeof i64) == 0);
        CHECK(zeta->ndim == 2 && zeta->shape[0] == 3 && zeta->shape[1] == 5 && zeta->dtype == RQ_F32);
        CHECK(mid->ndim == 3 && mid->shape[2] == 1 && mid->dtype == RQ_BF16);
        CHECK(sc->ndim == 0 && rq_tensor_numel(sc) == 1 && sc->nbytes == 4);
        CHECK(empty->nbytes == 0 && rq_tensor_numel(empty) == 0);
        float out[15];
        CHECK_OK(rq_tensor_to_f32(zeta, out, &err), &err);
        CHECK(memcmp(out, a, sizeof a) == 0);
        CHECK_OK(rq_tensor_to_f32(alpha, out, &err), &err);
        for (int i = 0; i < 7; i++) CHECK(out[i] == (float)i / 8.0f);
        CHECK_OK(rq_tensor_to_f32(mid, out, &err), &err);
        for (int i = 0; i < 6; i++) CHECK(out[i] == -(float)i * 1.5f);
        CHECK_OK(rq_tensor_to_f32(sc, out, &err), &err);
        CHECK(out[0] == 42.5f);
        CHECK_FAILS_WITH(rq_tensor_to_f32(ints_v, out, &err), &err, "'ints'", "I32");
    }
    rq_safetensors_close(&f);
    rq_tensor_table_free(&tab);

    /* Writer refuses duplicates and block types. */
    rq_st_tensor dup[] = {{"x", RQ_F32, 1, {1}, a}, {"x", RQ_F32, 1, {1}, a}};
    CHECK_FAILS_WITH(rq_safetensors_write(tmp_path("dup.safetensors"), dup, 2, NULL, 0, &err), &err, "'x'");
    rq_st_tensor blk[] = {{"q", RQ_Q4_1, 1, {32}, a}};
    CHECK_FAILS_WITH(rq_safetensors_write(tmp_path("blk.safetensors"), blk, 1, NULL, 0, &err), &err, "Q4_1");
}

static void test_safetensors_sharded(void) {
    rq_err err = {0};
    enum { NT = 6 };
    float w[NT][10];
    rq_st_tensor ts[NT];
    char names[NT][32];
    for (int t = 0; t < NT; t++) {
        for (int i = 0; i < 10; i++) w[t][i] = (float)(t * 100 + i);
        snprintf(names[t], sizeof names[t], "layer.%d.weight", NT - t);
        ts[t] = (rq_st_tensor){names[t], RQ_F32, 2, {2, 5}, w[t]};
    }
    const char *dir = tmp_path("sharded");
    CHECK_OK(rq_safetensors_write_sharded(dir, ts, NT, 100, &err), &err); /* 40 bytes each: 2 per shard */
    char p[4300];
    snprintf(p, sizeof p, "%s/model-00003-of-00003.safetensors", dir);
    CHECK(rq_file_exists(p));
    rq_st_checkpoint ck;
    CHECK_OK(rq_st_checkpoint_open_dir(dir, &ck, &err), &err);
    CHECK(ck.n_files == 3 && ck.table.count == NT);
    for (int t = 0; t < NT; t++) {
        const rq_tensor_view *v = rq_tensor_table_find(&ck.table, names[t]);
        CHECK(v && v->nbytes == 40 && memcmp(v->data, w[t], 40) == 0);
    }
    rq_st_checkpoint_close(&ck);

    /* An index naming a tensor its shard lacks, and one escaping the directory. */
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    const char *bad = "{\"weight_map\": {\"layer.6.weight\": \"model-00001-of-00003.safetensors\", "
                      "\"ghost.weight\": \"model-00002-of-00003.safetensors\"}}";
    CHECK(write_bytes(p, bad, strlen(bad)));
    CHECK_FAILS_WITH(rq_st_checkpoint_open_dir(dir, &ck, &err), &err, "index.json", "ghost.weight");
    const char *escape = "{\"weight_map\": {\"a\": \"../x.safetensors\"}}";
    CHECK(write_bytes(p, escape, strlen(escape)));
    CHECK_FAILS_WITH(rq_st_checkpoint_open_dir(dir, &ck, &err), &err, "index.json", "'a'");

    /* Small enough for one shard: a plain model.safetensors. */
    const char *dir1 = tmp_path("single");
    CHECK_OK(rq_safetensors_write_sharded(dir1, ts, NT, 1 << 20, &err), &err);
    CHECK_OK(rq_st_checkpoint_open_dir(dir1, &ck, &err), &err);
    CHECK(ck.n_files == 1 && ck.table.count == NT);
    rq_st_checkpoint_close(&ck);
}

/* A safetensors file from a hand-written header and data size. */
static const char *raw_safetensors(const char *name, const char *json, size_t data_bytes, long header_size_override) {
    bytes b = {0};
    size_t n = strlen(json);
    by_u64(&b, header_size_override >= 0 ? (uint64_t)header_size_override : n);
    by_put(&b, json, n);
    for (size_t i = 0; i < data_bytes; i++) by_u8(&b, (uint8_t)i);
    const char *p = tmp_path(name);
    write_bytes(p, b.p, b.n);
    by_free(&b);
    return p;
}

static void test_safetensors_bad(void) {
    rq_err err = {0};
    rq_safetensors f;
    rq_tensor_table tab = {0};
    const char *ok = "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}";
    const char *p = raw_safetensors("ok.safetensors", ok, 16, -1);
    CHECK_OK(rq_safetensors_open(p, &f, &tab, &err), &err);
    rq_safetensors_close(&f);
    rq_tensor_table_free(&tab);

    p = raw_safetensors("trunc.safetensors", ok, 12, -1);
    CHECK_FAILS_WITH(rq_safetensors_open(p, &f, &tab, &err), &err, "trunc.safetensors", "'w'", "data_offsets");
    CHECK(tab.count == 0);
    p = raw_safetensors("hdr.safetensors", ok, 16, 100000);
    CHECK_FAILS_WITH(rq_safetensors_open(p, &f, &tab, &err), &err, "hdr.safetensors", "header size 100000");
    p = raw_safetensors("huge.safetensors", ok, 16, 200000000);
    CHECK_FAILS_WITH(rq_safetensors_open(p, &f, &tab, &err), &err, "huge.safetensors", "limit");
    CHECK(write_bytes(tmp_path("tiny.safetensors"), "abc", 3));
    CHECK_FAILS_WITH(rq_safetensors_open(tmp_path("tiny.safetensors"), &f, &tab, &err), &err, "tiny.safetensors");
    p = raw_safetensors("dtype.safetensors", "{\"w\":{\"dtype\":\"F8_E4M3\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4, -1);
    CHECK_FAILS_WITH(rq_safetensors_open(p, &f, &tab, &err), &err, "dtype.safetensors", "'w'", "F8_E4M3");
    p = raw_safetensors("overlap.safetensors",
                        "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                        "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                        12, -1);
    CHECK_FAILS_WITH(rq_safetensors_open(p, &f, &tab, &err), &err, "overlap.safetensors", "'a'", "'b'", "overlap");
    p = raw_safetensors("span.safetensors", "{\"w\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, -1);
    CHECK_FAILS_WITH(rq_safetensors_open(p, &f, &tab, &err), &err, "span.safetensors", "'w'", "need 6");
    p = raw_safetensors("json.safetensors", "{\"w\":{\"dtype\":\"F32\",", 0, -1);
    CHECK_FAILS_WITH(rq_safetensors_open(p, &f, &tab, &err), &err, "json.safetensors", "JSON");
    p = raw_safetensors("brace.safetensors", "[1,2]   ", 0, -1);
    CHECK_FAILS_WITH(rq_safetensors_open(p, &f, &tab, &err), &err, "brace.safetensors", "'{'");
    p = raw_safetensors("neg.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,0]}}", 0, -1);
    CHECK_FAILS_WITH(rq_safetensors_open(p, &f, &tab, &err), &err, "neg.safetensors", "'w'", "shape");
    p = raw_safetensors("meta.safetensors",
                        "{\"__metadata__\":{\"format\":\"pt\"},\"w\":{\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[0,1]}}   ",
                        1, -1);
    CHECK_OK(rq_safetensors_open(p, &f, &tab, &err), &err);
    CHECK(tab.count == 1);
    rq_safetensors_close(&f);
    rq_tensor_table_free(&tab);
}

/* ---- HF directories ----------------------------------------------------------------- */

typedef struct hf_case {
    bool tied;
    rq_dtype dtype;         /* F32 or BF16 storage */
    const char *wrong_name; /* a tensor written with a wrong shape, or NULL */
    const char *skip_name;  /* a tensor left out, or NULL */
} hf_case;

enum { HF_DIM = 16, HF_FF = 24, HF_LAYERS = 2, HF_HEADS = 4, HF_KV = 2, HF_HD = 4, HF_VOCAB = 20 };

/* Writes dir/config.json + model.safetensors; returns the fp32 values stored
 * (after bf16 rounding) per tensor in *vals (caller frees each). */
static void write_hf_dir(const char *dir, const hf_case *c, rq_st_tensor *ts, int *n_ts, float **vals) {
    rq_err err = {0};
    rq_mkdir_p(dir, &err);
    char p[4300];
    snprintf(p, sizeof p, "%s/config.json", dir);
    char cfg[1024];
    snprintf(cfg, sizeof cfg,
             "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_size\": %d,"
             " \"intermediate_size\": %d, \"num_hidden_layers\": %d, \"num_attention_heads\": %d,"
             " \"num_key_value_heads\": %d, \"rms_norm_eps\": 1e-05, \"rope_theta\": 500000.0,"
             " \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 32.0, \"low_freq_factor\": 1.0,"
             " \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192},"
             " \"max_position_embeddings\": 256, \"vocab_size\": %d, \"tie_word_embeddings\": %s,"
             " \"bos_token_id\": 1, \"eos_token_id\": [2, 3], \"hidden_act\": \"silu\", \"torch_dtype\": \"bfloat16\"}",
             HF_DIM, HF_FF, HF_LAYERS, HF_HEADS, HF_KV, HF_VOCAB, c->tied ? "true" : "false");
    write_bytes(p, cfg, strlen(cfg));
    snprintf(p, sizeof p, "%s/generation_config.json", dir);
    const char *gen = "{\"bos_token_id\": 1, \"eos_token_id\": [3, 5]}";
    write_bytes(p, gen, strlen(gen));

    static char names[64][128];
    int n = 0;
    uint64_t seed = 7;
    struct tensor_spec {
        const char *name;
        int rows, cols;
    } spec[64];
    int ns = 0;
    spec[ns++] = (struct tensor_spec){"model.embed_tokens.weight", HF_VOCAB, HF_DIM};
    for (int l = 0; l < HF_LAYERS; l++) {
        static char lnames[HF_LAYERS][9][96];
        const char *suf[9] = {"input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
                              "self_attn.v_proj.weight", "self_attn.o_proj.weight", "post_attention_layernorm.weight",
                              "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"};
        int rows[9] = {HF_DIM, HF_HEADS * HF_HD, HF_KV * HF_HD, HF_KV * HF_HD, HF_DIM, HF_DIM, HF_FF, HF_FF, HF_DIM};
        int cols[9] = {0, HF_DIM, HF_DIM, HF_DIM, HF_HEADS * HF_HD, 0, HF_DIM, HF_DIM, HF_FF};
        for (int k = 0; k < 9; k++) {
            snprintf(lnames[l][k], sizeof lnames[l][k], "model.layers.%d.%s", l, suf[k]);
            spec[ns++] = (struct tensor_spec){lnames[l][k], rows[k], cols[k]};
        }
    }
    spec[ns++] = (struct tensor_spec){"model.norm.weight", HF_DIM, 0};
    if (!c->tied) spec[ns++] = (struct tensor_spec){"lm_head.weight", HF_VOCAB, HF_DIM};
    for (int s = 0; s < ns; s++) {
        if (c->skip_name && strcmp(spec[s].name, c->skip_name) == 0) continue;
        int rows = spec[s].rows, cols = spec[s].cols;
        if (c->wrong_name && strcmp(spec[s].name, c->wrong_name) == 0) rows += 1;
        int numel = rows * (cols ? cols : 1);
        float *v = malloc((size_t)numel * sizeof *v);
        uint16_t *h = malloc((size_t)numel * 2);
        for (int i = 0; i < numel; i++) {
            v[i] = fx_rand(&seed);
            h[i] = rq_f32_to_bf16(v[i]);
            if (c->dtype == RQ_BF16) v[i] = rq_bf16_to_f32(h[i]);
        }
        snprintf(names[n], sizeof names[n], "%s", spec[s].name);
        ts[n] = (rq_st_tensor){names[n], c->dtype, cols ? 2 : 1, {rows, cols}, c->dtype == RQ_BF16 ? (void *)h : (void *)v};
        vals[n] = v;
        if (c->dtype == RQ_BF16) vals[n + 32] = (float *)h; /* keep the bf16 buffer alive until written */
        else free(h);
        n++;
    }
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    CHECK_OK(rq_safetensors_write(p, ts, n, NULL, 0, &err), &err);
    *n_ts = n;
}

static const float *model_tensor(const rq_model *m, const char *name) {
    if (strcmp(name, "model.embed_tokens.weight") == 0) return m->tok_embed;
    if (strcmp(name, "model.norm.weight") == 0) return m->final_norm;
    if (strcmp(name, "lm_head.weight") == 0) return m->lm_head.w;
    int l;
    char suf[96];
    if (sscanf(name, "model.layers.%d.%95s", &l, suf) != 2 || l < 0 || l >= m->cfg.n_layers) return NULL;
    rq_layer *L = &m->layers[l];
    if (strcmp(suf, "input_layernorm.weight") == 0) return L->attn_norm;
    if (strcmp(suf, "post_attention_layernorm.weight") == 0) return L->ffn_norm;
    for (int k = 0; k < RQ_N_PROJ; k++) {
        char want[64];
        snprintf(want, sizeof want, "%s%s.weight", k < 4 ? "self_attn." : "mlp.", rq_proj_names[k]);
        if (strcmp(suf, want) == 0) return rq_layer_proj(L, k)->w;
    }
    return NULL;
}

static void test_hf_dir(bool tied, rq_dtype dtype) {
    rq_err err = {0};
    char name[64];
    snprintf(name, sizeof name, "hf_%s_%s", tied ? "tied" : "untied", rq_dtype_name(dtype));
    const char *dir = tmp_path(name);
    hf_case c = {tied, dtype, NULL, NULL};
    rq_st_tensor ts[64];
    float *vals[64] = {0};
    int n = 0;
    write_hf_dir(dir, &c, ts, &n, vals);
    if (!tied && dtype == RQ_BF16) { /* one directory also carries a tokenizer.json */
        char tp[4300];
        snprintf(tp, sizeof tp, "%s/tokenizer.json", dir);
        const char *tj = "{\"version\": \"1.0\", \"added_tokens\": [], \"normalizer\": null,"
                         " \"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"trim_offsets\": true, \"use_regex\": true},"
                         " \"post_processor\": null, \"decoder\": {\"type\": \"ByteLevel\"},"
                         " \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [\"a b\"]}}";
        write_bytes(tp, tj, strlen(tj));
    }
    rq_model *m = NULL;
    CHECK_OK(rq_model_load(dir, NULL, &m, &err), &err);
    if (m) {
        const rq_config *k = &m->cfg;
        if (!tied && dtype == RQ_BF16) CHECK(m->tok && rq_tokenizer_vocab_size(m->tok) == 3);
        CHECK(k->dim == HF_DIM && k->hidden_dim == HF_FF && k->n_layers == HF_LAYERS && k->n_heads == HF_HEADS);
        CHECK(k->n_kv_heads == HF_KV && k->head_dim == HF_HD && k->vocab_size == HF_VOCAB && k->max_seq_len == 256);
        CHECK(k->tie_embeddings == tied && k->bos_id == 1);
        CHECK(k->n_eos == 3 && k->eos_ids[0] == 2 && k->eos_ids[1] == 3 && k->eos_ids[2] == 5);
        CHECK(k->rope_scaling == RQ_ROPE_SCALING_LLAMA3 && k->rope_factor == 32.0f && k->rope_orig_max_pos == 8192);
        CHECK(k->rope_high_freq_factor == 4.0f && k->rope_theta == 500000.0f && k->norm_eps == 1e-5f);
        CHECK(strcmp(m->format, "hf") == 0 && (m->tok == NULL) == (tied || dtype == RQ_F32));
        CHECK(m->n_params == rq_config_n_params(k));
        CHECK(strcmp(m->dtypes, tied ? (dtype == RQ_F32 ? "F32 x20" : "BF16 x20") : (dtype == RQ_F32 ? "F32 x21" : "BF16 x21")) == 0);
        CHECK(tied ? m->lm_head.w == m->tok_embed : m->lm_head.w != m->tok_embed);
        CHECK(m->layers[1].wk.out == HF_KV * HF_HD && m->layers[1].wk.in == HF_DIM && m->layers[0].wo.in == HF_HEADS * HF_HD);
        for (int t = 0; t < n; t++) {
            const float *got = model_tensor(m, ts[t].name);
            int64_t numel = ts[t].shape[0] * (ts[t].ndim == 2 ? ts[t].shape[1] : 1);
            CHECKF(got && memcmp(got, vals[t], (size_t)numel * 4) == 0, "tensor %s differs", ts[t].name);
        }
    }
    rq_model_free(m);
    for (int i = 0; i < 64; i++) free(vals[i]);
}

static void test_hf_bad(void) {
    rq_err err = {0};
    rq_st_tensor ts[64];
    float *vals[64] = {0};
    int n;
    rq_model *m = NULL;
    hf_case wrong = {false, RQ_F32, "model.layers.1.self_attn.k_proj.weight", NULL};
    const char *dir = tmp_path("hf_wrong");
    write_hf_dir(dir, &wrong, ts, &n, vals);
    CHECK_FAILS_WITH(rq_model_load(dir, NULL, &m, &err), &err, "hf_wrong/model.safetensors",
                     "model.layers.1.self_attn.k_proj.weight", "expected shape [8, 16]", "found [9, 16]");
    for (int i = 0; i < 64; i++) free(vals[i]), vals[i] = NULL;
    hf_case missing = {false, RQ_F32, NULL, "model.layers.0.mlp.up_proj.weight"};
    dir = tmp_path("hf_missing");
    write_hf_dir(dir, &missing, ts, &n, vals);
    CHECK_FAILS_WITH(rq_model_load(dir, NULL, &m, &err), &err, "hf_missing/model.safetensors",
                     "model.layers.0.mlp.up_proj.weight", "missing", "[24, 16]");
    for (int i = 0; i < 64; i++) free(vals[i]), vals[i] = NULL;

    rq_config cfg;
    const char *bias = "{\"hidden_size\": 8, \"intermediate_size\": 8, \"num_hidden_layers\": 1, \"num_attention_heads\": 2,"
                       " \"vocab_size\": 4, \"attention_bias\": true}";
    CHECK_FAILS_WITH(rq_hf_parse_config(bias, strlen(bias), "cfg.json", &cfg, &err), &err, "cfg.json", "attention_bias");
    const char *mistral = "{\"model_type\": \"mistral\", \"hidden_size\": 8}";
    CHECK_FAILS_WITH(rq_hf_parse_config(mistral, strlen(mistral), "cfg.json", &cfg, &err), &err, "mistral");
    const char *nohid = "{\"intermediate_size\": 8, \"num_hidden_layers\": 1, \"num_attention_heads\": 2, \"vocab_size\": 4}";
    CHECK_FAILS_WITH(rq_hf_parse_config(nohid, strlen(nohid), "cfg.json", &cfg, &err), &err, "hidden_size");
    const char *yarn = "{\"hidden_size\": 8, \"intermediate_size\": 8, \"num_hidden_layers\": 1, \"num_attention_heads\": 2,"
                       " \"vocab_size\": 4, \"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4}}";
    CHECK_FAILS_WITH(rq_hf_parse_config(yarn, strlen(yarn), "cfg.json", &cfg, &err), &err, "yarn");

    /* transformers v5: rope_parameters carries theta and the scaling; head_dim given explicitly. */
    const char *v5 = "{\"hidden_size\": 12, \"intermediate_size\": 8, \"num_hidden_layers\": 1, \"num_attention_heads\": 2,"
                     " \"head_dim\": 8, \"vocab_size\": 4, \"eos_token_id\": 3,"
                     " \"rope_parameters\": {\"rope_type\": \"linear\", \"factor\": 2.0, \"rope_theta\": 1000.0}}";
    CHECK_OK(rq_hf_parse_config(v5, strlen(v5), "v5.json", &cfg, &err), &err);
    CHECK_OK(rq_config_validate(&cfg, "v5.json", &err), &err);
    CHECK(cfg.rope_scaling == RQ_ROPE_SCALING_LINEAR && cfg.rope_factor == 2.0f && cfg.rope_theta == 1000.0f);
    CHECK(cfg.head_dim == 8 && cfg.n_kv_heads == 2 && cfg.n_eos == 1 && cfg.eos_ids[0] == 3 && cfg.bos_id == -1);
    CHECK(!cfg.tie_embeddings && cfg.norm_eps == 1e-6f);
    cfg.n_kv_heads = 3;
    CHECK_FAILS_WITH(rq_config_validate(&cfg, "v5.json", &err), &err, "v5.json", "n_kv_heads");
    cfg.n_kv_heads = 2, cfg.head_dim = 7;
    CHECK_FAILS_WITH(rq_config_validate(&cfg, "v5.json", &err), &err, "head_dim");

    CHECK_FAILS_WITH(rq_model_load(tmpdir, NULL, &m, &err), &err, "config.json");
    CHECK_FAILS_WITH(rq_model_load(tmp_path("does-not-exist"), NULL, &m, &err), &err, "does-not-exist");
}

/* ---- GGUF --------------------------------------------------------------------------- */

static void test_gguf_tiny(void) {
    rq_err err = {0};
    tiny_gguf tg;
    tiny_gguf_build(&tg);
    const char *path = tmp_path("tiny.gguf");
    CHECK(write_bytes(path, tg.file.p, tg.file.n));

    rq_gguf g;
    CHECK_OK(rq_gguf_open(path, &g, &err), &err);
    if (err.code == RQ_OK) {
        uint32_t u;
        float f;
        char *s = NULL;
        CHECK(g.version == 3 && g.alignment == 32 && g.n_tensors == 11);
        CHECK(rq_gguf_get_u32(&g, "llama.embedding_length", &u, &err) == RQ_OK && u == TG_DIM);
        CHECK(rq_gguf_get_f32(&g, "llama.rope.freq_base", &f, &err) == RQ_OK && f == 50000.0f);
        CHECK(rq_gguf_get_str(&g, "general.name", &s, &err) == RQ_OK && s && strcmp(s, "tiny") == 0);
        free(s);
        CHECK_FAILS_WITH(rq_gguf_get_u32(&g, "general.name", &u, &err), &err, "general.name", "string");
        CHECK_FAILS_WITH(rq_gguf_get_u32(&g, "no.such.key", &u, &err), &err, "no.such.key");
        rq_gguf_strings toks;
        CHECK_OK(rq_gguf_get_str_array(&g, "tokenizer.ggml.tokens", &toks, &err), &err);
        CHECK(toks.n == TG_VOCAB && strcmp(toks.items[10], "Ġ") == 0 && toks.lens[10] == 2);
        rq_gguf_strings_free(&toks);
        int32_t *types;
        int64_t nt;
        CHECK_OK(rq_gguf_get_i32_array(&g, "tokenizer.ggml.token_type", &types, &nt, &err), &err);
        CHECK(nt == TG_VOCAB && types[0] == 3 && types[5] == 1);
        free(types);
        const rq_gguf_kv *nested = rq_gguf_find(&g, "test.nested");
        CHECK(nested && nested->type == RQ_GGUF_ARRAY && nested->arr_type == RQ_GGUF_ARRAY && nested->arr_n == 2);
        rq_config cfg;
        CHECK_OK(rq_gguf_llama_config(&g, &cfg, &err), &err);
        CHECK(cfg.dim == TG_DIM && cfg.hidden_dim == TG_FF && cfg.n_layers == 1 && cfg.n_heads == TG_HEADS);
        CHECK(cfg.n_kv_heads == TG_KV && cfg.head_dim == TG_HD && cfg.vocab_size == TG_VOCAB && cfg.max_seq_len == 128);
        CHECK(cfg.tie_embeddings && cfg.bos_id == 1 && cfg.n_eos == 1 && cfg.eos_ids[0] == 2);
        CHECK(cfg.rope_theta == 50000.0f && cfg.norm_eps == 1e-5f && cfg.rope_scaling == RQ_ROPE_SCALING_NONE);
        rq_gguf_close(&g);
    }

    rq_model *m = NULL;
    CHECK_OK(rq_model_load(path, NULL, &m, &err), &err);
    if (m) {
        CHECK(strcmp(m->format, "gguf") == 0);
        CHECK(memcmp(m->layers[0].wq.w, tg.q_hf, sizeof tg.q_hf) == 0);
        CHECK(memcmp(m->layers[0].wk.w, tg.k_hf, sizeof tg.k_hf) == 0);
        CHECK(memcmp(m->layers[0].wv.w, tg.v_hf, sizeof tg.v_hf) == 0);
        CHECK(memcmp(m->layers[0].w_up.w, tg.up_hf, sizeof tg.up_hf) == 0);
        CHECK(memcmp(m->tok_embed, tg.embed, sizeof tg.embed) == 0);
        CHECK(m->lm_head.w == m->tok_embed);
        CHECK(m->final_norm[3] == 2.0f - 0.01f * 3.0f && m->layers[0].attn_norm[1] == 1.0f + 0.01f);
        CHECKF(strcmp(m->dtypes, "F32 x6, F16 x1, BF16 x1, Q8_0 x1, Q4_0 x1, Q4_1 x1") == 0, "dtypes '%s'", m->dtypes);
        CHECK(m->tok != NULL);
        if (m->tok) CHECK(rq_tokenizer_vocab_size(m->tok) == TG_VOCAB && rq_tokenizer_bos(m->tok) == 1);
    }
    rq_model_free(m);

    /* Bad files, each a small edit of the good one. */
    bytes b = {0};
    by_put(&b, tg.file.p, tg.file.n);
    b.p[0] = 'X';
    CHECK(write_bytes(tmp_path("magic.gguf"), b.p, b.n));
    CHECK_FAILS_WITH(rq_gguf_open(tmp_path("magic.gguf"), &g, &err), &err, "magic.gguf", "magic");
    b.p[0] = 'G';
    CHECK(write_bytes(tmp_path("trunc.gguf"), b.p, 400));
    CHECK_FAILS_WITH(rq_gguf_open(tmp_path("trunc.gguf"), &g, &err), &err, "trunc.gguf", "past the end");
    CHECK(write_bytes(tmp_path("trunc2.gguf"), b.p, b.n - 40));
    CHECK_FAILS_WITH(rq_gguf_open(tmp_path("trunc2.gguf"), &g, &err), &err, "trunc2.gguf", "output_norm.weight",
                     "outside");
    /* general.name's value: its length field follows the key and the type. */
    uint8_t *hit = memmem(b.p, b.n, "general.name", 12);
    CHECK(hit != NULL);
    if (hit) {
        uint8_t *len = hit + 12 + 4;
        uint64_t huge = 1ull << 40;
        memcpy(len, &huge, 8);
        CHECK(write_bytes(tmp_path("strlen.gguf"), b.p, b.n));
        CHECK_FAILS_WITH(rq_gguf_open(tmp_path("strlen.gguf"), &g, &err), &err, "strlen.gguf", "general.name",
                         "string length");
        memcpy(b.p, tg.file.p, b.n);
    }
    b.p[4] = 9; /* version 9 */
    CHECK(write_bytes(tmp_path("version.gguf"), b.p, b.n));
    CHECK_FAILS_WITH(rq_gguf_open(tmp_path("version.gguf"), &g, &err), &err, "version.gguf", "version 9");
    b.p[4] = 3;
    /* A tensor count far beyond what the file can hold. */
    b.p[8 + 6] = 0x7f;
    CHECK(write_bytes(tmp_path("count.gguf"), b.p, b.n));
    CHECK_FAILS_WITH(rq_gguf_open(tmp_path("count.gguf"), &g, &err), &err, "count.gguf", "tensor count");
    memcpy(b.p, tg.file.p, b.n);
    /* The q tensor's type field set to an unknown ggml type. */
    hit = memmem(b.p, b.n, "blk.0.attn_q.weight", 19);
    if (hit) {
        uint8_t *type = hit + 19 + 4 + 2 * 8;
        type[0] = 99;
        CHECK(write_bytes(tmp_path("type.gguf"), b.p, b.n));
        CHECK_FAILS_WITH(rq_gguf_open(tmp_path("type.gguf"), &g, &err), &err, "type.gguf", "blk.0.attn_q.weight", "99");
        type[0] = 12; /* Q4_K: known, but rilq cannot convert it; 32-wide rows are not a multiple of 256 either */
        CHECK(write_bytes(tmp_path("q4k.gguf"), b.p, b.n));
        CHECK_FAILS_WITH(rq_gguf_open(tmp_path("q4k.gguf"), &g, &err), &err, "q4k.gguf", "blk.0.attn_q.weight", "Q4_K");
        type[0] = 0;
        /* Offset of attn_q moved onto token_embd's bytes. */
        uint8_t *off = type + 4;
        uint64_t zero = 0;
        memcpy(off, &zero, 8);
        CHECK(write_bytes(tmp_path("overlap.gguf"), b.p, b.n));
        CHECK_FAILS_WITH(rq_gguf_open(tmp_path("overlap.gguf"), &g, &err), &err, "overlap.gguf", "overlap",
                         "blk.0.attn_q.weight");
        uint64_t odd = 8;
        memcpy(off, &odd, 8);
        CHECK(write_bytes(tmp_path("align.gguf"), b.p, b.n));
        CHECK_FAILS_WITH(rq_gguf_open(tmp_path("align.gguf"), &g, &err), &err, "align.gguf", "blk.0.attn_q.weight",
                         "alignment");
    }
    by_free(&b);
    by_free(&tg.file);
}

/* llama3 rope scaling survives GGUF's rope_freqs.weight: the recovered
 * parameters must reproduce every stored divisor (HF's formula, here in
 * double). */
static double hf_llama3_divisor(int i, int hd, double theta, double factor, double low, double high, double orig) {
    double inv = pow(theta, -2.0 * i / hd), wavelen = 2 * 3.14159265358979323846 / inv;
    if (wavelen < orig / high) return 1.0;
    if (wavelen > orig / low) return factor;
    double smooth = (orig / wavelen - low) / (high - low);
    return 1.0 / ((1 - smooth) / factor + smooth);
}

static rq_status rope_gguf_config(const char *name, const float *div, const char *linear, rq_config *cfg, rq_err *err) {
    gg_kvs kv = {0};
    gg_kv_str(&kv, "general.architecture", "llama");
    gg_kv_u32(&kv, "llama.block_count", 1);
    gg_kv_u32(&kv, "llama.embedding_length", 256);
    gg_kv_u32(&kv, "llama.feed_forward_length", 512);
    gg_kv_u32(&kv, "llama.attention.head_count", 4);
    gg_kv_u32(&kv, "llama.vocab_size", 8);
    gg_kv_f32(&kv, "llama.rope.freq_base", 500000.0f);
    if (linear) {
        gg_kv_str(&kv, "llama.rope.scaling.type", linear);
        gg_kv_f32(&kv, "llama.rope.scaling.factor", 4.0f);
    }
    gg_tensor t;
    tg_f32_tensor(&t, "rope_freqs.weight", 32, 0, div);
    bytes file = {0};
    gg_write(&file, &kv, &t, 1);
    const char *path = tmp_path(name);
    write_bytes(path, file.p, file.n);
    by_free(&file);
    by_free(&t.data);
    by_free(&kv.b);
    rq_gguf g;
    RQ_TRY(rq_gguf_open(path, &g, err));
    rq_status s = rq_gguf_llama_config(&g, cfg, err);
    rq_gguf_close(&g);
    return s;
}

static void test_gguf_rope_freqs(void) {
    rq_err err = {0};
    const double sets[3][4] = {{32, 1, 4, 8192}, {8, 1, 4, 8192}, {16, 2, 8, 4096}}; /* factor, low, high, orig */
    for (int k = 0; k < 3; k++) {
        float div[32];
        for (int i = 0; i < 32; i++) div[i] = (float)hf_llama3_divisor(i, 64, 500000.0, sets[k][0], sets[k][1], sets[k][2], sets[k][3]);
        rq_config cfg;
        CHECK_OK(rope_gguf_config("rope.gguf", div, NULL, &cfg, &err), &err);
        CHECK(cfg.rope_scaling == RQ_ROPE_SCALING_LLAMA3 && cfg.rope_factor == (float)sets[k][0]);
        int bad = 0;
        for (int i = 0; i < 32; i++) {
            double got = hf_llama3_divisor(i, 64, 500000.0, cfg.rope_factor, cfg.rope_low_freq_factor,
                                           cfg.rope_high_freq_factor, cfg.rope_orig_max_pos);
            bad += fabs(got - div[i]) > 1e-4 * div[i];
        }
        CHECKF(bad == 0, "set %d: %d divisors differ (low %g high %g orig %d)", k, bad, (double)cfg.rope_low_freq_factor,
               (double)cfg.rope_high_freq_factor, cfg.rope_orig_max_pos);
    }
    float ones[32], junk[32];
    for (int i = 0; i < 32; i++) ones[i] = 1.0f, junk[i] = 1.0f + (float)((i * 7) % 5);
    rq_config cfg;
    CHECK_OK(rope_gguf_config("rope1.gguf", ones, NULL, &cfg, &err), &err);
    CHECK(cfg.rope_scaling == RQ_ROPE_SCALING_NONE && cfg.head_dim == 64 && cfg.n_kv_heads == 0);
    CHECK_OK(rope_gguf_config("ropel.gguf", junk, "linear", &cfg, &err), &err);
    CHECK(cfg.rope_scaling == RQ_ROPE_SCALING_LINEAR && cfg.rope_factor == 4.0f);
    CHECK_FAILS_WITH(rope_gguf_config("ropej.gguf", junk, NULL, &cfg, &err), &err, "ropej.gguf", "rope_freqs.weight");
    CHECK_FAILS_WITH(rope_gguf_config("ropey.gguf", junk, "yarn", &cfg, &err), &err, "ropey.gguf", "yarn");
}

/* ---- llama2.c ----------------------------------------------------------------------- */

static void test_llama2c_tiny(bool untied) {
    rq_err err = {0};
    bytes b;
    tiny_llama2c_build(&b, untied);
    const char *path = tmp_path(untied ? "untied.bin" : "tied.bin");
    CHECK(write_bytes(path, b.p, b.n));
    rq_model *m = NULL;
    CHECK_OK(rq_model_load(path, NULL, &m, &err), &err);
    if (m) {
        const rq_config *c = &m->cfg;
        CHECK(strcmp(m->format, "llama2c") == 0 && m->tok == NULL);
        CHECK(c->dim == L2_DIM && c->hidden_dim == L2_FF && c->n_layers == L2_LAYERS && c->n_heads == L2_HEADS);
        CHECK(c->n_kv_heads == L2_KV && c->vocab_size == L2_VOCAB && c->max_seq_len == L2_SEQ && c->head_dim == 4);
        CHECK(c->tie_embeddings == !untied && c->bos_id == 1 && c->n_eos == 1 && c->eos_ids[0] == 2);
        CHECK(c->norm_eps == 1e-5f && c->rope_theta == 10000.0f);
        /* float k of the file (from the first weight) is k * 0.001 */
        long embed = L2_VOCAB * L2_DIM, att = L2_LAYERS * L2_DIM, wq = L2_LAYERS * L2_DIM * L2_DIM;
        long kvd = L2_KV * 4;
        CHECK(m->tok_embed[5] == 5 * 0.001f);
        CHECK(m->layers[1].attn_norm[2] == (float)(embed + L2_DIM + 2) * 0.001f);
        /* wq layer 1, HF row r = j*2 + i of head h comes from stored row h*4 + 2i + j. */
        for (int h = 0; h < L2_HEADS; h++)
            for (int i = 0; i < 2; i++)
                for (int j = 0; j < 2; j++) {
                    long stored = embed + att + (long)L2_DIM * L2_DIM + (long)(h * 4 + 2 * i + j) * L2_DIM + 3;
                    CHECK(m->layers[1].wq.w[(h * 4 + j * 2 + i) * L2_DIM + 3] == (float)stored * 0.001f);
                }
        long wk0 = embed + att + wq;
        CHECK(m->layers[0].wk.w[1 * L2_DIM] == (float)(wk0 + 2 * L2_DIM) * 0.001f); /* HF row 1 = stored row 2 */
        long wv0 = wk0 + L2_LAYERS * kvd * L2_DIM;
        CHECK(m->layers[0].wv.w[1 * L2_DIM] == (float)(wv0 + L2_DIM) * 0.001f);  /* v is not permuted */
        long w1 = wv0 + L2_LAYERS * kvd * L2_DIM + wq + att;
        CHECK(m->layers[0].w_gate.w[0] == (float)w1 * 0.001f);
        long w2 = w1 + (long)L2_LAYERS * L2_FF * L2_DIM;
        CHECK(m->layers[1].w_down.w[0] == (float)(w2 + L2_DIM * L2_FF) * 0.001f);
        long w3 = w2 + (long)L2_LAYERS * L2_FF * L2_DIM;
        CHECK(m->layers[0].w_up.w[7] == (float)(w3 + 7) * 0.001f);
        long fin = w3 + (long)L2_LAYERS * L2_FF * L2_DIM;
        CHECK(m->final_norm[0] == (float)fin * 0.001f);
        if (untied) CHECK(m->lm_head.w[0] == (float)(fin + L2_DIM + L2_SEQ * 4) * 0.001f);
        else CHECK(m->lm_head.w == m->tok_embed);
    }
    rq_model_free(m);

    by_u32(&b, 0);
    const char *bad = tmp_path("size.bin");
    CHECK(write_bytes(bad, b.p, b.n));
    CHECK_FAILS_WITH(rq_model_load(bad, NULL, &m, &err), &err, "size.bin", "file size");
    b.p[8] = 0; /* n_layers = 0 */
    CHECK(write_bytes(bad, b.p, b.n));
    CHECK_FAILS_WITH(rq_model_load(bad, NULL, &m, &err), &err, "size.bin", "n_layers");
    CHECK(write_bytes(bad, b.p, 10));
    CHECK_FAILS_WITH(rq_model_load(bad, NULL, &m, &err), &err, "size.bin", "28-byte");
    by_free(&b);
}

int main(void) {
    const char *out = getenv("RQ_TEST_OUT");
    snprintf(tmpdir, sizeof tmpdir, "%s/io-%ld", out && *out ? out : "/tmp", (long)getpid());
    rq_err err = {0};
    if (rq_mkdir_p(tmpdir, &err) != RQ_OK) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    test_half();
    test_dtypes();
    test_safetensors_roundtrip();
    test_safetensors_sharded();
    test_safetensors_bad();
    test_hf_dir(true, RQ_F32);
    test_hf_dir(false, RQ_F32);
    test_hf_dir(false, RQ_BF16);
    test_hf_bad();
    test_gguf_tiny();
    test_gguf_rope_freqs();
    test_llama2c_tiny(false);
    test_llama2c_tiny(true);
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (rq_test_failed == 0 && system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return rq_test_finish();
}
