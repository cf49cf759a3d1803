/* The RILQ stage (algorithms.md section 1): calibration windows, the teacher
 * target cache, and the LM-head relative error.
 *
 * Calibration windows (1.4). The reference draws, with Python's random seeded
 * 42 at the start:
 *     for each of N windows:
 *         repeat: d = randint(0, n_docs - 1); tokenize doc d   until len(d) > T
 *         i = randint(0, len(d) - T - 1); window = ids[d][i : i + T]
 * then the LAST n_val windows are validation, the first N - n_val training;
 * each list is shuffled once after random.seed(42), and the set is [val ; train].
 * The reference text says "each list is shuffled once (random.seed(42))"
 * without the order of the two shuffles; we reseed before each shuffle (val
 * first, then train), so each list's order is independent of the other's
 * length. Documents are tokenized with the tokenizer's default BOS rule (HF's
 * tokenizer(text) adds BOS for LLaMA), so BOS appears only in windows that
 * start at 0.
 *
 * Our C4 copy is a 2000-document validation sample, not the train shard the
 * reference reads: the draw is restricted to documents [doc_begin, doc_end)
 * (default 0:1000), and perplexity must then use the others (--c4-docs 1000:2000).
 * WikiText-2: the reference uses the first 1000 lines of the train split, which
 * we do not have locally; the caller names a text file (e.g. wiki.valid.raw;
 * never wiki.test.raw, which perplexity reads), of which the first 1000 lines
 * are concatenated as the reference does and tokenized once; window starts are
 * randint(0, len - T - 1) with the same seed.
 *
 * Teacher cache file (one per model + data + window settings; written
 * atomically; read window by window):
 *     header   magic "RQTEACH1", u32 version, u32 dim, u32 T, u32 n_windows,
 *              u64 key, u32 key_text_len, key_text bytes (what the key hashed)
 *     frames   one zstd frame per window: T * dim little-endian fp32, the final
 *              hidden states after the final norm (bit-exact)
 *     index    u64 offset of each frame, then u64 offset of the end of the frames
 *     trailer  u64 offset of the index, magic "RQTEND01"
 * A missing trailer means a truncated file (clear error). One frame per window
 * gives random access (validation windows, resume at any position) while only
 * one window is ever decompressed at a time; the file is memory-mapped, so the
 * compressed bytes sit in the page cache, not in the process heap. */
#ifndef RQ_TRAIN_CALIB_H
#define RQ_TRAIN_CALIB_H

#include "../adapter/adapter.h"
#include "../model/forward.h"

/* ---- the sampling alone (tests reproduce it in Python without a tokenizer) ---- */

/* Token count of document `doc` (0-based within the drawable range). */
typedef rq_status (*rq_calib_doc_len_fn)(void *user, int64_t doc, int *len, rq_err *err);

/* Draw n windows of T tokens as the reference does (seeded Python random);
 * doc_out[k], start_out[k] receive window k's document and start, in draw
 * order. Fails when no document has more than T tokens. */
rq_status rq_calib_draw(int64_t n_docs, rq_calib_doc_len_fn doc_len, void *user, int T, int n, uint64_t seed,
                        int64_t *doc_out, int64_t *start_out, rq_err *err);

/* The split and shuffle: order[0 .. n_val) = the last n_val draws shuffled,
 * order[n_val .. n) = the first n - n_val draws shuffled (values are draw
 * indices). */
rq_status rq_calib_order(int n, int n_val, uint64_t seed, int *order, rq_err *err);

/* ---- the windows --------------------------------------------------------------- */

typedef enum rq_calib_source { RQ_CALIB_C4 = 0, RQ_CALIB_TEXT = 1 } rq_calib_source;

typedef struct rq_calib_opts {
    rq_calib_source source;
    const char *path;        /* C4 jsonl, or the text file (WikiText-2 raw) */
    int doc_begin, doc_end;  /* C4 documents that may be drawn: [begin, end); end 0 = all */
    int text_lines;          /* text: the first N lines are used (1000, as the reference) */
    int seq_len;             /* T (512) */
    int n_windows;           /* N (320) */
    int n_val;               /* held out (64) */
    uint64_t seed;           /* 42 */
} rq_calib_opts;

void rq_calib_default_opts(rq_calib_opts *o);

typedef struct rq_calib_windows {
    int T, n, n_val;      /* windows [0, n_val) validate, [n_val, n) train */
    int *tokens;          /* [n][T] */
    int64_t *doc, *start; /* per window: the document (C4 index in the file; text: 0) and start */
} rq_calib_windows;

rq_status rq_calib_windows_build(const rq_tokenizer *tok, const rq_calib_opts *o, rq_calib_windows *w, rq_err *err);
void rq_calib_windows_free(rq_calib_windows *w);

/* ---- the teacher cache --------------------------------------------------------- */

/* The cache key: FNV-1a 64 of a text naming the model file (path, size, mtime),
 * the data file (path, size, mtime) and every window setting. key_text (size
 * key_cap) receives that text. */
rq_status rq_teacher_key(const char *model_path, const rq_calib_opts *o, uint64_t *key, char *key_text,
                         size_t key_cap, rq_err *err);

/* Run m (the teacher: full precision, no adapters) over every window, batch 1,
 * and write the final hidden states to path atomically. */
rq_status rq_teacher_cache_write(const rq_model *m, rq_backend *be, const rq_calib_windows *w, uint64_t key,
                                 const char *key_text, const char *path, bool quiet, rq_err *err);

/* The same cache computed a layer at a time (rilq calibrate's teacher pass):
 * every window through layer 0, then every window through layer 1, ..., so
 * only one decoder layer's fp32 weights are resident (the embedding table
 * during the first step) beside the windows' residual streams [n][T][dim].
 * Those stay in memory, or with spill in a scratch file beside path (created
 * exclusively and unlinked at once: nothing remains however the run ends). The
 * weights come from a checkpoint's tensor table tab with config cfg (as
 * rq_model_table_config returns it), converted a layer at a time by
 * rq_model_build_layer. Each window runs through the same ops as
 * rq_forward_run at batch 1, so the file is byte-identical to
 * rq_teacher_cache_write's. *allocated (may be NULL) receives the bytes the pass
 * held at its peak: its host buffers and the forward state. */
struct rq_tensor_table;
rq_status rq_teacher_cache_write_streamed(const rq_config *cfg, const struct rq_tensor_table *tab, rq_backend *be,
                                          const rq_calib_windows *w, uint64_t key, const char *key_text,
                                          const char *path, bool spill, bool quiet, uint64_t *allocated,
                                          rq_err *err);

/* What the streamed pass allocates besides its forward state (one inference
 * state, batch 1 x T), for the memory plan. */
typedef struct rq_teacher_stream_size {
    uint64_t streams; /* [n][T][dim] fp32 in memory (0 when spilled) */
    uint64_t window;  /* spilled: the one window on its way to and from the scratch file */
    uint64_t embed;   /* the embedding table, the first step only */
    uint64_t layer;   /* one decoder layer in fp32, every later step */
    uint64_t norm;    /* the final norm */
    uint64_t frame;   /* the cache writer's buffers and index */
    uint64_t total;   /* streams + window + norm + max(embed, layer + frame) */
} rq_teacher_stream_size;
void rq_teacher_stream_size_of(const rq_config *c, int n, int T, bool spill, rq_teacher_stream_size *out);

typedef struct rq_teacher_cache rq_teacher_cache;

/* Open path and check it against the expected shape and key. A different key
 * (or shape) is RQ_ERR_ARG with *stale set (the caller recomputes); a damaged
 * or truncated file is RQ_ERR_FORMAT naming the file and what is wrong. */
rq_status rq_teacher_cache_open(const char *path, uint64_t key, int dim, int T, int n_windows, rq_teacher_cache **out,
                                bool *stale, rq_err *err);
/* Decompress window k into out [T][dim]. Every frame carries zstd's content
 * checksum, verified here: a damaged frame is RQ_ERR_FORMAT naming the file
 * and the window. */
rq_status rq_teacher_cache_read(rq_teacher_cache *c, int k, float *out, rq_err *err);
/* Decompress every window once (checksums checked, nothing kept): before a
 * cache is reused, so a damaged one is found and rebuilt before training
 * starts rather than failing it midway. */
rq_status rq_teacher_cache_verify(rq_teacher_cache *c, rq_err *err);
uint64_t rq_teacher_cache_bytes(const rq_teacher_cache *c); /* compressed file size */
void rq_teacher_cache_close(rq_teacher_cache *c);

/* ---- the LM-head relative error -------------------------------------------------- */

/* Over windows [first, first + count) of w: Y = head(teacher hidden) and
 * Yq = head(student hidden) (the student with its adapters; the head is the
 * student's, which is the full-precision head since heads are never
 * quantized), all T positions, the whole vocabulary:
 *     rel = ||Y - Yq||_F / ||Y||_F
 * (the ratio of Frobenius norms over every logit of those windows; an
 * elementwise mean of |Y - Yq| / |Y| is dominated by logits near 0 and needs an
 * arbitrary epsilon, so we report the norm ratio). Sums in double. */
rq_status rq_calib_head_error(const rq_model *student, rq_backend *be, rq_adapter_set *ad, const rq_calib_windows *w,
                              rq_teacher_cache *tc, int first, int count, double *rel, rq_err *err);

/* ---- SVD init of plain-LoRA adapters (the LoftQ baseline, one iteration) ---------- */

/* For every adapted projection: E = W_fp - deq(Q_student), scaling * B A = the
 * rank-r truncated SVD of E (B = U sqrt(S / scaling), A = sqrt(S / scaling) Vt).
 * This is LoftQ with one alternation when the student's backbone is the
 * quantizer applied to the same weights (the RTN artifact); more alternations
 * would change the backbone, which an artifact student does not allow.
 * Needs plain LoRA adapters (QA-LoRA's pooled A cannot hold an SVD factor). */
rq_status rq_calib_svd_init(const rq_model *fp, const rq_model *student, rq_adapter_set *ad, uint64_t seed,
                            bool quiet, rq_err *err);

#endif
