/* rilq eval: lm-eval-compatible accuracy, gsm8k exact match and perplexity
 * (src/pipeline/stage_eval.c). */
#include "../data/tasks.h"
#include "../pipeline/stages.h"
#include "cli.h"

static const char *usage =
    "usage: rilq eval MODEL --tasks a,b,c [options]\n\n"
    "Scores tasks the way lm-evaluation-harness v0.4.x does: multiple choice by the\n"
    "log-likelihood of each choice (acc, acc_norm), gsm8k by greedy generation and\n"
    "exact match (strict-match, flexible-extract). Shared contexts are computed once.\n\n"
    "tasks: piqa, arc_easy, arc_challenge, hellaswag, winogrande, gsm8k\n\n";

int cmd_eval(int argc, char **argv) {
    rq_stage_eval_opts o;
    rq_stage_eval_report rep;
    rq_err err = {0};
    const char *pos[1];
    int n_pos = 0;
    if (rq_stage_eval_defaults(&o, &err)) return cli_fail("eval", &err);
    int pr = cli_parse_table("eval", usage, NULL, rq_stage_eval_table, &o, argc, argv, pos, 1, &n_pos);
    if (pr) return pr < 0 ? 0 : pr;
    if (!n_pos) return cli_usage_error("eval", "missing MODEL");
    if (!o.tasks.n && !o.ppl.n)
        return cli_usage_error("eval", "nothing to do: give --tasks (%s) and/or --ppl", rq_task_known_names());
    o.model = pos[0];
    rq_status st = rq_stage_eval(&o, &rep, &err);
    rq_stage_eval_report_free(&rep);
    return st ? cli_fail("eval", &err) : 0;
}
