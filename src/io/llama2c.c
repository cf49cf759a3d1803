/* llama2.c legacy (v0) .bin: header int32 dim, hidden_dim, n_layers, n_heads,
 * n_kv_heads, vocab_size (negative: an untied classifier follows), seq_len;
 * then fp32 arrays in the order of run.c's memory_map_weights. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "checkpoint.h"
#include "llama2c.h"

#define HEADER_BYTES 28

/* Running byte offset over the weight arrays; sets ok = false on overflow. */
typedef struct layout {
    uint64_t off;
    bool ok;
} layout;

static uint64_t take(layout *l, uint64_t a, uint64_t b, uint64_t c) {
    size_t ab, abc, bytes;
    if (!rq_mul_ok((size_t)a, (size_t)b, &ab) || !rq_mul_ok(ab, (size_t)c, &abc) || !rq_mul_ok(abc, 4, &bytes) ||
        l->off > UINT64_MAX - bytes) {
        l->ok = false;
        return 0;
    }
    uint64_t at = l->off;
    l->off += bytes;
    return at;
}

typedef struct weight_spec {
    const char *hf;   /* HF name; "%d" for the layer */
    uint64_t offset;  /* of layer 0 */
    int64_t rows, cols; /* cols 0: a vector */
    bool per_layer;
    int unpermute_heads;
} weight_spec;

rq_status rq_llama2c_open(const char *path, rq_llama2c *f, rq_err *err) {
    memset(f, 0, sizeof *f);
    f->path = rq_strdup(path, err);
    if (!f->path) return RQ_ERR_NOMEM;
    rq_status s = rq_file_map(path, &f->view, err);
    if (s != RQ_OK) {
        rq_llama2c_close(f);
        return s;
    }
    if (f->view.size < HEADER_BYTES) {
        s = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: %zu bytes is too short for the 28-byte llama2.c header", path, f->view.size);
        rq_llama2c_close(f);
        return s;
    }
    static const char *const field[7] = {"dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"};
    int32_t h[7];
    for (int i = 0; i < 7; i++) h[i] = (int32_t)rq_rd_u32(f->view.data + 4 * i);
    for (int i = 0; i < 7; i++) {
        bool bad = i == 5 ? (h[i] == 0 || h[i] == INT32_MIN) : h[i] <= 0;
        if (bad) {
            s = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: header field %s = %d is invalid (not a llama2.c legacy checkpoint?)", path,
                        field[i], h[i]);
            rq_llama2c_close(f);
            return s;
        }
    }
    int dim = h[0], hidden = h[1], n_layers = h[2], n_heads = h[3], n_kv = h[4], seq_len = h[6];
    bool shared = h[5] > 0;
    int vocab = shared ? h[5] : -h[5];
    if (dim % n_heads != 0 || n_kv > n_heads || n_heads % n_kv != 0 || (dim / n_heads) % 2 != 0) {
        s = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: header: dim %d, n_heads %d, n_kv_heads %d are inconsistent", path, dim, n_heads, n_kv);
        rq_llama2c_close(f);
        return s;
    }
    int hd = dim / n_heads, kv_dim = n_kv * hd;
    uint64_t L = (uint64_t)n_layers;

    layout l = {HEADER_BYTES, true};
    weight_spec w[12];
    int nw = 0;
    w[nw++] = (weight_spec){"model.embed_tokens.weight", take(&l, vocab, dim, 1), vocab, dim, false, 0};
    w[nw++] = (weight_spec){"model.layers.%d.input_layernorm.weight", take(&l, L, dim, 1), dim, 0, true, 0};
    w[nw++] = (weight_spec){"model.layers.%d.self_attn.q_proj.weight", take(&l, L, dim, dim), dim, dim, true, n_heads};
    w[nw++] = (weight_spec){"model.layers.%d.self_attn.k_proj.weight", take(&l, L, kv_dim, dim), kv_dim, dim, true, n_kv};
    w[nw++] = (weight_spec){"model.layers.%d.self_attn.v_proj.weight", take(&l, L, kv_dim, dim), kv_dim, dim, true, 0};
    w[nw++] = (weight_spec){"model.layers.%d.self_attn.o_proj.weight", take(&l, L, dim, dim), dim, dim, true, 0};
    w[nw++] = (weight_spec){"model.layers.%d.post_attention_layernorm.weight", take(&l, L, dim, 1), dim, 0, true, 0};
    w[nw++] = (weight_spec){"model.layers.%d.mlp.gate_proj.weight", take(&l, L, hidden, dim), hidden, dim, true, 0};
    w[nw++] = (weight_spec){"model.layers.%d.mlp.down_proj.weight", take(&l, L, dim, hidden), dim, hidden, true, 0};
    w[nw++] = (weight_spec){"model.layers.%d.mlp.up_proj.weight", take(&l, L, hidden, dim), hidden, dim, true, 0};
    w[nw++] = (weight_spec){"model.norm.weight", take(&l, dim, 1, 1), dim, 0, false, 0};
    take(&l, seq_len, hd, 1); /* freq_cis_real [seq_len][hd/2] + freq_cis_imag: unused */
    if (!shared) w[nw++] = (weight_spec){"lm_head.weight", take(&l, vocab, dim, 1), vocab, dim, false, 0};
    if (!l.ok || l.off != f->view.size) {
        if (l.ok)
            s = RQ_FAIL(err, RQ_ERR_FORMAT,
                        "%s: file size is %zu bytes but the header (dim %d, hidden_dim %d, n_layers %d, n_heads %d, "
                        "n_kv_heads %d, vocab_size %d, seq_len %d) implies %" PRIu64 " (%s classifier)",
                        path, f->view.size, dim, hidden, n_layers, n_heads, n_kv, h[5], seq_len, l.off,
                        shared ? "shared" : "with an untied");
        else s = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: header sizes overflow", path);
        rq_llama2c_close(f);
        return s;
    }

    rq_config *c = &f->cfg;
    memset(c, 0, sizeof *c);
    c->dim = dim;
    c->hidden_dim = hidden;
    c->n_layers = n_layers;
    c->n_heads = n_heads;
    c->n_kv_heads = n_kv;
    c->head_dim = hd;
    c->vocab_size = vocab;
    c->max_seq_len = seq_len;
    c->norm_eps = 1e-5f;      /* run.c's rmsnorm */
    c->rope_theta = 10000.0f; /* run.c's RoPE */
    c->tie_embeddings = shared;
    c->bos_id = 1;            /* llama2.c tokenizers: 1 <s>, 2 </s> */
    c->eos_ids[0] = 2;
    c->n_eos = 1;

    for (int k = 0; k < nw && s == RQ_OK; k++) {
        int layers = w[k].per_layer ? n_layers : 1;
        uint64_t numel = (uint64_t)w[k].rows * (uint64_t)(w[k].cols ? w[k].cols : 1);
        for (int layer = 0; layer < layers && s == RQ_OK; layer++) {
            rq_tensor_view v;
            memset(&v, 0, sizeof v);
            snprintf(v.name, sizeof v.name, w[k].hf, layer);
            v.dtype = RQ_F32;
            v.ndim = w[k].cols ? 2 : 1;
            v.shape[0] = w[k].rows;
            v.shape[1] = w[k].cols;
            v.nbytes = numel * 4;
            v.data = f->view.data + w[k].offset + (uint64_t)layer * v.nbytes;
            v.file = f->path;
            v.unpermute_heads = w[k].unpermute_heads;
            s = rq_tensor_table_add(&f->table, &v, err);
        }
    }
    if (s != RQ_OK) rq_llama2c_close(f);
    return s;
}

void rq_llama2c_close(rq_llama2c *f) {
    rq_tensor_table_free(&f->table);
    rq_file_unmap(&f->view);
    free(f->path);
    memset(f, 0, sizeof *f);
}

rq_status rq_llama2c_load(const char *path, const char *tokenizer_path, rq_model **out, rq_err *err) {
    *out = NULL;
    rq_checkpoint ck;
    RQ_TRY(rq_checkpoint_open_llama2c(path, tokenizer_path, &ck, err));
    rq_status s = rq_checkpoint_build(&ck, out, err);
    rq_checkpoint_close(&ck);
    return s;
}
