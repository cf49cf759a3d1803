/* rilq finetune: stage 2, task fine-tuning of the adapters (loss on the answers only). */
#include <math.h>
#include <stdlib.h>

#include "../data/jsonl.h"
#include "../train/finetune.h"
#include "../train/plan.h"
#include "../train/trainer.h"
#include "cli.h"

static const char *finetune_help =
    "usage: rilq finetune MODEL --task arc_easy|arc_challenge|piqa|gsm8k --out DIR [options]\n\n"
    "Fine-tune adapters of MODEL (a q2 artifact, or any model rilq loads) on a task's training\n"
    "split. Examples are the evaluation prompt \"Question: ...\\nAnswer:\" followed by \" \" + the\n"
    "gold answer (gsm8k: the full solution with its final \"#### N\"), tokenized as the evaluation\n"
    "tokenizes (context, continuation); the loss counts the answer tokens only.\n"
    "DIR receives adapter/ (PEFT layout, at the end), adapter-epoch-K/ after each epoch,\n"
    "checkpoint.bin (every epoch; --resume continues from it), metrics.jsonl, finetune.json.\n\n"
    "  --adapter DIR         start from these adapters (stage-1 RILQ output, DIR/adapter); without it\n"
    "                        the adapters start fresh (the no-RILQ baseline)\n"
    "  --type qalora|lora (qalora)  --rank R (64)  --alpha A (16)  --group-size G (64)  --init gaussian\n"
    "                        (fresh adapters only)\n"
    "  --epochs N (3)  --lr LR (1e-4)  --batch B (16, through accumulation)  --micro-batch M (1)\n"
    "  --optim adam|adamw (adam)  --weight-decay W (0; adam: L2 term, adamw: decoupled)\n"
    "  --schedule constant|linear|cosine (constant)  --warmup-ratio R (0: share of the updates\n"
    "                        spent ramping the rate up)  --max-grad-norm N (0: no clipping)\n"
    "  --max-source N (384)  --max-target N (128)  --limit N (first N examples)  --seed S (42)\n"
    "  --fold A:B            train on documents A..B-1 of the training file (piqa: of the validation\n"
    "                        set, which is then to be evaluated on the other documents)\n"
    "  --resume              continue from DIR/checkpoint.bin (finished epochs are kept)\n"
    "  --data-root DIR       datasets root (default $RILQ_DATA)\n" CLI_MEMCHECK_HELP CLI_COMMON_HELP;

static rq_status get_example(void *user, int64_t example, int *tokens, int *targets, float *teacher, int *len,
                             rq_err *err) {
    (void)teacher;
    const rq_ft_set *s = user;
    return rq_ft_fill(s, example, s->max_len, tokens, targets, len, err);
}

typedef struct epoch_saver {
    rq_adapter_set *ad;
    const char *out;
    int64_t steps_per_epoch;
    rq_status st;
    rq_err err;
} epoch_saver;

/* After each epoch's last update: the adapters in PEFT layout (the checkpoint
 * that the trainer writes at the same step is what --resume reads). */
static void on_step(void *user, int64_t step, double loss, double gnorm, double lr) {
    (void)loss;
    (void)gnorm;
    (void)lr;
    epoch_saver *s = user;
    if (s->st != RQ_OK || step % s->steps_per_epoch != 0) return;
    char name[64], dir[4096];
    snprintf(name, sizeof name, "adapter-epoch-%lld", (long long)(step / s->steps_per_epoch));
    if (!rq_path_join(dir, sizeof dir, s->out, name)) s->st = RQ_FAIL(&s->err, RQ_ERR_ARG, "path too long: %s", s->out);
    else s->st = rq_adapter_set_save_peft(s->ad, dir, &s->err);
}

int cmd_finetune(int argc, char **argv) {
    const char *path = NULL, *task = NULL, *out = NULL, *adapter_dir = NULL, *type = "qalora", *init = "gaussian",
               *data_root = NULL, *fold = NULL;
    const char *s_epochs = "3", *s_lr = "1e-4", *s_batch = "16", *s_mb = "1", *s_src = "384", *s_tgt = "128",
               *s_limit = "0", *s_seed = "42", *s_rank = "64", *s_alpha = "16", *s_gs = "64", *s_optim = "adam",
               *s_wd = "0", *s_sched = "constant", *s_warm = "0", *s_clip = "0";
    bool resume = false, no_memcheck = false;
    cli_common common = {0};
    const cli_value_opt specs[] = {{"--task", &task},       {"--out", &out},           {"--adapter", &adapter_dir},
                        {"--type", &type},       {"--init", &init},         {"--data-root", &data_root},
                        {"--fold", &fold},       {"--epochs", &s_epochs},   {"--lr", &s_lr},
                        {"--batch", &s_batch},   {"--micro-batch", &s_mb},  {"--max-source", &s_src},
                        {"--max-target", &s_tgt}, {"--limit", &s_limit},    {"--seed", &s_seed},
                        {"--rank", &s_rank},     {"--alpha", &s_alpha},     {"--group-size", &s_gs},
                        {"--optim", &s_optim},   {"--weight-decay", &s_wd}, {"--schedule", &s_sched},
                        {"--warmup-ratio", &s_warm}, {"--max-grad-norm", &s_clip}};
    const cli_bool_opt flags[] = {{"--resume", &resume}, {"--no-memory-check", &no_memcheck}};
    int pr = cli_parse("finetune", finetune_help, argc, argv, &common, specs, sizeof specs / sizeof specs[0], flags, 2, &path);
    if (pr) return pr < 0 ? 0 : pr;
    if (!path) return cli_usage_error("finetune", "missing MODEL");
    if (!task) return cli_usage_error("finetune", "missing --task arc_easy|arc_challenge|piqa|gsm8k");
    if (!out) return cli_usage_error("finetune", "missing --out DIR");
    long epochs, batch, mb, src, tgt, limit, seed, rank, gs, fa = 0, fb = 0;
    double lr, alpha, wd, warm, clip;
    if (!cli_parse_float(s_wd, 0, 10, &wd)) return cli_usage_error("finetune", "--weight-decay expects 0..10");
    if (!cli_parse_float(s_warm, 0, 1, &warm)) return cli_usage_error("finetune", "--warmup-ratio expects 0..1");
    if (!cli_parse_float(s_clip, 0, 1e9, &clip)) return cli_usage_error("finetune", "--max-grad-norm expects a number >= 0");
    rq_optim_kind okind;
    rq_schedule_kind skind;
    {
        rq_err e = {0};
        if (rq_optim_kind_parse(s_optim, &okind, &e) || rq_schedule_kind_parse(s_sched, &skind, &e))
            return cli_usage_error("finetune", "%s", e.msg);
    }
    if (!cli_parse_int(s_epochs, 1, 1 << 20, &epochs)) return cli_usage_error("finetune", "--epochs expects a positive integer");
    if (!cli_parse_float(s_lr, 0, 10, &lr)) return cli_usage_error("finetune", "--lr expects 0..10");
    if (!cli_parse_int(s_batch, 1, 1 << 20, &batch)) return cli_usage_error("finetune", "--batch expects a positive integer");
    if (!cli_parse_int(s_mb, 1, 4096, &mb) || batch % mb != 0)
        return cli_usage_error("finetune", "--micro-batch expects a positive divisor of --batch %ld", batch);
    if (!cli_parse_int(s_src, 1, 1 << 20, &src)) return cli_usage_error("finetune", "--max-source expects a positive integer");
    if (!cli_parse_int(s_tgt, 1, 1 << 20, &tgt)) return cli_usage_error("finetune", "--max-target expects a positive integer");
    if (!cli_parse_int(s_limit, 0, 1L << 40, &limit)) return cli_usage_error("finetune", "--limit expects an integer >= 0");
    if (!cli_parse_int(s_seed, 0, __LONG_MAX__, &seed)) return cli_usage_error("finetune", "--seed expects an integer >= 0");
    if (!cli_parse_int(s_rank, 1, 4096, &rank)) return cli_usage_error("finetune", "--rank expects 1..4096");
    if (!cli_parse_float(s_alpha, 1e-6, 1e6, &alpha)) return cli_usage_error("finetune", "--alpha expects a positive number");
    if (!cli_parse_int(s_gs, 1, 1 << 20, &gs)) return cli_usage_error("finetune", "--group-size expects a positive integer");
    if (fold) {
        const char *f = strrchr(fold, ':') && strchr(fold, ':') != strrchr(fold, ':') ? strchr(fold, ':') + 1 : fold;
        if (sscanf(f, "%ld:%ld", &fa, &fb) != 2 || fa < 0 || fb <= fa || fb > (1L << 30))
            return cli_usage_error("finetune", "--fold expects A:B (or NAME:A:B) with 0 <= A < B, got '%s'", fold);
    }
    const char *root = cli_data_root(data_root);
    if (!root) return cli_usage_error("finetune", "no --data-root and no RILQ_DATA");
    char datasets[4096];
    if (!rq_path_join(datasets, sizeof datasets, root, "datasets")) return cli_usage_error("finetune", "data path too long");

    rq_err err = {0};
    int rc = 0;
    rq_model *m = NULL;
    rq_backend *be = NULL;
    rq_adapter_set *ad = NULL;
    rq_ft_set set = {0};
    cJSON *sum = cJSON_CreateObject();
    if (rq_backend_create(common.device, common.threads, &be, &err) || rq_model_load(path, common.tokenizer, &m, &err))
        goto fail;
    if (!m->tok) {
        RQ_FAIL(&err, RQ_ERR_ARG, "%s has no tokenizer; pass --tokenizer PATH", path);
        goto fail;
    }
    rq_ft_opts fo;
    rq_ft_default_opts(&fo);
    fo.task = task;
    fo.dataset_root = datasets;
    fo.fold_begin = (int)fa;
    fo.fold_end = (int)fb;
    fo.limit = limit;
    fo.max_source = (int)src;
    fo.max_target = (int)tgt;
    if (rq_ft_set_load(m->tok, &fo, &set, &err)) goto fail;
    if (adapter_dir) {
        if (rq_adapter_set_open_peft(adapter_dir, &m->cfg, be, &ad, &err)) goto fail;
    } else {
        rq_adapter_config ac = {.r = (int)rank, .alpha = (float)alpha, .group_size = (int)gs, .seed = (uint64_t)seed,
                                .targets = RQ_ADAPTER_ALL_PROJ};
        if (!strcmp(type, "lora")) ac.type = RQ_ADAPTER_LORA;
        else if (!strcmp(type, "qalora")) ac.type = RQ_ADAPTER_QALORA;
        else {
            rc = cli_usage_error("finetune", "--type expects qalora or lora, got '%s'", type);
            goto done;
        }
        if (rq_adapter_init_parse(init, &ac.init, &err) || rq_adapter_set_create(&m->cfg, &ac, be, &ad, &err)) goto fail;
    }
    const int64_t per_update = batch;
    const int64_t steps_per_epoch = (set.n + per_update - 1) / per_update;
    rq_train_opts o;
    rq_train_default_opts(&o);
    o.seq_len = set.max_len;
    o.micro_batch = (int)mb;
    o.accum = (int)(batch / mb);
    o.max_steps = steps_per_epoch * epochs;
    o.shuffle = true;
    o.seed = (uint64_t)seed;
    o.ce_weight = 1.0;
    o.mse_weight = 0.0;
    o.optim = rq_optim_defaults(okind);
    o.optim.weight_decay = (float)wd;
    o.optim.max_grad_norm = (float)clip;
    o.schedule = (rq_schedule){.kind = skind, .lr = lr, .warmup_steps = (int64_t)(warm * (double)o.max_steps + 0.5),
                               .total_steps = o.max_steps};
    o.checkpoint_every = (int)steps_per_epoch;
    o.out_dir = out;
    o.resume = resume;
    printf("finetune: %s (%s), %s r=%d alpha=%g, %s\n", m->path, m->format, rq_adapter_type_name(ad->cfg.type),
           ad->cfg.r, ad->cfg.alpha, adapter_dir ? adapter_dir : "fresh adapters (no stage-1 init)");
    printf("data: %s: %lld examples (%lld sources and %lld targets truncated, %lld skipped), longest %d positions\n",
           set.split, (long long)set.n, (long long)set.truncated_sources, (long long)set.truncated_targets,
           (long long)set.skipped, set.max_len);
    printf("%ld epochs x %lld updates of %ld examples (%ld x %ld), %s lr %g (%s, %lld warm-up updates), weight decay %g%s; "
           "checkpoint every epoch\n",
           epochs, (long long)steps_per_epoch, batch, mb, batch / mb, rq_optim_kind_name(okind), lr,
           rq_schedule_kind_name(skind), (long long)o.schedule.warmup_steps, wd, clip > 0 ? ", gradient norm clipped" : "");
    {
        rq_plan_opts po;
        rq_plan_default_opts(&po);
        po.stage = RQ_PLAN_FINETUNE;
        po.mse_weight = 0, po.ce_weight = 1;
        po.adapter = ad->cfg.type, po.r = ad->cfg.r, po.adapter_group_size = ad->cfg.group_size;
        po.targets = ad->cfg.targets, po.micro_batch = (int)mb, po.seq_len = set.max_len;
        /* already allocated from the device: the adapters and their gradients (and on the CPU the model) */
        uint64_t resident = 2 * (uint64_t)rq_adapter_set_bytes(ad) + (be->caps.weights_on_host ? rq_model_weight_bytes(m) : 0);
        if (cli_memory_check("finetune", be, m, &po, resident, no_memcheck)) {
            rc = 1;
            goto done;
        }
    }
    epoch_saver saver = {.ad = ad, .out = out, .steps_per_epoch = steps_per_epoch};
    rq_train_data train = {get_example, &set, set.n};
    rq_train_result res;
    if (rq_train(m, be, ad, &train, NULL, &o, on_step, &saver, &res, &err)) goto fail;
    if (saver.st != RQ_OK) {
        err = saver.err;
        goto fail;
    }
    char adir[4096];
    if (!rq_path_join(adir, sizeof adir, out, "adapter") || rq_adapter_set_save_peft(ad, adir, &err)) goto fail;
    printf("trained %lld updates in %.1fs (%.0f tokens/s)%s; last loss %.4f\nadapters: %s\n", (long long)res.steps,
           res.seconds, res.tokens_per_s, res.resumed ? " (resumed)" : "", res.last_loss, adir);
    cJSON_AddStringToObject(sum, "model", path);
    cJSON_AddStringToObject(sum, "task", task);
    cJSON_AddStringToObject(sum, "split", set.split);
    if (!strcmp(task, "piqa"))
        cJSON_AddStringToObject(sum, "note", "piqa has no local training split: a fold of the validation set trained; "
                                             "evaluate on the other validation documents");
    cJSON_AddNumberToObject(sum, "examples", (double)set.n);
    cJSON_AddNumberToObject(sum, "truncated_sources", (double)set.truncated_sources);
    cJSON_AddNumberToObject(sum, "truncated_targets", (double)set.truncated_targets);
    cJSON_AddStringToObject(sum, "init_adapter", adapter_dir ? adapter_dir : "fresh");
    cJSON_AddNumberToObject(sum, "epochs", (double)epochs);
    cJSON_AddNumberToObject(sum, "updates", (double)res.steps);
    cJSON_AddNumberToObject(sum, "batch", (double)batch);
    cJSON_AddNumberToObject(sum, "lr", lr);
    cJSON_AddStringToObject(sum, "optim", rq_optim_kind_name(okind));
    cJSON_AddNumberToObject(sum, "weight_decay", wd);
    cJSON_AddStringToObject(sum, "schedule", rq_schedule_kind_name(skind));
    cJSON_AddNumberToObject(sum, "warmup_steps", (double)o.schedule.warmup_steps);
    cJSON_AddNumberToObject(sum, "max_grad_norm", clip);
    cJSON_AddNumberToObject(sum, "max_source", (double)src);
    cJSON_AddNumberToObject(sum, "max_target", (double)tgt);
    cJSON_AddNumberToObject(sum, "last_loss", res.last_loss);
    cJSON_AddNumberToObject(sum, "seconds", res.seconds);
    {
        char jpath[4096];
        char *text = cJSON_Print(sum);
        if (!text || !rq_path_join(jpath, sizeof jpath, out, "finetune.json")) {
            cJSON_free(text);
            RQ_FAIL(&err, RQ_ERR_NOMEM, "cannot write finetune.json");
            goto fail;
        }
        rq_status st = rq_write_file_atomic(jpath, text, strlen(text), &err);
        cJSON_free(text);
        if (st) goto fail;
    }
    goto done;
fail:
    rc = cli_fail("finetune", &err);
done:
    cJSON_Delete(sum);
    rq_ft_set_free(&set);
    rq_adapter_set_free(ad);
    rq_model_free(m);
    rq_backend_destroy(be);
    return rc;
}
