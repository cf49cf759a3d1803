/* The quantize stage: a model -> the 2-bit artifact directory (src/io/artifact.h). */
#include <sys/stat.h>

#include "../io/artifact.h"
#include "stages.h"

#define O rq_stage_quantize_opts
static const rq_opt opts[] = {
    RQ_OPT_S("--out", NULL, O, out, NULL, NULL, "DIR", "the artifact directory (must not exist or be empty)"),
    {"--method", "quantize.method", RQ_OPT_STR, offsetof(O, method), NULL, "rtn|nf2|fake-quant", 0, 0, "M",
     "rtn (asymmetric min/max, codebook {0,1,2,3}), nf2 (absmax, NormalFloat-2\n"
     "levels), or fake-quant (import weights that already lie on a 2-bit grid\n"
     "per group; --codebook picks it). Required on the command line", "rtn"},
    RQ_OPT_S("--codebook", NULL, O, codebook, NULL, "int2|nf2", NULL, "fake-quant only: the grid the weights lie on (default int2)"),
    RQ_OPT_I("--group-size", "quantize.group_size", O, group_size, "64", 1, 1 << 20, "N", "input columns per group"),
    RQ_OPT_B("--clip-search", "quantize.clip_search", O, clip_search, "false",
             "per group, search a shrunk range minimizing the weight error"),
    RQ_OPT_L("--modules", "quantize.modules", O, modules, "q,k,v,o,gate,up,down", "q|k|v|o|gate|up|down", NULL,
             "projections to quantize (the rest stay in full precision)"),
    RQ_OPT_B("--compress", NULL, O, compress, "false", "store model.safetensors.zst (zstd) instead of model.safetensors"),
    RQ_COMMON_OPT_LINES(O),
};
const rq_opt_table rq_stage_quantize_table = RQ_OPT_TABLE(opts, O);
#undef O

rq_status rq_stage_quantize_defaults(rq_stage_quantize_opts *o, rq_err *err) {
    memset(o, 0, sizeof *o);
    return rq_opts_defaults(rq_stage_quantize_table, o, err);
}

rq_status rq_stage_quantize(const rq_stage_quantize_opts *o, bool keep_existing, rq_stage_quantize_report *rep,
                            rq_err *err) {
    memset(rep, 0, sizeof *rep);
    if (!o->model) return RQ_FAIL(err, RQ_ERR_ARG, "quantize: missing the model");
    if (!o->out) return RQ_FAIL(err, RQ_ERR_ARG, "quantize: missing the output directory (--out DIR)");
    if (!o->method) return RQ_FAIL(err, RQ_ERR_ARG, "quantize: missing --method (rtn, nf2 or fake-quant)");
    double t0 = rq_now_seconds();
    struct stat st;
    if (keep_existing && stat(o->out, &st) == 0) {
        /* artifacts appear by an atomic rename: one that exists is complete */
        rq_info("%s is complete (written before an interruption); kept", o->out);
        rep->kept = true;
        rep->method = o->method;
        rep->group_size = o->group_size;
        rep->clip_search = o->clip_search;
        return RQ_OK;
    }
    rq_model_quant_opts qo;
    rq_model_quant_opts_default(&qo);
    qo.quant.group_size = (int)o->group_size;
    qo.quant.clip_search = o->clip_search;
    char list[RQ_LIST_MAX * RQ_LIST_ITEM];
    rq_list_join(&o->modules, list, sizeof list);
    RQ_TRY(rq_proj_mask_parse(list, &qo.proj_mask, err));
    if (!strcmp(o->method, "fake-quant")) {
        rq_q2_codebook_kind kind = RQ_Q2_INT2;
        if (o->codebook) RQ_TRY(rq_q2_codebook_parse(o->codebook, &kind, err));
        qo.fake_quant = true;
        qo.quant.method = kind == RQ_Q2_NF2 ? RQ_QUANT_NF2 : RQ_QUANT_RTN; /* the method whose codebook it is */
        if (qo.quant.clip_search) return RQ_FAIL(err, RQ_ERR_ARG, "--clip-search does not apply to fake-quant import");
    } else {
        rq_status s = rq_quant_method_parse(o->method, &qo.quant.method, err);
        if (s != RQ_OK) return s;
        if (o->codebook) return RQ_FAIL(err, RQ_ERR_ARG, "--codebook applies to --method fake-quant only");
    }
    qo.quant.n_threads = (int)o->common.threads;
    rq_artifact_opts ao = {.compress = o->compress};
    rq_model *m = NULL;
    RQ_TRY(rq_model_load(o->model, o->common.tokenizer, &m, err));
    rep->fp32_bytes = rq_model_weight_bytes(m);
    rq_status s = rq_model_quantize(m, &qo, &rep->quant, err);
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
