/* The memory plan and FLOP count of a training run (see plan.h). */
#include "plan.h"

#include "../backend/scratch.h"
#include "../quant/q2.h"
#include "calib.h"

void rq_plan_default_opts(rq_plan_opts *o) {
    *o = (rq_plan_opts){.device = RQ_PLAN_CPU,
                        .stage = RQ_PLAN_CALIBRATE,
                        .scope = RQ_SCOPE_MODEL,
                        .mse_weight = 0.5,
                        .ce_weight = 0.5,
                        .adapter = RQ_ADAPTER_QALORA,
                        .r = 64,
                        .adapter_group_size = 64,
                        .targets = RQ_ADAPTER_ALL_PROJ,
                        .micro_batch = 1,
                        .seq_len = 512,
                        .n_windows = 320,
                        .student_q2 = true,
                        .quant_group_size = 64};
}

static int adapter_cols(const rq_plan_opts *o, int in) {
    int gs = o->adapter_group_size > 0 ? o->adapter_group_size : 64;
    return o->adapter == RQ_ADAPTER_QALORA ? (in + gs - 1) / gs : in;
}

/* Bytes of a forward state of B x T tokens as rq_forward_create would
 * allocate them (forward.c's own size table, walked dry): train with the
 * adapters of ad (NULL: none), or an inference state without cache. */
static rq_status forward_size(const rq_config *c, rq_adapter_set *ad, int B, int T, bool train, rq_forward_size *fs,
                              rq_err *err) {
    rq_forward_opts fo = {.max_batch = B, .max_seq = T, .train = train, .adapters = ad};
    return rq_forward_size_of(c, &fo, fs, err);
}

rq_status rq_plan_compute(const rq_config *c, const rq_plan_opts *o, rq_plan *p, rq_err *err) {
    *p = (rq_plan){0};
    if (o->micro_batch <= 0 || o->seq_len <= 0)
        return RQ_FAIL(err, RQ_ERR_ARG, "plan: micro-batch %d and sequence length %d must be positive", o->micro_batch,
                       o->seq_len);
    if (o->r <= 0 || !(o->targets & RQ_ADAPTER_ALL_PROJ))
        return RQ_FAIL(err, RQ_ERR_ARG, "plan: rank %d must be positive and at least one projection targeted", o->r);
    if (o->student_q2 && o->quant_group_size <= 0)
        return RQ_FAIL(err, RQ_ERR_ARG, "plan: q2 group size %d must be positive", o->quant_group_size);
    if (c->dim <= 0 || c->n_layers <= 0 || c->hidden_dim <= 0 || c->n_heads <= 0 || c->n_kv_heads <= 0 ||
        c->head_dim <= 0 || c->vocab_size <= 0)
        return RQ_FAIL(err, RQ_ERR_ARG, "plan: the model config has a non-positive dimension");
    const bool cuda = o->device == RQ_PLAN_CUDA, calib = o->stage == RQ_PLAN_CALIBRATE;
    const uint64_t T = (uint64_t)o->seq_len, dim = (uint64_t)c->dim;

    /* weights: q2 projections as stored, the rest fp32 (one allocation) */
    uint64_t dense_floats = (uint64_t)c->vocab_size * dim * (c->tie_embeddings ? 1 : 2) +
                            (uint64_t)c->n_layers * 2 * dim + dim;
    uint64_t q2 = 0;
    for (int l = 0; l < c->n_layers; l++)
        for (int pj = 0; pj < RQ_N_PROJ; pj++) {
            int out, in;
            rq_proj_shape(c, pj, &out, &in);
            if (o->student_q2) q2 += rq_q2_data_bytes(out, in, o->quant_group_size);
            else dense_floats += (uint64_t)out * in;
        }
    p->weights_q2 = q2;
    p->weights_dense = dense_floats * sizeof(float);

    /* the adapters as rq_adapter_set_create shapes them (nothing allocated) */
    rq_adapter_config ac = {.type = o->adapter, .r = o->r, .alpha = 1.0f, .group_size = o->adapter_group_size,
                            .targets = o->targets};
    rq_adapter_set *shape = NULL;
    RQ_TRY(rq_adapter_set_plan(c, &ac, &shape, err));
    p->adapter_params = shape->n_params;
    p->n_adapters = rq_adapter_set_count(shape);
    p->adapters = p->grads = shape->n_params * sizeof(float);
    p->moments = rq_optim_moment_bytes(shape->n_params);
    rq_forward_size student, teacher = {0}, infer = {0};
    rq_status st = forward_size(c, shape, o->micro_batch, o->seq_len, true, &student, err);
    rq_adapter_set_free(shape);
    RQ_TRY(st);
    p->activations = student.act_bytes + student.kv_bytes;

    const bool teacher_targets = calib && o->mse_weight > 0; /* read from the cache in every scope */
    const bool teacher_beside = calib && o->scope != RQ_SCOPE_MODEL;
    const uint64_t teacher_fp32 = (uint64_t)rq_config_n_params(c) * sizeof(float);
    if (teacher_beside) {
        RQ_TRY(forward_size(c, NULL, o->micro_batch, o->seq_len, true, &teacher, err));
        p->teacher_weights = teacher_fp32;
        p->teacher_activations = teacher.act_bytes + teacher.kv_bytes;
    }
    /* rq_train's own buffers, from its size table */
    rq_train_opts to;
    rq_train_default_opts(&to);
    to.micro_batch = o->micro_batch, to.seq_len = o->seq_len;
    to.mse_weight = teacher_targets ? o->mse_weight : 0.0;
    to.scope = teacher_beside ? o->scope : RQ_SCOPE_MODEL;
    rq_train_size trainer;
    rq_train_size_of(c, &to, p->adapter_params, &trainer);
    p->host = trainer.host + student.host_bytes + teacher.host_bytes;
    p->scratch = trainer.device;
    /* the device's own scratch, as the CUDA backend sizes it (bf16 GEMM operands, the default
       precision). The CPU backend's (rq_cpu_scratch_bytes: its 8 MiB dequantization tile,
       attention_bwd's T x T) is not counted here: see plan.h */
    if (cuda) p->scratch += rq_cuda_scratch_bytes(true, c, o->micro_batch, o->seq_len, true, o->student_q2);
    const uint64_t weights = p->weights_q2 + p->weights_dense;
    p->training = weights + p->adapters + p->grads + p->moments + p->activations + p->scratch + p->teacher_weights +
                  p->teacher_activations + (cuda ? 0 : p->host);
    if (calib && !o->teacher_cached) {
        /* the teacher runs over every window a layer at a time (rq_teacher_cache_write_streamed:
           its own size table), batch 1, in an inference state; on the CPU the student is already
           loaded beside it, on CUDA it is not uploaded yet and the device holds the inference state,
           the backend's scratch and the bound copy of one layer and the final norm */
        rq_teacher_stream_size ts;
        rq_teacher_stream_size_of(c, o->n_windows, o->seq_len, o->teacher_spill, &ts);
        RQ_TRY(forward_size(c, NULL, 1, o->seq_len, false, &infer, err));
        p->teacher_whole = teacher_fp32 + infer.act_bytes + infer.kv_bytes +
                           (cuda ? rq_cuda_scratch_bytes(true, c, 1, o->seq_len, false, false)
                                 : weights + infer.host_bytes);
        if (o->teacher_resident || teacher_beside) p->teacher_pass = p->teacher_whole;
        else {
            p->teacher_streams = ts.streams;
            p->teacher_pass = infer.act_bytes + infer.kv_bytes +
                              (cuda ? rq_cuda_scratch_bytes(true, c, 1, o->seq_len, false, false) + ts.layer + ts.norm
                                    : ts.total + infer.host_bytes + weights);
        }
    }
    p->total = p->training > p->teacher_pass ? p->training : p->teacher_pass;
    if (cuda) {
        /* the streamed teacher's host buffers (the residual streams, one layer) come before training */
        uint64_t teacher_host = 0;
        if (calib && !o->teacher_cached && !o->teacher_resident && !teacher_beside) {
            rq_teacher_stream_size ts;
            rq_teacher_stream_size_of(c, o->n_windows, o->seq_len, o->teacher_spill, &ts);
            teacher_host = ts.total + infer.host_bytes;
        }
        const uint64_t beside = teacher_beside || (calib && !o->teacher_cached && o->teacher_resident) ? teacher_fp32 : 0;
        p->host_total = weights + (p->host + beside > teacher_host ? p->host + beside : teacher_host);
    }
    if (calib) {
        const uint64_t N = (uint64_t)o->micro_batch * T;
        p->cache_disk = (uint64_t)o->n_windows * T * dim * sizeof(float);
        p->cache_resident = teacher_targets ? N * dim * sizeof(float) : 0;
    }
    return RQ_OK;
}

static double gib(uint64_t b) { return (double)b / (1024.0 * 1024.0 * 1024.0); }

rq_status rq_plan_check_free(const rq_plan *p, const rq_plan_opts *o, uint64_t free_bytes, uint64_t resident,
                             const char *device, rq_err *err) {
    uint64_t need = p->total > resident ? p->total - resident : 0;
    if (need <= free_bytes) return RQ_OK;
    const bool teacher_peak = p->teacher_pass > p->training;
    return RQ_FAIL(err, RQ_ERR_NOMEM,
                   "memory plan: the run needs %.2f GiB on %s (%s; %.2f GiB already allocated) but only %.2f GiB "
                   "is free. Training: weights %.2f GiB, adapters + gradients + moments %.2f GiB, activations "
                   "%.2f GiB (micro-batch %d x %d tokens; they grow with B*T, attention with B*T^2), scratch %.2f "
                   "GiB%s%s. Lower --micro-batch or --seq-len, a smaller --rank, run on a device with more memory, "
                   "or pass --no-memory-check to try anyway (see rilq inspect MODEL --plan)",
                   gib(p->total), device, teacher_peak ? "peak in the one-off teacher pass" : "peak in training",
                   gib(resident), gib(free_bytes), gib(p->weights_q2 + p->weights_dense),
                   gib(p->adapters + p->grads + p->moments), gib(p->activations), o->micro_batch, o->seq_len, gib(p->scratch),
                   p->teacher_weights ? ", the teacher beside the student (layer/linear scope) " : "",
                   p->teacher_weights ? "(its weights and activations count too)" : "");
}

rq_status rq_plan_check(const rq_plan *p, const rq_plan_opts *o, rq_backend *be, uint64_t resident, rq_err *err) {
    size_t free_b = 0, total_b = 0;
    RQ_TRY(be->mem_info(be, &free_b, &total_b, err));
    return rq_plan_check_free(p, o, free_b, resident, be->name, err);
}

void rq_plan_flops_compute(const rq_config *c, const rq_plan_opts *o, rq_plan_flops *f) {
    *f = (rq_plan_flops){0};
    const double B = o->micro_batch, T = o->seq_len, N = B * T;
    double proj = 0, q2 = 0, ad_fwd = 0;
    for (int pj = 0; pj < RQ_N_PROJ; pj++) {
        int out, in;
        rq_proj_shape(c, pj, &out, &in);
        proj += (double)out * in;
        if (o->student_q2) q2 += (double)rq_q2_data_bytes(out, in, o->quant_group_size);
        else q2 += 4.0 * out * in;
        if (o->targets & (1u << pj))
            /* x~ A^T, u B^T (plus the group means of x for QA-LoRA: one add per input) */
            ad_fwd += 2.0 * o->r * (adapter_cols(o, in) + out) + (o->adapter == RQ_ADAPTER_QALORA ? in : 0);
    }
    const double L = c->n_layers, head = (double)c->vocab_size * c->dim;
    const bool ce = o->ce_weight > 0;
    f->proj_fwd = 2.0 * proj * L * N;
    f->head_fwd = ce ? 2.0 * head * N : 0;
    /* causal: query t attends to t + 1 keys; QK^T and PV 2 * hd FLOPs per pair each */
    f->attn_fwd = 4.0 * L * B * c->n_heads * c->head_dim * (T * (T + 1) / 2.0);
    f->adapter_fwd = ad_fwd * L * N;
    f->proj_bwd = f->proj_fwd;         /* input gradients only: the base is frozen */
    f->head_bwd = f->head_fwd;
    f->attn_bwd = 2.0 * f->attn_fwd;   /* dP = dO V^T, dV = P^T dO, dQ = dS K, dK = dS^T Q */
    f->adapter_bwd = 2.0 * f->adapter_fwd; /* dB, dA and the input gradient through both factors */
    f->total = f->proj_fwd + f->head_fwd + f->attn_fwd + f->adapter_fwd + f->proj_bwd + f->head_bwd + f->attn_bwd +
               f->adapter_bwd;
    f->per_token = f->total / N;
    f->weight_bytes = 2.0 * (q2 * L + (ce ? 4.0 * head : 0));
    f->teacher_bytes = o->stage == RQ_PLAN_CALIBRATE && o->mse_weight > 0 ? 4.0 * N * c->dim : 0;
}
