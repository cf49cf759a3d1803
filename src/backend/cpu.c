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

/* Causal GQA attention, one (sequence, query head) at a time, in blocks of
 * RQ_CPU_ATTENTION_BLOCK queries: S = Q_blk K^T over the keys the block can see
 * (the strided head slices: lda = nh*hd, ldb = nkv*hd), a masked row softmax,
 * then O_blk = P_blk V. Keys past a block's last query are never computed, so
 * causal training runs about half the full T x T work. The (b, h) pairs run in
 * parallel with single-threaded GEMMs inside (OpenBLAS threads would only fight
 * OpenMP's); the result does not depend on the thread count. */
static void cpu_attention_fwd(rq_backend *be, float *out, float *att, const float *q, const float *k,
                              const float *v, int B, int T, int pos0, int Tk_max, int nh, int nkv, int hd) {
    const float scale = 1.0f / sqrtf((float)hd);
    const int group = nh / nkv;
    const int Tk = pos0 + T;
    cpu_ctx *c = be->ctx;
    const size_t per_thread = (size_t)T * Tk;
    const int n_threads = omp_get_max_threads();
    if (!att && c->att_floats < per_thread * n_threads) {
        free(c->att);
        c->att = malloc(sizeof(float) * per_thread * n_threads);
        c->att_floats = c->att ? per_thread * n_threads : 0;
        if (!c->att) { /* no way to report from a void op: make the failure loud, not silent */
            for (size_t i = 0; i < (size_t)B * T * nh * hd; i++) out[i] = NAN;
            return;
        }
    }
    /* OpenBLAS's OpenMP build runs single-threaded inside our parallel region by
     * itself; its pthread build needs telling, or its threads oversubscribe */
    const bool pthread_blas = openblas_get_parallel() == 1;
    const int blas_threads = openblas_get_num_threads();
    if (pthread_blas) openblas_set_num_threads(1);
    /* below ~1M multiply-adds (a decode step over up to ~1000 keys of a small model) one thread
       beats a fork/join; the result does not depend on it */
    const bool parallel = (size_t)B * nh * T * Tk * hd >= ((size_t)1 << 20);
#pragma omp parallel num_threads(n_threads) if (parallel)
    {
        float *scratch = att ? NULL : c->att + per_thread * omp_get_thread_num();
#pragma omp for collapse(2) schedule(dynamic, 1)
        for (int b = 0; b < B; b++)
            for (int h = 0; h < nh; h++) {
                const int g = h / group;
                const float *qh = q + (size_t)b * T * nh * hd + (size_t)h * hd;
                const float *kg = k + (size_t)b * Tk_max * nkv * hd + (size_t)g * hd;
                const float *vg = v + (size_t)b * Tk_max * nkv * hd + (size_t)g * hd;
                float *p = att ? att + ((size_t)b * nh + h) * T * Tk : scratch;
                float *oh = out + (size_t)b * T * nh * hd + (size_t)h * hd;
                for (int t0 = 0; t0 < T; t0 += RQ_CPU_ATTENTION_BLOCK) {
                    const int t1 = t0 + RQ_CPU_ATTENTION_BLOCK < T ? t0 + RQ_CPU_ATTENTION_BLOCK : T;
                    const int kend = pos0 + t1; /* keys the block's last query sees */
                    float *pb = p + (size_t)t0 * Tk;
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, t1 - t0, kend, hd, scale,
                                qh + (size_t)t0 * nh * hd, nh * hd, kg, nkv * hd, 0.0f, pb, Tk);
                    for (int t = t0; t < t1; t++) {
                        float *row = p + (size_t)t * Tk;
                        const int n_keys = pos0 + t + 1; /* keys at positions <= pos0 + t */
                        rq_softmax_row(row, n_keys);
                        /* zeros up to the block's key count (P V reads them); a kept
                           att holds the whole causal matrix, zeros above the diagonal */
                        const int zero_end = att ? Tk : kend;
                        for (int j = n_keys; j < zero_end; j++) row[j] = 0.0f;
                    }
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, t1 - t0, hd, kend, 1.0f, pb, Tk, vg,
                                nkv * hd, 0.0f, oh + (size_t)t0 * nh * hd, nh * hd);
                }
            }
    }
    if (pthread_blas) openblas_set_num_threads(blas_threads);
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
