/* rilq train-lm: LoRA / QA-LoRA fine-tuning on plain text (next-token loss). */
#include <math.h>
#include <stdlib.h>

#include "../train/plan.h"
#include "../train/trainer.h"
#include "cli.h"

static const char *train_lm_help =
    "usage: rilq train-lm MODEL --out DIR [options]\n\n"
    "Fine-tune LoRA or QA-LoRA adapters of MODEL (full precision or a q2 artifact) on plain\n"
    "text with the next-token loss. The text is tokenized once and cut into windows of\n"
    "--seq-len tokens; the last --val-windows windows are held out for validation.\n"
    "DIR receives adapter/ (PEFT layout), checkpoint.bin and metrics.jsonl.\n\n"
    "data:\n"
    "  --text FILE           training text (default: $RILQ_DATA/datasets/wikitext2/wiki.valid.raw)\n"
    "  --seq-len N           window length (default 256)\n"
    "  --val-windows N       held-out windows (default 16)\n"
    "adapters:\n"
    "  --adapter lora|qalora (default qalora)   --rank R (16)   --alpha A (16)\n"
    "  --group-size G        QA-LoRA pooling group (default 64)\n"
    "  --targets LIST        projections, e.g. q_proj,v_proj (default all seven)\n"
    "  --init gaussian|kaiming_uniform|xavier_uniform (default gaussian)\n"
    "optimization:\n"
    "  --steps N (100)  --batch B (1)  --accum K (8)  --lr LR (1e-4)  --seed S (42)\n"
    "  --optim adam|adamw (adam)  --weight-decay WD (0)  --clip NORM (0 = off)\n"
    "  --schedule constant|linear|cosine (constant)  --warmup N (0)\n"
    "  --eval-every N        validate every N steps (default 10)\n"
    "  --checkpoint-every N  checkpoint every N steps (default 10; always at the end)\n"
    "  --resume              continue from DIR/checkpoint.bin\n" CLI_MEMCHECK_HELP CLI_COMMON_HELP;

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
    const char *path = NULL, *text_path = NULL, *out = NULL;
    const char *adapter = "qalora", *targets = "all", *init = "gaussian", *optim = "adam", *schedule = "constant";
    const char *s_seq = "256", *s_val = "16", *s_rank = "16", *s_alpha = "16", *s_gs = "64", *s_steps = "100",
               *s_batch = "1", *s_accum = "8", *s_lr = "1e-4", *s_seed = "42", *s_wd = "0", *s_clip = "0",
               *s_warmup = "0", *s_eval = "10", *s_ckpt = "10";
    bool resume = false;
    cli_common common = {0};
    const cli_value_opt specs[] = {{"--text", &text_path},     {"--out", &out},          {"--adapter", &adapter},
                        {"--targets", &targets},    {"--init", &init},        {"--optim", &optim},
                        {"--schedule", &schedule},  {"--seq-len", &s_seq},    {"--val-windows", &s_val},
                        {"--rank", &s_rank},        {"--alpha", &s_alpha},    {"--group-size", &s_gs},
                        {"--steps", &s_steps},      {"--batch", &s_batch},    {"--accum", &s_accum},
                        {"--lr", &s_lr},            {"--seed", &s_seed},      {"--weight-decay", &s_wd},
                        {"--clip", &s_clip},        {"--warmup", &s_warmup},  {"--eval-every", &s_eval},
                        {"--checkpoint-every", &s_ckpt}};
    bool no_memcheck = false;
    const cli_bool_opt flags[] = {{"--resume", &resume}, {"--no-memory-check", &no_memcheck}};
    int pr = cli_parse("train-lm", train_lm_help, argc, argv, &common, specs, sizeof specs / sizeof specs[0], flags, 2, &path);
    if (pr) return pr < 0 ? 0 : pr;
    if (!path) return cli_usage_error("train-lm", "missing MODEL");
    if (!out) return cli_usage_error("train-lm", "missing --out DIR");
    long seq, nval, rank, gs, steps, batch, accum, seed, warmup, every, ckpt;
    double alpha, lr, wd, clip;
    if (!cli_parse_int(s_seq, 2, 1 << 20, &seq)) return cli_usage_error("train-lm", "--seq-len expects an integer >= 2");
    if (!cli_parse_int(s_val, 0, 1 << 30, &nval)) return cli_usage_error("train-lm", "--val-windows expects an integer >= 0");
    if (!cli_parse_int(s_rank, 1, 4096, &rank)) return cli_usage_error("train-lm", "--rank expects 1..4096");
    if (!cli_parse_float(s_alpha, 1e-6, 1e6, &alpha)) return cli_usage_error("train-lm", "--alpha expects a positive number");
    if (!cli_parse_int(s_gs, 1, 1 << 20, &gs)) return cli_usage_error("train-lm", "--group-size expects a positive integer");
    if (!cli_parse_int(s_steps, 0, 1L << 40, &steps)) return cli_usage_error("train-lm", "--steps expects an integer >= 0");
    if (!cli_parse_int(s_batch, 1, 4096, &batch)) return cli_usage_error("train-lm", "--batch expects 1..4096");
    if (!cli_parse_int(s_accum, 1, 1 << 20, &accum)) return cli_usage_error("train-lm", "--accum expects a positive integer");
    if (!cli_parse_float(s_lr, 0, 10, &lr)) return cli_usage_error("train-lm", "--lr expects 0..10");
    if (!cli_parse_int(s_seed, 0, __LONG_MAX__, &seed)) return cli_usage_error("train-lm", "--seed expects an integer >= 0");
    if (!cli_parse_float(s_wd, 0, 10, &wd)) return cli_usage_error("train-lm", "--weight-decay expects 0..10");
    if (!cli_parse_float(s_clip, 0, 1e9, &clip)) return cli_usage_error("train-lm", "--clip expects a number >= 0");
    if (!cli_parse_int(s_warmup, 0, 1L << 40, &warmup)) return cli_usage_error("train-lm", "--warmup expects an integer >= 0");
    if (!cli_parse_int(s_eval, 0, 1 << 30, &every)) return cli_usage_error("train-lm", "--eval-every expects an integer >= 0");
    if (!cli_parse_int(s_ckpt, 0, 1 << 30, &ckpt)) return cli_usage_error("train-lm", "--checkpoint-every expects an integer >= 0");

    rq_err err = {0};
    rq_adapter_config ac = {.r = (int)rank, .alpha = (float)alpha, .group_size = (int)gs, .seed = (uint64_t)seed};
    if (!strcmp(adapter, "lora")) ac.type = RQ_ADAPTER_LORA;
    else if (!strcmp(adapter, "qalora")) ac.type = RQ_ADAPTER_QALORA;
    else return cli_usage_error("train-lm", "--adapter expects lora or qalora, got '%s'", adapter);
    rq_train_opts o;
    rq_train_default_opts(&o);
    if (rq_adapter_targets_parse(targets, &ac.targets, &err) || rq_adapter_init_parse(init, &ac.init, &err) ||
        rq_optim_kind_parse(optim, &o.optim.kind, &err) || rq_schedule_kind_parse(schedule, &o.schedule.kind, &err))
        return cli_fail("train-lm", &err);
    rq_optim_kind kind = o.optim.kind;
    o.optim = rq_optim_defaults(kind);
    o.optim.weight_decay = (float)wd;
    o.optim.max_grad_norm = (float)clip;
    o.schedule.lr = lr;
    o.schedule.warmup_steps = warmup;
    o.schedule.total_steps = steps;
    o.seq_len = (int)seq;
    o.micro_batch = (int)batch;
    o.accum = (int)accum;
    o.max_steps = steps;
    o.seed = (uint64_t)seed;
    o.eval_every = (int)every;
    o.checkpoint_every = (int)ckpt;
    o.out_dir = out;
    o.resume = resume;

    char default_text[4096];
    if (!text_path) {
        const char *root = cli_data_root(NULL);
        if (!root) return cli_usage_error("train-lm", "no --text FILE and no RILQ_DATA to find WikiText-2 in");
        if (!rq_path_join(default_text, sizeof default_text, root, "datasets/wikitext2/wiki.valid.raw"))
            return cli_usage_error("train-lm", "data path too long");
        text_path = default_text;
    }
    rq_model *m = NULL;
    rq_backend *be = NULL;
    rq_adapter_set *ad = NULL;
    char *text = NULL;
    int *ids = NULL, n_ids = 0, rc = 0;
    size_t text_len = 0;
    if (rq_model_load(path, common.tokenizer, &m, &err) || rq_backend_create(common.device, common.threads, &be, &err) ||
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
        po.micro_batch = (int)batch, po.seq_len = (int)seq;
        uint64_t resident = 2 * (uint64_t)rq_adapter_set_bytes(ad) + (be->caps.weights_on_host ? rq_model_weight_bytes(m) : 0);
        if (cli_memory_check("train-lm", be, m, &po, resident, no_memcheck)) {
            rc = 1;
            goto done;
        }
    }
    rq_train_result res;
    if (rq_train(m, be, ad, &train, &val, &o, NULL, NULL, &res, &err)) {
        rc = cli_fail("train-lm", &err);
        goto done;
    }
    char adir[4096];
    if (!rq_path_join(adir, sizeof adir, out, "adapter") || rq_adapter_set_save_peft(ad, adir, &err)) {
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
    free(text);
    free(ids);
    rq_adapter_set_free(ad);
    rq_backend_destroy(be);
    rq_model_free(m);
    return rc;
}
