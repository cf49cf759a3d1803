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
    "Verification: N sequences of T seeded random tokens run through the artifact with\n"
    "the adapters attached and through the merged model; the largest absolute and\n"
    "relative logit differences are printed (relative: per position, max |diff| over\n"
    "the vocabulary divided by max |logit| of the adapter model). Only the fp16\n"
    "rounding of the new offsets remains after an exact merge: each weight moves by at\n"
    "most u = 2^-11 of its group's largest weight, which moves the logits by about u of\n"
    "their scale. The merge fails (and writes nothing) when the relative difference\n"
    "exceeds the tolerance, default 2e-3 = 4 u: 10x the worst case measured on\n"
    "stories260K and random models (<= 1.9e-4), while a wrong merge of one projection\n"
    "shows 1e-2 and more.\n\n"
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
    "  --tolerance X         bound on the relative logit difference (default 2e-3)\n"
    "  --no-verify           skip the verification\n"
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
            printf("offsets: fp16 rounding <= %.3g of |offset| (bound 2^-11 = %.3g); update size mean %.3g, max %.3g "
                   "quantization steps\n",
                   rep.max_offset_rounding, 0x1p-11, rep.mean_update_steps, rep.max_update_steps);
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
