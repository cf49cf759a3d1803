/* The quantize stage: a model -> the 2-bit artifact directory (src/io/artifact.h). */
#include <sys/stat.h>

#include <stdlib.h>

#include "../backend/backend.h"
#include "../io/artifact.h"
#include "../load/load.h"
#include "../train/layerwise.h"
#include "../train/calib.h"
#include "stages.h"

#define O rq_stage_quantize_opts
static const rq_opt opts[] = {
    RQ_OPT_S("--out", NULL, O, out, NULL, NULL, "DIR", "the artifact directory (must not exist or be empty)"),
    {"--method", "quantize.method", RQ_OPT_STR, offsetof(O, method), NULL, "rtn|nf2|gptq|fake-quant", 0, 0, "M",
     "rtn (asymmetric min/max, codebook {0,1,2,3}), nf2 (absmax, NormalFloat-2\n"
     "levels), gptq (GPTQ on calibration windows, each group's (s, m) as rtn or\n"
     "nf2 chooses them: --codebook), or fake-quant (import weights that already lie\n"
     "on a 2-bit grid per group; --codebook picks it). Required on the command line", "rtn"},
    RQ_OPT_S("--codebook", "quantize.codebook", O, codebook, NULL, "int2|nf2", NULL,
             "gptq and fake-quant: the grid (default int2)"),
    RQ_OPT_I("--group-size", "quantize.group_size", O, group_size, "64", 1, 1 << 20, "N", "input columns per group"),
    RQ_OPT_B("--clip-search", "quantize.clip_search", O, clip_search, "false",
             "per group, search a shrunk range minimizing the weight error"),
    RQ_OPT_L("--modules", "quantize.modules", O, modules, "q,k,v,o,gate,up,down", "q|k|v|o|gate|up|down", NULL,
             "projections to quantize (the rest stay in full precision)"),
    RQ_OPT_B("--compress", NULL, O, compress, "false", "store model.safetensors.zst (zstd) instead of model.safetensors"),
    RQ_OPT_I("--calib-windows", "quantize.calib_windows", O, calib_windows, "128", 1, 1 << 20, "N",
             "gptq and refine: calibration windows (C4, drawn as stage 1 draws them)"),
    RQ_OPT_I("--calib-seq-len", "quantize.calib_seq_len", O, calib_seq_len, "512", 2, 1 << 20, "T",
             "gptq and refine: tokens per calibration window"),
    RQ_OPT_S("--c4-docs", "quantize.c4_docs", O, c4_docs, "0:1000", NULL, "A:B",
             "gptq and refine: C4 documents the windows may come from (those of stage 1, so C4\n"
             "perplexity on 1000:2000 stays clean)"),
    RQ_OPT_I("--seed", "quantize.seed", O, seed, "42", 0, 9007199254740991.0, "S", "gptq and refine: window sampling seed"),
    RQ_OPT_N("--damp", "quantize.damp", O, damp, "0.01", 0, 10, "X", "gptq: H += X * mean(diag H) * I"),
    RQ_OPT_I("--gptq-block", "quantize.gptq_block", O, gptq_block, "128", 1, 1 << 20, "N",
             "gptq: columns per lazy block (a multiple of the group size)"),
    RQ_OPT_S("--refine", "quantize.refine", O, refine, "none", "none|clip|weights", NULL,
             "block-wise reconstruction after rtn or gptq, layer by layer on the calibration\n"
             "windows: each group's scale and offset (the clipping range) train so the layer's\n"
             "output matches the full-precision layer's (clip), or those and the weights\n"
             "(weights: EfficientQAT's Block-AP)"),
    RQ_OPT_I("--refine-epochs", "quantize.refine_epochs", O, refine_epochs, "2", 1, 1 << 20, "N",
             "refine: passes over the calibration windows per layer"),
    RQ_OPT_N("--refine-lr", "quantize.refine_lr", O, refine_lr, "2e-3", 0, 1, "LR",
             "refine: Adam rate of log(scale) and of offset / initial scale"),
    RQ_OPT_N("--refine-weight-lr", "quantize.refine_weight_lr", O, refine_weight_lr, "1e-3", 0, 1, "LR",
             "refine weights: Adam rate of weight / initial scale"),
    RQ_OPT_S("--data-root", NULL, O, data_root, NULL, NULL, "DIR",
             "gptq and refine: datasets root (default $RILQ_DATA)"),
    RQ_COMMON_OPT_LINES(O),
};
const rq_opt_table rq_stage_quantize_table = RQ_OPT_TABLE(opts, O);
#undef O

rq_status rq_stage_quantize_defaults(rq_stage_quantize_opts *o, rq_err *err) {
    memset(o, 0, sizeof *o);
    return rq_opts_defaults(rq_stage_quantize_table, o, err);
}

/* GPTQ and / or block-wise reconstruction on calibration windows drawn as stage 1
 * draws them (C4 documents c4_docs). */
static rq_status run_layerwise(rq_model **mp, rq_checkpoint *ck, const rq_stage_quantize_opts *o,
                               const rq_model_quant_opts *qo, rq_model_quant_report *rep, rq_err *err) {
    const rq_tokenizer *tok = ck ? ck->tok : (*mp)->tok;
    if (!tok) return RQ_FAIL(err, RQ_ERR_ARG, "%s has no tokenizer (GPTQ tokenizes its calibration text); pass --tokenizer PATH", o->model);
    const char *root = o->data_root && *o->data_root ? o->data_root : getenv("RILQ_DATA");
    if (!root || !*root) return RQ_FAIL(err, RQ_ERR_ARG, "gptq: no --data-root and no RILQ_DATA to find C4 in");
    long a = 0, b = 0;
    if (!o->c4_docs || sscanf(o->c4_docs, "%ld:%ld", &a, &b) != 2 || a < 0 || b <= a)
        return RQ_FAIL(err, RQ_ERR_ARG, "--c4-docs expects A:B with 0 <= A < B, got '%s'", o->c4_docs ? o->c4_docs : "");
    char *path = rq_path_join_alloc(root, "datasets/c4/c4-validation-2k.jsonl", err);
    if (!path) return RQ_ERR_NOMEM;
    rq_calib_opts co;
    rq_calib_default_opts(&co);
    co.source = RQ_CALIB_C4;
    co.path = path;
    co.seq_len = (int)o->calib_seq_len;
    co.n_windows = (int)o->calib_windows;
    co.n_val = 0;
    co.seed = (uint64_t)o->seed;
    co.doc_begin = (int)a;
    co.doc_end = (int)b;
    rq_calib_windows w = {0};
    rq_status bs = rq_calib_windows_build(tok, &co, &w, err);
    free(path);
    if (bs != RQ_OK) return bs;
    const bool gptq = !strcmp(o->method, "gptq"), refine = strcmp(o->refine, "none") != 0;
    rq_info("calibration: %d C4 windows of %d tokens (documents %ld:%ld, seed %lld)", w.n, w.T, a, b, (long long)o->seed);
    if (gptq) rq_info("gptq: damp %g, block %lld", o->damp, (long long)o->gptq_block);
    if (refine)
        rq_info("block-wise reconstruction (%s): %lld epochs, lr %g%s", o->refine, (long long)o->refine_epochs,
                o->refine_lr, !strcmp(o->refine, "weights") ? ", weights too" : "");
    rq_backend *be = NULL;
    rq_status st = rq_backend_create(o->common.device, (int)o->common.threads, &be, err);
    rq_layerwise_opts lo;
    rq_layerwise_opts_default(&lo);
    lo.gptq.quant = qo->quant;
    lo.gptq.damp = o->damp;
    lo.gptq.block = (int)o->gptq_block;
    lo.gptq_init = gptq;
    lo.refine_epochs = refine ? (int)o->refine_epochs : 0;
    lo.refine_weights = !strcmp(o->refine, "weights");
    lo.refine_lr = o->refine_lr;
    lo.refine_weight_lr = o->refine_weight_lr;
    lo.proj_mask = qo->proj_mask;
    lo.batch = 1;
    if (st == RQ_OK && !ck) st = rq_layerwise_quantize(*mp, be, w.tokens, w.n, w.T, &lo, rep, err);
    if (st == RQ_OK && ck) {
        /* a layer at a time from the checkpoint: never the whole fp32 model */
        st = rq_layerwise_quantize_checkpoint(&ck->cfg, ck->table, be, w.tokens, w.n, w.T, &lo, mp, rep, err);
        if (st == RQ_OK) {
            rq_model *m = *mp;
            m->tok = ck->tok;
            ck->tok = NULL;
            memcpy(m->tokenizer_path, ck->tokenizer_path, sizeof m->tokenizer_path);
            snprintf(m->format, sizeof m->format, "%s", rq_checkpoint_format(ck));
            snprintf(m->path, sizeof m->path, "%s", o->model);
        }
    }
    rq_backend_destroy(be);
    rq_calib_windows_free(&w);
    return st;
}

rq_status rq_stage_quantize(const rq_stage_quantize_opts *o, bool keep_existing, rq_stage_quantize_report *rep,
                            rq_err *err) {
    memset(rep, 0, sizeof *rep);
    if (!o->model) return RQ_FAIL(err, RQ_ERR_ARG, "quantize: missing the model");
    if (!o->out) return RQ_FAIL(err, RQ_ERR_ARG, "quantize: missing the output directory (--out DIR)");
    if (!o->method) return RQ_FAIL(err, RQ_ERR_ARG, "quantize: missing --method (rtn, nf2 or fake-quant)");
    double t0 = rq_now_seconds();
    char *cfg = keep_existing ? rq_path_join_alloc(o->out, "config.json", err) : NULL;
    const bool complete = cfg && rq_file_exists(cfg);
    free(cfg);
    if (complete) {
        /* artifacts appear by an atomic rename, config.json written last: one that has it is complete (an empty
           directory is not: it is filled) */
        rq_info("%s is complete (written before an interruption); kept", o->out);
        rep->kept = true;
        rep->method = o->method;
        rep->group_size = o->group_size;
        rep->clip_search = o->clip_search;
        return RQ_OK;
    }
    RQ_TRY(rq_check_output(o->out, RQ_OUT_DIR_NEW, err));
    rq_model_quant_opts qo;
    rq_model_quant_opts_default(&qo);
    qo.quant.group_size = (int)o->group_size;
    qo.quant.clip_search = o->clip_search;
    char list[RQ_LIST_MAX * RQ_LIST_ITEM];
    rq_list_join(&o->modules, list, sizeof list);
    RQ_TRY(rq_proj_mask_parse(list, &qo.proj_mask, err));
    const bool gptq = !strcmp(o->method, "gptq");
    if (gptq) {
        rq_q2_codebook_kind kind = RQ_Q2_INT2;
        if (o->codebook) RQ_TRY(rq_q2_codebook_parse(o->codebook, &kind, err));
        qo.quant.method = kind == RQ_Q2_NF2 ? RQ_QUANT_NF2 : RQ_QUANT_RTN; /* each group's (s, m) as this method */
    } else if (!strcmp(o->method, "fake-quant")) {
        rq_q2_codebook_kind kind = RQ_Q2_INT2;
        if (o->codebook) RQ_TRY(rq_q2_codebook_parse(o->codebook, &kind, err));
        qo.fake_quant = true;
        qo.quant.method = kind == RQ_Q2_NF2 ? RQ_QUANT_NF2 : RQ_QUANT_RTN; /* the method whose codebook it is */
        if (qo.quant.clip_search) return RQ_FAIL(err, RQ_ERR_ARG, "--clip-search does not apply to fake-quant import");
    } else {
        rq_status s = rq_quant_method_parse(o->method, &qo.quant.method, err);
        if (s != RQ_OK) return s;
        if (o->codebook && *o->codebook)
            return RQ_FAIL(err, RQ_ERR_ARG, "--codebook applies to --method gptq and fake-quant only");
    }
    qo.quant.n_threads = (int)o->common.threads;
    rq_artifact_opts ao = {.compress = o->compress};
    rq_model *m = NULL;
    const bool layerwise = gptq || (o->refine && strcmp(o->refine, "none") != 0);
    if (layerwise && qo.fake_quant) return RQ_FAIL(err, RQ_ERR_ARG, "--refine does not apply to fake-quant import");
    /* GPTQ / block-wise read the checkpoint a layer at a time (a q2 artifact is loaded whole: it is refused
       as already 2-bit) */
    rq_checkpoint ck;
    memset(&ck, 0, sizeof ck);
    bool streamed = false;
    if (layerwise) {
        rq_err e2 = {0};
        rq_status cs = rq_model_open_checkpoint(o->model, o->common.tokenizer, &ck, &e2);
        if (cs != RQ_OK && cs != RQ_ERR_UNSUPPORTED) {
            *err = e2;
            return cs;
        }
        streamed = cs == RQ_OK;
    }
    if (!streamed) RQ_TRY(rq_model_load(o->model, o->common.tokenizer, &m, err));
    rep->fp32_bytes = streamed ? (size_t)rq_config_n_params(&ck.cfg) * sizeof(float) : rq_model_weight_bytes(m);
    rq_status s = layerwise ? run_layerwise(&m, streamed ? &ck : NULL, o, &qo, &rep->quant, err)
                            : rq_model_quantize(m, &qo, &rep->quant, err);
    rq_checkpoint_close(&ck);
    if (s == RQ_OK) s = rq_artifact_write(m, o->out, &ao, err);
    if (s == RQ_OK) {
        const rq_model_quant_report *q = &rep->quant;
        /* memory once reloaded: the fp32 allocation minus the quantized weights, plus their q2 bytes */
        rep->loaded_bytes = rep->fp32_bytes - (size_t)q->weights * sizeof(float) + q->q2_bytes;
        rep->disk_bytes = rq_artifact_disk_bytes(o->out);
        rep->method = o->method;
        rep->group_size = o->group_size;
        rep->clip_search = o->clip_search;
        rep->seconds = rq_now_seconds() - t0;
        rq_info("quantized %d tensors (%.3f M weights) with %s%s, group size %d: %.4f bits per weight", q->tensors,
                q->weights / 1e6, m->quant.method, qo.quant.clip_search ? " + clip search" : "", qo.quant.group_size,
                q->weights ? 8.0 * (double)q->q2_bytes / (double)q->weights : 0.0);
        rq_info("relative weight error ||W - Q(W)||/||W||: mean %.4f, max %.4f (%s)", q->mean_rel_err, q->max_rel_err,
                q->worst);
        rq_info("weights in memory: %.2f MiB fp32 -> %.2f MiB (q2 %.2f MiB + fp32 rest)", rep->fp32_bytes / 1048576.0,
                rep->loaded_bytes / 1048576.0, q->q2_bytes / 1048576.0);
        rq_info("wrote %s: %.2f MiB on disk%s, %.1fs (quantization %.1fs)", o->out, (double)rep->disk_bytes / 1048576.0,
                ao.compress ? " (zstd)" : "", rep->seconds, q->seconds);
    }
    rq_model_free(m);
    return s;
}

cJSON *rq_stage_quantize_report_json(const rq_stage_quantize_report *r) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "method", r->method ? r->method : "");
    cJSON_AddNumberToObject(o, "group_size", (double)r->group_size);
    cJSON_AddBoolToObject(o, "clip_search", r->clip_search);
    cJSON_AddBoolToObject(o, "kept", r->kept);
    if (!r->kept) {
        cJSON_AddNumberToObject(o, "tensors", r->quant.tensors);
        cJSON_AddNumberToObject(o, "weights", (double)r->quant.weights);
        cJSON_AddNumberToObject(o, "q2_bytes", (double)r->quant.q2_bytes);
        cJSON_AddNumberToObject(o, "mean_rel_weight_err", r->quant.mean_rel_err);
        cJSON_AddNumberToObject(o, "max_rel_weight_err", r->quant.max_rel_err);
        cJSON_AddStringToObject(o, "worst_tensor", r->quant.worst);
        cJSON_AddNumberToObject(o, "fp32_bytes", (double)r->fp32_bytes);
        cJSON_AddNumberToObject(o, "loaded_bytes", (double)r->loaded_bytes);
        cJSON_AddNumberToObject(o, "disk_bytes", (double)r->disk_bytes);
        cJSON_AddNumberToObject(o, "quantize_seconds", r->quant.seconds);
    }
    cJSON_AddNumberToObject(o, "seconds", r->seconds);
    return o;
}
