/* Deployment exports (export.h): GGUF Q4_1 (exact F32 for rows that are not
 * whole Q4_1 blocks) for llama.cpp, HQQ-layout safetensors for
 * transformers + hqq, and a dequantized Hugging Face checkpoint. */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../quant/q2.h"
#include "../tokenizer/tokenizer.h"
#include "export.h"
#include "hf.h"
#include "gguf.h"
#include "gguf_write.h"
#include "safetensors.h"

#define Q4_1_BLOCK 32
#define Q4_1_BLOCK_BYTES 20
#define GGML_FTYPE_ALL_F32 0
#define GGML_FTYPE_MOSTLY_Q4_1 3
#define GGML_QNT_VERSION 2
#define RQ_TWO_PI 6.283185307179586476925

static void module_name(char *buf, size_t cap, int layer, int proj) {
    snprintf(buf, cap, "model.layers.%d.%s.%s", layer, proj <= RQ_PROJ_O ? "self_attn" : "mlp", rq_proj_names[proj]);
}

static bool codebook_is_int2(const rq_q2_tensor *t) {
    for (int k = 0; k < 4; k++)
        if (t->codebook[k] != (float)k) return false;
    return true;
}

/* The checks both formats share: levels 0..3 (a uniform grid the formats'
 * integer codes can carry). */
static rq_status check_codebook(const rq_q2_tensor *t, const char *module, const char *format, rq_err *err) {
    if (codebook_is_int2(t)) return RQ_OK;
    return RQ_FAIL(err, RQ_ERR_UNSUPPORTED,
                   "%s: codebook %s {%g, %g, %g, %g} cannot be exported to %s: it stores W = scale * q + offset with "
                   "integer codes q, so only the int2 codebook {0, 1, 2, 3} maps exactly (quantize with --method rtn)",
                   module, rq_q2_codebook_name(t->kind), t->codebook[0], t->codebook[1], t->codebook[2], t->codebook[3],
                   format);
}

static void report_tokenizer(rq_export_report *rep, const char *what) {
    if (rep) snprintf(rep->tokenizer, sizeof rep->tokenizer, "%s", what);
}

/* ======================================================================================
 * GGUF
 * ====================================================================================== */

/* llama.cpp's llama architecture rotates adjacent pairs, HF rotates halves:
 * GGUF row h*hd + 2i + j holds HF row h*hd + j*hd/2 + i (the inverse of the
 * un-permutation src/io/tensors.c applies on load). heads == 0: identity. */
static int gguf_src_row(int r, int heads, int rows) {
    if (heads <= 0) return r;
    int hd = rows / heads, half = hd / 2;
    int h = r / hd, w = r % hd;
    return h * hd + (w % 2) * half + w / 2;
}

typedef struct tensor_src {
    const float *f32;        /* F32 rows, or NULL */
    const rq_q2_tensor *q2;  /* or a q2 tensor -> Q4_1 (or F32 via fill_q2_f32) */
    int rows, cols;
    int permute_heads;
    const float *vec;        /* rope_freqs: computed values */
} tensor_src;

/* cols floats as little-endian bytes. */
static void put_f32_row(uint8_t *d, const float *src, int cols) {
    for (int c = 0; c < cols; c++) {
        uint32_t u = rq_bits_from_f32(src[c]);
        d[4 * c] = (uint8_t)u, d[4 * c + 1] = (uint8_t)(u >> 8), d[4 * c + 2] = (uint8_t)(u >> 16),
                  d[4 * c + 3] = (uint8_t)(u >> 24);
    }
}

static rq_status fill_f32(void *ctx, uint8_t *dst, uint64_t nbytes, rq_err *err) {
    const tensor_src *t = ctx;
    if (nbytes != (uint64_t)t->rows * (uint64_t)t->cols * 4) return RQ_FAIL(err, RQ_ERR_INTERNAL, "F32 size mismatch");
    const float *base = t->f32 ? t->f32 : t->vec;
    for (int r = 0; r < t->rows; r++) {
        const float *src = base + (size_t)gguf_src_row(r, t->permute_heads, t->rows) * (size_t)t->cols;
        put_f32_row(dst + (size_t)r * (size_t)t->cols * 4, src, t->cols);
    }
    return RQ_OK;
}

/* A q2 tensor Q4_1 cannot carry (rows not whole blocks of 32) as F32: each row
 * through rq_q2_dequant_row, the dequantizer every rilq backend matches, so
 * the stored values are the model's weights bit for bit. */
static rq_status fill_q2_f32(void *ctx, uint8_t *dst, uint64_t nbytes, rq_err *err) {
    const tensor_src *t = ctx;
    const rq_q2_tensor *q = t->q2;
    if (nbytes != (uint64_t)q->out * (uint64_t)q->in * 4) return RQ_FAIL(err, RQ_ERR_INTERNAL, "F32 (from q2) size mismatch");
    float *row = rq_calloc((size_t)q->in, sizeof(float), err);
    if (!row) return RQ_ERR_NOMEM;
    for (int r = 0; r < q->out; r++) {
        rq_q2_dequant_row(q, gguf_src_row(r, t->permute_heads, q->out), row);
        put_f32_row(dst + (size_t)r * (size_t)q->in * 4, row, q->in);
    }
    free(row);
    return RQ_OK;
}

/* Q4_1 block: fp16 d, fp16 m, 16 bytes with element j in the low nibble and
 * element j + 16 in the high nibble of byte j. One q2 group of gs (a multiple
 * of 32) is gs / 32 blocks sharing the group's s and m. */
static rq_status fill_q4_1(void *ctx, uint8_t *dst, uint64_t nbytes, rq_err *err) {
    const tensor_src *t = ctx;
    const rq_q2_tensor *q = t->q2;
    int blocks = q->in / Q4_1_BLOCK;
    if (nbytes != (uint64_t)q->out * (uint64_t)blocks * Q4_1_BLOCK_BYTES)
        return RQ_FAIL(err, RQ_ERR_INTERNAL, "Q4_1 size mismatch");
    for (int r = 0; r < q->out; r++) {
        int src = gguf_src_row(r, t->permute_heads, q->out);
        for (int b = 0; b < blocks; b++) {
            uint8_t *blk = dst + ((size_t)r * (size_t)blocks + (size_t)b) * Q4_1_BLOCK_BYTES;
            int col0 = b * Q4_1_BLOCK, g = col0 / q->group_size;
            uint16_t d = q->scales[(size_t)src * (size_t)q->n_groups + (size_t)g];
            uint16_t m = q->offsets[(size_t)src * (size_t)q->n_groups + (size_t)g];
            blk[0] = (uint8_t)d, blk[1] = (uint8_t)(d >> 8), blk[2] = (uint8_t)m, blk[3] = (uint8_t)(m >> 8);
            for (int j = 0; j < 16; j++)
                blk[4 + j] = (uint8_t)(rq_q2_get_code(q, src, col0 + j) | (rq_q2_get_code(q, src, col0 + 16 + j) << 4));
        }
    }
    return RQ_OK;
}

/* What no GGUF tensor type of ours can hold exactly: non-uniform levels, and
 * groups that would share a Q4_1 block. Rows that are not whole blocks
 * (in_features % 32 != 0) are not refused: q4_1_rows() sends them to F32. */
static rq_status check_q4_1(const rq_q2_tensor *t, const char *module, rq_err *err) {
    RQ_TRY(check_codebook(t, module, "GGUF Q4_1", err));
    if (t->group_size % Q4_1_BLOCK != 0)
        return RQ_FAIL(err, RQ_ERR_UNSUPPORTED,
                       "%s: group size %d is not a multiple of 32: a Q4_1 block (32 weights with one scale and offset) "
                       "would span two groups (quantize with --group-size 32, 64, 128, ...)",
                       module, t->group_size);
    return RQ_OK;
}

/* Q4_1 rows are whole blocks of 32; a ragged last group (172 = 64 + 64 + 44)
 * leaves a partial block, so such a tensor is written as exact F32 instead. */
static bool q4_1_rows(const rq_q2_tensor *t) { return t->in % Q4_1_BLOCK == 0; }

/* The llama3 rope_freqs divisors, as llama.cpp's converter computes them. */
static void llama3_rope_freqs(const rq_config *c, float *out) {
    int hd = c->head_dim;
    double factor = c->rope_factor, low = c->rope_low_freq_factor, high = c->rope_high_freq_factor;
    double orig = c->rope_orig_max_pos, lo_wavelen = orig / low, hi_wavelen = orig / high;
    for (int i = 0; i < hd / 2; i++) {
        double freq = 1.0 / pow(c->rope_theta, 2.0 * i / hd);
        double wavelen = RQ_TWO_PI / freq;
        if (wavelen < hi_wavelen) out[i] = 1.0f;
        else if (wavelen > lo_wavelen) out[i] = (float)factor;
        else {
            double smooth = (orig / wavelen - low) / (high - low);
            out[i] = (float)(1.0 / ((1.0 - smooth) / factor + smooth));
        }
    }
}

static bool has_gguf_magic(const char *path) {
    FILE *f = path[0] ? fopen(path, "rb") : NULL;
    char magic[4] = {0};
    bool yes = f && fread(magic, 1, 4, f) == 4 && memcmp(magic, "GGUF", 4) == 0;
    if (f) fclose(f);
    return yes;
}

/* tokenizer.* metadata copied verbatim from a GGUF (an artifact's tokenizer.gguf). */
static rq_status copy_gguf_tokenizer(rq_gguf_writer *w, const char *src, int n_vocab, rq_err *err) {
    rq_gguf g;
    RQ_TRY(rq_gguf_open(src, &g, err));
    rq_status s = RQ_OK;
    const rq_gguf_kv *toks = rq_gguf_find(&g, "tokenizer.ggml.tokens");
    if (toks && toks->type == RQ_GGUF_ARRAY && toks->arr_n != (uint64_t)n_vocab)
        s = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: tokenizer.ggml.tokens has %" PRIu64 " tokens, the model's vocab_size is %d", src,
                    toks->arr_n, n_vocab);
    for (int64_t i = 0; i < g.n_kv && s == RQ_OK; i++) {
        const rq_gguf_kv *kv = &g.kv[i];
        if (strncmp(kv->key, "tokenizer.", 10) != 0) continue;
        s = rq_gguf_set_raw(w, kv->key, kv->type, kv->value, rq_gguf_kv_value_size(&g, kv), err);
    }
    rq_gguf_close(&g);
    return s;
}

static const char *pre_name(rq_pretok p) {
    switch (p) {
    case RQ_PRETOK_SMOLLM: return "smollm";
    case RQ_PRETOK_LLAMA3: return "llama-bpe";
    default: return "gpt2";
    }
}

/* tokenizer.ggml.* from the in-memory tokenizer. A vocabulary shorter than the
 * embedding is padded with unused "[PAD<id>]" tokens, as llama.cpp's converter
 * does (llama.cpp needs one token per embedding row). */
static rq_status write_tokenizer_keys(rq_gguf_writer *w, const rq_model *m, rq_err *err) {
    const rq_config *c = &m->cfg;
    rq_tokenizer_desc d;
    RQ_TRY(rq_tokenizer_describe(m->tok, &d, err));
    const rq_tokenizer_spec *sp = &d.spec;
    int n = c->vocab_size, have = sp->n_vocab;
    rq_status s = RQ_OK;
    if (have > n)
        s = RQ_FAIL(err, RQ_ERR_FORMAT, "the tokenizer has %d tokens but the model's embedding only %d rows", have, n);
    const char **tokens = NULL;
    int *lens = NULL;
    int32_t *types = NULL;
    float *scores = NULL;
    char (*pads)[24] = NULL;
    if (s == RQ_OK) {
        tokens = rq_calloc((size_t)n, sizeof *tokens, err);
        lens = rq_calloc((size_t)n, sizeof *lens, err);
        types = rq_calloc((size_t)n, sizeof *types, err);
        scores = rq_calloc((size_t)n, sizeof *scores, err);
        pads = rq_calloc((size_t)(n - have) + 1, sizeof *pads, err);
        if (!tokens || !lens || !types || !scores || !pads) s = RQ_ERR_NOMEM;
    }
    if (s == RQ_OK) {
        for (int i = 0; i < n; i++) {
            if (i < have) {
                tokens[i] = sp->tokens[i];
                lens[i] = sp->token_lens[i];
                types[i] = sp->token_types[i];
                scores[i] = sp->scores ? sp->scores[i] : 0.0f;
            } else {
                snprintf(pads[i - have], sizeof pads[0], "[PAD%d]", i);
                tokens[i] = pads[i - have];
                lens[i] = (int)strlen(pads[i - have]);
                types[i] = RQ_TOKTYPE_UNUSED;
                scores[i] = -1e9f;
            }
        }
        bool spm = sp->kind == RQ_TOK_SPM;
        s = rq_gguf_set_str(w, "tokenizer.ggml.model", spm ? "llama" : "gpt2", err);
        if (s == RQ_OK) s = rq_gguf_set_str(w, "tokenizer.ggml.pre", spm ? "default" : pre_name(sp->pretok), err);
        if (s == RQ_OK) s = rq_gguf_set_str_array(w, "tokenizer.ggml.tokens", tokens, lens, n, err);
        if (s == RQ_OK && spm) s = rq_gguf_set_f32_array(w, "tokenizer.ggml.scores", scores, n, err);
        if (s == RQ_OK) s = rq_gguf_set_i32_array(w, "tokenizer.ggml.token_type", types, n, err);
        if (s == RQ_OK && !spm)
            s = rq_gguf_set_str_array(w, "tokenizer.ggml.merges", (const char *const *)sp->merges, NULL, sp->n_merges, err);
        int bos = sp->bos_id >= 0 ? sp->bos_id : c->bos_id;
        int eos = sp->eos_id >= 0 ? sp->eos_id : c->n_eos > 0 ? c->eos_ids[0] : -1;
        if (s == RQ_OK && bos >= 0) s = rq_gguf_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)bos, err);
        if (s == RQ_OK && eos >= 0) s = rq_gguf_set_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)eos, err);
        /* a second end-of-generation id (LLaMA-3 instruct's <|eot_id|>) */
        for (int k = 0; k < c->n_eos && s == RQ_OK; k++)
            if (c->eos_ids[k] != eos && c->eos_ids[k] >= 0 && c->eos_ids[k] < n) {
                s = rq_gguf_set_u32(w, "tokenizer.ggml.eot_token_id", (uint32_t)c->eos_ids[k], err);
                break;
            }
        if (s == RQ_OK && sp->unk_id >= 0) s = rq_gguf_set_u32(w, "tokenizer.ggml.unknown_token_id", (uint32_t)sp->unk_id, err);
        if (s == RQ_OK && sp->pad_id >= 0) s = rq_gguf_set_u32(w, "tokenizer.ggml.padding_token_id", (uint32_t)sp->pad_id, err);
        if (s == RQ_OK) s = rq_gguf_set_bool(w, "tokenizer.ggml.add_bos_token", sp->add_bos_default, err);
        if (s == RQ_OK) s = rq_gguf_set_bool(w, "tokenizer.ggml.add_eos_token", false, err);
        if (s == RQ_OK && spm) s = rq_gguf_set_bool(w, "tokenizer.ggml.add_space_prefix", sp->add_space_prefix, err);
    }
    free(tokens);
    free(lens);
    free(types);
    free(scores);
    free(pads);
    rq_tokenizer_describe_free(&d);
    return s;
}

static rq_status write_llama_keys(rq_gguf_writer *w, const rq_model *m, const char *name, bool any_q4_1, rq_err *err) {
    const rq_config *c = &m->cfg;
    RQ_TRY(rq_gguf_set_str(w, "general.architecture", "llama", err));
    RQ_TRY(rq_gguf_set_str(w, "general.name", name, err));
    RQ_TRY(rq_gguf_set_u32(w, "general.file_type", any_q4_1 ? GGML_FTYPE_MOSTLY_Q4_1 : GGML_FTYPE_ALL_F32, err));
    RQ_TRY(rq_gguf_set_u32(w, "general.quantization_version", GGML_QNT_VERSION, err));
    RQ_TRY(rq_gguf_set_u32(w, "llama.context_length", (uint32_t)c->max_seq_len, err));
    RQ_TRY(rq_gguf_set_u32(w, "llama.embedding_length", (uint32_t)c->dim, err));
    RQ_TRY(rq_gguf_set_u32(w, "llama.block_count", (uint32_t)c->n_layers, err));
    RQ_TRY(rq_gguf_set_u32(w, "llama.feed_forward_length", (uint32_t)c->hidden_dim, err));
    RQ_TRY(rq_gguf_set_u32(w, "llama.attention.head_count", (uint32_t)c->n_heads, err));
    RQ_TRY(rq_gguf_set_u32(w, "llama.attention.head_count_kv", (uint32_t)c->n_kv_heads, err));
    RQ_TRY(rq_gguf_set_f32(w, "llama.attention.layer_norm_rms_epsilon", c->norm_eps, err));
    RQ_TRY(rq_gguf_set_f32(w, "llama.rope.freq_base", c->rope_theta, err));
    RQ_TRY(rq_gguf_set_u32(w, "llama.rope.dimension_count", (uint32_t)c->head_dim, err));
    RQ_TRY(rq_gguf_set_u32(w, "llama.vocab_size", (uint32_t)c->vocab_size, err));
    if (c->head_dim * c->n_heads != c->dim) {
        RQ_TRY(rq_gguf_set_u32(w, "llama.attention.key_length", (uint32_t)c->head_dim, err));
        RQ_TRY(rq_gguf_set_u32(w, "llama.attention.value_length", (uint32_t)c->head_dim, err));
    }
    if (c->rope_scaling == RQ_ROPE_SCALING_LINEAR) {
        RQ_TRY(rq_gguf_set_str(w, "llama.rope.scaling.type", "linear", err));
        RQ_TRY(rq_gguf_set_f32(w, "llama.rope.scaling.factor", c->rope_factor, err));
    }
    return RQ_OK;
}

typedef struct gguf_job {
    rq_gguf_writer *w;
    tensor_src *srcs;
    int n, cap;
    rq_export_report *rep;
} gguf_job;

static rq_status add_f32(gguf_job *j, const char *name, const float *data, int rows, int cols, int permute, rq_err *err) {
    tensor_src *t = &j->srcs[j->n++];
    *t = (tensor_src){.f32 = data, .rows = rows, .cols = cols, .permute_heads = permute};
    int64_t ne[2] = {cols, rows};
    return rq_gguf_add_tensor(j->w, name, RQ_GGML_F32, rows > 1 ? 2 : 1, ne, fill_f32, t, err);
}

static rq_status add_linear(gguf_job *j, const char *name, const char *module, const rq_linear *lin, int permute,
                            rq_err *err) {
    if (!lin->q2) return add_f32(j, name, lin->w, lin->out, lin->in, permute, err);
    tensor_src *t = &j->srcs[j->n++];
    *t = (tensor_src){.q2 = lin->q2, .rows = lin->out, .cols = lin->in, .permute_heads = permute};
    int64_t ne[2] = {lin->in, lin->out};
    if (!q4_1_rows(lin->q2)) {
        RQ_TRY(rq_gguf_add_tensor(j->w, name, RQ_GGML_F32, 2, ne, fill_q2_f32, t, err));
        if (j->rep->f32_fallback++ == 0) {
            snprintf(j->rep->f32_fallback_first, sizeof j->rep->f32_fallback_first, "%s", module);
            j->rep->f32_fallback_in = lin->in;
        }
        j->rep->f32_fallback_weights += (int64_t)lin->out * lin->in;
        j->rep->f32_fallback_bytes += (uint64_t)lin->out * (uint64_t)lin->in * 4;
        return RQ_OK;
    }
    RQ_TRY(rq_gguf_add_tensor(j->w, name, RQ_GGML_Q4_1, 2, ne, fill_q4_1, t, err));
    j->rep->q_tensors++;
    j->rep->q_weights += (int64_t)lin->out * lin->in;
    j->rep->q_bytes += (uint64_t)lin->out * (uint64_t)(lin->in / Q4_1_BLOCK) * Q4_1_BLOCK_BYTES;
    return RQ_OK;
}

static rq_status gguf_build(gguf_job *j, const rq_model *m, const char *name, float *rope_freqs, rq_err *err) {
    const rq_config *c = &m->cfg;
    bool any_q4_1 = false; /* general.file_type: MOSTLY_Q4_1 when at least one tensor is */
    for (int l = 0; l < c->n_layers; l++)
        for (int p = 0; p < RQ_N_PROJ; p++) {
            const rq_q2_tensor *t = rq_layer_proj(&m->layers[l], p)->q2;
            if (!t) continue;
            char mod[128];
            module_name(mod, sizeof mod, l, p);
            RQ_TRY(check_q4_1(t, mod, err));
            any_q4_1 |= q4_1_rows(t);
        }
    if ((c->head_dim % 2) != 0)
        return RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "head_dim %d is odd: llama.cpp's rotary pairs need an even head size", c->head_dim);
    RQ_TRY(write_llama_keys(j->w, m, name, any_q4_1, err));
    if (m->tok && has_gguf_magic(m->tokenizer_path)) {
        RQ_TRY(copy_gguf_tokenizer(j->w, m->tokenizer_path, c->vocab_size, err));
        report_tokenizer(j->rep, "tokenizer.* copied verbatim from the source GGUF");
    } else if (m->tok) {
        RQ_TRY(write_tokenizer_keys(j->w, m, err));
        report_tokenizer(j->rep, rq_tokenizer_kind(m->tok) == RQ_TOK_SPM ? "SentencePiece vocabulary (model llama)"
                                                                         : "byte-level BPE with merges (model gpt2)");
    }

    RQ_TRY(add_f32(j, "token_embd.weight", m->tok_embed, c->vocab_size, c->dim, 0, err));
    j->rep->total_weights += (int64_t)c->vocab_size * c->dim;
    if (c->rope_scaling == RQ_ROPE_SCALING_LLAMA3) {
        llama3_rope_freqs(c, rope_freqs);
        tensor_src *t = &j->srcs[j->n++];
        *t = (tensor_src){.vec = rope_freqs, .rows = 1, .cols = c->head_dim / 2};
        int64_t ne[1] = {c->head_dim / 2};
        RQ_TRY(rq_gguf_add_tensor(j->w, "rope_freqs.weight", RQ_GGML_F32, 1, ne, fill_f32, t, err));
    }
    static const char *const gguf_proj[RQ_N_PROJ] = {"attn_q", "attn_k", "attn_v", "attn_output",
                                                     "ffn_gate", "ffn_up", "ffn_down"};
    for (int l = 0; l < c->n_layers; l++) {
        const rq_layer *L = &m->layers[l];
        char nm[64], mod[128];
        snprintf(nm, sizeof nm, "blk.%d.attn_norm.weight", l);
        RQ_TRY(add_f32(j, nm, L->attn_norm, 1, c->dim, 0, err));
        snprintf(nm, sizeof nm, "blk.%d.ffn_norm.weight", l);
        RQ_TRY(add_f32(j, nm, L->ffn_norm, 1, c->dim, 0, err));
        j->rep->total_weights += 2 * (int64_t)c->dim;
        for (int p = 0; p < RQ_N_PROJ; p++) {
            const rq_linear *lin = rq_layer_proj((rq_layer *)L, p);
            int permute = p == RQ_PROJ_Q ? c->n_heads : p == RQ_PROJ_K ? c->n_kv_heads : 0;
            snprintf(nm, sizeof nm, "blk.%d.%s.weight", l, gguf_proj[p]);
            module_name(mod, sizeof mod, l, p);
            RQ_TRY(add_linear(j, nm, mod, lin, permute, err));
            j->rep->total_weights += (int64_t)lin->out * lin->in;
        }
    }
    RQ_TRY(add_f32(j, "output_norm.weight", m->final_norm, 1, c->dim, 0, err));
    j->rep->total_weights += c->dim;
    if (!c->tie_embeddings) { /* tied: llama.cpp reuses token_embd when output.weight is absent */
        RQ_TRY(add_f32(j, "output.weight", m->lm_head.w, c->vocab_size, c->dim, 0, err));
        j->rep->total_weights += (int64_t)c->vocab_size * c->dim;
    }
    return RQ_OK;
}

rq_status rq_export_gguf(const rq_model *m, const char *path, const rq_export_opts *opts, rq_export_report *rep_out,
                         rq_err *err) {
    rq_export_report rep;
    memset(&rep, 0, sizeof rep);
    gguf_job j = {0};
    j.rep = &rep;
    j.cap = 4 + m->cfg.n_layers * (2 + RQ_N_PROJ);
    j.srcs = rq_calloc((size_t)j.cap, sizeof *j.srcs, err);
    float *rope_freqs = rq_calloc((size_t)m->cfg.head_dim / 2 + 1, sizeof(float), err);
    rq_status s = j.srcs && rope_freqs ? rq_gguf_writer_create(&j.w, err) : RQ_ERR_NOMEM;
    const char *name = opts && opts->name && opts->name[0] ? opts->name : "rilq-q2";
    if (s == RQ_OK) s = gguf_build(&j, m, name, rope_freqs, err);
    if (s == RQ_OK) s = rq_gguf_writer_write(j.w, path, err);
    if (s == RQ_OK) {
        struct stat st;
        if (stat(path, &st) == 0) rep.file_bytes = (uint64_t)st.st_size;
        if (rep_out) *rep_out = rep;
    }
    rq_gguf_writer_free(j.w);
    free(j.srcs);
    free(rope_freqs);
    return s;
}

/* ======================================================================================
 * HQQ
 *
 * HQQ (mobiusml/hqq, axis 1) views a row-major [out][in] weight as R = out*in/gs
 * rows of gs consecutive weights (exactly rilq's groups when in % gs == 0) and
 * dequantizes
 *
 *     W = (W_q - zero) * scale        per group, in its compute dtype (fp16 here).
 *
 * With scale = s and zero = -m/s this is (q + m/s) * s = s*q + m, rilq's weight.
 * The only rounding the file adds is zero's: -m/s is computed in double and
 * rounded to fp16 (through float, which adds at most 2^-24 relative), so
 * |zero_stored - (-m/s)| <= half an fp16 ulp <= 2^-11 |zero_stored| and the
 * weight moves by at most s * 2^-11 * |zero| (about 2^-11 |m|): measured
 * max |W_hqq - W| / s = 1e-3 or less on random models and stories260K.
 * scale = s is stored exactly (s is already fp16). At run time HQQ evaluates the
 * formula in fp16 on top of that, as any fp16 model would (about 2^-11 relative
 * per operation); tools/reference/hqq_check.py checks the stored values in fp32.
 * A group with s = 0 (every weight equal to m) gets codes 0, scale 1, zero = -m:
 * (0 + m) * 1 = m, exact.
 *
 * Packing "2bit_u8": with C[R][gs] the codes, W_q is uint8 [R/4][gs] and
 *     W_q[p][c] = C[p][c] << 6 | C[p + R/4][c] << 4 | C[p + R/2][c] << 2 | C[p + 3R/4][c]
 * (the four fields of a byte come from four row-quarters), so R % 4 == 0.
 * ====================================================================================== */

static rq_status check_hqq(const rq_q2_tensor *t, const char *module, rq_err *err) {
    RQ_TRY(check_codebook(t, module, "HQQ", err));
    if (t->in % t->group_size != 0)
        return RQ_FAIL(err, RQ_ERR_UNSUPPORTED,
                       "%s: in_features %d is not a multiple of the group size %d: the last group of each row (%d "
                       "weights) is ragged, and HQQ's axis-1 groups are consecutive runs of %d weights of the flattened "
                       "matrix, so they would straddle rows (leave this projection unquantized with --modules)",
                       module, t->in, t->group_size, t->in % t->group_size, t->group_size);
    int64_t R = (int64_t)t->out * t->n_groups;
    if (R % 4 != 0)
        return RQ_FAIL(err, RQ_ERR_UNSUPPORTED,
                       "%s: %" PRId64 " groups (out %d x %d per row) is not a multiple of 4, which HQQ's 2bit_u8 packing "
                       "(four row-quarters per byte) needs",
                       module, R, t->out, t->n_groups);
    return RQ_OK;
}

/* One quantized module's HQQ tensors (allocated; free with hqq_parts_free). */
typedef struct hqq_parts {
    uint8_t *wq;
    uint16_t *scale, *zero;
    int64_t shape[2];
    int64_t R;
} hqq_parts;

static rq_status hqq_convert(const rq_q2_tensor *t, const char *module, hqq_parts *h, rq_err *err) {
    int gs = t->group_size;
    int64_t R = (int64_t)t->out * t->n_groups;
    h->R = R;
    h->shape[0] = t->out;
    h->shape[1] = t->in;
    h->wq = rq_calloc((size_t)(R / 4) * (size_t)gs, 1, err);
    h->scale = rq_calloc((size_t)R, 2, err);
    h->zero = rq_calloc((size_t)R, 2, err);
    if (!h->wq || !h->scale || !h->zero) return RQ_ERR_NOMEM;
    int64_t quarter = R / 4;
    for (int64_t g = 0; g < R; g++) {
        int row = (int)(g / t->n_groups), grp = (int)(g % t->n_groups);
        uint16_t s16 = t->scales[g], m16 = t->offsets[g];
        double s = rq_f16_to_f32(s16), m = rq_f16_to_f32(m16);
        bool constant = s == 0.0;
        if (constant) {
            h->scale[g] = rq_f32_to_f16(1.0f);
            h->zero[g] = m16 ^ 0x8000u; /* -m, exact */
        } else {
            float z = (float)(-m / s);
            uint16_t z16 = rq_f32_to_f16(z);
            if (!isfinite(rq_f16_to_f32(z16)))
                return RQ_FAIL(err, RQ_ERR_UNSUPPORTED,
                               "%s: row %d, group %d: zero = -offset/scale = %g does not fit in fp16 (scale %g, offset "
                               "%g)",
                               module, row, grp, -m / s, s, m);
            h->scale[g] = s16;
            h->zero[g] = z16;
        }
        int64_t p = g % quarter, slot = g / quarter; /* slot 0 -> bits 6..7, slot 3 -> bits 0..1 */
        uint8_t *dst = h->wq + (size_t)p * (size_t)gs;
        int shift = 6 - 2 * (int)slot;
        for (int c = 0; c < gs; c++) {
            int code = constant ? 0 : rq_q2_get_code(t, row, grp * gs + c);
            dst[c] |= (uint8_t)(code << shift);
        }
    }
    return RQ_OK;
}

static void hqq_parts_free(hqq_parts *h) {
    free(h->wq);
    free(h->scale);
    free(h->zero);
}

/* The per-module metadata tensors hqq's encode_safetensor_type writes:
 * bools as 0-d U8, ints as 0-d I32, strings as U8 arrays of their ASCII codes. */
static const uint8_t one_u8 = 1, zero_u8 = 0;
static const int32_t nbits_i32 = 2, axis_i32 = 1;
static const char packing_str[] = "2bit_u8", view_dtype_str[] = "torch.uint8", compute_str[] = "torch.float16";

typedef struct st_list {
    rq_st_tensor *items;
    char (*names)[RQ_TENSOR_NAME_MAX];
    int n, cap;
    bool overflow;
} st_list;

static void st_add(st_list *l, const char *name, rq_dtype dt, int ndim, int64_t d0, int64_t d1, const void *data) {
    if (l->n >= l->cap) { /* sized up front; counted so the writer refuses instead of overrunning */
        l->overflow = true;
        return;
    }
    rq_st_tensor *x = &l->items[l->n];
    size_t len = strlen(name); /* names are built from short module names: never cut in practice */
    if (len >= RQ_TENSOR_NAME_MAX) len = RQ_TENSOR_NAME_MAX - 1;
    memcpy(l->names[l->n], name, len);
    l->names[l->n][len] = 0;
    x->name = l->names[l->n];
    x->dtype = dt;
    x->ndim = ndim;
    x->shape[0] = d0;
    x->shape[1] = d1;
    x->data = data;
    l->n++;
}

static void st_add_meta(st_list *l, const char *module, const char *key, rq_dtype dt, int ndim, int64_t d0, const void *data) {
    char name[RQ_TENSOR_NAME_MAX + 32];
    snprintf(name, sizeof name, "%s.%s", module, key);
    st_add(l, name, dt, ndim, d0, 0, data);
}

static cJSON *hqq_config(const rq_model *m, int gs, char (*skip)[RQ_TENSOR_NAME_MAX], int n_skip) {
    const rq_config *c = &m->cfg;
    cJSON *root = rq_hf_config_json(c, "float16");
    cJSON *q = cJSON_AddObjectToObject(root, "quantization_config");
    cJSON_AddStringToObject(q, "quant_method", "hqq");
    cJSON *qc = cJSON_AddObjectToObject(q, "quant_config");
    cJSON *wp = cJSON_AddObjectToObject(qc, "weight_quant_params");
    cJSON_AddNumberToObject(wp, "nbits", 2);
    cJSON_AddBoolToObject(wp, "channel_wise", true);
    cJSON_AddNumberToObject(wp, "group_size", gs);
    cJSON_AddBoolToObject(wp, "optimize", true);
    cJSON_AddBoolToObject(wp, "round_zero", false);
    cJSON_AddNumberToObject(wp, "axis", 1);
    cJSON_AddBoolToObject(wp, "view_as_float", false);
    cJSON_AddNullToObject(qc, "scale_quant_params");
    cJSON_AddNullToObject(qc, "zero_quant_params");
    cJSON_AddBoolToObject(qc, "offload_meta", false);
    cJSON *sk = cJSON_AddArrayToObject(q, "skip_modules");
    cJSON_AddItemToArray(sk, cJSON_CreateString("lm_head"));
    for (int i = 0; i < n_skip; i++) cJSON_AddItemToArray(sk, cJSON_CreateString(skip[i]));
    cJSON_AddStringToObject(q, "rilq_note", "exported by rilq from a 2-bit artifact: scale = s, zero = -m/s (fp16)");
    return root;
}

static rq_status write_json_file(const char *dir, const char *name, cJSON *root, rq_err *err) {
    char *text = root ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    if (!text) return RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory building %s", name);
    char *path = rq_path_join_alloc(dir, name, err);
    rq_status s = path ? RQ_OK : RQ_ERR_NOMEM;
    if (s == RQ_OK) {
        size_t len = strlen(text);
        text[len] = '\n';
        s = rq_write_file_atomic(path, text, len + 1, err);
    }
    free(path);
    free(text);
    return s;
}

/* ---- the directory (written as DIR.tmp-PID, renamed when complete) ---- */

static const char *const hqq_files[] = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer.bin",
                                        "tokenizer.gguf"};
#define N_HQQ_FILES ((int)(sizeof hqq_files / sizeof hqq_files[0]))


static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

static rq_status copy_tokenizer(const rq_model *m, const char *dir, rq_export_report *rep, rq_err *err) {
    if (!m->tok || !m->tokenizer_path[0]) return RQ_OK;
    const char *src = m->tokenizer_path;
    const char *name = has_gguf_magic(src) ? "tokenizer.gguf" : ends_with(src, ".json") ? "tokenizer.json" : "tokenizer.bin";
    char *dst = rq_path_join_alloc(dir, name, err);
    if (!dst) return RQ_ERR_NOMEM;
    rq_file_view v;
    rq_status s = rq_file_map(src, &v, err);
    if (s == RQ_OK) {
        s = rq_write_file_atomic(dst, v.data, v.size, err);
        rq_file_unmap(&v);
    }
    free(dst);
    if (s == RQ_OK) snprintf(rep->tokenizer, sizeof rep->tokenizer, "%s copied", name);
    return s;
}

static rq_status hqq_write_files(const rq_model *m, const char *tmp, rq_export_report *rep, rq_err *err) {
    const rq_config *c = &m->cfg;
    int n_lin = c->n_layers * RQ_N_PROJ, gs = 0;
    for (int l = 0; l < c->n_layers; l++)
        for (int p = 0; p < RQ_N_PROJ; p++) {
            const rq_q2_tensor *t = rq_layer_proj(&m->layers[l], p)->q2;
            if (!t) continue;
            char mod[128];
            module_name(mod, sizeof mod, l, p);
            RQ_TRY(check_hqq(t, mod, err));
            if (gs && t->group_size != gs)
                return RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "%s: group size %d differs from the other projections' %d: "
                               "an HQQ config records one", mod, t->group_size, gs);
            gs = t->group_size;
        }
    if (!gs) return RQ_FAIL(err, RQ_ERR_ARG, "the model has no 2-bit projections: nothing to export in HQQ layout");

    hqq_parts *parts = rq_calloc((size_t)n_lin, sizeof *parts, err);
    char (*skip)[RQ_TENSOR_NAME_MAX] = rq_calloc((size_t)n_lin + 1, sizeof *skip, err);
    st_list l = {0};
    l.cap = 4 + c->n_layers * (2 + RQ_N_PROJ * 20); /* 19 tensors per quantized module */
    l.items = rq_calloc((size_t)l.cap, sizeof *l.items, err);
    l.names = rq_calloc((size_t)l.cap, sizeof *l.names, err);
    rq_status s = parts && skip && l.items && l.names ? RQ_OK : RQ_ERR_NOMEM;
    int n_skip = 0;
    if (s == RQ_OK) {
        st_add(&l, "model.embed_tokens.weight", RQ_F32, 2, c->vocab_size, c->dim, m->tok_embed);
        st_add(&l, "model.norm.weight", RQ_F32, 1, c->dim, 0, m->final_norm);
        rep->total_weights = (int64_t)c->vocab_size * c->dim + c->dim;
        if (!c->tie_embeddings) {
            st_add(&l, "lm_head.weight", RQ_F32, 2, c->vocab_size, c->dim, m->lm_head.w);
            rep->total_weights += (int64_t)c->vocab_size * c->dim;
        }
    }
    for (int li = 0; li < c->n_layers && s == RQ_OK; li++) {
        const rq_layer *L = &m->layers[li];
        char nm[RQ_TENSOR_NAME_MAX + 32], mod[128];
        snprintf(nm, sizeof nm, "model.layers.%d.input_layernorm.weight", li);
        st_add(&l, nm, RQ_F32, 1, c->dim, 0, L->attn_norm);
        snprintf(nm, sizeof nm, "model.layers.%d.post_attention_layernorm.weight", li);
        st_add(&l, nm, RQ_F32, 1, c->dim, 0, L->ffn_norm);
        rep->total_weights += 2 * (int64_t)c->dim;
        for (int p = 0; p < RQ_N_PROJ && s == RQ_OK; p++) {
            const rq_linear *lin = rq_layer_proj((rq_layer *)L, p);
            module_name(mod, sizeof mod, li, p);
            rep->total_weights += (int64_t)lin->out * lin->in;
            if (!lin->q2) {
                snprintf(nm, sizeof nm, "%s.weight", mod);
                st_add(&l, nm, RQ_F32, 2, lin->out, lin->in, lin->w);
                snprintf(skip[n_skip++], RQ_TENSOR_NAME_MAX, "%s", mod);
                continue;
            }
            hqq_parts *h = &parts[li * RQ_N_PROJ + p];
            s = hqq_convert(lin->q2, mod, h, err);
            if (s != RQ_OK) break;
            char nm2[RQ_TENSOR_NAME_MAX + 32];
            snprintf(nm2, sizeof nm2, "%s.W_q", mod);
            st_add(&l, nm2, RQ_U8, 2, h->R / 4, gs, h->wq);
            snprintf(nm2, sizeof nm2, "%s.scale", mod);
            st_add(&l, nm2, RQ_F16, 2, h->R, 1, h->scale);
            snprintf(nm2, sizeof nm2, "%s.zero", mod);
            st_add(&l, nm2, RQ_F16, 2, h->R, 1, h->zero);
            st_add_meta(&l, mod, "shape", RQ_I64, 1, 2, h->shape);
            st_add_meta(&l, mod, "nbits", RQ_I32, 0, 0, &nbits_i32);
            st_add_meta(&l, mod, "group_size", RQ_I32, 0, 0, &lin->q2->group_size);
            st_add_meta(&l, mod, "axis", RQ_I32, 0, 0, &axis_i32);
            st_add_meta(&l, mod, "channel_wise", RQ_U8, 0, 0, &one_u8);
            st_add_meta(&l, mod, "optimize", RQ_U8, 0, 0, &one_u8);
            st_add_meta(&l, mod, "round_zero", RQ_U8, 0, 0, &zero_u8);
            st_add_meta(&l, mod, "view_as_float", RQ_U8, 0, 0, &zero_u8);
            st_add_meta(&l, mod, "quant_scale", RQ_U8, 0, 0, &zero_u8);
            st_add_meta(&l, mod, "quant_zero", RQ_U8, 0, 0, &zero_u8);
            st_add_meta(&l, mod, "offload_meta", RQ_U8, 0, 0, &zero_u8);
            st_add_meta(&l, mod, "encoded_state_dict", RQ_U8, 0, 0, &one_u8);
            st_add_meta(&l, mod, "stores_quant_config", RQ_U8, 0, 0, &one_u8);
            st_add_meta(&l, mod, "packing", RQ_U8, 1, (int64_t)strlen(packing_str), packing_str);
            st_add_meta(&l, mod, "unpack_view_dtype", RQ_U8, 1, (int64_t)strlen(view_dtype_str), view_dtype_str);
            st_add_meta(&l, mod, "compute_dtype", RQ_U8, 1, (int64_t)strlen(compute_str), compute_str);
            rep->q_tensors++;
            rep->q_weights += (int64_t)lin->out * lin->in;
            rep->q_bytes += (uint64_t)h->R / 4 * (uint64_t)gs + 4 * (uint64_t)h->R;
        }
    }
    char *st_path = s == RQ_OK ? rq_path_join_alloc(tmp, "model.safetensors", err) : NULL;
    if (s == RQ_OK && !st_path) s = RQ_ERR_NOMEM;
    if (s == RQ_OK && l.overflow) s = RQ_FAIL(err, RQ_ERR_INTERNAL, "HQQ export: tensor list overflow (%d slots)", l.cap);
    if (s == RQ_OK) s = rq_safetensors_write(st_path, l.items, l.n, NULL, 0, err);
    for (int k = 0; parts && k < n_lin; k++) hqq_parts_free(&parts[k]);
    free(parts);
    free(l.items);
    free(l.names);
    if (s == RQ_OK) s = copy_tokenizer(m, tmp, rep, err);
    if (s == RQ_OK) s = write_json_file(tmp, "config.json", hqq_config(m, gs, skip, n_skip), err);
    free(st_path);
    free(skip);
    return s;
}

typedef struct hqq_job {
    const rq_model *m;
    rq_export_report *rep;
} hqq_job;

static rq_status fill_hqq(void *user, const char *tmp, rq_err *err) {
    hqq_job *j = user;
    return hqq_write_files(j->m, tmp, j->rep, err);
}

/* Bytes of the files names[n] that dir holds (what an export wrote). */
static uint64_t files_bytes(const char *dir, const char *const *names, int n) {
    uint64_t total = 0;
    struct stat st;
    for (int i = 0; i < n; i++) {
        char *p = rq_path_join_alloc(dir, names[i], NULL);
        if (p && stat(p, &st) == 0) total += (uint64_t)st.st_size;
        free(p);
    }
    return total;
}

rq_status rq_export_hqq(const rq_model *m, const char *dir_in, const rq_export_opts *opts, rq_export_report *rep_out,
                        rq_err *err) {
    (void)opts;
    rq_export_report rep;
    memset(&rep, 0, sizeof rep);
    hqq_job j = {m, &rep};
    RQ_TRY(rq_write_dir_atomic(dir_in, hqq_files, N_HQQ_FILES, fill_hqq, &j, err));
    rep.file_bytes = files_bytes(dir_in, hqq_files, N_HQQ_FILES);
    if (rep_out) *rep_out = rep;
    return RQ_OK;
}

/* ======================================================================================
 * Hugging Face checkpoint (dequantized)
 *
 * A plain LlamaForCausalLM directory: every q2 projection dequantized with
 * rq_q2_dequant (the values every rilq backend computes with) and stored, like
 * every other tensor, in the chosen dtype: F32 holds the model exactly; F16 and
 * BF16 round each weight once (relative 2^-11 and 2^-8). HF's rotate-half
 * layout is rilq's own, so q/k rows are written as they are.
 * ====================================================================================== */

static const char *const hf_files[] = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                                       "tokenizer_config.json"};
#define N_HF_FILES ((int)(sizeof hf_files / sizeof hf_files[0]))

typedef struct hf_dtype {
    const char *name, *torch;
    rq_dtype dt;
    int bytes;
} hf_dtype;

static const hf_dtype hf_dtypes[] = {
    {"f16", "float16", RQ_F16, 2}, {"bf16", "bfloat16", RQ_BF16, 2}, {"f32", "float32", RQ_F32, 4}};

static rq_status hf_dtype_find(const char *name, const hf_dtype **out, rq_err *err) {
    if (!name) name = "f16";
    for (size_t i = 0; i < sizeof hf_dtypes / sizeof hf_dtypes[0]; i++)
        if (!strcmp(hf_dtypes[i].name, name)) {
            *out = &hf_dtypes[i];
            return RQ_OK;
        }
    return RQ_FAIL(err, RQ_ERR_ARG, "HF export: dtype \"%s\": expected f16, bf16 or f32", name);
}

typedef struct hf_job {
    const rq_model *m;
    const hf_dtype *dt;
    rq_export_report *rep;
    rq_st_tensor *items;
    char (*names)[RQ_TENSOR_NAME_MAX];
    void **bufs;
    int n, cap;
} hf_job;

/* n floats of src converted into a new buffer of the job's dtype, added as a
 * tensor [d0] or [d0][d1]. A value F16 cannot hold is refused, naming it. */
static rq_status hf_add(hf_job *j, const char *name, const float *src, int64_t d0, int64_t d1, rq_err *err) {
    if (j->n >= j->cap) return RQ_FAIL(err, RQ_ERR_INTERNAL, "HF export: tensor list overflow (%d slots)", j->cap);
    size_t n = (size_t)d0 * (size_t)(d1 ? d1 : 1);
    void *buf = malloc(n * (size_t)j->dt->bytes + 1);
    if (!buf) return RQ_FAIL(err, RQ_ERR_NOMEM, "HF export: out of memory for %s (%zu values)", name, n);
    j->bufs[j->n] = buf;
    for (size_t i = 0; i < n; i++) {
        if (j->dt->dt == RQ_F32) {
            ((float *)buf)[i] = src[i];
            continue;
        }
        uint16_t h = j->dt->dt == RQ_F16 ? rq_f32_to_f16(src[i]) : rq_f32_to_bf16(src[i]);
        float back = j->dt->dt == RQ_F16 ? rq_f16_to_f32(h) : rq_bf16_to_f32(h);
        if (isfinite(src[i]) && !isfinite(back))
            return RQ_FAIL(err, RQ_ERR_UNSUPPORTED,
                           "HF export: %s[%zu] = %g does not fit in %s (largest 65504): export with --dtype bf16 or f32",
                           name, i, (double)src[i], j->dt->name);
        ((uint16_t *)buf)[i] = h;
    }
    size_t len = strlen(name);
    if (len >= RQ_TENSOR_NAME_MAX) return RQ_FAIL(err, RQ_ERR_INTERNAL, "HF export: tensor name too long: %s", name);
    memcpy(j->names[j->n], name, len + 1);
    j->items[j->n] = (rq_st_tensor){.name = j->names[j->n], .dtype = j->dt->dt, .ndim = d1 ? 2 : 1, .shape = {d0, d1},
                                    .data = buf};
    j->n++;
    j->rep->total_weights += (int64_t)n;
    return RQ_OK;
}

static rq_status hf_add_linear(hf_job *j, const char *name, const rq_linear *lin, rq_err *err) {
    if (!lin->q2) return hf_add(j, name, lin->w, lin->out, lin->in, err);
    size_t n = (size_t)lin->out * (size_t)lin->in;
    float *w = rq_calloc(n, sizeof(float), err);
    if (!w) return RQ_ERR_NOMEM;
    rq_q2_dequant(lin->q2, w, 1);
    rq_status s = hf_add(j, name, w, lin->out, lin->in, err);
    free(w);
    if (s == RQ_OK) {
        j->rep->q_tensors++;
        j->rep->q_weights += (int64_t)n;
        j->rep->q_bytes += (uint64_t)n * (uint64_t)j->dt->bytes;
    }
    return s;
}

static rq_status hf_tensors(hf_job *j, rq_err *err) {
    const rq_model *m = j->m;
    const rq_config *c = &m->cfg;
    RQ_TRY(hf_add(j, "model.embed_tokens.weight", m->tok_embed, c->vocab_size, c->dim, err));
    RQ_TRY(hf_add(j, "model.norm.weight", m->final_norm, c->dim, 0, err));
    if (!c->tie_embeddings) RQ_TRY(hf_add(j, "lm_head.weight", m->lm_head.w, c->vocab_size, c->dim, err));
    for (int l = 0; l < c->n_layers; l++) {
        const rq_layer *L = &m->layers[l];
        char nm[RQ_TENSOR_NAME_MAX];
        snprintf(nm, sizeof nm, "model.layers.%d.input_layernorm.weight", l);
        RQ_TRY(hf_add(j, nm, L->attn_norm, c->dim, 0, err));
        snprintf(nm, sizeof nm, "model.layers.%d.post_attention_layernorm.weight", l);
        RQ_TRY(hf_add(j, nm, L->ffn_norm, c->dim, 0, err));
        for (int p = 0; p < RQ_N_PROJ; p++) {
            char mod[128];
            module_name(mod, sizeof mod, l, p);
            snprintf(nm, sizeof nm, "%s.weight", mod);
            RQ_TRY(hf_add_linear(j, nm, rq_layer_proj((rq_layer *)L, p), err));
        }
    }
    return RQ_OK;
}

static void add_token_name(cJSON *o, const char *key, const rq_tokenizer *t, int id) {
    const char *s = id >= 0 ? rq_tokenizer_token(t, id) : NULL;
    if (s) cJSON_AddStringToObject(o, key, s);
    else cJSON_AddNullToObject(o, key);
}

/* tokenizer.json (copied from an HF source, else written from the tokenizer)
 * and a tokenizer_config.json that makes AutoTokenizer use it as it is. */
static rq_status hf_write_tokenizer(const rq_model *m, const char *dir, rq_export_report *rep, rq_err *err) {
    const rq_tokenizer *t = m->tok;
    if (!t) return RQ_OK;
    const char *src = m->tokenizer_path;
    bool gguf_src = has_gguf_magic(src);
    if (src[0] && ends_with(src, ".json")) {
        RQ_TRY(copy_tokenizer(m, dir, rep, err));
    } else {
        cJSON *tj = NULL;
        RQ_TRY(rq_tokenizer_to_hf_json(t, &tj, err));
        RQ_TRY(write_json_file(dir, "tokenizer.json", tj, err));
        snprintf(rep->tokenizer, sizeof rep->tokenizer, "tokenizer.json written from the %s tokenizer (%s)",
                 gguf_src ? "GGUF" : src[0] ? "llama2.c" : "model's",
                 rq_tokenizer_kind(t) == RQ_TOK_SPM ? "SentencePiece BPE, byte fallback" : "byte-level BPE");
    }
    cJSON *tc = cJSON_CreateObject();
    cJSON_AddStringToObject(tc, "tokenizer_class", "PreTrainedTokenizerFast");
    add_token_name(tc, "bos_token", t, rq_tokenizer_bos(t));
    add_token_name(tc, "eos_token", t, rq_tokenizer_eos(t));
    rq_tokenizer_desc d;
    RQ_TRY(rq_tokenizer_describe(t, &d, err));
    add_token_name(tc, "unk_token", t, d.spec.unk_id);
    if (d.spec.pad_id >= 0) add_token_name(tc, "pad_token", t, d.spec.pad_id);
    rq_tokenizer_describe_free(&d);
    cJSON_AddBoolToObject(tc, "clean_up_tokenization_spaces", false);
    cJSON_AddNumberToObject(tc, "model_max_length", m->cfg.max_seq_len);
    if (gguf_src) { /* the chat template, when the GGUF has one */
        rq_gguf g;
        if (rq_gguf_open(src, &g, NULL) == RQ_OK) {
            char *tmpl = NULL;
            if (rq_gguf_find(&g, "tokenizer.chat_template") && rq_gguf_get_str(&g, "tokenizer.chat_template", &tmpl, NULL) == RQ_OK)
                cJSON_AddStringToObject(tc, "chat_template", tmpl);
            free(tmpl);
            rq_gguf_close(&g);
        }
    }
    return write_json_file(dir, "tokenizer_config.json", tc, err);
}

static rq_status hf_write_files(hf_job *j, const char *tmp, rq_err *err) {
    const rq_model *m = j->m;
    const rq_config *c = &m->cfg;
    RQ_TRY(hf_tensors(j, err));
    char *st = rq_path_join_alloc(tmp, "model.safetensors", err);
    if (!st) return RQ_ERR_NOMEM;
    const char *meta[] = {"producer", "rilq (dequantized 2-bit model)"};
    rq_status s = rq_safetensors_write(st, j->items, j->n, meta, 1, err);
    free(st);
    RQ_TRY(s);
    RQ_TRY(write_json_file(tmp, "config.json", rq_hf_config_json(c, j->dt->torch), err));
    if (c->bos_id >= 0 || c->n_eos > 0) {
        cJSON *g = cJSON_CreateObject();
        if (c->bos_id >= 0) cJSON_AddNumberToObject(g, "bos_token_id", c->bos_id);
        if (c->n_eos == 1) cJSON_AddNumberToObject(g, "eos_token_id", c->eos_ids[0]);
        else if (c->n_eos > 1) cJSON_AddItemToObject(g, "eos_token_id", cJSON_CreateIntArray(c->eos_ids, c->n_eos));
        RQ_TRY(write_json_file(tmp, "generation_config.json", g, err));
    }
    return hf_write_tokenizer(m, tmp, j->rep, err);
}

static rq_status fill_hf(void *user, const char *tmp, rq_err *err) { return hf_write_files(user, tmp, err); }

rq_status rq_export_hf(const rq_model *m, const char *dir, const rq_export_opts *opts, rq_export_report *rep_out,
                       rq_err *err) {
    rq_export_report rep;
    memset(&rep, 0, sizeof rep);
    hf_job j = {.m = m, .rep = &rep};
    RQ_TRY(hf_dtype_find(opts ? opts->dtype : NULL, &j.dt, err));
    j.cap = 3 + m->cfg.n_layers * (2 + RQ_N_PROJ);
    j.items = rq_calloc((size_t)j.cap, sizeof *j.items, err);
    j.names = rq_calloc((size_t)j.cap, sizeof *j.names, err);
    j.bufs = rq_calloc((size_t)j.cap, sizeof *j.bufs, err);
    rq_status s = j.items && j.names && j.bufs ? RQ_OK : RQ_ERR_NOMEM;
    if (s == RQ_OK) s = rq_write_dir_atomic(dir, hf_files, N_HF_FILES, fill_hf, &j, err);
    for (int i = 0; j.bufs && i < j.cap; i++) free(j.bufs[i]);
    free(j.items);
    free(j.names);
    free(j.bufs);
    RQ_TRY(s);
    rep.file_bytes = files_bytes(dir, hf_files, N_HF_FILES);
    if (rep_out) *rep_out = rep;
    return RQ_OK;
}
