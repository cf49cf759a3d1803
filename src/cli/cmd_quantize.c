/* rilq quantize: a model -> the 2-bit artifact directory (src/io/artifact.h). */
#include <stdlib.h>

#include "../io/artifact.h"
#include "../quant/quantize_model.h"
#include "cli.h"

static const char *quantize_help =
    "usage: rilq quantize MODEL --method rtn|nf2|fake-quant --out DIR [options]\n\n"
    "Quantize the linear projections of every layer to 2 bits (groups of input\n"
    "columns, an fp16 scale and offset per group) and write a model directory\n"
    "that every rilq command loads. The embedding, the norms and the head stay\n"
    "in full precision. MODEL is a Hugging Face directory, a GGUF file, a\n"
    "llama2.c .bin or a rilq artifact's source.\n\n"
    "options:\n"
    "  --method M            rtn (asymmetric min/max, codebook {0,1,2,3}), nf2 (absmax,\n"
    "                        NormalFloat-2 levels), or fake-quant (import weights that\n"
    "                        already lie on a 2-bit grid per group; --codebook picks it)\n"
    "  --codebook int2|nf2   fake-quant only: the grid the weights lie on (default int2)\n"
    "  --group-size N        input columns per group (default 64)\n"
    "  --clip-search         per group, search a shrunk range minimizing the weight error\n"
    "  --modules LIST        projections to quantize, a subset of q,k,v,o,gate,up,down\n"
    "                        (default all seven)\n"
    "  --compress            store model.safetensors.zst (zstd) instead of model.safetensors\n"
    "  --out DIR             the artifact directory (must not exist or be empty)\n" CLI_COMMON_HELP;

int cmd_quantize(int argc, char **argv) {
    const char *path = NULL, *out_dir = NULL, *method = NULL, *codebook = NULL, *v;
    cli_common common = {0};
    rq_model_quant_opts o;
    rq_model_quant_opts_default(&o);
    rq_artifact_opts ao = {0};
    rq_err err = {0};
    for (int i = 1; i < argc; i++) {
        long n;
        if (cli_is_help(argv[i])) {
            fputs(quantize_help, stdout);
            return 0;
        }
        int r = cli_common_opt("quantize", argc, argv, &i, &common);
        if (r < 0) return 2;
        if (r > 0) continue;
        if (cli_opt(argc, argv, &i, "--method", &v)) {
            if (!v) return cli_usage_error("quantize", "--method needs rtn, nf2 or fake-quant");
            method = v;
        } else if (cli_opt(argc, argv, &i, "--codebook", &v)) {
            if (!v) return cli_usage_error("quantize", "--codebook needs int2 or nf2");
            codebook = v;
        } else if (cli_opt(argc, argv, &i, "--group-size", &v)) {
            if (!cli_parse_int(v, 1, 1 << 20, &n)) return cli_usage_error("quantize", "--group-size expects an integer >= 1");
            o.quant.group_size = (int)n;
        } else if (cli_flag(argv, i, "--clip-search")) {
            o.quant.clip_search = true;
        } else if (cli_flag(argv, i, "--compress")) {
            ao.compress = true;
        } else if (cli_opt(argc, argv, &i, "--modules", &v)) {
            if (rq_proj_mask_parse(v, &o.proj_mask, &err) != RQ_OK) return cli_usage_error("quantize", "%s", err.msg);
        } else if (cli_opt(argc, argv, &i, "--out", &v)) {
            if (!v) return cli_usage_error("quantize", "--out needs a directory");
            out_dir = v;
        } else if (argv[i][0] == '-') {
            return cli_usage_error("quantize", "unknown option '%s'", argv[i]);
        } else if (!path) {
            path = argv[i];
        } else {
            return cli_usage_error("quantize", "unexpected argument '%s'", argv[i]);
        }
    }
    if (!path) return cli_usage_error("quantize", "missing MODEL");
    if (!out_dir) return cli_usage_error("quantize", "missing --out DIR");
    if (!method) return cli_usage_error("quantize", "missing --method (rtn, nf2 or fake-quant)");
    if (!strcmp(method, "fake-quant")) {
        rq_q2_codebook_kind kind = RQ_Q2_INT2;
        if (codebook && rq_q2_codebook_parse(codebook, &kind, &err) != RQ_OK)
            return cli_usage_error("quantize", "%s", err.msg);
        o.fake_quant = true;
        o.quant.method = kind == RQ_Q2_NF2 ? RQ_QUANT_NF2 : RQ_QUANT_RTN; /* the method whose codebook it is */
        if (o.quant.clip_search) return cli_usage_error("quantize", "--clip-search does not apply to fake-quant import");
    } else {
        if (rq_quant_method_parse(method, &o.quant.method, &err) != RQ_OK)
            return cli_usage_error("quantize", "--method: %s (or fake-quant)", err.msg);
        if (codebook) return cli_usage_error("quantize", "--codebook applies to --method fake-quant only");
    }
    o.quant.n_threads = common.threads;

    double t0 = rq_now_seconds();
    rq_model *m = NULL;
    if (rq_model_load(path, common.tokenizer, &m, &err) != RQ_OK) return cli_fail("quantize", &err);
    size_t fp32_bytes = rq_model_weight_bytes(m);
    rq_model_quant_report rep;
    int rc = 0;
    if (rq_model_quantize(m, &o, &rep, &err) != RQ_OK || rq_artifact_write(m, out_dir, &ao, &err) != RQ_OK) {
        rc = cli_fail("quantize", &err);
    } else {
        /* memory once reloaded: the fp32 allocation minus the quantized weights, plus their q2 bytes */
        size_t loaded = fp32_bytes - (size_t)rep.weights * sizeof(float) + rep.q2_bytes;
        uint64_t disk = rq_artifact_disk_bytes(out_dir);
        printf("quantized %d tensors (%.3f M weights) with %s%s, group size %d: %.4f bits per weight\n", rep.tensors,
               rep.weights / 1e6, m->quant.method, o.quant.clip_search ? " + clip search" : "", o.quant.group_size,
               rep.weights ? 8.0 * (double)rep.q2_bytes / (double)rep.weights : 0.0);
        printf("relative weight error ||W - Q(W)||/||W||: mean %.4f, max %.4f (%s)\n", rep.mean_rel_err, rep.max_rel_err,
               rep.worst);
        printf("weights in memory: %.2f MiB fp32 -> %.2f MiB (q2 %.2f MiB + fp32 rest)\n", fp32_bytes / 1048576.0,
               loaded / 1048576.0, rep.q2_bytes / 1048576.0);
        printf("wrote %s: %.2f MiB on disk%s, %.1fs (quantization %.1fs)\n", out_dir, (double)disk / 1048576.0,
               ao.compress ? " (zstd)" : "", rq_now_seconds() - t0, rep.seconds);
    }
    rq_model_free(m);
    return rc;
}
