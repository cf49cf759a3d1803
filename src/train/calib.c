/* The RILQ stage library code (see calib.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <zstd.h>

#include "../data/jsonl.h"
#include "../data/pyrandom.h"
#include "../quant/q2.h"
#include "../core/tensors.h"
#include "../model/bind.h"
#include "../quant/svd.h"
#include "calib.h"

#define CACHE_MAGIC "RQTEACH1"
#define CACHE_END_MAGIC "RQTEND01"
#define CACHE_VERSION 2u /* 2: every frame carries zstd's content checksum */

void rq_calib_default_opts(rq_calib_opts *o) {
    memset(o, 0, sizeof *o);
    o->source = RQ_CALIB_C4;
    o->doc_begin = 0;
    o->doc_end = 1000;
    o->text_lines = 1000;
    o->seq_len = 512;
    o->n_windows = 320;
    o->n_val = 64;
    o->seed = 42;
}

/* ---- the sampling ------------------------------------------------------------------ */

rq_status rq_calib_draw(int64_t n_docs, rq_calib_doc_len_fn doc_len, void *user, int T, int n, uint64_t seed,
                        int64_t *doc_out, int64_t *start_out, rq_err *err) {
    if (n_docs <= 0 || T <= 0 || n < 0) return RQ_FAIL(err, RQ_ERR_ARG, "calibration: %lld documents, window %d, %d windows",
                                                      (long long)n_docs, T, n);
    rq_pyrandom rng;
    rq_pyrandom_seed(&rng, seed);
    /* Which documents are known too short: the reference would loop forever when
     * none is long enough; we stop once every document has been seen short. */
    uint8_t *seen_short = rq_calloc((size_t)n_docs, 1, err);
    if (!seen_short) return RQ_ERR_NOMEM;
    int64_t n_short = 0;
    rq_status st = RQ_OK;
    for (int k = 0; k < n && st == RQ_OK; k++) {
        int64_t d = 0;
        int len = 0;
        for (;;) {
            st = rq_pyrandom_randint(&rng, 0, n_docs - 1, &d, err);
            if (st == RQ_OK) st = doc_len(user, d, &len, err);
            if (st != RQ_OK) break;
            if (len > T) break;
            if (!seen_short[d]) {
                seen_short[d] = 1;
                if (++n_short == n_docs) {
                    st = RQ_FAIL(err, RQ_ERR_ARG,
                                 "calibration: none of the %lld documents has more than %d tokens; use a shorter "
                                 "--seq-len or more documents",
                                 (long long)n_docs, T);
                    break;
                }
            }
        }
        if (st != RQ_OK) break;
        int64_t i = 0;
        st = rq_pyrandom_randint(&rng, 0, len - T - 1, &i, err);
        doc_out[k] = d;
        start_out[k] = i;
    }
    free(seen_short);
    return st;
}

rq_status rq_calib_order(int n, int n_val, uint64_t seed, int *order, rq_err *err) {
    if (n_val < 0 || n_val >= n)
        return RQ_FAIL(err, RQ_ERR_ARG, "calibration: %d held-out windows of %d leave none to train on", n_val, n);
    for (int k = 0; k < n_val; k++) order[k] = n - n_val + k;
    for (int k = 0; k < n - n_val; k++) order[n_val + k] = k;
    rq_pyrandom rng;
    rq_pyrandom_seed(&rng, seed);
    RQ_TRY(rq_pyrandom_shuffle(&rng, order, (size_t)n_val, sizeof(int), err));
    rq_pyrandom_seed(&rng, seed);
    return rq_pyrandom_shuffle(&rng, order + n_val, (size_t)(n - n_val), sizeof(int), err);
}

/* ---- the windows ------------------------------------------------------------------- */

typedef struct doc_pool {
    const rq_tokenizer *tok;
    char **texts;
    int **ids; /* tokenized lazily: only drawn documents are tokenized, as the reference does */
    int *lens;
    int64_t n;
} doc_pool;

static rq_status pool_len(void *user, int64_t d, int *len, rq_err *err) {
    doc_pool *p = user;
    if (!p->ids[d]) {
        int n = 0;
        RQ_TRY(rq_tokenizer_encode(p->tok, p->texts[d], strlen(p->texts[d]), RQ_BOS_DEFAULT, &p->ids[d], &n, err));
        p->lens[d] = n;
    }
    *len = p->lens[d];
    return RQ_OK;
}

static void pool_free(doc_pool *p) {
    for (int64_t d = 0; d < p->n; d++) {
        if (p->texts) free(p->texts[d]);
        if (p->ids) free(p->ids[d]);
    }
    free(p->texts);
    free(p->ids);
    free(p->lens);
    memset(p, 0, sizeof *p);
}

static rq_status pool_add(doc_pool *p, int64_t *cap, const char *text, rq_err *err) {
    if (p->n == *cap) {
        *cap = *cap ? 2 * *cap : 256;
        char **nt = realloc(p->texts, sizeof *nt * (size_t)*cap);
        if (!nt) return RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory reading calibration documents");
        p->texts = nt;
    }
    p->texts[p->n] = rq_strdup(text, err);
    if (!p->texts[p->n]) return RQ_ERR_NOMEM;
    p->n++;
    return RQ_OK;
}

static rq_status read_c4(const rq_calib_opts *o, doc_pool *p, rq_err *err) {
    rq_jsonl_reader jr;
    RQ_TRY(rq_jsonl_open(&jr, o->path, RQ_JSONL_STOP_ON_BAD_LINE, err));
    int64_t cap = 0;
    int line = 0;
    rq_status st = RQ_OK;
    for (;;) {
        cJSON *doc = NULL;
        st = rq_jsonl_next(&jr, &doc, err);
        if (st != RQ_OK || !doc) break;
        bool in_range = line >= o->doc_begin && (o->doc_end <= 0 || line < o->doc_end);
        line++;
        if (in_range) {
            const cJSON *t = cJSON_GetObjectItemCaseSensitive(doc, "text");
            if (!cJSON_IsString(t))
                st = RQ_FAIL(err, RQ_ERR_FORMAT, "%s:%zu: field \"text\" is missing or not a string", o->path, jr.line_no);
            else st = pool_add(p, &cap, t->valuestring, err);
        }
        cJSON_Delete(doc);
        if (st != RQ_OK) break;
    }
    rq_jsonl_close(&jr);
    if (st == RQ_OK && p->n == 0)
        st = RQ_FAIL(err, RQ_ERR_ARG, "%s: no documents in the range %d:%d (the file has %d)", o->path, o->doc_begin,
                     o->doc_end, line);
    return st;
}

/* The reference's WikiText-2 text: the first text_lines lines, empty lines as
 * " \n" (the raw file already writes them so), joined with no separator. */
static rq_status read_text(const rq_calib_opts *o, char **text, size_t *len, rq_err *err) {
    char *all = NULL;
    size_t n = 0;
    RQ_TRY(rq_file_read_all(o->path, &all, &n, err));
    size_t end = 0;
    int lines = 0;
    while (end < n && (o->text_lines <= 0 || lines < o->text_lines)) {
        const char *nl = memchr(all + end, '\n', n - end);
        end = nl ? (size_t)(nl - all) + 1 : n;
        lines++;
    }
    *text = all;
    *len = end;
    return RQ_OK;
}

static rq_status text_len(void *user, int64_t d, int *len, rq_err *err) {
    (void)d;
    (void)err;
    *len = *(const int *)user;
    return RQ_OK;
}

rq_status rq_calib_windows_build(const rq_tokenizer *tok, const rq_calib_opts *o, rq_calib_windows *w, rq_err *err) {
    memset(w, 0, sizeof *w);
    if (!tok) return RQ_FAIL(err, RQ_ERR_ARG, "calibration needs a tokenizer");
    if (!o->path) return RQ_FAIL(err, RQ_ERR_ARG, "calibration: no data file");
    const int T = o->seq_len, n = o->n_windows;
    if (T < 2 || n < 2) return RQ_FAIL(err, RQ_ERR_ARG, "calibration: %d windows of %d tokens (need 2 or more of each)", n, T);
    int *order = rq_calloc((size_t)n, sizeof(int), err);
    int64_t *doc = rq_calloc((size_t)n, sizeof(int64_t), err), *start = rq_calloc((size_t)n, sizeof(int64_t), err);
    w->tokens = rq_calloc((size_t)n * T, sizeof(int), err);
    w->doc = rq_calloc((size_t)n, sizeof(int64_t), err);
    w->start = rq_calloc((size_t)n, sizeof(int64_t), err);
    rq_status st = (order && doc && start && w->tokens && w->doc && w->start) ? RQ_OK : RQ_ERR_NOMEM;
    if (st == RQ_OK) st = rq_calib_order(n, o->n_val, o->seed, order, err);
    doc_pool pool = {.tok = tok};
    char *text = NULL;
    int *ids = NULL, n_ids = 0;
    if (st == RQ_OK && o->source == RQ_CALIB_C4) {
        st = read_c4(o, &pool, err);
        if (st == RQ_OK) {
            pool.ids = rq_calloc((size_t)pool.n, sizeof *pool.ids, err);
            pool.lens = rq_calloc((size_t)pool.n, sizeof *pool.lens, err);
            if (!pool.ids || !pool.lens) st = RQ_ERR_NOMEM;
        }
        if (st == RQ_OK) st = rq_calib_draw(pool.n, pool_len, &pool, T, n, o->seed, doc, start, err);
        for (int k = 0; k < n && st == RQ_OK; k++) {
            int src = order[k];
            memcpy(w->tokens + (size_t)k * T, pool.ids[doc[src]] + start[src], sizeof(int) * (size_t)T);
            w->doc[k] = doc[src] + o->doc_begin;
            w->start[k] = start[src];
        }
    } else if (st == RQ_OK) {
        size_t len = 0;
        st = read_text(o, &text, &len, err);
        if (st == RQ_OK) st = rq_tokenizer_encode(tok, text, len, RQ_BOS_DEFAULT, &ids, &n_ids, err);
        if (st == RQ_OK) st = rq_calib_draw(1, text_len, &n_ids, T, n, o->seed, doc, start, err);
        if (st != RQ_OK && n_ids <= T)
            rq_err_prefix(err, "%s (first %d lines, %d tokens): ", o->path, o->text_lines, n_ids);
        for (int k = 0; k < n && st == RQ_OK; k++) {
            int src = order[k];
            memcpy(w->tokens + (size_t)k * T, ids + start[src], sizeof(int) * (size_t)T);
            w->doc[k] = 0;
            w->start[k] = start[src];
        }
    }
    pool_free(&pool);
    free(text);
    free(ids);
    free(order);
    free(doc);
    free(start);
    if (st != RQ_OK) {
        rq_calib_windows_free(w);
        return st;
    }
    w->T = T;
    w->n = n;
    w->n_val = o->n_val;
    return RQ_OK;
}

void rq_calib_windows_free(rq_calib_windows *w) {
    free(w->tokens);
    free(w->doc);
    free(w->start);
    memset(w, 0, sizeof *w);
}

/* ---- the teacher cache ------------------------------------------------------------------ */

static uint64_t fnv1a(const char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)s[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static void file_identity(const char *path, long long *size, long long *mtime) {
    struct stat sb;
    if (stat(path, &sb) == 0) {
        *size = (long long)sb.st_size;
        *mtime = (long long)sb.st_mtime;
    } else {
        *size = *mtime = -1;
    }
}

rq_status rq_teacher_key(const char *model_path, const rq_calib_opts *o, uint64_t *key, char *key_text,
                         size_t key_cap, rq_err *err) {
    long long ms, mt, ds, dt;
    file_identity(model_path, &ms, &mt);
    file_identity(o->path, &ds, &dt);
    if (ms < 0) return RQ_FAIL(err, RQ_ERR_IO, "%s: cannot stat the teacher model", model_path);
    if (ds < 0) return RQ_FAIL(err, RQ_ERR_IO, "%s: cannot stat the calibration data", o->path);
    int k = snprintf(key_text, key_cap,
                     "teacher=final_hidden model=%s size=%lld mtime=%lld data=%s size=%lld mtime=%lld source=%s "
                     "docs=%d:%d lines=%d T=%d n=%d val=%d seed=%llu",
                     model_path, ms, mt, o->path, ds, dt, o->source == RQ_CALIB_C4 ? "c4" : "text", o->doc_begin,
                     o->doc_end, o->text_lines, o->seq_len, o->n_windows, o->n_val, (unsigned long long)o->seed);
    if (k < 0 || (size_t)k >= key_cap) return RQ_FAIL(err, RQ_ERR_ARG, "teacher cache key too long (paths?)");
    *key = fnv1a(key_text, (size_t)k);
    return RQ_OK;
}

static void put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* ---- writing the cache ---------------------------------------------------------------- */

/* The file being written: header, then one frame per window in window order, then the index. */
typedef struct cache_writer {
    const char *path;
    int n, T, dim;
    size_t raw_bytes, zcap;
    ZSTD_CCtx *cctx;
    uint8_t *zbuf, *raw;
    uint64_t *offsets, pos;
    rq_atomic_file af;
    bool open;
} cache_writer;

static rq_status writer_open(cache_writer *cw, const char *path, int n, int T, int dim, uint64_t key,
                             const char *key_text, rq_err *err) {
    memset(cw, 0, sizeof *cw);
    cw->path = path, cw->n = n, cw->T = T, cw->dim = dim;
    cw->raw_bytes = (size_t)T * dim * sizeof(float);
    cw->zcap = ZSTD_compressBound(cw->raw_bytes);
    cw->cctx = ZSTD_createCCtx();
    cw->zbuf = malloc(cw->zcap), cw->raw = malloc(cw->raw_bytes);
    cw->offsets = calloc((size_t)n + 1, sizeof(uint64_t));
    if (!cw->cctx || !cw->zbuf || !cw->raw || !cw->offsets)
        return RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory writing %s", path);
    RQ_TRY(rq_atomic_open(&cw->af, path, err));
    cw->open = true;
    const size_t key_len = strlen(key_text);
    uint8_t hdr[32];
    memcpy(hdr, CACHE_MAGIC, 8);
    put_u32(hdr + 8, CACHE_VERSION);
    put_u32(hdr + 12, (uint32_t)dim);
    put_u32(hdr + 16, (uint32_t)T);
    put_u32(hdr + 20, (uint32_t)n);
    put_u64(hdr + 24, key);
    uint8_t kl[4];
    put_u32(kl, (uint32_t)key_len);
    RQ_TRY(rq_atomic_write(&cw->af, hdr, sizeof hdr, err));
    RQ_TRY(rq_atomic_write(&cw->af, kl, 4, err));
    RQ_TRY(rq_atomic_write(&cw->af, key_text, key_len, err));
    cw->pos = sizeof hdr + 4 + key_len;
    ZSTD_CCtx_setParameter(cw->cctx, ZSTD_c_compressionLevel, 3);
    ZSTD_CCtx_setParameter(cw->cctx, ZSTD_c_checksumFlag, 1); /* verified on every read */
    return RQ_OK;
}

/* Window k's final hidden states h [T][dim] (host), the next frame. */
static rq_status writer_frame(cache_writer *cw, int k, const float *h, rq_err *err) {
    const size_t count = (size_t)cw->T * cw->dim;
    for (size_t i = 0; i < count; i++)
        if (!isfinite(h[i]))
            return RQ_FAIL(err, RQ_ERR_NUMERIC, "teacher: the final hidden states of window %d are not finite (%g): "
                           "the teacher model holds NaN/Inf weights; nothing cached", k, h[i]);
    /* little-endian fp32 on every host: the file is portable */
    for (size_t i = 0; i < count; i++) put_u32(cw->raw + 4 * i, rq_bits_from_f32(h[i]));
    /* one frame per window through the streaming API, flushed at the end */
    ZSTD_CCtx_reset(cw->cctx, ZSTD_reset_session_only);
    ZSTD_inBuffer in = {cw->raw, cw->raw_bytes, 0};
    ZSTD_outBuffer outb = {cw->zbuf, cw->zcap, 0};
    size_t left;
    do {
        left = ZSTD_compressStream2(cw->cctx, &outb, &in, ZSTD_e_end);
        if (ZSTD_isError(left)) return RQ_FAIL(err, RQ_ERR_INTERNAL, "%s: zstd: %s", cw->path, ZSTD_getErrorName(left));
    } while (left != 0);
    cw->offsets[k] = cw->pos;
    RQ_TRY(rq_atomic_write(&cw->af, cw->zbuf, outb.pos, err));
    cw->pos += outb.pos;
    return RQ_OK;
}

/* st == RQ_OK: the index and trailer, then the rename; otherwise the temporary file goes. */
static rq_status writer_finish(cache_writer *cw, rq_status st, rq_err *err) {
    if (st == RQ_OK) {
        cw->offsets[cw->n] = cw->pos;
        const size_t idx_bytes = 8 * ((size_t)cw->n + 1) + 16;
        uint8_t *idx = malloc(idx_bytes);
        if (!idx) st = RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory writing %s", cw->path);
        else {
            for (int k = 0; k <= cw->n; k++) put_u64(idx + 8 * (size_t)k, cw->offsets[k]);
            put_u64(idx + 8 * ((size_t)cw->n + 1), cw->pos); /* the index starts where the frames end */
            memcpy(idx + 8 * ((size_t)cw->n + 1) + 8, CACHE_END_MAGIC, 8);
            st = rq_atomic_write(&cw->af, idx, idx_bytes, err);
            free(idx);
        }
    }
    if (cw->open) {
        if (st == RQ_OK) st = rq_atomic_commit(&cw->af, err);
        else rq_atomic_abort(&cw->af);
    }
    ZSTD_freeCCtx(cw->cctx);
    free(cw->zbuf);
    free(cw->raw);
    free(cw->offsets);
    return st;
}

/* tokens: window-tokens through the whole teacher so far */
static void progress_update(rq_progress *prog, const cache_writer *cw, int done, double tokens, double t0,
                            const char *unit) {
    char extra[96];
    double el = rq_now_seconds() - t0;
    snprintf(extra, sizeof extra, "%.0f tok/s | %.1f MiB written", el > 0 ? tokens / el : 0.0, cw->pos / 1048576.0);
    rq_progress_update(prog, done, unit, extra);
}

rq_status rq_teacher_cache_write(const rq_model *m, rq_backend *be, const rq_calib_windows *w, uint64_t key,
                                 const char *key_text, const char *path, bool quiet, rq_err *err) {
    const int T = w->T, dim = m->cfg.dim;
    rq_forward_opts fo = {.max_batch = 1, .max_seq = T};
    rq_forward_state *fs = NULL;
    RQ_TRY(rq_forward_create(m, be, &fo, &fs, err));
    float *h = malloc(sizeof(float) * (size_t)T * dim); /* the window's hidden states, downloaded from the backend */
    cache_writer cw;
    rq_status st = h ? writer_open(&cw, path, w->n, T, dim, key, key_text, err)
                     : RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory writing %s", path);
    rq_progress prog;
    rq_progress_init(&prog, "teacher", w->n);
    double t0 = rq_now_seconds();
    for (int k = 0; k < w->n && st == RQ_OK; k++) {
        st = rq_forward_run(fs, w->tokens + (size_t)k * T, 1, T, 0, err);
        if (st == RQ_OK) st = be->download(be, h, rq_forward_hidden(fs), sizeof(float) * (size_t)T * dim, err);
        if (st == RQ_OK) st = writer_frame(&cw, k, h, err);
        if (st == RQ_OK && !quiet) progress_update(&prog, &cw, k + 1, (k + 1.0) * T, t0, "windows");
    }
    if (h) st = writer_finish(&cw, st, err);
    if (st == RQ_OK && !quiet) rq_progress_finish(&prog, w->n, "windows");
    free(h);
    rq_forward_free(fs);
    return st;
}

/* ---- the layer-streamed teacher pass ------------------------------------------------------ */

void rq_teacher_stream_size_of(const rq_config *c, int n, int T, bool spill, rq_teacher_stream_size *out) {
    const uint64_t window = (uint64_t)T * c->dim * sizeof(float);
    *out = (rq_teacher_stream_size){0};
    out->streams = spill ? 0 : (uint64_t)n * window;
    out->window = spill ? window : 0; /* the host copy a window passes through on its way to the file */
    out->embed = (uint64_t)c->vocab_size * c->dim * sizeof(float);
    out->layer = (uint64_t)rq_layer_floats(c) * sizeof(float);
    out->norm = (uint64_t)c->dim * sizeof(float);
    /* the frames: the window's hidden states, their little-endian copy, zstd's output, the index */
    out->frame = 2 * window + ZSTD_compressBound((size_t)window) + 8 * ((uint64_t)n + 1);
    /* the embedding table is freed before the first layer is read */
    const uint64_t step = out->embed > out->layer + out->frame ? out->embed : out->layer + out->frame;
    out->total = out->streams + out->window + out->norm + step;
}

/* Window k's residual stream: in memory, or in the scratch file (through a host window). */
typedef struct stream_store {
    float *mem;            /* [n][T][dim], or NULL when spilled */
    rq_scratch_file file;  /* spill */
    float *window;         /* spill: one window on the host */
    size_t window_floats;
} stream_store;

static rq_status store_to_device(stream_store *ss, rq_backend *be, int k, float *dev, rq_err *err) {
    const size_t bytes = sizeof(float) * ss->window_floats;
    if (ss->mem) return be->upload(be, dev, ss->mem + (size_t)k * ss->window_floats, bytes, err);
    RQ_TRY(rq_scratch_pread(&ss->file, (uint64_t)k * bytes, ss->window, bytes, err));
    return be->upload(be, dev, ss->window, bytes, err);
}

static rq_status store_from_device(stream_store *ss, rq_backend *be, int k, const float *dev, rq_err *err) {
    const size_t bytes = sizeof(float) * ss->window_floats;
    if (ss->mem) return be->download(be, ss->mem + (size_t)k * ss->window_floats, dev, bytes, err);
    RQ_TRY(be->download(be, ss->window, dev, bytes, err));
    return rq_scratch_pwrite(&ss->file, (uint64_t)k * bytes, ss->window, bytes, err);
}

/* A host buffer of the pass, counted for the report. */
static void *pass_alloc(uint64_t bytes, uint64_t *cur, uint64_t *peak) {
    void *p = rq_alloc_aligned((size_t)bytes, NULL);
    if (p) {
        *cur += bytes;
        if (*cur > *peak) *peak = *cur;
    }
    return p;
}

static void pass_free(void *p, uint64_t bytes, uint64_t *cur) {
    if (!p) return;
    free(p);
    *cur -= bytes;
}

rq_status rq_teacher_cache_write_streamed(const rq_config *cfg, const struct rq_tensor_table *tab, rq_backend *be,
                                          const rq_calib_windows *w, uint64_t key, const char *key_text,
                                          const char *path, bool spill, bool quiet, uint64_t *allocated,
                                          rq_err *err) {
    const int T = w->T, dim = cfg->dim, n = w->n, L = cfg->n_layers;
    const size_t window_floats = (size_t)T * dim;
    const uint64_t embed_bytes = (uint64_t)cfg->vocab_size * dim * sizeof(float);
    const uint64_t layer_bytes = (uint64_t)rq_layer_floats(cfg) * sizeof(float);
    uint64_t cur = 0, peak = 0;
    /* a one-layer model whose layer is the one loaded now: run_layer computes the same thing
       for layer 0 of it as for layer l of the whole model (no KV cache, no adapters) */
    rq_layer layer;
    memset(&layer, 0, sizeof layer);
    rq_model shell;
    memset(&shell, 0, sizeof shell);
    shell.cfg = *cfg;
    shell.cfg.n_layers = 1;
    shell.layers = &layer;
    shell.lm_head = (rq_linear){.out = cfg->vocab_size, .in = dim}; /* never run: the cache holds hidden states */
    stream_store ss = {.file = {.fd = -1}, .window_floats = window_floats};
    float *embed = NULL, *storage = NULL, *norm = NULL, *h = NULL;
    rq_forward_state *fs = NULL;
    cache_writer cw;
    bool writing = false;
    rq_status st = RQ_OK;
    if (spill) {
        st = rq_scratch_open(&ss.file, path, err);
        if (st == RQ_OK && !(ss.window = pass_alloc(sizeof(float) * window_floats, &cur, &peak)))
            st = RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory for a teacher window");
    } else if (!(ss.mem = pass_alloc(sizeof(float) * (uint64_t)n * window_floats, &cur, &peak))) {
        st = RQ_FAIL(err, RQ_ERR_NOMEM, "teacher: out of memory for the residual streams of %d windows of %d x %d "
                     "(%.1f MiB)", n, T, dim, sizeof(float) * (double)n * window_floats / 1048576.0);
    }
    if (st == RQ_OK) {
        norm = pass_alloc(sizeof(float) * (uint64_t)dim, &cur, &peak);
        embed = pass_alloc(embed_bytes, &cur, &peak);
        if (!norm || !embed) st = RQ_FAIL(err, RQ_ERR_NOMEM, "teacher: out of memory for the embedding table");
    }
    if (st == RQ_OK) st = rq_model_build_tensor(tab, "model.norm.weight", dim, 0, norm, err);
    if (st == RQ_OK) st = rq_model_build_tensor(tab, "model.embed_tokens.weight", cfg->vocab_size, dim, embed, err);
    shell.tok_embed = embed, shell.final_norm = norm;
    rq_forward_opts fo = {.max_batch = 1, .max_seq = T};
    if (st == RQ_OK) st = rq_forward_create(&shell, be, &fo, &fs, err);
    rq_progress prog;
    rq_progress_init(&prog, "teacher", L);
    const double t0 = rq_now_seconds();
    /* step 0: every window's embeddings */
    for (int k = 0; k < n && st == RQ_OK; k++) {
        st = rq_forward_embed(fs, w->tokens + (size_t)k * T, 1, T, err);
        if (st == RQ_OK) st = store_from_device(&ss, be, k, rq_forward_stream(fs), err);
    }
    pass_free(embed, embed_bytes, &cur);
    shell.tok_embed = embed = NULL;
    if (st == RQ_OK && !(storage = pass_alloc(layer_bytes, &cur, &peak)))
        st = RQ_FAIL(err, RQ_ERR_NOMEM, "teacher: out of memory for one layer (%.1f MiB)", layer_bytes / 1048576.0);
    if (st == RQ_OK) {
        st = writer_open(&cw, path, n, T, dim, key, key_text, err);
        writing = true;
        /* the writer's buffers: the window's hidden states, its little-endian copy, zstd's output */
        cur += 2 * sizeof(float) * (uint64_t)window_floats + cw.zcap + 8 * ((uint64_t)n + 1);
        if (cur > peak) peak = cur;
        if (st == RQ_OK && !(h = malloc(sizeof(float) * window_floats)))
            st = RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory writing %s", path);
    }
    /* then every window through each layer in turn; after the last, the final norm and the frame */
    for (int l = 0; l < L && st == RQ_OK; l++) {
        st = rq_model_build_layer(cfg, tab, l, storage, &layer, err);
        if (st == RQ_OK) st = rq_model_rebind(&shell, be, err); /* a device holds the new layer's values */
        for (int k = 0; k < n && st == RQ_OK; k++) {
            st = store_to_device(&ss, be, k, rq_forward_stream(fs), err);
            if (st == RQ_OK) st = rq_forward_layers(fs, 0, 1, 1, T, NULL, err);
            if (st != RQ_OK) break;
            if (l + 1 < L) {
                st = store_from_device(&ss, be, k, rq_forward_stream(fs), err);
                continue;
            }
            st = rq_forward_final_norm(fs, 1, T, err);
            if (st == RQ_OK) st = be->download(be, h, rq_forward_hidden(fs), sizeof(float) * window_floats, err);
            if (st == RQ_OK) st = writer_frame(&cw, k, h, err);
        }
        if (st == RQ_OK && !quiet) progress_update(&prog, &cw, l + 1, (double)n * T * (l + 1) / L, t0, "layers");
    }
    if (writing) st = writer_finish(&cw, st, err);
    if (st == RQ_OK && !quiet) rq_progress_finish(&prog, L, "layers");
    if (allocated) *allocated = peak + (fs ? rq_forward_bytes(fs) : 0);
    rq_forward_free(fs);
    free(h);
    pass_free(storage, layer_bytes, &cur);
    pass_free(embed, embed_bytes, &cur);
    free(norm);
    free(ss.mem);
    free(ss.window);
    if (spill) rq_scratch_close(&ss.file);
    return st;
}

struct rq_teacher_cache {
    char *path;
    rq_file_view view;
    int dim, T, n;
    const uint8_t *index; /* n + 1 little-endian u64 */
    ZSTD_DCtx *dctx;
    uint8_t *raw;         /* one window, T * dim * 4 bytes: the only decompressed buffer */
};

rq_status rq_teacher_cache_open(const char *path, uint64_t key, int dim, int T, int n_windows, rq_teacher_cache **out,
                                bool *stale, rq_err *err) {
    *out = NULL;
    *stale = false;
    rq_teacher_cache *c = rq_calloc(1, sizeof *c, err);
    if (!c) return RQ_ERR_NOMEM;
    c->path = rq_strdup(path, err);
    rq_status st = c->path ? rq_file_map(path, &c->view, err) : RQ_ERR_NOMEM;
    if (st != RQ_OK) {
        free(c->path);
        free(c);
        return st;
    }
    const uint8_t *p = c->view.data;
    const size_t size = c->view.size;
    if (size < 36 || memcmp(p, CACHE_MAGIC, 8) != 0) {
        st = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: not a rilq teacher cache (magic %s expected)", path, CACHE_MAGIC);
        goto fail;
    }
    if (rq_rd_u32(p + 8) != CACHE_VERSION) {
        *stale = true;
        st = RQ_FAIL(err, RQ_ERR_ARG, "%s: cache version %u, this build writes %u", path, rq_rd_u32(p + 8), CACHE_VERSION);
        goto fail;
    }
    if (size < 36 + 16 || memcmp(p + size - 8, CACHE_END_MAGIC, 8) != 0) {
        st = RQ_FAIL(err, RQ_ERR_FORMAT,
                     "%s: truncated or damaged teacher cache (%zu bytes, no end marker %s); delete it to recompute",
                     path, size, CACHE_END_MAGIC);
        goto fail;
    }
    c->dim = (int)rq_rd_u32(p + 12);
    c->T = (int)rq_rd_u32(p + 16);
    c->n = (int)rq_rd_u32(p + 20);
    if (rq_rd_u64(p + 24) != key || c->dim != dim || c->T != T || c->n != n_windows) {
        *stale = true;
        st = RQ_FAIL(err, RQ_ERR_ARG, "%s: written for other settings (key %016llx, %d windows of %d x %d; expected key "
                                      "%016llx, %d of %d x %d)",
                     path, (unsigned long long)rq_rd_u64(p + 24), c->n, c->T, c->dim, (unsigned long long)key, n_windows,
                     T, dim);
        goto fail;
    }
    uint64_t index_at = rq_rd_u64(p + size - 16);
    if (c->n < 0 || index_at > size || (size - 16 - index_at) != 8 * ((uint64_t)c->n + 1)) {
        st = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: frame index at %llu does not fit a file of %zu bytes with %d windows", path,
                     (unsigned long long)index_at, size, c->n);
        goto fail;
    }
    c->index = p + index_at;
    uint64_t header_end = 36 + (uint64_t)rq_rd_u32(p + 32);
    for (int k = 0; k < c->n; k++) {
        uint64_t a = rq_rd_u64(c->index + 8 * (size_t)k), b = rq_rd_u64(c->index + 8 * ((size_t)k + 1));
        if (a < header_end || b < a || b > index_at) {
            st = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: frame %d spans bytes %llu..%llu outside the frames", path, k,
                         (unsigned long long)a, (unsigned long long)b);
            goto fail;
        }
    }
    c->dctx = ZSTD_createDCtx();
    c->raw = malloc((size_t)T * dim * sizeof(float));
    if (!c->dctx || !c->raw) {
        st = RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory opening %s", path);
        goto fail;
    }
    *out = c;
    return RQ_OK;
fail:
    rq_teacher_cache_close(c);
    return st;
}

rq_status rq_teacher_cache_read(rq_teacher_cache *c, int k, float *out, rq_err *err) {
    if (k < 0 || k >= c->n) return RQ_FAIL(err, RQ_ERR_ARG, "%s: window %d outside 0..%d", c->path, k, c->n - 1);
    uint64_t a = rq_rd_u64(c->index + 8 * (size_t)k), b = rq_rd_u64(c->index + 8 * ((size_t)k + 1));
    const size_t want = (size_t)c->T * c->dim * sizeof(float);
    /* RFC 8878: a frame is the magic number 0xFD2FB528, then the frame header
       descriptor, whose bit 2 says a content checksum ends the frame */
    const uint8_t *f = c->view.data + a;
    if (b - a < 5 || rq_rd_u32(f) != 0xFD2FB528u || !(f[4] & 0x04))
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: window %d: damaged teacher cache (%s); delete the file and rilq rebuilds it",
                       c->path, k, b - a >= 4 && rq_rd_u32(f) == 0xFD2FB528u ? "a frame without a checksum" : "no zstd frame");
    ZSTD_DCtx_reset(c->dctx, ZSTD_reset_session_only);
    ZSTD_inBuffer in = {c->view.data + a, (size_t)(b - a), 0};
    ZSTD_outBuffer outb = {c->raw, want, 0};
    size_t r = 1;
    while (in.pos < in.size) {
        size_t before_in = in.pos, before_out = outb.pos;
        r = ZSTD_decompressStream(c->dctx, &outb, &in);
        if (ZSTD_isError(r))
            return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: window %d: damaged teacher cache (zstd: %s); delete the file and rilq "
                           "rebuilds it", c->path, k, ZSTD_getErrorName(r));
        if (r == 0) break;
        if (in.pos == before_in && outb.pos == before_out) break; /* output full: more data than a window */
    }
    if (r != 0 || outb.pos != want || in.pos != in.size)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: window %d: damaged teacher cache: decompresses to %zu bytes (expected "
                       "%zu)%s; delete the file and rilq rebuilds it", c->path, k, outb.pos, want,
                       r != 0 ? ", frame incomplete" : "");
    for (size_t i = 0; i < (size_t)c->T * c->dim; i++) out[i] = rq_rd_f32(c->raw + 4 * i);
    return RQ_OK;
}

rq_status rq_teacher_cache_verify(rq_teacher_cache *c, rq_err *err) {
    float *tmp = malloc(sizeof(float) * (size_t)c->T * c->dim);
    if (!tmp) return RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory verifying %s", c->path);
    rq_status st = RQ_OK;
    for (int k = 0; k < c->n && st == RQ_OK; k++) st = rq_teacher_cache_read(c, k, tmp, err);
    free(tmp);
    return st;
}

uint64_t rq_teacher_cache_bytes(const rq_teacher_cache *c) { return c ? (uint64_t)c->view.size : 0; }

void rq_teacher_cache_close(rq_teacher_cache *c) {
    if (!c) return;
    if (c->view.data) rq_file_unmap(&c->view);
    ZSTD_freeDCtx(c->dctx);
    free(c->raw);
    free(c->path);
    free(c);
}

/* ---- LM-head relative error ------------------------------------------------------------- */

rq_status rq_calib_head_error(const rq_model *student, rq_backend *be, rq_adapter_set *ad, const rq_calib_windows *w,
                              rq_teacher_cache *tc, int first, int count, double *rel, rq_err *err) {
    const int T = w->T, dim = student->cfg.dim, V = student->cfg.vocab_size;
    if (first < 0 || count <= 0 || first + count > w->n)
        return RQ_FAIL(err, RQ_ERR_ARG, "head error: windows %d..%d outside 0..%d", first, first + count - 1, w->n - 1);
    /* rows per logits call: keep [rows][vocab] near 16 MiB */
    int chunk = (int)(4194304 / (V > 0 ? V : 1));
    if (chunk < 1) chunk = 1;
    if (chunk > T) chunk = T;
    rq_forward_opts fo = {.max_batch = 1, .max_seq = T, .adapters = ad};
    rq_forward_state *fs = NULL;
    RQ_TRY(rq_forward_create(student, be, &fo, &fs, err));
    float *hs = malloc(sizeof(float) * (size_t)T * dim), *ht = malloc(sizeof(float) * (size_t)T * dim);
    float *yq = malloc(sizeof(float) * (size_t)chunk * V), *y = malloc(sizeof(float) * (size_t)chunk * V);
    rq_status st = (hs && ht && yq && y) ? RQ_OK : RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory for the head error");
    double diff2 = 0.0, ref2 = 0.0;
    for (int k = first; k < first + count && st == RQ_OK; k++) {
        st = rq_forward_run(fs, w->tokens + (size_t)k * T, 1, T, 0, err);
        if (st == RQ_OK) st = rq_teacher_cache_read(tc, k, ht, err);
        if (st != RQ_OK) break;
        float *hidden = rq_forward_hidden_mut(fs); /* backend memory */
        st = be->download(be, hs, hidden, sizeof(float) * (size_t)T * dim, err);
        for (int r0 = 0; r0 < T && st == RQ_OK; r0 += chunk) {
            int rows = T - r0 < chunk ? T - r0 : chunk;
            /* the head of the student's state applied to student rows, then to teacher rows */
            st = be->upload(be, hidden, hs + (size_t)r0 * dim, sizeof(float) * (size_t)rows * dim, err);
            if (st == RQ_OK) st = rq_forward_logits(fs, NULL, rows, yq, err);
            if (st != RQ_OK) break;
            st = be->upload(be, hidden, ht + (size_t)r0 * dim, sizeof(float) * (size_t)rows * dim, err);
            if (st == RQ_OK) st = rq_forward_logits(fs, NULL, rows, y, err);
            for (size_t i = 0; st == RQ_OK && i < (size_t)rows * V; i++) {
                double d = (double)y[i] - (double)yq[i];
                diff2 += d * d;
                ref2 += (double)y[i] * y[i];
            }
        }
    }
    if (st == RQ_OK) *rel = ref2 > 0 ? sqrt(diff2 / ref2) : NAN;
    free(hs);
    free(ht);
    free(yq);
    free(y);
    rq_forward_free(fs);
    return st;
}

/* ---- SVD init ------------------------------------------------------------------------------ */

rq_status rq_calib_svd_init(const rq_model *fp, const rq_model *student, rq_adapter_set *ad, uint64_t seed,
                            bool quiet, rq_err *err) {
    if (ad->cfg.type != RQ_ADAPTER_LORA)
        return RQ_FAIL(err, RQ_ERR_ARG, "SVD (LoftQ) init needs plain LoRA adapters (--adapter lora): a QA-LoRA A "
                                        "reads group means and cannot hold an SVD factor");
    const rq_config *c = &student->cfg;
    if (fp->cfg.dim != c->dim || fp->cfg.n_layers != c->n_layers || fp->cfg.hidden_dim != c->hidden_dim)
        return RQ_FAIL(err, RQ_ERR_ARG, "SVD init: the full-precision model (%s) and the student (%s) differ in shape",
                       fp->path, student->path);
    rq_rsvd_opts so;
    rq_rsvd_opts_default(&so);
    so.seed = seed;
    rq_status st = RQ_OK;
    for (int l = 0; l < c->n_layers && st == RQ_OK; l++) {
        for (int p = 0; p < RQ_N_PROJ && st == RQ_OK; p++) {
            rq_adapter *a = rq_adapter_set_get(ad, l, p);
            if (!a) continue;
            const rq_linear *lf = rq_layer_proj(&fp->layers[l], p), *ls = rq_layer_proj(&student->layers[l], p);
            if (!lf->w)
                return RQ_FAIL(err, RQ_ERR_ARG, "SVD init: layer %d %s of %s is not full precision", l, rq_proj_names[p],
                               fp->path);
            const int out = a->out, in = a->in, r = a->r;
            float *E = malloc(sizeof(float) * (size_t)out * in), *U = malloc(sizeof(float) * (size_t)out * r);
            float *S = malloc(sizeof(float) * (size_t)r), *Vt = malloc(sizeof(float) * (size_t)r * in);
            float *A = malloc(sizeof(float) * (size_t)r * in), *B = malloc(sizeof(float) * (size_t)out * r);
            if (!E || !U || !S || !Vt || !A || !B) st = RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory in SVD init");
            if (st == RQ_OK) {
                if (ls->q2) rq_q2_dequant(ls->q2, E, 0);
                else memcpy(E, ls->w, sizeof(float) * (size_t)out * in);
                for (size_t i = 0; i < (size_t)out * in; i++) E[i] = lf->w[i] - E[i];
                st = rq_svd_top_r(E, out, in, r, &so, U, S, Vt, err);
            }
            if (st == RQ_OK) {
                for (int j = 0; j < r; j++) {
                    float f = sqrtf(S[j] > 0 ? S[j] / a->scaling : 0.0f);
                    for (int o = 0; o < out; o++) B[(size_t)o * r + j] = U[(size_t)o * r + j] * f;
                    for (int i = 0; i < in; i++) A[(size_t)j * in + i] = Vt[(size_t)j * in + i] * f;
                }
                st = rq_adapter_set_assign(ad, l, p, A, B, err);
            }
            free(E);
            free(U);
            free(S);
            free(Vt);
            free(A);
            free(B);
        }
        if (!quiet) rq_log(l + 1 == c->n_layers ? RQ_LOG_DONE : RQ_LOG_PROGRESS, "svd init: layer %d/%d", l + 1, c->n_layers);
    }
    return st;
}
