/* rilq calibrate: the RILQ stage (algorithms.md section 1). */
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>

#include "../data/jsonl.h"
#include "../quant/quantize_model.h"
#include "../train/calib.h"
#include "../train/plan.h"
#include "../train/trainer.h"
#include "cli.h"

static const char *calibrate_help =
    "usage: rilq calibrate MODEL_FP (--student ARTIFACT | --quantize rtn|nf2) --out DIR [options]\n\n"
    "RILQ initialization: adapters on all seven projections of the 2-bit student are tuned so\n"
    "that its final hidden states match the full-precision teacher's (Model-Loss) while it\n"
    "predicts the calibration text (GT-Loss). The teacher runs once; its final hidden states\n"
    "(after the final norm) go to a zstd cache that later runs with the same model, data and\n"
    "window settings reuse; the teacher is freed before the student trains and the targets are\n"
    "streamed from the cache one window at a time.\n"
    "DIR receives adapter/ (PEFT layout), metrics.jsonl (train and validation losses),\n"
    "checkpoint.bin and calibrate.json (settings, losses, LM-head relative error before/after).\n\n"
    "student:\n"
    "  --student DIR         q2 artifact (rilq quantize) of MODEL_FP\n"
    "  --quantize rtn|nf2    or quantize MODEL_FP on the fly (group --group-size)\n"
    "data (algorithms.md 1.4):\n"
    "  --data c4|wikitext2   calibration text (default c4: $RILQ_DATA/datasets/c4/c4-validation-2k.jsonl)\n"
    "  --c4-docs A:B         C4 documents that may be drawn (default 0:1000; measure C4 perplexity\n"
    "                        on the others: rilq ppl --c4-docs 1000:2000)\n"
    "  --text FILE           wikitext2: the text (default wiki.valid.raw; there is no local train\n"
    "                        split and wiki.test.raw is what perplexity reads), first 1000 lines\n"
    "  --windows N (320)  --seq-len T (512)  --val-windows N (64, the last drawn)  --seed S (42)\n"
    "adapters:\n"
    "  --adapter qalora|lora (qalora)  --rank R (64)  --alpha A (16)  --group-size G (64)\n"
    "  --init gaussian|svd   gaussian: A ~ N(0, 1/r^2), B = 0 (RILQ); svd: rank-R SVD of the\n"
    "                        quantization error W - Q (LoftQ baseline, 1 alternation; plain LoRA only)\n"
    "loss:\n"
    "  --model-weight W (0.5)  --gt-weight W (0.5)\n"
    "  --model-loss hidden|logits  MSE of the final hidden states (default), or of the logits\n"
    "                        (teacher logits from the cached teacher hidden states and the same head)\n"
    "  --scope model|layer|linear  where the Model-Loss compares: the final hidden states (default),\n"
    "                        every layer's output, or every projection's output; layer and linear\n"
    "                        keep the teacher in memory and run it beside the student (their targets\n"
    "                        are too large to cache)\n"
    "optimization (1.7):\n"
    "  --lr LR (1e-4)  --accum K (8)  --micro-batch B (1)  --eval-every N (25)  --patience N (5)\n"
    "  --max-micro-steps N (10000)   --resume   continue from DIR/checkpoint.bin\n"
    "  --head-error-windows N        validation windows for the LM-head error (default 16)\n"
    "  --cache DIR           teacher cache directory (default $RILQ_CACHE or .cache/teacher)\n"
    "  --data-root DIR       datasets root (default $RILQ_DATA)\n" CLI_MEMCHECK_HELP CLI_COMMON_HELP;

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

static rq_status write_summary(const char *out, cJSON *root, rq_err *err) {
    char path[4096];
    if (!rq_path_join(path, sizeof path, out, "calibrate.json")) return RQ_FAIL(err, RQ_ERR_ARG, "path too long: %s", out);
    char *text = cJSON_Print(root);
    if (!text) return RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory writing %s", path);
    size_t n = strlen(text);
    text[n] = '\n';
    rq_status st = rq_write_file_atomic(path, text, n + 1, err);
    cJSON_free(text);
    return st;
}

int cmd_calibrate(int argc, char **argv) {
    const char *fp_path = NULL, *student_path = NULL, *quantize = NULL, *out = NULL, *data = "c4", *text = NULL,
               *adapter = "qalora", *init = "gaussian", *scope = "model", *model_loss = "hidden", *cache = NULL,
               *data_root = NULL;
    const char *s_docs = "0:1000", *s_windows = "320", *s_seq = "512", *s_val = "64", *s_seed = "42", *s_rank = "64",
               *s_alpha = "16", *s_gs = "64", *s_mw = "0.5", *s_gw = "0.5", *s_lr = "1e-4", *s_accum = "8",
               *s_mb = "1", *s_every = "25", *s_pat = "5", *s_max = "10000", *s_head = "16";
    bool resume = false, no_memcheck = false;
    cli_common common = {0};
    const cli_value_opt specs[] = {{"--student", &student_path}, {"--quantize", &quantize}, {"--out", &out},
                        {"--data", &data},           {"--text", &text},         {"--adapter", &adapter},
                        {"--init", &init},           {"--scope", &scope},       {"--model-loss", &model_loss},
                        {"--cache", &cache},         {"--data-root", &data_root}, {"--c4-docs", &s_docs},
                        {"--windows", &s_windows},   {"--seq-len", &s_seq},     {"--val-windows", &s_val},
                        {"--seed", &s_seed},         {"--rank", &s_rank},       {"--alpha", &s_alpha},
                        {"--group-size", &s_gs},     {"--model-weight", &s_mw}, {"--gt-weight", &s_gw},
                        {"--lr", &s_lr},             {"--accum", &s_accum},     {"--micro-batch", &s_mb},
                        {"--eval-every", &s_every},  {"--patience", &s_pat},    {"--max-micro-steps", &s_max},
                        {"--head-error-windows", &s_head}};
    const cli_bool_opt flags[] = {{"--resume", &resume}, {"--no-memory-check", &no_memcheck}};
    int pr = cli_parse("calibrate", calibrate_help, argc, argv, &common, specs, sizeof specs / sizeof specs[0], flags, 2, &fp_path);
    if (pr) return pr < 0 ? 0 : pr;
    if (!fp_path) return cli_usage_error("calibrate", "missing MODEL_FP (the full-precision teacher)");
    if (!out) return cli_usage_error("calibrate", "missing --out DIR");
    if (!student_path == !quantize) return cli_usage_error("calibrate", "give exactly one of --student ARTIFACT and --quantize rtn|nf2");
    rq_loss_scope loss_scope = RQ_SCOPE_MODEL;
    if (!strcmp(scope, "layer")) loss_scope = RQ_SCOPE_LAYER;
    else if (!strcmp(scope, "linear")) loss_scope = RQ_SCOPE_LINEAR;
    else if (strcmp(scope, "model") != 0)
        return cli_usage_error("calibrate", "--scope expects model, layer or linear, got '%s'", scope);
    if (loss_scope != RQ_SCOPE_MODEL && !strcmp(model_loss, "logits"))
        return cli_usage_error("calibrate", "--model-loss logits belongs to --scope model");
    if (strcmp(model_loss, "hidden") != 0 && strcmp(model_loss, "logits") != 0)
        return cli_usage_error("calibrate", "--model-loss expects hidden or logits, got '%s'", model_loss);
    long windows, seq, nval, seed, rank, gs, accum, mb, every, pat, maxmicro, headw, doc_a = 0, doc_b = 0;
    double alpha, mw, gw, lr;
    if (!cli_parse_int(s_windows, 2, 1 << 24, &windows)) return cli_usage_error("calibrate", "--windows expects an integer >= 2");
    if (!cli_parse_int(s_seq, 2, 1 << 20, &seq)) return cli_usage_error("calibrate", "--seq-len expects an integer >= 2");
    if (!cli_parse_int(s_val, 0, windows - 1, &nval)) return cli_usage_error("calibrate", "--val-windows expects 0..%ld", windows - 1);
    if (!cli_parse_int(s_seed, 0, __LONG_MAX__, &seed)) return cli_usage_error("calibrate", "--seed expects an integer >= 0");
    if (!cli_parse_int(s_rank, 1, 4096, &rank)) return cli_usage_error("calibrate", "--rank expects 1..4096");
    if (!cli_parse_float(s_alpha, 1e-6, 1e6, &alpha)) return cli_usage_error("calibrate", "--alpha expects a positive number");
    if (!cli_parse_int(s_gs, 1, 1 << 20, &gs)) return cli_usage_error("calibrate", "--group-size expects a positive integer");
    if (!cli_parse_float(s_mw, 0, 1e6, &mw)) return cli_usage_error("calibrate", "--model-weight expects a number >= 0");
    if (!cli_parse_float(s_gw, 0, 1e6, &gw)) return cli_usage_error("calibrate", "--gt-weight expects a number >= 0");
    if (!(mw > 0) && !(gw > 0)) return cli_usage_error("calibrate", "--model-weight and --gt-weight are both 0: no loss");
    if (!cli_parse_float(s_lr, 0, 10, &lr)) return cli_usage_error("calibrate", "--lr expects 0..10");
    if (!cli_parse_int(s_accum, 1, 1 << 20, &accum)) return cli_usage_error("calibrate", "--accum expects a positive integer");
    if (!cli_parse_int(s_mb, 1, 4096, &mb)) return cli_usage_error("calibrate", "--micro-batch expects 1..4096");
    if (!cli_parse_int(s_every, 0, 1 << 30, &every)) return cli_usage_error("calibrate", "--eval-every expects an integer >= 0");
    if (!cli_parse_int(s_pat, 0, 1 << 30, &pat)) return cli_usage_error("calibrate", "--patience expects an integer >= 0");
    if (!cli_parse_int(s_max, 1, 1L << 40, &maxmicro)) return cli_usage_error("calibrate", "--max-micro-steps expects a positive integer");
    if (!cli_parse_int(s_head, 0, 1 << 30, &headw)) return cli_usage_error("calibrate", "--head-error-windows expects an integer >= 0");
    if (sscanf(s_docs, "%ld:%ld", &doc_a, &doc_b) != 2 || doc_a < 0 || doc_b <= doc_a || doc_b > (1L << 30))
        return cli_usage_error("calibrate", "--c4-docs expects A:B with 0 <= A < B, got '%s'", s_docs);
    rq_adapter_config ac = {.r = (int)rank, .alpha = (float)alpha, .group_size = (int)gs, .seed = (uint64_t)seed,
                            .targets = RQ_ADAPTER_ALL_PROJ, .init = RQ_INIT_GAUSSIAN};
    if (!strcmp(adapter, "lora")) ac.type = RQ_ADAPTER_LORA;
    else if (!strcmp(adapter, "qalora")) ac.type = RQ_ADAPTER_QALORA;
    else return cli_usage_error("calibrate", "--adapter expects qalora or lora, got '%s'", adapter);
    bool svd_init = false;
    if (!strcmp(init, "svd") || !strcmp(init, "loftq")) svd_init = true;
    else if (strcmp(init, "gaussian") != 0) return cli_usage_error("calibrate", "--init expects gaussian or svd, got '%s'", init);
    if (svd_init && ac.type != RQ_ADAPTER_LORA)
        return cli_usage_error("calibrate", "--init svd needs --adapter lora (a QA-LoRA A reads group means)");
    rq_quant_method qmethod = RQ_QUANT_RTN;
    rq_err qerr = {0};
    if (quantize && rq_quant_method_parse(quantize, &qmethod, &qerr) != RQ_OK)
        return cli_usage_error("calibrate", "--quantize expects rtn or nf2, got '%s'", quantize);

    const char *root = cli_data_root(data_root);
    char data_path[4096];
    rq_calib_opts co;
    rq_calib_default_opts(&co);
    co.seq_len = (int)seq;
    co.n_windows = (int)windows;
    co.n_val = (int)nval;
    co.seed = (uint64_t)seed;
    co.doc_begin = (int)doc_a;
    co.doc_end = (int)doc_b;
    if (!strcmp(data, "c4")) {
        co.source = RQ_CALIB_C4;
        if (!root) return cli_usage_error("calibrate", "no --data-root and no RILQ_DATA to find C4 in");
        if (!rq_path_join(data_path, sizeof data_path, root, "datasets/c4/c4-validation-2k.jsonl"))
            return cli_usage_error("calibrate", "data path too long");
        co.path = data_path;
    } else if (!strcmp(data, "wikitext2")) {
        co.source = RQ_CALIB_TEXT;
        if (text) co.path = text;
        else {
            if (!root) return cli_usage_error("calibrate", "no --text FILE and no RILQ_DATA to find WikiText-2 in");
            if (!rq_path_join(data_path, sizeof data_path, root, "datasets/wikitext2/wiki.valid.raw"))
                return cli_usage_error("calibrate", "data path too long");
            if (!rq_file_exists(data_path))
                return cli_usage_error("calibrate", "%s does not exist and no local WikiText-2 train split exists; "
                                                    "pass --text FILE (not wiki.test.raw: perplexity reads it)", data_path);
            co.path = data_path;
        }
    } else return cli_usage_error("calibrate", "--data expects c4 or wikitext2, got '%s'", data);

    char cache_dir[4096], cache_path[4096], key_text[8192];
    if (!cache) cache = getenv("RILQ_CACHE") && *getenv("RILQ_CACHE") ? getenv("RILQ_CACHE") : ".cache/teacher";
    snprintf(cache_dir, sizeof cache_dir, "%s", cache);

    rq_err err = {0};
    int rc = 0;
    rq_model *teacher = NULL, *student = NULL;
    rq_backend *be = NULL;
    rq_adapter_set *ad = NULL;
    rq_teacher_cache *tc = NULL;
    rq_calib_windows w = {0};
    cJSON *sum = cJSON_CreateObject();
    uint64_t key = 0;
    double t_start = rq_now_seconds(), teacher_seconds = 0;
    if (rq_backend_create(common.device, common.threads, &be, &err) ||
        rq_model_load(fp_path, common.tokenizer, &teacher, &err))
        goto fail;
    if (!teacher->tok) {
        RQ_FAIL(&err, RQ_ERR_ARG, "%s has no tokenizer; pass --tokenizer PATH", fp_path);
        goto fail;
    }
    if (student_path) {
        if (rq_model_load(student_path, common.tokenizer, &student, &err)) goto fail;
    } else {
        rq_model_quant_opts qo;
        rq_model_quant_opts_default(&qo);
        qo.quant.method = qmethod;
        qo.quant.group_size = (int)gs;
        if (rq_model_load(fp_path, common.tokenizer, &student, &err) || rq_model_quantize(student, &qo, NULL, &err))
            goto fail;
    }
    if (student->cfg.dim != teacher->cfg.dim || student->cfg.vocab_size != teacher->cfg.vocab_size ||
        student->cfg.n_layers != teacher->cfg.n_layers) {
        RQ_FAIL(&err, RQ_ERR_ARG, "student %s (dim %d, %d layers, vocab %d) does not match teacher %s (dim %d, %d, %d)",
                student->path, student->cfg.dim, student->cfg.n_layers, student->cfg.vocab_size, teacher->path,
                teacher->cfg.dim, teacher->cfg.n_layers, teacher->cfg.vocab_size);
        goto fail;
    }
    printf("calibrate: teacher %s (%s), student %s\n", teacher->path, teacher->format, student->path);
    if (rq_calib_windows_build(teacher->tok, &co, &w, &err)) goto fail;
    printf("data: %s%s, %d windows of %d tokens (%d held out), seed %llu\n", co.path,
           co.source == RQ_CALIB_C4 ? "" : " (first 1000 lines)", w.n, w.T, w.n_val, (unsigned long long)co.seed);
    if (co.source == RQ_CALIB_C4)
        printf("      C4 documents %d:%d drawn; measure C4 perplexity on documents outside them (e.g. --c4-docs %d:2000)\n",
               co.doc_begin, co.doc_end, co.doc_end);
    if (rq_teacher_key(fp_path, &co, &key, key_text, sizeof key_text, &err) || rq_mkdir_p(cache_dir, &err)) goto fail;
    {
        char name[64];
        snprintf(name, sizeof name, "teacher-%016" PRIx64 ".rqt", key);
        if (!rq_path_join(cache_path, sizeof cache_path, cache_dir, name)) {
            RQ_FAIL(&err, RQ_ERR_ARG, "cache path too long: %s", cache_dir);
            goto fail;
        }
    }
    {
        /* refuse a run that cannot fit before the teacher pass and the training state allocate */
        rq_plan_opts po;
        rq_plan_default_opts(&po);
        po.stage = RQ_PLAN_CALIBRATE;
        po.scope = loss_scope;
        po.mse_weight = mw, po.ce_weight = gw;
        po.adapter = ac.type, po.r = ac.r, po.adapter_group_size = ac.group_size, po.targets = ac.targets;
        po.micro_batch = (int)mb, po.seq_len = w.T, po.n_windows = w.n;
        po.teacher_cached = rq_file_exists(cache_path);
        const bool on_host = be->caps.weights_on_host;
        uint64_t resident = on_host ? rq_model_weight_bytes(student) + rq_model_weight_bytes(teacher) : 0;
        if (cli_memory_check("calibrate", be, student, &po, resident, no_memcheck)) {
            rc = 1;
            goto done;
        }
    }
    bool reused = false;
    if (rq_file_exists(cache_path)) {
        bool stale = false;
        rq_err e2 = {0};
        if (rq_teacher_cache_open(cache_path, key, teacher->cfg.dim, w.T, w.n, &tc, &stale, &e2) == RQ_OK) reused = true;
        else if (!stale) {
            err = e2;
            goto fail;
        } else printf("teacher cache %s is stale (%s); recomputing\n", cache_path, e2.msg);
    }
    {
        const double mib = 1048576.0, raw = (double)w.n * w.T * teacher->cfg.dim * 4;
        if (!reused) {
            printf("teacher: %d windows -> %s (%.1f MiB of fp32 before compression)\n", w.n, cache_path, raw / mib);
            double tt = rq_now_seconds();
            if (rq_teacher_cache_write(teacher, be, &w, key, key_text, cache_path, false, &err)) goto fail;
            teacher_seconds = rq_now_seconds() - tt;
            bool stale = false;
            if (rq_teacher_cache_open(cache_path, key, teacher->cfg.dim, w.T, w.n, &tc, &stale, &err)) goto fail;
        }
        printf("teacher cache: %s, %.1f MiB compressed (%.1f MiB raw)%s\n", cache_path, rq_teacher_cache_bytes(tc) / mib,
               raw / mib, reused ? ", reused" : "");
    }
    if (rq_adapter_set_create(&student->cfg, &ac, be, &ad, &err)) goto fail;
    if (svd_init && rq_calib_svd_init(teacher, student, ad, (uint64_t)seed, false, &err)) goto fail;
    /* the teacher's weights are never needed again, except by the layer / linear scope ablation,
       whose per-layer targets are too large to cache: there the teacher runs alongside */
    if (loss_scope == RQ_SCOPE_MODEL) {
        rq_model_free(teacher);
        teacher = NULL;
    }

    rq_train_opts o;
    rq_train_default_opts(&o);
    o.seq_len = w.T;
    o.micro_batch = (int)mb;
    o.accum = (int)accum;
    o.max_steps = maxmicro / (accum * mb) > 0 ? maxmicro / (accum * mb) : 1;
    o.shuffle = false; /* the reference visits the shuffled-once training windows in order, cycling */
    o.seed = (uint64_t)seed;
    o.ce_weight = gw;
    o.mse_weight = mw;
    o.mse_on_logits = !strcmp(model_loss, "logits");
    o.scope = loss_scope;
    o.teacher = teacher;
    o.optim = rq_optim_defaults(RQ_OPTIM_ADAM);
    o.schedule = (rq_schedule){.kind = RQ_SCHED_CONSTANT, .lr = lr};
    o.eval_every = (int)every;
    o.patience = (int)pat;
    o.checkpoint_every = (int)every;
    o.out_dir = out;
    o.resume = resume;
    {
        printf("student: %s r=%d alpha=%g (scaling %g) on %d projections, %zu parameters, init %s\n",
               rq_adapter_type_name(ac.type), ac.r, ac.alpha, ac.alpha / ac.r, rq_adapter_set_count(ad), ad->n_params,
               svd_init ? "svd" : "gaussian");
        printf("loss: %g * MSE(final hidden) + %g * CE; Adam lr %g, %ld x %ld per update, <= %lld updates, "
               "validate every %ld, patience %ld\n",
               mw, gw, lr, mb, accum, (long long)o.max_steps, every, pat);
    }
    int head_n = (int)(headw < w.n_val ? headw : w.n_val);
    double head_before = NAN, head_after = NAN;
    if (head_n > 0) {
        if (rq_calib_head_error(student, be, ad, &w, tc, 0, head_n, &head_before, &err)) goto fail;
        printf("LM-head relative error ||Y - Yq|| / ||Y|| on %d validation windows: %.6f before\n", head_n, head_before);
    }
    calib_data td = {&w, tc, w.n_val}, vd = {&w, tc, 0};
    rq_train_data train = {get_calib, &td, w.n - w.n_val}, val = {get_calib, &vd, w.n_val};
    rq_train_result res;
    if (rq_train(student, be, ad, &train, &val, &o, NULL, NULL, &res, &err)) goto fail;
    char adir[4096];
    if (!rq_path_join(adir, sizeof adir, out, "adapter") || rq_adapter_set_save_peft(ad, adir, &err)) goto fail;
    if (head_n > 0) {
        if (rq_calib_head_error(student, be, ad, &w, tc, 0, head_n, &head_after, &err)) goto fail;
        printf("LM-head relative error: %.6f before, %.6f after\n", head_before, head_after);
    }
    printf("trained %lld updates (%lld micro-steps) in %.1fs, %.2f updates/s, %.0f tokens/s%s%s\n",
           (long long)res.steps, (long long)(res.steps * accum), res.seconds,
           res.seconds > 0 ? (res.steps - res.resumed_at) / res.seconds : 0.0, res.tokens_per_s,
           res.stopped_early ? ", stopped early" : "", res.resumed ? " (resumed)" : "");
    if (!isnan(res.best_val))
        printf("validation loss: %.6f before, %.6f best (update %lld)\n", res.first_val, res.best_val,
               (long long)res.best_step);
    printf("adapters: %s\n", adir);
    {
        cJSON_AddStringToObject(sum, "teacher", fp_path);
        cJSON_AddStringToObject(sum, "student", student_path ? student_path : "(quantized on the fly)");
        if (quantize) cJSON_AddStringToObject(sum, "quantize", quantize);
        cJSON_AddStringToObject(sum, "data", co.source == RQ_CALIB_C4 ? "c4" : "text");
        cJSON_AddStringToObject(sum, "data_path", co.path);
        if (co.source == RQ_CALIB_C4) {
            char docs[64];
            snprintf(docs, sizeof docs, "%d:%d", co.doc_begin, co.doc_end);
            cJSON_AddStringToObject(sum, "c4_docs", docs);
        }
        cJSON_AddNumberToObject(sum, "windows", w.n);
        cJSON_AddNumberToObject(sum, "seq_len", w.T);
        cJSON_AddNumberToObject(sum, "val_windows", w.n_val);
        cJSON_AddNumberToObject(sum, "seed", (double)seed);
        cJSON_AddStringToObject(sum, "adapter", rq_adapter_type_name(ac.type));
        cJSON_AddNumberToObject(sum, "rank", ac.r);
        cJSON_AddNumberToObject(sum, "alpha", ac.alpha);
        cJSON_AddNumberToObject(sum, "group_size", ac.group_size);
        cJSON_AddStringToObject(sum, "init", svd_init ? "svd" : "gaussian");
        cJSON_AddStringToObject(sum, "scope", scope);
        cJSON_AddStringToObject(sum, "model_loss", model_loss);
        cJSON_AddNumberToObject(sum, "model_weight", mw);
        cJSON_AddNumberToObject(sum, "gt_weight", gw);
        cJSON_AddNumberToObject(sum, "lr", lr);
        cJSON_AddNumberToObject(sum, "micro_batch", (double)mb);
        cJSON_AddNumberToObject(sum, "accum", (double)accum);
        cJSON_AddNumberToObject(sum, "eval_every", (double)every);
        cJSON_AddNumberToObject(sum, "patience", (double)pat);
        cJSON_AddNumberToObject(sum, "max_micro_steps", (double)maxmicro);
        cJSON_AddNumberToObject(sum, "updates", (double)res.steps);
        cJSON_AddBoolToObject(sum, "stopped_early", res.stopped_early);
        cJSON_AddNumberToObject(sum, "first_val_loss", isnan(res.first_val) ? -1 : res.first_val);
        cJSON_AddNumberToObject(sum, "best_val_loss", isnan(res.best_val) ? -1 : res.best_val);
        cJSON_AddNumberToObject(sum, "best_update", (double)res.best_step);
        cJSON_AddNumberToObject(sum, "train_seconds", res.seconds);
        cJSON_AddNumberToObject(sum, "validation_seconds", res.val_seconds);
        cJSON_AddNumberToObject(sum, "teacher_seconds", teacher_seconds);
        cJSON_AddNumberToObject(sum, "tokens_per_s", res.tokens_per_s);
        cJSON_AddStringToObject(sum, "head_error_definition", "||Y - Yq||_F / ||Y||_F over all logits of the first "
                                                              "head_error_windows validation windows");
        cJSON_AddNumberToObject(sum, "head_error_windows", head_n);
        cJSON_AddNumberToObject(sum, "head_error_before", isnan(head_before) ? -1 : head_before);
        cJSON_AddNumberToObject(sum, "head_error_after", isnan(head_after) ? -1 : head_after);
        cJSON_AddStringToObject(sum, "teacher_cache", cache_path);
        cJSON_AddBoolToObject(sum, "teacher_cache_reused", reused);
        cJSON_AddNumberToObject(sum, "total_seconds", rq_now_seconds() - t_start);
        if (write_summary(out, sum, &err)) goto fail;
    }
    goto done;
fail:
    rc = cli_fail("calibrate", &err);
done:
    cJSON_Delete(sum);
    rq_teacher_cache_close(tc);
    rq_calib_windows_free(&w);
    rq_adapter_set_free(ad);
    rq_model_free(student);
    rq_model_free(teacher);
    rq_backend_destroy(be);
    return rc;
}
