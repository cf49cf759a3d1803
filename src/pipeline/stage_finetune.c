/* The finetune stage: task fine-tuning of the adapters (loss on the answers only). */
#include <math.h>
#include <stdlib.h>

#include "../train/finetune.h"
#include "../train/plan.h"
#include "../train/trainer.h"
#include "internal.h"

#define O rq_stage_finetune_opts
static const rq_opt opts[] = {
    RQ_OPT_B(NULL, "stage2.enabled", O, enabled, "true", "run stage 2"),
    RQ_OPT_S("--task", "stage2.task", O, task, NULL, "arc_easy|arc_challenge|piqa|gsm8k", NULL,
             "the task (required; in a recipe, when stage 2 is enabled)"),
    RQ_OPT_S("--out", NULL, O, out, NULL, NULL, "DIR", "the output directory"),
    RQ_OPT_S("--adapter", NULL, O, adapter_dir, NULL, NULL, "DIR",
             "start from these adapters (stage-1 RILQ output, DIR/adapter); without it\n"
             "the adapters start fresh (the no-RILQ baseline)"),
    RQ_ADAPTER_OPT_LINES(O, "--type"),
    RQ_OPT_S("--init", NULL, O, adapter.init, "gaussian", NULL, NULL, "fresh adapters: gaussian, kaiming_uniform or xavier_uniform"),
    RQ_OPT_I("--epochs", "stage2.epochs", O, epochs, "3", 1, 1 << 20, "N", "epochs"),
    RQ_OPT_N("--lr", "stage2.lr", O, lr, "1e-4", 0, 10, "LR", "peak learning rate"),
    RQ_OPT_S("--optim", "stage2.optim", O, optim, "adam", "adam|adamw", NULL, "optimizer (adamw: decoupled weight decay)"),
    RQ_OPT_N("--weight-decay", "stage2.weight_decay", O, weight_decay, "0", 0, 10, "W",
             "weight decay (adam: L2 term, adamw: decoupled)"),
    RQ_OPT_S("--schedule", "stage2.schedule", O, schedule, "constant", "constant|linear|cosine", NULL,
             "learning-rate schedule"),
    RQ_OPT_N("--warmup-ratio", "stage2.warmup_ratio", O, warmup_ratio, "0", 0, 1, "R",
             "share of the updates spent ramping the rate up"),
    RQ_OPT_N("--max-grad-norm", "stage2.max_grad_norm", O, max_grad_norm, "0", 0, 1e9, "N",
             "global gradient-norm clip (0: none)"),
    RQ_OPT_I("--batch", "stage2.batch", O, batch, "16", 1, 1 << 20, "B", "examples per update (through accumulation)"),
    RQ_OPT_I("--micro-batch", "stage2.micro_batch", O, micro_batch, "1", 1, 4096, "M", "examples per forward (divides --batch)"),
    RQ_OPT_I("--max-source", "stage2.max_source", O, max_source, "384", 1, 1 << 20, "N", "prompt tokens at most"),
    RQ_OPT_I("--max-target", "stage2.max_target", O, max_target, "128", 1, 1 << 20, "N", "answer tokens at most"),
    RQ_OPT_I("--limit", "stage2.limit", O, limit, "0", 0, 1099511627776.0, "N", "first N training examples (0: all)"),
    RQ_OPT_I("--seed", "stage2.seed", O, seed, "42", 0, 9007199254740991.0, "S", "data order seed"),
    RQ_OPT_S("--fold", "stage2.fold", O, fold, "", NULL, "A:B",
             "train on documents A..B-1 of the training file (piqa: of the validation set,\n"
             "which is then to be evaluated on the other documents)"),
    RQ_OPT_B("--resume", NULL, O, resume, "false", "continue from DIR/checkpoint.bin (finished epochs are kept)"),
    RQ_OPT_S("--data-root", NULL, O, data_root, NULL, NULL, "DIR", "datasets root (default $RILQ_DATA)"),
    RQ_OPT_B("--no-memory-check", NULL, O, no_memory_check, "false",
             "run even when the memory plan exceeds the free memory"),
    RQ_COMMON_OPT_LINES(O),
};
const rq_opt_table rq_stage_finetune_table = RQ_OPT_TABLE(opts, O);
#undef O

rq_status rq_stage_finetune_defaults(rq_stage_finetune_opts *o, rq_err *err) {
    memset(o, 0, sizeof *o);
    return rq_opts_defaults(rq_stage_finetune_table, o, err);
}

static bool parse_fold(const char *fold, long *fa, long *fb) {
    *fa = *fb = 0;
    if (!fold || !*fold) return true;
    const char *f = strrchr(fold, ':') && strchr(fold, ':') != strrchr(fold, ':') ? strchr(fold, ':') + 1 : fold;
    return sscanf(f, "%ld:%ld", fa, fb) == 2 && *fa >= 0 && *fb > *fa && *fb <= (1L << 30);
}

rq_status rq_stage_finetune_check(const rq_stage_finetune_opts *o, rq_err *err) {
    long fa, fb;
    if (o->batch % o->micro_batch != 0)
        return RQ_FAIL(err, RQ_ERR_ARG, "micro_batch %lld must divide batch %lld", (long long)o->micro_batch,
                       (long long)o->batch);
    if (!parse_fold(o->fold, &fa, &fb))
        return RQ_FAIL(err, RQ_ERR_ARG, "fold expects A:B (or NAME:A:B) with 0 <= A < B, got '%s'", o->fold);
    rq_adapter_init init;
    return rq_adapter_init_parse(o->adapter.init, &init, err);
}

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
    (void)loss, (void)gnorm, (void)lr;
    epoch_saver *s = user;
    if (s->st != RQ_OK || step % s->steps_per_epoch != 0) return;
    char name[64];
    snprintf(name, sizeof name, "adapter-epoch-%lld", (long long)(step / s->steps_per_epoch));
    char *dir = rq_path_join_alloc(s->out, name, &s->err);
    s->st = dir ? rq_adapter_set_save_peft(s->ad, dir, &s->err) : RQ_ERR_NOMEM;
    free(dir);
}

rq_status rq_stage_finetune(const rq_stage_finetune_opts *o, rq_stage_finetune_report *rep, rq_err *err) {
    memset(rep, 0, sizeof *rep);
    rep->last_loss = NAN;
    if (!o->model) return RQ_FAIL(err, RQ_ERR_ARG, "finetune: missing MODEL");
    if (!o->task || !*o->task) return RQ_FAIL(err, RQ_ERR_ARG, "finetune: missing --task arc_easy|arc_challenge|piqa|gsm8k");
    if (!o->out) return RQ_FAIL(err, RQ_ERR_ARG, "finetune: missing --out DIR");
    RQ_TRY(rq_stage_finetune_check(o, err));
    long fa, fb;
    parse_fold(o->fold, &fa, &fb);
    rq_optim_kind okind;
    rq_schedule_kind skind;
    RQ_TRY(rq_optim_kind_parse(o->optim, &okind, err));
    RQ_TRY(rq_schedule_kind_parse(o->schedule, &skind, err));
    const char *root = o->data_root && *o->data_root ? o->data_root : getenv("RILQ_DATA");
    if (!root || !*root) return RQ_FAIL(err, RQ_ERR_ARG, "no --data-root and no RILQ_DATA");
    char *datasets = rq_path_join_alloc(root, "datasets", err);
    if (!datasets) return RQ_ERR_NOMEM;
    double t0 = rq_now_seconds();

    rq_status st = RQ_OK;
    rq_model *m = NULL;
    rq_backend *be = NULL;
    rq_adapter_set *ad = NULL;
    rq_ft_set set = {0};
    cJSON *sum = NULL;
#define CHECK(x)                            \
    do {                                    \
        if ((st = (x)) != RQ_OK) goto done; \
    } while (0)
    CHECK(rq_backend_create(o->common.device, (int)o->common.threads, &be, err));
    CHECK(rq_model_load(o->model, o->common.tokenizer, &m, err));
    if (!m->tok) CHECK(RQ_FAIL(err, RQ_ERR_ARG, "%s has no tokenizer; pass --tokenizer PATH", o->model));
    rq_ft_opts fo;
    rq_ft_default_opts(&fo);
    fo.task = o->task;
    fo.dataset_root = datasets;
    fo.fold_begin = (int)fa;
    fo.fold_end = (int)fb;
    fo.limit = o->limit;
    fo.max_source = (int)o->max_source;
    fo.max_target = (int)o->max_target;
    CHECK(rq_ft_set_load(m->tok, &fo, &set, err));
    if (o->adapter_dir) {
        CHECK(rq_adapter_set_open_for(o->adapter_dir, m, be, &ad, err));
        if (o->adapter.train_scales && !ad->cfg.train_scales)
            CHECK(RQ_FAIL(err, RQ_ERR_ARG, "--train-scales: the adapters in %s were trained without group scales; "
                          "start fresh adapters to train them", o->adapter_dir));
    }
    else {
        rq_adapter_config ac = rq_adapter_opts_config(&o->adapter, (uint64_t)o->seed);
        if (ac.group_size <= 0) ac.group_size = rq_model_q2_group_size(m) > 0 ? rq_model_q2_group_size(m) : RQ_DEFAULT_GROUP_SIZE;
        CHECK(rq_adapter_init_parse(o->adapter.init, &ac.init, err));
        CHECK(rq_adapter_set_create(&m->cfg, &ac, be, &ad, err));
        CHECK(rq_adapter_set_attach_scales(ad, m, err));
    }
    const int64_t steps_per_epoch = (set.n + o->batch - 1) / o->batch;
    rq_train_opts to;
    rq_train_default_opts(&to);
    to.seq_len = set.max_len;
    to.micro_batch = (int)o->micro_batch;
    to.accum = (int)(o->batch / o->micro_batch);
    to.max_steps = steps_per_epoch * o->epochs;
    to.shuffle = true;
    to.seed = (uint64_t)o->seed;
    to.ce_weight = 1.0;
    to.mse_weight = 0.0;
    to.optim = rq_optim_defaults(okind);
    to.optim.weight_decay = (float)o->weight_decay;
    to.optim.max_grad_norm = (float)o->max_grad_norm;
    to.schedule = (rq_schedule){.kind = skind, .lr = o->lr,
                                .warmup_steps = (int64_t)(o->warmup_ratio * (double)to.max_steps + 0.5),
                                .total_steps = to.max_steps};
    to.checkpoint_every = (int)steps_per_epoch;
    to.out_dir = o->out;
    to.resume = o->resume;
    rq_info("finetune: %s (%s), %s r=%d alpha=%g, %s", m->path, m->format, rq_adapter_type_name(ad->cfg.type), ad->cfg.r,
            ad->cfg.alpha, o->adapter_dir ? o->adapter_dir : "fresh adapters (no stage-1 init)");
    rq_info("data: %s: %lld examples (%lld sources and %lld targets truncated, %lld skipped), longest %d positions",
            set.split, (long long)set.n, (long long)set.truncated_sources, (long long)set.truncated_targets,
            (long long)set.skipped, set.max_len);
    rq_info("%lld epochs x %lld updates of %lld examples (%lld x %lld), %s lr %g (%s, %lld warm-up updates), weight "
            "decay %g%s; checkpoint every epoch",
            (long long)o->epochs, (long long)steps_per_epoch, (long long)o->batch, (long long)o->micro_batch,
            (long long)(o->batch / o->micro_batch), rq_optim_kind_name(okind), o->lr, rq_schedule_kind_name(skind),
            (long long)to.schedule.warmup_steps, o->weight_decay, o->max_grad_norm > 0 ? ", gradient norm clipped" : "");
    {
        rq_plan_opts po;
        rq_plan_default_opts(&po);
        po.stage = RQ_PLAN_FINETUNE;
        po.mse_weight = 0, po.ce_weight = 1;
        po.adapter = ad->cfg.type, po.r = ad->cfg.r, po.adapter_group_size = ad->cfg.group_size;
        po.targets = ad->cfg.targets, po.micro_batch = (int)o->micro_batch, po.seq_len = set.max_len;
        /* already allocated from the device: the adapters and their gradients (and on the CPU the model) */
        uint64_t resident = 2 * (uint64_t)rq_adapter_set_bytes(ad) + (be->caps.weights_on_host ? rq_model_weight_bytes(m) : 0);
        CHECK(rq_stage_memory_check(be, m, &po, resident, o->no_memory_check, err));
    }
    epoch_saver saver = {.ad = ad, .out = o->out, .steps_per_epoch = steps_per_epoch};
    rq_train_data train = {get_example, &set, set.n};
    rq_train_result res;
    CHECK(rq_train(m, be, ad, &train, NULL, &to, on_step, &saver, &res, err));
    if (saver.st != RQ_OK) {
        *err = saver.err;
        CHECK(saver.st);
    }
    if (!rq_path_join(rep->adapter_dir, sizeof rep->adapter_dir, o->out, "adapter"))
        CHECK(RQ_FAIL(err, RQ_ERR_ARG, "path too long: %s", o->out));
    CHECK(rq_adapter_set_save_peft(ad, rep->adapter_dir, err));
    rep->examples = set.n;
    rep->updates = res.steps;
    rep->resumed = res.resumed;
    rep->last_loss = res.last_loss;
    rep->tokens_per_s = res.tokens_per_s;
    rep->train_seconds = res.seconds;
    rq_info("trained %lld updates in %.1fs (%.0f tokens/s)%s; last loss %.4f", (long long)res.steps, res.seconds,
            res.tokens_per_s, res.resumed ? " (resumed)" : "", res.last_loss);
    rq_info("adapters: %s", rep->adapter_dir);
    sum = cJSON_CreateObject();
    cJSON_AddStringToObject(sum, "model", o->model);
    cJSON_AddStringToObject(sum, "task", o->task);
    cJSON_AddStringToObject(sum, "split", set.split);
    if (!strcmp(o->task, "piqa"))
        cJSON_AddStringToObject(sum, "note", "piqa has no local training split: a fold of the validation set trained; "
                                             "evaluate on the other validation documents");
    cJSON_AddNumberToObject(sum, "examples", (double)set.n);
    cJSON_AddNumberToObject(sum, "truncated_sources", (double)set.truncated_sources);
    cJSON_AddNumberToObject(sum, "truncated_targets", (double)set.truncated_targets);
    cJSON_AddStringToObject(sum, "init_adapter", o->adapter_dir ? o->adapter_dir : "fresh");
    cJSON_AddNumberToObject(sum, "epochs", (double)o->epochs);
    cJSON_AddNumberToObject(sum, "updates", (double)res.steps);
    cJSON_AddNumberToObject(sum, "batch", (double)o->batch);
    cJSON_AddNumberToObject(sum, "lr", o->lr);
    cJSON_AddStringToObject(sum, "optim", rq_optim_kind_name(okind));
    cJSON_AddNumberToObject(sum, "weight_decay", o->weight_decay);
    cJSON_AddStringToObject(sum, "schedule", rq_schedule_kind_name(skind));
    cJSON_AddNumberToObject(sum, "warmup_steps", (double)to.schedule.warmup_steps);
    cJSON_AddNumberToObject(sum, "max_grad_norm", o->max_grad_norm);
    cJSON_AddNumberToObject(sum, "max_source", (double)o->max_source);
    cJSON_AddNumberToObject(sum, "max_target", (double)o->max_target);
    rq_json_add_finite(sum, "last_loss", res.last_loss);
    cJSON_AddNumberToObject(sum, "seconds", res.seconds);
    CHECK(rq_stage_write_json(o->out, "finetune.json", sum, err));
    rep->seconds = rq_now_seconds() - t0;
#undef CHECK
done:
    cJSON_Delete(sum);
    rq_ft_set_free(&set);
    rq_adapter_set_free(ad);
    rq_model_free(m);
    rq_backend_destroy(be);
    free(datasets);
    return st;
}

cJSON *rq_stage_finetune_report_json(const rq_stage_finetune_report *r) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "examples", (double)r->examples);
    cJSON_AddNumberToObject(o, "updates", (double)r->updates);
    cJSON_AddBoolToObject(o, "resumed", r->resumed);
    rq_json_add_finite(o, "last_loss", r->last_loss);
    rq_json_add_finite(o, "tokens_per_s", r->tokens_per_s);
    cJSON_AddNumberToObject(o, "train_seconds", r->train_seconds);
    cJSON_AddStringToObject(o, "adapter", r->adapter_dir);
    cJSON_AddNumberToObject(o, "seconds", r->seconds);
    return o;
}
