/* The calibrate stage: RILQ initialization (algorithms.md section 1). */
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>

#include "../load/load.h"
#include "../train/calib.h"
#include "../train/plan.h"
#include "../train/trainer.h"
#include "internal.h"

#define O rq_stage_calibrate_opts
static const rq_opt opts[] = {
    RQ_OPT_B(NULL, "stage1.enabled", O, enabled, "true", "run stage 1"),
    RQ_OPT_S("--student", NULL, O, student, NULL, NULL, "DIR", "q2 artifact (rilq quantize) of MODEL_FP"),
    RQ_OPT_S("--quantize", NULL, O, quantize, NULL, "rtn|nf2", NULL, "or quantize MODEL_FP on the fly (group --group-size)"),
    RQ_OPT_S("--out", NULL, O, out, NULL, NULL, "DIR", "the output directory"),
    RQ_OPT_S("--data", "stage1.data", O, data, "c4", "c4|wikitext2", NULL,
             "calibration text (c4: $RILQ_DATA/datasets/c4/c4-validation-2k.jsonl)"),
    RQ_OPT_S("--c4-docs", "stage1.c4_docs", O, c4_docs, "0:1000", NULL, "A:B",
             "C4 documents that may be drawn (measure C4 perplexity on the others:\n"
             "rilq ppl --c4-docs 1000:2000)"),
    RQ_OPT_S("--text", NULL, O, text, NULL, NULL, "FILE",
             "wikitext2: the text (default wiki.valid.raw; there is no local train split\n"
             "and wiki.test.raw is what perplexity reads), first 1000 lines"),
    RQ_OPT_I("--windows", "stage1.windows", O, windows, "320", 2, 1 << 24, "N", "calibration windows (training + validation)"),
    RQ_OPT_I("--seq-len", "stage1.seq_len", O, seq_len, "512", 2, 1 << 20, "T", "tokens per window"),
    RQ_OPT_I("--val-windows", "stage1.val_windows", O, val_windows, "64", 0, 1 << 24, "N",
             "windows held out for validation (the last drawn)"),
    RQ_OPT_I("--seed", "stage1.seed", O, seed, "42", 0, 9007199254740991.0, "S", "sampling and initialization seed"),
    RQ_ADAPTER_OPT_LINES(O, "--adapter"),
    RQ_OPT_S("--init", NULL, O, adapter.init, "gaussian", "gaussian|svd|loftq", NULL,
             "gaussian: A ~ N(0, 1/r^2), B = 0 (RILQ); svd: rank-R SVD of the quantization\n"
             "error W - Q (LoftQ baseline, 1 alternation; plain LoRA only)"),
    RQ_OPT_N("--model-weight", "stage1.model_weight", O, model_weight, "0.5", 0, 1e6, "W",
             "weight of the Model-Loss (MSE vs the teacher)"),
    RQ_OPT_N("--gt-weight", "stage1.gt_weight", O, gt_weight, "0.5", 0, 1e6, "W", "weight of the GT-Loss (next-token CE)"),
    RQ_OPT_S("--model-loss", "stage1.model_loss", O, model_loss, "hidden", "hidden|logits", NULL,
             "MSE of the final hidden states, or of the logits (teacher logits from the\n"
             "cached teacher hidden states and the same head)"),
    RQ_OPT_S("--scope", "stage1.scope", O, scope, "model", "model|layer|linear", NULL,
             "where the Model-Loss compares: the final hidden states, every layer's output,\n"
             "or every projection's output; layer and linear keep the teacher in memory\n"
             "and run it beside the student (their targets are too large to cache)"),
    RQ_OPT_N("--lr", "stage1.lr", O, lr, "1e-4", 0, 10, "LR", "Adam learning rate (constant)"),
    RQ_OPT_I("--accum", "stage1.accum", O, accum, "8", 1, 1 << 20, "K", "micro-batches per update"),
    RQ_OPT_I("--micro-batch", "stage1.micro_batch", O, micro_batch, "1", 1, 4096, "B", "windows per micro-batch"),
    RQ_OPT_I("--eval-every", "stage1.eval_every", O, eval_every, "25", 0, 1 << 30, "N", "validate every N updates"),
    RQ_OPT_I("--patience", "stage1.patience", O, patience, "5", 0, 1 << 30, "N", "early stopping patience (validations)"),
    RQ_OPT_I("--max-micro-steps", "stage1.max_micro_steps", O, max_micro_steps, "10000", 1, 1099511627776.0, "N",
             "micro-steps at most"),
    RQ_OPT_I("--head-error-windows", NULL, O, head_error_windows, "16", 0, 1 << 30, "N",
             "validation windows for the LM-head error"),
    RQ_OPT_B("--resume", NULL, O, resume, "false", "continue from DIR/checkpoint.bin"),
    RQ_OPT_S("--cache", "stage1.teacher_cache", O, teacher_cache, "", NULL, "DIR",
             "teacher cache directory (\"\": $RILQ_CACHE or .cache/teacher)"),
    RQ_OPT_S("--data-root", NULL, O, data_root, NULL, NULL, "DIR", "datasets root (default $RILQ_DATA)"),
    RQ_OPT_S("--teacher-streams", NULL, O, teacher_streams, "auto", "auto|memory|file", NULL,
             "where the layer-streamed teacher pass keeps the windows' residual streams\n"
             "(windows x seq-len x dim fp32): auto keeps them in memory when the memory\n"
             "plan fits, else in a scratch file beside the cache (unlinked at once)"),
    RQ_OPT_B("--no-memory-check", NULL, O, no_memory_check, "false",
             "run even when the memory plan exceeds the free memory"),
    RQ_COMMON_OPT_LINES(O),
};
const rq_opt_table rq_stage_calibrate_table = RQ_OPT_TABLE(opts, O);
#undef O

rq_status rq_stage_calibrate_defaults(rq_stage_calibrate_opts *o, rq_err *err) {
    memset(o, 0, sizeof *o);
    return rq_opts_defaults(rq_stage_calibrate_table, o, err);
}

static bool parse_range(const char *s, long *a, long *b) {
    return s && sscanf(s, "%ld:%ld", a, b) == 2 && *a >= 0 && *b > *a && *b <= (1L << 30);
}

rq_status rq_stage_calibrate_check(const rq_stage_calibrate_opts *o, rq_err *err) {
    long a, b;
    if (o->val_windows >= o->windows)
        return RQ_FAIL(err, RQ_ERR_ARG, "val_windows (%lld) must be less than windows (%lld)", (long long)o->val_windows,
                       (long long)o->windows);
    if (!(o->model_weight > 0) && !(o->gt_weight > 0))
        return RQ_FAIL(err, RQ_ERR_ARG, "the Model-Loss and GT-Loss weights are both 0: no loss");
    if (strcmp(o->scope, "model") != 0 && !strcmp(o->model_loss, "logits"))
        return RQ_FAIL(err, RQ_ERR_ARG, "the logits Model-Loss belongs to the model scope");
    if (!parse_range(o->c4_docs, &a, &b))
        return RQ_FAIL(err, RQ_ERR_ARG, "c4_docs expects A:B with 0 <= A < B, got '%s'", o->c4_docs);
    if (o->adapter.train_scales && strcmp(o->adapter.type, "qalora") != 0)
        return RQ_FAIL(err, RQ_ERR_ARG, "trainable group scales need QA-LoRA adapters (a plain LoRA update does not "
                       "fold into the 2-bit groups)");
    if ((!strcmp(o->adapter.init, "svd") || !strcmp(o->adapter.init, "loftq")) && strcmp(o->adapter.type, "lora") != 0)
        return RQ_FAIL(err, RQ_ERR_ARG, "the svd init needs lora adapters (a QA-LoRA A reads group means)");
    return RQ_OK;
}

typedef struct calib_data {
    const rq_calib_windows *w;
    rq_teacher_cache *tc;
    int first; /* window of example 0 */
} calib_data;

static rq_status get_calib(void *user, int64_t example, int *tokens, int *targets, float *teacher, int *len,
                           rq_err *err) {
    const calib_data *d = user;
    const int T = d->w->T, k = d->first + (int)example;
    const int *src = d->w->tokens + (size_t)k * T;
    memcpy(tokens, src, sizeof(int) * (size_t)T);
    /* GT-Loss: positions 0..T-2 predict the next token of the window; the last has no target */
    memcpy(targets, src + 1, sizeof(int) * (size_t)(T - 1));
    targets[T - 1] = -1;
    *len = T;
    if (teacher) RQ_TRY(rq_teacher_cache_read(d->tc, k, teacher, err));
    return RQ_OK;
}

/* calibrate.json: the settings and the figures of the run. */
static cJSON *summary(const rq_stage_calibrate_opts *o, const rq_calib_opts *co, const rq_adapter_config *ac,
                      bool svd_init, const rq_stage_calibrate_report *r) {
    cJSON *sum = cJSON_CreateObject();
    cJSON_AddStringToObject(sum, "teacher", o->model);
    cJSON_AddStringToObject(sum, "student", o->student ? o->student : "(quantized on the fly)");
    if (o->quantize) cJSON_AddStringToObject(sum, "quantize", o->quantize);
    cJSON_AddStringToObject(sum, "data", co->source == RQ_CALIB_C4 ? "c4" : "text");
    cJSON_AddStringToObject(sum, "data_path", co->path);
    if (co->source == RQ_CALIB_C4) {
        char docs[64];
        snprintf(docs, sizeof docs, "%d:%d", co->doc_begin, co->doc_end);
        cJSON_AddStringToObject(sum, "c4_docs", docs);
    }
    cJSON_AddNumberToObject(sum, "windows", r->windows);
    cJSON_AddNumberToObject(sum, "seq_len", r->seq_len);
    cJSON_AddNumberToObject(sum, "val_windows", r->val_windows);
    cJSON_AddNumberToObject(sum, "seed", (double)o->seed);
    cJSON_AddStringToObject(sum, "adapter", rq_adapter_type_name(ac->type));
    cJSON_AddNumberToObject(sum, "rank", ac->r);
    cJSON_AddNumberToObject(sum, "alpha", ac->alpha);
    cJSON_AddNumberToObject(sum, "group_size", ac->group_size);
    cJSON_AddStringToObject(sum, "init", svd_init ? "svd" : "gaussian");
    cJSON_AddBoolToObject(sum, "train_scales", ac->train_scales);
    cJSON_AddStringToObject(sum, "scope", o->scope);
    cJSON_AddStringToObject(sum, "model_loss", o->model_loss);
    cJSON_AddNumberToObject(sum, "model_weight", o->model_weight);
    cJSON_AddNumberToObject(sum, "gt_weight", o->gt_weight);
    cJSON_AddNumberToObject(sum, "lr", o->lr);
    cJSON_AddNumberToObject(sum, "micro_batch", (double)o->micro_batch);
    cJSON_AddNumberToObject(sum, "accum", (double)o->accum);
    cJSON_AddNumberToObject(sum, "eval_every", (double)o->eval_every);
    cJSON_AddNumberToObject(sum, "patience", (double)o->patience);
    cJSON_AddNumberToObject(sum, "max_micro_steps", (double)o->max_micro_steps);
    cJSON_AddNumberToObject(sum, "updates", (double)r->updates);
    cJSON_AddBoolToObject(sum, "stopped_early", r->stopped_early);
    cJSON_AddNumberToObject(sum, "first_val_loss", isnan(r->first_val_loss) ? -1 : r->first_val_loss);
    cJSON_AddNumberToObject(sum, "best_val_loss", isnan(r->best_val_loss) ? -1 : r->best_val_loss);
    cJSON_AddNumberToObject(sum, "best_update", (double)r->best_update);
    cJSON_AddNumberToObject(sum, "train_seconds", r->train_seconds);
    cJSON_AddNumberToObject(sum, "validation_seconds", r->validation_seconds);
    cJSON_AddNumberToObject(sum, "teacher_seconds", r->teacher_seconds);
    cJSON_AddNumberToObject(sum, "tokens_per_s", r->tokens_per_s);
    cJSON_AddStringToObject(sum, "head_error_definition", "||Y - Yq||_F / ||Y||_F over all logits of the first "
                                                          "head_error_windows validation windows");
    cJSON_AddNumberToObject(sum, "head_error_windows", r->head_error_windows);
    cJSON_AddNumberToObject(sum, "head_error_before", isnan(r->head_error_before) ? -1 : r->head_error_before);
    cJSON_AddNumberToObject(sum, "head_error_after", isnan(r->head_error_after) ? -1 : r->head_error_after);
    cJSON_AddStringToObject(sum, "teacher_cache", r->teacher_cache);
    cJSON_AddBoolToObject(sum, "teacher_cache_reused", r->teacher_cache_reused);
    cJSON_AddNumberToObject(sum, "total_seconds", r->seconds);
    return sum;
}

rq_status rq_stage_calibrate(const rq_stage_calibrate_opts *o, rq_stage_calibrate_report *rep, rq_err *err) {
    memset(rep, 0, sizeof *rep);
    rep->first_val_loss = rep->best_val_loss = rep->head_error_before = rep->head_error_after = NAN;
    if (!o->model) return RQ_FAIL(err, RQ_ERR_ARG, "calibrate: missing MODEL_FP (the full-precision teacher)");
    if (!o->out) return RQ_FAIL(err, RQ_ERR_ARG, "calibrate: missing --out DIR");
    if (!o->student == !o->quantize)
        return RQ_FAIL(err, RQ_ERR_ARG, "calibrate: give exactly one of --student ARTIFACT and --quantize rtn|nf2");
    RQ_TRY(rq_stage_calibrate_check(o, err));
    const bool svd_init = !strcmp(o->adapter.init, "svd") || !strcmp(o->adapter.init, "loftq");
    rq_loss_scope loss_scope = !strcmp(o->scope, "layer") ? RQ_SCOPE_LAYER : !strcmp(o->scope, "linear") ? RQ_SCOPE_LINEAR
                                                                                                         : RQ_SCOPE_MODEL;
    rq_adapter_config ac = rq_adapter_opts_config(&o->adapter, (uint64_t)o->seed);
    ac.init = RQ_INIT_GAUSSIAN;
    rq_quant_method qmethod = RQ_QUANT_RTN;
    if (o->quantize) RQ_TRY(rq_quant_method_parse(o->quantize, &qmethod, err));

    const char *root = o->data_root && *o->data_root ? o->data_root : getenv("RILQ_DATA");
    if (root && !*root) root = NULL;
    char *data_path = NULL;
    rq_calib_opts co;
    rq_calib_default_opts(&co);
    long doc_a = 0, doc_b = 0;
    parse_range(o->c4_docs, &doc_a, &doc_b);
    co.seq_len = (int)o->seq_len;
    co.n_windows = (int)o->windows;
    co.n_val = (int)o->val_windows;
    co.seed = (uint64_t)o->seed;
    co.doc_begin = (int)doc_a;
    co.doc_end = (int)doc_b;
    if (!strcmp(o->data, "c4")) {
        co.source = RQ_CALIB_C4;
        if (!root) return RQ_FAIL(err, RQ_ERR_ARG, "no --data-root and no RILQ_DATA to find C4 in");
        if (!(data_path = rq_path_join_alloc(root, "datasets/c4/c4-validation-2k.jsonl", err))) return RQ_ERR_NOMEM;
        co.path = data_path;
    } else {
        co.source = RQ_CALIB_TEXT;
        if (o->text) co.path = o->text;
        else {
            if (!root) return RQ_FAIL(err, RQ_ERR_ARG, "no --text FILE and no RILQ_DATA to find WikiText-2 in");
            if (!(data_path = rq_path_join_alloc(root, "datasets/wikitext2/wiki.valid.raw", err))) return RQ_ERR_NOMEM;
            if (!rq_file_exists(data_path)) {
                RQ_FAIL(err, RQ_ERR_ARG, "%s does not exist and no local WikiText-2 train split exists; "
                                         "pass --text FILE (not wiki.test.raw: perplexity reads it)", data_path);
                free(data_path);
                return RQ_ERR_ARG;
            }
            co.path = data_path;
        }
    }
    const char *cache = o->teacher_cache && *o->teacher_cache ? o->teacher_cache : NULL;
    if (!cache) cache = getenv("RILQ_CACHE") && *getenv("RILQ_CACHE") ? getenv("RILQ_CACHE") : ".cache/teacher";
    char *cache_path = NULL, key_text[8192];

    rq_status st = RQ_OK;
    rq_model *teacher = NULL, *student = NULL;
    /* The teacher pass reads the checkpoint a layer at a time; the whole fp32 teacher is loaded
       only where it is needed beyond that pass: the SVD init and the layer / linear scope (and
       a q2 artifact as teacher, which has no full-precision layers to read) */
    rq_checkpoint ck;
    memset(&ck, 0, sizeof ck);
    bool streamed = false, teacher_spill = false;
    rq_backend *be = NULL;
    rq_adapter_set *ad = NULL;
    rq_teacher_cache *tc = NULL;
    rq_calib_windows w = {0};
    cJSON *sum = NULL;
    uint64_t key = 0;
    double t_start = rq_now_seconds();
#define CHECK(x)                       \
    do {                               \
        if ((st = (x)) != RQ_OK) goto done; \
    } while (0)
    CHECK(rq_backend_create(o->common.device, (int)o->common.threads, &be, err));
    if (!svd_init && loss_scope == RQ_SCOPE_MODEL) {
        rq_err e2 = {0};
        rq_status cs = rq_model_open_checkpoint(o->model, o->common.tokenizer, &ck, &e2);
        if (cs != RQ_OK && cs != RQ_ERR_UNSUPPORTED) {
            *err = e2;
            CHECK(cs);
        }
        streamed = cs == RQ_OK;
    }
    if (!streamed) CHECK(rq_model_load(o->model, o->common.tokenizer, &teacher, err));
    const rq_config *tcfg = streamed ? &ck.cfg : &teacher->cfg;
    const rq_tokenizer *ttok = streamed ? ck.tok : teacher->tok;
    if (!ttok) CHECK(RQ_FAIL(err, RQ_ERR_ARG, "%s has no tokenizer; pass --tokenizer PATH", o->model));
    if (o->student) CHECK(rq_model_load(o->student, o->common.tokenizer, &student, err));
    else {
        rq_model_quant_opts qo;
        rq_model_quant_opts_default(&qo);
        qo.quant.method = qmethod;
        qo.quant.group_size = ac.group_size > 0 ? ac.group_size : RQ_DEFAULT_GROUP_SIZE;
        CHECK(rq_model_load(o->model, o->common.tokenizer, &student, err));
        CHECK(rq_model_quantize(student, &qo, NULL, err));
    }
    if (student->cfg.dim != tcfg->dim || student->cfg.vocab_size != tcfg->vocab_size ||
        student->cfg.n_layers != tcfg->n_layers)
        CHECK(RQ_FAIL(err, RQ_ERR_ARG, "student %s (dim %d, %d layers, vocab %d) does not match teacher %s (dim %d, %d, %d)",
                      student->path, student->cfg.dim, student->cfg.n_layers, student->cfg.vocab_size, o->model,
                      tcfg->dim, tcfg->n_layers, tcfg->vocab_size));
    /* the pooling group follows the student's quantization group unless given */
    if (ac.group_size <= 0)
        ac.group_size = rq_model_q2_group_size(student) > 0 ? rq_model_q2_group_size(student) : RQ_DEFAULT_GROUP_SIZE;
    rq_info("calibrate: teacher %s (%s), student %s", o->model,
            streamed ? "read a layer at a time" : teacher->format, student->path);
    CHECK(rq_calib_windows_build(ttok, &co, &w, err));
    rep->windows = w.n, rep->seq_len = w.T, rep->val_windows = w.n_val;
    rq_info("data: %s%s, %d windows of %d tokens (%d held out), seed %llu", co.path,
            co.source == RQ_CALIB_C4 ? "" : " (first 1000 lines)", w.n, w.T, w.n_val, (unsigned long long)co.seed);
    if (co.source == RQ_CALIB_C4)
        rq_info("      C4 documents %d:%d drawn; measure C4 perplexity on documents outside them (e.g. --c4-docs %d:2000)",
                co.doc_begin, co.doc_end, co.doc_end);
    CHECK(rq_teacher_key(o->model, &co, &key, key_text, sizeof key_text, err));
    CHECK(rq_mkdir_p(cache, err));
    rq_remove_stale_temps(cache); /* full-size teacher files of killed writers (their processes are gone) */
    {
        char name[64];
        snprintf(name, sizeof name, "teacher-%016" PRIx64 ".rqt", key);
        if (!(cache_path = rq_path_join_alloc(cache, name, err))) CHECK(RQ_ERR_NOMEM);
        snprintf(rep->teacher_cache, sizeof rep->teacher_cache, "%s", cache_path);
    }
    {
        /* refuse a run that cannot fit before the teacher pass and the training state allocate */
        rq_plan_opts po;
        rq_plan_default_opts(&po);
        po.stage = RQ_PLAN_CALIBRATE;
        po.scope = loss_scope;
        po.mse_weight = o->model_weight, po.ce_weight = o->gt_weight;
        po.adapter = ac.type, po.r = ac.r, po.adapter_group_size = ac.group_size, po.targets = ac.targets;
        po.micro_batch = (int)o->micro_batch, po.seq_len = w.T, po.n_windows = w.n;
        po.teacher_cached = rq_file_exists(cache_path);
        po.teacher_resident = !streamed;
        const bool on_host = be->caps.weights_on_host;
        uint64_t resident = on_host ? rq_model_weight_bytes(student) + (teacher ? rq_model_weight_bytes(teacher) : 0) : 0;
        /* auto: the windows' streams stay in memory when the plan with them fits, else they spill */
        po.teacher_spill = streamed && (!strcmp(o->teacher_streams, "file") ||
                                        (!strcmp(o->teacher_streams, "auto") && !po.teacher_cached &&
                                         !rq_stage_memory_fits(be, student, &po, resident)));
        teacher_spill = po.teacher_spill;
        CHECK(rq_stage_memory_check(be, student, &po, resident, o->no_memory_check, err));
    }
    if (rq_file_exists(cache_path)) {
        bool stale = false;
        rq_err e2 = {0};
        rq_status cs = rq_teacher_cache_open(cache_path, key, tcfg->dim, w.T, w.n, &tc, &stale, &e2);
        if (cs == RQ_OK) cs = rq_teacher_cache_verify(tc, &e2); /* every frame's checksum, before training relies on it */
        if (cs == RQ_OK) rep->teacher_cache_reused = true;
        else if (stale) rq_info("teacher cache %s is stale (%s); recomputing", cache_path, e2.msg);
        else if (cs == RQ_ERR_FORMAT) rq_warn("teacher cache %s is damaged (%s); rebuilding it", cache_path, e2.msg);
        else {
            *err = e2;
            CHECK(e2.code ? e2.code : RQ_ERR_IO);
        }
        if (cs != RQ_OK) {
            rq_teacher_cache_close(tc);
            tc = NULL;
        }
    }
    {
        const double mib = 1048576.0, raw = (double)w.n * w.T * tcfg->dim * 4;
        if (!rep->teacher_cache_reused) {
            rq_info("teacher: %d windows -> %s (%.1f MiB of fp32 before compression)%s", w.n, cache_path, raw / mib,
                    !streamed      ? ""
                    : teacher_spill ? ", a layer at a time, the windows' streams in a scratch file beside it"
                                    : ", a layer at a time, the windows' streams in memory");
            double tt = rq_now_seconds();
            if (streamed)
                CHECK(rq_teacher_cache_write_streamed(&ck.cfg, ck.table, be, &w, key, key_text, cache_path,
                                                      teacher_spill, false, NULL, err));
            else CHECK(rq_teacher_cache_write(teacher, be, &w, key, key_text, cache_path, false, err));
            rep->teacher_seconds = rq_now_seconds() - tt;
            bool stale = false;
            CHECK(rq_teacher_cache_open(cache_path, key, tcfg->dim, w.T, w.n, &tc, &stale, err));
        }
        rq_info("teacher cache: %s, %.1f MiB compressed (%.1f MiB raw)%s", cache_path, rq_teacher_cache_bytes(tc) / mib,
                raw / mib, rep->teacher_cache_reused ? ", reused" : "");
    }
    CHECK(rq_adapter_set_create(&student->cfg, &ac, be, &ad, err));
    CHECK(rq_adapter_set_attach_scales(ad, student, err));
    if (svd_init) CHECK(rq_calib_svd_init(teacher, student, ad, (uint64_t)o->seed, false, err));
    /* the teacher's weights are never needed again, except by the layer / linear scope ablation,
       whose per-layer targets are too large to cache: there the teacher runs alongside */
    if (loss_scope == RQ_SCOPE_MODEL) {
        rq_model_free(teacher);
        teacher = NULL;
        rq_checkpoint_close(&ck); /* the windows keep their tokens: the tokenizer is not needed either */
    }

    rq_train_opts to;
    rq_train_default_opts(&to);
    const int64_t per_update = o->accum * o->micro_batch;
    to.seq_len = w.T;
    to.micro_batch = (int)o->micro_batch;
    to.accum = (int)o->accum;
    to.max_steps = o->max_micro_steps / per_update > 0 ? o->max_micro_steps / per_update : 1;
    to.shuffle = false; /* the reference visits the shuffled-once training windows in order, cycling */
    to.seed = (uint64_t)o->seed;
    to.ce_weight = o->gt_weight;
    to.mse_weight = o->model_weight;
    to.mse_on_logits = !strcmp(o->model_loss, "logits");
    to.scope = loss_scope;
    to.teacher = teacher;
    to.optim = rq_optim_defaults(RQ_OPTIM_ADAM);
    to.schedule = (rq_schedule){.kind = RQ_SCHED_CONSTANT, .lr = o->lr};
    to.eval_every = (int)o->eval_every;
    to.patience = (int)o->patience;
    to.checkpoint_every = (int)o->eval_every;
    to.out_dir = o->out;
    to.resume = o->resume;
    rq_info("student: %s r=%d alpha=%g (scaling %g) on %d projections, %zu parameters, init %s%s",
            rq_adapter_type_name(ac.type), ac.r, ac.alpha, ac.alpha / ac.r, rq_adapter_set_count(ad), ad->n_params,
            svd_init ? "svd" : "gaussian", ac.train_scales ? ", group scales trained too" : "");
    rq_info("loss: %g * MSE(final hidden) + %g * CE; Adam lr %g, %lld x %lld per update, <= %lld updates, "
            "validate every %lld, patience %lld",
            o->model_weight, o->gt_weight, o->lr, (long long)o->micro_batch, (long long)o->accum, (long long)to.max_steps,
            (long long)o->eval_every, (long long)o->patience);
    int head_n = (int)(o->head_error_windows < w.n_val ? o->head_error_windows : w.n_val);
    rep->head_error_windows = head_n;
    if (head_n > 0) {
        CHECK(rq_calib_head_error(student, be, ad, &w, tc, 0, head_n, &rep->head_error_before, err));
        rq_info("LM-head relative error ||Y - Yq|| / ||Y|| on %d validation windows: %.6f before", head_n,
                rep->head_error_before);
    }
    calib_data td = {&w, tc, w.n_val}, vd = {&w, tc, 0};
    rq_train_data train = {get_calib, &td, w.n - w.n_val}, val = {get_calib, &vd, w.n_val};
    rq_train_result res;
    CHECK(rq_train(student, be, ad, &train, &val, &to, NULL, NULL, &res, err));
    if (!rq_path_join(rep->adapter_dir, sizeof rep->adapter_dir, o->out, "adapter"))
        CHECK(RQ_FAIL(err, RQ_ERR_ARG, "path too long: %s", o->out));
    CHECK(rq_adapter_set_save_peft(ad, rep->adapter_dir, err));
    if (head_n > 0) {
        CHECK(rq_calib_head_error(student, be, ad, &w, tc, 0, head_n, &rep->head_error_after, err));
        rq_info("LM-head relative error: %.6f before, %.6f after", rep->head_error_before, rep->head_error_after);
    }
    rep->updates = res.steps;
    rep->stopped_early = res.stopped_early;
    rep->resumed = res.resumed;
    rep->first_val_loss = res.first_val;
    rep->best_val_loss = res.best_val;
    rep->best_update = res.best_step;
    rep->train_seconds = res.seconds;
    rep->validation_seconds = res.val_seconds;
    rep->tokens_per_s = res.tokens_per_s;
    rq_info("trained %lld updates (%lld micro-steps) in %.1fs, %.2f updates/s, %.0f tokens/s%s%s", (long long)res.steps,
            (long long)(res.steps * o->accum), res.seconds,
            res.seconds > 0 ? (res.steps - res.resumed_at) / res.seconds : 0.0, res.tokens_per_s,
            res.stopped_early ? ", stopped early" : "", res.resumed ? " (resumed)" : "");
    if (!isnan(res.best_val))
        rq_info("validation loss: %.6f before, %.6f best (update %lld)", res.first_val, res.best_val,
                (long long)res.best_step);
    rq_info("adapters: %s", rep->adapter_dir);
    rep->seconds = rq_now_seconds() - t_start;
    sum = summary(o, &co, &ac, svd_init, rep);
    CHECK(sum ? rq_stage_write_json(o->out, "calibrate.json", sum, err) : RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory"));
#undef CHECK
done:
    cJSON_Delete(sum);
    rq_teacher_cache_close(tc);
    rq_calib_windows_free(&w);
    rq_adapter_set_free(ad);
    rq_model_free(student);
    rq_model_free(teacher);
    rq_checkpoint_close(&ck);
    rq_backend_destroy(be);
    free(cache_path);
    free(data_path);
    return st;
}

cJSON *rq_stage_calibrate_report_json(const rq_stage_calibrate_report *r) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "windows", r->windows);
    cJSON_AddNumberToObject(o, "seq_len", r->seq_len);
    cJSON_AddNumberToObject(o, "val_windows", r->val_windows);
    cJSON_AddNumberToObject(o, "updates", (double)r->updates);
    cJSON_AddBoolToObject(o, "stopped_early", r->stopped_early);
    cJSON_AddBoolToObject(o, "resumed", r->resumed);
    rq_json_add_finite(o, "first_val_loss", r->first_val_loss);
    rq_json_add_finite(o, "best_val_loss", r->best_val_loss);
    cJSON_AddNumberToObject(o, "best_update", (double)r->best_update);
    cJSON_AddNumberToObject(o, "head_error_windows", r->head_error_windows);
    rq_json_add_finite(o, "head_error_before", r->head_error_before);
    rq_json_add_finite(o, "head_error_after", r->head_error_after);
    cJSON_AddNumberToObject(o, "train_seconds", r->train_seconds);
    cJSON_AddNumberToObject(o, "validation_seconds", r->validation_seconds);
    cJSON_AddNumberToObject(o, "teacher_seconds", r->teacher_seconds);
    rq_json_add_finite(o, "tokens_per_s", r->tokens_per_s);
    cJSON_AddStringToObject(o, "teacher_cache", r->teacher_cache);
    cJSON_AddBoolToObject(o, "teacher_cache_reused", r->teacher_cache_reused);
    cJSON_AddStringToObject(o, "adapter", r->adapter_dir);
    cJSON_AddNumberToObject(o, "seconds", r->seconds);
    return o;
}
