/* The CUDA backend: the op table on one NVIDIA GPU (kernels in the kernels/ directory,
 * GEMMs through cuBLASLt in kernels/gemm.cu). See kernels/README.md for the
 * kernels, their precision and what is not optimized yet.
 *
 * Memory. be->alloc is cudaMalloc (zeroed, like the CPU backend's), and every
 * allocation is recorded, so an op can tell whether a pointer it is given is
 * memory of this backend. Frozen model weights stay where the model loader
 * put them, in host memory (rq_model), and reach the device through the
 * binding contract of backend.h: bind_weights copies each listed host array
 * (rq_linear.w, the q2 arrays, norm weights, the head) to the device once,
 * into a table of host ranges sorted by address, and an op given such a host
 * pointer (or one inside such an array) reads the copy found by a binary
 * search, with no check of the host contents: the caller promises not to
 * rewrite a bound array except through rebind_weights. The last
 * unbind_weights of a model frees its copies. A host weight no binding holds
 * (op tests, a caller that binds nothing) is uploaded into scratch for that
 * one call: slow, never stale. The embedding table is not bound (the op does
 * not know its row count): the wanted rows are gathered on the host and
 * uploaded, unless the table is device memory. Index arrays (tokens, gather
 * rows, targets) and the per-row loss of cross_entropy may be host or device
 * memory. Any other
 * pointer must be memory of this backend; a host pointer there is reported as
 * an error naming the op and the argument.
 *
 * Errors. Every CUDA and cuBLASLt call is checked. Ops that return a status
 * (alloc, upload, download, mem_info) report directly. Ops that return void
 * (or a double: mse and sum_squares return NaN) record the first error in the
 * backend (sticky: the call, its status, file and line); the next
 * status-returning op reports it, and every one after it does too, since
 * device memory is then in an unknown state. Kernels run asynchronously, so a
 * fault inside a kernel surfaces at the next synchronizing op (download,
 * mse, sum_squares, cross_entropy with a host loss).
 *
 * Streams. Ops run in order on one compute stream. Uploads go through pinned
 * staging buffers on a second (copy) stream: upload returns as soon as the
 * host bytes are in the staging buffer, the copy waits (event) for the
 * compute work enqueued before it (the destination may still be read) and
 * the compute stream waits (event) for the copy before its next op. What
 * overlaps: host work (data loading, teacher-cache decompression, next batch
 * packing, RoPE tables) runs while the GPU computes, since only downloads and
 * reductions block the host; the copy engine moves data while earlier
 * independent kernels are still queued on the compute stream only when the
 * orchestration uploads into a buffer no pending kernel reads (the wait is
 * conservative: all work enqueued so far). */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../quant/q2.h"
#include "backend.h"
#include "kernels.h"
#include "scratch.h"

#define N_STAGES 4

typedef struct dev_block {
    uintptr_t base;
    size_t bytes;
} dev_block;

/* The device copy of one bound host weight array. */
typedef struct bound_span {
    uintptr_t host;
    size_t bytes;
    void *dev;
    const struct rq_model *owner;
} bound_span;

/* A bound model and how many binds of it are open. */
typedef struct bound_model {
    const struct rq_model *m;
    int count;
} bound_model;

typedef struct scratch {
    void *p;
    size_t bytes;
} scratch;

typedef struct stage {
    void *pinned;
    size_t bytes;
    cudaEvent_t done; /* the last copy out of this buffer */
} stage;

/* SCR_WEIGHT0..2: one call's copies of host weights no binding holds (a q2 tensor needs three) */
enum { SCR_INTS, SCR_BF16_IN, SCR_TILE, SCR_ATTN, SCR_LOSS, SCR_EMBED, SCR_WEIGHT0, SCR_WEIGHT1, SCR_WEIGHT2, N_SCRATCH };

typedef struct cuda_ctx {
    int device;
    cudaStream_t comp, copy;
    cudaEvent_t comp_mark;
    rqk_gemm *gemm;
    bool q2_bf16; /* q2 linears: bf16 tiles and inputs (default) or fp32 */
    /* the first error of a void op (sticky) */
    bool failed;
    rq_err sticky;
    /* allocations of this backend, sorted by base */
    dev_block *blocks;
    size_t n_blocks, cap_blocks;
    /* bound weights: copies sorted by host address (ranges never overlap), and the bound models */
    bound_span *spans;
    size_t n_spans, cap_spans;
    bound_model *models;
    size_t n_models, cap_models;
    scratch scr[N_SCRATCH];
    stage stages[N_STAGES];
    int next_stage;
    double *red;       /* device: RQK_REDUCE_BLOCKS partial sums + the result */
    double *red_host;  /* pinned: the result */
} cuda_ctx;

/* ---- errors ---------------------------------------------------------------------- */

static void fail_at(cuda_ctx *c, rq_status code, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void fail_at(cuda_ctx *c, rq_status code, const char *file, int line, const char *fmt, ...) {
    if (c->failed) return; /* keep the first: later ones are usually its consequences */
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    rq_fail_at(&c->sticky, code, file, line, "cuda: %s", msg);
    c->failed = true;
}
#define FAIL(c, code, ...) fail_at((c), (code), __FILE__, __LINE__, __VA_ARGS__)

static bool cu_ok(cuda_ctx *c, cudaError_t e, const char *call, const char *file, int line) {
    if (e == cudaSuccess) return true;
    fail_at(c, e == cudaErrorMemoryAllocation ? RQ_ERR_NOMEM : RQ_ERR_INTERNAL, file, line, "%s failed: %s (%s)", call,
            cudaGetErrorName(e), cudaGetErrorString(e));
    return false;
}
/* CU(c, call): false (and the error recorded) when the call fails */
#define CU(c, call) cu_ok((c), (call), #call, __FILE__, __LINE__)

static void gemm_fail(cuda_ctx *c, const char *op, const char *msg, const char *file, int line) {
    fail_at(c, RQ_ERR_INTERNAL, file, line, "%s: %s", op, msg);
}

/* The sticky error, for an op that returns a status. */
static rq_status report(cuda_ctx *c, rq_err *err) {
    if (!c->failed) return RQ_OK;
    if (err) *err = c->sticky;
    return c->sticky.code;
}

/* ---- the allocation registry ----------------------------------------------------- */

/* index of the last block with base <= p, or -1 */
static long block_floor(const cuda_ctx *c, uintptr_t p) {
    size_t lo = 0, hi = c->n_blocks;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c->blocks[mid].base <= p) lo = mid + 1;
        else hi = mid;
    }
    return (long)lo - 1;
}

static bool is_dev(const cuda_ctx *c, const void *p) {
    long i = block_floor(c, (uintptr_t)p);
    return i >= 0 && (uintptr_t)p - c->blocks[i].base < c->blocks[i].bytes;
}

static bool registry_add(cuda_ctx *c, void *p, size_t bytes) {
    if (c->n_blocks == c->cap_blocks) {
        size_t cap = c->cap_blocks ? 2 * c->cap_blocks : 64;
        dev_block *nb = realloc(c->blocks, sizeof *nb * cap);
        if (!nb) return false;
        c->blocks = nb;
        c->cap_blocks = cap;
    }
    size_t at = (size_t)(block_floor(c, (uintptr_t)p) + 1);
    memmove(c->blocks + at + 1, c->blocks + at, sizeof *c->blocks * (c->n_blocks - at));
    c->blocks[at] = (dev_block){(uintptr_t)p, bytes};
    c->n_blocks++;
    return true;
}

static bool registry_remove(cuda_ctx *c, void *p) {
    long i = block_floor(c, (uintptr_t)p);
    if (i < 0 || c->blocks[i].base != (uintptr_t)p) return false;
    memmove(c->blocks + i, c->blocks + i + 1, sizeof *c->blocks * (c->n_blocks - (size_t)i - 1));
    c->n_blocks--;
    return true;
}

/* An activation argument must be memory of this backend. */
static bool need_dev(cuda_ctx *c, const char *op, const char *arg, const void *p, const char *file, int line) {
    if (!p || is_dev(c, p)) return true;
    fail_at(c, RQ_ERR_INTERNAL, file, line,
            "%s: argument %s (%p) is not memory of this backend (host memory must go through be->upload)", op, arg, p);
    return false;
}
#define NEED_DEV(c, op, arg) need_dev((c), (op), #arg, (arg), __FILE__, __LINE__)

/* ---- scratch and staging ---------------------------------------------------------- */

/* Device scratch of at least bytes (contents not kept when it grows). */
static void *scratch_get(cuda_ctx *c, int which, size_t bytes) {
    scratch *s = &c->scr[which];
    if (s->bytes >= bytes && s->p) return s->p;
    if (s->p) { /* kernels enqueued earlier may still read it */
        if (!CU(c, cudaStreamSynchronize(c->comp)) || !CU(c, cudaFree(s->p))) return NULL;
        s->p = NULL;
        s->bytes = 0;
    }
    size_t want = rq_cuda_scratch_grown(bytes);
    if (!CU(c, cudaMalloc(&s->p, want))) {
        s->p = NULL;
        return NULL;
    }
    s->bytes = want;
    return s->p;
}

/* Host bytes -> device dst, asynchronously through a pinned staging buffer on
 * the copy stream (see the header comment for the ordering). */
static bool stage_upload(cuda_ctx *c, void *dst, const void *src, size_t bytes) {
    if (!bytes) return true;
    stage *s = &c->stages[c->next_stage];
    c->next_stage = (c->next_stage + 1) % N_STAGES;
    if (!CU(c, cudaEventSynchronize(s->done))) return false; /* the buffer's previous copy is done */
    if (s->bytes < bytes) {
        if (s->pinned && !CU(c, cudaFreeHost(s->pinned))) return false;
        s->pinned = NULL;
        s->bytes = 0;
        if (cudaHostAlloc(&s->pinned, bytes, cudaHostAllocDefault) != cudaSuccess) {
            (void)cudaGetLastError(); /* no pinned memory: a plain (blocking) copy in stream order */
            s->pinned = NULL;
            return CU(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->comp)) &&
                   CU(c, cudaStreamSynchronize(c->comp));
        }
        s->bytes = bytes;
    }
    memcpy(s->pinned, src, bytes);
    return CU(c, cudaEventRecord(c->comp_mark, c->comp)) && CU(c, cudaStreamWaitEvent(c->copy, c->comp_mark, 0)) &&
           CU(c, cudaMemcpyAsync(dst, s->pinned, bytes, cudaMemcpyHostToDevice, c->copy)) &&
           CU(c, cudaEventRecord(s->done, c->copy)) && CU(c, cudaStreamWaitEvent(c->comp, s->done, 0));
}

static bool download_sync(cuda_ctx *c, void *dst, const void *src, size_t bytes) {
    if (!bytes) return true;
    return CU(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->comp)) &&
           CU(c, cudaStreamSynchronize(c->comp));
}

/* n ints on the device: p itself when it is device memory, else a staged copy */
static const int *ints_dev(cuda_ctx *c, const int *p, size_t n) {
    if (is_dev(c, p)) return p;
    int *d = scratch_get(c, SCR_INTS, n * sizeof(int));
    if (!d || !stage_upload(c, d, p, n * sizeof(int))) return NULL;
    return d;
}

/* ---- bound weights ---------------------------------------------------------------- */

/* index of the last span with host <= p, or -1 */
static long span_floor(const cuda_ctx *c, uintptr_t p) {
    size_t lo = 0, hi = c->n_spans;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c->spans[mid].host <= p) lo = mid + 1;
        else hi = mid;
    }
    return (long)lo - 1;
}

/* The device copy of host[0, bytes) when one bound array holds all of it, else NULL. */
static const void *bound_lookup(const cuda_ctx *c, const void *host, size_t bytes) {
    const uintptr_t p = (uintptr_t)host;
    long i = span_floor(c, p);
    if (i < 0) return NULL;
    const bound_span *b = &c->spans[i];
    const size_t off = p - b->host;
    if (off >= b->bytes || bytes > b->bytes - off) return NULL;
    return (const char *)b->dev + off;
}

static long find_model(const cuda_ctx *c, const struct rq_model *m) {
    for (size_t i = 0; i < c->n_models; i++)
        if (c->models[i].m == m) return (long)i;
    return -1;
}

/* Free the copies owned by m (the model entry stays). */
static void drop_spans(cuda_ctx *c, const struct rq_model *m) {
    /* kernels enqueued earlier may still read the copies */
    if (!CU(c, cudaStreamSynchronize(c->comp))) return;
    size_t kept = 0;
    for (size_t i = 0; i < c->n_spans; i++) {
        if (c->spans[i].owner == m) CU(c, cudaFree(c->spans[i].dev));
        else c->spans[kept++] = c->spans[i];
    }
    c->n_spans = kept;
}

/* Copy m's arrays to the device. An array that overlaps one bound already (a
 * weight two models share) is left to the per-call path. */
static rq_status upload_spans(cuda_ctx *c, const struct rq_model *m, const rq_weight_span *spans, size_t n,
                              rq_err *err) {
    for (size_t k = 0; k < n; k++) {
        const uintptr_t p = (uintptr_t)spans[k].host;
        const size_t bytes = spans[k].bytes;
        if (!p || !bytes) continue;
        long i = span_floor(c, p);
        if (i >= 0 && p - c->spans[i].host < c->spans[i].bytes) continue;
        if ((size_t)(i + 1) < c->n_spans && c->spans[i + 1].host - p < bytes) continue;
        if (c->n_spans == c->cap_spans) {
            size_t cap = c->cap_spans ? 2 * c->cap_spans : 256;
            bound_span *ns = realloc(c->spans, sizeof *ns * cap);
            if (!ns) return RQ_FAIL(err, RQ_ERR_NOMEM, "cuda: bind_weights: out of host memory for the weight table");
            c->spans = ns;
            c->cap_spans = cap;
        }
        void *dev = NULL;
        cudaError_t e = cudaMalloc(&dev, bytes);
        if (e != cudaSuccess) {
            (void)cudaGetLastError();
            size_t fr = 0, tot = 0;
            cudaMemGetInfo(&fr, &tot);
            return RQ_FAIL(err, RQ_ERR_NOMEM,
                           "cuda: bind_weights: no device memory for a %zu-byte weight array (%zu of %zu MiB free)",
                           bytes, fr >> 20, tot >> 20);
        }
        /* in stream order: kernels enqueued before may still read whatever this memory held */
        if (!CU(c, cudaMemcpyAsync(dev, spans[k].host, bytes, cudaMemcpyHostToDevice, c->comp))) {
            cudaFree(dev);
            return report(c, err);
        }
        const size_t at = (size_t)(i + 1);
        memmove(c->spans + at + 1, c->spans + at, sizeof *c->spans * (c->n_spans - at));
        c->spans[at] = (bound_span){p, bytes, dev, m};
        c->n_spans++;
    }
    return RQ_OK;
}

static rq_status cuda_bind_weights(rq_backend *be, const struct rq_model *m, const rq_weight_span *spans, size_t n,
                                   rq_err *err) {
    cuda_ctx *c = be->ctx;
    if (report(c, err)) return report(c, err);
    long i = find_model(c, m);
    if (i >= 0) {
        c->models[i].count++;
        return RQ_OK;
    }
    if (c->n_models == c->cap_models) {
        size_t cap = c->cap_models ? 2 * c->cap_models : 8;
        bound_model *nm = realloc(c->models, sizeof *nm * cap);
        if (!nm) return RQ_FAIL(err, RQ_ERR_NOMEM, "cuda: bind_weights: out of host memory");
        c->models = nm;
        c->cap_models = cap;
    }
    rq_status s = upload_spans(c, m, spans, n, err);
    if (s != RQ_OK) {
        drop_spans(c, m);
        return s;
    }
    c->models[c->n_models++] = (bound_model){m, 1};
    return RQ_OK;
}

static void cuda_unbind_weights(rq_backend *be, const struct rq_model *m) {
    cuda_ctx *c = be->ctx;
    long i = find_model(c, m);
    if (i < 0) {
        FAIL(c, RQ_ERR_INTERNAL, "unbind_weights: the model %p is not bound", (const void *)m);
        return;
    }
    if (--c->models[i].count > 0) return;
    drop_spans(c, m);
    c->models[i] = c->models[--c->n_models];
}

static rq_status cuda_rebind_weights(rq_backend *be, const struct rq_model *m, const rq_weight_span *spans, size_t n,
                                     rq_err *err) {
    cuda_ctx *c = be->ctx;
    if (report(c, err)) return report(c, err);
    if (find_model(c, m) < 0) return RQ_OK; /* the next bind reads the new values */
    drop_spans(c, m);
    rq_status s = upload_spans(c, m, spans, n, err);
    if (s != RQ_OK) drop_spans(c, m); /* still bound, with no copies: ops take the per-call path */
    return s;
}

/* The device copy of a frozen weight array: host itself when it is device
 * memory already, the bound copy, else (no binding holds it) a copy in
 * scratch slot `slot` made for this call. */
static const void *weight_dev(cuda_ctx *c, const void *host, size_t bytes, int slot, const char *op,
                              const char *what) {
    if (!host || is_dev(c, host)) return host;
    const void *bound = bound_lookup(c, host, bytes);
    if (bound) return bound;
    void *d = scratch_get(c, slot, bytes);
    if (!d) {
        FAIL(c, RQ_ERR_NOMEM, "%s: no device memory for a %zu-byte copy of %s", op, bytes, what);
        return NULL;
    }
    /* in stream order: the kernels of earlier calls that read this scratch are done first */
    if (!CU(c, cudaMemcpyAsync(d, host, bytes, cudaMemcpyHostToDevice, c->comp))) return NULL;
    return d;
}

typedef struct q2_dev {
    const uint8_t *codes;
    const uint16_t *scales, *offsets;
} q2_dev;

static bool q2_on_device(cuda_ctx *c, const rq_q2_tensor *q, const char *op, q2_dev *d) {
    const size_t gb = (size_t)q->out * q->n_groups * sizeof(uint16_t);
    d->codes = weight_dev(c, q->codes, (size_t)q->out * q->row_bytes, SCR_WEIGHT0, op, "q2 codes");
    d->scales = weight_dev(c, q->scales, gb, SCR_WEIGHT1, op, "q2 scales");
    d->offsets = weight_dev(c, q->offsets, gb, SCR_WEIGHT2, op, "q2 offsets");
    return d->codes && d->scales && d->offsets;
}

/* ---- GEMM helpers ---------------------------------------------------------------------- */

static bool gemm(cuda_ctx *c, const char *op, const rqk_gemm_args *a, const char *file, int line) {
    char msg[512];
    if (rqk_gemm_run(c->gemm, a, msg, sizeof msg) == 0) return true;
    gemm_fail(c, op, msg, file, line);
    return false;
}
#define GEMM(c, op, args) gemm((c), (op), (args), __FILE__, __LINE__)

/* C[M][N] (+)= A[M][K] B[N][K]^T, plain fp32, row-major contiguous */
static void gemm_nt_f32(cuda_ctx *c, const char *op, float *C, const float *A, const float *B, int M, int N, int K,
                        float beta) {
    rqk_gemm_args a = {.trans_a = 0, .trans_b = 1, .M = M, .N = N, .K = K, .alpha = 1.0f, .beta = beta,
                       .A = A, .lda = K, .B = B, .ldb = K, .C = C, .ldc = N, .batch = 1, .ab = RQK_F32};
    GEMM(c, op, &a);
}

static bool launched(cuda_ctx *c, cudaError_t e, const char *kernel, const char *file, int line) {
    return cu_ok(c, e, kernel, file, line);
}
#define LAUNCH(c, call) launched((c), (call), #call, __FILE__, __LINE__)

/* ---- memory ops ---------------------------------------------------------------------- */

static void *cuda_alloc(rq_backend *be, size_t bytes, rq_err *err) {
    cuda_ctx *c = be->ctx;
    if (report(c, err)) return NULL;
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        size_t fr = 0, tot = 0;
        cudaMemGetInfo(&fr, &tot);
        RQ_FAIL(err, RQ_ERR_NOMEM, "cuda: cudaMalloc of %zu bytes (%.1f MiB) failed: %s (%zu of %zu MiB free)", bytes,
                bytes / 1048576.0, cudaGetErrorString(e), fr >> 20, tot >> 20);
        return NULL;
    }
    /* zeroed, as the CPU backend's memory is */
    if (!CU(c, cudaMemsetAsync(p, 0, bytes, c->comp)) || !registry_add(c, p, bytes ? bytes : 1)) {
        cudaFree(p);
        if (!report(c, err)) RQ_FAIL(err, RQ_ERR_NOMEM, "cuda: out of host memory for the allocation registry");
        return NULL;
    }
    return p;
}

static void cuda_free(rq_backend *be, void *p) {
    cuda_ctx *c = be->ctx;
    if (!p) return;
    if (!registry_remove(c, p)) {
        FAIL(c, RQ_ERR_INTERNAL, "free: %p was not allocated by this backend", p);
        return;
    }
    /* work still queued may use it; cudaFree alone does not order against our non-blocking streams */
    if (CU(c, cudaStreamSynchronize(c->copy)) && CU(c, cudaStreamSynchronize(c->comp))) CU(c, cudaFree(p));
}

static rq_status cuda_upload(rq_backend *be, void *dst, const void *src, size_t bytes, rq_err *err) {
    cuda_ctx *c = be->ctx;
    if (report(c, err)) return report(c, err);
    if (bytes && !is_dev(c, dst))
        return RQ_FAIL(err, RQ_ERR_INTERNAL, "cuda: upload: destination %p is not memory of this backend", dst);
    if (!stage_upload(c, dst, src, bytes)) return report(c, err);
    return RQ_OK;
}

static rq_status cuda_download(rq_backend *be, void *dst, const void *src, size_t bytes, rq_err *err) {
    cuda_ctx *c = be->ctx;
    if (report(c, err)) return report(c, err);
    if (bytes && !is_dev(c, src))
        return RQ_FAIL(err, RQ_ERR_INTERNAL, "cuda: download: source %p is not memory of this backend", src);
    if (!download_sync(c, dst, src, bytes)) return report(c, err);
    return RQ_OK;
}

static rq_status cuda_mem_info(rq_backend *be, size_t *free_bytes, size_t *total_bytes, rq_err *err) {
    cuda_ctx *c = be->ctx;
    if (report(c, err)) return report(c, err);
    size_t fr = 0, tot = 0;
    cudaError_t e = cudaMemGetInfo(&fr, &tot);
    if (e != cudaSuccess)
        return RQ_FAIL(err, RQ_ERR_INTERNAL, "cuda: cudaMemGetInfo failed: %s", cudaGetErrorString(e));
    *free_bytes = fr;
    *total_bytes = tot;
    return RQ_OK;
}

static void cuda_copy(rq_backend *be, void *dst, const void *src, size_t bytes) {
    cuda_ctx *c = be->ctx;
    if (!bytes || c->failed) return;
    /* cudaMemcpyDefault: unified addressing tells host from device */
    CU(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, c->comp));
}

static void cuda_gather_rows(rq_backend *be, float *dst, const float *src, const int *idx, int rows, int C) {
    cuda_ctx *c = be->ctx;
    if (rows <= 0 || c->failed || !NEED_DEV(c, "gather_rows", dst) || !NEED_DEV(c, "gather_rows", src)) return;
    const int *d_idx = ints_dev(c, idx, (size_t)rows);
    if (d_idx) LAUNCH(c, rqk_gather_rows(c->comp, dst, src, d_idx, rows, C));
}

/* ---- forward ops ------------------------------------------------------------------------ */

static void cuda_matmul_nt(rq_backend *be, float *out, const float *a, const float *b, int N, int M, int K,
                           bool accumulate) {
    cuda_ctx *c = be->ctx;
    if (N <= 0 || M <= 0 || c->failed) return;
    if (!NEED_DEV(c, "matmul_nt", out) || !NEED_DEV(c, "matmul_nt", a) || !NEED_DEV(c, "matmul_nt", b)) return;
    if (K <= 0) { /* an empty sum: out = 0 (or unchanged) */
        if (!accumulate) CU(c, cudaMemsetAsync(out, 0, sizeof(float) * (size_t)N * M, c->comp));
        return;
    }
    gemm_nt_f32(c, "matmul_nt", out, a, b, N, M, K, accumulate ? 1.0f : 0.0f);
}

static int q2_tile_rows(const rq_q2_tensor *q) { return rq_cuda_q2_tile_rows(q->out, q->in); }

/* The activation operand of a q2 GEMM: bf16 copy (rows x cols) or the fp32 original. */
static const void *q2_act(cuda_ctx *c, const float *x, int rows, int cols) {
    if (!c->q2_bf16) return x;
    uint16_t *d = scratch_get(c, SCR_BF16_IN, (size_t)rows * cols * sizeof(uint16_t));
    if (!d || !LAUNCH(c, rqk_f32_to_bf16(c->comp, d, x, (size_t)rows, (size_t)cols, (size_t)cols))) return NULL;
    return d;
}

static void cuda_linear(rq_backend *be, float *out, const float *in, const rq_linear *W, int N, bool accumulate) {
    cuda_ctx *c = be->ctx;
    if (N <= 0 || W->out <= 0 || c->failed) return;
    if (!NEED_DEV(c, "linear", out) || !NEED_DEV(c, "linear", in)) return;
    if (W->w) {
        const float *w = weight_dev(c, W->w, sizeof(float) * (size_t)W->out * W->in, SCR_WEIGHT0, "linear", "an fp32 weight");
        if (w) gemm_nt_f32(c, "linear", out, in, w, N, W->out, W->in, accumulate ? 1.0f : 0.0f);
        return;
    }
    const rq_q2_tensor *q = W->q2;
    q2_dev d;
    if (!q2_on_device(c, q, "linear", &d)) return;
    const void *x = q2_act(c, in, N, q->in);
    const int tile_rows = q2_tile_rows(q);
    const size_t es = c->q2_bf16 ? 2 : 4;
    void *tile = scratch_get(c, SCR_TILE, (size_t)tile_rows * q->in * es);
    if (!x || !tile) return;
    for (int r0 = 0; r0 < q->out; r0 += tile_rows) {
        const int r1 = r0 + tile_rows < q->out ? r0 + tile_rows : q->out;
        if (!LAUNCH(c, rqk_q2_dequant(c->comp, tile, c->q2_bf16, d.codes, d.scales, d.offsets, q->codebook, r0, r1, q->in,
                                 q->group_size, q->n_groups, q->row_bytes)))
            return;
        /* out[:, r0:r1] (+)= x tile^T */
        rqk_gemm_args a = {.trans_a = 0, .trans_b = 1, .M = N, .N = r1 - r0, .K = q->in, .alpha = 1.0f,
                           .beta = accumulate ? 1.0f : 0.0f, .A = x, .lda = q->in, .B = tile, .ldb = q->in,
                           .C = out + r0, .ldc = W->out, .batch = 1, .ab = c->q2_bf16 ? RQK_BF16 : RQK_F32};
        if (!GEMM(c, "linear (q2)", &a)) return;
    }
}

static void cuda_embedding(rq_backend *be, float *out, const int *tokens, const float *table, int N, int C) {
    cuda_ctx *c = be->ctx;
    if (N <= 0 || c->failed || !NEED_DEV(c, "embedding", out)) return;
    if (is_dev(c, table)) {
        const int *d_tok = ints_dev(c, tokens, (size_t)N);
        if (d_tok) LAUNCH(c, rqk_gather_rows(c->comp, out, table, d_tok, N, C));
        return;
    }
    /* a host table of unknown row count: gather the rows on the host, upload them */
    if (is_dev(c, tokens)) {
        FAIL(c, RQ_ERR_INTERNAL, "embedding: device token ids with a host embedding table are not supported");
        return;
    }
    const size_t row = sizeof(float) * (size_t)C;
    float *host = malloc(row * (size_t)N);
    if (!host) {
        FAIL(c, RQ_ERR_NOMEM, "embedding: out of host memory for %d rows", N);
        return;
    }
    for (int n = 0; n < N; n++) memcpy(host + (size_t)n * C, table + (size_t)tokens[n] * C, row);
    stage_upload(c, out, host, row * (size_t)N);
    free(host);
}

static void cuda_rmsnorm_fwd(rq_backend *be, float *out, float *rstd, const float *x, const float *w, int N, int C,
                             float eps) {
    cuda_ctx *c = be->ctx;
    if (N <= 0 || c->failed) return;
    if (!NEED_DEV(c, "rmsnorm_fwd", out) || !NEED_DEV(c, "rmsnorm_fwd", rstd) || !NEED_DEV(c, "rmsnorm_fwd", x)) return;
    const float *dw = weight_dev(c, w, sizeof(float) * (size_t)C, SCR_WEIGHT0, "rmsnorm_fwd", "a norm weight");
    if (dw) LAUNCH(c, rqk_rmsnorm_fwd(c->comp, out, rstd, x, dw, N, C, eps));
}

static void cuda_rope_fwd(rq_backend *be, float *x, const float *cos_t, const float *sin_t, int B, int T, int n_heads,
                          int hd) {
    cuda_ctx *c = be->ctx;
    if (c->failed || !NEED_DEV(c, "rope_fwd", x) || !NEED_DEV(c, "rope_fwd", cos_t) || !NEED_DEV(c, "rope_fwd", sin_t))
        return;
    LAUNCH(c, rqk_rope(c->comp, x, cos_t, sin_t, B, T, n_heads, hd, 0));
}

/* Attention through head-major copies, so that each (sequence, head) pair is
 * one entry of a strided batched GEMM: Qt [B][nh][T][hd], K and V repeated per
 * query head Kx, Vx [B][nh][Tk][hd]. */
static void cuda_attention_fwd(rq_backend *be, float *out, float *att, const float *q, const float *k,
                               const float *v, int B, int T, int pos0, int Tk_max, int nh, int nkv, int hd) {
    cuda_ctx *c = be->ctx;
    const char *op = "attention_fwd";
    if (B <= 0 || T <= 0 || c->failed) return;
    if (!NEED_DEV(c, op, out) || !NEED_DEV(c, op, att) || !NEED_DEV(c, op, q) || !NEED_DEV(c, op, k) ||
        !NEED_DEV(c, op, v))
        return;
    const int Tk = pos0 + T, batch = B * nh;
    /* the layout rq_cuda_attention_fwd_floats sizes */
    const size_t nq = (size_t)batch * T * hd, nkx = (size_t)batch * Tk * hd;
    float *ws =
        scratch_get(c, SCR_ATTN, sizeof(float) * rq_cuda_attention_fwd_floats(B, T, Tk, nh, hd, att != NULL));
    if (!ws) return;
    float *Qt = ws, *Ot = Qt + nq, *Kx = Ot + nq, *Vx = Kx + nkx, *S = att ? att : Vx + nkx;
    if (!LAUNCH(c, rqk_heads_to_major(c->comp, Qt, q, B, T, T, nh, hd)) ||
        !LAUNCH(c, rqk_kv_expand(c->comp, Kx, k, B, Tk, Tk_max, nh, nkv, hd)) ||
        !LAUNCH(c, rqk_kv_expand(c->comp, Vx, v, B, Tk, Tk_max, nh, nkv, hd)))
        return;
    rqk_gemm_args s = {.trans_a = 0, .trans_b = 1, .M = T, .N = Tk, .K = hd, .alpha = 1.0f / sqrtf((float)hd),
                       .beta = 0.0f, .A = Qt, .lda = hd, .sa = (long long)T * hd, .B = Kx, .ldb = hd,
                       .sb = (long long)Tk * hd, .C = S, .ldc = Tk, .sc = (long long)T * Tk, .batch = batch,
                       .ab = RQK_F32};
    if (!GEMM(c, op, &s) || !LAUNCH(c, rqk_causal_softmax(c->comp, S, batch * T, T, Tk, pos0))) return;
    rqk_gemm_args o = {.trans_a = 0, .trans_b = 0, .M = T, .N = hd, .K = Tk, .alpha = 1.0f, .beta = 0.0f,
                       .A = S, .lda = Tk, .sa = (long long)T * Tk, .B = Vx, .ldb = hd, .sb = (long long)Tk * hd,
                       .C = Ot, .ldc = hd, .sc = (long long)T * hd, .batch = batch, .ab = RQK_F32};
    if (!GEMM(c, op, &o)) return;
    LAUNCH(c, rqk_heads_from_major(c->comp, out, Ot, B, T, nh, hd, 0));
}

static void cuda_swiglu_fwd(rq_backend *be, float *out, const float *gate, const float *up, int N, int H) {
    cuda_ctx *c = be->ctx;
    if (c->failed || !NEED_DEV(c, "swiglu_fwd", out) || !NEED_DEV(c, "swiglu_fwd", gate) ||
        !NEED_DEV(c, "swiglu_fwd", up))
        return;
    LAUNCH(c, rqk_swiglu_fwd(c->comp, out, gate, up, (size_t)N * H));
}

static void cuda_cache_store(rq_backend *be, float *cache, const float *src, int B, int T, int pos0, int Tmax,
                             int C) {
    cuda_ctx *c = be->ctx;
    if (c->failed || !NEED_DEV(c, "cache_store", cache) || !NEED_DEV(c, "cache_store", src)) return;
    LAUNCH(c, rqk_cache_store(c->comp, cache, src, B, T, pos0, Tmax, C));
}

static void cuda_add_inplace(rq_backend *be, float *x, const float *y, size_t n) {
    cuda_ctx *c = be->ctx;
    if (c->failed || !NEED_DEV(c, "add_inplace", x) || !NEED_DEV(c, "add_inplace", y)) return;
    LAUNCH(c, rqk_add_inplace(c->comp, x, y, n));
}

static size_t cuda_scratch_bytes(const rq_backend *be, const rq_config *cfg, int batch, int seq, bool train, bool q2) {
    const cuda_ctx *c = be->ctx;
    return rq_cuda_scratch_bytes(c->q2_bf16, cfg, batch, seq, train, q2);
}

/* ---- training ops -------------------------------------------------------------------------- */

static void cuda_linear_bwd_input(rq_backend *be, float *din, const float *dout, const rq_linear *W, int N) {
    cuda_ctx *c = be->ctx;
    const char *op = "linear_bwd_input";
    if (N <= 0 || W->out <= 0 || W->in <= 0 || c->failed) return;
    if (!NEED_DEV(c, op, din) || !NEED_DEV(c, op, dout)) return;
    if (W->w) { /* din[N][in] += dout[N][out] W[out][in] */
        const float *w = weight_dev(c, W->w, sizeof(float) * (size_t)W->out * W->in, SCR_WEIGHT0, op, "an fp32 weight");
        if (!w) return;
        rqk_gemm_args a = {.trans_a = 0, .trans_b = 0, .M = N, .N = W->in, .K = W->out, .alpha = 1.0f, .beta = 1.0f,
                           .A = dout, .lda = W->out, .B = w, .ldb = W->in, .C = din, .ldc = W->in, .batch = 1,
                           .ab = RQK_F32};
        GEMM(c, op, &a);
        return;
    }
    const rq_q2_tensor *q = W->q2;
    q2_dev d;
    if (!q2_on_device(c, q, op, &d)) return;
    const void *g = q2_act(c, dout, N, q->out);
    const int tile_rows = q2_tile_rows(q);
    const size_t es = c->q2_bf16 ? 2 : 4;
    void *tile = scratch_get(c, SCR_TILE, (size_t)tile_rows * q->in * es);
    if (!g || !tile) return;
    for (int r0 = 0; r0 < q->out; r0 += tile_rows) {
        const int r1 = r0 + tile_rows < q->out ? r0 + tile_rows : q->out;
        if (!LAUNCH(c, rqk_q2_dequant(c->comp, tile, c->q2_bf16, d.codes, d.scales, d.offsets, q->codebook, r0, r1, q->in,
                                 q->group_size, q->n_groups, q->row_bytes)))
            return;
        /* din += dout[:, r0:r1] tile */
        rqk_gemm_args a = {.trans_a = 0, .trans_b = 0, .M = N, .N = q->in, .K = r1 - r0, .alpha = 1.0f, .beta = 1.0f,
                           .A = (const char *)g + (size_t)r0 * es, .lda = q->out, .B = tile, .ldb = q->in, .C = din,
                           .ldc = q->in, .batch = 1, .ab = c->q2_bf16 ? RQK_BF16 : RQK_F32};
        if (!GEMM(c, "linear_bwd_input (q2)", &a)) return;
    }
}

static void cuda_matmul_tn_acc(rq_backend *be, float *dW, const float *dout, const float *in, int N, int M, int K) {
    cuda_ctx *c = be->ctx;
    const char *op = "matmul_tn_acc";
    if (N <= 0 || M <= 0 || K <= 0 || c->failed) return;
    if (!NEED_DEV(c, op, dW) || !NEED_DEV(c, op, dout) || !NEED_DEV(c, op, in)) return;
    /* dW[M][K] += dout[N][M]^T in[N][K] (beta = 1) */
    rqk_gemm_args a = {.trans_a = 1, .trans_b = 0, .M = M, .N = K, .K = N, .alpha = 1.0f, .beta = 1.0f, .A = dout,
                       .lda = M, .B = in, .ldb = K, .C = dW, .ldc = K, .batch = 1, .ab = RQK_F32};
    GEMM(c, op, &a);
}

static void cuda_rmsnorm_bwd(rq_backend *be, float *dx, const float *dout, const float *x, const float *w,
                             const float *rstd, int N, int C) {
    cuda_ctx *c = be->ctx;
    const char *op = "rmsnorm_bwd";
    if (N <= 0 || c->failed) return;
    if (!NEED_DEV(c, op, dx) || !NEED_DEV(c, op, dout) || !NEED_DEV(c, op, x) || !NEED_DEV(c, op, rstd)) return;
    const float *dw = weight_dev(c, w, sizeof(float) * (size_t)C, SCR_WEIGHT0, op, "a norm weight");
    if (dw) LAUNCH(c, rqk_rmsnorm_bwd(c->comp, dx, dout, x, dw, rstd, N, C));
}

static void cuda_rope_bwd(rq_backend *be, float *dx, const float *cos_t, const float *sin_t, int B, int T, int n_heads,
                          int hd) {
    cuda_ctx *c = be->ctx;
    if (c->failed || !NEED_DEV(c, "rope_bwd", dx) || !NEED_DEV(c, "rope_bwd", cos_t) ||
        !NEED_DEV(c, "rope_bwd", sin_t))
        return;
    LAUNCH(c, rqk_rope(c->comp, dx, cos_t, sin_t, B, T, n_heads, hd, 1));
}

/* From the saved P (att): dVx = P^T dOt, dP = dOt Vx^T, dS = softmax backward,
 * dQt = dS Kx, dKx = dS^T Qt, each one batched GEMM over (sequence, head);
 * then dq += dQt (back to [B][T][nh][hd]) and dk, dv += the sums of dKx, dVx
 * over each group's query heads. */
static void cuda_attention_bwd(rq_backend *be, float *dq, float *dk, float *dv, const float *dout, const float *att,
                               const float *q, const float *k, const float *v, int B, int T, int nh, int nkv, int hd) {
    cuda_ctx *c = be->ctx;
    const char *op = "attention_bwd";
    if (B <= 0 || T <= 0 || c->failed) return;
    if (!NEED_DEV(c, op, dq) || !NEED_DEV(c, op, dk) || !NEED_DEV(c, op, dv) || !NEED_DEV(c, op, dout) ||
        !NEED_DEV(c, op, att) || !NEED_DEV(c, op, q) || !NEED_DEV(c, op, k) || !NEED_DEV(c, op, v))
        return;
    const int batch = B * nh;
    const size_t nx = (size_t)batch * T * hd; /* the layout rq_cuda_attention_bwd_floats sizes */
    float *ws = scratch_get(c, SCR_ATTN, sizeof(float) * rq_cuda_attention_bwd_floats(B, T, nh, hd));
    if (!ws) return;
    float *Qt = ws, *Kx = Qt + nx, *Vx = Kx + nx, *dOt = Vx + nx, *dQt = dOt + nx, *dKx = dQt + nx, *dVx = dKx + nx;
    float *dS = dVx + nx;
    const long long sx = (long long)T * hd, ss = (long long)T * T;
    if (!LAUNCH(c, rqk_heads_to_major(c->comp, Qt, q, B, T, T, nh, hd)) ||
        !LAUNCH(c, rqk_kv_expand(c->comp, Kx, k, B, T, T, nh, nkv, hd)) ||
        !LAUNCH(c, rqk_kv_expand(c->comp, Vx, v, B, T, T, nh, nkv, hd)) ||
        !LAUNCH(c, rqk_heads_to_major(c->comp, dOt, dout, B, T, T, nh, hd)))
        return;
    rqk_gemm_args g_dv = {.trans_a = 1, .trans_b = 0, .M = T, .N = hd, .K = T, .alpha = 1.0f, .beta = 0.0f, .A = att,
                          .lda = T, .sa = ss, .B = dOt, .ldb = hd, .sb = sx, .C = dVx, .ldc = hd, .sc = sx,
                          .batch = batch, .ab = RQK_F32};
    rqk_gemm_args g_dp = {.trans_a = 0, .trans_b = 1, .M = T, .N = T, .K = hd, .alpha = 1.0f, .beta = 0.0f, .A = dOt,
                          .lda = hd, .sa = sx, .B = Vx, .ldb = hd, .sb = sx, .C = dS, .ldc = T, .sc = ss,
                          .batch = batch, .ab = RQK_F32};
    rqk_gemm_args g_dq = {.trans_a = 0, .trans_b = 0, .M = T, .N = hd, .K = T, .alpha = 1.0f, .beta = 0.0f, .A = dS,
                          .lda = T, .sa = ss, .B = Kx, .ldb = hd, .sb = sx, .C = dQt, .ldc = hd, .sc = sx,
                          .batch = batch, .ab = RQK_F32};
    rqk_gemm_args g_dk = {.trans_a = 1, .trans_b = 0, .M = T, .N = hd, .K = T, .alpha = 1.0f, .beta = 0.0f, .A = dS,
                          .lda = T, .sa = ss, .B = Qt, .ldb = hd, .sb = sx, .C = dKx, .ldc = hd, .sc = sx,
                          .batch = batch, .ab = RQK_F32};
    if (!GEMM(c, op, &g_dv) || !GEMM(c, op, &g_dp) ||
        !LAUNCH(c, rqk_softmax_bwd(c->comp, dS, att, batch * T, T, 1.0f / sqrtf((float)hd))) || !GEMM(c, op, &g_dq) ||
        !GEMM(c, op, &g_dk))
        return;
    if (!LAUNCH(c, rqk_heads_from_major(c->comp, dq, dQt, B, T, nh, hd, 1)) ||
        !LAUNCH(c, rqk_kv_reduce_acc(c->comp, dk, dKx, B, T, nh, nkv, hd)))
        return;
    LAUNCH(c, rqk_kv_reduce_acc(c->comp, dv, dVx, B, T, nh, nkv, hd));
}

static void cuda_swiglu_bwd(rq_backend *be, float *dgate, float *dup, const float *dout, const float *gate,
                            const float *up, int N, int H) {
    cuda_ctx *c = be->ctx;
    const char *op = "swiglu_bwd";
    if (c->failed || !NEED_DEV(c, op, dgate) || !NEED_DEV(c, op, dup) || !NEED_DEV(c, op, dout) ||
        !NEED_DEV(c, op, gate) || !NEED_DEV(c, op, up))
        return;
    LAUNCH(c, rqk_swiglu_bwd(c->comp, dgate, dup, dout, gate, up, (size_t)N * H));
}

static void cuda_group_pool_fwd(rq_backend *be, float *out, const float *in, int N, int C, int gs) {
    cuda_ctx *c = be->ctx;
    if (c->failed || !NEED_DEV(c, "group_pool_fwd", out) || !NEED_DEV(c, "group_pool_fwd", in)) return;
    LAUNCH(c, rqk_group_pool_fwd(c->comp, out, in, N, C, gs));
}

static void cuda_group_pool_bwd(rq_backend *be, float *din, const float *dout, int N, int C, int gs) {
    cuda_ctx *c = be->ctx;
    if (c->failed || !NEED_DEV(c, "group_pool_bwd", din) || !NEED_DEV(c, "group_pool_bwd", dout)) return;
    LAUNCH(c, rqk_group_pool_bwd(c->comp, din, dout, N, C, gs));
}

static void cuda_cross_entropy(rq_backend *be, float *loss, float *dlogits, const float *logits, const int *targets,
                               int N, int V, float grad_scale) {
    cuda_ctx *c = be->ctx;
    const char *op = "cross_entropy";
    if (N <= 0 || c->failed || !NEED_DEV(c, op, dlogits) || !NEED_DEV(c, op, logits)) return;
    const int *d_tgt = ints_dev(c, targets, (size_t)N);
    if (!d_tgt) return;
    const bool host_loss = !is_dev(c, loss);
    float *d_loss = host_loss ? scratch_get(c, SCR_LOSS, sizeof(float) * (size_t)N) : loss;
    if (!d_loss || !LAUNCH(c, rqk_cross_entropy(c->comp, d_loss, dlogits, logits, d_tgt, N, V, grad_scale))) return;
    if (host_loss) download_sync(c, loss, d_loss, sizeof(float) * (size_t)N);
}

/* the fp64 result of a reduction kernel, to the host */
static double reduction_result(cuda_ctx *c) {
    if (!download_sync(c, c->red_host, c->red + RQK_REDUCE_BLOCKS, sizeof(double))) return NAN;
    return *c->red_host;
}

static double cuda_mse(rq_backend *be, float *d, const float *a, const float *b, size_t n, float grad_scale) {
    cuda_ctx *c = be->ctx;
    if (c->failed || !NEED_DEV(c, "mse", d) || !NEED_DEV(c, "mse", a) || !NEED_DEV(c, "mse", b)) return NAN;
    if (!n) return 0.0;
    if (!LAUNCH(c, rqk_mse(c->comp, c->red + RQK_REDUCE_BLOCKS, c->red, d, a, b, n, grad_scale))) return NAN;
    return reduction_result(c);
}

/* the Adam scalars exactly as the CPU backend computes them */
static void cuda_adam_common(cuda_ctx *c, const char *op, float *param, const float *grad, float *m, float *v,
                             size_t n, float lr, float beta1, float beta2, float eps, float decay_mul, float l2, int t) {
    if (c->failed || !NEED_DEV(c, op, param) || !NEED_DEV(c, op, grad) || !NEED_DEV(c, op, m) || !NEED_DEV(c, op, v))
        return;
    double bc1 = 1.0 - pow((double)beta1, t), bc2 = 1.0 - pow((double)beta2, t);
    float step_size = (float)((double)lr / bc1), bc2_sqrt = (float)sqrt(bc2);
    float omb1 = (float)(1.0 - (double)beta1), omb2 = (float)(1.0 - (double)beta2);
    LAUNCH(c, rqk_adam(c->comp, param, grad, m, v, n, beta2, omb1, omb2, eps, decay_mul, l2, step_size, bc2_sqrt));
}

static void cuda_adamw(rq_backend *be, float *param, const float *grad, float *m, float *v, size_t n, float lr,
                       float beta1, float beta2, float eps, float weight_decay, int t) {
    float decay_mul = (float)(1.0 - (double)lr * (double)weight_decay);
    cuda_adam_common(be->ctx, "adamw", param, grad, m, v, n, lr, beta1, beta2, eps, decay_mul, 0.0f, t);
}

static void cuda_adam_l2(rq_backend *be, float *param, const float *grad, float *m, float *v, size_t n, float lr,
                         float beta1, float beta2, float eps, float weight_decay, int t) {
    cuda_adam_common(be->ctx, "adam_l2", param, grad, m, v, n, lr, beta1, beta2, eps, 1.0f, weight_decay, t);
}

static double cuda_sum_squares(rq_backend *be, const float *x, size_t n) {
    cuda_ctx *c = be->ctx;
    if (c->failed || !NEED_DEV(c, "sum_squares", x)) return NAN;
    if (!n) return 0.0;
    if (!LAUNCH(c, rqk_sum_squares(c->comp, c->red + RQK_REDUCE_BLOCKS, c->red, x, n))) return NAN;
    return reduction_result(c);
}

static void cuda_scale(rq_backend *be, float *x, float s, size_t n) {
    cuda_ctx *c = be->ctx;
    if (c->failed || !NEED_DEV(c, "scale", x)) return;
    LAUNCH(c, rqk_scale(c->comp, x, s, n));
}

static void cuda_fill_zero(rq_backend *be, float *x, size_t n) {
    cuda_ctx *c = be->ctx;
    if (!n || c->failed || !NEED_DEV(c, "fill_zero", x)) return;
    CU(c, cudaMemsetAsync(x, 0, sizeof(float) * n, c->comp));
}

/* ---- lifetime ---------------------------------------------------------------------------------- */

static void cuda_destroy(rq_backend *be) {
    if (!be) return;
    cuda_ctx *c = be->ctx;
    if (c) {
        if (c->comp) cudaStreamSynchronize(c->comp);
        if (c->copy) cudaStreamSynchronize(c->copy);
        for (size_t i = 0; i < c->n_spans; i++) cudaFree(c->spans[i].dev); /* models the caller left bound */
        free(c->spans);
        free(c->models);
        for (size_t i = 0; i < c->n_blocks; i++) cudaFree((void *)c->blocks[i].base); /* leaked by the caller */
        free(c->blocks);
        for (int i = 0; i < N_SCRATCH; i++)
            if (c->scr[i].p) cudaFree(c->scr[i].p);
        for (int i = 0; i < N_STAGES; i++) {
            if (c->stages[i].pinned) cudaFreeHost(c->stages[i].pinned);
            if (c->stages[i].done) cudaEventDestroy(c->stages[i].done);
        }
        if (c->red) cudaFree(c->red);
        if (c->red_host) cudaFreeHost(c->red_host);
        rqk_gemm_destroy(c->gemm);
        if (c->comp_mark) cudaEventDestroy(c->comp_mark);
        if (c->comp) cudaStreamDestroy(c->comp);
        if (c->copy) cudaStreamDestroy(c->copy);
        free(c);
    }
    free(be);
}

/* a failed setup call: the error names it, and what was built is torn down */
#define SETUP(call)                                                                                           \
    do {                                                                                                      \
        cudaError_t e_ = (call);                                                                              \
        if (e_ != cudaSuccess) {                                                                              \
            RQ_FAIL(err, e_ == cudaErrorMemoryAllocation ? RQ_ERR_NOMEM : RQ_ERR_INTERNAL,                    \
                    "cuda: %s failed: %s (%s)", #call, cudaGetErrorName(e_), cudaGetErrorString(e_));        \
            goto fail;                                                                                        \
        }                                                                                                     \
    } while (0)

rq_status rq_backend_cuda_create(int n_threads, rq_backend **out, rq_err *err) {
    *out = NULL;
    int n_dev = 0;
    cudaError_t e = cudaGetDeviceCount(&n_dev);
    int rt = 0, drv = 0;
    cudaRuntimeGetVersion(&rt);
    cudaDriverGetVersion(&drv); /* 0 when no driver is installed */
    if (e == cudaErrorInsufficientDriver && drv > 0) {
        (void)cudaGetLastError();
        return RQ_FAIL(err, RQ_ERR_UNSUPPORTED,
                       "--device cuda: the NVIDIA driver (CUDA %d.%d) is older than the CUDA runtime rilq was built "
                       "with (%d.%d): update the driver or rebuild with that machine's CUDA toolkit",
                       drv / 1000, drv % 1000 / 10, rt / 1000, rt % 1000 / 10);
    }
    if (e != cudaSuccess || n_dev < 1) {
        (void)cudaGetLastError();
        return RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "--device cuda: no CUDA device found (%s)",
                       drv == 0 ? "no NVIDIA driver is installed" : e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
    }
    int cc_major = 0, cc_minor = 0;
    if (cudaDeviceGetAttribute(&cc_major, cudaDevAttrComputeCapabilityMajor, 0) == cudaSuccess &&
        cudaDeviceGetAttribute(&cc_minor, cudaDevAttrComputeCapabilityMinor, 0) == cudaSuccess && cc_major < 8)
        return RQ_FAIL(err, RQ_ERR_UNSUPPORTED,
                       "--device cuda: the GPU has compute capability %d.%d; the CUDA backend needs 8.0 or newer "
                       "(bf16 tensor cores; built for sm_80 and sm_90)",
                       cc_major, cc_minor);
    (void)cudaGetLastError();
    rq_backend *be = rq_calloc(1, sizeof *be, err);
    if (!be) return RQ_ERR_NOMEM;
    cuda_ctx *c = rq_calloc(1, sizeof *c, err);
    if (!c) {
        free(be);
        return RQ_ERR_NOMEM;
    }
    be->ctx = c;
    be->destroy = cuda_destroy;
    /* the first visible device (CUDA_VISIBLE_DEVICES picks which) */
    c->device = 0;
    SETUP(cudaSetDevice(c->device));
    SETUP(cudaStreamCreateWithFlags(&c->comp, cudaStreamNonBlocking));
    SETUP(cudaStreamCreateWithFlags(&c->copy, cudaStreamNonBlocking));
    SETUP(cudaEventCreateWithFlags(&c->comp_mark, cudaEventDisableTiming));
    for (int i = 0; i < N_STAGES; i++) SETUP(cudaEventCreateWithFlags(&c->stages[i].done, cudaEventDisableTiming));
    SETUP(cudaMalloc((void **)&c->red, sizeof(double) * (RQK_REDUCE_BLOCKS + 1)));
    SETUP(cudaHostAlloc((void **)&c->red_host, sizeof(double), cudaHostAllocDefault));
    {
        char msg[512];
        if (rqk_gemm_create(&c->gemm, c->comp, RQ_CUDA_GEMM_WORKSPACE_BYTES, msg, sizeof msg)) {
            RQ_FAIL(err, RQ_ERR_INTERNAL, "cuda: %s", msg);
            goto fail;
        }
    }
    /* RILQ_CUDA_PRECISION=fp32: q2 linears in fp32 (exact dequantized weights), for parity checks */
    const char *prec = getenv("RILQ_CUDA_PRECISION");
    if (prec && strcmp(prec, "fp32") && strcmp(prec, "bf16")) {
        RQ_FAIL(err, RQ_ERR_ARG, "RILQ_CUDA_PRECISION is '%s' (expected bf16 or fp32)", prec);
        goto fail;
    }
    c->q2_bf16 = !(prec && !strcmp(prec, "fp32"));
    be->name = "cuda";
    be->caps = (rq_backend_caps){.weights_on_host = false, .device_memory = true};
    be->n_threads = n_threads > 0 ? n_threads : 1;
    be->alloc = cuda_alloc;
    be->free = cuda_free;
    be->upload = cuda_upload;
    be->download = cuda_download;
    be->mem_info = cuda_mem_info;
    be->scratch_bytes = cuda_scratch_bytes;
    be->copy = cuda_copy;
    be->gather_rows = cuda_gather_rows;
    be->linear = cuda_linear;
    be->matmul_nt = cuda_matmul_nt;
    be->embedding = cuda_embedding;
    be->rmsnorm_fwd = cuda_rmsnorm_fwd;
    be->rope_fwd = cuda_rope_fwd;
    be->attention_fwd = cuda_attention_fwd;
    be->swiglu_fwd = cuda_swiglu_fwd;
    be->cache_store = cuda_cache_store;
    be->add_inplace = cuda_add_inplace;
    be->linear_bwd_input = cuda_linear_bwd_input;
    be->matmul_tn_acc = cuda_matmul_tn_acc;
    be->rmsnorm_bwd = cuda_rmsnorm_bwd;
    be->rope_bwd = cuda_rope_bwd;
    be->attention_bwd = cuda_attention_bwd;
    be->swiglu_bwd = cuda_swiglu_bwd;
    be->group_pool_fwd = cuda_group_pool_fwd;
    be->group_pool_bwd = cuda_group_pool_bwd;
    be->cross_entropy = cuda_cross_entropy;
    be->mse = cuda_mse;
    be->adamw = cuda_adamw;
    be->adam_l2 = cuda_adam_l2;
    be->sum_squares = cuda_sum_squares;
    be->scale = cuda_scale;
    be->fill_zero = cuda_fill_zero;
    be->bind_weights = cuda_bind_weights;
    be->unbind_weights = cuda_unbind_weights;
    be->rebind_weights = cuda_rebind_weights;
    *out = be;
    return RQ_OK;
fail:
    cuda_destroy(be);
    return err && err->code ? err->code : RQ_ERR_INTERNAL;
}
