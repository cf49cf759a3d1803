/* rilq train-lm: LoRA / QA-LoRA fine-tuning on plain text (next-token loss). */
#include <math.h>
#include <stdlib.h>

#include "../pipeline/stages.h"
#include "../train/plan.h"
#include "../train/trainer.h"
#include "cli.h"

static const char *usage =
    "usage: rilq train-lm MODEL --out DIR [options]\n\n"
    "Fine-tune LoRA or QA-LoRA adapters of MODEL (full precision or a q2 artifact) on plain\n"
    "text with the next-token loss. The text is tokenized once and cut into windows of\n"
    "--seq-len tokens; the last --val-windows windows are held out for validation.\n"
    "DIR receives adapter/ (PEFT layout), checkpoint.bin and metrics.jsonl.\n\n";

typedef struct train_lm_opts {
    const char *text, *out, *adapter, *targets, *init, *optim, *schedule;
    int64_t seq_len, val_windows, rank, group_size, steps, batch, accum, seed, warmup, eval_every, checkpoint_every;
    double alpha, lr, weight_decay, clip;
    bool resume, no_memory_check;
    rq_common_opts common;
} train_lm_opts;

#define O train_lm_opts
static const rq_opt opts[] = {
    RQ_OPT_S("--out", NULL, O, out, NULL, NULL, "DIR", "the output directory (required)"),
    RQ_OPT_S("--text", NULL, O, text, NULL, NULL, "FILE",
             "training text (default: $RILQ_DATA/datasets/wikitext2/wiki.valid.raw)"),
    RQ_OPT_I("--seq-len", NULL, O, seq_len, "256", 2, 1 << 20, "N", "window length"),
    RQ_OPT_I("--val-windows", NULL, O, val_windows, "16", 0, 1 << 30, "N", "held-out windows"),
    RQ_OPT_S("--adapter", NULL, O, adapter, "qalora", "lora|qalora", NULL, "adapter type"),
    RQ_OPT_I("--rank", NULL, O, rank, "16", 1, 4096, "R", "adapter rank"),
    RQ_OPT_N("--alpha", NULL, O, alpha, "16", 1e-6, 1e6, "A", "adapter alpha, scaling alpha / r"),
    RQ_OPT_I("--group-size", NULL, O, group_size, RQ_STR(RQ_DEFAULT_GROUP_SIZE), 1, 1 << 20, "G", "QA-LoRA pooling group"),
    RQ_OPT_S("--targets", NULL, O, targets, "all", NULL, "LIST", "projections, e.g. q_proj,v_proj; all: the seven"),
    RQ_OPT_S("--init", NULL, O, init, "gaussian", NULL, "gaussian|kaiming_uniform|xavier_uniform",
             "initialization of the adapters"),
    RQ_OPT_I("--steps", NULL, O, steps, "100", 0, 1099511627776.0, "N", "optimizer steps"),
    RQ_OPT_I("--batch", NULL, O, batch, "1", 1, 4096, "B", "windows per forward"),
    RQ_OPT_I("--accum", NULL, O, accum, "8", 1, 1 << 20, "K", "micro-batches accumulated per step"),
    RQ_OPT_N("--lr", NULL, O, lr, "1e-4", 0, 10, "LR", "peak learning rate"),
    RQ_OPT_I("--seed", NULL, O, seed, "42", 0, (double)INT64_MAX, "S", "seed of the adapters' initialization and the data order"),
    RQ_OPT_S("--optim", NULL, O, optim, "adam", NULL, "adam|adamw", "optimizer"),
    RQ_OPT_N("--weight-decay", NULL, O, weight_decay, "0", 0, 10, "WD", "weight decay"),
    RQ_OPT_N("--clip", NULL, O, clip, "0", 0, 1e9, "NORM", "global gradient-norm clip, 0 = off"),
    RQ_OPT_S("--schedule", NULL, O, schedule, "constant", NULL, "constant|linear|cosine", "learning-rate schedule"),
    RQ_OPT_I("--warmup", NULL, O, warmup, "0", 0, 1099511627776.0, "N", "warmup steps"),
    RQ_OPT_I("--eval-every", NULL, O, eval_every, "10", 0, 1 << 30, "N", "validate every N steps"),
    RQ_OPT_I("--checkpoint-every", NULL, O, checkpoint_every, "10", 0, 1 << 30, "N",
             "checkpoint every N steps and at the end"),
    RQ_OPT_B("--resume", NULL, O, resume, "false", "continue from DIR/checkpoint.bin"),
    RQ_OPT_B("--no-memory-check", NULL, O, no_memory_check, "false",
             "run even when the memory plan exceeds the free memory"),
    RQ_COMMON_OPT_LINES(O),
};
static const rq_opt_table table = RQ_OPT_TABLE(opts, O);
#undef O

typedef struct text_windows {
    const int *ids;
    int T;
    int64_t first; /* window index of example 0 */
} text_windows;

static rq_status get_window(void *user, int64_t example, int *tokens, int *targets, float *teacher, int *len, rq_err *err) {
    const text_windows *w = user;
    const int *src = w->ids + (w->first + example) * w->T;
    memcpy(tokens, src, sizeof(int) * (size_t)w->T);
    memcpy(targets, src + 1, sizeof(int) * (size_t)w->T); /* window k reads T+1 tokens: its last target is the next window's first token */
    return RQ_OK;
}

int cmd_train_lm(int argc, char **argv) {
    train_lm_opts a;
    rq_err err = {0};
    const char *pos[1];
    int n_pos = 0;
    memset(&a, 0, sizeof a);
    if (rq_opts_defaults(table, &a, &err)) return cli_fail("train-lm", &err);
    int pr = cli_parse_table("train-lm", usage, NULL, table, &a, argc, argv, pos, 1, &n_pos);
    if (pr) return pr < 0 ? 0 : pr;
    if (!n_pos) return cli_usage_error("train-lm", "missing MODEL");
    if (!a.out) return cli_usage_error("train-lm", "missing --out DIR");
    const char *path = pos[0], *text_path = a.text, *out = a.out;
    const long seq = (long)a.seq_len, nval = (long)a.val_windows;

    rq_adapter_config ac = {.r = (int)a.rank, .alpha = (float)a.alpha, .group_size = (int)a.group_size,
                            .seed = (uint64_t)a.seed};
    if (!strcmp(a.adapter, "lora")) ac.type = RQ_ADAPTER_LORA;
    else if (!strcmp(a.adapter, "qalora")) ac.type = RQ_ADAPTER_QALORA;
    else return cli_usage_error("train-lm", "--adapter expects lora or qalora, got '%s'", a.adapter);
    rq_train_opts o;
    rq_train_default_opts(&o);
    if (rq_adapter_targets_parse(a.targets, &ac.targets, &err) || rq_adapter_init_parse(a.init, &ac.init, &err) ||
        rq_optim_kind_parse(a.optim, &o.optim.kind, &err) || rq_schedule_kind_parse(a.schedule, &o.schedule.kind, &err))
        return cli_fail("train-lm", &err);
    rq_optim_kind kind = o.optim.kind;
    o.optim = rq_optim_defaults(kind);
    o.optim.weight_decay = (float)a.weight_decay;
    o.optim.max_grad_norm = (float)a.clip;
    o.schedule.lr = a.lr;
    o.schedule.warmup_steps = a.warmup;
    o.schedule.total_steps = a.steps;
    o.seq_len = (int)seq;
    o.micro_batch = (int)a.batch;
    o.accum = (int)a.accum;
    o.max_steps = a.steps;
    o.seed = (uint64_t)a.seed;
    o.eval_every = (int)a.eval_every;
    o.checkpoint_every = (int)a.checkpoint_every;
    o.out_dir = out;
    o.resume = a.resume;

    char *default_text = NULL;
    if (!text_path) {
        const char *root = getenv("RILQ_DATA");
        if (!root || !*root) return cli_usage_error("train-lm", "no --text FILE and no RILQ_DATA to find WikiText-2 in");
        default_text = rq_path_join_alloc(root, "datasets/wikitext2/wiki.valid.raw", &err);
        if (!default_text) return cli_fail("train-lm", &err);
        text_path = default_text;
    }
    rq_model *m = NULL;
    rq_backend *be = NULL;
    rq_adapter_set *ad = NULL;
    char *text = NULL, *adir = NULL;
    int *ids = NULL, n_ids = 0, rc = 0;
    size_t text_len = 0;
    if (rq_model_load(path, a.common.tokenizer, &m, &err) ||
        rq_backend_create(a.common.device, (int)a.common.threads, &be, &err) ||
        rq_file_read_all(text_path, &text, &text_len, &err)) {
        rc = cli_fail("train-lm", &err);
        goto done;
    }
    if (!m->tok) {
        RQ_FAIL(&err, RQ_ERR_ARG, "%s has no tokenizer; pass --tokenizer PATH", path);
        rc = cli_fail("train-lm", &err);
        goto done;
    }
    if (rq_tokenizer_encode(m->tok, text, text_len, RQ_BOS_DEFAULT, &ids, &n_ids, &err) ||
        rq_adapter_set_create(&m->cfg, &ac, be, &ad, &err)) {
        rc = cli_fail("train-lm", &err);
        goto done;
    }
    int64_t n_windows = n_ids > 0 ? (n_ids - 1) / seq : 0;
    if (n_windows <= nval) {
        RQ_FAIL(&err, RQ_ERR_ARG, "%s: %d tokens make %lld windows of %ld; need more than the %ld held out", text_path,
                n_ids, (long long)n_windows, seq, nval);
        rc = cli_fail("train-lm", &err);
        goto done;
    }
    text_windows tw = {ids, (int)seq, 0}, vw = {ids, (int)seq, n_windows - nval};
    rq_train_data train = {get_window, &tw, n_windows - nval}, val = {get_window, &vw, nval};
    {
        printf("train-lm: %s (%s), %s r=%d alpha=%g on %d projections, %zu parameters\n", m->path, m->format,
               rq_adapter_type_name(ac.type), ac.r, ac.alpha, rq_adapter_set_count(ad), ad->n_params);
        printf("data: %s, %d tokens -> %lld training + %ld held-out windows of %ld\n", text_path, n_ids,
               (long long)(n_windows - nval), nval, seq);
        /* the memory plan, one allocation per category; refused before the training state allocates */
        rq_plan_opts po;
        rq_plan_default_opts(&po);
        po.stage = RQ_PLAN_FINETUNE;
        po.mse_weight = 0, po.ce_weight = 1;
        po.adapter = ac.type, po.r = ac.r, po.adapter_group_size = ac.group_size, po.targets = ac.targets;
        po.micro_batch = (int)a.batch, po.seq_len = (int)seq;
        uint64_t resident = 2 * (uint64_t)rq_adapter_set_bytes(ad) + (be->caps.weights_on_host ? rq_model_weight_bytes(m) : 0);
        if (rq_stage_memory_check(be, m, &po, resident, a.no_memory_check, &err)) {
            rc = cli_fail("train-lm", &err);
            goto done;
        }
    }
    rq_train_result res;
    if (rq_train(m, be, ad, &train, &val, &o, NULL, NULL, &res, &err)) {
        rc = cli_fail("train-lm", &err);
        goto done;
    }
    adir = rq_path_join_alloc(out, "adapter", &err);
    if (!adir || rq_adapter_set_save_peft(ad, adir, &err)) {
        rc = cli_fail("train-lm", &err);
        goto done;
    }
    printf("trained %lld steps in %.1fs (%.0f tokens/s)%s\n", (long long)res.steps, res.seconds, res.tokens_per_s,
           res.resumed ? " (resumed)" : "");
    if (!isnan(res.first_val))
        printf("held-out perplexity: %.4f before, %.4f best (step %lld)\n", exp(res.first_val), exp(res.best_val),
               (long long)res.best_step);
    printf("adapters: %s\n", adir);
done:
    free(adir);
    free(default_text);
    free(text);
    free(ids);
    rq_adapter_set_free(ad);
    rq_backend_destroy(be);
    rq_model_free(m);
    return rc;
}
