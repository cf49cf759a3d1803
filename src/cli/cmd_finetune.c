/* rilq finetune: stage 2, task fine-tuning (src/pipeline/stage_finetune.c). */
#include "../pipeline/stages.h"
#include "cli.h"

static const char *usage =
    "usage: rilq finetune MODEL --task arc_easy|arc_challenge|piqa|gsm8k --out DIR [options]\n\n"
    "Fine-tune adapters of MODEL (a q2 artifact, or any model rilq loads) on a task's training\n"
    "split. Examples are the evaluation prompt \"Question: ...\\nAnswer:\" followed by \" \" + the\n"
    "gold answer (gsm8k: the full solution with its final \"#### N\"), tokenized as the evaluation\n"
    "tokenizes (context, continuation); the loss counts the answer tokens only.\n"
    "DIR receives adapter/ (PEFT layout, at the end), adapter-epoch-K/ after each epoch,\n"
    "checkpoint.bin (every epoch; --resume continues from it), metrics.jsonl, finetune.json.\n"
    "--type, --rank, --alpha, --group-size and --init shape fresh adapters (no --adapter).\n\n";

int cmd_finetune(int argc, char **argv) {
    rq_stage_finetune_opts o;
    rq_stage_finetune_report rep;
    rq_err err = {0};
    const char *pos[1];
    int n_pos = 0;
    if (rq_stage_finetune_defaults(&o, &err)) return cli_fail("finetune", &err);
    int pr = cli_parse_table("finetune", usage, NULL, rq_stage_finetune_table, &o, argc, argv, pos, 1, &n_pos);
    if (pr) return pr < 0 ? 0 : pr;
    if (!n_pos) return cli_usage_error("finetune", "missing MODEL");
    if (!o.task) return cli_usage_error("finetune", "missing --task arc_easy|arc_challenge|piqa|gsm8k");
    if (!o.out) return cli_usage_error("finetune", "missing --out DIR");
    if (rq_stage_finetune_check(&o, &err)) return cli_usage_error("finetune", "%s", err.msg);
    o.model = pos[0];
    if (rq_stage_finetune(&o, &rep, &err)) return cli_fail("finetune", &err);
    return 0;
}
