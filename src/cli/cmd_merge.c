/* rilq merge (and the standalone rilq-merge, tools/merge): fold adapters into a
 * 2-bit artifact (src/pipeline/stage_merge.c, whose work is rq_merge_artifact). */
#include <stdlib.h>

#include "../pipeline/stages.h"
#include "cli.h"

/* %1$s: the program ("rilq merge" or "rilq-merge") */
static const char *usage_fmt =
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
    "fp16 rounding of their offset. Logits: N sequences of T tokens (text the adapter\n"
    "model samples, seeded; --verify-tokens random: uniform random tokens, which put a\n"
    "strongly quantized model far off its distribution) run through the artifact with\n"
    "the adapters attached and through the merged model; the\n"
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
;

int cmd_merge(int argc, char **argv) {
    const char *prog = argc > 0 && strcmp(argv[0], "merge") != 0 ? "rilq-merge" : "rilq merge";
    char usage[8192];
    snprintf(usage, sizeof usage, usage_fmt, prog);
    rq_stage_merge_opts o;
    rq_stage_merge_report rep;
    rq_err err = {0};
    const char *pos[2];
    int n_pos = 0;
    if (rq_stage_merge_defaults(&o, &err)) return cli_fail("merge", &err);
    int pr = cli_parse_table("merge", usage, NULL, rq_stage_merge_table, &o, argc, argv, pos, 2, &n_pos);
    if (pr) return pr < 0 ? 0 : pr;
    if (n_pos < 1) return cli_usage_error("merge", "missing ARTIFACT");
    if (n_pos < 2) return cli_usage_error("merge", "missing ADAPTER_DIR");
    if (!o.out) return cli_usage_error("merge", "missing --out DIR");
    o.artifact = pos[0];
    o.adapter = pos[1];
    if (rq_stage_merge(&o, &rep, &err)) return cli_fail("merge", &err);
    return 0;
}
