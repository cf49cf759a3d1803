/* The CPU backend: fp32, CBLAS GEMMs (OpenBLAS), OpenMP loops.
 * q2 weights are dequantized into one held scratch just before each GEMM. */
#include <cblas.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>

#include "../quant/q2.h"
#include "backend.h"
#include "cpu_internal.h"
#include "cpu_matvec.h"
#include "ops_math.h"
#include "scratch.h"


static void *cpu_alloc(rq_backend *be, size_t bytes, rq_err *err) { return rq_alloc_aligned(bytes, err); }
static void cpu_free(rq_backend *be, void *p) { free(p); }
static rq_status cpu_copy_bytes(rq_backend *be, void *dst, const void *src, size_t bytes, rq_err *err) {
    if (bytes) memmove(dst, src, bytes);
    return RQ_OK;
}

/* Large copies (the residual stream, once per layer) are split across the
 * cores; buffers that overlap are copied as one memmove. */
static void cpu_copy(rq_backend *be, void *dst, const void *src, size_t bytes) {
    const char *s = src;
    char *d = dst;
    if (bytes < RQ_CPU_PARALLEL_BYTES || (d < s + bytes && s < d + bytes)) {
        if (bytes) memmove(dst, src, bytes);
        return;
    }
#pragma omp parallel for schedule(static)
    for (int k = 0; k < RQ_CPU_PARALLEL_PARTS; k++) {
        size_t lo = bytes * (size_t)k / RQ_CPU_PARALLEL_PARTS, hi = bytes * (size_t)(k + 1) / RQ_CPU_PARALLEL_PARTS;
        memcpy(d + lo, s + lo, hi - lo);
    }
}

static void cpu_gather_rows(rq_backend *be, float *dst, const float *src, const int *idx, int rows, int C) {
    for (int r = 0; r < rows; r++) memcpy(dst + (size_t)r * C, src + (size_t)idx[r] * C, sizeof(float) * C);
}

static void cpu_matmul_nt(rq_backend *be, float *out, const float *a, const float *b, int N, int M, int K,
                          bool accumulate) {
    if (N == 0 || M == 0) return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, M, K, 1.0f, a, K, b, K, accumulate ? 1.0f : 0.0f, out,
                M);
}

static void cpu_linear(rq_backend *be, float *out, const float *in, const rq_linear *W, int N, bool accumulate) {
    if (W->w) {
        cpu_matmul_nt(be, out, in, W->w, N, W->out, W->in, accumulate);
        return;
    }
    /* q2: dequantize as many rows as the tile holds (the whole weight of a small
     * model) and run one GEMM over them: one large GEMM per projection instead of
     * many small ones that each repack the activations */
    cpu_ctx *c = be->ctx;
    const int rows = rq_cpu_q2_rows_per_gemm(c, W->out, W->in);
    for (int r0 = 0; r0 < W->out; r0 += rows) {
        int r1 = r0 + rows < W->out ? r0 + rows : W->out;
        rq_q2_dequant_rows(W->q2, r0, r1, c->tile, 0);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, r1 - r0, W->in, 1.0f, in, W->in, c->tile, W->in,
                    accumulate ? 1.0f : 0.0f, out + r0, W->out);
    }
}

static void cpu_embedding(rq_backend *be, float *out, const int *tokens, const float *table, int N, int C) {
    for (int n = 0; n < N; n++) memcpy(out + (size_t)n * C, table + (size_t)tokens[n] * C, sizeof(float) * C);
}

static void cpu_rmsnorm_fwd(rq_backend *be, float *out, float *rstd, const float *x, const float *w, int N, int C,
                            float eps) {
#pragma omp parallel for schedule(static) if ((size_t)N * C >= RQ_CPU_PARALLEL_FLOATS)
    for (int n = 0; n < N; n++) {
        const float *xr = x + (size_t)n * C;
        float *o = out + (size_t)n * C;
        float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
        for (int i = 0; i < C; i++) ss += xr[i] * xr[i];
        float r = rq_rms_rstd(ss, C, eps);
        if (rstd) rstd[n] = r;
        for (int i = 0; i < C; i++) o[i] = rq_rms_apply(w[i], xr[i], r);
    }
}

static void cpu_rope_fwd(rq_backend *be, float *x, const float *cos_t, const float *sin_t, int B, int T,
                         int n_heads, int hd) {
    int half = hd / 2;
#pragma omp parallel for collapse(2) schedule(static) if ((size_t)B * T * n_heads * hd >= RQ_CPU_PARALLEL_FLOATS)
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            const float *c = cos_t + (size_t)t * half, *s = sin_t + (size_t)t * half;
            float *row = x + ((size_t)b * T + t) * n_heads * hd;
            for (int h = 0; h < n_heads; h++) {
                float *xh = row + (size_t)h * hd;
                for (int i = 0; i < half; i++) rq_rope_pair(&xh[i], &xh[i + half], c[i], s[i]);
            }
        }
}

/* Causal attention of one (sequence, query head) in blocks of
 * RQ_CPU_ATTENTION_BLOCK queries: query t of n sits at position pos0+t and sees
 * keys 0 .. pos0+t, positions < pos0 in rows of kp/vp and the rest in rows of
 * ko/vo (strided head slices: ldq = ldo = nh*hd, ldk = nkv*hd). Per block:
 * S = Q_blk K^T over the keys its last query can see, a masked row softmax, then
 * O_blk = P_blk V; keys past a block's last query are never computed, so causal
 * training runs about half the full T x T work. When the two key runs are one
 * (ko = kp + pos0 rows: a cache) each product is a single GEMM; else each is
 * split at pos0, prefix first. p holds the scores [n][ldp]; keep_all: zeros up to
 * ldp (a kept att matrix), else up to the block's key count. Single-threaded GEMMs. */
static void attend_head(float *oh, float *p, int ldp, bool keep_all, const float *qh, const float *kp,
                        const float *vp, const float *ko, const float *vo, int n, int pos0, int nh, int nkv,
                        int hd, float scale) {
    const int ldq = nh * hd, ldk = nkv * hd;
    const bool one_run = pos0 == 0 || (ko == kp + (size_t)pos0 * ldk && vo == vp + (size_t)pos0 * ldk);
    const float *k0 = one_run ? ko - (size_t)pos0 * ldk : kp, *v0 = one_run ? vo - (size_t)pos0 * ldk : vp;
    for (int t0 = 0; t0 < n; t0 += RQ_CPU_ATTENTION_BLOCK) {
        const int t1 = t0 + RQ_CPU_ATTENTION_BLOCK < n ? t0 + RQ_CPU_ATTENTION_BLOCK : n;
        const int kend = pos0 + t1; /* keys the block's last query sees */
        const float *qb = qh + (size_t)t0 * ldq;
        float *pb = p + (size_t)t0 * ldp, *ob = oh + (size_t)t0 * ldq;
        if (one_run) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, t1 - t0, kend, hd, scale, qb, ldq, k0, ldk, 0.0f,
                        pb, ldp);
        } else {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, t1 - t0, pos0, hd, scale, qb, ldq, kp, ldk, 0.0f,
                        pb, ldp);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, t1 - t0, t1, hd, scale, qb, ldq, ko, ldk, 0.0f,
                        pb + pos0, ldp);
        }
        for (int t = t0; t < t1; t++) {
            float *row = p + (size_t)t * ldp;
            const int n_keys = pos0 + t + 1; /* keys at positions <= pos0 + t */
            rq_softmax_row(row, n_keys);
            /* zeros up to the block's key count (P V reads them); a kept
               att holds the whole causal matrix, zeros above the diagonal */
            const int zero_end = keep_all ? ldp : kend;
            for (int j = n_keys; j < zero_end; j++) row[j] = 0.0f;
        }
        if (one_run) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, t1 - t0, hd, kend, 1.0f, pb, ldp, v0, ldk, 0.0f,
                        ob, ldq);
        } else {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, t1 - t0, hd, pos0, 1.0f, pb, ldp, vp, ldk, 0.0f,
                        ob, ldq);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, t1 - t0, hd, t1, 1.0f, pb + pos0, ldp, vo, ldk,
                        1.0f, ob, ldq);
        }
    }
}

/* The attention score scratch: `per_thread` floats for each of n_threads
 * threads, grown (never per call). false when it cannot be had. */
static bool att_scratch(cpu_ctx *c, size_t per_thread, int n_threads) {
    if (c->att_floats >= per_thread * n_threads) return true;
    free(c->att);
    c->att = malloc(sizeof(float) * per_thread * n_threads);
    c->att_floats = c->att ? per_thread * n_threads : 0;
    return c->att != NULL;
}

/* OpenBLAS's OpenMP build runs single-threaded inside our parallel regions by
 * itself; its pthread build needs telling, or its threads oversubscribe.
 * Returns the thread count to restore (0: nothing to restore). */
static int blas_single_threaded_begin(void) {
    if (openblas_get_parallel() != 1) return 0;
    const int threads = openblas_get_num_threads();
    openblas_set_num_threads(1);
    return threads;
}

static void blas_single_threaded_end(int restore) {
    if (restore) openblas_set_num_threads(restore);
}

/* Causal GQA attention, one (sequence, query head) pair at a time (attend_head).
 * The pairs run in parallel with single-threaded GEMMs inside (OpenBLAS threads
 * would only fight OpenMP's); the result does not depend on the thread count. */
static void cpu_attention_fwd(rq_backend *be, float *out, float *att, const float *q, const float *k,
                              const float *v, int B, int T, int pos0, int Tk_max, int nh, int nkv, int hd) {
    const float scale = 1.0f / sqrtf((float)hd);
    const int group = nh / nkv;
    const int Tk = pos0 + T;
    cpu_ctx *c = be->ctx;
    const size_t per_thread = (size_t)T * Tk;
    const int n_threads = omp_get_max_threads();
    if (!att && !att_scratch(c, per_thread, n_threads)) { /* no way to report from a void op: make it loud */
        for (size_t i = 0; i < (size_t)B * T * nh * hd; i++) out[i] = NAN;
        return;
    }
    const int restore = blas_single_threaded_begin();
    /* below ~1M multiply-adds (a decode step over up to ~1000 keys of a small model) one thread
       beats a fork/join; the result does not depend on it */
    const bool parallel = (size_t)B * nh * T * Tk * hd >= ((size_t)1 << 20);
#pragma omp parallel num_threads(n_threads) if (parallel)
    {
        float *scratch = att ? NULL : c->att + per_thread * omp_get_thread_num();
#pragma omp for collapse(2) schedule(dynamic, 1)
        for (int b = 0; b < B; b++)
            for (int h = 0; h < nh; h++) {
                const size_t kv_off = (size_t)b * Tk_max * nkv * hd + (size_t)(h / group) * hd;
                const float *kg = k + kv_off, *vg = v + kv_off;
                const size_t q_off = (size_t)b * T * nh * hd + (size_t)h * hd;
                float *p = att ? att + ((size_t)b * nh + h) * T * Tk : scratch;
                const size_t own = (size_t)pos0 * nkv * hd; /* the new keys follow the cached ones */
                attend_head(out + q_off, p, Tk, att != NULL, q + q_off, kg, vg, kg + own, vg + own, T, pos0, nh,
                            nkv, hd, scale);
            }
    }
    blas_single_threaded_end(restore);
}

/* attention_packed: every (sequence, query head) pair is one attend_head task,
 * its prefix keys in k_pre and its own in k. */
static void cpu_attention_packed(rq_backend *be, float *out, const float *q, const float *k, const float *v,
                                 const float *k_pre, const float *v_pre, const rq_attn_seq *seqs, int n_seqs,
                                 int nh, int nkv, int hd) {
    const float scale = 1.0f / sqrtf((float)hd);
    const int group = nh / nkv;
    cpu_ctx *c = be->ctx;
    size_t per_thread = 0;
    for (int i = 0; i < n_seqs; i++) {
        size_t need = (size_t)seqs[i].n * (size_t)(seqs[i].pos0 + seqs[i].n);
        per_thread = need > per_thread ? need : per_thread;
    }
    const int n_threads = omp_get_max_threads();
    if (!att_scratch(c, per_thread, n_threads)) {
        for (int i = 0; i < n_seqs; i++)
            for (size_t j = 0; j < (size_t)seqs[i].n * nh * hd; j++) out[(size_t)seqs[i].row * nh * hd + j] = NAN;
        return;
    }
    const int restore = blas_single_threaded_begin();
#pragma omp parallel num_threads(n_threads)
    {
        float *scratch = c->att + per_thread * omp_get_thread_num();
#pragma omp for collapse(2) schedule(dynamic, 1)
        for (int i = 0; i < n_seqs; i++)
            for (int h = 0; h < nh; h++) {
                const rq_attn_seq *sq = &seqs[i];
                const size_t g_off = (size_t)(h / group) * hd, q_off = (size_t)sq->row * nh * hd + (size_t)h * hd;
                const size_t own = (size_t)sq->row * nkv * hd + g_off, pre = (size_t)sq->pre_row * nkv * hd + g_off;
                const float *kp = sq->pos0 > 0 ? k_pre + pre : NULL, *vp = sq->pos0 > 0 ? v_pre + pre : NULL;
                attend_head(out + q_off, scratch, sq->pos0 + sq->n, false, q + q_off, kp, vp, k + own, v + own, sq->n,
                            sq->pos0, nh, nkv, hd, scale);
            }
    }
    blas_single_threaded_end(restore);
}

static void cpu_swiglu_fwd(rq_backend *be, float *out, const float *gate, const float *up, int N, int H) {
    size_t n = (size_t)N * H;
#pragma omp parallel for simd schedule(static) if (n >= RQ_CPU_PARALLEL_FLOATS)
    for (size_t i = 0; i < n; i++) out[i] = rq_swiglu(gate[i], up[i]);
}

static void cpu_cache_store(rq_backend *be, float *cache, const float *src, int B, int T, int pos0, int Tmax,
                            int C) {
    for (int b = 0; b < B; b++)
        memcpy(cache + ((size_t)b * Tmax + pos0) * C, src + (size_t)b * T * C, sizeof(float) * (size_t)T * C);
}

static void cpu_add_inplace(rq_backend *be, float *x, const float *y, size_t n) {
#pragma omp parallel for schedule(static) if (n >= RQ_CPU_PARALLEL_FLOATS)
    for (size_t i = 0; i < n; i++) x[i] += y[i];
}

static rq_status cpu_mem_info(rq_backend *be, size_t *free_bytes, size_t *total_bytes, rq_err *err) {
    (void)be;
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f) return RQ_FAIL(err, RQ_ERR_IO, "/proc/meminfo: cannot open (%s)", strerror(errno));
    char line[256];
    unsigned long long avail = 0, total = 0, kb;
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) avail = kb * 1024ull;
        else if (sscanf(line, "MemTotal: %llu kB", &kb) == 1) total = kb * 1024ull;
    }
    fclose(f);
    if (!total) return RQ_FAIL(err, RQ_ERR_FORMAT, "/proc/meminfo: no MemTotal line");
    *free_bytes = (size_t)(avail ? avail : total);
    *total_bytes = (size_t)total;
    return RQ_OK;
}

static size_t cpu_scratch_bytes(const rq_backend *be, const rq_config *c, int batch, int seq, bool train, bool q2) {
    return rq_cpu_scratch_bytes(be->n_threads, c, batch, seq, train, q2);
}

void rq_cpu_train_ops_install(rq_backend *be); /* cpu_train.c */

static void cpu_destroy(rq_backend *be) {
    cpu_ctx *c = be->ctx;
    if (c) {
        free(c->tile);
        free(c->att);
        free(c->ds);
        rq_decode_cache_free(c->decode);
    }
    free(c);
    free(be);
}

/* The ops read frozen weights in host memory, where they are: binding only
 * tells linear_rows which weights it may keep compact copies of. */
static rq_status cpu_bind_weights(rq_backend *be, const struct rq_model *m, const rq_weight_span *spans, size_t n,
                                  rq_err *err) {
    rq_decode_cache_bind(&((cpu_ctx *)be->ctx)->decode, m, spans, n);
    return RQ_OK;
}

static void cpu_unbind_weights(rq_backend *be, const struct rq_model *m) {
    rq_decode_cache_unbind(((cpu_ctx *)be->ctx)->decode, m, false);
}

static rq_status cpu_rebind_weights(rq_backend *be, const struct rq_model *m, const rq_weight_span *spans, size_t n,
                                    rq_err *err) {
    rq_decode_cache_unbind(((cpu_ctx *)be->ctx)->decode, m, true);
    return RQ_OK;
}

rq_decode_cache *rq_cpu_decode_cache(rq_backend *be) { return ((cpu_ctx *)be->ctx)->decode; }

rq_status rq_backend_cpu_create(int n_threads, rq_backend **out, rq_err *err) {
    *out = NULL;
    rq_backend *be = rq_calloc(1, sizeof *be, err);
    if (!be) return RQ_ERR_NOMEM;
    cpu_ctx *c = rq_calloc(1, sizeof *c, err);
    if (!c) {
        free(be);
        return RQ_ERR_NOMEM;
    }
    if (n_threads > 0) {
        omp_set_num_threads(n_threads);
        openblas_set_num_threads(n_threads);
    }
    c->tile_floats = RQ_CPU_Q2_TILE_FLOATS;
    c->tile = rq_alloc_aligned(c->tile_floats * sizeof(float), err);
    if (!c->tile) {
        free(c);
        free(be);
        return RQ_ERR_NOMEM;
    }
    be->name = "cpu";
    be->caps = (rq_backend_caps){.weights_on_host = true, .device_memory = false};
    be->ctx = c;
    be->n_threads = n_threads > 0 ? n_threads : omp_get_max_threads();
    be->alloc = cpu_alloc;
    be->free = cpu_free;
    be->upload = cpu_copy_bytes;
    be->download = cpu_copy_bytes;
    be->copy = cpu_copy;
    be->mem_info = cpu_mem_info;
    be->scratch_bytes = cpu_scratch_bytes;
    be->gather_rows = cpu_gather_rows;
    be->linear = cpu_linear;
    be->linear_rows = rq_cpu_linear_rows;
    be->matmul_nt = cpu_matmul_nt;
    be->embedding = cpu_embedding;
    be->rmsnorm_fwd = cpu_rmsnorm_fwd;
    be->rope_fwd = cpu_rope_fwd;
    be->attention_fwd = cpu_attention_fwd;
    be->attention_packed = cpu_attention_packed;
    be->swiglu_fwd = cpu_swiglu_fwd;
    be->cache_store = cpu_cache_store;
    be->add_inplace = cpu_add_inplace;
    be->bind_weights = cpu_bind_weights;
    be->unbind_weights = cpu_unbind_weights;
    be->rebind_weights = cpu_rebind_weights;
    be->destroy = cpu_destroy;
    rq_cpu_train_ops_install(be);
    *out = be;
    return RQ_OK;
}
