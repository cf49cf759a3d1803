/* rilq eval: lm-eval-compatible multiple-choice accuracy, gsm8k exact match and
 * perplexity, written as an lm-eval-shaped results file plus a table. */
#include <math.h>
#include <stdlib.h>

#include "../adapter/adapter.h"
#include "../eval/gsm8k.h"
#include "../eval/mc.h"
#include "../eval/ppl.h"
#include "../eval/results.h"
#include "../eval/task_data.h"
#include "cli.h"

static const char *eval_help =
    "usage: rilq eval MODEL --tasks a,b,c [options]\n\n"
    "Scores tasks the way lm-evaluation-harness v0.4.x does: multiple choice by the\n"
    "log-likelihood of each choice (acc, acc_norm), gsm8k by greedy generation and\n"
    "exact match (strict-match, flexible-extract). Shared contexts are computed once.\n\n"
    "tasks: piqa, arc_easy, arc_challenge, hellaswag, winogrande, gsm8k\n\n"
    "options:\n"
    "  --tasks LIST          comma-separated task names\n"
    "  --limit N             first N documents of each task (default all)\n"
    "  --bos off|on|default  BOS on every encoding (default off, as lm-eval v0.4.x)\n"
    "  --shots K             gsm8k few-shot examples (default 5)\n"
    "  --gsm8k-format F      fewshot (default), zeroshot, finetuned\n"
    "  --max-gen-tokens N    gsm8k new tokens at most (default 256)\n"
    "  --ppl LIST            also perplexity: wikitext2, c4 (GPTQ-style protocol)\n"
    "  --ppl-windows N       perplexity windows at most (default all)\n"
    "  --batch N             perplexity windows per forward call (default 1)\n"
    "  --out PATH            results JSON (lm-eval shape plus a \"rilq\" settings block)\n"
    "  --log-samples PATH    per-document records as JSON lines\n"
    "  --skip-bad-lines      skip and count malformed JSONL lines (default: stop)\n"
    "  --naive               score every continuation alone (reference path, slow)\n"
    "  --quiet               no progress lines\n"
    "  --adapter DIR         attach LoRA / QA-LoRA adapters (PEFT layout) to the model\n"
    "  --data DIR            data root holding datasets/ (default $RILQ_DATA)\n" CLI_COMMON_HELP;

typedef struct eval_args {
    const char *model, *tasks, *out, *log_samples, *data, *adapter, *ppl;
    long limit, shots, max_gen, ppl_windows, batch;
    rq_bos_mode bos;
    rq_gsm8k_format gsm8k_format;
    bool skip_bad_lines, naive, quiet;
    cli_common common;
} eval_args;

/* Returns 0 to go on, else the exit code (help: -1 means exit 0). */
static int parse_args(int argc, char **argv, eval_args *a) {
    memset(a, 0, sizeof *a);
    a->shots = RQ_GSM8K_DEFAULT_SHOTS;
    a->max_gen = RQ_GSM8K_MAX_GEN_TOKENS;
    a->batch = 1;
    a->bos = RQ_BOS_OFF;
    a->gsm8k_format = RQ_GSM8K_FEWSHOT;
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (cli_is_help(argv[i])) {
            fputs(eval_help, stdout);
            return -1;
        }
        int r = cli_common_opt("eval", argc, argv, &i, &a->common);
        if (r < 0) return 2;
        if (r > 0) continue;
        if (cli_opt(argc, argv, &i, "--tasks", &v)) {
            if (!v || !*v) return cli_usage_error("eval", "--tasks needs a list (%s)", rq_task_known_names());
            a->tasks = v;
        } else if (cli_opt(argc, argv, &i, "--limit", &v)) {
            if (!cli_parse_int(v, 1, 1L << 40, &a->limit)) return cli_usage_error("eval", "--limit expects N >= 1");
        } else if (cli_opt(argc, argv, &i, "--shots", &v)) {
            if (!cli_parse_int(v, 0, 64, &a->shots)) return cli_usage_error("eval", "--shots expects 0..64");
        } else if (cli_opt(argc, argv, &i, "--max-gen-tokens", &v)) {
            if (!cli_parse_int(v, 1, 1 << 20, &a->max_gen))
                return cli_usage_error("eval", "--max-gen-tokens expects N >= 1");
        } else if (cli_opt(argc, argv, &i, "--ppl-windows", &v)) {
            if (!cli_parse_int(v, 1, 1 << 30, &a->ppl_windows))
                return cli_usage_error("eval", "--ppl-windows expects N >= 1");
        } else if (cli_opt(argc, argv, &i, "--batch", &v)) {
            if (!cli_parse_int(v, 1, 4096, &a->batch)) return cli_usage_error("eval", "--batch expects 1..4096");
        } else if (cli_opt(argc, argv, &i, "--bos", &v)) {
            if (v && !strcmp(v, "off")) a->bos = RQ_BOS_OFF;
            else if (v && !strcmp(v, "on")) a->bos = RQ_BOS_ON;
            else if (v && !strcmp(v, "default")) a->bos = RQ_BOS_DEFAULT;
            else return cli_usage_error("eval", "--bos expects off, on or default, got '%s'", v ? v : "");
        } else if (cli_opt(argc, argv, &i, "--gsm8k-format", &v)) {
            if (v && !strcmp(v, "fewshot")) a->gsm8k_format = RQ_GSM8K_FEWSHOT;
            else if (v && !strcmp(v, "zeroshot")) a->gsm8k_format = RQ_GSM8K_ZEROSHOT;
            else if (v && !strcmp(v, "finetuned")) a->gsm8k_format = RQ_GSM8K_FINETUNED;
            else
                return cli_usage_error("eval", "--gsm8k-format expects fewshot, zeroshot or finetuned, got '%s'",
                                       v ? v : "");
        } else if (cli_opt(argc, argv, &i, "--ppl", &v)) {
            if (!v || !*v) return cli_usage_error("eval", "--ppl needs a list (wikitext2, c4)");
            a->ppl = v;
        } else if (cli_opt(argc, argv, &i, "--out", &v)) {
            if (!v || !*v) return cli_usage_error("eval", "--out needs a path");
            a->out = v;
        } else if (cli_opt(argc, argv, &i, "--log-samples", &v)) {
            if (!v || !*v) return cli_usage_error("eval", "--log-samples needs a path");
            a->log_samples = v;
        } else if (cli_opt(argc, argv, &i, "--data", &v)) {
            if (!v || !*v) return cli_usage_error("eval", "--data needs a directory");
            a->data = v;
        } else if (cli_opt(argc, argv, &i, "--adapter", &v)) {
            if (!v || !*v) return cli_usage_error("eval", "--adapter needs a directory");
            a->adapter = v;
        } else if (cli_flag(argv, i, "--skip-bad-lines")) {
            a->skip_bad_lines = true;
        } else if (cli_flag(argv, i, "--naive")) {
            a->naive = true;
        } else if (cli_flag(argv, i, "--quiet")) {
            a->quiet = true;
        } else if (argv[i][0] == '-') {
            return cli_usage_error("eval", "unknown option '%s'", argv[i]);
        } else if (!a->model) {
            a->model = argv[i];
        } else {
            return cli_usage_error("eval", "unexpected argument '%s'", argv[i]);
        }
    }
    if (!a->model) return cli_usage_error("eval", "missing MODEL");
    if (!a->tasks && !a->ppl) return cli_usage_error("eval", "nothing to do: give --tasks (%s) and/or --ppl", rq_task_known_names());
    return 0;
}

/* "a,b,c" -> task ids, in order, duplicates dropped. */
static int parse_tasks(const char *list, rq_task_id *ids, size_t *n) {
    *n = 0;
    const char *p = list;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        char name[64];
        if (len == 0 || len >= sizeof name) return cli_usage_error("eval", "bad task list '%s'", list);
        memcpy(name, p, len);
        name[len] = 0;
        rq_task_id id;
        rq_err err = {0};
        if (rq_task_lookup(name, &id, &err) != RQ_OK) return cli_usage_error("eval", "%s", err.msg);
        bool seen = false;
        for (size_t i = 0; i < *n; i++) seen |= ids[i] == id;
        if (!seen) ids[(*n)++] = id;
        p += len + (comma ? 1 : 0);
    }
    return 0;
}

static int parse_ppl(const char *list, bool *wikitext2, bool *c4) {
    *wikitext2 = *c4 = false;
    const char *p = list;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (len == 9 && !strncmp(p, "wikitext2", 9)) *wikitext2 = true;
        else if (len == 2 && !strncmp(p, "c4", 2)) *c4 = true;
        else return cli_usage_error("eval", "--ppl: unknown dataset '%.*s' (wikitext2, c4)", (int)len, p);
        p += len + (comma ? 1 : 0);
    }
    return 0;
}

/* Per-document records as JSON lines (diffable against lm-eval --log_samples). */
static void log_mc(cJSON *lines, const char *task, const rq_mc_result *r) {
    for (size_t i = 0; r->records && i < r->n_docs; i++) {
        const rq_mc_doc_record *rec = &r->records[i];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "task", task);
        cJSON_AddNumberToObject(o, "doc_id", (double)rec->doc_index);
        cJSON_AddNumberToObject(o, "source_line", (double)rec->source_line);
        cJSON_AddNumberToObject(o, "target", (double)rec->gold);
        cJSON *lls = cJSON_AddArrayToObject(o, "loglikelihoods");
        cJSON *greedy = cJSON_AddArrayToObject(o, "is_greedy");
        for (size_t c = 0; c < rec->n_choices; c++) {
            cJSON_AddItemToArray(lls, cJSON_CreateNumber(rec->ll[c]));
            cJSON_AddItemToArray(greedy, cJSON_CreateBool(rec->is_greedy[c]));
        }
        cJSON_AddNumberToObject(o, "pred", (double)rec->pred);
        cJSON_AddNumberToObject(o, "acc", rec->pred == rec->gold);
        if (rec->pred_norm != SIZE_MAX) cJSON_AddNumberToObject(o, "acc_norm", rec->pred_norm == rec->gold);
        cJSON_AddItemToArray(lines, o);
    }
}

static void log_gsm8k(cJSON *lines, const rq_gsm8k_result *r) {
    for (size_t i = 0; r->records && i < r->n_docs; i++) {
        const rq_gsm8k_record *rec = &r->records[i];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "task", "gsm8k");
        cJSON_AddNumberToObject(o, "doc_id", (double)rec->doc_index);
        cJSON_AddNumberToObject(o, "source_line", (double)rec->source_line);
        cJSON_AddStringToObject(o, "response", rec->response);
        cJSON_AddStringToObject(o, "strict-match", rec->strict);
        cJSON_AddStringToObject(o, "flexible-extract", rec->flexible);
        cJSON_AddNumberToObject(o, "exact_match,strict-match", rec->strict_correct);
        cJSON_AddNumberToObject(o, "exact_match,flexible-extract", rec->flexible_correct);
        cJSON_AddNumberToObject(o, "prompt_tokens", rec->prompt_tokens);
        cJSON_AddNumberToObject(o, "new_tokens", rec->new_tokens);
        cJSON_AddItemToArray(lines, o);
    }
}

static rq_status write_samples(const cJSON *lines, const char *path, rq_err *err) {
    rq_atomic_file af;
    RQ_TRY(rq_atomic_open(&af, path, err));
    const cJSON *line;
    rq_status st = RQ_OK;
    cJSON_ArrayForEach(line, lines) {
        char *text = cJSON_PrintUnformatted(line);
        if (!text) st = RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory writing %s", path);
        if (st == RQ_OK) st = rq_atomic_write(&af, text, strlen(text), err);
        if (st == RQ_OK) st = rq_atomic_write(&af, "\n", 1, err);
        free(text);
        if (st != RQ_OK) break;
    }
    if (st == RQ_OK) return rq_atomic_commit(&af, err);
    rq_atomic_abort(&af);
    return st;
}

static void warn_skipped(const rq_skip_report *s, const char *task) {
    if (s->skipped_lines)
        fprintf(stderr, "rilq eval: warning: %s: skipped %zu malformed line(s); first: %s\n", task, s->skipped_lines,
                s->first);
}

int cmd_eval(int argc, char **argv) {
    eval_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc) return rc < 0 ? 0 : rc;
    rq_err err = {0};
    rq_task_id ids[RQ_TASK_COUNT];
    size_t n_tasks = 0;
    bool want_wikitext2 = false, want_c4 = false;
    if (a.tasks && (rc = parse_tasks(a.tasks, ids, &n_tasks)) != 0) return rc;
    if (a.ppl && (rc = parse_ppl(a.ppl, &want_wikitext2, &want_c4)) != 0) return rc;
    const char *root = cli_data_root(a.data);
    if (!root) return cli_usage_error("eval", "no data: set RILQ_DATA or pass --data DIR (a folder holding datasets/)");
    char datasets[4096];
    if (!rq_path_join(datasets, sizeof datasets, root, "datasets")) return cli_usage_error("eval", "data path too long");

    /* all data first: a missing file or a bad line should not wait for the model to load */
    rq_mc_task mc_tasks[RQ_TASK_COUNT];
    rq_skip_report skips[RQ_TASK_COUNT];
    memset(mc_tasks, 0, sizeof mc_tasks);
    memset(skips, 0, sizeof skips);
    rq_gsm8k_set gsm_test = {0}, gsm_train = {0};
    bool need_train = a.gsm8k_format == RQ_GSM8K_FEWSHOT && a.shots > 0;
    rq_status st = RQ_OK;
    for (size_t t = 0; st == RQ_OK && t < n_tasks; t++) {
        if (ids[t] == RQ_TASK_GSM8K)
            st = rq_eval_load_gsm8k(datasets, a.skip_bad_lines, &gsm_test, need_train ? &gsm_train : NULL, &skips[t],
                                    &err);
        else st = rq_eval_load_mc(rq_task_name(ids[t]), datasets, a.skip_bad_lines, &mc_tasks[t], &skips[t], &err);
        if (st == RQ_OK) warn_skipped(&skips[t], rq_task_name(ids[t]));
    }

    rq_model *m = NULL;
    rq_backend *be = NULL;
    rq_mc_scorer *scorer = NULL;
    rq_eval_report rep = {0};
    cJSON *samples = a.log_samples ? cJSON_CreateArray() : NULL;
    if (st == RQ_OK && a.log_samples && !samples) st = RQ_FAIL(&err, RQ_ERR_NOMEM, "out of memory");
    if (st == RQ_OK) st = rq_model_load(a.model, a.common.tokenizer, &m, &err);
    if (st == RQ_OK && !m->tok && n_tasks > 0)
        st = RQ_FAIL(&err, RQ_ERR_ARG, "%s has no tokenizer; pass --tokenizer PATH", a.model);
    if (st == RQ_OK) st = rq_backend_create(a.common.device, a.common.threads, &be, &err);
    rq_adapter_set *adapters = NULL;
    if (st == RQ_OK && a.adapter) { /* attached to the model: every forward of this run applies them */
        st = rq_adapter_set_open_peft(a.adapter, &m->cfg, be, &adapters, &err);
        if (st == RQ_OK) m->adapters = adapters;
    }
    if (st == RQ_OK) {
        rq_eval_settings s = {.model_path = a.model, .model_format = m->format, .model_dtypes = m->dtypes, .adapter_path = a.adapter,
                              .bos = a.bos, .limit = (size_t)a.limit, .gsm8k_format = a.gsm8k_format,
                              .gsm8k_shots = (size_t)a.shots, .gsm8k_max_gen_tokens = (int)a.max_gen,
                              .data_root = datasets, .backend = be->name, .threads = be->n_threads,
                              .ppl_batch = (int)a.batch, .skip_bad_lines = a.skip_bad_lines};
        st = rq_eval_report_init(&rep, &s, &err);
        if (!a.quiet)
            fprintf(stderr, "eval: %s (%s, %s), bos %s, limit %ld (0: none)\n", a.model, m->format, m->dtypes,
                    rq_bos_mode_name(a.bos), a.limit);
    }
    if (st == RQ_OK && n_tasks > 0) {
        rq_mc_opts mo = {.bos = a.bos, .naive = a.naive};
        st = rq_mc_scorer_create(m, be, &mo, &scorer, &err);
    }
    for (size_t t = 0; st == RQ_OK && t < n_tasks; t++) {
        const char *name = rq_task_name(ids[t]);
        if (ids[t] == RQ_TASK_GSM8K) {
            rq_gsm8k_opts go;
            rq_gsm8k_default_opts(&go);
            go.format = a.gsm8k_format;
            go.num_fewshot = (size_t)a.shots;
            go.max_gen_tokens = (int)a.max_gen;
            go.bos = a.bos;
            go.limit = (size_t)a.limit;
            go.keep_records = samples != NULL;
            go.quiet = a.quiet;
            rq_gsm8k_result gr;
            st = rq_gsm8k_evaluate(m, be, &gsm_test, need_train ? &gsm_train : NULL, &go, &gr, &err);
            if (st == RQ_OK) {
                const char *stops[4];
                size_t n_stops;
                rq_gsm8k_stop_strings(m->tok, stops, &n_stops);
                st = rq_eval_report_add_gsm8k(&rep, &go, &gr, stops, n_stops, skips[t].skipped_lines, &err);
                if (samples) log_gsm8k(samples, &gr);
                if (gr.truncated_prompts)
                    fprintf(stderr, "rilq eval: note: gsm8k: %zu prompt(s) left-truncated to the model context\n",
                            gr.truncated_prompts);
                rq_gsm8k_result_free(&gr);
            }
        } else {
            rq_mc_result mr;
            st = rq_mc_evaluate(scorer, &mc_tasks[t], (size_t)a.limit, samples != NULL, a.quiet, &mr, &err);
            if (st == RQ_OK) {
                st = rq_eval_report_add_mc(&rep, ids[t], &mr, skips[t].skipped_lines, &err);
                if (samples) log_mc(samples, name, &mr);
                rq_mc_result_free(&mr);
            }
        }
    }
    for (int d = 0; st == RQ_OK && d < 2; d++) {
        if (!(d == 0 ? want_wikitext2 : want_c4)) continue;
        rq_ppl_opts po;
        rq_ppl_default_opts(&po);
        po.dataset = d == 0 ? RQ_PPL_WIKITEXT2 : RQ_PPL_C4;
        po.data_root = datasets;
        po.max_windows = (int)a.ppl_windows;
        po.batch = (int)a.batch;
        po.quiet = a.quiet;
        rq_ppl_result pr;
        st = rq_ppl_run(m, be, &po, &pr, &err);
        if (st == RQ_OK) st = rq_eval_report_add_ppl(&rep, po.dataset, &pr, &err);
    }
    if (st == RQ_OK) {
        char *table = NULL;
        st = rq_eval_report_table(&rep, &table, &err);
        if (st == RQ_OK) {
            printf("\nrilq eval: %s | bos %s | limit %ld (0: none)\n%s", a.model, rq_bos_mode_name(a.bos), a.limit,
                   table);
            free(table);
        }
    }
    if (st == RQ_OK && a.out) {
        st = rq_eval_report_write(&rep, a.out, &err);
        if (st == RQ_OK && !a.quiet) fprintf(stderr, "eval: results written to %s\n", a.out);
    }
    if (st == RQ_OK && samples) st = write_samples(samples, a.log_samples, &err);
    rc = st == RQ_OK ? 0 : cli_fail("eval", &err);
    cJSON_Delete(samples);
    rq_eval_report_free(&rep);
    rq_mc_scorer_free(scorer);
    rq_adapter_set_free(adapters);
    rq_backend_destroy(be);
    rq_model_free(m);
    for (size_t t = 0; t < n_tasks; t++) rq_mc_task_free(&mc_tasks[t]);
    rq_gsm8k_set_free(&gsm_test);
    rq_gsm8k_set_free(&gsm_train);
    return rc;
}
