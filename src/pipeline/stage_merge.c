/* The merge and export stages. */
#include "../io/artifact.h"
#include "internal.h"

#define O rq_stage_merge_opts
static const rq_opt merge_opts[] = {
    RQ_OPT_B(NULL, "merge.enabled", O, enabled, "true", "fold the QA-LoRA adapters into the artifact (rilq merge)"),
    RQ_OPT_S("--out", NULL, O, out, NULL, NULL, "DIR", "the merged artifact (must not exist or be empty; written atomically)"),
    RQ_OPT_B("--requantize", NULL, O, requantize, "false",
             "fold LoRA adapters (or QA-LoRA of another group size) by dequantizing W,\n"
             "adding B A and quantizing again with the artifact's method, codebook and\n"
             "group size; prints the weight error this adds. The logit differences are\n"
             "then reported, not checked, unless --tolerance is given"),
    RQ_OPT_I("--verify-seqs", NULL, O, verify_seqs, "4", 1, 65536, "N", "sequences for the verification"),
    RQ_OPT_I("--verify-len", NULL, O, verify_len, "64", 1, 1 << 20, "T", "tokens per sequence (at most the model's context)"),
    RQ_OPT_S("--verify-tokens", NULL, O, verify_tokens, "sampled", "sampled|random", NULL,
             "the verification's input: text the adapter model samples (temperature 1,\n"
             "from BOS), or uniform random tokens"),
    RQ_OPT_I("--verify-seed", NULL, O, verify_seed, "1234", 0, 0x7fffffff, "S", "seed of the verification tokens"),
    RQ_OPT_N("--tolerance", NULL, O, tolerance, "0", 0, 1e6, "X",
             "bound on the relative logit difference (0: the default bound above)"),
    RQ_OPT_B("--no-verify", NULL, O, no_verify, "false", "skip the logit verification (the weight check always runs)"),
    RQ_OPT_B("--compress", NULL, O, compress, "false", "store model.safetensors.zst (zstd) instead of model.safetensors"),
    RQ_COMMON_OPT_LINES(O),
};
const rq_opt_table rq_stage_merge_table = RQ_OPT_TABLE(merge_opts, O);
#undef O

rq_status rq_stage_merge_defaults(rq_stage_merge_opts *o, rq_err *err) {
    memset(o, 0, sizeof *o);
    return rq_opts_defaults(rq_stage_merge_table, o, err);
}

rq_status rq_stage_merge(const rq_stage_merge_opts *o, rq_stage_merge_report *rep, rq_err *err) {
    memset(rep, 0, sizeof *rep);
    if (!o->artifact) return RQ_FAIL(err, RQ_ERR_ARG, "merge: missing ARTIFACT");
    if (!o->adapter) return RQ_FAIL(err, RQ_ERR_ARG, "merge: missing ADAPTER_DIR");
    if (!o->out) return RQ_FAIL(err, RQ_ERR_ARG, "merge: missing --out DIR");
    RQ_TRY(rq_check_output(o->out, RQ_OUT_DIR_NEW, err));
    rq_merge_opts mo;
    rq_merge_opts_default(&mo);
    mo.requantize = o->requantize;
    mo.compress = o->compress;
    mo.verify_seqs = o->no_verify ? 0 : (int)o->verify_seqs;
    mo.verify_len = (int)o->verify_len;
    mo.verify_seed = (uint64_t)o->verify_seed;
    mo.verify_random = !strcmp(o->verify_tokens, "random");
    if (o->tolerance > 0) mo.tolerance = o->tolerance;
    mo.check_requantized = o->tolerance > 0;
    mo.n_threads = (int)o->common.threads;
    double t0 = rq_now_seconds();
    const rq_merge_report *r = &rep->merge;
    rq_status s = rq_merge_artifact(o->artifact, o->adapter, o->out, o->common.device, (int)o->common.threads, &mo,
                                    &rep->merge, err);
    /* the figures are reported whenever they exist, also for a failed verification */
    if (r->exact + r->dense + r->requantized > 0) {
        rq_info("merged %d projections: %d exact (offsets), %d re-quantized, %d fp32", r->exact + r->dense + r->requantized,
                r->exact, r->requantized, r->dense);
        if (r->exact)
            rq_info("offsets: fp16 rounding <= %.3g of |offset| (bound 2^-11 = %.3g), eps %.3g; weight check %.2f of its "
                    "bound; update size mean %.3g, max %.3g quantization steps",
                    r->max_offset_rounding, 0x1p-11, r->rounding_perturbation, r->max_weight_err_ratio,
                    r->mean_update_steps, r->max_update_steps);
        if (r->requantized)
            rq_info("re-quantization: relative weight error ||Q(W+dW) - (W+dW)||/||W+dW|| mean %.4f, max %.4f (%s); "
                    "error / ||dW|| up to %.3g",
                    r->requant_mean_rel_err, r->requant_max_rel_err, r->requant_worst, r->requant_max_err_over_update);
    }
    if (r->verified) {
        rq_info("verification (%d x %d %s tokens): merged vs adapter model: max |diff| %.4g, relative %.4g; "
                "adapters vs base: %.4g, relative %.4g (max |logit| %.4g)",
                r->verify_seqs, r->verify_len, mo.verify_random ? "random" : "sampled", r->max_abs_diff, r->max_rel_diff, r->adapter_abs_diff, r->adapter_rel_diff,
                r->max_abs_logit);
        if (r->tolerance > 0) rq_info("bound: relative %.3g: %s", r->tolerance, r->passed ? "passed" : "FAILED");
        else rq_info("bound: not applied to a re-quantized merge (give --tolerance to apply one)");
    }
    rep->seconds = rq_now_seconds() - t0;
    if (s == RQ_OK) rq_info("wrote %s (%.1fs)", o->out, rep->seconds);
    return s;
}

cJSON *rq_stage_merge_report_json(const rq_stage_merge_report *rep) {
    const rq_merge_report *r = &rep->merge;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "exact", r->exact);
    cJSON_AddNumberToObject(o, "dense", r->dense);
    cJSON_AddNumberToObject(o, "requantized", r->requantized);
    if (r->exact) {
        cJSON_AddNumberToObject(o, "max_offset_rounding", r->max_offset_rounding);
        cJSON_AddNumberToObject(o, "rounding_perturbation", r->rounding_perturbation);
        cJSON_AddNumberToObject(o, "max_weight_err_ratio", r->max_weight_err_ratio);
        cJSON_AddNumberToObject(o, "mean_update_steps", r->mean_update_steps);
        cJSON_AddNumberToObject(o, "max_update_steps", r->max_update_steps);
    }
    if (r->requantized) {
        cJSON_AddNumberToObject(o, "requant_mean_rel_err", r->requant_mean_rel_err);
        cJSON_AddNumberToObject(o, "requant_max_rel_err", r->requant_max_rel_err);
        cJSON_AddNumberToObject(o, "requant_max_err_over_update", r->requant_max_err_over_update);
    }
    cJSON_AddBoolToObject(o, "verified", r->verified);
    if (r->verified) {
        cJSON_AddNumberToObject(o, "verify_seqs", r->verify_seqs);
        cJSON_AddNumberToObject(o, "verify_len", r->verify_len);
        cJSON_AddNumberToObject(o, "max_abs_logit_diff", r->max_abs_diff);
        cJSON_AddNumberToObject(o, "max_rel_logit_diff", r->max_rel_diff);
        cJSON_AddNumberToObject(o, "adapter_abs_logit_diff", r->adapter_abs_diff);
        cJSON_AddNumberToObject(o, "adapter_rel_logit_diff", r->adapter_rel_diff);
        cJSON_AddNumberToObject(o, "max_abs_logit", r->max_abs_logit);
        if (r->tolerance > 0) cJSON_AddNumberToObject(o, "rel_bound", r->tolerance);
        cJSON_AddBoolToObject(o, "passed", r->passed);
    }
    cJSON_AddNumberToObject(o, "seconds", rep->seconds);
    return o;
}

/* ---- export ----------------------------------------------------------------------------------- */

#define O rq_stage_export_opts
static const rq_opt export_opts[] = {
    RQ_OPT_L(NULL, "export.formats", O, formats, "", "gguf|hqq|hf", NULL, "formats to write (empty: none)"),
    RQ_OPT_S("--format", NULL, O, format, NULL, "gguf|hqq|hf", NULL, "output format (above)"),
    RQ_OPT_S("--out", NULL, O, out, NULL, NULL, "PATH",
             "the .gguf file, or the directory for hqq and hf (must not exist or be empty);\n"
             "written atomically"),
    RQ_OPT_S("--dtype", "export.dtype", O, dtype, "f16", "f16|bf16|f32", NULL,
             "hf: the weights' dtype (f32 holds the 2-bit model exactly; f16/bf16 round\n"
             "each weight once)"),
    RQ_OPT_S("--name", NULL, O, name, NULL, NULL, "NAME", "GGUF general.name (default: the artifact directory's name)"),
    RQ_OPT_I("--threads", NULL, O, common.threads, NULL, 1, 4096, "N", "accepted for symmetry with other commands (unused)"),
};
const rq_opt_table rq_stage_export_table = RQ_OPT_TABLE(export_opts, O);
#undef O

rq_status rq_stage_export_defaults(rq_stage_export_opts *o, rq_err *err) {
    memset(o, 0, sizeof *o);
    return rq_opts_defaults(rq_stage_export_table, o, err);
}

rq_status rq_stage_export(const rq_stage_export_opts *o, rq_stage_export_report *rep, rq_err *err) {
    memset(rep, 0, sizeof *rep);
    if (!o->artifact) return RQ_FAIL(err, RQ_ERR_ARG, "export: missing ARTIFACT");
    if (!o->format) return RQ_FAIL(err, RQ_ERR_ARG, "export: missing --format (gguf, hqq or hf)");
    if (!o->out) return RQ_FAIL(err, RQ_ERR_ARG, "export: missing --out PATH");
    RQ_TRY(rq_check_output(o->out, strcmp(o->format, "gguf") ? RQ_OUT_DIR_NEW : RQ_OUT_FILE_NEW, err));
    if (!rq_artifact_is_q2(o->artifact))
        return RQ_FAIL(err, RQ_ERR_ARG, "%s: not a rilq 2-bit artifact (a directory whose config.json has quant_method "
                       "\"%s\"; make one with 'rilq quantize')", o->artifact, RQ_ARTIFACT_QUANT_METHOD);
    double t0 = rq_now_seconds();
    rq_model *m = NULL;
    RQ_TRY(rq_artifact_load(o->artifact, &m, err));
    char base[256];
    const char *name = o->name;
    if (!name) { /* the artifact directory's name */
        size_t n = strlen(o->artifact);
        while (n > 1 && o->artifact[n - 1] == '/') n--;
        size_t b = n;
        while (b > 0 && o->artifact[b - 1] != '/') b--;
        snprintf(base, sizeof base, "%.*s", (int)(n - b), o->artifact + b);
        name = base;
    }
    rq_export_opts eo = {.name = name, .dtype = o->dtype};
    const rq_export_report *r = &rep->exp;
    const bool gguf = !strcmp(o->format, "gguf"), hf = !strcmp(o->format, "hf");
    rq_status s = gguf ? rq_export_gguf(m, o->out, &eo, &rep->exp, err)
                  : hf ? rq_export_hf(m, o->out, &eo, &rep->exp, err)
                       : rq_export_hqq(m, o->out, &eo, &rep->exp, err);
    rq_model_free(m);
    if (s != RQ_OK) return s;
    rep->seconds = rq_now_seconds() - t0;
    if (hf) {
        rq_info("wrote %s (Hugging Face LlamaForCausalLM, %s): %.2f MiB, %d projections dequantized from 2 bits "
                "(%.3f M weights), %.3f M parameters in all, %.1fs",
                o->out, o->dtype ? o->dtype : "f16", r->file_bytes / 1048576.0, r->q_tensors, r->q_weights / 1e6,
                r->total_weights / 1e6, rep->seconds);
        if (r->tokenizer[0]) rq_info("tokenizer: %s", r->tokenizer);
        else rq_warn("warning: the model has no tokenizer; transformers will need one");
        return RQ_OK;
    }
    rq_info("wrote %s (%s): %.2f MiB, %d %s tensors (%.3f M weights) at %.3f bits per weight%s, %.3f M "
            "parameters in all, %.1fs",
            o->out, gguf ? "GGUF, Q4_1 + F32" : "HQQ 2-bit safetensors", r->file_bytes / 1048576.0, r->q_tensors,
            gguf ? "Q4_1" : "quantized", r->q_weights / 1e6,
            r->q_weights ? 8.0 * (double)r->q_bytes / (double)r->q_weights : 0.0, gguf ? " (exact)" : "",
            r->total_weights / 1e6, rep->seconds);
    if (r->f32_fallback)
        rq_info("%d quantized projection%s written as F32 (%.3f M weights, %.2f MiB; first %s, in_features %d): "
                "in_features not a multiple of 32, and Q4_1 rows are whole blocks of 32; the F32 values are the "
                "dequantized 2-bit weights bit for bit, so the file is still exact",
                r->f32_fallback, r->f32_fallback == 1 ? "" : "s", r->f32_fallback_weights / 1e6,
                r->f32_fallback_bytes / 1048576.0, r->f32_fallback_first, r->f32_fallback_in);
    if (r->tokenizer[0]) rq_info("tokenizer: %s", r->tokenizer);
    else rq_warn("warning: the model has no tokenizer; %s will need one", gguf ? "llama.cpp" : "transformers");
    return RQ_OK;
}

cJSON *rq_stage_export_report_json(const rq_stage_export_report *rep) {
    const rq_export_report *r = &rep->exp;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "file_bytes", (double)r->file_bytes);
    cJSON_AddNumberToObject(o, "q_tensors", r->q_tensors);
    cJSON_AddNumberToObject(o, "q_weights", (double)r->q_weights);
    cJSON_AddNumberToObject(o, "q_bytes", (double)r->q_bytes);
    cJSON_AddNumberToObject(o, "f32_fallback", r->f32_fallback);
    cJSON_AddNumberToObject(o, "total_weights", (double)r->total_weights);
    cJSON_AddStringToObject(o, "tokenizer", r->tokenizer);
    cJSON_AddNumberToObject(o, "seconds", rep->seconds);
    return o;
}
