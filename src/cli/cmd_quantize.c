/* rilq quantize: a model -> the 2-bit artifact directory (src/pipeline/stage_quantize.c). */
#include "../pipeline/stages.h"
#include "cli.h"

static const char *usage =
    "usage: rilq quantize MODEL --method rtn|nf2|fake-quant --out DIR [options]\n\n"
    "Quantize the linear projections of every layer to 2 bits (groups of input\n"
    "columns, an fp16 scale and offset per group) and write a model directory\n"
    "that every rilq command loads. The embedding, the norms and the head stay\n"
    "in full precision. MODEL is a Hugging Face directory, a GGUF file, a\n"
    "llama2.c .bin or a rilq artifact's source.\n\n";

int cmd_quantize(int argc, char **argv) {
    rq_stage_quantize_opts o;
    rq_stage_quantize_report rep;
    rq_err err = {0};
    const char *pos[1];
    int n_pos = 0;
    if (rq_stage_quantize_defaults(&o, &err)) return cli_fail("quantize", &err);
    int pr = cli_parse_table("quantize", usage, NULL, rq_stage_quantize_table, &o, argc, argv, pos, 1, &n_pos);
    if (pr) return pr < 0 ? 0 : pr;
    if (!n_pos) return cli_usage_error("quantize", "missing MODEL");
    if (!o.out) return cli_usage_error("quantize", "missing --out DIR");
    if (!o.method) return cli_usage_error("quantize", "missing --method (rtn, nf2 or fake-quant)");
    o.model = pos[0];
    if (rq_stage_quantize(&o, false, &rep, &err)) return cli_fail("quantize", &err);
    return 0;
}
