/* core: errors, checked allocation, files, half-precision conversion, timing.
 * Internal to librilq (the public API is src/rilq.h). */
#ifndef RQ_CORE_H
#define RQ_CORE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../rilq.h"

/* ---- errors ------------------------------------------------------------ */

/* Fill err (if not NULL) and return code. Messages name the file, the field or
 * tensor, what was expected and what was found. */
rq_status rq_fail_at(rq_err *err, rq_status code, const char *src_file, int src_line, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
#define RQ_FAIL(err, code, ...) rq_fail_at((err), (code), __FILE__, __LINE__, __VA_ARGS__)

/* Prefix an existing message with context ("loading X: " + old message). */
void rq_err_prefix(rq_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A macro's value as a string literal, for defaults that are written as text
 * (option tables, help): RQ_STR(RQ_DEFAULT_GROUP_SIZE) is "64". */
#define RQ_STR_(x) #x
#define RQ_STR(x) RQ_STR_(x)

#define RQ_TRY(expr)                                                                                \
    do {                                                                                            \
        rq_status rq_try_status_ = (expr);                                                          \
        if (rq_try_status_ != RQ_OK) return rq_try_status_;                                         \
    } while (0)

/* ---- allocation -------------------------------------------------------- */

/* Allocation that reports failure through err. Zeroed memory. */
void *rq_calloc(size_t n, size_t size, rq_err *err);
/* 64-byte aligned, zeroed. Free with free(). */
void *rq_alloc_aligned(size_t bytes, rq_err *err);
char *rq_strdup(const char *s, rq_err *err);
/* n * size without overflow; false on overflow. */
static inline bool rq_mul_ok(size_t a, size_t b, size_t *out) {
    if (a != 0 && b > SIZE_MAX / a) return false;
    *out = a * b;
    return true;
}

/* ---- growable buffer ----------------------------------------------------- */

/* Bytes or text built by appending: zero-initialize (rq_buf b = {0}), append,
 * then take the result with rq_buf_finish or drop it with rq_buf_free. data is
 * NUL-terminated once anything was appended (NULL before). Failure is sticky:
 * after a failed allocation (or a size overflow) every later append does
 * nothing and returns false, so a builder appends freely and checks once. */
typedef struct rq_buf {
    char *data;
    size_t len, cap;
    bool failed;
} rq_buf;

/* Room for n more bytes (and the NUL) without appending: appends that fit
 * cannot fail. False when the size overflows or the allocation fails. */
bool rq_buf_reserve(rq_buf *b, size_t n);
bool rq_buf_append(rq_buf *b, const void *data, size_t n);
bool rq_buf_puts(rq_buf *b, const char *s);
bool rq_buf_appendf(rq_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
bool rq_buf_vappendf(rq_buf *b, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));
/* RQ_OK, or RQ_ERR_NOMEM "out of memory building <what>" when an append failed. */
rq_status rq_buf_status(const rq_buf *b, const char *what, rq_err *err);
/* Hand over the contents (never NULL on success: "" when nothing was appended;
 * len may be NULL) and reset b. On failure b is freed, *out is NULL and the
 * status is rq_buf_status's. */
rq_status rq_buf_finish(rq_buf *b, char **out, size_t *len, const char *what, rq_err *err);
void rq_buf_free(rq_buf *b);
/* Empty b for reuse, keeping its memory (and its failure flag). */
static inline void rq_buf_clear(rq_buf *b) {
    b->len = 0;
    if (b->data) b->data[0] = 0;
}

/* ---- files ------------------------------------------------------------- */

/* A read-only view of a whole file: memory-mapped where possible. */
typedef struct rq_file_view {
    const uint8_t *data;
    size_t size;
    void *map_base; /* non-NULL when mmap'ed */
    uint8_t *owned; /* non-NULL when read into memory */
} rq_file_view;

rq_status rq_file_map(const char *path, rq_file_view *out, rq_err *err);
void rq_file_unmap(rq_file_view *v);
/* Read a whole file into a NUL-terminated heap buffer. */
rq_status rq_file_read_all(const char *path, char **out, size_t *size, rq_err *err);
bool rq_file_exists(const char *path);
bool rq_dir_exists(const char *path);
/* Create a directory and its parents (mkdir -p). */
rq_status rq_mkdir_p(const char *path, rq_err *err);
/* Join a directory and a name into buf (size n). False when it does not fit. */
bool rq_path_join(char *buf, size_t n, const char *dir, const char *name);
/* The same join into a malloc'd string of any length; NULL (RQ_ERR_NOMEM) when
 * out of memory. */
char *rq_path_join_alloc(const char *dir, const char *name, rq_err *err);

/* Atomic directory: fill(user, tmp) writes the directory's files (each one of
 * files[0..n_files)) into tmp = "<dir>.tmp-<pid>.<nonce>" (a new directory that
 * this call creates: never an existing one), which is fsync'ed and renamed
 * to dir; dir must not exist, or be an empty directory (else RQ_ERR_ARG naming
 * it); its parent is created. On failure the temporary files are removed and
 * dir is untouched, so a killed or failed write never leaves a dir that loads
 * half written. A trailing '/' on dir is ignored. */
typedef rq_status (*rq_dir_fill_fn)(void *user, const char *tmp_dir, rq_err *err);
rq_status rq_write_dir_atomic(const char *dir, const char *const *files, int n_files, rq_dir_fill_fn fill, void *user,
                              rq_err *err);

/* Atomic write: data goes to "<path>.tmp.<pid>.<nonce>", created exclusively
 * (O_EXCL | O_NOFOLLOW: never an existing file or a symlink's target), is
 * fsync'ed, then renamed over path, so a reader sees either the old file or
 * the complete new one. */
typedef struct rq_atomic_file {
    void *fp; /* FILE* */
    char *final_path;
    char *tmp_path;
} rq_atomic_file;
rq_status rq_atomic_open(rq_atomic_file *af, const char *path, rq_err *err);
rq_status rq_atomic_write(rq_atomic_file *af, const void *data, size_t n, rq_err *err);
rq_status rq_atomic_commit(rq_atomic_file *af, rq_err *err);
void rq_atomic_abort(rq_atomic_file *af);
rq_status rq_write_file_atomic(const char *path, const void *data, size_t n, rq_err *err);

/* A scratch file for data too large to keep in memory: created exclusively
 * beside `beside` ("<beside>.tmp.<pid>.<nonce>", O_EXCL | O_NOFOLLOW: never an
 * existing file or a symlink's target) and unlinked at once, so nothing of it
 * remains when the process ends, however it ends (killed, out of disk). path
 * names it in messages. */
typedef struct rq_scratch_file {
    int fd;
    char *path;
} rq_scratch_file;
rq_status rq_scratch_open(rq_scratch_file *f, const char *beside, rq_err *err);
/* n bytes at offset off, all of them (a short write is RQ_ERR_IO naming the file: a full disk) */
rq_status rq_scratch_pwrite(rq_scratch_file *f, uint64_t off, const void *data, size_t n, rq_err *err);
rq_status rq_scratch_pread(rq_scratch_file *f, uint64_t off, void *data, size_t n, rq_err *err);
void rq_scratch_close(rq_scratch_file *f);

/* Remove from dir the temporary files and directories of the atomic writers
 * above (and of older builds: NAME.tmp.PID, NAME.tmp-PID) whose writing
 * process no longer exists; a live writer's are kept, other names untouched,
 * symlinks removed without being followed. Returns how many were removed. */
int rq_remove_stale_temps(const char *dir);

/* An output checked before the work that produces it (so a bad --out fails
 * in a second, not after hours): the nearest existing ancestor directory must
 * be writable (missing ones are created: here for a file, by the directory
 * writer for a directory), and path itself:
 *   RQ_OUT_FILE_REPLACE  absent or a file (overwritten atomically)
 *   RQ_OUT_FILE_NEW      absent
 *   RQ_OUT_DIR_NEW       absent or an empty directory */
typedef enum rq_output_kind { RQ_OUT_FILE_REPLACE, RQ_OUT_FILE_NEW, RQ_OUT_DIR_NEW } rq_output_kind;
rq_status rq_check_output(const char *path, rq_output_kind kind, rq_err *err);

/* ---- numbers ----------------------------------------------------------- */

static inline float rq_f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline uint32_t rq_bits_from_f32(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
float rq_f16_to_f32(uint16_t h);
uint16_t rq_f32_to_f16(float f); /* round to nearest even, subnormals, inf/nan */
static inline float rq_bf16_to_f32(uint16_t h) { return rq_f32_from_bits((uint32_t)h << 16); }
uint16_t rq_f32_to_bf16(float f); /* round to nearest even, NaN stays NaN */

/* Little-endian loads from unaligned memory. */
static inline uint16_t rq_rd_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t rq_rd_u32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline uint64_t rq_rd_u64(const uint8_t *p) { return (uint64_t)rq_rd_u32(p) | ((uint64_t)rq_rd_u32(p + 4) << 32); }
static inline float rq_rd_f32(const uint8_t *p) { return rq_f32_from_bits(rq_rd_u32(p)); }

/* A double as a JSON number for hand-written JSON lines: "%.9g" when finite,
 * "null" otherwise (JSON has no nan / inf). buf holds at least 32 bytes. */
const char *rq_json_number(char *buf, double v);

/* XXH64 of n bytes: the content hash of checkpoints (chain calls through seed
 * to hash several buffers). */
uint64_t rq_hash64(const void *data, size_t n, uint64_t seed);

/* ---- random numbers ------------------------------------------------------ */

/* xoshiro256** seeded through splitmix64: small, fast, reproducible, and its
 * whole state can be saved in a checkpoint. */
typedef struct rq_rng {
    uint64_t s[4];
} rq_rng;
void rq_rng_seed(rq_rng *r, uint64_t seed);
uint64_t rq_rng_u64(rq_rng *r);
float rq_rng_uniform(rq_rng *r);  /* [0, 1) with 24 random bits */
float rq_rng_normal(rq_rng *r);   /* standard normal (Box-Muller) */

/* ---- time and progress --------------------------------------------------- */

double rq_now_seconds(void); /* monotonic */

/* A progress line on stderr: redrawn in place on a terminal, printed at most
 * every few seconds otherwise. */
typedef struct rq_progress {
    const char *what;
    double start, last_print;
    int64_t total;
    bool tty;
} rq_progress;
void rq_progress_init(rq_progress *p, const char *what, int64_t total);
/* done: units finished; unit: name of a unit ("tok", "docs"); extra: appended text or NULL */
void rq_progress_update(rq_progress *p, int64_t done, const char *unit, const char *extra);
void rq_progress_finish(rq_progress *p, int64_t done, const char *unit);

/* ---- messages ------------------------------------------------------------ */

/* The library reports what it does through one sink that the program installs
 * (as llama.cpp's llama_log_set): the command prints, `rilq run` writes each
 * stage's log file, tests capture. Without a sink the library is silent. */
typedef enum rq_log_level {
    RQ_LOG_INFO,     /* a line of a stage's output (the command prints it on stdout) */
    RQ_LOG_WARN,     /* a warning or note (stderr) */
    RQ_LOG_PROGRESS, /* a progress line that the next one replaces (stderr; in place on a terminal) */
    RQ_LOG_DONE      /* the last progress line of a loop */
} rq_log_level;
typedef void (*rq_log_fn)(void *user, rq_log_level level, const char *line);
void rq_log_set(rq_log_fn fn, void *user);
void rq_log(rq_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define rq_info(...) rq_log(RQ_LOG_INFO, __VA_ARGS__)
#define rq_warn(...) rq_log(RQ_LOG_WARN, __VA_ARGS__)

/* ---- process setup (for programs' main(), never called by the library) ---- */

/* OpenMP threads that spin while they wait are fast on an idle machine and
 * ruinous on a busy one (a descheduled thread stalls every barrier: 40-100x
 * slower runs were measured with two other jobs on two cores), while sleeping
 * waits cost little here (large ops, few parallel regions). libgomp reads
 * OMP_WAIT_POLICY only at start-up, so when the user has not chosen one this
 * sets it to passive and re-executes the program; returns if it could not. */
void rq_reexec_with_passive_openmp(char **argv);

#endif /* RQ_CORE_H */
