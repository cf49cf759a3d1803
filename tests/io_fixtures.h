/* Small checkpoint files built in memory for the io tests and fuzz targets:
 * a byte buffer, a minimal GGUF writer, a tiny llama GGUF and a tiny llama2.c
 * file with deterministic weights. Test-only code (static inline: each test
 * uses a different subset). */
#ifndef RQ_TEST_IO_FIXTURES_H
#define RQ_TEST_IO_FIXTURES_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/core.h"

typedef struct bytes {
    uint8_t *p;
    size_t n, cap;
} bytes;

static inline void by_put(bytes *b, const void *src, size_t n) {
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n) cap *= 2;
        b->p = realloc(b->p, cap);
        if (!b->p) abort(); /* test code */
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, src, n);
    b->n += n;
}
static inline void by_u8(bytes *b, uint8_t v) { by_put(b, &v, 1); }
static inline void by_u32(bytes *b, uint32_t v) {
    uint8_t t[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    by_put(b, t, 4);
}
static inline void by_u64(bytes *b, uint64_t v) {
    by_u32(b, (uint32_t)v);
    by_u32(b, (uint32_t)(v >> 32));
}
static inline void by_f32(bytes *b, float f) { by_u32(b, rq_bits_from_f32(f)); }
static inline void by_free(bytes *b) {
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* Replaces the file: unlink first, because truncating a file whose pages are
 * still being written back waits for the disk (slow in fuzz loops). */
static inline bool write_bytes(const char *path, const void *p, size_t n) {
    unlink(path);
    FILE *f = fopen(path, "wb");
    if (!f) return false;
    bool ok = fwrite(p, 1, n, f) == n;
    return fclose(f) == 0 && ok;
}

/* Deterministic pseudo-random floats in [-1, 1). */
static inline float fx_rand(uint64_t *s) {
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((*s >> 40) & 0xffffff) / 8388608.0f - 1.0f;
}

/* ---- GGUF writer ---------------------------------------------------------------- */

typedef struct gg_kvs {
    bytes b;
    int n;
} gg_kvs;

static inline void gg_str(bytes *b, const char *s) {
    by_u64(b, strlen(s));
    by_put(b, s, strlen(s));
}
static inline void gg_kv_u32(gg_kvs *k, const char *key, uint32_t v) {
    gg_str(&k->b, key), by_u32(&k->b, 4), by_u32(&k->b, v), k->n++;
}
static inline void gg_kv_f32(gg_kvs *k, const char *key, float v) {
    gg_str(&k->b, key), by_u32(&k->b, 6), by_f32(&k->b, v), k->n++;
}
static inline void gg_kv_bool(gg_kvs *k, const char *key, bool v) {
    gg_str(&k->b, key), by_u32(&k->b, 7), by_u8(&k->b, v), k->n++;
}
static inline void gg_kv_str(gg_kvs *k, const char *key, const char *v) {
    gg_str(&k->b, key), by_u32(&k->b, 8), gg_str(&k->b, v), k->n++;
}
static inline void gg_kv_strs(gg_kvs *k, const char *key, const char *const *v, int n) {
    gg_str(&k->b, key), by_u32(&k->b, 9), by_u32(&k->b, 8), by_u64(&k->b, (uint64_t)n);
    for (int i = 0; i < n; i++) gg_str(&k->b, v[i]);
    k->n++;
}
static inline void gg_kv_i32s(gg_kvs *k, const char *key, const int32_t *v, int n) {
    gg_str(&k->b, key), by_u32(&k->b, 9), by_u32(&k->b, 5), by_u64(&k->b, (uint64_t)n);
    for (int i = 0; i < n; i++) by_u32(&k->b, (uint32_t)v[i]);
    k->n++;
}
static inline void gg_kv_f32s(gg_kvs *k, const char *key, const float *v, int n) {
    gg_str(&k->b, key), by_u32(&k->b, 9), by_u32(&k->b, 6), by_u64(&k->b, (uint64_t)n);
    for (int i = 0; i < n; i++) by_f32(&k->b, v[i]);
    k->n++;
}

typedef struct gg_tensor {
    const char *name;
    int n_dims;
    int64_t ne[4];
    uint32_t type;
    bytes data;
} gg_tensor;

/* Header, KVs, tensor infos, padding to 32, data (each tensor padded to 32). */
static inline void gg_write(bytes *out, const gg_kvs *kvs, const gg_tensor *ts, int n_t) {
    by_put(out, "GGUF", 4);
    by_u32(out, 3);
    by_u64(out, (uint64_t)n_t);
    by_u64(out, (uint64_t)kvs->n);
    by_put(out, kvs->b.p, kvs->b.n);
    uint64_t off = 0;
    for (int i = 0; i < n_t; i++) {
        gg_str(out, ts[i].name);
        by_u32(out, (uint32_t)ts[i].n_dims);
        for (int d = 0; d < ts[i].n_dims; d++) by_u64(out, (uint64_t)ts[i].ne[d]);
        by_u32(out, ts[i].type);
        by_u64(out, off);
        off += (ts[i].data.n + 31) / 32 * 32;
    }
    while (out->n % 32) by_u8(out, 0);
    for (int i = 0; i < n_t; i++) {
        by_put(out, ts[i].data.p, ts[i].data.n);
        while (out->n % 32) by_u8(out, 0);
    }
}

/* ---- a tiny llama GGUF ------------------------------------------------------------ */

enum { TG_DIM = 32, TG_FF = 64, TG_HEADS = 4, TG_KV = 2, TG_HD = 8, TG_VOCAB = 16 };

typedef struct tiny_gguf {
    bytes file;
    /* What the loader must produce (HF layout), for the exactly stored tensors. */
    float q_hf[TG_HEADS * TG_HD * TG_DIM];
    float up_hf[TG_FF * TG_DIM];
    float k_hf[TG_KV * TG_HD * TG_DIM]; /* Q4_1: the dequantized values */
    float embed[TG_VOCAB * TG_DIM];     /* Q8_0 */
    float v_hf[TG_KV * TG_HD * TG_DIM]; /* Q4_0 */
} tiny_gguf;

static inline void tg_f32_tensor(gg_tensor *t, const char *name, int64_t ne0, int64_t ne1, const float *v) {
    memset(t, 0, sizeof *t);
    t->name = name;
    t->n_dims = ne1 ? 2 : 1;
    t->ne[0] = ne0;
    t->ne[1] = ne1;
    t->type = 0;
    for (int64_t i = 0; i < ne0 * (ne1 ? ne1 : 1); i++) by_f32(&t->data, v[i]);
}

/* Build the tiny model. The q rows are written in GGUF's permuted order:
 * stored row 2i + j of each head = HF row j*(hd/2) + i. */
static inline void tiny_gguf_build(tiny_gguf *tg) {
    memset(tg, 0, sizeof *tg);
    uint64_t seed = 42;
    gg_kvs kv = {0};
    gg_kv_str(&kv, "general.architecture", "llama");
    gg_kv_str(&kv, "general.name", "tiny");
    gg_kv_u32(&kv, "general.alignment", 32);
    gg_kv_u32(&kv, "llama.block_count", 1);
    gg_kv_u32(&kv, "llama.context_length", 128);
    gg_kv_u32(&kv, "llama.embedding_length", TG_DIM);
    gg_kv_u32(&kv, "llama.feed_forward_length", TG_FF);
    gg_kv_u32(&kv, "llama.attention.head_count", TG_HEADS);
    gg_kv_u32(&kv, "llama.attention.head_count_kv", TG_KV);
    gg_kv_f32(&kv, "llama.rope.freq_base", 50000.0f);
    gg_kv_f32(&kv, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
    gg_kv_u32(&kv, "llama.vocab_size", TG_VOCAB);
    /* A nested array (array of arrays of u8) the reader must step over. */
    gg_str(&kv.b, "test.nested");
    by_u32(&kv.b, 9), by_u32(&kv.b, 9), by_u64(&kv.b, 2);
    for (int a = 0; a < 2; a++) {
        by_u32(&kv.b, 0), by_u64(&kv.b, 3);
        for (int i = 0; i < 3; i++) by_u8(&kv.b, (uint8_t)(a * 3 + i));
    }
    kv.n++;
    const char *toks[TG_VOCAB] = {"<unk>", "<s>", "</s>", "a", "b", "c", "d", "e", "ab", "cd", "Ġ", "Ġa", "x", "y", "z", "xy"};
    int32_t types[TG_VOCAB];
    float scores[TG_VOCAB];
    for (int i = 0; i < TG_VOCAB; i++) types[i] = i < 3 ? 3 : 1, scores[i] = -(float)i;
    const char *merges[] = {"a b", "c d", "Ġ a", "x y"};
    gg_kv_str(&kv, "tokenizer.ggml.model", "gpt2");
    gg_kv_str(&kv, "tokenizer.ggml.pre", "smollm");
    gg_kv_strs(&kv, "tokenizer.ggml.tokens", toks, TG_VOCAB);
    gg_kv_i32s(&kv, "tokenizer.ggml.token_type", types, TG_VOCAB);
    gg_kv_f32s(&kv, "tokenizer.ggml.scores", scores, TG_VOCAB);
    gg_kv_strs(&kv, "tokenizer.ggml.merges", merges, 4);
    gg_kv_u32(&kv, "tokenizer.ggml.bos_token_id", 1);
    gg_kv_u32(&kv, "tokenizer.ggml.eos_token_id", 2);
    gg_kv_bool(&kv, "tokenizer.ggml.add_bos_token", false);

    gg_tensor ts[11];
    int nt = 0;
    float tmp[TG_FF * TG_DIM];

    /* token_embd: Q8_0, d = 1/64, q = deterministic int8 */
    gg_tensor *t = &ts[nt++];
    memset(t, 0, sizeof *t);
    t->name = "token_embd.weight", t->n_dims = 2, t->ne[0] = TG_DIM, t->ne[1] = TG_VOCAB, t->type = 8;
    for (int blk = 0; blk < TG_VOCAB * TG_DIM / 32; blk++) {
        float d = (float)(blk + 1) / 64.0f;
        uint16_t dh = rq_f32_to_f16(d);
        by_u8(&t->data, (uint8_t)dh), by_u8(&t->data, (uint8_t)(dh >> 8));
        for (int i = 0; i < 32; i++) {
            int8_t q = (int8_t)((blk * 37 + i * 11) % 255 - 127);
            by_u8(&t->data, (uint8_t)q);
            tg->embed[blk * 32 + i] = rq_f16_to_f32(dh) * (float)q;
        }
    }
    for (int i = 0; i < TG_DIM; i++) tmp[i] = 1.0f + 0.01f * (float)i;
    tg_f32_tensor(&ts[nt++], "blk.0.attn_norm.weight", TG_DIM, 0, tmp);

    /* attn_q: F32, HF matrix random, stored permuted */
    for (int i = 0; i < TG_HEADS * TG_HD * TG_DIM; i++) tg->q_hf[i] = fx_rand(&seed);
    float stored[TG_HEADS * TG_HD * TG_DIM];
    for (int h = 0; h < TG_HEADS; h++)
        for (int i = 0; i < TG_HD / 2; i++)
            for (int j = 0; j < 2; j++)
                memcpy(&stored[(h * TG_HD + 2 * i + j) * TG_DIM], &tg->q_hf[(h * TG_HD + j * (TG_HD / 2) + i) * TG_DIM],
                       TG_DIM * sizeof(float));
    tg_f32_tensor(&ts[nt++], "blk.0.attn_q.weight", TG_DIM, TG_HEADS * TG_HD, stored);

    /* attn_k: Q4_1 stored permuted; the expected HF values un-permute the dequantized rows */
    t = &ts[nt++];
    memset(t, 0, sizeof *t);
    t->name = "blk.0.attn_k.weight", t->n_dims = 2, t->ne[0] = TG_DIM, t->ne[1] = TG_KV * TG_HD, t->type = 3;
    float k_stored[TG_KV * TG_HD * TG_DIM];
    for (int blk = 0; blk < TG_KV * TG_HD * TG_DIM / 32; blk++) {
        uint16_t dh = rq_f32_to_f16(0.125f * (float)(blk % 5 + 1)), mh = rq_f32_to_f16(-0.5f + 0.0625f * (float)blk);
        by_u8(&t->data, (uint8_t)dh), by_u8(&t->data, (uint8_t)(dh >> 8));
        by_u8(&t->data, (uint8_t)mh), by_u8(&t->data, (uint8_t)(mh >> 8));
        uint8_t q[32];
        for (int i = 0; i < 32; i++) q[i] = (uint8_t)((blk * 7 + i * 3) & 15);
        for (int j = 0; j < 16; j++) by_u8(&t->data, (uint8_t)(q[j] | (q[j + 16] << 4)));
        for (int i = 0; i < 32; i++) k_stored[blk * 32 + i] = rq_f16_to_f32(dh) * (float)q[i] + rq_f16_to_f32(mh);
    }
    for (int h = 0; h < TG_KV; h++)
        for (int i = 0; i < TG_HD / 2; i++)
            for (int j = 0; j < 2; j++)
                memcpy(&tg->k_hf[(h * TG_HD + j * (TG_HD / 2) + i) * TG_DIM], &k_stored[(h * TG_HD + 2 * i + j) * TG_DIM],
                       TG_DIM * sizeof(float));

    /* attn_v: Q4_0 */
    t = &ts[nt++];
    memset(t, 0, sizeof *t);
    t->name = "blk.0.attn_v.weight", t->n_dims = 2, t->ne[0] = TG_DIM, t->ne[1] = TG_KV * TG_HD, t->type = 2;
    for (int blk = 0; blk < TG_KV * TG_HD * TG_DIM / 32; blk++) {
        uint16_t dh = rq_f32_to_f16(0.25f + 0.03125f * (float)blk);
        by_u8(&t->data, (uint8_t)dh), by_u8(&t->data, (uint8_t)(dh >> 8));
        uint8_t q[32];
        for (int i = 0; i < 32; i++) q[i] = (uint8_t)((blk * 5 + i * 9) & 15);
        for (int j = 0; j < 16; j++) by_u8(&t->data, (uint8_t)(q[j] | (q[j + 16] << 4)));
        for (int i = 0; i < 32; i++) tg->v_hf[blk * 32 + i] = rq_f16_to_f32(dh) * (float)((int)q[i] - 8);
    }

    /* attn_output: F16 */
    t = &ts[nt++];
    memset(t, 0, sizeof *t);
    t->name = "blk.0.attn_output.weight", t->n_dims = 2, t->ne[0] = TG_DIM, t->ne[1] = TG_DIM, t->type = 1;
    for (int i = 0; i < TG_DIM * TG_DIM; i++) {
        uint16_t h = rq_f32_to_f16(fx_rand(&seed));
        by_u8(&t->data, (uint8_t)h), by_u8(&t->data, (uint8_t)(h >> 8));
    }
    for (int i = 0; i < TG_DIM; i++) tmp[i] = 0.5f + 0.01f * (float)i;
    tg_f32_tensor(&ts[nt++], "blk.0.ffn_norm.weight", TG_DIM, 0, tmp);
    /* ffn_gate: BF16 */
    t = &ts[nt++];
    memset(t, 0, sizeof *t);
    t->name = "blk.0.ffn_gate.weight", t->n_dims = 2, t->ne[0] = TG_DIM, t->ne[1] = TG_FF, t->type = 30;
    for (int i = 0; i < TG_DIM * TG_FF; i++) {
        uint16_t h = rq_f32_to_bf16(fx_rand(&seed));
        by_u8(&t->data, (uint8_t)h), by_u8(&t->data, (uint8_t)(h >> 8));
    }
    for (int i = 0; i < TG_FF * TG_DIM; i++) tg->up_hf[i] = fx_rand(&seed);
    tg_f32_tensor(&ts[nt++], "blk.0.ffn_up.weight", TG_DIM, TG_FF, tg->up_hf);
    for (int i = 0; i < TG_FF * TG_DIM; i++) tmp[i] = fx_rand(&seed);
    tg_f32_tensor(&ts[nt++], "blk.0.ffn_down.weight", TG_FF, TG_DIM, tmp);
    for (int i = 0; i < TG_DIM; i++) tmp[i] = 2.0f - 0.01f * (float)i;
    tg_f32_tensor(&ts[nt++], "output_norm.weight", TG_DIM, 0, tmp);

    gg_write(&tg->file, &kv, ts, nt);
    for (int i = 0; i < nt; i++) by_free(&ts[i].data);
    by_free(&kv.b);
}

/* ---- a tiny llama2.c file ---------------------------------------------------------- */

enum { L2_DIM = 8, L2_FF = 12, L2_LAYERS = 2, L2_HEADS = 2, L2_KV = 1, L2_VOCAB = 10, L2_SEQ = 4 };

/* Floats: value k (counting from the first weight) is k * 0.001. untied: a
 * classifier follows freq_cis and the header's vocab_size is negative. */
static inline void tiny_llama2c_build(bytes *b, bool untied) {
    memset(b, 0, sizeof *b);
    int32_t h[7] = {L2_DIM, L2_FF, L2_LAYERS, L2_HEADS, L2_KV, untied ? -L2_VOCAB : L2_VOCAB, L2_SEQ};
    for (int i = 0; i < 7; i++) by_u32(b, (uint32_t)h[i]);
    int hd = L2_DIM / L2_HEADS, kv_dim = L2_KV * hd;
    long n = (long)L2_VOCAB * L2_DIM +
             (long)L2_LAYERS * (2 * L2_DIM + 2 * L2_DIM * L2_DIM + 2 * kv_dim * L2_DIM + 3 * L2_FF * L2_DIM) + L2_DIM +
             (long)L2_SEQ * hd + (untied ? (long)L2_VOCAB * L2_DIM : 0);
    for (long k = 0; k < n; k++) by_f32(b, (float)k * 0.001f);
}

#endif
