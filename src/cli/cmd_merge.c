/* rilq merge (and the standalone rilq-merge, tools/merge): fold adapters into a
 * 2-bit artifact. The work is rq_merge_artifact (src/adapter/merge.h); this
 * file parses options and prints the figures. */
#include <stdlib.h>

#include "../adapter/merge.h"
#include "cli.h"

/* %1$s: the program ("rilq merge" or "rilq-merge") */
static const char *merge_help =
    "usage: %s ARTIFACT ADAPTER_DIR --out DIR [options]\n\n"
    "Fold adapters into a 2-bit artifact and write a new artifact without adapters.\n"
    "ARTIFACT is a rilq q2 artifact (rilq quantize); ADAPTER_DIR a PEFT adapter directory\n"
    "(adapter_config.json + adapter_model.safetensors) or a calibrate / finetune run\n"
    "directory holding one in adapter/.\n\n"
    "QA-LoRA adapters fold exactly: the adapter adds s * (B A)[o][g] / len(g) to every\n"
    "weight of group g of row o (s = alpha / r, len(g) the group's real members), which\n"
    "the group's offset absorbs: m' = m + s * (B A)[o][g] / len(g), summed in double and\n"
    "rounded to fp16 once. The adapters' pooling group size must equal the artifact's\n"
    "quantization group size. Plain LoRA adapters cannot fold into per-group offsets\n"
    "and are refused unless --requantize is given.\n\n"
    "Checks. Weights: rows of every folded tensor must equal deq(W) + B A within the\n"
    "fp16 rounding of their offset. Logits: N sequences of T seeded random tokens run\n"
    "through the artifact with the adapters attached and through the merged model; the\n"
    "largest absolute and relative differences are printed (relative: per position,\n"
    "max |diff| over the vocabulary divided by max |logit| of the adapter model), with\n"
    "the adapters' own effect for scale. After an exact merge only the fp16 rounding of\n"
    "the new offsets remains: each offset moves by at most u = 2^-11 of itself, the same\n"
    "for every weight of its group. Its size eps = sqrt(sum over projections of\n"
    "(||E||_F / ||W'||_F)^2), E the weight change it makes, is computed exactly and\n"
    "printed; the logits move by ~ c eps (c: the network's amplification), and a priori\n"
    "eps ~ u sqrt(n) over n projections. The merge fails (and writes nothing) above\n"
    "max(1e-4, min(64 eps, 32 u sqrt(n))): margins >= 4.5x and >= 4x over the worst\n"
    "ratios measured on stories260K, random models and SmolLM2-135M (src/adapter/merge.h);\n"
    "a wrong merge of a single projection shows 35-100x the bound.\n\n"
    "options:\n"
    "  --out DIR             the merged artifact (must not exist or be empty; written atomically)\n"
    "  --requantize          fold LoRA adapters (or QA-LoRA of another group size) by\n"
    "                        dequantizing W, adding B A and quantizing again with the\n"
    "                        artifact's method, codebook and group size; prints the\n"
    "                        weight error this adds. The logit differences are then\n"
    "                        reported, not checked, unless --tolerance is given\n"
    "  --verify-seqs N       sequences for the verification (default 4)\n"
    "  --verify-len T        tokens per sequence (default 64, at most the model's context)\n"
    "  --verify-seed S       seed of the random tokens (default 1234)\n"
    "  --tolerance X         bound on the relative logit difference (default: as above)\n"
    "  --no-verify           skip the logit verification (the weight check always runs)\n"
    "  --compress            store model.safetensors.zst (zstd) instead of model.safetensors\n" CLI_COMMON_HELP;

int cmd_merge(int argc, char **argv) {
    const char *prog = argc > 0 && strcmp(argv[0], "merge") != 0 ? "rilq-merge" : "rilq merge";
    const char *pos[2] = {NULL, NULL}, *out_dir = NULL, *v;
    cli_common common = {0};
    rq_merge_opts o;
    rq_merge_opts_default(&o);
    bool no_verify = false, tol_given = false;
    for (int i = 1; i < argc; i++) {
        long n;
        double x;
        if (cli_is_help(argv[i])) {
            printf(merge_help, prog);
            return 0;
        }
        int r = cli_common_opt("merge", argc, argv, &i, &common);
        if (r < 0) return 2;
        if (r > 0) continue;
        if (cli_opt(argc, argv, &i, "--out", &v)) {
            if (!v) return cli_usage_error("merge", "--out needs a directory");
            out_dir = v;
        } else if (cli_flag(argv, i, "--requantize")) {
            o.requantize = true;
        } else if (cli_flag(argv, i, "--no-verify")) {
            no_verify = true;
        } else if (cli_flag(argv, i, "--compress")) {
            o.compress = true;
        } else if (cli_opt(argc, argv, &i, "--verify-seqs", &v)) {
            if (!cli_parse_int(v, 1, 1 << 16, &n)) return cli_usage_error("merge", "--verify-seqs expects 1..65536");
            o.verify_seqs = (int)n;
        } else if (cli_opt(argc, argv, &i, "--verify-len", &v)) {
            if (!cli_parse_int(v, 1, 1 << 20, &n)) return cli_usage_error("merge", "--verify-len expects an integer >= 1");
            o.verify_len = (int)n;
        } else if (cli_opt(argc, argv, &i, "--verify-seed", &v)) {
            if (!cli_parse_int(v, 0, 0x7fffffffL, &n)) return cli_usage_error("merge", "--verify-seed expects 0..2^31-1");
            o.verify_seed = (uint64_t)n;
        } else if (cli_opt(argc, argv, &i, "--tolerance", &v)) {
            if (!cli_parse_float(v, 1e-12, 1e6, &x)) return cli_usage_error("merge", "--tolerance expects a number > 0");
            o.tolerance = x;
            tol_given = true;
        } else if (argv[i][0] == '-') {
            return cli_usage_error("merge", "unknown option '%s'", argv[i]);
        } else if (!pos[0]) {
            pos[0] = argv[i];
        } else if (!pos[1]) {
            pos[1] = argv[i];
        } else {
            return cli_usage_error("merge", "unexpected argument '%s'", argv[i]);
        }
    }
    if (!pos[0]) return cli_usage_error("merge", "missing ARTIFACT");
    if (!pos[1]) return cli_usage_error("merge", "missing ADAPTER_DIR");
    if (!out_dir) return cli_usage_error("merge", "missing --out DIR");
    if (no_verify) o.verify_seqs = 0;
    o.check_requantized = tol_given;
    o.n_threads = common.threads;

    rq_err err = {0};
    rq_merge_report rep;
    memset(&rep, 0, sizeof rep);
    double t0 = rq_now_seconds();
    rq_status s = rq_merge_artifact(pos[0], pos[1], out_dir, common.device, common.threads, &o, &rep, &err);
    /* the figures are printed whenever they exist, also for a failed verification */
    if (rep.exact + rep.dense + rep.requantized > 0) {
        printf("merged %d projections: %d exact (offsets), %d re-quantized, %d fp32\n",
               rep.exact + rep.dense + rep.requantized, rep.exact, rep.requantized, rep.dense);
        if (rep.exact)
            printf("offsets: fp16 rounding <= %.3g of |offset| (bound 2^-11 = %.3g), eps %.3g; weight check %.2f of its "
                   "bound; update size mean %.3g, max %.3g quantization steps\n",
                   rep.max_offset_rounding, 0x1p-11, rep.rounding_perturbation, rep.max_weight_err_ratio,
                   rep.mean_update_steps, rep.max_update_steps);
        if (rep.requantized)
            printf("re-quantization: relative weight error ||Q(W+dW) - (W+dW)||/||W+dW|| mean %.4f, max %.4f (%s); "
                   "error / ||dW|| up to %.3g\n",
                   rep.requant_mean_rel_err, rep.requant_max_rel_err, rep.requant_worst, rep.requant_max_err_over_update);
    }
    if (rep.verified) {
        printf("verification (%d x %d random tokens): merged vs adapter model: max |diff| %.4g, relative %.4g; "
               "adapters vs base: %.4g, relative %.4g (max |logit| %.4g)\n",
               rep.verify_seqs, rep.verify_len, rep.max_abs_diff, rep.max_rel_diff, rep.adapter_abs_diff,
               rep.adapter_rel_diff, rep.max_abs_logit);
        if (rep.tolerance > 0)
            printf("bound: relative %.3g: %s\n", rep.tolerance, rep.passed ? "passed" : "FAILED");
        else printf("bound: not applied to a re-quantized merge (give --tolerance to apply one)\n");
    }
    if (s != RQ_OK) return cli_fail("merge", &err);
    printf("wrote %s (%.1fs)\n", out_dir, rq_now_seconds() - t0);
    return 0;
}
