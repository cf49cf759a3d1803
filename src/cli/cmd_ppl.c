/* rilq ppl: perplexity on WikiText-2 or C4 with the quantization papers' protocol. */
#include <stdlib.h>

#include "../adapter/adapter.h"
#include "../eval/ppl.h"
#include "cli.h"

static const char *ppl_help =
    "usage: rilq ppl MODEL [options]\n\n"
    "Perplexity with the GPTQ-style protocol: the text tokenized once, non-overlapping\n"
    "windows evaluated from scratch, PPL = exp(mean window NLL).\n\n"
    "options:\n"
    "  --dataset wikitext2|c4  (default wikitext2: the test split, rows joined with \"\\n\\n\")\n"
    "  --ctx N               window length (default min(model context, 2048))\n"
    "  --max-windows N       evaluate at most N windows (default all)\n"
    "  --batch N             windows per forward call (default 1)\n"
    "  --c4-windows N        C4 windows to draw (default 256)\n"
    "  --c4-docs A:B         draw C4 windows only from documents A..B-1 of the local sample\n"
    "  --data DIR            data root holding datasets/ (default $RILQ_DATA)\n"
    "  --adapter DIR         attach LoRA / QA-LoRA adapters (PEFT layout) to the model\n" CLI_COMMON_HELP;

int cmd_ppl(int argc, char **argv) {
    const char *path = NULL, *data = NULL, *adapter = NULL, *v;
    cli_common common = {0};
    rq_ppl_opts o;
    rq_ppl_default_opts(&o);
    for (int i = 1; i < argc; i++) {
        long n;
        if (cli_is_help(argv[i])) {
            fputs(ppl_help, stdout);
            return 0;
        }
        int r = cli_common_opt("ppl", argc, argv, &i, &common);
        if (r < 0) return 2;
        if (r > 0) continue;
        if (cli_opt(argc, argv, &i, "--dataset", &v)) {
            if (v && !strcmp(v, "wikitext2")) o.dataset = RQ_PPL_WIKITEXT2;
            else if (v && !strcmp(v, "c4")) o.dataset = RQ_PPL_C4;
            else return cli_usage_error("ppl", "--dataset expects wikitext2 or c4, got '%s'", v ? v : "");
        } else if (cli_opt(argc, argv, &i, "--ctx", &v)) {
            if (!cli_parse_int(v, 2, 1 << 20, &n)) return cli_usage_error("ppl", "--ctx expects an integer >= 2");
            o.ctx = (int)n;
        } else if (cli_opt(argc, argv, &i, "--max-windows", &v)) {
            if (!cli_parse_int(v, 1, 1 << 30, &n)) return cli_usage_error("ppl", "--max-windows expects a positive integer");
            o.max_windows = (int)n;
        } else if (cli_opt(argc, argv, &i, "--batch", &v)) {
            if (!cli_parse_int(v, 1, 4096, &n)) return cli_usage_error("ppl", "--batch expects 1..4096");
            o.batch = (int)n;
        } else if (cli_opt(argc, argv, &i, "--c4-windows", &v)) {
            if (!cli_parse_int(v, 1, 1 << 20, &n)) return cli_usage_error("ppl", "--c4-windows expects a positive integer");
            o.c4_windows = (int)n;
        } else if (cli_opt(argc, argv, &i, "--c4-docs", &v)) {
            long a, b;
            const char *colon = v ? strchr(v, ':') : NULL;
            char left[32];
            if (!colon || (size_t)(colon - v) >= sizeof left) return cli_usage_error("ppl", "--c4-docs expects A:B");
            memcpy(left, v, (size_t)(colon - v));
            left[colon - v] = 0;
            if (!cli_parse_int(left, 0, 1 << 30, &a) || !cli_parse_int(colon + 1, 1, 1 << 30, &b) || b <= a)
                return cli_usage_error("ppl", "--c4-docs expects A:B with 0 <= A < B");
            o.c4_doc_begin = (int)a;
            o.c4_doc_end = (int)b;
        } else if (cli_opt(argc, argv, &i, "--adapter", &v)) {
            if (!v) return cli_usage_error("ppl", "--adapter needs a directory");
            adapter = v;
        } else if (cli_opt(argc, argv, &i, "--data", &v)) {
            if (!v) return cli_usage_error("ppl", "--data needs a directory");
            data = v;
        } else if (argv[i][0] == '-') {
            return cli_usage_error("ppl", "unknown option '%s'", argv[i]);
        } else if (!path) {
            path = argv[i];
        } else {
            return cli_usage_error("ppl", "unexpected argument '%s'", argv[i]);
        }
    }
    if (!path) return cli_usage_error("ppl", "missing MODEL");
    const char *root = cli_data_root(data);
    if (!root) return cli_usage_error("ppl", "no data: set RILQ_DATA or pass --data DIR (a folder holding datasets/)");
    char datasets[4096];
    if (!rq_path_join(datasets, sizeof datasets, root, "datasets")) return cli_usage_error("ppl", "data path too long");
    o.data_root = datasets;
    rq_err err = {0};
    rq_model *m = NULL;
    rq_backend *be = NULL;
    int rc = 0;
    rq_ppl_result r;
    rq_adapter_set *ad = NULL;
    if (rq_model_load(path, common.tokenizer, &m, &err) != RQ_OK) return cli_fail("ppl", &err);
    if (rq_backend_create(common.device, common.threads, &be, &err) != RQ_OK ||
        (adapter && rq_adapter_set_open_peft(adapter, &m->cfg, be, &ad, &err) != RQ_OK) ||
        (m->adapters = ad, rq_ppl_run(m, be, &o, &r, &err)) != RQ_OK) {
        rc = cli_fail("ppl", &err);
    } else {
        printf("%s perplexity: %.4f  (%d windows x %d tokens, %lld predictions, mean NLL %.5f)\n",
               o.dataset == RQ_PPL_C4 ? "c4" : "wikitext2", r.ppl, r.windows, r.ctx, (long long)r.tokens_scored,
               r.mean_nll);
        printf("speed: %.1f tokens/s forward (%.1fs)\n", r.tokens_per_s, r.seconds);
    }
    rq_adapter_set_free(ad);
    rq_backend_destroy(be);
    rq_model_free(m);
    return rc;
}
