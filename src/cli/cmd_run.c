/* rilq run: a recipe end to end (quantize -> calibrate -> finetune -> merge ->
 * export -> eval), each stage through the same entry point as its command
 * line, in process, into a run directory that a re-run resumes. */
#define _XOPEN_SOURCE 700
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../pipeline/recipe.h"
#include "../pipeline/report.h"
#include "../pipeline/stages.h"
#include "cli.h"

#ifndef RILQ_GIT_DESCRIBE
#define RILQ_GIT_DESCRIBE ""
#endif

static const char *run_help =
    "usage: rilq run RECIPE [key=value ...] [--out RUNDIR] [options]\n\n"
    "Run a recipe (recipes/*.json) end to end: quantize -> calibrate (stage 1) -> finetune\n"
    "(stage 2) -> merge -> export -> eval of every stage's model, each stage calling the\n"
    "same library call as its own command (rilq quantize, calibrate, ...) with the options\n"
    "the recipe's section gives (rilq run --keys). key=value overrides a\n"
    "recipe key, checked against its type (stage1.lr=3e-4, stage2.epochs=1,\n"
    "eval.tasks=piqa,arc_easy); ${VAR} and ${VAR:-default} in the recipe's strings are\n"
    "environment variables.\n\n"
    "RUNDIR (default runs/NAME) receives recipe.json (resolved: defaults filled, overrides\n"
    "applied), versions.json, one subdirectory per stage (its outputs, command.txt, log.txt,\n"
    "and stage.json once its outputs are complete), metrics.jsonl (every stage's metrics,\n"
    "tagged \"stage\"), results.json and report.html (curves and the table). Running again\n"
    "skips the finished stages and resumes a killed calibrate or finetune from its\n"
    "checkpoint; a RUNDIR holding a different recipe is refused. A failed stage does not\n"
    "stop the stages that do not depend on it; the exit code is then 1. Each stage's\n"
    "stage.json holds its options, its report and an equivalent command line (also in\n"
    "command.txt).\n\n";

#define MAX_STAGES 24

typedef struct stage_rec {
    char name[64];
    const char *status; /* done, skipped, failed, blocked, planned */
    double seconds;
} stage_rec;

typedef struct run_ctx {
    const rq_recipe *r;
    const char *dir;
    rq_common_opts common; /* --device, --threads of the run */
    bool dry_run, verbose;
    stage_rec stages[MAX_STAGES];
    int n_stages, n_failed;
} run_ctx;

static const stage_rec *find_stage(const run_ctx *c, const char *name) {
    for (int i = 0; i < c->n_stages; i++)
        if (!strcmp(c->stages[i].name, name)) return &c->stages[i];
    return NULL;
}

/* A dependency holds when its stage finished, now or before. */
static bool stage_ok(const run_ctx *c, const char *name) {
    const stage_rec *s = find_stage(c, name);
    return s && (!strcmp(s->status, "done") || !strcmp(s->status, "skipped") || !strcmp(s->status, "planned"));
}

/* a/b, malloc'd; NULL only when out of memory. */
static char *join(const char *a, const char *b) { return rq_path_join_alloc(a, b, NULL); }

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}
/* Remove a partial output (a file or a tree) that a killed stage left. */
static void rm_tree(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) return;
    nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static cJSON *read_json(const char *path) {
    char *text = NULL;
    size_t n = 0;
    rq_err err = {0};
    if (rq_file_read_all(path, &text, &n, &err) != RQ_OK) return NULL;
    cJSON *o = cJSON_ParseWithLength(text, n);
    free(text);
    return o;
}

/* dir/name as JSON; NULL when absent, not JSON, or out of memory. */
static cJSON *read_json_in(const char *dir, const char *name) {
    char *path = join(dir, name);
    cJSON *o = path ? read_json(path) : NULL;
    free(path);
    return o;
}

static rq_status write_file_in(const char *dir, const char *name, const void *data, size_t n, rq_err *err) {
    char *path = rq_path_join_alloc(dir, name, err);
    if (!path) return RQ_ERR_NOMEM;
    rq_status st = rq_write_file_atomic(path, data, n, err);
    free(path);
    return st;
}

/* A stage of the run: its options (with the table that describes them), its
 * positional arguments (for the equivalent command line), and the call. */
typedef struct stage_call {
    const char *cmd; /* the command that does the same: "quantize" */
    rq_opt_table table;
    const void *opts;
    const char *pos[2];
    int n_pos;
    rq_status (*run)(const void *opts, cJSON **report, rq_err *err);
} stage_call;

static rq_status call_quantize(const void *o, cJSON **report, rq_err *err) {
    rq_stage_quantize_report r;
    RQ_TRY(rq_stage_quantize(o, true, &r, err)); /* a complete artifact is kept */
    *report = rq_stage_quantize_report_json(&r);
    return RQ_OK;
}
static rq_status call_calibrate(const void *o, cJSON **report, rq_err *err) {
    rq_stage_calibrate_report r;
    RQ_TRY(rq_stage_calibrate(o, &r, err));
    *report = rq_stage_calibrate_report_json(&r);
    return RQ_OK;
}
static rq_status call_finetune(const void *o, cJSON **report, rq_err *err) {
    rq_stage_finetune_report r;
    RQ_TRY(rq_stage_finetune(o, &r, err));
    *report = rq_stage_finetune_report_json(&r);
    return RQ_OK;
}
static rq_status call_merge(const void *o, cJSON **report, rq_err *err) {
    rq_stage_merge_report r;
    RQ_TRY(rq_stage_merge(o, &r, err));
    *report = rq_stage_merge_report_json(&r);
    return RQ_OK;
}
static rq_status call_export(const void *o, cJSON **report, rq_err *err) {
    rq_stage_export_report r;
    RQ_TRY(rq_stage_export(o, &r, err));
    *report = rq_stage_export_report_json(&r);
    return RQ_OK;
}
static rq_status call_eval(const void *o, cJSON **report, rq_err *err) {
    rq_stage_eval_report r;
    rq_status st = rq_stage_eval(o, &r, err);
    if (st == RQ_OK) {
        *report = cJSON_CreateObject();
        cJSON_AddNumberToObject(*report, "seconds", r.seconds);
    }
    rq_stage_eval_report_free(&r);
    return st;
}

/* The run's sink of rq_log: a stage's lines go to its log.txt (and the terminal
 * with --verbose); warnings also to stderr; progress lines to the terminal. */
typedef struct run_log {
    FILE *log;
    bool verbose;
} run_log;

static void run_log_sink(void *user, rq_log_level level, const char *line) {
    run_log *l = user;
    if (level == RQ_LOG_PROGRESS || level == RQ_LOG_DONE) {
        cli_log_sink(NULL, level, line);
        return;
    }
    if (l->log) {
        fprintf(l->log, "%s\n", line);
        fflush(l->log);
    }
    if (level == RQ_LOG_WARN || l->verbose) cli_log_sink(NULL, level, line);
}

typedef void (*prepare_fn)(const run_ctx *c, const char *stage_dir);

/* Run one stage unless its stage.json says it finished. deps: stage names, NULL-terminated. */
static void run_stage(run_ctx *c, const char *name, const char *subdir, const stage_call *call,
                      const char *const *deps, prepare_fn prepare) {
    if (c->n_stages == MAX_STAGES) return;
    stage_rec *rec = &c->stages[c->n_stages++];
    snprintf(rec->name, sizeof rec->name, "%s", name);
    rec->seconds = NAN;
    for (int i = 0; deps && deps[i]; i++) {
        if (!stage_ok(c, deps[i])) {
            rec->status = "blocked";
            printf("%-16s blocked: %s did not finish\n", name, deps[i]);
            c->n_failed++;
            return;
        }
    }
    char *cmdline = rq_opts_command_line(call->cmd, call->table, call->opts, call->pos, call->n_pos);
    char *dir = NULL, *marker = NULL, *path = NULL;
    rq_err err = {0};
    if (c->dry_run) {
        rec->status = "planned";
        printf("%-16s %s\n", name, cmdline ? cmdline : call->cmd);
        goto done;
    }
    dir = rq_path_join_alloc(c->dir, subdir, &err);
    marker = dir ? rq_path_join_alloc(dir, "stage.json", &err) : NULL;
    if (!marker) {
        fprintf(stderr, "rilq run: %s: %s\n", name, err.msg);
        rec->status = "failed";
        c->n_failed++;
        goto done;
    }
    if (rq_file_exists(marker)) {
        cJSON *m = read_json(marker);
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(m, "seconds");
        rec->seconds = cJSON_IsNumber(s) ? s->valuedouble : NAN;
        cJSON_Delete(m);
        rec->status = "skipped";
        printf("%-16s finished earlier (%s), skipped\n", name, marker);
        goto done;
    }
    if (rq_mkdir_p(dir, &err) != RQ_OK) {
        fprintf(stderr, "rilq run: %s: %s\n", name, err.msg);
        rec->status = "failed";
        c->n_failed++;
        goto done;
    }
    if (prepare) prepare(c, dir);
    path = join(dir, "command.txt");
    if (cmdline && path) {
        size_t n = strlen(cmdline);
        cmdline[n] = 0;
        FILE *cf = fopen(path, "w");
        if (cf) {
            fprintf(cf, "%s\n", cmdline);
            fclose(cf);
        }
    }
    free(path);
    printf("%-16s running: %s\n", name, cmdline ? cmdline : call->cmd);
    fflush(stdout);
    path = join(dir, "log.txt");
    run_log rl = {path ? fopen(path, "a") : NULL, c->verbose};
    rq_log_set(run_log_sink, &rl);
    double t0 = rq_now_seconds();
    cJSON *report = NULL;
    rq_status st = call->run(call->opts, &report, &err);
    double secs = rq_now_seconds() - t0;
    if (st != RQ_OK) rq_log(RQ_LOG_INFO, "rilq %s: error: %s", call->cmd, err.msg);
    rq_log_set(cli_log_sink, NULL);
    if (rl.log) fclose(rl.log);
    rec->seconds = secs;
    if (st != RQ_OK) {
        fprintf(stderr, "rilq run: %s: error: %s\n", name, err.msg[0] ? err.msg : rq_status_name(err.code));
        rec->status = "failed";
        c->n_failed++;
        printf("%-16s FAILED after %.1fs; its output: %s\n", name, secs, path ? path : "");
        goto done;
    }
    /* written last: the stage's outputs are complete once this exists */
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "stage", name);
    cJSON_AddNumberToObject(m, "seconds", secs);
    cJSON_AddStringToObject(m, "command", cmdline ? cmdline : call->cmd);
    cJSON_AddItemToObject(m, "options", rq_opts_to_json(call->table, call->opts));
    cJSON_AddItemToObject(m, "report", report ? report : cJSON_CreateObject());
    cJSON_AddNumberToObject(m, "finished_unix", (double)time(NULL));
    if (rq_json_write_file(marker, m, &err) != RQ_OK) {
        fprintf(stderr, "rilq run: %s: %s\n", name, err.msg);
        rec->status = "failed";
        c->n_failed++;
    } else {
        rec->status = "done";
        printf("%-16s done in %.1fs\n", name, secs);
    }
    cJSON_Delete(m);
done:
    free(path);
    free(marker);
    free(dir);
    free(cmdline);
}

/* ---- stages ---------------------------------------------------------------------------------- */

/* Outputs appear by an atomic rename when complete (DIR.tmp-PID.NONCE
 * directories, FILE.tmp.PID.NONCE files before it): what a killed writer left
 * of them is removed, in dir and the directories below it (stage outputs,
 * adapters); names that are not such temporaries are never touched. */
static void remove_partials(const char *dir) {
    rq_remove_stale_temps(dir);
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char *p = join(dir, e->d_name);
        struct stat st;
        if (p && lstat(p, &st) == 0 && S_ISDIR(st.st_mode)) remove_partials(p);
        free(p);
    }
    closedir(d);
}

/* Whether dir may be used as a run directory: absent, empty (but for the
 * lock), or holding a recipe.json (a run's own). A run deletes inside its
 * directory what an interrupted stage left; another directory is never used. */
static bool is_run_dir(const char *dir) {
    char *p = join(dir, "recipe.json");
    const bool has = p && rq_file_exists(p);
    free(p);
    if (has) return true;
    DIR *d = opendir(dir);
    if (!d) return errno == ENOENT;
    struct dirent *e;
    bool empty = true;
    while (empty && (e = readdir(d)) != NULL)
        empty = !strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") || !strcmp(e->d_name, ".lock");
    closedir(d);
    return empty;
}

static void prepare_fresh(const run_ctx *c, const char *dir, const char *name) {
    (void)c;
    remove_partials(dir);
    char *p = join(dir, name);
    if (p) rm_tree(p);
    free(p);
}
static void prepare_quantize(const run_ctx *c, const char *dir) {
    (void)c;
    remove_partials(dir); /* quantize/artifact, once present, is complete: it appears by a rename */
}
static void prepare_merge(const run_ctx *c, const char *dir) { prepare_fresh(c, dir, "artifact"); }
static void prepare_export(const run_ctx *c, const char *dir) {
    prepare_fresh(c, dir, "model.gguf");
    prepare_fresh(c, dir, "hqq");
    prepare_fresh(c, dir, "hf");
}

static const char *row_label(const rq_recipe *r, const char *id, char *buf, size_t n) {
    if (!strcmp(id, "fp")) snprintf(buf, n, "full precision");
    else if (!strcmp(id, "q2"))
        snprintf(buf, n, "2-bit %s%s g%lld%s",
                 !strcmp(r->quantize.method, "rtn") ? "RTN" : !strcmp(r->quantize.method, "nf2") ? "NF2"
                 : !strcmp(r->quantize.method, "gptq")                                        ? "GPTQ"
                                                                                               : r->quantize.method,
                 !strcmp(r->quantize.refine, "weights") ? " + Block-AP" : !strcmp(r->quantize.refine, "clip") ? " + LWC" : "",
                 (long long)r->quantize.group_size, r->quantize.clip_search ? " + clip" : "");
    else if (!strcmp(id, "rilq")) snprintf(buf, n, "2-bit + RILQ");
    else if (!strcmp(id, "finetuned"))
        snprintf(buf, n, "2-bit + %s%s fine-tuning", r->stage1.enabled ? "RILQ + " : "", r->stage2.task);
    else snprintf(buf, n, "merged (2-bit, no adapters)");
    return buf;
}

/* Whether a table row's stage is part of this recipe. */
static bool row_enabled(const rq_recipe *r, const char *id) {
    if (!strcmp(id, "rilq")) return r->stage1.enabled;
    if (!strcmp(id, "finetuned")) return r->stage2.enabled;
    if (!strcmp(id, "merged")) return r->merge.enabled;
    return true;
}

/* Each stage's options: the recipe's section, the run's paths, devices and threads. */
static void set_common(const run_ctx *c, rq_common_opts *o, bool fp_model) {
    o->device = c->common.device;
    o->threads = c->common.threads;
    o->tokenizer = fp_model && *c->r->model.tokenizer ? c->r->model.tokenizer : NULL;
}

static void plan_and_run(run_ctx *c) {
    const rq_recipe *r = c->r;
    char *art = join(c->dir, "quantize/artifact"), *cal = join(c->dir, "calibrate"), *ft = join(c->dir, "finetune");
    char *merged = join(c->dir, "merge/artifact");
    char *cal_ad = cal ? join(cal, "adapter") : NULL, *ft_ad = ft ? join(ft, "adapter") : NULL;
    if (!art || !cal || !ft || !merged || !cal_ad || !ft_ad) {
        fprintf(stderr, "rilq run: out of memory\n");
        c->n_failed++;
        goto done;
    }

    rq_stage_quantize_opts q = r->quantize;
    q.model = r->model.path;
    q.out = art;
    set_common(c, &q.common, true);
    stage_call qc = {"quantize", rq_stage_quantize_table, &q, {r->model.path}, 1, call_quantize};
    run_stage(c, "quantize", "quantize", &qc, NULL, prepare_quantize);

    if (r->stage1.enabled) {
        rq_stage_calibrate_opts o = r->stage1;
        o.model = r->model.path;
        o.student = art;
        o.out = cal;
        o.resume = true; /* continues from checkpoint.bin when a killed run left one */
        set_common(c, &o.common, true);
        stage_call sc = {"calibrate", rq_stage_calibrate_table, &o, {r->model.path}, 1, call_calibrate};
        const char *deps[] = {"quantize", NULL};
        run_stage(c, "calibrate", "calibrate", &sc, deps, NULL);
    }

    if (r->stage2.enabled) {
        rq_stage_finetune_opts o = r->stage2;
        o.model = art;
        o.out = ft;
        o.adapter_dir = r->stage1.enabled ? cal_ad : NULL;
        o.resume = true;
        set_common(c, &o.common, false);
        stage_call sc = {"finetune", rq_stage_finetune_table, &o, {art}, 1, call_finetune};
        const char *deps[] = {"quantize", r->stage1.enabled ? "calibrate" : NULL, NULL};
        run_stage(c, "finetune", "finetune", &sc, deps, NULL);
    }

    const char *final_adapter_stage = r->stage2.enabled ? "finetune" : "calibrate";
    const char *final_adapter = r->stage2.enabled ? ft_ad : cal_ad;
    if (r->merge.enabled) {
        rq_stage_merge_opts o = r->merge;
        o.artifact = art;
        o.adapter = final_adapter;
        o.out = merged;
        set_common(c, &o.common, false);
        stage_call sc = {"merge", rq_stage_merge_table, &o, {art, final_adapter}, 2, call_merge};
        const char *deps[] = {"quantize", final_adapter_stage, NULL};
        run_stage(c, "merge", "merge", &sc, deps, prepare_merge);
    }

    for (int i = 0; i < r->export_.formats.n; i++) {
        const char *f = r->export_.formats.item[i];
        char name[64], sub[64];
        snprintf(name, sizeof name, "export-%s", f);
        snprintf(sub, sizeof sub, "export/%s", f);
        char *p = join(c->dir, sub), *out = p ? join(p, !strcmp(f, "gguf") ? "model.gguf" : f) : NULL;
        free(p);
        if (!out) {
            fprintf(stderr, "rilq run: %s: out of memory\n", name);
            c->n_failed++;
            continue;
        }
        rq_stage_export_opts o = r->export_;
        o.artifact = r->merge.enabled ? merged : art;
        o.format = f;
        o.name = r->name;
        o.out = out;
        stage_call sc = {"export", rq_stage_export_table, &o, {o.artifact}, 1, call_export};
        const char *deps[] = {r->merge.enabled ? "merge" : "quantize", NULL};
        run_stage(c, name, sub, &sc, deps, prepare_export);
        free(out);
    }

    for (int i = 0; i < r->eval.models.n; i++) {
        const char *id = r->eval.models.item[i];
        if (!row_enabled(r, id)) continue;
        char name[64], sub[64];
        snprintf(name, sizeof name, "eval-%s", id);
        snprintf(sub, sizeof sub, "eval/%s", id);
        char *p = join(c->dir, sub), *out = p ? join(p, "results.json") : NULL;
        free(p);
        if (!out) {
            fprintf(stderr, "rilq run: %s: out of memory\n", name);
            c->n_failed++;
            continue;
        }
        rq_stage_eval_opts o = r->eval;
        const char *dep = NULL;
        if (!strcmp(id, "fp")) o.model = r->model.path;
        else if (!strcmp(id, "merged")) {
            o.model = merged;
            dep = "merge";
        } else {
            o.model = art;
            dep = "quantize";
        }
        if (!strcmp(id, "rilq")) o.adapter = cal_ad;
        else if (!strcmp(id, "finetuned")) o.adapter = ft_ad;
        o.out = out;
        set_common(c, &o.common, !strcmp(id, "fp"));
        stage_call sc = {"eval", rq_stage_eval_table, &o, {o.model}, 1, call_eval};
        const char *extra = !strcmp(id, "rilq") ? "calibrate" : !strcmp(id, "finetuned") ? "finetune" : NULL;
        const char *deps[] = {dep ? dep : extra, dep ? extra : NULL, NULL};
        run_stage(c, name, sub, &sc, deps, NULL);
        free(out);
    }
done:
    free(art);
    free(cal);
    free(ft);
    free(merged);
    free(cal_ad);
    free(ft_ad);
}

/* ---- results, metrics, report ---------------------------------------------------------------- */

static bool has_acc_norm(const char *task) {
    return strcmp(task, "winogrande") != 0 && strcmp(task, "gsm8k") != 0;
}

/* The merge's figures, from its stage.json (written from the stage's report). */
static cJSON *merge_summary(const char *dir) {
    cJSON *m = read_json_in(dir, "merge/stage.json");
    cJSON *rep = cJSON_DetachItemFromObjectCaseSensitive(m, "report");
    cJSON_Delete(m);
    return rep;
}

static cJSON *build_results(const run_ctx *c) {
    const rq_recipe *r = c->r;
    cJSON *res = cJSON_CreateObject();
    cJSON_AddStringToObject(res, "recipe", r->name);
    cJSON_AddStringToObject(res, "notes", r->notes);
    cJSON_AddStringToObject(res, "recipe_file", r->file);
    cJSON_AddStringToObject(res, "run_dir", c->dir);
    cJSON_AddStringToObject(res, "rilq_version", RILQ_VERSION);
    cJSON *cols = cJSON_AddArrayToObject(res, "columns");
    for (int i = 0; i < r->eval.tasks.n; i++) {
        const char *t = r->eval.tasks.item[i];
        const char *metrics[2] = {"acc", has_acc_norm(t) ? "acc_norm" : NULL};
        if (!strcmp(t, "gsm8k")) metrics[0] = "exact_match,strict-match", metrics[1] = "exact_match,flexible-extract";
        for (int k = 0; k < 2; k++) {
            if (!metrics[k]) continue;
            cJSON *col = cJSON_CreateObject();
            cJSON_AddStringToObject(col, "task", t);
            cJSON_AddStringToObject(col, "metric", metrics[k]);
            cJSON_AddItemToArray(cols, col);
        }
    }
    for (int i = 0; i < r->eval.ppl.n; i++) {
        cJSON *col = cJSON_CreateObject();
        cJSON_AddStringToObject(col, "task", r->eval.ppl.item[i]);
        cJSON_AddStringToObject(col, "metric", "ppl");
        cJSON_AddItemToArray(cols, col);
    }
    cJSON *rows = cJSON_AddArrayToObject(res, "rows");
    for (int i = 0; i < r->eval.models.n; i++) {
        const char *id = r->eval.models.item[i];
        if (!row_enabled(r, id)) continue;
        char label[256], sub[128];
        cJSON *row = cJSON_CreateObject();
        cJSON_AddStringToObject(row, "id", id);
        cJSON_AddStringToObject(row, "label", row_label(r, id, label, sizeof label));
        /* what was evaluated: the model and the adapters attached (none for fp, q2, merged) */
        const char *model_rel = !strcmp(id, "fp") ? NULL : !strcmp(id, "merged") ? "merge/artifact" : "quantize/artifact";
        const char *adapter_rel = !strcmp(id, "rilq") ? "calibrate/adapter" : !strcmp(id, "finetuned") ? "finetune/adapter"
                                                                                                      : NULL;
        char *model = model_rel ? join(c->dir, model_rel) : NULL;
        cJSON_AddStringToObject(row, "model", !model_rel ? r->model.path : model ? model : "");
        free(model);
        if (adapter_rel) {
            char *adapter = join(c->dir, adapter_rel);
            cJSON_AddStringToObject(row, "adapter", adapter ? adapter : "");
            free(adapter);
        } else cJSON_AddNullToObject(row, "adapter");
        snprintf(sub, sizeof sub, "eval/%s/results.json", id);
        cJSON *ev = read_json_in(c->dir, sub);
        cJSON *out = cJSON_AddObjectToObject(row, "results");
        const cJSON *task;
        cJSON_ArrayForEach(task, cJSON_GetObjectItemCaseSensitive(ev, "results")) {
            cJSON *t = cJSON_AddObjectToObject(out, task->string);
            const cJSON *m;
            cJSON_ArrayForEach(m, task) {
                if (!cJSON_IsNumber(m)) continue;
                char key[128];
                snprintf(key, sizeof key, "%s", m->string);
                char *comma = strstr(key, ",none");
                if (comma) *comma = 0;
                cJSON_AddNumberToObject(t, key, m->valuedouble);
            }
        }
        if (ev) {
            const cJSON *ns = cJSON_GetObjectItemCaseSensitive(ev, "n-samples");
            if (ns) cJSON_AddItemToObject(row, "n-samples", cJSON_Duplicate(ns, true));
        }
        cJSON_Delete(ev);
        cJSON_AddItemToArray(rows, row);
    }
    cJSON *stages = cJSON_AddArrayToObject(res, "stages");
    for (int i = 0; i < c->n_stages; i++) {
        cJSON *s = cJSON_CreateObject();
        cJSON_AddStringToObject(s, "name", c->stages[i].name);
        cJSON_AddStringToObject(s, "status", c->stages[i].status);
        if (!isnan(c->stages[i].seconds)) cJSON_AddNumberToObject(s, "seconds", c->stages[i].seconds);
        cJSON_AddItemToArray(stages, s);
    }
    cJSON *merge = r->merge.enabled ? merge_summary(c->dir) : NULL;
    if (merge) cJSON_AddItemToObject(res, "merge", merge);
    return res;
}

/* Append a stage's metrics.jsonl, each line tagged {"stage": ...} first. */
static void append_stage_metrics(rq_buf *metrics, const char *dir, const char *stage) {
    char sub[128];
    snprintf(sub, sizeof sub, "%s/metrics.jsonl", stage);
    char *path = join(dir, sub), *text = NULL;
    size_t n = 0;
    rq_err err = {0};
    rq_status st = path ? rq_file_read_all(path, &text, &n, &err) : RQ_ERR_NOMEM;
    free(path);
    if (st != RQ_OK) return;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (line[0] != '{') continue;
        rq_buf_appendf(metrics, "{\"stage\":\"%s\",%s\n", stage, line + 1);
    }
    free(text);
}

static rq_status write_outputs(const run_ctx *c, const cJSON *results, rq_err *err) {
    rq_buf lines = {0};
    append_stage_metrics(&lines, c->dir, "calibrate");
    append_stage_metrics(&lines, c->dir, "finetune");
    /* evaluation numbers and stage timings, one line each */
    const cJSON *row, *task, *m, *st;
    cJSON_ArrayForEach(row, cJSON_GetObjectItemCaseSensitive(results, "rows")) {
        cJSON_ArrayForEach(task, cJSON_GetObjectItemCaseSensitive(row, "results")) {
            cJSON_ArrayForEach(m, task) {
                char num[32];
                rq_buf_appendf(&lines,
                               "{\"stage\":\"eval\",\"model\":\"%s\",\"task\":\"%s\",\"metric\":\"%s\",\"value\":%s}\n",
                               cJSON_GetObjectItemCaseSensitive(row, "id")->valuestring, task->string, m->string,
                               rq_json_number(num, cJSON_IsNumber(m) ? m->valuedouble : NAN));
            }
        }
    }
    cJSON_ArrayForEach(st, cJSON_GetObjectItemCaseSensitive(results, "stages")) {
        const cJSON *sec = cJSON_GetObjectItemCaseSensitive(st, "seconds");
        rq_buf_appendf(&lines, "{\"stage\":\"%s\",\"status\":\"%s\",\"seconds\":%.3f}\n",
                       cJSON_GetObjectItemCaseSensitive(st, "name")->valuestring,
                       cJSON_GetObjectItemCaseSensitive(st, "status")->valuestring,
                       cJSON_IsNumber(sec) ? sec->valuedouble : -1.0);
    }
    /* quantize's weight error and the merge's logit check, from their logs */
    {
        cJSON *q = read_json_in(c->dir, "quantize/stage.json");
        const cJSON *qr = cJSON_GetObjectItemCaseSensitive(q, "report");
        const cJSON *mean = cJSON_GetObjectItemCaseSensitive(qr, "mean_rel_weight_err");
        const cJSON *max = cJSON_GetObjectItemCaseSensitive(qr, "max_rel_weight_err");
        if (cJSON_IsNumber(mean) && cJSON_IsNumber(max))
            rq_buf_appendf(&lines, "{\"stage\":\"quantize\",\"mean_rel_weight_err\":%.9g,\"max_rel_weight_err\":%.9g}\n",
                           mean->valuedouble, max->valuedouble);
        cJSON_Delete(q);
        const cJSON *mg = cJSON_GetObjectItemCaseSensitive(results, "merge");
        const cJSON *ma = cJSON_GetObjectItemCaseSensitive(mg, "max_abs_logit_diff");
        const cJSON *mr = cJSON_GetObjectItemCaseSensitive(mg, "max_rel_logit_diff");
        const cJSON *mb = cJSON_GetObjectItemCaseSensitive(mg, "rel_bound");
        if (cJSON_IsNumber(ma) && cJSON_IsNumber(mr) && cJSON_IsNumber(mb))
            rq_buf_appendf(&lines,
                           "{\"stage\":\"merge\",\"max_abs_logit_diff\":%.9g,\"max_rel_logit_diff\":%.9g,\"rel_bound\":%.9g}\n",
                           ma->valuedouble, mr->valuedouble, mb->valuedouble);
    }
    char *metrics;
    size_t len;
    rq_status s = rq_buf_finish(&lines, &metrics, &len, "metrics.jsonl", err);
    if (s != RQ_OK) return s;
    s = write_file_in(c->dir, "metrics.jsonl", metrics, len, err);
    if (s == RQ_OK) {
        char *path = rq_path_join_alloc(c->dir, "results.json", err);
        s = path ? rq_json_write_file(path, results, err) : RQ_ERR_NOMEM;
        free(path);
    }
    char *recipe = rq_recipe_to_json(c->r), *html = NULL;
    if (s == RQ_OK) s = rq_report_html(results, metrics, recipe, &html, err);
    if (s == RQ_OK) s = write_file_in(c->dir, "report.html", html, strlen(html), err);
    free(html);
    free(recipe);
    free(metrics);
    return s;
}

/* The stage directories (under the run directory) whose results depend on
 * the keys of a recipe section: the stages that read it and every stage
 * after them that uses their outputs. "export" and "eval" cover their
 * per-format and per-row subdirectories. */
static const struct {
    const char *section, *stages;
} section_stages[] = {
    {"model", "quantize calibrate finetune merge export eval"},
    {"quantize", "quantize calibrate finetune merge export eval/q2 eval/rilq eval/finetuned eval/merged"},
    {"adapter", "calibrate finetune merge export eval/rilq eval/finetuned eval/merged"},
    {"stage1", "calibrate finetune merge export eval/rilq eval/finetuned eval/merged"},
    {"stage2", "finetune merge export eval/finetuned eval/merged"},
    {"merge", "merge export eval/merged"},
    {"export", "export"},
    {"eval", "eval"},
};

/* Whether the stage at run-relative sub (or one below it: export/gguf) has finished. */
static bool stage_finished(const char *run, const char *sub) {
    char *d = join(run, sub), *p = d ? join(d, "stage.json") : NULL;
    bool any = p && rq_file_exists(p);
    free(p);
    DIR *dd = d && !any ? opendir(d) : NULL;
    struct dirent *e;
    while (dd && !any && (e = readdir(dd)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char *q = join(d, e->d_name), *qp = q ? join(q, "stage.json") : NULL;
        any = qp && rq_file_exists(qp);
        free(qp);
        free(q);
    }
    if (dd) closedir(dd);
    free(d);
    return any;
}

/* Every key path where the resolved recipes a and b differ, into out (space-separated). */
static void recipe_diff(const cJSON *a, const cJSON *b, const char *prefix, rq_buf *out) {
    const cJSON *x;
    cJSON_ArrayForEach(x, a) {
        char key[256];
        snprintf(key, sizeof key, "%s%s%s", prefix, *prefix ? "." : "", x->string);
        const cJSON *y = cJSON_GetObjectItemCaseSensitive(b, x->string);
        if (cJSON_IsObject(x) && cJSON_IsObject(y)) recipe_diff(x, y, key, out);
        else if (!y || !cJSON_Compare(x, y, true)) rq_buf_appendf(out, "%s%s", out->len ? " " : "", key);
    }
    cJSON_ArrayForEach(x, b) if (!cJSON_GetObjectItemCaseSensitive(a, x->string))
        rq_buf_appendf(out, "%s%s%s%s", out->len ? " " : "", prefix, *prefix ? "." : "", x->string);
}

/* A re-run with another recipe: allowed when every changed key feeds only
 * stages that have not finished (the outputs a killed or failed stage left
 * of them are removed, so they start over under the new values); refused
 * when a finished stage used one, naming the key and the stage. */
static rq_status accept_changed_recipe(const run_ctx *c, const cJSON *old, const char *path, rq_err *err) {
    rq_buf keys = {0}, stale = {0};
    recipe_diff(old, c->r->root, "", &keys);
    rq_status st = rq_buf_status(&keys, "the recipe's changes", err);
    for (char *k = keys.data; st == RQ_OK && k && *k;) {
        char *end = strchr(k, ' ');
        if (end) *end = 0;
        size_t sl = strcspn(k, ".");
        const char *stages = NULL;
        for (size_t i = 0; i < sizeof section_stages / sizeof section_stages[0]; i++)
            if (strlen(section_stages[i].section) == sl && !strncmp(section_stages[i].section, k, sl))
                stages = section_stages[i].stages;
        if (!stages && strcmp(k, "name") && strcmp(k, "notes")) stages = "quantize calibrate finetune merge export eval";
        char list[256];
        snprintf(list, sizeof list, "%s", stages ? stages : "");
        for (char *sv = NULL, *sub = strtok_r(list, " ", &sv); sub && st == RQ_OK; sub = strtok_r(NULL, " ", &sv)) {
            if (stage_finished(c->dir, sub))
                st = RQ_FAIL(err, RQ_ERR_ARG, "%s holds a different recipe: %s changed, and stage %s, which depends on it, "
                             "has finished; resume with the same recipe and overrides, remove %s/%s to redo it (and the "
                             "stages after it), or choose another --out", path, k, sub, c->dir, sub);
            else if (!strstr(stale.data ? stale.data : "", sub)) rq_buf_appendf(&stale, " %s", sub);
        }
        k = end ? end + 1 : NULL;
    }
    if (st == RQ_OK) st = rq_buf_status(&stale, "the recipe's changes", err);
    if (st == RQ_OK) {
        for (size_t i = 0; i + 1 < keys.len; i++) /* the split above wrote NULs between the keys */
            if (!keys.data[i]) keys.data[i] = ',';
        printf("rilq run: the recipe changed since %s was written (%s); no finished stage depends on that, so these "
               "start over under the new values:%s\n", path, keys.data ? keys.data : "", stale.data ? stale.data : " none");
        for (char *sv = NULL, *sub = strtok_r(stale.data, " ", &sv); sub; sub = strtok_r(NULL, " ", &sv)) {
            char *d = join(c->dir, sub);
            if (d) rm_tree(d); /* a killed or failed stage's partial outputs and checkpoint: written under the old values */
            free(d);
        }
    }
    rq_buf_free(&keys);
    rq_buf_free(&stale);
    return st;
}

/* recipe.json: written on the first run; a later run brings the same recipe,
 * or one whose changes touch only stages that have not finished. */
static rq_status check_or_write_recipe(const run_ctx *c, rq_err *err) {
    char where[256];
    char *path = rq_path_join_alloc(c->dir, "recipe.json", err);
    if (!path) return RQ_ERR_NOMEM;
    rq_status st = RQ_OK;
    bool write = true;
    if (rq_file_exists(path)) {
        cJSON *old = read_json(path);
        if (!old) st = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: not valid JSON", path);
        else {
            const bool same = rq_recipe_same(old, c->r->root, where, sizeof where);
            if (!same) st = accept_changed_recipe(c, old, path, err);
            write = !same;
        }
        cJSON_Delete(old);
    }
    if (st == RQ_OK && write) {
        char *text = rq_recipe_to_json(c->r);
        st = text ? rq_write_file_atomic(path, text, strlen(text), err) : RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory");
        free(text);
    }
    free(path);
    return st;
}

static rq_status write_versions(const run_ctx *c, int argc, char **argv, rq_err *err) {
    char *path = rq_path_join_alloc(c->dir, "versions.json", err);
    if (!path) return RQ_ERR_NOMEM;
    cJSON *v = read_json(path);
    if (!v) v = cJSON_CreateObject();
    cJSON_DeleteItemFromObjectCaseSensitive(v, "rilq");
    cJSON_DeleteItemFromObjectCaseSensitive(v, "git_describe");
    cJSON_DeleteItemFromObjectCaseSensitive(v, "compiler");
    cJSON_AddStringToObject(v, "rilq", RILQ_VERSION);
    if (*RILQ_GIT_DESCRIBE) cJSON_AddStringToObject(v, "git_describe", RILQ_GIT_DESCRIBE);
    else cJSON_AddNullToObject(v, "git_describe");
    cJSON_AddStringToObject(v, "compiler", __VERSION__);
    /* one entry per invocation: a resumed run shows which binary did what */
    cJSON *inv = cJSON_GetObjectItemCaseSensitive(v, "invocations");
    if (!cJSON_IsArray(inv)) {
        cJSON_DeleteItemFromObjectCaseSensitive(v, "invocations");
        inv = cJSON_AddArrayToObject(v, "invocations");
    }
    cJSON *e = cJSON_CreateObject();
    char when[64];
    time_t now = time(NULL);
    struct tm tmv;
    gmtime_r(&now, &tmv);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tmv);
    cJSON_AddStringToObject(e, "started", when);
    cJSON_AddStringToObject(e, "rilq", RILQ_VERSION);
    cJSON_AddStringToObject(e, "git_describe", RILQ_GIT_DESCRIBE);
    cJSON *args = cJSON_AddArrayToObject(e, "argv");
    cJSON_AddItemToArray(args, cJSON_CreateString("rilq"));
    for (int i = 0; i < argc; i++) cJSON_AddItemToArray(args, cJSON_CreateString(argv[i]));
    cJSON_AddItemToArray(inv, e);
    rq_status st = rq_json_write_file(path, v, err);
    cJSON_Delete(v);
    free(path);
    return st;
}

typedef struct run_opts {
    const char *out;
    bool dry_run, verbose, keys;
    rq_common_opts common;
} run_opts;

#define O run_opts
static const rq_opt run_table_opts[] = {
    RQ_OPT_S("--out", NULL, O, out, NULL, NULL, "RUNDIR", "the run directory (default runs/NAME)"),
    RQ_OPT_B("--dry-run", NULL, O, dry_run, "false", "print the resolved recipe and each stage's command; run nothing"),
    RQ_OPT_B("--verbose", NULL, O, verbose, "false", "stages print to the terminal (default: RUNDIR/STAGE/log.txt)"),
    RQ_OPT_B("--keys", NULL, O, keys, "false", "list every recipe key with its type, default and meaning"),
    RQ_OPT_S("--device", NULL, O, common.device, NULL, "cpu|cuda", NULL, "backend (default cpu)"),
    RQ_OPT_I("--threads", NULL, O, common.threads, NULL, 1, 1024, "N", "CPU threads (default: all cores)"),
};
static const rq_opt_table run_table = RQ_OPT_TABLE(run_table_opts, O);
#undef O

int cmd_run(int argc, char **argv) {
    const char *recipe_path = NULL;
    const char *pos[65], *overrides[64];
    int n_pos = 0, n_over = 0;
    run_ctx c = {0};
    run_opts ro;
    rq_err err = {0};
    /* line-buffered: the stage lines and the stages' own errors (stderr) interleave in order */
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (rq_opts_defaults(run_table, &ro, &err)) return cli_fail("run", &err);
    int pr = cli_parse_table("run", run_help, NULL, run_table, &ro, argc, argv, pos, 65, &n_pos);
    if (pr) return pr < 0 ? 0 : pr;
    if (ro.keys) {
        char *h = rq_recipe_schema_help();
        if (h) fputs(h, stdout);
        free(h);
        return 0;
    }
    for (int i = 0; i < n_pos; i++) {
        if (!recipe_path) recipe_path = pos[i];
        else if (!strchr(pos[i], '=')) return cli_usage_error("run", "unexpected argument '%s' (overrides are key=value)", pos[i]);
        else if (n_over == 64) return cli_usage_error("run", "more than 64 overrides");
        else overrides[n_over++] = pos[i];
    }
    c.common = ro.common;
    c.dry_run = ro.dry_run;
    c.verbose = ro.verbose;
    const char *out = ro.out;
    if (!recipe_path) return cli_usage_error("run", "missing RECIPE (a recipes/*.json file)");
    rq_recipe r;
    if (rq_recipe_load(recipe_path, overrides, n_over, &r, &err) != RQ_OK) return cli_fail("run", &err);
    rq_buf dir_text = {0};
    if (out) rq_buf_puts(&dir_text, out);
    else rq_buf_appendf(&dir_text, "runs/%s", r.name);
    char *dir;
    if (rq_buf_finish(&dir_text, &dir, NULL, "the run directory's path", &err) != RQ_OK) {
        rq_recipe_free(&r);
        return cli_fail("run", &err);
    }
    c.r = &r;
    c.dir = dir;
    double t0 = rq_now_seconds();
    int rc = 0;
    printf("rilq run: recipe %s (%s), run directory %s\n", r.name, recipe_path, dir);
    if (c.dry_run) {
        char *text = rq_recipe_to_json(&r);
        if (text) fputs(text, stdout);
        free(text);
        plan_and_run(&c);
        rq_recipe_free(&r);
        free(dir);
        return 0;
    }
    rq_remove_stale_temps(dir); /* a run killed before its recipe.json left only temporaries: still a run directory */
    if (!is_run_dir(dir)) {
        RQ_FAIL(&err, RQ_ERR_ARG, "%s: exists and is not a rilq run directory (it has files and no recipe.json); "
                "choose another --out", dir);
        rq_recipe_free(&r);
        return cli_fail("run", &err);
    }
    /* one run per directory at a time: a POSIX record lock, released when the process ends (also by a kill) */
    int lock_fd = -1;
    char *lock_path = rq_path_join_alloc(dir, ".lock", &err);
    if (!lock_path) {
        rq_recipe_free(&r);
        free(dir);
        return cli_fail("run", &err);
    }
    if (rq_mkdir_p(dir, &err) == RQ_OK) {
        lock_fd = open(lock_path, O_RDWR | O_CREAT, 0644);
        struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
        if (lock_fd < 0 || fcntl(lock_fd, F_SETLK, &fl) != 0) {
            RQ_FAIL(&err, RQ_ERR_IO, "%s: another rilq run is using this directory (or the lock %s cannot be taken)",
                    dir, lock_path);
            if (lock_fd >= 0) close(lock_fd);
            rq_recipe_free(&r);
            free(lock_path);
            free(dir);
            return cli_fail("run", &err);
        }
    }
    free(lock_path);
    if (rq_mkdir_p(dir, &err) || check_or_write_recipe(&c, &err) || write_versions(&c, argc, argv, &err)) {
        rc = cli_fail("run", &err);
        rq_recipe_free(&r);
        if (lock_fd >= 0) close(lock_fd);
        free(dir);
        return rc;
    }
    remove_partials(dir); /* what killed writers of earlier runs left, anywhere in the run directory */
    plan_and_run(&c);
    cJSON *results = build_results(&c);
    if (write_outputs(&c, results, &err) != RQ_OK) rc = cli_fail("run", &err);
    char *table = rq_report_table(results);
    printf("\n%s\n%s", r.name, table ? table : "");
    free(table);
    printf("\nrun directory %s: results.json, report.html, metrics.jsonl (%.1fs this invocation)\n", dir,
           rq_now_seconds() - t0);
    if (c.n_failed) {
        fprintf(stderr, "rilq run: %d stage(s) failed or blocked:", c.n_failed);
        for (int i = 0; i < c.n_stages; i++)
            if (!strcmp(c.stages[i].status, "failed") || !strcmp(c.stages[i].status, "blocked"))
                fprintf(stderr, " %s (%s)", c.stages[i].name, c.stages[i].status);
        fprintf(stderr, "\n");
        rc = 1;
    }
    cJSON_Delete(results);
    rq_recipe_free(&r);
    if (lock_fd >= 0) close(lock_fd);
    free(dir);
    return rc;
}
