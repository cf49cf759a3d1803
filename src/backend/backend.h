/* The backend op table: the seam between model code and devices.
 *
 * Model, adapter, loss and optimizer code call these ops on buffers that live
 * on the backend; they never touch a device themselves. Shapes are given in a
 * one-line comment on each op; matrices are row-major.
 *
 * Where memory lives: activations, gradients, adapters and optimizer state
 * are backend memory (be->alloc); host code reads or writes them only through
 * upload / download. Frozen model weights (rq_model: rq_linear.w / .q2, norm
 * weights, the embedding table) stay in host memory, and a model is bound to
 * the backend while it is put to work (bind_weights below: the forward state
 * does it), so a device backend copies them once and finds them by address.
 * Index arrays (tokens, idx, targets) are host memory in the orchestration;
 * the CUDA backend also accepts backend memory there. Void ops cannot fail
 * loudly: a device backend records the first error and reports it from the
 * next op that returns a status (alloc, upload, download, mem_info). */
#ifndef RQ_BACKEND_H
#define RQ_BACKEND_H

#include "../core/config.h"
#include "../core/core.h"
#include "../quant/linear.h"

typedef struct rq_backend rq_backend;

/* Rows of activations up to which a decode step's projections go through
 * linear_rows instead of linear (rq_forward_opts.decode). */
#define RQ_LINEAR_ROWS_MAX 4

struct rq_model; /* src/model/model.h: only a key here, the op table needs no model layout */

/* What a backend is, for the code that must treat backends differently (memory
 * accounting, plans): test these, never the name. */
typedef struct rq_backend_caps {
    bool weights_on_host; /* ops read frozen weights where the model holds them, in host memory, so a
                             loaded model already takes from the memory mem_info reports (CPU) */
    bool device_memory;   /* alloc returns memory apart from the host's: upload and download copy,
                             mem_info measures the device (CUDA) */
} rq_backend_caps;

/* One host array of frozen weights: a norm vector, an fp32 matrix, a q2
 * tensor's codes, scales or offsets (src/model/bind.c lists a model's). */
typedef struct rq_weight_span {
    const void *host;
    size_t bytes;
} rq_weight_span;

/* One sequence of a packed attention call (attention_packed): many sequences of
 * different lengths share one [N][...] batch, without padding. */
typedef struct rq_attn_seq {
    int row;     /* its first row in q, k, v and out */
    int n;       /* its new tokens: queries and keys at positions pos0 .. pos0+n-1 */
    int pos0;    /* position of its first new token; positions 0 .. pos0-1 are a prefix */
    int pre_row; /* first row of its prefix keys and values in k_pre, v_pre (read only when pos0 > 0) */
} rq_attn_seq;

struct rq_backend {
    const char *name; /* for messages */
    rq_backend_caps caps;
    void *ctx;
    int n_threads;

    /* Memory on the device. */
    void *(*alloc)(rq_backend *be, size_t bytes, rq_err *err);
    void (*free)(rq_backend *be, void *p);
    rq_status (*upload)(rq_backend *be, void *dst, const void *src, size_t bytes, rq_err *err);
    rq_status (*download)(rq_backend *be, void *dst, const void *src, size_t bytes, rq_err *err);
    /* Memory the backend could still allocate and its total (CPU: MemAvailable
     * and MemTotal of /proc/meminfo; CUDA: cudaMemGetInfo). Used to refuse a run
     * whose memory plan cannot fit, before allocating. */
    rq_status (*mem_info)(rq_backend *be, size_t *free_bytes, size_t *total_bytes, rq_err *err);
    /* Bytes of the backend's own scratch (beyond alloc: GEMM workspace, dequantization
     * tiles, attention workspace) at its high-water mark while it runs forward (train:
     * and backward) passes of a model of shape c over batch x seq tokens whose
     * projections are q2 (q2) or fp32. What memory plans add for the device
     * (src/backend/scratch.h holds the formulas). */
    size_t (*scratch_bytes)(const rq_backend *be, const rq_config *c, int batch, int seq, bool train, bool q2);
    /* device-to-device copy */
    void (*copy)(rq_backend *be, void *dst, const void *src, size_t bytes);
    /* dst[rows][C] = src[idx[r]][C]: gather rows of a matrix on the device */
    void (*gather_rows)(rq_backend *be, float *dst, const float *src, const int *idx, int rows, int C);

    /* out[N][W.out] = in[N][W.in] * W^T (+ out when accumulate). W may be fp32
     * or q2 (dequantized tile by tile). */
    void (*linear)(rq_backend *be, float *out, const float *in, const rq_linear *W, int N, bool accumulate);
    /* linear for a few rows, N <= RQ_LINEAR_ROWS_MAX (a decode step): each weight is read once
     * from where it is stored (q2: codes expanded in registers, no dequantized tile), the same
     * weights as linear's, only the dot products sum in another order. NULL when the backend
     * has none (linear serves). */
    void (*linear_rows)(rq_backend *be, float *out, const float *in, const rq_linear *W, int N, bool accumulate);
    /* out[N][M] = a[N][K] * b[M][K]^T (+ out when accumulate), plain fp32. */
    void (*matmul_nt)(rq_backend *be, float *out, const float *a, const float *b, int N, int M, int K,
                      bool accumulate);
    /* out[N][C] = table[tokens[n]][C] */
    void (*embedding)(rq_backend *be, float *out, const int *tokens, const float *table, int N, int C);
    /* out[N][C] = w * x / sqrt(mean(x^2) + eps); rstd[N] saved for backward (may be NULL) */
    void (*rmsnorm_fwd)(rq_backend *be, float *out, float *rstd, const float *x, const float *w, int N, int C,
                        float eps);
    /* x[B][T][n_heads][hd] rotated in place, rotate-half pairs (i, i+hd/2); token t
     * uses cos[t][hd/2], sin[t][hd/2] (angles already include rope scaling). */
    void (*rope_fwd)(rq_backend *be, float *x, const float *cos, const float *sin, int B, int T, int n_heads,
                     int hd);
    /* Causal grouped-query attention for B sequences of T new queries each:
     * q[B][T][nh][hd]; k, v caches [B][Tk_max][nkv][hd] hold keys of positions
     * 0 .. pos0+T-1; query t sits at position pos0+t and sees keys <= its position.
     * out[B][T][nh][hd]. att[B][nh][T][pos0+T] (probabilities) saved when not NULL. */
    void (*attention_fwd)(rq_backend *be, float *out, float *att, const float *q, const float *k, const float *v,
                          int B, int T, int pos0, int Tk_max, int nh, int nkv, int hd);
    /* Causal grouped-query attention over packed sequences (rq_attn_seq, a host array):
     * q, out [N][nh][hd] and k, v [N][nkv][hd] hold every sequence's new tokens in its
     * rows; query i of sequence s (position pos0+i) sees the prefix keys of positions
     * 0 .. pos0-1, rows pre_row .. of k_pre, v_pre [.][nkv][hd] (several sequences may
     * share one prefix: the choices continuing one context), then its own keys of
     * positions pos0 .. pos0+i. Inference only. May be NULL: the forward then joins each
     * sequence's keys in a scratch and calls attention_fwd per sequence. */
    void (*attention_packed)(rq_backend *be, float *out, const float *q, const float *k, const float *v,
                             const float *k_pre, const float *v_pre, const rq_attn_seq *seqs, int n_seqs, int nh,
                             int nkv, int hd);
    /* out[N][H] = silu(gate) * up */
    void (*swiglu_fwd)(rq_backend *be, float *out, const float *gate, const float *up, int N, int H);
    /* dst[B][T][C] rows -> cache[B][Tmax][C] at positions pos0 .. pos0+T-1 */
    void (*cache_store)(rq_backend *be, float *cache, const float *src, int B, int T, int pos0, int Tmax, int C);
    /* x[i] += y[i] */
    void (*add_inplace)(rq_backend *be, float *x, const float *y, size_t n);

    /* ---- training ops (src/backend/cpu_train.c on the CPU). Gradients ADD into
     * their outputs (+=), so micro-batch accumulation needs no copies. ---- */

    /* din[N][W.in] += dout[N][W.out] * W (W fp32 or q2, frozen) */
    void (*linear_bwd_input)(rq_backend *be, float *din, const float *dout, const rq_linear *W, int N);
    /* dW[M][K] += dout[N][M]^T * in[N][K] (weight gradient of out = in * W^T) */
    void (*matmul_tn_acc)(rq_backend *be, float *dW, const float *dout, const float *in, int N, int M, int K);
    /* dx[N][C] += d/dx of out = w * x * rstd (rstd saved by rmsnorm_fwd; w frozen) */
    void (*rmsnorm_bwd)(rq_backend *be, float *dx, const float *dout, const float *x, const float *w,
                        const float *rstd, int N, int C);
    /* dx[B][T][n_heads][hd] rotated back in place (the transpose of rope_fwd) */
    void (*rope_bwd)(rq_backend *be, float *dx, const float *cos, const float *sin, int B, int T, int n_heads,
                     int hd);
    /* Backward of attention_fwd with pos0 = 0 and Tk_max = T, given the saved
     * probabilities att[B][nh][T][T]: dq[B][T][nh][hd], dk, dv[B][T][nkv][hd] (+=). */
    void (*attention_bwd)(rq_backend *be, float *dq, float *dk, float *dv, const float *dout, const float *att,
                          const float *q, const float *k, const float *v, int B, int T, int nh, int nkv, int hd);
    /* dgate, dup[N][H] += backward of out = silu(gate) * up */
    void (*swiglu_bwd)(rq_backend *be, float *dgate, float *dup, const float *dout, const float *gate,
                       const float *up, int N, int H);
    /* Group means: out[N][G] = mean of each group of gs consecutive inputs of
     * in[N][C] (G = ceil(C/gs); the last group averages its real members). */
    void (*group_pool_fwd)(rq_backend *be, float *out, const float *in, int N, int C, int gs);
    /* din[N][C] += dout[N][G] spread back over each group, divided by its size */
    void (*group_pool_bwd)(rq_backend *be, float *din, const float *dout, int N, int C, int gs);
    /* Cross-entropy rows: loss[n] = logsumexp(logits[n]) - logits[n][target[n]]
     * (0 where target < 0); when dlogits is not NULL it receives
     * grad_scale * (softmax - onehot) for counted rows, 0 elsewhere (overwrite). */
    void (*cross_entropy)(rq_backend *be, float *loss, float *dlogits, const float *logits, const int *targets,
                          int N, int V, float grad_scale);
    /* Returns sum((a - b)^2) over n; d (if not NULL) += grad_scale * 2 * (a - b). */
    double (*mse)(rq_backend *be, float *d, const float *a, const float *b, size_t n, float grad_scale);
    /* Adam/AdamW step t >= 1 (bias-corrected); weight_decay decoupled (AdamW);
     * param, m, v, grad all [n]. */
    void (*adamw)(rq_backend *be, float *param, const float *grad, float *m, float *v, size_t n, float lr,
                  float beta1, float beta2, float eps, float weight_decay, int t);
    double (*sum_squares)(rq_backend *be, const float *x, size_t n);
    void (*scale)(rq_backend *be, float *x, float s, size_t n);
    void (*fill_zero)(rq_backend *be, float *x, size_t n);
    /* Plain Adam step (torch.optim.Adam): as adamw, but weight_decay is the
     * coupled L2 term, grad + weight_decay * param enters the moments. */
    void (*adam_l2)(rq_backend *be, float *param, const float *grad, float *m, float *v, size_t n, float lr,
                    float beta1, float beta2, float eps, float weight_decay, int t);

    /* ---- weight binding: the contract between frozen host weights and ops ----
     * Callers go through src/model/bind.h (rq_model_bind, ...), which lists
     * the model's weight arrays; m is only the key of the binding.
     *
     * bind_weights: the arrays stay readable by this backend's ops, fast, until
     * the matching unbind_weights. Binds of one model nest (counted); the first
     * one copies the arrays to a device. While bound, the host arrays must not
     * be rewritten or freed, except through rebind_weights.
     * unbind_weights: the last one drops the device copies.
     * rebind_weights: m's arrays were rewritten in place or replaced (a merge):
     * a bound model's copies are rebuilt from spans now; nothing to do when m is
     * not bound (its next bind reads the new values).
     * An op given a host weight no binding holds still computes the right
     * result (the CUDA backend uploads it for that one call), only slower. The
     * CPU backend reads weights in place: all three are no-ops there. */
    rq_status (*bind_weights)(rq_backend *be, const struct rq_model *m, const rq_weight_span *spans, size_t n,
                              rq_err *err);
    void (*unbind_weights)(rq_backend *be, const struct rq_model *m);
    rq_status (*rebind_weights)(rq_backend *be, const struct rq_model *m, const rq_weight_span *spans, size_t n,
                                rq_err *err);

    void (*destroy)(rq_backend *be);
};

/* The CPU backend: CBLAS GEMMs, OpenMP loops. n_threads <= 0: OpenMP default. */
rq_status rq_backend_cpu_create(int n_threads, rq_backend **out, rq_err *err);
/* The CUDA backend (src/backend/cuda.c, built when nvcc is found: RILQ_HAVE_CUDA):
 * the first visible GPU. RQ_ERR_UNSUPPORTED when no device is present. */
rq_status rq_backend_cuda_create(int n_threads, rq_backend **out, rq_err *err);
/* By name: "cpu" or "cuda" (RQ_ERR_UNSUPPORTED when the build has no CUDA or no GPU is found). */
rq_status rq_backend_create(const char *name, int n_threads, rq_backend **out, rq_err *err);
void rq_backend_destroy(rq_backend *be);

#endif
