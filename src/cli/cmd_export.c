/* rilq export: a 2-bit artifact -> GGUF (llama.cpp), HQQ-layout safetensors or a
 * dequantized Hugging Face checkpoint. */
#include "../pipeline/stages.h"
#include "cli.h"

static const char *usage =
    "usage: rilq export ARTIFACT --format gguf|hqq|hf --out PATH [options]\n\n"
    "Write a 2-bit model (a rilq quantize/merge artifact directory) for deployment:\n"
    "  gguf   one .gguf file for llama.cpp: each group of 64 (or any multiple of 32)\n"
    "         becomes Q4_1 blocks of 32 with the group's fp16 scale and offset and\n"
    "         codes 0..3, which is the model exactly (5 bits per quantized weight);\n"
    "         embedding, norms and head in F32; q/k rows in llama.cpp's order;\n"
    "         the tokenizer and llama.* hyperparameters in the metadata; a\n"
    "         projection whose in_features is not a multiple of 32 (a ragged last\n"
    "         group, e.g. stories260K's down_proj: 172 = 64 + 64 + 44) cannot be\n"
    "         whole Q4_1 rows and is written as F32 holding its dequantized 2-bit\n"
    "         weights, bit for bit (still exact, 32 bits per weight there)\n"
    "  hqq    a directory (config.json, model.safetensors, tokenizer) in the layout\n"
    "         of the hqq library (2 bits, axis 1, scale = s, zero = -m/s in fp16)\n"
    "         that transformers + hqq load; 2.5 bits per weight at group size 64\n"
    "  hf     a plain LlamaForCausalLM directory for any Hugging Face tool\n"
    "         (transformers, lm-evaluation-harness, vLLM): model.safetensors with\n"
    "         the 2-bit weights dequantized, in --dtype f16 (default), bf16 or f32\n"
    "         (f32 is exact), config.json, generation_config.json, tokenizer.json +\n"
    "         tokenizer_config.json (copied from an HF source; written from a GGUF\n"
    "         or llama2.c tokenizer, encoding token for token as rilq does)\n"
    "llama.cpp reads the gguf file directly (llama-completion -m model.gguf); its numbers\n"
    "differ slightly from rilq's because it quantizes activations to 8 bits for\n"
    "Q4_1 dot products (README: \"Deploying the merged model\").\n"
    "What a format cannot hold (the nf2 codebook; group sizes that are not a\n"
    "multiple of 32 for gguf; ragged last groups for hqq) is refused with the\n"
    "tensor named.\n\n";

int cmd_export(int argc, char **argv) {
    rq_stage_export_opts o;
    rq_stage_export_report rep;
    rq_err err = {0};
    const char *pos[1];
    int n_pos = 0;
    if (rq_stage_export_defaults(&o, &err)) return cli_fail("export", &err);
    int pr = cli_parse_table("export", usage, NULL, rq_stage_export_table, &o, argc, argv, pos, 1, &n_pos);
    if (pr) return pr < 0 ? 0 : pr;
    if (!n_pos) return cli_usage_error("export", "missing ARTIFACT");
    if (!o.format) return cli_usage_error("export", "missing --format (gguf, hqq or hf)");
    if (!o.out) return cli_usage_error("export", "missing --out PATH");
    o.artifact = pos[0];
    if (rq_stage_export(&o, &rep, &err)) return cli_fail("export", &err);
    return 0;
}
