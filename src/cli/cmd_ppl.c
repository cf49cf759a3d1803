/* rilq ppl: perplexity on WikiText-2 or C4 with the quantization papers' protocol. */
#include <errno.h>
#include <stdlib.h>

#include "../adapter/adapter.h"
#include "../eval/ppl.h"
#include "../pipeline/stages.h"
#include "cli.h"

static const char *usage =
    "usage: rilq ppl MODEL [options]\n\n"
    "Perplexity with the GPTQ-style protocol: the text tokenized once, non-overlapping\n"
    "windows evaluated from scratch, PPL = exp(mean window NLL).\n\n";

typedef struct ppl_args {
    const char *dataset, *c4_docs, *data, *adapter;
    int64_t ctx, max_windows, batch, c4_windows;
    rq_common_opts common;
} ppl_args;

#define O ppl_args
static const rq_opt opts[] = {
    RQ_OPT_S("--dataset", NULL, O, dataset, "wikitext2", "wikitext2|c4", NULL,
             "the text; wikitext2: its test split, rows joined with \"\\n\\n\""),
    RQ_OPT_I("--ctx", NULL, O, ctx, NULL, 2, 1 << 20, "N", "window length (default min(model context, 2048))"),
    RQ_OPT_I("--max-windows", NULL, O, max_windows, NULL, 1, 1 << 30, "N", "evaluate at most N windows (default all)"),
    RQ_OPT_I("--batch", NULL, O, batch, "1", 1, 4096, "N", "windows per forward call"),
    RQ_OPT_I("--c4-windows", NULL, O, c4_windows, "256", 1, 1 << 20, "N", "C4 windows to draw"),
    RQ_OPT_S("--c4-docs", NULL, O, c4_docs, NULL, NULL, "A:B",
             "draw C4 windows only from documents A..B-1 of the local sample"),
    RQ_OPT_S("--data", NULL, O, data, NULL, NULL, "DIR", "data root holding datasets/ (default $RILQ_DATA)"),
    RQ_OPT_S("--adapter", NULL, O, adapter, NULL, NULL, "DIR", "attach LoRA / QA-LoRA adapters (PEFT layout) to the model"),
    RQ_COMMON_OPT_LINES(O),
};
static const rq_opt_table table = RQ_OPT_TABLE(opts, O);
#undef O

/* "A:B" -> documents [A, B) with 0 <= A < B <= 2^30. */
static bool parse_doc_range(const char *v, int *begin, int *end) {
    const char *colon = strchr(v, ':');
    if (!colon || colon == v || !colon[1]) return false;
    char *stop;
    errno = 0;
    long a = strtol(v, &stop, 10);
    if (errno || stop != colon) return false;
    long b = strtol(colon + 1, &stop, 10);
    if (errno || *stop || a < 0 || a > (1L << 30) || b < 1 || b > (1L << 30) || b <= a) return false;
    *begin = (int)a, *end = (int)b;
    return true;
}

int cmd_ppl(int argc, char **argv) {
    ppl_args args;
    rq_err err = {0};
    const char *pos[1];
    int n_pos = 0;
    memset(&args, 0, sizeof args);
    if (rq_opts_defaults(table, &args, &err)) return cli_fail("ppl", &err);
    int pr = cli_parse_table("ppl", usage, NULL, table, &args, argc, argv, pos, 1, &n_pos);
    if (pr) return pr < 0 ? 0 : pr;
    rq_ppl_opts o;
    rq_ppl_default_opts(&o);
    if (!strcmp(args.dataset, "wikitext2")) o.dataset = RQ_PPL_WIKITEXT2;
    else if (!strcmp(args.dataset, "c4")) o.dataset = RQ_PPL_C4;
    else return cli_usage_error("ppl", "--dataset expects wikitext2 or c4, got '%s'", args.dataset);
    o.ctx = (int)args.ctx, o.max_windows = (int)args.max_windows, o.batch = (int)args.batch, o.c4_windows = (int)args.c4_windows;
    if (args.c4_docs && !parse_doc_range(args.c4_docs, &o.c4_doc_begin, &o.c4_doc_end))
        return cli_usage_error("ppl", "--c4-docs expects A:B with 0 <= A < B");
    if (!n_pos) return cli_usage_error("ppl", "missing MODEL");
    const char *path = pos[0], *adapter = args.adapter;
    const char *root = args.data && *args.data ? args.data : getenv("RILQ_DATA");
    if (!root || !*root) return cli_usage_error("ppl", "no data: set RILQ_DATA or pass --data DIR (a folder holding datasets/)");
    char *datasets = rq_path_join_alloc(root, "datasets", &err);
    if (!datasets) return cli_fail("ppl", &err);
    o.data_root = datasets;
    rq_model *m = NULL;
    rq_backend *be = NULL;
    int rc = 0;
    rq_ppl_result r;
    rq_adapter_set *ad = NULL;
    if (rq_model_load(path, args.common.tokenizer, &m, &err) != RQ_OK) {
        free(datasets);
        return cli_fail("ppl", &err);
    }
    if (rq_backend_create(args.common.device, (int)args.common.threads, &be, &err) != RQ_OK ||
        (adapter && rq_adapter_set_open_for(adapter, m, be, &ad, &err) != RQ_OK) ||
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
    free(datasets);
    return rc;
}
