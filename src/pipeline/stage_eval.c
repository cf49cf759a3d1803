/* The eval stage: lm-eval-compatible multiple-choice accuracy, gsm8k exact match
 * and perplexity, written as an lm-eval-shaped results file plus a table. */
#include <math.h>
#include <stdlib.h>

#include "../adapter/adapter.h"
#include "../eval/gsm8k.h"
#include "../eval/mc.h"
#include "../eval/ppl.h"
#include "../eval/results.h"
#include "../eval/task_data.h"
#include "internal.h"

#define O rq_stage_eval_opts
static const rq_opt opts[] = {
    RQ_OPT_L(NULL, "eval.models", O, models, "fp,q2,rilq,finetuned,merged", "fp|q2|rilq|finetuned|merged", NULL,
             "rows of the table (those whose stage is disabled are left out)"),
    RQ_OPT_L("--tasks", "eval.tasks", O, tasks, "", "piqa|arc_easy|arc_challenge|hellaswag|winogrande|gsm8k", NULL,
             "accuracy tasks, comma-separated"),
    RQ_OPT_I("--limit", "eval.limit", O, limit, "0", 0, 1099511627776.0, "N", "first N documents of each task (0: all)"),
    RQ_OPT_S("--bos", NULL, O, bos, "off", "off|on|default", NULL, "BOS on every encoding (off, as lm-eval v0.4.x)"),
    RQ_OPT_I("--shots", "eval.shots", O, shots, "5", 0, 64, "K", "gsm8k few-shot examples"),
    RQ_OPT_S("--gsm8k-format", "eval.gsm8k_format", O, gsm8k_format, "fewshot", "fewshot|zeroshot|finetuned", NULL,
             "gsm8k prompt"),
    RQ_OPT_I("--max-gen-tokens", "eval.max_gen_tokens", O, max_gen_tokens, "256", 1, 1 << 20, "N",
             "gsm8k new tokens at most"),
    RQ_OPT_L("--ppl", "eval.ppl", O, ppl, "", "wikitext2|c4", NULL, "also perplexity (GPTQ-style protocol)"),
    RQ_OPT_I("--ppl-windows", "eval.ppl_windows", O, ppl_windows, "0", 0, 1 << 30, "N", "perplexity windows at most (0: all)"),
    RQ_OPT_I("--batch", NULL, O, batch, "1", 1, 4096, "N", "perplexity windows per forward call"),
    RQ_OPT_I("--mc-batch-tokens", "eval.mc_batch_tokens", O, mc_batch_tokens, "1024", 0, 1 << 20, "N",
             "multiple choice: token positions per forward, documents packed into each (0: one document at a time)"),
    RQ_OPT_S("--out", NULL, O, out, NULL, NULL, "PATH", "results JSON (lm-eval shape plus a \"rilq\" settings block)"),
    RQ_OPT_S("--log-samples", NULL, O, log_samples, NULL, NULL, "PATH", "per-document records as JSON lines"),
    RQ_OPT_B("--skip-bad-lines", NULL, O, skip_bad_lines, "false", "skip and count malformed JSONL lines (default: stop)"),
    RQ_OPT_B("--naive", NULL, O, naive, "false", "score every continuation alone (reference path, slow)"),
    RQ_OPT_B("--quiet", NULL, O, quiet, "false", "no progress lines"),
    RQ_OPT_S("--adapter", NULL, O, adapter, NULL, NULL, "DIR", "attach LoRA / QA-LoRA adapters (PEFT layout) to the model"),
    RQ_OPT_S("--data", NULL, O, data_root, NULL, NULL, "DIR", "data root holding datasets/ (default $RILQ_DATA)"),
    RQ_COMMON_OPT_LINES(O),
};
const rq_opt_table rq_stage_eval_table = RQ_OPT_TABLE(opts, O);
#undef O

rq_status rq_stage_eval_defaults(rq_stage_eval_opts *o, rq_err *err) {
    memset(o, 0, sizeof *o);
    return rq_opts_defaults(rq_stage_eval_table, o, err);
}

rq_status rq_stage_eval_check(const rq_stage_eval_opts *o, rq_err *err) {
    (void)o, (void)err;
    return RQ_OK;
}

void rq_stage_eval_report_free(rq_stage_eval_report *r) {
    free(r->table);
    r->table = NULL;
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
        rq_warn("warning: %s: skipped %zu malformed line(s); first: %s", task, s->skipped_lines,
                s->first);
}

rq_status rq_stage_eval(const rq_stage_eval_opts *a, rq_stage_eval_report *out_rep, rq_err *err) {
    memset(out_rep, 0, sizeof *out_rep);
    if (!a->model) return RQ_FAIL(err, RQ_ERR_ARG, "eval: missing MODEL");
    if (a->out) RQ_TRY(rq_check_output(a->out, RQ_OUT_FILE_REPLACE, err));
    if (!a->tasks.n && !a->ppl.n)
        return RQ_FAIL(err, RQ_ERR_ARG, "eval: nothing to do: give --tasks (%s) and/or --ppl", rq_task_known_names());
    double t0 = rq_now_seconds();
    rq_task_id ids[RQ_TASK_COUNT];
    size_t n_tasks = 0;
    for (int i = 0; i < a->tasks.n; i++) {
        rq_task_id id;
        RQ_TRY(rq_task_lookup(a->tasks.item[i], &id, err));
        bool seen = false;
        for (size_t k = 0; k < n_tasks; k++) seen |= ids[k] == id;
        if (!seen) ids[n_tasks++] = id;
    }
    const bool want_wikitext2 = rq_list_has(&a->ppl, "wikitext2"), want_c4 = rq_list_has(&a->ppl, "c4");
    rq_bos_mode bos = !strcmp(a->bos, "on") ? RQ_BOS_ON : !strcmp(a->bos, "default") ? RQ_BOS_DEFAULT : RQ_BOS_OFF;
    rq_gsm8k_format gformat = !strcmp(a->gsm8k_format, "zeroshot")    ? RQ_GSM8K_ZEROSHOT
                              : !strcmp(a->gsm8k_format, "finetuned") ? RQ_GSM8K_FINETUNED
                                                                      : RQ_GSM8K_FEWSHOT;
    const char *root = a->data_root && *a->data_root ? a->data_root : getenv("RILQ_DATA");
    if (!root || !*root) return RQ_FAIL(err, RQ_ERR_ARG, "no data: set RILQ_DATA or pass --data DIR (a folder holding datasets/)");
    char *datasets = rq_path_join_alloc(root, "datasets", err);
    if (!datasets) return RQ_ERR_NOMEM;

    /* all data first: a missing file or a bad line should not wait for the model to load */
    rq_mc_task mc_tasks[RQ_TASK_COUNT];
    rq_skip_report skips[RQ_TASK_COUNT];
    memset(mc_tasks, 0, sizeof mc_tasks);
    memset(skips, 0, sizeof skips);
    rq_gsm8k_set gsm_test = {0}, gsm_train = {0};
    bool need_train = gformat == RQ_GSM8K_FEWSHOT && a->shots > 0;
    rq_status st = RQ_OK;
    for (size_t t = 0; st == RQ_OK && t < n_tasks; t++) {
        if (ids[t] == RQ_TASK_GSM8K)
            st = rq_eval_load_gsm8k(datasets, a->skip_bad_lines, &gsm_test, need_train ? &gsm_train : NULL, &skips[t],
                                    err);
        else st = rq_eval_load_mc(rq_task_name(ids[t]), datasets, a->skip_bad_lines, &mc_tasks[t], &skips[t], err);
        if (st == RQ_OK) warn_skipped(&skips[t], rq_task_name(ids[t]));
    }

    rq_model *m = NULL;
    rq_backend *be = NULL;
    rq_mc_scorer *scorer = NULL;
    rq_eval_report rep = {0};
    cJSON *samples = a->log_samples ? cJSON_CreateArray() : NULL;
    if (st == RQ_OK && a->log_samples && !samples) st = RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory");
    if (st == RQ_OK) st = rq_model_load(a->model, a->common.tokenizer, &m, err);
    if (st == RQ_OK && !m->tok && n_tasks > 0)
        st = RQ_FAIL(err, RQ_ERR_ARG, "%s has no tokenizer; pass --tokenizer PATH", a->model);
    if (st == RQ_OK) st = rq_backend_create(a->common.device, (int)a->common.threads, &be, err);
    rq_adapter_set *adapters = NULL;
    if (st == RQ_OK && a->adapter) { /* attached to the model: every forward of this run applies them */
        st = rq_adapter_set_open_for(a->adapter, m, be, &adapters, err);
        if (st == RQ_OK) m->adapters = adapters;
    }
    if (st == RQ_OK) {
        rq_eval_settings s = {.model_path = a->model, .model_format = m->format, .model_dtypes = m->dtypes,
                              .adapter_path = a->adapter, .bos = bos, .limit = (size_t)a->limit,
                              .gsm8k_format = gformat, .gsm8k_shots = (size_t)a->shots,
                              .gsm8k_max_gen_tokens = (int)a->max_gen_tokens, .data_root = datasets,
                              .backend = be->name, .threads = be->n_threads, .ppl_batch = (int)a->batch,
                              .mc_batch_tokens = a->naive ? 0 : (int)a->mc_batch_tokens,
                              .skip_bad_lines = a->skip_bad_lines};
        st = rq_eval_report_init(&rep, &s, err);
        if (!a->quiet)
            rq_warn("eval: %s (%s, %s), bos %s, limit %lld (0: none)", a->model, m->format, m->dtypes,
                    rq_bos_mode_name(bos), (long long)a->limit);
    }
    if (st == RQ_OK && n_tasks > 0) {
        rq_mc_opts mo = {.bos = bos, .naive = a->naive, .batch_tokens = (int)a->mc_batch_tokens};
        st = rq_mc_scorer_create(m, be, &mo, &scorer, err);
    }
    for (size_t t = 0; st == RQ_OK && t < n_tasks; t++) {
        const char *name = rq_task_name(ids[t]);
        if (ids[t] == RQ_TASK_GSM8K) {
            rq_gsm8k_opts go;
            rq_gsm8k_default_opts(&go);
            go.format = gformat;
            go.num_fewshot = (size_t)a->shots;
            go.max_gen_tokens = (int)a->max_gen_tokens;
            go.bos = bos;
            go.limit = (size_t)a->limit;
            go.keep_records = samples != NULL;
            go.quiet = a->quiet;
            rq_gsm8k_result gr;
            st = rq_gsm8k_evaluate(m, be, &gsm_test, need_train ? &gsm_train : NULL, &go, &gr, err);
            if (st == RQ_OK) {
                const char *stops[4];
                size_t n_stops;
                rq_gsm8k_stop_strings(m->tok, stops, &n_stops);
                st = rq_eval_report_add_gsm8k(&rep, &go, &gr, stops, n_stops, skips[t].skipped_lines, err);
                if (samples) log_gsm8k(samples, &gr);
                if (gr.truncated_prompts)
                    rq_warn("note: gsm8k: %zu prompt(s) left-truncated to the model context", gr.truncated_prompts);
                rq_gsm8k_result_free(&gr);
            }
        } else {
            rq_mc_result mr;
            st = rq_mc_evaluate(scorer, &mc_tasks[t], (size_t)a->limit, samples != NULL, a->quiet, &mr, err);
            if (st == RQ_OK) {
                st = rq_eval_report_add_mc(&rep, ids[t], &mr, skips[t].skipped_lines, err);
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
        po.max_windows = (int)a->ppl_windows;
        po.batch = (int)a->batch;
        po.quiet = a->quiet;
        rq_ppl_result pr;
        st = rq_ppl_run(m, be, &po, &pr, err);
        if (st == RQ_OK) st = rq_eval_report_add_ppl(&rep, po.dataset, &pr, err);
    }
    if (st == RQ_OK) {
        char *table = NULL;
        st = rq_eval_report_table(&rep, &table, err);
        if (st == RQ_OK) {
            /* one line of the log per table line */
            rq_info("%s", "");
            rq_info("rilq eval: %s | bos %s | limit %lld (0: none)", a->model, rq_bos_mode_name(bos), (long long)a->limit);
            for (char *line = table, *nl; line && *line; line = nl ? nl + 1 : NULL) {
                nl = strchr(line, '\n');
                rq_info("%.*s", nl ? (int)(nl - line) : (int)strlen(line), line);
            }
            out_rep->table = table;
        }
    }
    if (st == RQ_OK && a->out) {
        st = rq_eval_report_write(&rep, a->out, err);
        if (st == RQ_OK && !a->quiet) rq_warn("eval: results written to %s", a->out);
    }
    if (st == RQ_OK && samples) st = write_samples(samples, a->log_samples, err);
    out_rep->seconds = rq_now_seconds() - t0;
    cJSON_Delete(samples);
    rq_eval_report_free(&rep);
    rq_mc_scorer_free(scorer);
    rq_adapter_set_free(adapters);
    rq_backend_destroy(be);
    rq_model_free(m);
    for (size_t t = 0; t < n_tasks; t++) rq_mc_task_free(&mc_tasks[t]);
    rq_gsm8k_set_free(&gsm_test);
    rq_gsm8k_set_free(&gsm_train);
    free(datasets);
    return st;
}
