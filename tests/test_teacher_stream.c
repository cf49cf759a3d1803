/* The layer-streamed teacher pass (rq_teacher_cache_write_streamed) against
 * the whole-model pass (rq_teacher_cache_write): byte-identical cache files
 * for a llama2.c model (stories260K), a bf16 safetensors checkpoint and a GGUF
 * with Q8_0 / Q4_0 / Q4_1 tensors, with the residual streams in memory and
 * spilled to a scratch file; its allocations against the size table the memory
 * plan reads; a failing and a killed pass leave no cache and no scratch file.
 * And GPTQ / block-wise quantization read from a checkpoint a layer at a time
 * (rq_layerwise_quantize_checkpoint) against the same on the loaded model. */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "io/safetensors.h"
#include "io/hf.h"
#include "io_fixtures.h"
#include "load/load.h"
#include "model/forward.h"
#include "test.h"
#include "train/calib.h"
#include "train/layerwise.h"
#include "train/plan.h"

enum { T_WIN = 16, N_WIN = 5 };

static char *read_file(const char *path, size_t *n) {
    char *b = NULL;
    rq_err err = {0};
    if (rq_file_read_all(path, &b, n, &err) != RQ_OK) return NULL;
    return b;
}

static bool same_file(const char *a, const char *b) {
    size_t na = 0, nb = 0;
    char *x = read_file(a, &na), *y = read_file(b, &nb);
    bool same = x && y && na == nb && memcmp(x, y, na) == 0;
    free(x);
    free(y);
    return same;
}

/* Files in dir whose name starts with prefix and holds ".tmp." (temporaries and scratch files). */
static int count_temps(const char *dir, const char *prefix) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (!strncmp(e->d_name, prefix, strlen(prefix)) && strstr(e->d_name, ".tmp.")) n++;
    closedir(d);
    return n;
}

static void make_windows(int vocab, int *tokens, rq_calib_windows *w) {
    for (int i = 0; i < N_WIN * T_WIN; i++) tokens[i] = (i * 37 + 5) % vocab;
    *w = (rq_calib_windows){.T = T_WIN, .n = N_WIN, .n_val = 1, .tokens = tokens};
}

/* The whole-model cache and the streamed ones (in memory and spilled) of model_path: identical bytes. */
static void check_identical(const char *model_path, const char *label) {
    rq_err err = {0};
    rq_model *m = NULL;
    rq_backend *be = NULL;
    rq_checkpoint ck;
    CHECK_OK(rq_model_load(model_path, NULL, &m, &err), &err);
    CHECK_OK(rq_backend_cpu_create(1, &be, &err), &err);
    CHECK_OK(rq_model_open_checkpoint(model_path, NULL, &ck, &err), &err);
    if (!m || !be || err.code) goto out;
    CHECK(ck.cfg.dim == m->cfg.dim && ck.cfg.n_layers == m->cfg.n_layers && ck.cfg.tie_embeddings == m->cfg.tie_embeddings);
    int tokens[N_WIN * T_WIN];
    rq_calib_windows w;
    make_windows(m->cfg.vocab_size, tokens, &w);
    char whole[4096], mem[4200], spill[4200], prefix[256];
    snprintf(whole, sizeof whole, "%s", rq_test_out(label));
    snprintf(mem, sizeof mem, "%s.mem", whole);
    snprintf(spill, sizeof spill, "%s.spill", whole);
    snprintf(prefix, sizeof prefix, "%s.spill", label);
    CHECK_OK(rq_teacher_cache_write(m, be, &w, 0x77, "key", whole, true, &err), &err);
    for (int s = 0; s < 2; s++) {
        uint64_t allocated = 0;
        CHECK_OK(rq_teacher_cache_write_streamed(&ck.cfg, ck.table, be, &w, 0x77, "key", s ? spill : mem, s, true,
                                                 &allocated, &err), &err);
        CHECKF(same_file(whole, s ? spill : mem), "%s: the streamed cache (%s) differs from the whole-model one", label,
               s ? "spilled" : "in memory");
        /* what it allocated is the size table the plan reads, plus one inference state */
        rq_teacher_stream_size sz;
        rq_teacher_stream_size_of(&ck.cfg, N_WIN, T_WIN, s, &sz);
        rq_forward_size fz;
        rq_forward_opts fo = {.max_batch = 1, .max_seq = T_WIN};
        CHECK_OK(rq_forward_size_of(&ck.cfg, &fo, &fz, &err), &err);
        CHECKF(allocated == sz.total + fz.act_bytes + fz.kv_bytes, "%s: allocated %llu, planned %llu + %zu", label,
               (unsigned long long)allocated, (unsigned long long)sz.total, fz.act_bytes + fz.kv_bytes);
    }
    /* the scratch file was unlinked as soon as it was created */
    CHECK(count_temps(rq_test_out(""), prefix) == 0);
out:
    rq_checkpoint_close(&ck);
    rq_backend_destroy(be);
    rq_model_free(m);
}

static void write_hf_checkpoint(const rq_model *m, const char *dir) {
    rq_err err = {0};
    CHECK_OK(rq_mkdir_p(dir, &err), &err);
    const rq_config *c = &m->cfg;
    enum { MAX_T = 64 };
    rq_st_tensor ts[MAX_T];
    char names[MAX_T][128];
    uint16_t *bf[MAX_T];
    int n = 0;
    const float *src[MAX_T];
    int64_t rows[MAX_T], cols[MAX_T];
#define ADD(nm, ptr, r, cc)                                                         \
    do {                                                                            \
        snprintf(names[n], sizeof names[n], "%s", nm);                              \
        src[n] = (ptr), rows[n] = (r), cols[n] = (cc);                              \
        n++;                                                                        \
    } while (0)
    ADD("model.embed_tokens.weight", m->tok_embed, c->vocab_size, c->dim);
    for (int l = 0; l < c->n_layers; l++) {
        const rq_layer *L = &m->layers[l];
        char nm[128];
        snprintf(nm, sizeof nm, "model.layers.%d.input_layernorm.weight", l);
        ADD(nm, L->attn_norm, c->dim, 0);
        snprintf(nm, sizeof nm, "model.layers.%d.post_attention_layernorm.weight", l);
        ADD(nm, L->ffn_norm, c->dim, 0);
        for (int p = 0; p < RQ_N_PROJ; p++) {
            const rq_linear *lin = rq_layer_proj((rq_layer *)L, p);
            snprintf(nm, sizeof nm, "model.layers.%d.%s.%s.weight", l, p <= RQ_PROJ_O ? "self_attn" : "mlp",
                     rq_proj_names[p]);
            ADD(nm, lin->w, lin->out, lin->in);
        }
    }
    ADD("model.norm.weight", m->final_norm, c->dim, 0);
    if (!c->tie_embeddings) ADD("lm_head.weight", m->lm_head.w, c->vocab_size, c->dim);
#undef ADD
    for (int i = 0; i < n; i++) {
        const int64_t numel = rows[i] * (cols[i] ? cols[i] : 1);
        bf[i] = malloc(sizeof(uint16_t) * (size_t)numel);
        for (int64_t k = 0; k < numel; k++) bf[i][k] = rq_f32_to_bf16(src[i][k]);
        ts[i] = (rq_st_tensor){names[i], RQ_BF16, cols[i] ? 2 : 1, {rows[i], cols[i]}, bf[i]};
    }
    char p[4200];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    CHECK_OK(rq_safetensors_write(p, ts, n, NULL, 0, &err), &err);
    for (int i = 0; i < n; i++) free(bf[i]);
    cJSON *cfg = rq_hf_config_json(c, "bfloat16");
    char *text = cJSON_Print(cfg);
    snprintf(p, sizeof p, "%s/config.json", dir);
    CHECK_OK(rq_write_file_atomic(p, text, strlen(text), &err), &err);
    free(text);
    cJSON_Delete(cfg);
}

/* dim 40, ffn 172, GQA 4 heads over 2 KV heads of 10, an untied head. */
static rq_config small_config(void) {
    rq_config c = {0};
    c.dim = 40, c.hidden_dim = 172, c.n_layers = 3, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 10;
    c.vocab_size = 100, c.max_seq_len = 64, c.norm_eps = 1e-5f, c.rope_theta = 10000.0f, c.tie_embeddings = false;
    c.bos_id = 1;
    return c;
}

static void test_formats(void) {
    check_identical(rq_test_data("models/stories260K/stories260K.bin"), "stream_stories.rqt");
    /* a bf16 safetensors checkpoint */
    rq_err err = {0};
    rq_model *m = NULL;
    rq_config c = small_config();
    CHECK_OK(rq_model_random(&c, 11, &m, &err), &err);
    if (m) {
        write_hf_checkpoint(m, rq_test_out("stream_hf"));
        check_identical(rq_test_out("stream_hf"), "stream_hf.rqt");
    }
    rq_model_free(m);
    /* a GGUF with quantized tensors (dequantized a layer at a time) */
    tiny_gguf tg;
    tiny_gguf_build(&tg);
    CHECK(write_bytes(rq_test_out("stream_tiny.gguf"), tg.file.p, tg.file.n));
    by_free(&tg.file);
    check_identical(rq_test_out("stream_tiny.gguf"), "stream_gguf.rqt");
}

/* A tensor of layer 1 missing: the pass fails naming it, after layer 0 ran, and leaves nothing behind. */
static void test_failure_leaves_nothing(void) {
    rq_err err = {0};
    rq_model *m = NULL;
    rq_config c = small_config();
    CHECK_OK(rq_model_random(&c, 12, &m, &err), &err);
    if (!m) return;
    const char *dir = rq_test_out("stream_hf_broken");
    write_hf_checkpoint(m, dir);
    rq_checkpoint ck;
    CHECK_OK(rq_model_open_checkpoint(dir, NULL, &ck, &err), &err);
    rq_backend *be = NULL;
    CHECK_OK(rq_backend_cpu_create(1, &be, &err), &err);
    if (!be || err.code) goto out;
    /* drop the tensor from the table the pass reads (the whole-model loader would refuse the file up front) */
    rq_tensor_table *tab = (rq_tensor_table *)ck.table;
    for (int i = 0; i < tab->count; i++)
        if (!strcmp(tab->items[i].name, "model.layers.1.mlp.up_proj.weight")) tab->items[i].name[0] = 0;
    int tokens[N_WIN * T_WIN];
    rq_calib_windows w;
    make_windows(c.vocab_size, tokens, &w);
    const char *path = rq_test_out("stream_broken.rqt");
    unlink(path);
    for (int s = 0; s < 2; s++) {
        rq_err e2 = {0};
        CHECK(rq_teacher_cache_write_streamed(&ck.cfg, ck.table, be, &w, 1, "k", path, s, true, NULL, &e2) ==
              RQ_ERR_FORMAT);
        CHECKF(strstr(e2.msg, "model.layers.1.mlp.up_proj.weight") && strstr(e2.msg, "missing"), "message: %s", e2.msg);
        CHECK(!rq_file_exists(path));
        CHECK(count_temps(rq_test_out(""), "stream_broken.rqt") == 0);
    }
out:
    rq_checkpoint_close(&ck);
    rq_backend_destroy(be);
    rq_model_free(m);
}

/* The pass killed (SIGKILL) in the middle: no cache file, no scratch file; the
 * cache writer's temporary is removed as stale and the next open finds nothing to trust. */
static int uploads_left;
static rq_status (*real_upload)(rq_backend *, void *, const void *, size_t, rq_err *);
static rq_status dying_upload(rq_backend *be, void *dst, const void *src, size_t n, rq_err *err) {
    if (--uploads_left == 0) raise(SIGKILL);
    return real_upload(be, dst, src, n, err);
}

static void test_killed(void) {
    const char *model = rq_test_data("models/stories260K/stories260K.bin");
    const char *path = rq_test_out("stream_killed.rqt");
    unlink(path);
    for (int s = 0; s < 2; s++) {
        pid_t pid = fork();
        if (pid == 0) {
            rq_err err = {0};
            rq_checkpoint ck;
            rq_backend *be = NULL;
            if (rq_model_open_checkpoint(model, NULL, &ck, &err) || rq_backend_cpu_create(1, &be, &err)) _exit(3);
            real_upload = be->upload;
            be->upload = dying_upload;
            /* two uploads a window a layer (the stream, RoPE's table): die in the last layer, with frames written */
            uploads_left = 2 * N_WIN * (ck.cfg.n_layers - 1) + 5;
            int tokens[N_WIN * T_WIN];
            rq_calib_windows w;
            make_windows(ck.cfg.vocab_size, tokens, &w);
            rq_teacher_cache_write_streamed(&ck.cfg, ck.table, be, &w, 1, "k", path, s, true, NULL, &err);
            _exit(4); /* not reached: killed */
        }
        int status = 0;
        CHECK(pid > 0 && waitpid(pid, &status, 0) == pid);
        CHECKF(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "the child was not killed (status %d)", status);
        CHECK(!rq_file_exists(path));
        /* the writer's temporary (the child's pid) may remain until the next run removes it as stale;
           a scratch file never does */
        rq_remove_stale_temps(rq_test_out(""));
        CHECK(count_temps(rq_test_out(""), "stream_killed.rqt") == 0);
        rq_teacher_cache *tc = NULL;
        bool stale = false;
        rq_err err = {0};
        CHECK(rq_teacher_cache_open(path, 1, 64, T_WIN, N_WIN, &tc, &stale, &err) != RQ_OK && !tc);
    }
}

/* The plan's teacher pass: the streamed pass's table and one inference state, next to the student. */
static void test_plan(void) {
    rq_config c = small_config();
    rq_err err = {0};
    rq_plan_opts o;
    rq_plan_default_opts(&o);
    o.seq_len = T_WIN, o.n_windows = N_WIN;
    for (int s = 0; s < 2; s++) {
        o.teacher_spill = s;
        rq_plan p;
        CHECK_OK(rq_plan_compute(&c, &o, &p, &err), &err);
        rq_teacher_stream_size sz;
        rq_teacher_stream_size_of(&c, N_WIN, T_WIN, s, &sz);
        rq_forward_size fz;
        rq_forward_opts fo = {.max_batch = 1, .max_seq = T_WIN};
        CHECK_OK(rq_forward_size_of(&c, &fo, &fz, &err), &err);
        CHECK(p.teacher_pass == sz.total + fz.act_bytes + fz.kv_bytes + fz.host_bytes + p.weights_q2 + p.weights_dense);
        CHECK(p.teacher_streams == sz.streams);
    }
}

static bool same_q2_models(const rq_model *a, const rq_model *b) {
    for (int l = 0; l < a->cfg.n_layers; l++)
        for (int p = 0; p < RQ_N_PROJ; p++) {
            const rq_linear *x = rq_layer_proj(&a->layers[l], p), *y = rq_layer_proj(&b->layers[l], p);
            if (!x->q2 != !y->q2) return false;
            if (!x->q2) {
                if (memcmp(x->w, y->w, sizeof(float) * (size_t)x->out * x->in)) return false;
                continue;
            }
            const rq_q2_tensor *u = x->q2, *v = y->q2;
            const size_t pg = (size_t)u->out * u->n_groups;
            if (u->out != v->out || u->in != v->in || memcmp(u->codes, v->codes, (size_t)u->out * u->row_bytes) ||
                memcmp(u->scales, v->scales, 2 * pg) || memcmp(u->offsets, v->offsets, 2 * pg))
                return false;
        }
    const size_t emb = sizeof(float) * (size_t)a->cfg.vocab_size * a->cfg.dim;
    return a->cfg.tie_embeddings == b->cfg.tie_embeddings && !memcmp(a->tok_embed, b->tok_embed, emb) &&
           !memcmp(a->final_norm, b->final_norm, sizeof(float) * (size_t)a->cfg.dim) &&
           !memcmp(a->lm_head.w, b->lm_head.w, emb);
}

/* GPTQ (with and without block-wise reconstruction, all or some projections) from the checkpoint a
 * layer at a time: the same q2 tensors and fp32 rest as on the loaded model. */
static void test_layerwise_checkpoint(void) {
    rq_err err = {0};
    rq_model *r = NULL;
    rq_config c = small_config();
    CHECK_OK(rq_model_random(&c, 13, &r, &err), &err);
    if (!r) return;
    const char *dir = rq_test_out("stream_hf_gptq");
    write_hf_checkpoint(r, dir);
    rq_model_free(r);
    rq_backend *be = NULL;
    CHECK_OK(rq_backend_cpu_create(1, &be, &err), &err);
    int tokens[N_WIN * T_WIN];
    rq_calib_windows w;
    make_windows(c.vocab_size, tokens, &w);
    for (int variant = 0; be && variant < 3; variant++) {
        rq_layerwise_opts o;
        rq_layerwise_opts_default(&o);
        o.gptq.quant.group_size = 16;
        o.gptq_init = variant != 2;
        if (variant == 1) o.refine_epochs = 1, o.refine_weights = true;
        if (variant == 2) o.proj_mask = (1u << RQ_PROJ_Q) | (1u << RQ_PROJ_DOWN);
        rq_model *whole = NULL, *streamed = NULL;
        rq_checkpoint ck;
        CHECK_OK(rq_model_load(dir, NULL, &whole, &err), &err);
        CHECK_OK(rq_model_open_checkpoint(dir, NULL, &ck, &err), &err);
        if (!whole || err.code) break;
        rq_model_quant_report ra, rb;
        CHECK_OK(rq_layerwise_quantize(whole, be, tokens, N_WIN, T_WIN, &o, &ra, &err), &err);
        CHECK_OK(rq_layerwise_quantize_checkpoint(&ck.cfg, ck.table, be, tokens, N_WIN, T_WIN, &o, &streamed, &rb,
                                                  &err), &err);
        if (streamed) {
            CHECKF(same_q2_models(whole, streamed), "variant %d: the streamed quantization differs", variant);
            CHECK(ra.tensors == rb.tensors && ra.q2_bytes == rb.q2_bytes && ra.max_rel_err == rb.max_rel_err);
            CHECK(!strcmp(whole->quant.method, streamed->quant.method));
            CHECK(!strcmp(whole->quant.source_dtypes, streamed->quant.source_dtypes));
        }
        rq_model_free(whole);
        rq_model_free(streamed);
        rq_checkpoint_close(&ck);
    }
    rq_backend_destroy(be);
}

int main(void) {
    test_layerwise_checkpoint();
    test_plan();
    test_failure_leaves_nothing();
    test_formats();
    test_killed();
    return rq_test_finish();
}
