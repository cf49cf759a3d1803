/* rilq calibrate: RILQ stage 1 (src/pipeline/stage_calibrate.c). */
#include "../pipeline/stages.h"
#include "cli.h"

static const char *usage =
    "usage: rilq calibrate MODEL_FP (--student ARTIFACT | --quantize rtn|nf2) --out DIR [options]\n\n"
    "RILQ initialization: adapters on all seven projections of the 2-bit student are tuned so\n"
    "that its final hidden states match the full-precision teacher's (Model-Loss) while it\n"
    "predicts the calibration text (GT-Loss). The teacher runs once; its final hidden states\n"
    "(after the final norm) go to a zstd cache that later runs with the same model, data and\n"
    "window settings reuse; the teacher is freed before the student trains and the targets are\n"
    "streamed from the cache one window at a time.\n"
    "DIR receives adapter/ (PEFT layout), metrics.jsonl (train and validation losses),\n"
    "checkpoint.bin and calibrate.json (settings, losses, LM-head relative error before/after).\n"
    "Data and optimization follow algorithms.md 1.4 and 1.7.\n\n";

int cmd_calibrate(int argc, char **argv) {
    rq_stage_calibrate_opts o;
    rq_stage_calibrate_report rep;
    rq_err err = {0};
    const char *pos[1];
    int n_pos = 0;
    if (rq_stage_calibrate_defaults(&o, &err)) return cli_fail("calibrate", &err);
    int pr = cli_parse_table("calibrate", usage, NULL, rq_stage_calibrate_table, &o, argc, argv, pos, 1, &n_pos);
    if (pr) return pr < 0 ? 0 : pr;
    if (!n_pos) return cli_usage_error("calibrate", "missing MODEL_FP (the full-precision teacher)");
    if (!o.out) return cli_usage_error("calibrate", "missing --out DIR");
    if (!o.student == !o.quantize)
        return cli_usage_error("calibrate", "give exactly one of --student ARTIFACT and --quantize rtn|nf2");
    if (rq_stage_calibrate_check(&o, &err)) return cli_usage_error("calibrate", "%s", err.msg);
    o.model = pos[0];
    if (rq_stage_calibrate(&o, &rep, &err)) return cli_fail("calibrate", &err);
    return 0;
}
