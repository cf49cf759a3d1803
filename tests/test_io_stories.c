/* The real stories260K llama2.c checkpoint: config, parameter count, weights
 * read back against the raw file (with the q/k un-permutation), tokenizer
 * found beside the model (tok512.bin). */
#include "io/llama2c.h"
#include "model/model.h"
#include "test.h"

int main(void) {
    const char *path = rq_test_data("models/stories260K/stories260K.bin");
    rq_err err = {0};
    rq_model *m = NULL;
    CHECK_OK(rq_model_load(path, NULL, &m, &err), &err);
    if (!m) return rq_test_finish();
    const rq_config *c = &m->cfg;
    CHECK(c->dim == 64 && c->hidden_dim == 172 && c->n_layers == 5 && c->n_heads == 8 && c->n_kv_heads == 4);
    CHECK(c->head_dim == 8 && c->vocab_size == 512 && c->max_seq_len == 512 && c->tie_embeddings);
    CHECK(c->bos_id == 1 && c->n_eos == 1 && c->eos_ids[0] == 2 && c->norm_eps == 1e-5f && c->rope_theta == 10000.0f);
    CHECK(m->n_params == 260032);
    CHECK(strcmp(m->format, "llama2c") == 0 && strcmp(m->dtypes, "F32 x47") == 0);
    CHECK(m->tok != NULL && (!m->tok || rq_tokenizer_vocab_size(m->tok) == 512));

    char *raw = NULL;
    size_t size = 0;
    CHECK_OK(rq_file_read_all(path, &raw, &size, &err), &err);
    if (raw && size == 1056540) {
        const uint8_t *w = (const uint8_t *)raw + 28;
#define RAW(k) rq_rd_f32(w + 4 * (size_t)(k))
        long embed = 512 * 64, att = 5 * 64, wq = 5 * 64 * 64, wk = 5 * 32 * 64;
        CHECK(m->tok_embed[0] == RAW(0) && m->tok_embed[512 * 64 - 1] == RAW(embed - 1));
        CHECK(m->layers[4].attn_norm[63] == RAW(embed + 4 * 64 + 63));
        /* Layer 2, head 5, HF row j*4 + i <- stored row 2i + j (hd = 8). */
        int mism = 0;
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 2; j++)
                for (int col = 0; col < 64; col += 21) {
                    float got = m->layers[2].wq.w[(5 * 8 + j * 4 + i) * 64 + col];
                    mism += got != RAW(embed + att + 2 * 64 * 64 + (5 * 8 + 2 * i + j) * 64 + col);
                    float gotk = m->layers[3].wk.w[(3 * 8 + j * 4 + i) * 64 + col];
                    mism += gotk != RAW(embed + att + wq + 3 * 32 * 64 + (3 * 8 + 2 * i + j) * 64 + col);
                }
        CHECKF(mism == 0, "%d q/k values differ", mism);
        CHECK(m->layers[1].wv.w[7 * 64 + 5] == RAW(embed + att + wq + wk + 32 * 64 + 7 * 64 + 5));
        long w1 = embed + att + wq + 2 * wk + wq + att;
        CHECK(m->layers[0].w_gate.w[171 * 64 + 63] == RAW(w1 + 171 * 64 + 63));
        CHECK(m->final_norm[10] == RAW(w1 + 3 * 5 * 172 * 64 + 10));
#undef RAW
    }
    free(raw);
    rq_model_free(m);
    return rq_test_finish();
}
