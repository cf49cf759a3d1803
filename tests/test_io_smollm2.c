/* The real SmolLM2-135M-Instruct Q4_1 GGUF: config, tokenizer metadata, and
 * dequantized weights against values from llama.cpp's Python `gguf` package
 * (tests/data/smollm2_gguf_expect.txt, made by tools/reference/gguf_expect.py). */
#include "io/gguf.h"
#include "model/model.h"
#include "test.h"

static const float *hf_tensor(const rq_model *m, const char *name) {
    if (strcmp(name, "model.embed_tokens.weight") == 0) return m->tok_embed;
    if (strcmp(name, "model.norm.weight") == 0) return m->final_norm;
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

static int64_t hf_cols(const rq_model *m, const char *name) {
    const rq_config *c = &m->cfg;
    if (strstr(name, "norm")) return c->dim;
    if (strstr(name, "o_proj")) return (int64_t)c->n_heads * c->head_dim;
    if (strstr(name, "down_proj")) return c->hidden_dim;
    return c->dim;
}

int main(void) {
    const char *path = rq_test_smollm2();
    rq_err err = {0};
    rq_model *m = NULL;
    double t0 = rq_now_seconds();
    CHECK_OK(rq_model_load(path, NULL, &m, &err), &err);
    if (!m) return rq_test_finish();
    fprintf(stderr, "loaded %s in %.2f s: %s, %lld params\n", path, rq_now_seconds() - t0, m->dtypes, (long long)m->n_params);
    const rq_config *c = &m->cfg;
    CHECK(c->dim == 576 && c->hidden_dim == 1536 && c->n_layers == 30 && c->n_heads == 9 && c->n_kv_heads == 3);
    CHECK(c->head_dim == 64 && c->vocab_size == 49152 && c->max_seq_len == 8192 && c->tie_embeddings);
    CHECK(c->rope_theta == 100000.0f && c->norm_eps == 1e-5f && c->rope_scaling == RQ_ROPE_SCALING_NONE);
    CHECK(c->bos_id == 1 && c->n_eos == 1 && c->eos_ids[0] == 2);
    CHECKF(strcmp(m->dtypes, "Q4_1 x210, F32 x61, Q8_0 x1") == 0, "dtypes '%s'", m->dtypes);
    CHECK(m->n_params == 134515008); /* 49152*576 + 30*(2*576 + 576*576*2 + 2*192*576 + 3*576*1536) + 576 */
    CHECK(strcmp(m->format, "gguf") == 0 && m->lm_head.w == m->tok_embed);
    CHECK(m->tok != NULL);
    if (m->tok) {
        CHECK(rq_tokenizer_vocab_size(m->tok) == 49152);
        CHECK(rq_tokenizer_kind(m->tok) == RQ_TOK_BYTE_BPE);
        const char *t1 = rq_tokenizer_token(m->tok, 1);
        CHECK(t1 && strcmp(t1, "<|im_start|>") == 0);
    }

    FILE *f = fopen("data/smollm2_gguf_expect.txt", "r");
    CHECKF(f != NULL, "tests/data/smollm2_gguf_expect.txt not found (run from tests/)");
    int n = 0;
    char line[512];
    while (f && fgets(line, sizeof line, f)) {
        if (line[0] == '#') continue;
        char name[256];
        long row, col;
        double want;
        if (sscanf(line, "%255s %ld %ld %lf", name, &row, &col, &want) != 4) continue;
        const float *w = hf_tensor(m, name);
        CHECKF(w != NULL, "no tensor %s", name);
        if (!w) continue;
        /* Same fp32 arithmetic as numpy (d * q + m); the tolerance only absorbs
         * printing the expected value with 9 significant digits. */
        CHECK_NEAR(w[row * hf_cols(m, name) + col], want, 1e-7 + 1e-7 * fabs(want));
        n++;
    }
    if (f) fclose(f);
    CHECK(n >= 70);
    rq_model_free(m);
    return rq_test_finish();
}
