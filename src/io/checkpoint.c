/* Full-precision checkpoints opened for reading (see checkpoint.h). */
#include <stdio.h>
#include <stdlib.h>

#include "checkpoint.h"
#include "hf.h"

static void note_tokenizer(rq_checkpoint *ck, const char *path) {
    size_t n = strlen(path);
    if (n >= sizeof ck->tokenizer_path) n = 0; /* too long to note: an artifact then finds no tokenizer to copy */
    memcpy(ck->tokenizer_path, path, n);
    ck->tokenizer_path[n] = 0;
}

/* the table's config, validated, on ck */
static rq_status set_config(rq_checkpoint *ck, const rq_config *cfg, rq_err *err) {
    return rq_model_table_config(cfg, ck->table, &ck->cfg, err);
}

static rq_status open_hf(const char *dir, const char *cfg_path, const char *gen_path, const char *tok_path,
                         rq_checkpoint *ck, rq_err *err) {
    rq_config cfg;
    RQ_TRY(rq_hf_read_config(cfg_path, &cfg, err));
    if (rq_file_exists(gen_path)) RQ_TRY(rq_hf_read_generation_config(gen_path, &cfg, err));
    RQ_TRY(rq_config_validate(&cfg, cfg_path, err));
    ck->kind = RQ_CKPT_HF;
    RQ_TRY(rq_st_checkpoint_open_dir(dir, &ck->st, err));
    ck->table = &ck->st.table;
    RQ_TRY(set_config(ck, &cfg, err));
    if (rq_file_exists(tok_path)) {
        RQ_TRY(rq_tokenizer_load_hf_json(tok_path, &ck->tok, err));
        note_tokenizer(ck, tok_path);
    }
    return RQ_OK;
}

rq_status rq_checkpoint_open_hf(const char *dir, rq_checkpoint *ck, rq_err *err) {
    memset(ck, 0, sizeof *ck);
    char *cfg_path = rq_path_join_alloc(dir, "config.json", err);
    char *gen_path = cfg_path ? rq_path_join_alloc(dir, "generation_config.json", err) : NULL;
    char *tok_path = gen_path ? rq_path_join_alloc(dir, "tokenizer.json", err) : NULL;
    rq_status s = tok_path ? open_hf(dir, cfg_path, gen_path, tok_path, ck, err) : RQ_ERR_NOMEM;
    free(cfg_path);
    free(gen_path);
    free(tok_path);
    if (s != RQ_OK) rq_checkpoint_close(ck);
    return s;
}

rq_status rq_checkpoint_open_gguf(const char *path, rq_checkpoint *ck, rq_err *err) {
    memset(ck, 0, sizeof *ck);
    RQ_TRY(rq_gguf_open(path, &ck->gguf, err));
    ck->kind = RQ_CKPT_GGUF;
    ck->table = &ck->gguf_table;
    rq_config cfg;
    rq_status s = rq_gguf_llama_config(&ck->gguf, &cfg, err);
    if (s == RQ_OK) s = rq_config_validate(&cfg, path, err);
    if (s == RQ_OK) s = rq_gguf_llama_tensors(&ck->gguf, &cfg, &ck->gguf_table, err);
    if (s == RQ_OK) s = set_config(ck, &cfg, err);
    if (s == RQ_OK) s = rq_gguf_tokenizer(&ck->gguf, &ck->tok, err);
    if (s == RQ_OK && ck->tok) note_tokenizer(ck, path); /* the tokens are in its metadata */
    if (s != RQ_OK) rq_checkpoint_close(ck);
    return s;
}

/* tokenizer.bin or tok<vocab>.bin in the model's directory (malloc'd), or
 * NULL in *found when there is neither. */
static rq_status find_tokenizer_beside(const char *model_path, int vocab, char **found, rq_err *err) {
    *found = NULL;
    const char *slash = strrchr(model_path, '/');
    size_t dlen = slash ? (size_t)(slash - model_path) : 0;
    char *dir = malloc(dlen + 2);
    if (!dir) return RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory looking for the tokenizer of %s", model_path);
    memcpy(dir, model_path, dlen);
    dir[dlen] = 0;
    if (!slash) strcpy(dir, ".");
    else if (dlen == 0) strcpy(dir, "/");
    char name[64];
    snprintf(name, sizeof name, "tok%d.bin", vocab);
    const char *const candidates[2] = {"tokenizer.bin", name};
    rq_status s = RQ_OK;
    for (int i = 0; i < 2 && s == RQ_OK && !*found; i++) {
        char *p = rq_path_join_alloc(dir, candidates[i], err);
        if (!p) s = RQ_ERR_NOMEM;
        else if (rq_file_exists(p)) *found = p;
        else free(p);
    }
    free(dir);
    return s;
}

rq_status rq_checkpoint_open_llama2c(const char *path, const char *tokenizer_path, rq_checkpoint *ck, rq_err *err) {
    memset(ck, 0, sizeof *ck);
    RQ_TRY(rq_llama2c_open(path, &ck->l2c, err));
    ck->kind = RQ_CKPT_LLAMA2C;
    ck->table = &ck->l2c.table;
    rq_status s = rq_config_validate(&ck->l2c.cfg, path, err);
    if (s == RQ_OK) s = set_config(ck, &ck->l2c.cfg, err);
    char *found = NULL;
    if (s == RQ_OK && !tokenizer_path) s = find_tokenizer_beside(path, ck->cfg.vocab_size, &found, err);
    const char *tok = tokenizer_path ? tokenizer_path : found;
    if (s == RQ_OK && tok) s = rq_tokenizer_load_llama2c(tok, ck->cfg.vocab_size, &ck->tok, err);
    if (s == RQ_OK && tok) note_tokenizer(ck, tok);
    free(found);
    if (s != RQ_OK) rq_checkpoint_close(ck);
    return s;
}

rq_status rq_checkpoint_build(rq_checkpoint *ck, rq_model **out, rq_err *err) {
    RQ_TRY(rq_model_build(&ck->cfg, ck->table, out, err));
    (*out)->tok = ck->tok;
    ck->tok = NULL;
    return RQ_OK;
}

const char *rq_checkpoint_format(const rq_checkpoint *ck) {
    switch (ck->kind) {
    case RQ_CKPT_HF: return "hf";
    case RQ_CKPT_GGUF: return "gguf";
    case RQ_CKPT_LLAMA2C: return "llama2c";
    }
    return "?";
}

void rq_checkpoint_close(rq_checkpoint *ck) {
    if (ck->tok) rq_tokenizer_free(ck->tok);
    switch (ck->kind) {
    case RQ_CKPT_HF: rq_st_checkpoint_close(&ck->st); break;
    case RQ_CKPT_GGUF:
        rq_tensor_table_free(&ck->gguf_table);
        rq_gguf_close(&ck->gguf);
        break;
    case RQ_CKPT_LLAMA2C: rq_llama2c_close(&ck->l2c); break;
    }
    memset(ck, 0, sizeof *ck);
}
