/* The memory plan and FLOP count of a training run, from the model's config
 * alone (no weights needed: a config.json of a 70B model is enough).
 *
 * Memory is counted per category as ARCHITECTURE.md "Memory" lists them, in
 * the dtypes of the device:
 *   cpu   everything fp32 (q2 weights dequantized into an 8 MiB tile, a projection at a time).
 *   cuda  q2 weights as stored; non-quantized tensors fp32 (the op table hands
 *         every op float pointers, so the device mirrors them as they are);
 *         the activations forward.c saves are fp32 buffers allocated through
 *         the backend (the same code runs on both); the backend's own scratch
 *         (bf16 GEMM operands, dequantized tiles, attention workspace, the
 *         cuBLASLt workspace); adapter master weights, gradients and Adam
 *         moments fp32.
 * No size is re-derived here: each category is read from the code that
 * allocates it, walked dry --
 *   adapters, grads   rq_adapter_set_plan (the shapes rq_adapter_set_create allocates)
 *   moments           rq_optim_moment_bytes
 *   activations       rq_forward_size_of (forward.c's size table, the one rq_forward_create allocates)
 *   scratch, host     rq_train_size_of (rq_train's buffers) + forward's host arrays
 *   device scratch    rq_cuda_scratch_bytes (src/backend/scratch.h; be->scratch_bytes of the CUDA
 *                     backend answers with it), so a CUDA plan needs no GPU.
 * The CPU backend's own scratch (rq_cpu_scratch_bytes: an 8 MiB dequantization
 * tile held from creation, in training attention_bwd's T x T; in inference T x T
 * floats per thread of attention scores) is not in the CPU plan: the tile is
 * already allocated when mem_info is read, and tests/test_plan.c pins the CPU
 * scratch to the trainer's buffers; tests/test_teacher_stream.c pins the teacher
 * pass to what the streamed pass allocates (rq_teacher_stream_size_of) + one
 * inference state + the student. tests/test_plan.c holds plan and allocations together.
 *
 * A calibrate run has two phases: the teacher pass (once per calibration set,
 * skipped when the cache exists; layer-streamed: one fp32 layer at a time +
 * the windows' residual streams + the student loaded beside it + one inference
 * state, src/train/calib.h) and training; the peak is the larger. */
#ifndef RQ_TRAIN_PLAN_H
#define RQ_TRAIN_PLAN_H

#include "../adapter/adapter.h"
#include "trainer.h"

typedef enum rq_plan_stage {
    RQ_PLAN_CALIBRATE = 0, /* RILQ: teacher targets (cache or teacher beside the student) + CE */
    RQ_PLAN_FINETUNE = 1   /* finetune / train-lm: CE on targets only */
} rq_plan_stage;

typedef enum rq_plan_device { RQ_PLAN_CPU = 0, RQ_PLAN_CUDA = 1 } rq_plan_device;

typedef struct rq_plan_opts {
    rq_plan_device device;
    rq_plan_stage stage;
    rq_loss_scope scope;     /* calibrate: model (teacher cache), layer or linear (teacher resident) */
    double mse_weight;       /* calibrate: Model-Loss weight (0: no teacher targets needed) */
    double ce_weight;        /* cross-entropy weight (0: the head is not run in training) */
    rq_adapter_type adapter;
    int r;
    int adapter_group_size;  /* QA-LoRA pooling group */
    unsigned targets;        /* RQ_ADAPTER_ALL_PROJ etc. */
    int micro_batch, seq_len;
    int n_windows;           /* calibrate: windows in the teacher cache */
    bool student_q2;         /* the student's projections are q2 (false: fp32 model) */
    int quant_group_size;    /* q2 group size */
    bool teacher_cached;     /* calibrate, model scope: the cache exists, no teacher pass */
    bool teacher_resident;   /* the teacher is loaded whole (SVD init, a q2 artifact teacher): its
                                pass holds the fp32 teacher, not one layer (layer / linear scope
                                keep it beside the student anyway) */
    bool teacher_spill;      /* the teacher pass keeps the windows' residual streams in a scratch
                                file, not in memory (rilq calibrate spills when they do not fit) */
} rq_plan_opts;

/* The paper's settings (algorithms.md): calibrate, QA-LoRA r=64 gs=64 on all
 * seven projections, 1 x 512, 320 windows, q2 group 64, 0.5 MSE + 0.5 CE. */
void rq_plan_default_opts(rq_plan_opts *o);

typedef struct rq_plan {
    /* memory the device must hold during training, bytes */
    uint64_t weights_q2;      /* codes + fp16 scales/offsets of the q2 projections */
    uint64_t weights_dense;   /* embedding, norms, untied head, fp32 projections */
    uint64_t adapters, grads, moments;
    uint64_t activations;     /* one micro-batch's forward state (rq_forward_bytes) */
    uint64_t scratch;         /* the trainer's device buffers (d_hidden, teacher targets, scope hook
                                 buffer) + cuda: the backend's own scratch (bf16 conversion buffer,
                                 dequantized tile, attention workspace, cuBLASLt workspace) */
    uint64_t teacher_weights; /* layer / linear scope: the fp32 teacher kept beside the student */
    uint64_t teacher_activations; /* its training state */
    uint64_t host;            /* host buffers of the trainer: tokens, a teacher window, the
                                 checkpoint-transfer and best-adapter copies, the checkpoint
                                 buffer, forward's host arrays */
    uint64_t training;        /* the training phase on the device (cpu: host included) */
    uint64_t teacher_pass;    /* calibrate with a teacher pass, layer-streamed: one fp32 layer (the
                                 embedding table in the first step), the windows' residual streams
                                 (unless spilled), the cache writer's buffers, one inference state
                                 (+ cpu: the student loaded beside it; cuda, on the device: the
                                 inference state, the backend's scratch, the bound layer); 0: none */
    uint64_t teacher_streams; /* of which the residual streams [windows][T][dim] fp32 (0: spilled) */
    uint64_t teacher_whole;   /* for comparison: the same pass with the whole fp32 teacher resident */
    uint64_t total;           /* max(training, teacher_pass): what must fit in be->mem_info's free */
    uint64_t host_total;      /* cuda: host memory the run needs besides (model as loaded + host buffers) */
    /* teacher-target cache (calibrate, model scope with mse_weight > 0) */
    uint64_t cache_disk;      /* fp32 hidden states of every window: the file's upper bound (zstd
                                 gains little on fp32 noise) */
    uint64_t cache_resident;  /* decompressed targets held at once (one micro-batch) */
    size_t adapter_params;
    int n_adapters;
} rq_plan;

/* Compute the plan for a model of shape c; RQ_ERR_ARG on nonsensical options. */
rq_status rq_plan_compute(const rq_config *c, const rq_plan_opts *o, rq_plan *p, rq_err *err);

/* Refuse a run whose plan cannot fit: free = be->mem_info's free bytes;
 * resident = bytes of the plan already allocated from that memory (on the CPU
 * the models loaded so far; on CUDA 0 before the first upload). Fails with
 * RQ_ERR_NOMEM naming the sizes, the largest categories and what to change. */
rq_status rq_plan_check(const rq_plan *p, const rq_plan_opts *o, rq_backend *be, uint64_t resident, rq_err *err);
/* The same decision for given free bytes (tests fake mem_info with it). */
rq_status rq_plan_check_free(const rq_plan *p, const rq_plan_opts *o, uint64_t free_bytes, uint64_t resident,
                             const char *device, rq_err *err);

/* Model FLOPs of one micro-batch of B x T tokens (the base frozen: no weight
 * gradients). Dense matmul 2 FLOPs per multiply-add. Attention counts the
 * causal half (query t sees t + 1 keys): QK^T and PV each 2 * hd per pair. */
typedef struct rq_plan_flops {
    double proj_fwd, head_fwd, attn_fwd, adapter_fwd;  /* forward */
    double proj_bwd, head_bwd, attn_bwd, adapter_bwd;  /* backward: input gradients (+ adapter weight grads) */
    double total;
    double per_token;
    /* bytes a device must move per micro-batch at least: q2 weights read twice
       (forward and backward), the head read twice (fp32), teacher targets read once */
    double weight_bytes, teacher_bytes;
} rq_plan_flops;

void rq_plan_flops_compute(const rq_config *c, const rq_plan_opts *o, rq_plan_flops *f);

#endif
