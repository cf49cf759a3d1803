/* The cuBLASLt wrapper: one handle, one workspace and one plan cache per
 * backend instance (no globals).
 *
 * Callers think in row-major, cblas-style terms; cuBLASLt is column-major, so
 * C[M][N] = op(A) op(B) is computed as C^T = op(B)^T op(A)^T: the operands
 * swap places and keep their transpose flags, m and n swap.
 *
 * A plan (matmul descriptor, three layouts, the heuristic's algorithm) is
 * cached per shape: transposes, sizes, leading dimensions, batch and strides,
 * dtype and the operands' pointer alignments (the heuristic only returns
 * algorithms valid for the alignment it is told, so a 4-byte-aligned pointer
 * gets a plan of its own rather than a misaligned-access fault). */
#include <cublasLt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

#define PLAN_SLOTS 1024

typedef struct plan_key {
    int trans_a, trans_b, M, N, K, batch, ab;
    long long lda, ldb, ldc, sa, sb, sc;
    unsigned align_a, align_b, align_c;
} plan_key;

typedef struct plan {
    int used;
    plan_key key;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulAlgo_t algo;
} plan;

struct rqk_gemm {
    cublasLtHandle_t handle;
    cudaStream_t stream;
    void *workspace;
    size_t workspace_bytes;
    plan *plans; /* PLAN_SLOTS, open addressing */
};

/* cuBLAS status names (cublasLtGetStatusName is missing from older toolkits) */
static const char *status_name(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE (a shape, leading dimension or alignment)";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED (no kernel for these types/layouts)";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "unknown cuBLAS status";
    }
}

#define LT_CHECK(call)                                                                                          \
    do {                                                                                                        \
        cublasStatus_t s_ = (call);                                                                             \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                                      \
            snprintf(msg, msg_len, "%s failed: %s (status %d) at %s:%d", #call, status_name(s_), (int)s_,       \
                     __FILE__, __LINE__);                                                                       \
            goto fail;                                                                                          \
        }                                                                                                       \
    } while (0)

extern "C" int rqk_gemm_create(rqk_gemm **out, cudaStream_t stream, size_t workspace_bytes, char *msg, size_t msg_len) {
    *out = NULL;
    rqk_gemm *g = (rqk_gemm *)calloc(1, sizeof *g);
    if (!g) {
        snprintf(msg, msg_len, "out of host memory for the cuBLASLt context");
        return 1;
    }
    g->plans = (plan *)calloc(PLAN_SLOTS, sizeof(plan));
    if (!g->plans) {
        free(g);
        snprintf(msg, msg_len, "out of host memory for the cuBLASLt plan cache");
        return 1;
    }
    g->stream = stream;
    LT_CHECK(cublasLtCreate(&g->handle));
    {
        cudaError_t e = cudaMalloc(&g->workspace, workspace_bytes);
        if (e != cudaSuccess) {
            snprintf(msg, msg_len, "cudaMalloc of the %zu-byte cuBLASLt workspace failed: %s at %s:%d",
                     workspace_bytes, cudaGetErrorString(e), __FILE__, __LINE__);
            g->workspace = NULL;
            goto fail;
        }
    }
    g->workspace_bytes = workspace_bytes;
    *out = g;
    return 0;
fail:
    rqk_gemm_destroy(g);
    return 1;
}

static void plan_release(plan *p) {
    if (!p->used) return;
    if (p->la) cublasLtMatrixLayoutDestroy(p->la);
    if (p->lb) cublasLtMatrixLayoutDestroy(p->lb);
    if (p->lc) cublasLtMatrixLayoutDestroy(p->lc);
    if (p->desc) cublasLtMatmulDescDestroy(p->desc);
    memset(p, 0, sizeof *p);
}

extern "C" void rqk_gemm_destroy(rqk_gemm *g) {
    if (!g) return;
    if (g->plans)
        for (int i = 0; i < PLAN_SLOTS; i++) plan_release(&g->plans[i]);
    free(g->plans);
    if (g->workspace) cudaFree(g->workspace);
    if (g->handle) cublasLtDestroy(g->handle);
    free(g);
}

/* largest power of two (<= 256) dividing the address and the batch stride in bytes */
static unsigned alignment(const void *p, long long stride_elems, int batch, size_t elem) {
    unsigned long long v = (unsigned long long)(uintptr_t)p | 256ull;
    if (batch > 1) v |= (unsigned long long)stride_elems * elem;
    return (unsigned)(v & (~v + 1ull));
}

static unsigned long long key_hash(const plan_key *k) {
    const unsigned char *b = (const unsigned char *)k;
    unsigned long long h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < sizeof *k; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

/* col-major layout of a stored row-major operand: rows x cols col-major = cols x rows row-major */
static cublasStatus_t make_layout(cublasLtMatrixLayout_t *l, cudaDataType_t t, unsigned long long rows,
                                  unsigned long long cols, long long ld, int batch, long long stride) {
    cublasStatus_t s = cublasLtMatrixLayoutCreate(l, t, rows, cols, ld);
    if (s != CUBLAS_STATUS_SUCCESS || batch <= 1) return s;
    int32_t bc = batch;
    int64_t so = stride;
    s = cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc, sizeof bc);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &so, sizeof so);
    return s;
}

static int plan_build(rqk_gemm *g, plan *p, const plan_key *k, char *msg, size_t msg_len) {
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulHeuristicResult_t res;
    int n_res = 0;
    const cudaDataType_t tab = k->ab == RQK_BF16 ? CUDA_R_16BF : CUDA_R_32F;
    /* column-major problem: m' = N, n' = M, k' = K; A' = B (op trans_b), B' = A (op trans_a) */
    const cublasOperation_t op_a = k->trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_b = k->trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    const unsigned long long m = (unsigned long long)k->N, n = (unsigned long long)k->M, kk = (unsigned long long)k->K;
    uint64_t ws = g->workspace_bytes;
    uint32_t al_a = k->align_b, al_b = k->align_a, al_c = k->align_c; /* A' is B, B' is A */
    memset(p, 0, sizeof *p);
    p->used = 1;
    p->key = *k;
    LT_CHECK(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    LT_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof op_a));
    LT_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof op_b));
    LT_CHECK(make_layout(&p->la, tab, op_a == CUBLAS_OP_N ? m : kk, op_a == CUBLAS_OP_N ? kk : m, k->ldb, k->batch,
                         k->sb));
    LT_CHECK(make_layout(&p->lb, tab, op_b == CUBLAS_OP_N ? kk : n, op_b == CUBLAS_OP_N ? n : kk, k->lda, k->batch,
                         k->sa));
    LT_CHECK(make_layout(&p->lc, CUDA_R_32F, m, n, k->ldc, k->batch, k->sc));
    LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof al_a));
    LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof al_b));
    LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c, sizeof al_c));
    LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c, sizeof al_c));
    LT_CHECK(cublasLtMatmulAlgoGetHeuristic(g->handle, p->desc, p->la, p->lb, p->lc, p->lc, pref, 1, &res, &n_res));
    if (n_res < 1) {
        snprintf(msg, msg_len,
                 "cublasLtMatmulAlgoGetHeuristic found no algorithm for %s GEMM M=%d N=%d K=%d batch=%d "
                 "(lda %lld ldb %lld ldc %lld; pointer alignment A %u B %u C %u bytes) at %s:%d",
                 k->ab == RQK_BF16 ? "bf16" : "fp32", k->M, k->N, k->K, k->batch, k->lda, k->ldb, k->ldc, k->align_a,
                 k->align_b, k->align_c, __FILE__, __LINE__);
        goto fail;
    }
    p->algo = res.algo;
    cublasLtMatmulPreferenceDestroy(pref);
    return 0;
fail:
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    plan_release(p);
    return 1;
}

extern "C" int rqk_gemm_run(rqk_gemm *g, const rqk_gemm_args *a, char *msg, size_t msg_len) {
    const size_t es = a->ab == RQK_BF16 ? 2 : 4;
    plan_key k;
    memset(&k, 0, sizeof k); /* padding bytes take part in the hash */
    k.trans_a = a->trans_a ? 1 : 0;
    k.trans_b = a->trans_b ? 1 : 0;
    k.M = a->M;
    k.N = a->N;
    k.K = a->K;
    k.batch = a->batch > 1 ? a->batch : 1;
    k.ab = a->ab;
    k.lda = a->lda;
    k.ldb = a->ldb;
    k.ldc = a->ldc;
    k.sa = k.batch > 1 ? a->sa : 0;
    k.sb = k.batch > 1 ? a->sb : 0;
    k.sc = k.batch > 1 ? a->sc : 0;
    k.align_a = alignment(a->A, k.sa, k.batch, es);
    k.align_b = alignment(a->B, k.sb, k.batch, es);
    k.align_c = alignment(a->C, k.sc, k.batch, 4);
    if (k.align_a < es || k.align_b < es || k.align_c < 4) {
        snprintf(msg, msg_len, "GEMM operand not aligned to its element size (A %p, B %p, C %p) at %s:%d", a->A, a->B,
                 (void *)a->C, __FILE__, __LINE__);
        return 1;
    }
    unsigned long long h = key_hash(&k);
    plan *p = NULL;
    for (int probe = 0; probe < 8; probe++) {
        plan *c = &g->plans[(h + (unsigned long long)probe) % PLAN_SLOTS];
        if (c->used && !memcmp(&c->key, &k, sizeof k)) {
            p = c;
            break;
        }
        if (!c->used) {
            if (plan_build(g, c, &k, msg, msg_len)) return 1;
            p = c;
            break;
        }
    }
    if (!p) { /* the probe window is full: replace its first slot */
        p = &g->plans[h % PLAN_SLOTS];
        plan_release(p);
        if (plan_build(g, p, &k, msg, msg_len)) return 1;
    }
    {
        const float alpha = a->alpha, beta = a->beta;
        LT_CHECK(cublasLtMatmul(g->handle, p->desc, &alpha, a->B, p->la, a->A, p->lb, &beta, a->C, p->lc, a->C, p->lc,
                                &p->algo, g->workspace, g->workspace_bytes, g->stream));
    }
    return 0;
fail:
    return 1;
}
