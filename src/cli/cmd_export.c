/* rilq export: a 2-bit artifact -> GGUF (llama.cpp) or HQQ-layout safetensors. */
#include <stdlib.h>

#include "../io/artifact.h"
#include "../io/export.h"
#include "cli.h"

static const char *export_help =
    "usage: rilq export ARTIFACT --format gguf|hqq --out PATH [options]\n\n"
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
    "What a format cannot hold (the nf2 codebook; group sizes that are not a\n"
    "multiple of 32 for gguf; ragged last groups for hqq) is refused with the\n"
    "tensor named.\n\n"
    "options:\n"
    "  --format gguf|hqq     output format\n"
    "  --out PATH            the .gguf file, or the directory for hqq (must not exist\n"
    "                        or be empty); written atomically\n"
    "  --name NAME           GGUF general.name (default: the artifact directory's name)\n"
    "  --threads N           accepted for symmetry with other commands (unused)\n";

int cmd_export(int argc, char **argv) {
    const char *path = NULL, *out = NULL, *format = NULL, *name = NULL, *v;
    rq_err err = {0};
    for (int i = 1; i < argc; i++) {
        long n;
        if (cli_is_help(argv[i])) {
            fputs(export_help, stdout);
            return 0;
        }
        if (cli_opt(argc, argv, &i, "--format", &v)) {
            if (!v || (strcmp(v, "gguf") && strcmp(v, "hqq"))) return cli_usage_error("export", "--format needs gguf or hqq");
            format = v;
        } else if (cli_opt(argc, argv, &i, "--out", &v)) {
            if (!v) return cli_usage_error("export", "--out needs a path");
            out = v;
        } else if (cli_opt(argc, argv, &i, "--name", &v)) {
            if (!v) return cli_usage_error("export", "--name needs a value");
            name = v;
        } else if (cli_opt(argc, argv, &i, "--threads", &v)) {
            if (!cli_parse_int(v, 1, 4096, &n)) return cli_usage_error("export", "--threads expects an integer >= 1");
        } else if (argv[i][0] == '-') {
            return cli_usage_error("export", "unknown option '%s'", argv[i]);
        } else if (!path) {
            path = argv[i];
        } else {
            return cli_usage_error("export", "unexpected argument '%s'", argv[i]);
        }
    }
    if (!path) return cli_usage_error("export", "missing ARTIFACT");
    if (!format) return cli_usage_error("export", "missing --format (gguf or hqq)");
    if (!out) return cli_usage_error("export", "missing --out PATH");
    if (!rq_artifact_is_q2(path)) {
        RQ_FAIL(&err, RQ_ERR_ARG, "%s: not a rilq 2-bit artifact (a directory whose config.json has quant_method \"%s\"; "
                "make one with 'rilq quantize')", path, RQ_ARTIFACT_QUANT_METHOD);
        return cli_fail("export", &err);
    }
    double t0 = rq_now_seconds();
    rq_model *m = NULL;
    if (rq_artifact_load(path, &m, &err) != RQ_OK) return cli_fail("export", &err);
    char base[256];
    if (!name) { /* the artifact directory's name */
        size_t n = strlen(path);
        while (n > 1 && path[n - 1] == '/') n--;
        size_t b = n;
        while (b > 0 && path[b - 1] != '/') b--;
        snprintf(base, sizeof base, "%.*s", (int)(n - b), path + b);
        name = base;
    }
    rq_export_opts o = {.name = name};
    rq_export_report rep;
    bool gguf = !strcmp(format, "gguf");
    rq_status s = gguf ? rq_export_gguf(m, out, &o, &rep, &err) : rq_export_hqq(m, out, &o, &rep, &err);
    rq_model_free(m);
    if (s != RQ_OK) return cli_fail("export", &err);
    printf("wrote %s (%s): %.2f MiB, %d %s tensors (%.3f M weights) at %.3f bits per weight%s, %.3f M "
           "parameters in all, %.1fs\n",
           out, gguf ? "GGUF, Q4_1 + F32" : "HQQ 2-bit safetensors", rep.file_bytes / 1048576.0, rep.q_tensors,
           gguf ? "Q4_1" : "quantized", rep.q_weights / 1e6, rep.q_weights ? 8.0 * (double)rep.q_bytes / (double)rep.q_weights : 0.0,
           gguf ? " (exact)" : "", rep.total_weights / 1e6, rq_now_seconds() - t0);
    if (rep.f32_fallback)
        printf("%d quantized projection%s written as F32 (%.3f M weights, %.2f MiB; first %s, in_features %d): "
               "in_features not a multiple of 32, and Q4_1 rows are whole blocks of 32; the F32 values are the "
               "dequantized 2-bit weights bit for bit, so the file is still exact\n",
               rep.f32_fallback, rep.f32_fallback == 1 ? "" : "s", rep.f32_fallback_weights / 1e6,
               rep.f32_fallback_bytes / 1048576.0, rep.f32_fallback_first, rep.f32_fallback_in);
    if (rep.tokenizer[0]) printf("tokenizer: %s\n", rep.tokenizer);
    else
        fprintf(stderr, "rilq export: warning: the model has no tokenizer; %s will need one\n",
                gguf ? "llama.cpp" : "transformers");
    return 0;
}
