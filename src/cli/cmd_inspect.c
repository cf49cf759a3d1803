/* rilq inspect: what a model is and what it will cost to run. */
#include <stdlib.h>

#include "../io/hf.h"
#include "../model/forward.h"
#include "../pipeline/stages.h"
#include "../quant/q2.h"
#include "../train/plan.h"
#include "cli.h"

static const char *usage =
    "usage: rilq inspect MODEL [options]\n"
    "       rilq inspect MODEL|CONFIG --plan [plan options]\n\n"
    "Print the architecture, parameter counts, source dtypes and the memory the\n"
    "model needs. MODEL is a Hugging Face directory, a GGUF file or a llama2.c .bin.\n\n"
    "With --plan, print instead the memory plan of a training run (src/train/plan.h),\n"
    "per category in the device's dtypes (--device cpu: all fp32; cuda: q2 weights,\n"
    "bf16 GEMM scratch). MODEL may then also be a bare config.json (or --config PATH),\n"
    "e.g. tests/data/llama2-7b-config.json, so runs of models not at hand can be sized.\n\n";

typedef struct inspect_opts {
    int64_t ctx;
    bool plan, teacher_cached, teacher_whole;
    const char *config, *stage, *scope, *adapter, *teacher_streams;
    int64_t rank, group_size, seq_len, micro_batch, accum, windows, q2_group_size;
    rq_common_opts common;
} inspect_opts;

#define O inspect_opts
static const rq_opt opts[] = {
    RQ_OPT_I("--ctx", NULL, O, ctx, NULL, 1, 1 << 20, "N",
             "sequence length for the activation estimate (default min(context, 2048))"),
    RQ_OPT_B("--plan", NULL, O, plan, "false", "print the memory plan of a training run instead, as the plan: options set it"),
    RQ_OPT_S("--config", NULL, O, config, NULL, NULL, "PATH", "plan: the config.json to plan for (instead of MODEL)"),
    RQ_OPT_S("--stage", NULL, O, stage, "calibrate", "calibrate|finetune|train-lm", NULL, "plan: the training run"),
    RQ_OPT_S("--scope", NULL, O, scope, "model", "model|layer|linear", NULL, "plan: calibration scope"),
    RQ_OPT_S("--adapter", NULL, O, adapter, "qalora", "qalora|lora", NULL, "plan: adapter type"),
    RQ_OPT_I("--rank", NULL, O, rank, "64", 1, 1 << 16, "R", "plan: adapter rank"),
    RQ_OPT_I("--group-size", NULL, O, group_size, RQ_STR(RQ_DEFAULT_GROUP_SIZE), 1, 1 << 20, "G",
             "plan: QA-LoRA pooling group"),
    RQ_OPT_I("--seq-len", NULL, O, seq_len, "512", 1, 1 << 20, "T", "plan: tokens per sequence"),
    RQ_OPT_I("--micro-batch", NULL, O, micro_batch, "1", 1, 1 << 16, "B", "plan: sequences per forward"),
    RQ_OPT_I("--accum", NULL, O, accum, "8", 1, 1 << 20, "K", "plan: micro-batches per update, for the FLOPs per update"),
    RQ_OPT_I("--windows", NULL, O, windows, "320", 1, 1 << 24, "N", "plan: calibration windows in the teacher cache"),
    RQ_OPT_I("--q2-group-size", NULL, O, q2_group_size, RQ_STR(RQ_DEFAULT_GROUP_SIZE), 0, 1 << 20, "G",
             "plan: group size of the student's 2-bit weights, 0: an fp32 student"),
    RQ_OPT_B("--teacher-cached", NULL, O, teacher_cached, "false", "plan: the teacher cache exists: no teacher pass"),
    RQ_OPT_S("--teacher-streams", NULL, O, teacher_streams, "memory", "memory|file", NULL,
             "plan: where the layer-streamed teacher pass keeps the windows' residual streams"),
    RQ_OPT_B("--teacher-whole", NULL, O, teacher_whole, "false",
             "plan: the whole fp32 teacher is loaded (SVD init; a q2 artifact as teacher)"),
    RQ_COMMON_OPT_LINES(O),
};
static const rq_opt_table table = RQ_OPT_TABLE(opts, O);
#undef O

static void print_bytes(const char *what, double bytes) {
    printf("  %-28s %10.2f MiB\n", what, bytes / 1048576.0);
}

static void print_plan_line(const char *what, uint64_t bytes) {
    if (bytes >= (1ull << 30)) printf("  %-44s %10.2f GiB\n", what, (double)bytes / 1073741824.0);
    else printf("  %-44s %10.2f MiB\n", what, (double)bytes / 1048576.0);
}

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

/* rilq inspect --plan: the config from a config.json (no weights read) or the loaded model. */
static int inspect_plan(const char *path, const inspect_opts *a) {
    rq_err err = {0};
    rq_config c;
    char *cfg_path = NULL;
    const char *from = a->config;
    if (!from && path && rq_dir_exists(path)) {
        cfg_path = rq_path_join_alloc(path, "config.json", &err);
        if (!cfg_path) return cli_fail("inspect", &err);
        if (rq_file_exists(cfg_path)) from = cfg_path;
    }
    if (!from && path && ends_with(path, ".json")) from = path;
    if (from) {
        bool bad = rq_hf_read_config(from, &c, &err) || rq_config_validate(&c, from, &err);
        free(cfg_path);
        if (bad) return cli_fail("inspect", &err);
    } else {
        free(cfg_path);
        rq_model *m = NULL;
        if (rq_model_load(path, a->common.tokenizer, &m, &err) != RQ_OK) return cli_fail("inspect", &err);
        c = m->cfg;
        rq_model_free(m);
    }
    rq_plan_opts o;
    rq_plan_default_opts(&o);
    o.r = (int)a->rank, o.adapter_group_size = (int)a->group_size, o.seq_len = (int)a->seq_len;
    o.micro_batch = (int)a->micro_batch, o.n_windows = (int)a->windows;
    o.student_q2 = a->q2_group_size > 0, o.quant_group_size = (int)a->q2_group_size;
    o.teacher_cached = a->teacher_cached;
    o.teacher_resident = a->teacher_whole;
    if (!strcmp(a->teacher_streams, "file")) o.teacher_spill = true;
    else if (strcmp(a->teacher_streams, "memory") != 0)
        return cli_usage_error("inspect", "--teacher-streams expects memory or file, got '%s'", a->teacher_streams);
    if (!strcmp(a->stage, "calibrate")) o.stage = RQ_PLAN_CALIBRATE;
    else if (!strcmp(a->stage, "finetune") || !strcmp(a->stage, "train-lm")) {
        o.stage = RQ_PLAN_FINETUNE;
        o.mse_weight = 0, o.ce_weight = 1;
    } else return cli_usage_error("inspect", "--stage expects calibrate, finetune or train-lm, got '%s'", a->stage);
    if (!strcmp(a->scope, "model")) o.scope = RQ_SCOPE_MODEL;
    else if (!strcmp(a->scope, "layer")) o.scope = RQ_SCOPE_LAYER;
    else if (!strcmp(a->scope, "linear")) o.scope = RQ_SCOPE_LINEAR;
    else return cli_usage_error("inspect", "--scope expects model, layer or linear, got '%s'", a->scope);
    if (!strcmp(a->adapter, "qalora")) o.adapter = RQ_ADAPTER_QALORA;
    else if (!strcmp(a->adapter, "lora")) o.adapter = RQ_ADAPTER_LORA;
    else return cli_usage_error("inspect", "--adapter expects qalora or lora, got '%s'", a->adapter);
    const char *dev = a->common.device ? a->common.device : "cpu";
    if (!strcmp(dev, "cuda")) o.device = RQ_PLAN_CUDA;
    else if (strcmp(dev, "cpu") != 0) return cli_usage_error("inspect", "--device expects cpu or cuda, got '%s'", dev);
    rq_plan p;
    if (rq_plan_compute(&c, &o, &p, &err)) return cli_fail("inspect", &err);
    const bool cuda = o.device == RQ_PLAN_CUDA;
    printf("model        %s: %d layers, dim %d, ffn %d, %d heads (head dim %d), %d kv heads, vocabulary %d%s\n",
           from ? from : path, c.n_layers, c.dim, c.hidden_dim, c.n_heads, c.head_dim, c.n_kv_heads, c.vocab_size,
           c.tie_embeddings ? ", tied head" : "");
    char pool[48] = "";
    if (o.adapter == RQ_ADAPTER_QALORA) snprintf(pool, sizeof pool, " (pooling groups of %d)", o.adapter_group_size);
    printf("run          %s%s%s, %s r=%d%s on %d projections (%zu parameters), micro-batch %d x %d tokens, "
           "device %s\n",
           a->stage, o.stage == RQ_PLAN_CALIBRATE ? ", scope " : "", o.stage == RQ_PLAN_CALIBRATE ? a->scope : "",
           rq_adapter_type_name(o.adapter), o.r, pool, p.n_adapters, p.adapter_params, o.micro_batch, o.seq_len, dev);
    printf("memory plan (%s):\n", cuda ? "cuda: q2 weights, fp32 tensors/activations/adapters/moments, bf16 GEMM scratch"
                                         : "cpu: everything fp32, q2 weights dequantized per tile");
    char what[96];
    snprintf(what, sizeof what, "weights q2 (2-bit, group %d)", o.quant_group_size);
    if (o.student_q2) print_plan_line(what, p.weights_q2);
    print_plan_line(o.student_q2 ? "weights fp32 (embedding, head, norms)" : "weights fp32", p.weights_dense);
    print_plan_line("adapters (fp32)", p.adapters);
    print_plan_line("gradients (fp32)", p.grads);
    print_plan_line("Adam moments (fp32)", p.moments);
    snprintf(what, sizeof what, "activations (%d x %d, kept for backward)", o.micro_batch, o.seq_len);
    print_plan_line(what, p.activations);
    print_plan_line(cuda ? "scratch (trainer, bf16 GEMM, attention)" : "scratch (trainer: d_hidden, targets)", p.scratch);
    if (p.teacher_weights) {
        print_plan_line("teacher weights (fp32, beside the student)", p.teacher_weights);
        print_plan_line("teacher activations", p.teacher_activations);
    }
    print_plan_line(cuda ? "host buffers (in host memory)" : "host buffers (trainer, checkpoint)", p.host);
    print_plan_line(cuda ? "training total on the device" : "training total", p.training);
    if (p.teacher_pass) {
        const bool whole = p.teacher_pass == p.teacher_whole;
        print_plan_line(whole ? "teacher pass (whole fp32 teacher, once)" : "teacher pass (a layer at a time, once)",
                        p.teacher_pass);
        if (!whole) {
            print_plan_line(o.teacher_spill ? "  of which window streams (in a file)" : "  of which window streams",
                            p.teacher_streams);
            print_plan_line("  (with the whole fp32 teacher)", p.teacher_whole);
        }
    }
    print_plan_line("peak: must be free on the device", p.total);
    if (cuda) print_plan_line("host memory besides (models as loaded)", p.host_total);
    if (o.stage == RQ_PLAN_CALIBRATE) {
        snprintf(what, sizeof what, "teacher cache on disk (%d windows, <=)", o.n_windows);
        print_plan_line(what, p.cache_disk);
        print_plan_line("teacher targets resident (one micro-batch)", p.cache_resident);
    }
    rq_plan_flops f;
    rq_plan_flops_compute(&c, &o, &f);
    printf("compute per micro-batch: %.1f GFLOP (%.2f GFLOP/token: projections %.1f%%, head %.1f%%, attention %.1f%%, "
           "adapters %.1f%%); per update of %lld micro-batches %.2f TFLOP; 2-bit weight traffic %.1f MiB per micro-batch\n",
           f.total / 1e9, f.per_token / 1e9, 100 * (f.proj_fwd + f.proj_bwd) / f.total,
           100 * (f.head_fwd + f.head_bwd) / f.total, 100 * (f.attn_fwd + f.attn_bwd) / f.total,
           100 * (f.adapter_fwd + f.adapter_bwd) / f.total, (long long)a->accum, f.total * (double)a->accum / 1e12,
           f.weight_bytes / 1048576.0);
    /* what the device has now, when it can be asked */
    rq_backend *be = NULL;
    rq_err e2 = {0};
    if (rq_backend_create(dev, 1, &be, &e2) == RQ_OK) {
        size_t fb = 0, tb = 0;
        if (be->mem_info(be, &fb, &tb, &e2) == RQ_OK)
            printf("device %s now: %.2f GiB free of %.2f GiB: the run %s\n", dev, fb / 1073741824.0, tb / 1073741824.0,
                   p.total <= fb ? "fits" : "does NOT fit (calibrate/finetune/train-lm would refuse it)");
        rq_backend_destroy(be);
    } else {
        printf("device %s: not available here (%s)\n", dev, e2.msg);
    }
    return 0;
}

int cmd_inspect(int argc, char **argv) {
    inspect_opts a;
    rq_err err = {0};
    const char *pos[1];
    int n_pos = 0;
    memset(&a, 0, sizeof a);
    if (rq_opts_defaults(table, &a, &err)) return cli_fail("inspect", &err);
    int pr = cli_parse_table("inspect", usage, NULL, table, &a, argc, argv, pos, 1, &n_pos);
    if (pr) return pr < 0 ? 0 : pr;
    const char *path = n_pos ? pos[0] : NULL;
    if (a.plan) {
        if (!path && !a.config) return cli_usage_error("inspect", "missing MODEL (or --config PATH)");
        return inspect_plan(path, &a);
    }
    if (a.config) return cli_usage_error("inspect", "--config belongs to --plan");
    if (!path) return cli_usage_error("inspect", "missing MODEL");
    if (ends_with(path, ".json"))
        return cli_usage_error("inspect", "%s is a config, not a model: add --plan for the memory plan", path);
    rq_model *m = NULL;
    if (rq_model_load(path, a.common.tokenizer, &m, &err) != RQ_OK) return cli_fail("inspect", &err);
    const rq_config *c = &m->cfg;
    printf("model        %s\n", m->path);
    printf("format       %s\n", m->format);
    printf("architecture llama: %d layers, dim %d, ffn %d, %d heads (head dim %d), %d kv heads%s\n", c->n_layers,
           c->dim, c->hidden_dim, c->n_heads, c->head_dim, c->n_kv_heads,
           c->n_kv_heads != c->n_heads ? " (grouped-query attention)" : "");
    printf("vocabulary   %d tokens, embeddings %s\n", c->vocab_size, c->tie_embeddings ? "tied to the head" : "untied");
    printf("context      %d positions, rope theta %g%s, rms eps %g\n", c->max_seq_len, c->rope_theta,
           c->rope_scaling == RQ_ROPE_SCALING_LLAMA3   ? ", llama3 scaling"
           : c->rope_scaling == RQ_ROPE_SCALING_LINEAR ? ", linear scaling"
                                                       : "",
           c->norm_eps);
    printf("dtypes       %s\n", m->dtypes);
    /* q2 linears (a rilq artifact): how many, their format and cost */
    int n_q2 = 0;
    int64_t q2_weights = 0;
    size_t q2_bytes = 0;
    const rq_q2_tensor *q2_first = NULL;
    for (int l = 0; l < c->n_layers; l++)
        for (int p = 0; p < RQ_N_PROJ; p++) {
            const rq_q2_tensor *t = rq_layer_proj(&m->layers[l], p)->q2;
            if (!t) continue;
            if (!q2_first) q2_first = t;
            n_q2++;
            q2_weights += (int64_t)t->out * t->in;
            q2_bytes += rq_q2_nbytes(t);
        }
    if (q2_first)
        printf("quantized    %d of %d projections: 2-bit %s codebook, group size %d, method %s%s, %.4f bits per weight "
               "(%.3f M weights in %.2f MiB); source %s\n",
               n_q2, RQ_N_PROJ * c->n_layers, rq_q2_codebook_name(q2_first->kind), q2_first->group_size,
               m->quant.method[0] ? m->quant.method : "?", m->quant.clip_search ? " + clip search" : "",
               8.0 * (double)q2_bytes / (double)q2_weights, q2_weights / 1e6, q2_bytes / 1048576.0,
               m->quant.source_dtypes[0] ? m->quant.source_dtypes : "?");
    int64_t per_layer = (int64_t)c->dim * (c->n_heads * c->head_dim) * 2 + (int64_t)c->dim * c->n_kv_heads * c->head_dim * 2 +
                        (int64_t)c->dim * c->hidden_dim * 3 + 2 * c->dim;
    int64_t linear = ((int64_t)c->dim * (c->n_heads * c->head_dim) * 2 + (int64_t)c->dim * c->n_kv_heads * c->head_dim * 2 +
                      (int64_t)c->dim * c->hidden_dim * 3) * c->n_layers;
    printf("parameters   %.3f M total: embedding %.3f M, layers %.3f M (%.3f M in the 7 projections), head %s\n",
           m->n_params / 1e6, (double)c->vocab_size * c->dim / 1e6, (double)per_layer * c->n_layers / 1e6, linear / 1e6,
           c->tie_embeddings ? "tied" : "separate");
    if (m->tok)
        printf("tokenizer    %s, %d tokens, bos %d, eos %d\n",
               rq_tokenizer_kind(m->tok) == RQ_TOK_SPM ? "sentencepiece-style BPE" : "byte-level BPE",
               rq_tokenizer_vocab_size(m->tok), rq_tokenizer_bos(m->tok), rq_tokenizer_eos(m->tok));
    else
        printf("tokenizer    none\n");
    int T = a.ctx > 0 ? (int)a.ctx : (c->max_seq_len < 2048 ? c->max_seq_len : 2048);
    size_t kv = 2 * (size_t)c->n_layers * T * c->n_kv_heads * c->head_dim * sizeof(float);
    size_t act = (size_t)T * ((size_t)c->dim * 3 + (size_t)c->n_heads * c->head_dim * 2 +
                              (size_t)c->n_kv_heads * c->head_dim * 2 + (size_t)c->hidden_dim * 2) * sizeof(float);
    printf("memory (fp32 CPU backend, one sequence of %d tokens):\n", T);
    print_bytes(q2_first ? "weights (q2 + fp32)" : "weights", (double)rq_model_weight_bytes(m));
    print_bytes("activations", (double)act);
    print_bytes("KV cache (generation)", (double)kv);
    print_bytes("total", (double)rq_model_weight_bytes(m) + act + kv);
    rq_model_free(m);
    return 0;
}
