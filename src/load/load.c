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
#include "../io/gguf.h"
#include "../io/hf.h"
#include "../io/llama2c.h"
#include "../model/model.h"

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* An explicit tokenizer for an HF or GGUF model: tokenizer.json or a llama2.c tokenizer.bin. */
static rq_status replace_tokenizer(rq_model *m, const char *tokenizer_path, rq_err *err) {
    rq_tokenizer *tok = NULL;
    if (ends_with(tokenizer_path, ".json")) RQ_TRY(rq_tokenizer_load_hf_json(tokenizer_path, &tok, err));
    else RQ_TRY(rq_tokenizer_load_llama2c(tokenizer_path, m->cfg.vocab_size, &tok, err));
    if (m->tok) rq_tokenizer_free(m->tok);
    m->tok = tok;
    return RQ_OK;
}

/* A path too long for the field is left out: the artifact writer then says
 * it cannot find the tokenizer's source, rather than copying a wrong file. */
static void set_tokenizer_path(rq_model *m, const char *p) {
    size_t n = strlen(p);
    if (n >= sizeof m->tokenizer_path) n = 0;
    memcpy(m->tokenizer_path, p, n);
    m->tokenizer_path[n] = 0;
}

/* Which tokenizer.bin rq_llama2c_load read: the explicit one, else its rule
 * (tokenizer.bin, then tok<vocab>.bin beside the model). */
static void note_llama2c_tokenizer(rq_model *m, const char *model_path, const char *explicit_path) {
    if (explicit_path) {
        set_tokenizer_path(m, explicit_path);
        return;
    }
    char name[64];
    const char *slash = strrchr(model_path, '/');
    char *dir = !slash ? rq_strdup(".", NULL) : slash == model_path ? rq_strdup("/", NULL)
                                                                    : strndup(model_path, (size_t)(slash - model_path));
    if (!dir) return;
    snprintf(name, sizeof name, "tok%d.bin", m->cfg.vocab_size);
    const char *const candidates[] = {"tokenizer.bin", name};
    for (int i = 0; i < 2; i++) {
        char *buf = rq_path_join_alloc(dir, candidates[i], NULL);
        bool found = buf && rq_file_exists(buf);
        if (found) set_tokenizer_path(m, buf);
        free(buf);
        if (found) break;
    }
    free(dir);
}

rq_status rq_model_load(const char *path, const char *tokenizer_path, rq_model **out, rq_err *err) {
    *out = NULL;
    if (!path || !*path) return RQ_FAIL(err, RQ_ERR_ARG, "no model path given");
    rq_model *m = NULL;
    const char *format;
    if (rq_dir_exists(path)) {
        char *cfg = rq_path_join_alloc(path, "config.json", err);
        if (!cfg) return RQ_ERR_NOMEM;
        const bool has_cfg = rq_file_exists(cfg);
        free(cfg);
        if (!has_cfg)
            return RQ_FAIL(err, RQ_ERR_IO, "%s: a model directory needs a config.json (Hugging Face layout)", path);
        if (rq_artifact_is_q2(path)) {
            format = "rilq-q2";
            RQ_TRY(rq_artifact_load(path, &m, err)); /* sets m->tokenizer_path itself */
        } else {
            format = "hf";
            RQ_TRY(rq_hf_load(path, &m, err));
            char *tok = m->tok ? rq_path_join_alloc(path, "tokenizer.json", NULL) : NULL;
            if (tok) set_tokenizer_path(m, tok);
            free(tok);
        }
    } else {
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
        if ((got == 4 && memcmp(magic, "GGUF", 4) == 0) || ends_with(path, ".gguf")) {
            format = "gguf";
            RQ_TRY(rq_gguf_load(path, &m, err));
            if (m->tok) set_tokenizer_path(m, path); /* the tokens are in its metadata */
        } else {
            format = "llama2c";
            RQ_TRY(rq_llama2c_load(path, tokenizer_path, &m, err));
            if (m->tok) note_llama2c_tokenizer(m, path, tokenizer_path);
            tokenizer_path = NULL; /* already used */
        }
    }
    if (tokenizer_path) {
        rq_status s = replace_tokenizer(m, tokenizer_path, err);
        if (s != RQ_OK) {
            rq_model_free(m);
            return s;
        }
        set_tokenizer_path(m, tokenizer_path);
    }
    snprintf(m->format, sizeof m->format, "%s", format);
    snprintf(m->path, sizeof m->path, "%s", path);
    *out = m;
    return RQ_OK;
}
