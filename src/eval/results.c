/* Results files in lm-eval's shape and the readable table (see results.h). */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "results.h"

/* What lm-eval's task configs say about each task (v0.4.x task YAMLs). */
typedef struct task_info {
    const char *dataset_path, *dataset_name, *split_key, *split, *doc_to_text, *doc_to_choice;
    double version;
} task_info;

static const task_info task_infos[RQ_TASK_COUNT] = {
    [RQ_TASK_PIQA] = {"baber/piqa", NULL, "validation_split", "validation", "Question: {{goal}}\nAnswer:",
                      "{{[sol1, sol2]}}", 1.0},
    [RQ_TASK_ARC_EASY] = {"allenai/ai2_arc", "ARC-Easy", "test_split", "test", "Question: {{question}}\nAnswer:",
                          "{{choices.text}}", 1.0},
    [RQ_TASK_ARC_CHALLENGE] = {"allenai/ai2_arc", "ARC-Challenge", "test_split", "test",
                               "Question: {{question}}\nAnswer:", "{{choices.text}}", 1.0},
    [RQ_TASK_HELLASWAG] = {"Rowan/hellaswag", NULL, "validation_split", "validation", "{{query}}", "choices", 1.0},
    [RQ_TASK_WINOGRANDE] = {"allenai/winogrande", "winogrande_xl", "validation_split", "validation",
                            "partial context: sentence[:idx] + option", "partial target: sentence[idx+1:]", 1.0},
    [RQ_TASK_GSM8K] = {"openai/gsm8k", "main", "test_split", "test", "Question: {{question}}\nAnswer:", NULL, 3.0},
};

const char *rq_bos_mode_name(rq_bos_mode bos) {
    switch (bos) {
    case RQ_BOS_OFF: return "off";
    case RQ_BOS_ON: return "on";
    case RQ_BOS_DEFAULT: return "default";
    }
    return "?";
}

const char *rq_gsm8k_format_name(rq_gsm8k_format f) {
    switch (f) {
    case RQ_GSM8K_FEWSHOT: return "fewshot";
    case RQ_GSM8K_ZEROSHOT: return "zeroshot";
    case RQ_GSM8K_FINETUNED: return "finetuned";
    }
    return "?";
}

size_t rq_eval_task_files(rq_task_id id, const char *files[2]) {
    files[0] = files[1] = NULL;
    if (!rq_task_files(id, RQ_SPLIT_EVAL, &files[0], &files[1])) return 0;
    if (id == RQ_TASK_GSM8K) rq_task_files(id, RQ_SPLIT_TRAIN, &files[1], NULL); /* the few-shot pool */
    return files[1] ? 2 : 1;
}

/* cJSON reports allocation failure by returning NULL; one check at the end of
 * each builder keeps the code readable: cJSON_Add* on a NULL parent is a no-op. */
static rq_status check_built(const cJSON *item, rq_err *err) {
    return item ? RQ_OK : RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory building the results JSON");
}

/* A stderr value: lm-eval writes "N/A" when it cannot compute one. */
static cJSON *add_value_or_na(cJSON *obj, const char *key, double v) {
    return isfinite(v) ? cJSON_AddNumberToObject(obj, key, v) : cJSON_AddStringToObject(obj, key, "N/A");
}

rq_status rq_eval_report_init(rq_eval_report *rep, const rq_eval_settings *s, rq_err *err) {
    memset(rep, 0, sizeof *rep);
    rep->root = cJSON_CreateObject();
    if (!rep->root) return check_built(NULL, err);
    rep->results = cJSON_AddObjectToObject(rep->root, "results");
    rep->configs = cJSON_AddObjectToObject(rep->root, "configs");
    rep->versions = cJSON_AddObjectToObject(rep->root, "versions");
    rep->n_shot = cJSON_AddObjectToObject(rep->root, "n-shot");
    rep->higher_is_better = cJSON_AddObjectToObject(rep->root, "higher_is_better");
    rep->n_samples = cJSON_AddObjectToObject(rep->root, "n-samples");
    cJSON *config = cJSON_AddObjectToObject(rep->root, "config");
    cJSON_AddStringToObject(config, "model", "rilq");
    cJSON_AddStringToObject(config, "model_args", s->model_path ? s->model_path : "");
    if (s->limit) cJSON_AddNumberToObject(config, "limit", (double)s->limit);
    else cJSON_AddNullToObject(config, "limit");
    cJSON_AddNumberToObject(config, "bootstrap_iters", 0); /* stderrs are mean_stderr, no bootstrap */
    cJSON_AddNumberToObject(config, "random_seed", 0);
    cJSON_AddNumberToObject(config, "fewshot_seed", RQ_GSM8K_DEFAULT_FEWSHOT_SEED);

    rep->rilq = cJSON_AddObjectToObject(rep->root, "rilq");
    cJSON *r = rep->rilq;
    cJSON_AddStringToObject(r, "version", RILQ_VERSION);
    cJSON_AddStringToObject(r, "model", s->model_path ? s->model_path : "");
    cJSON_AddStringToObject(r, "model_format", s->model_format ? s->model_format : "");
    cJSON_AddStringToObject(r, "model_dtypes", s->model_dtypes ? s->model_dtypes : "");
    if (s->adapter_path) cJSON_AddStringToObject(r, "adapter", s->adapter_path);
    else cJSON_AddNullToObject(r, "adapter");
    cJSON_AddStringToObject(r, "bos", rq_bos_mode_name(s->bos));
    if (s->limit) cJSON_AddNumberToObject(r, "limit", (double)s->limit);
    else cJSON_AddNullToObject(r, "limit");
    cJSON_AddNumberToObject(r, "seed", RQ_GSM8K_DEFAULT_FEWSHOT_SEED);
    cJSON_AddStringToObject(r, "loglikelihood", "lm-eval v0.4.x: cont = encode(ctx+cont)[len(encode(ctx)):], "
                                                "fp32 log-softmax, sum in fp64; shared contexts run once");
    cJSON_AddStringToObject(r, "data_root", s->data_root ? s->data_root : "");
    cJSON_AddBoolToObject(r, "skip_bad_lines", s->skip_bad_lines);
    cJSON_AddStringToObject(r, "backend", s->backend ? s->backend : "cpu");
    cJSON_AddNumberToObject(r, "threads", s->threads);
    /* the fp32 summation order of the scores depends on it (and on threads), the decisions do not */
    cJSON_AddNumberToObject(r, "mc_batch_tokens", s->mc_batch_tokens);
    rep->dataset_files = cJSON_AddObjectToObject(r, "dataset_files");
    rep->skipped_lines = cJSON_AddObjectToObject(r, "skipped_lines");
    rep->seconds = cJSON_AddObjectToObject(r, "seconds");
    rq_status st = check_built(rep->seconds, err);
    if (st == RQ_OK) st = check_built(rep->n_samples, err);
    if (st != RQ_OK) rq_eval_report_free(rep);
    return st;
}

void rq_eval_report_free(rq_eval_report *rep) {
    if (!rep) return;
    cJSON_Delete(rep->root);
    memset(rep, 0, sizeof *rep);
}

/* configs[task], versions, n-shot, n-samples, dataset files: what every task adds. */
static cJSON *add_task_common(rq_eval_report *rep, rq_task_id id, const char *output_type, size_t num_fewshot,
                              size_t n_original, size_t n_effective, double seconds, size_t skipped_lines) {
    const char *name = rq_task_name(id);
    const task_info *ti = &task_infos[id];
    cJSON *cfg = cJSON_AddObjectToObject(rep->configs, name);
    cJSON_AddStringToObject(cfg, "task", name);
    cJSON_AddStringToObject(cfg, "dataset_path", ti->dataset_path);
    if (ti->dataset_name) cJSON_AddStringToObject(cfg, "dataset_name", ti->dataset_name);
    cJSON_AddStringToObject(cfg, ti->split_key, ti->split);
    cJSON_AddStringToObject(cfg, "doc_to_text", ti->doc_to_text);
    if (ti->doc_to_choice) cJSON_AddStringToObject(cfg, "doc_to_choice", ti->doc_to_choice);
    cJSON_AddStringToObject(cfg, "description", "");
    cJSON_AddStringToObject(cfg, "target_delimiter", " ");
    cJSON_AddStringToObject(cfg, "fewshot_delimiter", "\n\n");
    cJSON_AddNumberToObject(cfg, "num_fewshot", (double)num_fewshot);
    cJSON_AddStringToObject(cfg, "output_type", output_type);
    cJSON *meta = cJSON_AddObjectToObject(cfg, "metadata");
    cJSON_AddNumberToObject(meta, "version", ti->version);
    cJSON_AddNumberToObject(rep->versions, name, ti->version);
    cJSON_AddNumberToObject(rep->n_shot, name, (double)num_fewshot);
    cJSON *ns = cJSON_AddObjectToObject(rep->n_samples, name);
    cJSON_AddNumberToObject(ns, "original", (double)n_original);
    cJSON_AddNumberToObject(ns, "effective", (double)n_effective);
    cJSON *files = cJSON_AddArrayToObject(rep->dataset_files, name);
    const char *file_names[2];
    size_t n_files = rq_eval_task_files(id, file_names);
    for (size_t i = 0; i < n_files; i++) cJSON_AddItemToArray(files, cJSON_CreateString(file_names[i]));
    cJSON_AddNumberToObject(rep->skipped_lines, name, (double)skipped_lines);
    cJSON_AddNumberToObject(rep->seconds, name, seconds);
    cJSON *res = cJSON_AddObjectToObject(rep->results, name);
    cJSON_AddStringToObject(res, "alias", name);
    return cfg && res ? res : NULL;
}

static void add_metric_list(cJSON *cfg, const char *const *metrics, size_t n, const char *extra_key,
                            bool extra_value) {
    cJSON *list = cJSON_AddArrayToObject(cfg, "metric_list");
    for (size_t i = 0; i < n; i++) {
        cJSON *m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "metric", metrics[i]);
        cJSON_AddStringToObject(m, "aggregation", "mean");
        cJSON_AddBoolToObject(m, "higher_is_better", true);
        if (extra_key) cJSON_AddBoolToObject(m, extra_key, extra_value);
        cJSON_AddItemToArray(list, m);
    }
}

rq_status rq_eval_report_add_mc(rq_eval_report *rep, rq_task_id id, const rq_mc_result *r, size_t skipped_lines,
                                rq_err *err) {
    if ((int)id < 0 || id >= RQ_TASK_COUNT || rq_task_kind_of(id) != RQ_TASK_MULTIPLE_CHOICE)
        return RQ_FAIL(err, RQ_ERR_ARG, "results: task %d is not a multiple-choice task", (int)id);
    const char *name = rq_task_name(id);
    cJSON *res = add_task_common(rep, id, "multiple_choice", 0, r->n_docs_total, r->n_docs, r->seconds,
                                 skipped_lines);
    if (!res) return check_built(NULL, err);
    cJSON_AddNumberToObject(res, "acc,none", r->acc);
    add_value_or_na(res, "acc_stderr,none", r->acc_stderr);
    if (r->has_acc_norm) {
        cJSON_AddNumberToObject(res, "acc_norm,none", r->acc_norm);
        add_value_or_na(res, "acc_norm_stderr,none", r->acc_norm_stderr);
    }
    static const char *const metrics[2] = {"acc", "acc_norm"};
    size_t n_metrics = r->has_acc_norm ? 2 : 1;
    add_metric_list(cJSON_GetObjectItemCaseSensitive(rep->configs, name), metrics, n_metrics, NULL, false);
    cJSON *hib = cJSON_AddObjectToObject(rep->higher_is_better, name);
    for (size_t i = 0; i < n_metrics; i++) cJSON_AddBoolToObject(hib, metrics[i], true);
    return check_built(hib, err);
}

rq_status rq_eval_report_add_gsm8k(rq_eval_report *rep, const rq_gsm8k_opts *o, const rq_gsm8k_result *r,
                                   const char *const *stops, size_t n_stops, size_t skipped_lines, rq_err *err) {
    size_t shots = o->format == RQ_GSM8K_FEWSHOT ? o->num_fewshot : 0;
    cJSON *res = add_task_common(rep, RQ_TASK_GSM8K, "generate_until", shots, r->n_docs_total, r->n_docs,
                                 r->seconds, skipped_lines);
    if (!res) return check_built(NULL, err);
    cJSON_AddNumberToObject(res, "exact_match,strict-match", r->strict);
    add_value_or_na(res, "exact_match_stderr,strict-match", r->strict_stderr);
    cJSON_AddNumberToObject(res, "exact_match,flexible-extract", r->flexible);
    add_value_or_na(res, "exact_match_stderr,flexible-extract", r->flexible_stderr);
    cJSON *cfg = cJSON_GetObjectItemCaseSensitive(rep->configs, "gsm8k");
    cJSON_AddStringToObject(cfg, "doc_to_target", "{{answer}}");
    cJSON_AddStringToObject(cfg, "fewshot_split", "train");
    static const char *const metrics[1] = {"exact_match"};
    add_metric_list(cfg, metrics, 1, "ignore_case", true);
    cJSON *gen = cJSON_AddObjectToObject(cfg, "generation_kwargs");
    cJSON *until = cJSON_AddArrayToObject(gen, "until");
    for (size_t i = 0; i < n_stops; i++) cJSON_AddItemToArray(until, cJSON_CreateString(stops[i]));
    cJSON_AddBoolToObject(gen, "do_sample", false);
    cJSON_AddNumberToObject(gen, "temperature", 0.0);
    cJSON_AddNumberToObject(gen, "max_gen_toks", o->max_gen_tokens > 0 ? o->max_gen_tokens : RQ_GSM8K_MAX_GEN_TOKENS);
    cJSON *filters = cJSON_AddArrayToObject(cfg, "filter_list");
    cJSON *strict = cJSON_CreateObject(), *flexible = cJSON_CreateObject();
    cJSON_AddStringToObject(strict, "name", "strict-match");
    cJSON_AddStringToObject(strict, "regex_pattern", "#### (\\-?[0-9\\.\\,]+)");
    cJSON_AddStringToObject(flexible, "name", "flexible-extract");
    cJSON_AddStringToObject(flexible, "regex_pattern", "(-?[$0-9.,]{2,})|(-?[0-9]+)");
    cJSON_AddNumberToObject(flexible, "group_select", -1);
    cJSON_AddItemToArray(filters, strict);
    cJSON_AddItemToArray(filters, flexible);
    cJSON *hib = cJSON_AddObjectToObject(rep->higher_is_better, "gsm8k");
    cJSON_AddBoolToObject(hib, "exact_match", true);
    cJSON *g = cJSON_AddObjectToObject(rep->rilq, "gsm8k");
    cJSON_AddStringToObject(g, "format", rq_gsm8k_format_name(o->format));
    cJSON_AddNumberToObject(g, "num_fewshot", (double)shots);
    cJSON_AddNumberToObject(g, "fewshot_seed", (double)o->fewshot_seed);
    cJSON_AddNumberToObject(g, "max_gen_tokens", o->max_gen_tokens > 0 ? o->max_gen_tokens : RQ_GSM8K_MAX_GEN_TOKENS);
    cJSON_AddNumberToObject(g, "prompt_tokens", (double)r->prompt_tokens);
    cJSON_AddNumberToObject(g, "generated_tokens", (double)r->new_tokens);
    cJSON_AddNumberToObject(g, "truncated_prompts", (double)r->truncated_prompts);
    return check_built(g, err);
}

rq_status rq_eval_report_add_ppl(rq_eval_report *rep, rq_ppl_dataset dataset, const rq_ppl_result *r, rq_err *err) {
    const char *name = dataset == RQ_PPL_C4 ? "c4" : "wikitext2";
    cJSON *res = cJSON_AddObjectToObject(rep->results, name);
    cJSON_AddStringToObject(res, "alias", name);
    cJSON_AddNumberToObject(res, "ppl,none", r->ppl);
    cJSON_AddStringToObject(res, "ppl_stderr,none", "N/A");
    cJSON *cfg = cJSON_AddObjectToObject(rep->configs, name);
    cJSON_AddStringToObject(cfg, "task", name);
    cJSON_AddStringToObject(cfg, "output_type", "perplexity");
    cJSON_AddStringToObject(cfg, "protocol",
                            dataset == RQ_PPL_C4 ? "GPTQ-style: random windows drawn with Python random.seed(0)"
                                                 : "GPTQ-style: test rows joined with \"\\n\\n\", tokenized once, "
                                                   "non-overlapping windows from scratch");
    cJSON_AddNumberToObject(cfg, "window", r->ctx);
    cJSON_AddNumberToObject(cfg, "windows", r->windows);
    cJSON_AddNumberToObject(cfg, "tokens_scored", (double)r->tokens_scored);
    cJSON_AddNumberToObject(cfg, "mean_nll", r->mean_nll);
    cJSON *hib = cJSON_AddObjectToObject(rep->higher_is_better, name);
    cJSON_AddBoolToObject(hib, "ppl", false);
    cJSON_AddNumberToObject(rep->seconds, name, r->seconds);
    cJSON *files = cJSON_AddArrayToObject(rep->dataset_files, name);
    cJSON_AddItemToArray(files,
                         cJSON_CreateString(rq_ppl_dataset_file(dataset == RQ_PPL_C4 ? RQ_PPL_C4 : RQ_PPL_WIKITEXT2)));
    return check_built(files, err);
}

rq_status rq_eval_report_write(const rq_eval_report *rep, const char *path, rq_err *err) {
    char *text = cJSON_Print(rep->root);
    if (!text) return RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory printing the results JSON");
    size_t n = strlen(text);
    text[n] = '\n'; /* the terminator becomes a final newline */
    rq_status st = rq_write_file_atomic(path, text, n + 1, err);
    free(text);
    return st;
}

/* ---- the table ---------------------------------------------------------------- */

static void format_number(char *buf, size_t n, const cJSON *v) {
    if (cJSON_IsNumber(v)) snprintf(buf, n, fabs(v->valuedouble) >= 100.0 ? "%.2f" : "%.4f", v->valuedouble);
    else if (cJSON_IsString(v)) snprintf(buf, n, "%s", v->valuestring);
    else snprintf(buf, n, "-");
}

rq_status rq_eval_report_table(const rq_eval_report *rep, char **out, rq_err *err) {
    *out = NULL;
    rq_buf b = {0};
    rq_buf_appendf(&b, "|    Tasks    |Version|     Filter     |n-shot|  Metric   |   |  Value  |   | Stderr |\n");
    rq_buf_appendf(&b, "|-------------|------:|----------------|-----:|-----------|---|--------:|---|-------:|\n");
    const cJSON *task;
    cJSON_ArrayForEach(task, rep->results) {
        const char *name = task->string;
        const cJSON *version = cJSON_GetObjectItemCaseSensitive(rep->versions, name);
        const cJSON *shots = cJSON_GetObjectItemCaseSensitive(rep->n_shot, name);
        bool first = true;
        const cJSON *metric;
        cJSON_ArrayForEach(metric, task) {
            const char *key = metric->string, *comma = strchr(key, ',');
            if (!comma || strstr(key, "_stderr,")) continue;
            char metric_name[64], stderr_key[160], value[32], stderr_text[32];
            snprintf(metric_name, sizeof metric_name, "%.*s", (int)(comma - key), key);
            snprintf(stderr_key, sizeof stderr_key, "%s_stderr%s", metric_name, comma);
            format_number(value, sizeof value, metric);
            format_number(stderr_text, sizeof stderr_text, cJSON_GetObjectItemCaseSensitive(task, stderr_key));
            const cJSON *hib_task = cJSON_GetObjectItemCaseSensitive(rep->higher_is_better, name);
            const cJSON *hib = cJSON_GetObjectItemCaseSensitive(hib_task, metric_name);
            char version_text[16] = "", shots_text[16] = "";
            if (first && cJSON_IsNumber(version)) snprintf(version_text, sizeof version_text, "%g", version->valuedouble);
            if (first && cJSON_IsNumber(shots)) snprintf(shots_text, sizeof shots_text, "%d", (int)shots->valuedouble);
            rq_buf_appendf(&b, "|%-13s|%7s|%-16s|%6s|%-11s|%-3s|%9s|%-3s|%8s|\n", first ? name : "", version_text,
                      comma + 1, shots_text, metric_name, cJSON_IsTrue(hib) ? "^" : cJSON_IsFalse(hib) ? "v" : "",
                      value, "+-", stderr_text);
            first = false;
        }
    }
    return rq_buf_finish(&b, out, NULL, "the results table", err);
}
