/* Model loading: which reader a path needs (a Hugging Face directory, a
 * rilq-q2 artifact, a GGUF file or a llama2.c .bin), and which tokenizer goes
 * with it. It sits above both src/io (the readers, which build models through
 * src/model) and src/model, so neither of those calls up into the other. */
#define _POSIX_C_SOURCE 200809L /* strndup */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../io/artifact.h"
#include "load.h"

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* An explicit tokenizer for an HF or GGUF model: tokenizer.json or a llama2.c tokenizer.bin. */
static rq_status replace_tokenizer(rq_checkpoint *ck, const char *tokenizer_path, rq_err *err) {
    rq_tokenizer *tok = NULL;
    if (ends_with(tokenizer_path, ".json")) RQ_TRY(rq_tokenizer_load_hf_json(tokenizer_path, &tok, err));
    else RQ_TRY(rq_tokenizer_load_llama2c(tokenizer_path, ck->cfg.vocab_size, &tok, err));
    if (ck->tok) rq_tokenizer_free(ck->tok);
    ck->tok = tok;
    /* a path too long for the field is left out: the artifact writer then says
       it cannot find the tokenizer's source, rather than copying a wrong file */
    size_t n = strlen(tokenizer_path);
    if (n >= sizeof ck->tokenizer_path) n = 0;
    memcpy(ck->tokenizer_path, tokenizer_path, n);
    ck->tokenizer_path[n] = 0;
    return RQ_OK;
}

/* Which reader path needs: "rilq-q2" (an artifact directory), "hf", "gguf" or "llama2c". */
static rq_status detect_format(const char *path, const char **format, rq_err *err) {
    if (!path || !*path) return RQ_FAIL(err, RQ_ERR_ARG, "no model path given");
    if (rq_dir_exists(path)) {
        char *cfg = rq_path_join_alloc(path, "config.json", err);
        if (!cfg) return RQ_ERR_NOMEM;
        const bool has_cfg = rq_file_exists(cfg);
        free(cfg);
        if (!has_cfg)
            return RQ_FAIL(err, RQ_ERR_IO, "%s: a model directory needs a config.json (Hugging Face layout)", path);
        *format = rq_artifact_is_q2(path) ? "rilq-q2" : "hf";
        return RQ_OK;
    }
    struct stat st;
    if (stat(path, &st) != 0) return RQ_FAIL(err, RQ_ERR_IO, "%s: cannot open model file: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) /* a FIFO would block the open below forever */
        return RQ_FAIL(err, RQ_ERR_IO, "%s: not a regular file (a FIFO, device or socket), not a model", path);
    FILE *f = fopen(path, "rb");
    if (!f) return RQ_FAIL(err, RQ_ERR_IO, "%s: cannot open model file", path);
    char magic[4] = {0};
    size_t got = fread(magic, 1, 4, f);
    fclose(f);
    /* a .gguf name or the GGUF magic: the GGUF loader reports what is wrong (empty, bad magic) */
    *format = (got == 4 && memcmp(magic, "GGUF", 4) == 0) || ends_with(path, ".gguf") ? "gguf" : "llama2c";
    return RQ_OK;
}

static rq_status open_checkpoint(const char *path, const char *format, const char *tokenizer_path, rq_checkpoint *ck,
                                 rq_err *err) {
    if (!strcmp(format, "hf")) RQ_TRY(rq_checkpoint_open_hf(path, ck, err));
    else if (!strcmp(format, "gguf")) RQ_TRY(rq_checkpoint_open_gguf(path, ck, err));
    else return rq_checkpoint_open_llama2c(path, tokenizer_path, ck, err); /* reads tokenizer_path itself */
    rq_status s = tokenizer_path ? replace_tokenizer(ck, tokenizer_path, err) : RQ_OK;
    if (s != RQ_OK) rq_checkpoint_close(ck);
    return s;
}

rq_status rq_model_open_checkpoint(const char *path, const char *tokenizer_path, rq_checkpoint *ck, rq_err *err) {
    memset(ck, 0, sizeof *ck);
    const char *format = NULL;
    RQ_TRY(detect_format(path, &format, err));
    if (!strcmp(format, "rilq-q2"))
        return RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "%s: a rilq-q2 artifact, not a full-precision checkpoint", path);
    return open_checkpoint(path, format, tokenizer_path, ck, err);
}

rq_status rq_model_load(const char *path, const char *tokenizer_path, rq_model **out, rq_err *err) {
    *out = NULL;
    const char *format = NULL;
    RQ_TRY(detect_format(path, &format, err));
    rq_model *m = NULL;
    if (!strcmp(format, "rilq-q2")) {
        RQ_TRY(rq_artifact_load(path, &m, err)); /* sets m->tokenizer_path itself */
        if (tokenizer_path) {
            rq_checkpoint tk = {.cfg = m->cfg};
            rq_status s = replace_tokenizer(&tk, tokenizer_path, err);
            if (s != RQ_OK) {
                rq_model_free(m);
                return s;
            }
            if (m->tok) rq_tokenizer_free(m->tok);
            m->tok = tk.tok;
            memcpy(m->tokenizer_path, tk.tokenizer_path, sizeof m->tokenizer_path);
        }
    } else {
        rq_checkpoint ck;
        RQ_TRY(open_checkpoint(path, format, tokenizer_path, &ck, err));
        rq_status s = rq_checkpoint_build(&ck, &m, err);
        if (s == RQ_OK) memcpy(m->tokenizer_path, ck.tokenizer_path, sizeof m->tokenizer_path);
        rq_checkpoint_close(&ck);
        if (s != RQ_OK) return s;
    }
    snprintf(m->format, sizeof m->format, "%s", format);
    snprintf(m->path, sizeof m->path, "%s", path);
    *out = m;
    return RQ_OK;
}
